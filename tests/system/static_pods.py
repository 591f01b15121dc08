#!/usr/bin/env python3
"""Static-pod runner: a test part that does kubelet's static-pod job and nothing more.

It runs inside a test host (an nspawn container with systemd as PID 1) as `static-pods.service`,
in place of kubelet and a container runtime, which this machine cannot run. For every manifest in
/etc/kubernetes/manifests (files not starting with "."), it:

* runs each container's `command` + `args` with the manifest's `env` in a private mount
  namespace whose root holds only what a pod sees: the image (the Kubernetes binaries at
  /usr/local/bin, read-only), /proc, /dev, /sys, a private /tmp, an /etc/hosts, and the pod's
  declared hostPath volumes at their mountPaths (readOnly honoured, hostPath `type` checked as
  kubelet checks it). A socket or config the manifest does not mount is missing, as under kubelet;
* shares the host's network (kubeadm's control-plane pods are hostNetwork);
* restarts a container that exits (restartPolicy Always; back-off 0.5 s doubling to 5 s, reset
  after 10 s of running; kubelet's is 10 s to 5 min) and recreates a pod whose manifest changed
  (SIGTERM, SIGKILL after terminationGracePeriodSeconds), and stops a pod whose manifest is gone;
* publishes /run/static-pods/<pod>.id (a new id per container start), .pid (the container
  process) and .ready (present while the readinessProbe's httpGet answers 2xx/3xx; kubelet, too,
  skips TLS verification), so `cat /run/static-pods/kube-apiserver.id` stands in for
  `crictl ps --name kube-apiserver` and `kill $(cat ....pid)` for `crictl stop`.

Container output goes to /var/log/static-pods/<pod>.log. Images, probes other than httpGet
readiness, resources, securityContext, init containers and multiple containers per pod are not
modelled: kubeadm's control-plane manifests need none of them to run.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import yaml

MANIFESTS = Path(os.environ.get("STATIC_PODS_MANIFESTS", "/etc/kubernetes/manifests"))
STATE = Path(os.environ.get("STATIC_PODS_STATE", "/run/static-pods"))
LOGS = Path(os.environ.get("STATIC_PODS_LOGS", "/var/log/static-pods"))
IMAGE_BIN = "/usr/local/bin"
POD_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
TICK = 0.2
BACKOFF_FIRST, BACKOFF_MAX, BACKOFF_RESET = 0.5, 5.0, 10.0


class PodError(Exception):
    """A manifest this runner (like kubelet) cannot start; logged, retried on change."""


def log(msg: str) -> None:
    print(f"static-pods: {msg}", file=sys.stderr, flush=True)


def hostpath_check(path: str, kind: str) -> str:
    """Checks or creates a hostPath like kubelet; returns "dir" or "file" for the mount point."""
    p = Path(path)
    if kind == "DirectoryOrCreate":
        p.mkdir(mode=0o755, parents=True, exist_ok=True)
    elif kind == "FileOrCreate":
        p.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        p.touch(mode=0o644, exist_ok=True)
    elif kind == "Directory" and not p.is_dir():
        raise PodError(f"hostPath {path} is not a directory (type Directory)")
    elif kind == "File" and not p.is_file():
        raise PodError(f"hostPath {path} is not a file (type File)")
    elif kind == "Socket" and not p.is_socket():
        raise PodError(f"hostPath {path} is not a socket (type Socket)")
    elif kind in ("", None) and not p.exists():
        p.mkdir(mode=0o755, parents=True)  # kubelet creates a missing untyped hostPath as a directory
    return "dir" if p.is_dir() else "file"


def mount_script(pod: dict, container: dict, root: str) -> str:
    """The shell run in the new mount namespace: builds the pod's root, then execs the command."""
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    lines = ["set -eu", f"R={shlex.quote(root)}", 'mount -t tmpfs -o mode=0755 tmpfs "$R"',
             'mkdir -p "$R/usr/local/bin" "$R/proc" "$R/dev" "$R/sys" "$R/tmp" "$R/etc"',
             f'mount --bind {IMAGE_BIN} "$R/usr/local/bin"', 'mount -o remount,bind,ro "$R/usr/local/bin"',
             'mount --rbind /proc "$R/proc"', 'mount --rbind /dev "$R/dev"', 'mount --rbind /sys "$R/sys"',
             'mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"',
             "printf '127.0.0.1 localhost\\n::1 localhost\\n' > \"$R/etc/hosts\""]
    for m in container.get("volumeMounts", []):
        vol = volumes.get(m["name"])
        if vol is None or "hostPath" not in vol:
            raise PodError(f"volumeMount {m['name']!r} names no hostPath volume")
        host = vol["hostPath"]["path"]
        kind = hostpath_check(host, vol["hostPath"].get("type", ""))
        target = '"$R"' + shlex.quote(m["mountPath"])
        if kind == "dir":
            lines.append(f"mkdir -p {target}")
        else:
            lines.append(f"mkdir -p \"$(dirname {target})\" && touch {target}")
        lines.append(f"mount --bind {shlex.quote(host)} {target}")
        if m.get("readOnly"):
            lines.append(f"mount -o remount,bind,ro {target}")
    argv = [*container.get("command", []), *container.get("args", [])]
    if not argv:
        raise PodError(f"container {container.get('name')!r} has no command (images are not modelled)")
    lines.append(f'exec chroot "$R" {shlex.join(argv)}')
    return "\n".join(lines)


