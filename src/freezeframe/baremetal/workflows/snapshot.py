"""baremetal-snapshot: a node's root disk into a pre-created image (seed 004), with the same
workflow states as a VM snapshot (seed 000). The API moved the node active|snapshot failed
-snapshot-> snapshotting and recorded this workflow as the node's ``snapshot_workflow_id``.

    Guard -> Prepare -> WaitForAgent -> Stream -> Verify -> Upload -> Finish

- Prepare (PENDING -> LOCAL_SNAPSHOT_STARTED): the node held; its transfer opened (a retry
  with the same image reuses the kept copy); the snapshot interface prepares the node (agent:
  the agent image as next boot, reboot) and the node goes snapshotting -wait-> snapshot wait.
- WaitForAgent: until the agent's first heartbeat after the reboot — without a thread
  (``Waiting``; the heartbeat posts the workflow). Then snapshot wait -resume-> snapshotting.
  No heartbeat within ``agent_wait_timeout``: the snapshot fails.
- Stream: ``snapshot.stream_image`` commanded (the transfer's password rotated and handed
  over), then followed by heartbeats (``Waiting`` again; each heartbeat wakes it) and the
  agent's command status; no heartbeat for ``agent_lost_after``: "the agent stopped
  heartbeating at N%".
- Verify (-> LOCAL_SNAPSHOT_COMPLETE): the manifest's hash and every chunk's sha256; the
  transfer's credential revoked (the copy is frozen from here on).
- Upload (UPLOAD_BEGIN -> UPLOAD_<n>_COMPLETE -> UPLOAD_COMPLETE): a qcow2 streamed from the
  chunks (raw when the image's disk_format is raw), resumably in parts (the upload id is the
  transfer's: a retry of the same image resumes what the image service kept).
- Finish (-> IMAGE_ACTIVE): the copy removed, the node booted from its disk, snapshotting
  -done-> active, the agent's token wiped, the reservation released.

Going back (Guard's revert): the node snapshotting|snapshot wait -fail-> snapshot failed with
last_error = the reason, its token wiped; the copy is KEPT (a retry resumes from it); the image
stays as the user made it (never killed: it is theirs). A cancel through the workflow API is
the seed's fail then abort: after the fail, the abort's work (the agent image ejected, the node
rebooted to its disk, the copy removed) and snapshot failed -abort-> active. A node the API
moved away meanwhile (abort in snapshot wait, deleted) is not moved again.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from taskflow import task
from taskflow.patterns import linear_flow

from freezeframe.baremetal.agent_client import FAILED, SUCCEEDED, AgentError
from freezeframe.baremetal.drivers.snapshot import StreamTarget
from freezeframe.baremetal.manager import COMMAND, MANIFEST_SHA, REBOOTED_AT
from freezeframe.baremetal.states import ProvisionState as P
from freezeframe.baremetal.transfer import MANIFEST, BadStream, Manifest
from freezeframe.baremetal.workflows.common import (Cancelled, Job, NodeLeft, StepFailed, checkpoint, failed_with,
                                                    give_back_image, holder, load, manager, move, record_failure,
                                                    reserved, state)
from freezeframe.blockdata.qcow2stream import Layout, stream
from freezeframe.blockdata.upload import send_in_parts
from freezeframe.common.statemachine import LostRace
from freezeframe.common.timeutil import utcnow
from freezeframe.conductor import runtime
from freezeframe.conductor.publish import publish
from freezeframe.conductor.interrupts import Waiting
from freezeframe.conductor.states import WorkflowState as W, parse, transition, upload_state
from freezeframe.images.client import GlanceError

LOG = logging.getLogger(__name__)
RECHECK = 2.0           # seconds: a waiting workflow is looked at this often without a wake-up
# 4 MiB reads of the chunk files ahead of the upload: the chunks were just written (page cache),
# so one read ahead keeps the upload fed; each one more is 4 MiB more of serve's RSS.
READ_AHEAD = 2


class AgentTimeout(StepFailed):
    """The agent did not heartbeat in time."""


class StreamFailed(StepFailed):
    """The agent's stream failed, or the agent died."""


