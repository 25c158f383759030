//! [`HostNetworks`]: the pod network of one host, tying the bridge, the
//! per-pod netns and veth, IPAM, the firewall and the state file together.
//!
//! **Order of operations, for crash safety.** Attach: the address and the
//! pod's record are committed first (one transaction), then the netns and
//! the veth pair are made, then the firewall is reloaded; so whatever a
//! crash leaves in the kernel is named by a record, and reconcile can
//! remove it. Detach: the firewall stops naming the pod, the pair and the
//! netns go, and only then are the record deleted and the address released,
//! so an address is never free while something still uses it. Every step
//! tolerates finding its work already done.
//!
//! **Restart.** [`HostNetworks::open`] re-creates the bridge and reloads the
//! firewall from the stored records, touching no pod; the caller then
//! passes the pods it knows to be alive to [`HostNetworks::reconcile`], which
//! removes everything else (records, addresses, veths, netns files) and
//! reports live pods whose network is missing, for the caller to attach
//! again (attach repairs a pod's network in place, keeping its address).
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
use super::config::NetConfig;
use super::error::{NetError, Result};
use super::ipam::Ipam;
use super::names::{check_id, host_veth, is_host_veth, veth_prefix};
use super::netlink::Netlink;
use super::netns::{self, NetnsDir};
use super::nft::{FirewallPod, Nft, Ruleset};
use super::portmap::{check_mappings, check_new_mappings, PortMapping};
use super::store::{PodRecord, Store};
use super::veth;

/// A pod's place on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAttachment {
    /// The pod id.
    pub pod_id: String,
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

/// What [`HostNetworks::reconcile`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Pods not alive whose network was removed and address released.
    pub removed_pods: Vec<String>,
    /// Addresses released that had no pod record.
    pub released_addresses: Vec<Ipv4Addr>,
    /// Host links deleted that belonged to no live pod.
    pub removed_links: Vec<String>,
    /// Netns files removed that belonged to no live pod.
    pub removed_netns: Vec<String>,
    /// Live pods whose netns or veth is missing: attach them again.
    pub broken: Vec<String>,
    /// Live pods this network has no record of: attach them.
    pub unknown: Vec<String>,
}

struct Inner {
    bridge_index: u32,
    pods: BTreeMap<String, PodRecord>,
    policies: BTreeSet<(String, String)>,
}

/// The host's pod network.
pub struct HostNetworks {
    config: NetConfig,
    nl: Netlink,
    nft: Nft,
    store: Arc<Store>,
    netns: NetnsDir,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for HostNetworks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostNetworks")
            .field("config", &self.config)
            .finish()
    }
}

/// Run blocking work (redb commits, nft, mounts) off the runtime threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NetError::io("blocking task")(std::io::Error::other(e.to_string())))?
}

fn nft_for(config: &NetConfig) -> Nft {
    config.nft_binary.clone().map(Nft::new).unwrap_or_default()
}

impl HostNetworks {
    /// Open the network: the state file, the bridge (created if missing),
    /// forwarding, the netns directory, and the firewall reloaded from the
    /// stored pods. Nothing of any pod is touched; see [`reconcile`].
    ///
    /// Must be called inside a tokio runtime, which then drives the
    /// network's netlink connection.
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

    /// [`HostNetworks::open`] with the network's tables in `db`, a database
    /// the caller shares (the agent's state file); `config.state_file` is
    /// not used.
    pub async fn open_shared(config: NetConfig, db: Arc<redb::Database>) -> Result<Self> {
        config.validate()?;
        let cidr = config.cidr;
        let store = blocking(move || Store::with_db(db, cidr)).await?;
        HostNetworks::open_with(config, store).await
    }

    async fn open_with(config: NetConfig, store: Store) -> Result<Self> {
        let store = Arc::new(store);
        let nl = Netlink::connect()?;
        let bridge_index = bridge::ensure_bridge(&nl, &config.bridge, config.cidr).await?;
        if config.ip_forward {
            bridge::enable_ip_forward()?;
        }
        let netns = NetnsDir::new(config.netns_dir.clone());
        {
            let netns = netns.clone();
            blocking(move || netns.ensure()).await?;
        }
        let loaded = {
            let store = store.clone();
            blocking(move || store.load()).await?
        };
        let net = HostNetworks {
            nft: nft_for(&config),
            config,
            nl,
            store,
            netns,
            inner: Mutex::new(Inner {
                bridge_index,
                pods: loaded.pods,
                policies: loaded.policies,
            }),
        };
        {
            let inner = net.inner.lock().await;
            net.apply_firewall(&inner.pods, &inner.policies).await?;
        }
        Ok(net)
    }

    /// The configuration.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// The allocator over the network's state file (read it; allocating
    /// through it directly bypasses the records).
    pub fn ipam(&self) -> Result<Ipam> {
        self.store.ipam()
    }

    /// The netns file pod `pod_id` has or would have.
    pub fn netns_path(&self, pod_id: &str) -> PathBuf {
        self.netns.path_of(pod_id)
    }

