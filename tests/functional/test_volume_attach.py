"""Volumes on servers end to end through the real `serve` process (fake virt driver; the volume
service with its fake driver and with the real qcow2file one): attach and detach with Nova's
shapes by microversion, the volume service's view of it, an assisted volume snapshot of an
attached volume (created and deleted: compute's part reported through
os-update_snapshot_status), the service-only os-assisted-volume-snapshots, and a deleted
server's volumes."""

import json
import time
import uuid

import httpx
import pytest

from tests.conftest import start_server
from tests.functional.test_compute_snapshot import boot, compute, wait_server


@pytest.fixture(scope="module", params=["fake", "qcow2file"])
def cloud(request, tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp(f"attach-{request.param}") / "ff",
                          env={"FREEZEFRAME_COMPUTE__DRIVER": "fake", "FREEZEFRAME_VOLUME__DRIVER": request.param,
                               "FREEZEFRAME_CONDUCTOR__SCAN_INTERVAL": "0.5"})
    yield server
    server.stop()


def nova(server, version="2.79", token=None):
    return httpx.Client(base_url=server.url + "/compute/v2.1", timeout=60,
                        headers={"X-Auth-Token": token or server.member_token,
                                 "X-OpenStack-Nova-API-Version": version})


def cinder(server, token=None, project="project-a"):
    return httpx.Client(base_url=f"{server.url}/volume/v3/{project}", timeout=60,
                        headers={"X-Auth-Token": token or server.member_token,
                                 "OpenStack-API-Version": "volume 3.44"})


def wait(c, path, key, statuses, timeout=30):
    deadline = time.monotonic() + timeout
    body = None
    while time.monotonic() < deadline:
        resp = c.get(path)
        if resp.status_code == 404 and "deleted" in statuses:
            return None
        body = resp.json()[key]
        if body["status"] in statuses:
            return body
        time.sleep(0.1)
    raise AssertionError(f"{path} not {statuses}: {body}")


def new_volume(server, size=1):
    with cinder(server) as c:
        resp = c.post("/volumes", json={"volume": {"size": size, "name": "data"}})
        assert resp.status_code == 202, resp.text
        return wait(c, f"/volumes/{resp.json()['volume']['id']}", "volume", {"available"})["id"]


def attach(server, server_id, volume_id, **att):
    with nova(server) as n:
        resp = n.post(f"/servers/{server_id}/os-volume_attachments",
                      json={"volumeAttachment": {"volumeId": volume_id, **att}})
    assert resp.status_code == 200, resp.text
    return resp.json()["volumeAttachment"]


@pytest.fixture
def server_id(cloud, tmp_path):
    return boot(cloud, tmp_path)[0]


def test_attach_show_list_detach_with_novas_shapes(cloud, server_id):
    volume_id = new_volume(cloud)
    att = attach(cloud, server_id, volume_id, tag="db", delete_on_termination=False)
    assert att == {"id": volume_id, "serverId": server_id, "volumeId": volume_id, "device": "/dev/vdb",
                   "tag": "db", "delete_on_termination": False}
    with cinder(cloud) as c:
        volume = c.get(f"/volumes/{volume_id}").json()["volume"]
    assert volume["status"] == "in-use"
    assert [(a["server_id"], a["device"]) for a in volume["attachments"]] == [(server_id, "/dev/vdb")]
    base = f"/servers/{server_id}/os-volume_attachments"
    with nova(cloud, "2.1") as n:
        (old,) = n.get(base).json()["volumeAttachments"]
        assert old == {"id": volume_id, "serverId": server_id, "volumeId": volume_id, "device": "/dev/vdb"}
    with nova(cloud, "2.89") as n:
        new = n.get(f"{base}/{volume_id}").json()["volumeAttachment"]
        assert "id" not in new and new["attachment_id"] == volume["attachments"][0]["attachment_id"]
        assert uuid.UUID(new["bdm_uuid"]) and new["tag"] == "db" and new["delete_on_termination"] is False
        assert n.get(base, params={"limit": "0"}).json()["volumeAttachments"] == []
        assert n.get(base, params={"bogus": "1"}).status_code == 400
    with nova(cloud) as n:
        assert n.post(base, json={"volumeAttachment": {"volumeId": volume_id}}).status_code == 400   # attached
        assert n.post(base, json={"volumeAttachment": {"volumeId": str(uuid.uuid4())}}).status_code == 404
        assert n.post(base, json={"volumeAttachment": {"volumeId": "nope"}}).status_code == 400
        assert n.post(base, json={"volumeAttachment": {"volumeId": new_volume(cloud),
                                                       "device": "/dev/vdb"}}).status_code == 400
        assert n.delete(f"{base}/{volume_id}").status_code == 202
        assert n.get(f"{base}/{volume_id}").status_code == 404
        assert n.delete(f"{base}/{volume_id}").status_code == 404
    with cinder(cloud) as c:
        volume = c.get(f"/volumes/{volume_id}").json()["volume"]
    assert volume["status"] == "available" and volume["attachments"] == []
    with nova(cloud, token=cloud.other_token) as n:             # another project sees no such server
        assert n.post(base, json={"volumeAttachment": {"volumeId": volume_id}}).status_code == 404


