//! `conformance`: the upstream CRI validation suite (critest v1.26.1)
//! against Stratum's CRI socket and against containerd 1.6 on the same
//! images, side by side (`make conformance`; not part of `make test`);
//! with `--benchmark`, critest's CRI lifecycle benchmarks instead (the
//! last step of `make bench`, see "Benchmark mode" below).
//!
//! Why both: a spec Stratum fails is only a Stratum bug if a reference
//! runtime passes it on this machine, with these images. containerd's CRI
//! plugin with runc (Debian 12's packages) is that reference.
//!
//! 1. Prepares the host as the runtime tests do (controllers of the
//!    unified hierarchy mounted as v1 ones: crun refuses a hybrid host),
//!    again before each runtime starts (another process's mount of one
//!    goes when that process exits); a hierarchy unmounted under a run is
//!    noted in the summary.
//! 2. Starts a throwaway `docker-registry` on loopback and pushes to it the
//!    images `guest-images/conformance-images.sh` built (`--images`), under
//!    the names critest pulls less their registry host: critest's
//!    `registry.k8s.io/…` and `gcr.io/…` pulls reach it through registry
//!    mirrors on both sides.
//! 3. Stratum: a private `node-agent` (next to this binary, or `--agent`)
//!    on loopback plaintext with a temporary data dir, its own cgroup root,
//!    pod bridge, CIDR and CRI socket, `--registry-mirror` for both
//!    registries, the host ports critest maps (12000-12003) allowed and
//!    the `privileged` pod security level (critest asks for what the
//!    default `baseline` level refuses or tightens).
//!    critest runs against its CRI socket.
//! 4. containerd: a private instance (`stratum_testkit::containerd`) whose
//!    CRI plugin has the same mirrors, runc, overlayfs, the pause image
//!    from the same registry, a streaming server on loopback and CNI from
//!    Debian's containernetworking-plugins (/usr/lib/cni: a bridge with
//!    host-local addresses and masquerade, plus portmap for host ports)
//!    with a conflist in a private conf dir. critest runs against it.
//!    `restrict_oom_score_adj = true`: on this host even root may not
//!    lower an oom_score_adj (writing -998 is EPERM), and runc fails every
//!    sandbox ("can't get final child's PID from pipe") without it; the
//!    option clamps the pause container's -998 to containerd's own score.
//! 5. Each critest run writes ginkgo's JSON report (counted here) and JUnit
//!    report and its output under `--out`; the side-by-side summary
//!    (passed / failed / skipped, time, the failed specs' names with the
//!    first line of their failure) goes to stdout and `--out`/summary.txt.
//!
//! Specs skipped (`--ginkgo.skip`), each listed with its reason in the
//! output: Windows ones (none are compiled into the Linux critest, the
//! skip is for completeness) and the pull by digest of
//! `test-image-digest@sha256:9700f9…`, a digest no local build can have.
//!
//! Benchmark mode (`--benchmark`): the same host preparation, registry,
//! runtimes and cleanup; critest runs with `-benchmark` (its own focus on
//! the specs of pkg/benchmark, ginkgo's succinct output), a
//! `--benchmarking-params-file` asking for `--samples` (default 50) pod,
//! container and image lifecycles one at a time (and 150 s, not 60, for a
//! pod or container sample to end: a StopContainer that waits out its 60 s
//! grace period is measured, not fatal), the same ginkgo seed on
//! both sides and `--benchmarking-output-dir` `--out`/<side>.benchmark.
//! Before it, critest's container image is pulled with crictl (next to
//! critest) so that no first CreateContainer sample includes a pull
//! (critest times an ImageStatus, and a pull when the image is missing,
//! inside CreateContainer). critest times each CRI call on the client
//! side: a pod lifecycle is RunPodSandbox, PodSandboxStatus, StopPodSandbox,
//! RemovePodSandbox; a container lifecycle (in a pod of its own, untimed)
//! CreateContainer, StartContainer, ContainerStatus, StopContainer (of
//! `top`, 60 s grace) and RemoveContainer; an image lifecycle PullImage
//! (of gcr.io/k8s-staging-cri-tools/test-image-1 from the loopback
//! registry), ImageStatus and RemoveImage, and ListImages alone. Those
//! samples are read from the JSON files critest writes
//! (`*_benchmark_data.json`); its pod+container start spec
//! ("create PodSandbox and container": RunPodSandbox, CreateContainer,
//! StartContainer, then StopPodSandbox and RemovePodSandbox, one sample
//! after one untimed run) only records a gmeasure experiment, read from
//! the ginkgo JSON report's entries. The summary (stdout and
//! `--out`/benchmark.txt) has each operation's p50, p90 and max per runtime,
//! the ratio Stratum / containerd of the p50s, and the target line
//! (Stratum's pod+container start ≤ 0.8× containerd's) twice: from the sum
//! of the p50s of RunPodSandbox, CreateContainer and StartContainer, and
//! from the single sample of the pod+container spec. A sample that fails
//! makes critest v1.26.1 panic as a whole 60 s later (its results
//! collector times out) without a report: that side's summary then shows
//! the end of critest's output and whatever data files it wrote.
//!
//! Everything it starts is stopped and removed at exit, also when critest
//! fails or on SIGINT/SIGTERM: the agent (with its cgroups, mounts, run
//! directory, bridge and nftables tables), containerd (with its shims,
//! pods, bridge and the CNI host-port chains when it made them), the
//! registry and the work dir. The exit status is 0 when both runs
//! completed and their reports were read (failed specs are results; with
//! `--benchmark`, so is a critest that ended without a report), 1
//! when something else failed, 2 for a usage error.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use stratum_testkit::agent_process::{tail, terminate, AgentProcess};
use stratum_testkit::pod_agent::unmount_under;
use stratum_testkit::work_dir::WorkDir;
use stratum_testkit::{cleanup, containerd, fixture};

/// Specs this run leaves out, with why (`--ginkgo.skip` regexes).
const SKIPS: &[(&str, &str)] = &[
    (
        "Windows",
        "Windows specs: this is a Linux host (the Linux critest compiles none in)",
    ),
    (
        "public image with digest should be pulled and removed",
        "pulls gcr.io/k8s-staging-cri-tools/test-image-digest@sha256:9700f9a2…, \
         an upstream digest no local build can reproduce",
    ),
];
/// The ports critest maps on the host: port mapping 12000, port-forward
/// 12001 and 12002, the host-network nginx 12003.
const HOST_PORTS: &str = "12000-12003";
/// Stratum's pod network in this run (off the default 10.88.0.0/16).
const STRATUM_POD_CIDR: &str = "10.232.0.0/24";
/// containerd's CNI bridge network in this run.
const CONTAINERD_POD_CIDR: &str = "10.233.0.0/24";
/// Where the agent keeps pods' runtime state, per cgroup root.
const RUN_STRATUM: &str = "/run/stratum";
/// containerd's CRI namespace (fixed by the plugin).
const CRI_NAMESPACE: &str = "k8s.io";
/// The cgroup (in each hierarchy) containerd's CRI puts containers below
/// when the sandbox names no parent (`/k8s.io/<id>`).
const CRI_CGROUP_PARENT: &str = "k8s.io";
/// The chains Debian's portmap plugin adds to the nat table and leaves.
const PORTMAP_CHAINS: &[&str] = &[
    "CNI-HOSTPORT-DNAT",
    "CNI-HOSTPORT-SETMARK",
    "CNI-HOSTPORT-MASQ",
];

