"""The client base: headers, URLs, one error mapping for every failure, and the typed clients
built on it (GlanceClient, ComputeClient)."""

import json

import httpx
import pytest

from freezeframe.common import remote
from freezeframe.common.httpclient import USER_AGENT, ServiceClient, error_from, looks_like_id
from freezeframe.compute import client as compute_client
from freezeframe.compute.client import ComputeClient, ComputeError
from freezeframe.http.inprocess import InProcess
from freezeframe.images import client as image_client
from freezeframe.images.client import GlanceClient, GlanceError

ID = "0f9d6c2e-7b61-4c55-9a1b-3f0a8e6c1d2b"


def transport(handler) -> httpx.MockTransport:
    return httpx.MockTransport(handler)


def test_default_headers_and_urls():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    with ServiceClient("http://h:1/image/", "user-token", service_token="svc-token", transport=transport(handler),
                       extra_headers={"X-User-Id": "bob", "Accept": "application/x"}) as client:
        assert client.url == "http://h:1/image"
        assert client._json("GET", "/v2/images") == {"ok": True}
        client._call("GET", "http://other:2/v1/workflows")     # another root: used as it is
    first, second = seen
    assert str(first.url) == "http://h:1/image/v2/images" and str(second.url) == "http://other:2/v1/workflows"
    assert first.headers["user-agent"] == USER_AGENT
    assert first.headers["x-auth-token"] == "user-token" and first.headers["x-service-token"] == "svc-token"
    assert first.headers["x-user-id"] == "bob" and first.headers["accept"] == "application/x"


def test_no_token_sends_none():
    seen = []
    with ServiceClient("http://h", transport=transport(lambda r: seen.append(r) or httpx.Response(204))) as client:
        client._call("DELETE", "/x")
    assert "x-auth-token" not in seen[0].headers and "x-service-token" not in seen[0].headers


@pytest.mark.parametrize("cls,error,unreachable,service", [
    (GlanceClient, GlanceError, image_client.Unreachable, "image"),
    (ServiceClient, remote.RemoteError, remote.Unreachable, "remote"),
])
def test_connect_errors_are_unreachable(cls, error, unreachable, service):
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)
    with cls("http://h:1/image", transport=transport(refuse)) as client:
        with pytest.raises(unreachable) as caught:
            client._call("GET", "/v2/images")
    exc = caught.value
    assert isinstance(exc, error) and isinstance(exc, remote.Unreachable) and exc.status is None
    assert exc.service == service and f"cannot reach the {service} service at http://h:1/image" in str(exc)


def test_other_transport_errors_are_the_clients_error():
    def broken(request):
        raise httpx.ReadError("reset by peer", request=request)
    with GlanceClient("http://h", transport=transport(broken)) as client:
        with pytest.raises(GlanceError) as caught:
            client.show(ID)
    assert not isinstance(caught.value, remote.Unreachable) and "reset by peer" in str(caught.value)


def test_the_in_process_transport_while_unbound_is_unreachable():
    """As assembly.service_image_client builds it; unbound (stopping) = a refused connection."""
    with GlanceClient("http://freezeframe.internal/image", extra_headers={"X-Service-Token": "t"},
                      transport=InProcess().transport()) as client:
        with pytest.raises(image_client.Unreachable):
            client.show(ID)


@pytest.mark.parametrize("response,message,request_id", [
    (httpx.Response(404, json={"error": {"code": 404, "title": "Not Found", "message": "No image x",
                                         "request_id": "req-ours"}}), "No image x", "req-ours"),
    (httpx.Response(404, json={"itemNotFound": {"code": 404, "message": "Instance y could not be found."}},
                    headers={"x-compute-request-id": "req-nova"}), "Instance y could not be found.", "req-nova"),
    (httpx.Response(409, text="<html><head><title>409 Conflict</title></head><body><h1>409 Conflict</h1>"
                              "Image status transition from active to saving is not allowed<br /><br /></body>"
                              "</html>", headers={"Content-Type": "text/html; charset=UTF-8",
                                                  "x-openstack-request-id": "req-glance"}),
     "Image status transition from active to saving is not allowed", "req-glance"),
    (httpx.Response(503, text="  try later \n"), "try later", None),
    (httpx.Response(500, text=""), "Internal Server Error", None),
    (httpx.Response(400, json={"message": "bad thing"}), "bad thing", None),
])
def test_error_from_any_failed_response(response, message, request_id):
    error = error_from(response)
    assert type(error) is remote.RemoteError
    assert (error.status, error.message, error.request_id) == (response.status_code, message, request_id)
    assert type(error_from(response, GlanceError)) is GlanceError


def test_failed_responses_raise_the_typed_error_and_streams_are_closed():
    closed = []

    class Body(httpx.SyncByteStream):
        def __iter__(self):
            yield json.dumps({"error": {"message": "No image"}}).encode()

        def close(self):
            closed.append(True)

    def handler(request):
        return httpx.Response(404, headers={"Content-Type": "application/json"}, stream=Body())
    with GlanceClient("http://h", transport=transport(handler)) as client:
        with pytest.raises(GlanceError) as caught:
            client._send(client._http.build_request("GET", "/v2/images/x/file"), stream=True)
    assert caught.value.status == 404 and caught.value.message == "No image" and closed


def test_an_answer_that_is_not_json_is_the_clients_error():
    with GlanceClient("http://h", transport=transport(lambda r: httpx.Response(200, text="<html>"))) as client:
        with pytest.raises(GlanceError, match="not JSON"):
            client.show(ID)


def test_compute_client_on_the_base():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/workflows"):
            raise httpx.ConnectError("refused", request=request)
        if request.url.path.endswith("/detail"):
            return httpx.Response(200, json={"servers": [{"id": ID, "name": "vm", "status": "ACTIVE"}]})
        return httpx.Response(404, json={"itemNotFound": {"code": 404, "message": "nope"}},
                              headers={"x-compute-request-id": "req-1"})

    with ComputeClient("http://h/compute/v2.1/", "http://h/v1", "tok", transport=transport(handler)) as client:
        assert [s.name for s in client.list_servers()] == ["vm"]
        assert seen[0].headers["x-openstack-nova-api-version"] == compute_client.MICROVERSION
        assert seen[0].headers["x-auth-token"] == "tok"
        with pytest.raises(ComputeError) as caught:
            client.show_server(ID)
        assert (caught.value.status, caught.value.message, caught.value.request_id) == (404, "nope", "req-1")
        with pytest.raises(compute_client.Unreachable) as unreachable:
            client.list_workflows()
        assert unreachable.value.service == "workflow" and "http://h/v1" in str(unreachable.value)
    assert str(seen[0].url) == "http://h/compute/v2.1/servers/detail"


def test_compute_unreachable_names_compute_by_default():
    exc = compute_client.Unreachable("gone")
    assert exc.service == "compute" and isinstance(exc, remote.Unreachable) and isinstance(exc, ComputeError)


def test_looks_like_id():
    assert looks_like_id(ID) and looks_like_id(ID.replace("-", "")) and not looks_like_id("my-server")
