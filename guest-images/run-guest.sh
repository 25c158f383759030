# `make run`: runs as /scenario.sh inside the nested test host. Boots the
# Stratum guest with our vmm (2 vCPUs, 256 MiB, PVH entry of the vmlinux),
# its serial console on this console; the guest prints its marker and
# reboots, which ends the VM.
echo "== vmm boots the guest: 2 vCPUs, 256 MiB =="
vmm --kernel /stratum/guest/vmlinux --initrd /stratum/guest/initramfs.cpio.gz \
    --vcpus 2 --memory 256 --no-console-input \
    --cmdline "console=ttyS0 reboot=k panic=-1 pci=off"
status=$?
echo "== vmm exited with status $status =="
exit $status
