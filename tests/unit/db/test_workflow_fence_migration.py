"""Migration 0005: a deployment upgraded with workflows in flight (rows without host, fence or
lease; flows persisted under the factory name of then) resumes them (SQLite and PostgreSQL)."""

import datetime as dt

import pytest
from sqlalchemy import text

from freezeframe.compute.workflows import snapshot
from freezeframe.conductor.lease import Leases
from freezeframe.conductor.model import Workflow
from freezeframe.conductor.registry import Registry
from freezeframe.db.engine import make_engine, make_sessionmaker
from freezeframe.db.migrate import downgrade, upgrade
from freezeframe.db.session import Database
from freezeframe.compute.model import Instance


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
        yield engine
        engine.dispose()
        return
    from tests.pg import temp_database
    with temp_database() as url:
        engine = make_engine(url)
        yield engine
        engine.dispose()


def test_rows_from_before_the_upgrade_are_backfilled_and_resume(engine):
    upgrade(engine, "0004")
    now = dt.datetime(2026, 11, 30, 12, 0, 0)
    with engine.begin() as conn:            # what the previous release wrote (no host, fence, lease)
        conn.execute(text(
            "INSERT INTO instances (id, name, vm_state, task_state, power_state, flavor_id, vcpus, memory_mb, root_gb,"
            " domain_name, root_target, adopted, guest_agent, metadata_json, system_metadata, created_at, updated_at)"
            " VALUES ('srv-1', 'vm', 'active', 'image_uploading', 'running', '1', 1, 64, 1, 'instance-srv-1', 'vda',"
            " false, false, '{}', '{}', :now, :now)"), {"now": now})
        for workflow_id, owner in (("in-flight", "old-conductor"), ("pending", None)):
            conn.execute(text(
                "INSERT INTO workflows (id, kind, state, progress, last_state_change_at, owner, resource_type,"
                " resource_id, params, cancel_requested, logbook_id, flow_detail_id, created_at, updated_at)"
                " VALUES (:id, 'snapshot', 'UPLOAD_40_COMPLETE', 40, :now, :owner, 'server', 'srv-1', '{}', false,"
                " 'lb', 'fd', :now, :now)"), {"id": workflow_id, "owner": owner, "now": now})
    upgrade(engine, compute_host="host-x")
    db = Database(engine, make_sessionmaker(engine))
    inst = db.run_sync(lambda s: s.get(Instance, "srv-1"))
    assert inst.host == "host-x"                                        # compute.host of the upgrade
    wf = db.run_sync(lambda s: s.get(Workflow, "in-flight"))
    assert (wf.host, wf.fence, wf.owner) == ("host-x", 0, "old-conductor")
    assert wf.heartbeat_at is not None                                  # its lease starts at the upgrade
    pending = db.run_sync(lambda s: s.get(Workflow, "pending"))
    assert (pending.host, pending.fence, pending.heartbeat_at) == ("host-x", 0, None)

    registry = Registry()
    for kind in snapshot.KINDS:          # flows persisted under the factory name used before
        registry.add_kind(kind)
    assert registry.factory("freezeframe.conductor.workflows.snapshot.make_flow") == registry.kind(wf.kind).factory
    # Its conductor, restarted on the new release, takes it back at once; another waits a TTL.
    assert Leases(db, "other", 60, registry.terminal_states).acquire("in-flight") == (None, "held")
    claim, why = Leases(db, "old-conductor", 60, registry.terminal_states).acquire("in-flight")
    assert why == "taken" and claim.fence == 1
    claim, why = Leases(db, "other", 60, registry.terminal_states).acquire("pending")
    assert why == "taken" and claim.fence == 1

    downgrade(engine, "0004")                   # and back
    upgrade(engine)
