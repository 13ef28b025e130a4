"""The Cinder v3 subset at /volume/v3/{project_id} (and, as Cinder 3.67+ allows, without the
project id): volumes, snapshots, their metadata and actions, seed 002's snapshot admin metadata,
the attachments API, the one volume type and availability zone. Microversions by
``OpenStack-API-Version: volume 3.x`` (3.0-3.71; 406 outside). Errors in Cinder's fault body
(``{"itemNotFound": {"code": 404, "message": ..., "request_id": ...}}``, ``FAULT_HANDLERS``)."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from freezeframe.common import errors
from freezeframe.common.context import request_id_var
from freezeframe.common.web.errors import FAULT_HANDLERS
from freezeframe.common.web.microversion import Microversions
from freezeframe.common.web.mount import Mounted, Public
from freezeframe.common.web.request import ctx_of, json_body
from freezeframe.volumes import views
from freezeframe.volumes.service import DEFAULT_TYPE_ID, VolumeService

VERSIONS = Microversions("volume", None, min="3.0", max="3.71")
Handler = Callable[[Request], Awaitable[Response]]


class ComputeRequestId:
    """Every answer also carries the request id as ``X-Compute-Request-Id``, as Cinder's do
    (``_set_request_id_header``): python-cinderclient takes an error's ``request_id`` from it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            request_id = request_id_var.get()
            if message["type"] == "http.response.start" and request_id != "-":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-compute-request-id", request_id.encode("latin-1"))]}
            await send(message)
        await self.app(scope, receive, sending)


