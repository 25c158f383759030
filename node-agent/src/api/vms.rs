//! `stratum.v1.VirtualMachines`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::access;
use super::auth::Caller;
use crate::agent::errors::AgentError;
use crate::agent::vms::DEFAULT_SHUTDOWN_TIMEOUT;
use crate::agent::Agent;
use stratum_api::proto;
use stratum_api::proto::virtual_machines_server::VirtualMachines;

pub struct VmService(pub Arc<Agent>);

/// The calls that change one VM name it by id.
trait NamesVm {
    fn vm_id(&self) -> &str;
}

macro_rules! names_vm {
    ($($request:ty),*) => {
        $(impl NamesVm for $request {
            fn vm_id(&self) -> &str {
                &self.id
            }
        })*
    };
}

names_vm!(
    proto::StartVmRequest,
    proto::KillVmRequest,
    proto::PauseVmRequest,
    proto::ResumeVmRequest,
    proto::DeleteVmRequest
);

impl VmService {
    /// The id of the VM `request` changes, once its caller may.
    fn changed_vm<R: NamesVm>(&self, request: Request<R>) -> Result<String, Status> {
        let caller = Caller::of(&request)?;
        let id = request.into_inner().vm_id().to_string();
        access::change_vm(&self.0, &caller, &id)?;
        Ok(id)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::VmEvent, Status>> + Send>>;
type ConsoleStream = Pin<Box<dyn Stream<Item = Result<proto::ConsoleOutput, Status>> + Send>>;

#[tonic::async_trait]
impl VirtualMachines for VmService {
    async fn create(
        &self,
        request: Request<proto::CreateVmRequest>,
    ) -> Result<Response<proto::VirtualMachine>, Status> {
        let caller = Caller::of(&request)?;
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| AgentError::InvalidArgument("spec is required".into()))?;
        access::create_in_pool(&self.0, &caller, &spec.pool_id, "VMs")?;
        super::blocking(&self.0, move |a| a.vms().create(&spec))
            .await
            .map(Response::new)
    }

    async fn start(
        &self,
        request: Request<proto::StartVmRequest>,
    ) -> Result<Response<proto::VirtualMachine>, Status> {
        let id = self.changed_vm(request)?;
        let agent = self.0.clone();
        super::blocking(&self.0, move |_| agent.vms().start(&id))
            .await
            .map(Response::new)
    }

    async fn shutdown(
        &self,
        request: Request<proto::ShutdownVmRequest>,
    ) -> Result<Response<proto::VirtualMachine>, Status> {
        access::change_vm(&self.0, &Caller::of(&request)?, &request.get_ref().id)?;
        let r = request.into_inner();
        let timeout = match r.timeout_seconds {
            0 => DEFAULT_SHUTDOWN_TIMEOUT,
            s => Duration::from_secs(u64::from(s)),
        };
        let agent = self.0.clone();
        let handle = tokio::runtime::Handle::current();
        super::blocking(&self.0, move |_| {
            let _guard = handle.enter();
            agent.vms().shutdown(&r.id, timeout)
        })
        .await
        .map(Response::new)
    }

    async fn kill(
        &self,
        request: Request<proto::KillVmRequest>,
    ) -> Result<Response<proto::VirtualMachine>, Status> {
        let id = self.changed_vm(request)?;
        super::blocking(&self.0, move |a| a.vms().kill(&id))
            .await
            .map(Response::new)
    }

    async fn pause(
        &self,
        request: Request<proto::PauseVmRequest>,
    ) -> Result<Response<proto::VirtualMachine>, Status> {
        let id = self.changed_vm(request)?;
        super::blocking(&self.0, move |a| a.vms().pause(&id, true))
            .await
            .map(Response::new)
    }

    async fn resume(
        &self,
        request: Request<proto::ResumeVmRequest>,
    ) -> Result<Response<proto::VirtualMachine>, Status> {
        let id = self.changed_vm(request)?;
        super::blocking(&self.0, move |a| a.vms().pause(&id, false))
            .await
            .map(Response::new)
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteVmRequest>,
    ) -> Result<Response<proto::DeleteVmResponse>, Status> {
        let id = self.changed_vm(request)?;
        super::blocking(&self.0, move |a| a.vms().delete(&id))
            .await
            .map(|()| Response::new(proto::DeleteVmResponse {}))
    }

    async fn get(
        &self,
        request: Request<proto::GetVmRequest>,
    ) -> Result<Response<proto::VirtualMachine>, Status> {
        // Reads take the state's read lock only: no need for the blocking pool.
        let caller = Caller::of(&request)?;
        let id = request.into_inner().id;
        access::read_vm(&self.0, &caller, &id)?;
        let vm = self.0.vms().get(&id)?;
        super::durable(&self.0, Response::new(vm)).await
    }

    async fn list(
        &self,
        request: Request<proto::ListVmsRequest>,
    ) -> Result<Response<proto::ListVmsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let vms = self.0.vms().list(&request.into_inner());
        let vms = access::visible_vms(&self.0, &caller, vms);
        super::durable(&self.0, Response::new(proto::ListVmsResponse { vms })).await
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<proto::WatchVmsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let caller = Caller::of(&request)?;
        let filter = request.into_inner();
        if !filter.vm_id.is_empty() {
            access::read_vm(&self.0, &caller, &filter.vm_id)?;
        }
        let mut events = self.0.vms().subscribe();
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
                // Events are sent when a change is staged: forwarded once
                // it is durable.
                if let Err(e) = agent.durable_view().await {
                    let _ = tx.send(Err(Status::from(e))).await;
                    return;
                }
                let wanted = (filter.vm_id.is_empty() || event.vm_id == filter.vm_id)
                    && (filter.pool_id.is_empty()
                        || agent.vms().pool_of(&event.vm_id).as_deref() == Some(&filter.pool_id))
                    && access::may_read_vm(&agent, &caller, &event.vm_id);
                if wanted && tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn snapshot(
        &self,
        request: Request<proto::SnapshotVmRequest>,
    ) -> Result<Response<proto::VmSnapshot>, Status> {
        access::change_vm(&self.0, &Caller::of(&request)?, &request.get_ref().id)?;
        let r = request.into_inner();
        super::blocking(&self.0, move |a| a.vms().snapshot(&r.id, &r.name))
            .await
            .map(Response::new)
    }

    async fn get_snapshot(
        &self,
        request: Request<proto::GetSnapshotRequest>,
    ) -> Result<Response<proto::VmSnapshot>, Status> {
        let caller = Caller::of(&request)?;
        let id = request.into_inner().id;
        access::read_snapshot(&self.0, &caller, &id)?;
        let snapshot = self.0.vms().get_snapshot(&id)?;
        super::durable(&self.0, Response::new(snapshot)).await
    }

    async fn list_snapshots(
        &self,
        request: Request<proto::ListSnapshotsRequest>,
    ) -> Result<Response<proto::ListSnapshotsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let snapshots = self.0.vms().list_snapshots(&request.into_inner().vm_id);
        let snapshots = access::visible_snapshots(&self.0, &caller, snapshots);
        super::durable(
            &self.0,
            Response::new(proto::ListSnapshotsResponse { snapshots }),
        )
        .await
    }

