#!/usr/bin/env python3
"""Side-by-side benchmark of Glance-v2-compatible image services (a benchmark, not a test).

    image_bench.py --target ours=http://127.0.0.1:9400/image,pid=123,store=/data/images \
                   --target glance=http://127.0.0.1:9292,pid=456,store=/tmp/glance-peer/images,close=1 \
                   [--baseline glance] [--sizes 1G,4G] [--reps 3] [--sparse 20G:2G | --skip-sparse] \
                   [--creates 200] [--clients 1,8] [--runs 1] [--json-out bench/results/latest.json]

A target is ``NAME=URL[,pid=PID][,store=DIR][,close=1][,tests=dense+sparse+creates][,checks=0]``:
URL is the image API root (clients call URL/v2/images); pid is the server process whose RSS and
CPU (summed over it and its descendants) are sampled; store is the directory holding the stored
image files as ``<store>/<image-id>`` (on-disk size of sparse images); close=1 sends
``Connection: close`` on every request (Glance under uWSGI); tests picks the phases; checks=0
makes the target informational (no PASS/FAIL lines).

Measured per target, in one run, with the targets interleaved rep by rep so that the noise of a
shared machine spreads over all of them:

1. dense upload/download MB/s (1 MB = 1e6 B) of random files, ``curl -T`` / ``curl -o /dev/null``,
   median of --reps; each stored image is checked (status, size, checksum, os_hash_value) and the
   first download of each size is hashed (sha256) against the file;
2. the in-process hash ceiling over the same bytes: md5 + sha512 one after the other in one thread
   (as a single hashlib loop does it), sha256 alone; upload MB/s / ceiling is reported;
3. sparse: a SIZE file holding DATA bytes of random data in spread-out extents; upload time and
   the on-disk size (st_blocks * 512) of the stored image file;
4. metadata creates/s: --creates POST /v2/images sequentially and with --clients threads, p50/p99;
   with --runs N the whole creates phase is repeated N times (targets rotated from run to run):
   the figures are the medians over the runs, and the ratio to the baseline is taken within each
   run (same machine noise) and its median reported and checked;
5. peak RSS (and PSS) of the server process tree, sampled every 0.1 s during each upload; the
   figure checked is the one during the upload of the largest dense size (4G by default).

Only talks to the URLs it is given (expected to be 127.0.0.1). Big temporary files live in a
private directory under --tmp and are deleted at the end (also on errors and Ctrl-C).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlparse

import httpx

MB = 1e6
READ = 4 << 20
UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
ALL_TESTS = ("dense", "sparse", "creates")

# Targets the project must meet (see docs/benchmarks.md).
UPLOAD_VS_BASELINE_MD5_SHA512 = 1.7
UPLOAD_VS_CEILING = 0.8
UPLOAD_VS_BASELINE_SHA256 = 3.0
SPARSE_ON_DISK_MAX = 1.1
DOWNLOAD_VS_BASELINE = 1.0
CREATES_VS_BASELINE = 10.0
CREATE_P99_MAX_MS = 50.0
RSS_MAX_MB = 200.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in UNITS:
        return int(float(text[:-1]) * UNITS[text[-1]])
    return int(text)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


# -- targets -------------------------------------------------------------------------------------

@dataclass
class Target:
    name: str
    url: str
    pid: int | None = None
    store: str | None = None
    close: bool = False
    tests: tuple[str, ...] = ALL_TESTS
    checks: bool = True
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Connection": "close"} if self.close else {}

    @property
    def curl_headers(self) -> list[str]:
        return sum((["-H", f"{k}: {v}"] for k, v in self.headers.items()), [])

    def images_url(self, *parts: str) -> str:
        return "/".join([self.url.rstrip("/"), "v2/images", *parts])

    def client(self, timeout: float = 60.0) -> httpx.Client:
        # trust_env=False: never go through a proxy from the environment; these are local servers.
        return httpx.Client(headers=self.headers, timeout=timeout, trust_env=False)


def parse_target(spec: str) -> Target:
    name, _, rest = spec.partition("=")
    if not name or not rest:
        raise argparse.ArgumentTypeError(f"--target {spec!r}: expected NAME=URL[,key=value...]")
    url, *opts = rest.split(",")
    host = urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise argparse.ArgumentTypeError(f"--target {spec!r}: only local servers (127.0.0.1) are benchmarked")
    t = Target(name=name, url=url.rstrip("/"))
    for opt in opts:
        key, _, value = opt.partition("=")
        if key == "pid":
            t.pid = int(value)
        elif key == "store":
            t.store = value
        elif key == "close":
            t.close = value.lower() in ("1", "true", "yes")
        elif key == "tests":
            t.tests = tuple(x for x in value.split("+") if x)
            bad = set(t.tests) - set(ALL_TESTS)
            if bad:
                raise argparse.ArgumentTypeError(f"--target {name}: unknown tests {sorted(bad)}")
        elif key == "checks":
            t.checks = value.lower() in ("1", "true", "yes")
        else:
            raise argparse.ArgumentTypeError(f"--target {name}: unknown option {key!r}")
    return t


# -- /proc sampling ------------------------------------------------------------------------------

def process_tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo and len(tree) < 10000:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def rss_bytes(pid: int | None) -> tuple[int, int]:
    """(RSS, PSS) in bytes, summed over pid and its descendants."""
    if not pid:
        return 0, 0
    tree = process_tree(pid)
    return sum(_status_kb(p, "VmRSS") for p in tree) * 1024, sum(_pss_kb(p) for p in tree) * 1024


def cpu_times(pid: int | None) -> tuple[float, float]:
    """(user, system) CPU seconds of pid and its live descendants (incl. their reaped children)."""
    if not pid:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0.0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            user += (int(fields[11]) + int(fields[13])) / tick
            system += (int(fields[12]) + int(fields[14])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return user, system


def cpu_seconds(pid: int | None) -> float:
    return sum(cpu_times(pid))


def page_faults(pid: int | None) -> int:
    """Minor page faults of pid and its live descendants (a proxy for fresh memory being touched)."""
    total = 0
    for p in process_tree(pid) if pid else []:
        try:
            with open(f"/proc/{p}/stat") as fh:
                total += int(fh.read().rsplit(")", 1)[1].split()[7])
        except (OSError, IndexError, ValueError):
            pass
    return total


class RssSampler:
    """Samples the RSS/PSS of a process tree every `interval` seconds while running."""

    def __init__(self, pid: int | None, interval: float = 0.1, max_seconds: float = 7200) -> None:
        self.pid, self.interval, self.max_seconds = pid, interval, max_seconds
        self.peak_rss = self.peak_pss = self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            rss, pss = rss_bytes(self.pid)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        if self.pid:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self.pid:
            self._thread.join(timeout=10)


# -- curl ----------------------------------------------------------------------------------------

CURL_W = "%{http_code} %{size_upload} %{size_download} %{time_total}"


def curl(args: list[str], timeout: float) -> dict[str, Any]:
    cmd = ["curl", "-sS", "--noproxy", "*", "-o", "/dev/null", "-w", CURL_W, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode:
        raise RuntimeError(f"curl failed ({out.returncode}): {out.stderr.strip()} [{' '.join(args[-3:])}]")
    code, up, down, total = out.stdout.split()
    return dict(http_code=int(code), size_upload=int(float(up)), size_download=int(float(down)),
                time_total=float(total))


def transfer_timeout(nbytes: int) -> float:
    return 120 + nbytes / (5 * MB)  # never wait forever: >= 5 MB/s or give up


# -- files and hashes ----------------------------------------------------------------------------

def make_random_file(path: str, nbytes: int) -> None:
    with open(path, "wb") as fh:
        left = nbytes
        while left > 0:
            n = min(left, 16 << 20)
            fh.write(os.urandom(n))
            left -= n


def make_sparse_file(path: str, size: int, data: int, extent: int = 32 << 20) -> list[tuple[int, int]]:
    """`size` bytes apparent, `data` bytes of random data in extents spread evenly over it."""
    count = max(1, -(-data // extent))
    stride = size // count
    extents = []
    with open(path, "wb") as fh:
        fh.truncate(size)
        left = data
        for i in range(count):
            n = min(extent, left)
            offset = (i * stride) // (1 << 20) * (1 << 20)
            pos = 0
            while pos < n:
                piece = min(16 << 20, n - pos)
                os.pwrite(fh.fileno(), os.urandom(piece), offset + pos)
                pos += piece
            extents.append((offset, n))
            left -= n
    return extents


def digests(path: str) -> dict[str, str]:
    """md5, sha512, sha256 of a file, the three hashes in parallel threads (not timed)."""
    hs = {"md5": hashlib.md5(usedforsecurity=False), "sha512": hashlib.sha512(), "sha256": hashlib.sha256()}
    with open(path, "rb") as fh, concurrent.futures.ThreadPoolExecutor(3) as pool:
        for block in iter(lambda: fh.read(16 << 20), b""):
            list(pool.map(lambda h: h.update(block), hs.values()))
    return {k: h.hexdigest() for k, h in hs.items()}


def hash_speeds(path: str) -> tuple[dict[str, float], dict[str, str]]:
    """MB/s of md5, sha512 and md5+sha512 (one thread, one after the other per block, as a
    single hashlib loop does it), and of sha256 alone; and the three digests. Reading the file
    is not timed."""
    md5, sha512, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha512(), hashlib.sha256()
    t_md5 = t_sha512 = t_sha256 = 0.0
    n = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(READ), b""):
            n += len(block)
            t0 = time.perf_counter()
            md5.update(block)
            t1 = time.perf_counter()
            sha512.update(block)
            t2 = time.perf_counter()
            t_md5 += t1 - t0
            t_sha512 += t2 - t1
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(READ), b""):
            t0 = time.perf_counter()
            sha256.update(block)
            t_sha256 += time.perf_counter() - t0
    speeds = {"md5": n / t_md5 / MB, "sha512": n / t_sha512 / MB,
              "md5+sha512": n / (t_md5 + t_sha512) / MB, "sha256": n / t_sha256 / MB}
    return speeds, {"md5": md5.hexdigest(), "sha512": sha512.hexdigest(), "sha256": sha256.hexdigest()}


def settle() -> float:
    """Flush dirty pages (untimed) so that one target's unsynced writes (Glance does not fsync)
    are not written back during the next target's measurement. Returns the seconds it took."""
    t0 = time.perf_counter()
    os.sync()
    return time.perf_counter() - t0


