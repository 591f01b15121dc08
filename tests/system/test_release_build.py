"""What distributions expect of the Rust binary they ship (docs/packaging.md, "Reproducible
packages"): the dependency tree embedded by cargo-auditable, no path of the build machine in the
binary, and packaging the same build twice gives byte-identical payloads.

A full rebuild from two clean clones is `make repro` (two release builds: too slow for `make test`).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import BUILD_ROOT, REPO_ROOT, _make, _one  # noqa: E402

TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target"))
CARGO_HOME = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))


def deb_payload(deb: Path) -> bytes:
    """The data.tar.* member of a .deb (its file tree, without the control part)."""
    members = subprocess.run(["ar", "t", deb], capture_output=True, text=True, check=True).stdout.split()
    data = [m for m in members if m.startswith("data.tar")]
    assert len(data) == 1, members
    return subprocess.run(["ar", "p", deb, data[0]], capture_output=True, check=True).stdout


def rpm_tag(rpm: Path, tag: str) -> str:
    return subprocess.run(["rpm", "-qp", "--qf", f"%{{{tag}}}", rpm], capture_output=True, text=True,
                          check=True).stdout


def test_packaging_the_same_build_twice_gives_identical_payloads(built_packages, tmp_path):
    again = tmp_path / "again"
    _make(["deb", "rpm", f"PKG_DIR={again}"])
    deb, rpm = _one(again, "*.deb"), _one(again, "*.rpm")
    assert deb_payload(deb) == deb_payload(built_packages.deb1), "the .deb payloads differ"
    digest = rpm_tag(rpm, "PAYLOADDIGEST")
    assert digest and digest == rpm_tag(built_packages.rpm1, "PAYLOADDIGEST"), "the .rpm payloads differ"
    # Fixed BuildHost and BUILDTIME = the commit's time make the whole header the same, too.
    commit_time = subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=REPO_ROOT, capture_output=True,
                                 text=True, check=True).stdout.strip()
    assert rpm_tag(rpm, "BUILDHOST") == "reproducible"
    assert rpm_tag(rpm, "BUILDTIME") == commit_time
    assert rpm.read_bytes() == built_packages.rpm1.read_bytes(), "unsigned .rpm files differ"


def test_release_binary_contains_no_path_of_the_build_machine(built_packages):
    binary = built_packages.release_binary.read_bytes()
    for path in {REPO_ROOT, TARGET_DIR, CARGO_HOME, BUILD_ROOT}:
        assert str(path).encode() not in binary, f"{built_packages.release_binary} contains {path}"
    # The remapped prefix is what a panic location in a dependency shows instead.
    assert b"/usr/src/cargo/registry/src/" in binary


def test_release_binary_carries_its_dependency_tree(built_packages, tmp_path):
    # The packaged (stripped) binary, as a distro scanner would see it.
    subprocess.run(["dpkg-deb", "-x", built_packages.deb1, tmp_path], check=True)
    binary = tmp_path / "usr" / "bin" / "bao-kms-provider"
    sections = subprocess.run(["readelf", "-S", "-W", binary], capture_output=True, text=True,
                              check=True).stdout
    assert ".dep-v0" in sections, sections
    r = subprocess.run([str(BUILD_ROOT / "tools" / "bin" / "rust-audit-info"), str(binary)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    packages = {p["name"]: p for p in json.loads(r.stdout)["packages"]}
    assert packages["bao-kms-provider"]["root"] is True
    assert packages["bao-kms-provider"]["version"] == "0.1.0"
    # Runtime dependencies are listed (build-only ones are marked "kind": "build").
    for name in ("rustls", "tokio", "tonic", "reqwest"):
        assert name in packages, sorted(packages)
