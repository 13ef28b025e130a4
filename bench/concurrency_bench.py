#!/usr/bin/env python3
"""Concurrency benchmark (issue 7, item 4): nothing can hang the service.

usage: bench/concurrency_bench.py [--backends sqlite,postgresql] [--rounds 3] [--snapshots 50]
                                  [--creates 20] [--json-out PATH] [--markdown-out PATH]

Starts its own `freezeframe serve` per backend (fake virt driver, tokens auth, a fresh data dir
under $TMPDIR; PostgreSQL in a throw-away database on $FREEZEFRAME_TEST_PG, default
postgresql://postgres@127.0.0.1:5432/postgres), then per round:
  - snapshots: boots a server and sends --snapshots concurrent createImage calls to it;
  - creates:   uploads --creates new images and sends that many concurrent POST /servers, each
               from a different image (nothing cached: every spawn downloads its image);
while a separate process polls /healthcheck every 20 ms on a connection of its own. It records
every request's latency and answer, the health check's latency during the load, and after each
round that everything settled: exactly one snapshot won, no image left queued/saving, every
workflow terminal, every accepted server ACTIVE.

Targets: /healthcheck p99 <= 200 ms under the load; every request answered within 1 s with
success (202), 409, or 503 carrying Retry-After. A benchmark, not a test: it exits 0 when it ran
(1 if a target was missed, 2 if it could not run). Talks to 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
NOVA = {"X-OpenStack-Nova-API-Version": "2.45"}
OCTET = {"Content-Type": "application/octet-stream"}
MEMBER = "bench-member-token-0123456789"
ADMIN = "bench-admin-token-0123456789"
SERVICE = "bench-service-token-0123456789"
TOKENS = {
    ADMIN: {"user_id": "admin", "project_id": "admin-project", "roles": ["admin", "member", "reader"]},
    MEMBER: {"user_id": "bench", "project_id": "bench-project", "roles": ["member", "reader"]},
    SERVICE: {"user_id": "freezeframe", "project_id": "service", "roles": ["service", "admin"]},
}
PG_ADMIN = os.environ.get("FREEZEFRAME_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TERMINAL = ("IMAGE_ACTIVE", "REVERTED", "CANCELLED", "FAILED")
HEALTH_TARGET, REQUEST_TARGET = 0.200, 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


# -- the server ------------------------------------------------------------------------------


class Server:
    def __init__(self, backend: str, work: Path) -> None:
        self.backend, self.work = backend, work
        self.db_name: str | None = None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data = work / backend
        data.mkdir(parents=True)
        tokens = work / f"{backend}-tokens.json"
        tokens.write_text(json.dumps(TOKENS))
        args = [sys.executable, "-m", "freezeframe", "serve", "--data-dir", str(data), "--port", str(self.port),
                "--auth", "tokens", "--tokens-file", str(tokens)]
        if backend == "postgresql":
            import psycopg
            self.db_name = f"ff_bench_{uuid.uuid4().hex[:12]}"
            with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'CREATE DATABASE "{self.db_name}"')
            args += ["--database-url", f"{PG_ADMIN.rsplit('/', 1)[0]}/{self.db_name}"]
        env = {**os.environ, "FREEZEFRAME_STORE__FSYNC": "false", "FREEZEFRAME_COMPUTE__DRIVER": "fake",
               "FREEZEFRAME_TESTING__ENABLED": "true",          # the fake driver's delays are test knobs
               "FREEZEFRAME_TESTING__FAKE_COPY_DELAY": "1.0",   # ~4 s per snapshot: outlasts the burst
               "FREEZEFRAME_TESTING__FAKE_READ_DELAY": "0.01"}
        self.log = work / f"{backend}.log"
        self.proc = subprocess.Popen(args, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthcheck", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("serve did not come up in 60 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.db_name:
            import psycopg
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')


# -- the health poller (a process of its own: the load generator's GIL does not skew it) ------


def health_poller(url: str, interval: float, stop, out) -> None:
    samples = []
    with httpx.Client(timeout=30) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                status = c.get(url + "/healthcheck").status_code
            except httpx.HTTPError:
                status = 0
            samples.append((time.perf_counter() - t0, status))
            stop.wait(interval)
    out.send(samples)


class HealthWatch:
    def __init__(self, url: str, interval: float = 0.02) -> None:
        ctx = mp.get_context("spawn")
        self.stop = ctx.Event()
        self.recv, send = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=health_poller, args=(url, interval, self.stop, send), daemon=True)

    def __enter__(self) -> "HealthWatch":
        self.proc.start()
        time.sleep(0.5)            # polling before the load starts
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.samples = self.recv.recv() if self.recv.poll(60) else []
        self.proc.join(30)


# -- the load ----------------------------------------------------------------------------------


class Raw:
    """A minimal HTTP/1.1 client on a connection of its own: the burst measures the service, not
    the client (httpx's async client costs several ms of CPU per request here, which for a burst
    of 50 is most of the time measured)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> "Raw":
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict, bytes]:
        data = json.dumps(body).encode() if body is not None else b""
        head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(data)}",
                f"X-Auth-Token: {MEMBER}", *(f"{k}: {v}" for k, v in NOVA.items())]
        if body is not None:
            head.append("Content-Type: application/json")
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)
        raw = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(raw[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in raw[1:] if ":" in line)}
        content = b""
        if "content-length" in headers:
            content = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await self.reader.readexactly(size + 2)
                if not size:
                    break
                content += chunk[:-2]
        return status, headers, content

    def close(self) -> None:
        self.writer.close()


