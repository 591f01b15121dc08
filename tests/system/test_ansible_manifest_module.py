"""Unit tests of the kube_apiserver_manifest module (ansible/roles/kube_apiserver_kms: the edit in
module_utils/, the module in library/) on the kubeadm manifest from ../shared/testdata, plus the
module run by Ansible itself on the controller."""

from __future__ import annotations

import difflib
import re
import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from ansible_helpers import ANSIBLE_DIR, REPO_ROOT, VENV_BIN, kubeadm_testdata

ROLE = ANSIBLE_DIR / "roles" / "kube_apiserver_kms"
LIBRARY, MODULE_UTILS = ROLE / "library", ROLE / "module_utils"
TESTDATA = kubeadm_testdata()
KUBEADM = (TESTDATA / "kubeadm" / "kube-apiserver.yaml").read_text()
CONFIG = "/etc/kubernetes/encryption/openbao-kms/encryption-config.yaml"
FLAG = f"--encryption-provider-config={CONFIG}"
RELOAD = "--encryption-provider-config-automatic-reload"

_spec = importlib.util.spec_from_file_location("kube_apiserver_manifest_edit",
                                               MODULE_UTILS / "kube_apiserver_manifest_edit.py")
m = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(m)


def spec(**kw):
    return m.Spec(CONFIG, **kw)


def changed_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    """(removed, added) lines of a line diff."""
    d = list(difflib.ndiff(before.splitlines(), after.splitlines()))
    return [x[2:] for x in d if x.startswith("- ")], [x[2:] for x in d if x.startswith("+ ")]


def apiserver(doc):
    return next(c for c in doc["spec"]["containers"] if c["name"] == "kube-apiserver")


def test_kubeadm_manifest_gets_one_flag_two_mounts_two_volumes_and_nothing_else():
    after, changes = m.plan(KUBEADM, spec())
    assert len(changes) == 3
    doc, orig = yaml.safe_load(after), yaml.safe_load(KUBEADM)
    c = apiserver(doc)
    assert [a for a in c["command"] if a.startswith("--encryption-provider-config")] == [FLAG]
    assert c["command"][:-1] == apiserver(orig)["command"]
    assert c["volumeMounts"][-2:] == [
        {"mountPath": "/etc/kubernetes/encryption/openbao-kms", "name": "openbao-kms-config", "readOnly": True},
        {"mountPath": "/run/openbao-kms", "name": "openbao-kms-socket"}]
    assert doc["spec"]["volumes"][-2:] == [
        {"hostPath": {"path": "/etc/kubernetes/encryption/openbao-kms", "type": "Directory"}, "name": "openbao-kms-config"},
        {"hostPath": {"path": "/run/openbao-kms", "type": "DirectoryOrCreate"}, "name": "openbao-kms-socket"}]
    removed, added = changed_lines(KUBEADM, after)
    assert removed == []
    assert added == [
        f"    - {FLAG}",
        "    - mountPath: /etc/kubernetes/encryption/openbao-kms", "      name: openbao-kms-config", "      readOnly: true",
        "    - mountPath: /run/openbao-kms", "      name: openbao-kms-socket",
        "  - hostPath:", "      path: /etc/kubernetes/encryption/openbao-kms", "      type: Directory",
        "    name: openbao-kms-config",
        "  - hostPath:", "      path: /run/openbao-kms", "      type: DirectoryOrCreate", "    name: openbao-kms-socket"]
    # Apart from the additions, the parsed document is the original.
    for key in ("volumeMounts", "command"):
        c[key] = [x for x in c[key] if x not in (FLAG,) and not (isinstance(x, dict) and x["name"].startswith("openbao-kms"))]
    doc["spec"]["volumes"] = [v for v in doc["spec"]["volumes"] if not v["name"].startswith("openbao-kms")]
    assert doc == orig


def test_second_application_is_a_no_op():
    once, _ = m.plan(KUBEADM, spec())
    twice, changes = m.plan(once, spec())
    assert changes == [] and twice == once


