//! One container's lifecycle: create → start → wait for exit → remove,
//! gluing rootfs, cgroup, spec, runtime, logs and exit watching together.
//!
//! Create, in order (each step undone if a later one fails):
//! 1. the root file system (overlay over the image layers) in the
//!    container's directory, which is also the OCI bundle;
//! 2. the container's leaf cgroup below the pod's cgroup, created and
//!    limited by the cgroup layer (so v1 quota clamping and the v2 weight
//!    mapping are the pools' and VMs'), its effective limits read back for
//!    `linux.resources`;
//! 3. `config.json` (see `spec`), `cgroupsPath` naming that leaf (see
//!    `cgpath`);
//! 4. the attach socket, and the log writer process and its pipes, the
//!    container's stdout and stderr, and its stdin if it has one (see
//!    `log_writer`, `attach`);
//! 5. `runtime create`, then a pidfd on the init (see `reaper`), opened
//!    while the init is still blocked before exec and so cannot be a
//!    recycled pid. A container with a terminal is created before its
//!    writer starts, which then holds the terminal's master.
//!
//! Exit: the pidfd says when; `waitid` (the agent is a subreaper) says how;
//! the leaf's `oom_kill` counter says whether the OOM killer did it. The
//! report is computed once and shared by all waiters. The log writer
//! drains the rest of the output and ends when the last writer of the
//! pipes is gone, which ends log followers.
//!
//! `state.json` in the container's directory records what an agent
//! restarted after a `kill -9` needs to [`Container::adopt`] it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use super::attach::{self, Attachment};
use super::cgpath::CgroupMapping;
use super::confinement::Confinement;
use super::error::{Result, RuntimeError};
use super::exec::ExecChild;
use super::idmap::IdMap;
use super::log_writer::{self, LogRotation, WriterSource};
use super::logs::LogFollower;
use super::oci::{self, ContainerStdio, ExecOutput, OciRuntime, RuntimeStatus};
use super::pod_etc::PodEtc;
use super::reaper::{ExitWatch, ProcessExit};
use super::resources::OciResources;
use super::restart::ExitFacts;
use super::rootfs::{Rootfs, RootfsSource};
use super::sandbox::PodSandbox;
use super::spec::{self, BindMount, ProcessConfig, SpecConfig};
use stratum_cgroup::{Cgroup, CgroupLimits, Hierarchy};
use stratum_process::identity;

/// How long `remove` waits for a killed container to be gone.
pub const KILL_WAIT: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerConfig {
    /// Container id: unique on the host, `[A-Za-z0-9_-]{1,128}`; also the
    /// runtime's id and the leaf cgroup's name.
    pub id: String,
    /// The process.
    pub process: ProcessConfig,
    /// Root file system.
    pub rootfs: RootfsSource,
    /// Mount the root read-only.
    pub readonly_rootfs: bool,
    /// CPU and memory limits of the container's cgroup.
    pub limits: CgroupLimits,
    /// Where the CRI log goes (kept after the container is removed).
    pub log_path: PathBuf,
    /// Run in a user namespace of this mapping ([`crate::idmap`]);
    /// `None`: container root is host root.
    pub idmap: Option<IdMap>,
    /// Capabilities, seccomp, `noNewPrivileges`, masked paths.
    pub confinement: Confinement,
    /// Host paths bound in (volumes).
    pub bind_mounts: Vec<BindMount>,
    /// Give the container a stdin that attached clients write to (with
    /// `process.terminal`, the terminal takes their input); without it
    /// stdin is `/dev/null`.
    pub stdin: bool,
}

/// The pod a container is created in.
#[derive(Debug, Clone, Copy)]
pub struct PodContext<'a> {
    /// The cgroup hierarchy.
    pub hierarchy: &'a Hierarchy,
    /// The pod's cgroup (below its resource pool).
    pub pod_cgroup: &'a Cgroup,
    /// The pod's shared namespaces.
    pub sandbox: &'a PodSandbox,
    /// How cgroups are named for the runtime.
    pub mapping: &'a CgroupMapping,
    /// The log writer program (`stratum-log-writer`).
    pub log_writer: &'a Path,
    /// When the container's log is rotated.
    pub log_rotation: LogRotation,
}

