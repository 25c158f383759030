//! `Cgroup`: a handle on one pool or workload cgroup, backed by one directory
//! per controller on v1 and a single directory on v2, and how limits are
//! written to it.
//!
//! Only the controllers Stratum enforces with are touched (cpu, cpuacct,
//! memory, pids). On v1 that matters: a process moved into our cgroups stays
//! where it was in every other hierarchy (cpuset, devices, name=systemd...),
//! which is why cgroups-rs's `Cgroup` type, which joins every mounted
//! hierarchy, is not used; its per-controller types are.

use std::path::{Path, PathBuf};

use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuacct::CpuAcctController;
use cgroups_rs::fs::memory::{MemController, SetMemory};
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{Controller, MaxValue};

use super::discover::{Bases, CgroupVersion};
use super::error::{CgroupError, Result};
use super::limits::{
    millicores_to_quota_us, shares_to_v1, shares_to_weight, to_i64, CgroupLimits, CPU_PERIOD_US,
};
use super::v1_quota;

/// A pool or workload cgroup. Cheap to clone; holds paths, no open files.
#[derive(Debug, Clone)]
pub struct Cgroup {
    pub(crate) version: CgroupVersion,
    /// Relative to the Stratum root ("" for the root itself).
    pub(crate) path: PathBuf,
    pub(crate) cpu: CpuController,
    pub(crate) cpuacct: Option<CpuAcctController>,
    pub(crate) memory: MemController,
    pub(crate) pids: Option<PidController>,
}

impl Cgroup {
    /// The handle for `path` below the root named `root_name`; touches
    /// nothing on disk.
    pub(crate) fn at(bases: &Bases, root_name: &str, path: &Path) -> Cgroup {
        let v2 = bases.version == CgroupVersion::V2;
        let dir = |base: &Path| base.join(root_name).join(path);
        Cgroup {
            version: bases.version,
            path: path.to_path_buf(),
            cpu: CpuController::new(dir(&bases.cpu), bases.cpu.clone(), v2),
            cpuacct: bases
                .cpuacct
                .as_ref()
                .map(|b| CpuAcctController::new(dir(b), b.clone())),
            memory: MemController::new(dir(&bases.memory), bases.memory.clone(), v2),
            pids: bases
                .pids
                .as_ref()
                .map(|b| PidController::new(dir(b), b.clone(), v2)),
        }
    }

    /// Path relative to the Stratum root, e.g. `prod/web/vm-7`; empty for
    /// the root. `Hierarchy::open` takes the same path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last path component (the root's own name is not known here, so
    /// the root reports "").
    pub fn name(&self) -> &str {
        self.path.file_name().and_then(|n| n.to_str()).unwrap_or("")
    }

    /// The cgroup version this handle writes for.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The controllers in use, one per distinct directory: on v1 `cpu` and
    /// `cpuacct` share a directory when co-mounted, on v2 all share one.
    pub(crate) fn controllers(&self) -> Vec<&dyn Controller> {
        let mut all: Vec<&dyn Controller> = vec![&self.cpu, &self.memory];
        if let Some(c) = &self.cpuacct {
            all.push(c);
        }
        if let Some(c) = &self.pids {
            all.push(c);
        }
        let mut seen: Vec<&Path> = Vec::new();
        all.retain(|c| {
            let fresh = !seen.contains(&c.path());
            seen.push(c.path());
            fresh
        });
        all
    }

    /// The directory holding the v2 core files (`cgroup.subtree_control`).
    pub(crate) fn primary_dir(&self) -> &Path {
        self.cpu.path()
    }

