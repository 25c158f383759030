//! Firecracker's rate limiter on virtio-blk, with a real guest on real KVM
//! in the nested test host: a drive limited through the config file, then
//! limited harder through `PATCH /drives/{id}` while the guest runs, each
//! read by the guest with O_DIRECT `dd`, and an unlimited drive beside it.
//!
//! A limiter can only make reads slower, so the assertions are lower
//! bounds on the elapsed time (upper bounds on the rate), which a slow or
//! loaded machine cannot break. The unlimited drive's figures are printed
//! for comparison, never asserted against: on a nested TCG host they say
//! little.

use std::time::Duration;

use stratum_tests::guest::{run_cmdline, run_exits, CMDLINE};
use stratum_tests::paths::{GUEST_INITRAMFS, GUEST_VMLINUX};
use stratum_tests::{NestedHost, Outcome, Scenario};

const API_CALL: &str = "/stratum/bin/api-call";
const MIB: u64 = 1 << 20;

/// The limit the config file sets: 4 MiB/s, a 4 MiB bucket, no burst.
const LIMIT: u64 = 4 * MIB;
/// Read from the limited drive at that limit.
const LIMITED_READ: u64 = 16 * MIB;
/// The limit PATCH sets while the guest runs: 2 MiB/s, a 2 MiB bucket.
const PATCHED_LIMIT: u64 = 2 * MIB;
/// Read after the PATCH.
const PATCHED_READ: u64 = 8 * MIB;
/// The guest measures with its own clock (/proc/uptime, 10 ms steps):
/// allow it to run 10% slow against the host's.
const CLOCK_TOLERANCE: f64 = 0.9;

/// The guest's part: time O_DIRECT reads of the unlimited drive (vdb) and
/// of the limited one (vda), then wait for the host's "GO" in the first
/// sector of vdb (written after its PATCH) and time a read of vda again.
/// Each timing is `NAME <start> <end> <dd's last line>`, times from
/// /proc/uptime.
fn guest_script() -> String {
    format!(
        "t() {{ cut -d' ' -f1 /proc/uptime; }}\n\
         rd() {{ a=$(t); s=$(dd if=$2 of=/dev/null bs=1M count=$3 iflag=direct 2>&1 | tail -n 1); \
         echo \"$1 $a $(t) $s\"; }}\n\
         rd FREE /dev/vdb {free}\n\
         rd LIMITED /dev/vda {limited}\n\
         echo PHASE1-DONE\n\
         i=0; while [ \"$(dd if=/dev/vdb bs=512 count=1 iflag=direct 2>/dev/null | head -c 2)\" != GO ] \
         && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done\n\
         rd PATCHED /dev/vda {patched}\n",
        free = LIMITED_READ / MIB,
        limited = LIMITED_READ / MIB,
        patched = PATCHED_READ / MIB,
    )
}

/// The nested host's part: two 16 MiB images, a config file with the
/// limited drive first (vda), vmm booting from it with the API served, and
/// the PATCHes once the guest has done its first reads.
fn host_script() -> String {
    let boot_args = run_cmdline(CMDLINE, &guest_script()).unwrap_or_else(|e| panic!("{e}"));
    let config = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{GUEST_VMLINUX}", "initrd_path": "{GUEST_INITRAMFS}",
  "boot_args": "{boot_args}"}},
 "machine-config": {{"vcpu_count": 1, "mem_size_mib": 256}},
 "drives": [
  {{"drive_id": "limited", "path_on_host": "/tmp/limited.img", "is_root_device": false,
    "is_read_only": true,
    "rate_limiter": {{"bandwidth": {{"size": {LIMIT}, "one_time_burst": 0, "refill_time": 1000}},
                      "ops": {{"size": 0, "refill_time": 0}}}}}},
  {{"drive_id": "free", "path_on_host": "/tmp/free.img", "is_root_device": false,
    "rate_limiter": null}}]}}"#
    );
    let patch = format!(
        r#"{{"drive_id": "limited", "rate_limiter": {{"bandwidth": {{"size": {PATCHED_LIMIT}, "refill_time": 1000}}}}}}"#
    );
    // A swap to a missing image, with a limiter that would lift the
    // bandwidth limit: refused as a whole, so neither takes effect.
    let bad_swap = concat!(
        r#"{"drive_id": "limited", "path_on_host": "/tmp/nosuch.img", "#,
        r#""rate_limiter": {"bandwidth": {"size": 0, "refill_time": 0}}}"#
    );
    format!(
        "api() {{ r=$({API_CALL} /tmp/api.sock \"$@\"); echo \"API $1 $2 => $r\"; }}\n\
         dd if=/dev/zero of=/tmp/limited.img bs=1M count=16 2>/dev/null\n\
         dd if=/dev/zero of=/tmp/free.img bs=1M count=16 2>/dev/null\n\
         cat > /tmp/vm.json <<'JSON'\n{config}\nJSON\n\
         vmm --config-file /tmp/vm.json --api-sock /tmp/api.sock --no-console-input \
         > /tmp/console.log 2>&1 &\n\
         VMM=$!\n\
         i=0; while ! grep -q PHASE1-DONE /tmp/console.log && [ $i -lt 2400 ]; do \
         sleep 0.1; i=$((i+1)); done\n\
         api PATCH /drives/limited '{patch}'\n\
         api PATCH /drives/limited '{bad_swap}'\n\
         api PATCH /drives/nosuch '{{\"drive_id\": \"nosuch\"}}'\n\
         api GET /vm/config\n\
         printf GO | dd of=/tmp/free.img conv=notrunc 2>/dev/null\n\
         wait $VMM; echo VMM-EXIT=$?\n\
         cat /tmp/console.log\n"
    )
}

