//! Knowing when and how a container's init process ends.
//!
//! The problem: `crun create` forks the container's init and exits; the
//! init is then nobody's child we know of — the kernel re-parents it to the
//! nearest *child subreaper* ancestor, else to PID 1 — and neither crun nor
//! runc records an exit code (`state` only says `stopped`). Only the parent
//! can collect the status (`waitid`), and only while the zombie exists.
//!
//! The answer: the agent makes itself a child subreaper
//! ([`become_subreaper`], `prctl(PR_SET_CHILD_SUBREAPER)`), as
//! containerd's shims do. The container's init is then re-parented to the
//! agent the moment the runtime exits, and [`ExitWatch`] — a pidfd opened
//! right after `create`, while the init is still blocked before exec and
//! cannot have exited — becomes readable at exit (tokio `AsyncFd`) and
//! collects the real status with `waitid(P_PIDFD)`: exit code, or the
//! signal (`137` = SIGKILL, with the cgroup's OOM counter telling an OOM
//! kill apart).
//!
//! After an agent restart the running inits were re-parented to PID 1 when
//! the old agent died, so their exit is still *seen* (a pidfd works for any
//! process) but the code is gone: [`ProcessExit::Unknown`], refined by the
//! OOM counter. Surviving restarts with exit codes would take a monitor
//! process per container (conmon's design); not done here.
//!
//! A subreaper also inherits orphans it never asked for: processes of a
//! container's PID namespace left when its init dies, or an `exec`'d
//! process whose runtime was killed on timeout. [`reap_orphans`] (run on
//! each SIGCHLD by [`spawn_orphan_reaper`]) collects zombies that are our
//! children *and* live in a nested PID namespace *and* are not watched
//! ([`stratum_process::watched`]: container inits, jailed `vmm`s) — never
//! the agent's own direct children (runtime commands), whose owners wait
//! for them.

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use stratum_process::pidfd;
use stratum_process::watched::{is_watched, Watched};

use super::error::{Result, RuntimeError};

/// Makes the calling process a child subreaper, so container inits are
/// re-parented to it when the runtime exits. Process-wide; call once at
/// agent start (tests call it too).
pub fn become_subreaper() -> Result<()> {
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(RuntimeError::sys("prctl(PR_SET_CHILD_SUBREAPER)")(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Whether the calling process is a child subreaper.
pub fn is_subreaper() -> Result<bool> {
    let mut flag: libc::c_int = 0;
    // SAFETY: the kernel writes one int through the pointer.
    let rc = unsafe {
        libc::prctl(
            libc::PR_GET_CHILD_SUBREAPER,
            &mut flag as *mut libc::c_int,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(RuntimeError::sys("prctl(PR_GET_CHILD_SUBREAPER)")(
            io::Error::last_os_error(),
        ));
    }
    Ok(flag != 0)
}

pub use stratum_process::ProcessExit;

/// A pidfd on a container's init, to wait for its end.
#[derive(Debug)]
pub struct ExitWatch {
    pid: u32,
    fd: AsyncFd<OwnedFd>,
    /// Keeps the orphan reaper off this pid while we wait for it.
    _watched: Watched,
}

impl ExitWatch {
    /// Opens a pidfd for `pid`. Call while the pid cannot have been reused:
    /// right after `create` (the init waits for `start`), or after checking
    /// the process start time (adoption). Needs a tokio runtime.
    pub fn open(pid: u32) -> Result<ExitWatch> {
        let owned = pidfd::open(pid).map_err(RuntimeError::sys("pidfd_open"))?;
        // SAFETY: `owned` is the open pidfd just returned; the AsyncFd owns
        // it until it drops and nothing else closes or replaces it.
        let fd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
            .map_err(|e| RuntimeError::sys("register pidfd")(e.into()))?;
        Ok(ExitWatch {
            pid,
            fd,
            _watched: Watched::new(pid),
        })
    }

    /// The watched pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for the process to end and collects its status (reaping it
    /// if it is our child). Cancel-safe; call again after it returned and
    /// the answer is `Unknown` (the status is collected only once).
    pub async fn wait(&self) -> Result<ProcessExit> {
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(RuntimeError::sys("wait for pidfd"))?;
            let exit = pidfd::reap(self.fd.get_ref().as_fd(), false)
                .map_err(RuntimeError::sys("waitid"))?;
            match exit {
                Some(exit) => return Ok(exit),
                None => guard.clear_ready(),
            }
        }
    }

    /// Sends `signal` through the pidfd; `Ok(false)` if the process is gone.
    pub fn signal(&self, signal: i32) -> Result<bool> {
        pidfd::send_signal(self.fd.get_ref().as_fd(), signal)
            .map_err(RuntimeError::sys("pidfd_send_signal"))
    }
}

/// Reaps zombie children that live in a nested PID namespace and are not
/// watched container inits (see the module docs). Returns how many.
pub fn reap_orphans() -> usize {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0;
    };
    let mut reaped = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if !is_orphan_zombie(pid, me) || is_watched(pid) {
            continue;
        }
        let Ok(raw) = libc::pid_t::try_from(pid) else {
            continue;
        };
        let mut status = 0;
        // SAFETY: waitpid on a specific pid with WNOHANG; status is a live int.
        if unsafe { libc::waitpid(raw, &mut status, libc::WNOHANG) } == raw {
            reaped += 1;
        }
    }
    reaped
}

/// A zombie whose parent is `me` and whose pid namespace is nested.
fn is_orphan_zombie(pid: u32, me: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some((state, ppid)) = parse_state_ppid(&stat) else {
        return false;
    };
    if state != 'Z' || ppid != me {
        return false;
    }
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| nspid_depth(&s))
        .is_some_and(|depth| depth > 1)
}

/// State and parent pid from `/proc/<pid>/stat` (after the command's `)`).
pub(crate) fn parse_state_ppid(stat: &str) -> Option<(char, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Number of pid namespace levels in the `NSpid:` line of `status`.
fn nspid_depth(status: &str) -> Option<usize> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|ids| ids.split_whitespace().count())
}

/// Runs [`reap_orphans`] on every SIGCHLD for as long as the runtime lives.
pub fn spawn_orphan_reaper() -> Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigchld =
        signal(SignalKind::child()).map_err(RuntimeError::sys("listen for SIGCHLD"))?;
    Ok(tokio::spawn(async move {
        while sigchld.recv().await.is_some() {
            // Let watchers and runtime-command waiters collect their own
            // children first; ours only take nested-namespace orphans.
            tokio::task::yield_now().await;
            reap_orphans();
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_reaper_parses_stat_and_status() {
        let stat = "1234 (sh (x) y) Z 42 1234 1234 0 -1 4194560";
        assert_eq!(parse_state_ppid(stat), Some(('Z', 42)));
        assert_eq!(parse_state_ppid("garbage"), None);
        assert_eq!(nspid_depth("Name:\tsh\nNSpid:\t8123\t1\n"), Some(2));
        assert_eq!(nspid_depth("Name:\tsh\nNSpid:\t8123\n"), Some(1));
        assert_eq!(nspid_depth("Name:\tsh\n"), None);
    }

    #[test]
    fn runtime_reaper_exit_codes() {
        assert_eq!(ProcessExit::Exited(3).code(), Some(3));
        assert_eq!(ProcessExit::Signaled(9).code(), Some(137));
        assert_eq!(ProcessExit::Unknown.code(), None);
    }
}
