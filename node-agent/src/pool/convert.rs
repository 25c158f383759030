//! Conversions between the pool model and the API's messages, with the
//! API's conventions applied in one place: an absent allocation or shares
//! is vSphere's default, a limit or quota field of 0 means none, and
//! UNSPECIFIED shares mean NORMAL. Anything the model cannot hold (an
//! unknown enum number, an invalid setting) is an
//! [`ErrorKind::InvalidArgument`](super::ErrorKind) error.

use crate::proto;

use super::allocation::Allocation;
use super::error::PoolError;
use super::quota::{Quota, Usage};
use super::resource::{Resource, Resources};
use super::shares::Shares;
use super::status::{HostCapacity, PoolStatus, ResourceStatus};
use super::tree::{PoolId, PoolSpec, PoolTree};
use super::workload::{Role, VmSizing};

/// Shares from the API; absent = NORMAL.
pub fn shares_from_proto(s: Option<&proto::Shares>, r: Resource) -> Result<Shares, PoolError> {
    let Some(s) = s else {
        return Ok(Shares::Normal);
    };
    let level =
        proto::SharesLevel::try_from(s.level).map_err(|_| PoolError::InvalidAllocation {
            resource: r,
            reason: format!("unknown shares level {}", s.level),
        })?;
    let shares = match level {
        proto::SharesLevel::Unspecified | proto::SharesLevel::Normal => Shares::Normal,
        proto::SharesLevel::Low => Shares::Low,
        proto::SharesLevel::High => Shares::High,
        proto::SharesLevel::Custom => Shares::Custom(s.custom),
    };
    shares.validate(r)?;
    Ok(shares)
}

/// Shares for the API.
pub fn shares_to_proto(s: Shares) -> proto::Shares {
    let (level, custom) = match s {
        Shares::Low => (proto::SharesLevel::Low, 0),
        Shares::Normal => (proto::SharesLevel::Normal, 0),
        Shares::High => (proto::SharesLevel::High, 0),
        Shares::Custom(v) => (proto::SharesLevel::Custom, v),
    };
    proto::Shares {
        level: level.into(),
        custom,
    }
}

/// An allocation from the API; absent = the default (expandable, no
/// reservation, no limit), limit 0 = none.
pub fn allocation_from_proto(
    a: Option<&proto::Allocation>,
    r: Resource,
) -> Result<Allocation, PoolError> {
    let Some(a) = a else {
        return Ok(Allocation::default());
    };
    let alloc = Allocation {
        shares: shares_from_proto(a.shares.as_ref(), r)?,
        reservation: a.reservation,
        limit: (a.limit != 0).then_some(a.limit),
        expandable: a.expandable_reservation,
    };
    alloc.validate(r)?;
    Ok(alloc)
}

/// An allocation for the API.
pub fn allocation_to_proto(a: &Allocation) -> proto::Allocation {
    proto::Allocation {
        shares: Some(shares_to_proto(a.shares)),
        reservation: a.reservation,
        limit: a.limit.unwrap_or(0),
        expandable_reservation: a.expandable,
    }
}

/// A quota from the API; absent or 0 = no cap.
pub fn quota_from_proto(q: Option<&proto::Quota>) -> Quota {
    let q = q.cloned().unwrap_or_default();
    Quota {
        max_vms: (q.max_vms != 0).then_some(q.max_vms),
        max_vcpus: (q.max_vcpus != 0).then_some(q.max_vcpus),
        max_memory_bytes: (q.max_memory_bytes != 0).then_some(q.max_memory_bytes),
    }
}

/// A quota for the API.
pub fn quota_to_proto(q: &Quota) -> proto::Quota {
    proto::Quota {
        max_vms: q.max_vms.unwrap_or(0),
        max_vcpus: q.max_vcpus.unwrap_or(0),
        max_memory_bytes: q.max_memory_bytes.unwrap_or(0),
    }
}

impl TryFrom<&proto::ResourcePoolSpec> for PoolSpec {
    type Error = PoolError;

    fn try_from(p: &proto::ResourcePoolSpec) -> Result<Self, PoolError> {
        let spec = PoolSpec {
            name: p.name.clone(),
            cpu: allocation_from_proto(p.cpu.as_ref(), Resource::Cpu)?,
            memory: allocation_from_proto(p.memory.as_ref(), Resource::Memory)?,
            quota: quota_from_proto(p.quota.as_ref()),
        };
        spec.validate()?;
        Ok(spec)
    }
}

impl From<&PoolSpec> for proto::ResourcePoolSpec {
    fn from(s: &PoolSpec) -> Self {
        proto::ResourcePoolSpec {
            name: s.name.clone(),
            cpu: Some(allocation_to_proto(&s.cpu)),
            memory: Some(allocation_to_proto(&s.memory)),
            quota: Some(quota_to_proto(&s.quota)),
        }
    }
}

impl TryFrom<i32> for Role {
    type Error = PoolError;

    /// A role from the API's enum number; UNSPECIFIED is refused.
    fn try_from(v: i32) -> Result<Self, PoolError> {
        match proto::VmRole::try_from(v) {
            Ok(proto::VmRole::ControlPlane) => Ok(Role::ControlPlane),
            Ok(proto::VmRole::Etcd) => Ok(Role::Etcd),
            Ok(proto::VmRole::Worker) => Ok(Role::Worker),
            Ok(proto::VmRole::Unspecified) => Err(PoolError::InvalidWorkload(
                "role is required (CONTROL_PLANE, ETCD or WORKER)".to_string(),
            )),
            Err(_) => Err(PoolError::InvalidWorkload(format!("unknown role {v}"))),
        }
    }
}

