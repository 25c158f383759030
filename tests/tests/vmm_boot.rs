//! `vmm` boots a real Linux guest on a real /dev/kvm, inside the nested test
//! host: PVH entry of the ELF vmlinux with 1 and 2 vCPUs, the 64-bit Linux
//! boot protocol of the bzImage, CPUs found through ACPI and through the MP
//! table, every way a guest can end its VM (i8042 reset, triple fault, ACPI
//! reset, ACPI power-off), console input, and the error paths that need a
//! real KVM.

use stratum_tests::paths::{GUEST_BZIMAGE, GUEST_INITRAMFS, GUEST_VMLINUX};
use stratum_tests::{NestedHost, Outcome, Scenario};

fn host() -> NestedHost {
    NestedHost::from_env().unwrap_or_else(|e| panic!("{e}"))
}

fn run(script: String) -> Outcome {
    let outcome = host()
        .run(&Scenario::new(script))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.host_kvm, "the nested host has no /dev/kvm");
    outcome
}

/// A scenario that boots the guest once and reports vmm's exit status.
fn boot_script(kernel: &str, vcpus: u8, extra_cmdline: &str) -> String {
    format!(
        "vmm --kernel {kernel} --initrd {GUEST_INITRAMFS} --vcpus {vcpus} --memory 256 \
         --no-console-input --cmdline 'console=ttyS0 reboot=k panic=-1 pci=off quiet {extra_cmdline}'\n\
         echo VMM-EXIT=$?\n"
    )
}

fn vmm_exit(outcome: &Outcome) -> Option<i32> {
    outcome
        .lines_with("VMM-EXIT=")
        .next()
        .and_then(|l| l.trim_start_matches("VMM-EXIT=").trim().parse().ok())
}

/// The guest reached its init with `cpus` CPUs online and vmm exited 0
/// after the guest rebooted.
fn assert_booted(outcome: &Outcome, cpus: u8) {
    let markers: Vec<&str> = outcome.lines_with("STRATUM-GUEST-UP").collect();
    assert_eq!(
        markers.len(),
        1,
        "one guest boot expected:\n{}",
        outcome.console_tail(60)
    );
    assert!(
        markers[0].contains(&format!("cpus={cpus} ")),
        "wrong CPU count in {:?}",
        markers[0]
    );
    assert_eq!(
        vmm_exit(outcome),
        Some(0),
        "vmm must exit 0 on guest reboot:\n{}",
        outcome.console_tail(60)
    );
    outcome.assert_exit(0);
}

#[test]
fn pvh_elf_boots_with_one_vcpu() {
    let outcome = run(boot_script(GUEST_VMLINUX, 1, ""));
    assert_booted(&outcome, 1);
}

#[test]
fn pvh_elf_boots_with_two_vcpus() {
    let outcome = run(boot_script(GUEST_VMLINUX, 2, ""));
    assert_booted(&outcome, 2);
}

#[test]
fn bzimage_boots_through_the_64_bit_protocol() {
    let outcome = run(boot_script(GUEST_BZIMAGE, 2, ""));
    assert_booted(&outcome, 2);
}

#[test]
fn triple_fault_reset_also_ends_the_vm() {
    // reboot=t resets through a triple fault instead of the i8042.
    let script = boot_script(GUEST_VMLINUX, 1, "").replace("reboot=k", "reboot=t");
    assert_booted(&run(script), 1);
}

#[test]
fn acpi_reset_ends_the_vm() {
    // reboot=a writes the FADT's reset register.
    let script = boot_script(GUEST_VMLINUX, 1, "").replace("reboot=k", "reboot=a");
    assert_booted(&run(script), 1);
}

#[test]
fn acpi_poweroff_ends_the_vm() {
    // poweroff enters ACPI S5 through the sleep control register; without
    // it the guest would halt forever and vmm would never exit.
    let outcome = run(boot_script(GUEST_VMLINUX, 2, "stratum.exit=poweroff"));
    assert_booted(&outcome, 2);
    assert!(
        outcome.console.contains("reboot: Power down"),
        "{}",
        outcome.console_tail(20)
    );
}

#[test]
fn mp_table_describes_the_cpus_without_acpi() {
    let outcome = run(boot_script(GUEST_VMLINUX, 2, "acpi=off"));
    assert_booted(&outcome, 2);
}

#[test]
fn console_can_go_to_a_file() {
    let script = boot_script(GUEST_VMLINUX, 1, "").replace(
        "--no-console-input",
        "--no-console-input --console /tmp/console.log",
    ) + "echo FILE-MARKERS=$(grep -c STRATUM-GUEST-UP /tmp/console.log)\n";
    let outcome = run(script);
    assert_eq!(vmm_exit(&outcome), Some(0));
    assert_eq!(
        outcome.lines_with("FILE-MARKERS=").next(),
        Some("FILE-MARKERS=1"),
        "{}",
        outcome.console_tail(20)
    );
    assert_eq!(
        outcome.lines_with("STRATUM-GUEST-UP").count(),
        0,
        "the console went to the file, not to stdout"
    );
}

#[test]
fn console_input_reaches_the_guest_shell() {
    // The guest drops to a shell; a command typed on vmm's stdin prints a
    // value only the guest computes, waits for the UART to drain, reboots. The command is resent
    // each second because bytes sent before the guest's UART driver is up
    // are discarded, and a line that lost its first bytes fails as a whole
    // thanks to `&&`. The loop is bounded and ends when vmm exits.
    let script = format!(
        "i=0; while [ $i -lt 90 ]; do echo 'echo stdin-ok-$((6*7)) && sleep 1 && reboot -f'; \
         sleep 1; i=$((i+1)); done 2>/dev/null | \
         vmm --kernel {GUEST_VMLINUX} --initrd {GUEST_INITRAMFS} --memory 256 \
         --cmdline 'console=ttyS0 reboot=k panic=-1 pci=off quiet stratum.exit=shell'\n\
         echo VMM-EXIT=$?\n"
    );
    let outcome = run(script);
    assert!(
        outcome.lines_with("stdin-ok-42").next().is_some(),
        "the guest shell did not run the command:\n{}",
        outcome.console_tail(40)
    );
    assert_eq!(vmm_exit(&outcome), Some(0));
}

#[test]
fn missing_kvm_device_is_a_clear_error() {
    // Hide the real device node, as on a host without the kvm module.
    let script = format!(
        "mv /dev/kvm /dev/kvm.hidden\n{}mv /dev/kvm.hidden /dev/kvm\n",
        boot_script(GUEST_VMLINUX, 1, "")
    );
    let outcome = run(script);
    assert_eq!(vmm_exit(&outcome), Some(1));
    assert!(
        outcome.console.contains("cannot open /dev/kvm"),
        "{}",
        outcome.console_tail(20)
    );
    assert_eq!(outcome.lines_with("STRATUM-GUEST-UP").count(), 0);
}

#[test]
fn initrd_too_large_for_memory_is_refused_before_boot() {
    // 64 MiB of RAM hold the kernel (loaded at 16 MiB) but not it plus a
    // 60 MiB initrd.
    let script = format!(
        "dd if=/dev/zero of=/tmp/big.img bs=1M count=60 2>/dev/null\n\
         vmm --kernel {GUEST_VMLINUX} --initrd /tmp/big.img --memory 64 --no-console-input\n\
         echo VMM-EXIT=$?\n"
    );
    let outcome = run(script);
    assert_eq!(vmm_exit(&outcome), Some(1));
    assert!(
        outcome
            .console
            .contains("too small for the kernel and initrd"),
        "{}",
        outcome.console_tail(20)
    );
}
