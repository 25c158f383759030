//! What a pod's container may not do, and how its logs stay bounded,
//! against real parts, as root: a real agent process, the busybox image
//! from a local registry (`docker-registry`), crun, real cgroups and the
//! real pod network (see `pods_api.rs` for the fixture's preparation).
//!
//! - The seccomp profile (Docker's default): every refused call checked
//!   here is one a container could make *without* the profile — the
//!   capability set alone does not stop it. Each was seen to succeed with
//!   the profile left out of the spec, and to fail with it.
//! - User namespaces: each pod's container root is a host uid of the
//!   pod's own range, which changes the image's root-owned files through
//!   its idmapped layers while the layers stay as they are.
//! - Log rotation: a chatty container under a tiny max size keeps at most
//!   max-files files, and `Logs` (whole, tail, follow) reads across them.

// Test helpers may panic: a broken fixture fails the test that uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stratum_api::proto::pod_service_client::PodServiceClient;
use stratum_api::proto::{
    ContainerSpec, ContainerState, CreateResourcePoolRequest, ExecSyncResponse, GetPodRequest,
    LogsRequest, Pod, PodSpec, PodState, RemovePodRequest, ResourcePoolSpec, RunPodRequest,
    StopPodRequest,
};
use stratum_testkit::pod_agent::{self, logs, PodAgent};
use tonic::transport::Channel;

/// Runs a pod of `containers` in a fresh top-level pool; RUNNING.
async fn run(pa: &PodAgent, name: &str, containers: Vec<ContainerSpec>) -> Pod {
    let pool = pa
        .agent
        .pools()
        .await
        .create(CreateResourcePoolRequest {
            parent_id: String::new(),
            spec: Some(ResourcePoolSpec {
                name: format!("{name}-pool"),
                ..Default::default()
            }),
        })
        .await
        .expect("create pool")
        .into_inner()
        .id;
    let spec = PodSpec {
        name: name.into(),
        pool_id: pool,
        containers,
        ..Default::default()
    };
    let pod = pa
        .pods()
        .await
        .run_pod(RunPodRequest { spec: Some(spec) })
        .await
        .expect("run pod")
        .into_inner();
    let status = pod.status.as_ref().expect("status");
    assert_eq!(status.state(), PodState::Running, "{pod:#?}");
    pod
}

fn log_dir(pa: &PodAgent, pod: &str) -> PathBuf {
    pa.agent.dir.join(format!("data/pods/{pod}/logs"))
}

async fn exec(
    client: &mut PodServiceClient<Channel>,
    pod: &str,
    container: &str,
    command: &[&str],
) -> ExecSyncResponse {
    pod_agent::exec(client, pod, container, command)
        .await
        .expect("exec")
}

