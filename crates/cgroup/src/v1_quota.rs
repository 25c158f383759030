//! CPU quotas across the v1 tree.
//!
//! cgroup v1 rejects (EINVAL) a `cpu.cfs_quota_us` above the nearest limited
//! ancestor's, and a quota below any descendant's; v2 accepts any value and
//! enforces the minimum along the path. Pools with vSphere semantics need the
//! v2 behaviour (a VM's limit may exceed its pool's; the pool then binds), so
//! on v1 the written quota is clamped to the ancestors' and descendants
//! above the new value are lowered first. The kernel file then holds the
//! effective limit, not the requested one: raising a pool later does not
//! raise its children back, the pool layer re-applies them. Written here
//! rather than through cgroups-rs, which writes a quota as given.

use std::path::Path;

use super::error::Result;
use super::fsio;
use super::limits::CPU_PERIOD_US;

const QUOTA: &str = "cpu.cfs_quota_us";
const PERIOD: &str = "cpu.cfs_period_us";

/// Writes `quota_us` (per [`CPU_PERIOD_US`], `None` = unlimited) to the v1
/// cgroup at `dir`, adjusted as the module docs say.
pub(crate) fn write(dir: &Path, quota_us: Option<u64>) -> Result<()> {
    let value = match quota_us {
        Some(requested) => {
            let quota = ancestors_quota(dir)?.map_or(requested, |c| requested.min(c));
            lower_descendants(dir, quota)?;
            quota.to_string()
        }
        // Unlimited is always accepted: the kernel applies the ancestors'.
        None => "-1".to_string(),
    };
    fsio::write(&dir.join(PERIOD), &CPU_PERIOD_US.to_string())?;
    fsio::write(&dir.join(QUOTA), &value)
}

/// The tightest quota of the ancestors, normalised to our period; stops at
/// the hierarchy's root (the first directory without the file).
fn ancestors_quota(dir: &Path) -> Result<Option<u64>> {
    let mut tightest = None;
    let mut current = dir.parent();
    while let Some(ancestor) = current.filter(|a| a.join(QUOTA).exists()) {
        if let Some(q) = normalised_quota(ancestor)? {
            tightest = Some(tightest.map_or(q, |t: u64| t.min(q)));
        }
        current = ancestor.parent();
    }
    Ok(tightest)
}

/// Lowers, deepest first, every descendant quota above `ceiling`.
fn lower_descendants(dir: &Path, ceiling: u64) -> Result<()> {
    for child in fsio::child_dirs(dir)? {
        let child = dir.join(child);
        lower_descendants(&child, ceiling)?;
        if normalised_quota(&child)?.is_some_and(|q| q > ceiling) {
            fsio::write(&child.join(PERIOD), &CPU_PERIOD_US.to_string())?;
            fsio::write(&child.join(QUOTA), &ceiling.to_string())?;
        }
    }
    Ok(())
}

/// The cgroup's own quota scaled to [`CPU_PERIOD_US`]; `None` if unlimited.
fn normalised_quota(dir: &Path) -> Result<Option<u64>> {
    let quota = fsio::read(&dir.join(QUOTA))?;
    if quota.trim().starts_with('-') {
        return Ok(None);
    }
    let quota = fsio::read_u64(&dir.join(QUOTA), "CPU quota")?;
    let period = fsio::read_u64(&dir.join(PERIOD), "CPU period")?.max(1);
    Ok(Some(quota.saturating_mul(CPU_PERIOD_US) / period))
}
