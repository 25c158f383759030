//! The guest's part of a scenario: a shell script the guest's init runs
//! from the kernel command line.
//!
//! The guest initramfs's init (guest-images/guest-init) takes
//! `stratum.exit=run stratum.run=<base64 of a script>`: it runs the script
//! with `sh`, its stdin, stdout and stderr on the serial console, prints
//! `STRATUM-GUEST-RUN-EXIT=<status>` ([`RUN_EXIT`]), waits until the
//! console has sent everything and reboots, which ends the VM. Nothing is
//! typed into the console, so nothing the script contains is echoed there:
//! every line on the console is the guest's own output, and a marker may
//! appear literally in the script. The serial input path has tests of its
//! own (tests/tests/vmm_boot.rs).

use crate::error::{Error, Result};
use crate::paths::{GUEST_INITRAMFS, GUEST_VMLINUX};
use crate::Outcome;

/// The guest command line of the scenarios, without the script.
pub const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off quiet";

/// The longest kernel command line, in bytes: x86 Linux keeps 2048 with
/// the terminating NUL, and vmm refuses longer ones.
pub const CMDLINE_MAX: usize = 2047;

/// The guest init's line after the script ended, followed by its status.
pub const RUN_EXIT: &str = "STRATUM-GUEST-RUN-EXIT=";

/// `base`, then `stratum.exit=run stratum.run=<base64 of script>`: a
/// command line on which the guest runs `script` and then reboots. The same
/// string serves vmm's `--cmdline` and QEMU's `-append`. Fails if the
/// result is longer than [`CMDLINE_MAX`] (the base64 of a script is 4/3 of
/// its length). `base` goes into single quotes in the scenarios: it must
/// not contain any.
pub fn run_cmdline(base: &str, script: &str) -> Result<String> {
    let cmdline = format!(
        "{} stratum.exit=run stratum.run={}",
        base.trim(),
        base64(script.as_bytes())
    );
    if cmdline.len() > CMDLINE_MAX {
        return Err(Error::CmdlineTooLong {
            len: cmdline.len(),
            max: CMDLINE_MAX,
            script_len: script.len(),
        });
    }
    Ok(cmdline)
}

/// Scenario lines that boot the guest with `vmm_args` (its console on
/// stdout, no console input) and [`CMDLINE`] plus `extra_cmdline`, run
/// `script` in it, and print `VMM-EXIT=<vmm's status>` once the VM ended.
///
/// # Panics
///
/// If the command line gets too long ([`run_cmdline`]); meant for tests,
/// where that is a mistake in the test.
pub fn in_guest(vmm_args: &str, extra_cmdline: &str, script: &str) -> String {
    let cmdline = run_cmdline(&format!("{CMDLINE} {extra_cmdline}"), script)
        .unwrap_or_else(|e| panic!("{e}"));
    format!(
        "vmm --kernel {GUEST_VMLINUX} --initrd {GUEST_INITRAMFS} --memory 256 {vmm_args} \
         --no-console-input --cmdline '{cmdline}'\n\
         echo VMM-EXIT=$?\n"
    )
}

/// The exit statuses of the guest scripts, in console order, as the guest
/// init reported them.
pub fn run_exits(outcome: &Outcome) -> Vec<&str> {
    outcome
        .lines_with(RUN_EXIT)
        .map(|l| l[RUN_EXIT.len()..].trim())
        .collect()
}

/// Lines of 16 hex bytes, as `od -An -tx1` prints them.
pub fn hex_lines(outcome: &Outcome) -> Vec<String> {
    outcome
        .console
        .lines()
        .map(str::trim)
        .filter(|l| {
            let bytes: Vec<&str> = l.split_whitespace().collect();
            bytes.len() == 16
                && bytes
                    .iter()
                    .all(|b| b.len() == 2 && u8::from_str_radix(b, 16).is_ok())
        })
        .map(str::to_string)
        .collect()
}

/// Standard base64 with padding (RFC 4648), as busybox `base64 -d` reads it.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648() {
        let cases: [(&[u8], &str); 7] = [
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
        ];
        for (data, encoded) in cases {
            assert_eq!(base64(data), encoded);
        }
        assert_eq!(base64(&[0xfb, 0xff, 0xbf]), "+/+/");
    }

    #[test]
    fn the_command_line_carries_the_script_and_has_a_limit() {
        let cmdline = run_cmdline("console=ttyS0 ", "echo hi\n").unwrap();
        assert_eq!(
            cmdline,
            "console=ttyS0 stratum.exit=run stratum.run=ZWNobyBoaQo="
        );
        let fits = "x".repeat((CMDLINE_MAX - CMDLINE.len() - 30) / 4 * 3);
        assert!(run_cmdline(CMDLINE, &fits).is_ok());
        let err = run_cmdline(CMDLINE, &"x".repeat(1600)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("2047"), "{msg}");
        assert!(msg.contains("1600-byte"), "{msg}");
    }
}
