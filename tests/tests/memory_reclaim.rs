//! The agent's memory reclaim with real guests on real KVM, in the nested
//! test host (cgroup v2): two VMs in a pool limited to 480 MiB, whose
//! memory (256 + 320 MiB, each with 16 MiB of vmm overhead) overcommits
//! it. `idle` reserves 64 of its 256 MiB and gets a balloon; its guest
//! touches 200 MiB and frees it, so its vmm holds that memory though the
//! guest does not use it. `busy` reserves all of its 320 MiB (no balloon)
//! and its guest fills 240 MiB, 4 MiB a second: together they would pass
//! the pool's limit, and the kernel would OOM-kill a vmm. Checked:
//! - the reclaim inflated idle's balloon as the pool neared its limit:
//!   its target above zero, idle's guest saw its free memory shrink by as
//!   much,
//!   idle's vmm gave the pages back (its resident set fell), the pool's
//!   working set ended below the reclaim's high mark, and no process in
//!   the pool was OOM-killed: both VMs still run, busy filled everything;
//! - once busy is gone the balloon is let down: its target back to zero
//!   and idle's guest has its free memory again.
//!
//! On one nested-host CPU, as every balloon scenario (see
//! `Scenario::host_cpus`).

// Test helpers may panic: a broken fixture fails the test that uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use stratum_tests::guest::{run_cmdline, CMDLINE};
use stratum_tests::paths::{GUEST_INITRAMFS, GUEST_VMLINUX, VMM};
use stratum_tests::{NestedHost, Outcome, Scenario};

const AGENT: &str = "/stratum/bin/node-agent";
const NODECTL: &str = "/stratum/bin/nodectl";
/// Beside the agent, where it looks for its jailer by default.
const JAILER: &str = "/stratum/bin/stratum-jailer";
/// Where the guest kernel and initramfs are: the agent's artifact directory.
const GUEST_DIR: &str = "/stratum/guest";
const POOL_LIMIT_MIB: u64 = 480;
/// The reclaim's default high mark, percent of the limit.
const HIGH_PERCENT: u64 = 90;

/// The guest's helpers: `kb NAME` is a /proc/meminfo value in KiB; /fill
/// is a tmpfs of its own (the root's would stop a file at half the RAM).
const GUEST_HELPERS: &str = "kb() { awk \"/^$1:/ {print \\$2}\" /proc/meminfo; }\n\
     mkdir -p /fill && mount -t tmpfs -o size=280m fill /fill\n";

/// idle: touches 200 MiB and frees it, then says how much memory it has
/// every second.
fn idle_guest() -> String {
    GUEST_HELPERS.to_string()
        + "dd if=/dev/zero of=/fill/file bs=1M count=200 2>/dev/null\n\
           rm /fill/file\n\
           echo IDLE-FREED free=$(kb MemFree)\n\
           while :; do echo IDLE-MEM total=$(kb MemTotal) free=$(kb MemFree); sleep 1; done\n"
}

/// busy: fills 240 MiB, 4 MiB a second, and holds it.
fn busy_guest() -> String {
    GUEST_HELPERS.to_string()
        + "i=0; while [ $i -lt 60 ]; do dd if=/dev/zero of=/fill/f$i bs=1M count=4 2>/dev/null \
           || echo BUSY-FILL-FAILED; i=$((i+1)); sleep 1; done\n\
           echo BUSY-FILLED used=$(du -sm /fill | cut -f1)\n\
           while :; do sleep 10; done\n"
}

