//! Pods directly on the host: the PodService's rules over the container
//! runtime (`stratum_runtime`), the pod network (`stratum_net`) and the
//! image store, with each pod a workload of its resource pool exactly as a
//! VM is.
//!
//! A pod's life: RunPod checks the spec, leases the images, counts the pod
//! against its pool's quotas and admits its reservation, stores it
//! STARTING, makes its cgroup (`pod-N` below the pool's), its network
//! (address, netns, veth, port maps) and its sandbox (pinned IPC/UTS
//! namespaces joined to the network namespace, `/dev/shm`), stores it
//! RUNNING and then creates and starts its containers. Any failure before
//! RUNNING undoes every step and forgets the pod. StopPod stops the
//! containers and tears the sandbox, network and cgroup down (STOPPED);
//! RemovePod then drops its record, logs and leases.
//!
//! Locking: the manager's lock (a std `RwLock`, never held across an
//! await) guards the pods' records; the pool tree is the pool manager's,
//! reached through it with this lock held or not (never the other way
//! round). Each running pod has an async mutex over its containers' runs,
//! held across runtime calls, so operations on one pod are serialised
//! while pods proceed in parallel. Every status change is staged in the
//! store under the lock; a pod call's answer waits for it to be durable.
//!
//! - [`spec`]: checks and the process a container runs.
//! - [`security`]: security contexts and mounts at the agent's pod
//!   security level; who a container runs as.
//! - [`host`]: the runtime, cgroup mapping and network, set up on first use.
//! - [`containers`]: one container's runs: create, start, exit, restart.
//! - [`restore`]: taking the pods back after an agent restart.

mod containers;
pub mod events;
mod host;
mod logs;
mod restore;
pub mod security;
pub mod spec;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prost_types::Timestamp;

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::errors::{AgentError, Result};
use super::networks::NetworkManager;
use super::now;
use super::pools::{pool_id_or_root, PoolManager};
use super::shared::Shared;
use crate::records::{ContainerRuntime, CriSandbox, PodRecord};
use crate::state::{Change, Ticket};
use stratum_api::proto;
use stratum_api::proto::{ContainerState, PodState};
use stratum_cgroup::Cgroup;
use stratum_image::{ImageLease, ImageStore};
use stratum_pool::convert::limits_to_proto;
use stratum_pool::{PodSizing, PoolId, Workload, WorkloadId};
use stratum_runtime::{
    Container, HostShares, PidSharing, PodEtc, PodNetwork as SandboxNetwork, PodSandbox,
};

/// The cgroup leaf of a pod's init, below the pod's.
const POD_INIT_CGROUP: &str = "pod-init";

pub use self::containers::live_usage;
pub use self::host::{pod_uid_range, PodHost, PodHostConfig, DEFAULT_POD_PIDS_LIMIT};

/// StopPod and StopContainer without a grace period.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// The pod manager: every pod's record and live parts, behind its lock.
pub struct PodManager {
    shared: Arc<Shared>,
    /// Where each pod is a workload: placed, admitted and released there.
    pools: Arc<PoolManager>,
    /// The node's images, leased by the containers.
    images: ImageStore,
    state: RwLock<State>,
    /// The OCI runtime and pod network, set up on first use.
    pod_host: tokio::sync::OnceCell<Arc<PodHost>>,
    /// The host's networks, which pods attach to.
    networks: Arc<NetworkManager>,
    /// Container state changes, for those who follow them.
    events: events::ContainerEvents,
}

/// Where a pod's sandbox gets its network namespace (its attachment's, or
/// the host's) and what else it shares with the host.
fn sandbox_shape(host: &PodHost, id: &str, spec: &proto::PodSpec) -> SandboxShape {
    let network = if spec.host_network {
        SandboxNetwork::Existing(stratum_runtime::sandbox::host_namespace("net"))
    } else {
        SandboxNetwork::Existing(host.network.netns_path(id))
    };
    let pid = if spec.share_process_namespace {
        PidSharing::Pod
    } else {
        PidSharing::PerContainer
    };
    (network, security::host_shares(spec), pid)
}