async def burst(port: int, n: int, request) -> list[dict]:
    """``n`` requests released together, each on a connection opened beforehand; each with its
    latency, status and Retry-After."""
    conns = [await Raw.open(port) for _ in range(n)]
    try:
        gate = asyncio.Event()

        async def one(i: int) -> dict:
            await gate.wait()
            t0 = time.perf_counter()
            try:
                status, headers, content = await asyncio.wait_for(request(conns[i], i), 120)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
                return {"s": time.perf_counter() - t0, "status": 0, "retry_after": None, "error": repr(exc)}
            seconds = time.perf_counter() - t0
            body = json.loads(content) if headers.get("content-type", "").startswith("application/json") else None
            return {"s": seconds, "status": status, "retry_after": headers.get("retry-after"), "body": body}
        tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(*tasks)
    finally:
        for c in conns:
            c.close()


def sync_client(server: Server, path: str = "") -> httpx.Client:
    return httpx.Client(base_url=server.url + path, timeout=60, headers={"X-Auth-Token": MEMBER, **NOVA})


def upload(server: Server, name: str, data: bytes) -> str:
    with sync_client(server, "/image") as c:
        resp = c.post("/v2/images", json={"name": name, "disk_format": "raw", "container_format": "bare"})
        resp.raise_for_status()
        image_id = resp.json()["id"]
        c.put(f"/v2/images/{image_id}/file", content=data, headers=OCTET).raise_for_status()
    return image_id


