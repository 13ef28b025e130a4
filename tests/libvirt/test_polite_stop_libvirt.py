"""A polite stop on the real hypervisor: SIGTERM the serve process (API, image service, conductor
and the embedded libvirt) while it snapshots the tiny guest — with the point in time held, and
in the middle of the upload — then restart it. The flow was paused, not reverted: the restart
resumes it exactly as after kill -9 (``test_crash_libvirt.py``) — libvirt reconnects to the
running QEMU and its pull-mode backup job, the upload goes on from the last byte the image
service kept — and it ends consistent: image active with a clean filesystem and every byte of
the disk, server ACTIVE, no job or export left, no FAILED or REVERTED in the history."""

import os
import shutil
import signal
import subprocess
import time

import httpx
import pytest

from tests.functional.test_compute_snapshot import compute, wait_server, wait_workflow
from tests.libvirt.test_libvirt_snapshot import libvirt_unavailable, ticks
from tests.libvirt.test_server_snapshot_e2e import (cloud_dir, delete_servers, fetch_raw, register_guest,
                                                    snapshot_when_agent_answers, start_cloud)

pytestmark = [pytest.mark.libvirt]
DATA_FS = 64 << 20          # the tiny guest's ext4 data disk; the padding follows it


def wait_paused_in(server, workflow_id, state, timeout=120):
    """Until the workflow is in ``state`` and its flow waits there (fault_pause_at)."""
    deadline = time.monotonic() + timeout
    wf = None
    while time.monotonic() < deadline:
        wf = httpx.get(f"{server.url}/v1/workflows/{workflow_id}",
                       headers={"X-Auth-Token": server.member_token}).json()["workflow"]
        assert wf["state"] not in ("FAILED", "REVERTED", "CANCELLED", "IMAGE_ACTIVE"), wf
        if wf["state"] == state and f"pausing in state {state}" in server.log():
            return wf
        time.sleep(0.1)
    raise AssertionError(f"workflow {workflow_id} never paused in {state}: {wf}")


@pytest.mark.timeout(420)
@pytest.mark.parametrize("state", ["LOCAL_SNAPSHOT_COMPLETE", "UPLOAD_50_COMPLETE"])
def test_sigterm_mid_snapshot_pauses_and_resumes_on_libvirt(tmp_path, state):
    reason = libvirt_unavailable()
    if reason:
        pytest.skip(reason)
    data_dir = cloud_dir()
    padding = os.urandom(32 << 20)          # 8 reads of 4 MiB: the upload has a middle to stop in
    parts = {"FREEZEFRAME_CONDUCTOR__UPLOAD_CHUNK": str(8 << 20)}
    server = start_cloud(data_dir, {"FREEZEFRAME_TESTING__FAULT_PAUSE_AT": state, **parts})
    restarted = None
    try:
        image_ref = register_guest(server, padding)
        with compute(server) as nova:
            resp = nova.post("/servers", json={"server": {"name": "polite", "imageRef": image_ref, "flavorRef": "1"}})
            assert resp.status_code == 202, resp.text
            server_id = resp.json()["server"]["id"]
            wait_server(nova, server_id, "ACTIVE", timeout=120)
        time.sleep(5)               # let the guest boot and its writer put ticks on the disk
        snap_id, workflow_id = snapshot_when_agent_answers(server, server_id, "polite-snap")
        wait_paused_in(server, workflow_id, state)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(120) == 0, server.log()[-3000:]
        log = server.log()
        assert f"workflow {workflow_id} paused in state {state}" in log
        assert "revert" not in log.lower()

        restarted = start_cloud(data_dir, parts)
        wf = wait_workflow(restarted, workflow_id, {"IMAGE_ACTIVE", "REVERTED", "CANCELLED"}, timeout=180)
        assert wf["state"] == "IMAGE_ACTIVE", (wf, restarted.log()[-3000:])
        assert "resuming flow" in restarted.log()
        states = [h["state"] for h in wf["history"]]
        assert "FAILED" not in states and "REVERTED" not in states, states
        if state.startswith("UPLOAD_"):
            done = next(h for h in wf["history"] if h["state"] == "UPLOAD_COMPLETE")
            handed = int(next(h for h in wf["history"] if h["state"] == state)["detail"].split()[0])
            resumed_at = int(done["detail"].rsplit(" ", 1)[1])
            print(f"\n{state}: {handed} bytes sent before the stop, resumed at {resumed_at}")
            assert 0 < resumed_at <= handed and handed - resumed_at <= 8 << 20    # one part at most

        raw = fetch_raw(restarted, snap_id, tmp_path / "snap.raw")
        fsck = subprocess.run(["e2fsck", "-fn", str(raw)], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr        # quiesced, and all of it there
        assert len(ticks(raw)) >= 3
        with open(raw, "rb") as fh:
            fh.seek(DATA_FS)
            assert fh.read(len(padding)) == padding                    # every byte, none twice
        with compute(restarted) as nova:
            shown = wait_server(nova, server_id, "ACTIVE")
            assert shown["OS-EXT-STS:vm_state"] == "active" and shown["OS-EXT-STS:task_state"] is None
        assert not (data_dir / "instances" / "_snapshots" / workflow_id).exists()
        leftover = subprocess.run(["pgrep", "-f", f"qemu-nbd.*{workflow_id}"], capture_output=True, text=True)
        assert leftover.stdout == ""
        # The backup job ended: a second snapshot of the same server runs (one job per domain).
        snap2, workflow2 = snapshot_when_agent_answers(restarted, server_id, "after-stop")
        assert wait_workflow(restarted, workflow2, {"IMAGE_ACTIVE", "REVERTED"}, timeout=120)["state"] == "IMAGE_ACTIVE"
    finally:
        for s in (restarted, server):
            if s is not None and s.process.poll() is None:
                delete_servers(s)
                s.stop()
        kill_processes_under(data_dir)      # QEMU outlives a stopped server
        shutil.rmtree(data_dir, ignore_errors=True)


def kill_processes_under(data_dir) -> None:
    """SIGKILL, by pid, the processes this test started whose command line names its own
    (unique, temporary) data dir: QEMU and qemu-nbd."""
    for proc in os.listdir("/proc"):
        if not proc.isdigit() or int(proc) == os.getpid():
            continue
        try:
            with open(f"/proc/{proc}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(data_dir) in cmdline:
            try:
                os.kill(int(proc), signal.SIGKILL)
            except OSError:
                pass
