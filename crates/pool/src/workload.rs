//! Workloads: the leaves of the pool tree. Each lives in one pool, counts
//! against the quotas of that pool and its ancestors from the moment it is
//! added, and charges its reservation to the pool only while admitted
//! (running). Two kinds ([`WorkloadKind`]): VMs and pods. The tree treats
//! them alike; only their reservations and what the quotas count differ.
//!
//! A VM's reservation:
//! - **memory** = guest RAM + [`VMM_MEMORY_OVERHEAD_BYTES`]. Guest RAM is
//!   reserved in full by default because without a balloon the host cannot
//!   take back what a guest touched; a spec may reserve less
//!   (`memory_reservation_mib`, as a vSphere VM's memory reservation may be
//!   below its configured memory) and then runs overcommitted: under a
//!   pool limit it can be OOM-killed. The overhead constant (16 MiB) covers the `vmm`
//!   process (measured at 1.7 MiB RSS beside the guest's RAM, README's
//!   benchmark), its virtio worker threads, stacks and queue buffers, and
//!   the kernel memory KVM charges to the same cgroup (vCPU state and the
//!   EPT/NPT page tables, about 2 MiB per GiB of guest RAM touched), with
//!   headroom: reserving too little would let a pool's VMs be OOM-killed
//!   under a limit that admission said they fit.
//! - **CPU** = the spec's `cpu_reservation_millicores`, or else its role's
//!   default ([`Role::default_cpu_reservation_millicores`]), capped at one
//!   core per vCPU. Control-plane and etcd VMs default to one full core:
//!   a starved API server or etcd misses heartbeats and leader-election
//!   deadlines (etcd's default election timeout is 1 s) and the whole
//!   cluster degrades. Workers default to a quarter core, enough for the
//!   kubelet and the node's system pods to keep reporting; what pods need
//!   is asked of the pools by the pods themselves.
//!
//! A pod's reservation ([`PodSizing`]) is its **requests**, CPU and memory,
//! and nothing more: the agent runs no process per pod (the pod's
//! namespaces are pinned as files, not by a pause process), so there is no
//! overhead to add, unlike a VM's. A pod without requests reserves nothing,
//! as a Kubernetes BestEffort pod: it is always admitted and runs on what
//! its pool has spare. Its **limits** are the ceilings of its cgroup; a
//! request may not exceed its limit. The agent does not default a request
//! to its limit (Kubernetes' API server does that before a pod reaches a
//! node; a caller translating a Kubernetes pod sends both).
//!
//! What the quotas count ([`Usage`], `quota.rs`):
//! - `max_vms` counts VMs and `max_vcpus` their vCPUs; pods count in
//!   neither.
//! - `max_pods` counts pods, whatever their number of containers.
//! - `max_memory_bytes` counts each workload's memory *ceiling*: a VM's
//!   guest memory (it may touch all of it, whatever its reservation) and a
//!   pod's memory limit. Requests would let a pod that reserves nothing
//!   escape the cap; a limit bounds what the pod can take, as guest memory
//!   bounds a VM. A pod without a memory limit has no ceiling to count:
//!   under a memory quota (of its pool or any ancestor) it is refused, as
//!   Kubernetes refuses a pod without limits in a namespace with a
//!   `limits.memory` quota, and such a pod keeps a memory quota from being
//!   set above it ([`QuotaItem::PodsWithoutMemoryLimit`](super::QuotaItem)).
//!   CPU has no quota of its own: a pod's CPU is bounded by its limits and
//!   its pools'.

use std::fmt;

use super::error::PoolError;
use super::quota::Usage;
use super::resource::{Resource, Resources, MIB, MILLICORES_PER_CPU};
use super::tree::PoolId;

/// Memory the `vmm` process and KVM use beside the guest's RAM, reserved
/// with every VM.
pub const VMM_MEMORY_OVERHEAD_BYTES: u64 = 16 * MIB;
/// Most vCPUs in one VM (APIC ids are 8 bits and the IOAPIC takes the id
/// after the last vCPU; the `vmm` refuses more).
pub const MAX_VCPUS: u32 = 254;

/// A workload's id: opaque, unique among all workloads of all kinds on the
/// host (the agent draws them from one sequence).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadId(String);

impl WorkloadId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for WorkloadId {
    fn from(s: &str) -> Self {
        WorkloadId(s.to_string())
    }
}

impl From<String> for WorkloadId {
    fn from(s: String) -> Self {
        WorkloadId(s)
    }
}

impl fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a VM is for; each role has defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Kubernetes API server, scheduler, controller manager.
    ControlPlane,
    /// An etcd member.
    Etcd,
    /// A node that runs pods.
    Worker,
}

