//! The Kubernetes CRI (`runtime.v1`) against real parts, as root: a real
//! agent process serving its CRI socket, driven by the CRI's own
//! generated client (the `k8s-cri` crate, as a kubelet's), with a local
//! registry, crun, real cgroups and the real pod network
//! (`stratum_testkit::pod_agent`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use stratum_api::proto::{CreateResourcePoolRequest, ListPodsRequest, ResourcePoolSpec};
use stratum_testkit::pod_agent::PodAgent;
use tonic::transport::Channel;
use tonic::Code;

type Runtime = RuntimeServiceClient<Channel>;

const WEB: &str = "mkdir -p /www && echo pod-local > /www/index.html && echo web up && exec httpd -f -v -p 8080 -h /www";

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sandbox_config(name: &str, attempt: u32, log_dir: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        labels: labels(&[("app", name), ("io.kubernetes.pod.name", name)]),
        annotations: labels(&[("note", "kept as sent")]),
        ..Default::default()
    }
}

fn container_config(name: &str, image: &str, script: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        labels: labels(&[("container", name)]),
        annotations: labels(&[("io.kubernetes.container.restartCount", "0")]),
        log_path: format!("{name}/0.log"),
        ..Default::default()
    }
}

async fn run_sandbox(
    rt: &mut Runtime,
    config: cri::PodSandboxConfig,
) -> Result<String, tonic::Status> {
    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

async fn create(
    rt: &mut Runtime,
    sandbox: &str,
    config: cri::ContainerConfig,
) -> Result<String, tonic::Status> {
    rt.create_container(cri::CreateContainerRequest {
        pod_sandbox_id: sandbox.into(),
        config: Some(config),
        sandbox_config: None,
    })
    .await
    .map(|r| r.into_inner().container_id)
}

async fn sandbox_status(rt: &mut Runtime, id: &str) -> cri::PodSandboxStatus {
    rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: false,
    })
    .await
    .expect("sandbox status")
    .into_inner()
    .status
    .expect("status")
}

async fn container_status(rt: &mut Runtime, id: &str) -> cri::ContainerStatus {
    rt.container_status(cri::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .expect("container status")
    .into_inner()
    .status
    .expect("status")
}

async fn list_sandboxes(rt: &mut Runtime) -> Vec<cri::PodSandbox> {
    rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .expect("list sandboxes")
        .into_inner()
        .items
}

async fn list_containers(rt: &mut Runtime, sandbox: &str) -> Vec<cri::Container> {
    rt.list_containers(cri::ListContainersRequest {
        filter: Some(cri::ContainerFilter {
            pod_sandbox_id: sandbox.into(),
            ..Default::default()
        }),
    })
    .await
    .expect("list containers")
    .into_inner()
    .containers
}

async fn exec(rt: &mut Runtime, id: &str, cmd: &[&str]) -> cri::ExecSyncResponse {
    rt.exec_sync(cri::ExecSyncRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout: 20,
    })
    .await
    .expect("exec sync")
    .into_inner()
}

