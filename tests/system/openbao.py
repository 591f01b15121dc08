"""A real OpenBao dev server and provider configs for the system tests.

Shared by the systemd, package, PKCS#11, Ansible and Kubernetes tests::

    from openbao import BaoDevServer, TcpProxy, provider_binary, provider_config, provider_policy

    with BaoDevServer() as bao:                       # `bao server -dev` on 127.0.0.1:<free port>
        bao.setup(provider_policy(provider_config(bao.addr)))   # Transit, policy, JWT auth
        jwt = bao.mint_jwt()                          # a fresh identity JWT (text)
        cfg = provider_config(bao.addr, jwt_file="/etc/openbao-kms/identity.jwt")

The dev server keeps everything in memory, listens on loopback, with plain HTTP (allowed by the
provider for loopback only) or, with `BaoDevServer(tls=True)`, TLS under its generated CA, and uses a random root token (`bao.root_token`) so tests can assert
it never shows up in logs. A missing `bao` binary fails the test: run `make tools`.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["BaoDevServer", "TcpProxy", "free_port", "free_port_pair", "provider_binary",
           "provider_config", "provider_policy", "REPO_ROOT", "BUILD_DIR"]

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_DIR = Path(os.environ.get("BUILD_DIR", REPO_ROOT / "build"))
LAB_SCRIPT = REPO_ROOT / "scripts" / "openbao-lab.sh"


def _candidate_port() -> int:
    """A random port below the kernel's ephemeral range: outgoing connections take their local
    ports from that range, so a port picked there can be taken before the server binds it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    if low <= 12000:
        low = 32768
    return random.randrange(10000, low - 1)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    while True:
        port = _candidate_port()
        if _bindable(port):
            return port


def free_port_pair() -> int:
    """A port p such that p and p+1 are free (`bao server -dev` binds both)."""
    while True:
        port = _candidate_port()
        if _bindable(port) and _bindable(port + 1):
            return port


def bao_binary() -> Path:
    p = Path(os.environ.get("BAO_BIN", BUILD_DIR / "venv" / "bin" / "bao"))
    if not p.exists():
        raise RuntimeError(f"OpenBao is not installed at {p}: run `make tools` "
                           "(or scripts/openbao-lab.sh install)")
    return p


def provider_binary() -> Path:
    """The bao-kms-provider binary under test: $BAO_KMS_PROVIDER_BIN, else the debug build in
    $CARGO_TARGET_DIR (or target/). Fails when it is missing: run `cargo build`."""
    if os.environ.get("BAO_KMS_PROVIDER_BIN"):
        p = Path(os.environ["BAO_KMS_PROVIDER_BIN"])
    else:
        target = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target"))
        p = target / "debug" / "bao-kms-provider"
    if not p.exists():
        raise RuntimeError(f"provider binary {p} is missing: run `cargo build` "
                           "(or set BAO_KMS_PROVIDER_BIN)")
    return p


