"""What the volume API asks of the image service at request time, acting for the caller (the
service credential beside their identity), so that a request it would fail later is refused
now with a 4xx and nothing made:

- a volume from an image: the image must be visible to the caller, active, raw or qcow2; the
  volume's size defaults to the image's (virtual) size in whole GiB and may not be smaller, nor
  smaller than the image's ``min_disk`` (``image_source``);
- ``os-volume_upload_image``: the image is created ``queued`` for the caller, then — in one
  transaction with the workflow's record — the volume goes available -> uploading
  (``upload_image``); anything refused after the image was made deletes it again;
- seed 003's extensions of a snapshot, for compute only (the service role):
  ``os-freezeframe:compute_initiated`` and ``os-freezeframe:owner_image_id`` on create
  (``snapshot_extensions``), the ``os-freezeframe-set_owner_image`` action (``set_owner_image``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from freezeframe.common import errors
from freezeframe.common.context import Actor, RequestContext
from freezeframe.common.strict import shown
from freezeframe.common.timeutil import isotime, utcnow
from freezeframe.images.client import GlanceError
from freezeframe.volumes import checks, imagedata, views
from freezeframe.volumes.manager import VolumeManager
from freezeframe.volumes.model import Volume, VolumeAttachment
from freezeframe.volumes.states import VOLUME, AttachStatus, VolumeStatus as V

if TYPE_CHECKING:
    from freezeframe.volumes.service import VolumeService

LOG = logging.getLogger(__name__)
UPLOAD = "os-volume_upload_image"
SET_OWNER = "os-freezeframe-set_owner_image"
COMPUTE_INITIATED = "os-freezeframe:compute_initiated"
OWNER_IMAGE = "os-freezeframe:owner_image_id"
VISIBILITIES = ("private", "shared", "community", "public")
GONE = frozenset({"deleted", "killed", "pending_delete"})     # an owner image in these is gone
# Image attributes a volume's volume_image_metadata holds that an image made of it must not take
# over (the image service sets them, or they described the other image).
_NOT_INHERITED = frozenset({"image_id", "image_name", "checksum", "size", "disk_format", "container_format",
                            "min_disk", "min_ram", "os_hash_algo", "os_hash_value", "virtual_size"})


# -- a volume from an image ------------------------------------------------------------------

def image_source(manager: VolumeManager, actor: Actor, image_id: str, size: int | None, maximum: int) -> int:
    """The size (GiB) of a volume made of image ``image_id``, checked against the image."""
    image = manager.image_for_volume(actor, image_id)
    data = image.attrs.get("virtual_size") or image.size or 0
    needed = imagedata.gib(int(data))
    min_disk = int(image.attrs.get("min_disk") or 0)
    if size is None:
        size = max(needed, min_disk)
        if size > maximum:
            raise errors.Invalid(f"Image {image_id} needs a {size} GiB volume: more than the largest allowed here "
                                 f"({maximum} GiB)")
    if size < needed:
        raise errors.Invalid(f"Invalid input received: Size of specified image {needed}GB is larger than volume size "
                             f"{size}GB.")
    if size < min_disk:
        raise errors.Invalid(f"Invalid input received: Volume size {size}GB cannot be smaller than the image minDisk "
                             f"size {min_disk}GB.")
    return size


# -- os-volume_upload_image ------------------------------------------------------------------

@dataclass(frozen=True)
class UploadRequest:
    image_name: str
    force: bool
    disk_format: str
    container_format: str
    visibility: str
    protected: bool


def upload_request(inner: dict[str, Any]) -> UploadRequest:
    """Cinder's os-volume_upload_image body, checked (400s naming the field)."""
    name = inner.get("image_name")
    if not isinstance(name, str) or not name.strip():
        raise errors.Invalid("No image_name was specified in request.")
    name = checks.optional_text(inner, "image_name") or name
    force = checks.boolean(inner["force"], "force") if inner.get("force") is not None else False
    disk_format = inner.get("disk_format", "raw")
    if disk_format not in imagedata.FORMATS:
        raise errors.Invalid(f"Invalid disk-format {shown(disk_format)}: a volume uploads as raw or qcow2 here")
    container_format = inner.get("container_format", "bare")
    if container_format != "bare":
        raise errors.Invalid(f"Invalid container-format {shown(container_format)}: only bare is supported here")
    visibility = inner.get("visibility", "private")
    if visibility not in VISIBILITIES:
        raise errors.Invalid(f"Invalid visibility {shown(visibility)}: one of {', '.join(VISIBILITIES)}")
    protected = checks.boolean(inner["protected"], "protected") if inner.get("protected") is not None else False
    return UploadRequest(name, force, disk_format, container_format, visibility, protected)


def _uploadable(session: Session, vol: Volume) -> None:
    attached = session.scalar(select(VolumeAttachment.id).where(
        VolumeAttachment.volume_id == vol.id, VolumeAttachment.attach_status != AttachStatus.DETACHED).limit(1))
    if vol.status == V.IN_USE or attached is not None:
        raise errors.Invalid(f"Invalid volume: Volume {vol.id} is attached: detach it first (an attached volume is "
                             "read inconsistently)")
    if vol.status != V.AVAILABLE:
        raise errors.Invalid(f"Invalid volume: Volume {vol.id} status must be available to upload it to an image "
                             f"(it is {vol.status})")


def _image_error(exc: GlanceError) -> errors.FreezeframeError:
    if exc.status in (401, 403):
        return errors.Forbidden(f"The image service refused the image: {exc.message}")
    if exc.status == 413:
        return errors.QuotaExceeded(f"The image service refused the image: {exc.message}")
    if exc.status and exc.status < 500:
        return errors.Invalid(f"The image service refused the image: {exc.message}")
    return errors.BackendUnavailable(f"The image service failed: {exc}")