def _images(job: Job):
    mgr = manager()
    return (mgr.images_for or runtime.current().image_client)(job.actor)


def _node(job: Job, *allowed: str):
    """The node afresh; NodeLeft when it is not this workflow's or not in ``allowed``."""
    mgr = manager()
    node = runtime.current().db.run_sync(lambda s: mgr.fresh(s, job.node_id))
    if node.snapshot_workflow_id not in (None, job.id):
        raise NodeLeft(f"node {job.node_id} is now snapshotted by workflow {node.snapshot_workflow_id}")
    if allowed and node.provision_state not in allowed:
        raise NodeLeft(f"node {job.node_id} is {node.provision_state} (moved by a request meanwhile)")
    return node


def _news(workflow_id: str, detail: str, progress: int | None = None) -> None:
    """LOCAL_SNAPSHOT_STARTED with news in its detail (once per change, not per look)."""
    rt = runtime.current()

    def record(session) -> None:
        current = state(session, workflow_id)
        if current != W.LOCAL_SNAPSHOT_STARTED:
            return
        from freezeframe.conductor.model import Workflow, WorkflowEvent
        from sqlalchemy import select
        last = session.scalar(select(WorkflowEvent.detail).where(WorkflowEvent.workflow_id == workflow_id)
                              .order_by(WorkflowEvent.id.desc()).limit(1))
        if last != detail:
            wf = session.get(Workflow, workflow_id)
            transition(session, workflow_id, current, current, detail=detail,
                       progress=wf.progress if progress is None else progress)
    rt.fenced(workflow_id, record)


def _power(mgr, node) -> dict[str, Any]:
    """The node's power state as its BMC reports it now (after the interface rebooted it), for
    the row; nothing when the BMC does not answer (the next power action or sync records it)."""
    from freezeframe.baremetal.drivers.base import DriverError
    try:
        return {"power_state": mgr.hardware(node).power.get_power_state(mgr.info(node))}
    except DriverError as exc:
        LOG.info("node %s: power state unknown after the snapshot interface's reboot: %s", node.id, exc)
        return {}


def _publish(job: Job) -> None:
    """The workflow's state on its image (seed 000 §2a), as a VM snapshot's: visibility only."""
    publish(job.id, client=manager().images_for)


class Guard(task.Task):
    """Nothing forward; going back, the node to snapshot failed (and on a cancel, the abort)."""

    def execute(self, workflow_id: str) -> None:
        checkpoint(workflow_id)

    def revert(self, workflow_id: str, *args: Any, **kwargs: Any) -> None:
        rt, mgr = runtime.current(), manager()
        reason = record_failure(workflow_id, kwargs)
        job = load(workflow_id)
        cancelled = failed_with(kwargs, Cancelled) or reason == "cancelled by the user"

        def fail(session) -> bool:
            node = mgr.fresh(session, job.node_id)
            if node.snapshot_workflow_id not in (None, job.id):
                return False
            if node.provision_state in (P.SNAPSHOTTING, P.SNAPSHOTWAIT):
                mgr.provision(session, job.node_id, node.provision_state, "fail", reason=reason[:2000],
                              values={**mgr.agent_gone(), "reservation": None})
                return True
            mgr.release(session, job.node_id, holder())
            return node.provision_state == P.SNAPSHOTFAIL and cancelled
        try:
            ours = rt.fenced(workflow_id, fail)
        except LostRace:
            ours = False
        if cancelled and ours:
            abort_snapshot(workflow_id, job.node_id, "cancelled by the user")


