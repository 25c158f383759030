//! `bench-cluster`: the time from the first step to a three-member etcd
//! cluster of node VMs that has taken its first write: Stratum (the agent
//! makes a network, three VMs from the imported node image, their disks,
//! seeds and TAPs) beside three `qemu-system-x86_64 -M microvm` guests
//! started by hand on TAPs on a bridge. A benchmark, not a test.
//!
//! Both run inside ONE nested test host on one CPU (see
//! `Scenario::host_cpus`), one after the other, booting the same kernel,
//! initramfs and Debian disk with the same user-data and addresses
//! (`stratum_tests::etcd`), 1 vCPU and 512 MiB each. Stratum's clock starts
//! at the first `nodectl vm create` (the disks are cloned within it);
//! QEMU's at the first QEMU's start, on pristine disks made before (nested
//! host drives, writes discarded). Both end when every member's endpoint
//! is healthy and a put through member 1 has succeeded, polled every two
//! seconds from the nested host with Debian's etcdctl.
//!
//! Exits 0 when every run was measured, 1 if a run failed, 2 on setup
//! errors.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use clap::Parser;
use stratum_tests::bench::{self, fields, with_qemu, PeerArgs};
use stratum_tests::etcd::{member_address, member_user_data, shell_helpers, MEMBERS, NET};
use stratum_tests::{paths, NestedHost, Outcome, Scenario};
use stratum_vm::seed::{Seed, StaticInterface};

const AGENT: &str = "/stratum/bin/node-agent";
const NODECTL: &str = "/stratum/bin/nodectl";
const JAILER: &str = "/stratum/bin/stratum-jailer";
const MKTAP: &str = "/stratum/bin/mktap";
const NODE: &str = "/stratum/node";
const BOOT: &str = "/stratum/boot";
const GUEST_MIB: u32 = 512;
const SIDES: [&str; 2] = ["stratum", "qemu"];
/// Wall-clock limit of one cluster's making, in seconds.
const RUN_LIMIT_SECS: u32 = 1800;

#[derive(Parser)]
#[command(about = "Create to a written three-member etcd cluster: Stratum beside QEMU microvm")]
struct Args {
    /// Measured clusters per side (interleaved, the order alternating).
    #[arg(long, default_value_t = 1)]
    iterations: u32,
    #[command(flatten)]
    peer: PeerArgs,
}

fn main() -> ExitCode {
    bench::exit_code("bench-cluster", run(&Args::parse()))
}

fn run(args: &Args) -> Result<()> {
    ensure!(
        (1..=8).contains(&args.iterations),
        "--iterations must be 1 to 8 (three nested-host drives per QEMU cluster)"
    );
    let host = NestedHost::from_env()?;
    let images = host.images_dir().to_path_buf();
    let dir = tempfile::tempdir()?;
    let volume = dir.path().join("node.ext4");
    stratum_tests::node_image_volume_with(&images, &volume, &[], 16)?;
    let cmdline = std::fs::read_to_string(images.join("node-cmdline"))
        .context("node-cmdline (make node-image)")?;
    let mut scenario = Scenario::new(script(args, cmdline.trim()))
        .file(AGENT, NestedHost::static_bin("node-agent"))
        .file(NODECTL, NestedHost::static_bin("nodectl"))
        .file(JAILER, NestedHost::static_bin("stratum-jailer"))
        .file(MKTAP, NestedHost::static_bin("mktap"))
        .file(format!("{BOOT}/vmlinuz"), images.join("node-vmlinuz"))
        .file(format!("{BOOT}/initrd.img"), images.join("node-initrd.img"))
        .dynamic_binary("/usr/sbin/nft", "/usr/sbin/nft")
        .dynamic_binary("/usr/bin/etcdctl", "/usr/bin/etcdctl")
        .drive(&volume)
        .memory_mib(6144)
        .host_cpus(1)
        .timeout(Duration::from_secs(
            300 + 2 * u64::from(args.iterations) * u64::from(RUN_LIMIT_SECS),
        ))
        .echo(args.peer.echo);
    for (name, _) in MEMBERS {
        let seed = dir.path().join(format!("{name}.seed"));
        member_seed(name, &seed)?;
        scenario = scenario.file(format!("{BOOT}/{name}.seed"), &seed);
    }
    // QEMU's pristine root disks: /dev/vdb onwards, three per run.
    for _ in 0..args.iterations * MEMBERS.len() as u32 {
        scenario = scenario.drive(images.join("node-rootfs.raw"));
    }
    let scenario = with_qemu(scenario, &args.peer.qemu)?;
    eprintln!(
        "bench-cluster: {} clusters per side in one nested host on one CPU (TCG; about ten \
         minutes each)",
        args.iterations
    );
    let outcome = host.run(&scenario)?;
    let runs =
        (0..args.iterations).flat_map(|i| SIDES.map(|side| (side, format!("{side}-{}", i + 1))));
    let samples = bench::collect_runs(&outcome, runs, parse_run, |ms| {
        format!("{:.1} s", ms / 1000.0)
    })?;
    print_table(&samples, args);
    Ok(())
}

