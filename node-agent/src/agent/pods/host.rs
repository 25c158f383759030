//! What pods need from the host, set up once on first use (or at start
//! when stored pods are to be taken back): the OCI runtime, the way
//! cgroups are named to it, and the host's networks (the network
//! manager's). An agent that never runs a pod creates no runtime state.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;

use super::security::{PodSecurity, DEFAULT_MOUNT_ROOT, DEFAULT_SECCOMP_ROOT};
use super::PodManager;
use crate::agent::errors::{AgentError, Result};
use stratum_net::HostNetworks;
use stratum_runtime::{CgroupMapping, LogRotation, OciRuntime, OciRuntimeConfig, RuntimeError};

/// The pod settings the agent is started with.
#[derive(Debug, Clone)]
pub struct PodHostConfig {
    /// The OCI runtime binary (`crun` or `runc`, a name on PATH or a path).
    pub oci_runtime: PathBuf,
    /// The per-container log writer (`stratum-log-writer`).
    pub log_writer: PathBuf,
    /// The init of a pod that shares one PID namespace
    /// (`stratum-pod-init`).
    pub pod_init: PathBuf,
    /// When containers' logs are rotated and how many files are kept
    /// (`--container-log-max-size`, `--container-log-max-files`).
    pub log_rotation: LogRotation,
    /// Tasks (processes and threads) one pod may have at once.
    pub pids_limit: u64,
    /// Run each pod's containers in a user namespace of the pod's own
    /// (where the kernel can idmap their layers: checked at set-up).
    pub user_namespaces: bool,
    /// What a container's security context may ask for (`--pod-security`).
    pub security: PodSecurity,
    /// Host directories bind mounts may come from below the privileged
    /// level (`--mount-root`), resolved.
    pub mount_roots: Vec<PathBuf>,
    /// Where Localhost seccomp profiles may come from below the privileged
    /// level (`--seccomp-profile-root`), resolved.
    pub seccomp_root: PathBuf,
}

/// A pod's task limit by default: far above what a service runs, far
/// below what exhausts the host's pid space (a fork bomb in one pod stops
/// there). OpenShift's kubelet default.
pub const DEFAULT_POD_PIDS_LIMIT: u64 = 4096;

impl Default for PodHostConfig {
    fn default() -> Self {
        PodHostConfig {
            oci_runtime: PathBuf::from("crun"),
            log_writer: PathBuf::from("stratum-log-writer"),
            pod_init: PathBuf::from("stratum-pod-init"),
            log_rotation: LogRotation::default(),
            pids_limit: DEFAULT_POD_PIDS_LIMIT,
            user_namespaces: true,
            security: PodSecurity::Baseline,
            mount_roots: vec![PathBuf::from(DEFAULT_MOUNT_ROOT)],
            seccomp_root: PathBuf::from(DEFAULT_SECCOMP_ROOT),
        }
    }
}

/// The first uid of pod user namespace ranges: above the VM jail's
/// default range, 65536 ids per pod.
pub const POD_UID_BASE: u32 = 2_000_000_000;
/// Pods with user namespaces at once (ranges up to 2^31).
pub const POD_UID_SLOTS: u32 = 1024;

/// Every host id a pod's user namespace may map to.
pub fn pod_uid_range() -> RangeInclusive<u32> {
    POD_UID_BASE..=POD_UID_BASE + POD_UID_SLOTS * stratum_runtime::idmap::IDS_PER_POD - 1
}

/// The runtime, mapping and networks every pod shares.
pub struct PodHost {
    pub runtime: OciRuntime,
    pub mapping: CgroupMapping,
    pub network: Arc<HostNetworks>,
    /// Pods get user namespaces (configured, and the kernel can).
    pub user_namespaces: bool,
}

impl PodManager {
    /// The pod host, set up on first call. UNAVAILABLE when this host
    /// cannot run pods (no runtime, a cgroup layout no runtime can use).
    pub(crate) async fn pod_host(&self) -> Result<Arc<PodHost>> {
        self.pod_host
            .get_or_try_init(|| async {
                let host = self.open_pod_host().await.map_err(|e| {
                    AgentError::Unavailable(format!("pods cannot run on this host: {e}"))
                })?;
                Ok::<_, AgentError>(Arc::new(host))
            })
            .await
            .cloned()
    }

    async fn open_pod_host(&self) -> Result<PodHost> {
        let pods = &self.shared.config.pods;
        // Per agent (its cgroup root is unique on the host), on tmpfs: the
        // runtime's state vanishes with a reboot, as the containers do.
        let run_dir = PathBuf::from("/run/stratum").join(&self.shared.config.cgroup_root);
        let mapping = CgroupMapping::detect(&self.shared.cgroups.root()?)?;
        let runtime = open_runtime(&pods.oci_runtime, &run_dir, &mapping)?;
        let network = self.networks.host().await?;
        let user_namespaces = pods.user_namespaces && self.can_use_user_namespaces(&runtime);
        tracing::info!(
            runtime = %runtime.binary().display(),
            user_namespaces,
            "pod support ready"
        );
        Ok(PodHost {
            runtime,
            mapping,
            network,
            user_namespaces,
        })
    }

    /// Whether pods can have user namespaces here: the runtime is crun
    /// (runc 1.1 cannot `exec` into a container whose user namespace does
    /// not own the pod's IPC namespace: it joins the user namespace first)
    /// and the image store's file system and the kernel idmap layers under
    /// an overlay (a probe in the data directory). If not, pods run
    /// without, with a warning.
    fn can_use_user_namespaces(&self, runtime: &OciRuntime) -> bool {
        if runtime.kind() != stratum_runtime::oci::RuntimeKind::Crun {
            tracing::warn!(
                "pods run without user namespaces (container root is host root): {} cannot exec into them; use crun",
                runtime.binary().display()
            );
            return false;
        }
        let scratch = self.shared.config.data_dir.join(".idmap-probe");
        match stratum_runtime::idmap::probe(&scratch) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    "pods run without user namespaces (container root is host root): this kernel or file system cannot idmap image layers: {e}"
                );
                false
            }
        }
    }
}

/// The configured runtime; crun on a hybrid-cgroup host it refuses falls
/// back to runc when runc is installed (with a warning), as an operator
/// would rather have pods than an error.
fn open_runtime(
    binary: &std::path::Path,
    run_dir: &std::path::Path,
    mapping: &CgroupMapping,
) -> Result<OciRuntime> {
    let config = |binary: PathBuf| OciRuntimeConfig {
        state_root: run_dir.join(
            binary
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "runtime".into()),
        ),
        binary,
        ..OciRuntimeConfig::default()
    };
    let runtime = OciRuntime::new(&config(binary.to_path_buf()), mapping.view())?;
    match runtime.check_host() {
        Ok(()) => Ok(runtime),
        Err(e @ RuntimeError::HybridControllers { .. }) => {
            let runc = OciRuntime::new(&config(PathBuf::from("runc")), mapping.view())
                .map_err(|_| AgentError::from(e))?;
            tracing::warn!("crun refuses this host's hybrid cgroups; running pods with runc");
            Ok(runc)
        }
        Err(e) => Err(e.into()),
    }
}