/// (start, end, dd's summary) of the guest's timing line `NAME ...`.
fn timing<'a>(outcome: &'a Outcome, name: &str) -> (f64, f64, &'a str) {
    let prefix = format!("{name} ");
    let line = outcome
        .console
        .lines()
        .map(str::trim_start)
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {name} line:\n{}", outcome.console_tail(60)));
    let mut fields = line.splitn(3, ' ');
    let mut time = || -> f64 {
        fields
            .next()
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| panic!("malformed {line:?}"))
    };
    let (start, end) = (time(), time());
    (start, end, fields.next().unwrap_or(""))
}

/// The elapsed seconds of the guest's read `name` of `bytes` bytes,
/// printed with its rate.
fn elapsed(outcome: &Outcome, name: &str, bytes: u64) -> f64 {
    let (start, end, dd) = timing(outcome, name);
    // Busybox dd's last line: whole 1 MiB blocks, none partial.
    assert_eq!(
        dd,
        format!("{}+0 records out", bytes / MIB),
        "{name}: dd did not read {bytes} bytes\n{}",
        outcome.console_tail(60)
    );
    let secs = end - start;
    eprintln!(
        "{name}: {bytes} bytes in {secs:.2} s = {:.2} MiB/s (dd: {dd})",
        bytes as f64 / MIB as f64 / secs.max(0.01)
    );
    secs
}

/// The least time reading `bytes` can take through a bucket of `size`
/// bytes that refills in a second (it starts full): what is read beyond
/// the bucket, at the refill rate.
fn least_secs(bytes: u64, size: u64) -> f64 {
    (bytes - size) as f64 / size as f64 * CLOCK_TOLERANCE
}

/// What the scenario's `api` printed for `request` ("METHOD PATH"): the
/// status and body of each call.
fn api_status<'a>(outcome: &'a Outcome, request: &str) -> Vec<&'a str> {
    let prefix = format!("API {request} => ");
    outcome
        .console
        .lines()
        .map(str::trim_start)
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

#[test]
fn a_drive_is_read_no_faster_than_its_limit_before_and_after_a_patch() {
    let host = NestedHost::from_env().unwrap_or_else(|e| panic!("{e}"));
    let scenario = Scenario::new(host_script())
        .file(
            API_CALL,
            NestedHost::static_tool("STRATUM_API_CALL", "api-call"),
        )
        .timeout(Duration::from_secs(400));
    let outcome = host.run(&scenario).unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.host_kvm, "the nested host has no /dev/kvm");
    let tail = || outcome.console_tail(60);

    assert_eq!(run_exits(&outcome), ["0"], "{}", tail());
    assert!(
        outcome.lines_with("VMM-EXIT=0").next().is_some(),
        "{}",
        tail()
    );

    // The API: the limiter PATCH is taken, a swap to a missing image (with
    // a limiter) and an unknown drive are refused, and GET /vm/config
    // shows the first PATCH's limit.
    let patches = api_status(&outcome, "PATCH /drives/limited");
    assert_eq!(patches.len(), 2, "{}", tail());
    assert!(patches[0].starts_with("HTTP 204"), "{patches:?}");
    assert!(
        patches[1].starts_with("HTTP 400") && patches[1].contains("/tmp/nosuch.img"),
        "{patches:?}"
    );
    let unknown = api_status(&outcome, "PATCH /drives/nosuch");
    assert!(
        unknown.len() == 1 && unknown[0].starts_with("HTTP 400"),
        "{unknown:?}"
    );
    let config = api_status(&outcome, "GET /vm/config").join(" ");
    let body = config.split_once("HTTP 200 ").map_or("", |(_, b)| b);
    let config: serde_json::Value = serde_json::from_str(body.trim())
        .unwrap_or_else(|e| panic!("GET /vm/config is JSON ({e}): {config}"));
    assert_eq!(
        config["drives"][0]["rate_limiter"],
        serde_json::json!({"bandwidth": {"size": PATCHED_LIMIT, "refill_time": 1000}}),
        "{config}"
    );
    assert!(
        config["drives"][1].get("rate_limiter").is_none(),
        "{config}"
    );

    // The reads. The unlimited one is only reported.
    elapsed(&outcome, "FREE", LIMITED_READ);
    let limited = elapsed(&outcome, "LIMITED", LIMITED_READ);
    let least = least_secs(LIMITED_READ, LIMIT);
    assert!(
        limited >= least,
        "{LIMITED_READ} bytes at {LIMIT} bytes/s took {limited:.2} s, less than {least:.2} s"
    );
    let patched = elapsed(&outcome, "PATCHED", PATCHED_READ);
    let least = least_secs(PATCHED_READ, PATCHED_LIMIT);
    assert!(
        patched >= least,
        "{PATCHED_READ} bytes at {PATCHED_LIMIT} bytes/s (after PATCH) took {patched:.2} s, \
         less than {least:.2} s"
    );
}
