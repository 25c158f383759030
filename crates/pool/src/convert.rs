//! Conversions between the pool model and the API's messages, with the
//! API's conventions applied in one place: an absent allocation or shares
//! is vSphere's default, a limit or quota field of 0 means none, an absent
//! request is 0, and UNSPECIFIED shares mean NORMAL. Anything the model cannot hold (an
//! unknown enum number, an invalid setting) is an
//! [`ErrorKind::InvalidArgument`](super::ErrorKind) error.

use stratum_api::proto;

use super::allocation::Allocation;
use super::error::PoolError;
use super::quota::{Quota, Usage};
use super::resource::{Resource, Resources};
use super::shares::Shares;
use super::status::{HostCapacity, PoolStatus, ResourceStatus};
use super::tree::{PoolId, PoolSpec, PoolTree};
use super::workload::{PodLimits, PodSizing, Role, VmSizing, Workload, WorkloadKind};

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
/// reservation, no limit), limit 0 = none. A limit of `u64::MAX` (what a
/// client writes for "as much as there is") is none too, so it reads back
/// as unlimited instead of as a number nobody can enforce.
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
        limit: (a.limit != 0 && a.limit != u64::MAX).then_some(a.limit),
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
        max_pods: (q.max_pods != 0).then_some(q.max_pods),
    }
}

