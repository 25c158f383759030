//! `vmm`: boot one Linux VM on KVM.
//!
//! Two ways to say what to boot: `--kernel` and friends, our own; or
//! Firecracker's, where a client configures the VM and starts it over
//! Firecracker's HTTP API on `--api-sock` (by default
//! /run/firecracker.socket), and/or `--config-file` boots it from a file
//! (the API still serving unless `--no-api`). Firecracker's launch flags
//! are taken with Firecracker's meaning, so its launchers can start us.
//!
//! Exit status: 0 when the guest resets or powers off, 1 when the VM cannot
//! be built or fails while running, 2 for command-line errors.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};

use clap::Parser;
use vmm::api::controller::{error_chain, DEFAULT_INSTANCE_ID, FIRECRACKER_API_VERSION};
use vmm::api::http::DEFAULT_MAX_BODY_SIZE;
use vmm::api::{ApiServer, Controller};
use vmm::config::{ConsoleOutput, DEFAULT_CMDLINE};
use vmm::devices::legacy::console_log::{DEFAULT_MAX_BYTES, MIN_MAX_BYTES};
use vmm::vmm_config::config_file::ConfigFile;
use vmm::vmm_config::logger::{Level, LoggerConfig};
use vmm::vmm_config::metrics::{MetricsConfig, StartupTimes};
use vmm::{vmm_log, RunningVm, VmConfig, VmEvent};

/// The options that describe a VM on the command line. They conflict with
/// --config-file and --api-sock, which describe it themselves. (`requires =
/// "kernel"` on each is not enough: clap lets them through once --kernel's
/// own `required_unless_present_any` is satisfied.)
const KERNEL_ARGS: [&str; 10] = [
    "kernel", "initrd", "cmdline", "vcpus", "memory", "entropy", "drive", "net", "vsock", "balloon",
];

