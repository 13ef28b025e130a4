"""A typed client of the bare-metal API (Ironic v1) as a user calls it: the CLI's
``freezeframe baremetal ...``.

It speaks microversion 1.116 (``X-OpenStack-Ironic-API-Version``), the one that adds the
``snapshot`` provision verb (seed 004) to Ironic's 1.115; any other can be asked for. The root
is the service's, without the version (``http://host:9292/baremetal``, or a real Ironic's
``http://host:6385``): every path starts with ``/v1``. Nodes are named by UUID or name (Ironic
takes both in its paths), ports by UUID; names and ids are quoted into one path segment, so
nothing a caller passes can reach another path.

Errors are ``BaremetalError`` with the status, the request id and Ironic's own message: its
error body is ``{"error_message": "<a JSON document with faultstring>"}``.
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import parse_qs, quote, urlsplit

import httpx

from freezeframe.common import remote
from freezeframe.common.httpclient import MAX_MESSAGE, ServiceClient, error_from, request_id_of
from freezeframe.common.remote import RemoteError

API_VERSION = "1.116"
VERSION_HEADER = "X-OpenStack-Ironic-API-Version"
PAGE_SIZE = 100
MAX_VERSION_HEADER = "X-OpenStack-Ironic-API-Maximum-Version"
POWER_TARGETS = ("power on", "power off", "rebooting")


class BaremetalError(RemoteError):
    """A request to the bare-metal service failed. ``status`` is None when no HTTP response came."""


class Unreachable(BaremetalError, remote.Unreachable):
    """No connection to the bare-metal service could be made."""


def ironic_error(response: httpx.Response) -> BaremetalError:
    """The error of a failed answer: Ironic's ``{"error_message": "<JSON with faultstring>"}``
    decoded (a plain string or an object in ``error_message`` too), else any other shape the
    common decoder knows."""
    try:
        body = response.json()
    except (ValueError, httpx.HTTPError):
        body = None
    inner = body.get("error_message") if isinstance(body, dict) else None
    if isinstance(inner, str):
        try:
            inner = json.loads(inner)
        except ValueError:
            pass
    message = None
    if isinstance(inner, dict):     # a fault, or a 406's {"code", "title", "description"}
        message = inner.get("faultstring") or inner.get("description") or inner.get("message")
    elif isinstance(inner, str) and inner.strip():
        message = inner
    if not isinstance(message, str) or not message.strip():
        return error_from(response, BaremetalError)        # type: ignore[return-value]
    return BaremetalError(" ".join(message.split())[:MAX_MESSAGE], status=response.status_code,
                          request_id=request_id_of(response), title=response.reason_phrase or None)


def _older(version: str, than: str) -> bool:
    """Whether microversion ``version`` ("1.115") is a valid one older than ``than``."""
    try:
        return tuple(map(int, version.split("."))) < tuple(map(int, than.split(".")))
    except ValueError:
        return False


def segment(value: str, what: str = "id") -> str:
    """A name or id as one path segment."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"invalid {what} {value!r}")
    return quote(value, safe="")


def json_patch(*, add: Mapping[str, Any] | None = None, remove: Sequence[str] = ()) -> list[dict[str, Any]]:
    """An RFC 6902 patch: ``add`` {path: value} (add replaces an existing member), ``remove``
    paths. Paths are ``/name`` or ``/properties/cpus``; a key's ``~`` and ``/`` are escaped by
    the caller with ``pointer``."""
    ops = [{"op": "add", "path": path, "value": value} for path, value in (add or {}).items()]
    return ops + [{"op": "remove", "path": path} for path in remove]


def pointer(*parts: str) -> str:
    """A JSON pointer from its parts (``pointer("properties", "a/b")`` -> ``/properties/a~1b``)."""
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


