"""The signed repositories of `make repo` (docs/repositories.md), used the way hosts use them.

A throwaway GnuPG key (batch, no passphrase, in a temporary GNUPGHOME) signs the repository. On
the RPM side `rpm -K` checks every package against the exported key, rpmlint finds no error in
the signed package, and Debian's `dnf` reads the metadata with repo_gpgcheck and resolves the
package by name. On the apt side a systemd-nspawn Debian host adds the repository (served over
HTTP on the host's loopback, which the container shares), `apt-get update` verifies it,
`apt-get install bao-kms-provider` installs it by name, the held version survives `apt-get
upgrade`, an upgrade to the newer version from the same repository keeps the config and loses no
KMS call, and a repository signed by another key is refused. Last, the Ansible role sets the
repository up on a fresh host, installs and holds the pinned version, changes nothing on a second
run and upgrades when the version is changed. The role's dnf path runs the same way on a Debian
container with Debian's dnf, rpm and versionlock plugin, a provides-only RPM standing in for the
base system that Debian's rpmdb lacks (see the dnf section below and docs/repositories.md).

The apt tests share one container and run in file order, like an operator's host.
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ansible_helpers import run_playbook  # noqa: E402
from openbao import free_port  # noqa: E402
from test_packages import (APT_ENV, SERVICE, SOCKET, configure, kms_stubs,  # noqa: E402,F401
                           lint_tags, module_container, openbao, probe, show, upgrade_under_load)

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "bao-kms-provider"
KEYRING = "/etc/apt/keyrings/bao-kms-provider.asc"


@dataclasses.dataclass
class SigningKey:
    home: Path
    fingerprint: str

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "GNUPGHOME": str(self.home)}


def new_key(home: Path, name: str) -> SigningKey:
    """A throwaway signing key (RSA 3072, no passphrase, expires in a day)."""
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key",
                    f"{name} <{name}@example.invalid>", "rsa3072", "sign", "1d"],
                   env=env, check=True, capture_output=True, timeout=300)
    out = subprocess.run(["gpg", "--batch", "--with-colons", "--list-secret-keys"], env=env, check=True,
                         capture_output=True, text=True).stdout
    fprs = [line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:")]
    return SigningKey(home, fprs[0])


def repo_script(key: SigningKey, pkg_dir: Path, repo_dir: Path) -> None:
    """scripts/repo.sh as `make repo` runs it, for packages that are already built."""
    r = subprocess.run([str(REPO_ROOT / "scripts" / "repo.sh")], capture_output=True, text=True, timeout=300,
                       env={**key.env, "PKG_DIR": str(pkg_dir), "REPO_DIR": str(repo_dir),
                            "REPO_SIGNING_KEY": key.fingerprint})
    assert r.returncode == 0, f"scripts/repo.sh failed:\n{r.stdout}\n{r.stderr}"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    base = Path(tempfile.mkdtemp(prefix="gpg-", dir="/tmp"))  # short: gpg-agent's socket path
    made = [new_key(base / "good", "bao-kms-provider-test"), new_key(base / "other", "someone-else")]
    yield made
    for k in made:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=k.env, check=False)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A static web server on the host's loopback for the directory `root` (good/, other/)."""
    root = tmp_path_factory.mktemp("served")
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def repo(built_packages, keys, served) -> Path:
    """`make repo` with the throwaway key into <served>/good: version 0.1.0-1 only, for now."""
    good, root = keys[0], served[0] / "good"
    r = subprocess.run(["make", "-C", str(REPO_ROOT), "repo", f"PKG_DIR={built_packages.deb1.parent}",
                        f"REPO_DIR={root}", f"REPO_SIGNING_KEY={good.fingerprint}"],
                       env=good.env, capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, f"make repo failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return root


def add_version_2(repo: Path, built_packages, keys) -> None:
    """Publishes 0.1.0-2 into the same repository (idempotent)."""
    repo_script(keys[0], built_packages.deb2.parent, repo)


# ----------------------------------------------------------------- make repo
def test_make_repo_without_a_signing_key_stops_with_a_clear_message():
    r = subprocess.run(["make", "-C", str(REPO_ROOT), "repo", "REPO_SIGNING_KEY="], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0
    assert "set REPO_SIGNING_KEY to the fingerprint of the signing key" in r.stderr, r.stderr
    assert "Compiling" not in r.stderr, "it must stop before building anything"


def test_repo_script_names_a_key_that_is_not_there(keys, built_packages, tmp_path):
    r = subprocess.run([str(REPO_ROOT / "scripts" / "repo.sh")], capture_output=True, text=True,
                       env={**keys[0].env, "PKG_DIR": str(built_packages.deb1.parent),
                            "REPO_DIR": str(tmp_path / "r"), "REPO_SIGNING_KEY": "0" * 40})
    assert r.returncode == 2 and f"REPO_SIGNING_KEY={'0' * 40}: no such secret key" in r.stderr, r.stderr


def test_repo_layout_and_sha256_signatures(repo, keys):
    for rel in ["bao-kms-provider.asc", "bao-kms-provider.gpg", "apt/dists/stable/InRelease",
                "apt/dists/stable/Release", "apt/dists/stable/Release.gpg",
                "apt/dists/stable/main/binary-amd64/Packages", "apt/dists/stable/main/binary-amd64/Packages.gz",
                "rpm/repodata/repomd.xml", "rpm/repodata/repomd.xml.asc"]:
        assert (repo / rel).is_file(), rel
    assert [p.name for p in (repo / "apt/pool/main/b/bao-kms-provider").iterdir()] == [
        "bao-kms-provider_0.1.0-1_amd64.deb"]
    assert [p.name for p in (repo / "rpm").glob("*.rpm")] == ["bao-kms-provider-0.1.0-1.x86_64.rpm"]
    release = (repo / "apt/dists/stable/Release").read_text()
    assert "SHA256:" in release and "MD5Sum:" not in release and "SHA1:" not in release, release
    assert "Suite: stable" in release and "Components: main" in release
    # No private key material is published.
    assert "PRIVATE KEY" not in (repo / "bao-kms-provider.asc").read_text()
    # Each signature uses SHA-256: the clear-signed InRelease says so in its armour header, the
    # detached signatures carry digest algorithm 8.
    assert "\nHash: SHA256\n" in (repo / "apt/dists/stable/InRelease").read_text()
    for sig in ["apt/dists/stable/Release.gpg", "rpm/repodata/repomd.xml.asc"]:
        packets = subprocess.run(["gpg", "--batch", "--list-packets", repo / sig], env=keys[0].env,
                                 capture_output=True, text=True).stdout
        assert "digest algo 8" in packets, f"{sig}:\n{packets}"
    subprocess.run(["gpgv", "--keyring", repo / "bao-kms-provider.gpg", repo / "apt/dists/stable/InRelease"],
                   check=True, capture_output=True)
    subprocess.run(["gpgv", "--keyring", repo / "bao-kms-provider.gpg", repo / "rpm/repodata/repomd.xml.asc",
                    repo / "rpm/repodata/repomd.xml"], check=True, capture_output=True)


# ----------------------------------------------------------------- RPM side
def rpm_db_with(tmp_path: Path, name: str, key_file: Path) -> Path:
    db = tmp_path / name
    db.mkdir()
    subprocess.run(["rpm", "--dbpath", db, "--initdb"], check=True, capture_output=True)
    subprocess.run(["rpm", "--dbpath", db, "--import", key_file], check=True, capture_output=True)
    return db


def test_rpm_K_verifies_every_package_against_the_exported_key(repo, keys, tmp_path):
    db = rpm_db_with(tmp_path, "good", repo / "bao-kms-provider.asc")
    other_asc = tmp_path / "other.asc"
    other_asc.write_bytes(subprocess.run(["gpg", "--armor", "--export", keys[1].fingerprint], env=keys[1].env,
                                         capture_output=True, check=True).stdout)
    other_db = rpm_db_with(tmp_path, "other", other_asc)
    rpms = sorted((repo / "rpm").glob("*.rpm"))
    assert rpms
    short_id = keys[0].fingerprint[-8:].lower()
    for rpm in rpms:
        r = subprocess.run(["rpm", "--dbpath", db, "-Kv", rpm], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        # rpmsign's header signature (RSA, SHA-256, the repository key) covers the payload through
        # the header's payload SHA-256 digest.
        assert f"Header V4 RSA/SHA256 Signature, key ID {short_id}: OK" in r.stdout, r.stdout
        assert "Payload SHA256 digest: OK" in r.stdout, r.stdout
        assert "NOT OK" not in r.stdout and "NOKEY" not in r.stdout, r.stdout
        r = subprocess.run(["rpm", "--dbpath", other_db, "-K", rpm], capture_output=True, text=True)
        assert r.returncode != 0 and "NOT OK" in r.stdout + r.stderr, r.stdout + r.stderr


def test_rpmlint_finds_no_error_in_the_signed_package(repo, tmp_path):
    """No error filter: packaging/rpm/rpmlint.toml only adapts rpmlint's openSUSE defaults. The
    signature check uses rpm's database, so rpmlint runs like on a host that trusts the key."""
    config = REPO_ROOT / "packaging" / "rpm" / "rpmlint.toml"
    assert "Filters" not in config.read_text() or not re.search(
        r"no-signature|no-packager-tag|no-group-tag|no-buildhost-tag|no-changelogname-tag", config.read_text())
    rpm = repo / "rpm" / "bao-kms-provider-0.1.0-1.x86_64.rpm"
    db = rpm_db_with(tmp_path, "db", repo / "bao-kms-provider.asc")
    (tmp_path / ".rpmmacros").write_text(f"%_dbpath {db}\n")
    r = subprocess.run(["rpmlint", "-c", str(config), rpm], capture_output=True, text=True,
                       env={**os.environ, "HOME": str(tmp_path)})
    tags = lint_tags(r.stdout, "rpmlint")
    assert not tags["E"], r.stdout
    assert " 0 errors" in r.stdout, r.stdout


def dnf(tmp_path: Path, repo_dir: Path, asc: Path, *args: str) -> subprocess.CompletedProcess:
    """Debian's dnf against one repository with gpgcheck and repo_gpgcheck, in an empty installroot."""
    reposd = tmp_path / "repos.d"
    reposd.mkdir(exist_ok=True)
    (reposd / "bao-kms-provider.repo").write_text(
        "[bao-kms-provider]\nname=bao-kms-provider\n"
        f"baseurl=file://{repo_dir}\ngpgcheck=1\nrepo_gpgcheck=1\ngpgkey=file://{asc}\n")
    (tmp_path / "log").mkdir(exist_ok=True)
    try:
        return subprocess.run(["dnf", "-y", f"--installroot={tmp_path / 'root'}", "--releasever=9",
                               f"--setopt=reposdir={reposd}", f"--setopt=cachedir={tmp_path / 'cache'}",
                               f"--setopt=logdir={tmp_path / 'log'}", "--setopt=skip_if_unavailable=False",
                               "--disablerepo=*", "--enablerepo=bao-kms-provider", *args],
                              capture_output=True, text=True, timeout=300)
    finally:
        # dnf's GnuPG keyring for repo_gpgcheck starts a gpg-agent that would outlive the test.
        for pubring in (tmp_path / "cache").glob("*/pubring"):
            subprocess.run(["gpgconf", "--homedir", str(pubring), "--kill", "gpg-agent"], check=False,
                           capture_output=True)


def test_dnf_reads_the_signed_metadata_and_resolves_the_package_by_name(repo, tmp_path):
    r = dnf(tmp_path, repo / "rpm", repo / "bao-kms-provider.asc", "repoquery",
            "--qf", "%{name}-%{version}-%{release}.%{arch}", PACKAGE)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ["bao-kms-provider-0.1.0-1.x86_64"], r.stdout + r.stderr


def test_dnf_refuses_metadata_signed_by_another_key(repo, keys, tmp_path):
    forged = tmp_path / "forged"
    shutil.copytree(repo / "rpm", forged)
    subprocess.run(["gpg", "--batch", "--yes", "--local-user", keys[1].fingerprint, "--armor",
                    "--detach-sign", "--output", forged / "repodata/repomd.xml.asc",
                    forged / "repodata/repomd.xml"], env=keys[1].env, check=True, capture_output=True)
    r = dnf(tmp_path, forged, repo / "bao-kms-provider.asc", "repoquery", PACKAGE)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "bao-kms-provider-0.1.0" not in r.stdout
    assert "repomd.xml GPG signature verification error" in r.stdout + r.stderr, r.stdout + r.stderr


# ----------------------------------------------------------------- apt side, one host
@pytest.fixture(scope="module")
def apt_host(request, nspawn_rootfs, _nspawn_stale_cleanup):
    yield from module_container(request, nspawn_rootfs)


def only_our_sources(c) -> None:
    """The test host reaches no Debian mirror: only the repository under test is configured."""
    c.write_file("/etc/apt/sources.list", "")


def apt_source(c, name: str, url: str, keyring: str = KEYRING) -> None:
    c.write_file(f"/etc/apt/sources.list.d/{name}.sources",
                 f"Types: deb\nURIs: {url}\nSuites: stable\nComponents: main\nArchitectures: amd64\n"
                 f"Signed-By: {keyring}\n")


def installed_version(c) -> str:
    return c.run(["dpkg-query", "-W", "-f", "${Version}", PACKAGE]).stdout


def test_apt_update_verifies_the_repository_and_installs_by_name(apt_host, repo, served):
    c = apt_host
    url = f"{served[1]}/good/apt"
    only_our_sources(c)
    c.run(["install", "-d", "-m", "0755", "/etc/apt/keyrings"])
    c.copy_in(repo / "bao-kms-provider.asc", KEYRING)
    apt_source(c, "bao-kms-provider", url)
    r = c.run(["apt-get", "update"], env=APT_ENV, timeout=180, check=False)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and f"{url} stable InRelease" in out, out
    assert "W:" not in out and "E:" not in out, out
    policy = c.run(["apt-cache", "policy", PACKAGE]).stdout
    assert "Candidate: 0.1.0-1" in policy and f"{url} stable/main amd64 Packages" in policy, policy
    r = c.run(["apt-get", "install", "-y", PACKAGE], env=APT_ENV, timeout=300)
    assert "not a valid configuration" in r.stdout + r.stderr
    assert installed_version(c) == "0.1.0-1"


def test_apt_installed_from_the_repository_serves_kms_calls(apt_host, openbao):
    c = apt_host
    configure(c, openbao)
    c.systemctl("start", SOCKET)
    probe(c)


def test_apt_held_version_is_kept_by_apt_get_upgrade(apt_host, repo, built_packages, keys):
    c = apt_host
    add_version_2(repo, built_packages, keys)
    c.run(["apt-mark", "hold", PACKAGE])
    c.run(["apt-get", "update"], env=APT_ENV, timeout=180)
    assert "Candidate: 0.1.0-2" in c.run(["apt-cache", "policy", PACKAGE]).stdout
    r = c.run(["apt-get", "upgrade", "-y"], env=APT_ENV, timeout=300)
    assert installed_version(c) == "0.1.0-1", r.stdout
    assert "kept back" in r.stdout or "held" in r.stdout, r.stdout


def test_apt_upgrade_from_the_repository_under_load_loses_no_call_and_keeps_config(apt_host, kms_stubs):
    c = apt_host
    n = upgrade_under_load(c, kms_stubs, ["apt-get", "install", "-y", "--allow-change-held-packages",
                                          f"{PACKAGE}=0.1.0-2"])
    print(f"{n} KMS round trips across the upgrade from the repository, none failed")
    # apt-get install drops the hold of the package it installs: docs/repositories.md says to hold
    # it again, as the Ansible role does.
    assert PACKAGE not in c.run(["apt-mark", "showhold"]).stdout.split()
    c.run(["apt-mark", "hold", PACKAGE])


def test_apt_refuses_a_repository_signed_by_another_key(apt_host, built_packages, keys, served):
    c = apt_host
    repo_script(keys[1], built_packages.deb2.parent, served[0] / "other")
    url = f"{served[1]}/other/apt"
    apt_source(c, "other", url)  # trusted for the project's key only, as a host would have it
    try:
        r = c.run(["apt-get", "update"], env=APT_ENV, timeout=180, check=False)
        out = r.stdout + r.stderr
        assert r.returncode != 0, out
        assert f"NO_PUBKEY {keys[1].fingerprint[-16:]}" in out and "is not signed" in out, out
        lists = c.run(["ls", "/var/lib/apt/lists"]).stdout
        assert "other_apt_dists_stable_main_binary-amd64_Packages" not in lists, lists
    finally:
        c.run(["rm", "-f", "/etc/apt/sources.list.d/other.sources"])


# ----------------------------------------------------------------- the Ansible role, apt
ROLE_PLAYBOOK = """\
- name: Install bao-kms-provider from the repository
  hosts: all
  gather_facts: true
  gather_subset: [min]
  roles:
    - bao_kms_provider
"""


@pytest.fixture(scope="module")
def role_host(request, nspawn_rootfs, _nspawn_stale_cleanup):
    yield from module_container(request, nspawn_rootfs)


def role_host_vars(c, repo: Path, served, openbao) -> dict:
    """The bao_kms_provider role's variables for container `c`: version 0.1.0-1 from the served
    repository, the lab OpenBao (BaoDevServer.setup's key and JWT role)."""
    return {
        "ansible_connection": "nsenter", "ansible_nsenter_pid": c.pid,
        "ansible_python_interpreter": "/usr/bin/python3",
        "bao_kms_provider_repo_url": f"{served[1]}/good/",
        "bao_kms_provider_repo_key": (repo / "bao-kms-provider.asc").read_text(),
        "bao_kms_provider_version": "0.1.0-1",
        "bao_kms_provider_openbao_address": openbao.addr,
        "bao_kms_provider_openbao_instance_id": "openbao-test",
        "bao_kms_provider_jwt": openbao.mint_jwt(),
        "bao_kms_provider_cluster_id": "test-cluster",
        "bao_kms_provider_transit_mount_id": "transit-test",
        "bao_kms_provider_key_lineage_id": "lineage-1",
        "bao_kms_provider_transit_key_name": "k8s-etcd",
        "bao_kms_provider_metrics_address": f"127.0.0.1:{free_port()}",
        "bao_kms_provider_health_address": f"127.0.0.1:{free_port()}",
    }


def test_ansible_role_sets_up_the_repository_installs_holds_and_upgrades(role_host, repo, served, openbao,
                                                                         built_packages, keys, tmp_path):
    c = role_host
    add_version_2(repo, built_packages, keys)  # both versions published; the role pins one
    only_our_sources(c)
    playbook = tmp_path / "repo-role.yml"
    playbook.write_text(ROLE_PLAYBOOK)
    host = role_host_vars(c, repo, served, openbao)
    inventory = {"all": {"hosts": {"cp1": host}}}

    first = run_playbook(str(playbook), inventory).assert_ok()
    assert first.changed("cp1") > 0
    assert installed_version(c) == "0.1.0-1"
    assert c.run(["apt-mark", "showhold"]).stdout.split() == [PACKAGE]
    sources = c.read_file("/etc/apt/sources.list.d/bao-kms-provider.sources")
    assert f"URIs: {served[1]}/good/apt\n" in sources and f"Signed-By: {KEYRING}\n" in sources, sources
    assert c.read_file(KEYRING) == (repo / "bao-kms-provider.asc").read_text()

    second = run_playbook(str(playbook), inventory).assert_ok()
    assert second.changed("cp1") == 0, second.output

    # A new version is rolled out by changing the variable: upgraded, still held, restarted.
    service_id = show(c, SERVICE, "InvocationID")
    host["bao_kms_provider_version"] = "0.1.0-2"
    third = run_playbook(str(playbook), inventory).assert_ok()
    assert third.changed("cp1") > 0
    assert installed_version(c) == "0.1.0-2"
    assert c.run(["apt-mark", "showhold"]).stdout.split() == [PACKAGE]
    assert show(c, SERVICE, "InvocationID") != service_id
    probe(c, wait="0s")

    fourth = run_playbook(str(playbook), inventory).assert_ok()
    assert fourth.changed("cp1") == 0, fourth.output


# ----------------------------------------------------------------- the Ansible role, dnf
# A real dnf host, as close as this machine allows (no RPM distribution is reachable here, only
# Debian): a systemd-nspawn Debian container with Debian's dnf, rpm and dnf-plugins-core (the
# versionlock plugin), treated as a dnf host. Its rpmdb is empty, so the RPM's automatic
# dependencies (libc.so.6(GLIBC_…), libgcc_s, systemd, /bin/sh, …) have no provider; a
# provides-only RPM stands in for the base system a RHEL host has in its rpmdb. It provides
# exactly what the package requires (read from the .rpm, so it cannot hide a new dependency by
# accident) plus the versionlock plugin and system-release(releasever) that Debian's packages
# install outside the rpmdb. Everything else is real: the role's yum_repository with gpgcheck
# and repo_gpgcheck, the repository over HTTP, dnf verifying repomd.xml's signature and the
# package's, importing the key into the rpmdb, resolving and installing by name, the RPM
# scriptlets under systemd, versionlock, the upgrade, and idempotence.
DNF_ROLE_PLAYBOOK = """\
- name: Install bao-kms-provider from the repository on a dnf host
  hosts: all
  gather_facts: true
  gather_subset: [min]
  pre_tasks:
    - name: Treat this Debian container as a dnf host (what setup reports on RHEL)
      ansible.builtin.set_fact:
        pkg_mgr: dnf
        cacheable: true
  roles:
    - bao_kms_provider
"""


@pytest.fixture(scope="module")
def dnf_host(request, dnf_rootfs, _nspawn_stale_cleanup):
    yield from module_container(request, dnf_rootfs)


def base_system_rpm(package: Path, workdir: Path) -> Path:
    """A provides-only RPM for what `package` requires from the base system (see above)."""
    def q(*args: str) -> list[str]:
        return subprocess.run(["rpm", "-qp", *args, str(package)], capture_output=True, text=True,
                              check=True).stdout.splitlines()
    own = {line.split()[0] for line in q("--provides")}
    provides = ["python3-dnf-plugin-versionlock", "system-release(releasever) = 9"]
    requires = q("--requires")
    glibc = [tuple(int(x) for x in m.group(1).split(".")) for r in requires
             if (m := re.match(r"libc\.so\.6\(GLIBC_([0-9.]+)\)", r))]
    # The stand-in must not provide what RHEL 9 lacks: its glibc is 2.34.
    assert glibc and max(glibc) <= (2, 34), f"the binary needs glibc {max(glibc)}; RHEL 9 has 2.34"
    for req in requires:
        name, *ver = req.split()
        if name.startswith("rpmlib(") or name in own:
            continue
        provides.append(f"{name} = {ver[1]}" if len(ver) == 2 and ver[0] in ("=", ">=") else name)
    spec = workdir / "base-system.spec"
    spec.write_text("Name: test-base-system\nVersion: 9\nRelease: 1\nSummary: base system stand-in\n"
                    "License: MIT\nBuildArch: noarch\n" + "".join(f"Provides: {p}\n" for p in provides)
                    + "%description\nWhat the base system provides on a RHEL 9 host.\n%files\n")
    subprocess.run(["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {workdir / 'rpmbuild'}",
                    "--define", f"_rpmdir {workdir}", "--define",
                    "_build_name_fmt %{NAME}.rpm", str(spec)], check=True, capture_output=True)
    return workdir / "test-base-system.rpm"


def rpm_version(c) -> str:
    return c.run(["rpm", "-q", "--qf", "%{VERSION}-%{RELEASE}", PACKAGE], check=False).stdout


def test_ansible_role_dnf_path_installs_verifies_locks_and_upgrades(dnf_host, repo, served, openbao,
                                                                  built_packages, keys, tmp_path):
    c = dnf_host
    add_version_2(repo, built_packages, keys)  # both versions published; the role pins one
    only_our_sources(c)
    base = base_system_rpm(repo / "rpm" / f"{PACKAGE}-0.1.0-1.x86_64.rpm", tmp_path)
    c.copy_in(base, "/root/")
    c.run(["rpm", "-i", "/root/test-base-system.rpm"])
    c.run(["install", "-d", "-m", "0755", "/etc/yum.repos.d", "/etc/pki/rpm-gpg"])
    assert c.run(["rpm", "-qa", "gpg-pubkey*"]).stdout.strip() == "", "no key trusted before the role"
    playbook = tmp_path / "dnf-role.yml"
    playbook.write_text(DNF_ROLE_PLAYBOOK)
    host = role_host_vars(c, repo, served, openbao)
    inventory = {"all": {"hosts": {"cp1": host}}}

    first = run_playbook(str(playbook), inventory).assert_ok()
    assert first.changed("cp1") > 0
    assert rpm_version(c) == "0.1.0-1", first.output
    repo_file = c.read_file("/etc/yum.repos.d/bao-kms-provider.repo")
    for line in (f"baseurl = {served[1]}/good/rpm", "gpgcheck = 1", "repo_gpgcheck = 1",
                 "gpgkey = file:///etc/pki/rpm-gpg/RPM-GPG-KEY-bao-kms-provider"):
        assert line in repo_file, repo_file
    # dnf imported the repository key into the rpmdb (gpgcheck) and the package verifies with it.
    fpr = keys[0].fingerprint.lower()
    assert c.run(["rpm", "-q", f"gpg-pubkey-{fpr[-8:]}"], check=False).returncode == 0, \
        c.run(["rpm", "-qa", "gpg-pubkey*"]).stdout
    info = [line for line in c.run(["rpm", "-qi", PACKAGE]).stdout.splitlines()
            if line.startswith("Signature")]
    assert info and "SHA256" in info[0] and fpr[-16:] in info[0].lower(), info
    lock = c.read_file("/etc/dnf/plugins/versionlock.list")
    assert f"{PACKAGE}-0:0.1.0-1.*" in lock.splitlines(), lock
    probe(c)  # the role configured and started it

    # The lock holds: a plain `dnf upgrade` leaves the pinned version although 0.1.0-2 is there.
    r = c.run(["dnf", "-y", "upgrade", PACKAGE], check=False, timeout=300)
    assert rpm_version(c) == "0.1.0-1", r.stdout + r.stderr
    r = c.run(["dnf", "-q", "--disableplugin=versionlock", "list", "--available", PACKAGE], timeout=300)
    assert "0.1.0-2" in r.stdout, r.stdout

    second = run_playbook(str(playbook), inventory).assert_ok()
    assert second.changed("cp1") == 0, second.output

    service_id = show(c, SERVICE, "InvocationID")
    host["bao_kms_provider_version"] = "0.1.0-2"
    third = run_playbook(str(playbook), inventory).assert_ok()
    assert third.changed("cp1") > 0
    assert rpm_version(c) == "0.1.0-2", third.output
    lock = c.read_file("/etc/dnf/plugins/versionlock.list")
    assert [line for line in lock.splitlines() if PACKAGE in line] == [f"{PACKAGE}-0:0.1.0-2.*"], lock
    assert show(c, SERVICE, "InvocationID") != service_id
    probe(c, wait="0s")

    fourth = run_playbook(str(playbook), inventory).assert_ok()
    assert fourth.changed("cp1") == 0, fourth.output


def test_example_inventory_points_at_where_make_deb_writes(built_packages):
    text = (REPO_ROOT / "ansible" / "inventory.example.yml").read_text()
    m = re.search(r'bao_kms_provider_package_file: "\{\{ playbook_dir \}\}/\.\./\.\./(\S+?)"', text)
    assert m, "the example inventory has no package_file example"
    assert m.group(1) == f"target/packages/{built_packages.deb1.name}", m.group(1)
    hosts = yaml.safe_load(text)["all"]["children"]["kube_control_plane"]["vars"]
    assert hosts["bao_kms_provider_repo_url"] and hosts["bao_kms_provider_version"] == "0.1.0-1"
