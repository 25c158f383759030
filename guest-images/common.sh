# Shared helpers for guest-images/*.sh (sourced, not executed).
# shellcheck shell=bash

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGES_DIR="${STRATUM_IMAGES:-$REPO_ROOT/build/images}"
# Relative STRATUM_IMAGES values are taken relative to the repo root.
case "$IMAGES_DIR" in /*) ;; *) IMAGES_DIR="$REPO_ROOT/$IMAGES_DIR" ;; esac
CACHE_ROOT="${STRATUM_CACHE:-/var/cache/stratum}"

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Install the given Debian packages only if some are missing (fast when
# present). Nothing the machine has is ever removed (`--no-remove`): a
# conflict stops the install with apt's explanation instead.
#
# QEMU: a machine whose QEMU tools (qemu-utils) come from
# bookworm-backports cannot take Debian 12's own emulator (qemu-utils 10
# breaks qemu-system-common 7.2). It gets the emulator of the very same
# version from bookworm-backports, with that release as apt's target so the
# emulator's own dependencies (qemu-system-common/-data, seabios) come from
# there too. The backports source is a list kept in the cache and given to
# apt for that install only; the machine's apt configuration is not changed.
ensure_pkgs() {
    local missing=() p qemu_ver
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    qemu_ver=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
    if [[ $qemu_ver != *~bpo* ]]; then
        apt_install "${missing[@]}"
        return
    fi
    local rest=() want_qemu=no
    for p in "${missing[@]}"; do
        if [[ $p == qemu-system-x86 ]]; then want_qemu=yes; else rest+=("$p"); fi
    done
    if ((${#rest[@]})); then
        apt_install "${rest[@]}"
    fi
    if [[ $want_qemu == yes ]]; then
        apt_install -o "Dir::Etc::SourceParts=$(backports_source_parts)" \
            -t bookworm-backports "qemu-system-x86=$qemu_ver"
    fi
}

# apt-get install with the given options and packages, after an index
# update with the same options; never removes a package.
apt_install() {
    local opts=()
    while (($#)) && [[ $1 == -* ]]; do
        opts+=("$1" "$2")
        shift 2
    done
    log "installing: $*"
    apt-get "${opts[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive apt-get "${opts[@]}" install -y -qq --no-remove "$@"
}

# A sources.list.d for apt: the machine's own entries plus
# bookworm-backports. Prints its path.
backports_source_parts() {
    local dir="$CACHE_ROOT/apt/sources.list.d" f
    mkdir -p "$dir"
    find "$dir" -mindepth 1 -delete
    for f in /etc/apt/sources.list.d/*; do
        [[ -e $f ]] && ln -s "$f" "$dir/"
    done
    cat >"$dir/stratum-bookworm-backports.sources" <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    printf '%s\n' "$dir"
}

# Hash of the given strings/files: used as the cache key for outputs.
# File contents (not names) are hashed, so the key does not depend on the
# cwd; comment and blank lines are left out so that documentation edits do
# not trigger a kernel rebuild. "# CONFIG_... is not set" lines are kept.
hash_inputs() {
    local item
    for item in "$@"; do
        if [[ -f "$item" ]]; then
            grep -Ev '^[[:space:]]*(#([^ ]| [^C]|$)|$)' "$item" | sha256sum
        else
            printf '%s\n' "$item"
        fi
    done | sha256sum | cut -c1-16
}

# expose SRC NAME: symlink a cached artefact into the images dir.
expose() {
    mkdir -p "$IMAGES_DIR"
    ln -sfn "$1" "$IMAGES_DIR/$2"
}

# Serialize concurrent runs of the same script (e.g. `make images` from two
# shells): they would otherwise build into the same cache directory.
lock_cache() {
    mkdir -p "$CACHE_ROOT"
    exec 9>"$CACHE_ROOT/$1.lock"
    if ! flock -n 9; then
        log "waiting for another $1 build to finish"
        flock 9
    fi
}
