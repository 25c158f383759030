//! The networks' durable state: the networks themselves, IPAM's
//! allocations (see [`super::ipam`]), a record per attached pod and per
//! plugged-in VM NIC (its TAP), and the namespace policies, in tables of a
//! redb database — the agent's one state file, shared with
//! [`Store::with_db`], or a file of its own ([`Store::open`], for using the
//! networks alone). Its tables are named `net_*`, `podnet_*` (the names
//! they had when pods had the only network) and `ipam_*`, so they live
//! beside anyone else's.
//!
//! A pod's record is written in the same transaction as its address
//! allocation, and a TAP's record before its TAP is made, so after a crash
//! at any point a record names everything that may be left in the kernel
//! and reconcile can finish or undo it; a record is deleted only after the
//! kernel state is gone. A VM NIC's address is allocated alone when the VM
//! is made (the VM's own record names it) and released when the VM is
//! deleted. Every commit is fsynced (redb's `Durability::Immediate`).
//! [`import_file`] moves a state file of its own into a shared database.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::de::DeserializeOwned;
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
/// network name → format version byte + JSON [`NetworkRecord`].
const NETWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("net_networks");
/// NIC owner (`<vm id>.<index>`) → format version byte + JSON [`TapRecord`].
const TAPS: TableDefinition<&str, &[u8]> = TableDefinition::new("net_taps");

/// A network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// Its name (a DNS label).
    pub name: String,
    /// Its bridge.
    pub bridge: String,
    /// Its addresses; the first is the gateway, on the bridge.
    pub cidr: Ipv4Cidr,
    /// Masquerade traffic leaving the host's networks.
    pub nat: bool,
    /// The namespaces whose workloads may attach; empty = every one.
    pub namespaces: Vec<String>,
    /// Name servers given to VMs on it.
    pub nameservers: Vec<Ipv4Addr>,
    /// When it was made, in seconds since the Unix epoch.
    pub created_at: i64,
}

impl NetworkRecord {
    /// Whether workloads of `namespace` may attach.
    pub fn admits(&self, namespace: &str) -> bool {
        self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == namespace)
    }
}

/// A VM NIC plugged into a network: its TAP on the network's bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapRecord {
    /// The NIC, `<vm id>.<index>`: also its address's owner in IPAM.
    pub owner: String,
    /// The network.
    pub network: String,
    /// The VM's namespace.
    pub namespace: String,
    /// The NIC's address.
    pub ip: Ipv4Addr,
    /// The TAP.
    pub tap: String,
}

/// A stored row's key, for checking a record against the key it is under.
trait Keyed {
    fn key(&self) -> &str;
}

impl Keyed for PodRecord {
    fn key(&self) -> &str {
        &self.pod_id
    }
}

impl Keyed for NetworkRecord {
    fn key(&self) -> &str {
        &self.name
    }
}

impl Keyed for TapRecord {
    fn key(&self) -> &str {
        &self.owner
    }
}

fn default_network() -> String {
    crate::config::DEFAULT_NETWORK.to_string()
}

/// What the network knows of one attached pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    /// The pod id.
    pub pod_id: String,
    /// The network it is on (records from before there were several
    /// networks are on the default one).
    #[serde(default = "default_network")]
    pub network: String,
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
    /// Networks by name.
    pub networks: BTreeMap<String, NetworkRecord>,
    /// Pod records by id.
    pub pods: BTreeMap<String, PodRecord>,
    /// Plugged-in VM NICs by owner.
    pub taps: BTreeMap<String, TapRecord>,
    /// Allowed (from, to) namespace pairs.
    pub policies: BTreeSet<(String, String)>,
    /// Allocations whose owner has neither a pod nor a TAP record: VM
    /// NICs' reservations, and leftovers (an allocator used directly, a
    /// quarantined record's address) that reconcile releases.
    pub orphan_allocations: Vec<(Ipv4Addr, String)>,
    /// Records this load found unreadable and moved to quarantine, as
    /// `<table>/<key>`.
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

