//! `stratum.v1.PodService` against real parts, as root: a real agent
//! process, a local registry (`docker-registry`) holding a busybox image
//! built by the fixture, crun, real cgroups below a resource pool, the
//! real pod network (own bridge, CIDR and nftables table per test agent),
//! overlayfs over the pulled layers (the fixture: `stratum_testkit::pod_agent`).

// Test helpers may panic: a broken fixture fails the test that uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use stratum_api::proto::image_service_client::ImageServiceClient;
use stratum_api::proto::pod_service_client::PodServiceClient;
use stratum_api::proto::{
    ContainerSpec, ContainerState, CreateResourcePoolRequest, GetPodRequest, ListPodsRequest,
    ListResourcePoolsRequest, LogsRequest, PodResources, PodSpec, PodState, PodStatsRequest,
    PortMapping, RemoveImageRequest, RemovePodRequest, ResourceAmounts, ResourcePoolSpec,
    RestartPolicy, RunPodRequest, RuntimeClass, StopPodRequest, WorkloadKind,
};
use stratum_testkit::pod_agent::{exec, logs, PodAgent};
use stratum_testkit::test_agent::TestAgent;
use tonic::transport::Channel;
use tonic::Code;

const MIB: u64 = 1 << 20;

fn pod_spec(name: &str, pool: &str, containers: Vec<ContainerSpec>) -> PodSpec {
    PodSpec {
        name: name.into(),
        pool_id: pool.into(),
        containers,
        ..Default::default()
    }
}

async fn run(
    client: &mut PodServiceClient<Channel>,
    spec: PodSpec,
) -> Result<stratum_api::proto::Pod, tonic::Status> {
    client
        .run_pod(RunPodRequest { spec: Some(spec) })
        .await
        .map(|r| r.into_inner())
}

async fn get(client: &mut PodServiceClient<Channel>, id: &str) -> stratum_api::proto::Pod {
    client
        .get_pod(GetPodRequest { id: id.into() })
        .await
        .expect("get pod")
        .into_inner()
}

fn status(pod: &stratum_api::proto::Pod) -> &stratum_api::proto::PodStatus {
    pod.status.as_ref().expect("status")
}

fn container_status<'a>(
    pod: &'a stratum_api::proto::Pod,
    name: &str,
) -> &'a stratum_api::proto::ContainerStatus {
    status(pod)
        .containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name} in {pod:?}"))
}

