//! Namespace-style quotas: caps on how many VMs and pods, how many vCPUs
//! and how much memory a pool and all its descendants may hold.
//!
//! Like a Kubernetes ResourceQuota they count what is *defined* (created),
//! running or not, and are checked when a workload is added, so a stopped
//! VM or pod keeps its place and starting it never fails on a quota. VMs
//! and vCPUs count VMs only, pods count pods only. Memory counts memory
//! ceilings: a VM's guest memory (without the VMM overhead, so a quota of
//! 8 GiB admits eight 1 GiB VMs) and a pod's memory limit; a pod without a
//! memory limit is refused under a memory cap (`workload.rs` says why). A
//! pool's quota may be larger than its parent's; every ancestor's quota is
//! checked, so the smallest one binds.
//! Quotas are separate from reservations: a pool may have room in its quota
//! and none in its reservation, or the other way round.

use std::fmt;

use super::error::PoolError;
use super::tree::PoolId;

/// Caps over a pool's subtree; `None` = no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Quota {
    /// Most VMs.
    pub max_vms: Option<u32>,
    /// Most vCPUs summed over VMs.
    pub max_vcpus: Option<u32>,
    /// Most memory ceilings summed over VMs (guest memory) and pods
    /// (memory limits), in bytes. Set, it also refuses pods without a
    /// memory limit.
    pub max_memory_bytes: Option<u64>,
    /// Most pods.
    pub max_pods: Option<u32>,
}

/// What a quota caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaItem {
    /// Number of VMs.
    Vms,
    /// vCPUs summed over VMs.
    Vcpus,
    /// Memory ceilings summed over VMs and pods, in bytes.
    MemoryBytes,
    /// Number of pods.
    Pods,
    /// Pods without a memory limit: capped at 0 by a memory quota, since
    /// they have no ceiling for it to count.
    PodsWithoutMemoryLimit,
}

impl QuotaItem {
    /// Every item, in the order they are checked.
    pub const ALL: [QuotaItem; 5] = [
        QuotaItem::Vms,
        QuotaItem::Pods,
        QuotaItem::Vcpus,
        QuotaItem::MemoryBytes,
        QuotaItem::PodsWithoutMemoryLimit,
    ];
}

impl fmt::Display for QuotaItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QuotaItem::Vms => "VMs",
            QuotaItem::Vcpus => "vCPUs",
            QuotaItem::MemoryBytes => "memory bytes",
            QuotaItem::Pods => "pods",
            QuotaItem::PodsWithoutMemoryLimit => {
                "pods without a memory limit (a memory quota counts pod memory limits)"
            }
        })
    }
}

/// Counts over a pool's subtree (or one workload's contribution), each
/// kind adding its own counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Usage {
    /// Defined workloads of any kind.
    pub workloads: u32,
    /// Of which admitted (their reservations charged).
    pub running: u32,
    /// Defined VMs.
    pub vms: u32,
    /// vCPUs of the defined VMs.
    pub vcpus: u32,
    /// Memory ceilings of the defined workloads, in bytes: VM guest memory
    /// plus pod memory limits.
    pub memory_bytes: u64,
    /// Defined pods.
    pub pods: u32,
    /// Of which without a memory limit (not in `memory_bytes`).
    pub pods_without_memory_limit: u32,
}

impl Usage {
    /// The sum, saturating.
    pub fn plus(&self, other: &Usage) -> Usage {
        Usage {
            workloads: self.workloads.saturating_add(other.workloads),
            running: self.running.saturating_add(other.running),
            vms: self.vms.saturating_add(other.vms),
            vcpus: self.vcpus.saturating_add(other.vcpus),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
            pods: self.pods.saturating_add(other.pods),
            pods_without_memory_limit: self
                .pods_without_memory_limit
                .saturating_add(other.pods_without_memory_limit),
        }
    }

    /// The difference, saturating at zero.
    pub fn minus(&self, other: &Usage) -> Usage {
        Usage {
            workloads: self.workloads.saturating_sub(other.workloads),
            running: self.running.saturating_sub(other.running),
            vms: self.vms.saturating_sub(other.vms),
            vcpus: self.vcpus.saturating_sub(other.vcpus),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
            pods: self.pods.saturating_sub(other.pods),
            pods_without_memory_limit: self
                .pods_without_memory_limit
                .saturating_sub(other.pods_without_memory_limit),
        }
    }

    fn get(&self, item: QuotaItem) -> u64 {
        match item {
            QuotaItem::Vms => u64::from(self.vms),
            QuotaItem::Vcpus => u64::from(self.vcpus),
            QuotaItem::MemoryBytes => self.memory_bytes,
            QuotaItem::Pods => u64::from(self.pods),
            QuotaItem::PodsWithoutMemoryLimit => u64::from(self.pods_without_memory_limit),
        }
    }
}

impl Quota {
    /// The cap on `item`, if any.
    pub fn max(&self, item: QuotaItem) -> Option<u64> {
        match item {
            QuotaItem::Vms => self.max_vms.map(u64::from),
            QuotaItem::Vcpus => self.max_vcpus.map(u64::from),
            QuotaItem::MemoryBytes => self.max_memory_bytes,
            QuotaItem::Pods => self.max_pods.map(u64::from),
            QuotaItem::PodsWithoutMemoryLimit => self.max_memory_bytes.map(|_| 0),
        }
    }

