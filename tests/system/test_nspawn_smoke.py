"""Smoke tests for the systemd-nspawn harness (tests/system/nspawn.py).

They check the capabilities later system tests rely on: systemd as PID 1,
unit management, journal access, host loopback networking, socket
activation + sd_notify, sandboxing directives, systemd-analyze and offline
``apt install ./x.deb``.
"""

import http.server
import json
import subprocess
import threading
from pathlib import Path

import pytest


@pytest.fixture
def host_http_server():
    """A tiny HTTP server on the host's 127.0.0.1, port chosen by the OS."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"hello from the host\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()
    t.join(5)


FETCH = ("import sys, urllib.request; "
         "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode(), end='')")
# IPAddressDeny= drops packets, so keep the expected-to-fail probe short.
CONNECT_1S = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=1)"


def test_boots_systemd_as_pid1(container):
    state = container.run(["systemctl", "is-system-running"], check=False).stdout.strip()
    assert state in ("running", "degraded"), state
    assert container.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    assert Path(f"/proc/{container.pid}/exe").resolve().name == "systemd"
    virt = container.run(["systemd-detect-virt", "--container"], check=False).stdout.strip()
    assert virt == "systemd-nspawn"
    # Pure cgroup v2 inside (see DEFAULT_NSPAWN_ENV)
    assert container.run(["stat", "-fc", "%T", "/sys/fs/cgroup"]).stdout.strip() == "cgroup2fs"
    print("boot timings:", container.timings)


def test_transient_unit_and_unit_file(container):
    r = container.run(["systemd-run", "--wait", "--quiet", "--unit=smoke-transient",
                       "/bin/sh", "-c", "echo transient-ran"])
    assert r.returncode == 0

    container.write_file("/etc/systemd/system/smoke.service", """\
[Unit]
Description=smoke test unit

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'echo smoke-started; touch /run/smoke-ran'
""")
    container.systemctl("daemon-reload")
    container.systemctl("start", "smoke.service")
    assert container.systemctl("is-active", "smoke.service").stdout.strip() == "active"
    assert container.exists("/run/smoke-ran")


def test_copy_in_and_read_file(container, tmp_path):
    f = tmp_path / "script.sh"
    f.write_text("#!/bin/sh\necho copied-script \"$@\"\n")
    container.copy_in(f, "/usr/local/bin/smoke-script", mode=0o755)
    assert container.run(["smoke-script", "x"]).stdout == "copied-script x\n"
    assert container.run(["stat", "-c", "%a", "/usr/local/bin/smoke-script"]).stdout.strip() == "755"

    d = tmp_path / "tree"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "a.txt").write_text("A")
    container.copy_in(d, "/opt/tree")
    assert container.read_file("/opt/tree/sub/a.txt") == "A"
    container.copy_in(f, "/run/into-dir/")  # trailing slash: into directory, tmpfs path
    assert container.read_file("/run/into-dir/script.sh").startswith("#!/bin/sh")
    assert container.read_file("/opt/tree/sub/a.txt", binary=True) == b"A"


def test_journal_json(container):
    container.run(["systemd-run", "--wait", "--quiet", "--unit=smoke-log",
                   "/bin/sh", "-c", "echo journal-marker-123"])
    entries = container.journal(unit="smoke-log.service")
    assert any(e.get("MESSAGE") == "journal-marker-123" for e in entries), entries
    # raw journalctl -o json works too
    raw = container.run(["journalctl", "-b", "-o", "json", "-n", "5", "--no-pager"]).stdout
    assert all(json.loads(line)["__CURSOR"] for line in raw.splitlines())


def test_reach_host_loopback(container, host_http_server):
    url = f"http://127.0.0.1:{host_http_server}/"
    # From a plain nsenter'd process ...
    assert container.run(["python3", "-c", FETCH, url]).stdout == "hello from the host\n"
    # ... and from a systemd service inside.
    r = container.run(["systemd-run", "--wait", "--pipe", "--quiet",
                       "python3", "-c", FETCH, url], timeout=30)
    assert r.stdout == "hello from the host\n"


def test_socket_activation_and_sd_notify(container):
    """A Type=notify service activated from a unix socket, hardened the way a
    KMS plugin unit would be."""
    container.write_file("/usr/local/bin/echo-srv", """\
