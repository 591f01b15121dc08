"""playbooks/site.yml and playbooks/migrate_secrets.yml against a booted systemd container (the
control-plane host) and a real OpenBao dev server (the OpenBao side, from the controller).

There is no kube-apiserver here: its /readyz is a stand-in HTTP server on the host loopback that
reports the KMS check once the container's manifest carries the flag; the migration talks to a
stand-in API server (kube_fakes.FakeApiServer) on the host loopback; kubectl for kubeadm-config is a
stand-in script over a file; the container id is a hash of the manifest and a restart log; the
"Secret reads back" step is a real `bao-kms-provider probe` round trip. The checks themselves (through
the advertise address, etcd) are tested against real TLS and etcd in test_ansible_verify.py.
Every test name that relies on a stand-in says so.
"""

from __future__ import annotations

import copy
import difflib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from ansible_helpers import (BUILD_DIR, kubeadm_testdata, REPO_ROOT, JwtSigner, OpenBao, build_minimal_deb, localhost_inventory,
                             run_playbook)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kube_fakes import FakeApiServer  # noqa: E402
from nspawn import Container  # noqa: E402
from openbao import free_port  # noqa: E402

TESTDATA = kubeadm_testdata()
ORIGINAL_MANIFEST = TESTDATA / "kubeadm" / "kube-apiserver.yaml"
MANIFEST = "/etc/kubernetes/manifests/kube-apiserver.yaml"
CONFIG_DIR = "/etc/kubernetes/encryption/openbao-kms"
ENC_CONFIG = f"{CONFIG_DIR}/encryption-config.yaml"
FLAG = f"--encryption-provider-config={ENC_CONFIG}"
# The shared harness rootfs; it carries what Ansible's apt module and the manifest edit need on a
# Debian host (python3-apt, python3-yaml).
ROOTFS = Path(os.environ.get("BAO_ROOTFS", BUILD_DIR / "cache" / "rootfs-bookworm"))

KUBECTL_STANDIN = r"""#!/bin/bash
# Stand-in for kubectl (there is no kube-apiserver in this test): the kubeadm-config ConfigMap in a file.
echo "$*" >> /var/tmp/kubectl-standin.log
case "$*" in
  "version --client --output json") echo '{"clientVersion": {"major": "1", "minor": "34", "gitVersion": "v1.34.3"}}' ;;
  *"get configmap kubeadm-config --output json"*) cat /var/tmp/kubeadm-config.json ;;
  *"replace --filename -"*) cat > /var/tmp/kubeadm-config.json.new && mv /var/tmp/kubeadm-config.json.new /var/tmp/kubeadm-config.json
    echo "configmap/kubeadm-config replaced" ;;
  *) echo "unexpected kubectl call: $*" >&2; exit 1 ;;
esac
"""
CLUSTER_CONFIGURATION = """apiServer:
  extraArgs:
  - name: authorization-mode
    value: Node,RBAC
apiVersion: kubeadm.k8s.io/v1beta4
certificatesDir: /etc/kubernetes/pki
clusterName: kubernetes
kind: ClusterConfiguration
kubernetesVersion: v1.34.3
networking:
  dnsDomain: cluster.local
  serviceSubnet: 10.96.0.0/12
"""
KUBEADM_CONFIG = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "kubeadm-config", "namespace": "kube-system", "resourceVersion": "1"},
                  "data": {"ClusterConfiguration": CLUSTER_CONFIGURATION}}
# Stand-ins for the kube-apiserver container: its "id" changes when kubelet would recreate it (the
# manifest changed) or when the restart command ran.
CONTAINER_ID = "cat /etc/kubernetes/manifests/kube-apiserver.yaml /var/tmp/apiserver-restarts 2>/dev/null | sha256sum"
EXISTING_ENCRYPTION = "/etc/kubernetes/enc/enc.yaml"
# Merge mode on a published manifest that already encrypts (kubeadm 1.21, --encryption-provider-config
# =/etc/kubernetes/etcd/ec.yaml) with the Kubernetes documentation's aescbc configuration there
# (tests/testdata/kubeadm/PROVENANCE.md).
# The project's own corpus, not kubeadm_testdata() (../shared/testdata holds only one manifest).
CORPUS = REPO_ROOT / "tests" / "testdata" / "kubeadm"
MERGE_MANIFEST = CORPUS / "manifests" / "kubeadm-v1.21.0-existing-encryption.yaml"
MERGE_EXISTING = "/etc/kubernetes/etcd/ec.yaml"
MERGE_CONFIG = CORPUS / "encryption-configs" / "aescbc-docs-write-config.yaml"
PREVIOUS_FILE = f"{CONFIG_DIR}/previous-encryption-provider-config"