/// A sandbox's network, what it shares with the host, whose PID
/// namespace its containers are in.
type SandboxShape = (SandboxNetwork, HostShares, PidSharing);

/// The network pod `spec` is on.
fn network_of(spec: &proto::PodSpec) -> &str {
    if spec.network.is_empty() {
        stratum_net::DEFAULT_NETWORK
    } else {
        &spec.network
    }
}

/// Where and how a new pod is admitted.
struct Admission<'a> {
    pool: &'a PoolId,
    sizing: &'a PodSizing,
    user_namespaces: bool,
    cri: Option<CriSandbox>,
}

/// What the lock guards.
struct State {
    pods: BTreeMap<String, PodEntry>,
}

/// A pod as the agent keeps it.
pub struct PodEntry {
    pub record: PodRecord,
    pub pool: PoolId,
    /// The sandbox and containers while the pod has them (RUNNING).
    live: Option<Arc<PodLive>>,
    /// One lease per container, on the image it was created from: held
    /// until the container (or the pod) is removed.
    leases: BTreeMap<String, ImageLease>,
}

impl PodEntry {
    pub fn state(&self) -> PodState {
        self.status().state()
    }

    fn status(&self) -> &proto::PodStatus {
        self.record.status.as_ref().unwrap_or(&EMPTY_STATUS)
    }

    fn spec(&self) -> &proto::PodSpec {
        self.record.spec.as_ref().unwrap_or(&EMPTY_SPEC)
    }

    pub fn name(&self) -> &str {
        &self.spec().name
    }

    /// A kubelet's sandbox (made through the CRI): the kubelet restarts
    /// its containers and stops it, never the agent.
    pub fn kubelet_managed(&self) -> bool {
        self.record.cri.is_some()
    }

    /// The cgroup path its record names (also before the pod is taken
    /// back after a restart), if any.
    pub fn recorded_cgroup_path(&self) -> Option<&str> {
        Some(self.record.cgroup_path.as_str()).filter(|p| !p.is_empty())
    }

    /// The pod's cgroup path below the agent's root, while it has one.
    pub fn cgroup_path(&self) -> Option<&str> {
        let path = self.record.cgroup_path.as_str();
        (self.live.is_some() && !path.is_empty()).then_some(path)
    }
}

static EMPTY_STATUS: proto::PodStatus = proto::PodStatus {
    state: 0,
    reason: String::new(),
    namespace: String::new(),
    ip: String::new(),
    reservation: None,
    limits: None,
    created_at: None,
    started_at: None,
    finished_at: None,
    containers: Vec::new(),
};

static EMPTY_SPEC: proto::PodSpec = proto::PodSpec {
    name: String::new(),
    network: String::new(),
    dns: None,
    sysctls: BTreeMap::new(),
    privileged: false,
    host_users: false,
    host_network: false,
    host_ipc: false,
    host_pid: false,
    share_process_namespace: false,
    pool_id: String::new(),
    namespace: String::new(),
    hostname: String::new(),
    labels: BTreeMap::new(),
    port_mappings: Vec::new(),
    runtime_class: 0,
    resources: None,
    restart_policy: 0,
    containers: Vec::new(),
};

/// What a running pod has on the host.
pub struct PodLive {
    sandbox: PodSandbox,
    cgroup: Cgroup,
    /// The current run of each container that has one, by name. Held
    /// across runtime calls: one operation per pod at a time.
    runs: tokio::sync::Mutex<BTreeMap<String, Arc<Container>>>,
}