impl Role {
    /// CPU reservation when the spec gives none, before the cap of one core
    /// per vCPU.
    pub fn default_cpu_reservation_millicores(self) -> u64 {
        match self {
            Role::ControlPlane | Role::Etcd => MILLICORES_PER_CPU,
            Role::Worker => MILLICORES_PER_CPU / 4,
        }
    }
}

/// What a workload is, with what its quotas count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    /// A VM run by one `vmm` process.
    Vm {
        /// Its role.
        role: Role,
        /// vCPUs.
        vcpus: u32,
        /// Guest RAM in bytes (a whole number of MiB).
        memory_bytes: u64,
    },
    /// A pod: containers in shared namespaces, in one cgroup.
    Pod {
        /// Its containers now (informational: no quota counts them).
        containers: u32,
        /// Its cgroup's ceilings; the memory limit is what the memory
        /// quota counts.
        limits: PodLimits,
    },
}

/// Ceilings of a pod's cgroup; `None` = unlimited (bounded by its pools).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PodLimits {
    /// CPU, in millicores.
    pub cpu_millicores: Option<u64>,
    /// Memory, in bytes.
    pub memory_bytes: Option<u64>,
}

impl PodLimits {
    /// The limit on `resource`, if any.
    pub fn get(&self, resource: Resource) -> Option<u64> {
        match resource {
            Resource::Cpu => self.cpu_millicores,
            Resource::Memory => self.memory_bytes,
        }
    }

    /// Set the limit on `resource`.
    pub fn set(&mut self, resource: Resource, limit: Option<u64>) {
        match resource {
            Resource::Cpu => self.cpu_millicores = limit,
            Resource::Memory => self.memory_bytes = limit,
        }
    }
}

/// The sizing of a pod, as its spec gives it (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PodSizing {
    /// What it reserves: CPU millicores and memory bytes; zero = nothing.
    pub requests: Resources,
    /// Its cgroup's ceilings, each at least the request.
    pub limits: PodLimits,
    /// Its containers.
    pub containers: u32,
}

impl PodSizing {
    /// The pod's reservation (its requests), or why the sizing is invalid.
    pub fn reservation(&self) -> Result<Resources, PoolError> {
        for r in Resource::ALL {
            match self.limits.get(r) {
                Some(0) => return Err(invalid(format!("a {r} limit of 0 {}", r.unit()))),
                Some(l) if self.requests.get(r) > l => {
                    return Err(invalid(format!(
                        "{r} request {} {unit} is more than the limit {l} {unit}",
                        self.requests.get(r),
                        unit = r.unit()
                    )))
                }
                _ => {}
            }
        }
        Ok(self.requests)
    }
}

/// The sizing of a VM, as its spec gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VmSizing {
    /// Its role.
    pub role: Role,
    /// vCPUs, 1..=[`MAX_VCPUS`].
    pub vcpus: u32,
    /// Guest RAM in MiB, at least 1.
    pub memory_mib: u64,
    /// CPU reservation; `None` = the role's default.
    pub cpu_reservation_millicores: Option<u64>,
    /// Memory reservation in MiB, at most `memory_mib`; `None` = all of
    /// it. The VMM overhead is added either way.
    pub memory_reservation_mib: Option<u64>,
}

impl VmSizing {
    /// The VM's reservation, or why the sizing is invalid.
    pub fn reservation(&self) -> Result<Resources, PoolError> {
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(invalid(format!("{} vCPUs (1..={MAX_VCPUS})", self.vcpus)));
        }
        Ok(Resources::new(
            self.cpu_reservation()?,
            self.memory_reservation()?,
        ))
    }

    /// Guest RAM in bytes, if it fits in a `u64`.
    fn memory_bytes(&self) -> Result<u64, PoolError> {
        if self.memory_mib == 0 {
            return Err(invalid("0 MiB of memory".to_string()));
        }
        self.memory_mib
            .checked_mul(MIB)
            .ok_or_else(|| invalid(format!("{} MiB of memory", self.memory_mib)))
    }

    fn memory_reservation(&self) -> Result<u64, PoolError> {
        let guest = self.memory_bytes()?;
        let reserved = match self.memory_reservation_mib {
            Some(r) if r > self.memory_mib => {
                return Err(invalid(format!(
                    "memory reservation {r} MiB is more than the VM's {} MiB",
                    self.memory_mib
                )))
            }
            Some(r) => r * MIB,
            None => guest,
        };
        reserved
            .checked_add(VMM_MEMORY_OVERHEAD_BYTES)
            .ok_or_else(|| invalid(format!("{} MiB of memory", self.memory_mib)))
    }

    fn cpu_reservation(&self) -> Result<u64, PoolError> {
        let max = u64::from(self.vcpus) * MILLICORES_PER_CPU;
        match self.cpu_reservation_millicores {
            Some(r) if r > max => Err(invalid(format!(
                "CPU reservation {r} millicores is more than {} vCPUs give ({max})",
                self.vcpus
            ))),
            Some(r) => Ok(r),
            None => Ok(self.role.default_cpu_reservation_millicores().min(max)),
        }
    }
}

