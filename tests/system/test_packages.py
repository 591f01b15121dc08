"""The .deb and .rpm on a real systemd (PID 1 in systemd-nspawn) against a real OpenBao.

Proves what docs/packaging.md promises: lint-clean packages; an offline `apt install` that
creates the user and directories, enables the socket and starts nothing without a valid config;
a probe through the socket once configured; an upgrade under a loop of KMS calls that loses no
call, keeps the config and restarts the provider only if it ran (and only with a valid config);
`apt remove`/`apt purge` and `rpm -e` that keep the key registry and the files an operator added
to /etc/openbao-kms.

The tests of one package share one container and run in file order: each step starts from the
state the previous one left, like an operator's host.
"""

import hashlib
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nspawn import Container  # noqa: E402
from openbao import (BUILD_DIR, REPO_ROOT, BaoDevServer, provider_config,  # noqa: E402
                     provider_policy)
from waiting import wait_until  # noqa: E402

SOCKET = "bao-kms-provider.socket"
SERVICE = "bao-kms-provider.service"
KMS_SOCK = "/run/openbao-kms/kms.sock"
CONFIG = "/etc/openbao-kms/config.toml"
JWT = "/etc/openbao-kms/identity.jwt"
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}

# Findings accepted in docs/packaging.md ("Accepted lint findings"); anything else fails.
LINTIAN_ACCEPTED_WARNINGS = {"initial-upload-closes-no-bugs"}
RPMLINT_ACCEPTED_WARNINGS = {"no-manual-page-for-binary", "dangerous-command-in-%postun"}

UNIT_FILES = ["bao-kms-provider.service", "bao-kms-provider.socket"]
COMMON_FILES = [
    "/usr/bin/bao-kms-provider",
    "/usr/lib/sysusers.d/bao-kms-provider.conf",
    "/usr/lib/tmpfiles.d/bao-kms-provider.conf",
    CONFIG,
    "/usr/share/doc/bao-kms-provider/examples/config.toml",
    "/usr/share/doc/bao-kms-provider/examples/pkcs11.conf",
    "/usr/share/man/man8/bao-kms-provider.8.gz",
    "/usr/share/man/man8/bao-kms-provider-serve.8.gz",
    "/usr/share/man/man8/bao-kms-provider-probe.8.gz",
    "/usr/share/man/man5/bao-kms-provider.toml.5.gz",
    "/usr/share/doc/bao-kms-provider/README.md",
    "/usr/share/doc/bao-kms-provider/docs/prometheus/bao-kms-provider.rules.yml",
    "/usr/share/doc/bao-kms-provider/docs/grafana/bao-kms-provider.json",
]
# Every page of docs/ ships under the same relative path as in the source tree, so the README's
# links resolve on an installed host.
COMMON_FILES += sorted(f"/usr/share/doc/bao-kms-provider/docs/{p.name}"
                       for p in (REPO_ROOT / "docs").glob("*.md"))


def unit_documentation_files() -> set[str]:
    """The local files the units' Documentation= lines name (file://PATH, man:NAME(SECTION));
    each must be shipped."""
    paths = set()
    for unit in UNIT_FILES:
        for line in (REPO_ROOT / "systemd" / unit).read_text().splitlines():
            if not line.startswith("Documentation="):
                continue
            for uri in line.split("=", 1)[1].split():
                if uri.startswith("file://"):
                    paths.add(uri.removeprefix("file://"))
                elif m := re.fullmatch(r"man:([^()]+)\((\d)\)", uri):
                    paths.add(f"/usr/share/man/man{m[2]}/{m[1]}.{m[2]}.gz")
    assert paths, "the units name no installed documentation"
    return paths


# ----------------------------------------------------------------- helpers
def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def show(c: Container, unit: str, prop: str) -> str:
    return c.systemctl("show", "-p", prop, "--value", unit).stdout.strip()


def is_active(c: Container, unit: str) -> str:
    return c.systemctl("is-active", unit, check=False).stdout.strip()


def is_enabled(c: Container, unit: str) -> str:
    r = c.systemctl("is-enabled", unit, check=False)
    return (r.stdout.strip() or r.stderr.strip())