/// Pulls `reference` through the CRI; its image ref.
async fn pull(images: &mut ImageServiceClient<Channel>, reference: &str) -> String {
    images
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: reference.into(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .expect("pull")
        .into_inner()
        .image_ref
}

async fn start(rt: &mut Runtime, id: &str) -> Result<(), tonic::Status> {
    rt.start_container(cri::StartContainerRequest {
        container_id: id.into(),
    })
    .await
    .map(|_| ())
}

async fn wait_state(
    rt: &mut Runtime,
    id: &str,
    state: cri::ContainerState,
) -> cri::ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = container_status(rt, id).await;
        if status.state == state as i32 {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "container {id} never {state:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The log file's lines once `wanted` shows in it.
fn wait_log(path: &Path, wanted: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(wanted) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never had {wanted:?}: {text:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a kubelet does for a two-container pod, end to end: image pull
/// and status, the sandbox, both containers sharing its network, exec,
/// logs where the kubelet asked, stats, stop, remove; the pod also seen
/// through the agent's own PodService.
#[tokio::test]
async fn a_kubelets_pod_runs_through_the_cri() {
    let pods = PodAgent::start("cri-life").await;
    let channel = pods.agent.cri_channel().await;
    let mut rt = RuntimeServiceClient::new(channel.clone());
    let mut images = ImageServiceClient::new(channel);

    let version = rt
        .version(cri::VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(version.runtime_name, "stratum");
    assert_eq!(version.runtime_api_version, "v1");
    let status = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let conditions = status.status.unwrap().conditions;
    for kind in ["RuntimeReady", "NetworkReady"] {
        assert!(
            conditions.iter().any(|c| c.r#type == kind && c.status),
            "{kind} in {conditions:?}"
        );
    }

    // The image: pulled through the CRI, then found by its reference.
    let pulled = pull(&mut images, &pods.reference).await;
    assert!(pulled.starts_with("sha256:"), "{pulled}");
    let image = images
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: pods.reference.clone(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .expect("the pulled image");
    assert_eq!(image.id, pulled);
    assert!(image.repo_tags.contains(&pods.reference), "{image:?}");
    assert!(image.size > 0);
    let fs = images
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(fs.image_filesystems[0].used_bytes.unwrap().value > 0);

    // The sandbox, once: the same metadata and attempt again is refused.
    let logs = tempfile::tempdir().unwrap();
    let mut config = sandbox_config("web", 0, logs.path());
    config.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec![
            "default.svc.cluster.local".into(),
            "svc.cluster.local".into(),
        ],
        options: vec!["ndots:5".into()],
    });
    let sandbox = run_sandbox(&mut rt, config.clone())
        .await
        .expect("run sandbox");
    let again = run_sandbox(&mut rt, config.clone()).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    assert_eq!(list_sandboxes(&mut rt).await.len(), 1);
    let status = sandbox_status(&mut rt, &sandbox).await;
    assert_eq!(status.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(status.metadata, config.metadata);
    assert_eq!(status.labels, config.labels);
    assert_eq!(status.annotations, config.annotations);
    let ip = status.network.expect("a pod IP").ip;
    assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "{ip}");
    // A unique prefix names it too (as crictl users type them).
    let prefix = &sandbox[..sandbox.len() - 1];
    if list_sandboxes(&mut rt)
        .await
        .iter()
        .filter(|s| s.id.starts_with(prefix))
        .count()
        == 1
    {
        assert_eq!(sandbox_status(&mut rt, prefix).await.id, sandbox);
    }

    // The same pod through the agent's own API, in the root pool.
    let listed = pods
        .pods()
        .await
        .list_pods(ListPodsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pods;
    let agent_pod = listed
        .iter()
        .find(|p| p.id == sandbox)
        .expect("in ListPods");
    let agent_name = &agent_pod.spec.as_ref().unwrap().name;
    assert!(agent_name.starts_with("web-"), "{agent_name}");

    // Two containers sharing the sandbox's network namespace.
    let web = create(&mut rt, &sandbox, container_config("web", &pulled, WEB))
        .await
        .expect("create web");
    // The client asks for a quarter core (as shares) and an OOM score.
    let mut client_config =
        container_config("client", &pods.reference, "echo client up; exec sleep 1000");
    client_config.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            cpu_shares: 256,
            oom_score_adj: 500,
            ..Default::default()
        }),
        ..Default::default()
    });
    let client = create(&mut rt, &sandbox, client_config)
        .await
        .expect("create client");
    let dup = create(&mut rt, &sandbox, container_config("web", &pulled, WEB))
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists, "{dup:?}");
    assert_eq!(list_containers(&mut rt, &sandbox).await.len(), 2);
    let created = container_status(&mut rt, &web).await;
    assert_eq!(created.state, cri::ContainerState::ContainerCreated as i32);
    start(&mut rt, &web).await.expect("start web");
    start(&mut rt, &client).await.expect("start client");
    let running = wait_state(&mut rt, &web, cri::ContainerState::ContainerRunning).await;
    assert_eq!(running.labels, labels(&[("container", "web")]));
    assert_eq!(running.image_ref, pulled);
    let log_path = logs.path().join("web/0.log");
    assert_eq!(running.log_path, log_path.display().to_string());
    let text = wait_log(&log_path, "web up");
    assert!(
        text.lines().any(|l| l.ends_with(" stdout F web up")),
        "not the CRI log format: {text:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let fetched = loop {
        let out = exec(
            &mut rt,
            &client,
            &["wget", "-q", "-O", "-", "http://127.0.0.1:8080/"],
        )
        .await;
        if out.exit_code == 0 || Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        String::from_utf8_lossy(&fetched.stdout).trim(),
        "pod-local",
        "{fetched:?}"
    );
    // The pod's resolv.conf from its DNS settings, its hostname and hosts.
    let etc = exec(
        &mut rt,
        &client,
        &["cat", "/etc/resolv.conf", "/etc/hostname", "/etc/hosts"],
    )
    .await;
    let etc = String::from_utf8_lossy(&etc.stdout).to_string();
    assert!(
        etc.starts_with(
            "search default.svc.cluster.local svc.cluster.local\n\
             nameserver 10.96.0.10\noptions ndots:5\nweb\n"
        ),
        "{etc}"
    );
    assert!(etc.contains(&format!("{ip}\tweb\n")), "{etc}");

    // The kubelet's log rotation: rename, reopen; what comes next goes to
    // a new file under the name.
    let rotated = logs.path().join("web/0.log.20261206-120000");
    std::fs::rename(&log_path, &rotated).unwrap();
    rt.reopen_container_log(cri::ReopenContainerLogRequest {
        container_id: web.clone(),
    })
    .await
    .expect("reopen log");
    assert!(log_path.exists());
    let again = exec(
        &mut rt,
        &client,
        &["wget", "-q", "-O", "-", "http://127.0.0.1:8080/"],
    )
    .await;
    assert_eq!(again.exit_code, 0, "{again:?}");
    wait_log(&log_path, "response:200");
    assert!(std::fs::read_to_string(&rotated)
        .unwrap()
        .contains("web up"));
    let oom = exec(&mut rt, &client, &["cat", "/proc/1/oom_score_adj"]).await;
    assert_eq!(
        String::from_utf8_lossy(&oom.stdout).trim(),
        "500",
        "{oom:?}"
    );

    // New limits reach the container's cgroup and its status; one below
    // what a container can run in is refused and changes nothing.
    let info = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: sandbox.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner()
        .info;
    let info: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    let pod_cgroup = info["cgroupPath"].as_str().unwrap().to_string();
    let update = |memory: i64| cri::UpdateContainerResourcesRequest {
        container_id: web.clone(),
        linux: Some(cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: memory,
            ..Default::default()
        }),
        ..Default::default()
    };
    rt.update_container_resources(update(64 << 20))
        .await
        .expect("update resources");
    let cgroup = pods.agent.cgroup(&format!("{pod_cgroup}/{web}"));
    let enforced = stratum_runtime::OciResources::effective(&cgroup).unwrap();
    assert_eq!(enforced.memory_limit_bytes, Some(64 << 20), "{enforced:?}");
    if let Some(shares) = enforced.cpu_shares {
        // cgroup v1 shows shares as written (v2 converts them to a weight).
        assert_eq!(shares, 512, "{enforced:?}");
        let client_cgroup = pods.agent.cgroup(&format!("{pod_cgroup}/{client}"));
        let client_resources = stratum_runtime::OciResources::effective(&client_cgroup).unwrap();
        assert_eq!(
            client_resources.cpu_shares,
            Some(256),
            "{client_resources:?}"
        );
    }
    assert_eq!(
        enforced
            .cpu_quota_us
            .map(|q| q * 1000 / i64::try_from(enforced.cpu_period_us.unwrap()).unwrap()),
        Some(500),
        "{enforced:?}"
    );
    let resources = container_status(&mut rt, &web).await.resources.unwrap();
    assert_eq!(resources.linux.unwrap().memory_limit_in_bytes, 64 << 20);
    let tiny = rt.update_container_resources(update(1)).await.unwrap_err();
    assert_eq!(tiny.code(), Code::InvalidArgument, "{tiny:?}");
    let enforced = stratum_runtime::OciResources::effective(&cgroup).unwrap();
    assert_eq!(enforced.memory_limit_bytes, Some(64 << 20));

    // Stats of a container and of the sandbox.
    let stats = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: web.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(stats.attributes.unwrap().id, web);
    assert!(stats.memory.unwrap().working_set_bytes.unwrap().value > 0);
    assert!(stats.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
    let pod_stats = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: sandbox.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(pod_stats.linux.unwrap().containers.len(), 2);

    // Stopped, a CRI container stays stopped and the sandbox ready: the
    // kubelet restarts containers and stops sandboxes, not the agent.
    for id in [&web, &client] {
        rt.stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 5,
        })
        .await
        .expect("stop");
        wait_state(&mut rt, id, cri::ContainerState::ContainerExited).await;
    }
    let again = start(&mut rt, &web).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    let reopen = rt
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: web.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reopen.code(), Code::FailedPrecondition, "{reopen:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        sandbox_status(&mut rt, &sandbox).await.state,
        cri::PodSandboxState::SandboxReady as i32
    );

    // Removal, idempotent as the CRI asks.
    for _ in 0..2 {
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: web.clone(),
        })
        .await
        .expect("remove container");
    }
    let left: Vec<String> = list_containers(&mut rt, &sandbox)
        .await
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(left, vec![client.clone()]);
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: sandbox.clone(),
    })
    .await
    .expect("stop sandbox");
    assert_eq!(
        sandbox_status(&mut rt, &sandbox).await.state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    for _ in 0..2 {
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        })
        .await
        .expect("remove sandbox");
    }
    assert!(list_sandboxes(&mut rt).await.is_empty());
    assert!(pods
        .pods()
        .await
        .list_pods(ListPodsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pods
        .is_empty());
    // The kubelet's log files are the kubelet's to remove.
    assert!(log_path.exists());
}

/// The capability mask of a set of capability numbers, as
/// /proc/PID/status prints it.
fn cap_mask(numbers: &[u32]) -> String {
    format!("{:016x}", numbers.iter().fold(0u64, |m, n| m | 1 << n))
}

/// The default capabilities' numbers (Docker's set without NET_RAW).
const DEFAULT_CAPS: [u32; 13] = [0, 1, 3, 4, 5, 6, 7, 8, 10, 18, 27, 29, 31];

