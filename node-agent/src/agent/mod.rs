//! The agent: the pool tree, the VMs and the store behind the gRPC
//! services, and the rules that keep them in step.
//!
//! State lives in memory behind one lock and in the store. A mutation
//! makes its slow host changes (cgroup directories, disk clones) with no
//! lock held where it can, then takes the write lock to decide with the
//! pool model, change memory and stage its records in the store's journal,
//! and settles the journal (waits for the group commit's fsync) after
//! releasing the lock; only then does it answer. A refused or failed step
//! undoes the earlier ones. Reads take the read lock and, before they
//! answer, settle whatever was staged when they looked (see
//! [`Agent::durable_view`]): nothing is shown that a crash could take back.
//!
//! - [`config`]: what the agent is started with.
//! - [`host`]: host capacity and information.
//! - [`images`]: the node's image store.
//! - [`pools`]: resource pool operations and their cgroups.
//! - [`vms`]: VM lifecycle over `vmm` processes.
//! - [`pods`]: pods on the host through the OCI runtime and pod network.
//! - [`inventory`]: the pool tree with every workload and live usage.
//! - [`errors`]: failures and their gRPC codes.
//! - `cgroups`: the cgroup tree kept equal to the records.

mod cgroups;
pub mod config;
pub mod errors;
pub mod host;
pub mod images;
pub mod inventory;
pub mod pods;
pub mod pools;
pub mod vms;

use std::collections::BTreeMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

use prost_types::Timestamp;
use tokio::sync::broadcast;

use self::config::AgentConfig;
use self::errors::Result;
use self::pods::PodEntry;
use self::vms::VmEntry;
use crate::state::{Change, Journal, Store, Ticket};
use stratum_api::proto;
use stratum_cgroup::{Hierarchy, HierarchyConfig};
use stratum_image::{ImageStore, PullOptions};
use stratum_pool::PoolTree;

/// Lifecycle events kept for slow watchers before they miss some.
const EVENT_BACKLOG: usize = 1024;
/// Ids reserved in the store at a time: one commit per block instead of
/// one per create.
const ID_BLOCK: u64 = 64;

pub struct Agent {
    config: AgentConfig,
    /// Where every record goes, in order, through group commits.
    journal: Journal,
    cgroups: Hierarchy,
    /// The node's image store (`<data_dir>/images`).
    images: ImageStore,
    state: RwLock<State>,
    /// Bumped every time the write lock is taken: a value read under the
    /// read lock names the state that was seen (see `api::pools`' cache).
    generation: std::sync::atomic::AtomicU64,
    events: broadcast::Sender<proto::VmEvent>,
    /// `vmm --version`, asked once at start.
    vmm_version: String,
    /// The next id to hand out and the end of the reserved block.
    ids: std::sync::Mutex<(u64, u64)>,
    /// The OCI runtime and pod network, set up on first use.
    pod_host: tokio::sync::OnceCell<std::sync::Arc<pods::PodHost>>,
    /// Every mounted cgroup hierarchy as an OCI runtime sees it, and the
    /// agent root's path there: read from the mounts once (see `cgroups`).
    cgroup_map: std::sync::OnceLock<(stratum_runtime::CgroupMapping, String)>,
}

/// What the lock guards.
pub struct State {
    tree: PoolTree,
    /// When each pool was created, kept for its record's rewrites.
    pool_created: BTreeMap<stratum_pool::PoolId, Timestamp>,
    vms: BTreeMap<String, VmEntry>,
    pods: BTreeMap<String, PodEntry>,
}

