"""Volumes end to end on the real hypervisor (issue 9, item 7): a real `serve` (libvirt, TCG; the
qcow2file volume driver on its share) running the tiny test guest, driven only through the APIs
— and the guest through its own agent.

One server for the module, booted from the registered guest image with a blank 1 GiB local disk
(``block_device_mapping_v2``) and a 1 GiB qcow2file volume attached (``os-volume_attachments``).
The guest writes something of its own on every disk: a file on its data filesystem (the root
disk, ``ff.data=vda``), byte patterns on the local disk and on the volume (found by its serial).

- An instance-level snapshot of every device, quiesced once: one image whose
  block_device_mapping names the local disk's image and the volume's snapshot; a copy booted
  from it finds every disk's data (read by the copy's agent); a snapshot of one chosen device
  maps that device alone; deleting the images takes what they own.
- Assisted volume snapshots through the volume API while the guest writes to the volume:
  created (compute_snapshot_status ``done``, progress ``100%``), the newest and a middle one
  deleted while it runs, one with the server stopped; each remaining snapshot holds its data (a
  volume made from it); a stop/start after online snapshots opens the right file.
- Compute never answering (its conductor serves no host: the assisted workflow is never run)
  with a 3 s timeout: the snapshot ends ``error`` with the reason, the overlay gone, the volume
  on its file; compute's late run finds nobody waiting and touches nothing.
- kill -9 of `serve` between the volume side's begin and complete (``fault_kill_at=WAITING``),
  of a create and of a delete: restarted, each resumes and completes; the share holds exactly
  the chain its ``.info`` names (a resumed create too: the driver waits for libvirt to reconnect
  the guest agent after the restart rather than taking "not connected" for no agent).

`serve` runs libvirt embedded (one process per root), so the guests' agents are reached through
a test-only relay inside that process (``tests/libvirt/agent_relay.py``). The guest ignores the
ACPI power button (busybox /init, no acpid): to stop it without os-stop's 30 s wait it powers
itself off right after the request, as a guest that listens would.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest

from tests.functional.test_compute_snapshot import compute, wait_server, wait_workflow
from tests.functional.test_volume_attach import cinder, nova, wait, wait_server_gone
from tests.libvirt.agent_relay import RelayError, relay, relay_env
from tests.libvirt.test_libvirt_snapshot import libvirt_unavailable
from tests.libvirt.test_server_snapshot_e2e import cloud_dir, end_qemus, register_guest, start_cloud
from tests.libvirt.test_volume_ops_libvirt import Guest, chain, qemu_img

pytestmark = [pytest.mark.libvirt]

MiB, GiB = 1 << 20, 1 << 30
NORMAL: dict[str, str] = {"FREEZEFRAME_VOLUME__ASSISTED_RECHECK": "0.5"}
# Compute never answers: this conductor serves no compute host (the assisted workflow, host-bound,
# is never claimed; the volume workflows are not host-bound and run).
DEAF_COMPUTE = {**NORMAL, "FREEZEFRAME_VOLUME__ASSISTED_CREATE_TIMEOUT": "3",
                "FREEZEFRAME_CONDUCTOR__HOSTS": "nowhere-e2e"}
KILL_AT_WAITING = {**NORMAL, "FREEZEFRAME_TESTING__FAULT_KILL_AT": "WAITING"}


# -- the guest, through the relay ---------------------------------------------------------------------
class RelayGuest(Guest):
    """A server's guest (test_volume_ops_libvirt's Guest: sh, device, fill, writer, md5) reached
    through the relay in `serve`."""

    def __init__(self, data_dir: Path, server_id: str) -> None:
        super().__init__(None, f"instance-{server_id}")
        self.data_dir = Path(data_dir)

    def agent(self, execute: str, timeout: float, **arguments):
        """One agent command. Right after `serve` restarts, its libvirt reconnects to the agent a
        moment later ("not connected"): waited for, up to 30 s."""
        deadline = time.monotonic() + 30
        while True:
            try:
                return relay(self.data_dir, {"op": "agent", "domain": self.name, "execute": execute,
                                             "timeout": timeout, "arguments": arguments}, timeout=timeout + 15)
            except RelayError as exc:
                if "not connected" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)

    def wait_agent(self, timeout: float = 120) -> float:
        t0, last = time.monotonic(), None
        while time.monotonic() - t0 < timeout:
            try:
                self.agent("guest-ping", 1)
                return time.monotonic() - t0
            except (RelayError, OSError) as exc:
                last = exc
            time.sleep(0.3)
        pytest.fail(f"the agent of {self.name} did not answer in {timeout} s: {last}")

    def disks(self) -> dict[str, tuple[int, str]]:
        """The guest's virtio disks: name -> (bytes, serial)."""
        out = self.sh('for b in /sys/block/vd*; do echo "${b##*/} $(cat $b/size) $(cat $b/serial 2>/dev/null)"; done')
        found = {}
        for line in out.splitlines():
            parts = line.split()
            found[parts[0]] = (int(parts[1]) * 512, parts[2] if len(parts) > 2 else "")
        return found

    def local_disk(self) -> str:
        """The local disk besides the root: the one disk other than vda without a volume's serial."""
        (name,) = [n for n, (_size, serial) in self.disks().items() if n != "vda" and not serial]
        return f"/dev/{name}"

    def region_md5(self, dev: str, offset_mib: int, size_mib: int) -> str:
        return self.sh(f"sync; echo 3 > /proc/sys/vm/drop_caches; dd if={dev} bs=1M skip={offset_mib} "
                       f"count={size_mib} 2>/dev/null | md5sum").split()[0]

    def volume_source(self, volume_id: str) -> str:
        """The file the running domain's disk of ``volume_id`` is on (its live XML)."""
        xml = relay(self.data_dir, {"op": "xml", "domain": self.name})
        for disk in ET.fromstring(xml).findall("./devices/disk"):
            if disk.findtext("serial") == volume_id:
                return Path(disk.find("source").get("file")).name
        raise AssertionError(f"volume {volume_id} is not a disk of {self.name}")


