//! `bench-snapshot`: snapshot, restore and clone benchmark of `vmm`
//! against `qemu-system-x86_64 -M microvm` (a benchmark, not a test:
//! missing a target is reported, never a failure).
//!
//! Both VMMs run inside ONE nested test host, alternating, with the same
//! guest (the PVH test kernel and initramfs, 1 vCPU, 256 MiB) printing a
//! tick every 50 ms. `snapshot-probe` (statically linked, copied
//! into the host) measures each round: a cold boot to the first tick, the
//! snapshot's writing and size, one restore to a tick newer than the
//! snapshot, and ten restores at once to their ticks with their summed
//! Pss. vmm's snapshot is a Full one (`PUT /snapshot/create`), restored
//! with `PUT /snapshot/load` (memory mapped MAP_PRIVATE from the file);
//! QEMU's is its migration stream to a file (`migrate exec:cat`, paused),
//! restored with `-incoming`. Both times count from the process's start.
//!
//! Exits 0 when every round was measured, 1 if one failed, 2 on setup
//! errors.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use clap::Parser;
use stratum_tests::bench::{self, fields, verdict, with_qemu, PeerArgs, RunFailed, Stats};
use stratum_tests::guest::run_cmdline;
use stratum_tests::{paths, NestedHost, Outcome, Scenario};

const GUEST_MIB: u32 = 256;
const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off quiet";
/// A tick every 50 ms without a fork (the shell's own `read -t` on a FIFO
/// nobody writes): with a `sleep` process per tick (a fork and exec on the
/// nested host's emulated CPU each time) a restore measured 264 ms to its
/// first tick, against 111 ms without, most of it waiting for the tick.
const TICKS: &str = "mkfifo /tick && exec 3<>/tick; i=0; \
                     while true; do i=$((i+1)); echo TICK=$i; read -t 0.05 -u 3 x; done";
const PROBE_IN_HOST: &str = "/stratum/bin/snapshot-probe";
/// The targets: a restore within a tenth of a cold boot, and ahead of
/// QEMU's.
const TARGET_RESTORE_OF_BOOT: f64 = 0.1;

#[derive(Parser)]
#[command(about = "Benchmark vmm's snapshots against QEMU microvm inside the nested test host")]
struct Args {
    /// Measured rounds per VMM (alternating).
    #[arg(long, default_value_t = 3)]
    iterations: u32,
    /// VMs restored at once from one snapshot in each round.
    #[arg(long, default_value_t = 10)]
    clones: u32,
    #[command(flatten)]
    peer: PeerArgs,
}

fn main() -> ExitCode {
    bench::exit_code("bench-snapshot", run(&Args::parse()))
}

fn run(args: &Args) -> Result<()> {
    ensure!(args.iterations > 0, "--iterations must be at least 1");
    let host = NestedHost::from_env()?;
    let probe = NestedHost::workspace_root()
        .join("target/static/x86_64-unknown-linux-gnu/release/snapshot-probe");
    ensure!(
        probe.is_file(),
        "{} is missing; build it with: make static",
        probe.display()
    );
    let qemu = args.peer.qemu.to_str().context("QEMU path is not UTF-8")?;
    let scenario = Scenario::new(script(args, qemu)?)
        .file(PROBE_IN_HOST, probe)
        .memory_mib(6144)
        // QEMU's two-CPU TCG crashed this host's kernel in a vCPU thread
        // (a stack guard page hit in its exception entry), as it has the
        // snapshot tests': one CPU, as they have.
        .host_cpus(1)
        .timeout(Duration::from_secs(300 + 240 * u64::from(args.iterations)))
        .echo(args.peer.echo);
    let scenario = with_qemu(scenario, &args.peer.qemu)?;
    eprintln!(
        "bench-snapshot: {} rounds per VMM, {} clones each, in one nested host (TCG; \
         takes several minutes)",
        args.iterations, args.clones
    );
    let outcome = host.run(&scenario)?;
    let samples = collect(&outcome)?;
    print_table(&samples, args);
    Ok(())
}

fn script(args: &Args, qemu: &str) -> Result<String> {
    let cmdline = run_cmdline(CMDLINE, TICKS)?;
    let mut s = String::from("mkdir -p /tmp/snapbench\n");
    for i in 0..args.iterations {
        let mut kinds = ["vmm", "qemu"];
        if i % 2 == 1 {
            kinds.reverse();
        }
        for kind in kinds {
            // Each round on files of its own, on the host's tmpfs.
            s.push_str(&format!(
                "rm -rf /tmp/snapbench/*; {PROBE_IN_HOST} --kind {kind} --vmm {vmm} \
                 --qemu {qemu} --machine {machine} --kernel {k} --initrd {i} \
                 --cmdline '{cmdline}' --mib {GUEST_MIB} --clones {clones} \
                 --dir /tmp/snapbench\n",
                vmm = paths::VMM,
                machine = args.peer.machine,
                k = paths::GUEST_VMLINUX,
                i = paths::GUEST_INITRAMFS,
                clones = args.clones,
            ));
        }
    }
    Ok(s)
}

