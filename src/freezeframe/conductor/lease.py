"""Who may write a workflow: a lease in the database, fenced by a counter.

The jobboard decides which live conductor *works* on a workflow; the database decides who may
*write* it, so no flow ever runs twice whatever the jobboard or the network does:

- taking a workflow is one compare-and-set on its row: ``owner`` := me, ``fence`` := fence + 1,
  ``heartbeat_at`` := now, allowed only while it is unfinished and unowned, owned by this very
  conductor (a restart: one live process per conductor id, the liveness lock sees to that) or
  its owner's lease ran out (``heartbeat_at`` older than the TTL, by the database's clock);
- the owner renews ``heartbeat_at`` every TTL/3 (``heartbeat``: only while the fence is still
  its own);
- every write a step makes runs in a transaction that first locks the row and checks the fence
  is still the one this conductor took (``write``). A conductor that lost the workflow — frozen
  past its lease, cut off from the database, taken over meanwhile — gets ``Fenced`` and commits
  nothing. It also stops by itself at its next interruption point once its last renewal is
  older than the TTL (``Claim.check``), before anyone else may take the workflow.

``Fenced`` is an ``Interrupted`` (a BaseException): taskflow does not turn it into a failure, so
nothing is reverted and the step stays RUNNING in persistence for the new owner to resume — the
path a polite stop takes, without releasing the claim (it is not ours any more).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TypeVar

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from freezeframe.common.timeutil import utcnow
from freezeframe.conductor.model import Workflow
from freezeframe.conductor.interrupts import Interrupted
from freezeframe.db.clock import db_now
from freezeframe.db.session import Database

LOG = logging.getLogger(__name__)
T = TypeVar("T")


class Fenced(Interrupted):
    """This conductor no longer owns the workflow: stop where it is, revert nothing."""


@dataclass
class Claim:
    """This conductor's hold on one workflow."""
    workflow_id: str
    owner: str
    fence: int
    ttl: float
    previous_owner: str | None = None
    state: str = ""
    beat: float = field(default_factory=time.monotonic)   # when the last renewal that succeeded was sent
    lost: threading.Event = field(default_factory=threading.Event)
    job: Any = None                                       # the jobboard's token for it

    def valid(self) -> bool:
        return not self.lost.is_set() and time.monotonic() - self.beat < self.ttl

    def check(self) -> None:
        """An interruption point: Fenced once the claim is lost or its lease may have run out."""
        if self.lost.is_set():
            raise Fenced(f"workflow {self.workflow_id}: conductor {self.owner} lost its claim (fence {self.fence})")
        if time.monotonic() - self.beat >= self.ttl:
            self.lost.set()
            raise Fenced(f"workflow {self.workflow_id}: the lease of conductor {self.owner} was not renewed "
                         f"for {self.ttl:g}s: another conductor may take it over")


