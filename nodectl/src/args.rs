//! Parsers for nodectl's structured arguments (`--disk`, `--nic`,
//! `--label`, `--selector`, `--role`, shares, a pod's `--port`, `--env`
//! and `--restart`, a network's `--cidr` and `--nameserver`), turning
//! text straight into the API's messages so clap reports a bad value as a
//! usage error.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use stratum_api::proto::{
    DiskSpec, EnvVar, Mount, NicSpec, PortMapping, PortProtocol, RestartPolicy, Shares,
    SharesLevel, TokenBucket, VmRole,
};

use crate::size::{parse_memory_mib, parse_size};

/// `low`, `normal`, `high` (1:2:4) or a custom number of shares.
pub fn parse_shares(text: &str) -> Result<Shares, String> {
    let level = match text {
        "low" => SharesLevel::Low,
        "normal" => SharesLevel::Normal,
        "high" => SharesLevel::High,
        custom => {
            let custom = custom.parse().map_err(|_| {
                format!("invalid shares {text:?}: expected low, normal, high or a number")
            })?;
            return Ok(Shares {
                level: SharesLevel::Custom as i32,
                custom,
            });
        }
    };
    Ok(Shares {
        level: level as i32,
        custom: 0,
    })
}

/// `control-plane`, `etcd` or `worker`.
pub fn parse_role(text: &str) -> Result<VmRole, String> {
    match text {
        "control-plane" => Ok(VmRole::ControlPlane),
        "etcd" => Ok(VmRole::Etcd),
        "worker" => Ok(VmRole::Worker),
        _ => Err(format!(
            "invalid role {text:?}: expected control-plane, etcd or worker"
        )),
    }
}

/// The role as the CLI spells it (the inverse of [`parse_role`]).
pub fn role_name(role: VmRole) -> &'static str {
    match role {
        VmRole::Unspecified => "-",
        VmRole::ControlPlane => "control-plane",
        VmRole::Etcd => "etcd",
        VmRole::Worker => "worker",
    }
}

/// Splits `key=value,flag,...` into (key, optional value) pairs.
fn options(text: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    text.split(',').map(|part| match part.split_once('=') {
        Some((key, value)) => (key, Some(value)),
        None => (part, None),
    })
}

fn required<'a>(what: &str, key: &str, value: Option<&'a str>) -> Result<&'a str, String> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(format!("{what}: {key}= needs a value")),
    }
}

/// `base=PATH[,ro][,serial=S]`. Paths containing commas are not supported.
pub fn parse_disk(text: &str) -> Result<DiskSpec, String> {
    let what = format!("invalid --disk {text:?}");
    let mut disk = DiskSpec::default();
    for (key, value) in options(text) {
        match (key, value) {
            ("base", v) => disk.base_image = required(&what, key, v)?.to_string(),
            ("ro", None) => disk.read_only = true,
            ("serial", v) => disk.serial = required(&what, key, v)?.to_string(),
            ("size", v) => {
                disk.size_mib = parse_memory_mib(required(&what, key, v)?)
                    .map_err(|e| format!("{what}: size= takes MiB or a whole-MiB size ({e})"))?;
            }
            ("bw", v) => {
                let bytes = per_second(&what, key, v)?;
                disk.rate_limit
                    .get_or_insert_with(Default::default)
                    .bandwidth = Some(bytes);
            }
            ("iops", v) => {
                let ops = required(&what, key, v)?
                    .parse::<u64>()
                    .map_err(|_| format!("{what}: iops= takes a number of operations"))?;
                disk.rate_limit.get_or_insert_with(Default::default).ops = Some(each_second(ops));
            }
            _ => {
                return Err(format!(
                "{what}: unknown option {key:?} (expected base=, ro, serial=, size=, bw=, iops=)"
            ))
            }
        }
    }
    if disk.base_image.is_empty() {
        return Err(format!("{what}: base=PATH is required"));
    }
    Ok(disk)
}

