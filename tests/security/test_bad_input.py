"""Bad input is a clear 4xx at the edge, never a 500, on SQLite and PostgreSQL alike (issue 7,
item 5): one test per class of defect found by hand, each with its relatives. Every answer is a
JSON error carrying the request id, and nothing is half-written (listings still work, no image
or server is left behind).

The classes: deeply nested JSON; integers of thousands of digits (bodies, headers, query
parameters); non-ASCII digits where a number is expected; lone surrogates and NUL in text; NUL
and invalid UTF-8 in URL paths and query strings; malformed ``imageRef``; ``adopt`` with a
non-object body; a client that disconnects mid-upload (an INFO line, not an ERROR and a 500).
"""

from __future__ import annotations

import json
import socket
import time
import uuid

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, MEMBER_TOKEN, start_server
from tests.nova_faults import nova_fault

NOVA = {"X-OpenStack-Nova-API-Version": "2.45"}
HUGE = "9" * 5000                       # past int()'s 4300-digit limit
OVER_INT64 = str(1 << 63)               # the first integer a BIGINT column cannot hold
JSON = {"Content-Type": "application/json"}
PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}


def client(live_server, token: str = MEMBER_TOKEN) -> httpx.Client:
    return httpx.Client(base_url=live_server.url, headers={"X-Auth-Token": token, **NOVA}, timeout=60)


@pytest.fixture
def api(live_server):
    with client(live_server) as c:
        yield c


@pytest.fixture
def admin_api(live_server):
    with client(live_server, ADMIN_TOKEN) as c:
        yield c


def assert_clear_error(resp: httpx.Response, *statuses: int) -> None:
    """A 4xx (one of ``statuses``) with a JSON error body naming the request id."""
    assert resp.status_code in statuses, f"{resp.request.method} {resp.request.url}: {resp.status_code} {resp.text}"
    err = error_of(resp)
    assert err["code"] == resp.status_code and len(err["message"]) > 5
    assert err["request_id"] == resp.headers["x-openstack-request-id"]


def error_of(resp: httpx.Response) -> dict:
    """The error object: ours (``{"error": {...}}``, also the edge's, before any API: a malformed
    URL or header, authentication — keystonemiddleware's shape), or Nova's/Cinder's fault (the
    compute API's: ``{"<faultName>": {...}}``)."""
    body = resp.json()
    if resp.request.url.path.startswith("/compute/") and "error" not in body:
        return nova_fault(resp)
    return body["error"] if "error" in body else next(iter(body.values()))


def image_ids(api: httpx.Client) -> set[str]:
    resp = api.get("/image/v2/images", params={"limit": "1000"})
    assert resp.status_code == 200, resp.text
    return {i["id"] for i in resp.json()["images"]}


def server_ids(api: httpx.Client) -> set[str]:
    resp = api.get("/compute/v2.1/servers/detail")
    assert resp.status_code == 200, resp.text
    return {s["id"] for s in resp.json()["servers"]}


def new_image(api: httpx.Client, **attrs) -> dict:
    resp = api.post("/image/v2/images", json={"name": "bad-input", "disk_format": "raw",
                                              "container_format": "bare", **attrs})
    assert resp.status_code == 201, resp.text
    return resp.json()


@pytest.fixture(scope="module")
def booted(live_server):
    """An active image and an ACTIVE server (fake driver) of the member's project."""
    with client(live_server) as api:
        image = new_image(api)
        resp = api.put(f"/image/v2/images/{image['id']}/file", content=bytes(1 << 16) + b"data" * 1024,
                       headers={"Content-Type": "application/octet-stream"})
        assert resp.status_code == 204, resp.text
        resp = api.post("/compute/v2.1/servers", json={"server": {"name": "bad-input-vm", "imageRef": image["id"],
                                                                  "flavorRef": "1"}})
        assert resp.status_code == 202, resp.text
        server_id = resp.json()["server"]["id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            server = api.get(f"/compute/v2.1/servers/{server_id}").json()["server"]
            if server["status"] == "ACTIVE" and server["OS-EXT-STS:task_state"] is None:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"server never became ACTIVE: {server}")
    return {"image_id": image["id"], "server_id": server_id}


