//! Unit tests of nodectl's command line, pool-tree rendering and JSON.

use clap::{CommandFactory, Parser};

use super::cli::{Cli, Command, PoolCommand, VmCommand};
use super::run::{new_pool_spec, pool_spec, vm_spec};
use super::size::MIB;
use super::{code_name, json, render};
use stratum_api::proto::{
    Allocation, GuestInfo, GuestInterface, GuestState, ListResourcePoolsResponse, Quota,
    ResourcePool, ResourcePoolSpec, ResourcePoolStatus, ResourceUsage, Shares, SharesLevel,
    VirtualMachine, VmEvent, VmEventKind, VmRole, VmSpec, VmState, VmStatus, WorkloadUsage,
};

fn parse(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("nodectl").chain(args.iter().copied())).unwrap()
}

#[test]
fn the_command_line_is_well_formed() {
    Cli::command().debug_assert();
}

#[test]
fn bad_values_are_usage_errors() {
    for args in [
        &["pool", "create", "web", "--mem-limit", "2GB"][..],
        &["pool", "create", "web", "--cpu-shares", "lots"],
        &[
            "vm", "create", "a", "--role", "boss", "--vcpus", "1", "--memory", "1", "--kernel", "k",
        ],
        &[
            "vm", "create", "a", "--role", "worker", "--vcpus", "1", "--memory", "1",
        ],
        &[
            "vm", "create", "a", "--role", "worker", "--vcpus", "1", "--memory", "1", "--kernel",
            "k", "--disk", "ro",
        ],
        &["vm", "list", "--selector", "novalue"],
        &["-o", "yaml", "host", "info"],
        &["host"],
    ] {
        let err = Cli::try_parse_from(std::iter::once("nodectl").chain(args.iter().copied()))
            .unwrap_err();
        assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
    }
}

fn alloc(reservation: u64, limit: u64, level: SharesLevel, expandable: bool) -> Option<Allocation> {
    Some(Allocation {
        shares: Some(Shares {
            level: level as i32,
            custom: 0,
        }),
        reservation,
        limit,
        expandable_reservation: expandable,
    })
}

fn pool(id: &str, parent: &str, name: &str, children: &[&str]) -> ResourcePool {
    ResourcePool {
        id: id.into(),
        parent_id: parent.into(),
        spec: Some(ResourcePoolSpec {
            name: name.into(),
            cpu: alloc(1000, 4000, SharesLevel::High, true),
            memory: alloc(2 << 30, 0, SharesLevel::Normal, false),
            quota: None,
        }),
        status: Some(ResourcePoolStatus {
            cpu: Some(ResourceUsage {
                charged_to_parent: 1000,
                reserved_by_children: 500,
                unreserved: 500,
            }),
            memory: Some(ResourceUsage {
                charged_to_parent: 2 << 30,
                reserved_by_children: 512 * MIB,
                unreserved: 1536 * MIB,
            }),
            usage: Some(WorkloadUsage {
                workloads: 3,
                running_workloads: 1,
                vms: 3,
                vcpus: 6,
                memory_bytes: 3 << 30,
                ..Default::default()
            }),
            ..Default::default()
        }),
        child_pool_ids: children.iter().map(|c| c.to_string()).collect(),
        workload_ids: vec![],
    }
}

fn tree() -> ListResourcePoolsResponse {
    let mut root = pool("root", "", "", &["p-prod", "p-test"]);
    root.spec.as_mut().unwrap().quota = Some(Quota {
        max_vms: 10,
        max_vcpus: 0,
        max_memory_bytes: 64 << 30,
        ..Default::default()
    });
    ListResourcePoolsResponse {
        pools: vec![
            root,
            pool("p-prod", "root", "prod", &["p-web"]),
            pool("p-web", "p-prod", "web", &[]),
            pool("p-test", "root", "test", &[]),
        ],
        ..Default::default()
    }
}

#[test]
fn the_pool_tree_is_indented_and_aligned() {
    let text = render::pool_tree(&tree());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[0].starts_with("NAME"), "{text}");
    assert!(lines[1].starts_with("root "), "{text}");
    assert!(lines[2].starts_with("  prod "), "{text}");
    assert!(lines[3].starts_with("    web "), "{text}");
    assert!(lines[4].starts_with("  test "), "{text}");
    // Every column starts at the same offset on every line.
    let col = lines[0].find("CPU RES/LIMIT/SHARES").unwrap();
    for line in &lines[1..] {
        assert_eq!(&line[col..col + 15], "1000m/4000m/hig", "{text}");
    }
    assert!(lines[1].contains("2Gi/-/normal"), "{text}");
    assert!(lines[1].contains("cpu"), "expandable column: {text}");
    assert!(lines[1].contains("500m/512Mi"), "used column: {text}");
    assert!(lines[1].contains("1/3"), "vms column: {text}");
    assert!(lines[1].ends_with("vms=10,mem=64Gi"), "{text}");
    assert!(lines[2].ends_with('-'), "{text}");
}

#[test]
fn the_pool_tree_follows_links_not_list_order() {
    let mut resp = tree();
    resp.pools.reverse();
    let text = render::pool_tree(&resp);
    let firsts: Vec<&str> = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(firsts, ["root", "prod", "web", "test"]);
}

#[test]
fn a_subtree_starts_at_depth_zero_and_cycles_do_not_hang() {
    let mut resp = tree();
    resp.pools.remove(0);
    let text = render::pool_tree(&resp);
    assert!(text.lines().nth(1).unwrap().starts_with("prod "), "{text}");
    let cyclic = ListResourcePoolsResponse {
        pools: vec![pool("a", "b", "a", &["b"]), pool("b", "a", "b", &["a"])],
        ..Default::default()
    };
    assert_eq!(render::pool_tree(&cyclic).lines().count(), 3);
}

#[test]
fn pools_convert_to_json_with_proto_json_names() {
    let v = json::to_value(&tree()).unwrap();
    let prod = &v["pools"][1];
    assert_eq!(prod["id"], "p-prod");
    assert_eq!(prod["spec"]["name"], "prod");
    assert_eq!(prod["spec"]["cpu"]["shares"]["level"], "SHARES_LEVEL_HIGH");
    assert_eq!(prod["spec"]["memory"]["reservation"], 2u64 << 30);
    assert_eq!(prod["spec"]["quota"], serde_json::Value::Null);
    assert_eq!(prod["status"]["cpu"]["reservedByChildren"], 500);
    assert_eq!(prod["status"]["usage"]["runningWorkloads"], 1);
    assert_eq!(prod["childPoolIds"], serde_json::json!(["p-web"]));
    assert_eq!(v["pools"][0]["spec"]["quota"]["maxVms"], 10);
}

fn vm() -> VirtualMachine {
    VirtualMachine {
        id: "vm-1".into(),
        spec: Some(VmSpec {
            name: "cp-0".into(),
            pool_id: "p-prod".into(),
            role: VmRole::ControlPlane as i32,
            vcpus: 2,
            memory_mib: 2048,
            kernel: "/boot/vmlinux".into(),
            labels: [("tier".to_string(), "cp".to_string())].into(),
            cpu_limit_millicores: Some(1500),
            ..Default::default()
        }),
        status: Some(VmStatus {
            state: VmState::Running as i32,
            pid: 4242,
            created_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            ..Default::default()
        }),
    }
}

#[test]
fn vms_convert_to_json() {
    let v = json::to_value(&vm()).unwrap();
    assert_eq!(v["spec"]["role"], "VM_ROLE_CONTROL_PLANE");
    assert_eq!(v["spec"]["memoryMib"], 2048);
    assert_eq!(v["spec"]["labels"]["tier"], "cp");
    assert_eq!(v["spec"]["cpuLimitMillicores"], 1500);
    assert_eq!(
        v["spec"]["cpuReservationMillicores"],
        serde_json::Value::Null
    );
    assert_eq!(v["status"]["state"], "VM_STATE_RUNNING");
    assert_eq!(v["status"]["createdAt"], "2023-11-14T22:13:20Z");
    assert_eq!(v["status"]["startedAt"], serde_json::Value::Null);
    let unknown = VmEvent {
        vm_id: "vm-1".into(),
        old_state: VmState::Running as i32,
        new_state: 99,
        ..Default::default()
    };
    let e = json::to_value(&unknown).unwrap();
    assert_eq!(
        (e["oldState"].as_str(), e["newState"].as_i64()),
        (Some("VM_STATE_RUNNING"), Some(99))
    );
}

