//! What the pool model refuses, and why. Every variant belongs to one
//! [`ErrorKind`], which the gRPC layer maps one-to-one onto a status code,
//! so the model decides the class of each failure and the API layer only
//! translates.

use thiserror::Error;

use super::quota::QuotaItem;
use super::resource::Resource;
use super::tree::PoolId;
use super::workload::WorkloadId;

/// The class of a [`PoolError`], named after the gRPC code it maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is wrong whatever the state (bad name, bad settings).
    InvalidArgument,
    /// A pool or workload named in the request does not exist.
    NotFound,
    /// The id or name is taken.
    AlreadyExists,
    /// The state forbids it now (not empty, still running, usage above a
    /// new cap).
    FailedPrecondition,
    /// Not enough unreserved capacity or quota.
    ResourceExhausted,
}

/// A refused pool-model operation; the model is unchanged when it is returned.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PoolError {
    /// A name that is not a DNS label.
    #[error("invalid name {name}: {reason}")]
    InvalidName {
        /// The name given, quoted and cut to a readable length.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Allocation settings that contradict themselves.
    #[error("invalid {resource} allocation: {reason}")]
    InvalidAllocation {
        /// The resource whose allocation is wrong.
        resource: Resource,
        /// What is wrong with it.
        reason: String,
    },
    /// A workload description that cannot be (zero vCPUs, and so on).
    #[error("invalid workload: {0}")]
    InvalidWorkload(String),
    /// Host capacity or system reserve that cannot be.
    #[error("invalid host capacity: {0}")]
    InvalidCapacity(String),
    /// The root pool cannot be updated or deleted.
    #[error("the root resource pool is derived from the host and cannot be changed or deleted")]
    RootImmutable,
    /// No pool with this id.
    #[error("resource pool {0} not found")]
    PoolNotFound(PoolId),
    /// No workload with this id.
    #[error("workload {0} not found")]
    WorkloadNotFound(WorkloadId),
    /// A pool with this id exists.
    #[error("resource pool {0} already exists")]
    PoolExists(PoolId),
    /// A sibling already has this name.
    #[error("resource pool {parent} already has a child named {name:?}")]
    NameTaken {
        /// The parent pool.
        parent: PoolId,
        /// The name in use.
        name: String,
    },
    /// A workload with this id exists.
    #[error("workload {0} already exists")]
    WorkloadExists(WorkloadId),
    /// Deleting a pool that still holds something.
    #[error("resource pool {pool} is not empty: {pools} child pools and {workloads} workloads")]
    NotEmpty {
        /// The pool.
        pool: PoolId,
        /// Child pools it holds.
        pools: usize,
        /// Workloads it holds.
        workloads: usize,
    },
    /// Removing a workload whose reservation is admitted.
    #[error("workload {0} is running; stop it first")]
    WorkloadRunning(WorkloadId),
    /// Releasing a workload that holds no reservation.
    #[error("workload {0} is not running")]
    WorkloadNotRunning(WorkloadId),
    /// Lowering a pool's reservation or limit below what its children hold.
    #[error(
        "resource pool {pool}: its children hold {held} {unit} of {resource}, more than the \
         new {ceiling} {unit} it could give them",
        unit = resource.unit()
    )]
    BelowChildren {
        /// The pool being updated.
        pool: PoolId,
        /// The resource.
        resource: Resource,
        /// What the children hold.
        held: u64,
        /// What the new settings let them hold.
        ceiling: u64,
    },
    /// A reservation that does not fit what the pool can give.
    #[error(
        "{resource} reservation does not fit in resource pool {pool}: {requested} {unit} more \
         requested, {available} {unit} unreserved (bound by pool {bound_by})",
        unit = resource.unit()
    )]
    DoesNotFit {
        /// The pool the reservation was asked of.
        pool: PoolId,
        /// The resource.
        resource: Resource,
        /// How much more was asked.
        requested: u64,
        /// How much more the pool could give.
        available: u64,
        /// The pool whose reservation or limit is the bound: `pool` itself
        /// or an ancestor reached through expandable reservations.
        bound_by: PoolId,
    },
    /// Adding a workload would exceed a quota of its pool or an ancestor.
    #[error("quota of resource pool {pool} exceeded: {requested} {item}, at most {max}")]
    QuotaExceeded {
        /// The pool whose quota binds.
        pool: PoolId,
        /// What is capped.
        item: QuotaItem,
        /// The cap.
        max: u64,
        /// What the subtree would hold.
        requested: u64,
    },
    /// Setting a quota below what the subtree already holds.
    #[error("resource pool {pool} already holds {usage} {item}, more than the new quota of {max}")]
    QuotaBelowUsage {
        /// The pool.
        pool: PoolId,
        /// What is capped.
        item: QuotaItem,
        /// The new cap.
        max: u64,
        /// What the subtree holds.
        usage: u64,
    },
}

impl PoolError {
    /// The class of this error, for the gRPC status code.
    pub fn kind(&self) -> ErrorKind {
        use PoolError::*;
        match self {
            InvalidName { .. } | InvalidAllocation { .. } | InvalidWorkload(_) => {
                ErrorKind::InvalidArgument
            }
            InvalidCapacity(_) | RootImmutable => ErrorKind::InvalidArgument,
            PoolNotFound(_) | WorkloadNotFound(_) => ErrorKind::NotFound,
            PoolExists(_) | NameTaken { .. } | WorkloadExists(_) => ErrorKind::AlreadyExists,
            NotEmpty { .. } | WorkloadRunning(_) | WorkloadNotRunning(_) => {
                ErrorKind::FailedPrecondition
            }
            BelowChildren { .. } | QuotaBelowUsage { .. } => ErrorKind::FailedPrecondition,
            DoesNotFit { .. } | QuotaExceeded { .. } => ErrorKind::ResourceExhausted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_pool_and_the_numbers() {
        let err = PoolError::DoesNotFit {
            pool: PoolId::from("web"),
            resource: Resource::Cpu,
            requested: 2000,
            available: 500,
            bound_by: PoolId::from("prod"),
        };
        assert_eq!(
            err.to_string(),
            "cpu reservation does not fit in resource pool web: 2000 millicores more requested, \
             500 millicores unreserved (bound by pool prod)"
        );
        assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
    }

    #[test]
    fn kinds() {
        let p = PoolId::from("p");
        assert_eq!(
            PoolError::PoolNotFound(p.clone()).kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            PoolError::PoolExists(p.clone()).kind(),
            ErrorKind::AlreadyExists
        );
        let not_empty = PoolError::NotEmpty {
            pool: p,
            pools: 1,
            workloads: 0,
        };
        assert_eq!(not_empty.kind(), ErrorKind::FailedPrecondition);
        assert_eq!(PoolError::RootImmutable.kind(), ErrorKind::InvalidArgument);
    }
}
