"""Build the ASGI application: every service mounted under its path, one edge, one error map."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator

from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from freezeframe.assembly import build_authenticator, build_compute, build_services
from freezeframe.compute.api import ComputeAPI
from freezeframe.conductor.api import WorkflowAPI
from freezeframe.db.engine import redact
from freezeframe.http.errors import HANDLERS
from freezeframe.http.middleware import EdgeMiddleware
from freezeframe.images import states
from freezeframe.images.api import ImageAPI
from freezeframe.settings import Settings

LOG = logging.getLogger(__name__)


def build_app(settings: Settings) -> Starlette:
    services = build_services(settings)
    authenticator = build_authenticator(settings)
    if settings.compute.enabled:
        build_compute(settings, services, authenticator, with_conductor=settings.conductor.enabled)
    LOG.info("database %s, store %s", redact(settings.database_url), settings.store_path)

    async def healthcheck(request: Request) -> Response:
        try:
            await services.db.run(lambda s: s.execute(text("SELECT 1")))
        except Exception as exc:
            return PlainTextResponse(f"database unavailable: {exc}", status_code=503)
        if "detailed" in request.query_params:
            return JSONResponse({"status": "OK", "image_transitions": dict(states.COUNTS),
                                 "reaper": dict(services.reaper.counts)})
        return PlainTextResponse("OK")

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        services.reaper.start()
        loop = asyncio.get_running_loop()
        if services.conductor is not None:
            await loop.run_in_executor(None, services.conductor.start)
        elif services.liveness is not None:
            await loop.run_in_executor(None, services.liveness.start)
        try:
            yield
        finally:
            if services.conductor is not None:
                await loop.run_in_executor(None, services.conductor.stop)
            elif services.liveness is not None:
                await loop.run_in_executor(None, services.liveness.stop)
            await services.reaper.stop()
            await services.data.close()
            services.db.close()

    routes = [
        Route("/healthcheck", healthcheck, methods=["GET", "HEAD"]),
        Mount("/image", app=ImageAPI(services.images, services.data, services.members).router()),
    ]
    if services.compute is not None and services.liveness is not None:
        routes += [
            Mount("/compute", app=ComputeAPI(services.compute, services.db).router()),
            Mount("/v1", app=WorkflowAPI(services.db, services.liveness.is_alive,
                                         settings.conductor.stall_timeout).router()),
        ]
    app = Starlette(
        routes=routes,
        exception_handlers=HANDLERS,
        lifespan=lifespan,
    )
    app.state.services = services
    app.add_middleware(EdgeMiddleware, authenticator=authenticator,
                       max_header_bytes=settings.server.max_header_bytes)
    return app
