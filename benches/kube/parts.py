"""The real parts `make bench-kube` runs on loopback: a PKI made with openssl, etcd, kube-apiserver
with one EncryptionConfiguration, the release provider and the Go load client.

Every process logs into the bench's work directory; every wait polls a condition with a deadline.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "system"))
from openbao import free_port  # noqa: E402
from waiting import wait_until  # noqa: E402
PROVIDER_NAME = "openbao-kms"
# 32 bytes each: the aesgcm keys, named key1..key3 in its key list.
AESGCM_KEYS = [base64.b64encode(f"bao-kms-provider bench key {i}".encode().ljust(32, b"!")).decode() for i in (1, 2, 3)]


class BenchError(RuntimeError):
    """A part did not start or answer: the bench stops and says which and why."""


def log_tail(log: Path, lines: int = 30):
    """For wait_until's `context`: the last lines of a part's log."""
    return lambda: f"{log}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def openssl(*args) -> None:
    r = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise BenchError(f"openssl {' '.join(map(str, args[:2]))} failed: {r.stderr}")


def make_pki(d: Path) -> dict[str, Path]:
    """A CA, kube-apiserver's serving certificate for 127.0.0.1, an admin client certificate in
    system:masters (exempt from API Priority and Fairness, as a controller's would not be throttled
    by this bench either) and the service-account key pair."""
    d.mkdir(parents=True, exist_ok=True)
    p = {n: d / f"{n}.pem" for n in ("ca", "ca-key", "server", "server-key", "admin", "admin-key", "sa", "sa-pub")}
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    openssl("req", "-x509", *ec, "-days", "2", "-subj", "/CN=bench-kube CA", "-keyout", p["ca-key"], "-out", p["ca"])
    for name, subj, ext in (("server", "/CN=kube-apiserver", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                                             "extendedKeyUsage=serverAuth\n"),
                            ("admin", "/O=system:masters/CN=bench-kube", "extendedKeyUsage=clientAuth\n")):
        (d / f"{name}.ext").write_text(ext)
        openssl("req", *ec, "-subj", subj, "-keyout", p[f"{name}-key"], "-out", d / f"{name}.csr")
        openssl("x509", "-req", "-days", "2", "-in", d / f"{name}.csr", "-CA", p["ca"], "-CAkey", p["ca-key"],
                "-CAcreateserial", "-extfile", d / f"{name}.ext", "-out", p[name])
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", p["sa"])
    openssl("pkey", "-in", p["sa"], "-pubout", "-out", p["sa-pub"])
    return p


_LIBC = ctypes.CDLL(None, use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads including exited ones, in nanoseconds
    (its CPU clock, clock_getcpuclockid), not in the 10 ms ticks of /proc/PID/stat: a window of a
    few Decrypts costs the provider a few milliseconds."""
    clock = ctypes.c_int()
    ts = _Timespec()
    if _LIBC.clock_getcpuclockid(pid, ctypes.byref(clock)) != 0 or _LIBC.clock_gettime(clock, ctypes.byref(ts)) != 0:
        raise BenchError(f"cannot read the CPU clock of pid {pid}")
    return ts.tv_sec + ts.tv_nsec / 1e9


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    kb = {k: int(v.split()[0]) for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(.*)$", status, re.M)}
    return kb.get("VmRSS", 0) / 1024, kb.get("VmHWM", 0) / 1024


class Process:
    """A child process with its log; stop() is SIGTERM, then SIGKILL after `grace` seconds."""

    def __init__(self, argv: list[str], log: Path, env: dict | None = None):
        self.log = log
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
                                     env=env, start_new_session=True)
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, cond, what: str, timeout: float, interval: float = 0.2) -> None:
        """Waits for `cond` (showing this process's log when it times out); a process that does
        not get there is stopped, so a failed bench leaves nothing running."""
        try:
            wait_until(cond, what, timeout, interval, context=log_tail(self.log))
        except BaseException:
            self.stop(grace=5)
            raise

    def stop(self, grace: float = 30) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if not self._log.closed:
            self._log.close()


