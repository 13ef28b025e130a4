"""volume-snapshot-create: take a snapshot of a volume (the API made the row, ``creating``).

    Begin -> AskCompute -> WaitForCompute -> Complete       (params {"server_id": <uuid>|None})

Offline (the volume is attached to no server, or the driver can snapshot a disk a guest writes):
Begin and the compute steps do nothing and Complete runs the driver's ``create_snapshot`` (an
overlay: O(1) in the volume's size), saves both providers and makes the snapshot available.

Online with a driver that needs compute (seed 002, the RemoteFS family): Begin runs the driver's
``create_snapshot_assisted_begin`` (it makes the new file), writes what it returned, sets
``compute_snapshot_status`` requested with a deadline (now + ``assisted_create_timeout``) and
moves the workflow to WAITING — all in one fenced commit, before compute is asked; AskCompute
asks compute (os-assisted-volume-snapshots); WaitForCompute waits without a thread for its report;
Complete runs ``create_snapshot_assisted_complete`` (the new file is the active one: the volume's
provider and the attachment's connection info follow), the snapshot is available at "100%".

Going back, the snapshot ends ``error`` with the reason. An online create first stops compute
(requested/running -> error: a later report gets a 409 and compute undoes its part) and removes
the new file (``create_snapshot_assisted_abort``) — unless compute may be using it: it reported
done (the guest writes to it) or was running when the volume side gave up; the fault says so
and the file is kept.
"""

from __future__ import annotations

from typing import Any

from taskflow import task
from taskflow.patterns import linear_flow

from freezeframe.conductor import runtime
from freezeframe.conductor.states import WorkflowState as W
from freezeframe.volumes import manager as m
from freezeframe.volumes.drivers.base import Assisted
from freezeframe.volumes.model import VolumeSnapshot
from freezeframe.volumes.states import ComputeSnapshotStatus as C, SnapshotStatus as S
from freezeframe.volumes.workflows.assisted import AskCompute, WaitForCompute
from freezeframe.volumes.workflows.common import StepFailed, checkpoint, load, manager, move, record_failure


def _creating(session, snapshot_id: str):
    snap = manager().snapshot(session, snapshot_id)
    if snap.status != S.CREATING:
        raise StepFailed(f"snapshot {snapshot_id} is {snap.status}, not creating")
    return snap


class Begin(task.Task):
    def execute(self, workflow_id: str) -> None:
        rt, mgr = runtime.current(), manager()
        checkpoint(workflow_id)
        job = load(workflow_id)
        online = mgr.needs_compute(job.server_id)

        def start(session):
            snap = _creating(session, job.resource_id)
            if online and mgr.begun_by(session, job.resource_id, workflow_id):
                return None         # resumed after begin committed: on to compute
            how = f", assisted by compute (server {job.server_id})" if online else ""
            move(session, workflow_id, W.RUNNING, f"creating on {mgr.driver.name}{how}")
            return mgr.snapshot_ref(session, job.resource_id), mgr.volume_ref(session, snap.volume_id)
        refs = rt.fenced(workflow_id, start)
        rt.crash_point(W.RUNNING)
        if not online or refs is None:
            return
        result = mgr.driver.create_snapshot_assisted_begin(*refs)
        checkpoint(workflow_id)

        def requested(session) -> None:
            _creating(session, job.resource_id)
            mgr.apply(session, job.resource_id, result)
            mgr.request_compute(session, job.resource_id, workflow_id=workflow_id, kind=job.kind, info=result.info,
                                timeout=mgr.settings.assisted_create_timeout)
            if result.info is not None:
                move(session, workflow_id, W.WAITING,
                     f"waiting for compute: asked to snapshot into {result.info.get('new_file', '?')} within "
                     f"{mgr.settings.assisted_create_timeout:g} s")
        rt.fenced(workflow_id, requested)
        rt.crash_point(W.WAITING)

    def revert(self, workflow_id: str, *args: Any, **kwargs: Any) -> None:
        rt, mgr = runtime.current(), manager()
        reason = record_failure(workflow_id, kwargs)
        job = load(workflow_id)
        online = mgr.needs_compute(job.server_id)
        final = _stop_compute(workflow_id, job.resource_id, reason) if online else None
        snap = rt.db.run_sync(lambda s: s.get(VolumeSnapshot, job.resource_id))
        if snap is None or snap.status not in (S.CREATING, S.ERROR):
            return          # not this workflow's any more (reset by an admin, force-deleted)
        note = self._undo_online(workflow_id, job, reason, final) if online else ""
        rt.fenced(workflow_id, lambda s: mgr.snapshot_create_failed(s, job.resource_id, reason + note))

    def _undo_online(self, workflow_id: str, job, reason: str, final: C | None) -> str:
        """Remove begin's file unless compute may be using it (``final``: compute's status once
        stopped). Returns what the fault should add."""
        rt, mgr = runtime.current(), manager()
        md = rt.db.run_sync(lambda s: mgr.admin_metadata(s, job.resource_id))
        new_file = md.get("new_file", "the new file")
        if final == C.DONE:
            return f"; compute had switched the disk to {new_file}: it is kept (delete the snapshot to merge it)"
        if md.get(m.GAVE_UP_WHILE) == C.RUNNING and md.get(m.WORKFLOW) == workflow_id:
            return "" if "which is kept" in reason else f"; compute was running: {new_file} is kept"
        refs = rt.db.run_sync(lambda s: (mgr.snapshot_ref(s, job.resource_id),
                                         mgr.volume_ref(s, mgr.snapshot(s, job.resource_id).volume_id)))
        result = mgr.driver.create_snapshot_assisted_abort(*refs, md)
        rt.fenced(workflow_id, lambda s: mgr.apply(s, job.resource_id, result))
        return ""


