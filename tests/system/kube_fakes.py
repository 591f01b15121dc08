"""A stand-in kube-apiserver (`FakeApiServer`), for a test that needs a fault the real one cannot
produce.

Everything that claims kube-apiserver behaviour runs against the real kube-apiserver
(kube_cluster.py, kube_encryption.py; see docs/testing-kubernetes.md). test_ansible_verify.py and
test_ansible_migration.py use no stand-in. A test that still uses this one names the fault it needs.

The stand-in serves only what the role's checks and the migration call (/readyz, API discovery as
`kubectl api-resources` reads it, and by raw path for Secrets, ConfigMaps, Events, apps Deployments and
a custom resource: list with limit/continue, get, create, replace with resourceVersion conflicts), over
HTTPS when given a PKI directory (apiserver.crt/key, ca.crt; 401 without a client certificate), and
stores every write into `etcd` (anything with `put(key, value)`) under the key kube-apiserver uses,
with the prefix it is told (it never calls a provider).
"""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import threading
import urllib.parse
from pathlib import Path


class FakeApiServer:
    """The stand-in kube-apiserver (see the module doc): only for a fault the real kube-apiserver
    cannot produce, named by the test that uses it. `prefix`: what the "first provider" puts in
    front of stored values. `conflict_once`: keys (ns/name) whose next replace answers 409 after a
    concurrent update. `fail_after`: answer 500 to every replace after this many succeeded (an
    interrupted run)."""

    def __init__(self, pki: Path | None, etcd: object | None, host: str = "127.0.0.2", prefix: bytes = b""):
        self.etcd, self.prefix = etcd, prefix
        # When set: (etcd key, object bytes) -> stored value, instead of prefix + object bytes.
        self.encode = None
        self.stores: dict[str, dict[str, dict]] = {r: {} for r in SERVED}   # resource -> "ns/name" -> object
        self.objects = self.stores["secrets"]   # "ns/name" -> Secret
        self.discovery_calls = 0
        self.rv = 100
        self.conflict_once: set[str] = set()
        self.fail_after: int | None = None
        self.replaces: dict[str, int] = {}
        self.conflicts_sent = 0
        self.anonymous_rejected = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status, body):
                text = isinstance(body, str)
                data = body.encode() if text else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if text else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def authenticated(self):
                if pki is None or self.connection.getpeercert():
                    return True
                fake.anonymous_rejected += 1
                self.reply(401, {"kind": "Status", "status": "Failure", "message": "Unauthorized", "code": 401})
                return False

            def body(self):
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        chunk = self.rfile.read(size) if size else b""
                        self.rfile.readline()
                        if not size:
                            break
                        data += chunk
                else:
                    data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                return json.loads(data or b"{}")

            def do_GET(self):
                if self.authenticated():
                    self.reply(*fake.get(self.path))

            def do_POST(self):
                if self.authenticated():
                    self.reply(*fake.create(self.path, self.body()))

            def do_PUT(self):
                if self.authenticated():
                    self.reply(*fake.replace(self.path, self.body()))

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        if pki is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(pki / "apiserver.crt"), str(pki / "apiserver.key"))
            ctx.load_verify_locations(str(pki / "ca.crt"))
            ctx.verify_mode = ssl.CERT_OPTIONAL
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"{'https' if pki else 'http'}://{host}:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- storage
    def add(self, ns: str, name: str, data: dict[str, str] | None = None, resource: str = "secrets") -> None:
        """An object of a served resource ("secrets", "configmaps", "deployments.apps", ...)."""
        res = SERVED[resource]
        with self.lock:
            self.rv += 1
            obj = {"apiVersion": res.group_version, "kind": res.kind,
                   "metadata": {"name": name, "namespace": ns, "resourceVersion": str(self.rv)}}
            if resource in ("secrets", "configmaps"):
                obj["data"] = data or {"k": base64.b64encode(name.encode()).decode()}
            else:
                obj["spec"] = data or {"replicas": 1}
            self.stores[resource][f"{ns}/{name}"] = obj
            self._store(resource, f"{ns}/{name}")

    def etcd_key(self, resource: str, key: str) -> str:
        res = SERVED[resource]
        return f"/registry/{res.group}/{res.name}/{key}" if res.custom else f"/registry/{res.name}/{key}"

    def _store(self, resource: str, key: str) -> None:
        if self.etcd is not None:
            path, data = self.etcd_key(resource, key), json.dumps(self.stores[resource][key]).encode()
            self.etcd.put(path, self.encode(path, data) if self.encode else self.prefix + data)

    @staticmethod
    def _status(code: int, reason: str, message: str) -> tuple[int, dict]:
        return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                      "message": message, "code": code}

    @staticmethod
    def _route(path: str) -> tuple[str | None, str | None, str | None]:
        """(resource id, namespace, name) of an object or collection path of a served resource."""
        parts = [urllib.parse.unquote(p) for p in urllib.parse.urlsplit(path).path.strip("/").split("/")]
        if parts[:2] == ["api", "v1"]:
            group, rest = "", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, rest = parts[1], parts[3:]
        else:
            return None, None, None
        ns = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        if not rest or len(rest) > 2:
            return None, None, None
        rid = rest[0] if not group else f"{rest[0]}.{group}"
        if rid not in SERVED:
            return None, None, None
        return rid, ns, (rest[1] if len(rest) == 2 else None)

    def get(self, path: str) -> tuple[int, dict]:
        u = urllib.parse.urlsplit(path)
        if u.path == "/readyz":
            return 200, "[+]ping ok\n[+]etcd ok\n[+]kms-provider-0 ok\nreadyz check passed\n"
        if u.path in DISCOVERY:
            self.discovery_calls += 1
            return 200, DISCOVERY[u.path]
        rid, ns, name = self._route(path)
        if rid is None:
            return self._status(404, "NotFound", f"the server could not find the requested resource ({u.path})")
        store = self.stores[rid]
        if name is None:
            q = urllib.parse.parse_qs(u.query)
            limit = int(q.get("limit", ["500"])[0])
            after = base64.b64decode(q["continue"][0]).decode() if "continue" in q else ""
            with self.lock:
                keys = sorted(k for k in store if k > after and (ns is None or k.startswith(ns + "/")))
                page = keys[:limit]
                items = [json.loads(json.dumps(store[k])) for k in page]
            meta = {"resourceVersion": str(self.rv)}
            if len(keys) > limit:
                meta["continue"] = base64.b64encode(page[-1].encode()).decode()
            return 200, {"kind": SERVED[rid].kind + "List", "apiVersion": SERVED[rid].group_version,
                         "metadata": meta, "items": items}
        key = f"{ns}/{name}"
        with self.lock:
            if key in store:
                return 200, json.loads(json.dumps(store[key]))
        return self._status(404, "NotFound", f'{rid} "{key}" not found')

    def create(self, path: str, obj: dict) -> tuple[int, dict]:
        rid, ns, _ = self._route(path)
        if rid is None:
            return self._status(404, "NotFound", "the server could not find the requested resource")
        key = f"{ns}/{obj['metadata']['name']}"
        with self.lock:
            if key in self.stores[rid]:
                return self._status(409, "AlreadyExists", f'{rid} "{key}" already exists')
            self.rv += 1
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self.stores[rid][key] = obj
            self._store(rid, key)
            return 201, obj

    def replace(self, path: str, obj: dict) -> tuple[int, dict]:
        rid, ns, name = self._route(path)
        key = f"{ns}/{name}"
        if rid is None or name is None or key not in self.stores[rid]:
            return self._status(404, "NotFound", f'"{key}" not found')
        store = self.stores[rid]
        # Conflicts and interruptions are keyed "ns/name" for Secrets, "resource:ns/name" otherwise.
        ckey = key if rid == "secrets" else f"{rid}:{key}"
        with self.lock:
            if self.fail_after is not None and sum(self.replaces.values()) >= self.fail_after:
                return self._status(500, "InternalError", "injected: the API server went away")
            current = store[key]
            if ckey in self.conflict_once:
                # Someone else updated it meanwhile: a new resourceVersion, so this replace conflicts.
                self.conflict_once.discard(ckey)
                self.rv += 1
                current["metadata"]["resourceVersion"] = str(self.rv)
            sent = obj["metadata"].get("resourceVersion")
            if sent and sent != current["metadata"]["resourceVersion"]:
                self.conflicts_sent += 1
                return self._status(409, "Conflict", "the object has been modified; please apply your changes "
                                                     "to the latest version and try again")
            self.rv += 1
            obj["metadata"]["resourceVersion"] = str(self.rv)
            store[key] = obj
            self.replaces[ckey] = self.replaces.get(ckey, 0) + 1
            self._store(rid, key)
            return 200, obj