#[test]
fn vms_render_as_rows_and_details() {
    let text = render::vm_table(&[vm()]);
    let row = text.lines().nth(1).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "vm-1",
            "cp-0",
            "p-prod",
            "control-plane",
            "RUNNING",
            "2",
            "2Gi",
            "4242"
        ]
    );
    let detail = render::vm_detail(&vm());
    assert!(detail.contains("role default/1500m/normal"), "{detail}");
    assert!(detail.contains("tier=cp"), "{detail}");
    let event = VmEvent {
        vm_id: "vm-1".into(),
        old_state: VmState::Running as i32,
        new_state: VmState::Failed as i32,
        reason: "vmm exited with signal 9".into(),
        timestamp: None,
        kind: VmEventKind::StateChanged as i32,
    };
    assert_eq!(
        render::event_line(&event),
        "-  vm-1  RUNNING -> FAILED  vmm exited with signal 9"
    );
    let ready = VmEvent {
        new_state: VmState::Running as i32,
        reason: "cloud-init: done".into(),
        kind: VmEventKind::GuestReady as i32,
        ..event
    };
    assert_eq!(
        render::event_line(&ready),
        "-  vm-1  GUEST_READY  cloud-init: done"
    );
    assert!(detail.contains("GUEST"), "{detail}");
    let guest = GuestInfo {
        state: GuestState::Ready as i32,
        reason: "cloud-init: done".into(),
        hostname: "etcd-0".into(),
        interfaces: vec![GuestInterface {
            name: "eth0".into(),
            mac: "06:00:ac:10:00:02".into(),
            addresses: vec!["172.16.0.2/24".into()],
        }],
        os: "Debian GNU/Linux 12 (bookworm)".into(),
        kernel: "6.1.0-57-cloud-amd64".into(),
        agent_version: "stratum-guest 0.1.0".into(),
        last_heartbeat: None,
    };
    let mut ready_vm = vm();
    if let Some(status) = ready_vm.status.as_mut() {
        status.guest = Some(guest);
    }
    let detail = render::vm_detail(&ready_vm);
    for want in [
        "ready (cloud-init: done)",
        "etcd-0",
        "Debian GNU/Linux 12 (bookworm)",
        "06:00:ac:10:00:02 172.16.0.2/24",
    ] {
        assert!(detail.contains(want), "{want} in {detail}");
    }
    assert!(!detail.contains("BALLOON"), "{detail}");
}

#[test]
fn a_vms_balloon_shows_with_its_guests_memory_once_reported() {
    let mut ballooned = vm();
    let balloon = stratum_api::proto::BalloonStatus {
        target_mib: 96,
        actual_mib: 64,
        guest_available_mib: 0,
        guest_total_mib: 0,
    };
    if let Some(status) = ballooned.status.as_mut() {
        status.balloon = Some(balloon);
    }
    let detail = render::vm_detail(&ballooned);
    let row = detail
        .lines()
        .find(|l| l.starts_with("BALLOON"))
        .unwrap_or_default();
    assert!(row.ends_with("target 96Mi, holds 64Mi"), "{detail}");
    if let Some(status) = ballooned.status.as_mut() {
        status.balloon = Some(stratum_api::proto::BalloonStatus {
            guest_available_mib: 180,
            guest_total_mib: 420,
            ..balloon
        });
    }
    let detail = render::vm_detail(&ballooned);
    assert!(
        detail.contains("target 96Mi, holds 64Mi; guest 180Mi of 420Mi available"),
        "{detail}"
    );
}

#[test]
fn pool_flags_build_and_edit_specs() {
    let cli = parse(&[
        "pool",
        "create",
        "web",
        "--parent",
        "p-prod",
        "--cpu-reservation",
        "500m",
        "--cpu-limit",
        "2000",
        "--cpu-shares",
        "high",
        "--mem-reservation",
        "1Gi",
        "--mem-limit",
        "4Gi",
        "--mem-shares",
        "300",
        "--no-expandable",
        "--max-vms",
        "5",
    ]);
    let Command::Pool(PoolCommand::Create {
        name,
        parent,
        settings,
    }) = cli.command
    else {
        panic!("not pool create");
    };
    assert_eq!(parent.as_deref(), Some("p-prod"));
    let spec = pool_spec(new_pool_spec(name), &settings);
    let cpu = spec.cpu.unwrap();
    assert_eq!(
        (cpu.reservation, cpu.limit, cpu.expandable_reservation),
        (500, 2000, false)
    );
    assert_eq!(cpu.shares.unwrap().level, SharesLevel::High as i32);
    let mem = spec.memory.unwrap();
    assert_eq!((mem.reservation, mem.limit), (1 << 30, 4 << 30));
    assert_eq!(mem.shares.unwrap().custom, 300);
    assert_eq!(spec.quota.unwrap().max_vms, 5);

    // Update keeps what is not given.
    let cli = parse(&[
        "pool",
        "update",
        "p-web",
        "--cpu-limit",
        "0",
        "--expandable",
    ]);
    let Command::Pool(PoolCommand::Update { settings, .. }) = cli.command else {
        panic!("not pool update");
    };
    let mut current = pool("p-web", "p-prod", "web", &[]).spec.unwrap();
    current.memory.as_mut().unwrap().limit = 8 << 30;
    let edited = pool_spec(current, &settings);
    let cpu = edited.cpu.unwrap();
    assert_eq!(
        (cpu.reservation, cpu.limit, cpu.expandable_reservation),
        (1000, 0, true)
    );
    assert_eq!(edited.memory.unwrap().limit, 8 << 30);
    assert_eq!(edited.quota, None);
}

#[test]
fn new_pools_default_to_expandable_normal_shares() {
    let spec = new_pool_spec("x".into());
    let cpu = spec.cpu.unwrap();
    assert!(cpu.expandable_reservation);
    assert_eq!(cpu.shares.unwrap().level, SharesLevel::Normal as i32);
}

#[test]
fn vm_flags_build_a_spec_with_absolute_paths() {
    let cli = parse(&[
        "vm",
        "create",
        "w-1",
        "--pool",
        "p-web",
        "--role",
        "worker",
        "--vcpus",
        "2",
        "--memory",
        "1Gi",
        "--kernel",
        "vmlinux",
        "--disk",
        "base=img/root.raw,ro,serial=root",
        "--nic",
        "tap=tap0",
        "--label",
        "a=1",
        "--label",
        "b=2",
        "--cpu-shares",
        "low",
    ]);
    let Command::Vm(VmCommand::Create(create)) = cli.command else {
        panic!("not vm create");
    };
    let spec = vm_spec(*create).unwrap();
    assert_eq!(
        (spec.memory_mib, spec.vcpus, spec.role),
        (1024, 2, VmRole::Worker as i32)
    );
    assert!(
        spec.kernel.starts_with('/') && spec.kernel.ends_with("/vmlinux"),
        "{}",
        spec.kernel
    );
    assert!(spec.disks[0].base_image.ends_with("/img/root.raw") && spec.disks[0].read_only);
    assert_eq!(spec.nics[0].tap_name, "tap0");
    assert_eq!(spec.labels.len(), 2);
    assert_eq!(spec.initrd, "");
    assert_eq!(spec.cpu_reservation_millicores, None);
    assert_eq!(spec.cloud_init, None, "no seed unless asked for");
}

#[test]
fn user_data_comes_from_its_file_and_meta_data_from_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("user-data.yaml");
    std::fs::write(&file, "#cloud-config\nhostname: n1\n").unwrap();
    let file = file.to_string_lossy().into_owned();
    let create = |extra: &[&str]| {
        let mut args = vec![
            "vm", "create", "n1", "--role", "worker", "--vcpus", "1", "--memory", "512",
            "--kernel", "k",
        ];
        args.extend_from_slice(extra);
        let Command::Vm(VmCommand::Create(create)) = parse(&args).command else {
            panic!("not vm create");
        };
        vm_spec(*create)
    };
    let spec = create(&["--user-data", &file, "--meta-data", "zone=a"]).unwrap();
    let cloud_init = spec.cloud_init.unwrap();
    assert_eq!(cloud_init.user_data, b"#cloud-config\nhostname: n1\n");
    assert_eq!(cloud_init.meta_data["zone"], "a");
    let missing = create(&["--user-data", "/nonexistent/user-data"]).unwrap_err();
    assert!(
        format!("{missing:#}").contains("/nonexistent/user-data"),
        "{missing:#}"
    );
}

#[test]
fn globals_work_after_the_subcommand_and_from_defaults() {
    let cli = parse(&[
        "vm",
        "list",
        "-o",
        "json",
        "--insecure",
        "--selector",
        "a=1,b=2",
    ]);
    assert!(cli.insecure);
    assert_eq!(cli.output, super::cli::Output::Json);
    if std::env::var_os("NODECTL_ADDR").is_none() {
        assert_eq!(cli.addr, super::cli::DEFAULT_ADDR);
    }
    let Command::Vm(VmCommand::List { selector, .. }) = cli.command else {
        panic!("not vm list");
    };
    assert_eq!(selector.concat().len(), 2);
}

#[test]
fn status_codes_print_by_canonical_name() {
    assert_eq!(code_name(tonic::Code::NotFound), "NOT_FOUND");
    let s = tonic::Status::resource_exhausted("pool web: reservation does not fit");
    assert_eq!(
        super::status_text(&s),
        "RESOURCE_EXHAUSTED: pool web: reservation does not fit"
    );
}

/// A Host service that answers GetInfo and refuses GetCapacity, to check
/// nodectl's connection set-up against a real server.
struct FakeHost;

#[tonic::async_trait]
impl stratum_api::proto::host_server::Host for FakeHost {
    async fn get_info(
        &self,
        _: tonic::Request<stratum_api::proto::GetHostInfoRequest>,
    ) -> Result<tonic::Response<stratum_api::proto::HostInfo>, tonic::Status> {
        Ok(tonic::Response::new(stratum_api::proto::HostInfo {
            hostname: "fake".into(),
            cpus: 2,
            ..Default::default()
        }))
    }

    async fn get_capacity(
        &self,
        _: tonic::Request<stratum_api::proto::GetHostCapacityRequest>,
    ) -> Result<tonic::Response<stratum_api::proto::HostCapacity>, tonic::Status> {
        Err(tonic::Status::failed_precondition("no capacity today"))
    }
}

