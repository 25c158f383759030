//! Resource pool operations: the pool model decides, the cgroup tree
//! enforces, the store remembers — in that order, each step undone if a
//! later one fails, so a refused or failed call leaves nothing behind.

use super::errors::{AgentError, Result};
use std::path::Path;

use super::{now, Agent, State};
use crate::records::PoolRecord;
use crate::state::{Change, Ticket};
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
    /// Makes the pool's cgroup with no lock held (cgroupfs directories are
    /// the slow part of a create), then admits the pool and stages its
    /// record under the write lock, and answers once the record is
    /// durable.
    pub fn create_pool(
        &self,
        parent: &str,
        spec: &proto::ResourcePoolSpec,
    ) -> Result<proto::ResourcePool> {
        let spec = PoolSpec::try_from(spec)?;
        let parent = pool_id_or_root(parent);
        let parent_path = pool_cgroup_path(&self.read_state().tree, &parent)?;
        let id = PoolId::from(format!("pool-{}", self.next_id()?));
        let cgroup = self.cgroup_below(&parent_path, &id)?;
        if let Err(e) = cgroup.apply(&pool_limits(&spec)) {
            let _ = cgroup.remove();
            return Err(e.into());
        }
        let staged = self.admit_pool(&id, &parent, &spec);
        let (ticket, pool) = match staged {
            Ok(staged) => staged,
            Err(e) => {
                let _ = cgroup.remove();
                // The parent may have been deleted meanwhile, its cgroup
                // kept alive by the one just removed.
                if self.read_state().tree.get(&parent).is_err() {
                    self.prune_cgroup_everywhere(&parent_path);
                }
                return Err(e);
            }
        };
        // On failure the store has stopped (see `state::journal`): the
        // restart reloads the pools and removes the cgroup.
        self.settle(ticket)?;
        Ok(pool)
    }

    /// Admits pool `id` into the tree and stages its record.
    fn admit_pool(
        &self,
        id: &PoolId,
        parent: &PoolId,
        spec: &PoolSpec,
    ) -> Result<(Ticket, proto::ResourcePool)> {
        let mut state = self.write_state();
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
            .and_then(|pool| Ok((self.stage([Change::PutPool(record)])?, pool)));
        match staged {
            Ok(_) => {
                state.pool_created.insert(id.clone(), created_at);
            }
            Err(_) => {
                let _ = state.tree.delete_pool(id);
            }
        }
        staged
    }

    /// Creates (or adopts) the cgroup `id` below the pool cgroup at
    /// `parent_path` (empty: the agent's root).
    fn cgroup_below(&self, parent_path: &Path, id: &PoolId) -> Result<Cgroup> {
        let parent = if parent_path.as_os_str().is_empty() {
            self.cgroups.root()?
        } else {
            self.cgroups.open(parent_path)?
        };
        Ok(self.cgroups.create_pool(&parent, id.as_str())?)
    }

    pub fn get_pool(&self, id: &str) -> Result<proto::ResourcePool> {
        Ok(self.read_state().tree.to_proto(&pool_id_or_root(id))?)
    }

    /// The subtree under `root` (empty = the whole tree), parents before
    /// children.
    pub fn list_pools(&self, root: &str) -> Result<Vec<proto::ResourcePool>> {
        self.list_pools_at(root).map(|(_, pools)| pools)
    }

    /// [`Agent::list_pools`] and the state generation it was read at.
    pub fn list_pools_at(&self, root: &str) -> Result<(u64, Vec<proto::ResourcePool>)> {
        let state = self.read_state();
        let generation = self.state_generation();
        let pools = subtree_ids(&state.tree, root)?
            .iter()
            .map(|id| Ok(state.tree.to_proto(id)?))
            .collect::<Result<_>>()?;
        Ok((generation, pools))
    }

    pub fn update_pool(
        &self,
        id: &str,
        spec: &proto::ResourcePoolSpec,
    ) -> Result<proto::ResourcePool> {
        let spec = PoolSpec::try_from(spec)?;
        let id = PoolId::from(id);
        let (ticket, pool) = {
            let mut state = self.write_state();
            let old = state.tree.get(&id)?.spec().clone();
            state.tree.update_pool(&id, spec.clone())?;
            match self.stage_pool_update(&state, &id) {
                Ok(ticket) => (ticket, state.tree.to_proto(&id)?),
                Err(e) => {
                    let _ = state.tree.update_pool(&id, old);
                    let _ = self.apply_subtree_limits(&state, &id);
                    return Err(e);
                }
            }
        };
        self.settle(ticket)?;
        Ok(pool)
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
            created_at: state.pool_created.get(id).copied(),
        };
        self.stage([Change::PutPool(record)])
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
        let (ticket, cgroup, path) = {
            let mut state = self.write_state();
            // A cgroup removed behind the agent's back does not block the delete.
            let cgroup = self.pool_cgroup(&state.tree, &id).ok();
            let path = pool_cgroup_path(&state.tree, &id)?;
            let removed = state.tree.delete_pool(&id)?;
            match self.stage([Change::DeletePool(id.to_string())]) {
                Ok(ticket) => {
                    state.pool_created.remove(&id);
                    (ticket, cgroup, path)
                }
                Err(e) => {
                    let parent = removed.parent().cloned().unwrap_or_else(PoolId::root);
                    let _ = state.tree.create_pool(id, &parent, removed.spec().clone());
                    return Err(e);
                }
            }
        };
        self.settle(ticket)?;
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
        let mut created = std::collections::BTreeMap::new();
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
        let mut state = self.write_state();
        state.tree.create_pools(stored)?;
        state.pool_created = created;
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
