//! A pod's containers: each container has at most one *run* at a time —
//! one OCI runtime container with its own id (`<pod>-<name>-<n>`), leaf
//! cgroup and overlay root — and a restart is a fresh run, as the kubelet
//! makes a fresh CRI container. Exits are seen by a watcher task per run
//! and recorded once (a stop records the exit itself; the watcher then
//! finds it recorded); the restart policy then schedules the next run, or,
//! when every container of a running pod has ended for good, the pod
//! stops on its own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::host::PodHost;
use super::security;
use super::PodManager;
use super::{
    container_state_name, pod_entry, spec, timestamp_in, PodEntry, PodLive, DEFAULT_GRACE,
};
use crate::agent::errors::{AgentError, Result};
use crate::agent::now;
use crate::records::{ContainerRuntime, CriContainer, PodRecord};
use stratum_api::proto;
use stratum_api::proto::{ContainerState, PodState};
use stratum_cgroup::CgroupUsage;
use stratum_runtime::{
    decide, Container, ContainerConfig, ExitReason, ExitReport, LogFollower, PodContext,
    RestartDecision, RootfsSource,
};

/// ExecSync output kept per stream (gRPC messages are limited to 4 MiB).
/// How long a port forward's connection inside a pod may take.
const PORT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const EXEC_OUTPUT_MAX: usize = 1 << 20;
/// ExecSync's timeout when the request gives none.
const EXEC_DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

type Runs = BTreeMap<String, Arc<Container>>;

/// Where container `name` is in the pod's lists.
fn index_of(record: &PodRecord, name: &str) -> Option<usize> {
    record
        .spec
        .as_ref()?
        .containers
        .iter()
        .position(|c| c.name == name)
}

/// The log file the CRI asked for container `name`, if it is a CRI
/// container that asked for one.
pub(super) fn cri_log_path(record: &PodRecord, name: &str) -> Option<std::path::PathBuf> {
    let i = index_of(record, name)?;
    let cri = record.containers.get(i)?.cri.as_ref()?;
    (!cri.log_path.is_empty()).then(|| std::path::PathBuf::from(&cri.log_path))
}

/// The CRI container id of container `name`, if it is a CRI container.
fn cri_id(record: &PodRecord, name: &str) -> Option<String> {
    let i = index_of(record, name)?;
    Some(record.containers.get(i)?.cri.as_ref()?.id.clone())
}

fn container_mut<'a>(
    record: &'a mut PodRecord,
    name: &str,
) -> Option<(&'a mut proto::ContainerStatus, &'a mut ContainerRuntime)> {
    let i = index_of(record, name)?;
    let status = record.status.as_mut()?.containers.get_mut(i)?;
    let runtime = record.containers.get_mut(i)?;
    Some((status, runtime))
}

fn is_ended(state: i32) -> bool {
    matches!(
        ContainerState::try_from(state),
        Ok(ContainerState::Exited | ContainerState::OomKilled | ContainerState::Failed)
    )
}

/// Container `name`'s status in `entry` (NOT_FOUND when it has none).
fn status_of<'a>(
    entry: &'a PodEntry,
    pod_id: &str,
    name: &str,
) -> Result<&'a proto::ContainerStatus> {
    index_of(&entry.record, name)
        .and_then(|i| entry.status().containers.get(i))
        .ok_or_else(|| not_found(pod_id, name))
}

/// Container `name`'s state in `entry`.
fn state_of(entry: &PodEntry, pod_id: &str, name: &str) -> Result<ContainerState> {
    Ok(
        ContainerState::try_from(status_of(entry, pod_id, name)?.state)
            .unwrap_or(ContainerState::Unspecified),
    )
}

fn not_found(pod: &str, name: &str) -> AgentError {
    AgentError::NotFound(format!("pod {pod} has no container {name:?}"))
}

/// The stdio a container was made with, which an attachment follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachedStdio {
    /// Its stdin is open to attached clients.
    pub stdin: bool,
    /// The end of an attached client's input closes its stdin (only
    /// without a terminal, as containerd does).
    pub stdin_once: bool,
    /// It runs on a terminal.
    pub tty: bool,
}

/// What confining a prepared run needs: the container's spec and its
/// image's `USER`.
struct Unconfined {
    spec: proto::ContainerSpec,
    image_user: String,
}

/// An OOM score adjustment the runtime can set: one below the agent's own
/// needs `CAP_SYS_RESOURCE`, and without it (some hosts' root lacks it) the
/// agent's own is as low as a container goes — what containerd's
/// `restrict_oom_score_adj` does, rather than a container that cannot
/// start.
fn lowest_oom_score_adj(asked: i32) -> i32 {
    static OWN: std::sync::OnceLock<Option<i32>> = std::sync::OnceLock::new();
    let own = *OWN.get_or_init(|| {
        let can_lower = stratum_runtime::confinement::current_capabilities()
            .contains(&stratum_runtime::confinement::Capability::SysResource);
        if can_lower {
            return None;
        }
        std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|s| s.trim().parse().ok())
    });
    match own {
        Some(own) if asked < own => own,
        _ => asked,
    }
}