def abort_snapshot(workflow_id: str, node_id: str, why: str) -> None:
    """The abort's work on a node in snapshot failed: the agent image ejected and the node
    rebooted to its disk, the copy removed, snapshot failed -abort-> active."""
    rt, mgr = runtime.current(), manager()
    node = rt.db.run_sync(lambda s: mgr.fresh(s, node_id))
    if node.provision_state != P.SNAPSHOTFAIL:
        return
    with reserved(workflow_id, node_id):
        mgr.snapshot_interface(node).finish(mgr.info(node), mgr.hardware(node))
        give_back_image(load(workflow_id), node)
        mgr.remove_transfers(node_id)
        power = _power(mgr, node)

        def done(session) -> None:
            mgr.provision(session, node_id, P.SNAPSHOTFAIL, "abort", reason=why,
                          values={**mgr.agent_gone(), "reservation": None, **power})
        rt.fenced(workflow_id, done)


class Prepare(task.Task):
    def execute(self, workflow_id: str) -> None:
        rt, mgr = runtime.current(), manager()
        checkpoint(workflow_id)
        job = load(workflow_id)
        if not job.image_id:
            raise StepFailed("no image_id to snapshot into")
        node = _node(job)
        if node.provision_state == P.SNAPSHOTWAIT:
            return              # resumed after the wait move: prepared
        if node.provision_state != P.SNAPSHOTTING:
            raise NodeLeft(f"node {job.node_id} is {node.provision_state}, not snapshotting")
        iface = mgr.snapshot_interface(node)
        with reserved(workflow_id, job.node_id):
            def start(session):
                row = mgr.fresh(session, job.node_id)
                if row.snapshot_workflow_id is None:
                    row.snapshot_workflow_id = job.id
                transfer, reused = mgr.open_transfer(session, row, job.image_id, workflow_id)
                how = (f"reusing the intermediate copy {transfer.id} (a retry: the stream resumes)" if reused
                       else f"intermediate copy {transfer.id}")
                mgr.update_internal(session, job.node_id, **{REBOOTED_AT: isotime_us(utcnow())})
                mgr.wipe_token(session, job.node_id)
                move(session, workflow_id, W.LOCAL_SNAPSHOT_STARTED,
                     f"node snapshotting: preparing ({iface.name} snapshot interface); {how}", progress=0)
            rt.fenced(workflow_id, start)
            _publish(job)
            node = rt.db.run_sync(lambda s: mgr.fresh(s, job.node_id))
            info = mgr.info(node)
            iface.validate(info)
            iface.prepare(info, mgr.hardware(node), api_url=mgr.api_url)
            checkpoint(workflow_id)
            if not iface.needs_agent:
                return
            power = _power(mgr, node)

            def waiting(session) -> None:
                mgr.provision(session, job.node_id, P.SNAPSHOTTING, "wait", reason="waiting for the agent",
                              values=power)
                move(session, workflow_id, W.LOCAL_SNAPSHOT_STARTED,
                     f"node snapshot wait: rebooted into the agent, waiting for its first heartbeat (within "
                     f"{mgr.settings.agent_wait_timeout:g} s)")
            rt.fenced(workflow_id, waiting)


def isotime_us(value: dt.datetime) -> str:
    return value.isoformat()


def _since(text: str | None) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _wf_state(workflow_id: str) -> str:
    return runtime.current().db.run_sync(lambda s: state(s, workflow_id))


class WaitForAgent(task.Task):
    def execute(self, workflow_id: str) -> None:
        rt, mgr = runtime.current(), manager()
        checkpoint(workflow_id)
        job = load(workflow_id)
        node = _node(job, P.SNAPSHOTWAIT, P.SNAPSHOTTING)
        if not mgr.snapshot_interface(node).needs_agent or node.provision_state == P.SNAPSHOTTING:
            return              # (no agent to wait for; or resumed after the resume move)
        rebooted = _since(mgr.internal(node).get(REBOOTED_AT))
        beat = node.agent_last_heartbeat
        if beat is not None and node.agent_url and (rebooted is None or beat >= rebooted):
            def resume(session) -> None:
                mgr.provision(session, job.node_id, P.SNAPSHOTWAIT, "resume", reason="the agent heartbeats")
                move(session, workflow_id, W.LOCAL_SNAPSHOT_STARTED,
                     f"node snapshotting: the agent {node.agent_version or ''} is up at {node.agent_url}".replace(
                         "agent  is", "agent is"))
            rt.fenced(workflow_id, resume)
            return
        timeout = float(mgr.settings.agent_wait_timeout)
        entered = node.provision_updated_at or utcnow()
        left = timeout - (utcnow() - entered).total_seconds()
        if left <= 0:
            raise AgentTimeout(f"the agent did not heartbeat within {timeout:g} s of the node's reboot")
        raise Waiting(f"node {job.node_id}: waiting for the agent's first heartbeat", retry_in=min(RECHECK, left))


