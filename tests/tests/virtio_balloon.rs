//! virtio-balloon with a real Linux guest on real KVM, in the nested test
//! host, driven through Firecracker's balloon API as its clients drive it:
//! a guest that touched memory and freed it gives it back to the host
//! when the balloon inflates (vmm's RSS drops) and gets it back when it
//! deflates; the statistics come from the guest; with `deflate_on_oom` a
//! guest that needs more than the balloon left it takes pages back from
//! the balloon instead of OOM-killing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;
use stratum_tests::guest::{run_cmdline, CMDLINE};
use stratum_tests::paths::{GUEST_INITRAMFS, GUEST_VMLINUX};
use stratum_tests::{NestedHost, Outcome, Scenario};

const API_CALL: &str = "/stratum/bin/api-call";
const MIB: u64 = 1 << 20;

fn run(script: String) -> Outcome {
    let host = NestedHost::from_env().unwrap_or_else(|e| panic!("{e}"));
    // One nested-host CPU: with two, QEMU's emulation of SVM now and then
    // crashed the nested host's kernel in __svm_vcpu_run while the balloon
    // dropped guest pages (about one run in four; see `Scenario::host_cpus`).
    let scenario = Scenario::new(script)
        .file(
            API_CALL,
            NestedHost::static_tool("STRATUM_API_CALL", "api-call"),
        )
        .host_cpus(1)
        .timeout(Duration::from_secs(900));
    let outcome = host.run(&scenario).unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.host_kvm, "the nested host has no /dev/kvm");
    outcome
}

/// Shell helpers of the nested host's side: `api METHOD PATH [BODY]`
/// echoes `API <method> <path> => HTTP <status> <body>`; `show LABEL
/// PATH` echoes `LABEL HTTP <status> <body>` of a GET; `stat NAME` is
/// one number of `GET /balloon/statistics`; `wait_stat NAME OP N` waits
/// (bounded) until it compares so and echoes it; `rss` is vmm's VmRSS in
/// KiB; `wait_for TEXT` waits (bounded) for TEXT on the guest's console.
const HELPERS: &str = "api() { r=$(/stratum/bin/api-call /tmp/api.sock \"$@\"); echo \"API $1 $2 => $r\"; }\n\
     show() { echo \"$1 $(/stratum/bin/api-call /tmp/api.sock GET $2)\"; }\n\
     stat() { /stratum/bin/api-call /tmp/api.sock GET /balloon/statistics | grep -o \"\\\"$1\\\":[0-9]*\" | cut -d: -f2; }\n\
     wait_stat() { i=0; while [ $i -lt 1500 ]; do v=$(stat $1); [ -n \"$v\" ] && [ \"$v\" $2 $3 ] && break; \
     sleep 0.1; i=$((i+1)); done; echo \"STAT $1=$v\"; }\n\
     rss() { awk '/^VmRSS/ {print $2}' /proc/$VMM/status; }\n\
     wait_for() { i=0; while ! grep -q \"$1\" /tmp/console.log && [ $i -lt 3000 ]; do sleep 0.1; i=$((i+1)); done; }\n";

/// The guest's helpers: `kb NAME` is a /proc/meminfo value in KiB, and
/// `report LABEL` echoes `LABEL total=<MemTotal> free=<MemFree>`; /fill
/// is a tmpfs of its own (the root's would stop a file at half the RAM).
/// A guest script ends waiting for the host to stop the VM (a hard stop
/// through the API), so the host reads the API after the guest's last
/// step.
const GUEST_HELPERS: &str = "kb() { awk \"/^$1:/ {print \\$2}\" /proc/meminfo; }\n\
     report() { echo \"$1 total=$(kb MemTotal) free=$(kb MemFree)\"; }\n\
     mkdir -p /fill && mount -t tmpfs -o size=240m fill /fill\n";

