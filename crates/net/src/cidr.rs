//! A network's CIDR: an IPv4 network from which the bridge takes the
//! first address (the workloads' gateway) and IPAM hands out the rest.
//! IPv4 only: workloads get one IPv4 address each, which is what the
//! runtime and the port mappings need; dual stack can come later without
//! changing callers.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use super::error::NetError;

/// An IPv4 network in CIDR notation, its host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    /// The default pod CIDR, 10.88.0.0/16.
    pub const DEFAULT: Ipv4Cidr = Ipv4Cidr {
        network: Ipv4Addr::new(10, 88, 0, 0),
        prefix: 16,
    };

    /// The smallest network that holds a gateway and one pod: /30 (network,
    /// gateway, one pod, broadcast).
    pub const MAX_PREFIX: u8 = 30;

    /// `network/prefix`; refuses set host bits and prefixes outside 8..=30
    /// (a /31 or /32 has no room for a gateway and a pod; a network wider
    /// than /8 is surely a typo).
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Self, NetError> {
        if !(8..=Self::MAX_PREFIX).contains(&prefix) {
            return Err(NetError::InvalidConfig(format!(
                "CIDR {network}/{prefix}: the prefix length must be between 8 and {}",
                Self::MAX_PREFIX
            )));
        }
        let cidr = Ipv4Cidr { network, prefix };
        if u32::from(network) & !cidr.mask() != 0 {
            return Err(NetError::InvalidConfig(format!(
                "CIDR {network}/{prefix} has host bits set (did you mean {}/{prefix}?)",
                Ipv4Addr::from(u32::from(network) & cidr.mask())
            )));
        }
        Ok(cidr)
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    /// Number of addresses in the network, network and broadcast included.
    pub fn size(&self) -> u32 {
        1u32 << (32 - u32::from(self.prefix))
    }

    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    /// The bridge's address and the pods' default gateway: the first host.
    pub fn gateway(&self) -> Ipv4Addr {
        self.at(1)
    }

    /// The address `offset` places after the network address. `offset`
    /// must be below [`size`](Self::size).
    pub(crate) fn at(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | (offset & !self.mask()))
    }

    /// The offsets pods may get: all hosts but the gateway.
    pub(crate) fn pod_offsets(&self) -> std::ops::RangeInclusive<u32> {
        2..=self.size() - 2
    }

    /// How many pods the network can hold at once.
    pub fn pod_capacity(&self) -> u32 {
        self.size() - 3
    }

    /// Whether the two networks share an address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    /// Whether `ip` is an address a workload may hold: in the network,
    /// neither its network, gateway nor broadcast address.
    pub fn is_workload_address(&self, ip: Ipv4Addr) -> bool {
        let offset = u32::from(ip).wrapping_sub(u32::from(self.network));
        self.contains(ip) && self.pod_offsets().contains(&offset)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Stored as its text, "10.88.0.0/16".
impl serde::Serialize for Ipv4Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetError::InvalidConfig(format!("CIDR {s:?} is not ADDRESS/PREFIX"));
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        Ipv4Cidr::new(addr, prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_derives_addresses() {
        let c: Ipv4Cidr = "10.88.0.0/16".parse().unwrap();
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(c.size(), 65536);
        assert_eq!(c.pod_capacity(), 65533);
        assert_eq!(c.pod_offsets(), 2..=65534);
        assert!(c.contains(Ipv4Addr::new(10, 88, 255, 255)));
        assert!(!c.contains(Ipv4Addr::new(10, 89, 0, 1)));
        assert_eq!(c.at(258), Ipv4Addr::new(10, 88, 1, 2));
        assert_eq!(c.to_string(), "10.88.0.0/16");
    }

    #[test]
    fn refuses_bad_cidrs() {
        for bad in [
            "10.88.0.1/16",
            "10.0.0.0/31",
            "10.0.0.0/32",
            "10.0.0.0/4",
            "10.0.0.0",
            "x/8",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
        let tiny: Ipv4Cidr = "10.0.0.0/30".parse().unwrap();
        assert_eq!(tiny.pod_capacity(), 1);
        assert_eq!(tiny.pod_offsets(), 2..=2);
    }
}
