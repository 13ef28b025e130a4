"""Microversion negotiation for the three header styles: Nova's (standard + legacy), Cinder's
(standard only) and Ironic's (legacy + standard, range advertised on every response)."""

import httpx
import pytest
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, Router

from freezeframe.common import errors
from freezeframe.common.web.errors import HANDLERS
from freezeframe.common.web.microversion import IRONIC_RANGE_HEADERS, APIVersion, Microversions
from tests.unit.common.web.asgi import request

NOVA = Microversions("compute", "X-OpenStack-Nova-API-Version", min="2.1", max="2.96")
CINDER = Microversions("volume", None, min="3.0", max="3.71")
IRONIC = Microversions("baremetal", "X-OpenStack-Ironic-API-Version", min="1.1", max="1.87",
                       range_headers=IRONIC_RANGE_HEADERS, malformed=errors.NotAcceptable)


def negotiate(versions: Microversions, *pairs: tuple[str, str | bytes]) -> APIVersion:
    """As a server receives them: header values are bytes (text sent as UTF-8)."""
    return versions.negotiate(Headers(raw=[(k.lower().encode(), v if isinstance(v, bytes) else v.encode())
                                           for k, v in pairs]))


# -- parsing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("versions,header,prefix", [
    (NOVA, "X-OpenStack-Nova-API-Version", ""),
    (NOVA, "OpenStack-API-Version", "compute "),
    (CINDER, "OpenStack-API-Version", "volume "),
    (IRONIC, "X-OpenStack-Ironic-API-Version", ""),
    (IRONIC, "OpenStack-API-Version", "baremetal "),
])
def test_each_header_style(versions, header, prefix):
    mid = APIVersion(versions.min.major, versions.min.minor + 1)
    assert negotiate(versions, (header, f"{prefix}{mid}")) == mid
    assert negotiate(versions, (header, f"{prefix}latest")) == versions.max
    assert negotiate(versions, (header, f"{prefix}LATEST")) == versions.max
    assert negotiate(versions, (header, f" {prefix}{versions.max} ")) == versions.max
    assert negotiate(versions) == versions.min               # absent: the minimum


def test_version_compares_as_a_tuple_and_prints_as_text():
    v = APIVersion.parse("2.45")
    assert v == (2, 45) and v >= (2, 45) and v < (2, 84) and str(v) == "2.45"
    assert str(APIVersion.parse("3.0")) == "3.0" and APIVersion.parse("10.100") == (10, 100)


def test_standard_header_wins_and_names_the_service():
    assert negotiate(NOVA, ("OpenStack-API-Version", "compute 2.60"),
                     ("X-OpenStack-Nova-API-Version", "2.10")) == (2, 60)
    # another service's entry is not ours: the legacy header (or the default) decides
    assert negotiate(NOVA, ("OpenStack-API-Version", "volume 3.5"), ("X-OpenStack-Nova-API-Version", "2.10")) \
        == (2, 10)
    assert negotiate(NOVA, ("OpenStack-API-Version", "volume 3.5")) == (2, 1)
    # several services in one header, or the header repeated
    assert negotiate(CINDER, ("OpenStack-API-Version", "compute 2.60, volume 3.44")) == (3, 44)
    assert negotiate(CINDER, ("OpenStack-API-Version", "compute 2.60"), ("OpenStack-API-Version", "Volume 3.27")) \
        == (3, 27)
    # Cinder has no legacy header: Nova's says nothing to it
    assert negotiate(CINDER, ("X-OpenStack-Nova-API-Version", "3.44")) == (3, 0)


def test_a_default_other_than_the_minimum():
    versions = Microversions("volume", None, min="3.0", max="3.71", default="3.27")
    assert negotiate(versions) == (3, 27)
    with pytest.raises(ValueError):
        Microversions("volume", None, min="3.0", max="3.71", default="4.0")


@pytest.mark.parametrize("text", [
    "2", "2.", ".1", "2.1.1", "two.one", "2,1", "2 .1", "-2.1", "+2.1", "2.-1", "2.1a", "2.01", "02.1",
    "2.²", "٣.1", "２.1", "2." + "9" * 5000, "9" * 5000 + ".1", "", "latest2", "compute",
])
def test_malformed_is_400_for_nova_and_cinder_406_for_ironic(text):
    with pytest.raises(errors.Invalid, match="Invalid microversion"):
        negotiate(NOVA, ("X-OpenStack-Nova-API-Version", text))
    with pytest.raises(errors.Invalid):
        negotiate(CINDER, ("OpenStack-API-Version", f"volume {text}"))
    with pytest.raises(errors.NotAcceptable):     # Ironic answers 406 ("Invalid value for ... header")
        negotiate(IRONIC, ("X-OpenStack-Ironic-API-Version", text))


def test_a_service_named_without_a_version_is_malformed():
    with pytest.raises(errors.Invalid):
        negotiate(NOVA, ("OpenStack-API-Version", "compute"))


@pytest.mark.parametrize("raw", [b"2.\xb2", b"\xb9.1", b"2.1\xb3"])
def test_latin1_digits_are_not_digits(raw):
    """A header byte 0xB2 is '²' to latin-1, which ``str.isdigit`` accepts."""
    with pytest.raises(errors.Invalid):
        negotiate(NOVA, ("X-OpenStack-Nova-API-Version", raw))


