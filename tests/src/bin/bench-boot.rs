//! `bench-boot`: boot-time and memory benchmark of `vmm` against
//! `qemu-system-x86_64 -M microvm` (a benchmark, not a test: missing a
//! target is reported, never a failure).
//!
//! `vmm` is measured three ways: as the agent runs it (in its jail,
//! through `stratum-jailer`, seccomp filters on), unjailed with its
//! filters, and unjailed with `--no-seccomp`, so the table shows what the
//! jail and the filters cost.
//!
//! Both VMMs run inside ONE nested test host, interleaved, booting the same
//! ELF (PVH) guest kernel, initramfs and command line with 1 vCPU and
//! 256 MiB. `boot-probe` (statically linked, copied into the host) measures
//! each run; see its docs for how memory overhead is computed from smaps.
//! Times and peak RSS come from runs without smaps sampling, the overhead
//! from separate sampled runs, because sampling slows the boot it watches.
//! This machine's QEMU is copied into the host with every library `ldd`
//! lists, at the same paths, plus the microvm firmware.
//!
//! Exits 0 when every run was measured, 1 if any run failed (a VM did not
//! boot or exit cleanly), 2 on setup errors.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use stratum_tests::bench::{self, fields, verdict, with_qemu, PeerArgs, RunFailed, Stats};
use stratum_tests::{paths, NestedHost, Outcome, Scenario};

const MARKER: &str = "STRATUM-GUEST-UP";
const GUEST_MIB: u32 = 256;
/// `reboot=t`: the guest's reset is a triple fault, which ends QEMU under
/// `-no-reboot` and our vmm alike, both with status 0.
const CMDLINE: &str = "console=ttyS0 reboot=t panic=-1 pci=off quiet";
const PROBE_IN_HOST: &str = "/stratum/bin/boot-probe";
const JAILER_IN_HOST: &str = "/stratum/bin/stratum-jailer";
/// The jailed runs' run directory (the jail's /run) and uid.
const JAIL_RUN_DIR: &str = "/tmp/jail-run";
const JAIL_UID: u32 = 1_900_000_000;
/// The targets set for vmm: boot time against the peer's, memory overhead.
const TARGET_BOOT_RATIO: f64 = 0.8;
const TARGET_OVERHEAD_KIB: f64 = 5.0 * 1024.0;

#[derive(Parser)]
#[command(about = "Benchmark vmm against QEMU microvm inside the nested test host")]
struct Args {
    /// Measured runs per VMM (interleaved). Boots under TCG vary by ±40%,
    /// so the medians need several runs.
    #[arg(long, default_value_t = 7)]
    iterations: u32,
    /// Unmeasured runs per VMM before the measured ones.
    #[arg(long, default_value_t = 1)]
    warmup: u32,
    #[command(flatten)]
    peer: PeerArgs,
}

/// One parsed `BENCH` line.
#[derive(Debug, Clone, Copy)]
struct Sample {
    init_ms: f64,
    exit_ms: f64,
    peak_rss_kib: f64,
    /// Page faults of the VMM process (KVM's on the guest's first touches
    /// included).
    min_faults: f64,
    /// NaN for runs without smaps sampling.
    overhead_kib: f64,
    /// Guest RAM backed by huge pages; NaN without smaps sampling.
    huge_kib: f64,
}

fn main() -> ExitCode {
    bench::exit_code("bench-boot", run(&Args::parse()))
}

fn run(args: &Args) -> Result<()> {
    ensure!(args.iterations > 0, "--iterations must be at least 1");
    let host = NestedHost::from_env()?;
    let scenario = scenario(args)?;
    eprintln!(
        "bench-boot: {} + {} runs per VMM in one nested host (TCG; takes a few minutes)",
        args.warmup, args.iterations
    );
    let outcome = host.run(&scenario)?;
    let samples = collect(&outcome, args.iterations)?;
    print_table(&samples, args);
    Ok(())
}

fn scenario(args: &Args) -> Result<Scenario> {
    let probe = static_path("STRATUM_BOOT_PROBE", "boot-probe");
    let jailer = static_path("STRATUM_JAILER", "stratum-jailer");
    for binary in [&probe, &jailer] {
        ensure!(
            binary.is_file(),
            "{} is missing; build it with: make static",
            binary.display()
        );
    }
    let qemu = args.peer.qemu.to_str().context("QEMU path is not UTF-8")?;
    let scenario = Scenario::new(script(args, qemu))
        .file(PROBE_IN_HOST, probe)
        .file(JAILER_IN_HOST, jailer)
        // Generous: each boot takes seconds under TCG.
        .timeout(Duration::from_secs(
            120 + 60 * u64::from(args.iterations + args.warmup),
        ))
        .echo(args.peer.echo);
    with_qemu(scenario, &args.peer.qemu)
}

