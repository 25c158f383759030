//! A pod's init: the process that holds a PID namespace its containers
//! share (Kubernetes' `shareProcessNamespace`, the CRI's `NamespaceMode`
//! POD for PID).
//!
//! Why a process here when the other pod namespaces are pinned files (see
//! [`crate::sandbox`]): a PID namespace lives on after its init only as an
//! object nobody can join usefully — once its PID 1 is gone the kernel
//! refuses every new process in it. So a pod that shares one gets an init
//! of its own, `stratum-pod-init`: PID 1 of the namespace, which does
//! nothing but sit there and let the kernel reap the orphans the
//! containers leave (it ignores SIGCHLD). Its namespace is also pinned
//! like the others (`<sandbox>/ns/pid`), which is the path containers join.
//!
//! What this module owns: starting the init ([`spawn`]: the program
//! unshares nothing itself; the agent's child unshares the PID namespace
//! before exec, and the program forks the real init into it and reports
//! its pid), finding it again after an agent restart by its namespace
//! ([`find_init`]), and ending it ([`kill`]). The init confines itself
//! before it waits: no capabilities (bounding set dropped), the `nobody`
//! user and group when it can switch, `no_new_privs`; it touches no pod,
//! image or guest data and opens nothing.
//!
//! Refused: a program that does not report a pid in time or reports
//! garbage (typed errors; whatever it started is killed).

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::error::{Result, RuntimeError};

/// The uid and gid the init runs as when it may switch (`nobody`).
pub const INIT_ID: u32 = 65534;
/// How long the program has to report its init's pid.
pub const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a report may hold (a pid and a newline).
const MAX_REPORT: usize = 32;

/// Starts `program` (`stratum-pod-init`) in a new PID namespace, with
/// `prepare` applied to its command first (e.g. joining the pod's init
/// cgroup), and returns the init's pid as the agent sees it.
pub fn spawn(program: &Path, prepare: impl FnOnce(&mut Command) -> Result<()>) -> Result<u32> {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    prepare(&mut cmd)?;
    // SAFETY: between fork and exec only async-signal-safe system calls:
    // setsid and unshare. unshare(CLONE_NEWPID) puts the *children* of the
    // exec'd program in a new PID namespace; the program forks the init.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::unshare(libc::CLONE_NEWPID) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(RuntimeError::io(program, "start the pod init"))?;
    let report = read_report(&mut child);
    // The launcher exits once it has reported; its init lives on, taken
    // in by the agent (a subreaper) or the host's init.
    let _ = child.kill();
    let _ = child.wait();
    let text = report?;
    let pid: u32 = text
        .trim()
        .parse()
        .ok()
        .filter(|pid| *pid > 1)
        .ok_or_else(|| {
            RuntimeError::invalid("pod init report", text.trim(), "is not a process id")
        })?;
    Ok(pid)
}

/// The launcher's report (its stdout to the end), within
/// [`SPAWN_TIMEOUT`].
fn read_report(child: &mut std::process::Child) -> Result<String> {
    let mut out = child
        .stdout
        .take()
        .ok_or_else(|| RuntimeError::invalid("pod init", "stdout", "not piped"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let read = (&mut out)
            .take(MAX_REPORT as u64)
            .read_to_end(&mut buf)
            .map(|_| buf);
        let _ = tx.send(read);
    });
    match rx.recv_timeout(SPAWN_TIMEOUT) {
        Ok(Ok(buf)) => Ok(String::from_utf8_lossy(&buf).into_owned()),
        Ok(Err(e)) => Err(RuntimeError::sys("read the pod init's report")(e)),
        Err(_) => Err(RuntimeError::invalid(
            "pod init",
            "report",
            "no pid reported in time",
        )),
    }
}

/// The init of the PID namespace pinned at `pinned`: the process in it
/// whose pid there is 1. `None` when it is gone (the namespace is then
/// useless) or the file pins nothing.
pub fn find_init(pinned: &Path) -> Option<u32> {
    let wanted = fs::metadata(pinned).ok()?;
    let entries = fs::read_dir("/proc").ok()?;
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let ns = PathBuf::from(format!("/proc/{pid}/ns/pid"));
            let same =
                fs::metadata(&ns).is_ok_and(|m| m.ino() == wanted.ino() && m.dev() == wanted.dev());
            same && innermost_pid(*pid) == Some(1)
        })
}

/// The pid of `pid` in its own PID namespace (`NSpid`'s last field).
fn innermost_pid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// Ends the init `pid` (and with it every process of its namespace) and
/// waits up to `timeout` for it to be gone.
pub fn kill(pid: u32, timeout: Duration) -> Result<()> {
    let raw = libc::pid_t::try_from(pid)
        .map_err(|_| RuntimeError::invalid("pod init", pid.to_string(), "not a pid"))?;
    // SAFETY: kill(2) with a checked pid and a constant signal.
    if unsafe { libc::kill(raw, libc::SIGKILL) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(RuntimeError::sys("kill the pod init")(e));
    }
    let deadline = Instant::now() + timeout;
    while Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
        if Instant::now() >= deadline {
            return Err(RuntimeError::invalid(
                "pod init",
                pid.to_string(),
                "still running after SIGKILL",
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| crate::reaper::parse_state_ppid(&stat))
        .is_some_and(|(state, _)| state == 'Z')
}

/// The program's body: forks the init into the namespace the launcher's
/// children get, prints its pid and returns (the launcher then exits).
/// The init never returns.
pub fn launch() -> io::Result<()> {
    // SAFETY: fork(2) in a single-threaded program; the child runs only
    // `be_init`, which makes system calls and never returns.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => be_init(),
        pid => {
            println!("{pid}");
            Ok(())
        }
    }
}

/// PID 1 of the pod's namespace: confined, then waiting for ever. The
/// kernel reaps its children itself (SIGCHLD ignored); as a namespace
/// init it gets only the signals it handles (none) and SIGKILL.
fn be_init() -> ! {
    // SAFETY: plain system calls with constant or checked arguments; a
    // failing step leaves the init less confined, never unsafe (each is
    // a restriction), and the last ones cannot fail.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
        let name = c"pod-init";
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
        for fd in 0..3 {
            libc::close(fd);
        }
        for cap in 0..=63 {
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        let none: [libc::gid_t; 0] = [];
        libc::setgroups(0, none.as_ptr());
        libc::setresgid(INIT_ID, INIT_ID, INIT_ID);
        libc::setresuid(INIT_ID, INIT_ID, INIT_ID);
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        loop {
            libc::pause();
        }
    }
}
