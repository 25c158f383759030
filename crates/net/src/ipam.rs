//! IPAM: pod addresses from the configured CIDR, never given to two live
//! pods and never handed out before they are on disk.
//!
//! **Persistence.** Allocations live in the pod network's redb file (see
//! [`super::store`]): one write transaction records the address, its owner
//! and the advanced cursor, and redb's default `Durability::Immediate`
//! fsyncs it before `commit` returns, so an address is durable before any
//! caller sees it, and a crash either keeps the whole allocation or none
//! of it. redb rather than a file per address (O_EXCL + fsync of the
//! directory): the agent already ships redb, one transaction covers the
//! address, the owner index and the cursor together (three files could
//! not), and the pod records that reconcile needs sit in the same
//! transaction as the address they hold. redb also locks the file, so a
//! second agent on the same state cannot allocate behind this one's back.
//!
//! **Reuse.** Addresses are handed out in ascending order from a cursor
//! that only moves forward and wraps at the end of the CIDR. A released
//! address is therefore reused only after every other free address has
//! been handed out since, not as soon as it is free: peers' ARP caches,
//! conntrack entries, DNS or service endpoints and logs that still name
//! the old pod have the longest possible time to forget it, while the
//! whole range stays usable (a strict never-reuse would exhaust a /24
//! after 253 pod starts). This is what CNI's host-local IPAM does as well.
//!
//! **Idempotence.** An owner (a pod id, a VM NIC's `<vm id>.<index>`)
//! holds at most one address: allocating again for the same owner returns
//! the address it has, so a retried or re-run attach cannot leak one.
//!
//! **Several networks.** The host's networks never overlap, so an address
//! names its network and the two tables serve every network at once; each
//! network has a cursor of its own (`cursor` for the default network, as
//! it always was, `cursor/<network>` for the others). A static address
//! ([`allocate_static_in`]) is taken as asked or refused, and does not
//! move the cursor.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::cidr::Ipv4Cidr;
use super::error::{NetError, Result};
use super::store::open_db;

/// address (as u32) → owner.
const BY_ADDR: TableDefinition<u32, &str> = TableDefinition::new("ipam_by_addr");
/// owner → address (as u32).
const BY_OWNER: TableDefinition<&str, u32> = TableDefinition::new("ipam_by_owner");
/// "cursor" (the offset last handed out), "network" and "prefix" (the CIDR
/// the allocations come from).
const META: TableDefinition<&str, u64> = TableDefinition::new("ipam_meta");

const CURSOR: &str = "cursor";
const NETWORK: &str = "network";
const PREFIX: &str = "prefix";

/// The allocator over one CIDR, backed by a redb file it may share.
#[derive(Clone)]
pub struct Ipam {
    db: Arc<Database>,
    cidr: Ipv4Cidr,
}

impl std::fmt::Debug for Ipam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ipam").field("cidr", &self.cidr).finish()
    }
}

impl Ipam {
    /// Open (or create) the allocator's own state file at `path`.
    pub fn open(path: impl AsRef<Path>, cidr: Ipv4Cidr) -> Result<Self> {
        Ipam::with_db(open_db(path.as_ref())?, cidr)
    }

    /// Use `db` (the pod network's state file). Refuses a file whose
    /// allocations come from another CIDR; an unused file adopts `cidr`.
    pub fn with_db(db: Arc<Database>, cidr: Ipv4Cidr) -> Result<Self> {
        let tx = db.begin_write()?;
        init_in(&tx, cidr)?;
        tx.commit()?;
        Ok(Ipam { db, cidr })
    }

    /// The CIDR addresses come from.
    pub fn cidr(&self) -> Ipv4Cidr {
        self.cidr
    }

    /// An address for `owner`, durably recorded before it is returned; the
    /// address `owner` already holds if it has one.
    pub fn allocate(&self, owner: &str) -> Result<Ipv4Addr> {
        let tx = self.db.begin_write()?;
        let ip = allocate_in(&tx, self.cidr, CURSOR, owner)?;
        tx.commit()?;
        Ok(ip)
    }

    /// Release `owner`'s address, returning it (`None` if it held none).
    pub fn release(&self, owner: &str) -> Result<Option<Ipv4Addr>> {
        let tx = self.db.begin_write()?;
        let ip = release_in(&tx, owner)?;
        tx.commit()?;
        Ok(ip)
    }

