//! How the agent's failures reach a gRPC client: the pool model's refusals
//! keep their class; storage, cgroup and process failures are INTERNAL
//! with their message, since the client cannot fix them.

use tonic::{Code, Status};

use crate::state::StoreError;
use stratum_cgroup::CgroupError;
use stratum_image::ImageError;
use stratum_net::NetError;
use stratum_pool::{ErrorKind, PoolError};
use stratum_runtime::RuntimeError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    #[error("cgroup: {0}")]
    Cgroup(#[from] CgroupError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Internal(String),
    #[error("image: {0}")]
    Image(#[from] ImageError),
    #[error("network: {0}")]
    Net(#[from] NetError),
    #[error("container runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    ResourceExhausted(String),
}

impl AgentError {
    pub fn code(&self) -> Code {
        match self {
            AgentError::Pool(e) => match e.kind() {
                ErrorKind::InvalidArgument => Code::InvalidArgument,
                ErrorKind::NotFound => Code::NotFound,
                ErrorKind::AlreadyExists => Code::AlreadyExists,
                ErrorKind::FailedPrecondition => Code::FailedPrecondition,
                ErrorKind::ResourceExhausted => Code::ResourceExhausted,
            },
            AgentError::InvalidArgument(_) => Code::InvalidArgument,
            AgentError::NotFound(_) => Code::NotFound,
            AgentError::AlreadyExists(_) => Code::AlreadyExists,
            AgentError::FailedPrecondition(_) => Code::FailedPrecondition,
            AgentError::PermissionDenied(_) => Code::PermissionDenied,
            // The agent restarts after it: the call may be retried then.
            AgentError::Store(StoreError::Stopped(_)) => Code::Unavailable,
            AgentError::Store(_) | AgentError::Cgroup(_) | AgentError::Internal(_) => {
                Code::Internal
            }
            AgentError::Image(e) => image_code(e),
            AgentError::Net(e) => match e {
                NetError::InvalidArgument(_) | NetError::PortOutOfRange { .. } => {
                    Code::InvalidArgument
                }
                NetError::PortInUse { .. }
                | NetError::PortHeldByHost { .. }
                | NetError::AlreadyAttached { .. }
                | NetError::NetworkExists(_)
                | NetError::Conflict(_)
                | NetError::AddressTaken { .. } => Code::AlreadyExists,
                NetError::NoSuchNetwork(_) => Code::NotFound,
                NetError::NotAdmitted { .. } => Code::PermissionDenied,
                NetError::InUse { .. } => Code::FailedPrecondition,
                NetError::Exhausted { .. } => Code::ResourceExhausted,
                _ => Code::Internal,
            },
            AgentError::Runtime(RuntimeError::ExecTimeout { .. })
            | AgentError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            AgentError::Runtime(_) => Code::Internal,
            AgentError::Unimplemented(_) => Code::Unimplemented,
            AgentError::Unavailable(_) => Code::Unavailable,
            AgentError::ResourceExhausted(_) => Code::ResourceExhausted,
        }
    }
}

/// The class of an image store failure.
fn image_code(e: &ImageError) -> Code {
    match e {
        ImageError::UnknownImage(_)
        | ImageError::RegistryNotFound { .. }
        | ImageError::NoMatchingPlatform { .. } => Code::NotFound,
        ImageError::InvalidReference { .. }
        | ImageError::InvalidDigest(_)
        | ImageError::UnsupportedMediaType { .. }
        | ImageError::InvalidImage { .. }
        | ImageError::RefusedEntry { .. }
        | ImageError::BadArchive { .. }
        | ImageError::Import { .. } => Code::InvalidArgument,
        ImageError::DigestMismatch { .. } | ImageError::SizeMismatch { .. } => Code::DataLoss,
        ImageError::RegistryAuth { .. } => Code::PermissionDenied,
        ImageError::RegistryTls { .. } | ImageError::Registry { .. } => Code::Unavailable,
        ImageError::InUse { .. } => Code::FailedPrecondition,
        ImageError::DeclaredTooLarge { .. } | ImageError::NoSpace { .. } => Code::ResourceExhausted,
        ImageError::CorruptIndex { .. } | ImageError::Index(_) | ImageError::Io { .. } => {
            Code::Internal
        }
    }
}

/// Longest message a status carries: gRPC sends it as a header, and a
/// header over the peer's limit turns the answer into RESOURCE_EXHAUSTED.
const MAX_STATUS_MESSAGE: usize = 2048;

impl From<AgentError> for Status {
    fn from(e: AgentError) -> Status {
        let mut message = e.to_string();
        if message.len() > MAX_STATUS_MESSAGE {
            let mut end = MAX_STATUS_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        Status::new(e.code(), message)
    }
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;
