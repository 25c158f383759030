//! `stratum.v1.PodService`: the agent's pods over gRPC. The calls are
//! async end to end (runtime commands are awaited, not blocked on); logs
//! stream from the container's CRI log file.

use std::pin::Pin;
use std::sync::Arc;

use prost_types::Timestamp;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::agent::errors::AgentError;
use crate::agent::Agent;
use stratum_api::proto;
use stratum_api::proto::pod_service_server::PodService;
use stratum_runtime::{CriLogLine, LogFollower, LogStream};

pub struct PodApi(pub Arc<Agent>);

type LogRecordStream = Pin<Box<dyn Stream<Item = Result<proto::LogRecord, Status>> + Send>>;

/// Log records buffered for a slow client before the reader waits.
const LOG_BUFFER: usize = 256;

#[tonic::async_trait]
impl PodService for PodApi {
    async fn run_pod(
        &self,
        request: Request<proto::RunPodRequest>,
    ) -> Result<Response<proto::Pod>, Status> {
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| AgentError::InvalidArgument("spec is required".into()))?;
        detached(&self.0, move |a| async move { a.run_pod(spec).await }).await
    }

    async fn stop_pod(
        &self,
        request: Request<proto::StopPodRequest>,
    ) -> Result<Response<proto::Pod>, Status> {
        let r = request.into_inner();
        let grace = Agent::default_grace(r.grace_period_seconds);
        detached(
            &self.0,
            move |a| async move { a.stop_pod(&r.id, grace).await },
        )
        .await
    }

    async fn remove_pod(
        &self,
        request: Request<proto::RemovePodRequest>,
    ) -> Result<Response<proto::RemovePodResponse>, Status> {
        let id = request.into_inner().id;
        super::blocking(&self.0, move |a| a.remove_pod(&id))
            .await
            .map(|()| Response::new(proto::RemovePodResponse {}))
    }

    async fn get_pod(
        &self,
        request: Request<proto::GetPodRequest>,
    ) -> Result<Response<proto::Pod>, Status> {
        Ok(Response::new(self.0.get_pod(&request.into_inner().id)?))
    }

    async fn list_pods(
        &self,
        request: Request<proto::ListPodsRequest>,
    ) -> Result<Response<proto::ListPodsResponse>, Status> {
        let pods = self.0.list_pods(&request.into_inner());
        Ok(Response::new(proto::ListPodsResponse { pods }))
    }

    async fn create_container(
        &self,
        request: Request<proto::CreateContainerRequest>,
    ) -> Result<Response<proto::Pod>, Status> {
        let r = request.into_inner();
        let container = r
            .container
            .ok_or_else(|| AgentError::InvalidArgument("container is required".into()))?;
        detached(&self.0, move |a| async move {
            a.create_container(&r.pod_id, container).await
        })
        .await
    }

    async fn start_container(
        &self,
        request: Request<proto::StartContainerRequest>,
    ) -> Result<Response<proto::Pod>, Status> {
        let r = request.into_inner();
        detached(&self.0, move |a| async move {
            a.start_container(&r.pod_id, &r.container_name).await
        })
        .await
    }

    async fn stop_container(
        &self,
        request: Request<proto::StopContainerRequest>,
    ) -> Result<Response<proto::Pod>, Status> {
        let r = request.into_inner();
        let grace = Agent::default_grace(r.grace_period_seconds);
        detached(&self.0, move |a| async move {
            a.stop_container(&r.pod_id, &r.container_name, grace).await
        })
        .await
    }

    async fn remove_container(
        &self,
        request: Request<proto::RemoveContainerRequest>,
    ) -> Result<Response<proto::Pod>, Status> {
        let r = request.into_inner();
        detached(&self.0, move |a| async move {
            a.remove_container(&r.pod_id, &r.container_name).await
        })
        .await
    }

    async fn exec_sync(
        &self,
        request: Request<proto::ExecSyncRequest>,
    ) -> Result<Response<proto::ExecSyncResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(
            self.0
                .exec_sync(&r.pod_id, &r.container_name, r.command, r.timeout_seconds)
                .await?,
        ))
    }

    type LogsStream = LogRecordStream;

    async fn logs(
        &self,
        request: Request<proto::LogsRequest>,
    ) -> Result<Response<LogRecordStream>, Status> {
        let r = request.into_inner();
        let follower = self
            .0
            .container_logs(&r.pod_id, &r.container_name, r.follow)
            .await?;
        let skip = match (r.tail_lines, &follower) {
            (Some(tail), Some(_)) => {
                let path = self.0.pod_log_path(&r.pod_id, &r.container_name);
                count_records(&path).await?.saturating_sub(u64::from(tail))
            }
            _ => 0,
        };
        let (tx, rx) = mpsc::channel(LOG_BUFFER);
        if let Some(follower) = follower {
            tokio::spawn(send_records(follower, skip, tx));
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stats(
        &self,
        request: Request<proto::PodStatsRequest>,
    ) -> Result<Response<proto::PodStats>, Status> {
        Ok(Response::new(
            self.0.pod_stats(&request.into_inner().pod_id).await?,
        ))
    }
}

/// Runs a mutation on its own task: a client that goes away mid-call
/// (tonic drops the handler's future) must not cancel it between two
/// steps and leave a half-made pod; it finishes, or undoes itself, anyway.
async fn detached<T, F, Fut>(agent: &Arc<Agent>, f: F) -> Result<Response<T>, Status>
where
    T: Send + 'static,
    F: FnOnce(Arc<Agent>) -> Fut,
    Fut: std::future::Future<Output = Result<T, AgentError>> + Send + 'static,
{
    tokio::spawn(f(Arc::clone(agent)))
        .await
        .map_err(|e| Status::internal(format!("agent task failed: {e}")))?
        .map(Response::new)
        .map_err(Status::from)
}

/// How many records the log holds now.
async fn count_records(path: &std::path::Path) -> Result<u64, Status> {
    let mut reader = LogFollower::open(path, None).map_err(AgentError::from)?;
    let mut count = 0u64;
    while reader.next().await.map_err(AgentError::from)?.is_some() {
        count += 1;
    }
    Ok(count)
}

/// Streams records after the first `skip` until the follower ends or the
/// client goes away.
async fn send_records(
    mut follower: LogFollower,
    mut skip: u64,
    tx: mpsc::Sender<Result<proto::LogRecord, Status>>,
) {
    loop {
        let next = tokio::select! {
            next = follower.next() => next,
            () = tx.closed() => return,
        };
        match next {
            Ok(Some(_)) if skip > 0 => skip -= 1,
            Ok(Some(line)) => {
                if tx.send(Ok(log_record(line))).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                return;
            }
        }
    }
}

fn log_record(line: CriLogLine) -> proto::LogRecord {
    proto::LogRecord {
        time: line.timestamp.parse::<Timestamp>().ok(),
        stream: match line.stream {
            LogStream::Stdout => proto::LogStream::Stdout as i32,
            LogStream::Stderr => proto::LogStream::Stderr as i32,
        },
        partial: line.partial,
        message: line.message,
    }
}
