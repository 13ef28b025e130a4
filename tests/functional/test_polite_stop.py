"""A polite stop is a pause: SIGINT or SIGTERM of ``serve`` (API + conductor) or of a separate
``freezeframe conductor`` while a snapshot is in a given state, then a restart (or another
conductor), ends exactly as the kill -9 matrix does (``test_crash_recovery.py``): image active
with every byte of the disk, server task_state None, nothing left over — and nothing in the
workflow's history says FAILED or REVERTED, because an interrupted flow is not a failed one.

Each state is made to last with a slow-down knob — the fake driver's copy delay for the point
in time, the conductor's upload rate for the upload, and for the states between two steps the
test-only ``testing.fault_pause_at`` (an interruptible wait where ``fault_kill_at`` would
kill) — and the test waits for it by polling the workflow API.

Also here: a revert that fails is recorded as not done and retried; reconcile repairs a server
left in a transitional task_state; os-resetState; the CLI's ``--wait`` rides through a restart.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import start_server
from tests.functional.test_cli_image import subprocess_env
from tests.functional.test_compute_snapshot import boot, compute, snapshot, snapshot_data, wait_server
from tests.functional.test_conductor_takeover import start_conductor
from tests.functional.test_crash_recovery import leftovers, workflow

ENV = {
    "FREEZEFRAME_CONDUCTOR__SCAN_INTERVAL": "0.3",
    "FREEZEFRAME_IMAGES__CHUNK_SIZE": str(1 << 20),
    "FREEZEFRAME_CONDUCTOR__UPLOAD_CHUNK": str(1 << 20),     # 8+ parts: a stop mid-upload cuts one
}
DISK = 8 << 20
RUNNING = ["PENDING", "LOCAL_SNAPSHOT_STARTED", "LOCAL_SNAPSHOT_COMPLETE", "UPLOAD_BEGIN", "UPLOAD_30_COMPLETE",
           "UPLOAD_COMPLETE"]
# What makes each state last long enough to be stopped in.
KNOBS = {
    "PENDING": {"FREEZEFRAME_TESTING__FAULT_PAUSE_AT": "PENDING"},
    # the point in time takes 0.25 s per MiB of disk: the stop waits for the driver call, then
    # the step stops at its next interruption point
    "LOCAL_SNAPSHOT_STARTED": {"FREEZEFRAME_TESTING__FAKE_COPY_DELAY": "0.25"},
    "LOCAL_SNAPSHOT_COMPLETE": {"FREEZEFRAME_TESTING__FAULT_PAUSE_AT": "LOCAL_SNAPSHOT_COMPLETE"},
    # 512 KiB/s: UPLOAD_BEGIN lasts ~1.7 s, and the stop lands in the bandwidth limit's wait,
    # in the middle of a part
    "UPLOAD_BEGIN": {"FREEZEFRAME_CONDUCTOR__UPLOAD_RATE": str(512 << 10)},
    # paused in the upload's progress callback: in the middle of a part too
    "UPLOAD_30_COMPLETE": {"FREEZEFRAME_TESTING__FAULT_PAUSE_AT": "UPLOAD_30_COMPLETE"},
    "UPLOAD_COMPLETE": {"FREEZEFRAME_TESTING__FAULT_PAUSE_AT": "UPLOAD_COMPLETE"},
}
SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}
PAUSED = re.compile(r"workflow (\S+) paused in state (\S+) \(conductor stopping\)")


# A state that lasts a second or two (UPLOAD_BEGIN at 512 KiB/s) may be missed by a poll, or the
# stop land a little later, on a busy machine: the next ones are as good (mid-part all the same).
ALSO = {"UPLOAD_BEGIN": ("UPLOAD_10_COMPLETE", "UPLOAD_20_COMPLETE", "UPLOAD_30_COMPLETE")}


def wait_state(server, workflow_id, state, log_path, timeout=60):
    """Poll the workflow API until the workflow is in ``state`` (or one of ALSO[state]), claimed
    by a conductor — and, where a pause makes the state last, until the flow pauses there (its
    conductor's log says so: PENDING is a workflow's state before any conductor runs it)."""
    paused = f"pausing in state {state}" if "FAULT_PAUSE_AT" in str(KNOBS[state]) else ""
    deadline = time.monotonic() + timeout
    wf = None
    while time.monotonic() < deadline:
        wf = workflow(server, workflow_id)
        assert wf["state"] not in ("FAILED", "REVERTED", "CANCELLED", "IMAGE_ACTIVE"), wf
        if wf["state"] in (state, *ALSO.get(state, ())) and wf["owner"] and paused in log_path.read_text():
            return wf
        time.sleep(0.02)
    raise AssertionError(f"workflow {workflow_id} never reached {state}: {wf}")


def paused_state(log: str, workflow_id: str) -> str:
    found = [m.group(2) for m in PAUSED.finditer(log) if m.group(1) == workflow_id]
    assert found, log[-4000:]
    return found[-1]


def assert_ended_as_after_kill_9(server, tmp_path, server_id, image_id, workflow_id, data):
    """The kill -9 matrix's end state, and a history without FAILED/REVERTED."""
    wf = wait_workflow_end(server, workflow_id)
    assert wf["state"] == "IMAGE_ACTIVE", wf
    states = [h["state"] for h in workflow(server, workflow_id)["history"]]
    assert "FAILED" not in states and "REVERTED" not in states, states
    assert states[-2:] == ["UPLOAD_COMPLETE", "IMAGE_ACTIVE"], states
    with server.client() as images:
        image = images.get(f"/v2/images/{image_id}").json()
        assert image["status"] == "active" and image["disk_format"] == "qcow2", image
    assert hashlib.sha256(snapshot_data(server, image_id, tmp_path)).digest() == hashlib.sha256(data).digest()
    with compute(server) as nova:
        shown = wait_server(nova, server_id, "ACTIVE")
        assert shown["OS-EXT-STS:vm_state"] == "active" and shown["OS-EXT-STS:task_state"] is None
    assert leftovers(server.data_dir, workflow_id) == []
    return wf