class BaoDevServer:
    """`bao server -dev` on 127.0.0.1:PORT (PORT and PORT+1 free), state in memory; with `tls=True`
    its `-dev-tls` listener (https, the generated CA in `ca`), for the roles' and the provider's CA
    handling and for cert auth.

    start()/stop() (or use as a context manager), `addr`, `port`, `root_token`,
    `setup(policy_text)` (Transit key k8s-etcd, the policy, JWT auth role bao-kms-provider),
    `mint_jwt(ttl)` -> JWT text (also written to `jwt_path`), `api(method, path, token, body)`,
    `cli(*args)` (the bao CLI against this server, as root).
    """

    def __init__(self, root_token: str | None = None, workdir: str | os.PathLike | None = None,
                 tls: bool = False):
        self.root_token = root_token or "root-" + secrets.token_hex(12)
        self.tls = tls
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="bao-dev-")
        self.dir = Path(workdir) if workdir else Path(self._tmp.name)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port: int | None = None
        self._proc: subprocess.Popen | None = None
        self._log = None

    @property
    def addr(self) -> str:
        if self.port is None:
            raise RuntimeError("BaoDevServer is not started")
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        """The CA of the `-dev-tls` listener's certificate (names localhost and 127.0.0.1)."""
        if not self.tls:
            raise RuntimeError("BaoDevServer(tls=False) has no CA")
        return self.dir / "vault-ca.pem"

    @property
    def jwt_path(self) -> Path:
        return self.dir / "identity.jwt"

    @property
    def log_path(self) -> Path:
        return self.dir / "openbao.log"

    def __enter__(self) -> "BaoDevServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> "BaoDevServer":
        bao = bao_binary()
        tls = ["-dev-tls", f"-dev-tls-cert-dir={self.dir}"] if self.tls else []
        for _ in range(5):  # another process may grab the port between the check and bind
            self.port = free_port_pair()
            self._log = open(self.log_path, "ab")
            # HOME: the dev server writes its token helper file there, not into the caller's home.
            self._proc = subprocess.Popen(
                [str(bao), "server", "-dev", f"-dev-root-token-id={self.root_token}",
                 f"-dev-listen-address=127.0.0.1:{self.port}", *tls],
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
                env={**os.environ, "HOME": str(self.dir)}, start_new_session=True)
            if self._wait_healthy(timeout):
                return self
            self.stop()
        raise RuntimeError(f"OpenBao dev server did not start; log:\n{self._log_tail()}")

    def _wait_healthy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            if not self.tls or self.ca.exists():
                try:
                    if self.api("GET", "sys/health", token=None)[0] == 200:
                        return True
                except (OSError, ssl.SSLError):
                    pass
            time.sleep(0.05)
        return False

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def _env(self, **more: str) -> dict:
        """The environment of the bao CLI (and scripts/openbao-lab.sh) as root on this server."""
        env = dict(os.environ, BAO_ADDR=self.addr, BAO_TOKEN=self.root_token, BAO_BIN=str(bao_binary()),
                   BUILD_DIR=str(BUILD_DIR), **more)
        if self.tls:
            env["BAO_CACERT"] = str(self.ca)
        return env

    def _lab(self, *args: str, env: dict | None = None) -> None:
        r = subprocess.run([str(LAB_SCRIPT), *args], env=self._env(**(env or {})), capture_output=True,
                           text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"openbao-lab.sh {' '.join(args)} failed (rc={r.returncode}):\n"
                               f"{r.stdout}{r.stderr}")

    def setup(self, policy: str, **env: str) -> None:
        """Transit (key k8s-etcd), the provider's policy (HCL text, see provider_policy) and JWT
        auth (role bao-kms-provider) via scripts/openbao-lab.sh setup. `env` is passed to the
        script (TOKEN_TTL, TOKEN_MAX_TTL, ...)."""
        policy_file = self.dir / "policy.hcl"
        policy_file.write_text(policy)
        self._lab("setup", self.addr, str(self.dir), str(policy_file), env=env)

    def mint_jwt(self, ttl: int = 3600) -> str:
        """A fresh identity JWT for role bao-kms-provider (also written to jwt_path)."""
        self._lab("jwt", str(self.dir), str(ttl))
        return self.jwt_path.read_text().strip()

    def cli(self, *args: str) -> str:
        """`bao ARGS` as root against this server; its stdout, or AssertionError with its output."""
        r = subprocess.run([str(bao_binary()), *args], env=self._env(), capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0:
            raise AssertionError(f"bao {' '.join(args)} failed (rc={r.returncode}): {r.stdout}{r.stderr}")
        return r.stdout

    def api(self, method: str, path: str, token: str | None = "", body: dict | None = None):
        """(status, parsed JSON or None) of one API call; token "" = the root token, None = none."""
        token = self.root_token if token == "" else token
        ctx = ssl.create_default_context(cafile=str(self.ca)) if self.tls else None
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.addr}/v1/{path.lstrip('/')}", data=data, method=method)
        if token:
            req.add_header("X-Vault-Token", token)
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, (json.loads(raw) if raw else None)