def assert_server_untouched(api: httpx.Client, server_id: str) -> None:
    server = api.get(f"/compute/v2.1/servers/{server_id}").json()["server"]
    assert server["status"] == "ACTIVE" and server["OS-EXT-STS:task_state"] is None, server


# -- deeply nested JSON ---------------------------------------------------------------------------

def test_deeply_nested_json_is_400(api, booted):
    """A body nested 100,000 deep raised RecursionError (500); now any body deeper than 32 levels
    is a 400 before it is looked at, for every API that takes JSON. NaN/Infinity are not JSON."""
    before_images, before_servers = image_ids(api), server_ids(api)
    image_id, server_id = booted["image_id"], booted["server_id"]
    deep = b"[" * 100_000 + b"]" * 100_000
    just_too_deep = b"[" * 33 + b"]" * 33
    for value in (deep, just_too_deep):
        assert_clear_error(api.post("/image/v2/images", content=b'{"name": "x", "p": ' + value + b"}",
                                    headers=JSON), 400)
        assert_clear_error(api.post("/compute/v2.1/servers", content=b'{"server": ' + value + b"}", headers=JSON), 400)
        assert_clear_error(api.post(f"/compute/v2.1/servers/{server_id}/action",
                                    content=b'{"createImage": {"name": "x", "metadata": ' + value + b"}}",
                                    headers=JSON), 400)
        assert_clear_error(api.patch(f"/image/v2/images/{image_id}", content=value, headers=PATCH), 400)
        assert_clear_error(api.post(f"/image/v2/images/{image_id}/members", content=value, headers=JSON), 400)
    for constant in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        assert_clear_error(api.post("/image/v2/images", content=b'{"name": "x", "min_ram": ' + constant + b"}",
                                    headers=JSON), 400)
    # the size limit stays
    assert_clear_error(api.post("/image/v2/images", content=b'{"name": "' + b"a" * (2 << 20) + b'"}',
                                headers=JSON), 413)
    assert image_ids(api) == before_images and server_ids(api) == before_servers
    assert_server_untouched(api, server_id)


# -- integers of thousands of digits --------------------------------------------------------------

def test_huge_integers_in_bodies_are_400(api, booted):
    """json.loads raised ValueError (500) on an integer past 4300 digits; ``rotation`` given as
    a string of digits went through int() too. Integers are bounded to 64 bits (rotation to 32)."""
    before_images, server_id = image_ids(api), booted["server_id"]
    for number in (HUGE, OVER_INT64, "-" + HUGE):
        assert_clear_error(api.post("/image/v2/images", content=f'{{"name": "x", "min_ram": {number}}}'.encode(),
                                    headers=JSON), 400)
        assert_clear_error(api.post("/compute/v2.1/servers",
                                    content=f'{{"server": {{"name": "x", "flavorRef": {number}}}}}'.encode(),
                                    headers=JSON), 400)
        assert_clear_error(api.post(f"/compute/v2.1/servers/{server_id}/action",
                                    content=(f'{{"createBackup": {{"name": "b", "backup_type": "daily", '
                                             f'"rotation": {number}}}}}').encode(), headers=JSON), 400)
    for rotation in (HUGE, OVER_INT64, str(1 << 31)):
        resp = api.post(f"/compute/v2.1/servers/{server_id}/action",
                        json={"createBackup": {"name": "b", "backup_type": "daily", "rotation": rotation}})
        assert_clear_error(resp, 400)
    assert_clear_error(api.post("/image/v2/images", content=b'{"name": "x", "min_ram": 1.' + b"5" * 5000 + b"}",
                                headers=JSON), 400)
    assert image_ids(api) == before_images
    assert_server_untouched(api, server_id)