/// Whether `db` holds any network record (without creating tables).
pub fn has_networks(db: &Database) -> Result<bool> {
    let tx = db.begin_read()?;
    match tx.open_table(NETWORKS) {
        Ok(t) => Ok(t.iter()?.next().is_some()),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A record's row: the format version byte, then JSON.
fn encode<T: Serialize + Keyed>(rec: &T) -> Result<Vec<u8>> {
    let mut bytes = vec![ROW_VERSION];
    serde_json::to_writer(&mut bytes, rec).map_err(|e| NetError::Corrupt {
        key: rec.key().to_string(),
        reason: e.to_string(),
    })?;
    Ok(bytes)
}

/// The record in a row, or why it cannot be read.
fn decode<T: DeserializeOwned + Keyed>(key: &str, bytes: &[u8]) -> std::result::Result<T, String> {
    let (version, body) = bytes.split_first().ok_or("empty row")?;
    if *version != ROW_VERSION {
        return Err(format!(
            "format version {version}, this agent reads {ROW_VERSION}"
        ));
    }
    let rec: T = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if rec.key() != key {
        return Err(format!("the record is of {}, not of its key", rec.key()));
    }
    Ok(rec)
}

/// Every readable record of `table`; unreadable rows are moved, bytes
/// unchanged, to the quarantine table and named in `quarantined`.
fn load_table<T: DeserializeOwned + Keyed>(
    tx: &redb::WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
    quarantined: &mut Vec<String>,
) -> Result<BTreeMap<String, T>> {
    let mut out = BTreeMap::new();
    let mut unreadable = Vec::new();
    for row in tx.open_table(table)?.iter()? {
        let (k, v) = row?;
        match decode::<T>(k.value(), v.value()) {
            Ok(rec) => {
                out.insert(k.value().to_string(), rec);
            }
            Err(reason) => unreadable.push((k.value().to_string(), v.value().to_vec(), reason)),
        }
    }
    if !unreadable.is_empty() {
        let mut rows = tx.open_table(table)?;
        let mut quarantine = tx.open_table(QUARANTINE)?;
        for (key, bytes, reason) in unreadable {
            let name = format!("{}/{key}", table.name());
            tracing::error!(
                record = %name,
                %reason,
                "an unreadable network record was moved to the store's quarantine table"
            );
            quarantine.insert(name.as_str(), bytes.as_slice())?;
            rows.remove(key.as_str())?;
            quarantined.push(name);
        }
    }
    Ok(out)
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
        tx.open_table(NETWORKS)?;
        tx.open_table(TAPS)?;
        ipam::init_in(&tx, cidr)?;
        tx.commit()?;
        Ok(Store { db, cidr })
    }

    /// An allocator view of the same file.
    pub fn ipam(&self) -> Result<ipam::Ipam> {
        ipam::Ipam::with_db(self.db.clone(), self.cidr)
    }

    /// Read everything in one snapshot. A record that cannot be read (a
    /// foreign format version, bytes that do not decode, a record under
    /// another's key) is moved, bytes unchanged, to the `quarantine` table
    /// and reported in [`Loaded::quarantined`]; the rest is served.
    pub fn load(&self) -> Result<Loaded> {
        let tx = self.db.begin_write()?;
        let mut out = Loaded::default();
        out.networks = load_table(&tx, NETWORKS, &mut out.quarantined)?;
        out.pods = load_table(&tx, PODS, &mut out.quarantined)?;
        out.taps = load_table(&tx, TAPS, &mut out.quarantined)?;
        for row in tx.open_table(POLICIES)?.iter()? {
            let (k, _) = row?;
            let (from, to) = k.value();
            out.policies.insert((from.to_string(), to.to_string()));
        }
        out.orphan_allocations = ipam::allocations_in(&tx)?
            .into_iter()
            .filter(|(_, owner)| !out.pods.contains_key(owner) && !out.taps.contains_key(owner))
            .collect();
        tx.commit()?;
        Ok(out)
    }

    /// Every allocation, in address order.
    pub fn allocations(&self) -> Result<Vec<(Ipv4Addr, String)>> {
        self.ipam()?.allocations()
    }

    /// Store network `rec` (new, or changed).
    pub fn put_network(&self, rec: &NetworkRecord) -> Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(NETWORKS)?
            .insert(rec.name.as_str(), encode(rec)?.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// Delete network `rec`, refused while any address of its CIDR is
    /// allocated (checked in the deleting transaction).
    pub fn delete_network(&self, rec: &NetworkRecord) -> Result<()> {
        let tx = self.db.begin_write()?;
        let users: Vec<String> = ipam::allocations_in(&tx)?
            .into_iter()
            .filter(|(ip, _)| rec.cidr.contains(*ip))
            .map(|(_, owner)| owner)
            .collect();
        if !users.is_empty() {
            return Err(NetError::InUse {
                network: rec.name.clone(),
                users: users.join(", "),
            });
        }
        tx.open_table(NETWORKS)?.remove(rec.name.as_str())?;
        ipam::forget_cursor_in(&tx, &rec.name)?;
        tx.commit()?;
        Ok(())
    }

    /// Give `owner` an address on `network`: `ip` if asked (refused when
    /// taken or not a workload address of the CIDR), else the next free
    /// one; the one it holds if it holds one.
    pub fn reserve(
        &self,
        network: &NetworkRecord,
        owner: &str,
        ip: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr> {
        let tx = self.db.begin_write()?;
        let ip = match ip {
            Some(ip) => ipam::allocate_static_in(&tx, network.cidr, owner, ip)?,
            None => {
                let cursor = ipam::cursor_key(&network.name);
                ipam::allocate_in(&tx, network.cidr, &cursor, owner)?
            }
        };
        tx.commit()?;
        Ok(ip)
    }

    /// Release `owner`'s address (a VM NIC's, with no TAP record left).
    pub fn release(&self, owner: &str) -> Result<Option<Ipv4Addr>> {
        let tx = self.db.begin_write()?;
        let ip = ipam::release_in(&tx, owner)?;
        tx.commit()?;
        Ok(ip)
    }

    /// Store the record of a TAP about to be made.
    pub fn put_tap(&self, rec: &TapRecord) -> Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(TAPS)?
            .insert(rec.owner.as_str(), encode(rec)?.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// Delete the record of a TAP that is gone.
    pub fn delete_tap(&self, owner: &str) -> Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(TAPS)?.remove(owner)?;
        tx.commit()?;
        Ok(())
    }

    /// Allocate `pod_id` an address (its existing one if it has one) and
    /// store its record, built by `make` from the address, in one
    /// transaction.
    pub fn attach(
        &self,
        pod_id: &str,
        network: &NetworkRecord,
        make: impl FnOnce(Ipv4Addr) -> PodRecord,
    ) -> Result<PodRecord> {
        let tx = self.db.begin_write()?;
        let cursor = ipam::cursor_key(&network.name);
        let ip = ipam::allocate_in(&tx, network.cidr, &cursor, pod_id)?;
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
            network: "default".into(),
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
        let net = NetworkRecord {
            name: "default".into(),
            bridge: "br".into(),
            cidr,
            nat: false,
            namespaces: Vec::new(),
            nameservers: Vec::new(),
            created_at: 0,
        };
        store
            .attach("pod-1", &net, |ip| record("pod-1", ip))
            .unwrap();
        let bad_ip = store
            .attach("pod-2", &net, |ip| record("pod-2", ip))
            .unwrap()
            .ip;
        let tx = store.db.begin_write().unwrap();
        tx.open_table(PODS)
            .unwrap()
            .insert("pod-2", &b"\x07not json"[..])
            .unwrap();
        tx.commit().unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.pods.keys().collect::<Vec<_>>(), ["pod-1"]);
        assert_eq!(loaded.quarantined, ["podnet_pods/pod-2"]);
        assert_eq!(loaded.orphan_allocations, [(bad_ip, "pod-2".to_string())]);
        let tx = store.db.begin_read().unwrap();
        let quarantine = tx.open_table(QUARANTINE).unwrap();
        assert!(quarantine.get("podnet_pods/pod-2").unwrap().is_some());
        // Loading again finds nothing more to move.
        assert!(store.load().unwrap().quarantined.is_empty());
    }
}
