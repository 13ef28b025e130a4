"""Tokens, noauth, project isolation, visibility, members and the reserved namespaces."""

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, new_image, start_server

PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}


def test_missing_and_bad_token_are_401(live_server):
    with live_server.client(token=None) as anon:
        resp = anon.get("/v2/images")
        assert resp.status_code == 401
        assert "X-Auth-Token" in resp.json()["error"]["message"]
        assert resp.headers["www-authenticate"]
    with live_server.client(token="wrong") as bad:
        assert bad.get("/v2/images").status_code == 401


def test_versions_and_healthcheck_need_no_token(live_server):
    assert httpx.get(live_server.image_url + "/").status_code == 300
    resp = httpx.get(live_server.url + "/healthcheck")
    assert resp.status_code == 200 and resp.text == "OK"
    # The detailed health check is for admins (issue 7): it needs a token, and an admin's.
    assert httpx.get(live_server.url + "/healthcheck?detailed").status_code == 401
    assert httpx.get(live_server.url + "/healthcheck?detailed",
                     headers={"X-Auth-Token": live_server.member_token}).status_code == 403
    detailed = httpx.get(live_server.url + "/healthcheck?detailed",
                         headers={"X-Auth-Token": live_server.admin_token}).json()
    assert "image_transitions" in detailed and "pools" in detailed


def test_private_images_are_invisible_to_other_projects(member, other):
    image = new_image(member, visibility="private")
    for call in (lambda: other.get(f"/v2/images/{image['id']}"),
                 lambda: other.delete(f"/v2/images/{image['id']}"),
                 lambda: other.put(f"/v2/images/{image['id']}/file", content=b"x"),
                 lambda: other.get(f"/v2/images/{image['id']}/file"),
                 lambda: other.patch(f"/v2/images/{image['id']}", headers=PATCH,
                                     json=[{"op": "replace", "path": "/name", "value": "mine"}])):
        assert call().status_code == 404
    listed = [i["id"] for i in other.get("/v2/images", params={"limit": 1000}).json()["images"]]
    assert image["id"] not in listed
    assert member.get(f"/v2/images/{image['id']}").json()["name"] == "test"


def test_admin_sees_and_manages_everything(member, admin):
    image = new_image(member, visibility="private")
    assert admin.get(f"/v2/images/{image['id']}").status_code == 200
    assert admin.delete(f"/v2/images/{image['id']}").status_code == 204


def test_public_images_visible_but_not_writable(admin, other):
    image = new_image(admin, visibility="public")
    assert other.get(f"/v2/images/{image['id']}").status_code == 200
    assert image["id"] in [i["id"] for i in other.get("/v2/images", params={"visibility": "public", "limit": 1000})
                           .json()["images"]]
    assert other.delete(f"/v2/images/{image['id']}").status_code == 403
    assert other.patch(f"/v2/images/{image['id']}", headers=PATCH,
                       json=[{"op": "replace", "path": "/name", "value": "x"}]).status_code == 403


def test_member_cannot_publicize(member):
    image = new_image(member)
    resp = member.patch(f"/v2/images/{image['id']}", headers=PATCH,
                        json=[{"op": "replace", "path": "/visibility", "value": "public"}])
    assert resp.status_code == 403


def test_community_images(member, other):
    image = new_image(member, visibility="community")
    assert other.get(f"/v2/images/{image['id']}").status_code == 200
    default = [i["id"] for i in other.get("/v2/images", params={"limit": 1000}).json()["images"]]
    assert image["id"] not in default
    community = [i["id"] for i in other.get("/v2/images", params={"visibility": "community", "limit": 1000})
                 .json()["images"]]
    assert image["id"] in community


