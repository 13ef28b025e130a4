"""Block devices at server create (Nova's block_device_mapping_v2) and the restore of an
instance-level snapshot image (seed 003) through the real `serve` process: the fake virt driver
(its domains in fake-host.json, its disks real files) and the real qcow2file volume driver.

A server gets a blank local disk and an existing volume; a server booted from an image whose
block_device_mapping names a volume snapshot and a local disk image gets a new volume holding
the snapshot's data and a local disk holding the image's; a missing snapshot is Nova's 400 with
nothing made; and a spawn failing half-way — a volume that cannot be created, an attach that
fails after its attachment exists — leaves no volume, no attachment, no disk: the server is
ERROR with its fault."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import new_image, start_server
from tests.functional.test_volume_attach import cinder, nova, wait, wait_server_gone

GIB = 1 << 30
ENV = {"FREEZEFRAME_COMPUTE__DRIVER": "fake", "FREEZEFRAME_VOLUME__DRIVER": "qcow2file",
       "FREEZEFRAME_CONDUCTOR__SCAN_INTERVAL": "0.5", "FREEZEFRAME_VOLUME__MAX_SIZE": "4"}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("bdm") / "ff", env=ENV)
    yield server
    server.stop()


def upload_image(server, data: bytes, name="img", **props) -> str:
    with server.client() as images:
        image = new_image(images, name=name, **props)
        resp = images.put(f"/v2/images/{image['id']}/file", content=data,
                          headers={"Content-Type": "application/octet-stream"})
        assert resp.status_code == 204, resp.text
    return image["id"]


def new_volume(server, size=1) -> str:
    with cinder(server) as c:
        resp = c.post("/volumes", json={"volume": {"size": size, "name": "data"}})
        assert resp.status_code == 202, resp.text
        return wait(c, f"/volumes/{resp.json()['volume']['id']}", "volume", {"available"})["id"]


def volume_ids(server) -> set[str]:
    with cinder(server) as c:
        return {v["id"] for v in c.get("/volumes").json()["volumes"]}


def settled_volume_ids(server, expected: set[str], timeout=30) -> set[str]:
    """The volumes once those being deleted are gone (a delete is the volume service's workflow)."""
    deadline = time.monotonic() + timeout
    while (found := volume_ids(server)) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def create(server, image_id: str, devices=None, version="2.79"):
    body = {"server": {"name": "vm", "imageRef": image_id, "flavorRef": "1"}}
    if devices is not None:
        body["server"]["block_device_mapping_v2"] = devices
    with nova(server, version) as n:
        return n.post("/servers", json=body)


def boot(server, image_id: str, devices=None, status="ACTIVE") -> dict:
    resp = create(server, image_id, devices)
    assert resp.status_code == 202, resp.text
    with nova(server) as n:
        return wait_server_status(n, resp.json()["server"]["id"], status)


def wait_server_status(n, server_id, status, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = n.get(f"/servers/{server_id}").json()["server"]
        if body["status"] == status and body["OS-EXT-STS:task_state"] is None:
            return body
        if body["status"] in ("ACTIVE", "ERROR") and body["status"] != status:
            raise AssertionError(f"server {server_id} is {body['status']}, not {status}: {body}")
        time.sleep(0.1)
    raise AssertionError(f"server {server_id} not {status}: {body}")


def domain(server, server_id) -> dict | None:
    """The fake driver's record of the server's domain (its disks and volumes as the guest has them)."""
    state = json.loads((server.data_dir / "fake-host.json").read_text())
    return state.get(f"instance-{server_id}")


def same_data(a: Path, b: Path, fmt_a="raw", fmt_b=None) -> bool:
    """qemu-img compare: equal contents (a larger image's extra part must be zeros)."""
    cmd = ["qemu-img", "compare", "-q", "-f", fmt_a, *(["-F", fmt_b] if fmt_b else []), str(a), str(b)]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def root_image(server) -> str:
    return upload_image(server, os.urandom(1 << 20) + bytes(1 << 20), name="root")


def test_a_blank_local_disk_and_an_existing_volume(cloud):
    image_id = root_image(cloud)
    volume_id = new_volume(cloud)
    server = boot(cloud, image_id, [
        {"source_type": "image", "destination_type": "local", "uuid": image_id, "boot_index": 0},
        {"source_type": "volume", "destination_type": "volume", "uuid": volume_id, "boot_index": -1},
        {"source_type": "blank", "destination_type": "local", "volume_size": 1, "boot_index": None,
         "guest_format": "ext4"},
        {"source_type": "blank", "destination_type": "volume", "volume_size": 1, "delete_on_termination": True},
    ])
    server_id = server["id"]
    ((blank_id, dot),) = [(v["id"], v["delete_on_termination"]) for v in server["os-extended-volumes:volumes_attached"]
                          if v["id"] != volume_id]
    assert server["os-extended-volumes:volumes_attached"] == [{"id": volume_id, "delete_on_termination": False},
                                                              {"id": blank_id, "delete_on_termination": True}]
    with nova(cloud, "2.1") as n:
        old = n.get(f"/servers/{server_id}").json()["server"]
        assert old["os-extended-volumes:volumes_attached"] == [{"id": volume_id}, {"id": blank_id}]
        listed = n.get("/servers/detail").json()["servers"]
        assert next(s for s in listed if s["id"] == server_id)["os-extended-volumes:volumes_attached"] == \
            [{"id": volume_id}, {"id": blank_id}]
        att, new_att = n.get(f"/servers/{server_id}/os-volume_attachments").json()["volumeAttachments"]
    # The local disk is the domain's second disk (vdb: the guest's name for it), the volumes vdc, vdd.
    assert att == {"id": volume_id, "serverId": server_id, "volumeId": volume_id, "device": "/dev/vdc"}
    assert new_att["volumeId"] == blank_id and new_att["device"] == "/dev/vdd"
    dom = domain(cloud, server_id)
    (local,) = dom["spec"]["extra_disks"]
    assert Path(local).name == "disk.vdb" and Path(local).parent.name == server_id
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", local], capture_output=True,
                                     check=True, text=True).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == GIB and "backing-filename" not in info
    assert sorted((v["volume_id"], v["target"]) for v in dom["volumes"]) == sorted([(volume_id, "vdc"),
                                                                                   (blank_id, "vdd")])
    with cinder(cloud) as c:
        vol = c.get(f"/volumes/{volume_id}").json()["volume"]
    assert vol["status"] == "in-use" and [(a["server_id"], a["device"]) for a in vol["attachments"]] == \
        [(server_id, "/dev/vdc")]
    with nova(cloud) as n:
        assert n.delete(f"/servers/{server_id}").status_code == 204
        wait_server_gone(n, server_id)
    with cinder(cloud) as c:
        assert wait(c, f"/volumes/{volume_id}", "volume", {"available"})["attachments"] == []
        assert wait(c, f"/volumes/{blank_id}", "volume", {"deleted"}) is None          # delete_on_termination
    assert not Path(local).exists() and domain(cloud, server_id) is None


def test_a_volume_from_an_image(cloud):
    image_id = root_image(cloud)
    data = os.urandom(1 << 20)
    source = upload_image(cloud, data, name="for-volume")
    server = boot(cloud, image_id, [{"source_type": "image", "destination_type": "volume", "uuid": source,
                                     "device_name": "/dev/vdb"}])
    ((volume_id, dot),) = [(v["id"], v["delete_on_termination"])
                           for v in server["os-extended-volumes:volumes_attached"]]
    assert dot is False                                    # Nova's default: the volume outlives the server
    (attached,) = domain(cloud, server["id"])["volumes"]
    assert attached["target"] == "vdb" and Path(attached["path"]).read_bytes()[:len(data)] == data
    with nova(cloud) as n:
        assert n.delete(f"/servers/{server['id']}").status_code == 204
        wait_server_gone(n, server["id"])
    with cinder(cloud) as c:
        assert wait(c, f"/volumes/{volume_id}", "volume", {"available"})["attachments"] == []
        assert c.delete(f"/volumes/{volume_id}").status_code == 202


def test_restore_from_an_instance_level_snapshot_image(cloud, tmp_path):
    share = cloud.data_dir / "volumes"
    volume_id = new_volume(cloud)
    # Data on the volume, then its snapshot (offline: the volume service's own).
    data = os.urandom(1 << 20)
    with open(share / f"volume-{volume_id}", "r+b") as f:
        f.write(data)
        f.seek(512 << 20)
        f.write(data[::-1])
    with cinder(cloud) as c:
        resp = c.post("/snapshots", json={"snapshot": {"volume_id": volume_id, "name": "for-image"}})
        assert resp.status_code == 202, resp.text
        snapshot_id = resp.json()["snapshot"]["id"]
        assert wait(c, f"/snapshots/{snapshot_id}", "snapshot", {"available", "error"})["status"] == "available"
    # The local disk's image, and the image an instance-level snapshot packages: the root's data,
    # and a block_device_mapping as Nova writes it (every key, unset = null).
    local_data = os.urandom(2 << 20)
    local_raw = tmp_path / "local.raw"
    local_raw.write_bytes(local_data)
    child = upload_image(cloud, local_data, name="vdb")

    def entry(**values):
        keys = ("source_type", "destination_type", "snapshot_id", "volume_id", "image_id", "device_name",
                "boot_index", "volume_size", "delete_on_termination", "disk_bus", "device_type", "tag", "volume_type",
                "guest_format", "encrypted", "encryption_secret_uuid", "encryption_format", "encryption_options",
                "no_device")
        return {k: values.get(k) for k in keys}
    mapping = [entry(source_type="image", destination_type="local", image_id=child, device_name="/dev/vdb",
                     boot_index=-1, volume_size=1, delete_on_termination=True, disk_bus="virtio", device_type="disk"),
               entry(source_type="snapshot", destination_type="volume", snapshot_id=snapshot_id,
                     device_name="/dev/vdc", boot_index=None, volume_size=1, delete_on_termination=True,
                     disk_bus="virtio", device_type="disk")]
    image_id = upload_image(cloud, os.urandom(1 << 20), name="packaged", bdm_v2="True",
                            block_device_mapping=json.dumps(mapping), root_device_name="/dev/vda")
    before = volume_ids(cloud)
    server = boot(cloud, image_id)
    server_id = server["id"]
    ((new_id, dot),) = [(v["id"], v["delete_on_termination"]) for v in server["os-extended-volumes:volumes_attached"]]
    assert new_id not in before and new_id != volume_id and dot is True
    with cinder(cloud) as c:
        vol = c.get(f"/volumes/{new_id}").json()["volume"]
    assert vol["snapshot_id"] == snapshot_id and vol["size"] == 1 and vol["status"] == "in-use"
    dom = domain(cloud, server_id)
    # The new volume holds the snapshot's data (the file below the volume's overlay now).
    (attached,) = dom["volumes"]
    assert (attached["volume_id"], attached["target"]) == (new_id, "vdc")
    assert same_data(share / f"volume-{volume_id}", Path(attached["path"]), "raw", attached["format"])
    probe = Path(attached["path"]).read_bytes()[:1 << 20] if attached["format"] == "raw" else None
    assert probe is None or probe == data
    # The local disk holds the image's data (an overlay on the cached base, grown to 1 GiB).
    (local,) = dom["spec"]["extra_disks"]
    assert Path(local).name == "disk.vdb"
    assert same_data(local_raw, Path(local), "raw", "qcow2")
    assert json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", local], capture_output=True,
                                     check=True, text=True).stdout)["virtual-size"] == GIB
    # The request wins by device name: the image's vdb replaced by a blank disk, its vdc dropped.
    override = boot(cloud, image_id, [
        {"source_type": "blank", "destination_type": "local", "volume_size": 2, "device_name": "/dev/vdb"},
        {"device_name": "vdc", "no_device": True}])
    assert override["os-extended-volumes:volumes_attached"] == []
    (blank,) = domain(cloud, override["id"])["spec"]["extra_disks"]
    assert json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", blank], capture_output=True,
                                     check=True, text=True).stdout)["virtual-size"] == 2 * GIB
    # Deleting the server deletes the volume it made (delete_on_termination), not the original.
    with nova(cloud) as n:
        for sid in (server_id, override["id"]):
            assert n.delete(f"/servers/{sid}").status_code == 204
            wait_server_gone(n, sid)
    with cinder(cloud) as c:
        assert wait(c, f"/volumes/{new_id}", "volume", {"deleted"}) is None
        assert c.get(f"/volumes/{volume_id}").json()["volume"]["status"] == "available"
        assert c.get(f"/snapshots/{snapshot_id}").json()["snapshot"]["status"] == "available"


