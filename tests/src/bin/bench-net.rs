//! `bench-net`: VM-to-VM TCP round-trip latency and throughput over a
//! Stratum network (two `vmm` VMs the agent made, their TAPs on the
//! network's bridge under its firewall) beside two `qemu-system-x86_64 -M
//! microvm` guests with `virtio-net-device` on TAPs on a plain bridge. A
//! benchmark, not a test.
//!
//! Both run inside ONE nested test host, interleaved, with the same guest
//! (ELF kernel, initramfs, 1 vCPU, 256 MiB each), the same addresses and
//! MACs and the same command lines: the server guest runs `tcp-bench
//! serve` (guest-images/tcp-bench.c), the client guest `tcp-bench client`:
//! `--rounds` one-byte round trips on one connection, then `--bytes` sent
//! on another. QEMU's TAP backend runs without vhost-net, as our vmm
//! serves virtio-net in its own process too.
//!
//! Exits 0 when every run was measured, 1 if a run failed, 2 on setup
//! errors.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use clap::Parser;
use stratum_tests::bench::{self, fields, with_qemu, PeerArgs};
use stratum_tests::{guest, paths, NestedHost, Outcome, Scenario};

const AGENT: &str = "/stratum/bin/node-agent";
const NODECTL: &str = "/stratum/bin/nodectl";
const JAILER: &str = "/stratum/bin/stratum-jailer";
const MKTAP: &str = "/stratum/bin/mktap";
const GUEST_MIB: u32 = 256;
/// The guests' command line before their script.
const CMDLINE: &str = "console=ttyS0 reboot=t panic=-1 pci=off quiet";
const PORT: u16 = 5001;
const SERVER: (&str, &str) = ("10.60.0.11", "06:00:0a:3c:00:0b");
const CLIENT: (&str, &str) = ("10.60.0.12", "06:00:0a:3c:00:0c");
const VMMS: [&str; 2] = ["stratum", "qemu"];
/// Wall-clock limit of one run inside the nested host, in seconds.
const RUN_LIMIT_SECS: u32 = 300;

#[derive(Parser)]
#[command(about = "VM-to-VM TCP latency and throughput: a Stratum network beside QEMU microvm")]
struct Args {
    /// Measured runs per side (interleaved, the order alternating).
    #[arg(long, default_value_t = 3)]
    iterations: u32,
    /// One-byte round trips per run.
    #[arg(long, default_value_t = 2000)]
    rounds: u32,
    /// Bytes sent per run.
    #[arg(long, default_value_t = 128 << 20)]
    bytes: u64,
    #[command(flatten)]
    peer: PeerArgs,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    p50_us: f64,
    p99_us: f64,
    mbit_s: f64,
}

fn main() -> ExitCode {
    bench::exit_code("bench-net", run(&Args::parse()))
}

fn run(args: &Args) -> Result<()> {
    ensure!(args.iterations > 0, "--iterations must be at least 1");
    ensure!(
        args.rounds > 0 && args.bytes > 0,
        "--rounds and --bytes must be positive"
    );
    let host = NestedHost::from_env()?;
    let scenario = Scenario::new(script(args)?)
        .file(AGENT, NestedHost::static_bin("node-agent"))
        .file(NODECTL, NestedHost::static_bin("nodectl"))
        .file(JAILER, NestedHost::static_bin("stratum-jailer"))
        .file(MKTAP, NestedHost::static_bin("mktap"))
        .dynamic_binary("/usr/sbin/nft", "/usr/sbin/nft")
        .memory_mib(2048)
        .timeout(Duration::from_secs(
            180 + 2 * u64::from(args.iterations) * u64::from(RUN_LIMIT_SECS),
        ))
        .echo(args.peer.echo);
    let scenario = with_qemu(scenario, &args.peer.qemu)?;
    eprintln!(
        "bench-net: {} runs per side in one nested host (TCG; takes a few minutes)",
        args.iterations
    );
    let outcome = host.run(&scenario)?;
    let runs =
        (0..args.iterations).flat_map(|i| VMMS.map(|side| (side, format!("{side}-{}", i + 1))));
    let samples = bench::collect_runs(&outcome, runs, parse_run, |s| {
        format!(
            "rtt p50 {:.0} us, p99 {:.0} us, {:.0} Mbit/s",
            s.p50_us, s.p99_us, s.mbit_s
        )
    })?;
    print_table(&samples, args);
    Ok(())
}

