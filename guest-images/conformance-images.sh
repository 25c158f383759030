#!/usr/bin/env bash
# Build the images the CRI validation suite (critest v1.26.1, `make
# conformance`) pulls by name from registry.k8s.io and
# gcr.io/k8s-staging-cri-tools, which no machine here reaches. Each is a
# busybox-style image made with umoci from Debian's busybox, plus what the
# Dockerfiles under ../shared/tools/cri-tools-v1.26.1/images and the
# suite's specs (pkg/validate/*.go) need of it.
#
# The busybox is Debian's dynamically linked `busybox` package, not
# busybox-static: the static build's ash prefers applets (standalone
# shell), so `sh -c ls` runs ls inside the shell, while the upstream
# image's ash looks `ls` up on PATH and execs /bin/ls. The MaskedPaths
# spec masks /bin/ls and wants `sh -c ls` to fail with "/bin/sh: ls:
# Permission denied". The package conflicts with busybox-static, so it is
# not installed: its .deb (`apt-get download`) is unpacked in the build
# dir, and the libraries `ldd` names for it (glibc's: libc, libresolv and
# the loader, the host's libc6 at the version in the cache key) go into
# the image at the same paths.
#
# - busybox: /bin/busybox and its applets (hard links), /etc/passwd and /etc/group as
#   the busybox image's (root, daemon, bin, sys, sync, mail, www-data=33,
#   operator, nobody), /tmp, /var/run. Debian's busybox lacks `pgrep` and
#   `ipcs`, which the specs run (`pgrep sleep`, `ipcs -m`): small shell
#   stand-ins over /proc give what they print.
# - nginx (e2e-test-images/nginx:1.14-2) and hostnet-nginx-amd64: an
#   `nginx` that serves /usr/share/nginx/html with `busybox httpd` on the
#   port of /etc/nginx/conf.d/default.conf (80; 12003 for hostnet-nginx,
#   whose default.conf is the Dockerfile's), writes /var/run/nginx.pid,
#   shows up to `pidof nginx` and has "master process" in its argv as the
#   real master's title (the HostPID, PodPID and ContainerPID specs).
# - httpd (e2e-test-images/httpd:2.4.39-4): `httpd-foreground` logs
#   Apache's "Command line: 'httpd -D FOREGROUND'" (the multi-container
#   log spec) and serves port 80 with `busybox httpd`.
# - nonewprivs:1.3: a setuid-root static C `nnp` printing
#   "Effective uid: N" as its entrypoint (the NoNewPrivs specs).
# - test-image-user-{uid,username,uid-group,username-group}: busybox with
#   USER 1002, www-data, 1003:1004, www-data:1004; test-image-predefined-group:
#   default-user (uid 1000) in group-defined-in-image (gid 50000), USER 1000.
# - test-image-{1,2,3,latest}, test-image-tag:{test,all}: busybox plus a
#   file named after the image (distinct images); test-image-tags:{1,2,3}:
#   one image (a file `same-image`) under three tags, one digest.
# - pause:3.6 (registry.k8s.io): the sandbox image containerd's CRI
#   plugin runs in every pod: a static C `/pause` as Kubernetes' (waits
#   for a signal, reaps children), alone in its image.
# - test-image-digest@sha256:9700f9…: not built; no local build can have
#   upstream's digest (the runner skips that one spec and says so).
#
# Output: $STRATUM_CACHE/conformance-images/<hash of inputs>/ with `oci/`
# (one OCI layout, a tag per image) and `images.list` ("LAYOUT_TAG
# NAME:TAG" per line: push oci:LAYOUT:LAYOUT_TAG as NAME:TAG). Its path is
# the last line on stdout. A second run with the same inputs builds nothing.
set -euo pipefail
# shellcheck source=guest-images/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CRI_TOOLS_IMAGES="${CRI_TOOLS_IMAGES:-$REPO_ROOT/../shared/tools/cri-tools-v1.26.1/images}"
HOSTNET_CONF="$CRI_TOOLS_IMAGES/hostnet-nginx/default.conf"
[[ -f $HOSTNET_CONF ]] || die "$HOSTNET_CONF is missing (cri-tools v1.26.1's images/ directory; set CRI_TOOLS_IMAGES)"

ensure_pkgs apt umoci gcc libc6 libc6-dev
lock_cache conformance-images

