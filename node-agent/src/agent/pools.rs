//! The pool manager: the pool tree (resource pools with their
//! reservations, limits, shares and quotas, and every VM and pod as a
//! workload of one), admission control, and the pools' cgroups.
//!
//! A pool operation goes: the pool model decides, the cgroup tree
//! enforces, the store remembers — each step undone if a later one fails,
//! so a refused or failed call leaves nothing behind. The VM and pod
//! managers place, admit and release their workloads through it; it never
//! calls them (locks are taken VM or pod first, pools last).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use prost_types::Timestamp;

use super::errors::{AgentError, Result};
use super::now;
use super::shared::Shared;
use crate::records::PoolRecord;
use crate::state::{Change, Ticket};
use stratum_api::proto;
use stratum_cgroup::{Cgroup, CgroupLimits};
use stratum_pool::{PoolId, PoolSpec, PoolTree, Resources, Workload, WorkloadId};

/// What a pool's cgroup enforces. Shares are relative among siblings;
/// limits cap the whole subtree; the memory reservation becomes
/// `memory.min` on v2 (v1 cannot guarantee memory, see DESIGN.md, "cgroups"). CPU
/// reservations have no cgroup form: admission control alone keeps them.
pub fn pool_limits(spec: &PoolSpec) -> CgroupLimits {
    CgroupLimits {
        cpu_shares_weight: u64::from(spec.cpu.shares.value()),
        cpu_limit_millicores: spec.cpu.limit,
        memory_limit_bytes: spec.memory.limit,
        memory_reservation_bytes: Some(spec.memory.reservation).filter(|&r| r > 0),
        pids_max: None,
    }
}

pub struct PoolManager {
    shared: Arc<Shared>,
    state: RwLock<State>,
    /// Bumped every time the write lock is taken: a value read under the
    /// read lock names the tree that was seen (see `api::pools`' cache).
    generation: AtomicU64,
}

/// What the lock guards.
pub(super) struct State {
    pub(super) tree: PoolTree,
    /// When each pool was created, kept for its record's rewrites.
    created: BTreeMap<PoolId, Timestamp>,
}

impl PoolManager {
    /// Rebuilds the tree from the stored pools (through the same admission
    /// checks as at create) and makes or adopts their cgroups with their
    /// limits.
    pub fn restore(
        shared: Arc<Shared>,
        capacity: Resources,
        records: Vec<PoolRecord>,
    ) -> Result<Self> {
        let mut tree = PoolTree::new(capacity, shared.config.system_reserve)?;
        let mut stored = Vec::with_capacity(records.len());
        let mut created = BTreeMap::new();
        for record in records {
            if let Some(at) = &record.created_at {
                created.insert(PoolId::from(record.id.clone()), *at);
            }
            let spec = record
                .spec
                .as_ref()
                .ok_or_else(|| AgentError::Internal(format!("pool {} has no spec", record.id)))?;
            stored.push((
                PoolId::from(record.id.clone()),
                pool_id_or_root(&record.parent_id),
                PoolSpec::try_from(spec)?,
            ));
        }
        tree.create_pools(stored)?;
        let manager = PoolManager {
            shared,
            state: RwLock::new(State { tree, created }),
            generation: AtomicU64::new(0),
        };
        {
            let state = manager.read();
            manager.shared.cgroups.root()?;
            for pool in state.tree.subtree(&PoolId::root())? {
                if pool.parent().is_some() {
                    manager.make_pool_cgroup(&state.tree, pool.id())?;
                }
            }
            manager.apply_subtree_limits(&state, &PoolId::root())?;
        }
        Ok(manager)
    }

