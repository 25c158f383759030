//! `Hierarchy`: the detected cgroup setup plus the Stratum root's name; the
//! one place that creates, adopts and opens pool and workload cgroups.
//!
//! Creation is idempotent and never writes a limit: after an agent restart,
//! "creating" the existing tree adopts it with the limits the kernel still
//! enforces, and the pool layer re-applies its own values when it chooses.

use std::fs;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use super::discover::{discover, Bases, CgroupVersion, Placement};
use super::error::{CgroupError, Result};
use super::fsio;
use super::group::Cgroup;
use super::limits::CgroupLimits;

/// Default name of the Stratum root cgroup in each hierarchy.
pub const DEFAULT_ROOT_NAME: &str = "stratum";

/// Longest pool, leaf or root name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// How to set up the hierarchy; `Default` is root "stratum" under the
/// agent's own cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HierarchyConfig {
    /// Name of the Stratum root cgroup (the root pool).
    pub root_name: String,
    /// Where the root goes in each hierarchy.
    pub placement: Placement,
}

impl Default for HierarchyConfig {
    fn default() -> Self {
        HierarchyConfig {
            root_name: DEFAULT_ROOT_NAME.to_string(),
            placement: Placement::default(),
        }
    }
}

/// The host's cgroup hierarchy (v1 or v2, detected) as Stratum uses it.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    bases: Bases,
    root_name: String,
}

/// Name of the leaf cgroup that holds the `vmm` process of VM `vm_id`.
pub fn vm_leaf_name(vm_id: &str) -> String {
    format!("vm-{vm_id}")
}

impl Hierarchy {
    /// Detects the host's setup with the default configuration.
    pub fn detect() -> Result<Hierarchy> {
        Hierarchy::detect_with(&HierarchyConfig::default())
    }

    /// Detects the host's setup; fails if cpu or memory is unavailable.
    pub fn detect_with(config: &HierarchyConfig) -> Result<Hierarchy> {
        validate_name(&config.root_name)?;
        Ok(Hierarchy {
            bases: discover(config.placement)?,
            root_name: config.root_name.clone(),
        })
    }

    /// cgroup v1 or v2.
    pub fn version(&self) -> CgroupVersion {
        self.bases.version
    }

    /// The Stratum root's name.
    pub fn root_name(&self) -> &str {
        &self.root_name
    }

    /// Creates the Stratum root (the root pool), or adopts it if it exists.
    pub fn root(&self) -> Result<Cgroup> {
        let root = Cgroup::at(&self.bases, &self.root_name, Path::new(""));
        if self.version() == CgroupVersion::V2 {
            self.enable_controllers(&self.bases.cpu)?;
        }
        make_dirs(&root)?;
        Ok(root)
    }

    /// Creates pool `name` under `parent`, or adopts it if it exists.
    pub fn create_pool(&self, parent: &Cgroup, name: &str) -> Result<Cgroup> {
        self.create_child(parent, name)
    }

    /// Creates the workload leaf `name` (one VM or pod) under `pool`, or
    /// adopts it. Processes go only into leaves: on v2 a cgroup with child
    /// cgroups cannot hold processes.
    pub fn create_leaf(&self, pool: &Cgroup, name: &str) -> Result<Cgroup> {
        self.create_child(pool, name)
    }

    /// Creates (or adopts) the leaf `vm-<vm_id>` for a VM's `vmm` process.
    pub fn create_vm_leaf(&self, pool: &Cgroup, vm_id: &str) -> Result<Cgroup> {
        self.create_child(pool, &vm_leaf_name(vm_id))
    }