/// The pod's `/etc` files (see [`PodEtc`]) and then the container's own
/// bind mounts; one of its own at the same path replaces the pod's.
fn with_pod_etc(sandbox: &PodSandbox, config: &ContainerConfig) -> Vec<BindMount> {
    let mut mounts: Vec<BindMount> = PodEtc::of(sandbox.dir())
        .mounts(config.readonly_rootfs)
        .into_iter()
        .filter(|m| {
            !config
                .bind_mounts
                .iter()
                .any(|own| own.destination == m.destination)
        })
        .collect();
    mounts.extend(config.bind_mounts.iter().cloned());
    mounts
}

/// How often a stop looks whether an init that could not take SIGTERM
/// has set a handler for it.
const SIGTERM_RECHECK: Duration = Duration::from_millis(50);

/// Whether process `pid` has a handler for SIGTERM (`SigCgt` in its
/// status); `None` if it cannot be read (gone).
fn catches_sigterm(pid: u32) -> Option<bool> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())?;
    Some(mask & (1 << (libc::SIGTERM - 1)) != 0)
}

/// Why a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// Exit code 0.
    Completed,
    /// Non-zero exit code or a signal.
    Error,
    /// Killed by the OOM killer (its cgroup's `oom_kill` counter rose).
    OomKilled,
    /// The status went to another parent (adopted container).
    Unknown,
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitReport {
    /// What `waitid` said.
    pub exit: ProcessExit,
    /// Exit code, 128 + signal for signals; 137 for an OOM kill even when
    /// the status itself was unknown.
    pub exit_code: Option<i32>,
    /// The OOM killer killed a process of the container.
    pub oom_killed: bool,
    /// Summary.
    pub reason: ExitReason,
    /// When the exit was seen.
    pub finished_at: SystemTime,
    /// When it was started (if it was).
    pub started_at: Option<SystemTime>,
}

impl ExitReport {
    fn new(exit: ProcessExit, oom_killed: bool, started_at: Option<SystemTime>) -> ExitReport {
        let exit_code = match (exit.code(), oom_killed) {
            (None, true) => Some(128 + libc::SIGKILL),
            (code, _) => code,
        };
        let reason = if oom_killed {
            ExitReason::OomKilled
        } else {
            match exit_code {
                Some(0) => ExitReason::Completed,
                Some(_) => ExitReason::Error,
                None => ExitReason::Unknown,
            }
        };
        ExitReport {
            exit,
            exit_code,
            oom_killed,
            reason,
            finished_at: SystemTime::now(),
            started_at,
        }
    }

    /// The input of the restart decision (`restart::decide`).
    pub fn facts(&self, stop_requested: bool) -> ExitFacts {
        let ran_for = self
            .started_at
            .and_then(|s| self.finished_at.duration_since(s).ok())
            .unwrap_or_default();
        ExitFacts {
            exit_code: self.exit_code,
            oom_killed: self.oom_killed,
            stop_requested,
            ran_for,
        }
    }
}

/// Where the container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerStatus {
    /// Created, not started.
    Created,
    /// Started, not exited (as far as seen).
    Running,
    /// Exited.
    Exited,
}

/// What an agent restart needs to find the container again.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateFile {
    id: String,
    pid: u32,
    /// Clock ticks since boot (`/proc/<pid>/stat` field 22).
    start_time: u64,
    /// Path below the Stratum root (`Cgroup::path`).
    cgroup: PathBuf,
    cgroups_path: String,
    log_path: PathBuf,
    overlay: bool,
    rootfs: PathBuf,
    started_at_unix_ns: Option<u128>,
}

