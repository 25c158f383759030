//! `runtime.v1.RuntimeService` over the pod manager. Each call finds what
//! it names among the sandboxes made through the CRI that the caller may
//! see, translates ([`super::sandbox`], [`super::container`]) and calls
//! the same pod manager methods as the PodService; mutations run
//! detached (a kubelet that gives up on a call does not cancel it half
//! way) and answer once durable.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::container::{self, View};
use super::{ids, sandbox, streaming, CriConfig};
use crate::agent::pods::events::ContainerChange;
use crate::agent::pods::PodEntry;
use crate::agent::{now, Agent};
use crate::api::access;
use crate::api::auth::Caller;
use crate::records::CriSandbox;
use stratum_api::proto;
use stratum_api::proto::ContainerState;

/// The CRI version this server implements.
pub const CRI_API_VERSION: &str = "v1";

#[derive(Clone)]
pub struct CriRuntime {
    agent: Arc<Agent>,
    config: Arc<CriConfig>,
}

impl CriRuntime {
    pub fn new(agent: Arc<Agent>, config: Arc<CriConfig>) -> Self {
        Self { agent, config }
    }
}

/// Where a CRI container is: its pod and its name there.
#[derive(Debug, Clone)]
pub struct Found {
    /// The CRI container id, whole.
    pub id: String,
    pub pod_id: String,
    pub name: String,
    pub running: bool,
}

/// A CRI sandbox the caller may see: its record part.
fn visible<'a>(caller: &Caller, entry: &'a PodEntry) -> Option<&'a CriSandbox> {
    let cri = entry.record.cri.as_ref()?;
    let namespace = entry
        .record
        .status
        .as_ref()
        .map_or("", |s| s.namespace.as_str());
    caller.may_read(namespace).then_some(cri)
}

/// The containers of a CRI sandbox, each with what it was made with.
fn views(entry: &PodEntry) -> impl Iterator<Item = View<'_>> {
    let status = entry.record.status.as_ref();
    let statuses = status.map(|s| s.containers.as_slice()).unwrap_or(&[]);
    statuses
        .iter()
        .zip(&entry.record.containers)
        .filter_map(move |(status, runtime)| {
            Some(View {
                pod_id: &entry.record.id,
                status,
                runtime,
                cri: runtime.cri.as_ref()?,
            })
        })
}

impl CriRuntime {
    /// The sandbox `wanted` names (an id or a unique prefix).
    fn find_sandbox(&self, caller: &Caller, wanted: &str) -> Result<String, Status> {
        self.agent.pods().with_each(|pods| {
            let ids = pods
                .values()
                .filter(|p| visible(caller, p).is_some())
                .map(|p| p.record.id.as_str());
            ids::resolve(wanted, ids, "sandbox")
        })
    }

    /// The container `wanted` names (an id or a unique prefix).
    /// A running container the caller may change, and the streaming
    /// server that will serve its exec or attach.
    fn stream_to_running(
        &self,
        caller: &Caller,
        container_id: &str,
    ) -> Result<(Found, &streaming::StreamingServer), Status> {
        let found = self.find_container(caller, container_id)?;
        access::change_pod(&self.agent, caller, &found.pod_id)?;
        if !found.running {
            return Err(Status::failed_precondition(format!(
                "container {} is not running",
                found.id
            )));
        }
        let streaming = self
            .config
            .streaming
            .as_deref()
            .ok_or_else(|| Status::unavailable("this agent serves no CRI streaming"))?;
        Ok((found, streaming))
    }

    fn find_container(&self, caller: &Caller, wanted: &str) -> Result<Found, Status> {
        self.agent.pods().with_each(|pods| {
            let all: Vec<(Found, &str)> = pods
                .values()
                .filter(|p| visible(caller, p).is_some())
                .flat_map(|p| {
                    views(p).map(|v| {
                        let found = Found {
                            id: v.cri.id.clone(),
                            pod_id: v.pod_id.to_string(),
                            name: v.status.name.clone(),
                            running: v.status.state == ContainerState::Running as i32,
                        };
                        (found, v.cri.id.as_str())
                    })
                })
                .collect();
            let id = ids::resolve(wanted, all.iter().map(|(_, id)| *id), "container")?;
            all.into_iter()
                .find(|(_, i)| *i == id)
                .map(|(found, _)| found)
                .ok_or_else(|| Status::not_found(format!("no container {wanted}")))
        })
    }

