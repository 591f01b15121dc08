#!/usr/bin/env python3
# Copyright: bao-kms-provider authors
# Apache License 2.0 (see LICENSE)
"""Checks the kube_apiserver_kms role runs on a control-plane host after each change.

check: write-read, then (with --etcd-endpoint) etcd, in one go so a retry writes a fresh canary.
write-read: write the canary Secret through THIS host's API server (kubectl --server, so not the load
  balancer admin.conf may point at) with raw requests (no discovery needed), then read it back.
etcd: read the canary's raw value from etcd (gRPC gateway, kubeadm's etcd client certificate) and
  check which provider stored it: the first provider of the stage (our kms after the write pass).

Standard library only; exit 0 when the check passes, 1 with a one-line reason otherwise.
"""

import argparse
import base64
import json
import ssl
import subprocess
import sys
import urllib.request


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def kubectl(a, *args, stdin=None):
    argv = [a.kubectl, "--kubeconfig", a.kubeconfig, "--server", a.server, "--request-timeout", "10s", *args]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60, check=False)


def write_read(a):
    path = "/api/v1/namespaces/%s/secrets/%s" % (a.namespace, a.name)
    body = json.dumps({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": a.name, "namespace": a.namespace,
                                    "labels": {"app.kubernetes.io/managed-by": "bao-kms-provider-rollout"}},
                       "data": {"host": base64.b64encode(a.value.encode()).decode()}})
    got = kubectl(a, "get", "--raw", path)
    if got.returncode != 0 and "NotFound" not in got.stderr and "not found" not in got.stderr:
        fail("reading %s through %s failed: %s" % (path, a.server, got.stderr.strip()))
    # --validate=false: a raw body needs no schema, and kubectl before 1.23 (Debian's kubernetes-client
    # is 1.20) fetches the OpenAPI document for it first, one more request that can fail.
    if got.returncode != 0:
        put = kubectl(a, "create", "--validate=false", "--raw", "/api/v1/namespaces/%s/secrets" % a.namespace,
                      "-f", "-", stdin=body)
    else:
        put = kubectl(a, "replace", "--validate=false", "--raw", path, "-f", "-", stdin=body)
    if put.returncode != 0:
        fail("writing %s through %s failed: %s" % (path, a.server, put.stderr.strip()))
    back = kubectl(a, "get", "--raw", path)
    if back.returncode != 0:
        fail("reading %s back through %s failed: %s" % (path, a.server, back.stderr.strip()))
    try:
        value = base64.b64decode(json.loads(back.stdout)["data"]["host"]).decode()
    except (ValueError, KeyError, TypeError) as e:
        fail("%s read back through %s is not the canary: %s" % (path, a.server, e))
    if value != a.value:
        fail("%s read back through %s holds %r, expected %r" % (path, a.server, value, a.value))
    print("canary %s/%s written and read back through %s" % (a.namespace, a.name, a.server))


def etcd_value(a):
    ctx = ssl.create_default_context(cafile=a.cacert) if a.endpoint.startswith("https") else None
    if ctx is not None and a.cert:
        ctx.load_cert_chain(a.cert, a.key)
    req = urllib.request.Request(a.endpoint.rstrip("/") + "/v3/kv/range", method="POST",
                                 data=json.dumps({"key": base64.b64encode(a.etcd_key.encode()).decode()}).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            kvs = json.load(r).get("kvs") or []
    except (OSError, ValueError) as e:
        fail("reading %s from etcd %s failed: %s" % (a.etcd_key, a.endpoint, e))
    if not kvs:
        fail("%s is not in etcd %s" % (a.etcd_key, a.endpoint))
    return base64.b64decode(kvs[0]["value"])


def expected(first):
    """(prefixes the value must start with, or None for 'no encryption prefix') for a provider type."""
    if first == "identity":
        return None
    if first.startswith("kms:"):
        name = first[4:]
        return [("k8s:enc:kms:v2:%s:" % name).encode(), ("k8s:enc:kms:v1:%s:" % name).encode()]
    return [("k8s:enc:%s:v1:" % first).encode()]


def etcd(a):
    value = etcd_value(a)
    prefixes = expected(a.expect_first)
    # Only the prefix (k8s:enc:<type>:<version>:<key or provider name>:), never the stored bytes.
    shown = (b":".join(value.split(b":", 5)[:5]).decode("ascii", "replace") + ":"
             if value.startswith(b"k8s:enc:") else "(no prefix)")
    if prefixes is None:
        if value.startswith(b"k8s:enc:"):
            fail("%s is stored with %s, expected plaintext (identity first)" % (a.etcd_key, shown))
    elif not any(value.startswith(p) for p in prefixes):
        fail("%s is stored with %s, expected %s" % (a.etcd_key, shown, prefixes[0].decode()))
    print("%s in etcd is stored by %s" % (a.etcd_key, a.expect_first))


def _api_args(p):
    p.add_argument("--kubectl", default="kubectl")
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--server", required=True)
    p.add_argument("--namespace", default="kube-system")
    p.add_argument("--name", default="bao-kms-provider-canary")
    p.add_argument("--value", required=True)


def _etcd_args(p, required):
    # The provider's --etcd-* flag names, so the roles build one argument list for both.
    p.add_argument("--etcd-endpoint", dest="endpoint", required=required)
    p.add_argument("--etcd-cacert", dest="cacert")
    p.add_argument("--etcd-cert", dest="cert")
    p.add_argument("--etcd-client-key", dest="key")
    p.add_argument("--etcd-object-key", dest="etcd_key", default="/registry/secrets/kube-system/bao-kms-provider-canary")
    p.add_argument("--expect-first", required=required, help="identity, aescbc, aesgcm, secretbox or kms:NAME")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _api_args(sub.add_parser("write-read"))
    _etcd_args(sub.add_parser("etcd"), True)
    c = sub.add_parser("check")
    _api_args(c)
    _etcd_args(c, False)
    a = parser.parse_args()
    if a.command in ("write-read", "check"):
        write_read(a)
    if a.command == "etcd" or (a.command == "check" and a.endpoint):
        etcd(a)


if __name__ == "__main__":
    main()
