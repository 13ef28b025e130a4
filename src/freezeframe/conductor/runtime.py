"""What running flows need, installed once per process by whoever runs the conductor.

taskflow rebuilds a flow after a crash from the factory name it persisted, so tasks cannot be
handed their collaborators through the factory's (persisted, JSON) arguments; they look them
up here instead. Nothing else in Freezeframe uses a process-wide object.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar

from freezeframe.common.context import Actor
from freezeframe.conductor.interrupts import Interrupted  # noqa: F401 (the flows raise it from here)
from freezeframe.conductor.lease import Leases
from freezeframe.db.session import Database

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

LOG = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Runtime:
    db: Database
    # The image API acting for a user (with the service credential): a typed client
    # (``images.client.GlanceClient``), used as a context manager.
    image_client: Callable[[Actor], Any]
    workdir: Path                              # where local snapshots live while they upload
    upload_rate: int = 0                       # bytes/s per upload, 0 = unlimited
    upload_chunk: int = 16 << 20               # bytes per part of a resumable upload
    kill_at: frozenset[str] = frozenset()      # fault injection: SIGKILL ourselves on entering these states
    pause_at: frozenset[str] = frozenset()     # stop tests: wait (interruptibly) on entering these states
    pause_seconds: float = 60.0                # ... for at most this long
    # Set when the conductor stops: every interruption point then raises Interrupted.
    stopping: threading.Event = field(default_factory=threading.Event, compare=False)
    # This conductor's leases (conductor/lease.py): every write a step makes is fenced by them.
    leases: Leases | None = field(default=None, compare=False)
    # The services' functions the workflows call in process, by service ("compute": ...): a
    # workflow writes no other service's tables, it asks that service (and the hypervisor it
    # drives is the one compute gives it).
    local: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def fenced(self, workflow_id: str, fn: Callable[[Session], T]) -> T:
        """Run ``fn(session)`` in one transaction committed only while this conductor still owns
        the workflow (``Fenced`` otherwise: nothing is committed, nothing reverted)."""
        if self.leases is None:
            raise RuntimeError("this process runs no conductor: workflows cannot write")
        return self.leases.write(workflow_id, fn)

    def service(self, name: str) -> Any:
        try:
            return self.local[name]
        except KeyError:
            raise RuntimeError(f"the {name} service is not available to the workflows of this process") from None

    def crash_point(self, state: str) -> None:
        """Crash tests: die like kill -9 right after a workflow's move to ``state`` committed.
        Stop tests: pause there (an interruption point) until the conductor stops."""
        if state in self.kill_at:
            LOG.warning("fault injection: killing this process (SIGKILL) in state %s", state)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        if state in self.pause_at:
            LOG.warning("fault injection: pausing in state %s (at most %gs, or until stopped)", state,
                        self.pause_seconds)
            self.sleep(self.pause_seconds)

    def check_stop(self) -> None:
        """An interruption point: raise Interrupted when the conductor is stopping, Fenced (an
        Interrupted) when the workflow this thread runs is no longer this conductor's."""
        if self.stopping.is_set():
            raise Interrupted("the conductor is stopping")
        if self.leases is not None:
            self.leases.check_current()

    def sleep(self, seconds: float) -> None:
        """Sleep, interruptibly: Interrupted as soon as the conductor stops."""
        if self.stopping.wait(max(seconds, 0.0)):
            raise Interrupted("the conductor is stopping")
        self.check_stop()


_current: Runtime | None = None


def install(runtime: Runtime | None) -> None:
    global _current
    _current = runtime


def current() -> Runtime:
    if _current is None:
        raise RuntimeError("the conductor runtime is not installed in this process")
    return _current
