"""kms_migrate_secrets' rewrite (roles/kms_migrate_secrets/files/kms_migrate.py) against a stand-in
kube-apiserver (tests/system/kube_fakes.py) that stores into a real etcd with TLS client-certificate
auth: pages, per-object replace, conflicts retried with a fresh read, an interrupted run resumed
from its state file, progress per namespace, the final check of every value in etcd, and the etcd
size-versus-quota check."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from ansible_helpers import ANSIBLE_DIR, REPO_ROOT
from kube_fakes import Etcd, FakeApiServer, kubeconfig, make_pki

SCRIPT = ANSIBLE_DIR / "roles" / "kms_migrate_secrets" / "files" / "kms_migrate.py"
KMS = b"k8s:enc:kms:v2:openbao-kms:"
NAMESPACES = {"default": 7, "kube-system": 9, "team-a": 5}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def cluster(pki, tmp_path):
    (tmp_path / "etcd").mkdir()
    etcd = Etcd(tmp_path / "etcd", pki)
    api = FakeApiServer(None, etcd, host="127.0.0.1")
    for ns, n in NAMESPACES.items():
        for i in range(n):
            api.add(ns, f"s{i:02d}")
    api.prefix = KMS   # from now on the "API server" writes through the provider
    yield api, etcd
    api.close()
    etcd.stop()


def run(pki, api, etcd, tmp_path, *extra) -> subprocess.CompletedProcess:
    conf = kubeconfig(pki, api.url, tmp_path / "admin.conf")
    args = [sys.executable, str(SCRIPT), "--kubeconfig", str(conf), "--resources", "secrets", "--chunk-size", "4",
            "--rate", "0", "--state", str(tmp_path / "state.json"), "--etcd-endpoint", etcd.endpoint,
            "--etcd-cacert", str(pki / "etcd/ca.crt"), "--etcd-cert", str(pki / "apiserver-etcd-client.crt"),
            "--etcd-key", str(pki / "apiserver-etcd-client.key"), "--expect-prefix", KMS.decode(), *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def test_conflicts_are_retried_with_a_fresh_read_and_every_object_is_verified_in_etcd(pki, cluster, tmp_path):
    api, etcd = cluster
    api.conflict_once = {"default/s03", "kube-system/s00", "team-a/s04"}
    before = {k: etcd.get(f"/registry/secrets/{k}") for k in api.objects}
    assert not any(v.startswith(KMS) for v in before.values())
    p = run(pki, api, etcd, tmp_path, "--progress-file", str(tmp_path / "progress.log"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "secrets team-a: 5/5" in (tmp_path / "progress.log").read_text()
    assert api.conflicts_sent == 3 and set(api.replaces) == set(api.objects)
    assert all(n == 1 for n in api.replaces.values()), api.replaces
    assert all(etcd.get(f"/registry/secrets/{k}").startswith(KMS) for k in api.objects)
    out = p.stdout
    assert "secrets default: 7/7" in out and "secrets kube-system: 9/9" in out and "secrets team-a: 5/5" in out, out
    assert "conflicts retried 3" in out, out
    assert "verified in etcd: 21 of 21 checked objects start with k8s:enc:kms:v2:openbao-kms:" in out, out
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["secrets"]["complete"] is True
    # A second run has nothing left to do.
    again = run(pki, api, etcd, tmp_path, "--verify", "sample:5")
    assert again.returncode == 0 and "already rewritten" in again.stdout and sum(api.replaces.values()) == 21
    assert "verified in etcd: 5 of 5" in again.stdout, again.stdout


def test_an_interrupted_run_resumes_after_the_last_object_done(pki, cluster, tmp_path):
    api, etcd = cluster
    api.fail_after = 10
    first = run(pki, api, etcd, tmp_path)
    assert first.returncode == 1 and "HTTP 500" in first.stderr, first.stdout + first.stderr
    state = json.loads((tmp_path / "state.json").read_text())["secrets"]
    assert state["complete"] is False and sum(state["done"].values()) == 10
    done_before = dict(api.replaces)
    api.fail_after = None
    second = run(pki, api, etcd, tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"resuming after {state['last']}" in second.stdout
    # Nothing rewritten twice, nothing left out.
    assert set(api.replaces) == set(api.objects) and all(n == 1 for n in api.replaces.values()), api.replaces
    assert all(api.replaces[k] == 1 for k in done_before)
    assert "verified in etcd: 21 of 21" in second.stdout


def test_verification_fails_when_values_are_not_stored_by_the_provider(pki, cluster, tmp_path):
    api, etcd = cluster
    api.prefix = b"k8s:enc:aescbc:v1:key1:"
    p = run(pki, api, etcd, tmp_path)
    assert p.returncode == 1 and "21 objects are not stored by the provider" in p.stderr, p.stdout + p.stderr
    # Rolling back: the rewrite away from the provider checks that no value carries its prefix.
    (tmp_path / "state.json").unlink()
    back = run(pki, api, etcd, tmp_path, "--expect-not")
    assert back.returncode == 0 and "21 of 21 checked objects do not start with" in back.stdout, back.stdout + back.stderr
    api.prefix = KMS
    api.add("default", "late")
    (tmp_path / "state.json").unlink()
    still = run(pki, api, etcd, tmp_path, "--expect-not", "--resources", "secrets")
    assert still.returncode == 1 and "22 objects are still stored by the provider" in still.stderr, still.stderr


def test_etcd_size_is_compared_with_the_quota_before_starting(pki, cluster, tmp_path):
    api, etcd = cluster
    refused = run(pki, api, etcd, tmp_path, "--etcd-quota-bytes", "4096")
    assert refused.returncode == 1 and "Compact and defragment etcd first" in refused.stderr, refused.stderr
    assert api.replaces == {}, "nothing may be rewritten after the refusal"
    warned = run(pki, api, etcd, tmp_path, "--etcd-quota-bytes", "4096", "--quota-check", "warn")
    assert warned.returncode == 0 and "WARNING: etcd database" in warned.stdout, warned.stdout + warned.stderr


# ---------------------------------------------------------------------------- wildcards

_spec = importlib.util.spec_from_file_location(
    "kube_apiserver_encryption_config",
    ANSIBLE_DIR / "roles" / "kube_apiserver_kms" / "module_utils" / "kube_apiserver_encryption_config.py")
ec = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ec)
DOCS_EXAMPLE = REPO_ROOT / "tests" / "testdata" / "kubeadm" / "encryption-configs" / "k8s-docs-example-all-providers.yaml"
OURS = {"apiVersion": "apiserver.config.k8s.io/v1", "kind": "EncryptionConfiguration", "resources": [
    {"resources": ["secrets"], "providers": [{"kms": {"apiVersion": "v2", "name": "openbao-kms",
                                                      "endpoint": "unix:///run/openbao-kms/kms.sock", "timeout": "3s"}},
                                             {"identity": {}}]}]}


def merged_entries(stage: str) -> list[dict]:
    """The entries (provider types only, as the role's summary shows them) of our file after merge
    mode carried over the Kubernetes documentation's example (events exempt, '*.apps', '*.*')."""
    doc = ec.decide(OURS, None, ec.parse(DOCS_EXAMPLE.read_text(), str(DOCS_EXAMPLE)), stage)
    return ec.summary(doc, "openbao-kms", ["secrets"])["entries"]


def test_wildcards_of_a_merged_config_are_expanded_to_every_served_resource_it_encrypted(pki, cluster, tmp_path):
    """Everything the old config encrypted ('*.apps', '*.*' and the names) is rewritten through the
    provider before its providers may be dropped: discovered like `kubectl api-resources`, with
    kube-apiserver's rules: the first entry that selects a resource decides (events stay exempt),
    no subresources or resources that cannot be listed and updated, events.k8s.io is core events,
    an aggregated API is stored by its own server, a custom resource lives under /registry/<group>/."""
    api, etcd = cluster
    for ns, name in (("default", "cm1"), ("team-a", "cm2")):
        api.add(ns, name, resource="configmaps")
    api.add("default", "ev1", resource="events")
    api.add("default", "web", resource="deployments.apps")
    api.add("team-a", "nightly", resource="crontabs.stable.example.com")
    api.conflict_once = {"deployments.apps:default/web"}
    entries = merged_entries("write")
    assert [e["providers"][0] for e in entries] == ["kms:openbao-kms", "identity", "kms:openbao-kms", "kms:openbao-kms"]
    p = run(pki, api, etcd, tmp_path, "--resources", "", "--config-entries", json.dumps(entries),
            "--provider-name", "openbao-kms")
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert "resources to rewrite: configmaps, crontabs.stable.example.com, deployments.apps, secrets" in out, out
    assert "not rewritten: *.wardle.example.com (aggregated API, stored by its own server)" in out, out
    assert "not rewritten: pandas.awesome.bears.example is listed in the EncryptionConfiguration but not served" in out
    assert "not rewritten: events: an earlier entry (events) decides for it" in out, out
    assert "verified in etcd: 25 of 25 checked objects start with" in out, out   # 21 Secrets + 4 others (not the event)
    rewritten = {r: api.replaces.get(k if r == "secrets" else f"{r}:{k}", 0)
                 for r, store in api.stores.items() for k in store}
    assert rewritten == {**{r: 1 for r in ("secrets", "configmaps", "deployments.apps", "crontabs.stable.example.com")},
                         "events": 0}, rewritten
    assert api.conflicts_sent == 1
    assert etcd.get("/registry/stable.example.com/crontabs/team-a/nightly").startswith(KMS)


def test_rolling_back_rewrites_what_lists_the_provider_and_names_that_are_not_served_are_refused(pki, cluster, tmp_path):
    api, etcd = cluster
    api.add("default", "web", resource="deployments.apps")
    api.prefix = b""   # rolled back: the old first providers write again
    back = run(pki, api, etcd, tmp_path, "--resources", "", "--config-entries", json.dumps(merged_entries("rollback")),
               "--provider-name", "openbao-kms", "--expect-not")
    assert back.returncode == 0, back.stdout + back.stderr
    assert "resources to rewrite: configmaps, crontabs.stable.example.com, deployments.apps, secrets" in back.stdout
    assert "22 of 22 checked objects do not start with" in back.stdout, back.stdout
    (tmp_path / "state.json").unlink()
    typo = run(pki, api, etcd, tmp_path, "--resources", "secrets,deployment.apps")
    assert typo.returncode == 1 and "resource 'deployment.apps' is not served by this cluster" in typo.stderr, typo.stderr
