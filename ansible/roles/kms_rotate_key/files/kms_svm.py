#!/usr/bin/env python3
# Copyright: bao-kms-provider authors
# Apache License 2.0 (see LICENSE)
"""Stores every object of some resources again through a StorageVersionMigration.

kube-controller-manager's storage-version-migrator controller carries the migration out; this only
creates one StorageVersionMigration per resource and waits. A migration with no condition within
--progress-timeout (no controller runs it) is deleted again and reported with exit 4, so the caller
can fall back to another rewrite; Failed, or no Succeeded within --timeout, exits 1. Prints one line
per resource: the migration's name, its result and how long it took. Exit 3 when the API is not
served. Standard library only.
"""

import argparse
import json
import subprocess
import sys
import time

GROUP = "storagemigration.k8s.io"


def kubectl(a, *args, stdin=None):
    argv = [a.kubectl, "--kubeconfig", a.kubeconfig, "--request-timeout", "10s", *args]
    if a.server:
        argv[1:1] = ["--server", a.server]
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(argv, 1, "", str(e))


def get_json(a, path):
    r = kubectl(a, "get", "--raw", path)
    return json.loads(r.stdout) if r.returncode == 0 else None


def preferred(a, group):
    doc = get_json(a, "/apis/%s" % group) if group else {"preferredVersion": {"version": "v1"}}
    return ((doc or {}).get("preferredVersion") or {}).get("version")


def conditions(obj):
    return {c.get("type"): c.get("status") for c in (obj.get("status") or {}).get("conditions") or []}


def migrate(a, version, resource, name):
    plural, _, group = resource.partition(".")
    spec = {"group": group, "resource": plural}
    if version == "v1alpha1":
        spec["version"] = preferred(a, group) or "v1"
    base = "/apis/%s/%s/storageversionmigrations" % (GROUP, version)
    body = json.dumps({"apiVersion": "%s/%s" % (GROUP, version), "kind": "StorageVersionMigration",
                       "metadata": {"name": name}, "spec": {"resource": spec}})
    kubectl(a, "delete", "--raw", "%s/%s" % (base, name))
    made = kubectl(a, "create", "--validate=false", "--raw", base, "-f", "-", stdin=body)
    if made.returncode != 0:
        return "failed", "creating %s: %s" % (name, made.stderr.strip())
    start = time.monotonic()
    while True:
        obj = get_json(a, "%s/%s" % (base, name)) or {}
        cond = conditions(obj)
        if cond.get("Succeeded") == "True":
            return "succeeded", ""
        if cond.get("Failed") == "True":
            return "failed", json.dumps(obj.get("status"))
        waited = time.monotonic() - start
        if not cond and waited > a.progress_timeout:
            kubectl(a, "delete", "--raw", "%s/%s" % (base, name))
            return "no progress", "no condition after %ds: is kube-controller-manager's migrator running?" % waited
        if waited > a.timeout:
            return "failed", "not Succeeded after %ds: %s" % (waited, json.dumps(obj.get("status")))
        time.sleep(a.interval)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resources", required=True, help="comma-separated, e.g. secrets,configmaps,deployments.apps")
    p.add_argument("--name-suffix", required=True, help="appended to each migration's name (e.g. the key version)")
    p.add_argument("--kubectl", default="kubectl")
    p.add_argument("--kubeconfig", default="/etc/kubernetes/admin.conf")
    p.add_argument("--server", default="")
    p.add_argument("--progress-timeout", type=float, default=120)
    p.add_argument("--timeout", type=float, default=86400)
    p.add_argument("--interval", type=float, default=2)
    a = p.parse_args()
    doc = get_json(a, "/apis/%s" % GROUP)
    version = ((doc or {}).get("preferredVersion") or {}).get("version")
    if not version:
        print("%s is not served by this API server" % GROUP)
        sys.exit(3)
    worst = 0
    for resource in [r.strip() for r in a.resources.split(",") if r.strip()]:
        start = time.monotonic()
        name = "bao-kms-%s-%s" % (resource.replace(".", "-"), a.name_suffix)
        result, detail = migrate(a, version, resource, name)
        print("%s: StorageVersionMigration %s %s in %.1f s%s" % (resource, name, result, time.monotonic() - start,
                                                                 ": " + detail if detail else ""), flush=True)
        if result == "no progress":
            sys.exit(4)
        if result != "succeeded":
            worst = 1
    sys.exit(worst)


if __name__ == "__main__":
    main()
