#!/usr/bin/env python3
# Copyright: bao-kms-provider authors
# Apache License 2.0 (see LICENSE)
"""Rewrite every object of the encrypted resources so kube-apiserver stores it again through the
provider: page by page (--chunk-size), object by object, a conflict (409) retried with a fresh read,
at most --rate objects per second, resumable (--state-dir holds the last key done per resource), with
progress per namespace and a final check of the raw values in etcd. --verify-only rewrites nothing and
only checks the raw values (the gate before identity or earlier providers are dropped).

The state directory must be owned by the user running this (root), with no group or other access, and
not be a symlink; every file in it is opened relative to it without following symlinks, so whoever
else can write near it cannot steer what root writes.

Which resources: --resources (names or wildcards) and every resource the EncryptionConfiguration
(--config-entries) has the provider first for. Wildcards ('*.*', '*.<group>', '*.' for the core
group) are expanded to what the cluster serves, found by API discovery as `kubectl api-resources`
does; as in kube-apiserver the first entry that selects a resource decides for it.

Talks to the API server with the kubeconfig's client certificate (or token), standard library only
(PyYAML when the kubeconfig is YAML). Exit 0 when everything was rewritten (and verified), 1 otherwise.
"""

import argparse
import base64
import errno
import json
import os
import random
import shutil
import signal
import ssl
import stat
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

MAX_CONFLICT_RETRIES = 10
DEFAULT_QUOTA = 2 * 1024 ** 3  # etcd's default --quota-backend-bytes


class Failure(Exception):
    pass


STATE_DIR = None


