//! `bench-node`: the node image's boot on `vmm` beside `qemu-system-x86_64
//! -M microvm` (a benchmark, not a test), and the making of a VM's root
//! disk from the node image's 2 GiB disk beside `cp`.
//!
//! Boot: both VMMs run inside ONE nested test host, interleaved, booting
//! the same Debian cloud kernel, initramfs, root disk and NoCloud seed with
//! 2 vCPUs and 1 GiB. Each run gets a pristine root disk: one QEMU drive
//! of the nested host per run, all of the same file, their writes
//! discarded. `guest-probe` starts with each VMM and reports, from that
//! moment: the kernel starting its init (`Run /init`), systemd's
//! multi-user target, and the guest agent's ready (cloud-init done); it
//! then asks the guest to power off. Our vmm reaches the guest agent
//! through its hybrid vsock, QEMU through vhost-vsock.
//!
//! Root disk: `stratum_vm::disk::clone_disk` (reflink where the filesystem
//! shares extents, else a sparse copy; fsynced) against `cp
//! --sparse=always` and `sync` of the copy, both on this machine from the
//! page cache, with the bytes each wrote (blocks allocated).
//!
//! Exits 0 when every run was measured, 1 if a run failed, 2 on setup
//! errors.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Parser;
use stratum_tests::bench::{self, collect_runs, with_qemu, PeerArgs, Stats};
use stratum_tests::{paths, NestedHost, Outcome, Scenario};
use stratum_vm::seed::Seed;

const PROBE: &str = "/stratum/bin/guest-probe";
const NODE: &str = "/stratum/node";
const GUEST_MIB: u32 = 1024;
/// The console texts marked, in boot order.
const MARKS: [(&str, &str); 2] = [
    ("init", "Run /init as init process"),
    ("multi_user", "Multi-User System"),
];

#[derive(Parser)]
#[command(about = "The node image's boot on vmm beside QEMU microvm, and root disk creation")]
struct Args {
    /// Measured boots per VMM (interleaved).
    #[arg(long, default_value_t = 3)]
    iterations: u32,
    #[command(flatten)]
    peer: PeerArgs,
}

fn main() -> ExitCode {
    bench::exit_code("bench-node", run(&Args::parse()))
}