def wait(what: str, predicate, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise RuntimeError(f"timed out waiting for {what}")


def settle(server: Server) -> tuple[list, list, list, float]:
    t0 = time.monotonic()
    with sync_client(server, "/image") as images, sync_client(server, "/compute/v2.1") as nova, \
            sync_client(server) as v1:
        def now():
            imgs = images.get("/v2/images", params={"limit": 1000}).json()["images"]
            wfs = v1.get("/v1/workflows", params={"limit": 1000}).json()["workflows"]
            srvs = nova.get("/servers/detail").json()["servers"]
            busy = ([i for i in imgs if i["status"] in ("queued", "saving", "uploading", "importing")]
                    + [w for w in wfs if not w["state"].startswith(TERMINAL)]
                    + [s for s in srvs if s["OS-EXT-STS:task_state"] is not None or s["status"] == "BUILD"])
            return None if busy else (imgs, wfs, srvs)
        imgs, wfs, srvs = wait("everything to settle", now)
    return imgs, wfs, srvs, time.monotonic() - t0


def round_snapshots(server: Server, n: int, r: int) -> dict:
    base = upload(server, f"bench-base-{r}", os.urandom(1 << 20) + bytes(3 << 20))
    with sync_client(server, "/compute/v2.1") as nova:
        resp = nova.post("/servers", json={"server": {"name": f"bench-snap-{r}", "imageRef": base, "flavorRef": "1"}})
        resp.raise_for_status()
        server_id = resp.json()["server"]["id"]
        wait("the server to boot", lambda: nova.get(f"/servers/{server_id}").json()["server"]["status"] == "ACTIVE")
    def req(c: Raw, i: int):
        return c.request("POST", f"/compute/v2.1/servers/{server_id}/action",
                         {"createImage": {"name": f"bench-{r}-{i}"}})
    with HealthWatch(server.url) as health:
        results = asyncio.run(burst(server.port, n, req))
        imgs, wfs, srvs, settle_s = settle(server)
    winners = [x for x in results if x["status"] == 202]
    mine = [i for i in imgs if i.get("instance_uuid") == server_id]
    flows = [w for w in wfs if w["resource_id"] == server_id]
    srv = next(s for s in srvs if s["id"] == server_id)
    problems = []
    if len(winners) != 1:
        problems.append(f"{len(winners)} snapshots won")
    if [i["status"] for i in mine] != ["active"] * len(winners):
        problems.append(f"images of the server: {[i['status'] for i in mine]}")
    if [w["state"] for w in flows] != ["IMAGE_ACTIVE"] * len(winners):
        problems.append(f"workflows of the server: {[w['state'] for w in flows]}")
    if srv["status"] != "ACTIVE":
        problems.append(f"server {srv['status']}")
    return {"results": results, "health": health.samples, "settle_s": settle_s, "problems": problems}


def round_creates(server: Server, n: int, r: int) -> dict:
    image_ids = [upload(server, f"bench-boot-{r}-{i}", os.urandom(256 << 10) + bytes(1 << 20)) for i in range(n)]
    def req(c: Raw, i: int):
        return c.request("POST", "/compute/v2.1/servers", {"server": {"name": f"bench-boot-{r}-{i}",
                                                                       "imageRef": image_ids[i], "flavorRef": "1"}})
    with HealthWatch(server.url) as health:
        results = asyncio.run(burst(server.port, n, req))
        imgs, wfs, srvs, settle_s = settle(server)
    accepted = {x["body"]["server"]["id"] for x in results if x["status"] == 202}
    created = {s["id"]: s["status"] for s in srvs if s["name"].startswith(f"bench-boot-{r}-")}
    problems = []
    if set(created) != accepted:
        problems.append(f"servers {sorted(created)} vs accepted {sorted(accepted)}")
    bad = {k: v for k, v in created.items() if v != "ACTIVE"}
    if bad:
        problems.append(f"servers not ACTIVE: {bad}")
    return {"results": results, "health": health.samples, "settle_s": settle_s, "problems": problems}


# -- report -----------------------------------------------------------------------------------


def summarize(rounds: list[dict]) -> dict:
    results = [x for r in rounds for x in r["results"]]
    health = [s for r in rounds for s in r["health"]]
    lat = [x["s"] for x in results]
    hl = [s for s, _ in health]
    statuses: dict[str, int] = {}
    for x in results:
        statuses[str(x["status"])] = statuses.get(str(x["status"]), 0) + 1
    bad_answers = [x for x in results if x["status"] not in (202, 409, 503)
                   or (x["status"] == 503 and not x["retry_after"])]
    late = [x for x in results if x["s"] > REQUEST_TARGET]
    return {
        "requests": len(results), "statuses": statuses,
        "request_ms": {"p50": pct(lat, 50) * 1000, "p99": pct(lat, 99) * 1000, "max": max(lat) * 1000},
        "over_1s": len(late), "bad_answers": len(bad_answers),
        "bad_answer_examples": [{k: x.get(k) for k in ("status", "retry_after", "body", "error")}
                                for x in bad_answers[:3]],
        "health_samples": len(hl),
        "health_statuses": {str(st): sum(1 for _, s in health if s == st) for st in sorted({s for _, s in health})},
        "health_ms": {"p50": pct(hl, 50) * 1000, "p99": pct(hl, 99) * 1000, "max": max(hl) * 1000 if hl else 0},
        "settle_s": [round(r["settle_s"], 2) for r in rounds],
        "problems": [p for r in rounds for p in r["problems"]],
        "met": bool(hl) and pct(hl, 99) <= HEALTH_TARGET and not late and not bad_answers
               and not any(r["problems"] for r in rounds),
    }


def markdown(doc: dict) -> str:
    lines = [f"Command: `{doc['command']}`  ", f"Machine: {doc['cpus']} CPUs; {doc['date']}", "",
             "| backend | load | requests | answers | request p50 / p99 / max | > 1 s | health p50 / p99 / max "
             "(samples) | settled after | targets |", "|---|---|---:|---|---|---:|---|---|---|"]
    for backend, loads in doc["results"].items():
        for load, s in loads.items():
            answers = ", ".join(f"{k}: {v}" for k, v in sorted(s["statuses"].items()))
            lines.append(
                f"| {backend} | {load} | {s['requests']} | {answers} | "
                f"{s['request_ms']['p50']:.0f} / {s['request_ms']['p99']:.0f} / {s['request_ms']['max']:.0f} ms | "
                f"{s['over_1s']} | {s['health_ms']['p50']:.1f} / {s['health_ms']['p99']:.1f} / "
                f"{s['health_ms']['max']:.1f} ms ({s['health_samples']}) | "
                f"{', '.join(f'{x:.1f}' for x in s['settle_s'])} s | {'**met**' if s['met'] else '**not met**'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--snapshots", type=int, default=50)
    ap.add_argument("--creates", type=int, default=20)
    ap.add_argument("--json-out", default=str(ROOT / "bench/results/concurrency-latest.json"))
    ap.add_argument("--markdown-out", default=str(ROOT / "bench/results/concurrency-latest.md"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ffconc-", dir=os.environ.get("TMPDIR", "/tmp")))
    doc = {"command": "bench/concurrency_bench.py " + " ".join(sys.argv[1:]), "cpus": os.cpu_count(),
           "date": time.strftime("%Y-%m-%d %H:%M"), "results": {}}
    try:
        for backend in args.backends.split(","):
            try:
                server = Server(backend, work)
            except Exception as exc:
                print(f"{backend}: cannot start: {exc}", file=sys.stderr)
                return 2
            try:
                snaps = [round_snapshots(server, args.snapshots, r) for r in range(args.rounds)]
                creates = [round_creates(server, args.creates, r) for r in range(args.rounds)]
            finally:
                server.stop()
            doc["results"][backend] = {f"{args.snapshots} x createImage, one server": summarize(snaps),
                                       f"{args.creates} x POST /servers, uncached images": summarize(creates)}
            print(json.dumps(doc["results"][backend], indent=1), flush=True)
    finally:
        logs = Path(os.environ.get("TMPDIR", "/tmp")) / "ffconc-logs"
        logs.mkdir(parents=True, exist_ok=True)
        for log in work.glob("*.log"):
            shutil.copy(log, logs / log.name)
        print(f"server logs of this run: {logs}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(doc, indent=1) + "\n")
    Path(args.markdown_out).write_text(markdown(doc))
    print(markdown(doc))
    met = all(s["met"] for loads in doc["results"].values() for s in loads.values())
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
