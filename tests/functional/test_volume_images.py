"""Volumes and images through a real `serve` with the real qcow2file driver: a volume from a raw
and from a qcow2 image (the data equal, holes still holes), from an image the user cannot see
(refused), ``os-volume_upload_image`` as qcow2 and raw (the image holds the volume's data; a
qcow2 is about the size of the data) and its cleanup on failure (no image left queued or
saving); seed 003's snapshots for compute (compute-initiated: compute switches the disk and
reports, the volume service never asks it; owner images: a snapshot an image owns is not
deleted on its own, and goes when its image goes)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time

import httpx
import pytest

from tests.conftest import start_server
from tests.functional.test_volumes_api import cinder, fault, new_volume, share, wait_status

MiB = 1 << 20
GiB = 1 << 30
SERVER_ID = "11111111-2222-3333-4444-666666666666"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("volimg") / "ff",
                          env={"FREEZEFRAME_CONDUCTOR__SCAN_INTERVAL": "0.5",
                               "FREEZEFRAME_CONDUCTOR__UPLOAD_CHUNK": str(64 * MiB)})
    yield server
    server.stop()


def glance(server, token=None, service=False):
    headers = {"X-Auth-Token": token or server.member_token}
    if service:
        headers["X-Service-Token"] = server.service_token
    return httpx.Client(base_url=server.url + "/image", headers=headers, timeout=120)


def as_compute(server, token=None):
    """Compute acting for the user: the user's token with the service's beside it."""
    c = cinder(server, token)
    c.headers["X-Service-Token"] = server.service_token
    return c


def make_image(server, path, disk_format, token=None, **props):
    with glance(server, token) as g:
        resp = g.post("/v2/images", json={"name": f"img-{disk_format}", "disk_format": disk_format,
                                          "container_format": "bare", **props})
        assert resp.status_code == 201, resp.text
        image = resp.json()
        with open(path, "rb") as fh:
            put = g.put(f"/v2/images/{image['id']}/file", content=fh.read(),
                        headers={"Content-Type": "application/octet-stream"})
        assert put.status_code == 204, put.text
        return g.get(f"/v2/images/{image['id']}").json()


def wait_image(server, image_id, statuses=("active",), timeout=120, token=None):
    deadline = time.monotonic() + timeout
    with glance(server, token) as g:
        while True:
            resp = g.get(f"/v2/images/{image_id}")
            status = resp.json()["status"] if resp.status_code == 200 else resp.status_code
            if status in statuses:
                return resp.json() if resp.status_code == 200 else None
            assert time.monotonic() < deadline, f"image {image_id} is {status}, not {statuses}"
            time.sleep(0.1)


def disk_with_holes(path, size=6 * MiB):
    """A raw disk: 1 MiB of data, 2 MiB of holes, 1 MiB of data, then a hole to the end."""
    a, b = os.urandom(MiB), os.urandom(MiB)
    with open(path, "wb") as fh:
        fh.write(a)
        fh.seek(3 * MiB)
        fh.write(b)
        fh.truncate(size)
    return a, b


def allocated(path):
    return os.stat(path).st_blocks * 512


def image_data(server, image_id, dest, token=None):
    with glance(server, token) as g, g.stream("GET", f"/v2/images/{image_id}/file") as resp:
        assert resp.status_code == 200
        with open(dest, "wb") as fh:
            for block in resp.iter_bytes(MiB):
                fh.write(block)
    return dest


def same_data(a, a_fmt, b, b_fmt):
    done = subprocess.run(["qemu-img", "compare", "-U", "-f", a_fmt, "-F", b_fmt, str(a), str(b)],
                          capture_output=True, text=True)
    return done.returncode == 0, done.stdout + done.stderr


def volume_file(server, vid):
    info = share(server) / f"volume-{vid}.info"
    return share(server) / (json.loads(info.read_text())["active"] if info.exists() else f"volume-{vid}")


def workflow_of(server, resource_id, kind, token=None):
    with httpx.Client(base_url=server.url + "/v1", headers={"X-Auth-Token": token or server.member_token}) as c:
        listed = c.get("/workflows", params={"resource_id": resource_id, "kind": kind}).json()["workflows"]
        assert listed, f"no {kind} workflow for {resource_id}"
        return c.get(f"/workflows/{listed[0]['id']}").json()["workflow"]


# -- a volume from an image -----------------------------------------------------------------------

def test_a_volume_from_a_raw_image_holds_its_data_and_its_holes(cloud, tmp_path):
    raw = tmp_path / "disk.raw"
    a, b = disk_with_holes(raw)
    image = make_image(cloud, raw, "raw", os_distro="tiny", hw_disk_bus="virtio", min_disk=1)
    with cinder(cloud) as c:
        resp = c.post("/volumes", json={"volume": {"imageRef": image["id"], "name": "from-raw"}})
        assert resp.status_code == 202, resp.text
        assert resp.json()["volume"]["size"] == 1             # ceil(6 MiB) in GiB
        vol = wait_status(c, "volume", resp.json()["volume"]["id"], "available")
        assert vol["bootable"] == "true"
        meta = vol["volume_image_metadata"]
        assert meta["image_id"] == image["id"] and meta["image_name"] == "img-raw"
        assert (meta["disk_format"], meta["container_format"]) == ("raw", "bare")
        assert meta["checksum"] == image["checksum"] and meta["size"] == str(6 * MiB)
        assert meta["min_disk"] == "1" and meta["min_ram"] == "0"
        assert meta["os_distro"] == "tiny" and meta["hw_disk_bus"] == "virtio"
        assert not any(k.startswith("os_freezeframe") for k in meta)
        path = share(cloud) / f"volume-{vol['id']}"
        assert path.stat().st_size == GiB
        with open(path, "rb") as fh:
            assert fh.read(MiB) == a
            assert fh.read(2 * MiB) == bytes(2 * MiB)
            assert fh.read(MiB) == b
            assert fh.read(MiB) == bytes(MiB)
        assert allocated(path) <= 2 * MiB + 256 * 1024, "the holes were written"
        assert not list(share(cloud).glob("*.download"))       # the scratch file is gone
        history = [h["detail"] for h in workflow_of(cloud, vol["id"], "volume-create")["history"]]
        assert any("downloading image" in d for d in history), history
        assert c.delete(f"/volumes/{vol['id']}").status_code == 202


def test_a_volume_from_a_qcow2_image_holds_its_data_and_its_holes(cloud, tmp_path):
    raw = tmp_path / "disk.raw"
    a, b = disk_with_holes(raw, size=1536 * MiB)          # virtual size 1.5 GiB: a 2 GiB volume
    qcow2 = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    image = make_image(cloud, qcow2, "qcow2")
    assert image["virtual_size"] == 1536 * MiB
    with cinder(cloud) as c:
        too_small = c.post("/volumes", json={"volume": {"imageRef": image["id"], "size": 1}})
        assert too_small.status_code == 400 and "larger than volume size" in fault(too_small)["message"]
        resp = c.post("/volumes", json={"volume": {"imageRef": image["id"]}})
        assert resp.status_code == 202, resp.text
        vol = wait_status(c, "volume", resp.json()["volume"]["id"], "available")
        assert vol["size"] == 2 and vol["bootable"] == "true"
        assert vol["volume_image_metadata"]["disk_format"] == "qcow2"
        path = share(cloud) / f"volume-{vol['id']}"
        assert path.stat().st_size == 2 * GiB
        with open(path, "rb") as fh:
            assert fh.read(MiB) == a
            fh.seek(3 * MiB)
            assert fh.read(MiB) == b
        ok, why = same_data(raw, "raw", path, "raw")       # (qemu-img compare: the extra 0.5 GiB is zeros)
        assert ok, why
        assert allocated(path) <= 2 * MiB + 256 * 1024, "the holes were written"
        assert c.delete(f"/volumes/{vol['id']}").status_code == 202


def test_images_a_volume_cannot_be_made_of_are_refused_at_once(cloud, tmp_path):
    raw = tmp_path / "disk.raw"
    disk_with_holes(raw, size=2 * MiB)
    theirs = make_image(cloud, raw, "raw", token=cloud.other_token)          # project-b's, private
    iso = make_image(cloud, raw, "ami")      # (a format the image service does not inspect)
    with glance(cloud) as g:
        queued = g.post("/v2/images", json={"name": "empty", "disk_format": "raw",
                                            "container_format": "bare"}).json()
    big = make_image(cloud, raw, "raw", min_disk=3)
    with cinder(cloud) as c:
        before = {v["id"] for v in c.get("/volumes").json()["volumes"]}
        for ref, words in ((theirs["id"], "unable to access"), ("00000000-0000-0000-0000-000000000000",
                                                                 "unable to access"),
                           (queued["id"], "not active"), (iso["id"], "raw or qcow2"), ("not-a-uuid", "imageRef")):
            resp = c.post("/volumes", json={"volume": {"imageRef": ref}})
            assert resp.status_code == 400 and words in fault(resp)["message"], (ref, resp.text)
        resp = c.post("/volumes", json={"volume": {"imageRef": big["id"], "size": 2}})
        assert resp.status_code == 400 and "minDisk" in fault(resp)["message"]
        assert {v["id"] for v in c.get("/volumes").json()["volumes"]} == before     # nothing made
    with cinder(cloud, cloud.other_token) as theirs_c:       # the owner may
        resp = theirs_c.post("/volumes", json={"volume": {"image_id": theirs["id"]}})
        assert resp.status_code == 202, resp.text
        vol = wait_status(theirs_c, "volume", resp.json()["volume"]["id"], "available")
        assert theirs_c.delete(f"/volumes/{vol['id']}").status_code == 202


# -- os-volume_upload_image -----------------------------------------------------------------------

def _volume_with_data(c, cloud):
    """A 1 GiB volume with data at 0, at 300 MiB and in an overlay (a snapshot: the chain is read)."""
    vol = new_volume(c)
    path = share(cloud) / f"volume-{vol['id']}"
    with open(path, "r+b") as fh:
        fh.write(os.urandom(2 * MiB))
        fh.seek(300 * MiB)
        fh.write(os.urandom(MiB))
    snap = c.post("/snapshots", json={"snapshot": {"volume_id": vol["id"]}}).json()["snapshot"]
    wait_status(c, "snapshot", snap["id"], "available")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 512M 1M", str(volume_file(cloud, vol["id"]))],
                   check=True, capture_output=True)
    return vol, snap


@pytest.mark.parametrize("disk_format", ["qcow2", "raw"])
def test_a_volume_uploads_to_an_image_holding_its_data(cloud, tmp_path, disk_format):
    with cinder(cloud) as c:
        vol, snap = _volume_with_data(c, cloud)
        resp = c.post(f"/volumes/{vol['id']}/action", json={"os-volume_upload_image": {
            "image_name": f"up-{disk_format}", "disk_format": disk_format, "force": False}})
        assert resp.status_code == 202, resp.text
        body = resp.json()["os-volume_upload_image"]
        assert body["status"] == "uploading" and body["id"] == vol["id"] and body["size"] == 1
        assert (body["disk_format"], body["container_format"], body["image_name"]) == (disk_format, "bare",
                                                                                       f"up-{disk_format}")
        assert body["volume_type"]["name"] == "__DEFAULT__" and "updated_at" in body
        image = wait_image(cloud, body["image_id"])
        wait_status(c, "volume", vol["id"], "available")
        assert image["disk_format"] == disk_format and image["visibility"] == "private"
        assert image["owner"] == "project-a"
        if disk_format == "qcow2":
            assert image["size"] < 5 * MiB, image["size"]          # 4 MiB of data, and its metadata
            assert image["virtual_size"] == GiB
        else:
            assert image["size"] == GiB
        got = image_data(cloud, image["id"], tmp_path / "got")
        assert hashlib.md5(got.read_bytes()).hexdigest() == image["checksum"]
        ok, why = same_data(got, disk_format, volume_file(cloud, vol["id"]), "qcow2")
        assert ok, why
        history = workflow_of(cloud, vol["id"], "volume-upload-image")
        assert history["state"] == "COMPLETE" and history["image_id"] == image["id"]
        details = [h["detail"] for h in history["history"]]
        assert any(f"as {disk_format}" in d for d in details), details
        if disk_format == "raw":          # 1 GiB in 64 MiB parts: progress along the way
            assert [h["progress"] for h in history["history"] if "bytes sent" in (h["detail"] or "")], details
        with glance(cloud) as g:
            assert g.delete(f"/v2/images/{image['id']}").status_code == 204
        assert c.delete(f"/snapshots/{snap['id']}").status_code == 202
        wait_status(c, "snapshot", snap["id"], "deleted")
        assert c.delete(f"/volumes/{vol['id']}").status_code == 202


def test_a_failed_upload_leaves_no_image_and_the_volume_available(cloud):
    with cinder(cloud) as c:
        vol = new_volume(c)
        path = share(cloud) / f"volume-{vol['id']}"
        # a guest wrote a qcow2 header at the start: the image service refuses it as raw data (415)
        subprocess.run(["qemu-img", "create", "-f", "qcow2", str(path) + ".hdr", "1G"], check=True,
                       capture_output=True)
        with open(str(path) + ".hdr", "rb") as src, open(path, "r+b") as dst:
            dst.write(src.read(MiB))
        os.unlink(str(path) + ".hdr")
        resp = c.post(f"/volumes/{vol['id']}/action", json={"os-volume_upload_image": {"image_name": "doomed",
                                                                                       "protected": True}})
        assert resp.status_code == 202, resp.text
        image_id = resp.json()["os-volume_upload_image"]["image_id"]
        wait_image(cloud, image_id, statuses=(404,))                # killed, then deleted
        vol = wait_status(c, "volume", vol["id"], "available")
        wf = workflow_of(cloud, vol["id"], "volume-upload-image")
        assert wf["state"] == "REVERTED" and "qcow2" in wf["failure_reason"], wf
        assert c.delete(f"/volumes/{vol['id']}").status_code == 202


def test_bad_uploads_are_refused_and_make_no_image(cloud):
    with cinder(cloud) as c, glance(cloud) as g:
        vol = new_volume(c)
        before = len(g.get("/v2/images", params={"limit": 1000}).json()["images"])
        action = f"/volumes/{vol['id']}/action"
        for inner, words in (({}, "image_name"), ({"image_name": "x", "disk_format": "vmdk"}, "disk-format"),
                             ({"image_name": "x", "container_format": "ovf"}, "container-format"),
                             ({"image_name": "x", "force": "maybe"}, "force"),
                             ({"image_name": "x", "visibility": "everyone"}, "visibility")):
            resp = c.post(action, json={"os-volume_upload_image": inner})
            assert resp.status_code == 400 and words in fault(resp)["message"], (inner, resp.text)
        public = c.post(action, json={"os-volume_upload_image": {"image_name": "x", "visibility": "public"}})
        assert public.status_code == 403, public.text          # publicize_image is an admin's
        with cinder(cloud, cloud.other_token) as other:
            assert other.post(f"{cloud.url}/volume/v3/project-b/volumes/{vol['id']}/action",
                              json={"os-volume_upload_image": {"image_name": "x"}}).status_code == 404
        _, att = _attach(c, vol)
        resp = c.post(action, json={"os-volume_upload_image": {"image_name": "x", "force": True}})
        assert resp.status_code == 400 and "detach it first" in fault(resp)["message"]
        assert len(g.get("/v2/images", params={"limit": 1000}).json()["images"]) == before
        assert c.delete(f"/attachments/{att['id']}").status_code == 200
        assert c.get(f"/volumes/{vol['id']}").json()["volume"]["status"] == "available"
        assert c.delete(f"/volumes/{vol['id']}").status_code == 202


# -- seed 003: snapshots compute makes -------------------------------------------------------------

def _attached_volume(c):
    return _attach(c, new_volume(c))


def _attach(c, vol):
    att = c.post("/attachments", json={"attachment": {"volume_uuid": vol["id"], "instance_uuid": SERVER_ID}})
    assert att.status_code == 200, att.text
    att = att.json()["attachment"]
    resp = c.put(f"/attachments/{att['id']}", json={"attachment": {"connector": {"host": "h1",
                                                                                  "mountpoint": "/dev/vdb"}}})
    assert resp.status_code == 200, resp.text
    assert c.post(f"/attachments/{att['id']}/action", json={"os-complete": {}}).status_code == 204
    return vol, att


def test_a_compute_initiated_snapshot_waits_for_compute_and_never_asks_it(cloud):
    with cinder(cloud) as c, as_compute(cloud) as compute:
        vol, att = _attached_volume(c)
        body = {"snapshot": {"volume_id": vol["id"], "force": True, "os-freezeframe:compute_initiated": True}}
        refused = c.post("/snapshots", json=body)
        assert refused.status_code == 403, refused.text
        with cinder(cloud, cloud.admin_token) as admin:
            assert admin.post(f"{cloud.url}/volume/v3/project-a/snapshots", json=body).status_code == 403
        resp = compute.post("/snapshots", json=body)
        assert resp.status_code == 202, resp.text
        snap_id = resp.json()["snapshot"]["id"]
        deadline = time.monotonic() + 30
        while True:         # compute reads the file to switch the disk to from the admin metadata
            md = compute.get(f"/snapshots/{snap_id}/os-admin-metadata")
            assert md.status_code == 200, md.text
            md = md.json()["admin_metadata"]
            if md.get("compute_snapshot_status") == "requested" and md.get("new_file"):
                break
            assert time.monotonic() < deadline, md
            time.sleep(0.05)
        assert md["new_file"] == f"volume-{vol['id']}.{snap_id}"
        assert (share(cloud) / md["new_file"]).exists()
        assert c.get(f"/snapshots/{snap_id}/os-admin-metadata").status_code == 403
        assert c.get(f"/snapshots/{snap_id}").json()["snapshot"]["status"] == "creating"
        url = f"/snapshots/{snap_id}/action"
        for status in ("running", "done"):
            resp = compute.post(url, json={"os-update_snapshot_status": {
                "status": "creating", "progress": "100%" if status == "done" else "50%",
                "compute_snapshot_status": status}})
            assert resp.status_code == 202, resp.text
        snap = wait_status(c, "snapshot", snap_id, "available")
        assert snap["os-extended-snapshot-attributes:progress"] == "100%"
        md = compute.get(f"/snapshots/{snap_id}/os-admin-metadata").json()["admin_metadata"]
        assert md["compute_snapshot_status"] == "done"
        info = c.get(f"/attachments/{att['id']}").json()["attachment"]["connection_info"]
        assert info["data"]["name"] == md["new_file"]           # a restart opens the new file
        details = [h["detail"] for h in workflow_of(cloud, snap_id, "volume-snapshot-create")["history"]]
        assert all("assisted-volume" not in (d or "") for d in details)
        # an available volume: nothing for compute to switch
        other = new_volume(c)
        resp = compute.post("/snapshots", json={"snapshot": {"volume_id": other["id"],
                                                             "os-freezeframe:compute_initiated": True}})
        assert resp.status_code == 400 and "attached" in fault(resp)["message"]
        assert c.delete(f"/volumes/{other['id']}").status_code == 202


def test_a_snapshot_owned_by_an_image_goes_with_the_image(cloud, tmp_path):
    with glance(cloud) as g:
        owner = g.post("/v2/images", json={"name": "instance-snap", "disk_format": "qcow2",
                                           "container_format": "bare"}).json()
    with cinder(cloud) as c, as_compute(cloud) as compute:
        vol = new_volume(c)
        body = {"snapshot": {"volume_id": vol["id"], "os-freezeframe:owner_image_id": owner["id"]}}
        assert c.post("/snapshots", json=body).status_code == 403
        missing = compute.post("/snapshots", json={"snapshot": {
            "volume_id": vol["id"], "os-freezeframe:owner_image_id": "00000000-0000-0000-0000-000000000000"}})
        assert missing.status_code == 400, missing.text
        resp = compute.post("/snapshots", json=body)
        assert resp.status_code == 202, resp.text
        snap = wait_status(c, "snapshot", resp.json()["snapshot"]["id"], "available")
        refused = c.delete(f"/snapshots/{snap['id']}")
        assert refused.status_code == 400 and owner["id"] in fault(refused)["message"]
        url = f"/snapshots/{snap['id']}/action"
        assert c.post(url, json={"os-freezeframe-set_owner_image": {"image_id": None}}).status_code == 403
        assert compute.post(url, json={"os-freezeframe-set_owner_image": {"image_id": "x"}}).status_code == 400
        assert compute.post(url, json={"os-freezeframe-set_owner_image": {"image_id": None}}).status_code == 202
        assert compute.post(url, json={"os-freezeframe-set_owner_image": {"image_id": owner["id"]}}).status_code == 202
        time.sleep(2)                       # a few scans: the image lives, the snapshot stays
        assert c.get(f"/snapshots/{snap['id']}").json()["snapshot"]["status"] == "available"
        with glance(cloud) as g:
            assert g.delete(f"/v2/images/{owner['id']}").status_code == 204
        wait_status(c, "snapshot", snap["id"], "deleted", timeout=30)
        assert c.delete(f"/volumes/{vol['id']}").status_code == 202


# -- kill -9 while the data moves ------------------------------------------------------------------

def _our_qemu_nbds():
    found = []
    for pid in os.listdir("/proc"):
        try:
            args = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except (OSError, ValueError):
            continue
        if args and args[0].endswith(b"qemu-nbd") and any(b"ffvol-nbd-" in a for a in args):
            found.append(int(pid))
    return found


def test_kill_9_while_downloading_and_while_uploading_then_resume(tmp_path):
    """The serve process killed (fault injection, not a race) while a volume downloads its
    image, then after an upload's first part was kept: restarted, the download is redone and the
    upload goes on from the byte the image service kept; nothing is left behind."""
    env = {"FREEZEFRAME_CONDUCTOR__SCAN_INTERVAL": "0.5", "FREEZEFRAME_CONDUCTOR__UPLOAD_CHUNK": str(64 * MiB)}
    raw = tmp_path / "disk.raw"
    a, b = disk_with_holes(raw)
    server = start_server(tmp_path / "ff", env={**env, "FREEZEFRAME_TESTING__FAULT_KILL_AT": "DOWNLOADING"})
    try:
        image = make_image(server, raw, "raw")
        with cinder(server) as c:
            resp = c.post("/volumes", json={"volume": {"imageRef": image["id"]}})
            assert resp.status_code == 202, resp.text
            vid = resp.json()["volume"]["id"]
        assert server.process.wait(60) == -signal.SIGKILL
    finally:
        server.stop(signal.SIGKILL)

    server = start_server(tmp_path / "ff", env={**env, "FREEZEFRAME_TESTING__FAULT_KILL_AT": "UPLOAD_PART_KEPT"})
    try:
        with cinder(server) as c:
            vol = wait_status(c, "volume", vid, "available")
            assert vol["bootable"] == "true"
            path = share(server) / f"volume-{vid}"
            with open(path, "rb") as fh:
                assert fh.read(MiB) == a and fh.read(2 * MiB) == bytes(2 * MiB) and fh.read(MiB) == b
            assert not list(share(server).glob("*.download"))
            with open(path, "r+b") as fh:           # data past the first part
                fh.seek(700 * MiB)
                fh.write(b"late" * 1024)
            resp = c.post(f"/volumes/{vid}/action", json={"os-volume_upload_image": {"image_name": "resumed"}})
            assert resp.status_code == 202, resp.text
            image_id = resp.json()["os-volume_upload_image"]["image_id"]
        assert server.process.wait(60) == -signal.SIGKILL
    finally:
        server.stop(signal.SIGKILL)

    server = start_server(tmp_path / "ff", env=env)
    try:
        with cinder(server) as c:
            image = wait_image(server, image_id)
            wait_status(c, "volume", vid, "available")
            details = [h["detail"] for h in workflow_of(server, vid, "volume-upload-image")["history"]]
            assert any(f"resuming the upload at byte {64 * MiB}" in (d or "") for d in details), details
            assert image["size"] == GiB
            got = image_data(server, image_id, tmp_path / "got")
            ok, why = same_data(got, "raw", share(server) / f"volume-{vid}", "raw")
            assert ok, why
        assert _our_qemu_nbds() == []
    finally:
        server.stop()
