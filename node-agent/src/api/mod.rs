//! The gRPC services over the [`Agent`]: thin adapters that run each call
//! on the blocking pool (agent calls wait for the store's fsync, write
//! cgroup files and spawn processes) and turn its errors into statuses.
//! A read answers through [`durable`]: only once what it saw is durable.
//!
//! - [`auth`]: who is calling (client certificate, revocation list) and
//!   the policy of what each role may do
//! - [`access`]: the namespace of each object a call names, and the
//!   checks the services make with it
//! - [`host`]: the `stratum.v1.Host` service
//! - [`images`]: the `stratum.v1.ImageService` service
//! - [`networks`]: the `stratum.v1.Networks` service
//! - [`pods`]: the `stratum.v1.PodService` service
//! - [`pools`]: the `stratum.v1.ResourcePools` service
//! - [`vms`]: the `stratum.v1.VirtualMachines` service
//! - [`server`]: the listener: mTLS (or loopback plaintext), health,
//!   reflection.

pub mod access;
pub mod auth;
pub mod host;
pub mod images;
pub mod networks;
pub mod pods;
pub mod pools;
pub mod server;
pub mod vms;

use std::sync::Arc;

use tonic::{Response, Status};

use crate::agent::errors::AgentError;
use crate::agent::Agent;

/// Runs `f` on the agent off the async runtime's threads.
pub async fn blocking<T, F>(agent: &Arc<Agent>, f: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce(&Agent) -> Result<T, AgentError> + Send + 'static,
{
    let agent = Arc::clone(agent);
    tokio::task::spawn_blocking(move || f(&agent))
        .await
        .map_err(|e| Status::internal(format!("agent task failed: {e}")))?
        .map_err(Status::from)
}

/// `out`, once everything the agent had staged when the call looked at
/// its state is durable: a read must not show what a crash could take
/// back. Mutations of pools and VMs settle their own changes; reads and
/// pod calls (whose records change at many points) come through here.
pub async fn durable<T>(agent: &Agent, out: T) -> Result<T, Status> {
    agent.durable_view().await?;
    Ok(out)
}

/// Runs a mutation on its own task: a client that goes away mid-call
/// (tonic drops the handler's future) must not cancel it between two
/// steps and leave a half-made pod; it finishes, or undoes itself, anyway.
pub async fn detached<T, F, Fut>(agent: &Arc<Agent>, f: F) -> Result<Response<T>, Status>
where
    T: Send + 'static,
    F: FnOnce(Arc<Agent>) -> Fut,
    Fut: std::future::Future<Output = Result<T, AgentError>> + Send + 'static,
{
    let out = tokio::spawn(f(Arc::clone(agent)))
        .await
        .map_err(|e| Status::internal(format!("agent task failed: {e}")))?
        .map(Response::new)
        .map_err(Status::from)?;
    durable(agent, out).await
}