    async fn apply_firewall(
        &self,
        pods: &BTreeMap<String, PodRecord>,
        policies: &BTreeSet<(String, String)>,
    ) -> Result<()> {
        let prefix = veth_prefix(&self.config.bridge);
        let script = self.ruleset(&prefix, pods, policies).render();
        let nft = self.nft.clone();
        blocking(move || nft.apply(&script)).await
    }

    /// Adds attached pod `new` to the firewall with additions only (see
    /// [`Ruleset::render_attach`]); a full reload when that fails (the
    /// tables were changed behind our back, or a pod's earlier attach
    /// failed half-way) or the pod is already in the tables (a repair).
    async fn add_to_firewall(
        &self,
        pods: &BTreeMap<String, PodRecord>,
        policies: &BTreeSet<(String, String)>,
        new: &PodRecord,
    ) -> Result<()> {
        let prefix = veth_prefix(&self.config.bridge);
        let ruleset = self.ruleset(&prefix, pods, policies);
        let pod = FirewallPod {
            pod_id: &new.pod_id,
            namespace: &new.namespace,
            ip: new.ip,
            host_veth: &new.host_veth,
            port_mappings: &new.port_mappings,
        };
        let script = ruleset.render_attach(&pod);
        let nft = self.nft.clone();
        if blocking(move || nft.apply(&script)).await.is_ok() {
            return Ok(());
        }
        self.apply_firewall(pods, policies).await
    }

