//! Reidentify: a clone's guest takes its own identity (hostname, MACs,
//! addresses, a reseeded random generator) in place of the snapshot's.
//!
//! The changes are planned from what the guest has now ([`plan`], pure,
//! so the same request twice plans nothing the second time) and applied
//! with iproute2's `ip`, which every node image has. Old addresses go
//! before the new one is added: added first, the new address would be a
//! secondary of the old primary and go with it.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

use stratum_guest::proto::{Interface, Reidentify};

/// What the guest does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Hostname(String),
    /// `ip` with these arguments.
    Ip(Vec<String>),
}

/// The steps that take the guest from `current` to `wanted`: an interface
/// is found by its new MAC, else by its old one; one found by neither is
/// an error (nothing is applied).
pub fn plan(
    hostname: &str,
    current: &[Interface],
    wanted: &Reidentify,
) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    if !wanted.hostname.is_empty() && wanted.hostname != hostname {
        if !valid_hostname(&wanted.hostname) {
            return Err(format!("{:?} is not a hostname", wanted.hostname));
        }
        steps.push(Step::Hostname(wanted.hostname.clone()));
    }
    for want in &wanted.interfaces {
        let by = |mac: &str| {
            current
                .iter()
                .find(|i| !mac.is_empty() && i.mac.eq_ignore_ascii_case(mac))
        };
        let Some(interface) = by(&want.mac).or_else(|| by(&want.old_mac)) else {
            return Err(format!(
                "no interface has MAC {} or {}",
                want.mac, want.old_mac
            ));
        };
        let ip = |args: &[&str]| Step::Ip(args.iter().map(|a| a.to_string()).collect());
        let dev = interface.name.as_str();
        if !interface.mac.eq_ignore_ascii_case(&want.mac) {
            steps.push(ip(&["link", "set", "dev", dev, "address", &want.mac]));
        }
        // The link-local address the kernel derived from the old MAC
        // (EUI-64) would be the parent's on every clone: it follows the
        // MAC. One made otherwise (stable privacy) is left alone.
        if let (Some(old), Some(new)) = (eui64(&interface.mac), eui64(&want.mac)) {
            if old != new && interface.addresses.contains(&old) {
                steps.push(ip(&["addr", "del", &old, "dev", dev]));
                steps.push(ip(&["addr", "add", &new, "dev", dev]));
            }
        }
        let global = |a: &&String| !a.starts_with("fe80:");
        let has_exactly = interface.addresses.iter().filter(global).count() == want.addresses.len()
            && want
                .addresses
                .iter()
                .all(|a| interface.addresses.contains(a));
        if !has_exactly {
            for old in interface.addresses.iter().filter(global) {
                steps.push(ip(&["addr", "del", old, "dev", dev]));
            }
            for new in &want.addresses {
                steps.push(ip(&["addr", "add", new, "dev", dev]));
            }
            if !want.gateway.is_empty() {
                steps.push(ip(&[
                    "route",
                    "replace",
                    "default",
                    "via",
                    &want.gateway,
                    "dev",
                    dev,
                ]));
            }
        }
    }
    Ok(steps)
}

/// The EUI-64 link-local address (CIDR) Linux gives an interface with
/// MAC `mac`: the MAC's halves around ff:fe, its universal/local bit
/// flipped.
fn eui64(mac: &str) -> Option<String> {
    let octets: Vec<u8> = mac
        .split(':')
        .map(|o| u8::from_str_radix(o, 16).ok())
        .collect::<Option<_>>()?;
    let [a, b, c, d, e, f] = <[u8; 6]>::try_from(octets).ok()?;
    let group = |hi: u8, lo: u8| u16::from_be_bytes([hi, lo]);
    let address = std::net::Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        group(a ^ 0x02, b),
        group(c, 0xff),
        group(0xfe, d),
        group(e, f),
    );
    Some(format!("{address}/64"))
}

