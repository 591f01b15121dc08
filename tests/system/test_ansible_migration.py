"""kms_migrate_secrets' rewrite (roles/kms_migrate_secrets/files/kms_migrate.py) against the real
kube-apiserver and its etcd (kubeadm's TLS client certificate): pages, per-object replace, real
conflicts (409) retried with a fresh read, a run interrupted by the API server going away and resumed
from its state file, progress per namespace, the final check of every value in etcd (also alone,
--verify-only), the etcd size-versus-quota check, wildcards expanded by the real server's API
discovery, and a state directory another user could steer refused before anything is written.

One control plane for the module (kube_cluster.py), the provider and OpenBao on this machine with
the socket's directory bound into the host (kube_encryption.py). Each test starts from Secrets
written in plaintext (identity first), then kube-apiserver is switched to a real EncryptionConfiguration
with the provider first, so a rewrite really changes what etcd holds. The script runs on this machine
as the role runs it on a host, wrapped by `HOOKS` only where a test needs a moment inside the run:
another client's update between the script's read and its replace (the real server answers 409), and
the API server stopped after a number of replaces.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ansible_helpers import ANSIBLE_DIR, REPO_ROOT  # noqa: E402
from kube_cluster import ControlPlane, kube_bin_dir  # noqa: E402
from kube_encryption import (IDENTITY, KEY, KMS_PREFIX, MANIFEST, MachineProvider, aescbc,  # noqa: E402
                             encryption_config, kms, request_count, use_encryption_config)

SCRIPT = ANSIBLE_DIR / "roles" / "kms_migrate_secrets" / "files" / "kms_migrate.py"
KMS = KMS_PREFIX
NAMESPACES = {"default": 7, "kube-system": 9, "team-a": 5}
SECRETS = sum(NAMESPACES.values())
STATE = "state/migration-state.json"   # in Plane.run's state directory
PLAIN = b"k8s\x00"   # kube-apiserver's own encoding (protobuf) with identity first
# Runs the script with two test hooks around its API calls (MIGRATE_HOOKS, JSON):
# "update_before_put": object paths another client updates (a merge patch) right before the
# script's first replace of each, so the replace carries a stale resourceVersion;
# "stop_after_puts" + "stop_command": after that many successful replaces, runs the command (the API
# server goes away) and waits until its port refuses connections;
# "etcd_absent": etcd keys read as missing, as for a value kept under another key.
HOOKS = """
import importlib.util, json, os, socket, subprocess, sys, time, urllib.parse, urllib.request
spec = importlib.util.spec_from_file_location("kms_migrate", sys.argv[1])
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
hooks = json.loads(os.environ["MIGRATE_HOOKS"])
update = set(hooks.get("update_before_put", []))
stop_after = hooks.get("stop_after_puts")
puts = 0
original = m.Api.request


def gone(server):
    u = urllib.parse.urlsplit(server)
    try:
        socket.create_connection((u.hostname, u.port), timeout=2).close()
        return False
    except OSError:
        return True


def request(self, method, path, body=None, query=None):
    global puts, stop_after
    if method == "PUT" and path in update:
        update.discard(path)
        patch = json.dumps({"metadata": {"annotations": {"test.bao-kms-provider/concurrent": "update"}}}).encode()
        req = urllib.request.Request(self.server + path, data=patch, method="PATCH",
                                     headers={**self.headers, "Content-Type": "application/merge-patch+json"})
        with urllib.request.urlopen(req, context=self.ctx, timeout=30) as r:
            assert r.status == 200, r.status
    if method == "PUT" and stop_after is not None and puts == stop_after:
        stop_after = None
        subprocess.run(hooks["stop_command"], check=True)
        deadline = time.monotonic() + 60
        while not gone(self.server):
            assert time.monotonic() < deadline, "the API server did not go away"
            time.sleep(0.1)
    status, out = original(self, method, path, body, query)
    if method == "PUT" and status == 200:
        puts += 1
    return status, out