/// Starts vmm on the API socket in the background (`$VMM`), its console
/// in /tmp/console.log.
fn start_vmm(extra: &str) -> String {
    format!(
        "vmm --api-sock /tmp/api.sock --no-console-input {extra} > /tmp/console.log 2>&1 &\n\
         VMM=$!\n\
         i=0; while [ ! -S /tmp/api.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n"
    )
}

fn boot_requests(boot_args: &str) -> String {
    format!(
        "api PUT /boot-source '{{\"kernel_image_path\": \"{GUEST_VMLINUX}\", \
         \"initrd_path\": \"{GUEST_INITRAMFS}\", \"boot_args\": \"{boot_args}\"}}'\n\
         api PUT /machine-config '{{\"vcpu_count\": 2, \"mem_size_mib\": 256}}'\n"
    )
}

fn statuses(outcome: &Outcome, request: &str) -> Vec<String> {
    outcome
        .lines_with(&format!("API {request} =>"))
        .map(str::to_string)
        .collect()
}

/// The JSON body of the first line `LABEL HTTP 200 <body>`.
fn json_after(outcome: &Outcome, label: &str) -> Value {
    let prefix = format!("{label} ");
    let line = outcome
        .lines_with(&prefix)
        .next()
        .unwrap_or_else(|| panic!("no {label} line\n{}", outcome.console_tail(60)));
    let body = line
        .split_once("HTTP 200 ")
        .map(|(_, body)| body)
        .unwrap_or_else(|| panic!("{line}"));
    serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{label}: {e}: {body}"))
}

/// The number after `KEY` on the first line starting with it.
fn number(outcome: &Outcome, key: &str) -> u64 {
    outcome
        .lines_with(key)
        .next()
        .and_then(|l| l[key.len()..].trim().parse().ok())
        .unwrap_or_else(|| panic!("no number after {key}\n{}", outcome.console_tail(60)))
}

/// The `key=value` numbers of the first line starting with `prefix`.
fn fields(outcome: &Outcome, prefix: &str) -> std::collections::HashMap<String, u64> {
    outcome
        .lines_with(prefix)
        .next()
        .unwrap_or_else(|| panic!("no {prefix} line\n{}", outcome.console_tail(60)))
        .split_whitespace()
        .filter_map(|field| field.split_once('='))
        .filter_map(|(key, value)| Some((key.to_string(), value.parse().ok()?)))
        .collect()
}

