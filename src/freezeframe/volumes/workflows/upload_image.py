"""volume-upload-image: stream a volume's current data into an image (``os-volume_upload_image``;
the API made the image, queued, for the user, and moved the volume available -> uploading).

    Upload -> Finish        (params {"image_id", "disk_format": "raw"|"qcow2", "protected": bool})

Upload serves the volume's file chain read-only over NBD (``imagedata.VolumeExport``) and asks
it where the data is. qcow2: the layout of the image is fixed from those extents (holes are
neither read nor sent; kept with the workflow, so a resumed upload streams the very same bytes);
raw: the full virtual size, the holes sent as zeros but never read. Sent as a resumable upload
in parts of ``conductor.upload_chunk`` (its upload id is the workflow id): after a crash only
what the image service had not kept is read and sent again. (Crash points, for the fault
injection of the tests: UPLOADING, UPLOAD_PART_KEPT, COMPLETE.) Progress is the workflow's (every
10%). Finish protects the image if asked (it is created unprotected so that a failed upload can
always delete it) and moves the volume back to available.

Going back (a failure, a cancel), the image that will never get its data is killed then deleted
— no image is left queued or saving — and the volume goes back to available; the reason is the
workflow's.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from taskflow import task
from taskflow.patterns import linear_flow

from freezeframe.blockdata.qcow2stream import Layout, stream
from freezeframe.blockdata.upload import send_in_parts
from freezeframe.conductor import runtime
from freezeframe.conductor.model import Workflow
from freezeframe.conductor.states import WorkflowState as W
from freezeframe.images.client import GlanceError
from freezeframe.volumes import imagedata
from freezeframe.volumes.states import VolumeStatus as V
from freezeframe.volumes.workflows.common import Job, StepFailed, checkpoint, load, manager, move, record_failure

LOG = logging.getLogger(__name__)
LAYOUT = "layout"           # in the workflow's params: the qcow2 layout, fixed once


def _images(job: Job):
    """The image API acting for the workflow's user (with the service credential beside)."""
    mgr = manager()
    return (mgr.images_for or runtime.current().image_client)(job.actor)


def _uploading(session, job: Job):
    mgr = manager()
    status = mgr.volume(session, job.resource_id).status
    if status != V.UPLOADING:
        raise StepFailed(f"volume {job.resource_id} is {status}, not uploading")
    return mgr.volume_ref(session, job.resource_id)


def _saved_layout(workflow_id: str) -> Layout | None:
    wf = runtime.current().db.run_sync(lambda s: s.get(Workflow, workflow_id))
    doc = json.loads(wf.params or "{}").get(LAYOUT)
    return Layout.from_json(doc) if doc else None


def _save_layout(session, workflow_id: str, layout: Layout) -> None:
    wf = session.get(Workflow, workflow_id)
    wf.params = json.dumps({**json.loads(wf.params or "{}"), LAYOUT: layout.to_json()})


