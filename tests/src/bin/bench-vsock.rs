//! `bench-vsock`: vsock round-trip latency of `vmm` (virtio-vsock served
//! in the VMM, hybrid vsock over a Unix socket) against
//! `qemu-system-x86_64 -M microvm` with `vhost-vsock-device` (served in the
//! nested host's kernel, host side on AF_VSOCK). A benchmark, not a test.
//!
//! Both VMMs run inside ONE nested test host, interleaved. Each run boots
//! the guest (ELF kernel, initramfs, 1 vCPU, 256 MiB) with the same kernel
//! command line, which carries the guest's script
//! ([`stratum_tests::guest::run_cmdline`]): `vsock-tool serve 52`
//! (guest-images/vsock-tool.c) echoes every stream; once the guest says it
//! serves, the nested host runs `vsock-host rtt`
//! (tests/src/bin/vsock-host.rs): `--count` round trips of `--size` bytes
//! on one stream after 10 unmeasured ones, and the VM is killed.
//!
//! Exits 0 when every run was measured, 1 if a run failed, 2 on setup
//! errors.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use clap::Parser;
use stratum_tests::bench::{self, fields, with_qemu, PeerArgs};
use stratum_tests::{guest, paths, NestedHost, Outcome, Scenario};

const GUEST_MIB: u32 = 256;
/// The guest's command line before its script.
const CMDLINE: &str = "console=ttyS0 reboot=t panic=-1 pci=off quiet";
const VSOCK_HOST: &str = "/stratum/bin/vsock-host";
const PORT: u32 = 52;
const VMMS: [&str; 2] = ["vmm", "qemu"];
/// Wall-clock limit of one VM run inside the nested host, in seconds.
const RUN_LIMIT_SECS: u32 = 120;

#[derive(Parser)]
#[command(about = "vsock round-trip latency of vmm against QEMU microvm in the nested host")]
struct Args {
    /// Measured runs per VMM (interleaved, the order alternating).
    #[arg(long, default_value_t = 3)]
    iterations: u32,
    /// Round trips per run.
    #[arg(long, default_value_t = 2000)]
    count: u32,
    /// Bytes per message.
    #[arg(long, default_value_t = 64)]
    size: u32,
    #[command(flatten)]
    peer: PeerArgs,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    p50: f64,
    p99: f64,
}

fn main() -> ExitCode {
    bench::exit_code("bench-vsock", run(&Args::parse()))
}

fn run(args: &Args) -> Result<()> {
    ensure!(args.iterations > 0, "--iterations must be at least 1");
    ensure!(
        args.count > 0 && args.size > 0,
        "--count and --size must be positive"
    );
    let host = NestedHost::from_env()?;
    let tool: PathBuf = std::env::var_os("STRATUM_VSOCK_HOST")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            NestedHost::workspace_root()
                .join("target/static/x86_64-unknown-linux-gnu/release/vsock-host")
        });
    ensure!(
        tool.exists(),
        "{} is missing; run `make static`",
        tool.display()
    );
    let scenario = Scenario::new(script(args)?)
        .file(VSOCK_HOST, tool)
        .timeout(Duration::from_secs(
            120 + 2 * u64::from(args.iterations) * u64::from(RUN_LIMIT_SECS),
        ))
        .echo(args.peer.echo);
    let scenario = with_qemu(scenario, &args.peer.qemu)?;
    eprintln!(
        "bench-vsock: {} runs per VMM in one nested host (TCG; takes a few minutes)",
        args.iterations
    );
    let outcome = host.run(&scenario)?;
    let samples = collect(&outcome, args)?;
    print_table(&samples, args);
    Ok(())
}

