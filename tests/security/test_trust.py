"""A service acts for a user with that user's rights, never more (issue 7, items 1-3).

Driven against a real server on SQLite and on PostgreSQL (the session's ``live_server``, fake
virt driver) with tokens for two projects and every role. Each test is one defect found by
attacking the compute service, which used to act with an all-powerful service token on what
the user sent.
"""

from __future__ import annotations

import os
import time
import uuid

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, MEMBER_TOKEN, OTHER_TOKEN, READER_TOKEN, new_image
from tests.functional.test_compute_snapshot import NOVA, wait_server, wait_workflow
from tests.nova_faults import nova_fault

OCTET = {"Content-Type": "application/octet-stream"}
PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}


def nova(server, token=MEMBER_TOKEN) -> httpx.Client:
    return httpx.Client(base_url=server.url + "/compute/v2.1", timeout=60,
                        headers={"X-Auth-Token": token, **NOVA})


def active_image(server, token=MEMBER_TOKEN, data: bytes | None = None, **attrs) -> dict:
    with server.client(token) as images:
        image = new_image(images, name=attrs.pop("name", "img"), **attrs)
        resp = images.put(f"/v2/images/{image['id']}/file", content=data or os.urandom(64 << 10), headers=OCTET)
        assert resp.status_code == 204, resp.text
        return images.get(f"/v2/images/{image['id']}").json()


def server_create(server, image_id, token=MEMBER_TOKEN, name="vm") -> httpx.Response:
    with nova(server, token) as c:
        return c.post("/servers", json={"server": {"name": name, "imageRef": image_id, "flavorRef": "1"}})


def booted(server, token=MEMBER_TOKEN) -> str:
    image = active_image(server, token)
    resp = server_create(server, image["id"], token)
    assert resp.status_code == 202, resp.text
    server_id = resp.json()["server"]["id"]
    with nova(server, token) as c:
        wait_server(c, server_id, "ACTIVE")
    return server_id


def names_of(server, token, name) -> list[dict]:
    with server.client(token) as images:
        return [i for i in images.get("/v2/images", params={"name": name}).json()["images"]]


# -- path traversal and cross-project boot images ------------------------------------------


def test_kernel_id_cannot_write_outside_the_base_cache(live_server):
    """``kernel_id = <id>#/../../../x`` used to write the kernel's bytes to x as root."""
    kernel = active_image(live_server, name="kernel")
    escaped = f"escaped-{uuid.uuid4().hex[:8]}"
    root = active_image(live_server, name="root", kernel_id=f"{kernel['id']}#/../../../{escaped}")
    with nova(live_server) as c:
        before = len(c.get("/servers").json()["servers"])
    resp = server_create(live_server, root["id"])
    assert resp.status_code == 400, resp.text
    assert "kernel_id" in nova_fault(resp)["message"]
    time.sleep(0.5)
    assert not (live_server.data_dir / escaped).exists()
    assert not list(live_server.data_dir.rglob(f"{escaped}*"))
    with nova(live_server) as c:      # no server was left half-made
        assert len(c.get("/servers").json()["servers"]) == before


def test_boot_images_must_be_visible_to_the_servers_project(live_server):
    """A kernel_id naming another project's private image used to boot with its data."""
    private = active_image(live_server, OTHER_TOKEN, name="theirs", visibility="private")
    root = active_image(live_server, name="root", kernel_id=private["id"])
    resp = server_create(live_server, root["id"])
    assert resp.status_code == 400, resp.text
    # ... and the error does not tell whether an image exists: the same as for a random id
    nowhere = str(uuid.uuid4())
    random_root = active_image(live_server, name="root", kernel_id=nowhere)
    other = server_create(live_server, random_root["id"])
    assert other.status_code == 400

    def shape(response, ref):
        return nova_fault(response)["message"].replace(ref, "ID")
    assert shape(resp, private["id"]) == shape(other, nowhere)
    # imageRef itself: another project's private image is "not found" like a random id
    theirs, missing = server_create(live_server, private["id"]), server_create(live_server, nowhere)
    assert theirs.status_code == missing.status_code == 400
    assert shape(theirs, private["id"]) == shape(missing, nowhere)


def test_base_cache_is_named_by_the_canonical_id_only(live_server):
    """An imageRef is never used as given: a URL form works, anything else is a 400."""
    image = active_image(live_server)
    for ref in ("", "#", "?x", "../../etc", f"{image['id']}/..", f"{image['id']}#x", "\u0000"):
        resp = server_create(live_server, ref)
        assert resp.status_code == 400, (ref, resp.text)
    resp = server_create(live_server, f"http://example.invalid/images/{image['id']}")
    assert resp.status_code == 202, resp.text
    with nova(live_server) as c:
        wait_server(c, resp.json()["server"]["id"], "ACTIVE")
    assert (live_server.data_dir / "instances" / "_base" / image["id"]).exists()


# -- createImage / createBackup metadata ---------------------------------------------------


