"""playbooks/site.yml, migrate_secrets.yml and prepare_join.yml on a real control plane.

Two clusters of the real-control-plane fixture (kube_cluster.py: real kubeadm, etcd, kube-apiserver
and kubectl; the static-pod runner stands in for kubelet), each with a real OpenBao (kube_rollout.py):
* `rollout`: a fresh kubeadm cluster and a second host that joins later with the real
  `kubeadm join` phases. The role's refusals, --check --diff after kubeadm rewrote the manifest,
  the JWT handler, the migration (refused with its directory replaced by a symlink), dropping
  identity (refused with a forged marker while Secrets are still plaintext in etcd), rollback and
  `state: absent`, all against the real kube-apiserver, which must keep serving every Secret throughout.
* `merged`: a cluster that already encrypts with `aescbc`, seeded as an operator would, through the
  ClusterConfiguration's extraArgs and extraVolumes, with automatic reload on. The default rollout
  refuses; `kube_apiserver_kms_existing_config: merge` keeps aescbc readable, kube-apiserver applies
  the write pass without a restart, dropping the merged providers is refused with a forged marker
  while aescbc values remain, and rollback, rewrite and `state: absent` return it to aescbc.
The tests of one fixture read what its runs left; the runs happen once, in the fixture.
"""

from __future__ import annotations

import base64
import difflib
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ansible_helpers import REPO_ROOT  # noqa: E402
from kube_cluster import KubeHost  # noqa: E402
from waiting import wait_until  # noqa: E402
from kube_rollout import (ENC_CONFIG, ENC_DIR, MANIFEST, PREFIX, STATUS_METRIC, KubeRollout, kube_hash,  # noqa: E402
                          kube_rollout, probe_key_id, sum_samples)

FLAG = f"--encryption-provider-config={ENC_CONFIG}"
PREVIOUS_FILE = f"{ENC_DIR}/previous-encryption-provider-config"
MIGRATION_DIR = "/var/lib/bao-kms-provider-migration"
MARKER = f"{MIGRATION_DIR}/secrets-migrated"
# A marker as the migration writes it, forged by hand while the Secrets are still in plaintext: in the
# migration's directory and where the service user's directory once held it.
FORGED = json.dumps({"stage": "migrated", "resources": ["secrets"], "config_sha256": {}})
SERVICE_DIR = "/var/lib/openbao-kms"
MISSING_KUBECTL = "/usr/local/bin/kubectl-not-installed"
# Secrets written before the rollout (stored by identity, i.e. in plaintext).
BEFORE = [("default", "a"), ("default", "b"), ("kube-system", "c"), ("team", "d"), ("team", "e")]
# The cluster that already encrypts: the Kubernetes documentation's aescbc configuration
# (tests/testdata/kubeadm/PROVENANCE.md) for secrets and configmaps. Its third resource, a custom
# resource this cluster does not serve, is left out: the migration refuses names that are not served.
AESCBC_SOURCE = REPO_ROOT / "tests" / "testdata" / "kubeadm" / "encryption-configs" / "aescbc-docs-write-config.yaml"
EXISTING_DIR = "/etc/kubernetes/enc"
EXISTING = f"{EXISTING_DIR}/enc.yaml"
AESCBC_PREFIX = b"k8s:enc:aescbc:v1:key1:"


def aescbc_config() -> str:
    doc = yaml.safe_load(AESCBC_SOURCE.read_text())
    doc["resources"][0]["resources"] = ["secrets", "configmaps"]
    return yaml.safe_dump(doc, sort_keys=False)


def secret(ns: str, name: str, value: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
            "data": {"value": base64.b64encode(value.encode()).decode()}}