    async fn delete_snapshot(
        &self,
        request: Request<proto::DeleteSnapshotRequest>,
    ) -> Result<Response<proto::DeleteSnapshotResponse>, Status> {
        let caller = Caller::of(&request)?;
        let id = request.into_inner().id;
        access::change_snapshot(&self.0, &caller, &id)?;
        super::blocking(&self.0, move |a| a.vms().delete_snapshot(&id))
            .await
            .map(|()| Response::new(proto::DeleteSnapshotResponse {}))
    }

    async fn clone_vm(
        &self,
        request: Request<proto::CloneVmRequest>,
    ) -> Result<Response<proto::CloneVmResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        access::change_snapshot(&self.0, &caller, &r.snapshot_id)?;
        let pool = self
            .0
            .vms()
            .snapshot_pool(&r.snapshot_id)
            .unwrap_or_default();
        access::create_in_pool(&self.0, &caller, &pool, "VMs")?;
        let agent = self.0.clone();
        let handle = tokio::runtime::Handle::current();
        super::blocking(&self.0, move |_| {
            // Each clone's start watches its vmm on the runtime.
            let _guard = handle.enter();
            agent.vms().clone_vm(
                &r.snapshot_id,
                &r.name,
                r.count,
                &r.labels.into_iter().collect(),
            )
        })
        .await
        .map(|vms| Response::new(proto::CloneVmResponse { vms }))
    }

    type ConsoleStream = ConsoleStream;

    async fn console(
        &self,
        request: Request<proto::ConsoleRequest>,
    ) -> Result<Response<ConsoleStream>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        access::read_vm(&self.0, &caller, &r.id)?;
        let follower =
            super::blocking(&self.0, move |a| a.vms().console(&r.id, r.include_history)).await?;
        let stream = follower.into_stream().map(|chunk| {
            chunk
                .map(|data| proto::ConsoleOutput { data })
                .map_err(|e| Status::internal(format!("console: {e}")))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