def probe(c: Container, wait: str = "30s") -> str:
    r = c.run(["bao-kms-provider", "probe", "--socket", KMS_SOCK, "--wait", wait], check=False,
              timeout=60)
    assert r.returncode == 0, f"probe failed:\n{r.stdout}{r.stderr}\n{journal(c)}"
    assert "result:   OK" in r.stdout, r.stdout
    return r.stdout


def journal(c: Container) -> str:
    r = c.run(["journalctl", "-b", "--no-pager", "-n", "60", "-u", SERVICE, "-u", SOCKET],
              check=False)
    return f"--- journal ---\n{r.stdout}"


class ApiserverLikeClient(threading.Thread):
    """Loops Status, Encrypt and Decrypt the way kube-apiserver calls a KMS v2 plugin: one
    long-lived gRPC channel (grpcio, a client that is not ours), authority "localhost",
    wait-for-ready and a 3 s deadline per call. It runs on the host and reaches the container's
    socket through /proc/<container pid 1>/root."""

    def __init__(self, stubs, socket_path: str):
        super().__init__(daemon=True)
        import grpc
        self.grpc, (self.pb, pb_grpc) = grpc, stubs
        self.channel = grpc.insecure_channel(f"unix://{socket_path}",
                                             options=[("grpc.default_authority", "localhost")])
        self.stub = pb_grpc.KeyManagementServiceStub(self.channel)
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []

    def call(self, n: int) -> None:
        pb, kw = self.pb, {"timeout": 3, "wait_for_ready": True}
        status = self.stub.Status(pb.StatusRequest(), **kw)
        if status.healthz != "ok" or not status.key_id:
            raise AssertionError(f"Status healthz={status.healthz!r} key_id={status.key_id!r}")
        seed = os.urandom(32)
        enc = self.stub.Encrypt(pb.EncryptRequest(plaintext=seed, uid=f"upgrade-{n}"), **kw)
        if enc.key_id != status.key_id:
            raise AssertionError(f"Encrypt key_id {enc.key_id!r} != Status {status.key_id!r}")
        dec = self.stub.Decrypt(pb.DecryptRequest(ciphertext=enc.ciphertext, uid=f"upgrade-{n}",
                                                  key_id=enc.key_id,
                                                  annotations=dict(enc.annotations)), **kw)
        if dec.plaintext != seed:
            raise AssertionError("Decrypt returned other bytes")

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            try:
                self.call(n)
                self.ok += 1
            except (self.grpc.RpcError, AssertionError) as e:
                detail = f"{e.code().name}: {e.details()}" if isinstance(e, self.grpc.RpcError) \
                    else str(e)
                self.failures.append(f"round trip {n} at {time.strftime('%T')}: {detail}")
            n += 1
        self.channel.close()


def upgrade_under_load(c: Container, stubs, upgrade: list[str], version: str = "0.1.0-2") -> int:
    """Runs the `upgrade` command in `c` while an ApiserverLikeClient loops KMS calls through
    the socket (20 round trips before, 50 after). Asserts: no call failed, the installed
    version is `version`, the config is unchanged, the running provider was restarted and the
    socket was not. Returns the number of round trips."""
    config_before = sha256(c.read_file(CONFIG))
    service_id, socket_id = show(c, SERVICE, "InvocationID"), show(c, SOCKET, "InvocationID")
    assert service_id and socket_id
    client = ApiserverLikeClient(stubs, f"/proc/{c.pid}/root{KMS_SOCK}")
    client.start()
    try:
        wait_until(lambda: client.ok >= 20, "20 KMS round trips before the upgrade", 60, 0.05)
        c.run(upgrade, env=APT_ENV, timeout=300)
        after_upgrade = client.ok
        wait_until(lambda: client.ok >= after_upgrade + 50, "50 KMS round trips after the upgrade", 60, 0.05)
    finally:
        client.stop.set()
        client.join(30)
    assert not client.failures, "\n".join(client.failures) + journal(c)
    assert c.run(["dpkg-query", "-W", "-f", "${Version}", "bao-kms-provider"]).stdout == version
    assert sha256(c.read_file(CONFIG)) == config_before, "the upgrade changed the config"
    assert show(c, SERVICE, "InvocationID") != service_id, "a running provider must be restarted"
    assert show(c, SOCKET, "InvocationID") == socket_id, "the socket must never be restarted"
    return client.ok