/// A line of /proc/self/status in the container, by its key.
async fn status_line(rt: &mut Runtime, id: &str, key: &str) -> String {
    let out = exec(rt, id, &["cat", "/proc/self/status"]).await;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// A kubelet's security context and volumes reach the container as asked,
/// seen from inside it; what the baseline pod security level does not
/// allow is refused and makes nothing.
#[tokio::test]
async fn security_contexts_and_mounts_confine_containers_as_asked() {
    let volumes = tempfile::tempdir().unwrap();
    let allowed = volumes.path().join("kubelet");
    let shared = allowed.join("pods/uid-sec/volumes/data");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("greeting"), "from the host\n").unwrap();
    let outside = volumes.path().join("elsewhere");
    std::fs::create_dir_all(&outside).unwrap();
    let root_arg = allowed.display().to_string();
    let profiles = volumes.path().join("seccomp");
    std::fs::create_dir_all(&profiles).unwrap();
    let block_chmod = profiles.join("block-chmod.json");
    std::fs::write(
        &block_chmod,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["chmod", "fchmodat", "fchmodat2"], "action": "SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    std::fs::write(profiles.join("broken.json"), "{\"syscalls\": []}").unwrap();
    let profiles_arg = profiles.display().to_string();
    let pods = PodAgent::start_with(
        "cri-sec",
        &[
            "--mount-root",
            &root_arg,
            "--seccomp-profile-root",
            &profiles_arg,
        ],
    )
    .await;
    let mut rt = RuntimeServiceClient::new(pods.agent.cri_channel().await);
    let logs = tempfile::tempdir().unwrap();
    let mut config = sandbox_config("sec", 0, logs.path());
    config.linux = Some(cri::LinuxPodSandboxConfig {
        sysctls: labels(&[("net.ipv4.tcp_keepalive_time", "600")]),
        ..Default::default()
    });
    let sandbox = run_sandbox(&mut rt, config).await.expect("run sandbox");
    let idle = "exec sleep 1000";

    // Dropped capabilities are gone from every set, and chown with them.
    let mut dropping = container_config("dropping", &pods.reference, idle);
    dropping.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                drop_capabilities: vec!["CHOWN".into(), "CAP_KILL".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let dropping = create(&mut rt, &sandbox, dropping).await.expect("create");
    // For comparison: one with the defaults.
    let plain = create(
        &mut rt,
        &sandbox,
        container_config("plain", &pods.reference, idle),
    )
    .await
    .expect("create");
    for id in [&dropping, &plain] {
        start(&mut rt, id).await.expect("start");
        wait_state(&mut rt, id, cri::ContainerState::ContainerRunning).await;
    }
    let kept: Vec<u32> = DEFAULT_CAPS
        .iter()
        .copied()
        .filter(|n| ![0, 5].contains(n))
        .collect();
    assert_eq!(
        status_line(&mut rt, &dropping, "CapBnd").await,
        cap_mask(&kept)
    );
    assert_eq!(
        status_line(&mut rt, &dropping, "CapEff").await,
        cap_mask(&kept)
    );
    assert_eq!(
        status_line(&mut rt, &plain, "CapBnd").await,
        cap_mask(&DEFAULT_CAPS)
    );
    let chown = ["sh", "-c", "touch /tmp/f && chown 1:1 /tmp/f"];
    let denied = exec(&mut rt, &dropping, &chown).await;
    assert_ne!(denied.exit_code, 0, "{denied:?}");
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("not permitted"),
        "{denied:?}"
    );
    assert_eq!(exec(&mut rt, &plain, &chown).await.exit_code, 0);
    let keepalive = exec(
        &mut rt,
        &plain,
        &["cat", "/proc/sys/net/ipv4/tcp_keepalive_time"],
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&keepalive.stdout), "600\n");
    // The default seccomp profile and no_new_privs, whatever was asked.
    assert_eq!(status_line(&mut rt, &plain, "Seccomp").await, "2");
    assert_eq!(status_line(&mut rt, &plain, "NoNewPrivs").await, "1");

    // A Localhost seccomp profile of the kubelet's (named the deprecated
    // way, as kubelets before 1.27 do) replaces the default one.
    let localhost = |name: &str, path: &Path| {
        let mut c = container_config(name, &pods.reference, idle);
        #[allow(deprecated)]
        let security = cri::LinuxContainerSecurityContext {
            seccomp_profile_path: format!("localhost/{}", path.display()),
            ..Default::default()
        };
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(security),
            ..Default::default()
        });
        c
    };
    let filtered = create(&mut rt, &sandbox, localhost("filtered", &block_chmod))
        .await
        .expect("create");
    start(&mut rt, &filtered).await.expect("start");
    wait_state(&mut rt, &filtered, cri::ContainerState::ContainerRunning).await;
    let chmod = ["chmod", "700", "/tmp"];
    let blocked = exec(&mut rt, &filtered, &chmod).await;
    assert!(
        String::from_utf8_lossy(&blocked.stderr).contains("not permitted"),
        "{blocked:?}"
    );
    assert_eq!(exec(&mut rt, &plain, &chmod).await.exit_code, 0);
    let outside = volumes.path().join("outside.json");
    std::fs::copy(&block_chmod, &outside).unwrap();
    let before = list_containers(&mut rt, &sandbox).await.len();
    for (path, code) in [
        (outside.clone(), Code::PermissionDenied),
        (profiles.join("broken.json"), Code::InvalidArgument),
        (profiles.join("missing.json"), Code::FailedPrecondition),
    ] {
        let err = create(&mut rt, &sandbox, localhost("bad-profile", &path))
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{path:?}: {err:?}");
    }
    assert_eq!(list_containers(&mut rt, &sandbox).await.len(), before);

    // An OOM score below the agent's own only where the agent may lower
    // scores (this kind of machine's root lacks CAP_SYS_RESOURCE); else the
    // agent's own, and the container still starts.
    let mut lowered = container_config("lowered", &pods.reference, idle);
    lowered.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            oom_score_adj: -500,
            ..Default::default()
        }),
        ..Default::default()
    });
    let lowered = create(&mut rt, &sandbox, lowered).await.expect("create");
    start(&mut rt, &lowered).await.expect("start");
    wait_state(&mut rt, &lowered, cri::ContainerState::ContainerRunning).await;
    let own_status = std::fs::read_to_string("/proc/self/status").unwrap();
    let bounding = own_status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap();
    let expected = if bounding & (1 << 24) != 0 {
        "-500".to_string()
    } else {
        std::fs::read_to_string("/proc/self/oom_score_adj")
            .unwrap()
            .trim()
            .to_string()
    };
    let score = exec(&mut rt, &lowered, &["cat", "/proc/1/oom_score_adj"]).await;
    assert_eq!(String::from_utf8_lossy(&score.stdout).trim(), expected);

    // A user by name from the image, with its groups and an added one.
    let mut user = container_config("user", &pods.reference, idle);
    user.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_username: "app".into(),
            supplemental_groups: vec![1234],
            ..Default::default()
        }),
        ..Default::default()
    });
    let user = create(&mut rt, &sandbox, user).await.expect("create");
    start(&mut rt, &user).await.expect("start");
    wait_state(&mut rt, &user, cri::ContainerState::ContainerRunning).await;
    let who = exec(&mut rt, &user, &["sh", "-c", "id -u; id -g; id -G"]).await;
    let who = String::from_utf8_lossy(&who.stdout).to_string();
    let lines: Vec<&str> = who.lines().collect();
    assert_eq!(lines.get(..2), Some(&["1000", "1000"][..]), "{who}");
    let mut groups: Vec<&str> = lines.get(2).unwrap_or(&"").split_whitespace().collect();
    groups.sort_unstable();
    assert_eq!(groups, ["1000", "1234", "50"], "{who}");
    // A non-root user keeps no effective capabilities.
    assert_eq!(status_line(&mut rt, &user, "CapEff").await, cap_mask(&[]));

    // A read-only root, a host volume read-write and the same one
    // read-only. (The host directory is open to all: the pod's root is
    // not the host's, so the host's root-owned files are others' to it.)
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut volumes = container_config("volumes", &pods.reference, idle);
    volumes.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            readonly_rootfs: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let shared_path = shared.display().to_string();
    // The kubelet's own /etc/hosts replaces the pod's.
    let kubelet_hosts = allowed.join("pods/uid-sec/etc-hosts");
    std::fs::write(&kubelet_hosts, "# Kubernetes-managed hosts file.\n").unwrap();
    volumes.mounts = vec![
        cri::Mount {
            container_path: "/etc/hosts".into(),
            host_path: kubelet_hosts.display().to_string(),
            ..Default::default()
        },
        cri::Mount {
            container_path: "/data".into(),
            host_path: shared_path.clone(),
            ..Default::default()
        },
        cri::Mount {
            container_path: "/data-ro".into(),
            host_path: shared_path.clone(),
            readonly: true,
            ..Default::default()
        },
    ];
    let volumes = create(&mut rt, &sandbox, volumes).await.expect("create");
    start(&mut rt, &volumes).await.expect("start");
    wait_state(&mut rt, &volumes, cri::ContainerState::ContainerRunning).await;
    let status = container_status(&mut rt, &volumes).await;
    assert_eq!(status.mounts.len(), 3, "{status:?}");
    let hosts = exec(&mut rt, &volumes, &["cat", "/etc/hosts"]).await;
    assert_eq!(
        String::from_utf8_lossy(&hosts.stdout),
        "# Kubernetes-managed hosts file.\n"
    );
    let read_only = |out: &cri::ExecSyncResponse| {
        out.exit_code != 0 && String::from_utf8_lossy(&out.stderr).contains("Read-only file system")
    };
    let root_write = exec(&mut rt, &volumes, &["touch", "/rootfs-write"]).await;
    assert!(read_only(&root_write), "{root_write:?}");
    let read = exec(
        &mut rt,
        &volumes,
        &["cat", "/data/greeting", "/data-ro/greeting"],
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&read.stdout),
        "from the host\nfrom the host\n",
        "{read:?}"
    );
    let write = exec(
        &mut rt,
        &volumes,
        &["sh", "-c", "echo from the pod > /data/reply"],
    )
    .await;
    assert_eq!(write.exit_code, 0, "{write:?}");
    assert_eq!(
        std::fs::read_to_string(shared.join("reply")).unwrap(),
        "from the pod\n"
    );
    let ro_write = exec(&mut rt, &volumes, &["touch", "/data-ro/x"]).await;
    assert!(read_only(&ro_write), "{ro_write:?}");
    assert!(!shared.join("x").exists());

    // Refused at the baseline level, each with nothing made: an added
    // capability outside the defaults, a host path outside the mount
    // roots (also through a symlink below a root), a bidirectional mount.
    std::os::unix::fs::symlink(&outside, allowed.join("pods/escape")).unwrap();
    let before = list_containers(&mut rt, &sandbox).await.len();
    let mut adding = container_config("adding", &pods.reference, idle);
    adding.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: vec!["NET_ADMIN".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let mount_of = |host: &Path, propagation: cri::MountPropagation| {
        let mut c = container_config("mounting", &pods.reference, idle);
        c.mounts = vec![cri::Mount {
            container_path: "/data".into(),
            host_path: host.display().to_string(),
            propagation: propagation as i32,
            ..Default::default()
        }];
        c
    };
    let refused = [
        adding,
        mount_of(&outside, cri::MountPropagation::PropagationPrivate),
        mount_of(
            &allowed.join("pods/escape"),
            cri::MountPropagation::PropagationPrivate,
        ),
        mount_of(&shared, cri::MountPropagation::PropagationBidirectional),
    ];
    for config in refused {
        let err = create(&mut rt, &sandbox, config.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{config:?}: {err:?}");
        assert!(
            err.message().contains("pod security level baseline"),
            "{err:?}"
        );
    }
    assert_eq!(list_containers(&mut rt, &sandbox).await.len(), before);
    let mut missing = mount_of(
        &allowed.join("absent"),
        cri::MountPropagation::PropagationPrivate,
    );
    missing.metadata.as_mut().unwrap().name = "missing".into();
    let err = create(&mut rt, &sandbox, missing).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(list_containers(&mut rt, &sandbox).await.len(), before);

    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: sandbox.clone(),
    })
    .await
    .expect("stop sandbox");
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: sandbox,
    })
    .await
    .expect("remove sandbox");
}

