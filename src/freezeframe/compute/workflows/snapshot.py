"""The instance snapshot (and backup) workflow, run by the conductor as a taskflow flow.

    TakeLocalSnapshot -> UploadSnapshot -> Finish      (one linear flow, persisted)

TakeLocalSnapshot establishes the point in time (the driver's backup job / export) and fixes the
qcow2 layout from its data ranges (kept with the workflow's record, so that a conductor on
any host can go on with it); UploadSnapshot reads those
ranges and streams the qcow2 straight into the image service — the disk is never copied
locally. Every task is idempotent (a resumed flow re-runs the task that was running when its
conductor died) and has a real revert, so a flow that cannot finish leaves: the guest thawed,
the point in time released, the image killed then deleted, task_state None and vm_state as it
was. The upload is resumable: its upload id is the workflow id and the stream is a pure
function of the layout, so after a crash only the bytes the image service had not kept are
read and sent again.

The workflow writes only its own records: what it changes on the server (task_state, instance
action events) it asks of the compute service (``compute/snapshot_hooks.py``, in process, for the
workflow's user), inside its own fenced transaction (``runtime.fenced``): a conductor that lost
the workflow to another commits nothing. The hypervisor it drives is the one compute gives it for
the server's host (``SnapshotHooks.driver_for``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from typing import Any

from taskflow import task
from taskflow.patterns import linear_flow

from freezeframe.compute.drivers.base import DriverError, VirtDriver
from freezeframe.blockdata.qcow2stream import Layout, stream
from freezeframe.blockdata.upload import send_in_parts
from freezeframe.compute.snapshot_hooks import SnapshotHooks, SnapshotTarget
from freezeframe.compute.drivers.locked import HostBusy
from freezeframe.compute.hostclient import HostUnavailable
from freezeframe.compute.hosts import HostDown
from freezeframe.conductor import runtime
from freezeframe.conductor.publish import actor_of, images_for, publish
from freezeframe.conductor.interrupts import HostAway
from freezeframe.conductor.model import Workflow
from freezeframe.conductor.registry import StateTable, WorkflowKind
from freezeframe.conductor.states import TERMINAL, WORKFLOW, WorkflowState as W, parse, transition, upload_state
from freezeframe.images.client import GlanceError

LOG = logging.getLogger(__name__)
LAYOUT = "layout"           # in the workflow's params: the qcow2 layout, fixed when the point in time is taken
# An instance-level snapshot (seed 003): the devices it takes (``plan``: see compute/devices.py)
# and the layouts of its local disks other than the root, by target.
PLAN, LAYOUTS = "plan", "layouts"
# The importable name taskflow persists with each flow: flows persisted under it must resume.
FACTORY = "freezeframe.compute.workflows.snapshot.make_flow"
# Where this module lived before (conductor/workflows/snapshot.py): the flows persisted then still
# carry that name, and resume under FACTORY (the registry resolves it: ``WorkflowKind.aliases``).
OLD_FACTORY = "freezeframe.conductor.workflows.snapshot.make_flow"
SEED_000 = StateTable("seed 000 snapshot workflow", initial=W.PENDING, terminal=frozenset(TERMINAL), machine=WORKFLOW)
# The kinds this module runs (registered by the compute service, whose work they are).
KINDS = tuple(WorkflowKind(name, FACTORY, SEED_000, resource_type="server", host_bound=True,
                           aliases=(OLD_FACTORY,))
              for name in ("snapshot", "backup"))


class Cancelled(Exception):
    """The user cancelled the workflow (DELETE /v1/workflows/{id})."""


# Cancelled as a failure persisted before this module moved names it (taskflow keeps the name).
OLD_CANCELLED = "freezeframe.conductor.workflows.snapshot.Cancelled"


def compute() -> SnapshotHooks:
    """The compute service's functions for snapshots (in process)."""
    return runtime.current().service("compute")


class _OnHost:
    """A host's driver for a step: the host down, its compute process away or the server busy
    with another host-bound operation is not the step's failure but a pause (``HostAway``:
    nothing reverted; resumed once the host can take it)."""

    def __init__(self, driver: VirtDriver) -> None:
        self._driver = driver

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._driver, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except (HostDown, HostUnavailable, HostBusy) as exc:
                raise HostAway(exc.message) from None
        return call


