"""Compute's part of an assisted volume snapshot (seed 002), run by the conductor on the host of
the server the volume is attached to (``os-assisted-volume-snapshots`` hands it over).

    PENDING -> RUNNING ("running" reported) -> RUNNING (the disk moved / the chain merged) -> COMPLETE

- create: the volume's disk continues on ``create_info.new_file`` (an overlay the volume
  driver made beside the active file; the hypervisor's external disk-only snapshot, quiesced
  when the guest agent answers — required with ``os_require_quiesce``); the server's mapping
  then opens the new file (a stop/start after the snapshot opens the right one); reported
  ``done``.
- delete: the chain is merged as ``delete_info`` says (rebase into the active file, or commit
  of a file below it), its real progress reported every 10% of the block job; the mapping
  follows the active file if it changed; reported ``done``.

Every phase is reported to the volume service (``os-update_snapshot_status`` with
``compute_snapshot_status``), as the workflow's user with the service credential — never a
magic '90%'. A 409 (or 404) means the volume side no longer waits (it timed out, or the
snapshot is gone): before the disk was touched, nothing is done; after, the work stands and is
recorded. While the volume service cannot be reached the step waits (``Waiting``: the claim is
given back, nothing held) and is run again — every driver operation is idempotent, so a resumed
step (after a crash too) redoes nothing that was done. A step that fails before its disk work
is done is reverted: the failure is reported (``error`` / ``error_deleting`` with the reason)
and the workflow ends REVERTED. The host down or the server busy with another host-bound
operation pauses the workflow (``HostAway``), as for instance snapshots.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

from taskflow import task
from taskflow.patterns import linear_flow

from freezeframe.common import errors
from freezeframe.common.context import Actor
from freezeframe.common.timeutil import utcnow
from freezeframe.compute.drivers.base import VirtDriver, VolumeJob
from freezeframe.compute.hosts import HostDown
from freezeframe.compute.volume_ops import ASSISTED_KIND, AttachedVolume
from freezeframe.compute.workflows.snapshot import _OnHost, _record_failure, actor_of
from freezeframe.conductor import runtime
from freezeframe.conductor.interrupts import HostAway, Waiting
from freezeframe.conductor.model import Workflow
from freezeframe.conductor.registry import StateTable, WorkflowKind
from freezeframe.conductor.states import TERMINAL, WORKFLOW, WorkflowState as W, transition
from freezeframe.volumes.client import CinderError

LOG = logging.getLogger(__name__)
FACTORY = "freezeframe.compute.workflows.assisted.make_flow"
STATES = StateTable("assisted volume snapshot (compute's part)", initial=W.PENDING, terminal=frozenset(TERMINAL),
                    machine=WORKFLOW)
KINDS = (WorkflowKind(ASSISTED_KIND, FACTORY, STATES, resource_type="server", host_bound=True),)
# While the volume service does not answer, look again this often.
RETRY_IN = 5.0
# Past this (from the workflow's start) the volume side stopped waiting long ago (Cinder's
# longest wait, a delete, is 7200 s): a report that cannot be made is not retried any more.
PATIENCE = dt.timedelta(seconds=7200 + 600)
STEP = 10           # progress reported every STEP percent of the block job


def compute():
    """The compute service's functions (in process): ``driver_for`` and ``volumes``."""
    return runtime.current().service("compute")


def _driver(host: str | None) -> VirtDriver:
    try:
        return _OnHost(compute().driver_for(host))
    except HostDown as exc:
        raise HostAway(exc.message) from None