/// Serves FakeHost on an ephemeral loopback port, mTLS from `certs` or
/// plaintext without.
async fn serve_fake_host(certs: Option<&std::path::Path>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut builder = tonic::transport::Server::builder();
    if let Some(dir) = certs {
        builder = builder
            .tls_config(stratum_api::tls::server_tls_config(dir).unwrap())
            .unwrap();
    }
    let server = builder
        .add_service(stratum_api::proto::host_server::HostServer::new(FakeHost))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    port
}

async fn host_info_via(
    addr: &str,
    insecure: bool,
    certs: &std::path::Path,
) -> Result<String, String> {
    let target = super::connect::target(addr, insecure).map_err(|e| e.to_string())?;
    let channel = super::connect::channel(&target, certs).map_err(|e| e.to_string())?;
    let mut client = stratum_api::proto::host_client::HostClient::new(channel);
    let info = client
        .get_info(stratum_api::proto::GetHostInfoRequest {})
        .await
        .map_err(|s| super::status_text(&s))?;
    Ok(info.into_inner().hostname)
}

#[tokio::test]
async fn connects_over_mtls_by_ip_and_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    stratum_api::tls::generate_dev_pki(tmp.path(), &[]).unwrap();
    let port = serve_fake_host(Some(tmp.path())).await;
    for addr in [
        format!("https://127.0.0.1:{port}"),
        format!("localhost:{port}"),
    ] {
        assert_eq!(
            host_info_via(&addr, false, tmp.path()).await,
            Ok("fake".into()),
            "{addr}"
        );
    }
    let target = super::connect::target(&format!("127.0.0.1:{port}"), false).unwrap();
    let channel = super::connect::channel(&target, tmp.path()).unwrap();
    let status = stratum_api::proto::host_client::HostClient::new(channel)
        .get_capacity(stratum_api::proto::GetHostCapacityRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        super::status_text(&status),
        "FAILED_PRECONDITION: no capacity today"
    );
}

#[tokio::test]
async fn plaintext_reaches_a_loopback_agent_only_with_insecure() {
    let tmp = tempfile::tempdir().unwrap();
    let port = serve_fake_host(None).await;
    let addr = format!("http://127.0.0.1:{port}");
    assert_eq!(
        host_info_via(&addr, true, tmp.path()).await,
        Ok("fake".into())
    );
    let err = host_info_via(&addr, false, tmp.path()).await.unwrap_err();
    assert!(err.contains("--insecure"), "{err}");
    // mTLS against a plaintext server fails rather than downgrading.
    stratum_api::tls::generate_dev_pki(tmp.path(), &[]).unwrap();
    let err = host_info_via(&format!("https://127.0.0.1:{port}"), false, tmp.path())
        .await
        .unwrap_err();
    assert!(err.starts_with("UNAVAILABLE"), "{err}");
}

#[test]
fn image_pull_credential_flags() {
    let cli = parse(&[
        "image",
        "pull",
        "busybox",
        "--username",
        "u",
        "--password-stdin",
    ]);
    let Command::Image(super::cli::ImageCommand::Pull {
        username,
        password_stdin,
        token,
        ..
    }) = cli.command
    else {
        panic!("not image pull");
    };
    assert_eq!(username.as_deref(), Some("u"));
    assert!(password_stdin);
    assert!(token.is_none());
    for args in [
        &["image", "pull", "busybox", "--username", "u"][..],
        &["image", "pull", "busybox", "--password-stdin"],
        &[
            "image",
            "pull",
            "busybox",
            "--token",
            "t",
            "--username",
            "u",
        ],
    ] {
        let parsed = Cli::try_parse_from(std::iter::once("nodectl").chain(args.iter().copied()));
        assert!(parsed.is_err(), "{args:?} should be refused");
    }
    assert!(matches!(
        parse(&["image", "remove", "x"]).command,
        Command::Image(super::cli::ImageCommand::Rm { .. })
    ));
}

fn layer_event(
    done: u64,
    phase: stratum_api::proto::LayerPhase,
) -> stratum_api::proto::PullImageProgress {
    use stratum_api::proto::pull_image_progress::Event;
    stratum_api::proto::PullImageProgress {
        event: Some(Event::Layer(stratum_api::proto::LayerProgress {
            digest: format!("sha256:{}", "ab".repeat(32)),
            total_bytes: 2048,
            done_bytes: done,
            phase: phase as i32,
        })),
    }
}

#[test]
fn pull_progress_lines() {
    use super::progress::PullProgress;
    use stratum_api::proto::LayerPhase::{Done, Downloading, Unpacking};
    let events = [
        layer_event(0, Downloading),
        layer_event(1024, Downloading),
        layer_event(2048, Downloading),
        layer_event(2048, Unpacking),
        layer_event(2048, Done),
    ];
    let mut plain = PullProgress::new(false);
    let text: String = events.iter().map(|e| plain.event(e)).collect();
    assert_eq!(
        text,
        "sha256:abababababab: downloading 0B/2Ki (0%)\n\
         sha256:abababababab: unpacking (2Ki)\n\
         sha256:abababababab: done (2Ki)\n"
    );
    let mut tty = PullProgress::new(true);
    let mut text: String = events.iter().map(|e| tty.event(e)).collect();
    text.push_str(&tty.finish());
    assert!(text.starts_with("sha256:abababababab: downloading 0B/2Ki (0%)\r"));
    assert!(text.contains("\rsha256:abababababab: downloading 1Ki/2Ki (50%)"));
    // "done" is 5 characters shorter than "unpacking": blanked.
    assert!(text.ends_with("\rsha256:abababababab: done (2Ki)     \n"));
    assert_eq!(
        text.matches('\n').count(),
        1,
        "one line per layer: {text:?}"
    );
}

// ---- pods and the inventory ----

use super::args::{parse_env, parse_port, parse_restart, port_text};
use super::cli::{PodCommand, PodContainerCommand};
use super::run::{added_container_spec, log_output, only_container, pod_spec};
use stratum_api::proto::{
    workload, ContainerSpec, ContainerState, ContainerStats, ContainerStatus, EnvVar, LiveUsage,
    LogRecord, LogStream, Pod, PodResources, PodSpec, PodState, PodStats, PodStatus, PortMapping,
    PortProtocol, ResourceAmounts, RestartPolicy, Workload, WorkloadKind,
};

/// The clap error for `args`, which must be a usage error (exit 2).
fn usage_error(args: &[&str]) -> String {
    let err = Cli::try_parse_from(std::iter::once("nodectl").chain(args.iter().copied()))
        .expect_err("should be refused");
    assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
    err.to_string()
}

#[test]
fn port_mappings_parse_like_docker_run_p() {
    let p = parse_port("8080:80").unwrap();
    assert_eq!(
        p,
        PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: PortProtocol::Tcp as i32,
            host_ip: String::new(),
        }
    );
    let p = parse_port("5353:53/udp").unwrap();
    assert_eq!(
        (p.host_port, p.container_port, p.protocol),
        (5353, 53, PortProtocol::Udp as i32)
    );
    let p = parse_port("127.0.0.1:8443:443/tcp").unwrap();
    assert_eq!((p.host_ip.as_str(), p.host_port), ("127.0.0.1", 8443));
    assert_eq!(parse_port("65535:1").unwrap().host_port, 65535);
    for text in ["8080:80/tcp", "5353:53/udp", "10.0.0.1:80:8080/tcp"] {
        assert_eq!(port_text(&parse_port(text).unwrap()), text);
    }
}

#[test]
fn bad_port_mappings_say_what_is_wrong() {
    let expect = |text: &str, needle: &str| {
        let err = parse_port(text).unwrap_err();
        assert!(err.contains(needle), "{text:?}: {err}");
    };
    for text in [
        "",
        "80",
        "a:80",
        ":80",
        "80:",
        "1:2:3:4",
        "+80:80",
        "1.2.3.4:80:",
    ] {
        expect(text, "expected [HOST_IP:]HOST_PORT:CONTAINER_PORT");
    }
    expect("0:80", "port 0 is not in 1..=65535");
    expect("8080:70000", "port 70000 is not in 1..=65535");
    expect("8080:80/sctp", "protocol \"sctp\" is neither tcp nor udp");
    expect("8080:80/", "protocol \"\" is neither tcp nor udp");
    expect("localhost:8080:80", "\"localhost\" is not an IPv4 address");
    expect("::1:8080:80", "expected");
    expect("80:80:", "\"80\" is not an IPv4 address");
}

#[test]
fn env_and_restart_policies_parse() {
    assert_eq!(
        parse_env("A=1").unwrap(),
        EnvVar {
            name: "A".into(),
            value: "1".into()
        }
    );
    let e = parse_env("OPTS=--x=1 --y").unwrap();
    assert_eq!((e.name.as_str(), e.value.as_str()), ("OPTS", "--x=1 --y"));
    assert_eq!(parse_env("EMPTY=").unwrap().value, "");
    for bad in ["", "NOVALUE", "=x", "A B=1"] {
        let err = parse_env(bad).unwrap_err();
        assert!(err.contains("expected NAME=VALUE"), "{bad:?}: {err}");
    }
    assert_eq!(parse_restart("never"), Ok(RestartPolicy::Never));
    assert_eq!(parse_restart("on-failure"), Ok(RestartPolicy::OnFailure));
    assert_eq!(parse_restart("always"), Ok(RestartPolicy::Always));
    let err = parse_restart("OnFailure").unwrap_err();
    assert!(err.contains("never, on-failure or always"), "{err}");
}