/// A created container.
#[derive(Debug)]
pub struct Container {
    id: String,
    dir: PathBuf,
    rootfs: Rootfs,
    cgroup: Cgroup,
    cgroups_path: String,
    mapping: CgroupMapping,
    pid: u32,
    /// `None` for an adopted container found already exited.
    watch: Option<ExitWatch>,
    log_path: PathBuf,
    started_at: Mutex<Option<SystemTime>>,
    stop_requested: AtomicBool,
    exit: OnceCell<ExitReport>,
}

impl Container {
    /// Creates the container in `dir` (its bundle; created if missing):
    /// see the module docs. The container is `Created`; its init waits for
    /// [`Container::start`]. Refused if the runtime already knows the id.
    pub async fn create(
        runtime: &OciRuntime,
        pod: PodContext<'_>,
        dir: &Path,
        config: &ContainerConfig,
    ) -> Result<Container> {
        oci::validate_id(&config.id)?;
        config.process.validate()?;
        // Both runtimes keep a container's state in `<root>/<id>/`: a stat
        // instead of a `state` command (a process spawn, ~20 ms). The check
        // matters: undoing a failed create deletes the id in the runtime.
        if runtime.state_root().join(&config.id).exists() {
            return Err(RuntimeError::invalid(
                "container id",
                config.id.as_str(),
                "already exists",
            ));
        }
        fs::create_dir_all(dir).map_err(RuntimeError::io(dir, "create container directory"))?;
        let rootfs = Rootfs::prepare(&config.rootfs, dir, config.idmap)?;
        let (cgroup, cgroups_path, pid) =
            match Container::prepare(runtime, pod, dir, config, &rootfs).await {
                Ok(parts) => parts,
                Err((e, cgroup)) => {
                    undo_create(runtime, &config.id, pod.mapping, cgroup.as_ref(), &rootfs).await;
                    return Err(e);
                }
            };
        let watch = match ExitWatch::open(pid) {
            Ok(w) => w,
            Err(e) => {
                let made = Some((cgroup, cgroups_path));
                undo_create(runtime, &config.id, pod.mapping, made.as_ref(), &rootfs).await;
                return Err(e);
            }
        };
        let start_time = identity::process_start_time(pid).unwrap_or(0);
        let container = Container {
            id: config.id.clone(),
            dir: dir.to_path_buf(),
            rootfs,
            cgroup,
            cgroups_path,
            mapping: pod.mapping.clone(),
            pid,
            watch: Some(watch),
            log_path: config.log_path.clone(),
            started_at: Mutex::new(None),
            stop_requested: AtomicBool::new(false),
            exit: OnceCell::new(),
        };
        container.write_state(start_time)?;
        Ok(container)
    }