class _Run:
    """One run of the workflow's step: its record, what it was asked, the reports it makes."""

    def __init__(self, workflow_id: str) -> None:
        self.rt = runtime.current()
        self.id = workflow_id
        wf = self.rt.db.run_sync(lambda s: s.get(Workflow, workflow_id))
        params = json.loads(wf.params or "{}")
        self.server_id = wf.resource_id
        self.created_at = wf.created_at
        self.op: str = params["op"]
        self.volume_id: str = params["volume_id"]
        self.snapshot_id: str = params["snapshot_id"]
        self.info: dict[str, Any] = params["info"]
        actor = actor_of(wf)
        self.actor = Actor(actor.user_id, params.get("project_id") or actor.project_id, actor.roles)
        self.status = "creating" if self.op == "create" else "deleting"

    @property
    def patient(self) -> bool:
        return utcnow() - self.created_at < PATIENCE

    def step(self, to: str, detail: str, progress: int | None = None) -> None:
        def move(session) -> None:
            state = session.get(Workflow, self.id).state
            transition(session, self.id, state, to, progress=progress, detail=detail[:2000])
        self.rt.fenced(self.id, move)

    def report(self, status: str, progress: str | None, compute_status: str, error: str | None = None) -> bool:
        """Tell the volume side; False when it no longer waits (409, 404). Unreachable or
        failing (5xx): ``Waiting`` (run again later) while it may still wait, else a failure."""
        try:
            with compute().volumes.volumes_for(self.actor) as cinder:
                cinder.update_snapshot_status(self.snapshot_id, status, progress, compute_status, error)
        except CinderError as exc:
            if exc.status in (404, 409):
                LOG.warning("workflow %s: the volume service no longer waits for snapshot %s (%s)", self.id,
                            self.snapshot_id, exc)
                return False
            if (exc.status is None or exc.status >= 500) and self.patient:
                raise Waiting(f"the volume service does not take compute's report on snapshot {self.snapshot_id}: "
                              f"{exc}", RETRY_IN) from None
            raise
        return True

    def attached(self) -> AttachedVolume:
        vol = self.rt.db.run_sync(lambda s: compute().volumes.attached(s, self.server_id, self.volume_id))
        if vol is None:
            raise errors.Conflict(f"Volume {self.volume_id} is not attached to server {self.server_id} any more")
        return vol


