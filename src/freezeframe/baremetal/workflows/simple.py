"""What the short node workflows share (verify, adopt, abort, teardown): one step that holds the
node, does the hardware work, and moves the node ``frm -done-> ...`` (or, going back,
``frm -fail-> ...`` with last_error = the reason); the workflow walks PENDING -> RUNNING ->
COMPLETE, or FAILED -> REVERTED."""

from __future__ import annotations

from typing import Any

from taskflow import task

from freezeframe.baremetal.workflows.common import (Job, NodeLeft, checkpoint, holder, load, manager, move,
                                                    record_failure, reserved)
from freezeframe.common.statemachine import LostRace
from freezeframe.conductor import runtime
from freezeframe.conductor.states import WorkflowState as W


class NodeStep(task.Task):
    """Subclasses say the state they work in (``frm``), the events that end it, and the work."""
    frm: str = ""
    done_event: str = "done"
    fail_event: str | None = "fail"
    what: str = ""

    def work(self, job: Job, node) -> dict[str, Any]:
        """The hardware work; returns more node columns for the final move."""
        return {}

    def settled(self, session, job: Job, node) -> None:
        """What else the final move commits with it (``node``: the row, moved)."""

    def execute(self, workflow_id: str) -> None:
        rt, mgr = runtime.current(), manager()
        checkpoint(workflow_id)
        job = load(workflow_id)
        node = rt.db.run_sync(lambda s: mgr.fresh(s, job.node_id))
        if node.provision_state != self.frm:
            raise NodeLeft(f"node {job.node_id} is {node.provision_state}, not {self.frm}")
        with reserved(workflow_id, job.node_id):
            rt.fenced(workflow_id, lambda s: move(s, workflow_id, W.RUNNING, f"node {self.frm}: {self.what}"))
            node = rt.db.run_sync(lambda s: mgr.fresh(s, job.node_id))
            values = self.work(job, node)
            checkpoint(workflow_id)

            def done(session) -> None:
                mgr.provision(session, job.node_id, self.frm, self.done_event, reason=self.what,
                              values={"reservation": None, **values})
                self.settled(session, job, mgr.fresh(session, job.node_id))
                move(session, workflow_id, W.COMPLETE, f"node {mgr.fresh(session, job.node_id).provision_state}",
                     progress=100)
            rt.fenced(workflow_id, done)

    def revert(self, workflow_id: str, *args: Any, **kwargs: Any) -> None:
        rt, mgr = runtime.current(), manager()
        reason = record_failure(workflow_id, kwargs)
        job = load(workflow_id)

        def fail(session) -> None:
            node = mgr.fresh(session, job.node_id)
            if node.provision_state == self.frm and self.fail_event is not None:
                mgr.provision(session, job.node_id, self.frm, self.fail_event, reason=reason[:2000],
                              values={"reservation": None})
            elif node.provision_state == self.frm:
                node.last_error = reason[:2000]
            mgr.release(session, job.node_id, holder())
        try:
            rt.fenced(workflow_id, fail)
        except LostRace:
            pass


def power_state(mgr, node) -> str:
    info = mgr.info(node)
    return mgr.hardware(node).power.get_power_state(info)