def download_sha256(t: Target, image_id: str, nbytes: int) -> tuple[str, int]:
    cmd = ["curl", "-sS", "--fail", "--noproxy", "*", *t.curl_headers, t.images_url(image_id, "file")]
    h, got = hashlib.sha256(), 0
    with subprocess.Popen(cmd, stdout=subprocess.PIPE) as proc:
        deadline = time.monotonic() + transfer_timeout(nbytes)
        assert proc.stdout is not None
        for block in iter(lambda: proc.stdout.read(READ), b""):
            h.update(block)
            got += len(block)
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("verification download timed out")
        if proc.wait(timeout=60):
            raise RuntimeError(f"verification download failed: curl exit {proc.returncode}")
    return h.hexdigest(), got


# -- image API helpers ---------------------------------------------------------------------------

def create_image(c: httpx.Client, t: Target, name: str) -> str:
    r = c.post(t.images_url(), json={"name": name, "disk_format": "raw", "container_format": "bare"})
    if r.status_code != 201:
        raise RuntimeError(f"POST /v2/images -> {r.status_code}: {r.text[:200]}")
    return r.json()["id"]


def delete_image(c: httpx.Client, t: Target, image_id: str) -> None:
    try:
        c.delete(t.images_url(image_id))
    except httpx.HTTPError as exc:
        log(f"  {t.name}: delete {image_id} failed: {exc}")


