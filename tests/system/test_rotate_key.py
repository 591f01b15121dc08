"""playbooks/rotate_key.yml on three real kube-apiservers (kube_cluster.py: real kubeadm, etcd,
kube-apiserver, kube-controller-manager and kubectl; the static-pod runner stands in for kubelet),
each host with its packaged provider under systemd, one external etcd and one real OpenBao
(kube_rollout.py), and a background reader and writer through every kube-apiserver for the whole run.

The fixture runs the site playbook (serially, read pass then write pass) and the migration on 1001
Secrets, then the rotation with the guarded trim, the same playbook again with nothing to do, a
rotation refused because one host's provider is stopped, one that stops naming the host whose
provider is configured with a long activation delay (then resumed while no kube-controller-manager
runs, so the rewrite falls back from StorageVersionMigration to the migration), and an OpenBao outage longer than
kube-apiserver's write-DEK lifetime. The tests read what the runs left.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kube_cluster import KubeHost  # noqa: E402
from kube_rollout import (FAST_PROVIDER_SETTINGS, PROVIDER, STATUS_METRIC, Traffic, kube_hash,  # noqa: E402
                          kube_rollout, probe_key_id, sum_samples)
from waiting import wait_until  # noqa: E402

SECRETS = 1001  # kleidi's end-to-end bar
BULK = "bulk"
ROTATE = "playbooks/rotate_key.yml"
TRIM = {"kms_rotate_key_trim": True, "kms_rotate_key_trim_ack_backups": True}
KCM = "/etc/kubernetes/manifests/kube-controller-manager.yaml"
KCM_OFF = "/etc/kubernetes/kube-controller-manager.yaml.stopped"
KCM_PID = "/run/static-pods/kube-controller-manager.pid"
# Longer than kube-apiserver's write-DEK lifetime (3 minutes after the last valid Status).
OUTAGE = 210
WARNINGS = re.compile(r"^\w*key_warnings(?:\{[^}]*\})? (\S+)$", re.M)


def transit_key(ro) -> dict:
    status, out = ro.bao.api("GET", "transit/keys/k8s-etcd")
    assert status == 200, out
    return out["data"]


def key_warnings(h: KubeHost) -> float:
    """The provider's key-warning gauge (its /metrics on the host's loopback)."""
    out = h.c.run(["python3", "-c", "import urllib.request; print(urllib.request.urlopen("
                   "'http://127.0.0.1:8081/metrics', timeout=10).read().decode())"]).stdout
    m = WARNINGS.search(out)
    assert m, out[-2000:]
    return float(m.group(1))


def scan(h: KubeHost, *args: str) -> dict:
    """scan-etcd of the Secrets from the host (kube-apiserver's etcd endpoint: the external etcd)."""
    out = h.c.run(["bash", "-c", "bao-kms-provider scan-etcd --output json --prefix /registry/secrets/ "
                   "--etcd-endpoint \"$(grep -o -- '--etcd-servers=[^ ,\"]*' /etc/kubernetes/manifests/kube-apiserver.yaml "
                   "| cut -d= -f2)\" " + " ".join(args)], check=False)
    return {"rc": out.returncode, **(json.loads(out.stdout) if out.stdout.strip() else {"stderr": out.stderr})}


def bulk_values(ro) -> dict[str, str]:
    """Every bulk Secret read back through the third host's API server, page by page."""
    api, values, cont = ro.cp.api(2), {}, ""
    while True:
        status, out = api.request("GET", f"/api/v1/namespaces/{BULK}/secrets?limit=500{'&continue=' + cont if cont else ''}")
        assert status == 200, out
        for s in out["items"]:
            values[s["metadata"]["name"]] = base64.b64decode(s["data"]["value"]).decode()
        cont = out["metadata"].get("continue", "")
        if not cont:
            return values


def set_activation_delay(h: KubeHost, delay: str) -> None:
    """Changes `rotation.activation_delay` in the host's provider config and restarts the provider
    (the socket keeps listening)."""
    h.c.run(["sed", "-i", f's/^activation_delay = .*/activation_delay = "{delay}"/', "/etc/openbao-kms/config.toml"])
    assert f'activation_delay = "{delay}"' in h.c.read_file("/etc/openbao-kms/config.toml")
    h.c.systemctl("restart", "bao-kms-provider.service")


def controller_managers(ro, running: bool) -> None:
    """Stops (moves its manifest away) or starts kube-controller-manager on every host, as kubelet
    would for a removed or restored static pod manifest, and waits until it is so."""
    for h in ro.cp.hosts:
        h.c.run(["mv", KCM_OFF if running else KCM, KCM if running else KCM_OFF])
    wait_until(lambda: all(h.c.exists(KCM_PID) == running for h in ro.cp.hosts),
               f"kube-controller-manager {'running' if running else 'stopped'} on every host", 120, interval=0.5,
               context=ro.provider_logs)


def apiserver_status_time(ro, i: int, key_id: str) -> float:
    """When host i's kube-apiserver last got a Status with `key_id` (its own metric)."""
    return sum_samples(ro.cp.api(i).metrics(), STATUS_METRIC, {"key_id_hash": kube_hash(key_id), "provider_name": PROVIDER})


def outage(r, traffic: Traffic) -> None:
    """OpenBao unreachable (its proxy down) for longer than kube-apiserver's 3-minute write-DEK
    lifetime, with cp2's provider restarted once every provider reports the outage: every Status keeps the key_id, so each
    kube-apiserver keeps extending its write DEK and no write fails; after OpenBao returns, every
    provider is healthy again without a restart."""
    ro, (cp1, cp2, cp3) = r.ro, r.ro.cp.hosts
    key_id = probe_key_id(cp1)
    mark = len(traffic.failures), len(traffic.unreachable)
    counts = dict(traffic.counts)
    start = time.time()
    ro.proxy.set_down()
    wait_until(lambda: all(h.c.run(["bao-kms-provider", "probe"], check=False).returncode != 0 for h in (cp1, cp2, cp3)),
               "every provider to report OpenBao unreachable", 60, interval=1, context=ro.provider_logs)
    cp2.c.systemctl("restart", "bao-kms-provider.service")
    r.restarted_key_id = wait_until(lambda: probe_key_id(cp2), "cp2's provider to answer after its restart", 60,
                                    context=ro.provider_logs)
    # The outage lasts until every kube-apiserver has had a Status with the key_id after OUTAGE seconds.
    wait_until(lambda: all(apiserver_status_time(ro, i, key_id) > start + OUTAGE for i in range(3)),
               f"every kube-apiserver to get a Status with the key_id {OUTAGE}s into the outage", OUTAGE + 120, interval=5,
               context=ro.provider_logs)
    r.outage = {"seconds": round(time.time() - start), "writes_until": {n: round(t - start) for n, t in traffic.last_ok.items()},
                "failures": traffic.failures[mark[0]:], "unreachable": traffic.unreachable[mark[1]:],
                "key_id": key_id, "calls": {n: c - counts.get(n, 0) for n, c in traffic.counts.items()}}
    ended = time.time()
    ro.proxy.set_up()
    wait_until(lambda: all(h.c.run(["bao-kms-provider", "probe"], check=False).returncode == 0 for h in (cp1, cp2, cp3)),
               "every provider to answer healthy after OpenBao returned", 120, interval=1, context=ro.provider_logs)
    r.outage["recovered_after"] = round(time.time() - ended, 1)
    r.outage["invocations"] = {h.name: h.c.run(["systemctl", "show", "-P", "NRestarts", "bao-kms-provider.service"]).stdout.strip()
                               for h in (cp1, cp2, cp3)}
    print("FIGURES outage " + json.dumps(r.outage, sort_keys=True))


@pytest.fixture(scope="module")
def rotation(request, tmp_path_factory, nspawn_rootfs):
    work = tmp_path_factory.mktemp("rotate-key")
    with kube_rollout(request, work, nspawn_rootfs, hosts=3) as ro:
        r = type("Rotation", (), {})()
        r.ro = ro
        cp1, cp2, cp3 = ro.cp.hosts
        api = ro.cp.api(0)
        api.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": BULK}})
        conn = api.connection()
        for i in range(SECRETS):
            status, out = api.request("POST", f"/api/v1/namespaces/{BULK}/secrets", {
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"s{i:04d}"},
                "data": {"value": base64.b64encode(f"secret {i}".encode()).decode()}}, conn=conn)
            assert status == 201, out
        conn.close()
        traffic = Traffic(ro.cp).start(3)
        try:
            ro.play("site").assert_ok()
            r.during_site = (list(traffic.failures), list(traffic.unreachable))
            ro.play("migrate", "playbooks/migrate_secrets.yml").assert_ok()
            r.key_before = transit_key(ro)
            mark = len(traffic.failures), len(traffic.unreachable)
            ro.play("rotate", ROTATE, extra_vars=TRIM).assert_ok()
            r.key_after = transit_key(ro)
            r.scan_after = scan(cp2, "--config", "/etc/openbao-kms/config.toml")
            r.values = bulk_values(ro)
            ro.play("rotate-again", ROTATE, extra_vars={**TRIM, "kms_rotate_key_rotate": False}).assert_ok()
            r.warnings = {h.name: key_warnings(h) for h in (cp1, cp2, cp3)}
            r.during_rotation = (traffic.failures[mark[0]:], traffic.unreachable[mark[1]:])
            # One host's provider stopped: refused before anything is rotated.
            cp3.c.systemctl("stop", "bao-kms-provider.socket", "bao-kms-provider.service")
            ro.play("refused", ROTATE)
            r.key_after_refused = transit_key(ro)
            cp3.c.systemctl("start", "bao-kms-provider.socket", "bao-kms-provider.service")
            # cp2's provider promotes a new version only after an hour: the play stops naming cp2.
            set_activation_delay(cp2, "1h")
            ro.play("not-converged", ROTATE, extra_vars={"kms_rotate_key_converge_timeout": 30})
            r.key_after_not_converged = transit_key(ro)
            set_activation_delay(cp2, FAST_PROVIDER_SETTINGS["rotation"]["activation_delay"])
            # No kube-controller-manager runs the StorageVersionMigration: `auto` falls back to the migration.
            controller_managers(ro, running=False)
            ro.play("resumed", ROTATE, extra_vars={"kms_rotate_key_rotate": False,
                                                   "kms_rotate_key_svm_progress_timeout": 15}).assert_ok()
            controller_managers(ro, running=True)
            r.scan_resumed = scan(cp1, "--config", "/etc/openbao-kms/config.toml")
            outage(r, traffic)
        finally:
            traffic.stop()
        r.traffic = traffic
        yield r