def test_sharing_with_members(member, other):
    image = new_image(member)  # visibility shared by default
    assert other.get(f"/v2/images/{image['id']}").status_code == 404
    resp = member.post(f"/v2/images/{image['id']}/members", json={"member": "project-b"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "pending"
    assert member.post(f"/v2/images/{image['id']}/members", json={"member": "project-b"}).status_code == 409
    # visible by id, but not listed until accepted
    assert other.get(f"/v2/images/{image['id']}").status_code == 200
    listed = lambda **p: [i["id"] for i in other.get("/v2/images", params={"limit": 1000, **p}).json()["images"]]
    assert image["id"] not in listed()
    assert image["id"] in listed(member_status="pending")
    # only the member accepts; the owner cannot accept for it
    assert member.put(f"/v2/images/{image['id']}/members/project-b", json={"status": "accepted"}).status_code == 403
    assert other.put(f"/v2/images/{image['id']}/members/project-b", json={"status": "accepted"}).status_code == 200
    assert image["id"] in listed()
    assert other.get(f"/v2/images/{image['id']}/members").json()["members"][0]["member_id"] == "project-b"
    assert other.put(f"/v2/images/{image['id']}/members/project-b", json={"status": "maybe"}).status_code == 400
    assert other.delete(f"/v2/images/{image['id']}/members/project-b").status_code == 403
    assert member.delete(f"/v2/images/{image['id']}/members/project-b").status_code == 204
    assert other.get(f"/v2/images/{image['id']}").status_code == 404


@pytest.mark.parametrize("body", [{}, {"member": ""}, {"member": 5}, {"member": "x", "extra": 1}, []])
def test_bad_member_bodies(member, body):
    image = new_image(member)
    assert member.post(f"/v2/images/{image['id']}/members", json=body).status_code == 400


def test_members_only_for_shared_images(member):
    image = new_image(member, visibility="private")
    assert member.post(f"/v2/images/{image['id']}/members", json={"member": "project-b"}).status_code == 403


def test_workflow_properties_only_for_the_service_role(live_server, member):
    image = new_image(member)
    change = [{"op": "add", "path": "/os_freezeframe_workflow_state", "value": "UPLOAD_BEGIN"}]
    with live_server.client(ADMIN_TOKEN) as admin:
        assert admin.patch(f"/v2/images/{image['id']}", headers=PATCH, json=change).status_code == 403
    with live_server.service_client() as service:           # the service, acting for the owner
        resp = service.patch(f"/v2/images/{image['id']}", headers=PATCH, json=change)
        assert resp.status_code == 200, resp.text
    shown = member.get(f"/v2/images/{image['id']}").json()
    assert shown["os_freezeframe_workflow_state"] == "UPLOAD_BEGIN"
    # the owner can neither change nor remove it
    for op in ({"op": "replace", "path": "/os_freezeframe_workflow_state", "value": "IMAGE_ACTIVE"},
               {"op": "remove", "path": "/os_freezeframe_workflow_state"}):
        assert member.patch(f"/v2/images/{image['id']}", headers=PATCH, json=[op]).status_code == 403
    assert member.get(f"/v2/images/{image['id']}").json()["os_freezeframe_workflow_state"] == "UPLOAD_BEGIN"


def test_noauth_mode_is_explicit(tmp_path):
    server = start_server(tmp_path / "noauth", auth="noauth")
    try:
        with httpx.Client(base_url=server.image_url) as anon:
            resp = anon.post("/v2/images", json={"name": "dev"})
            assert resp.status_code == 201
            assert resp.json()["owner"] == "admin"
            as_b = anon.post("/v2/images", json={"name": "dev"}, headers={"X-Project-Id": "proj-b"})
            assert as_b.json()["owner"] == "proj-b"
        assert "authentication is OFF" in server.log()
    finally:
        server.stop()


def test_default_tokens_file_is_created(tmp_path):
    import json, subprocess, sys, time
    from tests.conftest import free_port
    port = free_port()
    data = tmp_path / "fresh"
    proc = subprocess.Popen([sys.executable, "-m", "freezeframe", "serve", "--data-dir", str(data),
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthcheck", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        tokens = json.loads((data / "tokens.json").read_text())
        assert (data / "tokens.json").stat().st_mode & 0o777 == 0o600
        admin_token = next(t for t, ident in tokens.items() if "admin" in ident["roles"])
        resp = httpx.get(f"http://127.0.0.1:{port}/image/v2/images", headers={"X-Auth-Token": admin_token})
        assert resp.status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/image/v2/images").status_code == 401
        import yaml
        clouds = yaml.safe_load((data / "clouds.yaml").read_text())["clouds"]
        # the default cloud logs in through the identity service; the tokens have clouds of their own
        assert clouds["freezeframe"]["auth_type"] == "password"
        assert clouds["freezeframe"]["auth"]["auth_url"] == f"http://127.0.0.1:{port}/identity"
        assert clouds["freezeframe-token"]["auth"] == {"endpoint": f"http://127.0.0.1:{port}/image",
                                                       "token": admin_token}
        assert (data / "clouds.yaml").stat().st_mode & 0o777 == 0o600
    finally:
        proc.terminate()
        proc.wait(30)
