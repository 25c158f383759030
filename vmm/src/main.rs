//! `vmm`: boot one Linux VM on KVM.
//!
//! Exit status: 0 when the guest resets or powers off, 1 when the VM cannot
//! be built or fails while running, 2 for command-line errors.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vmm::config::{ConsoleOutput, DEFAULT_CMDLINE};
use vmm::{VmConfig, VmEvent};

#[derive(Parser, Debug)]
#[command(
    name = "vmm",
    version,
    about = "Boot a Linux VM on KVM (one process per VM)"
)]
struct Cli {
    /// Kernel image: an ELF vmlinux (PVH entry preferred) or a bzImage.
    #[arg(long)]
    kernel: PathBuf,
    /// Initial ramdisk (cpio archive, optionally compressed).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u16,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u64,
    /// Write the serial console to this file instead of stdout.
    #[arg(long, value_name = "PATH")]
    console: Option<PathBuf>,
    /// Do not forward stdin to the guest's console.
    #[arg(long)]
    no_console_input: bool,
    /// KVM device node.
    #[arg(long, default_value = "/dev/kvm", value_name = "PATH")]
    kvm_device: PathBuf,
    /// Give the guest a virtio-rng device fed by the host's getrandom.
    #[arg(long)]
    entropy: bool,
}

impl From<Cli> for VmConfig {
    fn from(cli: Cli) -> Self {
        VmConfig {
            kernel: cli.kernel,
            initrd: cli.initrd,
            cmdline: cli.cmdline,
            vcpus: cli.vcpus,
            memory_mib: cli.memory,
            console: cli
                .console
                .map_or(ConsoleOutput::Stdout, ConsoleOutput::File),
            console_input: !cli.no_console_input,
            kvm_device: cli.kvm_device,
            entropy: cli.entropy,
        }
    }
}

fn report(error: &dyn std::error::Error) {
    let mut message = format!("vmm: error: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(&format!(": {text}"));
        }
        source = cause.source();
    }
    eprintln!("{message}");
}

fn main() -> ExitCode {
    let config = VmConfig::from(Cli::parse());
    let vm = match vmm::build_and_start(&config) {
        Ok(vm) => vm,
        Err(error) => {
            report(&error);
            return ExitCode::FAILURE;
        }
    };
    match vm.wait() {
        VmEvent::Reset | VmEvent::PowerOff => ExitCode::SUCCESS,
        VmEvent::VcpuFailed { index, error } => {
            eprintln!("vmm: error: vCPU {index}: {error}");
            ExitCode::FAILURE
        }
    }
}
