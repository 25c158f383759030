//! Processes the agent did not necessarily start, named safely.
//!
//! A pid alone does not name a process: pids are reused. The agent
//! re-adopts `vmm` processes and container inits after a restart, when
//! they are no longer its children, and must never signal a stranger that
//! took a dead one's pid. This crate owns the tools for that:
//!
//! - [`identity`]: a process's start time, which with its pid names one
//!   process across pid reuse.
//! - [`pidfd`]: a descriptor naming one process, to signal it, wait for
//!   its end and collect its status without a pid race.
//! - [`watched`]: pids whose owner collects the exit status, which the
//!   agent's orphan reaper must leave alone.
//!
//! It refuses nothing and knows nothing of VMs, pods or the agent.

pub mod identity;
pub mod pidfd;
pub mod watched;

pub use pidfd::ProcessExit;
pub use watched::Watched;