    /// The first item whose cap `usage` exceeds, with the cap.
    pub fn first_exceeded(&self, usage: &Usage) -> Option<(QuotaItem, u64)> {
        QuotaItem::ALL
            .into_iter()
            .find_map(|item| match self.max(item) {
                Some(max) if usage.get(item) > max => Some((item, max)),
                _ => None,
            })
    }

    /// Refuse adding to pool `pool` what would bring its subtree to `after`.
    pub fn admit(&self, pool: &PoolId, after: &Usage) -> Result<(), PoolError> {
        match self.first_exceeded(after) {
            Some((item, max)) => Err(PoolError::QuotaExceeded {
                pool: pool.clone(),
                item,
                max,
                requested: after.get(item),
            }),
            None => Ok(()),
        }
    }

    /// Refuse setting this quota on pool `pool` whose subtree holds `usage`.
    pub fn covers(&self, pool: &PoolId, usage: &Usage) -> Result<(), PoolError> {
        match self.first_exceeded(usage) {
            Some((item, max)) => Err(PoolError::QuotaBelowUsage {
                pool: pool.clone(),
                item,
                max,
                usage: usage.get(item),
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vms(vms: u32, vcpus: u32, memory_bytes: u64) -> Usage {
        Usage {
            workloads: vms,
            vms,
            vcpus,
            memory_bytes,
            ..Usage::default()
        }
    }

    #[test]
    fn no_caps_admit_anything() {
        let big = vms(u32::MAX, u32::MAX, u64::MAX);
        assert!(Quota::default().admit(&PoolId::from("p"), &big).is_ok());
    }

    #[test]
    fn reaching_a_cap_is_fine_exceeding_it_is_not() {
        let q = Quota {
            max_vms: Some(2),
            max_vcpus: Some(8),
            ..Quota::default()
        };
        let p = PoolId::from("p");
        assert!(q.admit(&p, &vms(2, 8, 0)).is_ok());
        let err = q.admit(&p, &vms(2, 9, 0)).unwrap_err();
        assert_eq!(
            err,
            PoolError::QuotaExceeded {
                pool: p.clone(),
                item: QuotaItem::Vcpus,
                max: 8,
                requested: 9
            }
        );
        assert!(matches!(
            q.covers(&p, &vms(3, 3, 0)),
            Err(PoolError::QuotaBelowUsage {
                item: QuotaItem::Vms,
                ..
            })
        ));
    }

    fn pods(pods: u32, memory_bytes: u64, without_limit: u32) -> Usage {
        Usage {
            workloads: pods,
            pods,
            memory_bytes,
            pods_without_memory_limit: without_limit,
            ..Usage::default()
        }
    }

    #[test]
    fn vms_and_pods_have_separate_caps_and_share_the_memory_cap() {
        let q = Quota {
            max_vms: Some(1),
            max_pods: Some(2),
            max_memory_bytes: Some(100),
            ..Quota::default()
        };
        let p = PoolId::from("p");
        let mixed = vms(1, 4, 60).plus(&pods(2, 40, 0));
        assert!(q.admit(&p, &mixed).is_ok());
        let err = |u: &Usage| match q.admit(&p, u).unwrap_err() {
            PoolError::QuotaExceeded { item, .. } => item,
            e => panic!("{e}"),
        };
        assert_eq!(err(&mixed.plus(&pods(1, 0, 0))), QuotaItem::Pods);
        assert_eq!(err(&mixed.plus(&vms(1, 0, 0))), QuotaItem::Vms);
        assert_eq!(
            err(&vms(1, 0, 60).plus(&pods(1, 41, 0))),
            QuotaItem::MemoryBytes
        );
    }

    #[test]
    fn a_memory_cap_refuses_pods_without_a_memory_limit() {
        let p = PoolId::from("p");
        let open_pod = pods(1, 0, 1);
        assert!(Quota::default().admit(&p, &open_pod).is_ok());
        let capped = Quota {
            max_memory_bytes: Some(1 << 30),
            ..Quota::default()
        };
        let err = capped.admit(&p, &open_pod).unwrap_err();
        assert_eq!(
            err,
            PoolError::QuotaExceeded {
                pool: p.clone(),
                item: QuotaItem::PodsWithoutMemoryLimit,
                max: 0,
                requested: 1
            }
        );
        assert!(
            err.to_string().contains("pods without a memory limit"),
            "{err}"
        );
        assert!(matches!(
            capped.covers(&p, &open_pod),
            Err(PoolError::QuotaBelowUsage {
                item: QuotaItem::PodsWithoutMemoryLimit,
                ..
            })
        ));
        // A pod cap alone does not ask for limits.
        let pod_cap = Quota {
            max_pods: Some(1),
            ..Quota::default()
        };
        assert!(pod_cap.admit(&p, &open_pod).is_ok());
    }

    #[test]
    fn usage_arithmetic_saturates() {
        let a = vms(1, 2, 3).plus(&pods(4, 5, 6));
        assert_eq!(a.plus(&a).minus(&a), a);
        assert_eq!(Usage::default().minus(&a), Usage::default());
        assert_eq!(vms(0, 0, u64::MAX).plus(&a).memory_bytes, u64::MAX);
    }
}
