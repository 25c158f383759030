//! The container runtime layer against real parts, as root: crun (and runc
//! for one test), real cgroups below a pool-like parent made with
//! `stratum_cgroup::Hierarchy`, real overlayfs over a busybox image
//! built here as two layer directories, real pinned namespaces.
//!
//! Each test builds its own uniquely named cgroup root, pod and runtime
//! state directory; a `Fixture` guard deletes what the runtime still knows,
//! unmounts, kills and removes the cgroups and the files, even when the
//! test failed.
//!
//! Host preparation (done here, idempotent): crun refuses hybrid cgroup
//! setups whose v2 hierarchy holds controllers (the development machine's
//! `/sys/fs/cgroup/unified` offers `hugetlb`); such controllers are mounted
//! as v1 hierarchies, as systemd does on hybrid hosts.

// Test helpers may panic: a broken fixture fails the test that uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use stratum_cgroup::{Cgroup, CgroupLimits, Hierarchy, HierarchyConfig};
use stratum_runtime::mountinfo;
use stratum_runtime::{
    become_subreaper, reap_orphans, CgroupMapping, Container, ContainerConfig, ExecChild,
    ExitReason, LogStream, OciRuntime, OciRuntimeConfig, PodContext, PodNetwork, PodSandbox,
    ProcessConfig, ProcessExit, RootfsSource, RuntimeError, RuntimeKind,
};
use stratum_testkit::root::require_root;

const MIB: u64 = 1 << 20;

const APPLETS: [&str; 23] = [
    "sh", "echo", "cat", "sleep", "hostname", "ip", "httpd", "wget", "readlink", "dd", "head",
    "tail", "ls", "id", "true", "false", "env", "mkdir", "grep", "kill", "tty", "stty", "test",
];

static HOST: Once = Once::new();

/// Hybrid hosts: move controllers off the v2 hierarchy so crun accepts
/// the host; make the test process a subreaper (process-wide).
fn prepare_host() {
    HOST.call_once(|| {
        require_root("cgroups, mounts and an OCI runtime");
        stratum_testkit::fixture::mount_unified_controllers_as_v1()
            .expect("mount hybrid controllers as v1");
        become_subreaper().expect("become subreaper");
    });
}

fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("rt-{tag}-{}-{nanos}", std::process::id())
}

/// Busybox as two layers: lower with `bin/busybox`, applet links and
/// `/www`; upper with `/etc/motd` and a file that hides one of the lower.
fn busybox_layers(base: &Path) -> Vec<PathBuf> {
    let lower = base.join("layers/lower");
    let upper = base.join("layers/upper");
    fs::create_dir_all(lower.join("bin")).expect("mkdir");
    fs::create_dir_all(lower.join("www")).expect("mkdir");
    fs::create_dir_all(lower.join("etc")).expect("mkdir");
    fs::create_dir_all(upper.join("etc")).expect("mkdir");
    fs::copy("/bin/busybox", lower.join("bin/busybox"))
        .expect("copy busybox (apt-get install busybox-static)");
    for applet in APPLETS {
        symlink("busybox", lower.join("bin").join(applet)).expect("applet link");
    }
    fs::write(lower.join("www/index.html"), "hi from the pod\n").expect("write");
    fs::write(lower.join("etc/release"), "lower\n").expect("write");
    fs::write(upper.join("etc/motd"), "from the upper layer\n").expect("write");
    fs::write(upper.join("etc/release"), "upper\n").expect("write");
    vec![upper, lower]
}

/// One pod on a pool, with its runtime; cleaned up on drop.
struct Fixture {
    base: PathBuf,
    root: Cgroup,
    hierarchy: Hierarchy,
    pod: Cgroup,
    mapping: CgroupMapping,
    runtime: OciRuntime,
    sandbox: PodSandbox,
    layers: Vec<PathBuf>,
}

impl Fixture {
    fn new(tag: &str, runtime_binary: &str) -> Fixture {
        prepare_host();
        let name = unique(tag);
        let base = std::env::temp_dir().join(format!("stratum-{name}"));
        fs::create_dir_all(&base).expect("base dir");
        let hierarchy = Hierarchy::detect_with(&HierarchyConfig {
            root_name: format!("stratum-{name}"),
            ..HierarchyConfig::default()
        })
        .expect("detect cgroups");
        let root = hierarchy.root().expect("stratum root");
        let pool = hierarchy.create_pool(&root, "pool-1").expect("pool");
        pool.apply(&CgroupLimits {
            cpu_limit_millicores: Some(1500),
            memory_limit_bytes: Some(512 * MIB),
            ..CgroupLimits::default()
        })
        .expect("pool limits");
        let pod = hierarchy.create_leaf(&pool, "pod-1").expect("pod cgroup");
        let mapping = CgroupMapping::detect(&root).expect("cgroup mapping");
        let runtime = OciRuntime::new(
            &OciRuntimeConfig {
                binary: PathBuf::from(runtime_binary),
                state_root: base.join("state"),
                command_timeout: Duration::from_secs(30),
            },
            mapping.view(),
        )
        .expect("runtime");
        runtime.check_host().expect("host fit for the runtime");
        let sandbox = PodSandbox::create(
            &base.join("pod"),
            &format!("pod-{tag}"),
            PodNetwork::New,
            Default::default(),
            Default::default(),
        )
        .expect("sandbox");
        let layers = busybox_layers(&base);
        Fixture {
            base,
            root,
            hierarchy,
            pod,
            mapping,
            runtime,
            sandbox,
            layers,
        }
    }