/// Each malformed or impossible request gets its status and leaves
/// nothing behind.
#[tokio::test]
async fn bad_cri_requests_are_refused_and_change_nothing() {
    let pods = PodAgent::start("cri-bad").await;
    let mut rt = RuntimeServiceClient::new(pods.agent.cri_channel().await);
    let logs = tempfile::tempdir().unwrap();

    let none = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest::default())
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::InvalidArgument);
    let mut no_uid = sandbox_config("a", 0, logs.path());
    no_uid.metadata.as_mut().unwrap().uid.clear();
    let refused = run_sandbox(&mut rt, no_uid).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("uid"), "{refused:?}");
    let handler = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox_config("a", 0, logs.path())),
            runtime_handler: "kata".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(handler.code(), Code::InvalidArgument, "{handler:?}");
    // A pool of another namespace (a tenant's, below root) is not the
    // CRI's to place pods in.
    let tenant = pods
        .agent
        .pools()
        .await
        .create(CreateResourcePoolRequest {
            parent_id: String::new(),
            spec: Some(ResourcePoolSpec {
                name: "tenant-b".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("create pool")
        .into_inner()
        .id;
    let mut elsewhere = sandbox_config("a", 0, logs.path());
    elsewhere
        .annotations
        .insert("stratum.io/pool".into(), tenant);
    let denied = run_sandbox(&mut rt, elsewhere).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    // The host's network at the baseline level, with the pod's own PID
    // namespace (the proto's zero) or per container.
    for pid in [cri::NamespaceMode::Pod, cri::NamespaceMode::Container] {
        let mut host_net = sandbox_config("a", 0, logs.path());
        host_net.linux = Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    pid: pid as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let denied = run_sandbox(&mut rt, host_net).await.unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    }
    // Another container's PID namespace is not made for a sandbox.
    let mut target_pid = sandbox_config("a", 0, logs.path());
    target_pid.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Target as i32,
                target_id: "x".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let unsupported = run_sandbox(&mut rt, target_pid).await.unwrap_err();
    assert_eq!(unsupported.code(), Code::Unimplemented, "{unsupported:?}");
    // A sysctl outside Kubernetes' safe set (at the baseline level), one
    // of the host's, one that would leave /proc/sys.
    for (name, code) in [
        ("kernel.msgmax", Code::PermissionDenied),
        ("vm.swappiness", Code::InvalidArgument),
        ("net/../../../etc/x", Code::InvalidArgument),
    ] {
        let mut sysctls = sandbox_config("a", 0, logs.path());
        sysctls.linux = Some(cri::LinuxPodSandboxConfig {
            sysctls: labels(&[(name, "1")]),
            ..Default::default()
        });
        let err = run_sandbox(&mut rt, sysctls).await.unwrap_err();
        assert_eq!(err.code(), code, "{name}: {err:?}");
    }
    assert!(list_sandboxes(&mut rt).await.is_empty());

    let sandbox = run_sandbox(&mut rt, sandbox_config("a", 0, logs.path()))
        .await
        .expect("a good sandbox");
    let unknown = create(
        &mut rt,
        "pod-none",
        container_config("c", &pods.reference, "true"),
    )
    .await
    .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let mut no_meta = container_config("c", &pods.reference, "true");
    no_meta.metadata = None;
    assert_eq!(
        create(&mut rt, &sandbox, no_meta).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let missing = create(
        &mut rt,
        &sandbox,
        container_config("c", "127.0.0.1:1/not/there:1", "true"),
    )
    .await
    .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    let mut escape = container_config("c", &pods.reference, "true");
    escape.log_path = "../../../etc/cron.d/x".into();
    assert_eq!(
        create(&mut rt, &sandbox, escape).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut mounts = container_config("c", &pods.reference, "true");
    mounts.mounts = vec![cri::Mount {
        container_path: "/host".into(),
        host_path: "/".into(),
        ..Default::default()
    }];
    assert_eq!(
        create(&mut rt, &sandbox, mounts).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let with_context = |security: cri::LinuxContainerSecurityContext| {
        let mut c = container_config("c", &pods.reference, "true");
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(security),
            ..Default::default()
        });
        c
    };
    #[allow(deprecated)]
    let malformed = [
        cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: -1 }),
            ..Default::default()
        },
        cri::LinuxContainerSecurityContext {
            run_as_group: Some(cri::Int64Value { value: 5 }),
            ..Default::default()
        },
        cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                drop_capabilities: vec!["NOT_A_CAPABILITY".into()],
                ..Default::default()
            }),
            ..Default::default()
        },
        cri::LinuxContainerSecurityContext {
            seccomp_profile_path: "my-profile".into(),
            ..Default::default()
        },
    ];
    for security in malformed {
        let err = create(&mut rt, &sandbox, with_context(security.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{security:?}: {err:?}");
    }
    assert!(list_containers(&mut rt, &sandbox).await.is_empty());
    let mut bad_dns = sandbox_config("dns", 0, logs.path());
    bad_dns.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.0.0.1\nnameserver 6.6.6.6".into()],
        ..Default::default()
    });
    let err = run_sandbox(&mut rt, bad_dns).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(list_sandboxes(&mut rt).await.len(), 1);

    for code in [
        start(&mut rt, "nothing").await.unwrap_err().code(),
        rt.container_status(cri::ContainerStatusRequest {
            container_id: "nothing".into(),
            verbose: false,
        })
        .await
        .unwrap_err()
        .code(),
        rt.exec_sync(cri::ExecSyncRequest {
            container_id: "nothing".into(),
            cmd: vec!["true".into()],
            timeout: 1,
        })
        .await
        .unwrap_err()
        .code(),
        rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: "pod-none".into(),
            verbose: false,
        })
        .await
        .unwrap_err()
        .code(),
    ] {
        assert_eq!(code, Code::NotFound);
    }
    // Stopping and removing what is not there is done already.
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: "pod-none".into(),
    })
    .await
    .expect("idempotent stop");
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: "nothing".into(),
    })
    .await
    .expect("idempotent remove");
    assert_eq!(list_sandboxes(&mut rt).await.len(), 1);
}