class Stream(task.Task):
    def execute(self, workflow_id: str) -> None:
        rt, mgr = runtime.current(), manager()
        checkpoint(workflow_id)
        job = load(workflow_id)
        node = _node(job, P.SNAPSHOTTING)
        if parse(_wf_state(workflow_id))[0] != W.LOCAL_SNAPSHOT_STARTED:
            return              # verified already (resumed after Verify's move)
        iface = mgr.snapshot_interface(node)
        transfer = rt.db.run_sync(lambda s: mgr.current_transfer(s, node))
        directory = mgr.area.directory(transfer.path)
        command = mgr.internal(node).get(COMMAND) or {}
        agent = mgr.agent(node) if iface.needs_agent else None
        try:
            if command.get("workflow") != workflow_id:
                with reserved(workflow_id, job.node_id):
                    (directory / MANIFEST).unlink(missing_ok=True)   # only this command's manifest counts
                    credential = rt.fenced(workflow_id, lambda s: mgr.rotate_password(s, transfer.id))
                    target = StreamTarget(url=credential.url, username=credential.username,
                                          password=credential.password, chunk_size=mgr.chunk_size_of(node),
                                          directory=directory, image_name=f"{job.image_id}.raw")
                    command_id = iface.start_stream(mgr.info(node), target, agent)

                    def started(session) -> None:
                        mgr.update_internal(session, job.node_id, **{COMMAND: {"workflow": workflow_id,
                                                                             "id": command_id}})
                        move(session, workflow_id, W.LOCAL_SNAPSHOT_STARTED,
                             f"node snapshotting: streaming the disk into {credential.url}")
                    rt.fenced(workflow_id, started)
                command = {"workflow": workflow_id, "id": command_id}
            self._follow(workflow_id, job, iface, directory, agent, command.get("id"))
        finally:
            if agent is not None:
                agent.close()

    def _follow(self, workflow_id: str, job: Job, iface, directory, agent, command_id) -> None:
        mgr = manager()
        node = _node(job, P.SNAPSHOTTING)
        progress = (mgr.agent_status(node).get("progress") or {}) if iface.needs_agent else {}
        percent = progress.get("percent") if isinstance(progress.get("percent"), int) else 0
        if iface.needs_agent:
            lost_after = float(mgr.settings.agent_lost_after)
            beat = node.agent_last_heartbeat
            quiet = (utcnow() - beat).total_seconds() if beat is not None else lost_after + 1
            if quiet > lost_after:
                raise StreamFailed(f"the agent stopped heartbeating at {percent}% (no heartbeat for "
                                   f"{quiet:.0f} s)")
        try:
            status = iface.stream_status(mgr.info(node), directory, agent, command_id)
        except AgentError as exc:       # no answer now: the heartbeats say whether it lives
            LOG.info("workflow %s: the agent's command status is unknown: %s", workflow_id, exc)
            status = None
        if status is not None and status.state == SUCCEEDED:
            if not (directory / MANIFEST).is_file():
                raise StreamFailed("the agent's stream ended without a manifest")
            return
        if status is not None and status.state == FAILED:
            raise StreamFailed(status.reason)
        percent_step = percent // 10 * 10
        if percent_step:
            sent = progress.get("bytes_sent")
            _news(workflow_id, f"node snapshotting: {percent_step}% streamed"
                  + (f" ({sent} bytes sent)" if isinstance(sent, int) else ""), progress=percent_step)
        left = float(mgr.settings.agent_lost_after) - (
            (utcnow() - node.agent_last_heartbeat).total_seconds() if node.agent_last_heartbeat else 0.0)
        raise Waiting(f"node {job.node_id}: the agent streams ({percent}%)", retry_in=max(0.05, min(RECHECK, left)))


