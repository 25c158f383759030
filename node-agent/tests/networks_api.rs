//! Networks through the real agent's gRPC API and nodectl, with real
//! bridges, TAPs and nftables on this host and real `vmm` processes (a
//! guest that halts; real guests on networks run in the nested test
//! host: tests/tests/cluster.rs): a network per namespace, VM NICs with
//! their addresses from the network's IPAM, in the seed and the status,
//! TAPs made at start and removed at stop, what is refused and that it
//! leaves nothing, and reconcile after kill -9 of the agent.

// Test helpers may panic: a broken fixture fails the test that uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use stratum_api::proto;
use stratum_api::proto::networks_client::NetworksClient;
use stratum_api::proto::VmState;
use stratum_net::{HostNetworks, NetConfig};
use stratum_testkit::test_agent::{
    create_vm, fat_file, get_vm, halting_kernel, output_text, wait_vm_state as wait_state,
    TestAgent,
};
use tonic::transport::Channel;
use tonic::Code;

/// An agent whose default network is its own (bridge, firewall table and
/// CIDR unique to the test), the third octet its networks use, and the
/// guard that removes its default bridge and firewall.
fn start_agent(name: &str, n: u32) -> (TestAgent, u32, DefaultNetwork) {
    let octet = std::process::id() % 200 + 20;
    let bridge = format!("stw{}{n}", std::process::id() % 10_000);
    let cidr = format!("10.{}.{octet}.0/24", 240 + n);
    let agent = TestAgent::start_with(name, &["--pod-bridge", &bridge, "--pod-cidr", &cidr]);
    let mut net = NetConfig::new(&agent.dir.join("data"));
    net.bridge = bridge.clone();
    net.nft_table = bridge;
    net.netns_dir = Path::new("/run/stratum")
        .join(&agent.cgroup_root)
        .join("netns");
    (agent, octet, DefaultNetwork(net))
}

/// Removes an agent's default network from the host (bridge, firewall,
/// TAPs, netns directory) when the test ends, passed or not.
struct DefaultNetwork(NetConfig);

impl Drop for DefaultNetwork {
    fn drop(&mut self) {
        let net = self.0.clone();
        let purged = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(HostNetworks::purge(&net))
        });
        let _ = purged.join();
        if let Some(dir) = self.0.netns_dir.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

async fn networks(agent: &TestAgent) -> NetworksClient<Channel> {
    NetworksClient::new(agent.channel().await)
}

