"""The request helpers every API reads with, and the one error map (driver errors included)."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from freezeframe.common.context import RequestContext
from freezeframe.compute.drivers.base import DomainNotFound, DriverError, QuiesceFailed
from freezeframe.common.web.errors import HANDLERS
from freezeframe.common.web.request import content_length, ctx_of, header_uint, json_body
from tests.unit.common.web.asgi import request

PATCH_TYPE = "application/openstack-images-v2.1-json-patch"


def _app(*routes: Route, ctx: RequestContext | None = None) -> Starlette:
    app = Starlette(routes=list(routes), exception_handlers=HANDLERS)

    async def with_ctx(scope, receive, send):
        if ctx is not None and scope["type"] == "http":
            scope.setdefault("state", {})["ctx"] = ctx
        await app(scope, receive, send)
    return with_ctx


async def echo(request: Request):
    return JSONResponse({"body": await json_body(request), "length": content_length(request),
                         "offset": header_uint(request, "X-Offset")})


async def echo_patch(request: Request):
    return JSONResponse({"body": await json_body(request, media_types=(PATCH_TYPE,))})


async def who(request: Request):
    return JSONResponse({"user": ctx_of(request).user_id})


def test_json_body_and_numbers():
    app = _app(Route("/echo", echo, methods=["POST"]))
    resp = request(app, "POST", "/echo", json={"a": [1, 2.5, "x"]}, headers={"X-Offset": "42"})
    assert resp.status_code == 200
    assert resp.json() == {"body": {"a": [1, 2.5, "x"]}, "length": len(b'{"a":[1,2.5,"x"]}'), "offset": 42}
    assert request(app, "POST", "/echo", content=b"", headers={"Content-Type": "application/json"}).status_code == 400
    assert request(app, "POST", "/echo", content=b"{", headers={"Content-Type": "application/json"}).status_code == 400
    assert request(app, "POST", "/echo", json={}, headers={"X-Offset": "²".encode()}).status_code == 400
    assert request(app, "POST", "/echo", json={}, headers={"X-Offset": "-1"}).status_code == 400
    vendor = request(app, "POST", "/echo", content=b"{}", headers={"Content-Type": "application/vnd.x+json"})
    assert vendor.status_code == 200


def test_a_route_names_its_own_json_media_types():
    app = _app(Route("/echo", echo, methods=["POST"]), Route("/patch", echo_patch, methods=["PATCH"]))
    body = b'[{"op": "add", "path": "/a", "value": "b"}]'
    assert request(app, "PATCH", "/patch", content=body, headers={"Content-Type": PATCH_TYPE}).status_code == 200
    assert request(app, "POST", "/echo", content=body, headers={"Content-Type": PATCH_TYPE}).status_code == 415
    assert request(app, "POST", "/echo", content=body, headers={"Content-Type": "text/plain"}).status_code == 415


def test_ctx_of_is_the_authenticated_caller_and_never_a_500():
    ctx = RequestContext("alice", "p1", frozenset({"member"}))
    assert request(_app(Route("/who", who), ctx=ctx), "GET", "/who").json() == {"user": "alice"}
    missing = request(_app(Route("/who", who)), "GET", "/who")
    assert missing.status_code == 401 and "X-Auth-Token" in missing.json()["error"]["message"]


def test_driver_errors_in_a_request_map_as_nova_answers():
    def raising(exc):
        async def endpoint(_request: Request):
            raise exc
        return endpoint
    app = _app(Route("/gone", raising(DomainNotFound("no domain vm-1"))),
               Route("/frozen", raising(QuiesceFailed("freezing vm-1: agent timeout"))),
               Route("/broken", raising(DriverError("destroying vm-1: /var/lib/secret/path busy"))))
    gone = request(app, "GET", "/gone")
    assert gone.status_code == 404 and gone.json()["error"]["message"] == "no domain vm-1"
    frozen = request(app, "GET", "/frozen")
    assert frozen.status_code == 409 and "agent timeout" in frozen.json()["error"]["message"]
    broken = request(app, "GET", "/broken")
    assert broken.status_code == 500 and "retry-after" not in broken.headers
    assert "/var/lib" not in broken.text and "hypervisor failed" in broken.json()["error"]["message"]
    assert "request_id" in broken.json()["error"]