    /// Makes the pool's cgroup with no lock held (cgroupfs directories are
    /// the slow part of a create), then admits the pool and stages its
    /// record under the write lock, and answers once the record is
    /// durable.
    pub fn create(
        &self,
        parent: &str,
        spec: &proto::ResourcePoolSpec,
    ) -> Result<proto::ResourcePool> {
        let spec = PoolSpec::try_from(spec)?;
        let parent = pool_id_or_root(parent);
        let parent_path = pool_cgroup_path(&self.read().tree, &parent)?;
        let id = PoolId::from(format!("pool-{}", self.shared.next_id()?));
        let cgroup =
            self.shared
                .cgroups
                .create_pool_with(&parent_path, id.as_str(), &pool_limits(&spec))?;
        let staged = self.admit_pool(&id, &parent, &spec);
        let (ticket, pool) = match staged {
            Ok(staged) => staged,
            Err(e) => {
                let _ = cgroup.remove();
                // The parent may have been deleted meanwhile, its cgroup
                // kept alive by the one just removed.
                if self.read().tree.get(&parent).is_err() {
                    self.shared.prune_cgroup_everywhere(&parent_path);
                }
                return Err(e);
            }
        };
        // On failure the store has stopped (see `state::journal`): the
        // restart reloads the pools and removes the cgroup.
        self.shared.settle(ticket)?;
        Ok(pool)
    }

    /// Admits pool `id` into the tree and stages its record.
    fn admit_pool(
        &self,
        id: &PoolId,
        parent: &PoolId,
        spec: &PoolSpec,
    ) -> Result<(Ticket, proto::ResourcePool)> {
        let mut state = self.write();
        state.tree.create_pool(id.clone(), parent, spec.clone())?;
        let created_at = now();
        let record = PoolRecord {
            id: id.to_string(),
            parent_id: parent.to_string(),
            spec: Some(spec.into()),
            created_at: Some(created_at),
        };
        let staged = state
            .tree
            .to_proto(id)
            .map_err(AgentError::from)
            .and_then(|pool| Ok((self.shared.stage([Change::PutPool(record)])?, pool)));
        match staged {
            Ok(_) => {
                state.created.insert(id.clone(), created_at);
            }
            Err(_) => {
                let _ = state.tree.delete_pool(id);
            }
        }
        staged
    }

    pub fn get(&self, id: &str) -> Result<proto::ResourcePool> {
        Ok(self.read().tree.to_proto(&pool_id_or_root(id))?)
    }

    /// The subtree under `root` (empty = the whole tree), parents before
    /// children.
    pub fn list(&self, root: &str) -> Result<Vec<proto::ResourcePool>> {
        self.list_at(root).map(|(_, pools)| pools)
    }

    /// [`PoolManager::list`] and the tree's generation it was read at.
    pub fn list_at(&self, root: &str) -> Result<(u64, Vec<proto::ResourcePool>)> {
        let state = self.read();
        let generation = self.generation();
        let pools = subtree_ids(&state.tree, root)?
            .iter()
            .map(|id| Ok(state.tree.to_proto(id)?))
            .collect::<Result<_>>()?;
        Ok((generation, pools))
    }

    /// The tree's generation now: unchanged means the tree is.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Changes the pool's spec and its subtree's cgroups; returns the pool
    /// and the ids of its subtree (whose running VMs need their limits
    /// written again: the agent asks the VM manager).
    pub(super) fn update(
        &self,
        id: &str,
        spec: &proto::ResourcePoolSpec,
    ) -> Result<(proto::ResourcePool, Vec<PoolId>)> {
        let spec = PoolSpec::try_from(spec)?;
        let id = PoolId::from(id);
        let (ticket, pool, subtree) = {
            let mut state = self.write();
            let old = state.tree.get(&id)?.spec().clone();
            state.tree.update_pool(&id, spec.clone())?;
            match self.stage_pool_update(&state, &id) {
                Ok(ticket) => (
                    ticket,
                    state.tree.to_proto(&id)?,
                    subtree_ids(&state.tree, id.as_str())?,
                ),
                Err(e) => {
                    let _ = state.tree.update_pool(&id, old);
                    let _ = self.apply_subtree_limits(&state, &id);
                    return Err(e);
                }
            }
        };
        self.shared.settle(ticket)?;
        Ok((pool, subtree))
    }

