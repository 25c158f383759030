//! The network manager: the host's networks (`stratum_net`), opened on
//! first use, and what the Networks service, the VM manager and the pod
//! manager ask of them.
//!
//! It owns the networks' records and kernel state; the VM manager owns
//! which NICs its VMs have (their addresses and MACs are in the VMs'
//! records, chosen here), the pod manager which pods are attached. Only
//! the agent, which sees all of them, reconciles after a restart
//! ([`crate::agent::Agent::resume`]).
//!
//! An agent that never uses a network (no pod, no VM NIC on one, no
//! network made) creates no bridge and no firewall table. The default
//! network is made from the agent's flags; its bridge's name tags every
//! link the agent makes (see `stratum_net::names`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;

use super::errors::{AgentError, Result};
use super::shared::Shared;
use stratum_api::proto;
use stratum_net::{
    HostNetworks, Ipv4Cidr, Live, NetConfig, NetworkInfo, NetworkRequest, Protocol, Reservation,
    DEFAULT_HOST_PORTS, DEFAULT_NETWORK,
};

/// The network settings the agent is started with.
#[derive(Debug, Clone)]
pub struct NetworksConfig {
    /// The default network's bridge; also names the firewall's tables and
    /// tags the agent's links.
    pub bridge: String,
    /// The default network's addresses.
    pub cidr: Ipv4Cidr,
    /// Namespaces whose workloads may open connections to another
    /// namespace's, as (from, to); every other pair is isolated.
    pub allow: Vec<(String, String)>,
    /// The host ports pods may publish.
    pub host_ports: RangeInclusive<u16>,
    /// The host services workloads may reach on their gateway; every
    /// other connection a workload opens to the host is dropped.
    pub host_services: Vec<(Protocol, u16)>,
}

impl Default for NetworksConfig {
    fn default() -> Self {
        NetworksConfig {
            bridge: "stratum0".to_string(),
            cidr: Ipv4Cidr::DEFAULT,
            allow: Vec::new(),
            host_ports: DEFAULT_HOST_PORTS,
            host_services: Vec::new(),
        }
    }
}

/// The owner of VM `vm`'s NIC `index` in the networks' IPAM.
pub fn nic_owner(vm: &str, index: usize) -> String {
    format!("{vm}.{index}")
}

/// The VM and NIC index an IPAM owner names, if it is a VM NIC's.
fn parse_nic_owner(owner: &str) -> Option<(&str, u32)> {
    let (vm, index) = owner.rsplit_once('.')?;
    Some((vm, index.parse().ok()?))
}

