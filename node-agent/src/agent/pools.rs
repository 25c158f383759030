//! Resource pool operations: the pool model decides, the cgroup tree
//! enforces, the store remembers — in that order, each step undone if a
//! later one fails, so a refused or failed call leaves nothing behind.

use super::errors::{AgentError, Result};
use super::{now, Agent, State};
use crate::records::PoolRecord;
use stratum_api::proto;
use stratum_cgroup::{Cgroup, CgroupLimits};
use stratum_pool::{PoolId, PoolSpec, PoolTree};

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

impl Agent {
    pub fn create_pool(
        &self,
        parent: &str,
        spec: &proto::ResourcePoolSpec,
    ) -> Result<proto::ResourcePool> {
        let spec = PoolSpec::try_from(spec)?;
        let parent = pool_id_or_root(parent);
        let id = PoolId::from(format!("pool-{}", self.next_id()?));
        let mut state = self.write_state();
        state.tree.create_pool(id.clone(), &parent, spec.clone())?;
        if let Err(e) = self.persist_new_pool(&state.tree, &id, &parent, &spec) {
            let _ = state.tree.delete_pool(&id);
            return Err(e);
        }
        Ok(state.tree.to_proto(&id)?)
    }

    fn persist_new_pool(
        &self,
        tree: &PoolTree,
        id: &PoolId,
        parent: &PoolId,
        spec: &PoolSpec,
    ) -> Result<()> {
        let cgroup = self.make_pool_cgroup(tree, id)?;
        cgroup.apply(&pool_limits(spec))?;
        let record = PoolRecord {
            id: id.to_string(),
            parent_id: parent.to_string(),
            spec: Some(spec.into()),
            created_at: Some(now()),
        };
        self.store.put_pool(&record).inspect_err(|_| {
            let _ = cgroup.remove();
        })?;
        Ok(())
    }

    pub fn get_pool(&self, id: &str) -> Result<proto::ResourcePool> {
        Ok(self.read_state().tree.to_proto(&pool_id_or_root(id))?)
    }

    /// The subtree under `root` (empty = the whole tree), parents before
    /// children.
    pub fn list_pools(&self, root: &str) -> Result<Vec<proto::ResourcePool>> {
        let state = self.read_state();
        subtree_ids(&state.tree, root)?
            .iter()
            .map(|id| Ok(state.tree.to_proto(id)?))
            .collect()
    }

    pub fn update_pool(
        &self,
        id: &str,
        spec: &proto::ResourcePoolSpec,
    ) -> Result<proto::ResourcePool> {
        let spec = PoolSpec::try_from(spec)?;
        let id = PoolId::from(id);
        let mut state = self.write_state();
        let old = state.tree.get(&id)?.spec().clone();
        state.tree.update_pool(&id, spec.clone())?;
        if let Err(e) = self.persist_pool_update(&state, &id, &spec) {
            let _ = state.tree.update_pool(&id, old);
            let _ = self.apply_subtree_limits(&state, &id);
            return Err(e);
        }
        Ok(state.tree.to_proto(&id)?)
    }

    fn persist_pool_update(&self, state: &State, id: &PoolId, spec: &PoolSpec) -> Result<()> {
        self.apply_subtree_limits(state, id)?;
        let mut record = self
            .store
            .get_pool(id.as_str())?
            .ok_or_else(|| AgentError::Internal(format!("pool {id} is not in the store")))?;
        record.spec = Some(spec.into());
        self.store.put_pool(&record)?;
        Ok(())
    }

    /// Writes the limits of `id` and of every pool below it: on cgroup v1
    /// a child's stored CPU quota was capped at its parent's, so raising a
    /// parent must re-apply its children.
    fn apply_subtree_limits(&self, state: &State, id: &PoolId) -> Result<()> {
        let subtree = state.tree.subtree(id)?;
        for pool in &subtree {
            self.pool_cgroup(&state.tree, pool.id())?
                .apply(&pool_limits(pool.spec()))?;
        }
        let in_subtree: std::collections::HashSet<&PoolId> =
            subtree.iter().map(|p| p.id()).collect();
        for vm in state
            .vms
            .values()
            .filter(|vm| in_subtree.contains(&vm.pool))
        {
            self.apply_vm_limits(vm)?;
        }
        Ok(())
    }

    pub fn delete_pool(&self, id: &str) -> Result<()> {
        let id = PoolId::from(id);
        let mut state = self.write_state();
        // A cgroup removed behind the agent's back does not block the delete.
        let cgroup = self.pool_cgroup(&state.tree, &id).ok();
        let path = pool_cgroup_path(&state.tree, &id)?;
        let removed = state.tree.delete_pool(&id)?;
        if let Err(e) = self.store.delete_pool(id.as_str()) {
            let parent = removed.parent().cloned().unwrap_or_else(PoolId::root);
            let _ = state.tree.create_pool(id, &parent, removed.spec().clone());
            return Err(e.into());
        }
        match cgroup.map(|c| c.remove()) {
            Some(Err(e)) => tracing::warn!(pool = %id, "pool deleted, its cgroup stays: {e}"),
            // What an OCI runtime made for the pool's pods in hierarchies
            // the cgroup layer does not manage.
            _ => self.prune_cgroup_everywhere(&path),
        }
        Ok(())
    }

    /// The cgroup of pool `id`: one directory per pool id along its path
    /// from the root (`pool-1/pool-4`). Opened, not created: pools get
    /// their cgroup when they are made ([`Agent::make_pool_cgroup`]).
    pub fn pool_cgroup(&self, tree: &PoolTree, id: &PoolId) -> Result<Cgroup> {
        Ok(self.cgroups.open(&pool_cgroup_path(tree, id)?)?)
    }

    /// Creates (or adopts) the cgroup of pool `id`, whose parent's exists.
    fn make_pool_cgroup(&self, tree: &PoolTree, id: &PoolId) -> Result<Cgroup> {
        let parent = match tree.get(id)?.parent() {
            Some(parent) if parent != &PoolId::root() => self.pool_cgroup(tree, parent)?,
            _ => self.cgroups.root()?,
        };
        Ok(self.cgroups.create_pool(&parent, id.as_str())?)
    }

    /// Rebuilds the pools from the store at startup and re-applies their
    /// cgroup limits.
    pub(super) fn restore_pools(&self, records: Vec<PoolRecord>) -> Result<()> {
        let mut stored = Vec::with_capacity(records.len());
        for record in records {
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
        let mut state = self.write_state();
        state.tree.create_pools(stored)?;
        self.cgroups.root()?;
        for pool in state.tree.subtree(&PoolId::root())? {
            if pool.parent().is_some() {
                self.make_pool_cgroup(&state.tree, pool.id())?;
            }
        }
        self.apply_subtree_limits(&state, &PoolId::root())
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
