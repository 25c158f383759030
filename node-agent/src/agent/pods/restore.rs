//! Taking the pods back after an agent restart (`kill -9` included).
//!
//! At start ([`PodManager::restore_records`], synchronous, before the API serves):
//! every stored pod is a workload of its pool again, running ones admitted,
//! and every pod leases its containers' images again, so no image in use
//! can be removed. Then ([`PodManager::resume`], once the async runtime
//! runs): a RUNNING pod whose sandbox mounts and cgroup are still there is
//! re-adopted — its containers' runs are found by their state files, the
//! live ones watched again (their exit codes are lost: the old agent was
//! their parent), the ones that ended meanwhile recorded with the restart
//! policy applied; a pod whose sandbox is gone, or one caught STARTING or
//! STOPPING, is torn down (FAILED or STOPPED). Finally the agent
//! reconciles the networks with the pods that live and the VMs, and gives
//! live pods whose network went missing theirs again
//! ([`PodManager::reattach`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::host::PodHost;
use super::PodManager;
use super::{network_of, pod_entry, PodEntry, PodLive};
use crate::agent::errors::Result;
use crate::agent::pools::pool_id_or_root;
use crate::records::PodRecord;
use stratum_api::proto::{ContainerState, PodState};
use stratum_pool::convert::limits_from_proto;
use stratum_pool::{PodSizing, Resources, Workload, WorkloadId};
use stratum_runtime::{Container, PodSandbox};

impl PodManager {
    /// Pods back into the pool tree, with their image leases.
    pub(super) fn restore_records(&self, records: Vec<PodRecord>) -> Result<()> {
        let mut state = self.write_state();
        for record in records {
            let id = record.id.clone();
            let spec = record.spec.clone().unwrap_or_default();
            let status = record.status.clone().unwrap_or_default();
            let sizing = PodSizing {
                requests: status
                    .reservation
                    .as_ref()
                    .map(Resources::from)
                    .unwrap_or_default(),
                limits: limits_from_proto(status.limits.as_ref()),
                containers: u32::try_from(spec.containers.len()).unwrap_or(u32::MAX),
            };
            let pool = pool_id_or_root(&spec.pool_id);
            let workload = WorkloadId::from(id.as_str());
            self.pools
                .add_workload(Workload::pod(workload.clone(), pool.clone(), &sizing)?)?;
            if matches!(
                status.state(),
                PodState::Starting | PodState::Running | PodState::Stopping
            ) {
                self.pools.admit(&id)?;
            }
            let mut leases = std::collections::BTreeMap::new();
            for (container, st) in spec.containers.iter().zip(&status.containers) {
                let name = if st.image_id.is_empty() {
                    &container.image
                } else {
                    &st.image_id
                };
                match self.images.acquire(name) {
                    Ok(lease) => {
                        leases.insert(container.name.clone(), lease);
                    }
                    Err(e) => tracing::warn!(pod = %id, container = %container.name, "image: {e}"),
                }
            }
            state.pods.insert(
                id,
                PodEntry {
                    record,
                    pool,
                    live: None,
                    leases,
                },
            );
        }
        Ok(())
    }

    /// Re-adopts running pods and cleans up after the others (see the
    /// module docs). Does nothing, and sets nothing up, on an agent
    /// without pods to take back.
    pub async fn resume(self: &Arc<Self>) {
        let pending: Vec<(String, PodState)> = self
            .read_state()
            .pods
            .iter()
            .filter(|(_, p)| {
                matches!(
                    p.state(),
                    PodState::Starting | PodState::Running | PodState::Stopping
                )
            })
            .map(|(id, p)| (id.clone(), p.state()))
            .collect();
        if pending.is_empty() {
            return;
        }
        let host = match self.pod_host().await {
            Ok(host) => host,
            Err(e) => {
                for (id, _) in &pending {
                    self.mark_lost(id, PodState::Failed, &e.to_string());
                }
                return;
            }
        };
        for (id, state) in pending {
            let outcome = match state {
                PodState::Running => match self.readopt(&host, &id).await {
                    Ok(()) => continue,
                    Err(e) => (
                        PodState::Failed,
                        format!("lost across an agent restart: {e}"),
                    ),
                },
                PodState::Starting => (
                    PodState::Failed,
                    "the agent restarted while the pod was starting".to_string(),
                ),
                _ => (PodState::Stopped, "stopped on request".to_string()),
            };
            self.clean_up_lost(&host, &id).await;
            self.mark_lost(&id, outcome.0, &outcome.1);
        }
    }

