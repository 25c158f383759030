//! The node agent with real Linux guests on real KVM, in the nested test
//! host (cgroup v2 there): a VM driven through nodectl from create to a
//! graceful shutdown, its console streamed, its leaf cgroup and its vmm's
//! jail checked (uid, namespaces, capabilities, seccomp, root), the agent
//! killed with -9 and the running VM re-adopted, and a VM in a pool whose
//! memory limit it outgrows OOM-killed and reported FAILED.

use stratum_tests::paths::{GUEST_INITRAMFS, GUEST_VMLINUX, VMM};
use stratum_tests::{NestedHost, Outcome, Scenario};

const AGENT: &str = "/stratum/bin/node-agent";
const NODECTL: &str = "/stratum/bin/nodectl";
/// Beside the agent, where it looks for its jailer by default.
const JAILER: &str = "/stratum/bin/stratum-jailer";
/// Where the guest kernel and initramfs are: the agent's artifact directory.
const GUEST_DIR: &str = "/stratum/guest";

fn run(script: String) -> Outcome {
    let host = NestedHost::from_env().unwrap_or_else(|e| panic!("{e}"));
    let scenario = Scenario::new(script)
        .file(AGENT, NestedHost::static_bin("node-agent"))
        .file(NODECTL, NestedHost::static_bin("nodectl"))
        .file(JAILER, NestedHost::static_bin("stratum-jailer"))
        .timeout(std::time::Duration::from_secs(400));
    let outcome = host.run(&scenario).unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.host_kvm, "the nested host has no /dev/kvm");
    outcome
}

/// Shell helpers: start the agent, wait for it, read a VM's state, wait
/// for a state, take the id out of `-o json` output.
fn prelude() -> String {
    format!(
        r#"N="{NODECTL} --insecure --addr http://127.0.0.1:7443"
start_agent() {{
    {AGENT} --data-dir /run/agent --insecure-plaintext --listen 127.0.0.1:7443 \
        --vmm {VMM} --reserve-cpu 0 --reserve-memory-mib 256 --artifact-dir {GUEST_DIR} \
        >> /run/agent.log 2>&1 &
    AGENT_PID=$!
    i=0; until $N host info > /run/host.txt 2>&1 || [ $i -gt 150 ]; do sleep 0.2; i=$((i+1)); done
}}
state() {{ $N vm get "$1" | awk '/^STATE/ {{print $2}}'; }}
wait_state() {{
    i=0; while [ "$(state "$1")" != "$2" ] && [ $i -lt 450 ]; do sleep 0.2; i=$((i+1)); done
}}
json_id() {{ sed -n 's/^  "id": "\([a-z]*-[0-9]*\)".*/\1/p' | head -n 1; }}
"#
    )
}

fn value<'a>(outcome: &'a Outcome, key: &str) -> Option<&'a str> {
    outcome
        .console
        .lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .map(str::trim)
}

