#!/usr/bin/env bash
# make repro: builds the packages of HEAD twice, from two fresh clones in different directories,
# each with its own target directory and no shared build output, and checks that the .deb and
# .rpm payloads are byte-identical (docs/packaging.md, "Reproducible packages"). Two full release
# builds: slow (about 2 x `cargo build --release`), so not part of `make test`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
export BUILD_DIR="${BUILD_DIR:-$root/build}"
unset CARGO_TARGET_DIR
work="$(mktemp -d "${TMPDIR:-/tmp}/bao-repro.XXXXXX")"
# REPRO_KEEP=1 keeps both clones and their packages for a look at what differs.
if [ "${REPRO_KEEP:-0}" = 1 ]; then
  echo "repro: keeping $work" >&2
else
  trap 'rm -rf "$work"' EXIT
fi

payload_digests() { # DIR: one line per package: name and payload digest
  local deb rpm member
  for deb in "$1"/*.deb; do
    member="$(ar t "$deb" | grep '^data\.tar')"
    echo "$(basename "$deb") $(ar p "$deb" "$member" | sha256sum | cut -d' ' -f1)"
  done
  for rpm in "$1"/*.rpm; do
    echo "$(basename "$rpm") $(rpm -qp --qf '%{PAYLOADDIGEST}' "$rpm")"
  done
}

commit="$(git -C "$root" rev-parse HEAD)"
for dir in first second-clone-elsewhere; do
  git clone --quiet --no-local "$root" "$work/$dir"
  git -C "$work/$dir" checkout --quiet "$commit"
  echo "repro: building $commit in $work/$dir" >&2
  make -C "$work/$dir" --no-print-directory deb rpm PKG_DIR="$work/$dir/out" >"$work/$dir.log" 2>&1 ||
    { tail -50 "$work/$dir.log" >&2; echo "repro: the build in $work/$dir failed" >&2; exit 1; }
  payload_digests "$work/$dir/out" >"$work/$dir.digests"
done
if ! diff -u "$work/first.digests" "$work/second-clone-elsewhere.digests"; then
  echo "repro: the package payloads differ between the two builds" >&2
  exit 1
fi
cat "$work/first.digests"
echo "repro: identical payloads from two clean builds of $commit" >&2
