//! The Firecracker-compatible control API with a real guest on real KVM,
//! in the nested test host: boot through a sequence of PUTs as a
//! Firecracker client sends them, pause and resume with the guest still
//! alive, Ctrl+Alt+Del for a graceful shutdown, a config-file boot with a
//! custom CPU template, `PUT /serial`, and a
//! running drive's image swapped under the guest (`PATCH /drives/{id}`
//! with `path_on_host`).

use std::time::Duration;

use stratum_tests::guest::{run_cmdline, run_exits, CMDLINE};
use stratum_tests::paths::{GUEST_INITRAMFS, GUEST_VMLINUX};
use stratum_tests::{NestedHost, Outcome, Scenario};

const API_CALL: &str = "/stratum/bin/api-call";

fn run(script: String) -> Outcome {
    run_scenario(Scenario::new(script))
}

fn run_scenario(scenario: Scenario) -> Outcome {
    let host = NestedHost::from_env().unwrap_or_else(|e| panic!("{e}"));
    let scenario = scenario.file(
        API_CALL,
        NestedHost::static_tool("STRATUM_API_CALL", "api-call"),
    );
    let outcome = host.run(&scenario).unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.host_kvm, "the nested host has no /dev/kvm");
    outcome
}

/// Shell functions for the scenarios: `api METHOD PATH [BODY]` calls the
/// API and echoes `API <path> <status>`; `ticks` counts the guest's ticks
/// in its console log; `wait_for TEXT [FILE]` waits (bounded) for TEXT
/// there (or in FILE).
fn prelude() -> String {
    format!(
        "api() {{ r=$({API_CALL} /tmp/api.sock \"$@\"); echo \"API $1 $2 => $r\"; }}\n\
         ticks() {{ grep -c STRATUM-GUEST-TICK /tmp/console.log; }}\n\
         wait_for() {{ i=0; while ! grep -q \"$1\" \"${{2:-/tmp/console.log}}\" && [ $i -lt 600 ]; do \
         sleep 0.1; i=$((i+1)); done; }}\n\
         vmm --api-sock /tmp/api.sock --no-console-input > /tmp/console.log 2>&1 &\n\
         VMM=$!\n\
         i=0; while [ ! -S /tmp/api.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n"
    )
}

fn boot_requests(boot_args: &str) -> String {
    format!(
        "api PUT /boot-source '{{\"kernel_image_path\": \"{GUEST_VMLINUX}\", \
         \"initrd_path\": \"{GUEST_INITRAMFS}\", \"boot_args\": \"{boot_args}\"}}'\n\
         api PUT /machine-config '{{\"vcpu_count\": 2, \"mem_size_mib\": 256}}'\n\
         api PUT /actions '{{\"action_type\": \"InstanceStart\"}}'\n"
    )
}

fn status_of(outcome: &Outcome, request: &str) -> Vec<String> {
    outcome
        .lines_with(&format!("API {request} =>"))
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
}

fn assert_status(outcome: &Outcome, request: &str, code: u16) {
    let lines = status_of(outcome, request);
    assert!(
        lines.iter().any(|l| l.contains(&format!("=> HTTP {code}"))),
        "{request}: expected HTTP {code}, got {lines:?}\n{}",
        outcome.console_tail(40)
    );
}

fn value_of(outcome: &Outcome, key: &str) -> Option<String> {
    outcome
        .lines_with(key)
        .next()
        .map(|l| l.trim_start_matches(key).trim().to_string())
}

