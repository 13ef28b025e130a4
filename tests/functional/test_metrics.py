"""``GET /metrics`` through a real server: the counters move by what was done (an upload, a
download, a state change, a snapshot workflow with the fake virt driver, a reaper kill), the
scrape-time gauges match what the APIs list, access follows ``[metrics]``, and ``--log-format
json`` writes one JSON object per line with the request id and the workflow id."""

from __future__ import annotations

import json
import os
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN_TOKEN, MEMBER_TOKEN, new_image, start_server
from tests.functional.test_compute_snapshot import compute, wait_server, wait_workflow

DATA = os.urandom(1 << 20) + bytes(3 << 20) + os.urandom(1 << 20)     # 5 MiB


def scrape(server, token: str | None = ADMIN_TOKEN) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    resp = httpx.get(server.url + "/metrics", headers={"X-Auth-Token": token} if token else {}, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before, after, name, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture
def cloud(tmp_path):
    server = start_server(tmp_path / "ff", args=["--log-format", "json"],
                          env={"FREEZEFRAME_COMPUTE__DRIVER": "fake", "FREEZEFRAME_CONDUCTOR__SCAN_INTERVAL": "0.5"})
    yield server
    server.stop()


def test_counters_and_gauges_follow_what_was_done(cloud):
    deadline = time.monotonic() + 20     # (serve starts its conductor once the port is bound)
    while value(before := scrape(cloud), "freezeframe_liveness_up") != 1.0:
        assert time.monotonic() < deadline, "the conductor's liveness never showed up"
        time.sleep(0.1)
    assert value(before, "freezeframe_database_up") == 1.0
    with cloud.client() as images:
        base = new_image(images, name="base")
        assert images.put(f"/v2/images/{base['id']}/file", content=DATA,
                          headers={"Content-Type": "application/octet-stream"}).status_code == 204
        assert images.get(f"/v2/images/{base['id']}/file").content == DATA
        assert images.get(f"/v2/images/{base['id']}/file", headers={"Range": "bytes=0-99"}).status_code == 206
    with compute(cloud) as nova:
        resp = nova.post("/servers", json={"server": {"name": "vm1", "imageRef": base["id"], "flavorRef": "1"}})
        assert resp.status_code == 202, resp.text
        server_id = resp.json()["server"]["id"]
        wait_server(nova, server_id, "ACTIVE")
    mid = scrape(cloud)
    # the upload: 5 MiB in, one rate observation; the downloads: the whole image, 100 bytes, and
    # the whole image again for the boot (the compute host fetches it through the image API)
    assert moved(before, mid, "freezeframe_image_bytes_total", direction="upload") == len(DATA)
    assert moved(before, mid, "freezeframe_image_transfer_rate_mb_per_second_count", direction="upload") == 1
    assert moved(before, mid, "freezeframe_image_bytes_total", direction="download") == 2 * len(DATA) + 100
    assert moved(before, mid, "freezeframe_image_transfer_rate_mb_per_second_count", direction="download") == 3
    assert moved(before, mid, "freezeframe_image_transfer_seconds_total", direction="upload") > 0
    # the image's state changes, each counted once, per (from, to)
    assert moved(before, mid, "freezeframe_state_transitions_total", machine="image", **{"from": "queued",
                 "to": "saving"}) == 1
    assert moved(before, mid, "freezeframe_state_transitions_total", machine="image", **{"from": "saving",
                 "to": "active"}) == 1
    assert moved(before, mid, "freezeframe_state_transitions_total", machine="vm_state", **{"from": "building",
                 "to": "active"}) == 1
    assert value(mid, "freezeframe_resources", machine="image", state="active") == 1

    with compute(cloud) as nova:
        resp = nova.post(f"/servers/{server_id}/action", json={"createImage": {"name": "snap"}})
        assert resp.status_code == 202, resp.text
        snap_id, workflow_id = resp.json()["image_id"], resp.headers["x-freezeframe-workflow-id"]
    wf = wait_workflow(cloud, workflow_id, {"IMAGE_ACTIVE", "REVERTED", "FAILED"})
    assert wf["state"] == "IMAGE_ACTIVE", wf
    kind = wf["kind"]
    with cloud.client(ADMIN_TOKEN) as images:
        snap = images.get(f"/v2/images/{snap_id}").json()
        assert images.post(f"/v2/images/{base['id']}/actions/deactivate").status_code == 204
    deadline = time.monotonic() + 10       # (the duration is observed just after the last transition)
    while True:
        after = scrape(cloud)
        if moved(mid, after, "freezeframe_workflow_duration_seconds_count", kind=kind, state="IMAGE_ACTIVE") \
                or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    # the workflow: one claim, no take-over, one duration observed, its upload's bytes for its kind
    assert moved(mid, after, "freezeframe_workflow_duration_seconds_count", kind=kind, state="IMAGE_ACTIVE") == 1
    assert moved(mid, after, "freezeframe_workflow_duration_seconds_sum", kind=kind, state="IMAGE_ACTIVE") > 0
    assert moved(mid, after, "freezeframe_conductor_claims_total") >= 1
    assert moved(before, after, "freezeframe_conductor_takeovers_total") == 0
    assert moved(mid, after, "freezeframe_workflow_bytes_total", kind=kind) == snap["size"] > 0
    assert moved(mid, after, "freezeframe_image_bytes_total", direction="upload") == snap["size"]
    assert moved(mid, after, "freezeframe_state_transitions_total", machine="workflow",
                 **{"from": "PENDING", "to": "LOCAL_SNAPSHOT_STARTED"}) == 1
    assert moved(mid, after, "freezeframe_state_transitions_total", machine="workflow",
                 **{"from": "UPLOAD_COMPLETE", "to": "IMAGE_ACTIVE"}) == 1
    assert moved(mid, after, "freezeframe_state_transitions_total", machine="image",
                 **{"from": "active", "to": "deactivated"}) == 1
    # the gauges: what the database holds now
    assert value(after, "freezeframe_resources", machine="image", state="active") == 1        # the snapshot
    assert value(after, "freezeframe_resources", machine="image", state="deactivated") == 1   # the base
    assert value(after, "freezeframe_workflows", kind=kind, state="IMAGE_ACTIVE") == 1
    assert value(after, "freezeframe_workflow_queue_depth", kind=kind) == 0
    assert value(after, "freezeframe_conductor_running_workflows") == 0

    # JSON log lines: every line one object; request lines carry their request id, the lines
    # the workflow's run wrote carry its id
    lines = [json.loads(line) for line in cloud.log().splitlines() if line.strip()]     # (every line)
    assert lines and all({"time", "level", "logger", "message", "request_id"} <= set(d) for d in lines)
    assert any(d["request_id"].startswith("req-") for d in lines)
    ran = [d for d in lines if d.get("workflow_id") == workflow_id]
    assert any("finished" in d["message"] for d in ran), ran[-5:]


def test_access_needs_an_admin_by_default(cloud):
    assert httpx.get(cloud.url + "/metrics").status_code == 401
    resp = httpx.get(cloud.url + "/metrics", headers={"X-Auth-Token": MEMBER_TOKEN})
    assert resp.status_code == 403 and "freezeframe:metrics:scrape" in resp.text
    assert httpx.post(cloud.url + "/metrics", headers={"X-Auth-Token": ADMIN_TOKEN}).status_code == 405
    scrape(cloud)


def test_public_metrics_and_the_reaper(tmp_path):
    server = start_server(tmp_path / "ff", env={"FREEZEFRAME_METRICS__PUBLIC": "true",
                                                "FREEZEFRAME_REAPER__INTERVAL": "0.2",
                                                "FREEZEFRAME_REAPER__QUEUED_TIMEOUT": "0.5"})
    try:
        before = scrape(server, token=None)        # no token: public = true
        with server.client() as images:
            image = new_image(images)
            deadline = time.monotonic() + 20
            while images.get(f"/v2/images/{image['id']}").json()["status"] != "killed":
                assert time.monotonic() < deadline, "the reaper did not kill the queued image"
                time.sleep(0.1)
        after = scrape(server, token=None)
        assert moved(before, after, "freezeframe_reaper_actions_total", reaper="image", action="killed_queued") == 1
        assert moved(before, after, "freezeframe_state_transitions_total", machine="image",
                     **{"from": "queued", "to": "killed"}) == 1
        assert value(after, "freezeframe_resources", machine="image", state="killed") == 1
    finally:
        server.stop()


def test_metrics_can_be_switched_off(tmp_path):
    server = start_server(tmp_path / "ff", env={"FREEZEFRAME_METRICS__ENABLED": "false"})
    try:
        assert httpx.get(server.url + "/metrics", headers={"X-Auth-Token": ADMIN_TOKEN}).status_code == 404
    finally:
        server.stop()