async def upload_image(service: VolumeService, ctx: RequestContext, volume_id: str,
                       inner: dict[str, Any]) -> dict[str, Any]:
    """Cinder's os-volume_upload_image: 202 with {"os-volume_upload_image": {...}}; the data
    follows as workflow ``volume-upload-image``."""
    req = upload_request(inner)
    rule = "volume_extension:volume_actions:upload_image"

    def check(session: Session) -> dict[str, str]:
        vol = service._volume(session, ctx, volume_id, rule)
        _uploadable(session, vol)
        return json.loads(vol.image_metadata_json or "{}")
    inherited = await service.db.run(check)
    workflow_id = service.workflows.new_id()
    attrs: dict[str, Any] = {
        **{k: v for k, v in inherited.items() if k not in _NOT_INHERITED and isinstance(v, str)},
        "name": req.image_name, "disk_format": req.disk_format, "container_format": req.container_format,
        "visibility": req.visibility, "protected": False,        # protected at the end: a failure must delete it
        "os_freezeframe_workflow_id": workflow_id,                # the image reaper sees whose it is
    }

    def create() -> str:
        with service.manager.images(ctx.actor) as images:
            try:
                return images.create(attrs).id
            except GlanceError as exc:
                raise _image_error(exc) from None
    image_id = await service.pool.run(create)

    def uploading(session: Session, _workflow_id: str) -> None:
        vol = service._volume(session, ctx, volume_id, rule)
        _uploadable(session, vol)
        VOLUME.transition(session, vol.id, V.AVAILABLE, V.UPLOADING, reason=f"uploading to image {image_id}")
    params = {"image_id": image_id, "disk_format": req.disk_format, "protected": req.protected}
    try:
        await service.pool.run(lambda: service.workflows.submit(
            "volume-upload-image", "volume", volume_id, params, ctx.actor, image_id=image_id,
            workflow_id=workflow_id, request_id=ctx.request_id, also=uploading))
    except BaseException:
        await service.pool.run(_delete_image, service.manager, ctx.actor, image_id)
        raise
    vol = await service.db.run(lambda s: service._volume(s, ctx, volume_id))
    return {UPLOAD: {
        "id": vol.id, "updated_at": isotime(vol.updated_at), "status": "uploading",
        "display_description": vol.description, "size": vol.size,
        "volume_type": views.volume_type_view(service.settings.default_type, _default_type_id()),
        "image_id": image_id, "container_format": req.container_format, "disk_format": req.disk_format,
        "image_name": req.image_name, "visibility": req.visibility, "protected": req.protected,
    }}


def _default_type_id() -> str:
    from freezeframe.volumes.service import DEFAULT_TYPE_ID
    return DEFAULT_TYPE_ID


def _delete_image(manager: VolumeManager, actor: Actor, image_id: str) -> None:
    with manager.images(actor) as images:
        try:
            images.delete(image_id)
        except GlanceError as exc:
            if exc.status != 404:
                LOG.warning("could not delete image %s of a refused upload: %s", image_id, exc)


# -- seed 003: snapshots compute makes for an instance snapshot ------------------------------

def snapshot_extensions(service: VolumeService, ctx: RequestContext, inner: dict[str, Any]) -> tuple[bool, str | None]:
    """(compute_initiated, owner_image_id) of a snapshot create; either needs the service role."""
    initiated = inner.get(COMPUTE_INITIATED)
    owner = inner.get(OWNER_IMAGE)
    if initiated is not None:
        service.policy.authorize(ctx, "freezeframe:volume:snapshot_compute_initiated", {"project_id": ctx.project_id})
        initiated = checks.boolean(initiated, COMPUTE_INITIATED)
    if owner is not None:
        service.policy.authorize(ctx, "freezeframe:volume:snapshot_owner_image", {"project_id": ctx.project_id})
        owner = checks.uuid_field(owner, OWNER_IMAGE)
    return bool(initiated), owner


def check_owner_image(manager: VolumeManager, actor: Actor, image_id: str) -> None:
    """An owner image must exist (and not be dead) when it is named: the sweep deletes a
    snapshot whose owner image is gone, so a wrong id would delete it."""
    with manager.images(actor) as images:
        try:
            image = images.show(image_id)
        except GlanceError as exc:
            if exc.status in (400, 403, 404):
                raise errors.Invalid(f"Invalid input: owner image {image_id} could not be found.") from None
            raise errors.BackendUnavailable(f"The image service failed: {exc}") from None
    if image.status in GONE:
        raise errors.Invalid(f"Invalid input: owner image {image_id} is {image.status}.")


async def set_owner_image(service: VolumeService, ctx: RequestContext, snapshot_id: str,
                          inner: dict[str, Any]) -> None:
    """``{"os-freezeframe-set_owner_image": {"image_id": <uuid>|null}}`` (service role)."""
    if "image_id" not in inner:
        raise errors.Invalid(f"Missing required element 'image_id' in {SET_OWNER}")
    image_id = inner["image_id"]
    if image_id is not None:
        image_id = checks.uuid_field(image_id, "image_id")

    def find(session: Session):
        return service._snapshot(session, ctx, snapshot_id, "freezeframe:volume:snapshot_owner_image")
    await service.db.run(find)
    if image_id is not None:
        await service.pool.run(check_owner_image, service.manager, ctx.actor, image_id)

    def set_owner(session: Session) -> None:
        snap = service._snapshot(session, ctx, snapshot_id, "freezeframe:volume:snapshot_owner_image")
        if snap.status in ("deleting", "deleted"):
            raise errors.Invalid(f"Invalid snapshot: Snapshot {snapshot_id} is {snap.status}")
        snap.owner_image_id = image_id
        snap.updated_at = utcnow()
    await service.db.run(set_owner)
