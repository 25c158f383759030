//! Free space on the agent's disk, and the threshold below which it
//! refuses work that would fill it.
//!
//! Everything the agent writes lives in its data directory: the state
//! store, VM disks and run directories, pods' roots and logs, the image
//! store. When the data directory's file system has less free than
//! `--min-free-disk` (5% by default, or an absolute size), the calls that
//! grow it — a VM create (disk clones), a pod run or container create
//! (writable layers, logs), an image pull or import — are refused with
//! RESOURCE_EXHAUSTED before they write anything (a pull also when its
//! missing layers would take the disk below it), as the kubelet refuses
//! pods below its eviction thresholds. Everything that frees space
//! (stops, deletes, removals) and everything small (pools, starts) still
//! works, so an operator can make room through the API itself.
//!
//! What it refuses: a threshold of more than 100%, or one it cannot parse.
//! A file system it cannot measure refuses the call too (an agent that
//! cannot tell must not keep writing).

use std::ffi::CString;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::str::FromStr;

use super::errors::{AgentError, Result};

/// The default threshold.
pub const DEFAULT_MIN_FREE: MinFree = MinFree::Percent(5);

/// How much of the data directory's file system must stay free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MinFree {
    /// A share of the file system's size.
    Percent(u8),
    /// Bytes.
    Bytes(u64),
}

impl MinFree {
    /// The threshold in bytes on a file system of `total` bytes.
    fn bytes_of(self, total: u64) -> u64 {
        match self {
            MinFree::Percent(p) => total / 100 * u64::from(p),
            MinFree::Bytes(b) => b,
        }
    }
}

impl fmt::Display for MinFree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MinFree::Percent(p) => write!(f, "{p}%"),
            MinFree::Bytes(b) => write!(f, "{b} bytes"),
        }
    }
}

impl FromStr for MinFree {
    type Err = String;

    /// `5%`, or a size: `2GiB`, `512MiB`, `100KiB`, `1048576`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if let Some(percent) = s.strip_suffix('%') {
            return match percent.trim().parse::<u8>() {
                Ok(p) if p <= 100 => Ok(MinFree::Percent(p)),
                _ => Err(format!("{s:?}: a percentage from 0% to 100%")),
            };
        }
        let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
        let multiplier: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            _ => return Err(format!("{s:?}: a percentage (5%) or a size (2GiB, 512MiB)")),
        };
        digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(multiplier))
            .map(MinFree::Bytes)
            .ok_or_else(|| format!("{s:?}: a percentage (5%) or a size (2GiB, 512MiB)"))
    }
}

/// A file system's size and what an unprivileged writer may still use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    pub total: u64,
    pub available: u64,
}

/// The space of the file system holding `path`.
pub fn space_of(path: &Path) -> std::io::Result<Space> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs is plain old data; all-zero is a valid value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a NUL-terminated string and `stat` a valid,
    // writable statvfs that outlives the call.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fragment = stat.f_frsize;
    Ok(Space {
        total: stat.f_blocks.saturating_mul(fragment),
        available: stat.f_bavail.saturating_mul(fragment),
    })
}

/// The agent's data directory and the free space it keeps: what every
/// manager that writes into it checks.
#[derive(Clone, Debug)]
pub struct DiskFloor {
    pub dir: std::path::PathBuf,
    pub min: MinFree,
}

impl DiskFloor {
    /// [`check_free`] of the data directory.
    pub fn check(&self, what: &str) -> Result<()> {
        check_free(&self.dir, self.min, what)
    }

    /// RESOURCE_EXHAUSTED unless `bytes` more still leave the floor free:
    /// `what` is about to write that much.
    pub fn check_room(&self, what: &str, bytes: u64) -> Result<()> {
        self.check(what)?;
        let space = space_of(&self.dir).map_err(|e| {
            AgentError::Unavailable(format!(
                "cannot measure the free space of {}: {e}",
                self.dir.display()
            ))
        })?;
        let floor = self.min.bytes_of(space.total);
        if space.available < bytes.saturating_add(floor) {
            return Err(AgentError::ResourceExhausted(format!(
                "{what} needs {} MiB of disk, and {} has {} MiB free above the {} MiB it keeps",
                bytes >> 20,
                self.dir.display(),
                space.available.saturating_sub(floor) >> 20,
                floor >> 20
            )));
        }
        Ok(())
    }

    /// The threshold in bytes on the data directory's file system now (0
    /// when it cannot be measured: [`Self::check`] refuses then anyway).
    pub fn floor_bytes(&self) -> u64 {
        space_of(&self.dir).map_or(0, |space| self.min.bytes_of(space.total))
    }
}

/// RESOURCE_EXHAUSTED when the file system of `dir` has less than `min`
/// free: `what` (a VM create, an image pull) would eat into it.
pub fn check_free(dir: &Path, min: MinFree, what: &str) -> Result<()> {
    let space = space_of(dir).map_err(|e| {
        AgentError::Unavailable(format!(
            "cannot measure the free space of {}: {e}",
            dir.display()
        ))
    })?;
    let needed = min.bytes_of(space.total);
    if space.available < needed {
        return Err(AgentError::ResourceExhausted(format!(
            "{what} refused: {} has {} free, below the {min} (--min-free-disk, {needed} bytes) the agent keeps free; remove images, VMs or pods, or free the disk",
            dir.display(),
            space.available
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_as_percentages_and_sizes() {
        assert_eq!("5%".parse(), Ok(MinFree::Percent(5)));
        assert_eq!("0%".parse(), Ok(MinFree::Percent(0)));
        assert_eq!("2GiB".parse(), Ok(MinFree::Bytes(2 << 30)));
        assert_eq!("512MiB".parse(), Ok(MinFree::Bytes(512 << 20)));
        assert_eq!("4096".parse(), Ok(MinFree::Bytes(4096)));
        for bad in ["101%", "-1%", "5 GB", "", "GiB", "99999999999999TiB", "x%"] {
            assert!(bad.parse::<MinFree>().is_err(), "{bad}");
        }
        assert_eq!(MinFree::Percent(10).bytes_of(1000), 100);
    }

    #[test]
    fn the_check_reads_the_real_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let space = space_of(dir.path()).unwrap();
        assert!(space.total > 0 && space.available <= space.total);
        check_free(dir.path(), MinFree::Percent(0), "a test").unwrap();
        let refused = check_free(dir.path(), MinFree::Bytes(space.total + 1), "a test");
        assert!(matches!(refused, Err(AgentError::ResourceExhausted(_))));
        let gone = check_free(&dir.path().join("missing"), MinFree::Percent(0), "x");
        assert!(matches!(gone, Err(AgentError::Unavailable(_))));
    }
}