def _stop_compute(workflow_id: str, snapshot_id: str, reason: str) -> C | None:
    """If this workflow asked compute: requested/running -> error (compute's next report gets a
    409 and it undoes its part). Returns compute's status then (None: it was never asked)."""
    mgr = manager()

    def stop(session) -> C | None:
        if not mgr.begun_by(session, snapshot_id, workflow_id):
            return None
        return mgr.give_up_on_compute(session, snapshot_id, f"the volume service gave up: {reason}")
    return runtime.current().fenced(workflow_id, stop)


class Complete(task.Task):
    def execute(self, workflow_id: str) -> None:
        rt, mgr = runtime.current(), manager()
        checkpoint(workflow_id)
        job = load(workflow_id)
        online = mgr.needs_compute(job.server_id)

        def start(session):
            snap = _creating(session, job.resource_id)
            move(session, workflow_id, W.RUNNING,
                 "compute done: completing" if online else f"snapshotting offline on {mgr.driver.name}")
            return (mgr.snapshot_ref(session, job.resource_id), mgr.volume_ref(session, snap.volume_id),
                    mgr.admin_metadata(session, job.resource_id))
        snap, volume, md = rt.fenced(workflow_id, start)
        rt.crash_point(W.RUNNING)
        if online:
            result = mgr.driver.create_snapshot_assisted_complete(snap, volume, md)
        else:
            snap_provider, volume_provider = mgr.driver.create_snapshot(snap, volume)
            result = Assisted(snapshot=snap_provider, volume=volume_provider)

        def done(session) -> None:
            _creating(session, job.resource_id)
            mgr.apply(session, job.resource_id, result)
            mgr.snapshot_created(session, job.resource_id)
            move(session, workflow_id, W.COMPLETE, "available", progress=100)
        rt.fenced(workflow_id, done)
        rt.crash_point(W.COMPLETE)

    def revert(self, workflow_id: str, *args: Any, **kwargs: Any) -> None:
        """Offline: remove the overlay the driver may have made (no error when there is none).
        Online, undoing is Begin's (it knows whether compute uses the new file)."""
        rt, mgr = runtime.current(), manager()
        record_failure(workflow_id, kwargs)
        job = load(workflow_id)
        if mgr.needs_compute(job.server_id):
            return
        snap = rt.db.run_sync(lambda s: s.get(VolumeSnapshot, job.resource_id))
        if snap is None or snap.status not in (S.CREATING, S.ERROR):
            return
        refs = rt.db.run_sync(lambda s: (mgr.snapshot_ref(s, job.resource_id), mgr.volume_ref(s, snap.volume_id)))
        volume_provider = mgr.driver.delete_snapshot(*refs)
        rt.fenced(workflow_id, lambda s: mgr.apply(s, job.resource_id, Assisted(volume=volume_provider)))


class AskComputeToCreate(AskCompute):
    op = "create"


def make_flow(workflow_id: str, kind: str) -> linear_flow.Flow:
    return linear_flow.Flow(f"{kind}-{workflow_id}").add(
        Begin(name="begin"),
        AskComputeToCreate(name="ask_compute"),
        WaitForCompute(name="wait_for_compute"),
        Complete(name="complete"),
    )