/// Applies `steps`, then mixes `entropy` in and reseeds; the first step
/// that fails ends it, saying which.
pub fn apply(steps: &[Step], entropy: &[u8]) -> Result<(), String> {
    for step in steps {
        match step {
            Step::Hostname(name) => {
                nix::unistd::sethostname(name).map_err(|e| format!("sethostname: {e}"))?;
                std::fs::write("/etc/hostname", format!("{name}\n"))
                    .map_err(|e| format!("/etc/hostname: {e}"))?;
            }
            Step::Ip(args) => {
                let out = Command::new("ip")
                    .args(args)
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| format!("ip: {e}"))?;
                if !out.status.success() {
                    return Err(format!(
                        "ip {}: {}",
                        args.join(" "),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
            }
        }
    }
    if !entropy.is_empty() {
        reseed(entropy)?;
    }
    Ok(())
}

/// Writes `entropy` into the kernel's pool and reseeds its generator now
/// (RNDRESEEDCRNG), rather than at its next scheduled reseed.
fn reseed(entropy: &[u8]) -> Result<(), String> {
    let mut random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    random
        .write_all(entropy)
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    // _IO('R', 0x07): no argument.
    const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
    // SAFETY: an ioctl without an argument on a file we hold open.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG as _) } < 0 {
        return Err(format!(
            "RNDRESEEDCRNG: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// RFC 1123 labels joined by dots, at most 64 bytes (the kernel's limit).
fn valid_hostname(name: &str) -> bool {
    name.len() <= 64
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use stratum_guest::proto::InterfaceIdentity;

    fn eth0(mac: &str, addresses: &[&str]) -> Interface {
        Interface {
            name: "eth0".into(),
            mac: mac.into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
        }
    }

    fn wanted() -> Reidentify {
        Reidentify {
            hostname: "clone-1".into(),
            interfaces: vec![InterfaceIdentity {
                old_mac: "02:00:0a:00:00:02".into(),
                mac: "02:00:0a:00:00:05".into(),
                addresses: vec!["10.0.0.5/24".into()],
                gateway: "10.0.0.1".into(),
            }],
            entropy: vec![1; 32],
        }
    }

    fn ip(args: &str) -> Step {
        Step::Ip(args.split(' ').map(str::to_string).collect())
    }

    #[test]
    fn a_fresh_clone_changes_hostname_mac_and_addresses_old_first() {
        let current = [eth0(
            "02:00:0a:00:00:02",
            &["10.0.0.2/24", "fe80::aff:fe00:2/64"],
        )];
        let steps = plan("parent", &current, &wanted()).unwrap();
        assert_eq!(
            steps,
            [
                Step::Hostname("clone-1".into()),
                ip("link set dev eth0 address 02:00:0a:00:00:05"),
                ip("addr del fe80::aff:fe00:2/64 dev eth0"),
                ip("addr add fe80::aff:fe00:5/64 dev eth0"),
                ip("addr del 10.0.0.2/24 dev eth0"),
                ip("addr add 10.0.0.5/24 dev eth0"),
                ip("route replace default via 10.0.0.1 dev eth0"),
            ]
        );
    }

    #[test]
    fn link_local_addresses_are_linux_eui64() {
        // What the node image's kernel gave 06:00:0a:3c:00:02.
        assert_eq!(
            eui64("06:00:0a:3c:00:02").as_deref(),
            Some("fe80::400:aff:fe3c:2/64")
        );
        assert_eq!(eui64("not a mac"), None);
    }

    #[test]
    fn applied_once_there_is_nothing_left_to_do() {
        let current = [eth0(
            "02:00:0A:00:00:05",
            &["10.0.0.5/24", "fe80::aff:fe00:5/64"],
        )];
        assert_eq!(plan("clone-1", &current, &wanted()).unwrap(), []);
    }

    #[test]
    fn an_interface_nobody_has_and_a_bad_hostname_are_refused() {
        let current = [eth0("02:00:0a:00:00:09", &[])];
        let err = plan("x", &current, &wanted()).unwrap_err();
        assert!(err.contains("02:00:0a:00:00:05"), "{err}");
        let bad = Reidentify {
            hostname: "-bad".into(),
            ..Reidentify::default()
        };
        assert!(plan("x", &[], &bad).is_err());
        assert!(valid_hostname("node-1.example"));
        assert!(!valid_hostname("a..b"));
    }
}
