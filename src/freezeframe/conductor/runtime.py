"""What running flows need, installed once per process by whoever runs the conductor.

taskflow rebuilds a flow after a crash from the factory name it persisted, so tasks cannot be
handed their collaborators through the factory's (persisted, JSON) arguments; they look them
up here instead. Nothing else in Freezeframe uses a process-wide object.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from freezeframe.compute.drivers.base import VirtDriver
from freezeframe.db.session import Database
from freezeframe.images.client import GlanceClient

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    db: Database
    driver: VirtDriver
    image_client: Callable[[], GlanceClient]   # a client acting as the service (role "service")
    workdir: Path                              # where local snapshots live while they upload
    upload_rate: int = 0                       # bytes/s per upload, 0 = unlimited
    upload_chunk: int = 16 << 20               # bytes per part of a resumable upload
    kill_at: frozenset[str] = frozenset()      # fault injection: SIGKILL ourselves on entering these states

    def crash_point(self, state: str) -> None:
        """Crash tests: die like kill -9 right after a workflow's move to ``state`` committed."""
        if state in self.kill_at:
            LOG.warning("fault injection: killing this process (SIGKILL) in state %s", state)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os.kill(os.getpid(), signal.SIGKILL)


_current: Runtime | None = None


def install(runtime: Runtime | None) -> None:
    global _current
    _current = runtime


def current() -> Runtime:
    if _current is None:
        raise RuntimeError("the conductor runtime is not installed in this process")
    return _current