def test_an_assisted_snapshot_of_an_attached_volume_is_created_and_deleted(cloud, server_id):
    volume_id = new_volume(cloud)
    attach(cloud, server_id, volume_id)
    with cinder(cloud) as c:
        resp = c.post("/snapshots", json={"snapshot": {"volume_id": volume_id, "name": "online", "force": True}})
        assert resp.status_code == 202, resp.text
        snapshot_id = resp.json()["snapshot"]["id"]
        snap = wait(c, f"/snapshots/{snapshot_id}", "snapshot", {"available", "error"})
        assert snap["status"] == "available", snap
    with cinder(cloud, cloud.admin_token, "admin-project") as admin:
        meta = admin.get(f"/snapshots/{snapshot_id}/os-admin-metadata").json()["admin_metadata"]
    assert meta["compute_snapshot_status"] == "done", meta
    with cinder(cloud) as c:
        assert c.delete(f"/snapshots/{snapshot_id}").status_code == 202
        assert wait(c, f"/snapshots/{snapshot_id}", "snapshot", {"deleted", "error_deleting"}) is None
        assert c.get(f"/volumes/{volume_id}").json()["volume"]["status"] == "in-use"
    with nova(cloud) as n:
        assert n.delete(f"/servers/{server_id}/os-volume_attachments/{volume_id}").status_code == 202


def test_assisted_snapshot_requests_are_for_services_only_and_checked(cloud, server_id):
    volume_id = new_volume(cloud)
    attach(cloud, server_id, volume_id)
    body = {"snapshot": {"volume_id": volume_id, "create_info": {"snapshot_id": str(uuid.uuid4()),
                                                                 "type": "qcow2", "new_file": "x"}}}
    with nova(cloud, "2.1") as n:
        assert n.post("/os-assisted-volume-snapshots", json=body).status_code == 403
        delete_info = json.dumps({"type": "qcow2", "file_to_merge": None, "merge_target_file": None,
                                  "volume_id": volume_id})
        assert n.delete(f"/os-assisted-volume-snapshots/{uuid.uuid4()}",
                        params={"delete_info": delete_info}).status_code == 403
    # The volume service's call: the user's token with the service's own beside it.
    headers = {"X-Auth-Token": cloud.member_token, "X-Service-Token": cloud.service_token,
               "X-OpenStack-Nova-API-Version": "2.1"}
    with httpx.Client(base_url=cloud.url + "/compute/v2.1", headers=headers, timeout=30) as svc:
        other = {"snapshot": {**body["snapshot"], "volume_id": str(uuid.uuid4())}}
        assert svc.post("/os-assisted-volume-snapshots", json=other).status_code == 400     # not attached
        for bad in ({}, {"snapshot": {"volume_id": volume_id}},
                    {"snapshot": {**body["snapshot"], "create_info": {"type": "qcow2"}}}):
            assert svc.post("/os-assisted-volume-snapshots", json=bad).status_code == 400, bad
        path = f"/os-assisted-volume-snapshots/{uuid.uuid4()}"
        assert svc.delete(path).status_code == 400                                      # no delete_info
        assert svc.delete(path, params={"delete_info": "{"}).status_code == 400
        assert svc.delete(path, params={"delete_info": json.dumps({"type": "qcow2"})}).status_code == 400
        assert svc.delete(path, headers={"X-OpenStack-Nova-API-Version": "2.75"},
                          params={"delete_info": delete_info, "extra": "1"}).status_code == 400
    with nova(cloud) as n:
        assert n.delete(f"/servers/{server_id}/os-volume_attachments/{volume_id}").status_code == 202


def test_deleting_a_server_detaches_its_volumes(cloud, server_id):
    kept, doomed = new_volume(cloud), new_volume(cloud)
    attach(cloud, server_id, kept)
    attach(cloud, server_id, doomed, delete_on_termination=True)
    with compute(cloud) as n:
        assert n.delete(f"/servers/{server_id}").status_code == 204
        wait_server_gone(n, server_id)
    with cinder(cloud) as c:
        assert wait(c, f"/volumes/{kept}", "volume", {"available"})["attachments"] == []
        assert wait(c, f"/volumes/{doomed}", "volume", {"deleted"}) is None


def wait_server_gone(n, server_id, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if n.get(f"/servers/{server_id}").status_code == 404:
            return
        time.sleep(0.1)
    raise AssertionError(f"server {server_id} still there")


def test_a_stopped_server_takes_and_gives_back_volumes(cloud, server_id):
    with compute(cloud) as n:
        assert n.post(f"/servers/{server_id}/action", json={"os-stop": None}).status_code == 202
        wait_server(n, server_id, "SHUTOFF")
    volume_id = new_volume(cloud)
    assert attach(cloud, server_id, volume_id)["device"] == "/dev/vdb"
    with nova(cloud) as n:
        assert n.delete(f"/servers/{server_id}/os-volume_attachments/{volume_id}").status_code == 202
