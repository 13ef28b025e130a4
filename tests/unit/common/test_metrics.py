"""``common/metrics.py``: committed moves are counted once per database (a rolled-back one never),
the scrape-time gauges count what the tables hold, the workflow queue counts what no live
conductor holds, and a workflow's uploads count for its kind only inside its run."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from freezeframe.common import metrics
from freezeframe.conductor.model import Workflow
from freezeframe.conductor.states import transition as wf_transition
from freezeframe.images.model import Image
from freezeframe.images.states import transition as image_transition

NOW = dt.datetime(2026, 12, 1, 12, 0, 0)


def samples(m: metrics.Metrics) -> dict:
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(got, name, **labels):
    return got.get((name, tuple(sorted(labels.items()))))


def image(session, status="queued"):
    row = Image(id=str(uuid.uuid4()), name="x", status=status, owner="p")
    session.add(row)
    return row.id


def workflow(session, state, owner=None, kind="snapshot"):
    row = Workflow(id=str(uuid.uuid4()), kind=kind, state=state, owner=owner, resource_id=str(uuid.uuid4()),
                   created_at=NOW, last_state_change_at=NOW + dt.timedelta(seconds=7))
    session.add(row)
    return row.id


def test_committed_moves_are_counted_once_rolled_back_never(db):
    ids = db.run_sync(lambda s: [image(s) for _ in range(3)])
    db.run_sync(lambda s: [image_transition(s, i, "queued", "saving", reason="t") for i in ids])
    with pytest.raises(RuntimeError):
        def doomed(s):
            image_transition(s, ids[0], "saving", "active", reason="t")
            raise RuntimeError("rolled back")
        db.run_sync(doomed)
    got = samples(db.metrics)
    t = "freezeframe_state_transitions_total"
    assert value(got, t, machine="image", **{"from": "queued", "to": "saving"}) == 3
    assert value(got, t, machine="image", **{"from": "saving", "to": "active"}) is None
    assert value(got, "freezeframe_resources", machine="image", state="saving") == 3


def test_numbered_states_count_as_their_family(db):
    wid = db.run_sync(lambda s: workflow(s, "UPLOAD_BEGIN"))
    db.run_sync(lambda s: wf_transition(s, wid, "UPLOAD_BEGIN", "UPLOAD_10_COMPLETE"))
    db.run_sync(lambda s: wf_transition(s, wid, "UPLOAD_10_COMPLETE", "UPLOAD_40_COMPLETE"))
    got = samples(db.metrics)
    t = "freezeframe_state_transitions_total"
    assert value(got, t, machine="workflow", **{"from": "UPLOAD_<n>_COMPLETE", "to": "UPLOAD_<n>_COMPLETE"}) == 1
    assert value(got, "freezeframe_workflows", kind="snapshot", state="UPLOAD_<n>_COMPLETE") == 1
    assert value(got, "freezeframe_resources", machine="workflow", state="UPLOAD_<n>_COMPLETE") == 1


def test_queue_depth_counts_what_no_live_conductor_holds(db):
    def fill(s):
        for _ in range(2):
            workflow(s, "PENDING")                              # waiting for a first claim
        workflow(s, "RUNNING", owner="alive-1")                 # being run
        workflow(s, "UPLOAD_30_COMPLETE", owner="dead-1")       # waiting for a take-over
        workflow(s, "IMAGE_ACTIVE", owner="dead-1")             # ended: not waiting for anything
        workflow(s, "COMPLETE", kind="volume-create")
    db.run_sync(fill)

    class Liveness:
        holding = True

        @staticmethod
        def is_alive(member):
            return member == "alive-1"
    db.metrics.bind(liveness=Liveness())
    got = samples(db.metrics)
    assert value(got, "freezeframe_workflow_queue_depth", kind="snapshot") == 3
    assert value(got, "freezeframe_workflow_queue_depth", kind="volume-create") is None
    assert value(got, "freezeframe_conductor_alive", conductor="alive-1") == 1
    assert value(got, "freezeframe_conductor_alive", conductor="dead-1") == 0
    assert value(got, "freezeframe_workflows", kind="volume-create", state="COMPLETE") == 1
    assert value(got, "freezeframe_liveness_up") == 1
    assert value(got, "freezeframe_database_up") == 1


def test_each_database_has_its_own_registry(db, tmp_path):
    from freezeframe.db.engine import make_engine, make_sessionmaker
    from freezeframe.db.migrate import upgrade
    from freezeframe.db.session import Database

    engine = make_engine(f"sqlite:///{tmp_path / 'other.db'}")
    upgrade(engine)
    other = Database(engine, make_sessionmaker(engine))
    try:
        ids = db.run_sync(lambda s: [image(s)])
        db.run_sync(lambda s: image_transition(s, ids[0], "queued", "saving", reason="t"))
        key = ("freezeframe_state_transitions_total", (("from", "queued"), ("machine", "image"), ("to", "saving")))
        assert samples(db.metrics).get(key) == 1
        assert samples(other.metrics).get(key) is None
    finally:
        engine.dispose()


def test_workflow_bytes_count_only_inside_a_run():
    m = metrics.Metrics()
    metrics.workflow_bytes(100)                 # no workflow running here: not counted
    with m.running_workflow("backup"):
        metrics.workflow_bytes(4096)
        metrics.workflow_bytes(0)
    metrics.workflow_bytes(100)
    got = samples(m)
    assert value(got, "freezeframe_workflow_bytes_total", kind="backup") == 4096
    assert len([k for k in got if k[0] == "freezeframe_workflow_bytes_total"]) == 1


def test_transfer_rate_and_reaper_counts():
    m = metrics.Metrics()
    m.transfer("upload", 50_000_000, 0.5)       # 100 MB/s
    m.transfer("download", 0, 1.0)              # nothing moved: nothing counted
    m.reaped("image", {"killed_queued": 2, "deleted_killed": 0})
    got = samples(m)
    assert value(got, "freezeframe_image_bytes_total", direction="upload") == 50_000_000
    assert value(got, "freezeframe_image_transfer_rate_mb_per_second_sum", direction="upload") == 100
    assert value(got, "freezeframe_image_transfer_rate_mb_per_second_bucket", direction="upload", le="100.0") == 1
    assert value(got, "freezeframe_image_transfer_rate_mb_per_second_bucket", direction="upload", le="50.0") == 0
    assert value(got, "freezeframe_image_bytes_total", direction="download") is None
    assert value(got, "freezeframe_reaper_actions_total", reaper="image", action="killed_queued") == 2
    assert value(got, "freezeframe_reaper_actions_total", reaper="image", action="deleted_killed") is None


def test_claims_and_takeovers_are_counted(db, tmp_path):
    """A conductor's claim counts once; a claim of work whose owner's lease ran out is also a
    take-over (the conductor from tests/unit/conductor/test_engine.py: claims only, nothing runs)."""
    from sqlalchemy import update

    from freezeframe.compute.workflows import snapshot
    from freezeframe.conductor.jobboard import DatabaseBoard
    from freezeframe.conductor.registry import Registry
    from tests.unit.conductor.test_engine import TTL, add, conductor

    registry = Registry()
    for kind in snapshot.KINDS:
        registry.add_kind(kind)
    add(db, ("wf-1", None))
    board = DatabaseBoard(db, registry, TTL)
    first, _ = conductor(db, registry, board, "conductor-a", None, tmp_path)
    assert first.claim_work() == ["wf-1"]
    got = samples(db.metrics)
    assert (value(got, "freezeframe_conductor_claims_total"), value(got, "freezeframe_conductor_takeovers_total")) \
        == (1, 0)
    db.run_sync(lambda s: s.execute(update(Workflow).where(Workflow.id == "wf-1")
                                    .values(heartbeat_at=NOW - dt.timedelta(days=1))))   # conductor-a froze
    second, _ = conductor(db, registry, board, "conductor-b", None, tmp_path)
    assert second.claim_work() == ["wf-1"]
    got = samples(db.metrics)
    assert (value(got, "freezeframe_conductor_claims_total"), value(got, "freezeframe_conductor_takeovers_total")) \
        == (2, 1)


def test_the_columns_a_scrape_names_are_the_models_columns():
    """common/metrics.py names the columns it reads instead of importing the services' models
    (it sits below them): a renamed column must fail here, not in a scrape."""
    from freezeframe.common import metrics
    from freezeframe.compute.hosts import ComputeHost
    from freezeframe.conductor.model import Workflow

    for light, model in ((metrics._WORKFLOWS, Workflow), (metrics._COMPUTE_HOSTS, ComputeHost)):
        real = model.__table__
        assert light.name == real.name
        for col in light.c:
            assert col.name in real.c, (real.name, col.name)
            assert type(col.type)._type_affinity is type(real.c[col.name].type)._type_affinity
