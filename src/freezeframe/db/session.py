"""Run database work off the event loop, one transaction per call."""

from __future__ import annotations

import asyncio
import functools
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

    def run_sync(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn(session)`` in one transaction: committed if it returns, rolled back if it raises."""
        try:
            with self.sessions.begin() as session:
                return fn(session)
        except IntegrityError as exc:
            # A race the checks before the write could not see (e.g. two creates of one id).
            raise errors.Conflict("The request conflicts with a concurrent change; retry it") from exc
        except OperationalError as exc:
            raise errors.BackendUnavailable(f"The database is unavailable: {exc.orig}") from exc

    async def run(self, fn: Callable[[Session], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(self.run_sync, fn))
