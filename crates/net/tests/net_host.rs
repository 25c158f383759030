//! Pod networking against the real kernel: bridges, netns, veths and
//! nftables on this host, as root. Each test has its own bridge, CIDR,
//! nftables table, netns directory and state file, so they run in
//! parallel, and a guard purges all of it even when the test fails.

// Test helpers may panic: a broken fixture fails the test that uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stratum_net::netlink::Netlink;
use stratum_net::netns;
use stratum_net::nft::Nft;
use stratum_net::{
    names, HostNetworks, Live, NetConfig, NetError, NetworkRequest, PortMapping, Protocol,
};
use stratum_testkit::root::require_root;

/// A test's network settings and the guard that removes what they name.
struct Fixture {
    config: NetConfig,
    run_dir: PathBuf,
    _state: tempfile::TempDir,
}

impl Fixture {
    /// `tag` (≤ 4 chars) names the bridge, table and directories; `net` is
    /// the third octet of the test's 10.231.<net>.0/24.
    fn new(tag: &str, net: u8) -> Fixture {
        Self::with_cidr(tag, &format!("10.231.{net}.0/24"))
    }

    fn with_cidr(tag: &str, cidr: &str) -> Fixture {
        require_root("bridges, network namespaces and nftables");
        let state = tempfile::tempdir().unwrap();
        let run_dir = PathBuf::from(format!("/run/stratum-test-{tag}"));
        let mut config = NetConfig::new(state.path());
        config.bridge = format!("stt{tag}");
        config.cidr = cidr.parse().unwrap();
        config.netns_dir = run_dir.join("netns");
        config.nft_table = format!("stratum_test_{tag}");
        let f = Fixture {
            config,
            run_dir,
            _state: state,
        };
        // Whatever a killed earlier run left behind.
        f.purge();
        f
    }

    fn purge(&self) {
        let config = self.config.clone();
        // Its own runtime on its own thread: this runs from Drop, possibly
        // inside the test's runtime.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(HostNetworks::purge(&config))
        })
        .join()
        .unwrap()
        .unwrap();
        let _ = std::fs::remove_dir(&self.run_dir);
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.purge();
    }
}

fn open_ns(path: &Path) -> OwnedFd {
    netns::open_netns(path).unwrap()
}

