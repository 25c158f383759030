//! Helpers for scenarios that drive a guest's shell through vmm's stdin.

use crate::paths::{GUEST_INITRAMFS, GUEST_VMLINUX};
use crate::Outcome;

/// A scenario line that boots the guest into its shell with `vmm_args`
/// and runs `command` there, then prints `VMM-EXIT=<vmm's status>`. The
/// command is resent each second until the shell takes it (bytes typed
/// before the guest's UART is up are lost); it must end with `reboot -f`,
/// which ends the VM, and is chained with `&&` so that a copy that lost its
/// first bytes does nothing. It goes inside single quotes: it must not
/// contain any. The shell echoes what it is sent, so a marker the test
/// looks for should be produced by the command (`echo X=$(...)`), not
/// appear literally in it. The command runs behind `stty -echo`, so the
/// copies still being typed while it runs are not echoed into the middle
/// of its output.
pub fn in_guest_shell(vmm_args: &str, extra_cmdline: &str, command: &str) -> String {
    format!(
        "i=0; while [ $i -lt 60 ]; do echo 'stty -echo && {command}'; sleep 1; i=$((i+1)); done 2>/dev/null | \
         vmm --kernel {GUEST_VMLINUX} --initrd {GUEST_INITRAMFS} --memory 256 {vmm_args} \
         --cmdline 'console=ttyS0 reboot=k panic=-1 pci=off quiet stratum.exit=shell {extra_cmdline}'\n\
         echo VMM-EXIT=$?\n"
    )
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
