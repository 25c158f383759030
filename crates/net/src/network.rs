//! [`HostNetworks`]: the host's networks, tying the bridges, the pods'
//! netns and veths, the VM NICs' TAPs, IPAM, the firewall and the state
//! file together.
//!
//! **Networks.** Each is a bridge with its CIDR's first address (the
//! gateway), optional NAT, and the namespaces it admits. The default
//! network comes from the configuration and is the pods' unless they name
//! another; the others are made and deleted through
//! [`create_network`](HostNetworks::create_network) and
//! [`delete_network`](HostNetworks::delete_network). CIDRs never overlap,
//! so an address names its network.
//!
//! **Endpoints.** A pod is attached in one step (address, netns, veth,
//! firewall) and detached in one. A VM NIC has two lifetimes: its address
//! is *reserved* when the VM is made and *released* when it is deleted,
//! so it is the same across the VM's restarts; its TAP is *plugged* in
//! when the VM starts and *unplugged* when it stops.
//!
//! **Order of operations, for crash safety.** Attach and plug: the address
//! and the endpoint's record are committed first, then the kernel state
//! is made, then the firewall is changed; so whatever a crash leaves in
//! the kernel is named by a record, and reconcile can remove it. Detach
//! and unplug: the firewall stops naming the endpoint, its links go, and
//! only then is the record deleted (and a pod's address released), so an
//! address is never free while something still uses it. A network is
//! recorded before its bridge is made and its record deleted after the
//! bridge is gone. Every step tolerates finding its work already done.
//!
//! **Restart.** [`HostNetworks::open`] re-creates the bridges and reloads
//! the firewall from the stored records, touching no endpoint; the caller
//! then passes what it knows to be alive to [`HostNetworks::reconcile`],
//! which removes everything else (records, addresses, veths, TAPs, netns
//! files) and reports live pods whose network is missing, for the caller
//! to attach again (attach repairs a pod's network in place, keeping its
//! address).
//!
//! Mutations are serialised by one async lock: each takes milliseconds,
//! and a single writer is what keeps port-mapping checks, the records and
//! the rendered firewall consistent.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Mutex;

use super::bridge;
use super::cidr::Ipv4Cidr;
use super::config::{NetConfig, DEFAULT_NETWORK};
use super::error::{NetError, Result};
use super::ipam::Ipam;
use super::names::{
    check_id, check_link_name, check_network_name, host_tap, host_veth, is_host_tap, is_host_veth,
    tap_prefix, veth_prefix,
};
use super::netlink::Netlink;
use super::netns::{self, NetnsDir};
use super::nft::{FirewallEndpoint, FirewallNetwork, Nft, Ruleset};
use super::portmap::{check_mappings, check_new_mappings, PortMapping};
use super::store::{NetworkRecord, PodRecord, Store, TapRecord};
use super::tap;
use super::veth;

/// A pod's place on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAttachment {
    /// The pod id.
    pub pod_id: String,
    /// The network it is on.
    pub network: String,
    /// Its isolation namespace.
    pub namespace: String,
    /// Its address (on `eth0` in its netns).
    pub ip: Ipv4Addr,
    /// The prefix length of its address.
    pub prefix_len: u8,
    /// Its default gateway (the bridge).
    pub gateway: Ipv4Addr,
    /// Its netns file, for the OCI runtime spec's network namespace path.
    pub netns: PathBuf,
    /// The host end of its veth pair.
    pub host_veth: String,
    /// Host ports forwarded to it.
    pub port_mappings: Vec<PortMapping>,
}

impl PodAttachment {
    fn new(rec: &PodRecord, cidr: Ipv4Cidr) -> Self {
        PodAttachment {
            pod_id: rec.pod_id.clone(),
            network: rec.network.clone(),
            namespace: rec.namespace.clone(),
            ip: rec.ip,
            prefix_len: cidr.prefix(),
            gateway: cidr.gateway(),
            netns: rec.netns.clone(),
            host_veth: rec.host_veth.clone(),
            port_mappings: rec.port_mappings.clone(),
        }
    }
}

/// A VM NIC's address on a network, and what its guest needs to use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The network.
    pub network: String,
    /// The address.
    pub ip: Ipv4Addr,
    /// The network's prefix length.
    pub prefix_len: u8,
    /// The network's gateway.
    pub gateway: Ipv4Addr,
    /// The network's name servers.
    pub nameservers: Vec<Ipv4Addr>,
}

/// An address held on a network, with what holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The owner: a pod id, or a VM NIC's `<vm id>.<index>`.
    pub owner: String,
    /// The address.
    pub ip: Ipv4Addr,
    /// The endpoint's namespace, when it is attached or plugged in.
    pub namespace: Option<String>,
    /// The host end of its link (veth, TAP), when there is one.
    pub port: Option<String>,
}

/// A network and who is on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInfo {
    /// Its definition.
    pub record: NetworkRecord,
    /// Every address held on it, in address order.
    pub holders: Vec<Holder>,
    /// Addresses still free.
    pub free_addresses: u32,
}

