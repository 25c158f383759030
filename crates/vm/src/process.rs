//! One running `vmm` process: its identity, its API, signals, liveness,
//! re-adoption after an agent restart, and waiting for its exit.
//!
//! Identity is (pid, start time): a pid alone may be reused once `vmm`
//! dies. A [`VmProcess`] additionally holds a pidfd, opened while the
//! identity was known to be right (our unreaped child at launch; after the
//! start-time check at adoption), so [`VmProcess::kill`] and the exit
//! watchers can never hit a stranger that inherited the pid.
//!
//! Exit waiting: [`VmProcess::wait_exit`] is async (tokio `AsyncFd` on the
//! pidfd, which becomes readable at exit — also for processes that are not
//! our children, i.e. VMs adopted after a restart); the blocking
//! [`VmProcess::wait_exit_timeout`] is for synchronous code. Our own
//! children are reaped (`waitid(P_PIDFD)`) so no zombie is left and the
//! exit status is known; for adopted processes the kernel gives the status
//! to their new parent, so [`ExitInfo`] is unknown (both fields `None`).
//! Every launched `VmProcess` must be waited for once, or its zombie stays
//! until the agent exits.
//!
//! API calls (pause, stats, …) block for at most the client's timeout;
//! call them from `spawn_blocking` in async code.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::api_client::{ApiClient, ApiError, InstanceInfo, VmStats};
use super::run_dir::RunDir;
use stratum_process::pidfd;
use stratum_process::{identity, ProcessExit, Watched};

/// How long [`VmProcess::hard_stop`] waits for the exit when vmm ended
/// the connection without a reply.
pub const HARD_STOP_GRACE: Duration = Duration::from_secs(2);

/// How a `vmm` process ended. Both `None`: unknown (an adopted process,
/// whose status went to its new parent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit status when it exited normally (0: guest reset, power-off or
    /// HardStop; 1: vmm error).
    pub code: Option<i32>,
    /// Signal that killed it.
    pub signal: Option<i32>,
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit status {code}"),
            (None, Some(signal)) => write!(f, "killed by signal {signal}"),
            (None, None) => f.write_str("exit status unknown"),
        }
    }
}

impl From<ProcessExit> for ExitInfo {
    fn from(exit: ProcessExit) -> Self {
        match exit {
            ProcessExit::Exited(code) => ExitInfo {
                code: Some(code),
                signal: None,
            },
            ProcessExit::Signaled(signal) => ExitInfo {
                code: None,
                signal: Some(signal),
            },
            ProcessExit::Unknown => ExitInfo::default(),
        }
    }
}

impl From<std::process::ExitStatus> for ExitInfo {
    fn from(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        ExitInfo {
            code: status.code(),
            signal: status.signal(),
        }
    }
}

impl ExitInfo {
    /// Whether the status is known.
    pub fn is_known(&self) -> bool {
        self.code.is_some() || self.signal.is_some()
    }
}

/// A process named across pid reuse: pid plus `/proc/<pid>/stat` start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessIdentity {
    pub pid: u32,
    /// Clock ticks since boot (field 22 of `/proc/<pid>/stat`).
    pub start_time: u64,
}

impl ProcessIdentity {
    /// The identity of the process that has `pid` now.
    pub fn of(pid: u32) -> io::Result<ProcessIdentity> {
        let start_time = identity::process_start_time(pid)?;
        Ok(ProcessIdentity { pid, start_time })
    }

    /// Whether this very process still runs: the pid exists, has the same
    /// start time and is not a zombie.
    pub fn is_running(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        identity::parse_start_time(&stat) == Some(self.start_time) && !is_zombie(&stat)
    }
}

/// State field (3) of a stat line is `Z` (zombie) or `X` (dead).
fn is_zombie(stat: &str) -> bool {
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    matches!(state, Some("Z" | "X"))
}

/// Why an existing `vmm` could not be adopted after a restart.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// No process with that pid (or only its zombie).
    #[error("vmm process {pid} is gone")]
    Gone { pid: u32 },

    /// The pid belongs to another process now.
    #[error("pid {pid} is another process now (start time {actual}, expected {expected})")]
    StartTimeMismatch {
        pid: u32,
        expected: u64,
        actual: u64,
    },

    /// `/proc` or `pidfd_open` failed for another reason.
    #[error("vmm process {pid}: {op}: {source}")]
    Io {
        pid: u32,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// The process is there but its API does not answer `GET /`.
    #[error("vmm process {pid} does not answer its API: {source}")]
    Api {
        pid: u32,
        #[source]
        source: ApiError,
    },
}