/// A bandwidth option (`bw=4Mi`: bytes per second) as a token bucket that
/// refills that many bytes every second.
fn per_second(what: &str, key: &str, value: Option<&str>) -> Result<TokenBucket, String> {
    let bytes =
        parse_size(required(what, key, value)?).map_err(|e| format!("{what}: {key}=: {e}"))?;
    Ok(each_second(bytes))
}

fn each_second(size: u64) -> TokenBucket {
    TokenBucket {
        size,
        refill_time_ms: 1000,
        one_time_burst: 0,
    }
}

/// `tap=NAME` or `network=NAME`, then `[,mac=MAC][,ip=CIDR]...[,gw=IP]
/// [,dns=IP]...[,rx-bw=SIZE][,tx-bw=SIZE]`. A NIC on a network takes at most
/// one `ip=`, an IPv4 address bare or with its prefix, and no `gw=` or
/// `dns=`: the network gives those.
pub fn parse_nic(text: &str) -> Result<NicSpec, String> {
    let what = format!("invalid --nic {text:?}");
    let mut nic = NicSpec::default();
    for (key, value) in options(text) {
        match key {
            "tap" => nic.tap_name = required(&what, key, value)?.to_string(),
            "network" => nic.network = required(&what, key, value)?.to_string(),
            "mac" => nic.mac = required(&what, key, value)?.to_string(),
            "ip" => nic.addresses.push(required(&what, key, value)?.to_string()),
            "gw" => nic.gateway = required(&what, key, value)?.to_string(),
            "dns" => nic.nameservers.push(required(&what, key, value)?.to_string()),
            "rx-bw" => {
                let bytes = per_second(&what, key, value)?;
                nic.rx_rate_limit
                    .get_or_insert_with(Default::default)
                    .bandwidth = Some(bytes);
            }
            "tx-bw" => {
                let bytes = per_second(&what, key, value)?;
                nic.tx_rate_limit
                    .get_or_insert_with(Default::default)
                    .bandwidth = Some(bytes);
            }
            _ => {
                return Err(format!(
                    "{what}: unknown option {key:?} (expected tap=, network=, mac=, ip=, gw=, dns=, rx-bw=, tx-bw=)"
                ))
            }
        }
    }
    match (nic.tap_name.is_empty(), nic.network.is_empty()) {
        (true, true) => Err(format!("{what}: tap=NAME or network=NAME is required")),
        (false, false) => Err(format!(
            "{what}: tap= and network= exclude each other (a NIC is on a host TAP or on a network)"
        )),
        (false, true) => Ok(nic),
        (true, false) => {
            check_network_nic(&what, &nic)?;
            Ok(nic)
        }
    }
}

/// What a NIC on a network may not say: the network gives its gateway and
/// name servers, and its one address is IPv4.
fn check_network_nic(what: &str, nic: &NicSpec) -> Result<(), String> {
    if !nic.gateway.is_empty() {
        return Err(format!(
            "{what}: gw= is for tap= NICs only (a NIC on a network routes through the network's gateway)"
        ));
    }
    if !nic.nameservers.is_empty() {
        return Err(format!(
            "{what}: dns= is for tap= NICs only (a NIC on a network gets the network's name servers)"
        ));
    }
    match nic.addresses.as_slice() {
        [] => Ok(()),
        [address] => ipv4_with_prefix(address)
            .map(|_| ())
            .map_err(|e| format!("{what}: ip={address}: {e}")),
        _ => Err(format!(
            "{what}: a NIC on a network takes at most one ip= (an IPv4 address of the network)"
        )),
    }
}

/// `A.B.C.D` or `A.B.C.D/N` (N in 0..=32): the address and the prefix
/// length when given.
fn ipv4_with_prefix(text: &str) -> Result<(Ipv4Addr, Option<u8>), String> {
    let (address, prefix) = match text.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (text, None),
    };
    let address: Ipv4Addr = address
        .parse()
        .map_err(|_| format!("{address:?} is not an IPv4 address"))?;
    let prefix = match prefix {
        None => None,
        Some(p) => match p.parse::<u8>() {
            Ok(n) if n <= 32 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(format!("prefix length {p:?} is not in 0..=32")),
        },
    };
    Ok((address, prefix))
}

