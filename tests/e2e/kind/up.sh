#!/usr/bin/env bash
# `make e2e-kind`: bao-kms-provider in a real Kubernetes control plane (kind, kubeadm layout).
# The .deb from `make deb` is installed into the kind control-plane node (which runs systemd),
# OpenBao runs as a container in the node's network namespace, the Ansible roles set up both
# sides (Docker connection), and the claim is checked where it matters: the raw etcd value of a
# Secret starts with k8s:enc:kms:v2:openbao-kms:, holds no plaintext, and decrypts — before and
# after a Transit rotation plus a migration rewrite. Needs Docker and kind; exits 2 without them.
# The cluster is left running for inspection; `make e2e-kind-down` removes everything.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
# shellcheck source=tests/e2e/kind/common.sh
. "$here/common.sh"

preflight full

PROVIDER_NAME=openbao-kms
PREFIX="k8s:enc:kms:v2:$PROVIDER_NAME:"
SECRET=bao-kms-e2e
CANARY=bao-kms-e2e-canary
ETCD_PKI=/etc/kubernetes/pki

node() { "$DOCKER" exec "$NODE" "$@"; }
kubectl_node() { node kubectl --kubeconfig /etc/kubernetes/admin.conf "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  die "kind cluster $CLUSTER already exists; run \`make e2e-kind-down\` first"
fi
mkdir -p "$WORK"

# -- the package ------------------------------------------------------------------------------
if [[ -z "${DEB:-}" ]]; then
  log "building the .deb (make deb) into $WORK/packages"
  make -C "$root" deb PKG_DIR="$WORK/packages"
  DEB=$(find "$WORK/packages" -maxdepth 1 -name 'bao-kms-provider_*.deb' -print | sort | tail -n 1)
fi
[[ -f "$DEB" ]] || die "no .deb found (set DEB=path/to/bao-kms-provider_*.deb or run make deb)"
log "package: $DEB"

# -- the cluster and OpenBao ------------------------------------------------------------------
BAO_HOST_PORT="${BAO_HOST_PORT:-$(free_port)}"
cat >"$WORK/kind.yaml" <<YAML
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
    image: $KIND_NODE_IMAGE
    # OpenBao shares this node's network namespace; the controller reaches it through this port.
    extraPortMappings:
      - containerPort: 8200
        hostPort: $BAO_HOST_PORT
        listenAddress: 127.0.0.1
YAML
log "creating kind cluster $CLUSTER ($KIND_NODE_IMAGE)"
"$KIND" create cluster --name "$CLUSTER" --config "$WORK/kind.yaml" --wait 180s

# In the node's network namespace the provider reaches OpenBao on loopback, where the provider
# accepts plain http:// (TLS to OpenBao is covered by the Rust tests, not here).
log "starting OpenBao ($OPENBAO_IMAGE) in the node's network namespace"
"$DOCKER" run -d --name "$BAO_CONTAINER" --network "container:$NODE" --cap-add IPC_LOCK \
  "$OPENBAO_IMAGE" server -dev -dev-root-token-id=root -dev-listen-address=0.0.0.0:8200 >/dev/null
BAO_ADDR="http://127.0.0.1:$BAO_HOST_PORT"
for _ in $(seq 60); do curl -fsS "$BAO_ADDR/v1/sys/health" >/dev/null 2>&1 && break; sleep 1; done
curl -fsS "$BAO_ADDR/v1/sys/health" >/dev/null || die "OpenBao did not become healthy at $BAO_ADDR"

# The provider's identity: a JWT signed by a throwaway key whose public half OpenBao trusts.
mkdir -p "$WORK/jwt"
(umask 077; openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/jwt/jwt-signing.pem" 2>/dev/null)
openssl pkey -in "$WORK/jwt/jwt-signing.pem" -pubout -out "$WORK/jwt/jwt-signing.pub" 2>/dev/null
"$root/scripts/openbao-lab.sh" jwt "$WORK/jwt" 86400

# Ansible's docker connection needs python3 in the node; the apt module needs python3-apt.
log "preparing the node for Ansible (python3, python3-apt, python3-yaml)"
node bash -c 'python3 -c "import apt, yaml" 2>/dev/null || { apt-get update -qq &&
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-apt python3-yaml >/dev/null; }'

# -- rollout with the Ansible roles -----------------------------------------------------------
cat >"$WORK/inventory.yml" <<YAML
all:
  children:
    kube_control_plane:
      hosts:
        $NODE:
          ansible_connection: community.docker.docker
          ansible_python_interpreter: /usr/bin/python3
YAML
cat >"$WORK/vars.yml" <<YAML
openbao_transit_address: "$BAO_ADDR"
openbao_transit_token: root
# The lab's JWT carries the single-cluster sub and aud, so this keeps those names and the key k8s-etcd.
openbao_transit_key_name: k8s-etcd
openbao_transit_jwt_validation_pubkeys:
  - "{{ lookup('ansible.builtin.file', '$WORK/jwt/jwt-signing.pub') }}"
bao_kms_provider_package_file: "$DEB"
bao_kms_provider_openbao_address: http://127.0.0.1:8200
bao_kms_provider_openbao_instance_id: openbao-kind-e2e
bao_kms_provider_jwt_src: "$WORK/jwt/identity.jwt"
bao_kms_provider_name: $PROVIDER_NAME
bao_kms_provider_cluster_id: kind-$CLUSTER
bao_kms_provider_transit_mount_id: transit-kind-e2e
bao_kms_provider_key_lineage_id: "$(openssl rand -hex 16)"
# Promote a rotated Transit version at once, so the test does not wait minutes.
bao_kms_provider_settings:
  status:
    probe_interval: 5s
  rotation:
    stable_observations: 1
    activation_delay: 0s
YAML
playbook() {
  ANSIBLE_CONFIG="$root/ansible/ansible.cfg" "$ANSIBLE_PLAYBOOK" -i "$WORK/inventory.yml" \
    -e "@$WORK/vars.yml" "$@"
}
log "ansible-playbook site.yml (openbao_transit, bao_kms_provider, kube_apiserver_kms)"
playbook "$root/ansible/playbooks/site.yml"

# -- checks -----------------------------------------------------------------------------------
# The raw value with etcdctl inside the node (in the etcd static pod's container).
etcd_raw() {
  local key="$1" out="$2" cid
  cid=$(node crictl ps --quiet --name '^etcd$' | head -n 1)
  [[ -n "$cid" ]] || die "no etcd container in the node"
  node crictl exec "$cid" etcdctl --endpoints=https://127.0.0.1:2379 \
    --cacert="$ETCD_PKI/etcd/ca.crt" --cert="$ETCD_PKI/etcd/server.crt" --key="$ETCD_PKI/etcd/server.key" \
    get "$key" -w json >"$out.json"
  python3 -c 'import base64, json, sys
kvs = json.load(open(sys.argv[1])).get("kvs") or sys.exit("no value in etcd at " + sys.argv[2])
sys.stdout.buffer.write(base64.b64decode(kvs[0]["value"]))' "$out.json" "$key" >"$out"
}

# verify-etcd-value in the node, fetching from etcd with the API server's etcd client cert.
verify_in_node() {
  node bao-kms-provider verify-etcd-value --key "$1" --etcd-endpoint https://127.0.0.1:2379 \
    --etcd-cacert "$ETCD_PKI/etcd/ca.crt" --etcd-cert "$ETCD_PKI/apiserver-etcd-client.crt" \
    --etcd-client-key "$ETCD_PKI/apiserver-etcd-client.key" "${@:2}"
}

# Checks the Secret's raw value; prints its key_id.
check_secret() {
  local name="$1" marker="$2" key="/registry/secrets/default/$1" raw="$WORK/$1.$3.raw" out
  etcd_raw "$key" "$raw"
  [[ "$(head -c "${#PREFIX}" "$raw")" == "$PREFIX" ]] || die "$key does not start with $PREFIX"
  if grep -aqF -- "$marker" "$raw" || grep -aqF -- "$(printf '%s' "$marker" | base64)" "$raw"; then
    die "the plaintext of $key appears in etcd"
  fi
  out=$(verify_in_node "$key" --show-plaintext) || die "verify-etcd-value $key failed: $out"
  grep -q '^plaintext: .*'"$marker" <<<"$out" || die "verify-etcd-value did not decrypt $key to its marker"
  [[ "$(kubectl_node get secret "$name" -o jsonpath='{.data.marker}' | base64 -d)" == "$marker" ]] ||
    die "kubectl does not read $name back"
  sed -n 's/^key_id: *\([^ ]*\).*/\1/p' <<<"$out"
}

provider_key_id() { node bao-kms-provider probe | sed -n 's/^key_id: *//p'; }

marker="e2e-marker-$(openssl rand -hex 12)"
log "creating Secret $SECRET with kubectl"
kubectl_node create secret generic "$SECRET" -n default --from-literal=marker="$marker" >/dev/null
key_id1=$(check_secret "$SECRET" "$marker" before)
log "OK: raw etcd value has the prefix, no plaintext, decrypts (key_id $key_id1)"

log "rotating the Transit key"
curl -fsS -X POST -H "X-Vault-Token: root" "$BAO_ADDR/v1/transit/keys/k8s-etcd/rotate" >/dev/null
for _ in $(seq 60); do [[ "$(provider_key_id)" != "$key_id1" ]] && break; sleep 2; done
key_id2=$(provider_key_id)
[[ "$key_id2" != "$key_id1" ]] || die "the provider's Status key_id did not change after the rotation"
log "provider now reports key_id $key_id2; waiting for kube-apiserver to write with it (Status poll, up to ~60 s)"
kubectl_node create secret generic "$CANARY" -n default --from-literal=marker="$marker-canary" >/dev/null
ok=""
for i in $(seq 60); do
  kubectl_node annotate secret "$CANARY" -n default --overwrite "e2e-write=$i" >/dev/null
  if verify_in_node "/registry/secrets/default/$CANARY" | grep -q "^key_id: *$key_id2 "; then ok=1; break; fi
  sleep 5
done
[[ -n "$ok" ]] || die "kube-apiserver did not start writing with the new key_id"

log "migration rewrite (playbooks/migrate_secrets.yml)"
playbook "$root/ansible/playbooks/migrate_secrets.yml" -e kms_migrate_secrets_force=true
key_id_after=$(check_secret "$SECRET" "$marker" after)
[[ "$key_id_after" == "$key_id2" ]] || die "after the rewrite $SECRET still uses key_id $key_id_after"
log "OK: after rotation + rewrite the value uses the new key_id, has no plaintext and decrypts"

# The value saved before the rotation (as from an etcd backup) still verifies, as a retired key.
"$DOCKER" cp "$WORK/$SECRET.before.raw" "$NODE:/tmp/$SECRET.before.raw"
out=$(node bao-kms-provider verify-etcd-value --key "/registry/secrets/default/$SECRET" \
  --input "/tmp/$SECRET.before.raw") || die "the pre-rotation value no longer verifies: $out"
grep -q "^key_id: *$key_id1 (retired" <<<"$out" || die "the pre-rotation value should report a retired key: $out"
log "OK: the pre-rotation value (as from a backup) still decrypts under its retired key"
log "PASSED. The cluster stays up for inspection (kubectl: docker exec $NODE kubectl ...); remove it with \`make e2e-kind-down\`."