/// A signal or wait on a `vmm` process failed.
#[derive(Debug, thiserror::Error)]
#[error("vmm process {pid}: {op}: {source}")]
pub struct ProcessError {
    pub pid: u32,
    pub op: &'static str,
    #[source]
    pub source: io::Error,
}

/// A running (or just ended) `vmm` process and its run directory.
#[derive(Debug)]
pub struct VmProcess {
    identity: ProcessIdentity,
    run_dir: RunDir,
    api: ApiClient,
    pidfd: OwnedFd,
    is_child: bool,
    /// A jailed vmm: registered so the agent's orphan reaper leaves its
    /// status to us.
    _watched: Option<Watched>,
    /// Filled by the first waiter that sees the exit; reaping happens once.
    exit: Mutex<Option<ExitInfo>>,
}

impl VmProcess {
    /// A vmm we just launched; `pidfd` was opened before it could be
    /// reaped. It is our child, or (jailed) becomes one when the jailer
    /// exits if we are a child subreaper; if not, its status is unknown.
    pub(crate) fn from_launch(
        identity: ProcessIdentity,
        pidfd: OwnedFd,
        watched: Option<Watched>,
        run_dir: RunDir,
        api: ApiClient,
    ) -> VmProcess {
        VmProcess {
            identity,
            run_dir,
            api,
            pidfd,
            is_child: true,
            _watched: watched,
            exit: Mutex::new(None),
        }
    }

    /// Re-adopts a `vmm` that an earlier agent launched (not our child),
    /// from what the state store kept. Succeeds only if `pid` is alive, has
    /// `start_time`, and its API in `run_dir` answers `GET /`.
    pub fn adopt(pid: u32, start_time: u64, run_dir: &Path) -> Result<VmProcess, AdoptError> {
        let pidfd = open_pidfd(pid)?;
        // Checked after opening: the pidfd is now bound to the verified process.
        let actual = current_start_time(pid)?;
        if actual != start_time {
            return Err(AdoptError::StartTimeMismatch {
                pid,
                expected: start_time,
                actual,
            });
        }
        let identity = ProcessIdentity { pid, start_time };
        if !identity.is_running() {
            return Err(AdoptError::Gone { pid });
        }
        let run_dir = RunDir::new(run_dir);
        let api = ApiClient::new(run_dir.api_sock());
        api.info()
            .map_err(|source| AdoptError::Api { pid, source })?;
        Ok(VmProcess {
            identity,
            run_dir,
            api,
            pidfd,
            is_child: false,
            _watched: None,
            exit: Mutex::new(None),
        })
    }

    /// Host pid.
    pub fn pid(&self) -> u32 {
        self.identity.pid
    }

    /// Start time (clock ticks since boot), to store beside the pid.
    pub fn start_time(&self) -> u64 {
        self.identity.start_time
    }

    /// Pid and start time together.
    pub fn identity(&self) -> ProcessIdentity {
        self.identity
    }

    /// Whether we spawned it (exit status known) or adopted it.
    pub fn is_child(&self) -> bool {
        self.is_child
    }

    /// The run directory.
    pub fn run_dir(&self) -> &RunDir {
        &self.run_dir
    }

    /// The API socket path.
    pub fn api_sock(&self) -> PathBuf {
        self.run_dir.api_sock()
    }

    /// The serial console log path.
    pub fn console_log(&self) -> PathBuf {
        self.run_dir.console_log()
    }

    /// A client of this VM's API (cheap to clone into `spawn_blocking`).
    pub fn api(&self) -> &ApiClient {
        &self.api
    }

    /// `GET /`.
    pub fn info(&self) -> Result<InstanceInfo, ApiError> {
        self.api.info()
    }

    /// Pauses every vCPU.
    pub fn pause(&self) -> Result<(), ApiError> {
        self.api.pause()
    }

    /// Resumes every vCPU.
    pub fn resume(&self) -> Result<(), ApiError> {
        self.api.resume()
    }

    /// Asks the guest to shut down (Ctrl+Alt+Del); it may ignore it.
    pub fn ctrl_alt_del(&self) -> Result<(), ApiError> {
        self.api.send_ctrl_alt_del()
    }

    /// Ends the VM at once through the API; vmm exits 0.
    ///
    /// vmm may exit before it has written its 204, so a request that got no
    /// reply counts as done if the process ends within [`HARD_STOP_GRACE`].
    pub fn hard_stop(&self) -> Result<(), ApiError> {
        match self.api.hard_stop() {
            Err(e) if e.fault_message().is_none() && self.exits_within(HARD_STOP_GRACE) => Ok(()),
            other => other,
        }
    }

