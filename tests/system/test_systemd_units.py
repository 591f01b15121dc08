"""The systemd host agent, end to end: the real binary and the real units from systemd/ in a
container with systemd as PID 1 (tests/system/nspawn.py), against a real OpenBao dev server on
the host's loopback (tests/system/openbao.py).

Each test boots its own container (~0.6 s); one OpenBao serves the whole module.
"""

import base64
import re
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openbao import TcpProxy, provider_config  # noqa: E402
from provider_host import (JWT, SOCKET_UNIT, UNIT, channel, install, journal_messages,  # noqa: E402
                           probe, props, start_by_connecting, wait_journal, wait_props)

MAX_EXPOSURE = 2.0


# ----------------------------------------------------------------------------- tests

def test_units_verify_and_security_exposure(host, bao):
    """Both units pass `systemd-analyze verify`; the service's exposure is at most 2.0."""
    install(host, provider_config(bao.addr), bao.mint_jwt())
    # --man=no: the units' man: page comes with the package, not with the units copied here
    # (test_packages checks that every page Documentation= names is shipped).
    r = host.run(["systemd-analyze", "verify", "--man=no", SOCKET_UNIT, UNIT], check=False)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stdout + r.stderr
    sec = host.run(["systemd-analyze", "security", "--no-pager", UNIT], check=False).stdout
    m = re.search(rf"Overall exposure level for {re.escape(UNIT)}: (\d+\.\d+)", sec)
    assert m, sec
    exposure = float(m.group(1))
    print(f"\nsystemd-analyze security {UNIT}: exposure {exposure}")
    print("\n".join(line for line in sec.splitlines() if line.startswith("✗")))
    assert exposure <= MAX_EXPOSURE, sec


def test_socket_activation_and_readiness_wait_for_openbao(host, bao):
    """The first connection starts the service; it stays `activating` with a "waiting for
    OpenBao" StatusText (extending its start timeout) until OpenBao answers, then turns active."""
    with TcpProxy(bao.port, up=False) as proxy:
        # TimeoutStartSec=3s: without EXTEND_TIMEOUT_USEC systemd would fail the start after 3 s.
        install(host, provider_config(proxy.addr), bao.mint_jwt(),
                dropins={"start-timeout.conf": "[Service]\nTimeoutStartSec=3s\n"})
        host.systemctl("enable", "--now", SOCKET_UNIT)
        assert host.systemctl("is-active", SOCKET_UNIT).stdout.strip() == "active"
        assert host.systemctl("is-active", UNIT, check=False).stdout.strip() == "inactive"

        r = probe(host, check=False)  # the first connection: starts the service
        assert r.returncode != 0 and "healthz:  no active key yet" in r.stdout, r.stdout
        p = props(host)
        assert p["ActiveState"] == "activating", p
        assert p["StatusText"].startswith("waiting for OpenBao: "), p
        assert "OpenBao login" in p["StatusText"], p
        assert host.systemctl("is-active", UNIT, check=False).stdout.strip() == "activating"

        # Past TimeoutStartSec=3s the service is still starting, not failed or restarted.
        started = float(props(host, UNIT, "ExecMainStartTimestampMonotonic")
                        ["ExecMainStartTimestampMonotonic"]) / 1e6
        while uptime(host) < started + 5.0:
            p = props(host)
            assert p["ActiveState"] == "activating" and p["NRestarts"] == "0", p
            time.sleep(0.5)

        proxy.set_up()
        p = wait_props(host, lambda p: p["ActiveState"] == "active", "active after OpenBao is up")
        assert re.fullmatch(r"serving key_id=obkms1-\S+ healthz=ok", p["StatusText"]), p
        assert p["NRestarts"] == "0", p
        assert host.systemctl("is-active", UNIT).stdout.strip() == "active"
        assert "result:   OK" in probe(host).stdout
        wait_journal(host, r"^ready: login, key metadata and encrypt/decrypt probe succeeded$")