def log(msg):
    """stdout (Ansible shows it at the end) and, while it runs, the state directory's progress log
    (tail -f it)."""
    print(msg, flush=True)
    if STATE_DIR is not None:
        STATE_DIR.progress("%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), msg))


# ---------------------------------------------------------------------------- the state directory

class StateDir:
    """The migration's own directory and the files in it, opened relative to the directory's file
    descriptor without following symlinks. Refuses a directory that is a symlink, is owned by another
    user or gives group or other any access, and any of its files that is not a plain file of ours."""

    STATE, PROGRESS = "migration-state.json", "migration-progress.log"
    TMP = STATE + ".tmp"

    def __init__(self, path):
        self.path, self.uid = path, os.geteuid()
        try:
            st = os.lstat(path)
        except OSError as e:
            raise Failure("state directory %s: %s (the role creates it: owner root, mode 0700)" % (path, e.strerror))
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise Failure("refusing the state directory %s: it is %s, not a directory" % (
                path, "a symlink" if stat.S_ISLNK(st.st_mode) else "a file"))
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise Failure("refusing the state directory %s: %s" % (path, e.strerror))
        st = os.fstat(self.fd)
        if st.st_uid != self.uid or st.st_mode & 0o077:
            os.close(self.fd)
            raise Failure("refusing the state directory %s: owner uid %d, mode %04o; it must be owned by uid %d with "
                          "no group or other access (mode 0700), or another user could steer what is written there"
                          % (path, st.st_uid, stat.S_IMODE(st.st_mode), self.uid))
        for name in (self.STATE, self.TMP, self.PROGRESS):
            self._check(name)

    def _check(self, name, st=None):
        """An entry that exists must be a plain file of ours with one link."""
        if st is None:
            try:
                st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            except FileNotFoundError:
                return
        if not stat.S_ISREG(st.st_mode) or st.st_uid != self.uid or st.st_nlink != 1:
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else (
                "not a regular file" if not stat.S_ISREG(st.st_mode) else
                "owned by uid %d" % st.st_uid if st.st_uid != self.uid else "a file with %d links" % st.st_nlink)
            raise Failure("refusing %s/%s: it is %s; nothing is written through it (remove it)" % (self.path, name, kind))

    def open(self, name, flags, mode=0o600):
        try:
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=self.fd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise Failure("refusing %s/%s: it is a symlink; nothing is written through it (remove it)"
                              % (self.path, name))
            raise
        try:
            self._check(name, os.fstat(fd))
        except Failure:
            os.close(fd)
            raise
        return fd

    def load(self):
        try:
            fd = self.open(self.STATE, os.O_RDONLY)
        except FileNotFoundError:
            return {}
        with os.fdopen(fd, encoding="utf-8") as f:
            return json.load(f)

    def save(self, state):
        """Atomically: a new temporary file (O_EXCL) in the directory, then renamed over the state."""
        try:
            os.unlink(self.TMP, dir_fd=self.fd)   # left by a run killed mid-write; unlink never follows
        except FileNotFoundError:
            pass
        fd = self.open(self.TMP, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(self.TMP, self.STATE, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def progress(self, line):
        try:
            fd = self.open(self.PROGRESS, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        except (OSError, Failure):
            return
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(line)


# ---------------------------------------------------------------------------- kube API

class Api:
    def __init__(self, kubeconfig, server=None, timeout=30):
        try:
            with open(kubeconfig, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise Failure("cannot read the kubeconfig: %s" % e)
        try:
            cfg = json.loads(text)
        except ValueError:
            import yaml  # pylint: disable=import-outside-toplevel
            cfg = yaml.safe_load(text)
        ctx_name = cfg.get("current-context")
        ctx = next((c["context"] for c in cfg.get("contexts", []) if c.get("name") == ctx_name), None)
        if ctx is None:
            raise Failure("%s: current-context %r not found" % (kubeconfig, ctx_name))
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        user = next((u["user"] for u in cfg.get("users", []) if u["name"] == ctx.get("user")), {}) or {}
        self.server = (server or cluster["server"]).rstrip("/")
        self.timeout = timeout
        self.headers = {"Accept": "application/json", "Content-Type": "application/json"}
        # The kubeconfig's embedded certificates and client key are written here for ssl (mode 0700,
        # removed by close(), and at once when they cannot be used).
        self._dir = tempfile.mkdtemp(prefix="kms-migrate-")
        self.ctx = None
        try:
            os.chmod(self._dir, 0o700)
            if self.server.startswith("https"):
                try:
                    self.ctx = ssl.create_default_context(cafile=self._file(cluster, "certificate-authority"))
                    cert, key = self._file(user, "client-certificate"), self._file(user, "client-key")
                    if cert and key:
                        self.ctx.load_cert_chain(cert, key)
                except (OSError, ssl.SSLError) as e:
                    raise Failure("%s: cannot use its certificates: %s" % (kubeconfig, e))
        except BaseException:
            self.close()
            raise
        if user.get("token"):
            self.headers["Authorization"] = "Bearer " + user["token"]

    def _file(self, section, name):
        if section.get(name):
            return section[name]
        data = section.get(name + "-data")
        if not data:
            return None
        path = os.path.join(self._dir, name)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        os.chmod(path, 0o600)
        return path

    def close(self):
        shutil.rmtree(self._dir, ignore_errors=True)

    def request(self, method, path, body=None, query=None):
        url = self.server + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(6):
            req = urllib.request.Request(url, data=data, method=method, headers=self.headers)
            try:
                with urllib.request.urlopen(req, context=self.ctx, timeout=self.timeout) as r:
                    return r.status, json.load(r)
            except urllib.error.HTTPError as e:
                if e.code in (429, 500, 502, 503, 504) and attempt < 5:
                    time.sleep(min(2 ** attempt * 0.2, 5))
                    continue
                try:
                    return e.code, json.load(e)
                except ValueError:
                    return e.code, {}
            except OSError as e:
                if attempt < 5:
                    time.sleep(min(2 ** attempt * 0.2, 5))
                    continue
                raise Failure("%s %s: %s" % (method, url, e))
        raise Failure("%s %s: no answer" % (method, url))


# ---------------------------------------------------------------------------- which resources

# Groups whose objects are not stored under their own name: events.k8s.io events are the core
# events in etcd (kube-apiserver refuses '*.events.k8s.io' in an EncryptionConfiguration), and the
# removed 'extensions' group served the same objects as apps/networking.k8s.io.
SAME_STORAGE_GROUPS = ("events.k8s.io", "extensions")
# Built-in resources kube-apiserver stores under another etcd prefix than /registry/<resource>.
ETCD_PREFIX = {"nodes": "minions", "services": "services/specs", "endpoints": "services/endpoints",
               "replicationcontrollers": "controllers", "ingresses.networking.k8s.io": "ingress",
               "apiservices.apiregistration.k8s.io": "apiregistration.k8s.io/apiservices",
               "customresourcedefinitions.apiextensions.k8s.io": "apiextensions.k8s.io/customresourcedefinitions"}


class Resource:
    """One group-resource the cluster serves: 'secrets' (core) or 'deployments.apps'."""

    def __init__(self, name, group, base, custom=False):
        self.name, self.group, self.base, self.custom = name, group, base, custom
        self.id = name if not group else "%s.%s" % (name, group)

    def etcd_key(self, obj):
        """Where kube-apiserver stores it: /registry/<resource>/... for built-in resources,
        /registry/<group>/<resource>/... for custom resources."""
        if self.custom:
            prefix = "/registry/%s/%s" % (self.group, self.name)
        else:
            prefix = "/registry/" + ETCD_PREFIX.get(self.id, self.name)
        return "%s/%s" % (prefix, key_of(obj).lstrip("/"))


def normal(name):
    """'secrets.' and 'secrets' are the same core resource (kube-apiserver's ParseGroupResource)."""
    return name[:-1] if name.endswith(".") and not name.startswith("*") else name


def covers(pattern, resource_id):
    """Whether an EncryptionConfiguration resource name (maybe '*.*', '*.<group>' or '*.' for the
    core group) selects the resource 'name' or 'name.group'."""
    pattern, resource_id = normal(pattern), normal(resource_id)
    if pattern in ("*.*", resource_id):
        return True
    group = resource_id.partition(".")[2]
    if pattern == "*.":
        return group == ""
    return pattern.startswith("*.") and group == pattern[2:]


def discover(api):
    """Every group-resource the cluster serves and stores in this etcd, by its preferred version:
    listable and updatable (so it can be rewritten), no subresources, no aggregated API (served and
    stored by another server), no group that stores under another name (SAME_STORAGE_GROUPS)."""
    found = {}
    skipped = []

    def add(base, group, custom):
        status, body = api.request("GET", base)
        if status != 200:
            raise Failure("API discovery: GET %s: HTTP %d %s" % (base, status, body.get("message", "")))
        for r in body.get("resources", []):
            verbs = set(r.get("verbs") or [])
            if "/" in r["name"] or not {"list", "get", "update"} <= verbs:
                continue
            res = Resource(r["name"], group, base, custom=(group, r["name"]) in custom)
            found.setdefault(res.id, res)

    aggregated = set()
    status, body = api.request("GET", "/apis/apiregistration.k8s.io/v1/apiservices")
    if status == 200:
        aggregated = {i["spec"].get("group", "") for i in body.get("items", []) if (i.get("spec") or {}).get("service")}
    custom = set()
    status, body = api.request("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
    if status == 200:
        custom = {(i["spec"]["group"], i["spec"]["names"]["plural"]) for i in body.get("items", [])}
    add("/api/v1", "", custom)
    status, body = api.request("GET", "/apis")
    if status != 200:
        raise Failure("API discovery: GET /apis: HTTP %d %s" % (status, body.get("message", "")))
    for g in body.get("groups", []):
        if g["name"] in SAME_STORAGE_GROUPS:
            continue
        if g["name"] in aggregated:
            # Not even asked: an aggregated API may be down (503), and its objects are not in this etcd.
            skipped.append("*.%s (aggregated API, stored by its own server)" % g["name"])
            continue
        add("/apis/" + g["preferredVersion"]["groupVersion"], g["name"], custom)
    return found, skipped


def select(api, explicit, entries, expect_not):
    """The resources to rewrite, in a stable order. entries: the EncryptionConfiguration's entries
    in order, as the role's summary shows them ({"resources": [...], "rewrite": bool}); explicit:
    --resources, appended as a last entry that rewrites. As kube-apiserver does, the first entry
    that selects a resource decides for it: an earlier identity-only exemption (events) wins over a
    later '*.*'. Wildcards are expanded to what the cluster serves (discovery)."""
    entries = list(entries) + ([{"resources": explicit, "rewrite": True, "explicit": True}] if explicit else [])
    served, skipped = discover(api)
    for line in skipped:
        log("not rewritten: %s" % line)
    chosen, notes = [], []
    candidates = list(served)
    for e in entries:
        for name in e["resources"]:
            if "*" not in name and normal(name) not in served and e["rewrite"]:
                if e.get("explicit"):
                    raise Failure("resource %r is not served by this cluster (kubectl api-resources lists the "
                                  "names; a group resource is written name.group, e.g. deployments.apps)" % name)
                notes.append("%s is listed in the EncryptionConfiguration but not served by this cluster: "
                             "nothing to rewrite" % name)
    for rid in sorted(candidates):
        first = next((e for e in entries if any(covers(p, rid) for p in e["resources"])), None)
        if first is None:
            continue
        if first["rewrite"]:
            chosen.append(served[rid])
        elif any(covers(p, rid) for e in entries if e["rewrite"] for p in e["resources"]):
            notes.append("%s: an earlier entry (%s) decides for it, so it is not rewritten"
                         % (rid, ", ".join(first["resources"])))
    for n in notes:
        log("not rewritten: " + n)
    if not chosen:
        raise Failure("no served resource is selected for the rewrite%s" % (
            " back" if expect_not else ""))
    return chosen


def object_path(res, obj):
    meta = obj["metadata"]
    ns = meta.get("namespace")
    return "%s%s/%s/%s" % (res.base, "/namespaces/" + ns if ns else "", res.name, urllib.parse.quote(meta["name"]))


def key_of(obj):
    meta = obj["metadata"]
    return "%s/%s" % (meta.get("namespace", ""), meta["name"])


def pages(api, res, chunk, after=None):
    """Every object in etcd key order (namespace/name), optionally only those after `after`."""
    token = None
    while True:
        query = {"limit": chunk}
        if token:
            query["continue"] = token
        status, body = api.request("GET", "%s/%s" % (res.base, res.name), query=query)
        if status == 410 and token:
            # The continue token expired (etcd compacted): list again, skipping what was done.
            log("  list continuation expired; listing again from the last object done")
            token = None
            continue
        if status != 200:
            raise Failure("list %s: HTTP %d %s" % (res.id, status, body.get("message", "")))
        items = [i for i in body.get("items", []) if after is None or key_of(i) > after]
        yield items
        token = (body.get("metadata") or {}).get("continue")
        if not token:
            return


# ---------------------------------------------------------------------------- etcd (gRPC gateway)

class Etcd:
    def __init__(self, endpoint, cacert=None, cert=None, key=None):
        self.endpoint = endpoint.rstrip("/")
        self.ctx = None
        if self.endpoint.startswith("https"):
            try:
                self.ctx = ssl.create_default_context(cafile=cacert)
                if cert:
                    self.ctx.load_cert_chain(cert, key)
            except (OSError, ssl.SSLError) as e:
                raise Failure("etcd client certificate (%s, %s, %s): %s" % (cacert, cert, key, e))

    def call(self, path, body):
        req = urllib.request.Request(self.endpoint + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=10) as r:
                return json.load(r)
        except (OSError, ValueError) as e:
            raise Failure("etcd %s%s: %s" % (self.endpoint, path, e))

    def get(self, key):
        kvs = self.call("/v3/kv/range", {"key": base64.b64encode(key.encode()).decode()}).get("kvs") or []
        return base64.b64decode(kvs[0]["value"]) if kvs else None

    def db_size(self):
        return int(self.call("/v3/maintenance/status", {}).get("dbSize", 0))


# ---------------------------------------------------------------------------- the run

def save_state(state):
    if STATE_DIR is not None:
        STATE_DIR.save(state)


def count(api, res, chunk):
    """Objects per namespace and their total JSON size (the write volume of a full rewrite)."""
    totals, size = {}, 0
    for items in pages(api, res, chunk):
        for i in items:
            ns = i["metadata"].get("namespace", "")
            totals[ns] = totals.get(ns, 0) + 1
            size += len(json.dumps(i))
    return totals, size


def rewrite_one(api, res, obj):
    """PUT the object back as read; on 409 read it again and retry. Returns 'rewritten', 'gone' or
    raises. Counts conflicts in the returned tuple."""
    conflicts = 0
    while True:
        status, body = api.request("PUT", object_path(res, obj), obj)
        if status in (200, 201):
            return "rewritten", conflicts
        if status == 404:
            return "gone", conflicts
        if status == 409 and conflicts < MAX_CONFLICT_RETRIES:
            conflicts += 1
            status, fresh = api.request("GET", object_path(res, obj))
            if status == 404:
                return "gone", conflicts
            if status != 200:
                raise Failure("re-read %s after a conflict: HTTP %d" % (key_of(obj), status))
            obj = fresh
            continue
        raise Failure("replace %s %s: HTTP %d %s" % (res.id, key_of(obj), status, body.get("message", "")))


def migrate(a):
    api = Api(a.kubeconfig, a.server)
    try:
        needs_etcd = a.etcd_endpoint and (a.quota_check != "off" or a.verify != "none")
        etcd = Etcd(a.etcd_endpoint, a.etcd_cacert, a.etcd_cert, a.etcd_key) if needs_etcd else None
        state = STATE_DIR.load() if STATE_DIR is not None else {}
        explicit = [r.strip() for r in a.resources.split(",") if r.strip()]
        interval = 1.0 / a.rate if a.rate > 0 else 0
        plan = {res.id: res for res in select(api, explicit, a.config_entries, a.expect_not)}
        resources = list(plan)
        if a.verify_only:
            log("resources to check: %s" % ", ".join(resources))
            verify(a, api, etcd, plan)
            return
        if a.quota_only:
            log("resources a rewrite would take: %s" % ", ".join(resources))
            check_quota(a, etcd, {r: {"bytes": count(api, plan[r], a.chunk_size)[1]} for r in resources})
            return
        log("resources to rewrite: %s" % ", ".join(resources))
        # Size check first: a full rewrite adds a revision of every object until etcd is compacted.
        todo = {r: state.get(r, {}) for r in resources if not state.get(r, {}).get("complete")}
        for r in todo:
            if "totals" not in todo[r]:
                totals, size = count(api, plan[r], a.chunk_size)
                todo[r].update({"totals": totals, "bytes": size, "done": {}, "last": None, "conflicts": 0, "gone": 0,
                                "complete": False})
                state[r] = todo[r]
        save_state(state)
        check_quota(a, etcd, todo)
        last_tick = 0.0
        for r in resources:
            st = state[r]
            if st.get("complete"):
                log("%s: already rewritten (resume state in %s)" % (r, a.state_dir))
                continue
            totals = st["totals"]
            log("%s: %d objects in %d namespaces%s" % (r, sum(totals.values()), len(totals),
                                                          ", resuming after %s" % st["last"] if st["last"] else ""))
            try:
                for items in pages(api, plan[r], a.chunk_size, after=st["last"]):
                    touched = set()
                    for obj in items:
                        if interval:
                            wait = last_tick + interval - time.monotonic()
                            if wait > 0:
                                time.sleep(wait)
                            last_tick = time.monotonic()
                        result, conflicts = rewrite_one(api, plan[r], obj)
                        ns = obj["metadata"].get("namespace", "")
                        st["done"][ns] = st["done"].get(ns, 0) + 1
                        st["conflicts"] += conflicts
                        st["gone"] += result == "gone"
                        st["last"] = key_of(obj)
                        touched.add(ns)
                    save_state(state)
                    for ns in sorted(touched):
                        log("  %s %s: %d/%d" % (r, ns or "(cluster)", st["done"][ns], totals.get(ns, st["done"][ns])))
            finally:
                # Interrupted or not: the next run resumes after the last object done.
                save_state(state)
            st["complete"] = True
            save_state(state)
            log("%s: rewritten %d, gone meanwhile %d, conflicts retried %d"
                % (r, sum(st["done"].values()), st["gone"], st["conflicts"]))
        if etcd is not None and a.verify != "none":
            verify(a, api, etcd, plan)
    finally:
        api.close()


def check_quota(a, etcd, todo):
    """Refuses (or warns) when etcd's database plus a rewrite of `todo` would come near the quota:
    a full rewrite adds a revision of every object until etcd is compacted."""
    if etcd is None or a.quota_check == "off" or not todo:
        return
    db = etcd.db_size()
    quota = a.etcd_quota_bytes or DEFAULT_QUOTA
    grow = int(sum(s.get("bytes", 0) for s in todo.values()) * 1.2)
    log("etcd: database %d bytes, quota %d bytes, a full rewrite adds about %d bytes" % (db, quota, grow))
    if db + grow > quota * a.quota_headroom:
        msg = ("etcd database (%d bytes) plus a full rewrite (about %d bytes) would exceed %d%% of the quota "
               "(%d bytes). Compact and defragment etcd first (etcdctl compact <revision>; etcdctl defrag "
               "--cluster), or raise --quota-backend-bytes" % (db, grow, int(a.quota_headroom * 100), quota))
        if a.quota_check == "refuse":
            raise Failure(msg)
        log("WARNING: " + msg)
    else:
        log("etcd: enough room; compact and defragment afterwards to return the space of the old revisions")


def verify(a, api, etcd, plan):
    objects = []
    for res in plan.values():
        for items in pages(api, res, a.chunk_size):
            objects.extend((res.etcd_key(i), res, i) for i in items)
    if a.verify.startswith("sample:"):
        n = int(a.verify.split(":", 1)[1])
        objects = random.sample(objects, min(n, len(objects)))
    ok, bad, missing, unverified = 0, [], [], []
    for key, res, obj in objects:
        value = etcd.get(key)
        if value is None:
            # Deleted meanwhile, or kept under a prefix this script does not know. As the gate before
            # a drop, an object the API server still serves is one whose value was not checked.
            if a.verify_only and api.request("GET", object_path(res, obj))[0] != 404:
                unverified.append(key)
            else:
                missing.append(key)
            continue
        if value.startswith(a.expect_prefix.encode()) != a.expect_not:
            ok += 1
        else:
            bad.append(key)
    log("verified in etcd: %d of %d checked objects %s with %s (%s)"
        % (ok, ok + len(bad), "do not start" if a.expect_not else "start", a.expect_prefix, a.verify))
    if missing:
        log("not found in etcd (deleted meanwhile, or under another key): %d, e.g. %s"
            % (len(missing), ", ".join(missing[:3])))
    for key in bad[:100]:
        log("%s: %s" % ("still stored by the provider" if a.expect_not else "not stored by the provider", key))
    for key in unverified[:100]:
        log("served by the API server but not found in etcd under this key: %s" % key)
    if bad:
        raise Failure("%d objects are %s the provider, e.g. %s"
                      % (len(bad), "still stored by" if a.expect_not else "not stored by", ", ".join(bad[:5])))
    if unverified:
        raise Failure("%d objects the API server serves were not found in etcd under the key this check reads, so "
                      "their values were not checked, e.g. %s" % (len(unverified), ", ".join(unverified[:5])))


def config_entries(path):
    """The entries of an EncryptionConfiguration as --config-entries takes them: resources, and each
    provider's type ('kms:<name>' for a KMS provider)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise Failure("cannot read the EncryptionConfiguration: %s" % e)
    try:
        doc = json.loads(text)
    except ValueError:
        import yaml  # pylint: disable=import-outside-toplevel
        doc = yaml.safe_load(text)
    try:
        return [{"resources": list(e["resources"]),
                 "providers": [("kms:" + spec["name"]) if kind == "kms" else kind
                               for p in e["providers"] for kind, spec in p.items()]}
                for e in doc["resources"]]
    except (KeyError, TypeError, AttributeError) as e:
        raise Failure("%s is not an EncryptionConfiguration: %s" % (path, e))


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--server", help="API server URL (default: the kubeconfig's)")
    p.add_argument("--resources", default="",
                   help="comma separated names or wildcards, e.g. secrets,configmaps,*.apps (always rewritten "
                        "unless an earlier --config-entries entry decides otherwise)")
    p.add_argument("--config-entries", type=json.loads, default=[],
                   help='the EncryptionConfiguration entries in order as JSON, [{"resources": [...], '
                        '"providers": ["kms:NAME", "aescbc", ...]}]: resources of an entry whose first '
                        'provider is kms:--provider-name are rewritten (--expect-not: entries listing it)')
    p.add_argument("--provider-name", default="", help="our KMS provider's name (with --config-entries)")
    p.add_argument("--chunk-size", type=int, default=250)
    p.add_argument("--rate", type=float, default=50, help="objects per second (0: no limit)")
    p.add_argument("--state-dir", help="directory of the resume state (%s) and the progress log (%s): owned by "
                                       "this user, mode 0700, not a symlink" % (StateDir.STATE, StateDir.PROGRESS))
    p.add_argument("--config-file", help="the EncryptionConfiguration (YAML or JSON) instead of --config-entries")
    p.add_argument("--etcd-endpoint")
    p.add_argument("--etcd-cacert")
    p.add_argument("--etcd-cert")
    p.add_argument("--etcd-client-key", dest="etcd_key")
    p.add_argument("--etcd-quota-bytes", type=int, default=0, help="etcd --quota-backend-bytes (0: etcd's default 2 GiB)")
    p.add_argument("--quota-headroom", type=float, default=0.8, help="refuse/warn above this share of the quota")
    p.add_argument("--quota-check", choices=["refuse", "warn", "off"], default="refuse")
    p.add_argument("--verify", default="all", help="all, sample:N or none")
    p.add_argument("--verify-only", action="store_true",
                   help="rewrite nothing: check every value of the selected resources in etcd (needs --etcd-endpoint)")
    p.add_argument("--quota-only", action="store_true",
                   help="rewrite nothing: count the objects and check etcd has room for a rewrite (--quota-check)")
    p.add_argument("--expect-prefix", default="k8s:enc:kms:v2:")
    p.add_argument("--expect-not", action="store_true",
                   help="rolling back: values must NOT start with --expect-prefix any more")
    a = p.parse_args()
    if a.chunk_size < 1 or a.rate < 0:
        p.error("--chunk-size must be at least 1 and --rate not negative")
    if not (a.verify in ("all", "none") or (a.verify.startswith("sample:") and a.verify[7:].isdigit())):
        p.error("--verify must be all, none or sample:N")
    if a.config_file:
        if a.config_entries:
            p.error("give --config-entries or --config-file, not both")
        try:
            a.config_entries = config_entries(a.config_file)
        except Failure as e:
            p.error(str(e))
    if a.config_entries and not a.provider_name:
        p.error("--config-entries and --config-file need --provider-name")
    if a.verify_only:
        if not a.etcd_endpoint:
            p.error("--verify-only needs --etcd-endpoint")
        a.verify = "all"
    ours = "kms:" + a.provider_name
    try:
        a.config_entries = [{"resources": list(e["resources"]),
                             "rewrite": (ours in e["providers"]) if a.expect_not else e["providers"][0] == ours}
                            for e in a.config_entries]
    except (KeyError, IndexError, TypeError):
        p.error('--config-entries must be a list of {"resources": [...], "providers": [...]}')
    if not a.config_entries and not a.resources:
        p.error("give --resources or --config-entries")
    # SIGTERM (systemd, a timeout) ends like Ctrl-C: the resume state is saved on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if a.state_dir and not (a.verify_only or a.quota_only):
            global STATE_DIR  # pylint: disable=global-statement
            STATE_DIR = StateDir(a.state_dir)
        migrate(a)
    except Failure as e:
        print("kms_migrate: %s" % e, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