/// CRI sandboxes outlive an agent `kill -9`: re-adopted, listed the same,
/// their containers still running.
#[tokio::test]
async fn cri_pods_are_readopted_after_agent_kill9() {
    let mut pods = PodAgent::start("cri-kill9").await;
    let mut rt = RuntimeServiceClient::new(pods.agent.cri_channel().await);
    let logs = tempfile::tempdir().unwrap();
    let sandbox = run_sandbox(&mut rt, sandbox_config("kept", 0, logs.path()))
        .await
        .unwrap();
    let sleeper = create(
        &mut rt,
        &sandbox,
        container_config("sleeper", &pods.reference, "exec sleep 1000"),
    )
    .await
    .unwrap();
    start(&mut rt, &sleeper).await.unwrap();
    let before_pid = wait_state(&mut rt, &sleeper, cri::ContainerState::ContainerRunning).await;
    let before = list_sandboxes(&mut rt).await;

    pods.agent.kill9();
    pods.agent.spawn();
    let mut rt = RuntimeServiceClient::new(pods.agent.cri_channel().await);
    assert_eq!(list_sandboxes(&mut rt).await, before);
    let after = container_status(&mut rt, &sleeper).await;
    assert_eq!(after.state, cri::ContainerState::ContainerRunning as i32);
    assert_eq!(after.started_at, before_pid.started_at);
    let out = exec(&mut rt, &sleeper, &["echo", "still here"]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "still here");
}

/// The command lines of every process a container sees, one a line.
const PROCESSES: &str = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done";

/// Host pids of live processes (not zombies) named `comm`.
fn host_pids_named(comm: &str) -> Vec<u32> {
    let live = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
            .unwrap_or(false)
    };
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .filter(live)
        .collect()
}

/// `shareProcessNamespace`: the pod's containers see each other's
/// processes, PID 1 is the pod's init (confined: nobody, no capabilities),
/// the namespace outlives an agent kill -9 (a container made after it
/// still joins), and goes with the sandbox.
#[tokio::test]
async fn a_pods_containers_share_one_pid_namespace_held_by_its_init() {
    let mut pods = PodAgent::start("cri-sharedpid").await;
    let mut rt = RuntimeServiceClient::new(pods.agent.cri_channel().await);
    let logs = tempfile::tempdir().unwrap();
    let shared = Some(cri::NamespaceOption {
        pid: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    });
    let mut config = sandbox_config("shared", 0, logs.path());
    config.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: shared.clone(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let inits_before = host_pids_named("pod-init");
    let sandbox = run_sandbox(&mut rt, config.clone()).await.unwrap();
    let in_pod = |name: &str, script: &str| {
        let mut c = container_config(name, &pods.reference, script);
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: shared.clone(),
                ..Default::default()
            }),
            ..Default::default()
        });
        c
    };
    let mut ids = Vec::new();
    for (name, script) in [("one", "exec sleep 3601"), ("two", "exec sleep 3602")] {
        let id = create(&mut rt, &sandbox, in_pod(name, script))
            .await
            .unwrap();
        start(&mut rt, &id).await.unwrap();
        wait_state(&mut rt, &id, cri::ContainerState::ContainerRunning).await;
        ids.push(id);
    }
    let seen = exec(&mut rt, &ids[0], &["sh", "-c", PROCESSES]).await;
    let seen = String::from_utf8_lossy(&seen.stdout).to_string();
    assert!(
        seen.contains("sleep 3602"),
        "one sees two's process:\n{seen}"
    );
    let init = exec(
        &mut rt,
        &ids[1],
        &[
            "sh",
            "-c",
            "cat /proc/1/comm; grep -E '^(Uid|CapEff|CapBnd)' /proc/1/status",
        ],
    )
    .await;
    let init = String::from_utf8_lossy(&init.stdout).to_string();
    assert!(init.starts_with("pod-init\n"), "{init}");
    assert!(init.contains("Uid:\t65534\t65534\t65534\t65534"), "{init}");
    assert!(init.contains("CapEff:\t0000000000000000"), "{init}");
    assert!(init.contains("CapBnd:\t0000000000000000"), "{init}");
    let inits: Vec<u32> = host_pids_named("pod-init")
        .into_iter()
        .filter(|p| !inits_before.contains(p))
        .collect();
    assert_eq!(inits.len(), 1, "one init for the pod: {inits:?}");
    // In a leaf of its own below the pod's cgroup, in every hierarchy.
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", inits[0])).unwrap();
    let root = format!("/{}/", pods.agent.cgroup_root);
    for line in cgroups.lines().filter(|l| l.contains(&root)) {
        assert!(line.ends_with("/pod-init"), "{cgroups}");
    }
    assert!(cgroups.contains(&root), "{cgroups}");

    // A container asking for its own PID namespace in this pod is refused.
    let mut own = container_config("own", &pods.reference, "exec sleep 1");
    own.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Container as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let refused = create(&mut rt, &sandbox, own).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");

    pods.agent.kill9();
    pods.agent.spawn();
    let mut rt = RuntimeServiceClient::new(pods.agent.cri_channel().await);
    let status = sandbox_status(&mut rt, &sandbox).await;
    assert_eq!(status.state, cri::PodSandboxState::SandboxReady as i32);
    let three = create(&mut rt, &sandbox, in_pod("three", "exec sleep 3603"))
        .await
        .unwrap();
    start(&mut rt, &three).await.unwrap();
    wait_state(&mut rt, &three, cri::ContainerState::ContainerRunning).await;
    let seen = exec(&mut rt, &three, &["sh", "-c", PROCESSES]).await;
    let seen = String::from_utf8_lossy(&seen.stdout).to_string();
    assert!(
        seen.contains("sleep 3601"),
        "three, made after the restart, sees one:\n{seen}"
    );

    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: sandbox.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: sandbox.clone(),
    })
    .await
    .unwrap();
    let left: Vec<u32> = host_pids_named("pod-init")
        .into_iter()
        .filter(|p| inits.contains(p))
        .collect();
    assert!(left.is_empty(), "the init went with the sandbox: {left:?}");
    let under_root = format!("*/{}/*", pods.agent.cgroup_root);
    let leaves = std::process::Command::new("find")
        .args([
            "/sys/fs/cgroup",
            "-type",
            "d",
            "-name",
            "pod-init",
            "-path",
            &under_root,
        ])
        .output()
        .unwrap();
    let leaves = String::from_utf8_lossy(&leaves.stdout).to_string();
    assert_eq!(leaves, "", "the init's cgroup went with the sandbox");
}

