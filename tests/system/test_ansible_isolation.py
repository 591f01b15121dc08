"""Cluster isolation on one OpenBao: the openbao_transit role run for two clusters with its
defaults (only the cluster name differs) gives each its own Transit key, policy and JWT role bound
to that cluster's JWT. Both clusters' real providers serve; a seed wrapped by cluster A's provider
does not decrypt with cluster B's token, although its associated data (built from the public
key_id) is known; and B's JWT cannot log in as A's role.

The JWTs of both clusters come from one issuer (one signer, one JWT auth mount), the harder case:
only the role's bound sub and aud keep them apart."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest

from ansible_helpers import JwtSigner, localhost_inventory, provider_binary, run_playbook, transit_vars
from openbao import BaoDevServer
from waiting import wait_until
from kube_rollout import provider_deb

CLUSTERS = ("alpha", "beta")


@pytest.fixture(scope="module")
def configured(openbao, signer):
    """The OpenBao playbook once per cluster, then once more for A (nothing may change)."""
    runs = {c: run_playbook("playbooks/openbao.yml", localhost_inventory(),
                            transit_vars(openbao, signer, openbao_transit_cluster_name=c)).assert_ok()
            for c in CLUSTERS}
    again = run_playbook("playbooks/openbao.yml", localhost_inventory(),
                         transit_vars(openbao, signer, openbao_transit_cluster_name="alpha")).assert_ok()
    return runs, again


def jwt_for(signer: JwtSigner, cluster: str) -> str:
    """The JWT the cluster's identity issuer gives its control-plane hosts."""
    return signer.mint(sub=f"system:bao-kms-provider:{cluster}", aud=f"bao-kms-provider:{cluster}")


def login(bao: BaoDevServer, role: str, jwt: str) -> tuple[int, dict | None]:
    return bao.api("POST", "auth/jwt/login", token=None, body={"role": role, "jwt": jwt})