/// What a new network asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRequest {
    /// Its name (a DNS label).
    pub name: String,
    /// Its addresses.
    pub cidr: Ipv4Cidr,
    /// Its bridge; `None` for [`crate::names::default_bridge`].
    pub bridge: Option<String>,
    /// Masquerade its traffic leaving the host's networks.
    pub nat: bool,
    /// The namespaces it admits; empty = every one.
    pub namespaces: Vec<String>,
    /// Name servers for VMs on it.
    pub nameservers: Vec<Ipv4Addr>,
}

/// What is alive, for [`HostNetworks::reconcile`].
#[derive(Debug, Clone, Default)]
pub struct Live<'a> {
    /// Pods whose network must stay.
    pub pods: HashSet<&'a str>,
    /// VM NICs (`<vm id>.<index>`) of VMs that exist: their addresses stay.
    pub reserved: HashSet<&'a str>,
    /// VM NICs of VMs that run: their TAPs stay.
    pub plugged: HashSet<&'a str>,
}

impl<'a> Live<'a> {
    /// Only these pods live (no VM exists).
    pub fn pods(ids: impl IntoIterator<Item = &'a str>) -> Self {
        Live {
            pods: ids.into_iter().collect(),
            ..Live::default()
        }
    }
}

/// What [`HostNetworks::reconcile`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Pods not alive whose network was removed and address released.
    pub removed_pods: Vec<String>,
    /// VM NICs not running whose TAP was removed.
    pub removed_taps: Vec<String>,
    /// Addresses released that had no live owner.
    pub released_addresses: Vec<Ipv4Addr>,
    /// Host links deleted that belonged to no live endpoint.
    pub removed_links: Vec<String>,
    /// Netns files removed that belonged to no live pod.
    pub removed_netns: Vec<String>,
    /// Live pods whose netns or veth is missing: attach them again.
    pub broken: Vec<String>,
    /// Running VM NICs whose TAP is missing (it cannot come back under a
    /// running vmm: the VM must be restarted).
    pub missing_taps: Vec<String>,
    /// Live pods the networks have no record of: attach them.
    pub unknown: Vec<String>,
}

/// A network and its bridge's index.
struct NetState {
    record: NetworkRecord,
    bridge_index: u32,
}

struct Inner {
    networks: BTreeMap<String, NetState>,
    pods: BTreeMap<String, PodRecord>,
    taps: BTreeMap<String, TapRecord>,
    policies: BTreeSet<(String, String)>,
}

impl Inner {
    fn network(&self, name: &str) -> Result<&NetState> {
        self.networks
            .get(name)
            .ok_or_else(|| NetError::NoSuchNetwork(name.to_string()))
    }

    /// The network that holds address `ip`.
    fn network_of(&self, ip: Ipv4Addr) -> Option<&NetState> {
        self.networks.values().find(|n| n.record.cidr.contains(ip))
    }
}

/// The host's networks.
pub struct HostNetworks {
    config: NetConfig,
    nl: Netlink,
    nft: Nft,
    store: Arc<Store>,
    netns: NetnsDir,
    /// The prefixes of every veth and TAP the agent makes.
    port_prefixes: Vec<String>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for HostNetworks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostNetworks")
            .field("config", &self.config)
            .finish()
    }
}

/// Run blocking work (redb commits, nft, mounts, ioctls) off the runtime
/// threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NetError::io("blocking task")(std::io::Error::other(e.to_string())))?
}

