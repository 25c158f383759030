//! Naming a Stratum cgroup the way an OCI runtime resolves
//! `linux.cgroupsPath`, and the "cgroup view" the runtime runs in when one
//! path cannot name it.
//!
//! Why this is not just `Cgroup::path()`: with the cgroupfs manager, crun
//! takes `cgroupsPath` relative to each hierarchy's *mount point*, a leading
//! `/` or not (`/sys/fs/cgroup/<controller>/<path>` on v1,
//! `/sys/fs/cgroup/<path>` on v2); runc does the same for absolute paths
//! (relative ones it resolves below its own cgroup, and on v2 below the
//! parent of its own cgroup). The Stratum tree, however, lives below the
//! agent's *own* cgroup in each hierarchy (`Placement::UnderOwnCgroup`),
//! and on v1 the agent may sit in different cgroups in different
//! hierarchies — on the development machine memory is
//! `/process_api/<id>` while cpu is `/`. Then no single path names the
//! container's cgroup in every hierarchy.
//!
//! The mapping therefore has two modes, detected from the Stratum root:
//!
//! - **Direct** (v2; v1 when the agent's cgroup is the same path in every
//!   hierarchy; `Placement::AtHierarchyRoot`): `cgroupsPath` is the
//!   cgroup's path below the mount point, e.g.
//!   `/system.slice/agent.service/stratum/pool-1/pod-7/ctr-1`, and the
//!   runtime runs in the host's mount namespace.
//! - **Rebased** (v1, own cgroups differ): every runtime invocation runs in
//!   a mount namespace of its own in which each hierarchy's mount point is
//!   made a slave (so nothing of the view reaches the host; every other
//!   mount propagates as on the host, `rshared` volumes included) and
//!   covered by a bind mount of the agent's own cgroup in it
//!   (`/sys/fs/cgroup/memory` shows `/sys/fs/cgroup/memory/process_api/<id>`).
//!   In that view every hierarchy is rooted where Stratum's tree is based,
//!   so `cgroupsPath` is the path below the agent's cgroup —
//!   `/stratum/pool-1/pod-7/ctr-1` — and names the right directory in
//!   every hierarchy, including the ones Stratum does not manage (devices,
//!   freezer...). The namespace lives only as long as the runtime command;
//!   the container's own mount namespace is cloned from it, but pivots
//!   away from it to its rootfs. The runtime records the view-relative
//!   path in its state, so *every* call (delete, exec, kill) must use the
//!   view; [`super::OciRuntime`] does.
//!
//! The runtime also creates the path in hierarchies Stratum never touches
//! (devices, freezer, cpuset, name=systemd...) and removes only the leaf
//! on delete; [`CgroupMapping::prune`] removes such leftovers of a pod.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::error::{Result, RuntimeError};
use super::mountinfo::{self, MountEntry};
use stratum_cgroup::Cgroup;

/// One mounted cgroup hierarchy as the runtime will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HierarchyMount {
    mount_point: PathBuf,
    /// The agent's own cgroup in this hierarchy, relative to the mount
    /// point (empty when the agent is at the mount's root).
    own: PathBuf,
}

/// Whether runtime commands need the rebased cgroup view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingMode {
    /// `cgroupsPath` is the cgroup's path below the mount point.
    Direct,
    /// `cgroupsPath` is relative to the agent's own cgroup, inside a
    /// [`CgroupView`].
    Rebased,
}

/// How Stratum cgroups are named for the OCI runtime on this host.
#[derive(Debug, Clone)]
pub struct CgroupMapping {
    mode: MappingMode,
    hierarchies: Vec<HierarchyMount>,
    view: Option<CgroupView>,
}

/// Bind mounts that re-root each cgroup hierarchy at the agent's own
/// cgroup, entered by the runtime process between fork and exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupView {
    /// (agent's own cgroup directory, hierarchy mount point).
    binds: Vec<(PathBuf, PathBuf)>,
}

impl CgroupView {
    /// The bind mounts, as (source, target).
    pub fn binds(&self) -> &[(PathBuf, PathBuf)] {
        &self.binds
    }

    /// Everything the pre-exec hook needs, allocated before `fork`.
    pub(crate) fn prepared(&self) -> Result<PreparedView> {
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes()).map_err(|_| {
                RuntimeError::invalid("cgroup path", p.to_string_lossy(), "contains NUL")
            })
        };
        let mut binds = Vec::with_capacity(self.binds.len());
        for (source, target) in &self.binds {
            binds.push((c(source)?, c(target)?));
        }
        Ok(PreparedView { binds })
    }
}

/// A [`CgroupView`] with its C strings ready, for `pre_exec`.
#[derive(Debug, Clone)]
pub(crate) struct PreparedView {
    binds: Vec<(CString, CString)>,
}