absent = set(hooks.get("etcd_absent", []))
original_get = m.Etcd.get


def get(self, key):
    return None if key in absent else original_get(self, key)


m.Api.request = request
m.Etcd.get = get
sys.argv = sys.argv[1:]
m.main()
"""

_spec = importlib.util.spec_from_file_location(
    "kube_apiserver_encryption_config",
    ANSIBLE_DIR / "roles" / "kube_apiserver_kms" / "module_utils" / "kube_apiserver_encryption_config.py")
ec = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ec)
DOCS_EXAMPLE = REPO_ROOT / "tests" / "testdata" / "kubeadm" / "encryption-configs" / "k8s-docs-example-all-providers.yaml"


class Plane:
    """The control plane, the provider, and what the tests do to them."""

    def __init__(self, cp: ControlPlane, provider: MachineProvider, work: Path):
        self.cp, self.provider, self.work = cp, provider, work
        self.host = cp.hosts[0]
        self.api = cp.api(0)
        self.etcd = cp.etcd()
        root = self.host.c.root / "etc/kubernetes"
        self.kubeconfig = work / "admin.conf"
        self.kubeconfig.write_text((root / "admin.conf").read_text())   # server: this host's advertise address
        self.etcd_args = ["--etcd-endpoint", f"https://{self.host.address}:2379",
                          "--etcd-cacert", str(root / "pki/etcd/ca.crt"),
                          "--etcd-cert", str(root / "pki/apiserver-etcd-client.crt"),
                          "--etcd-client-key", str(root / "pki/apiserver-etcd-client.key")]

    def readers(self) -> list[dict]:
        """What Secrets and everything else may be stored with before the wildcard tests, so what an
        earlier test wrote stays readable (the provider is in the Secrets' entry: kube-apiserver
        refuses a KMS v2 provider name in two entries)."""
        return [IDENTITY, aescbc("key1", "key2", "key3")]

    def encrypt(self, secrets: list[dict]) -> None:
        """Secrets under these providers (then the readers of another type); everything else
        readable as before."""
        kinds = {next(iter(p)) for p in secrets}
        providers = secrets + [r for r in self.readers() if next(iter(r)) not in kinds]
        if "kms" not in kinds:
            providers.append(kms(self.provider.socket))
        self.use(encryption_config((["secrets"], providers), (["*.*"], self.readers())))

    def use(self, config: dict) -> None:
        use_encryption_config(self.host, config, mounts=[self.provider.dir])

    def reset(self) -> None:
        """The Secrets of NAMESPACES written again in plaintext; then the provider first."""
        self.encrypt([IDENTITY])
        for ns in NAMESPACES:
            self.host.kubectl("-n", ns, "delete", "secrets", "--all")
        for ns, n in NAMESPACES.items():
            for i in range(n):
                self.create(ns, "secrets", {"kind": "Secret", "metadata": {"name": f"s{i:02d}"},
                                            "data": {"k": "dmFsdWU="}})
        self.encrypt([kms(self.provider.socket)])   # from now on kube-apiserver writes through the provider

    def create(self, ns: str, resource: str, obj: dict, api: str = "/api/v1") -> None:
        obj = {"apiVersion": api.split("/", 2)[-1] if api != "/api/v1" else "v1", **obj}
        status, out = self.api.request("POST", f"{api}/namespaces/{ns}/{resource}", obj)
        assert status == 201, out

    def secrets(self) -> dict[str, bytes]:
        """ns/name -> the raw value in etcd, for the Secrets of NAMESPACES."""
        return {k.removeprefix("/registry/secrets/"): v for k, v in self.etcd.range("/registry/secrets/").items()
                if k.split("/")[3] in NAMESPACES}

    def puts(self, resource: str = "secrets", code: str = "200") -> int:
        return request_count(self.api, "PUT", resource, code)

    def run(self, tmp_path: Path, *extra: str, hooks: dict | None = None,
            state_dir: Path | None = None) -> subprocess.CompletedProcess:
        if state_dir is None:
            state_dir = tmp_path / "state"
            state_dir.mkdir(mode=0o700, exist_ok=True)
        args = [str(SCRIPT), "--kubeconfig", str(self.kubeconfig), "--resources", "secrets", "--chunk-size", "4",
                "--rate", "0", "--state-dir", str(state_dir), *self.etcd_args,
                "--expect-prefix", KMS.decode(), *extra]
        if hooks:
            runner = tmp_path / "migrate_with_hooks.py"
            runner.write_text(HOOKS)
            args = [str(runner), *args]
        env = {"MIGRATE_HOOKS": json.dumps(hooks or {}), "PATH": "/usr/bin:/bin"}
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def plane(tmp_path_factory, nspawn_rootfs):
    work = tmp_path_factory.mktemp("migration")
    provider = MachineProvider(work / "provider").start()
    cp = None
    try:
        cp = ControlPlane(nspawn_rootfs, kube_bin_dir(), work, hosts=1, controller_manager=False,
                          binds=provider.binds).start()
        p = Plane(cp, provider, work)
        status, out = p.api.request("POST", "/api/v1/namespaces",
                                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}})
        assert status == 201, out
        yield p
    finally:
        if cp is not None:
            cp.stop()
        provider.stop()


@pytest.fixture
def cluster(plane):
    plane.reset()
    before = plane.secrets()
    assert len(before) == SECRETS and all(v.startswith(PLAIN) for v in before.values()), before
    return plane


def test_conflicts_are_retried_with_a_fresh_read_and_every_object_is_verified_in_etcd(cluster, tmp_path):
    """Another client updates three Secrets between the script's list and its replace: the real
    kube-apiserver answers 409, the script reads them again and replaces them once."""
    puts, conflicts = cluster.puts(), cluster.puts(code="409")
    p = cluster.run(tmp_path, hooks={"update_before_put": [
        "/api/v1/namespaces/default/secrets/s03", "/api/v1/namespaces/kube-system/secrets/s00",
        "/api/v1/namespaces/team-a/secrets/s04"]})
    assert p.returncode == 0, p.stdout + p.stderr
    assert "secrets team-a: 5/5" in (tmp_path / "state/migration-progress.log").read_text()
    assert cluster.puts(code="409") - conflicts == 3
    assert cluster.puts() - puts == SECRETS   # one successful replace per Secret
    assert all(v.startswith(KMS) for v in cluster.secrets().values())
    out = p.stdout
    assert "secrets default: 7/7" in out and "secrets kube-system: 9/9" in out and "secrets team-a: 5/5" in out, out
    assert "conflicts retried 3" in out, out
    assert "verified in etcd: 21 of 21 checked objects start with k8s:enc:kms:v2:openbao-kms:" in out, out
    state = json.loads((tmp_path / STATE).read_text())
    assert state["secrets"]["complete"] is True
    # A second run has nothing left to do.
    again = cluster.run(tmp_path, "--verify", "sample:5")
    assert again.returncode == 0 and "already rewritten" in again.stdout, again.stdout + again.stderr
    assert cluster.puts() - puts == SECRETS
    assert "verified in etcd: 5 of 5" in again.stdout, again.stdout


def test_an_interrupted_run_resumes_after_the_last_object_done(cluster, tmp_path):
    """The API server goes away after 10 replaces (its static pod manifest taken out); the run stops
    with the error; with the API server back the next run resumes after the last object done."""
    away = "/etc/kubernetes/kube-apiserver.yaml.away"
    before = cluster.host.pod_file("kube-apiserver", "id")
    first = cluster.run(tmp_path, hooks={"stop_after_puts": 10, "stop_command": [
        *cluster.host.c.nsenter_prefix(), "--", "mv", MANIFEST, away]})
    try:
        assert first.returncode == 1 and "Connection refused" in first.stderr, first.stdout + first.stderr
    finally:
        cluster.host.c.run(["mv", away, MANIFEST])
        cluster.host.wait_pod("kube-apiserver", timeout=180, other_than=before)
    state = json.loads((tmp_path / STATE).read_text())["secrets"]
    assert state["complete"] is False and sum(state["done"].values()) == 10
    stored = cluster.secrets()
    done = sorted(stored)[:10]
    assert [k for k, v in sorted(stored.items()) if v.startswith(KMS)] == done and state["last"] == done[-1]
    second = cluster.run(tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"resuming after {state['last']}" in second.stdout
    # Nothing rewritten twice, nothing left out (the restarted API server counts from zero).
    assert cluster.puts() == SECRETS - 10
    assert all(v.startswith(KMS) for v in cluster.secrets().values())
    assert "verified in etcd: 21 of 21" in second.stdout


def test_verification_fails_when_values_are_not_stored_by_the_provider(cluster, tmp_path):
    cluster.encrypt([aescbc()])   # another provider first: the rewrite stores aescbc values
    p = cluster.run(tmp_path)
    assert p.returncode == 1 and "21 objects are not stored by the provider" in p.stderr, p.stdout + p.stderr
    assert all(v.startswith(b"k8s:enc:aescbc:v1:key1:") for v in cluster.secrets().values())
    # Rolling back: the rewrite away from the provider checks that no value carries its prefix.
    (tmp_path / STATE).unlink()
    back = cluster.run(tmp_path, "--expect-not")
    assert back.returncode == 0 and "21 of 21 checked objects do not start with" in back.stdout, back.stdout + back.stderr
    cluster.encrypt([kms(cluster.provider.socket)])
    cluster.create("default", "secrets", {"kind": "Secret", "metadata": {"name": "late"}})
    (tmp_path / STATE).unlink()
    still = cluster.run(tmp_path, "--expect-not", "--resources", "secrets")
    assert still.returncode == 1 and "22 objects are still stored by the provider" in still.stderr, still.stderr


def test_verify_only_rewrites_nothing_and_names_every_value_not_stored_by_the_provider(cluster, tmp_path):
    """The gate before identity is dropped: with the Secrets still in plaintext a check alone fails
    and names them, and replaces nothing; after the rewrite it passes. The resources may come from
    the EncryptionConfiguration file itself (--config-file), as the role passes the host's file."""
    config = tmp_path / "encryption-config.yaml"
    config.write_text(json.dumps(encryption_config((["secrets"], [kms(cluster.provider.socket), IDENTITY]))))
    check = ["--verify-only", "--resources", "", "--config-file", str(config), "--provider-name", "openbao-kms"]
    puts = cluster.puts()
    plain = cluster.run(tmp_path, *check)
    assert plain.returncode == 1 and f"{SECRETS} objects are not stored by the provider" in plain.stderr, \
        plain.stdout + plain.stderr
    assert "resources to check: secrets" in plain.stdout, plain.stdout
    assert "not stored by the provider: /registry/secrets/team-a/s04" in plain.stdout, plain.stdout
    assert cluster.puts() == puts and not (tmp_path / STATE).exists()
    assert cluster.run(tmp_path).returncode == 0
    done = cluster.run(tmp_path, *check)
    assert done.returncode == 0 and f"verified in etcd: {SECRETS} of {SECRETS} checked" in done.stdout, \
        done.stdout + done.stderr
    assert cluster.puts() == puts + SECRETS


