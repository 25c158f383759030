//! virtio-blk with a real Linux guest on real KVM, in the nested test
//! host. Images live on the nested host's tmpfs; the guest's init runs the
//! test's script from the kernel command line, and the nested host's shell
//! checks the image after vmm exits.

use stratum_tests::guest::{in_guest, run_exits};
use stratum_tests::paths::GUEST_VMLINUX;
use stratum_tests::{NestedHost, Outcome, Scenario};

fn run(script: String) -> Outcome {
    run_scenario(Scenario::new(script))
}

fn run_scenario(scenario: Scenario) -> Outcome {
    let host = NestedHost::from_env().unwrap_or_else(|e| panic!("{e}"));
    let outcome = host
        .run(&scenario.timeout(std::time::Duration::from_secs(300)))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.host_kvm, "the nested host has no /dev/kvm");
    outcome
}

/// The value of the first console line `NAME=value`.
fn value<'a>(outcome: &'a Outcome, name: &str) -> Option<&'a str> {
    let prefix = format!("{name}=");
    outcome
        .console
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(prefix.as_str()))
}

/// The hex bytes of the lines labelled `label:` (from `od -v -An -tx1 |
/// sed s/^/label:/`), in order.
fn labelled_bytes(outcome: &Outcome, label: &str) -> Vec<u8> {
    let prefix = format!("{label}:");
    outcome
        .console
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .flat_map(|l| l.split_whitespace())
        .map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|e| panic!("{b:?}: {e}")))
        .collect()
}

/// `count` 16-byte blocks of `image` from byte `offset`, labelled.
fn dump(image: &str, offset: u64, count: u64, label: &str) -> String {
    assert_eq!(offset % 16, 0);
    format!(
        "dd if={image} bs=16 skip={} count={count} 2>/dev/null | od -v -An -tx1 | sed s/^/{label}:/\n",
        offset / 16
    )
}

const SECTOR: u64 = 512;

#[test]
fn guest_and_host_see_each_others_writes_through_acpi_and_the_command_line() {
    // An 8 MiB image with a pattern the host wrote at sector 100.
    let mut script = String::from(
        "dd if=/dev/zero of=/tmp/disk.img bs=1M count=8 2>/dev/null\n\
         printf HOSTPATTERN-0123 | dd of=/tmp/disk.img bs=512 seek=100 conv=notrunc 2>/dev/null\n",
    );
    // First boot, with ACPI: the guest reads the host's pattern, checks
    // size and serial, and writes its own pattern at sector 2051.
    script += &in_guest(
        "--drive path=/tmp/disk.img,serial=stratum-sn-1",
        "",
        "test -b /dev/vda && echo SERIAL=$(cat /sys/block/vda/serial) && \
         echo SIZE=$(cat /sys/block/vda/size) && \
         echo CACHE=$(cat /sys/block/vda/queue/write_cache) && \
         echo READ=$(dd if=/dev/vda bs=512 skip=100 count=1 2>/dev/null | head -c 16) && \
         printf GUESTPATTERN-ABC | dd of=/dev/vda bs=512 seek=2051 conv=fsync && sync",
    );
    script += &dump("/tmp/disk.img", 2051 * SECTOR - 16, 3, "IMG-1");
    // Second boot, without ACPI (the device is declared on the kernel
    // command line): the guest reads what it wrote before and writes the
    // image's last sector.
    script += &in_guest(
        "--drive path=/tmp/disk.img",
        "acpi=off",
        "test -b /dev/vda && \
         echo READ2=$(dd if=/dev/vda bs=512 skip=2051 count=1 2>/dev/null | head -c 16) && \
         printf SECONDWRITE-XYZW | dd of=/dev/vda bs=512 seek=16383 conv=fsync && sync",
    );
    script += &dump("/tmp/disk.img", 16383 * SECTOR - 16, 2, "IMG-2");
    script += "echo IMAGE-SIZE=$(wc -c < /tmp/disk.img)\n";
    let outcome = run(script);
    let tail = || outcome.console_tail(60);

    let exits: Vec<&str> = outcome.lines_with("VMM-EXIT=").map(str::trim).collect();
    assert_eq!(exits, ["VMM-EXIT=0", "VMM-EXIT=0"], "{}", tail());
    assert_eq!(run_exits(&outcome), ["0", "0"], "{}", tail());
    assert_eq!(
        value(&outcome, "SERIAL"),
        Some("stratum-sn-1"),
        "{}",
        tail()
    );
    assert_eq!(value(&outcome, "SIZE"), Some("16384"), "{}", tail());
    // FLUSH was negotiated: the guest flushes a write-back cache.
    assert_eq!(value(&outcome, "CACHE"), Some("write back"), "{}", tail());
    assert_eq!(
        value(&outcome, "READ"),
        Some("HOSTPATTERN-0123"),
        "{}",
        tail()
    );
    assert_eq!(
        value(&outcome, "READ2"),
        Some("GUESTPATTERN-ABC"),
        "{}",
        tail()
    );

    // The guest's writes are in the image at the right place, and nothing
    // around them changed.
    let mut expected = vec![0u8; 16];
    expected.extend_from_slice(b"GUESTPATTERN-ABC");
    expected.extend_from_slice(&[0; 16]);
    assert_eq!(labelled_bytes(&outcome, "IMG-1"), expected, "{}", tail());
    let mut expected = vec![0u8; 16];
    expected.extend_from_slice(b"SECONDWRITE-XYZW");
    assert_eq!(labelled_bytes(&outcome, "IMG-2"), expected, "{}", tail());
    assert_eq!(value(&outcome, "IMAGE-SIZE"), Some("8388608"), "{}", tail());
}