#[test]
fn pod_run_flags_build_a_one_container_spec() {
    let cli = parse(&[
        "pod",
        "run",
        "web",
        "--image",
        "registry.example:5000/busybox:1",
        "--pool",
        "pool-1",
        "--namespace",
        "shop",
        "--cpu-request",
        "250m",
        "--memory-request",
        "32Mi",
        "--cpu-limit",
        "500",
        "--memory-limit",
        "64Mi",
        "--port",
        "8080:80",
        "--port",
        "5353:53/udp",
        "--env",
        "A=1",
        "--env",
        "B=x=y",
        "--restart",
        "on-failure",
        "--label",
        "app=web",
        "--workdir",
        "/srv",
        "--command",
        "httpd",
        "--",
        "-f",
        "-p",
        "80",
    ]);
    let Command::Pod(PodCommand::Run(run)) = cli.command else {
        panic!("not pod run");
    };
    let spec = pod_spec(*run);
    assert_eq!(
        (
            spec.name.as_str(),
            spec.pool_id.as_str(),
            spec.namespace.as_str()
        ),
        ("web", "pool-1", "shop")
    );
    let resources = spec.resources.unwrap();
    assert_eq!(
        resources.requests,
        Some(ResourceAmounts {
            cpu_millicores: 250,
            memory_bytes: 32 * MIB
        })
    );
    assert_eq!(
        resources.limits,
        Some(ResourceAmounts {
            cpu_millicores: 500,
            memory_bytes: 64 * MIB
        })
    );
    assert_eq!(spec.port_mappings.len(), 2);
    assert_eq!(spec.port_mappings[1].protocol, PortProtocol::Udp as i32);
    assert_eq!(spec.restart_policy, RestartPolicy::OnFailure as i32);
    assert_eq!(spec.labels["app"], "web");
    let [c] = spec.containers.as_slice() else {
        panic!("one container: {:?}", spec.containers);
    };
    assert_eq!(c.name, "web", "named after the pod");
    assert_eq!(c.image, "registry.example:5000/busybox:1");
    assert_eq!(c.command, ["httpd"]);
    assert_eq!(c.args, ["-f", "-p", "80"]);
    assert_eq!(c.env[1].value, "x=y");
    assert_eq!(c.working_dir, "/srv");
    assert_eq!(c.limits, None, "the pod's limits bound it");

    // The minimum: no resources, the image's command, restart unset.
    let cli = parse(&[
        "pod",
        "run",
        "job",
        "--image",
        "busybox",
        "--container-name",
        "main",
    ]);
    let Command::Pod(PodCommand::Run(run)) = cli.command else {
        panic!("not pod run");
    };
    let spec = pod_spec(*run);
    assert_eq!(spec.resources, None);
    assert_eq!(spec.restart_policy, RestartPolicy::Unspecified as i32);
    assert_eq!(spec.pool_id, "");
    assert_eq!(spec.containers[0].name, "main");
    assert!(spec.containers[0].command.is_empty() && spec.containers[0].args.is_empty());
}

#[test]
fn add_container_sets_container_limits() {
    let cli = parse(&[
        "pod",
        "add-container",
        "pod-7",
        "sidecar",
        "--image",
        "busybox",
        "--memory-limit",
        "16Mi",
        "--env",
        "X=1",
        "--",
        "sleep",
        "3600",
    ]);
    let Command::Pod(PodCommand::AddContainer(add)) = cli.command else {
        panic!("not pod add-container");
    };
    assert_eq!(add.pod, "pod-7");
    let c = added_container_spec(*add);
    assert_eq!(c.name, "sidecar");
    assert_eq!(c.args, ["sleep", "3600"]);
    assert!(c.command.is_empty());
    assert_eq!(
        c.limits,
        Some(ResourceAmounts {
            cpu_millicores: 0,
            memory_bytes: 16 * MIB
        })
    );
}

#[test]
fn pod_command_flags() {
    let cli = parse(&["pod", "logs", "pod-7", "-c", "web", "-f", "--tail", "10"]);
    let Command::Pod(PodCommand::Logs {
        id,
        container,
        follow,
        tail,
    }) = cli.command
    else {
        panic!("not pod logs");
    };
    assert_eq!(
        (id.as_str(), container.as_deref(), follow, tail),
        ("pod-7", Some("web"), true, Some(10))
    );
    let cli = parse(&["pod", "logs", "pod-7"]);
    let Command::Pod(PodCommand::Logs {
        container, tail, ..
    }) = cli.command
    else {
        panic!("not pod logs");
    };
    assert_eq!((container, tail), (None, None));

    let cli = parse(&[
        "pod",
        "exec",
        "pod-7",
        "--timeout",
        "5",
        "--",
        "sh",
        "-c",
        "echo hi; exit 3",
    ]);
    let Command::Pod(PodCommand::Exec {
        container,
        timeout,
        command,
        ..
    }) = cli.command
    else {
        panic!("not pod exec");
    };
    assert_eq!((container, timeout), (None, 5));
    assert_eq!(command, ["sh", "-c", "echo hi; exit 3"]);

    let cli = parse(&["pod", "stop", "pod-7", "--grace", "0"]);
    assert!(matches!(
        cli.command,
        Command::Pod(PodCommand::Stop { grace: Some(0), .. })
    ));
    let cli = parse(&["pod", "stop", "pod-7"]);
    assert!(matches!(
        cli.command,
        Command::Pod(PodCommand::Stop { grace: None, .. })
    ));
    let cli = parse(&["pod", "container", "stop", "pod-7", "web", "--grace", "3"]);
    assert!(matches!(
        cli.command,
        Command::Pod(PodCommand::Container(PodContainerCommand::Stop {
            grace: Some(3),
            ..
        }))
    ));
    assert!(matches!(
        parse(&["pod", "ls", "--selector", "app=web"]).command,
        Command::Pod(PodCommand::List { .. })
    ));
    assert!(matches!(
        parse(&["pod", "remove", "pod-7"]).command,
        Command::Pod(PodCommand::Rm { .. })
    ));
    assert!(matches!(
        parse(&["pool", "ls", "--workloads"]).command,
        Command::Pool(PoolCommand::List {
            workloads: true,
            ..
        })
    ));
}