def test_start_wait_is_capped_so_kubelet_is_not_held_back(host, bao):
    """With OpenBao down at boot, the provider extends its start timeout only until
    server.start_timeout; then the start job fails (units ordered after it proceed) and
    Restart=always tries again, with the socket still held by systemd."""
    with TcpProxy(bao.port, up=False) as proxy:
        install(host, provider_config(proxy.addr, start_timeout="5s"), bao.mint_jwt(),
                dropins={"start-timeout.conf": "[Service]\nTimeoutStartSec=2s\n"})
        host.systemctl("enable", "--now", SOCKET_UNIT)
        host.systemctl("start", "--no-block", UNIT)
        p = wait_props(host, lambda p: int(p["NRestarts"]) >= 1, "a restart after the capped start wait",
                       timeout=30)
        assert host.systemctl("is-active", SOCKET_UNIT).stdout.strip() == "active"
        proxy.set_up()
        p = wait_props(host, lambda p: p["ActiveState"] == "active", "active once OpenBao is up", timeout=30)
        assert "healthz=ok" in p["StatusText"], p


def uptime(c) -> float:
    """CLOCK_MONOTONIC inside (the same clock as systemd's *TimestampMonotonic)."""
    return float(c.read_file("/proc/uptime").split()[0])


def test_restart_loses_no_kms_call(host, bao, kms_pb):
    """`systemctl restart` while a gRPC client (grpcio, like the apiserver's grpc-go) calls
    Encrypt and Decrypt in a loop: systemd keeps the socket, so not one call fails."""
    api_pb2, api_pb2_grpc = kms_pb
    install(host, provider_config(bao.addr), bao.mint_jwt())
    start_by_connecting(host)

    stop = threading.Event()
    calls: list[tuple[float, float]] = []
    failures: list[str] = []

    def loop(worker: int) -> None:
        ch = channel(host)
        stub = api_pb2_grpc.KeyManagementServiceStub(ch)
        n = 0
        while not stop.is_set():
            n += 1
            t0 = time.monotonic()
            try:
                seed = uuid.uuid4().bytes * 2
                enc = stub.Encrypt(api_pb2.EncryptRequest(plaintext=seed, uid=f"w{worker}-{n}"),
                                   timeout=3)
                dec = stub.Decrypt(api_pb2.DecryptRequest(
                    ciphertext=enc.ciphertext, uid=f"w{worker}-{n}", key_id=enc.key_id,
                    annotations=dict(enc.annotations)), timeout=3)
                if dec.plaintext != seed:
                    failures.append(f"{t0:.3f} round trip returned other bytes")
                calls.append((t0, time.monotonic()))
            except Exception as e:  # noqa: BLE001 - every failure counts
                failures.append(f"{t0:.3f} {type(e).__name__}: {e}")
        ch.close()

    workers = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(2)]
    for w in workers:
        w.start()
    windows = []
    try:
        deadline = time.monotonic() + 10
        while len(calls) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(calls) >= 20, f"client loop is not running: {failures[:5]}"
        for _ in range(3):
            old_pid = props(host)["MainPID"]
            t0 = time.monotonic()
            host.systemctl("restart", UNIT)  # returns after the new process sent READY=1
            t1 = time.monotonic()
            windows.append((t0, t1))
            new = props(host)
            assert new["ActiveState"] == "active" and new["MainPID"] != old_pid, new
            settle = time.monotonic() + 0.5
            while time.monotonic() < settle:
                time.sleep(0.05)
    finally:
        stop.set()
        for w in workers:
            w.join(15)
    # Calls in flight at some point of a restart (started before it ended, ended after it began).
    in_windows = [sum(1 for s, e in calls if s <= b and e >= a) for a, b in windows]
    print(f"\n{len(calls)} calls, {len(failures)} failed; restart windows "
          f"{[round(b - a, 3) for a, b in windows]} s with {in_windows} calls in flight; "
          f"slowest call {max(e - s for s, e in calls) * 1000:.0f} ms")
    assert failures == [], failures[:10]
    assert all(n > 0 for n in in_windows), in_windows

    # A plain stop drains, tells systemd STOPPING=1 and exits 0.
    host.systemctl("stop", UNIT)
    p = props(host, UNIT, "Result", "ExecMainCode", "ExecMainStatus", "ActiveState")
    assert p == {"Result": "success", "ExecMainCode": "1", "ExecMainStatus": "0",
                 "ActiveState": "inactive"}, p
    assert "stopped" in journal_messages(host)