#[derive(Parser, Debug)]
#[command(
    name = "vmm",
    disable_version_flag = true,
    about = "Boot a Linux VM on KVM (one process per VM)"
)]
struct Cli {
    /// Print the version, Firecracker's way first (`Firecracker vX.Y.Z`:
    /// the release whose API this follows), then ours.
    #[arg(short = 'V', long)]
    version: bool,
    /// Firecracker's: print the snapshot format version this vmm writes.
    #[arg(long)]
    snapshot_version: bool,
    /// Firecracker's: print the format version of this snapshot state file.
    #[arg(long, value_name = "PATH")]
    describe_snapshot: Option<PathBuf>,
    /// Kernel image: an ELF vmlinux (PVH entry preferred) or a bzImage.
    /// Without it the VM is described through Firecracker's API or
    /// --config-file.
    #[arg(long, conflicts_with_all = ["config_file", "api_sock", "no_api"])]
    kernel: Option<PathBuf>,
    /// Initial ramdisk (cpio archive, optionally compressed).
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    // The next three have no clap default: clap does not enforce
    // `requires` on arguments that have one, and these only make sense
    // with --kernel. Their defaults are applied in `run_from_command_line`.
    /// Kernel command line [default: console=ttyS0 reboot=k panic=1 pci=off
    /// i8042.noaux i8042.nomux i8042.dumbkbd].
    #[arg(long, requires = "kernel")]
    cmdline: Option<String>,
    /// Number of vCPUs [default: 1].
    #[arg(long, requires = "kernel")]
    vcpus: Option<u16>,
    /// Guest memory in MiB [default: 256].
    #[arg(long, requires = "kernel")]
    memory: Option<u64>,
    /// Back guest memory with 2 MiB pages of the host's hugetlbfs pool,
    /// reserved beforehand (/proc/sys/vm/nr_hugepages), as Firecracker's
    /// `huge_pages: "2M"`; the memory must be a whole number of them.
    #[arg(long, requires = "kernel")]
    huge_pages: bool,
    /// Give the guest a virtio-rng device fed by the host's getrandom.
    #[arg(long, requires = "kernel")]
    entropy: bool,
    /// A virtio-blk drive backed by a raw image (repeatable; vda, vdb, ...
    /// in order).
    #[arg(long, requires = "kernel", value_name = "path=PATH[,id=ID][,ro][,serial=S]", value_parser = vmm::config::DriveConfig::parse_cli)]
    drive: Vec<vmm::config::DriveConfig>,
    /// A virtio-net interface on an existing host TAP device (repeatable).
    #[arg(long, requires = "kernel", value_name = "tap=NAME[,id=ID][,mac=MAC]", value_parser = vmm::config::NetConfig::parse_cli)]
    net: Vec<vmm::config::NetConfig>,
    /// A virtio-vsock device: guest CID and the host Unix socket
    /// (hybrid vsock: host-initiated streams connect to PATH and send
    /// `CONNECT <port>`; guest connections to port P go to PATH_P).
    #[arg(long, requires = "kernel", value_name = "cid=N,uds=PATH", value_parser = vmm::config::VsockConfig::parse_cli)]
    vsock: Option<vmm::config::VsockConfig>,
    /// A virtio-balloon device asking the guest for N MiB back from the
    /// start (fixed: only the API changes a target); `deflate_on_oom` lets
    /// the guest take pages back rather than OOM-kill; `stats=S` offers
    /// the statistics queue, polled every S seconds (only the API reads
    /// what it gets).
    #[arg(long, requires = "kernel", value_name = "amount_mib=N[,deflate_on_oom][,stats=S]", value_parser = vmm::config::BalloonConfig::parse_cli)]
    balloon: Option<vmm::config::BalloonConfig>,
    /// Boot the VM described by this Firecracker config file (JSON).
    #[arg(long, value_name = "PATH", conflicts_with_all = KERNEL_ARGS)]
    config_file: Option<PathBuf>,
    /// Serve the Firecracker-compatible control API on this Unix socket
    /// [default: /run/firecracker.socket, unless --kernel or --no-api].
    #[arg(long, value_name = "PATH", conflicts_with_all = KERNEL_ARGS)]
    api_sock: Option<PathBuf>,
    /// Firecracker's: boot from --config-file without serving the API.
    #[arg(long, requires = "config_file", conflicts_with = "api_sock")]
    no_api: bool,
    /// Firecracker's: the largest API request body, in bytes; a larger one
    /// is answered 400.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_BODY_SIZE)]
    http_api_max_payload_size: usize,
    /// Firecracker's: the largest metadata (MMDS) document, serialised, in
    /// bytes; a PUT or PATCH /mmds past it is answered 413
    /// [default: --http-api-max-payload-size].
    #[arg(long, value_name = "BYTES", conflicts_with_all = KERNEL_ARGS)]
    mmds_size_limit: Option<usize>,
    /// Firecracker's: a JSON file to fill the metadata (MMDS) store with
    /// before anything is configured.
    #[arg(long, value_name = "PATH", conflicts_with_all = KERNEL_ARGS)]
    metadata: Option<PathBuf>,
    /// Instance id reported by the API and in log lines.
    #[arg(long, default_value = DEFAULT_INSTANCE_ID, value_parser = parse_id)]
    id: String,
    /// Write the serial console to this file instead of stdout.
    #[arg(long, value_name = "PATH")]
    console: Option<PathBuf>,
    /// Largest size of the console file: past it the file becomes
    /// PATH.1 (replacing the older one) and a new PATH starts.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_BYTES,
          value_parser = clap::value_parser!(u64).range(MIN_MAX_BYTES..))]
    console_max_bytes: u64,
    /// Do not forward stdin to the guest's console.
    #[arg(long)]
    no_console_input: bool,
    /// KVM device node.
    #[arg(long, default_value = "/dev/kvm", value_name = "PATH")]
    kvm_device: PathBuf,
    /// Run without seccomp filters. For debugging only: by default every
    /// thread confines itself to the system calls it needs, and a call
    /// outside that list kills vmm (SIGSYS). Applies however the VM is
    /// described (command line, --config-file, API).
    #[arg(long)]
    no_seccomp: bool,
    /// Firecracker's: replace the built-in seccomp filters of the thread
    /// kinds this file names (seccompiler's JSON: `vmm`, `api` and `vcpu`
    /// at least; our device workers keep theirs unless named).
    #[arg(long, value_name = "PATH", conflicts_with = "no_seccomp")]
    seccomp_filter: Option<PathBuf>,
    /// Firecracker's: the VMM's log lines go to this file or named pipe
    /// from the start, as `PUT /logger` would send them.
    #[arg(long, value_name = "PATH")]
    log_path: Option<PathBuf>,
    /// Firecracker's: the log level (Error, Warn, Info, Debug, Trace, Off;
    /// any case) [default: Info].
    #[arg(long, value_name = "LEVEL", value_parser = parse_level)]
    level: Option<Level>,
    /// Firecracker's: print each line's level.
    #[arg(long)]
    show_level: bool,
    /// Firecracker's: print each line's source file and line.
    #[arg(long)]
    show_log_origin: bool,
    /// Firecracker's: log only lines from modules starting with this.
    #[arg(long, value_name = "MODULE")]
    module: Option<String>,
    /// Firecracker's: metrics go to this file or named pipe from the
    /// start, as `PUT /metrics` would send them (written on FlushMetrics).
    #[arg(long, value_name = "PATH", conflicts_with = "kernel")]
    metrics_path: Option<PathBuf>,
    /// Firecracker's: the boot timer answers at Firecracker's address as
    /// well as ours, so a Firecracker guest's write of 123 there logs
    /// `Guest-boot-time = ...` (ours is always on, for our own guests).
    #[arg(long)]
    boot_timer: bool,
    /// Firecracker's (the jailer passes it): the launcher's monotonic
    /// clock at launch, in µs; the `api_server.process_startup_time_us`
    /// metric is the time from it until the API serves.
    #[arg(long, value_name = "US")]
    start_time_us: Option<u64>,
    /// Firecracker's (the jailer passes it): the process's CPU clock at
    /// launch, in µs, for `api_server.process_startup_time_cpu_us`.
    #[arg(long, value_name = "US")]
    start_time_cpu_us: Option<u64>,
    /// Firecracker's (the jailer passes it): CPU time the launcher spent
    /// before exec, in µs, added to the startup CPU time.
    #[arg(long, value_name = "US")]
    parent_cpu_time_us: Option<u64>,
}