    /// The directories backing this cgroup: one per v1 hierarchy in use, one
    /// on v2. For diagnostics and tests.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.controllers()
            .iter()
            .map(|c| c.path().to_path_buf())
            .collect()
    }

    /// Whether the cgroup exists in every hierarchy it needs.
    pub fn exists(&self) -> bool {
        self.controllers().iter().all(|c| c.path().is_dir())
    }

    /// Writes every limit in `limits` (including "unlimited" for `None`), so
    /// applying is also how limits are updated. Re-applying the same value
    /// is harmless.
    pub fn apply(&self, limits: &CgroupLimits) -> Result<()> {
        self.write_limits(limits, None)
    }

    /// [`Cgroup::apply`] for a cgroup whose directories were all just made:
    /// a new cgroup starts at the kernel's defaults, which
    /// `CgroupLimits::default()` is, so only the limits that differ are
    /// written.
    pub(crate) fn apply_to_new(&self, limits: &CgroupLimits) -> Result<()> {
        self.write_limits(limits, Some(&CgroupLimits::default()))
    }

    /// Writes the limits that differ from `current` (all of them when the
    /// files' values are not known).
    fn write_limits(&self, limits: &CgroupLimits, current: Option<&CgroupLimits>) -> Result<()> {
        let differs = |field: fn(&CgroupLimits) -> Option<u64>| {
            current.is_none_or(|current| field(current) != field(limits))
        };
        if differs(|l| Some(l.cpu_shares_weight)) {
            self.apply_shares(limits.cpu_shares_weight)?;
        }
        if differs(|l| l.cpu_limit_millicores) {
            self.apply_cpu_limit(limits.cpu_limit_millicores, current.is_some())?;
        }
        self.apply_memory(
            limits,
            differs(|l| l.memory_limit_bytes),
            differs(|l| l.memory_reservation_bytes),
        )?;
        if differs(|l| l.pids_max) {
            self.apply_pids(limits)?;
        }
        Ok(())
    }

    fn apply_shares(&self, shares: u64) -> Result<()> {
        let (weight, op) = match self.version {
            CgroupVersion::V1 => (shares_to_v1(shares), "write cpu.shares"),
            CgroupVersion::V2 => (shares_to_weight(shares), "write cpu.weight"),
        };
        self.cpu
            .set_shares(weight)
            .map_err(CgroupError::lib(self.cpu.path(), op))
    }

    /// `period_is_ours`: the CFS period is known to be [`CPU_PERIOD_US`].
    fn apply_cpu_limit(&self, millicores: Option<u64>, period_is_ours: bool) -> Result<()> {
        let dir = self.cpu.path();
        let quota = millicores.map(millicores_to_quota_us);
        match self.version {
            CgroupVersion::V1 => v1_quota::write(dir, quota, period_is_ours),
            // "max 100000" when unlimited: cgroups-rs writes -1 as "max".
            CgroupVersion::V2 => self
                .cpu
                .set_cfs_quota_and_period(Some(quota.map_or(-1, to_i64)), Some(CPU_PERIOD_US))
                .map_err(CgroupError::lib(dir, "write cpu.max")),
        }
    }

    /// Writes the memory limit and reservation, each only if asked to.
    fn apply_memory(&self, limits: &CgroupLimits, limit: bool, reservation: bool) -> Result<()> {
        let dir = self.memory.path();
        let max = limits.memory_limit_bytes.map(to_i64);
        let reserve = limits.memory_reservation_bytes.map(to_i64);
        match self.version {
            CgroupVersion::V1 => {
                if limit {
                    self.memory
                        .set_limit(max.unwrap_or(-1))
                        .map_err(CgroupError::lib(dir, "write memory.limit_in_bytes"))?;
                }
                // v1 has no memory.min: the soft limit only makes the kernel
                // reclaim cgroups above it first under global pressure.
                if reservation {
                    self.memory
                        .set_soft_limit(reserve.unwrap_or(-1))
                        .map_err(CgroupError::lib(dir, "write memory.soft_limit_in_bytes"))?;
                }
                Ok(())
            }
            CgroupVersion::V2 => {
                let set = SetMemory {
                    max: limit.then(|| max.map_or(MaxValue::Max, MaxValue::Value)),
                    min: reservation.then(|| MaxValue::Value(reserve.unwrap_or(0))),
                    low: None,
                    high: None,
                };
                self.memory
                    .set_mem(set)
                    .map_err(CgroupError::lib(dir, "write memory.max and memory.min"))
            }
        }
    }

    fn apply_pids(&self, limits: &CgroupLimits) -> Result<()> {
        let Some(pids) = &self.pids else {
            return match limits.pids_max {
                None => Ok(()),
                Some(_) => Err(CgroupError::ControllerMissing {
                    controller: "pids",
                    path: self.memory.path().to_path_buf(),
                }),
            };
        };
        let max = limits
            .pids_max
            .map_or(MaxValue::Max, |n| MaxValue::Value(to_i64(n)));
        pids.set_pid_max(max)
            .map_err(CgroupError::lib(pids.path(), "write pids.max"))
    }
}