def test_watchdog_restarts_a_hung_process(host, bao):
    """WATCHDOG=1 keeps coming while the process is healthy; a stopped (SIGSTOP) process is
    killed by the watchdog and restarted."""
    install(host, provider_config(bao.addr), bao.mint_jwt(),
            dropins={"watchdog.conf": "[Service]\nWatchdogSec=2s\n"})
    start_by_connecting(host)
    first = props(host, UNIT, "WatchdogTimestampMonotonic", "MainPID")
    wait_props(host, lambda _: props(host, UNIT, "WatchdogTimestampMonotonic")
               ["WatchdogTimestampMonotonic"] != first["WatchdogTimestampMonotonic"],
               "a watchdog ping", timeout=5)
    assert props(host)["NRestarts"] == "0"

    host.run(["kill", "-STOP", first["MainPID"]])
    p = wait_props(host, lambda p: p["NRestarts"] == "1" and p["ActiveState"] == "active",
                   "restart by the watchdog", timeout=30)
    assert p["MainPID"] != first["MainPID"], p
    msgs = [e.get("MESSAGE", "") for e in host.journal(unit=UNIT)]
    assert any("Watchdog timeout" in str(m) for m in msgs), msgs[-20:]
    assert "result:   OK" in probe(host).stdout


def test_journald_fields_and_no_secrets(host, bao, kms_pb):
    """Calls are logged natively to journald with KMS_METHOD, KMS_UID, KEY_ID, LATENCY_MS (and
    ERROR_CLASS on failure); no JWT, token or plaintext ever reaches the journal."""
    api_pb2, api_pb2_grpc = kms_pb
    jwt = bao.mint_jwt()
    install(host, provider_config(bao.addr, log_level="debug"), jwt)
    start_by_connecting(host)

    uid = f"journal-{uuid.uuid4().hex[:12]}"
    plaintexts = [f"canary-plaintext-{uuid.uuid4().hex}".encode() for _ in range(3)]
    ch = channel(host)
    stub = api_pb2_grpc.KeyManagementServiceStub(ch)
    key_id = ""
    for pt in plaintexts:
        enc = stub.Encrypt(api_pb2.EncryptRequest(plaintext=pt, uid=uid), timeout=5)
        key_id = enc.key_id
        dec = stub.Decrypt(api_pb2.DecryptRequest(ciphertext=enc.ciphertext, uid=uid,
                                                  key_id=enc.key_id,
                                                  annotations=dict(enc.annotations)), timeout=5)
        assert dec.plaintext == pt
    import grpc
    with pytest.raises(grpc.RpcError) as refused:
        stub.Decrypt(api_pb2.DecryptRequest(ciphertext=enc.ciphertext, uid=uid,
                                            key_id="obkms1-unknown",
                                            annotations=dict(enc.annotations)), timeout=5)
    ch.close()
    print(f"\nunknown key_id refused with {refused.value.code().name}")

    wait_journal(host, "^kms call failed$")
    entries = host.journal(unit=UNIT)
    ours = [e for e in entries if e.get("KMS_UID") == uid]
    ok = [e for e in ours if e.get("MESSAGE") == "kms call ok"]
    assert {e["KMS_METHOD"] for e in ok} == {"Encrypt", "Decrypt"}, ours
    for e in ok:
        assert e["KEY_ID"] == key_id and float(e["LATENCY_MS"]) > 0, e
        assert e["PRIORITY"] == "7" and e["SYSLOG_IDENTIFIER"] == "bao-kms-provider", e
        assert e["_SYSTEMD_UNIT"] == UNIT, e
    failed = [e for e in ours if e.get("MESSAGE") == "kms call failed"]
    assert len(failed) == 1, ours
    f = failed[0]
    assert f["KMS_METHOD"] == "Decrypt" and f["KEY_ID"] == "obkms1-unknown", f
    assert f["ERROR_CLASS"] and f["PRIORITY"] == "4" and float(f["LATENCY_MS"]) >= 0, f
    print("failed call:", {k: v for k, v in f.items() if k.isupper() and not k.startswith("_")})

    # The whole journal of the boot, every unit, binary-safe (-o export).
    export = host.run(["journalctl", "-b", "--no-pager", "-o", "export"], text=False).stdout
    assert uid.encode() in export  # the search itself works
    secrets = {"JWT": jwt.encode(), "JWT signature": jwt.split(".")[2].encode(),
               "root token": bao.root_token.encode()}
    for i, pt in enumerate(plaintexts):
        secrets[f"plaintext {i}"] = pt
        secrets[f"plaintext {i} base64"] = base64.b64encode(pt)
        secrets[f"plaintext {i} base64url"] = base64.urlsafe_b64encode(pt).rstrip(b"=")
        secrets[f"plaintext {i} hex"] = pt.hex().encode()
    leaked = [name for name, s in secrets.items() if s in export]
    assert leaked == [], f"secrets in the journal: {leaked}"