@pytest.fixture(scope="module")
def kms_stubs(kms_pb):
    """Python stubs for proto/api.proto (conftest.py's kms_pb)."""
    return kms_pb


@pytest.fixture(scope="module")
def openbao(built_packages):
    """A real OpenBao dev server on the host (tests/system/openbao.py): Transit key, the
    provider's policy (from the packaged binary) and JWT auth."""
    server = BaoDevServer().start()
    try:
        server.setup(provider_policy(provider_config(server.addr),
                                     binary=built_packages.release_binary))
        yield server
    finally:
        server.cleanup()


def module_container(request, rootfs):
    """One booted container for a whole module; the journal is printed if a test failed."""
    workdir = Path(os.environ.get("BAO_NSPAWN_WORKDIR", BUILD_DIR / "nspawn"))
    failed_before = request.session.testsfailed
    c = Container(rootfs, workdir=workdir).start()
    yield c
    if request.session.testsfailed > failed_before and c.running:
        r = c.run(["journalctl", "-b", "--no-pager", "-n", "150"], check=False, timeout=15)
        print(f"\n===== journal of {c.name} =====\n{r.stdout}")
    c.stop()


@pytest.fixture(scope="module")
def deb_host(request, nspawn_rootfs, _nspawn_stale_cleanup):
    yield from module_container(request, nspawn_rootfs)


@pytest.fixture(scope="module")
def rpm_host(request, rpm_rootfs, _nspawn_stale_cleanup):
    yield from module_container(request, rpm_rootfs)


def configure(c: Container, bao: BaoDevServer) -> str:
    """Writes a valid config and a fresh JWT the way an operator would; returns the config."""
    text = provider_config(bao.addr, jwt_file=JWT)
    c.write_file(CONFIG, text, mode=0o644)
    c.write_file(JWT, bao.mint_jwt() + "\n", mode=0o640)
    c.run(["chown", "root:openbao-kms", JWT])
    r = c.run(["bao-kms-provider", "check-config", "--config", CONFIG], check=False)
    assert r.returncode == 0, r.stderr
    return text


def assert_user_and_dirs(c: Container) -> None:
    assert c.run(["getent", "passwd", "openbao-kms"]).stdout.split(":")[6].strip() == \
        "/usr/sbin/nologin"
    stat = c.run(["stat", "-c", "%n %a %U %G", "/etc/openbao-kms",
                  "/var/lib/openbao-kms"]).stdout.splitlines()
    assert stat == ["/etc/openbao-kms 750 root openbao-kms",
                    "/var/lib/openbao-kms 700 openbao-kms openbao-kms"], stat


def lint_tags(output: str, marker: str) -> dict[str, set[str]]:
    """{"E": {tags}, "W": {tags}} from lintian ("W: pkg: tag ...") or rpmlint ("pkg: W: tag")."""
    found: dict[str, set[str]] = {"E": set(), "W": set()}
    for line in output.splitlines():
        parts = line.replace(":", " ").split()
        for level in ("E", "W"):
            if level in parts[:3]:
                idx = parts.index(level)
                tag = parts[idx + 1] if marker == "rpmlint" else parts[idx + 2]
                found[level].add(tag)
    return found


# ----------------------------------------------------------------- .deb
def test_deb_lintian_reports_no_errors_and_only_accepted_warnings(built_packages):
    r = subprocess.run(["lintian", "--no-tag-display-limit", built_packages.deb1],
                       capture_output=True, text=True)
    tags = lint_tags(r.stdout, "lintian")
    assert not tags["E"], r.stdout
    assert tags["W"] <= LINTIAN_ACCEPTED_WARNINGS, r.stdout


