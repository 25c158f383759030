#!/usr/bin/env bash
# Build (or re-expose from cache) every image in $STRATUM_IMAGES.
# Quick steps first; the guest kernel build is the only slow one.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/host-kernel.sh"
"$here/guest-initramfs.sh"
"$here/guest-kernel.sh"