/// A log level as Firecracker's `--level` takes it.
fn parse_level(text: &str) -> Result<Level, String> {
    serde_json::from_value(serde_json::Value::String(text.to_string())).map_err(|e| e.to_string())
}

/// Firecracker's rule for instance ids: 1 to 64 letters, digits or dashes.
fn parse_id(id: &str) -> Result<String, String> {
    let valid = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if valid {
        Ok(id.to_string())
    } else {
        Err("an id is 1 to 64 letters, digits or dashes".into())
    }
}

/// Firecracker's API socket when `--api-sock` is not given.
const DEFAULT_API_SOCK: &str = "/run/firecracker.socket";

impl Cli {
    /// Where the API is served: nowhere with `--no-api` (or `--kernel`,
    /// which never reaches here), else `--api-sock` or Firecracker's default.
    fn api_socket(&self) -> Option<PathBuf> {
        if self.no_api {
            return None;
        }
        Some(
            self.api_sock
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_API_SOCK)),
        )
    }

    /// The logger the command line asks for, if any of its flags is given.
    fn logger(&self) -> Option<LoggerConfig> {
        let asked = self.log_path.is_some()
            || self.level.is_some()
            || self.show_level
            || self.show_log_origin
            || self.module.is_some();
        asked.then(|| LoggerConfig {
            log_path: self.log_path.clone(),
            level: self.level,
            show_level: Some(self.show_level),
            show_log_origin: Some(self.show_log_origin),
            module: self.module.clone(),
        })
    }

    /// How long the process took from its launch (as the launcher's
    /// flags say) to now; zero for what was not given.
    fn startup_times(&self) -> StartupTimes {
        let since = |start: Option<u64>, clock| {
            start.map_or(0, |start| clock_us(clock).saturating_sub(start))
        };
        let cpu = since(self.start_time_cpu_us, libc::CLOCK_PROCESS_CPUTIME_ID);
        StartupTimes {
            process_startup_time_us: since(self.start_time_us, libc::CLOCK_MONOTONIC),
            process_startup_time_cpu_us: match self.start_time_cpu_us {
                Some(_) => cpu.saturating_add(self.parent_cpu_time_us.unwrap_or(0)),
                None => 0,
            },
        }
    }

    /// What the command line says whichever way the VM is described: where
    /// the console goes and which KVM device to use.
    fn base_config(&self) -> VmConfig {
        VmConfig {
            console: self
                .console
                .clone()
                .map_or(ConsoleOutput::Stdout, ConsoleOutput::File),
            console_max_bytes: self.console_max_bytes,
            console_input: !self.no_console_input,
            kvm_device: self.kvm_device.clone(),
            boot_timer: self.boot_timer,
            ..VmConfig::default()
        }
    }
}

