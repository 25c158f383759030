//! `/proc/self/mountinfo`, parsed: which paths are mount points (is a
//! container's rootfs or a pinned namespace still mounted?) and where each
//! cgroup hierarchy is mounted, with its root and controllers (to name a
//! cgroup the way an OCI runtime resolves `linux.cgroupsPath`).
//!
//! Parsed here rather than through a crate because only these few fields
//! are needed and every error must name the line it choked on.

use std::fs;
use std::path::{Path, PathBuf};

use super::error::{Result, RuntimeError};

/// One line of mountinfo (the fields this module needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The directory, inside the file system, that is mounted (field 4).
    pub root: PathBuf,
    /// Where it is mounted (field 5).
    pub mount_point: PathBuf,
    /// File system type (first field after " - ").
    pub fs_type: String,
    /// Super block options (last field), e.g. `rw,memory` for cgroup v1.
    pub super_options: String,
}

impl MountEntry {
    /// For a cgroup v1 mount, the controllers (and `name=` of named
    /// hierarchies) from the super options; empty for other mounts.
    pub fn cgroup_controllers(&self) -> Vec<String> {
        if self.fs_type != "cgroup" {
            return Vec::new();
        }
        self.super_options
            .split(',')
            .filter(|o| {
                !o.is_empty()
                    && !matches!(
                        *o,
                        "rw" | "ro"
                            | "none"
                            | "noprefix"
                            | "clone_children"
                            | "xattr"
                            | "cpuset_v2_mode"
                    )
                    && !o.starts_with("release_agent=")
            })
            .map(str::to_string)
            .collect()
    }

    /// Whether this is a cgroup (v1) or cgroup2 mount.
    pub fn is_cgroup(&self) -> bool {
        self.fs_type == "cgroup" || self.fs_type == "cgroup2"
    }
}

/// All mounts of the calling process's mount namespace.
pub fn read_self() -> Result<Vec<MountEntry>> {
    let path = Path::new("/proc/self/mountinfo");
    let content = fs::read_to_string(path).map_err(RuntimeError::io(path, "read"))?;
    parse(&content)
}

/// Whether `path` is a mount point in the calling process's namespace.
pub fn is_mount_point(path: &Path) -> Result<bool> {
    Ok(read_self()?.iter().any(|m| m.mount_point == path))
}

/// Parses mountinfo content.
pub fn parse(content: &str) -> Result<Vec<MountEntry>> {
    content
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Result<MountEntry> {
    let bad = |reason| RuntimeError::invalid("mountinfo line", line, reason);
    let (left, right) = line
        .split_once(" - ")
        .ok_or_else(|| bad("no \" - \" separator"))?;
    let fields: Vec<&str> = left.split(' ').collect();
    if fields.len() < 6 {
        return Err(bad("fewer than 6 fields before the separator"));
    }
    let tail: Vec<&str> = right.split(' ').collect();
    if tail.len() < 3 {
        return Err(bad("fewer than 3 fields after the separator"));
    }
    Ok(MountEntry {
        root: PathBuf::from(unescape(fields[3])),
        mount_point: PathBuf::from(unescape(fields[4])),
        fs_type: unescape(tail[0]),
        super_options: unescape(tail[2]),
    })
}

/// Undoes the kernel's octal escapes (`\040` for a space and so on).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 /ns /sys/fs/cgroup/memory rw,relatime shared:5 - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,release_agent=/x,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /run/my\\040dir rw - tmpfs tmpfs rw
";

    #[test]
    fn runtime_mountinfo_parses_cgroup_mounts() {
        let mounts = parse(SAMPLE).expect("parse");
        assert_eq!(mounts.len(), 6);
        assert_eq!(mounts[1].cgroup_controllers(), vec!["cpu"]);
        assert_eq!(mounts[2].root, PathBuf::from("/ns"));
        assert_eq!(mounts[2].cgroup_controllers(), vec!["memory"]);
        assert_eq!(mounts[3].cgroup_controllers(), vec!["name=systemd"]);
        assert!(mounts[4].is_cgroup());
        assert!(mounts[4].cgroup_controllers().is_empty());
        assert!(!mounts[0].is_cgroup());
        assert_eq!(mounts[5].mount_point, PathBuf::from("/run/my dir"));
    }

    #[test]
    fn runtime_mountinfo_rejects_garbage() {
        assert!(parse("1 2 3\n").is_err());
        assert!(parse("1 2 3 / /x rw - tmpfs\n").is_err());
    }

    #[test]
    fn runtime_mountinfo_unescape_keeps_stray_backslashes() {
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("a\\9"), "a\\9");
        assert_eq!(unescape("end\\"), "end\\");
    }
}