class Upload(task.Task):
    def execute(self, workflow_id: str) -> None:
        rt, mgr = runtime.current(), manager()
        checkpoint(workflow_id)
        job = load(workflow_id)
        image_id, fmt = job.params["image_id"], job.params.get("disk_format", "raw")

        def start(session):
            volume = _uploading(session, job)
            move(session, workflow_id, W.RUNNING, f"uploading to image {image_id} as {fmt}", progress=0)
            return volume
        volume = rt.fenced(workflow_id, start)
        rt.crash_point("UPLOADING")
        checkpoint(workflow_id)
        source = mgr.driver.volume_source(volume)
        with _images(job) as images:
            image = images.show(image_id)
            if image.status == "active":
                return              # finished before a crash: nothing to send again
            if image.status not in ("queued", "saving"):
                raise StepFailed(f"image {image_id} is {image.status}: its data cannot be uploaded")
            offset = images.upload_offset(image_id, workflow_id) if image.status == "saving" else 0
            if offset:
                resumed = f"resuming the upload at byte {offset} (kept by the image service)"
                rt.fenced(workflow_id, lambda s: move(s, workflow_id, W.RUNNING, resumed))
            with imagedata.VolumeExport(source) as nbd:
                if fmt == "qcow2":
                    layout = _saved_layout(workflow_id)
                    if layout is None:
                        layout = Layout.from_extents(nbd.size, imagedata.data_extents(nbd.extents()))
                        rt.fenced(workflow_id, lambda s: _save_layout(s, workflow_id, layout))
                    size, blocks = layout.size, stream(layout, nbd, offset)
                    what = f"{layout.data_bytes} bytes of data in a {size}-byte qcow2"
                else:
                    size, blocks = nbd.size, imagedata.raw_stream(nbd, nbd.extents(), offset)
                    what = f"{size} bytes raw"
                self._send(workflow_id, images, image_id, size, offset, blocks, what)
            status = images.show(image_id).status
            if status != "active":
                raise StepFailed(f"image {image_id} is {status} after its upload, not active")
        LOG.info("workflow %s: volume %s uploaded to image %s (%s, resumed at %d)", workflow_id, job.resource_id,
                 image_id, what, offset)

    def _send(self, workflow_id: str, images, image_id: str, size: int, offset: int, blocks, what: str) -> None:
        """In parts, each kept by the image service before the next is sent."""
        rt = runtime.current()
        sent, last = [0], [offset * 100 // size // 10 * 10 if size else 0]

        def progress(increment: int) -> None:
            rt.check_stop()         # mid-part: the image service keeps what it has, as after a crash
            sent[0] += increment
            percent = (offset + sent[0]) * 100 // size // 10 * 10 if size else 100
            if last[0] < percent < 100:
                last[0] = percent
                done = offset + sent[0]
                rt.fenced(workflow_id, lambda s: move(s, workflow_id, W.RUNNING,
                                                      f"{what}: {done} of {size} bytes sent", progress=percent))
                checkpoint(workflow_id)

        send_in_parts(images, image_id, size, blocks, upload_id=workflow_id, offset=offset, part_size=rt.upload_chunk,
                      progress=progress,
                      # crash tests: die with a part kept, the rest not sent
                      after_part=lambda: rt.crash_point("UPLOAD_PART_KEPT"))

    def revert(self, workflow_id: str, *args: Any, **kwargs: Any) -> None:
        """Kill the image, then delete it (its kept partial data goes with it); the volume goes
        back to available."""
        rt, mgr = runtime.current(), manager()
        reason = record_failure(workflow_id, kwargs)
        job = load(workflow_id)
        discard_image(job)
        rt.fenced(workflow_id, lambda s: mgr.upload_done(s, job.resource_id, f"upload failed: {reason}"[:255]))


def discard_image(job: Job) -> None:
    """The upload's image killed (409: not killable any more) then deleted (404: gone); one it
    protected meanwhile is unprotected first. Anything else leaves the revert to be retried."""
    image_id = job.params["image_id"]
    with _images(job) as images:
        try:
            images.kill(image_id)
        except GlanceError as exc:
            if exc.status not in (404, 409):
                raise
        try:
            images.delete(image_id)
        except GlanceError as exc:
            if exc.status == 404:
                return
            if exc.status != 403:
                raise
            images.set_properties(image_id, {"protected": False})
            images.delete(image_id)


class Finish(task.Task):
    def execute(self, workflow_id: str) -> None:
        rt, mgr = runtime.current(), manager()
        rt.check_stop()
        job = load(workflow_id)
        image_id = job.params["image_id"]
        if job.params.get("protected"):
            with _images(job) as images:
                try:
                    images.set_properties(image_id, {"protected": True})
                except GlanceError as exc:
                    raise StepFailed(f"image {image_id} could not be protected: {exc}") from None

        def done(session) -> None:
            _uploading(session, job)
            mgr.upload_done(session, job.resource_id, f"uploaded to image {image_id}")
            move(session, workflow_id, W.COMPLETE, f"image {image_id} active", progress=100)
        rt.fenced(workflow_id, done)
        rt.crash_point(W.COMPLETE)


def make_flow(workflow_id: str, kind: str) -> linear_flow.Flow:
    return linear_flow.Flow(f"{kind}-{workflow_id}").add(
        Upload(name="upload"),
        Finish(name="finish"),
    )
