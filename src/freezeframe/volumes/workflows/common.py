"""What every volume workflow's steps share: the workflow they run (its resource, params and
user), the volume manager, interruption and cancel points, the workflow's state moves and
the failure record the first revert writes.

A volume workflow makes no image: it walks PENDING -> RUNNING (each step says what it does in
its detail) [-> WAITING -> RUNNING, compute's report awaited with a deadline] -> COMPLETE, or
FAILED -> REVERTED / CANCELLED (``conductor/states.py``). Its resource's own status (the volume's,
the snapshot's) moves in the same fenced transaction as the workflow's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from freezeframe.common import errors
from freezeframe.common.context import Actor
from freezeframe.conductor import runtime
from freezeframe.conductor.model import Workflow
from freezeframe.conductor.states import WorkflowState as W, parse, transition

SERVICE = "volume"


class Cancelled(Exception):
    """The user cancelled the workflow (DELETE /v1/workflows/{id})."""


class StepFailed(errors.FreezeframeError):
    """A step of a volume workflow cannot go on; its message is the reason recorded on the
    workflow and as the volume's (or snapshot's) fault."""


@dataclass(frozen=True)
class Job:
    """The workflow a step runs, as it was submitted."""
    id: str
    kind: str
    resource_id: str
    params: dict[str, Any]
    actor: Actor

    @property
    def server_id(self) -> str | None:
        return self.params.get("server_id")


def manager():
    """The volume service's manager (``volumes/manager.py``), in process."""
    return runtime.current().service(SERVICE)


def load(workflow_id: str) -> Job:
    wf = runtime.current().db.run_sync(lambda s: s.get(Workflow, workflow_id))
    if wf is None:
        raise StepFailed(f"workflow {workflow_id} is gone")
    params = json.loads(wf.params or "{}")
    recorded = params.get("actor")
    actor = (Actor.from_json(recorded) if recorded else
             Actor(wf.user_id or "unknown", wf.project_id, frozenset({"member", "reader"})))
    return Job(wf.id, wf.kind, wf.resource_id, params, actor)


def checkpoint(workflow_id: str) -> None:
    """An interruption point (a stopping conductor pauses the flow here, nothing reverted) and
    a cancel point (a cancelled workflow fails here and reverts)."""
    rt = runtime.current()
    rt.check_stop()
    if rt.db.run_sync(lambda s: s.get(Workflow, workflow_id).cancel_requested):
        raise Cancelled(f"workflow {workflow_id} was cancelled")


def state(session: Session, workflow_id: str) -> str:
    return session.get(Workflow, workflow_id).state


def move(session: Session, workflow_id: str, to: str, detail: str = "", *, progress: int | None = None) -> None:
    """The workflow to ``to`` with ``detail`` in its history. RUNNING -> RUNNING and WAITING ->
    WAITING are moves of their own (a new step, new news from compute); the same state with
    nothing new to say is no move. WAITING -> COMPLETE goes through RUNNING (the table's way)."""
    current = state(session, workflow_id)
    if current == to and not detail:
        return
    if current == W.WAITING and to == W.COMPLETE:
        transition(session, workflow_id, current, W.RUNNING, detail="compute done")
        current = W.RUNNING
    transition(session, workflow_id, current, to, detail=detail, progress=progress)


def record_failure(workflow_id: str, kwargs: dict[str, Any]) -> str:
    """The first revert to run marks the workflow FAILED with the reason; every revert gets the
    reason back (a revert retried later by the conductor finds it on the workflow)."""
    failures = kwargs.get("flow_failures") or {}
    reason = "; ".join(f.exception_str for f in failures.values() if f is not None) or "the workflow failed"

    def fail(session: Session) -> str:
        wf = session.get(Workflow, workflow_id)
        if parse(wf.state)[0] not in (W.FAILED, W.REVERTED, W.CANCELLED):
            cancelled = any(f is not None and f.check(Cancelled) for f in failures.values())
            recorded = "cancelled by the user" if cancelled else reason[:2000]
            transition(session, workflow_id, wf.state, W.FAILED, detail=reason, values={"failure_reason": recorded})
            return recorded
        from freezeframe.conductor.engine import without_incomplete_revert
        return without_incomplete_revert(wf.failure_reason) or reason
    return runtime.current().fenced(workflow_id, fail)


def failed_with(kwargs: dict[str, Any], *types: type[BaseException]) -> bool:
    """Did the flow fail with one of these exceptions?"""
    failures = kwargs.get("flow_failures") or {}
    return any(f is not None and f.check(*types) for f in failures.values())