    /// Creates pool `name` below the pool at `parent` (a path as
    /// [`Cgroup::path`] gives it; empty for the root) with `limits`: how a
    /// new pool gets its cgroup. Nothing is checked beforehand (a missing
    /// parent makes `mkdir` fail with `NotFound`), and where every
    /// directory is new only the limits that differ from a new cgroup's
    /// defaults are written: with one directory per v1 hierarchy, that is
    /// most of the syscalls a pool create makes. A directory left from
    /// before (a crash between its mkdir and the pool's record) is adopted
    /// and gets every limit. On failure the directories this call made are
    /// removed again.
    pub fn create_pool_with(
        &self,
        parent: &Path,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<Cgroup> {
        validate_path(parent)?;
        let parent = Cgroup::at(&self.bases, &self.root_name, parent);
        let (pool, made) = self.make_child(&parent, name)?;
        let written = if made.len() == pool.dirs().len() {
            pool.apply_to_new(limits)
        } else {
            pool.apply(limits)
        };
        if let Err(e) = written {
            remove_dirs(&made);
            return Err(e);
        }
        Ok(pool)
    }

    /// Opens an existing cgroup by its path below the Stratum root (as
    /// `Cgroup::path` gives it); fails with `NotFound` if any hierarchy
    /// lacks it. Writes nothing.
    pub fn open(&self, path: &Path) -> Result<Cgroup> {
        validate_path(path)?;
        let cgroup = Cgroup::at(&self.bases, &self.root_name, path);
        match cgroup.dirs().into_iter().find(|dir| !dir.is_dir()) {
            Some(missing) => Err(CgroupError::NotFound { path: missing }),
            None => Ok(cgroup),
        }
    }

    fn create_child(&self, parent: &Cgroup, name: &str) -> Result<Cgroup> {
        self.make_child(parent, name).map(|(child, _)| child)
    }

    /// Creates (or adopts) `name` below `parent`; returns it and the
    /// directories this call made. A parent missing in any hierarchy is
    /// `NotFound`, from `mkdir` itself rather than a check before it.
    fn make_child(&self, parent: &Cgroup, name: &str) -> Result<(Cgroup, Vec<PathBuf>)> {
        validate_name(name)?;
        if self.version() == CgroupVersion::V2 {
            self.enable_controllers(parent.primary_dir())?;
        }
        let child = Cgroup::at(&self.bases, &self.root_name, &parent.path().join(name));
        let made = make_dirs(&child)?;
        Ok((child, made))
    }

    /// v2: a child only gets a controller's files (cpu.max, memory.min...)
    /// if its parent lists the controller in `cgroup.subtree_control`.
    /// Enables the missing ones in one write; an already enabled controller
    /// is left alone, so adopting a tree changes nothing.
    fn enable_controllers(&self, dir: &Path) -> Result<()> {
        let wanted: Vec<&str> = ["cpu", "memory"]
            .into_iter()
            .chain(self.bases.pids.as_ref().map(|_| "pids"))
            .collect();
        let control = dir.join("cgroup.subtree_control");
        let enabled = match fs::read_to_string(&control) {
            Ok(enabled) => enabled,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(CgroupError::NotFound {
                    path: dir.to_path_buf(),
                })
            }
            Err(e) => return Err(CgroupError::io(&control, "read")(e)),
        };
        let missing: Vec<String> = wanted
            .into_iter()
            .filter(|c| !enabled.split_whitespace().any(|e| e == *c))
            .map(|c| format!("+{c}"))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        fsio::write(&control, &missing.join(" "))
    }
}

/// Creates each directory that does not exist yet and returns the ones it
/// made. `create_dir` rather than cgroups-rs's `create_dir_all`, so that a
/// parent removed meanwhile is an error (`NotFound`, and the directories
/// already made in other hierarchies go again) instead of being silently
/// recreated without its limits.
fn make_dirs(cgroup: &Cgroup) -> Result<Vec<PathBuf>> {
    let mut made = Vec::new();
    for dir in cgroup.dirs() {
        let failed = match fs::create_dir(&dir) {
            Ok(()) => {
                made.push(dir);
                continue;
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => continue,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                CgroupError::NotADirectory { path: dir }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => CgroupError::NotFound {
                path: dir.parent().map_or_else(PathBuf::new, Path::to_path_buf),
            },
            Err(e) => CgroupError::Io {
                path: dir,
                op: "create cgroup",
                source: e,
            },
        };
        remove_dirs(&made);
        return Err(failed);
    }
    Ok(made)
}

/// Removes directories `make_dirs` made (empty: nothing was put in them).
fn remove_dirs(made: &[PathBuf]) {
    for dir in made {
        let _ = fs::remove_dir(dir);
    }
}

/// A path below the Stratum root must be relative and made of valid names.
fn validate_path(path: &Path) -> Result<()> {
    for component in path.components() {
        match component {
            Component::Normal(name) => validate_name(&name.to_string_lossy())?,
            _ => {
                return Err(invalid(
                    &path.to_string_lossy(),
                    "not a relative path of names",
                ))
            }
        }
    }
    Ok(())
}

/// v1 interface files whose names a valid name could otherwise take.
const V1_FILES_WITHOUT_DOT: [&str; 3] = ["tasks", "notify_on_release", "release_agent"];

/// Names become directory names next to the kernel's interface files:
/// only `[A-Za-z0-9_-]`, so no '/', no '.', and no clash with `cpu.max` & co.
fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(invalid(name, "empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(name, "longer than 128 bytes"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(invalid(
            name,
            "only ASCII letters, digits, '_' and '-' are allowed",
        ));
    }
    if V1_FILES_WITHOUT_DOT.contains(&name) {
        return Err(invalid(name, "clashes with a cgroup v1 interface file"));
    }
    Ok(())
}

fn invalid(name: &str, reason: &'static str) -> CgroupError {
    CgroupError::InvalidName {
        name: name.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_names_are_single_safe_components() {
        assert!(validate_name("prod-web_1").is_ok());
        assert!(validate_name(&vm_leaf_name("0f3a")).is_ok());
        for bad in ["", "a/b", "..", ".", "cpu.max", "a b", "tasks", "é"] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_name(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
    }
}
