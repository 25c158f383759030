#!/usr/bin/env bash
# Build the guest initramfs: busybox-static + guest-images/guest-init as /init,
# plus /bin/blkbench (guest-images/blkbench.c, static) for `bench-io` and
# /bin/vsock-tool (guest-images/vsock-tool.c, static) for the vsock tests and
# /bin/tcp-bench (guest-images/tcp-bench.c, static) for `bench-net`.
# Output (symlink): guest-initramfs.cpio.gz
set -euo pipefail
# shellcheck source=guest-images/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
INIT="$HERE/guest-init"
BLKBENCH="$HERE/blkbench.c"
VSOCK_TOOL="$HERE/vsock-tool.c"
TCP_BENCH="$HERE/tcp-bench.c"

ensure_pkgs busybox-static cpio gzip gcc libc6-dev
lock_cache guest-initramfs

bb_ver=$(dpkg-query -W -f='${Version}' busybox-static)
# The compiler and the static libc are inputs of the C tools. Their sources
# are hashed whole: hash_inputs would drop C's `#include`/`#define` lines as
# shell comments.
cc_ver="$(gcc --version | head -n1) libc6-dev $(dpkg-query -W -f='${Version}' libc6-dev)"
src_sum=$(cat "$BLKBENCH" "$VSOCK_TOOL" "$TCP_BENCH" | sha256sum)
key=$(hash_inputs "$bb_ver" "$cc_ver" "$src_sum" "$INIT" "${BASH_SOURCE[0]}")
out="$CACHE_ROOT/guest-initramfs/$key"

if [[ ! -f "$out/.done" ]]; then
    log "building initramfs in $out"
    rm -rf "$out"
    stage="$out/root"
    mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,etc,root}
    cp /bin/busybox "$stage/bin/busybox"
    # Applet symlinks at build time: no `busybox --install` needed at boot.
    /bin/busybox --list-full | while read -r applet; do
        [[ -e "$stage/$applet" ]] || ln -s /bin/busybox "$stage/$applet"
    done
    install -m 0755 "$INIT" "$stage/init"
    gcc -static -O2 -Wall -Wextra -Werror -o "$stage/bin/blkbench" "$BLKBENCH"
    gcc -static -O2 -Wall -Wextra -Werror -o "$stage/bin/vsock-tool" "$VSOCK_TOOL"
    gcc -static -O2 -Wall -Wextra -Werror -o "$stage/bin/tcp-bench" "$TCP_BENCH"
    strip "$stage/bin/blkbench" "$stage/bin/vsock-tool" "$stage/bin/tcp-bench"
    # Deterministic archive: fixed mtimes and owner, sorted names.
    find "$stage" -exec touch -h -d @0 {} +
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
        cpio -o -H newc -R 0:0 --reproducible --quiet) | gzip -n -9 >"$out/initramfs.cpio.gz"
    rm -rf "$stage"
    touch "$out/.done"
fi

expose "$out/initramfs.cpio.gz" guest-initramfs.cpio.gz
log "guest initramfs ready: $IMAGES_DIR/guest-initramfs.cpio.gz"
