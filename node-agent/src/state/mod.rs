//! Durable agent state in redb: resource pools, VMs (their spec and the
//! runtime record needed to re-adopt or clean up their `vmm` process after
//! a restart) and an id sequence, in one file in the agent's data dir.
//!
//! The rule the API relies on: a mutation returns only after its write
//! transaction is committed and fsynced, so whatever the agent acknowledged
//! survives `kill -9` and power loss; a refused or failed write leaves
//! nothing behind. Records are the generated protobuf messages of
//! `proto/stratum/agent/v1/records.proto` (see [`record`] for why protobuf).
//! The root pool is never stored: it is rebuilt from the host's capacity
//! and the configured system reserve at every start.
//!
//! - [`store`]: the [`Store`]: open, typed get/put/delete/list, atomic
//!   multi-record commits, the id sequence, and load-everything.
//! - [`journal`]: group commit: changes staged under a manager's lock,
//!   made durable together by one committer, waited for without the lock.
//! - [`record`]: the record layout and the checks made when decoding.
//! - [`error`]: what can fail, as a [`StoreError`].

pub mod error;
pub mod journal;
pub mod record;
pub mod store;

#[cfg(test)]
mod tests;

pub use error::StoreError;
pub use journal::{Journal, Ticket};
pub use record::{Record, FORMAT_VERSION};
pub use store::{
    Change, Quarantined, Snapshot, Store, IMAGE_INDEX_V1, PODNET_FILE_V1, SCHEMA_VERSION,
};