def test_verify_only_fails_for_an_object_the_api_server_serves_whose_value_is_not_found_in_etcd(cluster, tmp_path):
    """A value not found under the key the check reads, for an object the API server still serves, was
    not checked: as the gate before a drop it fails, naming it. The check after a rewrite counts it
    as deleted meanwhile."""
    moved = "/registry/secrets/team-a/s02"
    assert cluster.run(tmp_path).returncode == 0
    check = ["--verify-only", "--provider-name", "openbao-kms"]
    gate = cluster.run(tmp_path, *check, hooks={"etcd_absent": [moved]})
    assert gate.returncode == 1, gate.stdout + gate.stderr
    assert "1 objects the API server serves were not found in etcd under the key this check reads" in gate.stderr, \
        gate.stderr
    assert f"served by the API server but not found in etcd under this key: {moved}" in gate.stdout, gate.stdout
    assert cluster.run(tmp_path, *check).returncode == 0
    after = cluster.run(tmp_path, hooks={"etcd_absent": [moved]})
    assert after.returncode == 0 and "not found in etcd (deleted meanwhile, or under another key): 1" in after.stdout, \
        after.stdout + after.stderr


def test_a_state_directory_another_user_could_steer_is_refused_and_nothing_is_written_through_it(plane, tmp_path):
    """The script runs as root: a symlink (or hard link) planted for a file it writes, the directory
    replaced by a symlink, opened to group or other, or owned by another user is refused with a clear
    message before anything is read, replaced or written, and the file pointed at stays as it was."""
    victim = tmp_path / "victim"
    victim.write_text("root's own file\n")
    victim.chmod(0o644)
    uid = os.geteuid()
    cases = {}
    for name in ("migration-state.json.tmp", "migration-state.json", "migration-progress.log"):
        d = tmp_path / f"planted-{name}"
        d.mkdir(mode=0o700)
        (d / name).symlink_to(victim)
        cases[f"refusing {d}/{name}: it is a symlink; nothing is written through it"] = d
    linked = tmp_path / "hard-link"
    linked.mkdir(mode=0o700)
    os.link(victim, linked / "migration-progress.log")
    cases[f"refusing {linked}/migration-progress.log: it is a file with 2 links"] = linked
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    cases[f"refusing the state directory {link}: it is a symlink, not a directory"] = link
    group = tmp_path / "group-writable"
    group.mkdir()
    group.chmod(0o770)
    cases[f"refusing the state directory {group}: owner uid {uid}, mode 0770; it must be owned by uid {uid}"] = group
    other = tmp_path / "other-owner"
    other.mkdir(mode=0o700)
    os.chown(other, 65534, 65534)
    cases[f"refusing the state directory {other}: owner uid 65534, mode 0700"] = other
    puts = plane.puts()
    for message, d in cases.items():
        p = plane.run(tmp_path, state_dir=d)
        assert p.returncode == 1 and message in p.stderr, (message, p.stdout + p.stderr)
        assert "resources to rewrite" not in p.stdout, p.stdout
    assert plane.puts() == puts, "nothing may be rewritten after a refusal"
    assert victim.read_text() == "root's own file\n" and victim.stat().st_mode & 0o777 == 0o644
    assert list(real.iterdir()) == [] and list(group.iterdir()) == [] and list(other.iterdir()) == []


