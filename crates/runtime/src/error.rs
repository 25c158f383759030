//! Typed errors of the container runtime layer. Each names what it was
//! working on (a path, a container id, the runtime command) and, for a
//! failed OCI runtime call, carries the runtime's own error text, so a
//! failed pod operation can be reported without digging through logs.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use stratum_cgroup::CgroupError;

/// What went wrong in the runtime layer.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A name, path or value given by the caller that cannot be used.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: &'static str,
    },

    /// A file system operation on a path failed.
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// A system call not tied to one path failed (unshare, prctl, pidfd...).
    #[error("{op}: {source}")]
    Sys {
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// The OCI runtime binary could not be started at all.
    #[error("cannot run {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The OCI runtime ran and reported a failure; `message` is its stderr
    /// (or its error log for `create`, whose stdio belongs to the container).
    #[error("{runtime} {command} {id}: {status}: {message}")]
    Runtime {
        runtime: String,
        command: &'static str,
        id: String,
        status: String,
        message: String,
    },

    /// The OCI runtime did not finish within its time limit and was killed.
    #[error("{runtime} {command} {id}: no answer within {timeout:?}")]
    RuntimeTimeout {
        runtime: String,
        command: &'static str,
        id: String,
        timeout: Duration,
    },

    /// `exec` in a container did not finish within its timeout; the
    /// process was killed.
    #[error("exec in container {id}: not finished within {timeout:?}, killed")]
    ExecTimeout { id: String, timeout: Duration },

    /// The runtime's console socket did not yield a pseudo-terminal
    /// master: the peer sent no fd, something else, or a truncated message.
    #[error("console socket {socket}: {reason}")]
    ConsoleSocket {
        socket: PathBuf,
        reason: &'static str,
    },

    /// The runtime did not send a terminal over the console socket within
    /// its time limit (it was killed).
    #[error("console socket {socket}: no terminal received within {timeout:?}")]
    ConsoleTimeout { socket: PathBuf, timeout: Duration },

    /// The runtime's `state` output could not be understood.
    #[error("{runtime} state {id}: cannot parse {output:?}: {reason}")]
    State {
        runtime: String,
        id: String,
        output: String,
        reason: String,
    },

    /// crun refuses hybrid cgroup setups in which the v2 hierarchy holds
    /// controllers; the host must bind them to v1 hierarchies (or run pure
    /// v1/v2).
    #[error(
        "cgroups in hybrid mode: {unified} lists controllers {controllers:?}, which crun \
         refuses; mount them as v1 hierarchies (e.g. `mount -t cgroup -o hugetlb cgroup \
         /sys/fs/cgroup/hugetlb`) or use runc"
    )]
    HybridControllers {
        unified: PathBuf,
        controllers: Vec<String>,
    },

    /// The container's cgroup cannot be named by one `linux.cgroupsPath`.
    #[error("cgroup {dir}: {reason}")]
    CgroupPath { dir: PathBuf, reason: String },

    /// The cgroup layer failed (creating the leaf, applying limits...).
    #[error(transparent)]
    Cgroup(#[from] CgroupError),

    /// oci-spec refused a value while the runtime spec was built.
    #[error("building the OCI runtime spec: {0}")]
    Spec(#[from] oci_spec::OciSpecError),

    /// An operation that needs a state the container is not in.
    #[error("container {id}: {reason}")]
    WrongState { id: String, reason: &'static str },

    /// A CRI log line that does not follow the format.
    #[error("malformed CRI log line {line:?}: {reason}")]
    LogFormat { line: String, reason: &'static str },
}

/// Shorthand used throughout the module.
pub type Result<T> = std::result::Result<T, RuntimeError>;

impl RuntimeError {
    /// Builds the `map_err` closure for an `io::Error` on `path`.
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        op: &'static str,
    ) -> impl FnOnce(io::Error) -> RuntimeError {
        let path = path.into();
        move |source| RuntimeError::Io { path, op, source }
    }

    /// Builds the `map_err` closure for a failed system call.
    pub(crate) fn sys(op: &'static str) -> impl FnOnce(io::Error) -> RuntimeError {
        move |source| RuntimeError::Sys { op, source }
    }

    /// An invalid caller-supplied value.
    pub(crate) fn invalid(
        what: &'static str,
        value: impl Into<String>,
        reason: &'static str,
    ) -> Self {
        RuntimeError::Invalid {
            what,
            value: value.into(),
            reason,
        }
    }
}
