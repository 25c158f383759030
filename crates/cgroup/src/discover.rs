//! Runtime detection of the host's cgroup setup: which version, where each
//! controller is mounted, and under which directory the Stratum tree goes.
//!
//! cgroups-rs does the version check (`/sys/fs/cgroup` is cgroup2 or not)
//! and reads the v1 mount table; the agent's own cgroup comes from
//! `/proc/self/cgroup`, parsed here because cgroups-rs only offers it as an
//! untyped map without errors we could report.

use std::fs;
use std::path::{Path, PathBuf};

use cgroups_rs::fs::hierarchies::{self, V1};
use cgroups_rs::fs::Controllers;

use super::error::{CgroupError, Result};

/// Where cgroup v2 is mounted when the host runs the unified hierarchy.
pub const UNIFIED_MOUNT: &str = "/sys/fs/cgroup";

/// Which cgroup interface the host offers; detected at runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// One hierarchy per controller (`/sys/fs/cgroup/{cpu,memory,...}`).
    V1,
    /// The unified hierarchy (`/sys/fs/cgroup` is cgroup2).
    V2,
}

/// Where, in each hierarchy, the Stratum root cgroup is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// Below the cgroup the agent itself runs in, per controller. This keeps
    /// the tree inside whatever limits and accounting the agent was started
    /// under (a systemd unit with `Delegate=yes`, a sandbox), and equals the
    /// top of the hierarchy when the agent runs in the root cgroup. On v2 the
    /// agent's cgroup must then be the root or hold no processes of its own,
    /// or the kernel refuses to enable controllers for the tree.
    #[default]
    UnderOwnCgroup,
    /// At the top of each hierarchy, whatever cgroup the agent runs in.
    AtHierarchyRoot,
}

/// The directory each controller's Stratum root is created in.
#[derive(Debug, Clone)]
pub(crate) struct Bases {
    pub version: CgroupVersion,
    pub cpu: PathBuf,
    /// v1 only: CPU usage lives in `cpuacct`; v2 reports it in `cpu.stat`.
    pub cpuacct: Option<PathBuf>,
    pub memory: PathBuf,
    /// `None` when the pids controller is absent: `pids_max` then fails.
    pub pids: Option<PathBuf>,
}

/// Detects the version and the base directories for `placement`.
pub(crate) fn discover(placement: Placement) -> Result<Bases> {
    let own = fs::read_to_string("/proc/self/cgroup")
        .map_err(CgroupError::io("/proc/self/cgroup", "read"))?;
    if hierarchies::is_cgroup2_unified_mode() {
        discover_v2(placement, &own)
    } else {
        discover_v1(placement, &own)
    }
}

fn discover_v1(placement: Placement, own: &str) -> Result<Bases> {
    let v1 = V1::new();
    let base = |controller: Controllers, name: &str| -> Option<PathBuf> {
        let (mount_point, mount_root) = v1.get_mount_point(controller)?;
        let own_path = match placement {
            Placement::UnderOwnCgroup => own_cgroup_path(own, Some(name)).unwrap_or_default(),
            Placement::AtHierarchyRoot => String::new(),
        };
        Some(mount_point.join(relative_to_mount(&own_path, &mount_root)))
    };
    let required = |controller: Controllers, name: &'static str| {
        base(controller, name).ok_or_else(|| CgroupError::ControllerMissing {
            controller: name,
            path: PathBuf::from("/proc/self/mountinfo"),
        })
    };
    Ok(Bases {
        version: CgroupVersion::V1,
        cpu: required(Controllers::Cpu, "cpu")?,
        cpuacct: base(Controllers::CpuAcct, "cpuacct"),
        memory: required(Controllers::Mem, "memory")?,
        pids: base(Controllers::Pids, "pids"),
    })
}

fn discover_v2(placement: Placement, own: &str) -> Result<Bases> {
    let own_path = match placement {
        Placement::UnderOwnCgroup => own_cgroup_path(own, None).unwrap_or_default(),
        Placement::AtHierarchyRoot => String::new(),
    };
    let base = Path::new(UNIFIED_MOUNT).join(own_path.trim_start_matches('/'));
    let list = base.join("cgroup.controllers");
    let available = fs::read_to_string(&list).map_err(CgroupError::io(&list, "read"))?;
    let has = |name: &str| available.split_whitespace().any(|c| c == name);
    for needed in ["cpu", "memory"] {
        if !has(needed) {
            return Err(CgroupError::ControllerMissing {
                controller: needed,
                path: list,
            });
        }
    }
    Ok(Bases {
        version: CgroupVersion::V2,
        cpu: base.clone(),
        cpuacct: None,
        memory: base.clone(),
        pids: has("pids").then_some(base),
    })
}

/// The agent's cgroup path from `/proc/self/cgroup` content: for the v1
/// hierarchy carrying `controller`, or the v2 (`0::`) line when `None`.
pub(crate) fn own_cgroup_path(content: &str, controller: Option<&str>) -> Option<String> {
    content.lines().find_map(|line| {
        // "ID:CONTROLLERS:PATH"; the path itself may contain ':'.
        let mut fields = line.splitn(3, ':');
        let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let matches = match controller {
            Some(name) => controllers.split(',').any(|c| c == name),
            None => id == "0" && controllers.is_empty(),
        };
        matches.then(|| path.to_string())
    })
}

/// `own_path` (as the kernel shows it, from the hierarchy's root) relative to
/// the mount, whose root may be a sub-cgroup in containers (mountinfo's
/// "root" field). Never absolute, so `Path::join` cannot escape the mount.
fn relative_to_mount(own_path: &str, mount_root: &Path) -> PathBuf {
    let own = Path::new(own_path);
    let inside = own.strip_prefix(mount_root).unwrap_or(own);
    inside
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_SELF: &str = "9:name=systemd:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/a:b\n0::/\n";

    #[test]
    fn cgroup_own_path_per_v1_controller() {
        assert_eq!(
            own_cgroup_path(V1_SELF, Some("memory")).as_deref(),
            Some("/process_api/abc")
        );
        assert_eq!(
            own_cgroup_path(V1_SELF, Some("cpuacct")).as_deref(),
            Some("/a:b")
        );
        assert_eq!(own_cgroup_path(V1_SELF, Some("pids")), None);
    }

    #[test]
    fn cgroup_own_path_v2_line() {
        assert_eq!(own_cgroup_path(V1_SELF, None).as_deref(), Some("/"));
        assert_eq!(
            own_cgroup_path("0::/system.slice/x.service\n", None).as_deref(),
            Some("/system.slice/x.service")
        );
    }

    #[test]
    fn cgroup_path_relative_to_mount_root() {
        assert_eq!(
            relative_to_mount("/process_api/abc", Path::new("/")),
            PathBuf::from("process_api/abc")
        );
        assert_eq!(
            relative_to_mount("/ns/x", Path::new("/ns")),
            PathBuf::from("x")
        );
        assert_eq!(relative_to_mount("/", Path::new("/")), PathBuf::new());
        assert_eq!(
            relative_to_mount("/../etc", Path::new("/")),
            PathBuf::from("etc")
        );
    }
}
