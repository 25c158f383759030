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
use super::error::{NetError, Result};
use super::ipam;
use super::portmap::PortMapping;

/// pod id → format version byte + JSON [`PodRecord`].
const PODS: TableDefinition<&str, &[u8]> = TableDefinition::new("podnet_pods");
/// Rows that could not be read, moved aside: `podnet_pods/<key>` → the
/// bytes (the table the agent's own unreadable records go to).
const QUARANTINE: TableDefinition<&str, &[u8]> = TableDefinition::new("quarantine");
/// The format of a `podnet_pods` row (its first byte).
const ROW_VERSION: u8 = 1;
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
    /// transaction, but an allocator used directly may leave some, and a
    /// quarantined record leaves its address).
    pub orphan_allocations: Vec<(Ipv4Addr, String)>,
    /// Pod records this load found unreadable and moved to quarantine.
    pub quarantined: Vec<String>,
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
        // A file of its own held bare JSON: the row gets its version byte.
        let mut bytes = v.value().to_vec();
        if bytes.first() == Some(&b'{') {
            bytes.insert(0, ROW_VERSION);
        }
        pods.insert(k.value(), bytes.as_slice())?;
    }
    let mut policies = into.open_table(POLICIES)?;
    for row in tx.open_table(POLICIES)?.iter()? {
        let (k, _) = row?;
        policies.insert(k.value(), ())?;
    }
    ipam::copy_in(&tx, into)
}

/// A pod record's row: the format version byte, then JSON.
fn encode(rec: &PodRecord) -> Result<Vec<u8>> {
    let mut bytes = vec![ROW_VERSION];
    serde_json::to_writer(&mut bytes, rec).map_err(|e| NetError::Corrupt {
        key: rec.pod_id.clone(),
        reason: e.to_string(),
    })?;
    Ok(bytes)
}

/// The record in a row, or why it cannot be read.
fn decode(key: &str, bytes: &[u8]) -> std::result::Result<PodRecord, String> {
    let (version, body) = bytes.split_first().ok_or("empty row")?;
    if *version != ROW_VERSION {
        return Err(format!(
            "format version {version}, this agent reads {ROW_VERSION}"
        ));
    }
    let rec: PodRecord = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if rec.pod_id != key {
        return Err(format!("the record is of {}, not of its key", rec.pod_id));
    }
    Ok(rec)
}

/// Open (or create) a redb file.
pub(crate) fn open_db(path: &Path) -> Result<Arc<Database>> {
    Database::create(path)
        .map(Arc::new)
        .map_err(|source| NetError::StoreOpen {
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
                .map_err(NetError::io(format!("create {}", dir.display())))?;
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

    /// Read everything in one snapshot. A pod record that cannot be read
    /// (a foreign format version, bytes that do not decode, a record under
    /// another pod's key) is moved, bytes unchanged, to the `quarantine`
    /// table and reported in [`Loaded::quarantined`]; the rest is served.
    pub fn load(&self) -> Result<Loaded> {
        let tx = self.db.begin_write()?;
        let mut out = Loaded::default();
        let mut unreadable = Vec::new();
        for row in tx.open_table(PODS)?.iter()? {
            let (k, v) = row?;
            match decode(k.value(), v.value()) {
                Ok(rec) => {
                    out.pods.insert(k.value().to_string(), rec);
                }
                Err(reason) => unreadable.push((k.value().to_string(), v.value().to_vec(), reason)),
            }
        }
        if !unreadable.is_empty() {
            let mut pods = tx.open_table(PODS)?;
            let mut quarantine = tx.open_table(QUARANTINE)?;
            for (key, bytes, reason) in unreadable {
                tracing::error!(
                    pod = %key,
                    %reason,
                    "an unreadable pod network record was moved to the store's quarantine table"
                );
                quarantine.insert(format!("podnet_pods/{key}").as_str(), bytes.as_slice())?;
                pods.remove(key.as_str())?;
                out.quarantined.push(key);
            }
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
        tx.commit()?;
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
        tx.open_table(PODS)?
            .insert(pod_id, encode(&rec)?.as_slice())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pod_id: &str, ip: Ipv4Addr) -> PodRecord {
        PodRecord {
            pod_id: pod_id.into(),
            namespace: "pool-1".into(),
            ip,
            host_veth: format!("veth-{pod_id}"),
            netns: PathBuf::from("/run/stratum/netns").join(pod_id),
            port_mappings: Vec::new(),
        }
    }

    /// An unreadable row is quarantined at load; the other pods are served
    /// and its address shows as an orphan for reconcile to release.
    #[test]
    fn an_unreadable_record_is_quarantined_and_the_rest_served() {
        let dir = tempfile::tempdir().unwrap();
        let cidr: Ipv4Cidr = "10.9.0.0/24".parse().unwrap();
        let store = Store::open(&dir.path().join("podnet.redb"), cidr).unwrap();
        store.attach("pod-1", |ip| record("pod-1", ip)).unwrap();
        let bad_ip = store.attach("pod-2", |ip| record("pod-2", ip)).unwrap().ip;
        let tx = store.db.begin_write().unwrap();
        tx.open_table(PODS)
            .unwrap()
            .insert("pod-2", &b"\x07not json"[..])
            .unwrap();
        tx.commit().unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.pods.keys().collect::<Vec<_>>(), ["pod-1"]);
        assert_eq!(loaded.quarantined, ["pod-2"]);
        assert_eq!(loaded.orphan_allocations, [(bad_ip, "pod-2".to_string())]);
        let tx = store.db.begin_read().unwrap();
        let quarantine = tx.open_table(QUARANTINE).unwrap();
        assert!(quarantine.get("podnet_pods/pod-2").unwrap().is_some());
        // Loading again finds nothing more to move.
        assert!(store.load().unwrap().quarantined.is_empty());
    }
}