    /// Steps 2–5 of create; on error also returns the cgroup to undo.
    #[allow(clippy::type_complexity)]
    async fn prepare(
        runtime: &OciRuntime,
        pod: PodContext<'_>,
        dir: &Path,
        config: &ContainerConfig,
        rootfs: &Rootfs,
    ) -> std::result::Result<(Cgroup, String, u32), (RuntimeError, Option<(Cgroup, String)>)> {
        let cgroup = pod
            .hierarchy
            .create_leaf(pod.pod_cgroup, &config.id)
            .map_err(|e| (e.into(), None))?;
        let cgroups_path = match pod.mapping.runtime_path(&cgroup) {
            Ok(p) => p,
            Err(e) => {
                let _ = cgroup.remove();
                return Err((e, None));
            }
        };
        let with_cgroup = |e: RuntimeError| (e, Some((cgroup.clone(), cgroups_path.clone())));
        cgroup
            .apply(&config.limits)
            .map_err(|e| with_cgroup(e.into()))?;
        let resources = OciResources::effective(&cgroup).map_err(with_cgroup)?;
        let spec = spec::build(&SpecConfig {
            process: config.process.clone(),
            rootfs: rootfs.path().to_path_buf(),
            readonly_rootfs: config.readonly_rootfs,
            hostname: Some(pod.sandbox.hostname().to_string()),
            namespaces: pod.sandbox.namespaces().clone(),
            shm: Some(pod.sandbox.shm_dir()),
            resources,
            cgroups_path: cgroups_path.clone(),
            idmap: config.idmap,
            confinement: config.confinement.clone(),
            bind_mounts: with_pod_etc(pod.sandbox, config),
        })
        .map_err(with_cgroup)?;
        spec::write_config(&spec, dir).map_err(with_cgroup)?;
        let attach = attach::bind(dir).map_err(with_cgroup)?;
        let pid_file = dir.join("init.pid");
        let spawn_writer = |source| {
            log_writer::spawn(
                pod.log_writer,
                &config.log_path,
                pod.log_rotation,
                source,
                Some(attach),
            )
        };
        if config.process.terminal {
            // The runtime makes the terminal; the writer then holds its
            // master (the init waits for `start`, so no output is lost).
            let master = runtime
                .create(&config.id, dir, &pid_file, ContainerStdio::Terminal)
                .await
                .map_err(with_cgroup)?
                .ok_or_else(|| {
                    with_cgroup(RuntimeError::invalid(
                        "container terminal",
                        config.id.as_str(),
                        "the runtime sent none",
                    ))
                })?;
            let source = WriterSource::Terminal {
                master,
                stdin: config.stdin,
            };
            spawn_writer(source).map_err(with_cgroup)?;
        } else {
            // The writer ends by itself once the container's output is
            // closed, so a failed create below leaves nothing of it behind.
            let stdio = spawn_writer(WriterSource::Pipes {
                stdin: config.stdin,
            })
            .map_err(with_cgroup)?;
            runtime
                .create(&config.id, dir, &pid_file, stdio)
                .await
                .map_err(with_cgroup)?;
        }
        let pid = oci::read_pid(&pid_file).ok_or_else(|| {
            with_cgroup(RuntimeError::invalid(
                "init pid file",
                pid_file.to_string_lossy(),
                "missing or not a pid",
            ))
        })?;
        Ok((cgroup, cgroups_path, pid))
    }

    /// Re-adopts a container an earlier agent created in `dir` (after an
    /// agent restart). A container whose init is gone (or was replaced by a
    /// stranger with the same pid) comes back already exited, with an
    /// unknown status refined by the OOM counter.
    pub async fn adopt(
        runtime: &OciRuntime,
        hierarchy: &Hierarchy,
        mapping: &CgroupMapping,
        dir: &Path,
    ) -> Result<Container> {
        let state_path = dir.join("state.json");
        let bytes = fs::read(&state_path).map_err(RuntimeError::io(&state_path, "read"))?;
        let state: StateFile = serde_json::from_slice(&bytes)
            .map_err(|e| RuntimeError::io(&state_path, "parse")(io::Error::other(e)))?;
        oci::validate_id(&state.id)?;
        let cgroup = hierarchy.open(&state.cgroup)?;
        let rootfs = if state.overlay {
            Rootfs::adopt(dir)
        } else {
            Rootfs::directory(&state.rootfs)?
        };
        let runtime_state = runtime.state(&state.id).await?;
        let alive = runtime_state.pid == Some(state.pid)
            && runtime_state.status != RuntimeStatus::Stopped
            && identity::process_start_time(state.pid).ok() == Some(state.start_time);
        let started_at = state
            .started_at_unix_ns
            .and_then(|ns| u64::try_from(ns).ok())
            .map(|ns| UNIX_EPOCH + Duration::from_nanos(ns));
        let exit = OnceCell::new();
        let watch = if alive {
            ExitWatch::open(state.pid).ok()
        } else {
            None
        };
        if watch.is_none() {
            let oom = cgroup.usage().map(|u| u.oom_killed()).unwrap_or(false);
            let _ = exit.set(ExitReport::new(ProcessExit::Unknown, oom, started_at));
        }
        Ok(Container {
            id: state.id,
            dir: dir.to_path_buf(),
            rootfs,
            cgroup,
            cgroups_path: state.cgroups_path,
            mapping: mapping.clone(),
            pid: state.pid,
            watch,
            log_path: state.log_path,
            started_at: Mutex::new(started_at),
            stop_requested: AtomicBool::new(false),
            exit,
        })
    }