/// CRI conformance: critest against Stratum and containerd (see the
/// module docs). Needs root, critest, docker-registry, skopeo, containerd,
/// runc, crun and containernetworking-plugins.
#[derive(clap::Parser)]
#[command(name = "conformance")]
struct Options {
    /// The critest binary (cri-tools v1.26.1)
    #[arg(long, value_name = "PATH")]
    critest: PathBuf,
    /// What guest-images/conformance-images.sh printed: the directory with
    /// `oci/` and `images.list`
    #[arg(long, value_name = "DIR")]
    images: PathBuf,
    /// node-agent binary [default: node-agent next to conformance]
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// One more argument for node-agent (repeatable), e.g.
    /// `--agent-arg=--container-log-max-size=1Mi`
    #[arg(long = "agent-arg", value_name = "ARG", allow_hyphen_values = true)]
    agent_args: Vec<String>,
    /// Which runtimes to run critest against
    #[arg(long, value_enum, default_value_t = Side::Both)]
    side: Side,
    /// Only the specs matching this regex (ginkgo focus), for a short run
    #[arg(long, value_name = "REGEX")]
    focus: Option<String>,
    /// Where reports, critest output and the summary are kept
    #[arg(long, value_name = "DIR", default_value = "build/conformance")]
    out: PathBuf,
    /// Where the temporary work dir goes [default: $TMPDIR or /tmp,
    /// /var/tmp if that is a tmpfs]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// critest's suite timeout, per runtime (ginkgo duration)
    #[arg(long, value_name = "DURATION", default_value = "90m")]
    timeout: String,
    /// Run critest's lifecycle benchmarks (`critest -benchmark`) instead
    /// of the validation suite; the summary compares latencies
    #[arg(long)]
    benchmark: bool,
    /// With --benchmark: how many pods, containers and image pulls the
    /// lifecycle benchmarks cycle through, one at a time
    #[arg(long, value_name = "N", default_value_t = 50)]
    samples: u32,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Side {
    Both,
    Stratum,
    Containerd,
}

/// Set by SIGINT or SIGTERM: critest is stopped, then everything cleaned up.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn catch_stop_signals() {
    let handler = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

fn check_stop() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn main() -> ExitCode {
    catch_stop_signals();
    let mut options = <Options as clap::Parser>::parse();
    let agent = match check_options(&mut options) {
        Ok(agent) => agent,
        Err(e) => {
            eprintln!("conformance: {e:#}");
            return ExitCode::from(2);
        }
    };
    match run(&options, &agent) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conformance: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Checks the inputs exist and makes critest's path absolute (it runs in
/// the work dir); the agent binary's path.
fn check_options(options: &mut Options) -> Result<PathBuf> {
    if options.benchmark && options.focus.is_some() {
        bail!(
            "--focus selects validation specs: critest -benchmark ORs it with its own focus \
             (\"benchmark\") and would run them too"
        );
    }
    if options.samples == 0 {
        bail!("--samples must be at least 1");
    }
    if !options.critest.is_file() {
        bail!(
            "critest not found at {}: it is cri-tools v1.26.1's (see \
             ../shared/tools/cri-tools-v1.26.1/README.md); pass its path with CRITEST=PATH",
            options.critest.display()
        );
    }
    options.critest = std::path::absolute(&options.critest).context("critest's path")?;
    for need in ["oci", "images.list"] {
        if !options.images.join(need).exists() {
            bail!(
                "{} has no {need}: pass the directory guest-images/conformance-images.sh prints",
                options.images.display()
            );
        }
    }
    let agent = match &options.agent {
        Some(a) => a.clone(),
        None => std::env::current_exe()
            .context("this binary's path")?
            .parent()
            .map(|d| d.join("node-agent"))
            .ok_or_else(|| anyhow!("this binary has no directory"))?,
    };
    if options.side != Side::Containerd && !agent.is_file() {
        bail!(
            "{} is missing: build it with `cargo build -p node-agent --bin node-agent -p \
             stratum-runtime --bin stratum-log-writer --bin stratum-pod-init` or pass --agent",
            agent.display()
        );
    }
    Ok(agent)
}

fn run(options: &Options, agent: &Path) -> Result<()> {
    if !stratum_testkit::root::is_root() {
        bail!("needs root (containers, cgroups, mounts, networks)");
    }
    let tools = Tools::find(options.side)?;
    let mut mounts = HostMounts::default();
    prepare_cgroups(&mut mounts)?;
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("mkdir {}", options.out.display()))?;
    let out = std::path::absolute(&options.out).context("the output directory")?;
    let work = WorkDir::create(options.dir.as_deref(), "stratum-conformance")
        .map_err(anyhow::Error::msg)?;

    eprintln!("conformance: starting a registry and pushing the test images");
    let registry = fixture::TestRegistry::start().map_err(anyhow::Error::msg)?;
    let pushed = push_images(&registry, &options.images)?;
    eprintln!(
        "conformance: {pushed} images on http://{} (mirror of registry.k8s.io and gcr.io)",
        registry.addr()
    );
    check_stop()?;

    let mut results = Vec::new();
    if options.side != Side::Containerd {
        results.push(run_stratum(
            options,
            agent,
            &work.0,
            &out,
            registry.addr(),
            &mut mounts,
        )?);
        check_stop()?;
    }
    if options.side != Side::Stratum {
        results.push(run_containerd(
            options,
            &tools,
            &work.0,
            &out,
            registry.addr(),
            &mut mounts,
        )?);
    }
    drop(registry);
    drop(work);

    let (summary, file) = if options.benchmark {
        (bench_summary(options, &results), "benchmark.txt")
    } else {
        (summary(options, &results), "summary.txt")
    };
    print!("{summary}");
    let path = out.join(file);
    std::fs::write(&path, &summary).with_context(|| format!("write {}", path.display()))?;
    eprintln!(
        "conformance: reports, critest output and this summary are in {}",
        out.display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// The host.

struct Tools {
    containerd: PathBuf,
    ctr: PathBuf,
    runc: PathBuf,
    cni_bin: PathBuf,
}

impl Tools {
    fn find(side: Side) -> Result<Tools> {
        let missing = |name: &str, package: &str| {
            anyhow!("{name} is not installed: run `make bench-pod-deps` (Debian package {package})")
        };
        for (tool, package) in [("skopeo", "skopeo"), ("umoci", "umoci")] {
            which(tool).ok_or_else(|| missing(tool, package))?;
        }
        if side == Side::Stratum {
            return Ok(Tools {
                containerd: PathBuf::new(),
                ctr: PathBuf::new(),
                runc: PathBuf::new(),
                cni_bin: PathBuf::new(),
            });
        }
        let cni_bin = PathBuf::from("/usr/lib/cni");
        for plugin in ["bridge", "host-local", "portmap", "loopback"] {
            if !cni_bin.join(plugin).is_file() {
                return Err(missing(
                    &format!("the {plugin} CNI plugin"),
                    "containernetworking-plugins",
                ));
            }
        }
        which("iptables").ok_or_else(|| missing("iptables", "iptables"))?;
        Ok(Tools {
            containerd: which("containerd").ok_or_else(|| missing("containerd", "containerd"))?,
            ctr: which("ctr").ok_or_else(|| missing("ctr", "containerd"))?,
            runc: which("runc").ok_or_else(|| missing("runc", "runc"))?,
            cni_bin,
        })
    }
}

/// Mounts each controller the unified hierarchy lists as a v1 hierarchy
/// of its own (crun refuses a hybrid host whose unified hierarchy holds
/// one). Called before each runtime starts: a hierarchy another process
/// mounted is unmounted when that process exits (a test run of the
/// agent's, say), and a runtime started without it cannot read its
/// containers' cgroups (containerd then has no metrics).
///
/// A v1 hierarchy that exists but is mounted nowhere (its last mount
/// lazily unmounted while cgroups of it live on: /proc/self/cgroup still
/// lists it, and the unified hierarchy no longer offers its controller) is
/// mounted again at /sys/fs/cgroup/<controllers>, which attaches the same
/// hierarchy; those mounts are undone by `mounts` on drop.
fn prepare_cgroups(mounts: &mut HostMounts) -> Result<()> {
    for controller in fixture::mount_unified_controllers_as_v1().map_err(anyhow::Error::msg)? {
        eprintln!("conformance: mounted the {controller} controller as a v1 hierarchy");
    }
    let mounted = cleanup::cgroup_mounts();
    let own = std::fs::read_to_string("/proc/self/cgroup").context("read /proc/self/cgroup")?;
    for line in own.lines() {
        // "ID:CONTROLLERS:PATH"; named hierarchies (name=systemd) are not
        // a controller's.
        let controllers = line.split(':').nth(1).unwrap_or_default();
        if controllers.is_empty() || controllers.starts_with("name=") {
            continue;
        }
        if mounted.iter().any(|(mount, _)| {
            mount.file_name().and_then(|n| n.to_str()) == Some(controllers)
                || hierarchy_of(mount).as_deref() == Some(controllers)
        }) {
            continue;
        }
        let dir = PathBuf::from("/sys/fs/cgroup").join(controllers);
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        fixture::run(
            Command::new("mount")
                .args(["-t", "cgroup", "-o", controllers, "cgroup"])
                .arg(&dir),
        )
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("mount the {controllers} v1 hierarchy again"))?;
        eprintln!(
            "conformance: the {controllers} v1 hierarchy was mounted nowhere: mounted it at {}",
            dir.display()
        );
        mounts.0.push(dir);
    }
    Ok(())
}

/// The controllers of the cgroup v1 hierarchy mounted at `mount`, as
/// /proc/self/cgroup names them (comma-separated, kernel order).
fn hierarchy_of(mount: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let line = info.lines().find(|l| {
        l.split(' ')
            .nth(4)
            .map(cleanup::unescape_mount_path)
            .as_deref()
            == mount.to_str()
    })?;
    let (_, tail) = line.split_once(" - ")?;
    let options = tail.split(' ').nth(2)?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    own.lines()
        .filter_map(|l| l.split(':').nth(1))
        .find(|c| !c.is_empty() && c.split(',').all(|c| options.split(',').any(|o| o == c)))
        .map(str::to_owned)
}

/// Cgroup hierarchies this run mounted again; unmounted (lazily) on drop.
#[derive(Default)]
struct HostMounts(Vec<PathBuf>);

impl Drop for HostMounts {
    fn drop(&mut self) {
        for dir in self.0.drain(..) {
            quiet(Command::new("umount").arg("-l").arg(&dir));
            let _ = std::fs::remove_dir(&dir);
        }
    }
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

/// Pushes every image of `images.list` ("LAYOUT_TAG REGISTRY/PATH:TAG")
/// as PATH:TAG; how many.
fn push_images(registry: &fixture::TestRegistry, images: &Path) -> Result<usize> {
    let list_path = images.join("images.list");
    let list = std::fs::read_to_string(&list_path)
        .with_context(|| format!("read {}", list_path.display()))?;
    let layout = images.join("oci");
    let mut pushed = 0;
    for (n, line) in list.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || {
            anyhow!(
                "{}:{}: {line:?} is not \"TAG NAME\"",
                list_path.display(),
                n + 1
            )
        };
        let (tag, name) = line.split_once(' ').ok_or_else(bad)?;
        // registry.k8s.io/e2e-test-images/busybox:1.29-2 → e2e-test-images/busybox:1.29-2
        let (_, path) = name.split_once('/').ok_or_else(bad)?;
        registry
            .push_layout(&layout, tag, path)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("push {name}"))?;
        pushed += 1;
    }
    Ok(pushed)
}

// ---------------------------------------------------------------------------
// critest.

/// One runtime's run.
struct SideResult {
    /// The column's title.
    name: String,
    specs: Vec<Spec>,
    /// Failed nodes that are not specs (BeforeSuite...).
    suite_failures: Vec<String>,
    took: Duration,
    /// critest's output.
    log: PathBuf,
    /// What changed on the host under the run that may explain failures.
    notes: Vec<String>,
    /// With --benchmark: what critest measured.
    bench: Vec<Operation>,
}

struct Spec {
    name: String,
    outcome: Outcome,
    /// The first line of the failure message, for a failed spec.
    message: String,
}

#[derive(Clone, Copy, PartialEq)]
enum Outcome {
    Passed,
    Failed,
    Skipped,
}

impl SideResult {
    fn count(&self, outcome: Outcome) -> usize {
        self.specs.iter().filter(|s| s.outcome == outcome).count()
    }