#[test]
fn read_only_drive_refuses_writes_drives_come_in_order_and_a_missing_image_is_an_error() {
    let mut script = String::from(
        "dd if=/dev/zero of=/tmp/rw.img bs=1M count=1 2>/dev/null\n\
         dd if=/dev/zero of=/tmp/ro.img bs=1M count=2 2>/dev/null\n\
         printf READONLYDATA-789 | dd of=/tmp/ro.img conv=notrunc 2>/dev/null\n\
         echo BEFORE=$(md5sum < /tmp/ro.img)\n",
    );
    // vda is the read-write drive, vdb the read-only one, then the
    // entropy device: all three are found.
    script += &in_guest(
        "--drive path=/tmp/rw.img,id=rw,serial=first \
         --drive path=/tmp/ro.img,id=ro,ro,serial=second --entropy",
        "",
        "test -b /dev/vdb && echo SERIALS=$(cat /sys/block/vda/serial),$(cat /sys/block/vdb/serial) && \
         echo RO=$(cat /sys/block/vda/ro),$(cat /sys/block/vdb/ro) && \
         echo RNG=$(cat /sys/class/misc/hw_random/rng_current) && \
         echo READ=$(head -c 16 /dev/vdb) && \
         { printf XXXXXXXXXXXXXXXX | dd of=/dev/vdb conv=fsync; echo WRITE-RC=$?; } && \
         sync",
    );
    script += "echo AFTER=$(md5sum < /tmp/ro.img)\n";
    script += &dump("/tmp/ro.img", 0, 2, "IMG");
    // A missing image: a one-line error naming it, exit 1; a bad --drive
    // is a command-line error, exit 2.
    script += &format!(
        "vmm --kernel {GUEST_VMLINUX} --drive path=/tmp/missing.img </dev/null 2>&1 | sed s/^/OUT-1:/\n\
         vmm --kernel {GUEST_VMLINUX} --drive path=/tmp/missing.img </dev/null >/dev/null 2>&1; echo RC-1=$?\n\
         vmm --kernel {GUEST_VMLINUX} --drive ro,id=x </dev/null 2>&1 | sed s/^/OUT-2:/\n\
         vmm --kernel {GUEST_VMLINUX} --drive ro,id=x </dev/null >/dev/null 2>&1; echo RC-2=$?\n"
    );
    let outcome = run(script);
    let tail = || outcome.console_tail(60);

    let exits: Vec<&str> = outcome.lines_with("VMM-EXIT=").map(str::trim).collect();
    assert_eq!(exits, ["VMM-EXIT=0"], "{}", tail());
    assert_eq!(run_exits(&outcome), ["0"], "{}", tail());
    assert_eq!(
        value(&outcome, "SERIALS"),
        Some("first,second"),
        "{}",
        tail()
    );
    assert_eq!(value(&outcome, "RO"), Some("0,1"), "{}", tail());
    assert!(
        value(&outcome, "RNG").is_some_and(|r| r.starts_with("virtio_rng")),
        "{}",
        tail()
    );
    assert_eq!(
        value(&outcome, "READ"),
        Some("READONLYDATA-789"),
        "{}",
        tail()
    );
    let write_rc = value(&outcome, "WRITE-RC");
    assert!(
        write_rc.is_some_and(|rc| rc != "0"),
        "the guest's write to the read-only drive must fail: {write_rc:?}\n{}",
        tail()
    );
    let before = value(&outcome, "BEFORE");
    assert!(before.is_some(), "{}", tail());
    assert_eq!(value(&outcome, "AFTER"), before, "the image changed");
    let mut expected = b"READONLYDATA-789".to_vec();
    expected.extend_from_slice(&[0; 16]);
    assert_eq!(labelled_bytes(&outcome, "IMG"), expected, "{}", tail());

    assert_eq!(value(&outcome, "RC-1"), Some("1"), "{}", tail());
    let message: Vec<&str> = outcome.lines_with("OUT-1:").collect();
    assert_eq!(message.len(), 1, "one line: {message:?}");
    assert!(
        message[0].contains("vmm: error:") && message[0].contains("/tmp/missing.img"),
        "{message:?}"
    );
    assert_eq!(value(&outcome, "RC-2"), Some("2"), "{}", tail());
    assert!(
        outcome
            .lines_with("OUT-2:")
            .any(|l| l.contains("path=PATH")),
        "{}",
        tail()
    );
}