@pytest.mark.parametrize("metadata,status", [
    ({"visibility": "public"}, 400),
    ({"owner": "project-b"}, 400),
    ({"os_freezeframe_workflow_state": "IMAGE_ACTIVE"}, 403),
    ({"os_glance_importing_to_stores": "x"}, 403),
    ({"instance_uuid": str(uuid.uuid4())}, 400),
    ({"image_type": "backup"}, 400),
])
def test_snapshot_metadata_gets_the_users_own_checks(live_server, metadata, status):
    server_id = booted(live_server)
    name = f"snap-{uuid.uuid4().hex[:8]}"
    with nova(live_server) as c:
        resp = c.post(f"/servers/{server_id}/action", json={"createImage": {"name": name, "metadata": metadata}})
        assert resp.status_code == status, resp.text
        assert c.get(f"/servers/{server_id}").json()["server"]["OS-EXT-STS:task_state"] is None
    with live_server.client(ADMIN_TOKEN) as admin:
        assert admin.get("/v2/images", params={"name": name}).json()["images"] == []


def test_snapshot_is_owned_by_the_users_project_and_private(live_server):
    server_id = booted(live_server)
    with nova(live_server) as c:
        resp = c.post(f"/servers/{server_id}/action", json={"createImage": {"name": "mine",
                                                                              "metadata": {"purpose": "x"}}})
        assert resp.status_code == 202, resp.text
    wait_workflow(live_server, resp.headers["x-freezeframe-workflow-id"], {"IMAGE_ACTIVE"})
    with live_server.client() as images:
        image = images.get(f"/v2/images/{resp.json()['image_id']}").json()
        assert image["owner"] == "project-a" and image["visibility"] == "private"
        assert image["purpose"] == "x" and image["instance_uuid"] == server_id
        assert images.delete(f"/v2/images/{image['id']}").status_code == 204    # theirs to delete


def test_backup_rotation_counts_only_the_projects_own_backups(live_server):
    """A "backup" image forged by another project with this server's instance_uuid used to make
    rotation keep the fake and delete a real backup (rotation listed images as admin)."""
    server_id = booted(live_server)
    btype = f"daily-{uuid.uuid4().hex[:6]}"

    def backup(name):
        with nova(live_server) as c:
            resp = c.post(f"/servers/{server_id}/action",
                          json={"createBackup": {"name": name, "backup_type": btype, "rotation": 2}})
            assert resp.status_code == 202, resp.text
        wait_workflow(live_server, resp.headers["x-freezeframe-workflow-id"], {"IMAGE_ACTIVE"})
        return resp.json()["image_id"]

    first = backup("b1")
    with live_server.client(OTHER_TOKEN) as other:      # project-b forges one (shared: an admin sees it)
        forged = new_image(other, name="forged", visibility="shared", image_type="backup",
                           backup_type=btype, instance_uuid=server_id)
    second = backup("b2")
    with live_server.client() as images:
        assert images.get(f"/v2/images/{first}").status_code == 200     # kept: 2 real backups
        assert images.get(f"/v2/images/{second}").status_code == 200
    with live_server.client(OTHER_TOKEN) as other:
        assert other.get(f"/v2/images/{forged['id']}").status_code == 200   # not theirs to delete
    third = backup("b3")
    with live_server.client() as images:
        assert images.get(f"/v2/images/{first}").status_code == 404     # the oldest real one rotated out
        assert images.get(f"/v2/images/{second}").status_code == 200
        assert images.get(f"/v2/images/{third}").status_code == 200


# -- roles ----------------------------------------------------------------------------------


def test_reader_reads_but_cannot_change_images(live_server):
    image = new_image(live_server.client(), name="readable")
    with live_server.client(READER_TOKEN) as reader:
        assert reader.get("/v2/images").status_code == 200
        assert reader.get(f"/v2/images/{image['id']}").status_code == 200
        assert reader.post("/v2/images", json={"name": "x", "disk_format": "raw",
                                               "container_format": "bare"}).status_code == 403
        assert reader.put(f"/v2/images/{image['id']}/file", content=b"x", headers=OCTET).status_code == 403
        assert reader.patch(f"/v2/images/{image['id']}", headers=PATCH,
                            json=[{"op": "add", "path": "/k", "value": "v"}]).status_code == 403
        assert reader.put(f"/v2/images/{image['id']}/tags/t").status_code == 403
        assert reader.delete(f"/v2/images/{image['id']}").status_code == 403
    with live_server.client() as member:
        shown = member.get(f"/v2/images/{image['id']}").json()
        assert shown["status"] == "queued" and "k" not in shown and shown["tags"] == []