#[test]
fn bad_pod_arguments_are_usage_errors_that_say_why() {
    let run = ["pod", "run", "web", "--image", "busybox"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        run.iter().chain(extra.iter()).copied().collect()
    };
    for (args, needle) in [
        (with(&["--port", "80"]), "invalid --port \"80\""),
        (with(&["--port", "8080:99999"]), "not in 1..=65535"),
        (with(&["--port", "8080:80/icmp"]), "neither tcp nor udp"),
        (with(&["--env", "NOVALUE"]), "expected NAME=VALUE"),
        (
            with(&["--restart", "sometimes"]),
            "never, on-failure or always",
        ),
        (with(&["--memory-limit", "64MB"]), "invalid size"),
        (with(&["--cpu-request", "0.5"]), "invalid CPU amount"),
        (with(&["--label", "novalue"]), "expected key=value"),
        (vec!["pod", "run", "web"], "--image"),
        (vec!["pod", "exec", "pod-7"], "COMMAND"),
        (vec!["pod", "logs", "pod-7", "--tail", "-1"], "'-1'"),
        (vec!["pod", "stop", "pod-7", "--grace", "soon"], "--grace"),
        (vec!["pod", "container", "start", "pod-7"], "NAME"),
    ] {
        let err = usage_error(&args);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // Arguments for the container come only after `--`.
    let err = usage_error(&with(&["httpd"]));
    assert!(err.contains("unexpected argument"), "{err}");
}

fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

fn container(name: &str, image: &str, args: &[&str]) -> ContainerSpec {
    ContainerSpec {
        name: name.into(),
        image: image.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    }
}

fn two_container_pod() -> Pod {
    let mut sidecar = container("log", "busybox", &["tail", "-f", "/dev/null"]);
    sidecar.limits = Some(ResourceAmounts {
        cpu_millicores: 100,
        memory_bytes: 16 * MIB,
    });
    sidecar.env = vec![EnvVar {
        name: "LEVEL".into(),
        value: "debug".into(),
    }];
    Pod {
        id: "pod-7".into(),
        spec: Some(PodSpec {
            name: "web".into(),
            pool_id: "pool-1".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            port_mappings: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: PortProtocol::Tcp as i32,
                host_ip: String::new(),
            }],
            resources: Some(PodResources {
                requests: Some(ResourceAmounts {
                    cpu_millicores: 250,
                    memory_bytes: 32 * MIB,
                }),
                limits: Some(ResourceAmounts {
                    cpu_millicores: 0,
                    memory_bytes: 64 * MIB,
                }),
            }),
            restart_policy: RestartPolicy::OnFailure as i32,
            containers: vec![
                container("web", "registry.example:5000/busybox:1", &["httpd", "-f"]),
                sidecar,
            ],
            ..Default::default()
        }),
        status: Some(PodStatus {
            state: PodState::Running as i32,
            namespace: "pool-1".into(),
            ip: "10.88.0.5".into(),
            reservation: Some(ResourceAmounts {
                cpu_millicores: 250,
                memory_bytes: 32 * MIB,
            }),
            limits: Some(ResourceAmounts {
                cpu_millicores: 0,
                memory_bytes: 64 * MIB,
            }),
            created_at: ts(1_700_000_000),
            started_at: ts(1_700_000_001),
            containers: vec![
                ContainerStatus {
                    name: "web".into(),
                    id: "pod-7-web-1".into(),
                    state: ContainerState::Running as i32,
                    restart_count: 2,
                    image_id: format!("sha256:{}", "cd".repeat(32)),
                    pid: 4242,
                    started_at: ts(1_700_000_100),
                    ..Default::default()
                },
                ContainerStatus {
                    name: "log".into(),
                    state: ContainerState::Exited as i32,
                    reason: "Error".into(),
                    exit_code: Some(1),
                    restart_count: 1,
                    restart_at: ts(1_700_000_200),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }),
    }
}

#[test]
fn pods_render_as_rows() {
    let text = render::pod_table(&[two_container_pod()]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        render::POD_HEADER
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        [
            "pod-7",
            "web",
            "pool-1",
            "pool-1",
            "RUNNING",
            "1/2",
            "3",
            "10.88.0.5",
            "8080:80/tcp"
        ]
    );
    // A pod the agent just answered without a status still renders.
    let bare = Pod {
        id: "pod-9".into(),
        ..Default::default()
    };
    let text = render::pod_table(&[bare]);
    assert_eq!(
        text.lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["pod-9", "-", "root", "UNSPECIFIED", "0/0", "0", "-", "-"]
    );
}

#[test]
fn a_pod_in_full_shows_every_container_side_by_side() {
    let text = render::pod_detail(&two_container_pod());
    let field = |name: &str| -> String {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}  ")))
            .unwrap_or_else(|| panic!("{name} in {text}"))[name.len()..]
            .trim()
            .to_string()
    };
    assert_eq!(field("STATE"), "RUNNING");
    assert_eq!(field("IP"), "10.88.0.5");
    assert_eq!(field("HOSTNAME"), "web");
    assert_eq!(field("RESTART POLICY"), "on-failure");
    assert_eq!(field("REQUESTS CPU/MEM"), "250m/32Mi");
    assert_eq!(field("LIMITS CPU/MEM"), "-/64Mi");
    assert_eq!(field("PORT"), "8080:80/tcp");
    assert_eq!(field("LABELS"), "app=web");
    assert_eq!(field("CREATED"), "2023-11-14T22:13:20Z");
    assert_eq!(field("FINISHED"), "-");
    let header = text
        .lines()
        .find(|l| l.starts_with("CONTAINER "))
        .unwrap_or_else(|| panic!("container table in {text}"));
    let col = |name: &str| header.find(name).unwrap();
    let web = text.lines().find(|l| l.starts_with("web ")).unwrap();
    let log = text.lines().find(|l| l.starts_with("log ")).unwrap();
    assert_eq!(&web[col("STATE")..col("EXIT")].trim_end(), &"RUNNING");
    assert_eq!(&log[col("STATE")..col("EXIT")].trim_end(), &"EXITED");
    assert_eq!(&web[col("EXIT")..col("RESTARTS")].trim_end(), &"-");
    assert_eq!(&log[col("EXIT")..col("RESTARTS")].trim_end(), &"1");
    assert_eq!(&web[col("RESTARTS")..col("PID")].trim_end(), &"2");
    assert_eq!(&web[col("PID")..col("IMAGE")].trim_end(), &"4242");
    assert_eq!(&log[col("PID")..col("IMAGE")].trim_end(), &"-");
    assert_eq!(
        web[col("IMAGE")..col("LIMIT CPU/MEM")].trim_end(),
        "registry.example:5000/busybox:1 (sha256:cdcdcdcdcdcd)"
    );
    assert_eq!(
        log[col("LIMIT CPU/MEM")..col("COMMAND")].trim_end(),
        "100m/16Mi"
    );
    assert_eq!(web[col("COMMAND")..col("REASON")].trim_end(), "httpd -f");
    assert_eq!(
        &log[col("REASON")..],
        "Error; restarts at 2023-11-14T22:16:40Z"
    );
    assert!(text.contains("log  ENV      LEVEL=debug"), "{text}");
    assert!(text.contains("web  RUN ID   pod-7-web-1"), "{text}");
}

#[test]
fn the_default_container_is_the_only_one() {
    let mut pod = two_container_pod();
    let err = only_container(&pod).unwrap_err().to_string();
    assert_eq!(err, "pod pod-7 has 2 containers (web, log): pass -c NAME");
    pod.spec.as_mut().unwrap().containers.truncate(1);
    assert_eq!(only_container(&pod).unwrap(), "web");
    pod.spec.as_mut().unwrap().containers.clear();
    pod.status.as_mut().unwrap().containers.truncate(1);
    assert_eq!(only_container(&pod).unwrap(), "web", "from the status");
    pod.status.as_mut().unwrap().containers.clear();
    let err = only_container(&pod).unwrap_err().to_string();
    assert_eq!(err, "pod pod-7 has no containers");
}

#[test]
fn pods_convert_to_json() {
    let v = json::to_value(&two_container_pod()).unwrap();
    assert_eq!(v["id"], "pod-7");
    assert_eq!(v["spec"]["restartPolicy"], "RESTART_POLICY_ON_FAILURE");
    assert_eq!(v["spec"]["runtimeClass"], "RUNTIME_CLASS_UNSPECIFIED");
    assert_eq!(
        v["spec"]["portMappings"][0]["protocol"],
        "PORT_PROTOCOL_TCP"
    );
    assert_eq!(v["spec"]["resources"]["limits"]["memoryBytes"], 64 * MIB);
    assert_eq!(v["spec"]["containers"][1]["env"][0]["name"], "LEVEL");
    assert_eq!(v["spec"]["labels"]["app"], "web");
    assert_eq!(v["status"]["state"], "POD_STATE_RUNNING");
    let web = &v["status"]["containers"][0];
    assert_eq!(web["state"], "CONTAINER_STATE_RUNNING");
    assert_eq!(web["exitCode"], serde_json::Value::Null);
    assert_eq!(web["pid"], 4242);
    let log = &v["status"]["containers"][1];
    assert_eq!(log["exitCode"], 1);
    assert_eq!(log["restartAt"], "2023-11-14T22:16:40Z");
    let list = json::to_value(&stratum_api::proto::ListPodsResponse {
        pods: vec![two_container_pod()],
    })
    .unwrap();
    assert_eq!(list["pods"][0]["spec"]["name"], "web");
}

#[test]
fn log_records_print_raw_by_stream() {
    let record = |stream: LogStream, partial: bool, message: &[u8]| LogRecord {
        time: ts(1_700_000_000),
        stream: stream as i32,
        partial,
        message: message.to_vec(),
    };
    assert_eq!(
        log_output(&record(LogStream::Stdout, false, b"hello")),
        (LogStream::Stdout, b"hello\n".to_vec())
    );
    assert_eq!(
        log_output(&record(LogStream::Stderr, false, b"oops")),
        (LogStream::Stderr, b"oops\n".to_vec())
    );
    assert_eq!(
        log_output(&record(LogStream::Stdout, true, b"part of a long ")),
        (LogStream::Stdout, b"part of a long ".to_vec()),
        "a partial record continues in the next one"
    );
    assert_eq!(
        log_output(&record(LogStream::Unspecified, false, b"\xff\x00")),
        (LogStream::Stdout, b"\xff\x00\n".to_vec())
    );

    let v = json::log_record(&record(LogStream::Stderr, false, b"oops")).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "time": "2023-11-14T22:13:20Z",
            "stream": "LOG_STREAM_STDERR",
            "partial": false,
            "message": "oops",
        })
    );
    let v = json::log_record(&record(LogStream::Stdout, true, b"caf\xe9")).unwrap();
    assert_eq!(v["message"], "caf\u{fffd}");
    assert_eq!(v["messageBase64"], "Y2Fm6Q==");
    assert_eq!(v["partial"], true);
}

#[test]
fn exec_output_and_exit_codes() {
    let v = json::exec_result(&stratum_api::proto::ExecSyncResponse {
        stdout: b"hi\n".to_vec(),
        stderr: vec![],
        exit_code: 3,
    })
    .unwrap();
    assert_eq!(
        v,
        serde_json::json!({ "stdout": "hi\n", "stderr": "", "exitCode": 3 })
    );
    assert_eq!(super::exit_status(3), 3);
    assert_eq!(super::exit_status(137), 137);
    assert_eq!(super::exit_status(255), 255);
    assert_eq!(super::exit_status(256), 1, "not 0: that would be success");
    assert_eq!(super::exit_status(-1), 1);
}

#[test]
fn base64_matches_rfc_4648_vectors() {
    for (input, output) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(json::base64(input.as_bytes()), output, "{input:?}");
    }
    assert_eq!(json::base64(&[0xfb, 0xff, 0xbf]), "+/+/");
}

#[test]
fn pod_stats_render_pod_then_containers() {
    let stats = PodStats {
        pod_id: "pod-7".into(),
        read_at: ts(1_700_000_000),
        pod: Some(LiveUsage {
            cpu_usage_ns: 1_500_000_000,
            memory_current_bytes: 3 * MIB,
            oom_kills: 1,
            memory_limit_hits: 4,
        }),
        containers: vec![
            ContainerStats {
                name: "web".into(),
                usage: Some(LiveUsage {
                    cpu_usage_ns: 1_250_000_000,
                    memory_current_bytes: 2 * MIB,
                    ..Default::default()
                }),
            },
            ContainerStats {
                name: "log".into(),
                usage: None,
            },
        ],
    };
    let text = render::pod_stats(&stats);
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["pod-7", "1.50s", "3Mi", "1", "4"],
            vec!["web", "1.25s", "2Mi", "0", "0"],
            vec!["log", "-", "-", "-", "-"],
        ]
    );
    assert!(text.lines().nth(2).unwrap().starts_with("  web"), "{text}");
    let v = json::to_value(&stats).unwrap();
    assert_eq!(v["pod"]["cpuUsageNs"], 1_500_000_000u64);
    assert_eq!(v["containers"][1]["usage"], serde_json::Value::Null);
    assert_eq!(v["readAt"], "2023-11-14T22:13:20Z");
}

