"""Glance v2 metadata behaviour, over real HTTP against a real server process."""

import uuid

import pytest

from tests.conftest import new_image

PATCH_V21 = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
PATCH_V20 = {"Content-Type": "application/openstack-images-v2.0-json-patch"}


def test_versions_document(live_server):
    import httpx
    root = httpx.get(live_server.image_url + "/")
    assert root.status_code == 300
    versions = root.json()["versions"]
    assert versions[0]["status"] == "CURRENT"
    assert versions[0]["links"][0]["href"] == live_server.image_url + "/v2/"
    assert {v["id"] for v in versions} >= {"v2.0", "v2.1"}
    assert httpx.get(live_server.image_url + "/versions").status_code == 200


def test_create_defaults_and_headers(member):
    resp = member.post("/v2/images", json={"name": "n", "color": "blue"})
    assert resp.status_code == 201
    body = resp.json()
    assert body["status"] == "queued"
    assert body["visibility"] == "shared"
    assert body["owner"] == "project-a"
    for key in ("size", "virtual_size", "checksum", "os_hash_algo", "os_hash_value"):
        assert body[key] is None
    assert body["color"] == "blue"
    assert body["self"] == f"/v2/images/{body['id']}"
    assert body["file"] == f"/v2/images/{body['id']}/file"
    assert resp.headers["location"].endswith(f"/v2/images/{body['id']}")
    assert "glance-direct" in resp.headers["openstack-image-import-methods"]
    assert resp.headers["openstack-image-store-ids"]
    assert resp.headers["x-openstack-request-id"].startswith("req-")


def test_create_empty_body(member):
    assert member.post("/v2/images", json={}).status_code == 201


@pytest.mark.parametrize("body,status", [
    ({"disk_format": "bogus"}, 400),
    ({"id": "not-a-uuid"}, 400),
    ({"min_ram": -1}, 400),
    ({"name": 5}, 400),
    ({"protected": "yes"}, 400),
    ({"tags": "notalist"}, 400),
    ({"color": 7}, 400),
    ({"status": "active"}, 403),
    ({"checksum": "abc"}, 403),
    ({"size": 10}, 403),
    ({"os_glance_import_task": "x"}, 403),
    ({"os_freezeframe_workflow_state": "UPLOAD_BEGIN"}, 403),
    ({"visibility": "public"}, 403),
    ({"owner": "someone-else"}, 403),
])
def test_create_rejects(member, body, status):
    resp = member.post("/v2/images", json=body)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["code"] == status
    assert err["message"]
    assert err["request_id"] == resp.headers["x-openstack-request-id"]


def test_create_duplicate_id(member):
    image_id = str(uuid.uuid4())
    assert member.post("/v2/images", json={"id": image_id}).status_code == 201
    assert member.post("/v2/images", json={"id": image_id}).status_code == 409


def test_admin_may_create_public(admin):
    assert new_image(admin, visibility="public")["visibility"] == "public"


def test_show_missing_and_not_uuid(member):
    assert member.get(f"/v2/images/{uuid.uuid4()}").status_code == 404
    assert member.get("/v2/images/not-a-uuid").status_code == 404


def test_patch_v21(member):
    image = new_image(member, tags=["a"], color="blue")
    changes = [
        {"op": "replace", "path": "/name", "value": "renamed"},
        {"op": "add", "path": "/flavor", "value": "small"},
        {"op": "remove", "path": "/color"},
        {"op": "replace", "path": "/tags", "value": ["x", "y"]},
        {"op": "replace", "path": "/min_ram", "value": 512},
    ]
    resp = member.patch(f"/v2/images/{image['id']}", json=changes, headers=PATCH_V21)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["name"] == "renamed" and body["flavor"] == "small" and "color" not in body
    assert sorted(body["tags"]) == ["x", "y"] and body["min_ram"] == 512
    assert member.get(f"/v2/images/{image['id']}").json()["flavor"] == "small"


def test_patch_v20(member):
    image = new_image(member)
    resp = member.patch(f"/v2/images/{image['id']}", json=[{"replace": "/name", "value": "old-style"}],
                        headers=PATCH_V20)
    assert resp.status_code == 200, resp.text
    assert resp.json()["name"] == "old-style"