/// Polls the pod until `done` holds (or panics after `within`).
async fn wait_for(
    client: &mut PodServiceClient<Channel>,
    id: &str,
    within: Duration,
    what: &str,
    done: impl Fn(&stratum_api::proto::Pod) -> bool,
) -> stratum_api::proto::Pod {
    let deadline = Instant::now() + within;
    loop {
        let pod = get(client, id).await;
        if done(&pod) {
            return pod;
        }
        assert!(Instant::now() < deadline, "{what}: {pod:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn http_get(addr: SocketAddrV4) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply)
}

async fn create_pool(agent: &TestAgent, spec: ResourcePoolSpec) -> String {
    agent
        .pools()
        .await
        .create(CreateResourcePoolRequest {
            parent_id: String::new(),
            spec: Some(spec),
        })
        .await
        .expect("create pool")
        .into_inner()
        .id
}

const WEB: &str = "mkdir -p /www && echo pod-local > /www/index.html && echo web up && exec httpd -f -p 8080 -h /www";

/// A pod's root (root of the pod's user namespace only) binds a port
/// below 1024, as in a containerd pod: its netns lets anyone, since the
/// container has no capability over it; and ICMP echo sockets are open to
/// every group there.
#[tokio::test(flavor = "multi_thread")]
async fn a_pods_root_binds_port_80() {
    let pa = PodAgent::start("pods-lowport").await;
    let mut client = pa.pods().await;
    let spec = pod_spec(
        "low",
        "",
        vec![pa.container(
            "web",
            "mkdir -p /www && echo low-port > /www/index.html && exec httpd -f -p 80 -h /www",
        )],
    );
    let pod = run(&mut client, spec).await.expect("run pod");
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let out = exec(
            &mut client,
            &pod.id,
            "web",
            &["wget", "-q", "-O", "-", "http://127.0.0.1:80/"],
        )
        .await
        .expect("exec wget");
        if out.exit_code == 0 {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        let state = get(&mut client, &pod.id).await;
        assert!(
            Instant::now() < deadline,
            "httpd never answered on port 80: {out:?} {:?}",
            logs(&mut client, &pod.id, "web", None).await
        );
        assert_eq!(
            container_status(&state, "web").state(),
            ContainerState::Running,
            "httpd exited: {:?}",
            logs(&mut client, &pod.id, "web", None).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(body.trim(), "low-port");
    // ICMP echo sockets for every group, as containerd's pods have them.
    // Read from the host: in the pod's user namespace the host's group
    // ids of the range show as unmapped.
    let netns = pa.run_dir().join("netns").join(&pod.id);
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["cat", "/proc/sys/net/ipv4/ping_group_range"])
        .output()
        .expect("nsenter");
    let range = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        range.split_whitespace().collect::<Vec<_>>(),
        ["0", "2147483647"],
        "{out:?}"
    );
}

/// Two containers sharing the pod's localhost, hostname and address; exec,
/// logs, stats, the inventory, a host port, then stop and remove with
/// nothing left behind.
#[tokio::test(flavor = "multi_thread")]
async fn pods_two_containers_share_localhost_and_leave_nothing() {
    let pa = PodAgent::start("pods-pair").await;
    let pool = create_pool(
        &pa.agent,
        ResourcePoolSpec {
            name: "tenant".into(),
            ..Default::default()
        },
    )
    .await;
    let mut client = pa.pods().await;
    let mut spec = pod_spec(
        "pair",
        &pool,
        vec![
            pa.container("web", WEB),
            pa.container("client", "echo hello-from-client; exec sleep 1000"),
        ],
    );
    spec.port_mappings = vec![PortMapping {
        host_port: 30080,
        container_port: 8080,
        ..Default::default()
    }];
    spec.resources = Some(PodResources {
        requests: Some(ResourceAmounts {
            cpu_millicores: 100,
            memory_bytes: 32 * MIB,
        }),
        limits: Some(ResourceAmounts {
            cpu_millicores: 1000,
            memory_bytes: 256 * MIB,
        }),
    });
    let pod = run(&mut client, spec.clone()).await.expect("run pod");
    let id = pod.id.clone();
    assert!(id.starts_with("pod-"), "{id}");
    assert_eq!(status(&pod).state(), PodState::Running, "{pod:#?}");
    assert_eq!(
        status(&pod).namespace,
        pool,
        "top-level pool is the namespace"
    );
    for name in ["web", "client"] {
        let c = container_status(&pod, name);
        assert_eq!(c.state(), ContainerState::Running, "{pod:#?}");
        assert!(c.pid > 0 && !c.image_id.is_empty(), "{c:?}");
    }
    let ip: Ipv4Addr = status(&pod).ip.parse().expect("pod ip");

    // The same name again in the namespace: ALREADY_EXISTS, nothing made.
    let again = run(&mut client, spec).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");

    // localhost is shared: the client reaches web's server on 127.0.0.1.
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let out = exec(
            &mut client,
            &id,
            "client",
            &["wget", "-q", "-O", "-", "http://127.0.0.1:8080/"],
        )
        .await
        .expect("exec wget");
        if out.exit_code == 0 {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(Instant::now() < deadline, "web never answered: {out:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(body.trim(), "pod-local");
    let host = exec(&mut client, &id, "client", &["hostname"])
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&host.stdout).trim(), "pair");
    let failing = exec(
        &mut client,
        &id,
        "client",
        &["sh", "-c", "echo oops >&2; exit 7"],
    )
    .await
    .unwrap();
    assert_eq!(
        (failing.exit_code, failing.stderr.as_slice()),
        (7, &b"oops\n"[..])
    );

    // The host reaches the pod at its address and through the host port.
    let direct = http_get(SocketAddrV4::new(ip, 8080)).expect("host → pod");
    assert!(direct.contains("pod-local"), "{direct}");
    let gateway = pa.net.cidr.gateway();
    let mapped = http_get(SocketAddrV4::new(gateway, 30080)).expect("host port → pod");
    assert!(mapped.contains("pod-local"), "{mapped}");

    // Logs in CRI format, read back as records (the agent converts the
    // output every 50 ms: wait for the first record).
    let deadline = Instant::now() + Duration::from_secs(10);
    while logs(&mut client, &id, "client", None).await.is_empty() {
        assert!(Instant::now() < deadline, "no log record");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lines = logs(&mut client, &id, "client", None).await;
    assert_eq!(lines, vec!["hello-from-client".to_string()]);
    assert_eq!(
        logs(&mut client, &id, "web", Some(1)).await,
        vec!["web up".to_string()]
    );
    let files =
        std::fs::read_to_string(pa.agent.dir.join(format!("data/pods/{id}/logs/client.log")))
            .unwrap();
    assert!(files.contains(" stdout F hello-from-client"), "{files}");

    // Stats and the one inventory read the cgroups.
    let stats = client
        .stats(PodStatsRequest { pod_id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(stats.pod.unwrap().memory_current_bytes > 0);
    assert!(
        stats.containers.iter().all(|c| c.usage.is_some()),
        "{stats:?}"
    );
    let inventory = pa
        .agent
        .pools()
        .await
        .list(ListResourcePoolsRequest {
            root_id: String::new(),
            include_workloads: true,
        })
        .await
        .unwrap()
        .into_inner();
    let workload = inventory
        .workloads
        .iter()
        .find(|w| w.id == id)
        .expect("pod in the inventory");
    assert_eq!(workload.kind(), WorkloadKind::Pod);
    assert_eq!(workload.pool_id, pool);
    assert!(workload.running && workload.containers == 2, "{workload:?}");
    assert_eq!(workload.reservation.unwrap().memory_bytes, 32 * MIB);
    assert!(
        workload.live.is_some_and(|l| l.memory_current_bytes > 0),
        "{workload:?}"
    );
    let pool_status = inventory.pools.iter().find(|p| p.id == pool).unwrap();
    assert_eq!(pool_status.workload_ids, vec![id.clone()]);

    // The pod's cgroup is below its pool's, with its limits and the
    // weight of its CPU request (100m → 102 shares).
    let cgroup = pa.agent.cgroup(&format!("{pool}/{id}"));
    assert!(cgroup.exists());
    let enforced = stratum_runtime::OciResources::effective(&cgroup).unwrap();
    assert_eq!(
        enforced.memory_limit_bytes,
        Some((256 * MIB) as i64),
        "{enforced:?}"
    );
    assert_eq!(
        enforced
            .cpu_quota_us
            .zip(enforced.cpu_period_us)
            .map(|(q, p)| q * 1000 / p as i64),
        Some(1000),
        "1000m: {enforced:?}"
    );
    assert_eq!(enforced.cpu_shares, Some(102), "{enforced:?}");
    assert_eq!(enforced.pids_limit, Some(4096), "default: {enforced:?}");

    // nodectl sees it.
    let out = pa.agent.nodectl(&["pod", "ls"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("pair"),
        "{out:?}"
    );

    // An image in use cannot be removed.
    let mut images = ImageServiceClient::new(pa.agent.channel().await);
    let busy = images
        .remove(RemoveImageRequest {
            name: pa.reference.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(busy.code(), Code::FailedPrecondition, "{busy:?}");

    // Running pods cannot be removed; stop, then remove.
    let refused = client
        .remove_pod(RemovePodRequest { id: id.clone() })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let stopped = client
        .stop_pod(StopPodRequest {
            id: id.clone(),
            grace_period_seconds: Some(2),
        })
        .await
        .expect("stop")
        .into_inner();
    assert_eq!(status(&stopped).state(), PodState::Stopped, "{stopped:#?}");
    assert!(status(&stopped).ip.is_empty());
    for name in ["web", "client"] {
        let c = container_status(&stopped, name);
        assert_eq!(c.state(), ContainerState::Exited, "{c:?}");
        assert_eq!(c.pid, 0);
    }
    assert!(!cgroup.exists(), "pod cgroup removed at stop");
    assert!(
        http_get(SocketAddrV4::new(ip, 8080)).is_err(),
        "pod address gone"
    );
    // Logs stay until removal.
    assert_eq!(logs(&mut client, &id, "client", None).await.len(), 1);
    client
        .remove_pod(RemovePodRequest { id: id.clone() })
        .await
        .expect("remove");
    let gone = client
        .get_pod(GetPodRequest { id: id.clone() })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert!(!pa.agent.dir.join(format!("data/pods/{id}")).exists());
    let mounts = stratum_runtime::mountinfo::read_self().unwrap();
    assert!(
        !mounts
            .iter()
            .any(|m| m.mount_point.starts_with(&pa.agent.dir)),
        "no mount left under the data dir"
    );
    images
        .remove(RemoveImageRequest {
            name: pa.reference.clone(),
        })
        .await
        .expect("the image is free once the pod is removed");

    // The pool that held the pod leaves no directory in any hierarchy,
    // the ones only the OCI runtime wrote to included.
    let root = pa.agent.hierarchy().root().unwrap();
    let mapping = stratum_runtime::CgroupMapping::detect(&root).unwrap();
    let pool_dirs = mapping.host_dirs(&format!("{}/{pool}", mapping.runtime_path(&root).unwrap()));
    assert!(
        pool_dirs.iter().any(|d| d.exists()),
        "the pool has directories before its delete: {pool_dirs:?}"
    );
    stratum_api::proto::resource_pools_client::ResourcePoolsClient::new(pa.agent.channel().await)
        .delete(stratum_api::proto::DeleteResourcePoolRequest { id: pool.clone() })
        .await
        .expect("delete the pool");
    let left: Vec<_> = pool_dirs.iter().filter(|d| d.exists()).collect();
    assert!(left.is_empty(), "the deleted pool's cgroups stay: {left:?}");

    // A stopped agent under test leaves nothing in any hierarchy: its root
    // goes from the ones only the OCI runtime wrote to as well.
    let root_dirs = mapping.host_dirs(&mapping.runtime_path(&root).unwrap());
    assert!(root_dirs.iter().any(|d| d.exists()));
    drop(pa);
    let left: Vec<_> = root_dirs.iter().filter(|d| d.exists()).collect();
    assert!(
        left.is_empty(),
        "the agent's cgroups stay after the test: {left:?}"
    );
}

/// Admission: a pod fits a pool with room and is refused by a full one,
/// leaving nothing; bad specs get their codes.
#[tokio::test(flavor = "multi_thread")]
async fn pods_are_admitted_into_pools_with_room_only() {
    let pa = PodAgent::start("pods-admit").await;
    let reserved = |mem: u64| ResourceAmounts {
        cpu_millicores: 0,
        memory_bytes: mem,
    };
    let pool = create_pool(
        &pa.agent,
        ResourcePoolSpec {
            name: "small".into(),
            memory: Some(stratum_api::proto::Allocation {
                reservation: 64 * MIB,
                expandable_reservation: false,
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    let mut client = pa.pods().await;
    let with_request = |name: &str, mem: u64| {
        let mut spec = pod_spec(name, &pool, vec![pa.container("main", "exec sleep 1000")]);
        spec.resources = Some(PodResources {
            requests: Some(reserved(mem)),
            limits: Some(reserved(128 * MIB)),
        });
        spec
    };
    let first = run(&mut client, with_request("first", 48 * MIB))
        .await
        .expect("fits");
    assert_eq!(status(&first).state(), PodState::Running);
    let refused = run(&mut client, with_request("second", 32 * MIB))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let listed = client
        .list_pods(stratum_api::proto::ListPodsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pods;
    assert_eq!(listed.len(), 1, "the refused pod left no record");
    let pool_cgroup = pa.agent.cgroup(&pool);
    let children = pool_cgroup.children().unwrap();
    assert_eq!(
        children,
        vec![first.id.clone()],
        "the refused pod left no cgroup"
    );

    // Bad input: each with its code, nothing made.
    let mut missing = pod_spec("ghost", &pool, vec![pa.container("main", "true")]);
    missing.containers[0].image = "127.0.0.1:1/nothing:here".into();
    assert_eq!(
        run(&mut client, missing).await.unwrap_err().code(),
        Code::NotFound
    );
    let mut micro = pod_spec("micro", &pool, vec![]);
    micro.runtime_class = RuntimeClass::Microvm as i32;
    assert_eq!(
        run(&mut client, micro).await.unwrap_err().code(),
        Code::Unimplemented
    );
    let mut below = with_request("below", 256 * MIB);
    below.name = "below".into();
    assert_eq!(
        run(&mut client, below).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let dup = pod_spec(
        "dup",
        &pool,
        vec![pa.container("a", "true"), pa.container("a", "true")],
    );
    assert_eq!(
        run(&mut client, dup).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let no_pool = pod_spec("nopool", "pool-999", vec![pa.container("a", "true")]);
    assert_eq!(
        run(&mut client, no_pool).await.unwrap_err().code(),
        Code::NotFound
    );
    let mut one_byte = pod_spec("onebyte", &pool, vec![pa.container("a", "true")]);
    one_byte.containers[0].limits = Some(stratum_api::proto::ResourceAmounts {
        memory_bytes: 1,
        ..Default::default()
    });
    let refused = run(&mut client, one_byte).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("memory limit"), "{refused:?}");
    let long_name = pod_spec(&"p".repeat(10_000), &pool, vec![pa.container("a", "true")]);
    let refused = run(&mut client, long_name).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().len() < 1024,
        "{}",
        refused.message().len()
    );
    let listed = client
        .list_pods(stratum_api::proto::ListPodsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pods;
    assert_eq!(listed.len(), 1);

    // A pods quota counts defined pods, running or not.
    let capped = create_pool(
        &pa.agent,
        ResourcePoolSpec {
            name: "capped".into(),
            quota: Some(stratum_api::proto::Quota {
                max_pods: 1,
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    let ticker = pa.container("ticker", "for i in 1 2 3; do echo tick $i; sleep 0.2; done");
    let one = run(&mut client, pod_spec("one", &capped, vec![ticker]))
        .await
        .expect("within the quota");
    // Following the log streams records as written and ends with the
    // container.
    let mut stream = client
        .logs(LogsRequest {
            pod_id: one.id.clone(),
            container_name: "ticker".into(),
            follow: true,
            tail_lines: None,
        })
        .await
        .expect("follow")
        .into_inner();
    let mut ticks = Vec::new();
    let followed = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(record) = stream.message().await.expect("record") {
            ticks.push(String::from_utf8_lossy(&record.message).into_owned());
        }
    })
    .await;
    assert!(
        followed.is_ok(),
        "the followed stream ended with the container"
    );
    assert_eq!(ticks, ["tick 1", "tick 2", "tick 3"]);
    wait_for(
        &mut client,
        &one.id,
        Duration::from_secs(10),
        "idle stop",
        |p| status(p).state() == PodState::Stopped,
    )
    .await;
    let over = run(&mut client, pod_spec("two", &capped, vec![]))
        .await
        .unwrap_err();
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
    client
        .remove_pod(RemovePodRequest { id: one.id.clone() })
        .await
        .expect("remove");
    run(&mut client, pod_spec("two", &capped, vec![]))
        .await
        .expect("room after remove");

    // Once the first stops, its reservation is free again.
    client
        .stop_pod(StopPodRequest {
            id: first.id.clone(),
            grace_period_seconds: Some(0),
        })
        .await
        .unwrap();
    let second = run(&mut client, with_request("second", 32 * MIB))
        .await
        .expect("room after stop");
    client
        .stop_pod(StopPodRequest {
            id: second.id.clone(),
            grace_period_seconds: Some(0),
        })
        .await
        .unwrap();
}

/// A container over its memory limit is OOM-killed and reported; with
/// nothing left to run the pod stops on its own. A failing container is
/// restarted by the on-failure policy.
#[tokio::test(flavor = "multi_thread")]
async fn pods_report_oom_kills_and_restart_failures() {
    let pa = PodAgent::start("pods-oom").await;
    let mut client = pa.pods().await;
    let mut hog = pa.container(
        "hog",
        "echo start; exec dd if=/dev/zero of=/dev/null bs=128M count=1",
    );
    hog.limits = Some(ResourceAmounts {
        cpu_millicores: 0,
        memory_bytes: 32 * MIB,
    });
    let pod = run(&mut client, pod_spec("hog", "", vec![hog]))
        .await
        .expect("run");
    let ended = wait_for(
        &mut client,
        &pod.id,
        Duration::from_secs(60),
        "OOM kill",
        |p| status(p).state() == PodState::Stopped,
    )
    .await;
    let c = container_status(&ended, "hog");
    assert_eq!(c.state(), ContainerState::OomKilled, "{c:?}");
    assert_eq!((c.exit_code, c.reason.as_str()), (Some(137), "OOMKilled"));
    assert_eq!(status(&ended).reason, "every container ended");
    assert_eq!(status(&ended).namespace, "root");

    // Over the pod's limit (the container has none of its own).
    let mut bounded = pod_spec(
        "bounded",
        "",
        vec![pa.container("hog", "exec dd if=/dev/zero of=/dev/null bs=128M count=1")],
    );
    bounded.resources = Some(PodResources {
        requests: None,
        limits: Some(ResourceAmounts {
            cpu_millicores: 0,
            memory_bytes: 32 * MIB,
        }),
    });
    let pod = run(&mut client, bounded).await.expect("run");
    let ended = wait_for(
        &mut client,
        &pod.id,
        Duration::from_secs(60),
        "pod OOM",
        |p| status(p).state() == PodState::Stopped,
    )
    .await;
    assert_eq!(
        container_status(&ended, "hog").state(),
        ContainerState::OomKilled,
        "{ended:#?}"
    );

    let mut flaky = pod_spec("flaky", "", vec![pa.container("main", "echo run; exit 3")]);
    flaky.restart_policy = RestartPolicy::OnFailure as i32;
    let pod = run(&mut client, flaky).await.expect("run");
    let waiting = wait_for(
        &mut client,
        &pod.id,
        Duration::from_secs(20),
        "first exit",
        |p| container_status(p, "main").restart_at.is_some(),
    )
    .await;
    let c = container_status(&waiting, "main");
    assert_eq!(
        (c.state(), c.exit_code, c.restart_count),
        (ContainerState::Exited, Some(3), 1)
    );
    assert_eq!(
        status(&waiting).state(),
        PodState::Running,
        "a restart is pending"
    );
    // The back-off is 10 s; the second run appends to the same log.
    let restarted = wait_for(
        &mut client,
        &pod.id,
        Duration::from_secs(30),
        "restart",
        |p| container_status(p, "main").restart_count >= 2,
    )
    .await;
    assert!(
        container_status(&restarted, "main").id.ends_with("-1"),
        "a fresh run id"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = logs(&mut client, &pod.id, "main", None).await;
        if lines.len() >= 2 || Instant::now() > deadline {
            assert_eq!(lines, vec!["run", "run"]);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
        .stop_pod(StopPodRequest {
            id: pod.id.clone(),
            grace_period_seconds: Some(0),
        })
        .await
        .unwrap();
    let after = get(&mut client, &pod.id).await;
    assert!(container_status(&after, "main").restart_at.is_none());
}

/// Agent kill -9 with pods running: the restarted agent takes them back
/// (same pids, exec still works, still counted in the pool); a container
/// that died meanwhile is recorded as ended.
#[tokio::test(flavor = "multi_thread")]
async fn pods_survive_agent_kill9() {
    let mut pa = PodAgent::start("pods-kill9").await;
    let mut client = pa.pods().await;
    let spec = pod_spec(
        "durable",
        "",
        vec![
            pa.container("keep", "exec sleep 1000"),
            pa.container("victim", "exec sleep 1000"),
        ],
    );
    let pod = run(&mut client, spec).await.expect("run");
    let keep_pid = container_status(&pod, "keep").pid;
    let victim_pid = container_status(&pod, "victim").pid;
    let ip = status(&pod).ip.clone();

    pa.agent.kill9();
    // SAFETY: kill(2) on a pid we just read; a stale pid is harmless here.
    unsafe { libc::kill(victim_pid as i32, libc::SIGKILL) };
    pa.agent.spawn();
    let mut client = pa.pods().await;
    let back = wait_for(
        &mut client,
        &pod.id,
        Duration::from_secs(20),
        "victim recorded",
        |p| container_status(p, "victim").state() != ContainerState::Running,
    )
    .await;
    assert_eq!(status(&back).state(), PodState::Running, "{back:#?}");
    assert_eq!(status(&back).ip, ip, "same address");
    let keep = container_status(&back, "keep");
    assert_eq!(
        (keep.state(), keep.pid),
        (ContainerState::Running, keep_pid)
    );
    let victim = container_status(&back, "victim");
    assert_eq!(victim.state(), ContainerState::Exited, "{victim:?}");
    let out = exec(&mut client, &pod.id, "keep", &["echo", "still here"])
        .await
        .expect("exec after restart");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still here\n");
    let root = pa
        .agent
        .pools()
        .await
        .get(stratum_api::proto::GetResourcePoolRequest { id: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(root.workload_ids, vec![pod.id.clone()]);

    // A re-adopted container is stopped like any other.
    let stopped = client
        .stop_pod(StopPodRequest {
            id: pod.id.clone(),
            grace_period_seconds: Some(5),
        })
        .await
        .expect("stop")
        .into_inner();
    assert_eq!(status(&stopped).state(), PodState::Stopped);
    assert!(
        !Path::new(&format!("/proc/{keep_pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{keep_pid}/stat"))
                .map_or(true, |s| s.contains(") Z "))
    );
}

/// Pods of one namespace (top-level pool) reach each other; other
/// namespaces only where an `--allow-namespace` policy lets them, one way.
/// A pod cannot claim a namespace that is not its pool's; host ports stay
/// in their range; a container has no raw sockets and a pod a task limit.
/// This agent runs its containers with runc, the alternative runtime.
#[tokio::test(flavor = "multi_thread")]
async fn pods_tenants_are_isolated_unless_allowed() {
    // A fresh agent's ids start at 1: alpha, beta and gamma, made first,
    // are pool-1, pool-2 and pool-3 (checked below), so beta → alpha is
    // the policy pool-2:pool-1.
    let pa = PodAgent::start_with(
        "pods-tenants",
        &[
            "--oci-runtime",
            "runc",
            "--allow-namespace",
            "pool-2:pool-1",
            "--pod-pids-limit",
            "64",
        ],
    )
    .await;
    let mut tenants = std::collections::BTreeMap::new();
    for (tenant, want) in [("alpha", "pool-1"), ("beta", "pool-2"), ("gamma", "pool-3")] {
        let spec = ResourcePoolSpec {
            name: tenant.into(),
            ..Default::default()
        };
        let id = create_pool(&pa.agent, spec).await;
        assert_eq!(id, want, "the policy above assumed this id");
        tenants.insert(tenant, id);
    }
    let mut client = pa.pods().await;
    let mut claimed = pod_spec("claims", &tenants["gamma"], vec![pa.container("web", WEB)]);
    claimed.namespace = tenants["alpha"].clone();
    let e = run(&mut client, claimed)
        .await
        .expect_err("another namespace");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Host ports: only in the range (22, 7443 are outside), never one a
    // host process listens on.
    let held = std::net::TcpListener::bind("0.0.0.0:30999").unwrap();
    for (port, code) in [
        (22, Code::InvalidArgument),
        (7443, Code::InvalidArgument),
        (30999, Code::AlreadyExists),
    ] {
        let mut spec = pod_spec("ported", &tenants["gamma"], vec![pa.container("web", WEB)]);
        spec.port_mappings = vec![PortMapping {
            host_port: port,
            container_port: 8080,
            ..Default::default()
        }];
        let e = run(&mut client, spec).await.expect_err("host port refused");
        assert_eq!(e.code(), code, "host port {port}: {e:?}");
    }
    drop(held);
    let mut ips = std::collections::BTreeMap::new();
    for (name, tenant) in [
        ("a1", "alpha"),
        ("a2", "alpha"),
        ("b1", "beta"),
        ("g1", "gamma"),
    ] {
        let mut spec = pod_spec(name, &tenants[tenant], vec![pa.container("web", WEB)]);
        if name == "a2" {
            // Naming its own namespace is allowed.
            spec.namespace = tenants[tenant].clone();
        }
        let pod = run(&mut client, spec).await.expect("run");
        assert_eq!(status(&pod).namespace, tenants[tenant]);
        ips.insert(name, (pod.id.clone(), status(&pod).ip.clone()));
    }
    // Every server answers the host (which reaches every pod) first.
    for (id, ip) in ips.values() {
        let addr = SocketAddrV4::new(ip.parse().expect("pod ip"), 8080);
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get(addr).is_err() {
            if Instant::now() > deadline {
                let said = logs(&mut client, id, "web", None).await;
                panic!("{addr} ({id}) never answered; its log: {said:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(
        reaches(&mut client, &ips, "a2", "a1").await,
        "same namespace"
    );
    assert!(
        reaches(&mut client, &ips, "b1", "a1").await,
        "beta → alpha is allowed"
    );
    assert!(
        !reaches(&mut client, &ips, "a1", "b1").await,
        "alpha → beta is not"
    );
    assert!(
        !reaches(&mut client, &ips, "g1", "a1").await,
        "gamma → alpha is not"
    );
    // No raw sockets: CAP_NET_RAW is not in a container's set.
    let out = exec(
        &mut client,
        &ips["g1"].0,
        "web",
        &["ping", "-c", "1", "127.0.0.1"],
    )
    .await
    .expect("exec");
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        out.exit_code != 0 && err.contains("permission"),
        "ping (a raw socket) worked: {out:?}"
    );
    // The pod's task limit (--pod-pids-limit 64) stops a fork loop.
    // (The sleeps let go of the exec's output, or it would wait for them.)
    let fork_loop = "i=0; while [ $i -lt 100 ]; do sleep 60 </dev/null >/dev/null 2>&1 & \
                     i=$((i+1)); done; echo done";
    let out = exec(&mut client, &ips["g1"].0, "web", &["sh", "-c", fork_loop])
        .await
        .expect("exec");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fork"),
        "100 forks under a limit of 64: {out:?}"
    );
    let log = pa.agent.log();
    assert!(log.contains("runc"), "pods run with runc: {log}");
}

/// Whether pod `from`'s web container gets pod `to`'s page within 3 s.
/// `timeout`, not `wget -T`: Debian's static busybox 1.35 wget crashes
/// with -T.
async fn reaches(
    client: &mut PodServiceClient<Channel>,
    pods: &std::collections::BTreeMap<&str, (String, String)>,
    from: &str,
    to: &str,
) -> bool {
    let url = format!("http://{}:8080/", pods[to].1);
    let command = ["timeout", "3", "wget", "-q", "-O", "-", &url];
    let out = exec(client, &pods[from].0, "web", &command)
        .await
        .expect("exec");
    if out.exit_code != 0 {
        eprintln!("{from} → {to}: {out:?}");
    }
    out.exit_code == 0
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pod id `nodectl pod run` printed.
fn pod_id_of(out: &std::process::Output) -> String {
    stdout(out)
        .lines()
        .find_map(|l| l.strip_prefix("ID"))
        .map(|v| v.trim().to_string())
        .expect("the pod's id")
}

/// The operator's path: `nodectl pod` against the real agent — run, exec
/// passing the exit code on, add a container, logs (with the default
/// container rule), the inventory, stop and remove.
#[tokio::test(flavor = "multi_thread")]
async fn pods_through_nodectl() {
    let pa = PodAgent::start("pods-cli").await;
    let image = pa.reference.as_str();
    let out = pa.agent.nodectl(&[
        "pod",
        "run",
        "cli",
        "--image",
        image,
        "--memory-limit",
        "64Mi",
        "--",
        "sh",
        "-c",
        "echo hi; exec sleep 1000",
    ]);
    assert!(out.status.success(), "{out:?}");
    let id = pod_id_of(&out);
    assert!(stdout(&out).contains("RUNNING"), "{out:?}");

    let out = pa
        .agent
        .nodectl(&["pod", "exec", &id, "--", "sh", "-c", "echo ok; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(stdout(&out), "ok\n");

    let out = pa.agent.nodectl(&[
        "pod",
        "add-container",
        &id,
        "side",
        "--image",
        image,
        "--",
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{out:?}");
    let mut client = pa.pods().await;
    let pod = get(&mut client, &id).await;
    assert_eq!(
        container_status(&pod, "side").state(),
        ContainerState::Running
    );

    // Two containers: logs needs -c.
    let out = pa.agent.nodectl(&["pod", "logs", &id]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("-c"),
        "{out:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = pa
            .agent
            .nodectl(&["pod", "logs", &id, "-c", "cli", "--tail", "1"]);
        assert!(out.status.success(), "{out:?}");
        if stdout(&out) == "hi\n" {
            break;
        }
        assert!(Instant::now() < deadline, "{out:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let out = pa.agent.nodectl(&["pool", "list", "--workloads"]);
    let line = stdout(&out)
        .lines()
        .find(|l| l.contains(&id))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(line.contains("pod") && line.contains("RUNNING"), "{out:?}");

    let out = pa.agent.nodectl(&["pod", "stop", &id, "--grace", "0"]);
    assert!(
        out.status.success() && stdout(&out).contains("STOPPED"),
        "{out:?}"
    );
    let out = pa.agent.nodectl(&["pod", "rm", &id]);
    assert!(out.status.success(), "{out:?}");
    let out = pa.agent.nodectl(&["pod", "get", &id]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NOT_FOUND"),
        "{out:?}"
    );
}

/// A pod may name a network of its namespace: it gets its address there,
/// and reaches a pod of its namespace on the default network through the
/// host's routing; a network not of its namespace, or none of that name,
/// is refused. A network is deleted only once its pods are gone.
#[tokio::test(flavor = "multi_thread")]
async fn pods_on_a_network_of_their_namespace() {
    let pa = PodAgent::start_with("pods-nets", &["--oci-runtime", "runc"]).await;
    let alpha = create_pool(
        &pa.agent,
        ResourcePoolSpec {
            name: "alpha".into(),
            ..Default::default()
        },
    )
    .await;
    let beta = create_pool(
        &pa.agent,
        ResourcePoolSpec {
            name: "beta".into(),
            ..Default::default()
        },
    )
    .await;
    struct Bridge;
    impl Drop for Bridge {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", "st-pods-a"])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
    let _bridge = Bridge;
    let cidr = format!("10.199.{}.0/24", std::process::id() % 250);
    let mut networks =
        stratum_api::proto::networks_client::NetworksClient::new(pa.agent.channel().await);
    networks
        .create(stratum_api::proto::CreateNetworkRequest {
            spec: Some(stratum_api::proto::NetworkSpec {
                name: "pods-a".into(),
                cidr: cidr.clone(),
                namespaces: vec![alpha.clone()],
                ..Default::default()
            }),
        })
        .await
        .expect("create network");
    let mut client = pa.pods().await;
    let mut on_net = pod_spec("a1", &alpha, vec![pa.container("web", WEB)]);
    on_net.network = "pods-a".into();
    let a1 = run(&mut client, on_net).await.expect("run on pods-a");
    let a1_ip: Ipv4Addr = status(&a1).ip.parse().expect("pod ip");
    let prefix = cidr.trim_end_matches(".0/24");
    assert!(a1_ip.to_string().starts_with(prefix), "{a1_ip} in {cidr}");
    let a2 = run(
        &mut client,
        pod_spec("a2", &alpha, vec![pa.container("web", WEB)]),
    )
    .await
    .expect("run on the default network");
    let addr = SocketAddrV4::new(a1_ip, 8080);
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pods = std::collections::BTreeMap::from([
        ("a1", (a1.id.clone(), status(&a1).ip.clone())),
        ("a2", (a2.id.clone(), status(&a2).ip.clone())),
    ]);
    assert!(
        reaches(&mut client, &pods, "a2", "a1").await,
        "across networks, one namespace"
    );

    let mut foreign = pod_spec("b1", &beta, vec![pa.container("web", WEB)]);
    foreign.network = "pods-a".into();
    let e = run(&mut client, foreign)
        .await
        .expect_err("not beta's network");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let mut nowhere = pod_spec("b2", &beta, vec![pa.container("web", WEB)]);
    nowhere.network = "no-such-net".into();
    let e = run(&mut client, nowhere)
        .await
        .expect_err("no such network");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    let delete = stratum_api::proto::DeleteNetworkRequest {
        name: "pods-a".into(),
    };
    let e = networks
        .delete(delete.clone())
        .await
        .expect_err("a1 is on it");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    for id in [&a1.id, &a2.id] {
        client
            .stop_pod(StopPodRequest {
                id: id.clone(),
                grace_period_seconds: Some(1),
            })
            .await
            .expect("stop");
        client
            .remove_pod(RemovePodRequest { id: id.clone() })
            .await
            .expect("remove");
    }
    networks.delete(delete).await.expect("deleted once empty");
    assert!(!Path::new("/sys/class/net/st-pods-a").exists());
}

/// The PodService's security context, through nodectl's flags: who the
/// process is, its capabilities, its root's mode, a host volume, the
/// pod's sysctls; and the pod security level's refusals, which make no
/// pod.
#[tokio::test(flavor = "multi_thread")]
async fn pods_run_as_their_security_context_says() {
    let volumes = tempfile::tempdir().unwrap();
    std::fs::write(volumes.path().join("note"), "host note").unwrap();
    let root = volumes.path().display().to_string();
    let pa = PodAgent::start_with("pods-sec", &["--mount-root", &root]).await;
    let image = pa.reference.as_str();
    let volume = format!("{root}:/host:ro");
    let out = pa.agent.nodectl(&[
        "pod",
        "run",
        "sec",
        "--image",
        image,
        "--user",
        "app",
        "--group-add",
        "4321",
        "--cap-drop",
        "ALL",
        "--read-only",
        "-v",
        &volume,
        "--sysctl",
        "net.ipv4.ip_local_port_range=20000 30000",
        "--sysctl",
        "kernel.shm_rmid_forced=1",
        "--",
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{out:?}");
    let id = pod_id_of(&out);
    let script = "id -u; id -G; grep CapBnd /proc/self/status; cat /host/note; echo; \
                  touch /x 2>&1; touch /host/x 2>&1; \
                  cat /proc/sys/net/ipv4/ip_local_port_range /proc/sys/kernel/shm_rmid_forced";
    let out = pa
        .agent
        .nodectl(&["pod", "exec", &id, "--", "sh", "-c", script]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"1000"), "{text}");
    let mut groups: Vec<&str> = lines.get(1).unwrap_or(&"").split_whitespace().collect();
    groups.sort_unstable();
    assert_eq!(groups, ["1000", "4321", "50"], "{text}");
    assert!(text.contains("CapBnd:\t0000000000000000"), "{text}");
    assert!(text.contains("host note"), "{text}");
    assert_eq!(
        text.matches("Read-only file system").count(),
        2,
        "the root and the volume: {text}"
    );
    // The pod's own namespaces' settings.
    assert!(text.ends_with("20000\t30000\n1\n"), "{text}");

    // Refused at the baseline level: an added capability, a host path
    // outside the mount roots. Neither makes a pod.
    for refused in [
        vec!["--cap-add", "SYS_ADMIN"],
        vec!["-v", "/etc:/host-etc:ro"],
        vec!["--sysctl", "kernel.msgmax=1024"],
        vec!["--privileged"],
        vec!["--host-network"],
        vec!["--host-pid"],
    ] {
        let mut args = vec!["pod", "run", "refused", "--image", image];
        args.extend(&refused);
        args.extend(["--", "sleep", "1"]);
        let out = pa.agent.nodectl(&args);
        assert!(!out.status.success(), "{refused:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("PERMISSION_DENIED"),
            "{refused:?}: {out:?}"
        );
    }
    // Asking for the host's user namespace at the baseline level gets the
    // pod one of its own all the same.
    let out = pa.agent.nodectl(&[
        "pod",
        "run",
        "hostusers",
        "--image",
        image,
        "--host-users",
        "--",
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{out:?}");
    let hostusers = pod_id_of(&out);
    let out = pa
        .agent
        .nodectl(&["pod", "exec", &hostusers, "--", "cat", "/proc/self/uid_map"]);
    assert!(
        stdout(&out)
            .split_whitespace()
            .nth(1)
            .is_some_and(|h| h.starts_with('2')),
        "{out:?}"
    );
    for step in [&["pod", "stop", "--grace", "0"][..], &["pod", "rm"][..]] {
        let mut args = step.to_vec();
        args.push(&hostusers);
        let out = pa.agent.nodectl(&args);
        assert!(out.status.success(), "{out:?}");
    }

    // A setting of the host's, not the pod's: not a pod's to ask for.
    let out = pa.agent.nodectl(&[
        "pod",
        "run",
        "host-wide",
        "--image",
        image,
        "--sysctl",
        "vm.swappiness=1",
        "--",
        "sleep",
        "1",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("INVALID_ARGUMENT"),
        "{out:?}"
    );
    let mut client = pa.pods().await;
    let listed = client
        .list_pods(ListPodsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pods;
    assert_eq!(listed.len(), 1, "{listed:?}");
}

/// At the privileged pod security level a privileged pod's container is
/// what Kubernetes' privileged containers are: host root, every
/// capability, no seccomp filter, nothing masked, a writable /sys.
#[tokio::test(flavor = "multi_thread")]
async fn privileged_pods_run_where_the_level_allows_them() {
    let pa = PodAgent::start_with("pods-priv", &["--pod-security", "privileged"]).await;
    let image = pa.reference.as_str();
    let out = pa.agent.nodectl(&[
        "pod",
        "run",
        "priv",
        "--image",
        image,
        "--privileged",
        "--",
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{out:?}");
    let id = pod_id_of(&out);
    let script = "cat /proc/self/uid_map; grep -E '^(CapEff|Seccomp|NoNewPrivs):' /proc/self/status; \
                  grep ' /sys ' /proc/self/mounts; grep -q ' /proc/kcore ' /proc/self/mounts || echo kcore-unmasked";
    let out = pa
        .agent
        .nodectl(&["pod", "exec", &id, "--", "sh", "-c", script]);
    assert!(
        out.status.success(),
        "{out:?} {:?}",
        pa.agent.nodectl(&["pod", "get", &id, "-o", "json"])
    );
    let text = stdout(&out);
    // The host's user namespace: the whole id range, unshifted.
    assert_eq!(
        text.lines()
            .next()
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["0", "0", "4294967295"]),
        "{text}"
    );
    // Every capability the agent has (this machine's root lacks some).
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    let bounding = own.lines().find(|l| l.starts_with("CapBnd:")).unwrap();
    let effective = bounding.replace("CapBnd:", "CapEff:");
    assert!(text.contains(&effective), "{text} vs {effective}");
    assert!(text.contains("Seccomp:\t0"), "{text}");
    assert!(text.contains("NoNewPrivs:\t0"), "{text}");
    assert!(text.contains(" /sys sysfs rw,"), "{text}");
    // /proc/kcore is masked (a mount over it) for every other container.
    assert!(text.contains("kcore-unmasked"), "{text}");

    // A pod may ask for the host's user namespace here, and gets it.
    let uid_map = |args: &[&str]| {
        let mut run = vec!["pod", "run"];
        run.extend_from_slice(args);
        run.extend(["--image", image, "--", "sleep", "1000"]);
        let out = pa.agent.nodectl(&run);
        assert!(out.status.success(), "{out:?}");
        let id = pod_id_of(&out);
        let out = pa
            .agent
            .nodectl(&["pod", "exec", &id, "--", "cat", "/proc/self/uid_map"]);
        (
            id,
            stdout(&out)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        )
    };
    assert_eq!(uid_map(&["host", "--host-users"]).1, "0 0 4294967295");
    // Without asking: a user namespace of the pod's own.
    let (plain, own) = uid_map(&["plain"]);
    assert!(own.starts_with("0 2") && own.ends_with(" 65536"), "{own}");

    // The host's network, hostname, IPC and PID namespaces.
    let out = pa.agent.nodectl(&[
        "pod",
        "run",
        "hostns",
        "--image",
        image,
        "--host-network",
        "--host-ipc",
        "--host-pid",
        "--",
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{out:?}");
    let hostns = pod_id_of(&out);
    let links = "for n in net ipc pid uts; do readlink /proc/self/ns/$n; done; hostname";
    let out = pa
        .agent
        .nodectl(&["pod", "exec", &hostns, "--", "sh", "-c", links]);
    assert!(out.status.success(), "{out:?}");
    let mut host_view = String::new();
    for kind in ["net", "ipc", "pid", "uts"] {
        // The agent's namespaces are this test's.
        let link = std::fs::read_link(format!("/proc/self/ns/{kind}")).unwrap();
        host_view.push_str(&format!("{}\n", link.display()));
    }
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    host_view.push_str(&hostname);
    assert_eq!(stdout(&out), host_view);
    let pod = get(&mut pa.pods().await, &hostns).await;
    assert_eq!(status(&pod).ip, "", "no address of its own");
    // On the host's network a host port maps only to itself.
    let out = pa.agent.nodectl(&[
        "pod",
        "run",
        "badport",
        "--image",
        image,
        "--host-network",
        "--port",
        "30080:80",
        "--",
        "sleep",
        "1",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("INVALID_ARGUMENT"),
        "{out:?}"
    );
    for step in [&["pod", "stop", "--grace", "0"][..], &["pod", "rm"][..]] {
        let mut args = step.to_vec();
        args.push(&hostns);
        let out = pa.agent.nodectl(&args);
        assert!(out.status.success(), "{out:?}");
    }
    // The host's /dev/shm is still there (nothing of the host's was removed).
    assert!(std::path::Path::new("/dev/shm").is_dir());

    // A privileged container needs a privileged pod.
    let mut client = pa.pods().await;
    let mut side = pa.container("side", "sleep 1000");
    side.security = Some(stratum_api::proto::SecurityContext {
        privileged: true,
        ..Default::default()
    });
    let err = client
        .create_container(stratum_api::proto::CreateContainerRequest {
            pod_id: plain.clone(),
            container: Some(side),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}
