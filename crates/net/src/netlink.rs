//! The few rtnetlink operations pod networking needs (links, addresses,
//! routes), over one connection bound to one network namespace.
//!
//! A netlink socket talks to the netns it was created in, whatever thread
//! later uses it. So a connection for a pod's netns is made by creating
//! the socket on a short-lived thread that has entered the netns (see
//! [`super::netns::run_in`]); the socket is then driven from the agent's
//! tokio runtime like the host one. No thread of the runtime ever changes
//! its netns, so nothing else in the agent can end up in a pod's network.
//!
//! Operations that create something treat "already exists" as success and
//! those that remove something treat "no such device" as success, so
//! setup, teardown and reconcile can be re-run after a crash at any point.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::Path;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use super::error::{NetError, Result};
use super::netns;

/// What the pod network needs to know of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSummary {
    /// Its index.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Its kind ("bridge", "veth", ...), if it has one.
    pub kind: Option<String>,
    /// The index of the bridge it is a port of.
    pub controller: Option<u32>,
    /// Administratively up.
    pub up: bool,
}

impl LinkSummary {
    fn from_message(m: &LinkMessage) -> Self {
        let mut s = LinkSummary {
            index: m.header.index,
            name: String::new(),
            kind: None,
            controller: None,
            up: m.header.flags.contains(LinkFlags::Up),
        };
        for attr in &m.attributes {
            match attr {
                LinkAttribute::IfName(n) => s.name = n.clone(),
                LinkAttribute::Controller(c) => s.controller = Some(*c),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(k) = info {
                            s.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        s
    }
}

/// The errno a netlink error carries, if it is the kernel's.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()),
        _ => None,
    }
}

/// One rtnetlink connection, bound to one network namespace.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// A connection in the caller's netns (the host's, for the agent). Must
    /// be called inside a tokio runtime, which drives the connection.
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(NetError::io("open a netlink socket"))?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// A connection in the netns bound at `netns_path`.
    pub async fn connect_in(netns_path: &Path) -> Result<Self> {
        let fd: OwnedFd = netns::run_in(netns_path, || {
            // SAFETY: plain socket(2); the result is checked before use.
            let fd = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    libc::NETLINK_ROUTE,
                )
            };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: fd is a fresh descriptor owned by nobody else.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .await?
        .map_err(|source| NetError::Netns {
            path: netns_path.to_path_buf(),
            op: "open a netlink socket inside",
            source,
        })?;
        // SAFETY: the descriptor is an open netlink socket whose ownership
        // moves into the TokioSocket.
        let socket = unsafe { rtnetlink::sys::TokioSocket::from_raw_fd(fd.into_raw_fd()) };
        let (conn, handle, _) = rtnetlink::from_socket(socket);
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// Every link.
    pub async fn links(&self) -> Result<Vec<LinkSummary>> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(NetError::netlink("list links"))?;
        Ok(msgs.iter().map(LinkSummary::from_message).collect())
    }

    /// The link called `name`, if there is one.
    pub async fn link(&self, name: &str) -> Result<Option<LinkSummary>> {
        let res: std::result::Result<Vec<LinkMessage>, _> = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_collect()
            .await;
        match res {
            Ok(msgs) => Ok(msgs.first().map(LinkSummary::from_message)),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(NetError::netlink(format!("get link {name}"))(e)),
        }
    }

    /// Set link `index` up.
    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .change(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(NetError::netlink(format!("set link {index} up")))
    }

    /// Make link `index` a port of bridge `bridge`.
    pub async fn set_controller(&self, index: u32, bridge: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).controller(bridge).build())
            .execute()
            .await
            .map_err(NetError::netlink(format!(
                "attach link {index} to bridge {bridge}"
            )))
    }

    /// Delete link `index`; `false` if it was already gone.
    pub async fn delete_link(&self, index: u32) -> Result<bool> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(NetError::netlink(format!("delete link {index}"))(e)),
        }
    }

    /// Delete the link called `name`; `false` if there is none.
    pub async fn delete_link_named(&self, name: &str) -> Result<bool> {
        match self.link(name).await? {
            Some(l) => self.delete_link(l.index).await,
            None => Ok(false),
        }
    }

    /// Create bridge `name` (up), with netfilter called for the IPv4 and
    /// IPv6 traffic it forwards between its ports; "exists" is success.
    pub async fn add_bridge(&self, name: &str) -> Result<()> {
        let msg = LinkBridge::new(name)
            .nf_call_iptables(true)
            .nf_call_ip6tables(true)
            .build();
        match self.handle.link().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(NetError::netlink(format!("create bridge {name}"))(e)),
        }
    }

    /// Turn on netfilter for bridged IPv4/IPv6 traffic on existing bridge
    /// `index` (a bridge created by an older agent or by hand). By index
    /// alone: a name in the message is a rename, which older kernels (Debian 12's 6.1)
    /// refuse (EBUSY) for an up device even when the name is its own.
    pub async fn set_bridge_nf_call(&self, index: u32, name: &str) -> Result<()> {
        let msg = LinkMessageBuilder::<LinkBridge>::new_with_info_kind(InfoKind::Bridge)
            .index(index)
            .nf_call_iptables(true)
            .nf_call_ip6tables(true)
            .build();
        self.handle
            .link()
            .change(msg)
            .execute()
            .await
            .map_err(NetError::netlink(format!(
                "enable netfilter on bridge {name}"
            )))
    }

    /// Create a veth pair: `host` here, up and a port of bridge
    /// `bridge`, and `peer` created directly inside the netns open at
    /// `peer_netns` (so no link named `peer` ever appears on the host).
    pub async fn add_veth(
        &self,
        host: &str,
        bridge: u32,
        peer: &str,
        peer_netns: RawFd,
    ) -> Result<()> {
        let peer_msg = LinkUnspec::new_with_name(peer)
            .setns_by_fd(peer_netns)
            .build();
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_string())
            .controller(bridge)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(NetError::netlink(format!("create veth pair {host}/{peer}")))
    }

    /// The IPv4 addresses on link `index`.
    pub async fn ipv4_addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(NetError::netlink(format!("list addresses of link {index}")))?;
        let mut out = Vec::new();
        for m in msgs {
            if m.header.family != AddressFamily::Inet {
                continue;
            }
            for a in &m.attributes {
                if let AddressAttribute::Local(IpAddr::V4(ip)) = a {
                    out.push((*ip, m.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// Put `ip/prefix` on link `index`; "exists" is success.
    pub async fn add_address(&self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        match self
            .handle
            .address()
            .add(index, IpAddr::V4(ip), prefix)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(NetError::netlink(format!(
                "add {ip}/{prefix} to link {index}"
            ))(e)),
        }
    }

    /// Make `gateway` the default route (replacing any other).
    pub async fn replace_default_route(&self, gateway: Ipv4Addr) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(NetError::netlink(format!("default route via {gateway}")))
    }

    /// The gateway of the IPv4 default route, if there is one.
    pub async fn default_gateway(&self) -> Result<Option<Ipv4Addr>> {
        use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
        let msgs: Vec<_> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(NetError::netlink("list routes"))?;
        for m in msgs {
            if m.header.destination_prefix_length != 0 {
                continue;
            }
            for a in &m.attributes {
                if let RouteAttribute::Gateway(RouteAddress::Inet(gw)) = a {
                    return Ok(Some(*gw));
                }
            }
        }
        Ok(None)
    }
}