fn script() -> String {
    let idle = run_cmdline(CMDLINE, &idle_guest()).unwrap_or_else(|e| panic!("{e}"));
    let busy = run_cmdline(CMDLINE, &busy_guest()).unwrap_or_else(|e| panic!("{e}"));
    format!(
        r#"N="{NODECTL} --insecure --addr http://127.0.0.1:7443"
{AGENT} --data-dir /run/agent --insecure-plaintext --listen 127.0.0.1:7443 \
    --vmm {VMM} --reserve-cpu 0 --reserve-memory-mib 256 --artifact-dir {GUEST_DIR} \
    >> /run/agent.log 2>&1 &
i=0; until $N host info > /dev/null 2>&1 || [ $i -gt 150 ]; do sleep 0.2; i=$((i+1)); done
json_id() {{ sed -n 's/^  "id": "\([a-z]*-[0-9]*\)".*/\1/p' | head -n 1; }}
state() {{ $N vm get "$1" | awk '/^STATE/ {{print $2}}'; }}
target() {{ $N -o json vm get "$1" | sed -n 's/.*"targetMib": \([0-9]*\).*/\1/p' | head -1; }}
console() {{ cat /run/agent/vms/$1/run/console.log 2>/dev/null; }}
last_free() {{ console "$1" | grep -a IDLE-MEM | tail -1 | sed 's/.*free=\([0-9]*\).*/\1/'; }}
wait_console() {{ i=0; until console "$1" | grep -aq "$2" || [ $i -gt 900 ]; do sleep 0.2; i=$((i+1)); done; }}
rss() {{ awk '/^VmRSS/ {{print $2}}' /proc/$($N vm get "$1" | awk '/^PID/ {{print $2}}')/status; }}
pool_dir() {{ echo /sys/fs/cgroup/stratum/$pool; }}
working_set() {{
    cur=$(cat $(pool_dir)/memory.current)
    inactive=$(awk '$1 == "inactive_file" {{print $2}}' $(pool_dir)/memory.stat)
    echo $(( (cur - inactive) >> 20 ))
}}
pool=$($N -o json pool create tight --mem-limit {POOL_LIMIT_MIB}Mi | json_id)
idle=$($N -o json vm create idle --pool $pool --role worker --vcpus 1 --memory 256 --mem-reservation 64 \
     --kernel {GUEST_VMLINUX} --initrd {GUEST_INITRAMFS} --cmdline '{idle}' | json_id)
busy=$($N -o json vm create busy --pool $pool --role worker --vcpus 1 --memory 320 --mem-reservation 320 \
     --kernel {GUEST_VMLINUX} --initrd {GUEST_INITRAMFS} --cmdline '{busy}' | json_id)
$N vm start $idle > /dev/null; echo IDLE-START-RC=$?
wait_console $idle IDLE-FREED
console $idle | grep -a -m1 IDLE-FREED
echo IDLE-RSS-FREED=$(rss $idle)
echo WS-BEFORE-BUSY=$(working_set)
$N vm start $busy > /dev/null; echo BUSY-START-RC=$?
peak=0
i=0; until console $busy | grep -aq BUSY-FILLED || [ $i -gt 300 ]; do
    ws=$(working_set); [ $ws -gt $peak ] && peak=$ws
    sleep 0.5; i=$((i+1))
done
echo WS-PEAK=$peak
console $busy | grep -a -e BUSY-FILLED -e BUSY-FILL-FAILED | sed 's/^/BUSY-SAYS /'
sleep 6
echo WS-AFTER=$(working_set)
echo IDLE-TARGET=$(target $idle)
echo IDLE-FREE-RECLAIMED=$(last_free $idle)
echo IDLE-RSS-RECLAIMED=$(rss $idle)
echo IDLE-STATE=$(state $idle)
echo BUSY-STATE=$(state $busy)
echo OOM-KILLS=$(awk '$1 == "oom_kill" {{print $2}}' $(pool_dir)/memory.events)
$N vm get $idle | grep -a BALLOON | sed 's/^/IDLE-ROW /'
$N vm kill $busy > /dev/null; echo BUSY-KILL-RC=$?
i=0; until [ "$(target $idle)" = 0 ] || [ $i -gt 150 ]; do sleep 0.2; i=$((i+1)); done
sleep 3
echo IDLE-TARGET-RELEASED=$(target $idle)
echo IDLE-FREE-RELEASED=$(last_free $idle)
grep -a 'memory reclaim' /run/agent.log | tail -5 | sed 's/^/AGENT-LOG /'
"#
    )
}