def test_reload_rereads_the_jwt_file(host, bao):
    """`systemctl reload` (SIGHUP) re-reads the JWT file and logs in with it, bracketed by
    RELOADING=1 ... READY=1; a bad JWT is reported and the service keeps serving."""
    install(host, provider_config(bao.addr), bao.mint_jwt())
    start_by_connecting(host)
    host.run(["systemd-analyze", "log-level", "debug"])  # PID 1 logs each notify message

    host.write_file(JWT, "not-a-jwt\n", mode=0o640)
    host.run(["chown", "root:openbao-kms", JWT])
    n = len(host.journal(unit=UNIT))
    host.systemctl("reload", UNIT)
    wait_journal(host, r"^reload failed; the previous OpenBao client, credentials and token stay in use$", since_count=n)
    assert props(host)["ActiveState"] == "active"
    assert "result:   OK" in probe(host).stdout

    host.write_file(JWT, bao.mint_jwt() + "\n", mode=0o640)
    host.run(["chown", "root:openbao-kms", JWT])
    n = len(host.journal(unit=UNIT))
    host.systemctl("reload", UNIT)
    wait_journal(host, r"^reloaded: new OpenBao client and credentials in use$", since_count=n)
    later = [str(e.get("MESSAGE")) for e in host.journal(unit=UNIT)[n:]]
    notify = [m for m in later if "Got notification message" in m]
    reloading = next(i for i, m in enumerate(notify) if "RELOADING=1" in m)
    assert any("READY=1" in m for m in notify[reloading + 1:]), notify
    assert props(host)["ActiveState"] == "active"
    assert "result:   OK" in probe(host).stdout


def test_jwt_from_load_credential(host, bao):
    """LoadCredential= hands the JWT over in $CREDENTIALS_DIRECTORY ("%d/identity.jwt" in the
    config), so the file itself can stay unreadable for the service user."""
    install(host, provider_config(bao.addr, jwt_file="%d/identity.jwt"), bao.mint_jwt(),
            jwt_owner="root:root", jwt_mode=0o600,
            dropins={"credentials.conf": f"[Service]\nLoadCredential=identity.jwt:{JWT}\n"})
    r = host.run(["runuser", "-u", "openbao-kms", "--", "cat", JWT], check=False)
    assert r.returncode != 0, "the service user must not read the JWT file directly"
    start_by_connecting(host)
    assert host.exists(f"/run/credentials/{UNIT}/identity.jwt")
