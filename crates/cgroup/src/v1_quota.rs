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

use super::error::{CgroupError, Result};
use super::fsio;
use super::limits::CPU_PERIOD_US;

const QUOTA: &str = "cpu.cfs_quota_us";
const PERIOD: &str = "cpu.cfs_period_us";

/// Writes `quota_us` (per [`CPU_PERIOD_US`], `None` = unlimited) to the v1
/// cgroup at `dir`, adjusted as the module docs say.
///
/// Most quotas fit as asked (within the ancestors', above the
/// descendants'), so the value is written first as it is; only when the
/// kernel refuses it (EINVAL) are the tree's quotas read to clamp it. The
/// result is the same either way, and the common case costs two writes
/// instead of a walk of the ancestors and the subtree. `period_is_ours`:
/// the period already is [`CPU_PERIOD_US`] (a new cgroup's default), so
/// only the quota is written; each write of either file makes the kernel
/// check the bandwidth of every cgroup in the hierarchy.
pub(crate) fn write(dir: &Path, quota_us: Option<u64>, period_is_ours: bool) -> Result<()> {
    let write_period = !period_is_ours;
    // Unlimited is always accepted: the kernel applies the ancestors'.
    let Some(requested) = quota_us else {
        return write_quota(dir, "-1", write_period);
    };
    match write_quota(dir, &requested.to_string(), write_period) {
        Err(e) if is_invalid_value(&e) => {
            let quota = ancestors_quota(dir)?.map_or(requested, |c| requested.min(c));
            lower_descendants(dir, quota)?;
            write_quota(dir, &quota.to_string(), true)
        }
        written => written,
    }
}

fn write_quota(dir: &Path, value: &str, write_period: bool) -> Result<()> {
    if write_period {
        fsio::write(&dir.join(PERIOD), &CPU_PERIOD_US.to_string())?;
    }
    fsio::write(&dir.join(QUOTA), value)
}

/// The kernel's answer to a quota outside what the tree allows.
fn is_invalid_value(error: &CgroupError) -> bool {
    matches!(error, CgroupError::Io { source, .. } if source.raw_os_error() == Some(libc::EINVAL))
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
    let path = dir.join(QUOTA);
    let quota = fsio::read(&path)?;
    let quota = quota.trim();
    if quota.starts_with('-') {
        return Ok(None);
    }
    let quota: u64 = quota.parse().map_err(|_| CgroupError::Parse {
        path,
        what: "CPU quota",
        content: quota.to_string(),
    })?;
    let period = fsio::read_u64(&dir.join(PERIOD), "CPU period")?.max(1);
    Ok(Some(quota.saturating_mul(CPU_PERIOD_US) / period))
}
