//! Typed errors of the nested-host harness.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while composing or running a nested host.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A build input is absent; `make_target` says how to create it.
    #[error("missing {what}: {} (create it with `make {make_target}`)", path.display())]
    MissingInput {
        what: &'static str,
        path: PathBuf,
        make_target: &'static str,
    },

    /// An input exists but is dynamically linked; the nested host has no libc.
    #[error("{} is dynamically linked; the nested host needs a static binary ({hint})", path.display())]
    NotStatic { path: PathBuf, hint: &'static str },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A host tool the harness runs failed.
    #[error("{0}")]
    Tool(String),

    /// A scenario's drive has a path QEMU's `-drive file=` cannot carry.
    #[error("drive path {} is not UTF-8 or contains a comma", .0.display())]
    BadDrivePath(PathBuf),

    /// A destination path of a scenario file is unusable inside the host.
    #[error("invalid destination path {dest:?} in the nested host: {reason}")]
    InvalidDest { dest: String, reason: &'static str },

    #[error("cannot start {program}: {source} (install it with `apt-get install -y {package}`)")]
    Spawn {
        program: String,
        package: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("`busybox --list-full` failed: {0}")]
    BusyboxList(String),

    #[error("nested host did not finish within {after:?}; console tail:\n{console_tail}")]
    Timeout {
        after: Duration,
        console_tail: String,
    },

    /// The nested host stopped running: its init's heartbeat (every ten
    /// seconds) has not been seen for `silent`, and QEMU was
    /// killed. QEMU's TCG emulation of nested SVM sometimes leaves the
    /// host's only CPU halted with nothing to wake it (QEMU idle, the
    /// host's own timers no longer firing).
    #[error(
        "nested host froze (no heartbeat for {silent:?}); QEMU's view:\n{emulator}\nconsole tail:\n{console_tail}"
    )]
    HostFroze {
        silent: Duration,
        /// QEMU's run state and the CPU's registers, from its QMP socket.
        emulator: String,
        console_tail: String,
    },

    /// QEMU ended before the host's init reported `STRATUM-HOST-UP`.
    #[error("nested host never came up (qemu {status}); qemu stderr:\n{stderr}\nconsole tail:\n{console_tail}")]
    HostDidNotBoot {
        status: String,
        stderr: String,
        console_tail: String,
    },

    /// A guest script does not fit on the kernel command line.
    #[error(
        "the {script_len}-byte guest script makes a kernel command line of {len} bytes; \
         Linux and vmm take at most {max} (its base64 is 4/3 of its length): shorten the script"
    )]
    CmdlineTooLong {
        len: usize,
        max: usize,
        script_len: usize,
    },

    #[error(
        "scenario exit code was {actual:?}, expected {expected}; console tail:\n{console_tail}"
    )]
    ExitMismatch {
        expected: i32,
        actual: Option<i32>,
        console_tail: String,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds a human-readable context to `std::io` results.
pub(crate) trait IoContext<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context(),
            source,
        })
    }
}