def driver_of(inst: SnapshotTarget) -> VirtDriver:
    """The hypervisor of the server's host, as the compute service gives it."""
    try:
        return _OnHost(compute().driver_for(inst.host))
    except HostDown as exc:
        raise HostAway(exc.message) from None


def _load(session, workflow_id: str, *, authorize: bool = True) -> tuple[Workflow, SnapshotTarget]:
    """The workflow and its server (looked up for the workflow's user)."""
    wf = session.get(Workflow, workflow_id)
    return wf, compute().target(session, actor_of(wf), wf.resource_id, wf.kind, authorize=authorize)


def _check_cancel(workflow_id: str) -> None:
    """Every cancel check is also an interruption point: a stopping conductor pauses the flow
    here (runtime.Interrupted: not a failure, nothing reverted; it resumes from this step)."""
    runtime.current().check_stop()
    if runtime.current().db.run_sync(lambda s: s.get(Workflow, workflow_id).cancel_requested):
        raise Cancelled(f"workflow {workflow_id} was cancelled")


def _move(session, workflow_id: str, to: str, **kw: Any) -> None:
    wf = session.get(Workflow, workflow_id)
    if wf.state != to:
        transition(session, workflow_id, wf.state, to, **kw)


def _publish(workflow_id: str, ahead: tuple[str, int] | None = None) -> None:
    """The workflow's state, progress and last state change on its image (seed 000 §2a): the
    one shared way (``conductor/publish.py``)."""
    publish(workflow_id, ahead)


def _record_failure(workflow_id: str, kwargs: dict[str, Any]) -> str:
    """The first revert to run marks the workflow FAILED with the reason and last good state."""
    failures = kwargs.get("flow_failures") or {}
    reason = "; ".join(f.exception_str for f in failures.values() if f is not None) or "the workflow failed"

    def fail(session) -> str:
        wf = session.get(Workflow, workflow_id)
        if parse(wf.state)[0] not in (W.FAILED, W.REVERTED, W.CANCELLED):
            cancelled = any(f is not None and f.check(Cancelled, OLD_CANCELLED) for f in failures.values())
            transition(session, workflow_id, wf.state, W.FAILED, detail=reason,
                       values={"failure_reason": "cancelled by the user" if cancelled else reason[:2000]})
        from freezeframe.conductor.engine import without_incomplete_revert
        from sqlalchemy import select
        # (read back with a query: the move above is a Core UPDATE, the ORM object is stale)
        recorded = session.scalar(select(Workflow.failure_reason).where(Workflow.id == workflow_id))
        return without_incomplete_revert(recorded) or reason
    return runtime.current().fenced(workflow_id, fail)


def plan_of(wf: Workflow) -> dict[str, Any] | None:
    """The devices an instance-level snapshot takes; None for createImage/createBackup (the root)."""
    return json.loads(wf.params or "{}").get(PLAN)


def _save_layout(session, workflow_id: str, layout: Layout) -> None:
    """Keep the layout with the workflow (in its fenced transaction): whichever conductor
    resumes it, on whichever host, streams the very same qcow2."""
    wf = session.get(Workflow, workflow_id)
    wf.params = json.dumps({**json.loads(wf.params or "{}"), LAYOUT: layout.to_json()})


def _load_layout(workflow_id: str) -> Layout:
    rt = runtime.current()
    wf = rt.db.run_sync(lambda s: s.get(Workflow, workflow_id))
    try:
        params = json.loads(wf.params or "{}")
        if LAYOUT not in params:       # a flow in flight since before layouts were kept here
            return Layout.from_json(json.loads((rt.workdir / workflow_id / "stream.json").read_text()))
        return Layout.from_json(params[LAYOUT])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DriverError(f"workflow {workflow_id} has no layout of its point in time: {exc}") from exc


