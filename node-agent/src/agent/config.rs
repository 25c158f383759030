//! The agent's configuration: where it keeps its state, where it listens,
//! what it holds back for the host, and which `vmm` it runs.

use std::net::SocketAddr;
use std::path::PathBuf;

use stratum_pool::{Resources, MIB};

/// Everything the agent is started with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// State database, VM run directories and disks, dev certificates.
    pub data_dir: PathBuf,
    /// The gRPC listen address.
    pub listen: SocketAddr,
    /// Serve plaintext instead of mTLS; allowed on loopback only.
    pub insecure: bool,
    /// CA, server and client certificates; default `<data_dir>/certs`.
    pub cert_dir: PathBuf,
    /// The `vmm` binary VMs run in.
    pub vmm_binary: PathBuf,
    /// Where VM kernels, initrds, base images and image imports may come
    /// from.
    pub artifacts: super::artifacts::ArtifactDirs,
    /// What the root pool leaves to the host itself.
    pub system_reserve: Resources,
    /// Name of the agent's cgroup subtree.
    pub cgroup_root: String,
    /// Image registries (`host[:port]`, as in references) reached over
    /// plain HTTP instead of HTTPS.
    pub insecure_registries: Vec<String>,
    /// Free space the data directory keeps: below it, what would fill the
    /// disk is refused.
    pub min_free_disk: super::disk::MinFree,
    /// OCI runtime and pod network.
    pub pods: super::pods::PodHostConfig,
}

/// Held back for the host's own processes by default: one core's worth of
/// CPU is too much on a 2-core test machine, so a quarter core and 512 MiB
/// (what the Debian host, the agent and sshd need with headroom).
pub const DEFAULT_SYSTEM_RESERVE: Resources = Resources::new(250, 512 * MIB);

impl AgentConfig {
    /// The run directory of VM `id` (API socket, console log, disks).
    pub fn vm_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("vms").join(id)
    }

    /// RESOURCE_EXHAUSTED when the data directory's disk has less free
    /// than it must keep: `what` would fill it.
    pub fn check_free_disk(&self, what: &str) -> super::errors::Result<()> {
        self.disk_floor().check(what)
    }

    /// The data directory and the free space it keeps.
    pub fn disk_floor(&self) -> super::disk::DiskFloor {
        super::disk::DiskFloor {
            dir: self.data_dir.clone(),
            min: self.min_free_disk,
        }
    }

    /// The directory of pod `id` (sandbox, container bundles, logs).
    pub fn pod_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("pods").join(id)
    }

    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("state.redb")
    }
}
