//! What the guest says of itself: read from the kernel and the files the
//! distribution keeps, never computed or cached here.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::ifaddrs::getifaddrs;
use stratum_guest::proto::{GuestStatus, Interface};

const CLOUD_INIT: &str = "/usr/bin/cloud-init";
const OS_RELEASE: &str = "/etc/os-release";

/// The status now; `ready` is how boot configuration ended, once it has.
pub fn collect(ready: Option<String>) -> GuestStatus {
    GuestStatus {
        ready: ready.is_some(),
        ready_detail: ready.unwrap_or_default(),
        hostname: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        interfaces: interfaces(),
        os: os_name(&std::fs::read_to_string(OS_RELEASE).unwrap_or_default()),
        kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
    }
}

/// Blocks until boot configuration is over and says how it ended: cloud-init
/// has finished all its stages (`cloud-init status --wait`), or there is no
/// cloud-init, so nothing to wait for.
pub fn wait_for_boot_config() -> String {
    if !Path::new(CLOUD_INIT).exists() {
        return "no cloud-init".into();
    }
    let status = Command::new(CLOUD_INIT)
        .args(["status", "--wait"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => "cloud-init: done".into(),
        // 2 is cloud-init's "done, with recoverable errors" (23.4 and later).
        Ok(s) if s.code() == Some(2) => "cloud-init: done, with recoverable errors".into(),
        Ok(s) => format!("cloud-init: error ({s})"),
        Err(e) => format!("cloud-init: cannot run it: {e}"),
    }
}

/// Every interface but loopback, by name, with its MAC and addresses.
fn interfaces() -> Vec<Interface> {
    let Ok(addrs) = getifaddrs() else {
        return Vec::new();
    };
    let mut by_name: BTreeMap<String, Interface> = BTreeMap::new();
    for ifaddr in addrs {
        if ifaddr.interface_name == "lo" {
            continue;
        }
        let entry = by_name
            .entry(ifaddr.interface_name.clone())
            .or_insert_with(|| Interface {
                name: ifaddr.interface_name.clone(),
                ..Interface::default()
            });
        let Some(address) = ifaddr.address else {
            continue;
        };
        if let Some(link) = address.as_link_addr() {
            if let Some(mac) = link.addr().filter(|m| m.iter().any(|b| *b != 0)) {
                entry.mac = mac
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
            }
            continue;
        }
        let ip = address
            .as_sockaddr_in()
            .map(|a| IpAddr::V4(a.ip()))
            .or_else(|| address.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip())));
        let Some(ip) = ip else {
            continue;
        };
        let prefix = ifaddr.netmask.and_then(|mask| {
            mask.as_sockaddr_in()
                .map(|m| m.ip().to_bits().count_ones())
                .or_else(|| {
                    mask.as_sockaddr_in6()
                        .map(|m| m.ip().to_bits().count_ones())
                })
        });
        entry.addresses.push(match prefix {
            Some(prefix) => format!("{ip}/{prefix}"),
            None => ip.to_string(),
        });
    }
    by_name.into_values().collect()
}

/// PRETTY_NAME of an os-release file, unquoted; empty when it has none.
fn os_name(os_release: &str) -> String {
    os_release
        .lines()
        .find_map(|line| line.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_name_is_the_unquoted_pretty_name() {
        let debian = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n";
        assert_eq!(os_name(debian), "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(os_name("NAME=x\n"), "");
        assert_eq!(os_name("PRETTY_NAME=Plain\n"), "Plain");
    }

    #[test]
    fn this_machine_has_a_kernel_and_no_loopback_in_the_list() {
        let status = collect(None);
        assert!(!status.ready);
        assert!(!status.kernel.is_empty());
        assert!(status.interfaces.iter().all(|i| i.name != "lo"));
    }
}