/// The guest touches 150 MiB (a file on its RAM-backed root) and frees
/// it; the balloon then inflates to 128 MiB: the guest's MemTotal drops
/// by that much and vmm's RSS by a good part of it (the pages it gives
/// are mostly the ones it touched and freed); deflating to 0 gives the
/// guest its memory back. Statistics arrive every second and say what
/// the guest says (its total memory close to 256 MiB before).
#[test]
fn inflating_gives_touched_memory_back_to_the_host_and_deflating_returns_it() {
    let guest = GUEST_HELPERS.to_string()
        + "START=$(kb MemTotal)\n\
           report GUEST-BEFORE\n\
           dd if=/dev/zero of=/fill/file bs=1M count=150 2>/dev/null && report GUEST-FILLED\n\
           rm /fill/file\n\
           report GUEST-FREED\n\
           i=0; while [ $(kb MemTotal) -gt $((START - 120 * 1024)) ] && [ $i -lt 3000 ]; do \
           sleep 0.1; i=$((i+1)); done\n\
           report GUEST-INFLATED\n\
           i=0; while [ $(kb MemTotal) -lt $((START - 8 * 1024)) ] && [ $i -lt 3000 ]; do \
           sleep 0.1; i=$((i+1)); done\n\
           report GUEST-DEFLATED\n\
           sleep 600\n";
    let boot_args = run_cmdline(CMDLINE, &guest).unwrap_or_else(|e| panic!("{e}"));
    let script = HELPERS.to_string()
        + &start_vmm("")
        + "api GET /balloon\n"
        + &boot_requests(&boot_args)
        + "api PUT /balloon '{\"amount_mib\": 257, \"deflate_on_oom\": false}'\n\
           api PUT /balloon '{\"amount_mib\": 0, \"deflate_on_oom\": false, \"stats_polling_interval_s\": 1}'\n\
           api PUT /actions '{\"action_type\": \"InstanceStart\"}'\n\
           wait_for GUEST-FREED\n\
           wait_stat total_memory -gt 0\n\
           show STATS-BEFORE /balloon/statistics\n\
           echo RSS-PEAK=$(rss)\n\
           api PATCH /balloon '{\"amount_mib\": 128}'\n\
           wait_stat actual_mib -ge 128\n\
           echo RSS-INFLATED=$(rss)\n\
           wait_for GUEST-INFLATED\n\
           sleep 2\n\
           show STATS-INFLATED /balloon/statistics\n\
           show BALLOON-INFLATED /balloon\n\
           show CONFIG /vm/config\n\
           api PATCH /balloon '{\"amount_mib\": 257}'\n\
           api PATCH /balloon/statistics '{\"stats_polling_interval_s\": 0}'\n\
           api PATCH /balloon/statistics '{\"stats_polling_interval_s\": 2}'\n\
           api PUT /balloon '{\"amount_mib\": 1, \"deflate_on_oom\": false}'\n\
           api PATCH /balloon '{\"amount_mib\": 0}'\n\
           wait_stat actual_mib -le 0\n\
           wait_for GUEST-DEFLATED\n\
           echo RSS-DEFLATED=$(rss)\n\
           show STATS-DEFLATED /balloon/statistics\n\
           api GET /balloon/hinting/status\n\
           api PUT /stratum/actions '{\"action_type\": \"HardStop\"}'\n\
           wait $VMM; echo VMM-EXIT=$?\n\
           grep -a -e GUEST- -e 'vmm:' /tmp/console.log\n";
    let outcome = run(script);
    let tail = || outcome.console_tail(80);
    println!("{}", tail());

    // The API before boot: no balloon yet, then one too large for the
    // guest, then the balloon.
    let gets = statuses(&outcome, "GET /balloon");
    assert!(
        gets[0].contains("HTTP 400") && gets[0].contains("No balloon device found."),
        "{gets:?}"
    );
    let puts = statuses(&outcome, "PUT /balloon");
    assert!(
        puts[0].contains("HTTP 400") && puts[0].contains("Amount of pages requested is too large."),
        "{puts:?}"
    );
    assert!(puts[1].contains("HTTP 204"), "{puts:?}");
    assert!(
        puts[2].contains("HTTP 400") && puts[2].contains("not supported after starting"),
        "{puts:?}"
    );

    // Statistics before inflating: what the guest reports.
    let before = json_after(&outcome, "STATS-BEFORE");
    let total = before["total_memory"].as_u64().unwrap_or(0);
    assert!(
        (192 * MIB..=256 * MIB).contains(&total),
        "total_memory {total} is not close to 256 MiB: {before}"
    );
    assert!(before["free_memory"].as_u64() > Some(0), "{before}");
    assert!(before["available_memory"].as_u64() > Some(0), "{before}");
    assert_eq!(before["target_mib"], 0, "{before}");
    assert_eq!(before["actual_pages"], 0, "{before}");

    // The guest touched its 150 MiB.
    let guest_before = fields(&outcome, "GUEST-BEFORE ");
    let filled = fields(&outcome, "GUEST-FILLED ");
    assert!(
        filled["free"] + 140 * 1024 <= guest_before["free"],
        "the fill took {} KiB\n{}",
        guest_before["free"] - filled["free"],
        tail()
    );

    // Inflated: the guest holds 128 MiB less, vmm's RSS dropped.
    let inflated = fields(&outcome, "GUEST-INFLATED ");
    let given = guest_before["total"] - inflated["total"];
    assert!(
        (128 * 1024..=129 * 1024).contains(&given),
        "the guest's MemTotal dropped by {given} KiB\n{}",
        tail()
    );
    let stats = json_after(&outcome, "STATS-INFLATED");
    assert_eq!(
        (
            stats["target_pages"].clone(),
            stats["actual_pages"].clone(),
            stats["target_mib"].clone(),
            stats["actual_mib"].clone()
        ),
        (
            Value::from(128 * 256),
            Value::from(128 * 256),
            Value::from(128),
            Value::from(128)
        ),
        "{stats}"
    );
    let total_inflated = stats["total_memory"].as_u64().unwrap_or(0);
    assert!(
        total_inflated + 120 * MIB <= total,
        "the statistics show the smaller guest: {total_inflated} vs {total}"
    );
    let peak = number(&outcome, "RSS-PEAK=");
    let after = number(&outcome, "RSS-INFLATED=");
    println!("vmm RSS: {peak} KiB before inflating, {after} KiB inflated to 128 MiB");
    assert!(
        peak >= after + 64 * 1024,
        "vmm's RSS went from {peak} KiB to {after} KiB: less than 64 MiB given back\n{}",
        tail()
    );

    // GET /balloon and GET /vm/config show the running target.
    let balloon = json_after(&outcome, "BALLOON-INFLATED");
    assert_eq!(balloon["amount_mib"], 128, "{balloon}");
    assert_eq!(balloon["stats_polling_interval_s"], 1, "{balloon}");
    let config = json_after(&outcome, "CONFIG");
    assert_eq!(config["balloon"]["amount_mib"], 128, "{config}");

    // What a running balloon refuses, with Firecracker's texts.
    let patches = statuses(&outcome, "PATCH /balloon");
    assert!(patches[0].contains("HTTP 204"), "{patches:?}");
    assert!(
        patches[1].contains("HTTP 400")
            && patches[1].contains(
                "Balloon update error: Balloon: Requested memory should be less than 256MiB"
            ),
        "{patches:?}"
    );
    assert!(patches[2].contains("HTTP 204"), "{patches:?}");
    let stats_patches = statuses(&outcome, "PATCH /balloon/statistics");
    assert!(
        stats_patches[0].contains("HTTP 400")
            && stats_patches[0].contains("Statistics cannot be enabled/disabled after activation."),
        "{stats_patches:?}"
    );
    assert!(stats_patches[1].contains("HTTP 204"), "{stats_patches:?}");
    let hinting = statuses(&outcome, "GET /balloon/hinting/status");
    assert!(
        hinting[0].contains("HTTP 400") && hinting[0].contains("is not supported by this VMM yet."),
        "{hinting:?}"
    );

    // Deflated: the guest has its memory back.
    let deflated = fields(&outcome, "GUEST-DEFLATED ");
    assert!(
        deflated["total"] + 1024 >= guest_before["total"],
        "MemTotal {} KiB after deflating, {} before\n{}",
        deflated["total"],
        guest_before["total"],
        tail()
    );
    let stats = json_after(&outcome, "STATS-DEFLATED");
    assert_eq!(stats["actual_mib"], 0, "{stats}");
    println!(
        "vmm RSS after deflating: {} KiB",
        number(&outcome, "RSS-DEFLATED=")
    );
    assert_eq!(number(&outcome, "VMM-EXIT="), 0, "{}", tail());
}

