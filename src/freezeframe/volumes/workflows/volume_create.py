"""volume-create: make a volume's data on the volume host, then make it available.

    CreateVolume -> Finish          (params {"source": "blank"|"snapshot"|"volume"|"image",
                                     "snapshot_id", "source_volid", "image_id"})

CreateVolume runs the driver (a blank sparse volume, the data of a snapshot, a clone of a
volume); every driver create is idempotent, so a flow resumed after a crash simply does it
again. From an image, the volume goes creating -> downloading (with the image's metadata, as
its user sees the image: it must still be visible and active) while the image streams into a
sparse scratch file on the share that the driver then imports (``VolumeManager.create_from_image``:
holes neither read nor written); progress is the workflow's; a resumed flow downloads again
(crash point DOWNLOADING, for the tests' fault injection). Finish saves the driver's provider
and moves the volume creating/downloading -> available (bootable, when made of an image) and
the workflow to COMPLETE in one fenced transaction. Going back, the driver's data is removed
(``delete_volume`` is no error when nothing is there) and the volume ends ``error`` with the
reason as its fault.
"""

from __future__ import annotations

from typing import Any

from taskflow import task
from taskflow.patterns import linear_flow

from freezeframe.conductor import runtime
from freezeframe.conductor.states import WorkflowState as W
from freezeframe.volumes.states import VolumeStatus as V
from freezeframe.volumes.workflows.common import Job, StepFailed, checkpoint, load, manager, move, record_failure

SOURCES = ("blank", "snapshot", "volume", "image")


def _describe(job: Job) -> str:
    source = job.params.get("source", "blank")
    of = {"snapshot": job.params.get("snapshot_id"), "volume": job.params.get("source_volid"),
          "image": job.params.get("image_id")}.get(source)
    return f"creating on {manager().driver.name}" + (f" from {source} {of}" if of else "")


class CreateVolume(task.Task):
    default_provides = "provider"

    def execute(self, workflow_id: str) -> dict[str, Any]:
        rt, mgr = runtime.current(), manager()
        checkpoint(workflow_id)
        job = load(workflow_id)
        source = job.params.get("source", "blank")
        if source not in SOURCES:
            raise StepFailed(f"unknown volume source {source!r} (one of {', '.join(SOURCES)})")

        def start(session) -> Any:
            status = mgr.volume(session, job.resource_id).status
            if status not in (V.CREATING, V.DOWNLOADING):
                raise StepFailed(f"volume {job.resource_id} is {status}, not creating")
            move(session, workflow_id, W.RUNNING, _describe(job))
            volume = mgr.volume_ref(session, job.resource_id)
            if source == "snapshot":
                snap = mgr.snapshot_ref(session, job.params["snapshot_id"])
                return volume, snap, mgr.volume_ref(session, snap.volume_id)
            if source == "volume":
                return volume, None, mgr.volume_ref(session, job.params["source_volid"])
            return volume, None, None
        volume, snap, origin = rt.fenced(workflow_id, start)
        rt.crash_point(W.RUNNING)
        if source == "blank":
            return mgr.driver.create_volume(volume)
        if source == "snapshot":
            return mgr.driver.create_volume_from_snapshot(volume, snap, origin)
        if source == "volume":
            return mgr.driver.create_cloned_volume(volume, origin)
        return self._from_image(workflow_id, job, volume)

    def _from_image(self, workflow_id: str, job: Job, volume) -> dict[str, Any]:
        rt, mgr = runtime.current(), manager()
        image = mgr.image_for_volume(job.actor, str(job.params.get("image_id")))
        size = int(image.size or 0)
        what = f"downloading image {image.id} ({image.disk_format}, {size} bytes)"

        def downloading(session) -> None:
            mgr.image_downloading(session, job.resource_id, image)
            move(session, workflow_id, W.RUNNING, what, progress=0)
        rt.fenced(workflow_id, downloading)
        rt.crash_point("DOWNLOADING")
        got, last = [0], [0]

        def progress(increment: int) -> None:
            rt.check_stop()
            got[0] += increment
            percent = (got[0] * 100 // size) // 10 * 10 if size else 0
            if last[0] < percent < 100:
                last[0] = percent
                rt.fenced(workflow_id, lambda s: move(s, workflow_id, W.RUNNING, f"{what}: {got[0]} received",
                                                      progress=percent))
                checkpoint(workflow_id)
        return mgr.create_from_image(job.actor, volume, image, progress)

    def revert(self, workflow_id: str, *args: Any, **kwargs: Any) -> None:
        """Remove what the driver made (if anything), then the volume -> error with the reason."""
        rt, mgr = runtime.current(), manager()
        reason = record_failure(workflow_id, kwargs)
        job = load(workflow_id)
        status, volume = rt.db.run_sync(lambda s: (mgr.volume(s, job.resource_id).status,
                                                   mgr.volume_ref(s, job.resource_id)))
        if status in (V.CREATING, V.DOWNLOADING, V.ERROR):     # still this workflow's to clean up
            mgr.driver.delete_volume(volume)
            mgr.discard_download(job.resource_id)
        rt.fenced(workflow_id, lambda s: mgr.volume_create_failed(s, job.resource_id, reason))


class Finish(task.Task):
    def execute(self, workflow_id: str, provider: dict[str, Any]) -> None:
        rt, mgr = runtime.current(), manager()
        checkpoint(workflow_id)
        job = load(workflow_id)

        def done(session) -> None:
            mgr.volume_created(session, job.resource_id, provider, bootable=job.params.get("source") == "image")
            move(session, workflow_id, W.COMPLETE, "available", progress=100)
        rt.fenced(workflow_id, done)
        rt.crash_point(W.COMPLETE)


def make_flow(workflow_id: str, kind: str) -> linear_flow.Flow:
    return linear_flow.Flow(f"{kind}-{workflow_id}").add(
        CreateVolume(name="create_volume"),
        Finish(name="finish"),
    )