class Etcd(Process):
    """etcd (the release kube-apiserver pins, built by scripts/kube.sh) with its data on `data`."""

    def __init__(self, bin_dir: Path, data: Path, log: Path):
        self.port, peer = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__([str(bin_dir / "etcd"), "--name", "bench", "--data-dir", str(data),
                          "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                          "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                          "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                          "--initial-cluster", f"bench=http://127.0.0.1:{peer}",
                          "--quota-backend-bytes", str(8 << 30), "--log-level", "error"], log)
        self.wait(self._healthy, "etcd /health", 60)

    def _healthy(self) -> bool:
        if not self.alive():
            raise BenchError(f"etcd exited: see {self.log}")
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False


def encryption_config(path: Path, kind: str, socket: Path | None = None, first_key: int = 0) -> Path:
    """One EncryptionConfiguration for Secrets: `identity` alone, or `aesgcm` (key list rotated so
    that key `first_key` writes, the others still read) or this provider, each followed by identity."""
    if kind == "identity":
        providers = [{"identity": {}}]
    elif kind == "aesgcm":
        keys = [{"name": f"key{i + 1}", "secret": AESGCM_KEYS[i]} for i in range(first_key, -1, -1)]
        providers = [{"aesgcm": {"keys": keys}}, {"identity": {}}]
    elif kind == "kms":
        providers = [{"kms": {"apiVersion": "v2", "name": PROVIDER_NAME, "endpoint": f"unix://{socket}",
                              "timeout": "3s"}}, {"identity": {}}]
    else:
        raise BenchError(f"unknown configuration {kind!r}: expected identity, aesgcm or kms")
    path.write_text(json.dumps({"apiVersion": "apiserver.config.k8s.io/v1", "kind": "EncryptionConfiguration",
                                "resources": [{"resources": ["secrets"], "providers": providers}]}, indent=1))
    return path


class ApiServer(Process):
    """kube-apiserver on 127.0.0.1 with the given EncryptionConfiguration; `ready_s` is the time
    from exec until /readyz answered 200."""

    def __init__(self, bin_dir: Path, etcd: Etcd, pki: dict[str, Path], enc: Path, log: Path, port: int):
        self.port = port
        self.url = f"https://127.0.0.1:{port}"
        super().__init__([
            str(bin_dir / "kube-apiserver"), f"--etcd-servers={etcd.url}", "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1", f"--secure-port={port}", f"--tls-cert-file={pki['server']}",
            f"--tls-private-key-file={pki['server-key']}", f"--client-ca-file={pki['ca']}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki['sa-pub']}", f"--service-account-signing-key-file={pki['sa']}",
            "--service-cluster-ip-range=10.96.0.0/16", "--authorization-mode=RBAC",
            "--endpoint-reconciler-type=none", f"--encryption-provider-config={enc}"], log)
        self._ctx = ssl.create_default_context(cafile=str(pki["ca"]))
        self._ctx.load_cert_chain(str(pki["admin"]), str(pki["admin-key"]))
        self.wait(self._ready, "kube-apiserver /readyz", 300, interval=0.02)
        self.ready_s = time.monotonic() - self.started

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 30) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, context=self._ctx, timeout=timeout) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def _ready(self) -> bool:
        if not self.alive():
            raise BenchError(f"kube-apiserver exited: see {self.log}")
        try:
            return self.request("GET", "/readyz", timeout=2)[0] == 200
        except OSError:
            return False

    def namespace(self, name: str) -> None:
        status, out = self.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
        if status not in (201, 409):
            raise BenchError(f"creating namespace {name}: {status} {out[:300]}")

    @staticmethod
    def kubeconfig_file(path: Path, port: int, pki: dict[str, Path]) -> Path:
        """A kubeconfig for the admin client of the kube-apiserver on `port` (JSON, which YAML reads)."""
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "bench",
            "clusters": [{"name": "bench", "cluster": {"server": f"https://127.0.0.1:{port}",
                                                       "certificate-authority": str(pki["ca"])}}],
            "users": [{"name": "admin", "user": {"client-certificate": str(pki["admin"]),
                                                 "client-key": str(pki["admin-key"])}}],
            "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "admin"}}]}))
        return path