/// The socket is its owner's alone, and a caller of another uid is
/// refused even where the socket's mode would let it connect.
#[tokio::test]
async fn only_root_and_the_agents_user_may_use_the_cri_socket() {
    let pods = PodAgent::start("cri-peer").await;
    let socket = pods.agent.cri_socket();
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let refused = std::thread::spawn(move || {
        // Only this thread becomes nobody (the raw syscall changes the
        // calling thread's credentials; glibc's wrapper would change the
        // whole test process's).
        // SAFETY: setresuid takes three plain integers.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
        assert_eq!(rc, 0, "setresuid: {}", std::io::Error::last_os_error());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let channel = stratum_testkit::cri::channel(&socket).await.unwrap();
            RuntimeServiceClient::new(channel)
                .version(cri::VersionRequest::default())
                .await
                .unwrap_err()
        })
    })
    .join()
    .unwrap();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
}

/// What `crictl` and `critest` of Kubernetes 1.26 send: HTTP/2 with the
/// socket's path as `:authority`, which tonic's h2 alone refuses. Frames
/// written by hand, as gRPC-Go writes them.
#[tokio::test]
async fn a_request_naming_the_socket_path_as_authority_is_served() {
    use prost::Message;
    use std::io::{Read, Write};

    let pods = PodAgent::start("cri-authority").await;
    let socket = pods.agent.cri_socket();
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
            let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
            let mut f = vec![len[1], len[2], len[3], kind, flags];
            f.extend_from_slice(&stream.to_be_bytes());
            f.extend_from_slice(payload);
            f
        };
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/runtime.v1.RuntimeService/Version"),
            (b":authority", b"/run/stratum/cri.sock"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ];
        let block = loona_hpack::Encoder::new().encode(headers);
        let request = cri::VersionRequest {
            version: "v1".into(),
        }
        .encode_to_vec();
        let mut message = vec![0u8];
        message.extend_from_slice(&u32::try_from(request.len()).unwrap().to_be_bytes());
        message.extend_from_slice(&request);
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        s.write_all(&frame(4, 0, 0, &[])).unwrap();
        s.write_all(&frame(1, 0x4, 1, &block)).unwrap();
        s.write_all(&frame(0, 0x1, 1, &message)).unwrap();
        // Frames back until the answer's message on stream 1.
        loop {
            let mut head = [0u8; 9];
            s.read_exact(&mut head).unwrap();
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).unwrap();
            let (kind, flags, stream) = (head[3], head[4], head[8]);
            match kind {
                // The server's settings, acknowledged.
                4 if flags & 1 == 0 => s.write_all(&frame(4, 1, 0, &[])).unwrap(),
                // RST_STREAM or GOAWAY: refused.
                3 | 7 => panic!("the server refused the request: frame type {kind} {payload:?}"),
                0 if stream == 1 && payload.len() >= 5 => {
                    return cri::VersionResponse::decode(&payload[5..]).unwrap();
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(answer.runtime_name, "stratum");
}

/// A registry mirror, as containerd's hosts.toml gives one: a pull of
/// `registry.k8s.io/...` goes to the local registry, and the image keeps
/// the name it was asked by, for ImageStatus and CreateContainer.
#[tokio::test]
async fn pulls_go_through_a_registry_mirror_and_keep_their_names() {
    let pods = PodAgent::start_mirroring("cri-mirror", "registry.k8s.io").await;
    let channel = pods.agent.cri_channel().await;
    let mut rt = RuntimeServiceClient::new(channel.clone());
    let mut images = ImageServiceClient::new(channel);
    // The fixture's image, by the mirrored registry's name.
    let repository = pods.reference.split_once('/').unwrap().1;
    let name = format!("registry.k8s.io/{repository}");
    let spec = |image: &str| {
        Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        })
    };
    let pulled = images
        .pull_image(cri::PullImageRequest {
            image: spec(&name),
            auth: None,
            sandbox_config: None,
        })
        .await
        .expect("pull through the mirror")
        .into_inner()
        .image_ref;
    let image = images
        .image_status(cri::ImageStatusRequest {
            image: spec(&name),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .expect("found by its own name");
    assert_eq!(image.id, pulled);
    assert!(image.repo_tags.contains(&name), "{image:?}");
    // A registry without a mirror is still asked itself (and here cannot
    // be reached): the mirror is per registry.
    let direct = images
        .pull_image(cri::PullImageRequest {
            image: spec(&format!("127.0.0.1:1/{repository}")),
            auth: None,
            sandbox_config: None,
        })
        .await
        .unwrap_err();
    assert_ne!(direct.code(), Code::Ok);

    let logs = tempfile::tempdir().unwrap();
    let sandbox = run_sandbox(&mut rt, sandbox_config("mirrored", 0, logs.path()))
        .await
        .unwrap();
    let id = create(
        &mut rt,
        &sandbox,
        container_config("c", &name, "echo from-the-mirror; exec sleep 1000"),
    )
    .await
    .expect("a container of the mirrored image");
    start(&mut rt, &id).await.unwrap();
    wait_log(&logs.path().join("c/0.log"), "from-the-mirror");
}

/// One remotecommand connection to an `Exec` URL, as Kubernetes' Go
/// client makes it: an HTTP/1.1 upgrade to SPDY/3.1 offering `protocols`,
/// then a stream per channel. `Err` holds the refusal's status line.
async fn exec_connect(
    url: &str,
    protocols: &[&str],
) -> Result<stratum_spdy::session::Session, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (authority, path) = rest.split_at(rest.find('/').expect("a path"));
    let mut conn = tokio::net::TcpStream::connect(authority).await.unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
    );
    for p in protocols {
        request += &format!("X-Stream-Protocol-Version: {p}\r\n");
    }
    request += "Content-Length: 0\r\n\r\n";
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    if !head.starts_with("HTTP/1.1 101 ") {
        return Err(head.lines().next().unwrap_or_default().to_string());
    }
    // The most preferred version is chosen (each test offers it first).
    assert!(
        head.contains(&format!("X-Stream-Protocol-Version: {}\r\n", protocols[0])),
        "{head}"
    );
    let config = stratum_spdy::session::Config {
        flow_control: stratum_spdy::session::FlowControl::Lenient,
        ..Default::default()
    };
    Ok(
        stratum_spdy::session::Session::new(conn, stratum_spdy::session::Role::Client, config)
            .unwrap(),
    )
}

async fn open_stream(
    session: &stratum_spdy::session::Session,
    kind: &str,
) -> stratum_spdy::session::Stream {
    let mut headers = stratum_spdy::Headers::new();
    headers.append("streamtype", kind);
    headers.append("requestid", "0");
    session.open(headers).await.unwrap()
}

async fn read_all(stream: &mut stratum_spdy::session::Stream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut out))
        .await
        .expect("the stream ended in time");
    if let Err(e) = read {
        panic!("{e}: read {:?}", String::from_utf8_lossy(&out));
    }
    String::from_utf8_lossy(&out).to_string()
}

/// A remotecommand session with a terminal, as `crictl exec -it` or
/// `crictl attach -it` opens it.
struct TerminalSession {
    session: stratum_spdy::session::Session,
    error: stratum_spdy::session::Stream,
    stdin: stratum_spdy::session::Stream,
    stdout: stratum_spdy::session::Stream,
    resize: stratum_spdy::session::Stream,
}