def check_image(c: httpx.Client, t: Target, image_id: str, nbytes: int, sums: dict[str, str]) -> dict[str, Any]:
    """Stored status/size/hashes must match the file; returns the hash profile."""
    r = c.get(t.images_url(image_id))
    r.raise_for_status()
    img = r.json()
    problems = []
    if img.get("status") != "active":
        problems.append(f"status {img.get('status')}")
    if img.get("size") != nbytes:
        problems.append(f"size {img.get('size')} != {nbytes}")
    algo = img.get("os_hash_algo")
    if algo not in sums:
        problems.append(f"unexpected os_hash_algo {algo!r}")
    elif img.get("os_hash_value") != sums[algo]:
        problems.append(f"os_hash_value ({algo}) mismatch")
    if img.get("checksum") is not None and img["checksum"] != sums["md5"]:
        problems.append("checksum (md5) mismatch")
    if problems:
        raise RuntimeError(f"image {image_id} verification failed: {'; '.join(problems)}")
    return {"os_hash_algo": algo, "md5": img.get("checksum") is not None}


def profile_name(profile: dict[str, Any] | None) -> str | None:
    if not profile:
        return None
    return ("md5+" if profile["md5"] else "") + str(profile["os_hash_algo"])


def on_disk(t: Target, image_id: str) -> int | None:
    if not t.store:
        return None
    try:
        return os.stat(os.path.join(t.store, image_id)).st_blocks * 512
    except FileNotFoundError:
        return None


# -- phases --------------------------------------------------------------------------------------

def upload(c: httpx.Client, t: Target, path: str, nbytes: int, sums: dict[str, str],
           label: str) -> tuple[str, dict[str, Any]]:
    """Create an image and upload `path` into it, sampling the server's RSS/CPU; returns (id, row)."""
    image_id = create_image(c, t, f"bench-{label}")
    synced = settle()
    rss0, pss0 = rss_bytes(t.pid)
    u0, s0 = cpu_times(t.pid)
    f0 = page_faults(t.pid)
    with RssSampler(t.pid) as sampler:
        t0 = time.perf_counter()
        res = curl(["-T", path, *t.curl_headers, "-H", "Expect:", "-H", "Content-Type: application/octet-stream",
                    t.images_url(image_id, "file")], timeout=transfer_timeout(nbytes))
        dt = time.perf_counter() - t0
    u1, s1 = cpu_times(t.pid)
    faults = page_faults(t.pid) - f0
    if res["http_code"] not in (200, 201, 204):
        raise RuntimeError(f"upload of {label} -> HTTP {res['http_code']}")
    profile = check_image(c, t, image_id, nbytes, sums)
    return image_id, dict(seconds=dt, MBps=nbytes / dt / MB, curl_time=res["time_total"],
                          server_cpu_s=(u1 - u0) + (s1 - s0), server_user_s=u1 - u0, server_sys_s=s1 - s0,
                          server_minor_faults=faults,
                          rss_before_MB=rss0 / MB, pss_before_MB=pss0 / MB,
                          peak_rss_MB=sampler.peak_rss / MB if t.pid else None,
                          peak_pss_MB=sampler.peak_pss / MB if t.pid else None,
                          rss_samples=sampler.samples, profile=profile, on_disk=on_disk(t, image_id),
                          sync_before_s=synced)


def dense_rep(t: Target, label: str, path: str, nbytes: int, sums: dict[str, str], verify: bool) -> dict[str, Any]:
    with t.client() as c:
        image_id, row = upload(c, t, path, nbytes, sums, f"{label}-{t.name}")
        try:
            if verify:
                got_sha, got_n = download_sha256(t, image_id, nbytes)
                if got_n != nbytes or got_sha != sums["sha256"]:
                    raise RuntimeError(f"downloaded data differs ({got_n} bytes, sha256 {got_sha[:12]}...)")
                row["download_verified"] = True
            settle()
            cpu0 = cpu_seconds(t.pid)
            t0 = time.perf_counter()
            res = curl([*t.curl_headers, t.images_url(image_id, "file")], timeout=transfer_timeout(nbytes))
            dt = time.perf_counter() - t0
            if res["http_code"] != 200 or res["size_download"] != nbytes:
                raise RuntimeError(f"download -> HTTP {res['http_code']}, {res['size_download']} bytes")
            row.update(download_seconds=dt, download_MBps=nbytes / dt / MB, download_server_cpu_s=cpu_seconds(t.pid) - cpu0)
        finally:
            delete_image(c, t, image_id)
    return row


