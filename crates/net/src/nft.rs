//! The firewall of the host's networks: a table of its own (`stratum` by
//! default), in two families, `inet` for routing-level rules and `bridge`
//! for the bridge ports, so replacing or deleting it never touches the
//! host's rules or another program's. One table covers every network of
//! the agent: isolation is between namespaces, wherever their workloads
//! sit, and traffic between two networks is routed by the host through
//! the same `forward` hook.
//!
//! Both are rendered from the networks' state (networks, the endpoints on
//! them with their namespaces, host ports and port mappings, the policies)
//! and loaded with `nft -f -` in one transaction that deletes and
//! recreates them: every change is atomic (no moment with half a
//! ruleset), the tables always match the state exactly, and reconcile
//! after a restart is the same operation. The exception is a pod's
//! attach, on the pod start path: it only *adds* (its address, its
//! namespace's set and rules if it is the first, its port mappings) in one
//! transaction, since any deletion makes the kernel wait for an RCU grace
//! period (~14 ms here, against ~2 ms for additions); the next full render
//! puts the rules back in canonical order, with the same verdicts all
//! along. `nft -f` with generated text rather than the JSON API: the text
//! format is what operators read in `nft list table`, the tables are
//! small, and nothing here needs to parse nft's output.
//!
//! **Isolation.** Workloads on a bridge talk at layer 2, which the `inet`
//! family's forward hook does not see by itself; each bridge is created
//! with `nf_call_iptables`/`nf_call_ip6tables` (per bridge, so the host's
//! other bridges are not affected), so br_netfilter passes its IPv4/IPv6
//! traffic through the inet hooks, with conntrack. The `bridge` family
//! alone was tried first: it sees the frames, but this kernel has no
//! conntrack for it (`ct state` fails with EPROTO), so replies to an
//! allowed direction could not be told from new connections in the other.
//! Packets between workloads (any network's CIDR to any network's) are
//! accepted when they belong to an established connection, were DNATed
//! to a published port, stay inside one namespace, or go from a namespace
//! to one a policy allows; the rest are dropped.
//!
//! **Workloads → host.** What a workload opens to the host itself (any
//! host address: it arrives through its bridge, so the `input` hook sees
//! the bridge as its interface) is dropped, except a ping of its own
//! network's gateway and the host services configured on that gateway
//! address; replies to connections the host opened pass (conntrack).
//! Host → workload is not filtered.
//!
//! **Anti-spoofing.** Isolation trusts source addresses, and any pod with
//! CAP_NET_RAW, like any VM's kernel, can forge one. So the `bridge`
//! table, on every frame a workload sends into a bridge (the host end of
//! its link, a veth or a TAP, is the ingress port), accepts only IPv4 and
//! ARP from the endpoint's own address (ARP probes from 0.0.0.0 too) and
//! drops everything else: other sources, IPv6 (networks are IPv4 only),
//! VLAN-tagged frames that br_netfilter would not inspect. The host ends
//! are recognised by their name prefixes, so a link is filtered (and
//! drops everything) from the moment it exists until its endpoint's
//! element is added.
//!
//! **Port mappings.** DNAT in prerouting (from other hosts and from pods)
//! and output (from host processes), for any local destination address;
//! a workload reaching a published port of a pod on the same network is
//! masqueraded (hairpin), so the reply comes back the way the request
//! went.
//!
//! **Localhost.** A host process reaches a mapping on
//! `127.0.0.1:<host port>` (any 127.0.0.0/8 address), as under
//! containerd's CNI portmap plugin, which Kubernetes hostPorts and the
//! CRI conformance suite expect. Three pieces make it work: the output
//! hook DNATs loopback destinations like any local one; each network's
//! bridge has `route_localnet` (its own, never `all`/`default`; see
//! [`super::bridge`]), without which the kernel refuses to route a
//! 127.0.0.0/8 source out of a non-loopback device and drops the replies
//! as martians; and such a connection, source 127.0.0.0/8, DNATed, leaving
//! by the network's bridge for its CIDR, is masqueraded behind the
//! gateway, so the pod's reply comes to the host and not to its own `lo`
//! (nothing else with a loopback source is NATed). Only the output hook
//! maps loopback addresses: prerouting skips them, so a packet for
//! 127.0.0.1 from another host or a pod (which no kernel would route
//! there by itself) never reaches a mapping, even one whose host address
//! is 127.0.0.1.
//!
//! `route_localnet` also makes the kernel accept packets *from* the
//! bridge with a 127.0.0.0/8 source or destination, which it would
//! otherwise drop as martians: a pod could then address the host's
//! loopback-only services (the hazard of CVE-2020-8558, which kube-proxy
//! closes with its "drop martian localhost" rule). So a `martians` chain
//! at the `raw` priority of prerouting, before conntrack and NAT, drops
//! every packet coming in from a network's bridge whose source or
//! destination is in 127.0.0.0/8, whatever the other rules say. The
//! replies to the host's own localhost connections are not among them:
//! until conntrack un-NATs them after that chain, they are addressed to
//! the gateway. (The `input` rules below would refuse a new connection to
//! a loopback address anyway, and the anti-spoofing table a pod's
//! loopback source; this rule does not depend on either.)
//!
//! **Egress.** A network with NAT has its traffic to anywhere outside the
//! host's networks masqueraded behind the host's address.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::cidr::Ipv4Cidr;
use super::error::{NetError, Result};
use super::portmap::{PortMapping, Protocol};

