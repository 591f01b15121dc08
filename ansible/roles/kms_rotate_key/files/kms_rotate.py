#!/usr/bin/env python3
# Copyright: bao-kms-provider authors
# Apache License 2.0 (see LICENSE)
"""Waits, on one control-plane host, until a Transit key version is in use end to end.

1. the provider: its key registry knows version N, and `bao-kms-provider probe` answers with that
   version's key_id (the provider's promotion rules decide when);
2. kube-apiserver's Status: after a poke of /readyz/kms-providers (which makes it ask), the newest
   `apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds` sample of this provider
   name is the new key_id's hash (`sha256:` + hex of sha256 of the key_id);
3. kube-apiserver's writes: after a canary Secret written through THIS host's API server,
   `apiserver_envelope_encryption_key_id_hash_total{transformation_type="to_storage"}` for the new hash
   has grown.

Prints one JSON object (key_id, hash, seconds per stage); exit 0 when all three hold, 3 with the stage
and what was seen when --timeout passes first, 2 on usage errors. Standard library only.
"""

import argparse
import base64
import hashlib
import json
import re
import subprocess
import sys
import time

STATUS = "apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds"
WRITES = "apiserver_envelope_encryption_key_id_hash_total"
CANARY = ("kube-system", "bao-kms-provider-rotation-canary")


def run(argv, stdin=None):
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(argv, 1, "", str(e))


def kubectl(a, *args, stdin=None):
    return run([a.kubectl, "--kubeconfig", a.kubeconfig, "--server", a.server, "--request-timeout", "10s", *args],
               stdin=stdin)


def registry_key_id(a, version):
    """The key_id of `version` in this host's key registry (`state show`), or ''."""
    out = run([a.binary, "state", "show", "--config", a.config]).stdout
    m = re.search(r"^v%d\s+\S+\s+\S+\s+(\S+)\s*$" % version, out, re.M)
    return m.group(1) if m else ""


def served_key_id(a):
    out = run([a.binary, "probe", "--socket", a.socket]).stdout
    m = re.search(r"^key_id:\s+(\S+)", out, re.M)
    return m.group(1) if m else ""


def samples(text, name, labels):
    """{key_id_hash: value} of the Prometheus samples of `name` whose labels include `labels`."""
    found = {}
    for line in text.splitlines():
        m = re.match(r"^%s\{(.*)\} (\S+)$" % re.escape(name), line)
        if not m:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1)))
        if all(have.get(k) == v for k, v in labels.items()):
            h = have.get("key_id_hash", "")
            found[h] = found.get(h, 0.0) + float(m.group(2))
    return found


def metrics(a):
    got = kubectl(a, "get", "--raw", "/metrics")
    return got.stdout if got.returncode == 0 else ""


def write_canary(a, key_id):
    ns, name = CANARY
    path = "/api/v1/namespaces/%s/secrets/%s" % (ns, name)
    body = json.dumps({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": name, "namespace": ns,
                                    "labels": {"app.kubernetes.io/managed-by": "bao-kms-provider-rotation"}},
                       "data": {"written": base64.b64encode(("%s %s" % (a.host, time.time())).encode()).decode()}})
    if kubectl(a, "get", "--raw", path).returncode == 0:
        return kubectl(a, "replace", "--validate=false", "--raw", path, "-f", "-", stdin=body)
    return kubectl(a, "create", "--validate=false", "--raw", "/api/v1/namespaces/%s/secrets" % ns, "-f", "-",
                   stdin=body)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", type=int, required=True, help="the Transit key version to converge on")
    p.add_argument("--host", default="", help="this host's inventory name (for the report)")
    p.add_argument("--binary", default="/usr/bin/bao-kms-provider")
    p.add_argument("--config", default="/etc/openbao-kms/config.toml")
    p.add_argument("--socket", default="/run/openbao-kms/kms.sock")
    p.add_argument("--provider-name", required=True, help="the KMS provider name in the EncryptionConfiguration")
    p.add_argument("--kubectl", default="kubectl")
    p.add_argument("--kubeconfig", default="/etc/kubernetes/admin.conf")
    p.add_argument("--server", required=True, help="THIS host's API server URL")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--interval", type=float, default=2)
    a = p.parse_args()
    if a.version < 1 or a.timeout <= 0 or a.interval <= 0:
        p.error("--version must be at least 1, --timeout and --interval positive")
    start = time.monotonic()
    deadline = start + a.timeout
    report = {"host": a.host, "version": a.version, "key_id": "", "key_id_hash": ""}
    stage, seen = "provider", ""

    def waiting(done):
        while time.monotonic() < deadline:
            if done():
                return True
            time.sleep(a.interval)
        return done()

    def provider_on():
        nonlocal seen
        report["key_id"] = registry_key_id(a, a.version)
        seen = served_key_id(a)
        return report["key_id"] != "" and seen == report["key_id"]

    def status_on():
        nonlocal seen
        kubectl(a, "get", "--raw", "/readyz/kms-providers")
        latest = samples(metrics(a), STATUS, {"provider_name": a.provider_name})
        seen = max(latest, key=latest.get) if latest else "no Status sample for this provider name"
        return bool(latest) and seen == report["key_id_hash"]

    writes_before = {}

    def canary_on():
        nonlocal seen
        put = write_canary(a, report["key_id"])
        if put.returncode != 0:
            seen = "canary write failed: %s" % put.stderr.strip()
            return False
        now = samples(metrics(a), WRITES, {"provider_name": a.provider_name, "transformation_type": "to_storage"})
        seen = "to_storage writes by key_id hash: %s" % json.dumps(now, sort_keys=True)
        return now.get(report["key_id_hash"], 0) > writes_before.get(report["key_id_hash"], 0)

    ok = waiting(provider_on)
    report["provider_seconds"] = round(time.monotonic() - start, 1)
    if ok:
        report["key_id_hash"] = "sha256:" + hashlib.sha256(report["key_id"].encode()).hexdigest()
        stage = "kube-apiserver Status"
        ok = waiting(status_on)
        report["status_seconds"] = round(time.monotonic() - start, 1)
    if ok:
        stage = "kube-apiserver writes"
        writes_before.update(samples(metrics(a), WRITES,
                                     {"provider_name": a.provider_name, "transformation_type": "to_storage"}))
        ok = waiting(canary_on)
        report["writes_seconds"] = round(time.monotonic() - start, 1)
    report["converged"] = ok
    if not ok:
        want = report["key_id"] or "(version v%d not in the key registry yet)" % a.version
        if stage != "provider":
            want = report["key_id_hash"]
        report["stuck_at"] = stage
        report["reason"] = "%s: not on v%d within %ss: want %s, seen %s" % (stage, a.version, a.timeout, want,
                                                                             seen or "nothing")
    print(json.dumps(report, sort_keys=True))
    sys.exit(0 if ok else 3)


if __name__ == "__main__":
    main()
