//! Read-only accounting views: a pool's reservations and usage, and the
//! host's capacity split, as the API reports them.

use super::error::PoolError;
use super::quota::Usage;
use super::resource::{Resource, Resources};
use super::tree::{PoolId, PoolTree};

/// One resource in one pool, in that resource's unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceStatus {
    /// What the pool charges its parent: its reservation, or more when it
    /// borrows through an expandable reservation.
    pub charged_to_parent: u64,
    /// What its children (pools and admitted workloads) hold.
    pub reserved_by_children: u64,
    /// How much more a new child could reserve, borrowing included.
    pub unreserved: u64,
}

/// A pool's accounting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStatus {
    /// CPU, in millicores.
    pub cpu: ResourceStatus,
    /// Memory, in bytes.
    pub memory: ResourceStatus,
    /// Counts over the subtree.
    pub usage: Usage,
}

/// The host's capacity: `total = system_reserve + reserved + unreserved`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostCapacity {
    /// The whole host.
    pub total: Resources,
    /// Kept back for the host itself.
    pub system_reserve: Resources,
    /// Held by the root pool's children.
    pub reserved: Resources,
    /// Still free in the root pool.
    pub unreserved: Resources,
}

impl PoolTree {
    /// The accounting of pool `id`.
    pub fn status(&self, id: &PoolId) -> Result<PoolStatus, PoolError> {
        let pool = self.get(id)?;
        let charge = pool.charge();
        let resource = |r: Resource| -> Result<ResourceStatus, PoolError> {
            Ok(ResourceStatus {
                charged_to_parent: charge.get(r),
                reserved_by_children: pool.held().get(r),
                unreserved: self.unreserved(id, r)?,
            })
        };
        Ok(PoolStatus {
            cpu: resource(Resource::Cpu)?,
            memory: resource(Resource::Memory)?,
            usage: pool.usage(),
        })
    }

    /// How the host's capacity is split.
    pub fn capacity(&self) -> HostCapacity {
        let root = self.root();
        let usable = root.charge();
        HostCapacity {
            total: self.host,
            system_reserve: self.system_reserve,
            reserved: root.held(),
            unreserved: usable.checked_sub(&root.held()).unwrap_or_default(),
        }
    }
}
