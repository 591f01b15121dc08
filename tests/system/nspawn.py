"""Boot a real systemd (PID 1) inside systemd-nspawn for system tests.

See docs/testing-systemd.md for the design, measurements and gotchas.

Typical use (the ``container`` fixture in conftest.py does this for you)::

    with Container(rootfs) as c:
        c.copy_in("target/release/bao-kms-provider", "/usr/bin/bao-kms-provider", mode=0o755)
        c.copy_in("packaging/bao-kms-provider.service", "/etc/systemd/system/")
        c.systemctl("daemon-reload")
        c.systemctl("start", "bao-kms-provider.service")
        print(c.journal(unit="bao-kms-provider.service"))

Design notes:

* The container runs from an overlayfs whose lower layer is the cached,
  read-only rootfs built by scripts/rootfs.sh; upper/work dirs are private
  to the container and thrown away by stop().  (``copy_mode="copy"`` does a
  full ``cp -a --reflink=auto`` instead.)
* nspawn is started with ``--register=no --keep-unit`` because the host's
  PID 1 is not systemd (no machined/systemd bus).  Each nspawn is put into
  its own sub-cgroup first, otherwise concurrent containers would share the
  "payload" cgroup nspawn creates below its own cgroup.
* Commands are run with ``nsenter --target <pid1> --all`` and a clean
  environment.  Such processes live in the container's namespaces but not in
  its cgroup tree (systemd inside does not track them); they are killed when
  the container's PID namespace dies.
* The network is shared with the host (no --private-network), so services
  inside can reach servers bound to the host's 127.0.0.1 and vice versa.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterable, Mapping, Sequence

__all__ = ["Container", "ContainerError", "check_host_prerequisites", "cleanup_stale"]

CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_ENV = {"PATH": CONTAINER_PATH, "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb",
               "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", "SYSTEMD_LOG_COLOR": "0"}
NSPAWN_LOG_TAIL = 60  # lines of nspawn output included in exceptions


# Environment for systemd-nspawn itself (not the container):
#  * SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1: give the container a pure cgroup v2
#    /sys/fs/cgroup (like a stock Debian 12 host) instead of mirroring this
#    sandbox's hybrid v1+v2 layout; enables BPF device control (DeviceAllow=).
#  * SYSTEMD_SECCOMP=0: don't install nspawn's syscall filter, which blocks
#    bpf(2); without it systemd inside cannot do IPAddressDeny=/IPAddressAllow=
#    or DeviceAllow= (they are silently NOT enforced).  SystemCallFilter= etc.
#    of units inside still work (that's the container's systemd, not nspawn).
DEFAULT_NSPAWN_ENV = {"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1", "SYSTEMD_SECCOMP": "0"}


class ContainerError(RuntimeError):
    """Raised for any harness failure; the message includes nspawn's output."""


class _GroupPopen(subprocess.Popen):
    """Popen (started with start_new_session=True) whose signals go to its
    process group: nsenter forks the real command, which shares the pgid."""

    def send_signal(self, sig: int) -> None:
        self.poll()
        if self.returncode is None:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass


def check_host_prerequisites() -> list[str]:
    """Return human readable problems that prevent the harness from working."""
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (systemd-nspawn, nsenter, mount)")
    for tool, pkg in (("systemd-nspawn", "systemd-container"), ("nsenter", "util-linux"),
                      ("debootstrap", "debootstrap")):
        if shutil.which(tool) is None:
            problems.append(f"{tool} not found on the host (apt-get install -y {pkg})")
    return problems


_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _clean_console(text: str) -> str:
    """Strip ANSI colours, CRs and blank lines from pty console output."""
    text = _ANSI_RE.sub("", text).replace("\r", "")
    return "\n".join(line for line in text.splitlines() if line.strip())


def _tail(path: Path, lines: int = NSPAWN_LOG_TAIL) -> str:
    try:
        data = _clean_console(path.read_text(errors="replace")).splitlines()
    except OSError as e:  # pragma: no cover - diagnostics only
        return f"<cannot read {path}: {e}>"
    return "\n".join(data[-lines:])


def _mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].encode().decode("unicode_escape")
            if mnt == target:
                return True
    return False


def _supports_overlay() -> bool:
    try:
        with open("/proc/filesystems") as f:
            return any(line.split()[-1] == "overlay" for line in f if line.strip())
    except OSError:
        return False


