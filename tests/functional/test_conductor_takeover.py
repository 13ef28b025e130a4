"""Scale-out: API and conductors as separate processes; a dead conductor's job is resumed by a
live one (seed 000: liveness through the coordination backend)."""

import os
import signal
import subprocess
import sys
import time

import httpx

from tests.conftest import start_server, switch_on_testing
from tests.functional.test_compute_snapshot import boot, compute, snapshot, wait_server, wait_workflow


def start_conductor(server, conductor_id, env):
    log = open(server.data_dir / f"conductor-{conductor_id}.log", "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "freezeframe", "conductor", "--data-dir", str(server.data_dir),
         "--image-url", server.image_url, "--tokens-file", str(server.data_dir / "test-tokens.json"),
         "--id", conductor_id],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **switch_on_testing(env), **env})


def test_live_conductor_takes_over_from_a_dead_one(tmp_path):
    env = {"FREEZEFRAME_COMPUTE__DRIVER": "fake", "FREEZEFRAME_TESTING__FAKE_COPY_DELAY": "0.1",
           "FREEZEFRAME_CONDUCTOR__SCAN_INTERVAL": "0.3", "FREEZEFRAME_STORE__FSYNC": "false"}
    server = start_server(tmp_path / "ff", env={**env, "FREEZEFRAME_CONDUCTOR__ENABLED": "false"})
    first = second = None
    try:
        server_id, _, _ = boot(server, tmp_path)
        first = start_conductor(server, "conductor-a", env)
        image_id, workflow_id = snapshot(server, server_id, "handover")
        wf = wait_workflow(server, workflow_id, {"LOCAL_SNAPSHOT_STARTED"}, timeout=30)
        assert wf["owner"] == "conductor-a" and wf["owner_alive"] is True
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            wf = httpx.get(f"{server.url}/v1/workflows/{workflow_id}",
                           headers={"X-Auth-Token": server.member_token}).json()["workflow"]
            if not wf["owner_alive"]:
                break
            time.sleep(0.1)
        assert wf["owner_alive"] is False and wf["stalled"] is True   # visible to users
        second = start_conductor(server, "conductor-b", env)
        wf = wait_workflow(server, workflow_id, {"IMAGE_ACTIVE", "REVERTED"}, timeout=60)
        assert wf["state"] == "IMAGE_ACTIVE" and wf["owner"] == "conductor-b", wf
        with server.client() as images:
            assert images.get(f"/v2/images/{image_id}").json()["status"] == "active"
        with compute(server) as nova:
            assert wait_server(nova, server_id, "ACTIVE")["OS-EXT-STS:task_state"] is None
        log = (server.data_dir / "conductor-conductor-b.log").read_text()
        assert "took over workflow" in log
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(20)
        server.stop()
