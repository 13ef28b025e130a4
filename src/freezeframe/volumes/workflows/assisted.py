"""The steps an assisted snapshot create and delete share (seed 002): ask compute, then wait
for its report — without a thread.

    ... Begin (the driver's begin; compute_snapshot_status requested, with a deadline; WAITING)
    AskCompute       compute's os-assisted-volume-snapshots, once begin is committed (not
                     for a snapshot compute asked for itself, ``compute_initiated``: an instance
                     snapshot, seed 003 — compute reads the new file from the admin metadata)
    WaitForCompute   done: go on; error: fail; else ``Waiting`` (the claim is given back, the
                     workflow looked at again after ``assisted_recheck`` s or at once when
                     compute's report posts it); past the deadline: give up (error) and fail
    ... Complete (the driver's complete; WAITING -> RUNNING -> COMPLETE)

Both steps do nothing for an operation compute takes no part in (an offline snapshot, or a
driver that needs nothing of compute for it) and read everything afresh from the database each
time they run: a resumed flow, or a woken one, sees what compute reported meanwhile.
"""

from __future__ import annotations

import json
from typing import Any

from taskflow import task

from freezeframe.common.timeutil import utcnow
from freezeframe.conductor import runtime
from freezeframe.conductor.interrupts import Waiting
from freezeframe.conductor.model import WorkflowEvent
from freezeframe.conductor.states import WorkflowState as W
from freezeframe.volumes import manager as m
from freezeframe.volumes.states import ComputeSnapshotStatus as C
from freezeframe.volumes.workflows.common import Job, StepFailed, checkpoint, load, manager, move


class ComputeFailed(StepFailed):
    """Compute reported its part failed, or never reported in time."""


def compute_request(job: Job) -> tuple[dict[str, str], C | None, dict[str, Any] | None]:
    """(the snapshot's admin metadata, compute's status, what compute was asked) — afresh. The
    request is None when compute takes no part (offline, nothing asked, or another workflow's)."""
    mgr = manager()
    md, status = runtime.current().db.run_sync(
        lambda s: (mgr.admin_metadata(s, job.resource_id), mgr.compute_status(s, job.resource_id)))
    if not mgr.needs_compute(job.server_id) or md.get(m.WORKFLOW) != job.id:
        return md, status, None
    return md, status, json.loads(md.get(m.INFO) or "null")


def _percent(text: str | None) -> int | None:
    try:
        return max(0, min(100, int(float(str(text).rstrip("%")))))
    except (TypeError, ValueError):
        return None


class AskCompute(task.Task):
    """Hand compute its part (after begin committed: compute only ever sees a request the volume
    side recorded, and a report about it always finds the status to move)."""
    op = "create"

    def execute(self, workflow_id: str) -> None:
        mgr = manager()
        checkpoint(workflow_id)
        job = load(workflow_id)
        _, status, info = compute_request(job)
        if info is None or status != C.REQUESTED:     # nothing to ask, or compute took it already
            return
        if job.params.get("compute_initiated"):
            return          # compute asked for this snapshot itself (seed 003): it switches the disk
        if mgr.compute_assist is None:
            raise StepFailed("no compute service is wired to the volume service: the snapshot of an attached "
                             "volume cannot be taken")
        ask = mgr.compute_assist.create if self.op == "create" else mgr.compute_assist.delete
        ask(job.actor, job.server_id, _volume_of(job), job.resource_id, info)


def _volume_of(job: Job) -> str:
    mgr = manager()
    return runtime.current().db.run_sync(lambda s: mgr.snapshot(s, job.resource_id).volume_id)


class WaitForCompute(task.Task):
    def execute(self, workflow_id: str) -> None:
        rt, mgr = runtime.current(), manager()
        checkpoint(workflow_id)
        job = load(workflow_id)
        md, status, info = compute_request(job)
        if info is None or status == C.DONE:
            return
        if status == C.ERROR:
            raise ComputeFailed(_failure(md))
        deadline = mgr.deadline(md)
        left = (deadline - utcnow()).total_seconds() if deadline is not None else 0.0
        if left > 0:
            self._news(workflow_id, status, md.get(m.PROGRESS))
            raise Waiting(f"snapshot {job.resource_id}: compute {status}",
                          retry_in=min(mgr.settings.assisted_recheck, left))
        reason = f"compute did not report within {md.get(m.TIMEOUT, '?')} s"
        if status == C.RUNNING and job.kind.endswith("create"):
            reason += f" (it was running: it may still use {_new_file(md)}, which is kept)"
        elif status == C.RUNNING:
            reason += " (it was running: its merge may still go on; the snapshot's files are kept)"
        final = rt.fenced(workflow_id, lambda s: mgr.give_up_on_compute(s, job.resource_id, reason))
        if final == C.DONE:         # compute's report landed first: go on
            return
        if final == C.ERROR:
            raise ComputeFailed(_failure(rt.db.run_sync(lambda s: mgr.admin_metadata(s, job.resource_id))))
        raise ComputeFailed(f"{reason}; compute_snapshot_status is {final}")

    def _news(self, workflow_id: str, status: C | None, progress: str | None) -> None:
        """What compute said last, in the workflow's history (once per change, not per look)."""
        rt = runtime.current()
        if status == C.REQUESTED and not progress:
            return              # (what begin's move already says)
        detail = f"waiting for compute: {status}" + (f", {progress}" if progress else "")

        def record(session) -> None:
            last = session.query(WorkflowEvent).filter_by(workflow_id=workflow_id).order_by(
                WorkflowEvent.id.desc()).first()
            if last is None or last.detail != detail:
                move(session, workflow_id, W.WAITING, detail, progress=_percent(progress))
        rt.fenced(workflow_id, record)


def _failure(md: dict[str, str]) -> str:
    """Why compute's part ended in error: the volume side's own reason when it gave up, else
    compute's."""
    if md.get(m.GAVE_UP_WHILE):
        return md.get(m.ERROR) or "the volume service stopped waiting for compute"
    return f"compute failed: {md.get(m.ERROR) or 'no reason given'}"


def _new_file(md: dict[str, str]) -> str:
    name = md.get("new_file")
    return f"the new file {name}" if name else "the new file"
