//! virtio devices with a real Linux guest on real KVM, in the nested test
//! host. The guest's init runs the test's script from the kernel command
//! line.

use stratum_tests::guest::{hex_lines, in_guest, run_exits};
use stratum_tests::{NestedHost, Outcome, Scenario};

fn run(script: String) -> Outcome {
    let host = NestedHost::from_env().unwrap_or_else(|e| panic!("{e}"));
    let outcome = host
        .run(&Scenario::new(script))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.host_kvm, "the nested host has no /dev/kvm");
    outcome
}

#[test]
fn virtio_rng_feeds_the_guest_through_acpi_and_the_command_line() {
    // With ACPI the device is in the DSDT; with acpi=off it is declared
    // on the kernel command line. Both must give the guest entropy.
    let command = "cat /sys/class/misc/hw_random/rng_current && \
                   head -c 32 /dev/hwrng | od -An -tx1";
    let script = in_guest("--entropy", "", command) + &in_guest("--entropy", "acpi=off", command);
    let outcome = run(script);
    let current: Vec<&str> = outcome.lines_with("virtio_rng").collect();
    assert_eq!(current.len(), 2, "{}", outcome.console_tail(40));
    let random = hex_lines(&outcome);
    assert_eq!(random.len(), 4, "{}", outcome.console_tail(40));
    assert_ne!(random[0], random[2], "two reads gave the same bytes");
    assert_eq!(
        run_exits(&outcome),
        ["0", "0"],
        "{}",
        outcome.console_tail(40)
    );
    let exits: Vec<&str> = outcome.lines_with("VMM-EXIT=").collect();
    assert_eq!(exits, ["VMM-EXIT=0", "VMM-EXIT=0"]);
}

#[test]
fn without_devices_the_guest_sees_no_virtio() {
    let command =
        "test -d /sys/bus/virtio/devices && ls /sys/bus/virtio/devices | wc -l | sed s/^/VIRTIO-COUNT=/";
    let outcome = run(in_guest("", "", command));
    assert!(
        outcome.lines_with("VIRTIO-COUNT=0").next().is_some(),
        "{}",
        outcome.console_tail(30)
    );
}