/// `deflate_on_oom` from a config file: the balloon takes 192 MiB of the
/// 256 at boot, then the guest writes 128 MiB, more than it has left: the
/// driver gives pages back from the balloon instead of OOM-killing, the
/// write succeeds, and the statistics show the balloon smaller than its
/// target.
#[test]
fn with_deflate_on_oom_the_guest_takes_memory_back_instead_of_oom_killing() {
    let guest = GUEST_HELPERS.to_string()
        + "report GUEST-UP\n\
           i=0; while [ $(kb MemFree) -gt $((64 * 1024)) ] && [ $i -lt 3000 ]; do \
           sleep 0.1; i=$((i+1)); done\n\
           report GUEST-SQUEEZED\n\
           dd if=/dev/zero of=/fill/file bs=1M count=128 2>/dev/null; echo GUEST-FILL-EXIT=$?\n\
           echo GUEST-FILL-SIZE=$(wc -c < /fill/file)\n\
           report GUEST-AFTER\n\
           echo GUEST-OOM-KILLS=$(dmesg | grep -c -i 'killed process')\n\
           sleep 600\n";
    let boot_args = run_cmdline(CMDLINE, &guest).unwrap_or_else(|e| panic!("{e}"));
    let config = format!(
        "{{\"boot-source\": {{\"kernel_image_path\": \"{GUEST_VMLINUX}\", \
         \"initrd_path\": \"{GUEST_INITRAMFS}\", \"boot_args\": \"{boot_args}\"}}, \
         \"machine-config\": {{\"vcpu_count\": 2, \"mem_size_mib\": 256}}, \
         \"balloon\": {{\"amount_mib\": 192, \"deflate_on_oom\": true, \
         \"stats_polling_interval_s\": 1}}}}"
    );
    let script = format!(
        "{HELPERS}cat > /tmp/vm.json <<'JSON'\n{config}\nJSON\n{}\
         wait_for GUEST-SQUEEZED\n\
         wait_stat actual_mib -ge 128\n\
         show STATS-SQUEEZED /balloon/statistics\n\
         show CONFIG /vm/config\n\
         wait_for GUEST-OOM-KILLS\n\
         sleep 2\n\
         show STATS-AFTER /balloon/statistics\n\
         api PUT /stratum/actions '{{\"action_type\": \"HardStop\"}}'\n\
         wait $VMM; echo VMM-EXIT=$?\n\
         grep -a -e GUEST- -e 'vmm:' /tmp/console.log\n",
        start_vmm("--config-file /tmp/vm.json")
    );
    let outcome = run(script);
    let tail = || outcome.console_tail(60);
    println!("{}", tail());
    assert_eq!(number(&outcome, "VMM-EXIT="), 0, "{}", tail());
    let config = json_after(&outcome, "CONFIG");
    assert_eq!(
        config["balloon"],
        serde_json::json!({"amount_mib": 192, "deflate_on_oom": true,
            "stats_polling_interval_s": 1, "free_page_hinting": false,
            "free_page_reporting": false}),
        "{config}"
    );
    let squeezed = json_after(&outcome, "STATS-SQUEEZED");
    assert!(
        squeezed["actual_mib"].as_u64() >= Some(128),
        "the balloon inflated at boot: {squeezed}"
    );
    // With deflate_on_oom the guest's total stays; its free memory went.
    let up = fields(&outcome, "GUEST-UP ");
    let guest_squeezed = fields(&outcome, "GUEST-SQUEEZED ");
    assert_eq!(up["total"], guest_squeezed["total"], "{}", tail());
    assert!(guest_squeezed["free"] <= 64 * 1024, "{}", tail());

    // The write needed more than was left, and succeeded.
    assert_eq!(
        outcome
            .lines_with("GUEST-FILL-EXIT=")
            .next()
            .map(|l| l.trim_start_matches("GUEST-FILL-EXIT=")),
        Some("0"),
        "{}",
        tail()
    );
    assert_eq!(number(&outcome, "GUEST-FILL-SIZE="), 128 * MIB);
    assert!(
        128 * 1024 > guest_squeezed["free"] + 32 * 1024,
        "the write did need the balloon's pages\n{}",
        tail()
    );
    assert_eq!(number(&outcome, "GUEST-OOM-KILLS="), 0, "{}", tail());
    let after = json_after(&outcome, "STATS-AFTER");
    assert_eq!(after["target_mib"], 192, "{after}");
    let actual = after["actual_mib"].as_u64().unwrap_or(u64::MAX);
    assert!(
        actual + 32 <= squeezed["actual_mib"].as_u64().unwrap_or(0),
        "the balloon gave pages back: {squeezed} then {after}"
    );
    assert!(
        after["oom_kill"].as_u64().unwrap_or(0) == 0,
        "no OOM kill in the guest's statistics: {after}"
    );
}