/// One network as the firewall sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallNetwork<'a> {
    /// Its bridge.
    pub bridge: &'a str,
    /// Its CIDR; the gateway is its first address.
    pub cidr: Ipv4Cidr,
    /// Masquerade its traffic leaving the host's networks.
    pub nat: bool,
}

/// One endpoint (a pod, a VM's NIC) as the firewall sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallEndpoint<'a> {
    /// The pod id or NIC owner (in rule comments).
    pub id: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The host end of its link (a veth, a TAP).
    pub port: &'a str,
    /// Its published ports (pods only).
    pub port_mappings: &'a [PortMapping],
}

/// What the table is rendered from.
#[derive(Debug, Clone)]
pub struct Ruleset<'a> {
    /// The table name (families `inet` and `bridge`).
    pub table: &'a str,
    /// What the host end of every endpoint's link starts with.
    pub port_prefixes: &'a [String],
    /// The networks (at least one for a useful ruleset).
    pub networks: Vec<FirewallNetwork<'a>>,
    /// The endpoints.
    pub endpoints: Vec<FirewallEndpoint<'a>>,
    /// Allowed (from, to) namespace pairs.
    pub policies: &'a BTreeSet<(String, String)>,
    /// The host services workloads may reach on their gateway.
    pub host_services: &'a [(Protocol, u16)],
}

/// The set of a namespace's endpoint addresses: named after the namespace
/// (its characters are all valid in an nft identifier), so adding a
/// namespace never renames another's set.
fn set_name(namespace: &str) -> String {
    format!("ns_{namespace}")
}

/// A port mapping's DNAT rule.
fn dnat_rule(p: &FirewallEndpoint<'_>, m: &PortMapping) -> String {
    let dst = m
        .host_ip
        .map(|ip| format!("ip daddr {ip} "))
        .unwrap_or_default();
    format!(
        "{dst}{proto} dport {hp} dnat ip to {ip}:{cp} comment \"pod {id}\"",
        proto = m.protocol,
        hp = m.host_port,
        ip = p.ip,
        cp = m.container_port,
        id = p.id
    )
}

/// `{ a, b }`, nft's anonymous set, of `items` (at least one).
fn anonymous_set<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    format!("{{ {} }}", items.join(", "))
}

