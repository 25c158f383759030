//! The Stratum node API as both ends see it: the `stratum.v1` protobuf
//! messages and gRPC stubs generated from `proto/stratum/v1` ([`proto`]),
//! the mTLS helpers the agent and `nodectl` share ([`tls`]) and client
//! identities: roles and namespaces in certificates, issuing, revocation
//! ([`certs`]). With the `serde` feature the messages serialise as JSON
//! (`json`).
//!
//! It is the bottom of the node agent's crates: it knows nothing of pools,
//! cgroups, images or processes, so a client (`nodectl`, a Supervisor)
//! links it without linking the agent.

pub mod certs;
#[cfg(feature = "serde")]
pub mod json;
pub mod proto;
pub mod tls;