/// A network's `--cidr`: an IPv4 address and prefix length,
/// `10.20.0.0/24` (which prefixes the agent accepts is its to say).
pub fn parse_ipv4_cidr(text: &str) -> Result<String, String> {
    let what = format!("invalid CIDR {text:?}");
    match ipv4_with_prefix(text) {
        Ok((address, Some(prefix))) => Ok(format!("{address}/{prefix}")),
        Ok((_, None)) => Err(format!(
            "{what}: no prefix length (expected an IPv4 network such as 10.20.0.0/24)"
        )),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// An IPv4 or IPv6 address, such as a name server.
pub fn parse_ip(text: &str) -> Result<String, String> {
    text.parse::<IpAddr>()
        .map(|ip| ip.to_string())
        .map_err(|_| format!("invalid address {text:?}: expected an IPv4 or IPv6 address"))
}

/// One `key=value` label; the key must not be empty.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("invalid label {text:?}: expected key=value")),
    }
}

/// `NAME=VALUE` of --sysctl.
pub fn parse_sysctl(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("invalid --sysctl {text:?}: expected NAME=VALUE")),
    }
}

/// `k=v,k2=v2`: every pair must match (equality selector).
pub fn parse_selector(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',').map(parse_label).collect()
}

/// Labels or selectors as the map the API takes; a later key wins.
pub fn label_map(pairs: impl IntoIterator<Item = (String, String)>) -> BTreeMap<String, String> {
    pairs.into_iter().collect()
}

/// `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]`, as `docker run -p`:
/// `8080:80`, `5353:53/udp`, `127.0.0.1:8080:80`. TCP when no protocol is
/// given; every host address but loopback when no host IP is.
pub fn parse_port(text: &str) -> Result<PortMapping, String> {
    let what = format!(
        "invalid --port {text:?}: expected [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp], \
         e.g. 8080:80 or 5353:53/udp"
    );
    let (ports, protocol) = match text.split_once('/') {
        None => (text, PortProtocol::Tcp),
        Some((ports, "tcp")) => (ports, PortProtocol::Tcp),
        Some((ports, "udp")) => (ports, PortProtocol::Udp),
        Some((_, other)) => {
            return Err(format!(
                "invalid --port {text:?}: protocol {other:?} is neither tcp nor udp"
            ))
        }
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let (host_ip, host, container) = match parts.as_slice() {
        [host, container] => (String::new(), *host, *container),
        [ip, host, container] => {
            let ip: Ipv4Addr = ip
                .parse()
                .map_err(|_| format!("invalid --port {text:?}: {ip:?} is not an IPv4 address"))?;
            (ip.to_string(), *host, *container)
        }
        _ => return Err(what),
    };
    let port = |p: &str| -> Result<u32, String> {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(what.clone());
        }
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(u32::from(n)),
            _ => Err(format!(
                "invalid --port {text:?}: port {p} is not in 1..=65535"
            )),
        }
    };
    Ok(PortMapping {
        host_port: port(host)?,
        container_port: port(container)?,
        protocol: protocol as i32,
        host_ip,
    })
}

/// A port mapping as `--port` takes it, with the protocol always spelt:
/// `8080:80/tcp`, `127.0.0.1:5353:53/udp` (the inverse of [`parse_port`]).
pub fn port_text(port: &PortMapping) -> String {
    let protocol = match PortProtocol::try_from(port.protocol) {
        Ok(PortProtocol::Unspecified | PortProtocol::Tcp) => "tcp".to_string(),
        Ok(PortProtocol::Udp) => "udp".to_string(),
        Err(_) => format!("unknown({})", port.protocol),
    };
    let ip = if port.host_ip.is_empty() {
        String::new()
    } else {
        format!("{}:", port.host_ip)
    };
    format!("{ip}{}:{}/{protocol}", port.host_port, port.container_port)
}