/// The NoCloud seed the agent would make for member `name`: its
/// user-data and its NIC's static address, MAC as the agent derives it.
fn member_seed(name: &str, path: &Path) -> Result<()> {
    let ip = member_address(name).context("not a member")?;
    Seed {
        instance_id: format!("bench-{name}"),
        hostname: name.into(),
        user_data: member_user_data(name).context("not a member")?.into_bytes(),
        interfaces: vec![StaticInterface {
            mac: mac_of(&ip),
            addresses: vec![format!("{ip}/24")],
            gateway: Some(format!("{NET}.1")),
            nameservers: Vec::new(),
        }],
        ..Seed::default()
    }
    .write(path)?;
    Ok(())
}

/// The MAC the agent gives a NIC on a network: `06:00` and the address.
fn mac_of(ip: &str) -> String {
    let octets: Vec<String> = ip
        .split('.')
        .map(|o| format!("{:02x}", o.parse::<u8>().unwrap_or(0)))
        .collect();
    format!("06:00:{}", octets.join(":"))
}

/// The nested host's script; each run prints `BENCHCLUSTER label=<label>
/// ms=<ms>` (`ms=none` when the cluster never took the write).
fn script(args: &Args, cmdline: &str) -> String {
    let vmm = paths::VMM;
    let mut s = format!(
        r#"CTL="{NODECTL} --addr https://127.0.0.1:7443 --certs {NODE}/agent/certs"
N="timeout 300 $CTL"
{etcd}mkdir -p {NODE} && mount /dev/vda {NODE} || exit 10
mkdir -p /stratum/artifacts/node.oci && mount --bind {NODE}/node.oci /stratum/artifacts/node.oci || exit 11
{AGENT} --data-dir {NODE}/agent --listen 127.0.0.1:7443 --vmm {vmm} --reserve-cpu 0 \
    --reserve-memory-mib 512 --artifact-dir /stratum/artifacts > /run/agent.log 2>&1 &
i=0; until $N host info > /dev/null 2>&1 || [ $i -gt 300 ]; do sleep 0.2; i=$((i+1)); done
id() {{ sed -n 's/^  "id": "\(.*\)".*/\1/p' | head -1; }}
P=$($N -o json pool create bench | id)
$N image import /stratum/artifacts/node.oci --reference stratum/node:bookworm > /dev/null || tail -20 /run/agent.log
ms() {{ awk '{{printf "%d", $1 * 1000}}' /proc/uptime; }}
# written LABEL T0: until the cluster is healthy and took a put, or the limit.
written() {{
    end=$(( $(ms) + {limit}000 )); result=none
    while [ $(ms) -lt $end ]; do
        if cluster_ok && $E --endpoints=http://{NET}.11:2379 put /bench/k v > /dev/null 2>&1; then
            result=$(( $(ms) - $2 )); break
        fi
        sleep 2
    done
    echo "BENCHCLUSTER label=$1 ms=$result"
}}
run_stratum() {{
    $N network create tenant-net --cidr {NET}.0/24 --namespace $P > /dev/null || tail -20 /run/agent.log
    vms=""
    t0=$(ms)
"#,
        etcd = shell_helpers(),
        limit = RUN_LIMIT_SECS,
    );
    for (name, host) in MEMBERS {
        s += &format!(
            "    cat > /run/{name}.yaml <<'USERDATA'\n{}USERDATA\n    \
             v=$($N -o json vm create {name}-$1 --pool $P --role etcd --vcpus 1 --memory {GUEST_MIB} \
             --cpu-reservation 100 --image stratum/node:bookworm --root-disk 3Gi --nic network=tenant-net,ip={NET}.{host} \
             --user-data /run/{name}.yaml | id)\n    \
             $N vm start $v > /dev/null || tail -20 /run/agent.log\n    vms=\"$vms $v\"\n",
            member_user_data(name).unwrap_or_default(),
        );
    }
    // run_qemu LABEL DISK...: member k boots DISK k.
    let qemu_member = |k: usize, name: &str| {
        let ip = member_address(name).unwrap_or_default();
        let cid = 3 + k;
        let disk = k + 2;
        format!(
            "    {qemu} -M {m} -enable-kvm -cpu host -smp 1 -m {GUEST_MIB} -nodefaults \
             -no-user-config -display none -serial file:/tmp/$1-{name}.console -no-reboot \
             -kernel {BOOT}/vmlinuz -initrd {BOOT}/initrd.img -append '{cmdline} reboot=k' \
             -drive id=root,file=${disk},format=raw,if=none -device virtio-blk-device,drive=root \
             -drive id=seed,file={BOOT}/{name}.seed,format=raw,if=none,readonly=on \
             -device virtio-blk-device,drive=seed \
             -netdev tap,id=n0,ifname=tq{cid},script=no,downscript=no \
             -device virtio-net-device,netdev=n0,mac={mac} \
             -device vhost-vsock-device,guest-cid={cid} < /dev/null > /tmp/$1-{name}.out 2>&1 &\n    \
             pids=\"$pids $!\"\n",
            qemu = args.peer.qemu.display(),
            m = args.peer.machine,
            mac = mac_of(&ip),
        )
    };
    s += &format!(
        r#"    written $1 $t0
    for v in $vms; do $N vm kill $v > /dev/null; done
    for v in $vms; do
        i=0; until $N vm delete $v > /dev/null 2>&1 || [ $i -gt 300 ]; do sleep 0.2; i=$((i+1)); done
    done
    $N network delete tenant-net > /dev/null || tail -20 /run/agent.log
}}
run_qemu() {{
    ip link add brq type bridge && ip addr add {NET}.1/24 dev brq && ip link set brq up
    for t in 3 4 5; do {MKTAP} tq$t && ip link set tq$t master brq up; done
    pids=""
    t0=$(ms)
{members}    written $1 $t0
    kill $pids; wait $pids
    ip link del brq; for t in 3 4 5; do ip link del tq$t; done
}}
"#,
        members = MEMBERS
            .iter()
            .enumerate()
            .map(|(k, (name, _))| qemu_member(k, name))
            .collect::<String>(),
    );
    for i in 0..args.iterations {
        let mut order = SIDES;
        if i % 2 == 1 {
            order.reverse();
        }
        for side in order {
            s += &format!("run_{side} {side}-{}", i + 1);
            if side == "qemu" {
                // /dev/vda is the volume; each QEMU run has disks of its own.
                for k in 0..MEMBERS.len() {
                    let drive = b'b' + (i as usize * MEMBERS.len() + k) as u8;
                    s += &format!(" /dev/vd{}", char::from(drive));
                }
            }
            s += "\n";
        }
    }
    s
}

