"""Admission at the door: a bounded number of requests in flight, and a 503 with
``Retry-After`` at once for the rest — never a queue nobody can see.

Pure ASGI, inside the edge (so a refusal carries the request id and is logged) and around
everything else. The health check is never counted nor refused. Calls a service makes to finish
work it has already accepted (its credential beside the user's: ``ctx.is_service``) may use a
reserve that users' new requests cannot take, and are marked admitted so their pool calls wait
(boundedly) for a slot instead of failing half-way (``freezeframe.common.pools.admit``).
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from freezeframe.common import pools
from freezeframe.common.web.errors import error_response

EXEMPT = ("/healthcheck",)


class Limiter:
    """The counters: shared by the middleware and ``/healthcheck?detailed``."""

    def __init__(self, max_in_flight: int, *, service_reserve: float = 0.125, retry_after: int = 1) -> None:
        self.max_in_flight = max(1, max_in_flight)
        self.user_limit = max(1, self.max_in_flight - int(self.max_in_flight * service_reserve))
        self.retry_after = retry_after
        self.in_flight = 0
        self.peak = 0
        self.refused = 0

    def stats(self) -> dict[str, Any]:
        return {"in_flight": self.in_flight, "max_in_flight": self.max_in_flight, "user_limit": self.user_limit,
                "peak": self.peak, "refused": self.refused}


class LimitMiddleware:
    def __init__(self, app: ASGIApp, limiter: Limiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") in EXEMPT:
            await self.app(scope, receive, send)
            return
        lim = self.limiter
        ctx = scope.get("state", {}).get("ctx")
        service = ctx is not None and getattr(ctx, "is_service", False)
        if lim.in_flight >= (lim.max_in_flight if service else lim.user_limit):
            lim.refused += 1
            await error_response(503, f"The service is busy ({lim.in_flight} requests in flight); retry shortly",
                                 {"Retry-After": str(lim.retry_after)})(scope, receive, send)
            return
        if service:
            pools.admit()
        lim.in_flight += 1
        lim.peak = max(lim.peak, lim.in_flight)
        try:
            await self.app(scope, receive, send)
        finally:
            lim.in_flight -= 1
