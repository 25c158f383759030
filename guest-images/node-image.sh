#!/usr/bin/env bash
# The node image: Debian 12 from Debian's packages (mmdebstrap) booted with
# Debian's stock cloud kernel and an initramfs made by initramfs-tools.
#
# Usage: node-image.sh GUEST_AGENT_BINARY VM_IMAGE_TOOL
#
# Outputs (symlinks in $STRATUM_IMAGES):
#   node-vmlinuz      linux-image-cloud-amd64's kernel, unchanged
#   node-initrd.img   initramfs-tools' initramfs (MODULES=list: the virtio
#                     transports, disks, network and vsock the VM has)
#   node-rootfs.raw   sparse raw ext4, 2 GiB, label stratum-root, holding
#                     systemd, cloud-init (NoCloud), openssh-server, etcd
#                     (server, client), containerd + runc, and the guest
#                     agent as the systemd unit stratum-guest.service
#   node-cmdline      the image's default kernel command line
#   node-image.oci    the three as one VM image: an OCI image layout (tag
#                     bookworm) made by VM_IMAGE_TOOL (stratum-vm-image),
#                     for `nodectl image import` or a registry
#
# Two cache stages: the Debian tree (slow: downloads, dpkg; keyed by this
# script and the kernel's version) and the disk image (quick: the tree plus
# the guest agent; keyed by both), so a change of the guest agent does not
# download Debian again.
set -euo pipefail
# shellcheck source=guest-images/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

guest_agent=${1:?usage: node-image.sh GUEST_AGENT_BINARY VM_IMAGE_TOOL}
vm_image_tool=${2:?usage: node-image.sh GUEST_AGENT_BINARY VM_IMAGE_TOOL}
[[ -x $guest_agent ]] || die "guest agent $guest_agent is not an executable"
if ! file -b "$guest_agent" | grep -q 'static'; then
    die "guest agent $guest_agent is not statically linked"
fi

ensure_pkgs mmdebstrap e2fsprogs file
lock_cache node-image

# Services the roles turn on (user-data's runcmd or a role template): a
# plain node runs neither etcd nor containerd.
ROLE_SERVICES=(etcd containerd)
PACKAGES=(
    systemd systemd-sysv udev dbus
    cloud-init openssh-server sudo
    ifupdown isc-dhcp-client iproute2 iputils-ping
    etcd-server etcd-client containerd runc
    linux-image-cloud-amd64 initramfs-tools
)
# Modules the initramfs loads, so that the root disk is found: the
# virtio-mmio transport (its devices are ACPI LNRO0005), disks, and what
# the guest agent and the network need early. ext4 is built in.
INITRAMFS_MODULES=(virtio_mmio virtio_blk virtio_net vsock
    vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport)
DISK_SIZE=2G
CMDLINE="console=ttyS0 root=LABEL=stratum-root ro panic=-1"

kernel_version=$(apt-cache policy linux-image-cloud-amd64 | awk '/Candidate:/ {print $2}')
[[ -n $kernel_version && $kernel_version != "(none)" ]] || {
    apt-get update -qq
    kernel_version=$(apt-cache policy linux-image-cloud-amd64 | awk '/Candidate:/ {print $2}')
}
tree_key=$(hash_inputs "${BASH_SOURCE[0]}" "$kernel_version" "${PACKAGES[*]}")
tree_out="$CACHE_ROOT/node-tree/$tree_key"

build_tree() {
    local tmp="$tree_out.tmp"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    local modules_file
    modules_file=$(printf '%s\n' "${INITRAMFS_MODULES[@]}")
    local started=$SECONDS
    # --variant=minbase + the packages: what a cloud image has, without the
    # documentation (path-exclude) that only makes the disk larger.
    mmdebstrap --variant=minbase --mode=root \
        --include="$(IFS=,; echo "${PACKAGES[*]}")" \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --setup-hook='mkdir -p "$1/etc/initramfs-tools/conf.d"' \
        --setup-hook='echo MODULES=list > "$1/etc/initramfs-tools/conf.d/stratum"' \
        --customize-hook="printf '%s\n' '$modules_file' >> \"\$1/etc/initramfs-tools/modules\"" \
        --customize-hook='chroot "$1" update-initramfs -u -k all' \
        --customize-hook="chroot \"\$1\" systemctl disable ${ROLE_SERVICES[*]}" \
        --customize-hook='echo "LABEL=stratum-root / ext4 rw,discard,errors=remount-ro 0 1" > "$1/etc/fstab"' \
        --customize-hook='printf "%s\n" "datasource_list: [ NoCloud, None ]" "locale: C.UTF-8" > "$1/etc/cloud/cloud.cfg.d/90-stratum.cfg"' \
        --customize-hook='echo localhost > "$1/etc/hostname"' \
        --customize-hook=': > "$1/etc/machine-id"; rm -f "$1/var/lib/dbus/machine-id"' \
        --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
        bookworm "$tmp/root"
    local kver
    kver=$(basename "$(ls -d "$tmp"/root/lib/modules/*-cloud-amd64 | head -1)")
    cp "$tmp/root/boot/vmlinuz-$kver" "$tmp/vmlinuz"
    cp "$tmp/root/boot/initrd.img-$kver" "$tmp/initrd.img"
    chmod 0644 "$tmp/vmlinuz" "$tmp/initrd.img"
    # The kernel and initramfs are the image's own layers, not the disk's.
    rm -f "$tmp"/root/boot/vmlinuz-* "$tmp"/root/boot/initrd.img-* "$tmp"/root/vmlinuz* "$tmp"/root/initrd.img*
    echo "$kver" >"$tmp/kernel-release"
    echo "$((SECONDS - started))" >"$tmp/build-seconds"
    rm -rf "$tree_out"
    mv "$tmp" "$tree_out"
    touch "$tree_out/.done"
}

