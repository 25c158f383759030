//! `bench-io`: in-guest virtio-blk throughput of `vmm` against
//! `qemu-system-x86_64 -M microvm` (a benchmark, not a test: missing the
//! target is reported, never a failure).
//!
//! Both VMMs run inside ONE nested test host, interleaved, with the same
//! disk: a raw image of `--image-mib` MiB written with zeroes to the nested
//! host's /tmp (tmpfs), so that the host side is the page cache for both.
//! Each run boots the guest (ELF kernel, initramfs, 1 vCPU, 256 MiB) with
//! the same kernel command line, which carries the guest's script
//! ([`stratum_tests::guest::run_cmdline`]): it runs `blkbench`
//! (guest-images/blkbench.c) on /dev/vda:
//!
//! * `blkbench randread /dev/vda SECS`: 4 KiB O_DIRECT reads at random
//!   offsets over the whole device, one outstanding I/O -> IOPS;
//! * `blkbench seqwrite /dev/vda MIB`: 1 MiB O_DIRECT writes from offset 0,
//!   then fsync -> MiB/s;
//!
//! then the guest's init reboots (a triple fault with `reboot=t`, which
//! ends QEMU under `-no-reboot` and our vmm alike, both with status 0).
//!
//! Our vmm serves virtio-blk from the image with pread/pwrite through the
//! host page cache and answers FLUSH with fdatasync. The QEMU drive uses
//! the matching mode: `cache=writeback` (no O_DIRECT on the host, flushes
//! become fdatasync) with `aio=threads` (QEMU's default; `cache=none` needs
//! O_DIRECT, which tmpfs refuses anyway).
//!
//! Exits 0 when every run was measured (even if the target is missed), 1
//! if a run failed, 2 on setup errors.

use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use clap::Parser;
use stratum_tests::bench::{self, fields, verdict, with_qemu, PeerArgs};
use stratum_tests::{guest, paths, NestedHost, Outcome, Scenario};

const GUEST_MIB: u32 = 256;
/// The guest's command line before its script; `reboot=t` ends both VMMs.
const CMDLINE: &str = "console=ttyS0 reboot=t panic=-1 pci=off quiet";
const IMAGE: &str = "/tmp/bench.img";
/// The QEMU drive's cache mode; see the module docs.
const QEMU_CACHE: &str = "cache=writeback,aio=threads";
/// Wall-clock limit of one VM run inside the nested host, in seconds.
const RUN_LIMIT_SECS: u32 = 180;
const VMMS: [&str; 2] = ["vmm", "qemu"];

#[derive(Parser)]
#[command(about = "In-guest virtio-blk benchmark of vmm against QEMU microvm in the nested host")]
struct Args {
    /// Measured runs per VMM (interleaved, the order alternating).
    #[arg(long, default_value_t = 3)]
    iterations: u32,
    /// Unmeasured runs per VMM before the measured ones.
    #[arg(long, default_value_t = 0)]
    warmup: u32,
    /// Duration of the random-read test in seconds.
    #[arg(long, default_value_t = 5)]
    randread_secs: u32,
    /// MiB written by the sequential-write test.
    #[arg(long, default_value_t = 64)]
    seqwrite_mib: u32,
    /// Size of the disk image in MiB.
    #[arg(long, default_value_t = 256)]
    image_mib: u32,
    #[command(flatten)]
    peer: PeerArgs,
}

/// One VM run's results.
#[derive(Debug, Clone, Copy)]
struct Sample {
    iops: f64,
    mibps: f64,
}

fn main() -> ExitCode {
    bench::exit_code("bench-io", run(&Args::parse()))
}

