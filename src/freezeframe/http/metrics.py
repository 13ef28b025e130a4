"""``GET /metrics``: the Prometheus text format of this process's metrics (``common/metrics.py``).

Access (``[metrics]`` settings): by default a token whose caller passes the policy rule
``freezeframe:metrics:scrape`` (admins; grant a monitoring role in the policy file); with
``public = true`` no token at all — Prometheus then scrapes with no credential, so keep the
port on a network only operators reach. ``enabled = false`` removes the route (404).

The scrape runs on the database's request pool (its gauges are a few ``GROUP BY`` queries):
never on the event loop, and refused with 503 + Retry-After like any request when that pool is
full.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from freezeframe.common import errors
from freezeframe.common.metrics import CONTENT_TYPE
from freezeframe.common.web.mount import Public
from freezeframe.common.web.request import ctx_of
from freezeframe.settings import Settings

PATH = "/metrics"
RULE = "freezeframe:metrics:scrape"


class MetricsEndpoint:
    def __init__(self, settings: Settings, services: Any) -> None:
        self.settings = settings.metrics
        self.services = services
        services.db.metrics.bind(liveness=services.liveness, conductor=services.conductor,
                                 host_down_after=settings.compute.host_down_after)

    def routes(self) -> list[Route]:
        return [Route(PATH, self.endpoint, methods=["GET"])] if self.settings.enabled else []

    @property
    def public(self) -> tuple[Public, ...]:
        return (Public(PATH),) if self.settings.enabled and self.settings.public else ()

    async def endpoint(self, request: Request) -> Response:
        if not self.settings.public:
            ctx = ctx_of(request)
            policy = getattr(self.services, "policy", None)
            if policy is not None:
                policy.authorize(ctx, RULE)
            elif not ctx.is_admin:
                raise errors.Forbidden("The metrics are for administrators")
        db = self.services.db
        body = await db.pool.run(db.metrics.render)
        return Response(body, media_type=CONTENT_TYPE)
