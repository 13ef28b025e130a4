"""conductor/states.py: seed 000's snapshot workflow states on the one mechanism — the table,
UPLOAD_<n>_COMPLETE, history rows, progress, last state change, last good state and failure
reason (SQLite and PostgreSQL)."""

import pytest
from sqlalchemy import select

from freezeframe.common import errors
from freezeframe.common.statemachine import LostRace
from freezeframe.conductor.model import Workflow, WorkflowEvent
from freezeframe.conductor.states import (COUNTS, TERMINAL, TRANSITIONS, WORKFLOW, WorkflowState, check, parse,
                                          transition, upload_state)

W = WorkflowState
# Seed 000 §2: "[LOCAL_SNAPSHOT_STARTED, LOCAL_SNAPSHOT_COMPLETE, UPLOAD_BEGIN, UPLOAD_%s_COMPLETE,
# UPLOAD_COMPLETE, IMAGE_ACTIVE] for the snapshot happy path"; DESIGN.md adds the start (PENDING)
# and the error path (FAILED with the reason and last good state, REVERTED, CANCELLED).
SEED_HAPPY_PATH = ["LOCAL_SNAPSHOT_STARTED", "LOCAL_SNAPSHOT_COMPLETE", "UPLOAD_BEGIN", "UPLOAD_%s_COMPLETE",
                   "UPLOAD_COMPLETE", "IMAGE_ACTIVE"]
ERROR_PATH = ["FAILED", "REVERTED", "CANCELLED"]
RUNNING = ["PENDING", "LOCAL_SNAPSHOT_STARTED", "LOCAL_SNAPSHOT_COMPLETE", "UPLOAD_BEGIN", "UPLOAD_<n>_COMPLETE",
           "UPLOAD_COMPLETE", "RUNNING", "WAITING"]
# Workflows that make no image (the volume service's) run steps, may wait for a report, complete.
NO_IMAGE = ["RUNNING", "WAITING", "COMPLETE"]


def test_states_are_the_seeds_words():
    words = ["PENDING", *(w.replace("%s", "<n>") for w in SEED_HAPPY_PATH), *ERROR_PATH, *NO_IMAGE]
    assert [str(s) for s in WorkflowState] == words
    assert {str(s) for s in TERMINAL} == {"IMAGE_ACTIVE", "COMPLETE", "REVERTED", "CANCELLED"}


def test_the_table():
    happy = ["PENDING", *(w.replace("%s", "<n>") for w in SEED_HAPPY_PATH)]
    expected = set(zip(happy, happy[1:]))                       # the happy path, step by step
    expected |= {("UPLOAD_<n>_COMPLETE", "UPLOAD_<n>_COMPLETE"),  # progress, rising
                 ("UPLOAD_BEGIN", "UPLOAD_COMPLETE"),             # a tiny image: no 10 % step
                 ("LOCAL_SNAPSHOT_STARTED", "LOCAL_SNAPSHOT_STARTED"), ("UPLOAD_BEGIN", "UPLOAD_BEGIN")}  # resumed
    expected |= {(s, "FAILED") for s in RUNNING} | {(s, "CANCELLED") for s in RUNNING}
    expected |= {("FAILED", "FAILED"), ("FAILED", "REVERTED"), ("FAILED", "CANCELLED")}
    expected |= {("PENDING", "RUNNING"), ("RUNNING", "RUNNING"), ("RUNNING", "WAITING"), ("WAITING", "WAITING"),
                 ("WAITING", "RUNNING"), ("RUNNING", "COMPLETE"), ("PENDING", "COMPLETE")}
    assert {(str(f), str(t)) for f, t in TRANSITIONS} == expected
    assert WORKFLOW.transitions == TRANSITIONS
    assert not any(f in TERMINAL for f, _ in TRANSITIONS)


def test_upload_percent_is_a_numbered_state_that_only_rises():
    assert upload_state(40) == "UPLOAD_40_COMPLETE"
    assert parse("UPLOAD_40_COMPLETE") == (W.UPLOAD_N_COMPLETE, 40)
    assert parse("FAILED") == (W.FAILED, None)
    with pytest.raises(ValueError):
        parse("UPLOADING")
    check("UPLOAD_BEGIN", "UPLOAD_10_COMPLETE")
    check("UPLOAD_10_COMPLETE", "UPLOAD_90_COMPLETE")
    check("UPLOAD_90_COMPLETE", "UPLOAD_COMPLETE")
    for frm, to in (("UPLOAD_40_COMPLETE", "UPLOAD_40_COMPLETE"), ("UPLOAD_40_COMPLETE", "UPLOAD_30_COMPLETE"),
                    ("UPLOAD_BEGIN", "UPLOAD_100_COMPLETE"), ("UPLOAD_BEGIN", "UPLOAD_0_COMPLETE"),
                    ("UPLOAD_BEGIN", "UPLOAD_<n>_COMPLETE"), ("PENDING", "UPLOAD_10_COMPLETE")):
        with pytest.raises(errors.InvalidState):
            check(frm, to)


def test_invalid_moves_are_clear():
    with pytest.raises(errors.InvalidState, match=r"Workflow state transition from IMAGE_ACTIVE to FAILED is not "
                                                  r"allowed \(IMAGE_ACTIVE is final\)"):
        check("IMAGE_ACTIVE", "FAILED")
    with pytest.raises(errors.InvalidState, match=r"from PENDING only to CANCELLED, COMPLETE, FAILED, LOCAL_SNAPSHOT_STARTED, RUNNING"):
        check("PENDING", "UPLOAD_BEGIN")


