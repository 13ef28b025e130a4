"""A flow factory that moves keeps its old names as aliases: a flow persisted under an old name
(in flight at the upgrade) resumes through the registry with the current factory, where taskflow
alone would fail to import the old name; a name no kind declares is refused clearly."""

import contextlib

import pytest
import taskflow.engines
from taskflow import task
from taskflow.patterns import linear_flow
from taskflow.persistence import models as tf_models

from freezeframe.compute.workflows import snapshot
from freezeframe.conductor.engine import Conductor, current_factory
from freezeframe.conductor.lease import Leases
from freezeframe.conductor.model import Workflow
from freezeframe.conductor.registry import Registry, StateTable, UnknownFactory, WorkflowKind

FACTORY = f"{__name__}.make_flow"
GONE = "tests.unit.conductor.moved_away.make_flow"          # where the factory was before: no such module
RAN: list[str] = []


class Step(task.Task):
    def execute(self, workflow_id: str) -> None:
        RAN.append(f"{workflow_id}:{self.name}")


def make_flow(workflow_id: str, kind: str) -> linear_flow.Flow:
    return linear_flow.Flow(f"{kind}-{workflow_id}").add(Step(name="one"), Step(name="two"))


class Alive:
    def __init__(self, member_id):
        self.member_id = member_id

    def is_alive(self, member_id):
        return True


@pytest.fixture
def registry():
    registry = Registry()
    registry.add_kind(WorkflowKind("demo", FACTORY, StateTable("demo", "PENDING", frozenset({"DONE"})),
                                   aliases=(GONE,)))
    for kind in snapshot.KINDS:
        registry.add_kind(kind)
    return registry


@pytest.fixture
def conductor(db, registry, tmp_path):
    c = Conductor(db, Alive("c1"), database_url=f"sqlite:///{tmp_path / 'tf.db'}", registry=registry,
                  leases=Leases(db, "c1", 3.0, registry.terminal_states))
    with contextlib.closing(c.backend.get_connection()) as conn:
        conn.upgrade()
    yield c
    c.backend.close()


def persist(backend, workflow_id: str, factory_name: str) -> Workflow:
    """A flow saved, not run, as a conductor of the release that used ``factory_name`` left it."""
    book = tf_models.LogBook(f"workflow-{workflow_id}")
    engine = taskflow.engines.load_from_factory(FACTORY, factory_kwargs={"workflow_id": workflow_id, "kind": "demo"},
                                                store={"workflow_id": workflow_id}, backend=backend, book=book,
                                                engine="serial")
    engine.compile()
    engine.prepare()
    with contextlib.closing(backend.get_connection()) as conn:
        detail = conn.get_logbook(book.uuid).find(engine.storage.flow_uuid)
        detail.meta["factory"]["name"] = factory_name
        conn.update_flow_details(detail)
    return Workflow(id=workflow_id, kind="demo", state="PENDING", logbook_id=book.uuid,
                    flow_detail_id=engine.storage.flow_uuid)


def saved_detail(backend, wf: Workflow):
    with contextlib.closing(backend.get_connection()) as conn:
        return conn.get_logbook(wf.logbook_id).find(wf.flow_detail_id)


def test_the_registry_resolves_old_factory_names_to_the_current_one(registry):
    assert registry.factory(FACTORY) == FACTORY
    assert registry.factory(GONE) == FACTORY
    # The snapshot workflow moved from the conductor to compute: flows persisted then resume.
    assert snapshot.FACTORY == "freezeframe.compute.workflows.snapshot.make_flow"
    assert registry.factory("freezeframe.conductor.workflows.snapshot.make_flow") == snapshot.FACTORY
    with pytest.raises(UnknownFactory, match="'no.such.factory'"):
        registry.factory("no.such.factory")


def test_a_flow_persisted_under_an_old_factory_name_resumes(conductor, registry):
    RAN.clear()
    wf = persist(conductor.backend, "w-old", GONE)
    with pytest.raises(ImportError):            # what taskflow alone would do with it
        taskflow.engines.load_from_detail(saved_detail(conductor.backend, wf), backend=conductor.backend)
    engine = conductor._engine(wf, registry.kind("demo"))
    engine.run()
    assert RAN == ["w-old:one", "w-old:two"]
    assert saved_detail(conductor.backend, wf).meta["factory"]["name"] == FACTORY   # saved with the new name


def test_the_snapshot_flow_persisted_under_its_conductor_name_is_rebuilt(conductor):
    detail = tf_models.FlowDetail("snapshot-w", "fd-1")
    detail.meta = {"factory": {"name": "freezeframe.conductor.workflows.snapshot.make_flow", "args": [],
                               "kwargs": {"workflow_id": "w", "kind": "snapshot"}}}
    assert current_factory(conductor.registry, detail) == snapshot.FACTORY
    flow = taskflow.engines.helpers.flow_from_detail(detail)
    # (the instance-level snapshot's device steps do nothing for such a root-only flow)
    assert [atom.name for atom in flow] == ["guard_image", "prepare_volumes", "take_local_snapshot", "upload_disks",
                                            "package", "upload_snapshot", "finish"]


def test_a_flow_persisted_under_an_unknown_factory_is_refused_clearly(conductor, registry):
    wf = persist(conductor.backend, "w-unknown", "tests.unit.conductor.nowhere.make_flow")
    with pytest.raises(UnknownFactory, match="no registered workflow kind has the flow factory "
                                             "'tests.unit.conductor.nowhere.make_flow'"):
        conductor._engine(wf, registry.kind("demo"))
