"""common/statemachine.py: the one mechanism every machine is declared on — the table checks,
the compare-and-set, history, timestamps, counters and log lines (SQLite and PostgreSQL)."""

import datetime as dt
import enum
import importlib
import logging
import re
import threading
from pathlib import Path

import pytest
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, insert, select

from freezeframe.common import errors, statemachine
from freezeframe.common.statemachine import LostRace, Machine, Numbered

DOCS = Path(__file__).resolve().parents[3] / "docs" / "state-machines.md"


class Door(enum.StrEnum):
    OPEN = "open"
    CLOSED = "closed"
    LOCKED = "locked"
    STEP_N = "STEP_<n>"
    GONE = "gone"


D = Door
META = MetaData()
DOORS = Table("sm_doors", META, Column("id", String(36), primary_key=True), Column("state", String(40)),
              Column("owner", String(40)), Column("note", String(200)), Column("changed_at", DateTime),
              Column("updated_at", DateTime))
EVENTS = Table("sm_door_events", META, Column("id", Integer, primary_key=True, autoincrement=True),
               Column("door_id", String(36)), Column("state", String(40)), Column("at", DateTime),
               Column("detail", String(200)))
MOVES = {
    (None, D.CLOSED),               # a fresh door
    (D.CLOSED, D.OPEN), (D.OPEN, D.CLOSED), (D.CLOSED, D.LOCKED), (D.LOCKED, D.CLOSED),
    (D.OPEN, D.STEP_N), (D.STEP_N, D.STEP_N), (D.STEP_N, D.CLOSED),
    (D.CLOSED, D.GONE), (D.LOCKED, D.GONE),
}


def history(session, move):
    session.execute(insert(EVENTS).values(door_id=move.row_id, state=move.to, at=move.at, detail=move.reason))


def machine(**kw):
    kw = {"table": DOORS, "column": "state", "changed_at": "changed_at", "terminal": {D.GONE},
          "numbered": [Numbered(D.STEP_N, lowest=1, highest=9)], "history": history, "label": "Door state",
          "noun": "Door", "register": False, **kw}
    return Machine("door", Door, MOVES, **kw)


@pytest.fixture
def doors(db):
    META.create_all(db.engine)
    return db


def add(db, door_id, state):
    db.run_sync(lambda s: s.execute(insert(DOORS).values(id=door_id, state=state)))


def row(db, door_id):
    return db.run_sync(lambda s: s.execute(select(DOORS).where(DOORS.c.id == door_id)).one())


def events(db, door_id):
    return db.run_sync(lambda s: [tuple(r) for r in s.execute(
        select(EVENTS.c.state, EVENTS.c.detail).where(EVENTS.c.door_id == door_id).order_by(EVENTS.c.id))])


# -- the declared table --------------------------------------------------------------------

def test_a_table_is_checked_when_it_is_declared():
    with pytest.raises(ValueError, match="terminal state open has moves out of it"):
        machine(terminal={D.OPEN})
    with pytest.raises(ValueError, match="no column status"):
        machine(column="status")
    with pytest.raises(TypeError, match="not a Door"):
        Machine("door", Door, {("closed", "open")}, table=DOORS, column="state", register=False)
    with pytest.raises(ValueError, match="no <n>"):
        Numbered(D.OPEN)


def test_an_invalid_move_names_the_machine_both_states_and_the_allowed_moves():
    m = machine()
    with pytest.raises(errors.InvalidState) as err:
        m.check("open", "locked")
    assert str(err.value) == "Door state transition from open to locked is not allowed (from open only to STEP_<n>, closed)"
    assert err.value.details == {"machine": "door", "frm": "open", "to": "locked", "allowed": ["STEP_<n>", "closed"]}
    assert isinstance(err.value, errors.Conflict)           # a 409 at the edge
    with pytest.raises(errors.InvalidState, match=r"\(gone is final\)"):
        m.check("gone", "closed")
    with pytest.raises(errors.InvalidState, match="unknown state"):
        m.check("closed", "ajar")
    with pytest.raises(errors.InvalidState, match="from None only to closed"):
        m.check(None, "open")
    assert m.targets(D.CLOSED) == ["gone", "locked", "open"]
    assert m.allowed("closed", "open") and not m.allowed("open", "gone")


def test_a_numbered_state_has_its_number_in_range_and_only_rises():
    m = machine()
    assert m.parse("STEP_3") == (D.STEP_N, 3) and m.parse("open") == (D.OPEN, None)
    assert m.state_name("STEP_7") == "STEP_<n>"
    with pytest.raises(ValueError):
        m.parse("STEP_x")
    m.check("open", "STEP_1")
    m.check("STEP_1", "STEP_9")
    for frm, to, why in (("open", "STEP_<n>", "needs its number"), ("open", D.STEP_N, "needs its number"),
                         ("open", "STEP_01", "needs its number"), ("open", "STEP_10", "1 to 9, not 10"),
                         ("open", "STEP_0", "1 to 9, not 0"), ("STEP_5", "STEP_5", "may only rise"),
                         ("STEP_5", "STEP_4", "may only rise")):
        with pytest.raises(errors.InvalidState, match=re.escape(why)):
            m.check(frm, to)


