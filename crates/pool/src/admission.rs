//! Admission control: whether a change in what a child charges its pool
//! fits, and the bookkeeping that follows when it does.
//!
//! The rule, per resource: the children of a pool (child pools and admitted
//! workloads) may together hold at most its *ceiling*: its reservation, or,
//! if its reservation is expandable, its limit. An expandable pool whose
//! children hold more than its reservation charges its own parent that
//! larger amount, i.e. borrows the excess, and the parent applies the same
//! rule. So a change travels up from the pool it happens in through
//! expandable pools, and stops at the first pool whose charge does not
//! change: one with a fixed reservation, one whose children still hold no
//! more than its reservation, or the root, whose fixed reservation is the
//! host minus the system reserve. The change is refused if any pool on the
//! way would exceed its ceiling.
//!
//! Checking is separate from applying ([`Plan`]): nothing changes until the
//! whole way up was checked for both resources.

use super::error::PoolError;
use super::quota::Usage;
use super::resource::{Resource, Resources};
use super::tree::{Pool, PoolId, PoolTree};

/// New `held` amounts for pools, computed and checked but not yet applied.
#[derive(Debug, Default)]
pub(super) struct Plan {
    held: Vec<(PoolId, Resource, u64)>,
}

impl PoolTree {
    /// Check that a child of `pool` may go from charging `old` to `new`.
    pub(super) fn plan_charge(
        &self,
        pool: &PoolId,
        old: Resources,
        new: Resources,
    ) -> Result<Plan, PoolError> {
        let mut plan = Plan::default();
        for r in Resource::ALL {
            self.plan_resource(pool, r, old.get(r), new.get(r), &mut plan)?;
        }
        Ok(plan)
    }

    /// Walk up from `start` while the charge of each pool changes.
    fn plan_resource(
        &self,
        start: &PoolId,
        r: Resource,
        old: u64,
        new: u64,
        plan: &mut Plan,
    ) -> Result<(), PoolError> {
        let requested = new.saturating_sub(old);
        let (mut id, mut old, mut new) = (start.clone(), old, new);
        while old != new {
            let pool = self.get(&id)?;
            let alloc = pool.spec.allocation(r);
            let held = pool.held.get(r);
            let held_new = held.saturating_sub(old).saturating_add(new);
            if new > old && held_new > alloc.ceiling() {
                return Err(self.does_not_fit(start, r, requested, &id));
            }
            plan.held.push((id.clone(), r, held_new));
            let (charge_old, charge_new) = (alloc.charge_for(held), alloc.charge_for(held_new));
            match &pool.parent {
                Some(parent) => (id, old, new) = (parent.clone(), charge_old, charge_new),
                None => break,
            }
        }
        Ok(())
    }

    fn does_not_fit(
        &self,
        start: &PoolId,
        r: Resource,
        requested: u64,
        bound_by: &PoolId,
    ) -> PoolError {
        PoolError::DoesNotFit {
            pool: start.clone(),
            resource: r,
            requested,
            available: self.unreserved(start, r).unwrap_or(0),
            bound_by: bound_by.clone(),
        }
    }

    /// Apply a checked plan.
    pub(super) fn apply(&mut self, plan: Plan) {
        for (id, r, held) in plan.held {
            if let Some(pool) = self.pools.get_mut(&id) {
                pool.held.set(r, held);
            }
        }
    }

    /// How much more of `r` a new child of pool `id` could reserve, counting
    /// what could be borrowed through expandable ancestors.
    pub fn unreserved(&self, id: &PoolId, r: Resource) -> Result<u64, PoolError> {
        let pool = self.get(id)?;
        let alloc = pool.spec.allocation(r);
        let held = pool.held.get(r);
        let own = alloc.reservation.saturating_sub(held);
        let parent = match (&pool.parent, alloc.expandable) {
            (Some(parent), true) => parent,
            _ => return Ok(own.min(alloc.ceiling().saturating_sub(held))),
        };
        let borrowable = self.unreserved(parent, r)?;
        Ok(own
            .saturating_add(borrowable)
            .min(alloc.ceiling().saturating_sub(held)))
    }

    /// The pool `id` and its ancestors up to the root.
    pub(super) fn ancestry(&self, id: &PoolId) -> Result<Vec<&Pool>, PoolError> {
        let mut out = vec![self.get(id)?];
        while let Some(parent) = out.last().and_then(|p| p.parent.as_ref()) {
            out.push(self.get(parent)?);
        }
        Ok(out)
    }

    /// Refuse adding `usage` to pool `id` if a quota on the way up would
    /// be exceeded.
    pub(super) fn check_quotas(&self, id: &PoolId, usage: &Usage) -> Result<(), PoolError> {
        for pool in self.ancestry(id)? {
            pool.spec.quota.admit(&pool.id, &pool.usage.plus(usage))?;
        }
        Ok(())
    }

    /// Add (`add` true) or take away `usage` in pool `id` and its ancestors.
    pub(super) fn count_usage(&mut self, id: &PoolId, usage: &Usage, add: bool) {
        let mut next = Some(id.clone());
        while let Some(pool) = next.and_then(|id| self.pools.get_mut(&id)) {
            pool.usage = if add {
                pool.usage.plus(usage)
            } else {
                pool.usage.minus(usage)
            };
            next = pool.parent.clone();
        }
    }
}
