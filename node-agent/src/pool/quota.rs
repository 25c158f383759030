//! Namespace-style quotas: caps on how many VMs, vCPUs and how much guest
//! memory a pool and all its descendants may hold.
//!
//! Like a Kubernetes ResourceQuota they count what is *defined* (created),
//! running or not, and are checked when a workload is added, so a stopped
//! VM keeps its place and starting it never fails on a quota. Memory counts
//! the guest memory the user asked for, not the VMM overhead, so a quota of
//! 8 GiB admits eight 1 GiB VMs. A pool's quota may be larger than its
//! parent's; every ancestor's quota is checked, so the smallest one binds.
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
    /// Most guest memory summed over VMs, in bytes.
    pub max_memory_bytes: Option<u64>,
}

/// What a quota caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaItem {
    /// Number of VMs.
    Vms,
    /// vCPUs summed over VMs.
    Vcpus,
    /// Guest memory summed over VMs, in bytes.
    MemoryBytes,
}

impl fmt::Display for QuotaItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QuotaItem::Vms => "VMs",
            QuotaItem::Vcpus => "vCPUs",
            QuotaItem::MemoryBytes => "memory bytes",
        })
    }
}

/// Counts over a pool's subtree (or one workload's contribution). Generic
/// over workload kinds: pods will add their own counts beside `vms`.
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
    /// Guest memory of the defined VMs, in bytes.
    pub memory_bytes: u64,
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
        }
    }

    fn get(&self, item: QuotaItem) -> u64 {
        match item {
            QuotaItem::Vms => u64::from(self.vms),
            QuotaItem::Vcpus => u64::from(self.vcpus),
            QuotaItem::MemoryBytes => self.memory_bytes,
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
        }
    }

    /// The first item whose cap `usage` exceeds, with the cap.
    pub fn first_exceeded(&self, usage: &Usage) -> Option<(QuotaItem, u64)> {
        [QuotaItem::Vms, QuotaItem::Vcpus, QuotaItem::MemoryBytes]
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

    #[test]
    fn usage_arithmetic_saturates() {
        let a = vms(1, 2, 3);
        assert_eq!(a.plus(&a).minus(&a), a);
        assert_eq!(Usage::default().minus(&a), Usage::default());
        assert_eq!(vms(0, 0, u64::MAX).plus(&a).memory_bytes, u64::MAX);
    }
}
