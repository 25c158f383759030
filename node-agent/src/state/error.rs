//! What can go wrong with the state database.

use std::path::PathBuf;

use thiserror::Error;

/// A failed store operation. Nothing was written when it is returned.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database file could not be opened or created (missing directory,
    /// permissions, another agent holding it, a file that is not redb).
    #[error("cannot open state database {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: redb::DatabaseError,
    },
    /// redb failed (I/O error, full disk, corruption it detected).
    #[error("state database: {0}")]
    Db(#[from] redb::Error),
    /// The database was written by an agent with a newer schema.
    #[error("state database has schema version {found}; this agent reads version {supported}")]
    UnknownSchema {
        /// The version in the file.
        found: u64,
        /// The version this agent writes.
        supported: u64,
    },
    /// A stored record this agent cannot read: wrong format version,
    /// undecodable bytes, or required fields missing.
    #[error("{table} record {key:?} is unreadable: {reason}")]
    Corrupt {
        /// Its table.
        table: &'static str,
        /// Its key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An older file could not be brought up to this agent's schema;
    /// nothing was changed.
    #[error("cannot migrate the state database from schema version {from}: {reason}")]
    Migration {
        /// The version found.
        from: u64,
        /// What failed.
        reason: String,
    },
    /// An earlier commit failed: the store takes no more changes until the
    /// agent restarts and reloads what is durable.
    #[error(
        "the state store stopped after a failed commit ({0}); the agent restarts to reload its \
         durable state"
    )]
    Stopped(String),
    /// A record refused before writing (no id, required field missing).
    #[error("invalid {table} record: {reason}")]
    InvalidRecord {
        /// Its table.
        table: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Lets `?` lift every specific redb error into [`StoreError::Db`].
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}

from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
