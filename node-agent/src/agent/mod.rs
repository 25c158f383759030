//! The agent: one manager per resource, each owning its state and its
//! lock, over what they share (configuration, the store's journal, the
//! cgroup hierarchy, the id sequence: [`shared`]).
//!
//! - [`pools`]: the [`PoolManager`]: the pool tree, admission control and
//!   the pools' cgroups. VMs and pods are workloads in its tree, added,
//!   admitted and released through it.
//! - [`vms`]: the [`VmManager`]: VM lifecycle over `vmm` processes.
//! - [`pods`]: the [`PodManager`]: pods on the host through the OCI
//!   runtime and pod network.
//! - [`images`]: the [`ImageManager`]: the node's image store.
//! - [`networks`]: the [`NetworkManager`]: the host's networks, which VM
//!   NICs and pods are on.
//! - [`inventory`]: the pool tree with every workload and live usage,
//!   read across the managers.
//! - [`reclaim`]: the memory reclaim, which inflates overcommitted VMs'
//!   balloons when a pool nears its memory limit, read across the VMs and
//!   the pools.
//! - `cgroups`: the cgroup tree kept equal to the records.
//! - [`config`], [`host`], [`errors`]: what the agent is started with, the
//!   host's capacity and information, failures and their gRPC codes.
//!
//! A mutation makes its slow host changes (cgroup directories, disk
//! clones) with no lock held where it can, then takes its manager's write
//! lock to decide (with the pool model, through the pool manager), change
//! memory and stage its records in the store's journal, and settles the
//! journal (waits for the group commit's fsync) after releasing the lock;
//! only then does it answer. Reads take a read lock and, before they
//! answer, settle whatever was staged when they looked (see
//! [`Agent::durable_view`]): nothing is shown that a crash could take back.
//!
//! Locks are taken in one order: a VM's or a pod's, then the pools'. The
//! pool manager never calls the others; what spans managers (a pool
//! update re-applying its VMs' limits, the inventory, restart) is the
//! [`Agent`]'s.

pub mod artifacts;
mod cgroups;
pub mod config;
pub mod disk;
pub mod errors;
pub mod guest;
pub mod host;
pub mod image_owners;
pub mod images;
pub mod inventory;
pub mod networks;
pub mod pods;
pub mod pools;
pub mod reclaim;
pub mod roles;
pub mod shared;
pub mod vms;

use std::sync::Arc;
use std::time::SystemTime;

use prost_types::Timestamp;

use self::config::AgentConfig;
use self::errors::Result;
use self::image_owners::ImageOwners;
pub use self::images::ImageManager;
pub use self::networks::NetworkManager;
pub use self::pods::PodManager;
pub use self::pools::PoolManager;
use self::shared::Shared;
pub use self::vms::VmManager;
use crate::state::{Journal, Store};
use stratum_api::proto;
use stratum_cgroup::{Hierarchy, HierarchyConfig};
use stratum_image::ImageStore;

pub struct Agent {
    shared: Arc<Shared>,
    pools: Arc<PoolManager>,
    networks: Arc<NetworkManager>,
    vms: Arc<VmManager>,
    pods: Arc<PodManager>,
    images: ImageManager,
}