fn parse_run(outcome: &Outcome, label: &str) -> Result<f64> {
    let prefix = format!("BENCHCLUSTER label={label} ");
    let line = outcome
        .lines_with(&prefix)
        .next()
        .context("the run never finished")?;
    let v = fields(line).get("ms").copied().unwrap_or("none");
    v.parse()
        .with_context(|| format!("the cluster never took the write ({line:?})"))
}

fn print_table(samples: &bench::Samples<f64>, args: &Args) {
    let get = |side: &str| bench::stats_of(samples, side, |ms| ms / 1000.0);
    println!(
        "\netcd cluster benchmark: three node VMs (Debian 12, 1 vCPU, {GUEST_MIB} MiB each) to all \
         members healthy and the first write; {} clusters each inside the nested host (TCG, one \
         CPU); seconds, median (min..max)",
        args.iterations
    );
    let qemu = format!("qemu -M {} by hand", args.peer.machine);
    println!(
        "{:<34} | {:<22} | {:<22} | stratum/qemu",
        "from the first step to", "stratum (nodectl)", qemu
    );
    println!("{}", "-".repeat(98));
    let (ours, peer) = (get("stratum"), get("qemu"));
    println!(
        "{:<34} | {:<22} | {:<22} | {:.2}",
        "three healthy members + a write",
        ours.cell(1),
        peer.cell(1),
        ours.median / peer.median
    );
    println!(
        "\nLower is better. Stratum's figure includes what the agent does that QEMU's does \
         not: cloning each member's disk from the image, its seed, its TAP and firewall \
         rules, its cgroup and jail."
    );
}
