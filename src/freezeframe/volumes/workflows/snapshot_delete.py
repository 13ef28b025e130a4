"""volume-snapshot-delete: delete a volume snapshot (the API moved it to ``deleting``).

    Begin -> AskCompute -> WaitForCompute -> Complete       (params {"server_id": <uuid>|None})

Offline: Complete runs the driver's ``delete_snapshot`` (it merges the chain as it needs and
returns the volume's new provider), saves the provider, refreshes the attachment's connection
info if the active file changed, and marks the snapshot deleted.

Online with a driver that needs compute (seed 002): Begin runs ``delete_snapshot_assisted_begin``
(the ``delete_info``: which file compute merges into which), sets ``compute_snapshot_status``
requested (from the create's ``done``) with a deadline (now + ``assisted_delete_timeout``) and
moves the workflow to WAITING in one fenced commit; AskCompute asks compute; WaitForCompute waits
for its report; Complete runs ``delete_snapshot_assisted_complete`` (the chain file rewritten,
the merged file removed), saves the providers, refreshes the attachment, marks it deleted.

A snapshot is never marked deleted unless its files are gone: any failure leaves it
``error_deleting`` with the reason (it may be deleted again), and compute is stopped first
(a later report gets a 409). A driver that finds the snapshot busy (``SnapshotIsBusy``) sends it
back to ``available`` with the reason, as Cinder does.
"""

from __future__ import annotations

from typing import Any

from taskflow import task
from taskflow.patterns import linear_flow

from freezeframe.conductor import runtime
from freezeframe.conductor.states import WorkflowState as W
from freezeframe.volumes.drivers.base import Assisted, SnapshotIsBusy
from freezeframe.volumes.model import VolumeSnapshot
from freezeframe.volumes.states import SnapshotStatus as S
from freezeframe.volumes.workflows.assisted import AskCompute, WaitForCompute
from freezeframe.volumes.workflows.common import (StepFailed, checkpoint, failed_with, load, manager, move,
                                                  record_failure)


def _deleting(session, snapshot_id: str) -> VolumeSnapshot:
    snap = manager().snapshot(session, snapshot_id)
    if snap.status != S.DELETING:
        raise StepFailed(f"snapshot {snapshot_id} is {snap.status}, not deleting")
    return snap


class Begin(task.Task):
    def execute(self, workflow_id: str) -> None:
        rt, mgr = runtime.current(), manager()
        checkpoint(workflow_id)
        job = load(workflow_id)
        online = mgr.needs_compute(job.server_id)

        def start(session):
            snap = _deleting(session, job.resource_id)
            if online and mgr.begun_by(session, job.resource_id, workflow_id):
                return None         # resumed after begin committed: on to compute
            how = f", assisted by compute (server {job.server_id})" if online else ""
            move(session, workflow_id, W.RUNNING, f"deleting on {mgr.driver.name}{how}")
            return mgr.snapshot_ref(session, job.resource_id), mgr.volume_ref(session, snap.volume_id)
        refs = rt.fenced(workflow_id, start)
        rt.crash_point(W.RUNNING)
        if not online or refs is None:
            return
        result = mgr.driver.delete_snapshot_assisted_begin(*refs)
        checkpoint(workflow_id)

        def requested(session) -> None:
            _deleting(session, job.resource_id)
            mgr.apply(session, job.resource_id, result)
            mgr.request_compute(session, job.resource_id, workflow_id=workflow_id, kind=job.kind, info=result.info,
                                timeout=mgr.settings.assisted_delete_timeout)
            if result.info is not None:
                merge = result.info.get("file_to_merge")
                into = result.info.get("merge_target_file")
                what = f"commit {merge} into {into}" if into else f"rebase the active file onto {merge or 'nothing'}"
                move(session, workflow_id, W.WAITING, f"waiting for compute: asked to {what} within "
                                                      f"{mgr.settings.assisted_delete_timeout:g} s")
        rt.fenced(workflow_id, requested)
        rt.crash_point(W.WAITING)

    def revert(self, workflow_id: str, *args: Any, **kwargs: Any) -> None:
        """Stop compute if it was asked; the snapshot -> error_deleting (available when busy)."""
        rt, mgr = runtime.current(), manager()
        reason = record_failure(workflow_id, kwargs)
        job = load(workflow_id)
        if mgr.needs_compute(job.server_id):
            def stop(session) -> None:
                if mgr.begun_by(session, job.resource_id, workflow_id):
                    mgr.give_up_on_compute(session, job.resource_id, f"the volume service gave up: {reason}")
            rt.fenced(workflow_id, stop)
        busy = failed_with(kwargs, SnapshotIsBusy)
        rt.fenced(workflow_id, lambda s: mgr.snapshot_delete_failed(s, job.resource_id, reason, busy=busy))


class Complete(task.Task):
    def execute(self, workflow_id: str) -> None:
        rt, mgr = runtime.current(), manager()
        checkpoint(workflow_id)
        job = load(workflow_id)
        online = mgr.needs_compute(job.server_id)

        def start(session):
            snap = _deleting(session, job.resource_id)
            move(session, workflow_id, W.RUNNING,
                 "compute done: completing" if online else f"deleting offline on {mgr.driver.name}")
            return (mgr.snapshot_ref(session, job.resource_id), mgr.volume_ref(session, snap.volume_id),
                    mgr.admin_metadata(session, job.resource_id))
        snap, volume, md = rt.fenced(workflow_id, start)
        rt.crash_point(W.RUNNING)
        if online:
            result = mgr.driver.delete_snapshot_assisted_complete(snap, volume, md)
        else:
            result = Assisted(volume=mgr.driver.delete_snapshot(snap, volume))
        rt.check_stop()         # (no cancel point: the files are gone, only their record is left to write)

        def done(session) -> None:
            _deleting(session, job.resource_id)
            mgr.apply(session, job.resource_id, result)
            mgr.snapshot_deleted(session, job.resource_id)
            move(session, workflow_id, W.COMPLETE, "deleted", progress=100)
        rt.fenced(workflow_id, done)
        rt.crash_point(W.COMPLETE)


class AskComputeToDelete(AskCompute):
    op = "delete"


def make_flow(workflow_id: str, kind: str) -> linear_flow.Flow:
    return linear_flow.Flow(f"{kind}-{workflow_id}").add(
        Begin(name="begin"),
        AskComputeToDelete(name="ask_compute"),
        WaitForCompute(name="wait_for_compute"),
        Complete(name="complete"),
    )
