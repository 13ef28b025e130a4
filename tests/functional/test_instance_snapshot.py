"""The instance-level snapshot (seed 003) end to end through a real `serve` (fake virt driver,
the real qcow2file volume driver): chosen devices, one point in time, one image whose
block_device_mapping references the volume snapshots it owns; bad input; everything reverted
when a device fails; the image's deletion takes its volume snapshots with it."""

import json
import time

import pytest

from tests.conftest import start_server
from tests.functional.test_compute_snapshot import boot, snapshot_data, wait_workflow
from tests.functional.test_volume_attach import cinder, nova, wait
from tests.functional.test_volumes_api import fault


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("instance-snap") / "ff",
                          env={"FREEZEFRAME_COMPUTE__DRIVER": "fake", "FREEZEFRAME_CONDUCTOR__SCAN_INTERVAL": "0.5"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server_with_volume(cloud, tmp_path_factory):
    server_id, _base, data = boot(cloud, tmp_path_factory.mktemp("boot"))
    with cinder(cloud) as c:
        resp = c.post("/volumes", json={"volume": {"size": 1, "name": "data"}})
        volume_id = wait(c, f"/volumes/{resp.json()['volume']['id']}", "volume", {"available"})["id"]
    with nova(cloud) as n:
        resp = n.post(f"/servers/{server_id}/os-volume_attachments",
                      json={"volumeAttachment": {"volumeId": volume_id, "device": "/dev/vdb"}})
        assert resp.status_code == 200, resp.text
    with cinder(cloud) as c:
        wait(c, f"/volumes/{volume_id}", "volume", {"in-use"})
    path = cloud.data_dir / "volumes" / f"volume-{volume_id}"
    with open(path, "r+b") as fh:             # what the guest wrote on the volume
        fh.seek(1 << 20)
        fh.write(b"volume data " * 1000)
    return server_id, volume_id, data


def take(cloud, server_id, devices, name="package"):
    with nova(cloud) as n:
        resp = n.post(f"/servers/{server_id}/action", json={"snapshot": {"name": name, "devices": devices}})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    wf = wait_workflow(cloud, body["workflow_id"], {"IMAGE_ACTIVE", "REVERTED", "CANCELLED"}, timeout=90)
    return body["image_id"], wf


def image_of(cloud, image_id):
    with cloud.client() as images:
        return images.get(f"/v2/images/{image_id}")


def test_every_device_in_one_image(cloud, server_with_volume, tmp_path):
    server_id, volume_id, data = server_with_volume
    image_id, wf = take(cloud, server_id, None)
    assert wf["state"] == "IMAGE_ACTIVE", wf
    image = image_of(cloud, image_id).json()
    assert image["status"] == "active" and image["bdm_v2"] == "True" and image["root_device_name"] == "/dev/vda"
    assert image["os_freezeframe_snapshot_included"] == "vda,vdb"
    assert image["os_freezeframe_snapshot_excluded"] == ""
    mapping = json.loads(image["block_device_mapping"])
    assert [(m["source_type"], m["destination_type"], m["device_name"]) for m in mapping] == \
        [("snapshot", "volume", "/dev/vdb")]
    snapshot_id = mapping[0]["snapshot_id"]
    with cinder(cloud) as c:
        snap = c.get(f"/snapshots/{snapshot_id}").json()["snapshot"]
        assert snap["status"] == "available" and snap["volume_id"] == volume_id and snap["size"] == 1
        # an image still references it: its deletion is refused, naming the image
        refused = c.delete(f"/snapshots/{snapshot_id}")
        assert refused.status_code == 400 and image_id in fault(refused)["message"]
        # a volume from it holds what the volume held at the snapshot
        resp = c.post("/volumes", json={"volume": {"snapshot_id": snapshot_id}})
        copy_id = wait(c, f"/volumes/{resp.json()['volume']['id']}", "volume", {"available"})["id"]
    copied = (cloud.data_dir / "volumes" / f"volume-{copy_id}").read_bytes()
    assert copied[1 << 20:(1 << 20) + 12000] == b"volume data " * 1000
    assert snapshot_data(cloud, image_id, tmp_path) == data           # the root disk, as for createImage
    # the server's volume goes on in its new file: the attachment says so
    with nova(cloud) as n:
        atts = n.get(f"/servers/{server_id}/os-volume_attachments").json()["volumeAttachments"]
        assert [a["volumeId"] for a in atts] == [volume_id]
    # deleting the image takes its volume snapshot with it (the volume service's owner sweep)
    with cloud.client() as images:
        assert images.delete(f"/v2/images/{image_id}").status_code == 204
    with cinder(cloud) as c:
        wait(c, f"/snapshots/{snapshot_id}", "snapshot", {"deleted"}, timeout=60)
        assert c.delete(f"/volumes/{copy_id}").status_code == 202


def test_chosen_devices(cloud, server_with_volume):
    server_id, volume_id, _data = server_with_volume
    image_id, wf = take(cloud, server_id, ["vda"], name="root-only")
    assert wf["state"] == "IMAGE_ACTIVE", wf
    image = image_of(cloud, image_id).json()
    assert json.loads(image["block_device_mapping"]) == [] and image["os_freezeframe_snapshot_excluded"] == "vdb"
    image_id, wf = take(cloud, server_id, ["/dev/vdb"], name="volume-only")
    assert wf["state"] == "IMAGE_ACTIVE", wf
    image = image_of(cloud, image_id).json()
    assert image["size"] == 0 and image["disk_format"] == "raw"
    assert [m["device_name"] for m in json.loads(image["block_device_mapping"])] == ["/dev/vdb"]
    assert image["os_freezeframe_snapshot_excluded"] == "vda"
    with cloud.client() as images:
        assert images.delete(f"/v2/images/{image_id}").status_code == 204


@pytest.mark.parametrize("devices, words", [
    ([], "devices"), (["vdz"], "no device vdz"), (["vda", "vda"], "twice"), ("vda", "devices"),
    ([1], "device"), (["/dev/sda"], "device"),
])
def test_bad_devices_make_nothing(cloud, server_with_volume, devices, words):
    server_id, volume_id, _data = server_with_volume
    with cloud.client() as images:
        before = {i["id"] for i in images.get("/v2/images").json()["images"]}
    with cinder(cloud) as c:     # (ids, not a count: an earlier test's snapshot may finish its deletion meanwhile)
        snaps = {s["id"] for s in c.get("/snapshots", params={"volume_id": volume_id}).json()["snapshots"]}
    with nova(cloud) as n:
        resp = n.post(f"/servers/{server_id}/action", json={"snapshot": {"name": "x", "devices": devices}})
        assert resp.status_code == 400, resp.text
        assert words in fault(resp)["message"]
        assert n.get(f"/servers/{server_id}").json()["server"]["OS-EXT-STS:task_state"] is None
    with cloud.client() as images:
        assert {i["id"] for i in images.get("/v2/images").json()["images"]} <= before
    with cinder(cloud) as c:
        assert {s["id"] for s in c.get("/snapshots", params={"volume_id": volume_id}).json()["snapshots"]} <= snaps


def test_a_failing_device_reverts_every_device(cloud, server_with_volume):
    """The volume side refuses its part (its snapshot fails to prepare): the workflow reverts;
    no image, no volume snapshot, the server free again."""
    server_id, volume_id, _data = server_with_volume
    share = cloud.data_dir / "volumes"
    info = share / f"volume-{volume_id}.info"
    active = json.loads(info.read_text())["active"]
    # make the volume's chain unreadable for a moment: the driver's begin fails
    (share / active).rename(share / (active + ".away"))
    try:
        with nova(cloud) as n:
            resp = n.post(f"/servers/{server_id}/action", json={"snapshot": {"name": "doomed", "devices": None}})
        assert resp.status_code == 202, resp.text
        body = resp.json()
        wf = wait_workflow(cloud, body["workflow_id"], {"REVERTED", "IMAGE_ACTIVE"}, timeout=90)
    finally:
        (share / (active + ".away")).rename(share / active)
    assert wf["state"] == "REVERTED", wf
    assert image_of(cloud, body["image_id"]).status_code == 404
    deadline = time.monotonic() + 60
    with cinder(cloud) as c:
        while time.monotonic() < deadline:
            left = [s for s in c.get("/snapshots/detail", params={"volume_id": volume_id}).json()["snapshots"]
                    if s["metadata"].get("os_freezeframe_workflow") == body["workflow_id"]]
            if not left:
                break
            time.sleep(0.5)
        assert left == []
    with nova(cloud) as n:
        server = n.get(f"/servers/{server_id}").json()["server"]
        assert server["OS-EXT-STS:task_state"] is None and server["status"] == "ACTIVE"
    assert json.loads(info.read_text())["active"] == active         # the volume is where it was


def test_cli_server_snapshot_of_chosen_devices_waits(cloud, server_with_volume, capsys, client_env_isolated):
    """`freezeframe server snapshot SERVER --device vdb --wait -f json`: one JSON document once
    the image is active; a device the server lacks is a clear error and a non-zero exit."""
    from freezeframe.cli.main import main

    server_id, volume_id, _data = server_with_volume
    auth = ["--os-image-url", cloud.image_url, "--os-token", cloud.member_token]
    capsys.readouterr()
    code = main(["server", "snapshot", server_id, "--device", "/dev/vdb", "--name", "cli-pkg", "--wait",
                 "-f", "json", *auth])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert doc["state"] == "IMAGE_ACTIVE" and doc["progress"] == 100
    image = image_of(cloud, doc["image_id"]).json()
    assert [m["device_name"] for m in json.loads(image["block_device_mapping"])] == ["/dev/vdb"]
    code = main(["server", "snapshot", server_id, "--device", "vdq", *auth])
    out, err = capsys.readouterr()
    assert code != 0 and "no device vdq" in err
    with cloud.client() as images:
        assert images.delete(f"/v2/images/{doc['image_id']}").status_code == 204


def test_cli_server_create_with_a_second_local_disk(cloud, capsys, client_env_isolated, tmp_path):
    """`freezeframe server create --block-device source_type=blank,...`: the server has the disk,
    and an instance snapshot of every device packages it as a disk image of its own."""
    from freezeframe.cli.main import main
    from freezeframe.cli.server import _block_device

    assert _block_device("source_type=blank,destination_type=local,volume_size=1,delete_on_termination=true") == \
        {"source_type": "blank", "destination_type": "local", "volume_size": 1, "delete_on_termination": True}
    _server_id, base, _data = boot(cloud, tmp_path)
    auth = ["--os-image-url", cloud.image_url, "--os-token", cloud.member_token]
    capsys.readouterr()
    code = main(["server", "create", "two-disks", "--image", base["id"], "--flavor", "1", "--wait", "-f", "json",
                 "--block-device", "source_type=blank,destination_type=local,volume_size=1", *auth])
    out, err = capsys.readouterr()
    assert code == 0, err
    server_id = json.loads(out)["id"]
    image_id, wf = take(cloud, server_id, None, name="two-disks-pkg")
    assert wf["state"] == "IMAGE_ACTIVE", wf
    image = image_of(cloud, image_id).json()
    mapping = json.loads(image["block_device_mapping"])
    assert [(m["source_type"], m["destination_type"], m["device_name"]) for m in mapping] == \
        [("image", "local", "/dev/vdb")]
    child = image_of(cloud, mapping[0]["image_id"]).json()
    assert child["status"] == "active" and child["os_freezeframe_parent_image"] == image_id
    assert image["os_freezeframe_child_images"] == child["id"]
    with cloud.client() as images:          # the package goes as one
        assert images.delete(f"/v2/images/{image_id}").status_code == 204
        assert images.get(f"/v2/images/{child['id']}").status_code == 404
    with nova(cloud) as n:
        assert n.delete(f"/servers/{server_id}").status_code == 204
