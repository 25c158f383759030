//! The agent's configuration: where it keeps its state, where it listens,
//! what it holds back for the host, and which `vmm` it runs.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
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
    /// The jail each vmm runs in; `None`: vmm runs as root in the agent's
    /// namespaces (debugging only).
    pub vm_jail: Option<VmJail>,
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
    /// Registries whose pulls go to a mirror (`--registry-mirror`).
    pub registry_mirrors: std::collections::BTreeMap<String, stratum_image::RegistryMirror>,
    /// Free space the data directory keeps: below it, what would fill the
    /// disk is refused.
    pub min_free_disk: super::disk::MinFree,
    /// The OCI runtime and pods' limits.
    pub pods: super::pods::PodHostConfig,
    /// The default network, isolation policies, host ports and services.
    pub networks: super::networks::NetworksConfig,
    /// When overcommitted VMs' balloons take memory back.
    pub memory_reclaim: super::reclaim::MemoryReclaim,
}

/// How VMs are jailed: the jailer and the uids (each the gid too) that
/// running VMs get, one each.
#[derive(Debug, Clone)]
pub struct VmJail {
    pub jailer: PathBuf,
    pub ids: RangeInclusive<u32>,
}

/// The default uid range of jailed VMs: above what systemd hands out to
/// containers (up to 1879048191) and below 2^31, 65536 of them.
pub const DEFAULT_VM_IDS: RangeInclusive<u32> = 1_900_000_000..=1_900_065_535;

/// Held back for the host's own processes by default: one core's worth of
/// CPU is too much on a 2-core test machine, so a quarter core and 512 MiB
/// (what the Debian host, the agent and sshd need with headroom).
pub const DEFAULT_SYSTEM_RESERVE: Resources = Resources::new(250, 512 * MIB);

impl AgentConfig {
    /// The directory of VM `id`: its disks and its run directory.
    pub fn vm_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("vms").join(id)
    }

    /// The run directory of VM `id` (API socket, console log, vmm's
    /// stderr): the jail's `/run`, owned by the jailed vmm's uid.
    pub fn vm_run_dir(&self, id: &str) -> PathBuf {
        self.vm_dir(id).join("run")
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