fn nft_for(config: &NetConfig) -> Nft {
    config.nft_binary.clone().map(Nft::new).unwrap_or_default()
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl HostNetworks {
    /// Open the networks: the state file, every network's bridge (created
    /// if missing), forwarding, the netns directory, and the firewall
    /// reloaded from the stored records. Nothing of any endpoint is
    /// touched; see [`reconcile`].
    ///
    /// Must be called inside a tokio runtime, which then drives the
    /// networks' netlink connection.
    ///
    /// [`reconcile`]: HostNetworks::reconcile
    pub async fn open(config: NetConfig) -> Result<Self> {
        config.validate()?;
        let store = {
            let (path, cidr) = (config.state_file.clone(), config.cidr);
            blocking(move || Store::open(&path, cidr)).await?
        };
        HostNetworks::open_with(config, store).await
    }

    /// [`HostNetworks::open`] with the networks' tables in `db`, a
    /// database the caller shares (the agent's state file);
    /// `config.state_file` is not used.
    pub async fn open_shared(config: NetConfig, db: Arc<redb::Database>) -> Result<Self> {
        config.validate()?;
        let cidr = config.cidr;
        let store = blocking(move || Store::with_db(db, cidr)).await?;
        HostNetworks::open_with(config, store).await
    }

    async fn open_with(config: NetConfig, store: Store) -> Result<Self> {
        let store = Arc::new(store);
        let nl = Netlink::connect()?;
        let loaded = {
            let store = store.clone();
            blocking(move || store.load()).await?
        };
        let mut records = loaded.networks;
        let default = Self::default_record(&config, records.get(DEFAULT_NETWORK))?;
        if let Some(other) = records
            .values()
            .find(|n| n.name != DEFAULT_NETWORK && n.cidr.overlaps(&default.cidr))
        {
            return Err(NetError::InvalidConfig(format!(
                "the default network's CIDR {} overlaps network {:?} ({})",
                default.cidr, other.name, other.cidr
            )));
        }
        if records.get(DEFAULT_NETWORK) != Some(&default) {
            let (store, rec) = (store.clone(), default.clone());
            blocking(move || store.put_network(&rec)).await?;
        }
        records.insert(DEFAULT_NETWORK.to_string(), default);
        let mut networks = BTreeMap::new();
        for (name, record) in records {
            let bridge_index = bridge::ensure_bridge(&nl, &record.bridge, record.cidr).await?;
            networks.insert(
                name,
                NetState {
                    record,
                    bridge_index,
                },
            );
        }
        if config.ip_forward {
            bridge::enable_ip_forward()?;
        }
        let netns = NetnsDir::new(config.netns_dir.clone());
        {
            let netns = netns.clone();
            blocking(move || netns.ensure()).await?;
        }
        let net = HostNetworks {
            nft: nft_for(&config),
            port_prefixes: vec![veth_prefix(&config.bridge), tap_prefix(&config.bridge)],
            config,
            nl,
            store,
            netns,
            inner: Mutex::new(Inner {
                networks,
                pods: loaded.pods,
                taps: loaded.taps,
                policies: loaded.policies,
            }),
        };
        {
            let inner = net.inner.lock().await;
            net.apply_firewall(&inner).await?;
        }
        Ok(net)
    }

    /// The default network as the configuration defines it (its creation
    /// time kept from `stored`).
    fn default_record(config: &NetConfig, stored: Option<&NetworkRecord>) -> Result<NetworkRecord> {
        Ok(NetworkRecord {
            name: DEFAULT_NETWORK.to_string(),
            bridge: config.bridge.clone(),
            cidr: config.cidr,
            nat: config.masquerade,
            namespaces: Vec::new(),
            nameservers: stored.map(|s| s.nameservers.clone()).unwrap_or_default(),
            created_at: stored.map_or_else(unix_now, |s| s.created_at),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// The allocator over the default network's CIDR (read it; allocating
    /// through it directly bypasses the records).
    pub fn ipam(&self) -> Result<Ipam> {
        self.store.ipam()
    }

    /// The netns file pod `pod_id` has or would have.
    pub fn netns_path(&self, pod_id: &str) -> PathBuf {
        self.netns.path_of(pod_id)
    }

    /// The TAP VM NIC `owner` gets.
    pub fn tap_name(&self, owner: &str) -> String {
        host_tap(&self.config.bridge, owner)
    }

    fn ruleset<'a>(&'a self, inner: &'a Inner) -> Ruleset<'a> {
        let pods = inner.pods.values().map(|p| FirewallEndpoint {
            id: &p.pod_id,
            namespace: &p.namespace,
            ip: p.ip,
            port: &p.host_veth,
            port_mappings: &p.port_mappings,
        });
        let taps = inner.taps.values().map(|t| FirewallEndpoint {
            id: &t.owner,
            namespace: &t.namespace,
            ip: t.ip,
            port: &t.tap,
            port_mappings: &[],
        });
        Ruleset {
            table: &self.config.nft_table,
            port_prefixes: &self.port_prefixes,
            networks: inner
                .networks
                .values()
                .map(|n| FirewallNetwork {
                    bridge: &n.record.bridge,
                    cidr: n.record.cidr,
                    nat: n.record.nat,
                })
                .collect(),
            endpoints: pods.chain(taps).collect(),
            policies: &inner.policies,
            host_services: &self.config.host_services,
        }
    }

    async fn apply_firewall(&self, inner: &Inner) -> Result<()> {
        let script = self.ruleset(inner).render();
        let nft = self.nft.clone();
        blocking(move || nft.apply(&script)).await
    }

    /// Adds endpoint `id` (in `inner` already) to the firewall with
    /// additions only (see [`Ruleset::render_attach`]); a full reload when
    /// that fails (the tables were changed behind our back, or an earlier
    /// attach failed half-way).
    async fn add_to_firewall(&self, inner: &Inner, id: &str) -> Result<()> {
        let ruleset = self.ruleset(inner);
        let Some(new) = ruleset.endpoints.iter().find(|e| e.id == id) else {
            return self.apply_firewall(inner).await;
        };
        let script = ruleset.render_attach(new);
        let nft = self.nft.clone();
        if blocking(move || nft.apply(&script)).await.is_ok() {
            return Ok(());
        }
        self.apply_firewall(inner).await
    }

    // ---- networks ----

    /// Make a network: its record, its bridge with the gateway address,
    /// its firewall rules. Refused, with nothing made: a bad name, bridge
    /// or namespace; a name or bridge in use (by a network or any host
    /// link); a CIDR overlapping another network's or holding one of the
    /// host's addresses.
    pub async fn create_network(&self, req: NetworkRequest) -> Result<NetworkInfo> {
        check_network_name(&req.name)?;
        let bridge = req
            .bridge
            .clone()
            .unwrap_or_else(|| super::names::default_bridge(&req.name));
        check_link_name(&bridge).map_err(|_| {
            NetError::InvalidArgument(format!(
                "bridge {bridge:?} must be 1 to 15 characters of A-Z a-z 0-9 . _ -"
            ))
        })?;
        for ns in &req.namespaces {
            check_id("namespace", ns)?;
        }
        let mut inner = self.inner.lock().await;
        if inner.networks.contains_key(&req.name) {
            return Err(NetError::NetworkExists(req.name));
        }
        for n in inner.networks.values() {
            if n.record.bridge == bridge {
                return Err(NetError::Conflict(format!(
                    "bridge {bridge} is network {:?}'s",
                    n.record.name
                )));
            }
            if n.record.cidr.overlaps(&req.cidr) {
                return Err(NetError::Conflict(format!(
                    "CIDR {} overlaps network {:?} ({})",
                    req.cidr, n.record.name, n.record.cidr
                )));
            }
        }
        self.check_host_free(&bridge, req.cidr).await?;
        let record = NetworkRecord {
            name: req.name.clone(),
            bridge,
            cidr: req.cidr,
            nat: req.nat,
            namespaces: req.namespaces,
            nameservers: req.nameservers,
            created_at: unix_now(),
        };
        {
            let (store, rec) = (self.store.clone(), record.clone());
            blocking(move || store.put_network(&rec)).await?;
        }
        let made = async {
            let bridge_index = bridge::ensure_bridge(&self.nl, &record.bridge, record.cidr).await?;
            inner.networks.insert(
                record.name.clone(),
                NetState {
                    record: record.clone(),
                    bridge_index,
                },
            );
            self.apply_firewall(&inner).await
        };
        if let Err(e) = made.await {
            // Undo, best effort; a failure leaves the record for a later
            // delete to finish.
            inner.networks.remove(&record.name);
            let _ = self.nl.delete_link_named(&record.bridge).await;
            let (store, rec) = (self.store.clone(), record.clone());
            let _ = blocking(move || store.delete_network(&rec)).await;
            let _ = self.apply_firewall(&inner).await;
            return Err(e);
        }
        Ok(NetworkInfo {
            free_addresses: record.cidr.pod_capacity(),
            record,
            holders: Vec::new(),
        })
    }

    /// Refuses a bridge name any host link has, and a CIDR holding any
    /// address the host has.
    async fn check_host_free(&self, bridge: &str, cidr: Ipv4Cidr) -> Result<()> {
        let links = self.nl.links().await?;
        if links.iter().any(|l| l.name == bridge) {
            return Err(NetError::Conflict(format!(
                "a link named {bridge} exists on the host"
            )));
        }
        for link in &links {
            for (ip, _) in self.nl.ipv4_addresses(link.index).await? {
                if cidr.contains(ip) {
                    return Err(NetError::Conflict(format!(
                        "CIDR {cidr} holds {ip}, an address of the host's {}",
                        link.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Delete network `name`: refused for the default network and while
    /// any address of it is held (a pod, a VM's NIC, running or not).
    pub async fn delete_network(&self, name: &str) -> Result<()> {
        if name == DEFAULT_NETWORK {
            return Err(NetError::InvalidArgument(
                "the default network is the agent's own, made from its configuration".into(),
            ));
        }
        let mut inner = self.inner.lock().await;
        let record = inner.network(name)?.record.clone();
        let users: Vec<String> = {
            let store = self.store.clone();
            blocking(move || store.allocations())
                .await?
                .into_iter()
                .filter(|(ip, _)| record.cidr.contains(*ip))
                .map(|(_, owner)| owner)
                .collect()
        };
        if !users.is_empty() {
            return Err(NetError::InUse {
                network: name.to_string(),
                users: users.join(", "),
            });
        }
        let state = inner.networks.remove(name);
        if let Err(e) = self.apply_firewall(&inner).await {
            if let Some(state) = state {
                inner.networks.insert(name.to_string(), state);
            }
            return Err(e);
        }
        self.nl.delete_link_named(&record.bridge).await?;
        let store = self.store.clone();
        blocking(move || store.delete_network(&record)).await
    }

    /// Network `name` and who is on it.
    pub async fn network(&self, name: &str) -> Result<NetworkInfo> {
        let inner = self.inner.lock().await;
        let record = inner.network(name)?.record.clone();
        let all = self.allocations().await?;
        Ok(Self::info(&inner, record, &all))
    }

    /// Every network, by name.
    pub async fn networks(&self) -> Result<Vec<NetworkInfo>> {
        let inner = self.inner.lock().await;
        let all = self.allocations().await?;
        Ok(inner
            .networks
            .values()
            .map(|n| Self::info(&inner, n.record.clone(), &all))
            .collect())
    }

    async fn allocations(&self) -> Result<Vec<(Ipv4Addr, String)>> {
        let store = self.store.clone();
        blocking(move || store.allocations()).await
    }

    fn info(inner: &Inner, record: NetworkRecord, all: &[(Ipv4Addr, String)]) -> NetworkInfo {
        let holders: Vec<Holder> = all
            .iter()
            .filter(|(ip, _)| record.cidr.contains(*ip))
            .map(|(ip, owner)| {
                let (namespace, port) = match (inner.pods.get(owner), inner.taps.get(owner)) {
                    (Some(p), _) => (Some(p.namespace.clone()), Some(p.host_veth.clone())),
                    (_, Some(t)) => (Some(t.namespace.clone()), Some(t.tap.clone())),
                    _ => (None, None),
                };
                Holder {
                    owner: owner.clone(),
                    ip: *ip,
                    namespace,
                    port,
                }
            })
            .collect();
        let used = u32::try_from(holders.len()).unwrap_or(u32::MAX);
        NetworkInfo {
            free_addresses: record.cidr.pod_capacity().saturating_sub(used),
            record,
            holders,
        }
    }

    // ---- VM NICs ----

    /// Reserve VM NIC `owner` (`<vm id>.<index>`) of `namespace` an address
    /// on `network`: `ip` when asked (refused when taken or not a
    /// workload address of the CIDR), else the next free one. The same
    /// owner asking again gets what it holds.
    pub async fn reserve(
        &self,
        network: &str,
        owner: &str,
        namespace: &str,
        ip: Option<Ipv4Addr>,
    ) -> Result<Reservation> {
        check_id("NIC", owner)?;
        check_id("namespace", namespace)?;
        let inner = self.inner.lock().await;
        let record = inner.network(network)?.record.clone();
        if !record.admits(namespace) {
            return Err(NetError::NotAdmitted {
                network: network.to_string(),
                namespace: namespace.to_string(),
                admits: record.namespaces.join(", "),
            });
        }
        let ip = {
            let (store, rec, owner) = (self.store.clone(), record.clone(), owner.to_string());
            blocking(move || store.reserve(&rec, &owner, ip)).await?
        };
        Ok(Reservation {
            network: network.to_string(),
            ip,
            prefix_len: record.cidr.prefix(),
            gateway: record.cidr.gateway(),
            nameservers: record.nameservers,
        })
    }

    /// Release VM NIC `owner`'s address, unplugging its TAP first if it
    /// still has one. The address it had, if any.
    pub async fn release(&self, owner: &str) -> Result<Option<Ipv4Addr>> {
        check_id("NIC", owner)?;
        let mut inner = self.inner.lock().await;
        self.unplug_locked(&mut inner, owner).await?;
        let (store, owner) = (self.store.clone(), owner.to_string());
        blocking(move || store.release(&owner)).await
    }

    /// Plug VM NIC `owner` in: its TAP (made persistent, owned by
    /// `uid_gid` when given, with a virtio-net header) on the bridge of
    /// the network its reserved address is on, up, and in the firewall.
    /// Plugging in a NIC that is plugged in makes sure its TAP is in place.
    pub async fn plug(
        &self,
        owner: &str,
        namespace: &str,
        uid_gid: Option<(u32, u32)>,
    ) -> Result<TapRecord> {
        check_id("NIC", owner)?;
        check_id("namespace", namespace)?;
        let mut inner = self.inner.lock().await;
        let ip = {
            let (store, owner) = (self.store.clone(), owner.to_string());
            blocking(move || store.ipam()?.get(&owner)).await?
        }
        .ok_or_else(|| NetError::InvalidArgument(format!("NIC {owner} has no address")))?;
        let network = inner.network_of(ip).ok_or(NetError::ForeignAddress(ip))?;
        let bridge_index = network.bridge_index;
        let rec = TapRecord {
            owner: owner.to_string(),
            network: network.record.name.clone(),
            namespace: namespace.to_string(),
            ip,
            tap: self.tap_name(owner),
        };
        if inner.taps.get(owner) != Some(&rec) {
            let (store, r) = (self.store.clone(), rec.clone());
            blocking(move || store.put_tap(&r)).await?;
            inner.taps.insert(owner.to_string(), rec.clone());
        }
        let made = async {
            let name = rec.tap.clone();
            blocking(move || tap::create(&name, uid_gid)).await?;
            let link = self.nl.link(&rec.tap).await?.ok_or_else(|| {
                NetError::io(format!("TAP {}", rec.tap))(std::io::Error::from(
                    std::io::ErrorKind::NotFound,
                ))
            })?;
            if link.controller != Some(bridge_index) {
                self.nl.set_controller(link.index, bridge_index).await?;
            }
            self.nl.set_up(link.index).await?;
            self.add_to_firewall(&inner, owner).await
        };
        match made.await {
            Ok(()) => Ok(rec),
            Err(e) => {
                let _ = self.unplug_locked(&mut inner, owner).await;
                Err(e)
            }
        }
    }

    /// Unplug VM NIC `owner`: out of the firewall, its TAP deleted, its
    /// record gone; its address stays reserved. `false` if it was not
    /// plugged in.
    pub async fn unplug(&self, owner: &str) -> Result<bool> {
        check_id("NIC", owner)?;
        let mut inner = self.inner.lock().await;
        self.unplug_locked(&mut inner, owner).await
    }

    async fn unplug_locked(&self, inner: &mut Inner, owner: &str) -> Result<bool> {
        let Some(rec) = inner.taps.remove(owner) else {
            return Ok(false);
        };
        if let Err(e) = self.apply_firewall(inner).await {
            inner.taps.insert(owner.to_string(), rec);
            return Err(e);
        }
        if let Err(e) = self.nl.delete_link_named(&rec.tap).await {
            inner.taps.insert(owner.to_string(), rec);
            return Err(e);
        }
        let (store, owner) = (self.store.clone(), owner.to_string());
        blocking(move || store.delete_tap(&owner)).await?;
        Ok(true)
    }

    /// The plugged-in VM NICs, by owner.
    pub async fn taps(&self) -> Vec<TapRecord> {
        self.inner.lock().await.taps.values().cloned().collect()
    }

    // ---- pods ----

    /// Give pod `pod_id` of `namespace` its place on the default network:
    /// see [`HostNetworks::attach_to`].
    pub async fn attach(
        &self,
        pod_id: &str,
        namespace: &str,
        port_mappings: &[PortMapping],
    ) -> Result<PodAttachment> {
        self.attach_to(DEFAULT_NETWORK, pod_id, namespace, port_mappings)
            .await
    }

    /// Give pod `pod_id` of `namespace` its network on `network`: an
    /// address, a netns with `lo` and `eth0`, and the published
    /// `port_mappings`. Calling it again for an attached pod returns its
    /// attachment, repairing a missing netns or veth in place (same
    /// address); a different network, namespace or different mappings is
    /// [`NetError::AlreadyAttached`].
    pub async fn attach_to(
        &self,
        network: &str,
        pod_id: &str,
        namespace: &str,
        port_mappings: &[PortMapping],
    ) -> Result<PodAttachment> {
        check_id("pod id", pod_id)?;
        check_id("namespace", namespace)?;
        check_mappings(port_mappings)?;
        let mut inner = self.inner.lock().await;
        let net = inner.network(network)?;
        let (record, bridge_index) = (net.record.clone(), net.bridge_index);
        if !record.admits(namespace) {
            return Err(NetError::NotAdmitted {
                network: network.to_string(),
                namespace: namespace.to_string(),
                admits: record.namespaces.join(", "),
            });
        }
        if let Some(rec) = inner.pods.get(pod_id) {
            if rec.namespace != namespace
                || rec.port_mappings != port_mappings
                || rec.network != network
            {
                return Err(NetError::AlreadyAttached {
                    pod_id: pod_id.to_string(),
                    namespace: rec.namespace.clone(),
                });
            }
            if netns::is_bound(&rec.netns)
                && veth::is_attached(&self.nl, bridge_index, &rec.host_veth).await?
            {
                return Ok(PodAttachment::new(rec, record.cidr));
            }
        } else {
            check_new_mappings(port_mappings, &self.config.host_ports)?;
        }
        for (other, rec) in &inner.pods {
            if other == pod_id {
                continue;
            }
            for m in port_mappings {
                if rec.port_mappings.iter().any(|o| o.overlaps(m)) {
                    return Err(NetError::PortInUse {
                        protocol: m.protocol.as_str(),
                        port: m.host_port,
                        holder: other.clone(),
                    });
                }
            }
        }

        let rec = {
            let store = self.store.clone();
            let rec = PodRecord {
                pod_id: pod_id.to_string(),
                network: network.to_string(),
                namespace: namespace.to_string(),
                ip: Ipv4Addr::UNSPECIFIED,
                host_veth: host_veth(&self.config.bridge, pod_id),
                netns: self.netns.path_of(pod_id),
                port_mappings: port_mappings.to_vec(),
            };
            let (id, net) = (pod_id.to_string(), record.clone());
            blocking(move || store.attach(&id, &net, |ip| PodRecord { ip, ..rec })).await?
        };
        inner.pods.insert(pod_id.to_string(), rec.clone());

        let setup = async {
            let netns = self.netns.clone();
            let id = pod_id.to_string();
            let path = blocking(move || netns.create(&id)).await?;
            veth::attach(
                &self.nl,
                bridge_index,
                &rec.host_veth,
                &path,
                rec.ip,
                record.cidr,
            )
            .await?;
            self.add_to_firewall(&inner, pod_id).await
        };
        match setup.await {
            Ok(()) => Ok(PodAttachment::new(&rec, record.cidr)),
            Err(e) => {
                // Undo, best effort. If it fails the record stays (in the
                // store and here), so a detach or reconcile finishes it.
                if self.remove_pod_kernel_state(&rec).await.is_ok() {
                    let store = self.store.clone();
                    let id = pod_id.to_string();
                    if blocking(move || store.detach(&id)).await.is_ok() {
                        inner.pods.remove(pod_id);
                    }
                }
                let _ = self.apply_firewall(&inner).await;
                Err(e)
            }
        }
    }

    async fn remove_pod_kernel_state(&self, rec: &PodRecord) -> Result<()> {
        veth::detach(&self.nl, &rec.host_veth).await?;
        let netns = self.netns.clone();
        let id = rec.pod_id.clone();
        blocking(move || netns.remove(&id)).await?;
        Ok(())
    }

    /// Remove pod `pod_id`'s network: its port mappings, veth pair and
    /// netns; then release its address. `false` if it was not attached.
    pub async fn detach(&self, pod_id: &str) -> Result<bool> {
        check_id("pod id", pod_id)?;
        let mut inner = self.inner.lock().await;
        self.detach_locked(&mut inner, pod_id).await
    }

    async fn detach_locked(&self, inner: &mut Inner, pod_id: &str) -> Result<bool> {
        let Some(rec) = inner.pods.remove(pod_id) else {
            // No record: still clear anything an interrupted attach left
            // under the derived names (a no-op when there is nothing).
            let rec = PodRecord {
                pod_id: pod_id.to_string(),
                network: DEFAULT_NETWORK.to_string(),
                namespace: String::new(),
                ip: Ipv4Addr::UNSPECIFIED,
                host_veth: host_veth(&self.config.bridge, pod_id),
                netns: self.netns.path_of(pod_id),
                port_mappings: Vec::new(),
            };
            self.remove_pod_kernel_state(&rec).await?;
            return Ok(false);
        };
        if let Err(e) = self.apply_firewall(inner).await {
            inner.pods.insert(pod_id.to_string(), rec);
            return Err(e);
        }
        if let Err(e) = self.remove_pod_kernel_state(&rec).await {
            // Keep the record (and the address) until the kernel state is
            // gone; a later detach or reconcile retries.
            inner.pods.insert(pod_id.to_string(), rec);
            return Err(e);
        }
        let store = self.store.clone();
        let id = pod_id.to_string();
        blocking(move || store.detach(&id)).await?;
        Ok(true)
    }

    /// Let workloads of namespace `from` open connections to those of
    /// namespace `to` (replies flow back; the reverse direction needs its
    /// own policy). Persisted. Workloads of one namespace always reach
    /// each other.
    pub async fn allow(&self, from: &str, to: &str) -> Result<()> {
        check_id("namespace", from)?;
        check_id("namespace", to)?;
        let mut inner = self.inner.lock().await;
        let store = self.store.clone();
        let (f, t) = (from.to_string(), to.to_string());
        blocking(move || store.allow(&f, &t)).await?;
        inner.policies.insert((from.to_string(), to.to_string()));
        self.apply_firewall(&inner).await
    }

    /// Withdraw the policy `from` → `to`. New connections are refused at
    /// once; connections already established run on (conntrack).
    pub async fn revoke(&self, from: &str, to: &str) -> Result<()> {
        check_id("namespace", from)?;
        check_id("namespace", to)?;
        let mut inner = self.inner.lock().await;
        let store = self.store.clone();
        let (f, t) = (from.to_string(), to.to_string());
        blocking(move || store.revoke(&f, &t)).await?;
        inner.policies.remove(&(from.to_string(), to.to_string()));
        self.apply_firewall(&inner).await
    }

    /// The policies, as (from, to) pairs.
    pub async fn policies(&self) -> Vec<(String, String)> {
        self.inner.lock().await.policies.iter().cloned().collect()
    }

    /// Pod `pod_id`'s attachment.
    pub async fn get(&self, pod_id: &str) -> Option<PodAttachment> {
        let inner = self.inner.lock().await;
        let rec = inner.pods.get(pod_id)?;
        let cidr = inner.network(&rec.network).ok()?.record.cidr;
        Some(PodAttachment::new(rec, cidr))
    }

    /// Every attached pod, by id.
    pub async fn list(&self) -> Vec<PodAttachment> {
        let inner = self.inner.lock().await;
        inner
            .pods
            .values()
            .filter_map(|r| {
                let cidr = inner.network(&r.network).ok()?.record.cidr;
                Some(PodAttachment::new(r, cidr))
            })
            .collect()
    }

    // ---- restart ----

    /// Bring the networks in line with what is alive: detach every other
    /// recorded pod, unplug every TAP whose VM does not run, release
    /// addresses no live pod or existing VM holds, delete the agent's
    /// veths, TAPs and netns files that no live endpoint owns, re-create
    /// bridges that vanished (and put running VMs' TAPs back on them), and
    /// reload the firewall.
    pub async fn reconcile(&self, live: &Live<'_>) -> Result<ReconcileReport> {
        let mut report = ReconcileReport::default();
        let mut inner = self.inner.lock().await;
        for n in inner.networks.values_mut() {
            n.bridge_index =
                bridge::ensure_bridge(&self.nl, &n.record.bridge, n.record.cidr).await?;
        }
        {
            let netns = self.netns.clone();
            blocking(move || netns.ensure()).await?;
        }

        let dead: Vec<String> = inner
            .pods
            .keys()
            .filter(|id| !live.pods.contains(id.as_str()))
            .cloned()
            .collect();
        for id in dead {
            self.detach_locked(&mut inner, &id).await?;
            report.removed_pods.push(id);
        }
        let stopped: Vec<String> = inner
            .taps
            .keys()
            .filter(|id| !live.plugged.contains(id.as_str()))
            .cloned()
            .collect();
        for id in stopped {
            self.unplug_locked(&mut inner, &id).await?;
            report.removed_taps.push(id);
        }

        let orphans = {
            let store = self.store.clone();
            blocking(move || store.load()).await?.orphan_allocations
        };
        for (ip, owner) in orphans {
            if live.reserved.contains(owner.as_str()) {
                continue;
            }
            let store = self.store.clone();
            blocking(move || store.release(&owner)).await?;
            report.released_addresses.push(ip);
        }

        self.remove_stray_links(&inner, &mut report).await?;

        let files = {
            let netns = self.netns.clone();
            blocking(move || netns.list()).await?
        };
        for name in files {
            if !inner.pods.contains_key(&name) {
                let netns = self.netns.clone();
                let n = name.clone();
                if blocking(move || netns.remove_entry(&n)).await? {
                    report.removed_netns.push(name);
                }
            }
        }

        for rec in inner.pods.values() {
            let bridge_index = inner.network(&rec.network)?.bridge_index;
            if !netns::is_bound(&rec.netns)
                || !veth::is_attached(&self.nl, bridge_index, &rec.host_veth).await?
            {
                report.broken.push(rec.pod_id.clone());
            }
        }
        for rec in inner.taps.values() {
            let bridge_index = inner.network(&rec.network)?.bridge_index;
            match self.nl.link(&rec.tap).await? {
                Some(link) => {
                    // A re-created bridge lost its ports.
                    if link.controller != Some(bridge_index) {
                        self.nl.set_controller(link.index, bridge_index).await?;
                    }
                    self.nl.set_up(link.index).await?;
                }
                None => report.missing_taps.push(rec.owner.clone()),
            }
        }
        let mut unknown: Vec<String> = live
            .pods
            .iter()
            .filter(|id| !inner.pods.contains_key(**id))
            .map(|id| id.to_string())
            .collect();
        unknown.sort();
        report.unknown = unknown;

        self.apply_firewall(&inner).await?;
        Ok(report)
    }

    /// Deletes the agent's veths and TAPs (by name, or a veth on one of
    /// its bridges) that no record names.
    async fn remove_stray_links(&self, inner: &Inner, report: &mut ReconcileReport) -> Result<()> {
        let tag = &self.config.bridge;
        let wanted: HashSet<&str> = inner
            .pods
            .values()
            .map(|r| r.host_veth.as_str())
            .chain(inner.taps.values().map(|t| t.tap.as_str()))
            .collect();
        let bridges: HashSet<u32> = inner.networks.values().map(|n| n.bridge_index).collect();
        for link in self.nl.links().await? {
            let on_ours = link.controller.is_some_and(|c| bridges.contains(&c))
                && link.kind.as_deref() == Some("veth");
            let ours = is_host_veth(tag, &link.name) || is_host_tap(tag, &link.name) || on_ours;
            if ours
                && !wanted.contains(link.name.as_str())
                && self.nl.delete_link(link.index).await?
            {
                report.removed_links.push(link.name);
            }
        }
        Ok(())
    }

    /// Remove everything: every pod's network (records deleted, addresses
    /// released), every TAP, the firewall table, every network's bridge
    /// and the netns directory. The state file stays, with the networks,
    /// the policies and the IPAM cursors, so networks opened on it later
    /// still do not hand recent addresses out first.
    pub async fn teardown(self) -> Result<()> {
        let mut inner = self.inner.lock().await;
        let ids: Vec<String> = inner.pods.keys().cloned().collect();
        for id in ids {
            self.detach_locked(&mut inner, &id).await?;
        }
        let taps: Vec<String> = inner.taps.keys().cloned().collect();
        for id in taps {
            self.unplug_locked(&mut inner, &id).await?;
        }
        for n in inner.networks.values() {
            if n.record.name != DEFAULT_NETWORK {
                self.nl.delete_link_named(&n.record.bridge).await?;
            }
        }
        drop(inner);
        purge_with(&self.config, &self.nl).await
    }

    /// Remove the kernel state `config` describes (the agent's veths and
    /// TAPs, the default bridge, the nftables tables, netns files and
    /// directory) without opening the state file: for an operator's
    /// cleanup, or a test's guard after a failure. Other networks'
    /// bridges are known only to the state file: see
    /// [`teardown`](HostNetworks::teardown). A later
    /// [`open`](HostNetworks::open) plus
    /// [`reconcile`](HostNetworks::reconcile) clears the stale records.
    pub async fn purge(config: &NetConfig) -> Result<()> {
        config.validate()?;
        let nl = Netlink::connect()?;
        purge_with(config, &nl).await
    }
}

async fn purge_with(config: &NetConfig, nl: &Netlink) -> Result<()> {
    let nft = nft_for(config);
    let table = config.nft_table.clone();
    blocking(move || nft.delete_table(&table)).await?;
    let bridge = nl.link(&config.bridge).await?;
    for link in nl.links().await? {
        let on_bridge = bridge
            .as_ref()
            .is_some_and(|b| link.controller == Some(b.index));
        if is_host_veth(&config.bridge, &link.name)
            || is_host_tap(&config.bridge, &link.name)
            || (on_bridge && link.kind.as_deref() == Some("veth"))
        {
            nl.delete_link(link.index).await?;
        }
    }
    if let Some(b) = bridge.filter(|b| b.kind.as_deref() == Some("bridge")) {
        nl.delete_link(b.index).await?;
    }
    let netns = NetnsDir::new(config.netns_dir.clone());
    blocking(move || netns.remove_all().map(drop)).await
}