/// The nested host's script: for each run, starts the VMM in the
/// background (its guest starts the echo server), waits until the guest
/// serves, runs the round trips, kills the VMM. Prints the guest's console
/// prefixed with `<label>| ` and `BENCHVSOCK label=<label> <vsock-host's
/// fields>`.
fn script(args: &Args) -> Result<String> {
    let vmm = format!(
        "{vmm} --kernel {k} --initrd {i} --cmdline \"$CL\" --vcpus 1 --memory {GUEST_MIB} \
         --vsock cid=3,uds=/run/v.sock",
        vmm = paths::VMM,
        k = paths::GUEST_VMLINUX,
        i = paths::GUEST_INITRAMFS,
    );
    let qemu = format!(
        "{qemu} -M {m} -enable-kvm -cpu host -smp 1 -m {GUEST_MIB} -nodefaults \
         -no-user-config -display none -serial stdio -no-reboot -kernel {k} -initrd {i} \
         -append \"$CL\" -device vhost-vsock-device,guest-cid=3",
        qemu = args.peer.qemu.display(),
        m = args.peer.machine,
        k = paths::GUEST_VMLINUX,
        i = paths::GUEST_INITRAMFS,
    );
    let rtt = |target: &str| {
        format!(
            "{VSOCK_HOST} rtt {target} {PORT} {} {}",
            args.count, args.size
        )
    };
    // The server listens before the guest says so: it binds at once, the
    // second is slack for a loaded nested host.
    let guest = format!("vsock-tool serve {PORT} &\nsleep 1\necho VSOCKBENCH-SERVING\nwait");
    let cmdline = guest::run_cmdline(CMDLINE, &guest)?;
    let mut s = format!(
        r#"CL='{cmdline}'
# run LABEL RTT-COMMAND VMM-COMMAND...: runs the VMM, waits until its guest
# serves, measures, kills it.
run() {{
    label=$1; rtt=$2; shift 2
    rm -f /tmp/out /run/v.sock
    "$@" </dev/null >/tmp/out 2>&1 &
    pid=$!
    t=0
    while ! grep -q VSOCKBENCH-SERVING /tmp/out && [ $t -lt {limit} ]; do
        sleep 1
        t=$((t + 1))
    done
    result=$($rtt 2>&1 | tail -n 1)
    kill $pid; wait $pid
    sed "s/^/$label| /" /tmp/out | tail -n 20
    echo "BENCHVSOCK label=$label $result"
}}
"#,
        limit = RUN_LIMIT_SECS,
    );
    for i in 0..args.iterations {
        let mut order = [
            ("vmm", rtt("uds:/run/v.sock"), &vmm),
            ("qemu", rtt("cid:3"), &qemu),
        ];
        if i % 2 == 1 {
            order.reverse();
        }
        for (name, rtt, cmd) in order {
            s.push_str(&format!("run {name}-{} '{rtt}' {cmd}\n", i + 1));
        }
    }
    Ok(s)
}

type Samples = bench::Samples<Sample>;

fn collect(outcome: &Outcome, args: &Args) -> Result<Samples> {
    let runs = (0..args.iterations).flat_map(|i| VMMS.map(|vmm| (vmm, format!("{vmm}-{}", i + 1))));
    bench::collect_runs(outcome, runs, parse_run, |s| {
        format!("p50 {:.0} us, p99 {:.0} us", s.p50, s.p99)
    })
}

fn parse_run(outcome: &Outcome, label: &str) -> Result<Sample> {
    let prefix = format!("BENCHVSOCK label={label} ");
    let line = outcome
        .lines_with(&prefix)
        .next()
        .context("the run never finished")?;
    let f = fields(line);
    let value = |key: &str| -> Result<f64> {
        let v = f.get(key).copied().unwrap_or("none");
        v.parse().with_context(|| format!("{key}={v} in {line:?}"))
    };
    Ok(Sample {
        p50: value("p50_us")?,
        p99: value("p99_us")?,
    })
}

fn print_table(samples: &Samples, args: &Args) {
    let get = |vmm: &str, metric: fn(&Sample) -> f64| bench::stats_of(samples, vmm, metric);
    println!(
        "\nvsock benchmark: {} round trips of {} bytes on one stream, host <-> guest echo; \
         1 vCPU, {GUEST_MIB} MiB; {} runs each inside the nested host (TCG); median (min..max)",
        args.count, args.size, args.iterations
    );
    let qemu = format!("qemu -M {} vhost-vsock", args.peer.machine);
    println!(
        "{:<28} | {:<22} | {:<26} | vmm/qemu",
        "metric", "vmm (hybrid, UDS)", qemu
    );
    println!("{}", "-".repeat(94));
    type Metric = (&'static str, fn(&Sample) -> f64);
    let metrics: [Metric; 2] = [
        ("round trip p50 [us]", |s| s.p50),
        ("round trip p99 [us]", |s| s.p99),
    ];
    for (name, metric) in metrics {
        let (a, b) = (get("vmm", metric), get("qemu", metric));
        println!(
            "{name:<28} | {:<22} | {:<26} | {:.2}",
            a.cell(0),
            b.cell(0),
            a.median / b.median
        );
    }
    println!(
        "\nLower is better. vmm serves vsock in its own process (one extra hop through a \
         Unix socket); vhost-vsock serves it in the host kernel."
    );
}