fn vm_workload(id: &str, pool: &str, name: &str) -> Workload {
    Workload {
        id: id.into(),
        kind: WorkloadKind::Vm as i32,
        name: name.into(),
        pool_id: pool.into(),
        state: Some(workload::State::VmState(VmState::Running as i32)),
        running: true,
        reservation: Some(ResourceAmounts {
            cpu_millicores: 1000,
            memory_bytes: 544 * MIB,
        }),
        limits: Some(ResourceAmounts {
            cpu_millicores: 2000,
            memory_bytes: 544 * MIB,
        }),
        live: Some(LiveUsage {
            cpu_usage_ns: 125 * 1_000_000_000,
            memory_current_bytes: 300 * MIB,
            ..Default::default()
        }),
        vcpus: 2,
        guest_memory_bytes: 512 * MIB,
        ..Default::default()
    }
}

fn pod_workload(id: &str, pool: &str, name: &str) -> Workload {
    Workload {
        id: id.into(),
        kind: WorkloadKind::Pod as i32,
        name: name.into(),
        pool_id: pool.into(),
        state: Some(workload::State::PodState(PodState::Stopped as i32)),
        reason: "stopped on request".into(),
        running: false,
        reservation: Some(ResourceAmounts {
            cpu_millicores: 250,
            memory_bytes: 0,
        }),
        limits: Some(ResourceAmounts {
            cpu_millicores: 0,
            memory_bytes: 64 * MIB,
        }),
        live: None,
        containers: 2,
        ..Default::default()
    }
}

fn inventory() -> ListResourcePoolsResponse {
    let mut resp = tree();
    resp.pools[1].status.as_mut().unwrap().live = Some(LiveUsage {
        cpu_usage_ns: 130 * 1_000_000_000,
        memory_current_bytes: 310 * MIB,
        ..Default::default()
    });
    resp.workloads = vec![
        vm_workload("vm-3", "p-prod", "cp1"),
        pod_workload("pod-7", "p-prod", "web"),
        pod_workload("pod-9", "p-web", "api"),
        pod_workload("pod-12", "p-gone", "lost"),
    ];
    resp
}

#[test]
fn the_inventory_puts_workloads_beneath_their_pools() {
    let text = render::inventory(&inventory());
    let lines: Vec<&str> = text.lines().collect();
    let firsts: Vec<(&str, &str)> = lines
        .iter()
        .skip(1)
        .map(|l| {
            let mut cells = l.split_whitespace();
            (cells.next().unwrap(), cells.next().unwrap())
        })
        .collect();
    assert_eq!(
        firsts,
        [
            ("root", "pool"),
            ("prod", "pool"),
            ("cp1", "vm"),
            ("web", "pod"),
            ("web", "pool"),
            ("api", "pod"),
            ("test", "pool"),
            ("lost", "pod"),
        ],
        "{text}"
    );
    // Indented one level below their pool; a pool's workloads before its
    // child pools; workloads of a pool not listed last, unindented.
    for (line, indent) in [(2, 2), (3, 4), (4, 4), (5, 4), (6, 6), (7, 2), (8, 0)] {
        let spaces = lines[line].len() - lines[line].trim_start().len();
        assert_eq!(spaces, indent, "line {line}: {text}");
    }
    let header = lines[0];
    let col = |name: &str| header.find(name).unwrap_or_else(|| panic!("{name}"));
    let cell = |line: usize, from: &str, to: &str| lines[line][col(from)..col(to)].trim_end();
    // A pool: its spec's reservation and limit, its cgroup's live usage.
    assert_eq!(cell(2, "ID", "STATE"), "p-prod");
    assert_eq!(cell(2, "STATE", "RESERVED"), "-");
    assert_eq!(cell(2, "RESERVED", "LIMIT"), "1000m/2Gi");
    assert_eq!(cell(2, "LIMIT", "CPU TIME"), "4000m/-");
    assert_eq!(cell(2, "CPU TIME", "MEMORY"), "2m10s");
    assert_eq!(cell(2, "MEMORY", "DETAIL"), "310Mi");
    assert_eq!(&lines[2][col("DETAIL")..], "used 500m/512Mi");
    assert_eq!(cell(1, "CPU TIME", "MEMORY"), "-", "root: live not read");
    // A running VM.
    assert_eq!(cell(3, "ID", "STATE"), "vm-3");
    assert_eq!(cell(3, "STATE", "RESERVED"), "RUNNING");
    assert_eq!(cell(3, "RESERVED", "LIMIT"), "1000m/544Mi");
    assert_eq!(cell(3, "LIMIT", "CPU TIME"), "2000m/544Mi");
    assert_eq!(cell(3, "CPU TIME", "MEMORY"), "2m05s");
    assert_eq!(cell(3, "MEMORY", "DETAIL"), "300Mi");
    assert_eq!(&lines[3][col("DETAIL")..], "2 vcpus, 512Mi");
    // A stopped pod: no live usage, its reason.
    assert_eq!(cell(4, "ID", "STATE"), "pod-7");
    assert_eq!(cell(4, "STATE", "RESERVED"), "STOPPED");
    assert_eq!(cell(4, "RESERVED", "LIMIT"), "250m/0B");
    assert_eq!(cell(4, "LIMIT", "CPU TIME"), "-/64Mi");
    assert_eq!(cell(4, "CPU TIME", "MEMORY"), "-");
    assert_eq!(
        &lines[4][col("DETAIL")..],
        "2 containers; stopped on request"
    );
}

#[test]
fn a_long_reason_is_cut_in_the_inventory_table() {
    let mut response = inventory();
    let long = "é".repeat(300);
    let pod = response
        .workloads
        .iter_mut()
        .find(|w| w.id == "pod-7")
        .expect("pod-7 in the fixture");
    pod.reason = long;
    let text = render::inventory(&response);
    let row = text
        .lines()
        .find(|l| l.contains("pod-7"))
        .expect("pod-7's row");
    assert!(row.ends_with('…'), "{row}");
    assert!(row.chars().filter(|&c| c == 'é').count() < 80, "{row}");
}

#[test]
fn the_inventory_converts_to_json() {
    let v = json::to_value(&inventory()).unwrap();
    assert_eq!(
        v["pools"][1]["status"]["live"]["cpuUsageNs"],
        130_000_000_000u64
    );
    assert_eq!(v["pools"][0]["status"]["live"], serde_json::Value::Null);
    let vm = &v["workloads"][0];
    assert_eq!(vm["kind"], "WORKLOAD_KIND_VM");
    assert_eq!(vm["vmState"], "VM_STATE_RUNNING");
    assert!(vm.get("podState").is_none() && vm.get("state").is_none());
    assert_eq!(vm["live"]["memoryCurrentBytes"], 300 * MIB);
    assert_eq!(vm["vcpus"], 2);
    let pod = &v["workloads"][1];
    assert_eq!(pod["kind"], "WORKLOAD_KIND_POD");
    assert_eq!(pod["podState"], "POD_STATE_STOPPED");
    assert_eq!(pod["live"], serde_json::Value::Null);
    assert_eq!(pod["running"], false);
    assert_eq!(pod["containers"], 2);
    // Without --workloads the list is empty, not missing.
    assert_eq!(
        json::to_value(&tree()).unwrap()["workloads"],
        serde_json::json!([])
    );
}

#[test]
fn pool_quota_flags_include_max_pods() {
    let cli = parse(&[
        "pool",
        "create",
        "t",
        "--max-pods",
        "20",
        "--max-memory",
        "8Gi",
    ]);
    let Command::Pool(PoolCommand::Create { name, settings, .. }) = cli.command else {
        panic!("not pool create");
    };
    let quota = pool_spec(new_pool_spec(name), &settings).quota.unwrap();
    assert_eq!(
        (quota.max_pods, quota.max_memory_bytes, quota.max_vms),
        (20, 8 << 30, 0)
    );
}

// ---- networks ----

use super::args::parse_nic;
use super::cli::{NetworkCommand, NetworkCreate};
use super::run::network_spec;
use stratum_api::proto::{
    ListNetworksResponse, Network, NetworkAttachment, NetworkSpec, NetworkStatus, NicSpec,
    NicStatus,
};

fn network_create(args: &[&str]) -> NetworkCreate {
    let mut all = vec!["network", "create"];
    all.extend_from_slice(args);
    let Command::Network(NetworkCommand::Create(create)) = parse(&all).command else {
        panic!("not network create");
    };
    create
}

