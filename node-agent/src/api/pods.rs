//! `stratum.v1.PodService`: the agent's pods over gRPC. The calls are
//! async end to end (runtime commands are awaited, not blocked on); logs
//! stream from the container's CRI log file.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::access;
use super::auth::Caller;
use crate::agent::errors::AgentError;
use crate::agent::{Agent, PodManager};
use stratum_api::proto;
use stratum_api::proto::pod_service_server::PodService;

pub struct PodApi(pub Arc<Agent>);

type LogRecordStream = Pin<Box<dyn Stream<Item = Result<proto::LogRecord, Status>> + Send>>;

#[tonic::async_trait]
impl PodService for PodApi {
    async fn run_pod(
        &self,
        request: Request<proto::RunPodRequest>,
    ) -> Result<Response<proto::Pod>, Status> {
        let caller = Caller::of(&request)?;
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| AgentError::InvalidArgument("spec is required".into()))?;
        access::create_in_pool(&self.0, &caller, &spec.pool_id, "pods")?;
        let namespace = access::pool_namespace(&self.0, &spec.pool_id)?;
        let images = spec.containers.iter().map(|c| c.image.as_str());
        access::images_usable(&self.0, &caller, &namespace, images)?;
        super::detached(
            &self.0,
            move |a| async move { a.pods().run_pod(spec).await },
        )
        .await
    }

    async fn stop_pod(
        &self,
        request: Request<proto::StopPodRequest>,
    ) -> Result<Response<proto::Pod>, Status> {
        access::change_pod(&self.0, &Caller::of(&request)?, &request.get_ref().id)?;
        let r = request.into_inner();
        let grace = PodManager::default_grace(r.grace_period_seconds);
        super::detached(&self.0, move |a| async move {
            a.pods().stop_pod(&r.id, grace).await
        })
        .await
    }

    async fn remove_pod(
        &self,
        request: Request<proto::RemovePodRequest>,
    ) -> Result<Response<proto::RemovePodResponse>, Status> {
        access::change_pod(&self.0, &Caller::of(&request)?, &request.get_ref().id)?;
        let id = request.into_inner().id;
        super::blocking(&self.0, move |a| a.pods().remove_pod(&id)).await?;
        super::durable(&self.0, Response::new(proto::RemovePodResponse {})).await
    }

    async fn get_pod(
        &self,
        request: Request<proto::GetPodRequest>,
    ) -> Result<Response<proto::Pod>, Status> {
        access::read_pod(&self.0, &Caller::of(&request)?, &request.get_ref().id)?;
        let pod = self.0.pods().get_pod(&request.into_inner().id)?;
        super::durable(&self.0, Response::new(pod)).await
    }

    async fn list_pods(
        &self,
        request: Request<proto::ListPodsRequest>,
    ) -> Result<Response<proto::ListPodsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let pods = self.0.pods().list_pods(&request.into_inner());
        let pods = access::visible_pods(&caller, pods);
        super::durable(&self.0, Response::new(proto::ListPodsResponse { pods })).await
    }

    async fn create_container(
        &self,
        request: Request<proto::CreateContainerRequest>,
    ) -> Result<Response<proto::Pod>, Status> {
        let caller = Caller::of(&request)?;
        access::change_pod(&self.0, &caller, &request.get_ref().pod_id)?;
        let r = request.into_inner();
        let container = r
            .container
            .ok_or_else(|| AgentError::InvalidArgument("container is required".into()))?;
        let namespace = access::pod_namespace(&self.0, &r.pod_id)?;
        access::images_usable(&self.0, &caller, &namespace, [container.image.as_str()])?;
        super::detached(&self.0, move |a| async move {
            a.pods().create_container(&r.pod_id, container).await
        })
        .await
    }

    async fn start_container(
        &self,
        request: Request<proto::StartContainerRequest>,
    ) -> Result<Response<proto::Pod>, Status> {
        access::change_pod(&self.0, &Caller::of(&request)?, &request.get_ref().pod_id)?;
        let r = request.into_inner();
        super::detached(&self.0, move |a| async move {
            a.pods().start_container(&r.pod_id, &r.container_name).await
        })
        .await
    }

    async fn stop_container(
        &self,
        request: Request<proto::StopContainerRequest>,
    ) -> Result<Response<proto::Pod>, Status> {
        access::change_pod(&self.0, &Caller::of(&request)?, &request.get_ref().pod_id)?;
        let r = request.into_inner();
        let grace = PodManager::default_grace(r.grace_period_seconds);
        super::detached(&self.0, move |a| async move {
            a.pods()
                .stop_container(&r.pod_id, &r.container_name, grace)
                .await
        })
        .await
    }

    async fn remove_container(
        &self,
        request: Request<proto::RemoveContainerRequest>,
    ) -> Result<Response<proto::Pod>, Status> {
        access::change_pod(&self.0, &Caller::of(&request)?, &request.get_ref().pod_id)?;
        let r = request.into_inner();
        super::detached(&self.0, move |a| async move {
            a.pods()
                .remove_container(&r.pod_id, &r.container_name)
                .await
        })
        .await
    }

    async fn exec_sync(
        &self,
        request: Request<proto::ExecSyncRequest>,
    ) -> Result<Response<proto::ExecSyncResponse>, Status> {
        // Running a command in a container changes what is in it.
        access::change_pod(&self.0, &Caller::of(&request)?, &request.get_ref().pod_id)?;
        let r = request.into_inner();
        Ok(Response::new(
            self.0
                .pods()
                .exec_sync(&r.pod_id, &r.container_name, r.command, r.timeout_seconds)
                .await?,
        ))
    }

    type LogsStream = LogRecordStream;

    async fn logs(
        &self,
        request: Request<proto::LogsRequest>,
    ) -> Result<Response<LogRecordStream>, Status> {
        access::read_pod(&self.0, &Caller::of(&request)?, &request.get_ref().pod_id)?;
        let r = request.into_inner();
        let records = self
            .0
            .pods()
            .container_log_records(&r.pod_id, &r.container_name, r.follow, r.tail_lines)
            .await?;
        let stream = ReceiverStream::new(records).map(|r| r.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn stats(
        &self,
        request: Request<proto::PodStatsRequest>,
    ) -> Result<Response<proto::PodStats>, Status> {
        access::read_pod(&self.0, &Caller::of(&request)?, &request.get_ref().pod_id)?;
        Ok(Response::new(
            self.0
                .pods()
                .pod_stats(&request.into_inner().pod_id)
                .await?,
        ))
    }
}
