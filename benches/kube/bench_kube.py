#!/usr/bin/env python3
"""make bench-kube: Secrets through a real kube-apiserver, with this provider (`kms`) side by side with
encryption under a local key (`aesgcm`, the physical limit: no plugin) and with no encryption
(`identity`). Real etcd and kube-apiserver (scripts/kube.sh), the release provider with production
defaults against a real OpenBao with TLS, the Go load client tests/kube/loadclient; all on loopback.

Configurations run in interleaved rounds (identity, aesgcm, kms, identity, ...), each on a fresh
etcd, and every ratio is reported per round and as median [min-max], because on 2 cores a single
ratio within a few percent is noise. docs/performance.md ("Through kube-apiserver") describes the
method and the current figures. Results: $CARGO_TARGET_DIR/bench-kube/results.json.

Knobs: QUICK=1 (1 round, 1000 Secrets, 2 s per load), BENCH_KUBE_ROUNDS (5), BENCH_KUBE_SECONDS (5),
BENCH_KUBE_SECRETS (5000), BENCH_KUBE_CLIENTS (1,16,64), BENCH_KUBE_CONFIGS (identity,aesgcm,kms),
BENCH_KUBE_SLOW_MS (200: OpenBao's added answer time in the slow scenario), BENCH_KUBE_WORKDIR
(default: a directory under /dev/shm, kept with every log when the bench fails).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parts import (REPO, ApiServer, BenchError, Etcd, LoadClient, Provider, cpu_seconds,  # noqa: E402
                   encryption_config, make_pki, rss_mb)
from openbao import BaoDevServer, TcpProxy, free_port  # noqa: E402
from waiting import wait_until  # noqa: E402

QUICK = os.environ.get("QUICK", "") not in ("", "0")
ROUNDS = int(os.environ.get("BENCH_KUBE_ROUNDS", 1 if QUICK else 5))
SECONDS = float(os.environ.get("BENCH_KUBE_SECONDS", 2 if QUICK else 5))
SECRETS = int(os.environ.get("BENCH_KUBE_SECRETS", 1000 if QUICK else 5000))
CLIENTS = [int(c) for c in os.environ.get("BENCH_KUBE_CLIENTS", "1,16,64").split(",")]
CONFIGS = os.environ.get("BENCH_KUBE_CONFIGS", "identity,aesgcm,kms").split(",")
SLOW_S = float(os.environ.get("BENCH_KUBE_SLOW_MS", 200)) / 1000
STEADY_WRITES = 1000


def log(msg: str) -> None:
    print(f"bench-kube: {msg}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, work: Path, bin_dir: Path, provider_bin: Path):
        self.work, self.bin_dir = work, bin_dir
        self.pki = make_pki(work / "pki")
        self.client = LoadClient(work)
        self.bao = self.proxy = self.provider = None
        self.provider_bin = provider_bin
        # Every kube-apiserver of the bench listens on this port, so one kubeconfig serves them all.
        self.port = free_port()
        self.kubeconfig = ApiServer.kubeconfig_file(self.work / "kubeconfig.json", self.port, self.pki)
        if "kms" in CONFIGS:
            self.bao = BaoDevServer(workdir=work / "openbao", tls=True).start()
            # The provider reaches OpenBao through a proxy that can stop or slow it.
            self.proxy = TcpProxy(self.bao.port)
            self.bao.setup(self.new_provider(start=False).policy())
            self.bao.mint_jwt(ttl=24 * 3600)
            self.start_provider()

    def new_provider(self, start: bool = True) -> Provider:
        return Provider(self.provider_bin, self.work / "provider", f"https://127.0.0.1:{self.proxy.port}",
                        self.bao.ca, self.bao.jwt_path, start=start)

    def start_provider(self) -> None:
        if self.provider is not None:
            self.provider.stop()
        self.provider = self.new_provider()

    def close(self) -> None:
        for part in (self.provider, self.proxy, self.bao):
            if part is not None:
                part.stop() if not isinstance(part, TcpProxy) else part.close()

    # -- one configuration's control plane ------------------------------------------------------
    def control_plane(self, name: str, kind: str, first_key: int = 0):
        d = self.work / name
        d.mkdir(parents=True, exist_ok=True)
        etcd = Etcd(self.bin_dir, d / "etcd", d / "etcd.log")
        try:
            return d, etcd, self.apiserver(d, etcd, kind, first_key)
        except BaseException:
            etcd.stop()
            raise

    def apiserver(self, d: Path, etcd: Etcd, kind: str, first_key: int = 0) -> ApiServer:
        enc = encryption_config(d / f"encryption-{first_key}.json", kind,
                                self.provider.socket if self.provider else None, first_key)
        return ApiServer(self.bin_dir, etcd, self.pki, enc, d / "kube-apiserver.log", self.port)

    def load(self, api: ApiServer, mode: str, *args) -> dict:
        return self.client.run(self.kubeconfig, mode, *args)

    def counters(self) -> dict:
        return self.provider.counters() if self.provider else {}

    def restart(self, d: Path, etcd: Etcd, api: ApiServer, kind: str, first_key: int, expect: int):
        """Stop kube-apiserver, start it again: seconds to /readyz and to the first full list that
        succeeds, and the provider calls in between."""
        api.stop()
        before = self.counters()
        api = self.apiserver(d, etcd, kind, first_key)
        first = self.load(api, "await-list", "-namespace", "bench", "-expect", expect, "-timeout", "600s")
        after = self.counters()
        return api, {"ready_s": api.ready_s, "first_list_s": api.ready_s + first["seconds"],
                     "list_ms": first["p50_ms"], "provider": delta(before, after)}

    # -- one round of one configuration ---------------------------------------------------------
    def run(self, rnd: int, kind: str) -> dict:
        r: dict = {"round": rnd, "config": kind}
        name = f"r{rnd}-{kind}"
        log(f"round {rnd}: {kind}")
        d, etcd, api = self.control_plane(name, kind)
        try:
            r["start_ready_s"] = api.ready_s
            api.namespace("bench")
            api.namespace("bench-w")
            r["fill"] = self.load(api, "fill", "-clients", 64, "-count", SECRETS, "-namespace", "bench")
            r["get"] = self.load(api, "get", "-clients", 16, "-duration", f"{SECONDS}s", "-namespace", "bench",
                                 "-count", SECRETS)
            r["list"] = self.load(api, "list", "-repeat", 10, "-namespace", "bench", "-expect", SECRETS)
            api, r["restart_1key"] = self.restart(d, etcd, api, kind, 0, SECRETS)
            r["create"] = {}
            for n in CLIENTS:
                r["create"][str(n)] = self.load(api, "create", "-clients", n, "-duration", f"{SECONDS}s",
                                                "-namespace", "bench-w", "-prefix", f"c{n}-")
            before = self.counters()
            cpu0 = cpu_seconds(api.pid)
            r["steady"] = {"writes": self.load(api, "fill", "-clients", 16, "-count", STEADY_WRITES,
                                               "-namespace", "bench-w")}
            r["steady"]["apiserver_cpu_s"] = cpu_seconds(api.pid) - cpu0
            r["steady"]["provider"] = delta(before, self.counters())
            if kind == "kms":
                r["openbao_down"] = self.openbao_down(api)
                r["openbao_slow"] = self.openbao_slow(api)
                r["provider_rss_mb"] = rss_mb(self.provider.pid)
        finally:
            api.stop()
            etcd.stop()
        r["restart_3keys"] = self.three_keys(f"{name}-3keys", kind)
        shutil.rmtree(d, ignore_errors=True)
        return r

    def openbao_down(self, api: ApiServer) -> dict:
        """OpenBao stopped: writes (under the cached DEK seed) and reads of stored Secrets go on."""
        self.proxy.set_down()
        try:
            wait_until(lambda: not self.provider.key_id(), "OpenBao to be unreachable from the provider", 60,
                       interval=0.5)
            before = self.counters()
            out = {"writes": self.load(api, "fill", "-clients", 16, "-count", 500, "-namespace", "bench-w",
                                       "-size", 1024, "-from", 100000),
                   "reads": self.load(api, "get", "-clients", 16, "-duration", f"{SECONDS}s", "-namespace", "bench",
                                      "-count", SECRETS)}
            out["provider"] = delta(before, self.counters())
        finally:
            self.proxy.set_up()
        wait_until(lambda: self.provider.key_id(), "the provider to answer again", 120, interval=0.5)
        return out

    def openbao_slow(self, api: ApiServer) -> dict:
        """OpenBao answering SLOW_S late: creates and reads (no OpenBao call in steady state)."""
        self.proxy.set_delay(SLOW_S)
        try:
            before = self.counters()
            out = {"delay_s": SLOW_S,
                   "create": self.load(api, "create", "-clients", 16, "-duration", f"{SECONDS}s",
                                       "-namespace", "bench-w", "-prefix", "slow-"),
                   "reads": self.load(api, "get", "-clients", 16, "-duration", f"{SECONDS}s", "-namespace", "bench",
                                      "-count", SECRETS)}
            out["provider"] = delta(before, self.counters())
        finally:
            self.proxy.set_delay(0)
        return out

    def three_keys(self, name: str, kind: str) -> dict:
        """SECRETS Secrets written in three thirds, each under a new key (kms: a Transit rotation the
        provider serves; aesgcm: a new first key in its list; identity: the same restarts), then the
        restart; for kms also the restart with OpenBao slowed."""
        d = self.work / name
        d.mkdir(parents=True, exist_ok=True)
        etcd = Etcd(self.bin_dir, d / "etcd", d / "etcd.log")
        api = None
        key_ids = []
        try:
            for k in range(3):
                if kind == "kms" and k > 0:
                    status, out = self.bao.api("POST", "transit/keys/k8s-etcd/rotate")
                    if status not in (200, 204):
                        raise BenchError(f"rotating the Transit key: {status} {out}")
                    old = key_ids[-1]
                    self.start_provider()
                    wait_until(lambda: self.provider.key_id() not in ("", old), "the provider to serve the new version",
                             60, interval=0.2)
                if kind == "kms":
                    key_ids.append(self.provider.key_id())
                api = self.apiserver(d, etcd, kind, k)
                api.namespace("bench")
                n = SECRETS // 3 + (1 if k < SECRETS % 3 else 0)
                self.load(api, "fill", "-clients", 64, "-count", n, "-from", k * (SECRETS // 3 + 1),
                          "-namespace", "bench")
                if k < 2:
                    api.stop()
            # The restart: kube-apiserver's own start is the one measured (the provider is up).
            api, out = self.restart(d, etcd, api, kind, 2, SECRETS)
            out["key_ids"] = len(set(key_ids))
            if kind == "kms":
                self.proxy.set_delay(SLOW_S)
                try:
                    api, out["slow_openbao"] = self.restart(d, etcd, api, kind, 2, SECRETS)
                    out["slow_openbao"]["delay_s"] = SLOW_S
                finally:
                    self.proxy.set_delay(0)
            return out
        finally:
            if api is not None:
                api.stop()
            etcd.stop()
            shutil.rmtree(d, ignore_errors=True)


def delta(before: dict, after: dict) -> dict:
    return {k: round(after[k] - before.get(k, 0), 6) for k in after}


def spread(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {}
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4), "max": round(max(values), 4),
            "rounds": [round(v, 4) for v in values]}


def _create(n: int, field: str):
    return lambda r: r["create"][str(n)][field]


FIGURES = {
    # name: (how to read it from one round's result, target for kms / aesgcm, higher is better)
    **{f"create/s, {n} clients": (_create(n, "per_second"), 0.95 if n >= 16 else None, True) for n in CLIENTS},
    **{f"create p50 ms, {n} clients": (_create(n, "p50_ms"), None, False) for n in CLIENTS},
    **{f"create p99 ms, {n} clients": (_create(n, "p99_ms"), 1.05 if n >= 16 else None, False) for n in CLIENTS},
    "get p50 ms, 16 clients": (lambda r: r["get"]["p50_ms"], None, False),
    "get p99 ms, 16 clients": (lambda r: r["get"]["p99_ms"], None, False),
    "list p50 ms": (lambda r: r["list"]["p50_ms"], 1.05, False),
    "restart to /readyz s, 1 key": (lambda r: r["restart_1key"]["ready_s"], None, False),
    "restart to first list s, 1 key": (lambda r: r["restart_1key"]["first_list_s"], None, False),
    "restart to /readyz s, 3 keys": (lambda r: r["restart_3keys"]["ready_s"], None, False),
    "restart to first list s, 3 keys": (lambda r: r["restart_3keys"]["first_list_s"], 1.10, False),
    "apiserver CPU s per 1000 writes": (lambda r: r["steady"]["apiserver_cpu_s"], None, False),
}


def summarise(rounds: list[dict]) -> dict:
    by = {c: [r for r in rounds if r["config"] == c] for c in CONFIGS}
    out: dict = {"figures": {}, "ratios": {}, "targets": {}}
    for fig, (get, target, higher) in FIGURES.items():
        out["figures"][fig] = {c: spread([get(r) for r in by[c]]) for c in CONFIGS}
        for num, den in (("kms", "aesgcm"), ("aesgcm", "identity"), ("kms", "identity")):
            if num in by and den in by:
                ratios = [get(a) / get(b) if get(b) else None for a, b in zip(by[num], by[den])]
                out["ratios"].setdefault(f"{num}/{den}", {})[fig] = spread(ratios)
        if target is not None and "kms" in by and "aesgcm" in by:
            s = out["ratios"]["kms/aesgcm"][fig]
            if s:
                met = s["median"] >= target if higher else s["median"] <= target
                out["targets"][fig] = {"target": f"{'>=' if higher else '<='} {target}", "median": s["median"],
                                       "met": met}
    if "kms" in by:
        kms = by["kms"]
        per_1000 = [(r["steady"]["provider"]["Encrypt"] + r["steady"]["provider"]["Decrypt"])
                    * 1000 / r["steady"]["writes"]["ops"] for r in kms]
        out["targets"]["provider Encrypt+Decrypt per 1000 steady writes"] = {
            "target": "== 0", "median": statistics.median(per_1000), "met": max(per_1000) == 0}
        out["kms"] = {
            "steady_per_1000_writes": spread(per_1000),
            "steady_openbao_requests": spread([r["steady"]["provider"]["openbao"] for r in kms]),
            "steady_provider_cpu_s": spread([r["steady"]["provider"]["cpu_s"] for r in kms]),
            "restart_1key_decrypts": spread([r["restart_1key"]["provider"]["Decrypt"] for r in kms]),
            "restart_3keys_decrypts": spread([r["restart_3keys"]["provider"]["Decrypt"] for r in kms]),
            "restart_3keys_openbao_requests": spread([r["restart_3keys"]["provider"]["openbao"] for r in kms]),
            "restart_3keys_key_ids": spread([r["restart_3keys"]["key_ids"] for r in kms]),
            "openbao_down_write_errors": spread([r["openbao_down"]["writes"]["errors"] for r in kms]),
            "openbao_down_read_errors": spread([r["openbao_down"]["reads"]["errors"] for r in kms]),
            "openbao_down_writes_p99_ms": spread([r["openbao_down"]["writes"]["p99_ms"] for r in kms]),
            "openbao_slow_create_p99_ms": spread([r["openbao_slow"]["create"]["p99_ms"] for r in kms]),
            "openbao_slow_create_errors": spread([r["openbao_slow"]["create"]["errors"] for r in kms]),
            "openbao_slow_restart_first_list_s": spread([r["restart_3keys"]["slow_openbao"]["first_list_s"]
                                                         for r in kms]),
            "provider_rss_mb": spread([r["provider_rss_mb"][0] for r in kms]),
            "provider_peak_rss_mb": spread([r["provider_rss_mb"][1] for r in kms]),
        }
    return out


def print_table(summary: dict) -> None:
    cols = [c for c in CONFIGS]
    print(f"\n{'figure':<36}" + "".join(f"{c:>22}" for c in cols) + f"{'kms / aesgcm':>24}  target")
    for fig in FIGURES:
        row = f"{fig:<36}"
        for c in cols:
            s = summary["figures"][fig].get(c) or {}
            row += f"{s.get('median', float('nan')):>10.3f} [{s.get('min', 0):.2f}-{s.get('max', 0):.2f}]".rjust(22)
        rat = summary["ratios"].get("kms/aesgcm", {}).get(fig) or {}
        if rat:
            row += f"{rat['median']:>8.3f} [{rat['min']:.3f}-{rat['max']:.3f}]".rjust(24)
        t = summary["targets"].get(fig)
        if t:
            row += f"  {t['target']} {'met' if t['met'] else 'MISSED'}"
        print(row)
    for name, t in summary["targets"].items():
        if name not in FIGURES:
            print(f"{name}: {t['median']} ({t['target']}: {'met' if t['met'] else 'MISSED'})")
    for name, s in summary.get("kms", {}).items():
        print(f"kms {name}: {s.get('median')} [{s.get('min')}-{s.get('max')}]")


def main() -> int:
    bin_dir = Path(os.environ.get("BAO_KUBE_BIN_DIR", ""))
    if not (bin_dir / "kube-apiserver").exists() or not (bin_dir / "etcd").exists():
        log("BAO_KUBE_BIN_DIR must name scripts/kube.sh's bin directory (make bench-kube sets it)")
        return 2
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    provider_bin = Path(os.environ.get("BAO_KMS_PROVIDER_BIN", target / "release" / "bao-kms-provider"))
    if not provider_bin.exists():
        log(f"{provider_bin} is missing: cargo build --release (make bench-kube does)")
        return 2
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    work = Path(os.environ.get("BENCH_KUBE_WORKDIR") or tempfile.mkdtemp(prefix="bench-kube-", dir=shm))
    work.mkdir(parents=True, exist_ok=True)
    log(f"work directory {work}; {ROUNDS} rounds of {', '.join(CONFIGS)}; {SECRETS} Secrets; {SECONDS} s per load")
    version = subprocess.run([str(bin_dir / "kube-apiserver"), "--version"], capture_output=True, text=True).stdout.strip()
    bench = None
    rounds: list[dict] = []
    started = time.time()
    try:
        bench = Bench(work, bin_dir, provider_bin)
        for rnd in range(ROUNDS):
            for kind in CONFIGS:
                rounds.append(bench.run(rnd, kind))
                rounds[-1]["loadavg"] = os.getloadavg()
    except (BenchError, AssertionError) as e:  # a part failed, or a wait timed out
        log(f"FAILED: {e}\nlogs kept in {work}")
        return 1
    finally:
        if bench is not None:
            bench.close()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    out = target / "bench-kube" / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"commit": commit, "rounds": rounds}, indent=1))  # kept if the summary fails
    summary = summarise(rounds)
    result = {"commit": commit, "date": time.strftime("%Y-%m-%d", time.gmtime(started)),
              "duration_s": round(time.time() - started), "kube_apiserver": version,
              "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
              "settings": {"rounds": ROUNDS, "seconds": SECONDS, "secrets": SECRETS, "clients": CLIENTS,
                           "configs": CONFIGS, "slow_openbao_s": SLOW_S, "steady_writes": STEADY_WRITES,
                           "secret_bytes": 1024, "quick": QUICK},
              **summary, "rounds": rounds}
    out.write_text(json.dumps(result, indent=1))
    print_table(summary)
    print(f"\nresults: {out}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