class GuardImage(task.Task):
    """Owns the image for the flow: nothing to do going forward; going back, the image that
    will never get its data is killed, then deleted (seed 001: no image left in queued/saving)."""

    def execute(self, workflow_id: str) -> None:
        _check_cancel(workflow_id)

    def revert(self, workflow_id: str, *args: Any, **kwargs: Any) -> None:
        """Kill the image, then delete it (its kept partial data goes with it); the server goes
        back to task_state None with vm_state untouched, and the fault recorded."""
        rt = runtime.current()
        reason = _record_failure(workflow_id, kwargs)
        wf, inst = rt.db.run_sync(lambda s: _load(s, workflow_id, authorize=False))
        with images_for(wf) as images:
            try:
                images.kill(wf.image_id)
            except GlanceError as exc:
                # 409: not killable (already active, or deleted meanwhile): the delete settles it.
                # Anything else (the image service away...) leaves the revert incomplete: retried.
                if exc.status not in (404, 409):
                    raise
            try:
                images.delete(wf.image_id)
            except GlanceError as exc:
                if exc.status != 404:
                    raise

        def revert(session) -> None:
            from sqlalchemy import select

            # A revert retried long after (conductor/engine.py) never clears the task_state of
            # a later snapshot of the same server (after an admin's os-resetState, say).
            later = session.scalar(select(Workflow.id).where(
                Workflow.resource_id == inst.id, Workflow.id != workflow_id,
                Workflow.state.not_in([t.value for t in TERMINAL] + [W.FAILED.value])).limit(1))
            compute().reverted(session, inst.id, workflow_id, reason, clear_task_state=later is None)
        rt.fenced(workflow_id, revert)


class TakeLocalSnapshot(task.Task):
    default_provides = "snapshot"

    def execute(self, workflow_id: str) -> dict[str, Any]:
        rt = runtime.current()
        _check_cancel(workflow_id)
        wf, inst = rt.db.run_sync(lambda s: _load(s, workflow_id))
        params = json.loads(wf.params)
        workdir = rt.workdir / workflow_id
        rt.crash_point(wf.state)            # PENDING: claimed, nothing done yet
        if params.get(PLAN) is not None:    # an instance-level snapshot: every chosen device, frozen once
            from freezeframe.compute.workflows import devices
            return devices.take_group(workflow_id, wf, inst, params, workdir)
        if wf.state == W.LOCAL_SNAPSHOT_COMPLETE:
            # Resumed after the point in time was taken and its layout saved, but before this
            # task's result was: the same point in time goes on (DriverError if it is gone).
            layout = _load_layout(workflow_id)
            driver_of(inst).open_snapshot(inst.domain_name, workflow_id, workdir).close()
            local = rt.db.run_sync(lambda s: compute().local_snapshot_details(s, workflow_id))
            return {"virtual_size": layout.virtual_size, "size": layout.size, "data_bytes": layout.data_bytes,
                    **local}
        if wf.state == W.LOCAL_SNAPSHOT_STARTED:
            # Resumed: whatever the dead conductor had started is cleaned and redone.
            driver_of(inst).end_snapshot(inst.domain_name, workflow_id, workdir)

        def start(session) -> None:
            _move(session, workflow_id, W.LOCAL_SNAPSHOT_STARTED, progress=0)
            compute().started(session, inst.id, workflow_id, wf.kind)
        rt.fenced(workflow_id, start)
        _publish(workflow_id)
        workdir.mkdir(parents=True, exist_ok=True)
        driver = driver_of(inst)
        handle = driver.begin_snapshot(
            inst.domain_name, inst.root_target, workflow_id, workdir,
            quiesce=params.get("quiesce", False), require_quiesce=params.get("require_quiesce", False))
        reader = driver.open_snapshot(inst.domain_name, workflow_id, workdir)
        try:
            extents = reader.extents()
        finally:
            reader.close()
        layout = Layout.from_extents(reader.size, [(e.offset, e.length) for e in extents if not e.zero])
        _check_cancel(workflow_id)
        consistency = f"frozen {handle.frozen_seconds:.3f}s" if handle.quiesced else "crash-consistent"

        def done(session) -> None:
            _move(session, workflow_id, W.LOCAL_SNAPSHOT_COMPLETE, progress=0,
                  detail=f"{consistency}; {layout.data_bytes} bytes of data in a {layout.size}-byte qcow2")
            _save_layout(session, workflow_id, layout)
            compute().point_in_time_taken(session, inst.id, workflow_id, quiesced=handle.quiesced,
                                          frozen_seconds=handle.frozen_seconds)
        rt.fenced(workflow_id, done)
        _publish(workflow_id)
        return {"virtual_size": handle.virtual_size, "size": layout.size, "data_bytes": layout.data_bytes,
                "quiesced": handle.quiesced, "frozen_seconds": handle.frozen_seconds}

    def revert(self, workflow_id: str, *args: Any, **kwargs: Any) -> None:
        """Thaw (if ever frozen), release the point in time, remove the workdir."""
        rt = runtime.current()
        _record_failure(workflow_id, kwargs)
        wf, inst = rt.db.run_sync(lambda s: _load(s, workflow_id, authorize=False))
        driver_of(inst).end_snapshot(inst.domain_name, workflow_id, rt.workdir / workflow_id)
        shutil.rmtree(rt.workdir / workflow_id, ignore_errors=True)