/// Connects to `url`, opens the terminal's streams, sets its size to
/// `width` × `height`, waits for the size to be set, then types `typed`.
async fn terminal_session(url: &str, width: u16, height: u16, typed: &[u8]) -> TerminalSession {
    use tokio::io::AsyncWriteExt;
    let session = exec_connect(url, &["v4.channel.k8s.io"]).await.unwrap();
    let error = open_stream(&session, "error").await;
    let mut stdin = open_stream(&session, "stdin").await;
    let stdout = open_stream(&session, "stdout").await;
    let mut resize = open_stream(&session, "resize").await;
    let size = format!(r#"{{"Width":{width},"Height":{height}}}"#);
    resize.write_all(size.as_bytes()).await.unwrap();
    // The size is set before the process reads its line.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stdin.write_all(typed).await.unwrap();
    TerminalSession {
        session,
        error,
        stdin,
        stdout,
        resize,
    }
}

/// An agent with the test image pulled and a running sandbox `name`
/// whose logs go to the returned directory.
async fn agent_with_sandbox(
    tag: &str,
    name: &str,
) -> (PodAgent, Runtime, tempfile::TempDir, String) {
    let pods = PodAgent::start(tag).await;
    let channel = pods.agent.cri_channel().await;
    let mut rt = RuntimeServiceClient::new(channel.clone());
    let mut images = ImageServiceClient::new(channel);
    pull(&mut images, &pods.reference).await;
    let logs = tempfile::tempdir().unwrap();
    let sandbox = run_sandbox(&mut rt, sandbox_config(name, 0, logs.path()))
        .await
        .expect("run sandbox");
    (pods, rt, logs, sandbox)
}

async fn exec_url(
    rt: &mut Runtime,
    id: &str,
    cmd: &[&str],
    tty: bool,
    stderr: bool,
) -> Result<String, tonic::Status> {
    rt.exec(cri::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin: true,
        stdout: true,
        stderr,
    })
    .await
    .map(|r| r.into_inner().url)
}

