//! The pool tree: pools, their parent/child links, and the operations that
//! create, update and delete pools. Every operation checks everything first
//! and changes the tree only once all checks passed, so a refused operation
//! leaves the tree exactly as it was.
//!
//! The root pool ([`ROOT_ID`]) stands for the host: its reservation of each
//! resource is the host's capacity minus the system reserve, fixed (not
//! expandable), and it cannot be updated or deleted. Each pool caches what
//! its children hold and the usage counts of its subtree; the admission
//! module keeps those caches right, and the property tests recompute them
//! from scratch after every operation.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::allocation::Allocation;
use super::error::PoolError;
use super::name::{validate_name, ROOT_NAME};
use super::quota::{Quota, Usage};
use super::resource::{Resource, Resources};
use super::workload::{Workload, WorkloadId};

/// The root pool's id.
pub const ROOT_ID: &str = "root";

/// A pool's id: opaque, unique among pools (the agent draws them from a
/// durable sequence; names are what users see).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolId(String);

impl PoolId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The root pool's id.
    pub fn root() -> Self {
        PoolId(ROOT_ID.to_string())
    }
}

impl From<&str> for PoolId {
    fn from(s: &str) -> Self {
        PoolId(s.to_string())
    }
}

impl From<String> for PoolId {
    fn from(s: String) -> Self {
        PoolId(s)
    }
}

impl fmt::Display for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the user sets on a pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PoolSpec {
    /// A DNS label, unique among siblings.
    pub name: String,
    /// CPU, in millicores.
    pub cpu: Allocation,
    /// Memory, in bytes.
    pub memory: Allocation,
    /// Caps over the subtree.
    pub quota: Quota,
}

impl PoolSpec {
    /// A spec named `name` with vSphere's default allocations.
    pub fn named(name: &str) -> Self {
        PoolSpec {
            name: name.to_string(),
            ..PoolSpec::default()
        }
    }

    /// The allocation of `resource`.
    pub fn allocation(&self, resource: Resource) -> &Allocation {
        match resource {
            Resource::Cpu => &self.cpu,
            Resource::Memory => &self.memory,
        }
    }

    /// Check the spec on its own.
    pub fn validate(&self) -> Result<(), PoolError> {
        validate_name(&self.name)?;
        self.cpu.validate(Resource::Cpu)?;
        self.memory.validate(Resource::Memory)
    }
}

/// A pool in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub(super) id: PoolId,
    pub(super) parent: Option<PoolId>,
    pub(super) spec: PoolSpec,
    /// Child pools by name.
    pub(super) children: BTreeMap<String, PoolId>,
    pub(super) workloads: BTreeSet<WorkloadId>,
    /// Sum of what the children (pools and admitted workloads) charge.
    pub(super) held: Resources,
    /// Counts over the subtree.
    pub(super) usage: Usage,
}

impl Pool {
    fn new(id: PoolId, parent: Option<PoolId>, spec: PoolSpec) -> Self {
        Pool {
            id,
            parent,
            spec,
            children: BTreeMap::new(),
            workloads: BTreeSet::new(),
            held: Resources::ZERO,
            usage: Usage::default(),
        }
    }

    /// Its id.
    pub fn id(&self) -> &PoolId {
        &self.id
    }

    /// Its parent; `None` for the root.
    pub fn parent(&self) -> Option<&PoolId> {
        self.parent.as_ref()
    }

    /// Its settings.
    pub fn spec(&self) -> &PoolSpec {
        &self.spec
    }

    /// Its child pools, in name order.
    pub fn child_ids(&self) -> impl Iterator<Item = &PoolId> {
        self.children.values()
    }

    /// Its workloads, in id order.
    pub fn workload_ids(&self) -> impl Iterator<Item = &WorkloadId> {
        self.workloads.iter()
    }

    /// What its children (pools and admitted workloads) charge it.
    pub fn held(&self) -> Resources {
        self.held
    }

