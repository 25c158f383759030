//! How much of one resource a pool is given, in vSphere's four settings.
//!
//! - **Reservation**: an amount guaranteed to the pool. Whatever the pool's
//!   children (child pools and running workloads) reserve comes out of it.
//! - **Limit**: the most the pool and everything in it may use, and also the
//!   most it may reserve, borrowing included. `None` = unlimited.
//! - **Expandable reservation**: when the children reserve more than the
//!   pool's own reservation, the excess is borrowed from the parent, which
//!   gives it out of its own reservation or, if it too is expandable, borrows
//!   further up. A pool without it can never hand out more than its own
//!   reservation.
//! - **Shares**: see [`super::shares`].
//!
//! So a pool *charges* its parent its reservation, or, when expandable, the
//! larger of its reservation and what its children hold
//! ([`Allocation::charge_for`]); and its children may hold at most its
//! reservation, or, when expandable, its limit ([`Allocation::ceiling`]).
//! New pools default to vSphere's defaults: no reservation, no limit,
//! expandable, NORMAL shares.

use super::error::PoolError;
use super::resource::Resource;
use super::shares::Shares;

/// One resource's allocation to a pool, in that resource's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Allocation {
    /// Weight among siblings under contention.
    pub shares: Shares,
    /// Guaranteed amount.
    pub reservation: u64,
    /// Hard ceiling; `None` = unlimited.
    pub limit: Option<u64>,
    /// Children may borrow beyond `reservation` from the parent.
    pub expandable: bool,
}

impl Default for Allocation {
    fn default() -> Self {
        Allocation {
            shares: Shares::Normal,
            reservation: 0,
            limit: None,
            expandable: true,
        }
    }
}

impl Allocation {
    /// A fixed reservation: exactly `reservation`, never borrowing, no limit.
    pub fn fixed(reservation: u64) -> Self {
        Allocation {
            reservation,
            expandable: false,
            ..Allocation::default()
        }
    }

    /// An expandable reservation of `reservation` with no limit.
    pub fn expandable(reservation: u64) -> Self {
        Allocation {
            reservation,
            ..Allocation::default()
        }
    }

    /// The same allocation with `limit`.
    pub fn with_limit(self, limit: u64) -> Self {
        Allocation {
            limit: Some(limit),
            ..self
        }
    }

    /// Check the settings on their own: valid shares, a limit above zero and
    /// not below the reservation.
    pub fn validate(&self, resource: Resource) -> Result<(), PoolError> {
        self.shares.validate(resource)?;
        match self.limit {
            Some(0) => Err(invalid(
                resource,
                "a limit of 0 (use no limit for unlimited)",
            )),
            Some(limit) if limit < self.reservation => Err(invalid(
                resource,
                &format!(
                    "limit {limit} is below reservation {} {}",
                    self.reservation,
                    resource.unit()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The most this pool's children may hold: its reservation, or, when
    /// expandable, its limit (unlimited = `u64::MAX`).
    pub fn ceiling(&self) -> u64 {
        if self.expandable {
            self.limit.unwrap_or(u64::MAX)
        } else {
            self.reservation
        }
    }

    /// What the pool charges its parent while its children hold `held`.
    pub fn charge_for(&self, held: u64) -> u64 {
        if self.expandable {
            self.reservation.max(held)
        } else {
            self.reservation
        }
    }
}

fn invalid(resource: Resource, reason: &str) -> PoolError {
    PoolError::InvalidAllocation {
        resource,
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_vspheres() {
        let a = Allocation::default();
        assert_eq!((a.reservation, a.limit, a.expandable), (0, None, true));
        assert_eq!(a.shares, Shares::Normal);
    }

    #[test]
    fn limit_below_reservation_is_invalid() {
        let err = Allocation::fixed(500)
            .with_limit(400)
            .validate(Resource::Cpu);
        assert!(matches!(err, Err(PoolError::InvalidAllocation { .. })));
        assert!(Allocation::fixed(500)
            .with_limit(500)
            .validate(Resource::Cpu)
            .is_ok());
    }

    #[test]
    fn zero_limit_is_invalid() {
        assert!(Allocation::fixed(0)
            .with_limit(0)
            .validate(Resource::Memory)
            .is_err());
    }

    #[test]
    fn bad_custom_shares_are_invalid() {
        let a = Allocation {
            shares: Shares::Custom(0),
            ..Allocation::default()
        };
        assert!(a.validate(Resource::Cpu).is_err());
    }

    #[test]
    fn fixed_pool_charges_its_reservation_and_holds_at_most_that() {
        let a = Allocation::fixed(1000);
        assert_eq!(a.ceiling(), 1000);
        assert_eq!(a.charge_for(0), 1000);
        assert_eq!(a.charge_for(1000), 1000);
    }

    #[test]
    fn expandable_pool_charges_what_its_children_hold_beyond_its_reservation() {
        let a = Allocation::expandable(1000).with_limit(3000);
        assert_eq!(a.ceiling(), 3000);
        assert_eq!(a.charge_for(400), 1000);
        assert_eq!(a.charge_for(2500), 2500);
        assert_eq!(Allocation::expandable(0).ceiling(), u64::MAX);
    }
}