class TcpProxy:
    """A TCP proxy to 127.0.0.1:`target_port` the test can take down and up again. While down it
    accepts and closes at once (the client sees a reset), so the target's state survives. It
    listens on loopback, or on `listen_host` (e.g. the bridge address of the test hosts).
    `set_delay(s)` makes the target slow: each answer is held until `s` seconds after the request
    it follows (see `_Requests`), on open connections too."""

    def __init__(self, target_port: int, up: bool = True, listen_host: str = "127.0.0.1"):
        self.target_port = target_port
        self.listen_host = listen_host
        self._up = threading.Event()
        if up:
            self._up.set()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((listen_host, 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self.delay = 0.0
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @property
    def addr(self) -> str:
        return f"http://{self.listen_host}:{self.port}"

    def set_up(self) -> None:
        self._up.set()

    def set_delay(self, seconds: float) -> None:
        """Holds each answer `seconds` after its request (0: answers pass at once again)."""
        self.delay = seconds

    def set_down(self) -> None:
        self._up.clear()
        with self._lock:
            for c in self._conns:
                _close(c)
            self._conns.clear()

    def close(self) -> None:
        self._closed = True
        self.set_down()
        _close(self._sock)
        self._thread.join(5)

    def __enter__(self) -> "TcpProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                inbound, _ = self._sock.accept()
            except OSError:
                return
            if not self._up.is_set():
                inbound.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
                _close(inbound)
                continue
            try:
                outbound = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                _close(inbound)
                continue
            outbound.settimeout(None)
            with self._lock:
                self._conns += [inbound, outbound]
            requests = _Requests(self)
            threading.Thread(target=_pump, args=(inbound, outbound, requests.sent, None), daemon=True).start()
            threading.Thread(target=_pump, args=(outbound, inbound, None, requests.hold), daemon=True).start()


class _Requests:
    """When the client last sent a request on one proxied connection, so its answer can be held.
    Through TLS the proxy sees only record headers (type and length are plaintext): an
    application-data record is a request, except the client's first one (its Finished in TLS 1.3),
    so the handshake itself is never held and a new connection costs no more than `delay`. On a
    connection that does not start with a TLS handshake every chunk from the client is a request."""

    def __init__(self, proxy: "TcpProxy"):
        self.proxy = proxy
        self.at: float | None = None
        self._tls: bool | None = None
        self._header = b""
        self._left = 0  # bytes of the current record still to come
        self._app_records = 0

    def sent(self, data: bytes) -> None:
        if self._tls is None:
            self._tls = data[:1] == b"\x16"
        if not self._tls:
            self.at = time.monotonic()
            return
        i = 0
        while i < len(data):
            if self._left:
                n = min(self._left, len(data) - i)
                self._left, i = self._left - n, i + n
                continue
            need = 5 - len(self._header)
            self._header, i = self._header + data[i:i + need], i + need
            if len(self._header) < 5:
                return
            kind, self._left = self._header[0], int.from_bytes(self._header[3:5], "big")
            self._header = b""
            if kind == 0x17:
                self._app_records += 1
                if self._app_records > 1:
                    self.at = time.monotonic()

    def hold(self) -> None:
        delay = self.proxy.delay
        if delay and self.at is not None:
            wait = self.at + delay - time.monotonic()
            if wait > 0:
                time.sleep(wait)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


def _pump(src: socket.socket, dst: socket.socket, on_data=None, before_send=None) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if on_data:
                on_data(data)
            if before_send:
                before_send()
            dst.sendall(data)
    except OSError:
        pass
    finally:
        _close(dst)
        _close(src)


def provider_config(openbao_address: str, *,
                    jwt_file: str = "/etc/openbao-kms/identity.jwt",
                    socket_path: str = "/run/openbao-kms/kms.sock",
                    state_dir: str = "/var/lib/openbao-kms",
                    instance_id: str = "openbao-test",
                    cluster_id: str = "test-cluster",
                    provider_name: str = "openbao-kms",
                    probe_interval: str = "1s",
                    deep_probe_interval: str = "5s",
                    max_staleness: str = "10s",
                    timeout: str = "1s",
                    drain_timeout: str = "5s",
                    start_timeout: str = "2m",
                    log_level: str = "info",
                    log_format: str = "auto",
                    metrics_address: str = "",
                    health_address: str = "",
                    ca_file: str = "",
                    extra: str = "") -> str:
    """A provider config (TOML) for JWT auth against `openbao_address`. Paths are as seen by the
    provider (inside a container, or "%d/NAME" for a systemd credential). Telemetry listeners
    are off by default because containers share the host's network (and ports). An https://
    address needs `ca_file` (the provider trusts nothing else). Rotation is
    fast (stable_observations = 1, activation_delay two probe intervals, the shortest
    `check-config` accepts) so tests see a rotated key within seconds."""
    return f"""\
[server]
socket_path = "{socket_path}"
state_dir = "{state_dir}"
drain_timeout = "{drain_timeout}"
start_timeout = "{start_timeout}"

[openbao]
address = "{openbao_address}"
{f'ca_file = "{ca_file}"' if ca_file else ""}
instance_id = "{instance_id}"
timeout = "{timeout}"

[auth]
method = "jwt"
[auth.jwt]
jwt_file = "{jwt_file}"

[transit]
mount_path = "transit"
key_name = "k8s-etcd"
[transit.key_id_scope]
provider_name = "{provider_name}"
cluster_id = "{cluster_id}"
transit_mount_id = "transit-test"
key_lineage_id = "lineage-1"

[status]
probe_interval = "{probe_interval}"
deep_probe_interval = "{deep_probe_interval}"
max_staleness = "{max_staleness}"

[rotation]
stable_observations = 1
activation_delay = "2s"

[log]
level = "{log_level}"
format = "{log_format}"

[telemetry]
metrics_address = "{metrics_address}"
health_address = "{health_address}"
{extra}"""


def provider_policy(config_text: str, binary: str | os.PathLike | None = None) -> str:
    """The least-privilege policy (HCL) for a config, from `bao-kms-provider policy`."""
    binary = Path(binary) if binary else provider_binary()
    text = config_text.replace('"%d/', '"/run/credentials/')  # %d/ needs $CREDENTIALS_DIRECTORY
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(text)
        f.flush()
        r = subprocess.run([str(binary), "policy", "--config", f.name], capture_output=True,
                           text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"bao-kms-provider policy failed: {r.stderr}")
    return r.stdout


if __name__ == "__main__":  # a manual smoke run: python tests/system/openbao.py
    with BaoDevServer() as b:
        b.setup(provider_policy(provider_config(b.addr)))
        print(b.addr, b.mint_jwt()[:20] + "...", shutil.which("bao") or bao_binary())