class Cluster:
    """What the tests read from the API server and etcd of one cluster."""

    def __init__(self, ro: KubeRollout):
        self.ro = ro
        self.api, self.etcd = ro.cp.api(0), ro.cp.etcd()

    def create(self, ns: str, name: str, value: str, host: int = 0) -> None:
        if ns not in ("default", "kube-system"):
            self.ro.cp.api(host).request("POST", "/api/v1/namespaces",
                                         {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        status, out = self.ro.cp.api(host).request("POST", f"/api/v1/namespaces/{ns}/secrets", secret(ns, name, value))
        assert status == 201, out

    def value(self, ns: str, name: str, host: int = 0) -> str:
        status, out = self.ro.cp.api(host).request("GET", f"/api/v1/namespaces/{ns}/secrets/{name}")
        assert status == 200, out
        return base64.b64decode(out["data"]["value"]).decode()

    def stored(self, ns: str, name: str) -> bytes:
        return self.etcd.get(f"/registry/secrets/{ns}/{name}") or b""

    def kubeadm_config(self) -> dict:
        out = self.ro.cp.hosts[0].kubectl("-n", "kube-system", "get", "configmap", "kubeadm-config", "-o", "json")
        return json.loads(out.stdout)


def stat(h: KubeHost, *paths: str) -> list[str]:
    return h.c.run(["stat", "-c", "%U:%G %a", *paths]).stdout.split("\n")[:len(paths)]


def installed(h: KubeHost) -> str:
    return h.c.run(["dpkg-query", "-W", "-f=${Status}", "bao-kms-provider"], check=False).stdout


def touched(h: KubeHost) -> str:
    return h.c.run("ls /etc/kubernetes/encryption /etc/openbao-kms 2>/dev/null", check=False).stdout


def invocation_id(h: KubeHost) -> str:
    return h.c.run(["systemctl", "show", "-P", "InvocationID", "bao-kms-provider.service"]).stdout.strip()


def apiserver_on(api, key_id: str) -> bool:
    """Whether kube-apiserver's latest Status had `key_id` (its readyz check makes it ask now)."""
    api.readyz("kms-providers")
    return sum_samples(api.metrics(), STATUS_METRIC, {"key_id_hash": kube_hash(key_id)}) > 0


def backups(h: KubeHost) -> list[str]:
    return sorted(h.c.run(["ls", "/etc/kubernetes/backup"], check=False).stdout.split())


@pytest.fixture(scope="module")
def rollout(request, tmp_path_factory, nspawn_rootfs):
    work = tmp_path_factory.mktemp("rollout")
    with kube_rollout(request, work, nspawn_rootfs, hosts=1, joining=1) as ro:
        k = Cluster(ro)
        cp1, cp2 = ro.cp.hosts
        k.original_manifest = cp1.c.read_file(MANIFEST)
        k.original_cluster_configuration = k.kubeadm_config()["data"]["ClusterConfiguration"]
        for ns, name in BEFORE:
            k.create(ns, name, f"{ns}/{name} before the rollout")
        # kubectl missing on the host: the first play stops before anything is installed.
        ro.play("no-kubectl", extra_vars={"kube_apiserver_kms_kubectl": MISSING_KUBECTL})
        k.no_kubectl_state = {"installed": installed(cp1), "touched": touched(cp1)}
        k.ids = {"start": cp1.pod_file("kube-apiserver", "id")}
        ro.play("site-1", diff=True).assert_ok()
        k.kubeadm_config_after_site = k.kubeadm_config()
        ro.play("site-2").assert_ok()
        k.kubeadm_config_after_rerun = k.kubeadm_config()
        k.create("team", "after-site", "written through the provider")
        # kubeadm upgrade rewrites the manifest (here: without our flag, the worst case): --check --diff
        # shows the change, writes nothing; the next real run puts it back.
        cp1.c.write_file(MANIFEST, k.original_manifest, mode=0o600)
        ro.play("site-check", check=True, diff=True).assert_ok()
        k.manifest_after_check, k.backups_after_check = cp1.c.read_file(MANIFEST), backups(cp1)
        prepare_join(ro, k, cp2)
        refuse_with_provider_down(ro, k, cp1, cp2)
        cp1.c.systemctl("start", "bao-kms-provider.socket", "bao-kms-provider.service")
        # A new JWT for every host: the handler restarts the provider (the socket keeps listening).
        k.invocations_before_new_jwt = {h.name: invocation_id(h) for h in (cp1, cp2)}
        k.new_jwt = ro.signer.mint(ttl=7200)
        ro.hosts()[cp2.name] = ro.host_vars(cp2)
        for h in ro.hosts().values():
            h["bao_kms_provider_jwt"] = k.new_jwt
        ro.play("site-3").assert_ok()
        k.invocations_after_new_jwt = {h.name: invocation_id(h) for h in (cp1, cp2)}
        k.manifest_after_site = cp1.c.read_file(MANIFEST)
        forged_marker(ro, k, cp1)
        ro.play("migrate-1", "playbooks/migrate_secrets.yml").assert_ok()
        k.migration_dir_stat = stat(cp1, MIGRATION_DIR)
        k.marker_after_migrate = cp1.c.read_file(MARKER)
        k.stored_after_migrate = {f"{ns}/{name}": k.stored(ns, name) for ns, name in BEFORE}
        ro.play("migrate-2", "playbooks/migrate_secrets.yml").assert_ok()
        # A Transit rotation since the marker: once both kube-apiservers write with the new key_id,
        # the next run rewrites without kms_migrate_secrets_force and records the new key_id.
        k.key_id_after_migrate = probe_key_id(cp1)
        status, out = ro.bao.api("POST", "transit/keys/k8s-etcd/rotate")
        assert status in (200, 204), out
        k.key_id_after_rotation = wait_until(
            lambda: (new := probe_key_id(cp1)) != k.key_id_after_migrate and probe_key_id(cp2) == new and new,
            "both providers to promote the new Transit version", 60, context=ro.provider_logs)
        wait_until(lambda: all(apiserver_on(ro.cp.api(i), k.key_id_after_rotation) for i in (0, 1)),
                   "both kube-apiservers to use the new key_id", 120, interval=1, context=ro.provider_logs)
        ro.play("migrate-3", "playbooks/migrate_secrets.yml").assert_ok()
        k.marker_after_rotation = cp1.c.read_file(MARKER)
        # A marker without a key_id (an earlier version's) is not compared: nothing is rewritten.
        old_format = {f: v for f, v in json.loads(k.marker_after_rotation).items() if f != "key_id"}
        cp1.c.write_file(MARKER, json.dumps(old_format), mode=0o644)
        ro.play("migrate-4", "playbooks/migrate_secrets.yml").assert_ok()
        cp1.c.write_file(MARKER, k.marker_after_rotation, mode=0o644)
        drop = {"kms_migrate_secrets_remove_identity_fallback": True}
        k.ids["before drop"] = {h.name: h.pod_file("kube-apiserver", "id") for h in (cp1, cp2)}
        ro.play("drop-identity-1", "playbooks/migrate_secrets.yml", extra_vars=drop).assert_ok()
        k.ids["after drop"] = {h.name: h.pod_file("kube-apiserver", "id") for h in (cp1, cp2)}
        ro.play("drop-identity-2", "playbooks/migrate_secrets.yml", extra_vars=drop).assert_ok()
        k.ids["after drop again"] = {h.name: h.pod_file("kube-apiserver", "id") for h in (cp1, cp2)}
        k.enc_config_after_drop = cp1.c.read_file(ENC_CONFIG)
        k.values_after_drop = {f"{ns}/{name}": k.value(ns, name, host=1) for ns, name in BEFORE}
        # Taking the provider out again: identity first on every API server, every object rewritten
        # away from the provider, then the flag and mounts removed.
        ro.play("rollback", extra_vars={"kube_apiserver_kms_stage": "rollback"}).assert_ok()
        k.marker_after_rollback = cp1.c.run(["ls", MIGRATION_DIR]).stdout.split()
        k.enc_config_after_rollback = cp1.c.read_file(ENC_CONFIG)
        k.create("team", "after-rollback", "written after the rollback")
        k.stored_after_rollback = k.stored("team", "after-rollback")
        ro.play("migrate-back", "playbooks/migrate_secrets.yml",
                extra_vars={"kms_migrate_secrets_rollback": True}).assert_ok()
        k.stored_after_migrate_back = {key: v for key, v in k.etcd.range("/registry/secrets/").items()}
        ro.play("absent", tags="apiserver",
                extra_vars={"kube_apiserver_kms_stage": "rollback", "kube_apiserver_kms_state": "absent"}).assert_ok()
        k.manifest_after_absent = cp1.c.read_file(MANIFEST)
        k.kubeadm_config_after_absent = k.kubeadm_config()
        k.backups_after_absent = backups(cp1)
        cp1.wait_pod("kube-apiserver", timeout=180)
        k.values_after_absent = {f"{ns}/{name}": k.value(ns, name) for ns, name in [*BEFORE, ("team", "after-site")]}
        yield k


def forged_marker(ro: KubeRollout, k: Cluster, cp1: KubeHost) -> None:
    """Before the migration: a hand-written marker (in the migration's directory and the service
    user's) does not unlock dropping identity, the check of etcd does not pass; the migration's
    directory replaced by a symlink to the service user's directory is refused before the rewrite."""
    drop = {"kms_migrate_secrets_remove_identity_fallback": True}
    cp1.c.run(["install", "-d", "-o", "root", "-g", "root", "-m", "0700", MIGRATION_DIR])
    cp1.c.write_file(MARKER, FORGED, mode=0o644)
    cp1.c.write_file(f"{SERVICE_DIR}/secrets-migrated", FORGED, mode=0o644)
    k.enc_config_before_forged = cp1.c.read_file(ENC_CONFIG)
    k.id_before_forged = cp1.pod_file("kube-apiserver", "id")
    ro.play("drop-forged", "playbooks/migrate_secrets.yml", extra_vars=drop)
    k.enc_config_after_forged = cp1.c.read_file(ENC_CONFIG)
    k.id_after_forged = cp1.pod_file("kube-apiserver", "id")
    cp1.c.run(["rm", "-r", MIGRATION_DIR, f"{SERVICE_DIR}/secrets-migrated"])
    cp1.c.run(["ln", "-s", SERVICE_DIR, MIGRATION_DIR])
    ro.play("migrate-symlink", "playbooks/migrate_secrets.yml")
    k.service_dir_after_symlink = sorted(cp1.c.run(["ls", SERVICE_DIR]).stdout.split())
    cp1.c.run(["rm", MIGRATION_DIR])


def prepare_join(ro: KubeRollout, k: Cluster, cp2: KubeHost) -> None:
    """cp2 joins the control plane: prepare_join.yml stages the provider and cp1's EncryptionConfiguration
    (twice: the second run changes nothing), then the real `kubeadm join` phases write its manifest
    from kubeadm-config, and its kube-apiserver reads and writes through the provider."""
    inventory = json.loads(json.dumps(ro.inventory))
    inventory["all"]["hosts"] = {cp2.name: ro.host_vars(cp2)}
    join = {"join_hosts": cp2.name}
    ro.play("prepare-join-1", "playbooks/prepare_join.yml", inventory=inventory, extra_vars=join, diff=True).assert_ok()
    ro.play("prepare-join-2", "playbooks/prepare_join.yml", inventory=inventory, extra_vars=join).assert_ok()
    k.joined = {
        "config": cp2.c.read_file(ENC_CONFIG),
        "cp1 config": ro.cp.hosts[0].c.read_file(ENC_CONFIG),
        "stat": stat(cp2, ENC_CONFIG, ENC_DIR),
        "installed": installed(cp2),
        "socket": cp2.c.run(["systemctl", "is-active", "bao-kms-provider.socket"], check=False).stdout.strip(),
        "probe": cp2.c.run(["bao-kms-provider", "probe", "--socket", "/run/openbao-kms/kms.sock"], check=False),
        "manifest before join": cp2.c.exists(MANIFEST),
    }
    ro.cp.join(1)
    k.joined["manifest"] = cp2.c.read_file(MANIFEST)
    k.joined["readyz"] = wait_until(lambda: (r := ro.cp.api(1).readyz())[0] == 200 and r, "cp2's /readyz", 120,
                                    context=ro.provider_logs)
    k.joined["value"] = k.value("team", "after-site", host=1)
    k.create("team", "through-cp2", "written through the joined host", host=1)
    k.joined["stored"] = k.stored("team", "through-cp2")


def refuse_with_provider_down(ro: KubeRollout, k: Cluster, cp1: KubeHost, cp2: KubeHost) -> None:
    """cp1's provider is down and cp2 waits its turn: the API server step stops on cp1 without
    touching its manifest, and the rollout never reaches cp2."""
    cp1.c.systemctl("stop", "bao-kms-provider.socket", "bao-kms-provider.service")
    inventory = json.loads(json.dumps(ro.inventory))
    ro.hosts(inventory)[cp2.name] = ro.host_vars(cp2)
    cp2_manifest = cp2.c.read_file(MANIFEST)
    ro.play("refused", inventory=inventory, tags="apiserver", extra_vars={"kube_apiserver_kms_probe_wait": "2s"})
    k.refused_state = {
        "cp1 manifest": cp1.c.read_file(MANIFEST),
        "cp1 backups": backups(cp1),
        "cp2 manifest unchanged": cp2.c.read_file(MANIFEST) == cp2_manifest,
        "cp2 backups": backups(cp2),
    }


def test_a_host_without_kubectl_is_refused_before_anything_is_installed_naming_what_to_install(rollout):
    run = rollout.ro.runs["no-kubectl"]
    assert run.rc != 0 and f"kubectl ({MISSING_KUBECTL}) does not run on cp1" in run.output, run.output
    assert "the kubectl package of your cluster's minor version from pkgs.k8s.io" in run.output, run.output
    assert "Nothing was installed or changed" in run.output
    assert "PLAY [Install bao-kms-provider" not in run.output, run.output
    assert "ok installed" not in rollout.no_kubectl_state["installed"] and rollout.no_kubectl_state["touched"] == ""


def test_site_playbook_lets_the_api_server_read_through_the_provider_before_writing_through_it(rollout):
    out = rollout.ro.runs["site-1"].output
    first_pass = out.index("PLAY [Install bao-kms-provider and let every API server read through it]")
    second_pass = out.index("PLAY [Make every API server write through bao-kms-provider]")
    assert "EncryptionConfiguration for stage read: secrets = identity, kms:openbao-kms" in out[first_pass:second_pass], out
    assert "EncryptionConfiguration for stage write: secrets = kms:openbao-kms, identity" in out[second_pass:], out
    assert re.search(r"Restart kube-apiserver so it reads the EncryptionConfiguration again\] \*+\nchanged: \[cp1\]",
                     out[second_pass:]), out
    # Each change waited for a new kube-apiserver (the runner's pod id) before the checks.
    assert out.count("TASK [kube_apiserver_kms : Wait for a new kube-apiserver container]") == 2, out
    # The real API server kept serving what was stored before, and writes through the provider now.
    assert rollout.value("team", "after-site") == "written through the provider"
    assert rollout.joined["value"] == "written through the provider"


def test_kubeadm_config_keeps_the_flag_and_mounts_for_kubeadm_upgrade_and_join(rollout):
    cc = yaml.safe_load(rollout.kubeadm_config_after_site["data"]["ClusterConfiguration"])
    args = cc["apiServer"]["extraArgs"]
    args = {a["name"]: a["value"] for a in args} if isinstance(args, list) else args
    assert args["encryption-provider-config"] == ENC_CONFIG, cc
    assert [v["name"] for v in cc["apiServer"]["extraVolumes"]] == ["openbao-kms-config", "openbao-kms-socket"]
    # The second run did not replace it (the ConfigMap's resourceVersion did not move).
    assert rollout.kubeadm_config_after_rerun["metadata"]["resourceVersion"] == \
        rollout.kubeadm_config_after_site["metadata"]["resourceVersion"]


def test_site_playbook_second_run_changes_nothing(rollout):
    first, second = rollout.ro.runs["site-1"], rollout.ro.runs["site-2"]
    assert first.changed("cp1") > 0 and first.changed("localhost") > 0
    assert second.changed("cp1") == 0, second.output
    assert second.changed("localhost") == 0, second.output


def test_provider_package_installed_units_active_and_probe_ok(rollout):
    c = rollout.ro.cp.hosts[0].c
    # Installed and held (bao_kms_provider_hold defaults to true): only the role upgrades it.
    assert c.run(["dpkg-query", "-W", "-f=${Status}", "bao-kms-provider"]).stdout == "hold ok installed"
    for unit in ("bao-kms-provider.socket", "bao-kms-provider.service"):
        assert c.run(["systemctl", "is-active", unit], check=False).stdout.strip() == "active", unit
        assert c.run(["systemctl", "is-enabled", unit], check=False).stdout.strip() == "enabled", unit
    probe = c.run(["bao-kms-provider", "probe", "--socket", "/run/openbao-kms/kms.sock"], check=False)
    assert probe.returncode == 0 and "result:   OK" in probe.stdout, probe.stdout + probe.stderr


def test_provider_files_have_strict_owners_and_modes(rollout):
    cp1 = rollout.ro.cp.hosts[0]
    paths = ("/etc/openbao-kms/config.toml", "/etc/openbao-kms/tls/openbao-ca.pem", "/var/lib/openbao-kms/identity.jwt")
    assert stat(cp1, *paths) == ["root:openbao-kms 640", "root:openbao-kms 640", "openbao-kms:openbao-kms 600"]
    assert rollout.joined["stat"] == ["root:root 600", "root:root 700"]
    check = cp1.c.run(["bao-kms-provider", "check-config", "--config", "/etc/openbao-kms/config.toml"])
    assert "valid" in check.stdout


def manifest_problems(original: str, patched: str) -> list[str]:
    doc = yaml.safe_load(patched)
    c = doc["spec"]["containers"][0]
    problems = []
    if [a for a in c["command"] if a.startswith("--encryption-provider-config=")] != [FLAG]:
        problems.append("not exactly one flag")
    if [m for m in c["volumeMounts"] if m["name"].startswith("openbao-kms")] != [
            {"mountPath": ENC_DIR, "name": "openbao-kms-config", "readOnly": True},
            {"mountPath": "/run/openbao-kms", "name": "openbao-kms-socket"}]:
        problems.append("mounts")
    if [v for v in doc["spec"]["volumes"] if v["name"].startswith("openbao-kms")] != [
            {"hostPath": {"path": ENC_DIR, "type": "Directory"}, "name": "openbao-kms-config"},
            {"hostPath": {"path": "/run/openbao-kms", "type": "DirectoryOrCreate"}, "name": "openbao-kms-socket"}]:
        problems.append("volumes")
    diff = [d for d in difflib.ndiff(original.splitlines(), patched.splitlines()) if d[:2] in ("- ", "+ ")]
    added = [d[2:].strip() for d in diff if d.startswith("+ ")]
    if any(d.startswith("- ") for d in diff):
        problems.append("original lines removed or changed")
    if added != [f"- {FLAG}", f"- mountPath: {ENC_DIR}", "name: openbao-kms-config", "readOnly: true",
                 "- mountPath: /run/openbao-kms", "name: openbao-kms-socket", "- hostPath:", f"path: {ENC_DIR}",
                 "type: Directory", "name: openbao-kms-config", "- hostPath:", "path: /run/openbao-kms",
                 "type: DirectoryOrCreate", "name: openbao-kms-socket"]:
        problems.append(f"unexpected added lines {added}")
    return problems


def test_patched_manifest_has_one_flag_two_mounts_and_differs_only_there(rollout):
    assert manifest_problems(rollout.original_manifest, rollout.manifest_after_site) == []


def test_a_new_jwt_is_staged_and_restarts_the_provider_through_the_handler(rollout):
    out = rollout.ro.runs["site-3"].output
    assert "RUNNING HANDLER [bao_kms_provider : Restart bao-kms-provider]" in out, out
    for host, before in rollout.invocations_before_new_jwt.items():
        assert before and rollout.invocations_after_new_jwt[host] != before, host
    assert rollout.ro.cp.hosts[1].c.read_file("/var/lib/openbao-kms/identity.jwt") == rollout.new_jwt + "\n"
    # no_log and no diff for the token, even in --diff runs; nor is OpenBao's admin token shown
    assert rollout.new_jwt not in out and rollout.ro.first_jwt not in rollout.ro.runs["site-1"].output
    assert not [name for name, run in rollout.ro.runs.items() if rollout.ro.bao.root_token in run.output]


def test_manifest_backups_are_outside_the_manifests_directory(rollout):
    cp1 = rollout.ro.cp.hosts[0]
    # Only the pods' manifests (etcd is external with two hosts): a backup there would be run as a pod.
    assert cp1.c.run(["ls", "-A", "/etc/kubernetes/manifests"]).stdout.split() == [
        "kube-apiserver.yaml", "kube-controller-manager.yaml"]
    found = rollout.backups_after_absent
    # site-1 and site-3 patched the manifest (site-2 and the --check run changed nothing), absent restored it.
    assert len(found) == 3 and all(re.fullmatch(r"kube-apiserver\.yaml\.\d{8}T\d{6}(\.\d+)?", b) for b in found)
    for b in found[:2]:
        assert cp1.c.read_file(f"/etc/kubernetes/backup/{b}") == rollout.original_manifest


def test_check_diff_shows_the_manifest_change_without_making_it(rollout):
    check = rollout.ro.runs["site-check"]
    # --diff lists the module's changes, never the manifest's lines (they may hold other secrets).
    assert f"add {FLAG}" in check.output and "openbao-kms-config" in check.output, check.output
    assert f"+    - {FLAG}" not in check.output, check.output
    assert check.changed("cp1") >= 1
    assert rollout.manifest_after_check == rollout.original_manifest
    assert len(rollout.backups_after_check) == 1
    assert rollout.ro.runs["site-3"].changed("cp1") >= 1


def test_rollout_refuses_to_patch_without_a_passing_probe_and_stops_before_the_next_host(rollout):
    run = rollout.ro.runs["refused"]
    assert run.rc != 0 and "Refusing to point kube-apiserver at the provider" in run.output, run.output
    # cp2 was only read by the preflight play (nothing changed), then never reached.
    assert run.recap["cp1"]["failed"] == 1 and run.recap.get("cp2", {}).get("changed", 0) == 0, run.recap
    state = rollout.refused_state
    assert state["cp1 manifest"] == rollout.original_manifest
    assert state["cp1 backups"] == rollout.backups_after_check
    assert state["cp2 manifest unchanged"] and state["cp2 backups"] == []


def test_prepare_join_stages_the_provider_so_the_joined_host_serves_through_it(rollout):
    j = rollout.joined
    first, second = rollout.ro.runs["prepare-join-1"], rollout.ro.runs["prepare-join-2"]
    assert first.changed("cp2") > 0 and second.changed("cp2") == 0, second.output
    # Byte for byte cp1's file, root-only; its content (it may hold merged keys) never shown, not even in --diff.
    assert j["config"] == j["cp1 config"] and '"kms"' in j["config"]
    assert "unix:///run/openbao-kms/kms.sock" not in first.output and '"providers"' not in first.output, first.output
    assert j["installed"] == "hold ok installed" and j["socket"] == "active"
    assert j["probe"].returncode == 0 and "result:   OK" in j["probe"].stdout, j["probe"].stdout + j["probe"].stderr
    # Only staged: the real kubeadm join wrote the manifest, from kubeadm-config, with the flag and mounts.
    assert not j["manifest before join"]
    container = yaml.safe_load(j["manifest"])["spec"]["containers"][0]
    assert FLAG in container["command"]
    assert {m["name"] for m in container["volumeMounts"]} >= {"openbao-kms-config", "openbao-kms-socket"}
    assert "[+]kms-providers ok" in j["readyz"][1], j["readyz"]
    assert j["stored"].startswith(PREFIX), j["stored"][:40]


def test_a_forged_marker_does_not_unlock_dropping_identity_while_etcd_holds_plaintext(rollout):
    run = rollout.ro.runs["drop-forged"]
    assert run.rc != 0 and "Refusing to drop the identity provider on cp1" in run.output, run.output
    assert "objects are not stored by the provider" in run.output, run.output
    for ns, name in BEFORE:
        assert f"not stored by the provider: /registry/secrets/{ns}/{name}" in run.output, run.output
    assert rollout.enc_config_after_forged == rollout.enc_config_before_forged
    assert "identity" in rollout.enc_config_after_forged
    assert rollout.id_after_forged == rollout.id_before_forged


def test_a_migration_directory_that_is_a_symlink_is_refused_before_anything_is_written(rollout):
    run = rollout.ro.runs["migrate-symlink"]
    assert run.rc != 0 and f"Refusing {MIGRATION_DIR} on cp1: it is a symlink" in run.output, run.output
    assert "resources to rewrite" not in run.output, run.output   # the script never ran
    assert "secrets-migrated" not in rollout.service_dir_after_symlink
    assert not [f for f in rollout.service_dir_after_symlink if f.startswith("migration-")]
    assert rollout.migration_dir_stat == ["root:root 700"]


def test_the_migration_rewrites_through_the_provider_once_then_drops_identity_on_every_host(rollout):
    runs = rollout.ro.runs
    assert runs["migrate-1"].changed("cp1") >= 2, runs["migrate-1"].output   # rewrite + marker
    assert runs["migrate-2"].changed("cp1") == 0, runs["migrate-2"].output
    out = runs["migrate-1"].output
    assert "secrets default: 2/2" in out and "secrets team: 4/4" in out, out
    plain = [key for key, v in rollout.stored_after_migrate.items() if not v.startswith(PREFIX)]
    assert plain == [], plain
    marker = json.loads(rollout.marker_after_migrate)
    assert marker["stage"] == "migrated" and marker["resources"] == ["secrets"]
    assert sorted(marker["config_sha256"]) == ["cp1", "cp2"]
    assert marker["key_id"] == rollout.key_id_after_migrate, marker
    out = runs["migrate-1"].output
    assert re.search(r"scan-etcd: \d+ Secrets, all on the active key_id " + re.escape(marker["key_id"]), out), out
    # After a rotation the marker's key_id is no longer served: the rewrite runs again, onto the new one.
    assert runs["migrate-3"].changed("cp1") >= 2, runs["migrate-3"].output
    assert "resources to rewrite: secrets" in runs["migrate-3"].output, runs["migrate-3"].output
    assert json.loads(rollout.marker_after_rotation)["key_id"] == rollout.key_id_after_rotation != marker["key_id"]
    assert runs["migrate-4"].changed("cp1") == 0, runs["migrate-4"].output
    # Dropping identity: a new EncryptionConfiguration and one API server restart per host, then nothing.
    for host in ("cp1", "cp2"):
        assert runs["drop-identity-1"].changed(host) == 2, runs["drop-identity-1"].output
        assert runs["drop-identity-2"].changed(host) == 0, runs["drop-identity-2"].output
        assert rollout.ids["after drop"][host] != rollout.ids["before drop"][host]
        assert rollout.ids["after drop again"][host] == rollout.ids["after drop"][host]
    assert "identity" not in rollout.enc_config_after_drop
    assert rollout.values_after_drop == {f"{ns}/{name}": f"{ns}/{name} before the rollout" for ns, name in BEFORE}


def test_encryption_config_is_the_binary_output_kms_first_identity_last(rollout):
    c = rollout.ro.cp.hosts[0].c
    # The file without identity (after dropping it) is the binary's output.
    expected = c.run(["bao-kms-provider", "encryption-config", "--config", "/etc/openbao-kms/config.toml",
                      "--no-identity"]).stdout
    assert yaml.safe_load(rollout.enc_config_after_drop) == yaml.safe_load(expected)
    with_identity = c.run(["bao-kms-provider", "encryption-config", "--config", "/etc/openbao-kms/config.toml"]).stdout
    providers = yaml.safe_load(with_identity)["resources"][0]["providers"]
    assert list(providers[0]) == ["kms"] and providers[-1] == {"identity": {}}


def test_rollback_stage_writes_plaintext_again_keeps_the_provider_readable_and_invalidates_the_marker(rollout):
    run = rollout.ro.runs["rollback"]
    assert "Wait for a new kube-apiserver container" in run.output and "Verify kube-apiserver" in run.output
    providers = yaml.safe_load(rollout.enc_config_after_rollback)["resources"][0]["providers"]
    assert providers[0] == {"identity": {}} and providers[1]["kms"]["name"] == "openbao-kms"
    assert "secrets-migrated" not in rollout.marker_after_rollback
    # The real API server now stores new Secrets in plaintext (identity) ...
    assert rollout.stored_after_rollback.startswith(b"k8s:enc:") is False and b"written after" in \
        rollout.stored_after_rollback
    # ... and the rewrite moved everything the provider stored back to it.
    through_provider = [key for key, v in rollout.stored_after_migrate_back.items() if v.startswith(PREFIX)]
    assert through_provider == [], through_provider


def test_state_absent_restores_the_manifest_and_kubeadm_config_and_every_secret_still_reads(rollout):
    assert rollout.manifest_after_absent == rollout.original_manifest
    cc = yaml.safe_load(rollout.kubeadm_config_after_absent["data"]["ClusterConfiguration"])
    assert cc == yaml.safe_load(rollout.original_cluster_configuration)
    expected = {f"{ns}/{name}": f"{ns}/{name} before the rollout" for ns, name in BEFORE}
    assert rollout.values_after_absent == {**expected, "team/after-site": "written through the provider"}


# --- a cluster that already encrypts with aescbc ----------------------------------------------------------


@pytest.fixture(scope="module")
def merged(request, tmp_path_factory, nspawn_rootfs):
    work = tmp_path_factory.mktemp("merged")
    api_server = {
        "extraArgs": [{"name": "encryption-provider-config", "value": EXISTING},
                      {"name": "encryption-provider-config-automatic-reload", "value": "true"}],
        "extraVolumes": [{"name": "encryption", "hostPath": EXISTING_DIR, "mountPath": EXISTING_DIR,
                          "readOnly": True, "pathType": "DirectoryOrCreate"}]}
    with kube_rollout(request, work, nspawn_rootfs, hosts=1, api_server=api_server,
                      files={EXISTING: aescbc_config()}) as ro:
        k = Cluster(ro)
        cp1 = ro.cp.hosts[0]
        k.original_manifest = cp1.c.read_file(MANIFEST)
        k.create("team", "old", "stored by aescbc")
        k.stored_old = k.stored("team", "old")
        ro.play("existing-refused")
        k.existing_refused_state = {"manifest": cp1.c.read_file(MANIFEST), "installed": installed(cp1),
                                    "touched": touched(cp1)}
        merge = {"kube_apiserver_kms_existing_config": "merge"}
        ro.play("merge-1", extra_vars=merge).assert_ok()
        k.merged = {"config": cp1.c.read_file(ENC_CONFIG), "manifest": cp1.c.read_file(MANIFEST),
                    "previous": cp1.c.read_file(PREVIOUS_FILE), "existing": cp1.c.read_file(EXISTING)}
        k.reloads_after_merge = reloads(k)
        k.create("team", "new", "stored through the provider")
        k.stored_new = k.stored("team", "new")
        forged_drop_previous(ro, k, cp1, merge)
        rollback = {**merge, "kube_apiserver_kms_stage": "rollback"}
        k.id_before_rollback = cp1.pod_file("kube-apiserver", "id")
        ro.play("merge-rollback", extra_vars=rollback).assert_ok()
        k.id_after_rollback = cp1.pod_file("kube-apiserver", "id")
        k.merged["config after rollback"] = cp1.c.read_file(ENC_CONFIG)
        k.create("team", "after-rollback", "stored by aescbc again")
        k.stored_after_rollback = k.stored("team", "after-rollback")
        ro.play("merge-migrate-back", "playbooks/migrate_secrets.yml",
                extra_vars={**rollback, "kms_migrate_secrets_rollback": True}).assert_ok()
        k.stored_after_migrate_back = k.etcd.range("/registry/secrets/")
        ro.play("merge-absent", tags="apiserver", extra_vars={**rollback, "kube_apiserver_kms_state": "absent"}).assert_ok()
        k.merged["manifest after absent"] = cp1.c.read_file(MANIFEST)
        cp1.wait_pod("kube-apiserver", timeout=180)
        k.values_after_absent = {n: k.value("team", n) for n in ("old", "new", "after-rollback")}
        yield k


def forged_drop_previous(ro: KubeRollout, k: Cluster, cp1: KubeHost, merge: dict) -> None:
    """A hand-written marker while `team/old` is still stored by aescbc: the write pass refuses to drop
    the providers merge carried over, the check of etcd does not pass."""
    cp1.c.run(["install", "-d", "-o", "root", "-g", "root", "-m", "0700", MIGRATION_DIR])
    cp1.c.write_file(MARKER, FORGED, mode=0o644)
    k.config_before_forged = cp1.c.read_file(ENC_CONFIG)
    ro.play("drop-previous-forged", extra_vars={**merge, "kube_apiserver_kms_drop_previous_providers": True})
    k.config_after_forged = cp1.c.read_file(ENC_CONFIG)
    k.old_after_forged = k.value("team", "old")
    cp1.c.run(["rm", "-r", MIGRATION_DIR])


def reloads(k: Cluster) -> float:
    """kube-apiserver's successful automatic reloads of its EncryptionConfiguration."""
    total = 0.0
    for line in k.api.metrics().splitlines():
        if line.startswith("apiserver_encryption_config_controller_automatic_reloads_total") and \
                'status="success"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_existing_encryption_is_refused_before_anything_is_installed(merged):
    run = merged.ro.runs["existing-refused"]
    assert run.rc != 0 and f"already uses the EncryptionConfiguration {EXISTING}" in run.output, run.output
    assert "kube_apiserver_kms_existing_config: merge" in run.output and "Nothing was installed" in run.output
    state = merged.existing_refused_state
    assert state["manifest"] == merged.original_manifest and "ok installed" not in state["installed"]
    assert state["touched"] == ""
    assert merged.stored_old.startswith(AESCBC_PREFIX), merged.stored_old[:40]


def test_merge_mode_keeps_aescbc_readable_and_the_api_server_reloads_the_write_pass_without_a_restart(merged):
    m = merged.merged
    existing = yaml.safe_load(aescbc_config())["resources"][0]
    out = merged.ro.runs["merge-1"].output
    assert "EncryptionConfiguration for stage read: secrets,configmaps = aescbc, identity, kms:openbao-kms" in out, out
    assert "EncryptionConfiguration for stage write: secrets,configmaps = kms:openbao-kms, aescbc, identity" in out, out
    # Our file: kms first, then the old providers with their keys, so what aescbc stored still decrypts.
    entries = yaml.safe_load(m["config"])["resources"]
    assert [e["resources"] for e in entries] == [existing["resources"]]
    assert list(entries[0]["providers"][0]) == ["kms"] and entries[0]["providers"][1:] == existing["providers"]
    # The keys never left the host's two files: not in any output.
    key = existing["providers"][0]["aescbc"]["keys"][0]["secret"]
    assert not [name for name, run in merged.ro.runs.items() if key in run.output]
    # The flag repointed in place, the old path kept for state=absent, the old file untouched.
    assert FLAG in m["manifest"] and EXISTING not in m["manifest"]
    assert m["previous"].strip() == EXISTING and m["existing"] == aescbc_config()
    # The manifest changed once (read pass); the write pass reached kube-apiserver by automatic reload.
    assert out.count("TASK [kube_apiserver_kms : Wait for a new kube-apiserver container]") == 1, out
    assert merged.reloads_after_merge >= 1
    assert merged.stored_new.startswith(PREFIX) and merged.value("team", "old") == "stored by aescbc"


def test_a_forged_marker_does_not_unlock_dropping_the_merged_providers_while_etcd_holds_aescbc_values(merged):
    run = merged.ro.runs["drop-previous-forged"]
    assert run.rc != 0, run.output
    assert "Refusing to drop the previous providers (kube_apiserver_kms_drop_previous_providers) on cp1" in run.output, \
        run.output
    assert "not stored by the provider: /registry/secrets/team/old" in run.output, run.output
    assert "not stored by the provider: /registry/secrets/team/new" not in run.output, run.output
    assert merged.config_after_forged == merged.config_before_forged
    assert "aescbc" in merged.config_after_forged
    assert merged.old_after_forged == "stored by aescbc"


def test_merge_rollback_writes_aescbc_again_and_state_absent_returns_the_published_manifest(merged):
    existing = yaml.safe_load(aescbc_config())["resources"][0]
    back = yaml.safe_load(merged.merged["config after rollback"])["resources"][0]["providers"]
    assert back[:2] == existing["providers"] and back[2]["kms"]["name"] == "openbao-kms"
    assert merged.id_after_rollback == merged.id_before_rollback   # automatic reload, no restart
    assert merged.stored_after_rollback.startswith(AESCBC_PREFIX)
    through_provider = [key for key, v in merged.stored_after_migrate_back.items() if v.startswith(PREFIX)]
    assert through_provider == [], through_provider
    # state=absent: kubeadm's manifest back byte for byte, pointing at the old file; everything reads.
    assert merged.merged["manifest after absent"] == merged.original_manifest
    assert merged.values_after_absent == {"old": "stored by aescbc", "new": "stored through the provider",
                                          "after-rollback": "stored by aescbc again"}