/// `NAME=VALUE` for a container's environment; the value may be empty or
/// hold `=`, the name may not be empty or hold `=`.
pub fn parse_env(text: &str) -> Result<EnvVar, String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() && !name.contains(char::is_whitespace) => {
            Ok(EnvVar {
                name: name.to_string(),
                value: value.to_string(),
            })
        }
        _ => Err(format!(
            "invalid --env {text:?}: expected NAME=VALUE (a name without blanks)"
        )),
    }
}

/// `HOST:CONTAINER[:ro]` of --volume: absolute paths.
pub fn parse_volume(text: &str) -> Result<Mount, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (host, container, readonly) = match parts.as_slice() {
        [host, container] => (*host, *container, false),
        [host, container, "ro"] => (*host, *container, true),
        [host, container, "rw"] => (*host, *container, false),
        _ => {
            return Err(format!(
                "invalid --volume {text:?}: expected HOST:CONTAINER[:ro]"
            ))
        }
    };
    if !host.starts_with('/') || !container.starts_with('/') {
        return Err(format!(
            "invalid --volume {text:?}: both paths must be absolute"
        ));
    }
    Ok(Mount {
        host_path: host.to_string(),
        container_path: container.to_string(),
        readonly,
        propagation: 0,
    })
}

/// Who --user names: a uid or a user name, and a gid.
pub type UserArg = (Option<u32>, String, Option<u32>);

/// `USER[:GID]` of --user: the user by id or name, the group by id.
pub fn parse_user(text: &str) -> Result<UserArg, String> {
    let (user, group) = match text.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (text, None),
    };
    if user.is_empty() {
        return Err(format!("invalid --user {text:?}: no user"));
    }
    let gid = group
        .map(|g| {
            g.parse::<u32>()
                .map_err(|_| format!("invalid --user {text:?}: the group must be a numeric id"))
        })
        .transpose()?;
    Ok(match user.parse::<u32>() {
        Ok(uid) => (Some(uid), String::new(), gid),
        Err(_) => (None, user.to_string(), gid),
    })
}

/// `never`, `on-failure` or `always`.
pub fn parse_restart(text: &str) -> Result<RestartPolicy, String> {
    match text {
        "never" => Ok(RestartPolicy::Never),
        "on-failure" => Ok(RestartPolicy::OnFailure),
        "always" => Ok(RestartPolicy::Always),
        _ => Err(format!(
            "invalid restart policy {text:?}: expected never, on-failure or always"
        )),
    }
}