class Served:
    """A resource the stand-in serves (and its discovery entry)."""

    def __init__(self, name: str, group: str, version: str, kind: str, custom: bool = False):
        self.name, self.group, self.kind, self.custom = name, group, kind, custom
        self.group_version = f"{group}/{version}" if group else version


FULL = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
# What the stand-in stores: core Secrets, ConfigMaps and Events, apps Deployments, a custom resource.
SERVED = {s.name if not s.group else f"{s.name}.{s.group}": s for s in (
    Served("secrets", "", "v1", "Secret"), Served("configmaps", "", "v1", "ConfigMap"),
    Served("events", "", "v1", "Event"), Served("deployments", "apps", "v1", "Deployment"),
    Served("crontabs", "stable.example.com", "v1", "CronTab", custom=True))}


def _resources(group_version: str, entries: list[tuple[str, bool, list[str]]]) -> dict:
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": [{"name": n, "singularName": "", "namespaced": ns, "kind": n.title(), "verbs": v}
                          for n, ns, v in entries]}


def _group(name: str, *versions: str) -> dict:
    vs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": vs, "preferredVersion": vs[0]}


# Discovery as kube-apiserver answers it, trimmed to what the migration's expansion must tell apart:
# subresources, resources that cannot be listed or updated (bindings, componentstatuses, reviews),
# events.k8s.io (stored as core events), an aggregated API (stored by its own server; its discovery is
# not served, as when the aggregated server is down), a CRD.
DISCOVERY = {
    "/api": {"kind": "APIVersions", "versions": ["v1"]},
    "/api/v1": _resources("v1", [
        ("bindings", True, ["create"]), ("componentstatuses", False, ["get", "list"]),
        ("configmaps", True, FULL), ("events", True, FULL), ("pods/log", True, ["get"]),
        ("secrets", True, FULL)]),
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        _group("apps", "v1"), _group("events.k8s.io", "v1"), _group("authentication.k8s.io", "v1"),
        _group("stable.example.com", "v1"), _group("wardle.example.com", "v1alpha1")]},
    "/apis/apps": {"kind": "APIGroup", **_group("apps", "v1")},
    "/apis/apps/v1": _resources("apps/v1", [("deployments", True, FULL), ("deployments/status", True, ["get", "update"])]),
    "/apis/events.k8s.io/v1": _resources("events.k8s.io/v1", [("events", True, FULL)]),
    "/apis/authentication.k8s.io/v1": _resources("authentication.k8s.io/v1", [("tokenreviews", False, ["create"])]),
    "/apis/stable.example.com/v1": _resources("stable.example.com/v1", [("crontabs", True, FULL)]),
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions": {"kind": "CustomResourceDefinitionList", "items": [
        {"metadata": {"name": "crontabs.stable.example.com"},
         "spec": {"group": "stable.example.com", "names": {"plural": "crontabs", "kind": "CronTab"}}}]},
    "/apis/apiregistration.k8s.io/v1/apiservices": {"kind": "APIServiceList", "items": [
        {"metadata": {"name": "v1.apps"}, "spec": {"group": "apps", "version": "v1", "service": None}},
        {"metadata": {"name": "v1alpha1.wardle.example.com"},
         "spec": {"group": "wardle.example.com", "version": "v1alpha1",
                  "service": {"namespace": "wardle", "name": "api"}}}]},
}