/// One measured round.
#[derive(Debug, Clone, Copy)]
struct Sample {
    boot_ms: f64,
    /// The guest's tick period, running.
    tick_ms: f64,
    create_ms: f64,
    snap_kib: f64,
    disk_kib: f64,
    restore_ms: f64,
    /// From the restore request (load call, `migrate-incoming`) to a tick.
    request_ms: f64,
    /// vmm's load call alone; NaN for QEMU.
    load_ms: f64,
    scaleout_ms: f64,
    clones_pss_kib: f64,
    one_rss_kib: f64,
}

type Samples = std::collections::BTreeMap<String, Vec<Sample>>;

fn collect(outcome: &Outcome) -> Result<Samples> {
    let failed: Vec<&str> = outcome.lines_with("SNAPBENCH-FAILED").collect();
    if !failed.is_empty() {
        return Err(RunFailed(format!(
            "rounds failed:\n{}\n{}",
            failed.join("\n"),
            outcome.console_tail(30)
        ))
        .into());
    }
    let mut samples = Samples::new();
    for line in outcome.lines_with("SNAPBENCH ") {
        let f = fields(line);
        let num = |key: &str| {
            f.get(key)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        let sample = Sample {
            boot_ms: num("boot_ms"),
            tick_ms: num("tick_ms"),
            create_ms: num("create_ms"),
            snap_kib: num("snap_kib"),
            disk_kib: num("disk_kib"),
            restore_ms: num("restore_ms"),
            request_ms: num("request_ms"),
            load_ms: num("load_ms"),
            scaleout_ms: num("scaleout_ms"),
            clones_pss_kib: num("clones_pss_kib"),
            one_rss_kib: num("one_rss_kib"),
        };
        println!("{line}");
        let kind = f.get("kind").copied().unwrap_or("?").to_string();
        samples.entry(kind).or_default().push(sample);
    }
    ensure!(
        samples.contains_key("vmm") && samples.contains_key("qemu"),
        RunFailed(format!(
            "no measurement of both VMMs\n{}",
            outcome.console_tail(30)
        ))
    );
    Ok(samples)
}

fn stats(samples: &Samples, kind: &str, metric: fn(&Sample) -> f64) -> Stats {
    Stats::of(
        samples
            .get(kind)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .map(metric),
    )
}

fn print_table(samples: &Samples, args: &Args) {
    type Metric = (&'static str, &'static str, fn(&Sample) -> f64);
    let metrics: [Metric; 11] = [
        ("cold boot to first tick", "ms", |s| s.boot_ms),
        ("the guest's tick period", "ms", |s| s.tick_ms),
        ("snapshot create (paused VM)", "ms", |s| s.create_ms),
        ("snapshot files, apparent size", "KiB", |s| s.snap_kib),
        ("snapshot files, on disk", "KiB", |s| s.disk_kib),
        ("restore: start to a new tick", "ms", |s| s.restore_ms),
        ("restore: request to a new tick", "ms", |s| s.request_ms),
        ("restore: the load call alone", "ms", |s| s.load_ms),
        ("clones: start to all ticking", "ms", |s| s.scaleout_ms),
        ("clones: summed Pss", "KiB", |s| s.clones_pss_kib),
        ("one clone's RSS", "KiB", |s| s.one_rss_kib),
    ];
    println!(
        "\nSnapshot benchmark: 1 vCPU, {GUEST_MIB} MiB, PVH vmlinux, {} clones, {} rounds each \
         inside the nested host (TCG); median (min..max)",
        args.clones, args.iterations
    );
    let qemu = format!("qemu -M {}", args.peer.machine);
    println!("{:<36} | {:<28} | {:<28} | vmm/qemu", "metric", "vmm", qemu);
    println!("{}", "-".repeat(110));
    for (name, unit, metric) in metrics {
        let (ours, peer) = (
            stats(samples, "vmm", metric),
            stats(samples, "qemu", metric),
        );
        println!(
            "{:<36} | {:<28} | {:<28} | {:.2}",
            format!("{name} [{unit}]"),
            ours.cell(1),
            peer.cell(1),
            ours.median / peer.median
        );
    }
    // The target's restore runs from the request to a guest-side marker
    // (a tick), the process already up, as a cold boot's from its start.
    let boot = stats(samples, "vmm", |s| s.boot_ms).median;
    let restore = stats(samples, "vmm", |s| s.request_ms).median;
    let peer_restore = stats(samples, "qemu", |s| s.request_ms).median;
    let with_start = stats(samples, "vmm", |s| s.restore_ms).median;
    println!(
        "\nTargets: restore (request to tick) <= {TARGET_RESTORE_OF_BOOT} of a cold boot: {:.3} \
         -> {} (with the process's start: {:.3}); restore ahead of QEMU's: {restore:.1} vs \
         {peer_restore:.1} ms -> {}",
        restore / boot,
        verdict(restore / boot <= TARGET_RESTORE_OF_BOOT),
        with_start / boot,
        verdict(restore < peer_restore)
    );
}