class Pod:
    """One static pod: its manifest, its container process and what it publishes."""

    def __init__(self, name: str, text: str):
        self.name, self.text = name, text
        self.digest = hashlib.sha256(text.encode()).hexdigest()
        try:
            self.spec = yaml.safe_load(text)
        except yaml.YAMLError:
            self.spec = None
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.backoff = BACKOFF_FIRST
        self.next_start = 0.0
        self.next_probe = 0.0
        self.failed = ""

    def _paths(self, suffix: str) -> Path:
        return STATE / f"{self.name}.{suffix}"

    def _unpublish(self) -> None:
        for suffix in ("id", "pid", "ready"):
            self._paths(suffix).unlink(missing_ok=True)

    def start(self) -> None:
        try:
            pod = self.spec
            containers = pod["spec"]["containers"]
            if len(containers) != 1:
                raise PodError(f"{len(containers)} containers; this runner models one")
            container = containers[0]
            root = STATE / "roots" / self.name
            root.mkdir(parents=True, exist_ok=True)
            script = mount_script(pod, container, str(root))
            env = {"PATH": POD_PATH, "HOME": "/"}
            for e in container.get("env", []):
                if "value" not in e:
                    raise PodError(f"env {e.get('name')!r}: only plain values are modelled")
                env[e["name"]] = str(e["value"])
        except (PodError, KeyError, TypeError, OSError) as e:
            if self.failed != str(e):
                log(f"{self.name}: cannot start: {e}")
            self.failed = str(e)
            self.next_start = time.monotonic() + BACKOFF_MAX
            return
        self.failed = ""
        LOGS.mkdir(parents=True, exist_ok=True)
        with open(LOGS / f"{self.name}.log", "ab") as out:
            out.write(f"--- static-pods: start {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        self.started = time.monotonic()
        self.next_probe = 0.0
        self._paths("pid").write_text(f"{self.proc.pid}\n")
        self._paths("id").write_text(f"{uuid.uuid4().hex}\n")
        log(f"{self.name}: started pid {self.proc.pid}")

    def stop(self) -> None:
        self._unpublish()
        if self.proc is None:
            return
        grace = 30
        try:
            grace = int(self.spec["spec"].get("terminationGracePeriodSeconds", 30))
        except (KeyError, TypeError, ValueError):
            pass
        self.proc.terminate()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        log(f"{self.name}: stopped (rc={self.proc.returncode})")
        self.proc = None

    def tick(self) -> None:
        now = time.monotonic()
        if self.proc is not None and self.proc.poll() is not None:
            ran = now - self.started
            log(f"{self.name}: exited rc={self.proc.returncode} after {ran:.1f}s")
            self._unpublish()
            self.proc = None
            self.backoff = BACKOFF_FIRST if ran > BACKOFF_RESET else min(self.backoff * 2, BACKOFF_MAX)
            self.next_start = now + self.backoff
        if self.proc is None:
            if now >= self.next_start:
                self.start()
            return
        if now >= self.next_probe:
            self.probe()

    def probe(self) -> None:
        """The readinessProbe's httpGet, as kubelet runs it (no TLS verification)."""
        try:
            c = self.spec["spec"]["containers"][0]
            http = (c.get("readinessProbe") or {}).get("httpGet")
            period = float((c.get("readinessProbe") or {}).get("periodSeconds", 1))
        except (KeyError, TypeError, ValueError, IndexError):
            http, c, period = None, {}, 1.0
        self.next_probe = time.monotonic() + min(period, 1.0)
        ready = True
        if http:
            scheme = http.get("scheme", "HTTP").lower()
            host = http.get("host", "127.0.0.1")
            port = http["port"]
            if isinstance(port, str) and not port.isdigit():  # a named container port (kubeadm: probe-port)
                port = next(p["containerPort"] for p in c.get("ports", []) if p.get("name") == port)
            url = f"{scheme}://{host}:{port}{http.get('path', '/')}"
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            try:
                with urllib.request.urlopen(url, timeout=1, context=ctx) as r:
                    ready = 200 <= r.status < 400
            except Exception:  # noqa: BLE001 - any failure is "not ready", as for kubelet
                ready = False
        path = self._paths("ready")
        if ready and not path.exists():
            path.write_text("ok\n")
        elif not ready:
            path.unlink(missing_ok=True)


_parsed: dict[str, tuple[str, str | None]] = {}  # path -> (text, pod name), parsed once per content


def read_manifests() -> dict[str, str]:
    pods = {}
    if not MANIFESTS.is_dir():
        return pods
    for f in sorted(MANIFESTS.iterdir()):
        if f.name.startswith(".") or not f.is_file():
            continue
        try:
            text = f.read_text()
        except OSError as e:
            log(f"{f}: unreadable, ignored: {e}")
            continue
        cached = _parsed.get(str(f))
        if cached is None or cached[0] != text:
            try:
                name = str(yaml.safe_load(text)["metadata"]["name"])
            except (KeyError, TypeError, yaml.YAMLError) as e:
                log(f"{f}: not a pod manifest, ignored: {e}")
                name = None
            _parsed[str(f)] = cached = (text, name)
        if cached[1] is not None:
            pods[cached[1]] = text
    return pods


def main() -> int:
    STATE.mkdir(parents=True, exist_ok=True)
    running: dict[str, Pod] = {}
    stopping = False

    def on_term(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    log(f"watching {MANIFESTS}")
    while not stopping:
        wanted = read_manifests()
        for name in list(running):
            if name not in wanted or wanted[name] != running[name].text:
                log(f"{name}: manifest {'changed' if name in wanted else 'removed'}")
                running.pop(name).stop()
        for name, text in wanted.items():
            try:
                running.setdefault(name, Pod(name, text)).tick()
            except Exception as e:  # noqa: BLE001 - one pod's trouble must not stop the others
                log(f"{name}: {e!r}")
        time.sleep(TICK)
    for pod in running.values():
        pod.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