/// The restart policy as the CLI spells it; unset reads as `never`, as the
/// agent treats it (the inverse of [`parse_restart`]).
pub fn restart_name(policy: RestartPolicy) -> &'static str {
    match policy {
        RestartPolicy::Unspecified | RestartPolicy::Never => "never",
        RestartPolicy::OnFailure => "on-failure",
        RestartPolicy::Always => "always",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_levels_or_custom_numbers() {
        assert_eq!(
            parse_shares("high").unwrap().level,
            SharesLevel::High as i32
        );
        let custom = parse_shares("1500").unwrap();
        assert_eq!(
            (custom.level, custom.custom),
            (SharesLevel::Custom as i32, 1500)
        );
        assert!(parse_shares("huge").is_err());
        assert!(parse_shares("-1").is_err());
    }

    #[test]
    fn roles_round_trip() {
        for role in [VmRole::ControlPlane, VmRole::Etcd, VmRole::Worker] {
            assert_eq!(parse_role(role_name(role)), Ok(role));
        }
        assert!(parse_role("master").is_err());
    }

    #[test]
    fn disks_parse_base_ro_and_serial() {
        let d = parse_disk("base=/img/root.raw,ro,serial=root").unwrap();
        assert_eq!(d.size_mib, 0);
        assert_eq!(parse_disk("base=/a,size=20Gi").unwrap().size_mib, 20 * 1024);
        assert_eq!(parse_disk("base=/a,size=512").unwrap().size_mib, 512);
        assert!(parse_disk("base=/a,size=1.5").is_err());
        assert_eq!(d.base_image, "/img/root.raw");
        assert!(d.read_only);
        assert_eq!(d.serial, "root");
        assert!(!parse_disk("base=/a").unwrap().read_only);
        for bad in [
            "",
            "ro",
            "base=",
            "base=/a,rw",
            "base=/a,serial",
            "base=/a,ro=1",
        ] {
            assert!(parse_disk(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nics_take_static_addressing() {
        let n = parse_nic(
            "tap=t0,mac=06:00:00:00:00:01,ip=10.0.0.2/24,ip=fd00::2/64,gw=10.0.0.1,dns=10.0.0.1",
        )
        .unwrap();
        assert_eq!(n.addresses, ["10.0.0.2/24", "fd00::2/64"]);
        assert_eq!(n.gateway, "10.0.0.1");
        assert_eq!(n.nameservers, ["10.0.0.1"]);
        assert!(parse_nic("tap=t0,ip").is_err());
    }

    #[test]
    fn disk_and_nic_limits_are_per_second_buckets() {
        let d = parse_disk("base=/a,bw=4Mi,iops=200").unwrap();
        let limit = d.rate_limit.unwrap();
        assert_eq!(limit.bandwidth, Some(each_second(4 << 20)));
        assert_eq!(limit.ops, Some(each_second(200)));
        let n = parse_nic("tap=tap0,tx-bw=1Gi").unwrap();
        assert_eq!(n.rx_rate_limit, None);
        assert_eq!(
            n.tx_rate_limit.unwrap().bandwidth,
            Some(each_second(1 << 30))
        );
        for bad in [
            "base=/a,bw=",
            "base=/a,bw=fast",
            "base=/a,iops=-1",
            "base=/a,iops=x",
        ] {
            assert!(parse_disk(bad).is_err(), "{bad:?}");
        }
        assert!(parse_nic("tap=t,rx-bw=lots").is_err());
    }

    #[test]
    fn nics_parse_tap_and_mac() {
        let n = parse_nic("tap=tap0,mac=52:54:00:12:34:56").unwrap();
        assert_eq!(
            (n.tap_name.as_str(), n.mac.as_str()),
            ("tap0", "52:54:00:12:34:56")
        );
        assert!(parse_nic("mac=52:54:00:12:34:56").is_err());
        assert!(parse_nic("tap=tap0,vlan=3").is_err());
    }

    #[test]
    fn volumes_and_users() {
        let v = parse_volume("/var/lib/kubelet/x:/data:ro").unwrap();
        assert_eq!(
            (v.host_path.as_str(), v.container_path.as_str(), v.readonly),
            ("/var/lib/kubelet/x", "/data", true)
        );
        assert!(!parse_volume("/a:/b").unwrap().readonly);
        for bad in ["/a", "a:/b", "/a:b", "/a:/b:rx", "/a:/b:ro:x"] {
            assert!(parse_volume(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_user("1000").unwrap(),
            (Some(1000), String::new(), None)
        );
        assert_eq!(
            parse_user("app:50").unwrap(),
            (None, "app".into(), Some(50))
        );
        assert!(parse_user(":50").is_err());
        assert!(parse_user("app:staff").is_err());
    }

    #[test]
    fn labels_and_selectors() {
        assert_eq!(parse_label("tier=web"), Ok(("tier".into(), "web".into())));
        assert_eq!(parse_label("empty="), Ok(("empty".into(), String::new())));
        assert!(parse_label("=x").is_err());
        assert!(parse_label("novalue").is_err());
        let sel = parse_selector("a=1,b=2").unwrap();
        assert_eq!(label_map(sel).len(), 2);
        assert!(parse_selector("a=1,,b=2").is_err());
    }
}