def test_huge_integers_in_headers(api, booted, live_server):
    """Range, the microversion headers and X-Image-Upload-Offset went through int() (500)."""
    image_id = booted["image_id"]
    size = api.get(f"/image/v2/images/{image_id}").json()["size"]
    assert_clear_error(api.get(f"/image/v2/images/{image_id}/file", headers={"Range": f"bytes={HUGE}-"}), 416)
    assert_clear_error(api.get(f"/image/v2/images/{image_id}/file", headers={"Range": f"bytes={OVER_INT64}-"}), 416)
    whole = api.get(f"/image/v2/images/{image_id}/file", headers={"Range": f"bytes=0-{HUGE}"})
    assert whole.status_code == 206 and len(whole.content) == size
    assert api.get(f"/image/v2/images/{image_id}/file", headers={"Range": f"bytes=-{HUGE}"}).status_code == 206
    for header in ("X-OpenStack-Nova-API-Version", "OpenStack-API-Version"):
        prefix = "compute " if header == "OpenStack-API-Version" else ""
        for version in (f"2.{HUGE}", f"{HUGE}.1", "2.00000000000000000000001"):
            assert_clear_error(api.get("/compute/v2.1/servers", headers={header: prefix + version}), 400, 406)
    queued = new_image(api)
    for offset in (HUGE, OVER_INT64, "-1", "1_0", "1 0", "+1", "0x10"):
        resp = api.put(f"/image/v2/images/{queued['id']}/file", content=b"x",
                       headers={"Content-Type": "application/octet-stream", "X-Image-Upload-Id": str(uuid.uuid4()),
                                "X-Image-Upload-Offset": offset})
        assert_clear_error(resp, 400)
    assert api.get(f"/image/v2/images/{queued['id']}").json()["status"] == "queued"
    # Content-Length: the HTTP parser refuses it before the application (a plain 400)
    host, port = live_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall((f"PUT /image/v2/images/{queued['id']}/file HTTP/1.1\r\nHost: x\r\n"
                      f"X-Auth-Token: {MEMBER_TOKEN}\r\nContent-Length: {HUGE}\r\n\r\n").encode())
        sock.settimeout(10)
        assert sock.recv(4096).startswith(b"HTTP/1.1 400")
    assert api.get(f"/image/v2/images/{queued['id']}").json()["status"] == "queued"


def test_huge_integers_in_query_parameters_are_400(api):
    """``size_min``/``size_max`` of 2^63 or more overflowed the database (500); ``limit`` of
    thousands of digits on /v1/workflows went through int() (500)."""
    for key in ("size_min", "size_max", "limit"):
        for value in (OVER_INT64, HUGE, "-1"):
            assert_clear_error(api.get("/image/v2/images", params={key: value}), 400)
    for value in (OVER_INT64 + "0", HUGE, "-1"):
        assert_clear_error(api.get("/v1/workflows", params={"limit": value}), 400)
    assert api.get("/image/v2/images", params={"size_min": str((1 << 63) - 1)}).json()["images"] == []
    assert api.get("/v1/workflows", params={"limit": "0"}).status_code == 200
    image_ids(api)


# -- non-ASCII digits -----------------------------------------------------------------------------

def test_non_ascii_digits_are_400(api, booted):
    """``str.isdigit`` accepts ``²`` and ``٣``: int() then failed (500) or took them. Numbers are
    ASCII digits only: in query parameters, headers and body strings."""
    server_id, image_id = booted["server_id"], booted["image_id"]
    for digit in ("²", "٣", "１", "𝟗", "³"):
        for key in ("limit", "size_min", "size_max"):
            assert_clear_error(api.get("/image/v2/images", params={key: digit}), 400)
        assert_clear_error(api.get("/v1/workflows", params={"limit": digit}), 400)
        resp = api.post(f"/compute/v2.1/servers/{server_id}/action",
                        json={"createBackup": {"name": "b", "backup_type": "daily", "rotation": digit}})
        assert_clear_error(resp, 400)
    queued = new_image(api)
    # headers travel as latin-1 bytes: 0xB2 is '²', 0xB3 '³', 0xB9 '¹' (all str.isdigit())
    for raw in (b"\xb2", b"1\xb3", b"\xb9"):
        resp = api.put(f"/image/v2/images/{queued['id']}/file", content=b"x",
                       headers={"Content-Type": "application/octet-stream", "X-Image-Upload-Id": str(uuid.uuid4()),
                                "X-Image-Upload-Offset": raw})
        assert_clear_error(resp, 400)
        assert_clear_error(api.get(f"/image/v2/images/{image_id}/file", headers={"Range": b"bytes=" + raw + b"-"}),
                           416)
        assert_clear_error(api.get("/compute/v2.1/servers", headers={"X-OpenStack-Nova-API-Version": b"2." + raw}),
                           400)
    assert api.get(f"/image/v2/images/{queued['id']}").json()["status"] == "queued"
    assert_server_untouched(api, server_id)


