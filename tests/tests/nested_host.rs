//! Tests of the nested-host harness itself. Each boots QEMU (TCG), so they
//! take several seconds each; they need `make images` and `make static`
//! (or `STRATUM_VMM` pointing at any static binary).

use stratum_tests::{paths, NestedHost, Scenario};

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