    fn failed(&self) -> impl Iterator<Item = &Spec> {
        self.specs.iter().filter(|s| s.outcome == Outcome::Failed)
    }
}

/// Runs critest against `socket`, its output and reports in `out` as
/// `<slug>.*`; stops early (critest killed) on SIGINT/SIGTERM or when
/// `alive` says the runtime died.
fn critest(
    options: &Options,
    socket: &Path,
    out: &Path,
    slug: &str,
    name: String,
    work: &Path,
    alive: &mut dyn FnMut() -> Result<()>,
) -> Result<SideResult> {
    let slug = if options.benchmark {
        format!("{slug}.benchmark")
    } else {
        slug.to_string()
    };
    let json = out.join(format!("{slug}.json"));
    let junit = out.join(format!("{slug}.junit.xml"));
    let log_path = out.join(format!("{slug}.critest.log"));
    for f in [&json, &junit] {
        let _ = std::fs::remove_file(f);
    }
    // critest -benchmark writes its lifecycle data here.
    let bench_dir = out.join(&slug);
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("create {}", log_path.display()))?;
    let log2 = log.try_clone().context("critest log")?;
    let endpoint = format!("unix://{}", socket.display());
    let mut cmd = Command::new(&options.critest);
    cmd.arg(format!("--runtime-endpoint={endpoint}"))
        .arg(format!("--image-endpoint={endpoint}"))
        .arg(format!("--ginkgo.json-report={}", json.display()))
        .arg(format!("--ginkgo.junit-report={}", junit.display()))
        .arg(format!("--ginkgo.timeout={}", options.timeout))
        .arg("--ginkgo.no-color");
    // critest -benchmark sets --ginkgo.succinct, which excludes -v.
    if !options.benchmark {
        cmd.arg("--ginkgo.v");
    }
    for (skip, _) in SKIPS {
        cmd.arg(format!("--ginkgo.skip={skip}"));
    }
    if let Some(focus) = &options.focus {
        cmd.arg(format!("--ginkgo.focus={focus}"));
    }
    if options.benchmark {
        let params = work.join("benchmark-params.yaml");
        std::fs::write(&params, benchmark_params(options.samples))
            .with_context(|| format!("write {}", params.display()))?;
        let _ = std::fs::remove_dir_all(&bench_dir);
        std::fs::create_dir_all(&bench_dir)
            .with_context(|| format!("mkdir {}", bench_dir.display()))?;
        cmd.arg("-benchmark")
            .arg(format!("--benchmarking-params-file={}", params.display()))
            .arg(format!("--benchmarking-output-dir={}", bench_dir.display()))
            // The same spec order on both sides.
            .arg(format!("--ginkgo.seed={BENCHMARK_SEED}"))
            // Where a spec is stuck, in its output: critest's results
            // collector panics the whole run 60 s after a failed sample.
            .arg("--ginkgo.poll-progress-after=30s");
        pre_pull(options, &endpoint, &name);
    }
    // critest looks for a crictl.yaml in its working directory.
    cmd.current_dir(work)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    eprintln!(
        "conformance: critest against {name} ({}); output in {}",
        socket.display(),
        log_path.display()
    );
    let mounts_before = cgroup_mount_points();
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("start {}", options.critest.display()))?;
    let mut last_note = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().context("wait for critest")? {
            break status;
        }
        let dead = alive();
        if STOP.load(Ordering::SeqCst) || dead.is_err() {
            // Its process group: the ginkgo suite and anything it started.
            if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill(2) of the process group critest leads.
                unsafe { libc::kill(-pgid, libc::SIGTERM) };
            }
            terminate(&mut child, Duration::from_secs(30));
            dead?;
            bail!("interrupted");
        }
        if last_note.elapsed() > Duration::from_secs(120) {
            last_note = Instant::now();
            let done = std::fs::read_to_string(&log_path)
                .map(|l| l.lines().filter(|l| l.starts_with("• ")).count())
                .unwrap_or(0);
            eprintln!(
                "conformance: {name}: {} s, {done} specs done",
                started.elapsed().as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let took = started.elapsed();
    // The v1 hierarchies of `mount_unified_controllers_as_v1` are
    // unmounted by whichever process mounted them when it exits: another
    // test run on the host may take one away under a runtime, whose cgroup
    // code then fails (containerd: no metrics).
    let mounts_after = cgroup_mount_points();
    let notes: Vec<String> = mounts_before
        .iter()
        .filter(|m| !mounts_after.contains(m))
        .map(|m| {
            format!(
                "the cgroup hierarchy at {} was unmounted during the run (by another process)",
                m.display()
            )
        })
        .collect();
    eprintln!(
        "conformance: critest against {name} ended ({status}) after {}",
        fmt_duration(took)
    );
    let report = match std::fs::read_to_string(&json) {
        Ok(report) => report,
        // critest -benchmark panics as a whole when a lifecycle sample
        // fails (its results collector times out): what the other specs
        // wrote is still shown, with how it ended.
        Err(_) if options.benchmark => {
            let output = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Ok(SideResult {
                name,
                specs: Vec::new(),
                suite_failures: vec![format!(
                    "critest ended ({status}) without a report; its output ends:\n{}",
                    tail(&output, 12)
                )],
                took,
                log: log_path,
                notes,
                bench: read_lifecycle_data(&bench_dir)?,
            });
        }
        Err(e) => bail!(
            "critest wrote no report {} ({status}): {e}; its output ends:\n{}",
            json.display(),
            tail(&std::fs::read_to_string(&log_path).unwrap_or_default(), 20)
        ),
    };
    let (specs, suite_failures) =
        parse_report(&report).with_context(|| format!("read {}", json.display()))?;
    let bench = if options.benchmark {
        let mut ops = read_lifecycle_data(&bench_dir)?;
        ops.extend(
            parse_measurements(&report).with_context(|| format!("read {}", json.display()))?,
        );
        ops
    } else {
        Vec::new()
    };
    Ok(SideResult {
        name,
        specs,
        suite_failures,
        took,
        log: log_path,
        notes,
        bench,
    })
}

/// Where cgroup hierarchies are mounted now.
fn cgroup_mount_points() -> Vec<PathBuf> {
    cleanup::cgroup_mounts()
        .into_iter()
        .map(|(mount, _)| mount)
        .collect()
}

/// Ginkgo v2's JSON report (an array of suite reports, each with
/// `SpecReports`): the specs (`It` nodes) and the failed other nodes.
fn parse_report(report: &str) -> Result<(Vec<Spec>, Vec<String>)> {
    let suites: Value = serde_json::from_str(report).context("not JSON")?;
    let suites = suites
        .as_array()
        .ok_or_else(|| anyhow!("not an array of suite reports"))?;
    let mut specs = Vec::new();
    let mut suite_failures = Vec::new();
    for suite in suites {
        let reports = suite
            .get("SpecReports")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for r in reports {
            let text = |key: &str| r.get(key).and_then(Value::as_str).unwrap_or_default();
            let state = text("State");
            let outcome = match state {
                "passed" => Outcome::Passed,
                "skipped" | "pending" => Outcome::Skipped,
                // failed, panicked, timedout, interrupted, aborted
                _ => Outcome::Failed,
            };
            let message = r
                .pointer("/Failure/Message")
                .and_then(Value::as_str)
                .map(|m| m.trim().lines().next().unwrap_or_default().to_string())
                .unwrap_or_default();
            if text("LeafNodeType") != "It" {
                if outcome == Outcome::Failed {
                    suite_failures.push(format!("[{}] {state}: {message}", text("LeafNodeType")));
                }
                continue;
            }
            let mut name: Vec<&str> = r
                .get("ContainerHierarchyTexts")
                .and_then(Value::as_array)
                .map(|c| c.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            name.push(text("LeafNodeText"));
            specs.push(Spec {
                name: name.join(" "),
                outcome,
                message,
            });
        }
    }
    if specs.is_empty() {
        bail!("no specs in the report");
    }
    Ok((specs, suite_failures))
}

// ---------------------------------------------------------------------------
// Stratum.

/// A private agent for critest; on drop, stopped with everything its pods
/// left (cgroups, mounts, run directory, bridge, nftables tables).
struct Agent {
    process: AgentProcess,
    bridge: String,
    made_run_dir: bool,
}

impl Agent {
    fn start(binary: &Path, work: &Path, registry: &str, extra: &[String]) -> Result<Agent> {
        let help = Command::new(binary)
            .arg("--help")
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let bridge = format!("stcrt{}", std::process::id() % 100_000);
        let mut args: Vec<String> = vec![
            // Never started: no VM runs here.
            "--vmm".into(),
            "/bin/true".into(),
            "--pod-bridge".into(),
            bridge.clone(),
            "--pod-cidr".into(),
            STRATUM_POD_CIDR.into(),
            "--host-port-range".into(),
            HOST_PORTS.into(),
            // critest checks that a runtime does what it is asked, as
            // containerd does; the default `baseline` level refuses or
            // tightens some of it by design (the README's security model).
            "--pod-security".into(),
            "privileged".into(),
        ];
        for mirrored in ["registry.k8s.io", "gcr.io"] {
            args.extend([
                "--registry-mirror".into(),
                format!("{mirrored}=http://{registry}"),
            ]);
        }
        if help.contains("--no-vm-jail") {
            args.push("--no-vm-jail".into());
        }
        args.extend(extra.iter().cloned());
        let made_run_dir = !Path::new(RUN_STRATUM).exists();
        let cgroup_root = format!("conformance-{}", std::process::id());
        let process = AgentProcess::start(binary, work.join("stratum"), cgroup_root, &args)
            .map_err(anyhow::Error::msg)
            .context("start node-agent")?;
        Ok(Agent {
            process,
            bridge,
            made_run_dir,
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // What its pods left needs the agent gone first.
        self.process.stop();
        let cgroup_root = self.process.cgroup_root().to_string();
        cleanup::remove_agent_cgroups(&cgroup_root);
        unmount_under(self.process.work());
        let run_dir = Path::new(RUN_STRATUM).join(&cgroup_root);
        unmount_under(&run_dir);
        let _ = std::fs::remove_dir_all(&run_dir);
        if self.made_run_dir {
            let _ = std::fs::remove_dir(RUN_STRATUM);
        }
        // The agent leaves its pod network up when it stops.
        quiet(Command::new("ip").args(["link", "del", &self.bridge]));
        for family in ["inet", "bridge"] {
            quiet(Command::new("nft").args(["delete", "table", family, &self.bridge]));
        }
    }
}

fn quiet(cmd: &mut Command) {
    let _ = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn run_stratum(
    options: &Options,
    binary: &Path,
    work: &Path,
    out: &Path,
    registry: &str,
    mounts: &mut HostMounts,
) -> Result<SideResult> {
    prepare_cgroups(mounts)?;
    eprintln!("conformance: starting node-agent ({})", binary.display());
    let mut agent = Agent::start(binary, work, registry, &options.agent_args)?;
    let socket = agent.process.cri_socket();
    let result = critest(
        options,
        &socket,
        out,
        "stratum",
        "stratum".into(),
        work,
        &mut || agent.process.check_alive().map_err(anyhow::Error::msg),
    );
    // The agent's log beside critest's, whatever happened.
    let log = out.join("stratum.agent.log");
    if let Err(e) = std::fs::write(&log, agent.process.log()) {
        eprintln!("conformance: {}: {e}", log.display());
    }
    drop(agent);
    result
}

// ---------------------------------------------------------------------------
// containerd.

/// containerd with its CRI plugin set up for critest, its CNI network and
/// what that leaves on the host; on drop, its pods removed, then it and its
/// shims stopped and the network taken down.
struct CriContainerd {
    inner: containerd::Containerd,
    crictl: Option<PathBuf>,
    bridge: String,
    /// The portmap plugin's nat chains were not there before.
    portmap_chains_are_ours: bool,
    /// The hierarchies (mount points) that had a /k8s.io cgroup before.
    cgroup_parents_before: Vec<PathBuf>,
    /// nftables tables before (iptables-nft makes `ip nat`... for CNI).
    nft_tables_before: Vec<String>,
}

impl CriContainerd {
    fn start(tools: &Tools, work: &Path, registry: &str, crictl: Option<PathBuf>) -> Result<Self> {
        let dir = work.join("containerd");
        let net_d = dir.join("cni/net.d");
        std::fs::create_dir_all(&net_d).with_context(|| format!("mkdir {}", net_d.display()))?;
        let bridge = format!("ctcrt{}", std::process::id() % 100_000);
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "conformance",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": bridge,
                    "isGateway": true,
                    "ipMasq": true,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": CONTAINERD_POD_CIDR }]],
                        "routes": [{ "dst": "0.0.0.0/0" }],
                        "dataDir": dir.join("cni/ipam").display().to_string(),
                    },
                },
                { "type": "portmap", "capabilities": { "portMappings": true } },
            ],
        });
        let conflist_path = net_d.join("10-conformance.conflist");
        std::fs::write(&conflist_path, format!("{conflist:#}\n"))
            .with_context(|| format!("write {}", conflist_path.display()))?;
        let portmap_chains_are_ours = !nat_chains().iter().any(|c| c == PORTMAP_CHAINS[0]);
        let nft_tables_before = nft_tables();
        let cgroup_parents_before = cgroup_parents();
        let mirrors: String = ["registry.k8s.io", "gcr.io"]
            .iter()
            .map(|r| {
                format!(
                    "[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"{r}\"]\n  \
                     endpoint = [\"http://{registry}\"]\n"
                )
            })
            .collect();
        let extra = format!(
            "[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\"]\n  \
               sandbox_image = \"registry.k8s.io/pause:3.6\"\n  \
               restrict_oom_score_adj = true\n  \
               stream_server_address = \"127.0.0.1\"\n  \
               stream_server_port = \"0\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  \
               snapshotter = \"overlayfs\"\n  \
               default_runtime_name = \"runc\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  \
               runtime_type = \"io.containerd.runc.v2\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  \
               BinaryName = \"{runc}\"\n  \
               Root = \"{runc_root}\"\n  \
               SystemdCgroup = false\n\
             [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  \
               bin_dir = \"{cni_bin}\"\n  \
               conf_dir = \"{net_d}\"\n\
             {mirrors}",
            opt = dir.join("opt").display(),
            runc = tools.runc.display(),
            runc_root = dir.join("runc-root").display(),
            cni_bin = tools.cni_bin.display(),
            net_d = net_d.display(),
        );
        let inner = containerd::Containerd::start(&tools.containerd, &tools.ctr, dir, &extra)
            .map_err(anyhow::Error::msg)
            .context("start containerd")?;
        Ok(CriContainerd {
            inner,
            crictl,
            bridge,
            portmap_chains_are_ours,
            cgroup_parents_before,
            nft_tables_before,
        })
    }

    fn version(&self) -> String {
        self.inner
            .ctr(CRI_NAMESPACE)
            .arg("version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .find(|l| l.trim_start().starts_with("Version:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "?".into())
    }
}