def test_etcd_size_is_compared_with_the_quota_before_starting(cluster, tmp_path):
    puts = cluster.puts()
    refused = cluster.run(tmp_path, "--etcd-quota-bytes", "4096")
    assert refused.returncode == 1 and "Compact and defragment etcd first" in refused.stderr, refused.stderr
    assert cluster.puts() == puts, "nothing may be rewritten after the refusal"
    assert not any(v.startswith(KMS) for v in cluster.secrets().values())
    warned = cluster.run(tmp_path, "--etcd-quota-bytes", "4096", "--quota-check", "warn")
    assert warned.returncode == 0 and "WARNING: etcd database" in warned.stdout, warned.stdout + warned.stderr


# ---------------------------------------------------------------------------- wildcards

OURS = {"apiVersion": "apiserver.config.k8s.io/v1", "kind": "EncryptionConfiguration", "resources": [
    {"resources": ["secrets"], "providers": [{"kms": {"apiVersion": "v2", "name": "openbao-kms",
                                                      "endpoint": "unix:///run/openbao-kms/kms.sock", "timeout": "3s"}},
                                             {"identity": {}}]}]}


def merged(stage: str) -> dict:
    """The Kubernetes documentation's example (events exempt, '*.apps', '*.*') with our provider in
    every entry that encrypts: first for the write stage, last for rollback. The role refuses to
    write such a file (a KMS v2 name may appear once, see served_config); the migration script
    still has to handle one provider per entry, so the file is built here."""
    doc = ec.parse(DOCS_EXAMPLE.read_text(), str(DOCS_EXAMPLE))
    kms = OURS["resources"][0]["providers"][0]
    for entry in doc["resources"]:
        if entry["providers"] != [{"identity": {}}]:
            entry["providers"] = [kms] + entry["providers"] if stage == "write" else entry["providers"] + [kms]
    return doc