#[test]
fn network_create_flags_build_a_spec() {
    let spec = network_spec(network_create(&[
        "tenant-a",
        "--cidr",
        "10.20.0.0/24",
        "--bridge",
        "br-tenant-a",
        "--nat",
        "--namespace",
        "p-a",
        "--namespace",
        "p-b",
        "--nameserver",
        "10.20.0.1",
        "--nameserver",
        "fd00::53",
    ]));
    assert_eq!(
        spec,
        NetworkSpec {
            name: "tenant-a".into(),
            cidr: "10.20.0.0/24".into(),
            bridge: "br-tenant-a".into(),
            nat: true,
            namespaces: vec!["p-a".into(), "p-b".into()],
            nameservers: vec!["10.20.0.1".into(), "fd00::53".into()],
        }
    );
    // The minimum: every namespace, the derived bridge, no NAT.
    let spec = network_spec(network_create(&["lab", "--cidr", "192.168.50.0/29"]));
    assert_eq!(
        spec,
        NetworkSpec {
            name: "lab".into(),
            cidr: "192.168.50.0/29".into(),
            ..Default::default()
        }
    );
}

#[test]
fn network_subcommands_and_aliases() {
    assert!(matches!(
        parse(&["network", "get", "lab"]).command,
        Command::Network(NetworkCommand::Get { name }) if name == "lab"
    ));
    for list in ["list", "ls"] {
        assert!(matches!(
            parse(&["network", list, "-o", "json"]).command,
            Command::Network(NetworkCommand::List)
        ));
    }
    for delete in ["delete", "rm"] {
        assert!(matches!(
            parse(&["network", delete, "lab"]).command,
            Command::Network(NetworkCommand::Delete { name }) if name == "lab"
        ));
    }
}

#[test]
fn bad_network_arguments_are_usage_errors_that_say_why() {
    let create = |extra: &[&'static str]| -> Vec<&'static str> {
        ["network", "create", "lab"]
            .iter()
            .chain(extra.iter())
            .copied()
            .collect()
    };
    for (args, needle) in [
        (create(&[]), "--cidr"),
        (create(&["--cidr", "10.20.0.0"]), "no prefix length"),
        (create(&["--cidr", "10.20.0.0/33"]), "not in 0..=32"),
        (create(&["--cidr", "10.20.0.0/+8"]), "not in 0..=32"),
        (create(&["--cidr", "10.20.0/24"]), "is not an IPv4 address"),
        (create(&["--cidr", "fd00::/64"]), "is not an IPv4 address"),
        (
            create(&["--cidr", "10.20.0.0/24", "--nameserver", "dns.example"]),
            "expected an IPv4 or IPv6 address",
        ),
        (create(&["--cidr", "10.20.0.0/24", "--nat=no"]), "--nat"),
        (vec!["network", "create", "--cidr", "10.20.0.0/24"], "NAME"),
        (vec!["network", "get"], "NAME"),
        (vec!["network", "delete"], "NAME"),
    ] {
        let err = usage_error(&args);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn nics_on_a_network_take_an_optional_ipv4_address() {
    let n = parse_nic("network=tenant-a").unwrap();
    assert_eq!(
        n,
        NicSpec {
            network: "tenant-a".into(),
            ..Default::default()
        }
    );
    for ip in ["10.20.0.5", "10.20.0.5/24"] {
        let n = parse_nic(&format!("network=tenant-a,ip={ip},mac=06:00:0a:14:00:05")).unwrap();
        assert_eq!(n.addresses, [ip]);
        assert_eq!(
            (n.tap_name.as_str(), n.mac.as_str()),
            ("", "06:00:0a:14:00:05")
        );
    }
    let n = parse_nic("ip=10.20.0.7,network=lab,rx-bw=1Mi").unwrap();
    assert_eq!((n.network.as_str(), n.addresses.len()), ("lab", 1));
    assert!(n.rx_rate_limit.is_some());
    // The tap= form is as it was, static addressing and all.
    let n = parse_nic("tap=t0,ip=fd00::2/64,ip=10.0.0.2/24,gw=10.0.0.1,dns=1.1.1.1").unwrap();
    assert_eq!((n.tap_name.as_str(), n.network.as_str()), ("t0", ""));
    assert_eq!(n.addresses.len(), 2);
}

#[test]
fn bad_network_nics_say_why() {
    for (text, needle) in [
        (
            "mac=06:00:00:00:00:01",
            "tap=NAME or network=NAME is required",
        ),
        ("tap=t0,network=lab", "tap= and network= exclude each other"),
        ("network=", "network= needs a value"),
        ("network=lab,gw=10.20.0.1", "gw= is for tap= NICs only"),
        ("gw=10.20.0.1,network=lab", "gw= is for tap= NICs only"),
        ("network=lab,dns=10.20.0.1", "dns= is for tap= NICs only"),
        ("network=lab,ip=10.20.0.5,ip=10.20.0.6", "at most one ip="),
        (
            "network=lab,ip=fd00::5/64",
            "\"fd00::5\" is not an IPv4 address",
        ),
        (
            "network=lab,ip=10.20.0.5/40",
            "prefix length \"40\" is not in 0..=32",
        ),
        (
            "network=lab,ip=10.20.0.5/",
            "prefix length \"\" is not in 0..=32",
        ),
        ("network=lab,vlan=3", "unknown option \"vlan\""),
    ] {
        let err = parse_nic(text).unwrap_err();
        assert!(err.contains(needle), "{text:?}: {err}");
        assert!(err.starts_with("invalid --nic"), "{text:?}: {err}");
    }
    // Through the command line: a usage error naming the key.
    let err = usage_error(&[
        "vm",
        "create",
        "a",
        "--role",
        "worker",
        "--kernel",
        "k",
        "--nic",
        "network=lab,dns=1.1.1.1",
    ]);
    assert!(err.contains("dns= is for tap= NICs only"), "{err}");
}

#[test]
fn vm_create_takes_nics_on_networks() {
    let cli = parse(&[
        "vm",
        "create",
        "w-1",
        "--role",
        "worker",
        "--image",
        "stratum/node:bookworm",
        "--nic",
        "network=tenant-a,ip=10.20.0.5",
        "--nic",
        "tap=tap0",
    ]);
    let Command::Vm(VmCommand::Create(create)) = cli.command else {
        panic!("not vm create");
    };
    let spec = vm_spec(*create).unwrap();
    assert_eq!(spec.nics.len(), 2);
    assert_eq!(
        (
            spec.nics[0].network.as_str(),
            spec.nics[0].tap_name.as_str()
        ),
        ("tenant-a", "")
    );
    assert_eq!(spec.nics[0].addresses, ["10.20.0.5"]);
    assert_eq!(
        (
            spec.nics[1].network.as_str(),
            spec.nics[1].tap_name.as_str()
        ),
        ("", "tap0")
    );
}

#[test]
fn pod_run_takes_a_network() {
    let run = |extra: &[&str]| {
        let mut args = vec!["pod", "run", "web", "--image", "busybox"];
        args.extend_from_slice(extra);
        let Command::Pod(PodCommand::Run(run)) = parse(&args).command else {
            panic!("not pod run");
        };
        pod_spec(*run)
    };
    assert_eq!(run(&["--network", "tenant-a"]).network, "tenant-a");
    assert_eq!(run(&[]).network, "", "the agent's default network");
    let err = usage_error(&["pod", "run", "web", "--image", "busybox", "--network"]);
    assert!(err.contains("--network"), "{err}");
}

#[test]
fn a_pod_in_full_names_its_network() {
    let mut pod = two_container_pod();
    let line = |pod: &Pod| {
        render::pod_detail(pod)
            .lines()
            .find(|l| l.starts_with("NETWORK "))
            .map(|l| l["NETWORK".len()..].trim().to_string())
    };
    assert_eq!(line(&pod).as_deref(), Some("default"));
    pod.spec.as_mut().unwrap().network = "tenant-a".into();
    assert_eq!(line(&pod).as_deref(), Some("tenant-a"));
}

fn attachment(
    kind: &str,
    id: &str,
    nic: u32,
    address: &str,
    mac: &str,
    dev: &str,
) -> NetworkAttachment {
    NetworkAttachment {
        kind: kind.into(),
        id: id.into(),
        nic,
        namespace: "p-a".into(),
        address: address.into(),
        mac: mac.into(),
        host_device: dev.into(),
    }
}

fn tenant_network() -> Network {
    Network {
        spec: Some(NetworkSpec {
            name: "tenant-a".into(),
            cidr: "10.20.0.0/24".into(),
            bridge: String::new(),
            nat: true,
            namespaces: vec!["p-a".into(), "p-b".into()],
            nameservers: vec!["10.20.0.1".into(), "1.1.1.1".into()],
        }),
        status: Some(NetworkStatus {
            gateway: "10.20.0.1".into(),
            bridge: "st-tenant-a".into(),
            attachments: vec![
                attachment(
                    "vm",
                    "vm-3",
                    1,
                    "10.20.0.5/24",
                    "06:00:0a:14:00:05",
                    "t1234abcd",
                ),
                attachment("vm", "vm-4", 0, "10.20.0.6/24", "06:00:0a:14:00:06", ""),
                attachment("pod", "pod-7", 0, "10.20.0.7/24", "", "veth5678"),
            ],
            free_addresses: 250,
            created_at: ts(1_700_000_000),
        }),
    }
}

fn lab_network() -> Network {
    Network {
        spec: Some(NetworkSpec {
            name: "lab".into(),
            cidr: "192.168.50.0/29".into(),
            bridge: "br-lab".into(),
            ..Default::default()
        }),
        status: None,
    }
}

#[test]
fn networks_render_as_rows() {
    let text = render::network_table(&[tenant_network(), lab_network()]);
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], render::NETWORK_HEADER);
    assert_eq!(
        rows[1],
        [
            "tenant-a",
            "10.20.0.0/24",
            "10.20.0.1",
            "st-tenant-a",
            "yes",
            "p-a,p-b",
            "3"
        ]
    );
    // No status: the bridge asked for, every namespace.
    assert_eq!(
        rows[2],
        ["lab", "192.168.50.0/29", "-", "br-lab", "no", "*", "0"]
    );
    assert_eq!(rows.len(), 3, "{text}");
    assert_eq!(
        render::network_table(&[]),
        "NAME  CIDR  GATEWAY  BRIDGE  NAT  NAMESPACES  ATTACHED\n"
    );
}

#[test]
fn a_network_in_full_lists_its_attachments() {
    let text = render::network_detail(&tenant_network());
    let field = |name: &str| -> String {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}  ")))
            .unwrap_or_else(|| panic!("{name} in {text}"))[name.len()..]
            .trim()
            .to_string()
    };
    assert_eq!(field("NAME"), "tenant-a");
    assert_eq!(field("CIDR"), "10.20.0.0/24");
    assert_eq!(field("GATEWAY"), "10.20.0.1");
    assert_eq!(field("BRIDGE"), "st-tenant-a");
    assert_eq!(field("NAT"), "yes");
    assert_eq!(field("NAMESPACES"), "p-a, p-b");
    assert_eq!(field("NAMESERVERS"), "10.20.0.1, 1.1.1.1");
    assert_eq!(field("FREE"), "250");
    assert_eq!(field("CREATED"), "2023-11-14T22:13:20Z");
    assert_eq!(field("ATTACHED"), "3");
    let attachments: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("ATTACHMENT "))
        .map(str::trim)
        .collect();
    assert_eq!(
        attachments,
        [
            "vm vm-3/1 ns=p-a ip=10.20.0.5/24 mac=06:00:0a:14:00:05 dev=t1234abcd",
            "vm vm-4/0 ns=p-a ip=10.20.0.6/24 mac=06:00:0a:14:00:06 dev=-",
            "pod pod-7 ns=p-a ip=10.20.0.7/24 mac=- dev=veth5678",
        ],
        "{text}"
    );

    let text = render::network_detail(&lab_network());
    for want in [
        "NAT          no\n",
        "NAMESPACES   * (every namespace)\n",
        "NAMESERVERS  -\n",
        "GATEWAY      -\n",
        "BRIDGE       br-lab\n",
        "FREE         -\n",
        "ATTACHED     0\n",
    ] {
        assert!(text.contains(want), "{want:?} in {text}");
    }
    assert!(!text.contains("ATTACHMENT "), "{text}");
}

