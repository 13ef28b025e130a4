"""conductor/lease.py: one owner at a time, and a stale owner's writes commit nothing
(SQLite and PostgreSQL)."""

import datetime as dt
import time

import pytest
from sqlalchemy import update

from freezeframe.conductor.lease import Fenced, Leases
from freezeframe.conductor.model import Workflow
from freezeframe.conductor.runtime import Interrupted
from freezeframe.conductor.states import TERMINAL, transition

TTL = 5.0


def terminal():
    return frozenset(s.value for s in TERMINAL)


@pytest.fixture
def workflow(db):
    db.run_sync(lambda s: s.add(Workflow(id="wf-1", kind="snapshot", state="UPLOAD_BEGIN", resource_id="srv-1",
                                         params="{}", host="host-a")))
    return "wf-1"


def expire(db, workflow_id):
    """The owner stopped renewing its lease long ago (frozen, cut off, dead)."""
    db.run_sync(lambda s: s.execute(update(Workflow).where(Workflow.id == workflow_id)
                                    .values(heartbeat_at=dt.datetime(2000, 1, 1))))


def row(db, workflow_id):
    return db.run_sync(lambda s: s.get(Workflow, workflow_id))


def test_one_owner_at_a_time_and_the_stale_one_commits_nothing(db, workflow):
    a, b = Leases(db, "conductor-a", TTL, terminal), Leases(db, "conductor-b", TTL, terminal)
    claim_a, why = a.acquire(workflow)
    assert why == "taken" and claim_a.fence == 1 and claim_a.previous_owner is None
    assert row(db, workflow).owner == "conductor-a" and row(db, workflow).heartbeat_at is not None
    assert b.acquire(workflow) == (None, "held")                  # a's lease is fresh
    assert a.heartbeat(claim_a) is True

    expire(db, workflow)                                           # a froze past its lease
    claim_b, why = b.acquire(workflow)
    assert why == "taken" and claim_b.fence == 2 and claim_b.previous_owner == "conductor-a"

    # a wakes up: its step's write raises and commits nothing, whatever it wrote first
    def step(session):
        transition(session, workflow, "UPLOAD_BEGIN", "UPLOAD_10_COMPLETE", progress=10, detail="stale")
    with pytest.raises(Fenced, match="superseded by 2"):
        a.write(workflow, step)
    wf = row(db, workflow)
    assert (wf.state, wf.owner, wf.fence, wf.progress) == ("UPLOAD_BEGIN", "conductor-b", 2, 0)
    with pytest.raises(Fenced):                   # and every interruption point says so from now on
        claim_a.check()
    assert a.heartbeat(claim_a) is False and a.release(claim_a) is False
    assert row(db, workflow).owner == "conductor-b"

    # the new owner writes
    b.write(workflow, lambda s: transition(s, workflow, "UPLOAD_BEGIN", "UPLOAD_10_COMPLETE", progress=10))
    assert row(db, workflow).state == "UPLOAD_10_COMPLETE"


def test_fenced_is_a_pause_not_a_failure():
    """taskflow reverts on Exception only: Fenced leaves the step RUNNING for the new owner."""
    assert issubclass(Fenced, Interrupted) and not issubclass(Fenced, Exception)


def test_a_restarted_conductor_takes_its_own_back_at_once(db, workflow):
    first = Leases(db, "conductor-a", TTL, terminal)
    claim, _ = first.acquire(workflow)
    again = Leases(db, "conductor-a", TTL, terminal)          # the same id, a new process
    claim2, why = again.acquire(workflow)
    assert why == "taken" and claim2.fence == claim.fence + 1 and claim2.previous_owner == "conductor-a"
    with pytest.raises(Fenced):                               # the old process (if any) is fenced
        first.write(workflow, lambda s: None)


def test_released_work_is_taken_at_once_and_ended_work_never(db, workflow):
    a, b = Leases(db, "conductor-a", TTL, terminal), Leases(db, "conductor-b", TTL, terminal)
    claim, _ = a.acquire(workflow)
    assert a.release(claim) is True and a.held() == []
    wf = row(db, workflow)
    assert wf.owner is None and wf.heartbeat_at is None
    claim_b, why = b.acquire(workflow)
    assert why == "taken"
    b.write(workflow, lambda s: s.execute(update(Workflow).where(Workflow.id == workflow).values(state="IMAGE_ACTIVE")))
    expire(db, workflow)
    assert a.acquire(workflow) == (None, "finished")
    assert a.acquire("no-such-workflow") == (None, "finished")


def test_a_lease_not_renewed_in_time_stops_its_holder_first(db, workflow):
    """The holder stops by itself once its last renewal is a TTL old — before anyone else may
    take the workflow (the database lets another take it only after the same TTL)."""
    leases = Leases(db, "conductor-a", 0.5, terminal)
    claim, _ = leases.acquire(workflow)
    with leases.bound(claim):
        leases.check_current()
        time.sleep(0.6)
        with pytest.raises(Fenced, match="not renewed"):
            leases.check_current()
    with pytest.raises(Fenced):
        leases.write(workflow, lambda s: None)
    with pytest.raises(Fenced, match="holds no claim"):
        Leases(db, "conductor-b", TTL, terminal).write(workflow, lambda s: None)