    /// Writes the new limits to the cgroups and stages the record. The
    /// cgroup writes stay under the lock: a concurrent update of a parent
    /// re-applies its children's limits, and the last writer must win.
    fn stage_pool_update(&self, state: &State, id: &PoolId) -> Result<Ticket> {
        self.apply_subtree_limits(state, id)?;
        let pool = state.tree.get(id)?;
        let record = PoolRecord {
            id: id.to_string(),
            parent_id: pool.parent().map(ToString::to_string).unwrap_or_default(),
            spec: Some(pool.spec().into()),
            created_at: state.created.get(id).copied(),
        };
        self.shared.stage([Change::PutPool(record)])
    }

    /// Writes the limits of `id` and of every pool below it: on cgroup v1
    /// a child's stored CPU quota was capped at its parent's, so raising a
    /// parent must re-apply its children.
    fn apply_subtree_limits(&self, state: &State, id: &PoolId) -> Result<()> {
        for pool in state.tree.subtree(id)? {
            self.pool_cgroup_in(&state.tree, pool.id())?
                .apply(&pool_limits(pool.spec()))?;
        }
        Ok(())
    }

    pub fn delete(&self, id: &str) -> Result<()> {
        let id = PoolId::from(id);
        let (ticket, cgroup, path) = {
            let mut state = self.write();
            // A cgroup removed behind the agent's back does not block the delete.
            let cgroup = self.pool_cgroup_in(&state.tree, &id).ok();
            let path = pool_cgroup_path(&state.tree, &id)?;
            let removed = state.tree.delete_pool(&id)?;
            match self.shared.stage([Change::DeletePool(id.to_string())]) {
                Ok(ticket) => {
                    state.created.remove(&id);
                    (ticket, cgroup, path)
                }
                Err(e) => {
                    let parent = removed.parent().cloned().unwrap_or_else(PoolId::root);
                    let _ = state.tree.create_pool(id, &parent, removed.spec().clone());
                    return Err(e);
                }
            }
        };
        self.shared.settle(ticket)?;
        match cgroup.map(|c| c.remove()) {
            Some(Err(e)) => tracing::warn!(pool = %id, "pool deleted, its cgroup stays: {e}"),
            // What an OCI runtime made for the pool's pods in hierarchies
            // the cgroup layer does not manage.
            _ => self.shared.prune_cgroup_everywhere(&path),
        }
        Ok(())
    }

    /// How the host's capacity is split.
    pub fn capacity(&self) -> proto::HostCapacity {
        self.read().tree.capacity().into()
    }

    /// The host's memory, in bytes.
    pub fn host_memory(&self) -> u64 {
        self.read().tree.host().memory_bytes
    }

    // -- Workloads: the VM and pod managers' side. --------------------------

    /// Adds `workload` to its pool (quotas checked, nothing reserved).
    pub fn add_workload(&self, workload: Workload) -> Result<()> {
        Ok(self.write().tree.add_workload(workload)?)
    }

    /// Whether [`PoolManager::add_workload`] would take `workload` now.
    pub fn check_workload(&self, workload: &Workload) -> Result<()> {
        let mut state = self.write();
        state.tree.add_workload(workload.clone())?;
        let _ = state.tree.remove_workload(workload.id());
        Ok(())
    }

    /// Adds `workload` and admits its reservation, or neither.
    pub fn add_admitted(&self, workload: Workload) -> Result<()> {
        let mut state = self.write();
        let id = workload.id().clone();
        state.tree.add_workload(workload)?;
        if let Err(e) = state.tree.admit(&id) {
            let _ = state.tree.remove_workload(&id);
            return Err(e.into());
        }
        Ok(())
    }

    /// Removes the workload `id` (its reservation too, if it holds one).
    pub fn remove_workload(&self, id: &str) {
        let mut state = self.write();
        let id = WorkloadId::from(id);
        let _ = state.tree.release(&id);
        let _ = state.tree.remove_workload(&id);
    }

    /// Admits the reservation of workload `id` (RESOURCE_EXHAUSTED when it
    /// does not fit).
    pub fn admit(&self, id: &str) -> Result<()> {
        Ok(self.write().tree.admit(&WorkloadId::from(id))?)
    }

    /// Releases the reservation of workload `id`, if it holds one.
    pub fn release(&self, id: &str) {
        let _ = self.write().tree.release(&WorkloadId::from(id));
    }