impl PreparedView {
    /// In the forked child, before exec: a mount namespace of its own
    /// in which each hierarchy's mount point is first made a slave, then
    /// covered by its bind mount — so the view does not propagate to the
    /// host, while every other mount keeps the host's propagation (a
    /// container's `rshared` volume shares its mounts with the host, as
    /// under containerd). Only system calls on pre-allocated strings:
    /// async-signal-safe.
    pub(crate) fn enter(&self) -> io::Result<()> {
        // SAFETY: unshare and mount take flags and NUL-terminated strings
        // that live in `self`; no memory is allocated in the child.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(io::Error::last_os_error());
            }
            for (source, target) in &self.binds {
                // A mount stacked on a mount point propagates as the mount
                // it covers: a slave's does not reach its master.
                if libc::mount(
                    std::ptr::null(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                if libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

impl CgroupMapping {
    /// Detects the mapping from the host's mounts, the agent's own cgroups
    /// and `reference`, a cgroup of the Stratum tree (normally the root).
    pub fn detect(reference: &Cgroup) -> Result<CgroupMapping> {
        let mounts = mountinfo::read_self()?;
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(RuntimeError::io("/proc/self/cgroup", "read"))?;
        CgroupMapping::from_parts(&mounts, &own, &reference.dirs())
    }

    fn from_parts(mounts: &[MountEntry], own_cgroups: &str, reference: &[PathBuf]) -> Result<Self> {
        let hierarchies = hierarchies(mounts, own_cgroups);
        let mut direct = Vec::new();
        let mut rebased = Vec::new();
        for dir in reference {
            let (mount, rel) = locate(&hierarchies, dir)?;
            rebased.push(rel.strip_prefix(&mount.own).ok().map(Path::to_path_buf));
            direct.push(rel);
        }
        let all_equal = |paths: &[PathBuf]| paths.windows(2).all(|w| w[0] == w[1]);
        if all_equal(&direct) {
            return Ok(CgroupMapping {
                mode: MappingMode::Direct,
                hierarchies,
                view: None,
            });
        }
        let rebased: Option<Vec<PathBuf>> = rebased.into_iter().collect();
        match rebased {
            Some(tails) if all_equal(&tails) => {
                let binds = hierarchies
                    .iter()
                    .filter(|h| !h.own.as_os_str().is_empty())
                    .map(|h| (h.mount_point.join(&h.own), h.mount_point.clone()))
                    .collect();
                Ok(CgroupMapping {
                    mode: MappingMode::Rebased,
                    hierarchies,
                    view: Some(CgroupView { binds }),
                })
            }
            _ => Err(RuntimeError::CgroupPath {
                dir: reference.first().cloned().unwrap_or_default(),
                reason: "its directories differ between hierarchies other than by the \
                         agent's own cgroup; no cgroupsPath can name it"
                    .to_string(),
            }),
        }
    }

    /// Direct or rebased.
    pub fn mode(&self) -> MappingMode {
        self.mode
    }

    /// The mount view runtime commands must run in (rebased mode only).
    pub fn view(&self) -> Option<&CgroupView> {
        self.view.as_ref()
    }

    /// The `linux.cgroupsPath` naming `cgroup`, e.g.
    /// `/stratum/pool-1/pod-7/ctr-1`.
    pub fn runtime_path(&self, cgroup: &Cgroup) -> Result<String> {
        let mut found: Option<PathBuf> = None;
        for dir in cgroup.dirs() {
            let (mount, rel) = locate(&self.hierarchies, &dir)?;
            let rel = match self.mode {
                MappingMode::Direct => rel,
                MappingMode::Rebased => rel
                    .strip_prefix(&mount.own)
                    .map(Path::to_path_buf)
                    .map_err(|_| RuntimeError::CgroupPath {
                        dir: dir.clone(),
                        reason: "not below the agent's own cgroup".to_string(),
                    })?,
            };
            match &found {
                None => found = Some(rel),
                Some(previous) if *previous == rel => {}
                Some(previous) => {
                    return Err(RuntimeError::CgroupPath {
                        dir,
                        reason: format!(
                            "is {} in one hierarchy and {} in another",
                            rel.display(),
                            previous.display()
                        ),
                    })
                }
            }
        }
        let rel = found.ok_or_else(|| RuntimeError::CgroupPath {
            dir: PathBuf::new(),
            reason: "the cgroup has no directories".to_string(),
        })?;
        Ok(format!("/{}", rel.to_string_lossy()))
    }

    /// Where the runtime's cgroup `runtime_path` lives on the host, in
    /// every mounted hierarchy.
    pub fn host_dirs(&self, runtime_path: &str) -> Vec<PathBuf> {
        let rel = normal_components(Path::new(runtime_path));
        self.hierarchies
            .iter()
            .map(|h| match self.mode {
                MappingMode::Direct => h.mount_point.join(&rel),
                MappingMode::Rebased => h.mount_point.join(&h.own).join(&rel),
            })
            .collect()
    }

    /// Removes the cgroup `runtime_path` and every cgroup below it, in
    /// every hierarchy, including the ones only the runtime created
    /// (devices, freezer, ...). Missing directories are fine; a cgroup that
    /// still holds processes makes it fail (`EBUSY`), after the rest was
    /// tried.
    pub fn prune(&self, runtime_path: &str) -> Result<()> {
        if normal_components(Path::new(runtime_path))
            .as_os_str()
            .is_empty()
        {
            return Err(RuntimeError::invalid(
                "cgroup path to prune",
                runtime_path,
                "names a hierarchy's base",
            ));
        }
        let mut first_error = None;
        for dir in self.host_dirs(runtime_path) {
            if let Err(e) = remove_tree(&dir) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Every cgroup hierarchy mount with the agent's own cgroup in it. A mount
/// point mounted over (several entries) counts once, with its top entry.
fn hierarchies(mounts: &[MountEntry], own_cgroups: &str) -> Vec<HierarchyMount> {
    let mut out: Vec<HierarchyMount> = Vec::new();
    for mount in mounts.iter().filter(|m| m.is_cgroup()) {
        let own_path = own_cgroup(own_cgroups, mount).unwrap_or_default();
        let own = relative_to_root(Path::new(&own_path), &mount.root);
        out.retain(|h| h.mount_point != mount.mount_point);
        out.push(HierarchyMount {
            mount_point: mount.mount_point.clone(),
            own,
        });
    }
    out
}

/// The agent's cgroup in `mount`'s hierarchy, from `/proc/self/cgroup`.
fn own_cgroup(content: &str, mount: &MountEntry) -> Option<String> {
    let controllers = mount.cgroup_controllers();
    content.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (id, list, path) = (fields.next()?, fields.next()?, fields.next()?);
        let matches = if mount.fs_type == "cgroup2" {
            id == "0" && list.is_empty()
        } else {
            !list.is_empty() && list.split(',').any(|c| controllers.iter().any(|m| m == c))
        };
        matches.then(|| path.to_string())
    })
}

/// `path` (from the hierarchy's root) relative to a mount whose root is
/// `mount_root`; only plain components survive, so joins cannot escape.
fn relative_to_root(path: &Path, mount_root: &Path) -> PathBuf {
    normal_components(path.strip_prefix(mount_root).unwrap_or(path))
}

fn normal_components(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

/// The hierarchy holding `dir` (longest mount point prefix) and `dir`
/// relative to its mount point.
fn locate<'a>(
    hierarchies: &'a [HierarchyMount],
    dir: &Path,
) -> Result<(&'a HierarchyMount, PathBuf)> {
    let best = |dir: &Path| {
        hierarchies
            .iter()
            .filter(|h| dir.starts_with(&h.mount_point))
            .max_by_key(|h| h.mount_point.as_os_str().len())
            .map(|h| {
                (
                    h,
                    normal_components(dir.strip_prefix(&h.mount_point).unwrap_or(dir)),
                )
            })
    };
    if let Some(found) = best(dir) {
        return Ok(found);
    }
    // A symlinked mount point (`cpu` -> `cpu,cpuacct`): resolve and retry.
    let canonical =
        fs::canonicalize(dir).map_err(RuntimeError::io(dir, "resolve cgroup directory"))?;
    best(&canonical).ok_or_else(|| RuntimeError::CgroupPath {
        dir: dir.to_path_buf(),
        reason: "not inside any mounted cgroup hierarchy".to_string(),
    })
}

/// rmdir of `dir` and its subdirectories, deepest first.
fn remove_tree(dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(RuntimeError::io(dir, "list cgroup")(e)),
    };
    let mut first_error = None;
    for entry in entries {
        let entry = entry.map_err(RuntimeError::io(dir, "list cgroup"))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            if let Err(e) = remove_tree(&entry.path()) {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RuntimeError::io(dir, "remove cgroup")(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw - cgroup cgroup rw,devices
41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";

    fn mapping(own: &str, reference: &[&str]) -> Result<CgroupMapping> {
        let mounts = mountinfo::parse(MOUNTS).expect("mounts");
        let dirs: Vec<PathBuf> = reference.iter().map(PathBuf::from).collect();
        CgroupMapping::from_parts(&mounts, own, &dirs)
    }

    #[test]
    fn runtime_cgpath_direct_when_own_cgroups_agree() {
        let own = "4:memory:/a\n1:cpu:/a\n5:devices:/a\n0::/a\n";
        let m = mapping(
            own,
            &[
                "/sys/fs/cgroup/cpu/a/stratum",
                "/sys/fs/cgroup/memory/a/stratum",
            ],
        )
        .expect("mapping");
        assert_eq!(m.mode(), MappingMode::Direct);
        assert!(m.view().is_none());
        assert_eq!(
            m.host_dirs("/a/stratum/p"),
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu/a/stratum/p"),
                PathBuf::from("/sys/fs/cgroup/memory/a/stratum/p"),
                PathBuf::from("/sys/fs/cgroup/devices/a/stratum/p"),
                PathBuf::from("/sys/fs/cgroup/unified/a/stratum/p"),
            ]
        );
    }

    #[test]
    fn runtime_cgpath_rebased_when_memory_cgroup_differs() {
        let own = "4:memory:/process_api/x\n1:cpu:/\n5:devices:/\n0::/\n";
        let m = mapping(
            own,
            &[
                "/sys/fs/cgroup/cpu/stratum",
                "/sys/fs/cgroup/memory/process_api/x/stratum",
            ],
        )
        .expect("mapping");
        assert_eq!(m.mode(), MappingMode::Rebased);
        let view = m.view().expect("view");
        assert_eq!(
            view.binds(),
            &[(
                PathBuf::from("/sys/fs/cgroup/memory/process_api/x"),
                PathBuf::from("/sys/fs/cgroup/memory")
            )]
        );
        assert_eq!(
            m.host_dirs("/stratum/pool/pod"),
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu/stratum/pool/pod"),
                PathBuf::from("/sys/fs/cgroup/memory/process_api/x/stratum/pool/pod"),
                PathBuf::from("/sys/fs/cgroup/devices/stratum/pool/pod"),
                PathBuf::from("/sys/fs/cgroup/unified/stratum/pool/pod"),
            ]
        );
    }

    #[test]
    fn runtime_cgpath_refuses_unrelated_directories() {
        let own = "4:memory:/\n1:cpu:/\n";
        let err = mapping(own, &["/sys/fs/cgroup/cpu/a", "/sys/fs/cgroup/memory/b"]);
        assert!(matches!(err, Err(RuntimeError::CgroupPath { .. })));
    }

    #[test]
    fn runtime_cgpath_prune_refuses_a_base() {
        let own = "4:memory:/\n1:cpu:/\n";
        let m =
            mapping(own, &["/sys/fs/cgroup/cpu/a", "/sys/fs/cgroup/memory/a"]).expect("mapping");
        assert!(m.prune("/").is_err());
        assert!(m.prune("").is_err());
    }

    /// Real mounts, as root: a shared tmpfs stands in for a hierarchy's
    /// mount point (shared, as systemd mounts them), a shared bind mount
    /// for a container's `rshared` volume.
    #[test]
    fn the_view_stays_out_of_the_host_and_shared_mounts_still_propagate() {
        use std::os::unix::process::CommandExt;
        stratum_testkit::root::require_root("mounts");
        let base = std::env::temp_dir().join(format!("stratum-view-{}", std::process::id()));
        let (hier, vol) = (base.join("hier"), base.join("vol"));
        let run = |script: &str| {
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .status()
                .expect("sh");
            assert!(status.success(), "{script}");
        };
        run(&format!(
            "mkdir -p {h} {v} && mount -t tmpfs stratum-test {h} && mount --make-shared {h} \
             && mkdir {h}/own && touch {h}/own/marker \
             && mount --bind {v} {v} && mount --make-shared {v} && mkdir {v}/sub",
            h = hier.display(),
            v = vol.display()
        ));
        let view = CgroupView {
            binds: vec![(hier.join("own"), hier.clone())],
        };
        let prepared = view.prepared().expect("prepared");
        let script = format!(
            "test -e {h}/marker && mount -t tmpfs stratum-test {v}/sub && touch {v}/sub/from-view",
            h = hier.display(),
            v = vol.display()
        );
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c").arg(&script);
        // SAFETY: `enter` makes system calls on memory owned by the moved
        // `prepared` only.
        unsafe {
            cmd.pre_exec(move || prepared.enter());
        }
        let status = cmd.status().expect("sh in the view");
        let propagated = vol.join("sub/from-view").exists();
        let leaked = hier.join("marker").exists();
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "umount {v}/sub; umount {v}; umount {h}; rm -rf {b}",
                v = vol.display(),
                h = hier.display(),
                b = base.display()
            ))
            .status();
        assert!(status.success(), "the view did not show the agent's cgroup");
        assert!(
            propagated,
            "a mount under a shared volume did not reach the host"
        );
        assert!(!leaked, "the view's bind mount reached the host");
    }
}