    fn ruleset<'a>(
        &'a self,
        prefix: &'a str,
        pods: &'a BTreeMap<String, PodRecord>,
        policies: &'a BTreeSet<(String, String)>,
    ) -> Ruleset<'a> {
        Ruleset {
            table: &self.config.nft_table,
            bridge: &self.config.bridge,
            veth_prefix: prefix,
            cidr: self.config.cidr,
            masquerade: self.config.masquerade,
            pods: pods
                .values()
                .map(|p| FirewallPod {
                    pod_id: &p.pod_id,
                    namespace: &p.namespace,
                    ip: p.ip,
                    host_veth: &p.host_veth,
                    port_mappings: &p.port_mappings,
                })
                .collect(),
            policies,
            host_services: &self.config.host_services,
        }
    }

    /// Give pod `pod_id` of `namespace` its network: an address, a netns
    /// with `lo` and `eth0`, and the published `port_mappings`. Calling it
    /// again for an attached pod returns its attachment, repairing a
    /// missing netns or veth in place (same address); a different
    /// namespace or different mappings is [`NetError::AlreadyAttached`].
    pub async fn attach(
        &self,
        pod_id: &str,
        namespace: &str,
        port_mappings: &[PortMapping],
    ) -> Result<PodAttachment> {
        check_id("pod id", pod_id)?;
        check_id("namespace", namespace)?;
        check_mappings(port_mappings)?;
        let mut inner = self.inner.lock().await;
        if let Some(rec) = inner.pods.get(pod_id) {
            if rec.namespace != namespace || rec.port_mappings != port_mappings {
                return Err(NetError::AlreadyAttached {
                    pod_id: pod_id.to_string(),
                    namespace: rec.namespace.clone(),
                });
            }
            if netns::is_bound(&rec.netns)
                && veth::is_attached(&self.nl, inner.bridge_index, &rec.host_veth).await?
            {
                return Ok(PodAttachment::new(rec, self.config.cidr));
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
                namespace: namespace.to_string(),
                ip: Ipv4Addr::UNSPECIFIED,
                host_veth: host_veth(&self.config.bridge, pod_id),
                netns: self.netns.path_of(pod_id),
                port_mappings: port_mappings.to_vec(),
            };
            let id = pod_id.to_string();
            blocking(move || store.attach(&id, |ip| PodRecord { ip, ..rec })).await?
        };
        inner.pods.insert(pod_id.to_string(), rec.clone());

        let setup = async {
            let netns = self.netns.clone();
            let id = pod_id.to_string();
            let path = blocking(move || netns.create(&id)).await?;
            veth::attach(
                &self.nl,
                inner.bridge_index,
                &rec.host_veth,
                &path,
                rec.ip,
                self.config.cidr,
            )
            .await?;
            self.add_to_firewall(&inner.pods, &inner.policies, &rec)
                .await
        };
        match setup.await {
            Ok(()) => Ok(PodAttachment::new(&rec, self.config.cidr)),
            Err(e) => {
                // Undo, best effort. If it fails the record stays (in the
                // store and here), so a detach or reconcile finishes it.
                if self.remove_kernel_state(&rec).await.is_ok() {
                    let store = self.store.clone();
                    let id = pod_id.to_string();
                    if blocking(move || store.detach(&id)).await.is_ok() {
                        inner.pods.remove(pod_id);
                    }
                }
                let _ = self.apply_firewall(&inner.pods, &inner.policies).await;
                Err(e)
            }
        }
    }

    async fn remove_kernel_state(&self, rec: &PodRecord) -> Result<()> {
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
                namespace: String::new(),
                ip: Ipv4Addr::UNSPECIFIED,
                host_veth: host_veth(&self.config.bridge, pod_id),
                netns: self.netns.path_of(pod_id),
                port_mappings: Vec::new(),
            };
            self.remove_kernel_state(&rec).await?;
            return Ok(false);
        };
        if let Err(e) = self.apply_firewall(&inner.pods, &inner.policies).await {
            inner.pods.insert(pod_id.to_string(), rec);
            return Err(e);
        }
        if let Err(e) = self.remove_kernel_state(&rec).await {
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

    /// Let pods of namespace `from` open connections to pods of namespace
    /// `to` (replies flow back; the reverse direction needs its own
    /// policy). Persisted. Pods of one namespace always reach each other.
    pub async fn allow(&self, from: &str, to: &str) -> Result<()> {
        check_id("namespace", from)?;
        check_id("namespace", to)?;
        let mut inner = self.inner.lock().await;
        let store = self.store.clone();
        let (f, t) = (from.to_string(), to.to_string());
        blocking(move || store.allow(&f, &t)).await?;
        inner.policies.insert((from.to_string(), to.to_string()));
        self.apply_firewall(&inner.pods, &inner.policies).await
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
        self.apply_firewall(&inner.pods, &inner.policies).await
    }

    /// The policies, as (from, to) pairs.
    pub async fn policies(&self) -> Vec<(String, String)> {
        self.inner.lock().await.policies.iter().cloned().collect()
    }

    /// Pod `pod_id`'s attachment.
    pub async fn get(&self, pod_id: &str) -> Option<PodAttachment> {
        let inner = self.inner.lock().await;
        inner
            .pods
            .get(pod_id)
            .map(|r| PodAttachment::new(r, self.config.cidr))
    }

    /// Every attached pod, by id.
    pub async fn list(&self) -> Vec<PodAttachment> {
        let inner = self.inner.lock().await;
        inner
            .pods
            .values()
            .map(|r| PodAttachment::new(r, self.config.cidr))
            .collect()
    }

    /// Bring the network in line with the pods that are alive: detach
    /// every other recorded pod, release addresses without a record,
    /// delete this network's veths and netns files that no live pod owns,
    /// re-create the bridge if it vanished, and reload the firewall.
    pub async fn reconcile<'a>(
        &self,
        live: impl IntoIterator<Item = &'a str>,
    ) -> Result<ReconcileReport> {
        let live: HashSet<&str> = live.into_iter().collect();
        let mut report = ReconcileReport::default();
        let mut inner = self.inner.lock().await;
        inner.bridge_index =
            bridge::ensure_bridge(&self.nl, &self.config.bridge, self.config.cidr).await?;
        {
            let netns = self.netns.clone();
            blocking(move || netns.ensure()).await?;
        }

        let dead: Vec<String> = inner
            .pods
            .keys()
            .filter(|id| !live.contains(id.as_str()))
            .cloned()
            .collect();
        for id in dead {
            self.detach_locked(&mut inner, &id).await?;
            report.removed_pods.push(id);
        }

        let orphans = {
            let store = self.store.clone();
            blocking(move || store.load()).await?.orphan_allocations
        };
        let ipam = self.store.ipam()?;
        for (ip, owner) in orphans {
            let ipam = ipam.clone();
            blocking(move || ipam.release(&owner)).await?;
            report.released_addresses.push(ip);
        }

        let wanted: HashSet<&str> = inner.pods.values().map(|r| r.host_veth.as_str()).collect();
        for link in self.nl.links().await? {
            let ours = is_host_veth(&self.config.bridge, &link.name)
                || (link.controller == Some(inner.bridge_index)
                    && link.kind.as_deref() == Some("veth"));
            if ours
                && !wanted.contains(link.name.as_str())
                && self.nl.delete_link(link.index).await?
            {
                report.removed_links.push(link.name);
            }
        }

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
            if !netns::is_bound(&rec.netns)
                || !veth::is_attached(&self.nl, inner.bridge_index, &rec.host_veth).await?
            {
                report.broken.push(rec.pod_id.clone());
            }
        }
        let mut unknown: Vec<String> = live
            .iter()
            .filter(|id| !inner.pods.contains_key(**id))
            .map(|id| id.to_string())
            .collect();
        unknown.sort();
        report.unknown = unknown;

        self.apply_firewall(&inner.pods, &inner.policies).await?;
        Ok(report)
    }

    /// Remove everything: every pod's network (records deleted, addresses
    /// released), the firewall table, the bridge and the netns directory.
    /// The state file stays, with the policies and the IPAM cursor, so a
    /// network opened on it later still does not hand recent addresses
    /// out first.
    pub async fn teardown(self) -> Result<()> {
        let mut inner = self.inner.lock().await;
        let ids: Vec<String> = inner.pods.keys().cloned().collect();
        for id in ids {
            self.detach_locked(&mut inner, &id).await?;
        }
        drop(inner);
        purge_with(&self.config, &self.nl).await
    }

    /// Remove this network's kernel state described by `config` (veths,
    /// bridge, nftables table, netns files and directory) without opening
    /// its state file: for an operator's cleanup, or a test's guard after
    /// a failure. A later [`open`](HostNetworks::open) plus
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
