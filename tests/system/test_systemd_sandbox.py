"""The sandbox of the packaged unit, checked by what it blocks (docs/systemd.md "Hardening",
docs/security.md "The service's sandbox"): the real unit from systemd/ in a container with
systemd as PID 1, the real binary, a real OpenBao dev server on the host's loopback.

A probe script runs as the unit's `ExecStartPre=` (same user, namespaces, cgroup and filters as
the provider itself) and, for comparison, as the same user outside the unit.
"""

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openbao import provider_config  # noqa: E402
from provider_host import (UNIT, install, journal_messages, probe, props,  # noqa: E402
                           start_by_connecting, wait_props)

MAX_EXPOSURE = 2.0
PROBE = "/usr/local/libexec/sandbox-probe"
# World-readable, like a real cluster CA certificate: only the unit's sandbox can keep the
# service user from reading them.
CLUSTER_FILES = ("/etc/kubernetes/pki/ca.crt", "/var/lib/kubelet/pki/kubelet.crt",
                 "/var/lib/etcd/member/snap/db")
PROBE_SCRIPT = """#!/bin/sh
# One line per attempt: "sandbox-probe: <what>: ok" or "...: denied (<error>)".
for f in %s; do
  if err=$(cat "$f" 2>&1 >/dev/null); then echo "sandbox-probe: read $f: ok"
  else echo "sandbox-probe: read $f: denied ($err)"; fi
done
for kind in udp tcp; do
  if err=$(python3 -c 'import socket, sys
t = socket.SOCK_DGRAM if sys.argv[1] == "udp" else socket.SOCK_STREAM
socket.socket(socket.AF_INET, t).bind(("127.0.0.1", 0))' "$kind" 2>&1); then
    echo "sandbox-probe: $kind bind: ok"
  else echo "sandbox-probe: $kind bind: denied ($(echo "$err" | tail -n1))"; fi
done
""" % " ".join(CLUSTER_FILES)
PROBE_DROPIN = f"[Service]\nExecStartPre=-{PROBE}\n"


def exposure(host) -> tuple[float, str]:
    sec = host.run(["systemd-analyze", "security", "--no-pager", UNIT], check=False).stdout
    m = re.search(rf"Overall exposure level for {re.escape(UNIT)}: (\d+\.\d+)", sec)
    assert m, sec
    return float(m.group(1)), sec


def probe_results(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        m = re.match(r"sandbox-probe: (.+?): (ok|denied.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def test_sandbox_hides_cluster_keys_and_still_serves(host, bao):
    """Kubernetes' and etcd's files, readable by the service user outside the unit, are out of
    the service's reach inside it; TCP binds (the telemetry listeners) stay allowed; UDP binds
    are denied where systemd has the BPF framework. The provider still starts and serves, and
    the exposure score stays at most 2.0."""
    for f in CLUSTER_FILES:
        host.write_file(f, "cluster secret\n", mode=0o644)
    host.write_file(PROBE, PROBE_SCRIPT, mode=0o755)
    install(host, provider_config(bao.addr), bao.mint_jwt(), dropins={"probe.conf": PROBE_DROPIN})

    score, sec = exposure(host)
    print(f"\nsystemd-analyze security {UNIT}: exposure {score}")
    assert score <= MAX_EXPOSURE, sec

    # The same user, outside the unit: everything readable and bindable.
    outside = probe_results(host.run(["setpriv", "--reuid=openbao-kms", "--regid=openbao-kms",
                                      "--clear-groups", PROBE]).stdout.splitlines())
    assert all(outside.get(f"read {f}") == "ok" for f in CLUSTER_FILES), outside
    assert outside["udp bind"] == "ok" and outside["tcp bind"] == "ok", outside

    start_by_connecting(host)
    assert "result:   OK" in probe(host).stdout
    inside = probe_results(journal_messages(host))
    print(f"inside the unit: {inside}")
    for f in CLUSTER_FILES:
        assert inside.get(f"read {f}", "").startswith("denied ("), inside
        assert "Permission denied" in inside[f"read {f}"], inside
    assert inside["tcp bind"] == "ok", inside
    bpf_framework = "+BPF_FRAMEWORK" in host.run(["systemctl", "--version"]).stdout
    if bpf_framework:
        assert inside["udp bind"].startswith("denied (") and "not permitted" in inside["udp bind"]
    else:
        # Debian 12's systemd 252 is built without it and ignores SocketBind*= (documented).
        assert inside["udp bind"] == "ok", inside
    assert props(host)["NRestarts"] == "0"


def test_ip_allow_list_dropin_serves_and_blocks_everything_else(host, bao):
    """The opt-in drop-in of docs/systemd.md: as documented it verifies clean, lowers the
    exposure to at most 1.0 and the provider serves; with localhost only it serves too; with an
    allow list that leaves OpenBao out, the kernel drops the traffic and the provider cannot
    reach it."""
    # The drop-in as docs/systemd.md shows it ("Network allow lists").
    documented = ("[Service]\nIPAddressDeny=any\nIPAddressAllow=10.20.0.0/24 localhost\n"
                  "SocketBindAllow=\nSocketBindAllow=tcp:8081\nSocketBindAllow=tcp:8082\n")
    install(host, provider_config(bao.addr), bao.mint_jwt(), dropins={"network.conf": documented})
    r = host.run(["systemd-analyze", "verify", "--man=no", UNIT], check=False)  # man page: package
    assert r.returncode == 0 and r.stderr.strip() == "", r.stdout + r.stderr
    score, sec = exposure(host)
    print(f"\nwith the documented network.conf: exposure {score}")
    print("\n".join(line for line in sec.splitlines() if "IPAddressDeny=" in line))
    assert score <= 1.0 and "Service defines IP address allow list" in sec, sec
    start_by_connecting(host)
    host.systemctl("stop", UNIT)

    allow = "[Service]\nIPAddressDeny=any\nIPAddressAllow=localhost\n"
    install(host, provider_config(bao.addr), bao.mint_jwt(), dropins={"network.conf": allow})
    score, sec = exposure(host)
    print(f"with IPAddressDeny=any + IPAddressAllow=localhost: exposure {score}")
    # An allow list of localhost only still counts 0.1 of the 0.2 ("only localhost entries").
    assert score <= MAX_EXPOSURE and "allow list with only localhost entries" in sec, sec
    start_by_connecting(host)

    host.systemctl("stop", UNIT)
    # 192.0.2.0/24 is TEST-NET-1: nothing is there, and OpenBao's loopback address is left out.
    install(host, provider_config(bao.addr), bao.mint_jwt(),
            dropins={"network.conf": "[Service]\nIPAddressDeny=any\nIPAddressAllow=192.0.2.1\n"})
    host.systemctl("start", "--no-block", UNIT)
    p = wait_props(host, lambda p: "OpenBao login" in p["StatusText"],
                   "the provider waiting for an OpenBao it may not reach")
    print(f"blocked: {p['StatusText']}")
    # The kernel drops the SYN: the connect times out, or the call's deadline ends first.
    # (The key registry kept from the first start lets it report "degraded" instead of
    # "activating"; Encrypt still needs OpenBao.)
    assert (f"cannot reach OpenBao: TCP connect to 127.0.0.1:{bao.port} timed out" in p["StatusText"]
            or "OpenBao login: OpenBao did not answer within" in p["StatusText"]), p
    r = probe(host, check=False)
    assert r.returncode != 0 and "result:   OK" not in r.stdout, r.stdout