def test_automatic_reload_is_added_and_removed_by_the_variable_and_kept_by_default():
    once, _ = m.plan(KUBEADM, spec())
    with_reload, changes = m.plan(once, spec(automatic_reload=True))
    assert changes == [f"add {RELOAD}=true"]
    assert changed_lines(once, with_reload) == ([], [f"    - {RELOAD}=true"])
    assert m.plan(with_reload, spec(automatic_reload=True))[1] == []
    assert m.plan(with_reload, spec())[1] == [], "the default (keep) leaves an existing flag alone"
    assert m.plan(with_reload, spec(automatic_reload="keep"))[1] == []
    without, changes = m.plan(with_reload, spec(automatic_reload=False))
    assert without == once and changes == [f"remove {RELOAD}=true"]
    assert m.facts(with_reload)["automatic_reload"] is True and m.facts(once)["automatic_reload"] is None


def test_a_flag_with_another_path_is_refused_by_default_and_replaced_in_place_in_merge_mode():
    old = KUBEADM.replace("    - --secure-port=6443\n", "    - --secure-port=6443\n    - --encryption-provider-config=/old.yaml\n")
    with pytest.raises(m.ManifestError, match=r"already uses the EncryptionConfiguration /old.yaml .*"
                                              r"kube_apiserver_kms_existing_config: merge"):
        m.plan(old, spec())
    after, changes = m.plan(old, spec(existing_config="merge"))
    assert changed_lines(old, after)[0] == ["    - --encryption-provider-config=/old.yaml"]
    assert f"    - {FLAG}" in changed_lines(old, after)[1]
    assert apiserver(yaml.safe_load(after))["command"].count(FLAG) == 1
    assert changes[0] == f"replace --encryption-provider-config=/old.yaml with {FLAG}"


def test_kubeadm_style_is_kept_when_the_lists_are_missing():
    bare = ("apiVersion: v1\nkind: Pod\nmetadata:\n  name: kube-apiserver\nspec:\n  containers:\n"
            "  - command:\n    - kube-apiserver\n    - --secure-port=6443\n    image: x\n    name: kube-apiserver\n"
            "  hostNetwork: true\n")
    after, _ = m.plan(bare, spec())
    doc = yaml.safe_load(after)
    assert [v["name"] for v in doc["spec"]["volumes"]] == ["openbao-kms-config", "openbao-kms-socket"]
    assert [v["name"] for v in apiserver(doc)["volumeMounts"]] == ["openbao-kms-config", "openbao-kms-socket"]
    assert changed_lines(bare, after)[0] == []
    assert m.plan(after, spec())[1] == []
    empty = bare.replace("  hostNetwork: true\n", "  hostNetwork: true\n  volumes: []\n")
    after, _ = m.plan(empty, spec())
    assert [v["name"] for v in yaml.safe_load(after)["spec"]["volumes"]] == ["openbao-kms-config", "openbao-kms-socket"]


