//! Rebuilding the tree at startup from stored pool records, which come in
//! id order, not parent-first: each pass creates the pools whose parent
//! already exists, until none are left. Each pool goes through the same
//! admission checks as an API call, so a store that no longer fits the
//! host (less memory after a hardware change, a larger system reserve) is
//! reported rather than silently overcommitted.

use super::error::PoolError;
use super::tree::{PoolId, PoolSpec, PoolTree};

/// A stored pool: its id, its parent's id and its spec.
pub type StoredPool = (PoolId, PoolId, PoolSpec);

impl PoolTree {
    /// Create `pools` in an order where every parent precedes its children.
    /// On error the pools created so far stay; a pool whose parent is
    /// neither in the tree nor in `pools` is [`PoolError::PoolNotFound`].
    pub fn create_pools(&mut self, pools: Vec<StoredPool>) -> Result<(), PoolError> {
        let mut pending = pools;
        while !pending.is_empty() {
            let (ready, waiting): (Vec<_>, Vec<_>) = pending
                .into_iter()
                .partition(|(_, parent, _)| self.pool(parent).is_some());
            if ready.is_empty() {
                let (_, parent, _) = &waiting[0];
                return Err(PoolError::PoolNotFound(parent.clone()));
            }
            for (id, parent, spec) in ready {
                self.create_pool(id, &parent, spec)?;
            }
            pending = waiting;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Allocation, Resources};

    fn stored(id: &str, parent: &str, name: &str) -> StoredPool {
        (id.into(), parent.into(), PoolSpec::named(name))
    }

    #[test]
    fn children_before_parents_are_created_parent_first() {
        let mut t = PoolTree::new(Resources::new(4000, 1 << 30), Resources::ZERO).unwrap();
        let pools = vec![
            stored("pool-10", "pool-9", "leaf"),
            stored("pool-2", "root", "top"),
            stored("pool-9", "pool-2", "mid"),
        ];
        t.create_pools(pools).unwrap();
        assert_eq!(t.path(&"pool-10".into()).unwrap(), "top/mid/leaf");
    }

    #[test]
    fn an_orphan_or_a_misfit_is_reported() {
        let mut t = PoolTree::new(Resources::new(4000, 1 << 30), Resources::ZERO).unwrap();
        let orphan = t.create_pools(vec![stored("p", "gone", "p")]).unwrap_err();
        assert_eq!(orphan, PoolError::PoolNotFound("gone".into()));
        let too_big = PoolSpec {
            cpu: Allocation::fixed(5000),
            ..PoolSpec::named("big")
        };
        let err = t
            .create_pools(vec![("big".into(), "root".into(), too_big)])
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::ResourceExhausted);
    }
}