    /// Counts over its subtree.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// What it charges its parent now.
    pub fn charge(&self) -> Resources {
        let mut charge = Resources::ZERO;
        for r in Resource::ALL {
            charge.set(r, self.spec.allocation(r).charge_for(self.held.get(r)));
        }
        charge
    }

    /// Whether it holds no child pool and no workload.
    pub fn is_empty(&self) -> bool {
        self.children.is_empty() && self.workloads.is_empty()
    }
}

/// The pools of one host and the workloads placed in them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolTree {
    pub(super) host: Resources,
    pub(super) system_reserve: Resources,
    pub(super) pools: BTreeMap<PoolId, Pool>,
    pub(super) workloads: BTreeMap<WorkloadId, Workload>,
}

impl PoolTree {
    /// A tree holding only the root pool, which gets `host` minus
    /// `system_reserve`.
    pub fn new(host: Resources, system_reserve: Resources) -> Result<Self, PoolError> {
        let usable = host.checked_sub(&system_reserve).ok_or_else(|| {
            PoolError::InvalidCapacity(format!(
                "system reserve {system_reserve:?} is more than the host has ({host:?})"
            ))
        })?;
        let root = Pool::new(PoolId::root(), None, root_spec(usable));
        Ok(PoolTree {
            host,
            system_reserve,
            pools: BTreeMap::from([(PoolId::root(), root)]),
            workloads: BTreeMap::new(),
        })
    }

    /// The host's whole capacity.
    pub fn host(&self) -> Resources {
        self.host
    }

    /// What is kept back for the host itself.
    pub fn system_reserve(&self) -> Resources {
        self.system_reserve
    }

    /// The root pool.
    pub fn root(&self) -> &Pool {
        // The root is inserted by `new` and refused by `delete_pool`.
        &self.pools[&PoolId::root()]
    }

    /// The pool `id`, if it exists.
    pub fn pool(&self, id: &PoolId) -> Option<&Pool> {
        self.pools.get(id)
    }

    /// The pool `id`, or [`PoolError::PoolNotFound`].
    pub fn get(&self, id: &PoolId) -> Result<&Pool, PoolError> {
        self.pools
            .get(id)
            .ok_or_else(|| PoolError::PoolNotFound(id.clone()))
    }

    /// Number of pools, the root included.
    pub fn len(&self) -> usize {
        self.pools.len()
    }