def sparse_run(t: Target, path: str, size: int, data: int, sums: dict[str, str]) -> dict[str, Any]:
    with t.client() as c:
        image_id, row = upload(c, t, path, size, sums, f"sparse-{t.name}")
        try:
            row["data_bytes"] = data
            row["apparent_bytes"] = size
            if row["on_disk"] is not None:
                row["on_disk_ratio"] = row["on_disk"] / data
        finally:
            delete_image(c, t, image_id)
            if t.store and os.path.exists(os.path.join(t.store, image_id)):
                row["stored_file_left_after_delete"] = True
    return row


def creates_run(t: Target, n: int, clients: int) -> dict[str, Any]:
    lat: list[float] = []
    ids: list[str] = []
    errs: list[str] = []
    lock = threading.Lock()
    counter = iter(range(n))

    def worker() -> None:
        with t.client(timeout=30) as c:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                body = {"name": f"bench-create-{clients}-{i}", "disk_format": "raw", "container_format": "bare",
                        "bench": "yes"}
                t0 = time.perf_counter()
                try:
                    r = c.post(t.images_url(), json=body)
                    ok, info = r.status_code == 201, r
                except httpx.HTTPError as exc:
                    ok, info = False, exc
                dt = time.perf_counter() - t0
                with lock:
                    lat.append(dt)
                    if ok:
                        ids.append(info.json()["id"])
                    else:
                        errs.append(str(getattr(info, "status_code", info))[:120])

    # warm-up (untimed): connections, caches, first-request costs
    with t.client(timeout=30) as c:
        for i in range(3):
            delete_image(c, t, create_image(c, t, f"bench-warmup-{i}"))
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    settle()
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=600)
    elapsed = time.perf_counter() - t0
    with t.client(timeout=30) as c:  # clean up (untimed)
        for image_id in ids:
            delete_image(c, t, image_id)
    return dict(n=n, clients=clients, seconds=elapsed, per_s=len(ids) / elapsed, ok=len(ids), errors=errs[:10],
                p50_ms=pct(lat, 0.5) * 1000, p90_ms=pct(lat, 0.9) * 1000, p99_ms=pct(lat, 0.99) * 1000,
                max_ms=max(lat) * 1000, over_50ms=sum(x > 0.05 for x in lat), over_100ms=sum(x > 0.1 for x in lat))


