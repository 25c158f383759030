#!/usr/bin/env bash
# Build the Stratum guest kernel from Debian's linux-source-6.1.
# Outputs (symlinks): guest-vmlinux (ELF with PVH note), guest-bzImage
set -euo pipefail
# shellcheck source=guest-images/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
FRAGMENT="$HERE/guest-kernel.config"

ensure_pkgs linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev xz-utils
lock_cache guest-kernel

src_tar=/usr/src/linux-source-6.1.tar.xz
[[ -f "$src_tar" ]] || die "$src_tar missing (package linux-source-6.1)"
src_ver=$(dpkg-query -W -f='${Version}' linux-source-6.1)

# Sources are keyed by package version only, so a config change does not
# re-extract; the build dir (O=) is keyed by everything that affects it.
src_root="$CACHE_ROOT/linux-src/$src_ver"
src="$src_root/linux-source-6.1"
if [[ ! -f "$src_root/.done" ]]; then
    log "extracting $src_tar ($src_ver)"
    rm -rf "$src_root"
    mkdir -p "$src_root"
    tar -xf "$src_tar" -C "$src_root"
    touch "$src_root/.done"
fi

key=$(hash_inputs "$src_ver" "$FRAGMENT" "${BASH_SOURCE[0]}" "$(gcc -dumpfullversion)")
out="$CACHE_ROOT/guest-kernel/$key"

configure() {
    make -s -C "$src" O="$out" tinyconfig >/dev/null
    "$src/scripts/kconfig/merge_config.sh" -m -O "$out" "$out/.config" "$FRAGMENT" >/dev/null
    make -s -C "$src" O="$out" olddefconfig >/dev/null
}

# Fail loudly if Kconfig silently dropped any requested option.
verify_config() {
    local missing=() line opt
    while IFS= read -r line; do
        case "$line" in
        CONFIG_*=*)
            grep -qxF "$line" "$out/.config" || missing+=("$line")
            ;;
        "# CONFIG_"*" is not set")
            opt=${line#\# }
            opt=${opt%% *}
            grep -q "^$opt=" "$out/.config" && missing+=("$line")
            ;;
        esac
    done <"$FRAGMENT"
    if ((${#missing[@]})); then
        log "options not honoured by Kconfig (check dependencies):"
        printf '    %s\n' "${missing[@]}" >&2
        exit 1
    fi
}

if [[ ! -f "$out/.done" ]]; then
    mkdir -p "$out"
    log "configuring in $out"
    configure
    verify_config
    log "building vmlinux bzImage with -j$(nproc)"
    start=$SECONDS
    make -s -C "$src" O="$out" -j"$(nproc)" vmlinux bzImage
    log "kernel built in $((SECONDS - start))s"
    touch "$out/.done"
fi

expose "$out/vmlinux" guest-vmlinux
expose "$out/arch/x86/boot/bzImage" guest-bzImage
log "guest kernel ready: $IMAGES_DIR/guest-vmlinux, guest-bzImage"
