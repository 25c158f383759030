//! `vmm` boots a real Linux guest on a real /dev/kvm, inside the nested test
//! host: PVH entry of the ELF vmlinux with 1 and 2 vCPUs, the 64-bit Linux
//! boot protocol of the bzImage, CPUs found through ACPI and through the MP
//! table, every way a guest can end its VM (i8042 reset, triple fault, ACPI
//! reset, ACPI power-off), console input (pastes of random bytes and of
//! lines, early ones and flow-controlled ones, each arriving whole), and
//! the error paths that need a real KVM.

use stratum_tests::guest::{run_cmdline, run_exits, CMDLINE};
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

/// How `reboot=k` (the default of [`boot_script`]) ends the VM, as vmm says.
const KEYBOARD_RESET: &str = "vmm: the guest reset (keyboard controller reset line)";

/// The guest reached its init with `cpus` CPUs online, vmm exited 0
/// after the guest rebooted, and said `ended` of how.
fn assert_booted(outcome: &Outcome, cpus: u8) {
    assert_ended(outcome, cpus, KEYBOARD_RESET);
}

fn assert_ended(outcome: &Outcome, cpus: u8, ended: &str) {
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
    assert!(
        outcome.console.contains(ended),
        "vmm must say {ended:?}:\n{}",
        outcome.console_tail(20)
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
    // reboot=t resets through a triple fault instead of the i8042. What
    // follows the vCPU is its registers, or on AMD (the nested host) that
    // KVM kept none.
    let script = boot_script(GUEST_VMLINUX, 1, "").replace("reboot=k", "reboot=t");
    let outcome = run(script);
    let prefix = "vmm: the guest reset (triple fault on vCPU 0: ";
    assert_ended(&outcome, 1, prefix);
    let state = outcome
        .console
        .lines()
        .find_map(|l| l.split_once(prefix).map(|(_, rest)| rest))
        .unwrap_or_default();
    assert!(
        state.starts_with("registers not kept (KVM re-initialised the vCPU")
            || (state.starts_with("rip 0x") && state.contains(" idt 0x")),
        "neither registers nor why there are none: {state:?}"
    );
}

#[test]
fn acpi_reset_ends_the_vm() {
    // reboot=a writes the FADT's reset register.
    let script = boot_script(GUEST_VMLINUX, 1, "").replace("reboot=k", "reboot=a");
    assert_ended(
        &run(script),
        1,
        "vmm: the guest reset (ACPI reset register)",
    );
}

#[test]
fn acpi_poweroff_ends_the_vm() {
    // poweroff enters ACPI S5 through the sleep control register; without
    // it the guest would halt forever and vmm would never exit.
    let outcome = run(boot_script(GUEST_VMLINUX, 2, "stratum.exit=poweroff"));
    assert_ended(&outcome, 2, "vmm: the guest powered off (ACPI S5)");
    assert!(
        outcome.console.contains("reboot: Power down"),
        "{}",
        outcome.console_tail(20)
    );
}

#[test]
fn the_guest_is_not_offered_hardware_virtualization() {
    // The nested host has SVM and nested KVM; vmm hides both VMX and SVM.
    let guest = run_cmdline(
        "",
        "echo GUEST-VIRT-FLAGS=$(grep -c -w -E 'svm|vmx' /proc/cpuinfo)",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let script = format!(
        "echo HOST-VIRT-FLAGS=$(grep -c -w -E 'svm|vmx' /proc/cpuinfo)\n{}",
        boot_script(GUEST_VMLINUX, 2, guest.trim())
    );
    let outcome = run(script);
    assert_booted(&outcome, 2);
    let count = |key: &str| {
        outcome
            .lines_with(key)
            .next()
            .and_then(|l| l.trim().strip_prefix(key).map(str::to_owned))
            .unwrap_or_else(|| panic!("no {key}: {}", outcome.console_tail(20)))
    };
    assert_eq!(
        count("HOST-VIRT-FLAGS="),
        "2",
        "the host's two CPUs have it"
    );
    assert_eq!(
        count("GUEST-VIRT-FLAGS="),
        "0",
        "{}",
        outcome.console_tail(20)
    );
}

/// Firecracker's `--boot-timer`: a guest's write of 123 at Firecracker's
/// boot-timer address is logged as Firecracker logs it; without the flag
/// only our own init's write (at our address) is.
#[test]
fn boot_timer_answers_at_firecrackers_address_with_the_flag() {
    let guest = run_cmdline("", "devmem 0xc0000000 8 123; echo GUEST-WROTE-TIMER")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut script = String::new();
    for (label, flag) in [("WITH", "--boot-timer"), ("WITHOUT", "")] {
        script += &format!(
            "vmm --kernel {GUEST_VMLINUX} --initrd {GUEST_INITRAMFS} --memory 256 {flag} \
             --level Info --no-console-input --cmdline 'console=ttyS0 reboot=k panic=-1 pci=off quiet {}' \
             2> /tmp/vmm.log\n\
             echo {label}-EXIT=$? {label}-LINES=$(grep -c 'Guest-boot-time = .* us .* ms, .* CPU us .* CPU ms' /tmp/vmm.log)\n",
            guest.trim()
        );
    }
    let outcome = run(script);
    let tail = outcome.console_tail(40);
    assert_eq!(outcome.lines_with("GUEST-WROTE-TIMER").count(), 2, "{tail}");
    assert!(
        outcome.console.contains("WITH-EXIT=0 WITH-LINES=2"),
        "ours and Firecracker's: {tail}"
    );
    assert!(
        outcome.console.contains("WITHOUT-EXIT=0 WITHOUT-LINES=1"),
        "ours only: {tail}"
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

/// Random bytes behind the paste made before the guest is up, sent as
/// base64 lines of [`LINE_CHARS`].
const EARLY_RANDOM: usize = 1500;
/// Bytes pasted in raw mode. Every byte costs the nested guest two port
/// reads that exit to vmm, a millisecond or more under TCG and ten times
/// that on a loaded machine: 4 KiB covers every byte value many times
/// over and stays within minutes at the slowest seen.
const RAW_BYTES: usize = 4 * 1024;
/// Bytes pasted with flow control: three times what the guest's tty
/// buffers before it drops RTS (4 KiB), so most of it must wait in vmm.
const FLOW_BYTES: usize = 12 * 1024;
/// What the UART may take while the guest leaves its input unread: the
/// tty's 4 KiB buffer and the FIFO, with room to spare, and well below
/// [`FLOW_BYTES`].
const TTY_HOLDS: usize = 8 * 1024;
/// How long the guest waits for one paste: far beyond what it takes (the
/// guest's own timeouts, so a slow paste shows as such, not as a hang).
const PASTE_SECS: u32 = 600;
/// Lines of [`LINE_CHARS`] characters pasted in canonical mode.
const LINES: usize = 50;
const LINE_CHARS: usize = 80;
/// How long the guest leaves its input unread with flow control on.
const STALL_SECS: u32 = 8;

#[test]
fn console_input_reaches_the_guest_whole() {
    // Pastes into the console, as a user makes them: the host writes each
    // to vmm's stdin at once, and the guest must get every byte. vmm's
    // stdin is a FIFO the nested host holds open, so vmm never sees its
    // end. The guest reads with tools that write what they got at once
    // (`dd bs=1`, `read`), so a paste cut short still shows how much came.
    // In order:
    // 1. EARLY: base64 lines written as vmm starts, long before the guest's
    //    UART driver is up; the guest reads them once its script runs.
    // 2. RAW: 4 KiB of random bytes with the console in raw mode (every
    //    byte value is data), written when the guest says it is ready.
    // 3. LINES: 50 lines of 80 characters in canonical mode with echo, as
    //    a shell reads them.
    // 4. FLOW: 12 KiB in raw mode with `crtscts`, which the guest leaves
    //    unread for a while: its tty drops RTS once its buffer is full, vmm
    //    must hold the rest back (the UART's receive counter stays put),
    //    and all of it must arrive once the guest reads.
    let early_bytes = EARLY_RANDOM / 3 * 4 / LINE_CHARS * (LINE_CHARS + 1);
    let guest = format!(
        "rx() {{ echo GUEST-$1-RX=$(grep -o 'rx:[0-9]*' /proc/tty/driver/serial | head -n 1 | cut -c4-); }}\n\
         got() {{ echo GUEST-$1-BYTES=$(wc -c < /tmp/$1) GUEST-$1-LINES=$(wc -l < /tmp/$1) \
         GUEST-$1-SHA=$(sha256sum < /tmp/$1 | cut -c1-64); }}\n\
         bytes() {{ timeout $1 dd bs=1 count=$2 of=/tmp/$3 2>/tmp/$3.err; \
         echo GUEST-$3-DD=$? $(grep -v records /tmp/$3.err); got $3; }}\n\
         stty raw -echo\n\
         bytes 60 {early_bytes} EARLY\n\
         echo GUEST-RAW-READY\n\
         bytes {PASTE_SECS} {RAW_BYTES} RAW\n\
         stty sane\n\
         echo GUEST-LINES-READY\n\
         timeout {PASTE_SECS} sh -c 'i=0; while [ $i -lt {LINES} ] && read -r l; do echo $l; i=$((i+1)); done' > /tmp/LINES\n\
         got LINES\n\
         stty raw -echo crtscts\n\
         rx READY; echo GUEST-FLOW-READY\n\
         sleep {STALL_SECS}; rx STALLED\n\
         bytes {PASTE_SECS} {FLOW_BYTES} FLOW; rx END\n\
         echo GUEST-$(grep 0: /proc/tty/driver/serial)\n"
    );
    let cmdline = run_cmdline(CMDLINE, &guest).unwrap_or_else(|e| panic!("{e}"));
    // The console log exists before vmm starts: the background job opens
    // it whenever it is scheduled, and `tail -f` gives up on a missing
    // file (seen on a loaded machine: no guest line reached the test).
    let script = format!(
        "sha() {{ echo HOST-$1-BYTES=$(wc -c < /tmp/$1) HOST-$1-LINES=$(wc -l < /tmp/$1) \
         HOST-$1-SHA=$(sha256sum < /tmp/$1 | cut -c1-64); }}\n\
         head -c {EARLY_RANDOM} /dev/urandom | base64 -w {LINE_CHARS} > /tmp/EARLY; sha EARLY\n\
         head -c {RAW_BYTES} /dev/urandom > /tmp/RAW; sha RAW\n\
         head -c {line_random} /dev/urandom | base64 -w {LINE_CHARS} > /tmp/LINES; sha LINES\n\
         head -c {FLOW_BYTES} /dev/urandom > /tmp/FLOW; sha FLOW\n\
         mkfifo /tmp/in && exec 3<>/tmp/in\n\
         : > /tmp/console.log\n\
         vmm --kernel {GUEST_VMLINUX} --initrd {GUEST_INITRAMFS} --memory 256 \
         --cmdline '{cmdline}' < /tmp/in >> /tmp/console.log 2>&1 &\n\
         VMM=$!\n\
         tail -f /tmp/console.log | grep -a GUEST- &\n\
         cat /tmp/EARLY >&3\n\
         ready() {{ while ! grep -q $1 /tmp/console.log && kill -0 $VMM; do sleep 0.1; done; }}\n\
         ready GUEST-RAW-READY && cat /tmp/RAW >&3\n\
         ready GUEST-LINES-READY && cat /tmp/LINES >&3\n\
         ready GUEST-FLOW-READY && {{ cat /tmp/FLOW >&3 & }}\n\
         wait $VMM; echo VMM-EXIT=$?\n\
         exec 3>&-; sleep 2\n\
         grep -a -E '^\\[ *[0-9]+\\.[0-9]+\\]|STRATUM-' /tmp/console.log | tail -n 40 | sed 's/^/GUEST-CONSOLE /'\n",
        line_random = LINES * LINE_CHARS / 4 * 3,
    );
    let outcome = host()
        .run(&Scenario::new(script).timeout(std::time::Duration::from_secs(1500)))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.host_kvm, "the nested host has no /dev/kvm");
    // What both sides counted, for `--nocapture`.
    let counted = |l: &&str| l.starts_with("HOST-") || l.starts_with("GUEST-");
    for line in outcome.console.lines().filter(counted) {
        println!("{line}");
    }
    let tail = outcome.console_tail(40);
    let value = |name: &str| {
        let prefix = format!("{name}=");
        outcome
            .console
            .lines()
            .flat_map(str::split_whitespace)
            .find_map(|w| w.strip_prefix(prefix.as_str()))
    };
    let number = |name: &str| {
        value(name)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("no {name}:\n{tail}"))
    };
    // The host's data is what the test says it is.
    assert_eq!(number("HOST-EARLY-BYTES"), early_bytes, "{tail}");
    assert_eq!(number("HOST-RAW-BYTES"), RAW_BYTES, "{tail}");
    assert_eq!(number("HOST-LINES-LINES"), LINES, "{tail}");
    assert_eq!(
        number("HOST-LINES-BYTES"),
        LINES * (LINE_CHARS + 1),
        "{tail}"
    );
    assert_eq!(number("HOST-FLOW-BYTES"), FLOW_BYTES, "{tail}");
    // Each raw read ended by itself, not by its timeout (143: a guest too
    // slow to read the paste in time, which would also push the rest of
    // it into the next phase).
    for paste in ["EARLY", "RAW", "FLOW"] {
        assert_eq!(
            value(&format!("GUEST-{paste}-DD")),
            Some("0"),
            "{paste}: the guest's read did not finish:\n{tail}"
        );
    }
    // Each paste arrived whole: as many bytes, the same digest.
    for paste in ["EARLY", "RAW", "LINES", "FLOW"] {
        let host_sha = value(&format!("HOST-{paste}-SHA"));
        assert!(host_sha.is_some_and(|s| s.len() == 64), "{tail}");
        assert_eq!(
            value(&format!("GUEST-{paste}-BYTES")),
            value(&format!("HOST-{paste}-BYTES")),
            "{paste}: bytes lost:\n{tail}"
        );
        assert_eq!(
            value(&format!("GUEST-{paste}-SHA")),
            host_sha,
            "{paste}: the paste arrived changed:\n{tail}"
        );
    }
    // Everything the host sent went through the UART (the receive counter
    // moved by the paste's size): a shortfall above is the guest's, not
    // the device's.
    assert_eq!(
        number("GUEST-END-RX") - number("GUEST-READY-RX"),
        FLOW_BYTES,
        "the UART did not take the whole paste:\n{tail}"
    );
    // While the guest did not read, the UART took no more than its tty
    // could buffer (4 KiB) and the FIFO (64 bytes), with room to spare.
    let held = number("GUEST-STALLED-RX") - number("GUEST-READY-RX");
    assert!(
        held < TTY_HOLDS,
        "vmm kept feeding a guest that dropped RTS: {held} bytes in {STALL_SECS} s\n{tail}"
    );
    assert_eq!(run_exits(&outcome), ["0"], "{tail}");
    assert_eq!(vmm_exit(&outcome), Some(0), "{tail}");
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

/// `--huge-pages`: guest memory comes from the host's hugetlbfs pool (all
/// of it reserved when vmm starts: 64 pages for 128 MiB), and goes back
/// when vmm ends; without pages in the pool vmm says how to reserve them.
#[test]
fn guest_memory_from_the_hugetlbfs_pool() {
    let cmdline = "console=ttyS0 reboot=k panic=-1 pci=off quiet stratum.exit=wait";
    let available =
        "$(awk '/HugePages_Free/ {f=$2} /HugePages_Rsvd/ {r=$2} END {print f-r}' /proc/meminfo)";
    let script = format!(
        "echo 72 > /proc/sys/vm/nr_hugepages\n\
         echo AVAILABLE-BEFORE={available}\n\
         vmm --kernel {GUEST_VMLINUX} --initrd {GUEST_INITRAMFS} --memory 128 --huge-pages \
            --no-console-input --console /tmp/c.log --cmdline '{cmdline}' &\n\
         pid=$!\n\
         i=0; until grep -q STRATUM-GUEST-UP /tmp/c.log 2>/dev/null || [ $i -gt 900 ]; do sleep 0.1; i=$((i+1)); done\n\
         echo BOOTED=$(grep -c STRATUM-GUEST-UP /tmp/c.log)\n\
         echo AVAILABLE-WHILE-RUNNING={available}\n\
         kill $pid; wait $pid\n\
         echo AVAILABLE-AFTER={available}\n\
         echo 0 > /proc/sys/vm/nr_hugepages\n\
         vmm --kernel {GUEST_VMLINUX} --initrd {GUEST_INITRAMFS} --memory 128 --huge-pages \
            --no-console-input --cmdline '{cmdline}'\n\
         echo VMM-EXIT=$?\n"
    );
    let outcome = run(script);
    let tail = outcome.console_tail(30);
    let value = |key: &str| {
        outcome
            .lines_with(key)
            .next()
            .map(|l| l.trim_start_matches(key).trim().to_string())
    };
    assert_eq!(value("AVAILABLE-BEFORE=").as_deref(), Some("72"), "{tail}");
    assert_eq!(value("BOOTED=").as_deref(), Some("1"), "{tail}");
    assert_eq!(
        value("AVAILABLE-WHILE-RUNNING=").as_deref(),
        Some("8"),
        "the guest's 64 pages are taken from the pool\n{tail}"
    );
    assert_eq!(value("AVAILABLE-AFTER=").as_deref(), Some("72"), "{tail}");
    assert_eq!(vmm_exit(&outcome), Some(1), "{tail}");
    assert!(outcome.console.contains("nr_hugepages"), "{tail}");
}