/// A leaf of the pool tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    id: WorkloadId,
    pool: PoolId,
    kind: WorkloadKind,
    reservation: Resources,
    pub(super) admitted: bool,
}

impl Workload {
    /// A VM in pool `pool`, not admitted.
    pub fn vm(id: WorkloadId, pool: PoolId, sizing: &VmSizing) -> Result<Self, PoolError> {
        let reservation = sizing.reservation()?;
        Ok(Workload {
            id,
            pool,
            kind: WorkloadKind::Vm {
                role: sizing.role,
                vcpus: sizing.vcpus,
                memory_bytes: sizing.memory_bytes()?,
            },
            reservation,
            admitted: false,
        })
    }

    /// A pod in pool `pool`, not admitted.
    pub fn pod(id: WorkloadId, pool: PoolId, sizing: &PodSizing) -> Result<Self, PoolError> {
        let reservation = sizing.reservation()?;
        Ok(Workload {
            id,
            pool,
            kind: WorkloadKind::Pod {
                containers: sizing.containers,
                limits: sizing.limits,
            },
            reservation,
            admitted: false,
        })
    }

    /// Its id.
    pub fn id(&self) -> &WorkloadId {
        &self.id
    }

    /// The pool it lives in.
    pub fn pool(&self) -> &PoolId {
        &self.pool
    }

    /// What it is.
    pub fn kind(&self) -> &WorkloadKind {
        &self.kind
    }

    /// What it charges its pool while admitted.
    pub fn reservation(&self) -> Resources {
        self.reservation
    }

    /// Whether its reservation is charged (it runs).
    pub fn is_admitted(&self) -> bool {
        self.admitted
    }

    /// What it charges its pool now: its reservation if admitted, else nothing.
    pub fn charge(&self) -> Resources {
        if self.admitted {
            self.reservation
        } else {
            Resources::ZERO
        }
    }

    /// What it adds to the usage counts of its pool and every ancestor.
    pub fn usage(&self) -> Usage {
        let own = Usage {
            workloads: 1,
            running: u32::from(self.admitted),
            ..Usage::default()
        };
        match self.kind {
            WorkloadKind::Vm {
                vcpus,
                memory_bytes,
                ..
            } => Usage {
                vms: 1,
                vcpus,
                memory_bytes,
                ..own
            },
            WorkloadKind::Pod { limits, .. } => Usage {
                pods: 1,
                memory_bytes: limits.memory_bytes.unwrap_or(0),
                pods_without_memory_limit: u32::from(limits.memory_bytes.is_none()),
                ..own
            },
        }
    }

    /// Whether it is a pod.
    pub fn is_pod(&self) -> bool {
        matches!(self.kind, WorkloadKind::Pod { .. })
    }

    /// Sets a pod's number of containers; `false` (and nothing changed)
    /// for a VM.
    pub(super) fn set_containers(&mut self, count: u32) -> bool {
        match &mut self.kind {
            WorkloadKind::Pod { containers, .. } => {
                *containers = count;
                true
            }
            WorkloadKind::Vm { .. } => false,
        }
    }
}