fn run(args: &Args) -> Result<()> {
    ensure!(args.iterations > 0, "--iterations must be at least 1");
    let host = NestedHost::from_env()?;
    let images = host.images_dir().to_path_buf();
    root_disk_bench(&images.join("node-rootfs.raw"))?;
    let dir = tempfile::tempdir()?;
    let seed = dir.path().join("seed.img");
    Seed {
        instance_id: "bench-node".into(),
        hostname: "bench-node".into(),
        user_data: b"#cloud-config\n".to_vec(),
        ..Seed::default()
    }
    .write(&seed)?;
    let cmdline = std::fs::read_to_string(images.join("node-cmdline"))
        .context("node-cmdline (make node-image)")?;
    let qemu = args.peer.qemu.to_str().context("QEMU path is not UTF-8")?;
    let runs: Vec<(&'static str, String)> = (0..args.iterations)
        .flat_map(|i| {
            let order = if i % 2 == 0 {
                ["vmm", "qemu"]
            } else {
                ["qemu", "vmm"]
            };
            order.map(|vmm| (vmm, format!("{vmm}-{i}")))
        })
        .collect();
    let mut scenario = Scenario::new(script(&runs, qemu, &args.peer.machine, cmdline.trim()))
        .file(PROBE, NestedHost::static_bin("guest-probe"))
        .file(format!("{NODE}/vmlinuz"), images.join("node-vmlinuz"))
        .file(format!("{NODE}/initrd.img"), images.join("node-initrd.img"))
        .file(format!("{NODE}/seed.img"), &seed)
        .memory_mib(4096)
        .timeout(Duration::from_secs(300 + 400 * runs.len() as u64))
        .echo(args.peer.echo);
    for _ in &runs {
        scenario = scenario.drive(images.join("node-rootfs.raw"));
    }
    let scenario = with_qemu(scenario, &args.peer.qemu)?;
    eprintln!(
        "bench-node: {} boots of the node image in one nested host (TCG; takes a while)",
        runs.len()
    );
    let outcome = host.run(&scenario)?;
    let samples = collect_runs(&outcome, runs, parse_run, show)?;
    print_table(&samples, args.iterations, &args.peer.machine);
    Ok(())
}

/// One boot's times from the VMM's start, in ms.
#[derive(Debug, Clone, Copy)]
struct Boot {
    init_ms: f64,
    multi_user_ms: f64,
    ready_ms: f64,
}

fn show(b: &Boot) -> String {
    format!(
        "init {:.0} ms, multi-user {:.0} ms (NaN: not seen), ready {:.0} ms",
        b.init_ms, b.multi_user_ms, b.ready_ms
    )
}

/// The nested host's script: each run boots one VMM on its own drive
/// (/dev/vda, /dev/vdb, ...), probes it, and waits for it to power off.
fn script(runs: &[(&'static str, String)], qemu: &str, machine: &str, cmdline: &str) -> String {
    let marks: String = MARKS
        .iter()
        .map(|(name, text)| format!(" --mark '{name}={text}'"))
        .collect();
    let mut s = String::from("cd /tmp\n");
    for (i, (vmm, label)) in runs.iter().enumerate() {
        let disk = format!("/dev/vd{}", char::from(b'a' + i as u8));
        let console = format!("/tmp/{label}.console");
        let (start, probe) = match *vmm {
            "vmm" => (
                format!(
                    "{vmm_bin} --kernel {NODE}/vmlinuz --initrd {NODE}/initrd.img --vcpus 2 \
                     --memory {GUEST_MIB} --no-console-input --console {console} \
                     --drive path={disk} --drive path={NODE}/seed.img,ro \
                     --vsock cid=3,uds=/tmp/{label}.vsock --cmdline '{cmdline} reboot=k'",
                    vmm_bin = paths::VMM
                ),
                format!("{PROBE} --uds /tmp/{label}.vsock"),
            ),
            _ => (
                format!(
                    "{qemu} -M {machine} -enable-kvm -cpu host -smp 2 -m {GUEST_MIB} -nodefaults \
                     -no-user-config -display none -serial file:{console} -no-reboot \
                     -kernel {NODE}/vmlinuz -initrd {NODE}/initrd.img -append '{cmdline} reboot=k' \
                     -drive id=root,file={disk},format=raw,if=none \
                     -device virtio-blk-device,drive=root \
                     -drive id=seed,file={NODE}/seed.img,format=raw,if=none,readonly=on \
                     -device virtio-blk-device,drive=seed -device vhost-vsock-device,guest-cid=3"
                ),
                format!("{PROBE} --cid 3"),
            ),
        };
        s.push_str(&format!(
            "echo RUN {label}\n\
             {start} > /tmp/{label}.out 2>&1 &\n\
             vpid=$!\n\
             {probe} --console {console}{marks} --timeout 380 --shutdown > /tmp/{label}.probe 2>&1\n\
             i=0; while kill -0 $vpid 2>/dev/null && [ $i -lt 600 ]; do sleep 0.2; i=$((i+1)); done\n\
             kill -9 $vpid 2>/dev/null; wait $vpid 2>/dev/null\n\
             sed 's/^/{label} /' /tmp/{label}.probe\n\
             tail -3 /tmp/{label}.out | sed 's/^/{label}-out /'\n\
             grep -q GUEST-READY /tmp/{label}.probe || tail -25 {console} | sed 's/^/{label}-console /'\n"
        ));
    }
    s
}

/// A run's `GUEST-MARK` and `GUEST-READY` lines.
fn parse_run(outcome: &Outcome, label: &str) -> Result<Boot> {
    let prefix = format!("{label} ");
    let after = |line: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("after_ms="))
            .and_then(|v| v.parse().ok())
    };
    let find = |what: &str| -> Result<f64> {
        outcome
            .console
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .find(|l| l.starts_with(what))
            .and_then(after)
            .with_context(|| format!("no {what:?} line"))
    };
    Ok(Boot {
        init_ms: find("GUEST-MARK init ")?,
        // Sometimes missing from our vmm's console log although the guest
        // reached the target (not understood yet): counted, not failed.
        multi_user_ms: find("GUEST-MARK multi_user ").unwrap_or(f64::NAN),
        ready_ms: find("GUEST-READY ")?,
    })
}

fn print_table(samples: &bench::Samples<Boot>, iterations: u32, machine: &str) {
    println!(
        "\nNode image boot: Debian 12, stock cloud kernel, 2 vCPUs, {GUEST_MIB} MiB, root disk + \
         NoCloud seed, {iterations} boots each inside the nested host (TCG); ms from the VMM's \
         start, median (min..max)"
    );
    let qemu = format!("qemu -M {machine}");
    println!("{:<34} | {:<26} | {:<26} | vmm/qemu", "to", "vmm", qemu);
    println!("{}", "-".repeat(100));
    type Metric = (&'static str, fn(&Boot) -> f64);
    let metrics: [Metric; 3] = [
        ("kernel runs init (Run /init)", |b| b.init_ms),
        ("systemd multi-user target", |b| b.multi_user_ms),
        ("guest agent ready (cloud-init)", |b| b.ready_ms),
    ];
    for (name, metric) in metrics {
        let seen = |vmm: &str| {
            samples.get(vmm).map_or(0, |list| {
                list.iter().filter(|b| !metric(b).is_nan()).count()
            })
        };
        let valid = |vmm: &str| {
            let list = samples.get(vmm).map_or(&[][..], Vec::as_slice);
            Stats::of(list.iter().map(metric).filter(|v| !v.is_nan()))
        };
        let (ours, peer) = (valid("vmm"), valid("qemu"));
        let counts = if seen("vmm") as u32 == iterations && seen("qemu") as u32 == iterations {
            String::new()
        } else {
            format!("  (seen in {} / {} runs)", seen("vmm"), seen("qemu"))
        };
        println!(
            "{name:<34} | {:<26} | {:<26} | {:.2}{counts}",
            ours.cell(0),
            peer.cell(0),
            ours.median / peer.median
        );
    }
}

/// A VM's root disk from the node image's disk: ours against `cp`.
fn root_disk_bench(image: &Path) -> Result<()> {
    ensure!(
        image.is_file(),
        "{} is missing; make node-image",
        image.display()
    );
    let dir = tempfile::tempdir_in(image.parent().unwrap_or(Path::new("/tmp")))
        .or_else(|_| tempfile::tempdir())?;
    // Both copies read the image from the page cache: read it once first.
    std::io::copy(&mut std::fs::File::open(image)?, &mut std::io::sink())?;
    let ours = dir.path().join("ours.img");
    let started = Instant::now();
    let method = stratum_vm::disk::clone_disk(image, &ours)?;
    let our_time = started.elapsed();
    let theirs = dir.path().join("cp.img");
    let started = Instant::now();
    // clone_disk makes its disk durable (fsync) before it answers: so does
    // the peer, with `sync FILE`.
    let copied = Command::new("cp")
        .args(["--sparse=always"])
        .arg(image)
        .arg(&theirs)
        .status()?;
    ensure!(copied.success(), "cp failed");
    let synced = Command::new("sync").arg(&theirs).status()?;
    ensure!(synced.success(), "sync failed");
    let their_time = started.elapsed();
    let written = |p: &PathBuf| -> Result<u64> { Ok(std::fs::metadata(p)?.blocks() * 512) };
    let size = std::fs::metadata(image)?.len();
    println!(
        "\nRoot disk from the node image ({} MiB, {} MiB of data), on this machine's {}:",
        size >> 20,
        written(&image.to_path_buf())? >> 20,
        fs_type(dir.path())
    );
    println!("{:<36} | {:>10} | {:>14}", "", "time [ms]", "written [MiB]");
    println!(
        "{:<36} | {:>10.0} | {:>14}",
        format!("stratum clone_disk ({method:?})"),
        our_time.as_secs_f64() * 1000.0,
        written(&ours)? >> 20
    );
    println!(
        "{:<36} | {:>10.0} | {:>14}",
        "cp --sparse=always; sync FILE",
        their_time.as_secs_f64() * 1000.0,
        written(&theirs)? >> 20
    );
    Ok(())
}

fn fs_type(path: &Path) -> String {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(path)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "filesystem".into())
}