/// The guests' scripts: the server serves; the client retries until the
/// server answers, then measures once.
fn guest_cmdlines(args: &Args) -> Result<(String, String)> {
    let (server_ip, _) = SERVER;
    let (client_ip, _) = CLIENT;
    let up = |ip: &str| format!("ip addr add {ip}/24 dev eth0 && ip link set eth0 up");
    let server = format!("{}\ntcp-bench serve {PORT}", up(server_ip));
    let client = format!(
        "{}\ni=0; until tcp-bench client {server_ip} {PORT} {} {}; do \
         i=$((i+1)); [ $i -gt 120 ] && break; sleep 1; done\necho NETBENCH-DONE",
        up(client_ip),
        args.rounds,
        args.bytes
    );
    Ok((
        guest::run_cmdline(CMDLINE, &server)?,
        guest::run_cmdline(CMDLINE, &client)?,
    ))
}

/// The nested host's script. Stratum's side: an agent, a pool and a
/// network; per run two VMs made, started, killed and deleted through
/// nodectl. QEMU's side: a bridge and two TAPs made once; per run two
/// QEMUs. Each run prints `BENCHNET label=<label> <tcp-bench's fields>`.
fn script(args: &Args) -> Result<String> {
    let (server_cl, client_cl) = guest_cmdlines(args)?;
    let qemu = |tap: &str, mac: &str, cl: &str| {
        format!(
            "{qemu} -M {m} -enable-kvm -cpu host -smp 1 -m {GUEST_MIB} -nodefaults \
             -no-user-config -display none -serial stdio -no-reboot -kernel {k} -initrd {i} \
             -append \"${cl}\" -netdev tap,id=n0,ifname={tap},script=no,downscript=no \
             -device virtio-net-device,netdev=n0,mac={mac}",
            qemu = args.peer.qemu.display(),
            m = args.peer.machine,
            k = paths::GUEST_VMLINUX,
            i = paths::GUEST_INITRAMFS,
        )
    };
    let vmm = paths::VMM;
    let mut s = format!(
        r#"SCL='{server_cl}'
CCL='{client_cl}'
N="{NODECTL} --addr https://127.0.0.1:7443 --certs /run/agent/certs"
{AGENT} --data-dir /run/agent --listen 127.0.0.1:7443 --vmm {vmm} --reserve-cpu 0 \
    --reserve-memory-mib 128 --artifact-dir /stratum/guest > /run/agent.log 2>&1 &
i=0; until $N host info > /dev/null 2>&1 || [ $i -gt 300 ]; do sleep 0.2; i=$((i+1)); done
id() {{ sed -n 's/^  "id": "\(.*\)".*/\1/p' | head -1; }}
P=$($N -o json pool create bench | id)
$N network create bench --cidr 10.60.0.0/24 --namespace $P > /dev/null || tail -20 /run/agent.log
ip link add brq type bridge && ip link set brq up
for t in tq1 tq2; do {MKTAP} $t && ip link set $t master brq up; done
# wait_done FILE: until the client reports, or the limit.
wait_done() {{
    t=0; while ! grep -q NETBENCH-DONE "$1" 2>/dev/null && [ $t -lt {limit} ]; do sleep 1; t=$((t+1)); done
}}
report() {{ echo "BENCHNET label=$1 $(grep -a -o 'TCP-BENCH .*' "$2" | tr -d '\r' | tail -1)"; }}
mkvm() {{
    $N -o json vm create "$1" --pool $P --role worker --vcpus 1 --memory {GUEST_MIB} \
        --kernel {k} --initrd {i} --cmdline "$2" --nic network=bench,ip=$3 | id
}}
run_stratum() {{
    S=$(mkvm server-$1 "$SCL" {server_ip}); C=$(mkvm client-$1 "$CCL" {client_ip})
    $N vm start $S > /dev/null && $N vm start $C > /dev/null || tail -20 /run/agent.log
    out=/run/agent/vms/$C/run/console.log
    wait_done $out
    report $1 $out
    grep -a -i 'tcp-bench:' $out | tail -3 | sed "s/^/$1| /"
    # No result: what each guest and the agent last said.
    grep -a -q TCP-BENCH $out || for v in $C $S; do
        $N vm get $v | grep -E '^(STATE|REASON)' | sed "s/^/$1| $v /"
        tail -4 /run/agent/vms/$v/run/console.log | sed "s/^/$1| $v console: /"
    done
    for v in $C $S; do $N vm kill $v > /dev/null 2>&1; done
    for v in $C $S; do
        i=0; until $N vm delete $v > /dev/null 2>&1 || [ $i -gt 100 ]; do sleep 0.2; i=$((i+1)); done
    done
}}
run_qemu() {{
    rm -f /tmp/qs.out /tmp/qc.out
    {qemu_server} < /dev/null > /tmp/qs.out 2>&1 &
    qs=$!
    {qemu_client} < /dev/null > /tmp/qc.out 2>&1 &
    qc=$!
    wait_done /tmp/qc.out
    report $1 /tmp/qc.out
    grep -a -i 'tcp-bench:\|qemu' /tmp/qc.out /tmp/qs.out | tail -5 | sed "s/^/$1| /"
    kill $qs $qc 2> /dev/null; wait $qs $qc
}}
"#,
        limit = RUN_LIMIT_SECS,
        k = paths::GUEST_VMLINUX,
        i = paths::GUEST_INITRAMFS,
        server_ip = SERVER.0,
        client_ip = CLIENT.0,
        qemu_server = qemu("tq1", SERVER.1, "SCL"),
        qemu_client = qemu("tq2", CLIENT.1, "CCL"),
    );
    for i in 0..args.iterations {
        let mut order = VMMS;
        if i % 2 == 1 {
            order.reverse();
        }
        for side in order {
            s.push_str(&format!("run_{side} {side}-{}\n", i + 1));
        }
    }
    Ok(s)
}

