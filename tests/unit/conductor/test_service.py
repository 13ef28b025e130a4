"""conductor/service.py: the one call services hand work over with, and what they may ask
(SQLite and PostgreSQL)."""

import json

import pytest

from freezeframe.common import errors
from freezeframe.common.context import Actor
from freezeframe.compute.model import Instance, InstanceAction
from freezeframe.compute.workflows import snapshot
from freezeframe.conductor.model import Workflow
from freezeframe.conductor.registry import Registry, UnknownKind
from freezeframe.conductor.service import Workflows

ACTOR = Actor("bob", "project-a", frozenset({"member", "reader"}))


class Board:
    def __init__(self, fail=False):
        self.posted, self.fail = [], fail

    def post(self, workflow_id, kind, host):
        if self.fail:
            raise ConnectionError("the jobboard is away")
        self.posted.append((workflow_id, kind, host))


@pytest.fixture
def registry():
    registry = Registry()
    for kind in snapshot.KINDS:
        registry.add_kind(kind)
    return registry


def add_server(db, server_id="srv-1", host="host-a"):
    db.run_sync(lambda s: s.add(Instance(id=server_id, name=server_id, project_id="project-a", user_id="bob",
                                         vm_state="active", flavor_id="1", vcpus=1, memory_mb=64, root_gb=1,
                                         domain_name=f"instance-{server_id}", host=host)))


def test_submit_records_the_workflow_with_the_callers_records_then_posts_it(db, registry):
    board = Board()
    workflows = Workflows(db, registry, board)
    add_server(db)

    def action(session, workflow_id):
        session.add(InstanceAction(instance_uuid="srv-1", action="createImage", request_id="req-1",
                                   project_id="project-a", user_id="bob", workflow_id=workflow_id))
    workflow_id = workflows.submit("snapshot", "server", "srv-1", {"quiesce": True}, ACTOR, image_id="img-1",
                                   host="host-a", request_id="req-1", also=action)
    wf = db.run_sync(lambda s: s.get(Workflow, workflow_id))
    assert (wf.kind, wf.state, wf.owner, wf.fence, wf.host) == ("snapshot", "PENDING", None, 0, "host-a")
    assert (wf.resource_type, wf.resource_id, wf.image_id, wf.project_id, wf.user_id, wf.request_id) == (
        "server", "srv-1", "img-1", "project-a", "bob", "req-1")
    assert json.loads(wf.params) == {"quiesce": True, "actor": ACTOR.to_json()}     # whom it acts for
    assert db.run_sync(lambda s: s.query(InstanceAction).filter_by(workflow_id=workflow_id).count()) == 1
    assert board.posted == [(workflow_id, "snapshot", "host-a")]
    assert workflows.initial_state("backup") == "PENDING"


def test_submit_refuses_what_it_cannot_run_and_records_nothing(db, registry):
    board = Board()
    workflows = Workflows(db, registry, board)
    with pytest.raises(UnknownKind):
        workflows.submit("volume-snapshot", "server", "srv-1", {}, ACTOR, host="host-a")
    with pytest.raises(errors.Invalid, match="works on servers, not volumes"):
        workflows.submit("snapshot", "volume", "vol-1", {}, ACTOR, host="host-a")
    with pytest.raises(errors.Invalid, match="bound to a host"):
        workflows.submit("snapshot", "server", "srv-1", {}, ACTOR)

    def broken(session, workflow_id):
        raise errors.Conflict("the caller's own record failed")
    with pytest.raises(errors.Conflict):
        workflows.submit("snapshot", "server", "srv-1", {}, ACTOR, host="host-a", also=broken)
    assert db.run_sync(lambda s: s.query(Workflow).count()) == 0 and board.posted == []


def test_a_jobboard_that_is_away_loses_nothing(db, registry):
    """The row is the truth: a failed post is logged, and every conductor's scan posts again
    what no lease holds (``unclaimed``)."""
    workflows = Workflows(db, registry, Board(fail=True))
    workflow_id = workflows.submit("snapshot", "server", "srv-1", {}, ACTOR, host="host-a")
    assert workflows.unclaimed() == [(workflow_id, "snapshot", "host-a")]


def test_questions_services_ask(db, registry):
    workflows = Workflows(db, registry, Board())

    def add(session):
        for i, (state, kind, host, resource) in enumerate([
                ("UPLOAD_40_COMPLETE", "snapshot", "host-a", "srv-1"), ("PENDING", "backup", "host-a", "srv-2"),
                ("FAILED", "snapshot", "host-a", "srv-3"), ("IMAGE_ACTIVE", "snapshot", "host-a", "srv-1"),
                ("PENDING", "snapshot", "host-b", "srv-4")]):
            session.add(Workflow(id=f"wf-{i}", kind=kind, state=state, host=host, resource_id=resource, params="{}"))
    db.run_sync(add)
    assert workflows.count_running() == 3                               # FAILED and ended not counted
    assert workflows.count_running(kinds=("snapshot",), host="host-a") == 1
    assert workflows.count_running(kinds=("snapshot", "backup"), host="host-a") == 2
    assert db.run_sync(lambda s: workflows.count_running(host="host-b", session=s)) == 1
    assert workflows.unfinished("srv-1") == "wf-0"
    assert workflows.unfinished("srv-3") == "wf-2"                       # a revert to retry owns it
    assert workflows.unfinished("srv-3", failed=False) is None
    assert workflows.unfinished("srv-1", excluding="wf-0") is None
    assert workflows.finished(["wf-0", "wf-3", "nope"]) == {"wf-3": "srv-1"}
    assert workflows.last_change_at("srv-1") is not None and workflows.last_change_at("none") is None
    assert workflows.owner_alive("wf-1") is True                         # waiting for a conductor
    assert workflows.owner_alive("wf-3") is False and workflows.owner_alive("nope") is False
