//! Starting one `vmm` process for a VM: spawn it into the VM's leaf
//! cgroup, wait for its API socket, configure it through the API and start
//! the guest.
//!
//! - The child joins its cgroup between fork and exec
//!   ([`Cgroup::attach_command`]), so every page it touches is charged to
//!   the VM from its first instruction.
//! - It must outlive the agent (re-adoption after `kill -9` or an upgrade):
//!   it calls `setsid` before exec, so signals to the agent's process group
//!   or terminal never reach it, and no `PR_SET_PDEATHSIG` is set. Its
//!   stdin/stdout are /dev/null (no pipe to the agent that could break) and
//!   stderr goes to `vmm.stderr` in the run directory.
//! - In a jail ([`LaunchOptions::jail`], see [`crate::jail`]) the child
//!   is `stratum-jailer`, which starts vmm in its namespaces and prints
//!   its pid; the launch then holds vmm by a pidfd opened while the jailer
//!   still keeps it from being reaped, and configures it with the paths it
//!   sees inside (`/vm/kernel`, `/vm/disk0`, …). The jailer's own failure
//!   comes back like vmm's: its exit and its stderr.
//! - Configuration goes through the API rather than the command line so
//!   that each refusal comes back as vmm's own `fault_message` for the step
//!   that failed (machine-config, boot-source, a drive, a NIC, the start).
//! - On any failure the child is killed and reaped, its socket, console log
//!   and stderr file are removed (and the run directory if that empties
//!   it), and the error carries vmm's message: the fault, or the tail of
//!   its stderr when it exited. Nothing is left running.
//!
//! Blocking (up to the socket wait plus a few API timeouts); run it with
//! `spawn_blocking` from async code.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::api_client::{
    ApiClient, ApiError, Balloon, BootSource, Drive, MachineConfig, MemBackend, NetworkInterface,
    NetworkOverride, RateLimiter, SnapshotLoad, Vsock, VsockOverride, DEFAULT_API_TIMEOUT,
};
use super::jail::{self, JailConfig};
use super::process::{ExitInfo, ProcessIdentity, VmProcess};
use super::run_dir::{RunDir, MAX_SOCKET_PATH};
use super::tap::TapError;
use stratum_cgroup::{Cgroup, CgroupError};
use stratum_process::{pidfd, ProcessExit, Watched};

/// How much of `vmm.stderr` an error carries.
const STDERR_TAIL: u64 = 2048;

/// What to run: one VM's `vmm` configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmProcessSpec {
    /// The VM's id; vmm's `--id` (shown by `GET /`).
    pub id: String,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// `None`: vmm's default command line.
    pub cmdline: Option<String>,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Virtio-blk disks in order (vda, vdb, …).
    pub disks: Vec<DiskSpec>,
    /// Virtio-net interfaces in order (eth0, …).
    pub nics: Vec<NicSpec>,
    /// A virtio-vsock device with this guest CID (3 or more); its host
    /// socket is the run directory's [`RunDir::vsock_sock`].
    pub vsock_cid: Option<u32>,
    /// Start by restoring this snapshot instead of booting: the devices
    /// above must be the snapshot's, in its order (drives at the same
    /// indexes, so that in a jail each finds its file at `/vm/disk<N>`);
    /// the NICs' TAPs and the vsock socket are this VM's own.
    pub restore: Option<Restore>,
    /// A metadata service document (JSON, the agent's own file) that vmm
    /// serves at 169.254.169.254 through the first NIC.
    pub metadata: Option<PathBuf>,
    /// A virtio-balloon device, empty at boot, through which memory the
    /// guest does not use can be taken back while it runs.
    pub balloon: Option<Balloon>,
}

/// A snapshot to restore (`PUT /snapshot/load`), its memory mapped
/// privately so that every VM restored from it shares its pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restore {
    pub state: PathBuf,
    pub memory: PathBuf,
}

/// One disk. vmm makes the API drive id the serial the guest reads, so the
/// drive id is `serial` when given (1–64 of `[A-Za-z0-9_-]`, unique per
/// VM), else `disk<N>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub read_only: bool,
    pub serial: Option<String>,
    pub rate_limit: Option<RateLimiter>,
}

/// One NIC on an existing TAP device; interface ids are `net<N>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSpec {
    pub tap: String,
    /// `XX:XX:XX:XX:XX:XX`; `None`: vmm picks one.
    pub mac: Option<String>,
    pub rx_rate_limit: Option<RateLimiter>,
    pub tx_rate_limit: Option<RateLimiter>,
}

