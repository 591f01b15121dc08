# shellcheck shell=bash
# shellcheck disable=SC2034  # the settings are used by the scripts that source this file
# Shared settings and the preflight check of the kind end-to-end test (sourced by up.sh, down.sh).

# kind v0.30.0 release notes: the v1.34.0 node image for that release, pinned by digest.
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-kindest/node:v1.34.0@sha256:7416a61b42b1662ca6ca89f02028ac133a309a2a30ba309614e8ec94d976dc5a}"
# OpenBao 2.7.1 (multi-arch index digest, identical on docker.io, ghcr.io and quay.io).
OPENBAO_IMAGE="${OPENBAO_IMAGE:-openbao/openbao:2.7.1@sha256:6d2b93856e3fcf7b18ad855a0b51eaba474dc8b79cf554379ea32034797d2acf}"
CLUSTER="${CLUSTER:-bao-kms-e2e}"
NODE="$CLUSTER-control-plane"
BAO_CONTAINER="${BAO_CONTAINER:-$CLUSTER-openbao}"
DOCKER="${DOCKER:-docker}"
KIND="${KIND:-kind}"
BUILD_DIR="${BUILD_DIR:-$root/build}"
WORK="${WORK:-$BUILD_DIR/e2e-kind}"
ANSIBLE_PLAYBOOK="${ANSIBLE_PLAYBOOK:-}"
if [[ -z "$ANSIBLE_PLAYBOOK" ]]; then
  if [[ -x "$BUILD_DIR/venv/bin/ansible-playbook" ]]; then
    ANSIBLE_PLAYBOOK="$BUILD_DIR/venv/bin/ansible-playbook"
  else
    ANSIBLE_PLAYBOOK=ansible-playbook
  fi
fi
# Exit code when the test cannot run on this machine (missing Docker engine, kind or tools).
EXIT_UNAVAILABLE=2

log() { printf 'e2e-kind: %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# Refuses, with one clear message and exit 2, unless everything the test needs is here.
# $1: "full" (up.sh: also Ansible and host tools) or "docker" (down.sh).
preflight() {
  local need="$1" problems=() out
  if ! command -v "$DOCKER" >/dev/null 2>&1; then
    problems+=("docker is not installed (the test runs the kind node and OpenBao as Docker containers)")
  elif ! out=$("$DOCKER" info 2>&1 >/dev/null); then
    problems+=("the Docker engine is not reachable: \`docker info\` failed: $(printf '%s' "$out" | head -n 1)")
  fi
  command -v "$KIND" >/dev/null 2>&1 ||
    problems+=("kind is not installed (https://kind.sigs.k8s.io, v0.30.0 or newer for the v1.34 node image)")
  if [[ "$need" == full ]]; then
    command -v "$ANSIBLE_PLAYBOOK" >/dev/null 2>&1 ||
      problems+=("ansible-playbook is not installed (run \`make tools\`: it lands in \$BUILD_DIR/venv)")
    local tool
    for tool in python3 openssl curl make; do
      command -v "$tool" >/dev/null 2>&1 || problems+=("$tool is not installed")
    done
  fi
  if ((${#problems[@]} > 0)); then
    log "cannot run the kind end-to-end test on this machine:"
    local p
    for p in "${problems[@]}"; do log "  - $p"; done
    log "it needs a running Docker engine and kind (see tests/e2e/kind/README.md); nothing was changed."
    exit "$EXIT_UNAVAILABLE"
  fi
}