def test_deb_metadata_files_and_libc_only_dependencies(built_packages, tmp_path):
    deb = str(built_packages.deb1)

    def field(name: str) -> str:
        return subprocess.run(["dpkg-deb", "-f", deb, name], capture_output=True, text=True,
                              check=True).stdout.strip()

    assert field("Version") == "0.1.0-1"
    depends = [d.strip() for d in field("Depends").split(",")]
    assert depends[0].startswith("libc6 (>= ") and depends[1:] == [
        "systemd | systemd-standalone-sysusers"], depends
    files = {line.split()[-1].lstrip(".") for line in subprocess.run(
        ["dpkg-deb", "-c", deb], capture_output=True, text=True, check=True).stdout.splitlines()}
    expected = COMMON_FILES + [f"/lib/systemd/system/{u}" for u in UNIT_FILES] + [
        "/usr/share/doc/bao-kms-provider/copyright",
        "/usr/share/doc/bao-kms-provider/changelog.Debian.gz",
        "/usr/share/doc/bao-kms-provider/changelog.gz"]
    assert set(expected) <= files, set(expected) - files
    assert unit_documentation_files() <= files, unit_documentation_files() - files
    subprocess.run(["dpkg-deb", "-e", deb, tmp_path / "control"], check=True)
    assert (tmp_path / "control" / "conffiles").read_text().split() == [CONFIG]
    subprocess.run(["dpkg-deb", "-x", deb, tmp_path / "root"], check=True)
    binary = tmp_path / "root" / "usr" / "bin" / "bao-kms-provider"
    sections = subprocess.run(["readelf", "-S", binary], capture_output=True, text=True,
                              check=True).stdout
    assert ".symtab" not in sections and ".debug_info" not in sections, "binary is not stripped"
    libs = {line.split()[0] for line in subprocess.run(
        ["ldd", binary], capture_output=True, text=True, check=True).stdout.splitlines()}
    assert {lib.split("/")[-1] for lib in libs} <= {
        "linux-vdso.so.1", "libc.so.6", "libm.so.6", "libgcc_s.so.1", "ld-linux-x86-64.so.2"}, libs


def test_deb_installs_offline_and_starts_nothing_without_a_valid_config(deb_host, built_packages):
    c = deb_host
    c.copy_in(built_packages.deb1, "/root/")
    r = c.run(["apt-get", "install", "-y", f"/root/{built_packages.deb1.name}"], env=APT_ENV,
              timeout=180)
    assert "not a valid configuration" in r.stdout + r.stderr, r.stdout + r.stderr
    assert_user_and_dirs(c)
    assert is_enabled(c, SOCKET) == "enabled"
    assert is_active(c, SOCKET) == "inactive"
    assert is_active(c, SERVICE) == "inactive"
    # The shipped default names what is missing instead of being usable.
    r = c.run(["bao-kms-provider", "check-config", "--config", CONFIG], check=False)
    assert r.returncode == 64 and "openbao.address" in r.stderr, r.stderr


def test_deb_serves_kms_calls_through_the_socket_once_configured(deb_host, openbao):
    c = deb_host
    configure(c, openbao)
    c.systemctl("start", SOCKET)
    out = probe(c)
    assert "healthz:  ok" in out
    assert is_active(c, SERVICE) == "active", "the first connection starts the service"


def test_deb_upgrade_under_load_loses_no_call_keeps_config_and_restarts(deb_host, built_packages,
                                                                        kms_stubs):
    c = deb_host
    c.copy_in(built_packages.deb2, "/root/")
    n = upgrade_under_load(c, kms_stubs, ["apt-get", "install", "-y", f"/root/{built_packages.deb2.name}"])
    print(f"{n} KMS round trips (Status, Encrypt, Decrypt) across the upgrade, none failed")
    probe(c, wait="0s")


def test_deb_upgrade_does_not_start_a_stopped_provider(deb_host, built_packages):
    c = deb_host
    c.systemctl("stop", SERVICE)
    assert is_active(c, SOCKET) == "active"
    c.run(["apt-get", "install", "-y", "--reinstall", f"/root/{built_packages.deb2.name}"],
          env=APT_ENV, timeout=180)
    assert is_active(c, SERVICE) == "inactive"
    probe(c)  # and the socket still starts it on demand


def test_deb_upgrade_never_restarts_a_provider_whose_config_is_invalid(deb_host, built_packages):
    c = deb_host
    good = c.read_file(CONFIG)
    service_id = show(c, SERVICE, "InvocationID")
    c.write_file(CONFIG, good + "\n[openbao]\nunknown_field = 1\n")
    r = c.run(["apt-get", "install", "-y", "--reinstall", f"/root/{built_packages.deb2.name}"],
              env=APT_ENV, timeout=180)
    assert "not a valid configuration" in r.stdout + r.stderr, r.stdout + r.stderr
    assert show(c, SERVICE, "InvocationID") == service_id
    assert is_active(c, SERVICE) == "active"
    c.write_file(CONFIG, good)
    probe(c, wait="0s")


