"""End to end on the real hypervisor: the tiny guest registered as images, booted as a server
through the compute API (libvirt, TCG), snapshotted live with quiesce through the conductor,
downloaded and checked, and booted again from its snapshot with the data written before it."""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import new_image, start_server
from tests.functional.test_compute_snapshot import compute, wait_server, wait_workflow
from tests.libvirt.test_libvirt_snapshot import _caps_cache, guest_files, libvirt_unavailable, ticks, to_raw

pytestmark = [pytest.mark.libvirt]


def cloud_dir() -> Path:
    """A data dir for a libvirt-backed server (QEMU may run unprivileged: every parent must be
    traversable), seeded with libvirt's cached QEMU capabilities (skips a ~8 s probe)."""
    data_dir = Path(tempfile.mkdtemp(prefix="ffe-", dir="/var/tmp"))
    data_dir.chmod(0o755)
    caps = data_dir / "libvirt" / "cache" / "qemu" / "capabilities"
    caps.mkdir(parents=True)
    for seed in _caps_cache().glob("*.xml"):
        shutil.copy2(seed, caps / seed.name)
    return data_dir


def start_cloud(data_dir: Path, env: dict | None = None):
    return start_server(data_dir, env={"FREEZEFRAME_COMPUTE__DRIVER": "libvirt",
                                       "FREEZEFRAME_CONDUCTOR__SCAN_INTERVAL": "0.5", **(env or {})})


def delete_servers(server, timeout: float = 60.0) -> None:
    """Every project's servers deleted (an admin lists only its own project without
    ``all_tenants``, as Nova), waited for until gone."""
    with compute(server, server.admin_token) as nova:
        every = {"all_tenants": "1"}
        for s in nova.get("/servers", params=every).json()["servers"]:
            nova.delete(f"/servers/{s['id']}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and nova.get("/servers", params=every).json()["servers"]:
            time.sleep(0.5)


def end_qemus(data_dir: Path) -> None:
    """QEMUs a `serve` on ``data_dir`` started and left running (a failed test, a killed serve),
    ended by their pid: they outlive the data dir otherwise and slow every later test."""
    for pidfile in (data_dir / "libvirt").rglob("*.pid"):
        try:
            pid = int(pidfile.read_text().strip())
            if b"qemu" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


@pytest.fixture
def cloud():
    reason = libvirt_unavailable()
    if reason:
        pytest.skip(reason)
    data_dir = cloud_dir()
    server = start_cloud(data_dir)
    try:
        yield server
    finally:
        try:
            delete_servers(server)
            server.stop()
        finally:
            end_qemus(data_dir)
            shutil.rmtree(data_dir, ignore_errors=True)


def register_guest(server, padding: bytes = b"") -> str:
    """The tiny guest as images; ``padding`` goes after its 64 MiB data disk's filesystem (more
    data to snapshot, untouched by the guest)."""
    files = guest_files()
    with server.client() as images:
        ids = {}
        for key, fmt in (("KERNEL", "aki"), ("INITRD", "ari")):
            image = new_image(images, name=f"tiny-{key.lower()}", disk_format=fmt, container_format=fmt)
            with open(files[key], "rb") as fh:
                assert images.put(f"/v2/images/{image['id']}/file", content=fh.read(),
                                  headers={"Content-Type": "application/octet-stream"}).status_code == 204
            ids[key] = image["id"]
        disk = new_image(images, name="tiny-guest", disk_format="raw", kernel_id=ids["KERNEL"],
                         ramdisk_id=ids["INITRD"], os_command_line=files["CMDLINE"] + " ff.data=vda",
                         hw_qemu_guest_agent="yes", os_require_quiesce="yes")
        with open(files["DATA_DISK"], "rb") as fh:
            assert images.put(f"/v2/images/{disk['id']}/file", content=fh.read() + padding,
                              headers={"Content-Type": "application/octet-stream"}).status_code == 204
    return disk["id"]


def snapshot_when_agent_answers(server, server_id, name, timeout=120):
    """os_require_quiesce: the API answers 409 until the guest agent answers (the guest boots)."""
    deadline = time.monotonic() + timeout
    with compute(server) as nova:
        while True:
            resp = nova.post(f"/servers/{server_id}/action", json={"createImage": {"name": name}})
            if resp.status_code == 202:
                return resp.json()["image_id"], resp.headers["x-freezeframe-workflow-id"]
            assert resp.status_code == 409 and "guest agent" in resp.text, resp.text
            assert time.monotonic() < deadline, "the guest agent never answered"
            time.sleep(1)


def fetch_raw(server, image_id, dest: Path) -> Path:
    qcow2 = dest.with_suffix(".qcow2")
    with server.client() as images, images.stream("GET", f"/v2/images/{image_id}/file") as resp:
        assert resp.status_code == 200
        with open(qcow2, "wb") as fh:
            for chunk in resp.iter_bytes(1 << 20):
                fh.write(chunk)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(qcow2)], capture_output=True,
                                     text=True, check=True).stdout)
    assert info["format"] == "qcow2" and "backing-filename" not in info
    return to_raw(qcow2, dest)