def test_site_playbook_rolls_out_serially_and_no_read_or_write_fails_but_while_its_api_server_restarts(rotation):
    failures, unreachable = rotation.during_site
    assert failures == [], failures
    print(f"FIGURES site: {len(unreachable)} calls unanswered while their kube-apiserver restarted")
    out = rotation.ro.runs["site"].output
    assert out.index("let every API server read through it") < out.index("Make every API server write through")


def test_rotation_converges_on_every_host_rewrites_1001_secrets_and_trims(rotation):
    run = rotation.ro.runs["rotate"]
    before, after = rotation.key_before, rotation.key_after
    assert after["latest_version"] == before["latest_version"] + 1
    assert after["min_decryption_version"] == after["latest_version"], after
    for host in ("cp1", "cp2", "cp3"):
        summary = rf"{host}: key_id \S+ \(v1\) -> \S+ \(v2\); provider after [\d.]+ s, kube-apiserver Status after"
        assert re.search(summary, run.output), run.output[-6000:]
    # kube-controller-manager 1.37 serves and runs StorageVersionMigrations: `auto` takes them.
    assert "rewrite: StorageVersionMigration in" in run.output, run.output[-6000:]
    assert "min_decryption_version=1" in run.output  # how to lower it back
    scan_after = rotation.scan_after
    assert scan_after["rc"] == 0, scan_after
    assert [k["transit_version"] for k in scan_after["key_ids"]] == [after["latest_version"]], scan_after


