"""The host API of `freezeframe compute --host NAME`: the host-bound steps, for the other roles.

Only services call it (rule ``freezeframe:host:operate``: the service credential, with the
identity of the user the work is for beside it — a boot fetches that user's images with their
rights). Every operation that changes a domain holds its lock (``drivers/locked.py``); the
point in time of a snapshot never leaves the host as a file: ``export`` serves it over NBD on
TCP, TLS with credentials made for that one export (``compute/nbdexport.py``), and the
conductor reads it from there.

    GET    /host/v1                                this host: name, driver
    GET    /host/v1/domains[/{domain}]             what the driver sees
    POST   /host/v1/domains/{domain}/action        {"op": "power_on" | "power_off" | "agent_available"}
    POST   /host/v1/servers/{server_id}/boot       a BootRequest: images fetched here, disk made, domain started
    DELETE /host/v1/servers/{server_id}?domain=D[&adopted=1]
    PUT    /host/v1/snapshots/{snapshot_id}        begin: {"domain", "disk", "quiesce", "require_quiesce", "max_frozen"}
    POST   /host/v1/snapshots/{snapshot_id}/export {"domain"}: where and how to read it
    DELETE /host/v1/snapshots/{snapshot_id}?domain=D    end: export stopped, point in time released
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router

from freezeframe.common import errors
from freezeframe.common.policy import Policy
from freezeframe.common.pools import BoundedPool
from freezeframe.common.web.mount import Mounted
from freezeframe.common.web.request import ctx_of, json_body
from freezeframe.compute import hostwire
from freezeframe.compute.hostside import BootRequest, LocalHost

POWER_OPS = ("power_on", "power_off", "agent_available")


class HostAPI:
    def __init__(self, host: LocalHost, policy: Policy, workdir: Path,
                 export: Callable[[Any, Path, str], dict], unexport: Callable[[Path], None]) -> None:
        self.host = host
        self.policy = policy
        self.workdir = workdir          # <instances_path>/_snapshots: one directory per point in time
        self.export = export            # (source, workdir, export name) -> how to read it
        self.unexport = unexport
        self.pool = BoundedPool("host", workers=8, queue=32)

    def mounted(self) -> Mounted:
        """The host API at /host/v1 (services only)."""
        return Mounted("host", "/host/v1", self.router())

    def router(self) -> Router:
        return Router(routes=[
            Route("/", self.about, methods=["GET"]),
            Route("/domains", self.domains, methods=["GET"]),
            Route("/domains/{domain}", self.domain, methods=["GET"]),
            Route("/domains/{domain}/action", self.action, methods=["POST"]),
            Route("/servers/{server_id}/boot", self.boot, methods=["POST"]),
            Route("/servers/{server_id}", self.remove, methods=["DELETE"]),
            Route("/snapshots/{snapshot_id}", self.begin, methods=["PUT"]),
            Route("/snapshots/{snapshot_id}/export", self.export_snapshot, methods=["POST"]),
            Route("/snapshots/{snapshot_id}", self.end, methods=["DELETE"]),
        ])

    def _authorize(self, request: Request):
        ctx = ctx_of(request)
        self.policy.authorize(ctx, "freezeframe:host:operate")
        return ctx

    def _snapshot_dir(self, request: Request) -> tuple[str, Path]:
        sid = hostwire.snapshot_id(request.path_params["snapshot_id"])
        return sid, self.workdir / sid

    async def about(self, request: Request) -> Response:
        self._authorize(request)
        return JSONResponse({"host": self.host.name, "driver": self.host.driver.name})

    async def domains(self, request: Request) -> Response:
        self._authorize(request)
        infos = await self.pool.run(self.host.driver.list_domains)
        return JSONResponse({"domains": [hostwire.domain_to_json(i) for i in infos]})

    async def domain(self, request: Request) -> Response:
        self._authorize(request)
        name = hostwire.domain_name(request.path_params["domain"])
        return JSONResponse(hostwire.domain_to_json(await self.pool.run(self.host.driver.get_info, name)))

    async def action(self, request: Request) -> Response:
        self._authorize(request)
        name = hostwire.domain_name(request.path_params["domain"])
        body = await json_body(request)
        op = body.get("op") if isinstance(body, dict) else None
        if op not in POWER_OPS:
            raise errors.Invalid(f"Unknown op {op!r}: one of {', '.join(POWER_OPS)}")
        timeout = body.get("timeout", 30.0 if op == "power_off" else 2.0)
        if not isinstance(timeout, (int, float)) or not 0 < timeout <= 600:
            raise errors.Invalid("timeout: seconds, at most 600")
        result = await self.pool.run(getattr(self.host.driver, op), name, timeout) if op != "power_on" else \
            await self.pool.run(self.host.driver.power_on, name)
        return JSONResponse({"result": result})

    async def boot(self, request: Request) -> Response:
        ctx = self._authorize(request)
        req = BootRequest.from_json(await json_body(request))
        if req.server_id != request.path_params["server_id"].lower():
            raise errors.Invalid("the boot request is for another server")
        hostwire.domain_name(req.domain_name)
        booted = await self.pool.run(self.host.boot, ctx.actor, req, wait=30)
        return JSONResponse({"info": hostwire.domain_to_json(booted.info), "root_disk": booted.root_disk})

    async def remove(self, request: Request) -> Response:
        self._authorize(request)
        server_id = hostwire.snapshot_id(request.path_params["server_id"])
        name = hostwire.domain_name(request.query_params.get("domain"))
        adopted = request.query_params.get("adopted", "0") == "1"
        await self.pool.run(lambda: self.host.remove(name, server_id, adopted=adopted), wait=30)
        return Response(status_code=204)

    async def begin(self, request: Request) -> Response:
        self._authorize(request)
        sid, workdir = self._snapshot_dir(request)
        body = await json_body(request)
        if not isinstance(body, dict):
            raise errors.Invalid("the body must be a JSON object")
        name = hostwire.domain_name(body.get("domain"))
        disk = hostwire.domain_name(body.get("disk"))
        flags = {k: body.get(k, False) for k in ("quiesce", "require_quiesce")}
        max_frozen = body.get("max_frozen", 1.0)
        if not all(isinstance(v, bool) for v in flags.values()) or not isinstance(max_frozen, (int, float)) \
                or not 0 < max_frozen <= 60:
            raise errors.Invalid("quiesce/require_quiesce: booleans; max_frozen: seconds, at most 60")

        def begin():
            workdir.mkdir(parents=True, exist_ok=True)
            return self.host.driver.begin_snapshot(name, disk, sid, workdir, max_frozen=float(max_frozen), **flags)
        handle = await self.pool.run(begin, wait=30)
        return JSONResponse(hostwire.handle_to_json(handle))

    async def export_snapshot(self, request: Request) -> Response:
        self._authorize(request)
        sid, workdir = self._snapshot_dir(request)
        body = await json_body(request)
        name = hostwire.domain_name(body.get("domain") if isinstance(body, dict) else None)

        def export() -> dict:
            self.host.driver.open_snapshot(name, sid, workdir).close()       # still there (else DriverError)
            source = self.host.driver.snapshot_source(name, sid, workdir)
            return self.export(source, workdir, f"snapshot-{sid}")
        return JSONResponse(await self.pool.run(export, wait=30))

    async def end(self, request: Request) -> Response:
        self._authorize(request)
        sid, workdir = self._snapshot_dir(request)
        name = hostwire.domain_name(request.query_params.get("domain"))

        def end() -> None:
            self.unexport(workdir)
            self.host.driver.end_snapshot(name, sid, workdir)
        await self.pool.run(end, wait=30)
        return Response(status_code=204)