/// How long ReopenContainerLog waits for the writer (which looks every
/// `log_writer::FOLLOW_INTERVAL`).
const LOG_REOPEN_TIMEOUT: Duration = Duration::from_secs(5);

impl PodManager {
    /// Creates a new run of container `name` (and starts it with `start`).
    /// Failures do not fail the caller: the container is FAILED with the
    /// reason, and the restart policy applies.
    pub(super) async fn new_run(
        self: &Arc<Self>,
        host: &Arc<PodHost>,
        pod_id: &str,
        live: &Arc<PodLive>,
        runs: &mut Runs,
        name: &str,
        start: bool,
    ) {
        let (mut config, dir, prepared) = match self.prepare_run(pod_id, name) {
            Ok(prepared) => prepared,
            Err(e) => return self.run_failed(pod_id, name, &e.to_string()),
        };
        if let Err(e) = self.confine(&mut config, prepared).await {
            return self.run_failed(pod_id, name, &e.to_string());
        }
        let context = PodContext {
            hierarchy: &self.shared.cgroups,
            pod_cgroup: &live.cgroup,
            sandbox: &live.sandbox,
            mapping: &host.mapping,
            log_writer: &self.shared.config.pods.log_writer,
            log_rotation: self.shared.config.pods.log_rotation,
        };
        let run = match Container::create(&host.runtime, context, &dir, &config).await {
            Ok(run) => Arc::new(run),
            Err(e) => return self.run_failed(pod_id, name, &e.to_string()),
        };
        let created = self.update_pod(pod_id, |record| {
            if let Some((status, _)) = container_mut(record, name) {
                status.state = ContainerState::Created as i32;
                status.created_at = Some(now());
            }
        });
        if let Err(e) = created {
            let _ = run.remove(&host.runtime).await;
            return self.run_failed(pod_id, name, &e.to_string());
        }
        runs.insert(name.to_string(), run.clone());
        if start {
            self.start_run(host, pod_id, runs, name, run).await;
        }
    }

    /// The run's configuration and bundle directory, not yet confined;
    /// stores the new run's id first, so the record names whatever a crash
    /// leaves behind.
    fn prepare_run(
        &self,
        pod_id: &str,
        name: &str,
    ) -> Result<(ContainerConfig, std::path::PathBuf, Unconfined)> {
        let mut state = self.write_state();
        let entry = pod_entry(&state, pod_id)?;
        let i = index_of(&entry.record, name).ok_or_else(|| not_found(pod_id, name))?;
        let container = entry
            .spec()
            .containers
            .get(i)
            .cloned()
            .ok_or_else(|| not_found(pod_id, name))?;
        let lease = entry
            .leases
            .get(name)
            .ok_or_else(|| AgentError::Internal(format!("container {name:?} holds no image")))?;
        let process = spec::process(&container, lease.record())?;
        let image_user = spec::image_user(lease.record());
        let lowerdirs = lease.lowerdirs().to_vec();
        let run_number = entry.record.containers.get(i).map_or(0, |c| c.runs);
        let idmap = match entry.record.uid_base {
            0 => None,
            base => Some(
                stratum_runtime::IdMap::pod(base)
                    .map_err(|e| AgentError::Internal(format!("pod {pod_id}: {e}")))?,
            ),
        };
        // A CRI container has one run, which the runtime knows by the CRI
        // container id (as containerd's do).
        let id =
            cri_id(&entry.record, name).unwrap_or_else(|| format!("{pod_id}-{name}-{run_number}"));
        let dir = self
            .shared
            .config
            .pod_dir(pod_id)
            .join("containers")
            .join(&id);
        let config = ContainerConfig {
            id: id.clone(),
            process,
            rootfs: RootfsSource::Layers(lowerdirs),
            readonly_rootfs: false,
            limits: spec::container_limits(&container),
            log_path: self.log_path_of(&entry.record, name),
            idmap,
            confinement: Default::default(),
            bind_mounts: Vec::new(),
            stdin: container.stdin,
        };
        self.update_pod_locked(&mut state, pod_id, |record| {
            if let Some((status, runtime)) = container_mut(record, name) {
                runtime.runs = run_number.saturating_add(1);
                runtime.stop_requested = false;
                status.id = id;
                status.restart_at = None;
                status.pid = 0;
            }
        })?;
        Ok((
            config,
            dir,
            Unconfined {
                spec: container,
                image_user,
            },
        ))
    }