/// A static tool for the guest that zeroes a byte range of a block device
/// the two ways Linux turns into VIRTIO_BLK_T_WRITE_ZEROES: `zero` is the
/// BLKZEROOUT ioctl (the range must stay allocated: no unmap flag), `punch`
/// is fallocate(PUNCH_HOLE) on the device (the unmap flag). Busybox 1.35's
/// blkdiscard has no `-z`, and the guest's initramfs has nothing else that
/// zeroes.
const ZERO_TOOL_C: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s zero|punch DEVICE OFFSET LENGTH\n", argv[0]);
        return 2;
    }
    int fd = open(argv[2], O_WRONLY);
    if (fd < 0) {
        perror(argv[2]);
        return 1;
    }
    uint64_t range[2] = {strtoull(argv[3], NULL, 0), strtoull(argv[4], NULL, 0)};
    int rc = strcmp(argv[1], "zero") == 0
        ? ioctl(fd, BLKZEROOUT, range)
        : fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, range[0], range[1]);
    if (rc != 0) {
        perror(argv[1]);
        return 1;
    }
    return 0;
}
"#;

/// [`ZERO_TOOL_C`] built static with the host's C compiler (which `make
/// images` needs too), padded to whole sectors so that it can be a drive.
fn zero_tool_image() -> Vec<u8> {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("virtio-block-zero-tool");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let (src, out) = (dir.join("zero-tool.c"), dir.join("zero-tool"));
    std::fs::write(&src, ZERO_TOOL_C).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    let status = std::process::Command::new("cc")
        .args(["-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| panic!("cc (install build-essential): {e}"));
    assert!(status.success(), "cc failed to build {}", src.display());
    let mut image = std::fs::read(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    image.resize(image.len().next_multiple_of(SECTOR as usize), 0);
    image
}

#[test]
fn discard_and_write_zeroes_reach_the_image() {
    const TOOL: &str = "/stratum/extra/zero-tool.img";
    const MIB: u64 = 1 << 20;
    // An 8 MiB image, fully allocated on the nested host's tmpfs.
    let mut script = String::from(
        "dd if=/dev/zero of=/tmp/disk.img bs=1M count=8 2>/dev/null\n\
         echo BLOCKS-BEFORE=$(stat -c %b /tmp/disk.img)\n",
    );
    // The guest writes a pattern over the first 2 MiB, then clears the
    // first MiB: 512 KiB discarded (busybox blkdiscard), 256 KiB zeroed
    // without unmap and 256 KiB with it (the tool, from the second drive).
    script += &in_guest(
        &format!("--drive path=/tmp/disk.img --drive path={TOOL},ro"),
        "",
        &format!(
            "test -b /dev/vdb && \
             echo DISCARD-MAX=$(cat /sys/block/vda/queue/discard_max_bytes) && \
             echo DISCARD-GRANULARITY=$(cat /sys/block/vda/queue/discard_granularity) && \
             echo ZEROES-MAX=$(cat /sys/block/vda/queue/write_zeroes_max_bytes) && \
             yes STRATUM | head -c {two_mib} > /dev/vda && sync && \
             {{ blkdiscard -o 0 -l {half} /dev/vda; echo DISCARD-RC=$?; }} && \
             cat /dev/vdb > /tmp/zero-tool && chmod +x /tmp/zero-tool && \
             {{ /tmp/zero-tool zero /dev/vda {half} {quarter}; echo ZERO-RC=$?; }} && \
             {{ /tmp/zero-tool punch /dev/vda {three_quarters} {quarter}; echo PUNCH-RC=$?; }} && \
             sync && echo GUEST-ZERO=$(cmp -n {MIB} /dev/vda /dev/zero && echo yes)",
            two_mib = 2 * MIB,
            half = MIB / 2,
            quarter = MIB / 4,
            three_quarters = 3 * MIB / 4,
        ),
    );
    script += &format!(
        "echo BLOCKS-AFTER=$(stat -c %b /tmp/disk.img)\n\
         echo HOST-ZERO=$(cmp -n {MIB} /tmp/disk.img /dev/zero && echo yes)\n\
         echo HOST-REST=$(dd if=/tmp/disk.img bs=1M skip=1 count=1 2>/dev/null | md5sum | cut -c1-32)\n\
         echo PATTERN=$(yes STRATUM | head -c {MIB} | md5sum | cut -c1-32)\n\
         echo IMAGE-SIZE=$(wc -c < /tmp/disk.img)\n"
    );
    let outcome = run_scenario(Scenario::new(script).bytes(TOOL, zero_tool_image(), 0o644));
    let tail = || outcome.console_tail(60);

    let exits: Vec<&str> = outcome.lines_with("VMM-EXIT=").map(str::trim).collect();
    assert_eq!(exits, ["VMM-EXIT=0"], "{}", tail());
    assert_eq!(run_exits(&outcome), ["0"], "{}", tail());
    // The config space's limits, as the guest's block layer took them:
    // 2 GiB per range, 4 KiB granularity.
    assert_eq!(
        value(&outcome, "DISCARD-MAX"),
        Some("2147483648"),
        "{}",
        tail()
    );
    assert_eq!(
        value(&outcome, "DISCARD-GRANULARITY"),
        Some("4096"),
        "{}",
        tail()
    );
    assert_eq!(
        value(&outcome, "ZEROES-MAX"),
        Some("2147483648"),
        "{}",
        tail()
    );
    for rc in ["DISCARD-RC", "ZERO-RC", "PUNCH-RC"] {
        assert_eq!(value(&outcome, rc), Some("0"), "{rc}\n{}", tail());
    }
    assert_eq!(value(&outcome, "GUEST-ZERO"), Some("yes"), "{}", tail());

    // The first MiB of the image reads as zeroes, the second still has the
    // pattern, and the size did not change.
    assert_eq!(value(&outcome, "HOST-ZERO"), Some("yes"), "{}", tail());
    let pattern = value(&outcome, "PATTERN");
    assert!(pattern.is_some_and(|p| p.len() == 32), "{}", tail());
    assert_eq!(value(&outcome, "HOST-REST"), pattern, "{}", tail());
    assert_eq!(value(&outcome, "IMAGE-SIZE"), Some("8388608"), "{}", tail());
    // The discarded 512 KiB and the 256 KiB zeroed with unmap were
    // deallocated (1536 sectors); the 256 KiB zeroed without unmap stayed
    // allocated (tmpfs has no ZERO_RANGE: the device wrote zeroes).
    let blocks = |name| {
        value(&outcome, name)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name}\n{}", tail()))
    };
    assert_eq!(blocks("BLOCKS-BEFORE"), 8 * MIB / SECTOR, "{}", tail());
    assert_eq!(
        blocks("BLOCKS-BEFORE") - blocks("BLOCKS-AFTER"),
        (MIB / 2 + MIB / 4) / SECTOR,
        "{}",
        tail()
    );
}