    fn exits_within(&self, grace: Duration) -> bool {
        pidfd::wait_readable(self.pidfd.as_fd(), grace).unwrap_or(false)
    }

    /// vCPU exit and device interrupt counters.
    pub fn stats(&self) -> Result<VmStats, ApiError> {
        self.api.stats()
    }

    /// SIGKILL through the pidfd; not an error if it already exited.
    pub fn kill(&self) -> Result<(), ProcessError> {
        pidfd::send_signal(self.pidfd.as_fd(), libc::SIGKILL)
            .map(drop)
            .map_err(|source| self.error("SIGKILL", source))
    }

    /// Whether the process still runs (pid alive with the same start time,
    /// not a zombie, exit not yet seen).
    pub fn is_alive(&self) -> bool {
        let exited = pidfd::wait_readable(self.pidfd.as_fd(), Duration::ZERO).unwrap_or(false);
        !exited && self.identity.is_running()
    }

    /// Waits for the exit without blocking a tokio worker (needs a tokio
    /// runtime with IO enabled). Reaps our own child; repeated or
    /// concurrent calls all get the same answer.
    pub async fn wait_exit(&self) -> Result<ExitInfo, ProcessError> {
        if let Some(exit) = self.cached_exit() {
            return Ok(exit);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            let no_runtime = io::Error::other("wait_exit needs a tokio runtime");
            return Err(self.error("wait for exit", no_runtime));
        }
        let fd = self
            .pidfd
            .try_clone()
            .map_err(|e| self.error("dup pidfd", e))?;
        // SAFETY: `fd` is an open pidfd owned by the AsyncFd until it drops;
        // nothing else closes or replaces it.
        let watch = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| self.error("register pidfd", e.into()))?;
        let _ready = watch
            .readable()
            .await
            .map_err(|e| self.error("wait for exit", e))?;
        self.reap_once()
    }

    /// Blocking exit wait: `Ok(None)` if it still runs after `timeout`.
    pub fn wait_exit_timeout(&self, timeout: Duration) -> Result<Option<ExitInfo>, ProcessError> {
        if let Some(exit) = self.cached_exit() {
            return Ok(Some(exit));
        }
        let exited = pidfd::wait_readable(self.pidfd.as_fd(), timeout)
            .map_err(|e| self.error("wait for exit", e))?;
        if exited {
            self.reap_once().map(Some)
        } else {
            Ok(None)
        }
    }

    fn cached_exit(&self) -> Option<ExitInfo> {
        *self
            .exit
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Called once the pidfd is readable: reap (children) and remember.
    fn reap_once(&self) -> Result<ExitInfo, ProcessError> {
        let mut slot = self
            .exit
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(exit) = *slot {
            return Ok(exit);
        }
        let exit = if self.is_child {
            pidfd::reap(self.pidfd.as_fd(), true)
                .map(|exit| ExitInfo::from(exit.unwrap_or(ProcessExit::Unknown)))
                .map_err(|e| self.error("waitid", e))?
        } else {
            ExitInfo::default()
        };
        *slot = Some(exit);
        Ok(exit)
    }

    fn error(&self, op: &'static str, source: io::Error) -> ProcessError {
        ProcessError {
            pid: self.identity.pid,
            op,
            source,
        }
    }
}

fn open_pidfd(pid: u32) -> Result<OwnedFd, AdoptError> {
    pidfd::open(pid).map_err(|source| match source.raw_os_error() {
        Some(libc::ESRCH) => AdoptError::Gone { pid },
        _ => AdoptError::Io {
            pid,
            op: "pidfd_open",
            source,
        },
    })
}

fn current_start_time(pid: u32) -> Result<u64, AdoptError> {
    identity::process_start_time(pid).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => AdoptError::Gone { pid },
        _ => AdoptError::Io {
            pid,
            op: "read /proc/<pid>/stat",
            source,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zombie_state_is_read_after_the_command_name() {
        assert!(is_zombie("42 (a) b) Z 1 42"));
        assert!(!is_zombie("42 (Z) S 1 42"));
        assert!(!is_zombie("garbage"));
    }

    #[test]
    fn our_own_identity_is_running_and_a_wrong_start_time_is_not() {
        let me = ProcessIdentity::of(std::process::id()).expect("own stat");
        assert!(me.is_running());
        let other = ProcessIdentity {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.is_running());
    }

    #[test]
    fn adopting_a_missing_pid_is_gone() {
        let err = VmProcess::adopt(u32::MAX - 1, 1, Path::new("/nonexistent")).unwrap_err();
        assert!(matches!(err, AdoptError::Gone { .. }), "{err}");
    }
}
