//! `bench-pod`: pod start latency beside containerd (`make bench`).
//!
//! The figure that matters: the wall time to run a pod sandbox and create
//! and start one container in it, with the image already present, against
//! `ctr run` of containerd with crun on the same image on the same machine.
//! Target: ours ≤ 0.8× containerd's.
//!
//! 1. Prepares the host as the runtime tests do (each controller listed in
//!    /sys/fs/cgroup/unified/cgroup.controllers mounted as a v1 hierarchy:
//!    crun refuses a hybrid host where the unified hierarchy holds one).
//! 2. Builds the busybox test image (`src/image/fixture.rs`: umoci from the
//!    host's static busybox) and pushes it to a throwaway `docker-registry`
//!    on loopback.
//! 3. Starts a real `node-agent` (next to this binary, or `--agent PATH`)
//!    on loopback plaintext with a temporary data dir, its own cgroup root
//!    and that registry as insecure, and pulls the image (ImageService).
//! 4. Starts a private containerd (its own root, state, socket, runtime
//!    root and namespace under the same temporary dir: it touches no
//!    system containerd) and pulls the image into it (`ctr images pull
//!    --plain-http`, overlayfs snapshotter).
//! 5. Interleaves, after warm-up runs of each: one RunPod call (a pod in
//!    the root pool with one container running `sh -c 'sleep 1000'`, no
//!    requests or limits) until it answers the pod RUNNING; `nodectl pod
//!    run` of the same pod when a nodectl with pod commands sits next to
//!    this binary; `ctr run -d` with crun (the peer), `ctr run -d` with
//!    runc (containerd's default runtime) and `ctr version` (what the ctr
//!    CLI costs before any container work). Removing each pod and
//!    container is outside the timed region.
//!
//! It prints p50, p90 and max of each and ours against the peer. A missed
//! target is reported, not an error: the exit status is 0 when it
//! measured, 1 when something failed, 2 for a usage error.

// Benchmark binary (dev only): a failed setup ends the run with a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use stratum_api::proto;
use stratum_api::proto::image_service_client::ImageServiceClient;
use stratum_api::proto::pod_service_client::PodServiceClient;
use tonic::transport::Channel;

use stratum_testkit::agent_process::{tail, AgentProcess};
use stratum_testkit::work_dir::WorkDir;
use stratum_testkit::{cleanup, containerd, fixture};

/// Ours at most this times containerd's (p50).
const TARGET_RATIO: f64 = 0.8;
/// What every container runs (after `sh -c`).
const SLEEP: &str = "sleep 1000";
/// containerd namespace of the bench's containers (in its private root).
const CTR_NAMESPACE: &str = "stratum-bench";
/// The bench agent's pod network (`--pod-cidr`), off the default's.
const POD_CIDR: &str = "10.231.0.0/24";
/// Where the agent keeps pods' runtime state, per cgroup root.
const RUN_STRATUM: &str = "/run/stratum";
/// Pod start beside containerd + crun (see the module docs). Needs root,
/// crun, runc, containerd (`make bench-pod-deps`), docker-registry, umoci,
/// skopeo and busybox-static (`make deps`).
#[derive(clap::Parser)]
#[command(name = "bench-pod")]
struct Options {
    /// node-agent binary [default: node-agent next to bench-pod]
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// nodectl binary for the `nodectl pod run` row [default: nodectl next
    /// to bench-pod; the row is left out when it has no pod commands]
    #[arg(long, value_name = "PATH")]
    nodectl: Option<PathBuf>,
    /// Measured runs of each kind, interleaved
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// Unmeasured runs of each kind first
    #[arg(long, value_name = "N", default_value_t = 2)]
    warmup: u64,
    /// Where the temporary work dir goes (agent data, containerd root, image
    /// build) [default: $TMPDIR or /tmp, /var/tmp if that is a tmpfs:
    /// overlayfs and fsync need a disk]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

impl Options {
    /// The agent binary, once [`resolve_binaries`] has filled it in.
    fn agent_binary(&self) -> &Path {
        self.agent.as_deref().unwrap_or(Path::new("node-agent"))
    }