/// A quota for the API.
pub fn quota_to_proto(q: &Quota) -> proto::Quota {
    proto::Quota {
        max_vms: q.max_vms.unwrap_or(0),
        max_vcpus: q.max_vcpus.unwrap_or(0),
        max_memory_bytes: q.max_memory_bytes.unwrap_or(0),
        max_pods: q.max_pods.unwrap_or(0),
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

/// Limits from the API: absent or 0 = none, per resource.
pub fn limits_from_proto(r: Option<&proto::ResourceAmounts>) -> PodLimits {
    let r = r.copied().unwrap_or_default();
    PodLimits {
        cpu_millicores: (r.cpu_millicores != 0).then_some(r.cpu_millicores),
        memory_bytes: (r.memory_bytes != 0).then_some(r.memory_bytes),
    }
}

/// Limits for the API: none = 0.
pub fn limits_to_proto(l: &PodLimits) -> proto::ResourceAmounts {
    proto::ResourceAmounts {
        cpu_millicores: l.cpu_millicores.unwrap_or(0),
        memory_bytes: l.memory_bytes.unwrap_or(0),
    }
}

impl TryFrom<&proto::PodSpec> for PodSizing {
    type Error = PoolError;

    /// The sizing part of a pod spec, checked. Requests are
    /// `resources.requests` (absent = 0). The pod's limit on a resource is
    /// `resources.limits`, or, when that is 0, the sum of the containers'
    /// limits if every container has one (as the kubelet sizes a pod's
    /// cgroup), else none. A container limit above the pod's, or a request
    /// above the pod's limit, is invalid. The runtime class is not looked
    /// at: a microVM pod is the service's to refuse.
    fn try_from(s: &proto::PodSpec) -> Result<Self, PoolError> {
        let resources = s.resources.unwrap_or_default();
        let requests = resources
            .requests
            .as_ref()
            .map(Resources::from)
            .unwrap_or_default();
        let own = limits_from_proto(resources.limits.as_ref());
        let containers: Vec<(&str, PodLimits)> = s
            .containers
            .iter()
            .map(|c| (c.name.as_str(), limits_from_proto(c.limits.as_ref())))
            .collect();
        let mut limits = PodLimits::default();
        for r in Resource::ALL {
            let limit = match own.get(r) {
                Some(pod) => {
                    if let Some((name, over)) = containers
                        .iter()
                        .find_map(|(n, l)| l.get(r).filter(|&c| c > pod).map(|c| (n, c)))
                    {
                        return Err(PoolError::InvalidWorkload(format!(
                            "container {name:?}: {r} limit {over} {unit} is more than the \
                             pod's {pod} {unit}",
                            unit = r.unit()
                        )));
                    }
                    Some(pod)
                }
                None => containers_limit(&containers, r)?,
            };
            limits.set(r, limit);
        }
        let sizing = PodSizing {
            requests,
            limits,
            containers: u32::try_from(containers.len())
                .map_err(|_| PoolError::InvalidWorkload("too many containers".to_string()))?,
        };
        sizing.reservation()?;
        Ok(sizing)
    }
}

/// The sum of the containers' limits on `r` when every container (at
/// least one) has one; else none.
fn containers_limit(
    containers: &[(&str, PodLimits)],
    r: Resource,
) -> Result<Option<u64>, PoolError> {
    if containers.is_empty() {
        return Ok(None);
    }
    let mut sum: u64 = 0;
    for (_, l) in containers {
        let Some(limit) = l.get(r) else {
            return Ok(None);
        };
        sum = sum.checked_add(limit).ok_or_else(|| {
            PoolError::InvalidWorkload(format!("the containers' {r} limits overflow"))
        })?;
    }
    Ok(Some(sum))
}

impl From<&Workload> for proto::Workload {
    /// What the pool model knows of a workload, for the inventory
    /// (`ResourcePools.List` with `include_workloads`): id, kind, pool,
    /// whether it runs, its reservation, a VM's vCPUs and guest memory, a
    /// pod's containers and limits. The agent adds the name, state and
    /// reason, a VM's limits (from its spec) and the live usage.
    fn from(w: &Workload) -> Self {
        let mut out = proto::Workload {
            id: w.id().to_string(),
            pool_id: w.pool().to_string(),
            running: w.is_admitted(),
            reservation: Some(w.reservation().into()),
            ..Default::default()
        };
        match *w.kind() {
            WorkloadKind::Vm {
                vcpus,
                memory_bytes,
                ..
            } => {
                out.kind = proto::WorkloadKind::Vm.into();
                out.vcpus = vcpus;
                out.guest_memory_bytes = memory_bytes;
            }
            WorkloadKind::Pod { containers, limits } => {
                out.kind = proto::WorkloadKind::Pod.into();
                out.containers = containers;
                out.limits = Some(limits_to_proto(&limits));
            }
        }
        out
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
            pods: u.pods,
            pods_without_memory_limit: u.pods_without_memory_limit,
        }
    }
}

impl From<PoolStatus> for proto::ResourcePoolStatus {
    fn from(s: PoolStatus) -> Self {
        proto::ResourcePoolStatus {
            cpu: Some(s.cpu.into()),
            memory: Some(s.memory.into()),
            usage: Some(s.usage.into()),
            // Read from the cgroups by the agent, not known to the model.
            live: None,
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
    fn a_u64_max_limit_is_no_limit() {
        let a = proto::Allocation {
            limit: u64::MAX,
            ..Default::default()
        };
        let alloc = allocation_from_proto(Some(&a), Resource::Cpu).unwrap();
        assert_eq!(alloc.limit, None);
        assert_eq!(allocation_to_proto(&alloc).limit, 0);
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
                max_pods: Some(20),
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

    fn amounts(cpu_millicores: u64, memory_bytes: u64) -> Option<proto::ResourceAmounts> {
        Some(proto::ResourceAmounts {
            cpu_millicores,
            memory_bytes,
        })
    }

    fn container(name: &str, cpu: u64, mem: u64) -> proto::ContainerSpec {
        proto::ContainerSpec {
            name: name.into(),
            image: "busybox".into(),
            limits: amounts(cpu, mem),
            ..Default::default()
        }
    }

    fn pod_spec(
        requests: Option<proto::ResourceAmounts>,
        limits: Option<proto::ResourceAmounts>,
        containers: Vec<proto::ContainerSpec>,
    ) -> proto::PodSpec {
        proto::PodSpec {
            name: "web".into(),
            resources: Some(proto::PodResources { requests, limits }),
            containers,
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_without_resources_is_best_effort() {
        let spec = proto::PodSpec {
            name: "web".into(),
            containers: vec![container("a", 0, 0)],
            ..Default::default()
        };
        let sizing = PodSizing::try_from(&spec).unwrap();
        assert_eq!(sizing.requests, Resources::ZERO);
        assert_eq!(sizing.limits, PodLimits::default());
        assert_eq!(sizing.containers, 1);
    }

    #[test]
    fn pod_limits_come_from_the_pod_else_from_every_container() {
        let mib = crate::MIB;
        // The pod's own limits win; requests are taken as given.
        let own = pod_spec(
            amounts(250, 64 * mib),
            amounts(1000, 256 * mib),
            vec![container("a", 500, 0), container("b", 0, 0)],
        );
        let s = PodSizing::try_from(&own).unwrap();
        assert_eq!(s.requests, Resources::new(250, 64 * mib));
        assert_eq!(s.limits.cpu_millicores, Some(1000));
        assert_eq!(s.limits.memory_bytes, Some(256 * mib));
        // No pod limit: the sum when every container has one, else none.
        let summed = pod_spec(
            None,
            None,
            vec![container("a", 500, 64 * mib), container("b", 0, 128 * mib)],
        );
        let s = PodSizing::try_from(&summed).unwrap();
        assert_eq!(s.limits.memory_bytes, Some(192 * mib));
        assert_eq!(s.limits.cpu_millicores, None, "b has no CPU limit");
        assert_eq!(s.containers, 2);
        let empty = pod_spec(None, None, vec![]);
        assert_eq!(
            PodSizing::try_from(&empty).unwrap().limits,
            PodLimits::default()
        );
    }

    #[test]
    fn bad_pod_sizes_are_invalid_argument() {
        let bad = [
            // A container above the pod's limit.
            pod_spec(None, amounts(0, 100), vec![container("a", 0, 101)]),
            // A request above the pod's limit.
            pod_spec(amounts(600, 0), amounts(500, 0), vec![]),
            // A request above the containers' summed limit.
            pod_spec(amounts(0, 300), None, vec![container("a", 0, 200)]),
            // Summed limits that overflow.
            pod_spec(
                None,
                None,
                vec![container("a", u64::MAX, 0), container("b", 1, 0)],
            ),
        ];
        for spec in &bad {
            let err = PodSizing::try_from(spec).unwrap_err();
            assert_eq!(
                err.kind(),
                super::super::ErrorKind::InvalidArgument,
                "{err}"
            );
        }
    }

    #[test]
    fn workloads_for_the_inventory() {
        let vm = Workload::vm(
            "vm-1".into(),
            "pool-1".into(),
            &VmSizing {
                role: Role::Worker,
                vcpus: 2,
                memory_mib: 512,
                cpu_reservation_millicores: None,
                memory_reservation_mib: None,
            },
        )
        .unwrap();
        let v = proto::Workload::from(&vm);
        assert_eq!(v.kind(), proto::WorkloadKind::Vm);
        assert_eq!((v.id.as_str(), v.pool_id.as_str()), ("vm-1", "pool-1"));
        assert_eq!((v.vcpus, v.guest_memory_bytes), (2, 512 << 20));
        assert_eq!(v.reservation.unwrap().cpu_millicores, 250);
        assert!(!v.running);
        let sizing = PodSizing {
            requests: Resources::new(100, 1 << 20),
            limits: PodLimits {
                cpu_millicores: None,
                memory_bytes: Some(1 << 30),
            },
            containers: 3,
        };
        let pod = Workload::pod("pod-2".into(), "root".into(), &sizing).unwrap();
        let p = proto::Workload::from(&pod);
        assert_eq!(p.kind(), proto::WorkloadKind::Pod);
        assert_eq!(p.containers, 3);
        assert_eq!(p.reservation, amounts(100, 1 << 20));
        assert_eq!(p.limits, amounts(0, 1 << 30));
    }
}