def _cgroup_parents() -> list[Path]:
    """Directories of our own cgroup in the writable hierarchies nspawn uses
    (cgroup2 and the legacy name=systemd one)."""
    mounts = {}  # key -> mountpoint
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields, post = pre.split(), post.split()
            fstype, opts = post[0], post[2] if len(post) > 2 else ""
            if fstype == "cgroup2":
                mounts.setdefault("", fields[4])
            elif fstype == "cgroup" and "name=systemd" in opts.split(","):
                mounts.setdefault("name=systemd", fields[4])
    parents = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controllers in mounts:
                p = Path(mounts[controllers]) / path.lstrip("/")
                if os.access(p, os.W_OK):
                    parents.append(p)
    return parents


def _rmdir_tree(path: Path) -> None:
    """Remove an (empty of processes) cgroup directory tree bottom-up."""
    if not path.is_dir():
        return
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            _rmdir_tree(child)
    try:
        path.rmdir()
    except OSError:
        pass


def _machine_in_use(name: str) -> bool:
    needle = f"--machine={name}".encode()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        return True
            except OSError:
                pass
    return False


def cleanup_stale(workdir: str | os.PathLike, keep_dirs: bool = False) -> list[str]:
    """Clean up after containers whose test process died without stop():
    unmount overlays, remove cgroups, propagate dirs and (unless keep_dirs)
    the per-container directories in workdir.  Containers whose nspawn is
    still running (e.g. another pytest-xdist worker's) are left alone.
    Returns the names cleaned up."""
    workdir = Path(workdir)
    cleaned = []
    for d in sorted(workdir.glob("bao-*.*")) if workdir.is_dir() else []:
        name = d.name.split(".", 1)[0]
        if not d.is_dir() or _machine_in_use(name):
            continue
        root = d / "root"
        if _mounted(root):
            subprocess.run(["umount", "-l", str(root)], capture_output=True, timeout=30)
        for parent in _cgroup_parents():
            _rmdir_tree(parent / f"nspawn-{name}")
        shutil.rmtree(Path("/run/systemd/nspawn/propagate") / name, ignore_errors=True)
        if not keep_dirs and not _mounted(root):
            subprocess.run(["rm", "-rf", "--one-file-system", str(d)], capture_output=True,
                           timeout=300)
        cleaned.append(name)
    # cgroups of containers whose directory is already gone (rmdir fails on
    # cgroups that still have processes, so this cannot hurt live ones)
    for parent in _cgroup_parents():
        for cg in parent.glob("nspawn-bao-*"):
            if not _machine_in_use(cg.name[len("nspawn-"):]):
                _rmdir_tree(cg)
    return cleaned


