"""The crash matrix on the real hypervisor: kill -9 the serve process (API, image service,
conductor and the embedded libvirt) while it snapshots the tiny guest, restart it, and the
snapshot resumes — libvirt reconnects to the running QEMU and its pull-mode backup job, the
upload goes on from the last byte the image service kept — and ends consistent: image active
with a clean filesystem and every byte of the disk, server ACTIVE, no job or export left."""

import os
import shutil
import signal
import subprocess
import time

import pytest

from tests.functional.test_compute_snapshot import compute, wait_server, wait_workflow
from tests.libvirt.test_libvirt_snapshot import libvirt_unavailable, ticks
from tests.libvirt.test_server_snapshot_e2e import (cloud_dir, delete_servers, end_qemus, fetch_raw, register_guest,
                                                    snapshot_when_agent_answers, start_cloud)

pytestmark = [pytest.mark.libvirt]
DATA_FS = 64 << 20          # the tiny guest's ext4 data disk; the padding follows it


@pytest.mark.timeout(420)
@pytest.mark.parametrize("state", ["LOCAL_SNAPSHOT_COMPLETE", "UPLOAD_50_COMPLETE"])
def test_kill_9_mid_snapshot_resumes_on_libvirt(tmp_path, state):
    reason = libvirt_unavailable()
    if reason:
        pytest.skip(reason)
    data_dir = cloud_dir()
    padding = os.urandom(32 << 20)          # 8 reads of 4 MiB: the upload has a middle to die in
    parts = {"FREEZEFRAME_CONDUCTOR__UPLOAD_CHUNK": str(8 << 20)}
    server = start_cloud(data_dir, {"FREEZEFRAME_TESTING__FAULT_KILL_AT": state, **parts})
    restarted = None
    try:
        image_ref = register_guest(server, padding)
        with compute(server) as nova:
            resp = nova.post("/servers", json={"server": {"name": "crashy", "imageRef": image_ref, "flavorRef": "1"}})
            assert resp.status_code == 202, resp.text
            server_id = resp.json()["server"]["id"]
            wait_server(nova, server_id, "ACTIVE", timeout=120)
        time.sleep(5)               # let the guest boot and its writer put ticks on the disk
        snap_id, workflow_id = snapshot_when_agent_answers(server, server_id, "crashy-snap")
        assert server.process.wait(120) == -signal.SIGKILL
        assert f"in state {state}" in server.log()

        restarted = start_cloud(data_dir, parts)
        wf = wait_workflow(restarted, workflow_id, {"IMAGE_ACTIVE", "REVERTED", "CANCELLED"}, timeout=180)
        assert wf["state"] == "IMAGE_ACTIVE", (wf, restarted.log()[-3000:])
        assert "resuming flow" in restarted.log()
        if state.startswith("UPLOAD_"):
            done = next(h for h in wf["history"] if h["state"] == "UPLOAD_COMPLETE")
            handed = int(next(h for h in wf["history"] if h["state"] == state)["detail"].split()[0])
            resumed_at = int(done["detail"].rsplit(" ", 1)[1])
            print(f"\n{state}: {handed} bytes sent before the kill, resumed at {resumed_at}")
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
        snap2, workflow2 = snapshot_when_agent_answers(restarted, server_id, "after-crash")
        assert wait_workflow(restarted, workflow2, {"IMAGE_ACTIVE", "REVERTED"}, timeout=120)["state"] == "IMAGE_ACTIVE"
    finally:
        for s in (restarted, server):
            if s is not None and s.process.poll() is None:
                delete_servers(s)
                s.stop()
        subprocess.run(["pkill", "-9", "-f", str(data_dir)])   # QEMU outlives a killed server
        end_qemus(data_dir)     # (QEMU's own command line names no path of it: by the pid files)
        shutil.rmtree(data_dir, ignore_errors=True)