    /// Always false: the root pool is always there.
    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }

    /// Every pool, depth-first from the root, children in name order.
    pub fn pools(&self) -> Vec<&Pool> {
        self.root_subtree(&PoolId::root())
    }

    /// The pool `id` and its descendants, depth-first, children in name order.
    pub fn subtree(&self, id: &PoolId) -> Result<Vec<&Pool>, PoolError> {
        self.get(id)?;
        Ok(self.root_subtree(id))
    }

    fn root_subtree(&self, id: &PoolId) -> Vec<&Pool> {
        let mut out = Vec::new();
        let mut stack = vec![id];
        while let Some(id) = stack.pop() {
            if let Some(pool) = self.pools.get(id) {
                out.push(pool);
                stack.extend(pool.children.values().rev());
            }
        }
        out
    }

    /// The path of names from the root to `id`, like "prod/web"; "" for the root.
    pub fn path(&self, id: &PoolId) -> Result<String, PoolError> {
        let mut names = Vec::new();
        let mut pool = self.get(id)?;
        while let Some(parent) = &pool.parent {
            names.push(pool.spec.name.as_str());
            pool = self.get(parent)?;
        }
        names.reverse();
        Ok(names.join("/"))
    }

    /// Add pool `id` under `parent`. Its reservations must fit what the
    /// parent can give ([`PoolError::DoesNotFit`] otherwise).
    pub fn create_pool(
        &mut self,
        id: PoolId,
        parent: &PoolId,
        spec: PoolSpec,
    ) -> Result<&Pool, PoolError> {
        spec.validate()?;
        if self.pools.contains_key(&id) {
            return Err(PoolError::PoolExists(id));
        }
        self.check_name_free(parent, &spec.name, None)?;
        let charge = Pool::new(id.clone(), None, spec.clone()).charge();
        let plan = self.plan_charge(parent, Resources::ZERO, charge)?;
        self.apply(plan);
        self.link(Pool::new(id.clone(), Some(parent.clone()), spec));
        self.get(&id)
    }

    /// Replace the spec of pool `id` (its parent stays). The new settings
    /// must still cover what its children hold and its subtree's usage, and
    /// any change in what it charges its parent must fit there.
    pub fn update_pool(&mut self, id: &PoolId, spec: PoolSpec) -> Result<&Pool, PoolError> {
        spec.validate()?;
        let pool = self.get(id)?;
        let parent = pool.parent.clone().ok_or(PoolError::RootImmutable)?;
        self.check_name_free(&parent, &spec.name, Some(id))?;
        spec.quota.covers(id, &pool.usage)?;
        check_covers_children(pool, &spec)?;
        let mut updated = pool.clone();
        updated.spec = spec;
        let plan = self.plan_charge(&parent, pool.charge(), updated.charge())?;
        self.apply(plan);
        self.unlink(id);
        self.link(updated);
        self.get(id)
    }

    /// Remove pool `id`, which must hold no child pool and no workload.
    pub fn delete_pool(&mut self, id: &PoolId) -> Result<Pool, PoolError> {
        let pool = self.get(id)?;
        let parent = pool.parent.clone().ok_or(PoolError::RootImmutable)?;
        if !pool.is_empty() {
            return Err(PoolError::NotEmpty {
                pool: id.clone(),
                pools: pool.children.len(),
                workloads: pool.workloads.len(),
            });
        }
        let plan = self.plan_charge(&parent, pool.charge(), Resources::ZERO)?;
        self.apply(plan);
        self.unlink(id)
            .ok_or_else(|| PoolError::PoolNotFound(id.clone()))
    }

    /// Refuse `name` if a child of `parent` other than `except` has it.
    fn check_name_free(
        &self,
        parent: &PoolId,
        name: &str,
        except: Option<&PoolId>,
    ) -> Result<(), PoolError> {
        match self.get(parent)?.children.get(name) {
            Some(other) if Some(other) != except => Err(PoolError::NameTaken {
                parent: parent.clone(),
                name: name.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Insert `pool` and list it among its parent's children.
    fn link(&mut self, pool: Pool) {
        if let Some(parent) = pool.parent.as_ref().and_then(|p| self.pools.get_mut(p)) {
            parent
                .children
                .insert(pool.spec.name.clone(), pool.id.clone());
        }
        self.pools.insert(pool.id.clone(), pool);
    }

    /// Remove pool `id` and its entry among its parent's children.
    fn unlink(&mut self, id: &PoolId) -> Option<Pool> {
        let pool = self.pools.remove(id)?;
        if let Some(parent) = pool.parent.as_ref().and_then(|p| self.pools.get_mut(p)) {
            parent.children.remove(&pool.spec.name);
        }
        Some(pool)
    }
}

/// The root's spec: a fixed reservation of everything usable.
fn root_spec(usable: Resources) -> PoolSpec {
    PoolSpec {
        name: ROOT_NAME.to_string(),
        cpu: Allocation::fixed(usable.cpu_millicores),
        memory: Allocation::fixed(usable.memory_bytes),
        quota: Quota::default(),
    }
}

/// Refuse a new spec under which `pool`'s children could not hold what
/// they already hold.
fn check_covers_children(pool: &Pool, spec: &PoolSpec) -> Result<(), PoolError> {
    for r in Resource::ALL {
        let ceiling = spec.allocation(r).ceiling();
        let held = pool.held.get(r);
        if held > ceiling {
            return Err(PoolError::BelowChildren {
                pool: pool.id.clone(),
                resource: r,
                held,
                ceiling,
            });
        }
    }
    Ok(())
}
