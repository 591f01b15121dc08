"""The Ansible rollout on a real control plane (kube_cluster.py): a real OpenBao with TLS on this
machine, reached from the hosts through a proxy on their bridge (which a test can take down), the
inventory `playbooks/site.yml` runs with, and the playbook runs made so far.

The inventory keeps the roles' defaults except what these hosts differ in: the static-pod
runner's container-id and restart commands (kube_cluster.py) instead of crictl, OpenBao's address
through the proxy, and short, documented probe and promotion settings so a rotation is seen in
seconds. Every host gets the same variables; a test changes one host's by `host_vars()`.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import re
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from ansible_helpers import JwtSigner, localhost_inventory, run_playbook, transit_vars
from kube_cluster import CONTAINER_ID_COMMAND, RESTART_COMMAND, ControlPlane, KubeHost, kube_bin_dir
from openbao import BaoDevServer, TcpProxy
from provider_host import journal_tail

PROVIDER = "openbao-kms"
PREFIX = f"k8s:enc:kms:v2:{PROVIDER}:".encode()
ENC_DIR = "/etc/kubernetes/encryption/openbao-kms"
ENC_CONFIG = f"{ENC_DIR}/encryption-config.yaml"
MANIFEST = "/etc/kubernetes/manifests/kube-apiserver.yaml"
# Provider settings for the tests: Status probes every second, a new key version promoted after two
# observations and two seconds (production defaults are minutes; docs/key-rotation.md).
FAST_PROVIDER_SETTINGS = {"status": {"probe_interval": "1s"},
                          "rotation": {"stable_observations": 2, "activation_delay": "2s"}}


# kube-apiserver's record of the key_id in each Status answer, per provider name.
STATUS_METRIC = "apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds"


def sum_samples(text: str, name: str, labels: dict[str, str]) -> float:
    """Sum of the Prometheus text samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if not m:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def kube_hash(key_id: str) -> str:
    """kube-apiserver's key_id label: sha256: + hex, unsalted."""
    return "sha256:" + hashlib.sha256(key_id.encode()).hexdigest()


def probe_key_id(h: KubeHost) -> str:
    """The key_id the host's provider serves (`bao-kms-provider probe`)."""
    out = h.c.run(["bao-kms-provider", "probe"], check=False).stdout
    m = re.search(r"^key_id:\s+(\S+)", out, re.M)
    return m.group(1) if m else ""


def provider_deb(request) -> Path:
    """The package the project ships (one `make deb rpm` per session); BAO_ANSIBLE_DEB=/path picks
    another, e.g. a deliberately broken provider, to see the tests fail."""
    if os.environ.get("BAO_ANSIBLE_DEB"):
        return Path(os.environ["BAO_ANSIBLE_DEB"])
    return request.getfixturevalue("built_packages").deb1


class KubeRollout:
    """OpenBao, the proxy, the control plane, the inventory and the playbook runs."""

    def __init__(self, cp: ControlPlane, bao: BaoDevServer, proxy: TcpProxy, deb: Path, hosts: list[KubeHost]):
        self.cp, self.bao, self.proxy, self.deb = cp, bao, proxy, deb
        self.signer = JwtSigner()
        self.first_jwt = self.signer.mint(ttl=3600)
        self.runs: dict[str, object] = {}
        self.inventory = localhost_inventory()
        # The single-cluster names (key k8s-etcd, role bao-kms-provider, the JWT's default sub and
        # aud), as an install made before per-cluster names keeps them.
        self.inventory["all"]["vars"] = transit_vars(bao, self.signer, openbao_transit_key_name="k8s-etcd")
        self.inventory["all"]["children"] = {"kube_control_plane": {"hosts": {
            h.name: self.host_vars(h) for h in hosts}}}

    def host_vars(self, h: KubeHost) -> dict:
        return {
            "ansible_connection": "nsenter", "ansible_nsenter_pid": h.c.pid,
            "ansible_python_interpreter": "/usr/bin/python3", "ansible_become": False,
            "bao_kms_provider_package_file": str(self.deb),
            "bao_kms_provider_openbao_address": f"https://{self.proxy.listen_host}:{self.proxy.port}",
            # OpenBao's dev certificate names localhost; the hosts reach it through the bridge.
            "bao_kms_provider_openbao_tls_server_name": "localhost",
            "bao_kms_provider_openbao_instance_id": "openbao-test",
            "bao_kms_provider_openbao_ca_src": str(self.bao.ca),
            "bao_kms_provider_jwt": self.first_jwt,
            "bao_kms_provider_cluster_id": "kube-test",
            "bao_kms_provider_transit_mount_id": "transit-test",
            "bao_kms_provider_key_lineage_id": "lineage-1",
            "bao_kms_provider_settings": FAST_PROVIDER_SETTINGS,
            "kube_apiserver_kms_container_id_command": CONTAINER_ID_COMMAND,
            "kube_apiserver_kms_restart_command": RESTART_COMMAND,
            "kube_apiserver_kms_wait_delay": 1,
            "kube_apiserver_kms_wait_retries": 180,
        }

    def provider_logs(self) -> str:
        """Every host's provider journal tail: what a wait's failure message shows."""
        return "\n".join(journal_tail(h.c) for h in self.cp.hosts)

    def hosts(self, inventory: dict | None = None) -> dict:
        return (inventory or self.inventory)["all"]["children"]["kube_control_plane"]["hosts"]

    def play(self, name: str, playbook: str = "playbooks/site.yml", inventory: dict | None = None, **kwargs):
        t0 = time.monotonic()
        run = run_playbook(playbook, inventory or self.inventory, timeout=900, **kwargs)
        self.runs[name] = run
        log_dir = os.environ.get("BAO_ANSIBLE_LOG_DIR")
        if log_dir:  # keep every run's output for a look afterwards
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            (Path(log_dir) / f"{name}.log").write_text(f"# {time.monotonic() - t0:.1f}s\n{run.output}")
        return run