/// A NIC's MAC on a network: locally administered, unicast, its last four
/// bytes the NIC's address (unique on the host, as addresses are).
pub fn mac_for(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("06:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

pub struct NetworkManager {
    shared: Arc<Shared>,
    host: tokio::sync::OnceCell<Arc<HostNetworks>>,
}

impl NetworkManager {
    pub fn new(shared: Arc<Shared>) -> Self {
        NetworkManager {
            shared,
            host: tokio::sync::OnceCell::new(),
        }
    }

    /// The host's networks, opened on first call (bridges, firewall).
    /// UNAVAILABLE when this host cannot have them (no br_netfilter, no
    /// nft).
    pub async fn host(&self) -> Result<Arc<HostNetworks>> {
        self.host
            .get_or_try_init(|| async {
                let host = self.open().await.map_err(|e| {
                    AgentError::Unavailable(format!("networks cannot be set up on this host: {e}"))
                })?;
                Ok::<_, AgentError>(Arc::new(host))
            })
            .await
            .cloned()
    }

    /// The networks if they are open already.
    pub fn opened(&self) -> Option<Arc<HostNetworks>> {
        self.host.get().cloned()
    }

    /// Runs `f` on the networks from a blocking thread (the VM manager's
    /// calls run on one).
    pub fn blocking<T>(&self, f: impl AsyncFnOnce(Arc<HostNetworks>) -> Result<T>) -> Result<T> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| AgentError::Internal("no async runtime for the networks".into()))?;
        handle.block_on(async { f(self.host().await?).await })
    }

    async fn open(&self) -> Result<HostNetworks> {
        let config = &self.shared.config.networks;
        let mut net = NetConfig::new(&self.shared.config.data_dir);
        net.bridge = config.bridge.clone();
        net.nft_table = config.bridge.clone();
        net.cidr = config.cidr;
        // Per agent (its cgroup root is unique on the host), on tmpfs: the
        // netns files vanish with a reboot, as the pods do.
        net.netns_dir = PathBuf::from("/run/stratum")
            .join(&self.shared.config.cgroup_root)
            .join("netns");
        net.host_ports = config.host_ports.clone();
        net.host_services = config.host_services.clone();
        // The networks' tables live in the agent's state file.
        let host = HostNetworks::open_shared(net, self.shared.journal.store().database()).await?;
        sync_policies(&host, &config.allow).await?;
        tracing::info!(bridge = %config.bridge, cidr = %config.cidr, "networks ready");
        Ok(host)
    }

    /// Whether the store holds networks of the caller's making: then they
    /// are opened at start, whether or not anything is on them yet.
    pub fn has_stored_networks(&self) -> bool {
        stratum_net::store::has_networks(&self.shared.journal.store().database()).unwrap_or(true)
    }

    pub async fn create(&self, spec: &proto::NetworkSpec) -> Result<NetworkInfo> {
        let request = network_request(spec)?;
        Ok(self.host().await?.create_network(request).await?)
    }

    pub async fn get(&self, name: &str) -> Result<NetworkInfo> {
        Ok(self.host().await?.network(name).await?)
    }

    pub async fn list(&self) -> Result<Vec<NetworkInfo>> {
        Ok(self.host().await?.networks().await?)
    }

    pub async fn delete(&self, name: &str) -> Result<()> {
        Ok(self.host().await?.delete_network(name).await?)
    }

    /// Reserves an address for VM NIC `owner` (see
    /// [`HostNetworks::reserve`]); `requested` is the NIC spec's address,
    /// bare or with the network's prefix.
    pub async fn reserve(
        &self,
        network: &str,
        owner: &str,
        namespace: &str,
        requested: Option<&str>,
    ) -> Result<Reservation> {
        let host = self.host().await?;
        let ip = match requested {
            Some(text) => Some(parse_requested(text, network, &host).await?),
            None => None,
        };
        Ok(host.reserve(network, owner, namespace, ip).await?)
    }

    /// Brings the networks in line with what lives after a restart; the
    /// live pods whose network must be made again.
    pub async fn reconcile(&self, live: &Live<'_>) -> Result<Vec<String>> {
        let host = self.host().await?;
        let report = host.reconcile(live).await?;
        for owner in &report.missing_taps {
            tracing::error!(nic = %owner, "a running VM's TAP is gone: restart the VM to get it back");
        }
        if report != stratum_net::ReconcileReport::default() {
            tracing::info!(?report, "networks reconciled");
        }
        Ok(report.broken.into_iter().chain(report.unknown).collect())
    }
}

/// A static address a NIC spec asks for: "10.20.0.5", or with the
/// network's own prefix, "10.20.0.5/24".
async fn parse_requested(text: &str, network: &str, host: &HostNetworks) -> Result<Ipv4Addr> {
    let bad = || {
        AgentError::InvalidArgument(format!(
            "NIC address {text:?} on network {network}: give one IPv4 address, bare or with the network's prefix"
        ))
    };
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
        None => (text, None),
    };
    let ip: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    if let Some(prefix) = prefix {
        let cidr = host.network(network).await?.record.cidr;
        if prefix != cidr.prefix() {
            return Err(AgentError::InvalidArgument(format!(
                "NIC address {text}: network {network} is {cidr}, so the prefix is /{}",
                cidr.prefix()
            )));
        }
    }
    Ok(ip)
}

