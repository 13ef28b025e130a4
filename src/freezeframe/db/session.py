"""Run database work off the event loop, one transaction per call."""

from __future__ import annotations

import asyncio
import functools
from typing import Callable, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError, DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from freezeframe.common import errors

T = TypeVar("T")


class Database:
    def __init__(self, engine: Engine, sessions: sessionmaker) -> None:
        self.engine = engine
        self.sessions = sessions

    def run_sync(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn(session)`` in one transaction: committed if it returns, rolled back if it raises."""
        try:
            with self.sessions.begin() as session:
                return fn(session)
        except (OperationalError, DBAPIError) as exc:
            if isinstance(exc.orig, Exception) and "UNIQUE" in str(exc.orig).upper():
                raise
            if exc.connection_invalidated or isinstance(exc, OperationalError):
                raise errors.BackendUnavailable(f"The database is unavailable: {exc.orig}") from exc
            raise

    async def run(self, fn: Callable[[Session], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(self.run_sync, fn))
