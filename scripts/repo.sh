#!/usr/bin/env bash
# Builds the signed package repository that `make repo` publishes (docs/repositories.md):
#   $REPO_DIR/apt/                 apt repository: pool/main/..., dists/stable/{InRelease,Release,Release.gpg}
#   $REPO_DIR/rpm/                 signed .rpm files and repodata/ (repomd.xml + repomd.xml.asc)
#   $REPO_DIR/bao-kms-provider.asc the public key (ASCII armour), for apt's Signed-By and dnf's gpgkey
#   $REPO_DIR/bao-kms-provider.gpg the same key as a binary keyring
# Input: the .deb and .rpm files in $PKG_DIR. Packages already in $REPO_DIR stay (older versions
# remain installable); the metadata is rebuilt and signed again on every run.
# Signing key: REPO_SIGNING_KEY (fingerprint of a secret key in GNUPGHOME, default ~/.gnupg).
# Every signature uses SHA-256 (RHEL 9 refuses SHA-1).
set -euo pipefail

die() { echo "repo: $*" >&2; exit 2; }

PKG_DIR="${PKG_DIR:?PKG_DIR: the directory with the .deb and .rpm files}"
REPO_DIR="${REPO_DIR:?REPO_DIR: where to write the repository}"
KEY="${REPO_SIGNING_KEY:-}"
SUITE=stable
COMPONENT=main
ARCH=amd64

[[ -n "$KEY" ]] || die "set REPO_SIGNING_KEY to the fingerprint of the signing key (a secret key in GNUPGHOME=${GNUPGHOME:-~/.gnupg}); see docs/repositories.md"
for tool in gpg apt-ftparchive createrepo_c rpmsign; do
  command -v "$tool" >/dev/null || die "$tool is missing: run scripts/tools.sh (make tools)"
done
gpg --batch --list-secret-keys "$KEY" >/dev/null 2>&1 ||
  die "REPO_SIGNING_KEY=$KEY: no such secret key in GNUPGHOME=${GNUPGHOME:-~/.gnupg} (gpg --list-secret-keys)"
shopt -s nullglob
debs=("$PKG_DIR"/*.deb)
rpms=("$PKG_DIR"/*.rpm)
(( ${#debs[@]} + ${#rpms[@]} > 0 )) || die "no .deb or .rpm in PKG_DIR=$PKG_DIR (make deb rpm)"

sign() { gpg --batch --yes --local-user "$KEY" --digest-algo SHA256 "$@"; }

mkdir -p "$REPO_DIR"
gpg --batch --yes --armor --export "$KEY" >"$REPO_DIR/bao-kms-provider.asc"
gpg --batch --yes --export "$KEY" >"$REPO_DIR/bao-kms-provider.gpg"

# -- apt ---------------------------------------------------------------------------------------
apt="$REPO_DIR/apt"
pool="pool/$COMPONENT/b/bao-kms-provider"
mkdir -p "$apt/$pool" "$apt/dists/$SUITE/$COMPONENT/binary-$ARCH"
for deb in "${debs[@]}"; do install -m 0644 "$deb" "$apt/$pool/"; done
(
  cd "$apt"
  index="dists/$SUITE/$COMPONENT/binary-$ARCH/Packages"
  apt-ftparchive packages "pool/$COMPONENT" >"$index"
  gzip -9nc "$index" >"$index.gz"
  apt-ftparchive \
    -o APT::FTPArchive::Release::Origin=bao-kms-provider \
    -o APT::FTPArchive::Release::Label=bao-kms-provider \
    -o APT::FTPArchive::Release::Suite="$SUITE" \
    -o APT::FTPArchive::Release::Codename="$SUITE" \
    -o APT::FTPArchive::Release::Components="$COMPONENT" \
    -o APT::FTPArchive::Release::Architectures="$ARCH" \
    -o APT::FTPArchive::Release::MD5=false \
    -o APT::FTPArchive::Release::SHA1=false \
    -o APT::FTPArchive::Release::SHA512=false \
    release "dists/$SUITE" >"dists/$SUITE/Release.new"
  mv "dists/$SUITE/Release.new" "dists/$SUITE/Release"
  sign --clearsign --output "dists/$SUITE/InRelease" "dists/$SUITE/Release"
  sign --armor --detach-sign --output "dists/$SUITE/Release.gpg" "dists/$SUITE/Release"
)

# -- rpm ---------------------------------------------------------------------------------------
rpmdir="$REPO_DIR/rpm"
mkdir -p "$rpmdir"
for rpm in "${rpms[@]}"; do install -m 0644 "$rpm" "$rpmdir/"; done
gpg_path=()
[[ -n "${GNUPGHOME:-}" ]] && gpg_path=(--define "_gpg_path $GNUPGHOME")
# Every package in the repository is (re)signed with the current key, header and payload, SHA-256;
# rpmsign replaces a signature already there (key rotation).
for rpm in "$rpmdir"/*.rpm; do
  rpmsign --addsign \
    --define "_gpg_name $KEY" \
    --define "_gpg_digest_algo sha256" \
    --define "__gpg $(command -v gpg)" \
    "${gpg_path[@]}" \
    "$rpm" >/dev/null
done
createrepo_c --quiet --update --checksum sha256 "$rpmdir" >/dev/null
sign --armor --detach-sign --output "$rpmdir/repodata/repomd.xml.asc" "$rpmdir/repodata/repomd.xml"

echo "repo: $REPO_DIR signed by $KEY (apt $SUITE/$COMPONENT: ${#debs[@]} .deb added; rpm: ${#rpms[@]} .rpm added)" >&2