def merged_entries(stage: str) -> list[dict]:
    """The entries (provider types only, as the role's summary shows them) of the merged file."""
    return ec.summary(merged(stage), "openbao-kms", ["secrets"])["entries"]


def served_config(plane: Plane, stage: str) -> dict:
    """The merged file as kube-apiserver runs it here: the provider's socket on this machine, keys of
    a valid length (two of the example's are not), identity after each entry's providers, so what
    kubeadm wrote before any encryption stays readable, and the provider named openbao-kms-<entry>
    in every entry after the first that lists it: kube-apiserver refuses a KMS v2 provider name used
    twice ("duplicate KMS provider name openbao-kms, names must be unique")."""
    doc = json.loads(json.dumps(merged(stage)))
    named = False
    for i, entry in enumerate(doc["resources"]):
        for provider in entry["providers"]:
            kind, spec = next(iter(provider.items()))
            if kind == "kms":
                spec["endpoint"] = f"unix://{plane.provider.socket}"
                if named:
                    spec["name"] = f"openbao-kms-{i}"
                named = True
            for key in (spec or {}).get("keys", []):
                key["secret"] = KEY
        if {"identity": {}} not in entry["providers"]:
            entry["providers"].append({"identity": {}})
    return doc


def wildcard_objects(plane: Plane) -> None:
    """A ConfigMap in two namespaces, a core Event, an apps Deployment, a custom resource (its CRD),
    and an aggregated API whose server is missing (as when it is down)."""
    api = plane.api
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "crontabs.stable.example.com"},
           "spec": {"group": "stable.example.com", "scope": "Namespaced",
                    "names": {"plural": "crontabs", "singular": "crontab", "kind": "CronTab"},
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                        "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}
    wardle = {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
              "metadata": {"name": "v1alpha1.wardle.example.com"},
              "spec": {"group": "wardle.example.com", "version": "v1alpha1", "insecureSkipTLSVerify": True,
                       "groupPriorityMinimum": 1000, "versionPriority": 15,
                       "service": {"namespace": "wardle", "name": "api"}}}
    for path, obj in (("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd),
                      ("/apis/apiregistration.k8s.io/v1/apiservices", wardle)):
        status, out = api.request("GET", f"{path}/{obj['metadata']['name']}")
        if status == 404:
            status, out = api.request("POST", path, obj)
            assert status == 201, out
    deadline = time.monotonic() + 60
    while api.request("GET", "/apis/stable.example.com/v1")[0] != 200:
        assert time.monotonic() < deadline, "the CRD is not served"
        time.sleep(0.2)
    for ns, name in (("default", "cm1"), ("team-a", "cm2")):
        plane.create(ns, "configmaps", {"kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": name}})
    plane.create("default", "events", {"kind": "Event", "metadata": {"name": "ev1"},
                                       "involvedObject": {"kind": "ConfigMap", "namespace": "default", "name": "cm1"},
                                       "reason": "Test", "message": "an event"})
    plane.create("default", "deployments", {"kind": "Deployment", "metadata": {"name": "web"}, "spec": {
        "replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "web"}]}}}},
                 api="/apis/apps/v1")
    plane.create("team-a", "crontabs", {"kind": "CronTab", "metadata": {"name": "nightly"},
                                        "spec": {"cronSpec": "0 3 * * *"}}, api="/apis/stable.example.com/v1")


def listable_and_updatable(plane: Plane) -> set[str]:
    """`kubectl api-resources` on the host: the served resources that can be listed, read and updated
    (it reports the aggregated API it cannot reach, and lists the rest)."""
    r = plane.host.kubectl("api-resources", "--verbs=list,get,update", "-o", "name", check=False)
    return set(r.stdout.split())


def test_wildcards_of_a_merged_config_are_expanded_to_every_served_resource_it_encrypted(cluster, tmp_path):
    """Everything the old config encrypted ('*.apps', '*.*' and the names) is rewritten through the
    provider before its providers may be dropped: discovered like `kubectl api-resources`, with
    kube-apiserver's rules: the first entry that selects a resource decides (events stay exempt),
    no subresources or resources that cannot be listed and updated, events.k8s.io is core events,
    an aggregated API is stored by its own server, a custom resource lives under /registry/<group>/.
    kube-apiserver runs the merged file for real (served_config), so etcd shows what it stored; another
    client's update of the Deployment before the script's replace makes it answer one real 409."""
    wildcard_objects(cluster)
    entries = merged_entries("write")
    assert [e["providers"][0] for e in entries] == ["kms:openbao-kms", "identity", "kms:openbao-kms", "kms:openbao-kms"]
    cluster.use(served_config(cluster, "write"))
    web = "/apis/apps/v1/namespaces/default/deployments/web"
    events = cluster.puts("events")
    # Any KMS v2 value (the renamed entries store with their own names, checked one by one below).
    p = cluster.run(tmp_path, "--resources", "", "--config-entries", json.dumps(entries),
                    "--provider-name", "openbao-kms", "--expect-prefix", "k8s:enc:kms:v2:",
                    hooks={"update_before_put": [web]})
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    chosen = re.search(r"^resources to rewrite: (.*)$", out, re.M).group(1).split(", ")
    assert chosen == sorted(chosen) and {"configmaps", "crontabs.stable.example.com", "deployments.apps",
                                         "secrets"} <= set(chosen), out
    # What kubectl api-resources lists, less events (exempt; events.k8s.io is the same storage).
    expected = {n for n in listable_and_updatable(cluster) if n not in ("events", "events.events.k8s.io")}
    assert set(chosen) == expected, (sorted(set(chosen) ^ expected), out)
    assert "not rewritten: *.wardle.example.com (aggregated API, stored by its own server)" in out, out
    assert "not rewritten: pandas.awesome.bears.example is listed in the EncryptionConfiguration but not served" in out
    assert "not rewritten: events: an earlier entry (events) decides for it" in out, out
    checked = re.search(r"verified in etcd: (\d+) of (\d+) checked objects start with", out)
    assert checked and checked.group(1) == checked.group(2) and int(checked.group(1)) >= SECRETS + 4, out
    assert "not found in etcd" not in out, out
    assert all(v.startswith(KMS) for v in cluster.secrets().values())
    for key, prefix in (("/registry/configmaps/default/cm1", KMS), ("/registry/configmaps/team-a/cm2", KMS),
                        ("/registry/deployments/default/web", b"k8s:enc:kms:v2:openbao-kms-2:"),
                        ("/registry/stable.example.com/crontabs/team-a/nightly", b"k8s:enc:kms:v2:openbao-kms-3:")):
        assert cluster.etcd.get(key).startswith(prefix), (key, cluster.etcd.get(key)[:40])
    assert cluster.etcd.get("/registry/events/default/ev1").startswith(PLAIN)
    assert cluster.puts("events") == events
    assert cluster.puts("deployments", "409") == 1


def test_rolling_back_rewrites_what_lists_the_provider_and_names_that_are_not_served_are_refused(plane, tmp_path):
    cluster = plane
    # After the test above, everything is stored under the merged file's names; alone, from scratch.
    if cluster.api.request("GET", "/apis/apps/v1/namespaces/default/deployments/web")[0] != 200:
        cluster.reset()
        wildcard_objects(cluster)
    cluster.use(served_config(cluster, "rollback"))   # rolled back: the old first providers write again
    back = cluster.run(tmp_path, "--resources", "", "--config-entries", json.dumps(merged_entries("rollback")),
                       "--provider-name", "openbao-kms", "--expect-not", "--expect-prefix", "k8s:enc:kms:v2:")
    assert back.returncode == 0, back.stdout + back.stderr
    chosen = re.search(r"^resources to rewrite: (.*)$", back.stdout, re.M).group(1).split(", ")
    assert {"configmaps", "crontabs.stable.example.com", "deployments.apps", "secrets"} <= set(chosen), back.stdout
    checked = re.search(r"verified in etcd: (\d+) of (\d+) checked objects do not start with", back.stdout)
    assert checked and checked.group(1) == checked.group(2) and int(checked.group(1)) >= SECRETS + 1, back.stdout
    assert not any(v.startswith(KMS) for v in cluster.secrets().values())
    assert cluster.etcd.get("/registry/deployments/default/web").startswith(b"k8s:enc:aescbc:v1:key2:")
    assert cluster.etcd.get("/registry/stable.example.com/crontabs/team-a/nightly").startswith(
        b"k8s:enc:aescbc:v1:key3:")
    (tmp_path / STATE).unlink()
    typo = cluster.run(tmp_path, "--resources", "secrets,deployment.apps")
    assert typo.returncode == 1 and "resource 'deployment.apps' is not served by this cluster" in typo.stderr, typo.stderr


def client_kubeconfig(path: Path, server: str, key_pem: bytes | None = None) -> bytes:
    """A kubeconfig like kubeadm's admin.conf (CA, client certificate and key embedded), written to
    `path`; `key_pem` replaces the client key (one that does not match the certificate). Returns
    the key it holds."""
    import base64
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def pem_key(k):
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes-admin")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key_pem if key_pem is not None else pem_key(key)

    def b64(b):
        return base64.b64encode(b).decode()
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "admin",
        "clusters": [{"name": "k", "cluster": {"server": server, "certificate-authority-data": b64(cert_pem)}}],
        "users": [{"name": "admin", "user": {"client-certificate-data": b64(cert_pem),
                                             "client-key-data": b64(key_pem)}}],
        "contexts": [{"name": "admin", "context": {"cluster": "k", "user": "admin"}}]}))
    return key_pem


