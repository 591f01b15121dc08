"""The EncryptionConfiguration the kube_apiserver_kms role writes, against real EncryptionConfiguration
files (tests/testdata/kubeadm/encryption-configs, see PROVENANCE.md): merge per resource entry, stage
order, drop of the previous providers, idempotence, refusal, and that no key leaves the file. The
order comes from `bao-kms-provider encryption-config --stage`, which the role's module runs with
the file it chose (`decide` below does the same); its module_utils validates and summarises."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from ruamel.yaml import YAML

from ansible_helpers import ANSIBLE_DIR, REPO_ROOT, VENV_BIN
from openbao import provider_binary

ROLE = ANSIBLE_DIR / "roles" / "kube_apiserver_kms"
_spec = importlib.util.spec_from_file_location("kube_apiserver_encryption_config",
                                               ROLE / "module_utils" / "kube_apiserver_encryption_config.py")
ec = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ec)

CONFIGS = REPO_ROOT / "tests" / "testdata" / "kubeadm" / "encryption-configs"
VALID = sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("legacy-"))
KMS = {"kms": {"apiVersion": "v2", "name": "openbao-kms", "endpoint": "unix:///run/openbao-kms/kms.sock",
               "timeout": "3s"}}
IDENTITY = {"identity": {}}


def config_file(directory: Path) -> Path:
    """A provider config for `encryption-config` (provider openbao-kms, the default socket and 3s)."""
    cfg = directory / "config.toml"
    cfg.write_text('[openbao]\naddress = "http://127.0.0.1:8200"\ninstance_id = "t"\n'
                   f'[auth.jwt]\njwt_file = "{directory}/identity.jwt"\n'
                   '[transit.key_id_scope]\ncluster_id = "c"\ntransit_mount_id = "m"\nkey_lineage_id = "l"\n')
    return cfg


class Refused(Exception):
    """The provider (or the module's choice of file) refused the merge."""


@pytest.fixture
def decide(tmp_path):
    """What the module writes for (rendered, our file as it is, the cluster's other file, stage):
    `bao-kms-provider encryption-config --stage` with --existing-config our file once it lists
    the provider, else the other file; the same choice as library/kube_apiserver_encryption_config.py."""
    cfg = config_file(tmp_path)
    runs = iter(range(1_000_000))

    def run(ours, current, existing, stage, drop_previous=False):
        kms, resources, identity = ec.our_parts(ours)
        name = kms["kms"]["name"]
        merge_with = None
        if current is not None and ec.lists(current, name):
            merge_with = current
        elif existing is not None:
            if ec.lists(existing, name):
                raise Refused("the existing EncryptionConfiguration already has a kms provider named %r" % name)
            merge_with = existing
        argv = [str(provider_binary()), "encryption-config", "--config", str(cfg),
                "--resources", ",".join(resources), "--stage", stage]
        argv += [] if identity else ["--no-identity"]
        if merge_with is not None:
            f = tmp_path / f"merge-{next(runs)}.json"
            f.write_text(ec.render(merge_with))
            argv += ["--existing-config", str(f)]
        if drop_previous and stage == "write":
            argv.append("--drop-previous")
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise Refused(p.stderr)
        return json.loads(p.stdout)
    return run


def rendered(resources=("secrets",), identity=True):
    """What `bao-kms-provider encryption-config` prints."""
    return {"apiVersion": "apiserver.config.k8s.io/v1", "kind": "EncryptionConfiguration",
            "resources": [{"resources": list(resources), "providers": [KMS] + ([IDENTITY] if identity else [])}]}


def secrets_in(text: str) -> list[str]:
    doc = yaml.safe_load(text)
    return [k["secret"] for e in doc["resources"] for p in e["providers"] for body in p.values()
            if isinstance(body, dict) for k in body.get("keys", [])]


def strict(text: str):
    return YAML(typ="safe", pure=True).load(text)


def load(path: Path):
    return ec.parse(path.read_text(), str(path))


def entries_with_ours(existing: dict, resources: tuple[str, ...]) -> int:
    """How many entries of the merged file would carry our kms: every existing entry that encrypts
    (or selects one of our resources), plus one of our own for resources no entry selects."""
    covered, count = set(), 0
    for entry in existing["resources"]:
        mine = [r for r in resources if r not in covered and any(ec.covers(p, r) for p in entry["resources"])]
        covered.update(mine)
        count += bool(mine or entry["providers"] and entry["providers"] != [IDENTITY])
    return count + bool(set(resources) - covered)


@pytest.mark.parametrize("resources", [("secrets",), ("secrets", "configmaps")], ids=",".join)
@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_merge_keeps_every_existing_provider_per_entry_in_each_stage(path, resources, decide):
    existing = load(path)
    ours = rendered(resources)
    if entries_with_ours(existing, resources) > 1:
        # kube-apiserver does not start with one KMS v2 name in two entries: refused, naming them.
        with pytest.raises(Refused, match="accepts a KMS v2 provider name only once"):
            decide(ours, None, existing, "read")
        return
    read = decide(ours, None, existing, "read")
    write = decide(ours, strict(ec.render(read)), None, "write")
    covered = set()
    for old in existing["resources"]:
        new_read = next(e for e in read["resources"] if e["resources"] == old["resources"])
        new_write = next(e for e in write["resources"] if e["resources"] == old["resources"])
        mine = [r for r in resources if r not in covered and any(ec.covers(p, r) for p in old["resources"])]
        covered.update(mine)
        if not mine and old["providers"] == [IDENTITY]:
            # An explicit identity-only exemption for resources we do not encrypt stays as it is.
            assert new_read == new_write == old
            continue
        # Read: the existing providers in their order (the first keeps writing), kms appended.
        assert new_read["providers"] == old["providers"] + [KMS]
        # Write: kms first, the existing providers after it.
        assert new_write["providers"] == [KMS] + old["providers"]
    uncovered = [r for r in resources if r not in covered]
    if uncovered:
        assert read["resources"][0] == {"resources": uncovered, "providers": [IDENTITY, KMS]}
        assert write["resources"][0] == {"resources": uncovered, "providers": [KMS, IDENTITY]}
    assert ec.summary(write, "openbao-kms", list(resources))["kms_first"] is True
    assert ec.summary(read, "openbao-kms", list(resources))["kms_first"] is False
    # Every key of the existing file is still there, so nothing written under it becomes unreadable.
    assert sorted(secrets_in(ec.render(write))) == sorted(secrets_in(path.read_text()))
    # Later runs work from our own file: nothing changes; a read pass keeps the write pass's file.
    assert decide(ours, write, None, "write") == write
    assert decide(ours, write, existing, "write") == write
    assert decide(ours, write, None, "read") == write
    # After the migration: the previous providers go, identity stays as long as the fallback is on.
    dropped = decide(ours, write, None, "write", drop_previous=True)
    assert secrets_in(ec.render(dropped)) == [] or all(
        e["providers"] == old["providers"] for e in dropped["resources"] for old in existing["resources"]
        if e["resources"] == old["resources"] and old["providers"] == [IDENTITY])
    assert decide(ours, dropped, None, "write", drop_previous=True) == dropped
    # Rollback: existing providers first again, kms still readable.
    rollback = decide(ours, write, None, "rollback")
    assert rollback == read


def test_a_cluster_without_existing_encryption_gets_the_rendered_order_per_stage(decide):
    ours = rendered()
    assert decide(ours, None, None, "write") == ours
    read = decide(ours, None, None, "read")
    assert read["resources"][0]["providers"] == [IDENTITY, KMS]
    assert decide(ours, read, None, "write") == ours
    no_identity = rendered(identity=False)
    assert decide(no_identity, ours, None, "write") == no_identity
    assert decide(ours, ours, None, "rollback")["resources"][0]["providers"] == [IDENTITY, KMS]


def test_a_resource_dropped_from_the_provider_keeps_its_entry_so_what_it_stored_stays_readable(decide):
    """Without the identity fallback our entry holds only kms; dropping its resources from the
    rendered file must not drop the entry (kube-apiserver would no longer read those values)."""
    before = rendered(["configmaps"], identity=False)
    after = rendered(["secrets"], identity=False)
    with pytest.raises(Refused, match="accepts a KMS v2 provider name only once"):
        decide(after, before, None, "write")
    assert decide(after, before, None, "read") == before


def test_wildcards_decide_which_entry_our_resources_join(decide):
    existing = load(CONFIGS / "k8s-docs-example-all-providers.yaml")
    ours = rendered(["secrets", "deployments.apps", "widgets.example.com"])
    # secrets is listed by the first entry; deployments.apps by '*.apps'; the custom one by '*.*':
    # three entries would carry our kms, which kube-apiserver refuses, so the merge is refused.
    with pytest.raises(Refused) as e:
        decide(ours, None, existing, "write")
    assert "[secrets, configmaps, pandas.awesome.bears.example]; [*.apps]; [*.*]" in str(e.value), e.value
    assert "c2VjcmV0IGlzIHNlY3VyZQ" not in str(e.value)
    # The resources of one entry merge into it: our kms joins that entry only.
    single = {**existing, "resources": existing["resources"][:1]}
    write = decide(rendered(["secrets"]), None, single, "write")
    assert [e["resources"] for e in write["resources"]] == [["secrets", "configmaps", "pandas.awesome.bears.example"]]
    assert write["resources"][0]["providers"][0] == KMS


def test_the_old_encryptionconfig_format_and_broken_files_are_refused_without_showing_keys(decide):
    with pytest.raises(ec.EncryptionConfigError, match="kind 'EncryptionConfig'.*convert it first"):
        load(CONFIGS / "legacy-kind-kms-v1.yaml")
    broken = (CONFIGS / "aescbc-docs-write-config.yaml").read_text().replace("      - identity: {}", "      - identity: {]")
    with pytest.raises(ec.EncryptionConfigError) as e:
        ec.parse(broken, "/etc/kubernetes/enc/enc.yaml")
    assert "c2VjcmV0IGlzIHNlY3VyZQ" not in str(e.value) and "/etc/kubernetes/enc/enc.yaml" in str(e.value)
    nokey = (CONFIGS / "aescbc-docs-write-config.yaml").read_text().replace("secret: c2VjcmV0IGlzIHNlY3VyZQ==", "x: 1")
    with pytest.raises(ec.EncryptionConfigError, match="needs a list of keys"):
        ec.parse(nokey, "enc.yaml")
    clash = load(CONFIGS / "kms-v2-other-provider.yaml")
    clash["resources"][0]["providers"][0]["kms"]["name"] = "openbao-kms"
    with pytest.raises(Refused, match="already has a kms provider named 'openbao-kms'"):
        decide(rendered(), None, clash, "read")


def run_module(args: dict, diff: bool = True) -> tuple[dict, str]:
    cmd = [str(VENV_BIN / "ansible"), "localhost", "-c", "local", "-M", str(ROLE / "library"), "-m",
           "kube_apiserver_encryption_config", "-a", json.dumps(args)] + (["--diff"] if diff else [])
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_MODULE_UTILS": str(ROLE / "module_utils"),
           "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_STDOUT_CALLBACK": "json",
           "ANSIBLE_PYTHON_INTERPRETER": str(VENV_BIN / "python"), "ANSIBLE_LOCALHOST_WARNING": "0",
           "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    out = json.loads(p.stdout)
    return out["plays"][0]["tasks"][0]["hosts"]["localhost"], p.stdout + p.stderr


def test_module_refuses_then_merges_into_a_0600_file_and_never_returns_keys(tmp_path):
    enc = tmp_path / "enc.yaml"
    enc.write_text((CONFIGS / "aescbc-docs-write-config.yaml").read_text())
    ours = tmp_path / "openbao-kms" / "encryption-config.yaml"
    ours.parent.mkdir()
    cfg = config_file(tmp_path)
    argv = [str(provider_binary()), "encryption-config", "--config", str(cfg)]
    args = {"path": str(ours), "rendered": json.dumps(rendered()), "render_argv": argv, "stage": "read",
            "existing": str(enc)}
    refused, _ = run_module(args)
    assert refused.get("failed") and str(enc) in refused["msg"] and "kube_apiserver_kms_existing_config: merge" in refused["msg"]
    assert not ours.exists()
    merged, output = run_module({**args, "existing_config": "merge"})
    assert merged["changed"] and oct(ours.stat().st_mode)[-3:] == "600"
    assert "c2VjcmV0IGlzIHNlY3VyZQ" in ours.read_text() and "c2VjcmV0IGlzIHNlY3VyZQ" not in output
    assert "diff" not in merged, "a diff would show the keys"
    assert merged["summary"]["entries"][0]["providers"] == ["aescbc", "identity", "kms:openbao-kms"]
    again, _ = run_module({**args, "existing_config": "merge"})
    assert again["changed"] is False
    write, output = run_module({**args, "existing_config": "merge", "stage": "write"})
    assert write["changed"] and write["summary"]["kms_first"] and "c2VjcmV0IGlzIHNlY3VyZQ" not in output
    query, _ = run_module({"path": str(ours), "state": "query", "provider_name": "openbao-kms", "resources": ["secrets"]})
    assert query["summary"]["kms_first"] is True and query["summary"]["sha256"] == write["summary"]["sha256"]