def test_reader_reads_but_cannot_change_servers_or_workflows(live_server):
    server_id = booted(live_server)
    image = active_image(live_server)
    with nova(live_server, READER_TOKEN) as c:
        assert c.get("/servers").status_code == 200
        assert c.get(f"/servers/{server_id}").status_code == 200
        assert c.post("/servers", json={"server": {"name": "r", "imageRef": image["id"],
                                                   "flavorRef": "1"}}).status_code == 403
        for action in ({"os-stop": None}, {"createImage": {"name": "r"}},
                       {"createBackup": {"name": "r", "backup_type": "d", "rotation": 1}}):
            assert c.post(f"/servers/{server_id}/action", json=action).status_code == 403, action
        assert c.delete(f"/servers/{server_id}").status_code == 403
    with nova(live_server) as c:
        resp = c.post(f"/servers/{server_id}/action", json={"createImage": {"name": "by-member"}})
        assert resp.status_code == 202
    workflow_id = resp.headers["x-freezeframe-workflow-id"]
    with httpx.Client(base_url=live_server.url, headers={"X-Auth-Token": READER_TOKEN}) as wf:
        assert wf.get("/v1/workflows").status_code == 200
        assert wf.get(f"/v1/workflows/{workflow_id}").status_code == 200
        assert wf.delete(f"/v1/workflows/{workflow_id}").status_code == 403
    wait_workflow(live_server, workflow_id, {"IMAGE_ACTIVE"})
    with nova(live_server) as c:
        assert c.get(f"/servers/{server_id}").json()["server"]["status"] == "ACTIVE"


def test_kill_is_for_the_service_acting_for_the_owner(live_server):
    image = new_image(live_server.client(), name="killable")
    kill = f"/v2/images/{image['id']}/actions/kill"
    with live_server.client() as member:                       # a user: not a service
        assert member.post(kill).status_code == 403
    with live_server.service_client(OTHER_TOKEN) as service:   # the service, for another project
        assert service.post(kill).status_code == 404
    with live_server.client() as member:
        assert member.get(f"/v2/images/{image['id']}").json()["status"] == "queued"
    with live_server.service_client() as service:              # the service, for the owner
        assert service.post(kill).status_code == 204
    with live_server.client() as member:
        assert member.get(f"/v2/images/{image['id']}").json()["status"] == "killed"


def test_identity_headers_need_a_service_token(live_server):
    """X-User-Id/X-Project-Id/X-Roles are only believed beside a valid service token."""
    with live_server.client(headers={"X-Project-Id": "project-b", "X-Roles": "admin",
                                     "X-User-Id": "mallory"}) as c:
        mine = new_image(c, name="who-am-i")
        assert mine["owner"] == "project-a"          # the token's project, not the header's
    bogus = {"X-Service-Token": MEMBER_TOKEN, "X-User-Id": "mallory", "X-Project-Id": "project-b",
             "X-Roles": "admin"}
    with httpx.Client(base_url=live_server.image_url, headers=bogus) as c:
        assert c.get("/v2/images").status_code == 401   # a member's token is no service token
    acting = {"X-Service-Token": live_server.service_token, "X-User-Id": "x", "X-Project-Id": "project-b",
              "X-Roles": "reader"}
    with httpx.Client(base_url=live_server.image_url, headers=acting) as c:
        assert c.post("/v2/images", json={"name": "x"}).status_code == 403   # the user's role decides
        assert c.get(f"/v2/images/{mine['id']}").status_code == 404         # and the user's project


def test_member_cannot_create_an_image_for_nobody_or_another_project(member):
    for owner in (None, "project-b"):
        resp = member.post("/v2/images", json={"name": "x", "owner": owner})
        assert resp.status_code == 403, resp.text


def test_operator_policy_file_overrides_a_default(tmp_path):
    """Rules are oslo.policy's: an operator's file changes one without touching the others."""
    from tests.conftest import start_server
    (tmp_path / "ff").mkdir()
    (tmp_path / "ff" / "policy.yaml").write_text('"add_image": "role:admin"\n')
    server = start_server(tmp_path / "ff")
    try:
        with server.client() as member:
            assert member.post("/v2/images", json={"name": "x"}).status_code == 403
            assert member.get("/v2/images").status_code == 200
        with server.client(ADMIN_TOKEN) as admin:
            assert admin.post("/v2/images", json={"name": "x"}).status_code == 201
    finally:
        server.stop()


def test_server_metadata_has_novas_limits(live_server):
    """Keys of 1-255 and values of at most 255 characters (400), at most 128 items (403)."""
    image = active_image(live_server)
    with nova(live_server) as c:
        before = len(c.get("/servers").json()["servers"])
        for metadata, status in (({"k" * 256: "v"}, 400), ({"": "v"}, 400), ({"k": "v" * 256}, 400),
                                 ({f"k{i}": "v" for i in range(129)}, 403), ({"k": 1}, 400)):
            resp = c.post("/servers", json={"server": {"name": "m", "imageRef": image["id"], "flavorRef": "1",
                                                       "metadata": metadata}})
            assert resp.status_code == status, (list(metadata)[:1], resp.text)
            assert nova_fault(resp)["request_id"]
        assert len(c.get("/servers").json()["servers"]) == before          # nothing half-made
        resp = c.post("/servers", json={"server": {"name": "m", "imageRef": image["id"], "flavorRef": "1",
                                                   "metadata": {f"k{i}": "v" * 255 for i in range(128)}}})
        assert resp.status_code == 202, resp.text
        wait_server(c, resp.json()["server"]["id"], "ACTIVE")