class VolumeAPI:
    def __init__(self, volumes: VolumeService) -> None:
        self.volumes = volumes

    def mounted(self) -> Mounted:
        """The volume API (Cinder v3) at /volume; its version documents need no token."""
        return Mounted("volume", "/volume", ComputeRequestId(VERSIONS.wrap(self.router(), handlers=FAULT_HANDLERS)),
                       public=(Public(""), Public("/"), Public("/v3"), Public("/v3/")))

    def router(self) -> Router:
        resources: list[tuple[str, Handler, list[str]]] = [
            ("/volumes", self.create_volume, ["POST"]),
            ("/volumes", self.list_volumes, ["GET"]),
            ("/volumes/detail", self.list_volumes_detail, ["GET"]),
            ("/volumes/{volume_id}", self.show_volume, ["GET"]),
            ("/volumes/{volume_id}", self.update_volume, ["PUT"]),
            ("/volumes/{volume_id}", self.delete_volume, ["DELETE"]),
            ("/volumes/{volume_id}/action", self.volume_action, ["POST"]),
            ("/volumes/{volume_id}/metadata", self.volume_metadata, ["GET", "POST", "PUT"]),
            ("/volumes/{volume_id}/metadata/{key}", self.volume_metadata_key, ["GET", "PUT", "DELETE"]),
            ("/snapshots", self.create_snapshot, ["POST"]),
            ("/snapshots", self.list_snapshots, ["GET"]),
            ("/snapshots/detail", self.list_snapshots_detail, ["GET"]),
            ("/snapshots/{snapshot_id}", self.show_snapshot, ["GET"]),
            ("/snapshots/{snapshot_id}", self.update_snapshot, ["PUT"]),
            ("/snapshots/{snapshot_id}", self.delete_snapshot, ["DELETE"]),
            ("/snapshots/{snapshot_id}/action", self.snapshot_action, ["POST"]),
            ("/snapshots/{snapshot_id}/metadata", self.snapshot_metadata, ["GET", "POST", "PUT"]),
            ("/snapshots/{snapshot_id}/metadata/{key}", self.snapshot_metadata_key, ["GET", "PUT", "DELETE"]),
            ("/snapshots/{snapshot_id}/os-admin-metadata", self.snapshot_admin_metadata, ["GET"]),
            ("/attachments", self.create_attachment, ["POST"]),
            ("/attachments", self.list_attachments, ["GET"]),
            ("/attachments/detail", self.list_attachments, ["GET"]),
            ("/attachments/{attachment_id}", self.show_attachment, ["GET"]),
            ("/attachments/{attachment_id}", self.update_attachment, ["PUT"]),
            ("/attachments/{attachment_id}", self.delete_attachment, ["DELETE"]),
            ("/attachments/{attachment_id}/action", self.attachment_action, ["POST"]),
            ("/types", self.types, ["GET"]),
            ("/types/default", self.default_type, ["GET"]),
            ("/types/{type_id}", self.show_type, ["GET"]),
            ("/os-availability-zone", self.zones, ["GET"]),
            ("/limits", self.limits, ["GET"]),
        ]
        routes = [Route("/", self.versions, methods=["GET"]), Route("/v3", self.versions, methods=["GET"]),
                  Route("/v3/", self.versions, methods=["GET"])]
        # Without the project id first (3.67+ style; Cinder routes both at every version), then with it.
        routes += [Route("/v3" + path, handler, methods=methods) for path, handler, methods in resources]
        routes += [Route("/v3/{project_id}" + path, self._in_project(handler), methods=methods)
                   for path, handler, methods in resources]
        return Router(routes=routes)

    @staticmethod
    def _in_project(handler: Handler) -> Handler:
        """A route under /v3/{project_id}: the project in the URL must be the caller's (an
        admin may name any); Cinder answers a mismatch 400 "Malformed request url"."""
        async def checked(request: Request) -> Response:
            ctx = ctx_of(request)
            project = request.path_params["project_id"]
            if project != ctx.project_id and not ctx.is_admin:
                raise errors.Invalid(f"Malformed request url: project {project} in the URL is not the project "
                                     f"of your token ({ctx.project_id})")
            return await handler(request)
        return checked

    # -- versions ------------------------------------------------------------------------------

    def _root(self, request: Request) -> str:
        return f"{request.url.scheme}://{request.url.netloc}{request.scope.get('root_path', '')}"

    def _base(self, request: Request) -> str:
        project = request.path_params.get("project_id")
        return self._root(request) + "/v3" + (f"/{project}" if project else "")

    async def versions(self, request: Request) -> Response:
        doc = {"id": "v3.0", "status": "CURRENT", "version": str(VERSIONS.max), "min_version": str(VERSIONS.min),
               "updated": "2023-08-31T00:00:00Z",
               "links": [{"rel": "describedby", "type": "text/html", "href": "https://docs.openstack.org/"},
                         {"rel": "self", "href": self._root(request) + "/v3/"}],
               "media-types": [{"base": "application/json",
                                "type": "application/vnd.openstack.volume+json;version=3"}]}
        if request.url.path.rstrip("/").endswith("/v3"):
            return JSONResponse({"versions": [doc]})
        return JSONResponse({"versions": [doc]}, status_code=300)

    # -- volumes -------------------------------------------------------------------------------

    def _volume_body(self, request: Request, vol, attachments) -> dict[str, Any]:
        return views.volume_view(vol, attachments, self._base(request), VERSIONS.parse(request), ctx_of(request),
                                 default_type_id=DEFAULT_TYPE_ID)

    async def create_volume(self, request: Request) -> Response:
        vol = await self.volumes.create_volume(ctx_of(request), await json_body(request), VERSIONS.parse(request))
        return JSONResponse({"volume": self._volume_body(request, vol, [])}, status_code=202)

    async def list_volumes(self, request: Request) -> Response:
        return await self._list_volumes(request, detail=False)

    async def list_volumes_detail(self, request: Request) -> Response:
        return await self._list_volumes(request, detail=True)

    async def _list_volumes(self, request: Request, *, detail: bool) -> Response:
        version = VERSIONS.parse(request)
        params = dict(request.query_params)
        rows, count, attached, listing = await self.volumes.list_volumes(
            ctx_of(request), params, detail=detail, with_count=version >= (3, 45))
        base = self._base(request)
        items = [self._volume_body(request, v, attached.get(v.id, [])) if detail else views.volume_summary(v, base)
                 for v in rows]
        body: dict[str, Any] = {"volumes": items}
        if len(rows) == listing.limit and rows:
            body["volumes_links"] = [_next(request, rows[-1].id)]
        if count is not None:
            body["count"] = count
        return JSONResponse(body)

    async def show_volume(self, request: Request) -> Response:
        vol, attachments = await self.volumes.show_volume(ctx_of(request), request.path_params["volume_id"])
        return JSONResponse({"volume": self._volume_body(request, vol, attachments)})

    async def update_volume(self, request: Request) -> Response:
        ctx = ctx_of(request)
        await self.volumes.update_volume(ctx, request.path_params["volume_id"], await json_body(request))
        vol, attachments = await self.volumes.show_volume(ctx, request.path_params["volume_id"])
        return JSONResponse({"volume": self._volume_body(request, vol, attachments)})

    async def delete_volume(self, request: Request) -> Response:
        cascade = request.query_params.get("cascade")
        from freezeframe.volumes.queries import truthy
        await self.volumes.delete_volume(ctx_of(request), request.path_params["volume_id"],
                                         cascade=truthy("cascade", cascade) if cascade is not None else False)
        return Response(status_code=202)

    async def volume_action(self, request: Request) -> Response:
        name, args = _action(await json_body(request))
        out = await self.volumes.volume_action(ctx_of(request), request.path_params["volume_id"], name, args)
        if name == "os-set_bootable":
            return Response(status_code=200)
        return JSONResponse(out, status_code=202) if out is not None else Response(status_code=202)

    async def volume_metadata(self, request: Request) -> Response:
        return await self._metadata(request, "volume", request.path_params["volume_id"])

    async def volume_metadata_key(self, request: Request) -> Response:
        return await self._metadata_key(request, "volume", request.path_params["volume_id"])

    # -- snapshots -----------------------------------------------------------------------------

    async def create_snapshot(self, request: Request) -> Response:
        version = VERSIONS.parse(request)
        snap = await self.volumes.create_snapshot(ctx_of(request), await json_body(request), version)
        return JSONResponse({"snapshot": views.snapshot_view(snap, version, detail=False)}, status_code=202)

    async def list_snapshots(self, request: Request) -> Response:
        return await self._list_snapshots(request, detail=False)

    async def list_snapshots_detail(self, request: Request) -> Response:
        return await self._list_snapshots(request, detail=True)

    async def _list_snapshots(self, request: Request, *, detail: bool) -> Response:
        version = VERSIONS.parse(request)
        rows, count, listing = await self.volumes.list_snapshots(ctx_of(request), dict(request.query_params),
                                                                 with_count=version >= (3, 45))
        body: dict[str, Any] = {"snapshots": [views.snapshot_view(s, version, detail=detail) for s in rows]}
        if len(rows) == listing.limit and rows:
            body["snapshots_links"] = [_next(request, rows[-1].id)]
        if count is not None:
            body["count"] = count
        return JSONResponse(body)

    async def show_snapshot(self, request: Request) -> Response:
        snap = await self.volumes.show_snapshot(ctx_of(request), request.path_params["snapshot_id"])
        return JSONResponse({"snapshot": views.snapshot_view(snap, VERSIONS.parse(request), detail=True)})

    async def update_snapshot(self, request: Request) -> Response:
        snap = await self.volumes.update_snapshot(ctx_of(request), request.path_params["snapshot_id"],
                                                  await json_body(request))
        return JSONResponse({"snapshot": views.snapshot_view(snap, VERSIONS.parse(request), detail=True)})

    async def delete_snapshot(self, request: Request) -> Response:
        await self.volumes.delete_snapshot(ctx_of(request), request.path_params["snapshot_id"])
        return Response(status_code=202)

    async def snapshot_action(self, request: Request) -> Response:
        name, args = _action(await json_body(request))
        await self.volumes.snapshot_action(ctx_of(request), request.path_params["snapshot_id"], name, args)
        return Response(status_code=202)

    async def snapshot_metadata(self, request: Request) -> Response:
        return await self._metadata(request, "snapshot", request.path_params["snapshot_id"])

    async def snapshot_metadata_key(self, request: Request) -> Response:
        return await self._metadata_key(request, "snapshot", request.path_params["snapshot_id"])

    async def snapshot_admin_metadata(self, request: Request) -> Response:
        found = await self.volumes.admin_metadata(ctx_of(request), request.path_params["snapshot_id"])
        return JSONResponse({"admin_metadata": found})

    # -- metadata ------------------------------------------------------------------------------

    async def _metadata(self, request: Request, kind: str, row_id: str) -> Response:
        ctx = ctx_of(request)
        if request.method == "GET":
            return JSONResponse({"metadata": await self.volumes.metadata(ctx, kind, row_id)})
        body = await json_body(request)
        meta = body.get("metadata") if isinstance(body, dict) else None
        if not isinstance(meta, dict):
            raise errors.Invalid("Malformed request body: {\"metadata\": {...}} is expected")
        if request.method == "PUT":
            found = await self.volumes.metadata(ctx, kind, row_id, replace=meta)
        else:
            found = await self.volumes.metadata(ctx, kind, row_id, merge=meta)
        return JSONResponse({"metadata": found})

    async def _metadata_key(self, request: Request, kind: str, row_id: str) -> Response:
        ctx, key = ctx_of(request), request.path_params["key"]
        if request.method == "DELETE":
            await self.volumes.metadata(ctx, kind, row_id, delete_key=key)
            return Response(status_code=200)
        if request.method == "GET":
            found = await self.volumes.metadata(ctx, kind, row_id)
            if key not in found:
                raise errors.NotFound(f"Metadata key {key!r} could not be found for {kind} {row_id}.")
            return JSONResponse({"meta": {key: found[key]}})
        body = await json_body(request)
        meta = body.get("meta") if isinstance(body, dict) else None
        if not isinstance(meta, dict) or len(meta) != 1:
            raise errors.Invalid("Malformed request body: {\"meta\": {\"<key>\": \"<value>\"}} with one item is "
                                 "expected")
        if key not in meta:
            raise errors.Invalid("Request body and URI mismatch: the key in the URL must be the one in the body")
        await self.volumes.metadata(ctx, kind, row_id, merge=meta)
        return JSONResponse({"meta": meta})

    # -- attachments ---------------------------------------------------------------------------

    def _attachments_version(self, request: Request):
        version = VERSIONS.parse(request)
        if version < (3, 27):
            raise errors.NotFound("The attachments API is available from microversion 3.27 on "
                                  "(send OpenStack-API-Version: volume 3.27 or later)")
        return version

    async def create_attachment(self, request: Request) -> Response:
        version = self._attachments_version(request)
        att = await self.volumes.create_attachment(ctx_of(request), await json_body(request), version)
        return JSONResponse({"attachment": views.attachment_view(att, with_connection=True)})

    async def update_attachment(self, request: Request) -> Response:
        self._attachments_version(request)
        att = await self.volumes.update_attachment(ctx_of(request), request.path_params["attachment_id"],
                                                   await json_body(request))
        return JSONResponse({"attachment": views.attachment_view(att, with_connection=True)})

    async def attachment_action(self, request: Request) -> Response:
        version = self._attachments_version(request)
        name, _args = _action(await json_body(request))
        if name != "os-complete" or version < (3, 44):
            raise errors.Invalid(f"There is no such attachment action: {name!r} (os-complete, from 3.44)")
        await self.volumes.complete_attachment(ctx_of(request), request.path_params["attachment_id"])
        return Response(status_code=204)

    async def delete_attachment(self, request: Request) -> Response:
        self._attachments_version(request)
        remaining = await self.volumes.delete_attachment(ctx_of(request), request.path_params["attachment_id"])
        return JSONResponse({"attachments": [views.attachment_view(a, with_connection=False) for a in remaining]})

    async def show_attachment(self, request: Request) -> Response:
        self._attachments_version(request)
        att = await self.volumes.show_attachment(ctx_of(request), request.path_params["attachment_id"])
        return JSONResponse({"attachment": views.attachment_view(att, with_connection=True)})

    async def list_attachments(self, request: Request) -> Response:
        self._attachments_version(request)
        rows = await self.volumes.list_attachments(ctx_of(request), dict(request.query_params))
        detail = request.url.path.endswith("/detail")
        # (Cinder pages attachments by limit/marker/offset/sort too but links no next page)
        return JSONResponse({"attachments": [views.attachment_view(a, with_connection=detail) for a in rows]})

    # -- types, zones, limits ------------------------------------------------------------------

    async def types(self, request: Request) -> Response:
        ctx_of(request)
        return JSONResponse({"volume_types": [views.volume_type_view(self.volumes.settings.default_type,
                                                                      DEFAULT_TYPE_ID)]})

    async def default_type(self, request: Request) -> Response:
        ctx_of(request)
        return JSONResponse({"volume_type": views.volume_type_view(self.volumes.settings.default_type,
                                                                    DEFAULT_TYPE_ID)})

    async def show_type(self, request: Request) -> Response:
        ctx_of(request)
        type_id = request.path_params["type_id"]
        if type_id not in (DEFAULT_TYPE_ID, self.volumes.settings.default_type):
            raise errors.NotFound(f"Volume type {type_id} could not be found.")
        return JSONResponse({"volume_type": views.volume_type_view(self.volumes.settings.default_type,
                                                                    DEFAULT_TYPE_ID)})

    async def zones(self, request: Request) -> Response:
        ctx_of(request)
        return JSONResponse({"availabilityZoneInfo": [{"zoneName": self.volumes.settings.availability_zone,
                                                       "zoneState": {"available": True}}]})

    async def limits(self, request: Request) -> Response:
        ctx_of(request)
        absolute = {"maxTotalVolumes": -1, "maxTotalSnapshots": -1, "maxTotalVolumeGigabytes": -1,
                    "maxTotalBackups": -1, "maxTotalBackupGigabytes": -1, "totalVolumesUsed": 0,
                    "totalGigabytesUsed": 0, "totalSnapshotsUsed": 0, "totalBackupsUsed": 0,
                    "totalBackupGigabytesUsed": 0}
        return JSONResponse({"limits": {"rate": [], "absolute": absolute}})


def _action(body: Any) -> tuple[str, Any]:
    if not isinstance(body, dict) or len(body) != 1:
        raise errors.Invalid("The action body must be a JSON object with exactly one action")
    (name, args), = body.items()
    return name, args


def _next(request: Request, marker: str) -> dict[str, str]:
    """Cinder's ``<collection>_links`` entry: the same query with the marker of the page's last
    item; without ``offset`` (Cinder keeps it, so following its link skips that many again)."""
    params = [(k, v) for k, v in request.query_params.multi_items() if k not in ("marker", "offset")] + \
        [("marker", marker)]
    from urllib.parse import urlencode
    return {"href": f"{request.url.scheme}://{request.url.netloc}{request.url.path}?{urlencode(params)}",
            "rel": "next"}
