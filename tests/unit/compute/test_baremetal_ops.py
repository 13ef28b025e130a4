"""compute/baremetal_ops.py and its reconcile: what the bare-metal workflows tell compute of a
node's server (in their own transaction), and how a bare-metal server's task_state is repaired
when no workflow of its node owns it (SQLite and PostgreSQL)."""

import asyncio
import datetime as dt

import pytest

from freezeframe.common import errors
from freezeframe.common.context import Actor, RequestContext
from freezeframe.common.timeutil import utcnow
from freezeframe.compute.baremetal_ops import BaremetalOps, new_node_server
from freezeframe.compute.conductor_hooks import ComputeHooks
from freezeframe.compute.drivers.fake import FakeDriver
from freezeframe.compute.model import Instance, InstanceAction, InstanceActionEvent
from freezeframe.compute.reconcile import reconcile_servers
from freezeframe.conductor.model import Workflow
from freezeframe.conductor.service import Workflows

NODE = "6f0b3e64-9d6a-4a43-8f43-6a1c1c3b2a10"
ACTOR = Actor("alice", "admin-project", frozenset({"admin", "member", "reader"}))
LONG_AGO = utcnow() - dt.timedelta(hours=2)


def add_server(db, node=NODE, task_state=None, updated_at=None, action=None) -> str:
    inst = new_node_server(node, name="bm", project_id="p", user_id="u", power_state="power on",
                           properties={"cpus": "2", "memory_mb": 1024, "local_gb": "bogus"})
    inst.task_state = task_state
    if updated_at is not None:
        inst.created_at = inst.updated_at = updated_at

    def insert(session):
        session.add(inst)
        session.flush()
        if action:
            session.add(InstanceAction(instance_uuid=inst.id, action=action, request_id="req-1", project_id="p",
                                       user_id="u"))
    db.run_sync(insert)
    return inst.id


def add_workflow(db, wf_id, state, node=NODE):
    db.run_sync(lambda s: s.add(Workflow(id=wf_id, kind="baremetal-snapshot", state=state, resource_id=node,
                                         resource_type="node", project_id="p", params="{}")))


def row(db, server_id):
    inst = db.run_sync(lambda s: s.get(Instance, server_id))
    return inst.vm_state, inst.task_state, inst.fault


def test_a_node_server_record(db):
    server_id = add_server(db)
    inst = db.run_sync(lambda s: s.get(Instance, server_id))
    assert (inst.vm_state, inst.power_state, inst.flavor_id, inst.host, inst.node) == \
        ("active", "running", "baremetal", None, NODE)
    assert (inst.vcpus, inst.memory_mb, inst.root_gb) == (2, 1024, 0)      # what the node's properties say


def test_the_snapshot_workflow_walks_the_servers_task_state_as_a_vm_snapshots(db):
    hooks = ComputeHooks(FakeDriver())
    server_id = add_server(db, task_state="image_snapshot_pending", action="createImage")
    walk = [("PENDING", "image_snapshot_pending"), ("LOCAL_SNAPSHOT_STARTED", "image_snapshot"),
            ("LOCAL_SNAPSHOT_STARTED", "image_snapshot"),               # news: no move
            ("UPLOAD_BEGIN", "image_uploading"),                        # a state skipped: both steps made
            ("UPLOAD_30_COMPLETE", "image_uploading"), ("UPLOAD_COMPLETE", "image_uploading"),
            ("IMAGE_ACTIVE", None)]
    for state, task_state in walk:
        assert db.run_sync(lambda s: hooks.node_snapshot_moved(s, NODE, "wf-1", state)) == server_id
        assert row(db, server_id) == ("active", task_state, None), state

    def events(session):
        action = session.query(InstanceAction).filter_by(instance_uuid=server_id).one()
        rows = session.query(InstanceActionEvent).filter_by(action_id=action.id).all()
        return action.workflow_id, action.finish_time is not None, sorted((e.event, e.result) for e in rows)
    workflow_id, finished, recorded = db.run_sync(events)
    assert workflow_id == "wf-1" and finished       # the workflow named itself on the action
    assert recorded == [("conductor_snapshot_instance", "Success"), ("local_snapshot", "Success"),
                        ("upload_image", "Success")]


def test_a_failed_node_snapshot_frees_the_server_with_its_fault(db):
    hooks = ComputeHooks(FakeDriver())
    server_id = add_server(db, task_state="image_snapshot_pending", action="createImage")
    db.run_sync(lambda s: hooks.node_snapshot_moved(s, NODE, "wf-2", "LOCAL_SNAPSHOT_STARTED"))
    db.run_sync(lambda s: hooks.node_snapshot_moved(s, NODE, "wf-2", "FAILED", detail="agent lost"))
    assert row(db, server_id) == ("active", None, "agent lost")


