//! How the agent's failures reach a gRPC client: the pool model's refusals
//! keep their class; storage, cgroup and process failures are INTERNAL
//! with their message, since the client cannot fix them.

use tonic::{Code, Status};

use crate::cgroup::CgroupError;
use crate::pool::{ErrorKind, PoolError};
use crate::state::StoreError;

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
    Internal(String),
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
            AgentError::Store(_) | AgentError::Cgroup(_) | AgentError::Internal(_) => {
                Code::Internal
            }
        }
    }
}

impl From<AgentError> for Status {
    fn from(e: AgentError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;