/// A static build's binary (`make static`), or the path in `var`.
fn static_path(var: &str, name: &str) -> PathBuf {
    let default = format!("target/static/x86_64-unknown-linux-gnu/release/{name}");
    let rel = std::env::var_os(var).unwrap_or_else(|| default.into());
    NestedHost::workspace_root().join(rel)
}

/// The nested host's script. Each iteration times both VMMs without
/// smaps sampling (it slows the boot being timed), then measures their
/// memory with sampling; the order alternates so that neither VMM always
/// runs first.
fn script(args: &Args, qemu: &str) -> String {
    let vmm = format!(
        "{vmm} --kernel {k} --initrd {i} --cmdline \"$CL\" --vcpus 1 --memory {GUEST_MIB} \
         --no-console-input",
        vmm = paths::VMM,
        k = paths::GUEST_VMLINUX,
        i = paths::GUEST_INITRAMFS,
    );
    let bare = format!("{vmm} --no-seccomp");
    // The same VM through the jailer, as the agent starts it: kernel and
    // initrd bound read-only, its own /dev/kvm, console in its /run.
    let jail = format!(
        "{JAILER_IN_HOST} --hostname bench --uid {JAIL_UID} --gid {JAIL_UID} \
         --run-dir {JAIL_RUN_DIR} --ro /vm/kernel={k} --ro /vm/initrd={i} --device /dev/kvm \
         --device /dev/urandom --exec /vmm={v} -- --kernel /vm/kernel --initrd /vm/initrd \
         --cmdline \"$CL\" --vcpus 1 --memory {GUEST_MIB} --no-console-input \
         --console /run/console.log",
        v = paths::VMM,
        k = paths::GUEST_VMLINUX,
        i = paths::GUEST_INITRAMFS,
    );
    let qemu = format!(
        "{qemu} -M {m} -enable-kvm -cpu host -smp 1 -m {GUEST_MIB} -nodefaults \
         -no-user-config -display none -serial stdio -no-reboot -kernel {k} -initrd {i} \
         -append \"$CL\"",
        m = args.peer.machine,
        k = paths::GUEST_VMLINUX,
        i = paths::GUEST_INITRAMFS,
    );
    let mut s = format!("CL='{CMDLINE}'\n");
    for i in 0..args.warmup + args.iterations {
        let prefix = if i < args.warmup { "warmup-" } else { "" };
        let mut vmms = [
            ("jail", &jail),
            ("vmm", &vmm),
            ("bare", &bare),
            ("qemu", &qemu),
        ];
        if i % 2 == 1 {
            vmms.reverse();
        }
        for (kind, sample_ms) in [(TIME, 0), (MEM, 5)] {
            for (name, cmd) in vmms {
                let jailed = if name == "jail" {
                    s.push_str(&format!(
                        "rm -rf {JAIL_RUN_DIR}; mkdir {JAIL_RUN_DIR}; \
                         chown {JAIL_UID}:{JAIL_UID} {JAIL_RUN_DIR}\n"
                    ));
                    format!("--jailed --console-file {JAIL_RUN_DIR}/console.log ")
                } else {
                    String::new()
                };
                s.push_str(&format!(
                    "{PROBE_IN_HOST} --label {prefix}{name}-{kind} --marker {MARKER} \
                     --guest-mib {GUEST_MIB} --sample-ms {sample_ms} {jailed}-- {cmd}\n"
                ));
            }
        }
    }
    s
}

const TIME: &str = "time";
const MEM: &str = "mem";
/// Labels of the measured runs (warm-up runs are prefixed `warmup-`).
const LABELS: [&str; 8] = [
    "jail-time",
    "vmm-time",
    "bare-time",
    "qemu-time",
    "jail-mem",
    "vmm-mem",
    "bare-mem",
    "qemu-mem",
];

/// Parses the BENCH lines; fails with [`RunFailed`] unless every label has
/// `iterations` clean runs.
fn collect(outcome: &Outcome, iterations: u32) -> Result<Samples> {
    let mut samples: Samples = LABELS.iter().map(|l| (*l, Vec::new())).collect();
    let mut failures = Vec::new();
    for line in outcome.lines_with("BENCH ") {
        println!("{line}");
        let fields = fields(line);
        let label = fields.get("label").copied().unwrap_or("?");
        match parse_sample(&fields, label.ends_with(MEM)) {
            Ok(sample) => {
                if let Some(list) = samples.get_mut(label) {
                    list.push(sample);
                }
            }
            Err(e) => failures.push(format!("{label}: {e}")),
        }
    }
    for (label, list) in &samples {
        if list.len() != iterations as usize {
            failures.push(format!(
                "{label}: {} of {iterations} runs measured",
                list.len()
            ));
        }
    }
    if failures.is_empty() {
        return Ok(samples);
    }
    Err(RunFailed(format!(
        "could not measure: {}\nnested host console tail:\n{}",
        failures.join("; "),
        outcome.console_tail(60)
    ))
    .into())
}