class Verify(task.Task):
    def execute(self, workflow_id: str) -> None:
        rt, mgr = runtime.current(), manager()
        checkpoint(workflow_id)
        job = load(workflow_id)
        node = _node(job, P.SNAPSHOTTING)
        if parse(_wf_state(workflow_id))[0] != W.LOCAL_SNAPSHOT_STARTED:
            return
        transfer = rt.db.run_sync(lambda s: mgr.current_transfer(s, node))
        # No one writes to the copy from here on (a stray agent would change it under the check).
        rt.fenced(workflow_id, lambda s: mgr.revoke(s, transfer.id))
        try:
            manifest = mgr.area.manifest(transfer.path)
            extents = mgr.area.verify(transfer.path, manifest, check_stop=rt.check_stop)
            mgr.area.save_extents(transfer.path, manifest, extents)
        except BadStream as exc:
            raise StreamFailed(f"the stream did not verify: {exc.message}") from None

        def verified(session) -> None:
            from freezeframe.baremetal.model import Transfer
            row = session.get(Transfer, transfer.id)
            row.size = manifest.size
            mgr.update_internal(session, job.node_id, **{MANIFEST_SHA: manifest.sha256})
            move(session, workflow_id, W.LOCAL_SNAPSHOT_COMPLETE,
                 f"stream complete and verified: {manifest.data_bytes} bytes of data in {len(manifest.chunks)} "
                 f"chunks of a {manifest.size}-byte disk (manifest sha256 {manifest.sha256[:16]}...)", progress=0)
        rt.fenced(workflow_id, verified)
        _publish(job)