class MachineProvider:
    """`bao-kms-provider serve` on this machine with the config the bao_kms_provider role renders
    for the cluster (key and JWT role derived from the same cluster name)."""

    def __init__(self, directory: Path, bao: BaoDevServer, cluster: str, jwt: str):
        self.dir, self.cluster = directory, cluster
        self.socket = directory / "kms.sock"
        self.config = directory / "config.toml"
        (directory / "state").mkdir(mode=0o700, parents=True)
        jwt_file = directory / "identity.jwt"
        jwt_file.write_text(jwt + "\n")
        jwt_file.chmod(0o600)
        self.config.write_text(f"""\
[server]
socket_path = "{self.socket}"
state_dir = "{directory / 'state'}"
drain_timeout = "2s"

[openbao]
address = "{bao.addr}"
ca_file = "{bao.ca}"
instance_id = "openbao-test"
timeout = "2s"

[auth]
method = "jwt"
[auth.jwt]
mount_path = "jwt"
role = "bao-kms-provider-{cluster}"
jwt_file = "{jwt_file}"

[transit]
mount_path = "transit"
key_name = "k8s-etcd-{cluster}"
[transit.key_id_scope]
provider_name = "openbao-kms"
cluster_id = "{cluster}"
transit_mount_id = "transit-test"
key_lineage_id = "lineage-1"

[status]
probe_interval = "1s"

[telemetry]
metrics_address = ""
health_address = ""
""")
        self.config.chmod(0o640)
        self.log = directory / "provider.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "MachineProvider":
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([str(provider_binary()), "serve", "--config", str(self.config)],
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        probe = subprocess.run([str(provider_binary()), "probe", "--socket", str(self.socket), "--wait", "30s"],
                               capture_output=True, text=True, timeout=60)
        assert probe.returncode == 0, probe.stdout + probe.stderr + self.log.read_text(errors="replace")[-3000:]
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def stub(self, kms_pb):
        import grpc
        _, api_pb2_grpc = kms_pb
        channel = grpc.insecure_channel(f"unix://{self.socket}", options=[("grpc.default_authority", "localhost")])
        return api_pb2_grpc.KeyManagementServiceStub(channel)


@pytest.fixture(scope="module")
def providers(openbao, signer, configured, tmp_path_factory):
    started: dict[str, MachineProvider] = {}
    try:
        for c in CLUSTERS:
            started[c] = MachineProvider(tmp_path_factory.mktemp(f"provider-{c}"), openbao, c,
                                         jwt_for(signer, c)).start()
        yield started
    finally:
        for p in started.values():
            p.stop()


def test_each_cluster_gets_its_own_key_policy_and_jwt_role(openbao, configured):
    runs, again = configured
    for c in CLUSTERS:
        # mount and disable_upsert (first cluster only), key, policy, JWT auth and config (first only), role
        assert runs[c].changed("localhost") == (7 if c == "alpha" else 3), runs[c].output
    assert again.changed("localhost") == 0, again.output
    for c in CLUSTERS:
        status, key = openbao.api("GET", f"transit/keys/k8s-etcd-{c}")
        assert status == 200, key
        status, pol = openbao.api("GET", f"sys/policies/acl/bao-kms-provider-{c}")
        assert status == 200, pol
        text = pol["data"]["policy"]
        assert f"transit/decrypt/k8s-etcd-{c}\"" in text
        other = next(o for o in CLUSTERS if o != c)
        assert f"k8s-etcd-{other}" not in text and "*" not in text
        status, role = openbao.api("GET", f"auth/jwt/role/bao-kms-provider-{c}")
        assert status == 200, role
        r = role["data"]
        assert (r["bound_subject"], r["bound_audiences"], r["token_policies"]) == \
            (f"system:bao-kms-provider:{c}", [f"bao-kms-provider:{c}"], [f"bao-kms-provider-{c}"])
    # The single-cluster names are not created by default.
    assert openbao.api("GET", "transit/keys/k8s-etcd")[0] == 404
    assert openbao.api("GET", "auth/jwt/role/bao-kms-provider")[0] in (400, 404)


def test_a_seed_of_cluster_a_does_not_decrypt_with_cluster_b_token(openbao, signer, providers, kms_pb):
    api_pb2, _ = kms_pb
    a, b = (providers[c].stub(kms_pb) for c in CLUSTERS)
    seed = os.urandom(32)
    enc = a.Encrypt(api_pb2.EncryptRequest(plaintext=seed, uid="isolation-a"), timeout=10)
    assert enc.ciphertext.startswith(b"vault:v"), enc.ciphertext[:16]
    # Each provider decrypts its own seeds.
    dec = a.Decrypt(api_pb2.DecryptRequest(ciphertext=enc.ciphertext, uid="isolation-a", key_id=enc.key_id,
                                           annotations=dict(enc.annotations)), timeout=10)
    assert dec.plaintext == seed
    enc_b = b.Encrypt(api_pb2.EncryptRequest(plaintext=seed, uid="isolation-b"), timeout=10)
    assert b.Decrypt(api_pb2.DecryptRequest(ciphertext=enc_b.ciphertext, uid="isolation-b", key_id=enc_b.key_id,
                                            annotations=dict(enc_b.annotations)), timeout=10).plaintext == seed

    # Cluster B's token, with everything an attacker on B's hosts can know about A's seed: the
    # ciphertext and the key_id stored beside it in etcd, hence the associated data.
    status, auth = login(openbao, "bao-kms-provider-beta", jwt_for(signer, "beta"))
    assert status == 200, auth
    token_b = auth["auth"]["client_token"]
    aad = base64.b64encode(b"bao-kms-provider/v1/" + enc.key_id.encode()).decode()
    body = {"ciphertext": enc.ciphertext.decode(), "associated_data": aad}
    status, resp = openbao.api("POST", "transit/decrypt/k8s-etcd-alpha", token_b, body)
    assert status == 403, f"cluster B's token decrypted cluster A's seed: {status} {resp}"
    assert "permission denied" in " ".join(resp["errors"]), resp
    # ... while A's own token, with the same request, gets the seed: the 403 is the policy's doing.
    status, auth = login(openbao, "bao-kms-provider-alpha", jwt_for(signer, "alpha"))
    assert status == 200, auth
    status, resp = openbao.api("POST", "transit/decrypt/k8s-etcd-alpha", auth["auth"]["client_token"], body)
    assert status == 200 and base64.b64decode(resp["data"]["plaintext"]) == seed, resp
    # B's key under A's ciphertext: a different key, so Transit cannot open it either.
    status, resp = openbao.api("POST", "transit/decrypt/k8s-etcd-beta", token_b, body)
    assert status != 200, resp


def test_cluster_b_jwt_cannot_log_in_as_cluster_a(openbao, signer, configured):
    status, _ = login(openbao, "bao-kms-provider-alpha", jwt_for(signer, "beta"))
    assert status in (400, 403)
    # Right subject, wrong audience (a token minted for another cluster's audience) is refused too.
    status, _ = login(openbao, "bao-kms-provider-alpha",
                      signer.mint(sub="system:bao-kms-provider:alpha", aud="bao-kms-provider:beta"))
    assert status in (400, 403)


def test_a_provider_of_cluster_b_pointed_at_cluster_a_key_does_not_serve(openbao, signer, configured,
                                                                          tmp_path):
    """B's host with a config naming A's key: its token has no grant on that key, so `probe`
    never passes and the provider does not become ready."""
    p = MachineProvider(tmp_path / "b-on-a", openbao, "beta", jwt_for(signer, "beta"))
    p.config.write_text(p.config.read_text().replace('key_name = "k8s-etcd-beta"', 'key_name = "k8s-etcd-alpha"'))
    with open(p.log, "wb") as log:
        p.proc = subprocess.Popen([str(provider_binary()), "serve", "--config", str(p.config)],
                                  stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        probe = subprocess.run([str(provider_binary()), "probe", "--socket", str(p.socket), "--wait", "8s"],
                               capture_output=True, text=True, timeout=60)
        assert probe.returncode != 0, probe.stdout
        wait_until(lambda: "permission denied" in p.log.read_text(errors="replace").lower(),
                   "the provider to log OpenBao's 'permission denied'", 30,
                   context=lambda: f"log:\n{p.log.read_text(errors='replace')[-3000:]}")
    finally:
        p.stop()


def test_the_role_refuses_without_a_cluster_name_or_a_key_name(openbao, signer):
    run = run_playbook("playbooks/openbao.yml", localhost_inventory(), transit_vars(openbao, signer))
    assert run.rc != 0
    assert "set openbao_transit_cluster_name" in run.output, run.output
    assert "openbao_transit_key_name: k8s-etcd" in run.output, run.output
    run = run_playbook("playbooks/openbao.yml", localhost_inventory(),
                       transit_vars(openbao, signer, openbao_transit_cluster_name="Not_A_Label"))
    assert run.rc != 0 and "DNS label" in run.output, run.output


HOST_PLAYBOOK = """\
- name: Install bao-kms-provider on one host
  hosts: all
  gather_facts: true
  gather_subset: [min]
  roles:
    - bao_kms_provider
"""


def host_vars(c, request, openbao: BaoDevServer, signer: JwtSigner, **more) -> dict:
    """cp1's variables for the host role: the container, the session's package, cluster alpha."""
    return {
        "ansible_connection": "nsenter", "ansible_nsenter_pid": c.pid,
        "ansible_python_interpreter": "/usr/bin/python3", "ansible_become": False,
        "bao_kms_provider_package_file": str(provider_deb(request)),
        "bao_kms_provider_openbao_address": openbao.addr,
        "bao_kms_provider_openbao_ca_src": str(openbao.ca),
        "bao_kms_provider_openbao_instance_id": "openbao-test",
        "bao_kms_provider_jwt": jwt_for(signer, "alpha"),
        "bao_kms_provider_cluster_id": "alpha",
        "bao_kms_provider_transit_mount_id": "transit-test",
        "bao_kms_provider_key_lineage_id": "lineage-1",
        **more,
    }


def test_bao_kms_provider_role_renders_the_cluster_key_and_refuses_to_switch_it(
        openbao, signer, configured, make_container, tmp_path, request):
    """The host role, given only the cluster name, renders the key and JWT role the OpenBao role
    created (the provider passes its probe with them); pointed at another cluster afterwards, it
    refuses instead of switching the host to a key that cannot decrypt its seeds."""
    from openbao import free_port
    c = make_container()
    playbook = tmp_path / "host.yml"
    playbook.write_text(HOST_PLAYBOOK)
    host = host_vars(c, request, openbao, signer,
                     bao_kms_provider_metrics_address=f"127.0.0.1:{free_port()}",
                     bao_kms_provider_health_address=f"127.0.0.1:{free_port()}")
    inventory = {"all": {"vars": {"openbao_transit_cluster_name": "alpha"}, "hosts": {"cp1": host}}}
    run_playbook(str(playbook), inventory).assert_ok()
    config = c.read_file("/etc/openbao-kms/config.toml")
    assert 'key_name = "k8s-etcd-alpha"' in config and 'role = "bao-kms-provider-alpha"' in config, config

    inventory["all"]["vars"]["openbao_transit_cluster_name"] = "beta"
    host["bao_kms_provider_jwt"] = jwt_for(signer, "beta")
    run = run_playbook(str(playbook), inventory)
    assert run.rc != 0
    assert "uses the Transit key 'k8s-etcd-alpha'" in run.output, run.output
    assert "bao_kms_provider_transit_key_name" in run.output, run.output
    assert c.read_file("/etc/openbao-kms/config.toml") == config


def test_bao_kms_provider_role_refuses_a_jwt_file_in_a_root_owned_directory(openbao, signer, make_container, tmp_path,
                                                                           request):
    """The role makes the JWT's directory openbao-kms's: a jwt_file in /etc/openbao-kms (or another
    root-owned directory) is refused before the role touches the host, naming the variable."""
    c = make_container()
    playbook = tmp_path / "host.yml"
    playbook.write_text(HOST_PLAYBOOK)
    host = host_vars(c, request, openbao, signer)
    inventory = {"all": {"vars": {"openbao_transit_cluster_name": "alpha"}, "hosts": {"cp1": host}}}
    for jwt_file in ("/etc/openbao-kms/identity.jwt", "/etc/openbao-kms/tls/identity.jwt", "/etc//openbao-kms/x.jwt",
                     "/etc/identity.jwt", "/var/lib/identity.jwt", "/identity.jwt", "relative/identity.jwt",
                     "/var/lib/openbao-kms/../../../etc/openbao-kms/identity.jwt"):
        host["bao_kms_provider_jwt_file"] = jwt_file
        run = run_playbook(str(playbook), inventory)
        assert run.rc != 0, run.output
        assert f"bao_kms_provider_jwt_file '{jwt_file}' is not allowed" in run.output, run.output
        assert run.changed("cp1") == 0, run.output
    assert c.run(["test", "!", "-e", "/etc/openbao-kms"]).returncode == 0