class AssistedSnapshot(task.Task):
    def execute(self, workflow_id: str) -> None:
        run = _Run(workflow_id)
        run.rt.check_stop()
        vol = run.attached()
        run.step(W.RUNNING, f"{run.op} of snapshot {run.snapshot_id} of volume {run.volume_id}: reporting running",
                 progress=0)
        run.rt.crash_point(W.RUNNING)
        if not run.report(run.status, "0%", "running"):
            run.step(W.COMPLETE, f"the volume service no longer waits for snapshot {run.snapshot_id}: nothing done")
            return
        driver = _driver(vol.host)
        if run.op == "create":
            done = self._create(run, driver, vol)
        else:
            done = self._delete(run, driver, vol)
        self._finish(run, done)

    # -- the two operations ----------------------------------------------------------------------

    @staticmethod
    def _create(run: _Run, driver: VirtDriver, vol: AttachedVolume) -> str:
        new_file = run.info["new_file"]
        new_path = vol.path.parent / new_file
        try:
            quiesced, frozen = driver.volume_snapshot_create(vol.domain_name, run.volume_id, new_path,
                                                             quiesce=vol.quiesce, require_quiesce=vol.require_quiesce)
        except Exception as exc:
            if _active_file(driver, vol) != new_path:
                raise
            # It failed after the disk moved (a thaw, say): the snapshot is taken all the same.
            LOG.warning("workflow %s: %s, but the disk of volume %s is on %s: taken", run.id, exc, run.volume_id,
                        new_file)
            quiesced, frozen = False, 0.0
        consistency = f"quiesced, frozen {frozen:.3f}s" if quiesced else "crash-consistent"
        _refresh(run, new_file, "qcow2", f"the disk of volume {run.volume_id} is on {new_file} ({consistency})")
        return f"snapshot {run.snapshot_id} taken ({consistency})"

    @staticmethod
    def _delete(run: _Run, driver: VirtDriver, vol: AttachedVolume) -> str:
        last = [0]

        def progress(done: int, total: int) -> None:
            percent = min(100, done * 100 // total) if total > 0 else 100
            if percent - last[0] < STEP or percent >= 100:
                return
            last[0] = percent
            try:
                run.report("deleting", f"{percent}%", "running")
                run.step(W.RUNNING, f"merging: {percent}% of the block job", progress=percent)
            except BaseException as exc:      # visibility only: never stop a block job for it
                LOG.warning("workflow %s: could not record progress %d%%: %s", run.id, percent, exc)

        file_to_merge, target = run.info.get("file_to_merge"), run.info.get("merge_target_file")
        driver.volume_snapshot_delete(vol.domain_name, run.volume_id, file_to_merge=file_to_merge,
                                      merge_target_file=target, progress=VolumeJob(progress))
        how = f"{file_to_merge or 'everything below'} committed into {target}" if target else \
            f"{file_to_merge or 'the whole chain'} pulled into the active file"
        active = next((d for d in driver.volume_disks(vol.domain_name) if d.volume_id == run.volume_id), None)
        if active is not None and (active.path != vol.path or active.format != vol.format):
            _refresh(run, active.path.name, active.format, f"merged ({how}); the disk is on {active.path.name}")
        else:
            run.step(W.RUNNING, f"merged ({how})", progress=100)
        return f"snapshot {run.snapshot_id} merged away ({how})"

    @staticmethod
    def _finish(run: _Run, done: str) -> None:
        """The disk work is done: it stands whatever the report meets (never reverted from here)."""
        try:
            reported = run.report(run.status, "100%", "done")
        except Waiting:
            raise
        except Exception as exc:
            LOG.error("workflow %s: %s, but the volume service refused the report: %s", run.id, done, exc)
            run.step(W.COMPLETE, f"{done}; the volume service refused the report: {exc}"[:2000], progress=100)
            return
        if not reported:
            LOG.error("workflow %s: %s after the volume service stopped waiting for it", run.id, done)
            done += "; the volume service had stopped waiting for it"
        run.step(W.COMPLETE, done, progress=100)

    def revert(self, workflow_id: str, *args: Any, **kwargs: Any) -> None:
        """Report the failure (``error`` / ``error_deleting`` with the reason): the volume side
        removes what it made for the snapshot. Unless the disk is on the new file after all (a
        create whose step failed after its disk work): then that is reported, never an error
        that would remove the file the guest writes."""
        reason = _record_failure(workflow_id, kwargs)
        run = _Run(workflow_id)
        if run.op == "create" and _took(run):
            LOG.warning("workflow %s failed (%s), but the disk is on the new file: reported done", workflow_id, reason)
            status, progress, compute_status, error = "creating", "100%", "done", None
        else:
            status = "error" if run.op == "create" else "error_deleting"
            progress, compute_status, error = None, "error", reason[:1000]
        try:
            run.report(status, progress, compute_status, error)
        except Waiting:
            raise
        except CinderError as exc:
            if run.patient and (exc.status is None or exc.status >= 500):
                raise
            LOG.error("workflow %s: its failure could not be reported to the volume service: %s", workflow_id, exc)


def _active_file(driver: VirtDriver, vol: AttachedVolume) -> Path | None:
    """The file the guest's disk of the volume is on now (None: not known)."""
    try:
        disk = next((d for d in driver.volume_disks(vol.domain_name) if d.volume_id == vol.volume_id), None)
    except Exception:
        return None
    return disk.path if disk is not None else None


def _took(run: _Run) -> bool:
    """Did a failed create move the disk to the new file all the same?"""
    vol = run.rt.db.run_sync(lambda s: compute().volumes.attached(s, run.server_id, run.volume_id))
    if vol is None:
        return False
    new_path = vol.path.parent / run.info["new_file"]
    if vol.path == new_path:
        return True
    return _active_file(_driver(vol.host), vol) == new_path


def _refresh(run: _Run, name: str, fmt: str, detail: str) -> None:
    """The mapping opens the volume's new active file, recorded with the step's progress."""
    def refresh(session) -> None:
        compute().volumes.refresh_connection(session, run.server_id, run.volume_id, name=name, fmt=fmt)
        state = session.get(Workflow, run.id).state
        transition(session, run.id, state, W.RUNNING, progress=100, detail=detail[:2000])
    run.rt.fenced(run.id, refresh)


def make_flow(workflow_id: str, kind: str) -> linear_flow.Flow:
    return linear_flow.Flow(f"{kind}-{workflow_id}").add(AssistedSnapshot(name="assisted_volume_snapshot"))