    /// Refuses a container whose security context or mounts the agent's
    /// pod security level does not allow, before anything is made (the
    /// host paths are checked again at each run).
    pub(super) async fn check_security(
        &self,
        container: &proto::ContainerSpec,
        pod_privileged: bool,
    ) -> Result<()> {
        let pods = &self.shared.config.pods;
        security::check(container, pods.security, pod_privileged)?;
        security::seccomp_profile(container, pods.security, &pods.seccomp_root).await?;
        security::resolve_mounts(container, pods.security, &pods.mount_roots)
            .await
            .map(drop)
    }

    /// Confines a prepared run as its security context says: capabilities,
    /// seccomp, the root's mode, its bind mounts (resolved and authorized)
    /// and who it runs as (resolved in the image's files). Reads the host
    /// and the image: called with no lock held.
    async fn confine(&self, config: &mut ContainerConfig, run: Unconfined) -> Result<()> {
        let pods = &self.shared.config.pods;
        config.confinement = security::confinement(&run.spec, pods.security);
        config.confinement.seccomp_profile =
            security::seccomp_profile(&run.spec, pods.security, &pods.seccomp_root).await?;
        config.readonly_rootfs = security::readonly_rootfs(&run.spec);
        config.bind_mounts =
            security::resolve_mounts(&run.spec, pods.security, &pods.mount_roots).await?;
        let lowerdirs = match &config.rootfs {
            RootfsSource::Layers(dirs) => dirs.clone(),
            RootfsSource::Directory(_) => Vec::new(),
        };
        let user_namespace = config.idmap.is_some();
        let identity = tokio::task::spawn_blocking(move || {
            security::identity(&run.spec, &run.image_user, &lowerdirs, user_namespace)
        })
        .await
        .map_err(|e| AgentError::Internal(format!("resolving the user: {e}")))??;
        config.process.oom_score_adj = config.process.oom_score_adj.map(lowest_oom_score_adj);
        config.process.uid = identity.uid;
        config.process.gid = identity.gid;
        config.process.additional_gids = identity.additional_gids;
        Ok(())
    }

    /// Starts a created run and watches it.
    async fn start_run(
        self: &Arc<Self>,
        host: &Arc<PodHost>,
        pod_id: &str,
        runs: &mut Runs,
        name: &str,
        run: Arc<Container>,
    ) {
        if let Err(e) = run.start(&host.runtime).await {
            runs.remove(name);
            if let Err(e) = run.remove(&host.runtime).await {
                tracing::warn!(pod = %pod_id, container = %name, "removing a run that failed: {e}");
            }
            return self.run_failed(pod_id, name, &e.to_string());
        }
        let started = self.update_pod(pod_id, |record| {
            if let Some((status, _)) = container_mut(record, name) {
                status.state = ContainerState::Running as i32;
                status.reason.clear();
                status.exit_code = None;
                status.pid = run.pid();
                status.started_at = Some(now());
                status.finished_at = None;
            }
        });
        if let Err(e) = started {
            tracing::error!(pod = %pod_id, container = %name, "cannot record a start: {e}");
        }
        self.watch_run(pod_id, name, run);
    }

    pub(super) fn watch_run(self: &Arc<Self>, pod_id: &str, name: &str, run: Arc<Container>) {
        let agent = Arc::clone(self);
        let (pod_id, name) = (pod_id.to_string(), name.to_string());
        tokio::spawn(async move {
            match run.wait().await {
                Ok(report) => agent.record_exit(&pod_id, &name, &run, &report, false),
                Err(e) => tracing::error!(pod = %pod_id, container = %name, "waiting: {e}"),
            }
        });
    }

    /// A run could not be created or started: FAILED, then the policy.
    pub(super) fn run_failed(self: &Arc<Self>, pod_id: &str, name: &str, reason: &str) {
        tracing::warn!(pod = %pod_id, container = %name, "container failed: {reason}");
        let facts = stratum_runtime::ExitFacts {
            exit_code: None,
            oom_killed: false,
            stop_requested: false,
            ran_for: Duration::ZERO,
        };
        self.end_run(pod_id, name, None, facts, |status| {
            status.state = ContainerState::Failed as i32;
            status.reason = reason.to_string();
            status.exit_code = None;
        });
    }

    /// Records how `run` ended, once (later calls for the same run find it
    /// recorded), and applies the restart policy.
    pub(super) fn record_exit(
        self: &Arc<Self>,
        pod_id: &str,
        name: &str,
        run: &Arc<Container>,
        report: &ExitReport,
        stop_requested: bool,
    ) {
        let facts = report.facts(stop_requested || run.stop_requested());
        self.end_run(pod_id, name, Some(run.id()), facts, |status| {
            let (state, reason) = match report.reason {
                ExitReason::OomKilled => (ContainerState::OomKilled, "OOMKilled"),
                ExitReason::Completed => (ContainerState::Exited, "Completed"),
                ExitReason::Error => (ContainerState::Exited, "Error"),
                ExitReason::Unknown => (
                    ContainerState::Exited,
                    "ended while the agent could not observe it",
                ),
            };
            status.state = state as i32;
            status.reason = reason.to_string();
            status.exit_code = report.exit_code;
            status.finished_at = Some(report.finished_at.into());
        });
    }

