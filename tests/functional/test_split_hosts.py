"""The split deployment for real (issue 8 §4, §6): network namespaces as hosts — one
``freezeframe api`` (2 workers), compute hosts ``ha`` and ``hb`` (``freezeframe compute --host``,
the fake hypervisor), conductors ``c1`` and ``c2`` on hosts of their own — sharing a private
PostgreSQL and a private Redis on the bridge (these tests kill them; never the machine's own).

A server's host-bound steps go to its host's compute process; the conductor reads the point in
time from there over NBD on TCP with per-export TLS; the image goes to the API host. Polling
only, no fixed sleeps for synchronisation."""

from __future__ import annotations

import os
import time

import httpx
import pytest

# The same workload as the jobboard tests: 32 MiB uploaded at 4 MiB/s (~8 s) in parts of 1 MiB.
from tests.functional.test_jobboard import CHUNK, DISK, ENV, TTL, assert_image, assert_ran_once, upload_percent
from tests.conftest import ADMIN_TOKEN
from tests.netns import HOST_PORT, split
from tests.nova_faults import nova_fault

pytestmark = pytest.mark.timeout(600)


def test_a_conductor_on_another_host_snapshots_a_server_of_host_b_and_another_takes_over(tmp_path):
    with split(tmp_path, lease_ttl=TTL, env=ENV) as d:
        d.start_compute("hb")
        data = os.urandom(DISK)
        server_id = d.boot(data)                   # the only compute host up: hb
        d.start_compute("ha")
        for conductor in ("c1", "c2"):
            d.start_conductor(conductor)
        image_id, workflow_id = d.snapshot(server_id, "split")
        wf = d.wait(workflow_id, lambda w: upload_percent(w) >= 30 and w["owner"])
        assert wf["host"] == "hb", wf
        owner = wf["owner"]
        other = "c2" if owner == "c1" else "c1"
        seen = len(d.workflow(workflow_id)["history"])
        killed = d.kill(owner)

        shown = d.wait(workflow_id, lambda w: len(w["history"]) > seen and w["owner"] == other, every=0.02)
        changed = time.time() - killed
        print(f"\nsplit takeover (lease TTL {TTL:g}s): first state change by {other} {changed:.2f}s after the "
              f"kill -9 of {owner} ({shown['history'][seen]['state']})")
        assert changed <= 2 * TTL, changed

        wf = d.wait_end(workflow_id)
        assert wf["state"] == "IMAGE_ACTIVE" and wf["owner"] == other, wf
        history = assert_ran_once(d, workflow_id)
        handed = max(int(h["detail"].split()[0]) for h in history[:seen] if upload_percent(h) > 0)
        done = next(h for h in history if h["state"] == "UPLOAD_COMPLETE")
        resumed_at = int(done["detail"].rsplit(" ", 1)[1])
        assert 0 < resumed_at and handed - resumed_at <= CHUNK, (handed, resumed_at)     # resumed, not restarted
        assert_image(d, image_id, data)
        # The point in time never left hb as a file: the conductors' hosts hold no snapshot data.
        for conductor in ("c1", "c2"):
            leftovers = [p for p in (tmp_path / conductor).rglob("*") if p.is_file() and p.stat().st_size > 1 << 20]
            assert leftovers == [], leftovers
        # ... and was exported over TLS, then released on hb.
        assert not list((tmp_path / "hb").rglob("export.json"))


