//! The jail one `vmm` runs in, and `stratum-jailer`, which builds it.
//!
//! A guest that escapes the device model owns whatever the `vmm` process
//! can reach. This crate makes that as little as one VM needs, in the
//! manner of Firecracker's jailer:
//!
//! - new mount, PID, IPC and UTS namespaces; `vmm` is PID 1 of its own;
//! - a root of its own: a small tmpfs holding only the VM's files (kernel,
//!   initrd, disks — bind mounts, read-only where the VM only reads), the
//!   device nodes it uses (`/dev/kvm`, `/dev/net/tun`, `/dev/urandom`,
//!   made for it and owned by it) and `/run`, the VM's run directory
//!   (API socket, console log, vsock sockets). The tmpfs is read-only once
//!   built; `/proc`, `/sys` and the host's files are not there at all;
//! - an unprivileged uid and gid of its own, no supplementary groups, an
//!   empty capability set (bounding set too), `no_new_privs`;
//! - resource limits: open files, file size, processes, no core dumps
//!   (a core of a VM would be its guest memory).
//!
//! `vmm` then installs its own per-thread seccomp filters.
//!
//! What it owns: [`JailSpec`] (what one jail holds, as `stratum-jailer`'s
//! command line, built and parsed in one place) and [`jailer`] (the steps,
//! run by the binary). What it refuses: a root uid or gid, a relative or
//! non-normal path inside the jail, two things at one path, a bind of
//! anything but a regular file, a device that is not a character device,
//! and an executable that needs a dynamic loader (the jail has no
//! libraries: [`elf::is_static`]).
//!
//! Launch protocol (see [`jailer::run`]): the jailer forks the jailed
//! process into the new PID namespace, waits until it has exec'd (or
//! reports why it could not), prints its host pid on stdout and exits
//! when its stdin closes — so the launcher can open a pidfd while the pid
//! cannot yet have been reused. The jailed process is then re-parented to
//! the launcher if it is a child subreaper (the agent is), else to init.

pub mod elf;
pub mod jailer;
pub mod spec;

pub use spec::{Bind, JailSpec, SpecError};

/// Why a jail could not be built: the step that failed and the system's
/// answer.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("{0}")]
    Spec(#[from] SpecError),
    #[error("{step}: {source}")]
    Step {
        step: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is dynamically linked: the jail holds no libraries; run a statically linked build (make static)")]
    Dynamic(std::path::PathBuf),
    #[error("{0} is not a character device")]
    NotADevice(std::path::PathBuf),
    #[error("{0} is not a regular file")]
    NotAFile(std::path::PathBuf),
    #[error("capabilities remain after dropping them: effective {0:#x}")]
    CapabilitiesLeft(u64),
}

impl JailError {
    /// `step` failed with the last OS error.
    pub(crate) fn last_os(step: impl Into<String>) -> JailError {
        JailError::Step {
            step: step.into(),
            source: std::io::Error::last_os_error(),
        }
    }

    /// `step` failed with `source`.
    pub(crate) fn io(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
        let step = step.into();
        move |source| JailError::Step { step, source }
    }
}
