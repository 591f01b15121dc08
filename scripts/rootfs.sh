#!/usr/bin/env bash
# Build (once) a cached Debian bookworm rootfs that boots systemd quickly
# inside systemd-nspawn. Used by tests/system (see docs/testing-systemd.md).
#
# Usage: scripts/rootfs.sh [DEST]
#   DEST defaults to $ROOTFS_CACHE_DIR/rootfs-bookworm
#
# Environment:
#   ROOTFS_CACHE_DIR       where the default DEST lives (default ~/.cache/bao-kms-provider/rootfs):
#                          outside the clone, so a fresh clone on the same machine reuses it
#   ROOTFS_MIRROR          debootstrap mirror (default: read from host apt
#                          sources, fallback http://deb.debian.org/debian)
#   ROOTFS_EXTRA_PACKAGES  extra comma-separated packages to --include
#   ROOTFS_BASE            a complete rootfs made by this script: DEST becomes a copy of it with
#                          ROOTFS_EXTRA_PACKAGES installed by apt-get, instead of a second
#                          debootstrap (the dnf host of tests/system)
#   ROOTFS_FORCE=1         rebuild even if the cache is complete
#
# Prints the rootfs's path as the last line of its output.
#
# Idempotent: DEST/.rootfs-complete holds a fingerprint of the build
# configuration; if it matches, nothing is done. The build happens in a
# temp dir next to DEST which is renamed into place only at the very end,
# so an interrupted build never looks complete. Concurrent invocations
# serialise on a lock file.
set -euo pipefail

SUITE=bookworm
# Keep in sync with docs/testing-systemd.md. Bump ROOTFS_LAYOUT_VERSION when
# the customisation below changes so caches are rebuilt.
ROOTFS_LAYOUT_VERSION=2
# rpm: the .rpm install test; python3-apt, python3-yaml: Ansible's apt module and the manifest edit.
BASE_PACKAGES="systemd,systemd-sysv,dbus,iproute2,python3,ca-certificates,procps,rpm,python3-apt,python3-yaml"

dest="${1:-${ROOTFS_CACHE_DIR:-$HOME/.cache/bao-kms-provider/rootfs}/rootfs-$SUITE}"
dest="$(realpath -m "$dest")"
marker="$dest/.rootfs-complete"

