#!/usr/bin/env bash
# Install the Debian packages named on the command line that are missing,
# as every image script does (see ensure_pkgs in common.sh): nothing the
# machine has is removed.
set -euo pipefail
# shellcheck source=guest-images/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ensure_pkgs "$@"
