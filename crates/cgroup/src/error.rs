//! Typed errors of the cgroup layer; each names the cgroup directory or file
//! involved, so a failed pool or VM operation says where it failed.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// What went wrong while managing a cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The host's cgroup setup cannot carry pools (e.g. no memory controller).
    #[error("cgroups unusable: {0}")]
    Unsupported(String),

    /// A controller Stratum needs is not mounted (v1) or not delegated (v2).
    #[error("{path}: cgroup controller `{controller}` is not available")]
    ControllerMissing {
        controller: &'static str,
        path: PathBuf,
    },

    /// A pool or leaf name that is not one safe path component.
    #[error("invalid cgroup name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },

    /// Reading, writing or creating a cgroup file or directory failed.
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// A cgroups-rs controller call failed.
    #[error("{path}: {op}: {source}")]
    Controller {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: cgroups_rs::fs::error::Error,
    },

    /// A cgroup file held something the kernel documentation does not allow.
    #[error("{path}: cannot parse {what} from {content:?}")]
    Parse {
        path: PathBuf,
        what: &'static str,
        content: String,
    },

    /// `open` of a cgroup that does not exist (in at least one hierarchy).
    #[error("{path}: cgroup does not exist")]
    NotFound { path: PathBuf },

    /// The name exists but is not a directory (e.g. an interface file).
    #[error("{path}: exists and is not a cgroup directory")]
    NotADirectory { path: PathBuf },

    /// `remove` of a cgroup that still holds processes.
    #[error("{path}: still holds processes {pids:?}; kill them first")]
    Busy { path: PathBuf, pids: Vec<u32> },

    /// `remove` of a cgroup that still has child cgroups.
    #[error("{path}: still has child cgroups {children:?}; remove them first")]
    HasChildren {
        path: PathBuf,
        children: Vec<String>,
    },

    /// `kill_all` sent SIGKILL but processes were still there at the deadline.
    #[error("{path}: processes {pids:?} still present {timeout:?} after SIGKILL")]
    KillTimeout {
        path: PathBuf,
        pids: Vec<u32>,
        timeout: Duration,
    },
}

/// Shorthand used throughout the module.
pub type Result<T> = std::result::Result<T, CgroupError>;

impl CgroupError {
    /// Builds the `map_err` closure for an `io::Error` on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| CgroupError::Io { path, op, source }
    }

    /// Builds the `map_err` closure for a cgroups-rs error on `path`.
    pub(crate) fn lib(
        path: impl Into<PathBuf>,
        op: &'static str,
    ) -> impl FnOnce(cgroups_rs::fs::error::Error) -> Self {
        let path = path.into();
        move |source| CgroupError::Controller { path, op, source }
    }
}