#!/usr/bin/python3
import os, socket
assert os.environ["LISTEN_FDS"] == "1" and int(os.environ["LISTEN_PID"]) == os.getpid()
srv = socket.socket(fileno=3)
n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
n.sendto(b"READY=1\\nSTATUS=serving", os.environ["NOTIFY_SOCKET"])
while True:
    conn, _ = srv.accept()
    conn.sendall(conn.recv(100).upper())
    conn.close()
""", mode=0o755)
    container.write_file("/etc/systemd/system/echo.socket", """\
[Socket]
ListenStream=/run/echo/echo.sock
SocketMode=0660

[Install]
WantedBy=sockets.target
""")
    container.write_file("/etc/systemd/system/echo.service", """\
[Unit]
Requires=echo.socket

[Service]
Type=notify
ExecStart=/usr/local/bin/echo-srv
DynamicUser=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
NoNewPrivileges=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictAddressFamilies=AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallFilter=@system-service
SystemCallArchitectures=native
CapabilityBoundingSet=
IPAddressDeny=any
UMask=0077
""")
    container.systemctl("daemon-reload")
    container.systemctl("enable", "--now", "echo.socket")
    assert container.systemctl("is-active", "echo.service", check=False).stdout.strip() == "inactive"
    r = container.run(["python3", "-c",
                       "import socket; s = socket.socket(socket.AF_UNIX); "
                       "s.connect('/run/echo/echo.sock'); s.sendall(b'ping'); print(s.recv(10).decode())"],
                      timeout=30)
    assert r.stdout.strip() == "PING"
    show = container.systemctl("show", "echo.service", "-p", "ActiveState", "-p", "StatusText").stdout
    assert "ActiveState=active" in show and "StatusText=serving" in show, show

    sec = container.run(["systemd-analyze", "security", "--no-pager", "echo.service"], check=False)
    assert "Overall exposure level for echo.service" in sec.stdout, sec.stdout + sec.stderr
    verify = container.run(["systemd-analyze", "verify", "echo.service", "echo.socket"], check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_sandbox_directives_enforced(container, host_http_server):
    """SystemCallFilter= (seccomp), IPAddressDeny= (cgroup BPF) and
    DeviceAllow= (BPF device cgroup) are really enforced inside."""
    url = f"http://127.0.0.1:{host_http_server}/"

    def run_unit(*props, cmd):
        return container.run(["systemd-run", "--wait", "--pipe", "--quiet",
                              *[a for p in props for a in ("-p", p)], *cmd],
                             check=False, timeout=30)

    port = str(host_http_server)
    assert run_unit(cmd=["python3", "-c", CONNECT_1S, port]).returncode == 0
    assert run_unit("IPAddressDeny=any", cmd=["python3", "-c", CONNECT_1S, port]).returncode != 0
    assert run_unit("IPAddressDeny=any", "IPAddressAllow=localhost",
                    cmd=["python3", "-c", FETCH, url]).returncode == 0
    r = run_unit("SystemCallFilter=~uname", "SystemCallErrorNumber=EPERM", cmd=["uname"])
    assert r.returncode != 0, r
    r = run_unit("DevicePolicy=strict", "DeviceAllow=/dev/null rw",
                 cmd=["sh", "-c", "echo > /dev/null && ! head -c1 /dev/zero >/dev/null 2>&1"])
    assert r.returncode == 0, r


def test_apt_install_local_deb_offline(container, tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "usr" / "bin").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        "Package: bao-smoke\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: test <test@example.invalid>\nDepends: libc6\nDescription: smoke\n")
    (pkg / "usr" / "bin" / "bao-smoke").write_text("#!/bin/sh\necho bao-smoke-ok\n")
    (pkg / "usr" / "bin" / "bao-smoke").chmod(0o755)
    deb = tmp_path / "bao-smoke_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(pkg), str(deb)],
                   check=True, capture_output=True, timeout=60)
    container.copy_in(deb, "/tmp/")
    container.run(["apt-get", "install", "-y", "/tmp/" + deb.name],
                  env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=120)
    assert container.run(["bao-smoke"]).stdout == "bao-smoke-ok\n"


def test_containers_are_isolated(make_container):
    a = make_container()
    b = make_container()
    a.write_file("/etc/only-in-a", "x")
    a.run(["systemd-run", "--unit=only-in-a", "sleep", "300"])
    assert not b.exists("/etc/only-in-a")
    assert b.systemctl("is-active", "only-in-a", check=False).stdout.strip() != "active"
    assert a.systemctl("is-active", "only-in-a").stdout.strip() == "active"
