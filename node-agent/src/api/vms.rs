//! `stratum.v1.VirtualMachines`.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::agent::errors::AgentError;
use crate::agent::vms::DEFAULT_SHUTDOWN_TIMEOUT;
use crate::agent::Agent;
use stratum_api::proto;
use stratum_api::proto::virtual_machines_server::VirtualMachines;

pub struct VmService(pub Arc<Agent>);

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::VmEvent, Status>> + Send>>;
type ConsoleStream = Pin<Box<dyn Stream<Item = Result<proto::ConsoleOutput, Status>> + Send>>;

/// How often a console follower looks for new output.
const CONSOLE_POLL: Duration = Duration::from_millis(100);

#[tonic::async_trait]
impl VirtualMachines for VmService {
    async fn create(
        &self,
        request: Request<proto::CreateVmRequest>,
    ) -> Result<Response<proto::VirtualMachine>, Status> {
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| AgentError::InvalidArgument("spec is required".into()))?;
        super::blocking(&self.0, move |a| a.create_vm(&spec))
            .await
            .map(Response::new)
    }

    async fn start(
        &self,
        request: Request<proto::StartVmRequest>,
    ) -> Result<Response<proto::VirtualMachine>, Status> {
        let id = request.into_inner().id;
        let agent = self.0.clone();
        super::blocking(&self.0, move |_| agent.start_vm(&id))
            .await
            .map(Response::new)
    }

    async fn shutdown(
        &self,
        request: Request<proto::ShutdownVmRequest>,
    ) -> Result<Response<proto::VirtualMachine>, Status> {
        let r = request.into_inner();
        let timeout = match r.timeout_seconds {
            0 => DEFAULT_SHUTDOWN_TIMEOUT,
            s => Duration::from_secs(u64::from(s)),
        };
        let agent = self.0.clone();
        let handle = tokio::runtime::Handle::current();
        super::blocking(&self.0, move |_| {
            let _guard = handle.enter();
            agent.shutdown_vm(&r.id, timeout)
        })
        .await
        .map(Response::new)
    }

    async fn kill(
        &self,
        request: Request<proto::KillVmRequest>,
    ) -> Result<Response<proto::VirtualMachine>, Status> {
        let id = request.into_inner().id;
        super::blocking(&self.0, move |a| a.kill_vm(&id))
            .await
            .map(Response::new)
    }

    async fn pause(
        &self,
        request: Request<proto::PauseVmRequest>,
    ) -> Result<Response<proto::VirtualMachine>, Status> {
        let id = request.into_inner().id;
        super::blocking(&self.0, move |a| a.pause_vm(&id, true))
            .await
            .map(Response::new)
    }

    async fn resume(
        &self,
        request: Request<proto::ResumeVmRequest>,
    ) -> Result<Response<proto::VirtualMachine>, Status> {
        let id = request.into_inner().id;
        super::blocking(&self.0, move |a| a.pause_vm(&id, false))
            .await
            .map(Response::new)
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteVmRequest>,
    ) -> Result<Response<proto::DeleteVmResponse>, Status> {
        let id = request.into_inner().id;
        super::blocking(&self.0, move |a| a.delete_vm(&id))
            .await
            .map(|()| Response::new(proto::DeleteVmResponse {}))
    }

    async fn get(
        &self,
        request: Request<proto::GetVmRequest>,
    ) -> Result<Response<proto::VirtualMachine>, Status> {
        // Reads take the state's read lock only: no need for the blocking pool.
        let id = request.into_inner().id;
        Ok(Response::new(self.0.get_vm(&id)?))
    }

    async fn list(
        &self,
        request: Request<proto::ListVmsRequest>,
    ) -> Result<Response<proto::ListVmsResponse>, Status> {
        let vms = self.0.list_vms(&request.into_inner());
        Ok(Response::new(proto::ListVmsResponse { vms }))
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<proto::WatchVmsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let filter = request.into_inner();
        let mut events = self.0.subscribe();
        let agent = self.0.clone();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let event = match events.recv().await {
                    Ok(event) => event,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(Status::data_loss(format!("{n} events were dropped"))))
                            .await;
                        return;
                    }
                    Err(_) => return,
                };
                let wanted = (filter.vm_id.is_empty() || event.vm_id == filter.vm_id)
                    && (filter.pool_id.is_empty()
                        || agent.vm_pool(&event.vm_id).as_deref() == Some(&filter.pool_id));
                if wanted && tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ConsoleStream = ConsoleStream;

    async fn console(
        &self,
        request: Request<proto::ConsoleRequest>,
    ) -> Result<Response<ConsoleStream>, Status> {
        let r = request.into_inner();
        let id = r.id.clone();
        let path = super::blocking(&self.0, move |a| a.console_path(&id)).await?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(follow_console(path, r.include_history, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Streams what the vmm appends to its console log until the client goes
/// away; with `history`, the log so far first. The log may not exist yet
/// (the VM has not started): it is waited for.
async fn follow_console(
    path: PathBuf,
    history: bool,
    tx: mpsc::Sender<Result<proto::ConsoleOutput, Status>>,
) {
    let mut file = loop {
        match tokio::fs::File::open(&path).await {
            Ok(f) => break f,
            Err(_) if !tx.is_closed() => tokio::time::sleep(CONSOLE_POLL).await,
            Err(_) => return,
        }
    };
    if !history && file.seek(std::io::SeekFrom::End(0)).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match file.read(&mut buf).await {
            Ok(0) => {
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(CONSOLE_POLL).await;
            }
            Ok(n) => {
                let chunk = proto::ConsoleOutput {
                    data: buf[..n].to_vec(),
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx
                    .send(Err(Status::internal(format!("console: {e}"))))
                    .await;
                return;
            }
        }
    }
}
