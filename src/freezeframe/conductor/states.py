"""The snapshot workflow state machine (seed 000): one table, one transition function.

Happy path: PENDING -> LOCAL_SNAPSHOT_STARTED -> LOCAL_SNAPSHOT_COMPLETE -> UPLOAD_BEGIN ->
UPLOAD_<n>_COMPLETE (n = percent, rising) -> UPLOAD_COMPLETE -> IMAGE_ACTIVE.
Error path: any running state -> FAILED (reason + last good state kept) -> REVERTED once the
revert has cleaned up; a cancel ends in CANCELLED. FAILED stays while the revert itself could
not finish: FAILED -> FAILED records why (``failure_reason`` says "revert incomplete") and the
conductor retries every revert step until they all succeed — never reported as done before.
A stop (SIGTERM/SIGINT) is no transition at all: the flow pauses in its state and resumes.
"""

from __future__ import annotations

import collections
import enum
import logging
import re
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from freezeframe.common import errors
from freezeframe.common.timeutil import utcnow

LOG = logging.getLogger(__name__)


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


W = WorkflowState
_RUNNING = (W.PENDING, W.LOCAL_SNAPSHOT_STARTED, W.LOCAL_SNAPSHOT_COMPLETE, W.UPLOAD_BEGIN,
            W.UPLOAD_N_COMPLETE, W.UPLOAD_COMPLETE)
TERMINAL = frozenset({W.IMAGE_ACTIVE, W.REVERTED, W.CANCELLED})

TRANSITIONS: frozenset[tuple[WorkflowState, WorkflowState]] = frozenset({
    (W.PENDING, W.LOCAL_SNAPSHOT_STARTED),                   # the conductor took the job
    (W.LOCAL_SNAPSHOT_STARTED, W.LOCAL_SNAPSHOT_COMPLETE),   # point-in-time copy made
    (W.LOCAL_SNAPSHOT_COMPLETE, W.UPLOAD_BEGIN),
    (W.UPLOAD_BEGIN, W.UPLOAD_N_COMPLETE),
    (W.UPLOAD_N_COMPLETE, W.UPLOAD_N_COMPLETE),              # only with a higher percent
    (W.UPLOAD_BEGIN, W.UPLOAD_COMPLETE),                     # tiny images jump straight
    (W.UPLOAD_N_COMPLETE, W.UPLOAD_COMPLETE),
    (W.UPLOAD_COMPLETE, W.IMAGE_ACTIVE),
    # a resumed flow repeats the step that was running when its conductor died
    (W.LOCAL_SNAPSHOT_STARTED, W.LOCAL_SNAPSHOT_STARTED),
    (W.UPLOAD_BEGIN, W.UPLOAD_BEGIN),
    *((s, W.FAILED) for s in _RUNNING),                      # something went wrong
    *((s, W.CANCELLED) for s in _RUNNING),                   # cancelled and reverted
    (W.FAILED, W.FAILED),                                    # a revert step failed: recorded, retried later
    (W.FAILED, W.REVERTED),                                  # revert finished cleaning up
    (W.FAILED, W.CANCELLED),                                 # a cancel raced with a failure
})

COUNTS: collections.Counter[str] = collections.Counter()
_UPLOAD_N = re.compile(r"^UPLOAD_(\d{1,3})_COMPLETE$")


def parse(state: str) -> tuple[WorkflowState, int | None]:
    """``UPLOAD_40_COMPLETE`` -> (UPLOAD_N_COMPLETE, 40); others -> (state, None)."""
    match = _UPLOAD_N.match(state)
    if match:
        return W.UPLOAD_N_COMPLETE, int(match.group(1))
    return WorkflowState(state), None


def upload_state(percent: int) -> str:
    return f"UPLOAD_{percent}_COMPLETE"


def check(frm: str, to: str) -> None:
    (f, fn), (t, tn) = parse(frm), parse(to)
    if (f, t) not in TRANSITIONS:
        raise errors.InvalidState(f"Workflow state transition from {frm} to {to} is not allowed")
    if f == t == W.UPLOAD_N_COMPLETE and not (tn is not None and fn is not None and tn > fn):
        raise errors.InvalidState(f"Upload progress cannot go from {frm} to {to}")
    if t == W.UPLOAD_N_COMPLETE and not 0 < tn < 100:
        raise errors.InvalidState(f"Upload percent must be between 1 and 99, not {tn}")


def transition(session: Session, workflow_id: str, frm: str, to: str, *, progress: int | None = None,
               detail: str = "", values: dict[str, Any] | None = None) -> None:
    """Persist ``frm -> to`` (compare-and-set on the row), record the event, log and count it."""
    from freezeframe.conductor.model import Workflow, WorkflowEvent

    check(frm, to)
    now = utcnow()
    changes: dict[str, Any] = {"state": to, "last_state_change_at": now, "updated_at": now, **(values or {})}
    if progress is not None:
        changes["progress"] = progress
    if to in (W.FAILED,) and frm != W.FAILED:
        changes.setdefault("last_good_state", frm)
    result = session.execute(update(Workflow).where(Workflow.id == workflow_id, Workflow.state == frm)
                             .values(**changes).execution_options(synchronize_session=False))
    if result.rowcount != 1:
        current = session.get(Workflow, workflow_id, populate_existing=True)
        if current is None:
            raise errors.NotFound(f"No workflow {workflow_id}")
        raise errors.InvalidState(f"Workflow {workflow_id} is {current.state}, not {frm}")
    session.add(WorkflowEvent(workflow_id=workflow_id, state=to, progress=changes.get("progress"),
                              at=now, detail=detail[:2000]))
    COUNTS[f"{parse(frm)[0]}->{parse(to)[0]}"] += 1
    LOG.info("workflow %s: %s -> %s%s", workflow_id, frm, to, f" ({detail})" if detail else "")