/// The spec of Create as the networks take it.
fn network_request(spec: &proto::NetworkSpec) -> Result<NetworkRequest> {
    if spec.name == DEFAULT_NETWORK {
        return Err(AgentError::AlreadyExists(
            "network \"default\" is the agent's own (its --pod-bridge and --pod-cidr)".into(),
        ));
    }
    let cidr: Ipv4Cidr = spec
        .cidr
        .parse()
        .map_err(|e| AgentError::InvalidArgument(format!("cidr: {e}")))?;
    let nameservers = spec
        .nameservers
        .iter()
        .map(|n| {
            n.parse::<Ipv4Addr>().map_err(|_| {
                AgentError::InvalidArgument(format!("name server {n:?} is not an IPv4 address"))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut namespaces = spec.namespaces.clone();
    namespaces.sort();
    namespaces.dedup();
    Ok(NetworkRequest {
        name: spec.name.clone(),
        cidr,
        bridge: (!spec.bridge.is_empty()).then(|| spec.bridge.clone()),
        nat: spec.nat,
        namespaces,
        nameservers,
    })
}

/// A network as the API shows it; `macs` gives VM NICs' MACs by owner,
/// `vm_namespace` a VM's namespace (for NICs not plugged in, which the
/// network knows by address only), and `visible` says which namespaces'
/// attachments the caller may see: an attachment of no known namespace
/// is shown to nobody but those who see everything.
pub fn network_to_proto(
    info: &NetworkInfo,
    macs: &BTreeMap<String, String>,
    vm_namespace: impl Fn(&str) -> Option<String>,
    visible: impl Fn(Option<&str>) -> bool,
) -> proto::Network {
    let record = &info.record;
    let prefix = record.cidr.prefix();
    let attachments = info
        .holders
        .iter()
        .filter_map(|h| {
            let (kind, id, nic) = match parse_nic_owner(&h.owner) {
                Some((vm, index)) => ("vm", vm.to_string(), index),
                None => ("pod", h.owner.clone(), 0),
            };
            let namespace = h.namespace.clone().or_else(|| match kind {
                "vm" => vm_namespace(&id),
                _ => None,
            });
            if !visible(namespace.as_deref()) {
                return None;
            }
            Some(proto::NetworkAttachment {
                kind: kind.to_string(),
                id,
                nic,
                namespace: namespace.unwrap_or_default(),
                address: format!("{}/{prefix}", h.ip),
                mac: macs.get(&h.owner).cloned().unwrap_or_default(),
                host_device: h.port.clone().unwrap_or_default(),
            })
        })
        .collect();
    proto::Network {
        spec: Some(proto::NetworkSpec {
            name: record.name.clone(),
            cidr: record.cidr.to_string(),
            bridge: record.bridge.clone(),
            nat: record.nat,
            namespaces: record.namespaces.clone(),
            nameservers: record.nameservers.iter().map(|n| n.to_string()).collect(),
        }),
        status: Some(proto::NetworkStatus {
            gateway: record.cidr.gateway().to_string(),
            bridge: record.bridge.clone(),
            attachments,
            free_addresses: info.free_addresses,
            created_at: Some(prost_types::Timestamp {
                seconds: record.created_at,
                nanos: 0,
            }),
        }),
    }
}

/// Makes the networks' stored policies the configured ones: the agent's
/// flags are the one source of truth.
async fn sync_policies(host: &HostNetworks, allow: &[(String, String)]) -> Result<()> {
    for (from, to) in host.policies().await {
        if !allow.iter().any(|(f, t)| *f == from && *t == to) {
            host.revoke(&from, &to).await?;
        }
    }
    for (from, to) in allow {
        host.allow(from, to).await?;
    }
    Ok(())
}