def test_deb_remove_stops_and_disables_keeps_config_and_registry(deb_host):
    c = deb_host
    config = sha256(c.read_file(CONFIG))
    registry = c.run(["ls", "/var/lib/openbao-kms"]).stdout.split()
    assert registry, "the provider should have written its key registry"
    c.run(["apt-get", "remove", "-y", "bao-kms-provider"], env=APT_ENV, timeout=180)
    for unit in UNIT_FILES:
        assert not c.exists(f"/lib/systemd/system/{unit}")
        assert is_active(c, unit) == "inactive"
    assert not c.exists("/etc/systemd/system/sockets.target.wants/bao-kms-provider.socket")
    assert not c.exists(KMS_SOCK)
    assert not c.exists("/usr/bin/bao-kms-provider")
    assert sha256(c.read_file(CONFIG)) == config, "remove keeps the (conffile) config"
    assert c.run(["ls", "/var/lib/openbao-kms"]).stdout.split() == registry
    assert c.run(["getent", "passwd", "openbao-kms"], check=False).returncode == 0


def test_deb_purge_removes_the_config_keeps_operator_files_and_the_registry(deb_host):
    c = deb_host
    registry = c.run(["ls", "/var/lib/openbao-kms"]).stdout.split()
    operator = {JWT: c.read_file(JWT), "/etc/openbao-kms/tls/site-ca.pem": "operator's CA\n",
                "/etc/openbao-kms/NOTES": "operator's notes\n"}
    for path, text in operator.items():
        c.write_file(path, text, mode=0o640)
    r = c.run(["apt-get", "purge", "-y", "bao-kms-provider"], env=APT_ENV, timeout=180)
    assert not c.exists(CONFIG)
    for path, text in operator.items():
        assert c.read_file(path) == text, f"purge removed or changed {path}, which the package did not install"
    assert "kept /etc/openbao-kms" in r.stdout + r.stderr, r.stdout + r.stderr
    assert c.run(["ls", "/var/lib/openbao-kms"]).stdout.split() == registry
    assert c.run(["getent", "passwd", "openbao-kms"], check=False).returncode == 0, \
        "the user is kept: it owns the registry"
    r = c.run(["dpkg-query", "-W", "-f", "${Status}", "bao-kms-provider"], check=False)
    assert "installed" not in r.stdout or "not-installed" in r.stdout, r.stdout
    c.run(["rm", "-rf", "/etc/openbao-kms"])   # the operator's own clean-up


def test_deb_purge_removes_the_registry_only_when_asked(deb_host, built_packages):
    c = deb_host
    c.run(["apt-get", "install", "-y", f"/root/{built_packages.deb1.name}"], env=APT_ENV,
          timeout=180)
    assert c.exists("/var/lib/openbao-kms")
    c.run(["apt-get", "purge", "-y", "bao-kms-provider"],
          env={**APT_ENV, "BAO_KMS_PURGE_STATE": "yes"}, timeout=180)
    assert not c.exists("/var/lib/openbao-kms")
    assert not c.exists("/etc/openbao-kms"), "without operator files purge removes the directories too"


# ----------------------------------------------------------------- .rpm
def test_rpm_rpmlint_reports_no_errors_but_the_signature_and_only_accepted_warnings(built_packages):
    r = subprocess.run(["rpmlint", "-c", str(REPO_ROOT / "packaging" / "rpm" / "rpmlint.toml"),
                        built_packages.rpm1], capture_output=True, text=True)
    tags = lint_tags(r.stdout, "rpmlint")
    # `make rpm` does not sign; `make repo` does, and test_repositories.py lints the signed
    # package: 0 errors there.
    assert tags["E"] <= {"no-signature"}, r.stdout
    assert tags["W"] <= RPMLINT_ACCEPTED_WARNINGS, r.stdout


