//! Shares: the relative weight a pool or workload gets against its
//! siblings when they compete for a resource. They guarantee nothing (that
//! is what reservations are for) and cap nothing (limits do); they only
//! split contended capacity in proportion.
//!
//! LOW : NORMAL : HIGH = 1 : 2 : 4, as in vSphere, with the values 512,
//! 1024 and 2048. NORMAL is 1024 because that is the kernel's default
//! `cpu.shares` on cgroup v1 (and `cpu.weight` 100 on v2 is the same
//! weight scaled by 100/1024), so a cgroup nobody configured competes as a
//! NORMAL sibling. CUSTOM values must lie in 2..=262144, the `cpu.shares`
//! range, so every value maps to the kernel without clamping.
//!
//! A VM's shares, like vSphere's, scale with its size: the level's value
//! per vCPU ([`Shares::for_vcpus`]), so a 4-vCPU NORMAL VM weighs as much as
//! four 1-vCPU NORMAL VMs.

use super::error::PoolError;
use super::resource::Resource;

/// Relative weight among siblings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Shares {
    /// Half of NORMAL.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Twice NORMAL.
    High,
    /// An explicit weight in [`Shares::MIN_CUSTOM`]..=[`Shares::MAX_CUSTOM`].
    Custom(u32),
}

impl Shares {
    /// Value of LOW.
    pub const LOW: u32 = 512;
    /// Value of NORMAL: the kernel's default `cpu.shares`.
    pub const NORMAL: u32 = 1024;
    /// Value of HIGH.
    pub const HIGH: u32 = 2048;
    /// Smallest CUSTOM value (the kernel's minimum `cpu.shares`).
    pub const MIN_CUSTOM: u32 = 2;
    /// Largest CUSTOM value (the kernel's maximum `cpu.shares`).
    pub const MAX_CUSTOM: u32 = 262_144;

    /// The weight.
    pub fn value(self) -> u32 {
        match self {
            Shares::Low => Self::LOW,
            Shares::Normal => Self::NORMAL,
            Shares::High => Self::HIGH,
            Shares::Custom(v) => v,
        }
    }

    /// The weight of a VM with `vcpus` vCPUs at this level: the value per
    /// vCPU, capped at [`Shares::MAX_CUSTOM`].
    pub fn for_vcpus(self, vcpus: u32) -> u32 {
        self.value()
            .saturating_mul(vcpus.max(1))
            .min(Self::MAX_CUSTOM)
    }

    /// Refuse a CUSTOM value outside the kernel's range.
    pub fn validate(self, resource: Resource) -> Result<(), PoolError> {
        match self {
            Shares::Custom(v) if !(Self::MIN_CUSTOM..=Self::MAX_CUSTOM).contains(&v) => {
                Err(PoolError::InvalidAllocation {
                    resource,
                    reason: format!(
                        "custom shares {v} outside {}..={}",
                        Self::MIN_CUSTOM,
                        Self::MAX_CUSTOM
                    ),
                })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_one_two_four() {
        assert_eq!(Shares::Normal.value(), 2 * Shares::Low.value());
        assert_eq!(Shares::High.value(), 4 * Shares::Low.value());
        assert_eq!(Shares::default(), Shares::Normal);
    }

    #[test]
    fn custom_must_be_in_the_kernel_range() {
        assert!(Shares::Custom(2).validate(Resource::Cpu).is_ok());
        assert!(Shares::Custom(262_144).validate(Resource::Cpu).is_ok());
        assert!(Shares::Custom(1).validate(Resource::Cpu).is_err());
        assert!(Shares::Custom(262_145).validate(Resource::Memory).is_err());
    }

    #[test]
    fn vm_shares_scale_with_vcpus_and_saturate() {
        assert_eq!(Shares::Normal.for_vcpus(4), 4096);
        assert_eq!(Shares::High.for_vcpus(0), 2048);
        assert_eq!(Shares::High.for_vcpus(254), Shares::MAX_CUSTOM);
    }
}