fn parse_sample(f: &BTreeMap<&str, &str>, sampled: bool) -> Result<Sample> {
    let status = f.get("status").copied().unwrap_or("?");
    if status != "exit:0" {
        bail!("run ended with status {status}");
    }
    let num = |key: &str| -> Result<f64> {
        let v = f.get(key).copied().unwrap_or("none");
        v.parse().with_context(|| format!("{key}={v}"))
    };
    Ok(Sample {
        init_ms: num("init_ms").context(format!("guest never printed {MARKER}"))?,
        exit_ms: num("exit_ms")?,
        peak_rss_kib: num("peak_rss_kib")?,
        min_faults: num("minflt")?,
        overhead_kib: if sampled {
            num("overhead_kib")?
        } else {
            f64::NAN
        },
        huge_kib: if sampled { num("huge_kib")? } else { f64::NAN },
    })
}

fn stats(samples: &[Sample], metric: fn(&Sample) -> f64) -> Stats {
    Stats::of(samples.iter().map(metric))
}

type Samples = BTreeMap<&'static str, Vec<Sample>>;

/// Times and peak RSS come from the unsampled runs, overhead from the
/// sampled ones.
fn print_table(samples: &Samples, args: &Args) {
    type Metric = (&'static str, &'static str, &'static str, fn(&Sample) -> f64);
    let metrics: [Metric; 6] = [
        ("time to STRATUM-GUEST-UP", "ms", TIME, |s| s.init_ms),
        ("time to process exit", "ms", TIME, |s| s.exit_ms),
        ("peak RSS (ru_maxrss)", "KiB", TIME, |s| s.peak_rss_kib),
        ("page faults (ru_minflt)", "", TIME, |s| s.min_faults),
        ("peak overhead (RSS - guest RAM)", "KiB", MEM, |s| {
            s.overhead_kib
        }),
        ("guest RAM in huge pages", "KiB", MEM, |s| s.huge_kib),
    ];
    let get = |vmm: &str, kind: &str, metric: fn(&Sample) -> f64| {
        let list = samples.get(format!("{vmm}-{kind}").as_str());
        stats(list.map_or(&[][..], Vec::as_slice), metric)
    };
    println!(
        "\nBoot benchmark: 1 vCPU, {GUEST_MIB} MiB, PVH vmlinux, cmdline {CMDLINE:?}, \
         {} runs each inside the nested host (TCG); median (min..max)",
        args.iterations
    );
    let qemu = format!("qemu -M {}", args.peer.machine);
    println!(
        "{:<38} | {:<26} | {:<26} | {:<26} | {:<26} | jail/qemu | jail/vmm | vmm/bare",
        "metric", "vmm jailed (jail+seccomp)", "vmm (seccomp)", "vmm --no-seccomp", qemu
    );
    println!("{}", "-".repeat(205));
    for (name, unit, kind, metric) in metrics {
        let (jail, a, bare, b) = (
            get("jail", kind, metric),
            get("vmm", kind, metric),
            get("bare", kind, metric),
            get("qemu", kind, metric),
        );
        let label = if unit.is_empty() {
            name.to_string()
        } else {
            format!("{name} [{unit}]")
        };
        println!(
            "{label:<38} | {:<26} | {:<26} | {:<26} | {:<26} | {:<9.2} | {:<8.2} | {:.2}",
            cell(&jail),
            cell(&a),
            cell(&bare),
            cell(&b),
            jail.median / b.median,
            jail.median / a.median,
            a.median / bare.median
        );
    }
    // The targets are for vmm as the agent runs it: jailed.
    let ratio = get("jail", TIME, |s| s.init_ms).median / get("qemu", TIME, |s| s.init_ms).median;
    let overhead = get("jail", MEM, |s| s.overhead_kib).max;
    println!(
        "\nTargets: boot time ratio (median time to {MARKER}) <= {TARGET_BOOT_RATIO}: {ratio:.2} \
         -> {}; vmm overhead (worst run) <= 5 MiB: {:.2} MiB -> {}",
        verdict(ratio <= TARGET_BOOT_RATIO),
        overhead / 1024.0,
        verdict(overhead <= TARGET_OVERHEAD_KIB)
    );
}

fn cell(s: &Stats) -> String {
    s.cell(1)
}