def test_boot_snapshot_boot_again(cloud, tmp_path):
    image_ref = register_guest(cloud)
    with compute(cloud) as nova:
        resp = nova.post("/servers", json={"server": {"name": "tiny", "imageRef": image_ref, "flavorRef": "1"}})
        assert resp.status_code == 202, resp.text
        first = resp.json()["server"]["id"]
        wait_server(nova, first, "ACTIVE", timeout=120)
    time.sleep(6)  # boot (~3 s under TCG), then let the ticks writer put lines on the disk
    snap_id, workflow_id = snapshot_when_agent_answers(cloud, first, "tiny-snap")
    wf = wait_workflow(cloud, workflow_id, {"IMAGE_ACTIVE", "REVERTED"}, timeout=180)
    assert wf["state"] == "IMAGE_ACTIVE", wf
    local = next(h for h in wf["history"] if h["state"] == "LOCAL_SNAPSHOT_COMPLETE")
    frozen = float(local["detail"].split()[1].rstrip(";s"))
    assert local["detail"].startswith("frozen") and frozen < 1.0      # quiesced, and briefly
    with cloud.client() as images:
        size = images.get(f"/v2/images/{snap_id}").json()["size"]
    assert size < 16 << 20, size    # the 64 MiB disk holds ~1 MiB: holes are neither copied nor sent
    raw = fetch_raw(cloud, snap_id, tmp_path / "snap1.raw")
    fsck = subprocess.run(["e2fsck", "-fn", str(raw)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr                # a clean filesystem
    before = ticks(raw)
    assert len(before) >= 3                                              # data written before the snapshot

    with compute(cloud) as nova:
        resp = nova.post("/servers", json={"server": {"name": "copy", "imageRef": snap_id, "flavorRef": "1"}})
        assert resp.status_code == 202, resp.text
        second = resp.json()["server"]["id"]
        wait_server(nova, second, "ACTIVE", timeout=120)
        assert wait_server(nova, first, "ACTIVE")["OS-EXT-STS:task_state"] is None
    time.sleep(6)
    snap2, workflow2 = snapshot_when_agent_answers(cloud, second, "copy-snap")
    assert wait_workflow(cloud, workflow2, {"IMAGE_ACTIVE", "REVERTED"}, timeout=180)["state"] == "IMAGE_ACTIVE"
    after = ticks(fetch_raw(cloud, snap2, tmp_path / "snap2.raw"))
    consoles = "\n".join(f"{p.name}: {p.read_text(errors='replace')[-1500:]}"
                          for p in (cloud.data_dir / "instances" / "_consoles").glob("*"))
    assert after[: len(before)] == before, consoles   # the copy booted with everything the first had written
    assert len(after) > len(before), consoles   # and went on writing