impl Drop for CriContainerd {
    fn drop(&mut self) {
        // Pods through the CRI first: their network (CNI DEL) and cgroups
        // go with them, which killing the shims would not do.
        if let Some(crictl) = &self.crictl {
            let endpoint = format!("unix://{}", self.inner.socket().display());
            for args in [&["rmp", "-a", "-f"][..], &["rmi", "-a"][..]] {
                quiet(
                    Command::new(crictl)
                        .arg(format!("--runtime-endpoint={endpoint}"))
                        .arg(format!("--image-endpoint={endpoint}"))
                        .args(["--timeout", "60s"])
                        .args(args),
                );
            }
        }
        self.inner.stop();
        unmount_under(self.inner.dir());
        for mount in cgroup_parents() {
            if !self.cgroup_parents_before.contains(&mount) {
                cleanup::remove_cgroup_dirs(&mount.join(CRI_CGROUP_PARENT));
            }
        }
        quiet(Command::new("ip").args(["link", "del", &self.bridge]));
        if self.portmap_chains_are_ours {
            remove_nat_chains(PORTMAP_CHAINS);
        }
        // The tables iptables-nft made for the CNI plugins, once empty.
        for table in nft_tables() {
            if !self.nft_tables_before.contains(&table) && nft_table_is_empty(&table) {
                quiet(
                    Command::new("nft")
                        .args(["delete", "table"])
                        .args(table.split_whitespace()),
                );
            }
        }
    }
}

