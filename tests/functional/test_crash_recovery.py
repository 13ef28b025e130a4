"""The crash matrix: kill -9 the serve process (API + conductor) while a snapshot is in a given
state, restart it, and check that every run ends consistent: the flow resumes from its last
completed step, the upload resumes from the last byte the image service kept, the server ends
with task_state None and vm_state as before, and the image is active with the right data."""

import hashlib
import os
import signal
import time

import httpx
import pytest

from tests.conftest import start_server
from tests.functional.test_compute_snapshot import (boot, compute, snapshot, snapshot_data, wait_server,
                                                     wait_workflow)

ENV = {
    "FREEZEFRAME_CONDUCTOR__SCAN_INTERVAL": "0.5",
    "FREEZEFRAME_TESTING__FAKE_READ_DELAY": "0.05",          # a 32 MiB snapshot streams in ~0.5 s
    "FREEZEFRAME_IMAGES__CHUNK_SIZE": str(1 << 20),
    "FREEZEFRAME_CONDUCTOR__UPLOAD_CHUNK": str(4 << 20),
}
CHUNK = 4 << 20                 # the upload's parts: each is kept by the image service before the next
STATES = ["PENDING", "LOCAL_SNAPSHOT_STARTED", "LOCAL_SNAPSHOT_COMPLETE", "UPLOAD_BEGIN", "UPLOAD_10_COMPLETE",
          "UPLOAD_50_COMPLETE", "UPLOAD_80_COMPLETE", "UPLOAD_COMPLETE", "IMAGE_ACTIVE"]


def workflow(server, workflow_id):
    return httpx.get(f"{server.url}/v1/workflows/{workflow_id}",
                     headers={"X-Auth-Token": server.member_token}).json()["workflow"]


def leftovers(data_dir, workflow_id) -> list[str]:
    """Anything a finished snapshot must not leave: its workdir, partial image files."""
    found = [str(p) for p in (data_dir / "instances" / "_snapshots").glob(f"{workflow_id}*")]
    return found + [str(p) for p in (data_dir / "images").rglob("*") if p.is_file() and "." in p.name]


@pytest.mark.parametrize("state", STATES)
def test_kill_9_in_every_state_then_resume(tmp_path, state):
    """SIGKILL the serve process (API + image service + conductor) right after the workflow
    entered ``state`` (fault injection: deterministic, not a race), restart it, and the snapshot
    ends consistent — resumed from its last completed step, the upload from the last byte kept."""
    data = os.urandom(32 << 20)
    server = start_server(tmp_path / "ff", env={**ENV, "FREEZEFRAME_TESTING__FAULT_KILL_AT": state})
    try:
        server_id, _, _ = boot(server, tmp_path, data)
        image_id, workflow_id = snapshot(server, server_id, "crashy")
        assert server.process.wait(60) == -signal.SIGKILL
        assert f"killing this process (SIGKILL) in state {state}" in server.log()
    finally:
        server.stop(signal.SIGKILL)

    restarted = start_server(tmp_path / "ff", env=ENV)
    try:
        wf = wait_workflow(restarted, workflow_id, {"IMAGE_ACTIVE", "REVERTED", "CANCELLED"}, timeout=90)
        assert wf["state"] == "IMAGE_ACTIVE", wf
        history = workflow(restarted, workflow_id)["history"]
        states = [h["state"] for h in history]
        assert state in states or state == "PENDING"      # (the history starts at the first move)
        if state != "IMAGE_ACTIVE":
            assert "resuming flow" in restarted.log()
        if state.startswith("UPLOAD_") and state[7:-9].isdigit():
            # The upload resumed where the image service stopped keeping bytes: what had been
            # committed was not sent again, and what was lost in flight is at most one chunk.
            handed = int(next(h for h in history if h["state"] == state)["detail"].split()[0])
            done = next(h for h in history if h["state"] == "UPLOAD_COMPLETE")
            resumed_at = int(done["detail"].rsplit(" ", 1)[1])
            print(f"\n{state}: {handed} bytes sent before the kill, resumed at {resumed_at}: "
                  f"{handed - resumed_at} bytes sent again")
            assert resumed_at <= handed and handed - resumed_at <= CHUNK
            if handed > CHUNK:
                assert resumed_at > 0
        with restarted.client() as images:
            image = images.get(f"/v2/images/{image_id}").json()
            assert image["status"] == "active" and image["disk_format"] == "qcow2"
            deadline = time.monotonic() + 10       # published on the image just after the move
            while image["os_freezeframe_workflow_state"] != "IMAGE_ACTIVE" and time.monotonic() < deadline:
                time.sleep(0.05)
                image = images.get(f"/v2/images/{image_id}").json()
            assert image["os_freezeframe_workflow_state"] == "IMAGE_ACTIVE"
        assert hashlib.sha256(snapshot_data(restarted, image_id, tmp_path)).digest() == hashlib.sha256(data).digest()
        with compute(restarted) as nova:
            shown = wait_server(nova, server_id, "ACTIVE")
            assert shown["OS-EXT-STS:vm_state"] == "active" and shown["OS-EXT-STS:task_state"] is None
        assert leftovers(restarted.data_dir, workflow_id) == []
    finally:
        restarted.stop()


def test_kill_9_while_pending_then_a_conductor_runs_it(tmp_path):
    """Accepted but never started (the API's process died before any conductor took it): the
    image stays queued with its owning workflow alive-or-pending, and the next conductor runs it."""
    data = os.urandom(4 << 20)
    server = start_server(tmp_path / "ff", env={**ENV, "FREEZEFRAME_CONDUCTOR__ENABLED": "false"})
    try:
        server_id, _, _ = boot(server, tmp_path, data)
        image_id, workflow_id = snapshot(server, server_id, "pending")
        wf = workflow(server, workflow_id)
        assert wf["state"] == "PENDING" and wf["owner"] is None
        with server.client() as images:
            assert images.get(f"/v2/images/{image_id}").json()["status"] == "queued"
    finally:
        server.stop(signal.SIGKILL)
    restarted = start_server(tmp_path / "ff", env=ENV)
    try:
        wf = wait_workflow(restarted, workflow_id, {"IMAGE_ACTIVE", "REVERTED"}, timeout=60)
        assert wf["state"] == "IMAGE_ACTIVE", wf
        with restarted.client() as images:
            assert images.get(f"/v2/images/{image_id}").json()["status"] == "active"
        with compute(restarted) as nova:
            assert wait_server(nova, server_id, "ACTIVE")["OS-EXT-STS:task_state"] is None
    finally:
        restarted.stop()
