"""The test control plane itself with several hosts (kube_cluster.py): one external etcd, the
shared PKI as `kubeadm join --control-plane` expects it, a kube-apiserver per host on its own
advertise address, and the static-pod runner doing kubelet's part (restart on exit, recreate on a
manifest change, hostPath mounts only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kube_cluster import ControlPlane, kube_bin_dir  # noqa: E402


@pytest.fixture(scope="module")
def plane(tmp_path_factory, nspawn_rootfs):
    with ControlPlane(nspawn_rootfs, kube_bin_dir(), tmp_path_factory.mktemp("plane"), hosts=2,
                      controller_manager=False) as cp:
        yield cp


def test_two_api_servers_on_their_own_addresses_share_one_etcd_and_one_ca(plane):
    a, b = plane.hosts
    assert a.address != b.address
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared", "namespace": "default"},
            "data": {"written-through": a.name}}
    status, out = plane.api(0).request("POST", "/api/v1/namespaces/default/configmaps", body)
    assert status == 201, out
    status, out = plane.api(1).request("GET", "/api/v1/namespaces/default/configmaps/shared")
    assert status == 200 and out["data"] == {"written-through": a.name}, out
    # admin.conf works on both (the kubeadm:cluster-admins binding), each serving cert names its host.
    for h in plane.hosts:
        assert "kubeadm-config" in h.kubectl("-n", "kube-system", "get", "configmap", "-o", "name").stdout
        san = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in",
                              str(h.c.root / "etc/kubernetes/pki/apiserver.crt")],
                             capture_output=True, text=True, check=True).stdout
        assert f"IP Address:{h.address}" in san and "127.0.0.1" not in san, san
    assert a.c.read_file("/etc/kubernetes/pki/ca.crt") == b.c.read_file("/etc/kubernetes/pki/ca.crt")
    assert plane.etcd().get("/registry/configmaps/default/shared") is not None


def test_the_runner_restarts_an_exited_api_server_and_recreates_it_when_its_manifest_changes(plane):
    h = plane.hosts[1]
    first = h.pod_file("kube-apiserver", "id")
    second = h.restart_apiserver()
    assert second != first
    manifest = "/etc/kubernetes/manifests/kube-apiserver.yaml"
    text = h.c.read_file(manifest)
    h.c.write_file(manifest, text.replace("    - --allow-privileged=true\n", "    - --allow-privileged=true\n    - --v=1\n"),
                   mode=0o600)
    third = h.wait_pod("kube-apiserver", timeout=180, other_than=second)
    assert "--v=1" in h.c.read_file(f"/proc/{h.pod_file('kube-apiserver', 'pid')}/cmdline").replace("\0", " ")
    assert third != second
