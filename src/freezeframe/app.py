"""Build the ASGI application of `serve` and `freezeframe api`: the list of services it mounts
(each brings its routes, its public paths, its start and stop), one edge, one error map."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.routing import Route

from freezeframe.assembly import (build_authenticator, build_baremetal, build_catalog, build_compute, build_identity,
                                  build_services, build_volume)
from freezeframe.common.web.errors import HANDLERS
from freezeframe.compute.api import ComputeAPI
from freezeframe.conductor.api import WorkflowAPI
from freezeframe.common.web.mount import Public, PublicPaths
from freezeframe.common.web.openapi import PUBLIC as OPENAPI_PUBLIC
from freezeframe.common.web.openapi import OpenAPI
from freezeframe.db.engine import redact
from freezeframe.http.health import PATH as HEALTH_PATH
from freezeframe.http.health import Health
from freezeframe.http.limits import Limiter, LimitMiddleware
from freezeframe.http.metrics import MetricsEndpoint
from freezeframe.http.middleware import EdgeMiddleware
from freezeframe.images.api import ImageAPI
from freezeframe.settings import Settings

LOG = logging.getLogger(__name__)
# The process's own paths that need no token (the root version document, as OpenStack's).
ROOT_PUBLIC = (Public(""), Public("/versions"))


def build_app(settings: Settings) -> Starlette:
    services = build_services(settings)
    identity = build_identity(settings, services.db)
    authenticator = build_authenticator(settings, identity, serving=True)
    build_volume(settings, services, authenticator)       # before compute: its conductor runs volume work too
    build_baremetal(settings, services, authenticator)    # (and bare-metal work)
    build_compute(settings, services, authenticator, with_conductor=settings.conductor.enabled)
    LOG.info("database %s, store %s", redact(settings.database_url), settings.store_path)

    limiter = Limiter(settings.server.max_in_flight)
    health = Health(services, limiter)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        health.install(loop)     # first: it counts the default executor everything below uses
        services.reaper.start()
        services.inprocess.bind(app, loop)     # service-to-service calls, through this very app
        # `freezeframe serve` (server.py) runs the conductor itself: started once the port is
        # bound, paused before the HTTP server stops. Any other host of this app: here.
        own_conductor = not getattr(_app.state, "conductor_run_by_server", False)
        if services.conductor is not None:
            if own_conductor:
                await loop.run_in_executor(None, services.conductor.start)
        elif services.liveness is not None:
            await loop.run_in_executor(None, services.liveness.start)
        try:
            yield
        finally:
            if services.conductor is not None:
                if own_conductor:
                    await loop.run_in_executor(None, services.conductor.stop)
            elif services.liveness is not None:
                await loop.run_in_executor(None, services.liveness.stop)
            for m in mounted:
                if m.stop is not None:
                    m.stop()
            services.inprocess.unbind()
            await services.reaper.stop()
            await services.data.close()
            health.close()
            services.db.close()

    mounted = [ImageAPI(services.images, services.data, services.members).mounted()]
    if identity is not None:
        mounted.append(identity.mounted(build_catalog(settings, services)))
    if services.compute is not None and services.liveness is not None:
        mounted += [ComputeAPI(services.compute, services.db).mounted(),
                    WorkflowAPI(services.db, services.liveness.is_alive, settings.conductor.stall_timeout,
                                policy=services.policy).mounted()]
    if services.volume is not None:
        from freezeframe.volumes.api import VolumeAPI
        mounted.append(VolumeAPI(services.volume).mounted())
    if services.baremetal is not None:
        from freezeframe.baremetal.api import BaremetalAPI
        mounted.append(BaremetalAPI(services.baremetal).mounted())
    openapi = OpenAPI(mounted)      # each API's OpenAPI document, read from its routes
    routes = [Route(HEALTH_PATH, health.endpoint, methods=["GET", "HEAD"]), *openapi.routes()]
    metrics = MetricsEndpoint(settings, services)       # GET /metrics ([metrics] settings)
    routes += metrics.routes()
    for m in mounted:
        routes += m.routes()
    app = Starlette(
        routes=routes,
        exception_handlers=HANDLERS,
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.mounted = mounted        # what `serve` announces at start (server.py: announcement)
    app.add_middleware(LimitMiddleware, limiter=limiter)       # inside the edge: refusals are logged
    app.add_middleware(EdgeMiddleware, authenticator=authenticator, max_header_bytes=settings.server.max_header_bytes,
                       public=PublicPaths(mounted, own=ROOT_PUBLIC + OPENAPI_PUBLIC + metrics.public))
    return app
