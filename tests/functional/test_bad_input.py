"""Bad input gets a clear 4xx with the request id, never a 500, and changes nothing."""

import socket
import uuid

import pytest

from tests.conftest import new_image


def assert_clear_error(resp, status):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["code"] == status and len(err["message"]) > 5
    assert err["request_id"] == resp.headers["x-openstack-request-id"]


@pytest.mark.parametrize("raw", [b"{", b"not json", b"\xff\xfe", b"[1,2", b"nul"])
def test_malformed_json(member, raw):
    resp = member.post("/v2/images", content=raw, headers={"Content-Type": "application/json"})
    assert_clear_error(resp, 400)


@pytest.mark.parametrize("body", [[], "string", 5, None])
def test_json_that_is_not_an_object(member, body):
    import json
    resp = member.post("/v2/images", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert_clear_error(resp, 400)


def test_wrong_media_type_for_create(member):
    assert_clear_error(member.post("/v2/images", content=b"name=x",
                                   headers={"Content-Type": "application/x-www-form-urlencoded"}), 415)


def test_oversized_json_body(member):
    big = b'{"name": "' + b"a" * (2 << 20) + b'"}'
    assert_clear_error(member.post("/v2/images", content=big, headers={"Content-Type": "application/json"}), 413)


def test_too_many_properties_and_tags(member):
    assert_clear_error(member.post("/v2/images", json={f"p{i}": "v" for i in range(200)}), 413)
    assert_clear_error(member.post("/v2/images", json={"tags": [f"t{i}" for i in range(200)]}), 413)


def test_long_values(member):
    assert_clear_error(member.post("/v2/images", json={"name": "n" * 256}), 400)
    assert_clear_error(member.post("/v2/images", json={"k" * 256: "v"}), 400)
    assert_clear_error(member.post("/v2/images", json={"tags": ["t" * 256]}), 400)


def test_huge_headers_get_431(member):
    resp = member.get("/v2/images", headers={"X-Junk": "j" * 40000})
    assert_clear_error(resp, 431)


def test_bad_content_length(live_server, member):
    image = new_image(member)
    host, port = live_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall((f"PUT /image/v2/images/{image['id']}/file HTTP/1.1\r\nHost: x\r\n"
                      f"X-Auth-Token: {live_server.member_token}\r\nContent-Length: abc\r\n\r\n").encode())
        sock.settimeout(10)
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400")
    assert member.get(f"/v2/images/{image['id']}").json()["status"] == "queued"


def test_unknown_routes_and_methods(member):
    assert_clear_error(member.get("/v2/nothing"), 404)
    resp = member.request("POST", f"/v2/images/{uuid.uuid4()}")
    assert resp.status_code == 405
    assert resp.json()["error"]["request_id"]


def test_bad_tag_and_member_paths(member):
    image = new_image(member)
    assert_clear_error(member.put(f"/v2/images/{image['id']}/tags/" + "t" * 300), 400)
    assert_clear_error(member.get(f"/v2/images/{image['id']}/members/nobody"), 404)


def test_no_500_in_server_log(live_server):
    """Runs last in this module: nothing above produced an unexpected error."""
    assert "unexpected error" not in live_server.log()
    assert " 500 " not in live_server.log()
