//! Snapshots with a real guest on real KVM, in the nested test host: a
//! guest counting ticks (and reading its virtio-rng each tick) is paused
//! and snapshotted through Firecracker's API, its vmm killed; another vmm
//! loads the snapshot and the guest counts on from where it was — no new
//! boot, its entropy device working — and a third loads it paused, stays
//! silent until resumed, then counts on too (two VMs from one snapshot).
//! The memory file is sparse. A snapshot of a running VM, a load into a
//! configured VMM, and truncated, corrupt, newer and foreign state files
//! are refused with what is wrong, and the VMM that refused them then
//! loads the good one. A Diff snapshot of a VM that does not track dirty
//! pages is refused.
//!
//! Diff snapshots: a guest tracking dirty pages writes a marker to its
//! RAM-backed root, is snapshotted Full, writes a second marker and is
//! snapshotted Diff over a copy of the Full memory file; a vmm restoring
//! the merged pair (tracking again) sees both markers, and takes a Diff of
//! its own to a new file, a sparse file of only the dirty pages. Both
//! Diffs write far less than the Full.

// Test helpers may panic: a broken fixture fails the test that uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use stratum_tests::guest::run_cmdline;
use stratum_tests::paths::{GUEST_INITRAMFS, GUEST_VMLINUX};
use stratum_tests::{NestedHost, Outcome, Scenario};

const API_CALL: &str = "/stratum/bin/api-call";
const VSOCK_HOST: &str = "/stratum/bin/vsock-host";

fn value(outcome: &Outcome, key: &str) -> Option<String> {
    outcome
        .lines_with(key)
        .next()
        .map(|l| l.trim_start_matches(key).trim().to_string())
}