/// Fixes glibc's limit on malloc arenas now, at glibc's default (8 per
/// CPU). Otherwise glibc works it out the first time a thread needs a new
/// arena, which may be under a seccomp filter: it then reads
/// /sys/devices/system/cpu/online, a call no thread's filter admits.
fn fix_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let arenas = libc::c_int::try_from(cpus.saturating_mul(8)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets a malloc parameter; no thread has
        // started yet.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
    }
}

/// `clock`'s time in µs.
fn clock_us(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `now`.
    unsafe { libc::clock_gettime(clock, &mut now) };
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000)
}

/// Command-line defaults (the API's follow Firecracker: 1 vCPU, 128 MiB).
const DEFAULT_VCPUS: u16 = 1;
const DEFAULT_MEMORY_MIB: u64 = 256;

fn report(error: &dyn std::error::Error) {
    eprintln!("vmm: error: {}", error_chain(error));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.version {
        // Firecracker's two lines first: launchers (Kata's) read the
        // second word of the first.
        println!(
            "Firecracker v{FIRECRACKER_API_VERSION}\n\nvmm {} (Stratum)",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    if cli.snapshot_version {
        println!("v{}", vmm::snapshot::format::FORMAT_VERSION);
        return ExitCode::SUCCESS;
    }
    if let Some(path) = &cli.describe_snapshot {
        return describe_snapshot(path);
    }
    fix_malloc_arenas();
    if let Err(error) = vmm::seccomp::configure(!cli.no_seccomp, cli.seccomp_filter.as_deref()) {
        report(&error);
        return ExitCode::from(2);
    }
    match cli.kernel.clone() {
        Some(kernel) => run_from_command_line(kernel, cli),
        None => run_controlled(&cli),
    }
}

/// Prints the format version of the snapshot state file at `path`, as
/// `--describe-snapshot` does in Firecracker (`v<N>`); only its header is
/// read.
fn describe_snapshot(path: &Path) -> ExitCode {
    let version = vmm::image_file::open(path, false)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))
        .and_then(|mut file| {
            vmm::snapshot::format::version(&mut file)
                .map_err(|e| format!("{}: {e}", path.display()))
        });
    match version {
        Ok(version) => {
            println!("v{version}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("vmm: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run_from_command_line(kernel: PathBuf, cli: Cli) -> ExitCode {
    if let Some(logger) = cli.logger() {
        vmm::vmm_config::logger::set_instance_id(&cli.id);
        if let Err(error) = vmm::vmm_config::logger::configure(&logger) {
            report(&error);
            return ExitCode::FAILURE;
        }
    }
    let config = VmConfig {
        kernel,
        initrd: cli.initrd.clone(),
        cmdline: cli
            .cmdline
            .clone()
            .unwrap_or_else(|| DEFAULT_CMDLINE.into()),
        vcpus: cli.vcpus.unwrap_or(DEFAULT_VCPUS),
        memory_mib: cli.memory.unwrap_or(DEFAULT_MEMORY_MIB),
        entropy: cli.entropy,
        drives: vmm::config::name_drives(cli.drive.clone()),
        nics: vmm::config::name_nics(cli.net.clone()),
        vsock: cli.vsock.clone(),
        balloon: cli.balloon,
        huge_pages: cli.huge_pages,
        ..cli.base_config()
    };
    match vmm::build_and_start(&config) {
        Ok(vm) => wait(vm),
        Err(error) => {
            report(&error);
            ExitCode::FAILURE
        }
    }
}

/// Removes the API socket when the process ends, so the next VMM can bind
/// the same path.
struct SocketFile<'a>(&'a Path);

impl Drop for SocketFile<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

/// Boots from the config file and/or the API: both go through the same
/// controller, which hands the started VM to this thread.
fn run_controlled(cli: &Cli) -> ExitCode {
    let (started, vm) = channel::<RunningVm>();
    let controller = Arc::new(Mutex::new(Controller::new(
        &cli.id,
        cli.base_config(),
        started,
    )));

    let api_socket = cli.api_socket();
    let server = match &api_socket {
        Some(path) => match ApiServer::bind(path) {
            Ok(server) => Some(server.with_max_body(cli.http_api_max_payload_size)),
            Err(error) => {
                report(&error);
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let _socket = server.as_ref().and(api_socket.as_deref()).map(SocketFile);

    if let Err(message) = apply_launch_flags(cli, &controller, server.is_some()) {
        eprintln!("vmm: error: {message}");
        return ExitCode::FAILURE;
    }

    if let Some(path) = &cli.config_file {
        let booted = ConfigFile::load(path)
            .map_err(|error| error_chain(&error))
            .and_then(|file| {
                let mut controller = controller.lock().unwrap_or_else(|p| p.into_inner());
                controller
                    .boot_from_config_file(file)
                    .map_err(|error| error_chain(&error))
            });
        if let Err(message) = booted {
            eprintln!("vmm: error: {message}");
            return ExitCode::FAILURE;
        }
    }

    if let Some(server) = server {
        if let Err(error) = server.spawn(Arc::clone(&controller)) {
            report(&error);
            return ExitCode::FAILURE;
        }
    }
    // Only the API thread (if any) may start the VM from here on; without
    // it the channel closes once the VM, if any, has been received.
    drop(controller);
    match vm.recv() {
        Ok(vm) => wait(vm),
        Err(_) => {
            eprintln!("vmm: error: the API server stopped before the VM was started");
            ExitCode::FAILURE
        }
    }
}

/// Firecracker's launch flags that configure what the API would: the
/// logger and metrics (through the controller, so that `GET /vm/config`
/// shows them and the API may change them), and with an API the startup
/// times.
fn apply_launch_flags(
    cli: &Cli,
    controller: &Mutex<Controller>,
    serving: bool,
) -> Result<(), String> {
    let mut controller = controller.lock().unwrap_or_else(|p| p.into_inner());
    controller.set_mmds_size_limit(cli.mmds_size_limit.unwrap_or(cli.http_api_max_payload_size));
    if let Some(logger) = cli.logger() {
        controller
            .handle(vmm::api::controller::VmmAction::PutLogger(logger))
            .map_err(|error| error_chain(&error))?;
    }
    if let Some(path) = &cli.metrics_path {
        let metrics = MetricsConfig {
            metrics_path: path.clone(),
        };
        controller
            .handle(vmm::api::controller::VmmAction::PutMetrics(metrics))
            .map_err(|error| error_chain(&error))?;
    }
    if let Some(path) = &cli.metadata {
        let text = std::fs::read_to_string(path).map_err(|error| {
            format!("cannot read the metadata file {}: {error}", path.display())
        })?;
        let data = serde_json::from_str(&text)
            .map_err(|error| format!("invalid metadata file {}: {error}", path.display()))?;
        controller
            .handle(vmm::api::controller::VmmAction::PutMmds(data))
            .map_err(|error| error_chain(&error))?;
    }
    if serving {
        controller.set_startup_times(cli.startup_times());
    }
    Ok(())
}

/// Waits for the guest to end; the process exits with its status, taking
/// the API thread with it.
fn wait(vm: RunningVm) -> ExitCode {
    // The VM runs: this thread only waits for it and cleans up from now on.
    vmm::seccomp::install_or_exit(vmm::seccomp::ThreadKind::Vmm);
    let event = vm.wait();
    vmm_log!(Info, "the microVM stopped: {event:?}");
    match event {
        VmEvent::Reset(by) => {
            // Always said: a reset nobody asked for is a crash to look into.
            eprintln!("vmm: the guest reset ({by})");
            ExitCode::SUCCESS
        }
        VmEvent::PowerOff(by) => {
            eprintln!("vmm: the guest powered off ({by})");
            ExitCode::SUCCESS
        }
        VmEvent::Stopped => ExitCode::SUCCESS,
        VmEvent::VcpuFailed { index, error } => {
            eprintln!("vmm: error: vCPU {index}: {error}");
            ExitCode::FAILURE
        }
    }
}