    /// The address `owner` holds.
    pub fn get(&self, owner: &str) -> Result<Option<Ipv4Addr>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(BY_OWNER)?;
        Ok(t.get(owner)?.map(|v| Ipv4Addr::from(v.value())))
    }

    /// The owner of `ip`, if allocated.
    pub fn owner_of(&self, ip: Ipv4Addr) -> Result<Option<String>> {
        if !self.cidr.contains(ip) {
            return Err(NetError::ForeignAddress(ip));
        }
        let tx = self.db.begin_read()?;
        let t = tx.open_table(BY_ADDR)?;
        Ok(t.get(u32::from(ip))?.map(|v| v.value().to_string()))
    }

    /// Every allocation, in address order.
    pub fn allocations(&self) -> Result<Vec<(Ipv4Addr, String)>> {
        let tx = self.db.begin_read()?;
        list(&tx.open_table(BY_ADDR)?)
    }
}

/// The cursor of network `network` in the meta table.
pub(crate) fn cursor_key(network: &str) -> String {
    if network == crate::config::DEFAULT_NETWORK {
        CURSOR.to_string()
    } else {
        format!("{CURSOR}/{network}")
    }
}

/// Create the tables and check the stored CIDR of the default network
/// against `cidr`: a change is refused while the old one has allocations.
pub(crate) fn init_in(tx: &WriteTransaction, cidr: Ipv4Cidr) -> Result<()> {
    let by_addr = tx.open_table(BY_ADDR)?;
    tx.open_table(BY_OWNER)?;
    let mut meta = tx.open_table(META)?;
    let network = meta.get(NETWORK)?.map(|v| v.value());
    let prefix = meta.get(PREFIX)?.map(|v| v.value());
    let same = network == Some(u64::from(u32::from(cidr.network())))
        && prefix == Some(u64::from(cidr.prefix()));
    if same {
        return Ok(());
    }
    let stored_cidr = match (network, prefix) {
        (Some(n), Some(p)) => u32::try_from(n)
            .ok()
            .zip(u8::try_from(p).ok())
            .and_then(|(n, p)| Ipv4Cidr::new(Ipv4Addr::from(n), p).ok()),
        _ => None,
    };
    let mut live = false;
    for row in by_addr.iter()? {
        let (addr, _) = row?;
        // Without a stored CIDR, any allocation may be the default's.
        if stored_cidr.is_none_or(|c| c.contains(Ipv4Addr::from(addr.value()))) {
            live = true;
            break;
        }
    }
    if live {
        let stored = match (network, prefix) {
            (Some(n), Some(p)) => match u32::try_from(n) {
                Ok(n) => format!("{}/{p}", Ipv4Addr::from(n)),
                Err(_) => format!("{n}/{p}"),
            },
            _ => "an unrecorded CIDR".to_string(),
        };
        return Err(NetError::CidrChanged {
            stored,
            configured: cidr.to_string(),
        });
    }
    meta.insert(NETWORK, u64::from(u32::from(cidr.network())))?;
    meta.insert(PREFIX, u64::from(cidr.prefix()))?;
    meta.remove(CURSOR)?;
    Ok(())
}

/// Allocate for `owner` from `cidr` inside `tx` (see [`Ipam::allocate`]),
/// moving the cursor stored under `cursor`.
pub(crate) fn allocate_in(
    tx: &WriteTransaction,
    cidr: Ipv4Cidr,
    cursor: &str,
    owner: &str,
) -> Result<Ipv4Addr> {
    let mut by_owner = tx.open_table(BY_OWNER)?;
    if let Some(v) = by_owner.get(owner)? {
        return Ok(Ipv4Addr::from(v.value()));
    }
    let mut by_addr = tx.open_table(BY_ADDR)?;
    let mut meta = tx.open_table(META)?;
    let range = cidr.pod_offsets();
    let first = *range.start();
    let count = u64::from(cidr.pod_capacity());
    // Position (0-based within the range) after the last one handed out.
    let start = match meta.get(cursor)?.map(|v| v.value()) {
        Some(c) if (u64::from(first)..=u64::from(*range.end())).contains(&c) => {
            (c - u64::from(first) + 1) % count
        }
        _ => 0,
    };
    for k in 0..count {
        let pos = (start + k) % count;
        // pos < count <= 2^24, so it fits and so does first + pos.
        let offset = first + u32::try_from(pos).unwrap_or(0);
        let ip = cidr.at(offset);
        if by_addr.get(u32::from(ip))?.is_none() {
            by_addr.insert(u32::from(ip), owner)?;
            by_owner.insert(owner, u32::from(ip))?;
            meta.insert(cursor, u64::from(offset))?;
            return Ok(ip);
        }
    }
    Err(NetError::Exhausted {
        cidr: cidr.to_string(),
        capacity: cidr.pod_capacity(),
    })
}

