"""The kube_apiserver_kms role's checks on a stock kubeadm host, with real TLS and a real etcd:

- the API server's certificate has kubeadm's default SANs (advertise address 127.0.0.2, service IP,
  node name, kubernetes* names; no 127.0.0.1) and anonymous requests get 401 (--anonymous-auth=false);
- admin.conf points at https://127.0.0.1:<port> (like a load balancer address would, a name the
  certificate does not carry), so the old check could never pass;
- verify.yml passes through the advertise address from the manifest with admin.conf's client
  certificate: /readyz?verbose with kubectl, the canary written and read back, and its raw value in
  etcd (TLS with kubeadm's apiserver-etcd-client certificate) stored by the stage's first provider.

The API server is a stand-in (tests/system/kube_fakes.py); kubectl and etcd are real.
Also: the write pass refuses when one host of a two-host inventory has not done the read pass, and the
kubeadm-config ClusterConfiguration edit in the v1beta3 and v1beta4 shapes and its revert.
"""

from __future__ import annotations

import importlib.util
import json
import re
import os
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from ansible_helpers import ANSIBLE_DIR, BUILD_DIR, REPO_ROOT, VENV_BIN, kubeadm_testdata, run_playbook
from kube_fakes import EnvelopeWriter, Etcd, FakeApiServer, kubeconfig, make_pki
from openbao import BaoDevServer, provider_binary, provider_config, provider_policy

ROLE = ANSIBLE_DIR / "roles" / "kube_apiserver_kms"
KUBEADM = (kubeadm_testdata() / "kubeadm" / "kube-apiserver.yaml").read_text()
KUBECTL = os.environ.get("BAO_TEST_KUBECTL") or shutil.which("kubectl")
# Debian's kubernetes-client (kubectl 1.20), unpacked by scripts/tools.sh: the oldest kubectl a
# control-plane host may bring, and what `make tools` installs on a machine without kubectl.
DEBIAN_KUBECTL = BUILD_DIR / "tools" / "kubernetes-client" / "kubectl"


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


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """PKI, a real etcd, the stand-in API server on 127.0.0.2 and the host's files."""
    assert KUBECTL, "kubectl is missing: install it (Debian: kubernetes-client, see scripts/tools.sh)"
    work = tmp_path_factory.mktemp("verify")
    pki = make_pki(work / "pki")
    (work / "etcd").mkdir()
    etcd = Etcd(work / "etcd", pki)
    api = FakeApiServer(pki, etcd, host="127.0.0.2")
    manifest = (KUBEADM.replace("172.18.0.2:6443", f"127.0.0.2:{api.port}")
                .replace("--advertise-address=172.18.0.2", "--advertise-address=127.0.0.2")
                .replace("--secure-port=6443", f"--secure-port={api.port}")
                .replace("--etcd-servers=https://127.0.0.1:2379", f"--etcd-servers={etcd.endpoint}")
                .replace("/etc/kubernetes/pki/etcd/ca.crt", str(pki / "etcd/ca.crt"))
                .replace("/etc/kubernetes/pki/apiserver-etcd-client", str(pki / "apiserver-etcd-client")))
    (work / "kube-apiserver.yaml").write_text(manifest)
    admin = kubeconfig(pki, f"https://127.0.0.1:{api.port}", work / "admin.conf")
    yield {"work": work, "pki": pki, "etcd": etcd, "api": api, "admin": admin, "manifest": work / "kube-apiserver.yaml"}
    api.close()
    etcd.stop()