impl Agent {
    /// Opens the store, rebuilds the pool tree and its cgroups, and takes
    /// stock of the VMs and pods: running ones are re-adopted (pods once
    /// the async runtime runs, [`PodManager::resume`]), dead ones marked.
    pub fn start(config: AgentConfig) -> Result<Arc<Agent>> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            errors::AgentError::Internal(format!("data dir {}: {e}", config.data_dir.display()))
        })?;
        let store = Arc::new(Store::open(config.store_path())?);
        let snapshot = store.load()?;
        for q in &snapshot.quarantined {
            tracing::error!(
                table = q.table,
                key = %q.key,
                reason = %q.reason,
                "an unreadable record was moved to the store's quarantine table"
            );
        }
        let journal = Journal::start(store)?;
        let cgroups = Hierarchy::detect_with(&HierarchyConfig {
            root_name: config.cgroup_root.clone(),
            ..HierarchyConfig::default()
        })?;
        let image_store = ImageStore::open_shared(&config.data_dir, journal.store().database())
            .map_err(|e| errors::AgentError::Internal(format!("image store: {e}")))?;
        let vmm_version = vmm_version(&config.vmm_binary);
        let shared = Arc::new(Shared::new(config, journal, cgroups, snapshot.next_id));
        let images = ImageManager::new(
            image_store.clone(),
            stratum_image::PullOptions {
                insecure_registries: shared.config.insecure_registries.clone(),
                mirrors: shared.config.registry_mirrors.clone(),
                ..Default::default()
            },
            shared.config.artifacts.clone(),
            shared.config.disk_floor(),
            ImageOwners::restore(Arc::clone(&shared), snapshot.image_owners),
        );
        let pools = Arc::new(PoolManager::restore(
            Arc::clone(&shared),
            host::capacity(),
            snapshot.pools,
        )?);
        let networks = Arc::new(NetworkManager::new(Arc::clone(&shared)));
        let vms = Arc::new(VmManager::restore(
            Arc::clone(&shared),
            Arc::clone(&pools),
            Arc::clone(&networks),
            vmm_version,
            image_store.clone(),
            snapshot.vms,
            snapshot.snapshots,
        )?);
        let pods = Arc::new(PodManager::restore(
            Arc::clone(&shared),
            Arc::clone(&pools),
            Arc::clone(&networks),
            image_store,
            snapshot.pods,
        )?);
        let agent = Arc::new(Agent {
            shared,
            pools,
            networks,
            vms,
            pods,
            images,
        });
        agent.reconcile_cgroups();
        Ok(agent)
    }

    /// What needs the async runtime after a start: the re-adopted vmms'
    /// exits watched, the stored pods taken back, the networks brought in
    /// line with both.
    pub async fn resume(&self) {
        Arc::clone(&self.vms).watch_running();
        self.pods.resume().await;
        self.reconcile_networks().await;
    }

    /// Reconciles the networks with the pods that run, the VMs that exist
    /// (their NICs' addresses stay) and those that run (their TAPs stay),
    /// and repairs live pods' networks. Only when the networks were ever
    /// used: an agent without them makes no bridge.
    async fn reconcile_networks(&self) {
        let pods = self.pods.live_pod_ids();
        let (reserved, plugged) = self.vms.nic_owners();
        if pods.is_empty() && reserved.is_empty() && !self.networks.has_stored_networks() {
            return;
        }
        let live = stratum_net::Live {
            pods: pods.iter().map(String::as_str).collect(),
            reserved: reserved.iter().map(String::as_str).collect(),
            plugged: plugged.iter().map(String::as_str).collect(),
        };
        match self.networks.reconcile(&live).await {
            Ok(broken) => self.pods.reattach(&broken).await,
            Err(e) => tracing::error!("reconciling the networks: {e}"),
        }
    }

    pub fn config(&self) -> &AgentConfig {
        &self.shared.config
    }

    pub fn pools(&self) -> &Arc<PoolManager> {
        &self.pools
    }

    pub fn vms(&self) -> &Arc<VmManager> {
        &self.vms
    }

    pub fn pods(&self) -> &Arc<PodManager> {
        &self.pods
    }

    pub fn images(&self) -> &ImageManager {
        &self.images
    }

    pub fn networks(&self) -> &Arc<NetworkManager> {
        &self.networks
    }

    pub fn host_info(&self) -> proto::HostInfo {
        host::info(self.shared.cgroups.version(), self.vms.vmm_version())
    }

    pub fn host_capacity(&self) -> proto::HostCapacity {
        self.pools.capacity()
    }

    /// UpdateResourcePool: the pool manager changes the pool and its
    /// subtree's cgroups; the VMs running below it get their limits
    /// written again (on cgroup v1 a child's stored CPU quota was capped
    /// at its parent's).
    pub fn update_pool(
        &self,
        id: &str,
        spec: &proto::ResourcePoolSpec,
    ) -> Result<proto::ResourcePool> {
        let (pool, subtree) = self.pools.update(id, spec)?;
        self.vms.apply_limits_in(&subtree);
        Ok(pool)
    }

    /// Waits until everything staged so far is durable. A read calls it
    /// after looking and before answering: what it saw may include
    /// another call's change that is staged but not yet committed.
    pub async fn durable_view(&self) -> Result<()> {
        self.shared.durable_view().await
    }

    /// Waits until the store fails a commit, and says why: the agent must
    /// restart then (see `state::journal`).
    pub async fn store_failed(&self) -> String {
        self.shared.store_failed().await
    }
}

/// `vmm --version`, or why it could not be asked.
fn vmm_version(binary: &std::path::Path) -> String {
    match std::process::Command::new(binary).arg("--version").output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Ok(out) => format!("unknown ({} exited {})", binary.display(), out.status),
        Err(e) => format!("unknown ({}: {e})", binary.display()),
    }
}

pub fn now() -> Timestamp {
    Timestamp::from(SystemTime::now())
}