    /// The sandbox's status from its entry.
    fn sandbox_status(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(cri::PodSandboxStatus, Vec<cri::ContainerStatus>, String), Status> {
        self.agent.pods().with_each(|pods| {
            let entry = pods
                .get(id)
                .ok_or_else(|| Status::not_found(format!("no sandbox {id}")))?;
            let cri = visible(caller, entry)
                .ok_or_else(|| Status::not_found(format!("no sandbox {id}")))?;
            let containers = views(entry).map(|v| container::to_status(&v)).collect();
            let info = serde_json::json!({
                "pod": entry.name(),
                "pool": entry.pool.as_str(),
                "cgroupPath": entry.record.cgroup_path,
            })
            .to_string();
            Ok((sandbox::to_status(entry, cri), containers, info))
        })
    }

    /// The CRI event of a container change the caller may see: CRI
    /// containers only; the sandbox's and its containers' statuses as
    /// they are now (none once the sandbox is gone).
    fn container_event(
        &self,
        caller: &Caller,
        change: &ContainerChange,
    ) -> Option<cri::ContainerEventResponse> {
        let container_id = change.cri_id.clone()?;
        if !caller.may_read(&change.namespace) {
            return None;
        }
        let kind = container::event_type(change.before, change.after)?;
        let (sandbox, containers) = match self.sandbox_status(caller, &change.pod_id) {
            Ok((sandbox, containers, _)) => (Some(sandbox), containers),
            Err(_) => (None, Vec::new()),
        };
        let created_at = change
            .at
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_nanos()).ok())
            .unwrap_or(0);
        Some(cri::ContainerEventResponse {
            container_id,
            container_event_type: kind as i32,
            created_at,
            pod_sandbox_status: sandbox,
            containers_statuses: containers,
        })
    }

    /// Stops a container now (no grace), if it runs.
    async fn kill_container(&self, found: &Found) -> Result<(), Status> {
        if !found.running {
            return Ok(());
        }
        let (pod, name) = (found.pod_id.clone(), found.name.clone());
        crate::api::detached(&self.agent, move |a| async move {
            a.pods().stop_container(&pod, &name, Duration::ZERO).await
        })
        .await?;
        Ok(())
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

/// Events made and not yet taken by a `GetContainerEvents` client.
const EVENTS_BUFFER: usize = 64;

/// How long StopContainer's timeout may be: beyond, it is taken as
/// this (a kubelet's grace periods are minutes at most).
const MAX_STOP_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

#[tonic::async_trait]
impl RuntimeService for CriRuntime {
    async fn version(
        &self,
        _request: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".to_string(),
            runtime_name: "stratum".to_string(),
            runtime_version: env!("CARGO_PKG_VERSION").to_string(),
            runtime_api_version: CRI_API_VERSION.to_string(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let config = r
            .config
            .ok_or_else(|| Status::invalid_argument("no sandbox config"))?;
        let annotations = sandbox::to_btree(&config.annotations);
        let pool = self.config.pool_for(&r.runtime_handler, &annotations)?;
        access::create_in_pool(&self.agent, &caller, &pool, "pods")?;
        let (spec, record) = sandbox::pod_spec(&config, &r.runtime_handler, &pool)?;
        let pod = crate::api::detached(&self.agent, move |a| async move {
            a.pods().run_pod_for(spec, Some(record)).await
        })
        .await?
        .into_inner();
        Ok(Response::new(cri::RunPodSandboxResponse {
            pod_sandbox_id: pod.id,
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        let caller = Caller::of(&request)?;
        let wanted = request.into_inner().pod_sandbox_id;
        let id = match self.find_sandbox(&caller, &wanted) {
            Ok(id) => id,
            // Idempotent: what is gone is stopped.
            Err(e) if e.code() == tonic::Code::NotFound => {
                return Ok(Response::new(cri::StopPodSandboxResponse {}))
            }
            Err(e) => return Err(e),
        };
        crate::api::detached(&self.agent, move |a| async move {
            a.pods().stop_pod(&id, Duration::ZERO).await
        })
        .await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let caller = Caller::of(&request)?;
        let wanted = request.into_inner().pod_sandbox_id;
        let id = match self.find_sandbox(&caller, &wanted) {
            Ok(id) => id,
            Err(e) if e.code() == tonic::Code::NotFound => {
                return Ok(Response::new(cri::RemovePodSandboxResponse {}))
            }
            Err(e) => return Err(e),
        };
        // A sandbox that still runs is stopped first, forcibly.
        let stop_id = id.clone();
        crate::api::detached(&self.agent, move |a| async move {
            a.pods().stop_pod(&stop_id, Duration::ZERO).await
        })
        .await?;
        crate::api::blocking(&self.agent, move |a| a.pods().remove_pod(&id)).await?;
        crate::api::durable(&self.agent, Response::new(cri::RemovePodSandboxResponse {})).await
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let id = self.find_sandbox(&caller, &r.pod_sandbox_id)?;
        let (status, containers_statuses, info) = self.sandbox_status(&caller, &id)?;
        let mut info_map = container::no_info();
        if r.verbose {
            info_map.insert("info".to_string(), info);
        }
        let response = cri::PodSandboxStatusResponse {
            status: Some(status),
            info: info_map,
            containers_statuses,
            timestamp: super::unix_nanos(Some(&now())),
        };
        crate::api::durable(&self.agent, Response::new(response)).await
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let caller = Caller::of(&request)?;
        let filter = request.into_inner().filter.unwrap_or_default();
        let only = if filter.id.is_empty() {
            None
        } else {
            match self.find_sandbox(&caller, &filter.id) {
                Ok(id) => Some(id),
                Err(_) => return Ok(Response::new(cri::ListPodSandboxResponse { items: vec![] })),
            }
        };
        let items = self.agent.pods().with_each(|pods| {
            pods.values()
                .filter(|p| only.as_deref().is_none_or(|id| p.record.id == id))
                .filter_map(|p| Some(sandbox::to_sandbox(p, visible(&caller, p)?)))
                .filter(|s| sandbox::matches(s, &filter))
                .collect()
        });
        crate::api::durable(
            &self.agent,
            Response::new(cri::ListPodSandboxResponse { items }),
        )
        .await
    }

    async fn create_container(
        &self,
        request: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let pod_id = self.find_sandbox(&caller, &r.pod_sandbox_id)?;
        let config = r
            .config
            .ok_or_else(|| Status::invalid_argument("no container config"))?;
        let sandbox_config = self.agent.pods().with_each(|pods| {
            pods.get(&pod_id)
                .and_then(|p| p.record.cri.as_ref())
                .map(sandbox::stored_config)
                .unwrap_or_default()
        });
        let id = ids::new_container_id()?;
        let (spec, record) = container::container_spec(&config, &id, &sandbox_config)?;
        access::change_pod(&self.agent, &caller, &pod_id)?;
        let namespace = access::pod_namespace(&self.agent, &pod_id)?;
        access::images_usable(&self.agent, &caller, &namespace, [spec.image.as_str()])?;
        make_log_dir(&record.log_path).await?;
        let name = spec.name.clone();
        let create_pod = pod_id.clone();
        let pod = crate::api::detached(&self.agent, move |a| async move {
            a.pods()
                .create_container_for(&create_pod, spec, Some(record))
                .await
        })
        .await?
        .into_inner();
        // A container the runtime could not make is not left behind.
        if let Some(reason) = failure(&pod, &name) {
            let remove_pod = pod_id.clone();
            let _ = crate::api::detached(&self.agent, move |a| async move {
                a.pods().remove_container(&remove_pod, &name).await
            })
            .await;
            return Err(Status::internal(format!(
                "creating the container: {reason}"
            )));
        }
        Ok(Response::new(cri::CreateContainerResponse {
            container_id: id,
        }))
    }

    async fn start_container(
        &self,
        request: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        let caller = Caller::of(&request)?;
        let found = self.find_container(&caller, &request.into_inner().container_id)?;
        let name = found.name.clone();
        let pod = crate::api::detached(&self.agent, move |a| async move {
            a.pods().start_container(&found.pod_id, &found.name).await
        })
        .await?
        .into_inner();
        if let Some(reason) = failure(&pod, &name) {
            return Err(Status::internal(format!(
                "starting the container: {reason}"
            )));
        }
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let found = self.find_container(&caller, &r.container_id)?;
        if !found.running {
            return Ok(Response::new(cri::StopContainerResponse {}));
        }
        let grace = u64::try_from(r.timeout)
            .map(Duration::from_secs)
            .unwrap_or(Duration::ZERO)
            .min(MAX_STOP_TIMEOUT);
        crate::api::detached(&self.agent, move |a| async move {
            a.pods()
                .stop_container(&found.pod_id, &found.name, grace)
                .await
        })
        .await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        let caller = Caller::of(&request)?;
        let found = match self.find_container(&caller, &request.into_inner().container_id) {
            Ok(found) => found,
            Err(e) if e.code() == tonic::Code::NotFound => {
                return Ok(Response::new(cri::RemoveContainerResponse {}))
            }
            Err(e) => return Err(e),
        };
        // A running container is removed forcibly.
        self.kill_container(&found).await?;
        crate::api::detached(&self.agent, move |a| async move {
            a.pods().remove_container(&found.pod_id, &found.name).await
        })
        .await?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        request: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let caller = Caller::of(&request)?;
        let filter = request.into_inner().filter.unwrap_or_default();
        let empty = || {
            Ok(Response::new(cri::ListContainersResponse {
                containers: vec![],
            }))
        };
        let pod = if filter.pod_sandbox_id.is_empty() {
            None
        } else {
            match self.find_sandbox(&caller, &filter.pod_sandbox_id) {
                Ok(id) => Some(id),
                Err(_) => return empty(),
            }
        };
        let id = if filter.id.is_empty() {
            None
        } else {
            match self.find_container(&caller, &filter.id) {
                Ok(found) => Some(found),
                Err(_) => return empty(),
            }
        };
        let containers = self.agent.pods().with_each(|pods| {
            pods.values()
                .filter(|p| visible(&caller, p).is_some())
                .filter(|p| pod.as_deref().is_none_or(|id| p.record.id == id))
                .flat_map(|p| views(p).collect::<Vec<_>>())
                .filter(|v| {
                    id.as_ref()
                        .is_none_or(|f| f.pod_id == v.pod_id && f.name == v.status.name)
                })
                .map(|v| container::to_container(&v))
                .filter(|c| container::matches(c, &filter))
                .collect()
        });
        crate::api::durable(
            &self.agent,
            Response::new(cri::ListContainersResponse { containers }),
        )
        .await
    }

    async fn container_status(
        &self,
        request: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let found = self.find_container(&caller, &r.container_id)?;
        let (status, info) = self.agent.pods().with_each(|pods| {
            let entry = pods
                .get(&found.pod_id)
                .ok_or_else(|| Status::not_found(format!("no container {}", r.container_id)))?;
            let view = views(entry)
                .find(|v| v.status.name == found.name)
                .ok_or_else(|| Status::not_found(format!("no container {}", r.container_id)))?;
            let info = serde_json::json!({
                "sandboxID": found.pod_id,
                "name": found.name,
                "pid": view.status.pid,
                "runs": view.runtime.runs,
            })
            .to_string();
            Ok::<_, Status>((container::to_status(&view), info))
        })?;
        let mut info_map = container::no_info();
        if r.verbose {
            info_map.insert("info".to_string(), info);
        }
        crate::api::durable(
            &self.agent,
            Response::new(cri::ContainerStatusResponse {
                status: Some(status),
                info: info_map,
            }),
        )
        .await
    }

    async fn update_container_resources(
        &self,
        request: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let found = self.find_container(&caller, &r.container_id)?;
        access::change_pod(&self.agent, &caller, &found.pod_id)?;
        let resources = r
            .linux
            .ok_or_else(|| Status::invalid_argument("no Linux resources given"))?;
        let config = self.agent.pods().with_each(|pods| {
            pods.get(&found.pod_id)
                .and_then(|p| views(p).find(|v| v.status.name == found.name))
                .map(|v| container::stored_config(v.cri))
        });
        let mut config =
            config.ok_or_else(|| Status::not_found(format!("no container {}", r.container_id)))?;
        let limits = container::resource_limits(&resources);
        let requests = container::resource_requests(&resources);
        config.linux.get_or_insert_with(Default::default).resources = Some(resources);
        let encoded = prost::Message::encode_to_vec(&config);
        self.agent
            .pods()
            .update_container_limits(
                &found.pod_id,
                &found.name,
                limits,
                Some(requests),
                Some(encoded),
            )
            .await?;
        crate::api::durable(
            &self.agent,
            Response::new(cri::UpdateContainerResourcesResponse {}),
        )
        .await
    }

    async fn reopen_container_log(
        &self,
        request: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let found = self.find_container(&caller, &r.container_id)?;
        access::change_pod(&self.agent, &caller, &found.pod_id)?;
        self.agent
            .pods()
            .reopen_log(&found.pod_id, &found.name)
            .await?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(
        &self,
        request: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let found = self.find_container(&caller, &r.container_id)?;
        access::change_pod(&self.agent, &caller, &found.pod_id)?;
        // The CRI's 0 is no timeout; the pod manager's 0 is its default.
        let timeout = match r.timeout {
            t if t <= 0 => u32::MAX,
            t => u32::try_from(t).unwrap_or(u32::MAX),
        };
        let out = self
            .agent
            .pods()
            .exec_sync(&found.pod_id, &found.name, r.cmd, timeout)
            .await?;
        Ok(Response::new(cri::ExecSyncResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
        }))
    }

    async fn exec(
        &self,
        request: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let (found, streaming) = self.stream_to_running(&caller, &r.container_id)?;
        let target = streaming::ExecTarget::from_request(found.pod_id, found.name, &r)?;
        let url = streaming.exec_url(target)?;
        Ok(Response::new(cri::ExecResponse { url }))
    }

    async fn attach(
        &self,
        request: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let (found, streaming) = self.stream_to_running(&caller, &r.container_id)?;
        let stdio = self
            .agent
            .pods()
            .stdio_of(&found.pod_id, &found.name)
            .map_err(Status::from)?;
        if r.stdin && !stdio.stdin {
            return Err(Status::invalid_argument(format!(
                "attach: container {} was not created with stdin",
                found.id
            )));
        }
        let target = streaming::AttachTarget::from_request(found.pod_id, found.name, &r)?;
        let url = streaming.attach_url(target)?;
        Ok(Response::new(cri::AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        request: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let pod_id = self.find_sandbox(&caller, &r.pod_sandbox_id)?;
        access::change_pod(&self.agent, &caller, &pod_id)?;
        let streaming = self
            .config
            .streaming
            .as_ref()
            .ok_or_else(|| Status::unavailable("this agent serves no CRI streaming"))?;
        let target = streaming::PortForwardTarget::from_request(pod_id, &r)?;
        let url = streaming.port_forward_url(target)?;
        Ok(Response::new(cri::PortForwardResponse { url }))
    }

    async fn container_stats(
        &self,
        request: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let found = self.find_container(&caller, &request.into_inner().container_id)?;
        let stats = self.stats_of_pod(&caller, &found.pod_id).await?;
        let one = stats
            .containers
            .into_iter()
            .find(|c| c.attributes.as_ref().is_some_and(|a| a.id == found.id))
            .ok_or_else(|| Status::not_found("the container has no stats"))?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(one),
        }))
    }

    async fn list_container_stats(
        &self,
        request: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let filter = request.into_inner().filter.unwrap_or_default();
        let mut stats = Vec::new();
        for pod in self.ready_sandboxes(&caller, &filter.pod_sandbox_id) {
            let Ok(pod_stats) = self.stats_of_pod(&caller, &pod).await else {
                continue; // Stopped meanwhile.
            };
            stats.extend(pod_stats.containers.into_iter().filter(|c| {
                let Some(a) = &c.attributes else { return false };
                (filter.id.is_empty() || a.id.starts_with(&filter.id))
                    && filter
                        .label_selector
                        .iter()
                        .all(|(k, v)| a.labels.get(k) == Some(v))
            }));
        }
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let id = self.find_sandbox(&caller, &request.into_inner().pod_sandbox_id)?;
        let stats = self.sandbox_stats(&caller, &id).await?;
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let filter = request.into_inner().filter.unwrap_or_default();
        let mut stats = Vec::new();
        for pod in self.ready_sandboxes(&caller, &filter.id) {
            let Ok(one) = self.sandbox_stats(&caller, &pod).await else {
                continue;
            };
            let labels = one.attributes.as_ref().map(|a| &a.labels);
            if filter
                .label_selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            {
                stats.push(one);
            }
        }
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    async fn update_runtime_config(
        &self,
        request: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        // The kubelet's pod CIDR: the agent's pod network has its own
        // (`--pod-cidr`), which the operator sets to the node's range.
        let cidr = request
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        tracing::info!(pod_cidr = %cidr, "the kubelet's pod CIDR (the agent keeps its own pod network's)");
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn status(
        &self,
        request: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        let verbose = request.into_inner().verbose;
        let host = self.agent.pods().pod_host().await;
        let (ready, reason, message) = match &host {
            Ok(_) => (true, String::new(), String::new()),
            Err(e) => (false, "PodHostUnavailable".to_string(), e.to_string()),
        };
        let condition = |kind: &str| cri::RuntimeCondition {
            r#type: kind.to_string(),
            status: ready,
            reason: reason.clone(),
            message: message.clone(),
        };
        let mut info = container::no_info();
        if verbose {
            let config = serde_json::json!({
                "defaultPool": self.config.default_pool,
                "handlerPools": self.config.handler_pools,
            });
            info.insert("config".to_string(), config.to_string());
        }
        let runtime_handlers = self
            .config
            .handler_names()
            .into_iter()
            .map(|name| cri::RuntimeHandler {
                name,
                features: Some(cri::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: false,
                    user_namespaces: false,
                }),
            })
            .collect();
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![condition("RuntimeReady"), condition("NetworkReady")],
            }),
            info,
            runtime_handlers,
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: false,
            }),
        }))
    }

    async fn checkpoint_container(
        &self,
        _request: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        Err(Status::unimplemented(
            "checkpointing containers is not supported",
        ))
    }

    type GetContainerEventsStream = EventStream;

    async fn get_container_events(
        &self,
        request: Request<cri::GetEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let caller = Caller::of(&request)?;
        let mut changes = self.agent.pods().container_events();
        let (tx, rx) = tokio::sync::mpsc::channel(EVENTS_BUFFER);
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let change = tokio::select! {
                    change = changes.recv() => change,
                    () = tx.closed() => return,
                };
                let event = match change {
                    Ok(change) => match this.container_event(&caller, &change) {
                        Some(event) => Ok(event),
                        None => continue,
                    },
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(lost)) => {
                        Err(Status::aborted(format!(
                            "{lost} container events were lost to a slow reader: \
                             list the containers and subscribe again"
                        )))
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let end = event.is_err();
                if tx.send(event).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn list_metric_descriptors(
        &self,
        _request: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        Err(Status::unimplemented("CRI metrics are not supported"))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        Err(Status::unimplemented("CRI metrics are not supported"))
    }

    async fn runtime_config(
        &self,
        _request: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        // The agent writes cgroups itself (cgroupfs), systemd or not.
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: cri::CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }
}

/// Why container `name` of `pod` failed, if it did.
fn failure(pod: &proto::Pod, name: &str) -> Option<String> {
    let status = pod
        .status
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == name)?;
    (status.state == ContainerState::Failed as i32).then(|| status.reason.clone())
}

