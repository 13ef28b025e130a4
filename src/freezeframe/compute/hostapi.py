"""The host API of `freezeframe compute --host NAME`: the host-bound steps, for the other roles.

Only services call it (rule ``freezeframe:host:operate``: the service credential, with the
identity of the user the work is for beside it — a boot fetches that user's images with their
rights). Every operation that changes a domain holds its lock (``drivers/locked.py``); the
point in time of a snapshot never leaves the host as a file: ``export`` serves it over NBD on
TCP, TLS with credentials made for that one export (``blockdata/nbdexport.py``), and the
conductor reads it from there.

    GET    /host/v1                                this host: name, driver
    GET    /host/v1/domains[/{domain}]             what the driver sees
    POST   /host/v1/domains/{domain}/action        {"op": "power_on" | "power_off" | "agent_available"}
    POST   /host/v1/servers/{server_id}/boot       a BootRequest: images fetched here, disk made, domain started
    DELETE /host/v1/servers/{server_id}?domain=D[&adopted=1]
    PUT    /host/v1/snapshots/{snapshot_id}        begin: {"domain", "disk", "quiesce", "require_quiesce", "max_frozen"}
                                        or a group: {"domain", "disks": [target...],
                                        "volumes": [{"volume_id", "new_file"}...], "quiesce", ...}
    POST   /host/v1/snapshots/{snapshot_id}/export {"domain"[, "disk"]}: where and how to read it (a
                                        group's disk: each one an export of its own)
    DELETE /host/v1/snapshots/{snapshot_id}?domain=D    end: exports stopped, point in time released
    GET    /host/v1/domains/{domain}/volumes               the attached volumes, as the domain runs them
    PUT    /host/v1/domains/{domain}/volumes/{volume_id}   attach: {"target", "path", "format"}
    DELETE /host/v1/domains/{domain}/volumes/{volume_id}   detach
    POST   /host/v1/domains/{domain}/volumes/{volume_id}/snapshot
                                        {"new_file", "quiesce", "require_quiesce", "max_frozen"} -> {"quiesced", "frozen_seconds"}
    POST   /host/v1/domains/{domain}/volumes/{volume_id}/merge   {"file_to_merge", "merge_target_file"}
                                        -> NDJSON: {"progress": [done, total]} | {"alive": true}...
                                           then {"result": "done"} | {"error": {"code", "message"}}

A merge runs as long as its block job: its answer streams the job's progress (and repeats the
last one every ``HEARTBEAT`` seconds), so neither side's read timeout cuts it and the caller
reports real progress. A failure before the first line is a plain error answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, Router

from freezeframe.common import errors
from freezeframe.common.policy import Policy
from freezeframe.common.pools import BoundedPool
from freezeframe.common.web.mount import Mounted
from freezeframe.common.web.request import ctx_of, json_body
from freezeframe.common.web.errors import status_of
from freezeframe.compute import hostwire
from freezeframe.compute.drivers import qcow2chain
from freezeframe.compute.drivers.base import VolumeJob, export_workdir, export_workdirs
from freezeframe.compute.hostside import BootRequest, LocalHost

LOG = logging.getLogger(__name__)
POWER_OPS = ("power_on", "power_off", "agent_available")
HEARTBEAT = 15.0
HIDDEN = "The hypervisor failed the operation; the request id identifies the error in the server log"


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
            Route("/domains/{domain}/volumes", self.volumes, methods=["GET"]),
            Route("/domains/{domain}/volumes/{volume_id}", self.attach_volume, methods=["PUT"]),
            Route("/domains/{domain}/volumes/{volume_id}", self.detach_volume, methods=["DELETE"]),
            Route("/domains/{domain}/volumes/{volume_id}/snapshot", self.volume_snapshot, methods=["POST"]),
            Route("/domains/{domain}/volumes/{volume_id}/merge", self.volume_merge, methods=["POST"]),
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
        flags = {k: body.get(k, False) for k in ("quiesce", "require_quiesce")}
        max_frozen = body.get("max_frozen", 1.0)
        if not all(isinstance(v, bool) for v in flags.values()) or not isinstance(max_frozen, (int, float)) \
                or not 0 < max_frozen <= 60:
            raise errors.Invalid("quiesce/require_quiesce: booleans; max_frozen: seconds, at most 60")
        if "disk" not in body and ("disks" in body or "volumes" in body):
            disks, volumes = hostwire.group_request(body)

            def begin_group():
                workdir.mkdir(parents=True, exist_ok=True)
                return self.host.driver.begin_group_snapshot(name, sid, workdir, disks=disks, volumes=volumes,
                                                             max_frozen=float(max_frozen), **flags)
            return JSONResponse(hostwire.group_to_json(await self.pool.run(begin_group, wait=30)))
        disk = hostwire.domain_name(body.get("disk"))

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
        disk = body.get("disk") if isinstance(body, dict) else None
        disk = None if disk is None else hostwire.disk_name(disk)
        driver = self.host.driver

        def export() -> dict:
            if disk is None:            # (the one disk of a snapshot, as before groups)
                driver.open_snapshot(name, sid, workdir).close()       # still there (else DriverError)
                source = driver.snapshot_source(name, sid, workdir)
                return self.export(source, workdir, f"snapshot-{sid}")
            driver.open_snapshot(name, sid, workdir, disk=disk).close()
            source = driver.snapshot_source(name, sid, workdir, disk=disk)
            return self.export(source, export_workdir(workdir, disk), f"snapshot-{sid}-{disk}")
        return JSONResponse(await self.pool.run(export, wait=30))

    async def end(self, request: Request) -> Response:
        self._authorize(request)
        sid, workdir = self._snapshot_dir(request)
        name = hostwire.domain_name(request.query_params.get("domain"))

        def end() -> None:
            for where in export_workdirs(workdir):      # each disk's export, then the point in time
                self.unexport(where)
            self.host.driver.end_snapshot(name, sid, workdir)
        await self.pool.run(end, wait=30)
        return Response(status_code=204)

    # -- volumes (seed 002) --------------------------------------------------------------------------
    def _volume_target(self, request: Request) -> tuple[str, str]:
        self._authorize(request)
        return (hostwire.domain_name(request.path_params["domain"]),
                hostwire.volume_id(request.path_params["volume_id"]))

    async def volumes(self, request: Request) -> Response:
        self._authorize(request)
        name = hostwire.domain_name(request.path_params["domain"])
        disks = await self.pool.run(self.host.driver.volume_disks, name)
        return JSONResponse({"volumes": [hostwire.volume_disk_to_json(d) for d in disks]})

    async def attach_volume(self, request: Request) -> Response:
        name, vid = self._volume_target(request)
        disk = hostwire.volume_disk_from_json(await json_body(request), vid)
        await self.pool.run(self.host.driver.attach_volume, name, disk, wait=30)
        return Response(status_code=204)

    async def detach_volume(self, request: Request) -> Response:
        name, vid = self._volume_target(request)
        await self.pool.run(self.host.driver.detach_volume, name, vid, wait=30)
        return Response(status_code=204)

    async def volume_snapshot(self, request: Request) -> Response:
        name, vid = self._volume_target(request)
        body = await json_body(request)
        if not isinstance(body, dict):
            raise errors.Invalid("the body must be a JSON object")
        new_file = qcow2chain.host_path(body.get("new_file"), "new_file")
        flags = {k: body.get(k, False) for k in ("quiesce", "require_quiesce")}
        max_frozen = body.get("max_frozen", 1.0)
        if not all(isinstance(v, bool) for v in flags.values()) or not isinstance(max_frozen, (int, float)) \
                or not 0 < max_frozen <= 60:
            raise errors.Invalid("quiesce/require_quiesce: booleans; max_frozen: seconds, at most 60")
        quiesced, frozen = await self.pool.run(
            lambda: self.host.driver.volume_snapshot_create(name, vid, new_file, max_frozen=float(max_frozen), **flags),
            wait=30)
        return JSONResponse({"quiesced": quiesced, "frozen_seconds": frozen})

    async def volume_merge(self, request: Request) -> Response:
        name, vid = self._volume_target(request)
        body = await json_body(request)
        if not isinstance(body, dict):
            raise errors.Invalid("the body must be a JSON object")
        names = {k: qcow2chain.file_name(body.get(k), k) for k in ("file_to_merge", "merge_target_file")}
        loop = asyncio.get_running_loop()
        reports: asyncio.Queue[tuple[int, int]] = asyncio.Queue()

        def report(done: int, total: int) -> None:
            loop.call_soon_threadsafe(reports.put_nowait, (done, total))

        work = asyncio.ensure_future(self.pool.run(
            lambda: self.host.driver.volume_snapshot_delete(name, vid, progress=VolumeJob(report), **names), wait=30))
        first = await _next_report(reports, work, None)
        if first is None and work.exception() is not None:
            raise work.exception()      # nothing streamed yet: a plain error answer

        async def lines() -> AsyncIterator[bytes]:
            last = first
            if first is not None:
                yield _line({"progress": list(first)})
            while not work.done() or not reports.empty():
                got = await _next_report(reports, work, HEARTBEAT)
                last = got or last
                if got is not None or not work.done():      # a report, or a heartbeat
                    yield _line({"progress": list(last)} if last is not None else {"alive": True})
            exc = work.exception()
            yield _line({"result": "done"} if exc is None else {"error": _error_doc(exc)})
        return StreamingResponse(lines(), media_type="application/x-ndjson")


async def _next_report(reports: asyncio.Queue, work: asyncio.Future, timeout: float | None) -> tuple[int, int] | None:
    """The next progress report; None when the work ended (or ``timeout`` passed) first."""
    if not reports.empty():
        return reports.get_nowait()
    getter = asyncio.ensure_future(reports.get())
    done, _ = await asyncio.wait({getter, work}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if getter in done:
        return getter.result()
    getter.cancel()
    return None


def _line(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode() + b"\n"


def _error_doc(exc: BaseException) -> dict[str, Any]:
    """An error that ended a streamed answer, as the error handler would have answered it."""
    if isinstance(exc, errors.FreezeframeError):
        status = status_of(exc)
        if status >= 500:
            LOG.error("volume merge failed: %s: %s", type(exc).__name__, exc)
        return {"code": status, "message": HIDDEN if isinstance(exc, errors.HostFault) else exc.message}
    LOG.error("volume merge failed", exc_info=exc)
    return {"code": 500, "message": HIDDEN}
