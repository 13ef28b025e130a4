"""volume-delete: remove a volume's data (the API moved it to ``deleting``), then mark it
deleted.

    DeleteVolume                    (params {})

The driver's ``delete_volume`` removes the volume's file and every file of its snapshots and
is no error when they are gone already, so a resumed flow does it again. The volume (and any
snapshot row of it left, which the API allowed with cascade) ends ``deleted`` in the same fenced
transaction as the workflow's COMPLETE. A failure leaves the volume ``error_deleting`` with the
reason: it may be deleted again.
"""

from __future__ import annotations

from typing import Any

from taskflow import task
from taskflow.patterns import linear_flow

from freezeframe.conductor import runtime
from freezeframe.conductor.states import WorkflowState as W
from freezeframe.volumes.states import VolumeStatus as V
from freezeframe.volumes.workflows.common import StepFailed, checkpoint, load, manager, move, record_failure


class DeleteVolume(task.Task):
    def execute(self, workflow_id: str) -> None:
        rt, mgr = runtime.current(), manager()
        checkpoint(workflow_id)
        job = load(workflow_id)

        def start(session):
            status = mgr.volume(session, job.resource_id).status
            if status != V.DELETING:
                raise StepFailed(f"volume {job.resource_id} is {status}, not deleting")
            move(session, workflow_id, W.RUNNING, f"deleting on {mgr.driver.name}")
            return mgr.volume_ref(session, job.resource_id)
        volume = rt.fenced(workflow_id, start)
        rt.crash_point(W.RUNNING)
        mgr.driver.delete_volume(volume)
        rt.check_stop()         # (no cancel point: the data is gone, only its record is left to write)

        def done(session) -> None:
            mgr.volume_deleted(session, job.resource_id)
            move(session, workflow_id, W.COMPLETE, "deleted", progress=100)
        rt.fenced(workflow_id, done)
        rt.crash_point(W.COMPLETE)

    def revert(self, workflow_id: str, *args: Any, **kwargs: Any) -> None:
        rt, mgr = runtime.current(), manager()
        reason = record_failure(workflow_id, kwargs)
        job = load(workflow_id)
        rt.fenced(workflow_id, lambda s: mgr.volume_delete_failed(s, job.resource_id, reason))


def make_flow(workflow_id: str, kind: str) -> linear_flow.Flow:
    return linear_flow.Flow(f"{kind}-{workflow_id}").add(DeleteVolume(name="delete_volume"))