    /// Starts the created container's process.
    pub async fn start(&self, runtime: &OciRuntime) -> Result<()> {
        if self.exit.initialized() {
            return Err(RuntimeError::WrongState {
                id: self.id.clone(),
                reason: "has exited; create a new one to run again",
            });
        }
        runtime.start(&self.id).await?;
        let now = SystemTime::now();
        *self.started_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
        let start_time = identity::process_start_time(self.pid).unwrap_or(0);
        self.write_state(start_time)
    }

    /// Waits for the container's init to end; the report is computed once.
    pub async fn wait(&self) -> Result<ExitReport> {
        let report = self
            .exit
            .get_or_try_init(|| async {
                let exit = match &self.watch {
                    Some(watch) => watch.wait().await?,
                    None => ProcessExit::Unknown,
                };
                let oom = match self.cgroup.usage() {
                    Ok(usage) => usage.oom_killed(),
                    Err(e) => {
                        tracing::warn!(container = %self.id, error = %e, "reading OOM counter");
                        false
                    }
                };
                let started = *self.started_at.lock().unwrap_or_else(|e| e.into_inner());
                Ok::<_, RuntimeError>(ExitReport::new(exit, oom, started))
            })
            .await?;
        Ok(*report)
    }

    /// The report if the container has exited (and was waited for).
    pub fn exit_report(&self) -> Option<ExitReport> {
        self.exit.get().copied()
    }

    /// Stops the container: SIGTERM, then SIGKILL after `grace`. Marks the
    /// stop as requested (no restart). Returns the exit report.
    ///
    /// A PID namespace's init gets a signal from outside only if it has a
    /// handler for it: a SIGTERM sent in the moment after start, before
    /// the program has set its handler (a shell about to exec it, the
    /// dynamic loader still at work), is dropped by the kernel. So when
    /// the init did not catch SIGTERM as it was sent but catches it later
    /// in the grace period, it is sent once more — the one signal it could
    /// not receive, not a second one (a program that catches SIGTERM
    /// between our look and the send gets two).
    pub async fn stop(&self, grace: Duration) -> Result<ExitReport> {
        self.stop_requested.store(true, Ordering::SeqCst);
        if let Some(report) = self.exit_report() {
            return Ok(report);
        }
        let caught_when_sent = catches_sigterm(self.pid);
        self.signal(libc::SIGTERM)?;
        let resend = async {
            if caught_when_sent != Some(false) {
                return std::future::pending::<Result<()>>().await;
            }
            while catches_sigterm(self.pid) == Some(false) {
                tokio::time::sleep(SIGTERM_RECHECK).await;
            }
            self.signal(libc::SIGTERM)?;
            std::future::pending::<Result<()>>().await
        };
        let waited = tokio::time::timeout(grace, async {
            tokio::select! {
                report = self.wait() => report,
                Err(e) = resend => Err(e),
            }
        });
        match waited.await {
            Ok(report) => report,
            Err(_) => {
                self.signal(libc::SIGKILL)?;
                tokio::time::timeout(KILL_WAIT, self.wait())
                    .await
                    .map_err(|_| RuntimeError::WrongState {
                        id: self.id.clone(),
                        reason: "still running after SIGKILL",
                    })?
            }
        }
    }

    /// Signals the init through its pidfd; `Ok(false)` if it is gone.
    pub fn signal(&self, signal: i32) -> Result<bool> {
        match &self.watch {
            Some(watch) => watch.signal(signal),
            None => Ok(false),
        }
    }