    /// The reservation workload `id` holds, while admitted.
    pub fn reservation_of(&self, id: &str) -> Option<Resources> {
        self.read()
            .tree
            .workload(&WorkloadId::from(id))
            .filter(|w| w.is_admitted())
            .map(Workload::reservation)
    }

    /// Records that pod `id` now has `containers` containers.
    pub fn set_pod_containers(&self, id: &str, containers: u32) {
        let _ = self
            .write()
            .tree
            .set_pod_containers(&WorkloadId::from(id), containers);
    }

    /// The namespace a pod in `pool` gets by default: the id of the
    /// top-level pool above it, or `root`.
    pub fn namespace_of(&self, pool: &PoolId) -> Result<String> {
        let state = self.read();
        let mut current = state.tree.get(pool)?;
        loop {
            match current.parent() {
                None => return Ok("root".to_string()),
                Some(parent) if parent == state.tree.root().id() => {
                    return Ok(current.id().as_str().to_string())
                }
                Some(parent) => current = state.tree.get(parent)?,
            }
        }
    }

    /// The cgroup of pool `id`: one directory per pool id along its path
    /// from the root (`pool-1/pool-4`). Opened, not created: pools get
    /// their cgroup when they are made. Opened with the lock released.
    pub fn pool_cgroup(&self, id: &PoolId) -> Result<Cgroup> {
        let path = pool_cgroup_path(&self.read().tree, id)?;
        Ok(self.shared.cgroups.open(&path)?)
    }

    fn pool_cgroup_in(&self, tree: &PoolTree, id: &PoolId) -> Result<Cgroup> {
        Ok(self.shared.cgroups.open(&pool_cgroup_path(tree, id)?)?)
    }

    /// Creates (or adopts) the cgroup of pool `id`, whose parent's exists.
    fn make_pool_cgroup(&self, tree: &PoolTree, id: &PoolId) -> Result<Cgroup> {
        let parent = match tree.get(id)?.parent() {
            Some(parent) if parent != &PoolId::root() => self.pool_cgroup_in(tree, parent)?,
            _ => self.shared.cgroups.root()?,
        };
        Ok(self.shared.cgroups.create_pool(&parent, id.as_str())?)
    }

    /// Every pool's cgroup path (for the reconcile at start).
    pub(super) fn cgroup_paths(&self) -> BTreeSet<PathBuf> {
        let state = self.read();
        state
            .tree
            .subtree(&PoolId::root())
            .map(|all| {
                all.iter()
                    .filter_map(|p| pool_cgroup_path(&state.tree, p.id()).ok())
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The tree, for reads across managers (the inventory). Taken after
    /// any VM or pod lock, never before.
    pub(super) fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock leaves the tree as consistent as
        // the model's own all-or-nothing operations made it.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        let guard = self.state.write().unwrap_or_else(|p| p.into_inner());
        // Under the write lock, before any change: a reader that sees the
        // old value saw the old tree.
        self.generation.fetch_add(1, Ordering::AcqRel);
        guard
    }
}

/// A pool's cgroup path below the Stratum root: the ids from the root's
/// child down to the pool (empty for the root).
pub(super) fn pool_cgroup_path(tree: &PoolTree, id: &PoolId) -> Result<std::path::PathBuf> {
    let mut chain = Vec::new();
    let mut at = tree.get(id)?;
    while let Some(parent) = at.parent() {
        chain.push(at.id().as_str().to_string());
        at = tree.get(parent)?;
    }
    Ok(chain.iter().rev().collect())
}

/// Empty means the root pool.
/// The ids of the subtree under `root` (empty = the whole tree), parents
/// before children.
pub(super) fn subtree_ids(tree: &PoolTree, root: &str) -> Result<Vec<PoolId>> {
    Ok(tree
        .subtree(&pool_id_or_root(root))?
        .iter()
        .map(|p| p.id().clone())
        .collect())
}

pub fn pool_id_or_root(id: &str) -> PoolId {
    if id.is_empty() {
        PoolId::root()
    } else {
        PoolId::from(id)
    }
}
