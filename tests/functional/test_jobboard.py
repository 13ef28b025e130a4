"""Many conductors on taskflow's Redis jobboard, PostgreSQL for the truth (issue 8 §5): a dead
conductor's snapshot is taken over by a live one within 2x the lease TTL and finished — its upload
resumed, not restarted — and a Redis restart loses nothing; nothing ever runs twice.

Real processes: a private ``redis-server`` (this test kills it; never the machine's own), a
throw-away PostgreSQL database, ``serve`` with its conductor disabled, two ``freezeframe
conductor`` processes. Synchronisation by polling the workflow API only."""

from __future__ import annotations

import hashlib
import os
import time

import httpx
import pytest

from tests.cluster import cluster

TTL = 3.0
# 32 MiB at 4 MiB/s: each 10 % of the upload takes ~0.8 s, the upload ~8 s; parts of 1 MiB.
ENV = {"FREEZEFRAME_CONDUCTOR__UPLOAD_RATE": str(4 << 20), "FREEZEFRAME_CONDUCTOR__UPLOAD_CHUNK": str(1 << 20),
       "FREEZEFRAME_IMAGES__CHUNK_SIZE": str(1 << 20)}
DISK = 32 << 20
CHUNK = 1 << 20

pytestmark = pytest.mark.timeout(600)


def upload_percent(wf: dict) -> int:
    state = wf["state"]
    return int(state[7:-9]) if state.startswith("UPLOAD_") and state[7:-9].isdigit() else -1


def assert_ran_once(c, workflow_id: str) -> list[dict]:
    """Every state of the history entered exactly once (a step run twice would repeat one)."""
    history = c.workflow(workflow_id)["history"]
    states = [h["state"] for h in history]
    assert len(states) == len(set(states)), states
    assert states[:3] == ["LOCAL_SNAPSHOT_STARTED", "LOCAL_SNAPSHOT_COMPLETE", "UPLOAD_BEGIN"], states
    assert states[-2:] == ["UPLOAD_COMPLETE", "IMAGE_ACTIVE"], states
    return history


def assert_image(c, image_id: str, data: bytes) -> None:
    with c.server.client() as images:
        image = images.get(f"/v2/images/{image_id}").json()
    assert image["status"] == "active" and image["os_freezeframe_workflow_state"] == "IMAGE_ACTIVE", image
    assert hashlib.sha256(c.image_data(image_id)).hexdigest() == hashlib.sha256(data).hexdigest()


def test_kill_9_mid_upload_another_conductor_finishes_it(tmp_path):
    with cluster(tmp_path, lease_ttl=TTL, env=ENV) as c:
        data = os.urandom(DISK)
        server_id = c.boot(data)
        c.start_conductors()
        image_id, workflow_id = c.snapshot(server_id, "taken-over")
        wf = c.wait(workflow_id, lambda w: upload_percent(w) >= 30 and w["owner"])
        owner = wf["owner"]
        other = next(name for name in c.conductors if name != owner)
        seen = len(c.workflow(workflow_id)["history"])
        killed = c.kill(owner)

        # Polled every 20 ms: the other conductor's claim, then its first state change.
        c.wait(workflow_id, lambda w: w["owner"] == other, every=0.02)
        claimed = time.time() - killed
        shown = c.wait(workflow_id, lambda w: len(w["history"]) > seen, every=0.02)
        changed = time.time() - killed
        print(f"\ntakeover (lease TTL {TTL:g}s): claimed by {other} {claimed:.2f}s after the kill -9 of {owner}, "
              f"first state change by it {changed:.2f}s after ({shown['history'][seen]['state']})")
        assert changed <= 2 * TTL, (claimed, changed)

        wf = c.wait_end(workflow_id)
        assert wf["state"] == "IMAGE_ACTIVE" and wf["owner"] == other and wf["owner_alive"] is True, wf
        history = assert_ran_once(c, workflow_id)
        assert c.fence(workflow_id) == 2              # claimed twice: by the dead one, by the other
        # The upload resumed where the image service stopped keeping bytes, not from zero.
        handed = max(int(h["detail"].split()[0]) for h in history[:seen] if upload_percent(h) > 0)   # before the kill
        done = next(h for h in history if h["state"] == "UPLOAD_COMPLETE")
        resumed_at = int(done["detail"].rsplit(" ", 1)[1])
        assert 0 < resumed_at and handed - resumed_at <= CHUNK, (handed, resumed_at)
        assert_image(c, image_id, data)
        with c.compute() as nova:
            shown = nova.get(f"/servers/{server_id}").json()["server"]
            assert shown["status"] == "ACTIVE" and shown["OS-EXT-STS:task_state"] is None
            request_id = nova.get(f"/servers/{server_id}/os-instance-actions").json()["instanceActions"][0]["request_id"]
            events = nova.get(f"/servers/{server_id}/os-instance-actions/{request_id}",
                              headers={"X-OpenStack-Nova-API-Version": "2.84"}).json()["instanceAction"]["events"]
        assert sorted(e["event"] for e in events) == ["conductor_snapshot_instance", "local_snapshot", "upload_image"]
        assert all(e["result"] == "Success" for e in events)
        assert "took over workflow" in c.conductor_log(other)


def test_redis_restart_loses_nothing_and_runs_nothing_twice(tmp_path):
    with cluster(tmp_path, lease_ttl=TTL, env=ENV) as c:
        data = os.urandom(DISK)
        running_server, waiting_server = c.boot(data, "vm1"), c.boot(data[::-1], "vm2")
        c.start_conductors()
        image_id, workflow_id = c.snapshot(running_server, "through-a-restart")
        wf = c.wait(workflow_id, lambda w: upload_percent(w) >= 20 and w["owner"])
        owner = wf["owner"]

        # Redis dies with everything it held (postings, claims, liveness locks) ...
        c.redis.kill()
        # ... a snapshot accepted meanwhile is recorded (the database is the truth) ...
        image2, workflow2 = c.snapshot(waiting_server, "accepted-while-redis-was-down")
        time.sleep(0.5)       # (Redis stays away a moment: the running snapshot goes on without it)
        restarted = time.time()
        c.redis.start()
        # ... and after the restart the liveness of the owner is seen again, the running snapshot
        # ends on its owner, and the one accepted meanwhile is posted again and run.
        wf = c.wait(workflow_id, lambda w: w["owner_alive"] is True or w["state"] == "IMAGE_ACTIVE")
        wf = c.wait_end(workflow_id)
        assert wf["state"] == "IMAGE_ACTIVE" and wf["owner"] == owner, wf
        assert_ran_once(c, workflow_id)
        assert c.fence(workflow_id) == 1              # never taken from its live owner
        assert_image(c, image_id, data)

        wf2 = c.wait_end(workflow2)
        print(f"\nRedis restart: the snapshot accepted while it was down ended {wf2['state']} "
              f"{time.time() - restarted:.1f}s after the restart")
        assert wf2["state"] == "IMAGE_ACTIVE", wf2
        assert_ran_once(c, workflow2)
        assert c.fence(workflow2) == 1
        assert_image(c, image2, data[::-1])
        for name in c.conductors:
            assert c.conductors[name].poll() is None, c.conductor_log(name)[-3000:]
        with httpx.Client(base_url=c.server.url, headers=c.headers) as api:
            listed = api.get("/v1/workflows").json()["workflows"]
        assert {w["id"]: w["state"] for w in listed} == {workflow_id: "IMAGE_ACTIVE", workflow2: "IMAGE_ACTIVE"}