def summarize_creates(args: argparse.Namespace, targets: list[Target],
                      runs: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    """t.result["creates"]["c<N>"]: medians over the runs (per_s, p50/p90/p99), worst max/p99, the
    runs themselves, and for each target the ratio to the baseline within each run and its median."""
    base = runs.get(args.baseline, {})
    for t in targets:
        for key, rs in runs[t.name].items():
            agg: dict[str, Any] = dict(
                n=args.creates, clients=rs[0]["clients"], runs_ok=len(rs),
                per_s=median([r["per_s"] for r in rs]),
                p50_ms=median([r["p50_ms"] for r in rs]), p90_ms=median([r["p90_ms"] for r in rs]),
                p99_ms=median([r["p99_ms"] for r in rs]), p99_ms_worst=max(r["p99_ms"] for r in rs),
                max_ms=max(r["max_ms"] for r in rs), over_50ms=median([r["over_50ms"] for r in rs]),
                over_50ms_total=sum(r["over_50ms"] for r in rs),
                errors=[e for r in rs for e in r["errors"]][:10], runs=rs)
            if len(rs) == 1:
                agg.update({k: v for k, v in rs[0].items() if k != "run"})
                agg["runs"] = rs
            if t.name != args.baseline and base.get(key):
                by_run = {r["run"]: r["per_s"] for r in base[key]}
                ratios = [r["per_s"] / by_run[r["run"]] for r in rs if by_run.get(r["run"])]
                agg["vs_baseline_runs"] = ratios
                agg["vs_baseline_median"] = median(ratios)
            t.result.setdefault("creates", {})[key] = agg
    if args.runs > 1:
        for key in (f"c{c}" for c in args.client_counts):
            log(f"creates, {key[1:]} client(s), {args.runs} runs: " + "; ".join(
                f"{t.name} {fmt(t.result.get('creates', {}).get(key, {}).get('per_s'))}/s"
                + (f" ({', '.join(fmt(x, 2) for x in t.result['creates'][key].get('vs_baseline_runs', []))}x)"
                   if t.result.get("creates", {}).get(key, {}).get("vs_baseline_runs") else "")
                for t in targets))


def guarded(t: Target, what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:  # keep going with the other targets; the error is in the results
        log(f"  {t.name}: {what} FAILED: {exc}")
        t.result.setdefault("errors", []).append(f"{what}: {exc}")
        if os.environ.get("BENCH_DEBUG"):
            traceback.print_exc()
        return None


def rotated(items: list[Target], k: int) -> list[Target]:
    k %= max(1, len(items))
    return items[k:] + items[:k]


# -- report --------------------------------------------------------------------------------------

def fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:.0f}"
        return f"{v:.{digits}f}" if abs(v) >= 1 else f"{v:.{max(digits, 2)}f}"
    return str(v)


def build_rows(args: argparse.Namespace, targets: list[Target], ceilings: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(metric: str, unit: str, better: str, get: Callable[[Target], Any], ratio: bool = True) -> None:
        vals = {}
        for t in targets:
            try:
                vals[t.name] = get(t)
            except (KeyError, TypeError, IndexError):
                vals[t.name] = None
        if any(v is not None for v in vals.values()):
            rows.append(dict(metric=metric, unit=unit, better=better, values=vals, ratio=ratio))

    for label in args.size_labels:
        row(f"upload {label}", "MB/s", "higher", lambda t: t.result["dense"][label]["upload_MBps_median"])
        row(f"upload {label} / in-process hash speed", "x", "higher",
            lambda t: t.result["dense"][label]["upload_vs_ceiling"])
        row(f"upload {label} server CPU", "s/GB", "lower",
            lambda t: t.result["dense"][label]["upload_cpu_s_per_GB_median"])
        row("  of which kernel (sys)", "s/GB", "lower",
            lambda t: t.result["dense"][label]["upload_sys_s_per_GB_median"])
        row("  server page faults", "/MB", "lower",
            lambda t: t.result["dense"][label]["upload_faults_per_MB_median"], ratio=False)
        row(f"download {label}", "MB/s", "higher", lambda t: t.result["dense"][label]["download_MBps_median"])
    big = args.size_labels[-1] if args.size_labels else None
    row("server RSS idle (at start)", "MB", "lower", lambda t: t.result["idle_rss_MB"])
    if big:
        row(f"peak RSS during {big} upload", "MB", "lower", lambda t: t.result["dense"][big]["peak_rss_MB_max"])
        row(f"peak PSS during {big} upload", "MB", "lower", lambda t: t.result["dense"][big]["peak_pss_MB_max"])
    if not args.skip_sparse:
        row(f"sparse {args.sparse} upload", "s", "lower", lambda t: t.result["sparse"]["seconds"])
        row(f"sparse {args.sparse} upload", "MB/s", "higher", lambda t: t.result["sparse"]["MBps"])
        row("sparse stored on disk", "MB", "lower", lambda t: t.result["sparse"]["on_disk"] / MB)
        row("sparse on disk / data", "x", "lower", lambda t: t.result["sparse"]["on_disk_ratio"])
        row("peak RSS during sparse upload", "MB", "lower", lambda t: t.result["sparse"]["peak_rss_MB"])
    med = f" (median of {args.runs})" if args.runs > 1 else ""
    for clients in args.client_counts:
        key = f"c{clients}"
        row(f"creates/s{med}, {clients} client{'s' if clients > 1 else ''}", "1/s", "higher",
            lambda t: t.result["creates"][key]["per_s"])
        row(f"create p50, {clients} client{'s' if clients > 1 else ''}", "ms", "lower",
            lambda t: t.result["creates"][key]["p50_ms"])
        row(f"create p99{med}, {clients} client{'s' if clients > 1 else ''}", "ms", "lower",
            lambda t: t.result["creates"][key]["p99_ms"])
        row(f"creates > 50 ms, {clients} client{'s' if clients > 1 else ''}", f"of {args.creates}", "lower",
            lambda t: t.result["creates"][key]["over_50ms"])
        if args.runs > 1:
            row(f"create p99 worst run, {clients} client{'s' if clients > 1 else ''}", "ms", "lower",
                lambda t: t.result["creates"][key]["p99_ms_worst"])
            row(f"creates/s / {args.baseline} in the same run (median), {clients} client{'s' if clients > 1 else ''}",
                "x", "higher", lambda t: t.result["creates"][key]["vs_baseline_median"], ratio=False)
    base = args.baseline
    for r in rows:
        b = r["values"].get(base)
        r["ratios"] = {name: (v / b if (v is not None and b and r["ratio"]) else None)
                       for name, v in r["values"].items() if name != base}
    return rows


def print_table(rows: list[dict[str, Any]], targets: list[Target], base: str, ceilings: dict[str, Any],
                out: Any = sys.stdout) -> str:
    others = [t.name for t in targets if t.name != base]
    cols = ["metric", "unit"] + [t.name for t in targets] + [f"{n}/{base}" for n in others if base in
                                                              [t.name for t in targets]]
    lines = []
    table = []
    for r in rows:
        cells = [r["metric"], r["unit"]] + [fmt(r["values"].get(t.name)) for t in targets]
        if base in r["values"]:
            cells += [fmt(r["ratios"].get(n), 2) for n in others]
        table.append(cells)
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *table)]
    sep = "  "
    lines.append(sep.join(c.ljust(w) for c, w in zip(cols, widths)))
    lines.append(sep.join("-" * w for w in widths))
    for cells in table:
        lines.append(sep.join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    text = "\n".join(lines)
    print(text, file=out)
    return text


def markdown_table(rows: list[dict[str, Any]], targets: list[Target], base: str) -> str:
    others = [t.name for t in targets if t.name != base]
    head = ["metric", "unit"] + [t.name for t in targets] + [f"{n} / {base}" for n in others]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for r in rows:
        cells = [r["metric"], r["unit"]] + [fmt(r["values"].get(t.name)) for t in targets] + \
                [fmt(r["ratios"].get(n), 2) for n in others]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def evaluate(args: argparse.Namespace, targets: list[Target], ceilings: dict[str, Any]) -> list[dict[str, Any]]:
    base = next((t for t in targets if t.name == args.baseline), None)
    checks: list[dict[str, Any]] = []

    def check(t: Target, what: str, value: float | None, limit: float | None, ok_if: str, detail: str) -> None:
        if value is None or limit is None:
            checks.append(dict(target=t.name, check=what, value=value, limit=limit, result="N/A", detail=detail))
            return
        ok = value >= limit if ok_if == ">=" else (value <= limit if ok_if == "<=" else value < limit)
        checks.append(dict(target=t.name, check=what, value=value, limit=limit, op=ok_if,
                           result="PASS" if ok else "FAIL", detail=detail))

    def g(t: Target | None, *keys: str) -> Any:
        cur: Any = t.result if t else None
        for k in keys:
            if not isinstance(cur, dict) or k not in cur:
                return None
            cur = cur[k]
        return cur

    for t in targets:
        if t is base or not t.checks:
            continue
        if "dense" in t.tests:
            for label in args.size_labels:
                up, bup = g(t, "dense", label, "upload_MBps_median"), g(base, "dense", label, "upload_MBps_median")
                prof = g(t, "dense", label, "profile")
                if prof == "md5+sha512":
                    check(t, f"upload {label} (md5+sha512) >= {UPLOAD_VS_BASELINE_MD5_SHA512}x {args.baseline}", up,
                          bup * UPLOAD_VS_BASELINE_MD5_SHA512 if bup else None, ">=",
                          f"{fmt(up)} vs {fmt(bup)} MB/s")
                    ceil = g(t, "dense", label, "ceiling_MBps")
                    check(t, f"upload {label} (md5+sha512) >= {UPLOAD_VS_CEILING}x in-process md5+sha512", up,
                          ceil * UPLOAD_VS_CEILING if ceil else None, ">=", f"{fmt(up)} vs {fmt(ceil)} MB/s")
                elif prof == "sha256":
                    check(t, f"upload {label} (sha256, no md5) >= {UPLOAD_VS_BASELINE_SHA256}x {args.baseline}", up,
                          bup * UPLOAD_VS_BASELINE_SHA256 if bup else None, ">=", f"{fmt(up)} vs {fmt(bup)} MB/s")
                else:
                    check(t, f"upload {label}: hash profile {prof} has no target", None, None, ">=", "")
                down, bdown = g(t, "dense", label, "download_MBps_median"), g(base, "dense", label, "download_MBps_median")
                check(t, f"download {label} >= {args.baseline}", down, bdown * DOWNLOAD_VS_BASELINE if bdown else None,
                      ">=", f"{fmt(down)} vs {fmt(bdown)} MB/s")
            big = args.size_labels[-1] if args.size_labels else None
            if big:
                rss = g(t, "dense", big, "peak_rss_MB_max")
                check(t, f"peak server RSS during {big} upload < {RSS_MAX_MB:.0f} MB", rss, RSS_MAX_MB, "<",
                      f"{fmt(rss)} MB")
        if "sparse" in t.tests and not args.skip_sparse:
            ratio = g(t, "sparse", "on_disk_ratio")
            check(t, f"sparse {args.sparse} stored on disk <= {SPARSE_ON_DISK_MAX}x data", ratio, SPARSE_ON_DISK_MAX,
                  "<=", f"{fmt((g(t, 'sparse', 'on_disk') or 0) / MB)} MB on disk for "
                        f"{fmt(args.sparse_data / MB)} MB of data")
        if "creates" in t.tests and args.client_counts:
            for clients in args.client_counts:
                key = f"c{clients}"
                v, bv = g(t, "creates", key, "per_s"), g(base, "creates", key, "per_s")
                if args.runs > 1:
                    ratios = g(t, "creates", key, "vs_baseline_runs") or []
                    ratio = g(t, "creates", key, "vs_baseline_median")
                    check(t, f"creates/s with {clients} client(s) >= {CREATES_VS_BASELINE:.0f}x {args.baseline} "
                             f"(median of the {args.runs} same-run ratios)", ratio, CREATES_VS_BASELINE, ">=",
                          f"runs {', '.join(fmt(x, 2) for x in ratios)}x; medians {fmt(v)} vs {fmt(bv)} /s")
                else:
                    check(t, f"creates/s with {clients} client(s) >= {CREATES_VS_BASELINE:.0f}x {args.baseline}", v,
                          bv * CREATES_VS_BASELINE if bv else None, ">=", f"{fmt(v)} vs {fmt(bv)} /s")
            conc = max(args.client_counts)
            p99 = g(t, "creates", f"c{conc}", "p99_ms")
            worst = g(t, "creates", f"c{conc}", "p99_ms_worst")
            check(t, f"create p99 with {conc} clients <= {CREATE_P99_MAX_MS:.0f} ms"
                     + (f" (median of {args.runs} runs)" if args.runs > 1 else ""), p99, CREATE_P99_MAX_MS, "<=",
                  f"{fmt(p99)} ms" + (f", worst run {fmt(worst)} ms" if args.runs > 1 else ""))
        errs = t.result.get("errors") or []
        checks.append(dict(target=t.name, check="all phases ran, data verified (size, hashes, download)",
                           value=len(errs), limit=0, result="PASS" if not errs else "FAIL",
                           detail="; ".join(errs)[:300]))
    return checks


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = dict(nproc=os.cpu_count(), platform=platform.platform(), python=platform.python_version())
    try:
        info["sched_affinity"] = len(os.sched_getaffinity(0))
        with open("/proc/cpuinfo") as fh:
            info["cpu_model"] = next((l.split(":", 1)[1].strip() for l in fh if l.startswith("model name")), None)
        with open("/proc/meminfo") as fh:
            info["mem_total_kB"] = int(fh.readline().split()[1])
        info["loadavg"] = open("/proc/loadavg").read().split()[:3]
        info["curl"] = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    except Exception:  # informational only
        pass
    return info


# -- main ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", action="append", type=parse_target, required=True, help="NAME=URL[,pid=..][,store=..]")
    ap.add_argument("--baseline", default="glance", help="target the others are compared with (default glance)")
    ap.add_argument("--sizes", default="1G,4G", help="dense file sizes (default 1G,4G; K/M/G are powers of 1024)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each dense upload/download (median)")
    ap.add_argument("--sparse", default="20G:2G", help="APPARENT:DATA of the sparse image (default 20G:2G)")
    ap.add_argument("--skip-sparse", action="store_true")
    ap.add_argument("--skip-dense", action="store_true")
    ap.add_argument("--skip-creates", action="store_true")
    ap.add_argument("--creates", type=int, default=200, help="POST /v2/images per run (default 200)")
    ap.add_argument("--clients", default="1,8", help="client thread counts for the creates (default 1,8)")
    ap.add_argument("--runs", type=int, default=1,
                    help="repeat the creates phase N times; medians, ratios to the baseline within each run")
    ap.add_argument("--tmp", default=tempfile.gettempdir(), help="where the big temporary files go")
    ap.add_argument("--json-out", help="write all results here")
    ap.add_argument("--markdown-out", help="write the results table (markdown) here")
    ap.add_argument("--meta", action="append", default=[], help="KEY=VALUE recorded in the results")
    ap.add_argument("--keep-files", action="store_true", help="keep the generated files (debugging)")
    args = ap.parse_args(argv)

    targets: list[Target] = args.target
    if len({t.name for t in targets}) != len(targets):
        ap.error("target names must be unique")
    if args.reps < 1 or args.creates < 1 or args.runs < 1:
        ap.error("--reps, --creates and --runs must be >= 1")
    args.size_labels = [] if args.skip_dense else [s.strip() for s in args.sizes.split(",") if s.strip()]
    sizes = {label: parse_size(label) for label in args.size_labels}
    args.size_labels.sort(key=lambda label: sizes[label])
    args.client_counts = [] if args.skip_creates else [int(x) for x in args.clients.split(",")]
    sp_size, _, sp_data = args.sparse.partition(":")
    args.sparse_size, args.sparse_data = parse_size(sp_size), parse_size(sp_data or "0")
    if not args.skip_sparse and not 0 < args.sparse_data <= args.sparse_size:
        ap.error("--sparse wants APPARENT:DATA with 0 < DATA <= APPARENT")

    need = sum(sizes.values()) + (0 if args.skip_sparse else args.sparse_data)
    free = shutil.disk_usage(args.tmp).free
    if need * 1.2 > free:
        ap.error(f"not enough space in {args.tmp}: need ~{need / MB:.0f} MB for test files, {free / MB:.0f} MB free")

    started = datetime.datetime.now(datetime.timezone.utc)
    results: dict[str, Any] = dict(
        started_at=started.isoformat(timespec="seconds"), machine=machine_info(),
        meta=dict(m.split("=", 1) for m in args.meta if "=" in m),
        args=dict(sizes=args.size_labels, reps=args.reps, sparse=None if args.skip_sparse else args.sparse,
                  creates=args.creates, clients=args.client_counts, runs=args.runs, baseline=args.baseline),
        targets={t.name: dict(url=t.url, pid=t.pid, store=t.store, close=t.close, tests=list(t.tests)) for t in targets},
        units=dict(MB="1e6 bytes", throughput="MB/s", rss="MB (1e6 bytes), summed over the process tree"),
    )
    for t in targets:
        t.result = results["targets"][t.name]
        rss, pss = rss_bytes(t.pid)
        t.result["idle_rss_MB"], t.result["idle_pss_MB"] = (rss / MB, pss / MB) if t.pid else (None, None)
        with t.client(timeout=10) as c:
            r = c.get(t.images_url(), params={"limit": 1})
            if r.status_code != 200:
                ap.error(f"target {t.name}: GET {t.images_url()} -> {r.status_code}")

    workdir = tempfile.mkdtemp(prefix="ffbench-data.", dir=args.tmp)
    ceilings: dict[str, Any] = {}
    try:
        # 1 + 2. dense upload/download and, in each rep, the in-process hash ceiling over the same
        # bytes (measured in the same rotation as the targets, so it sees the same machine noise)
        dense_targets = [t for t in targets if "dense" in t.tests]
        step = 0
        for label in args.size_labels:
            n = sizes[label]
            path = os.path.join(workdir, f"dense-{label}.bin")
            log(f"making {label} of random data ({n} bytes)")
            make_random_file(path, n)
            sums = digests(path)  # to verify what the servers store and send back
            speeds: list[dict[str, float]] = []
            reps: dict[str, list[dict[str, Any]]] = {t.name: [] for t in dense_targets}
            for rep in range(args.reps):
                for t in rotated([None, *dense_targets], step):
                    if t is None:
                        settle()
                        sp, sums_rep = hash_speeds(path)
                        if sums_rep != sums:
                            raise RuntimeError(f"{path} changed during the run")
                        speeds.append(sp)
                        log(f"{'in-process':>14} {label} rep{rep}: " +
                            ", ".join(f"{k} {v:.0f}" for k, v in sp.items()) + " MB/s (one thread)")
                        continue
                    r = guarded(t, f"dense {label} rep{rep}",
                                lambda: dense_rep(t, f"{label}-{rep}", path, n, sums, verify=(rep == 0)))
                    if r:
                        reps[t.name].append(r)
                        log(f"{t.name:>14} {label} rep{rep}: upload {r['MBps']:7.1f} MB/s ({r['seconds']:.2f}s, "
                            f"server cpu {r['server_user_s']:.2f}u+{r['server_sys_s']:.2f}s, "
                            f"peak rss {fmt(r['peak_rss_MB'])} MB)  "
                            f"download {r['download_MBps']:7.1f} MB/s ({r['download_seconds']:.2f}s)")
                step += 1
            ceilings[label] = {k: median([sp[k] for sp in speeds]) for k in speeds[0]}
            ceilings[label]["reps"] = speeds
            for t in dense_targets:
                rs = reps[t.name]
                if not rs:
                    continue
                prof = profile_name(rs[0]["profile"])
                ceil_key = prof if prof in ("md5+sha512", "sha256") else None
                ceil = ceilings[label][ceil_key] if ceil_key else None
                up = median([r["MBps"] for r in rs])
                t.result.setdefault("dense", {})[label] = dict(
                    bytes=n, reps=rs, profile=prof,
                    upload_MBps_median=up, download_MBps_median=median([r["download_MBps"] for r in rs]),
                    upload_cpu_s_per_GB_median=median([r["server_cpu_s"] / (n / 1e9) for r in rs]) if t.pid else None,
                    upload_sys_s_per_GB_median=median([r["server_sys_s"] / (n / 1e9) for r in rs]) if t.pid else None,
                    upload_faults_per_MB_median=median([r["server_minor_faults"] / (n / MB) for r in rs]) if t.pid else None,
                    ceiling=ceil_key, ceiling_MBps=ceil, upload_vs_ceiling=up / ceil if ceil else None,
                    peak_rss_MB_max=max(r["peak_rss_MB"] for r in rs) if t.pid else None,
                    peak_pss_MB_max=max(r["peak_pss_MB"] for r in rs) if t.pid else None,
                )
            if not args.keep_files:
                os.remove(path)
        results["hash_ceiling_MBps"] = ceilings

        # 3. sparse
        if not args.skip_sparse:
            path = os.path.join(workdir, "sparse.bin")
            log(f"making sparse file {args.sparse} ({args.sparse_size} bytes apparent, {args.sparse_data} data)")
            extents = make_sparse_file(path, args.sparse_size, args.sparse_data)
            st = os.stat(path)
            log(f"  source file: {st.st_size} bytes, {st.st_blocks * 512} on disk, {len(extents)} extents; hashing")
            sums = digests(path)
            settle()
            results["sparse_source"] = dict(apparent=st.st_size, on_disk=st.st_blocks * 512, extents=len(extents),
                                            data=args.sparse_data)
            for t in targets:
                if "sparse" not in t.tests:
                    continue
                r = guarded(t, "sparse", lambda: sparse_run(t, path, args.sparse_size, args.sparse_data, sums))
                if r:
                    t.result["sparse"] = r
                    log(f"{t.name:>14} sparse: upload {r['seconds']:.1f}s ({r['MBps']:.0f} MB/s apparent), "
                        f"stored on disk {fmt((r['on_disk'] or 0) / MB)} MB ({fmt(r.get('on_disk_ratio'), 2)}x data), "
                        f"peak rss {fmt(r['peak_rss_MB'])} MB")
            if not args.keep_files:
                os.remove(path)

        # 4. creates (--runs times, the targets in a rotating order from run to run)
        create_targets = [t for t in targets if "creates" in t.tests]
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {t.name: {} for t in create_targets}
        for run in range(args.runs):
            for clients in args.client_counts:
                for t in rotated(create_targets, run):
                    r = guarded(t, f"creates c{clients} run{run}", lambda: creates_run(t, args.creates, clients))
                    if r:
                        r["run"] = run
                        runs[t.name].setdefault(f"c{clients}", []).append(r)
                        log(f"{t.name:>14} creates x{args.creates}, {clients} client(s), run {run}: "
                            f"{r['per_s']:.1f}/s, p50 {r['p50_ms']:.1f} ms, p90 {r['p90_ms']:.1f} ms, "
                            f"p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.0f} ms, >50ms: {r['over_50ms']}, "
                            f"errors {len(r['errors'])}")
                        if r["errors"]:
                            t.result.setdefault("errors", []).append(f"creates c{clients}: {r['errors'][:3]}")
        summarize_creates(args, create_targets, runs)
    except KeyboardInterrupt:
        log("interrupted; reporting what was measured")
        results["interrupted"] = True
    finally:
        if not args.keep_files:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = build_rows(args, targets, ceilings)
    checks = evaluate(args, targets, ceilings)
    results["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    results["finished_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    results["table"] = rows
    results["checks"] = checks

    print()
    if ceilings:
        print("in-process hash speed (one thread, MB/s): " + "; ".join(
            f"{label}: md5+sha512 {c['md5+sha512']:.0f}, sha256 {c['sha256']:.0f}, md5 {c['md5']:.0f}, "
            f"sha512 {c['sha512']:.0f}" for label, c in ceilings.items()))
    print()
    print_table(rows, targets, args.baseline, ceilings)
    print()
    for c in checks:
        print(f"{c['result']:<4}  {c['target']:<14} {c['check']}  [{c['detail']}]")
    n_fail = sum(c["result"] == "FAIL" for c in checks)
    print(f"\n{sum(c['result'] == 'PASS' for c in checks)} PASS, {n_fail} FAIL, "
          f"{sum(c['result'] == 'N/A' for c in checks)} N/A")
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w") as fh:
            json.dump(results, fh, indent=1, default=str)
        log(f"results written to {args.json_out}")
    if args.markdown_out:
        md = markdown_table(rows, targets, args.baseline)
        md += "\n\n" + "\n".join(f"- **{c['result']}** {c['target']}: {c['check']}" +
                                  (f" ({c['detail']})" if c["detail"] else "") for c in checks)
        if ceilings:
            md += "\n\nIn-process hash speed (one thread, MB/s): " + "; ".join(
                f"{label}: md5+sha512 {c['md5+sha512']:.0f}, sha256 {c['sha256']:.0f}" for label, c in ceilings.items())
        with open(args.markdown_out, "w") as fh:
            fh.write(md + "\n")
    # A benchmark: the exit status says whether it ran, not whether the targets were met.
    return 1 if results.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