def test_a_snapshot_compute_did_not_ask_for_leaves_the_server_alone(db):
    hooks = ComputeHooks(FakeDriver())
    server_id = add_server(db)                              # no createImage action waiting
    assert db.run_sync(lambda s: hooks.node_snapshot_moved(s, NODE, "wf-3", "LOCAL_SNAPSHOT_STARTED")) is None
    assert row(db, server_id) == ("active", None, None)
    assert db.run_sync(lambda s: hooks.node_snapshot_moved(s, "no-server-node", "wf-4", "IMAGE_ACTIVE")) is None


def test_adopt_and_release_from_the_workflows(db):
    hooks = ComputeHooks(FakeDriver())
    server_id = db.run_sync(lambda s: hooks.node_adopted(s, NODE, ACTOR, name="bm-a", power_state="power off"))
    assert row(db, server_id) == ("active", None, None)
    assert db.run_sync(lambda s: s.get(Instance, server_id).power_state) == "shutdown"
    assert db.run_sync(lambda s: hooks.node_adopted(s, NODE, ACTOR)) == server_id          # idempotent
    assert db.run_sync(lambda s: hooks.node_adopted(s, NODE, ACTOR, instance_uuid="someone-else")) is None
    assert db.run_sync(lambda s: hooks.node_adopted(s, "other-node", ACTOR, instance_uuid="x")) is None
    assert db.run_sync(lambda s: hooks.node_released(s, NODE)) == server_id
    assert row(db, server_id)[0] == "deleted"
    assert db.run_sync(lambda s: hooks.node_released(s, NODE)) is None


def test_the_nodes_power_state_is_its_servers(db):
    """A node snapshot reboots the node: the server shows the power state the node ended in."""
    hooks = ComputeHooks(FakeDriver())
    server_id = add_server(db)
    assert db.run_sync(lambda s: hooks.node_power(s, NODE, "power on")) == server_id
    assert db.run_sync(lambda s: s.get(Instance, server_id).power_state) == "running"
    db.run_sync(lambda s: hooks.node_power(s, NODE, "power off"))
    assert db.run_sync(lambda s: s.get(Instance, server_id).power_state) == "shutdown"
    assert db.run_sync(lambda s: hooks.node_power(s, NODE, None)) is None          # unknown: left as it is
    assert db.run_sync(lambda s: s.get(Instance, server_id).power_state) == "shutdown"
    assert db.run_sync(lambda s: hooks.node_power(s, "no-server-node", "power on")) is None


def test_reconcile_node_servers_by_their_nodes_workflows(db):
    running = add_server(db, node="node-running", task_state="image_uploading")
    add_workflow(db, "wf-running", "UPLOAD_40_COMPLETE", node="node-running")
    failed = add_server(db, node="node-failed", task_state="image_snapshot")
    add_workflow(db, "wf-failed", "FAILED", node="node-failed")       # ended for the server: node snapshot failed
    orphan = add_server(db, node="node-orphan", task_state="image_snapshot_pending", updated_at=LONG_AGO)
    accepting = add_server(db, node="node-accepting", task_state="image_snapshot_pending")   # top half
    deleting = add_server(db, node="node-deleting", task_state="deleting", updated_at=LONG_AGO)
    # the VM path asks a hypervisor about domains: it never touches a node's server
    repaired = reconcile_servers(db, FakeDriver(), task_timeout=600, workflows=Workflows(db))
    assert sorted(r.server_id for r in repaired) == sorted([failed, orphan, deleting])
    assert row(db, running) == ("active", "image_uploading", None)
    assert row(db, accepting) == ("active", "image_snapshot_pending", None)
    assert row(db, failed) == ("active", None, None) and row(db, orphan) == ("active", None, None)
    vm_state, task_state, fault = row(db, deleting)
    assert (vm_state, task_state) == ("active", None) and "node-deleting" in fault


class _Policy:
    def check(self, ctx, action, target=None):
        return False


def test_without_a_baremetal_service_adopt_is_a_409(db):
    ops = BaremetalOps(db, None, Workflows(db), policy=_Policy(), pool=None, get_server=None,
                       create_image_record=None, delete_image=None, images_for=None)
    with pytest.raises(errors.Forbidden):       # (policy first: neither admin nor a service)
        asyncio.run(ops.adopt(RequestContext("bob", "p", frozenset({"member"})), {"node": NODE}))
    with pytest.raises(errors.Conflict, match="no bare-metal service"):
        ops.client(ACTOR)
