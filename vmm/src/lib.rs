//! Stratum's virtual machine monitor.
//!
//! One process runs one VM: [`builder::build_and_start`] turns a
//! [`config::VmConfig`] into guest memory holding the kernel, initrd and
//! boot structures, a KVM VM with in-kernel interrupt controllers, legacy
//! devices on port I/O, and one thread per vCPU. See DESIGN.md for the boot
//! path step by step.

// A guest-controlled length or address silently cut to a narrower type is
// how a device model corrupts memory or lies to its driver: narrowing goes
// through `try_from`, or is bounded where it happens (a mask, a checked
// constant) with a comment saying why it fits. Test modules may cast.
#![deny(clippy::cast_possible_truncation)]

pub mod api;
pub mod arch;
pub mod builder;
pub mod config;
pub mod devices;
pub mod image_file;
pub mod loader;
pub mod mmds;
pub mod rate_limiter;
pub mod seccomp;
pub mod snapshot;
pub mod vmm_config;
pub mod vstate;

pub use builder::{build_and_start, RunningVm, VmController, VmStats};
pub use config::VmConfig;
pub use devices::VmEvent;
