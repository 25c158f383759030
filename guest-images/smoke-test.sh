#!/usr/bin/env bash
# Boot the guest images under QEMU TCG (no KVM needed) and check that the
# guest init contract holds: the STRATUM-GUEST-UP line appears and the guest
# ends QEMU by itself (stratum.exit=reboot with -no-reboot), and with
# stratum.exit=run it runs the script from the command line, reports its
# status and ends QEMU too.
set -euo pipefail
# shellcheck source=guest-images/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ensure_pkgs qemu-system-x86

# boot NAME EXPECTED-REGEX QEMU-ARGS...
boot() {
    local name=$1 expect=$2 log rc=0
    shift 2
    log=$(mktemp)
    timeout 60 qemu-system-x86_64 -accel tcg -cpu max -m 256 -nodefaults \
        -no-user-config -display none -serial stdio -no-reboot \
        -initrd "$IMAGES_DIR/guest-initramfs.cpio.gz" "$@" >"$log" 2>&1 || rc=$?
    if ((rc != 0)) || ! grep -Eq "$expect" "$log"; then
        tail -n 30 "$log" >&2
        rm -f "$log"
        die "$name: expected /$expect/ and a clean QEMU exit (rc=$rc)"
    fi
    log "$name: ok ($(grep -Eo "$expect" "$log"))"
    rm -f "$log"
}

# PVH entry via the ELF note; QEMU's microvm writes an MP table when
# ACPI is off, so the CPU count is checked here.
boot "microvm + PVH vmlinux" 'STRATUM-GUEST-UP cpus=2 kernel=[^ ]+' \
    -M microvm,acpi=off -smp 2 -kernel "$IMAGES_DIR/guest-vmlinux" \
    -append "console=ttyS0 reboot=k panic=-1 quiet"

# bzImage via SeaBIOS; its MP table lists only the boot CPU under TCG.
boot "pc + bzImage" 'STRATUM-GUEST-UP cpus=[0-9]+ kernel=[^ ]+' \
    -M pc -smp 2 -kernel "$IMAGES_DIR/guest-bzImage" \
    -append "console=ttyS0 reboot=k panic=-1 quiet"

# The script runs (its status is computed), the status is reported, then
# the guest reboots.
run_script=$(printf 'exit $((6 * 7))\n' | base64 -w0)
boot "microvm + stratum.exit=run" 'STRATUM-GUEST-RUN-EXIT=42' \
    -M microvm,acpi=off -kernel "$IMAGES_DIR/guest-vmlinux" \
    -append "console=ttyS0 reboot=k panic=-1 quiet stratum.exit=run stratum.run=$run_script"
