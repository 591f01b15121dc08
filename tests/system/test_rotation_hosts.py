"""Three control-plane hosts on one OpenBao through a rotation (docs/reliability.md, the
fault table's rows on rotation): three systemd-nspawn containers, each with the packaged
provider (the .deb, installed with apt) running as its systemd service, all against one
OpenBao dev server on the host's loopback. The Transit key is rotated; every host's Status
(key_id, healthz), its `/metrics` key_id hash and its systemd StatusText are sampled until all
agree and for a while after.

Must show: all hosts report the same key_id hash within activation_delay + 2 probe intervals
of the rotation, and none flip-flops (each host's key_id sequence is old -> new, once). While
sampling, a value encrypted on one host is decrypted on the next (no cross-host NotFound).
The tests/rotation_hosts.rs test covers the same with three processes and tighter timing.
"""

import hashlib
import os
import re
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openbao import BaoDevServer, free_port, provider_config, provider_policy  # noqa: E402
from provider_host import CONFIG, JWT, SOCKET, SOCKET_UNIT, UNIT, channel, props  # noqa: E402

HOSTS = 3
PROBE_INTERVAL = 1.0  # provider_config's defaults: probe_interval "1s",
ACTIVATION_DELAY = 2.0  # stable_observations 1, activation_delay "2s" (two probe intervals)
BOUND = ACTIVATION_DELAY + 2 * PROBE_INTERVAL
HOLD = 3.0  # keep sampling this long after all hosts agree (a flip back would show here)
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}


def short_hash(key_id: str) -> str:
    """The provider's key_id hash (src/keys/id.rs: first 6 bytes of SHA-256, hex)."""
    return hashlib.sha256(key_id.encode()).hexdigest()[:12]


@pytest.fixture(scope="module")
def openbao(built_packages):
    server = BaoDevServer().start()
    try:
        server.setup(provider_policy(provider_config(server.addr),
                                     binary=built_packages.release_binary))
        yield server
    finally:
        server.cleanup()


