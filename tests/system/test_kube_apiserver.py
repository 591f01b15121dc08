"""The product against Kubernetes itself: the real kube-apiserver, etcd, kubeadm and kubectl.

One control-plane host (kube_cluster.py: real kubeadm output, the etcd and kube-apiserver static
pods run by the static-pod runner standing in for kubelet), the packaged provider under systemd,
a real OpenBao with TLS reached through a proxy the test can take down. `playbooks/site.yml` rolls
out with the role's defaults except the static-pod commands; then the tests mirror what
Kubernetes' own KMS v2 integration tests assert. They run in file order: each builds on the state
the one before left (creates, restart, rotation, outages).
"""

from __future__ import annotations

import base64
import concurrent.futures
import functools
import http.client
import importlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from waiting import wait_until  # noqa: E402
from kube_rollout import (ENC_CONFIG, PREFIX, PROVIDER, STATUS_METRIC, KubeRollout, kube_hash,  # noqa: E402
                          kube_rollout, sum_samples)
from openbao import REPO_ROOT  # noqa: E402
from provider_host import SOCKET, host_socket  # noqa: E402

NS = "kms-test"
MARKER = "bao-kms-provider-marker-9f3c2a"
CREATES = 1000
# k8s.io/apiserver pkg/storage/etcd3/watcher.go processEventConcurrency (ConcurrentWatchObjectDecode).
WATCH_DECODE_CONCURRENCY = 10
# The restart storm: Secrets under this many DEK seeds, OpenBao answering this slowly and throttled
# by a real rate-limit quota on transit/.
STORM_NS, STORM_SEEDS, STORM_PER_SEED = "kms-storm", 150, 2
STORM_DELAY = 1.0
# 20/s is more than kube-apiserver asks for at 1 s per answer (6-8 Decrypts in flight); 5/s is less,
# so the quota answers 429 and the provider's back-off is part of the storm.
STORM_RATES = [20, 5]
# Requests the provider counts without sending them to OpenBao (docs/reliability.md).
NOT_SENT = {"retry_budget_exhausted", "deadline_too_short", "overloaded"}


def envelope_pb(workdir: Path):
    """Python stubs of proto/encrypted_object.proto (kube-apiserver's EncryptedObject)."""
    from grpc_tools import protoc
    out = workdir / "eo-stubs"
    out.mkdir(exist_ok=True)
    proto = REPO_ROOT / "proto"
    assert protoc.main(["protoc", f"-I{proto}", f"--python_out={out}", str(proto / "encrypted_object.proto")]) == 0
    sys.path.insert(0, str(out))
    return importlib.import_module("encrypted_object_pb2")


