//! `vmm`: boot one Linux VM on KVM.
//!
//! Three ways to say what to boot, exactly one of which is used:
//! `--kernel` and friends; `--config-file` (Firecracker's format); or
//! `--api-sock` alone, where a client configures the VM and starts it over
//! Firecracker's HTTP API. `--api-sock` with `--config-file` boots from the
//! file and keeps serving the API, as Firecracker does.
//!
//! Exit status: 0 when the guest resets or powers off, 1 when the VM cannot
//! be built or fails while running, 2 for command-line errors.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};

use clap::Parser;
use vmm::api::controller::{error_chain, DEFAULT_INSTANCE_ID};
use vmm::api::{ApiServer, Controller};
use vmm::config::{ConsoleOutput, DEFAULT_CMDLINE};
use vmm::devices::legacy::console_log::{DEFAULT_MAX_BYTES, MIN_MAX_BYTES};
use vmm::vmm_config::config_file::ConfigFile;
use vmm::{vmm_log, RunningVm, VmConfig, VmEvent};

/// The options that describe a VM on the command line. They conflict with
/// --config-file and --api-sock, which describe it themselves. (`requires =
/// "kernel"` on each is not enough: clap lets them through once --kernel's
/// own `required_unless_present_any` is satisfied.)
const KERNEL_ARGS: [&str; 9] = [
    "kernel", "initrd", "cmdline", "vcpus", "memory", "entropy", "drive", "net", "vsock",
];

#[derive(Parser, Debug)]
#[command(
    name = "vmm",
    version,
    about = "Boot a Linux VM on KVM (one process per VM)"
)]
struct Cli {
    /// Kernel image: an ELF vmlinux (PVH entry preferred) or a bzImage.
    #[arg(long, required_unless_present_any = ["config_file", "api_sock"], conflicts_with_all = ["config_file", "api_sock"])]
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
    /// Boot the VM described by this Firecracker config file (JSON).
    #[arg(long, value_name = "PATH", conflicts_with_all = KERNEL_ARGS)]
    config_file: Option<PathBuf>,
    /// Serve the Firecracker-compatible control API on this Unix socket.
    #[arg(long, value_name = "PATH", conflicts_with_all = KERNEL_ARGS)]
    api_sock: Option<PathBuf>,
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

impl Cli {
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

/// Command-line defaults (the API's follow Firecracker: 1 vCPU, 128 MiB).
const DEFAULT_VCPUS: u16 = 1;
const DEFAULT_MEMORY_MIB: u64 = 256;

fn report(error: &dyn std::error::Error) {
    eprintln!("vmm: error: {}", error_chain(error));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    fix_malloc_arenas();
    if let Err(error) = vmm::seccomp::configure(!cli.no_seccomp) {
        report(&error);
        return ExitCode::from(2);
    }
    match cli.kernel.clone() {
        Some(kernel) => run_from_command_line(kernel, cli),
        None => run_controlled(&cli),
    }
}

fn run_from_command_line(kernel: PathBuf, cli: Cli) -> ExitCode {
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

    let server = match &cli.api_sock {
        Some(path) => match ApiServer::bind(path) {
            Ok(server) => Some(server),
            Err(error) => {
                report(&error);
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let _socket = server.as_ref().and(cli.api_sock.as_deref()).map(SocketFile);

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
