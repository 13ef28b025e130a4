"""Riding through a restart of the service: what the CLI's ``--wait`` loops (``workflow
watch``, ``server image/backup create --wait``, ``server create --wait``) poll with.

A stopped and restarted ``freezeframe serve`` pauses its workflows and resumes them, so a
client following one should not give up because the service was away for a moment. Once the
service has answered, a poll that finds it unreachable (connection refused or reset) or
answering 502/503/504 is retried with a growing pause (0.5 s doubling to 5 s); the first such
poll prints that it is waiting for the service, the first answer after prints that it is back.
After ``patience`` seconds without an answer (5 minutes by default) it gives up with a clear
message — the operation goes on on the server either way. A command's first call is not
ridden: a wrong URL fails at once.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO, TypeVar

import httpx

from freezeframe.common.remote import RemoteError
from freezeframe.compute.client import Unreachable, WaitTimeout
from freezeframe.images.client import Unreachable as ImageUnreachable

T = TypeVar("T")
PATIENCE = 300.0                    # seconds without an answer before giving up
FIRST_PAUSE, MAX_PAUSE = 0.5, 5.0
AWAY_STATUSES = frozenset({502, 503, 504})


def away(exc: BaseException) -> str | None:
    """Why ``exc`` means the service is away for now (restarting, saturated), or None when it is
    a real answer (or a real error) that retrying would not change."""
    if isinstance(exc, WaitTimeout):
        return None
    if isinstance(exc, (Unreachable, ImageUnreachable)):
        return "it cannot be reached"
    if isinstance(exc, RemoteError):
        status = getattr(exc, "status", None)
        if status in AWAY_STATUSES:
            return f"it answers HTTP {status}"
        if status is None and isinstance(exc.__context__, httpx.TransportError):
            return "the connection was lost"
    return None


class Ride:
    """Polls that ride through the service's absence. ``connected``: the service has answered in
    this command already (else the first call is not retried)."""

    def __init__(self, what: str, *, patience: float = PATIENCE, connected: bool = False,
                 out: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.what = what                # e.g. "workflow 1234...", for the messages
        self.patience = patience
        self.connected = connected
        self.out = out
        self.clock = clock
        self.sleep = sleep
        self.away_since: float | None = None
        self.waits = 0                  # how many times the service went away (for tests)

    def _say(self, message: str) -> None:
        print(f"freezeframe: {message}", file=self.out or sys.stderr, flush=True)

    def call(self, fn: Callable[[], T], *, deadline: float | None = None) -> T:
        """``fn()``, retried while the service is away. ``deadline`` (of ``clock``): the
        caller's own timeout, which a wait for the service does not extend."""
        pause = FIRST_PAUSE
        while True:
            try:
                result = fn()
            except Exception as exc:
                why = away(exc)
                if why is None or not self.connected:
                    raise
                now = self.clock()
                if self.away_since is None:
                    self.away_since = now
                    self.waits += 1
                    self._say(f"the service is unavailable ({why}); waiting for it to come back (at most "
                              f"{self.patience:g}s) — {self.what} goes on on the server")
                elif now - self.away_since >= self.patience:
                    raise Unreachable(f"gave up waiting for the service: unavailable for {now - self.away_since:.0f}s "
                                      f"({why}: {exc}); {self.what} goes on on the server",
                                      service=getattr(exc, "service", "compute")) from None
                if deadline is not None and now >= deadline:
                    raise WaitTimeout(f"timed out while the service was unavailable ({why}); {self.what} goes on "
                                      "on the server") from None
                wait = min(pause, max(self.patience - (now - self.away_since), 0.05))
                if deadline is not None:
                    wait = min(wait, max(deadline - now, 0.05))
                self.sleep(wait)
                pause = min(pause * 2, MAX_PAUSE)
                continue
            if self.away_since is not None:
                self._say(f"the service is back after {self.clock() - self.away_since:.0f}s; still following "
                          f"{self.what}")
                self.away_since = None
            self.connected = True
            return result