class Cluster(KubeRollout):
    """The rollout (kube_rollout.py) plus what these tests read: Status, metrics, etcd envelopes."""

    def __init__(self, *args, kms_pb, eo_pb):
        super().__init__(*args)
        self.eo_pb = eo_pb
        self.api_pb2, api_grpc = kms_pb
        self.host = self.cp.hosts[0]
        self.api = self.cp.api(0)
        self.etcd = self.cp.etcd()
        import grpc
        # A channel like kube-apiserver's, to read the provider's Status without moving its counters.
        self._stub = api_grpc.KeyManagementServiceStub(grpc.insecure_channel(
            f"unix://{host_socket(self.host.c)}", options=[("grpc.default_authority", "localhost")]))

    def status_key_id(self) -> str:
        return self._stub.Status(self.api_pb2.StatusRequest(), timeout=5).key_id

    def provider_metrics(self) -> str:
        """The provider's /metrics text (read inside the host)."""
        return self.host.c.run(["python3", "-c", "import urllib.request;print(urllib.request.urlopen("
                                "'http://127.0.0.1:8081/metrics', timeout=5).read().decode())"]).stdout

    def provider_metric(self, name: str, **labels: str) -> float:
        """Sum of the provider's /metrics samples of `name` matching `labels`."""
        return sum_samples(self.provider_metrics(), name, labels)

    def openbao_requests(self, operation: str) -> dict[str, float]:
        """The provider's `openbao_kms_openbao_requests_total` for `operation`, by status."""
        out: dict[str, float] = {}
        for line in self.provider_metrics().splitlines():
            m = re.match(r"^openbao_kms_openbao_requests_total\{(.*)\} (\S+)$", line)
            if m:
                labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1)))
                if labels.get("operation") == operation:
                    out[labels["status"]] = out.get(labels["status"], 0.0) + float(m.group(2))
        return out

    def create(self, name: str, value: str, conn=None) -> dict:
        body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
                "data": {"value": base64.b64encode(value.encode()).decode()}}
        status, out = self.api.request("POST", f"/api/v1/namespaces/{NS}/secrets", body, conn=conn)
        assert status == 201, out
        return out

    def envelopes(self) -> dict[str, object]:
        """Every Secret in etcd stored through the provider, parsed (EncryptedObject)."""
        out = {}
        for key, value in self.etcd.range("/registry/secrets/").items():
            if value.startswith(PREFIX):
                obj = self.eo_pb.EncryptedObject()
                obj.ParseFromString(value[len(PREFIX):])
                out[key] = obj
        return out

    def scan(self, prefix: str) -> tuple[int, dict]:
        """`bao-kms-provider scan-etcd --output json` on the host, as an operator runs it there
        (its config and key registry, kubeadm's etcd client certificate): exit code and report."""
        pki = "/etc/kubernetes/pki"
        r = self.host.c.run(["bao-kms-provider", "scan-etcd", "--prefix", prefix, "--output", "json",
                             "--etcd-endpoint", "https://127.0.0.1:2379", "--etcd-cacert", f"{pki}/etcd/ca.crt",
                             "--etcd-cert", f"{pki}/apiserver-etcd-client.crt",
                             "--etcd-client-key", f"{pki}/apiserver-etcd-client.key"], check=False, text=True)
        assert r.stdout.startswith("{"), f"rc={r.returncode}\n{r.stdout}{r.stderr}"
        return r.returncode, json.loads(r.stdout)

    def doctor_kube(self, config: str = "/etc/openbao-kms/config.toml") -> tuple[int, dict[str, str]]:
        """`bao-kms-provider doctor --kube` on the host with admin.conf: exit code, and each
        kube-* check's line."""
        r = self.host.c.run(["bao-kms-provider", "doctor", "--config", config, "--kube"], check=False,
                            text=True, timeout=120)
        lines = {m.group(2): m.group(0) for m in re.finditer(r"^(\S+)\s+(kube-[a-z-]+): .*$", r.stdout, re.M)}
        assert set(lines) == {"kube-readyz", "kube-provider", "kube-key-id"}, f"{r.stdout}{r.stderr}"
        return r.returncode, lines

    def poke_readyz(self) -> tuple[int, str]:
        """kube-apiserver's KMS health check; also makes it call Status (instead of waiting a minute)."""
        return self.api.readyz("kms-providers")


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory, nspawn_rootfs, kms_pb):
    work = tmp_path_factory.mktemp("kube")
    make = functools.partial(Cluster, kms_pb=kms_pb, eo_pb=envelope_pb(work))
    with kube_rollout(request, work, nspawn_rootfs, make=make, hosts=1) as k:
        status, out = k.api.request("POST", "/api/v1/namespaces",
                                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        assert status == 201, out
        # Written before the rollout: stored in plaintext (identity), must stay readable.
        k.create("before-rollout", "written before the rollout")
        k.play("site-1").assert_ok()
        k.play("site-2").assert_ok()
        yield k


def test_site_playbook_rolls_out_on_the_real_kube_apiserver_and_a_second_run_changes_nothing(cluster):
    first, second = cluster.runs["site-1"], cluster.runs["site-2"]
    out = first.output
    read = out.index("PLAY [Install bao-kms-provider and let every API server read through it]")
    write = out.index("PLAY [Make every API server write through bao-kms-provider]")
    assert "EncryptionConfiguration for stage read: secrets = identity, kms:openbao-kms" in out[read:write], out
    assert "EncryptionConfiguration for stage write: secrets = kms:openbao-kms, identity" in out[write:], out
    # The real kube-apiserver stored the canary by identity while reading through the provider, then
    # through the provider, and the provider decrypted it from etcd; kubeadm-config got the flag.
    assert "bao-kms-provider-canary in etcd is stored by identity" in out[read:write], out
    assert "bao-kms-provider-canary in etcd is stored by kms:openbao-kms" in out[write:], out
    assert re.search(r"Stop unless the provider decrypts the canary from etcd\] \*+\nok: \[cp1\]", out), out
    assert "set extraArgs encryption-provider-config=" + ENC_CONFIG in out, out
    assert second.changed(cluster.host.name) == 0, second.output
    assert second.changed("localhost") == 0, second.output


def test_the_real_kubeadm_config_keeps_the_flag_and_both_mounts(cluster):
    import yaml
    out = cluster.host.kubectl("-n", "kube-system", "get", "configmap", "kubeadm-config", "-o", "json").stdout
    import json
    cc = yaml.safe_load(json.loads(out)["data"]["ClusterConfiguration"])
    args = cc["apiServer"]["extraArgs"]  # v1beta4: a list of name/value pairs; v1beta3: a map
    args = {a["name"]: a["value"] for a in args} if isinstance(args, list) else args
    assert args["encryption-provider-config"] == ENC_CONFIG, cc
    assert [v["name"] for v in cc["apiServer"]["extraVolumes"]] == ["openbao-kms-config", "openbao-kms-socket"], cc


def test_a_secret_is_a_kms_v2_envelope_in_etcd_under_the_status_key_id_and_never_plaintext(cluster):
    cluster.create("marker", MARKER)
    obj = cluster.envelopes()[f"/registry/secrets/{NS}/marker"]
    assert obj.keyID == cluster.status_key_id()
    assert obj.encryptedDEKSourceType == cluster.eo_pb.HKDF_SHA256_XNONCE_AES_GCM_SEED
    assert len(obj.encryptedDEKSource) > 0 and len(obj.encryptedData) > 32 + 12 + 16
    everything = cluster.etcd.range("/")
    for needle in (MARKER.encode(), base64.b64encode(MARKER.encode())):
        assert not [k for k, v in everything.items() if needle in v], "the marker is readable in etcd"
    status, out = cluster.api.request("GET", f"/api/v1/namespaces/{NS}/secrets/marker")
    assert status == 200 and base64.b64decode(out["data"]["value"]).decode() == MARKER
    # The plaintext Secret from before the rollout still reads (identity stays behind kms).
    status, out = cluster.api.request("GET", f"/api/v1/namespaces/{NS}/secrets/before-rollout")
    assert status == 200 and base64.b64decode(out["data"]["value"]).decode() == "written before the rollout"
    etcd = ["--etcd-endpoint", f"https://127.0.0.1:2379", "--etcd-cacert", "/etc/kubernetes/pki/etcd/ca.crt",
            "--etcd-cert", "/etc/kubernetes/pki/apiserver-etcd-client.crt",
            "--etcd-client-key", "/etc/kubernetes/pki/apiserver-etcd-client.key"]
    r = cluster.host.c.run(["bao-kms-provider", "verify-etcd-value", "--config", "/etc/openbao-kms/config.toml",
                            "--key", f"/registry/secrets/{NS}/marker", *etcd], check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_thousand_creates_reuse_one_dek_seed_and_never_call_encrypt(cluster):
    before = cluster.provider_metric("openbao_kms_grpc_requests_total", method="Encrypt")

    def create_range(start: int) -> None:
        conn = cluster.api.connection()
        try:
            for i in range(start, CREATES, 8):
                cluster.create(f"bulk-{i:04d}", f"value {i}", conn=conn)
        finally:
            conn.close()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(create_range, range(8)))
    assert cluster.provider_metric("openbao_kms_grpc_requests_total", method="Encrypt") == before
    bulk = [o for k, o in cluster.envelopes().items() if k.startswith(f"/registry/secrets/{NS}/bulk-")]
    assert len(bulk) == CREATES
    assert len({o.encryptedDEKSource for o in bulk}) == 1


def test_after_a_kube_apiserver_restart_everything_reads_back_with_one_decrypt_per_seed_at_most(cluster):
    before = cluster.provider_metric("openbao_kms_grpc_requests_total", method="Decrypt")
    cluster.host.restart_apiserver()
    status, out = cluster.api.request("GET", f"/api/v1/namespaces/{NS}/secrets")
    assert status == 200, out
    values = {i["metadata"]["name"]: base64.b64decode(i["data"]["value"]).decode() for i in out["items"]}
    assert values["marker"] == MARKER and values["before-rollout"] == "written before the rollout"
    assert all(values[f"bulk-{i:04d}"] == f"value {i}" for i in range(CREATES))
    seeds = {o.encryptedDEKSource for o in cluster.envelopes().values()}
    decrypts = cluster.provider_metric("openbao_kms_grpc_requests_total", method="Decrypt") - before
    # kube-apiserver has no single-flight on a DEK cache miss and decodes watch events with up to
    # WATCH_DECODE_CONCURRENCY goroutines, so one uncached seed can be asked for that many times at once.
    assert 1 <= decrypts <= len(seeds) * WATCH_DECODE_CONCURRENCY, (decrypts, len(seeds))


def test_a_transit_rotation_reaches_kube_apiserver_and_a_no_op_update_rewrites_once(cluster):
    old = cluster.status_key_id()
    status, out = cluster.bao.api("POST", "transit/keys/k8s-etcd/rotate")
    assert status in (200, 204), out
    new = wait_until(lambda: (k := cluster.status_key_id()) != old and k, "the provider to promote the new version", 60,
                     context=cluster.provider_logs)
    metric = STATUS_METRIC

    def apiserver_saw_new() -> bool:
        cluster.poke_readyz()
        return sum_samples(cluster.api.metrics(), metric, {"key_id_hash": kube_hash(new)}) > 0

    wait_until(apiserver_saw_new, "kube-apiserver's Status to see the new key_id", 120, interval=1,
               context=cluster.provider_logs)
    # The join of the alert BaoKmsKeyIdDiffersFromApiserver: kube-apiserver's key_id_hash and
    # provider_name labels are those of the provider's openbao_kms_key_id_info on the same host.
    assert sum_samples(cluster.api.metrics(), metric, {"key_id_hash": kube_hash(new), "provider_name": PROVIDER}) > 0
    assert cluster.provider_metric("openbao_kms_key_id_info", key_id_hash=kube_hash(new), provider_name=PROVIDER) == 1
    # A no-op update of an object stored under the old key_id rewrites it once, under the new one.
    status, obj = cluster.api.request("GET", f"/api/v1/namespaces/{NS}/secrets/bulk-0001")
    assert status == 200 and cluster.envelopes()[f"/registry/secrets/{NS}/bulk-0001"].keyID == old
    status, first = cluster.api.request("PUT", f"/api/v1/namespaces/{NS}/secrets/bulk-0001", obj)
    assert status == 200, first
    assert first["metadata"]["resourceVersion"] != obj["metadata"]["resourceVersion"]
    assert cluster.envelopes()[f"/registry/secrets/{NS}/bulk-0001"].keyID == new
    status, second = cluster.api.request("PUT", f"/api/v1/namespaces/{NS}/secrets/bulk-0001", first)
    assert status == 200 and second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    counted = sum_samples(cluster.api.metrics(), "apiserver_envelope_encryption_key_id_hash_total",
                          {"transformation_type": "to_storage", "key_id_hash": kube_hash(new)})
    assert counted >= 1
    # Values under the old key_id still read.
    status, out = cluster.api.request("GET", f"/api/v1/namespaces/{NS}/secrets/bulk-0002")
    assert status == 200 and base64.b64decode(out["data"]["value"]).decode() == "value 2"
    assert cluster.envelopes()[f"/registry/secrets/{NS}/bulk-0002"].keyID == old
    # scan-etcd on the host: the values not yet rewritten on the retired key_id, the rewritten one on
    # the active key_id, and the Secret written before the rollout still in plaintext (exit 3 wins).
    code, report = cluster.scan("/registry/secrets/")
    by_id = {k["key_id"]: k for k in report["key_ids"]}
    assert (by_id[old]["state"], by_id[new]["state"]) == ("retired", "active"), report
    assert by_id[old]["values"] >= CREATES - 1 and by_id[new]["values"] >= 1, report
    assert code == 3 and report["unencrypted"]["values"] >= 1, report
    assert report["values"] == len(cluster.etcd.range("/registry/secrets/")), report
    # doctor --kube: kube-apiserver is ready, polls this provider and is on its key_id.
    code, lines = cluster.doctor_kube()
    assert all(line.startswith("ok ") for line in lines.values()), lines
    assert kube_hash(new) in lines["kube-key-id"], lines
    # The same host's config under another provider name: kube-apiserver does not poll that one.
    cluster.host.c.run(["sh", "-c", "sed 's/^provider_name = .*/provider_name = \"other-kms\"/' "
                        "/etc/openbao-kms/config.toml > /root/other.toml && chmod 0600 /root/other.toml"])
    code, lines = cluster.doctor_kube("/root/other.toml")
    assert code == 1 and lines["kube-provider"].startswith("FAIL") and "other-kms" in lines["kube-provider"], lines
    assert lines["kube-key-id"].startswith("skip"), lines


def test_readyz_fails_while_openbao_is_down_with_the_provider_healthz_and_recovers(cluster):
    cluster.proxy.set_down()
    try:
        def failing():
            status, body = cluster.poke_readyz()
            return (status, body) if status != 200 else None

        status, body = wait_until(failing, "/readyz/kms-providers to fail with OpenBao down", 120, interval=1,
                                  context=cluster.provider_logs)
        # kube-apiserver shows the provider's own healthz text: which call failed and why.
        assert "got unexpected healthz status: " in body and "cannot reach OpenBao" in body, body
    finally:
        cluster.proxy.set_up()
    wait_until(lambda: cluster.poke_readyz()[0] == 200, "/readyz/kms-providers to recover", 120, interval=1,
               context=cluster.provider_logs)


def test_readyz_fails_while_the_provider_is_stopped_and_recovers_without_restarting_kube_apiserver(cluster):
    apiserver = cluster.host.pod_file("kube-apiserver", "id")
    cluster.host.c.systemctl("stop", "bao-kms-provider.socket", "bao-kms-provider.service")
    try:
        wait_until(lambda: cluster.poke_readyz()[0] != 200, "/readyz/kms-providers to fail with the provider stopped",
                   120, interval=1, context=cluster.provider_logs)
    finally:
        cluster.host.c.systemctl("start", "bao-kms-provider.socket", "bao-kms-provider.service")
    # grpc-go's reconnect back-off can reach about two minutes.
    wait_until(lambda: cluster.poke_readyz()[0] == 200, "/readyz/kms-providers to recover", 240, interval=1,
               context=cluster.provider_logs)
    assert cluster.host.pod_file("kube-apiserver", "id") == apiserver
    assert cluster.host.c.exists(SOCKET)


def test_kubeadm_regenerates_a_manifest_that_keeps_the_flag_and_mounts_and_the_role_changes_nothing(cluster):
    """What `kubeadm upgrade` does to the manifest: rendered again from the stored ClusterConfiguration."""
    import json
    import yaml
    h = cluster.host
    stored = json.loads(h.kubectl("-n", "kube-system", "get", "configmap", "kubeadm-config", "-o", "json").stdout)
    init = next(yaml.safe_load_all(h.c.read_file("/etc/kubernetes/kubeadm.yaml")))
    h.c.write_file("/etc/kubernetes/kubeadm-regenerate.yaml",
                   yaml.safe_dump(init) + "---\n" + stored["data"]["ClusterConfiguration"], mode=0o600)
    before = h.pod_file("kube-apiserver", "id")
    h.kubeadm("init", "phase", "control-plane", "apiserver", "--config", "/etc/kubernetes/kubeadm-regenerate.yaml")
    manifest = yaml.safe_load(h.c.read_file("/etc/kubernetes/manifests/kube-apiserver.yaml"))
    container = manifest["spec"]["containers"][0]
    assert f"--encryption-provider-config={ENC_CONFIG}" in container["command"]
    assert {m["name"] for m in container["volumeMounts"]} >= {"openbao-kms-config", "openbao-kms-socket"}
    h.wait_pod("kube-apiserver", timeout=180, other_than=before)
    run = cluster.play("site-after-kubeadm").assert_ok()
    assert run.changed(h.name) == 0, run.output
    status, out = cluster.api.request("GET", f"/api/v1/namespaces/{NS}/secrets/marker")
    assert status == 200 and base64.b64decode(out["data"]["value"]).decode() == MARKER


def test_the_migration_rewrites_every_secret_under_the_current_key_id_then_identity_is_dropped(cluster):
    """migrate_secrets.yml with the role's defaults (rate, chunk size, etcd quota check, verification)."""
    run = cluster.play("migrate", "playbooks/migrate_secrets.yml").assert_ok()
    current = cluster.status_key_id()
    stored = cluster.etcd.range("/registry/secrets/")
    plain = [k for k, v in stored.items() if not v.startswith(PREFIX)]
    assert plain == [], f"not stored through the provider after the migration: {plain}\n{run.output[-3000:]}"
    old = [k for k, o in cluster.envelopes().items() if o.keyID != current]
    assert old == [], f"{len(old)} values still under an older key_id, e.g. {old[:3]}"
    code, report = cluster.scan("/registry/secrets/")
    assert code == 0 and report["result"] == "ok", report
    assert [(k["key_id"], k["state"], k["values"]) for k in report["key_ids"]] == [(current, "active", len(stored))]
    drop = cluster.play("drop-identity", "playbooks/migrate_secrets.yml",
                        extra_vars={"kms_migrate_secrets_remove_identity_fallback": True}).assert_ok()
    assert "identity" not in cluster.host.c.read_file(ENC_CONFIG), drop.output[-3000:]
    cluster.host.wait_pod("kube-apiserver", timeout=180)
    status, out = cluster.api.request("GET", f"/api/v1/namespaces/{NS}/secrets/before-rollout")
    assert status == 200 and base64.b64decode(out["data"]["value"]).decode() == "written before the rollout"


def seed_writer() -> Path:
    """examples/seed_writer.rs, built by `cargo build --example seed_writer` (make test-system)."""
    p = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target")) / "debug" / "examples" / "seed_writer"
    if not p.exists():
        raise AssertionError(f"{p} is missing: run `cargo build --locked --example seed_writer`")
    return p


def storm_values(cluster, since: int = 0) -> dict[str, str]:
    """Every Secret of STORM_NS kube-apiserver lists, name -> value, of those written at etcd
    revision `since` or later (an empty dict while the list fails)."""
    status, out = cluster.api.request("GET", f"/api/v1/namespaces/{STORM_NS}/secrets")
    if status != 200:
        return {}
    return {i["metadata"]["name"]: base64.b64decode(i["data"]["value"]).decode() for i in out["items"]
            if int(i["metadata"]["resourceVersion"]) >= since}


@pytest.mark.parametrize("rate", STORM_RATES, ids=[f"quota-{r}-per-s" for r in STORM_RATES])
def test_a_restart_under_150_seeds_against_a_slow_throttled_openbao_ends_ready_with_every_secret_read(cluster, rate):
    """kube-apiserver asks for one Decrypt per uncached seed after a restart (up to 10 at once per
    seed); with OpenBao answering in 1 s behind a `rate`/s quota it must still become ready and read
    everything, without the provider multiplying the load on OpenBao. Each case writes the same
    Secrets under 150 fresh seeds, so the seeds of the case before are gone from etcd."""
    status, out = cluster.api.request("POST", "/api/v1/namespaces",
                                      {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": STORM_NS}})
    assert status in (201, 409), out
    # Written as kube-apiserver writes them, one writer (seed, Encrypt) per seed, straight into etcd.
    r = subprocess.run([str(seed_writer()), host_socket(cluster.host.c), STORM_NS, str(STORM_SEEDS),
                        str(STORM_PER_SEED), "storm"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    stored = {k: base64.b64decode(v) for k, v in (line.split("\t") for line in r.stdout.splitlines())}
    assert len(stored) == STORM_SEEDS * STORM_PER_SEED
    revision = cluster.etcd.put(stored)
    storm = {k: o for k, o in cluster.envelopes().items() if k.startswith(f"/registry/secrets/{STORM_NS}/")}
    assert len({o.encryptedDEKSource for o in storm.values()}) == STORM_SEEDS
    expected = {f"storm-{s:03d}-{o:03d}": f"storm value {s}-{o}"
                for s in range(STORM_SEEDS) for o in range(STORM_PER_SEED)}
    # The running kube-apiserver reads them (its watch decodes them): the values are valid Secrets.
    wait_until(lambda: storm_values(cluster, revision) == expected, "kube-apiserver to read the written Secrets", 120,
               interval=1, context=cluster.provider_logs)
    seeds = len({o.encryptedDEKSource for o in cluster.envelopes().values()})

    decrypts_before = cluster.provider_metric("openbao_kms_grpc_requests_total", method="Decrypt")
    requests_before = cluster.openbao_requests("decrypt")
    quota = f"sys/quotas/rate-limit/kms-restart-storm-{rate}"
    status, out = cluster.bao.api("POST", quota, body={"rate": rate, "path": "transit/"})
    assert status in (200, 204), out
    cluster.proxy.set_delay(STORM_DELAY)
    try:
        t0 = time.monotonic()
        cluster.host.restart_apiserver(timeout=600)

        def ready() -> bool:
            try:
                return cluster.api.readyz()[0] == 200
            except (OSError, http.client.HTTPException):
                return False

        wait_until(ready, "/readyz after the restart", 600, interval=0.5, context=cluster.provider_logs)
        t_ready = time.monotonic() - t0

        def all_read() -> bool:
            try:
                got = storm_values(cluster)
                for name in sorted(set(expected) - set(got)):
                    status, out = cluster.api.request("GET", f"/api/v1/namespaces/{STORM_NS}/secrets/{name}")
                    if status == 200:
                        got[name] = base64.b64decode(out["data"]["value"]).decode()
            except (OSError, http.client.HTTPException):
                return False
            return got == expected

        wait_until(all_read, f"all {len(expected)} Secrets to read back", 600, interval=1,
                   context=cluster.provider_logs)
        t_read = time.monotonic() - t0
        decrypts = cluster.provider_metric("openbao_kms_grpc_requests_total", method="Decrypt") - decrypts_before
        after = cluster.openbao_requests("decrypt")
    finally:
        cluster.proxy.set_delay(0)
        cluster.bao.api("DELETE", quota)
    delta = {k: v - requests_before.get(k, 0.0) for k, v in after.items() if v - requests_before.get(k, 0.0)}
    sent = sum(v for k, v in delta.items() if k not in NOT_SENT)
    limited = delta.get("rate_limited", 0.0) + delta.get("retry_after", 0.0)
    print(f"FIGURES restart storm: {seeds} seeds ({STORM_SEEDS} new, {len(expected)} Secrets), OpenBao {STORM_DELAY}s "
          f"slow, quota {rate}/s on transit/: /readyz ok after {t_ready:.1f}s, all read after {t_read:.1f}s; "
          f"{decrypts:.0f} Decrypt calls, {sent:.0f} OpenBao decrypt requests sent ({limited:.0f} answered 429), "
          f"by status {dict(sorted(delta.items()))}")
    assert t_ready < 300 and t_read < 300, (t_ready, t_read)
    assert seeds <= decrypts <= seeds * WATCH_DECODE_CONCURRENCY, (decrypts, seeds)
    assert sent <= 2 * decrypts, (sent, decrypts, delta)
    # Fast and unthrottled again: the cluster is as usable as before.
    wait_until(lambda: cluster.poke_readyz()[0] == 200, "/readyz/kms-providers after the storm", 120, interval=1,
               context=cluster.provider_logs)