@pytest.mark.parametrize("text, message", [
    ("kind: Deployment\n", "expected Pod"),
    (KUBEADM.replace("  name: kube-apiserver\n  namespace", "  name: x\n  namespace").replace(
        "    name: kube-apiserver\n", "    name: etcd\n"), "exactly one container named 'kube-apiserver'"),
    (KUBEADM.replace("    - --secure-port=6443\n", "    - --secure-port=6443\n    - --encryption-provider-config=/a\n"
                     "    - --encryption-provider-config=/b\n"), "2 times"),
    (KUBEADM.replace("      name: usr-share-ca-certificates\n      readOnly: true\n",
                     "      name: usr-share-ca-certificates\n      readOnly: true\n    - mountPath: /somewhere\n"
                     "      name: openbao-kms-config\n"), "fix or remove it by hand"),
    (KUBEADM.replace("      name: usr-share-ca-certificates\n      readOnly: true\n",
                     "      name: usr-share-ca-certificates\n      readOnly: true\n    - mountPath: /run/openbao-kms\n"
                     "      name: sock\n"), "already uses mountPath under the name 'sock'"),
    ("kind: Pod\nspec: [\n", "not valid YAML"),
])
def test_unexpected_structure_is_refused_with_a_clear_message(text, message):
    with pytest.raises(m.ManifestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        m.plan(text, spec())


def test_unsafe_paths_are_refused():
    with pytest.raises(m.ManifestError, match="absolute path"):
        m.Spec("/etc/kubernetes/enc config.yaml")
    with pytest.raises(m.ManifestError, match="not inside config_dir"):
        m.Spec(CONFIG, config_dir="/etc/other")


def run_module(args: dict, check: bool = False, diff: bool = False) -> dict:
    """The module as Ansible runs it (ad hoc, on the controller), JSON result."""
    cmd = [str(VENV_BIN / "ansible"), "localhost", "-c", "local", "-M", str(LIBRARY), "-m", "kube_apiserver_manifest",
           "-a", json.dumps(args)]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_MODULE_UTILS": str(MODULE_UTILS), "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
           "ANSIBLE_STDOUT_CALLBACK": "json", "ANSIBLE_PYTHON_INTERPRETER": str(VENV_BIN / "python"),
           "ANSIBLE_LOCALHOST_WARNING": "0", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    out = json.loads(p.stdout)
    return out["plays"][0]["tasks"][0]["hosts"]["localhost"]


def test_module_backs_up_outside_the_manifest_dir_and_honours_check_mode(tmp_path):
    manifests, backup, enc = tmp_path / "manifests", tmp_path / "backup", tmp_path / "encryption"
    manifests.mkdir()
    enc.mkdir()
    (enc / "encryption-config.yaml").write_text("kind: EncryptionConfiguration\n")
    manifest = manifests / "kube-apiserver.yaml"
    manifest.write_text(KUBEADM)
    manifest.chmod(0o600)
    args = {"path": str(manifest), "encryption_config": str(enc / "encryption-config.yaml"), "backup_dir": str(backup)}

    inside = run_module({**args, "backup_dir": str(manifests / "backup")})
    assert inside.get("failed") and "kubelet would run a backup" in inside["msg"]

    checked = run_module(args, check=True, diff=True)
    assert checked["changed"] and manifest.read_text() == KUBEADM and not backup.exists()
    assert f"add --encryption-provider-config={enc}/encryption-config.yaml" in checked["diff"]["prepared"]

    done = run_module(args)
    assert done["changed"] and Path(done["backup_file"]).parent == backup
    assert Path(done["backup_file"]).read_text() == KUBEADM and oct(Path(done["backup_file"]).stat().st_mode)[-3:] == "600"
    assert oct(manifest.stat().st_mode)[-3:] == "600"
    assert sorted(p.name for p in manifests.iterdir()) == ["kube-apiserver.yaml"]
    assert run_module(args)["changed"] is False
    assert len(list(backup.iterdir())) == 1


def test_diff_mode_lists_the_changes_without_the_manifest_content(tmp_path):
    """--diff (with the default output, as an operator sees it) names what changes, never the manifest's
    other lines: a flag there may carry a secret."""
    secret = "--oidc-client-secret=s3cr3t-manifest-value-7f1d"
    manifests, backup, enc = tmp_path / "manifests", tmp_path / "backup", tmp_path / "encryption"
    manifests.mkdir()
    enc.mkdir()
    (enc / "encryption-config.yaml").write_text("kind: EncryptionConfiguration\n")
    manifest = manifests / "kube-apiserver.yaml"
    text = KUBEADM.replace("    - --secure-port=6443\n", f"    - --secure-port=6443\n    - {secret}\n")
    assert secret in text
    manifest.write_text(text)
    args = {"path": str(manifest), "encryption_config": str(enc / "encryption-config.yaml"), "backup_dir": str(backup)}
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump([{"name": "Point kube-apiserver at the EncryptionConfiguration",
                                         "hosts": "localhost", "gather_facts": False,
                                         "tasks": [{"name": "Edit the manifest", "kube_apiserver_manifest": args}]}]))
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_MODULE_UTILS": str(MODULE_UTILS),
           "ANSIBLE_LIBRARY": str(LIBRARY), "ANSIBLE_STDOUT_CALLBACK": "default",
           "ANSIBLE_PYTHON_INTERPRETER": str(VENV_BIN / "python"),
           "ANSIBLE_LOCALHOST_WARNING": "0", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0"}
    p = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-c", "local", "-i", "localhost,", str(playbook), "--diff"],
                       capture_output=True, text=True, env=env, timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert f"add --encryption-provider-config={enc}/encryption-config.yaml" in out, out
    assert "s3cr3t-manifest-value-7f1d" not in out and "--secure-port" not in out, out
    assert secret in manifest.read_text()


# ---------------------------------------------------------------------------- the corpus
# Real manifests as kubeadm, kind and minikube wrote them (tests/testdata/kubeadm/PROVENANCE.md).