/// Give `owner` exactly `ip` of `cidr` inside `tx`: its own already (the
/// same address again is fine, another one is refused), else free and a
/// workload address (not the network's, gateway or broadcast address).
pub(crate) fn allocate_static_in(
    tx: &WriteTransaction,
    cidr: Ipv4Cidr,
    owner: &str,
    ip: Ipv4Addr,
) -> Result<Ipv4Addr> {
    if !cidr.contains(ip) {
        return Err(NetError::InvalidArgument(format!(
            "address {ip} is outside the network's CIDR {cidr}"
        )));
    }
    if !cidr.is_workload_address(ip) {
        return Err(NetError::InvalidArgument(format!(
            "address {ip} is the network, gateway or broadcast address of {cidr}"
        )));
    }
    let mut by_owner = tx.open_table(BY_OWNER)?;
    if let Some(held) = by_owner.get(owner)?.map(|v| Ipv4Addr::from(v.value())) {
        if held == ip {
            return Ok(ip);
        }
        return Err(NetError::InvalidArgument(format!(
            "{owner} holds {held} already, not {ip}"
        )));
    }
    let mut by_addr = tx.open_table(BY_ADDR)?;
    if let Some(holder) = by_addr.get(u32::from(ip))?.map(|v| v.value().to_string()) {
        return Err(NetError::AddressTaken { ip, owner: holder });
    }
    by_addr.insert(u32::from(ip), owner)?;
    by_owner.insert(owner, u32::from(ip))?;
    Ok(ip)
}

/// Forget network `network`'s cursor (the network is gone).
pub(crate) fn forget_cursor_in(tx: &WriteTransaction, network: &str) -> Result<()> {
    tx.open_table(META)?.remove(cursor_key(network).as_str())?;
    Ok(())
}

/// Release `owner`'s address inside `tx`.
pub(crate) fn release_in(tx: &WriteTransaction, owner: &str) -> Result<Option<Ipv4Addr>> {
    let mut by_owner = tx.open_table(BY_OWNER)?;
    let Some(addr) = by_owner.remove(owner)?.map(|v| v.value()) else {
        return Ok(None);
    };
    tx.open_table(BY_ADDR)?.remove(addr)?;
    Ok(Some(Ipv4Addr::from(addr)))
}

/// Copies every allocation, the cursor and the CIDR from `from` into `into`
/// (moving the pod network's state from its own file into a shared one).
pub(crate) fn copy_in(from: &redb::ReadTransaction, into: &WriteTransaction) -> Result<()> {
    let mut by_addr = into.open_table(BY_ADDR)?;
    for row in from.open_table(BY_ADDR)?.iter()? {
        let (k, v) = row?;
        by_addr.insert(k.value(), v.value())?;
    }
    let mut by_owner = into.open_table(BY_OWNER)?;
    for row in from.open_table(BY_OWNER)?.iter()? {
        let (k, v) = row?;
        by_owner.insert(k.value(), v.value())?;
    }
    let mut meta = into.open_table(META)?;
    for row in from.open_table(META)?.iter()? {
        let (k, v) = row?;
        meta.insert(k.value(), v.value())?;
    }
    Ok(())
}

/// Every allocation in `tx`, in address order.
pub(crate) fn allocations_in(tx: &WriteTransaction) -> Result<Vec<(Ipv4Addr, String)>> {
    list(&tx.open_table(BY_ADDR)?)
}

