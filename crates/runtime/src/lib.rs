//! The container runtime layer: pods' containers run directly on the host
//! through an OCI runtime (crun by default, runc as the alternative), each
//! in a leaf cgroup below its pod's cgroup, below its resource pool — so a
//! pod counts against the pool exactly as a VM does.
//!
//! This is a library for the pod service; it has no gRPC surface and knows
//! nothing about images (it takes unpacked layer directories) or pod
//! networking (it takes a network namespace path).
//!
//! - [`rootfs`]: overlayfs over the image layers (or a plain directory).
//! - [`sandbox`]: the pod's shared network/IPC/UTS namespaces, pinned as
//!   bind-mounted namespace files (no pause process), and its `/dev/shm`;
//!   [`pod_etc`]: the pod's `/etc/hosts`, `/etc/hostname` and
//!   `/etc/resolv.conf`; [`sysctls`]: settings of its namespaces.
//! - [`cgpath`]: naming a Stratum cgroup as the runtime's `cgroupsPath`,
//!   and the mount view that makes this possible on cgroup v1 hosts where
//!   the agent sits in different cgroups per hierarchy.
//! - [`resources`]: `linux.resources` echoing the limits the cgroup layer
//!   enforces.
//! - [`spec`]: the OCI runtime spec (oci-spec); [`confinement`]: a
//!   container's capabilities, seccomp and paths; [`seccomp`]: the system
//!   call filter every container gets (Docker's default profile), or
//!   [`seccomp_file`]'s, a profile from a file on the host.
//! - [`oci`]: the runtime CLI driver (create/start/state/kill/delete/exec);
//!   [`exec`]: an exec handed back while it runs (pipes, or a terminal
//!   received over a console socket), for interactive exec.
//! - [`logs`]: CRI log format and the follower.
//! - [`log_writer`]: the per-container log writer process that owns a
//!   container's log (`stratum-log-writer`) and, for [`attach`], its
//!   stdin or terminal.
//! - [`reaper`]: exit detection: subreaper, pidfd, orphan reaping.
//! - [`users`]: user and group names resolved against the image's files.
//! - [`container`]: the lifecycle glue; [`restart`]: the restart policy.
//!
//! Typical use (the pod service's):
//! ```text
//! become_subreaper()?; spawn_orphan_reaper()?;            // once, at start
//! let mapping = CgroupMapping::detect(&hierarchy.root()?)?;
//! let runtime = OciRuntime::new(&config, mapping.view())?; runtime.check_host()?;
//! let pod_cg = hierarchy.create_leaf(&pool_cg, "pod-7")?;
//! let sandbox = PodSandbox::create(&pod_dir, "pod-7", PodNetwork::Existing(netns), HostShares::default(), PidSharing::PerContainer)?;
//! let ctr = Container::create(&runtime, PodContext { .. }, &ctr_dir, &config).await?;
//! ctr.start(&runtime).await?;  let report = ctr.wait().await?;
//! ctr.remove(&runtime).await?; sandbox.remove()?; mapping.prune(pod path)?;
//! ```

pub mod attach;
pub mod cgpath;
pub mod confinement;
pub mod container;
mod error;
pub mod exec;
pub mod idmap;
pub mod log_writer;
pub mod logs;
pub mod mountinfo;
pub mod oci;
pub mod pod_etc;
pub mod pod_init;
pub mod reaper;
pub mod resources;
pub mod restart;
pub mod rootfs;
pub mod sandbox;
pub mod seccomp;
pub mod seccomp_file;
pub mod spec;
pub mod sysctls;
pub mod users;

pub use cgpath::{CgroupMapping, CgroupView, MappingMode};
pub use confinement::{CapabilityName, Confinement};
pub use container::{
    Container, ContainerConfig, ContainerStatus, ExitReason, ExitReport, PodContext,
};
pub use error::{Result, RuntimeError};
pub use exec::{ExecChild, PtyMaster, PtyResizer};
pub use idmap::IdMap;
pub use log_writer::LogRotation;
pub use logs::{CriLogLine, LogFollower, LogStream, MAX_LOG_LINE};
pub use oci::{
    ContainerStdio, ExecOutput, OciRuntime, OciRuntimeConfig, RuntimeKind, RuntimeState,
    RuntimeStatus,
};
pub use pod_etc::{PodDns, PodEtc};
pub use reaper::{become_subreaper, reap_orphans, spawn_orphan_reaper, ExitWatch, ProcessExit};
pub use resources::OciResources;
pub use restart::{decide, ExitFacts, RestartDecision, RestartPolicy};
pub use rootfs::{Rootfs, RootfsSource};
pub use sandbox::{HostShares, PidSharing, PodNetwork, PodSandbox, SandboxNamespaces};
pub use spec::{BindMount, ProcessConfig, Propagation, SpecConfig};
pub use users::{Identity, UserDb, UserRef};

/// The helper program `name` next to `exe` (as cargo and packages lay
/// them out), else `name` on PATH.
pub fn sibling_program(exe: Option<&std::path::Path>, name: &str) -> std::path::PathBuf {
    exe.and_then(std::path::Path::parent)
        .map(|dir| dir.join(name))
        .filter(|p| p.exists())
        .unwrap_or_else(|| std::path::PathBuf::from(name))
}