# The busybox package's version: apt's candidate, the one downloaded below.
bb_ver=$(apt-cache policy busybox 2>/dev/null | awk '/Candidate:/ {print $2}')
if [[ -z $bb_ver || $bb_ver == "(none)" ]]; then
    apt-get update -qq
    bb_ver=$(apt-cache policy busybox | awk '/Candidate:/ {print $2}')
fi
[[ -n $bb_ver && $bb_ver != "(none)" ]] || die "apt knows no busybox package"

# The nonewprivs test binary (kubernetes test/images/nonewprivs/nnp.c).
NNP_C='#include <stdio.h>
#include <unistd.h>
int main(void) { printf("Effective uid: %d\n", geteuid()); return 0; }
'
# The sandbox's pause process (after kubernetes build/pause/linux/pause.c).
PAUSE_C='#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void sigdown(int signo) { psignal(signo, "Shutting down, got signal"); exit(0); }
static void sigreap(int signo) { (void)signo; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
    struct sigaction down = {.sa_handler = sigdown};
    struct sigaction reap = {.sa_handler = sigreap, .sa_flags = SA_NOCLDSTOP};
    if (sigaction(SIGINT, &down, NULL) < 0 || sigaction(SIGTERM, &down, NULL) < 0 ||
        sigaction(SIGCHLD, &reap, NULL) < 0)
        return 1;
    for (;;)
        pause();
}
'

libc_ver=$(dpkg-query -W -f='${Version}' libc6)
cc_ver="$(gcc --version | head -n1) libc6-dev $(dpkg-query -W -f='${Version}' libc6-dev)"
umoci_ver=$(umoci --version)
# This script is hashed whole: its heredocs are image contents.
key=$(printf '%s\n' "busybox $bb_ver" "libc6 $libc_ver" "$cc_ver" "$umoci_ver" "$NNP_C" "$PAUSE_C" \
    "$(sha256sum <"${BASH_SOURCE[0]}")" "$(sha256sum <"$HOSTNET_CONF")" | sha256sum | cut -c1-16)
out="$CACHE_ROOT/conformance-images/$key"

if [[ -f "$out/.done" ]]; then
    log "images ready (cached): $out"
    printf '%s\n' "$out"
    exit 0
fi

log "building the critest images in $out"
rm -rf "$out"
mkdir -p "$out"
work="$out/work"
layout="$out/oci"
list="$out/images.list.tmp"
: >"$list"
umoci init --layout "$layout"

# --- the busybox base ------------------------------------------------------

# Debian's (dynamically linked) busybox, unpacked, not installed.
mkdir -p "$work/deb"
chmod 777 "$work/deb" # apt's _apt user downloads into it
(cd "$work/deb" && apt-get download -qq "busybox=$bb_ver")
dpkg-deb -x "$work"/deb/busybox_*.deb "$work/deb/root"
bb="$work/deb/root/bin/busybox"
[[ -x $bb ]] || die "no bin/busybox in busybox $bb_ver"

