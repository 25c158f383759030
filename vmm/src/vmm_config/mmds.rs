//! `mmds-config` (`PUT /mmds/config`): which network interfaces serve the
//! metadata service, at which address, in which version. Accepted before
//! boot only, naming interfaces already configured; the address must be
//! link-local (169.254.1.0 to 169.254.254.255, Firecracker's check).
//!
//! The data store itself (`PUT`/`PATCH`/`GET /mmds`) is the controller's
//! (see `crate::mmds`); this module holds only the configuration, which
//! a snapshot keeps.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::mmds::stack::DEFAULT_IPV4;
use crate::mmds::MmdsVersion;

/// The body of `PUT /mmds/config`, and the `mmds-config` section of a
/// config file and of `GET /vm/config` (there with the address filled in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmdsConfig {
    #[serde(default)]
    pub version: MmdsVersion,
    pub network_interfaces: Vec<String>,
    #[serde(default)]
    pub ipv4_address: Option<Ipv4Addr>,
    #[serde(default)]
    pub imds_compat: bool,
}

/// Firecracker's words, which its clients may match (the triple M
/// included).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("MMMDS config error: The list of network interface IDs that allow forwarding MMDS requests is empty.")]
    EmptyNetworkInterfaces,
    #[error("MMMDS config error: The MMDS IPv4 address is not link local.")]
    NotLinkLocal,
    #[error("MMMDS config error: The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.")]
    UnknownNetworkInterface,
}

impl MmdsConfig {
    /// The configuration as it will be used: checked against the
    /// configured interfaces `nics`, its address filled in.
    pub fn validated<'a>(
        mut self,
        nics: impl Iterator<Item = &'a str> + Clone,
    ) -> Result<Self, Error> {
        let address = self.ipv4_address.unwrap_or(DEFAULT_IPV4);
        if !is_link_local(address) {
            return Err(Error::NotLinkLocal);
        }
        if self.network_interfaces.is_empty() {
            return Err(Error::EmptyNetworkInterfaces);
        }
        if !self
            .network_interfaces
            .iter()
            .all(|id| nics.clone().any(|nic| nic == id))
        {
            return Err(Error::UnknownNetworkInterface);
        }
        self.ipv4_address = Some(address);
        Ok(self)
    }

    /// The address the service answers at.
    pub fn address(&self) -> Ipv4Addr {
        self.ipv4_address.unwrap_or(DEFAULT_IPV4)
    }

    /// Whether interface `id` serves the service.
    pub fn serves(&self, id: &str) -> bool {
        self.network_interfaces.iter().any(|n| n == id)
    }
}

/// 169.254.0.0/16 but its first and last /24, which RFC 3927 reserves.
pub fn is_link_local(address: Ipv4Addr) -> bool {
    matches!(address.octets(), [169, 254, third, _] if third != 0 && third != 255)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(body: &str) -> MmdsConfig {
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn validation() {
        let nics = ["eth0", "eth1"];
        let c = config(r#"{"network_interfaces": ["eth1"]}"#)
            .validated(nics.iter().copied())
            .unwrap();
        assert_eq!(c.version, MmdsVersion::V1);
        assert_eq!(c.ipv4_address, Some(DEFAULT_IPV4));
        assert!(c.serves("eth1") && !c.serves("eth0"));
        let c = config(
            r#"{"version": "V2", "network_interfaces": ["eth0"], "ipv4_address": "169.254.170.2", "imds_compat": true}"#,
        )
        .validated(nics.iter().copied())
        .unwrap();
        assert_eq!(c.address(), Ipv4Addr::new(169, 254, 170, 2));
        assert!(c.imds_compat);
        let error = |body: &str| config(body).validated(nics.iter().copied()).unwrap_err();
        assert_eq!(
            error(r#"{"network_interfaces": []}"#),
            Error::EmptyNetworkInterfaces
        );
        assert_eq!(
            error(r#"{"network_interfaces": ["eth0", "eth9"]}"#),
            Error::UnknownNetworkInterface
        );
        assert_eq!(
            error(r#"{"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"}"#),
            Error::NotLinkLocal
        );
        assert!(serde_json::from_str::<MmdsConfig>(
            r#"{"network_interfaces": [], "version": "V3"}"#
        )
        .is_err());
        assert!(serde_json::from_str::<MmdsConfig>(r#"{"version": "V2"}"#).is_err());
        assert!(serde_json::from_str::<MmdsConfig>(
            r#"{"network_interfaces": [], "ipv4_address": ""}"#
        )
        .is_err());
    }

    #[test]
    fn link_local_as_firecracker_checks() {
        for (address, ok) in [
            ("169.254.169.254", true),
            ("169.254.1.0", true),
            ("169.254.254.255", true),
            ("169.254.0.1", false),
            ("169.254.255.1", false),
            ("169.253.1.1", false),
            ("127.0.0.1", false),
        ] {
            assert_eq!(is_link_local(address.parse().unwrap()), ok, "{address}");
        }
    }
}
