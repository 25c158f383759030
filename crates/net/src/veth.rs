//! A pod's link to the bridge: a veth pair whose host end (named from the
//! pod id, see [`super::names::host_veth`]) is a port of the bridge and
//! whose other end is created directly inside the pod's netns as `eth0`,
//! with the pod's address and a default route via the bridge. Inside the
//! netns `lo` is brought up as well: a fresh netns has it down, and
//! containers expect 127.0.0.1 to work.
//!
//! Deleting the host end deletes the pair, so removal is one request; it
//! is done explicitly before the netns is unmounted, because a netns that
//! dies takes its links with it only asynchronously (in a kernel work
//! queue), and a quick re-attach could meet the old host end still there.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::cidr::Ipv4Cidr;
use super::error::{NetError, Result};
use super::netlink::Netlink;
use super::netns;

/// The pod end's name inside its netns.
pub const POD_IFNAME: &str = "eth0";

/// Create `host_veth` ↔ `eth0` into the netns at `netns_path` and
/// configure the pod end with `ip` from `cidr`. A stale host end of the
/// same name (from an interrupted attach) is replaced.
pub async fn attach(
    host: &Netlink,
    bridge_index: u32,
    host_veth: &str,
    netns_path: &Path,
    ip: Ipv4Addr,
    cidr: Ipv4Cidr,
) -> Result<()> {
    host.delete_link_named(host_veth).await?;
    let ns_fd = netns::open_netns(netns_path)?;
    let pod = Netlink::connect_in(netns_path).await?;
    // A leftover eth0 (its host end gone with a crashed agent's cleanup)
    // would make the new pair's creation fail with EEXIST.
    pod.delete_link_named(POD_IFNAME).await?;
    host.add_veth(host_veth, bridge_index, POD_IFNAME, ns_fd.as_raw_fd())
        .await?;
    drop(ns_fd);

    let lo = pod.link("lo").await?.ok_or_else(|| NetError::Netns {
        path: netns_path.to_path_buf(),
        op: "find lo in",
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })?;
    pod.set_up(lo.index).await?;
    let eth0 = pod.link(POD_IFNAME).await?.ok_or_else(|| NetError::Netns {
        path: netns_path.to_path_buf(),
        op: "find eth0 in",
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })?;
    pod.add_address(eth0.index, ip, cidr.prefix()).await?;
    pod.set_up(eth0.index).await?;
    pod.replace_default_route(cidr.gateway()).await?;
    Ok(())
}

/// Whether the pod's pair is in place: the host end exists and is a port
/// of the bridge.
pub async fn is_attached(host: &Netlink, bridge_index: u32, host_veth: &str) -> Result<bool> {
    Ok(host
        .link(host_veth)
        .await?
        .is_some_and(|l| l.controller == Some(bridge_index)))
}

/// Delete the pair by its host end; `false` if it was already gone.
pub async fn detach(host: &Netlink, host_veth: &str) -> Result<bool> {
    host.delete_link_named(host_veth).await
}
