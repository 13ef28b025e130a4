"""The Ironic v1 subset at /baremetal/v1: nodes (create, show, list, detail, JSON patch, delete,
maintenance, provision and power states, validation), ports, and the agent's lookup and
heartbeat. Microversions as Ironic's (``X-OpenStack-Ironic-API-Version`` or
``OpenStack-API-Version: baremetal X``; 1.1-1.116, 1.116 being Freezeframe's: the ``snapshot``
verb and ``snapshot_interface``; none asked: 1.1; the range on every answer, errors included;
outside it or malformed: 406). Errors in Ironic's body (``{"error_message": "{\\"faultstring\\":
...}"}``) plus the request id; the status of each domain error is the one map's
(``common.web.errors.status_of``)."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router

from freezeframe.baremetal import queries, views
from freezeframe.baremetal.service import BaremetalService
from freezeframe.common import errors
from freezeframe.common.context import request_id_var
from freezeframe.common.web.errors import handlers_for
from freezeframe.common.web.microversion import IRONIC_RANGE_HEADERS, Microversions
from freezeframe.common.web.mount import Mounted, Public
from freezeframe.common.web.request import ctx_of, json_body

VERSIONS = Microversions("baremetal", "X-OpenStack-Ironic-API-Version", min="1.1", max="1.116", default="1.1",
                         range_headers=IRONIC_RANGE_HEADERS, malformed=errors.NotAcceptable)


# -- errors in Ironic's shape ---------------------------------------------------------------------

def ironic_error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    fault = {"faultcode": "Server" if status >= 500 else "Client", "faultstring": message, "debuginfo": None}
    return JSONResponse({"error_message": json.dumps(fault), "request_id": request_id_var.get()}, status_code=status,
                        headers=headers)


IRONIC_HANDLERS = handlers_for(ironic_error_response, host="host", not_found="The resource could not be found.")


class BaremetalAPI:
    def __init__(self, service: BaremetalService) -> None:
        self.service = service

    def mounted(self) -> Mounted:
        """The bare-metal API at /baremetal; its version documents, the agent's lookup and its
        heartbeat need no token (the agent token in the heartbeat is the credential)."""
        public = (Public(""), Public("/"), Public("/v1"), Public("/v1/"), Public("/v1/lookup"),
                  Public("/v1/heartbeat", frozenset({"POST"}), prefix=True))
        return Mounted("baremetal", "/baremetal", VERSIONS.wrap(self.router(), handlers=IRONIC_HANDLERS),
                       public=public)

    def router(self) -> Router:
        n = "/v1/nodes/{node_ident}"
        routes = [
            Route("/", self.root, methods=["GET"]),
            Route("/v1", self.v1, methods=["GET"]),
            Route("/v1/", self.v1, methods=["GET"]),
            Route("/v1/nodes", self.create_node, methods=["POST"]),
            Route("/v1/nodes", self.list_nodes, methods=["GET"]),
            Route("/v1/nodes/detail", self.list_nodes_detail, methods=["GET"]),
            Route(n, self.show_node, methods=["GET"]),
            Route(n, self.update_node, methods=["PATCH"]),
            Route(n, self.delete_node, methods=["DELETE"]),
            Route(n + "/maintenance", self.maintenance, methods=["PUT", "DELETE"]),
            Route(n + "/states", self.states, methods=["GET"]),
            Route(n + "/states/provision", self.provision, methods=["PUT"]),
            Route(n + "/states/power", self.power, methods=["PUT"]),
            Route(n + "/validate", self.validate, methods=["GET"]),
            Route(n + "/ports", self.node_ports, methods=["GET"]),
            Route(n + "/ports/detail", self.node_ports_detail, methods=["GET"]),
            Route("/v1/ports", self.create_port, methods=["POST"]),
            Route("/v1/ports", self.list_ports, methods=["GET"]),
            Route("/v1/ports/detail", self.list_ports_detail, methods=["GET"]),
            Route("/v1/ports/{port_id}", self.show_port, methods=["GET"]),
            Route("/v1/ports/{port_id}", self.update_port, methods=["PATCH"]),
            Route("/v1/ports/{port_id}", self.delete_port, methods=["DELETE"]),
            Route("/v1/lookup", self.lookup, methods=["GET"]),
            Route("/v1/heartbeat/{node_ident}", self.heartbeat, methods=["POST"]),
        ]
        return Router(routes=routes)

    # -- versions --------------------------------------------------------------------------------

    @staticmethod
    def _root(request: Request) -> str:
        return f"{request.url.scheme}://{request.url.netloc}{request.scope.get('root_path', '')}"

    def _base(self, request: Request) -> str:
        return self._root(request) + "/v1"

    async def root(self, request: Request) -> Response:
        return JSONResponse(views.root_document(self._root(request), str(VERSIONS.min), str(VERSIONS.max)))

    async def v1(self, request: Request) -> Response:
        return JSONResponse(views.v1_document(self._root(request), str(VERSIONS.min), str(VERSIONS.max)))

    # -- nodes -----------------------------------------------------------------------------------

    def _node(self, request: Request, node, fields: list[str] | None = None, summary: bool = False) -> dict[str, Any]:
        return views.node_view(node, self._base(request), VERSIONS.parse(request), conductor=self.service.conductor,
                               fields=fields, summary=summary)

    def _fields(self, request: Request, allowed: tuple[str, ...]) -> list[str] | None:
        if "fields" not in request.query_params:
            return None
        if VERSIONS.parse(request) < (1, 8):
            raise errors.NotAcceptable("fields needs microversion 1.8 or later")
        return queries.parse_listing({"fields": request.query_params["fields"]}, sort_keys=("id",),
                                     fields_allowed=allowed).fields

    async def create_node(self, request: Request) -> Response:
        node = await self.service.create_node(ctx_of(request), await json_body(request), VERSIONS.parse(request))
        return JSONResponse(self._node(request, node), status_code=201,
                            headers={"Location": f"{self._base(request)}/nodes/{node.id}"})

    async def list_nodes(self, request: Request) -> Response:
        detail = False
        if "detail" in request.query_params:
            from freezeframe.baremetal.checks import boolean
            detail = boolean(request.query_params["detail"], "detail")
        return await self._list_nodes(request, detail=detail)

    async def list_nodes_detail(self, request: Request) -> Response:
        return await self._list_nodes(request, detail=True)

    async def _list_nodes(self, request: Request, *, detail: bool) -> Response:
        version = VERSIONS.parse(request)
        params = dict(request.query_params)
        rows, listing = await self.service.list_nodes(ctx_of(request), params, version, detail)
        body: dict[str, Any] = {"nodes": [self._node(request, n, listing.fields, summary=not detail) for n in rows]}
        if rows and len(rows) == listing.limit:
            path = "/nodes/detail" if request.url.path.endswith("/detail") else "/nodes"
            body["next"] = queries.next_link(self._base(request) + path, params, listing, rows[-1].id)
        return JSONResponse(body)

    async def show_node(self, request: Request) -> Response:
        fields = self._fields(request, views.node_fields(VERSIONS.parse(request)))
        node = await self.service.show_node(ctx_of(request), request.path_params["node_ident"])
        return JSONResponse(self._node(request, node, fields))

    async def update_node(self, request: Request) -> Response:
        node = await self.service.update_node(ctx_of(request), request.path_params["node_ident"],
                                              await json_body(request), VERSIONS.parse(request))
        return JSONResponse(self._node(request, node))

    async def delete_node(self, request: Request) -> Response:
        await self.service.delete_node(ctx_of(request), request.path_params["node_ident"])
        return Response(status_code=204)

    async def maintenance(self, request: Request) -> Response:
        on = request.method == "PUT"
        reason = None
        if on:
            body = await json_body(request, allow_empty=True)
            if not isinstance(body, dict):
                raise errors.Invalid("Invalid maintenance body: a JSON object ({\"reason\": ...}) is expected")
            from freezeframe.baremetal.checks import optional_text, unknown_keys
            unknown_keys(body, {"reason"}, "maintenance")
            reason = optional_text(body.get("reason"), "reason", limit=4096)
        await self.service.set_maintenance(ctx_of(request), request.path_params["node_ident"], on, reason)
        return Response(status_code=202)

    async def states(self, request: Request) -> Response:
        node = await self.service.show_node(ctx_of(request), request.path_params["node_ident"])
        return JSONResponse(views.states_view(node, VERSIONS.parse(request)))

    def _states_location(self, request: Request) -> dict[str, str]:
        return {"Location": f"{self._base(request)}/nodes/{request.path_params['node_ident']}/states"}

    async def provision(self, request: Request) -> Response:
        await self.service.set_provision_state(ctx_of(request), request.path_params["node_ident"],
                                               await json_body(request), VERSIONS.parse(request))
        return Response(status_code=202, headers=self._states_location(request))

    async def power(self, request: Request) -> Response:
        await self.service.set_power_state(ctx_of(request), request.path_params["node_ident"],
                                           await json_body(request), VERSIONS.parse(request))
        return Response(status_code=202, headers=self._states_location(request))

    async def validate(self, request: Request) -> Response:
        return JSONResponse(await self.service.validate_node(ctx_of(request), request.path_params["node_ident"],
                                                             VERSIONS.parse(request)))

    # -- ports -----------------------------------------------------------------------------------

    def _port(self, request: Request, port, fields: list[str] | None = None, summary: bool = False) -> dict[str, Any]:
        return views.port_view(port, self._base(request), VERSIONS.parse(request), fields=fields, summary=summary)

    async def create_port(self, request: Request) -> Response:
        port = await self.service.create_port(ctx_of(request), await json_body(request))
        return JSONResponse(self._port(request, port), status_code=201,
                            headers={"Location": f"{self._base(request)}/ports/{port.id}"})

    async def _list_ports(self, request: Request, *, detail: bool, node_ident: str | None = None) -> Response:
        params = dict(request.query_params)
        if "detail" in params and not request.url.path.endswith("/detail"):
            from freezeframe.baremetal.checks import boolean
            detail = boolean(params["detail"], "detail")
        rows, listing = await self.service.list_ports(ctx_of(request), params, VERSIONS.parse(request),
                                                      node_ident=node_ident, detail=detail)
        body: dict[str, Any] = {"ports": [self._port(request, p, listing.fields, summary=not detail) for p in rows]}
        if rows and len(rows) == listing.limit:
            path = request.url.path.split("/v1", 1)[-1]        # /ports[/detail], /nodes/{node}/ports...
            body["next"] = queries.next_link(self._base(request) + path, params, listing, rows[-1].id)
        return JSONResponse(body)

    async def list_ports(self, request: Request) -> Response:
        return await self._list_ports(request, detail=False)

    async def list_ports_detail(self, request: Request) -> Response:
        return await self._list_ports(request, detail=True)

    async def node_ports(self, request: Request) -> Response:
        return await self._list_ports(request, detail=False, node_ident=request.path_params["node_ident"])

    async def node_ports_detail(self, request: Request) -> Response:
        return await self._list_ports(request, detail=True, node_ident=request.path_params["node_ident"])

    async def show_port(self, request: Request) -> Response:
        fields = self._fields(request, views.port_fields(VERSIONS.parse(request)))
        port = await self.service.show_port(ctx_of(request), request.path_params["port_id"])
        return JSONResponse(self._port(request, port, fields))

    async def update_port(self, request: Request) -> Response:
        port = await self.service.update_port(ctx_of(request), request.path_params["port_id"],
                                              await json_body(request))
        return JSONResponse(self._port(request, port))

    async def delete_port(self, request: Request) -> Response:
        await self.service.delete_port(ctx_of(request), request.path_params["port_id"])
        return Response(status_code=204)

    # -- the agent -------------------------------------------------------------------------------

    async def lookup(self, request: Request) -> Response:
        node, token = await self.service.lookup(dict(request.query_params))
        return JSONResponse(views.lookup_view(node, self._base(request), token,
                                              self.service.settings.heartbeat_timeout))

    async def heartbeat(self, request: Request) -> Response:
        await self.service.heartbeat(request.path_params["node_ident"], await json_body(request))
        return Response(status_code=202)