    /// The end of a run (`run_id`, or the current one for a run that never
    /// started): `mark` fills the status; the restart decision follows.
    fn end_run(
        self: &Arc<Self>,
        pod_id: &str,
        name: &str,
        run_id: Option<&str>,
        mut facts: stratum_runtime::ExitFacts,
        mark: impl FnOnce(&mut proto::ContainerStatus),
    ) {
        let mut state = self.write_state();
        let Some(entry) = state.pods.get(pod_id) else {
            return;
        };
        let pod_running = entry.state() == PodState::Running;
        let policy = spec::restart_policy(entry.spec().restart_policy).unwrap_or_default();
        let Some(i) = index_of(&entry.record, name) else {
            return;
        };
        let Some(status) = entry.status().containers.get(i) else {
            return;
        };
        if run_id.is_some_and(|id| id != status.id) || is_ended(status.state) {
            return; // A stop recorded it already, or a newer run replaced it.
        }
        facts.stop_requested |= entry
            .record
            .containers
            .get(i)
            .is_some_and(|c| c.stop_requested);
        let decision = if pod_running {
            decide(policy, &facts, status.restart_count)
        } else {
            RestartDecision::Stay
        };
        let stored = self.update_pod_locked(&mut state, pod_id, |record| {
            if let Some((status, _)) = container_mut(record, name) {
                mark(status);
                status.pid = 0;
                if status.finished_at.is_none() {
                    status.finished_at = Some(now());
                }
                if let RestartDecision::Restart {
                    delay,
                    restart_count,
                } = decision
                {
                    status.restart_count = restart_count;
                    status.restart_at = Some(timestamp_in(delay));
                }
            }
        });
        if let Err(e) = stored {
            tracing::error!(pod = %pod_id, container = %name, "cannot record an exit: {e}");
            return;
        }
        let idle = state
            .pods
            .get(pod_id)
            .is_some_and(|p| !p.kubelet_managed() && is_idle(&p.record));
        drop(state);
        match decision {
            RestartDecision::Restart { delay, .. } => self.schedule_restart(pod_id, name, delay),
            RestartDecision::Stay if pod_running && idle => self.schedule_idle_stop(pod_id),
            RestartDecision::Stay => {}
        }
    }