impl Ruleset<'_> {
    /// The `nft -f` script that adds endpoint `new` (already in
    /// `self.endpoints`) to tables holding the ruleset of the others: its
    /// address to its namespace's set (the set, its rule and the policy
    /// rules that name it, when it is the namespace's first endpoint), its
    /// port to the anti-spoofing set, its port mappings. Only additions:
    /// the kernel commits them in a couple of milliseconds, where
    /// replacing the tables (any rule deleted) waits for an RCU grace
    /// period, ~14 ms on our machines — most of a pod start. The rules
    /// land in another order than [`Ruleset::render`] puts them (inserted
    /// accepts come before the established-connection rule), with the
    /// same verdicts; the next full render (detach, reconcile) restores
    /// the canonical order.
    pub fn render_attach(&self, new: &FirewallEndpoint<'_>) -> String {
        let t = self.table;
        let set = set_name(new.namespace);
        let first_of_namespace = !self
            .endpoints
            .iter()
            .any(|p| p.namespace == new.namespace && p.id != new.id);
        let mut s = String::new();
        if first_of_namespace {
            let _ = writeln!(
                s,
                "add set inet {t} {set} {{ type ipv4_addr; comment \"namespace {ns}\"; }}",
                ns = new.namespace
            );
            let _ = writeln!(
                s,
                "insert rule inet {t} pod_to_pod ip saddr @{set} ip daddr @{set} accept"
            );
            let present: BTreeSet<&str> = self.endpoints.iter().map(|p| p.namespace).collect();
            for (from, to) in self.policies {
                let names_new = from == new.namespace || to == new.namespace;
                if names_new
                    && from != to
                    && present.contains(from.as_str())
                    && present.contains(to.as_str())
                {
                    let _ = writeln!(
                        s,
                        "insert rule inet {t} pod_to_pod ip saddr @{a} ip daddr @{b} accept \
                         comment \"policy {from} -> {to}\"",
                        a = set_name(from),
                        b = set_name(to)
                    );
                }
            }
        }
        let _ = writeln!(s, "add element inet {t} {set} {{ {} }}", new.ip);
        let _ = writeln!(
            s,
            "add element bridge {t} pod_addrs {{ \"{}\" . {} }}",
            new.port, new.ip
        );
        for m in new.port_mappings {
            let _ = writeln!(s, "add rule inet {t} host_ports {}", dnat_rule(new, m));
        }
        s
    }

    /// The `nft -f` script that atomically replaces the tables. Names and
    /// ids were checked on the way in ([`super::names`]), so they cannot
    /// break out of their quotes.
    pub fn render(&self) -> String {
        let mut s = String::new();
        self.render_inet(&mut s);
        self.render_bridge(&mut s);
        s
    }

    fn render_inet(&self, s: &mut String) {
        let t = self.table;
        // namespace → its endpoints' addresses; set names by position.
        let mut by_ns: BTreeMap<&str, Vec<Ipv4Addr>> = BTreeMap::new();
        for p in &self.endpoints {
            by_ns.entry(p.namespace).or_default().push(p.ip);
        }
        let set_of: BTreeMap<&str, String> = by_ns.keys().map(|ns| (*ns, set_name(ns))).collect();
        // Create-then-delete so the delete cannot fail on a missing table;
        // nft applies the whole script as one transaction.
        let _ = writeln!(
            s,
            "table inet {t} {{}}\ndelete table inet {t}\ntable inet {t} {{"
        );
        for (ns, ips) in &by_ns {
            let mut ips = ips.clone();
            ips.sort();
            let elems: Vec<String> = ips.iter().map(|ip| ip.to_string()).collect();
            let _ = writeln!(
                s,
                "\tset {} {{\n\t\ttype ipv4_addr\n\t\tcomment \"namespace {ns}\"\n\t\telements = {{ {} }}\n\t}}",
                set_of[ns],
                elems.join(", ")
            );
        }
        let _ = writeln!(
            s,
            "\tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;"
        );
        if !self.networks.is_empty() {
            // Only what comes through the networks' bridges (bridged, seen
            // here through br_netfilter, or routed): another bridge of the
            // host is not ours to judge, whatever addresses it carries.
            let bridges = anonymous_set(self.networks.iter().map(|n| format!("\"{}\"", n.bridge)));
            let cidrs = anonymous_set(self.networks.iter().map(|n| n.cidr));
            let _ = writeln!(
                s,
                "\t\tiifname {bridges} ip saddr {cidrs} ip daddr {cidrs} jump pod_to_pod"
            );
        }
        for n in &self.networks {
            let _ = writeln!(
                s,
                "\t\tiifname \"{br}\" oifname \"{br}\" meta nfproto ipv6 drop",
                br = n.bridge
            );
        }
        let _ = writeln!(
            s,
            "\t}}\n\tchain pod_to_pod {{\n\t\tct state established,related accept\n\t\tct status dnat accept"
        );
        for set in set_of.values() {
            let _ = writeln!(s, "\t\tip saddr @{set} ip daddr @{set} accept");
        }
        for (from, to) in self.policies {
            if let (Some(a), Some(b)) = (set_of.get(from.as_str()), set_of.get(to.as_str())) {
                if a != b {
                    let _ = writeln!(
                        s,
                        "\t\tip saddr @{a} ip daddr @{b} accept comment \"policy {from} -> {to}\""
                    );
                }
            }
        }
        let _ = writeln!(s, "\t\tcounter drop\n\t}}");
        self.render_pod_to_host(s);
        self.render_martians(s);
        self.render_nat(s);
        let _ = writeln!(s, "}}");
    }

    fn render_nat(&self, s: &mut String) {
        let _ = writeln!(s, "\tchain host_ports {{\n\t\tmeta nfproto != ipv4 return");
        let mut endpoints: Vec<&FirewallEndpoint<'_>> = self.endpoints.iter().collect();
        endpoints.sort_by_key(|p| p.id);
        for p in &endpoints {
            for m in p.port_mappings {
                let _ = writeln!(s, "\t\t{}", dnat_rule(p, m));
            }
        }
        let _ = writeln!(s, "\t}}");
        // -100 is `dstnat`, a name nft 1.0.6 accepts for prerouting only.
        // Loopback destinations are mapped for host processes only (the
        // output hook): see the module's doc.
        for (hook, only) in [("prerouting", "ip daddr != 127.0.0.0/8 "), ("output", "")] {
            let _ = writeln!(
                s,
                "\tchain {hook} {{\n\t\ttype nat hook {hook} priority -100; policy accept;\n\
                 \t\tfib daddr type local {only}jump host_ports\n\t}}"
            );
        }
        let _ = writeln!(
            s,
            "\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;"
        );
        for n in &self.networks {
            let _ = writeln!(
                s,
                "\t\tip saddr {c} ip daddr {c} ct status dnat masquerade",
                c = n.cidr
            );
            // A host process's connection to 127.0.0.1:<host port>: the
            // pod would answer its own loopback.
            let _ = writeln!(
                s,
                "\t\toifname \"{br}\" ip saddr 127.0.0.0/8 ip daddr {c} ct status dnat masquerade \
                 comment \"localhost to a host port\"",
                br = n.bridge,
                c = n.cidr
            );
        }
        let all = anonymous_set(self.networks.iter().map(|n| n.cidr));
        for n in self.networks.iter().filter(|n| n.nat) {
            let _ = writeln!(s, "\t\tip saddr {} ip daddr != {all} masquerade", n.cidr);
        }
        let _ = writeln!(s, "\t}}");
    }

    fn render_bridge(&self, s: &mut String) {
        let t = self.table;
        let _ = writeln!(
            s,
            "table bridge {t} {{}}\ndelete table bridge {t}\ntable bridge {t} {{\n\
             \tset pod_addrs {{\n\t\ttype ifname . ipv4_addr"
        );
        let mut endpoints: Vec<&FirewallEndpoint<'_>> = self.endpoints.iter().collect();
        endpoints.sort_by_key(|p| p.id);
        if !endpoints.is_empty() {
            let elems: Vec<String> = endpoints
                .iter()
                .map(|p| format!("\"{}\" . {}", p.port, p.ip))
                .collect();
            let _ = writeln!(s, "\t\telements = {{ {} }}", elems.join(", "));
        }
        let others: String = self
            .port_prefixes
            .iter()
            .map(|p| format!(" iifname != \"{p}*\""))
            .collect();
        let _ = writeln!(
            s,
            "\t}}\n\tchain pod_ingress {{\n\
             \t\ttype filter hook prerouting priority filter; policy accept;\n\
             \t\t{others} accept\n\
             \t\tether type != {{ ip, arp }} drop\n\
             \t\tiifname . ip saddr @pod_addrs accept\n\
             \t\tiifname . arp saddr ip @pod_addrs accept\n\
             \t\tarp saddr ip 0.0.0.0 accept\n\
             \t\tcounter drop\n\t}}\n}}",
            others = others.trim_start()
        );
    }

    /// Drops what comes in from a network's bridge with a loopback source
    /// or destination, which the bridges' `route_localnet` would
    /// otherwise let the host take (see the module's doc). At `raw`
    /// priority, before conntrack un-NATs the replies to the host's own
    /// localhost connections (addressed to the gateway until then).
    fn render_martians(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "\tchain martians {{\n\t\ttype filter hook prerouting priority raw; policy accept;"
        );
        if !self.networks.is_empty() {
            let bridges = anonymous_set(self.networks.iter().map(|n| format!("\"{}\"", n.bridge)));
            for dir in ["saddr", "daddr"] {
                let _ = writeln!(
                    s,
                    "\t\tiifname {bridges} ip {dir} 127.0.0.0/8 counter drop \
                     comment \"martian localhost\""
                );
            }
        }
        let _ = writeln!(s, "\t}}");
    }

    /// What workloads may open to the host itself (any of its addresses,
    /// which all arrive through their bridge): ping their own gateway and
    /// reach the configured host services on it; replies to the host's
    /// own connections pass; everything else is dropped.
    fn render_pod_to_host(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "\tchain input {{\n\t\ttype filter hook input priority filter; policy accept;"
        );
        if !self.networks.is_empty() {
            let bridges = anonymous_set(self.networks.iter().map(|n| format!("\"{}\"", n.bridge)));
            let _ = writeln!(s, "\t\tiifname {bridges} jump pod_to_host");
        }
        let _ = writeln!(
            s,
            "\t}}\n\tchain pod_to_host {{\n\t\tct state established,related accept"
        );
        for n in &self.networks {
            let (br, gateway) = (n.bridge, n.cidr.gateway());
            let _ = writeln!(
                s,
                "\t\tiifname \"{br}\" ip daddr {gateway} icmp type echo-request accept"
            );
            for (protocol, port) in self.host_services {
                let _ = writeln!(
                    s,
                    "\t\tiifname \"{br}\" ip daddr {gateway} {protocol} dport {port} accept comment \"host service\""
                );
            }
        }
        let _ = writeln!(s, "\t\tcounter drop\n\t}}");
    }
}