/// The cgroup hierarchies (mount points) with a /k8s.io cgroup.
fn cgroup_parents() -> Vec<PathBuf> {
    cleanup::cgroup_mounts()
        .into_iter()
        .map(|(mount, _)| mount)
        .filter(|mount| mount.join(CRI_CGROUP_PARENT).exists())
        .collect()
}

/// `nft list tables`: "FAMILY NAME" each.
fn nft_tables() -> Vec<String> {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("table "))
        .map(str::to_owned)
        .collect()
}

/// Whether the nftables table "FAMILY NAME" has chains without rules only.
fn nft_table_is_empty(table: &str) -> bool {
    let Ok(out) = Command::new("nft")
        .arg("list")
        .arg("table")
        .args(table.split_whitespace())
        .stdin(Stdio::null())
        .output()
    else {
        return false;
    };
    out.status.success()
        && String::from_utf8_lossy(&out.stdout).lines().all(|l| {
            let l = l.trim();
            l.is_empty()
                || l == "}"
                || l.starts_with("table ")
                || l.starts_with("chain ")
                || (l.starts_with("type ") && l.contains(" hook "))
        })
}

/// The chains of iptables' nat table.
fn nat_chains() -> Vec<String> {
    let out = Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| l.strip_prefix("-N "))
        .map(str::to_owned)
        .collect()
}