#[test]
fn boot_pause_resume_and_ctrl_alt_del_through_the_api() {
    let script = prelude()
        + &boot_requests("console=ttyS0 reboot=k panic=-1 pci=off quiet stratum.exit=wait")
        + "wait_for STRATUM-GUEST-TICK\n\
           api PUT /actions '{\"action_type\": \"InstanceStart\"}'\n\
           api PUT /boot-source '{\"kernel_image_path\": \"/stratum/guest/vmlinux\"}'\n\
           api PUT /actions '{\"action_type\": \"FlushMetrics\"}'\n\
           api GET /\n\
           api PATCH /vm '{\"state\": \"Paused\"}'\n\
           api GET /\n\
           A=$(ticks); sleep 3; B=$(ticks)\n\
           echo PAUSED-TICKS $A $B\n\
           api PATCH /vm '{\"state\": \"Resumed\"}'\n\
           sleep 3; C=$(ticks)\n\
           echo RESUMED-TICKS $C\n\
           api PUT /actions '{\"action_type\": \"SendCtrlAltDel\"}'\n\
           wait $VMM; echo VMM-EXIT=$?\n\
           grep -c STRATUM-GUEST-CTRL-ALT-DEL /tmp/console.log | sed s/^/CAD-SEEN=/\n";
    // Pausing and resuming on two nested-host CPUs may crash the host's
    // kernel (see `Scenario::host_cpus`).
    let outcome = run_scenario(Scenario::new(script).host_cpus(1));
    assert_status(&outcome, "PUT /boot-source", 204);
    assert_status(&outcome, "PUT /machine-config", 204);
    assert_status(&outcome, "PUT /actions", 204);
    // The second InstanceStart and a boot-source change after start fail.
    assert_status(&outcome, "PUT /actions", 400);
    assert_status(&outcome, "PUT /boot-source", 400);
    // A flush with no metrics configured does nothing once the VM runs,
    // as in Firecracker.
    let actions = status_of(&outcome, "PUT /actions");
    assert_eq!(actions.len(), 4, "{actions:?}");
    assert!(actions[2].contains("=> HTTP 204"), "{actions:?}");
    assert_status(&outcome, "PATCH /vm", 204);
    assert!(
        status_of(&outcome, "GET /")
            .iter()
            .any(|l| l.contains("Paused")),
        "GET / reports the paused state: {:?}",
        status_of(&outcome, "GET /")
    );
    let paused = value_of(&outcome, "PAUSED-TICKS").unwrap_or_default();
    let counts: Vec<u32> = paused
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!(counts.len(), 2, "{}", outcome.console_tail(40));
    assert!(counts[0] > 0, "the guest ran before the pause");
    assert_eq!(counts[0], counts[1], "no guest progress while paused");
    let resumed: u32 = value_of(&outcome, "RESUMED-TICKS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(resumed > counts[1], "the guest runs again after resume");
    assert_eq!(value_of(&outcome, "CAD-SEEN=").as_deref(), Some("1"));
    assert_eq!(value_of(&outcome, "VMM-EXIT=").as_deref(), Some("0"));
}

#[test]
fn devices_through_the_api_and_a_hard_stop() {
    let script = "dd if=/dev/zero of=/tmp/disk.img bs=1M count=4 2>/dev/null\n".to_string()
        + &prelude()
        + "api PUT /drives/data '{\"drive_id\": \"data\", \"path_on_host\": \"/tmp/disk.img\", \
           \"is_root_device\": false, \"is_read_only\": true}'\n\
           api PUT /drives/other '{\"drive_id\": \"data\", \"path_on_host\": \"/tmp/disk.img\", \
           \"is_root_device\": false}'\n\
           api PUT /entropy '{}'\n\
           api PUT /vsock '{\"guest_cid\": 3, \"uds_path\": \"/run/api-v.sock\"}'\n\
           api PUT /serial '{\"serial_out_path\": \"\"}'\n\
           api PUT /serial '{\"serial_out_path\": \"/tmp/serial.out\", \
           \"rate_limiter\": {\"size\": 1048576, \"refill_time\": 100}}'\n"
        + &boot_requests("console=ttyS0 reboot=k panic=-1 pci=off quiet stratum.exit=wait")
        + "wait_for STRATUM-GUEST-TICK /tmp/serial.out\n\
           echo SERIAL-OUT-TICKS=$(grep -c STRATUM-GUEST-TICK /tmp/serial.out)\n\
           echo STDOUT-TICKS=$(grep -c STRATUM-GUEST-TICK /tmp/console.log)\n\
           api PUT /serial '{\"serial_out_path\": \"/tmp/late.out\"}'\n\
           api GET /vm/config\n\
           api PUT /drives/late '{\"drive_id\": \"late\", \"path_on_host\": \"/tmp/disk.img\", \
           \"is_root_device\": false}'\n\
           api GET /stratum/stats\n\
           [ -S /run/api-v.sock ] && echo VSOCK-SOCKET=bound\n\
           api PUT /stratum/actions '{\"action_type\": \"HardStop\"}'\n\
           wait $VMM; echo VMM-EXIT=$?\n\
           [ -e /run/api-v.sock ] || echo VSOCK-SOCKET=removed\n";
    let outcome = run(script);
    assert_status(&outcome, "PUT /drives/data", 204);
    assert_status(&outcome, "PUT /drives/other", 400); // ids differ
    assert_status(&outcome, "PUT /entropy", 204);
    assert_status(&outcome, "PUT /vsock", 204);
    assert_status(&outcome, "PUT /drives/late", 400); // after boot
                                                      // The console went where PUT /serial said, not to stdout; a path is
                                                      // refused after boot, as in Firecracker.
    let serial: Vec<String> = status_of(&outcome, "PUT /serial")
        .iter()
        .map(|l| {
            l.split("=> HTTP ")
                .nth(1)
                .unwrap_or("")
                .chars()
                .take(3)
                .collect()
        })
        .collect();
    assert_eq!(
        serial,
        ["400", "204", "400"],
        "empty path, the file, after boot"
    );
    let ticks = value_of(&outcome, "SERIAL-OUT-TICKS=").unwrap_or_default();
    assert!(
        ticks.parse::<u32>().unwrap_or(0) > 0,
        "ticks in serial_out_path: {ticks}"
    );
    assert_eq!(value_of(&outcome, "STDOUT-TICKS=").as_deref(), Some("0"));
    let config = status_of(&outcome, "GET /vm/config").join(" ");
    assert!(
        config.contains("\"drive_id\":\"data\"") && config.contains("\"is_read_only\":true"),
        "GET /vm/config lists the drive: {config}"
    );
    assert_status(&outcome, "GET /stratum/stats", 200);
    let stats = status_of(&outcome, "GET /stratum/stats").join(" ");
    let body = stats.split_once("HTTP 200 ").map(|(_, b)| b).unwrap_or("");
    let stats: serde_json::Value = serde_json::from_str(body.trim())
        .unwrap_or_else(|e| panic!("stats are JSON ({e}): {body}"));
    assert_eq!(stats["vcpus"].as_array().map(Vec::len), Some(2));
    assert!(
        stats["vcpus"][0]["exits"]["io_out"].as_u64() > Some(0),
        "the guest's console writes are port I/O exits: {stats}"
    );
    let kinds: Vec<&str> = stats["devices"]
        .as_array()
        .map(|d| d.iter().filter_map(|d| d["type"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(kinds, ["block", "vsock", "rng"], "{stats}");
    assert_eq!(stats["devices"][0]["id"], "data");
    // The guest's init wrote the boot timer before its first tick.
    let boot_us = stats["guest_boot_time_us"].as_u64().unwrap_or(0);
    let uptime_us = stats["uptime_ms"].as_u64().unwrap_or(0) * 1000;
    assert!(
        boot_us > 0 && boot_us < uptime_us + 1_000_000,
        "guest boot time {boot_us} us, uptime {uptime_us} us: {stats}"
    );
    assert_eq!(
        value_of(&outcome, "VSOCK-SOCKET=").as_deref(),
        Some("bound")
    );
    assert!(
        outcome.lines_with("VSOCK-SOCKET=removed").next().is_some(),
        "the vsock socket is removed when the VM ends"
    );
    assert_status(&outcome, "PUT /stratum/actions", 204);
    assert_eq!(value_of(&outcome, "VMM-EXIT=").as_deref(), Some("0"));
}

/// A config file as Firecracker takes it, with a custom CPU template
/// (`cpu-config`) that takes POPCNT (CPUID.1:ECX bit 23) from the guest:
/// the nested host has it, the guest's /proc/cpuinfo does not. Its MSR
/// modifier (IA32_MISC_ENABLE, no bit changed) goes through KVM's
/// read and write of the MSR.
#[test]
fn boot_from_a_firecracker_config_file() {
    let boot_args = run_cmdline(
        "console=ttyS0 reboot=k panic=-1 pci=off quiet",
        "echo GUEST-POPCNT=$(grep -c -w popcnt /proc/cpuinfo)\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let config = format!(
        "{{\"boot-source\": {{\"kernel_image_path\": \"{GUEST_VMLINUX}\", \
         \"initrd_path\": \"{GUEST_INITRAMFS}\", \
         \"boot_args\": \"{boot_args}\"}}, \
         \"machine-config\": {{\"vcpu_count\": 2, \"mem_size_mib\": 256}}, \
         \"cpu-config\": {{\"cpuid_modifiers\": [{{\"leaf\": \"0x1\", \"subleaf\": \"0x0\", \
         \"flags\": 0, \"modifiers\": [{{\"register\": \"ecx\", \
         \"bitmap\": \"0bxxxxxxxx0xxxxxxxxxxxxxxxxxxxxxxx\"}}]}}], \
         \"msr_modifiers\": [{{\"addr\": \"0x1a0\", \"bitmap\": \"0bx\"}}]}}}}"
    );
    let script = format!(
        "echo HOST-POPCNT=$(grep -c -w popcnt /proc/cpuinfo)\n\
         cat > /tmp/vm.json <<'JSON'\n{config}\nJSON\n\
         vmm --config-file /tmp/vm.json --no-console-input\n\
         echo VMM-EXIT=$?\n"
    );
    let outcome = run(script);
    assert!(
        outcome
            .lines_with("STRATUM-GUEST-UP cpus=2")
            .next()
            .is_some(),
        "{}",
        outcome.console_tail(30)
    );
    let host = value_of(&outcome, "HOST-POPCNT=").unwrap_or_default();
    assert!(
        host.parse::<u32>().unwrap_or(0) > 0,
        "the nested host has POPCNT: {host}"
    );
    assert_eq!(
        value_of(&outcome, "GUEST-POPCNT=").as_deref(),
        Some("0"),
        "the template took it from the guest\n{}",
        outcome.console_tail(30)
    );
    assert_eq!(value_of(&outcome, "VMM-EXIT=").as_deref(), Some("0"));
}

/// The guest's part of the image swap; vda is the data drive. It reports
/// image A (size and marker), waits for the host's `STILL-A` in A's second
/// sector (written after the refused PATCHes, so the drive still serves
/// A), then waits for the capacity to change and reads image B: its first
/// and last sectors with O_DIRECT, the first again through the page cache
/// once dropped (the guest's cache still holds A's sector 0 from the
/// partition scan), the serial; and writes a sector, which must land in B.
fn swap_guest_script() -> String {
    "rd() { dd if=/dev/vda bs=512 skip=$1 count=1 iflag=direct 2>/dev/null | head -c $2; }\n\
     size() { cat /sys/block/vda/size; }\n\
     echo GUEST-A size=$(size) marker=$(rd 0 12)\n\
     i=0; while [ \"$(rd 1 7)\" != STILL-A ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done\n\
     echo GUEST-STILL-A size=$(size) marker=$(rd 1 7)\n\
     i=0; while [ \"$(size)\" = 2048 ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done\n\
     echo GUEST-B size=$(size) marker=$(rd 0 12) end=$(rd 4095 11) serial=$(cat /sys/block/vda/serial)\n\
     echo 3 > /proc/sys/vm/drop_caches\n\
     echo GUEST-B-CACHED marker=$(dd if=/dev/vda bs=512 count=1 2>/dev/null | head -c 12)\n\
     printf GUEST-WROTE-B | dd of=/dev/vda bs=512 seek=2 conv=fsync 2>/dev/null\n"
        .to_string()
}

/// The `key=value` fields of the first console line starting with
/// `prefix`.
fn fields(outcome: &Outcome, prefix: &str) -> std::collections::HashMap<String, String> {
    outcome
        .lines_with(prefix)
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|field| field.split_once('='))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

fn field<'a>(fields: &'a std::collections::HashMap<String, String>, key: &str) -> &'a str {
    fields.get(key).map_or("", String::as_str)
}

/// `PATCH /drives/{id}` with `path_on_host` on a running guest: A (1 MiB)
/// is swapped for B (2 MiB), and the guest sees B's size and data without
/// a reboot. First a PATCH before boot, and PATCHes naming a missing
/// file, a directory and a FIFO are refused (400, the FIFO at once) and
/// the guest still reads A. The swap's body also sets a rate limiter, and
/// GET /vm/config shows both.
#[test]
fn a_running_drive_gets_a_new_image_through_patch() {
    let boot_args = run_cmdline(CMDLINE, &swap_guest_script()).unwrap_or_else(|e| panic!("{e}"));
    let patch = |path: &str, extra: &str| {
        format!(
            "api PATCH /drives/data '{{\"drive_id\": \"data\", \"path_on_host\": \"{path}\"{extra}}}'\n"
        )
    };
    let script = "dd if=/dev/zero of=/tmp/a.img bs=1M count=1 2>/dev/null\n\
                  printf IMAGE-A-0123 | dd of=/tmp/a.img conv=notrunc 2>/dev/null\n\
                  dd if=/dev/zero of=/tmp/b.img bs=1M count=2 2>/dev/null\n\
                  printf IMAGE-B-4567 | dd of=/tmp/b.img conv=notrunc 2>/dev/null\n\
                  printf IMAGE-B-END | dd of=/tmp/b.img bs=512 seek=4095 conv=notrunc 2>/dev/null\n\
                  mkfifo /tmp/fifo; mkdir -p /tmp/dir\n"
        .to_string()
        + &prelude()
        + "api PUT /drives/data '{\"drive_id\": \"data\", \"path_on_host\": \"/tmp/a.img\", \
           \"is_root_device\": false}'\n"
        + &patch("/tmp/b.img", "")
        + &boot_requests(&boot_args)
        + "wait_for GUEST-A\n"
        + &patch("/tmp/missing.img", "")
        + &patch("/tmp/dir", "")
        + &patch("/tmp/fifo", "")
        + "printf STILL-A | dd of=/tmp/a.img bs=512 seek=1 conv=notrunc 2>/dev/null\n\
           wait_for GUEST-STILL-A\n"
        + &patch(
            "/tmp/b.img",
            ", \"rate_limiter\": {\"ops\": {\"size\": 1000, \"refill_time\": 100}}",
        )
        + "api GET /vm/config\n\
           wait $VMM; echo VMM-EXIT=$?\n\
           echo A-HAS-GUEST-WRITE=$(grep -c GUEST-WROTE-B /tmp/a.img)\n\
           echo B-HAS-GUEST-WRITE=$(grep -c GUEST-WROTE-B /tmp/b.img)\n\
           cat /tmp/console.log\n";
    let outcome = run_scenario(Scenario::new(script).timeout(Duration::from_secs(360)));
    let tail = || outcome.console_tail(60);
    assert_eq!(run_exits(&outcome), ["0"], "{}", tail());
    assert_eq!(value_of(&outcome, "VMM-EXIT=").as_deref(), Some("0"));

    // The API: refused before boot, then three bad paths with what was
    // wrong, then the swap.
    let patches = status_of(&outcome, "PATCH /drives/data");
    let expected = [
        (
            "HTTP 400",
            "not supported before starting the microVM: PATCH /drives",
        ),
        ("HTTP 400", "/tmp/missing.img: No such file or directory"),
        ("HTTP 400", "/tmp/dir: Is a directory"),
        (
            "HTTP 400",
            "/tmp/fifo: is not a regular file or a block device",
        ),
        ("HTTP 204", ""),
    ];
    assert_eq!(patches.len(), expected.len(), "{patches:?}\n{}", tail());
    for (line, (status, message)) in patches.iter().zip(expected) {
        assert!(
            line.contains(&format!("=> {status}")) && line.contains(message),
            "expected {status} {message:?}: {line}"
        );
    }
    let config = status_of(&outcome, "GET /vm/config").join(" ");
    let body = config.split_once("HTTP 200 ").map_or("", |(_, b)| b);
    let config: serde_json::Value = serde_json::from_str(body.trim())
        .unwrap_or_else(|e| panic!("GET /vm/config is JSON ({e}): {config}"));
    assert_eq!(
        config["drives"][0]["path_on_host"], "/tmp/b.img",
        "{config}"
    );
    assert_eq!(
        config["drives"][0]["rate_limiter"],
        serde_json::json!({"ops": {"size": 1000, "refill_time": 100}}),
        "{config}"
    );

    // The guest: A, still A after the refusals, then B without a reboot.
    let a = fields(&outcome, "GUEST-A ");
    assert_eq!(
        (field(&a, "size"), field(&a, "marker")),
        ("2048", "IMAGE-A-0123"),
        "{}",
        tail()
    );
    let still = fields(&outcome, "GUEST-STILL-A ");
    assert_eq!(
        (field(&still, "size"), field(&still, "marker")),
        ("2048", "STILL-A"),
        "{}",
        tail()
    );
    let b = fields(&outcome, "GUEST-B ");
    assert_eq!(field(&b, "size"), "4096", "the new capacity\n{}", tail());
    assert_eq!(field(&b, "marker"), "IMAGE-B-4567", "{}", tail());
    assert_eq!(
        field(&b, "end"),
        "IMAGE-B-END",
        "B's last sector\n{}",
        tail()
    );
    assert_eq!(field(&b, "serial"), "data", "{}", tail());
    let cached = fields(&outcome, "GUEST-B-CACHED ");
    assert_eq!(field(&cached, "marker"), "IMAGE-B-4567", "{}", tail());
    assert_eq!(
        value_of(&outcome, "B-HAS-GUEST-WRITE=").as_deref(),
        Some("1")
    );
    assert_eq!(
        value_of(&outcome, "A-HAS-GUEST-WRITE=").as_deref(),
        Some("0")
    );
}
