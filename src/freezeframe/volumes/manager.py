"""The volume manager: what the volume service's workflows (and its API, for compute's reports)
call to read and write the volume tables, and the driver and compute they work with.

Cinder's volume manager does the driver work and the database work of each operation in one
place; here the *order* of an operation is its workflow's (``volumes/workflows/``: persisted
steps, a wait with a deadline) and the manager keeps what every step needs:

- rows as the driver sees them (``VolumeRef`` / ``SnapshotRef``): a volume's provider is its
  ``provider_location`` JSON, a snapshot's is its admin metadata key ``provider`` (JSON) — the
  driver itself keeps no database;
- every status change of a volume or snapshot, through its state machine (compare-and-set), in
  the caller's session — a workflow's fenced transaction, so a conductor that lost the workflow
  commits none of it;
- seed 002's exchange with compute: what a driver's assisted phase returns (``Assisted``) is
  written here, never by the driver; ``compute_snapshot_status`` is asked for (``requested``),
  reported by compute (``report_compute_status``, os-update_snapshot_status) and given up on
  past its deadline — each a compare-and-set, so a report racing with the deadline either lands
  (the workflow goes on) or is refused with a 409 (compute undoes its part);
- the attachment's ``connection_info`` refreshed whenever the active file changed, so a guest
  restarted after an online snapshot opens the right file.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from freezeframe.common import errors
from freezeframe.common.context import Actor
from freezeframe.common.statemachine import LostRace
from freezeframe.common.timeutil import parse_isotime, utcnow
from freezeframe.db.session import Database
from freezeframe.images.client import GlanceError
from freezeframe.settings import VolumeSettings
from freezeframe.volumes import imagedata
from freezeframe.volumes.drivers.base import Assisted, SnapshotRef, VolumeDriver, VolumeRef
from freezeframe.volumes.model import SnapshotAdminMetadata, Volume, VolumeAttachment, VolumeSnapshot
from freezeframe.volumes.states import (ATTACHMENT, COMPUTE_STATUS_KEY, SNAPSHOT, VOLUME, AttachStatus,
                                        ComputeSnapshotStatus as C, SnapshotStatus as S, VolumeStatus as V,
                                        set_compute_status)

LOG = logging.getLogger(__name__)

# Admin metadata keys the manager owns (the driver's own keys, e.g. "new_file", sit beside them).
PROVIDER = "provider"                 # the snapshot's provider (JSON)
PROGRESS = "compute_progress"         # compute's real progress ("40%")
ERROR = "compute_error"               # why compute's part failed (or why the volume side gave up)
DEADLINE = "deadline"                 # when the volume side stops waiting for compute (ISO, UTC)
TIMEOUT = "timeout"                   # the wait it was given (seconds), for the reason text
WORKFLOW = "workflow_id"              # the workflow that asked compute (a report wakes it)
WORKFLOW_KIND = "workflow_kind"
INFO = "assisted_info"                # what compute was asked (create_info / delete_info, JSON)
GAVE_UP_WHILE = "gave_up_while"       # compute's status when the volume side gave up (running: keep files)
_OWN = frozenset({COMPUTE_STATUS_KEY})    # never written by an upsert: only through its machine

# Legacy reports (no compute_snapshot_status: Nova before seed 002) and what they mean.
_LEGACY = {("creating", "90%"): C.DONE, ("deleting", "90%"): C.DONE}
_LEGACY_ERRORS = frozenset({"error", "error_deleting"})
# The statuses a report may name for a snapshot in each status (Cinder's update_snapshot_status).
_REPORTABLE = {S.CREATING: frozenset({"creating", "error"}), S.DELETING: frozenset({"deleting", "error_deleting"})}


class ComputeAssist(Protocol):
    """Compute's os-assisted-volume-snapshots, for the volume service (the lead wires the real
    one: in process, or over HTTP with the service credential beside the user's identity).
    Each returns once compute has accepted the request — its outcome comes later, as a report
    (``VolumeManager.report_compute_status``) — and raises ``errors.*`` when compute refuses.
    Compute is idempotent by snapshot id: a resumed workflow may ask twice."""

    def create(self, actor: Actor, server_id: str, volume_id: str, snapshot_id: str,
               create_info: dict[str, Any]) -> None: ...

    def delete(self, actor: Actor, server_id: str, volume_id: str, snapshot_id: str,
               delete_info: dict[str, Any]) -> None: ...


def _json(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


class VolumeManager:
    def __init__(self, db: Database, driver: VolumeDriver, settings: VolumeSettings,
                 compute_assist: ComputeAssist | None, images_for: Callable[[Actor], Any] | None = None,
                 scratch: Path | None = None) -> None:
        self.db = db
        self.driver = driver
        self.settings = settings
        self.compute_assist = compute_assist
        # The image API acting for a user (volumes from images; os-volume_upload_image).
        self.images_for = images_for
        self.scratch = scratch          # where images download to (default: the driver's share)

    # -- what the driver sees ------------------------------------------------------------------

    def needs_compute(self, server_id: str | None) -> bool:
        """An operation on a volume attached to a server, with a driver that cannot touch a disk a
        guest writes: compute takes (or merges) the snapshot."""
        return server_id is not None and self.driver.assisted

    def volume(self, session: Session, volume_id: str) -> Volume:
        row = session.get(Volume, volume_id)
        if row is None:
            raise errors.NotFound(f"Volume {volume_id} could not be found.")
        return row

    def snapshot(self, session: Session, snapshot_id: str) -> VolumeSnapshot:
        row = session.get(VolumeSnapshot, snapshot_id)
        if row is None:
            raise errors.NotFound(f"Snapshot {snapshot_id} could not be found.")
        return row

    def volume_ref(self, session: Session, volume_id: str) -> VolumeRef:
        row = self.volume(session, volume_id)
        return VolumeRef(row.id, row.size, _json(row.provider_location))

    def snapshot_ref(self, session: Session, snapshot_id: str) -> SnapshotRef:
        row = self.snapshot(session, snapshot_id)
        return SnapshotRef(row.id, row.volume_id, row.volume_size,
                           _json(self.admin_metadata(session, snapshot_id).get(PROVIDER)))

    def connection_info(self, session: Session, volume_id: str) -> dict[str, Any]:
        """What compute opens the volume with (the attachments API hands it out)."""
        return self.driver.connection_info(self.volume_ref(session, volume_id))

    # -- images (a volume from an image; os-volume_upload_image) --------------------------------

    @property
    def scratch_dir(self) -> Path:
        """Where a downloading image is laid down: the share itself (the same filesystem as the
        volume, so the driver's import reads it locally), else the driver's root."""
        if self.scratch is not None:
            return self.scratch
        where = getattr(self.driver, "share", None) or getattr(self.driver, "root", None)
        return Path(where) if where is not None else Path(tempfile.gettempdir())

    def download_path(self, volume_id: str) -> Path:
        return self.scratch_dir / f"volume-{volume_id}.download"

    def images(self, actor: Actor) -> Any:
        """The image API acting for ``actor`` (a ``GlanceClient``, used as a context manager)."""
        if self.images_for is None:
            raise errors.Invalid("Creating a volume from an image is not available: no image service is wired to "
                                 "this volume service")
        return self.images_for(actor)

    def image_for_volume(self, actor: Actor, image_id: str) -> Any:
        """The image a volume is to be made of, as its user sees it: it must be visible to them,
        active, and raw or qcow2 (``errors.Invalid`` saying which it is not)."""
        if self.images_for is None:
            raise errors.Invalid(f"Creating a volume from an image is not available: no image service is wired to "
                                 f"this volume service (image {image_id})")
        with self.images(actor) as images:
            try:
                image = images.show(image_id)
            except GlanceError as exc:
                if exc.status in (400, 403, 404):
                    raise errors.Invalid(f"Invalid image identifier or unable to access requested image "
                                         f"{image_id}.") from None
                raise errors.BackendUnavailable(f"The image service failed: {exc}") from None
        if image.id != image_id:
            raise errors.Invalid(f"Invalid image identifier or unable to access requested image {image_id}.")
        if image.status != "active":
            raise errors.Invalid(f"Image {image_id} is not active (it is {image.status}).")
        if image.disk_format not in imagedata.FORMATS:
            raise errors.Invalid(f"Image {image_id} has disk_format {image.disk_format!r}: a volume can be made of a "
                                 f"raw or qcow2 image only.")
        return image

    def image_downloading(self, session: Session, volume_id: str, image: Any) -> None:
        """creating -> downloading (a resumed download finds it downloading), with the image's
        metadata (Cinder's volume_glance_metadata) recorded on the volume."""
        row = self.volume(session, volume_id)
        if row.status not in (V.CREATING, V.DOWNLOADING):
            raise errors.Conflict(f"volume {volume_id} is {row.status}, not creating")
        meta = _dumps(volume_image_metadata(image))
        if row.status == V.CREATING:
            VOLUME.transition(session, volume_id, V.CREATING, V.DOWNLOADING, reason=f"downloading image {image.id}",
                              values={"image_metadata_json": meta})
        else:
            row.image_metadata_json = meta
            session.flush()

    def create_from_image(self, actor: Actor, volume: VolumeRef, image: Any,
                          progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """A volume holding ``image``'s data: downloaded (checked against its hashes) into a
        sparse scratch file on the share — zeros skipped, never written — then imported by the
        driver (qcow2file: ``qemu-img convert -n --target-is-zero`` into the pre-sized raw
        volume). Redone from scratch when resumed; the scratch file is always removed."""
        limit = volume.size * imagedata.GiB
        known = image.attrs.get("virtual_size") if image.disk_format == "qcow2" else image.size
        if known and int(known) > limit:
            raise errors.Invalid(f"Image {image.id} holds {known} bytes: more than the {volume.size} GiB volume")
        path = self.download_path(volume.id)
        try:
            with self.images(actor) as images, imagedata.SparseWriter(path) as sink:
                images.download(image, sink, progress)
            source = imagedata.inspect(path, image.disk_format, limit=limit)
            return self.driver.import_volume(volume, source)
        finally:
            path.unlink(missing_ok=True)

    def discard_download(self, volume_id: str) -> None:
        self.download_path(volume_id).unlink(missing_ok=True)

    def upload_done(self, session: Session, volume_id: str, reason: str) -> None:
        """uploading -> available (an upload's end, whichever way it ended)."""
        row = session.get(Volume, volume_id)
        if row is not None and row.status == V.UPLOADING:
            VOLUME.transition(session, volume_id, V.UPLOADING, V.AVAILABLE, reason=reason)

    # -- volumes -------------------------------------------------------------------------------

    def save_volume_provider(self, session: Session, volume_id: str, provider: dict[str, Any]) -> None:
        row = self.volume(session, volume_id)
        row.provider_location, row.updated_at = _dumps(provider), utcnow()
        session.flush()

    def volume_created(self, session: Session, volume_id: str, provider: dict[str, Any], *,
                       bootable: bool = False) -> None:
        """The driver made it: available, with its provider (``bootable``: made of an image)."""
        row = self.volume(session, volume_id)
        values: dict[str, Any] = {"provider_location": _dumps(provider), "fault": None}
        if bootable:
            values["bootable"] = True
        VOLUME.transition(session, volume_id, row.status, V.AVAILABLE, reason="created", values=values)

    def volume_create_failed(self, session: Session, volume_id: str, reason: str) -> None:
        """creating/downloading -> error with the reason (a volume in any other status, e.g.
        deleted meanwhile, is left as it is)."""
        row = session.get(Volume, volume_id)
        if row is not None and row.status in (V.CREATING, V.DOWNLOADING):
            VOLUME.transition(session, volume_id, row.status, V.ERROR, reason="create failed",
                              values={"fault": reason[:2000]})

    def volume_deleted(self, session: Session, volume_id: str) -> None:
        """deleting -> deleted; the snapshots the driver removed with it are deleted too."""
        now = utcnow()
        for snap in list(session.scalars(select(VolumeSnapshot).where(VolumeSnapshot.volume_id == volume_id,
                                                                      VolumeSnapshot.status != S.DELETED))):
            if snap.status != S.DELETING:
                SNAPSHOT.transition(session, snap.id, snap.status, S.DELETING, reason="its volume is deleted")
            SNAPSHOT.transition(session, snap.id, S.DELETING, S.DELETED, reason="its volume is deleted",
                                values={"deleted_at": now})
        VOLUME.transition(session, volume_id, V.DELETING, V.DELETED, reason="deleted", values={"deleted_at": now})

    def volume_delete_failed(self, session: Session, volume_id: str, reason: str) -> None:
        row = session.get(Volume, volume_id)
        if row is not None and row.status == V.DELETING:
            VOLUME.transition(session, volume_id, V.DELETING, V.ERROR_DELETING, reason="delete failed",
                              values={"fault": reason[:2000]})

    # -- snapshots -----------------------------------------------------------------------------

    def save_snapshot_provider(self, session: Session, snapshot_id: str, provider: dict[str, Any]) -> None:
        self.set_admin_metadata(session, snapshot_id, {PROVIDER: _dumps(provider)})

    def snapshot_created(self, session: Session, snapshot_id: str) -> None:
        SNAPSHOT.transition(session, snapshot_id, S.CREATING, S.AVAILABLE, reason="created",
                            values={"progress": "100%", "fault": None})

    def snapshot_create_failed(self, session: Session, snapshot_id: str, reason: str) -> None:
        row = session.get(VolumeSnapshot, snapshot_id)
        if row is not None and row.status == S.CREATING:
            SNAPSHOT.transition(session, snapshot_id, S.CREATING, S.ERROR, reason="create failed",
                                values={"fault": reason[:2000]})

    def snapshot_deleted(self, session: Session, snapshot_id: str) -> None:
        SNAPSHOT.transition(session, snapshot_id, S.DELETING, S.DELETED, reason="deleted",
                            values={"deleted_at": utcnow(), "fault": None})

    def snapshot_delete_failed(self, session: Session, snapshot_id: str, reason: str, *, busy: bool = False) -> None:
        """deleting -> error_deleting with the reason; a snapshot the driver found busy
        (``SnapshotIsBusy``) goes back to available, as in Cinder — its files are all there."""
        row = session.get(VolumeSnapshot, snapshot_id)
        if row is not None and row.status == S.DELETING:
            SNAPSHOT.transition(session, snapshot_id, S.DELETING, S.AVAILABLE if busy else S.ERROR_DELETING,
                                reason="busy" if busy else "delete failed", values={"fault": reason[:2000]})

    # -- admin metadata (seed 002) -------------------------------------------------------------

    def admin_metadata(self, session: Session, snapshot_id: str) -> dict[str, str]:
        rows = session.execute(select(SnapshotAdminMetadata.key, SnapshotAdminMetadata.value)
                               .where(SnapshotAdminMetadata.snapshot_id == snapshot_id))
        return {key: value for key, value in rows if value is not None}

    def set_admin_metadata(self, session: Session, snapshot_id: str, values: dict[str, str | None]) -> None:
        """Upsert keys (None removes one). compute_snapshot_status is not among them: it moves
        through its machine only."""
        if _OWN & values.keys():
            raise ValueError(f"{sorted(_OWN & values.keys())} change only through their state machine")
        if not values:
            return
        rows = {r.key: r for r in session.scalars(select(SnapshotAdminMetadata).where(
            SnapshotAdminMetadata.snapshot_id == snapshot_id, SnapshotAdminMetadata.key.in_(list(values))))}
        now = utcnow()
        for key, value in values.items():
            row = rows.get(key)
            if value is None:
                if row is not None:
                    session.delete(row)
            elif row is None:
                session.add(SnapshotAdminMetadata(snapshot_id=snapshot_id, key=key, value=str(value), created_at=now,
                                                  updated_at=now))
            elif row.value != value:
                row.value, row.updated_at = str(value), now
        session.flush()

    def apply(self, session: Session, snapshot_id: str, result: Assisted) -> bool:
        """Write what a driver's phase returned: the snapshot's provider fields, the volume's new
        provider, the admin metadata. True when the volume's provider (its active file) changed:
        the attachment's connection info is refreshed with it."""
        snap = self.snapshot(session, snapshot_id)
        md = {k: v for k, v in result.admin_metadata.items() if k not in _OWN}
        if result.snapshot:
            current = _json(self.admin_metadata(session, snapshot_id).get(PROVIDER))
            md[PROVIDER] = _dumps({**current, **result.snapshot})
        self.set_admin_metadata(session, snapshot_id, md)
        if result.volume is None:
            return False
        volume = self.volume(session, snap.volume_id)
        if _json(volume.provider_location) == result.volume:
            return False
        self.save_volume_provider(session, snap.volume_id, result.volume)
        self.refresh_connection_info(session, snap.volume_id)
        return True

    def refresh_connection_info(self, session: Session, volume_id: str) -> int:
        """The active file changed: every attached attachment of the volume gets the driver's
        connection info for it (what was there besides the driver's fields is kept). Returns how
        many were refreshed."""
        info = self.driver.connection_info(self.volume_ref(session, volume_id))
        refreshed = 0
        for att in list(session.scalars(select(VolumeAttachment).where(
                VolumeAttachment.volume_id == volume_id, VolumeAttachment.attach_status == AttachStatus.ATTACHED,
                VolumeAttachment.deleted_at.is_(None)))):
            old = _json(att.connection_info_json)
            new = {**old, **info, "data": {**(old.get("data") or {}), **(info.get("data") or {})}}
            if new != old:
                ATTACHMENT.transition(session, att.id, AttachStatus.ATTACHED, AttachStatus.ATTACHED,
                                      reason="connection info refreshed (active file changed)",
                                      values={"connection_info_json": _dumps(new)})
                refreshed += 1
        return refreshed

    # -- compute's part (seed 002) -------------------------------------------------------------

    def compute_status(self, session: Session, snapshot_id: str) -> C | None:
        value = session.scalar(select(SnapshotAdminMetadata.value).where(
            SnapshotAdminMetadata.snapshot_id == snapshot_id, SnapshotAdminMetadata.key == COMPUTE_STATUS_KEY))
        return C(value) if value else None

    def begun_by(self, session: Session, snapshot_id: str, workflow_id: str) -> bool:
        """Did this workflow already ask compute (or find it had nothing to ask)? A resumed
        begin step then goes straight to waiting."""
        return self.admin_metadata(session, snapshot_id).get(WORKFLOW) == workflow_id

    def request_compute(self, session: Session, snapshot_id: str, *, workflow_id: str, kind: str,
                        info: dict[str, Any] | None, timeout: float) -> dt.datetime | None:
        """Record what compute is asked and set compute_snapshot_status ``requested`` (from none,
        or from the done/error of an earlier operation on the snapshot) with a deadline. ``info``
        None: the driver needs nothing of compute (no status is set). Returns the deadline."""
        deadline = utcnow() + dt.timedelta(seconds=timeout) if info is not None else None
        self.set_admin_metadata(session, snapshot_id, {
            WORKFLOW: workflow_id, WORKFLOW_KIND: kind, INFO: _dumps(info), TIMEOUT: f"{timeout:g}",
            DEADLINE: deadline.isoformat(timespec="milliseconds") + "Z" if deadline else None,
            PROGRESS: None, ERROR: None, GAVE_UP_WHILE: None})
        if info is not None:
            current = self.compute_status(session, snapshot_id)
            if current != C.REQUESTED:
                set_compute_status(session, snapshot_id, current, C.REQUESTED,
                                   reason=f"asked by workflow {workflow_id}")
        return deadline

    def deadline(self, md: dict[str, str]) -> dt.datetime | None:
        try:
            return parse_isotime(md[DEADLINE])
        except (KeyError, ValueError):
            return None

    def give_up_on_compute(self, session: Session, snapshot_id: str, reason: str) -> C | None:
        """The volume side stops waiting (deadline passed, or the workflow failed otherwise):
        compare-and-set requested/running -> error, noting which it was (``running``: compute
        may be using the new file, which is then kept). A report that landed first wins: the
        status it set is returned (``done``: go on)."""
        for _ in range(3):
            current = self.compute_status(session, snapshot_id)
            if current not in (C.REQUESTED, C.RUNNING):
                return current
            try:
                set_compute_status(session, snapshot_id, current, C.ERROR, reason=reason)
            except LostRace:
                continue
            self.set_admin_metadata(session, snapshot_id, {ERROR: reason[:2000], GAVE_UP_WHILE: str(current)})
            LOG.warning("snapshot %s: gave up on compute (%s): %s", snapshot_id, current, reason)
            return C.ERROR
        return self.compute_status(session, snapshot_id)

    def report_compute_status(self, session: Session, snapshot_id: str, status: str, progress: str | None = None,
                              compute_snapshot_status: str | None = None,
                              compute_error: str | None = None) -> str | None:
        """os-update_snapshot_status (compute's report), in the API's session. Returns the
        workflow waiting for it (the caller posts it once committed: ``wake``), or None.

        With ``compute_snapshot_status`` (seed 002): requested -> running/done/error, running ->
        running/done/error (compare-and-set); ``progress`` is kept as ``compute_progress``,
        ``compute_error`` as such. Without (Nova before seed 002): creating or deleting with
        "90%" means done, error / error_deleting mean error; anything else is Invalid (400).
        A report once compute's part is over (done, error — the volume side gave up past its
        deadline) is a Conflict (409): compute stops and undoes its part."""
        snap = session.get(VolumeSnapshot, snapshot_id)
        if snap is None or snap.deleted_at is not None:
            raise errors.NotFound(f"Snapshot {snapshot_id} could not be found.")
        if status not in _REPORTABLE[S.CREATING] | _REPORTABLE[S.DELETING]:
            raise errors.Invalid(f"Invalid snapshot status {status!r} in a report: creating, deleting, error or "
                                 f"error_deleting.")
        if compute_snapshot_status is not None:
            try:
                target = C(compute_snapshot_status)
            except ValueError:
                target = None
            if target not in (C.RUNNING, C.DONE, C.ERROR):
                raise errors.Invalid(f"Invalid compute_snapshot_status {compute_snapshot_status!r}: must be "
                                     f"running, done or error.")
        elif status in _LEGACY_ERRORS:
            target = C.ERROR
        elif (status, progress) in _LEGACY:
            target = _LEGACY[(status, progress)]
        else:
            raise errors.Invalid(f"Without compute_snapshot_status a report means done with progress '90%' or "
                                 f"failed with status error/error_deleting; got status {status!r}, progress "
                                 f"{progress!r}.")
        current = self.compute_status(session, snapshot_id)
        if current is None:
            raise errors.Conflict(f"Snapshot {snapshot_id}: the volume service asked compute for nothing.")
        if current in (C.DONE, C.ERROR):
            raise errors.Conflict(f"Snapshot {snapshot_id}: compute's part is over ({current}); the volume "
                                  f"service no longer waits for it.")
        if status not in _REPORTABLE.get(S(snap.status), frozenset()):
            raise errors.Invalid(f"Provided snapshot status {status} not allowed for snapshot with status "
                                 f"{snap.status}.")
        set_compute_status(session, snapshot_id, current, target, reason=f"compute reported {status} {progress or ''}")
        md: dict[str, str | None] = {}
        if progress is not None and compute_snapshot_status is not None:
            md[PROGRESS] = str(progress)[:20]
        if target == C.DONE and compute_snapshot_status is not None:
            md[PROGRESS] = "100%"
        if target == C.ERROR:
            md[ERROR] = (compute_error or f"compute reported {status}")[:2000]
        self.set_admin_metadata(session, snapshot_id, md)
        return self.admin_metadata(session, snapshot_id).get(WORKFLOW)

    def wake(self, workflows: Any, snapshot_id: str) -> str | None:
        """Post the workflow waiting on the snapshot's compute status (after a report committed):
        its conductor looks at once. ``workflows``: the conductor's API (``Workflows``)."""
        md = self.db.run_sync(lambda s: self.admin_metadata(s, snapshot_id))
        workflow_id = md.get(WORKFLOW)
        if workflow_id:
            workflows.post(workflow_id, md.get(WORKFLOW_KIND) or "", None)
        return workflow_id


# Cinder's volume_glance_metadata: these image attributes, then the image's own properties.
_IMAGE_CORE = ("checksum", "container_format", "disk_format", "min_disk", "min_ram", "size")


def volume_image_metadata(image: Any) -> dict[str, str]:
    """What a volume made of ``image`` carries (``volume_image_metadata``, strings as Cinder
    keeps them): the image's id and name, its core attributes and its properties — but not the
    image service's and the workflows' own (``os_glance_*``, ``os_freezeframe_*``)."""
    meta = {"image_id": image.id, "image_name": image.name or ""}
    for key in _IMAGE_CORE:
        value = image.attrs.get(key)
        if value is not None:
            meta[key] = str(value)
    for key, value in image.properties.items():
        if not key.startswith(("os_glance", "os_freezeframe_")) and key not in meta:
            meta[key] = value
    return meta