# -- lone surrogates and NUL in JSON text ---------------------------------------------------------

def _bad_text_bodies(text: str, image_id: str) -> list[tuple[str, str, dict, str]]:
    """(method, path, headers, raw JSON) carrying ``text`` (a JSON string escape) somewhere."""
    t = text
    return [
        ("POST", "/image/v2/images", JSON, f'{{"name": "{t}"}}'),
        ("POST", "/image/v2/images", JSON, f'{{"name": "x", "prop": "a{t}b"}}'),
        ("POST", "/image/v2/images", JSON, f'{{"name": "x", "k{t}": "v"}}'),
        ("POST", "/image/v2/images", JSON, f'{{"name": "x", "tags": ["{t}"]}}'),
        ("PATCH", f"/image/v2/images/{image_id}", PATCH, f'[{{"op": "add", "path": "/p", "value": "{t}"}}]'),
        ("PATCH", f"/image/v2/images/{image_id}", PATCH, f'[{{"op": "add", "path": "/p{t}", "value": "v"}}]'),
        ("PATCH", f"/image/v2/images/{image_id}", PATCH, f'[{{"op": "replace", "path": "/name", "value": "{t}"}}]'),
        ("PATCH", f"/image/v2/images/{image_id}", PATCH, f'[{{"op": "add", "path": "/tags", "value": ["{t}"]}}]'),
        ("POST", f"/image/v2/images/{image_id}/members", JSON, f'{{"member": "{t}"}}'),
        ("PUT", f"/image/v2/images/{image_id}/members/project-b", JSON, f'{{"status": "{t}"}}'),
        ("POST", f"/image/v2/images/{image_id}/import", JSON, f'{{"method": {{"name": "{t}"}}}}'),
    ]


def _bad_compute_bodies(text: str, image_id: str, server_id: str) -> list[tuple[str, str, dict, str]]:
    t = text
    server = f'"imageRef": "{image_id}", "flavorRef": "1"'
    return [
        ("POST", "/compute/v2.1/servers", JSON, f'{{"server": {{"name": "vm{t}", {server}}}}}'),
        ("POST", "/compute/v2.1/servers", JSON, f'{{"server": {{"name": "vm", {server}, "metadata": {{"k": "{t}"}}}}}}'),
        ("POST", "/compute/v2.1/servers", JSON, f'{{"server": {{"name": "vm", {server}, "metadata": {{"{t}": "v"}}}}}}'),
        ("POST", "/compute/v2.1/servers", JSON, f'{{"server": {{"name": "vm", "imageRef": "{t}", "flavorRef": "1"}}}}'),
        ("POST", f"/compute/v2.1/servers/{server_id}/action", JSON,
         f'{{"createImage": {{"name": "s", "metadata": {{"k": "{t}"}}}}}}'),
        ("POST", f"/compute/v2.1/servers/{server_id}/action", JSON,
         f'{{"createBackup": {{"name": "b{t}", "backup_type": "daily", "rotation": 1}}}}'),
        ("POST", f"/compute/v2.1/servers/{server_id}/action", JSON,
         f'{{"createBackup": {{"name": "b", "backup_type": "d{t}", "rotation": 1}}}}'),
        ("POST", f"/compute/v2.1/servers/{server_id}/action", JSON, f'{{"os-stop{t}": null}}'),
    ]


