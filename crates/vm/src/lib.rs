//! The low-level driver of one `vmm` process per VM, used by the agent's
//! VM service.
//!
//! The service decides *what* (specs, pools, state, events); this module
//! does *how* for one process: make its disks, start it in its cgroup and
//! configure it through its control API, drive it, watch it die, find it
//! again after an agent restart, and follow its console.
//!
//! Sync or async: everything that talks to vmm or the filesystem is a plain
//! blocking function with bounded time (timeouts everywhere), for the
//! service to run in `tokio::task::spawn_blocking`. The two things that wait
//! for an unbounded time are async: [`VmProcess::wait_exit`] (a pidfd in
//! tokio's reactor, so one watcher per VM costs no thread) and the console
//! [`ConsoleFollower`]. A blocking [`VmProcess::wait_exit_timeout`] exists
//! for synchronous callers.
//!
//! - [`api_client`]: HTTP/1.1 over the API Unix socket, typed requests and
//!   errors carrying vmm's `fault_message`.
//! - [`disk`]: VM disks as reflink or sparse clones of a base image.
//! - [`launch`]: spawn + cgroup + own session + configure + start, all or
//!   nothing; directly or in a jail.
//! - [`jail`]: what a VM's jail holds, and its files made ready for the
//!   jail's uid.
//! - [`tap`]: a host TAP given to a jailed vmm's uid.
//! - [`process`]: a running vmm: API actions, kill, liveness, adoption,
//!   exit waiting.
//! - [`console`]: following the console log as a stream.
//! - [`run_dir`]: the per-VM run directory layout.
//!
//! Tests that run the real `vmm` find it through the `STRATUM_VMM`
//! environment variable, else at `target/debug/vmm` of the cargo target
//! directory the tests were built in (`cargo build -p vmm` first).

pub mod api_client;
pub mod console;
pub mod disk;
pub mod jail;
pub mod launch;
pub mod process;
pub mod run_dir;
pub mod seed;
pub mod tap;

#[cfg(test)]
mod tests;

pub use api_client::{
    ApiClient, ApiError, Balloon, BalloonStatistics, BootSource, InstanceInfo, InstanceState,
    MachineConfig, MemBackend, NetworkOverride, RateLimiter, SnapshotCreate, SnapshotLoad,
    TokenBucket, VmStats, VsockOverride,
};
pub use console::{ConsoleFollower, ConsoleStream};
pub use disk::{
    clone_disk, clone_disk_sized, create_new_with, remove_disk, CloneMethod, DiskError,
};
pub use jail::JailConfig;
pub use launch::{
    launch, launch_with, DiskSpec, LaunchError, LaunchOptions, NicSpec, Restore, VmProcessSpec,
};
pub use process::{AdoptError, ExitInfo, ProcessError, ProcessIdentity, VmProcess};
pub use run_dir::RunDir;