# -- the one transition function -----------------------------------------------------------

def test_a_move_is_persisted_with_its_timestamp_history_log_and_count(doors, caplog):
    m = machine()
    add(doors, "d1", "closed")
    before = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with caplog.at_level(logging.INFO, logger="freezeframe.common.statemachine"):
        at = doors.run_sync(lambda s: m.transition(s, "d1", D.CLOSED, D.OPEN, reason="pushed",
                                                   values={"note": "hi"}))
    got = row(doors, "d1")
    assert (got.state, got.note) == ("open", "hi")
    assert got.changed_at == got.updated_at == at and at >= before
    assert events(doors, "d1") == [("open", "pushed")]
    assert m.counts == {"closed->open": 1}
    assert "door d1: state closed -> open (pushed)" in caplog.text


def test_numbered_moves_are_counted_by_their_family(doors):
    m = machine()
    add(doors, "d2", "open")
    for frm, to in (("open", "STEP_2"), ("STEP_2", "STEP_5"), ("STEP_5", "closed")):
        doors.run_sync(lambda s: m.transition(s, "d2", frm, to))
    assert m.counts == {"open->STEP_<n>": 1, "STEP_<n>->STEP_<n>": 1, "STEP_<n>->closed": 1}
    assert [e[0] for e in events(doors, "d2")] == ["STEP_2", "STEP_5", "closed"]


def test_an_invalid_move_writes_nothing(doors):
    m = machine()
    add(doors, "d3", "open")
    with pytest.raises(errors.InvalidState):
        doors.run_sync(lambda s: m.transition(s, "d3", D.OPEN, D.LOCKED))
    assert row(doors, "d3").state == "open" and events(doors, "d3") == [] and not m.counts


def test_a_lost_race_is_a_conflict_and_names_what_the_row_is_now(doors):
    m = machine()
    add(doors, "d4", "closed")
    doors.run_sync(lambda s: m.transition(s, "d4", D.CLOSED, D.OPEN))
    with pytest.raises(LostRace) as err:
        doors.run_sync(lambda s: m.transition(s, "d4", D.CLOSED, D.LOCKED))
    assert isinstance(err.value, errors.InvalidState) and isinstance(err.value, errors.Conflict)
    assert "Door d4 is open now, not closed" in str(err.value)
    assert err.value.details["current"] == "open"
    assert row(doors, "d4").state == "open" and m.counts == {"closed->open": 1}


def test_an_extra_guard_takes_part_in_the_compare_and_set(doors):
    m = machine()
    doors.run_sync(lambda s: s.execute(insert(DOORS).values(id="d5", state="closed", owner="me")))
    with pytest.raises(LostRace, match="being changed by another request.*owner no longer matches"):
        doors.run_sync(lambda s: m.transition(s, "d5", D.CLOSED, D.OPEN, where={"owner": "you"}))
    with pytest.raises(LostRace):
        doors.run_sync(lambda s: m.transition(s, "d5", D.CLOSED, D.OPEN, where={"owner": None}))
    doors.run_sync(lambda s: m.transition(s, "d5", D.CLOSED, D.OPEN, where={"owner": "me"}))
    assert row(doors, "d5").state == "open"


def test_a_missing_row_is_not_found(doors):
    m = machine(not_found="No door {id}")
    with pytest.raises(errors.NotFound, match="No door nope"):
        doors.run_sync(lambda s: m.transition(s, "nope", D.CLOSED, D.OPEN))


def test_none_is_a_state_when_the_table_has_it(doors):
    m = machine()
    add(doors, "d6", None)
    assert m.parse(None) == (None, None)
    doors.run_sync(lambda s: m.transition(s, "d6", None, D.CLOSED))
    with pytest.raises(LostRace, match="is closed now, not None"):
        doors.run_sync(lambda s: m.transition(s, "d6", None, D.CLOSED))
    assert m.counts == {"None->closed": 1}