#[test]
fn a_real_guest_through_the_agent_from_create_to_shutdown_across_an_agent_crash() {
    let cmdline = "console=ttyS0 reboot=k panic=-1 pci=off quiet stratum.exit=wait";
    let script = prelude()
        + &format!(
            r#"start_agent
grep -E '^(CGROUP|KVM)' /run/host.txt | sed 's/^/HOST-/'
pool=$($N -o json pool create prod --cpu-reservation 1000m --mem-reservation 1Gi | json_id)
echo POOL=$pool
vm=$($N -o json vm create cp1 --pool $pool --role control-plane --vcpus 1 --memory 256 \
     --kernel {GUEST_VMLINUX} --initrd {GUEST_INITRAMFS} --cmdline '{cmdline}' | json_id)
echo VM=$vm
$N vm start $vm > /dev/null; echo START-RC=$?
echo STATE-AFTER-START=$(state $vm)
timeout 60 $N vm console $vm --history | grep -m 1 -o 'STRATUM-GUEST-TICK' | sed 's/^/CONSOLE-/'
leaf=/sys/fs/cgroup/stratum/$pool/vm-$vm
comms() {{ for p in $(cat $leaf/cgroup.procs); do cat /proc/$p/comm; done; }}
echo VMM-IN-LEAF=$(comms | grep -c '^vmm$')
# KVM puts its per-VM kernel threads (kvm-nx-lpage-recovery) in the cgroup
# of the process that made the VM: their CPU time counts for the VM too.
echo OTHERS-NOT-KVM=$(comms | grep -v '^vmm$' | grep -vc '^kvm')
echo LEAF-MEMORY-MAX=$(cat $leaf/memory.max)
echo LEAF-CPU-MAX=$(cat $leaf/cpu.max)
echo POOL-MEMORY-MIN=$(cat /sys/fs/cgroup/stratum/$pool/memory.min)
pid1=$($N vm get $vm | awk '/^PID/ {{print $2}}')
# The vmm in its jail, as the host's /proc shows it.
echo VM-UID=$($N vm get $vm | awk '/^UID/ {{print $2}}')
for f in Uid CapEff CapBnd NoNewPrivs Seccomp NSpid; do
    echo "JAIL-$f=$(awk -v k=$f: '$1 == k {{$1 = ""; print substr($0, 2)}}' /proc/$pid1/status)"
done
for ns in mnt pid ipc uts net; do
    [ "$(readlink /proc/$pid1/ns/$ns)" = "$(readlink /proc/$AGENT_PID/ns/$ns)" ] && echo JAIL-SHARES-$ns=yes || echo JAIL-SHARES-$ns=no
done
echo JAIL-ROOT=$(ls /proc/$pid1/root | tr '\n' ' ')
kill -9 $AGENT_PID; wait $AGENT_PID 2>/dev/null
echo VMM-ALIVE-WITHOUT-AGENT=$([ -d /proc/$pid1 ] && echo yes || echo no)
start_agent
echo STATE-AFTER-RESTART=$(state $vm)
echo PID-SAME=$([ "$($N vm get $vm | awk '/^PID/ {{print $2}}')" = "$pid1" ] && echo yes || echo no)
$N vm stop $vm --timeout 60 > /dev/null
wait_state $vm STOPPED
echo STATE-AFTER-STOP=$(state $vm)
$N -o json vm get $vm | grep '"reason"' | sed 's/^ */REASON-/'
echo GUEST-SAW-CAD=$(grep -c STRATUM-GUEST-CTRL-ALT-DEL /run/agent/vms/$vm/run/console.log)
echo LEAF-GONE=$([ -d $leaf ] && echo no || echo yes)
$N vm delete $vm; echo DELETE-RC=$?
echo VM-DIR-GONE=$([ -d /run/agent/vms/$vm ] && echo no || echo yes)
"#
        );
    let outcome = run(script);
    let tail = outcome.console_tail(60);
    let expect = |key: &str, want: &str| {
        assert_eq!(value(&outcome, key), Some(want), "{key}\n{tail}");
    };
    expect("HOST-CGROUP", "v2");
    expect("START-RC=", "0");
    expect("STATE-AFTER-START=", "RUNNING");
    expect("CONSOLE-", "STRATUM-GUEST-TICK");
    expect("VMM-IN-LEAF=", "1");
    expect("OTHERS-NOT-KVM=", "0");
    expect("LEAF-MEMORY-MAX=", &((256 + 16) << 20).to_string());
    expect("LEAF-CPU-MAX=", "100000 100000");
    expect("POOL-MEMORY-MIN=", &(1u64 << 30).to_string());
    let uid = value(&outcome, "VM-UID=").unwrap_or_default().to_string();
    assert!(uid.starts_with("19000"), "a jail uid: {uid:?}\n{tail}");
    expect("JAIL-Uid=", &[uid.as_str(); 4].join(" "));
    expect("JAIL-CapEff=", "0000000000000000");
    expect("JAIL-CapBnd=", "0000000000000000");
    expect("JAIL-NoNewPrivs=", "1");
    expect("JAIL-Seccomp=", "2");
    let nspid = value(&outcome, "JAIL-NSpid=").unwrap_or_default();
    assert!(
        nspid.ends_with(" 1"),
        "PID 1 of its own namespace: {nspid}\n{tail}"
    );
    for ns in ["mnt", "pid", "ipc", "uts"] {
        expect(&format!("JAIL-SHARES-{ns}="), "no");
    }
    expect("JAIL-SHARES-net=", "yes");
    expect("JAIL-ROOT=", "dev run vm vmm");
    expect("VMM-ALIVE-WITHOUT-AGENT=", "yes");
    expect("STATE-AFTER-RESTART=", "RUNNING");
    expect("PID-SAME=", "yes");
    expect("STATE-AFTER-STOP=", "STOPPED");
    expect("GUEST-SAW-CAD=", "1");
    expect("LEAF-GONE=", "yes");
    expect("DELETE-RC=", "0");
    expect("VM-DIR-GONE=", "yes");
    let reason = value(&outcome, "REASON-").unwrap_or_default();
    // The agent restarted since it launched this vmm: it learns that the
    // process ended, not its exit status; vmm's own last line says how
    // the guest ended (its init powers off on Ctrl+Alt+Del).
    assert!(
        reason.contains("the guest powered off (ACPI S5)"),
        "{reason}\n{tail}"
    );
}