fn invalid(reason: String) -> PoolError {
    PoolError::InvalidWorkload(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizing(role: Role, vcpus: u32, memory_mib: u64, cpu: Option<u64>) -> VmSizing {
        VmSizing {
            role,
            vcpus,
            memory_mib,
            cpu_reservation_millicores: cpu,
            memory_reservation_mib: None,
        }
    }

    #[test]
    fn memory_reservation_is_guest_ram_plus_vmm_overhead() {
        let r = sizing(Role::Worker, 2, 512, None).reservation().unwrap();
        assert_eq!(r.memory_bytes, 512 * MIB + VMM_MEMORY_OVERHEAD_BYTES);
    }

    #[test]
    fn cpu_reservation_defaults_by_role_capped_per_vcpu() {
        let cpu = |role, vcpus| {
            sizing(role, vcpus, 64, None)
                .reservation()
                .unwrap()
                .cpu_millicores
        };
        assert_eq!(cpu(Role::ControlPlane, 2), 1000);
        assert_eq!(cpu(Role::Etcd, 1), 1000);
        assert_eq!(cpu(Role::Worker, 4), 250);
    }

    #[test]
    fn explicit_cpu_reservation_wins_but_not_beyond_the_vcpus() {
        let r = sizing(Role::Worker, 2, 64, Some(1500))
            .reservation()
            .unwrap();
        assert_eq!(r.cpu_millicores, 1500);
        assert!(sizing(Role::Worker, 2, 64, Some(2001))
            .reservation()
            .is_err());
    }

    #[test]
    fn bad_sizes_are_invalid_not_panics() {
        for s in [
            sizing(Role::Worker, 0, 64, None),
            sizing(Role::Worker, 255, 64, None),
            sizing(Role::Worker, 1, 0, None),
            sizing(Role::Worker, 1, u64::MAX, None),
            sizing(Role::Worker, 1, u64::MAX >> 20, None),
        ] {
            assert!(
                matches!(s.reservation(), Err(PoolError::InvalidWorkload(_))),
                "{s:?}"
            );
        }
    }

    fn pod(cpu: u64, mem: u64, limits: PodLimits) -> PodSizing {
        PodSizing {
            requests: Resources::new(cpu, mem),
            limits,
            containers: 2,
        }
    }

    #[test]
    fn a_pods_reservation_is_its_requests_without_overhead() {
        let limits = PodLimits {
            cpu_millicores: Some(500),
            memory_bytes: Some(256 * MIB),
        };
        let s = pod(250, 128 * MIB, limits);
        assert_eq!(s.reservation().unwrap(), Resources::new(250, 128 * MIB));
        let best_effort = pod(0, 0, PodLimits::default());
        assert_eq!(best_effort.reservation().unwrap(), Resources::ZERO);
    }

    #[test]
    fn a_request_above_its_limit_or_a_zero_limit_is_invalid() {
        let over = pod(
            1000,
            0,
            PodLimits {
                cpu_millicores: Some(500),
                memory_bytes: None,
            },
        );
        let zero = pod(
            0,
            0,
            PodLimits {
                cpu_millicores: None,
                memory_bytes: Some(0),
            },
        );
        for s in [over, zero] {
            assert!(
                matches!(s.reservation(), Err(PoolError::InvalidWorkload(_))),
                "{s:?}"
            );
        }
        // Equal is fine (a Kubernetes Guaranteed pod).
        let equal = PodLimits {
            cpu_millicores: Some(500),
            memory_bytes: Some(MIB),
        };
        assert!(pod(500, MIB, equal).reservation().is_ok());
    }

    #[test]
    fn a_pod_counts_as_a_pod_with_its_memory_limit() {
        let limited = PodLimits {
            cpu_millicores: None,
            memory_bytes: Some(512 * MIB),
        };
        let w = Workload::pod("pod-1".into(), "root".into(), &pod(0, MIB, limited)).unwrap();
        let u = w.usage();
        assert_eq!((u.workloads, u.pods, u.vms, u.vcpus), (1, 1, 0, 0));
        assert_eq!(u.memory_bytes, 512 * MIB, "the limit, not the request");
        assert_eq!(u.pods_without_memory_limit, 0);
        assert!(w.is_pod());
        let open = Workload::pod(
            "pod-2".into(),
            "root".into(),
            &pod(0, MIB, PodLimits::default()),
        )
        .unwrap();
        assert_eq!(open.usage().memory_bytes, 0);
        assert_eq!(open.usage().pods_without_memory_limit, 1);
    }

    #[test]
    fn only_pods_take_a_container_count() {
        let mut p = Workload::pod("pod-1".into(), "root".into(), &PodSizing::default()).unwrap();
        assert!(p.set_containers(3));
        assert!(matches!(p.kind(), WorkloadKind::Pod { containers: 3, .. }));
        let s = sizing(Role::Worker, 1, 64, None);
        let mut vm = Workload::vm("vm-1".into(), "root".into(), &s).unwrap();
        assert!(!vm.set_containers(3));
    }

    #[test]
    fn a_vm_charges_only_while_admitted() {
        let s = sizing(Role::Etcd, 2, 256, None);
        let mut vm = Workload::vm("vm-1".into(), "root".into(), &s).unwrap();
        assert_eq!(vm.charge(), Resources::ZERO);
        assert_eq!(vm.usage().vcpus, 2);
        assert_eq!(vm.usage().memory_bytes, 256 * MIB);
        vm.admitted = true;
        assert_eq!(vm.charge(), vm.reservation());
        assert_eq!(vm.usage().running, 1);
    }
}