def test_a_rolled_back_move_is_neither_kept_nor_counted(doors, caplog):
    m = machine()
    add(doors, "d7", "closed")

    def move_then_fail(session):
        m.transition(session, "d7", D.CLOSED, D.OPEN, reason="doomed")
        m.transition(session, "d7", D.OPEN, D.CLOSED, reason="doomed too")
        raise RuntimeError("the rest of the transaction failed")
    with caplog.at_level(logging.INFO, logger="freezeframe.common.statemachine"), pytest.raises(RuntimeError):
        doors.run_sync(move_then_fail)
    assert row(doors, "d7").state == "closed" and events(doors, "d7") == []
    assert not m.counts and "doomed" not in caplog.text
    doors.run_sync(lambda s: m.transition(s, "d7", D.CLOSED, D.OPEN))
    assert m.counts == {"closed->open": 1}


def test_of_concurrent_writers_exactly_one_wins(doors):
    m = machine()
    add(doors, "d8", "closed")
    start, results = threading.Barrier(6), []

    def racer(i):
        start.wait()
        try:
            doors.run_sync(lambda s: m.transition(s, "d8", D.CLOSED, D.OPEN, reason=f"racer {i}"))
            results.append("won")
        except LostRace:
            results.append("lost")
    threads = [threading.Thread(target=racer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["lost"] * 5 + ["won"]
    assert len(events(doors, "d8")) == 1 and m.counts == {"closed->open": 1}


def test_declared_machines_are_registered_for_their_counters():
    for module in ("freezeframe.compute.states", "freezeframe.conductor.states", "freezeframe.images.states"):
        importlib.import_module(module)
    assert {"image", "workflow", "task_state", "vm_state"} <= set(statemachine.MACHINES)
    assert "door" not in statemachine.MACHINES      # register=False
    counts = statemachine.counts()
    assert counts["image"] is not statemachine.MACHINES["image"].counts     # a copy
    assert all(isinstance(v, dict) for v in counts.values())


# -- the documentation shows every table as it is ------------------------------------------

def documented(marker: str, aliases: dict[str, list]) -> set[tuple[str, str]]:
    """The (from, to) pairs of the table under ``<!-- table: marker -->`` in the docs; a cell
    lists states split by " / ", in backticks or not; ``aliases`` name groups of states."""
    text = DOCS.read_text()
    start = text.index(f"<!-- table: {marker} -->")
    lines = text[start:].splitlines()[1:]
    rows = [ln for ln in lines[:next(i for i, ln in enumerate(lines) if not ln.startswith("|"))]][2:]
    pairs = set()
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]

        def states(cell):
            out = []
            for word in cell.split(" / "):
                word = word.strip().strip("`")
                out += [str(s) for s in aliases[word]] if word in aliases else [word]
            return out
        pairs |= {(f, t) for f in states(cells[0]) for t in states(cells[1])}
    return pairs


def table_of(m):
    return {(str(f), str(t)) for f, t in m.transitions}


def test_the_docs_show_every_table():
    from freezeframe.compute.states import TASK_STATE, VM_STATE, TaskState, VmState
    from freezeframe.conductor.states import _RUNNING, WORKFLOW
    from freezeframe.images.states import IMAGE
    assert documented("image", {}) == table_of(IMAGE)
    assert documented("workflow", {"any running state": list(_RUNNING)}) == table_of(WORKFLOW)
    assert documented("task_state", {"any task": list(TaskState)}) == table_of(TASK_STATE)
    live = [v for v in VmState if v != VmState.DELETED]
    assert documented("vm_state", {"any but deleted": live}) == table_of(VM_STATE)


def test_the_docs_show_the_volume_tables():
    """The volume tables as documented, plus the admin-only moves the text describes (reset and
    force delete), are exactly the declared ones."""
    from freezeframe.volumes.states import (ATTACHMENT, COMPUTE, SNAPSHOT, SNAPSHOT_RESET_TO, VOLUME, VOLUME_RESET_TO,
                                            AttachStatus, SnapshotStatus, VolumeStatus)
    live_v = [v for v in VolumeStatus if v != VolumeStatus.DELETED]
    admin_v = {(str(f), str(t)) for f in live_v for t in VOLUME_RESET_TO if f != t}
    admin_v |= {(str(f), "deleting") for f in live_v if f not in (VolumeStatus.IN_USE, VolumeStatus.DELETING)}
    assert documented("volume", {}) | admin_v == table_of(VOLUME)
    live_s = [s for s in SnapshotStatus if s != SnapshotStatus.DELETED]
    admin_s = {(str(f), str(t)) for f in live_s for t in SNAPSHOT_RESET_TO if f != t}
    admin_s |= {(str(f), "deleting") for f in live_s if f != SnapshotStatus.DELETING}
    assert documented("volume_snapshot", {}) | admin_s == table_of(SNAPSHOT)
    any_but = [a for a in AttachStatus if a != AttachStatus.DETACHED]
    assert documented("volume_attachment", {"any but detached": any_but}) == table_of(ATTACHMENT)
    assert documented("compute_snapshot_status", {}) == table_of(COMPUTE)