#[test]
fn a_vm_outgrowing_its_pool_memory_limit_is_oom_killed_and_reported() {
    // Reservation 16 MiB (+16 overhead) fits the pool; the guest then
    // writes 3/4 of its 256 MiB, past the pool's 96 MiB limit.
    let cmdline = "console=ttyS0 reboot=k panic=-1 pci=off quiet stratum.exit=fill-memory";
    let script = prelude()
        + &format!(
            r#"start_agent
pool=$($N -o json pool create tiny --mem-limit 96Mi | json_id)
vm=$($N -o json vm create hog --pool $pool --role worker --vcpus 1 --memory 256 --mem-reservation 16 \
     --kernel {GUEST_VMLINUX} --initrd {GUEST_INITRAMFS} --cmdline '{cmdline}' | json_id)
# --settle 0: the start itself succeeds; the OOM kill comes when it comes.
$N vm start --settle 0 $vm > /dev/null; echo START-RC=$?
wait_state $vm FAILED
echo HOG-STATE=$(state $vm)
$N -o json vm get $vm | grep '"reason"' | sed 's/^ */REASON-/'
echo OOM-KILLS=$(awk '/^oom_kill / {{print $2}}' /sys/fs/cgroup/stratum/$pool/memory.events)
echo FILLED=$(grep -c STRATUM-GUEST-FILLED /run/agent/vms/$vm/run/console.log)
"#
        );
    let outcome = run(script);
    let tail = outcome.console_tail(40);
    assert_eq!(value(&outcome, "START-RC="), Some("0"), "{tail}");
    assert_eq!(value(&outcome, "HOG-STATE="), Some("FAILED"), "{tail}");
    let reason = value(&outcome, "REASON-").unwrap_or_default();
    assert!(reason.contains("OOM"), "{reason}\n{tail}");
    assert_ne!(value(&outcome, "OOM-KILLS="), Some("0"), "{tail}");
    assert_eq!(
        value(&outcome, "FILLED="),
        Some("0"),
        "killed before it filled: {tail}"
    );
}

#[test]
fn a_spinning_vm_in_a_pool_limited_to_half_a_core_gets_half_a_core() {
    let cmdline = "console=ttyS0 reboot=k panic=-1 pci=off quiet stratum.exit=spin";
    let script = prelude()
        + &format!(
            r#"start_agent
pool=$($N -o json pool create capped --cpu-limit 500m --cpu-shares high | json_id)
vm=$($N -o json vm create spinner --pool $pool --role worker --vcpus 1 --memory 128 \
     --kernel {GUEST_VMLINUX} --initrd {GUEST_INITRAMFS} --cmdline '{cmdline}' | json_id)
$N vm start $vm > /dev/null; echo START-RC=$?
i=0; until grep -q STRATUM-GUEST-SPINNING /run/agent/vms/$vm/run/console.log || [ $i -gt 300 ]; do sleep 0.2; i=$((i+1)); done
cg=/sys/fs/cgroup/stratum/$pool
usage() {{ awk '/^usage_usec/ {{print $2}}' $cg/cpu.stat; }}
a=$(usage); t0=$(cut -d' ' -f1 /proc/uptime)
sleep 4
b=$(usage); t1=$(cut -d' ' -f1 /proc/uptime)
echo CPU-CORES=$(awk "BEGIN {{printf \"%.3f\", ($b - $a) / (($t1 - $t0) * 1000000)}}")
echo POOL-CPU-MAX=$(cat $cg/cpu.max)
echo POOL-CPU-WEIGHT=$(cat $cg/cpu.weight)
$N vm kill $vm > /dev/null
"#
        );
    let outcome = run(script);
    let tail = outcome.console_tail(30);
    assert_eq!(value(&outcome, "START-RC="), Some("0"), "{tail}");
    assert_eq!(
        value(&outcome, "POOL-CPU-MAX="),
        Some("50000 100000"),
        "{tail}"
    );
    // HIGH shares = 2048 on the v1 scale = weight 200.
    assert_eq!(value(&outcome, "POOL-CPU-WEIGHT="), Some("200"), "{tail}");
    let cores: f64 = value(&outcome, "CPU-CORES=")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no CPU figure:\n{tail}"));
    assert!(
        (0.35..=0.65).contains(&cores),
        "the spinning VM used {cores} cores under a 500m limit:\n{tail}"
    );
}