#[test]
fn networks_convert_to_json() {
    let v = json::to_value(&ListNetworksResponse {
        networks: vec![tenant_network(), lab_network()],
    })
    .unwrap();
    let tenant = &v["networks"][0];
    assert_eq!(tenant["spec"]["cidr"], "10.20.0.0/24");
    assert_eq!(tenant["spec"]["nat"], true);
    assert_eq!(tenant["status"]["freeAddresses"], 250);
    assert_eq!(tenant["status"]["createdAt"], "2023-11-14T22:13:20Z");
    let pod = &tenant["status"]["attachments"][2];
    assert_eq!(
        (&pod["kind"], &pod["hostDevice"]),
        (&serde_json::json!("pod"), &serde_json::json!("veth5678"))
    );
    assert_eq!(v["networks"][1]["status"], serde_json::Value::Null);
}

fn vm_on_networks() -> VirtualMachine {
    let mut vm = vm();
    let spec = vm.spec.as_mut().unwrap();
    spec.nics = vec![
        NicSpec {
            tap_name: "tap0".into(),
            mac: "52:54:00:12:34:56".into(),
            addresses: vec!["10.0.0.2/24".into()],
            gateway: "10.0.0.1".into(),
            ..Default::default()
        },
        NicSpec {
            network: "tenant-a".into(),
            ..Default::default()
        },
        NicSpec {
            network: "lab".into(),
            addresses: vec!["192.168.50.3".into()],
            ..Default::default()
        },
    ];
    vm.status.as_mut().unwrap().nics = vec![NicStatus {
        index: 1,
        network: "tenant-a".into(),
        mac: "06:00:0a:14:00:05".into(),
        address: "10.20.0.5/24".into(),
        gateway: "10.20.0.1".into(),
        host_device: "t1234abcd".into(),
        guest_addresses: vec!["10.20.0.5/24".into(), "fe80::4:aff:fe14:5/64".into()],
    }];
    vm
}

#[test]
fn vm_nics_on_networks_show_what_the_agent_set_up() {
    /// The value of the one `NIC i` line.
    fn nic(text: &str, i: u32) -> String {
        let key = format!("NIC {i} ");
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&key)).collect();
        assert_eq!(lines.len(), 1, "one line for {key:?}: {text}");
        lines[0][key.len()..].trim().to_string()
    }
    let text = render::vm_detail(&vm_on_networks());
    assert_eq!(
        nic(&text, 0),
        "tap0 mac=52:54:00:12:34:56 ip=10.0.0.2/24 gw=10.0.0.1"
    );
    assert_eq!(
        nic(&text, 1),
        "net=tenant-a mac=06:00:0a:14:00:05 ip=10.20.0.5/24 gw=10.20.0.1 dev=t1234abcd \
         guest=10.20.0.5/24,fe80::4:aff:fe14:5/64"
    );
    // No status for it yet: what the spec asks for.
    assert_eq!(nic(&text, 2), "net=lab mac=generated ip=192.168.50.3");
    // The lines others grep for are where they were, once each.
    for prefix in ["STATE ", "GUEST "] {
        assert_eq!(
            text.lines().filter(|l| l.starts_with(prefix)).count(),
            1,
            "{prefix:?}: {text}"
        );
    }

    // A stopped VM: no TAP, no guest; a status for a NIC the spec lacks
    // still shows.
    let mut stopped = vm_on_networks();
    let status = stopped.status.as_mut().unwrap();
    status.state = VmState::Stopped as i32;
    status.nics[0].host_device.clear();
    status.nics[0].guest_addresses.clear();
    status.nics.push(NicStatus {
        index: 7,
        network: "extra".into(),
        ..Default::default()
    });
    let text = render::vm_detail(&stopped);
    assert_eq!(
        nic(&text, 1),
        "net=tenant-a mac=06:00:0a:14:00:05 ip=10.20.0.5/24 gw=10.20.0.1 dev=- guest=-"
    );
    assert_eq!(nic(&text, 7), "net=extra mac=- ip=- gw=- dev=- guest=-");
    let v = json::to_value(&vm_on_networks()).unwrap();
    assert_eq!(v["spec"]["nics"][1]["network"], "tenant-a");
    assert_eq!(v["status"]["nics"][0]["hostDevice"], "t1234abcd");
    assert_eq!(
        v["status"]["nics"][0]["guestAddresses"][1],
        "fe80::4:aff:fe14:5/64"
    );
}

#[test]
fn clone_and_snapshot_commands_parse() {
    let Command::Vm(VmCommand::Clone {
        snapshot,
        name,
        count,
        label,
    }) = parse(&[
        "vm", "clone", "snap-3", "web", "--count", "10", "--label", "tier=web",
    ])
    .command
    else {
        panic!("not vm clone");
    };
    assert_eq!(
        (snapshot.as_str(), name.as_str(), count),
        ("snap-3", "web", 10)
    );
    assert_eq!(label, [vec![("tier".to_string(), "web".to_string())]]);
    let Command::Vm(VmCommand::Clone { count, .. }) = parse(&["vm", "clone", "s", "one"]).command
    else {
        panic!("not vm clone");
    };
    assert_eq!(count, 1, "one clone unless told");
    assert!(matches!(
        parse(&["vm", "snapshot", "vm-1", "gold"]).command,
        Command::Vm(VmCommand::Snapshot { .. })
    ));
    assert!(matches!(
        parse(&["snapshot", "ls", "--vm", "vm-1"]).command,
        Command::Snapshot(super::cli::SnapshotCommand::List { vm: Some(_) })
    ));
    let err =
        Cli::try_parse_from(["nodectl", "vm", "clone", "s", "w", "--count", "many"]).unwrap_err();
    assert_eq!(err.exit_code(), 2);
}

#[test]
fn a_snapshot_shows_its_sizes_and_clones() {
    let snapshot = stratum_api::proto::VmSnapshot {
        id: "snap-3".into(),
        name: "golden".into(),
        vm_id: "vm-2".into(),
        spec: Some(VmSpec {
            name: "parent".into(),
            vcpus: 1,
            memory_mib: 384,
            ..Default::default()
        }),
        memory_bytes: 230_000_000,
        disk_bytes: 512 * MIB,
        clones: vec!["vm-4".into(), "vm-5".into()],
        created_at: None,
    };
    let table = render::snapshot_table(std::slice::from_ref(&snapshot));
    let row = table.lines().nth(1).unwrap();
    assert!(row.starts_with("snap-3"), "{table}");
    assert!(row.contains("512Mi") && row.contains(" 2 "), "{table}");
    let detail = render::snapshot_detail(&snapshot);
    assert!(detail.contains("vm-2 (parent)"), "{detail}");
    assert!(detail.contains("vm-4, vm-5"), "{detail}");
    assert!(detail.contains("1 vCPUs, 384Mi"), "{detail}");
}