umoci new --image "$layout:empty"
umoci unpack --image "$layout:empty" "$work/base"
root="$work/base/rootfs"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,root,home,var/run,var/www}
install -d -m 1777 "$root/tmp"
cp "$bb" "$root/bin/busybox"
# Its libraries and loader, at the paths ldd resolves them to (the
# loader's default search path: no ld.so.cache needed).
libs=$(ldd "$bb") || die "ldd $bb failed"
! grep -q 'not found' <<<"$libs" || die "busybox $bb_ver needs a library the host lacks: $libs"
for lib in $(awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$libs"); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
chroot "$root" /bin/busybox true || die "busybox $bb_ver does not run in the image (libraries: $libs)"
# Hard links, as in the busybox images: a masked or replaced applet path
# (MaskedPaths masks /bin/ls) must not take the others with it, which a
# symlink to /bin/busybox would (the mount follows it).
"$bb" --list-full | while read -r applet; do
    [[ -e "$root/$applet" || -L "$root/$applet" ]] || ln "$root/bin/busybox" "$root/$applet"
done
cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
lp:x:7:
mail:x:8:
kmem:x:9:
wheel:x:10:root
cdrom:x:11:
dialout:x:18:
floppy:x:19:
video:x:28:
audio:x:29:
tape:x:32:
www-data:x:33:
operator:x:37:
staff:x:50:
users:x:100:
nogroup:x:65534:
EOF
# `pgrep PATTERN`: pids whose name matches (extended regex), as procps'.
cat >"$root/usr/bin/pgrep" <<'EOF'
#!/bin/sh
# Stand-in for procps pgrep (Debian's busybox has none): pids whose
# process name matches the extended regex $1, one a line; 1 if none.
[ $# -eq 1 ] || { echo "usage: pgrep PATTERN" >&2; exit 2; }
found=1
for d in /proc/[0-9]*; do
    read -r comm <"$d/comm" 2>/dev/null || continue
    if echo "$comm" | grep -Eq -- "$1"; then
        echo "${d#/proc/}"
        found=0
    fi
done
exit $found
EOF
# `ipcs -m`: the System V shared memory segments of the IPC namespace.
cat >"$root/usr/bin/ipcs" <<'EOF'
#!/bin/sh
# Stand-in for `ipcs -m` (Debian's busybox has no ipcs): the segments of
# this IPC namespace from /proc/sysvipc/shm, in util-linux's columns.
[ "$*" = "-m" ] || { echo "usage: ipcs -m" >&2; exit 2; }
echo
echo "------ Shared Memory Segments --------"
echo "key        shmid      owner      perms      bytes      nattch     status"
tail -n +2 /proc/sysvipc/shm | while read -r key shmid perms size cpid lpid nattch uid rest; do
    printf '0x%08x %-10s %-10s %-10s %-10s %-10s\n' "$key" "$shmid" "$uid" "$perms" "$size" "$nattch"
done
echo
EOF
chmod 0755 "$root/usr/bin/pgrep" "$root/usr/bin/ipcs"
umoci repack --image "$layout:busybox" "$work/base"
umoci config --image "$layout:busybox" --config.cmd=sh \
    --config.env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
printf '%s\n' "busybox registry.k8s.io/e2e-test-images/busybox:1.29-2" >>"$list"

# --- pause -----------------------------------------------------------------

umoci unpack --image "$layout:empty" "$work/pause"
printf '%s' "$PAUSE_C" >"$work/pause.c"
gcc -static -O2 -Wall -Werror -o "$work/pause/rootfs/pause" "$work/pause.c"
strip "$work/pause/rootfs/pause"
umoci repack --image "$layout:pause" "$work/pause"
umoci config --image "$layout:pause" --config.entrypoint=/pause --config.user=65535:65535
rm -rf "$work/pause"
umoci rm --image "$layout:empty"
printf '%s\n' "pause registry.k8s.io/pause:3.6" >>"$list"

# derive NEW_TAG: a copy of the busybox image, with $work/NEW_TAG/rootfs
# (an unpacked copy) changed by the caller before `repack NEW_TAG`.
derive() {
    umoci tag --image "$layout:busybox" "$1"
    umoci unpack --image "$layout:$1" "$work/$1"
}
repack() {
    umoci repack --image "$layout:$1" "$work/$1"
    rm -rf "${work:?}/$1"
}

# --- web servers -----------------------------------------------------------

NGINX_SH='#!/bin/sh
# Stand-in for nginx (critest only looks at what it serves, its pid file,
# its process name and its master title): serves /usr/share/nginx/html
# with busybox httpd on the port of /etc/nginx/conf.d/default.conf. This
# shell stays the "nginx" process, as the master does; its argv carries
# the master process title (/proc/PID/cmdline).
if [ "$1" != "nginx: master process" ]; then
    exec /usr/sbin/nginx "nginx: master process" "$@"
fi
port=$(sed -n "s/^ *listen *\([0-9][0-9]*\);.*/\1/p" /etc/nginx/conf.d/default.conf | head -n1)
echo $$ >/var/run/nginx.pid
httpd -f -p "${port:-80}" -h /usr/share/nginx/html &
child=$!
trap "kill \$child 2>/dev/null; rm -f /var/run/nginx.pid; exit 0" TERM INT QUIT
wait
'

nginx_image() { # TAG DEFAULT_CONF
    derive "$1"
    local r="$work/$1/rootfs"
    mkdir -p "$r/etc/nginx/conf.d" "$r/usr/share/nginx/html"
    cp "$2" "$r/etc/nginx/conf.d/default.conf"
    printf '%s' "$NGINX_SH" >"$r/usr/sbin/nginx"
    chmod 0755 "$r/usr/sbin/nginx"
    printf '<html><body><h1>Welcome to nginx!</h1></body></html>\n' >"$r/usr/share/nginx/html/index.html"
    repack "$1"
    umoci config --image "$layout:$1" --config.cmd=nginx --config.cmd=-g --config.cmd='daemon off;' \
        --config.exposedports="$(sed -n 's/^ *listen *\([0-9][0-9]*\);.*/\1/p' "$2" | head -n1)/tcp"
}
printf 'server {\n    listen       80;\n    server_name  localhost;\n    location / {\n        root   /usr/share/nginx/html;\n    }\n}\n' \
    >"$work/nginx-default.conf"
nginx_image nginx "$work/nginx-default.conf"
printf '%s\n' "nginx registry.k8s.io/e2e-test-images/nginx:1.14-2" >>"$list"
nginx_image hostnet-nginx "$HOSTNET_CONF"
printf '%s\n' "hostnet-nginx gcr.io/k8s-staging-cri-tools/hostnet-nginx-amd64:latest" >>"$list"

derive httpd
r="$work/httpd/rootfs"
mkdir -p "$r/usr/local/bin" "$r/usr/local/apache2/htdocs"
cat >"$r/usr/local/bin/httpd-foreground" <<'EOF'
#!/bin/sh
# Stand-in for Apache's httpd-foreground: its start-up line, then port 80
# served by busybox httpd in the foreground.
echo "[core:notice] [pid $$] AH00094: Command line: 'httpd -D FOREGROUND'" >&2
exec httpd -f -p 80 -h /usr/local/apache2/htdocs
EOF
chmod 0755 "$r/usr/local/bin/httpd-foreground"
printf '<html><body><h1>It works!</h1></body></html>\n' >"$r/usr/local/apache2/htdocs/index.html"
repack httpd
umoci config --image "$layout:httpd" --config.cmd=httpd-foreground --config.exposedports=80/tcp \
    --config.workingdir=/usr/local/apache2
printf '%s\n' "httpd registry.k8s.io/e2e-test-images/httpd:2.4.39-4" >>"$list"

# --- nonewprivs ------------------------------------------------------------

derive nonewprivs
r="$work/nonewprivs/rootfs"
mkdir -p "$r/usr/local/bin"
printf '%s' "$NNP_C" >"$work/nnp.c"
gcc -static -O2 -Wall -Werror -o "$r/usr/local/bin/nnp" "$work/nnp.c"
strip "$r/usr/local/bin/nnp"
chown 0:0 "$r/usr/local/bin/nnp"
chmod 4755 "$r/usr/local/bin/nnp"
repack nonewprivs
umoci config --image "$layout:nonewprivs" --config.entrypoint=/usr/local/bin/nnp --clear=config.cmd
printf '%s\n' "nonewprivs registry.k8s.io/e2e-test-images/nonewprivs:1.3" >>"$list"

# --- users -----------------------------------------------------------------

for pair in user-uid=1002 user-username=www-data user-uid-group=1003:1004 user-username-group=www-data:1004; do
    tag="test-image-${pair%%=*}"
    umoci tag --image "$layout:busybox" "$tag"
    umoci config --image "$layout:$tag" --config.user="${pair#*=}"
    printf '%s\n' "$tag gcr.io/k8s-staging-cri-tools/$tag:latest" >>"$list"
done

derive test-image-predefined-group
r="$work/test-image-predefined-group/rootfs"
echo 'default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh' >>"$r/etc/passwd"
printf '%s\n' 'default-user:x:1000:' 'group-defined-in-image:x:50000:default-user' >>"$r/etc/group"
mkdir -p "$r/home/default-user"
chown 1000:1000 "$r/home/default-user"
repack test-image-predefined-group
umoci config --image "$layout:test-image-predefined-group" --config.user=1000
printf '%s\n' "test-image-predefined-group gcr.io/k8s-staging-cri-tools/test-image-predefined-group:latest" >>"$list"

# --- images told apart by a file -------------------------------------------

file_image() { # TAG FILE
    derive "$1"
    : >"$work/$1/rootfs/$2"
    repack "$1"
}
for n in 1 2 3 latest; do
    file_image "test-image-$n" "test-image-$n"
    printf '%s\n' "test-image-$n gcr.io/k8s-staging-cri-tools/test-image-$n:latest" >>"$list"
done
for t in test all; do
    file_image "test-image-tag-$t" "$t"
    printf '%s\n' "test-image-tag-$t gcr.io/k8s-staging-cri-tools/test-image-tag:$t" >>"$list"
done
file_image test-image-tags same-image
for t in 1 2 3; do
    printf '%s\n' "test-image-tags gcr.io/k8s-staging-cri-tools/test-image-tags:$t" >>"$list"
done

umoci gc --layout "$layout"
rm -rf "$work"
mv "$list" "$out/images.list"
touch "$out/.done"
log "images ready: $out"
printf '%s\n' "$out"
