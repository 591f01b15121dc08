"""The kube_apiserver_kms role's checks (verify.yml) on a kubeadm host with the real kube-apiserver:

- kubeadm's real apiserver.crt has the default SANs (advertise address, service IP, node name,
  kubernetes* names) and no 127.0.0.1, so the old check through 127.0.0.1 fails TLS verification;
  kubeadm leaves --anonymous-auth at its default, so an anonymous /readyz is answered (RBAC's
  system:public-info-viewer) and an anonymous read of Secrets is refused (403, system:anonymous);
- the role's admin.conf points at a load balancer address (here: one where nothing listens), so the
  role must go through the advertise address from the manifest with admin.conf's client certificate:
  /readyz?verbose with kubectl (also Debian's kubectl 1.20), the canary written and read back, and its
  raw value in etcd (kubeadm's etcd with TLS, its apiserver-etcd-client certificate) stored by the
  stage's first provider of a real EncryptionConfiguration (identity, aescbc, or the provider);
- the write pass decrypts the canary's real KMS v2 envelope from etcd with `bao-kms-provider
  verify-etcd-value`, and stops on a value that does not decrypt or is plaintext.

One control plane for the module (kube_cluster.py: real kubeadm PKI, etcd and kube-apiserver run by
the static-pod runner in an nspawn host), the provider and OpenBao on this machine with the socket's
directory bound into the host (kube_encryption.py). Ansible runs the role's tasks inside the host.
Also: the write pass refuses when one host of a two-host inventory has not done the read pass, the
kubeadm-config ClusterConfiguration edit in the v1beta3 and v1beta4 shapes and its revert, and a
missing kubectl; these need no API server.
"""

from __future__ import annotations

import importlib.util
import json
import re
import os
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ansible_helpers import ANSIBLE_DIR, BUILD_DIR, VENV_BIN, run_playbook  # noqa: E402
from kube_cluster import ControlPlane, kube_bin_dir  # noqa: E402
from kube_encryption import (HOST_BINARY, IDENTITY, KMS_PREFIX, MachineProvider, aescbc, encryption_config,  # noqa: E402
                             kms, use_encryption_config)

ROLE = ANSIBLE_DIR / "roles" / "kube_apiserver_kms"
KUBECTL = os.environ.get("BAO_TEST_KUBECTL") or shutil.which("kubectl")
# Debian's kubernetes-client (kubectl 1.20), unpacked by scripts/tools.sh: the oldest kubectl a
# control-plane host may bring, and what `make tools` installs on a machine without kubectl.
DEBIAN_KUBECTL = BUILD_DIR / "tools" / "kubernetes-client" / "kubectl"
# Inside the host: the built kubectl (the release under test), Debian's, and admin.conf as on a host
# behind a load balancer.
HOST_KUBECTL = "/usr/local/bin/kubectl"
HOST_DEBIAN_KUBECTL = "/usr/local/lib/kubernetes-client/kubectl"
LB_ADMIN = "/etc/kubernetes/admin-lb.conf"
CANARY = "/registry/secrets/kube-system/bao-kms-provider-canary"
CANARY_API = "/api/v1/namespaces/kube-system/secrets/bao-kms-provider-canary"
# A fault kube-apiserver never produces: a value with the provider's prefix that does not decrypt. This
# wrapper flips one ciphertext bit of the canary in etcd, runs the real `verify-etcd-value` on it, and
# puts the real value back.
CORRUPTING_VERIFY = "/usr/local/lib/bao-test/verify-etcd-value-of-a-corrupted-canary"
CORRUPTING_VERIFY_TEXT = f"""#!/usr/bin/python3
import base64, json, ssl, subprocess, sys, urllib.request
PKI = "/etc/kubernetes/pki"
ctx = ssl.create_default_context(cafile=PKI + "/etcd/ca.crt")
ctx.load_cert_chain(PKI + "/apiserver-etcd-client.crt", PKI + "/apiserver-etcd-client.key")
key = base64.b64encode(b"{CANARY}").decode()

def call(path, body):
    req = urllib.request.Request("https://127.0.0.1:2379" + path, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        return json.load(r)

value = base64.b64decode(call("/v3/kv/range", {{"key": key}})["kvs"][0]["value"])
assert value.startswith({KMS_PREFIX!r}), value[:40]
bad = bytearray(value)
bad[-20] ^= 1
call("/v3/kv/put", {{"key": key, "value": base64.b64encode(bytes(bad)).decode()}})
try:
    rc = subprocess.call(["{HOST_BINARY}", *sys.argv[1:]])
finally:
    call("/v3/kv/put", {{"key": key, "value": base64.b64encode(value).decode()}})
sys.exit(rc)
"""


