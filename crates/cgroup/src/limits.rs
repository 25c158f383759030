//! `CgroupLimits`: what a pool or workload cgroup enforces, in plain units,
//! and the conversions to the numbers cgroup v1 and v2 files take.
//!
//! The value is decoupled from the pool model: the pool layer turns shares
//! levels, reservations and limits (vSphere semantics) into this, and this
//! module turns it into files. See DESIGN.md ("The node agent", cgroups sections) for the table.

/// CFS period for every CPU limit, in microseconds (100 ms, the kernel's
/// default and what Kubernetes uses): long enough that throttling overhead
/// is negligible, short enough that a capped VM does not stall visibly.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The kernel refuses CFS quotas below 1 ms; smaller limits are rounded up.
pub const CPU_MIN_QUOTA_US: u64 = 1_000;

/// The kernel's largest CFS quota (2^44 − 1 µs, about 200 days per period):
/// larger limits are clamped there, which is unlimited in practice.
pub const CPU_MAX_QUOTA_US: u64 = (1 << 44) - 1;

/// Default relative CPU weight, on the v1 shares scale (`cpu.shares` 1024 ==
/// `cpu.weight` 100, the kernels' defaults for a new cgroup).
pub const DEFAULT_CPU_SHARES: u64 = 1024;

/// Range of `cpu.shares` on cgroup v1.
pub const CPU_SHARES_MIN: u64 = 2;
/// Upper end of `cpu.shares` on cgroup v1.
pub const CPU_SHARES_MAX: u64 = 262_144;
/// Range of `cpu.weight` on cgroup v2.
pub const CPU_WEIGHT_MIN: u64 = 1;
/// Upper end of `cpu.weight` on cgroup v2.
pub const CPU_WEIGHT_MAX: u64 = 10_000;

/// The limits one cgroup enforces. `None` means "no limit" and writes the
/// file's unlimited value, so applying a value always sets every file.
/// `Default` is what the kernel gives a new cgroup on v1 and v2 alike (a
/// child inherits no limit from its parent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Relative CPU weight against sibling cgroups, on the v1 shares scale
    /// (1024 = default). Written as `cpu.shares` (clamped to 2..=262144) on
    /// v1 and converted to `cpu.weight` (1..=10000) on v2, see
    /// [`shares_to_weight`].
    pub cpu_shares_weight: u64,
    /// Hard CPU cap in millicores (1000 = one core), enforced by CFS
    /// bandwidth over [`CPU_PERIOD_US`]. May exceed the pool's: the tighter
    /// one binds (v1 stores the clamped value, see `v1_quota`).
    pub cpu_limit_millicores: Option<u64>,
    /// Hard memory cap: `memory.limit_in_bytes` (v1) / `memory.max` (v2).
    /// Exceeding it triggers reclaim, then the OOM killer inside the cgroup.
    pub memory_limit_bytes: Option<u64>,
    /// Guaranteed memory: `memory.min` on v2. v1 has no hard protection;
    /// `memory.soft_limit_in_bytes` is written instead, which only orders
    /// reclaim under global pressure and guarantees nothing.
    pub memory_reservation_bytes: Option<u64>,
    /// Maximum number of tasks (processes and threads): `pids.max`.
    pub pids_max: Option<u64>,
}

impl Default for CgroupLimits {
    fn default() -> Self {
        CgroupLimits {
            cpu_shares_weight: DEFAULT_CPU_SHARES,
            cpu_limit_millicores: None,
            memory_limit_bytes: None,
            memory_reservation_bytes: None,
            pids_max: None,
        }
    }
}

/// `cpu.shares` value for a weight: the weight clamped to the kernel's range.
pub fn shares_to_v1(shares: u64) -> u64 {
    shares.clamp(CPU_SHARES_MIN, CPU_SHARES_MAX)
}

/// `cpu.weight` value for a weight on the shares scale.
///
/// Linear, as systemd converts `CPUShares=` to `CPUWeight=`: weight =
/// shares × 100 / 1024, rounded, clamped to 1..=10000. Chosen over the
/// Kubernetes/runc affine map (`1 + (shares − 2) × 9999 / 262142`) because it
/// keeps ratios exact (the 1:2:4 of low/normal/high shares stay 1:2:4) and
/// maps the default to the default (1024 → 100), so a Stratum pool competes
/// with non-Stratum siblings the same way on v1 and v2. The cost: shares
/// above 102400 all saturate at weight 10000.
pub fn shares_to_weight(shares: u64) -> u64 {
    let scaled = shares.saturating_mul(100).saturating_add(512) / 1024;
    scaled.clamp(CPU_WEIGHT_MIN, CPU_WEIGHT_MAX)
}

/// CFS quota in µs per [`CPU_PERIOD_US`] for a limit in millicores:
/// `millicores × period / 1000`, within the kernel's accepted range
/// [`CPU_MIN_QUOTA_US`]..=[`CPU_MAX_QUOTA_US`]. A quota above the period is
/// valid and means more than one core.
pub fn millicores_to_quota_us(millicores: u64) -> u64 {
    let quota = millicores.saturating_mul(CPU_PERIOD_US) / 1000;
    quota.clamp(CPU_MIN_QUOTA_US, CPU_MAX_QUOTA_US)
}

/// Byte counts and task counts go to cgroups-rs as `i64`; anything beyond
/// `i64::MAX` is "unlimited" in practice and saturates there.
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_shares_to_weight_keeps_defaults_and_ratios() {
        assert_eq!(shares_to_weight(DEFAULT_CPU_SHARES), 100);
        assert_eq!(shares_to_weight(512), 50);
        assert_eq!(shares_to_weight(2048), 200);
        assert_eq!(shares_to_weight(4096), 400);
        assert_eq!(shares_to_weight(102_400), 10_000);
    }

    #[test]
    fn cgroup_shares_to_weight_clamps_to_v2_range() {
        assert_eq!(shares_to_weight(0), CPU_WEIGHT_MIN);
        assert_eq!(shares_to_weight(2), CPU_WEIGHT_MIN);
        assert_eq!(shares_to_weight(CPU_SHARES_MAX), CPU_WEIGHT_MAX);
        assert_eq!(shares_to_weight(u64::MAX), CPU_WEIGHT_MAX);
    }

    #[test]
    fn cgroup_shares_to_v1_clamps_to_kernel_range() {
        assert_eq!(shares_to_v1(0), CPU_SHARES_MIN);
        assert_eq!(shares_to_v1(1024), 1024);
        assert_eq!(shares_to_v1(u64::MAX), CPU_SHARES_MAX);
    }

    #[test]
    fn cgroup_millicores_to_quota() {
        assert_eq!(millicores_to_quota_us(500), 50_000);
        assert_eq!(millicores_to_quota_us(1000), CPU_PERIOD_US);
        assert_eq!(millicores_to_quota_us(2500), 250_000);
        // Below the kernel's 1 ms minimum: rounded up, never rejected.
        assert_eq!(millicores_to_quota_us(1), CPU_MIN_QUOTA_US);
        assert_eq!(millicores_to_quota_us(0), CPU_MIN_QUOTA_US);
        assert_eq!(millicores_to_quota_us(u64::MAX), CPU_MAX_QUOTA_US);
    }

    #[test]
    fn cgroup_sizes_saturate_into_i64() {
        assert_eq!(to_i64(64 << 20), 64 << 20);
        assert_eq!(to_i64(u64::MAX), i64::MAX);
    }
}
