//! Putting processes into a leaf cgroup and listing them.
//!
//! The preferred way is [`Cgroup::attach_command`]: the child joins the leaf
//! between `fork` and `exec` (from `Command::pre_exec`), so `vmm` never runs
//! a single instruction outside its limits and every page it touches —
//! guest RAM included — is charged to the VM's leaf. Writing the pid after
//! `spawn` ([`Cgroup::attach_pid`]) leaves a window in which the child runs
//! in the agent's cgroup; memory it charges there stays there (v2 never
//! moves charges, v1 only with `memory.move_charge_at_immigrate`). It is for
//! processes that already exist, e.g. re-attaching after a restart.
//! (`clone3(CLONE_INTO_CGROUP)` would be the v2-only equivalent; std's
//! `Command` does not expose it, and v1 has none.)

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use cgroups_rs::CgroupPid;

use super::discover::CgroupVersion;
use super::error::{CgroupError, Result};
use super::fsio;
use super::group::Cgroup;

impl Cgroup {
    /// Makes every process `cmd` spawns join this cgroup before it execs.
    ///
    /// Opens `cgroup.procs` of each backing directory now (close-on-exec),
    /// and in the child writes "0" to each: the kernel reads pid 0 as "the
    /// writing process" on v1 and v2. `write(2)` is async-signal-safe and
    /// nothing is allocated in the child. If a write fails, `spawn` returns
    /// that error and nothing was exec'd. The files stay open as long as
    /// `cmd` lives.
    pub fn attach_command(&self, cmd: &mut Command) -> Result<()> {
        let mut fds: Vec<OwnedFd> = Vec::new();
        for dir in self.dirs() {
            let procs = dir.join("cgroup.procs");
            let file = OpenOptions::new()
                .write(true)
                .open(&procs)
                .map_err(CgroupError::io(&procs, "open for attach"))?;
            fds.push(file.into());
        }
        // SAFETY: the closure runs in the forked child before exec; it only
        // calls write(2) on descriptors it owns and builds an io::Error from
        // errno, neither of which allocates or takes locks.
        unsafe {
            cmd.pre_exec(move || join_self(&fds));
        }
        Ok(())
    }

    /// Moves an existing process (all its threads) into this cgroup, in
    /// every hierarchy. See the module docs for why spawning through
    /// [`Cgroup::attach_command`] is preferred for new processes.
    pub fn attach_pid(&self, pid: u32) -> Result<()> {
        let pid = CgroupPid::from(u64::from(pid));
        for controller in self.controllers() {
            controller
                .add_task_by_tgid(&pid)
                .map_err(CgroupError::lib(controller.path(), "write cgroup.procs"))?;
        }
        Ok(())
    }

    /// Processes (thread-group ids) directly in this cgroup, sorted; the
    /// union over all backing directories. Descendants are not included.
    pub fn procs(&self) -> Result<Vec<u32>> {
        self.union_of("cgroup.procs")
    }

    /// Threads directly in this cgroup (`tasks` on v1, `cgroup.threads` on
    /// v2), sorted.
    pub fn threads(&self) -> Result<Vec<u32>> {
        match self.version {
            CgroupVersion::V1 => self.union_of("tasks"),
            CgroupVersion::V2 => self.union_of("cgroup.threads"),
        }
    }

    fn union_of(&self, file: &str) -> Result<Vec<u32>> {
        let mut pids = Vec::new();
        for dir in self.dirs() {
            pids.extend(fsio::read_pids(&dir.join(file))?);
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }
}

/// In the forked child: join the cgroup through each pre-opened file.
fn join_self(fds: &[OwnedFd]) -> io::Result<()> {
    for fd in fds {
        // SAFETY: `fd` is a valid open descriptor owned by `fds`, and the
        // buffer is a static one-byte string.
        let written = unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) };
        if written != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