class Container:
    """A booted systemd-nspawn container with systemd as PID 1."""

    def __init__(
        self,
        rootfs: str | os.PathLike,
        *,
        workdir: str | os.PathLike | None = None,
        name: str | None = None,
        copy_mode: str = "auto",
        boot_timeout: float = 60.0,
        stop_timeout: float = 30.0,
        binds: Iterable[tuple[str, str] | tuple[str, str, bool]] = (),
        nspawn_args: Sequence[str] = (),
        nspawn_env: Mapping[str, str | None] | None = None,
        init_args: Sequence[str] = (),
        keep: bool | None = None,
    ) -> None:
        """
        rootfs:     cached rootfs (scripts/rootfs.sh output); never modified.
        workdir:    parent for the per-container directory (default: a temp
                    dir under $BAO_NSPAWN_WORKDIR or /var/tmp).
        copy_mode:  "overlay" (fast, default when supported), "copy"
                    (cp -a --reflink=auto) or "auto".
        binds:      (host_path, container_path[, read_only]) bind mounts.
        nspawn_args: extra systemd-nspawn arguments.
        nspawn_env: environment overrides for systemd-nspawn on top of
                    DEFAULT_NSPAWN_ENV (a value of None removes a default).
        init_args:  arguments for the container's systemd, e.g.
                    ["systemd.log_level=debug", "systemd.log_target=console"].
        keep:       keep the container directory after stop() for debugging
                    (default: $BAO_NSPAWN_KEEP == "1").
        """
        self.rootfs = Path(rootfs).resolve()
        if not (self.rootfs / ".rootfs-complete").exists():
            raise ContainerError(f"{self.rootfs} is not a complete rootfs (run scripts/rootfs.sh)")
        self.name = name or f"bao-{uuid.uuid4().hex[:10]}"
        self._workdir_parent = Path(workdir or os.environ.get("BAO_NSPAWN_WORKDIR", "/var/tmp"))
        if copy_mode == "auto":
            copy_mode = "overlay" if _supports_overlay() else "copy"
        if copy_mode not in ("overlay", "copy"):
            raise ValueError(f"copy_mode must be overlay, copy or auto, not {copy_mode!r}")
        self.copy_mode = copy_mode
        self.boot_timeout = boot_timeout
        self.stop_timeout = stop_timeout
        self.binds = [tuple(b) for b in binds]
        self.nspawn_args = list(nspawn_args)
        self.nspawn_env = dict(DEFAULT_NSPAWN_ENV)
        self.nspawn_env.update(nspawn_env or {})
        self.init_args = list(init_args)
        self.keep = os.environ.get("BAO_NSPAWN_KEEP") == "1" if keep is None else keep

        self.dir: Path | None = None          # per-container directory
        self.root: Path | None = None         # host path of the container's /
        self.log_path: Path | None = None     # nspawn stdout+stderr
        self.pid: int | None = None           # host PID of the container's PID 1
        self._proc: subprocess.Popen | None = None
        self._log_file = None
        self._cgroups: list[Path] = []
        self.timings: dict[str, float] = {}   # "copy", "boot", "stop" (seconds)
        self.exit_status: int | None = None   # nspawn's exit code (0 = clean poweroff)

    # ------------------------------------------------------------------ life
    def __enter__(self) -> "Container":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Container {self.name} pid={self.pid} root={self.root}>"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> "Container":
        if self._proc is not None:
            raise ContainerError(f"{self.name} already started")
        problems = [p for p in check_host_prerequisites() if "debootstrap" not in p]
        if problems:
            raise ContainerError("host prerequisites missing:\n  " + "\n  ".join(problems))
        self._workdir_parent.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.name}.", dir=self._workdir_parent))
        self.log_path = self.dir / "nspawn.log"
        try:
            t0 = time.monotonic()
            self._prepare_root()
            self.timings["copy"] = time.monotonic() - t0
            t0 = time.monotonic()
            self._launch()
            self._wait_booted()
            self.timings["boot"] = time.monotonic() - t0
        except BaseException:
            self._teardown(force=True)
            raise
        return self

    def _prepare_root(self) -> None:
        assert self.dir is not None
        if self.copy_mode == "overlay":
            upper, work, merged = (self.dir / d for d in ("upper", "work", "root"))
            for d in (upper, work, merged):
                d.mkdir()
            opts = f"lowerdir={self.rootfs},upperdir={upper},workdir={work}"
            self._host(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)],
                       what="overlay mount")
            self.root = merged
        else:
            self.root = self.dir / "root"
            self._host(["cp", "-a", "--reflink=auto", str(self.rootfs), str(self.root)],
                       what="rootfs copy", timeout=300)
            (self.root / ".rootfs-complete").unlink(missing_ok=True)

    def _nspawn_cmd(self) -> list[str]:
        cmd = [
            shutil.which("systemd-nspawn") or "systemd-nspawn",
            "--register=no", "--keep-unit",          # no systemd/machined on the host
            f"--machine={self.name}",
            f"--directory={self.root}",
            "--boot",
            # A pty whose output nspawn copies to its stdout (our log file);
            # unlike "pipe" the container gets a /dev/console, so PID 1's
            # status/log output (systemd.log_target=console) is captured.
            "--console=read-only",
            "--link-journal=no",
            "--settings=false",                      # ignore any *.nspawn files
            "--resolv-conf=copy-host",
            "--timezone=off",
        ]
        for b in self.binds:
            host, cont, *rest = b
            ro = bool(rest and rest[0])
            cmd.append(f"--bind{'-ro' if ro else ''}={host}:{cont}")
        cmd += self.nspawn_args
        if self.init_args:
            cmd += ["--", *self.init_args]
        return cmd

    def _launch(self) -> None:
        # Give nspawn a private cgroup so concurrent containers don't share
        # the "payload"/"supervisor" cgroups it creates next to itself.
        for parent in _cgroup_parents():
            cg = parent / f"nspawn-{self.name}"
            try:
                cg.mkdir(exist_ok=True)
                self._cgroups.append(cg)
            except OSError:
                pass
        procs = " ".join(shlex.quote(str(cg / "cgroup.procs")) for cg in self._cgroups)
        wrapper = ('for f in ' + procs + '; do echo $$ > "$f" || exit 97; done; exec "$@"'
                   if self._cgroups else 'exec "$@"')
        # If the test process dies (even SIGKILL), nspawn gets SIGTERM and
        # halts the container instead of leaking it. (The death signal fires
        # when the *thread* that started it exits: start containers from the
        # main thread.)  Leftover dirs/mounts are handled by cleanup_stale().
        setpriv = shutil.which("setpriv")
        pdeath = [setpriv, "--pdeathsig=TERM", "--"] if setpriv else []
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")}
        for k, v in self.nspawn_env.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        self._log_file = open(self.log_path, "ab", buffering=0)
        cmd = self._nspawn_cmd()
        self._log_file.write(f"+ {shlex.join(cmd)}\n".encode())
        self._proc = subprocess.Popen(
            ["/bin/sh", "-c", wrapper, "sh", *pdeath, *cmd],
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )

    def _find_pid1(self) -> int | None:
        """The container's PID 1: a descendant of nspawn whose innermost
        namespaced PID is 1 and which has exec'd systemd."""
        assert self._proc is not None
        todo, seen = [self._proc.pid], set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            nspid = next((l.split()[1:] for l in status.splitlines() if l.startswith("NSpid:")), [])
            if pid != self._proc.pid and len(nspid) > 1 and nspid[-1] == "1":
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                return pid if comm == "systemd" else None  # not exec'd yet
            todo.extend(int(c) for c in children)
        return None

    def _wait_booted(self) -> None:
        deadline = time.monotonic() + self.boot_timeout
        while self.pid is None:
            self._check_alive("while waiting for PID 1")
            self.pid = self._find_pid1()
            if self.pid is None:
                if time.monotonic() > deadline:
                    raise self._error(f"container PID 1 did not appear within {self.boot_timeout}s")
                time.sleep(0.02)
        last = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._error(f"system did not finish booting within {self.boot_timeout}s "
                                  f"(last is-system-running: {last})", diagnostics=True)
            self._check_alive("while booting")
            try:
                r = self.run(["systemctl", "is-system-running", "--wait"], check=False,
                             timeout=max(1.0, remaining))
            except subprocess.TimeoutExpired:
                continue
            state = r.stdout.strip()
            last = f"rc={r.returncode} stdout={state!r} stderr={r.stderr.strip()!r}"
            if r.stderr.startswith("nsenter:"):
                raise self._error(f"cannot enter the container: {r.stderr.strip()}")
            if state == "running":
                return
            if state == "degraded":
                failed = self.run(["systemctl", "--failed", "--no-legend", "--plain"], check=False)
                print(f"[nspawn {self.name}] booted DEGRADED; failed units:\n{failed.stdout}")
                return
            if state in ("maintenance", "stopping"):
                raise self._error(f"boot ended in state {state!r}", diagnostics=True)
            # "offline" + "Failed to connect to bus" until PID 1 listens on
            # its private socket; "starting"/"initializing" if --wait gave up.
            time.sleep(0.05)

    def _check_alive(self, what: str) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise self._error(f"systemd-nspawn exited with {self._proc.returncode} {what}")

    def stop(self, timeout: float | None = None) -> None:
        """Power off cleanly (SIGTERM to nspawn makes it send SIGRTMIN+3 to
        PID 1), escalate to SIGKILL on timeout, then remove the copy."""
        self._teardown(force=False, timeout=timeout)

    def _teardown(self, force: bool, timeout: float | None = None) -> None:
        timeout = self.stop_timeout if timeout is None else timeout
        errors = []
        if self._proc is not None and self._proc.poll() is None:
            t0 = time.monotonic()
            if not force:
                try:
                    self._proc.send_signal(signal.SIGTERM)
                    self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    errors.append(f"clean poweroff did not finish in {timeout}s; killed")
            if self._proc.poll() is None:
                # Killing the namespace's PID 1 kills everything inside.
                for pid in (self.pid, self._proc.pid):
                    if pid:
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    errors.append(f"systemd-nspawn pid {self._proc.pid} did not die after SIGKILL")
            self.timings["stop"] = time.monotonic() - t0
            self.exit_status = self._proc.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.root is not None and self.copy_mode == "overlay":
            for attempt in range(50):
                if not _mounted(self.root):
                    break
                subprocess.run(["umount", *(["-l"] if attempt > 20 else []), str(self.root)],
                               capture_output=True, timeout=30)
                time.sleep(0.05)
            else:
                errors.append(f"could not unmount {self.root}")
        for cg in self._cgroups:
            _rmdir_tree(cg)
        self._cgroups = []
        propagate = Path("/run/systemd/nspawn/propagate") / self.name
        shutil.rmtree(propagate, ignore_errors=True)
        if self.dir is not None and not self.keep and not errors:
            if self.root is not None and _mounted(self.root):
                errors.append(f"refusing to delete {self.dir}: {self.root} still mounted")
            else:
                subprocess.run(["rm", "-rf", "--one-file-system", str(self.dir)],
                               capture_output=True, timeout=120)
        self._proc = None
        self.pid = None
        if errors and not force:
            raise ContainerError(f"[nspawn {self.name}] stop: " + "; ".join(errors)
                                 + f"\n--- nspawn output ({self.log_path}) ---\n"
                                 + (_tail(self.log_path) if self.log_path else ""))

    # ------------------------------------------------------------- helpers
    def _host(self, cmd: list[str], what: str, timeout: float = 60) -> None:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise ContainerError(f"{what} failed ({shlex.join(cmd)}): rc={r.returncode}\n"
                                 f"{r.stdout}{r.stderr}")

    def nspawn_output(self) -> str:
        """Everything systemd-nspawn and the container console printed."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return _clean_console(self.log_path.read_text(errors="replace"))

    def _error(self, msg: str, diagnostics: bool = False) -> ContainerError:
        parts = [f"[nspawn {self.name}] {msg}"]
        if diagnostics and self.pid is not None and self.running:
            for cmd in (["systemctl", "--failed", "--no-legend", "--plain"],
                        ["systemctl", "list-jobs", "--no-legend"],
                        ["journalctl", "-b", "--no-pager", "-n", "80", "-o", "short-monotonic"]):
                try:
                    r = self.run(cmd, check=False, timeout=10)
                    parts.append(f"--- {shlex.join(cmd)} ---\n{r.stdout}{r.stderr}")
                except Exception as e:  # diagnostics must not mask the error
                    parts.append(f"--- {shlex.join(cmd)} failed: {e}")
        if self.log_path is not None:
            parts.append(f"--- nspawn output ({self.log_path}) ---\n{_tail(self.log_path)}")
        return ContainerError("\n".join(parts))

    def _require_running(self) -> int:
        if self.pid is None or not self.running:
            raise self._error("container is not running")
        return self.pid

    # ------------------------------------------------------------- commands
    def nsenter_prefix(self) -> list[str]:
        """Host command prefix that enters the container (for Popen use)."""
        return ["nsenter", f"--target={self._require_running()}", "--all", "--root", "--wdns=/"]

    def popen(self, cmd: Sequence[str], env: Mapping[str, str] | None = None,
              **kwargs) -> subprocess.Popen:
        """Start a long-running command inside (caller must wait/kill it).
        The returned Popen signals the whole process group, so kill() and
        terminate() reach the command inside, not just nsenter.  Everything
        still running is killed anyway when the container stops."""
        full_env = dict(DEFAULT_ENV)
        full_env.update(env or {})
        return _GroupPopen([*self.nsenter_prefix(), "--", *cmd], env=full_env,
                           start_new_session=True, **kwargs)

    def run(self, cmd: Sequence[str] | str, check: bool = True, input: str | bytes | None = None,
            timeout: float = 60.0, env: Mapping[str, str] | None = None,
            text: bool | None = None) -> subprocess.CompletedProcess:
        """Run cmd (argv list, or a string for /bin/sh -c) inside the
        container with a clean environment; returns CompletedProcess with
        captured stdout/stderr (str unless input is bytes or text=False).
        Raises ContainerError on non-zero exit if check, and
        subprocess.TimeoutExpired (process killed) on timeout."""
        if isinstance(cmd, str):
            cmd = ["/bin/sh", "-c", cmd]
        if text is None:
            text = not isinstance(input, (bytes, bytearray))
        full_env = dict(DEFAULT_ENV)
        full_env.update(env or {})
        argv = [*self.nsenter_prefix(), "--", *cmd]
        # Own process group so a timeout kills the command inside too (the
        # nsenter'd child keeps nsenter's pgid); never block on pipes held
        # open by a daemonised grandchild.
        with subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env,
                              text=text, errors="replace" if text else None,
                              start_new_session=True) as p:
            try:
                out, err = p.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    out, err = p.communicate(timeout=5)
                except subprocess.TimeoutExpired:
                    out, err = None, None
                    for f in (p.stdout, p.stderr):
                        f.close()
                    p.wait(5)
                raise subprocess.TimeoutExpired(list(cmd), timeout, output=out, stderr=err) from None
        r = subprocess.CompletedProcess(argv, p.returncode, out, err)
        r.args = list(cmd)
        if check and r.returncode != 0:
            out, err = r.stdout, r.stderr
            if not text:
                out, err = out.decode(errors="replace"), err.decode(errors="replace")
            raise ContainerError(f"[nspawn {self.name}] command {shlex.join(cmd)} failed with "
                                 f"rc={r.returncode}\n--- stdout ---\n{out}\n--- stderr ---\n{err}")
        return r

    def systemctl(self, *args: str, check: bool = True, timeout: float = 60.0):
        return self.run(["systemctl", "--no-pager", *args], check=check, timeout=timeout)

    def journal(self, unit: str | None = None, args: Sequence[str] = (),
                timeout: float = 30.0) -> list[dict]:
        """Journal entries of the current boot as dicts (journalctl -o json)."""
        cmd = ["journalctl", "-b", "--no-pager", "-o", "json", *args]
        if unit:
            cmd += ["-u", unit]
        r = self.run(cmd, timeout=timeout)
        return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]

    def wait_for(self, cmd: Sequence[str] | str, timeout: float = 30.0,
                 interval: float = 0.1) -> subprocess.CompletedProcess:
        """Re-run cmd until it exits 0; raise ContainerError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.run(cmd, check=False, timeout=max(1.0, deadline - time.monotonic()))
            if r.returncode == 0:
                return r
            if time.monotonic() > deadline:
                raise self._error(f"timed out after {timeout}s waiting for {cmd!r}; last "
                                  f"rc={r.returncode} stdout={r.stdout!r} stderr={r.stderr!r}")
            time.sleep(interval)

    # ---------------------------------------------------------------- files
    def copy_in(self, host_path: str | os.PathLike, container_path: str,
                mode: int | None = None, timeout: float = 120.0) -> None:
        """Copy a file or directory tree from the host into the running
        container (streamed through nsenter, so it also works for tmpfs paths
        like /run).  A container_path ending in "/" means "into this
        directory".  Parent directories are created.  mode applies to a file
        (or to the top directory)."""
        src = Path(host_path)
        if not src.exists():
            raise ContainerError(f"copy_in: {src} does not exist")
        if container_path.endswith("/"):
            container_path = container_path + src.name
        if src.is_dir():
            import io
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                tar.add(src, arcname=".")
            self.run(["/bin/sh", "-c", 'mkdir -p "$1" && exec tar -C "$1" -xf - --no-same-owner',
                      "sh", container_path], input=buf.getvalue(), timeout=timeout)
            if mode is not None:
                self.run(["chmod", f"{mode:o}", container_path])
        else:
            self.write_file(container_path, src.read_bytes(),
                            mode=mode if mode is not None else src.stat().st_mode & 0o7777,
                            timeout=timeout)

    def write_file(self, container_path: str, content: str | bytes, mode: int = 0o644,
                   timeout: float = 60.0) -> None:
        """Create/overwrite a file inside the container (parents created)."""
        data = content.encode() if isinstance(content, str) else content
        self.run(["/bin/sh", "-c",
                  'mkdir -p "$(dirname "$1")" && cat > "$1.bao-tmp" && chmod "$2" "$1.bao-tmp" '
                  '&& mv -f "$1.bao-tmp" "$1"', "sh", container_path, f"{mode:o}"],
                 input=data, timeout=timeout)

    def read_file(self, container_path: str, binary: bool = False,
                  timeout: float = 60.0) -> str | bytes:
        """Read a file from inside the running container."""
        r = self.run(["cat", "--", container_path], input=b"", timeout=timeout)
        return r.stdout if binary else r.stdout.decode(errors="replace")

    def exists(self, container_path: str) -> bool:
        return self.run(["test", "-e", container_path], check=False).returncode == 0
