//! The gRPC services over the [`Agent`]: thin adapters that run each call
//! on the blocking pool (agent calls fsync the store, write cgroup files
//! and spawn processes) and turn its errors into statuses.
//!
//! - [`host`]: the `stratum.v1.Host` service
//! - [`images`]: the `stratum.v1.ImageService` service
//! - [`pods`]: the `stratum.v1.PodService` service
//! - [`pools`]: the `stratum.v1.ResourcePools` service
//! - [`vms`]: the `stratum.v1.VirtualMachines` service
//! - [`server`]: the listener: mTLS (or loopback plaintext), health,
//!   reflection.

pub mod host;
pub mod images;
pub mod pods;
pub mod pools;
pub mod server;
pub mod vms;

use std::sync::Arc;

use tonic::Status;

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
