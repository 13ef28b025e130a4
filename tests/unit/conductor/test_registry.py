"""conductor/registry.py: kinds are declared by their owners, unknown ones refused; the
conductor calls each service's reconcile hooks and knows nothing of their tables."""

import pytest

from freezeframe.common import errors
from freezeframe.compute.workflows import snapshot
from freezeframe.conductor.registry import Registry, Scan, StateTable, UnknownKind, WorkflowKind, resolve

DEMO_STATES = StateTable("demo", initial="NEW", terminal=frozenset({"DONE", "GONE"}))


def demo_kind(**kw) -> WorkflowKind:
    return WorkflowKind(**{"name": "demo", "factory": "freezeframe.compute.workflows.snapshot.make_flow",
                           "states": DEMO_STATES, "resource_type": "thing", **kw})


def test_unknown_kind_is_refused_with_the_known_ones():
    registry = Registry()
    registry.add_kind(demo_kind())
    assert registry.kind("demo").resource_type == "thing"
    with pytest.raises(UnknownKind, match="Unknown workflow kind 'nope' \\(registered: demo\\)"):
        registry.kind("nope")
    assert issubclass(UnknownKind, errors.Invalid)          # a 400 at the edge, never a 500


def test_a_kind_is_registered_once():
    registry = Registry()
    registry.add_kind(demo_kind())
    registry.add_kind(demo_kind())                          # the same declaration again: fine
    with pytest.raises(ValueError, match="already registered differently"):
        registry.add_kind(demo_kind(host_bound=True))
    with pytest.raises(ValueError, match="terminal"):
        registry.add_kind(WorkflowKind("bad", "x.y", StateTable("bad", "DONE", frozenset({"DONE"}))))


def test_terminal_states_and_host_bound_kinds_of_every_kind():
    registry = Registry()
    registry.add_kind(demo_kind())
    for kind in snapshot.KINDS:
        registry.add_kind(kind)
    assert registry.terminal_states() >= {"DONE", "GONE", "IMAGE_ACTIVE", "REVERTED", "CANCELLED"}
    assert "FAILED" not in registry.terminal_states()       # a FAILED revert is retried, not over
    assert registry.host_bound_kinds() == {"snapshot", "backup"}


def test_flows_persisted_under_the_old_factory_name_still_resolve():
    """taskflow persists the factory name with the flow: the snapshot kinds declare the name
    they were persisted under before their module moved (conductor -> compute) as an alias,
    and the registry resolves it to today's importable name (tests/unit/conductor/
    test_factory_aliases.py resumes such a flow)."""
    old = "freezeframe.conductor.workflows.snapshot.make_flow"
    assert {k.factory for k in snapshot.KINDS} == {"freezeframe.compute.workflows.snapshot.make_flow"}
    assert all(old in k.aliases for k in snapshot.KINDS)
    registry = Registry()
    for kind in snapshot.KINDS:
        registry.add_kind(kind)
    assert resolve(registry.factory(old)) is snapshot.make_flow
    flow = snapshot.KINDS[0].make_flow(workflow_id="w", kind="snapshot")
    assert [atom.name for atom in flow] == ["guard_image", "prepare_volumes", "take_local_snapshot", "upload_disks",
                                            "package", "upload_snapshot", "finish"]
    with pytest.raises(ValueError):
        resolve("make_flow")


def test_hooks_are_called_in_order_and_one_failing_does_not_stop_the_others():
    registry = Registry()
    seen = []

    def broken(scan):
        seen.append(("volumes", scan.conductor_id))
        raise RuntimeError("the volume backend is away")

    registry.add_hook("compute", "leftovers", lambda scan: seen.append(("compute", scan.running)) or ["w1"])
    registry.add_hook("volumes", "leftovers", broken)
    registry.add_hook("compute", "servers", lambda scan: None)
    with pytest.raises(ValueError, match="already registered"):
        registry.add_hook("compute", "servers", lambda scan: None)
    scan = Scan(conductor_id="c1", running=frozenset({"w2"}), hosts=None, workflows=None)
    results = registry.run_hooks(scan)
    assert seen == [("compute", frozenset({"w2"})), ("volumes", "c1")]
    assert results == {"compute.leftovers": ["w1"], "compute.servers": []}
    assert registry.run_hooks(scan, should_stop=lambda: True) == {}
