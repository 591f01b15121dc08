"""A real Kubernetes control plane on the project's own test hosts, for N hosts.

* The binaries are the real ones, built from Go modules by scripts/kube.sh and cached outside the
  clone (`kube_bin_dir()`; `BAO_KUBE_BIN_DIR` points at a bin directory by hand).
* Each host is an nspawn container with systemd as PID 1 (nspawn.py) in a network namespace of
  its own, made here: a veth into a bridge on this machine, an address of 10.213.<n>.0/24, a
  default route through the bridge. kubeadm sees a real advertise address and ports 6443/2379 do
  not collide; traffic stays between this machine and its own test hosts.
* The real `kubeadm` writes the PKI, kubeconfigs and static pod manifests from a v1beta4 config
  (v1beta3 before 1.31).
  One host: `etcd local` (the etcd static pod). Several: one external etcd on the bridge address
  and the shared PKI copied to the other hosts as `kubeadm join --control-plane` expects.
* static_pods.py, a named stand-in for kubelet's static-pod job, runs the manifests on each host.
* With kube-apiserver up, the `kubeadm:cluster-admins` binding exists (so admin.conf works, as
  after a full `kubeadm init`) and `kubeadm init phase upload-config kubeadm` writes kubeadm-config.

    with ControlPlane(rootfs, kube_bin_dir(), hosts=1, workdir=tmp) as cp:
        cp.hosts[0].kubectl("get", "ns")
        cp.api(0).request("GET", "/api/v1/namespaces")
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import yaml

from nspawn import Container
from waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = "/usr/local/bin"
MANIFESTS = "/etc/kubernetes/manifests"
KUBEADM_CONFIG = "/etc/kubernetes/kubeadm.yaml"
JOIN_CONFIG = "/etc/kubernetes/kubeadm-join.yaml"
# The joining host finds the cluster through this kubeconfig (a copy of the first host's admin.conf).
DISCOVERY = "/etc/kubernetes/discovery.conf"
PKI = "/etc/kubernetes/pki"
# What `kubeadm join --control-plane` needs from the first host (kubeadm's "certificate keys").
SHARED_PKI = ["ca.crt", "ca.key", "sa.key", "sa.pub", "front-proxy-ca.crt", "front-proxy-ca.key"]
STATIC_PODS_UNIT = """[Unit]
Description=Static-pod runner (test stand-in for kubelet's static-pod job, tests/system/static_pods.py)
Before=kubelet.service

[Service]
ExecStart=/usr/bin/python3 /usr/local/lib/static-pods/static_pods.py
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
"""
# The role's container-id and restart commands on these hosts (the runner's files, not crictl).
CONTAINER_ID_COMMAND = "cat /run/static-pods/kube-apiserver.id"
RESTART_COMMAND = "set -euo pipefail; kill $(cat /run/static-pods/kube-apiserver.pid)"


def kube_bin_dir() -> Path:
    """The real Kubernetes binaries: $BAO_KUBE_BIN_DIR, else scripts/kube.sh's cache (built once
    per version; a cold build takes many minutes on two cores and prints its progress)."""
    if os.environ.get("BAO_KUBE_BIN_DIR"):
        d = Path(os.environ["BAO_KUBE_BIN_DIR"])
    else:
        r = subprocess.run([str(REPO_ROOT / "scripts" / "kube.sh")], capture_output=True, text=True, timeout=5400)
        if r.returncode != 0:
            raise AssertionError(f"scripts/kube.sh failed (rc={r.returncode}):\n{r.stderr[-4000:]}")
        d = Path(r.stdout.strip().splitlines()[-1])
    missing = [b for b in ("kube-apiserver", "kube-controller-manager", "kubeadm", "kubectl", "etcd")
               if not (d / b).is_file()]
    if missing:
        raise AssertionError(f"{d} lacks {missing}: run scripts/kube.sh (make kube)")
    return d


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)} failed: {r.stderr.strip()}")
    return r


class HostNetwork:
    """A bridge on this machine (the gateway, `.1`) and one network namespace per host (`.11`, ...)."""

    def __init__(self, hosts: int):
        tag = f"{random.randrange(16**5):05x}"
        self.bridge, self.tag = f"bkms{tag}", tag
        used = _ip("-o", "-4", "addr").stdout
        for _ in range(100):
            n = random.randrange(1, 255)
            if f" 10.213.{n}." not in used:
                break
        self.prefix = f"10.213.{n}"
        self.gateway = f"{self.prefix}.1"
        self.namespaces = [f"bkms{tag}-{i}" for i in range(hosts)]
        self.addresses = [f"{self.prefix}.{11 + i}" for i in range(hosts)]

    def start(self) -> "HostNetwork":
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, (ns, addr) in enumerate(zip(self.namespaces, self.addresses)):
            outer, inner = f"bkv{self.tag}{i}", f"bkp{self.tag}{i}"
            _ip("netns", "add", ns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "master", self.bridge, "up")
            _ip("-n", ns, "link", "set", inner, "name", "eth0")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "route", "add", "default", "via", self.gateway)
        return self

    def stop(self) -> None:
        for ns in self.namespaces:
            _ip("netns", "del", ns, check=False)
        _ip("link", "del", self.bridge, check=False)


class KubeHost:
    """One control-plane host: its container, address and name."""

    def __init__(self, container: Container, name: str, address: str):
        self.c, self.name, self.address = container, name, address

    def kubectl(self, *args: str, check: bool = True, kubeconfig: str = "/etc/kubernetes/admin.conf",
                timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess:
        """The built kubectl inside the host, against this host's API server."""
        return self.c.run(["kubectl", "--kubeconfig", kubeconfig, "--server", f"https://{self.address}:6443",
                           *args], check=check, timeout=timeout, input=input)

    def kubeadm(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.c.run(["kubeadm", *args], timeout=timeout)

    def pod_file(self, pod: str, what: str) -> str | None:
        """The static-pod runner's /run/static-pods/<pod>.<what> (id, pid, ready), or None."""
        r = self.c.run(["cat", f"/run/static-pods/{pod}.{what}"], check=False)
        return r.stdout.strip() if r.returncode == 0 else None

    def wait_pod(self, pod: str, timeout: float = 120, other_than: str | None = None) -> str:
        """Waits until the pod is ready (with another id than `other_than`); returns its id."""
        deadline = time.monotonic() + timeout
        while True:
            pid, ready = self.pod_file(pod, "id"), self.pod_file(pod, "ready")
            if pid and ready and pid != other_than:
                return pid
            if time.monotonic() > deadline:
                log = self.c.run(["tail", "-n", "40", f"/var/log/static-pods/{pod}.log"], check=False).stdout
                runner = self.c.run(["journalctl", "-u", "static-pods", "-n", "20", "--no-pager"], check=False).stdout
                raise AssertionError(f"{self.name}: static pod {pod} not ready after {timeout}s (id={pid})\n"
                                     f"--- pod log ---\n{log}\n--- runner ---\n{runner}")
            time.sleep(0.2)

    def restart_apiserver(self, timeout: float = 120) -> str:
        """Kills kube-apiserver (the runner starts it again, as kubelet would); waits for ready."""
        old = self.pod_file("kube-apiserver", "id")
        self.c.run(["/bin/bash", "-c", RESTART_COMMAND])
        return self.wait_pod("kube-apiserver", timeout, other_than=old)


class KubeApi:
    """An HTTPS client of one API server from this machine, as system:masters (super-admin.conf)."""

    def __init__(self, host: KubeHost, workdir: Path, credentials: KubeHost | None = None):
        """`credentials`: the host whose super-admin.conf to use (a joined host has none)."""
        creds = credentials or host
        conf = yaml.safe_load((creds.c.root / "etc/kubernetes/super-admin.conf").read_text())
        user = conf["users"][0]["user"]
        d = workdir / f"api-{host.name}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "cert.pem").write_bytes(base64.b64decode(user["client-certificate-data"]))
        (d / "key.pem").write_bytes(base64.b64decode(user["client-key-data"]))
        os.chmod(d / "key.pem", 0o600)
        self.ctx = ssl.create_default_context(cafile=str(creds.c.root / "etc/kubernetes/pki/ca.crt"))
        self.ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
        self.address = host.address

    def connection(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.address, 6443, context=self.ctx, timeout=30)

    def request(self, method: str, path: str, body: dict | None = None,
                conn: http.client.HTTPSConnection | None = None) -> tuple[int, dict | str]:
        own = conn is None
        conn = conn or self.connection()
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
            r = conn.getresponse()
            raw = r.read().decode()
            try:
                return r.status, json.loads(raw)
            except json.JSONDecodeError:
                return r.status, raw
        finally:
            if own:
                conn.close()

    def readyz(self, check: str = "") -> tuple[int, str]:
        status, body = self.request("GET", f"/readyz{'/' + check if check else ''}?verbose")
        return status, body if isinstance(body, str) else json.dumps(body)

    def metrics(self) -> str:
        status, body = self.request("GET", "/metrics")
        assert status == 200, body
        return body if isinstance(body, str) else json.dumps(body)


class Etcd:
    """etcd's JSON gateway (/v3/kv/range, /v3/kv/put) from this machine: raw values as kube-apiserver
    stored them."""

    def __init__(self, url: str, ctx: ssl.SSLContext | None = None):
        self.url, self.ctx = url, ctx

    def range(self, prefix: str) -> dict[str, bytes]:
        """Every key under `prefix` with its value."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        return self._range({"key": base64.b64encode(prefix.encode()).decode(),
                            "range_end": base64.b64encode(end.encode()).decode()})

    def get(self, key: str) -> bytes | None:
        return self._range({"key": base64.b64encode(key.encode()).decode()}).get(key)

    def put(self, items: dict[str, bytes]) -> int:
        """Stores each key's value as is (`/v3/kv/put`), over one connection: values written
        the way kube-apiserver would have written them, without it. Returns the revision of the
        first put (each object's resourceVersion is at least that from then on)."""
        conn = self._connection()
        revisions = []
        try:
            for key, value in items.items():
                out = self._post(conn, "/v3/kv/put", {"key": base64.b64encode(key.encode()).decode(),
                                                      "value": base64.b64encode(value).decode()})
                revisions.append(int(out["header"]["revision"]))
        finally:
            conn.close()
        return min(revisions)

    def _connection(self) -> http.client.HTTPConnection:
        scheme_host = self.url.split("://", 1)[1]
        return (http.client.HTTPSConnection(scheme_host, context=self.ctx, timeout=30) if self.url.startswith("https")
                else http.client.HTTPConnection(scheme_host, timeout=30))

    @staticmethod
    def _post(conn: http.client.HTTPConnection, path: str, body: dict) -> dict:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        out = json.loads(r.read())
        assert r.status == 200, out
        return out

    def _range(self, body: dict) -> dict[str, bytes]:
        conn = self._connection()
        try:
            out = self._post(conn, "/v3/kv/range", body)
        finally:
            conn.close()
        return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", ""))
                for kv in out.get("kvs", [])}


def kubeadm_api(version: str) -> str:
    """kubeadm's config API for a release: v1beta4 from 1.31 (v1beta3 was removed in 1.36)."""
    minor = int(version.split(".")[1])
    return "kubeadm.k8s.io/v1beta4" if minor >= 31 else "kubeadm.k8s.io/v1beta3"


def kubeadm_config(version: str, name: str, address: str, endpoint: str, external_etcd: str | None,
                   api_server: dict | None = None) -> str:
    """InitConfiguration + ClusterConfiguration. `api_server` is the ClusterConfiguration's
    apiServer in v1beta4 form (extraArgs as name/value pairs), turned into a map for v1beta3."""
    api = kubeadm_api(version)
    init = {"apiVersion": api, "kind": "InitConfiguration",
            "localAPIEndpoint": {"advertiseAddress": address, "bindPort": 6443},
            "nodeRegistration": {"name": name, "criSocket": "unix:///run/containerd/containerd.sock"}}
    cluster = {"apiVersion": api, "kind": "ClusterConfiguration", "kubernetesVersion": version,
               "clusterName": "kubernetes", "controlPlaneEndpoint": endpoint, "certificatesDir": PKI,
               "networking": {"serviceSubnet": "10.96.0.0/12", "dnsDomain": "cluster.local"}}
    if api_server:
        server = dict(api_server)
        if api.endswith("v1beta3") and "extraArgs" in server:
            server["extraArgs"] = {a["name"]: a["value"] for a in server["extraArgs"]}
        cluster["apiServer"] = server
    if external_etcd:
        cluster["etcd"] = {"external": {"endpoints": [external_etcd]}}
    return yaml.safe_dump_all([init, cluster], sort_keys=False)


def join_config(version: str, name: str, address: str) -> str:
    """A control-plane JoinConfiguration that discovers the cluster through a kubeconfig file."""
    return yaml.safe_dump({
        "apiVersion": kubeadm_api(version), "kind": "JoinConfiguration",
        "discovery": {"file": {"kubeConfigPath": DISCOVERY}},
        "controlPlane": {"localAPIEndpoint": {"advertiseAddress": address, "bindPort": 6443}},
        "nodeRegistration": {"name": name, "criSocket": "unix:///run/containerd/containerd.sock"}}, sort_keys=False)


class ControlPlane:
    """N control-plane hosts with real kube-apiservers (see the module docstring)."""

    def __init__(self, rootfs: Path, bin_dir: Path, workdir: Path, hosts: int = 1, controller_manager: bool = True,
                 nspawn_workdir: Path | None = None, joining: int = 0, api_server: dict | None = None,
                 files: dict[str, str] | None = None, binds: list[tuple] | None = None):
        """`hosts` are set up by kubeadm at start; `joining` more hosts only boot (runner installed)
        until `join()`. `api_server` goes into the ClusterConfiguration; `files` (path -> text, 0600)
        are written on every host before kubeadm runs, e.g. a configuration that `api_server` names.
        `binds`: more (machine path, host path[, read-only]) bind mounts on every host, e.g. the
        directory of a provider socket served from this machine."""
        self.rootfs, self.bin_dir, self.workdir = rootfs, bin_dir, workdir
        self.binds = list(binds or [])
        self.count, self.controller_manager = hosts, controller_manager
        self.joining, self.api_server, self.files = joining, api_server, files or {}
        self.nspawn_workdir = nspawn_workdir
        self.net = HostNetwork(hosts + joining)
        self.hosts: list[KubeHost] = []
        self.etcd_proc: subprocess.Popen | None = None
        self.version = subprocess.run([str(bin_dir / "kubeadm"), "version", "-o", "short"], capture_output=True,
                                      text=True, check=True).stdout.strip()
        self._apis: dict[int, KubeApi] = {}

    def __enter__(self) -> "ControlPlane":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def external_etcd(self) -> str | None:
        return f"http://{self.net.gateway}:2379" if self.count + self.joining > 1 else None

    def start(self) -> "ControlPlane":
        try:
            self.net.start()
            if self.external_etcd:
                self._start_etcd()
            for i, (ns, addr) in enumerate(zip(self.net.namespaces, self.net.addresses)):
                c = Container(self.rootfs, workdir=self.nspawn_workdir, name=f"bao-k{self.net.tag}{i}",
                              binds=[(str(self.bin_dir), BIN, True), *self.binds],
                              nspawn_args=[f"--network-namespace-path=/run/netns/{ns}"])
                self.hosts.append(KubeHost(c, f"cp{i + 1}", addr))
                c.start()
                self._install_runner(c)
            for i, h in enumerate(self.hosts[:self.count]):
                self._kubeadm(h, first=(i == 0))
            for h in self.hosts[:self.count]:
                h.wait_pod("kube-apiserver", timeout=180)
            first = self.hosts[0]
            # What a full `kubeadm init` does after the control plane is up: admin.conf's group
            # gets cluster-admin, and the ClusterConfiguration goes into kubeadm-config.
            wait_until(lambda: first.kubectl("create", "clusterrolebinding", "kubeadm:cluster-admins",
                                             "--clusterrole=cluster-admin", "--group=kubeadm:cluster-admins",
                                             kubeconfig="/etc/kubernetes/super-admin.conf",
                                             check=False).returncode == 0, "the kubeadm:cluster-admins binding", 60)
            first.kubeadm("init", "phase", "upload-config", "kubeadm", "--config", KUBEADM_CONFIG)
            if self.joining:
                # What `kubeadm join` reads: cluster-info (discovery) and the kubelet configuration.
                first.kubeadm("init", "phase", "bootstrap-token", "--config", KUBEADM_CONFIG)
                first.kubeadm("init", "phase", "upload-config", "kubelet", "--config", KUBEADM_CONFIG)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_etcd(self) -> None:
        data = self.workdir / "etcd-data"
        shutil.rmtree(data, ignore_errors=True)
        log = open(self.workdir / "etcd.log", "wb")
        url = f"http://{self.net.gateway}:2379"
        self.etcd_proc = subprocess.Popen(
            [str(self.bin_dir / "etcd"), "--data-dir", str(data), "--name", "etcd",
             "--listen-client-urls", url, "--advertise-client-urls", url,
             "--listen-peer-urls", f"http://{self.net.gateway}:2380",
             "--initial-advertise-peer-urls", f"http://{self.net.gateway}:2380",
             "--initial-cluster", f"etcd=http://{self.net.gateway}:2380"], stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: self._etcd_healthy(url), "the external etcd", 30)

    @staticmethod
    def _etcd_healthy(url: str) -> bool:
        try:
            conn = http.client.HTTPConnection(url.split("://", 1)[1], timeout=2)
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        except OSError:
            return False

    def _install_runner(self, c: Container) -> None:
        c.copy_in(REPO_ROOT / "tests" / "system" / "static_pods.py", "/usr/local/lib/static-pods/static_pods.py",
                  mode=0o755)
        c.write_file("/etc/systemd/system/static-pods.service", STATIC_PODS_UNIT)
        c.systemctl("daemon-reload")
        c.systemctl("enable", "--now", "static-pods.service")

    def _kubeadm(self, h: KubeHost, first: bool) -> None:
        endpoint = f"{self.hosts[0].address}:6443"
        h.c.write_file(KUBEADM_CONFIG, kubeadm_config(self.version, h.name, h.address, endpoint, self.external_etcd,
                                                      self.api_server), mode=0o600)
        for path, text in self.files.items():
            h.c.write_file(path, text, mode=0o600)
        if not first:
            self._copy_shared_pki(h)
        cfg = ["--config", KUBEADM_CONFIG]
        h.kubeadm("init", "phase", "certs", "all", *cfg)
        for kc in ("admin", "super-admin", "controller-manager"):
            h.kubeadm("init", "phase", "kubeconfig", kc, *cfg)
        if not self.external_etcd:
            h.kubeadm("init", "phase", "etcd", "local", *cfg)
        h.kubeadm("init", "phase", "control-plane", "apiserver", *cfg)
        if self.controller_manager:
            h.kubeadm("init", "phase", "control-plane", "controller-manager", *cfg)

    def _copy_shared_pki(self, h: KubeHost) -> None:
        src = self.hosts[0].c
        for f in SHARED_PKI:
            h.c.write_file(f"{PKI}/{f}", src.read_file(f"{PKI}/{f}", binary=True),
                           mode=0o600 if f.endswith(".key") else 0o644)

    def join(self, i: int, timeout: float = 180) -> KubeHost:
        """The control-plane part of `kubeadm join --control-plane` on joining host `i`: the shared PKI
        copied as for `--certificate-key`, then the real kubeadm's join phases, which read the
        ClusterConfiguration from the cluster's kubeadm-config (so whatever a rollout stored there
        reaches the new host's manifest). Waits for its kube-apiserver."""
        h = self.hosts[i]
        h.c.write_file(DISCOVERY, self.hosts[0].c.read_file("/etc/kubernetes/admin.conf"), mode=0o600)
        h.c.write_file(JOIN_CONFIG, join_config(self.version, h.name, h.address), mode=0o600)
        self._copy_shared_pki(h)
        for phase in ("certs", "kubeconfig", "control-plane"):
            h.kubeadm("join", "phase", "control-plane-prepare", phase, "--config", JOIN_CONFIG)
        # The join writes every control-plane manifest; these hosts run kube-apiserver only (the
        # first host runs the controller manager, nothing here builds a scheduler).
        h.c.run(["rm", "-f", f"{MANIFESTS}/kube-scheduler.yaml", f"{MANIFESTS}/kube-controller-manager.yaml"])
        h.wait_pod("kube-apiserver", timeout=timeout)
        return h

    def api(self, i: int = 0) -> KubeApi:
        if i not in self._apis:
            self._apis[i] = KubeApi(self.hosts[i], self.workdir, credentials=self.hosts[0])
        return self._apis[i]

    def etcd(self) -> Etcd:
        """The cluster's etcd as seen from this machine."""
        if self.external_etcd:
            return Etcd(self.external_etcd)
        h = self.hosts[0]
        ctx = ssl.create_default_context(cafile=str(h.c.root / "etc/kubernetes/pki/etcd/ca.crt"))
        ctx.load_cert_chain(h.c.root / "etc/kubernetes/pki/apiserver-etcd-client.crt",
                            h.c.root / "etc/kubernetes/pki/apiserver-etcd-client.key")
        return Etcd(f"https://{h.address}:2379", ctx)

    def stop(self) -> None:
        errors = []
        for h in self.hosts:
            try:
                h.c.stop()
            except Exception as e:  # noqa: BLE001 - stop every host, report all
                errors.append(str(e))
        if self.etcd_proc is not None and self.etcd_proc.poll() is None:
            self.etcd_proc.terminate()
            try:
                self.etcd_proc.wait(10)
            except subprocess.TimeoutExpired:
                self.etcd_proc.kill()
        self.net.stop()
        if errors:
            raise AssertionError("stopping the control plane: " + "; ".join(errors))
