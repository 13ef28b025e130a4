"""Run database work off the event loop, one transaction per call."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from freezeframe.common import errors

T = TypeVar("T")


class Database:
    def __init__(self, engine: Engine, sessions: sessionmaker) -> None:
        self.engine = engine
        self.sessions = sessions
        # SQLite has one writer at a time; waiting for it in SQLite's busy handler sleeps in
        # growing steps (tens of ms) and gives long tails under concurrency. Within a process we
        # queue on a lock instead; between processes busy_timeout still applies.
        sqlite = engine.dialect.name == "sqlite"
        self._lock = threading.Lock() if sqlite else contextlib.nullcontext()
        # For the same reason requests run their SQLite work on one thread: no GIL hand-offs
        # between several database threads that would only queue on the lock anyway.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ff-db") if sqlite else None

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
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(self.run_sync, fn))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self.engine.dispose()