/// Deletes the rules that jump to `chains` from other chains of the nat
/// table, then the chains.
fn remove_nat_chains(chains: &[&str]) {
    let rules = Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for rule in rules.lines() {
        let Some(spec) = rule.strip_prefix("-A ") else {
            continue;
        };
        let from = spec.split_whitespace().next().unwrap_or_default();
        let jumps = chains.iter().any(|c| spec.ends_with(&format!("-j {c}")));
        if jumps && !chains.contains(&from) {
            // `-S` quotes comments as the shell would: split it back.
            if let Some(args) = shell_words(spec) {
                quiet(
                    Command::new("iptables")
                        .args(["-t", "nat", "-D"])
                        .args(args),
                );
            }
        }
    }
    for c in chains {
        quiet(Command::new("iptables").args(["-t", "nat", "-F", c]));
    }
    for c in chains {
        quiet(Command::new("iptables").args(["-t", "nat", "-X", c]));
    }
}

/// Splits an `iptables -S` rule into arguments (double quotes with `\"`
/// inside, as iptables prints comments); None when unbalanced.
fn shell_words(s: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => word.push(chars.next()?),
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return None;
    }
    if in_word {
        words.push(word);
    }
    Some(words)
}

fn run_containerd(
    options: &Options,
    tools: &Tools,
    work: &Path,
    out: &Path,
    registry: &str,
    mounts: &mut HostMounts,
) -> Result<SideResult> {
    prepare_cgroups(mounts)?;
    eprintln!(
        "conformance: starting containerd ({})",
        tools.containerd.display()
    );
    let crictl = crictl(options);
    let mut ctrd = CriContainerd::start(tools, work, registry, crictl)?;
    let name = format!("containerd {}", ctrd.version());
    let socket = ctrd.inner.socket();
    let result = critest(options, &socket, out, "containerd", name, work, &mut || {
        ctrd.inner.check_alive().map_err(anyhow::Error::msg)
    });
    let log = out.join("containerd.log");
    if let Err(e) = std::fs::write(&log, ctrd.inner.log()) {
        eprintln!("conformance: {}: {e}", log.display());
    }
    drop(ctrd);
    result
}

/// crictl next to critest (cri-tools ships both), if there.
fn crictl(options: &Options) -> Option<PathBuf> {
    options
        .critest
        .parent()
        .map(|d| d.join("crictl"))
        .filter(|p| p.is_file())
}

// ---------------------------------------------------------------------------
// Benchmarks.

/// Ginkgo's seed for `critest -benchmark`: the same spec order on both sides.
const BENCHMARK_SEED: u32 = 1;
/// The image critest's containers run (its default test image).
const DEFAULT_TEST_IMAGE: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
/// The image the image benchmarks pull, inspect, remove and list (its
/// default, public.ecr.aws's busybox, is not mirrored here); no other spec
/// uses it.
const IMAGE_BENCHMARK_IMAGE: &str = "gcr.io/k8s-staging-cri-tools/test-image-1:latest";

/// critest's `--benchmarking-params-file`: `samples` of each lifecycle,
/// one at a time. Its pod and container results collector panics the run
/// when no sample ends within `containerBenchmarkTimeoutSeconds` (default
/// 60): 150 lets a StopContainer that waits out its 60 s grace period be
/// measured rather than end the run.
fn benchmark_params(samples: u32) -> String {
    format!(
        "containerBenchmarkTimeoutSeconds: 150\n\
         podsNumber: {samples}\npodsNumberParallel: 1\n\
         containersNumber: {samples}\ncontainersNumberParallel: 1\n\
         imagesNumber: {samples}\nimagesNumberParallel: 1\n\
         imagePullingBenchmarkImage: {IMAGE_BENCHMARK_IMAGE}\n\
         imageListingBenchmarkImages:\n  - {IMAGE_BENCHMARK_IMAGE}\n"
    )
}

/// Pulls critest's container image before the benchmarks, so that no
/// side's first CreateContainer sample includes a pull (critest pulls it
/// inside the timed call when it is missing). Without crictl, says so.
fn pre_pull(options: &Options, endpoint: &str, name: &str) {
    let Some(crictl) = crictl(options) else {
        eprintln!(
            "conformance: no crictl next to critest: {DEFAULT_TEST_IMAGE} is not pulled \
             beforehand on {name} (critest's first CreateContainer sample includes its pull)"
        );
        return;
    };
    let out = Command::new(&crictl)
        .arg(format!("--runtime-endpoint={endpoint}"))
        .arg(format!("--image-endpoint={endpoint}"))
        .args(["--timeout", "120s", "pull", DEFAULT_TEST_IMAGE])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "conformance: crictl pull {DEFAULT_TEST_IMAGE} on {name} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("conformance: start {}: {e}", crictl.display()),
    }
}

/// One measured operation of one runtime: its samples in milliseconds.
struct Operation {
    /// critest's name of it.
    name: String,
    samples: Vec<f64>,
}

/// The lifecycle data files `critest -benchmark` writes (v1.26.1,
/// pkg/benchmark), in the order they are shown.
const LIFECYCLE_FILES: &[&str] = &[
    "pod_benchmark_data.json",
    "container_benchmark_data.json",
    "image_lifecycle_benchmark_data.json",
    "image_listing_benchmark_data.json",
];

/// The operations of the lifecycle files in `dir` (a file a failed spec did
/// not write is left out).
fn read_lifecycle_data(dir: &Path) -> Result<Vec<Operation>> {
    let mut ops = Vec::new();
    for file in LIFECYCLE_FILES {
        let path = dir.join(file);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        ops.extend(parse_lifecycle(&text).with_context(|| format!("read {}", path.display()))?);
    }
    Ok(ops)
}