fn parse_run(outcome: &Outcome, label: &str) -> Result<Sample> {
    let prefix = format!("BENCHNET label={label} ");
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
        p50_us: value("rtt_p50_us")?,
        p99_us: value("rtt_p99_us")?,
        mbit_s: value("mbit_s")?,
    })
}

fn print_table(samples: &bench::Samples<Sample>, args: &Args) {
    let get = |side: &str, metric: fn(&Sample) -> f64| bench::stats_of(samples, side, metric);
    println!(
        "\nnetwork benchmark: guest to guest over TCP, {} one-byte round trips and {} MiB sent; \
         1 vCPU, {GUEST_MIB} MiB each; {} runs each inside the nested host (TCG); median (min..max)",
        args.rounds,
        args.bytes >> 20,
        args.iterations
    );
    let qemu = format!("qemu -M {} + bridge", args.peer.machine);
    println!(
        "{:<24} | {:<26} | {:<26} | stratum/qemu",
        "metric", "stratum network (vmm)", qemu
    );
    println!("{}", "-".repeat(96));
    type Metric = (&'static str, fn(&Sample) -> f64);
    let metrics: [Metric; 3] = [
        ("round trip p50 [us]", |s| s.p50_us),
        ("round trip p99 [us]", |s| s.p99_us),
        ("throughput [Mbit/s]", |s| s.mbit_s),
    ];
    for (name, metric) in metrics {
        let (a, b) = (get("stratum", metric), get("qemu", metric));
        println!(
            "{name:<24} | {:<26} | {:<26} | {:.2}",
            a.cell(0),
            b.cell(0),
            a.median / b.median
        );
    }
    println!(
        "\nLatency: lower is better; throughput: higher is better. Stratum's path adds the \
         network's firewall (bridge and inet nftables chains) that the plain bridge has not."
    );
}