class BaremetalClient(ServiceClient):
    """Ironic v1 calls at one bare-metal root."""

    service = "baremetal"
    error = BaremetalError
    unreachable = Unreachable

    def __init__(self, url: str, token: str | None = None, *, microversion: str = API_VERSION,
                 negotiate: bool = False, **kw: Any) -> None:
        """``negotiate``: when the service's newest microversion is older than ``microversion``
        (a 406 saying so), speak its newest instead (the snapshot verb needs 1.116)."""
        super().__init__(url, token, extra_headers={VERSION_HEADER: microversion}, **kw)
        self.microversion = microversion
        self.negotiate = negotiate

    def _send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        response = self._send_once(request, stream=stream)
        newest = response.headers.get(MAX_VERSION_HEADER, "")
        if response.status_code == 406 and self.negotiate and _older(newest, self.microversion):
            response.close()
            self.microversion = newest
            self._http.headers[VERSION_HEADER] = newest
            request.headers[VERSION_HEADER] = newest
            response = self._send_once(request, stream=stream)
        if response.is_error:
            try:
                response.read()
            except httpx.HTTPError:
                pass
            finally:
                response.close()
            raise ironic_error(response)
        return response

    def _send_once(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        try:
            response = self._http.send(request, stream=stream)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise self._unreachable(request, exc) from None
        except httpx.TransportError as exc:
            raise self.error(f"{request.method} {request.url} failed: {exc or type(exc).__name__}") from None
        return response

    def _doc(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        body = self._json(method, path, **kw)
        if not isinstance(body, dict):
            raise BaremetalError(f"{method} {path}: the answer is not a JSON object")
        return body

    # -- the service -------------------------------------------------------------------------

    def version(self) -> dict[str, Any]:
        """``GET /v1``: the API's version document (its ``version`` has min/max microversions)."""
        return self._doc("GET", "/v1")

    # -- nodes -------------------------------------------------------------------------------

    def create_node(self, driver: str, *, name: str | None = None, driver_info: Mapping[str, Any] | None = None,
                    properties: Mapping[str, Any] | None = None, instance_info: Mapping[str, Any] | None = None,
                    resource_class: str | None = None, description: str | None = None,
                    interfaces: Mapping[str, str] | None = None, extra: Mapping[str, Any] | None = None,
                    uuid: str | None = None) -> dict[str, Any]:
        """Enrol a node (``enroll``); ``interfaces``: {"power_interface": "fake", ...}."""
        body: dict[str, Any] = {"driver": driver}
        for key, value in (("name", name), ("driver_info", driver_info), ("properties", properties),
                           ("instance_info", instance_info), ("resource_class", resource_class),
                           ("description", description), ("extra", extra), ("uuid", uuid)):
            if value is not None:
                body[key] = dict(value) if isinstance(value, Mapping) else value
        body.update({k: v for k, v in (interfaces or {}).items() if v is not None})
        return self._doc("POST", "/v1/nodes", json=body)

    def list_nodes(self, *, detail: bool = False, filters: Mapping[str, str] | None = None,
                   limit: int | None = None, page_size: int = PAGE_SIZE) -> Iterator[dict[str, Any]]:
        """Every visible node (Ironic's order), ``page_size`` at a time (marker paging);
        ``filters``: Ironic's query parameters (provision_state, maintenance, driver, ...)."""
        return self._pages("/v1/nodes/detail" if detail else "/v1/nodes", "nodes", filters, limit, page_size)

    def show_node(self, ident: str) -> dict[str, Any]:
        """A node by UUID or name."""
        return self._doc("GET", f"/v1/nodes/{segment(ident, 'node')}")

    def update_node(self, ident: str, patch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Change a node with a JSON patch (``json_patch``); the node after."""
        return self._doc("PATCH", f"/v1/nodes/{segment(ident, 'node')}", json=[dict(op) for op in patch])

    def delete_node(self, ident: str) -> None:
        self._call("DELETE", f"/v1/nodes/{segment(ident, 'node')}")

    def set_provision_state(self, ident: str, verb: str, *, image_ref: str | None = None) -> None:
        """Send a provision verb (manage, provide, adopt, abort, deleted, snapshot with
        ``image_ref``): 202, the node moves on in the background."""
        body: dict[str, Any] = {"target": verb}
        if image_ref is not None:
            body["image_ref"] = image_ref
        self._call("PUT", f"/v1/nodes/{segment(ident, 'node')}/states/provision", json=body)

    def set_power_state(self, ident: str, target: str, *, timeout: int | None = None) -> None:
        """``target``: "power on", "power off" or "rebooting" (202)."""
        if target not in POWER_TARGETS:
            raise ValueError(f"invalid power target {target!r}: one of {', '.join(POWER_TARGETS)}")
        body: dict[str, Any] = {"target": target}
        if timeout is not None:
            body["timeout"] = timeout
        self._call("PUT", f"/v1/nodes/{segment(ident, 'node')}/states/power", json=body)

    def node_states(self, ident: str) -> dict[str, Any]:
        return self._doc("GET", f"/v1/nodes/{segment(ident, 'node')}/states")

    def validate_node(self, ident: str) -> dict[str, dict[str, Any]]:
        """Each interface's {"result": bool|None, "reason": str|None}."""
        return self._doc("GET", f"/v1/nodes/{segment(ident, 'node')}/validate")

    def set_maintenance(self, ident: str, reason: str | None = None) -> None:
        self._call("PUT", f"/v1/nodes/{segment(ident, 'node')}/maintenance",
                   json={"reason": reason} if reason is not None else {})

    def unset_maintenance(self, ident: str) -> None:
        self._call("DELETE", f"/v1/nodes/{segment(ident, 'node')}/maintenance")

    # -- ports -------------------------------------------------------------------------------

    def create_port(self, address: str, node_uuid: str, *, pxe_enabled: bool | None = None,
                    extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"address": address, "node_uuid": node_uuid}
        if pxe_enabled is not None:
            body["pxe_enabled"] = pxe_enabled
        if extra:
            body["extra"] = dict(extra)
        return self._doc("POST", "/v1/ports", json=body)

    def list_ports(self, *, node: str | None = None, address: str | None = None, detail: bool = False,
                   limit: int | None = None, page_size: int = PAGE_SIZE) -> Iterator[dict[str, Any]]:
        """Ports, of one node (UUID or name) or with one MAC address when asked."""
        filters = {k: v for k, v in (("node", node), ("address", address)) if v is not None}
        return self._pages("/v1/ports/detail" if detail else "/v1/ports", "ports", filters, limit, page_size)

    def show_port(self, port_id: str) -> dict[str, Any]:
        return self._doc("GET", f"/v1/ports/{segment(port_id, 'port')}")

    def delete_port(self, port_id: str) -> None:
        self._call("DELETE", f"/v1/ports/{segment(port_id, 'port')}")

    # -- plumbing ----------------------------------------------------------------------------

    def _pages(self, path: str, key: str, filters: Mapping[str, str] | None, limit: int | None,
               page_size: int) -> Iterator[dict[str, Any]]:
        """Ironic's paging: each page has ``next`` (a URL with ``marker``) while more remain. The
        marker is taken from it and asked of our own root (the link names the host as the
        server sees itself)."""
        params = dict(filters or {})
        seen, marker = 0, None
        while limit is None or seen < limit:
            size = page_size if limit is None else min(page_size, limit - seen)
            page = self._doc("GET", path, params={**params, "limit": str(size),
                                                   **({"marker": marker} if marker else {})})
            items = page.get(key)
            if not isinstance(items, list):
                raise BaremetalError(f"GET {path}: the answer has no {key!r} list")
            for item in items:
                if not isinstance(item, dict) or not isinstance(item.get("uuid"), str):
                    raise BaremetalError(f"GET {path}: an item of {key!r} has no uuid")
                yield item
            seen += len(items)
            following = page.get("next")
            if not items or not isinstance(following, str) or not following:
                return
            found = parse_qs(urlsplit(following).query).get("marker")
            if not found or found[0] == marker:
                return
            marker = found[0]
