//! The CRI's Unix socket: made mode 0600 before it listens, open to
//! connections from the agent's own user and root only (their peer
//! credentials are checked on every request, so a socket made reachable
//! by a looser mode or a bind mount still refuses everyone else).

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;
use tonic::service::InterceptorLayer;
use tonic::transport::Server;
use tonic::{Request, Status};

use super::authority::{self, CriConnection, PeerUid};
use super::images::CriImages;
use super::runtime::CriRuntime;
use super::CriConfig;
use crate::agent::Agent;

/// Largest CRI message: the kubelet's client allows 16 MiB.
const MAX_MESSAGE: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CriServeError {
    #[error("CRI socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CRI socket {0} is served by another process (is another agent running?)")]
    InUse(PathBuf),
    #[error("CRI socket {0} exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("CRI server on {path}: {source}")]
    Transport {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
}

fn socket_error(path: &Path) -> impl FnOnce(std::io::Error) -> CriServeError + '_ {
    move |source| CriServeError::Socket {
        path: path.to_owned(),
        source,
    }
}

/// Binds the socket: its directory made if missing, a stale socket
/// (nothing accepts on it) replaced, then mode 0600.
pub async fn bind(path: &Path) -> Result<UnixListener, CriServeError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(socket_error(path))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(CriServeError::NotASocket(path.to_owned()))
        }
        Ok(_) => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(CriServeError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(socket_error(path))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(socket_error(path)(e)),
    }
    // Until the chmod the socket has the umask's mode; the peer check on
    // every request is what keeps others out either way.
    let listener = UnixListener::bind(path).map_err(socket_error(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(socket_error(path))?;
    Ok(listener)
}

/// Serves the CRI on `listener` until `shutdown` completes, then removes
/// the socket.
pub async fn serve(
    agent: Arc<Agent>,
    config: CriConfig,
    listener: UnixListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), CriServeError> {
    let path = config.socket.clone();
    let config = Arc::new(config);
    // SAFETY: geteuid cannot fail and touches no memory.
    let own_uid = unsafe { libc::geteuid() };
    let admit = {
        let (agent, config) = (Arc::clone(&agent), Arc::clone(&config));
        move |request: Request<()>| admit(&agent, &config, own_uid, request)
    };
    tracing::info!(socket = %path.display(), "CRI serving");
    let served = Server::builder()
        .layer(InterceptorLayer::new(admit))
        .add_service(
            RuntimeServiceServer::new(CriRuntime::new(Arc::clone(&agent), Arc::clone(&config)))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            ImageServiceServer::new(CriImages::new(agent, Arc::clone(&config)))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
        .map_err(|source| CriServeError::Transport {
            path: path.clone(),
            source,
        });
    let _ = std::fs::remove_file(&path);
    served
}

/// The accepted connections, each through [`authority::accept`]; one
/// that cannot be taken is logged and dropped (an error would end the
/// server).
fn incoming(
    listener: UnixListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<CriConnection>> {
    UnixListenerStream::new(listener).filter_map(|accepted| {
        match accepted.and_then(authority::accept) {
            Ok(connection) => Some(Ok(connection)),
            Err(e) => {
                tracing::warn!("CRI socket: a connection could not be taken: {e}");
                None
            }
        }
    })
}

/// Every request: its peer must be the agent's user or root; it then
/// calls as the CRI's caller.
fn admit(
    agent: &Agent,
    config: &CriConfig,
    own_uid: u32,
    mut request: Request<()>,
) -> Result<Request<()>, Status> {
    let uid = request
        .extensions()
        .get::<PeerUid>()
        .map(|peer| peer.0)
        .ok_or_else(|| Status::unauthenticated("no peer credentials on this connection"))?;
    if uid != 0 && uid != own_uid {
        return Err(Status::permission_denied(format!(
            "uid {uid} may not use the CRI socket"
        )));
    }
    let caller = config.caller(agent, Some(uid));
    request.extensions_mut().insert(caller);
    Ok(request)
}