def test_stock_certificate_has_no_loopback_san_and_anonymous_requests_are_refused(host):
    api, pki = host["api"], host["pki"]
    # The old check went to 127.0.0.1, which the certificate does not carry: TLS verification fails.
    p = subprocess.run([KUBECTL, "--kubeconfig", str(host["admin"]), "--server", f"https://127.0.0.2:{api.port}",
                        "--tls-server-name", "127.0.0.1", "get", "--raw", "/readyz"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "x509" in p.stderr and "127.0.0.1" in p.stderr, p.stderr
    # admin.conf's own server is not this host's API server (here: nothing listens there).
    p = subprocess.run([KUBECTL, "--kubeconfig", str(host["admin"]), "get", "--raw", "/readyz"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    # Anonymous: 401.
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"https://127.0.0.2:{api.port}/readyz", context=ctx, timeout=10)
    assert e.value.code == 401


def verify_vars(host, stage: str, first: str) -> dict:
    return {"kube_apiserver_kms_manifest": str(host["manifest"]), "kube_apiserver_kms_kubeconfig": str(host["admin"]),
            "kube_apiserver_kms_kubectl": KUBECTL, "kube_apiserver_kms_stage": stage,
            "kube_apiserver_kms_wait_retries": 2, "kube_apiserver_kms_wait_delay": 1,
            "_kube_apiserver_kms_encryption_config": {"summary": {"entries": [
                {"resources": ["secrets"], "providers": [first]}]}}}


def test_verify_passes_through_the_advertise_address_and_checks_the_canary_in_etcd(host):
    api, etcd = host["api"], host["etcd"]
    api.prefix = b""   # read pass: identity first, the canary is stored in plaintext
    run = run_playbook(playbook(host["work"], "verify.yml"), local_inventory({"cp1": {}}),
                       verify_vars(host, "read", "identity"))
    run.assert_ok()
    assert f"canary kube-system/bao-kms-provider-canary written and read back through https://127.0.0.2:{api.port}" \
        in run.output, run.output
    assert "stored by identity" in run.output, run.output
    assert api.objects["kube-system/bao-kms-provider-canary"]["data"]["host"] == "Y3AxIHJlYWQ="  # "cp1 read"
    stored = etcd.get("/registry/secrets/kube-system/bao-kms-provider-canary")
    assert stored is not None and json.loads(stored)["data"]["host"]
    assert api.anonymous_rejected >= 1


def test_verify_fails_when_etcd_shows_another_provider_than_the_stage_expects(host):
    api = host["api"]
    api.prefix = b"k8s:enc:aescbc:v1:key1:"   # the old provider still writes: not what the read pass of a
    run = run_playbook(playbook(host["work"], "verify.yml"), local_inventory({"cp1": {}}),  # plain cluster wants
                       verify_vars(host, "read", "identity"))
    assert run.rc != 0
    assert "is stored with k8s:enc:aescbc:v1:key1:, expected plaintext (identity first)" in run.output, run.output
    ok = run_playbook(playbook(host["work"], "verify.yml"), local_inventory({"cp1": {}}),
                      verify_vars(host, "read", "aescbc"))
    ok.assert_ok()


def test_the_checks_work_with_debians_kubectl_1_20(host):
    """Create (no canary yet) and replace (a second run) through the advertise address with kubectl 1.20."""
    assert DEBIAN_KUBECTL.exists(), f"{DEBIAN_KUBECTL} is missing: run `make tools` (scripts/tools.sh)"
    api = host["api"]
    api.prefix = b""
    api.objects.pop("kube-system/bao-kms-provider-canary", None)
    for _ in range(2):
        run = run_playbook(playbook(host["work"], "verify.yml"), local_inventory({"cp1": {}}),
                           {**verify_vars(host, "read", "identity"), "kube_apiserver_kms_kubectl": str(DEBIAN_KUBECTL)})
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


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    """The real provider (debug build, `serve` binding its own socket) against a real OpenBao dev server,
    and an EnvelopeWriter that stores through it as kube-apiserver does."""
    work = tmp_path_factory.mktemp("provider")
    bao = BaoDevServer(workdir=work / "bao").start()
    proc = None
    try:
        config = provider_config(bao.addr, jwt_file=str(bao.jwt_path), socket_path=str(work / "kms.sock"),
                                 state_dir=str(work / "state"))
        (work / "state").mkdir(mode=0o700)
        (work / "config.toml").write_text(config)
        bao.setup(provider_policy(config))
        bao.mint_jwt()
        log = open(work / "provider.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([str(provider_binary()), "serve", "--config", str(work / "config.toml")],
                                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        probe = subprocess.run([str(provider_binary()), "probe", "--socket", str(work / "kms.sock"), "--wait", "30s"],
                               capture_output=True, text=True, timeout=60)
        assert probe.returncode == 0, probe.stdout + probe.stderr + (work / "provider.log").read_text()[-3000:]
        yield {"config": work / "config.toml", "writer": EnvelopeWriter(str(work / "kms.sock"), "openbao-kms", work)}
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        bao.cleanup()


def test_write_pass_decrypts_the_canary_from_etcd_and_stops_on_a_value_that_does_not_verify(host, provider):
    """The write pass's etcd step end to end: the stand-in API server stores real KMS v2 envelopes made
    by the real provider; `bao-kms-provider verify-etcd-value` reads the canary from the real etcd (kubeadm's
    etcd client certificate) and decrypts it. A value with our prefix that does not decrypt, and a
    plaintext value, each fail the run with a clear message; the canary stays readable through the API."""
    api, writer = host["api"], provider["writer"]
    write = {**verify_vars(host, "write", "kms:openbao-kms"), "kube_apiserver_kms_provider_binary": str(provider_binary()),
             "kube_apiserver_kms_provider_config": str(provider["config"])}
    api.encode = writer.encode
    try:
        run = run_playbook(playbook(host["work"], "verify.yml"), local_inventory({"cp1": {}}), write)
        run.assert_ok()
        assert "stored by kms:openbao-kms" in run.output, run.output
        assert re.search(r"Stop unless the provider decrypts the canary from etcd\] \*+\nok: \[cp1\] => \{\n\s+"
                         r"\"changed\": false,\n\s+\"msg\": \"key: +/registry/secrets/kube-system/bao-kms-provider-canary \|",
                         run.output), run.output
        assert "result:     verified" in run.output, run.output
        writer.tamper = True
        bad = run_playbook(playbook(host["work"], "verify.yml"), local_inventory({"cp1": {}}), write)
        assert bad.rc != 0 and "does not verify it (rc=6)" in bad.output and "DOES NOT DECRYPT" in bad.output, bad.output
        assert "Stopping before the next host" in bad.output
        writer.tamper, api.encode, api.prefix = False, None, b""
        plain = run_playbook(playbook(host["work"], "verify.yml"), local_inventory({"cp1": {}}), write)
        assert plain.rc != 0, plain.output
        assert ("/registry/secrets/kube-system/bao-kms-provider-canary is stored with (no prefix), expected "
                "k8s:enc:kms:v2:openbao-kms:") in plain.output, plain.output
        assert api.objects["kube-system/bao-kms-provider-canary"]["data"]["host"] == "Y3AxIHdyaXRl"  # "cp1 write"
    finally:
        writer.tamper, api.encode, api.prefix = False, None, b""


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