class Host:
    """One control-plane host: a container with the .deb installed and configured."""

    def __init__(self, c, metrics_port: int):
        self.c = c
        self.metrics_port = metrics_port
        self.channel = None
        self.stub = None
        self.status_ids: list[str] = []  # distinct key_ids in order of appearance
        self.metric_hashes: list[str] = []
        self.switched_status: float | None = None
        self.switched_metrics: float | None = None
        self.unhealthy: list[str] = []

    def metrics_hash(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
            text = r.read().decode()
        found = re.findall(r'^\w*status_key_id_hash\{[^}]*="([0-9a-f]+)"\} 1$', text, re.M)
        assert len(found) == 1, f"expected one status_key_id_hash series:\n{text}"
        return found[0]


def install_and_start(c, deb, bao: BaoDevServer, jwt: str, metrics_port: int) -> None:
    """What an operator does on a host: install the package, write config and JWT, start."""
    c.copy_in(deb, "/root/")
    c.run(["apt-get", "install", "-y", f"/root/{deb.name}"], env=APT_ENV, timeout=300)
    c.write_file(CONFIG, provider_config(bao.addr, metrics_address=f"127.0.0.1:{metrics_port}"),
                 mode=0o640)
    c.write_file(JWT, jwt + "\n", mode=0o640)
    c.run(["chown", "root:openbao-kms", CONFIG, JWT])
    c.run(["bao-kms-provider", "check-config", "--config", CONFIG])
    c.systemctl("start", SOCKET_UNIT)
    r = c.run(["bao-kms-provider", "probe", "--socket", SOCKET, "--wait", "30s"], check=False,
              timeout=60)
    assert "result:   OK" in r.stdout, r.stdout + r.stderr


def test_three_hosts_agree_on_the_rotated_key_within_the_bound_and_none_flip_flops(
        make_container, built_packages, openbao, kms_pb):
    api_pb2, api_pb2_grpc = kms_pb
    t0 = time.monotonic()
    ports = [free_port() for _ in range(HOSTS)]
    jwts = [openbao.mint_jwt() for _ in range(HOSTS)]  # one at a time: one output file
    containers = [make_container() for _ in range(HOSTS)]  # about a second each
    with ThreadPoolExecutor(HOSTS) as pool:  # install and start in parallel
        list(pool.map(lambda a: install_and_start(a[0], built_packages.deb1, openbao, *a[1:]),
                      zip(containers, jwts, ports)))
    hosts = [Host(c, p) for c, p in zip(containers, ports)]
    setup = time.monotonic() - t0
    for h in hosts:
        assert os.path.exists(f"/proc/{h.c.pid}/root{SOCKET}"), f"no {SOCKET} in {h.c!r}"
        h.channel = channel(h.c)
        h.stub = api_pb2_grpc.KeyManagementServiceStub(h.channel)
        s = h.stub.Status(api_pb2.StatusRequest(), timeout=3)
        assert s.healthz == "ok", s
        h.status_ids.append(s.key_id)
        h.metric_hashes.append(h.metrics_hash())
    old = hosts[0].status_ids[0]
    assert all(h.status_ids == [old] for h in hosts), [h.status_ids for h in hosts]
    assert all(h.metric_hashes == [short_hash(old)] for h in hosts)

    status, out = openbao.api("POST", "transit/keys/k8s-etcd/rotate")
    assert status in (200, 204), (status, out)
    rotated = time.monotonic()
    agreed, writes, not_found, errors, rounds, i = None, 0, 0, [], 0, 0
    import grpc
    while time.monotonic() - rotated < BOUND + 10:
        rounds += 1
        for h in hosts:
            s = h.stub.Status(api_pb2.StatusRequest(), timeout=3)
            m = h.metrics_hash()
            now = time.monotonic() - rotated
            if s.healthz != "ok":
                h.unhealthy.append(f"{now:.2f}s {s.healthz}")
            if s.key_id != h.status_ids[-1]:
                h.status_ids.append(s.key_id)
                h.switched_status = h.switched_status or now
            if m != h.metric_hashes[-1]:
                h.metric_hashes.append(m)
                h.switched_metrics = h.switched_metrics or now
        # Write on one host, read on the next (an API server reading another's write).
        w, r = hosts[i % HOSTS], hosts[(i + 1) % HOSTS]
        i += 1
        seed = os.urandom(32)
        try:
            enc = w.stub.Encrypt(api_pb2.EncryptRequest(plaintext=seed, uid=f"rot-{i}"), timeout=3)
            writes += 1
            dec = r.stub.Decrypt(api_pb2.DecryptRequest(
                ciphertext=enc.ciphertext, uid=f"rot-{i}", key_id=enc.key_id,
                annotations=dict(enc.annotations)), timeout=3)
            assert dec.plaintext == seed
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                not_found += 1
            else:
                errors.append(f"{e.code().name}: {e.details()}")
        if agreed is None and all(len(h.status_ids) > 1 and len(h.metric_hashes) > 1 for h in hosts):
            agreed = time.monotonic() - rotated
        if agreed is not None and time.monotonic() - rotated > agreed + HOLD:
            break
        time.sleep(0.05)
    sampled = time.monotonic() - rotated
    systemd = [props(h.c, UNIT) for h in hosts]
    for h in hosts:
        h.channel.close()

    status_times = [h.switched_status for h in hosts]
    metric_times = [h.switched_metrics for h in hosts]
    fmt = lambda ts: ", ".join("never" if t is None else f"{t:.2f}s" for t in ts)  # noqa: E731
    print(f"\nFIGURES rotation-nspawn: {HOSTS} containers booted, .deb installed and started in "
          f"{setup:.1f}s; probe_interval {PROBE_INTERVAL:g}s, activation_delay "
          f"{ACTIVATION_DELAY:g}s (bound {BOUND:g}s); Status switched after {fmt(status_times)}, "
          f"metrics after {fmt(metric_times)}; all agreed after "
          f"{'never' if agreed is None else f'{agreed:.2f}s'}; sampled {sampled:.1f}s in "
          f"{rounds} rounds; {writes} cross-host writes, {not_found} NotFound, errors {errors}; "
          f"unhealthy samples {[h.unhealthy for h in hosts]}")

    new = hosts[0].status_ids[-1]
    assert new != old
    for h, p in zip(hosts, systemd):
        # No flip-flop: old -> new exactly once, in Status and in the metric.
        assert h.status_ids == [old, new], [x.status_ids for x in hosts]
        assert h.metric_hashes == [short_hash(old), short_hash(new)], [x.metric_hashes for x in hosts]
        assert not h.unhealthy, h.unhealthy
        # systemd's view of the service agrees, and it never restarted.
        assert p["ActiveState"] == "active" and p["NRestarts"] == "0", p
        assert p["StatusText"] == f"serving key_id={new} healthz=ok", p
    assert agreed is not None and agreed <= BOUND, (
        f"hosts agreed after {agreed}s; bound activation_delay + 2 probe intervals = {BOUND}s")
    assert not_found == 0 and not errors, (not_found, errors)