class Provider(Process):
    """The release provider (`serve`), production defaults except that a new Transit version is
    served as soon as it is seen (stable_observations 1, activation_delay 0s), so that the
    three-key data set needs no wait of minutes; its metrics on a free port."""

    def __init__(self, binary: Path, workdir: Path, openbao_addr: str, ca: Path, jwt: Path, start: bool = True):
        workdir.mkdir(parents=True, exist_ok=True)
        self.binary, self.socket = binary, workdir / "kms.sock"
        self.metrics_port = free_port()
        self.config = workdir / "config.toml"
        self.config.write_text(
            f'[server]\nsocket_path = "{self.socket}"\nstate_dir = "{workdir / "state"}"\n'
            f'[openbao]\naddress = "{openbao_addr}"\nca_file = "{ca}"\ninstance_id = "openbao-bench"\n'
            f'[auth]\nmethod = "jwt"\n[auth.jwt]\njwt_file = "{jwt}"\n'
            '[transit.key_id_scope]\ncluster_id = "bench"\ntransit_mount_id = "transit-bench"\n'
            'key_lineage_id = "lineage-bench"\n'
            '[rotation]\nstable_observations = 1\nactivation_delay = "0s"\n'
            f'[telemetry]\nmetrics_address = "127.0.0.1:{self.metrics_port}"\nhealth_address = "127.0.0.1:{free_port()}"\n')
        if start:
            super().__init__([str(binary), "serve", "--config", str(self.config)], workdir / "provider.log")
            self.wait(lambda: self.key_id(), "the provider to answer a probe", 60)

    def policy(self) -> str:
        """`bao-kms-provider policy` for this config: the least-privilege policy OpenBao gets."""
        r = subprocess.run([str(self.binary), "policy", "--config", str(self.config)], capture_output=True,
                           text=True, timeout=30)
        if r.returncode != 0:
            raise BenchError(f"bao-kms-provider policy: {r.stderr}")
        return r.stdout

    def key_id(self) -> str:
        """The key_id `bao-kms-provider probe` reports ('' when it does not answer OK)."""
        if not self.alive():
            raise BenchError(f"the provider exited: see {self.log}")
        r = subprocess.run([str(self.binary), "probe", "--socket", str(self.socket), "--timeout", "5s"],
                           capture_output=True, text=True, timeout=30)
        m = re.search(r"^\s*key_id:\s*(\S+)", r.stdout, re.M)
        return m.group(1) if r.returncode == 0 and m else ""

    def counters(self) -> dict[str, float]:
        """gRPC calls by method and OpenBao requests (all operations), from its /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out = {"Status": 0.0, "Encrypt": 0.0, "Decrypt": 0.0, "openbao": 0.0}
        for line in text.splitlines():
            m = re.match(r'openbao_kms_grpc_requests_total\{([^}]*)\}\s+(\S+)', line)
            if m:
                method = re.search(r'method="([^"]+)"', m.group(1))
                if method and method.group(1) in out:
                    out[method.group(1)] += float(m.group(2))
            m = re.match(r'openbao_kms_openbao_requests_total\{[^}]*\}\s+(\S+)', line)
            if m:
                out["openbao"] += float(m.group(1))
        out["cpu_s"] = cpu_seconds(self.pid)
        return out


class LoadClient:
    """tests/kube/loadclient, built once into the work directory."""

    def __init__(self, workdir: Path):
        self.binary = workdir / "loadclient"
        env = {**os.environ, "PATH": f"{os.environ.get('PATH', '')}:/usr/local/go/bin", "CGO_ENABLED": "0"}
        r = subprocess.run(["go", "build", "-trimpath", "-o", str(self.binary), "."], cwd=REPO / "tests/kube/loadclient",
                           env=env, capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            raise BenchError(f"go build of tests/kube/loadclient failed:\n{r.stderr[-3000:]}")

    def run(self, kubeconfig: Path, mode: str, *args, timeout: float = 900) -> dict:
        r = subprocess.run([str(self.binary), "-kubeconfig", str(kubeconfig), mode, *map(str, args)],
                           capture_output=True, text=True, timeout=timeout)
        try:
            out = json.loads(r.stdout)
        except ValueError:
            raise BenchError(f"loadclient {mode} {' '.join(map(str, args))}: rc={r.returncode} {r.stdout} {r.stderr}")
        if r.returncode != 0:
            raise BenchError(f"loadclient {mode} {' '.join(map(str, args))} did nothing: {out}")
        return out
