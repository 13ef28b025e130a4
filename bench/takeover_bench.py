#!/usr/bin/env python3
"""Takeover benchmark (issue 8): kill -9 the conductor running a snapshot mid-upload, N times,
and measure how long until another conductor takes it over.

usage: bench/takeover_bench.py [--kills 20] [--ttl 3] [--disk-mib 16] [--rate-mib 4] [--out FILE]

Starts a private redis-server (jobboard + liveness; no persistence), a throw-away PostgreSQL
database on the machine's server, `freezeframe serve` with its conductor disabled and two
`freezeframe conductor` processes (fake virt driver, lease TTL --ttl). Boots one server, then per
kill: createImage, polls the workflow API (every 20 ms) until the upload is between 20 % and
60 % (varied per kill), kill -9s the conductor that owns it, and records
- claimed: kill -> the workflow's owner is the other conductor,
- takeover: kill -> the first state change made by the other conductor (a new history entry),
then restarts the killed conductor (same id) and waits for the end. Each snapshot is checked:
IMAGE_ACTIVE, every state entered once (nothing ran twice), fence 2 (claimed exactly twice),
the upload resumed (not from byte 0), the image's sha256 equal to the disk's. Prints median and
max against 2x TTL and the lost / run-twice counts; writes bench/results/takeover.json.
A benchmark, not a test: exits 0 when it ran (1 when a snapshot was lost or ran twice).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cluster import cluster  # noqa: E402


def percent(wf: dict) -> int:
    state = wf["state"]
    return int(state[7:-9]) if state.startswith("UPLOAD_") and state[7:-9].isdigit() else -1


def one_kill(c, server_id: str, data: bytes, sha: str, at: int, n: int) -> dict:
    image_id, workflow_id = c.snapshot(server_id, f"takeover-{n}")
    wf = c.wait(workflow_id, lambda w: percent(w) >= at and w["owner"], every=0.02)
    owner = wf["owner"]
    other = next(name for name in c.conductors if name != owner)
    seen = len(c.workflow(workflow_id)["history"])
    killed = c.kill(owner)
    c.wait(workflow_id, lambda w: w["owner"] == other, every=0.02)
    claimed = time.time() - killed
    shown = c.wait(workflow_id, lambda w: len(w["history"]) > seen, every=0.02)
    takeover = time.time() - killed
    c.start_conductor(owner)                      # back for the next round (nothing of its own to resume)
    wf = c.wait_end(workflow_id)
    history = c.workflow(workflow_id)["history"]
    states = [h["state"] for h in history]
    done = next((h for h in history if h["state"] == "UPLOAD_COMPLETE"), None)
    resumed_at = int(done["detail"].rsplit(" ", 1)[1]) if done else -1
    ok_data = wf["state"] == "IMAGE_ACTIVE" and hashlib.sha256(c.image_data(image_id)).hexdigest() == sha
    c.wait_conductor_up(owner)
    with c.server.client() as images:              # keep the store small: the snapshot was checked
        images.delete(f"/v2/images/{image_id}")
    return {"kill": n, "killed_in": states[seen - 1], "killed": owner, "took_over": other,
            "claimed_s": round(claimed, 3), "takeover_s": round(takeover, 3), "first_change": shown["history"][seen]["state"],
            "state": wf["state"], "fence": c.fence(workflow_id), "ran_once": len(states) == len(set(states)),
            "resumed_at": resumed_at, "data_ok": ok_data}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--ttl", type=float, default=3.0, help="conductor.lease_ttl (seconds)")
    parser.add_argument("--disk-mib", type=int, default=16)
    parser.add_argument("--rate-mib", type=float, default=4.0, help="upload rate limit, MiB/s (makes mid-upload last)")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "takeover.json")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    env = {"FREEZEFRAME_CONDUCTOR__UPLOAD_RATE": str(int(args.rate_mib * (1 << 20))),
           "FREEZEFRAME_CONDUCTOR__UPLOAD_CHUNK": str(1 << 20), "FREEZEFRAME_IMAGES__CHUNK_SIZE": str(1 << 20)}
    runs = []
    with tempfile.TemporaryDirectory(prefix="ff-takeover-", dir="/var/tmp") as tmp, \
            cluster(Path(tmp), lease_ttl=args.ttl, env=env) as c:
        data = os.urandom(args.disk_mib << 20)
        sha = hashlib.sha256(data).hexdigest()
        server_id = c.boot(data)
        c.start_conductors()
        for n in range(1, args.kills + 1):
            at = rng.choice(range(20, 70, 10))
            run = one_kill(c, server_id, data, sha, at, n)
            runs.append(run)
            print(f"kill {n:2d}: {run['killed']} in {run['killed_in']:<20} -> {run['took_over']} claimed "
                  f"{run['claimed_s']:.2f}s, first state change {run['takeover_s']:.2f}s ({run['first_change']}); "
                  f"{run['state']}, fence {run['fence']}, resumed at {run['resumed_at']}, data "
                  f"{'ok' if run['data_ok'] else 'WRONG'}", flush=True)
    takeovers = [r["takeover_s"] for r in runs]
    claims = [r["claimed_s"] for r in runs]
    lost = sum(1 for r in runs if r["state"] != "IMAGE_ACTIVE" or not r["data_ok"])
    twice = sum(1 for r in runs if not r["ran_once"] or r["fence"] != 2)
    restarted_upload = sum(1 for r in runs if r["resumed_at"] <= 0)
    summary = {
        "kills": len(runs), "lease_ttl_s": args.ttl, "target_s": 2 * args.ttl,
        "takeover_median_s": round(statistics.median(takeovers), 3), "takeover_max_s": round(max(takeovers), 3),
        "claimed_median_s": round(statistics.median(claims), 3), "claimed_max_s": round(max(claims), 3),
        "lost": lost, "ran_twice": twice, "uploads_restarted_from_zero": restarted_upload,
        "disk_mib": args.disk_mib, "upload_rate_mib_s": args.rate_mib,
        "command": " ".join(["bench/takeover_bench.py", *sys.argv[1:]]),
    }
    print(f"\n{len(runs)} kills, lease TTL {args.ttl:g}s (target: takeover <= {2 * args.ttl:g}s)")
    print(f"takeover (kill -> first state change by the other conductor): median {summary['takeover_median_s']:.2f}s, "
          f"max {summary['takeover_max_s']:.2f}s")
    print(f"claimed  (kill -> owner is the other conductor):              median {summary['claimed_median_s']:.2f}s, "
          f"max {summary['claimed_max_s']:.2f}s")
    print(f"lost: {lost}, ran twice: {twice}, uploads restarted from zero: {restarted_upload}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "runs": runs}, indent=1) + "\n")
    print(f"written: {args.out}")
    return 1 if lost or twice else 0


if __name__ == "__main__":
    sys.exit(main())
