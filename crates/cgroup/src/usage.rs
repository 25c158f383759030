//! What a cgroup has consumed, and whether the OOM killer struck in it.
//!
//! Read straight from the files (see `fsio`): the agent decides from these
//! numbers whether a VM died of OOM, so a failed read must be an error, not
//! the 0 that cgroups-rs's stat readers return.

use std::path::Path;

use cgroups_rs::fs::Controller;

use super::discover::CgroupVersion;
use super::error::{CgroupError, Result};
use super::fsio;
use super::group::Cgroup;

/// A snapshot of a cgroup's consumption, including its descendants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CgroupUsage {
    /// CPU time consumed since creation, in nanoseconds (`cpuacct.usage` on
    /// v1, `cpu.stat` `usage_usec` × 1000 on v2).
    pub cpu_usage_ns: u64,
    /// Memory charged now (`memory.usage_in_bytes` / `memory.current`).
    pub memory_current_bytes: u64,
    /// Processes the OOM killer killed in this cgroup (`memory.events`
    /// `oom_kill` on v2, counting descendants; `memory.oom_control`
    /// `oom_kill` on v1, counting only victims that were directly in this
    /// cgroup, and 0 on v1 kernels before 4.13 that lack the field).
    pub oom_kills: u64,
    /// Times the memory limit was hit (`memory.failcnt` on v1,
    /// `memory.events` `max` on v2): reclaim happened, not necessarily a
    /// kill. On v1 it is the signal left when `oom_kill` is missing.
    pub memory_limit_hits: u64,
}

impl CgroupUsage {
    /// Whether an OOM kill happened in the cgroup.
    pub fn oom_killed(&self) -> bool {
        self.oom_kills > 0
    }
}

impl Cgroup {
    /// Reads CPU, memory and OOM counters.
    pub fn usage(&self) -> Result<CgroupUsage> {
        let mem = self.memory.path();
        match self.version {
            CgroupVersion::V1 => Ok(CgroupUsage {
                cpu_usage_ns: self.cpu_usage_ns_v1()?,
                memory_current_bytes: fsio::read_u64(
                    &mem.join("memory.usage_in_bytes"),
                    "memory usage",
                )?,
                oom_kills: fsio::read_keyed(&mem.join("memory.oom_control"), "oom_kill")?
                    .unwrap_or(0),
                memory_limit_hits: fsio::read_u64(&mem.join("memory.failcnt"), "failcnt")?,
            }),
            CgroupVersion::V2 => {
                let events = mem.join("memory.events");
                Ok(CgroupUsage {
                    cpu_usage_ns: cpu_usage_ns_v2(self.cpu.path())?,
                    memory_current_bytes: fsio::read_u64(
                        &mem.join("memory.current"),
                        "memory usage",
                    )?,
                    oom_kills: fsio::read_keyed(&events, "oom_kill")?.unwrap_or(0),
                    memory_limit_hits: fsio::read_keyed(&events, "max")?.unwrap_or(0),
                })
            }
        }
    }

    /// Memory in use that the kernel could not simply drop: what is
    /// charged less the inactive page cache (`total_inactive_file` of
    /// `memory.stat` on v1, `inactive_file` on v2), as the kubelet
    /// measures a working set. A pool near its limit by this figure is
    /// short of memory; by the charge alone it may only hold clean cache.
    pub fn memory_working_set_bytes(&self) -> Result<u64> {
        let mem = self.memory.path();
        let (current, inactive_key) = match self.version {
            CgroupVersion::V1 => (
                fsio::read_u64(&mem.join("memory.usage_in_bytes"), "memory usage")?,
                "total_inactive_file",
            ),
            CgroupVersion::V2 => (
                fsio::read_u64(&mem.join("memory.current"), "memory usage")?,
                "inactive_file",
            ),
        };
        let inactive = fsio::read_keyed(&mem.join("memory.stat"), inactive_key)?.unwrap_or(0);
        Ok(current.saturating_sub(inactive))
    }

    fn cpu_usage_ns_v1(&self) -> Result<u64> {
        let Some(acct) = &self.cpuacct else {
            return Err(CgroupError::ControllerMissing {
                controller: "cpuacct",
                path: self.cpu.path().to_path_buf(),
            });
        };
        fsio::read_u64(&acct.path().join("cpuacct.usage"), "CPU usage")
    }
}

fn cpu_usage_ns_v2(dir: &Path) -> Result<u64> {
    let stat = dir.join("cpu.stat");
    match fsio::read_keyed(&stat, "usage_usec")? {
        Some(usec) => Ok(usec.saturating_mul(1000)),
        None => Err(CgroupError::Parse {
            path: stat,
            what: "usage_usec",
            content: String::new(),
        }),
    }
}
