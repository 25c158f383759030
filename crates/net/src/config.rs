//! How the host's networks are set up: the default network's bridge and
//! CIDR (the pods' network unless they name another), where netns files
//! and the state file live, the nftables table, and the host-wide
//! switches. Everything that names a kernel object is configurable so
//! that two agents' networks (tests side by side, or two data dirs) never
//! collide: the default bridge's name also tags every link the agent
//! makes (see [`crate::names`]).

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use super::cidr::Ipv4Cidr;
use super::error::{NetError, Result};
use super::names::{check_link_name, check_table_name};
use super::portmap::Protocol;

/// The name of the network made from the configuration: the pods'
/// network unless they name another.
pub const DEFAULT_NETWORK: &str = "default";

/// Host ports pods may publish by default: Kubernetes' NodePort range,
/// clear of the well-known ports a host's own services listen on (22, and
/// the agent's 7443) and of Linux's default ephemeral range (32768+).
pub const DEFAULT_HOST_PORTS: RangeInclusive<u16> = 30000..=32767;

/// A pod network's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The default network's bridge (at most 15 bytes).
    pub bridge: String,
    /// The default network's addresses; the first goes to the bridge.
    pub cidr: Ipv4Cidr,
    /// Where each pod's netns is bound, as `<netns_dir>/<pod-id>`.
    pub netns_dir: PathBuf,
    /// The redb file with allocations, pod records and policies, when the
    /// network has one of its own ([`crate::HostNetworks::open`]; the agent
    /// shares its state file instead).
    pub state_file: PathBuf,
    /// The `inet` table holding every rule of this network.
    pub nft_table: String,
    /// Masquerade the default network's traffic leaving the host's
    /// networks.
    pub masquerade: bool,
    /// Turn on IPv4 forwarding at open (egress and published ports from
    /// other hosts need it; pod↔pod and host↔pod do not).
    pub ip_forward: bool,
    /// The `nft` binary; `None` for /usr/sbin/nft, else `nft` on PATH.
    pub nft_binary: Option<PathBuf>,
    /// The host ports a pod may publish (see [`DEFAULT_HOST_PORTS`]).
    pub host_ports: RangeInclusive<u16>,
    /// The host services pods may reach, on the bridge's address (the
    /// pods' gateway): every other connection from a pod to the host is
    /// dropped. None by default.
    pub host_services: Vec<(Protocol, u16)>,
}

impl NetConfig {
    /// The defaults, with the state file in `data_dir`: bridge `stratum0`,
    /// CIDR 10.88.0.0/16, netns files in /run/stratum/netns, table
    /// `inet stratum`, masquerade and forwarding on.
    pub fn new(data_dir: &Path) -> Self {
        NetConfig {
            bridge: "stratum0".into(),
            cidr: Ipv4Cidr::DEFAULT,
            netns_dir: PathBuf::from("/run/stratum/netns"),
            state_file: data_dir.join("podnet.redb"),
            nft_table: "stratum".into(),
            masquerade: true,
            ip_forward: true,
            nft_binary: None,
            host_ports: DEFAULT_HOST_PORTS,
            host_services: Vec::new(),
        }
    }

    /// Checks names and paths.
    pub fn validate(&self) -> Result<()> {
        check_link_name(&self.bridge)?;
        check_table_name(&self.nft_table)?;
        if !self.netns_dir.is_absolute() {
            return Err(NetError::InvalidConfig(format!(
                "netns directory {} must be an absolute path",
                self.netns_dir.display()
            )));
        }
        if self.host_ports.is_empty() || *self.host_ports.start() == 0 {
            return Err(NetError::InvalidConfig(format!(
                "host port range {}-{} is empty or starts at 0",
                self.host_ports.start(),
                self.host_ports.end()
            )));
        }
        if self.netns_dir.parent().is_none() {
            return Err(NetError::InvalidConfig(
                "netns directory cannot be /".into(),
            ));
        }
        Ok(())
    }
}