/// A `LifecycleBenchmarksResultsSet`: `operationsNames` and `datapoints`
/// whose `operationsDurationsNs` are in the names' order.
fn parse_lifecycle(text: &str) -> Result<Vec<Operation>> {
    let set: Value = serde_json::from_str(text).context("not JSON")?;
    let names = set
        .get("operationsNames")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("no operationsNames"))?;
    let mut ops: Vec<Operation> = names
        .iter()
        .map(|n| {
            n.as_str()
                .map(|name| Operation {
                    name: name.to_string(),
                    samples: Vec::new(),
                })
                .ok_or_else(|| anyhow!("an operation name is not a string: {n}"))
        })
        .collect::<Result<_>>()?;
    let points = set
        .get("datapoints")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for point in points {
        let durations = point
            .get("operationsDurationsNs")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        // critest warns of, and keeps, a datapoint of another length.
        if durations.len() != ops.len() {
            continue;
        }
        for (op, d) in ops.iter_mut().zip(durations) {
            let ns = d
                .as_f64()
                .ok_or_else(|| anyhow!("a duration is not a number: {d}"))?;
            op.samples.push(ns / 1e6);
        }
    }
    Ok(ops)
}

/// The gmeasure experiments of the JSON report's report entries (critest's
/// pod+container start spec records one): their duration measurements.
fn parse_measurements(report: &str) -> Result<Vec<Operation>> {
    let suites: Value = serde_json::from_str(report).context("not JSON")?;
    let mut ops = Vec::new();
    let entries = suites
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s.get("SpecReports").and_then(Value::as_array))
        .flatten()
        .filter_map(|r| r.get("ReportEntries").and_then(Value::as_array))
        .flatten();
    for entry in entries {
        let Some(json) = entry.pointer("/Value/AsJSON").and_then(Value::as_str) else {
            continue;
        };
        let experiment: Value = serde_json::from_str(json).context("a report entry's AsJSON")?;
        let measurements = experiment
            .get("Measurements")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for m in measurements {
            if m.get("Type").and_then(Value::as_str) != Some("Duration") {
                continue;
            }
            let name = m.get("Name").and_then(Value::as_str).unwrap_or_default();
            let samples = m
                .get("Durations")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter_map(Value::as_f64)
                .map(|ns| ns / 1e6)
                .collect();
            ops.push(Operation {
                name: name.to_string(),
                samples,
            });
        }
    }
    Ok(ops)
}

/// The nearest-rank `p`-th percentile (0-100) of `samples`.
fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// The CRI call(s) each of critest's operation names times.
fn cri_calls(op: &str) -> &'static str {
    match op {
        "CreatePod" => "RunPodSandbox",
        "StatusPod" => "PodSandboxStatus (verbose)",
        "StopPod" => "StopPodSandbox",
        "RemovePod" => "RemovePodSandbox",
        "CreateContainer" => "ImageStatus + CreateContainer",
        "StartContainer" => "StartContainer",
        "StatusContainer" => "ContainerStatus (verbose)",
        "StopContainer" => "StopContainer (timeout 60 s)",
        "RemoveContainer" => "RemoveContainer",
        "PullImage" => "PullImage (loopback registry)",
        "StatusImage" => "ImageStatus",
        "RemoveImage" => "RemoveImage",
        "ListImages" => "ListImages",
        "create PodSandbox and container" => "Run+Create+Start, Stop+RemovePodSandbox",
        _ => "",
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The sum of the p50s of `ops` on `r`, if it measured them all.
fn p50_sum(r: &SideResult, ops: &[&str]) -> Option<f64> {
    ops.iter()
        .map(|name| {
            r.bench
                .iter()
                .find(|o| o.name == *name)
                .and_then(|o| percentile(&o.samples, 50.0))
        })
        .sum()
}

/// The benchmark summary: each operation's p50 and p90 per runtime, the
/// ratio of the first runtime's p50 to the second's, the target line and
/// the failed specs.
fn bench_summary(options: &Options, results: &[SideResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "CRI lifecycle benchmarks: critest v1.26.1 -benchmark ({})",
        options.critest.display()
    );
    let _ = writeln!(
        s,
        "  {} samples per lifecycle, one at a time (ginkgo seed {BENCHMARK_SEED}); times in ms; \
         the pod+container spec times 1 sample after 1 warm-up",
        options.samples
    );
    if !options.agent_args.is_empty() {
        let _ = writeln!(s, "  node-agent given: {}", options.agent_args.join(" "));
    }
    let _ = writeln!(s);
    // Two header rows: the runtimes (and the ratio's), then the cells'.
    let widths: Vec<usize> = results.iter().map(|r| r.name.len().max(37)).collect();
    let _ = write!(s, "{:<32} {:<40}", "operation", "CRI calls timed");
    for (r, w) in results.iter().zip(&widths) {
        let _ = write!(s, " {:>w$}", r.name);
    }
    if let [a, b] = results {
        let short = |r: &SideResult| r.name.split(' ').next().unwrap_or_default().to_string();
        let _ = write!(s, " {:>20}", format!("{}/{}", short(a), short(b)));
    }
    let _ = writeln!(s);
    let _ = write!(s, "{:<32} {:<40}", "", "");
    for w in &widths {
        let _ = write!(s, " {:>w$}", "n       p50 /       p90 /       max");
    }
    if results.len() == 2 {
        let _ = write!(s, " {:>20}", "ratio of p50");
    }
    let _ = writeln!(s);
    // Operations in the order the first runtime that measured them has them.
    let mut names: Vec<&str> = Vec::new();
    for r in results {
        for op in &r.bench {
            if !names.contains(&op.name.as_str()) {
                names.push(&op.name);
            }
        }
    }
    for name in &names {
        let _ = write!(s, "{name:<32} {:<40}", cri_calls(name));
        let mut p50s = Vec::new();
        for (r, w) in results.iter().zip(&widths) {
            let op = r.bench.iter().find(|o| o.name == *name);
            let samples = op.map(|o| o.samples.as_slice()).unwrap_or_default();
            let p50 = percentile(samples, 50.0);
            p50s.push(p50);
            let cell = if samples.is_empty() {
                "not measured".to_string()
            } else {
                format!(
                    "{:>3} {:>9} / {:>9} / {:>9}",
                    samples.len(),
                    ms(p50),
                    ms(percentile(samples, 90.0)),
                    ms(percentile(samples, 100.0))
                )
            };
            let _ = write!(s, " {cell:>w$}");
        }
        if let [a, b] = p50s[..] {
            let _ = write!(
                s,
                " {:>20}",
                ratio(a, b).map_or_else(|| "-".into(), |r| format!("{r:.2}x"))
            );
        }
        let _ = writeln!(s);
    }
    if let [a, b] = results {
        let start = ["CreatePod", "CreateContainer", "StartContainer"];
        let (sa, sb) = (p50_sum(a, &start), p50_sum(b, &start));
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "target: {}'s pod+container start <= 0.8x {}'s",
            a.name, b.name
        );
        let verdict = |r: Option<f64>| match r {
            Some(r) if r <= 0.8 => format!("{r:.2}x: met"),
            Some(r) => format!("{r:.2}x: not met"),
            None => "not measured".into(),
        };
        let _ = writeln!(
            s,
            "  RunPodSandbox + CreateContainer + StartContainer, sum of p50s: {} ms vs {} ms = {}",
            ms(sa),
            ms(sb),
            verdict(ratio(sa, sb))
        );
        let spec = "create PodSandbox and container";
        let one = |r: &SideResult| {
            r.bench
                .iter()
                .find(|o| o.name == spec)
                .and_then(|o| percentile(&o.samples, 50.0))
        };
        let _ = writeln!(
            s,
            "  critest's \"{spec}\" (1 sample; includes StopPodSandbox + RemovePodSandbox): \
             {} ms vs {} ms = {}",
            ms(one(a)),
            ms(one(b)),
            verdict(ratio(one(a), one(b)))
        );
    }
    for r in results {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{}: {} specs, {} passed, {} failed, {} skipped in {} (critest output: {})",
            r.name,
            r.specs.len(),
            r.count(Outcome::Passed),
            r.count(Outcome::Failed),
            r.count(Outcome::Skipped),
            fmt_duration(r.took),
            r.log.display()
        );
        for note in &r.notes {
            let _ = writeln!(s, "  note: {note}");
        }
        for f in &r.suite_failures {
            let _ = writeln!(s, "  suite: {f}");
        }
        for spec in r.failed() {
            let _ = writeln!(s, "  failed: {}", spec.name);
            if !spec.message.is_empty() {
                let _ = writeln!(s, "      {}", spec.message);
            }
        }
    }
    s
}