def test_rpm_file_list_config_flags_requires_and_scriptlets(built_packages):
    rpm = str(built_packages.rpm1)

    def q(*args: str) -> str:
        return subprocess.run(["rpm", "-qp", *args, rpm], capture_output=True, text=True,
                              check=True).stdout

    files = set(q("-l").split())
    expected = COMMON_FILES + [f"/usr/lib/systemd/system/{u}" for u in UNIT_FILES] + [
        "/usr/share/licenses/bao-kms-provider/LICENSE",
        "/usr/share/doc/bao-kms-provider/CHANGELOG.md"]
    assert set(expected) <= files, set(expected) - files
    assert unit_documentation_files() <= files, unit_documentation_files() - files
    assert q("-c").split() == [CONFIG]
    flags = dict(line.split(" ", 1)[::-1] for line in
                 q("--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]").splitlines())
    assert flags[CONFIG] == "cn", "the config must be %config(noreplace)"
    requires = {r.split()[0] for r in q("-R").splitlines()}
    assert {r for r in requires if not r.startswith(("rpmlib(", "lib", "ld-linux", "rtld(", "config("))} == \
        {"/bin/sh", "systemd"}, requires
    assert {r.split(".so")[0] for r in requires if r.startswith("lib")} <= {"libc", "libm",
                                                                           "libgcc_s"}
    scripts = q("--scripts")
    for fragment in ["postinstall scriptlet", "systemd-sysusers bao-kms-provider.conf",
                     "systemctl --no-reload preset \"$SOCKET\"", "check-config",
                     "preuninstall scriptlet", "disable --now", "postuninstall scriptlet",
                     "systemctl try-restart bao-kms-provider.service", "BAO_KMS_PURGE_STATE"]:
        assert fragment in scripts, fragment


def rpm(c: Container, *args: str, env: dict | None = None):
    return c.run(["rpm", "--force-debian", *args], env=env, timeout=120)


def test_rpm_installs_and_serves_kms_calls_once_configured(rpm_host, built_packages, openbao):
    c = rpm_host
    c.copy_in(built_packages.rpm1, "/root/")
    c.copy_in(built_packages.rpm2, "/root/")
    r = rpm(c, "-i", "--nodeps", f"/root/{built_packages.rpm1.name}")
    assert "not a valid configuration" in r.stderr, r.stderr
    assert_user_and_dirs(c)
    assert is_enabled(c, SOCKET) == "enabled", "no preset file on Debian: presets enable"
    assert is_active(c, SOCKET) == "inactive"
    configure(c, openbao)
    c.systemctl("start", SOCKET)
    probe(c)


def test_rpm_upgrade_restarts_a_running_provider_and_keeps_config(rpm_host, built_packages):
    c = rpm_host
    config = sha256(c.read_file(CONFIG))
    service_id = show(c, SERVICE, "InvocationID")
    rpm(c, "-U", "--nodeps", f"/root/{built_packages.rpm2.name}")
    assert c.run(["rpm", "-q", "bao-kms-provider"]).stdout.strip() == \
        "bao-kms-provider-0.1.0-2.x86_64"
    assert sha256(c.read_file(CONFIG)) == config
    assert show(c, SERVICE, "InvocationID") != service_id
    probe(c)


def test_rpm_erase_stops_disables_and_keeps_registry_unless_asked(rpm_host, built_packages):
    c = rpm_host
    registry = c.run(["ls", "/var/lib/openbao-kms"]).stdout.split()
    assert registry
    c.write_file("/etc/openbao-kms/NOTES", "operator's notes\n", mode=0o640)
    rpm(c, "-e", "--nodeps", "bao-kms-provider")
    assert c.read_file("/etc/openbao-kms/NOTES") == "operator's notes\n", "erase removed an operator's file"
    for unit in UNIT_FILES:
        assert not c.exists(f"/usr/lib/systemd/system/{unit}")
        assert is_active(c, unit) == "inactive"
    assert not c.exists("/etc/systemd/system/sockets.target.wants/bao-kms-provider.socket")
    assert c.exists(CONFIG + ".rpmsave"), "a modified %config is saved, as rpm does"
    assert c.run(["ls", "/var/lib/openbao-kms"]).stdout.split() == registry
    # Asked explicitly: the registry goes too.
    rpm(c, "-i", "--nodeps", f"/root/{built_packages.rpm1.name}")
    rpm(c, "-e", "--nodeps", "bao-kms-provider", env={"BAO_KMS_PURGE_STATE": "yes"})
    assert not c.exists("/var/lib/openbao-kms")
