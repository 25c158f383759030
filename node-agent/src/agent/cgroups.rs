//! The agent's cgroup tree kept equal to its records.
//!
//! The cgroup layer ([`stratum_cgroup`]) manages the hierarchies whose
//! controllers enforce pools (cpu, memory, pids...). An OCI runtime also
//! makes a pod's directories in every other mounted hierarchy (devices,
//! freezer, name=systemd...), and removes only its containers' leaves.
//! Directories left there, or left anywhere by a `kill -9` between making
//! a cgroup and committing its record, name nothing the agent knows.
//!
//! This module owns their removal: a deleted pool's directories go from
//! every hierarchy, and at start every directory below the agent's root
//! that no pool, VM or pod record accounts for is removed. It never kills:
//! a stray directory that still holds processes is left in place with a
//! warning (something runs there that the agent did not start, or a
//! workload it lost; an operator decides).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use stratum_runtime::CgroupMapping;

use super::shared::Shared;
use super::Agent;

impl Shared {
    /// Removes the cgroup at `path` (below the agent's root) and all below
    /// it from every mounted hierarchy, the unmanaged ones included. A
    /// directory that holds processes stays.
    pub(super) fn prune_cgroup_everywhere(&self, path: &Path) {
        let Some((mapping, root)) = self.cgroup_mapping() else {
            return;
        };
        let runtime_path = format!("{}/{}", root.trim_end_matches('/'), path.display());
        if let Err(e) = mapping.prune(&runtime_path) {
            tracing::warn!(cgroup = %path.display(), "a cgroup stays: {e}");
        }
    }

    /// Removes, from every hierarchy, the directories below the agent's
    /// root that no record accounts for: `pools`, the pools' cgroup paths,
    /// and `workloads`, the VMs' and pods' (whose insides are their
    /// managers' business).
    pub(super) fn prune_strays(&self, pools: &BTreeSet<PathBuf>, workloads: &BTreeSet<PathBuf>) {
        let Some((mapping, root)) = self.cgroup_mapping() else {
            return;
        };
        let mut strays = BTreeSet::new();
        for base in mapping.host_dirs(root) {
            find_strays(&base, Path::new(""), pools, workloads, &mut strays);
        }
        for stray in strays {
            tracing::warn!(cgroup = %stray.display(), "removing a cgroup no record accounts for");
            self.prune_cgroup_everywhere(&stray);
        }
    }

    /// The runtime's view of the hierarchies and the agent root's path in
    /// it, read from the mounts on first use; `None` (and a warning) when
    /// they cannot be read, to be tried again next time.
    pub(super) fn cgroup_mapping(&self) -> Option<&(CgroupMapping, String)> {
        if let Some(found) = self.cgroup_map.get() {
            return Some(found);
        }
        let found = self
            .cgroups
            .root()
            .map_err(|e| e.to_string())
            .and_then(|root| {
                let mapping = CgroupMapping::detect(&root).map_err(|e| e.to_string())?;
                let path = mapping.runtime_path(&root).map_err(|e| e.to_string())?;
                Ok((mapping, path))
            });
        match found {
            Ok(found) => Some(self.cgroup_map.get_or_init(|| found)),
            Err(e) => {
                tracing::warn!("cannot map the cgroup hierarchies: {e}");
                None
            }
        }
    }
}

impl Agent {
    /// Removes, from every hierarchy, the directories below the agent's
    /// root that no pool, VM or pod record accounts for. Run at start,
    /// after the pools, VMs and pods are restored.
    pub(super) fn reconcile_cgroups(&self) {
        let pools = self.pools.cgroup_paths();
        let workloads = self
            .vms
            .cgroup_paths()
            .into_iter()
            .chain(self.pods.cgroup_paths())
            .collect();
        self.shared.prune_strays(&pools, &workloads);
    }
}

/// Walks the directories below `base/rel`: a pool's is entered, a
/// workload's skipped, anything else is a stray (recorded once, its
/// subtree with it).
fn find_strays(
    base: &Path,
    rel: &Path,
    pools: &BTreeSet<PathBuf>,
    workloads: &BTreeSet<PathBuf>,
    strays: &mut BTreeSet<PathBuf>,
) {
    let Ok(entries) = std::fs::read_dir(base.join(rel)) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let child = rel.join(entry.file_name());
        if pools.contains(&child) {
            find_strays(base, &child, pools, workloads, strays);
        } else if !workloads.contains(&child) {
            strays.insert(child);
        }
    }
}
