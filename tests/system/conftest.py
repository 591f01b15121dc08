"""pytest configuration for system tests (tests/system).

Sections are owned by different people; keep additions in their own
clearly marked section.
"""

# =========================================================================
# BEGIN nspawn harness section (systemd-in-nspawn containers)
# See docs/testing-systemd.md. Fixtures:
#   nspawn_rootfs   (session)  Path of the cached Debian rootfs (built once)
#   container       (function) a booted nspawn.Container, stopped afterwards
#   make_container  (function) factory: make_container(**Container kwargs)
# Environment knobs:
#   BAO_ROOTFS=/path       use this rootfs dir (default: where scripts/rootfs.sh puts it, outside the clone)
#   BAO_NSPAWN_WORKDIR=/p  where per-test container dirs go (default build/nspawn)
#   BAO_NSPAWN_KEEP=1      keep per-test container dirs (upper layer + nspawn.log)
# Missing host prerequisites FAIL the tests (never skip).
# =========================================================================
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nspawn import Container, ContainerError, check_host_prerequisites, cleanup_stale  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
# The shared build folder (worktrees point BUILD_DIR at the main checkout's build/).
BUILD_ROOT = Path(os.environ.get("BUILD_DIR", REPO_ROOT / "build"))
ROOTFS_SCRIPT = REPO_ROOT / "scripts" / "rootfs.sh"
ROOTFS_BUILD_TIMEOUT = 1800  # first debootstrap takes ~1.5 min here


def _nspawn_workdir() -> Path:
    return Path(os.environ.get("BAO_NSPAWN_WORKDIR", BUILD_ROOT / "nspawn"))


@pytest.fixture(scope="session")
def nspawn_rootfs() -> Path:
    """Ensure the cached rootfs exists (scripts/rootfs.sh is idempotent and
    takes a lock, so this is cheap and safe under pytest-xdist)."""
    problems = check_host_prerequisites()
    if problems:
        pytest.fail("systemd-nspawn harness cannot run on this host:\n  - "
                    + "\n  - ".join(problems), pytrace=False)
    dest = [os.environ["BAO_ROOTFS"]] if os.environ.get("BAO_ROOTFS") else []
    t0 = time.monotonic()
    try:
        r = subprocess.run([str(ROOTFS_SCRIPT), *dest], capture_output=True, text=True,
                           timeout=ROOTFS_BUILD_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{ROOTFS_SCRIPT} timed out after {ROOTFS_BUILD_TIMEOUT}s\n{e.stderr or ''}",
                    pytrace=False)
    if r.returncode != 0:
        pytest.fail(f"{ROOTFS_SCRIPT} {' '.join(dest)} failed with rc={r.returncode}\n"
                    f"--- stdout ---\n{r.stdout}\n--- stderr ---\n{r.stderr}", pytrace=False)
    rootfs = Path(r.stdout.splitlines()[-1])  # the script prints where the rootfs is last
    elapsed = time.monotonic() - t0
    if elapsed > 5:
        print(f"[nspawn] built rootfs {rootfs} in {elapsed:.1f}s", file=sys.stderr)
    return rootfs


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    # Make the phase reports available to fixtures (item.rep_setup/rep_call)
    # so container teardown can dump diagnostics for failed tests.
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def _dump_diagnostics(c: Container) -> None:
    print(f"\n===== nspawn diagnostics for failed test: {c!r} =====")
    if c.running:
        for cmd in (["systemctl", "--no-pager", "--failed"],
                    ["journalctl", "-b", "--no-pager", "-n", "200", "-o", "short-monotonic"]):
            try:
                r = c.run(cmd, check=False, timeout=15)
                print(f"--- {' '.join(cmd)} ---\n{r.stdout}{r.stderr}")
            except Exception as e:  # noqa: BLE001 - diagnostics only
                print(f"--- {' '.join(cmd)} failed: {e}")
    out = c.nspawn_output().splitlines()
    print(f"--- nspawn output (last 80 lines of {c.log_path}) ---")
    print("\n".join(out[-80:]))


@pytest.fixture(scope="session")
def _nspawn_stale_cleanup():
    """Once per session: clean up after earlier runs that were killed."""
    cleaned = cleanup_stale(_nspawn_workdir(), keep_dirs=os.environ.get("BAO_NSPAWN_KEEP") == "1")
    if cleaned:
        print(f"[nspawn] cleaned up stale containers: {', '.join(cleaned)}", file=sys.stderr)


@pytest.fixture
def make_container(request, nspawn_rootfs, _nspawn_stale_cleanup):
    """Factory for booted containers with custom options, e.g.
    ``make_container(init_args=["systemd.log_level=debug"])``.  All
    containers are stopped (and their copies removed) at test teardown."""
    made: list[Container] = []

    def factory(**kwargs) -> Container:
        kwargs.setdefault("workdir", _nspawn_workdir())
        c = Container(nspawn_rootfs, **kwargs)
        made.append(c)
        return c.start()

    yield factory

    failed = any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False)
                 for w in ("setup", "call"))
    errors = []
    for c in made:
        if failed and c.log_path is not None and c.log_path.exists():
            _dump_diagnostics(c)
        try:
            c.stop()
        except ContainerError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("container teardown failed:\n" + "\n".join(errors), pytrace=False)


@pytest.fixture
def container(make_container) -> Container:
    """A freshly booted container (systemd is PID 1 and the system reached
    running/degraded).  Per-test overlay copy; discarded afterwards."""
    return make_container()

# =========================================================================
# END nspawn harness section
# =========================================================================