@pytest.mark.parametrize("case", ["key-does-not-match", "etcd-unusable", "api-server-unreachable"])
def test_a_run_that_fails_early_leaves_no_copy_of_the_client_key(tmp_path, case):
    """The script writes the kubeconfig's embedded client key to a private temporary directory for
    ssl; a run that fails before the rewrite (a key that does not fit, etcd client settings that
    cannot be used, an API server that does not answer) removes it on the way out too."""
    import socket
    with socket.socket() as s:   # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"https://127.0.0.1:{s.getsockname()[1]}"
    kubeconfig = tmp_path / "admin.conf"
    other = client_kubeconfig(tmp_path / "other.conf", closed)
    key = client_kubeconfig(kubeconfig, closed, key_pem=other if case == "key-does-not-match" else None)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    args = [sys.executable, str(SCRIPT), "--kubeconfig", str(kubeconfig), "--resources", "secrets"]
    if case == "etcd-unusable":
        args += ["--etcd-endpoint", closed, "--etcd-cacert", str(tmp_path / "missing-ca.pem")]
    p = subprocess.run(args, capture_output=True, text=True, timeout=120, env={**os.environ, "TMPDIR": str(tmp)})
    assert p.returncode == 1, p.stdout + p.stderr
    expected = {"key-does-not-match": "cannot use its certificates", "etcd-unusable": "etcd client certificate",
                "api-server-unreachable": "kms_migrate:"}[case]
    assert expected in p.stderr, p.stderr
    assert list(tmp.iterdir()) == [], sorted(str(f) for f in tmp.rglob("*"))
    assert key.decode().split("\n")[1] not in p.stdout + p.stderr