class UploadSnapshot(task.Task):
    """The image's own data: the root disk's point in time (an instance-level snapshot that
    leaves the root out sends none: a 0-byte raw image carrying the block device mapping)."""

    def execute(self, workflow_id: str, snapshot: dict[str, Any]) -> None:
        rt = runtime.current()
        _check_cancel(workflow_id)
        wf, inst = rt.db.run_sync(lambda s: _load(s, workflow_id))
        plan = plan_of(wf)
        with images_for(wf) as images:
            if images.show(wf.image_id).status == "active":
                return  # the upload finished before a crash; nothing to send again
            upload_begins(workflow_id, inst.id)
            if plan is not None and plan.get("root") is None:
                size, offset = send_empty(images, wf.image_id, workflow_id), 0
            else:
                layout = _load_layout(workflow_id)
                done_before, total = upload_totals(wf, layout)
                size, offset = send_disk(images, wf.image_id, layout, inst, workflow_id,
                                         disk=inst.root_target if plan is not None else None,
                                         done_before=done_before, total=total)

        def done(session) -> None:
            _move(session, workflow_id, W.UPLOAD_COMPLETE, progress=100,
                  detail=f"sent {size - offset} bytes, resumed at {offset}")
            compute().upload_finished(session, workflow_id)
        rt.fenced(workflow_id, done)
        _publish(workflow_id)


def upload_begins(workflow_id: str, server_id: str) -> None:
    """UPLOAD_BEGIN (from LOCAL_SNAPSHOT_COMPLETE; later states stay), task_state image_uploading."""
    def begin(session) -> None:
        state = session.get(Workflow, workflow_id).state
        if parse(state)[0] in (W.LOCAL_SNAPSHOT_COMPLETE, W.UPLOAD_BEGIN):
            _move(session, workflow_id, W.UPLOAD_BEGIN, progress=0)
        compute().upload_started(session, server_id, workflow_id)
    runtime.current().fenced(workflow_id, begin)
    _publish(workflow_id)


def upload_totals(wf: Workflow, root: Layout | None) -> tuple[int, int]:
    """(bytes of the disks sent before the root, bytes of every disk): progress counts them all."""
    layouts = [Layout.from_json(doc) for doc in json.loads(wf.params or "{}").get(LAYOUTS, {}).values()]
    before = sum(layout.size for layout in layouts)
    return before, before + (root.size if root is not None else 0)


def send_empty(images, image_id: str, workflow_id: str) -> int:
    """No root disk in the package: the image is a 0-byte raw one (its mapping says the rest)."""
    if images.show(image_id).disk_format != "raw":
        images.set_properties(image_id, {"disk_format": "raw"})
    images.upload_resumable(image_id, [b""], 0, upload_id=workflow_id, offset=0, final=True)
    return 0