/// Timeouts of a launch, and the jail it runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchOptions {
    /// How long vmm may take to bind its API socket (in a jail: also how
    /// long the jailer may take to start it).
    pub socket_timeout: Duration,
    /// Per API request (InstanceStart allocates guest memory).
    pub api_timeout: Duration,
    /// Run vmm in a jail ([`crate::jail`]); `None`: as the caller, in the
    /// caller's namespaces (development and tests of the driver itself).
    pub jail: Option<JailConfig>,
}

/// How long vmm (and, jailed, the jailer before it) may take to come up
/// by default. A deadline against a hung process only — a launch that
/// fails ends as soon as the process exits — so it is set for a loaded
/// host, not a quiet one: with three guests booting on the nested test
/// host's one emulated CPU, a jailer did not start vmm within 5 s.
pub const DEFAULT_SOCKET_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for LaunchOptions {
    fn default() -> Self {
        LaunchOptions {
            socket_timeout: DEFAULT_SOCKET_TIMEOUT,
            api_timeout: DEFAULT_API_TIMEOUT,
            jail: None,
        }
    }
}

/// Why a VM could not be launched. Whatever the variant, no `vmm` process
/// of this launch is left running.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The run directory could not be prepared.
    #[error("run directory {path}: {op}: {source}")]
    RunDir {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// The socket path is longer than a Unix socket address allows.
    #[error("API socket path {0} is too long for a Unix socket (max {MAX_SOCKET_PATH} bytes)")]
    SocketPathTooLong(PathBuf),

    /// Another process already serves the API socket (a vmm of this VM?).
    #[error("API socket {0} is in use by a running process")]
    SocketInUse(PathBuf),

    /// The cgroup's `cgroup.procs` could not be opened for the child.
    #[error("cannot place vmm in its cgroup: {0}")]
    Cgroup(#[from] CgroupError),

    /// The binary could not be started (or the child failed to join its
    /// cgroup or session before exec).
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: io::Error,
    },

    /// vmm exited during the launch; `stderr` is the tail of its stderr.
    #[error("vmm exited during launch ({exit}): {stderr}")]
    Exited { exit: ExitInfo, stderr: String },

    /// vmm did not bind its API socket in time.
    #[error("vmm did not open its API socket within {0:?}")]
    SocketTimeout(Duration),

    /// vmm refused or failed a configuration step; see `ApiError::fault_message`.
    #[error("vmm {step}: {source}")]
    Api {
        step: String,
        #[source]
        source: ApiError,
    },

    /// A file the VM is given cannot be read by the jailed vmm's uid.
    #[error("{what} {path} is not readable by the VM's unprivileged uid (mode {mode:o}): make it world-readable")]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },

    /// A disk could not be handed to the jailed vmm's uid.
    #[error("disk {path}: {op}: {source}")]
    Disk {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// A TAP device could not be handed to the jailed vmm's uid.
    #[error(transparent)]
    Tap(#[from] TapError),

    /// The jailer did not start vmm in time.
    #[error("the jailer did not start vmm within {0:?}")]
    JailTimeout(Duration),

    /// Watching the child failed.
    #[error("vmm launch: {op}: {source}")]
    Process {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl LaunchError {
    /// vmm's own explanation (fault message or stderr tail), if it gave one.
    pub fn vmm_message(&self) -> Option<&str> {
        match self {
            LaunchError::Api { source, .. } => source.fault_message(),
            LaunchError::Exited { stderr, .. } => Some(stderr),
            _ => None,
        }
    }
}

/// Launches `vmm_binary` for `spec` in `cgroup` with default timeouts.
pub fn launch(
    vmm_binary: &Path,
    run_dir: &Path,
    spec: &VmProcessSpec,
    cgroup: &Cgroup,
) -> Result<VmProcess, LaunchError> {
    launch_with(vmm_binary, run_dir, spec, cgroup, &LaunchOptions::default())
}

/// [`launch`] with explicit timeouts and, optionally, a jail.
pub fn launch_with(
    vmm_binary: &Path,
    run_dir: &Path,
    spec: &VmProcessSpec,
    cgroup: &Cgroup,
    options: &LaunchOptions,
) -> Result<VmProcess, LaunchError> {
    let run_dir = RunDir::new(run_dir);
    prepare_run_dir(&run_dir)?;
    let spawned = match &options.jail {
        None => spawn(vmm_binary, &run_dir, spec, cgroup),
        Some(config) => spawn_jailed(config, vmm_binary, &run_dir, spec, cgroup, options),
    };
    let (spawned, api_spec) = match spawned {
        Ok(spawned) => spawned,
        Err(e) => {
            run_dir.clean_after_failure();
            return Err(e);
        }
    };
    let api = ApiClient::new(run_dir.api_sock()).with_timeout(options.api_timeout);
    match start(&spawned, &run_dir, &api, &api_spec, options) {
        Ok(()) => Ok(VmProcess::from_launch(
            spawned.identity,
            spawned.pidfd,
            spawned.watched,
            run_dir,
            api,
        )),
        Err(e) => {
            let e = explain(e, &spawned, &run_dir);
            kill_and_reap(&spawned);
            run_dir.clean_after_failure();
            Err(e)
        }
    }
}

/// A started vmm: named by a pidfd opened while its pid could not have
/// been reused.
struct Spawned {
    identity: ProcessIdentity,
    pidfd: OwnedFd,
    /// A jailed vmm: keeps the agent's orphan reaper off it.
    watched: Option<Watched>,
}

impl Spawned {
    /// `pid` is our unreaped child, or held as a zombie by the jailer.
    fn of(pid: u32, watched: Option<Watched>) -> Result<Spawned, LaunchError> {
        let process_err = |op| move |source| LaunchError::Process { op, source };
        let pidfd = pidfd::open(pid).map_err(process_err("pidfd_open"))?;
        let identity = ProcessIdentity::of(pid).map_err(process_err("read /proc/<pid>/stat"))?;
        Ok(Spawned {
            identity,
            pidfd,
            watched,
        })
    }

    /// Its exit, if it has exited (reaped when it is our child).
    fn exit(&self) -> Result<Option<ExitInfo>, LaunchError> {
        let ended = pidfd::wait_readable(self.pidfd.as_fd(), Duration::ZERO).map_err(|source| {
            LaunchError::Process {
                op: "poll pidfd",
                source,
            }
        })?;
        if !ended {
            return Ok(None);
        }
        let exit = pidfd::reap(self.pidfd.as_fd(), true)
            .map_err(|source| LaunchError::Process {
                op: "waitid",
                source,
            })?
            .unwrap_or(ProcessExit::Unknown);
        Ok(Some(ExitInfo::from(exit)))
    }
}

/// Creates the directory; refuses a live socket, removes a stale one.
fn prepare_run_dir(run_dir: &RunDir) -> Result<(), LaunchError> {
    let dir_err = |op| {
        let path = run_dir.path().to_path_buf();
        move |source| LaunchError::RunDir { path, op, source }
    };
    let socket = run_dir.api_sock();
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(LaunchError::SocketPathTooLong(socket));
    }
    std::fs::create_dir_all(run_dir.path()).map_err(dir_err("create"))?;
    if UnixStream::connect(&socket).is_ok() {
        return Err(LaunchError::SocketInUse(socket));
    }
    // A vmm killed with SIGKILL leaves its sockets; vmm refuses to bind
    // over a file.
    for stale in [socket, run_dir.vsock_sock()] {
        match std::fs::remove_file(&stale) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(dir_err("remove stale socket")(e))
            }
            _ => {}
        }
    }
    Ok(())
}

/// How large a metadata document and the request carrying it may be: the
/// seed's user-data and meta-data, JSON-escaped, with room.
const METADATA_LIMIT: &str = "262144";

/// vmm's command line: API socket, id, console log, no console input;
/// with a metadata service, the limits its document needs.
pub(crate) fn vmm_args(spec: &VmProcessSpec, api_sock: &Path, console: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--api-sock".into(),
        api_sock.into(),
        "--id".into(),
        spec.id.as_str().into(),
        "--console".into(),
        console.into(),
        "--no-console-input".into(),
    ];
    if spec.metadata.is_some() {
        for flag in ["--mmds-size-limit", "--http-api-max-payload-size"] {
            args.extend([flag.into(), METADATA_LIMIT.into()]);
        }
    }
    args
}

