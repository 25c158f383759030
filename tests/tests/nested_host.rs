//! Tests of the nested-host harness itself. Each boots QEMU (TCG), so they
//! take several seconds each; they need `make images` and `make static`
//! (or `STRATUM_VMM` pointing at any static binary).

use std::time::Duration;

use stratum_tests::{paths, Error, NestedHost, Scenario};

fn host() -> NestedHost {
    match NestedHost::from_env() {
        Ok(host) => host,
        Err(e) => panic!("nested host inputs: {e}"),
    }
}

#[test]
fn boots_with_working_kvm() {
    // Opening /dev/kvm proves the modules loaded and the device works,
    // not merely that the node exists.
    let outcome = host()
        .run(&Scenario::new("exec 3</dev/kvm && echo KVM-OPEN-OK"))
        .expect("nested host run");
    assert!(outcome.host_kvm, "{}", outcome.console_tail(40));
    outcome.assert_exit(0);
    assert_eq!(outcome.lines_with("KVM-OPEN-OK").count(), 1);
}

#[test]
fn scenario_exit_code_is_propagated() {
    let outcome = host()
        .run(&Scenario::new("echo before; exit 3"))
        .expect("nested host run");
    outcome.assert_exit(3);
    assert_eq!(outcome.lines_with("before").count(), 1);
}

#[test]
fn composed_files_are_present() {
    let script = format!(
        "set -e
test -x {vmm}
test -s {vmlinux}
test -s {bzimage}
test -s {initramfs}
for m in irqbypass kvm kvm-amd; do test -s {modules}/$m.ko; done
test \"$(cat /stratum/extra/nested/hello.txt)\" = hello
test -x /stratum/extra/tool
grep -q cgroup2 /proc/mounts
",
        vmm = paths::VMM,
        vmlinux = paths::GUEST_VMLINUX,
        bzimage = paths::GUEST_BZIMAGE,
        initramfs = paths::GUEST_INITRAMFS,
        modules = paths::HOST_MODULE_DIR,
    );
    let scenario = Scenario::new(script)
        .bytes("/stratum/extra/nested/hello.txt", b"hello".to_vec(), 0o644)
        .file("/stratum/extra/tool", "/bin/busybox");
    host()
        .run(&scenario)
        .expect("nested host run")
        .assert_exit(0);
}

/// Waits for the host's first heartbeat (the runner watches for silence
/// only once it has seen one), then silences it.
const SILENCE_THE_HEARTBEAT: &str = "sleep 11; kill $STRATUM_HEARTBEAT_PID";

#[test]
fn a_silent_host_is_kicked_on_its_serial_line_and_goes_on() {
    // With IXON off and raw input, the kick byte (XON) reaches a reader:
    // the host prints it, which ends the silence.
    let script = format!(
        "{SILENCE_THE_HEARTBEAT}\nstty -ixon -icanon -echo min 1\n\
         echo KICKED-WITH=$(head -c 1 | od -An -tx1 | tr -d ' ')"
    );
    let scenario = Scenario::new(script).frozen_after(Duration::from_secs(16));
    let outcome = host().run(&scenario).expect("a kicked host goes on");
    outcome.assert_exit(0);
    assert_eq!(
        outcome.lines_with("KICKED-WITH=11").count(),
        1,
        "{}",
        outcome.console_tail(20)
    );
}

#[test]
fn a_host_that_stays_silent_is_reported_frozen_with_the_emulators_view() {
    // The kick is swallowed (IXON on, as the console starts); the host
    // stays silent in two runs (the runner tries a fresh host once).
    let script = format!("{SILENCE_THE_HEARTBEAT}\nsleep 600");
    let scenario = Scenario::new(script)
        .frozen_after(Duration::from_secs(16))
        .timeout(Duration::from_secs(300));
    match host().run(&scenario) {
        Err(Error::HostFroze {
            silent, emulator, ..
        }) => {
            assert_eq!(silent, Duration::from_secs(16));
            assert!(emulator.contains("run state:"), "{emulator}");
            assert!(emulator.contains("RIP="), "{emulator}");
        }
        other => panic!("a silent host is a frozen one: {other:?}"),
    }
}
