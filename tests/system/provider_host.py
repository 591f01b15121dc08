"""The provider as a systemd service in an nspawn container (tests/system/nspawn.py): unit and
path names, installing the units from systemd/ like the package does, systemd properties, the
journal, and a gRPC channel to the container's KMS socket. Shared by the systemd, outage,
PKCS#11 and rotation tests; the fixtures (`bao`, `host`, `kms_pb`) are in conftest.py.
"""

import re
import subprocess
import sys
import time
from pathlib import Path

from openbao import REPO_ROOT

UNIT = "bao-kms-provider.service"
SOCKET_UNIT = "bao-kms-provider.socket"
SOCKET = "/run/openbao-kms/kms.sock"
CONFIG = "/etc/openbao-kms/config.toml"
JWT = "/etc/openbao-kms/identity.jwt"
DROPIN_DIR = f"/etc/systemd/system/{UNIT}.d"


def kms_stubs(out: Path):
    """Python grpcio stubs for proto/api.proto generated into `out` (a client that is not
    ours, like kube-apiserver's); returns the modules (api_pb2, api_pb2_grpc)."""
    from grpc_tools import protoc
    proto = REPO_ROOT / "proto"
    rc = protoc.main(["protoc", f"-I{proto}", f"--python_out={out}", f"--grpc_python_out={out}",
                      str(proto / "api.proto")])
    assert rc == 0, "protoc failed"
    sys.path.insert(0, str(out))
    import api_pb2
    import api_pb2_grpc
    return api_pb2, api_pb2_grpc


def install_units(c) -> None:
    """The units, sysusers.d and tmpfiles.d from systemd/ where the package puts them; creates
    the user and directories as the package's postinst does."""
    for name in (SOCKET_UNIT, UNIT):
        c.copy_in(REPO_ROOT / "systemd" / name, f"/lib/systemd/system/{name}", mode=0o644)
    c.copy_in(REPO_ROOT / "systemd" / "bao-kms-provider.sysusers",
              "/usr/lib/sysusers.d/bao-kms-provider.conf", mode=0o644)
    c.copy_in(REPO_ROOT / "systemd" / "bao-kms-provider.tmpfiles",
              "/usr/lib/tmpfiles.d/bao-kms-provider.conf", mode=0o644)
    c.run("systemd-sysusers && systemd-tmpfiles --create /usr/lib/tmpfiles.d/bao-kms-provider.conf")


def install(c, config: str, jwt: str, dropins: dict[str, str] | None = None,
            jwt_owner: str = "root:openbao-kms", jwt_mode: int = 0o640) -> None:
    """Installs units, sysusers.d and tmpfiles.d like the package does, then config and JWT."""
    install_units(c)
    c.write_file(CONFIG, config, mode=0o640)
    c.write_file(JWT, jwt + "\n", mode=jwt_mode)
    c.run(["chown", "root:openbao-kms", CONFIG])
    c.run(["chown", jwt_owner, JWT])
    for name, text in (dropins or {}).items():
        c.write_file(f"{DROPIN_DIR}/{name}", text)
    c.systemctl("daemon-reload")


def props(c, unit: str = UNIT, *names: str) -> dict[str, str]:
    names = names or ("ActiveState", "SubState", "StatusText", "NRestarts", "MainPID", "Result")
    out = c.systemctl("show", unit, *[a for n in names for a in ("-p", n)]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_props(c, pred, what: str, timeout: float = 30.0, unit: str = UNIT) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        p = props(c, unit)
        if pred(p):
            return p
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last {p}\n{journal_tail(c, unit)}")
        time.sleep(0.1)


def probe(c, check: bool = True, timeout: str = "5s") -> subprocess.CompletedProcess:
    """`bao-kms-provider probe` inside the container: Status, Encrypt, Decrypt over the socket."""
    return c.run(["bao-kms-provider", "probe", "--socket", SOCKET, "--timeout", timeout],
                 check=check, timeout=60)


def start_by_connecting(c) -> None:
    """Enables the socket; the first connection (a probe) starts the service."""
    c.systemctl("enable", "--now", SOCKET_UNIT)
    r = probe(c)
    assert "result:   OK" in r.stdout, r.stdout
    assert props(c)["ActiveState"] == "active"


def journal_messages(c, unit: str = UNIT) -> list[str]:
    return [e.get("MESSAGE", "") for e in c.journal(unit=unit) if isinstance(e.get("MESSAGE"), str)]


def journal_tail(c, unit: str | None = UNIT, lines: int = 30, entries: list[dict] | None = None) -> str:
    """The last `lines` journal messages of `unit` in container `c`, for a failure message."""
    entries = c.journal(unit=unit) if entries is None else entries
    shown = "\n".join(f"  {e.get('MESSAGE')}" for e in entries[-lines:])
    return f"{c.name} journal ({unit or 'all units'}), last {lines}:\n{shown}"


def wait_journal(c, pattern: str, unit: str | None = UNIT, timeout: float = 15.0,
                 since_count: int = 0) -> list[dict]:
    """Waits until a journal entry's MESSAGE matches `pattern` (regex); returns the entries."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        entries = c.journal(unit=unit)
        hits = [e for e in entries[since_count:]
                if isinstance(e.get("MESSAGE"), str) and rx.search(e["MESSAGE"])]
        if hits:
            return hits
        if time.monotonic() > deadline:
            raise AssertionError(f"no journal entry matching {pattern!r} after {timeout}s:\n"
                                 f"{journal_tail(c, unit, entries=entries)}")
        time.sleep(0.2)


def host_socket(c) -> str:
    """The container's KMS socket as seen from the host."""
    return f"/proc/{c.pid}/root{SOCKET}"


def channel(c):
    import grpc
    # Like kube-apiserver: unix socket, authority "localhost".
    return grpc.insecure_channel(f"unix://{host_socket(c)}",
                                 options=[("grpc.default_authority", "localhost")])