/// `f` on a thread inside the netns at `path` (sockets it makes stay there).
fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let fd = open_ns(path);
    std::thread::spawn(move || {
        netns::enter(&fd).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// One ICMP echo from `from` (a netns, or the host for `None`) to `to`.
fn ping(from: Option<&Path>, to: Ipv4Addr) -> bool {
    let mut cmd = Command::new("/usr/bin/busybox");
    cmd.args(["ping", "-c", "1", "-W", "2", &to.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    succeeds_in(from, cmd)
}

/// `ip <args>` in `from` (a netns, or the host for `None`), which must
/// succeed.
fn ip(from: Option<&Path>, args: &[&str]) {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    assert!(succeeds_in(from, cmd), "ip {}", args.join(" "));
}

/// Runs `cmd` in `from` (a netns, or the host for `None`): whether it
/// succeeded.
fn succeeds_in(from: Option<&Path>, mut cmd: Command) -> bool {
    let fd = from.map(open_ns);
    if let Some(fd) = &fd {
        let raw = fd.as_raw_fd();
        // SAFETY: setns is async-signal-safe; raw stays open until spawn
        // returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(raw, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    cmd.status().unwrap().success()
}

/// A TCP server in the netns at `path` that echoes `count` connections
/// (or gives up after 15 s), bound to `0.0.0.0:port`.
fn echo_server(path: &Path, port: u16, count: usize) -> std::thread::JoinHandle<usize> {
    let listener: TcpListener =
        in_netns(path, move || TcpListener::bind(("0.0.0.0", port)).unwrap());
    serve_echo(listener, count)
}

/// [`echo_server`] on the host itself.
fn host_echo_server(port: u16, count: usize) -> std::thread::JoinHandle<usize> {
    serve_echo(TcpListener::bind(("0.0.0.0", port)).unwrap(), count)
}

fn serve_echo(listener: TcpListener, count: usize) -> std::thread::JoinHandle<usize> {
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut served = 0;
        while served < count && Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut buf = [0u8; 64];
                    if let Ok(n) = s.read(&mut buf) {
                        let _ = s.write_all(&buf[..n]);
                    }
                    served += 1;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        served
    })
}

/// Connect from `from` (a netns, or the host) to `to` and check the echo.
fn echo(from: Option<&Path>, to: SocketAddrV4) -> bool {
    let attempt = move || -> std::io::Result<bool> {
        let mut s = TcpStream::connect_timeout(&SocketAddr::V4(to), Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"stratum")?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf)?;
        Ok(&buf == b"stratum")
    };
    let res = match from {
        Some(p) => in_netns(p, attempt),
        None => attempt(),
    };
    res.unwrap_or(false)
}

async fn link_names() -> Vec<String> {
    Netlink::connect()
        .unwrap()
        .links()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podnet_pods_in_one_namespace_reach_each_other_and_the_host() {
    let fx = Fixture::new("pn1", 1);
    let net = HostNetworks::open(fx.config.clone()).await.unwrap();
    let p1 = net.attach("p1", "ns-a", &[]).await.unwrap();
    let p2 = net.attach("p2", "ns-a", &[]).await.unwrap();
    assert_ne!(p1.ip, p2.ip);
    assert_eq!(p1.gateway, Ipv4Addr::new(10, 231, 1, 1));
    assert!(netns::is_bound(&p1.netns));
    assert!(p1.host_veth.len() <= 15);

    // Inside the pod: eth0 with its address, lo up, default via the bridge.
    let pod = Netlink::connect_in(&p1.netns).await.unwrap();
    let eth0 = pod.link("eth0").await.unwrap().unwrap();
    assert!(eth0.up);
    assert_eq!(
        pod.ipv4_addresses(eth0.index).await.unwrap(),
        vec![(p1.ip, 24)]
    );
    assert!(pod.link("lo").await.unwrap().unwrap().up);
    assert_eq!(pod.default_gateway().await.unwrap(), Some(p1.gateway));
    // On the host: the bridge holds the gateway, the veth is its port.
    let host = Netlink::connect().unwrap();
    let br = host.link(&fx.config.bridge).await.unwrap().unwrap();
    assert_eq!(
        host.ipv4_addresses(br.index).await.unwrap(),
        vec![(p1.gateway, 24)]
    );
    assert_eq!(
        host.link(&p1.host_veth).await.unwrap().unwrap().controller,
        Some(br.index)
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap()
            .trim(),
        "1"
    );

    let (n1, n2) = (p1.netns.clone(), p2.netns.clone());
    let ok = tokio::task::spawn_blocking(move || {
        [
            ping(Some(&n1), p2.ip),
            ping(Some(&n2), p1.ip),
            ping(Some(&n1), p1.gateway),
            ping(None, p1.ip),
            ping(Some(&n1), Ipv4Addr::LOCALHOST),
        ]
    })
    .await
    .unwrap();
    assert_eq!(ok, [true; 5], "p1→p2, p2→p1, p1→host, host→p1, p1→lo");

    let server = echo_server(&p2.netns, 7000, 2);
    let n1 = p1.netns.clone();
    let ip2 = p2.ip;
    let ok = tokio::task::spawn_blocking(move || {
        [
            echo(Some(&n1), SocketAddrV4::new(ip2, 7000)),
            echo(None, SocketAddrV4::new(ip2, 7000)),
        ]
    })
    .await
    .unwrap();
    assert_eq!(ok, [true, true], "TCP p1→p2, host→p2");
    assert_eq!(server.join().unwrap(), 2);
    net.teardown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podnet_pods_reach_only_the_host_services_they_are_given() {
    let mut fx = Fixture::new("pn8", 8);
    fx.config.host_services = vec![(Protocol::Tcp, 7170)];
    let net = HostNetworks::open(fx.config.clone()).await.unwrap();
    let pod = net.attach("p1", "ns-a", &[]).await.unwrap();
    let (ns, gw, ip) = (pod.netns.clone(), pod.gateway, pod.ip);
    let reached = tokio::task::spawn_blocking(move || {
        let allowed = host_echo_server(7170, 1);
        let other = host_echo_server(7171, 1);
        let to_service = echo(Some(&ns), SocketAddrV4::new(gw, 7170));
        let to_other = echo(Some(&ns), SocketAddrV4::new(gw, 7171));
        // The host reaches both itself, so the servers end.
        let host_other = echo(None, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7171));
        let (_, _) = (allowed.join().unwrap(), other.join().unwrap());
        // Host → pod: the replies to the host's connection pass.
        let server = echo_server(&ns, 7172, 1);
        let host_to_pod = echo(None, SocketAddrV4::new(ip, 7172));
        server.join().unwrap();
        (
            to_service,
            to_other,
            host_other,
            ping(Some(&ns), gw),
            host_to_pod,
        )
    })
    .await
    .unwrap();
    assert_eq!(
        reached,
        (true, false, true, true, true),
        "(pod→host service, pod→other host port, host→itself, pod pings its gateway, host→pod)"
    );
    net.teardown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podnet_namespaces_are_isolated_until_a_policy_allows() {
    let fx = Fixture::new("pn2", 2);
    let net = HostNetworks::open(fx.config.clone()).await.unwrap();
    let a = net.attach("a1", "tenant-a", &[]).await.unwrap();
    let b = net.attach("b1", "tenant-b", &[]).await.unwrap();
    let (na, nb, ia, ib, gw) = (a.netns.clone(), b.netns.clone(), a.ip, b.ip, a.gateway);
    let probe = move || {
        let (na, nb) = (na.clone(), nb.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                let server = echo_server(&na, 7001, 1);
                let tcp = echo(Some(&nb), SocketAddrV4::new(ia, 7001));
                // Unblock the server if the connection was refused.
                if !tcp {
                    let _ = echo(Some(&na), SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7001));
                }
                server.join().unwrap();
                (
                    ping(Some(&nb), ia),
                    tcp,
                    ping(Some(&na), ib),
                    ping(Some(&nb), gw),
                    ping(None, ia),
                )
            })
            .await
            .unwrap()
        }
    };
    // (b→a ping, b→a tcp, a→b ping, b→host, host→a)
    assert_eq!(probe().await, (false, false, false, true, true), "isolated");

    net.allow("tenant-b", "tenant-a").await.unwrap();
    assert_eq!(
        net.policies().await,
        vec![("tenant-b".to_string(), "tenant-a".to_string())]
    );
    assert_eq!(
        probe().await,
        (true, true, false, true, true),
        "b may reach a, not a→b"
    );

    net.revoke("tenant-b", "tenant-a").await.unwrap();
    assert_eq!(probe().await, (false, false, false, true, true), "revoked");

    // Policies persist: allowed again, reopened, still allowed.
    net.allow("tenant-b", "tenant-a").await.unwrap();
    drop(net);
    let net = HostNetworks::open(fx.config.clone()).await.unwrap();
    assert!(probe().await.0, "policy survived reopen");
    net.teardown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podnet_host_port_mapping_reaches_a_server_in_the_pod() {
    let fx = Fixture::new("pn3", 3);
    let net = HostNetworks::open(fx.config.clone()).await.unwrap();
    let web = net
        .attach("web", "tenant-a", &[PortMapping::tcp(30880, 8080)])
        .await
        .unwrap();
    let client = net.attach("client", "tenant-b", &[]).await.unwrap();

    // Conflicts and idempotence.
    let again = net
        .attach("web", "tenant-a", &[PortMapping::tcp(30880, 8080)])
        .await
        .unwrap();
    assert_eq!(again, web);
    assert!(matches!(
        net.attach("web", "tenant-b", &[]).await,
        Err(NetError::AlreadyAttached { .. })
    ));
    assert!(matches!(
        net.attach("other", "tenant-a", &[PortMapping::tcp(30880, 80)])
            .await,
        Err(NetError::PortInUse { port: 30880, .. })
    ));
    assert!(
        !netns::is_bound(&net.netns_path("other")),
        "refused pod left a netns"
    );
    // Outside the host port range (ssh's port), and a port a host process
    // listens on: refused, nothing made.
    assert!(matches!(
        net.attach("other", "tenant-a", &[PortMapping::tcp(22, 80)])
            .await,
        Err(NetError::PortOutOfRange { port: 22, .. })
    ));
    let host_server = std::net::TcpListener::bind("127.0.0.1:30881").unwrap();
    assert!(matches!(
        net.attach("other", "tenant-a", &[PortMapping::tcp(30881, 80)])
            .await,
        Err(NetError::PortHeldByHost { port: 30881, .. })
    ));
    drop(host_server);
    assert!(
        !netns::is_bound(&net.netns_path("other")),
        "refused pod left a netns"
    );

    let table = Nft::default()
        .list_table("inet", &fx.config.nft_table)
        .unwrap()
        .unwrap();
    assert!(table.contains("tcp dport 30880 dnat ip to"), "{table}");

    // From the host to a host address (the bridge's), and from a pod of
    // another namespace through the published port (hairpin NAT), which
    // isolation allows since the port is published.
    let server = echo_server(&web.netns, 8080, 2);
    let gw = web.gateway;
    let nc = client.netns.clone();
    let ok = tokio::task::spawn_blocking(move || {
        [
            echo(None, SocketAddrV4::new(gw, 30880)),
            echo(Some(&nc), SocketAddrV4::new(gw, 30880)),
        ]
    })
    .await
    .unwrap();
    assert_eq!(
        ok,
        [true, true],
        "host→host:30880→web, client→host:30880→web"
    );
    assert_eq!(server.join().unwrap(), 2);

    // Removed with the pod.
    assert!(net.detach("web").await.unwrap());
    assert!(!net.detach("web").await.unwrap());
    let table = Nft::default()
        .list_table("inet", &fx.config.nft_table)
        .unwrap()
        .unwrap();
    assert!(!table.contains("30880"), "{table}");
    let refused = tokio::task::spawn_blocking(move || echo(None, SocketAddrV4::new(gw, 30880)))
        .await
        .unwrap();
    assert!(!refused);
    net.teardown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podnet_reconcile_and_teardown_leave_nothing_behind() {
    let fx = Fixture::new("pn4", 4);
    let cfg = &fx.config;
    let net = HostNetworks::open(cfg.clone()).await.unwrap();
    let mut ips = Vec::new();
    for id in ["r1", "r2", "r3"] {
        ips.push(
            net.attach(
                id,
                "ns",
                &[PortMapping::udp(30353, 53)][..usize::from(id == "r2")],
            )
            .await
            .unwrap()
            .ip,
        );
    }
    drop(net);

    // Leftovers a crash could leave: a veth of this network and a netns
    // file that no record names.
    let host = Netlink::connect().unwrap();
    let stray_ns = netns::NetnsDir::new(cfg.netns_dir.clone())
        .create("stray")
        .unwrap();
    let stray_veth = names::host_veth(&cfg.bridge, "stray");
    host.add_veth(
        &stray_veth,
        host.link(&cfg.bridge).await.unwrap().unwrap().index,
        "eth0",
        open_ns(&stray_ns).as_raw_fd(),
    )
    .await
    .unwrap();

    // Reopened: the same pods with the same addresses.
    let net = HostNetworks::open(cfg.clone()).await.unwrap();
    let listed: Vec<_> = net
        .list()
        .await
        .into_iter()
        .map(|p| (p.pod_id, p.ip))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("r1".into(), ips[0]),
            ("r2".into(), ips[1]),
            ("r3".into(), ips[2])
        ]
    );

    let report = net.reconcile(&Live::pods(["r1", "ghost"])).await.unwrap();
    assert_eq!(
        report.removed_pods,
        vec!["r2".to_string(), "r3".to_string()]
    );
    assert_eq!(report.removed_links, vec![stray_veth.clone()]);
    assert_eq!(report.removed_netns, vec!["stray".to_string()]);
    assert!(report.broken.is_empty());
    assert_eq!(report.unknown, vec!["ghost".to_string()]);
    assert_eq!(
        net.ipam().unwrap().allocations().unwrap(),
        vec![(ips[0], "r1".to_string())]
    );
    let table = Nft::default()
        .list_table("inet", &cfg.nft_table)
        .unwrap()
        .unwrap();
    assert!(
        !table.contains("15353") && table.contains(&ips[0].to_string()),
        "{table}"
    );

    // A released address is not handed out again right away.
    let r4 = net.attach("r4", "ns", &[]).await.unwrap();
    assert!(!ips.contains(&r4.ip), "{} reused", r4.ip);

    // A pod whose veth vanished is reported broken and repaired by attach.
    host.delete_link_named(&r4.host_veth).await.unwrap();
    assert_eq!(
        net.reconcile(&Live::pods(["r1", "r4"]))
            .await
            .unwrap()
            .broken,
        vec!["r4".to_string()]
    );
    assert_eq!(net.attach("r4", "ns", &[]).await.unwrap(), r4);
    assert!(ping(Some(&r4.netns), ips[0]));

    net.teardown().await.unwrap();
    let links = link_names().await;
    assert!(!links.contains(&cfg.bridge), "bridge left: {links:?}");
    let prefix = names::veth_prefix(&cfg.bridge);
    assert!(
        !links.iter().any(|l| l.starts_with(&prefix)),
        "veth left: {links:?}"
    );
    assert!(!cfg.netns_dir.exists(), "netns dir left");
    for family in ["inet", "bridge"] {
        let left = Nft::default().list_table(family, &cfg.nft_table).unwrap();
        assert_eq!(left, None, "nft table {family} left");
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&fx.run_dir.display().to_string()),
        "mount left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podnet_exhausted_cidr_refuses_attach_and_leaves_nothing() {
    let fx = Fixture::with_cidr("pn5", "10.231.5.0/30");
    let net = HostNetworks::open(fx.config.clone()).await.unwrap();
    let only = net.attach("only", "ns", &[]).await.unwrap();
    assert_eq!(only.ip, Ipv4Addr::new(10, 231, 5, 2));
    let err = net.attach("second", "ns", &[]).await.unwrap_err();
    assert!(
        matches!(err, NetError::Exhausted { capacity: 1, .. }),
        "{err}"
    );
    assert!(!net.netns_path("second").exists());
    assert!(!link_names()
        .await
        .contains(&names::host_veth(&fx.config.bridge, "second")));
    assert!(net.detach("only").await.unwrap());

    // A kernel failure half way (the bridge deleted behind the network's
    // back) is undone: no netns, no link, the address released.
    let host = Netlink::connect().unwrap();
    assert!(host.delete_link_named(&fx.config.bridge).await.unwrap());
    let err = net.attach("x", "ns", &[]).await.unwrap_err();
    assert!(matches!(err, NetError::Netlink { .. }), "{err}");
    assert!(!net.netns_path("x").exists());
    assert!(!link_names()
        .await
        .contains(&names::host_veth(&fx.config.bridge, "x")));
    assert_eq!(net.ipam().unwrap().allocations().unwrap(), vec![]);
    assert!(net.list().await.is_empty());
    // Reconcile brings the bridge back.
    net.reconcile(&Live::default()).await.unwrap();
    assert!(link_names().await.contains(&fx.config.bridge));

    // Concurrent attaches: one address, one winner.
    let net = std::sync::Arc::new(net);
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let net = net.clone();
            tokio::spawn(async move { net.attach(&format!("c{i}"), "ns", &[]).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert!(matches!(e, NetError::Exhausted { .. }), "{e}"),
        }
    }
    assert_eq!(ok, 1);
    let net = std::sync::Arc::into_inner(net).unwrap();
    net.teardown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podnet_pods_cannot_forge_another_namespace_source_address() {
    let fx = Fixture::new("pn6", 6);
    let net = HostNetworks::open(fx.config.clone()).await.unwrap();
    let a1 = net.attach("a1", "tenant-a", &[]).await.unwrap();
    let a2 = net.attach("a2", "tenant-a", &[]).await.unwrap();
    let b1 = net.attach("b1", "tenant-b", &[]).await.unwrap();

    // b1 takes a2's address as a second one on its eth0 (as a pod with
    // CAP_NET_ADMIN could; CAP_NET_RAW alone could forge the packets).
    let pod_b = Netlink::connect_in(&b1.netns).await.unwrap();
    let eth0 = pod_b.link("eth0").await.unwrap().unwrap();
    pod_b.add_address(eth0.index, a2.ip, 32).await.unwrap();

    let (na1, na2, nb1, ip1, ip2) = (
        a1.netns.clone(),
        a2.netns.clone(),
        b1.netns.clone(),
        a1.ip,
        a2.ip,
    );
    let got = tokio::task::spawn_blocking(move || {
        let rx: UdpSocket = in_netns(&na1, || UdpSocket::bind(("0.0.0.0", 7100)).unwrap());
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let to = SocketAddrV4::new(ip1, 7100);
        let recv = |rx: &UdpSocket| {
            let mut buf = [0u8; 16];
            rx.recv_from(&mut buf)
                .ok()
                .map(|(n, from)| (buf[..n].to_vec(), from))
        };
        // Resolve a1's MAC in b1 (ARP from b1's own address passes; the
        // ping itself is dropped by isolation), so the forged packet is
        // judged on its IP header alone.
        assert!(!ping(Some(&nb1), ip1));
        let send_from = |ns: &Path, src: Ipv4Addr, msg: &'static [u8]| {
            in_netns(ns, move || {
                let s = UdpSocket::bind((src, 0)).unwrap();
                s.send_to(msg, to).unwrap();
            })
        };
        send_from(&nb1, ip2, b"forged");
        let forged = recv(&rx);
        send_from(&na2, ip2, b"genuine");
        let genuine = recv(&rx);
        (forged, genuine)
    })
    .await
    .unwrap();
    assert_eq!(got.0, None, "a forged source address got through");
    assert_eq!(
        got.1.map(|(m, from)| (m, from.ip())),
        Some((b"genuine".to_vec(), a2.ip.into()))
    );
    net.teardown().await.unwrap();
}

/// Deletes the named links on drop: the bridges of a test's own networks,
/// which the fixture's purge (the default network's) does not know.
struct LinkGuard(Vec<String>);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("ip")
                .args(["link", "del", name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn request(name: &str, cidr: &str, namespaces: &[&str]) -> NetworkRequest {
    NetworkRequest {
        name: name.into(),
        cidr: cidr.parse().unwrap(),
        bridge: Some(format!("stn{name}")),
        nat: false,
        namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
        nameservers: Vec::new(),
    }
}

fn sys_net(link: &str, attr: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/sys/class/net").join(link).join(attr))
        .ok()
        .map(|s| s.trim().to_string())
}

/// A link's bridge, as sysfs names it.
fn master_of(link: &str) -> Option<String> {
    std::fs::read_link(Path::new("/sys/class/net").join(link).join("master"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// Workloads of one namespace reach each other across networks (the host
/// routes between the bridges); another namespace's do not, on the same
/// network or another; each reaches only its own gateway on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_route_between_each_other_and_keep_namespaces_apart() {
    let fx = Fixture::with_cidr("nw1", "10.232.1.0/24");
    let _links = LinkGuard(vec!["stnnw1t".into(), "stnnw1o".into()]);
    let net = HostNetworks::open(fx.config.clone()).await.unwrap();
    let tenant = net
        .create_network(request("nw1t", "10.232.2.0/24", &["tenant-a", "tenant-b"]))
        .await
        .unwrap();
    assert_eq!(tenant.record.bridge, "stnnw1t");
    net.create_network(request("nw1o", "10.232.3.0/24", &["tenant-a"]))
        .await
        .unwrap();
    let a1 = net.attach("a1", "tenant-a", &[]).await.unwrap();
    let a2 = net.attach_to("nw1t", "a2", "tenant-a", &[]).await.unwrap();
    let b2 = net.attach_to("nw1t", "b2", "tenant-b", &[]).await.unwrap();
    assert_eq!(a2.network, "nw1t");
    assert!(tenant.record.cidr.contains(a2.ip) && a2.gateway == Ipv4Addr::new(10, 232, 2, 1));
    assert_eq!(master_of(&a2.host_veth).as_deref(), Some("stnnw1t"));
    // A network that does not admit the namespace refuses it, and makes
    // nothing for it.
    let err = net
        .attach_to("nw1o", "b3", "tenant-b", &[])
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::NotAdmitted { .. }), "{err}");
    assert!(net.get("b3").await.is_none());
    assert!(!link_names()
        .await
        .contains(&names::host_veth(&fx.config.bridge, "b3")));

    let (n1, n2, nb) = (a1.netns.clone(), a2.netns.clone(), b2.netns.clone());
    let (ip1, ip2) = (a1.ip, a2.ip);
    let seen = tokio::task::spawn_blocking(move || {
        let server = echo_server(&n1, 7101, 1);
        let tcp = echo(Some(&n2), SocketAddrV4::new(ip1, 7101));
        server.join().unwrap();
        (
            ping(Some(&n2), ip1),
            tcp,
            ping(Some(&n1), ip2),
            ping(Some(&nb), ip2),
            ping(Some(&nb), ip1),
            ping(Some(&n2), Ipv4Addr::new(10, 232, 2, 1)),
            ping(Some(&n2), Ipv4Addr::new(10, 232, 1, 1)),
        )
    })
    .await
    .unwrap();
    // (a2→a1 ping, a2→a1 tcp, a1→a2, b2→a2 same network, b2→a1 other
    // network, a2→own gateway, a2→the other network's gateway)
    assert_eq!(seen, (true, true, true, false, false, true, false));
    net.teardown().await.unwrap();
    let left = link_names().await;
    assert!(
        !left.iter().any(|l| l == "stnnw1t" || l == "stnnw1o"),
        "{left:?}"
    );
}

/// Bad requests are refused with the error that names the cause, and
/// change nothing: no network, bridge or address is left of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_bad_input_is_refused_and_changes_nothing() {
    let fx = Fixture::with_cidr("nw2", "10.232.4.0/24");
    let _links = LinkGuard(vec!["stnnw2t".into(), "stnnw2x".into()]);
    let net = HostNetworks::open(fx.config.clone()).await.unwrap();
    net.create_network(request("nw2t", "10.232.5.0/24", &["tenant-a"]))
        .await
        .unwrap();
    let before = net.networks().await.unwrap();
    // This test's links only: the others of this binary run alongside.
    let own_links = || async {
        let mut links = link_names().await;
        links.retain(|l| l.contains("nw2"));
        links
    };
    let links_before = own_links().await;
    let refused = [
        (request("nw2x", "10.232.5.128/25", &[]), "overlaps"),
        (request("nw2x", "10.232.4.0/23", &[]), "overlaps"),
        (request("nw2t", "10.232.6.0/24", &[]), "already exists"),
        (
            NetworkRequest {
                bridge: Some("stnnw2t".into()),
                ..request("nw2x", "10.232.6.0/24", &[])
            },
            "bridge stnnw2t",
        ),
        (
            NetworkRequest {
                bridge: Some("lo".into()),
                ..request("nw2x", "10.232.6.0/24", &[])
            },
            "a link named lo",
        ),
        (request("nw2x", "127.0.0.0/8", &[]), "127.0.0.1"),
        (request("Bad_Name", "10.232.6.0/24", &[]), "DNS label"),
        (request("nw2x", "10.232.6.0/24", &["../x"]), "namespace"),
    ];
    for (req, says) in refused {
        let err = net.create_network(req.clone()).await.unwrap_err();
        assert!(err.to_string().contains(says), "{req:?}: {err}");
    }
    assert_eq!(net.networks().await.unwrap(), before);
    assert_eq!(own_links().await, links_before);

    let ip = |d| Ipv4Addr::new(10, 232, 5, d);
    let r = net
        .reserve("nw2t", "vm-1.0", "tenant-a", Some(ip(9)))
        .await
        .unwrap();
    assert_eq!((r.ip, r.prefix_len, r.gateway), (ip(9), 24, ip(1)));
    let bad = [
        (
            "nw2t",
            "vm-2.0",
            "tenant-a",
            Some(ip(9)),
            "taken (by vm-1.0)",
        ),
        ("nw2t", "vm-2.0", "tenant-a", Some(ip(1)), "gateway"),
        (
            "nw2t",
            "vm-2.0",
            "tenant-a",
            Some(Ipv4Addr::new(10, 9, 0, 2)),
            "outside",
        ),
        ("nw2t", "vm-2.0", "tenant-b", None, "not for namespace"),
        ("nope", "vm-2.0", "tenant-a", None, "no network"),
    ];
    for (network, owner, ns, want, says) in bad {
        let err = net.reserve(network, owner, ns, want).await.unwrap_err();
        assert!(err.to_string().contains(says), "{network} {want:?}: {err}");
    }
    let held: Vec<String> = net
        .network("nw2t")
        .await
        .unwrap()
        .holders
        .into_iter()
        .map(|h| h.owner)
        .collect();
    assert_eq!(held, ["vm-1.0"], "refused reservations hold nothing");

    let err = net.delete_network("nw2t").await.unwrap_err();
    assert!(
        matches!(err, NetError::InUse { .. }) && err.to_string().contains("vm-1.0"),
        "{err}"
    );
    assert!(net.delete_network("default").await.is_err());
    assert_eq!(net.release("vm-1.0").await.unwrap(), Some(ip(9)));
    net.delete_network("nw2t").await.unwrap();
    assert!(!link_names().await.iter().any(|l| l == "stnnw2t"));
    assert!(matches!(
        net.network("nw2t").await,
        Err(NetError::NoSuchNetwork(_))
    ));
    net.teardown().await.unwrap();
}

/// A VM NIC's TAP: made on plug-in (persistent, virtio-net header, the
/// VM's uid its owner, on the network's bridge, up, in the anti-spoofing
/// set), gone on unplug; after a restart, reconcile removes the TAPs of
/// VMs that no longer run and the addresses of VMs that no longer exist,
/// and keeps the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_nic_taps_are_plugged_unplugged_and_reconciled() {
    let fx = Fixture::with_cidr("nw3", "10.232.7.0/24");
    let _links = LinkGuard(vec!["stnnw3t".into()]);
    let net = HostNetworks::open(fx.config.clone()).await.unwrap();
    net.create_network(request("nw3t", "10.232.8.0/24", &["tenant-a"]))
        .await
        .unwrap();
    let r1 = net
        .reserve("nw3t", "vm-1.0", "tenant-a", None)
        .await
        .unwrap();
    let r2 = net
        .reserve("nw3t", "vm-2.0", "tenant-a", None)
        .await
        .unwrap();
    assert_ne!(r1.ip, r2.ip);
    let tap = net
        .plug("vm-1.0", "tenant-a", Some((4242, 4242)))
        .await
        .unwrap();
    assert_eq!(tap.tap, names::host_tap(&fx.config.bridge, "vm-1.0"));
    assert_eq!((tap.network.as_str(), tap.ip), ("nw3t", r1.ip));
    let flags = sys_net(&tap.tap, "tun_flags").unwrap();
    let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).unwrap();
    let (tap_flag, no_pi, vnet_hdr) = (0x0002, 0x1000, 0x4000);
    assert_eq!(
        flags & (tap_flag | no_pi | vnet_hdr),
        tap_flag | no_pi | vnet_hdr,
        "{flags:#x}"
    );
    assert_eq!(sys_net(&tap.tap, "owner").as_deref(), Some("4242"));
    assert_eq!(master_of(&tap.tap).as_deref(), Some("stnnw3t"));
    let if_flags = sys_net(&tap.tap, "flags").unwrap();
    let if_flags = u32::from_str_radix(if_flags.trim_start_matches("0x"), 16).unwrap();
    assert_eq!(if_flags & 1, 1, "IFF_UP");
    let table = Nft::default()
        .list_table("bridge", &fx.config.nft_table)
        .unwrap()
        .unwrap();
    assert!(
        table.contains(&format!("\"{}\" . {}", tap.tap, r1.ip)),
        "{table}"
    );
    // Again: the same TAP, still in place.
    assert_eq!(
        net.plug("vm-1.0", "tenant-a", Some((4242, 4242)))
            .await
            .unwrap(),
        tap
    );
    // A NIC without an address cannot be plugged in.
    assert!(net.plug("vm-9.0", "tenant-a", None).await.is_err());
    assert!(!link_names()
        .await
        .contains(&names::host_tap(&fx.config.bridge, "vm-9.0")));

    assert!(net.unplug("vm-1.0").await.unwrap());
    assert!(!link_names().await.contains(&tap.tap));
    assert!(!net.unplug("vm-1.0").await.unwrap());
    assert_eq!(
        net.plug("vm-1.0", "tenant-a", None).await.unwrap().ip,
        r1.ip,
        "address kept"
    );
    net.plug("vm-2.0", "tenant-a", None).await.unwrap();

    // The agent dies; meanwhile VM 2 stops and VM 3 is deleted, and a
    // stray TAP of ours appears (a crash between record and creation).
    let r3 = net
        .reserve("nw3t", "vm-3.0", "tenant-a", None)
        .await
        .unwrap();
    drop(net);
    let stray = names::host_tap(&fx.config.bridge, "vm-8.0");
    assert!(Command::new("ip")
        .args(["tuntap", "add", &stray, "mode", "tap"])
        .status()
        .unwrap()
        .success());
    let net = HostNetworks::open(fx.config.clone()).await.unwrap();
    let live = Live {
        reserved: ["vm-1.0", "vm-2.0"].into(),
        plugged: ["vm-1.0"].into(),
        ..Live::default()
    };
    let report = net.reconcile(&live).await.unwrap();
    assert_eq!(report.removed_taps, ["vm-2.0"]);
    assert_eq!(report.released_addresses, [r3.ip]);
    assert!(report.removed_links.contains(&stray), "{report:?}");
    let links = link_names().await;
    assert!(links.contains(&tap.tap) && !links.contains(&stray));
    assert!(!links.contains(&names::host_tap(&fx.config.bridge, "vm-2.0")));
    let held: Vec<(String, Option<String>)> = net
        .network("nw3t")
        .await
        .unwrap()
        .holders
        .into_iter()
        .map(|h| (h.owner, h.port))
        .collect();
    assert_eq!(
        held,
        [
            ("vm-1.0".to_string(), Some(tap.tap.clone())),
            ("vm-2.0".to_string(), None)
        ]
    );
    assert_eq!(net.release("vm-1.0").await.unwrap(), Some(r1.ip));
    assert!(
        !link_names().await.contains(&tap.tap),
        "release unplugs first"
    );
    net.release("vm-2.0").await.unwrap();
    net.delete_network("nw3t").await.unwrap();
    net.teardown().await.unwrap();
}