def local_inventory(hosts: dict[str, dict]) -> dict:
    base = {"ansible_connection": "local", "ansible_python_interpreter": str(VENV_BIN / "python"),
            "ansible_become": False}
    return {"all": {"children": {"kube_control_plane": {"hosts": {h: {**base, **v} for h, v in hosts.items()}}}}}


def playbook(tmp: Path, tasks_from: str, hosts: str = "kube_control_plane", pre_tasks: list | None = None) -> str:
    path = tmp / f"{tasks_from}.yml"
    path.write_text(yaml.safe_dump([{"name": f"role tasks {tasks_from}", "hosts": hosts, "gather_facts": False,
                                     "tasks": (pre_tasks or []) + [{"name": "run", "ansible.builtin.include_role": {
                                         "name": "kube_apiserver_kms", "tasks_from": tasks_from}}]}]))
    return str(path)


class Host:
    """The control plane's host, the provider on this machine, and the role's runs inside the host."""

    def __init__(self, cp: ControlPlane, provider: MachineProvider, work: Path):
        self.cp, self.provider, self.work = cp, provider, work
        self.host = cp.hosts[0]
        self.api = cp.api(0)
        self.etcd = cp.etcd()
        self.server = f"https://{self.host.address}:6443"
        self.inventory = {"all": {"children": {"kube_control_plane": {"hosts": {self.host.name: {
            "ansible_connection": "nsenter", "ansible_nsenter_pid": self.host.c.pid,
            "ansible_python_interpreter": "/usr/bin/python3", "ansible_become": False}}}}}}

    def encrypt(self, *providers: dict) -> None:
        """Secrets under these providers, in this order (kube-apiserver recreated, ready)."""
        use_encryption_config(self.host, encryption_config((["secrets"], list(providers))), mounts=[self.provider.dir])

    def verify(self, stage: str, first: str, **extra) -> object:
        variables = {"kube_apiserver_kms_kubeconfig": LB_ADMIN, "kube_apiserver_kms_kubectl": HOST_KUBECTL,
                     "kube_apiserver_kms_stage": stage, "kube_apiserver_kms_wait_retries": 2,
                     "kube_apiserver_kms_wait_delay": 1,
                     "kube_apiserver_kms_provider_binary": HOST_BINARY,
                     "kube_apiserver_kms_provider_config": str(self.provider.config),
                     "_kube_apiserver_kms_encryption_config": {"summary": {"entries": [
                         {"resources": ["secrets"], "providers": [first]}]}}, **extra}
        return run_playbook(playbook(self.work, "verify.yml"), self.inventory, variables)

    def canary_value(self) -> str:
        status, out = self.api.request("GET", CANARY_API)
        assert status == 200, out
        return out["data"]["host"]

    def anonymous(self, path: str) -> int:
        ctx = ssl.create_default_context(cafile=str(self.host.c.root / "etc/kubernetes/pki/ca.crt"))
        try:
            with urllib.request.urlopen(self.server + path, context=ctx, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, nspawn_rootfs):
    """One kubeadm control-plane host with the real kube-apiserver; the provider served into it."""
    work = tmp_path_factory.mktemp("verify")
    provider = MachineProvider(work / "provider").start()
    cp = None
    try:
        cp = ControlPlane(nspawn_rootfs, kube_bin_dir(), work, hosts=1, controller_manager=False,
                          binds=provider.binds).start()
        h = cp.hosts[0]
        # admin.conf of a host behind a load balancer: its server is not this host's API server.
        conf = yaml.safe_load(h.c.read_file("/etc/kubernetes/admin.conf"))
        conf["clusters"][0]["cluster"]["server"] = f"https://{cp.net.gateway}:6443"
        h.c.write_file(LB_ADMIN, yaml.safe_dump(conf), mode=0o600)
        if DEBIAN_KUBECTL.exists():
            h.c.copy_in(DEBIAN_KUBECTL, HOST_DEBIAN_KUBECTL, mode=0o755)
        h.c.write_file(CORRUPTING_VERIFY, CORRUPTING_VERIFY_TEXT, mode=0o755)
        yield Host(cp, provider, work)
    finally:
        if cp is not None:
            cp.stop()
        provider.stop()