log() { printf 'rootfs.sh: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap/chroot)"
command -v debootstrap >/dev/null || die "debootstrap not installed (apt-get install -y debootstrap)"

detect_mirror() {
    local m=""
    # deb822 sources first, then one-line format.
    if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
        m="$(awk '
            /^[[:space:]]*$/ { uris=""; suites=""; next }
            /^URIs:/ { uris=$2 }
            /^Suites:/ { for (i=2;i<=NF;i++) if ($i=="'"$SUITE"'") found=1 }
            uris!="" && found { print uris; exit }
        ' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
    fi
    if [ -z "$m" ]; then
        m="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | sed -nE 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+)[[:space:]]+'"$SUITE"'[[:space:]].*/\2/p' \
            | head -n1 || true)"
    fi
    echo "${m:-http://deb.debian.org/debian}"
}

mirror="${ROOTFS_MIRROR:-$(detect_mirror)}"
packages="$BASE_PACKAGES${ROOTFS_EXTRA_PACKAGES:+,$ROOTFS_EXTRA_PACKAGES}"
fingerprint="layout=$ROOTFS_LAYOUT_VERSION suite=$SUITE packages=$packages"
if [ -n "${ROOTFS_BASE:-}" ]; then
    [ -f "$ROOTFS_BASE/.rootfs-complete" ] || die "ROOTFS_BASE=$ROOTFS_BASE is not a complete rootfs (run $0 $ROOTFS_BASE first)"
    [ -n "${ROOTFS_EXTRA_PACKAGES:-}" ] || die "ROOTFS_BASE needs ROOTFS_EXTRA_PACKAGES: the packages to add to the copy"
    fingerprint="layout=$ROOTFS_LAYOUT_VERSION base=[$(cat "$ROOTFS_BASE/.rootfs-complete")] extra=$ROOTFS_EXTRA_PACKAGES"
fi

mkdir -p "$(dirname "$dest")"
exec 9>"$dest.lock"
flock -w 1800 9 || die "timed out waiting for lock $dest.lock"

if [ "${ROOTFS_FORCE:-0}" != 1 ] && [ -f "$marker" ] && [ "$(cat "$marker")" = "$fingerprint" ]; then
    log "cached rootfs is complete: $dest"
    echo "$dest"
    exit 0
fi

# Remove leftovers of interrupted builds (debootstrap may leave proc/sys
# mounted inside the target).
cleanup_tree() {
    local t="$1"
    [ -e "$t" ] || return 0
    # Unmount anything below $t, deepest first.
    awk -v p="$t/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r |
        while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done
    rm -rf --one-file-system "$t"
}
for stale in "$dest".tmp.* "$dest".old.*; do
    [ -e "$stale" ] || continue
    log "removing stale partial build $stale"
    cleanup_tree "$stale"
done

tmp="$dest.tmp.$$"
trap 'cleanup_tree "$tmp"' EXIT
mkdir -p "$tmp"

in_root() { chroot "$tmp" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

# Publishes $tmp as $dest, replacing an older $dest only once the new one is complete.
publish() {
    echo "$fingerprint" >"$tmp/.rootfs-complete"
    if [ -e "$dest" ]; then
        old="$dest.old.$$"
        mv "$dest" "$old"
        mv "$tmp" "$dest"
        cleanup_tree "$old"
    else
        mv "$tmp" "$dest"
    fi
    trap - EXIT
    log "rootfs ready: $dest ($(du -sh --one-file-system "$dest" | cut -f1), total $(( $(date +%s) - start ))s)"
    echo "$dest"
}

start=$(date +%s)
if [ -n "${ROOTFS_BASE:-}" ]; then
    # Already customised: the copy only gains the extra packages (apt lists fetched and removed again).
    log "copying $ROOTFS_BASE and installing ${ROOTFS_EXTRA_PACKAGES//,/ } into it"
    cp -a --reflink=auto "$ROOTFS_BASE"/. "$tmp"/
    rm -f "$tmp/.rootfs-complete"
    mount -t proc proc "$tmp/proc"
    # shellcheck disable=SC2086 # one word per package
    if ! { in_root apt-get update && in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y \
            ${ROOTFS_EXTRA_PACKAGES//,/ }; } >"$dest.apt.log" 2>&1; then
        tail -n 40 "$dest.apt.log" >&2
        die "apt-get install into the copy of $ROOTFS_BASE failed (full log: $dest.apt.log)"
    fi
    umount "$tmp/proc"
    in_root apt-get clean
    rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/var/cache/apt/*.bin
    publish
    exit 0
fi

log "debootstrap $SUITE from $mirror into $tmp (packages: $packages)"
debootstrap --variant=minbase --include="$packages" \
    --components=main "$SUITE" "$tmp" "$mirror" >"$dest.debootstrap.log" 2>&1 || {
    tail -n 40 "$dest.debootstrap.log" >&2
    die "debootstrap failed (full log: $dest.debootstrap.log)"
}
log "debootstrap took $(( $(date +%s) - start ))s"

# --- customisation for fast, quiet boots under systemd-nspawn -------------

# Password-less root; empty machine-id (systemd derives a transient one from
# the container UUID nspawn passes in; empty != "uninitialized", so no
# first-boot logic runs).
in_root passwd -d root >/dev/null
: >"$tmp/etc/machine-id"
rm -f "$tmp/var/lib/dbus/machine-id"
ln -s /etc/machine-id "$tmp/var/lib/dbus/machine-id"
echo "bao-test" >"$tmp/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tbao-test\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$tmp/etc/hosts"

# Units to mask. Measured: an unmasked minbase rootfs already boots to
# "running" in ~0.2s under nspawn (udev, modules-load, kernel mounts etc. are
# skipped by their Condition*= in a container). We only mask what would
# interfere with tests:
mask_units=(
    # No interactive terminal: the harness uses --console=read-only, a getty
    # on it would be pointless (and fight over the console).
    console-getty.service
    container-getty@.service
    getty@.service
    serial-getty@.service
    getty-static.service
    # The network is the host's (no --private-network): nothing to configure
    # or wait for. (Not installed by default; masked in case extra packages
    # pull them in.)
    systemd-networkd-wait-online.service
    systemd-resolved.service
    systemd-timesyncd.service
    # Periodic maintenance jobs: nondeterministic noise in tests.
    apt-daily.timer
    apt-daily-upgrade.timer
    dpkg-db-backup.timer
    e2scrub_all.timer
    fstrim.timer
    systemd-tmpfiles-clean.timer
)
for u in "${mask_units[@]}"; do
    ln -sf /dev/null "$tmp/etc/systemd/system/$u"
done

# Volatile journal: faster, nothing to clean up; still queryable with
# journalctl while the container runs.
mkdir -p "$tmp/etc/systemd/journald.conf.d"
cat >"$tmp/etc/systemd/journald.conf.d/50-test.conf" <<'EOF'
[Journal]
Storage=volatile
RateLimitIntervalSec=0
RateLimitBurst=0
EOF

# Short timeouts so a misbehaving unit cannot stall stop() for 90s.
mkdir -p "$tmp/etc/systemd/system.conf.d"
cat >"$tmp/etc/systemd/system.conf.d/50-test.conf" <<'EOF'
[Manager]
DefaultTimeoutStartSec=30s
DefaultTimeoutStopSec=10s
EOF

# apt: never try to fetch anything implicitly, keep images small.
cat >"$tmp/etc/apt/apt.conf.d/99-test" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Retries "0";
EOF
in_root apt-get clean
rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/var/cache/apt/*.bin "$tmp"/var/log/journal/*

# No policy-rc.d left behind by debootstrap (would block service starts on
# package install inside the container).
rm -f "$tmp/usr/sbin/policy-rc.d"

# --- atomically publish ---------------------------------------------------
publish
