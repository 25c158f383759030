//! cgroup enforcement of pools and VMs, on cgroup v1 and v2.
//!
//! Each resource pool is a cgroup, each workload (a VM's `vmm` process,
//! later a pod) a leaf cgroup below its pool, named `vm-<id>` for VMs. The
//! tree lives under one root cgroup (default `stratum`) placed below the
//! agent's own cgroup in each hierarchy. The version is detected at runtime;
//! the same calls write `cpu.shares`/`cpu.weight`, `cpu.cfs_quota_us`/
//! `cpu.max`, `memory.limit_in_bytes`/`memory.max` and so on.
//!
//! The VM leaf holds the whole `vmm` process — guest RAM, vCPU threads,
//! device threads and the VMM's own heap — so the VMM overhead is counted in
//! the VM's pool automatically; pools must size limits for guest + overhead.
//!
//! - [`CgroupLimits`]: what to enforce, in plain units, and the conversions.
//! - [`Hierarchy`]: detection, creation and adoption of pool and leaf cgroups.
//! - [`Cgroup`]: one cgroup: apply limits, attach processes, read usage,
//!   kill, remove.
//!
//! The mapping table and what v1 cannot express: DESIGN.md ("The node agent", cgroups sections).

mod attach;
mod discover;
mod error;
mod fsio;
mod group;
mod hierarchy;
mod limits;
mod teardown;
mod usage;
mod v1_quota;

#[cfg(test)]
mod tests;

pub use discover::{CgroupVersion, Placement};
pub use error::{CgroupError, Result};
pub use group::Cgroup;
pub use hierarchy::{vm_leaf_name, Hierarchy, HierarchyConfig, DEFAULT_ROOT_NAME, MAX_NAME_LEN};
pub use limits::{
    millicores_to_quota_us, shares_to_v1, shares_to_weight, CgroupLimits, CPU_MAX_QUOTA_US,
    CPU_MIN_QUOTA_US, CPU_PERIOD_US, DEFAULT_CPU_SHARES,
};
pub use usage::CgroupUsage;