@pytest.mark.parametrize("text", ["\\ud800", "\\udfff", "x\\udc00y", "\\ud83d"], ids=["d800", "dfff", "dc00", "high"])
def test_lone_surrogates_are_400(api, admin_api, booted, text):
    """A lone surrogate in a name, property, key, tag, member or metadata reached the database
    driver (500); one in a server's metadata was stored and made that project's server listing
    500 for good. Every JSON string and key is now checked once, before any API sees it."""
    shared = new_image(api, visibility="shared")
    before_images, before_servers = image_ids(api), server_ids(api)
    for method, path, headers, raw in (_bad_text_bodies(text, shared["id"])
                                       + _bad_compute_bodies(text, booted["image_id"], booted["server_id"])):
        assert_clear_error(api.request(method, path, content=raw.encode(), headers=headers), 400)
    assert_clear_error(admin_api.post("/compute/v2.1/os-freezeframe-adopt",
                                      content=f'{{"adopt": {{"domain": "d{text}"}}}}'.encode(), headers=JSON), 400)
    # ... and as raw UTF-8-encoded surrogates (json.loads on bytes let them through)
    assert_clear_error(api.post("/image/v2/images", content=b'{"name": "\xed\xa0\x80"}', headers=JSON), 400)
    assert image_ids(api) == before_images and server_ids(api) == before_servers
    assert api.get(f"/image/v2/images/{shared['id']}").json()["name"] == "bad-input"
    assert api.get(f"/image/v2/images/{shared['id']}/members").status_code == 200
    assert_server_untouched(api, booted["server_id"])


def test_nul_in_json_text_is_400(api, admin_api, booted):
    """PostgreSQL refuses NUL in text (500); SQLite stored it. Refused in every JSON string."""
    shared = new_image(api, visibility="shared")
    before_images, before_servers = image_ids(api), server_ids(api)
    for method, path, headers, raw in (_bad_text_bodies("a\\u0000", shared["id"])
                                       + _bad_compute_bodies("a\\u0000", booted["image_id"], booted["server_id"])):
        assert_clear_error(api.request(method, path, content=raw.encode(), headers=headers), 400)
    assert_clear_error(admin_api.post("/compute/v2.1/os-freezeframe-adopt",
                                      content=b'{"adopt": {"domain": "d\\u0000"}}', headers=JSON), 400)
    assert image_ids(api) == before_images and server_ids(api) == before_servers
    assert api.get(f"/image/v2/images/{shared['id']}").json()["name"] == "bad-input"
    assert_server_untouched(api, booted["server_id"])


# -- NUL and invalid UTF-8 in URLs ----------------------------------------------------------------

@pytest.mark.parametrize("bad", ["%00", "a%00b", "%ff", "%ed%a0%80", "%c3%28"], ids=["nul", "nul-mid", "ff", "surrogate",
                                                                                  "truncated"])