fn run(args: &Args) -> Result<()> {
    ensure!(args.iterations > 0, "--iterations must be at least 1");
    ensure!(
        args.seqwrite_mib <= args.image_mib,
        "--seqwrite-mib must not exceed --image-mib"
    );
    let host = NestedHost::from_env()?;
    check_initramfs(&host)?;
    let runs = args.warmup + args.iterations;
    let scenario = Scenario::new(script(args)?)
        .timeout(Duration::from_secs(
            180 + 2 * u64::from(runs) * u64::from(RUN_LIMIT_SECS),
        ))
        .echo(args.peer.echo);
    let scenario = with_qemu(scenario, &args.peer.qemu)?;
    eprintln!(
        "bench-io: {} + {} runs per VMM in one nested host (TCG; takes a few minutes)",
        args.warmup, args.iterations
    );
    let outcome = host.run(&scenario)?;
    let samples = collect(&outcome, args)?;
    print_table(&samples, args);
    Ok(())
}

/// The guest initramfs must carry blkbench (built by guest-initramfs.sh).
fn check_initramfs(host: &NestedHost) -> Result<()> {
    let initramfs = host.images_dir().join("guest-initramfs.cpio.gz");
    let out = Command::new("sh")
        .args(["-c", "zcat -- \"$1\" | cpio -t --quiet", "sh"])
        .arg(&initramfs)
        .output()
        .context("listing the guest initramfs with zcat | cpio -t")?;
    ensure!(
        out.status.success(),
        "listing {} failed: {}",
        initramfs.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l == "bin/blkbench"),
        "{} has no bin/blkbench; rebuild it with `make images`",
        initramfs.display()
    );
    Ok(())
}

/// The label of run `i` (0-based, warm-up runs first) of `vmm`.
fn label(vmm: &str, i: u32, warmup: u32) -> String {
    if i < warmup {
        format!("warmup-{vmm}-{}", i + 1)
    } else {
        format!("{vmm}-{}", i - warmup + 1)
    }
}

/// The nested host's script: creates the image, then runs the VMMs in
/// turn, the order alternating between iterations. For each run it prints
/// the guest's console prefixed with `<label>| ` and a line
/// `BENCHIO label=<label> status=exit:<VMM status> secs=<wall seconds>`.
fn script(args: &Args) -> Result<String> {
    let vmm = format!(
        "{vmm} --kernel {k} --initrd {i} --cmdline \"$CL\" --vcpus 1 --memory {GUEST_MIB} \
         --drive path={IMAGE}",
        vmm = paths::VMM,
        k = paths::GUEST_VMLINUX,
        i = paths::GUEST_INITRAMFS,
    );
    let qemu = format!(
        "{qemu} -M {m} -enable-kvm -cpu host -smp 1 -m {GUEST_MIB} -nodefaults \
         -no-user-config -display none -serial stdio -no-reboot -kernel {k} -initrd {i} \
         -append \"$CL\" -drive file={IMAGE},if=none,id=d0,format=raw,{QEMU_CACHE} \
         -device virtio-blk-device,drive=d0",
        qemu = args.peer.qemu.display(),
        m = args.peer.machine,
        k = paths::GUEST_VMLINUX,
        i = paths::GUEST_INITRAMFS,
    );
    let guest = format!(
        "blkbench randread /dev/vda {r}; blkbench seqwrite /dev/vda {w}",
        r = args.randread_secs,
        w = args.seqwrite_mib,
    );
    let cmdline = guest::run_cmdline(CMDLINE, &guest)?;
    let mut s = format!(
        r#"CL='{cmdline}'
dd if=/dev/zero of={IMAGE} bs=1M count={image_mib} 2>/dev/null || {{ echo "bench-io: cannot create {IMAGE}"; exit 2; }}
# run LABEL COMMAND...: runs the VMM, whose guest runs the benchmark from
# its command line and then reboots, and waits for it to exit.
run() {{
    label=$1; shift
    rm -f /tmp/out /tmp/rc /tmp/pid
    ( "$@" </dev/null >/tmp/out 2>&1 & echo $! >/tmp/pid; wait $!; echo $? >/tmp/rc ) &
    t=0
    while [ ! -f /tmp/rc ]; do
        sleep 1
        t=$((t + 1))
        if [ $t -eq {limit} ]; then
            echo "bench-io: $label still running after {limit} s, killing it"
            kill "$(cat /tmp/pid)"
        fi
    done
    wait
    sed "s/^/$label| /" /tmp/out
    echo "BENCHIO label=$label status=exit:$(cat /tmp/rc) secs=$t"
}}
"#,
        image_mib = args.image_mib,
        limit = RUN_LIMIT_SECS,
    );
    for i in 0..args.warmup + args.iterations {
        let mut order = [("vmm", &vmm), ("qemu", &qemu)];
        if i % 2 == 1 {
            order.reverse();
        }
        for (name, cmd) in order {
            s.push_str(&format!("run {} {cmd}\n", label(name, i, args.warmup)));
        }
    }
    Ok(s)
}