    /// After `delay`, starts a fresh run of a container still waiting for
    /// its restart (not removed, stopped or started meanwhile).
    pub(super) fn schedule_restart(self: &Arc<Self>, pod_id: &str, name: &str, delay: Duration) {
        let agent = Arc::clone(self);
        let (pod_id, name) = (pod_id.to_string(), name.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(e) = agent.restart(&pod_id, &name).await {
                tracing::debug!(pod = %pod_id, container = %name, "restart skipped: {e}");
            }
        });
    }

    async fn restart(self: &Arc<Self>, pod_id: &str, name: &str) -> Result<()> {
        let host = self.pod_host().await?;
        let live = self.running_pod(pod_id)?;
        let mut runs = live.runs.lock().await;
        {
            let state = self.read_state();
            let entry = pod_entry(&state, pod_id)?;
            let status = status_of(entry, pod_id, name)?;
            if entry.state() != PodState::Running || status.restart_at.is_none() {
                return Ok(());
            }
        }
        if let Some(old) = runs.remove(name) {
            self.remove_run(&host, pod_id, name, old).await;
        }
        self.new_run(&host, pod_id, &live, &mut runs, name, true)
            .await;
        Ok(())
    }

    /// Every container of a running pod ended for good: stop the pod.
    fn schedule_idle_stop(self: &Arc<Self>, pod_id: &str) {
        let agent = Arc::clone(self);
        let pod_id = pod_id.to_string();
        tokio::spawn(async move {
            if let Err(e) = agent.stop_if_idle(&pod_id).await {
                tracing::warn!(pod = %pod_id, "stopping an idle pod: {e}");
            }
        });
    }

    async fn stop_if_idle(self: &Arc<Self>, pod_id: &str) -> Result<()> {
        let host = self.pod_host().await?;
        let live = self.running_pod(pod_id)?;
        {
            let _runs = live.runs.lock().await;
            let mut state = self.write_state();
            let idle = state.pods.get(pod_id).is_some_and(|p| is_idle(&p.record));
            if !idle {
                return Ok(());
            }
            self.update_pod_locked(&mut state, pod_id, |r| {
                super::set_pod_state(r, PodState::Stopping, "")
            })?;
        }
        self.stop_sandbox(
            &host,
            pod_id,
            &live,
            Duration::ZERO,
            PodState::Stopped,
            "every container ended",
        )
        .await
    }

    /// Kills a run if it still runs, lets its watcher record the end, and
    /// removes it (runtime state, cgroups, rootfs, bundle; not its log).
    pub(super) async fn remove_run(
        &self,
        host: &PodHost,
        pod_id: &str,
        name: &str,
        run: Arc<Container>,
    ) {
        if let Err(e) = run.remove(&host.runtime).await {
            tracing::warn!(pod = %pod_id, container = %name, run = %run.id(), "removing a run: {e}");
        }
    }

    /// CreateContainer: see pods.proto.
    pub async fn create_container(
        self: &Arc<Self>,
        pod_id: &str,
        container: proto::ContainerSpec,
    ) -> Result<proto::Pod> {
        self.create_container_for(pod_id, container, None).await
    }

    /// CreateContainer for a PodService caller (`cri` none) or the CRI.
    pub(crate) async fn create_container_for(
        self: &Arc<Self>,
        pod_id: &str,
        container: proto::ContainerSpec,
        cri: Option<CriContainer>,
    ) -> Result<proto::Pod> {
        spec::check_container(&container)?;
        let pod_privileged = {
            let state = self.read_state();
            pod_entry(&state, pod_id)?.spec().privileged
        };
        self.check_security(&container, pod_privileged).await?;
        self.shared.config.check_free_disk("container create")?;
        let host = self.pod_host().await?;
        let live = self.running_pod(pod_id)?;
        let mut runs = live.runs.lock().await;
        let lease = self.images.acquire(&container.image).map_err(|e| {
            AgentError::NotFound(format!(
                "container {:?}: {e} (pull or import it first)",
                container.name
            ))
        })?;
        super::refuse_vm_image(&container.name, &lease)?;
        {
            let mut state = self.write_state();
            let entry = pod_entry(&state, pod_id)?;
            if entry.state() != PodState::Running {
                return Err(AgentError::FailedPrecondition(format!(
                    "pod {pod_id} is not running"
                )));
            }
            if index_of(&entry.record, &container.name).is_some() {
                return Err(AgentError::AlreadyExists(format!(
                    "pod {pod_id} already has a container {:?}",
                    container.name
                )));
            }
            spec::check_container_fits(&container, &entry.status().limits.unwrap_or_default())?;
            let image_id = lease.record().id.to_string();
            let count = entry.spec().containers.len() + 1;
            self.update_pod_locked(&mut state, pod_id, |record| {
                if let Some(spec) = record.spec.as_mut() {
                    spec.containers.push(container.clone());
                }
                if let Some(status) = record.status.as_mut() {
                    status.containers.push(proto::ContainerStatus {
                        name: container.name.clone(),
                        image_id,
                        ..Default::default()
                    });
                }
                record.containers.push(ContainerRuntime {
                    cri,
                    ..ContainerRuntime::default()
                });
            })?;
            self.pools
                .set_pod_containers(pod_id, u32::try_from(count).unwrap_or(u32::MAX));
            if let Some(entry) = state.pods.get_mut(pod_id) {
                entry.leases.insert(container.name.clone(), lease);
            }
        }
        self.new_run(&host, pod_id, &live, &mut runs, &container.name, false)
            .await;
        drop(runs);
        self.get_pod(pod_id)
    }

    /// StartContainer: see pods.proto.
    pub async fn start_container(self: &Arc<Self>, pod_id: &str, name: &str) -> Result<proto::Pod> {
        let host = self.pod_host().await?;
        let live = self.running_pod(pod_id)?;
        let mut runs = live.runs.lock().await;
        let current = {
            let state = self.read_state();
            let entry = pod_entry(&state, pod_id)?;
            if entry.state() != PodState::Running {
                return Err(AgentError::FailedPrecondition(format!(
                    "pod {pod_id} is not running"
                )));
            }
            let current = state_of(entry, pod_id, name)?;
            // A kubelet's container runs once: it makes a new one instead.
            if entry.kubelet_managed() && current != ContainerState::Created {
                return Err(AgentError::FailedPrecondition(format!(
                    "container {name:?} of pod {pod_id} is {}; a CRI container starts once",
                    container_state_name(current)
                )));
            }
            current
        };
        match current {
            ContainerState::Running => {
                return Err(AgentError::FailedPrecondition(format!(
                    "container {name:?} of pod {pod_id} is running"
                )))
            }
            ContainerState::Created if runs.contains_key(name) => {
                self.update_pod(pod_id, |record| {
                    if let Some((_, runtime)) = container_mut(record, name) {
                        runtime.stop_requested = false;
                    }
                })?;
                let run = runs.get(name).cloned();
                if let Some(run) = run {
                    self.start_run(&host, pod_id, &mut runs, name, run).await;
                }
            }
            _ => {
                if let Some(old) = runs.remove(name) {
                    self.remove_run(&host, pod_id, name, old).await;
                }
                self.new_run(&host, pod_id, &live, &mut runs, name, true)
                    .await;
            }
        }
        drop(runs);
        self.get_pod(pod_id)
    }

    /// StopContainer: see pods.proto.
    pub async fn stop_container(
        self: &Arc<Self>,
        pod_id: &str,
        name: &str,
        grace: Duration,
    ) -> Result<proto::Pod> {
        let live = self.running_pod(pod_id)?;
        let runs = live.runs.lock().await;
        self.update_pod(pod_id, |record| {
            if let Some((status, runtime)) = container_mut(record, name) {
                runtime.stop_requested = true;
                status.restart_at = None;
            }
        })?;
        let state = {
            let state = self.read_state();
            let entry = pod_entry(&state, pod_id)?;
            state_of(entry, pod_id, name)?
        };
        if state == ContainerState::Running {
            if let Some(run) = runs.get(name).cloned() {
                let report = run.stop(grace).await?;
                self.record_exit(pod_id, name, &run, &report, true);
            }
        }
        drop(runs);
        self.get_pod(pod_id)
    }

    /// RemoveContainer: see pods.proto.
    pub async fn remove_container(
        self: &Arc<Self>,
        pod_id: &str,
        name: &str,
    ) -> Result<proto::Pod> {
        let (live, kubelets_log) = {
            let state = self.read_state();
            let entry = pod_entry(&state, pod_id)?;
            let current = state_of(entry, pod_id, name)?;
            if current == ContainerState::Running {
                return Err(AgentError::FailedPrecondition(format!(
                    "container {name:?} of pod {pod_id} is {}; stop it first",
                    container_state_name(current)
                )));
            }
            (entry.live.clone(), cri_id(&entry.record, name).is_some())
        };
        let mut runs = match &live {
            Some(live) => Some(live.runs.lock().await),
            None => None,
        };
        if let Some(run) = runs.as_mut().and_then(|r| r.remove(name)) {
            if run.status() == stratum_runtime::ContainerStatus::Running {
                if let Some(r) = runs.as_mut() {
                    r.insert(name.to_string(), run);
                }
                return Err(AgentError::FailedPrecondition(format!(
                    "container {name:?} of pod {pod_id} is running; stop it first"
                )));
            }
            let host = self.pod_host().await?;
            self.remove_run(&host, pod_id, name, run).await;
        }
        {
            let mut state = self.write_state();
            self.update_pod_locked(&mut state, pod_id, |record| {
                if let Some(i) = index_of(record, name) {
                    if let Some(spec) = record.spec.as_mut() {
                        spec.containers.remove(i);
                    }
                    if let Some(status) = record.status.as_mut() {
                        if i < status.containers.len() {
                            status.containers.remove(i);
                        }
                    }
                    if i < record.containers.len() {
                        record.containers.remove(i);
                    }
                }
            })?;
            if let Some(entry) = state.pods.get_mut(pod_id) {
                entry.leases.remove(name);
                let count = u32::try_from(entry.spec().containers.len()).unwrap_or(u32::MAX);
                self.pools.set_pod_containers(pod_id, count);
            }
        }
        // A CRI container's log is the kubelet's, which removes it.
        if !kubelets_log {
            let _ = stratum_runtime::logs::remove_log_files(&self.pod_log_path(pod_id, name));
        }
        drop(runs);
        self.get_pod(pod_id)
    }

    /// New limits for a container of a running pod: its cgroup's CPU cap
    /// and memory limit now, and in its spec (with `cri_config`, the CRI
    /// config that asked for them, for its status). A memory limit the
    /// container already uses more than is refused by the kernel, and
    /// nothing changes.
    pub(crate) async fn update_container_limits(
        &self,
        pod_id: &str,
        name: &str,
        limits: proto::ResourceAmounts,
        requests: Option<proto::ResourceAmounts>,
        cri_config: Option<Vec<u8>>,
    ) -> Result<()> {
        let live = self.running_pod(pod_id)?;
        let runs = live.runs.lock().await;
        let mut updated = {
            let state = self.read_state();
            let entry = pod_entry(&state, pod_id)?;
            let i = index_of(&entry.record, name).ok_or_else(|| not_found(pod_id, name))?;
            entry
                .spec()
                .containers
                .get(i)
                .cloned()
                .ok_or_else(|| not_found(pod_id, name))?
        };
        updated.limits = Some(limits);
        if requests.is_some() {
            updated.requests = requests;
        }
        spec::check_container(&updated)?;
        let pod_limits = {
            let state = self.read_state();
            pod_entry(&state, pod_id)?
                .status()
                .limits
                .unwrap_or_default()
        };
        spec::check_container_fits(&updated, &pod_limits)?;
        let run = runs.get(name).cloned().ok_or_else(|| {
            AgentError::FailedPrecondition(format!(
                "container {name:?} of pod {pod_id} has no run to update"
            ))
        })?;
        let cgroup_limits = spec::container_limits(&updated);
        let cgroup = run.cgroup().clone();
        tokio::task::spawn_blocking(move || cgroup.apply(&cgroup_limits))
            .await
            .map_err(|e| AgentError::Internal(format!("cgroup task: {e}")))??;
        self.update_pod(pod_id, |record| {
            if let Some(i) = index_of(record, name) {
                if let Some(spec) = record.spec.as_mut().and_then(|s| s.containers.get_mut(i)) {
                    spec.limits = Some(limits);
                    spec.requests = updated.requests;
                }
                if let (Some(config), Some(cri)) = (
                    cri_config,
                    record.containers.get_mut(i).and_then(|c| c.cri.as_mut()),
                ) {
                    cri.config = config;
                }
            }
        })?;
        drop(runs);
        Ok(())
    }

    /// The running run of a container of a running pod.
    async fn running_run(&self, pod_id: &str, name: &str) -> Result<Arc<Container>> {
        let live = self.running_pod(pod_id)?;
        let runs = live.runs.lock().await;
        let state = self.read_state();
        let entry = pod_entry(&state, pod_id)?;
        let current = state_of(entry, pod_id, name)?;
        match runs.get(name) {
            Some(run) if current == ContainerState::Running => Ok(run.clone()),
            _ => Err(AgentError::FailedPrecondition(format!(
                "container {name:?} of pod {pod_id} is {}, not running",
                container_state_name(current)
            ))),
        }
    }

    /// Waits until a running container's log writer holds a file under
    /// the log's name again, after someone (the kubelet) renamed it away.
    /// The writer notices by itself within a second; this only says when.
    pub(crate) async fn reopen_log(&self, pod_id: &str, name: &str) -> Result<()> {
        let run = self.running_run(pod_id, name).await?;
        let log = run.log_path().to_path_buf();
        if log.as_os_str().is_empty() {
            return Err(AgentError::FailedPrecondition(format!(
                "container {name:?} of pod {pod_id} has no log file"
            )));
        }
        let deadline = tokio::time::Instant::now() + LOG_REOPEN_TIMEOUT;
        loop {
            let path = log.clone();
            let held = tokio::task::spawn_blocking(move || {
                stratum_runtime::log_writer::writer_active(&path)
            })
            .await
            .unwrap_or(false);
            if held {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(AgentError::Unavailable(format!(
                    "the log writer of container {name:?} of pod {pod_id} did not reopen {} within {}s",
                    log.display(),
                    LOG_REOPEN_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// ExecSync: see pods.proto.
    pub async fn exec_sync(
        &self,
        pod_id: &str,
        name: &str,
        command: Vec<String>,
        timeout_seconds: u32,
    ) -> Result<proto::ExecSyncResponse> {
        check_command(&command)?;
        let host = self.pod_host().await?;
        let run = self.running_run(pod_id, name).await?;
        let timeout = match timeout_seconds {
            0 => EXEC_DEFAULT_TIMEOUT,
            s => Duration::from_secs(u64::from(s)),
        };
        let out = run.exec_sync(&host.runtime, &command, timeout).await?;
        let cut = |mut v: Vec<u8>| {
            v.truncate(EXEC_OUTPUT_MAX);
            v
        };
        Ok(proto::ExecSyncResponse {
            stdout: cut(out.stdout),
            stderr: cut(out.stderr),
            exit_code: out.exit_code,
        })
    }

    /// Exec with streams: starts `command` in the running container `name`
    /// (with a terminal if `tty`) and hands the process back, its input
    /// and output to the caller. Checked as [`Self::exec_sync`] checks.
    pub async fn spawn_exec(
        &self,
        pod_id: &str,
        name: &str,
        command: &[String],
        tty: bool,
    ) -> Result<stratum_runtime::ExecChild> {
        check_command(command)?;
        let host = self.pod_host().await?;
        let run = self.running_run(pod_id, name).await?;
        Ok(run.spawn_exec(&host.runtime, command, tty).await?)
    }

    /// Attach: the running container `name`'s own output from now on,
    /// and its stdin or terminal (see `stratum_runtime::attach`), with
    /// the stdio its spec asked for.
    pub async fn attach(
        &self,
        pod_id: &str,
        name: &str,
    ) -> Result<(stratum_runtime::attach::Attachment, AttachedStdio)> {
        let run = self.running_run(pod_id, name).await?;
        let stdio = self.stdio_of(pod_id, name)?;
        let attachment = run.attach().await.map_err(|e| {
            AgentError::FailedPrecondition(format!(
                "container {name:?} of pod {pod_id}: its output has ended ({e})"
            ))
        })?;
        Ok((attachment, stdio))
    }

    /// The stdio container `name` of pod `pod_id` was made with.
    pub fn stdio_of(&self, pod_id: &str, name: &str) -> Result<AttachedStdio> {
        let state = self.read_state();
        let entry = pod_entry(&state, pod_id)?;
        let spec = entry
            .spec()
            .containers
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| not_found(pod_id, name))?;
        Ok(AttachedStdio {
            stdin: spec.stdin,
            stdin_once: spec.stdin && spec.stdin_once,
            tty: spec.tty,
        })
    }

    /// Port forwarding: a TCP connection to `port` on the loopback of pod
    /// `pod_id`'s network namespace (the host's for a host-network pod),
    /// made from inside it, as a kubelet's runtime makes it.
    pub async fn connect_port(&self, pod_id: &str, port: u16) -> Result<tokio::net::TcpStream> {
        let host_network = {
            let state = self.read_state();
            let entry = pod_entry(&state, pod_id)?;
            if entry.live.is_none() || entry.state() != proto::PodState::Running {
                return Err(AgentError::FailedPrecondition(format!(
                    "pod {pod_id} is not running"
                )));
            }
            entry.spec().host_network
        };
        let host = self.pod_host().await?;
        let netns = if host_network {
            stratum_runtime::sandbox::host_namespace("net")
        } else {
            host.network.netns_path(pod_id)
        };
        let target = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let connected = stratum_net::netns::run_in(&netns, move || {
            let stream = std::net::TcpStream::connect_timeout(&target, PORT_CONNECT_TIMEOUT)?;
            stream.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(stream)
        })
        .await?
        .map_err(|e| {
            AgentError::Unavailable(format!("pod {pod_id}: cannot connect to port {port}: {e}"))
        })?;
        tokio::net::TcpStream::from_std(connected)
            .map_err(|e| AgentError::Internal(format!("register a forwarded connection: {e}")))
    }

    /// A reader of the container's CRI log; `None` when it wrote nothing
    /// yet. Following ends with the current run.
    pub async fn container_logs(
        &self,
        pod_id: &str,
        name: &str,
        follow: bool,
    ) -> Result<Option<LogFollower>> {
        let (live, path) = {
            let state = self.read_state();
            let entry = pod_entry(&state, pod_id)?;
            index_of(&entry.record, name).ok_or_else(|| not_found(pod_id, name))?;
            (entry.live.clone(), self.log_path_of(&entry.record, name))
        };
        if let Some(live) = live {
            let run = live.runs.lock().await.get(name).cloned();
            if let Some(run) = run {
                return Ok(Some(run.logs(follow)?));
            }
        }
        if !path.exists() {
            return Ok(None);
        }
        Ok(Some(LogFollower::open(&path, false)?))
    }

    /// Stats: see pods.proto.
    pub async fn pod_stats(&self, pod_id: &str) -> Result<proto::PodStats> {
        let live = self.running_pod(pod_id)?;
        let runs = live.runs.lock().await;
        let pod = live.cgroup.usage()?;
        let names: Vec<(String, bool)> = {
            let state = self.read_state();
            let entry = pod_entry(&state, pod_id)?;
            entry
                .status()
                .containers
                .iter()
                .map(|c| (c.name.clone(), c.state == ContainerState::Running as i32))
                .collect()
        };
        let containers = names
            .into_iter()
            .map(|(name, running)| {
                let usage = runs
                    .get(&name)
                    .filter(|_| running)
                    .and_then(|run| run.cgroup().usage().ok())
                    .map(live_usage);
                proto::ContainerStats { name, usage }
            })
            .collect();
        Ok(proto::PodStats {
            pod_id: pod_id.to_string(),
            read_at: Some(now()),
            pod: Some(live_usage(pod)),
            containers,
        })
    }

    /// Stops whatever may run after StopPod's grace: a helper for
    /// [`PodManager::stop_pod`] callers that give no period.
    pub fn default_grace(grace: Option<u32>) -> Duration {
        grace.map_or(DEFAULT_GRACE, |s| Duration::from_secs(u64::from(s)))
    }
}

/// Every container ended for good (none waits for a restart) and there
/// is at least one.
fn is_idle(record: &PodRecord) -> bool {
    let Some(status) = record.status.as_ref() else {
        return false;
    };
    !status.containers.is_empty()
        && status
            .containers
            .iter()
            .all(|c| is_ended(c.state) && c.restart_at.is_none())
}

pub fn live_usage(u: CgroupUsage) -> proto::LiveUsage {
    proto::LiveUsage {
        cpu_usage_ns: u.cpu_usage_ns,
        memory_current_bytes: u.memory_current_bytes,
        oom_kills: u.oom_kills,
        memory_limit_hits: u.memory_limit_hits,
    }
}

/// An exec's command: a program, and no NUL byte in any argument.
fn check_command(command: &[String]) -> Result<()> {
    if command.first().is_none_or(String::is_empty) {
        return Err(AgentError::InvalidArgument("exec: no command".into()));
    }
    if command.iter().any(|a| a.contains('\0')) {
        return Err(AgentError::InvalidArgument(
            "exec: an argument holds a NUL byte".into(),
        ));
    }
    Ok(())
}