def test_a_missing_snapshot_is_novas_400_and_nothing_is_made(cloud):
    image_id = root_image(cloud)
    missing = str(uuid.uuid4())
    with nova(cloud) as n:
        servers = {s["id"] for s in n.get("/servers").json()["servers"]}
    volumes = volume_ids(cloud)
    resp = create(cloud, image_id, [{"source_type": "snapshot", "destination_type": "volume", "uuid": missing}])
    assert resp.status_code == 400, resp.text
    assert f"Block Device Mapping is Invalid: failed to get snapshot {missing}." in resp.text
    # The same from an image's mapping.
    mapping = [{"source_type": "snapshot", "destination_type": "volume", "snapshot_id": missing,
                "device_name": "/dev/vdb", "boot_index": -1, "volume_size": 1}]
    packaged = upload_image(cloud, os.urandom(1 << 20), bdm_v2="True", block_device_mapping=json.dumps(mapping))
    resp = create(cloud, packaged)
    assert resp.status_code == 400 and f"failed to get snapshot {missing}." in resp.text
    with nova(cloud) as n:
        assert {s["id"] for s in n.get("/servers").json()["servers"]} == servers
    assert volume_ids(cloud) == volumes


@pytest.mark.parametrize("devices, message", [
    ([{"source_type": "volume", "destination_type": "volume", "uuid": str(uuid.uuid4()), "boot_index": 0}],
     "booting from a volume is not supported by this compute service"),
    ([{"source_type": "blank", "destination_type": "local", "volume_size": 1, "device_name": "/dev/sdb"}],
     "device_name"),
    ([{"source_type": "blank", "destination_type": "local", "volume_size": 1, "bogus": True}],
     "Additional properties"),
    ([{"source_type": "blank", "destination_type": "local"}], "volume_size"),
    ([{"source_type": "blank", "destination_type": "local", "volume_size": 1}] * 25, "at most 24"),
    ([{"source_type": "volume", "destination_type": "volume", "uuid": "nope"}], "UUID"),
    ([{"source_type": "image", "destination_type": "local", "uuid": str(uuid.uuid4())}], "could not be found"),
    ([{"source_type": "volume", "destination_type": "volume", "uuid": str(uuid.uuid4())}], "failed to get volume"),
    ({"source_type": "blank"}, "list"),
])
def test_bad_block_devices_are_400s_before_anything_is_made(cloud, devices, message):
    image_id = root_image(cloud)
    with nova(cloud) as n:
        servers = {s["id"] for s in n.get("/servers").json()["servers"]}
    resp = create(cloud, image_id, devices)
    assert resp.status_code == 400, resp.text
    assert message in resp.text, resp.text
    with nova(cloud) as n:
        assert {s["id"] for s in n.get("/servers").json()["servers"]} == servers


