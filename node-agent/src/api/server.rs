//! The agent's gRPC listener: every service plus grpc.health.v1 and
//! server reflection on one port, behind mTLS unless the operator asked
//! for plaintext on a loopback address.

use std::net::SocketAddr;
use std::sync::Arc;

use tonic::service::InterceptorLayer;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use super::auth::Authenticator;
use super::host::HostService;
use super::images::ImageApi;
use super::networks::NetworkService;
use super::pods::PodApi;
use super::pools::{PoolService, PoolsApi};
use super::vms::VmService;
use crate::agent::Agent;
use stratum_api::proto::host_server::HostServer;
use stratum_api::proto::image_service_server::ImageServiceServer;
use stratum_api::proto::networks_server::NetworksServer;
use stratum_api::proto::pod_service_server::PodServiceServer;
use stratum_api::proto::resource_pools_server::ResourcePoolsServer;
use stratum_api::proto::virtual_machines_server::VirtualMachinesServer;
use stratum_api::{proto, tls};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server on {addr}: {source}")]
    Transport {
        addr: SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Serves until `shutdown` completes. With `insecure`, plaintext on a
/// loopback `addr` only; otherwise mTLS with the certificates in the
/// agent's cert dir.
pub async fn serve(
    agent: Arc<Agent>,
    addr: SocketAddr,
    insecure: bool,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let mut builder = Server::builder();
    let auth = if insecure {
        tls::check_plaintext_allowed(addr, insecure)?;
        Authenticator::plaintext()
    } else {
        let config = tls::server_tls_config(&agent.config().cert_dir)?;
        builder = builder
            .tls_config(config)
            .map_err(|source| ServeError::Transport { addr, source })?;
        Authenticator::mtls(&agent.config().cert_dir)
    };
    // Every request, health and reflection included, is admitted first.
    let mut builder = builder.layer(InterceptorLayer::new(move |request| auth.admit(request)));
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<HostServer<HostService>>().await;
    health
        .set_serving::<ResourcePoolsServer<PoolService>>()
        .await;
    health
        .set_serving::<VirtualMachinesServer<VmService>>()
        .await;
    health.set_serving::<ImageServiceServer<ImageApi>>().await;
    health.set_serving::<PodServiceServer<PodApi>>().await;
    health.set_serving::<NetworksServer<NetworkService>>().await;
    // Both reflection versions: grpcurl and grpc-java speak v1, Python's
    // grpcio-reflection and older grpcurl only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    // The bound address, port 0 resolved: tests and scripts read it here.
    tracing::info!(%bound, tls = !insecure, "node-agent serving");
    builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(HostServer::new(HostService(agent.clone())))
        .add_service(PoolsApi::new(agent.clone()))
        .add_service(ImageServiceServer::new(ImageApi(agent.clone())))
        .add_service(PodServiceServer::new(PodApi(agent.clone())))
        .add_service(NetworksServer::new(NetworkService(agent.clone())))
        .add_service(VirtualMachinesServer::new(VmService(agent)))
        .serve_with_incoming_shutdown(
            // Replies are small and each waits for its request: without
            // TCP_NODELAY, Nagle meets delayed ACKs and a call takes 40 ms.
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
        .map_err(|source| ServeError::Transport { addr, source })
}
