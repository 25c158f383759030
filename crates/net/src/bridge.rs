//! The host bridge every pod's veth is a port of (`stratum0` by default).
//! It holds the CIDR's first address, which is the pods' gateway and the
//! address the host answers them on. Setting it up is idempotent: each
//! step checks or tolerates what a previous run left, so the agent calls
//! it at every start.
//!
//! Each bridge also gets `route_localnet` (its own
//! `net.ipv4.conf.<bridge>.route_localnet`, never `all` or `default`), so
//! that a host process's connection to `127.0.0.1:<host port>`, DNATed to
//! a pod, may leave through the bridge with its loopback source (which
//! the firewall then masquerades) and its replies be taken back in; see
//! [`super::nft`] for the rules that go with it, among them the drop of
//! loopback-addressed packets coming in from the bridge that the setting
//! would otherwise let through. It is set whenever the bridge is made or
//! adopted, and goes with the bridge (the sysctl is the device's).
//!
//! Also the two host settings the network depends on: IPv4 forwarding
//! (pod egress, published ports reached from other hosts, hairpin) and
//! br_netfilter, without which the firewall cannot see traffic between
//! pods and namespace isolation would silently not exist; so its absence
//! is an error, not a warning.

use std::fs;
use std::path::{Path, PathBuf};

use super::cidr::Ipv4Cidr;
use super::error::{NetError, Result};
use super::netlink::Netlink;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const BRIDGE_NF: &str = "/proc/sys/net/bridge";

/// Create (or adopt) bridge `name` with the gateway address of `cidr`, up,
/// with netfilter on its bridged traffic and `route_localnet` on. Returns
/// its index.
pub async fn ensure_bridge(nl: &Netlink, name: &str, cidr: Ipv4Cidr) -> Result<u32> {
    if !Path::new(BRIDGE_NF).is_dir() {
        return Err(NetError::NoBridgeNetfilter);
    }
    let link = match nl.link(name).await? {
        Some(l) => {
            if l.kind.as_deref() != Some("bridge") {
                return Err(NetError::NotABridge(name.to_string()));
            }
            nl.set_bridge_nf_call(l.index, name).await?;
            l
        }
        None => {
            nl.add_bridge(name).await?;
            nl.link(name)
                .await?
                .ok_or_else(|| NetError::NotABridge(format!("{name} (vanished after creation)")))?
        }
    };
    nl.add_address(link.index, cidr.gateway(), cidr.prefix())
        .await?;
    enable_route_localnet(name)?;
    if !link.up {
        nl.set_up(link.index).await?;
    }
    Ok(link.index)
}

/// `net.ipv4.conf.<bridge>.route_localnet`: this bridge's only.
pub fn route_localnet_path(bridge: &str) -> PathBuf {
    // A link name never holds '/' (nor is "." or ".."): checked at
    // configuration and network creation, and the kernel refuses them.
    Path::new("/proc/sys/net/ipv4/conf")
        .join(bridge)
        .join("route_localnet")
}

/// Turn on `route_localnet` for bridge `bridge` alone: the kernel then
/// routes packets with a 127.0.0.0/8 source out of it (a host process's
/// connection to `127.0.0.1:<host port>` once DNATed to a pod) and takes
/// in packets from it with a 127.0.0.0/8 source or destination (the
/// replies, once un-NATed; the firewall drops any other such packet, see
/// [`super::nft`]). Cleared with the bridge: the setting is the device's.
pub fn enable_route_localnet(bridge: &str) -> Result<()> {
    write_sysctl(&route_localnet_path(bridge))
}

/// Writes `1` to `path`, unless it reads `1` already.
fn write_sysctl(path: &Path) -> Result<()> {
    let err = |source| NetError::Sysctl {
        path: path.to_path_buf(),
        source,
    };
    if fs::read_to_string(path).map_err(err)?.trim() == "1" {
        return Ok(());
    }
    fs::write(path, "1\n").map_err(err)
}

/// Turn on IPv4 forwarding (never off: other software may rely on it).
pub fn enable_ip_forward() -> Result<()> {
    write_sysctl(Path::new(IP_FORWARD))
}