@contextmanager
def kube_rollout(request, workdir: Path, rootfs: Path, make=KubeRollout, **control_plane):
    """OpenBao, a ControlPlane(**control_plane) and the proxy, torn down afterwards; yields
    `make(cp, bao, proxy, deb, hosts)` (a KubeRollout) whose inventory holds the hosts kubeadm set
    up at start."""
    deb = provider_deb(request)
    bao = BaoDevServer(workdir=workdir, tls=True).start()
    cp = proxy = None
    try:
        cp = ControlPlane(rootfs, kube_bin_dir(), workdir, **control_plane).start()
        proxy = TcpProxy(bao.port, listen_host=cp.net.gateway)
        yield make(cp, bao, proxy, deb, cp.hosts[:cp.count])
    finally:
        for part in (proxy, cp):
            if part is not None:
                try:
                    part.close() if part is proxy else part.stop()
                except Exception as e:  # noqa: BLE001 - tear everything down
                    print(f"teardown: {e}", file=sys.stderr)
        bao.stop()


class Traffic:
    """A background reader and writer per kube-apiserver, as workloads would be: each reader reads
    one Secret and checks its value, each writer replaces its own Secret, through that host's API
    server, until stopped. Every answer other than 200 and every wrong value is a failure; a refused
    or dropped connection and kube-apiserver's 503 "apiserver is shutting down" (that kube-apiserver
    restarting) are counted apart, with the time."""

    def __init__(self, cp: ControlPlane, namespace: str = "traffic"):
        self.cp, self.ns = cp, namespace
        self.failures: list[str] = []
        self.unreachable: list[str] = []
        self.counts: dict[str, int] = {}
        self.last_ok: dict[str, float] = {}  # name -> wall-clock time of the last answer that was right
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, hosts: int) -> "Traffic":
        api = self.cp.api(0)
        api.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.ns}})
        for i in range(hosts):
            for role in ("read", "write"):
                name = f"{role}-{self.cp.hosts[i].name}"
                status, out = api.request("POST", f"/api/v1/namespaces/{self.ns}/secrets", self._secret(name, name))
                assert status == 201, out
                t = threading.Thread(target=self._loop, args=(i, role, name), daemon=True)
                self._threads.append(t)
                t.start()
        return self

    def _secret(self, name: str, value: str, version: str | None = None) -> dict:
        meta = {"name": name, "namespace": self.ns, **({"resourceVersion": version} if version else {})}
        return {"apiVersion": "v1", "kind": "Secret", "metadata": meta,
                "data": {"value": base64.b64encode(value.encode()).decode()}}

    def _loop(self, i: int, role: str, name: str) -> None:
        api, n, path = self.cp.api(i), 0, f"/api/v1/namespaces/{self.ns}/secrets/{name}"
        while not self._stop.is_set():
            n += 1
            stamp = time.strftime("%H:%M:%S")
            try:
                if role == "read":
                    status, out = api.request("GET", path)
                    ok = status == 200 and base64.b64decode(out["data"]["value"]).decode() == name
                else:
                    status, out = api.request("PUT", path, self._secret(name, f"{name} {n}"))
                    ok = status == 200
                if ok:
                    self.last_ok[name] = time.time()
                elif status == 503 and "apiserver is shutting down" in str(out):
                    self.unreachable.append(f"{stamp} {role} via {self.cp.hosts[i].name}: 503 shutting down")
                else:
                    self.failures.append(f"{stamp} {role} via {self.cp.hosts[i].name}: {status} {str(out)[:300]}")
            except (OSError, http.client.HTTPException) as e:
                self.unreachable.append(f"{stamp} {role} via {self.cp.hosts[i].name}: {e}")
            self.counts[name] = n
            self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)