def add(db, workflow_id, state="PENDING"):
    db.run_sync(lambda s: s.add(Workflow(id=workflow_id, kind="snapshot", state=state, resource_id="server",
                                         project_id="p", params="{}")))


def get(db, workflow_id):
    return db.run_sync(lambda s: s.get(Workflow, workflow_id))


def history(db, workflow_id):
    return db.run_sync(lambda s: [(e.state, e.progress, e.detail, e.at) for e in s.scalars(
        select(WorkflowEvent).where(WorkflowEvent.workflow_id == workflow_id).order_by(WorkflowEvent.id))])


def test_the_happy_path_writes_state_progress_last_change_and_history(db):
    add(db, "wf")
    counted = dict(COUNTS)
    steps = [("LOCAL_SNAPSHOT_STARTED", 0, ""), ("LOCAL_SNAPSHOT_COMPLETE", 0, "crash-consistent"),
             ("UPLOAD_BEGIN", 0, ""), ("UPLOAD_10_COMPLETE", 10, "1 of 10 bytes sent"),
             ("UPLOAD_50_COMPLETE", 50, "5 of 10 bytes sent"), ("UPLOAD_COMPLETE", 100, ""), ("IMAGE_ACTIVE", 100, "")]
    frm = "PENDING"
    for to, progress, detail in steps:
        db.run_sync(lambda s: transition(s, "wf", frm, to, progress=progress, detail=detail))
        wf = get(db, "wf")
        assert (wf.state, wf.progress) == (to, progress)
        assert wf.last_state_change_at == wf.updated_at
        frm = to
    events = history(db, "wf")
    assert [(state, progress, detail) for state, progress, detail, _ in events] == steps
    assert [at for *_, at in events] == sorted(at for *_, at in events)
    assert get(db, "wf").last_state_change_at == events[-1][3]
    assert get(db, "wf").last_good_state is None
    grew = {k: v - counted.get(k, 0) for k, v in COUNTS.items() if v != counted.get(k, 0)}
    assert grew == {"PENDING->LOCAL_SNAPSHOT_STARTED": 1, "LOCAL_SNAPSHOT_STARTED->LOCAL_SNAPSHOT_COMPLETE": 1,
                    "LOCAL_SNAPSHOT_COMPLETE->UPLOAD_BEGIN": 1, "UPLOAD_BEGIN->UPLOAD_<n>_COMPLETE": 1,
                    "UPLOAD_<n>_COMPLETE->UPLOAD_<n>_COMPLETE": 1, "UPLOAD_<n>_COMPLETE->UPLOAD_COMPLETE": 1,
                    "UPLOAD_COMPLETE->IMAGE_ACTIVE": 1}


def test_failure_keeps_reason_and_last_good_state_then_reverts(db):
    add(db, "wf", "UPLOAD_30_COMPLETE")
    db.run_sync(lambda s: transition(s, "wf", "UPLOAD_30_COMPLETE", W.FAILED, detail="disk full",
                                     values={"failure_reason": "disk full"}))
    wf = get(db, "wf")
    assert (wf.state, wf.last_good_state, wf.failure_reason, wf.progress) == ("FAILED", "UPLOAD_30_COMPLETE",
                                                                              "disk full", 0)
    # a revert step failed: FAILED -> FAILED keeps the last good state, records the new reason
    db.run_sync(lambda s: transition(s, "wf", W.FAILED, W.FAILED, detail="revert incomplete: x",
                                     values={"failure_reason": "disk full [revert incomplete]"}))
    wf = get(db, "wf")
    assert (wf.last_good_state, wf.failure_reason) == ("UPLOAD_30_COMPLETE", "disk full [revert incomplete]")
    db.run_sync(lambda s: transition(s, "wf", W.FAILED, W.REVERTED, detail="reverted: cleaned up",
                                     values={"failure_reason": "disk full"}))
    assert [e[:3] for e in history(db, "wf")] == [("FAILED", None, "disk full"),
                                                   ("FAILED", None, "revert incomplete: x"),
                                                   ("REVERTED", None, "reverted: cleaned up")]
    with pytest.raises(errors.InvalidState, match="REVERTED is final"):
        db.run_sync(lambda s: transition(s, "wf", W.REVERTED, W.FAILED))


def test_a_cancel_ends_in_cancelled(db):
    add(db, "wf", "LOCAL_SNAPSHOT_COMPLETE")
    db.run_sync(lambda s: transition(s, "wf", "LOCAL_SNAPSHOT_COMPLETE", W.CANCELLED, detail="cancelled"))
    assert get(db, "wf").state == "CANCELLED"


def test_a_lost_race_writes_no_history(db):
    add(db, "wf")
    db.run_sync(lambda s: transition(s, "wf", "PENDING", "LOCAL_SNAPSHOT_STARTED"))
    with pytest.raises(LostRace, match="Workflow wf is LOCAL_SNAPSHOT_STARTED now, not PENDING"):
        db.run_sync(lambda s: transition(s, "wf", "PENDING", "LOCAL_SNAPSHOT_STARTED"))
    assert len(history(db, "wf")) == 1
    with pytest.raises(errors.NotFound, match="No workflow gone"):
        db.run_sync(lambda s: transition(s, "gone", "PENDING", "LOCAL_SNAPSHOT_STARTED"))