@pytest.mark.parametrize("changes,status", [
    ([{"op": "remove", "path": "/missing"}], 409),
    ([{"op": "replace", "path": "/missing", "value": "x"}], 409),
    ([{"op": "replace", "path": "/status", "value": "active"}], 403),
    ([{"op": "replace", "path": "/checksum", "value": "x"}], 403),
    ([{"op": "replace", "path": "/os_hash_value", "value": "x"}], 403),
    ([{"op": "replace", "path": "/size", "value": 1}], 403),
    ([{"op": "add", "path": "/os_freezeframe_workflow_progress", "value": "50"}], 403),
    ([{"op": "replace", "path": "/min_disk", "value": "big"}], 400),
    ([{"op": "replace", "path": "/protected", "value": "no"}], 400),
    ([{"op": "move", "path": "/name", "from": "/x"}], 400),
    ([{"op": "add", "path": "/a/b", "value": "x"}], 400),
    ({"op": "add"}, 400),
    ([{"op": "add", "path": "/x", "value": "y", "junk": 1}], 400),
])
def test_patch_rejects(member, changes, status):
    image = new_image(member, name="keep")
    resp = member.patch(f"/v2/images/{image['id']}", json=changes, headers=PATCH_V21)
    assert resp.status_code == status, resp.text
    assert member.get(f"/v2/images/{image['id']}").json()["name"] == "keep"


def test_patch_is_all_or_nothing(member):
    image = new_image(member, name="keep")
    changes = [{"op": "replace", "path": "/name", "value": "changed"},
               {"op": "remove", "path": "/does-not-exist"}]
    assert member.patch(f"/v2/images/{image['id']}", json=changes, headers=PATCH_V21).status_code == 409
    assert member.get(f"/v2/images/{image['id']}").json()["name"] == "keep"


def test_patch_wrong_media_type(member):
    image = new_image(member)
    resp = member.patch(f"/v2/images/{image['id']}", json=[], headers={"Content-Type": "application/json"})
    assert resp.status_code == 415
    assert "openstack-images-v2.1-json-patch" in resp.json()["error"]["message"]
    assert "application/openstack-images-v2.0-json-patch" in resp.headers["accept-patch"]


def test_disk_format_frozen_once_active(member):
    image = new_image(member)
    member.put(f"/v2/images/{image['id']}/file", content=b"abc")
    resp = member.patch(f"/v2/images/{image['id']}", headers=PATCH_V21,
                        json=[{"op": "replace", "path": "/disk_format", "value": "qcow2"}])
    assert resp.status_code == 403


def test_tags(member):
    image = new_image(member)
    assert member.put(f"/v2/images/{image['id']}/tags/blue").status_code == 204
    assert member.put(f"/v2/images/{image['id']}/tags/blue").status_code == 204
    assert member.get(f"/v2/images/{image['id']}").json()["tags"] == ["blue"]
    assert member.delete(f"/v2/images/{image['id']}/tags/blue").status_code == 204
    assert member.delete(f"/v2/images/{image['id']}/tags/blue").status_code == 404


def test_delete_and_protected(member):
    image = new_image(member, protected=True)
    assert member.delete(f"/v2/images/{image['id']}").status_code == 403
    member.patch(f"/v2/images/{image['id']}", headers=PATCH_V21,
                 json=[{"op": "replace", "path": "/protected", "value": False}])
    assert member.delete(f"/v2/images/{image['id']}").status_code == 204
    assert member.get(f"/v2/images/{image['id']}").status_code == 404
    assert member.delete(f"/v2/images/{image['id']}").status_code == 404
    assert member.put(f"/v2/images/{image['id']}/file", content=b"x").status_code == 404


def test_deactivate_reactivate(member):
    image = new_image(member)
    assert member.post(f"/v2/images/{image['id']}/actions/deactivate").status_code == 403  # queued
    member.put(f"/v2/images/{image['id']}/file", content=b"data")
    assert member.post(f"/v2/images/{image['id']}/actions/deactivate").status_code == 204
    assert member.get(f"/v2/images/{image['id']}").json()["status"] == "deactivated"
    assert member.get(f"/v2/images/{image['id']}/file").status_code == 403
    assert member.post(f"/v2/images/{image['id']}/actions/reactivate").status_code == 204
    assert member.get(f"/v2/images/{image['id']}/file").content == b"data"


def test_schemas(member):
    image_schema = member.get("/v2/schemas/image").json()
    assert image_schema["name"] == "image"
    assert "disk_format" in image_schema["properties"]
    assert member.get("/v2/schemas/images").json()["name"] == "images"
    assert member.get("/v2/schemas/members").status_code == 200
    assert member.get("/v2/schemas/bogus").status_code == 404