/// Makes the directory of a container's log file (the kubelet makes the
/// sandbox's; `crictl` users may not).
async fn make_log_dir(log_path: &str) -> Result<(), Status> {
    let Some(dir) = std::path::Path::new(log_path)
        .parent()
        .filter(|_| !log_path.is_empty())
        .map(|d| d.to_owned())
    else {
        return Ok(());
    };
    tokio::task::spawn_blocking(move || std::fs::create_dir_all(&dir).map_err(|e| (dir, e)))
        .await
        .map_err(|e| Status::internal(format!("log directory task: {e}")))?
        .map_err(|(dir, e)| {
            Status::failed_precondition(format!(
                "cannot make the log directory {}: {e}",
                dir.display()
            ))
        })
}

impl CriRuntime {
    /// The ready sandboxes the caller sees (one, when `wanted` names it).
    fn ready_sandboxes(&self, caller: &Caller, wanted: &str) -> Vec<String> {
        let only = (!wanted.is_empty())
            .then(|| self.find_sandbox(caller, wanted).ok())
            .flatten();
        if !wanted.is_empty() && only.is_none() {
            return Vec::new();
        }
        self.agent.pods().with_each(|pods| {
            pods.values()
                .filter(|p| visible(caller, p).is_some())
                .filter(|p| p.state() == proto::PodState::Running)
                .filter(|p| only.as_deref().is_none_or(|id| p.record.id == id))
                .map(|p| p.record.id.clone())
                .collect()
        })
    }