impl PodManager {
    /// Takes the stored pods back at startup (see
    /// [`PodManager::restore_records`]; running ones are re-adopted by
    /// [`PodManager::resume`] once the async runtime runs).
    pub fn restore(
        shared: Arc<Shared>,
        pools: Arc<PoolManager>,
        networks: Arc<NetworkManager>,
        images: ImageStore,
        records: Vec<PodRecord>,
    ) -> Result<Self> {
        let manager = PodManager {
            shared,
            pools,
            networks,
            images,
            state: RwLock::new(State {
                pods: BTreeMap::new(),
            }),
            pod_host: tokio::sync::OnceCell::new(),
            events: events::ContainerEvents::default(),
        };
        manager.restore_records(records)?;
        Ok(manager)
    }

    /// Container state changes from now on.
    pub fn container_events(&self) -> tokio::sync::broadcast::Receiver<events::ContainerChange> {
        self.events.subscribe()
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The cgroup paths the pods' records name (for the reconcile at
    /// start).
    pub(super) fn cgroup_paths(&self) -> Vec<PathBuf> {
        self.read_state()
            .pods
            .values()
            .filter_map(|pod| pod.recorded_cgroup_path())
            .map(PathBuf::from)
            .collect()
    }

    /// Every pod, for the inventory (taken before the pools' lock).
    pub(crate) fn with_each<T>(&self, f: impl FnOnce(&BTreeMap<String, PodEntry>) -> T) -> T {
        f(&self.read_state().pods)
    }

    /// RunPod: see the module docs and pods.proto.
    pub async fn run_pod(self: &Arc<Self>, spec: proto::PodSpec) -> Result<proto::Pod> {
        self.run_pod_for(spec, None).await
    }

    /// RunPod for a PodService caller (`cri` none) or a CRI sandbox.
    pub(crate) async fn run_pod_for(
        self: &Arc<Self>,
        spec: proto::PodSpec,
        cri: Option<CriSandbox>,
    ) -> Result<proto::Pod> {
        let sizing = spec::check_pod(&spec)?;
        security::check_pod(&spec, self.shared.config.pods.security)?;
        security::sysctls(&spec, self.shared.config.pods.security)?;
        for container in &spec.containers {
            self.check_security(container, spec.privileged).await?;
        }
        self.shared.config.check_free_disk("pod run")?;
        let host = self.pod_host().await?;
        let leases = self.lease_images(&spec.containers)?;
        let pool = pool_id_or_root(&spec.pool_id);
        let id = format!("pod-{}", self.shared.next_id()?);
        let admission = Admission {
            pool: &pool,
            sizing: &sizing,
            user_namespaces: host.user_namespaces
                && !security::host_users(&spec, self.shared.config.pods.security),
            cri,
        };
        let namespace = self.admit_pod(&id, &spec, admission, leases)?;
        let live = match self.set_up_sandbox(&host, &id, &spec, &namespace).await {
            Ok(live) => live,
            Err(e) => {
                self.forget_pod(&id);
                return Err(e);
            }
        };
        let live = Arc::new(live);
        let ip = host
            .network
            .get(&id)
            .await
            .map(|a| a.ip.to_string())
            .unwrap_or_default();
        let cgroup_path = live.cgroup.path().to_string_lossy().into_owned();
        // Held until the containers are made: a StopPod or container call
        // that sees the pod RUNNING waits for them.
        let mut runs = live.runs.lock().await;
        let started = {
            let mut state = self.write_state();
            let stored = self.update_pod_locked(&mut state, &id, |record| {
                record.cgroup_path = cgroup_path;
                let status = record.status.get_or_insert_with(Default::default);
                status.state = PodState::Running as i32;
                status.ip = ip;
                status.started_at = Some(now());
            });
            if let (Ok(()), Some(entry)) = (&stored, state.pods.get_mut(&id)) {
                entry.live = Some(live.clone());
            }
            stored
        };
        if let Err(e) = started {
            drop(runs);
            self.tear_down(&host, &id, &live).await;
            self.forget_pod(&id);
            return Err(e);
        }
        for container in &spec.containers {
            self.new_run(&host, &id, &live, &mut runs, &container.name, true)
                .await;
        }
        drop(runs);
        self.get_pod(&id)
    }

    /// Leases the image of every container (NOT_FOUND for one not in the
    /// store); dropped again if the pod is not made.
    fn lease_images(
        &self,
        containers: &[proto::ContainerSpec],
    ) -> Result<BTreeMap<String, ImageLease>> {
        containers
            .iter()
            .map(|c| {
                let lease = self.images.acquire(&c.image).map_err(|e| {
                    AgentError::NotFound(format!(
                        "container {:?}: {e} (pull or import it first)",
                        c.name
                    ))
                })?;
                refuse_vm_image(&c.name, &lease)?;
                Ok((c.name.clone(), lease))
            })
            .collect()
    }

    /// Counts the pod against the quotas, admits its reservation and
    /// stores it STARTING. Returns its namespace.
    fn admit_pod(
        &self,
        id: &str,
        spec: &proto::PodSpec,
        admission: Admission<'_>,
        leases: BTreeMap<String, ImageLease>,
    ) -> Result<String> {
        let Admission {
            pool,
            sizing,
            user_namespaces,
            cri,
        } = admission;
        let mut state = self.write_state();
        // The namespace is the pool's: a pod naming another would join
        // that namespace's network policy (and, to a Supervisor, its
        // tenant).
        let namespace = self.pools.namespace_of(pool)?;
        if !spec.namespace.is_empty() && spec.namespace != namespace {
            return Err(AgentError::PermissionDenied(format!(
                "pod namespace {:?} is not its pool's: pods in {} are in namespace {namespace}",
                spec.namespace,
                pool.as_str()
            )));
        }
        if state
            .pods
            .values()
            .any(|p| p.name() == spec.name && p.status().namespace == namespace)
        {
            return Err(AgentError::AlreadyExists(format!(
                "a pod named {:?} already exists in namespace {namespace}",
                spec.name
            )));
        }
        let uid_base = if user_namespaces {
            free_uid_base(&state)?
        } else {
            0
        };
        let workload = WorkloadId::from(id);
        self.pools
            .add_admitted(Workload::pod(workload.clone(), pool.clone(), sizing)?)?;
        let created = Some(now());
        let record = PodRecord {
            id: id.to_string(),
            spec: Some(spec.clone()),
            status: Some(proto::PodStatus {
                state: PodState::Starting as i32,
                namespace: namespace.clone(),
                reservation: Some(sizing.requests.into()),
                limits: Some(limits_to_proto(&sizing.limits)),
                created_at: created,
                containers: spec
                    .containers
                    .iter()
                    .map(|c| proto::ContainerStatus {
                        name: c.name.clone(),
                        image_id: leases
                            .get(&c.name)
                            .map(|l| l.record().id.to_string())
                            .unwrap_or_default(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            containers: vec![ContainerRuntime::default(); spec.containers.len()],
            cgroup_path: String::new(),
            uid_base,
            cri,
        };
        if let Err(e) = self.stage_pod(Change::PutPod(Box::new(record.clone()))) {
            self.pools.remove_workload(id);
            return Err(e);
        }
        self.events.publish(None, Some(&record));
        state.pods.insert(
            id.to_string(),
            PodEntry {
                record,
                pool: pool.clone(),
                live: None,
                leases,
            },
        );
        Ok(namespace)
    }

    /// The pod's cgroup, network and sandbox; on failure whatever was made
    /// is removed.
    async fn set_up_sandbox(
        &self,
        host: &PodHost,
        id: &str,
        spec: &proto::PodSpec,
        namespace: &str,
    ) -> Result<PodLive> {
        let cgroup = {
            let state = self.read_state();
            let pool = state
                .pods
                .get(id)
                .map(|p| p.pool.clone())
                .ok_or_else(|| AgentError::NotFound(format!("pod {id}")))?;
            let pool_cgroup = self.pools.pool_cgroup(&pool)?;
            let cgroup = self.shared.cgroups.create_leaf(&pool_cgroup, id)?;
            let status = state.pods.get(id).map(|p| p.status().clone());
            let pids_max = Some(self.shared.config.pods.pids_limit);
            let limits = spec::pod_limits(&status.unwrap_or_default(), pids_max);
            if let Err(e) = cgroup.apply(&limits) {
                let _ = cgroup.remove();
                return Err(e.into());
            }
            cgroup
        };
        let mappings = spec::port_mappings(&spec.port_mappings)?;
        // A pod on the host's network has no attachment: no address, veth
        // or port maps of its own.
        let attachment = if spec.host_network {
            None
        } else {
            match host
                .network
                .attach_to(network_of(spec), id, namespace, &mappings)
                .await
            {
                Ok(a) => Some(a),
                Err(e) => {
                    let _ = host.network.detach(id).await;
                    self.remove_pod_cgroup(host, &cgroup);
                    return Err(e.into());
                }
            }
        };
        let hostname = if spec.hostname.is_empty() {
            spec.name.clone()
        } else {
            spec.hostname.clone()
        };
        let dir = self.shared.config.pod_dir(id).join("sandbox");
        let (network, shares, pid_sharing) = sandbox_shape(host, id, spec);
        let init = (pid_sharing == PidSharing::Pod)
            .then(|| self.pod_init_cgroup(&cgroup))
            .transpose();
        let init = match init {
            Ok(init) => init,
            Err(e) => {
                let _ = host.network.detach(id).await;
                self.remove_pod_cgroup(host, &cgroup);
                return Err(e);
            }
        };
        let init_program = self.shared.config.pods.pod_init.clone();
        let uid_base = self
            .read_state()
            .pods
            .get(id)
            .map_or(0, |p| p.record.uid_base);
        let dns = spec::pod_dns(spec)?;
        let sysctls = security::sysctls(spec, self.shared.config.pods.security)?;
        let ip = attachment.map(|a| IpAddr::V4(a.ip));
        let created = tokio::task::spawn_blocking(move || {
            let sandbox = PodSandbox::create(&dir, &hostname, network, shares, pid_sharing)?;
            // The pod's /dev/shm and /etc files belong to its containers'
            // root.
            let owner = (uid_base != 0).then_some(uid_base);
            let started = match &init {
                Some(leaf) => sandbox
                    .start_init(&init_program, |cmd| Ok(leaf.attach_command(cmd)?))
                    .map(drop),
                None => Ok(()),
            };
            let made = started
                .and_then(|()| owner.map_or(Ok(()), |id| sandbox.give_shm_to(id)))
                .and_then(|()| PodEtc::of(sandbox.dir()).write(&hostname, ip, dns.as_ref(), owner))
                .and_then(|()| {
                    let ns = sandbox.namespaces();
                    stratum_runtime::sysctls::apply(&ns.net, &ns.ipc, &sysctls)
                });
            if let Err(e) = made {
                let _ = sandbox.remove();
                return Err(e);
            }
            Ok(sandbox)
        })
        .await
        .map_err(|e| AgentError::Internal(format!("sandbox task: {e}")));
        match created {
            Ok(Ok(sandbox)) => Ok(PodLive {
                sandbox,
                cgroup,
                runs: tokio::sync::Mutex::new(BTreeMap::new()),
            }),
            Ok(Err(e)) => {
                let _ = host.network.detach(id).await;
                self.remove_pod_cgroup(host, &cgroup);
                Err(e.into())
            }
            Err(e) => {
                let _ = host.network.detach(id).await;
                self.remove_pod_cgroup(host, &cgroup);
                Err(e)
            }
        }
    }

    /// Removes a pod that never reached RUNNING: its workload, record,
    /// leases and directory.
    fn forget_pod(&self, id: &str) {
        let mut state = self.write_state();
        self.pools.remove_workload(id);
        if let Err(e) = self.stage_pod(Change::DeletePod(id.to_string())) {
            tracing::error!(pod = %id, "cannot delete the record of a pod that failed to start: {e}");
        }
        if let Some(gone) = state.pods.remove(id) {
            self.events.publish(Some(&gone.record), None);
        }
        drop(state);
        let _ = std::fs::remove_dir_all(self.shared.config.pod_dir(id));
    }

    /// StopPod: see pods.proto.
    pub async fn stop_pod(self: &Arc<Self>, id: &str, grace: Duration) -> Result<proto::Pod> {
        let live = {
            let state = self.read_state();
            let entry = pod_entry(&state, id)?;
            match (entry.state(), &entry.live) {
                (PodState::Running, Some(live)) => live.clone(),
                (PodState::Starting, _) => {
                    return Err(AgentError::FailedPrecondition(format!(
                        "pod {id} is starting"
                    )))
                }
                _ => return Ok(pod_to_proto(entry)),
            }
        };
        let host = self.pod_host().await?;
        self.update_pod(id, |r| set_pod_state(r, PodState::Stopping, ""))?;
        self.stop_sandbox(
            &host,
            id,
            &live,
            grace,
            PodState::Stopped,
            "stopped on request",
        )
        .await?;
        self.get_pod(id)
    }

    /// Stops every container, tears the sandbox, network and cgroup down,
    /// releases the reservation and stores `end` with `reason`.
    async fn stop_sandbox(
        self: &Arc<Self>,
        host: &PodHost,
        id: &str,
        live: &Arc<PodLive>,
        grace: Duration,
        end: PodState,
        reason: &str,
    ) -> Result<()> {
        {
            let mut runs = live.runs.lock().await;
            let names: Vec<String> = runs.keys().cloned().collect();
            let stops = names.iter().filter_map(|name| {
                let run = runs.get(name)?.clone();
                Some(async move {
                    let report = run.stop(grace).await;
                    (name.clone(), run, report)
                })
            });
            let stopped = futures_util::future::join_all(stops).await;
            for (name, run, report) in stopped {
                match report {
                    Ok(report) => self.record_exit(id, &name, &run, &report, true),
                    Err(e) => tracing::warn!(pod = %id, container = %name, "stop: {e}"),
                }
            }
            for name in names {
                if let Some(run) = runs.remove(&name) {
                    self.remove_run(host, id, &name, run).await;
                }
            }
        }
        self.tear_down(host, id, live).await;
        let mut state = self.write_state();
        self.pools.release(id);
        let stored = self.update_pod_locked(&mut state, id, |record| {
            set_pod_state(record, end, reason);
            let status = record.status.get_or_insert_with(Default::default);
            status.ip.clear();
            status.finished_at = Some(now());
            for c in &mut status.containers {
                c.restart_at = None;
            }
            record.cgroup_path.clear();
        });
        if let Some(entry) = state.pods.get_mut(id) {
            entry.live = None;
        }
        stored
    }

    /// Sandbox, network and cgroup of a pod whose containers are gone.
    async fn tear_down(&self, host: &PodHost, id: &str, live: &PodLive) {
        let sandbox = live.sandbox.clone();
        let removed = tokio::task::spawn_blocking(move || sandbox.remove()).await;
        if let Ok(Err(e)) = removed {
            tracing::warn!(pod = %id, "removing the sandbox: {e}");
        }
        if let Err(e) = host.network.detach(id).await {
            tracing::warn!(pod = %id, "detaching from the pod network: {e}");
        }
        self.remove_pod_cgroup(host, &live.cgroup);
    }

    /// The leaf of the pod's init, below the pod's cgroup (on v2 a cgroup
    /// with children holds no process of its own).
    fn pod_init_cgroup(&self, pod: &Cgroup) -> Result<Cgroup> {
        Ok(self.shared.cgroups.create_leaf(pod, POD_INIT_CGROUP)?)
    }

    fn remove_pod_cgroup(&self, host: &PodHost, cgroup: &Cgroup) {
        let runtime_path = host.mapping.runtime_path(cgroup).ok();
        // The init's leaf (a pod sharing its PID namespace) goes first: a
        // cgroup with a child is not removed.
        let init_leaf = self
            .shared
            .cgroups
            .open(&cgroup.path().join(POD_INIT_CGROUP))
            .ok();
        if let Err(e) = cgroup
            .kill_all(Duration::from_secs(5))
            .and_then(|()| init_leaf.map_or(Ok(()), |leaf| leaf.remove()))
            .and_then(|()| cgroup.remove())
        {
            tracing::warn!(cgroup = %cgroup.path().display(), "removing a pod cgroup: {e}");
        }
        // Hierarchies the cgroup layer does not manage (the runtime made
        // the pod's directory there for its containers).
        if let Some(path) = runtime_path {
            if let Err(e) = host.mapping.prune(&path) {
                tracing::warn!(cgroup = %path, "pruning a pod cgroup: {e}");
            }
        }
    }

    /// RemovePod: see pods.proto.
    pub fn remove_pod(&self, id: &str) -> Result<()> {
        let mut state = self.write_state();
        let entry = pod_entry(&state, id)?;
        if !matches!(entry.state(), PodState::Stopped | PodState::Failed) {
            return Err(AgentError::FailedPrecondition(format!(
                "pod {id} is {}; stop it first",
                pod_state_name(entry.state())
            )));
        }
        self.stage_pod(Change::DeletePod(id.to_string()))?;
        self.pools.remove_workload(id);
        if let Some(gone) = state.pods.remove(id) {
            self.events.publish(Some(&gone.record), None);
        }
        drop(state);
        let dir = self.shared.config.pod_dir(id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(pod = %id, "removing {}: {e}", dir.display());
            }
        }
        Ok(())
    }

    pub fn get_pod(&self, id: &str) -> Result<proto::Pod> {
        let state = self.read_state();
        Ok(pod_to_proto(pod_entry(&state, id)?))
    }

    /// ListPods: by namespace, then name.
    pub fn list_pods(&self, filter: &proto::ListPodsRequest) -> Vec<proto::Pod> {
        let state = self.read_state();
        let mut pods: Vec<proto::Pod> = state
            .pods
            .values()
            .filter(|p| filter.pool_id.is_empty() || p.pool.as_str() == filter.pool_id)
            .filter(|p| {
                filter
                    .label_selector
                    .iter()
                    .all(|(k, v)| p.spec().labels.get(k) == Some(v))
            })
            .map(pod_to_proto)
            .collect();
        pods.sort_by(|a, b| {
            let key = |p: &proto::Pod| {
                (
                    p.status
                        .as_ref()
                        .map(|s| s.namespace.clone())
                        .unwrap_or_default(),
                    p.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
                )
            };
            key(a).cmp(&key(b))
        });
        pods
    }

    /// Applies `change` to a copy of the pod's record, stages it, then
    /// keeps it: memory never holds what the store refused.
    fn update_pod(&self, id: &str, change: impl FnOnce(&mut PodRecord)) -> Result<()> {
        let mut state = self.write_state();
        self.update_pod_locked(&mut state, id, change)
    }

    fn update_pod_locked(
        &self,
        state: &mut State,
        id: &str,
        change: impl FnOnce(&mut PodRecord),
    ) -> Result<()> {
        let entry = state
            .pods
            .get_mut(id)
            .ok_or_else(|| AgentError::NotFound(format!("no pod {id}")))?;
        let mut record = entry.record.clone();
        change(&mut record);
        self.stage_pod(Change::PutPod(Box::new(record.clone())))?;
        self.events.publish(Some(&entry.record), Some(&record));
        entry.record = record;
        Ok(())
    }

    /// Stages a pod record change. Pod calls run on the async side and
    /// change records at many points (a container's every start and
    /// exit), so they do not wait for each one: the API answers of pod
    /// calls wait for everything staged before them (`api::durable`),
    /// which covers these.
    fn stage_pod(&self, change: Change) -> Result<()> {
        let _ticket: Ticket = self.shared.stage([change])?;
        Ok(())
    }

    fn set_live(&self, id: &str, live: Option<Arc<PodLive>>) {
        if let Some(entry) = self.write_state().pods.get_mut(id) {
            entry.live = live;
        }
    }

    /// The running pod's live parts, or FAILED_PRECONDITION.
    fn running_pod(&self, id: &str) -> Result<Arc<PodLive>> {
        let state = self.read_state();
        let entry = pod_entry(&state, id)?;
        match (&entry.live, entry.state()) {
            (Some(live), PodState::Running) => Ok(live.clone()),
            (_, s) => Err(AgentError::FailedPrecondition(format!(
                "pod {id} is {}, not running",
                pod_state_name(s)
            ))),
        }
    }

    /// Where container `name` of `record` logs: where the CRI asked, or
    /// the pod's own log directory.
    fn log_path_of(&self, record: &PodRecord, name: &str) -> PathBuf {
        containers::cri_log_path(record, name)
            .unwrap_or_else(|| self.pod_log_path(&record.id, name))
    }

    /// The pod's directory: sandbox, container bundles, logs.
    pub fn pod_log_path(&self, id: &str, container: &str) -> PathBuf {
        self.shared
            .config
            .pod_dir(id)
            .join("logs")
            .join(format!("{container}.log"))
    }
}

/// The lowest pod user namespace range no stored pod holds.
fn free_uid_base(state: &State) -> Result<u32> {
    let used: std::collections::BTreeSet<u32> =
        state.pods.values().map(|p| p.record.uid_base).collect();
    (0..host::POD_UID_SLOTS)
        .map(|slot| host::POD_UID_BASE + slot * stratum_runtime::idmap::IDS_PER_POD)
        .find(|base| !used.contains(base))
        .ok_or_else(|| {
            AgentError::ResourceExhausted(format!(
                "all {} pod user namespace ranges are taken",
                host::POD_UID_SLOTS
            ))
        })
}

fn pod_entry<'a>(state: &'a State, id: &str) -> Result<&'a PodEntry> {
    state
        .pods
        .get(id)
        .ok_or_else(|| AgentError::NotFound(format!("no pod {id}")))
}

fn set_pod_state(record: &mut PodRecord, state: PodState, reason: &str) {
    let status = record.status.get_or_insert_with(Default::default);
    status.state = state as i32;
    status.reason = reason.to_string();
}

pub fn pod_to_proto(entry: &PodEntry) -> proto::Pod {
    proto::Pod {
        id: entry.record.id.clone(),
        spec: entry.record.spec.clone(),
        status: entry.record.status.clone(),
    }
}

pub fn pod_state_name(state: PodState) -> &'static str {
    match state {
        PodState::Unspecified => "unknown",
        PodState::Starting => "starting",
        PodState::Running => "running",
        PodState::Stopping => "stopping",
        PodState::Stopped => "stopped",
        PodState::Failed => "failed",
    }
}

pub fn container_state_name(state: ContainerState) -> &'static str {
    match state {
        ContainerState::Unspecified => "unknown",
        ContainerState::Created => "created",
        ContainerState::Running => "running",
        ContainerState::Exited => "exited",
        ContainerState::OomKilled => "oom-killed",
        ContainerState::Failed => "failed",
    }
}

/// A timestamp `after` from now.
fn timestamp_in(after: Duration) -> Timestamp {
    Timestamp::from(std::time::SystemTime::now() + after)
}

/// A VM image's layers are a kernel and a disk, not a root filesystem.
pub(super) fn refuse_vm_image(container: &str, lease: &ImageLease) -> Result<()> {
    if lease.record().is_vm_image() {
        return Err(AgentError::InvalidArgument(format!(
            "container {container:?}: {} is a VM image; a container runs a container image",
            lease.record().display_name()
        )));
    }
    Ok(())
}
