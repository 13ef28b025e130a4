"""The Nova v2.1 subset at /compute/v2.1: servers, power actions, createImage/createBackup,
os-instance-actions, flavors, os-volume_attachments and os-assisted-volume-snapshots (the volume
service's calls); microversions by header."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router

from freezeframe.common import errors
from freezeframe.common.timeutil import isotime
from freezeframe.common.web.errors import FAULT_HANDLERS
from freezeframe.common.web.mount import Mounted, Public
from freezeframe.common.web.microversion import APIVersion, Microversions
from freezeframe.common.web.request import ctx_of, json_body
from freezeframe.common.strict import INT32_MAX, parse_uint
from freezeframe.compute import catalog
from freezeframe.compute.bdm import volumes_attached
from freezeframe.compute.listing import AVAILABILITY_ZONE, parse_server_query
from freezeframe.compute.model import BlockDeviceMapping, Instance, InstanceAction
from freezeframe.compute.service import FLAVORS, ComputeService
from freezeframe.compute.states import VmState
from freezeframe.compute.volume_ops import bdm_uuid, parse_attach

VERSIONS = Microversions("compute", "X-OpenStack-Nova-API-Version", min="2.1", max="2.96")
STATUS = {VmState.ACTIVE: "ACTIVE", VmState.STOPPED: "SHUTOFF", VmState.BUILDING: "BUILD",
          VmState.ERROR: "ERROR", VmState.PAUSED: "PAUSED", VmState.SUSPENDED: "SUSPENDED",
          VmState.DELETED: "DELETED"}
POWER = {"nostate": 0, "running": 1, "paused": 3, "shutdown": 4, "crashed": 6, "suspended": 7}


def server_view(inst: Instance, base: str, version: APIVersion,
                volumes: list[tuple[str, bool]] | None = None, *, admin: bool = False) -> dict[str, Any]:
    """Nova's server; ``volumes``: its (volume id, delete_on_termination), shown as
    ``os-extended-volumes:volumes_attached`` (``delete_on_termination`` from 2.3). Admins also
    see where it runs: ``OS-EXT-SRV-ATTR:host`` and ``:hypervisor_hostname`` — a bare-metal
    server's is its node's uuid (Nova's Ironic driver)."""
    flavor = FLAVORS.get(inst.flavor_id)
    body = {
        "id": inst.id, "name": inst.name, "status": STATUS.get(VmState(inst.vm_state), "UNKNOWN"),
        "tenant_id": inst.project_id, "user_id": inst.user_id, "metadata": json.loads(inst.metadata_json),
        "created": isotime(inst.created_at), "updated": isotime(inst.updated_at), "hostId": "", "addresses": {},
        "image": {"id": inst.image_ref, "links": []} if inst.image_ref else "",
        "OS-EXT-STS:vm_state": inst.vm_state, "OS-EXT-STS:task_state": inst.task_state,
        "OS-EXT-STS:power_state": POWER.get(inst.power_state, 0),
        "OS-EXT-SRV-ATTR:instance_name": inst.domain_name, "OS-EXT-AZ:availability_zone": AVAILABILITY_ZONE,
        "OS-DCF:diskConfig": "MANUAL", "accessIPv4": "", "accessIPv6": "", "key_name": None, "config_drive": "",
        "progress": 0,
        **({"OS-EXT-SRV-ATTR:host": inst.host, "OS-EXT-SRV-ATTR:hypervisor_hostname": inst.node or inst.host}
           if admin else {}),
        "links": [{"rel": "self", "href": f"{base}/servers/{inst.id}"}],
    }
    if version >= (2, 47):
        body["flavor"] = {"vcpus": inst.vcpus, "ram": inst.memory_mb, "disk": inst.root_gb,
                          "original_name": flavor.name if flavor else inst.flavor_id, "ephemeral": 0, "swap": 0}
    else:
        body["flavor"] = {"id": inst.flavor_id, "links": []}
    if version >= (2, 9):
        body["locked"] = False
    if version >= (2, 19):
        body["description"] = None
    if version >= (2, 26):
        body["tags"] = []                        # servers have no tags here
    if version >= (2, 73):
        body["locked_reason"] = None
    if version >= (2, 96):
        body["pinned_availability_zone"] = None
    if inst.fault:
        body["fault"] = {"code": 500, "message": inst.fault, "created": isotime(inst.updated_at)}
    body["os-extended-volumes:volumes_attached"] = [
        {"id": vid, **({"delete_on_termination": dot} if version >= (2, 3) else {})} for vid, dot in volumes or ()]
    return body


def volume_attachment_view(bdm: BlockDeviceMapping, version: APIVersion, *, created: bool = False) -> dict[str, Any]:
    """Nova's volumeAttachment: ``tag`` from 2.70, ``delete_on_termination`` from 2.79; from
    2.89 a show or list has ``attachment_id`` and ``bdm_uuid`` instead of ``id``."""
    new_ids = version >= (2, 89) and not created
    body: dict[str, Any] = {} if new_ids else {"id": bdm.volume_id}
    body.update(serverId=bdm.instance_uuid, volumeId=bdm.volume_id, device=f"/dev/{bdm.device_name}")
    if version >= (2, 70):
        body["tag"] = bdm.tag
    if version >= (2, 79):
        body["delete_on_termination"] = bdm.delete_on_termination
    if new_ids:
        body.update(attachment_id=bdm.attachment_id, bdm_uuid=bdm_uuid(bdm))
    return body


def action_view(action: InstanceAction) -> dict[str, Any]:
    body = {"action": action.action, "instance_uuid": action.instance_uuid, "request_id": action.request_id,
            "user_id": action.user_id, "project_id": action.project_id, "start_time": isotime(action.start_time),
            "updated_at": isotime(action.finish_time or action.start_time), "message": action.message}
    return body


class ComputeAPI:
    def __init__(self, compute: ComputeService, db) -> None:
        self.compute = compute
        self.db = db

    def mounted(self) -> Mounted:
        """The compute API (Nova v2.1) at /compute; its version documents need no token."""
        return Mounted("compute", "/compute", VERSIONS.wrap(self.router(), handlers=FAULT_HANDLERS),
                       public=(Public(""), Public("/v2.1")))

    def router(self) -> Router:
        s = "/v2.1/servers/{server_id}"
        return Router(routes=[
            Route("/", self.versions, methods=["GET"]),
            Route("/v2.1", self.version, methods=["GET"]),
            Route("/v2.1/", self.version, methods=["GET"]),
            Route("/v2.1/servers", self.list_servers, methods=["GET"]),
            Route("/v2.1/servers/detail", self.list_servers, methods=["GET"]),
            Route("/v2.1/servers", self.create_server, methods=["POST"]),
            Route(s, self.show_server, methods=["GET"]),
            Route(s, self.delete_server, methods=["DELETE"]),
            Route(s + "/action", self.action, methods=["POST"]),
            Route(s + "/os-instance-actions", self.list_actions, methods=["GET"]),
            Route(s + "/os-instance-actions/{request_id}", self.show_action, methods=["GET"]),
            Route("/v2.1/flavors", self.flavors, methods=["GET"]),
            Route("/v2.1/flavors/detail", self.flavors, methods=["GET"]),
            Route("/v2.1/flavors/{flavor_id}", self.flavor, methods=["GET"]),
            Route("/v2.1/flavors/{flavor_id}/os-extra_specs", self.extra_specs, methods=["GET"]),
            Route("/v2.1/flavors/{flavor_id}/os-extra_specs/{key}", self.extra_specs, methods=["GET"]),
            Route("/v2.1/os-availability-zone", self.availability_zones, methods=["GET"]),
            Route("/v2.1/os-availability-zone/detail", self.availability_zones, methods=["GET"]),
            Route("/v2.1/limits", self.limits, methods=["GET"]),
            Route("/v2.1/os-freezeframe-adopt", self.adopt, methods=["POST"]),
            Route("/v2.1/os-services", self.services, methods=["GET"]),
            Route(s + "/os-volume_attachments", self.list_volume_attachments, methods=["GET"]),
            Route(s + "/os-volume_attachments", self.attach_volume, methods=["POST"]),
            Route(s + "/os-volume_attachments/{volume_id}", self.show_volume_attachment, methods=["GET"]),
            Route(s + "/os-volume_attachments/{volume_id}", self.detach_volume, methods=["DELETE"]),
            Route("/v2.1/os-assisted-volume-snapshots", self.assisted_snapshot_create, methods=["POST"]),
            Route("/v2.1/os-assisted-volume-snapshots/{snapshot_id}", self.assisted_snapshot_delete,
                  methods=["DELETE"]),
        ])

    # -- volumes (os-volume_attachments, os-assisted-volume-snapshots) ---------------------------

    async def list_volume_attachments(self, request: Request) -> Response:
        version = VERSIONS.parse(request)
        query = request.query_params
        if version >= (2, 75) and set(query) - {"limit", "offset"}:
            raise errors.Invalid(f"Invalid query parameters: {', '.join(sorted(set(query) - {'limit', 'offset'}))}")
        limit = parse_uint("limit", query["limit"], maximum=INT32_MAX) if "limit" in query else None
        offset = parse_uint("offset", query["offset"], maximum=INT32_MAX) if "offset" in query else 0
        rows = await self.compute.volumes.attachments(ctx_of(request), request.path_params["server_id"])
        rows = rows[offset:] if limit is None else rows[offset:offset + limit]
        return VERSIONS.versioned(JSONResponse({"volumeAttachments": [volume_attachment_view(b, version)
                                                                      for b in rows]}), version)

    async def show_volume_attachment(self, request: Request) -> Response:
        version = VERSIONS.parse(request)
        bdm = await self.compute.volumes.attachment(ctx_of(request), request.path_params["server_id"],
                                                    request.path_params["volume_id"])
        return VERSIONS.versioned(JSONResponse({"volumeAttachment": volume_attachment_view(bdm, version)}), version)

    async def attach_volume(self, request: Request) -> Response:
        version = VERSIONS.parse(request)
        req = parse_attach(await json_body(request), tag_allowed=version >= (2, 49),
                           delete_on_termination_allowed=version >= (2, 79))
        bdm = await self.compute.volumes.attach(ctx_of(request), request.path_params["server_id"], req)
        return VERSIONS.versioned(JSONResponse({"volumeAttachment": volume_attachment_view(bdm, version,
                                                                                           created=True)}), version)

    async def detach_volume(self, request: Request) -> Response:
        version = VERSIONS.parse(request)
        await self.compute.volumes.detach(ctx_of(request), request.path_params["server_id"],
                                          request.path_params["volume_id"])
        return VERSIONS.versioned(Response(status_code=202), version)

    async def assisted_snapshot_create(self, request: Request) -> Response:
        version = VERSIONS.parse(request)
        body = await self.compute.volumes.assisted_create(ctx_of(request), await json_body(request))
        return VERSIONS.versioned(JSONResponse(body), version)

    async def assisted_snapshot_delete(self, request: Request) -> Response:
        version = VERSIONS.parse(request)
        query = request.query_params
        if version >= (2, 75) and set(query) - {"delete_info"}:
            raise errors.Invalid(f"Invalid query parameters: {', '.join(sorted(set(query) - {'delete_info'}))}")
        await self.compute.volumes.assisted_delete(ctx_of(request), request.path_params["snapshot_id"],
                                                   query.get("delete_info"))
        return VERSIONS.versioned(Response(status_code=204), version)

    async def services(self, request: Request) -> Response:
        """Nova's compute services: one nova-compute per compute host, up or down by its heartbeat."""
        return JSONResponse({"services": await self.compute.services(ctx_of(request))})

    @staticmethod
    def _base(request: Request) -> str:
        return f"{request.url.scheme}://{request.url.netloc}{request.scope.get('root_path', '')}/v2.1"

    def _doc(self, request: Request) -> dict[str, Any]:
        return {"id": "v2.1", "status": "CURRENT", "version": str(VERSIONS.max), "min_version": str(VERSIONS.min),
                "updated": "2013-07-23T11:33:21Z", "links": [{"rel": "self", "href": self._base(request) + "/"}]}

    async def versions(self, request: Request) -> Response:
        return JSONResponse({"versions": [self._doc(request)]})

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": self._doc(request)})

    async def list_servers(self, request: Request) -> Response:
        """Nova's server list: filters, sort and paging (``compute/listing.py``); a full page
        has ``servers_links`` with the ``next`` page's URL (the same query, the last id as marker)."""
        version = VERSIONS.parse(request)
        detail = request.url.path.endswith("/detail")
        ctx = ctx_of(request)
        query = parse_server_query(request.query_params, version, is_admin=ctx.is_admin,
                                   allow_all_filters=self.compute.policy.check(
                                       ctx, "os_compute_api:servers:allow_all_filters"))
        servers = await self.compute.list(ctx, detail, query)
        base = self._base(request)
        if detail:
            attached = await self.db.run(lambda s: volumes_attached(s, [i.id for i in servers]))
            admin = ctx_of(request).is_admin
            items = [server_view(i, base, version, attached.get(i.id), admin=admin) for i in servers]
        else:
            items = [{"id": i.id, "name": i.name, "links": [{"rel": "self", "href": f"{base}/servers/{i.id}"}]}
                     for i in servers]
        body: dict[str, Any] = {"servers": items}
        if query.limit and len(servers) == query.limit:
            body["servers_links"] = [{"rel": "next", "href": self._next(request, base + ("/servers/detail" if detail
                                                                                        else "/servers"),
                                                                        servers[-1].id)}]
        return VERSIONS.versioned(JSONResponse(body), version)

    @staticmethod
    def _next(request: Request, url: str, marker: str) -> str:
        """The next page: the request's parameters (sorted, as Nova) with ``marker`` the last id."""
        params = sorted((k, v) for k, v in request.query_params.multi_items() if k != "marker")
        return f"{url}?{urlencode([*params, ('marker', marker)])}"

    async def show_server(self, request: Request) -> Response:
        version = VERSIONS.parse(request)
        inst = await self.compute.show(ctx_of(request), request.path_params["server_id"])
        attached = await self.db.run(lambda s: volumes_attached(s, [inst.id]))
        return VERSIONS.versioned(JSONResponse({"server": server_view(inst, self._base(request), version,
                                                                      attached.get(inst.id),
                                                                      admin=ctx_of(request).is_admin)}), version)

    async def create_server(self, request: Request) -> Response:
        version = VERSIONS.parse(request)
        inst = await self.compute.create(ctx_of(request), await json_body(request))
        body = {"server": {"id": inst.id, "links": [{"rel": "self", "href": f"{self._base(request)}/servers/{inst.id}"}],
                           "OS-DCF:diskConfig": "MANUAL", "security_groups": [], "adminPass": ""}}
        return VERSIONS.versioned(JSONResponse(body, status_code=202), version)

    async def adopt(self, request: Request) -> Response:
        version = VERSIONS.parse(request)
        inst = await self.compute.adopt(ctx_of(request), await json_body(request))
        body = {"server": server_view(inst, self._base(request), version, admin=ctx_of(request).is_admin)}
        return VERSIONS.versioned(JSONResponse(body, status_code=201), version)

    async def delete_server(self, request: Request) -> Response:
        version = VERSIONS.parse(request)
        await self.compute.delete(ctx_of(request), request.path_params["server_id"])
        return VERSIONS.versioned(Response(status_code=204), version)

    async def action(self, request: Request) -> Response:
        version = VERSIONS.parse(request)
        body = await json_body(request)
        if not isinstance(body, dict) or len(body) != 1:
            raise errors.Invalid("The action body must be a JSON object with exactly one action")
        (name, args), = body.items()
        ctx, server_id = ctx_of(request), request.path_params["server_id"]
        if name in ("os-start", "os-stop"):
            await self.compute.power(ctx, server_id, on=name == "os-start")
            return VERSIONS.versioned(Response(status_code=202), version)
        if name in ("createImage", "createBackup"):
            if not isinstance(args, dict):
                raise errors.Invalid(f"Invalid input for {name}: an object is required")
            image_id, workflow_id = await self.compute.create_image(
                ctx, server_id, args, kind="backup" if name == "createBackup" else "snapshot")
            headers = {"X-Freezeframe-Workflow-Id": workflow_id}
            if version >= (2, 45):
                return VERSIONS.versioned(JSONResponse({"image_id": image_id}, status_code=202, headers=headers),
                                          version)
            root = request.scope.get("root_path", "").removesuffix("/compute")
            image_root = f"{request.url.scheme}://{request.url.netloc}{root}/image/v2/images/{image_id}"
            return VERSIONS.versioned(Response(status_code=202, headers={**headers, "Location": image_root}), version)
        if name == "snapshot":      # Freezeframe's instance-level snapshot of chosen devices (seed 003)
            if not isinstance(args, dict) or set(args) - {"name", "devices", "metadata"}:
                raise errors.Invalid("Invalid input for snapshot: {\"name\": ..., \"devices\": [...] | null, "
                                     "\"metadata\": {...}} is expected")
            image_id, workflow_id = await self.compute.create_image(ctx, server_id, args, kind="snapshot",
                                                                    devices=args.get("devices"))
            return VERSIONS.versioned(JSONResponse({"image_id": image_id, "workflow_id": workflow_id},
                                                   status_code=202,
                                                   headers={"X-Freezeframe-Workflow-Id": workflow_id}), version)
        if name == "os-resetState":     # admin: {"os-resetState": {"state": "active" | "error"}}
            if not isinstance(args, dict) or set(args) != {"state"}:
                raise errors.Invalid("Invalid input for os-resetState: {\"state\": \"active\" | \"error\"} is required")
            await self.compute.reset_state(ctx, server_id, args["state"])
            return VERSIONS.versioned(Response(status_code=202), version)
        raise errors.Invalid(f"There is no such action: {name}")

    async def list_actions(self, request: Request) -> Response:
        version = VERSIONS.parse(request)
        actions = await self.compute.actions(ctx_of(request), request.path_params["server_id"])
        return VERSIONS.versioned(JSONResponse({"instanceActions": [action_view(a) for a in actions]}), version)

    async def show_action(self, request: Request) -> Response:
        from sqlalchemy import select

        from freezeframe.compute.model import InstanceActionEvent

        version = VERSIONS.parse(request)
        actions = await self.compute.actions(ctx_of(request), request.path_params["server_id"])
        found = [a for a in actions if a.request_id == request.path_params["request_id"]]
        if not found:
            raise errors.NotFound(f"Action {request.path_params['request_id']} not found")
        action = found[0]
        events = await self.db.run(lambda s: list(s.scalars(select(InstanceActionEvent).where(
            InstanceActionEvent.action_id == action.id).order_by(InstanceActionEvent.id))))
        body = action_view(action)
        body["events"] = [{"event": e.event, "start_time": isotime(e.start_time), "finish_time": isotime(e.finish_time),
                           "result": e.result, "traceback": None,
                           **({"details": e.details} if version >= (2, 84) else {})} for e in events]
        return VERSIONS.versioned(JSONResponse({"instanceAction": body}), version)

    async def flavors(self, request: Request) -> Response:
        version = VERSIONS.parse(request)
        detail = request.url.path.endswith("/detail")
        root = self._base(request).removesuffix("/v2.1")
        found = catalog.list_flavors(request.query_params, is_admin=ctx_of(request).is_admin)
        body: dict[str, Any] = {"flavors": [catalog.flavor_view(f, version, root, detail=detail) for f in found]}
        limit = catalog.requested_limit(request.query_params)
        if limit and len(found) == limit:
            url = f"{root}/v2.1/flavors" + ("/detail" if detail else "")
            body["flavors_links"] = [{"rel": "next", "href": self._next(request, url, found[-1].id)}]
        return VERSIONS.versioned(JSONResponse(body), version)

    async def flavor(self, request: Request) -> Response:
        version = VERSIONS.parse(request)
        flavor = FLAVORS.get(request.path_params["flavor_id"])
        if flavor is None:
            raise errors.NotFound(f"Flavor {request.path_params['flavor_id']} could not be found.")
        root = self._base(request).removesuffix("/v2.1")
        return VERSIONS.versioned(JSONResponse({"flavor": catalog.flavor_view(flavor, version, root, detail=True)}),
                                  version)

    async def extra_specs(self, request: Request) -> Response:
        """A flavor's extra specs (none here): ``{"extra_specs": {}}``; one key: Nova's 404."""
        version = VERSIONS.parse(request)
        flavor_id = request.path_params["flavor_id"]
        if flavor_id not in FLAVORS:
            raise errors.NotFound(f"Flavor {flavor_id} could not be found.")
        if "key" in request.path_params:
            raise errors.NotFound(f"Flavor {flavor_id} has no extra specs with key {request.path_params['key']}.")
        return VERSIONS.versioned(JSONResponse({"extra_specs": {}}), version)

    async def availability_zones(self, request: Request) -> Response:
        """``os-availability-zone``: Nova's default zone; ``/detail`` (admins) with its hosts."""
        ctx = ctx_of(request)
        if request.url.path.endswith("/detail"):
            self.compute.policy.authorize(ctx, "os_compute_api:os-availability-zone:detail")
            return JSONResponse(catalog.availability_zones(await self.compute.services(ctx)))
        self.compute.policy.authorize(ctx, "os_compute_api:os-availability-zone:list")
        return JSONResponse(catalog.availability_zones(None))

    async def limits(self, request: Request) -> Response:
        """``/limits``: the project's absolute limits and usage (another project's with
        ``tenant_id``, for admins)."""
        version = VERSIONS.parse(request)
        ctx = ctx_of(request)
        self.compute.policy.authorize(ctx, "os_compute_api:limits")
        project_id = ctx.project_id
        if "tenant_id" in request.query_params:
            self.compute.policy.authorize(ctx, "os_compute_api:limits:other_project")
            project_id = request.query_params["tenant_id"]
        used = await self.compute.usage(project_id)
        return VERSIONS.versioned(JSONResponse(catalog.absolute_limits(version, used)), version)
