#!/usr/bin/env python3
"""``/metrics`` scrape benchmark (issue 11): how long one scrape takes with 10,000 images and
1,000 workflows in the database (target: under 20 ms).

usage: bench/metrics_bench.py [--images 10000] [--workflows 1000] [--scrapes 50]
                              [--database-url URL | --postgresql] [--out FILE]

Fills a fresh database through the project's DB layer (the migrations, then the images and
workflows tables: images in every status, workflows of every kind in terminal and unfinished
states, a few held by conductors that are not alive), starts `freezeframe serve` on it (its own
conductor disabled, so the unfinished workflows stay as they are; the API's liveness still
answers for the dead owners), scrapes ``GET /metrics`` with an admin token over one keep-alive
connection — 5 scrapes to warm up, then ``--scrapes`` timed — and checks the gauges count what
was inserted. Prints median, p95 and max (wall time at the client) and the server's CPU time per
scrape (from /proc: what a scrape costs whatever else loads the machine) and the load average;
writes bench/results/metrics.json.
Default database: SQLite in the temporary data dir; ``--database-url`` for PostgreSQL.
A benchmark, not a test: exits 0 when it ran (1 when a gauge is wrong).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from freezeframe.compute.workflows.snapshot import KINDS as SNAPSHOT_KINDS  # noqa: E402
from freezeframe.conductor.model import Workflow  # noqa: E402
from freezeframe.db.engine import make_engine  # noqa: E402
from freezeframe.db.migrate import upgrade  # noqa: E402
from freezeframe.images.model import Image  # noqa: E402
from freezeframe.volumes.workflows import KINDS as VOLUME_KINDS  # noqa: E402
from tests.conftest import ADMIN_TOKEN, start_server  # noqa: E402

TARGET_MS = 20.0
IMAGE_STATUSES = ["active"] * 80 + ["queued"] * 5 + ["saving"] * 3 + ["killed"] * 2 + ["deleted"] * 5 \
    + ["deactivated"] * 3 + ["importing"] * 1 + ["uploading"] * 1
DEAD_OWNERS = ("conductor-gone-1", "conductor-gone-2", "conductor-gone-3")


def fill(url: str, n_images: int, n_workflows: int, seed: int = 11) -> dict:
    """Insert the rows; returns what the gauges must show."""
    rnd = random.Random(seed)
    engine = make_engine(url)
    upgrade(engine)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    images, expect_images = [], {}
    for i in range(n_images):
        status = rnd.choice(IMAGE_STATUSES)
        expect_images[status] = expect_images.get(status, 0) + 1
        images.append(dict(id=str(uuid.UUID(int=rnd.getrandbits(128), version=4)), name=f"bench-{i}",
                           status=status, visibility="private", protected=False, os_hidden=False,
                           disk_format="qcow2", container_format="bare", size=rnd.randrange(1 << 20, 1 << 34),
                           min_disk=0, min_ram=0, owner=f"project-{i % 50}", created_at=now, updated_at=now,
                           status_changed_at=now))
    kinds = [k.name for k in SNAPSHOT_KINDS + VOLUME_KINDS]
    workflows, expect_queue = [], 0
    for i in range(n_workflows):
        kind = rnd.choice(kinds)
        roll = rnd.random()
        if roll < 0.85:
            state, owner = rnd.choice(["IMAGE_ACTIVE", "COMPLETE", "REVERTED", "CANCELLED"]), None
        elif roll < 0.92:
            state, owner = "PENDING", None
            expect_queue += 1
        else:                       # held by a conductor that is gone: waiting for a take-over
            state, owner = rnd.choice(["UPLOAD_40_COMPLETE", "RUNNING", "LOCAL_SNAPSHOT_STARTED"]), \
                rnd.choice(DEAD_OWNERS)
            expect_queue += 1
        workflows.append(dict(id=str(uuid.UUID(int=rnd.getrandbits(128), version=4)), kind=kind, state=state,
                              progress=0, last_state_change_at=now, owner=owner, fence=1 if owner else 0,
                              heartbeat_at=now - dt.timedelta(hours=1) if owner else None,
                              host="bench-host", resource_type="server",
                              resource_id=str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
                              project_id="project-a", user_id="bob", params="{}", cancel_requested=False,
                              created_at=now, updated_at=now))
    with engine.begin() as conn:
        for start in range(0, len(images), 1000):
            conn.execute(insert(Image.__table__), images[start:start + 1000])
        conn.execute(insert(Workflow.__table__), workflows)
    engine.dispose()
    return {"images": expect_images, "queue": expect_queue, "workflows": n_workflows}


def check(text: str, expect: dict) -> list[str]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    wrong = []
    for status, n in expect["images"].items():
        got = samples.get(("freezeframe_resources", (("machine", "image"), ("state", status))))
        if got != n:
            wrong.append(f"images {status}: {got} != {n}")
    queue = sum(v for (name, _), v in samples.items() if name == "freezeframe_workflow_queue_depth")
    if queue != expect["queue"]:
        wrong.append(f"queue depth {queue} != {expect['queue']}")
    total = sum(v for (name, _), v in samples.items() if name == "freezeframe_workflows")
    if total != expect["workflows"]:
        wrong.append(f"workflows {total} != {expect['workflows']}")
    dead = [dict(labels)["conductor"] for (name, labels), v in samples.items()
            if name == "freezeframe_conductor_alive" and v == 0]
    if sorted(dead) != sorted(DEAD_OWNERS):
        wrong.append(f"dead conductors {dead}")
    return wrong


def run(args: argparse.Namespace, data_dir: Path, url: str | None) -> dict:
    db_url = url or f"sqlite:///{data_dir / 'freezeframe.db'}"
    t0 = time.monotonic()
    expect = fill(db_url, args.images, args.workflows)
    fill_s = time.monotonic() - t0
    server = start_server(data_dir, args=["--database-url", db_url] if url else [],
                          env={"FREEZEFRAME_CONDUCTOR__ENABLED": "false"})
    try:
        with httpx.Client(base_url=server.url, headers={"X-Auth-Token": ADMIN_TOKEN}, timeout=30) as c:
            for _ in range(5):
                resp = c.get("/metrics")
                assert resp.status_code == 200, resp.text
            wrong = check(resp.text, expect)
            times = []
            load = os.getloadavg()[0]
            cpu = cpu_seconds(server.process.pid)
            for _ in range(args.scrapes):
                t = time.perf_counter()
                resp = c.get("/metrics")
                times.append((time.perf_counter() - t) * 1000)
                assert resp.status_code == 200
            cpu = cpu_seconds(server.process.pid) - cpu
        size = len(resp.content)
    finally:
        server.stop()
    times.sort()
    return {"database": "postgresql" if url else "sqlite", "images": args.images, "workflows": args.workflows,
            "fill_seconds": round(fill_s, 2), "scrapes": args.scrapes, "bytes": size,
            "median_ms": round(statistics.median(times), 2),
            "p95_ms": round(times[min(len(times) - 1, int(0.95 * len(times)))], 2),
            "max_ms": round(times[-1], 2), "server_cpu_ms_per_scrape": round(cpu * 1000 / args.scrapes, 2),
            "load_average_1m": round(load, 2), "cpus": os.cpu_count(), "target_ms": TARGET_MS, "wrong": wrong}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its own threads; /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--workflows", type=int, default=1_000)
    p.add_argument("--scrapes", type=int, default=50)
    p.add_argument("--database-url", help="a fresh, empty PostgreSQL database (default: SQLite)")
    p.add_argument("--postgresql", action="store_true", help="a throw-away database on the machine's PostgreSQL "
                                                             "(tests/pg.py) instead of SQLite")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "metrics.json"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ff-metrics-bench-") as tmp:
        if args.postgresql:
            from tests.pg import temp_database
            with temp_database() as url:
                result = run(args, Path(tmp) / "ff", url)
        else:
            result = run(args, Path(tmp) / "ff", args.database_url)
    ok = result["median_ms"] < TARGET_MS and not result["wrong"]
    print(f"/metrics with {result['images']} images, {result['workflows']} workflows ({result['database']}; "
          f"{result['bytes']} bytes a scrape): median {result['median_ms']} ms, p95 {result['p95_ms']} ms, "
          f"max {result['max_ms']} ms over {result['scrapes']} scrapes; server CPU "
          f"{result['server_cpu_ms_per_scrape']} ms a scrape (load average {result['load_average_1m']} on "
          f"{result['cpus']} CPUs) — target < {TARGET_MS:g} ms: "
          f"{'PASS' if result['median_ms'] < TARGET_MS else 'FAIL'} (median)")
    if result["wrong"]:
        print("gauges wrong:", *result["wrong"], sep="\n  ")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**result, "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                               "ok": ok}, indent=2) + "\n")
    return 1 if result["wrong"] else 0


if __name__ == "__main__":
    sys.exit(main())