// ---------------------------------------------------------------------------
// Output.

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}m{:02}s", s / 60, s % 60)
}

/// One cell of the table, from a runtime's results.
type Cell = fn(&SideResult) -> String;

fn summary(options: &Options, results: &[SideResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "CRI validation: critest v1.26.1 ({})",
        options.critest.display()
    );
    if let Some(focus) = &options.focus {
        let _ = writeln!(s, "  focus: {focus}");
    }
    if !options.agent_args.is_empty() {
        let _ = writeln!(s, "  node-agent given: {}", options.agent_args.join(" "));
    }
    let _ = writeln!(s, "  skipped by this run (--ginkgo.skip):");
    for (skip, why) in SKIPS {
        let _ = writeln!(s, "    {skip:?}: {why}");
    }
    let _ = writeln!(
        s,
        "  critest itself skips its 5 benchmark specs in a validation run: they are among the skipped"
    );
    let _ = writeln!(s);
    let _ = write!(s, "{:<10}", "");
    for r in results {
        let _ = write!(s, " {:>20}", r.name);
    }
    let _ = writeln!(s);
    let rows: [(&str, Cell); 5] = [
        ("specs", |r| r.specs.len().to_string()),
        ("passed", |r| r.count(Outcome::Passed).to_string()),
        ("failed", |r| r.count(Outcome::Failed).to_string()),
        ("skipped", |r| r.count(Outcome::Skipped).to_string()),
        ("took", |r| fmt_duration(r.took)),
    ];
    for (title, value) in rows {
        let _ = write!(s, "{title:<10}");
        for r in results {
            let _ = write!(s, " {:>20}", value(r));
        }
        let _ = writeln!(s);
    }
    for r in results {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "failed on {} ({}; critest output: {}):",
            r.name,
            r.count(Outcome::Failed),
            r.log.display()
        );
        for note in &r.notes {
            let _ = writeln!(s, "  note: {note}");
        }
        for f in &r.suite_failures {
            let _ = writeln!(s, "  suite: {f}");
        }
        for spec in r.failed() {
            let elsewhere: Vec<&str> = results
                .iter()
                .filter(|o| !std::ptr::eq(*o, r))
                .filter(|o| o.failed().any(|f| f.name == spec.name))
                .map(|o| o.name.as_str())
                .collect();
            let also = if elsewhere.is_empty() {
                String::new()
            } else {
                format!(" [also fails on {}]", elsewhere.join(", "))
            };
            let _ = writeln!(s, "  {}{also}", spec.name);
            if !spec.message.is_empty() {
                let _ = writeln!(s, "      {}", spec.message);
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_counts_specs_and_suite_failures() {
        let report = r#"[{"SpecReports": [
            {"LeafNodeType": "BeforeSuite", "State": "passed"},
            {"LeafNodeType": "It", "ContainerHierarchyTexts": ["[k8s.io] Image Manager"],
             "LeafNodeText": "pulls", "State": "passed"},
            {"LeafNodeType": "It", "ContainerHierarchyTexts": ["[k8s.io] Streaming", "ctx"],
             "LeafNodeText": "attach", "State": "failed",
             "Failure": {"Message": "rpc error: code = Unimplemented\nmore"}},
            {"LeafNodeType": "It", "LeafNodeText": "windows", "State": "skipped"},
            {"LeafNodeType": "AfterSuite", "State": "panicked", "Failure": {"Message": "boom"}}
        ]}]"#;
        let (specs, suite) = parse_report(report).unwrap();
        assert_eq!(specs.len(), 3);
        assert_eq!(specs[1].name, "[k8s.io] Streaming ctx attach");
        assert!(specs[1].outcome == Outcome::Failed);
        assert_eq!(specs[1].message, "rpc error: code = Unimplemented");
        assert!(specs[2].outcome == Outcome::Skipped);
        assert_eq!(suite, vec!["[AfterSuite] panicked: boom".to_string()]);
    }

    #[test]
    fn lifecycle_data_per_operation() {
        let data = r#"{"operationsNames": ["CreatePod", "StatusPod"], "numParallel": 1,
            "datapoints": [
              {"sampleIndex": 0, "operationsDurationsNs": [7000000, 300000]},
              {"sampleIndex": 1, "operationsDurationsNs": [9000000]},
              {"sampleIndex": 2, "operationsDurationsNs": [5000000, 100000]}
            ]}"#;
        let ops = parse_lifecycle(data).unwrap();
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0].name, "CreatePod");
        // The datapoint of the wrong length is left out.
        assert_eq!(ops[0].samples, [7.0, 5.0]);
        assert_eq!(ops[1].samples, [0.3, 0.1]);
        assert!(parse_lifecycle("{}").is_err());
    }

    #[test]
    fn report_entries_give_duration_measurements() {
        let experiment = r#"{"Name":"start-container-benchmark","Measurements":[
            {"Type":"Duration","Name":"create PodSandbox and container","Durations":[92395043]},
            {"Type":"Value","Name":"other","Values":[1]}]}"#;
        let report = serde_json::json!([{"SpecReports": [
            {"LeafNodeType": "It", "State": "passed",
             "ReportEntries": [{"Name": "start-container-benchmark",
                                "Value": {"Representation": "", "AsJSON": experiment}}]},
            {"LeafNodeType": "It", "State": "passed", "ReportEntries": null}
        ]}]);
        let ops = parse_measurements(&report.to_string()).unwrap();
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].name, "create PodSandbox and container");
        assert!((ops[0].samples[0] - 92.395043).abs() < 1e-9);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile(&samples, 50.0), Some(3.0));
        assert_eq!(percentile(&samples, 90.0), Some(5.0));
        assert_eq!(percentile(&[8.0], 50.0), Some(8.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), None), None);
    }

    #[test]
    fn iptables_rules_split_like_a_shell() {
        let rule = r#"POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ"#;
        assert_eq!(
            shell_words(rule).unwrap(),
            [
                "POSTROUTING",
                "-m",
                "comment",
                "--comment",
                "CNI portfwd requiring masquerade",
                "-j",
                "CNI-HOSTPORT-MASQ"
            ]
        );
        assert!(shell_words("a \"b").is_none());
    }
}