fn run() -> Outcome {
    let host = NestedHost::from_env().unwrap_or_else(|e| panic!("{e}"));
    let scenario = Scenario::new(script())
        .file(AGENT, NestedHost::static_bin("node-agent"))
        .file(NODECTL, NestedHost::static_bin("nodectl"))
        .file(JAILER, NestedHost::static_bin("stratum-jailer"))
        .host_cpus(1)
        .timeout(Duration::from_secs(900));
    let outcome = host.run(&scenario).unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.host_kvm, "the nested host has no /dev/kvm");
    outcome
}

fn number(outcome: &Outcome, key: &str) -> u64 {
    let value = outcome.value(key);
    value
        .parse()
        .unwrap_or_else(|_| panic!("{key}{value:?}\n{}", outcome.console_tail(60)))
}

#[test]
fn an_idle_vms_balloon_gives_its_pool_room_before_the_limit_and_is_let_down_after() {
    let outcome = run();
    let tail = outcome.console_tail(60);
    println!("{tail}");
    for key in ["IDLE-START-RC=", "BUSY-START-RC=", "BUSY-KILL-RC="] {
        assert_eq!(outcome.value(key), "0", "{key}\n{tail}");
    }
    // Nothing died, and busy got all it asked for.
    assert_eq!(outcome.value("OOM-KILLS="), "0", "{tail}");
    assert_eq!(outcome.value("IDLE-STATE="), "RUNNING", "{tail}");
    assert_eq!(outcome.value("BUSY-STATE="), "RUNNING", "{tail}");
    assert!(
        outcome
            .lines_with("BUSY-SAYS BUSY-FILLED used=240")
            .next()
            .is_some(),
        "{tail}"
    );
    assert!(
        outcome
            .lines_with("BUSY-SAYS BUSY-FILL-FAILED")
            .next()
            .is_none(),
        "{tail}"
    );

    // The balloon took memory from idle, which its guest saw and its vmm
    // gave back.
    let target = number(&outcome, "IDLE-TARGET=");
    assert!((32..=192).contains(&target), "target {target}\n{tail}");
    // With deflate-on-OOM, Linux's driver leaves MemTotal as it was: the
    // balloon's pages are taken from what is free.
    let freed_free = number(&outcome, "IDLE-FREED free=");
    let reclaimed_free = number(&outcome, "IDLE-FREE-RECLAIMED=");
    assert!(
        reclaimed_free + (target - 8) * 1024 <= freed_free,
        "guest MemFree {freed_free} KiB -> {reclaimed_free} with a {target} MiB balloon\n{tail}"
    );
    let rss_freed = number(&outcome, "IDLE-RSS-FREED=");
    let rss_reclaimed = number(&outcome, "IDLE-RSS-RECLAIMED=");
    assert!(
        rss_reclaimed + target * 1024 / 2 <= rss_freed,
        "idle's vmm {rss_freed} KiB -> {rss_reclaimed} with a {target} MiB balloon\n{tail}"
    );
    let high = POOL_LIMIT_MIB * HIGH_PERCENT / 100;
    let peak = number(&outcome, "WS-PEAK=");
    let after = number(&outcome, "WS-AFTER=");
    assert!(peak < POOL_LIMIT_MIB, "peak {peak}\n{tail}");
    assert!(after < high, "working set {after} MiB after\n{tail}");
    assert!(
        outcome.lines_with("IDLE-ROW BALLOON").next().is_some(),
        "{tail}"
    );

    // busy gone: the balloon is let down and idle's guest has its memory.
    assert_eq!(outcome.value("IDLE-TARGET-RELEASED="), "0", "{tail}");
    let released_free = number(&outcome, "IDLE-FREE-RELEASED=");
    assert!(
        released_free + 8 * 1024 >= freed_free,
        "guest MemFree {released_free} KiB after, {freed_free} before\n{tail}"
    );
}