/// Polls the container's log until a record says `line`.
async fn wait_for_line(
    client: &mut PodServiceClient<Channel>,
    pod: &str,
    container: &str,
    line: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if logs(client, pod, container, Some(1))
            .await
            .iter()
            .any(|l| l == line)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{container} never wrote {line:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A call the profile must refuse, tried in the container.
struct Refused {
    what: &'static str,
    command: &'static [&'static str],
    /// Beside a non-zero exit, the output must say this (EPERM, as the
    /// filter answers, where the kernel would have said something else).
    says: &'static str,
}

/// Each of these succeeds (or fails differently) in a container without
/// the profile, as the capability set alone allows it: user namespaces
/// need no capability, and in one the process holds every capability over
/// the namespaces it makes.
const REFUSED: &[Refused] = &[
    Refused {
        what: "a user namespace (unshare -U)",
        command: &["unshare", "-U", "true"],
        says: "Operation not permitted",
    },
    Refused {
        what: "a mount namespace, with a user namespace to own it (unshare -r -m)",
        command: &["unshare", "-r", "-m", "true"],
        says: "Operation not permitted",
    },
    Refused {
        // Without the filter the kernel looks the target up before it
        // checks CAP_SYS_ADMIN and answers ENOENT; with it, mount(2) is
        // answered EPERM before the kernel sees its arguments.
        what: "mount(2) itself (mount -t tmpfs on a missing directory)",
        command: &["mount", "-t", "tmpfs", "none", "/no/such/dir"],
        says: "permission denied",
    },
    Refused {
        // SOCK_RAW needs CAP_NET_RAW, which the container lacks, but in a
        // user namespace with a network namespace of its own the process
        // holds it. The new netns' ping_group_range is the default "1 0",
        // so busybox ping cannot fall back to an ICMP datagram socket:
        // its success would mean a raw socket.
        what: "a raw socket through a user and network namespace (unshare -r -n ping)",
        command: &[
            "unshare",
            "-r",
            "-n",
            "sh",
            "-c",
            "ip link set lo up && ping -c1 -W1 127.0.0.1",
        ],
        says: "Operation not permitted",
    },
];

/// The container runs under Docker's default seccomp profile: the calls
/// it refuses fail, the ones services need work, in the container's own
/// process and in an exec.
#[tokio::test(flavor = "multi_thread")]
async fn pods_run_under_the_default_seccomp_profile() {
    let pa = PodAgent::start("hardening-seccomp").await;
    let main = pa.container(
        "main",
        "grep Seccomp: /proc/self/status; echo main up; exec sleep 1000",
    );
    let pod = run(&pa, "locked", vec![main]).await;
    let id = pod.id.clone();
    let mut client = pa.pods().await;
    wait_for_line(&mut client, &id, "main", "main up").await;

    // Filter mode (2) in the container's process and in an exec.
    let main_log = logs(&mut client, &id, "main", None).await;
    let exec_status = exec(
        &mut client,
        &id,
        "main",
        &["grep", "Seccomp:", "/proc/self/status"],
    )
    .await;
    let mut wrong = Vec::new();
    if main_log.first().map(String::as_str) != Some("Seccomp:\t2") {
        wrong.push(format!(
            "the container's process has no filter: {main_log:?}"
        ));
    }
    if text(&exec_status.stdout).trim() != "Seccomp:\t2" {
        wrong.push(format!("an exec has no filter: {exec_status:?}"));
    }
    for refused in REFUSED {
        let out = exec(&mut client, &id, "main", refused.command).await;
        let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
        if out.exit_code == 0 || !said.contains(refused.says) {
            wrong.push(format!(
                "{} was not refused: exit {}, {said:?}",
                refused.what, out.exit_code
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "the profile does not hold:\n{}",
        wrong.join("\n")
    );

    // The capability set's own refusal, with or without the profile
    // (Docker's profile allows socket(2) for AF_PACKET and AF_INET): no
    // raw socket in the pod's network. arping needs an AF_PACKET socket
    // (CAP_NET_RAW) and opens it first thing.
    let arping = exec(
        &mut client,
        &id,
        "main",
        &["arping", "-c1", "-w1", "-I", "lo", "127.0.0.1"],
    )
    .await;
    assert!(
        arping.exit_code != 0 && text(&arping.stderr).contains("socket: Operation not permitted"),
        "{arping:?}"
    );

    // What services do still works: a shell, files, sleeping, the
    // allowed persona, chroot (CAP_SYS_CHROOT), forks, and a TCP
    // listener answering on the pod's localhost.
    let ordinary = exec(
        &mut client,
        &id,
        "main",
        &[
            "sh",
            "-c",
            "set -e; ls /bin/busybox; cat /proc/self/stat >/dev/null; sleep 0.1; \
             linux32 true; chroot / true; echo $(echo forked) ok",
        ],
    )
    .await;
    assert_eq!(
        (ordinary.exit_code, text(&ordinary.stdout).trim()),
        (0, "/bin/busybox\nforked ok"),
        "{ordinary:?}"
    );
    let tcp = exec(
        &mut client,
        &id,
        "main",
        &[
            "sh",
            "-c",
            "nc -l -p 7070 -e echo hello-over-tcp & sleep 0.5; nc 127.0.0.1 7070 </dev/null; wait",
        ],
    )
    .await;
    assert_eq!(
        (tcp.exit_code, text(&tcp.stdout).trim()),
        (0, "hello-over-tcp"),
        "{tcp:?}"
    );

    client
        .stop_pod(StopPodRequest {
            id,
            grace_period_seconds: Some(0),
        })
        .await
        .expect("stop");
}

/// The first host id of a `/proc/self/uid_map` line `0 HOST 65536`.
fn mapped_root(line: &str) -> u32 {
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        (fields.first(), fields.get(2)),
        (Some(&"0"), Some(&"65536")),
        "uid_map: {line:?}"
    );
    fields[1].parse().expect("host id")
}

fn proc_status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Each pod's containers run in a user namespace of the pod's own range:
/// root inside is an unprivileged host uid, different per pod; it changes
/// a root-owned file of the image (copied up, owned by its host uid)
/// while the shared layer stays as it was; stopping and removing the pod
/// leaves none of its idmapped layer mounts behind.
#[tokio::test(flavor = "multi_thread")]
async fn pods_run_in_user_namespaces_of_their_own() {
    let pa = PodAgent::start("hardening-userns").await;
    let script = "cat /proc/self/uid_map; echo main up; exec sleep 1000";
    let one = run(&pa, "one", vec![pa.container("main", script)]).await;
    let two = run(&pa, "two", vec![pa.container("main", script)]).await;
    let mut client = pa.pods().await;
    let mut roots = Vec::new();
    for pod in [&one, &two] {
        wait_for_line(&mut client, &pod.id, "main", "main up").await;
        let log = logs(&mut client, &pod.id, "main", None).await;
        let root = mapped_root(log.first().map(String::as_str).unwrap_or(""));
        assert!(root >= 2_000_000_000, "an unprivileged range: {root}");
        let got = client
            .get_pod(GetPodRequest { id: pod.id.clone() })
            .await
            .expect("get")
            .into_inner();
        let pid = got.status.as_ref().unwrap().containers[0].pid;
        let ids = vec![root.to_string(); 4].join(" ");
        assert_eq!(
            proc_status_field(pid, "Uid:"),
            ids,
            "the host sees uid {root}"
        );
        assert_eq!(proc_status_field(pid, "Gid:"), ids);
        roots.push(root);
    }
    assert_ne!(roots[0], roots[1], "each pod its own range");

    // Root of the container changes a file the image's root owns.
    let out = exec(
        &mut client,
        &one.id,
        "main",
        &[
            "sh",
            "-c",
            "id -u; echo changed >> /etc/group && tail -n1 /etc/group; stat -c %u /etc/group",
        ],
    )
    .await;
    assert_eq!(
        (out.exit_code, text(&out.stdout).trim()),
        (0, "0\nchanged\n0"),
        "{out:?}"
    );
    let got = client
        .get_pod(GetPodRequest { id: one.id.clone() })
        .await
        .expect("get")
        .into_inner();
    let run_id = &got.status.as_ref().unwrap().containers[0].id;
    let pod_dir = pa.agent.dir.join("data/pods").join(&one.id);
    let upper = pod_dir
        .join("containers")
        .join(run_id)
        .join("upper/etc/group");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&upper).expect("copied up").uid(),
        roots[0],
        "the change belongs to the container's host uid"
    );
    let lower_mounts = |dir: &Path| {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let dir = dir.to_string_lossy().into_owned();
        mounts
            .lines()
            .filter(|l| l.contains(&dir) && l.contains("idmapped"))
            .count()
    };
    assert!(lower_mounts(&pod_dir) > 0, "its layers are idmapped mounts");
    client
        .stop_pod(StopPodRequest {
            id: one.id.clone(),
            grace_period_seconds: Some(0),
        })
        .await
        .expect("stop");
    client
        .remove_pod(RemovePodRequest { id: one.id.clone() })
        .await
        .expect("remove");
    assert_eq!(
        lower_mounts(&pod_dir),
        0,
        "nothing of the pod stays mounted"
    );
    // The image itself is as it was: a new pod's container sees no change.
    let three = run(
        &pa,
        "three",
        vec![pa.container("main", "tail -n1 /etc/group; echo main up; exec sleep 1000")],
    )
    .await;
    wait_for_line(&mut client, &three.id, "main", "main up").await;
    let log = logs(&mut client, &three.id, "main", None).await;
    assert_ne!(log.first().map(String::as_str), Some("changed"), "{log:?}");
    for pod in [two.id, three.id] {
        client
            .stop_pod(StopPodRequest {
                id: pod,
                grace_period_seconds: Some(0),
            })
            .await
            .expect("stop");
    }
}

/// The CRI log files of `container` in `dir`: `<name>.log` and its
/// rotated `<name>.log.<N>` (the writer's hidden staging file is not one).
fn log_files(dir: &Path, container: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let current = format!("{container}.log");
    let rotated = format!("{container}.log.");
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            *n == current
                || n.strip_prefix(&rotated)
                    .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    names.sort();
    names
}

fn chatty_line(i: usize) -> String {
    format!("chatty line {i} padded to be a record of a hundred bytes or so, like a service's")
}

/// A chatty container with a 16 KiB max size and 3 files never has more
/// than 3 log files, none over the size; Logs returns the latest lines in
/// order, its tail the last ones, and a follower gets every line of a
/// paced writer across its rotations.
#[tokio::test(flavor = "multi_thread")]
async fn pods_rotate_chatty_container_logs() {
    let pa = PodAgent::start_with(
        "hardening-logs",
        &[
            "--container-log-max-size",
            "16Ki",
            "--container-log-max-files",
            "3",
        ],
    )
    .await;
    let total = 3000;
    let chatty = pa.container(
        "chatty",
        &format!(
            "i=0; while [ $i -lt {total} ]; do i=$((i+1)); \
             echo \"chatty line $i padded to be a record of a hundred bytes or so, like a service's\"; \
             done; echo last-line; exec sleep 1000"
        ),
    );
    // Starts after the follower below is reading; ~140 bytes a record,
    // 20 records every 50 ms: a rotation about every 0.3 s.
    let ticker = pa.container(
        "ticker",
        "sleep 2; i=0; while [ $i -lt 600 ]; do i=$((i+1)); \
         echo \"tick $i padded to be a record of a hundred bytes or so, for the follower\"; \
         [ $((i % 20)) = 0 ] && sleep 0.05; done; echo ticker done",
    );
    let pod = run(&pa, "chatty", vec![chatty, ticker]).await;
    let id = pod.id.clone();
    let dir = log_dir(&pa, &id);
    let mut client = pa.pods().await;
    let mut follow = client
        .logs(LogsRequest {
            pod_id: id.clone(),
            container_name: "ticker".into(),
            follow: true,
            tail_lines: None,
        })
        .await
        .expect("follow")
        .into_inner();
    let followed = tokio::spawn(async move {
        let mut ticks = Vec::new();
        while let Some(record) = follow.message().await.expect("record") {
            ticks.push(String::from_utf8_lossy(&record.message).into_owned());
        }
        ticks
    });

    // While the chatty container writes: never more than three files.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut most = 0;
    loop {
        most = most.max(log_files(&dir, "chatty").len());
        let newest = logs(&mut client, &id, "chatty", Some(1)).await;
        if newest.iter().any(|l| l == "last-line") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the chatty container never finished: {newest:?}"
        );
        for _ in 0..10 {
            most = most.max(log_files(&dir, "chatty").len());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert!(most <= 3, "{most} log files at once");
    let files = log_files(&dir, "chatty");
    assert_eq!(files.len(), 3, "rotated, and the oldest deleted: {files:?}");
    assert_eq!(files[0], "chatty.log", "{files:?}");
    for name in &files {
        let size = std::fs::metadata(dir.join(name)).unwrap().len();
        assert!(size <= 16 * 1024, "{name}: {size} bytes");
    }

    // Logs: the latest lines, in order, across the files; the oldest are
    // gone with their files.
    let lines = logs(&mut client, &id, "chatty", None).await;
    assert_eq!(lines.last().map(String::as_str), Some("last-line"));
    let kept = lines.len() - 1;
    assert!(
        (200..total).contains(&kept),
        "three files of 16 KiB hold a few hundred records: {kept}"
    );
    let expected: Vec<String> = (total - kept + 1..=total).map(chatty_line).collect();
    assert_eq!(lines[..kept], expected[..], "consecutive up to the last");
    let tail = logs(&mut client, &id, "chatty", Some(3)).await;
    assert_eq!(
        tail,
        [
            chatty_line(total - 1),
            chatty_line(total),
            "last-line".to_string()
        ]
    );

    // The follower read every tick across the ticker's rotations.
    let ticks = tokio::time::timeout(Duration::from_secs(60), followed)
        .await
        .expect("the follow ends with the ticker")
        .expect("follower");
    let expected: Vec<String> = (1..=600)
        .map(|i| {
            format!("tick {i} padded to be a record of a hundred bytes or so, for the follower")
        })
        .chain(["ticker done".to_string()])
        .collect();
    assert_eq!(ticks.len(), expected.len(), "no line lost or repeated");
    assert_eq!(ticks, expected);
    let ticker_files = log_files(&dir, "ticker");
    assert!(
        ticker_files.len() == 3
            && ticker_files.iter().any(|n| n
                .strip_prefix("ticker.log.")
                .is_some_and(|k| k.parse::<u32>().unwrap() >= 3)),
        "the ticker's log rotated several times: {ticker_files:?}"
    );

    let stopped = client
        .stop_pod(StopPodRequest {
            id: id.clone(),
            grace_period_seconds: Some(0),
        })
        .await
        .expect("stop")
        .into_inner();
    assert_eq!(
        stopped.status.as_ref().expect("status").state(),
        PodState::Stopped
    );
    let pod = client
        .get_pod(GetPodRequest { id })
        .await
        .expect("get")
        .into_inner();
    let chatty = pod
        .status
        .expect("status")
        .containers
        .into_iter()
        .find(|c| c.name == "chatty")
        .expect("chatty");
    assert_eq!(chatty.state(), ContainerState::Exited);
}