class Upload(task.Task):
    def execute(self, workflow_id: str) -> None:
        rt, mgr = runtime.current(), manager()
        checkpoint(workflow_id)
        job = load(workflow_id)
        node = _node(job, P.SNAPSHOTTING)
        if parse(_wf_state(workflow_id))[0] in (W.UPLOAD_COMPLETE, W.IMAGE_ACTIVE):
            return
        transfer = rt.db.run_sync(lambda s: mgr.current_transfer(s, node))
        try:
            manifest = mgr.area.manifest(transfer.path)
        except BadStream as exc:
            raise StepFailed(f"the verified stream is gone: {exc.message}") from None
        if manifest.sha256 != mgr.internal(node).get(MANIFEST_SHA):
            raise StepFailed("the stream changed after it was verified")
        image_id = job.image_id
        with _images(job) as images:
            image = images.show(image_id)
            if image.status != "active":
                size, offset = self._send(workflow_id, job, images, image, transfer, manifest)
            else:
                size = offset = 0

        def done(session) -> None:
            move(session, workflow_id, W.UPLOAD_COMPLETE, f"sent {size - offset} bytes, resumed at {offset}",
                 progress=100)
        rt.fenced(workflow_id, done)
        _publish(job)

    def _send(self, workflow_id: str, job: Job, images, image, transfer, manifest: Manifest) -> tuple[int, int]:
        rt, mgr = runtime.current(), manager()
        image_id = image.id
        if image.status not in ("queued", "saving"):
            raise StepFailed(f"image {image_id} is {image.status}: its data cannot be uploaded")
        fmt = "raw" if image.disk_format == "raw" else "qcow2"
        if image.status == "queued" and image.disk_format not in ("raw", "qcow2"):
            if image.disk_format:
                raise StepFailed(f"image {image_id} has disk_format {image.disk_format}: a node snapshot is "
                                 "qcow2 or raw")
            images.set_properties(image_id, {"disk_format": "qcow2", "container_format": image.container_format
                                             or "bare"})

        def begin(session) -> None:
            if parse(state(session, workflow_id))[0] in (W.LOCAL_SNAPSHOT_COMPLETE, W.UPLOAD_BEGIN):
                move(session, workflow_id, W.UPLOAD_BEGIN, f"uploading into image {image_id} as {fmt}", progress=0)
        rt.fenced(workflow_id, begin)
        _publish(job)
        upload_id = transfer.id
        offset = 0
        if image.status == "saving":
            try:
                offset = images.upload_offset(image_id, upload_id)
            except GlanceError as exc:
                raise StepFailed(f"image {image_id} is being uploaded by another request ({exc})") from None
        layout = Layout.from_extents(manifest.size, mgr.area.data_extents(transfer.path, manifest)) \
            if fmt == "qcow2" else None
        size = layout.size if layout is not None else manifest.size
        sent, last = [0], [0]

        def progress(increment: int) -> None:
            rt.check_stop()
            sent[0] += increment
            percent = (offset + sent[0]) * 100 // size // 10 * 10 if size else 100
            if 0 < percent < 100 and percent > last[0]:
                last[0] = percent
                handed = offset + sent[0] - increment

                def record(session) -> None:
                    current = state(session, workflow_id)
                    kind, n = parse(current)
                    if kind == W.UPLOAD_BEGIN or (kind == W.UPLOAD_N_COMPLETE and n < percent):
                        transition(session, workflow_id, current, upload_state(percent), progress=percent,
                                   detail=f"{handed} of {size} bytes sent")
                rt.fenced(workflow_id, record)
                _publish(job)
                checkpoint(workflow_id)

        with mgr.area.reader(transfer.path, manifest) as reader:
            blocks = stream(layout, reader, offset, depth=READ_AHEAD) if layout is not None \
                else reader.raw_stream(offset, depth=READ_AHEAD)
            send_in_parts(images, image_id, size, blocks, upload_id=upload_id, offset=offset,
                          part_size=rt.upload_chunk, progress=progress,
                          after_part=lambda: rt.crash_point("UPLOAD_PART_KEPT"))
        status = images.show(image_id).status
        if status != "active":
            raise StepFailed(f"image {image_id} is {status} after its upload, not active")
        LOG.info("workflow %s: node %s uploaded into image %s (%s, %d bytes, resumed at %d)", workflow_id,
                 job.node_id, image_id, fmt, size, offset)
        return size, offset


class Finish(task.Task):
    def execute(self, workflow_id: str) -> None:
        rt, mgr = runtime.current(), manager()
        rt.check_stop()
        job = load(workflow_id)
        node = _node(job, P.SNAPSHOTTING)
        with reserved(workflow_id, job.node_id):
            mgr.remove_transfers(job.node_id)
            node = rt.db.run_sync(lambda s: mgr.fresh(s, job.node_id))
            mgr.snapshot_interface(node).finish(mgr.info(node), mgr.hardware(node))
            power = _power(mgr, node) if mgr.snapshot_interface(node).needs_agent else {}

            def done(session) -> None:
                mgr.update_internal(session, job.node_id, **{COMMAND: None, REBOOTED_AT: None})
                mgr.provision(session, job.node_id, P.SNAPSHOTTING, "done", reason=f"snapshot {job.image_id} active",
                              values={**mgr.agent_gone(), "reservation": None, "last_error": None, **power})
                move(session, workflow_id, W.IMAGE_ACTIVE, f"image {job.image_id} active; node active", progress=100)
            rt.fenced(workflow_id, done)
        _publish(job)


def make_flow(workflow_id: str, kind: str) -> linear_flow.Flow:
    return linear_flow.Flow(f"{kind}-{workflow_id}").add(
        Guard(name="guard"),
        Prepare(name="prepare"),
        WaitForAgent(name="wait_for_agent"),
        Stream(name="stream"),
        Verify(name="verify"),
        Upload(name="upload"),
        Finish(name="finish"),
    )