    /// The pods that run: their network stays at a reconcile.
    pub fn live_pod_ids(&self) -> Vec<String> {
        self.read_state()
            .pods
            .iter()
            .filter(|(_, p)| p.state() == PodState::Running)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Opens a running pod's sandbox and cgroup and takes its runs back.
    async fn readopt(self: &Arc<Self>, host: &Arc<PodHost>, id: &str) -> Result<()> {
        let (hostname, cgroup_path, containers, (network, shares, pid)) = {
            let state = self.read_state();
            let entry = pod_entry(&state, id)?;
            let spec = entry.spec();
            let hostname = if spec.hostname.is_empty() {
                spec.name.clone()
            } else {
                spec.hostname.clone()
            };
            (
                hostname,
                entry.record.cgroup_path.clone(),
                entry.status().containers.clone(),
                super::sandbox_shape(host, id, spec),
            )
        };
        let dir = self.shared.config.pod_dir(id).join("sandbox");
        let sandbox = PodSandbox::open(&dir, &hostname, network, shares, pid)?;
        let cgroup = self
            .shared
            .cgroups
            .open(std::path::Path::new(&cgroup_path))?;
        let live = Arc::new(PodLive {
            sandbox,
            cgroup,
            runs: tokio::sync::Mutex::new(Default::default()),
        });
        self.set_live(id, Some(live.clone()));
        let mut runs = live.runs.lock().await;
        for status in containers {
            let name = status.name.clone();
            if let Some(at) = status.restart_at {
                let due = SystemTime::try_from(at).unwrap_or(SystemTime::now());
                let delay = due
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                self.schedule_restart(id, &name, delay);
                continue;
            }
            let state = status.state();
            if !matches!(state, ContainerState::Running | ContainerState::Created)
                || status.id.is_empty()
            {
                continue;
            }
            let run_dir = self
                .shared
                .config
                .pod_dir(id)
                .join("containers")
                .join(&status.id);
            match Container::adopt(&host.runtime, &self.shared.cgroups, &host.mapping, &run_dir)
                .await
            {
                Ok(run) => {
                    let run = Arc::new(run);
                    runs.insert(name.clone(), run.clone());
                    if let Some(report) = run.exit_report() {
                        self.record_exit(id, &name, &run, &report, false);
                    } else if state == ContainerState::Running {
                        tracing::info!(pod = %id, container = %name, pid = run.pid(), "re-adopted");
                        self.watch_run(id, &name, run);
                    }
                }
                Err(e) => self.run_failed(id, &name, &format!("lost across an agent restart: {e}")),
            }
        }
        Ok(())
    }

    /// Removes what a pod that cannot be taken back may have left: its
    /// runs' runtime state, cgroups and mounts, its sandbox, its network.
    async fn clean_up_lost(&self, host: &PodHost, id: &str) {
        let (hostname, cgroup_path, run_ids, (network, shares, pid)) = {
            let state = self.read_state();
            let Ok(entry) = pod_entry(&state, id) else {
                return;
            };
            (
                entry.spec().name.clone(),
                entry.record.cgroup_path.clone(),
                entry
                    .status()
                    .containers
                    .iter()
                    .filter(|c| !c.id.is_empty())
                    .map(|c| c.id.clone())
                    .collect::<Vec<_>>(),
                super::sandbox_shape(host, id, entry.spec()),
            )
        };
        for run_id in run_ids {
            let run_dir = self
                .shared
                .config
                .pod_dir(id)
                .join("containers")
                .join(&run_id);
            if let Ok(run) =
                Container::adopt(&host.runtime, &self.shared.cgroups, &host.mapping, &run_dir).await
            {
                let _ = run.remove(&host.runtime).await;
            } else {
                let _ = host.runtime.delete(&run_id, true).await;
            }
        }
        let dir = self.shared.config.pod_dir(id).join("sandbox");
        let sandbox = PodSandbox::at(&dir, &hostname, &network, shares, pid);
        if let Err(e) = sandbox.remove() {
            tracing::warn!(pod = %id, "removing the sandbox: {e}");
        }
        let _ = host.network.detach(id).await;
        if !cgroup_path.is_empty() {
            if let Ok(cgroup) = self.shared.cgroups.open(std::path::Path::new(&cgroup_path)) {
                self.remove_pod_cgroup(host, &cgroup);
            }
        }
    }

    /// Records a pod that could not be taken back as `end`, its
    /// reservation released.
    fn mark_lost(&self, id: &str, end: PodState, reason: &str) {
        tracing::warn!(pod = %id, "{reason}");
        let mut state = self.write_state();
        self.pools.release(id);
        let stored = self.update_pod_locked(&mut state, id, |record| {
            super::set_pod_state(record, end, reason);
            let status = record.status.get_or_insert_with(Default::default);
            status.ip.clear();
            status.finished_at = Some(crate::agent::now());
            for c in &mut status.containers {
                if matches!(c.state(), ContainerState::Running | ContainerState::Created) {
                    c.state = ContainerState::Exited as i32;
                    c.reason = "ended while the agent could not observe it".to_string();
                    c.pid = 0;
                }
                c.restart_at = None;
            }
            record.cgroup_path.clear();
        });
        if let Err(e) = stored {
            tracing::error!(pod = %id, "cannot record the pod's end: {e}");
        }
        if let Some(entry) = state.pods.get_mut(id) {
            entry.live = None;
        }
    }

    /// Gives live pods their network again (same address), after
    /// reconcile found their netns or veth missing.
    pub async fn reattach(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        match self.pod_host().await {
            Ok(host) => {
                for id in ids {
                    self.reattach_one(&host, id).await;
                }
            }
            Err(e) => tracing::error!("cannot repair pods' networks: {e}"),
        }
    }

    async fn reattach_one(&self, host: &PodHost, id: &str) {
        let (namespace, network, mappings) = {
            let state = self.read_state();
            let Ok(entry) = pod_entry(&state, id) else {
                return;
            };
            (
                entry.status().namespace.clone(),
                network_of(entry.spec()).to_string(),
                entry.spec().port_mappings.clone(),
            )
        };
        let mappings = match super::spec::port_mappings(&mappings) {
            Ok(m) => m,
            Err(e) => return tracing::error!(pod = %id, "stored port mappings: {e}"),
        };
        if let Err(e) = host
            .network
            .attach_to(&network, id, &namespace, &mappings)
            .await
        {
            tracing::error!(pod = %id, "repairing the pod's network: {e}");
        }
    }
}