def test_bad_text_in_url_path_is_404(api, booted, bad):
    """A NUL in an id reached PostgreSQL (500). A path that is not valid UTF-8 text names
    nothing: 404, as Glance answers a malformed id, on every API."""
    image_id, server_id = booted["image_id"], booted["server_id"]
    paths = [
        ("GET", f"/image/v2/images/{bad}"), ("PATCH", f"/image/v2/images/{bad}"), ("DELETE", f"/image/v2/images/{bad}"),
        ("GET", f"/image/v2/images/{bad}/file"), ("PUT", f"/image/v2/images/{bad}/file"),
        ("PUT", f"/image/v2/images/{image_id}/tags/{bad}"), ("DELETE", f"/image/v2/images/{image_id}/tags/{bad}"),
        ("GET", f"/image/v2/images/{image_id}/members/{bad}"), ("POST", f"/image/v2/images/{bad}/members"),
        ("GET", f"/image/v2/images/{image_id}/uploads/{bad}"), ("GET", f"/image/v2/schemas/{bad}"),
        ("GET", f"/compute/v2.1/servers/{bad}"), ("DELETE", f"/compute/v2.1/servers/{bad}"),
        ("POST", f"/compute/v2.1/servers/{bad}/action"), ("GET", f"/compute/v2.1/servers/{bad}/os-instance-actions"),
        ("GET", f"/compute/v2.1/servers/{server_id}/os-instance-actions/{bad}"),
        ("GET", f"/compute/v2.1/flavors/{bad}"),
        ("GET", f"/v1/workflows/{bad}"), ("DELETE", f"/v1/workflows/{bad}"),
    ]
    for method, path in paths:
        resp = api.request(method, path, content=b"{}" if method in ("POST", "PATCH", "PUT") else None,
                           headers=JSON if method != "PATCH" else PATCH)
        assert_clear_error(resp, 404)
    assert api.get(f"/image/v2/images/{image_id}").json()["tags"] == []
    assert_server_untouched(api, server_id)


@pytest.mark.parametrize("bad", ["%00", "a%00", "%ff", "%ed%a0%80"], ids=["nul", "nul-end", "ff", "surrogate"])
def test_bad_text_in_query_is_400(api, bad):
    """A NUL in a filter reached PostgreSQL (500); invalid UTF-8 was silently replaced. Both are
    a 400 for any query parameter, name or value, of any API."""
    for path in ("/image/v2/images", "/v1/workflows", "/compute/v2.1/servers", "/compute/v2.1/flavors"):
        for query in (f"name={bad}", f"{bad}=x", f"marker={bad}", f"owner={bad}", f"custom_prop={bad}",
                      f"tag={bad}", f"resource_id={bad}", f"state={bad}", f"kind={bad}", f"limit=1{bad}"):
            assert_clear_error(api.get(f"{path}?{query}"), 400)
    image_ids(api)


# -- imageRef and adopt ---------------------------------------------------------------------------

@pytest.mark.parametrize("ref", ["", "#", "?x", "not-a-uuid", "http://example.com/images/", 5, None, {}, [],
                                 "00000000-0000-0000-0000-00000000000g", "../../../etc/passwd",
                                 "00000000-0000-0000-0000-000000000000\n"])
def test_malformed_image_ref_is_400(api, ref):
    """``imageRef`` of "", "#" or "?x" became a request for the image list (503); anything that
    is not an image id (or a URL ending in one) is now a 400 naming imageRef."""
    before = server_ids(api)
    resp = api.post("/compute/v2.1/servers", json={"server": {"name": "vm", "imageRef": ref, "flavorRef": "1"}})
    assert_clear_error(resp, 400)
    assert "imageRef" in nova_fault(resp)["message"]
    assert server_ids(api) == before


def test_adopt_non_object_body_is_400(admin_api):
    """``{"adopt": 5}`` called .get on an int (500); every body that is not
    ``{"adopt": {"domain": "<name>"}}`` is a 400."""
    before = server_ids(admin_api)
    for body in ({"adopt": 5}, {"adopt": []}, {"adopt": "dom"}, {"adopt": None}, {"adopt": {"domain": 5}},
                 {"adopt": {"domain": ["d"]}}, [], "x", 5, None, {}):
        assert_clear_error(admin_api.post("/compute/v2.1/os-freezeframe-adopt", content=json.dumps(body).encode(),
                                          headers=JSON), 400)
    assert server_ids(admin_api) == before


# -- relatives found by the fuzzer ----------------------------------------------------------------