fn number(outcome: &Outcome, key: &str) -> u64 {
    value(outcome, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number for {key}\n{}", outcome.console_tail(60)))
}

/// The answers to `method path` on `vm`'s socket, in order.
fn answers(outcome: &Outcome, vm: &str, request: &str) -> Vec<String> {
    outcome
        .lines_with(&format!("API {vm} {request} =>"))
        .map(str::to_string)
        .collect()
}

fn script() -> String {
    let guest = run_cmdline(
        "console=ttyS0 reboot=k panic=-1 pci=off quiet",
        "vsock-tool serve 52 > /dev/null & \
         while true; do echo SNAP-RNG=$(head -c 8 /dev/hwrng | wc -c); sleep 1; done & \
         i=0; while true; do i=$((i+1)); echo SNAP-TICK=$i; sleep 0.3; done",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let bad_load =
        "\"{\\\"snapshot_path\\\": \\\"$bad\\\", \\\"mem_file_path\\\": \\\"/tmp/vm.mem\\\"}\"";
    let load = |state: &str, resume: bool, vsock: &str| {
        format!(
            "'{{\"snapshot_path\": \"{state}\", \"mem_backend\": {{\"backend_type\": \"File\", \
             \"backend_path\": \"/tmp/vm.mem\"}}, \"resume_vm\": {resume}, \
             \"vsock_override\": {{\"uds_path\": \"{vsock}\"}}}}'"
        )
    };
    format!(
        r#"api() {{ vm=$1; shift; r=$({API_CALL} /tmp/$vm.sock "$@"); echo "API $vm $1 $2 => $r"; }}
last_tick() {{ grep -a -o 'SNAP-TICK=[0-9]*' /tmp/$1.log | tail -1 | cut -d= -f2; }}
first_tick() {{ grep -a -o 'SNAP-TICK=[0-9]*' /tmp/$1.log | head -1 | cut -d= -f2; }}
wait_tick() {{ i=0; while :; do t=$(last_tick $1); [ -n "$t" ] && [ "$t" -ge $2 ] && break
    [ $i -gt 1200 ] && break; sleep 0.1; i=$((i+1)); done; }}
start_vmm() {{ vmm --api-sock /tmp/$1.sock --no-console-input > /tmp/$1.log 2>&1 &
    i=0; while [ ! -S /tmp/$1.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; }}
start_vmm a; A=$!
api a PUT /boot-source '{{"kernel_image_path": "{GUEST_VMLINUX}", "initrd_path": "{GUEST_INITRAMFS}", "boot_args": "{guest}"}}'
api a PUT /machine-config '{{"vcpu_count": 2, "mem_size_mib": 128}}'
api a PUT /entropy '{{}}'
api a PUT /vsock '{{"guest_cid": 3, "uds_path": "/tmp/a-v.sock"}}'
api a PUT /balloon '{{"amount_mib": 0, "deflate_on_oom": true, "stats_polling_interval_s": 1}}'
api a PUT /actions '{{"action_type": "InstanceStart"}}'
wait_tick a 5
{VSOCK_HOST} echo /tmp/a-v.sock 52 4096 | sed 's/^/ECHO-A /'
api a PUT /snapshot/create '{{"snapshot_path": "/tmp/vm.snap", "mem_file_path": "/tmp/vm.mem"}}'
api a PATCH /vm '{{"state": "Paused"}}'
echo TICK-AT-SNAPSHOT=$(last_tick a)
api a PUT /snapshot/create '{{"snapshot_path": "/tmp/vm.snap", "mem_file_path": "/tmp/vm.mem"}}'
api a PUT /snapshot/create '{{"snapshot_type": "Diff", "snapshot_path": "/tmp/d.snap", "mem_file_path": "/tmp/d.mem"}}'
echo DESCRIBE=$(vmm --describe-snapshot /tmp/vm.snap) WRITES=$(vmm --snapshot-version)
vmm --describe-snapshot /tmp/vm.mem 2>&1 | sed 's/^/DESCRIBE-MEM /'
echo MEM-BYTES=$(stat -c %s /tmp/vm.mem)
echo MEM-KIB-USED=$(du -k /tmp/vm.mem | cut -f1)
kill -9 $A; wait $A 2>/dev/null
head -c 100 /tmp/vm.snap > /tmp/truncated.snap
cp /tmp/vm.snap /tmp/corrupt.snap; printf X | dd of=/tmp/corrupt.snap bs=1 seek=300 conv=notrunc 2>/dev/null
cp /tmp/vm.snap /tmp/newer.snap; printf c | dd of=/tmp/newer.snap bs=1 seek=16 conv=notrunc 2>/dev/null
start_vmm b; B=$!
for bad in /tmp/truncated.snap /tmp/corrupt.snap /tmp/newer.snap {GUEST_VMLINUX}; do
    api b PUT /snapshot/load {bad_load}
done
api b GET /
api b PUT /snapshot/load {good_resumed}
wait_tick b $(( $(grep -a -o 'SNAP-TICK=[0-9]*' /tmp/a.log | tail -1 | cut -d= -f2) + 3 ))
echo FIRST-TICK-B=$(first_tick b)
echo LAST-TICK-B=$(last_tick b)
echo BOOTS-B=$(grep -a -c STRATUM-GUEST-UP /tmp/b.log)
echo RNG-B=$(grep -a -o 'SNAP-RNG=[0-9]*' /tmp/b.log | tail -1 | cut -d= -f2)
api b GET /vm/config
{VSOCK_HOST} echo /tmp/b-v.sock 52 4096 | sed 's/^/ECHO-B /'
sleep 2; api b GET /balloon/statistics
api b PATCH /balloon '{{"amount_mib": 16}}'
i=0; until api b GET /balloon/statistics | grep -q '"actual_mib":16' || [ $i -gt 100 ]; do sleep 0.2; i=$((i+1)); done
api b GET /balloon/statistics
start_vmm c; C=$!
api c PUT /snapshot/load {good_paused}
api c GET /
sleep 2; echo TICKS-C-PAUSED=$(grep -a -c SNAP-TICK /tmp/c.log)
api c PATCH /vm '{{"state": "Resumed"}}'
wait_tick c $(( $(grep -a -o 'SNAP-TICK=[0-9]*' /tmp/a.log | tail -1 | cut -d= -f2) + 3 ))
echo FIRST-TICK-C=$(first_tick c)
echo LAST-TICK-C=$(last_tick c)
echo BOOTS-C=$(grep -a -c STRATUM-GUEST-UP /tmp/c.log)
start_vmm d; D=$!
api d PUT /machine-config '{{"vcpu_count": 1, "mem_size_mib": 64}}'
api d PUT /snapshot/load {good_paused}
kill -9 $B $C $D 2>/dev/null
for vm in a b c; do tail -c 600 /tmp/$vm.log | sed "s/^/LOG-$vm /"; done
"#,
        guest = guest.trim(),
        bad_load = bad_load,
        good_resumed = load("/tmp/vm.snap", true, "/tmp/b-v.sock"),
        good_paused = load("/tmp/vm.snap", false, "/tmp/c-v.sock"),
    )
}

#[test]
fn a_snapshot_restores_in_other_vmms_and_bad_ones_are_refused() {
    let host = NestedHost::from_env().unwrap_or_else(|e| panic!("{e}"));
    let scenario = Scenario::new(script())
        .file(
            API_CALL,
            NestedHost::static_tool("STRATUM_API_CALL", "api-call"),
        )
        .file(VSOCK_HOST, NestedHost::static_bin("vsock-host"))
        // One nested-host CPU, as for the balloon's tests: the restored
        // guest inflates its balloon (see `Scenario::host_cpus`).
        .host_cpus(1)
        .timeout(Duration::from_secs(600));
    let outcome = host.run(&scenario).unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.host_kvm, "the nested host has no /dev/kvm");
    let tail = outcome.console_tail(80);
    for line in outcome.console.lines().filter(|l| l.starts_with("API ")) {
        eprintln!("{line}");
    }

    // A running VM is not snapshotted; a paused one is.
    let creates = answers(&outcome, "a", "PUT /snapshot/create");
    assert_eq!(creates.len(), 3, "{tail}");
    assert!(
        creates[0].contains("HTTP 400") && creates[0].contains("must be paused"),
        "{creates:?}"
    );
    assert!(creates[1].contains("HTTP 204"), "{creates:?}\n{tail}");
    assert!(
        creates[2].contains("HTTP 400") && creates[2].contains("dirty page tracking disabled"),
        "{creates:?}"
    );
    let at_snapshot = number(&outcome, "TICK-AT-SNAPSHOT=");
    assert!(at_snapshot >= 5, "{tail}");

    // Firecracker's --describe-snapshot and --snapshot-version.
    assert_eq!(
        value(&outcome, "DESCRIBE=").as_deref(),
        Some("v1 WRITES=v1"),
        "{tail}"
    );
    assert!(
        outcome
            .lines_with("DESCRIBE-MEM ")
            .any(|l| l.contains("not a VM snapshot")),
        "{tail}"
    );

    // The memory file is guest RAM's size, and sparse.
    assert_eq!(number(&outcome, "MEM-BYTES="), 128 << 20);
    assert!(number(&outcome, "MEM-KIB-USED=") < 96 * 1024, "{tail}");

    // Bad state files: refused, saying why; then the good one loads.
    let loads = answers(&outcome, "b", "PUT /snapshot/load");
    assert_eq!(loads.len(), 5, "{loads:?}\n{tail}");
    for (answer, why) in loads.iter().zip([
        "truncated",
        "corrupt",
        "made by a newer vmm",
        "not a VM snapshot",
    ]) {
        assert!(
            answer.contains("HTTP 400") && answer.contains(why),
            "{why}: {answer}"
        );
    }
    assert!(
        answers(&outcome, "b", "GET /")[0].contains("Not started"),
        "a refused load leaves the VMM unconfigured\n{tail}"
    );
    assert!(loads[4].contains("HTTP 204"), "{loads:?}\n{tail}");

    // The restored guest counts on, without a boot, its device working.
    let first_b = number(&outcome, "FIRST-TICK-B=");
    assert!(
        (at_snapshot..=at_snapshot + 1).contains(&first_b),
        "the guest went on from tick {at_snapshot}, not from {first_b}\n{tail}"
    );
    assert!(
        number(&outcome, "LAST-TICK-B=") >= at_snapshot + 3,
        "{tail}"
    );
    assert_eq!(number(&outcome, "BOOTS-B="), 0, "{tail}");
    assert_eq!(
        number(&outcome, "RNG-B="),
        8,
        "virtio-rng after restore\n{tail}"
    );
    let config = answers(&outcome, "b", "GET /vm/config").join(" ");
    assert!(
        config.contains("\"mem_size_mib\":128") && config.contains("\"vcpu_count\":2"),
        "{config}"
    );

    // vsock works before and after, on the socket the load named.
    assert!(
        outcome
            .lines_with("ECHO-A HOST-ECHO-OK 4096")
            .next()
            .is_some(),
        "{tail}"
    );
    assert!(
        outcome
            .lines_with("ECHO-B HOST-ECHO-OK 4096")
            .next()
            .is_some(),
        "{tail}"
    );

    // The balloon restored: statistics come, and a new target is met.
    let stats = answers(&outcome, "b", "GET /balloon/statistics");
    assert!(
        stats
            .first()
            .is_some_and(|s| s.contains("HTTP 200") && s.contains("total_memory")),
        "{stats:?}"
    );
    assert!(
        stats
            .last()
            .is_some_and(|s| s.contains("\"actual_mib\":16")),
        "the restored guest inflated its balloon: {stats:?}"
    );

    // A second VM from the same files, loaded paused.
    assert!(
        answers(&outcome, "c", "PUT /snapshot/load")[0].contains("HTTP 204"),
        "{tail}"
    );
    assert!(
        answers(&outcome, "c", "GET /")[0].contains("Paused"),
        "{tail}"
    );
    assert_eq!(number(&outcome, "TICKS-C-PAUSED="), 0, "{tail}");
    let first_c = number(&outcome, "FIRST-TICK-C=");
    assert!(
        (at_snapshot..=at_snapshot + 1).contains(&first_c),
        "{first_c}\n{tail}"
    );
    assert!(
        number(&outcome, "LAST-TICK-C=") >= at_snapshot + 3,
        "{tail}"
    );
    assert_eq!(number(&outcome, "BOOTS-C="), 0, "{tail}");

    // Not into a VMM that was configured.
    let refused = answers(&outcome, "d", "PUT /snapshot/load");
    assert!(
        refused[0].contains("HTTP 400") && refused[0].contains("not allowed after configuring"),
        "{refused:?}"
    );
}

fn diff_script() -> String {
    let guest = run_cmdline(
        "console=ttyS0 reboot=k panic=-1 pci=off quiet",
        "m1=one-$(cat /proc/sys/kernel/random/uuid); echo $m1 > /mark1; echo DIFF-M1=$m1; \
         i=0; while true; do i=$((i+1)); echo DIFF-TICK=$i; \
         if [ $i -eq 25 ]; then m2=two-$(cat /proc/sys/kernel/random/uuid); \
         echo $m2 > /mark2; echo DIFF-M2=$m2; fi; \
         [ $i -gt 25 ] && echo DIFF-SEEN=$(cat /mark1),$(cat /mark2); sleep 0.3; done",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let create = |kind: &str, state: &str, mem: &str| {
        format!(
            "'{{\"snapshot_type\": \"{kind}\", \"snapshot_path\": \"{state}\", \
             \"mem_file_path\": \"{mem}\"}}'"
        )
    };
    format!(
        r#"api() {{ vm=$1; shift; r=$({API_CALL} /tmp/$vm.sock "$@"); echo "API $vm $1 $2 => $r"; }}
wait_line() {{ i=0; until grep -a -q "$2" /tmp/$1.log || [ $i -gt 1200 ]; do sleep 0.1; i=$((i+1)); done; }}
last_tick() {{ grep -a -o 'DIFF-TICK=[0-9]*' /tmp/$1.log | tail -1 | cut -d= -f2; }}
start_vmm() {{ vmm --api-sock /tmp/$1.sock --no-console-input --level Info > /tmp/$1.log 2>&1 &
    i=0; while [ ! -S /tmp/$1.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; }}
start_vmm e; E=$!
api e PUT /boot-source '{{"kernel_image_path": "{GUEST_VMLINUX}", "initrd_path": "{GUEST_INITRAMFS}", "boot_args": "{guest}"}}'
api e PUT /machine-config '{{"vcpu_count": 1, "mem_size_mib": 128, "track_dirty_pages": true}}'
api e PUT /actions '{{"action_type": "InstanceStart"}}'
wait_line e DIFF-TICK=3
api e PATCH /vm '{{"state": "Paused"}}'
api e PUT /snapshot/create {full}
echo TICK-AT-FULL=$(last_tick e)
grep -a -o 'DIFF-M1=[^ ]*' /tmp/e.log | head -1 | tr -d '\r'
echo FULL-KIB-USED=$(du -k /tmp/base.mem | cut -f1)
cp /tmp/base.mem /tmp/merged.mem
api e PATCH /vm '{{"state": "Resumed"}}'
wait_line e DIFF-SEEN=
api e PATCH /vm '{{"state": "Paused"}}'
api e PUT /snapshot/create {diff}
grep -a -o 'DIFF-M2=[^ ]*' /tmp/e.log | head -1 | tr -d '\r'
echo MERGED-BYTES=$(stat -c %s /tmp/merged.mem)
grep -a -o 'snapshot created ([A-Za-z]*, [0-9]* KiB' /tmp/e.log | sed 's/^/WRITTEN-E /'
kill -9 $E; wait $E 2>/dev/null
start_vmm f; F=$!
api f PUT /snapshot/load '{{"snapshot_path": "/tmp/diff.snap", "mem_backend": {{"backend_type": "File", "backend_path": "/tmp/merged.mem"}}, "track_dirty_pages": true, "resume_vm": true}}'
wait_line f DIFF-SEEN=
echo SEEN-F=$(grep -a -o 'DIFF-SEEN=[^ ]*' /tmp/f.log | tail -1 | cut -d= -f2 | tr -d '\r')
echo BOOTS-F=$(grep -a -c STRATUM-GUEST-UP /tmp/f.log)
api f GET /machine-config
api f PATCH /vm '{{"state": "Paused"}}'
api f PUT /snapshot/create {layer}
echo LAYER-BYTES=$(stat -c %s /tmp/layer.mem)
echo LAYER-KIB-USED=$(du -k /tmp/layer.mem | cut -f1)
grep -a -o 'snapshot created ([A-Za-z]*, [0-9]* KiB' /tmp/f.log | sed 's/^/WRITTEN-F /'
api f PUT /snapshot/create {own}
api f PATCH /vm '{{"state": "Resumed"}}'
t=$(last_tick f); i=0; while [ "$(last_tick f)" = "$t" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo TICKS-AROUND-OWN=$t,$(last_tick f)
kill -9 $F 2>/dev/null
for vm in e f; do tail -c 600 /tmp/$vm.log | sed "s/^/LOG-$vm /"; done
"#,
        guest = guest.trim(),
        full = create("Full", "/tmp/base.snap", "/tmp/base.mem"),
        diff = create("Diff", "/tmp/diff.snap", "/tmp/merged.mem"),
        layer = create("Diff", "/tmp/layer.snap", "/tmp/layer.mem"),
        own = create("Full", "/tmp/own.snap", "/tmp/merged.mem"),
    )
}

/// The KiB of memory the `n`th snapshot `vm` logged wrote, and its kind.
fn written(outcome: &Outcome, vm: &str, n: usize) -> (String, u64) {
    let key = format!("WRITTEN-{vm} ");
    let line = outcome
        .lines_with(&key)
        .nth(n)
        .unwrap_or_else(|| panic!("no snapshot {n} of {vm}\n{}", outcome.console_tail(60)));
    let rest = line.split("snapshot created (").nth(1).unwrap_or_default();
    let (kind, kib) = rest.split_once(", ").unwrap_or_default();
    let kib = kib.trim_end_matches(" KiB").parse().unwrap_or(u64::MAX);
    (kind.to_string(), kib)
}

#[test]
fn diff_snapshots_hold_only_dirty_pages_and_layer_onto_the_full_one() {
    let host = NestedHost::from_env().unwrap_or_else(|e| panic!("{e}"));
    let scenario = Scenario::new(diff_script())
        .file(
            API_CALL,
            NestedHost::static_tool("STRATUM_API_CALL", "api-call"),
        )
        // Pausing and resuming a VM on two nested-host CPUs once crashed
        // the host's kernel (see `Scenario::host_cpus`).
        .host_cpus(1)
        .timeout(Duration::from_secs(600));
    let outcome = host.run(&scenario).unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.host_kvm, "the nested host has no /dev/kvm");
    let tail = outcome.console_tail(80);
    for line in outcome.console.lines().filter(|l| {
        l.starts_with("API ")
            || l.starts_with("WRITTEN-")
            || l.contains("-KIB-")
            || l.contains("-BYTES=")
    }) {
        eprintln!("{line}");
    }
    for (vm, n) in [("e", 2), ("f", 1)] {
        let creates = answers(&outcome, vm, "PUT /snapshot/create");
        assert_eq!(creates.len(), n + usize::from(vm == "f"), "{tail}");
        assert!(
            creates[..n].iter().all(|c| c.contains("HTTP 204")),
            "{creates:?}\n{tail}"
        );
    }
    // A Full snapshot onto the file the restored VM's memory is mapped
    // from is refused, and the guest goes on unharmed.
    let own = &answers(&outcome, "f", "PUT /snapshot/create")[1];
    assert!(
        own.contains("HTTP 400") && own.contains("is the file this VM's memory is mapped from"),
        "{own}\n{tail}"
    );
    let around = value(&outcome, "TICKS-AROUND-OWN=").unwrap_or_default();
    let ticks: Vec<u64> = around.split(',').filter_map(|t| t.parse().ok()).collect();
    assert!(
        ticks.len() == 2 && ticks[1] > ticks[0],
        "the guest ticks on after the refusal: {around}\n{tail}"
    );
    // The Full snapshot came before the second marker.
    assert!(number(&outcome, "TICK-AT-FULL=") < 25, "{tail}");
    let m1 = value(&outcome, "DIFF-M1=").unwrap_or_default();
    let m2 = value(&outcome, "DIFF-M2=").unwrap_or_default();
    assert!(m1.starts_with("one-") && m2.starts_with("two-"), "{tail}");

    // The restored guest, on the Full file with the Diff written over it,
    // has both markers and did not boot again.
    let load = answers(&outcome, "f", "PUT /snapshot/load");
    assert!(load[0].contains("HTTP 204"), "{load:?}\n{tail}");
    assert_eq!(
        value(&outcome, "SEEN-F=").unwrap_or_default(),
        format!("{m1},{m2}"),
        "{tail}"
    );
    assert_eq!(number(&outcome, "BOOTS-F="), 0, "{tail}");
    let machine = answers(&outcome, "f", "GET /machine-config");
    assert!(
        machine[0].contains("\"track_dirty_pages\":true"),
        "{machine:?}"
    );

    // Bytes: the Diffs wrote far less than the Full, and the layer file
    // is as large as memory but holds only its dirty pages.
    let (kind, full) = written(&outcome, "E", 0);
    assert_eq!(kind, "Full");
    let (kind, diff) = written(&outcome, "E", 1);
    assert_eq!(kind, "Diff");
    let (kind, layer) = written(&outcome, "F", 0);
    assert_eq!(kind, "Diff");
    eprintln!("memory written: Full {full} KiB, Diff {diff} KiB, restored VM's Diff {layer} KiB");
    assert!(full >= 4096, "a booted guest's memory: {full} KiB\n{tail}");
    assert!(diff * 4 < full, "Diff {diff} KiB vs Full {full} KiB");
    assert!(layer * 4 < full, "Diff {layer} KiB vs Full {full} KiB");
    assert_eq!(number(&outcome, "LAYER-BYTES="), 128 << 20, "{tail}");
    assert_eq!(number(&outcome, "MERGED-BYTES="), 128 << 20, "{tail}");
    let layer_used = number(&outcome, "LAYER-KIB-USED=");
    let full_used = number(&outcome, "FULL-KIB-USED=");
    eprintln!("on disk: Full {full_used} KiB, Diff layer {layer_used} KiB");
    assert!(
        layer_used * 4 < full_used,
        "{layer_used} KiB vs {full_used} KiB"
    );
}

/// Clones: CLONES vmms load one snapshot, each with its own vsock socket,
/// and every one runs on from the saved instant — its counter going on,
/// the file it wrote to tmpfs before the snapshot still there, its
/// read-only drive (shared by all: a disk written by several VMs at once
/// would be corrupt) read through a restored virtio-blk. Their memory is
/// one memory file mapped private: pages no clone wrote are shared, so
/// the sum of their proportional set sizes (Pss: a shared page counted
/// once across them) is well below CLONES times one clone's resident set.
const CLONES: usize = 10;

fn clones_script() -> String {
    let guest = run_cmdline(
        "console=ttyS0 reboot=k panic=-1 pci=off quiet",
        "echo written-before-the-snapshot > /tmp/marker; \
         i=0; while true; do i=$((i+1)); \
         echo CLONE-TICK=$i DISK=$(dd if=/dev/vda bs=16 count=1 2>/dev/null) FILE=$(cat /tmp/marker); \
         echo 3 > /proc/sys/vm/drop_caches; sleep 0.5; done",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    format!(
        r#"api() {{ vm=$1; shift; r=$({API_CALL} /tmp/$vm.sock "$@"); echo "API $vm $1 $2 => $r"; }}
start_vmm() {{ vmm --api-sock /tmp/$1.sock --no-console-input > /tmp/$1.log 2>&1 &
    i=0; while [ ! -S /tmp/$1.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; }}
ticks() {{ grep -a -c 'CLONE-TICK=' /tmp/$1.log; }}
printf 'DISK-MARK-12345' | dd of=/tmp/disk.img bs=1M seek=0 conv=notrunc 2>/dev/null
dd if=/dev/zero of=/tmp/disk.img bs=1M count=0 seek=4 2>/dev/null
start_vmm base; BASE=$!
api base PUT /boot-source '{{"kernel_image_path": "{GUEST_VMLINUX}", "initrd_path": "{GUEST_INITRAMFS}", "boot_args": "{guest}"}}'
api base PUT /machine-config '{{"vcpu_count": 1, "mem_size_mib": 128}}'
api base PUT /drives/data '{{"drive_id": "data", "path_on_host": "/tmp/disk.img", "is_root_device": false, "is_read_only": true}}'
api base PUT /vsock '{{"guest_cid": 3, "uds_path": "/tmp/base-v.sock"}}'
api base PUT /actions '{{"action_type": "InstanceStart"}}'
i=0; until [ "$(ticks base)" -ge 3 ] || [ $i -gt 600 ]; do sleep 0.1; i=$((i+1)); done
api base PATCH /vm '{{"state": "Paused"}}'
api base PUT /snapshot/create '{{"snapshot_path": "/tmp/c.snap", "mem_file_path": "/tmp/c.mem"}}'
kill -9 $BASE; wait $BASE 2>/dev/null
BASE_TICKS=$(grep -a -o 'CLONE-TICK=[0-9]*' /tmp/base.log | tail -1 | cut -d= -f2); echo BASE-TICKS=$BASE_TICKS
PIDS=""
for n in $(seq 1 {CLONES}); do
    start_vmm c$n; PIDS="$PIDS $!"
    api c$n PUT /snapshot/load "{{\"snapshot_path\": \"/tmp/c.snap\", \"mem_backend\": {{\"backend_type\": \"File\", \"backend_path\": \"/tmp/c.mem\"}}, \"resume_vm\": true, \"vsock_override\": {{\"uds_path\": \"/tmp/c$n-v.sock\"}}}}"
done
for n in $(seq 1 {CLONES}); do
    i=0; until [ "$(ticks c$n)" -ge 3 ] || [ $i -gt 600 ]; do sleep 0.1; i=$((i+1)); done
done
for n in $(seq 1 {CLONES}); do
    echo "CLONE c$n $(grep -a 'CLONE-TICK=' /tmp/c$n.log | head -1 | tr -d '\r') RUNNING=$(ticks c$n) BOOTS=$(grep -a -c STRATUM-GUEST-UP /tmp/c$n.log)"
done
set -- $PIDS
echo ONE-RSS-KIB=$(awk '/^VmRSS/ {{print $2}}' /proc/$1/status)
PSS=0; for pid in $PIDS; do PSS=$((PSS + $(awk '/^Pss:/ {{print $2}}' /proc/$pid/smaps_rollup))); done
echo SUM-PSS-KIB=$PSS
kill -9 $PIDS 2>/dev/null
"#,
        guest = guest.trim(),
    )
}

#[test]
fn ten_clones_of_one_snapshot_run_and_share_their_memory() {
    let host = NestedHost::from_env().unwrap_or_else(|e| panic!("{e}"));
    let scenario = Scenario::new(clones_script())
        .file(
            API_CALL,
            NestedHost::static_tool("STRATUM_API_CALL", "api-call"),
        )
        .host_cpus(1)
        .timeout(Duration::from_secs(600));
    let outcome = host.run(&scenario).unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.host_kvm, "the nested host has no /dev/kvm");
    let tail = outcome.console_tail(60);
    for line in outcome
        .console
        .lines()
        .filter(|l| l.starts_with("CLONE ") || l.contains("-KIB=") || l.starts_with("API base"))
    {
        eprintln!("{line}");
    }
    let base_ticks = number(&outcome, "BASE-TICKS=");
    let clones: Vec<&str> = outcome.lines_with("CLONE c").collect();
    assert_eq!(clones.len(), CLONES, "{tail}");
    for clone in clones {
        // The first line a clone prints comes after the saved instant.
        let first = clone
            .split_whitespace()
            .find_map(|w| w.strip_prefix("CLONE-TICK="))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_default();
        assert!(
            (base_ticks..=base_ticks + 1).contains(&first),
            "{clone}: not from tick {base_ticks}\n{tail}"
        );
        assert!(clone.contains("DISK=DISK-MARK-12345"), "{clone}\n{tail}");
        assert!(
            clone.contains("FILE=written-before-the-snapshot"),
            "{clone}\n{tail}"
        );
        assert!(clone.ends_with("BOOTS=0"), "{clone}\n{tail}");
    }
    let one = number(&outcome, "ONE-RSS-KIB=");
    let sum = number(&outcome, "SUM-PSS-KIB=");
    assert!(
        sum * 2 < one * CLONES as u64,
        "{CLONES} clones' Pss sum {sum} KiB is not well below {CLONES} x {one} KiB\n{tail}"
    );
}

const MKTAP: &str = "/stratum/bin/mktap";

/// `network_overrides`: a VM snapshotted on tap0 is loaded on tap1 (the
/// host's address moved there) and its network works: it pings the host,
/// the host pings it. An override naming an interface the snapshot lacks
/// is refused.
fn overrides_script() -> String {
    let guest = run_cmdline(
        "console=ttyS0 reboot=k panic=-1 pci=off quiet",
        "ip addr add 192.0.2.2/24 dev eth0 && ip link set eth0 up; \
         while true; do ping -c 1 -W 1 192.0.2.1 > /dev/null 2>&1 && echo NET-OK || echo NET-FAIL; \
         sleep 0.5; done",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let load = |iface: &str| {
        format!(
            "'{{\"snapshot_path\": \"/tmp/n.snap\", \"mem_backend\": {{\"backend_type\": \"File\", \
             \"backend_path\": \"/tmp/n.mem\"}}, \"resume_vm\": true, \
             \"network_overrides\": [{{\"iface_id\": \"{iface}\", \"host_dev_name\": \"tap1\"}}]}}'"
        )
    };
    format!(
        r#"api() {{ vm=$1; shift; r=$({API_CALL} /tmp/$vm.sock "$@"); echo "API $vm $1 $2 => $r"; }}
start_vmm() {{ vmm --api-sock /tmp/$1.sock --no-console-input > /tmp/$1.log 2>&1 &
    i=0; while [ ! -S /tmp/$1.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; }}
oks() {{ grep -a -c NET-OK /tmp/$1.log; }}
{MKTAP} tap0 && ip addr add 192.0.2.1/24 dev tap0 && ip link set tap0 up
{MKTAP} tap1 && ip link set tap1 up
start_vmm a; A=$!
api a PUT /boot-source '{{"kernel_image_path": "{GUEST_VMLINUX}", "initrd_path": "{GUEST_INITRAMFS}", "boot_args": "{guest}"}}'
api a PUT /machine-config '{{"vcpu_count": 1, "mem_size_mib": 128}}'
api a PUT /network-interfaces/eth0 '{{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:c0:00:02:02"}}'
api a PUT /actions '{{"action_type": "InstanceStart"}}'
i=0; until [ "$(oks a)" -ge 2 ] || [ $i -gt 600 ]; do sleep 0.1; i=$((i+1)); done
api a PATCH /vm '{{"state": "Paused"}}'
api a PUT /snapshot/create '{{"snapshot_path": "/tmp/n.snap", "mem_file_path": "/tmp/n.mem"}}'
kill -9 $A; wait $A 2>/dev/null
echo OKS-BEFORE=$(oks a)
ip addr del 192.0.2.1/24 dev tap0 && ip addr add 192.0.2.1/24 dev tap1
start_vmm b; B=$!
api b PUT /snapshot/load {unknown}
api b PUT /snapshot/load {good}
i=0; until [ "$(oks b)" -ge 2 ] || [ $i -gt 600 ]; do sleep 0.1; i=$((i+1)); done
echo OKS-AFTER=$(oks b)
ping -c 3 -W 5 192.0.2.2 > /dev/null && echo HOST-PING-OK
api b GET /vm/config
kill -9 $B 2>/dev/null
tail -c 400 /tmp/a.log | sed 's/^/LOG-a /'
dmesg | grep -i -e seccomp -e 'sig=31' | tail -n 3 | sed 's/^/KERNEL-LOG /'
"#,
        guest = guest.trim(),
        unknown = load("eth9"),
        good = load("eth0"),
    )
}

#[test]
fn a_restored_vm_takes_another_tap_through_network_overrides() {
    let host = NestedHost::from_env().unwrap_or_else(|e| panic!("{e}"));
    let scenario = Scenario::new(overrides_script())
        .file(
            API_CALL,
            NestedHost::static_tool("STRATUM_API_CALL", "api-call"),
        )
        .file(MKTAP, NestedHost::static_bin("mktap"))
        .host_cpus(1)
        .timeout(Duration::from_secs(600));
    let outcome = host.run(&scenario).unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.host_kvm, "the nested host has no /dev/kvm");
    let tail = outcome.console_tail(60);
    for line in outcome
        .console
        .lines()
        .filter(|l| l.starts_with("API ") || l.starts_with("LOG-") || l.starts_with("KERNEL-"))
    {
        eprintln!("{line}");
    }
    assert!(number(&outcome, "OKS-BEFORE=") >= 2, "{tail}");
    let loads = answers(&outcome, "b", "PUT /snapshot/load");
    assert_eq!(loads.len(), 2, "{tail}");
    assert!(
        loads[0].contains("HTTP 400") && loads[0].contains("eth9"),
        "{loads:?}"
    );
    assert!(loads[1].contains("HTTP 204"), "{loads:?}\n{tail}");
    assert!(
        number(&outcome, "OKS-AFTER=") >= 2,
        "the guest reaches the host on tap1\n{tail}"
    );
    assert!(
        outcome.lines_with("HOST-PING-OK").next().is_some(),
        "{tail}"
    );
    let config = answers(&outcome, "b", "GET /vm/config").join(" ");
    assert!(
        config.contains("\"host_dev_name\":\"tap1\"")
            && config.contains("\"guest_mac\":\"06:00:c0:00:02:02\""),
        "{config}"
    );
}