if [[ ! -f $tree_out/.done ]]; then
    log "building the Debian tree into $tree_out (mmdebstrap; several minutes)"
    build_tree
fi

# hash_inputs reads files as text: the binary goes in as its digest.
agent_digest=$(sha256sum "$guest_agent" | cut -d' ' -f1)
image_key=$(hash_inputs "$tree_key" "$agent_digest" "$DISK_SIZE" "$CMDLINE" "${BASH_SOURCE[0]}" \
    "$(sha256sum "$vm_image_tool" | cut -d' ' -f1)")
image_out="$CACHE_ROOT/node-image/$image_key"
if [[ ! -f $image_out/.done ]]; then
    log "making the node disk image in $image_out"
    rm -rf "$image_out"
    mkdir -p "$image_out"
    staging=$(mktemp -d "$image_out/tree.XXXXXX")
    cp -a --reflink=auto "$tree_out/root/." "$staging/"
    install -m 0755 "$guest_agent" "$staging/usr/local/bin/stratum-guest"
    cat >"$staging/etc/systemd/system/stratum-guest.service" <<'UNIT'
[Unit]
Description=Stratum guest agent (reports readiness and addresses to the host over vsock)
After=local-fs.target
ConditionVirtualization=vm

[Service]
ExecStart=/usr/local/bin/stratum-guest
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
UNIT
    ln -sfn /etc/systemd/system/stratum-guest.service \
        "$staging/etc/systemd/system/multi-user.target.wants/stratum-guest.service"
    mkfs.ext4 -q -F -L stratum-root -E root_owner=0:0 -d "$staging" "$image_out/rootfs.raw.tmp" "$DISK_SIZE"
    rm -rf "$staging"
    mv "$image_out/rootfs.raw.tmp" "$image_out/rootfs.raw"
    ln -sfn "$tree_out/vmlinuz" "$image_out/vmlinuz"
    ln -sfn "$tree_out/initrd.img" "$image_out/initrd.img"
    echo "$CMDLINE" >"$image_out/cmdline"
    "$vm_image_tool" --kernel "$tree_out/vmlinuz" --initrd "$tree_out/initrd.img" \
        --disk "$image_out/rootfs.raw" --cmdline "$CMDLINE" --tag bookworm --out "$image_out/node.oci"
    touch "$image_out/.done"
fi

# Older builds are hundreds of MiB each: the current one and the most
# recent other one are kept (another checkout, e.g. a fresh clone beside a
# working tree, has binaries of its own and so a build of its own).
touch "$tree_out" "$image_out"
for kind in node-tree node-image; do
    ls -1dt "$CACHE_ROOT/$kind"/*/ 2>/dev/null | tail -n +3 | while read -r old; do
        old=${old%/}
        [[ $old == "$tree_out" || $old == "$image_out" ]] || rm -rf "$old"
    done
done

expose "$image_out/vmlinuz" node-vmlinuz
expose "$image_out/initrd.img" node-initrd.img
expose "$image_out/rootfs.raw" node-rootfs.raw
expose "$image_out/cmdline" node-cmdline
expose "$image_out/node.oci" node-image.oci
log "node image ready: $IMAGES_DIR/node-rootfs.raw ($(du -h --apparent-size "$image_out/rootfs.raw" | cut -f1) apparent, $(du -h "$image_out/rootfs.raw" | cut -f1) used; kernel $(cat "$tree_out/kernel-release"); tree built in $(cat "$tree_out/build-seconds")s)"
