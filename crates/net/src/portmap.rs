//! Host port mappings: a TCP or UDP port on the host forwarded to a port of
//! one pod, as `docker run -p` or a CRI `PortMapping`. They become DNAT
//! rules in the network's nftables table (see [`super::nft`]); here are the
//! type and the checks that keep two pods off one host port.

use std::fmt;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use super::error::NetError;

/// A transport protocol a mapping forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The nftables keyword.
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One host port forwarded to a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The port on the host.
    pub host_port: u16,
    /// The port in the pod.
    pub container_port: u16,
    /// Only connections to this host address are forwarded; `None` means
    /// any local address. Loopback addresses (127.0.0.1, any of
    /// 127.0.0.0/8) are included, from host processes only, as with
    /// containerd's CNI portmap plugin: the network's bridge has
    /// `route_localnet` and those connections are masqueraded behind its
    /// gateway so the pod's replies come back (see [`super::nft`]). A
    /// loopback `host_ip` therefore publishes the port to the host
    /// itself and nowhere else.
    pub host_ip: Option<Ipv4Addr>,
}

impl PortMapping {
    /// A TCP mapping on every host address.
    pub fn tcp(host_port: u16, container_port: u16) -> Self {
        PortMapping {
            protocol: Protocol::Tcp,
            host_port,
            container_port,
            host_ip: None,
        }
    }

    /// A UDP mapping on every host address.
    pub fn udp(host_port: u16, container_port: u16) -> Self {
        PortMapping {
            protocol: Protocol::Udp,
            ..PortMapping::tcp(host_port, container_port)
        }
    }

    /// Whether `self` and `other` would claim the same packets.
    pub fn overlaps(&self, other: &PortMapping) -> bool {
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && match (self.host_ip, other.host_ip) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// Checks one pod's mappings: no port 0, no unspecified host address
/// (0.0.0.0: leave it unset), no two that overlap.
pub fn check_mappings(mappings: &[PortMapping]) -> Result<(), NetError> {
    for (i, m) in mappings.iter().enumerate() {
        if m.host_port == 0 || m.container_port == 0 {
            return Err(NetError::InvalidArgument(format!(
                "port mapping {}/{}->{}: ports must be 1..=65535",
                m.protocol, m.host_port, m.container_port
            )));
        }
        if m.host_ip.is_some_and(|ip| ip.is_unspecified()) {
            return Err(NetError::InvalidArgument(format!(
                "port mapping {}/{}: host address 0.0.0.0: leave it unset \
                 for all addresses",
                m.protocol, m.host_port
            )));
        }
        if let Some(other) = mappings[..i].iter().find(|o| o.overlaps(m)) {
            return Err(NetError::InvalidArgument(format!(
                "port mappings {}/{} and {}/{} overlap",
                other.protocol, other.host_port, m.protocol, m.host_port
            )));
        }
    }
    Ok(())
}

/// Checks what only a new attachment must meet (a pod re-attached after a
/// restart keeps the ports it was given): each host port in `allowed`, and
/// none that a host process holds.
pub fn check_new_mappings(
    mappings: &[PortMapping],
    allowed: &RangeInclusive<u16>,
) -> Result<(), NetError> {
    for m in mappings {
        if !allowed.contains(&m.host_port) {
            return Err(NetError::PortOutOfRange {
                protocol: m.protocol.as_str(),
                port: m.host_port,
                first: *allowed.start(),
                last: *allowed.end(),
            });
        }
        if held_by_host(m) {
            return Err(NetError::PortHeldByHost {
                protocol: m.protocol.as_str(),
                port: m.host_port,
            });
        }
    }
    Ok(())
}

/// Whether a host socket has `m`'s port: binding it fails with
/// EADDRINUSE. A listener on a specific address, on the wildcard or on
/// `[::]` all make a bind of the wildcard fail, so one probe covers them.
/// The socket is closed at once; a race with a host process binding the
/// port just after is the operator's to avoid (the range is theirs).
fn held_by_host(m: &PortMapping) -> bool {
    let addr = SocketAddrV4::new(m.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED), m.host_port);
    let bound = match m.protocol {
        Protocol::Tcp => TcpListener::bind(addr).map(drop),
        Protocol::Udp => UdpSocket::bind(addr).map(drop),
    };
    matches!(bound, Err(e) if e.kind() == ErrorKind::AddrInUse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_mappings_are_refused() {
        check_mappings(&[PortMapping::tcp(80, 80), PortMapping::udp(80, 80)]).unwrap();
        assert!(check_mappings(&[PortMapping::tcp(80, 80), PortMapping::tcp(80, 81)]).is_err());
        let a = PortMapping {
            host_ip: Some(Ipv4Addr::new(192, 0, 2, 1)),
            ..PortMapping::tcp(80, 80)
        };
        let b = PortMapping {
            host_ip: Some(Ipv4Addr::new(192, 0, 2, 2)),
            ..a
        };
        check_mappings(&[a, b]).unwrap();
        assert!(check_mappings(&[a, PortMapping::tcp(80, 80)]).is_err());
        assert!(check_mappings(&[PortMapping::tcp(0, 80)]).is_err());
        // Loopback is a host address like another (the host's own
        // processes reach it); 0.0.0.0 is not one.
        let lo = PortMapping {
            host_ip: Some(Ipv4Addr::LOCALHOST),
            ..a
        };
        check_mappings(&[lo, a]).unwrap();
        assert!(check_mappings(&[lo, PortMapping::tcp(80, 81)]).is_err());
        let any = PortMapping {
            host_ip: Some(Ipv4Addr::UNSPECIFIED),
            ..a
        };
        assert!(check_mappings(&[any]).is_err());
    }
}