    /// The nodectl binary, once [`resolve_binaries`] has filled it in.
    fn nodectl_binary(&self) -> &Path {
        self.nodectl.as_deref().unwrap_or(Path::new("nodectl"))
    }
}

/// Set by SIGINT or SIGTERM: stop after the current run and clean up.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Ctrl-C or a kill ends the bench between two runs, through the same
/// cleanup as the end of a run (the agent and containerd are in process
/// groups of their own, so a terminal's Ctrl-C does not reach them first).
fn catch_stop_signals() {
    let handler = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

fn check_stop() -> Result<(), String> {
    if STOP.load(Ordering::SeqCst) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

fn main() -> ExitCode {
    catch_stop_signals();
    let mut options = <Options as clap::Parser>::parse();
    if let Err(e) = resolve_binaries(&mut options) {
        eprintln!("bench-pod: {e}");
        return ExitCode::from(2);
    }
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-pod: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Fills in the binaries next to this one and checks the agent's exists.
fn resolve_binaries(options: &mut Options) -> Result<(), String> {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    options
        .nodectl
        .get_or_insert_with(|| exe_dir.join("nodectl"));
    let agent = options
        .agent
        .get_or_insert_with(|| exe_dir.join("node-agent"));
    if !agent.exists() {
        return Err(format!(
            "{} is missing: build it with `cargo build --release -p node-agent --bins` or pass --agent",
            agent.display()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The host.

/// Everything the bench runs besides our own binaries.
struct Tools {
    containerd: PathBuf,
    ctr: PathBuf,
    crun: PathBuf,
    runc: PathBuf,
}

fn find_tools() -> Result<Tools, String> {
    let missing_deb = |name: &str, package: &str, target: &str| {
        format!("{name} is not installed: run `make {target}` (Debian package {package})")
    };
    Ok(Tools {
        containerd: which("containerd")
            .ok_or_else(|| missing_deb("containerd", "containerd", "bench-pod-deps"))?,
        ctr: which("ctr").ok_or_else(|| missing_deb("ctr", "containerd", "bench-pod-deps"))?,
        crun: which("crun").ok_or_else(|| missing_deb("crun", "crun", "deps"))?,
        runc: which("runc").ok_or_else(|| missing_deb("runc", "runc", "deps"))?,
    })
}

/// `name` on PATH, or in the sbin directories a non-login root shell may
/// leave out.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Mounts each controller the unified hierarchy lists as a v1 hierarchy
/// of its own, as `tests/runtime_containers.rs` does: crun 1.8 refuses a
/// hybrid host whose unified hierarchy holds a controller. A controller
/// mounted as v1 leaves the list, so this is idempotent.
fn prepare_host() -> Result<(), String> {
    if !stratum_testkit::root::is_root() {
        return Err("needs root (containers, cgroups, mounts)".into());
    }
    for controller in fixture::mount_unified_controllers_as_v1()? {
        eprintln!("bench-pod: mounted the {controller} controller as a v1 hierarchy");
    }
    Ok(())
}

/// Mount points of this mount namespace (octal escapes decoded).
fn mount_points() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(cleanup::unescape_mount_path(p)))
        .collect()
}

/// Unmounts (lazily) whatever is still mounted under `dir`, deepest
/// first: a failed run may leave container root file systems behind.
fn unmount_under(dir: &Path) {
    let mut points: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        if let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) {
            // SAFETY: `c` is a valid NUL-terminated path for the call's duration.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// The first line a command prints, for the report.
fn version_line(cmd: &mut Command) -> String {
    cmd.stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "?".into())
}

// ---------------------------------------------------------------------------
// Our agent.

struct BenchAgent {
    process: AgentProcess,
    /// The pod network's bridge and nftables table, when the agent takes
    /// `--pod-bridge`.
    bridge: Option<String>,
    /// The pod flags it was given (for the report).
    pod_args: Vec<String>,
    /// /run/stratum did not exist before.
    made_run_dir: bool,
}

impl BenchAgent {
    fn start(
        options: &Options,
        tools: &Tools,
        work: &Path,
        registry: &str,
    ) -> Result<BenchAgent, String> {
        let help = Command::new(options.agent_binary())
            .arg("--help")
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut pod_args: Vec<String> = Vec::new();
        if help.contains("--oci-runtime") {
            // The peer's runtime, by path (crun works once prepare_host ran).
            pod_args.extend(["--oci-runtime".into(), tools.crun.display().to_string()]);
        }
        // A bridge (and nftables table) and addresses of its own, so a pod
        // network of an agent already running here is left alone.
        let bridge = help
            .contains("--pod-bridge")
            .then(|| format!("stbench{}", std::process::id() % 100_000));
        if let Some(bridge) = &bridge {
            pod_args.extend(["--pod-bridge".into(), bridge.clone()]);
        }
        if help.contains("--pod-cidr") {
            pod_args.extend(["--pod-cidr".into(), POD_CIDR.into()]);
        }
        if help.contains("--no-vm-jail") {
            // No VM runs here: /bin/true stands in for vmm.
            pod_args.push("--no-vm-jail".into());
        }
        let mut args: Vec<String> = vec![
            // Never started: the bench runs no VM.
            "--vmm".into(),
            "/bin/true".into(),
            "--insecure-registry".into(),
            registry.into(),
        ];
        args.extend(pod_args.iter().cloned());
        let made_run_dir = !Path::new(RUN_STRATUM).exists();
        let cgroup_root = format!("bench-pod-{}", std::process::id());
        let process = AgentProcess::start(
            options.agent_binary(),
            work.join("agent"),
            cgroup_root,
            &args,
        )?;
        Ok(BenchAgent {
            process,
            bridge,
            pod_args,
            made_run_dir,
        })
    }

    fn log(&self) -> String {
        self.process.log()
    }

    /// What the "pod support ready" line says (runtime, bridge, CIDR).
    fn pod_support(&self) -> String {
        let log = self.log();
        let Some(line) = log.lines().find(|l| l.contains("pod support ready")) else {
            return "?".into();
        };
        line.split_whitespace()
            .filter(|w| {
                ["runtime=", "bridge=", "cidr="]
                    .iter()
                    .any(|k| w.starts_with(k))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn addr(&self) -> String {
        self.process.addr()
    }

    async fn channel(&self) -> Result<Channel, String> {
        self.process.channel().await
    }
}

impl Drop for BenchAgent {
    fn drop(&mut self) {
        // What its pods left needs the agent gone first.
        self.process.stop();
        let cgroup_root = self.process.cgroup_root().to_string();
        cleanup::remove_agent_cgroups(&cgroup_root);
        unmount_under(self.process.work());
        // Its runtime state and the pods' netns files.
        let run_dir = Path::new(RUN_STRATUM).join(&cgroup_root);
        unmount_under(&run_dir);
        let _ = std::fs::remove_dir_all(&run_dir);
        if self.made_run_dir {
            let _ = std::fs::remove_dir(RUN_STRATUM);
        }
        if let Some(bridge) = &self.bridge {
            // The agent leaves its pod network up when it stops.
            let quiet = |cmd: &mut Command| {
                let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
            };
            quiet(Command::new("ip").args(["link", "del", bridge]));
            for family in ["inet", "bridge"] {
                quiet(Command::new("nft").args(["delete", "table", family, bridge]));
            }
        }
    }
}

/// Pulls `reference` into the agent's store; its image id.
async fn agent_pull(channel: Channel, reference: &str) -> Result<String, String> {
    let mut stream = ImageServiceClient::new(channel)
        .pull(proto::PullImageRequest {
            reference: reference.to_string(),
            auth: None,
            namespace: String::new(),
        })
        .await
        .map_err(|s| format!("pull {reference}: {s}"))?
        .into_inner();
    let mut image = None;
    while let Some(event) = stream
        .message()
        .await
        .map_err(|s| format!("pull {reference}: {s}"))?
    {
        if let Some(proto::pull_image_progress::Event::Image(i)) = event.event {
            image = Some(i.id);
        }
    }
    image.ok_or_else(|| format!("pull {reference}: the stream ended without the image"))
}

fn pod_spec(name: &str, image: &str) -> proto::PodSpec {
    proto::PodSpec {
        name: name.to_string(),
        restart_policy: proto::RestartPolicy::Never as i32,
        containers: vec![proto::ContainerSpec {
            name: "main".into(),
            image: image.to_string(),
            command: vec!["sh".into(), "-c".into(), SLEEP.into()],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Checks an answer is the pod RUNNING with its container RUNNING; its id.
fn running_pod(pod: &proto::Pod) -> Result<String, String> {
    let status = pod.status.clone().unwrap_or_default();
    if status.state != proto::PodState::Running as i32 {
        return Err(format!(
            "pod {} is {:?} ({}), not RUNNING",
            pod.id,
            proto::PodState::try_from(status.state).unwrap_or_default(),
            status.reason
        ));
    }
    match status.containers.first() {
        Some(c) if c.state == proto::ContainerState::Running as i32 => Ok(pod.id.clone()),
        Some(c) => Err(format!(
            "pod {}: container {} is {:?} ({})",
            pod.id,
            c.name,
            proto::ContainerState::try_from(c.state).unwrap_or_default(),
            c.reason
        )),
        None => Err(format!("pod {}: the answer has no container", pod.id)),
    }
}

// ---------------------------------------------------------------------------
// The peer: a private containerd.

/// The shared private containerd (`stratum_testkit::containerd`) with
/// the CRI plugin off, driven with `ctr` in the bench's namespace.
struct Containerd {
    inner: containerd::Containerd,
    /// The cgroup (in every hierarchy) its containers' cgroups go below,
    /// instead of ctr's shared `/default`.
    cgroup_parent: String,
}

impl Containerd {
    fn start(tools: &Tools, work: &Path) -> Result<Containerd, String> {
        let dir = work.join("containerd");
        for sub in ["fifo", "runtime-root"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| format!("mkdir {sub}: {e}"))?;
        }
        // The CRI plugin is off: `ctr` does not go through it, and its
        // settings (runtimes.runc.options.BinaryName, snapshotter) apply
        // only to CRI clients. `ctr run` passes the runtime binary and the
        // snapshotter itself (--runc-binary, --snapshotter).
        let inner = containerd::Containerd::start(
            &tools.containerd,
            &tools.ctr,
            dir,
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
        )?;
        Ok(Containerd {
            inner,
            cgroup_parent: format!("bench-pod-ctr-{}", std::process::id()),
        })
    }

    /// `ctr` on this containerd and the bench's namespace.
    fn ctr(&self) -> Command {
        self.inner.ctr(CTR_NAMESPACE)
    }

    fn pull(&self, reference: &str) -> Result<(), String> {
        fixture::run(self.ctr().args([
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            "overlayfs",
            reference,
        ]))
        .map(drop)
    }

    /// `ctr run -d` of `image` as container `id` with the runtime binary
    /// `runtime`: returns once the task started.
    fn run_command(&self, runtime: &Path, image: &str, id: &str) -> Command {
        let mut cmd = self.ctr();
        cmd.args(["run", "-d", "--snapshotter", "overlayfs"])
            .arg("--runc-binary")
            .arg(runtime)
            .arg("--runc-root")
            .arg(self.inner.dir().join("runtime-root"))
            .arg("--fifo-dir")
            .arg(self.inner.dir().join("fifo"))
            .arg("--cgroup")
            .arg(format!("/{}/{id}", self.cgroup_parent))
            .args([image, id, "sh", "-c", SLEEP]);
        cmd
    }

    /// Kills and deletes the task and removes the container (and its
    /// snapshot).
    fn remove(&self, id: &str) -> Result<(), String> {
        fixture::run(self.ctr().args(["task", "rm", "-f", id]))?;
        fixture::run(self.ctr().args(["container", "rm", id])).map(drop)
    }

    fn remove_all(&self) {
        let Ok(list) = fixture::run(self.ctr().args(["container", "ls", "-q"])) else {
            return;
        };
        for id in list.split_whitespace() {
            let _ = fixture::run(self.ctr().args(["task", "rm", "-f", id]));
            let _ = fixture::run(self.ctr().args(["container", "rm", id]));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.remove_all();
        self.inner.stop();
        // `ctr run --cgroup /PARENT/ID`: from the top of each hierarchy.
        for (mount, _) in cleanup::cgroup_mounts() {
            cleanup::remove_cgroup_dirs(&mount.join(&self.cgroup_parent));
        }
        unmount_under(self.inner.dir());
    }
}

// ---------------------------------------------------------------------------
// Runs.

/// One kind of measured start.
struct Series {
    name: String,
    latencies: Vec<Duration>,
}

impl Series {
    fn new(name: &str) -> Series {
        Series {
            name: name.into(),
            latencies: Vec::new(),
        }
    }

    /// Nearest rank.
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    fn max(&self) -> Duration {
        self.latencies.iter().copied().max().unwrap_or_default()
    }
}

/// What one round runs, in order.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    RunPod,
    NodectlPodRun,
    CtrRunCrun,
    CtrRunRunc,
    CtrVersion,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::RunPod => "stratum RunPod (gRPC)",
            Kind::NodectlPodRun => "stratum `nodectl pod run`",
            Kind::CtrRunCrun => "containerd `ctr run -d`, crun",
            Kind::CtrRunRunc => "containerd `ctr run -d`, runc",
            Kind::CtrVersion => "`ctr version` (ctr's floor)",
        }
    }
}

struct Bench<'a> {
    rt: tokio::runtime::Runtime,
    agent: &'a mut BenchAgent,
    pods: PodServiceClient<Channel>,
    nodectl: Option<PathBuf>,
    containerd: &'a Containerd,
    tools: &'a Tools,
    /// The image as both stores know it.
    reference: String,
    seq: usize,
}

impl Bench<'_> {
    /// Times one start of `kind` and cleans it up (untimed).
    fn once(&mut self, kind: Kind) -> Result<Duration, String> {
        self.seq += 1;
        let name = format!("bench-{}", self.seq);
        match kind {
            Kind::RunPod => {
                let request = proto::RunPodRequest {
                    spec: Some(pod_spec(&name, &self.reference)),
                };
                let mut pods = self.pods.clone();
                let t = Instant::now();
                let answer = self.rt.block_on(pods.run_pod(request));
                let elapsed = t.elapsed();
                let pod = answer.map_err(|s| format!("RunPod: {:?}: {}", s.code(), s.message()))?;
                let pod = pod.into_inner();
                let checked = running_pod(&pod);
                self.remove_pod(&pod.id)?;
                checked.map(|_| elapsed)
            }
            Kind::NodectlPodRun => {
                let nodectl = self.nodectl.clone().ok_or("no nodectl")?;
                let mut cmd = nodectl_pod_run(&nodectl, &self.agent.addr(), &name, &self.reference);
                let t = Instant::now();
                let out = cmd.output();
                let elapsed = t.elapsed();
                let out = out.map_err(|e| format!("{}: {e}", nodectl.display()))?;
                let pod = self.pod_by_name(&name);
                if let Some(pod) = &pod {
                    self.remove_pod(&pod.id)?;
                }
                if !out.status.success() {
                    return Err(format!(
                        "{cmd:?}: {}\n{}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                let pod = pod.ok_or_else(|| format!("{cmd:?} made no pod {name}"))?;
                running_pod(&pod).map(|_| elapsed)
            }
            Kind::CtrRunCrun | Kind::CtrRunRunc => {
                let runtime = if kind == Kind::CtrRunCrun {
                    &self.tools.crun
                } else {
                    &self.tools.runc
                };
                let mut cmd = self.containerd.run_command(runtime, &self.reference, &name);
                let t = Instant::now();
                let out = cmd.output();
                let elapsed = t.elapsed();
                let out = out.map_err(|e| format!("ctr run: {e}"))?;
                let removed = self.containerd.remove(&name);
                if !out.status.success() {
                    return Err(format!(
                        "{cmd:?}: {}\n{}{}",
                        out.status,
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                removed.map(|_| elapsed)
            }
            Kind::CtrVersion => {
                let mut cmd = self.containerd.ctr();
                cmd.arg("version").stdout(Stdio::null());
                let t = Instant::now();
                let status = cmd.status();
                let elapsed = t.elapsed();
                match status {
                    Ok(s) if s.success() => Ok(elapsed),
                    Ok(s) => Err(format!("ctr version: {s}")),
                    Err(e) => Err(format!("ctr version: {e}")),
                }
            }
        }
    }

    fn remove_pod(&mut self, id: &str) -> Result<(), String> {
        let mut pods = self.pods.clone();
        self.rt.block_on(async {
            pods.stop_pod(proto::StopPodRequest {
                id: id.to_string(),
                grace_period_seconds: Some(0),
            })
            .await
            .map_err(|s| format!("StopPod {id}: {s}"))?;
            pods.remove_pod(proto::RemovePodRequest { id: id.to_string() })
                .await
                .map_err(|s| format!("RemovePod {id}: {s}"))
                .map(drop)
        })
    }

    /// The pod named `name` as it is now (it may have changed since the
    /// call that ran it answered, but a container that ran `sleep` is
    /// still RUNNING).
    fn pod_by_name(&mut self, name: &str) -> Option<proto::Pod> {
        let mut pods = self.pods.clone();
        let list = self
            .rt
            .block_on(pods.list_pods(proto::ListPodsRequest::default()))
            .ok()?
            .into_inner();
        list.pods
            .into_iter()
            .find(|p| p.spec.as_ref().is_some_and(|s| s.name == name))
    }
}

/// `nodectl pod run` of the bench's pod.
fn nodectl_pod_run(nodectl: &Path, addr: &str, name: &str, image: &str) -> Command {
    let mut cmd = Command::new(nodectl);
    cmd.args(["--addr", addr, "--insecure", "pod", "run", name])
        .args(["--image", image, "--command", "sh", "--", "-c", SLEEP])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// The nodectl next to us when it has pod commands (`nodectl pod run
/// --help` succeeds).
fn usable_nodectl(path: &Path) -> Option<PathBuf> {
    let ok = Command::new(path)
        .args(["pod", "run", "--help"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| path.to_path_buf())
}

fn run(options: &Options) -> Result<(), String> {
    prepare_host()?;
    let tools = find_tools()?;
    let work = WorkDir::create(options.dir.as_deref(), "stratum-bench-pod")?;
    eprintln!("bench-pod: building the busybox image and starting a registry");
    let (registry, reference) = fixture::registry_with_busybox(&work.0)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut agent = BenchAgent::start(options, &tools, &work.0, registry.addr())?;
    check_stop()?;
    let containerd = Containerd::start(&tools, &work.0)?;
    eprintln!("bench-pod: pulling {reference} into the agent and into containerd");
    let channel = rt.block_on(agent.channel())?;
    let image_id = rt.block_on(agent_pull(channel.clone(), &reference))?;
    containerd.pull(&reference)?;
    let nodectl = usable_nodectl(options.nodectl_binary());
    let mut kinds = vec![Kind::RunPod];
    if nodectl.is_some() {
        kinds.push(Kind::NodectlPodRun);
    }
    kinds.extend([Kind::CtrRunCrun, Kind::CtrRunRunc, Kind::CtrVersion]);

    let mut bench = Bench {
        rt,
        pods: PodServiceClient::new(channel),
        agent: &mut agent,
        nodectl,
        containerd: &containerd,
        tools: &tools,
        reference: reference.clone(),
        seq: 0,
    };
    let mut series: Vec<Series> = kinds.iter().map(|k| Series::new(k.name())).collect();
    let result = (|| {
        eprintln!(
            "bench-pod: {} warm-up and {} measured runs of each, interleaved",
            options.warmup, options.runs
        );
        for round in 0..options.warmup + options.runs {
            for (i, &kind) in kinds.iter().enumerate() {
                check_stop()?;
                let took = bench
                    .once(kind)
                    .map_err(|e| format!("{} (round {}): {e}", kind.name(), round + 1))?;
                if round >= options.warmup {
                    series[i].latencies.push(took);
                }
            }
            bench.agent.process.check_alive()?;
        }
        Ok::<(), String>(())
    })();
    if let Err(e) = result {
        if STOP.load(Ordering::SeqCst) {
            return Err(e);
        }
        let log = bench.agent.log();
        return Err(format!("{e}\nagent log (last lines):\n{}", tail(&log, 20)));
    }
    report(&Report {
        options,
        tools: &tools,
        reference: &reference,
        image_id: &image_id,
        nodectl: bench.nodectl.is_some(),
        pod_args: &bench.agent.pod_args,
        pod_support: bench.agent.pod_support(),
        series: &series,
    });
    drop(bench);
    drop(containerd);
    drop(agent);
    drop(registry);
    drop(work);
    Ok(())
}

// ---------------------------------------------------------------------------
// Output.

struct Report<'a> {
    options: &'a Options,
    tools: &'a Tools,
    reference: &'a str,
    image_id: &'a str,
    nodectl: bool,
    pod_args: &'a [String],
    pod_support: String,
    series: &'a [Series],
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn ratio(ours: Duration, theirs: Duration) -> f64 {
    ours.as_secs_f64() / theirs.as_secs_f64().max(1e-9)
}

fn report(r: &Report) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    println!("pod start benchmark: one pod, one container, image present");
    println!(
        "  image       {} ({}): busybox, `sh -c '{SLEEP}'`",
        r.reference, r.image_id
    );
    println!(
        "  host        {cpus} CPUs, Linux {}, load average {} at the end; the agent, containerd and this client share them",
        kernel.trim(),
        load.join(" ")
    );
    println!(
        "  runtimes    {}; {}; {}",
        version_line(Command::new(&r.tools.crun).arg("--version")),
        version_line(Command::new(&r.tools.runc).arg("--version")),
        version_line(Command::new(&r.tools.containerd).arg("--version")),
    );
    println!(
        "  stratum     {} {}: RunPod in the root pool, no requests or limits, from a connected client; StopPod (grace 0) + RemovePod untimed",
        r.options.agent_binary().display(),
        r.pod_args.join(" ")
    );
    println!("              pods ran with {}", r.pod_support);
    println!("  containerd  private instance, overlayfs; `ctr run -d` returns once the task started; task rm -f + container rm untimed");
    if !r.nodectl {
        println!(
            "  nodectl     no nodectl with pod commands next to bench-pod: its row is left out"
        );
    }
    println!(
        "  runs        {} of each, interleaved, after {} warm-up runs of each",
        r.options.runs, r.options.warmup
    );
    println!();
    println!(
        "{:<34} {:>5} {:>9} {:>9} {:>9}",
        "start", "runs", "p50", "p90", "max"
    );
    for s in r.series {
        println!(
            "{:<34} {:>5} {:>9} {:>9} {:>9}",
            s.name,
            s.latencies.len(),
            fmt_ms(s.percentile(0.5)),
            fmt_ms(s.percentile(0.9)),
            fmt_ms(s.max())
        );
    }
    let find = |k: Kind| r.series.iter().find(|s| s.name == k.name());
    println!();
    if let (Some(ours), Some(theirs)) = (find(Kind::RunPod), find(Kind::CtrRunCrun)) {
        let p50 = ratio(ours.percentile(0.5), theirs.percentile(0.5));
        let p90 = ratio(ours.percentile(0.9), theirs.percentile(0.9));
        println!(
            "RunPod / ctr run (crun):           p50 {p50:.2}×   p90 {p90:.2}×   target ≤ {TARGET_RATIO}× (p50): {}",
            if p50 <= TARGET_RATIO { "met" } else { "MISSED" }
        );
    }
    if let (Some(ours), Some(theirs)) = (find(Kind::NodectlPodRun), find(Kind::CtrRunCrun)) {
        println!(
            "nodectl pod run / ctr run (crun):  p50 {:.2}×   p90 {:.2}×   (CLI against CLI)",
            ratio(ours.percentile(0.5), theirs.percentile(0.5)),
            ratio(ours.percentile(0.9), theirs.percentile(0.9)),
        );
    }
}
