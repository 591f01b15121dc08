"""The Ansible rollout (ansible/): lint, the OpenBao role against a real OpenBao dev server, and the
control-plane roles on the real control plane (see test_ansible_rollout.py)."""

from __future__ import annotations

import base64
import os
import subprocess

import pytest

from ansible_helpers import (ANSIBLE_DIR, VENV_BIN, JwtSigner, localhost_inventory, provider_binary, run_playbook)
from ansible_helpers import transit_vars as ansible_transit_vars
from openbao import BaoDevServer

MOUNT, KEY, POLICY, ROLE = "kms-transit", "cluster-a", "bao-kms-provider", "bao-kms-provider"


def test_ansible_lint_production_profile_passes():
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}", "NO_COLOR": "1"}
    p = subprocess.run([str(VENV_BIN / "ansible-lint"), "--offline", "--profile", "production", "--nocolor"],
                       cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"ansible-lint failed:\n{p.stdout}\n{p.stderr}"


def transit_vars(bao: BaoDevServer, signer: JwtSigner, **overrides) -> dict:
    return ansible_transit_vars(bao, signer, **{
        "openbao_transit_mount": MOUNT,
        "openbao_transit_key_name": KEY,
        "openbao_transit_policy_name": POLICY,
        "openbao_transit_jwt_role": ROLE,
        "openbao_transit_token_ttl": 1800,
        "openbao_transit_token_max_ttl": 7200,
        **overrides})


def binary_policy(bao: BaoDevServer, tmp_path) -> str:
    """What `bao-kms-provider policy` prints for the same mount and key."""
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[openbao]\naddress = "{bao.addr}"\nca_file = "{bao.ca}"\ninstance_id = "test"\n'
                   f'[auth.jwt]\njwt_file = "{tmp_path}/identity.jwt"\n'
                   f'[transit]\nmount_path = "{MOUNT}"\nkey_name = "{KEY}"\n'
                   '[transit.key_id_scope]\ncluster_id = "c"\ntransit_mount_id = "m"\nkey_lineage_id = "l"\n')
    p = subprocess.run([str(provider_binary()), "policy", "--config", str(cfg)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.fixture(scope="module")
def transit_runs(openbao, signer):
    """The OpenBao playbook run twice against a fresh dev server."""
    first = run_playbook("playbooks/openbao.yml", localhost_inventory(), transit_vars(openbao, signer)).assert_ok()
    second = run_playbook("playbooks/openbao.yml", localhost_inventory(), transit_vars(openbao, signer)).assert_ok()
    return first, second


def test_openbao_transit_second_run_changes_nothing(transit_runs):
    first, second = transit_runs
    # mount, disable_upsert, key, policy, auth method, JWT config, role
    assert first.changed("localhost") == 7, first.output
    assert second.changed("localhost") == 0, second.output


def test_openbao_transit_never_prints_the_token(openbao, transit_runs):
    for run in transit_runs:
        assert openbao.root_token not in run.output


def test_openbao_transit_key_and_mount_are_locked_down(openbao, transit_runs):
    status, key = openbao.api("GET", f"{MOUNT}/keys/{KEY}")
    assert status == 200
    d = key["data"]
    assert (d["type"], d["exportable"], d["allow_plaintext_backup"], d["deletion_allowed"]) == \
        ("aes256-gcm96", False, False, False)
    status, cfg = openbao.api("GET", f"{MOUNT}/config/keys")
    assert status == 200 and cfg["data"]["disable_upsert"] is True
    status, role = openbao.api("GET", f"auth/jwt/role/{ROLE}")
    assert status == 200
    r = role["data"]
    assert (r["bound_subject"], r["bound_audiences"], r["token_policies"], r["token_ttl"], r["token_max_ttl"]) == \
        ("system:bao-kms-provider", ["bao-kms-provider"], [POLICY], 1800, 7200)


def test_openbao_transit_policy_is_byte_for_byte_the_binary_policy(openbao, transit_runs, tmp_path):
    status, pol = openbao.api("GET", f"sys/policies/acl/{POLICY}")
    assert status == 200
    assert pol["data"]["policy"] == binary_policy(openbao, tmp_path)


def test_provider_token_can_encrypt_and_decrypt_but_gets_403_on_rotate_export_backup_delete(
        openbao, signer, transit_runs):
    status, login = openbao.api("POST", "auth/jwt/login", token=None, body={"role": ROLE, "jwt": signer.mint()})
    assert status == 200, login
    token = login["auth"]["client_token"]
    assert login["auth"]["lease_duration"] == 1800
    plaintext = base64.b64encode(os.urandom(32)).decode()
    status, enc = openbao.api("POST", f"{MOUNT}/encrypt/{KEY}", token, {"plaintext": plaintext})
    assert status == 200, enc
    status, dec = openbao.api("POST", f"{MOUNT}/decrypt/{KEY}", token, {"ciphertext": enc["data"]["ciphertext"]})
    assert status == 200 and dec["data"]["plaintext"] == plaintext
    forbidden = [
        ("POST", f"{MOUNT}/keys/{KEY}/rotate", None),
        ("GET", f"{MOUNT}/export/encryption-key/{KEY}", None),
        ("GET", f"{MOUNT}/backup/{KEY}", None),
        ("DELETE", f"{MOUNT}/keys/{KEY}", None),
        ("POST", f"{MOUNT}/keys/{KEY}/config", {"deletion_allowed": True}),
        ("POST", f"{MOUNT}/keys/another-key", {"type": "aes256-gcm96"}),
    ]
    for method, path, body in forbidden:
        status, resp = openbao.api(method, path, token, body)
        assert status == 403, f"{method} {path} answered {status} {resp}, expected 403"
    # A JWT for another subject does not get in.
    status, _ = openbao.api("POST", "auth/jwt/login", token=None,
                            body={"role": ROLE, "jwt": signer.mint(sub="system:someone-else")})
    assert status in (400, 403)


def test_openbao_transit_repairs_drift_and_refuses_an_exportable_key(openbao, signer, transit_runs):
    # Someone allowed deletion and loosened the policy by hand: one run puts both back.
    assert openbao.api("POST", f"{MOUNT}/keys/{KEY}/config", body={"deletion_allowed": True})[0] in (200, 204)
    assert openbao.api("PUT", f"sys/policies/acl/{POLICY}", body={"policy": 'path "*" { capabilities = ["sudo"] }'})[0] in (200, 204)
    run = run_playbook("playbooks/openbao.yml", localhost_inventory(), transit_vars(openbao, signer)).assert_ok()
    assert run.changed("localhost") == 2, run.output
    assert openbao.api("GET", f"{MOUNT}/keys/{KEY}")[1]["data"]["deletion_allowed"] is False
    assert 'path "*"' not in openbao.api("GET", f"sys/policies/acl/{POLICY}")[1]["data"]["policy"]
    # An exportable key can never be made safe again: the role stops and says so.
    assert openbao.api("POST", f"{MOUNT}/keys/leaky", body={"type": "aes256-gcm96", "exportable": True})[0] in (200, 204)
    run = run_playbook("playbooks/openbao.yml", localhost_inventory(),
                       transit_vars(openbao, signer, openbao_transit_key_name="leaky"))
    assert run.rc != 0
    assert "exportable=True" in run.output and "use a new key name" in run.output, run.output


@pytest.mark.parametrize("overrides", [
    {"openbao_transit_address": "http://openbao.invalid:8200"},
    {"openbao_transit_address": "https://openbao.invalid:8200", "openbao_transit_validate_certs": False},
    {"openbao_transit_address": "http://128.0.0.1:8200"},
], ids=["http-remote", "no-cert-check-remote", "http-outside-127-8"])
def test_openbao_transit_refuses_plain_http_or_no_cert_check_to_a_remote_openbao(openbao, signer, overrides):
    run = run_playbook("playbooks/openbao.yml", localhost_inventory(), transit_vars(openbao, signer, **overrides))
    assert run.rc != 0
    assert "openbao_transit_address must be" in run.output and "loopback" in run.output, run.output
    assert "openbao_transit_allow_insecure" in run.output, run.output
    assert "Read the secrets engines" not in run.output, run.output
    assert openbao.root_token not in run.output


def test_openbao_transit_allows_no_cert_check_on_loopback(openbao, signer, transit_runs):
    for host in ("localhost", "127.0.0.1"):
        run = run_playbook("playbooks/openbao.yml", localhost_inventory(),
                           transit_vars(openbao, signer, openbao_transit_address=f"https://{host}:{openbao.port}",
                                        openbao_transit_ca_file="", openbao_transit_validate_certs=False)).assert_ok()
        assert run.changed("localhost") == 0, run.output


def test_openbao_transit_allow_insecure_lets_a_remote_http_address_through_the_check(openbao, signer):
    run = run_playbook("playbooks/openbao.yml", localhost_inventory(),
                       transit_vars(openbao, signer, openbao_transit_address="http://openbao.invalid:8200",
                                    openbao_transit_allow_insecure=True))
    # Past the check, the role tries the (unresolvable) address and fails there.
    assert run.rc != 0
    assert "openbao_transit_address must be" not in run.output, run.output
    assert "Read the secrets engines" in run.output, run.output