def provider_package(request, workdir: Path) -> Path:
    """The .deb the project ships: the packaging tests' `built_packages` build when that fixture
    exists (one build per session), else `make deb`; a minimal .deb of the debug build only while
    this tree has no `deb` target. BAO_ANSIBLE_DEB=/path picks a package by hand."""
    if os.environ.get("BAO_ANSIBLE_DEB"):
        return Path(os.environ["BAO_ANSIBLE_DEB"])
    try:
        return request.getfixturevalue("built_packages").deb1
    except pytest.FixtureLookupError:
        pass
    if subprocess.run(["make", "-n", "deb"], cwd=REPO_ROOT, capture_output=True).returncode == 0:
        out = workdir / "packages"
        p = subprocess.run(["make", "deb", f"PKG_DIR={out}"], cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=3600)
        assert p.returncode == 0, f"make deb failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        debs = sorted(out.glob("bao-kms-provider_*.deb"))
        assert len(debs) == 1, f"make deb left {debs} in {out}"
        return debs[0]
    return build_minimal_deb(workdir)


class ReadyzStandIn:
    """Stand-in for kube-apiserver's /readyz?verbose on the host loopback (the container shares the
    network). Like an API server that kubelet restarts after a manifest change, it answers 503 twice
    after each change of the container's manifest, then lists the KMS check if the manifest carries
    the flag."""

    RESTART_ANSWERS = 2

    def __init__(self, container: Container):
        self.container = container
        self.answers = {"restarting": 0, "with-kms": 0, "without-kms": 0}
        self._manifest, self._since_change = None, 0
        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                status, body = standin.answer()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/readyz?verbose"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self) -> tuple[int, bytes]:
        manifest = (self.container.root / MANIFEST.lstrip("/")).read_text()
        if manifest != self._manifest:
            self._manifest, self._since_change = manifest, 0
        self._since_change += 1
        if self._since_change <= self.RESTART_ANSWERS:
            self.answers["restarting"] += 1
            return 503, b"[-]etcd failed: reason withheld\nreadyz check failed\n"
        kms = FLAG in manifest
        self.answers["with-kms" if kms else "without-kms"] += 1
        return 200, ("[+]ping ok\n[+]etcd ok\n" + ("[+]kms-provider-0 ok\n" if kms else "")
                     + "readyz check passed\n").encode()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class Rollout:
    """The container, the servers and the inventory, plus every playbook run made so far."""

    def __init__(self, container, bao, signer, deb, readyz, api):
        self.container, self.bao, self.readyz, self.signer, self.api = container, bao, readyz, signer, api
        self.first_jwt = signer.mint(ttl=3600)
        self.runs: dict[str, object] = {}
        self.inventory = localhost_inventory()
        self.inventory["all"]["vars"] = {
            "openbao_transit_address": bao.addr,
            "openbao_transit_token": bao.root_token,
            "openbao_transit_ca_file": str(bao.ca),
            "openbao_transit_jwt_validation_pubkeys": [signer.public_pem],
        }
        self.inventory["all"]["children"] = {"kube_control_plane": {"hosts": {"cp1": {
            **self.connection(container),
            "bao_kms_provider_package_file": str(deb),
            "bao_kms_provider_openbao_address": bao.addr,
            "bao_kms_provider_openbao_instance_id": "openbao-test",
            "bao_kms_provider_openbao_ca_src": str(bao.ca),
            "bao_kms_provider_jwt": self.first_jwt,
            "bao_kms_provider_cluster_id": "test-cluster",
            "bao_kms_provider_transit_mount_id": "transit-test",
            "bao_kms_provider_key_lineage_id": "lineage-1",
            "bao_kms_provider_metrics_address": f"127.0.0.1:{free_port()}",
            "bao_kms_provider_health_address": f"127.0.0.1:{free_port()}",
            "kube_apiserver_kms_readyz_command":
                f"python3 -c 'import urllib.request; print(urllib.request.urlopen(\"{readyz.url}\").read().decode())'",
            "kube_apiserver_kms_wait_delay": 1,
            "kube_apiserver_kms_secret_check_command": "/usr/bin/bao-kms-provider probe --socket /run/openbao-kms/kms.sock",
            "kube_apiserver_kms_restart_command": "echo restarted >> /var/tmp/apiserver-restarts",
            "kube_apiserver_kms_container_id_command": CONTAINER_ID,
            "kube_apiserver_kms_kubectl": "/usr/local/bin/kubectl-standin",
            "kms_migrate_secrets_kubeconfig": "/etc/kubernetes/admin.conf",
            "kms_migrate_secrets_chunk_size": 2,
            "kms_migrate_secrets_verify": "none",
            "kms_migrate_secrets_quota_check": "off",
        }}}}

    @staticmethod
    def connection(container):
        return {"ansible_connection": "nsenter", "ansible_nsenter_pid": container.pid,
                "ansible_python_interpreter": "/usr/bin/python3", "ansible_become": False}

    def play(self, name, playbook, inventory=None, **kwargs):
        t0 = time.monotonic()
        run = run_playbook(playbook, inventory or self.inventory, **kwargs)
        self.runs[name] = run
        log_dir = os.environ.get("BAO_ANSIBLE_LOG_DIR")
        if log_dir:  # keep every run's output for a look afterwards
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            (Path(log_dir) / f"{name}.log").write_text(f"# {time.monotonic() - t0:.1f}s\n{run.output}")
        return run

    def read(self, path):
        return self.container.read_file(path)