#[tokio::test]
async fn exec_and_port_forward_stream_through_the_streaming_server() {
    use tokio::io::AsyncWriteExt;
    let (pods, mut rt, _logs, sandbox) = agent_with_sandbox("cri-exec", "shell").await;
    let id = create(
        &mut rt,
        &sandbox,
        container_config("shell", &pods.reference, "exec sleep 3600"),
    )
    .await
    .expect("create");
    start(&mut rt, &id).await.expect("start");

    // Pipes: stdin reaches the command, stdout and stderr come apart,
    // the exit code comes as v4's Status.
    let url = exec_url(
        &mut rt,
        &id,
        &["sh", "-c", "cat; echo to-stderr >&2; exit 3"],
        false,
        true,
    )
    .await
    .expect("exec");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let session = exec_connect(&url, &["v4.channel.k8s.io", "channel.k8s.io"])
        .await
        .unwrap();
    let mut error = open_stream(&session, "error").await;
    let mut stdin = open_stream(&session, "stdin").await;
    let mut stdout = open_stream(&session, "stdout").await;
    let mut stderr = open_stream(&session, "stderr").await;
    stdin.write_all(b"line one\nline two\n").await.unwrap();
    stdin.shutdown().await.unwrap();
    let _ = &mut error;
    assert_eq!(read_all(&mut stdout).await, "line one\nline two\n");
    assert_eq!(read_all(&mut stderr).await, "to-stderr\n");
    let status: serde_json::Value = serde_json::from_str(&read_all(&mut error).await).unwrap();
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
    assert_eq!(
        status["details"]["causes"][0]["reason"], "ExitCode",
        "{status}"
    );
    assert_eq!(status["details"]["causes"][0]["message"], "3", "{status}");
    drop((error, stdin, stdout, stderr, session));

    // A URL is good once.
    let refused = exec_connect(&url, &["v4.channel.k8s.io"])
        .await
        .unwrap_err();
    assert!(refused.contains("404"), "{refused}");

    // A terminal: the command sees one, of the size the client sends, and
    // what it reads comes from stdin.
    let url = exec_url(
        &mut rt,
        &id,
        &[
            "sh",
            "-c",
            "test -t 0 && echo is-a-tty; read line; stty size; echo got-$line",
        ],
        true,
        false,
    )
    .await
    .expect("exec tty");
    let TerminalSession {
        session,
        mut error,
        stdin,
        mut stdout,
        resize,
    } = terminal_session(&url, 100, 40, b"typed\n").await;
    let out = read_all(&mut stdout).await;
    // Only what the command wrote and the terminal echoed.
    assert!(out.starts_with("is-a-tty\r\n"), "{out:?}");
    assert!(out.contains("is-a-tty"), "{out:?}");
    assert!(out.contains("40 100"), "{out:?}");
    assert!(out.contains("got-typed"), "{out:?}");
    let status: serde_json::Value = serde_json::from_str(&read_all(&mut error).await).unwrap();
    assert_eq!(status["status"], "Success", "{status}");
    drop((error, stdin, stdout, resize, session));

    // Refused before any URL: a terminal with a separate stderr, a
    // container that does not run; a protocol nobody speaks, at the URL.
    let both = exec_url(&mut rt, &id, &["true"], true, true)
        .await
        .unwrap_err();
    assert_eq!(both.code(), Code::InvalidArgument, "{both:?}");
    let url = exec_url(&mut rt, &id, &["true"], false, true)
        .await
        .unwrap();
    let refused = exec_connect(&url, &["v9.channel.k8s.io"])
        .await
        .unwrap_err();
    assert!(refused.contains("403"), "{refused}");
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    let stopped = exec_url(&mut rt, &id, &["true"], false, true)
        .await
        .unwrap_err();
    assert_eq!(stopped.code(), Code::FailedPrecondition, "{stopped:?}");

    // Port forwarding: a web server on the pod's loopback only, reached
    // through a forwarded connection; a closed port is told on the error
    // stream; a port the request did not name is refused.
    let web = create(
        &mut rt,
        &sandbox,
        container_config(
            "web",
            &pods.reference,
            "mkdir -p /www && echo forwarded-ok > /www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /www",
        ),
    )
    .await
    .expect("create web");
    start(&mut rt, &web).await.expect("start web");
    let url = rt
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: sandbox.clone(),
            port: vec![8080, 8081],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let session = exec_connect(&url, &["portforward.k8s.io"]).await.unwrap();
    let open_pair = |port: &'static str, request: &'static str| {
        let session = &session;
        async move {
            let mut pair = Vec::new();
            for kind in ["error", "data"] {
                let mut headers = stratum_spdy::Headers::new();
                headers.append("streamtype", kind);
                headers.append("port", port);
                headers.append("requestid", request);
                pair.push(session.open(headers).await.unwrap());
            }
            let data = pair.pop().unwrap();
            (pair.pop().unwrap(), data)
        }
    };
    let mut body = String::new();
    for _ in 0..50 {
        let (mut error, mut data) = open_pair("8080", "1").await;
        data.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        data.shutdown().await.unwrap();
        body = read_all(&mut data).await;
        let failure = read_all(&mut error).await;
        if body.contains("forwarded-ok") || !failure.contains("connect") {
            break;
        }
        // httpd may not listen yet.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(body.contains("forwarded-ok"), "{body:?}");
    let (mut error, mut data) = open_pair("8081", "2").await;
    let failure = read_all(&mut error).await;
    assert!(failure.contains("port 8081"), "{failure:?}");
    assert_eq!(read_all(&mut data).await, "");
    let mut headers = stratum_spdy::Headers::new();
    headers.append("streamtype", "error");
    headers.append("port", "22");
    headers.append("requestid", "3");
    let mut refused = session.open(headers).await.unwrap();
    let failure = read_all(&mut refused).await;
    assert!(failure.contains("not asked for"), "{failure:?}");
}

/// Reads `stream` until its text contains `needle` (30 s); the text.
async fn read_until(stream: &mut stratum_spdy::session::Stream, needle: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&out).contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{needle:?} not read: {:?}", String::from_utf8_lossy(&out)))
            .unwrap();
        assert!(
            n > 0,
            "ended before {needle:?}: {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).to_string()
}

async fn attach_url(
    rt: &mut Runtime,
    id: &str,
    tty: bool,
    stdin: bool,
) -> Result<String, tonic::Status> {
    rt.attach(cri::AttachRequest {
        container_id: id.into(),
        stdin,
        tty,
        stdout: true,
        stderr: !tty,
    })
    .await
    .map(|r| r.into_inner().url)
}

#[tokio::test]
async fn attach_joins_a_containers_own_stdin_output_and_terminal() {
    use tokio::io::AsyncWriteExt;
    let (pods, mut rt, logs, sandbox) = agent_with_sandbox("cri-attach", "attach").await;

    // stdin + stdinOnce, no terminal: input reaches the container, its
    // stdout and stderr come apart; the end of the client's input closes
    // the container's stdin, and the attachment lasts until it exits.
    let mut config = container_config(
        "reader",
        &pods.reference,
        "while read line; do echo out-$line; echo err-$line >&2; done; echo stdin-closed",
    );
    config.stdin = true;
    config.stdin_once = true;
    let reader = create(&mut rt, &sandbox, config).await.expect("create");
    start(&mut rt, &reader).await.expect("start");
    let url = attach_url(&mut rt, &reader, false, true)
        .await
        .expect("attach");
    assert!(url.contains("/attach/"), "{url}");
    let session = exec_connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
    let mut error = open_stream(&session, "error").await;
    let mut stdin = open_stream(&session, "stdin").await;
    let mut stdout = open_stream(&session, "stdout").await;
    let mut stderr = open_stream(&session, "stderr").await;
    stdin.write_all(b"first\n").await.unwrap();
    read_until(&mut stdout, "out-first\n").await;
    read_until(&mut stderr, "err-first\n").await;
    stdin.write_all(b"second\n").await.unwrap();
    stdin.shutdown().await.unwrap();
    assert_eq!(read_all(&mut stdout).await, "out-second\nstdin-closed\n");
    assert_eq!(read_all(&mut stderr).await, "err-second\n");
    let status: serde_json::Value = serde_json::from_str(&read_all(&mut error).await).unwrap();
    assert_eq!(status["status"], "Success", "{status}");
    drop((error, stdin, stdout, stderr, session));
    let exited = wait_state(&mut rt, &reader, cri::ContainerState::ContainerExited).await;
    assert_eq!(exited.exit_code, 0);
    // Everything is in the log too, as the writer logged it.
    let log = wait_log(&logs.path().join("reader/0.log"), "stdin-closed");
    assert!(
        log.contains(" stdout F out-first") && log.contains(" stderr F err-second"),
        "{log}"
    );
    // An exited container is not attached to.
    let gone = attach_url(&mut rt, &reader, false, false)
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::FailedPrecondition, "{gone:?}");

    // A terminal: resized by the client, typed into; the end of the
    // client's input detaches it and the container runs on.
    let mut config = container_config(
        "terminal",
        &pods.reference,
        "read line; stty size; echo got-$line; exec sleep 3600",
    );
    config.stdin = true;
    config.stdin_once = true;
    config.tty = true;
    let shell = create(&mut rt, &sandbox, config).await.expect("create tty");
    start(&mut rt, &shell).await.expect("start tty");
    let both = rt
        .attach(cri::AttachRequest {
            container_id: shell.clone(),
            stdin: true,
            tty: true,
            stdout: true,
            stderr: true,
        })
        .await
        .unwrap_err();
    assert_eq!(both.code(), Code::InvalidArgument, "{both:?}");
    let url = attach_url(&mut rt, &shell, true, true)
        .await
        .expect("attach tty");
    let TerminalSession {
        session,
        mut error,
        mut stdin,
        mut stdout,
        resize,
    } = terminal_session(&url, 90, 20, b"typed\n").await;
    let out = read_until(&mut stdout, "got-typed").await;
    assert!(out.contains("20 90"), "{out:?}");
    stdin.shutdown().await.unwrap();
    read_all(&mut stdout).await;
    let status: serde_json::Value = serde_json::from_str(&read_all(&mut error).await).unwrap();
    assert_eq!(status["status"], "Success", "{status}");
    drop((error, stdin, stdout, resize, session));
    let status = container_status(&mut rt, &shell).await;
    assert_eq!(status.state, cri::ContainerState::ContainerRunning as i32);
    let log = wait_log(&logs.path().join("terminal/0.log"), "got-typed");
    assert!(
        !log.contains(" stderr "),
        "a terminal logs stdout only: {log}"
    );

    // stdin asked of a container made without it.
    let config = container_config("quiet", &pods.reference, "exec sleep 3600");
    let quiet = create(&mut rt, &sandbox, config)
        .await
        .expect("create quiet");
    start(&mut rt, &quiet).await.expect("start quiet");
    let refused = attach_url(&mut rt, &quiet, false, true).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let unknown = attach_url(&mut rt, "no-such-container", false, false)
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    // Clients that vanish from a quiet container (more than its log
    // writer serves at once) leave nothing attached: the next one still
    // gets what the container writes.
    for _ in 0..20 {
        let url = attach_url(&mut rt, &quiet, false, false).await.unwrap();
        let session = exec_connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
        let streams = (
            open_stream(&session, "error").await,
            open_stream(&session, "stdout").await,
            open_stream(&session, "stderr").await,
        );
        drop((streams, session));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let url = attach_url(&mut rt, &quiet, false, false).await.unwrap();
    let session = exec_connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
    let _error = open_stream(&session, "error").await;
    let mut stdout = open_stream(&session, "stdout").await;
    let _stderr = open_stream(&session, "stderr").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let script = "echo still-attached > /proc/1/fd/1";
    let wrote = exec(&mut rt, &quiet, &["sh", "-c", script]).await;
    assert_eq!(wrote.exit_code, 0, "{wrote:?}");
    read_until(&mut stdout, "still-attached").await;
}

#[tokio::test]
async fn container_events_follow_a_containers_life() {
    let (pods, mut rt, _logs, sandbox) = agent_with_sandbox("cri-events", "events").await;
    let mut events = rt
        .get_container_events(cri::GetEventsRequest {})
        .await
        .expect("subscribe")
        .into_inner();
    let id = create(
        &mut rt,
        &sandbox,
        container_config("brief", &pods.reference, "sleep 1"),
    )
    .await
    .expect("create");
    start(&mut rt, &id).await.expect("start");
    wait_state(&mut rt, &id, cri::ContainerState::ContainerExited).await;
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("remove");
    let mut got = Vec::new();
    while got.len() < 4 {
        let event = tokio::time::timeout(Duration::from_secs(30), events.message())
            .await
            .unwrap_or_else(|_| panic!("events so far: {got:?}"))
            .expect("an event")
            .expect("the stream goes on");
        assert_eq!(event.container_id, id, "{event:?}");
        let kind = cri::ContainerEventType::try_from(event.container_event_type).unwrap();
        if kind != cri::ContainerEventType::ContainerDeletedEvent {
            // The statuses as they are when the event is made.
            let pod = event.pod_sandbox_status.as_ref().expect("sandbox status");
            assert_eq!(pod.id, sandbox, "{event:?}");
            assert!(
                event.containers_statuses.iter().any(|c| c.id == id),
                "{event:?}"
            );
        }
        assert!(event.created_at > 0, "{event:?}");
        got.push(kind);
    }
    use cri::ContainerEventType::*;
    assert_eq!(
        got,
        [
            ContainerCreatedEvent,
            ContainerStartedEvent,
            ContainerStoppedEvent,
            ContainerDeletedEvent
        ]
    );
}