def test_a_volume_that_cannot_be_created_undoes_the_spawn(cloud):
    """The second new volume is larger than the volume service allows (max_size 4 GiB): the
    first, made already, is deleted again; nothing is attached; the server is ERROR."""
    image_id = root_image(cloud)
    existing = new_volume(cloud)
    with cinder(cloud) as c:
        resp = c.post("/snapshots", json={"snapshot": {"volume_id": existing, "name": "s"}})
        snapshot_id = resp.json()["snapshot"]["id"]
        assert wait(c, f"/snapshots/{snapshot_id}", "snapshot", {"available"})
    volumes = volume_ids(cloud)
    server = boot(cloud, image_id, [
        {"source_type": "volume", "destination_type": "volume", "uuid": existing},
        {"source_type": "snapshot", "destination_type": "volume", "uuid": snapshot_id, "device_name": "vdc"},
        {"source_type": "blank", "destination_type": "volume", "volume_size": 5, "device_name": "vdd"},
        {"source_type": "blank", "destination_type": "local", "volume_size": 1},
    ], status="ERROR")
    assert "Invalid volume" in server["fault"]["message"], server
    assert server["os-extended-volumes:volumes_attached"] == []
    assert settled_volume_ids(cloud, volumes) == volumes      # the volume made from the snapshot is gone again
    with cinder(cloud) as c:
        vol = c.get(f"/volumes/{existing}").json()["volume"]
        assert vol["status"] == "available" and vol["attachments"] == []
    assert domain(cloud, server["id"]) is None
    assert not (cloud.data_dir / "instances" / server["id"]).exists()
    with nova(cloud) as n:
        assert n.delete(f"/servers/{server['id']}").status_code == 204
        wait_server_gone(n, server["id"])