    fn ctx(&self) -> PodContext<'_> {
        PodContext {
            hierarchy: &self.hierarchy,
            pod_cgroup: &self.pod,
            sandbox: &self.sandbox,
            mapping: &self.mapping,
            log_writer: Path::new(env!("CARGO_BIN_EXE_stratum-log-writer")),
            log_rotation: stratum_runtime::LogRotation::default(),
        }
    }

    fn config(&self, id: &str, script: &str, limits: CgroupLimits) -> ContainerConfig {
        ContainerConfig {
            id: id.to_string(),
            process: ProcessConfig::new(vec!["/bin/sh".into(), "-c".into(), script.into()]),
            rootfs: RootfsSource::Layers(self.layers.clone()),
            readonly_rootfs: false,
            limits,
            log_path: self.base.join("logs").join(format!("{id}.log")),
            idmap: None,
            confinement: Default::default(),
            bind_mounts: Vec::new(),
            stdin: false,
        }
    }

    fn ctr_dir(&self, id: &str) -> PathBuf {
        self.base.join("containers").join(id)
    }

    async fn run(&self, id: &str, script: &str, limits: CgroupLimits) -> Container {
        let config = self.config(id, script, limits);
        let ctr = Container::create(&self.runtime, self.ctx(), &self.ctr_dir(id), &config)
            .await
            .expect("create container");
        ctr.start(&self.runtime).await.expect("start container");
        ctr
    }

    /// Checks that nothing of a removed container is left.
    async fn assert_gone(&self, id: &str, cgroups_path: &str) {
        let dir = self.ctr_dir(id);
        assert!(!dir.exists(), "{} left behind", dir.display());
        let mounts = mountinfo::read_self().expect("mountinfo");
        assert!(
            !mounts.iter().any(|m| m.mount_point.starts_with(&dir)),
            "a mount below {} is left",
            dir.display()
        );
        for cg in self.mapping.host_dirs(cgroups_path) {
            assert!(!cg.exists(), "cgroup {} left behind", cg.display());
        }
        let err = self
            .runtime
            .state(id)
            .await
            .expect_err("runtime still knows the container");
        assert!(matches!(err, RuntimeError::Runtime { .. }), "{err}");
        let state_entry = self.runtime.state_root().join(id);
        assert!(
            !state_entry.exists(),
            "runtime state {} left",
            state_entry.display()
        );
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Whatever a failed test left: runtime state (in a thread with its
        // own tokio runtime: drop may run inside the test's runtime).
        let runtime = self.runtime.clone();
        let ids: Vec<String> = fs::read_dir(runtime.state_root())
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n != "exec")
                    .collect()
            })
            .unwrap_or_default();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                for id in ids {
                    let _ = rt.block_on(runtime.delete(&id, true));
                }
            }
        })
        .join();
        let _ = self.root.kill_all(Duration::from_secs(10));
        let _ = self.sandbox.remove();
        if let Ok(mounts) = mountinfo::read_self() {
            let mut ours: Vec<PathBuf> = mounts
                .into_iter()
                .map(|m| m.mount_point)
                .filter(|p| p.starts_with(&self.base))
                .collect();
            ours.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
            for mount_point in ours {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&mount_point)
                    .status();
            }
        }
        if let Ok(path) = self.mapping.runtime_path(&self.root) {
            let _ = self.mapping.prune(&path);
        }
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// Reads the CRI log until `needle` shows up (or the deadline passes).
async fn wait_for_log(ctr: &Container, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = fs::read_to_string(ctr.log_path()).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} not in the log after {timeout:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn read_trimmed(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .to_string()
}

/// Asserts that, in every hierarchy backing `cgroup`, the kernel places
/// `pid` exactly in `cgroup`'s directory (`/proc/<pid>/cgroup` against the
/// directory below its mount point).
fn assert_in_cgroup_dirs(pid: u32, cgroup: &Cgroup) {
    let lines = read_trimmed(&PathBuf::from(format!("/proc/{pid}/cgroup")));
    let mounts = mountinfo::read_self().expect("mountinfo");
    for dir in cgroup.dirs() {
        let mount = mounts
            .iter()
            .filter(|m| m.is_cgroup() && dir.starts_with(&m.mount_point))
            .max_by_key(|m| m.mount_point.as_os_str().len())
            .unwrap_or_else(|| panic!("{} is in no cgroup mount", dir.display()));
        let rel = dir.strip_prefix(&mount.mount_point).expect("prefix");
        let expected = mount.root.join(rel);
        let controllers = mount.cgroup_controllers();
        let actual = lines
            .lines()
            .find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (id, list, path) = (f.next()?, f.next()?, f.next()?);
                let matches = if mount.fs_type == "cgroup2" {
                    id == "0"
                } else {
                    list.split(',').any(|c| controllers.iter().any(|m| m == c))
                };
                matches.then(|| PathBuf::from(path))
            })
            .unwrap_or_else(|| panic!("no line for {controllers:?} in {lines}"));
        assert_eq!(
            actual,
            expected,
            "pid {pid} in the wrong cgroup for {}",
            dir.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_container_logs_cgroup_limits_and_cleanup() {
    let fx = Fixture::new("hello", "crun");
    let id = unique("hello");
    let limits = CgroupLimits {
        cpu_shares_weight: 512,
        cpu_limit_millicores: Some(500),
        memory_limit_bytes: Some(64 * MIB),
        ..CgroupLimits::default()
    };
    let script = "echo hello; cat /etc/motd /etc/release; echo oops >&2; exec sleep 60";
    let ctr = fx.run(&id, script, limits).await;
    let text = wait_for_log(&ctr, "stdout F upper", Duration::from_secs(10)).await;
    assert!(text.contains(" stdout F hello\n"), "{text}");
    assert!(text.contains(" stdout F from the upper layer\n"), "{text}");
    wait_for_log(&ctr, "stderr F oops", Duration::from_secs(5)).await;

    // The init is in the container's leaf below pod-1 below pool-1, in
    // every hierarchy, and the leaf enforces the limits.
    let pid = ctr.pid();
    let procs = ctr.cgroup().procs().expect("cgroup.procs");
    assert!(procs.contains(&pid), "pid {pid} not in {procs:?}");
    let expected_tail = format!("/pool-1/pod-1/{id}");
    assert_in_cgroup_dirs(pid, ctr.cgroup());
    assert!(
        ctr.cgroups_path().ends_with(&expected_tail),
        "cgroupsPath {}",
        ctr.cgroups_path()
    );
    let dirs = ctr.cgroup().dirs();
    let file = |name: &str| {
        dirs.iter()
            .map(|d| d.join(name))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no {name}"))
    };
    assert_eq!(
        read_trimmed(&file("memory.limit_in_bytes")),
        (64 * MIB).to_string()
    );
    assert_eq!(read_trimmed(&file("cpu.cfs_quota_us")), "50000");
    assert_eq!(read_trimmed(&file("cpu.shares")), "512");
    let config = read_trimmed(&ctr.dir().join("config.json"));
    assert!(
        config.contains(&format!("\"cgroupsPath\": \"{}\"", ctr.cgroups_path())),
        "{config}"
    );

    let report = ctr.stop(Duration::from_millis(500)).await.expect("stop");
    // sleep is PID 1 of its namespace: SIGTERM without a handler is ignored
    // there, so the stop escalates to SIGKILL.
    assert_eq!(report.exit_code, Some(137), "{report:?}");
    assert_eq!(report.reason, ExitReason::Error);
    assert!(ctr.stop_requested());
    let log_path = ctr.log_path().to_path_buf();
    let cgroups_path = ctr.cgroups_path().to_string();
    ctr.remove(&fx.runtime).await.expect("remove");
    fx.assert_gone(&id, &cgroups_path).await;
    let log = fs::read_to_string(&log_path).expect("CRI log kept");
    assert!(log.contains(" stdout F hello\n"));
}

/// exec-sync of `sh -c script`, which must succeed; its stdout.
async fn exec_ok(runtime: &OciRuntime, ctr: &Container, script: &str) -> String {
    let args = vec!["/bin/sh".to_string(), "-c".to_string(), script.to_string()];
    let out = ctr
        .exec_sync(runtime, &args, Duration::from_secs(10))
        .await
        .expect("exec");
    assert_eq!(
        out.exit_code,
        0,
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_pod_containers_share_net_uts_ipc_and_exec() {
    let fx = Fixture::new("pod", "crun");
    let server_id = unique("srv");
    let client_id = unique("cli");
    let server = fx
        .run(
            &server_id,
            "exec httpd -f -p 8080 -h /www",
            CgroupLimits::default(),
        )
        .await;
    let client = fx
        .run(&client_id, "exec sleep 60", CgroupLimits::default())
        .await;
    let exec = |ctr, script| exec_ok(&fx.runtime, ctr, script);
    // Same network, IPC and UTS namespaces; different PID namespaces.
    let probe = "hostname; ip -o link; for n in net ipc uts; do readlink /proc/self/ns/$n; done";
    let a = exec(&server, probe).await;
    let b = exec(&client, probe).await;
    assert_eq!(a, b);
    assert!(a.starts_with("pod-pod\n"), "{a}");
    let pid_a = exec(&server, "readlink /proc/self/ns/pid").await;
    let pid_b = exec(&client, "readlink /proc/self/ns/pid").await;
    assert_ne!(pid_a, pid_b);

    // localhost between the two.
    let deadline = Instant::now() + Duration::from_secs(10);
    let page = loop {
        let args: Vec<String> = ["wget", "-q", "-O", "-", "http://127.0.0.1:8080/index.html"]
            .map(String::from)
            .to_vec();
        let out = client
            .exec_sync(&fx.runtime, &args, Duration::from_secs(5))
            .await
            .expect("exec wget");
        if out.exit_code == 0 {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(Instant::now() < deadline, "wget kept failing: {out:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(page, "hi from the pod\n");

    // exec-sync: output and exit code; timeout kills.
    let args = ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"]
        .map(String::from)
        .to_vec();
    let out = client
        .exec_sync(&fx.runtime, &args, Duration::from_secs(10))
        .await
        .expect("exec");
    assert_eq!(
        (out.exit_code, out.stdout.as_slice(), out.stderr.as_slice()),
        (3, &b"out\n"[..], &b"err\n"[..])
    );
    let args = ["sleep", "30"].map(String::from).to_vec();
    let started = Instant::now();
    let err = client
        .exec_sync(&fx.runtime, &args, Duration::from_millis(500))
        .await
        .expect_err("timeout");
    assert!(matches!(err, RuntimeError::ExecTimeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The killed exec process was re-parented to us (subreaper) and lives
    // in the container's PID namespace: the orphan reaper collects it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut reaped = 0;
    while reaped == 0 && Instant::now() < deadline {
        reaped += reap_orphans();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reaped >= 1, "the timed-out exec process was not reaped");

    for ctr in [server, client] {
        let id = ctr.id().to_string();
        let path = ctr.cgroups_path().to_string();
        ctr.remove(&fx.runtime).await.expect("remove");
        fx.assert_gone(&id, &path).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_container_over_memory_limit_is_oom_killed() {
    let fx = Fixture::new("oom", "crun");
    let id = unique("oom");
    let limits = CgroupLimits {
        memory_limit_bytes: Some(32 * MIB),
        ..CgroupLimits::default()
    };
    let ctr = fx
        .run(
            &id,
            "echo start; exec dd if=/dev/zero of=/dev/null bs=128M count=1",
            limits,
        )
        .await;
    let report = tokio::time::timeout(Duration::from_secs(60), ctr.wait())
        .await
        .expect("OOM kill within a minute")
        .expect("wait");
    assert!(report.oom_killed, "{report:?}");
    assert_eq!(report.reason, ExitReason::OomKilled);
    // dd is the init (exec): SIGKILLed by the OOM killer.
    assert_eq!(
        report.exit,
        ProcessExit::Signaled(libc::SIGKILL),
        "{report:?}"
    );
    assert_eq!(report.exit_code, Some(137));
    let usage = ctr.cgroup().usage().expect("usage");
    assert!(usage.oom_kills >= 1, "{usage:?}");
    ctr.finish_logs().await.expect("logs");
    let log = fs::read_to_string(ctr.log_path()).expect("log");
    assert!(log.contains("stdout F start"), "{log}");
    let path = ctr.cgroups_path().to_string();
    ctr.remove(&fx.runtime).await.expect("remove");
    fx.assert_gone(&id, &path).await;
}

/// Zombie `stratum-log-writer` children of this test process.
fn zombie_log_writers() -> usize {
    let me = std::process::id().to_string();
    fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
                .filter(|stat| {
                    let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
                        return false;
                    };
                    let mut fields = after.split_whitespace();
                    stat.contains("(stratum-log-wr")
                        && fields.next() == Some("Z")
                        && fields.next() == Some(me.as_str())
                })
                .count()
        })
        .unwrap_or(0)
}

/// The entrypoint idioms that reopen the output (`> /dev/stdout`, which
/// truncates a file) and a fast writer lose no line and cut none: the
/// container's output is a pipe its log writer owns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_logs_keep_every_line_through_dev_stdout() {
    let fx = Fixture::new("devout", "crun");
    let id = unique("devout");
    let script = "echo before; \
                  echo reopened-out > /dev/stdout; \
                  echo reopened-err > /dev/stderr; \
                  i=0; while [ $i -lt 20000 ]; do echo line-$i; i=$((i+1)); done; \
                  echo after > /dev/stdout";
    let ctr = fx.run(&id, script, CgroupLimits::default()).await;
    let report = tokio::time::timeout(Duration::from_secs(120), ctr.wait())
        .await
        .expect("the writer finishes")
        .expect("wait");
    assert_eq!(report.exit_code, Some(0), "{report:?}");
    ctr.finish_logs().await.expect("logs");
    let mut follower = ctr.logs(false).expect("read");
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    while let Some(line) = follower.next().await.expect("record") {
        assert!(!line.partial, "no line is cut: {line:?}");
        let text = String::from_utf8(line.message).expect("utf-8");
        match line.stream {
            LogStream::Stdout => stdout.push(text),
            LogStream::Stderr => stderr.push(text),
        }
    }
    let mut expected = vec!["before".to_string(), "reopened-out".to_string()];
    expected.extend((0..20000).map(|i| format!("line-{i}")));
    expected.push("after".to_string());
    assert_eq!(stdout.len(), expected.len(), "every stdout line is there");
    assert_eq!(stdout, expected);
    assert_eq!(stderr, vec!["reopened-err".to_string()]);
    // The writer, our child, was reaped once it ended: no zombie stays.
    let deadline = Instant::now() + Duration::from_secs(10);
    while zombie_log_writers() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        zombie_log_writers(),
        0,
        "a finished log writer stays a zombie"
    );
    let path = ctr.cgroups_path().to_string();
    ctr.remove(&fx.runtime).await.expect("remove");
    fx.assert_gone(&id, &path).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_exit_codes_and_follow_logs() {
    let fx = Fixture::new("exit", "crun");
    let id = unique("exit");
    let long = "x".repeat(40 * 1024);
    let script = format!("echo first; sleep 0.3; echo {long}; echo last >&2; exit 7");
    let ctr = fx.run(&id, &script, CgroupLimits::default()).await;
    let mut follower = ctr.logs(true).expect("follow");
    let mut records = Vec::new();
    let follow = async {
        while let Some(line) = follower.next().await.expect("record") {
            records.push(line);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        let (report, ()) = tokio::join!(ctr.wait(), follow);
        let report = report.expect("wait");
        assert_eq!(report.exit_code, Some(7));
        assert_eq!(report.reason, ExitReason::Error);
    })
    .await
    .expect("exit and end of logs");
    let stdout: Vec<_> = records
        .iter()
        .filter(|r| r.stream == LogStream::Stdout)
        .collect();
    assert_eq!(stdout[0].message, b"first");
    // 40 KiB line: two 16 KiB pieces and the rest as the final record.
    assert!(
        stdout[1].partial && stdout[2].partial && !stdout[3].partial,
        "{:?}",
        &stdout[1..]
    );
    let joined: Vec<u8> = stdout[1..4]
        .iter()
        .flat_map(|r| r.message.clone())
        .collect();
    assert_eq!(joined, long.as_bytes());
    assert!(records
        .iter()
        .any(|r| r.stream == LogStream::Stderr && r.message == b"last"));
    let path = ctr.cgroups_path().to_string();
    ctr.remove(&fx.runtime).await.expect("remove");
    fx.assert_gone(&id, &path).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_container_is_adopted_after_losing_its_handle() {
    let fx = Fixture::new("adopt", "crun");
    let id = unique("adopt");
    let ctr = fx
        .run(&id, "echo before; exec sleep 60", CgroupLimits::default())
        .await;
    wait_for_log(&ctr, "stdout F before", Duration::from_secs(10)).await;
    let dir = ctr.dir().to_path_buf();
    drop(ctr); // as if the agent had died: nothing is torn down
    let adopted = Container::adopt(&fx.runtime, &fx.hierarchy, &fx.mapping, &dir)
        .await
        .expect("adopt");
    assert_eq!(adopted.id(), id);
    assert!(
        adopted.exit_report().is_none(),
        "adopted container seen as exited"
    );
    let args = ["echo", "still here"].map(String::from).to_vec();
    let out = adopted
        .exec_sync(&fx.runtime, &args, Duration::from_secs(10))
        .await
        .expect("exec");
    assert_eq!(out.stdout, b"still here\n");
    let report = adopted
        .stop(Duration::from_millis(200))
        .await
        .expect("stop");
    assert_eq!(report.exit_code, Some(137));
    let path = adopted.cgroups_path().to_string();
    adopted.remove(&fx.runtime).await.expect("remove");
    fx.assert_gone(&id, &path).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_runc_runs_a_container_in_its_cgroup() {
    let fx = Fixture::new("runc", "runc");
    assert_eq!(fx.runtime.kind(), RuntimeKind::Runc);
    let id = unique("runc");
    let limits = CgroupLimits {
        memory_limit_bytes: Some(48 * MIB),
        ..CgroupLimits::default()
    };
    let ctr = fx
        .run(
            &id,
            "echo hello; cat /etc/motd; grep memory /proc/self/cgroup",
            limits,
        )
        .await;
    let report = tokio::time::timeout(Duration::from_secs(20), ctr.wait())
        .await
        .expect("exit")
        .expect("wait");
    assert_eq!(report.reason, ExitReason::Completed, "{report:?}");
    ctr.finish_logs().await.expect("logs");
    let log = fs::read_to_string(ctr.log_path()).expect("log");
    assert!(log.contains(" stdout F hello\n"), "{log}");
    assert!(log.contains(" stdout F from the upper layer\n"), "{log}");
    let expected = format!("/pool-1/pod-1/{id}\n");
    assert!(
        log.contains(&expected),
        "memory cgroup not {expected:?}: {log}"
    );
    let path = ctr.cgroups_path().to_string();
    ctr.remove(&fx.runtime).await.expect("remove");
    fx.assert_gone(&id, &path).await;
}

/// Reads `from` until the text read contains `needle` (or ends, or 10 s
/// pass); all text read.
async fn read_until(from: &mut (impl tokio::io::AsyncRead + Unpin), needle: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut text = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&text).contains(needle) {
        let mut buf = [0u8; 1024];
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, from.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{needle:?} not read: {:?}", String::from_utf8_lossy(&text)))
            .expect("read");
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// The exec'd process's pid, once the runtime has written it (crun may
/// write it after the process has started talking).
async fn exec_pid(child: &ExecChild) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = child.pid() {
            return pid;
        }
        assert!(Instant::now() < deadline, "no exec pid");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_exec(child: &mut ExecChild) -> i32 {
    tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exec ends")
        .expect("wait")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_interactive_exec_pipes_and_terminal() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fx = Fixture::new("iexec", "crun");
    let id = unique("iexec");
    let ctr = fx.run(&id, "exec sleep 60", CgroupLimits::default()).await;
    let sh = |script: &str| vec!["/bin/sh".to_string(), "-c".to_string(), script.to_string()];
    let exec_dirs = || {
        fs::read_dir(fx.runtime.state_root().join("exec"))
            .map(|d| d.count())
            .unwrap_or(0)
    };

    // Pipes: stdin to cat comes back on stdout.
    let mut cat = ctr
        .spawn_exec(&fx.runtime, &["cat".to_string()], false)
        .await
        .expect("spawn cat");
    assert!(cat.terminal.is_none());
    let mut stdin = cat.stdin.take().expect("stdin");
    stdin
        .write_all(b"hello through cat\n")
        .await
        .expect("write");
    drop(stdin);
    let mut out = String::new();
    cat.stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .await
        .expect("read");
    assert_eq!(out, "hello through cat\n");
    assert_eq!(wait_exec(&mut cat).await, 0);

    // stdout and stderr apart; the exit code.
    let mut child = ctr
        .spawn_exec(&fx.runtime, &sh("echo out; echo err >&2; exit 3"), false)
        .await
        .expect("spawn sh");
    let (mut out, mut err) = (String::new(), String::new());
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let (a, b) = tokio::join!(
        stdout.read_to_string(&mut out),
        stderr.read_to_string(&mut err)
    );
    a.expect("stdout");
    b.expect("stderr");
    assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
    assert_eq!(wait_exec(&mut child).await, 3);
    assert_eq!(wait_exec(&mut child).await, 3, "wait again");

    // kill: by the pid the runtime wrote.
    let mut sleeper = ctr
        .spawn_exec(&fx.runtime, &["sleep".to_string(), "30".to_string()], false)
        .await
        .expect("spawn sleep");
    let pid = exec_pid(&sleeper).await;
    sleeper.kill().expect("kill");
    let code = wait_exec(&mut sleeper).await;
    // crun reports its child's SIGKILL as 128 + 9.
    assert_eq!(code, 137, "killed sleep");
    // crun reaped it (`exe` is gone from a zombie too).
    assert!(!Path::new(&format!("/proc/{pid}/exe")).exists());

    // A terminal: the process sees a tty and TERM; its output comes
    // through the master; a resize is seen inside; the exit code.
    let script = "tty; test -t 0 && echo IS-TTY; echo TERM=$TERM; read line; stty size; exit 5";
    let mut child = ctr
        .spawn_exec(&fx.runtime, &sh(script), true)
        .await
        .expect("spawn with terminal");
    assert!(child.stdin.is_none() && child.stdout.is_none() && child.stderr.is_none());
    let mut pty = child.terminal.take().expect("terminal");
    // (A wrong TERM fails with the text read so far.)
    let text = read_until(&mut pty, "TERM=xterm\r\n").await;
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert!(text.contains("IS-TTY\r\n"), "{text:?}");
    let resizer = pty.resizer();
    resizer.resize(100, 40).expect("resize");
    pty.write_all(b"go\n").await.expect("write");
    let text = read_until(&mut pty, "40 100").await;
    assert!(text.contains("40 100"), "{text:?}");
    assert_eq!(wait_exec(&mut child).await, 5);
    // The process is gone: the master reads end of file.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), pty.read_to_end(&mut rest))
        .await
        .expect("EOF")
        .expect("read");

    // A short command ends before we read: its output is still there.
    let mut child = ctr
        .spawn_exec(&fx.runtime, &sh("echo quick; exit 2"), true)
        .await
        .expect("spawn quick");
    let mut pty = child.terminal.take().expect("terminal");
    let text = read_until(&mut pty, "quick").await;
    assert!(text.contains("quick"), "{text:?}");
    assert_eq!(wait_exec(&mut child).await, 2);

    // Dropping a running exec kills its process.
    let mut child = ctr
        .spawn_exec(&fx.runtime, &sh("echo ready; exec sleep 30"), true)
        .await
        .expect("spawn shell");
    let mut pty = child.terminal.take().expect("terminal");
    read_until(&mut pty, "ready").await;
    let pid = exec_pid(&child).await;
    drop(child);
    drop(pty);
    // Killed, re-parented to us (the runtime was killed too) and reaped
    // as an orphan: a zombie left would keep the cgroup busy.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "exec'd process {pid} survived drop"
        );
        reap_orphans();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Runtime failure in terminal mode: an error, not a hang.
    let started = Instant::now();
    let res = fx
        .runtime
        .spawn_exec("no-such-container", &{
            let mut p = oci_spec::runtime::Process::default();
            p.set_args(Some(vec!["sh".into()]));
            p.set_terminal(Some(true));
            p
        })
        .await;
    let err = res.expect_err("no container");
    assert!(matches!(err, RuntimeError::Runtime { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(exec_dirs(), 0, "exec directories left");

    let path = ctr.cgroups_path().to_string();
    ctr.remove(&fx.runtime).await.expect("remove");
    fx.assert_gone(&id, &path).await;
}

/// Output read from an attachment until `needle` shows up (10 s), by
/// stream: (stdout, stderr) so far.
async fn attached_until(
    out: &mut stratum_runtime::attach::AttachOutput,
    seen: &mut (String, String),
    needle: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.0.contains(needle) && !seen.1.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = tokio::time::timeout(left, out.next())
            .await
            .unwrap_or_else(|_| panic!("{needle:?} not attached-read: {seen:?}"))
            .expect("attach read");
        match next {
            Some((LogStream::Stdout, data)) => seen.0.push_str(&String::from_utf8_lossy(&data)),
            Some((LogStream::Stderr, data)) => seen.1.push_str(&String::from_utf8_lossy(&data)),
            None => panic!("attachment ended before {needle:?}: {seen:?}"),
        }
    }
}

/// Reads an attachment to its end (10 s): the output ended.
async fn attached_to_end(out: &mut stratum_runtime::attach::AttachOutput) -> String {
    let mut text = String::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some((_, data)) = out.next().await.expect("attach read") {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    })
    .await;
    assert!(ended.is_ok(), "attachment did not end: {text:?}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_attach_to_stdin_pipes_and_a_terminal() {
    use std::io::{Read, Write};
    let fx = Fixture::new("attach", "crun");

    // Pipes with stdin: two clients see the same output, either one's
    // input reaches the container, garbage drops only its sender.
    let id = unique("attach-pipes");
    let script = "echo ready; while read line; do echo \"got $line\"; echo \"err $line\" >&2; done; echo bye";
    let mut config = fx.config(&id, script, CgroupLimits::default());
    config.stdin = true;
    let ctr = Container::create(&fx.runtime, fx.ctx(), &fx.ctr_dir(&id), &config)
        .await
        .expect("create");
    // Attached before start: nothing the container writes is missed.
    let (mut out_a, mut in_a) = ctr.attach().await.expect("attach a").split();
    let (mut out_b, _in_b) = ctr.attach().await.expect("attach b").split();
    ctr.start(&fx.runtime).await.expect("start");
    let (mut seen_a, mut seen_b) = Default::default();
    attached_until(&mut out_a, &mut seen_a, "ready").await;
    in_a.stdin(b"one\n").await.expect("stdin");
    attached_until(&mut out_a, &mut seen_a, "err one").await;
    attached_until(&mut out_b, &mut seen_b, "err one").await;
    attached_until(&mut out_a, &mut seen_a, "got one").await;
    attached_until(&mut out_b, &mut seen_b, "got one").await;
    assert_eq!(seen_b.1, "err one\n", "stderr apart");

    let socket = fx.ctr_dir(&id).join(stratum_runtime::attach::SOCKET_NAME);
    let mode = fs::metadata(&socket).expect("socket").permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    // A client sending garbage is disconnected; the container goes on.
    let path = socket.clone();
    let dropped = tokio::task::spawn_blocking(move || {
        let mut raw = std::os::unix::net::UnixStream::connect(&path).expect("connect");
        raw.write_all(&[9, 0, 0, 0, 0]).expect("write garbage");
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut rest = Vec::new();
        raw.read_to_end(&mut rest).map(|_| rest.len())
    })
    .await
    .unwrap();
    assert!(
        dropped.is_ok(),
        "garbage sender not disconnected: {dropped:?}"
    );
    in_a.stdin(b"two\n").await.expect("stdin");
    attached_until(&mut out_b, &mut seen_b, "got two").await;

    // Closing stdin ends the loop; the attachments end with the output.
    in_a.close_stdin().await.expect("close stdin");
    let rest = attached_to_end(&mut out_a).await;
    assert!(rest.contains("bye"), "{rest:?}");
    attached_to_end(&mut out_b).await;
    let report = ctr.wait().await.expect("wait");
    assert_eq!(report.exit_code, Some(0));
    let log = wait_for_log(&ctr, "bye", Duration::from_secs(10)).await;
    assert!(
        log.contains(" stdout F got two") && log.contains(" stderr F err one"),
        "{log}"
    );
    assert!(
        ctr.attach().await.is_err(),
        "attached to an exited container"
    );
    let path = ctr.cgroups_path().to_string();
    ctr.remove(&fx.runtime).await.expect("remove");
    fx.assert_gone(&id, &path).await;

    // A quiet container without stdin: clients that come and go leave
    // no trace (more than the writer takes at once), the next one still
    // gets the output.
    let id = unique("attach-quiet");
    let script =
        "while ! test -e /go; do sleep 0.1; done; while true; do echo tick; sleep 0.2; done";
    let ctr = fx.run(&id, script, CgroupLimits::default()).await;
    for _ in 0..stratum_runtime::attach::MAX_CLIENTS + 4 {
        drop(ctr.attach().await.expect("attach and go"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut out, _input) = ctr.attach().await.expect("attach").split();
    exec_ok(&fx.runtime, &ctr, "touch /go").await;
    let mut seen = Default::default();
    attached_until(&mut out, &mut seen, "tick").await;
    let path = ctr.cgroups_path().to_string();
    ctr.remove(&fx.runtime).await.expect("remove");
    fx.assert_gone(&id, &path).await;

    // A terminal: TERM, input typed in, a resize seen inside; the output
    // is logged as stdout; no console directory is left.
    let id = unique("attach-tty");
    let script =
        "test -t 0 && echo IS-TTY; echo TERM=$TERM; read line; stty size; echo typed=$line";
    let mut config = fx.config(&id, script, CgroupLimits::default());
    config.stdin = true;
    config.process.terminal = true;
    let ctr = Container::create(&fx.runtime, fx.ctx(), &fx.ctr_dir(&id), &config)
        .await
        .expect("create with terminal");
    let exec_dirs = fs::read_dir(fx.runtime.state_root().join("exec"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(exec_dirs, 0, "console socket directory left");
    let (mut out, mut input) = ctr.attach().await.expect("attach").split();
    ctr.start(&fx.runtime).await.expect("start");
    let mut seen = Default::default();
    attached_until(&mut out, &mut seen, "TERM=xterm").await;
    assert!(seen.0.contains("IS-TTY\r\n"), "{seen:?}");
    input.resize(100, 30).await.expect("resize");
    input.stdin(b"hello\n").await.expect("type");
    attached_until(&mut out, &mut seen, "typed=hello").await;
    assert!(seen.0.contains("30 100"), "{seen:?}");
    assert!(seen.1.is_empty(), "a terminal has no stderr: {seen:?}");
    attached_to_end(&mut out).await;
    assert_eq!(ctr.wait().await.expect("wait").exit_code, Some(0));
    let log = wait_for_log(&ctr, "typed=hello", Duration::from_secs(10)).await;
    assert!(
        log.contains(" stdout F typed=hello") || log.contains(" stdout P typed=hello"),
        "{log}"
    );
    assert!(!log.contains(" stderr "), "{log}");
    let path = ctr.cgroups_path().to_string();
    ctr.remove(&fx.runtime).await.expect("remove");
    fx.assert_gone(&id, &path).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_stop_reaches_an_init_that_sets_its_handler_late() {
    let fx = Fixture::new("lateterm", "crun");
    let id = unique("lateterm");
    // PID 1 of its namespace: the SIGTERM sent before the trap is set is
    // dropped by the kernel; the one sent once the trap is there ends it.
    let script =
        "sleep 1; trap 'echo got-term; exit 0' TERM; echo trapped; while true; do sleep 0.1; done";
    let ctr = fx.run(&id, script, CgroupLimits::default()).await;
    let report = ctr.stop(Duration::from_secs(60)).await.expect("stop");
    assert_eq!(report.exit_code, Some(0), "{report:?}");
    let log = wait_for_log(&ctr, "got-term", Duration::from_secs(10)).await;
    assert!(log.contains("trapped"), "{log}");
    let path = ctr.cgroups_path().to_string();
    ctr.remove(&fx.runtime).await.expect("remove");
    fx.assert_gone(&id, &path).await;
}
