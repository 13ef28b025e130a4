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
    "FREEZEFRAME_CONDUCTOR__UPLOAD_RATE": str(8 << 20),     # a 32 MiB snapshot uploads in ~4 s
    "FREEZEFRAME_COMPUTE__FAKE_COPY_DELAY": "0.05",          # the local copy takes ~2 s
    "FREEZEFRAME_IMAGES__CHUNK_SIZE": str(1 << 20),
}


def workflow(server, workflow_id):
    return httpx.get(f"{server.url}/v1/workflows/{workflow_id}",
                     headers={"X-Auth-Token": server.member_token}).json()["workflow"]


@pytest.mark.parametrize("crash_in", ["LOCAL_SNAPSHOT_STARTED", "UPLOAD_"])
def test_kill_9_then_resume(tmp_path, crash_in):
    data = os.urandom(32 << 20)
    server = start_server(tmp_path / "ff", env=ENV)
    try:
        server_id, _, _ = boot(server, tmp_path, data)
        image_id, workflow_id = snapshot(server, server_id, "crashy")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = workflow(server, workflow_id)["state"]
            if state.startswith(crash_in) and (crash_in != "UPLOAD_" or state not in ("UPLOAD_BEGIN", "UPLOAD_COMPLETE")):
                break
            time.sleep(0.02)
        assert state.startswith(crash_in), state
        if crash_in == "UPLOAD_":
            time.sleep(0.5)
        server.stop(signal.SIGKILL)
    finally:
        server.stop(signal.SIGKILL)

    restarted = start_server(tmp_path / "ff", env=ENV)
    try:
        wf = wait_workflow(restarted, workflow_id, {"IMAGE_ACTIVE", "REVERTED", "CANCELLED"}, timeout=90)
        assert wf["state"] == "IMAGE_ACTIVE", wf
        history = workflow(restarted, workflow_id)["history"]
        assert "resuming flow" in restarted.log()
        if crash_in == "UPLOAD_":
            done = next(h for h in history if h["state"] == "UPLOAD_COMPLETE")
            resumed_at = int(done["detail"].rsplit(" ", 1)[1])
            assert resumed_at > 0, done           # committed bytes were not sent again
        with restarted.client() as images:
            assert images.get(f"/v2/images/{image_id}").json()["status"] == "active"
        assert hashlib.sha256(snapshot_data(restarted, image_id, tmp_path)).digest() == hashlib.sha256(data).digest()
        with compute(restarted) as nova:
            shown = wait_server(nova, server_id, "ACTIVE")
            assert shown["OS-EXT-STS:vm_state"] == "active"
        assert not (restarted.data_dir / "instances" / "_snapshots" / workflow_id).exists()
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
