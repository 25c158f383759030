//! The pod network's durable state: IPAM's allocations (see
//! [`super::ipam`]), a record per attached pod and the namespace policies,
//! in tables of a redb database — the agent's one state file, shared with
//! [`Store::with_db`], or a file of its own ([`Store::open`], for using the
//! network alone). Its tables are named `podnet_*` and `ipam_*`, so they
//! live beside anyone else's.
//!
//! A pod's record is written in the same transaction as its address
//! allocation, before any link or netns exists, so after a crash at any
//! point the record names everything that may be left in the kernel and
//! reconcile can finish or undo it; it is deleted (with the address
//! released) only after the kernel state is gone. Every commit is fsynced
//! (redb's `Durability::Immediate`). [`import_file`] moves a state file
//! of its own into a shared database.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::cidr::Ipv4Cidr;
use super::error::{PodNetError, Result};
use super::ipam;
use super::portmap::PortMapping;

/// pod id → JSON [`PodRecord`].
const PODS: TableDefinition<&str, &[u8]> = TableDefinition::new("podnet_pods");
/// (from namespace, to namespace) → nothing: `from` may reach `to`.
const POLICIES: TableDefinition<(&str, &str), ()> = TableDefinition::new("podnet_policies");

/// What the network knows of one attached pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    /// The pod id.
    pub pod_id: String,
    /// Its isolation namespace (top-level resource pool id).
    pub namespace: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The host end of its veth pair.
    pub host_veth: String,
    /// Its netns file.
    pub netns: PathBuf,
    /// Host ports forwarded to it.
    pub port_mappings: Vec<PortMapping>,
}

/// Everything stored.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Pod records by id.
    pub pods: BTreeMap<String, PodRecord>,
    /// Allowed (from, to) namespace pairs.
    pub policies: BTreeSet<(String, String)>,
    /// Allocations whose owner has no pod record (attach writes both in one
    /// transaction, but an allocator used directly may leave some).
    pub orphan_allocations: Vec<(Ipv4Addr, String)>,
}

/// Copies everything in the pod network's own state file at `path` into
/// `into`, a transaction on a shared database: its caller commits it, or
/// drops it and nothing moved.
pub fn import_file(path: &Path, into: &redb::WriteTransaction) -> Result<()> {
    let from = open_db(path)?;
    let tx = from.begin_read()?;
    let mut pods = into.open_table(PODS)?;
    for row in tx.open_table(PODS)?.iter()? {
        let (k, v) = row?;
        pods.insert(k.value(), v.value())?;
    }
    let mut policies = into.open_table(POLICIES)?;
    for row in tx.open_table(POLICIES)?.iter()? {
        let (k, _) = row?;
        policies.insert(k.value(), ())?;
    }
    ipam::copy_in(&tx, into)
}

/// Open (or create) a redb file.
pub(crate) fn open_db(path: &Path) -> Result<Arc<Database>> {
    Database::create(path)
        .map(Arc::new)
        .map_err(|source| PodNetError::StoreOpen {
            path: path.to_path_buf(),
            source,
        })
}

/// The state file.
#[derive(Debug)]
pub struct Store {
    db: Arc<Database>,
    cidr: Ipv4Cidr,
}

impl Store {
    /// Open (or create) the file at `path` for the network over `cidr`.
    pub fn open(path: &Path, cidr: Ipv4Cidr) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(PodNetError::io(format!("create {}", dir.display())))?;
        }
        Store::with_db(open_db(path)?, cidr)
    }

    /// Keep the network's tables in `db`, a database others use too
    /// (creating them if missing).
    pub fn with_db(db: Arc<Database>, cidr: Ipv4Cidr) -> Result<Self> {
        let tx = db.begin_write()?;
        tx.open_table(PODS)?;
        tx.open_table(POLICIES)?;
        ipam::init_in(&tx, cidr)?;
        tx.commit()?;
        Ok(Store { db, cidr })
    }

    /// An allocator view of the same file.
    pub fn ipam(&self) -> Result<ipam::Ipam> {
        ipam::Ipam::with_db(self.db.clone(), self.cidr)
    }

    /// Read everything in one snapshot.
    pub fn load(&self) -> Result<Loaded> {
        let tx = self.db.begin_read()?;
        let mut out = Loaded::default();
        for row in tx.open_table(PODS)?.iter()? {
            let (k, v) = row?;
            let rec: PodRecord =
                serde_json::from_slice(v.value()).map_err(|e| PodNetError::Corrupt {
                    key: k.value().to_string(),
                    reason: e.to_string(),
                })?;
            out.pods.insert(k.value().to_string(), rec);
        }
        for row in tx.open_table(POLICIES)?.iter()? {
            let (k, _) = row?;
            let (from, to) = k.value();
            out.policies.insert((from.to_string(), to.to_string()));
        }
        out.orphan_allocations = ipam::allocations_in(&tx)?
            .into_iter()
            .filter(|(_, owner)| !out.pods.contains_key(owner))
            .collect();
        Ok(out)
    }

    /// Allocate `pod_id` an address (its existing one if it has one) and
    /// store its record, built by `make` from the address, in one
    /// transaction.
    pub fn attach(
        &self,
        pod_id: &str,
        make: impl FnOnce(Ipv4Addr) -> PodRecord,
    ) -> Result<PodRecord> {
        let tx = self.db.begin_write()?;
        let ip = ipam::allocate_in(&tx, self.cidr, pod_id)?;
        let rec = make(ip);
        let json = serde_json::to_vec(&rec).map_err(|e| PodNetError::Corrupt {
            key: pod_id.to_string(),
            reason: e.to_string(),
        })?;
        tx.open_table(PODS)?.insert(pod_id, json.as_slice())?;
        tx.commit()?;
        Ok(rec)
    }

    /// Delete `pod_id`'s record and release its address, in one transaction.
    pub fn detach(&self, pod_id: &str) -> Result<Option<Ipv4Addr>> {
        let tx = self.db.begin_write()?;
        tx.open_table(PODS)?.remove(pod_id)?;
        let ip = ipam::release_in(&tx, pod_id)?;
        tx.commit()?;
        Ok(ip)
    }

    /// Record that `from` may reach `to`.
    pub fn allow(&self, from: &str, to: &str) -> Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(POLICIES)?.insert((from, to), ())?;
        tx.commit()?;
        Ok(())
    }

    /// Remove the policy `from` → `to`.
    pub fn revoke(&self, from: &str, to: &str) -> Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(POLICIES)?.remove((from, to))?;
        tx.commit()?;
        Ok(())
    }
}
