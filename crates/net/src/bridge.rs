//! The host bridge every pod's veth is a port of (`stratum0` by default).
//! It holds the CIDR's first address, which is the pods' gateway and the
//! address the host answers them on. Setting it up is idempotent: each
//! step checks or tolerates what a previous run left, so the agent calls
//! it at every start.
//!
//! Also the two host settings the network depends on: IPv4 forwarding
//! (pod egress, published ports reached from other hosts, hairpin) and
//! br_netfilter, without which the firewall cannot see traffic between
//! pods and namespace isolation would silently not exist; so its absence
//! is an error, not a warning.

use std::fs;
use std::path::Path;

use super::cidr::Ipv4Cidr;
use super::error::{NetError, Result};
use super::netlink::Netlink;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const BRIDGE_NF: &str = "/proc/sys/net/bridge";

/// Create (or adopt) bridge `name` with the gateway address of `cidr`, up,
/// with netfilter on its bridged traffic. Returns its index.
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
    if !link.up {
        nl.set_up(link.index).await?;
    }
    Ok(link.index)
}

/// Turn on IPv4 forwarding (never off: other software may rely on it).
pub fn enable_ip_forward() -> Result<()> {
    let path = Path::new(IP_FORWARD);
    let err = |source| NetError::Sysctl {
        path: path.to_path_buf(),
        source,
    };
    if fs::read_to_string(path).map_err(err)?.trim() == "1" {
        return Ok(());
    }
    fs::write(path, "1\n").map_err(err)
}
