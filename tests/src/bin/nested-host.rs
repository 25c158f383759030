//! `nested-host`: boot the nested test host once and run a script in it.
//!
//! Exits with the scenario's exit code; 124 on timeout, 125 if the host
//! died before reporting one, 2 on harness errors.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use stratum_tests::{Error, NestedHost, Scenario};

#[derive(Parser)]
#[command(about = "Run a shell script inside Stratum's nested KVM test host")]
struct Args {
    /// Shell script run as /scenario.sh inside the nested host.
    #[arg(long)]
    script: PathBuf,
    /// Extra file to place in the host, as DEST=SRC (DEST absolute).
    #[arg(long = "file", value_name = "DEST=SRC", value_parser = parse_file)]
    files: Vec<(String, PathBuf)>,
    /// A raw disk image the host sees as its next virtio-blk disk
    /// (/dev/vda, /dev/vdb, ...); its writes are discarded.
    #[arg(long = "drive", value_name = "PATH")]
    drives: Vec<PathBuf>,
    /// Attach the node image (`make node-image`) as a volume holding its
    /// OCI layout `node.oci` (the next /dev/vdX).
    #[arg(long)]
    node_image: bool,
    /// The nested host's RAM in MiB.
    #[arg(long, value_name = "MIB", default_value_t = stratum_tests::DEFAULT_MEMORY_MIB)]
    memory: u32,
    /// The nested host's CPUs (1 for a full distribution's boot, see
    /// `Scenario::host_cpus`).
    #[arg(long, value_name = "N", default_value_t = stratum_tests::DEFAULT_HOST_CPUS)]
    cpus: u8,
    /// Kill QEMU after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 180)]
    timeout: u64,
    /// Stream the serial console to stdout.
    #[arg(long)]
    echo: bool,
    /// Also forward stdin to the serial console (implies --echo).
    #[arg(long)]
    interactive: bool,
}

fn parse_file(s: &str) -> Result<(String, PathBuf), String> {
    let (dest, src) = s
        .split_once('=')
        .ok_or_else(|| format!("expected DEST=SRC, got {s:?}"))?;
    Ok((dest.to_owned(), PathBuf::from(src)))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nested-host: {e}");
            ExitCode::from(match e {
                Error::Timeout { .. } => 124,
                _ => 2,
            })
        }
    }
}

fn run(args: Args) -> Result<ExitCode, Error> {
    let script = std::fs::read_to_string(&args.script).map_err(|source| Error::Io {
        context: format!("reading {}", args.script.display()),
        source,
    })?;
    let mut scenario = Scenario::new(script)
        .timeout(Duration::from_secs(args.timeout))
        .echo(args.echo)
        .interactive(args.interactive);
    for (dest, src) in args.files {
        scenario = scenario.file(dest, src);
    }
    for drive in args.drives {
        scenario = scenario.drive(drive);
    }
    let host = NestedHost::from_env()?;
    let volume_dir = tempfile::tempdir().map_err(|source| Error::Io {
        context: "making a temporary directory".into(),
        source,
    })?;
    if args.node_image {
        let volume = volume_dir.path().join("node.ext4");
        stratum_tests::node_image_volume(host.images_dir(), &volume)?;
        scenario = scenario.drive(volume);
    }
    scenario = scenario.memory_mib(args.memory).host_cpus(args.cpus);
    let outcome = host.run(&scenario)?;
    if !(args.echo || args.interactive) {
        print!("{}", outcome.console);
    }
    if !outcome.host_kvm {
        eprintln!("nested-host: warning: /dev/kvm is missing in the nested host");
    }
    Ok(match outcome.exit_code {
        // Exit statuses are 0..=255 in a POSIX shell.
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
        None => {
            eprintln!("nested-host: the host ended without reporting the scenario's exit code");
            ExitCode::from(125)
        }
    })
}
