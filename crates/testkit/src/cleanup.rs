//! Removing what an agent under test made in the cgroup hierarchies: its
//! managed subtree (cpu, memory, pids) and what an OCI runtime made for
//! its pods in every other mounted hierarchy (devices, freezer, cpuset,
//! name=systemd...), which the agent's cgroup layer does not manage.

use std::path::{Path, PathBuf};
use std::time::Duration;

use stratum_cgroup::{Hierarchy, HierarchyConfig};

use crate::agent_process::teardown;

/// Kills what runs in the agent's cgroup tree `root_name` and removes it:
/// through the agent's own code for the hierarchies it manages (cpu,
/// memory, pids), then in every other hierarchy the OCI runtime wrote to.
pub fn remove_agent_cgroups(root_name: &str) {
    if let Ok(h) = Hierarchy::detect_with(&HierarchyConfig {
        root_name: root_name.to_string(),
        ..HierarchyConfig::default()
    }) {
        if let Ok(root) = h.open(Path::new("")) {
            teardown(&h, &root, Path::new(""));
        }
    }
    for (mount, own) in cgroup_mounts() {
        remove_cgroup_dirs(&mount.join(own).join(root_name));
    }
}

/// Every cgroup hierarchy mounted, with the cgroup this process is in
/// there (relative): (mount point, own cgroup).
pub fn cgroup_mounts() -> Vec<(PathBuf, PathBuf)> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    // "ID:CONTROLLERS:PATH"; CONTROLLERS is empty for the unified one.
    let own: Vec<(Vec<&str>, &str)> = own
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let _id = f.next()?;
            let controllers = f.next()?.split(',').filter(|c| !c.is_empty()).collect();
            Some((controllers, f.next()?.trim_start_matches('/')))
        })
        .collect();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let point = l.split(' ').nth(4)?;
            let (_, tail) = l.split_once(" - ")?;
            let mut tail = tail.split(' ');
            let fstype = tail.next()?;
            let options: Vec<&str> = tail.nth(1)?.split(',').collect();
            let path = own.iter().find_map(|(controllers, path)| {
                let matches = match fstype {
                    "cgroup2" => controllers.is_empty(),
                    "cgroup" => {
                        !controllers.is_empty() && controllers.iter().all(|c| options.contains(c))
                    }
                    _ => false,
                };
                matches.then_some(*path)
            })?;
            Some((
                PathBuf::from(unescape_mount_path(point)),
                PathBuf::from(path),
            ))
        })
        .collect()
}

/// SIGKILLs what is left in the cgroup directory `dir` and below and
/// removes them, leaves first (a cgroup that just emptied may be busy for
/// a moment: retried).
pub fn remove_cgroup_dirs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_dirs(&entry.path());
        }
    }
    for attempt in 0..50 {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill takes no pointers; the pid is one of the
            // benchmark's own cgroup's processes.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if attempt == 49 => {
                eprintln!("cgroup {} stays: {e}", dir.display())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A mount point as mountinfo escapes it (`\\040` for a space...), unescaped.
pub fn unescape_mount_path(p: &str) -> String {
    let bytes = p.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match octal {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