def wait_workflow_end(server, workflow_id, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wf = workflow(server, workflow_id)
        if wf["state"] in ("IMAGE_ACTIVE", "REVERTED", "CANCELLED"):
            return wf
        time.sleep(0.1)
    raise AssertionError(f"workflow {workflow_id} did not end: {wf}")


def cases(topology: str, first: str):
    """Every running state, the signals alternating (``first`` for the first state): together
    the two topologies stop each state with each signal."""
    other = "SIGINT" if first == "SIGTERM" else "SIGTERM"
    return [pytest.param(state, first if i % 2 == 0 else other, id=f"{topology}-{state}-"
                         f"{first if i % 2 == 0 else other}") for i, state in enumerate(RUNNING)]


@pytest.mark.parametrize("state,sig", cases("serve", "SIGTERM"))
def test_stop_serve_in_every_state_then_restart(tmp_path, state, sig):
    """SIGTERM/SIGINT the serve process in ``state``: it pauses the flow (not reverted), stops the
    conductor before the HTTP server, exits 0; the restarted serve resumes it to the very end
    state a kill -9 leads to."""
    data = os.urandom(DISK)
    server = start_server(tmp_path / "ff", env={**ENV, **KNOBS[state]})
    try:
        server_id, _, _ = boot(server, tmp_path, data)
        image_id, workflow_id = snapshot(server, server_id, "polite")
        wait_state(server, workflow_id, state, server.log_path)
        server.process.send_signal(SIGNALS[sig])
        assert server.process.wait(60) == 0, server.log()[-3000:]
    finally:
        server.stop(signal.SIGKILL)
    log = server.log()
    assert paused_state(log, workflow_id) in (state, *ALSO.get(state, ()))
    # The conductor paused the flow, released its claim and stopped before the HTTP server did.
    stopped = re.search(r"conductor \S+ stopped", log)
    assert stopped and log.index("paused in state") < stopped.start() < log.index("Shutting down"), log[-3000:]
    assert "revert" not in log.lower(), log[-3000:]

    restarted = start_server(tmp_path / "ff", env=ENV)
    try:
        assert_ended_as_after_kill_9(restarted, tmp_path, server_id, image_id, workflow_id, data)
        log = restarted.log()
        # The port was bound before the conductor started, and so before it resumed anything.
        alive = re.search(r"conductor \S+ alive in", log)
        assert alive and log.index("Uvicorn running on") < alive.start() < log.index("resuming flow"), log[-3000:]
    finally:
        restarted.stop()


@pytest.mark.parametrize("state,sig", cases("conductor", "SIGINT"))
def test_stop_conductor_in_every_state_then_another_resumes(tmp_path, state, sig):
    """SIGTERM/SIGINT a separate conductor in ``state``: it exits 0 with the flow paused and its
    claim released (owner None, the state kept, nothing failed); another conductor resumes it."""
    data = os.urandom(DISK)
    server = start_server(tmp_path / "ff", env={**ENV, "FREEZEFRAME_CONDUCTOR__ENABLED": "false"})
    first = second = None
    try:
        server_id, _, _ = boot(server, tmp_path, data)
        first = start_conductor(server, "conductor-a", {**ENV, "FREEZEFRAME_COMPUTE__DRIVER": "fake",
                                                        "FREEZEFRAME_STORE__FSYNC": "false", **KNOBS[state]})
        image_id, workflow_id = snapshot(server, server_id, "polite")
        wait_state(server, workflow_id, state, server.data_dir / "conductor-conductor-a.log")
        first.send_signal(SIGNALS[sig])
        assert first.wait(60) == 0
        log = (server.data_dir / "conductor-conductor-a.log").read_text()
        stopped_in = paused_state(log, workflow_id)
        assert stopped_in in (state, *ALSO.get(state, ()))
        wf = workflow(server, workflow_id)
        assert wf["owner"] is None and wf["state"] == stopped_in and wf["stalled"] is False, wf
        assert "revert" not in log.lower(), log[-3000:]

        second = start_conductor(server, "conductor-b", {**ENV, "FREEZEFRAME_COMPUTE__DRIVER": "fake",
                                                         "FREEZEFRAME_STORE__FSYNC": "false"})
        wf = assert_ended_as_after_kill_9(server, tmp_path, server_id, image_id, workflow_id, data)
        assert wf["owner"] == "conductor-b"
        assert "resuming flow" in (server.data_dir / "conductor-conductor-b.log").read_text()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(20)
        server.stop()


@pytest.mark.parametrize("how", ["grace-period-over", "second-signal"])
def test_a_step_that_cannot_be_interrupted_in_time_ends_like_kill_9(tmp_path, how):
    """The point in time takes 6 s (one driver call, no interruption point). With a grace period
    of 1 s, or a second Ctrl-C during the pause, the stop ends the process as kill -9 would —
    exit status 1, nothing reverted, the claim kept — and the restart resumes the flow."""
    data = os.urandom(DISK)
    env = {**ENV, "FREEZEFRAME_SERVER__GRACEFUL_TIMEOUT": "1" if how == "grace-period-over" else "30"}
    server = start_server(tmp_path / "ff", env={**env, "FREEZEFRAME_TESTING__FAKE_COPY_DELAY": "0.75"})
    try:
        server_id, _, _ = boot(server, tmp_path, data)
        image_id, workflow_id = snapshot(server, server_id, "stubborn")
        wait_state(server, workflow_id, "LOCAL_SNAPSHOT_STARTED", server.log_path)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        if how == "second-signal":
            deadline = time.monotonic() + 10
            while "the conductor pauses its workflows first" not in server.log() and time.monotonic() < deadline:
                time.sleep(0.02)
            server.process.send_signal(signal.SIGINT)
        assert server.process.wait(30) == 1
        assert time.monotonic() - started < 5
    finally:
        server.stop(signal.SIGKILL)
    log = server.log()
    expected = ("could not be interrupted within 1s" if how == "grace-period-over" else
                "SIGINT again while the conductor was pausing its workflows")
    assert f"{expected}: ending the process now, as kill -9 would" in log, log[-3000:]
    assert "revert" not in log.lower() and "released its claim" not in log and "paused in state" not in log

    restarted = start_server(tmp_path / "ff", env=ENV)
    try:
        assert_ended_as_after_kill_9(restarted, tmp_path, server_id, image_id, workflow_id, data)
    finally:
        restarted.stop()


def test_a_revert_that_fails_is_not_done_and_is_retried(tmp_path):
    """The snapshot fails (open_snapshot) and so does its revert (end_snapshot): the workflow
    stays FAILED with 'revert incomplete' — never REVERTED — and the conductor retries; once the
    driver works again (restart without the fault) the retried revert completes: REVERTED, the
    image gone, task_state None, nothing left over."""
    env = {**ENV, "FREEZEFRAME_CONDUCTOR__SCAN_INTERVAL": "0.2"}
    server = start_server(tmp_path / "ff", env={**env, "FREEZEFRAME_TESTING__FAKE_FAIL_ON": "open_snapshot,end_snapshot"})
    try:
        server_id, _, _ = boot(server, tmp_path)
        image_id, workflow_id = snapshot(server, server_id, "doomed")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            wf = workflow(server, workflow_id)
            if wf["state"] == "FAILED" and server.log().count(f"workflow {workflow_id}: its revert could not") >= 3:
                break
            time.sleep(0.1)
        assert wf["state"] == "FAILED", wf
        assert "injected failure at open_snapshot" in wf["failure_reason"]
        assert "revert incomplete" in wf["failure_reason"] and "injected failure at end_snapshot" in wf["failure_reason"]
        assert server.log().count(f"workflow {workflow_id}: its revert could not complete") >= 3    # retried
        history = [(h["state"], h["detail"]) for h in workflow(server, workflow_id)["history"]]
        assert ("FAILED", "revert incomplete: injected failure at end_snapshot") in history
        assert [s for s, _ in history].count("FAILED") == 2, history          # one event per new error
        assert "REVERTED" not in [s for s, _ in history]
        with compute(server) as nova:
            assert nova.get(f"/servers/{server_id}").json()["server"]["OS-EXT-STS:task_state"] is not None
    finally:
        server.stop()

    restarted = start_server(tmp_path / "ff", env=env)
    try:
        wf = wait_workflow_end(restarted, workflow_id, timeout=30)
        assert wf["state"] == "REVERTED", wf
        assert wf["failure_reason"] == "injected failure at open_snapshot", wf
        assert workflow(restarted, workflow_id)["history"][-1]["detail"] == "reverted: cleaned up (revert retried)"
        with restarted.client() as images:
            assert images.get(f"/v2/images/{image_id}").status_code == 404
        with compute(restarted) as nova:
            shown = wait_server(nova, server_id, "ACTIVE")
            assert "injected failure at open_snapshot" in shown["fault"]["message"]
        assert leftovers(restarted.data_dir, workflow_id) == []
    finally:
        restarted.stop()


def test_reconcile_repairs_servers_left_in_a_transitional_task_state(tmp_path):
    """What the old polite stop left (task_state image_uploading, its workflow REVERTED) and a
    spawn cut short by the process's end: repaired by the conductor's reconcile, vm_state from
    the hypervisor; a server whose domain is gone ends ERROR with a fault."""
    server = start_server(tmp_path / "ff", env=ENV)
    try:
        stuck_upload, _, _ = boot(server, tmp_path)
        stuck_spawn, _, _ = boot(server, tmp_path)
        gone, _, _ = boot(server, tmp_path)
        _, workflow_id = snapshot(server, stuck_upload, "old")
        assert wait_workflow_end(server, workflow_id)["state"] == "IMAGE_ACTIVE"
    finally:
        server.stop()
    db = sqlite3.connect(server.data_dir / "freezeframe.db")
    with db:
        db.execute("UPDATE workflows SET state = 'REVERTED' WHERE id = ?", (workflow_id,))
        db.execute("UPDATE instances SET task_state = 'image_uploading' WHERE id = ?", (stuck_upload,))
        db.execute("UPDATE instances SET task_state = 'spawning', vm_state = 'building' WHERE id = ?", (stuck_spawn,))
        db.execute("UPDATE instances SET task_state = 'powering-off', domain_name = 'no-such-domain' WHERE id = ?",
                   (gone,))
    db.close()

    restarted = start_server(tmp_path / "ff", env=ENV)
    try:
        with compute(restarted) as nova:
            for server_id in (stuck_upload, stuck_spawn):
                shown = wait_server(nova, server_id, "ACTIVE", timeout=20)
                assert shown["OS-EXT-STS:vm_state"] == "active" and shown["OS-EXT-STS:task_state"] is None
            shown = wait_server(nova, gone, "ERROR", timeout=20)
            assert "no domain no-such-domain" in shown["fault"]["message"]
            # and a snapshot of the repaired server works again (it was a 409 for ever before)
            resp = nova.post(f"/servers/{stuck_upload}/action", json={"createImage": {"name": "again"}})
            assert resp.status_code == 202, resp.text
            assert wait_workflow_end(restarted, resp.headers["x-freezeframe-workflow-id"])["state"] == "IMAGE_ACTIVE"
        assert restarted.log().count("reconcile: server") >= 3
    finally:
        restarted.stop()


def test_os_reset_state(tmp_path):
    server = start_server(tmp_path / "ff", env=ENV)
    try:
        server_id, _, _ = boot(server, tmp_path)
        with compute(server, server.admin_token) as admin, compute(server) as member:
            url = f"/servers/{server_id}/action"
            assert member.post(url, json={"os-resetState": {"state": "error"}}).status_code == 403
            for bad in ({"state": "deleted"}, {"state": None}, {}, "active", {"state": "error", "x": 1}):
                assert admin.post(url, json={"os-resetState": bad}).status_code == 400, bad
            assert admin.post("/servers/00000000-0000-0000-0000-000000000000/action",
                              json={"os-resetState": {"state": "active"}}).status_code == 404
            with compute(server, server.other_token) as stranger:
                assert stranger.post(url, json={"os-resetState": {"state": "active"}}).status_code == 404
            resp = admin.post(url, json={"os-resetState": {"state": "error"}})
            assert resp.status_code == 202, resp.text
            shown = member.get(f"/servers/{server_id}").json()["server"]
            assert shown["status"] == "ERROR" and shown["OS-EXT-STS:task_state"] is None
            assert admin.post(url, json={"os-resetState": {"state": "active"}}).status_code == 202
            shown = wait_server(member, server_id, "ACTIVE")
            assert shown["OS-EXT-STS:vm_state"] == "active"
    finally:
        server.stop()
    # A task_state nothing will ever clear: the admin's way out.
    db = sqlite3.connect(server.data_dir / "freezeframe.db")
    with db:
        db.execute("UPDATE instances SET task_state = 'image_uploading' WHERE id = ?", (server_id,))
    db.close()
    restarted = start_server(tmp_path / "ff", env={**ENV, "FREEZEFRAME_CONDUCTOR__ENABLED": "false"})
    try:
        with compute(restarted, restarted.admin_token) as admin:
            assert admin.post(f"/servers/{server_id}/action", json={"createImage": {"name": "x"}}).status_code == 409
            assert admin.post(f"/servers/{server_id}/action",
                              json={"os-resetState": {"state": "active"}}).status_code == 202
            shown = admin.get(f"/servers/{server_id}").json()["server"]
            assert shown["OS-EXT-STS:task_state"] is None and shown["status"] == "ACTIVE"
    finally:
        restarted.stop()


def test_cli_wait_rides_through_a_restart(tmp_path):
    """``server image create --wait`` as a separate process; the service is stopped (SIGTERM)
    mid-upload and restarted on the same port a moment later: the CLI says it waits for the
    service, then that it is back, and exits 0 when the image is active."""
    data = os.urandom(DISK)
    server = start_server(tmp_path / "ff", env={**ENV, **KNOBS["UPLOAD_30_COMPLETE"]})
    port = int(server.url.rsplit(":", 1)[1])
    restarted = None
    cli = None
    try:
        server_id, _, _ = boot(server, tmp_path, data)
        env = subprocess_env(tmp_path, OS_IMAGE_URL=server.image_url, OS_TOKEN=server.member_token)
        cli = subprocess.Popen([sys.executable, "-m", "freezeframe", "server", "image", "create", server_id,
                                "--name", "ridden", "--wait", "-f", "json"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = httpx.get(f"{server.url}/v1/workflows", headers={"X-Auth-Token": server.member_token}).json()
            if found["workflows"] and found["workflows"][0]["state"] == "UPLOAD_30_COMPLETE":
                break
            time.sleep(0.05)
        workflow_id = found["workflows"][0]["id"]
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0
        time.sleep(2)                   # the service is away for a while: the CLI keeps waiting
        assert cli.poll() is None, cli.communicate()
        restarted = start_server(tmp_path / "ff", env=ENV, port=port)
        out, err = cli.communicate(timeout=90)
        assert cli.returncode == 0, err
        assert "the service is unavailable" in err and "waiting for it to come back" in err, err
        assert "the service is back" in err, err
        assert '"state": "IMAGE_ACTIVE"' in out and workflow_id in out
    finally:
        if cli is not None and cli.poll() is None:
            cli.kill()
        server.stop(signal.SIGKILL)
        if restarted is not None:
            restarted.stop()
