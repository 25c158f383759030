//! The Kubernetes CRI (`runtime.v1` RuntimeService and ImageService) on
//! a Unix socket: the door a kubelet, `crictl` and `critest` use. It is a
//! second front door to the pods, containers, images and pools the
//! PodService serves, not a second implementation: a CRI sandbox is a pod
//! of the pod manager (shown by `nodectl pod list`, counted in its pool)
//! whose record also keeps the sandbox config the kubelet sent, and a CRI
//! container is one of its containers, with one run whose runtime id is
//! the CRI container id.
//!
//! What this module owns: the translation between the CRI's messages and
//! the agent's specs and statuses ([`sandbox`], [`container`]), the choice
//! of pool for a sandbox ([`CriConfig`]), the caller's authority, and the
//! socket ([`server`], and [`authority`] for the Go clients whose
//! requests tonic would otherwise refuse), and the streaming server that
//! `Exec` and `PortForward` send their clients to ([`streaming`]). What the kubelet owns and the agent leaves to it:
//! restarting containers (a CRI container runs once; the agent never
//! restarts it, and a sandbox never stops by itself when its containers
//! end) and removing log files.
//!
//! Who may call: the socket is made mode 0600 by the agent's user, and
//! every connection's peer credentials must name that user or root. The
//! caller then acts as a user of the namespaces of the CRI's pools (the
//! default pool's and the runtime handlers'), with the PodService's rules:
//! a sandbox lands only in those namespaces, and only the sandboxes made
//! through the CRI are listed, so a kubelet never sees (or garbage
//! collects) the Supervisor's pods.
//!
//! What it refuses, each with its status: a request without the metadata
//! the kubelet always sends, a second sandbox (or container) with the
//! same metadata and attempt, ids that name nothing (NOT_FOUND, except
//! where the CRI makes the call idempotent: stopping or removing what is
//! gone is OK), what the agent does not do yet (UNIMPLEMENTED: attach, a
//! PID namespace shared by a pod's containers), a pool annotation naming
//! a pool outside the CRI's namespaces (PERMISSION_DENIED). Nothing is made by a refused request.

pub mod authority;
pub mod container;
pub mod ids;
pub mod images;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod streaming;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use tonic::Status;

use crate::agent::pools::pool_id_or_root;
use crate::agent::Agent;
use crate::api::auth::Caller;
use stratum_api::certs::Role;

/// The annotation that places a sandbox in a pool other than its runtime
/// handler's (or the default).
pub const POOL_ANNOTATION: &str = "stratum.io/pool";

/// The default socket path.
pub const DEFAULT_SOCKET: &str = "/run/stratum/cri.sock";

/// The CRI door's configuration.
#[derive(Debug, Clone, Default)]
pub struct CriConfig {
    /// The Unix socket it listens on.
    pub socket: PathBuf,
    /// The pool a sandbox lands in when neither its runtime handler nor
    /// its annotation names one ("" for the root pool).
    pub default_pool: String,
    /// Runtime handlers (a RuntimeClass's handler) and their pools.
    pub handler_pools: BTreeMap<String, String>,
    /// Where `Exec` sends its clients; none: `Exec` is UNAVAILABLE.
    pub streaming: Option<std::sync::Arc<streaming::StreamingServer>>,
}

impl CriConfig {
    /// The pool a sandbox asks for: its annotation, else its handler's,
    /// else the default. An unknown handler is refused.
    pub fn pool_for(
        &self,
        handler: &str,
        annotations: &BTreeMap<String, String>,
    ) -> Result<String, Status> {
        if let Some(pool) = annotations.get(POOL_ANNOTATION) {
            return Ok(pool.clone());
        }
        if handler.is_empty() {
            return Ok(self.default_pool.clone());
        }
        self.handler_pools.get(handler).cloned().ok_or_else(|| {
            Status::invalid_argument(format!(
                "no runtime handler {handler:?} (configured: {})",
                self.handler_names().join(", ")
            ))
        })
    }

    /// The runtime handlers, the default ("") first.
    pub fn handler_names(&self) -> Vec<String> {
        std::iter::once(String::new())
            .chain(self.handler_pools.keys().cloned())
            .collect()
    }

    /// The CRI's caller: a user of its pools' namespaces. A configured
    /// pool that does not exist (yet) gives no namespace.
    pub fn caller(&self, agent: &Agent, peer_uid: Option<u32>) -> Caller {
        let namespaces: BTreeSet<String> = std::iter::once(&self.default_pool)
            .chain(self.handler_pools.values())
            .filter_map(|pool| agent.pools().namespace_of(&pool_id_or_root(pool)).ok())
            .collect();
        let name = match peer_uid {
            Some(uid) => format!("cri (uid {uid})"),
            None => "cri".to_string(),
        };
        Caller {
            name,
            role: Role::User,
            namespaces,
        }
    }
}

/// A timestamp as the CRI counts time: nanoseconds since the epoch.
pub fn unix_nanos(t: Option<&prost_types::Timestamp>) -> i64 {
    t.map_or(0, |t| {
        t.seconds
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(t.nanos))
    })
}
