//! Bad input to `vmm` gets a clear error and a non-zero exit, never a hang
//! or a crash. These run on any Linux host: every check here happens before
//! (or instead of) running a guest.

// Test helpers may panic: a broken fixture fails the test that uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{tiny_elf, Scratch};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

/// Runs `vmm` with `args` and a deadline; a VMM that hangs fails the test.
fn vmm(args: &[&str]) -> Output {
    let mut child = Command::new(VMM)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmm");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait for vmm").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("vmm {args:?} did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect vmm output")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_fails_with(args: &[&str], needle: &str) {
    let out = vmm(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in {err:?}"
    );
    assert!(!err.contains("panicked"), "{args:?}: {err}");
}

#[test]
fn missing_kernel_file() {
    assert_fails_with(
        &["--kernel", "/nonexistent/vmlinux"],
        "cannot open kernel /nonexistent/vmlinux",
    );
}

#[test]
fn unreadable_initrd() {
    let s = Scratch::new("initrd");
    let kernel = s.file("vmlinux", &tiny_elf(16));
    assert_fails_with(
        &["--kernel", &kernel, "--initrd", "/nonexistent/initrd"],
        "cannot open initrd /nonexistent/initrd",
    );
    let dir = s.0.display().to_string();
    assert_fails_with(&["--kernel", &kernel, "--initrd", &dir], "initrd");
}

#[test]
fn corrupt_kernel_images() {
    let s = Scratch::new("corrupt");
    let garbage = s.file("garbage", &[0x42; 8192]);
    assert_fails_with(
        &["--kernel", &garbage],
        "neither an x86_64 ELF vmlinux nor a bzImage",
    );
    let empty = s.file("empty", b"");
    assert_fails_with(
        &["--kernel", &empty],
        "neither an x86_64 ELF vmlinux nor a bzImage",
    );
    let mut truncated = tiny_elf(4096);
    truncated.truncate(0x78 + 100);
    let truncated = s.file("truncated", &truncated);
    assert_fails_with(&["--kernel", &truncated], "corrupt or does not fit");
    let mut arm = tiny_elf(16);
    arm[18] = 183;
    let arm = s.file("arm", &arm);
    assert_fails_with(&["--kernel", &arm], "not a 64-bit x86_64 image");
    // A real kernel directory entry, not a file.
    let dir = s.0.display().to_string();
    assert_fails_with(&["--kernel", &dir], "kernel");
}

#[test]
fn memory_too_small_for_kernel_or_initrd() {
    let s = Scratch::new("small");
    // The kernel loads at 16 MiB: 8 MiB of RAM cannot hold it.
    let kernel = s.file("vmlinux", &tiny_elf(16));
    assert_fails_with(
        &["--kernel", &kernel, "--memory", "8"],
        "too small for the kernel, which loads up to 0x1000010",
    );
    // 17 MiB holds the kernel but not an 8 MiB initrd above it.
    let initrd = s.file("initrd", &vec![7u8; 8 << 20]);
    assert_fails_with(
        &["--kernel", &kernel, "--initrd", &initrd, "--memory", "17"],
        "too small for the kernel and initrd",
    );
}

#[test]
fn vcpu_and_memory_bounds() {
    let s = Scratch::new("bounds");
    let kernel = s.file("vmlinux", &tiny_elf(16));
    assert_fails_with(&["--kernel", &kernel, "--vcpus", "0"], "at least one vCPU");
    assert_fails_with(&["--kernel", &kernel, "--vcpus", "255"], "at most 254");
    assert_fails_with(&["--kernel", &kernel, "--memory", "0"], "at least 1 MiB");
    assert_fails_with(
        &["--kernel", &kernel, "--memory", "1099511627776"],
        "but the host has only",
    );
    assert_fails_with(
        &[
            "--kernel",
            &kernel,
            "--memory",
            "64",
            "--balloon",
            "amount_mib=65",
        ],
        "the balloon's target of 65 MiB is larger than the guest's 64 MiB",
    );
}

#[test]
fn missing_kvm_device() {
    let s = Scratch::new("nokvm");
    let kernel = s.file("vmlinux", &tiny_elf(16));
    assert_fails_with(
        &["--kernel", &kernel, "--kvm-device", "/nonexistent/kvm"],
        "cannot open /nonexistent/kvm",
    );
}

#[test]
fn command_line_errors_exit_2() {
    let out = vmm(&["--vcpus", "2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--kernel"));
    let out = vmm(&["--kernel", "x", "--vcpus", "many"]);
    assert_eq!(out.status.code(), Some(2));
    let out = vmm(&["--kernel", "x", "--balloon", "amount_mib=1,hinting"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("amount_mib=N[,deflate_on_oom][,stats=S]"));
    let out = vmm(&["--api-sock", "/tmp/x.sock", "--balloon", "amount_mib=1"]);
    assert_eq!(out.status.code(), Some(2));
}

/// On a host whose KVM cannot run an unmodified Linux (PVM), the VMM must
/// stop with an error that says so, not hang; where KVM can run it, the
/// guest boots and resets. Either way it ends, and says which.
#[test]
fn real_kernel_boots_or_fails_with_a_hint() {
    let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/images");
    let kernel = images.join("guest-vmlinux");
    let initrd = images.join("guest-initramfs.cpio.gz");
    assert!(
        kernel.exists(),
        "{} is missing: run `make images`",
        kernel.display()
    );
    let out = vmm(&[
        "--kernel",
        &kernel.display().to_string(),
        "--initrd",
        &initrd.display().to_string(),
        "--cmdline",
        "console=ttyS0 reboot=k panic=-1 quiet",
    ]);
    let console = String::from_utf8_lossy(&out.stdout);
    if !Path::new("/dev/kvm").exists() {
        assert!(
            stderr(&out).contains("cannot open /dev/kvm"),
            "{}",
            stderr(&out)
        );
    } else if out.status.success() {
        assert!(
            console.contains("STRATUM-GUEST-UP"),
            "exit 0 without a boot: {console}"
        );
    } else {
        let err = stderr(&out);
        assert!(err.contains("KVM_EXIT_INTERNAL_ERROR"), "{err}");
        assert!(err.contains("PVM"), "the hint names PVM: {err}");
    }
}