@pytest.mark.parametrize("versions,header,prefix,outside", [
    (NOVA, "X-OpenStack-Nova-API-Version", "", ["2.0", "2.97", "3.0", "1.99", "0.0"]),
    (NOVA, "OpenStack-API-Version", "compute ", ["2.97", "9.99"]),
    (CINDER, "OpenStack-API-Version", "volume ", ["2.0", "3.72"]),
    (IRONIC, "X-OpenStack-Ironic-API-Version", "", ["1.0", "1.88", "2.1"]),
])
def test_out_of_range_is_406_naming_min_and_max(versions, header, prefix, outside):
    for text in outside:
        with pytest.raises(errors.NotAcceptable) as caught:
            negotiate(versions, (header, prefix + text))
        assert caught.value.message == (f"Version {text} is not supported by the API. Minimum is {versions.min} "
                                        f"and maximum is {versions.max}.")


# -- response headers ------------------------------------------------------------------------

def test_response_headers_per_style():
    assert NOVA.headers(APIVersion(2, 45)) == {
        "OpenStack-API-Version": "compute 2.45", "X-OpenStack-Nova-API-Version": "2.45",
        "Vary": "OpenStack-API-Version, X-OpenStack-Nova-API-Version"}
    assert CINDER.headers(APIVersion(3, 44)) == {"OpenStack-API-Version": "volume 3.44",
                                                 "Vary": "OpenStack-API-Version"}
    assert IRONIC.headers(APIVersion(1, 31)) == {
        "OpenStack-API-Version": "baremetal 1.31", "X-OpenStack-Ironic-API-Version": "1.31",
        "Vary": "OpenStack-API-Version, X-OpenStack-Ironic-API-Version",
        "X-OpenStack-Ironic-API-Minimum-Version": "1.1", "X-OpenStack-Ironic-API-Maximum-Version": "1.87"}
    # refused before a version was agreed: the range (if advertised) and Vary only
    assert IRONIC.headers(None) == {"Vary": "OpenStack-API-Version, X-OpenStack-Ironic-API-Version",
                                    "X-OpenStack-Ironic-API-Minimum-Version": "1.1",
                                    "X-OpenStack-Ironic-API-Maximum-Version": "1.87"}


def _app(versions: Microversions, *, wrapped: bool) -> Starlette:
    async def show(request: Request):
        version = versions.parse(request)
        response = JSONResponse({"version": str(version)})
        return response if wrapped else versions.versioned(response, version)

    async def missing(request: Request):
        versions.parse(request)
        raise errors.NotFound("No node x")

    router = Router(routes=[Route("/thing", show), Route("/missing", missing)])
    return Starlette(routes=[Mount("/api", app=versions.wrap(router) if wrapped else router)],
                     exception_handlers=HANDLERS)


class Client:
    def __init__(self, app: Starlette) -> None:
        self.app = app

    def get(self, path: str, headers: dict | None = None) -> httpx.Response:
        return request(self.app, "GET", path, headers=headers)


def test_per_handler_style_as_compute_uses_it():
    client = Client(_app(NOVA, wrapped=False))
    resp = client.get("/api/thing", headers={"OpenStack-API-Version": "compute 2.45"})
    assert resp.json() == {"version": "2.45"}
    assert resp.headers["openstack-api-version"] == "compute 2.45"
    assert resp.headers["x-openstack-nova-api-version"] == "2.45"
    assert resp.headers["vary"] == "OpenStack-API-Version, X-OpenStack-Nova-API-Version"
    resp = client.get("/api/thing", headers={"X-OpenStack-Nova-API-Version": "9.99"})
    assert resp.status_code == 406 and "Minimum is 2.1 and maximum is 2.96" in resp.json()["error"]["message"]
    assert client.get("/api/thing", headers={"X-OpenStack-Nova-API-Version": "2.x"}).status_code == 400


def test_wrapped_routes_carry_the_headers_on_every_answer():
    """Ironic style: negotiated once, the range on every response — errors and refusals too."""
    client = Client(_app(IRONIC, wrapped=True))
    resp = client.get("/api/thing", headers={"X-OpenStack-Ironic-API-Version": "1.31"})
    assert resp.status_code == 200 and resp.json() == {"version": "1.31"}
    assert resp.headers["x-openstack-ironic-api-version"] == "1.31"
    assert resp.headers["x-openstack-ironic-api-minimum-version"] == "1.1"
    assert resp.headers["x-openstack-ironic-api-maximum-version"] == "1.87"
    assert client.get("/api/thing").json() == {"version": "1.1"}
    missing = client.get("/api/missing", headers={"OpenStack-API-Version": "baremetal latest"})
    assert missing.status_code == 404 and missing.headers["x-openstack-ironic-api-version"] == "1.87"
    assert missing.headers["x-openstack-ironic-api-maximum-version"] == "1.87"
    for text in ("1.88", "x"):
        refused = client.get("/api/thing", headers={"X-OpenStack-Ironic-API-Version": text})
        assert refused.status_code == 406
        assert refused.json()["error"]["request_id"]
        assert refused.headers["x-openstack-ironic-api-minimum-version"] == "1.1"
        assert "x-openstack-ironic-api-version" not in refused.headers