impl From<Role> for proto::VmRole {
    fn from(r: Role) -> Self {
        match r {
            Role::ControlPlane => proto::VmRole::ControlPlane,
            Role::Etcd => proto::VmRole::Etcd,
            Role::Worker => proto::VmRole::Worker,
        }
    }
}

impl TryFrom<&proto::VmSpec> for VmSizing {
    type Error = PoolError;

    /// The sizing part of a VM spec, checked.
    fn try_from(s: &proto::VmSpec) -> Result<Self, PoolError> {
        let sizing = VmSizing {
            role: Role::try_from(s.role)?,
            vcpus: s.vcpus,
            memory_mib: s.memory_mib,
            cpu_reservation_millicores: s.cpu_reservation_millicores,
            memory_reservation_mib: s.memory_reservation_mib,
        };
        sizing.reservation()?;
        Ok(sizing)
    }
}

impl From<Resources> for proto::ResourceAmounts {
    fn from(r: Resources) -> Self {
        proto::ResourceAmounts {
            cpu_millicores: r.cpu_millicores,
            memory_bytes: r.memory_bytes,
        }
    }
}

impl From<&proto::ResourceAmounts> for Resources {
    fn from(r: &proto::ResourceAmounts) -> Self {
        Resources::new(r.cpu_millicores, r.memory_bytes)
    }
}

impl From<ResourceStatus> for proto::ResourceUsage {
    fn from(s: ResourceStatus) -> Self {
        proto::ResourceUsage {
            charged_to_parent: s.charged_to_parent,
            reserved_by_children: s.reserved_by_children,
            unreserved: s.unreserved,
        }
    }
}

impl From<Usage> for proto::WorkloadUsage {
    fn from(u: Usage) -> Self {
        proto::WorkloadUsage {
            workloads: u.workloads,
            running_workloads: u.running,
            vms: u.vms,
            vcpus: u.vcpus,
            memory_bytes: u.memory_bytes,
        }
    }
}

impl From<PoolStatus> for proto::ResourcePoolStatus {
    fn from(s: PoolStatus) -> Self {
        proto::ResourcePoolStatus {
            cpu: Some(s.cpu.into()),
            memory: Some(s.memory.into()),
            usage: Some(s.usage.into()),
        }
    }
}

impl From<HostCapacity> for proto::HostCapacity {
    fn from(c: HostCapacity) -> Self {
        proto::HostCapacity {
            total: Some(c.total.into()),
            system_reserve: Some(c.system_reserve.into()),
            reserved: Some(c.reserved.into()),
            unreserved: Some(c.unreserved.into()),
        }
    }
}

impl PoolTree {
    /// Pool `id` as the API shows it, status included.
    pub fn to_proto(&self, id: &PoolId) -> Result<proto::ResourcePool, PoolError> {
        let pool = self.get(id)?;
        Ok(proto::ResourcePool {
            id: id.to_string(),
            parent_id: pool.parent().map(ToString::to_string).unwrap_or_default(),
            spec: Some(pool.spec().into()),
            status: Some(self.status(id)?.into()),
            child_pool_ids: pool.child_ids().map(ToString::to_string).collect(),
            workload_ids: pool.workload_ids().map(ToString::to_string).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_and_zero_mean_defaults_and_none() {
        let p = proto::ResourcePoolSpec {
            name: "web".into(),
            ..Default::default()
        };
        assert_eq!(PoolSpec::try_from(&p).unwrap(), PoolSpec::named("web"));
        assert_eq!(
            quota_from_proto(Some(&proto::Quota::default())),
            Quota::default()
        );
    }

    #[test]
    fn spec_round_trips() {
        let spec = PoolSpec {
            name: "prod".into(),
            cpu: Allocation::fixed(1500).with_limit(4000),
            memory: Allocation {
                shares: Shares::Custom(300),
                ..Allocation::expandable(1 << 30)
            },
            quota: Quota {
                max_vms: Some(3),
                max_vcpus: None,
                max_memory_bytes: Some(8 << 30),
            },
        };
        let p = proto::ResourcePoolSpec::from(&spec);
        assert_eq!(PoolSpec::try_from(&p).unwrap(), spec);
    }

    #[test]
    fn bad_api_values_are_invalid_argument() {
        let bad_level = proto::Allocation {
            shares: Some(proto::Shares {
                level: 99,
                custom: 0,
            }),
            ..Default::default()
        };
        let err = allocation_from_proto(Some(&bad_level), Resource::Cpu).unwrap_err();
        assert_eq!(err.kind(), super::super::ErrorKind::InvalidArgument);
        let below = proto::Allocation {
            reservation: 10,
            limit: 5,
            ..Default::default()
        };
        assert!(allocation_from_proto(Some(&below), Resource::Memory).is_err());
        assert!(Role::try_from(0).is_err());
        assert!(Role::try_from(42).is_err());
        assert_eq!(Role::try_from(2), Ok(Role::Etcd));
    }

    #[test]
    fn vm_sizing_from_spec() {
        let spec = proto::VmSpec {
            role: proto::VmRole::Worker.into(),
            vcpus: 2,
            memory_mib: 512,
            ..Default::default()
        };
        let sizing = VmSizing::try_from(&spec).unwrap();
        assert_eq!(sizing.reservation().unwrap().cpu_millicores, 250);
        let zero = proto::VmSpec { vcpus: 0, ..spec };
        assert!(VmSizing::try_from(&zero).is_err());
    }
}
