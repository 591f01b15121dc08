"""`bao-kms-provider encryption-config` output for odd resources, provider names and timeouts: it
parses with strict YAML loaders (PyYAML safe_load, YAML 1.1 typing; ruamel.yaml 'safe', YAML 1.2) to
exactly the intended strings, and the timeout is in Go's time.ParseDuration grammar (kube-apiserver
parses it with that)."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml
from ruamel.yaml import YAML

from openbao import provider_binary

# Go's time.ParseDuration: [-+]?([0-9]*(\.[0-9]*)?[a-z]+)+ with units ns us µs ms s m h; "0" alone.
GO_DURATION = re.compile(r"^[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+$")


def config(tmp_path, provider_name: str = "openbao-kms") -> str:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[openbao]\naddress = "http://127.0.0.1:8200"\ninstance_id = "t"\n'
                   f'[auth.jwt]\njwt_file = "{tmp_path}/identity.jwt"\n'
                   '[transit]\nmount_path = "transit"\nkey_name = "k"\n'
                   f'[transit.key_id_scope]\ncluster_id = "c"\ntransit_mount_id = "m"\nkey_lineage_id = "l"\n'
                   f'provider_name = "{provider_name}"\n')
    return str(cfg)


def render(cfg: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(provider_binary()), "encryption-config", "--config", cfg, *args],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("resources", ["*.*", "*.apps,secrets", "true,null,yes,on,1e3", "configmaps, secrets"])
@pytest.mark.parametrize("timeout, go", [("3s", "3s"), ("1500ms", "1500ms"), ("1m 30s", "90s"), ("2h", "7200s"),
                                         ("250us", "250us")])
def test_output_parses_strictly_to_strings_and_go_durations(tmp_path, resources, timeout, go):
    p = render(config(tmp_path), "--resources", resources, "--timeout", timeout)
    assert p.returncode == 0, p.stderr
    strict = YAML(typ="safe", pure=True)
    for doc in (yaml.safe_load(p.stdout), strict.load(p.stdout)):
        entry = doc["resources"][0]
        assert entry["resources"] == [r.strip() for r in resources.split(",")]
        assert all(isinstance(r, str) for r in entry["resources"])
        kms = entry["providers"][0]["kms"]
        assert kms["timeout"] == go and GO_DURATION.match(kms["timeout"]), kms
        assert entry["providers"][1] == {"identity": {}}


def test_a_provider_name_like_true_stays_a_string(tmp_path):
    p = render(config(tmp_path, provider_name="true"), "--no-identity")
    if p.returncode != 0:   # the config validation may refuse such a name: then it says so
        assert "provider_name" in p.stderr, p.stderr
        return
    kms = yaml.safe_load(p.stdout)["resources"][0]["providers"]
    assert kms == [{"kms": {"apiVersion": "v2", "name": "true", "endpoint": kms[0]["kms"]["endpoint"],
                            "timeout": "3s"}}]


@pytest.mark.parametrize("args, message", [(["--timeout", "0s"], "--timeout"), (["--resources", "secrets,,x"], "--resources")])
def test_zero_timeout_and_empty_resource_are_refused(tmp_path, args, message):
    p = render(config(tmp_path), *args)
    assert p.returncode != 0 and message in p.stderr, p.stdout + p.stderr
