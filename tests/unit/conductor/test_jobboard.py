"""conductor/jobboard.py: boards by URL; host-bound work offered only to conductors serving its
host; taskflow's Redis jobboard with claims that expire and an owner-checked keep-alive."""

import datetime as dt
import time

import pytest
from sqlalchemy import update

from freezeframe.compute.workflows import snapshot
from freezeframe.conductor.jobboard import DatabaseBoard, RedisBoard, fetch, redis_conf, serves
from freezeframe.conductor.model import Workflow
from freezeframe.conductor.registry import Registry, StateTable, WorkflowKind
from tests.redisd import private_redis

TTL = 3.0


@pytest.fixture
def registry():
    registry = Registry()
    for kind in snapshot.KINDS:
        registry.add_kind(kind)
    registry.add_kind(WorkflowKind("report", "freezeframe.compute.workflows.snapshot.make_flow",
                                   StateTable("report", "PENDING", frozenset({"DONE"}))))   # not host-bound
    return registry


def test_boards_by_url(db, registry):
    assert isinstance(fetch("", db=db, registry=registry, ttl=TTL), DatabaseBoard)
    assert isinstance(fetch("redis://127.0.0.1:1/2", db=db, registry=registry, ttl=TTL), RedisBoard)
    with pytest.raises(ValueError, match="unsupported jobboard 'zookeeper'"):
        fetch("zookeeper://zk:2181", db=db, registry=registry, ttl=TTL)
    assert redis_conf("redis://:s3cret@redis.example:6390/3?namespace=ff-prod") == {
        "board": "redis", "host": "redis.example", "port": 6390, "db": 3, "namespace": "ff-prod",
        "password": "s3cret", "socket_timeout": 2.0, "socket_connect_timeout": 2.0}
    with pytest.raises(ValueError, match="unknown option"):
        redis_conf("redis://h/0?bogus=1")


def test_host_bound_work_goes_only_where_its_host_is_served():
    bound = frozenset({"snapshot"})
    assert serves(None, bound, "snapshot", "host-b")               # any host (serve, embedded)
    assert serves(frozenset({"host-a"}), bound, "snapshot", "host-a")
    assert not serves(frozenset({"host-a"}), bound, "snapshot", "host-b")
    assert serves(frozenset({"host-a"}), bound, "report", "host-b")      # not host-bound
    assert serves(frozenset({"host-a"}), bound, "snapshot", None)        # recorded before hosts were


def test_the_database_board_offers_what_no_fresh_lease_holds(db, registry):
    def add(session):
        rows = [("new-a", "snapshot", "host-a", None, None), ("new-b", "snapshot", "host-b", None, None),
                ("report", "report", "host-b", None, None), ("mine", "snapshot", "host-a", "c1", dt.datetime.now()),
                ("theirs", "snapshot", "host-a", "c2", dt.datetime.now(dt.UTC).replace(tzinfo=None)),
                ("dead", "snapshot", "host-a", "c3", dt.datetime(2000, 1, 1))]
        for wid, kind, host, owner, beat in rows:
            session.add(Workflow(id=wid, kind=kind, state="PENDING", host=host, owner=owner, heartbeat_at=beat,
                                 resource_id="srv", params="{}"))
        session.add(Workflow(id="ended", kind="snapshot", state="IMAGE_ACTIVE", host="host-a", resource_id="srv",
                             params="{}"))
    db.run_sync(add)
    board = DatabaseBoard(db, registry, TTL)
    woken = []
    board.listen(lambda workflow_id: woken.append(workflow_id))
    board.post("new-a", "snapshot", "host-a")
    assert woken == ["new-a"]
    assert {o.workflow_id for o in board.offers("c1", None)} == {"new-a", "new-b", "report", "mine", "dead"}
    assert {o.workflow_id for o in board.offers("c1", frozenset({"host-a"}))} == {"new-a", "report", "mine", "dead"}
    db.run_sync(lambda s: s.execute(update(Workflow).values(host=None).where(Workflow.id == "new-b")))
    assert "new-b" in {o.workflow_id for o in board.offers("c1", frozenset({"host-a"}))}


def test_redis_board(tmp_path, registry):
    with private_redis(tmp_path) as redis:
        board = RedisBoard(redis.url + "?namespace=t", registry, "test")
        board.connect()
        board.post("wf-a", "snapshot", "host-a")
        board.post("wf-a", "snapshot", "host-a")              # twice: the guard keeps one posting
        board.post("wf-b", "snapshot", "host-b")
        offers = list(board.offers("c1", frozenset({"host-a"})))
        assert [(o.workflow_id, o.kind, o.host) for o in offers] == [("wf-a", "snapshot", "host-a")]
        offer = offers[0]
        assert board.take(offer, "c1", TTL) is True
        assert board.take(offer, "c2", TTL) is False           # claimed
        assert list(board.offers("c2", None))[0].workflow_id == "wf-b"
        client = board._board._client
        assert 0 < client.pttl(offer.job.owner_key) <= TTL * 1000        # the claim expires
        time.sleep(0.3)
        assert board.keep(offer, "c1", TTL) is True and client.pttl(offer.job.owner_key) > (TTL - 0.2) * 1000
        assert board.keep(offer, "c2", 60) is False             # never someone else's claim
        assert client.pttl(offer.job.owner_key) <= TTL * 1000
        board.give_up(offer, "c1")
        assert {o.workflow_id for o in board.offers("c2", None)} == {"wf-a", "wf-b"}
        assert board.take(offer, "c2", 0.2) is True
        time.sleep(0.4)                                        # c2 died: its claim expired
        assert {o.workflow_id for o in board.offers("c1", None)} == {"wf-a", "wf-b"}
        assert board.take(offer, "c1", TTL) is True
        board.done(offer, "c1")
        assert {o.workflow_id for o in board.offers("c1", None)} == {"wf-b"}

        # Redis restarted empty: what the database says is unfinished is posted again, once.
        redis.restart()
        for _ in range(3):                                      # (the first call may meet the old socket)
            try:
                assert list(board.offers("c1", None)) == []
                break
            except Exception:
                time.sleep(0.1)
        assert board.repost([("wf-b", "snapshot", "host-b"), ("wf-c", "report", None)]) == ["wf-b", "wf-c"]
        assert board.repost([("wf-b", "snapshot", "host-b")]) == []
        assert {o.workflow_id for o in board.offers("c1", None)} == {"wf-b", "wf-c"}
        board.close()