def send_disk(images, image_id: str, layout: Layout, inst: SnapshotTarget, workflow_id: str, *,
              disk: str | None, done_before: int = 0, total: int | None = None) -> tuple[int, int]:
    """Stream one disk's point in time (its qcow2 ``layout``) into ``image_id``, resumably, in
    parts; progress moves UPLOAD_<n>_COMPLETE over ``total`` bytes of every disk of the
    workflow. Returns (size, offset it resumed at)."""
    rt = runtime.current()
    size, total = layout.size, total if total is not None else layout.size
    image = images.show(image_id)
    if image.status == "active":
        return size, size
    if image.status == "queued" and image.disk_format != "qcow2":
        images.set_properties(image_id, {"disk_format": "qcow2"})
    offset = images.upload_offset(image_id, workflow_id) if image.status == "saving" else 0
    sent, last, started = [0], [0], time.monotonic()

    def progress(increment: int) -> None:
        rt.check_stop()         # mid-part: the image service keeps what it has, as after a crash
        sent[0] += increment
        if rt.upload_rate:  # bandwidth limit: never ahead of the allowed rate
            ahead = sent[0] / rt.upload_rate - (time.monotonic() - started)
            if ahead > 0:
                rt.sleep(ahead)
        percent = int((done_before + offset + sent[0]) * 100 / total) if total else 100
        percent = percent // 10 * 10
        if 0 < percent < 100 and percent > last[0]:
            last[0] = percent
            handed = done_before + offset + sent[0] - increment      # bytes given to the connection so far

            def record(session) -> None:
                state = session.get(Workflow, workflow_id).state
                kind, current = parse(state)
                if kind == W.UPLOAD_BEGIN or (kind == W.UPLOAD_N_COMPLETE and current < percent):
                    transition(session, workflow_id, state, upload_state(percent), progress=percent,
                               detail=f"{handed} of {total} bytes sent")
            rt.fenced(workflow_id, record)
            _publish(workflow_id)
            _check_cancel(workflow_id)

    workdir = rt.workdir / workflow_id
    driver = driver_of(inst)
    reader = (driver.open_snapshot(inst.domain_name, workflow_id, workdir) if disk is None
              else driver.open_snapshot(inst.domain_name, workflow_id, workdir, disk=disk))
    try:
        # in parts, each kept before the next: a crash re-sends one
        send_in_parts(images, image_id, size, stream(layout, reader, offset), upload_id=workflow_id, offset=offset,
                      part_size=rt.upload_chunk, progress=progress)
    finally:
        reader.close()
    status = images.show(image_id).status
    if status != "active":
        raise GlanceError(f"image {image_id} is {status} after its upload, not active")
    LOG.info("workflow %s: uploaded %d bytes into image %s (resumed at %d)", workflow_id, size - offset, image_id,
             offset)
    return size, offset


class Finish(task.Task):
    def execute(self, workflow_id: str) -> None:
        rt = runtime.current()
        rt.check_stop()
        wf, inst = rt.db.run_sync(lambda s: _load(s, workflow_id))
        driver_of(inst).end_snapshot(inst.domain_name, workflow_id, rt.workdir / workflow_id)
        shutil.rmtree(rt.workdir / workflow_id, ignore_errors=True)
        params = json.loads(wf.params)
        if wf.kind == "backup":
            rotate_backups(wf, inst.id, params["backup_type"], int(params["rotation"]))

        def done(session) -> None:
            compute().finished(session, inst.id, workflow_id)
            _move(session, workflow_id, W.IMAGE_ACTIVE, progress=100)
        _publish(workflow_id, ahead=(W.IMAGE_ACTIVE, 100))
        rt.fenced(workflow_id, done)
        rt.crash_point(W.IMAGE_ACTIVE)


def rotate_backups(wf: Workflow, instance_id: str, backup_type: str, rotation: int) -> list[str]:
    """Nova's rule: keep the newest ``rotation`` backups of this type of this server — only the
    server's project's own backups of it count (listed as the workflow's user; an image another
    project made with this server's instance_uuid is neither kept nor deleted)."""
    with images_for(wf) as images:
        backups = [b for b in images.list([("image_type", "backup"), ("backup_type", backup_type),
                                           ("instance_uuid", instance_id), ("owner", wf.project_id),
                                           ("sort_key", "created_at"), ("sort_dir", "desc")])
                   if b.owner == wf.project_id and b.properties.get("instance_uuid") == instance_id
                   and b.properties.get("image_type") == "backup"]
        doomed = [b.id for b in backups[rotation:]]
        for image_id in doomed:
            try:
                images.delete(image_id)
            except GlanceError as exc:
                if exc.status != 404:
                    raise
    if doomed:
        LOG.info("backup rotation of server %s (%s, keep %d): deleted %s", instance_id, backup_type, rotation, doomed)
    return doomed


def make_flow(workflow_id: str, kind: str) -> linear_flow.Flow:
    """One flow for createImage, createBackup and the instance-level snapshot (seed 003): the
    device steps (``compute/workflows/devices.py``) do nothing for a root-only snapshot."""
    from freezeframe.compute.workflows import devices
    return linear_flow.Flow(f"{kind}-{workflow_id}").add(
        GuardImage(name="guard_image"),
        devices.PrepareVolumes(name="prepare_volumes"),
        TakeLocalSnapshot(name="take_local_snapshot"),
        devices.UploadDisks(name="upload_disks"),
        devices.Package(name="package"),
        UploadSnapshot(name="upload_snapshot"),
        Finish(name="finish"),
    )
