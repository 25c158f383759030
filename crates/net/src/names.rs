//! Names the pod network puts into the kernel and into nftables: pod and
//! namespace ids (checked, since they become file names under the netns
//! directory and comments in a generated ruleset), link names (at most 15
//! bytes, IFNAMSIZ - 1), and the host end of each pod's veth pair.
//!
//! A host veth is named `s` + 4 hex digits of a hash of the bridge name +
//! 10 hex digits of a hash of the pod id (15 bytes). The name is derived,
//! not stored-only, so that a restarted agent finds a pod's link from its
//! id alone; the bridge tag keeps two pod networks on one host (tests run
//! several side by side) from ever naming a link alike, and lets
//! reconcile recognise this network's leftovers even when a crash left
//! them detached from the bridge. The hash is FNV-1a, fixed here, because
//! std's hasher may change between Rust releases and names must not.

use super::error::NetError;

/// Longest Linux interface name.
pub const MAX_LINK_NAME: usize = 15;

/// Longest pod or namespace id accepted.
pub const MAX_ID: usize = 128;

/// Checks a pod or namespace id: 1..=128 bytes of `[A-Za-z0-9._-]`, not
/// starting with a dot (it names a file and appears in nft comments).
pub fn check_id(what: &str, id: &str) -> Result<(), NetError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(NetError::InvalidArgument(format!(
            "{what} {id:?} must be 1 to {MAX_ID} characters of A-Z a-z 0-9 . _ - \
             and not start with a dot"
        )))
    }
}

/// Checks a link name the configuration supplies (the bridge).
pub fn check_link_name(name: &str) -> Result<(), NetError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_LINK_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(NetError::InvalidConfig(format!(
            "link name {name:?} must be 1 to {MAX_LINK_NAME} characters of A-Z a-z 0-9 . _ -"
        )))
    }
}

/// Checks an nftables table name: a letter, then letters, digits and `_`.
pub fn check_table_name(name: &str) -> Result<(), NetError> {
    let mut bytes = name.bytes();
    let ok = name.len() <= 64
        && bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(NetError::InvalidConfig(format!(
            "nftables table name {name:?} must be a letter followed by letters, digits or _"
        )))
    }
}

fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The prefix every host veth of the network on `bridge` starts with.
pub fn veth_prefix(bridge: &str) -> String {
    format!("s{:04x}", fnv1a(bridge.as_bytes()) & 0xffff)
}

/// The host end of pod `pod_id`'s veth pair on `bridge`.
pub fn host_veth(bridge: &str, pod_id: &str) -> String {
    format!(
        "{}{:010x}",
        veth_prefix(bridge),
        fnv1a(pod_id.as_bytes()) & 0xff_ffff_ffff
    )
}

/// The prefix every TAP the agent makes for VM NICs starts with; `tag`
/// is the default network's bridge, as for [`veth_prefix`].
pub fn tap_prefix(tag: &str) -> String {
    format!("t{:04x}", fnv1a(tag.as_bytes()) & 0xffff)
}

/// The TAP of VM NIC `owner` (`<vm id>.<index>`).
pub fn host_tap(tag: &str, owner: &str) -> String {
    format!(
        "{}{:010x}",
        tap_prefix(tag),
        fnv1a(owner.as_bytes()) & 0xff_ffff_ffff
    )
}

/// Whether `name` looks like one of the TAPs [`host_tap`] names.
pub fn is_host_tap(tag: &str, name: &str) -> bool {
    name.len() == MAX_LINK_NAME
        && name.starts_with(&tap_prefix(tag))
        && name[5..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks a network name: a DNS label, 1 to 63 of `[a-z0-9-]`, neither
/// starting nor ending with `-` (it names a bridge and appears in nft
/// comments and the state file's keys).
pub fn check_network_name(name: &str) -> Result<(), NetError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(NetError::InvalidArgument(format!(
            "network name {name:?} must be a DNS label: 1 to 63 of a-z 0-9 -, \
             not starting or ending with -"
        )))
    }
}

/// The bridge of a network that names none: `st-` and the name, or, when
/// the name is longer than 12, its first 8 characters and 4 hex digits of
/// its hash (15 bytes at most either way).
pub fn default_bridge(network: &str) -> String {
    if network.len() <= 12 {
        format!("st-{network}")
    } else {
        format!(
            "st-{}{:04x}",
            &network[..8],
            fnv1a(network.as_bytes()) & 0xffff
        )
    }
}

/// Whether `name` looks like a host veth of the network on `bridge`.
pub fn is_host_veth(bridge: &str, name: &str) -> bool {
    name.len() == MAX_LINK_NAME
        && name.starts_with(&veth_prefix(bridge))
        && name[5..].bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_fit_and_are_stable() {
        let n = host_veth("stratum0", "pod-1");
        assert_eq!(n.len(), MAX_LINK_NAME);
        assert_eq!(n, host_veth("stratum0", "pod-1"));
        assert_ne!(n, host_veth("stratum0", "pod-2"));
        assert_ne!(n, host_veth("stratum1", "pod-1"));
        assert!(is_host_veth("stratum0", &n));
        assert!(!is_host_veth("stratum1", &n));
        let t = host_tap("stratum0", "vm-1.0");
        assert_eq!(t.len(), MAX_LINK_NAME);
        assert!(is_host_tap("stratum0", &t) && !is_host_veth("stratum0", &t));
        assert_ne!(t, host_tap("stratum0", "vm-1.1"));
        // Pinned: a changed hash would orphan every running pod's link.
        assert_eq!(
            veth_prefix("stratum0"),
            format!("s{:04x}", fnv1a(b"stratum0") & 0xffff)
        );
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn ids_are_checked() {
        for ok in ["pod-1", "a", "ns_A.b", &"x".repeat(MAX_ID)] {
            check_id("pod id", ok).unwrap();
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "a b",
            "a\"b",
            "ü",
            &"x".repeat(MAX_ID + 1),
        ] {
            assert!(check_id("pod id", bad).is_err(), "{bad:?}");
        }
        check_link_name("stratum0").unwrap();
        check_network_name("tenant-a").unwrap();
        for bad in ["", "-a", "a-", "A", "a_b", &"x".repeat(64)] {
            assert!(check_network_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(default_bridge("tenant-a"), "st-tenant-a");
        let long = default_bridge("a-rather-long-network");
        assert_eq!(long.len(), MAX_LINK_NAME);
        assert!(long.starts_with("st-a-rather"));
        check_link_name(&long).unwrap();
        assert!(check_link_name("a-very-long-bridge-name").is_err());
        check_table_name("stratum").unwrap();
        assert!(check_table_name("1x").is_err());
        assert!(check_table_name("a-b").is_err());
    }
}