def test_every_secret_still_reads_back_after_the_trim(rotation):
    values = rotation.values
    assert len(values) == SECRETS
    assert all(values[f"s{i:04d}"] == f"secret {i}" for i in range(SECRETS))


def test_the_trim_is_recorded_so_no_key_warning_persists(rotation):
    assert rotation.warnings == {"cp1": 0, "cp2": 0, "cp3": 0}


def test_no_read_or_write_fails_on_any_host_during_the_rotation(rotation):
    failures, unreachable = rotation.during_rotation
    assert failures == [] and unreachable == [], (failures, unreachable)
    assert all(n > 50 for n in rotation.traffic.counts.values()), rotation.traffic.counts


def test_a_second_run_with_nothing_to_do_changes_nothing(rotation):
    run = rotation.ro.runs["rotate-again"]
    run.assert_ok()
    assert {h: run.changed(h) for h in ("cp1", "cp2", "cp3")} == {"cp1": 0, "cp2": 0, "cp3": 0}, run.output[-3000:]
    assert "nothing to do" in run.output


def test_a_stopped_provider_is_refused_before_anything_is_rotated(rotation):
    run = rotation.ro.runs["refused"]
    assert run.rc != 0
    assert "Refusing to rotate: on cp3" in run.output, run.output[-4000:]
    assert rotation.key_after_refused["latest_version"] == rotation.key_after["latest_version"]


def test_a_host_that_does_not_converge_stops_the_play_with_its_name_and_a_resume_without_a_migrator_finishes(rotation):
    run = rotation.ro.runs["not-converged"]
    assert run.rc != 0
    assert "cp2 did not converge" in run.output, run.output[-4000:]
    assert rotation.key_after_not_converged["latest_version"] == rotation.key_after["latest_version"] + 1
    resumed_run = rotation.ro.runs["resumed"].output
    assert "StorageVersionMigration bao-kms-secrets-v3 no progress" in resumed_run, resumed_run[-6000:]
    assert "rewrite: kms_migrate_secrets in" in resumed_run, resumed_run[-6000:]
    resumed = rotation.scan_resumed
    assert resumed["rc"] == 0, resumed
    assert [k["transit_version"] for k in resumed["key_ids"]] == [rotation.key_after_not_converged["latest_version"]]


def test_writes_never_fail_through_an_openbao_outage_longer_than_the_write_dek_lifetime(rotation):
    o = rotation.outage
    assert o["failures"] == [] and o["unreachable"] == [], o
    assert all(until > OUTAGE for until in o["writes_until"].values()), o
    assert rotation.restarted_key_id == o["key_id"]


def test_after_openbao_returns_every_provider_is_healthy_without_a_restart(rotation):
    assert rotation.outage["invocations"] == {"cp1": "0", "cp2": "0", "cp3": "0"}, rotation.outage