    /// Whether a stop was requested (for the restart decision).
    pub fn stop_requested(&self) -> bool {
        self.stop_requested.load(Ordering::SeqCst)
    }

    /// Runs a command in the running container (exec-sync).
    pub async fn exec_sync(
        &self,
        runtime: &OciRuntime,
        args: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput> {
        self.ensure_not_exited()?;
        let process = self.exec_process(args, false)?;
        runtime.exec(&self.id, &process, timeout).await
    }

    /// Starts a command in the running container and returns while it runs
    /// (interactive exec; see [`crate::exec`]): with `tty` on a terminal
    /// (`TERM=xterm` unless the container sets `TERM`, as containerd does;
    /// no initial size: the client's first resize sets it), else on pipes.
    pub async fn spawn_exec(
        &self,
        runtime: &OciRuntime,
        args: &[String],
        tty: bool,
    ) -> Result<ExecChild> {
        self.ensure_not_exited()?;
        let process = self.exec_process(args, tty)?;
        runtime.spawn_exec(&self.id, &process).await
    }

    fn ensure_not_exited(&self) -> Result<()> {
        if self.exit.initialized() {
            return Err(RuntimeError::WrongState {
                id: self.id.clone(),
                reason: "is not running",
            });
        }
        Ok(())
    }

    /// The container's own process spec (from its bundle's config.json)
    /// running `args` instead, with a terminal or without.
    fn exec_process(&self, args: &[String], tty: bool) -> Result<oci_spec::runtime::Process> {
        let path = self.dir.join("config.json");
        let spec = oci_spec::runtime::Spec::load(&path).map_err(|e| {
            RuntimeError::io(&path, "read the container's spec")(std::io::Error::other(e))
        })?;
        let mut process = spec.process().clone().ok_or_else(|| {
            RuntimeError::invalid("container spec", path.to_string_lossy(), "has no process")
        })?;
        process.set_args(Some(args.to_vec()));
        process.set_terminal(Some(tty));
        process.set_console_size(None);
        if tty {
            let mut env = process.env().clone().unwrap_or_default();
            if !env.iter().any(|e| e.starts_with("TERM=")) {
                env.push("TERM=xterm".to_string());
            }
            process.set_env(Some(env));
        }
        Ok(process)
    }

    /// Connects to the container's own stdio, served by its log writer
    /// (see [`crate::attach`]): its output from now on, and its stdin or
    /// terminal. An error once its output has ended.
    pub async fn attach(&self) -> Result<Attachment> {
        self.ensure_not_exited()?;
        Attachment::connect(&self.dir).await
    }

    /// Removes everything but the CRI log: kills the container if needed,
    /// deletes the runtime state and its cgroups (in every hierarchy),
    /// finishes the log, unmounts and deletes the rootfs and the directory.
    pub async fn remove(&self, runtime: &OciRuntime) -> Result<()> {
        self.stop_requested.store(true, Ordering::SeqCst);
        if self.exit_report().is_none() {
            let _ = self.signal(libc::SIGKILL);
            let _ = tokio::time::timeout(KILL_WAIT, self.wait()).await;
        }
        match runtime.delete(&self.id, true).await {
            Ok(()) => {}
            Err(e) if oci::is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
        if self.cgroup.exists() {
            self.cgroup.kill_all(KILL_WAIT)?;
        }
        self.mapping.prune(&self.cgroups_path)?;
        self.finish_logs().await?;
        self.rootfs.remove()?;
        let rootfs_inside = !self.rootfs.is_overlay() && self.rootfs.path().starts_with(&self.dir);
        if rootfs_inside {
            return Err(RuntimeError::invalid(
                "container directory",
                self.dir.to_string_lossy(),
                "holds the plain rootfs directory; not deleted",
            ));
        }
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RuntimeError::io(&self.dir, "remove container directory")(e)),
        }
    }

    /// Reads the CRI log; with `follow`, waits for more while this run's
    /// log writer still writes (the container's output is open).
    pub fn logs(&self, follow: bool) -> Result<LogFollower> {
        LogFollower::open(&self.log_path, follow)
    }

