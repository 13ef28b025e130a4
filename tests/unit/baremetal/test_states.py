"""baremetal/states.py: seed 004's eleven transitions exactly, beside the other verbs' table, run
on automaton and persisted by compare-and-set; the docs show the table the code declares."""

from pathlib import Path

import pytest

from freezeframe.baremetal import states
from freezeframe.baremetal.model import Node
from freezeframe.baremetal.states import P
from freezeframe.common import errors
from freezeframe.common.statemachine import LostRace

DOCS = Path(__file__).resolve().parents[3] / "docs" / "state-machines.md"

# Seed 004's "State Machine Impact", as the seed writes it.
SEED = """
active -> snapshotting (on snapshot)
snapshotting -> snapshot failed (on fail)
snapshotting -> snapshot wait (on wait)
snapshot wait -> snapshotting (on resume)
snapshot wait -> snapshot failed (on fail)
snapshot wait -> snapshot failed (on abort)
snapshotting -> active (on done)
snapshot failed -> active (on abort)
snapshot failed -> snapshotting (on snapshot)
snapshot wait -> deleting (on deleted)
snapshot failed -> deleting (on deleted)
"""


def _seed() -> set[tuple[str, str, str]]:
    rows = set()
    for line in SEED.strip().splitlines():
        moves, _, event = line.partition(" (on ")
        frm, _, to = moves.partition(" -> ")
        rows.add((frm, event.rstrip(")"), to))
    return rows


def test_the_seeds_eleven_transitions_exactly():
    assert len(states.SEED_004) == 11
    assert {(str(f), e, str(t)) for f, e, t in states.SEED_004} == _seed()
    # every snapshot state's moves are the seed's, none added by the other verbs
    snap = {P.SNAPSHOTTING, P.SNAPSHOTWAIT, P.SNAPSHOTFAIL}
    others = {(f, e, t) for f, e, t in states.OTHERS if f in snap or t in snap}
    assert others == set()


def test_the_docs_show_the_table_the_code_declares():
    text = DOCS.read_text()
    start = text.index("<!-- table: baremetal_node -->")
    rows = set()
    for line in text[start:].splitlines()[3:]:
        if not line.startswith("|"):
            break
        frm, event, to = (c.strip() for c in line.strip("|").split("|")[:3])
        rows.add((frm, event, to))
    assert rows == {(str(f), e, str(t)) for f, e, t in states.TABLE}


@pytest.mark.parametrize("frm, event, to", [(str(f), e, str(t)) for f, e, t in states.TABLE])
def test_each_row_runs_on_automaton(frm, event, to):
    assert states.target_of(frm, event) == to


def test_a_verb_the_state_does_not_take_names_the_ones_it_does():
    with pytest.raises(errors.InvalidState) as exc:
        states.target_of("active", "provide")
    assert '"provide"' in str(exc.value) and "snapshot, deleted" in str(exc.value)
    with pytest.raises(errors.InvalidState) as exc:
        states.target_of("snapshot wait", "snapshot")
    assert "abort, deleted" in str(exc.value)
    with pytest.raises(errors.InvalidState):
        states.target_of("active", "no-such-verb")
    assert states.verbs_from("deleting") == ()


def _node(db, state):
    def add(s):
        s.add(Node(id="n1", driver="fake-hardware", power_interface="fake", boot_interface="fake",
                   snapshot_interface="fake", provision_state=state))
    db.run_sync(add)


def _row(db):
    return db.run_sync(lambda s: (lambda n: (n.provision_state, n.target_provision_state, n.last_error))(
        s.get(Node, "n1")))


def test_provision_is_a_compare_and_set_with_target_and_last_error(db):
    _node(db, "active")
    assert db.run_sync(lambda s: states.provision(s, "n1", "active", "snapshot")) == P.SNAPSHOTTING
    assert _row(db) == ("snapshotting", "active", None)
    # a writer that still believes the node is active loses: nothing is written
    with pytest.raises(LostRace):
        db.run_sync(lambda s: states.provision(s, "n1", "active", "snapshot"))
    db.run_sync(lambda s: states.provision(s, "n1", "snapshotting", "wait"))
    db.run_sync(lambda s: states.provision(s, "n1", "snapshot wait", "fail", reason="no heartbeat within 5s"))
    assert _row(db) == ("snapshot failed", None, "no heartbeat within 5s")
    with pytest.raises(errors.InvalidState):            # an invalid move writes nothing either
        db.run_sync(lambda s: states.provision(s, "n1", "snapshot failed", "done"))
    assert _row(db)[0] == "snapshot failed"
    assert db.run_sync(lambda s: states.provision(s, "n1", "snapshot failed", "abort")) == P.ACTIVE
