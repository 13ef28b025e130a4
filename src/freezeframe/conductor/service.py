"""The conductor's API for the other services, in process: hand it work, ask about work.

A service never touches the conductor's tables. It hands work over with one call,
``submit(kind, resource_type, resource_id, params, actor, ...)``, which records the workflow
(state: the kind's initial one) in the same transaction as whatever the caller records about it
in its own tables (``also``), then posts it on the jobboard. It asks about work through the
functions below (how many of some kinds run on a host, is one unfinished for a resource, ...),
each usable inside the caller's own transaction (``session=``) where the answer must be
consistent with the caller's write (the max-concurrent-snapshots check, say).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from typing import Any, Callable, Iterable, TypeVar

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from freezeframe.common import errors
from freezeframe.common.context import Actor, request_id_var
from freezeframe.conductor.model import Workflow
from freezeframe.conductor.registry import Registry
from freezeframe.db.session import Database

LOG = logging.getLogger(__name__)
T = TypeVar("T")
FAILED = "FAILED"      # every kind's error path (a failed revert is retried, the workflow not ended)


def new_workflow_id() -> str:
    return str(uuid.uuid4())


class Workflows:
    def __init__(self, db: Database, registry: Registry | None = None, board=None,
                 owner_alive: Callable[[str | None], bool] | None = None, lease_ttl: float = 10.0) -> None:
        self.db = db
        self.registry = registry
        self.board = board
        self._owner_alive = owner_alive
        self.lease_ttl = lease_ttl

    def _terminal(self) -> list[str]:
        if self.registry is not None and self.registry.kinds:
            return sorted(self.registry.terminal_states())
        from freezeframe.conductor.states import TERMINAL       # (a registry-less caller: seed 000's)
        return sorted(s.value for s in TERMINAL)

    def _in(self, session: Session | None, fn: Callable[[Session], T]) -> T:
        return fn(session) if session is not None else self.db.run_sync(fn)

    # -- handing work over -----------------------------------------------------------------

    new_id = staticmethod(new_workflow_id)

    def initial_state(self, kind: str) -> str:
        """The state a workflow of ``kind`` starts in (UnknownKind for an unknown kind)."""
        if self.registry is None:
            raise RuntimeError("no workflow kinds are registered in this process")
        return str(self.registry.kind(kind).states.initial)

    def submit(self, kind: str, resource_type: str, resource_id: str, params: dict[str, Any], actor: Actor, *,
               image_id: str | None = None, host: str | None = None, workflow_id: str | None = None,
               request_id: str | None = None, also: Callable[[Session, str], None] | None = None) -> str:
        """Record a workflow for the conductor and post it; returns its id. ``also(session,
        workflow_id)`` runs in the same transaction (the caller's own records of it). Refused
        (errors.Invalid) for an unknown kind, another resource type than the kind's, or
        host-bound work without its host."""
        if self.registry is None:
            raise RuntimeError("no workflow kinds are registered in this process")
        spec = self.registry.kind(kind)
        if spec.resource_type is not None and resource_type != spec.resource_type:
            raise errors.Invalid(f"Workflow kind {kind!r} works on {spec.resource_type}s, not {resource_type}s")
        if spec.host_bound and not host:
            raise errors.Invalid(f"Workflow kind {kind!r} is bound to a host: the host of {resource_type} "
                                 f"{resource_id} is required")
        workflow_id = workflow_id or new_workflow_id()
        recorded = {**params, "actor": actor.to_json()}      # whom the workflow acts for
        rid = request_id or request_id_var.get()

        def record(session: Session) -> None:
            session.add(Workflow(id=workflow_id, kind=kind, state=str(spec.states.initial), resource_type=resource_type,
                                 resource_id=resource_id, image_id=image_id, project_id=actor.project_id,
                                 user_id=actor.user_id, request_id=None if rid == "-" else rid,
                                 params=json.dumps(recorded), host=host, fence=0))
            session.flush()
            if also is not None:
                also(session, workflow_id)
        self.db.run_sync(record)
        self.post(workflow_id, kind, host)
        return workflow_id

    def post(self, workflow_id: str, kind: str, host: str | None) -> None:
        """Post on the jobboard; should that fail, every conductor's scan posts it again."""
        if self.board is None:
            return
        try:
            self.board.post(workflow_id, kind, host)
        except Exception as exc:
            LOG.warning("workflow %s: could not be posted on the jobboard (%s); the next conductor scan posts it",
                        workflow_id, exc)

    # -- asking about work -----------------------------------------------------------------

    def count_running(self, *, kinds: Iterable[str] | None = None, host: str | None = None,
                      session: Session | None = None) -> int:
        """Unfinished workflows (a FAILED one retrying its revert not counted) of these kinds on
        this host (None: any)."""
        ended = self._terminal() + [FAILED]

        def count(s: Session) -> int:
            stmt = select(func.count()).select_from(Workflow).where(Workflow.state.not_in(ended))
            if kinds is not None:
                stmt = stmt.where(Workflow.kind.in_(list(kinds)))
            if host is not None:
                stmt = stmt.where(Workflow.host == host)
            return s.scalar(stmt) or 0
        return self._in(session, count)

    def unfinished(self, resource_id: str, *, session: Session | None = None, excluding: str | None = None,
                   failed: bool = True) -> str | None:
        """An unfinished workflow of the resource (FAILED ones included unless ``failed=False``)."""
        ended = self._terminal() + ([] if failed else [FAILED])

        def find(s: Session) -> str | None:
            stmt = select(Workflow.id).where(Workflow.resource_id == resource_id, Workflow.state.not_in(ended))
            if excluding is not None:
                stmt = stmt.where(Workflow.id != excluding)
            return s.scalar(stmt.limit(1))
        return self._in(session, find)

    def last_change_at(self, resource_id: str, *, session: Session | None = None) -> dt.datetime | None:
        """When a workflow of the resource last changed (its end, for a finished one)."""
        return self._in(session, lambda s: s.scalar(select(func.max(Workflow.updated_at))
                                                    .where(Workflow.resource_id == resource_id)))

    def finished(self, workflow_ids: Iterable[str], *, session: Session | None = None) -> dict[str, str]:
        """Of these workflows, those that ended: id -> resource id."""
        ids, ended = list(workflow_ids), self._terminal()
        if not ids:
            return {}
        return self._in(session, lambda s: {r[0]: r[1] for r in s.execute(
            select(Workflow.id, Workflow.resource_id).where(Workflow.id.in_(ids), Workflow.state.in_(ended)))})

    def unclaimed(self, *, session: Session | None = None) -> list[tuple[str, str, str | None]]:
        """Unfinished workflows no fresh lease holds: (id, kind, host) — what must be posted."""
        ended = self._terminal()

        def find(s: Session) -> list[tuple[str, str, str | None]]:
            from freezeframe.db.clock import db_now
            cutoff = db_now(s) - dt.timedelta(seconds=self.lease_ttl)
            rows = s.execute(select(Workflow.id, Workflow.kind, Workflow.host).where(
                Workflow.state.not_in(ended),
                or_(Workflow.owner.is_(None), Workflow.heartbeat_at.is_(None), Workflow.heartbeat_at < cutoff)))
            return [(r[0], r[1], r[2]) for r in rows]
        return self._in(session, find)

    def owner_alive(self, workflow_id: str) -> bool:
        """For the image reaper: is the workflow unfinished and either waiting for a conductor or
        run by one that is alive?"""
        def find(s: Session):
            return s.execute(select(Workflow.state, Workflow.owner).where(Workflow.id == workflow_id)).one_or_none()
        row = self.db.run_sync(find)
        if row is None or row.state in self._terminal():
            return False
        if row.owner is None or self._owner_alive is None:
            return True
        return self._owner_alive(row.owner)