CORPUS = sorted((REPO_ROOT / "tests" / "testdata" / "kubeadm" / "manifests").glob("*.yaml"))


def strict_load(text: str):
    """Parsed by PyYAML and by ruamel.yaml's strict YAML 1.2 loader; both must agree."""
    from ruamel.yaml import YAML
    a = yaml.safe_load(text)
    b = YAML(typ="safe", pure=True).load(text)
    assert json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)
    return a


def read_bytes_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8")


def test_corpus_has_ten_real_manifests_from_kubeadm_kind_and_minikube_1_21_to_1_34():
    real = [p for p in CORPUS if not p.name.startswith("derived-")]
    assert len(real) >= 10, real
    versions = {yaml.safe_load(p.read_text())["spec"]["containers"][0]["image"].rsplit(":v", 1)[1] for p in real}
    minors = {int(v.split(".")[1]) for v in versions}
    assert min(minors) == 21 and max(minors) == 34, versions
    provenance = (REPO_ROOT / "tests" / "testdata" / "kubeadm" / "PROVENANCE.md").read_text()
    for p in CORPUS:
        assert f"`{p.name}`" in provenance, f"{p.name} has no provenance entry"
    for p in CORPUS:
        if p.name.startswith("derived-"):
            assert re.search(rf"`{re.escape(p.name)}`[^\n]*derived from", provenance), p.name


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_corpus_manifest_is_patched_refused_or_merged_exactly_as_specified(path):
    text = read_bytes_text(path)
    before = m.facts(text)
    assert before["advertise_address"] and before["secure_port"] in (6443, 8443)
    nl = "\r\n" if "\r\n" in text else "\n"
    if before["encryption_config"] is None:
        after, changes = m.plan(text, spec())
        removed, added = changed_lines(text, after)
        assert removed == [], "an original line was changed or removed"
        assert f"    - {FLAG}" in added and len(changes) == 3
    else:
        # Another EncryptionConfiguration: refused by default, naming the file and the option.
        with pytest.raises(m.ManifestError) as refused:
            m.plan(text, spec())
        assert before["encryption_config"] in str(refused.value)
        assert "kube_apiserver_kms_existing_config: merge" in str(refused.value)
        after, changes = m.plan(text, spec(existing_config="merge"))
        removed, added = changed_lines(text, after)
        assert len(removed) == 1 and before["encryption_config"] in removed[0]
        # The flag line is replaced in place: same indentation, same trailing comment.
        assert added[0] == removed[0].replace(before["encryption_config"], CONFIG)
    # Valid YAML for strict loaders, the flag once, every other flag kept in order, CRLF kept.
    doc, orig = strict_load(after), yaml.safe_load(text)
    command = apiserver(doc)["command"]
    assert [a for a in command if a.startswith("--encryption-provider-config=")] == [FLAG]
    assert [a for a in command if a != FLAG] == [a for a in apiserver(orig)["command"]
                                                  if not a.startswith("--encryption-provider-config=")]
    assert all(line.endswith(nl) for line in after.splitlines(True))
    assert m.facts(after)["automatic_reload"] == before["automatic_reload"], "automatic reload is kept"
    # Idempotent.
    merge = "merge" if before["encryption_config"] else "refuse"
    assert m.plan(after, spec(existing_config=merge)) == (after, [])
    # state=absent takes out exactly what was added (and puts the old flag back in merge mode).
    restored, _ = m.plan(after, spec(state="absent", previous_config=before["encryption_config"]))
    assert restored == text
    assert m.plan(restored, spec(state="absent", previous_config=before["encryption_config"]))[1] == []


def test_absent_refuses_to_remove_an_entry_it_did_not_add():
    after, _ = m.plan(KUBEADM, spec())
    changed = after.replace("      path: /run/openbao-kms\n", "      path: /run/elsewhere\n")
    with pytest.raises(m.ManifestError, match="not what this module adds"):
        m.plan(changed, spec(state="absent"))


def test_facts_read_the_advertise_address_from_the_flag_or_the_annotation():
    assert m.facts(KUBEADM)["advertise_address"] == "172.18.0.2"
    no_flag = KUBEADM.replace("    - --advertise-address=172.18.0.2\n", "")
    assert (m.facts(no_flag)["advertise_address"], m.facts(no_flag)["secure_port"]) == ("172.18.0.2", 6443)
