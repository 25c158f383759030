//! pidfd system calls: a file descriptor that names one process, not a
//! pid number.
//!
//! Why: after a restart the agent signals and watches `vmm` processes that
//! are not its children, identified by pid and start time. A pid can be
//! reused; a pidfd cannot — once opened (and the start time checked after
//! opening) every signal sent and every exit seen through it is that
//! process's. It also becomes readable when the process exits, which works
//! for non-children (unlike `waitpid`) and plugs into tokio's `AsyncFd`.
//! Linux ≥ 5.4 (`pidfd_open`, `waitid(P_PIDFD)`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::process::ExitInfo;

/// Opens a pidfd for `pid`; `ESRCH` (NotFound-like) if there is none.
pub(crate) fn open(pid: u32) -> io::Result<OwnedFd> {
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
pub(crate) fn send_signal(fd: BorrowedFd<'_>, signal: i32) -> io::Result<bool> {
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
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
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

/// Reaps our exited child through its pidfd and decodes its status. For a
/// process that is not our child (or was reaped already) the status is
/// unknown: `ExitInfo::default()`. Call only once the pidfd is readable,
/// or it blocks until the child exits.
pub(crate) fn reap(fd: BorrowedFd<'_>) -> io::Result<ExitInfo> {
    // SAFETY: an all-zero siginfo_t is a valid value to be filled in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid idtype, pidfd, out-pointer and flags.
        let rc = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                fd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED,
            )
        };
        if rc == 0 {
            return Ok(decode(&info));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => return Ok(ExitInfo::default()),
            _ => return Err(err),
        }
    }
}

fn decode(info: &libc::siginfo_t) -> ExitInfo {
    // SAFETY: waitid filled a SIGCHLD siginfo, whose si_status is valid.
    let status = unsafe { info.si_status() };
    match info.si_code {
        libc::CLD_EXITED => ExitInfo {
            code: Some(status),
            signal: None,
        },
        libc::CLD_KILLED | libc::CLD_DUMPED => ExitInfo {
            code: None,
            signal: Some(status),
        },
        _ => ExitInfo::default(),
    }
}