impl Agent {
    /// Opens the store, rebuilds the pool tree and its cgroups, and takes
    /// stock of the VMs: running ones are re-adopted, dead ones marked.
    pub fn start(config: AgentConfig) -> Result<std::sync::Arc<Agent>> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            errors::AgentError::Internal(format!("data dir {}: {e}", config.data_dir.display()))
        })?;
        let store = std::sync::Arc::new(Store::open(config.store_path())?);
        let snapshot = store.load()?;
        let journal = Journal::start(store)?;
        let cgroups = Hierarchy::detect_with(&HierarchyConfig {
            root_name: config.cgroup_root.clone(),
            ..HierarchyConfig::default()
        })?;
        let images = ImageStore::open_shared(&config.data_dir, journal.store().database())
            .map_err(|e| errors::AgentError::Internal(format!("image store: {e}")))?;
        let tree = PoolTree::new(host::capacity(), config.system_reserve)?;
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let config_vmm = config.vmm_binary.clone();
        let agent = std::sync::Arc::new(Agent {
            config,
            journal,
            cgroups,
            images,
            state: RwLock::new(State {
                tree,
                pool_created: BTreeMap::new(),
                vms: BTreeMap::new(),
                pods: BTreeMap::new(),
            }),
            events,
            generation: std::sync::atomic::AtomicU64::new(0),
            ids: std::sync::Mutex::new((snapshot.next_id, snapshot.next_id)),
            pod_host: tokio::sync::OnceCell::new(),
            cgroup_map: std::sync::OnceLock::new(),
            vmm_version: vmm_version(&config_vmm),
        });
        for q in &snapshot.quarantined {
            tracing::error!(
                table = q.table,
                key = %q.key,
                reason = %q.reason,
                "an unreadable record was moved to the store's quarantine table"
            );
        }
        agent.restore_pools(snapshot.pools)?;
        agent.restore_vms(snapshot.vms)?;
        agent.restore_pods(snapshot.pods)?;
        agent.reconcile_cgroups();
        Ok(agent)
    }

    /// A fresh id (for `pool-N`, `vm-N`, `pod-N`), never handed out before, even
    /// across crashes.
    fn next_id(&self) -> Result<u64> {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        if ids.0 == ids.1 {
            let end = ids.1.saturating_add(ID_BLOCK);
            self.journal.commit([Change::ReserveIdsBelow(end)])?;
            ids.1 = end;
        }
        let id = ids.0;
        ids.0 += 1;
        Ok(id)
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The node's image store.
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// How pulls reach registries: HTTPS except for the configured
    /// insecure registries.
    pub fn pull_options(&self) -> PullOptions {
        PullOptions {
            insecure_registries: self.config.insecure_registries.clone(),
            ..PullOptions::default()
        }
    }

    pub fn host_info(&self) -> proto::HostInfo {
        host::info(self.cgroups.version(), self.vmm_version.clone())
    }

    pub fn host_capacity(&self) -> proto::HostCapacity {
        self.read_state().tree.capacity().into()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<proto::VmEvent> {
        self.events.subscribe()
    }

    /// Queues `changes` for the next group commit. Called under the write
    /// lock, so the store sees changes in the order memory made them;
    /// settle the ticket once the lock is released.
    fn stage(&self, changes: impl IntoIterator<Item = Change>) -> Result<Ticket> {
        Ok(self.journal.stage(changes)?)
    }

    /// Waits until `ticket` is durable. Never called under the state lock.
    fn settle(&self, ticket: Ticket) -> Result<()> {
        Ok(self.journal.settle(ticket)?)
    }

    /// [`Agent::settle`] for async callers.
    async fn settled(&self, ticket: Ticket) -> Result<()> {
        Ok(self.journal.settled(ticket).await?)
    }

    /// Waits until everything staged so far is durable. A read calls it
    /// after looking and before answering: what it saw may include
    /// another call's change that is staged but not yet committed.
    pub async fn durable_view(&self) -> Result<()> {
        self.settled(self.journal.last_staged()).await
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock leaves the state as consistent as
        // the model's own all-or-nothing operations made it.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        let guard = self.state.write().unwrap_or_else(|p| p.into_inner());
        // Under the write lock, before any change: a reader that sees the
        // old value saw the old state.
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        guard
    }

    /// The state's generation now: unchanged means the state is.
    pub fn state_generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
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