class Leases:
    def __init__(self, db: Database, owner: str, ttl: float, terminal: Callable[[], frozenset[str]]) -> None:
        self.db = db
        self.owner = owner
        self.ttl = ttl
        self._terminal = terminal
        self._held: dict[str, Claim] = {}
        self._guard = threading.Lock()
        self._local = threading.local()

    # -- taking and giving back ------------------------------------------------------------

    def acquire(self, workflow_id: str) -> tuple[Claim | None, str]:
        """Compare-and-set the workflow to this conductor. Returns (claim, why): the claim, or
        None and why not — "finished" (ended or unknown: nothing left to run) or "held" (another
        conductor's lease is still fresh)."""
        terminal = self._terminal()

        def cas(session: Session) -> tuple[Claim | None, str]:
            row = session.execute(select(Workflow.state, Workflow.owner, Workflow.fence, Workflow.heartbeat_at)
                                  .where(Workflow.id == workflow_id).with_for_update()).one_or_none()
            if row is None or row.state in terminal:
                return None, "finished"
            now = db_now(session)
            stale = row.heartbeat_at is None or row.heartbeat_at < now - dt.timedelta(seconds=self.ttl)
            if row.owner is not None and row.owner != self.owner and not stale:
                return None, "held"
            fence = (row.fence or 0) + 1
            done = session.execute(update(Workflow).where(Workflow.id == workflow_id, Workflow.fence == row.fence)
                                   .values(owner=self.owner, fence=fence, heartbeat_at=now, updated_at=utcnow())
                                   .execution_options(synchronize_session=False)).rowcount
            if done != 1:
                return None, "held"
            return Claim(workflow_id, self.owner, fence, self.ttl, previous_owner=row.owner, state=row.state), "taken"
        sent = time.monotonic()
        claim, why = self.db.run_sync(cas)
        if claim is not None:
            claim.beat = sent
            with self._guard:
                self._held[workflow_id] = claim
        return claim, why

    def heartbeat(self, claim: Claim) -> bool:
        """Renew the lease; False when the fence moved on (the claim is then marked lost)."""
        def renew(session: Session) -> int:
            return session.execute(update(Workflow).where(Workflow.id == claim.workflow_id,
                                                          Workflow.owner == self.owner,
                                                          Workflow.fence == claim.fence)
                                   .values(heartbeat_at=db_now(session))
                                   .execution_options(synchronize_session=False)).rowcount
        sent = time.monotonic()
        if self.db.run_sync(renew) == 1:
            claim.beat = max(claim.beat, sent)
            return True
        claim.lost.set()
        return False

    def release(self, claim: Claim) -> bool:
        """Give the workflow back (owner None) if it is still ours: any conductor may take it."""
        self.forget(claim)

        def give_back(session: Session) -> int:
            return session.execute(update(Workflow).where(Workflow.id == claim.workflow_id,
                                                          Workflow.owner == self.owner,
                                                          Workflow.fence == claim.fence)
                                   .values(owner=None, heartbeat_at=None, updated_at=utcnow())
                                   .execution_options(synchronize_session=False)).rowcount
        return self.db.run_sync(give_back) == 1

    def forget(self, claim: Claim) -> None:
        with self._guard:
            if self._held.get(claim.workflow_id) is claim:
                del self._held[claim.workflow_id]

    def held(self) -> list[Claim]:
        with self._guard:
            return list(self._held.values())

    def get(self, workflow_id: str) -> Claim | None:
        with self._guard:
            return self._held.get(workflow_id)

    # -- what the steps use ----------------------------------------------------------------

    def claim_of(self, workflow_id: str) -> Claim:
        claim = self.get(workflow_id)
        if claim is None:
            raise Fenced(f"workflow {workflow_id}: conductor {self.owner} holds no claim on it")
        return claim

    def write(self, workflow_id: str, fn: Callable[[Session], T]) -> T:
        """``fn(session)`` in one transaction that commits only while the fence is still ours:
        the row is locked and its fence checked first, so a new owner's take-over waits for
        this transaction, and once it happened this one raises Fenced and commits nothing."""
        claim = self.claim_of(workflow_id)
        claim.check()

        def fenced(session: Session) -> T:
            fence = session.execute(select(Workflow.fence).where(Workflow.id == workflow_id)
                                    .with_for_update()).scalar_one_or_none()
            if fence != claim.fence:
                claim.lost.set()
                raise Fenced(f"workflow {workflow_id}: fence {claim.fence} of conductor {self.owner} superseded "
                             f"by {fence}: another conductor owns it")
            return fn(session)
        return self.db.run_sync(fenced)

    @contextlib.contextmanager
    def bound(self, claim: Claim) -> Iterator[Claim]:
        """Make ``claim`` the one this thread's interruption points check."""
        previous = getattr(self._local, "claim", None)
        self._local.claim = claim
        try:
            yield claim
        finally:
            self._local.claim = previous

    def check_current(self) -> None:
        claim = getattr(self._local, "claim", None)
        if claim is not None:
            claim.check()
