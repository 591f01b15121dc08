"""A provider restarted under systemd while OpenBao is unreachable (docs/reliability.md, row
"OpenBao down, provider restarted"): with a verified key registry, Status answers the previous
key_id within 1 s of the restart, healthz names the reason, systemd sees READY=1 with a "degraded: waiting
for OpenBao" status (so it does not kill and restart a provider that is doing its job), Encrypt
fails fast with Unavailable, and everything recovers by itself when OpenBao is back.
"""

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openbao import TcpProxy, provider_config  # noqa: E402
from provider_host import UNIT, channel, install, props, start_by_connecting, wait_props  # noqa: E402


def test_restart_during_an_outage_serves_status_from_the_registry_at_once(host, bao, kms_pb):
    api_pb2, api_pb2_grpc = kms_pb
    with TcpProxy(bao.port) as proxy:
        install(host, provider_config(proxy.addr), bao.mint_jwt())
        start_by_connecting(host)
        stub = api_pb2_grpc.KeyManagementServiceStub(channel(host))
        before = stub.Status(api_pb2.StatusRequest(), timeout=3)
        assert before.healthz == "ok" and before.key_id.startswith("obkms1-"), before

        proxy.set_down()
        old_pid = props(host, UNIT, "MainPID")["MainPID"]
        restarted = time.monotonic()
        host.systemctl("restart", "--no-block", UNIT)
        # The first Status of the new process: the saved key_id, within 1 s of the restart.
        status, first_answer = None, None
        while time.monotonic() - restarted < 5:
            if props(host, UNIT, "MainPID")["MainPID"] in (old_pid, "0", ""):
                time.sleep(0.02)
                continue
            try:
                ch = channel(host)
                s = api_pb2_grpc.KeyManagementServiceStub(ch).Status(api_pb2.StatusRequest(), timeout=1)
                ch.close()
            except Exception:  # noqa: BLE001 - the socket is held by systemd; retry briefly
                time.sleep(0.05)
                continue
            status, first_answer = s, time.monotonic() - restarted
            break
        assert status is not None, "no Status answer within 5 s of the restart"
        assert status.key_id == before.key_id, status
        assert status.healthz != "ok" and "OpenBao" in status.healthz, status
        assert first_answer <= 1.0, f"first Status {first_answer:.3f}s after the restart"

        # systemd: active (READY=1 sent), degraded status line, no restart loop.
        p = wait_props(host, lambda p: p["ActiveState"] == "active", "READY=1 during the outage", timeout=5)
        assert p["StatusText"].startswith("degraded: waiting for OpenBao"), p
        assert p["NRestarts"] == "0", p

        # Encrypt fails fast with Unavailable (inside kube-apiserver's 3 s).
        stub = api_pb2_grpc.KeyManagementServiceStub(channel(host))
        t0 = time.monotonic()
        import grpc
        with pytest.raises(grpc.RpcError) as err:
            stub.Encrypt(api_pb2.EncryptRequest(plaintext=b"x" * 32, uid="outage"), timeout=3)
        took = time.monotonic() - t0
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
        assert took < 3.0, took

        # OpenBao back: healthy by itself, Encrypt works, same key_id.
        proxy.set_up()
        healed = time.monotonic()
        wait_props(host, lambda p: "healthz=ok" in p["StatusText"], "healthz ok after OpenBao is back",
                   timeout=30)
        recovered = time.monotonic() - healed
        after = stub.Status(api_pb2.StatusRequest(), timeout=3)
        assert after.healthz == "ok" and after.key_id == before.key_id, after
        enc = stub.Encrypt(api_pb2.EncryptRequest(plaintext=b"y" * 32, uid="back"), timeout=3)
        assert enc.key_id == before.key_id
        print(f"\nFIGURES restart-outage: first Status {first_answer:.3f}s after restart "
              f"(key_id kept, healthz {status.healthz!r}); Encrypt Unavailable after {took:.3f}s; "
              f"healthy {recovered:.1f}s after OpenBao returned; NRestarts {p['NRestarts']}")
