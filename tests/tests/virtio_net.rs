//! virtio-net over a host TAP device with a real guest on real KVM, in the
//! nested test host: pings both ways between the guest and the TAP's
//! address, and a TAP that does not exist is a clear error. The addresses
//! are from TEST-NET-1 and exist only inside the nested host.

use std::path::PathBuf;

use stratum_tests::guest::{run_cmdline, run_exits, CMDLINE};
use stratum_tests::paths::{GUEST_INITRAMFS, GUEST_VMLINUX};
use stratum_tests::{NestedHost, Outcome, Scenario};

const MKTAP: &str = "/stratum/bin/mktap";

fn run(script: String) -> Outcome {
    let mktap: PathBuf = std::env::var_os("STRATUM_MKTAP")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            NestedHost::workspace_root()
                .join("target/static/x86_64-unknown-linux-gnu/release/mktap")
        });
    let host = NestedHost::from_env().unwrap_or_else(|e| panic!("{e}"));
    let outcome = host
        .run(&Scenario::new(script).file(MKTAP, mktap))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.host_kvm, "the nested host has no /dev/kvm");
    outcome
}

#[test]
fn guest_and_host_ping_each_other_over_the_tap() {
    // The guest configures eth0, pings the host, says so, and stays up long
    // enough for the host to ping it back; its init then reboots.
    let guest = "ip addr add 192.0.2.2/24 dev eth0 && ip link set eth0 up && \
                 ping -c 3 -W 5 192.0.2.1 > /dev/null && echo GUEST-PING-OK && sleep 8";
    let cmdline = run_cmdline(CMDLINE, guest).unwrap_or_else(|e| panic!("{e}"));
    let script = format!(
        "{MKTAP} tap0 && ip addr add 192.0.2.1/24 dev tap0 && ip link set tap0 up\n\
         vmm --kernel {GUEST_VMLINUX} --initrd {GUEST_INITRAMFS} --memory 256 \
         --net tap=tap0,mac=02:53:54:52:00:02 --no-console-input \
         --cmdline '{cmdline}' > /tmp/console.log 2>&1 &\n\
         VMM=$!\n\
         i=0; while ! grep -q GUEST-PING-OK /tmp/console.log && [ $i -lt 900 ]; do sleep 0.1; i=$((i+1)); done\n\
         ping -c 3 -W 5 192.0.2.2 > /dev/null && echo HOST-PING-OK\n\
         wait $VMM; echo VMM-EXIT=$?\n\
         grep -c GUEST-PING-OK /tmp/console.log | sed s/^/GUEST-PINGS=/\n\
         grep -e 'link/ether' -e eth0 -e STRATUM-GUEST-RUN-EXIT= /tmp/console.log\n"
    );
    let outcome = run(script);
    let tail = outcome.console_tail(40);
    assert!(
        outcome.console.contains("HOST-PING-OK"),
        "the host could not ping the guest:\n{tail}"
    );
    assert_eq!(
        outcome.lines_with("GUEST-PINGS=").collect::<Vec<_>>(),
        ["GUEST-PINGS=1"],
        "the guest could not ping the host:\n{tail}"
    );
    assert_eq!(run_exits(&outcome), ["0"], "{tail}");
    assert!(outcome.lines_with("VMM-EXIT=0").next().is_some(), "{tail}");
}

#[test]
fn a_tap_that_does_not_exist_is_a_clear_error() {
    let script = format!(
        "vmm --kernel {GUEST_VMLINUX} --initrd {GUEST_INITRAMFS} --no-console-input \
         --net tap=nosuchtap0\n\
         echo VMM-EXIT=$?\n\
         ls /sys/class/net | grep -c nosuchtap0 | sed s/^/TAPS=/\n"
    );
    let outcome = run(script);
    assert!(outcome.lines_with("VMM-EXIT=1").next().is_some());
    assert!(
        outcome
            .console
            .contains("TAP device nosuchtap0 does not exist"),
        "{}",
        outcome.console_tail(20)
    );
    assert!(
        outcome.lines_with("TAPS=0").next().is_some(),
        "no TAP may be left behind"
    );
}