def test_kill_9_of_the_compute_process_mid_snapshot_then_restart(tmp_path):
    with split(tmp_path, lease_ttl=TTL, env=ENV) as d:
        d.start_compute("hb")
        data = os.urandom(DISK)
        server_id = d.boot(data)
        idle = d.boot(os.urandom(1 << 20), "idle")
        d.start_conductor("c1")
        image_id, workflow_id = d.snapshot(server_id, "compute-killed")
        d.wait(workflow_id, lambda w: upload_percent(w) >= 20)
        d.kill("hb")
        # Its host goes down in the API's eyes (no heartbeat): a new operation on its server is a
        # clear 409, not a hang.
        deadline = time.monotonic() + 30
        with d.compute() as nova:
            while True:
                resp = nova.post(f"/servers/{idle}/action", json={"os-stop": None})
                if resp.status_code == 409 and "is down" in nova_fault(resp)["message"] or \
                        time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        assert resp.status_code == 409 and "'hb' is down" in nova_fault(resp)["message"], resp.text
        with d.compute() as nova:                 # and nothing changed on that server
            assert nova.get(f"/servers/{idle}").json()["server"]["OS-EXT-STS:task_state"] is None
        # An admin sees why, as in Nova: the host's nova-compute service is down.
        services = httpx.get(f"{d.server.url}/compute/v2.1/os-services", headers={"X-Auth-Token": ADMIN_TOKEN}).json()
        assert [(s["host"], s["state"]) for s in services["services"]] == [("hb", "down")], services
        # The upload goes on (the conductor reads from hb's qemu-nbd, which outlived the compute
        # process); the step after it needs hb's host API: it pauses, giving the workflow back.
        d.wait(workflow_id, lambda w: w["state"] == "UPLOAD_COMPLETE" and w["owner"] is None, timeout=120)
        d.start_compute("hb")
        wf = d.wait_end(workflow_id, timeout=180)
        print(f"\nkill -9 of the compute process mid-upload, restarted: the workflow ended {wf['state']}")
        with d.compute() as nova:
            shown = nova.get(f"/servers/{server_id}").json()["server"]
        assert shown["status"] == "ACTIVE" and shown["OS-EXT-STS:task_state"] is None, shown
        # The point in time outlived the compute process (its export is qemu-nbd's, the fake's
        # copy a file): the steps that needed the host paused while it was down (nothing
        # reverted) and went on once it was back.
        assert wf["state"] == "IMAGE_ACTIVE", wf
        assert_ran_once(d, workflow_id)
        assert_image(d, image_id, data)
        assert "paused: " in d.log_text("c1") and "resumed by a conductor that reaches the host" in d.log_text("c1")
        assert not list((tmp_path / "hb").rglob("export.json"))     # nothing left exported


def test_a_conductor_never_claims_work_for_a_host_it_cannot_reach(tmp_path):
    with split(tmp_path, lease_ttl=TTL) as d:
        d.start_compute("hb")
        on_b = d.boot(os.urandom(4 << 20), "on-b")
        d.start_compute("ha")
        on_a = d.boot(os.urandom(4 << 20), "on-a")
        d.lab.cut("c2", "hb")                     # c2 cannot reach hb (but reaches ha, the database, Redis)
        d.start_conductor("c2")
        _, wf_b = d.snapshot(on_b, "waits")
        image_a, wf_a = d.snapshot(on_a, "runs")
        done_a = d.wait_end(wf_a)
        assert done_a["state"] == "IMAGE_ACTIVE" and done_a["owner"] == "c2", done_a
        waiting = d.workflow(wf_b)
        assert waiting["state"] == "PENDING" and waiting["owner"] is None, waiting
        d.start_conductor("c1")
        done_b = d.wait_end(wf_b)
        assert done_b["state"] == "IMAGE_ACTIVE" and done_b["owner"] == "c1" and done_b["host"] == "hb", done_b
        assert "does not answer from here" in d.log_text("c2")


def test_restart_of_redis_during_a_split_snapshot_loses_nothing(tmp_path):
    with split(tmp_path, lease_ttl=TTL, env=ENV) as d:
        d.start_compute("hb")
        data = os.urandom(DISK)
        server_id = d.boot(data)
        d.start_conductor("c1")
        d.start_conductor("c2")
        image_id, workflow_id = d.snapshot(server_id, "redis-restart")
        owner = d.wait(workflow_id, lambda w: upload_percent(w) >= 20 and w["owner"])["owner"]
        d.redis.restart()
        wf = d.wait_end(workflow_id)
        assert wf["state"] == "IMAGE_ACTIVE" and wf["owner"] == owner, wf
        assert_ran_once(d, workflow_id)
        assert d.fence(workflow_id) == 1
        assert_image(d, image_id, data)


def test_the_host_api_answers_only_services(tmp_path):
    with split(tmp_path, hosts=("api", "hb")) as d:
        d.start_compute("hb")
        url = f"http://{d.lab.hosts['hb']}:{HOST_PORT}/host/v1"
        from tests.conftest import MEMBER_TOKEN, SERVICE_TOKEN
        assert httpx.get(f"{url}/domains").status_code == 401
        assert httpx.get(f"{url}/domains", headers={"X-Auth-Token": MEMBER_TOKEN}).status_code == 403
        ok = httpx.get(f"{url}/domains", headers={"X-Auth-Token": SERVICE_TOKEN})
        assert ok.status_code == 200 and ok.json() == {"domains": []}
        bad = httpx.put(f"{url}/snapshots/../../etc", headers={"X-Auth-Token": SERVICE_TOKEN}, json={})
        assert bad.status_code in (400, 404)
