"""Identity v3 in `serve`: the generated identity file and clouds.yaml, password and application
credential tokens on every API, expiry, revocation, projects, the catalog — with raw HTTP and
with openstacksdk, as a user would."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import yaml

from tests.conftest import MEMBER_TOKEN, LiveServer, start_server

openstack = pytest.importorskip("openstack", reason="openstacksdk is a test dependency")

EVE_PASSWORD = "eve-password-0123"
AC_SECRET = "app-credential-secret-0123456789"


def clouds(server: LiveServer) -> dict:
    return yaml.safe_load((server.data_dir / "clouds.yaml").read_text())["clouds"]


def password_body(user: str, password: str, project: str | None = None, **scope) -> dict:
    body: dict = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"name": "Default"}, "password": password}}}}}
    if project:
        body["auth"]["scope"] = {"project": {"name": project, "domain": {"name": "Default"}}}
    body["auth"].update(scope)
    return body


def issue(server: LiveServer, body: dict) -> httpx.Response:
    return httpx.post(server.url + "/identity/v3/auth/tokens", json=body, timeout=30)


def token_of(server: LiveServer, cloud: str) -> str:
    auth = clouds(server)[cloud]["auth"]
    resp = issue(server, password_body(auth["username"], auth["password"], auth["project_name"]))
    assert resp.status_code == 201, resp.text
    return resp.headers["X-Subject-Token"]


def until(check, timeout: float = 10.0):
    """Poll ``check`` until it returns something true (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def connect(config_file: Path, cloud: str):
    from openstack import config as os_config
    region = os_config.OpenStackConfig(config_files=[str(config_file)], load_envvars=False).get_one(cloud=cloud)
    return openstack.connection.Connection(config=region)


def connect_password(server: LiveServer, user: str, password: str, project: str):
    return openstack.connect(auth_type="password", region_name="RegionOne", load_yaml_config=False,
                             load_envvars=False, auth={"auth_url": server.url + "/identity", "username": user,
                                                       "password": password, "project_name": project,
                                                       "user_domain_name": "Default",
                                                       "project_domain_name": "Default"})


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    """One `serve` with the generated identity file, to which the test adds a second project
    (user eve) and an application credential of demo's — the running server reads it again."""
    from freezeframe.identity.passwords import hash_secret

    data = tmp_path_factory.mktemp("ff-identity")
    srv = start_server(data)
    path = data / "identity.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["projects"].append({"id": "other", "name": "other"})
    doc["users"].append({"id": "eve", "name": "eve", "password_hash": hash_secret(EVE_PASSWORD),
                         "default_project": "other", "roles": {"other": ["member"]}})
    doc["application_credentials"] = [{"id": "ac-demo", "name": "ci", "user": "demo", "project": "demo",
                                       "roles": ["member"], "secret_hash": hash_secret(AC_SECRET)}]
    path.write_text(yaml.safe_dump(doc))
    assert until(lambda: issue(srv, password_body("eve", EVE_PASSWORD, "other")).status_code == 201)
    yield srv
    srv.stop()


def test_generated_identity_file_and_clouds(server):
    ident = server.data_dir / "identity.yaml"
    assert ident.stat().st_mode & 0o777 == 0o600
    text = ident.read_text()
    assert "scrypt$" in text
    all_clouds = clouds(server)
    assert {"freezeframe", "freezeframe-demo", "freezeframe-service"} <= set(all_clouds)
    admin = all_clouds["freezeframe"]
    assert admin["auth_type"] == "password" and admin["region_name"] == "RegionOne"
    assert admin["auth"]["auth_url"] == server.url + "/identity"
    assert not any(key.endswith("endpoint_override") for key in admin)
    for cloud in all_clouds.values():
        assert cloud["auth"].get("password", "-") not in text    # hashes only in the identity file
    assert (server.data_dir / "clouds.yaml").stat().st_mode & 0o777 == 0o600


def test_version_documents_are_public(server):
    root = httpx.get(server.url + "/identity")       # the auth_url: answered, not redirected
    assert root.status_code == 300
    assert root.json()["versions"]["values"][0]["links"][0]["href"] == server.url + "/identity/v3/"
    assert httpx.get(server.url + "/identity/v3").json()["version"]["id"].startswith("v3")
    for path in ("/compute", "/compute/v2.1"):
        assert httpx.get(server.url + path, follow_redirects=True).status_code == 200
    assert httpx.get(server.url + "/compute/v2.1/servers").status_code == 401
    assert httpx.get(server.url + "/identity/v3/auth/projects").status_code == 401


def test_password_token_works_on_every_api(server):
    resp = issue(server, password_body("demo", clouds(server)["freezeframe-demo"]["auth"]["password"], "demo"))
    assert resp.status_code == 201
    body = resp.json()["token"]
    assert body["user"]["name"] == "demo" and body["project"]["id"] == "demo"
    assert {r["name"] for r in body["roles"]} == {"member", "reader"}
    assert body["methods"] == ["password"] and body["audit_ids"] and body["expires_at"] > body["issued_at"]
    services = {entry["type"]: entry["endpoints"][0]["url"] for entry in body["catalog"]}
    assert services == {"identity": server.url + "/identity", "image": server.url + "/image",
                        "compute": server.url + "/compute/v2.1", "block-storage": server.url + "/volume/v3/demo",
                        "baremetal": server.url + "/baremetal", "freezeframe-workflow": server.url + "/v1"}
    headers = {"X-Auth-Token": resp.headers["X-Subject-Token"]}
    image = httpx.post(server.image_url + "/v2/images", headers=headers,
                       json={"name": "by-token", "disk_format": "raw", "container_format": "bare"})
    assert image.status_code == 201 and image.json()["owner"] == "demo"
    assert httpx.get(server.url + "/compute/v2.1/servers", headers=headers).status_code == 200
    assert httpx.get(services["freezeframe-workflow"] + "/workflows", headers=headers).status_code == 200
    # the static tokens file works beside it
    assert httpx.get(server.image_url + "/v2/images", headers={"X-Auth-Token": MEMBER_TOKEN}).status_code == 200


def test_wrong_password_and_unknown_user_are_the_same_401(server):
    wrong = issue(server, password_body("demo", "not-the-password", "demo"))
    nobody = issue(server, password_body("nobody-here", "not-the-password", "demo"))
    assert wrong.status_code == nobody.status_code == 401
    assert "X-Subject-Token" not in wrong.headers

    def same(resp):
        err = resp.json()["error"]
        return err["code"], err["title"], err["message"]
    assert same(wrong) == same(nobody)
    assert "demo" not in wrong.json()["error"]["message"]
    malformed = httpx.post(server.url + "/identity/v3/auth/tokens", content=b"{", timeout=10)
    assert malformed.status_code == 400


def test_validate_and_revoke(server):
    token = token_of(server, "freezeframe-demo")
    other = token_of(server, "freezeframe-demo")
    url = server.url + "/identity/v3/auth/tokens"
    mine = {"X-Auth-Token": token, "X-Subject-Token": other}
    shown = httpx.get(url, headers=mine)
    assert shown.status_code == 200 and shown.json()["token"]["user"]["id"] == "demo"
    assert httpx.head(url, headers=mine).status_code == 200
    assert httpx.get(url, headers={"X-Auth-Token": token, "X-Subject-Token": "fft_bogus"}).status_code == 404
    # eve may not look at demo's token; the admin may
    eve = issue(server, password_body("eve", EVE_PASSWORD, "other")).headers["X-Subject-Token"]
    assert httpx.get(url, headers={"X-Auth-Token": eve, "X-Subject-Token": other}).status_code == 403
    admin = token_of(server, "freezeframe")
    assert httpx.get(url, headers={"X-Auth-Token": admin, "X-Subject-Token": other}).status_code == 200
    # revoked: gone at once, everywhere in this process
    assert httpx.delete(url, headers=mine).status_code == 204
    assert httpx.get(url, headers={"X-Auth-Token": token, "X-Subject-Token": other}).status_code == 404
    assert httpx.get(server.image_url + "/v2/images", headers={"X-Auth-Token": other}).status_code == 401
    assert httpx.delete(url, headers=mine).status_code == 404
    assert httpx.get(server.image_url + "/v2/images", headers={"X-Auth-Token": token}).status_code == 200


def test_member_cannot_act_in_another_project(server):
    demo_pw = clouds(server)["freezeframe-demo"]["auth"]["password"]
    assert issue(server, password_body("demo", demo_pw, "other")).status_code == 401
    assert issue(server, password_body("eve", EVE_PASSWORD, "demo")).status_code == 401
    assert issue(server, password_body("eve", EVE_PASSWORD, "no-such-project")).status_code == 401
    demo = {"X-Auth-Token": token_of(server, "freezeframe-demo")}
    eve = {"X-Auth-Token": issue(server, password_body("eve", EVE_PASSWORD, "other")).headers["X-Subject-Token"]}
    private = httpx.post(server.image_url + "/v2/images", headers=demo,
                         json={"name": "demo-private", "visibility": "private"}).json()
    assert httpx.get(f"{server.image_url}/v2/images/{private['id']}", headers=eve).status_code == 404
    assert httpx.delete(f"{server.image_url}/v2/images/{private['id']}", headers=eve).status_code == 404
    forged = httpx.post(server.image_url + "/v2/images", headers=eve, json={"name": "x", "owner": "demo"})
    assert forged.status_code == 403
    # headers naming another project are not believed without a service token
    mine = httpx.post(server.image_url + "/v2/images", headers={**eve, "X-Project-Id": "demo"}, json={"name": "y"})
    assert mine.json()["owner"] == "other"
    projects = httpx.get(server.url + "/identity/v3/auth/projects", headers=eve).json()["projects"]
    assert [p["id"] for p in projects] == ["other"]
    assert httpx.get(server.url + "/identity/v3/users/demo/projects", headers=eve).status_code == 403
    assert httpx.get(server.url + "/identity/v3/projects/demo", headers=eve).status_code == 404


def test_service_token_pattern_with_identity_tokens(server):
    demo = token_of(server, "freezeframe-demo")
    service = token_of(server, "freezeframe-service")
    acting = {"X-Service-Token": service, "X-User-Id": "demo", "X-Project-Id": "demo", "X-Roles": "member"}
    resp = httpx.post(server.image_url + "/v2/images", headers=acting, json={"name": "for-demo"})
    assert resp.status_code == 201 and resp.json()["owner"] == "demo"
    both = httpx.get(server.image_url + "/v2/images", headers={"X-Auth-Token": demo, "X-Service-Token": service})
    assert both.status_code == 200
    not_a_service = {**acting, "X-Service-Token": demo}
    assert httpx.get(server.image_url + "/v2/images", headers=not_a_service).status_code == 401


def test_application_credential(server):
    by_id = issue(server, {"auth": {"identity": {"methods": ["application_credential"], "application_credential": {
        "id": "ac-demo", "secret": AC_SECRET}}}})
    assert by_id.status_code == 201, by_id.text
    token = by_id.json()["token"]
    assert token["project"]["id"] == "demo" and token["application_credential"]["id"] == "ac-demo"
    assert {r["name"] for r in token["roles"]} == {"member", "reader"}
    by_name = issue(server, {"auth": {"identity": {"methods": ["application_credential"], "application_credential": {
        "name": "ci", "user": {"name": "demo", "domain": {"name": "Default"}}, "secret": AC_SECRET}}}})
    assert by_name.status_code == 201
    wrong = issue(server, {"auth": {"identity": {"methods": ["application_credential"], "application_credential": {
        "id": "ac-demo", "secret": "wrong"}}}})
    assert wrong.status_code == 401
    headers = {"X-Auth-Token": by_id.headers["X-Subject-Token"]}
    assert httpx.get(server.image_url + "/v2/images", headers=headers).status_code == 200

    config = server.data_dir.parent / "ac-clouds.yaml"
    config.write_text(yaml.safe_dump({"clouds": {"ci": {
        "auth_type": "v3applicationcredential", "region_name": "RegionOne",
        "auth": {"auth_url": server.url + "/identity", "application_credential_id": "ac-demo",
                 "application_credential_secret": AC_SECRET}}}}))
    conn = connect(config, "ci")
    assert conn.current_project_id == "demo"
    assert isinstance(list(conn.image.images()), list)
    assert list(conn.compute.servers()) is not None


def test_openstacksdk_with_the_generated_clouds_yaml(server, tmp_path):
    conn = connect(server.data_dir / "clouds.yaml", "freezeframe-demo")
    assert conn.current_project_id == "demo"
    assert conn.image.get_endpoint().rstrip("/").startswith(server.url + "/image")
    assert conn.compute.get_endpoint().rstrip("/") == server.url + "/compute/v2.1"
    path = tmp_path / "disk.raw"
    path.write_bytes(b"\x01" * (1 << 20))
    image = conn.image.create_image(name="sdk-identity", filename=str(path), disk_format="raw",
                                    container_format="bare", wait=True, use_import=False)
    assert conn.image.get_image(image.id).status == "active"
    assert image.id in [i.id for i in conn.image.images()]
    flavor = next(iter(conn.compute.flavors()))
    created = conn.compute.create_server(name="sdk-server", image_id=image.id, flavor_id=flavor.id,
                                         networks="none")
    conn.compute.wait_for_server(created, wait=30)
    assert "sdk-server" in [s.name for s in conn.compute.servers()]
    admin = connect(server.data_dir / "clouds.yaml", "freezeframe")
    assert admin.current_project_id == "admin"
    assert "sdk-server" in [s.name for s in admin.compute.servers(all_projects=True)]
    eve = connect_password(server, "eve", EVE_PASSWORD, "other")
    assert "sdk-server" not in [s.name for s in eve.compute.servers()]      # another project's


def test_tokens_expire_and_survive_a_restart(tmp_path):
    srv = start_server(tmp_path / "ff", env={"FREEZEFRAME_IDENTITY__TOKEN_EXPIRATION": "1.5"})
    try:
        short = token_of(srv, "freezeframe-demo")
        headers = {"X-Auth-Token": short}
        assert httpx.get(srv.image_url + "/v2/images", headers=headers).status_code == 200
        assert until(lambda: httpx.get(srv.image_url + "/v2/images", headers=headers).status_code == 401, 10)
    finally:
        srv.stop()
    srv = start_server(tmp_path / "ff")                 # the default expiry (1 h) now
    try:
        lasting = token_of(srv, "freezeframe-demo")
        srv.stop()
        srv = start_server(tmp_path / "ff", port=int(srv.url.rsplit(":", 1)[1]))
        # same database, new process: the token still works (and the clouds kept their passwords)
        assert httpx.get(srv.image_url + "/v2/images", headers={"X-Auth-Token": lasting}).status_code == 200
        assert token_of(srv, "freezeframe-demo")
    finally:
        srv.stop()


def test_freezeframe_cli_with_the_generated_clouds_yaml(server):
    """The README's `ff` commands with OS_CLOUD=freezeframe: the CLI logs in through the identity
    service and takes the image and compute endpoints from the catalog."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(OS_CLIENT_CONFIG_FILE=str(server.data_dir / "clouds.yaml"), OS_CLOUD="freezeframe-demo",
               HOME=str(server.data_dir))
    httpx.post(server.image_url + "/v2/images", headers={"X-Auth-Token": token_of(server, "freezeframe-demo")},
               json={"name": "seen-by-the-cli"})
    for args, expected in ((["image", "list"], "seen-by-the-cli"), (["server", "list"], "")):
        out = subprocess.run([sys.executable, "-m", "freezeframe", *args], env=env, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert expected in out.stdout
    wrong = dict(env, OS_CLIENT_CONFIG_FILE=str(server.data_dir / "bad-clouds.yaml"), OS_CLOUD="bad")
    (server.data_dir / "bad-clouds.yaml").write_text(yaml.safe_dump({"clouds": {"bad": {
        "auth_type": "password", "auth": {"auth_url": server.url + "/identity", "username": "demo",
                                          "password": "wrong", "project_name": "demo"}}}}))
    out = subprocess.run([sys.executable, "-m", "freezeframe", "image", "list"], env=wrong, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "refused the credentials (401" in out.stderr
