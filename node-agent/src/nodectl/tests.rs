//! Unit tests of nodectl's command line, pool-tree rendering and JSON.

use clap::{CommandFactory, Parser};

use super::cli::{Cli, Command, PoolCommand, VmCommand};
use super::run::{new_pool_spec, pool_spec, vm_spec};
use super::size::MIB;
use super::{code_name, json, render};
use crate::proto::{
    Allocation, ListResourcePoolsResponse, Quota, ResourcePool, ResourcePoolSpec,
    ResourcePoolStatus, ResourceUsage, Shares, SharesLevel, VirtualMachine, VmEvent, VmRole,
    VmSpec, VmState, VmStatus, WorkloadUsage,
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
fn pools_convert_to_json_with_proto_field_names() {
    let v = json::pools(&tree());
    let prod = &v["pools"][1];
    assert_eq!(prod["id"], "p-prod");
    assert_eq!(prod["spec"]["name"], "prod");
    assert_eq!(prod["spec"]["cpu"]["shares"]["level"], "SHARES_LEVEL_HIGH");
    assert_eq!(prod["spec"]["memory"]["reservation"], 2u64 << 30);
    assert_eq!(prod["spec"]["quota"], serde_json::Value::Null);
    assert_eq!(prod["status"]["cpu"]["reserved_by_children"], 500);
    assert_eq!(prod["status"]["usage"]["running_workloads"], 1);
    assert_eq!(prod["child_pool_ids"], serde_json::json!(["p-web"]));
    assert_eq!(v["pools"][0]["spec"]["quota"]["max_vms"], 10);
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
    let v = json::vm(&vm());
    assert_eq!(v["spec"]["role"], "VM_ROLE_CONTROL_PLANE");
    assert_eq!(v["spec"]["memory_mib"], 2048);
    assert_eq!(v["spec"]["labels"]["tier"], "cp");
    assert_eq!(v["spec"]["cpu_limit_millicores"], 1500);
    assert_eq!(
        v["spec"]["cpu_reservation_millicores"],
        serde_json::Value::Null
    );
    assert_eq!(v["status"]["state"], "VM_STATE_RUNNING");
    assert_eq!(v["status"]["created_at"], "2023-11-14T22:13:20Z");
    assert_eq!(v["status"]["started_at"], serde_json::Value::Null);
    let unknown = VmEvent {
        vm_id: "vm-1".into(),
        old_state: VmState::Running as i32,
        new_state: 99,
        ..Default::default()
    };
    let e = json::vm_event(&unknown);
    assert_eq!(
        (e["old_state"].as_str(), e["new_state"].as_i64()),
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
    };
    assert_eq!(
        render::event_line(&event),
        "-  vm-1  RUNNING -> FAILED  vmm exited with signal 9"
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
impl crate::proto::host_server::Host for FakeHost {
    async fn get_info(
        &self,
        _: tonic::Request<crate::proto::GetHostInfoRequest>,
    ) -> Result<tonic::Response<crate::proto::HostInfo>, tonic::Status> {
        Ok(tonic::Response::new(crate::proto::HostInfo {
            hostname: "fake".into(),
            cpus: 2,
            ..Default::default()
        }))
    }

    async fn get_capacity(
        &self,
        _: tonic::Request<crate::proto::GetHostCapacityRequest>,
    ) -> Result<tonic::Response<crate::proto::HostCapacity>, tonic::Status> {
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
            .tls_config(crate::tls::server_tls_config(dir).unwrap())
            .unwrap();
    }
    let server = builder
        .add_service(crate::proto::host_server::HostServer::new(FakeHost))
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
    let mut client = crate::proto::host_client::HostClient::new(channel);
    let info = client
        .get_info(crate::proto::GetHostInfoRequest {})
        .await
        .map_err(|s| super::status_text(&s))?;
    Ok(info.into_inner().hostname)
}

#[tokio::test]
async fn connects_over_mtls_by_ip_and_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    crate::tls::generate_dev_pki(tmp.path(), &[]).unwrap();
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
    let status = crate::proto::host_client::HostClient::new(channel)
        .get_capacity(crate::proto::GetHostCapacityRequest {})
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
    crate::tls::generate_dev_pki(tmp.path(), &[]).unwrap();
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

fn layer_event(done: u64, phase: crate::proto::LayerPhase) -> crate::proto::PullImageProgress {
    use crate::proto::pull_image_progress::Event;
    crate::proto::PullImageProgress {
        event: Some(Event::Layer(crate::proto::LayerProgress {
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
    use crate::proto::LayerPhase::{Done, Downloading, Unpacking};
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
