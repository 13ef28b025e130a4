"""The snapshot workflow state machine (seed 000): one table, one transition function.

Happy path: PENDING -> LOCAL_SNAPSHOT_STARTED -> LOCAL_SNAPSHOT_COMPLETE -> UPLOAD_BEGIN ->
UPLOAD_<n>_COMPLETE (n = percent, rising) -> UPLOAD_COMPLETE -> IMAGE_ACTIVE.
Error path: any running state -> FAILED (reason + last good state kept) -> REVERTED once the
revert has cleaned up; a cancel ends in CANCELLED. FAILED stays while the revert itself could
not finish: FAILED -> FAILED records why (``failure_reason`` says "revert incomplete") and the
conductor retries every revert step until they all succeed — never reported as done before.
A stop (SIGTERM/SIGINT) is no transition at all: the flow pauses in its state and resumes.

Workflows that make no image (the volume service's: create a volume, create or delete a volume
snapshot) walk PENDING -> RUNNING (each step, its detail naming it) [-> WAITING -> RUNNING: waiting
for another service's report, with a deadline] -> COMPLETE, and fail and revert as above.

Declared on the one mechanism (``freezeframe.common.statemachine``); every move is also a row
of ``workflow_events`` (the history ``GET /v1/workflows/{id}`` shows).
"""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy.orm import Session

from freezeframe.common.statemachine import Machine, Move, Numbered
from freezeframe.conductor.model import Workflow, WorkflowEvent


class WorkflowState(enum.StrEnum):
    PENDING = "PENDING"
    LOCAL_SNAPSHOT_STARTED = "LOCAL_SNAPSHOT_STARTED"
    LOCAL_SNAPSHOT_COMPLETE = "LOCAL_SNAPSHOT_COMPLETE"
    UPLOAD_BEGIN = "UPLOAD_BEGIN"
    UPLOAD_N_COMPLETE = "UPLOAD_<n>_COMPLETE"   # stored as UPLOAD_10_COMPLETE, UPLOAD_20_COMPLETE, ...
    UPLOAD_COMPLETE = "UPLOAD_COMPLETE"
    IMAGE_ACTIVE = "IMAGE_ACTIVE"
    FAILED = "FAILED"
    REVERTED = "REVERTED"
    CANCELLED = "CANCELLED"
    # Workflows that make no image (volumes: create, snapshot create/delete) walk these; what
    # they do is in each step's detail and on their resource's own status.
    RUNNING = "RUNNING"
    WAITING = "WAITING"                         # for another service's report, with a deadline
    COMPLETE = "COMPLETE"


W = WorkflowState
_RUNNING = (W.PENDING, W.LOCAL_SNAPSHOT_STARTED, W.LOCAL_SNAPSHOT_COMPLETE, W.UPLOAD_BEGIN,
            W.UPLOAD_N_COMPLETE, W.UPLOAD_COMPLETE, W.RUNNING, W.WAITING)
TERMINAL = frozenset({W.IMAGE_ACTIVE, W.COMPLETE, W.REVERTED, W.CANCELLED})

TRANSITIONS: frozenset[tuple[WorkflowState, WorkflowState]] = frozenset({
    (W.PENDING, W.LOCAL_SNAPSHOT_STARTED),                   # the conductor took the job
    (W.LOCAL_SNAPSHOT_STARTED, W.LOCAL_SNAPSHOT_COMPLETE),   # point-in-time copy made
    (W.LOCAL_SNAPSHOT_COMPLETE, W.UPLOAD_BEGIN),
    (W.UPLOAD_BEGIN, W.UPLOAD_N_COMPLETE),
    (W.UPLOAD_N_COMPLETE, W.UPLOAD_N_COMPLETE),              # only with a higher percent
    (W.UPLOAD_BEGIN, W.UPLOAD_COMPLETE),                     # tiny images jump straight
    (W.UPLOAD_N_COMPLETE, W.UPLOAD_COMPLETE),
    (W.UPLOAD_COMPLETE, W.IMAGE_ACTIVE),
    # workflows that make no image: steps run, may wait for a report, and complete
    (W.PENDING, W.RUNNING), (W.RUNNING, W.RUNNING), (W.RUNNING, W.WAITING), (W.WAITING, W.WAITING),
    (W.WAITING, W.RUNNING), (W.RUNNING, W.COMPLETE), (W.PENDING, W.COMPLETE),
    # a resumed flow repeats the step that was running when its conductor died
    (W.LOCAL_SNAPSHOT_STARTED, W.LOCAL_SNAPSHOT_STARTED),
    (W.UPLOAD_BEGIN, W.UPLOAD_BEGIN),
    *((s, W.FAILED) for s in _RUNNING),                      # something went wrong
    *((s, W.CANCELLED) for s in _RUNNING),                   # cancelled and reverted
    (W.FAILED, W.FAILED),                                    # a revert step failed: recorded, retried later
    (W.FAILED, W.REVERTED),                                  # revert finished cleaning up
    (W.FAILED, W.CANCELLED),                                 # a cancel raced with a failure
})


def _history(session: Session, move: Move) -> None:
    session.add(WorkflowEvent(workflow_id=move.row_id, state=move.to, progress=move.values.get("progress"),
                              at=move.at, detail=move.reason[:2000]))


UPLOAD_N = Numbered(W.UPLOAD_N_COMPLETE, lowest=1, highest=99, rising=True)   # n = percent, only rising
WORKFLOW: Machine[WorkflowState] = Machine(
    "workflow", WorkflowState, TRANSITIONS, table=Workflow.__table__, column="state",
    changed_at="last_state_change_at", terminal=TERMINAL, numbered=[UPLOAD_N], history=_history,
    label="Workflow state", noun="Workflow", not_found="No workflow {id}")
COUNTS = WORKFLOW.counts


def parse(state: str) -> tuple[WorkflowState, int | None]:
    """``UPLOAD_40_COMPLETE`` -> (UPLOAD_N_COMPLETE, 40); others -> (state, None); ValueError
    for a state that is none of these."""
    return WORKFLOW.parse(state)  # type: ignore[return-value]


def upload_state(percent: int) -> str:
    return UPLOAD_N.format(percent)


def check(frm: str, to: str) -> None:
    WORKFLOW.check(frm, to)


def transition(session: Session, workflow_id: str, frm: str, to: str, *, progress: int | None = None,
               detail: str = "", values: dict[str, Any] | None = None) -> None:
    """Persist ``frm -> to`` (compare-and-set on the row), record the event, log and count it.
    Entering FAILED keeps the state it failed from as ``last_good_state``."""
    changes: dict[str, Any] = dict(values or {})
    if progress is not None:
        changes["progress"] = progress
    if to == W.FAILED and frm != W.FAILED:
        changes.setdefault("last_good_state", frm)
    WORKFLOW.transition(session, workflow_id, frm, to, reason=detail, values=changes)
