"""``/healthcheck``: answers at once, whatever the load, and tells the truth.

- It never queues behind the work: its probes run on threads of their own (one per probe,
  never a request pool or the default executor), at most one probe of each kind at a time and
  at most one a second; a request waits for a fresh probe at most ``BUDGET`` seconds and
  otherwise answers from the last result.
- It reports 503 when the database cannot take a write (a row of ``health_heartbeat`` bumped
  on a connection of its own), the store cannot (a small file written, fsynced and removed where
  uploads write), a probe has hung, or the workers are exhausted (a request pool saturated or
  all its workers stuck; see ``freezeframe.common.pools``).
- ``?detailed`` is for admins (policy ``freezeframe:health:detailed``; the edge authenticates
  it): every check, every pool's usage, the request limiter and the service counters.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from freezeframe.common import errors, pools, statemachine
from freezeframe.images import states

PATH = "/healthcheck"
BUDGET = 0.12          # seconds a request may wait for a probe that is running
FRESH = 1.0            # a probe result younger than this is answered as is
STALE = 10.0           # an older one is not trusted: the probe must answer again
HUNG = 3.0             # a probe running longer than this has hung: unhealthy


@dataclass
class Result:
    ok: bool
    at: float
    ms: float
    error: str | None = None


@dataclass
class Probe:
    """One kind of check on a thread of its own."""
    name: str
    fn: Callable[[], None]
    executor: concurrent.futures.ThreadPoolExecutor = field(init=False)
    last: Result | None = None
    pending: concurrent.futures.Future | None = None
    started: float = 0.0

    def __post_init__(self) -> None:
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"ff-health-{self.name}")

    def _run(self) -> Result:
        t0 = time.monotonic()
        try:
            self.fn()
            return Result(True, time.monotonic(), (time.monotonic() - t0) * 1000)
        except Exception as exc:   # whatever stops the write is the answer
            message = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            return Result(False, time.monotonic(), (time.monotonic() - t0) * 1000,
                          f"{type(exc).__name__}: {message[0] if message else ''}"[:300])

    def kick(self, now: float) -> None:
        if self.pending is None and (self.last is None or now - self.last.at >= FRESH):
            self.pending, self.started = self.executor.submit(self._run), now

    def collect(self) -> None:
        if self.pending is not None and self.pending.done():
            self.last, self.pending = self.pending.result(), None

    def verdict(self, now: float) -> dict[str, Any]:
        if self.pending is not None and now - self.started >= HUNG:
            return {"ok": False, "error": f"the {self.name} write probe has not completed in "
                                          f"{now - self.started:.1f}s"}
        if self.last is None:
            return {"ok": True, "pending": True}         # the first probe is under way
        if now - self.last.at >= STALE and self.pending is None:
            return {"ok": False, "error": f"no {self.name} probe for {now - self.last.at:.0f}s"}
        out: dict[str, Any] = {"ok": self.last.ok, "ms": round(self.last.ms, 1),
                               "age_s": round(now - self.last.at, 2)}
        if self.last.error:
            out["error"] = self.last.error
        return out

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class Health:
    def __init__(self, services: Any, limiter: Any = None) -> None:
        self.services = services
        self.limiter = limiter
        self.probes = [Probe("database", services.db.probe_write), Probe("store", services.store.probe_write)]
        self.default_executor: pools.InstrumentedExecutor | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """At start-up: count the loop's default executor (what is left on it is reported and
        judged stuck, never refused) and take the first probes."""
        self.default_executor = pools.InstrumentedExecutor(min(32, (os.cpu_count() or 1) + 4),
                                                          stuck_after=60.0)
        loop.set_default_executor(self.default_executor)
        now = time.monotonic()
        for probe in self.probes:
            probe.kick(now)

    def close(self) -> None:
        for probe in self.probes:
            probe.close()

    async def evaluate(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        for probe in self.probes:
            probe.kick(now)
        running = [p.pending for p in self.probes if p.pending is not None]
        if running:
            await asyncio.wait([asyncio.wrap_future(f) for f in running], timeout=BUDGET)
        now = time.monotonic()
        checks: dict[str, Any] = {}
        for probe in self.probes:
            probe.collect()
            checks[probe.name] = probe.verdict(now)
        problems = [p for p in (pool.problem() for pool in pools.registered() if pool.serves_requests) if p]
        if self.default_executor is not None and (stuck := self.default_executor.problem()):
            problems.append(stuck)
        checks["workers"] = {"ok": not problems, **({"error": "; ".join(problems)} if problems else {})}
        return all(c["ok"] for c in checks.values()), checks

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pools": {p.name: p.stats() for p in pools.registered()}}
        if self.default_executor is not None:
            out["pools"]["default"] = self.default_executor.stats()
        if self.limiter is not None:
            out["requests"] = self.limiter.stats()
        out["image_transitions"] = dict(states.COUNTS)
        out["state_transitions"] = statemachine.counts()     # every machine: {machine: {"from->to": n}}
        out["reaper"] = dict(self.services.reaper.counts)
        return out

    async def endpoint(self, request: Request) -> Response:
        detailed = "detailed" in request.query_params
        if detailed:
            ctx = request.scope.get("state", {}).get("ctx")
            if ctx is None:      # the edge authenticates ?detailed; never answer it without
                raise errors.NotAuthenticated("The detailed health check needs a token")
            policy = getattr(self.services, "policy", None)
            if policy is not None:
                policy.authorize(ctx, "freezeframe:health:detailed")
            elif not ctx.is_admin:
                raise errors.Forbidden("The detailed health check is for administrators")
        ok, checks = await self.evaluate()
        status = 200 if ok else 503
        headers = None if ok else {"Retry-After": "1"}
        if detailed:
            return JSONResponse({"status": "OK" if ok else "UNHEALTHY", "checks": checks, **self.details()},
                                status_code=status, headers=headers)
        if ok:
            return PlainTextResponse("OK")
        failing = "; ".join(f"{name}: {c.get('error', 'failing')}" for name, c in checks.items() if not c["ok"])
        return PlainTextResponse(f"UNHEALTHY: {failing}", status_code=status, headers=headers)
