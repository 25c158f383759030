# Shared helpers for guest-images/*.sh (sourced, not executed).
# shellcheck shell=bash

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGES_DIR="${STRATUM_IMAGES:-$REPO_ROOT/build/images}"
# Relative STRATUM_IMAGES values are taken relative to the repo root.
case "$IMAGES_DIR" in /*) ;; *) IMAGES_DIR="$REPO_ROOT/$IMAGES_DIR" ;; esac
CACHE_ROOT="${STRATUM_CACHE:-/var/cache/stratum}"

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Install the given Debian packages only if some are missing (fast when present).
ensure_pkgs() {
    local missing=() p
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if ((${#missing[@]})); then
        log "installing: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
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