/// `program` in the VM's cgroup and a session of its own, stdin and
/// stdout /dev/null, stderr to `vmm.stderr`.
fn command(program: &Path, run_dir: &RunDir, cgroup: &Cgroup) -> Result<Command, LaunchError> {
    let stderr_path = run_dir.stderr_log();
    let stderr = std::fs::File::create(&stderr_path).map_err(|source| LaunchError::RunDir {
        path: stderr_path,
        op: "create vmm.stderr",
        source,
    })?;
    let mut cmd = Command::new(program);
    // vmm's test-only seccomp switch (a thread's forbidden call, or
    // violations logged instead of fatal) never comes from the agent's
    // own environment.
    cmd.env_remove("STRATUM_VMM_SECCOMP_TEST")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    cgroup.attach_command(&mut cmd)?;
    // SAFETY: setsid(2) is async-signal-safe and touches no memory; it runs
    // in the forked child after the cgroup hook.
    unsafe {
        cmd.pre_exec(|| match libc::setsid() {
            -1 => Err(io::Error::last_os_error()),
            _ => Ok(()),
        });
    }
    Ok(cmd)
}

fn spawn_error(binary: &Path) -> impl FnOnce(io::Error) -> LaunchError + '_ {
    move |source| LaunchError::Spawn {
        binary: binary.to_path_buf(),
        source,
    }
}

