//! Killing everything in a cgroup and removing it.
//!
//! Removal refuses while the cgroup holds processes or child cgroups: the
//! agent must never lose track of a running `vmm` by deleting the cgroup
//! that accounts for it. Killing is the explicit, separate step.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::discover::CgroupVersion;
use super::error::{CgroupError, Result};
use super::fsio;
use super::group::Cgroup;

/// How often `kill_all` re-reads the cgroup while waiting for it to empty.
const KILL_POLL: Duration = Duration::from_millis(10);

impl Cgroup {
    /// Names of the child cgroups, over all backing directories.
    pub fn children(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for dir in self.dirs() {
            names.extend(fsio::child_dirs(&dir)?);
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// SIGKILLs every process in this cgroup and its descendants, and waits
    /// until none is left (at most `timeout`).
    ///
    /// v2 kernels ≥ 5.14 do it atomically through `cgroup.kill`. Otherwise
    /// the pids are read and signalled in rounds until the subtree is empty,
    /// which also catches children forked meanwhile. A pid could in theory
    /// be recycled between the read and the kill; the kernel hands out pids
    /// in increasing order up to `pid_max` (4M by default), so that needs a
    /// full wrap-around within one round of a few microseconds.
    pub fn kill_all(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let kill_file = self.primary_dir().join("cgroup.kill");
        let atomic = self.version == CgroupVersion::V2 && kill_file.exists();
        loop {
            let pids = self.subtree_procs()?;
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let path = self.primary_dir().to_path_buf();
                return Err(CgroupError::KillTimeout {
                    path,
                    pids,
                    timeout,
                });
            }
            if atomic {
                fsio::write(&kill_file, "1")?;
            } else {
                pids.iter().for_each(|&pid| sigkill(pid));
            }
            thread::sleep(KILL_POLL);
        }
    }

    /// Removes the cgroup from every hierarchy. Refused with `Busy` while it
    /// holds processes and with `HasChildren` while it has child cgroups.
    pub fn remove(&self) -> Result<()> {
        let children = self.children()?;
        if !children.is_empty() {
            let path = self.primary_dir().to_path_buf();
            return Err(CgroupError::HasChildren { path, children });
        }
        let pids = self.procs()?;
        if !pids.is_empty() {
            let path = self.primary_dir().to_path_buf();
            return Err(CgroupError::Busy { path, pids });
        }
        // cgroups-rs retries rmdir with back-off, as runc does: right after
        // the last process exits the kernel may still report EBUSY briefly.
        for controller in self.controllers() {
            controller
                .delete()
                .map_err(CgroupError::lib(controller.path(), "remove cgroup"))?;
        }
        Ok(())
    }

    /// Pids in this cgroup and all descendants, over all hierarchies.
    fn subtree_procs(&self) -> Result<Vec<u32>> {
        let mut pids = Vec::new();
        for dir in self.dirs() {
            collect_procs(&dir, &mut pids)?;
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }
}

fn collect_procs(dir: &Path, pids: &mut Vec<u32>) -> Result<()> {
    pids.extend(fsio::read_pids(&dir.join("cgroup.procs"))?);
    for child in fsio::child_dirs(dir)? {
        collect_procs(&PathBuf::from(dir).join(child), pids)?;
    }
    Ok(())
}

/// SIGKILL, never to the agent itself (it does not live in the tree, but a
/// misconfigured placement must not make the agent shoot itself).
fn sigkill(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 1 || pid == std::process::id() as libc::pid_t {
        return;
    }
    // SAFETY: kill(2) has no memory-safety preconditions. ESRCH (already
    // gone) is the expected race and is ignored; the caller re-reads.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}