fn list(t: &impl ReadableTable<u32, &'static str>) -> Result<Vec<(Ipv4Addr, String)>> {
    let mut out = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        out.push((Ipv4Addr::from(k.value()), v.value().to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_are_unique_ascending_and_idempotent_per_owner() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path().join("ipam.redb"), cidr("10.1.0.0/24")).unwrap();
        let a = ipam.allocate("a").unwrap();
        let b = ipam.allocate("b").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 1, 0, 2));
        assert_eq!(b, Ipv4Addr::new(10, 1, 0, 3));
        assert_eq!(ipam.allocate("a").unwrap(), a);
        assert_eq!(ipam.owner_of(b).unwrap().as_deref(), Some("b"));
        assert!(ipam.owner_of(Ipv4Addr::new(10, 2, 0, 1)).is_err());
    }

    #[test]
    fn allocations_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.redb");
        let before = {
            let ipam = Ipam::open(&path, cidr("10.1.0.0/24")).unwrap();
            for i in 0..5 {
                ipam.allocate(&format!("pod-{i}")).unwrap();
            }
            ipam.release("pod-1").unwrap();
            ipam.allocations().unwrap()
        };
        let ipam = Ipam::open(&path, cidr("10.1.0.0/24")).unwrap();
        assert_eq!(ipam.allocations().unwrap(), before);
        assert_eq!(ipam.get("pod-4").unwrap(), Some(Ipv4Addr::new(10, 1, 0, 6)));
        // The cursor survived too: the next address is after pod-4's, not
        // pod-1's released one.
        assert_eq!(ipam.allocate("new").unwrap(), Ipv4Addr::new(10, 1, 0, 7));
        // Another CIDR over live allocations is refused.
        drop(ipam);
        assert!(matches!(
            Ipam::open(&path, cidr("10.9.0.0/24")),
            Err(NetError::CidrChanged { .. })
        ));
    }

    #[test]
    fn released_addresses_wait_for_the_cursor_to_wrap() {
        let dir = tempfile::tempdir().unwrap();
        // /29: gateway .1, pods .2 ..= .6 (5 addresses).
        let ipam = Ipam::open(dir.path().join("ipam.redb"), cidr("10.1.0.0/29")).unwrap();
        let a = ipam.allocate("a").unwrap();
        ipam.release("a").unwrap();
        let got: Vec<_> = ["b", "c", "d", "e"]
            .iter()
            .map(|o| ipam.allocate(o).unwrap())
            .collect();
        assert!(
            !got.contains(&a),
            "released address reused before the wrap: {got:?}"
        );
        // Only now, all others handed out since, does `a` come back.
        assert_eq!(ipam.allocate("f").unwrap(), a);
    }

    #[test]
    fn static_addresses_are_given_as_asked_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path().join("ipam.redb"), cidr("10.1.0.0/24")).unwrap();
        let c = cidr("10.1.0.0/24");
        let ip = |d| Ipv4Addr::new(10, 1, 0, d);
        let tx = ipam.db.begin_write().unwrap();
        assert_eq!(allocate_static_in(&tx, c, "a", ip(9)).unwrap(), ip(9));
        assert_eq!(allocate_static_in(&tx, c, "a", ip(9)).unwrap(), ip(9));
        assert!(matches!(
            allocate_static_in(&tx, c, "b", ip(9)),
            Err(NetError::AddressTaken { owner, .. }) if owner == "a"
        ));
        for reserved in [ip(0), ip(1), ip(255), Ipv4Addr::new(10, 2, 0, 9)] {
            assert!(
                matches!(
                    allocate_static_in(&tx, c, "b", reserved),
                    Err(NetError::InvalidArgument(_))
                ),
                "{reserved}"
            );
        }
        // The cursor did not move: the next free address is the first.
        assert_eq!(allocate_in(&tx, c, CURSOR, "b").unwrap(), ip(2));
        tx.commit().unwrap();
    }

    #[test]
    fn exhaustion_of_a_tiny_cidr_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path().join("ipam.redb"), cidr("10.1.0.0/30")).unwrap();
        assert_eq!(ipam.allocate("only").unwrap(), Ipv4Addr::new(10, 1, 0, 2));
        let err = ipam.allocate("second").unwrap_err();
        assert!(
            matches!(err, NetError::Exhausted { capacity: 1, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("10.1.0.0/30"), "{err}");
        ipam.release("only").unwrap();
        assert_eq!(ipam.allocate("second").unwrap(), Ipv4Addr::new(10, 1, 0, 2));
    }

    #[test]
    fn concurrent_allocations_never_share_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path().join("ipam.redb"), cidr("10.1.0.0/26")).unwrap();
        // 61 addresses, 8 threads x 10 owners: 61 succeed, 19 are refused.
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|t| {
                    let ipam = ipam.clone();
                    s.spawn(move || {
                        (0..10)
                            .map(|i| (format!("t{t}-{i}"), ipam.allocate(&format!("t{t}-{i}"))))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let ok: Vec<_> = results
            .iter()
            .filter_map(|(o, r)| r.as_ref().ok().map(|ip| (o, *ip)))
            .collect();
        let unique: HashSet<_> = ok.iter().map(|(_, ip)| *ip).collect();
        assert_eq!(ok.len(), 61);
        assert_eq!(unique.len(), 61, "an address went to two owners");
        assert!(results
            .iter()
            .filter(|(_, r)| r.is_err())
            .all(|(_, r)| matches!(r, Err(NetError::Exhausted { .. }))));
        let stored: HashSet<_> = ipam
            .allocations()
            .unwrap()
            .into_iter()
            .map(|(ip, _)| ip)
            .collect();
        assert_eq!(stored, unique);
    }
}
