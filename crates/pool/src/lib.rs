//! Resource pools: the tree, vSphere allocation semantics and admission
//! control, as a pure model (no I/O) so every rule is testable on its own
//! and the same code decides for the API, the restart path and the tests.
//! The cgroup layer enforces what this model admits; the state layer
//! persists the specs it was built from.
//!
//! - [`resource`]: CPU in millicores, memory in bytes, and why.
//! - [`shares`]: LOW/NORMAL/HIGH = 512/1024/2048, CUSTOM 2..=262144.
//! - [`allocation`]: reservation, limit, expandable reservation.
//! - [`quota`]: namespace-style caps on VMs, pods, vCPUs and memory per
//!   subtree.
//! - [`name`]: DNS-label names, unique among siblings.
//! - [`workload`]: VMs and pods as leaves, their reservations (a VM's with
//!   the VMM overhead, a pod's its requests) and what quotas count of them.
//! - [`tree`]: the tree and pool create/update/delete.
//! - [`admission`]: the reservation rule and borrowing through expandable
//!   pools.
//! - [`placement`]: adding, admitting, releasing and removing workloads.
//! - [`status`]: accounting views.
//! - [`reclaim`]: which VMs' balloons give memory back when a pool with a
//!   limit runs short.
//! - [`restore`]: rebuilding the tree from stored pools at startup.
//! - [`convert`]: to and from the API's messages.
//! - [`error`]: what is refused, classed by gRPC code.
//!
//! Invariants every successful operation keeps (checked by the property
//! tests in `proptests.rs`), per resource:
//! - every pool's children hold at most its ceiling (its reservation, or
//!   its limit when its reservation is expandable); the root's reservation
//!   is the host minus the system reserve, so the whole tree never promises
//!   more than the host has;
//! - a pool charges its parent its reservation, or the larger of that and
//!   what its children hold when expandable;
//! - no quota of any pool is exceeded by its subtree;
//! - a refused operation leaves the tree unchanged.

pub mod admission;
pub mod allocation;
pub mod convert;
pub mod error;
pub mod name;
pub mod placement;
pub mod quota;
pub mod reclaim;
pub mod resource;
pub mod restore;
pub mod shares;
pub mod status;
pub mod tree;
pub mod workload;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use allocation::Allocation;
pub use error::{ErrorKind, PoolError};
pub use name::{quoted, validate_name, ROOT_NAME};
pub use quota::{Quota, QuotaItem, Usage};
pub use resource::{Resource, Resources, MIB, MILLICORES_PER_CPU};
pub use restore::StoredPool;
pub use shares::Shares;
pub use status::{HostCapacity, PoolStatus, ResourceStatus};
pub use tree::{Pool, PoolId, PoolSpec, PoolTree, ROOT_ID};
pub use workload::{
    PodLimits, PodSizing, Role, VmSizing, Workload, WorkloadId, WorkloadKind, MAX_VCPUS,
    VMM_MEMORY_OVERHEAD_BYTES,
};