/// Runs `nft`.
#[derive(Debug, Clone)]
pub struct Nft {
    binary: PathBuf,
}

impl Default for Nft {
    fn default() -> Self {
        // /usr/sbin is not on every PATH (a test runner's, say).
        let sbin = Path::new("/usr/sbin/nft");
        Nft {
            binary: if sbin.exists() {
                sbin.to_path_buf()
            } else {
                PathBuf::from("nft")
            },
        }
    }
}

impl Nft {
    /// Use `binary` as `nft`.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Nft {
            binary: binary.into(),
        }
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut child = Command::new(&self.binary)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| NetError::Nft(format!("cannot run {}: {e}", self.binary.display())))?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .map_err(|e| NetError::Nft(format!("writing the ruleset to nft: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| NetError::Nft(format!("waiting for nft: {e}")))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(NetError::Nft(format!(
                "nft {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Load `script` (one atomic transaction).
    pub fn apply(&self, script: &str) -> Result<()> {
        self.run(&["-f", "-"], Some(script)).map(drop)
    }

    /// Delete `<table>` in both families; no error if it does not exist.
    pub fn delete_table(&self, table: &str) -> Result<()> {
        let mut script = String::new();
        for family in ["inet", "bridge"] {
            let _ = writeln!(
                script,
                "table {family} {table} {{}}\ndelete table {family} {table}"
            );
        }
        self.apply(&script)
    }

    /// `nft list table <family> <table>`, or `None` if there is no such
    /// table.
    pub fn list_table(&self, family: &str, table: &str) -> Result<Option<String>> {
        let tables = self.run(&["list", "tables", family], None)?;
        let want = format!("table {family} {table}");
        if !tables.lines().any(|l| l.trim() == want) {
            return Ok(None);
        }
        self.run(&["list", "table", family, table], None).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_isolation_policies_and_port_maps() {
        let policies: BTreeSet<(String, String)> = [
            ("b".to_string(), "a".to_string()),
            ("a".to_string(), "empty".to_string()),
        ]
        .into();
        let maps = [PortMapping::tcp(8080, 80)];
        let prefixes = ["s1234".to_string(), "t1234".to_string()];
        let rs = Ruleset {
            table: "stratum",
            port_prefixes: &prefixes,
            networks: vec![
                FirewallNetwork {
                    bridge: "stratum0",
                    cidr: "10.88.0.0/16".parse().unwrap(),
                    nat: true,
                },
                FirewallNetwork {
                    bridge: "st-tenant",
                    cidr: "10.20.0.0/24".parse().unwrap(),
                    nat: false,
                },
            ],
            endpoints: vec![
                FirewallEndpoint {
                    id: "p1",
                    namespace: "a",
                    ip: Ipv4Addr::new(10, 88, 0, 2),
                    port: "s1234aaaaaaaaaa",
                    port_mappings: &maps,
                },
                FirewallEndpoint {
                    id: "p2",
                    namespace: "b",
                    ip: Ipv4Addr::new(10, 88, 0, 3),
                    port: "s1234bbbbbbbbbb",
                    port_mappings: &[],
                },
                FirewallEndpoint {
                    id: "vm-1/0",
                    namespace: "a",
                    ip: Ipv4Addr::new(10, 20, 0, 2),
                    port: "t1234cccccccccc",
                    port_mappings: &[],
                },
            ],
            policies: &policies,
            host_services: &[(Protocol::Tcp, 53), (Protocol::Udp, 53)],
        };
        let s = rs.render();
        assert!(
            s.contains("iifname { \"stratum0\", \"st-tenant\" } jump pod_to_host"),
            "{s}"
        );
        assert!(
            s.contains("iifname \"stratum0\" ip daddr 10.88.0.1 udp dport 53 accept comment \"host service\""),
            "{s}"
        );
        assert!(
            s.contains("iifname \"st-tenant\" ip daddr 10.20.0.1 icmp type echo-request accept"),
            "{s}"
        );
        // Namespace a spans both networks: one set.
        assert!(s.contains("elements = { 10.20.0.2, 10.88.0.2 }"), "{s}");
        assert!(
            s.contains("iifname { \"stratum0\", \"st-tenant\" } ip saddr { 10.88.0.0/16, 10.20.0.0/24 } ip daddr { 10.88.0.0/16, 10.20.0.0/24 } jump pod_to_pod"),
            "{s}"
        );
        assert!(s.contains("ip saddr @ns_a ip daddr @ns_a accept"), "{s}");
        assert!(
            s.contains("ip saddr @ns_b ip daddr @ns_a accept comment \"policy b -> a\""),
            "{s}"
        );
        // A policy naming a namespace without pods renders nothing.
        assert!(!s.contains("empty\""), "{s}");
        assert!(
            s.contains("tcp dport 8080 dnat ip to 10.88.0.2:80 comment \"pod p1\""),
            "{s}"
        );
        // NAT for the network that asked, to outside every network.
        assert!(
            s.contains(
                "ip saddr 10.88.0.0/16 ip daddr != { 10.88.0.0/16, 10.20.0.0/24 } masquerade"
            ),
            "{s}"
        );
        assert!(!s.contains("ip saddr 10.20.0.0/24 ip daddr != "), "{s}");
        // Localhost: mapped from host processes only (output), their
        // connections masqueraded onto each network's bridge, and what
        // comes in from a bridge with a loopback address dropped.
        assert!(
            s.contains("fib daddr type local ip daddr != 127.0.0.0/8 jump host_ports"),
            "{s}"
        );
        assert!(
            s.contains("type nat hook output priority -100; policy accept;\n\t\tfib daddr type local jump host_ports"),
            "{s}"
        );
        assert!(!s.contains("ip daddr 127.0.0.0/8 return"), "{s}");
        for (br, cidr) in [("stratum0", "10.88.0.0/16"), ("st-tenant", "10.20.0.0/24")] {
            assert!(
                s.contains(&format!(
                    "oifname \"{br}\" ip saddr 127.0.0.0/8 ip daddr {cidr} ct status dnat masquerade"
                )),
                "{s}"
            );
        }
        assert_eq!(s.matches("ip saddr 127.0.0.0/8").count(), 3, "{s}");
        assert!(
            s.contains("type filter hook prerouting priority raw; policy accept;\n\t\tiifname { \"stratum0\", \"st-tenant\" } ip saddr 127.0.0.0/8 counter drop"),
            "{s}"
        );
        assert!(
            s.contains("iifname { \"stratum0\", \"st-tenant\" } ip daddr 127.0.0.0/8 counter drop"),
            "{s}"
        );
        // Attaching p1 when only p2 is in the tables: a's set and rule and
        // the policy rule that names a, nothing deleted.
        let rs = Ruleset {
            endpoints: rs.endpoints[..2].to_vec(),
            ..rs
        };
        let attach = rs.render_attach(&rs.endpoints[0]);
        assert!(attach.contains("add set inet stratum ns_a "), "{attach}");
        assert!(
            attach.contains("add element inet stratum ns_a { 10.88.0.2 }"),
            "{attach}"
        );
        assert!(
            attach.contains(
                "insert rule inet stratum pod_to_pod ip saddr @ns_b ip daddr @ns_a accept"
            ),
            "{attach}"
        );
        assert!(
            attach.contains("add rule inet stratum host_ports tcp dport 8080"),
            "{attach}"
        );
        assert!(
            !attach.contains("delete") && !attach.contains("flush"),
            "{attach}"
        );
        // A second pod of b: its addresses only.
        let again = rs.render_attach(&FirewallEndpoint {
            id: "p3",
            ..rs.endpoints[1].clone()
        });
        assert_eq!(again.lines().count(), 2, "{again}");
        assert!(
            s.contains(
                "elements = { \"s1234aaaaaaaaaa\" . 10.88.0.2, \"s1234bbbbbbbbbb\" . 10.88.0.3, \"t1234cccccccccc\" . 10.20.0.2 }"
            ),
            "{s}"
        );
        assert!(
            s.contains("iifname != \"s1234*\" iifname != \"t1234*\" accept"),
            "{s}"
        );
    }
}