# =========================================================================
# BEGIN packages section (docs/packaging.md)
# Fixture:
#   built_packages (session) the .deb and .rpm built once by `make deb rpm`
#                  (.deb1/.rpm1), plus the same build with a bumped version
#                  (.deb2/.rpm2) for upgrade tests.
# =========================================================================
import dataclasses  # noqa: E402


@dataclasses.dataclass(frozen=True)
class BuiltPackages:
    deb1: Path
    deb2: Path
    rpm1: Path
    rpm2: Path
    release_binary: Path


def _make(args: list[str]) -> None:
    r = subprocess.run(["make", "-C", str(REPO_ROOT), *args], capture_output=True, text=True,
                       timeout=3600)
    if r.returncode != 0:
        pytest.fail(f"make {' '.join(args)} failed with rc={r.returncode}\n"
                    f"--- stdout ---\n{r.stdout[-4000:]}\n--- stderr ---\n{r.stderr[-4000:]}",
                    pytrace=False)


def _one(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    if len(found) != 1:
        pytest.fail(f"expected one {pattern} in {directory}, found {found}", pytrace=False)
    return found[0]


@pytest.fixture(scope="session")
def built_packages(tmp_path_factory) -> BuiltPackages:
    """`make deb rpm` once per session; the second build only repackages (no compile)."""
    out = tmp_path_factory.mktemp("packages")
    t0 = time.monotonic()
    _make(["deb", "rpm", f"PKG_DIR={out}/v1"])
    _make(["deb", "rpm", f"PKG_DIR={out}/v2", "DEB_FLAGS=--deb-version 0.1.0-2",
           "RPM_RELEASE=2"])
    print(f"[packages] built in {time.monotonic() - t0:.1f}s into {out}", file=sys.stderr)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target"))
    return BuiltPackages(
        deb1=_one(out / "v1", "*.deb"), deb2=_one(out / "v2", "*.deb"),
        rpm1=_one(out / "v1", "*.rpm"), rpm2=_one(out / "v2", "*.rpm"),
        release_binary=target / "release" / "bao-kms-provider")

@pytest.fixture(scope="session")
def rpm_rootfs(nspawn_rootfs) -> Path:
    """The test rootfs; it carries Debian's `rpm` for installing the .rpm under systemd."""
    return nspawn_rootfs

# =========================================================================
# END packages section
# =========================================================================

# =========================================================================
# BEGIN provider-under-systemd section (provider_host.py)
# Fixtures shared by the systemd, outage, PKCS#11 and rotation tests:
#   bao     (module)   a real OpenBao dev server with Transit, the provider's
#                      policy and JWT auth (tests/system/openbao.py)
#   host    (function) a booted container with the cargo-built binary
#                      bind-mounted at /usr/bin/bao-kms-provider (read-only)
#   kms_pb  (session)  grpcio stubs for the KMS v2 API: (api_pb2, api_pb2_grpc)
# =========================================================================
@pytest.fixture(scope="module")
def bao():
    from openbao import BaoDevServer, provider_config, provider_policy
    server = BaoDevServer().start()
    try:
        server.setup(provider_policy(provider_config(server.addr)))
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def host(make_container):
    from openbao import provider_binary
    return make_container(binds=[(str(provider_binary()), "/usr/bin/bao-kms-provider", True)])


@pytest.fixture(scope="session")
def kms_pb(tmp_path_factory):
    from provider_host import kms_stubs
    return kms_stubs(tmp_path_factory.mktemp("kms-stubs"))

# =========================================================================
# END provider-under-systemd section
# =========================================================================

# =========================================================================
# BEGIN Ansible section (ansible_helpers.py)
#   openbao (module) a real OpenBao dev server with TLS (the roles' CA handling needs it), empty:
#                    the openbao_transit role sets it up (test_packages.py and
#                    test_rotation_hosts.py define their own: plain HTTP, set up for the provider)
#   signer  (module) the RSA key standing in for the control-plane hosts' identity issuer
# =========================================================================
@pytest.fixture(scope="module")
def openbao(tmp_path_factory):
    from openbao import BaoDevServer
    server = BaoDevServer(workdir=tmp_path_factory.mktemp("openbao"), tls=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def signer():
    from ansible_helpers import JwtSigner
    return JwtSigner()

# =========================================================================
# END Ansible section
# =========================================================================

# =========================================================================
# BEGIN dnf host section (test_repositories.py)
#   dnf_rootfs (session) a second cached rootfs: a copy of the nspawn one plus
#              Debian's dnf and dnf-plugins-core (versionlock), for the role's dnf path
# =========================================================================
@pytest.fixture(scope="session")
def dnf_rootfs(nspawn_rootfs) -> Path:
    rootfs = Path(os.environ.get("BAO_DNF_ROOTFS", nspawn_rootfs.parent / f"{nspawn_rootfs.name}-dnf"))
    r = subprocess.run([str(ROOTFS_SCRIPT), str(rootfs)], capture_output=True, text=True,
                       timeout=ROOTFS_BUILD_TIMEOUT,
                       env={**os.environ, "ROOTFS_BASE": str(nspawn_rootfs),
                            "ROOTFS_EXTRA_PACKAGES": "dnf,dnf-plugins-core"})
    if r.returncode != 0:
        pytest.fail(f"{ROOTFS_SCRIPT} {rootfs} (with dnf) failed with rc={r.returncode}\n"
                    f"--- stdout ---\n{r.stdout}\n--- stderr ---\n{r.stderr}", pytrace=False)
    return rootfs

# =========================================================================
# END dnf host section
# =========================================================================
