#!/usr/bin/env bash
# Fetch Debian's cloud kernel + KVM modules for the nested test host.
# Outputs (symlinks): host-vmlinuz, host-modules/{irqbypass,kvm,kvm-amd,tun}.ko,
# the vhost-vsock modules QEMU's vsock device needs in `make bench`,
# virtio-pci + virtio-blk for the disks a scenario attaches (the node image),
# and the bridge and nftables modules the agent's networks need.
set -euo pipefail
# shellcheck source=guest-images/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ensure_pkgs apt xz-utils
lock_cache host-kernel

meta=linux-image-cloud-amd64
# The metapackage only depends on the real, versioned image package.
real=$(apt-cache depends "$meta" 2>/dev/null |
    awk '/Depends: linux-image-[0-9].*-cloud-amd64/ {print $2; exit}')
if [[ -z "$real" ]]; then
    apt-get update -qq
    real=$(apt-cache depends "$meta" |
        awk '/Depends: linux-image-[0-9].*-cloud-amd64/ {print $2; exit}')
fi
[[ -n "$real" ]] || die "cannot resolve the package behind $meta"
version=$(apt-cache policy "$real" | awk '/Candidate:/ {print $2}')
key=$(hash_inputs "$real" "$version" "${BASH_SOURCE[0]}")
out="$CACHE_ROOT/host-kernel/$key"

if [[ ! -f "$out/.done" ]]; then
    log "fetching $real ($version) into $out"
    rm -rf "$out"
    mkdir -p "$out/debs" "$out/root" "$out/modules"
    chmod 777 "$out/debs" # apt's _apt user downloads into it
    (cd "$out/debs" && apt-get download -qq "$real")
    for deb in "$out"/debs/*.deb; do dpkg -x "$deb" "$out/root"; done
    kver=${real#linux-image-}
    cp "$out/root/boot/vmlinuz-$kver" "$out/vmlinuz"
    moddir="$out/root/lib/modules/$kver/kernel"
    # tun gives the nested host /dev/net/tun for the VMs' TAP devices;
    # vhost_vsock (with what it needs) /dev/vhost-vsock for QEMU's vsock.
    for m in virt/lib/irqbypass arch/x86/kvm/kvm arch/x86/kvm/kvm-amd drivers/net/tun \
        drivers/vhost/vhost_iotlb drivers/vhost/vhost net/vmw_vsock/vsock \
        net/vmw_vsock/vmw_vsock_virtio_transport_common drivers/vhost/vhost_vsock \
        drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_legacy_dev \
        drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci drivers/block/virtio_blk \
        net/llc/llc net/802/stp net/bridge/bridge net/bridge/br_netfilter lib/libcrc32c \
        net/netfilter/nfnetlink net/netfilter/nf_tables net/ipv4/netfilter/nf_defrag_ipv4 \
        net/ipv6/netfilter/nf_defrag_ipv6 net/netfilter/nf_conntrack net/netfilter/nf_nat \
        net/netfilter/nft_ct net/netfilter/nft_chain_nat net/netfilter/nft_nat net/netfilter/nft_masq \
        net/netfilter/nft_fib net/ipv4/netfilter/nft_fib_ipv4 net/ipv6/netfilter/nft_fib_ipv6 \
        net/netfilter/nft_fib_inet net/bridge/netfilter/nft_meta_bridge; do
        name=$(basename "$m")
        if [[ -f "$moddir/$m.ko.xz" ]]; then
            # busybox insmod cannot read compressed modules.
            xz -dc "$moddir/$m.ko.xz" >"$out/modules/$name.ko"
        elif [[ -f "$moddir/$m.ko" ]]; then
            cp "$moddir/$m.ko" "$out/modules/$name.ko"
        else
            die "module $m not found in $real"
        fi
    done
    rm -rf "$out/debs" "$out/root"
    touch "$out/.done"
fi

expose "$out/vmlinuz" host-vmlinuz
expose "$out/modules" host-modules
log "host kernel ready: $IMAGES_DIR/host-vmlinuz ($real $version)"