/// `net.ipv4.conf.<link>.route_localnet`, if `link` has one.
fn route_localnet(link: &str) -> Option<String> {
    std::fs::read_to_string(stratum_net::bridge::route_localnet_path(link))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The packets the `martian localhost` rule matching `what` (`saddr`,
/// `daddr`) has dropped.
fn martians_dropped(table: &str, what: &str) -> u64 {
    let listing = Nft::default().list_table("inet", table).unwrap().unwrap();
    let rule = format!("ip {what} 127.0.0.0/8 counter packets ");
    let line = listing
        .lines()
        .find(|l| l.contains(&rule))
        .unwrap_or_else(|| panic!("no {rule:?} in {listing}"));
    let after = &line[line.find(&rule).unwrap() + rule.len()..];
    after.split_whitespace().next().unwrap().parse().unwrap()
}

/// A host port is reachable from the host itself on 127.0.0.1 (any
/// 127.0.0.0/8 address), as under containerd's portmap plugin, on any
/// network, across a restart, and not once the mapping is gone; a
/// mapping on host address 127.0.0.1 is reachable there only.
/// `route_localnet` is on for the networks' bridges and nothing else, and
/// it does not let loopback addresses in: not from a pod (the `martians`
/// rule), not from another host (prerouting does not map them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podnet_host_port_mapping_is_reachable_on_localhost() {
    let fx = Fixture::new("pn9", 9);
    let (ext_host, ext_peer) = ("stpn9x", "stpn9y");
    let _links = LinkGuard(vec!["stnpn9t".into(), ext_host.into()]);
    // What must not change: the host-wide defaults and the host's own
    // links (the other tests' links, and other software's, come and go
    // meanwhile: those that are there before and after).
    let host_links = || {
        let mut names: Vec<String> = std::fs::read_dir("/proc/sys/net/ipv4/conf")
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('s') && !n.starts_with('t'))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let v = route_localnet(&n);
                (n, v)
            })
            .collect::<Vec<_>>()
    };
    let before = host_links();
    let unchanged = |now: Vec<(String, Option<String>)>| {
        for name in ["all", "default", "lo"] {
            assert!(now.iter().any(|(n, _)| n == name), "{now:?}");
        }
        let changed: Vec<_> = now
            .iter()
            .filter(|(n, v)| before.iter().any(|(b, w)| b == n && w != v))
            .collect();
        assert!(changed.is_empty(), "route_localnet changed: {changed:?}");
    };

    let net = HostNetworks::open(fx.config.clone()).await.unwrap();
    let bridge = fx.config.bridge.clone();
    assert_eq!(route_localnet(&bridge).as_deref(), Some("1"));
    let on_lo = PortMapping {
        host_ip: Some(Ipv4Addr::LOCALHOST),
        ..PortMapping::tcp(30891, 8081)
    };
    let web = net
        .attach("web", "tenant-a", &[PortMapping::tcp(30890, 8080), on_lo])
        .await
        .unwrap();
    assert_eq!(
        route_localnet(&web.host_veth).as_deref(),
        Some("0"),
        "the pod's veth"
    );
    unchanged(host_links());

    // Another host: a netns behind a veth of the host (not a bridge),
    // whose kernel routes 127.0.0.0/8 to the host (its lo is down, so it
    // has no loopback addresses of its own) and takes replies from
    // 127.0.0.0/8 (route_localnet on its end): were the host to map
    // 127.0.0.1 for it, its connection would succeed.
    let ext = netns::NetnsDir::new(fx.config.netns_dir.clone())
        .create("ext")
        .unwrap();
    let ext_path = ext.to_str().unwrap();
    ip(
        None,
        &[
            "link", "add", ext_host, "type", "veth", "peer", "name", ext_peer,
        ],
    );
    ip(None, &["link", "set", ext_peer, "netns", ext_path]);
    ip(None, &["addr", "add", "10.231.209.1/30", "dev", ext_host]);
    ip(None, &["link", "set", ext_host, "up"]);
    ip(
        Some(&ext),
        &["addr", "add", "10.231.209.2/30", "dev", ext_peer],
    );
    ip(Some(&ext), &["link", "set", ext_peer, "up"]);
    let mut sysctl = Command::new("sh");
    sysctl.args([
        "-c",
        &format!("echo 1 > /proc/sys/net/ipv4/conf/{ext_peer}/route_localnet"),
    ]);
    assert!(succeeds_in(Some(&ext), sysctl));
    ip(
        Some(&ext),
        &["route", "add", "127.0.0.0/8", "via", "10.231.209.1"],
    );
    ip(
        Some(&ext),
        &["route", "add", "default", "via", "10.231.209.1"],
    );

    let (ns, gw) = (web.netns.clone(), web.gateway);
    let at = |ip: Ipv4Addr, port| SocketAddrV4::new(ip, port);
    let lo2 = Ipv4Addr::new(127, 0, 0, 2);
    let (seen, served) = tokio::task::spawn_blocking(move || {
        let any = echo_server(&ns, 8080, 4);
        let local = echo_server(&ns, 8081, 1);
        // What must fail first, while the servers still listen (each
        // stops after the connections it expects).
        let seen = [
            echo(Some(&ext), at(Ipv4Addr::LOCALHOST, 30890)),
            echo(Some(&ext), at(Ipv4Addr::LOCALHOST, 30891)),
            echo(None, at(gw, 30891)),
            echo(None, at(Ipv4Addr::LOCALHOST, 30890)),
            echo(None, at(lo2, 30890)),
            echo(None, at(gw, 30890)),
            echo(None, at(Ipv4Addr::LOCALHOST, 30891)),
            echo(Some(&ext), at(gw, 30890)),
        ];
        (seen, (any.join().unwrap(), local.join().unwrap()))
    })
    .await
    .unwrap();
    assert_eq!(
        seen,
        [false, false, false, true, true, true, true, true],
        "other host→127.0.0.1:30890, other host→127.0.0.1:30891, \
         host→gateway:30891 (a mapping on 127.0.0.1 only), \
         host→127.0.0.1:30890, host→127.0.0.2:30890, host→gateway:30890, \
         host→127.0.0.1:30891, other host→gateway:30890"
    );
    assert_eq!(served, (4, 1));

    // A pod addressing the host's loopback through its gateway (its own
    // lo's route removed, so its kernel sends it there): dropped before
    // the host takes it, though route_localnet is on.
    let dropped = martians_dropped(&fx.config.nft_table, "daddr");
    ip(
        Some(&web.netns),
        &[
            "route",
            "del",
            "local",
            "127.0.0.0/8",
            "dev",
            "lo",
            "table",
            "local",
        ],
    );
    let gw_s = gw.to_string();
    ip(
        Some(&web.netns),
        &["route", "add", "127.0.0.2/32", "via", &gw_s],
    );
    let ns = web.netns.clone();
    let received = tokio::task::spawn_blocking(move || {
        let host = UdpSocket::bind((lo2, 7190)).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        in_netns(&ns, move || {
            let s = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
            s.send_to(b"martian", (lo2, 7190)).unwrap();
        });
        let mut buf = [0u8; 16];
        host.recv_from(&mut buf).is_ok()
    })
    .await
    .unwrap();
    assert!(!received, "a pod reached the host's loopback");
    assert!(
        martians_dropped(&fx.config.nft_table, "daddr") > dropped,
        "not dropped by the martian rule"
    );

    // A network of its own: its bridge gets route_localnet too, its pods'
    // ports are reachable on 127.0.0.1, and it all goes with it.
    net.create_network(request("pn9t", "10.231.109.0/24", &[]))
        .await
        .unwrap();
    assert_eq!(route_localnet("stnpn9t").as_deref(), Some("1"));
    let other = net
        .attach_to(
            "pn9t",
            "other",
            "tenant-a",
            &[PortMapping::tcp(30892, 8080)],
        )
        .await
        .unwrap();
    let ns = other.netns.clone();
    let reached = tokio::task::spawn_blocking(move || {
        let server = echo_server(&ns, 8080, 1);
        let ok = echo(None, at(Ipv4Addr::LOCALHOST, 30892));
        server.join().unwrap();
        ok
    })
    .await
    .unwrap();
    assert!(reached, "host→127.0.0.1:30892 on network pn9t");
    assert!(net.detach("other").await.unwrap());
    net.delete_network("pn9t").await.unwrap();
    assert_eq!(route_localnet("stnpn9t"), None, "the bridge is gone");
    let gone = tokio::task::spawn_blocking(move || echo(None, at(Ipv4Addr::LOCALHOST, 30892)))
        .await
        .unwrap();
    assert!(!gone, "host→127.0.0.1:30892 after its network was deleted");

    // A restart re-adopts the bridge, setting route_localnet again (here
    // someone turned it off meanwhile), and reloads the rules.
    drop(net);
    std::fs::write(stratum_net::bridge::route_localnet_path(&bridge), "0\n").unwrap();
    let net = HostNetworks::open(fx.config.clone()).await.unwrap();
    assert_eq!(route_localnet(&bridge).as_deref(), Some("1"));
    net.reconcile(&Live::pods(["web"])).await.unwrap();
    let ns = web.netns.clone();
    let reached = tokio::task::spawn_blocking(move || {
        let server = echo_server(&ns, 8080, 1);
        let ok = echo(None, at(Ipv4Addr::LOCALHOST, 30890));
        server.join().unwrap();
        ok
    })
    .await
    .unwrap();
    assert!(reached, "host→127.0.0.1:30890 after a restart");

    // Gone with the mapping: nothing on the host answers.
    assert!(net.detach("web").await.unwrap());
    let table = Nft::default()
        .list_table("inet", &fx.config.nft_table)
        .unwrap()
        .unwrap();
    assert!(!table.contains("3089"), "{table}");
    let after = tokio::task::spawn_blocking(move || {
        [
            echo(None, at(Ipv4Addr::LOCALHOST, 30890)),
            echo(None, at(Ipv4Addr::LOCALHOST, 30891)),
        ]
    })
    .await
    .unwrap();
    assert_eq!(
        after,
        [false, false],
        "127.0.0.1:30890, :30891 after detach"
    );

    net.teardown().await.unwrap();
    assert_eq!(route_localnet(&bridge), None, "the bridge is gone");
    unchanged(host_links());
    let links = link_names().await;
    assert!(
        !links
            .iter()
            .any(|l| l == ext_host || l == "stnpn9t" || *l == bridge),
        "{links:?}"
    );
}