    /// The sandbox's usage and its containers'.
    async fn stats_of_pod(
        &self,
        caller: &Caller,
        pod_id: &str,
    ) -> Result<cri::LinuxPodSandboxStats, Status> {
        let usage = self.agent.pods().pod_stats(pod_id).await?;
        let at = super::unix_nanos(usage.read_at.as_ref());
        let containers = self.agent.pods().with_each(|pods| {
            let Some(entry) = pods.get(pod_id).filter(|p| visible(caller, p).is_some()) else {
                return Vec::new();
            };
            views(entry)
                .filter_map(|v| {
                    let live = usage
                        .containers
                        .iter()
                        .find(|c| c.name == v.status.name)?
                        .usage?;
                    Some(cri::ContainerStats {
                        attributes: Some(container::attributes(&v)),
                        cpu: Some(cpu_usage(at, &live)),
                        memory: Some(memory_usage(at, &live)),
                        writable_layer: None,
                        swap: None,
                    })
                })
                .collect()
        });
        let pod = usage.pod.unwrap_or_default();
        Ok(cri::LinuxPodSandboxStats {
            cpu: Some(cpu_usage(at, &pod)),
            memory: Some(memory_usage(at, &pod)),
            network: None,
            process: None,
            containers,
        })
    }

    async fn sandbox_stats(
        &self,
        caller: &Caller,
        pod_id: &str,
    ) -> Result<cri::PodSandboxStats, Status> {
        let linux = self.stats_of_pod(caller, pod_id).await?;
        let attributes = self.agent.pods().with_each(|pods| {
            let entry = pods.get(pod_id)?;
            let config = sandbox::stored_config(visible(caller, entry)?);
            Some(cri::PodSandboxAttributes {
                id: pod_id.to_string(),
                metadata: config.metadata,
                labels: config.labels,
                annotations: config.annotations,
            })
        });
        Ok(cri::PodSandboxStats {
            attributes,
            linux: Some(linux),
            windows: None,
        })
    }
}

fn cpu_usage(at: i64, usage: &proto::LiveUsage) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp: at,
        usage_core_nano_seconds: Some(cri::UInt64Value {
            value: usage.cpu_usage_ns,
        }),
        usage_nano_cores: None,
    }
}

fn memory_usage(at: i64, usage: &proto::LiveUsage) -> cri::MemoryUsage {
    let bytes = Some(cri::UInt64Value {
        value: usage.memory_current_bytes,
    });
    cri::MemoryUsage {
        timestamp: at,
        working_set_bytes: bytes,
        available_bytes: None,
        usage_bytes: bytes,
        rss_bytes: None,
        page_faults: None,
        major_page_faults: None,
    }
}
