"""Real EncryptionConfigurations on the real control plane (kube_cluster.py), and the provider
served from this machine into its hosts.

* `MachineProvider`: the real provider (`serve`, binding its own socket) against an OpenBao dev
  server on this machine, in a directory bound into every host at the same path
  (`ControlPlane(binds=provider.binds)`), with the binary at `HOST_BINARY`. kube-apiserver (its
  pod mounts that directory) and `bao-kms-provider verify-etcd-value` run on a host find the
  socket, the config and the key registry at the paths the config names.
* `use_encryption_config(host, config)`: what the kube_apiserver_kms role does to a host, done
  directly: the EncryptionConfiguration at the role's path, the flag and the mounts in the
  static pod manifest; the static-pod runner recreates kube-apiserver (a restart when only the
  file changed), and this waits until the new one is ready (its readinessProbe, /readyz).
  `None` puts kubeadm's own manifest back.

    provider = MachineProvider(work / "provider").start()
    with ControlPlane(rootfs, bins, work, binds=provider.binds) as cp:
        use_encryption_config(cp.hosts[0], encryption_config((["secrets"], [kms(provider.socket), IDENTITY])),
                              mounts=[provider.dir])
"""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path

import yaml

from openbao import BaoDevServer, provider_binary, provider_config, provider_policy

MANIFEST = "/etc/kubernetes/manifests/kube-apiserver.yaml"
# kubeadm's manifest as `kubeadm init phase control-plane apiserver` wrote it, kept outside the
# manifests directory (the runner, like kubelet, would start a copy there as a second pod).
STOCK_MANIFEST = "/etc/kubernetes/kube-apiserver.yaml.kubeadm"
# The kube_apiserver_kms role's paths and volume names (its defaults).
ENC_DIR = "/etc/kubernetes/encryption/openbao-kms"
ENC_FILE = f"{ENC_DIR}/encryption-config.yaml"
HOST_BINARY = "/usr/local/sbin/bao-kms-provider"
PROVIDER = "openbao-kms"
KMS_PREFIX = f"k8s:enc:kms:v2:{PROVIDER}:".encode()
IDENTITY = {"identity": {}}
# 32 bytes, for aescbc and secretbox alike; the prefix is k8s:enc:<type>:v1:<key name>:.
KEY = base64.b64encode(b"bao-kms-provider test key 32 b!!").decode()


def aescbc(*names: str) -> dict:
    """aescbc with keys of these names (default key1), each KEY."""
    return {"aescbc": {"keys": [{"name": n, "secret": KEY} for n in names or ("key1",)]}}


def secretbox(name: str = "key1") -> dict:
    return {"secretbox": {"keys": [{"name": name, "secret": KEY}]}}


def kms(socket: Path | str, name: str = PROVIDER) -> dict:
    return {"kms": {"apiVersion": "v2", "name": name, "endpoint": f"unix://{socket}", "timeout": "3s"}}


def encryption_config(*entries: tuple[list[str], list[dict]]) -> dict:
    """An EncryptionConfiguration of (resources, providers) entries, in order."""
    return {"apiVersion": "apiserver.config.k8s.io/v1", "kind": "EncryptionConfiguration",
            "resources": [{"resources": list(r), "providers": list(p)} for r, p in entries]}


def use_encryption_config(host, config: dict | None, mounts: list[Path | str] = (), timeout: float = 180) -> str:
    """Points the host's kube-apiserver at `config` (None: kubeadm's manifest as written) with the
    directories in `mounts` mounted read-write (a KMS socket's directory); returns the new pod id
    once it is ready."""
    c = host.c
    if not c.exists(STOCK_MANIFEST):
        c.run(["cp", "-p", MANIFEST, STOCK_MANIFEST])
    pod = yaml.safe_load(c.read_file(STOCK_MANIFEST))
    if config is not None:
        c.write_file(ENC_FILE, yaml.safe_dump(config, sort_keys=False), mode=0o600)
        container = pod["spec"]["containers"][0]
        container["command"].append(f"--encryption-provider-config={ENC_FILE}")
        volumes = [("openbao-kms-config", ENC_DIR, True)] + [(f"kms-socket-{i}", str(d), False)
                                                             for i, d in enumerate(mounts)]
        for name, path, read_only in volumes:
            pod["spec"]["volumes"].append({"name": name, "hostPath": {"path": path, "type": "Directory"}})
            container["volumeMounts"].append({"name": name, "mountPath": path, "readOnly": read_only})
    text = yaml.safe_dump(pod, sort_keys=False)
    before = host.pod_file("kube-apiserver", "id")
    if c.read_file(MANIFEST) == text:
        # Only the file changed: kube-apiserver reads it at start (the role restarts it, too).
        return host.restart_apiserver(timeout)
    c.write_file("/etc/kubernetes/.kube-apiserver.yaml.next", text, mode=0o600)
    c.run(["mv", "/etc/kubernetes/.kube-apiserver.yaml.next", MANIFEST])
    return host.wait_pod("kube-apiserver", timeout, other_than=before)


def request_count(api, verb: str, resource: str, code: str) -> int:
    """kube-apiserver's apiserver_request_total for one verb, resource and response code (since it
    started)."""
    total = 0
    for line in api.metrics().splitlines():
        m = re.match(r"^apiserver_request_total\{(.*)\} (\S+)$", line)
        if m:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1)))
            if (labels.get("verb"), labels.get("resource"), labels.get("code"), labels.get("subresource", "")) == \
                    (verb, resource, code, ""):
                total += int(float(m.group(2)))
    return total


class MachineProvider:
    """The real provider and an OpenBao dev server on this machine (see the module doc)."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.socket = directory / "kms.sock"
        self.config = directory / "config.toml"
        self.bao: BaoDevServer | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def binds(self) -> list[tuple]:
        return [(str(self.dir), str(self.dir), False), (str(provider_binary()), HOST_BINARY, True)]

    def start(self) -> "MachineProvider":
        self.dir.mkdir(parents=True, exist_ok=True)
        self.bao = BaoDevServer(workdir=self.dir.parent / f"{self.dir.name}-bao").start()
        try:
            config = provider_config(self.bao.addr, jwt_file=str(self.bao.jwt_path), socket_path=str(self.socket),
                                     state_dir=str(self.dir / "state"), provider_name=PROVIDER)
            (self.dir / "state").mkdir(mode=0o700)
            self.config.write_text(config)
            self.bao.setup(provider_policy(config))
            self.bao.mint_jwt()
            log = open(self.dir / "provider.log", "wb")  # noqa: SIM115
            self.proc = subprocess.Popen([str(provider_binary()), "serve", "--config", str(self.config)],
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL)
            probe = subprocess.run([str(provider_binary()), "probe", "--socket", str(self.socket), "--wait", "30s"],
                                   capture_output=True, text=True, timeout=60)
            assert probe.returncode == 0, probe.stdout + probe.stderr + self.log_tail()
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self) -> str:
        p = self.dir / "provider.log"
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.bao is not None:
            self.bao.cleanup()