def test_stock_certificate_has_no_loopback_san_and_anonymous_requests_cannot_read_secrets(cluster):
    from cryptography import x509
    h = cluster.host
    cert = x509.load_pem_x509_certificate(h.c.read_file("/etc/kubernetes/pki/apiserver.crt", binary=True))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {h.address, "10.96.0.1"}, san
    assert set(san.get_values_for_type(x509.DNSName)) == {
        h.name, "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}
    # The old check went to 127.0.0.1, which the certificate does not carry: TLS verification fails.
    p = h.c.run([HOST_KUBECTL, "--kubeconfig", "/etc/kubernetes/admin.conf", "--server", "https://127.0.0.1:6443",
                 "get", "--raw", "/readyz"], check=False)
    assert p.returncode != 0 and "x509" in p.stderr and "127.0.0.1" in p.stderr, p.stderr
    # The role's admin.conf's own server is not this host's API server (here: nothing listens there).
    p = h.c.run([HOST_KUBECTL, "--kubeconfig", LB_ADMIN, "--request-timeout", "10s", "get", "--raw", "/readyz"],
                check=False)
    assert p.returncode != 0, p.stdout
    # kubeadm leaves --anonymous-auth at its default (true): health is public (system:public-info-viewer),
    # Secrets are not.
    manifest = h.c.read_file("/etc/kubernetes/manifests/kube-apiserver.yaml")
    assert "--anonymous-auth" not in manifest and "--authorization-mode=Node,RBAC" in manifest, manifest
    assert cluster.anonymous("/readyz") == 200
    assert cluster.anonymous("/api/v1/namespaces/kube-system/secrets") == 403


def test_verify_passes_through_the_advertise_address_and_checks_the_canary_in_etcd(cluster):
    cluster.encrypt(IDENTITY, kms(cluster.provider.socket))   # the read pass: identity first, the provider second
    run = cluster.verify("read", "identity")
    run.assert_ok()
    assert f"canary kube-system/bao-kms-provider-canary written and read back through {cluster.server}" \
        in run.output, run.output
    assert "stored by identity" in run.output, run.output
    assert cluster.canary_value() == "Y3AxIHJlYWQ="  # "cp1 read"
    # identity: kube-apiserver's own encoding (protobuf), the value readable in etcd.
    stored = cluster.etcd.get(CANARY)
    assert stored is not None and stored.startswith(b"k8s\x00") and b"cp1 read" in stored, stored[:80]
    assert cluster.anonymous(CANARY_API) == 403


def test_verify_fails_when_etcd_shows_another_provider_than_the_stage_expects(cluster):
    # The old provider still writes: aescbc first in a real EncryptionConfiguration.
    cluster.encrypt(aescbc(), IDENTITY, kms(cluster.provider.socket))
    run = cluster.verify("read", "identity")   # not what the read pass of a plain cluster wants
    assert run.rc != 0
    assert "is stored with k8s:enc:aescbc:v1:key1:, expected plaintext (identity first)" in run.output, run.output
    assert cluster.etcd.get(CANARY).startswith(b"k8s:enc:aescbc:v1:key1:")
    cluster.verify("read", "aescbc").assert_ok()


def test_the_checks_work_with_debians_kubectl_1_20(cluster):
    """Create (no canary yet) and replace (a second run) through the advertise address with kubectl 1.20."""
    assert DEBIAN_KUBECTL.exists(), f"{DEBIAN_KUBECTL} is missing: run `make tools` (scripts/tools.sh)"
    version = cluster.host.c.run([HOST_DEBIAN_KUBECTL, "version", "--client", "--short"], check=False).stdout
    assert "v1.20." in version, version
    cluster.encrypt(IDENTITY, kms(cluster.provider.socket), aescbc())
    cluster.host.kubectl("-n", "kube-system", "delete", "secret", "bao-kms-provider-canary", "--ignore-not-found")
    for _ in range(2):
        run = cluster.verify("read", "identity", kube_apiserver_kms_kubectl=HOST_DEBIAN_KUBECTL)
        run.assert_ok()
        assert "stored by identity" in run.output, run.output


def test_a_missing_kubectl_is_refused_with_what_to_install(tmp_path):
    missing = run_playbook(playbook(tmp_path, "kubectl.yml"), local_inventory({"cp1": {}}),
                           {"kube_apiserver_kms_kubectl": str(tmp_path / "kubectl")})
    assert missing.rc != 0 and f"kubectl ({tmp_path / 'kubectl'}) does not run on cp1" in missing.output, missing.output
    assert "pkgs.k8s.io" in missing.output and "set kube_apiserver_kms_kubectl to its path" in missing.output
    # Something else under that name (a broken wrapper): refused as well.
    (tmp_path / "kubectl").write_text("#!/bin/sh\necho 'kubectl: cannot load config' >&2\nexit 1\n")
    (tmp_path / "kubectl").chmod(0o755)
    broken = run_playbook(playbook(tmp_path, "kubectl.yml"), local_inventory({"cp1": {}}),
                          {"kube_apiserver_kms_kubectl": str(tmp_path / "kubectl")})
    assert broken.rc != 0 and "cannot load config" in broken.output, broken.output
    for kubectl in (KUBECTL, str(DEBIAN_KUBECTL)):
        run_playbook(playbook(tmp_path, "kubectl.yml"), local_inventory({"cp1": {}}),
                     {"kube_apiserver_kms_kubectl": kubectl}).assert_ok()


def test_write_pass_decrypts_the_canary_from_etcd_and_stops_on_a_value_that_does_not_verify(cluster):
    """The write pass's etcd step end to end: the real kube-apiserver stores the canary through the
    real provider (a KMS v2 envelope); `bao-kms-provider verify-etcd-value` on the host reads it from
    the real etcd (kubeadm's etcd client certificate) and decrypts it. A value with our prefix that
    does not decrypt (the one fault injected: kube-apiserver never writes one), and a plaintext value
    (identity first for real), each fail the run with a clear message; the canary stays readable."""
    socket = cluster.provider.socket
    cluster.encrypt(kms(socket), IDENTITY, aescbc())
    run = cluster.verify("write", "kms:openbao-kms")
    run.assert_ok()
    assert "stored by kms:openbao-kms" in run.output, run.output
    assert re.search(r"Stop unless the provider decrypts the canary from etcd\] \*+\nok: \[cp1\] => \{\n\s+"
                     r"\"changed\": false,\n\s+\"msg\": \"key: +/registry/secrets/kube-system/bao-kms-provider-canary \|",
                     run.output), run.output
    assert "result:     verified" in run.output, run.output
    assert cluster.etcd.get(CANARY).startswith(KMS_PREFIX)
    bad = cluster.verify("write", "kms:openbao-kms", kube_apiserver_kms_provider_binary=CORRUPTING_VERIFY)
    assert bad.rc != 0 and "does not verify it (rc=6)" in bad.output and "DOES NOT DECRYPT" in bad.output, bad.output
    assert "Stopping before the next host" in bad.output
    cluster.encrypt(IDENTITY, kms(socket), aescbc())   # the write pass's file, but identity first
    plain = cluster.verify("write", "kms:openbao-kms")
    assert plain.rc != 0, plain.output
    assert ("/registry/secrets/kube-system/bao-kms-provider-canary is stored with (no prefix), expected "
            "k8s:enc:kms:v2:openbao-kms:") in plain.output, plain.output
    assert cluster.canary_value() == "Y3AxIHdyaXRl"  # "cp1 write"


def test_write_pass_refuses_while_one_of_two_hosts_has_not_done_the_read_pass(tmp_path):
    """Two hosts (both the controller, each with its own files): cp1 did the read pass, cp2 did not."""
    fake_bin = tmp_path / "bao-kms-provider"
    rendered = {"apiVersion": "apiserver.config.k8s.io/v1", "kind": "EncryptionConfiguration", "resources": [
        {"resources": ["secrets"], "providers": [{"kms": {"apiVersion": "v2", "name": "openbao-kms",
                                                          "endpoint": "unix:///run/openbao-kms/kms.sock",
                                                          "timeout": "3s"}}, {"identity": {}}]}]}
    fake_bin.write_text("#!/bin/sh\ncat <<'EOF'\n%s\nEOF\n" % json.dumps(rendered))
    fake_bin.chmod(0o755)
    (tmp_path / "cp1").mkdir()
    (tmp_path / "cp2").mkdir()
    read = dict(rendered, resources=[{"resources": ["secrets"], "providers": [{"identity": {}},
                                                                              rendered["resources"][0]["providers"][0]]}])
    (tmp_path / "cp1" / "encryption-config.yaml").write_text(json.dumps(read))
    hosts = {h: {"kube_apiserver_kms_config_file": str(tmp_path / h / "encryption-config.yaml"),
                 "kube_apiserver_kms_config_dir": str(tmp_path / h)} for h in ("cp1", "cp2")}
    # The gate uses the rendered output of the real command line; point it at the stand-in binary.
    extra = {"_kube_apiserver_kms_render_argv": [str(fake_bin)]}
    refused = run_playbook(playbook(tmp_path, "write_gate.yml", hosts="cp1"), local_inventory(hosts), extra)
    assert refused.rc != 0 and "Refusing the write pass: cp2 of group kube_control_plane" in refused.output, refused.output
    (tmp_path / "cp2" / "encryption-config.yaml").write_text(json.dumps(read))
    run_playbook(playbook(tmp_path, "write_gate.yml", hosts="cp1"), local_inventory(hosts), extra).assert_ok()


# ---------------------------------------------------------------------------- kubeadm-config

_kspec = importlib.util.spec_from_file_location("kubeadm_cluster_configuration",
                                                ROLE / "module_utils" / "kubeadm_cluster_configuration.py")
kc = importlib.util.module_from_spec(_kspec)
_kspec.loader.exec_module(kc)

ARGS = {"encryption-provider-config": "/etc/kubernetes/encryption/openbao-kms/encryption-config.yaml"}
VOLUMES = [{"name": "openbao-kms-config", "hostPath": "/etc/kubernetes/encryption/openbao-kms",
            "mountPath": "/etc/kubernetes/encryption/openbao-kms", "readOnly": True, "pathType": "Directory"},
           {"name": "openbao-kms-socket", "hostPath": "/run/openbao-kms", "mountPath": "/run/openbao-kms",
            "readOnly": False, "pathType": "DirectoryOrCreate"}]
# The ClusterConfiguration as `kubeadm init` stores it in the kubeadm-config ConfigMap (v1beta3: kubeadm
# 1.22-1.30; v1beta4: 1.31+), with an operator's own extra arg and volume.
V1BETA3 = """apiServer:
  certSANs:
  - lb.example.internal
  extraArgs:
    authorization-mode: Node,RBAC
    encryption-provider-config: /etc/kubernetes/enc/enc.yaml
  extraVolumes:
  - hostPath: /etc/kubernetes/enc
    mountPath: /etc/kubernetes/enc
    name: enc
    pathType: DirectoryOrCreate
    readOnly: true
  timeoutForControlPlane: 4m0s
apiVersion: kubeadm.k8s.io/v1beta3
certificatesDir: /etc/kubernetes/pki
clusterName: kubernetes
controlPlaneEndpoint: lb.example.internal:6443
controllerManager: {}
dns: {}
etcd:
  local:
    dataDir: /var/lib/etcd
imageRepository: registry.k8s.io
kind: ClusterConfiguration
kubernetesVersion: v1.29.4
networking:
  dnsDomain: cluster.local
  podSubnet: 10.244.0.0/16
  serviceSubnet: 10.96.0.0/12
scheduler: {}
"""
V1BETA4 = """apiServer:
  extraArgs:
  - name: authorization-mode
    value: Node,RBAC
apiVersion: kubeadm.k8s.io/v1beta4
caCertificateValidityPeriod: 87600h0m0s
certificateValidityPeriod: 8760h0m0s
certificatesDir: /etc/kubernetes/pki
clusterName: kubernetes
controllerManager: {}
dns: {}
encryptionAlgorithm: RSA-2048
etcd:
  local:
    dataDir: /var/lib/etcd
imageRepository: registry.k8s.io
kind: ClusterConfiguration
kubernetesVersion: v1.33.1
networking:
  dnsDomain: cluster.local
  serviceSubnet: 10.96.0.0/12
proxy: {}
scheduler: {}
"""


def normal(doc: dict) -> dict:
    """kubeadm reads a missing and an empty apiServer/extraArgs/extraVolumes alike."""
    api = {k: v for k, v in (doc.get("apiServer") or {}).items() if v not in ([], {})}
    return {**{k: v for k, v in doc.items() if k != "apiServer"}, **({"apiServer": api} if api else {})}


@pytest.mark.parametrize("text", [V1BETA3, V1BETA4, V1BETA4.replace("apiServer:\n  extraArgs:\n  - name: authorization-mode\n"
                                                                    "    value: Node,RBAC\n", "")],
                         ids=["v1beta3-merge", "v1beta4", "v1beta4-no-apiServer"])
def test_kubeadm_config_gets_our_extra_args_and_volumes_and_the_revert_restores_it(text):
    v4 = "v1beta4" in text
    previous = "/etc/kubernetes/enc/enc.yaml" if "enc.yaml" in text else None
    new, changes = kc.patch(text, ARGS, VOLUMES)
    doc = yaml.safe_load(new)
    extra = doc["apiServer"]["extraArgs"]
    args = {a["name"]: a["value"] for a in extra} if v4 else extra
    assert isinstance(extra, list if v4 else dict)
    assert args["encryption-provider-config"] == ARGS["encryption-provider-config"]
    assert args.get("authorization-mode", "Node,RBAC") == "Node,RBAC"
    assert [v["name"] for v in doc["apiServer"]["extraVolumes"]][-2:] == ["openbao-kms-config", "openbao-kms-socket"]
    assert {k: v for k, v in yaml.safe_load(text).items() if k != "apiServer"} == \
        {k: v for k, v in doc.items() if k != "apiServer"}
    assert kc.patch(new, ARGS, VOLUMES) == (new, [])
    reverted, _ = kc.patch(new, ARGS, VOLUMES, state="absent", previous_config=previous)
    assert normal(yaml.safe_load(reverted)) == normal(yaml.safe_load(text))
    assert kc.patch(reverted, ARGS, VOLUMES, state="absent", previous_config=previous)[1] == []


def test_kubeadm_config_refuses_a_foreign_volume_of_our_name_and_a_wrong_shape():
    clash = V1BETA3.replace("    name: enc\n", "    name: openbao-kms-config\n")
    with pytest.raises(kc.ClusterConfigurationError, match="fix it by hand"):
        kc.patch(clash, ARGS, VOLUMES)
    wrong = V1BETA4.replace("kubeadm.k8s.io/v1beta4", "kubeadm.k8s.io/v1beta3")
    with pytest.raises(kc.ClusterConfigurationError, match="is a list, expected a map"):
        kc.patch(wrong, ARGS, VOLUMES)


def test_a_restart_that_did_not_happen_fails_the_run(tmp_path):
    """The default restart command under pipefail fails without a working crictl (none here), and the
    wait refuses an unchanged container id, so the checks never run against the old API server."""
    assert shutil.which("crictl") is None, "this test expects no crictl on the test machine"
    restart = run_playbook(playbook(tmp_path, "restart.yml"), local_inventory({"cp1": {}}))
    assert restart.rc != 0 and "crictl" in restart.output, restart.output
    same = {"kube_apiserver_kms_container_id_command": "echo 3f2a9c", "kube_apiserver_kms_wait_retries": 2,
            "kube_apiserver_kms_wait_delay": 1}
    pre = [{"name": "record", "ansible.builtin.include_role": {"name": "kube_apiserver_kms",
                                                                "tasks_from": "container_id.yml"}}]
    wait = run_playbook(playbook(tmp_path, "wait_restart.yml", pre_tasks=pre), local_inventory({"cp1": {}}), same)
    assert wait.rc != 0 and "Wait for a new kube-apiserver container" in wait.output, wait.output
    changing = {**same, "kube_apiserver_kms_container_id_command": "date +%s%N"}
    run_playbook(playbook(tmp_path, "wait_restart.yml", pre_tasks=pre), local_inventory({"cp1": {}}), changing).assert_ok()
