#!/usr/bin/env bash
# `make e2e-kind-down`: removes what `make e2e-kind` created (OpenBao container, kind cluster,
# work directory). Safe to run more than once. Needs Docker and kind; exits 2 without them.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
# shellcheck source=tests/e2e/kind/common.sh
. "$here/common.sh"

preflight docker

if "$DOCKER" container inspect "$BAO_CONTAINER" >/dev/null 2>&1; then
  log "removing container $BAO_CONTAINER"
  "$DOCKER" rm -f "$BAO_CONTAINER" >/dev/null
fi
if "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  log "deleting kind cluster $CLUSTER"
  "$KIND" delete cluster --name "$CLUSTER"
fi
rm -rf "$WORK"
log "removed"
