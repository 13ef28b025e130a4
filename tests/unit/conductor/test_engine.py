"""conductor/engine.py, the claiming side: a conductor takes what its board offers within the
hosts it serves, through the lease — never host-bound work for a host it cannot reach — and a
board claim is worth nothing without the lease."""

import pytest

from freezeframe.compute.workflows import snapshot
from freezeframe.conductor.engine import Conductor
from freezeframe.conductor.jobboard import DatabaseBoard, RedisBoard
from freezeframe.conductor.lease import Leases
from freezeframe.conductor.model import Workflow
from freezeframe.conductor.registry import Registry
from tests.redisd import private_redis

TTL = 3.0


class Alive:
    def __init__(self, member_id):
        self.member_id = member_id

    def is_alive(self, member_id):
        return True


@pytest.fixture
def registry():
    registry = Registry()
    for kind in snapshot.KINDS:
        registry.add_kind(kind)
    return registry


def conductor(db, registry, board, name, hosts, tmp_path):
    leases = Leases(db, name, TTL, registry.terminal_states)
    c = Conductor(db, Alive(name), database_url=f"sqlite:///{tmp_path / 'tf.db'}", registry=registry,
                  leases=leases, board=board, hosts=hosts)
    started = []
    c._start = lambda claim: started.append(claim) or True        # (nothing runs: only the claims)
    return c, started


def add(db, *rows):
    def insert(session):
        for workflow_id, host in rows:
            session.add(Workflow(id=workflow_id, kind="snapshot", state="PENDING", resource_id="srv", host=host,
                                 params="{}"))
    db.run_sync(insert)


def owners(db):
    return dict(db.run_sync(lambda s: [(w.id, w.owner) for w in s.query(Workflow)]))


def test_host_bound_work_is_claimed_only_by_a_conductor_serving_its_host(db, registry, tmp_path):
    add(db, ("on-a", "host-a"), ("on-b", "host-b"))
    board = DatabaseBoard(db, registry, TTL)
    on_a, started_a = conductor(db, registry, board, "conductor-a", frozenset({"host-a"}), tmp_path)
    assert on_a.claim_work() == ["on-a"] and [c.fence for c in started_a] == [1]
    assert owners(db) == {"on-a": "conductor-a", "on-b": None}
    assert on_a.claim_work() == []                      # held: not offered to itself again
    on_b, _ = conductor(db, registry, board, "conductor-b", frozenset({"host-b"}), tmp_path)
    assert on_b.claim_work() == ["on-b"]                # and the fresh lease of "on-a" is left alone
    assert owners(db) == {"on-a": "conductor-a", "on-b": "conductor-b"}


def test_on_redis_a_board_claim_without_the_lease_is_given_up(tmp_path, db, registry):
    with private_redis(tmp_path) as redis:
        board = RedisBoard(redis.url, registry, "test")
        add(db, ("on-a", "host-a"), ("on-b", "host-b"))
        board.post("on-a", "snapshot", "host-a")
        board.post("on-b", "snapshot", "host-b")
        on_a, _ = conductor(db, registry, board, "conductor-a", frozenset({"host-a"}), tmp_path)
        assert on_a.claim_work() == ["on-a"]
        claimed = {o.workflow_id for o in board.offers("x", None)}
        assert claimed == {"on-b"}                      # on-a is claimed on the board; on-b never touched
        # Redis restarted: the posting of on-a is back, but its lease is conductor-a's and fresh.
        board._board._client.flushdb()
        board.post("on-a", "snapshot", "host-a")
        board.post("on-b", "snapshot", "host-b")
        other, started = conductor(db, registry, board, "conductor-c", None, tmp_path)
        assert other.claim_work() == ["on-b"] and [c.workflow_id for c in started] == ["on-b"]
        assert owners(db)["on-a"] == "conductor-a"
        assert {o.workflow_id for o in board.offers("x", None)} == {"on-a"}     # given up: claimable again
        board.close()


def test_the_scan_loop_sleeps_no_longer_than_the_earliest_backoff(db, registry, tmp_path):
    """A workflow that waits 0.2 s (``Waiting(retry_in=0.2)``) is looked at again after 0.2 s,
    not after the poll interval; backoffs already past do not make the loop spin."""
    import time
    c, _ = conductor(db, registry, DatabaseBoard(db, registry, TTL), "conductor-a", None, tmp_path)
    assert c._next_look() == c._poll                    # nothing put off: the poll interval
    now = time.monotonic()
    c._backoff.update({"soon": now + 0.2, "later": now + 60.0, "past": now - 5.0})
    assert 0.0 < c._next_look() <= 0.2
    c._backoff.pop("soon")
    assert c._next_look() == pytest.approx(c._poll)     # the past one neither spins nor shortens it