/// vmm as our own child; it sees the spec's paths as given.
fn spawn(
    binary: &Path,
    run_dir: &RunDir,
    spec: &VmProcessSpec,
    cgroup: &Cgroup,
) -> Result<(Spawned, VmProcessSpec), LaunchError> {
    let mut cmd = command(binary, run_dir, cgroup)?;
    cmd.args(vmm_args(spec, &run_dir.api_sock(), &run_dir.console_log()));
    let mut child = cmd.spawn().map_err(spawn_error(binary))?;
    // The child is unreaped until we wait for it, so its pid is still its.
    // Dropping `Child` neither kills nor reaps; the pidfd does both.
    match Spawned::of(child.id(), None) {
        Ok(spawned) => Ok((spawned, spec.clone())),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// vmm through the jailer ([`crate::jail`]); it sees the spec's files at
/// their jail paths, which the returned spec names.
fn spawn_jailed(
    config: &JailConfig,
    vmm_binary: &Path,
    run_dir: &RunDir,
    spec: &VmProcessSpec,
    cgroup: &Cgroup,
    options: &LaunchOptions,
) -> Result<(Spawned, VmProcessSpec), LaunchError> {
    let (jail_spec, jailed) = jail::prepare(config, vmm_binary, run_dir, spec)?;
    let mut cmd = command(&config.jailer, run_dir, cgroup)?;
    cmd.args(jail_spec.to_args())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut jailer = cmd.spawn().map_err(spawn_error(&config.jailer))?;
    let pid = match jail::read_pid(&mut jailer, options.socket_timeout) {
        Ok(Some(pid)) => pid,
        Ok(None) => {
            // It exited without a pid: the jail could not be built.
            let status = jailer.wait().map_err(|source| LaunchError::Process {
                op: "wait for the jailer",
                source,
            })?;
            return Err(exited(ExitInfo::from(status), run_dir));
        }
        Err(e) => {
            let _ = jailer.kill();
            let _ = jailer.wait();
            return Err(e);
        }
    };
    // Registered before the jailer exits and the vmm becomes our child
    // (the agent is a subreaper), so no orphan reaper takes its status.
    let spawned = Spawned::of(pid, Some(Watched::new(pid)));
    // Closing its stdin lets the jailer exit; it has nothing more to say.
    drop(jailer.stdin.take());
    let _ = jailer.wait();
    Ok((spawned?, jailed))
}

/// Everything after the spawn: socket, configuration, start.
fn start(
    spawned: &Spawned,
    run_dir: &RunDir,
    api: &ApiClient,
    spec: &VmProcessSpec,
    options: &LaunchOptions,
) -> Result<(), LaunchError> {
    wait_for_socket(spawned, run_dir, options.socket_timeout)?;
    let vsock_uds = match &options.jail {
        None => run_dir.vsock_sock(),
        Some(_) => jail::in_jail_run(&run_dir.vsock_sock()),
    };
    match &spec.restore {
        Some(restore) => {
            // The snapshot has the service's configuration, not its data:
            // this VM's own document goes in before the load.
            if let Some(path) = &spec.metadata {
                let document = read_metadata(path)?;
                step(api, "mmds", |a| a.put_mmds(&document))?;
            }
            step(api, "snapshot load", |a| {
                a.load_snapshot(&restore_body(spec, restore, &vsock_uds))
            })
        }
        None => {
            configure(api, spec, &vsock_uds)?;
            step(api, "InstanceStart", ApiClient::instance_start)
        }
    }
}

/// The load of `restore`, resumed at once, on this VM's TAPs and vsock
/// socket.
fn restore_body(spec: &VmProcessSpec, restore: &Restore, vsock_uds: &Path) -> SnapshotLoad {
    SnapshotLoad {
        snapshot_path: restore.state.clone(),
        mem_backend: MemBackend::file(&restore.memory),
        resume_vm: true,
        network_overrides: nics(spec)
            .into_iter()
            .map(|nic| NetworkOverride {
                iface_id: nic.iface_id,
                host_dev_name: nic.host_dev_name,
            })
            .collect(),
        vsock_override: spec.vsock_cid.map(|_| VsockOverride {
            uds_path: vsock_uds.to_path_buf(),
        }),
    }
}

/// Polls until the socket accepts a connection, vmm exits, or time runs out.
fn wait_for_socket(
    spawned: &Spawned,
    run_dir: &RunDir,
    timeout: Duration,
) -> Result<(), LaunchError> {
    let deadline = Instant::now() + timeout;
    let socket = run_dir.api_sock();
    loop {
        if UnixStream::connect(&socket).is_ok() {
            return Ok(());
        }
        if let Some(exit) = spawned.exit()? {
            return Err(exited(exit, run_dir));
        }
        if Instant::now() >= deadline {
            return Err(LaunchError::SocketTimeout(timeout));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Configures vmm over its API; `vsock_uds` is the vsock socket's path as
/// vmm sees it.
fn configure(api: &ApiClient, spec: &VmProcessSpec, vsock_uds: &Path) -> Result<(), LaunchError> {
    let machine = MachineConfig {
        vcpu_count: spec.vcpus,
        mem_size_mib: spec.memory_mib,
    };
    step(api, "machine-config", |a| a.put_machine_config(&machine))?;
    let boot = BootSource {
        kernel_image_path: spec.kernel.clone(),
        initrd_path: spec.initrd.clone(),
        boot_args: spec.cmdline.clone(),
    };
    step(api, "boot-source", |a| a.put_boot_source(&boot))?;
    for drive in drives(spec) {
        step(api, &format!("drive {}", drive.drive_id), |a| {
            a.put_drive(&drive)
        })?;
    }
    for nic in nics(spec) {
        step(api, &format!("network interface {}", nic.iface_id), |a| {
            a.put_network_interface(&nic)
        })?;
    }
    if let Some(path) = &spec.metadata {
        let document = read_metadata(path)?;
        step(api, "mmds config", |a| a.put_mmds_config("net0"))?;
        step(api, "mmds", |a| a.put_mmds(&document))?;
    }
    if let Some(guest_cid) = spec.vsock_cid {
        let vsock = Vsock {
            guest_cid,
            uds_path: vsock_uds.to_path_buf(),
        };
        step(api, "vsock", |a| a.put_vsock(&vsock))?;
    }
    if let Some(balloon) = &spec.balloon {
        step(api, "balloon", |a| a.put_balloon(balloon))?;
    }
    Ok(())
}

/// The metadata document the agent wrote beside the VM's seed.
fn read_metadata(path: &Path) -> Result<serde_json::Value, LaunchError> {
    let bad = |source| LaunchError::RunDir {
        path: path.to_path_buf(),
        op: "read the metadata document",
        source,
    };
    let text = std::fs::read(path).map_err(bad)?;
    serde_json::from_slice(&text).map_err(|e| bad(io::Error::other(e)))
}

/// The API drive bodies: ids from the serials, else `disk<N>`; no root
/// device (the guest's command line names its root itself).
pub fn drives(spec: &VmProcessSpec) -> Vec<Drive> {
    let drive = |(i, disk): (usize, &DiskSpec)| Drive {
        drive_id: disk.serial.clone().unwrap_or_else(|| format!("disk{i}")),
        path_on_host: disk.path.clone(),
        is_root_device: false,
        is_read_only: disk.read_only,
        rate_limiter: disk.rate_limit,
    };
    spec.disks.iter().enumerate().map(drive).collect()
}

/// The API network interface bodies, ids `net<N>`.
pub fn nics(spec: &VmProcessSpec) -> Vec<NetworkInterface> {
    let nic = |(i, nic): (usize, &NicSpec)| NetworkInterface {
        iface_id: format!("net{i}"),
        host_dev_name: nic.tap.clone(),
        guest_mac: nic.mac.clone(),
        rx_rate_limiter: nic.rx_rate_limit,
        tx_rate_limiter: nic.tx_rate_limit,
    };
    spec.nics.iter().enumerate().map(nic).collect()
}

fn step(
    api: &ApiClient,
    name: &str,
    call: impl FnOnce(&ApiClient) -> Result<(), ApiError>,
) -> Result<(), LaunchError> {
    call(api).map_err(|source| LaunchError::Api {
        step: name.to_string(),
        source,
    })
}

/// An API error that is really "vmm died" becomes `Exited` with its stderr.
fn explain(error: LaunchError, spawned: &Spawned, run_dir: &RunDir) -> LaunchError {
    let LaunchError::Api { source, .. } = &error else {
        return error;
    };
    if source.fault_message().is_some() {
        return error;
    }
    // Connection errors: give a dying vmm a moment to finish exiting.
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        if let Ok(Some(exit)) = spawned.exit() {
            return exited(exit, run_dir);
        }
        thread::sleep(Duration::from_millis(10));
    }
    error
}

fn exited(exit: ExitInfo, run_dir: &RunDir) -> LaunchError {
    LaunchError::Exited {
        exit,
        stderr: stderr_tail(&run_dir.stderr_log()),
    }
}

/// The last few lines of vmm's stderr, trimmed (empty if unreadable).
fn stderr_tail(path: &Path) -> String {
    crate::run_dir::read_tail(path, STDERR_TAIL)
        .map(|tail| String::from_utf8_lossy(&tail).trim().to_string())
        .unwrap_or_default()
}

fn kill_and_reap(spawned: &Spawned) {
    // Errors mean it is already gone (and maybe already reaped).
    let fd = spawned.pidfd.as_fd();
    let _ = pidfd::send_signal(fd, libc::SIGKILL);
    if pidfd::wait_readable(fd, Duration::from_secs(5)).unwrap_or(false) {
        let _ = pidfd::reap(fd, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(disks: Vec<DiskSpec>, nics: Vec<NicSpec>) -> VmProcessSpec {
        VmProcessSpec {
            id: "t".into(),
            kernel: "k".into(),
            initrd: None,
            cmdline: None,
            vcpus: 1,
            memory_mib: 64,
            disks,
            nics,
            vsock_cid: None,
            restore: None,
            metadata: None,
            balloon: None,
        }
    }

    #[test]
    fn drive_ids_are_serials_or_numbered() {
        let disk = |serial: Option<&str>| DiskSpec {
            path: "d".into(),
            read_only: true,
            serial: serial.map(str::to_string),
            rate_limit: None,
        };
        let drives = drives(&spec(
            vec![disk(None), disk(Some("data")), disk(None)],
            vec![],
        ));
        let ids: Vec<_> = drives.iter().map(|d| d.drive_id.as_str()).collect();
        assert_eq!(ids, ["disk0", "data", "disk2"]);
        assert!(drives.iter().all(|d| !d.is_root_device && d.is_read_only));
    }

    #[test]
    fn rate_limits_reach_the_api_bodies_as_firecracker_spells_them() {
        let limit = RateLimiter {
            bandwidth: Some(crate::TokenBucket {
                size: 1 << 20,
                refill_time: 1000,
                one_time_burst: 0,
            }),
            ops: None,
        };
        let disk = DiskSpec {
            path: "d".into(),
            read_only: false,
            serial: None,
            rate_limit: Some(limit),
        };
        let body = serde_json::to_value(&drives(&spec(vec![disk], vec![]))[0]).unwrap();
        assert_eq!(
            body["rate_limiter"],
            serde_json::json!({"bandwidth": {"size": 1048576, "refill_time": 1000}})
        );
        let nic = NicSpec {
            tap: "tap0".into(),
            mac: None,
            rx_rate_limit: None,
            tx_rate_limit: Some(limit),
        };
        let body = serde_json::to_value(&nics(&spec(vec![], vec![nic]))[0]).unwrap();
        assert!(body.get("rx_rate_limiter").is_none(), "{body}");
        assert_eq!(body["tx_rate_limiter"]["bandwidth"]["size"], 1048576);
    }

    #[test]
    fn nic_ids_are_numbered() {
        let nic = NicSpec {
            tap: "tap0".into(),
            mac: None,
            rx_rate_limit: None,
            tx_rate_limit: None,
        };
        let ids: Vec<_> = nics(&spec(vec![], vec![nic.clone(), nic]))
            .into_iter()
            .map(|n| n.iface_id)
            .collect();
        assert_eq!(ids, ["net0", "net1"]);
    }
}
