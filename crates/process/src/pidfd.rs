//! pidfd system calls: a file descriptor that names one process, not a
//! pid number.
//!
//! Why: after a restart the agent signals and watches `vmm` processes and
//! container inits that are not its children, identified by pid and start
//! time ([`crate::identity`]). A pid can be reused; a pidfd cannot — once
//! opened (and the start time checked after opening) every signal sent and
//! every exit seen through it is that process's. It also becomes readable
//! when the process exits, which works for non-children (unlike
//! `waitpid`) and plugs into an event loop. Linux ≥ 5.4 (`pidfd_open`,
//! `waitid(P_PIDFD)`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessExit {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
    /// Ended, but its status went to another parent (a process adopted
    /// after an agent restart, or one that is not our child).
    Unknown,
}

impl ProcessExit {
    /// The exit code as a shell shows it (128 + signal); `None` if unknown.
    pub fn code(self) -> Option<i32> {
        match self {
            ProcessExit::Exited(code) => Some(code),
            ProcessExit::Signaled(signal) => Some(128 + signal),
            ProcessExit::Unknown => None,
        }
    }
}

/// Opens a pidfd for `pid`; `ESRCH` if there is no such process.
pub fn open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `signal` to the process; `Ok(false)` if it has already exited.
pub fn send_signal(fd: BorrowedFd<'_>, signal: i32) -> io::Result<bool> {
    // SAFETY: the fd is a valid pidfd; a null siginfo means "as kill(2)".
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
        e => Err(e),
    }
}

/// Whether the process has exited, waiting at most `timeout` (zero: just
/// look). A zombie counts as exited.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    poll_readable(fd, timeout)
}

/// Whether any descriptor (a pidfd, a pipe) is readable, waiting at most
/// `timeout`; EINTR is retried.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    loop {
        // SAFETY: one valid pollfd, its count, and a timeout.
        let rc = unsafe { libc::poll(&mut pollfd, 1, millis) };
        if rc >= 0 {
            return Ok(rc > 0);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Collects the process's end: `waitid(P_PIDFD, WEXITED)`, without
/// blocking unless `block`. `None` while it runs. For a process that is
/// not our child (or was reaped already) the status is
/// [`ProcessExit::Unknown`] once it has exited.
pub fn reap(fd: BorrowedFd<'_>, block: bool) -> io::Result<Option<ProcessExit>> {
    let id = libc::id_t::try_from(fd.as_raw_fd()).map_err(|_| io::Error::other("negative fd"))?;
    let flags = if block {
        libc::WEXITED
    } else {
        libc::WEXITED | libc::WNOHANG
    };
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value to be filled in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid idtype, pidfd, out-pointer to a live siginfo_t, flags.
        let rc = unsafe { libc::waitid(libc::P_PIDFD, id, &mut info, flags) };
        if rc == 0 {
            // SAFETY: after a successful waitid the pid and status fields
            // are set (pid 0: still running, with WNOHANG).
            let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
            if pid == 0 {
                return Ok(None);
            }
            return Ok(Some(match info.si_code {
                libc::CLD_EXITED => ProcessExit::Exited(status),
                libc::CLD_KILLED | libc::CLD_DUMPED => ProcessExit::Signaled(status),
                _ => ProcessExit::Unknown,
            }));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            // Not our child: the pidfd is readable only once it ended.
            Some(libc::ECHILD) => {
                let ended = wait_readable(fd, Duration::ZERO)?;
                return Ok(ended.then_some(ProcessExit::Unknown));
            }
            _ => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_child_is_watched_signalled_and_reaped() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let fd = open(child.id()).expect("pidfd");
        assert!(!wait_readable(fd.as_fd(), Duration::ZERO).unwrap());
        assert_eq!(reap(fd.as_fd(), false).unwrap(), None, "still running");
        assert!(send_signal(fd.as_fd(), libc::SIGKILL).unwrap());
        assert!(wait_readable(fd.as_fd(), Duration::from_secs(10)).unwrap());
        let exit = reap(fd.as_fd(), true).unwrap();
        assert_eq!(exit, Some(ProcessExit::Signaled(libc::SIGKILL)));
        assert_eq!(exit.and_then(ProcessExit::code), Some(128 + 9));
        assert!(!send_signal(fd.as_fd(), libc::SIGKILL).unwrap(), "gone");
        // Reaped already: the status went elsewhere, the end is still seen.
        assert_eq!(reap(fd.as_fd(), false).unwrap(), Some(ProcessExit::Unknown));
        // Already reaped through the pidfd: std's wait finds no child.
        assert!(child.wait().is_err());
    }

    #[test]
    fn no_such_process_is_esrch() {
        let err = open(u32::MAX).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
    }
}
