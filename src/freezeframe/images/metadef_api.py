"""The image API's metadata-definition routes (/v2/metadefs/..., /v2/schemas/metadefs/...) and
its tasks routes (/v2/tasks): thin, as the rest of the image API. Mounted by ``ImageAPI``."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from freezeframe.common import errors
from freezeframe.common.web.request import ctx_of, json_body
from freezeframe.images.metadef_schemas import SCHEMAS
from freezeframe.images.metadefs import NS_PATH, MetadefService
from freezeframe.images.tasks import TaskService
from freezeframe.settings import ImageSettings

_NS = "/v2/metadefs/namespaces/{namespace}"
METADEF_SCHEMAS = ("namespace", "namespaces", "resource_type", "resource_types", "property", "properties", "object",
                   "objects", "tag", "tags")


def _links(path: str, params: list[tuple[str, str]], next_marker: str | None) -> dict[str, str]:
    """Glance's ``first`` (the query without its marker) and ``next`` (with the next marker)."""
    kept = [(k, v) for k, v in params if k != "marker"]
    links = {"first": path + ("?" + urlencode(kept) if kept else "")}
    if next_marker is not None:
        links["next"] = path + "?" + urlencode(kept + [("marker", next_marker)])
    return links


class MetadefAPI:
    def __init__(self, metadefs: MetadefService | None, tasks: TaskService | None,
                 settings: ImageSettings | None) -> None:
        self.metadefs = metadefs
        self.tasks = tasks
        self.settings = settings

    def routes(self) -> list[Route]:
        return [
            Route("/v2/metadefs/resource_types", self.list_resource_types, methods=["GET"]),
            Route("/v2/metadefs/namespaces", self.list_namespaces, methods=["GET"]),
            Route("/v2/metadefs/namespaces", self.create_namespace, methods=["POST"]),
            Route(_NS, self.show_namespace, methods=["GET"]),
            Route(_NS, self.update_namespace, methods=["PUT"]),
            Route(_NS, self.delete_namespace, methods=["DELETE"]),
            Route(_NS + "/resource_types", self.list_associations, methods=["GET"]),
            Route(_NS + "/resource_types", self.add_association, methods=["POST"]),
            Route(_NS + "/resource_types/{name}", self.remove_association, methods=["DELETE"]),
            Route(_NS + "/tags", self.create_tags, methods=["POST"]),
            *[route for kind in ("objects", "properties", "tags") for route in self._child_routes(kind)],
            Route("/v2/schemas/metadefs/{name}", self.schema, methods=["GET"]),
            Route("/v2/tasks", self.list_tasks, methods=["GET"]),
            Route("/v2/tasks/{task_id}", self.show_task, methods=["GET"]),
        ]

    def _child_routes(self, kind: str) -> list[Route]:
        path = f"{_NS}/{kind}"
        one = path + "/{name}"

        def on(handler):            # the handler, told which kind of definition the route is for
            async def endpoint(request: Request) -> Response:
                return await handler(request, kind)
            return endpoint
        routes = [Route(path, on(self.list_children), methods=["GET"]),
                  Route(path, on(self.delete_children), methods=["DELETE"]),
                  Route(one, on(self.show_child), methods=["GET"]),
                  Route(one, on(self.update_child), methods=["PUT"]),
                  Route(one, on(self.delete_child), methods=["DELETE"])]
        if kind == "tags":
            routes.append(Route(one, self.create_tag, methods=["POST"]))
        else:
            routes.append(Route(path, on(self.create_child), methods=["POST"]))
        return routes

    @property
    def _service(self) -> MetadefService:
        assert self.metadefs is not None
        return self.metadefs

    def _limits(self) -> tuple[int, int]:
        return (self.settings.list_limit_default, self.settings.list_limit_max) if self.settings else (25, 1000)

    # -- namespaces ------------------------------------------------------------------------------

    async def list_namespaces(self, request: Request) -> Response:
        params = list(request.query_params.multi_items())
        found, next_marker = await self._service.list_namespaces(ctx_of(request), params, *self._limits())
        return JSONResponse({"namespaces": found, **_links(NS_PATH, params, next_marker),
                             "schema": "/v2/schemas/metadefs/namespaces"})

    async def create_namespace(self, request: Request) -> Response:
        view = await self._service.create_namespace(ctx_of(request), await json_body(request))
        return JSONResponse(view, status_code=201, headers={"Location": view["self"]})

    async def show_namespace(self, request: Request) -> Response:
        return JSONResponse(await self._service.show_namespace(
            ctx_of(request), request.path_params["namespace"], request.query_params.get("resource_type")))

    async def update_namespace(self, request: Request) -> Response:
        return JSONResponse(await self._service.update_namespace(ctx_of(request), request.path_params["namespace"],
                                                                 await json_body(request)))

    async def delete_namespace(self, request: Request) -> Response:
        await self._service.delete_namespace(ctx_of(request), request.path_params["namespace"])
        return Response(status_code=204)

    # -- resource types --------------------------------------------------------------------------

    async def list_resource_types(self, request: Request) -> Response:
        return JSONResponse({"resource_types": await self._service.list_resource_types(ctx_of(request))})

    async def list_associations(self, request: Request) -> Response:
        found = await self._service.list_associations(ctx_of(request), request.path_params["namespace"])
        return JSONResponse({"resource_type_associations": found})

    async def add_association(self, request: Request) -> Response:
        view = await self._service.add_association(ctx_of(request), request.path_params["namespace"],
                                                   await json_body(request))
        return JSONResponse(view, status_code=201)

    async def remove_association(self, request: Request) -> Response:
        p = request.path_params
        await self._service.remove_association(ctx_of(request), p["namespace"], p["name"])
        return Response(status_code=204)

    # -- objects, properties, tags ---------------------------------------------------------------

    async def list_children(self, request: Request, kind: str) -> Response:
        found = await self._service.list_children(ctx_of(request), request.path_params["namespace"], kind)
        body: dict[str, Any] = {kind: found}
        if kind == "objects":
            body["schema"] = "/v2/schemas/metadefs/objects"
        return JSONResponse(body)

    async def delete_children(self, request: Request, kind: str) -> Response:
        await self._service.delete_contents(ctx_of(request), request.path_params["namespace"], kind)
        return Response(status_code=204)

    async def create_child(self, request: Request, kind: str) -> Response:
        view = await self._service.create_child(ctx_of(request), request.path_params["namespace"],
                                                kind, await json_body(request))
        return JSONResponse(view, status_code=201)

    async def create_tag(self, request: Request) -> Response:
        p = request.path_params
        view = await self._service.create_child(ctx_of(request), p["namespace"], "tags", {"name": p["name"]})
        return JSONResponse(view, status_code=201)

    async def create_tags(self, request: Request) -> Response:
        append = request.headers.get("x-openstack-append", "false").strip().lower() == "true"
        tags = await self._service.create_tags(ctx_of(request), request.path_params["namespace"],
                                               await json_body(request), append)
        return JSONResponse({"tags": tags}, status_code=201)

    async def show_child(self, request: Request, kind: str) -> Response:
        p = request.path_params
        return JSONResponse(await self._service.show_child(ctx_of(request), p["namespace"], kind,
                                                           p["name"]))

    async def update_child(self, request: Request, kind: str) -> Response:
        p = request.path_params
        return JSONResponse(await self._service.update_child(ctx_of(request), p["namespace"], kind,
                                                             p["name"], await json_body(request)))

    async def delete_child(self, request: Request, kind: str) -> Response:
        p = request.path_params
        await self._service.delete_child(ctx_of(request), p["namespace"], kind, p["name"])
        return Response(status_code=204)

    # -- schemas, tasks --------------------------------------------------------------------------

    async def schema(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in METADEF_SCHEMAS:
            raise errors.NotFound(f"No schema named metadefs/{name[:64]!r}")
        return JSONResponse(SCHEMAS[name])

    async def list_tasks(self, request: Request) -> Response:
        assert self.tasks is not None
        params = list(request.query_params.multi_items())
        found, next_marker = await self.tasks.list(ctx_of(request), params, *self._limits())
        return JSONResponse({"tasks": found, **_links("/v2/tasks", params, next_marker),
                             "schema": "/v2/schemas/tasks"})

    async def show_task(self, request: Request) -> Response:
        assert self.tasks is not None
        return JSONResponse(await self.tasks.show(ctx_of(request), request.path_params["task_id"]))