    /// Waits (at most 10 s) until the log writer has written everything
    /// the container wrote (after its exit).
    pub async fn finish_logs(&self) -> Result<()> {
        log_writer::wait_finished(&self.log_path, Duration::from_secs(10)).await
    }

    /// The container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The init's pid (host pid namespace).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The container's cgroup.
    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    /// Its `linux.cgroupsPath`.
    pub fn cgroups_path(&self) -> &str {
        &self.cgroups_path
    }

    /// The root file system.
    pub fn rootfs(&self) -> &Rootfs {
        &self.rootfs
    }

    /// The container's directory (bundle).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CRI log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Created, running or exited.
    pub fn status(&self) -> ContainerStatus {
        if self.exit.initialized() {
            ContainerStatus::Exited
        } else if self
            .started_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            ContainerStatus::Running
        } else {
            ContainerStatus::Created
        }
    }

    fn write_state(&self, start_time: u64) -> Result<()> {
        let started = *self.started_at.lock().unwrap_or_else(|e| e.into_inner());
        let state = StateFile {
            id: self.id.clone(),
            pid: self.pid,
            start_time,
            cgroup: self.cgroup.path().to_path_buf(),
            cgroups_path: self.cgroups_path.clone(),
            log_path: self.log_path.clone(),
            overlay: self.rootfs.is_overlay(),
            rootfs: self.rootfs.path().to_path_buf(),
            started_at_unix_ns: started
                .and_then(|s| s.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_nanos()),
        };
        let path = self.dir.join("state.json");
        let tmp = self.dir.join("state.json.tmp");
        let json = serde_json::to_vec(&state)
            .map_err(|e| RuntimeError::io(&path, "serialize")(io::Error::other(e)))?;
        fs::write(&tmp, json).map_err(RuntimeError::io(&tmp, "write"))?;
        fs::rename(&tmp, &path).map_err(RuntimeError::io(&path, "rename into place"))
    }
}

/// Undoes a failed create: runtime state, cgroups, rootfs (best effort;
/// the create error is what gets reported).
async fn undo_create(
    runtime: &OciRuntime,
    id: &str,
    mapping: &CgroupMapping,
    cgroup: Option<&(Cgroup, String)>,
    rootfs: &Rootfs,
) {
    let _ = runtime.delete(id, true).await;
    if let Some((cgroup, path)) = cgroup {
        if cgroup.exists() {
            let _ = cgroup.kill_all(KILL_WAIT);
        }
        let _ = mapping.prune(path);
    }
    let _ = rootfs.remove();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_container_exit_report_reasons() {
        let r = ExitReport::new(ProcessExit::Exited(0), false, None);
        assert_eq!((r.reason, r.exit_code), (ExitReason::Completed, Some(0)));
        let r = ExitReport::new(ProcessExit::Exited(2), false, None);
        assert_eq!((r.reason, r.exit_code), (ExitReason::Error, Some(2)));
        let r = ExitReport::new(ProcessExit::Signaled(9), true, None);
        assert_eq!((r.reason, r.exit_code), (ExitReason::OomKilled, Some(137)));
        let r = ExitReport::new(ProcessExit::Unknown, true, None);
        assert_eq!((r.reason, r.exit_code), (ExitReason::OomKilled, Some(137)));
        let r = ExitReport::new(ProcessExit::Unknown, false, None);
        assert_eq!((r.reason, r.exit_code), (ExitReason::Unknown, None));
    }

    #[test]
    fn runtime_container_facts_carry_run_time() {
        let started = SystemTime::now() - Duration::from_secs(30);
        let r = ExitReport::new(ProcessExit::Exited(1), false, Some(started));
        let facts = r.facts(false);
        assert!(facts.ran_for >= Duration::from_secs(30));
        assert_eq!(facts.exit_code, Some(1));
        assert!(r.facts(true).stop_requested);
    }
}