type Samples = bench::Samples<Sample>;

/// Parses every measured run; fails with [`bench::RunFailed`] unless all of them
/// exited 0 and printed both results.
fn collect(outcome: &Outcome, args: &Args) -> Result<Samples> {
    let runs = (args.warmup..args.warmup + args.iterations)
        .flat_map(|i| VMMS.map(|vmm| (vmm, label(vmm, i, args.warmup))));
    bench::collect_runs(outcome, runs, parse_run, |s| {
        format!("randread iops={:.0} seqwrite mibps={:.1}", s.iops, s.mibps)
    })
}

fn parse_run(outcome: &Outcome, label: &str) -> Result<Sample> {
    let status_line = format!("BENCHIO label={label} ");
    let status = outcome
        .lines_with(&status_line)
        .next()
        .map(|l| fields(l).get("status").copied().unwrap_or("?").to_owned())
        .context("the run never finished")?;
    ensure!(status == "exit:0", "the VMM ended with status {status}");
    let prefix = format!("{label}| BLKBENCH ");
    // The guest's own lines: `BLKBENCH <test> key=value...`.
    let result = |test: &str, key: &str| -> Result<f64> {
        let marker = format!("{prefix}{test} ");
        let line = outcome
            .lines_with(&marker)
            .next()
            .map(|l| &l[marker.len()..])
            .with_context(|| format!("no `BLKBENCH {test}` line"))?;
        let value = fields(line).get(key).copied().unwrap_or("none");
        value
            .parse()
            .with_context(|| format!("{test}: {key}={value}"))
    };
    Ok(Sample {
        iops: result("randread", "iops")?,
        mibps: result("seqwrite", "mibps")?,
    })
}

fn print_table(samples: &Samples, args: &Args) {
    type Metric = (String, usize, fn(&Sample) -> f64);
    let metrics: [Metric; 2] = [
        ("4 KiB random read, QD1 [IOPS]".to_owned(), 0, |s| s.iops),
        (
            format!(
                "1 MiB seq. write, {} MiB + fsync [MiB/s]",
                args.seqwrite_mib
            ),
            1,
            |s| s.mibps,
        ),
    ];
    let get = |vmm: &str, metric: fn(&Sample) -> f64| bench::stats_of(samples, vmm, metric);
    println!(
        "\nI/O benchmark: virtio-blk on a {} MiB raw image in the nested host's tmpfs, \
         O_DIRECT in the guest; 1 vCPU, {GUEST_MIB} MiB; QEMU -drive {QEMU_CACHE}; \
         {} runs each inside the nested host (TCG); median (min..max)",
        args.image_mib, args.iterations
    );
    let qemu = format!("qemu -M {}", args.peer.machine);
    println!("{:<42} | {:<26} | {:<26} | vmm/qemu", "metric", "vmm", qemu);
    println!("{}", "-".repeat(112));
    for (name, decimals, metric) in &metrics {
        let (a, b) = (get("vmm", *metric), get("qemu", *metric));
        println!(
            "{name:<42} | {:<26} | {:<26} | {:.2}",
            a.cell(*decimals),
            b.cell(*decimals),
            a.median / b.median
        );
    }
    let ratio = get("vmm", |s| s.iops).median / get("qemu", |s| s.iops).median;
    println!(
        "\nTarget: random-read IOPS (median) vmm >= qemu, ratio >= 1.00: {ratio:.2} -> {}",
        verdict(ratio >= 1.0)
    );
}