def test_a_failed_attach_undoes_every_device(tmp_path):
    """The domain started and the first volume's attachment exists when the guest attach fails:
    the attachment, the volume made from the snapshot, the domain and its disks all go."""
    cloud = start_server(tmp_path / "ff", env={**ENV, "FREEZEFRAME_TESTING__FAKE_FAIL_ON": "attach_volume"})
    try:
        image_id = root_image(cloud)
        existing = new_volume(cloud)
        with cinder(cloud) as c:
            snapshot_id = c.post("/snapshots", json={"snapshot": {"volume_id": existing}}).json()["snapshot"]["id"]
            assert wait(c, f"/snapshots/{snapshot_id}", "snapshot", {"available"})
        volumes = volume_ids(cloud)
        server = boot(cloud, image_id, [
            {"source_type": "snapshot", "destination_type": "volume", "uuid": snapshot_id},
            {"source_type": "volume", "destination_type": "volume", "uuid": existing},
            {"source_type": "blank", "destination_type": "local", "volume_size": 1},
        ], status="ERROR")
        assert "attach_volume" in server["fault"]["message"], server
        assert server["os-extended-volumes:volumes_attached"] == []
        assert settled_volume_ids(cloud, volumes) == volumes
        with cinder(cloud) as c:
            vol = c.get(f"/volumes/{existing}").json()["volume"]
            assert vol["status"] == "available" and vol["attachments"] == []
        with cinder(cloud, cloud.admin_token, "admin-project") as admin:
            attachments = admin.get("/attachments", params={"all_tenants": "1"},
                                    headers={"OpenStack-API-Version": "volume 3.27"})
            assert attachments.status_code == 200, attachments.text
            assert attachments.json()["attachments"] == []
        assert domain(cloud, server["id"]) is None
        assert not (cloud.data_dir / "instances" / server["id"]).exists()
    finally:
        cloud.stop()