def test_relatives(api):
    """An image id with a trailing newline passed the schema's pattern (``$``), was stored and
    broke the Location header (SQLite) or PostgreSQL's VARCHAR(36) (500); a time filter whose
    offset pushes it before year 1 overflowed (500); an ``in:`` filter of thousands of values
    hit the databases' bound-parameter limits."""
    before = image_ids(api)
    assert_clear_error(api.post("/image/v2/images", json={"id": str(uuid.uuid4()) + "\n"}), 400)
    for stamp in ("gt:0001-01-01T00:00:00+01:00", "lt:9999-12-31T23:59:59-01:00", "gt:２０２０-01-01T00:00:00"):
        assert_clear_error(api.get("/image/v2/images", params={"created_at": stamp}), 400)
    assert_clear_error(api.get("/image/v2/images", params={"id": "in:" + ",".join(["a"] * 5000)}), 400)
    assert_clear_error(api.get("/image/v2/images?" + "&".join(f"p{i}=v" for i in range(300))), 400)
    assert image_ids(api) == before


# -- header values used as data -----------------------------------------------------------------

@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def noauth_server(request, tmp_path_factory):
    """A server in noauth mode, where X-User-Id/X-Project-Id/X-Roles say who calls."""
    data_dir = tmp_path_factory.mktemp(f"ff-noauth-{request.param}")
    if request.param == "sqlite":
        server = start_server(data_dir, auth="noauth")
        yield server
        server.stop()
        return
    from tests.pg import temp_database
    with temp_database() as url:
        server = start_server(data_dir, auth="noauth", args=["--database-url", url])
        yield server
        server.stop()


def test_identity_headers_are_checked(noauth_server):
    """In noauth mode a project id longer than the 255 characters of its column reached
    PostgreSQL (500), and a non-ASCII one broke the service-to-service call made with it (500).
    Identity headers are at most 255 printable ASCII characters (roles 1024)."""
    with httpx.Client(base_url=noauth_server.url, timeout=60) as c:
        before = {i["id"] for i in c.get("/image/v2/images").json()["images"]}
        for headers in ({"X-Project-Id": "p" * 256}, {"X-User-Id": "u" * 256}, {"X-Roles": "admin," + "r" * 1024},
                        {"X-Project-Id": b"\xe9"}, {"X-User-Id": b"\xb2"}):
            assert_clear_error(c.post("/image/v2/images", headers=headers, json={"name": "x"}), 400)
            assert_clear_error(c.post("/compute/v2.1/servers", headers=headers, json={"server": {
                "name": "x", "imageRef": str(uuid.uuid4()), "flavorRef": "1"}}), 400)
            assert_clear_error(c.get("/v1/workflows", headers=headers), 400)
        assert {i["id"] for i in c.get("/image/v2/images").json()["images"]} == before
        assert c.get("/compute/v2.1/servers/detail").status_code == 200
        ok = c.post("/image/v2/images", headers={"X-Project-Id": "p" * 255}, json={"name": "x"})
        assert ok.status_code == 201 and ok.json()["owner"] == "p" * 255


# -- a client that goes away ----------------------------------------------------------------------

def test_client_disconnect_mid_upload_is_info(api, live_server):
    """A client that hangs up mid-upload was logged as an ERROR with a traceback and a 500 in
    the access log. Now: INFO lines only (access log status 499), the image back to queued."""
    image = new_image(api)
    request_id = f"req-{uuid.uuid4()}"
    host, port = live_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall((f"PUT /image/v2/images/{image['id']}/file HTTP/1.1\r\nHost: x\r\n"
                      f"X-Auth-Token: {MEMBER_TOKEN}\r\nX-OpenStack-Request-Id: {request_id}\r\n"
                      f"Content-Type: application/octet-stream\r\nContent-Length: {64 << 20}\r\n\r\n").encode())
        for _ in range(16):
            sock.sendall(bytes(64 << 10))
        time.sleep(0.5)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = [line for line in live_server.log().splitlines() if request_id in line]
        access = [line for line in lines if "freezeframe.access" in line and image["id"] in line]
        if access and api.get(f"/image/v2/images/{image['id']}").json()["status"] == "queued":
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"no access line for {request_id} or image not queued: {lines}")
    assert not [line for line in lines if " ERROR " in line or "unexpected error" in line], lines
    assert " 500 " not in access[0] and " 499 " in access[0], access
    assert any(" INFO " in line and "disconnect" in line.lower() for line in lines), lines
