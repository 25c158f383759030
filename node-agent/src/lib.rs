//! Stratum node agent: the daemon. It owns the resource pools, the VMs,
//! the pods and the images of one host, keeps them in its durable store,
//! and serves them over gRPC to a Supervisor. The work on the host is done
//! by the crates below it: `stratum-pool` (the model), `stratum-cgroup`,
//! `stratum-image`, `stratum-net`, `stratum-runtime`, `stratum-vm`.
//!
//! - [`agent`]: the agent and its rules.
//! - [`api`]: thin gRPC adapters over the agent.
//! - [`cri`]: the Kubernetes CRI on a Unix socket, over the same agent.
//! - [`state`]: the durable store.
//! - [`records`]: the stored record messages.

pub mod agent;
pub mod api;
pub mod cri;
pub mod records;
pub mod state;