def pattern_md5(char: str, size_mib: int) -> str:
    return hashlib.md5(char.encode() * size_mib * MiB).hexdigest()


# -- the cloud ------------------------------------------------------------------------------------------
class Cloud:
    """The module's `serve` on one data dir, restarted with other settings when a test needs them
    (its guests run on: QEMU outlives it, libvirt reconnects)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.server = None
        self.env: dict[str, str] | None = None

    def start(self, env: dict[str, str]) -> None:
        self.server = start_cloud(self.data_dir, {**relay_env(self.data_dir), **env})
        self.env = env

    def ensure(self, env: dict[str, str]) -> None:
        if self.env != env or self.server.process.poll() is not None:
            if self.server.process.poll() is None:
                assert self.server.stop() == 0, self.server.log()[-3000:]
            self.start(env)

    def killed(self, timeout: float = 120) -> str:
        """`serve` dies (kill -9 by fault injection): its log; restarted with the same settings."""
        assert self.server.process.wait(timeout) == -signal.SIGKILL, self.server.log()[-3000:]
        log = self.server.log()
        self.start(self.env)
        return log

    @property
    def share(self) -> Path:
        return self.data_dir / "volumes"

    def log(self) -> str:
        return self.server.log()[-4000:]


@pytest.fixture(scope="module")
def cloud():
    reason = libvirt_unavailable()
    if reason:
        pytest.skip(reason)
    c = Cloud(cloud_dir())
    try:
        c.start(NORMAL)
        yield c
    finally:
        try:
            if c.server is not None and c.server.process.poll() is None:
                with compute(c.server, c.server.admin_token) as n:
                    ids = [s["id"] for s in n.get("/servers", params={"all_tenants": "1"}).json()["servers"]]
                for server_id in ids:
                    with compute(c.server) as n:
                        n.delete(f"/servers/{server_id}")
                deadline = time.monotonic() + 60
                with compute(c.server) as n:
                    while time.monotonic() < deadline and n.get("/servers").json()["servers"]:
                        time.sleep(0.5)
                c.server.stop()
        finally:
            end_qemus(c.data_dir)
            keep = os.environ.get("FF_E2E_LOG_DIR")     # the serve logs, for a failure's post-mortem
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                for log in c.data_dir.glob("server-*.log"):
                    shutil.copy2(log, Path(keep) / log.name)
            shutil.rmtree(c.data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def vm(cloud):
    """The server: the guest image as its root, a blank 1 GiB local disk, a 1 GiB volume attached."""
    s = cloud.server
    image_ref = register_guest(s)
    t0 = time.monotonic()
    with nova(s) as n:
        resp = n.post("/servers", json={"server": {
            "name": "e2e", "imageRef": image_ref, "flavorRef": "1", "block_device_mapping_v2": [
                {"source_type": "image", "destination_type": "local", "uuid": image_ref, "boot_index": 0},
                {"source_type": "blank", "destination_type": "local", "volume_size": 1, "boot_index": -1}]}})
        assert resp.status_code == 202, resp.text
        server_id = resp.json()["server"]["id"]
        wait_server(n, server_id, "ACTIVE", timeout=120)
    with cinder(s) as c:
        resp = c.post("/volumes", json={"volume": {"size": 1, "name": "e2e-data"}})
        assert resp.status_code == 202, resp.text
        volume_id = wait(c, f"/volumes/{resp.json()['volume']['id']}", "volume", {"available"})["id"]
    guest = RelayGuest(cloud.data_dir, server_id)
    guest.wait_agent()
    with nova(s) as n:
        resp = n.post(f"/servers/{server_id}/os-volume_attachments", json={"volumeAttachment": {"volumeId": volume_id}})
        assert resp.status_code == 200, resp.text
        assert resp.json()["volumeAttachment"]["device"] == "/dev/vdc"
    with cinder(s) as c:
        wait(c, f"/volumes/{volume_id}", "volume", {"in-use"})
    print(f"\nserver with a local disk and a volume up in {time.monotonic() - t0:.1f} s")
    return {"id": server_id, "volume_id": volume_id, "guest": guest, "image_ref": image_ref}


# -- helpers --------------------------------------------------------------------------------------------
def admin_metadata(cloud, snapshot_id) -> dict:
    with cinder(cloud.server, cloud.server.admin_token, "admin-project") as admin:
        resp = admin.get(f"/snapshots/{snapshot_id}/os-admin-metadata")
        assert resp.status_code == 200, resp.text
        return resp.json()["admin_metadata"]


def info_of(cloud, volume_id) -> dict:
    path = cloud.share / f"volume-{volume_id}.info"
    return json.loads(path.read_text()) if path.exists() else {"active": f"volume-{volume_id}"}


def consistent_share(cloud, volume_id) -> dict:
    """The volume's files on the share are exactly the chain under its active file, as its .info
    names them (nothing half-made left behind, nothing it needs missing). Returns the .info."""
    info = info_of(cloud, volume_id)
    active = cloud.share / info["active"]
    fmt = "raw" if info["active"] == f"volume-{volume_id}" else "qcow2"
    files = {p.name for p in cloud.share.glob(f"volume-{volume_id}*")} - {f"volume-{volume_id}.info"}
    links = chain(active, fmt)
    assert files == set(links), (files, links, info)
    for sid, name in info.items():
        assert name in links, (sid, name, links)
    return info


def volume_bytes(cloud, volume_id, offset_mib: int, size_mib: int) -> bytes:
    """What a volume holds at ``offset_mib`` (its chain read as a guest would)."""
    info = info_of(cloud, volume_id)
    path = cloud.share / info["active"]
    fmt = "raw" if info["active"] == f"volume-{volume_id}" else "qcow2"
    out = cloud.data_dir / f"read-{volume_id}.raw"
    try:
        qemu_img("convert", "-U", "-f", fmt, "-O", "raw", str(path), str(out))
        with open(out, "rb") as fh:
            fh.seek(offset_mib * MiB)
            return fh.read(size_mib * MiB)
    finally:
        out.unlink(missing_ok=True)


def snapshot_volume(cloud, volume_id, name, timeout=90) -> str:
    """An assisted snapshot of the in-use volume (force), ``available``; its id."""
    with cinder(cloud.server) as c:
        resp = c.post("/snapshots", json={"snapshot": {"volume_id": volume_id, "name": name, "force": True}})
        assert resp.status_code == 202, resp.text
        sid = resp.json()["snapshot"]["id"]
        snap = wait(c, f"/snapshots/{sid}", "snapshot", {"available", "error"}, timeout=timeout)
        assert snap["status"] == "available", (snap, admin_metadata(cloud, sid), cloud.log())
        shown = c.get("/snapshots/detail", params={"volume_id": volume_id}).json()["snapshots"]
    (detail,) = [s for s in shown if s["id"] == sid]
    assert detail["os-extended-snapshot-attributes:progress"] == "100%", detail
    assert admin_metadata(cloud, sid)["compute_snapshot_status"] == "done"
    return sid


def delete_snapshot(cloud, snapshot_id, timeout=120) -> None:
    with cinder(cloud.server) as c:
        resp = c.delete(f"/snapshots/{snapshot_id}")
        assert resp.status_code == 202, resp.text
        left = wait(c, f"/snapshots/{snapshot_id}", "snapshot", {"deleted", "error_deleting"}, timeout=timeout)
        assert left is None, (left, admin_metadata(cloud, snapshot_id), cloud.log())


def volume_from(cloud, snapshot_id) -> str:
    with cinder(cloud.server) as c:
        resp = c.post("/volumes", json={"volume": {"snapshot_id": snapshot_id, "name": "from-snap"}})
        assert resp.status_code == 202, resp.text
        made = wait(c, f"/volumes/{resp.json()['volume']['id']}", "volume", {"available", "error"}, timeout=90)
    assert made["status"] == "available", (made, cloud.log())
    return made["id"]


def instance_snapshot(cloud, server_id, name, devices):
    with nova(cloud.server) as n:
        resp = n.post(f"/servers/{server_id}/action", json={"snapshot": {"name": name, "devices": devices}})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    t0 = time.monotonic()
    wf = wait_workflow(cloud.server, body["workflow_id"], {"IMAGE_ACTIVE", "REVERTED", "CANCELLED", "FAILED"},
                       timeout=240)
    assert wf["state"] == "IMAGE_ACTIVE", (wf, cloud.log())
    print(f"instance snapshot {name} ({devices}): {time.monotonic() - t0:.1f} s")
    with cloud.server.client() as images:
        image = images.get(f"/v2/images/{body['image_id']}").json()
    return image, wf


def power(cloud, server_id, guest: RelayGuest, on: bool) -> None:
    if not on:
        # The guest powers itself off a moment after os-stop asks (it does not listen to ACPI).
        guest.sh("( sleep 2; sync; poweroff -f || echo o > /proc/sysrq-trigger ) > /dev/null 2>&1 &")
    with compute(cloud.server) as n:
        resp = n.post(f"/servers/{server_id}/action", json={"os-start" if on else "os-stop": None})
        assert resp.status_code == 202, resp.text
        wait_server(n, server_id, "ACTIVE" if on else "SHUTOFF", timeout=90)
    if on:
        guest.wait_agent()


def delete_image(cloud, image_id) -> None:
    with cloud.server.client() as images:
        assert images.delete(f"/v2/images/{image_id}").status_code == 204


# -- 1. instance-level snapshot of every device, restored -------------------------------------------------
@pytest.mark.timeout(420)
def test_instance_snapshot_of_every_disk_boots_a_copy_with_all_the_data(cloud, vm):
    cloud.ensure(NORMAL)
    guest, server_id, volume_id = vm["guest"], vm["id"], vm["volume_id"]
    token = os.urandom(8).hex()
    local = guest.local_disk()
    assert guest.disks()[local[5:]][0] == GiB
    vol_dev = guest.device(volume_id)
    guest.sh(f"echo root-{token} > /data/e2e-root; sync")           # the root disk's filesystem
    guest.fill(local, "L", 16, 2)                                     # the local disk
    guest.fill(vol_dev, "V", 4, 2)                                    # the volume
    before = consistent_share(cloud, volume_id)

    image, wf = instance_snapshot(cloud, server_id, "e2e-all", None)
    assert image["status"] == "active" and image["bdm_v2"] == "True" and image["root_device_name"] == "/dev/vda"
    assert image["os_freezeframe_snapshot_quiesced"] == "true"
    assert image["os_freezeframe_snapshot_included"] == "vda,vdb,vdc"
    assert image["os_freezeframe_snapshot_excluded"] == ""
    local_point = next(h for h in wf["history"] if h["state"] == "LOCAL_SNAPSHOT_COMPLETE")["detail"]
    assert local_point.startswith("frozen once for "), local_point
    frozen = float(local_point.split()[3].rstrip(";s"))
    print(f"instance snapshot: {local_point}")
    assert 0 < frozen < 2.0, local_point
    assert sum(1 for h in wf["history"] if h["state"] == "LOCAL_SNAPSHOT_COMPLETE") == 1
    mapping = json.loads(image["block_device_mapping"])
    assert [(m["source_type"], m["destination_type"], m["device_name"]) for m in mapping] == \
        [("image", "local", "/dev/vdb"), ("snapshot", "volume", "/dev/vdc")], mapping
    child_id, snap_id = mapping[0]["image_id"], mapping[1]["snapshot_id"]
    assert image["os_freezeframe_child_images"] == child_id
    with cinder(cloud.server) as c:
        snap = c.get(f"/snapshots/{snap_id}").json()["snapshot"]
    assert snap["status"] == "available" and snap["volume_id"] == volume_id and snap["size"] == 1
    assert admin_metadata(cloud, snap_id)["compute_snapshot_status"] == "done"
    # The server's volume goes on in its new file, and the domain runs on it.
    after = consistent_share(cloud, volume_id)
    assert after["active"] != before["active"] and after[snap_id] == after["active"]
    assert guest.volume_source(volume_id) == after["active"]

    # A copy booted from the image finds the data on every disk.
    with nova(cloud.server) as n:
        resp = n.post("/servers", json={"server": {"name": "e2e-copy", "imageRef": image["id"], "flavorRef": "1"}})
        assert resp.status_code == 202, resp.text
        copy_id = resp.json()["server"]["id"]
        shown = wait_server(n, copy_id, "ACTIVE", timeout=180)
    (copy_volume,) = [v["id"] for v in shown["os-extended-volumes:volumes_attached"]]
    assert copy_volume != volume_id
    with cinder(cloud.server) as c:
        made = c.get(f"/volumes/{copy_volume}").json()["volume"]
    assert made["snapshot_id"] == snap_id and made["status"] == "in-use"
    copy = RelayGuest(cloud.data_dir, copy_id)
    copy.wait_agent()
    assert copy.sh("cat /data/e2e-root").strip() == f"root-{token}"
    copy_local = copy.local_disk()
    assert copy.disks()[copy_local[5:]][0] == GiB
    assert copy.region_md5(copy_local, 16, 2) == pattern_md5("L", 2)
    assert copy.region_md5(copy_local, 4, 2) != pattern_md5("V", 2)
    copy_vol = copy.device(copy_volume)
    assert copy.region_md5(copy_vol, 4, 2) == pattern_md5("V", 2)
    assert copy.region_md5(copy_vol, 16, 2) != pattern_md5("L", 2)
    with nova(cloud.server) as n:
        assert n.delete(f"/servers/{copy_id}").status_code == 204
        wait_server_gone(n, copy_id, timeout=60)

    # A snapshot of one chosen device maps that device alone.
    only_local, _ = instance_snapshot(cloud, server_id, "e2e-vdb", ["vdb"])
    assert [(m["source_type"], m["device_name"]) for m in json.loads(only_local["block_device_mapping"])] == \
        [("image", "/dev/vdb")]
    assert only_local["os_freezeframe_snapshot_included"] == "vdb"
    assert only_local["os_freezeframe_snapshot_excluded"] == "vda,vdc"
    only_volume, _ = instance_snapshot(cloud, server_id, "e2e-vdc", ["/dev/vdc"])
    vol_map = json.loads(only_volume["block_device_mapping"])
    assert [(m["source_type"], m["device_name"]) for m in vol_map] == [("snapshot", "/dev/vdc")]
    assert only_volume["size"] == 0 and only_volume["os_freezeframe_snapshot_excluded"] == "vda,vdb"

    # Deleting the images takes the volume snapshots and disk images they own.
    owned = [snap_id, vol_map[0]["snapshot_id"]]
    children = [child_id, json.loads(only_local["block_device_mapping"])[0]["image_id"]]
    for img in (image["id"], only_local["id"], only_volume["id"]):
        delete_image(cloud, img)
    with cinder(cloud.server) as c:
        for sid in owned:
            assert wait(c, f"/snapshots/{sid}", "snapshot", {"deleted"}, timeout=120) is None
        wait(c, f"/volumes/{copy_volume}", "volume", {"available"})          # the copy is gone: detached
        assert c.delete(f"/volumes/{copy_volume}").status_code == 202
    with cloud.server.client() as images:
        for child in children:
            assert images.get(f"/v2/images/{child}").status_code == 404
    consistent_share(cloud, volume_id)


# -- 2. assisted volume snapshots while the guest writes ---------------------------------------------------
@pytest.mark.timeout(420)
def test_assisted_snapshots_created_and_deleted_while_the_guest_writes(cloud, vm):
    cloud.ensure(NORMAL)
    guest, server_id, volume_id = vm["guest"], vm["id"], vm["volume_id"]
    dev = guest.device(volume_id)
    guest.start_writer(dev, 32)                                     # 2 MiB at 32 MiB, every 20 ms
    try:
        snaps = []
        written_before = guest.region_md5(dev, 32, 2)
        for i, char in enumerate("ABCDE"):
            guest.fill(dev, char, 8 + i, 1)                          # snapshot i holds A .. char
            t0 = time.monotonic()
            snaps.append(snapshot_volume(cloud, volume_id, f"s{i + 1}"))
            print(f"assisted snapshot s{i + 1}: available in {time.monotonic() - t0:.2f} s")
            assert not guest.sh("[ -e /run/wdone ] && echo stopped || true").strip()     # the writer goes on
            info = consistent_share(cloud, volume_id)
            assert guest.volume_source(volume_id) == info["active"] == info[snaps[-1]]
        assert guest.region_md5(dev, 32, 2) != written_before          # it wrote meanwhile

        for sid, what in ((snaps[4], "newest"), (snaps[2], "middle")):
            t0 = time.monotonic()
            delete_snapshot(cloud, sid)
            print(f"assisted delete of the {what} snapshot: {time.monotonic() - t0:.2f} s")
            info = consistent_share(cloud, volume_id)
            assert sid not in info and guest.volume_source(volume_id) == info["active"]
    finally:
        guest.stop_writer()
    latest = guest.region_md5(dev, 0, 40)
    assert guest.region_md5(dev, 12, 1) == pattern_md5("E", 1)

    power(cloud, server_id, guest, on=False)
    t0 = time.monotonic()
    delete_snapshot(cloud, snaps[1])                                 # the server stopped
    print(f"delete with the server stopped: {time.monotonic() - t0:.2f} s")
    info = consistent_share(cloud, volume_id)
    assert set(info) - {"active"} >= {snaps[0], snaps[3]} and snaps[1] not in info

    # Each remaining snapshot holds its own point in time.
    for sid, chars in ((snaps[0], "A"), (snaps[3], "ABCD")):
        made = volume_from(cloud, sid)
        for k, char in enumerate("ABCDE"):
            want = char.encode() * MiB if char in chars else bytes(MiB)
            assert volume_bytes(cloud, made, 8 + k, 1) == want, (sid, char)
        with cinder(cloud.server) as c:
            assert c.delete(f"/volumes/{made}").status_code == 202

    # Started again, the domain opens the volume's active file: the guest reads its latest data.
    power(cloud, server_id, guest, on=True)
    assert guest.volume_source(volume_id) == consistent_share(cloud, volume_id)["active"]
    dev = guest.device(volume_id)
    assert guest.region_md5(dev, 0, 40) == latest
    assert hashlib.md5(volume_bytes(cloud, volume_id, 0, 40)).hexdigest() == latest
    for sid in (snaps[0], snaps[3]):
        delete_snapshot(cloud, sid)
    consistent_share(cloud, volume_id)


# -- 3. compute never answering ------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_compute_never_answering_ends_the_snapshot_in_error_and_leaves_nothing(cloud, vm):
    cloud.ensure(DEAF_COMPUTE)
    guest, server_id, volume_id = vm["guest"], vm["id"], vm["volume_id"]
    before = consistent_share(cloud, volume_id)
    files = sorted(p.name for p in cloud.share.glob(f"volume-{volume_id}*"))
    source = guest.volume_source(volume_id)
    t0 = time.monotonic()
    with cinder(cloud.server) as c:
        resp = c.post("/snapshots", json={"snapshot": {"volume_id": volume_id, "name": "unanswered", "force": True}})
        assert resp.status_code == 202, resp.text
        sid = resp.json()["snapshot"]["id"]
        snap = wait(c, f"/snapshots/{sid}", "snapshot", {"available", "error"}, timeout=60)
        took = time.monotonic() - t0
        assert snap["status"] == "error", snap
        assert c.get(f"/volumes/{volume_id}").json()["volume"]["status"] == "in-use"
    print(f"compute never answered: error after {took:.1f} s (timeout 3 s)")
    assert 3 <= took < 30
    md = admin_metadata(cloud, sid)
    assert md["compute_snapshot_status"] == "error" and "did not report within 3 s" in md["compute_error"], md
    with httpx.Client(base_url=cloud.server.url, headers={"X-Auth-Token": cloud.server.admin_token}) as c:
        (vwf,) = c.get("/v1/workflows", params={"resource_id": sid}).json()["workflows"]
        assert vwf["state"] == "REVERTED" and "did not report within 3 s" in vwf["failure_reason"], vwf
        pending = {"resource_id": server_id, "kind": "assisted-volume-snapshot", "state": "PENDING"}
        (cwf,) = c.get("/v1/workflows", params=pending).json()["workflows"]        # never claimed
    # Nothing left behind: the overlay made for it is gone, the volume on its file.
    assert sorted(p.name for p in cloud.share.glob(f"volume-{volume_id}*")) == files
    assert consistent_share(cloud, volume_id) == before
    assert guest.volume_source(volume_id) == source
    dev = guest.device(volume_id)
    guest.fill(dev, "Q", 20, 1)
    assert volume_bytes(cloud, volume_id, 20, 1) == b"Q" * MiB

    # Compute comes back: its late run finds the volume side no longer waiting and changes nothing.
    cloud.ensure(NORMAL)
    late = wait_workflow(cloud.server, cwf["id"], {"COMPLETE", "REVERTED", "FAILED"}, timeout=60,
                         token=cloud.server.admin_token)
    assert late["state"] == "COMPLETE" and "no longer waits" in late["history"][-1]["detail"], late
    assert guest.volume_source(volume_id) == source and consistent_share(cloud, volume_id) == before
    with cinder(cloud.server) as c:
        assert c.get(f"/snapshots/{sid}").json()["snapshot"]["status"] == "error"
        assert c.delete(f"/snapshots/{sid}").status_code == 202
        assert wait(c, f"/snapshots/{sid}", "snapshot", {"deleted", "error_deleting"}, timeout=60) is None
    assert consistent_share(cloud, volume_id) == before


# -- 4. kill -9 between begin and complete ----------------------------------------------------------------
def check_guest_reads_the_chain(cloud, guest, volume_id) -> None:
    dev = guest.device(volume_id)
    assert guest.region_md5(dev, 0, 40) == hashlib.md5(volume_bytes(cloud, volume_id, 0, 40)).hexdigest()


@pytest.mark.timeout(300)
def test_kill_9_between_begin_and_complete_of_a_delete_resumes_it(cloud, vm):
    cloud.ensure(NORMAL)
    guest, volume_id = vm["guest"], vm["volume_id"]
    dev = guest.device(volume_id)
    guest.fill(dev, "M", 24, 1)
    sid = snapshot_volume(cloud, volume_id, "to-delete")
    cloud.ensure(KILL_AT_WAITING)
    guest.start_writer(dev, 36)
    try:
        before = consistent_share(cloud, volume_id)
        with cinder(cloud.server) as c:
            assert c.delete(f"/snapshots/{sid}").status_code == 202
        log = cloud.killed()                        # the delete's begin committed, compute not asked yet
        assert "killing this process (SIGKILL) in state WAITING" in log
        assert info_of(cloud, volume_id) == before                            # nothing merged yet
        with cinder(cloud.server) as c:
            left = wait(c, f"/snapshots/{sid}", "snapshot", {"deleted", "error_deleting"}, timeout=120)
        assert left is None, (left, admin_metadata(cloud, sid), cloud.log())
        assert "resuming flow" in cloud.server.log()
        info = consistent_share(cloud, volume_id)                           # the merged file gone
        assert sid not in info and guest.volume_source(volume_id) == info["active"]
        assert not guest.sh("[ -e /run/wdone ] && echo stopped || true").strip()       # it wrote throughout
    finally:
        guest.stop_writer()
    assert volume_bytes(cloud, volume_id, 24, 1) == b"M" * MiB
    check_guest_reads_the_chain(cloud, guest, volume_id)


@pytest.mark.timeout(300)
def test_kill_9_between_begin_and_complete_of_a_create_resumes_it(cloud, vm):
    cloud.ensure(KILL_AT_WAITING)
    guest, volume_id = vm["guest"], vm["volume_id"]
    dev = guest.device(volume_id)
    guest.fill(dev, "K", 25, 1)
    guest.start_writer(dev, 36)
    try:
        before = consistent_share(cloud, volume_id)
        source = guest.volume_source(volume_id)
        with cinder(cloud.server) as c:
            resp = c.post("/snapshots", json={"snapshot": {"volume_id": volume_id, "name": "killed", "force": True}})
            assert resp.status_code == 202, resp.text
            sid = resp.json()["snapshot"]["id"]
        overlay = cloud.share / f"volume-{volume_id}.{sid}"
        log = cloud.killed()                        # begin committed (the overlay made), compute not asked yet
        assert "killing this process (SIGKILL) in state WAITING" in log
        assert overlay.exists() and info_of(cloud, volume_id) == before      # made, not yet in the chain
        with cinder(cloud.server) as c:
            snap = wait(c, f"/snapshots/{sid}", "snapshot", {"available", "error"}, timeout=120)
        assert "resuming flow" in cloud.server.log()
        assert not guest.sh("[ -e /run/wdone ] && echo stopped || true").strip()       # it wrote throughout
        if snap["status"] == "error":
            # Reverted: it must be clean — the overlay gone, the volume and its disk where they were.
            md = admin_metadata(cloud, sid)
            assert not overlay.exists() and consistent_share(cloud, volume_id) == before, md
            assert guest.volume_source(volume_id) == source
            reason = md.get("compute_error") or ""
            pytest.fail(f"the resumed snapshot reverted (cleanly) instead of completing: {reason}")
        assert admin_metadata(cloud, sid)["compute_snapshot_status"] == "done"
        info = consistent_share(cloud, volume_id)
        assert info["active"] == info[sid] == overlay.name
        assert guest.volume_source(volume_id) == info["active"]
    finally:
        guest.stop_writer()
    assert volume_bytes(cloud, volume_id, 25, 1) == b"K" * MiB
    check_guest_reads_the_chain(cloud, guest, volume_id)
    cloud.ensure(NORMAL)
    delete_snapshot(cloud, sid)
    consistent_share(cloud, volume_id)
