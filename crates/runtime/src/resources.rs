//! The container's `linux.resources`, taken from what the kernel enforces
//! on the container's cgroup after the cgroup layer wrote the limits.
//!
//! Why read back instead of converting the limits again: the agent creates
//! the container's leaf itself (below the pod, with `Cgroup::apply`, the
//! same code and the same v1/v2 mapping as for pools and VMs — see
//! DESIGN.md's cgroup sections). The OCI runtime then writes
//! `linux.resources` into the same directory. If the spec carried the raw
//! request, the runtime would undo that work: on v1 a CFS quota above an
//! ancestor's is refused with `EINVAL` (the cgroup layer stores the clamped,
//! effective value), and on v2 crun and runc turn `cpu.shares` into
//! `cpu.weight` with their own affine formula instead of Stratum's linear
//! one. Echoing the effective values makes the runtime's writes no-ops; on
//! v2 the weight goes through `unified["cpu.weight"]` verbatim.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::error::{Result, RuntimeError};
use stratum_cgroup::{Cgroup, CgroupVersion};

/// Above this a v1 memory limit means "unlimited" (the kernel shows
/// `PAGE_COUNTER_MAX` pages, 9223372036854771712 with 4 KiB pages).
const V1_UNLIMITED: i64 = i64::MAX / 2;

/// CPU and memory settings for the spec, in OCI units.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OciResources {
    /// `linux.resources.cpu.shares` (v1 only).
    pub cpu_shares: Option<u64>,
    /// `linux.resources.cpu.quota` in µs per period; `None` = unlimited.
    pub cpu_quota_us: Option<i64>,
    /// `linux.resources.cpu.period` in µs.
    pub cpu_period_us: Option<u64>,
    /// `linux.resources.memory.limit` in bytes; `None` = unlimited.
    pub memory_limit_bytes: Option<i64>,
    /// `linux.resources.pids.limit`; `None` = unlimited.
    pub pids_limit: Option<i64>,
    /// `linux.resources.unified` (v2 only): raw file values.
    pub unified: HashMap<String, String>,
}

impl OciResources {
    /// Reads the limits in force on `cgroup` (created and limited by the
    /// cgroup layer beforehand).
    pub fn effective(cgroup: &Cgroup) -> Result<OciResources> {
        let dirs = cgroup.dirs();
        let find = |file: &str| -> Result<PathBuf> {
            dirs.iter()
                .map(|d| d.join(file))
                .find(|p| p.exists())
                .ok_or_else(|| RuntimeError::CgroupPath {
                    dir: dirs.first().cloned().unwrap_or_default(),
                    reason: format!("no {file} in any of its directories"),
                })
        };
        let optional = |file: &str| dirs.iter().map(|d| d.join(file)).find(|p| p.exists());
        match cgroup.version() {
            CgroupVersion::V1 => {
                let quota = read_i64(&find("cpu.cfs_quota_us")?)?;
                let memory = read_i64(&find("memory.limit_in_bytes")?)?;
                let pids = match optional("pids.max") {
                    Some(p) => parse_max(&read(&p)?, &p)?,
                    None => None,
                };
                Ok(OciResources {
                    cpu_shares: Some(read_u64(&find("cpu.shares")?)?),
                    cpu_quota_us: (quota > 0).then_some(quota),
                    cpu_period_us: Some(read_u64(&find("cpu.cfs_period_us")?)?),
                    memory_limit_bytes: (memory < V1_UNLIMITED).then_some(memory),
                    pids_limit: pids,
                    unified: HashMap::new(),
                })
            }
            CgroupVersion::V2 => {
                let cpu_max_path = find("cpu.max")?;
                let cpu_max = read(&cpu_max_path)?;
                let (quota, period) = parse_cpu_max(&cpu_max, &cpu_max_path)?;
                let memory_path = find("memory.max")?;
                let memory = parse_max(&read(&memory_path)?, &memory_path)?;
                let pids = match optional("pids.max") {
                    Some(p) => parse_max(&read(&p)?, &p)?,
                    None => None,
                };
                let weight = read(&find("cpu.weight")?)?;
                Ok(OciResources {
                    cpu_shares: None,
                    cpu_quota_us: quota,
                    cpu_period_us: Some(period),
                    memory_limit_bytes: memory,
                    pids_limit: pids,
                    unified: HashMap::from([("cpu.weight".to_string(), weight.trim().to_string())]),
                })
            }
        }
    }
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(RuntimeError::io(path, "read"))
}

fn parse_error(path: &Path, content: &str) -> RuntimeError {
    RuntimeError::CgroupPath {
        dir: path.to_path_buf(),
        reason: format!("unexpected content {content:?}"),
    }
}

fn read_i64(path: &Path) -> Result<i64> {
    let content = read(path)?;
    content
        .trim()
        .parse()
        .map_err(|_| parse_error(path, &content))
}

fn read_u64(path: &Path) -> Result<u64> {
    let content = read(path)?;
    content
        .trim()
        .parse()
        .map_err(|_| parse_error(path, &content))
}

/// `max` or a number (v2 `memory.max`, `pids.max`).
fn parse_max(content: &str, path: &Path) -> Result<Option<i64>> {
    match content.trim() {
        "max" => Ok(None),
        n => n.parse().map(Some).map_err(|_| parse_error(path, content)),
    }
}

/// v2 `cpu.max`: `"<quota|max> <period>"`.
fn parse_cpu_max(content: &str, path: &Path) -> Result<(Option<i64>, u64)> {
    let mut fields = content.split_whitespace();
    let (Some(quota), Some(period), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err(parse_error(path, content));
    };
    let period = period.parse().map_err(|_| parse_error(path, content))?;
    Ok((parse_max(quota, path)?, period))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_resources_parse_v2_files() {
        let p = Path::new("/x");
        assert_eq!(
            parse_cpu_max("max 100000\n", p).expect("max"),
            (None, 100_000)
        );
        assert_eq!(
            parse_cpu_max("50000 100000\n", p).expect("50%"),
            (Some(50_000), 100_000)
        );
        assert!(parse_cpu_max("50000\n", p).is_err());
        assert!(parse_cpu_max("a b\n", p).is_err());
        assert_eq!(parse_max("max\n", p).expect("max"), None);
        assert_eq!(parse_max("33554432\n", p).expect("n"), Some(33_554_432));
        assert!(parse_max("lots", p).is_err());
    }
}
