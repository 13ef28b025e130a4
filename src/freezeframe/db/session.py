"""Run database work off the event loop, one transaction per call, on the database's own pool.

``run`` (requests) uses a bounded pool of its own — never the loop's default executor, which
other work (compute's outbound calls, driver calls) may fill while it waits on requests of this
same process — and answers ``errors.Busy`` (503 + Retry-After) at once when that pool is full.
``run_sync`` is for threads that are not request handlers (the conductor's flows, the reaper).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import threading
from typing import Callable, TypeVar

from sqlalchemy import Engine, create_engine, insert, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from freezeframe.common import errors
from freezeframe.common.pools import BoundedPool
from freezeframe.db.health import HealthHeartbeat

T = TypeVar("T")

# Requests' database work: threads, and how many calls may wait for one before 503 Busy —
# at most QUEUE calls, and a new request's first call is refused when those ahead of it would
# take longer than QUEUE_WAIT seconds (at the recent time per call) so that no request waits
# long: a request is answered within a second, if only with 503 + Retry-After.
SQLITE_WORKERS, PG_WORKERS, QUEUE, QUEUE_WAIT = 1, 8, 128, 0.2
# The write probe (/healthcheck) gives up after this long: a locked or read-only database.
PROBE_TIMEOUT = 2.0


class Database:
    def __init__(self, engine: Engine, sessions: sessionmaker, *, workers: int | None = None,
                 queue: int = QUEUE) -> None:
        self.engine = engine
        self.sessions = sessions
        # SQLite has one writer at a time; waiting for it in SQLite's busy handler sleeps in
        # growing steps (tens of ms) and gives long tails under concurrency. Within a process we
        # queue on a lock instead; between processes busy_timeout still applies.
        self.sqlite = engine.dialect.name == "sqlite"
        self._lock = threading.Lock() if self.sqlite else contextlib.nullcontext()
        # For the same reason requests run their SQLite work on one thread: no GIL hand-offs
        # between several database threads that would only queue on the lock anyway. PostgreSQL
        # gets a few threads, fewer than the engine's connections (the conductor's flows and the
        # reaper use the rest through run_sync).
        self.pool = BoundedPool("db", workers or (SQLITE_WORKERS if self.sqlite else PG_WORKERS), queue,
                                max_queue_wait=QUEUE_WAIT)
        self._probe_engine: Engine | None = None
        self._probe_lock = threading.Lock()
        # This database's metrics (its own registry: several apps may share a process); its
        # sessions report their committed state transitions to it.
        from freezeframe.common.metrics import Metrics
        self.metrics = Metrics(self)

    def run_sync(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn(session)`` in one transaction: committed if it returns, rolled back if it raises."""
        try:
            with self._lock, self.sessions.begin() as session:
                return fn(session)
        except IntegrityError as exc:
            # A race the checks before the write could not see (e.g. two creates of one id).
            raise errors.Conflict("The request conflicts with a concurrent change; retry it") from exc
        except OperationalError as exc:
            raise errors.BackendUnavailable(f"The database is unavailable: {exc.orig}") from exc

    async def run(self, fn: Callable[[Session], T]) -> T:
        """``run_sync`` on the database's pool; ``errors.Busy`` at once when the pool is full."""
        return await self.pool.run(self.run_sync, fn)

    # -- health ----------------------------------------------------------------------------

    def _prober(self) -> Engine:
        """A connection of its own, opened per probe (NullPool): neither the request pool's
        connections nor the in-process SQLite lock stand between the probe and the database, a
        setting changed since (read-only) is seen, and every wait is bounded by PROBE_TIMEOUT."""
        with self._probe_lock:
            if self._probe_engine is None:
                url = self.engine.url
                if self.sqlite:
                    args = {"check_same_thread": False, "timeout": PROBE_TIMEOUT}
                else:
                    ms = int(PROBE_TIMEOUT * 1000)
                    args = {"connect_timeout": max(1, int(PROBE_TIMEOUT)),
                            "options": f"-c statement_timeout={ms} -c lock_timeout={ms}"}
                self._probe_engine = create_engine(url, poolclass=NullPool, connect_args=args)
            return self._probe_engine

    def probe_write(self) -> None:
        """Prove the database takes a write: bump this host's row of ``health_heartbeat`` and
        commit. Raises (any exception) when it cannot; blocks at most about PROBE_TIMEOUT."""
        key = f"{socket.gethostname()}"[:255]
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        table = HealthHeartbeat.__table__
        with self._prober().begin() as conn:
            changed = conn.execute(update(table).where(table.c.id == key)
                                   .values(beat_at=now, pid=os.getpid(), beats=table.c.beats + 1)).rowcount
            if not changed:
                conn.execute(insert(table).values(id=key, beat_at=now, pid=os.getpid(), beats=1))

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        if self._probe_engine is not None:
            self._probe_engine.dispose()
        self.engine.dispose()