@pytest.fixture(scope="module")
def rollout(request, tmp_path_factory):
    work = tmp_path_factory.mktemp("rollout")
    deb = provider_package(request, work)
    r = subprocess.run([str(REPO_ROOT / "scripts" / "rootfs.sh"), str(ROOTFS)], capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, f"scripts/rootfs.sh failed:\n{r.stderr[-3000:]}"
    bao = OpenBao(work).start()
    container = Container(ROOTFS, workdir=Path(os.environ.get("BAO_NSPAWN_WORKDIR", BUILD_DIR / "nspawn")))
    readyz = api = None
    try:
        container.start()
        # A cluster that already encrypts (aescbc): the rollout stops before installing anything.
        existing = ORIGINAL_MANIFEST.read_text().replace(
            "    - --enable-bootstrap-token-auth=true\n",
            f"    - --enable-bootstrap-token-auth=true\n    - --encryption-provider-config={EXISTING_ENCRYPTION}\n")
        container.write_file(MANIFEST, existing, mode=0o600)
        container.write_file("/usr/local/bin/kubectl-standin", KUBECTL_STANDIN, mode=0o755)
        container.write_file("/var/tmp/kubeadm-config.json", json.dumps(KUBEADM_CONFIG))
        readyz = ReadyzStandIn(container)
        api = FakeApiServer(None, None, host="127.0.0.1")
        for ns, name in (("default", "a"), ("default", "b"), ("kube-system", "c"), ("team", "d"), ("team", "e")):
            api.add(ns, name)
        api.conflict_once = {"kube-system/c"}
        container.write_file("/etc/kubernetes/admin.conf", json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "t",
            "clusters": [{"name": "t", "cluster": {"server": api.url}}],
            "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}], "users": [{"name": "t", "user": {}}]}),
            mode=0o600)
        ro = Rollout(container, bao, JwtSigner(), deb, readyz, api)
        ro.play("existing-refused", "playbooks/site.yml")
        ro.existing_refused_state = {
            "manifest": ro.read(MANIFEST),
            "installed": container.run(["dpkg-query", "-W", "-f=${Status}", "bao-kms-provider"], check=False).stdout,
            "touched": container.run("ls /etc/kubernetes/encryption /etc/openbao-kms 2>/dev/null", check=False).stdout,
        }
        container.copy_in(ORIGINAL_MANIFEST, MANIFEST, mode=0o600)
        # The container has no kubectl: the first play stops before anything is installed.
        ro.play("no-kubectl", "playbooks/site.yml", extra_vars={"kube_apiserver_kms_kubectl": "kubectl"})
        ro.no_kubectl_state = {
            "installed": container.run(["dpkg-query", "-W", "-f=${Status}", "bao-kms-provider"], check=False).stdout,
            "touched": container.run("ls /etc/kubernetes/encryption /etc/openbao-kms 2>/dev/null", check=False).stdout,
        }
        ro.play("site-1", "playbooks/site.yml", diff=True).assert_ok()
        ro.kubeadm_config_after_site = json.loads(ro.read("/var/tmp/kubeadm-config.json"))
        ro.play("site-2", "playbooks/site.yml").assert_ok()
        # kubeadm upgrade rewrites the manifest (here: without our flag, the worst case): --check --diff
        # shows the change, writes nothing; the next real run puts it back.
        container.copy_in(ORIGINAL_MANIFEST, MANIFEST, mode=0o600)
        ro.play("site-check", "playbooks/site.yml", check=True, diff=True).assert_ok()
        ro.manifest_after_check = ro.read(MANIFEST)
        ro.backups_after_check = container.run(["ls", "/etc/kubernetes/backup"]).stdout.split()
        refuse_with_provider_down(ro)
        container.systemctl("start", "bao-kms-provider.socket", "bao-kms-provider.service")
        # A new JWT for the host: the handler restarts the provider (the socket keeps listening).
        ro.invocation_before_new_jwt = invocation_id(container)
        ro.new_jwt = ro.signer.mint(ttl=7200)
        ro.inventory["all"]["children"]["kube_control_plane"]["hosts"]["cp1"]["bao_kms_provider_jwt"] = ro.new_jwt
        ro.play("site-3", "playbooks/site.yml").assert_ok()
        ro.invocation_after_new_jwt = invocation_id(container)
        ro.manifest_after_site = ro.read(MANIFEST)
        ro.play("migrate-1", "playbooks/migrate_secrets.yml").assert_ok()
        ro.marker_after_migrate = ro.read("/var/lib/openbao-kms/secrets-migrated")
        ro.play("migrate-2", "playbooks/migrate_secrets.yml").assert_ok()
        drop = {"kms_migrate_secrets_remove_identity_fallback": True}
        ro.play("drop-identity-1", "playbooks/migrate_secrets.yml", extra_vars=drop).assert_ok()
        ro.play("drop-identity-2", "playbooks/migrate_secrets.yml", extra_vars=drop).assert_ok()
        ro.enc_config_after_drop = ro.read(ENC_CONFIG)
        ro.restarts_after_drop = ro.read("/var/tmp/apiserver-restarts").splitlines()
        # Taking the provider out again starts with identity first on every API server.
        ro.play("rollback", "playbooks/site.yml", extra_vars={"kube_apiserver_kms_stage": "rollback"}).assert_ok()
        ro.marker_after_rollback = container.run(["ls", "/var/lib/openbao-kms"]).stdout.split()
        ro.enc_config_after_rollback = ro.read(ENC_CONFIG)
        ro.restarts_after_rollback = ro.read("/var/tmp/apiserver-restarts").splitlines()
        ro.play("absent", "playbooks/site.yml", tags="apiserver",
                extra_vars={"kube_apiserver_kms_stage": "rollback", "kube_apiserver_kms_state": "absent"}).assert_ok()
        ro.manifest_after_absent = ro.read(MANIFEST)
        ro.kubeadm_config_after_absent = json.loads(ro.read("/var/tmp/kubeadm-config.json"))
        ro.backups_after_absent = container.run(["ls", "/etc/kubernetes/backup"]).stdout.split()
        merge_mode(ro)
        yield ro
    except BaseException:
        if container.running:
            print(container.run(["journalctl", "-b", "--no-pager", "-n", "80"], check=False).stdout)
        raise
    finally:
        if readyz:
            readyz.close()
        if api:
            api.close()
        container.stop()
        bao.stop()


def invocation_id(container) -> str:
    return container.run(["systemctl", "show", "-P", "InvocationID", "bao-kms-provider.service"]).stdout.strip()


def refuse_with_provider_down(ro: Rollout) -> None:
    """cp1's provider is down and a second host cp2 waits its turn: the API server step stops on cp1
    without touching its manifest, and the rollout never reaches cp2."""
    c = ro.container
    c.systemctl("stop", "bao-kms-provider.socket", "bao-kms-provider.service")
    second = Container(ROOTFS, workdir=Path(os.environ.get("BAO_NSPAWN_WORKDIR", BUILD_DIR / "nspawn")))
    try:
        second.start()
        second.copy_in(ORIGINAL_MANIFEST, MANIFEST, mode=0o600)
        inventory = copy.deepcopy(ro.inventory)
        hosts = inventory["all"]["children"]["kube_control_plane"]["hosts"]
        hosts["cp2"] = {**hosts["cp1"], **Rollout.connection(second)}
        ro.play("refused", "playbooks/site.yml", inventory=inventory, tags="apiserver",
                extra_vars={"kube_apiserver_kms_probe_wait": "2s"})
        ro.refused_state = {
            "cp1 manifest": ro.read(MANIFEST),
            "cp1 backups": c.run(["ls", "/etc/kubernetes/backup"]).stdout.split(),
            "cp2 manifest": second.read_file(MANIFEST),
            "cp2 touched": second.run("ls /etc/kubernetes/encryption /etc/openbao-kms 2>/dev/null", check=False).stdout,
        }
        prepare_join(ro, second, hosts["cp2"])
    finally:
        second.stop()


def prepare_join(ro: Rollout, joining: Container, cp2: dict) -> None:
    """The refused cp2 joins later: prepare_join.yml stages the provider and cp1's EncryptionConfiguration
    on it before `kubeadm join --control-plane` (not run here: no kubeadm), twice."""
    inventory = copy.deepcopy(ro.inventory)
    inventory["all"]["hosts"] = {"cp2": {**cp2, "bao_kms_provider_metrics_address": f"127.0.0.1:{free_port()}",
                                         "bao_kms_provider_health_address": f"127.0.0.1:{free_port()}"}}
    join = {"join_hosts": "cp2"}
    ro.play("prepare-join-1", "playbooks/prepare_join.yml", inventory=inventory, extra_vars=join, diff=True).assert_ok()
    ro.play("prepare-join-2", "playbooks/prepare_join.yml", inventory=inventory, extra_vars=join).assert_ok()
    ro.joined = {
        "config": joining.read_file(ENC_CONFIG),
        "cp1 config": ro.read(ENC_CONFIG),
        "stat": joining.run(["stat", "-c", "%U:%G %a", ENC_CONFIG, CONFIG_DIR]).stdout.split("\n"),
        "installed": joining.run(["dpkg-query", "-W", "-f=${Status}", "bao-kms-provider"], check=False).stdout,
        "socket": joining.run(["systemctl", "is-active", "bao-kms-provider.socket"], check=False).stdout.strip(),
        "probe": joining.run(["bao-kms-provider", "probe", "--socket", "/run/openbao-kms/kms.sock"], check=False),
        "manifest": joining.read_file(MANIFEST),
    }


def merge_mode(ro: Rollout) -> None:
    """A cluster that already encrypts, rolled out with kube_apiserver_kms_existing_config: merge: the
    read pass keeps aescbc first, the write pass puts our kms first and keeps aescbc (with its keys)
    after it, the rollback puts aescbc first again and state=absent points the flag back at the old file
    (a second run changing nothing is shown by the module tests; left out here to keep this test short).
    Our file from the earlier rollout is removed first (a fresh cluster)."""
    c = ro.container
    c.copy_in(MERGE_MANIFEST, MANIFEST, mode=0o600)
    c.copy_in(MERGE_CONFIG, MERGE_EXISTING, mode=0o600)
    c.run(["rm", "-f", ENC_CONFIG, PREVIOUS_FILE])
    merge = {"kube_apiserver_kms_existing_config": "merge"}
    ro.play("merge-1", "playbooks/site.yml", tags="apiserver", extra_vars=merge).assert_ok()
    ro.merged = {"config": ro.read(ENC_CONFIG), "manifest": ro.read(MANIFEST), "previous": ro.read(PREVIOUS_FILE),
                 "existing": ro.read(MERGE_EXISTING)}
    rollback = {**merge, "kube_apiserver_kms_stage": "rollback"}
    ro.play("merge-rollback", "playbooks/site.yml", tags="apiserver", extra_vars=rollback).assert_ok()
    ro.merged["config after rollback"] = ro.read(ENC_CONFIG)
    ro.play("merge-absent", "playbooks/site.yml", tags="apiserver",
            extra_vars={**rollback, "kube_apiserver_kms_state": "absent"}).assert_ok()
    ro.merged["manifest after absent"] = ro.read(MANIFEST)


def test_existing_encryption_is_refused_before_anything_is_installed(rollout):
    run = rollout.runs["existing-refused"]
    assert run.rc != 0 and f"already uses the EncryptionConfiguration {EXISTING_ENCRYPTION}" in run.output, run.output
    assert "kube_apiserver_kms_existing_config: merge" in run.output and "Nothing was installed" in run.output
    state = rollout.existing_refused_state
    assert EXISTING_ENCRYPTION in state["manifest"] and "ok installed" not in state["installed"]
    assert state["touched"] == ""


def test_a_host_without_kubectl_is_refused_before_anything_is_installed_naming_what_to_install(rollout):
    run = rollout.runs["no-kubectl"]
    assert run.rc != 0 and "kubectl (kubectl) does not run on cp1" in run.output, run.output
    assert "the kubectl package of your cluster's minor version from pkgs.k8s.io" in run.output, run.output
    assert "Nothing was installed or changed" in run.output
    assert "PLAY [Install bao-kms-provider" not in run.output, run.output
    assert "ok installed" not in rollout.no_kubectl_state["installed"] and rollout.no_kubectl_state["touched"] == ""


def test_site_playbook_lets_the_api_server_read_through_the_provider_before_writing_through_it(rollout):
    out = rollout.runs["site-1"].output
    first_pass = out.index("PLAY [Install bao-kms-provider and let every API server read through it]")
    second_pass = out.index("PLAY [Make every API server write through bao-kms-provider]")
    # Pass 1 writes identity first, KMS second; pass 2 moves KMS first and restarts the API server.
    assert "EncryptionConfiguration for stage read: secrets = identity, kms:openbao-kms" in out[first_pass:second_pass], out
    assert "EncryptionConfiguration for stage write: secrets = kms:openbao-kms, identity" in out[second_pass:], out
    assert re.search(r"Restart kube-apiserver so it reads the EncryptionConfiguration again\] \*+\nchanged: \[cp1\]",
                     out[second_pass:]), out
    # Each change waited for a new (stand-in) container before the checks.
    assert out.count("TASK [kube_apiserver_kms : Wait for a new kube-apiserver container]") == 2, out


def test_kubeadm_config_keeps_the_flag_and_mounts_for_kubeadm_upgrade_and_join(rollout):
    """kubeadm-config via the stand-in kubectl (a file)."""
    cc = yaml.safe_load(rollout.kubeadm_config_after_site["data"]["ClusterConfiguration"])
    assert {"name": "encryption-provider-config", "value": ENC_CONFIG} in cc["apiServer"]["extraArgs"]
    assert {"name": "authorization-mode", "value": "Node,RBAC"} in cc["apiServer"]["extraArgs"]
    assert [v["name"] for v in cc["apiServer"]["extraVolumes"]] == ["openbao-kms-config", "openbao-kms-socket"]
    assert rollout.runs["site-2"].output.count("configmap/kubeadm-config replaced") == 0


def test_site_playbook_second_run_changes_nothing(rollout):
    first, second = rollout.runs["site-1"], rollout.runs["site-2"]
    assert first.changed("cp1") > 0 and first.changed("localhost") > 0
    assert second.changed("cp1") == 0, second.output
    assert second.changed("localhost") == 0, second.output


def test_provider_package_installed_units_active_and_probe_ok(rollout):
    c = rollout.container
    # Installed and held (bao_kms_provider_hold defaults to true): only the role upgrades it.
    assert c.run(["dpkg-query", "-W", "-f=${Status}", "bao-kms-provider"]).stdout == "hold ok installed"
    for unit in ("bao-kms-provider.socket", "bao-kms-provider.service"):
        assert c.run(["systemctl", "is-active", unit], check=False).stdout.strip() == "active", unit
        assert c.run(["systemctl", "is-enabled", unit], check=False).stdout.strip() == "enabled", unit
    probe = c.run(["bao-kms-provider", "probe", "--socket", "/run/openbao-kms/kms.sock"], check=False)
    assert probe.returncode == 0 and "result:   OK" in probe.stdout, probe.stdout + probe.stderr


def test_provider_files_have_strict_owners_and_modes(rollout):
    stat = {p: rollout.container.run(["stat", "-c", "%U:%G %a", p]).stdout.strip() for p in (
        "/etc/openbao-kms/config.toml", "/etc/openbao-kms/tls/openbao-ca.pem", "/var/lib/openbao-kms/identity.jwt",
        ENC_CONFIG, CONFIG_DIR)}
    assert stat == {
        "/etc/openbao-kms/config.toml": "root:openbao-kms 640",
        "/etc/openbao-kms/tls/openbao-ca.pem": "root:openbao-kms 640",
        "/var/lib/openbao-kms/identity.jwt": "openbao-kms:openbao-kms 600",
        ENC_CONFIG: "root:root 600",
        CONFIG_DIR: "root:root 700",
    }
    check = rollout.container.run(["bao-kms-provider", "check-config", "--config", "/etc/openbao-kms/config.toml"])
    assert "valid" in check.stdout


def manifest_problems(original: str, patched: str) -> list[str]:
    doc = yaml.safe_load(patched)
    c = doc["spec"]["containers"][0]
    problems = []
    if [a for a in c["command"] if a.startswith("--encryption-provider-config=")] != [FLAG]:
        problems.append("not exactly one flag")
    if [m for m in c["volumeMounts"] if m["name"].startswith("openbao-kms")] != [
            {"mountPath": CONFIG_DIR, "name": "openbao-kms-config", "readOnly": True},
            {"mountPath": "/run/openbao-kms", "name": "openbao-kms-socket"}]:
        problems.append("mounts")
    if [v for v in doc["spec"]["volumes"] if v["name"].startswith("openbao-kms")] != [
            {"hostPath": {"path": CONFIG_DIR, "type": "Directory"}, "name": "openbao-kms-config"},
            {"hostPath": {"path": "/run/openbao-kms", "type": "DirectoryOrCreate"}, "name": "openbao-kms-socket"}]:
        problems.append("volumes")
    diff = [d for d in difflib.ndiff(original.splitlines(), patched.splitlines()) if d[:2] in ("- ", "+ ")]
    added = [d[2:].strip() for d in diff if d.startswith("+ ")]
    if any(d.startswith("- ") for d in diff):
        problems.append("original lines removed or changed")
    if added != [f"- {FLAG}", f"- mountPath: {CONFIG_DIR}", "name: openbao-kms-config", "readOnly: true",
                 "- mountPath: /run/openbao-kms", "name: openbao-kms-socket", "- hostPath:", f"path: {CONFIG_DIR}",
                 "type: Directory", "name: openbao-kms-config", "- hostPath:", "path: /run/openbao-kms",
                 "type: DirectoryOrCreate", "name: openbao-kms-socket"]:
        problems.append(f"unexpected added lines {added}")
    return problems


def test_a_new_jwt_is_staged_and_restarts_the_provider_through_the_handler(rollout):
    out = rollout.runs["site-3"].output
    assert "RUNNING HANDLER [bao_kms_provider : Restart bao-kms-provider]" in out, out
    assert rollout.invocation_before_new_jwt and rollout.invocation_after_new_jwt != rollout.invocation_before_new_jwt
    assert rollout.read("/var/lib/openbao-kms/identity.jwt") == rollout.new_jwt + "\n"
    # no_log and no diff for the token, even in --diff runs; nor is OpenBao's admin token shown
    assert rollout.new_jwt not in out and rollout.first_jwt not in rollout.runs["site-1"].output
    assert not [name for name, run in rollout.runs.items() if rollout.bao.root_token in run.output]


def test_patched_manifest_has_one_flag_two_mounts_and_differs_only_there(rollout):
    assert manifest_problems(ORIGINAL_MANIFEST.read_text(), rollout.manifest_after_site) == []


def test_manifest_backups_are_outside_the_manifests_directory(rollout):
    c = rollout.container
    assert c.run(["ls", "-A", "/etc/kubernetes/manifests"]).stdout.split() == ["kube-apiserver.yaml"]
    backups = sorted(rollout.backups_after_absent)
    # site-1 and site-3 patched the manifest (site-2 and the --check run changed nothing), absent restored it.
    assert len(backups) == 3 and all(re.fullmatch(r"kube-apiserver\.yaml\.\d{8}T\d{6}(\.\d+)?", b) for b in backups)
    for b in backups[:2]:
        assert rollout.read(f"/etc/kubernetes/backup/{b}") == ORIGINAL_MANIFEST.read_text()


def test_check_diff_shows_the_manifest_change_without_making_it(rollout):
    check = rollout.runs["site-check"]
    assert f"+    - {FLAG}" in check.output and "+      name: openbao-kms-config" in check.output, check.output
    assert check.changed("cp1") >= 1
    assert rollout.manifest_after_check == ORIGINAL_MANIFEST.read_text()
    assert len(rollout.backups_after_check) == 1
    assert rollout.runs["site-3"].changed("cp1") >= 1


def test_rollout_refuses_to_patch_without_a_passing_probe_and_stops_before_the_next_host(rollout):
    run = rollout.runs["refused"]
    assert run.rc != 0 and "Refusing to point kube-apiserver at the provider" in run.output, run.output
    # cp2 was only read by the preflight play (nothing changed), then never reached.
    assert run.recap["cp1"]["failed"] == 1 and run.recap.get("cp2", {}).get("changed", 0) == 0, run.recap
    state = rollout.refused_state
    assert state["cp1 manifest"] == ORIGINAL_MANIFEST.read_text()
    assert state["cp1 backups"] == rollout.backups_after_check
    assert state["cp2 manifest"] == ORIGINAL_MANIFEST.read_text() and state["cp2 touched"] == ""


def test_apiserver_wait_against_standin_readyz_sees_the_kms_check(rollout):
    # site-1 waited through the stand-in's restart (503s) until /readyz listed the KMS check.
    answers = rollout.readyz.answers
    assert answers["restarting"] >= ReadyzStandIn.RESTART_ANSWERS and answers["with-kms"] >= 2, answers
    assert answers["without-kms"] == 0, answers


def test_encryption_config_is_the_binary_output_kms_first_identity_last(rollout):
    c = rollout.container
    # After drop-identity-1 the file has no identity provider; the data is the binary's.
    expected = c.run(["bao-kms-provider", "encryption-config", "--config", "/etc/openbao-kms/config.toml",
                      "--no-identity"]).stdout
    assert yaml.safe_load(rollout.enc_config_after_drop) == yaml.safe_load(expected)
    with_identity = c.run(["bao-kms-provider", "encryption-config", "--config", "/etc/openbao-kms/config.toml"]).stdout
    providers = yaml.safe_load(with_identity)["resources"][0]["providers"]
    assert list(providers[0]) == ["kms"] and providers[-1] == {"identity": {}}


def test_migration_against_standin_api_rewrites_once_with_conflict_retry_then_drops_identity(rollout):
    runs, api = rollout.runs, rollout.api
    assert runs["migrate-1"].changed("cp1") >= 2, runs["migrate-1"].output   # rewrite + marker
    assert runs["migrate-2"].changed("cp1") == 0, runs["migrate-2"].output
    assert set(api.replaces) == set(api.objects) and all(n == 1 for n in api.replaces.values()), api.replaces
    assert api.conflicts_sent == 1
    out = runs["migrate-1"].output
    assert "secrets default: 2/2" in out and "secrets team: 2/2" in out and "conflicts retried 1" in out, out
    marker = json.loads(rollout.marker_after_migrate)
    assert marker["stage"] == "migrated" and marker["resources"] == ["secrets"] and list(marker["config_sha256"]) == ["cp1"]
    # Dropping identity: new EncryptionConfiguration + one API server restart, then nothing (the
    # first restart was site.yml's second pass).
    assert runs["drop-identity-1"].changed("cp1") == 2, runs["drop-identity-1"].output
    assert runs["drop-identity-2"].changed("cp1") == 0, runs["drop-identity-2"].output
    assert rollout.restarts_after_drop == ["restarted", "restarted"]
    assert "identity" not in rollout.enc_config_after_drop


def test_rollback_stage_puts_identity_first_keeps_the_provider_readable_and_invalidates_the_marker(rollout):
    run = rollout.runs["rollback"]
    # The EncryptionConfiguration, one restart, the marker.
    assert run.changed("cp1") == 3, run.output
    assert "Wait for a new kube-apiserver container" in run.output and "Verify kube-apiserver" in run.output
    providers = yaml.safe_load(rollout.enc_config_after_rollback)["resources"][0]["providers"]
    assert providers[0] == {"identity": {}} and providers[1]["kms"]["name"] == "openbao-kms"
    assert "secrets-migrated" not in rollout.marker_after_rollback
    assert rollout.restarts_after_rollback == ["restarted"] * 3


def test_state_absent_restores_the_manifest_and_kubeadm_config(rollout):
    assert rollout.manifest_after_absent == ORIGINAL_MANIFEST.read_text()
    cc = yaml.safe_load(rollout.kubeadm_config_after_absent["data"]["ClusterConfiguration"])
    assert cc == yaml.safe_load(CLUSTER_CONFIGURATION)


def test_prepare_join_stages_the_provider_and_the_encryption_configuration_on_a_joining_host(rollout):
    j = rollout.joined
    first, second = rollout.runs["prepare-join-1"], rollout.runs["prepare-join-2"]
    assert first.changed("cp2") > 0 and second.changed("cp2") == 0, second.output
    # Byte for byte cp1's file, root-only; its content (it may hold merged keys) never shown, not even in --diff.
    assert j["config"] == j["cp1 config"] and '"kms"' in j["config"]
    assert j["stat"][:2] == ["root:root 600", "root:root 700"], j["stat"]
    assert "unix:///run/openbao-kms/kms.sock" not in first.output and '"providers"' not in first.output, first.output
    assert j["installed"] == "hold ok installed" and j["socket"] == "active"
    assert j["probe"].returncode == 0 and "result:   OK" in j["probe"].stdout, j["probe"].stdout + j["probe"].stderr
    # Only staged: kubeadm join writes the manifest, prepare_join leaves it alone.
    assert j["manifest"] == ORIGINAL_MANIFEST.read_text()


def test_merge_mode_keeps_the_existing_aescbc_provider_so_old_secrets_stay_readable(rollout):
    m = rollout.merged
    existing = yaml.safe_load(MERGE_CONFIG.read_text())["resources"][0]
    out = rollout.runs["merge-1"].output
    assert "EncryptionConfiguration for stage read: secrets,configmaps,pandas.awesome.bears.example = aescbc, identity, " \
           "kms:openbao-kms" in out, out
    assert "EncryptionConfiguration for stage write: secrets,configmaps,pandas.awesome.bears.example = kms:openbao-kms, " \
           "aescbc, identity" in out, out
    # Our file: kms first, then the old providers with their keys, so what aescbc stored still decrypts.
    entries = yaml.safe_load(m["config"])["resources"]
    assert [e["resources"] for e in entries] == [existing["resources"]]
    assert list(entries[0]["providers"][0]) == ["kms"] and entries[0]["providers"][1:] == existing["providers"]
    # The keys never left the host's two files: not in any output.
    key = existing["providers"][0]["aescbc"]["keys"][0]["secret"]
    assert not [name for name, run in rollout.runs.items() if key in run.output]
    # The flag repointed in place, the old path kept for state=absent, the old file untouched.
    assert f"--encryption-provider-config={ENC_CONFIG}" in m["manifest"] and MERGE_EXISTING not in m["manifest"]
    assert m["previous"].strip() == MERGE_EXISTING and m["existing"] == MERGE_CONFIG.read_text()
    # Rolling back: aescbc writes again, our kms still reads.
    back = yaml.safe_load(m["config after rollback"])["resources"][0]["providers"]
    assert back[:2] == existing["providers"] and back[2]["kms"]["name"] == "openbao-kms"
    # state=absent: the published manifest back byte for byte, pointing at the old file.
    assert m["manifest after absent"] == MERGE_MANIFEST.read_text()