async fn namespace(agent: &TestAgent, name: &str) -> String {
    agent
        .pools()
        .await
        .create(proto::CreateResourcePoolRequest {
            parent_id: String::new(),
            spec: Some(proto::ResourcePoolSpec {
                name: name.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .id
}

fn network_spec(name: &str, cidr: &str, namespaces: &[&str]) -> proto::NetworkSpec {
    proto::NetworkSpec {
        name: name.into(),
        cidr: cidr.into(),
        namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
        nameservers: vec!["10.0.0.53".into()],
        ..Default::default()
    }
}

async fn create_network(
    agent: &TestAgent,
    spec: proto::NetworkSpec,
) -> Result<proto::Network, tonic::Status> {
    networks(agent)
        .await
        .create(proto::CreateNetworkRequest { spec: Some(spec) })
        .await
        .map(|r| r.into_inner())
}

async fn get_network(agent: &TestAgent, name: &str) -> proto::Network {
    networks(agent)
        .await
        .get(proto::GetNetworkRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
}

fn vm_spec(agent: &TestAgent, name: &str, pool: &str, nic: proto::NicSpec) -> proto::VmSpec {
    proto::VmSpec {
        name: name.into(),
        pool_id: pool.into(),
        role: proto::VmRole::Etcd as i32,
        vcpus: 1,
        memory_mib: 32,
        kernel: halting_kernel(&agent.dir).to_string_lossy().into_owned(),
        cmdline: "console=ttyS0".into(),
        nics: vec![nic],
        ..Default::default()
    }
}

fn on_network(network: &str, address: Option<&str>) -> proto::NicSpec {
    proto::NicSpec {
        network: network.into(),
        addresses: address.into_iter().map(String::from).collect(),
        ..Default::default()
    }
}

fn nic_status(vm: &proto::VirtualMachine) -> proto::NicStatus {
    vm.status.as_ref().unwrap().nics[0].clone()
}

/// Waits for link `name` to go (a VM's TAP, unplugged once its stop is
/// recorded), failing the test after 5 s.
async fn wait_gone(name: &str) {
    for _ in 0..50 {
        if !link_exists(name) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("link {name} is still there");
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn sys_net(link: &str, attr: &str) -> String {
    std::fs::read_to_string(Path::new("/sys/class/net").join(link).join(attr))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn master_of(link: &str) -> String {
    std::fs::read_link(Path::new("/sys/class/net").join(link).join("master"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// Deletes a test network's bridge when the test ends, passed or not.
struct BridgeGuard(String);

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A namespace's network: made, listed and shown by nodectl; a VM's NIC
/// on it gets its address (asked for, or the next free one), MAC and
/// gateway in its status and in its cloud-init network-config; its TAP is
/// made at start on the network's bridge, owned by the VM's jail uid, and
/// removed at stop; the address stays with the VM until it is deleted,
/// and the network can go only then.
#[tokio::test]
async fn a_vm_nic_on_a_network_gets_its_address_and_a_tap_for_each_run() {
    let (agent, octet, _default) = start_agent("nets", 1);
    let tenant = namespace(&agent, "tenant-a").await;
    let cidr = format!("10.235.{octet}.0/24");
    let bridge = format!("stx{}", std::process::id() % 100_000);
    let _guard = BridgeGuard(bridge.clone());
    let made = create_network(
        &agent,
        proto::NetworkSpec {
            bridge: bridge.clone(),
            ..network_spec("net-a", &cidr, &[&tenant])
        },
    )
    .await
    .unwrap();
    let status = made.status.unwrap();
    let gateway = format!("10.235.{octet}.1");
    assert_eq!(status.gateway, gateway);
    assert_eq!(master_of(&bridge), "", "a bridge is no port");
    assert!(link_exists(&bridge), "the network's bridge");

    let listed = output_text(&agent.nodectl(&["network", "list"]));
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("net-a") && l.contains(&cidr)),
        "{listed}"
    );
    assert!(listed.lines().any(|l| l.starts_with("default")), "{listed}");

    let asked = format!("10.235.{octet}.10");
    let vm = create_vm(
        &agent,
        vm_spec(&agent, "etcd-1", &tenant, on_network("net-a", Some(&asked))),
    )
    .await
    .unwrap();
    let nic = nic_status(&vm);
    assert_eq!(nic.network, "net-a");
    assert_eq!(nic.address, format!("{asked}/24"));
    assert_eq!(nic.gateway, gateway);
    assert_eq!(nic.mac, format!("06:00:0a:eb:{octet:02x}:0a"));
    assert!(nic.host_device.is_empty(), "no TAP before the VM runs");
    let seed = agent.dir.join("data/vms").join(&vm.id).join("seed.img");
    let config: serde_json::Value =
        serde_json::from_str(&fat_file(&seed, "network-config")).unwrap();
    let eth = &config["ethernets"]["nic0"];
    assert_eq!(eth["match"]["macaddress"], nic.mac, "{config}");
    assert_eq!(eth["addresses"][0], nic.address, "{config}");
    assert_eq!(eth["routes"][0]["via"], gateway, "{config}");
    assert_eq!(eth["nameservers"]["addresses"][0], "10.0.0.53", "{config}");

    // Without an address asked for: the next free one.
    let second = create_vm(
        &agent,
        vm_spec(&agent, "etcd-2", &tenant, on_network("net-a", None)),
    )
    .await
    .unwrap();
    let second_ip = nic_status(&second).address;
    assert!(second_ip.starts_with(&format!("10.235.{octet}.")) && second_ip != nic.address);

    let mut vms = agent.vms().await;
    let started = vms
        .start(proto::StartVmRequest { id: vm.id.clone() })
        .await
        .unwrap()
        .into_inner();
    let tap = nic_status(&started).host_device;
    assert!(!tap.is_empty(), "{started:?}");
    assert_eq!(master_of(&tap), bridge);
    let uid = started.status.as_ref().unwrap().uid;
    assert_ne!(uid, 0, "the vmm is jailed");
    assert_eq!(sys_net(&tap, "owner"), uid.to_string());
    let shown = get_network(&agent, "net-a").await;
    let attached: Vec<_> = shown
        .status
        .as_ref()
        .unwrap()
        .attachments
        .iter()
        .map(|a| (a.id.as_str(), a.address.as_str(), a.host_device.as_str()))
        .collect();
    assert_eq!(
        attached,
        // In address order: the next free one was .2.
        [
            (second.id.as_str(), second_ip.as_str(), ""),
            (vm.id.as_str(), nic.address.as_str(), tap.as_str()),
        ]
    );
    let got = output_text(&agent.nodectl(&["network", "get", "net-a"]));
    assert!(got.contains(&nic.mac) && got.contains(&tap), "{got}");

    // Not while anything holds an address on it.
    let busy = networks(&agent)
        .await
        .delete(proto::DeleteNetworkRequest {
            name: "net-a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(busy.code(), Code::FailedPrecondition, "{busy:?}");

    vms.kill(proto::KillVmRequest { id: vm.id.clone() })
        .await
        .unwrap();
    wait_state(&agent, &vm.id, VmState::Stopped).await;
    wait_gone(&tap).await;
    let restarted = vms
        .start(proto::StartVmRequest { id: vm.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(nic_status(&restarted).address, nic.address, "same address");
    assert!(link_exists(&tap));
    vms.kill(proto::KillVmRequest { id: vm.id.clone() })
        .await
        .unwrap();
    wait_state(&agent, &vm.id, VmState::Stopped).await;
    for id in [&vm.id, &second.id] {
        vms.delete(proto::DeleteVmRequest { id: id.clone() })
            .await
            .unwrap();
    }
    let empty = get_network(&agent, "net-a").await;
    assert!(empty.status.unwrap().attachments.is_empty(), "released");
    let out = agent.nodectl(&["network", "delete", "net-a"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(!link_exists(&bridge), "the bridge went with the network");
    assert!(!link_exists(&tap));
}

/// What a network or a NIC spec gets wrong is refused with its code, and
/// nothing is left of it: no network, bridge, VM or address.
#[tokio::test]
async fn bad_networks_and_nics_are_refused_and_leave_nothing() {
    let (agent, octet, _default) = start_agent("badnets", 2);
    let tenant_a = namespace(&agent, "tenant-a").await;
    let tenant_b = namespace(&agent, "tenant-b").await;
    let cidr = format!("10.236.{octet}.0/24");
    let _guard = BridgeGuard("st-net-a".into());
    create_network(&agent, network_spec("net-a", &cidr, &[&tenant_a]))
        .await
        .unwrap();
    let before = networks(&agent)
        .await
        .list(proto::ListNetworksRequest {})
        .await
        .unwrap()
        .into_inner();
    let refused = [
        (
            network_spec("net-a", "10.237.0.0/24", &[]),
            Code::AlreadyExists,
        ),
        (
            network_spec("net-b", &format!("10.236.{octet}.0/25"), &[]),
            Code::AlreadyExists,
        ),
        (
            network_spec("default", "10.237.0.0/24", &[]),
            Code::AlreadyExists,
        ),
        (
            network_spec("Net_B", "10.237.0.0/24", &[]),
            Code::InvalidArgument,
        ),
        (
            network_spec("net-b", "10.237.0.1/24", &[]),
            Code::InvalidArgument,
        ),
        (
            network_spec("net-b", "nonsense", &[]),
            Code::InvalidArgument,
        ),
        (
            proto::NetworkSpec {
                nameservers: vec!["not-an-ip".into()],
                ..network_spec("net-b", "10.237.0.0/24", &[])
            },
            Code::InvalidArgument,
        ),
    ];
    for (spec, code) in refused {
        let err = create_network(&agent, spec.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{spec:?}: {err:?}");
    }
    let after = networks(&agent)
        .await
        .list(proto::ListNetworksRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, before);
    assert!(!link_exists("st-net-b"));

    let taken = format!("10.236.{octet}.7");
    create_vm(
        &agent,
        vm_spec(
            &agent,
            "holder",
            &tenant_a,
            on_network("net-a", Some(&taken)),
        ),
    )
    .await
    .unwrap();
    let nic = |n: proto::NicSpec| n;
    let bad_vms = [
        (
            &tenant_a,
            on_network("net-a", Some(&taken)),
            Code::AlreadyExists,
        ),
        (
            &tenant_a,
            on_network("net-a", Some("10.9.9.9")),
            Code::InvalidArgument,
        ),
        (
            &tenant_a,
            on_network("net-a", Some(&format!("10.236.{octet}.1"))),
            Code::InvalidArgument,
        ),
        (
            &tenant_a,
            on_network("net-a", Some(&format!("10.236.{octet}.8/16"))),
            Code::InvalidArgument,
        ),
        (&tenant_b, on_network("net-a", None), Code::PermissionDenied),
        (&tenant_a, on_network("no-such-net", None), Code::NotFound),
        (
            &tenant_a,
            nic(proto::NicSpec {
                tap_name: "tap0".into(),
                ..on_network("net-a", None)
            }),
            Code::InvalidArgument,
        ),
        (
            &tenant_a,
            nic(proto::NicSpec {
                gateway: "10.0.0.1".into(),
                ..on_network("net-a", None)
            }),
            Code::InvalidArgument,
        ),
    ];
    for (pool, nic, code) in bad_vms {
        let err = create_vm(&agent, vm_spec(&agent, "bad", pool, nic.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{nic:?}: {err:?}");
    }
    let listed = agent
        .vms()
        .await
        .list(proto::ListVmsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.vms.len(), 1, "only the holder: {listed:?}");
    let held = get_network(&agent, "net-a")
        .await
        .status
        .unwrap()
        .attachments;
    assert_eq!(held.len(), 1, "nothing else holds an address: {held:?}");
    // A second NIC that fails gives back the first NIC's address too.
    let two = proto::VmSpec {
        nics: vec![on_network("net-a", None), on_network("net-a", Some(&taken))],
        ..vm_spec(&agent, "two", &tenant_a, on_network("net-a", None))
    };
    assert_eq!(
        create_vm(&agent, two).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    let held = get_network(&agent, "net-a")
        .await
        .status
        .unwrap()
        .attachments;
    assert_eq!(held.len(), 1, "{held:?}");
}

/// After kill -9 of the agent: a VM that kept running keeps its TAP, one
/// whose vmm died meanwhile loses it, and both keep their addresses.
#[tokio::test]
async fn taps_are_reconciled_after_the_agent_is_killed() {
    let (mut agent, octet, _default) = start_agent("netre", 3);
    let tenant = namespace(&agent, "tenant-a").await;
    let _guard = BridgeGuard("st-net-r".into());
    create_network(
        &agent,
        network_spec("net-r", &format!("10.238.{octet}.0/24"), &[&tenant]),
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    for name in ["keep", "doomed"] {
        let vm = create_vm(
            &agent,
            vm_spec(&agent, name, &tenant, on_network("net-r", None)),
        )
        .await
        .unwrap();
        agent
            .vms()
            .await
            .start(proto::StartVmRequest { id: vm.id.clone() })
            .await
            .unwrap();
        ids.push(vm.id);
    }
    let keep = get_vm(&agent, &ids[0]).await;
    let doomed = get_vm(&agent, &ids[1]).await;
    let (keep_tap, doomed_tap) = (
        nic_status(&keep).host_device,
        nic_status(&doomed).host_device,
    );
    assert!(link_exists(&keep_tap) && link_exists(&doomed_tap));

    agent.kill9();
    let pid = doomed.status.as_ref().unwrap().pid;
    // SAFETY: plain kill(2) of a process this test started (via the agent).
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(200));
    agent.spawn();

    let kept = get_vm(&agent, &ids[0]).await;
    assert_eq!(
        kept.status.as_ref().unwrap().state(),
        VmState::Running,
        "{}",
        agent.log()
    );
    wait_state(&agent, &ids[1], VmState::Failed).await;
    // Reconcile runs as the agent resumes, before it serves.
    assert!(link_exists(&keep_tap), "{}", agent.log());
    assert_eq!(master_of(&keep_tap), "st-net-r");
    assert!(!link_exists(&doomed_tap), "{}", agent.log());
    let held: Vec<String> = get_network(&agent, "net-r")
        .await
        .status
        .unwrap()
        .attachments
        .into_iter()
        .map(|a| a.address)
        .collect();
    assert_eq!(
        held,
        [nic_status(&keep).address, nic_status(&doomed).address]
    );
    agent
        .vms()
        .await
        .kill(proto::KillVmRequest { id: ids[0].clone() })
        .await
        .unwrap();
    wait_state(&agent, &ids[0], VmState::Stopped).await;
    wait_gone(&keep_tap).await;
}

/// The agent's own port cannot be made a host service of the networks:
/// the agent refuses to start, saying why.
#[test]
fn the_agents_port_is_never_a_host_service() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(stratum_testkit::bins::bin("node-agent"))
        .args(["--listen", "127.0.0.1:17999", "--insecure-plaintext"])
        .args([
            "--no-vm-jail",
            "--pod-host-service",
            "tcp:17999",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the agent's own port"), "{err}");
}
