"""The volume service: Cinder's API layer over the volume tables. What takes time (creating,
deleting, snapshotting) is handed to the conductor as a workflow (``volumes/workflows``), run by
the volume manager with the driver; what is quick (metadata, status checks, attachments, an
extend) is done here. Every status change goes through the declared machines
(``volumes/states.py``): an illegal one is a 400/409 naming both states, never written.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from freezeframe.common import errors
from freezeframe.common.context import RequestContext
from freezeframe.common.policy import Policy
from freezeframe.common.pools import BoundedPool
from freezeframe.common.strict import parse_uint, shown
from freezeframe.common.timeutil import utcnow
from freezeframe.conductor.service import Workflows
from freezeframe.db.session import Database
from freezeframe.settings import VolumeSettings
from freezeframe.volumes import checks, image_requests, queries
from freezeframe.volumes.drivers.base import VolumeRef
from freezeframe.volumes.model import SnapshotAdminMetadata, Volume, VolumeAttachment, VolumeSnapshot
from freezeframe.volumes.states import (ATTACHMENT, SNAPSHOT, SNAPSHOT_RESET_TO, VOLUME, VOLUME_RESET_TO, AttachStatus,
                                        SnapshotStatus, VolumeStatus)

LOG = logging.getLogger(__name__)
V, S, A = VolumeStatus, SnapshotStatus, AttachStatus
DEFAULT_TYPE_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "freezeframe:volume-type:__DEFAULT__"))
VOLUME_SORT_KEYS = {"id", "name", "status", "size", "created_at", "updated_at", "availability_zone", "bootable"}
VOLUME_FILTERS = {"name", "status", "bootable", "availability_zone", "metadata", "volume_type", "size", "user_id"}
SNAPSHOT_SORT_KEYS = {"id", "name", "status", "created_at", "updated_at", "volume_id"}
SNAPSHOT_FILTERS = {"name", "status", "volume_id", "metadata"}
ATTACHMENT_SORT_KEYS = {"id", "created_at", "updated_at", "volume_id", "instance_uuid", "attach_status"}
DELETABLE = (V.AVAILABLE, V.ERROR, V.ERROR_EXTENDING)


def volume_ref(vol: Volume) -> VolumeRef:
    return VolumeRef(id=vol.id, size=vol.size, provider=json.loads(vol.provider_location or "{}"))


class VolumeService:
    def __init__(self, db: Database, workflows: Workflows, *, policy: Policy, settings: VolumeSettings,
                 manager: Any) -> None:
        self.db = db
        self.workflows = workflows
        self.policy = policy
        self.settings = settings
        self.manager = manager          # the volume manager: its driver, compute's reports
        self.pool = BoundedPool("volume", workers=4, queue=16)

    # -- volumes ---------------------------------------------------------------------------------

    def _volume(self, session: Session, ctx: RequestContext, volume_id: str, action: str | None = None) -> Volume:
        vol = queries.visible(session, Volume, ctx, volume_id, "Volume")
        if action is not None:
            self.policy.authorize(ctx, action, {"project_id": vol.project_id})
        return vol

    def _snapshot(self, session: Session, ctx: RequestContext, snapshot_id: str,
                  action: str | None = None) -> VolumeSnapshot:
        snap = queries.visible(session, VolumeSnapshot, ctx, snapshot_id, "Snapshot")
        if action is not None:
            self.policy.authorize(ctx, action, {"project_id": snap.project_id})
        return snap

    async def create_volume(self, ctx: RequestContext, body: Any, version) -> Volume:
        inner = checks.body_of(body, "volume")
        self.policy.authorize(ctx, "volume:create", {"project_id": ctx.project_id})
        name = checks.optional_text(inner, "name")
        description = checks.optional_text(inner, "description")
        metadata = checks.metadata(inner.get("metadata"))
        if inner.get("multiattach") not in (None, False):
            raise errors.Invalid("multiattach volumes are not supported by this volume service")
        az = inner.get("availability_zone")
        if az not in (None, "", self.settings.availability_zone):
            raise errors.Invalid(f"Availability zone {shown(az)} is invalid: the only zone is "
                                 f"{self.settings.availability_zone!r}")
        vtype = inner.get("volume_type")
        if vtype not in (None, "", self.settings.default_type, DEFAULT_TYPE_ID):
            raise errors.NotFound(f"Volume type with name {shown(vtype)} could not be found.")
        sources = {k: inner.get(k) for k in ("snapshot_id", "source_volid", "imageRef", "image_id", "backup_id")
                   if inner.get(k) is not None}
        if "imageRef" in sources and "image_id" in sources:
            sources.pop("image_id")
        if len(sources) > 1:
            raise errors.Invalid(f"Only one of snapshot_id, source_volid and imageRef may be given, not "
                                 f"{', '.join(sorted(sources))}")
        if "backup_id" in sources:
            raise errors.Invalid("Volumes from backups are not supported by this volume service")
        size = checks.size(inner["size"], maximum=self.settings.max_size) if inner.get("size") is not None else None
        if "imageRef" in sources or "image_id" in sources:      # visible, active, raw/qcow2, fits (400s)
            image_ref = checks.uuid_field(sources.get("imageRef", sources.get("image_id")), "imageRef")
            size = await self.pool.run(image_requests.image_source, self.manager, ctx.actor, image_ref, size,
                                       self.settings.max_size)
        params: dict[str, Any] = {"source": "blank"}
        volume_id = str(uuid.uuid4())

        def record(session: Session) -> Volume:
            nonlocal size
            snapshot_id = source_volid = image_id = None
            if "snapshot_id" in sources:
                snapshot_id = checks.uuid_field(sources["snapshot_id"], "snapshot_id")
                snap = self._snapshot(session, ctx, snapshot_id)
                if snap.status != S.AVAILABLE:
                    raise errors.Invalid(f"Invalid snapshot: Originating snapshot status must be one of 'available' "
                                         f"values (snapshot {snapshot_id} is {snap.status})")
                size = size if size is not None else snap.volume_size
                if size < snap.volume_size:
                    raise errors.Invalid(f"Invalid input received: Volume size '{size}'GB cannot be smaller than "
                                         f"the snapshot size {snap.volume_size}GB. They must be >= original "
                                         "snapshot size.")
                params.update(source="snapshot", snapshot_id=snapshot_id)
            elif "source_volid" in sources:
                source_volid = checks.uuid_field(sources["source_volid"], "source_volid")
                src = self._volume(session, ctx, source_volid)
                if src.status != V.AVAILABLE:
                    raise errors.Invalid(f"Invalid volume: the source volume {source_volid} is {src.status}; it "
                                         "must be available to be cloned")
                size = size if size is not None else src.size
                if size < src.size:
                    raise errors.Invalid(f"Invalid input received: Volume size '{size}'GB cannot be smaller than "
                                         f"the source volume size {src.size}GB.")
                params.update(source="volume", source_volid=source_volid)
            elif "imageRef" in sources or "image_id" in sources:
                image_id = checks.uuid_field(sources.get("imageRef", sources.get("image_id")), "imageRef")
                params.update(source="image", image_id=image_id)
            if size is None:
                raise errors.Invalid("Invalid input for field/attribute size: a size is required for a blank volume")
            vol = Volume(id=volume_id, name=name, description=description, project_id=ctx.project_id,
                         user_id=ctx.user_id, size=size, status=V.CREATING, attach_status="detached",
                         availability_zone=self.settings.availability_zone, volume_type=self.settings.default_type,
                         snapshot_id=snapshot_id, source_volid=source_volid, image_id=image_id,
                         host=self.settings.host, metadata_json=json.dumps(metadata))
            session.add(vol)
            session.flush()
            return vol

        vol = await self.db.run(record)
        await self.pool.run(self.workflows.submit, "volume-create", "volume", volume_id, params, ctx.actor)
        return vol

    async def show_volume(self, ctx: RequestContext, volume_id: str) -> tuple[Volume, list[VolumeAttachment]]:
        def find(session: Session):
            vol = self._volume(session, ctx, volume_id, "volume:get")
            return vol, _attachments(session, [vol.id]).get(vol.id, [])
        return await self.db.run(find)

    async def list_volumes(self, ctx: RequestContext, params: dict[str, str], *, detail: bool, with_count: bool):
        self.policy.authorize(ctx, "volume:get_all", {"project_id": ctx.project_id})
        listing = queries.parse_listing(ctx, params, sort_keys=VOLUME_SORT_KEYS, filter_keys=VOLUME_FILTERS,
                                        with_count_allowed=with_count)
        size = parse_uint("size", listing.filters["size"], maximum=2**31 - 1) if "size" in listing.filters else None

        def find(session: Session):
            conditions = queries.scoped(Volume, ctx, listing)
            f = listing.filters
            for key in ("name", "status", "availability_zone", "user_id"):
                if key in f:
                    conditions.append(getattr(Volume, key) == f[key])
            if size is not None:
                conditions.append(Volume.size == size)
            if "bootable" in f:
                conditions.append(Volume.bootable.is_(f["bootable"]))
            if "volume_type" in f and f["volume_type"] not in (self.settings.default_type, DEFAULT_TYPE_ID):
                conditions.append(Volume.id.is_(None))      # no volume has another type
            wanted = f.get("metadata")
            rows, count = queries.page(session, Volume, conditions, listing, "Volume",
                                       keep=(lambda r: _matches(json.loads(r.metadata_json), wanted)) if wanted else None)
            return rows, count, (_attachments(session, [r.id for r in rows]) if detail else {})
        rows, count, attached = await self.db.run(find)
        return rows, count, attached, listing

    async def update_volume(self, ctx: RequestContext, volume_id: str, body: Any) -> Volume:
        inner = checks.body_of(body, "volume")
        unknown = set(inner) - {"name", "description", "metadata", "display_name", "display_description"}
        if unknown:
            raise errors.Invalid(f"Invalid input: {', '.join(sorted(unknown))} cannot be updated")
        if not inner:
            raise errors.Invalid("Invalid input: nothing to update (name, description or metadata)")
        name = checks.optional_text(inner, "name") if "name" in inner else None
        description = checks.optional_text(inner, "description") if "description" in inner else None
        meta = checks.metadata(inner["metadata"]) if "metadata" in inner else None

        def update(session: Session) -> Volume:
            vol = self._volume(session, ctx, volume_id, "volume:update")
            if "name" in inner:
                vol.name = name
            if "description" in inner:
                vol.description = description
            if meta is not None:
                vol.metadata_json = json.dumps(meta)
            vol.updated_at = utcnow()
            return vol
        return await self.db.run(update)

    async def delete_volume(self, ctx: RequestContext, volume_id: str, *, force: bool = False,
                            cascade: bool = False) -> None:
        def mark(session: Session) -> None:
            vol = self._volume(session, ctx, volume_id, "volume:force_delete" if force else "volume:delete")
            attached = _attachments(session, [vol.id]).get(vol.id)
            if attached or vol.status == V.IN_USE:
                raise errors.Invalid(f"Invalid volume: Volume {volume_id} is attached: detach it first")
            snaps = session.scalars(select(VolumeSnapshot).where(VolumeSnapshot.volume_id == vol.id,
                                                                 VolumeSnapshot.status != S.DELETED)).all()
            if snaps and not cascade:
                raise errors.Invalid(f"Invalid volume: Volume {volume_id} still has {len(snaps)} dependent "
                                     "snapshot(s): delete them first (or use cascade=true)")
            if cascade:
                busy = [s.id for s in snaps if s.status not in (S.AVAILABLE, S.ERROR)]
                if busy:
                    raise errors.Invalid(f"Invalid volume: its snapshot(s) {', '.join(busy)} are not available or "
                                         "error: they cannot be deleted with it now")
                owned = [s for s in snaps if s.owner_image_id]
                if owned:
                    raise errors.Invalid(f"Invalid volume: its snapshot {owned[0].id} belongs to image "
                                         f"{owned[0].owner_image_id}: delete that image first")
            if not force and vol.status not in DELETABLE:
                raise errors.Invalid(f"Invalid volume: Volume status must be available or error or error_extending "
                                     f"and must not be attached or have snapshots (volume {volume_id} is "
                                     f"{vol.status})")
            if force and vol.status == V.DELETING:
                return
            VOLUME.transition(session, vol.id, vol.status, V.DELETING,
                              reason="force delete" if force else "delete requested")
            for snap in snaps if cascade else ():
                SNAPSHOT.transition(session, snap.id, snap.status, S.DELETING, reason="deleted with its volume")
        await self.db.run(mark)
        await self.pool.run(self.workflows.submit, "volume-delete", "volume", volume_id, {"cascade": cascade},
                            ctx.actor)

    async def volume_action(self, ctx: RequestContext, volume_id: str, name: str, args: Any) -> dict[str, Any] | None:
        if name == "os-extend":
            new_size = checks.size(checks.body_of({name: args}, name).get("new_size"),
                                   maximum=self.settings.max_size, field="new_size")
            await self.extend(ctx, volume_id, new_size)
            return None
        if name == "os-reset_status":
            inner = checks.body_of({name: args}, name)
            await self.reset_volume_status(ctx, volume_id, inner)
            return None
        if name == "os-force_delete":
            await self.delete_volume(ctx, volume_id, force=True)
            return None
        if name == image_requests.UPLOAD:
            return await image_requests.upload_image(self, ctx, volume_id, checks.body_of({name: args}, name))
        if name in ("os-set_bootable", "os-update_readonly_flag"):
            field = "bootable" if name == "os-set_bootable" else "readonly"
            inner = checks.body_of({name: args}, name)
            if field not in inner:
                raise errors.Invalid(f"Missing required element '{field}' in {name}")
            value = checks.boolean(inner[field], field)

            def flag(session: Session) -> None:
                vol = self._volume(session, ctx, volume_id, "volume:update")
                setattr(vol, field, value)
                vol.updated_at = utcnow()
            await self.db.run(flag)
            return None
        raise errors.Invalid(f"There is no such action: {shown(name)}")

    async def extend(self, ctx: RequestContext, volume_id: str, new_size: int) -> None:
        def begin(session: Session) -> Volume:
            vol = self._volume(session, ctx, volume_id, "volume:extend")
            if vol.status != V.AVAILABLE:
                raise errors.Invalid(f"Invalid volume: Volume {volume_id} status must be available to extend "
                                     f"(it is {vol.status})")
            if new_size <= vol.size:
                raise errors.Invalid(f"Invalid input received: New size for extend must be greater than current "
                                     f"size. (current: {vol.size}, extended: {new_size}).")
            VOLUME.transition(session, vol.id, V.AVAILABLE, V.EXTENDING, reason=f"extend to {new_size} GiB")
            return vol
        vol = await self.db.run(begin)
        try:
            provider = await self.pool.run(self.manager.driver.extend_volume, volume_ref(vol), new_size)
        except Exception as exc:
            fault = str(exc)[:1000]
            await self.db.run(lambda s: VOLUME.transition(s, volume_id, V.EXTENDING, V.ERROR_EXTENDING,
                                                          reason="extend failed", values={"fault": fault}))
            LOG.error("volume %s: extend failed: %s", volume_id, exc)
            raise errors.HostFault(f"extending volume {volume_id} failed: {exc}") from exc
        await self.db.run(lambda s: VOLUME.transition(
            s, volume_id, V.EXTENDING, V.AVAILABLE, reason=f"extended to {new_size} GiB",
            values={"size": new_size, "provider_location": json.dumps(provider)}))

    async def reset_volume_status(self, ctx: RequestContext, volume_id: str, inner: dict[str, Any]) -> None:
        status = inner.get("status")
        if status is None and "attach_status" not in inner:
            raise errors.Invalid("Must specify 'status', 'attach_status' or 'migration_status' for update.")
        if status is not None and status not in [str(s) for s in VOLUME_RESET_TO]:
            raise errors.Invalid(f"Invalid input received: {shown(status)} is not a valid status for a reset "
                                 f"(use one of {', '.join(str(s) for s in VOLUME_RESET_TO)})")
        attach = inner.get("attach_status")
        if attach is not None and attach not in ("attached", "detached"):
            raise errors.Invalid(f"Invalid input received: attach_status {shown(attach)} must be attached or "
                                 "detached")

        def reset(session: Session) -> None:
            vol = self._volume(session, ctx, volume_id, "volume_extension:volume_admin_actions:reset_status")
            if status is not None and status != vol.status:
                VOLUME.transition(session, vol.id, vol.status, status, reason="reset by an admin")
            if attach is not None:
                session.get(Volume, vol.id).attach_status = attach
        await self.db.run(reset)

    # -- metadata (volumes and snapshots alike) -------------------------------------------------

    async def metadata(self, ctx: RequestContext, kind: str, row_id: str, *, replace: dict | None = None,
                       merge: dict | None = None, delete_key: str | None = None) -> dict[str, str]:
        model, get = (Volume, self._volume) if kind == "volume" else (VolumeSnapshot, self._snapshot)
        writing = replace is not None or merge is not None or delete_key is not None
        rule = ("volume:update_volume_metadata" if kind == "volume" else "volume:update_snapshot_metadata") \
            if writing else ("volume:get" if kind == "volume" else "volume:get_snapshot")

        def run(session: Session) -> dict[str, str]:
            row = get(session, ctx, row_id, rule)
            current = json.loads(row.metadata_json or "{}")
            if delete_key is not None:
                if delete_key not in current:
                    raise errors.NotFound(f"Metadata key {shown(delete_key)} could not be found for {kind} {row_id}.")
                current.pop(delete_key)
            elif replace is not None:
                current = checks.metadata(replace)
            elif merge is not None:
                current = checks.metadata({**current, **merge})
            if writing:
                row.metadata_json = json.dumps(current)
                row.updated_at = utcnow()
            return current
        return await self.db.run(run)

    # -- snapshots -------------------------------------------------------------------------------

    async def create_snapshot(self, ctx: RequestContext, body: Any, version) -> VolumeSnapshot:
        inner = checks.body_of(body, "snapshot")
        volume_id = checks.uuid_field(inner.get("volume_id"), "volume_id")
        name = checks.optional_text(inner, "name") if "name" in inner else checks.optional_text(inner, "display_name")
        description = checks.optional_text(inner, "description")
        metadata = checks.metadata(inner.get("metadata"))
        force = checks.boolean(inner["force"], "force") if inner.get("force") is not None else None
        compute_initiated, owner_image_id = image_requests.snapshot_extensions(self, ctx, inner)   # seed 003
        if owner_image_id is not None:
            await self.pool.run(image_requests.check_owner_image, self.manager, ctx.actor, owner_image_id)
        snapshot_id = str(uuid.uuid4())

        def record(session: Session) -> tuple[VolumeSnapshot, str | None]:
            vol = self._volume(session, ctx, volume_id, "volume:create_snapshot")
            server_id = None
            if vol.status == V.IN_USE:
                if compute_initiated:
                    pass            # compute snapshots the attached disk itself (its instance snapshot)
                elif version >= (3, 66):
                    if force is False:
                        raise errors.Invalid("Invalid parameter: force may not be false from microversion 3.66: "
                                             "a snapshot of an in-use volume is always allowed")
                elif not force:
                    raise errors.Invalid(f"Invalid volume: Volume {volume_id} status must be available, but current "
                                         "status is: in-use (use force=true to snapshot an attached volume)")
                server_id = _server_of(session, vol.id)
            elif vol.status != V.AVAILABLE:
                raise errors.Invalid(f"Invalid volume: Volume {volume_id} status must be available or in-use, but "
                                     f"current status is: {vol.status}")
            if compute_initiated and server_id is None:
                raise errors.Invalid(f"Invalid volume: {image_requests.COMPUTE_INITIATED} is for an attached "
                                     f"volume, and volume {volume_id} is {vol.status}")
            _no_chain_work(session, vol.id)
            snap = VolumeSnapshot(id=snapshot_id, volume_id=vol.id, name=name, description=description,
                                  project_id=ctx.project_id, user_id=ctx.user_id, volume_size=vol.size,
                                  status=S.CREATING, progress="0%", metadata_json=json.dumps(metadata),
                                  owner_image_id=owner_image_id)
            session.add(snap)
            session.flush()
            return snap, server_id
        snap, server_id = await self.db.run(record)
        await self.pool.run(self.workflows.submit, "volume-snapshot-create", "snapshot", snapshot_id,
                            {"server_id": server_id, "volume_id": volume_id,
                             **({"compute_initiated": True} if compute_initiated else {})}, ctx.actor)
        return snap

    async def show_snapshot(self, ctx: RequestContext, snapshot_id: str) -> VolumeSnapshot:
        return await self.db.run(lambda s: self._snapshot(s, ctx, snapshot_id, "volume:get_snapshot"))

    async def list_snapshots(self, ctx: RequestContext, params: dict[str, str], *, with_count: bool):
        self.policy.authorize(ctx, "volume:get_all_snapshots", {"project_id": ctx.project_id})
        listing = queries.parse_listing(ctx, params, sort_keys=SNAPSHOT_SORT_KEYS, filter_keys=SNAPSHOT_FILTERS,
                                        with_count_allowed=with_count)

        def find(session: Session):
            conditions = queries.scoped(VolumeSnapshot, ctx, listing)
            for key in ("name", "status", "volume_id"):
                if key in listing.filters:
                    conditions.append(getattr(VolumeSnapshot, key) == listing.filters[key])
            wanted = listing.filters.get("metadata")
            rows, count = queries.page(session, VolumeSnapshot, conditions, listing, "Snapshot",
                                       keep=(lambda r: _matches(json.loads(r.metadata_json), wanted)) if wanted else None)
            return rows, count
        rows, count = await self.db.run(find)
        return rows, count, listing

    async def update_snapshot(self, ctx: RequestContext, snapshot_id: str, body: Any) -> VolumeSnapshot:
        inner = checks.body_of(body, "snapshot")
        unknown = set(inner) - {"name", "description", "display_name", "display_description"}
        if unknown or not inner:
            raise errors.Invalid("Invalid input: only name and description of a snapshot can be updated")
        name = checks.optional_text(inner, "name") if "name" in inner else None
        description = checks.optional_text(inner, "description") if "description" in inner else None

        def update(session: Session) -> VolumeSnapshot:
            snap = self._snapshot(session, ctx, snapshot_id, "volume:update_snapshot")
            if "name" in inner:
                snap.name = name
            if "description" in inner:
                snap.description = description
            snap.updated_at = utcnow()
            return snap
        return await self.db.run(update)

    async def delete_snapshot(self, ctx: RequestContext, snapshot_id: str, *, force: bool = False) -> None:
        def mark(session: Session) -> tuple[str, str | None]:
            rule = "volume_extension:snapshot_admin_actions:force_delete" if force else "volume:delete_snapshot"
            snap = self._snapshot(session, ctx, snapshot_id, rule)
            if snap.owner_image_id:
                raise errors.Invalid(f"Invalid snapshot: Snapshot {snapshot_id} is part of image "
                                     f"{snap.owner_image_id} (its block_device_mapping references it): delete the "
                                     "image to delete it")
            if not force and snap.status not in (S.AVAILABLE, S.ERROR):
                raise errors.Invalid(f"Invalid snapshot: Snapshot status must be available or error (snapshot "
                                     f"{snapshot_id} is {snap.status})")
            if force and snap.status == S.DELETING:
                raise errors.Invalid(f"Invalid snapshot: Snapshot {snapshot_id} is already being deleted")
            _no_chain_work(session, snap.volume_id, excluding=snap.id)
            SNAPSHOT.transition(session, snap.id, snap.status, S.DELETING,
                                reason="force delete" if force else "delete requested")
            vol = session.get(Volume, snap.volume_id)
            return snap.volume_id, _server_of(session, vol.id) if vol.status == V.IN_USE else None
        volume_id, server_id = await self.db.run(mark)
        await self.pool.run(self.workflows.submit, "volume-snapshot-delete", "snapshot", snapshot_id,
                            {"server_id": server_id, "volume_id": volume_id}, ctx.actor)

    async def snapshot_action(self, ctx: RequestContext, snapshot_id: str, name: str, args: Any) -> None:
        if name == "os-force_delete":
            await self.delete_snapshot(ctx, snapshot_id, force=True)
            return
        inner = checks.body_of({name: args}, name)
        if name == "os-reset_status":
            status = inner.get("status")
            if status not in [str(s) for s in SNAPSHOT_RESET_TO]:
                raise errors.Invalid(f"Invalid input received: {shown(status)} is not a valid snapshot status for "
                                     f"a reset (use one of {', '.join(str(s) for s in SNAPSHOT_RESET_TO)})")

            def reset(session: Session) -> None:
                snap = self._snapshot(session, ctx, snapshot_id, "volume_extension:snapshot_admin_actions:reset_status")
                if snap.status != status:
                    SNAPSHOT.transition(session, snap.id, snap.status, status, reason="reset by an admin")
            await self.db.run(reset)
            return
        if name == "os-update_snapshot_status":
            await self.update_snapshot_status(ctx, snapshot_id, inner)
            return
        if name == image_requests.SET_OWNER:
            await image_requests.set_owner_image(self, ctx, snapshot_id, inner)
            return
        raise errors.Invalid(f"There is no such action: {shown(name)}")

    async def update_snapshot_status(self, ctx: RequestContext, snapshot_id: str, inner: dict[str, Any]) -> None:
        """Compute reports its part of an assisted snapshot (seed 002): ``compute_snapshot_status``
        (or, from an older compute, ``progress`` '90%' as before). The waiting workflow is woken."""
        status = inner.get("status")
        if not isinstance(status, str):
            raise errors.Invalid("Invalid input: 'status' is required in os-update_snapshot_status")
        progress = inner.get("progress")
        if progress is not None and (not isinstance(progress, str) or len(progress) > 10):
            raise errors.Invalid(f"Invalid input: progress {shown(progress)} must be a string such as '40%'")
        compute = inner.get("compute_snapshot_status")
        if compute is not None and not isinstance(compute, str):
            raise errors.Invalid("Invalid input: compute_snapshot_status must be a string")
        compute_error = checks.optional_text(inner, "compute_error", limit=2000)

        def report(session: Session) -> str | None:
            self._snapshot(session, ctx, snapshot_id,
                           "snapshot_extension:snapshot_actions:update_snapshot_status")
            return self.manager.report_compute_status(session, snapshot_id, status, progress, compute, compute_error)
        if await self.db.run(report) is not None:       # committed: wake the workflow waiting for it
            await self.pool.run(self.manager.wake, self.workflows, snapshot_id)

    async def admin_metadata(self, ctx: RequestContext, snapshot_id: str) -> dict[str, str | None]:
        def find(session: Session) -> dict[str, str | None]:
            snap = self._snapshot(session, ctx, snapshot_id)
            self.policy.authorize(ctx, "freezeframe:volume:snapshot_admin_metadata", {"project_id": snap.project_id})
            rows = session.scalars(select(SnapshotAdminMetadata).where(SnapshotAdminMetadata.snapshot_id == snap.id)
                                   .order_by(SnapshotAdminMetadata.key))
            return {r.key: r.value for r in rows}
        return await self.db.run(find)

    # -- attachments (the 3.27+ API compute uses) ------------------------------------------------

    async def create_attachment(self, ctx: RequestContext, body: Any, version) -> VolumeAttachment:
        inner = checks.body_of(body, "attachment")
        volume_id = checks.uuid_field(inner.get("volume_uuid"), "volume_uuid")
        instance = inner.get("instance_uuid")
        if instance is not None:
            instance = checks.uuid_field(instance, "instance_uuid")
        connector = inner.get("connector")
        if connector is not None and not isinstance(connector, dict):
            raise errors.Invalid("Invalid input for field/attribute connector: a JSON object is expected")
        mode = inner.get("mode", "rw")
        if mode not in ("rw", "ro") or ("mode" in inner and version < (3, 54)):
            raise errors.Invalid(f"Invalid input for field/attribute mode: {shown(mode)} (rw or ro, from 3.54)")

        def create(session: Session) -> VolumeAttachment:
            vol = self._volume(session, ctx, volume_id, "volume:attachment_create")
            if vol.status not in (V.AVAILABLE, V.DOWNLOADING):
                raise errors.Invalid(f"Invalid volume: Volume {volume_id} status must be available or downloading "
                                     f"to reserve, but the current status is: {vol.status}.")
            att = VolumeAttachment(id=str(uuid.uuid4()), volume_id=vol.id, instance_uuid=instance,
                                   attach_status=A.RESERVED, attach_mode=mode)
            session.add(att)
            session.flush()
            VOLUME.transition(session, vol.id, vol.status, V.RESERVED, reason=f"attachment {att.id} reserved")
            session.refresh(vol)        # (the move is a Core UPDATE: the loaded row is stale)
            if connector is not None:
                session.refresh(vol)        # the transition wrote the row, not the object: reserved now
                self._connect(session, vol, att, connector)
                session.refresh(att)        # attaching, with its connection_info
            return att
        return await self.db.run(create)

    def _connect(self, session: Session, vol: Volume, att: VolumeAttachment, connector: dict[str, Any]) -> None:
        mountpoint = connector.get("mountpoint")
        if mountpoint is not None and (not isinstance(mountpoint, str) or len(mountpoint) > 255):
            raise errors.Invalid("Invalid input for field/attribute connector.mountpoint: a device path is expected")
        host = connector.get("host")
        if host is not None and (not isinstance(host, str) or len(host) > 255):
            raise errors.Invalid("Invalid input for field/attribute connector.host: a host name is expected")
        info = self.manager.driver.connection_info(volume_ref(vol))
        ATTACHMENT.transition(session, att.id, att.attach_status, A.ATTACHING, reason="connector given",
                              values={"connector_json": json.dumps(connector), "mountpoint": mountpoint,
                                      "attached_host": host, "connection_info_json": json.dumps(info)})
        if vol.status != V.ATTACHING:
            VOLUME.transition(session, vol.id, vol.status, V.ATTACHING, reason=f"attachment {att.id} connecting")

    async def update_attachment(self, ctx: RequestContext, attachment_id: str, body: Any) -> VolumeAttachment:
        inner = checks.body_of(body, "attachment")
        connector = inner.get("connector")
        if not isinstance(connector, dict):
            raise errors.Invalid("Invalid input: an attachment update needs a connector (a JSON object)")

        def update(session: Session) -> VolumeAttachment:
            att, vol = self._attachment(session, ctx, attachment_id, "volume:attachment_update")
            if att.attach_status not in (A.RESERVED, A.ATTACHING):
                raise errors.Invalid(f"Invalid attachment: attachment {attachment_id} is {att.attach_status}; only "
                                     "a reserved attachment takes a connector")
            self._connect(session, vol, att, connector)
            session.refresh(att)
            return att
        return await self.db.run(update)

    async def complete_attachment(self, ctx: RequestContext, attachment_id: str) -> None:
        def complete(session: Session) -> None:
            att, vol = self._attachment(session, ctx, attachment_id, "volume:attachment_complete")
            if att.attach_status == A.ATTACHED:
                return
            if att.attach_status != A.ATTACHING:
                raise errors.Invalid(f"Invalid attachment: attachment {attachment_id} is {att.attach_status}; "
                                     "only a connected one can be completed")
            now = utcnow()
            ATTACHMENT.transition(session, att.id, A.ATTACHING, A.ATTACHED, reason="attached", values={"attach_time": now})
            VOLUME.transition(session, vol.id, vol.status, V.IN_USE, reason=f"attached to {att.instance_uuid}",
                              values={"attach_status": "attached"})
        await self.db.run(complete)

    async def delete_attachment(self, ctx: RequestContext, attachment_id: str) -> list[VolumeAttachment]:
        def delete(session: Session) -> list[VolumeAttachment]:
            att, vol = self._attachment(session, ctx, attachment_id, "volume:attachment_delete")
            ATTACHMENT.transition(session, att.id, att.attach_status, A.DETACHED, reason="attachment deleted",
                                  values={"detach_time": utcnow(), "deleted_at": utcnow()})
            remaining = _attachments(session, [vol.id]).get(vol.id, [])
            if not remaining and vol.status in (V.RESERVED, V.ATTACHING, V.IN_USE, V.DETACHING):
                VOLUME.transition(session, vol.id, vol.status, V.AVAILABLE, reason=f"attachment {att.id} deleted",
                                  values={"attach_status": "detached"})
            return remaining
        return await self.db.run(delete)

    async def show_attachment(self, ctx: RequestContext, attachment_id: str) -> VolumeAttachment:
        return await self.db.run(lambda s: self._attachment(s, ctx, attachment_id, "volume:attachment_get_all")[0])

    async def list_attachments(self, ctx: RequestContext, params: dict[str, str]) -> list[VolumeAttachment]:
        self.policy.authorize(ctx, "volume:attachment_get_all", {"project_id": ctx.project_id})

        listing = queries.parse_listing(ctx, params, sort_keys=ATTACHMENT_SORT_KEYS,
                                        filter_keys={"volume_id", "instance_id", "status"}, with_count_allowed=False)

        def find(session: Session) -> list[VolumeAttachment]:
            conditions = [VolumeAttachment.attach_status != A.DETACHED]
            if not listing.all_projects:
                conditions.append(VolumeAttachment.volume_id.in_(
                    select(Volume.id).where(Volume.project_id == ctx.project_id)))
            elif listing.project_id:
                conditions.append(VolumeAttachment.volume_id.in_(
                    select(Volume.id).where(Volume.project_id == listing.project_id)))
            for key, column in (("volume_id", VolumeAttachment.volume_id),
                                ("instance_id", VolumeAttachment.instance_uuid),
                                ("status", VolumeAttachment.attach_status)):
                if key in listing.filters:
                    conditions.append(column == listing.filters[key])
            return queries.page(session, VolumeAttachment, conditions, listing, "Attachment")[0]
        return await self.db.run(find)

    def _attachment(self, session: Session, ctx: RequestContext, attachment_id: str,
                    action: str) -> tuple[VolumeAttachment, Volume]:
        att = session.get(VolumeAttachment, attachment_id) if len(attachment_id) <= 36 else None
        vol = session.get(Volume, att.volume_id) if att is not None else None
        if att is None or vol is None or att.attach_status == A.DETACHED or \
                (not ctx.is_admin and vol.project_id != ctx.project_id):
            raise errors.NotFound(f"Volume attachment {attachment_id} could not be found.")
        self.policy.authorize(ctx, action, {"project_id": vol.project_id})
        return att, vol


# -- helpers -------------------------------------------------------------------------------------

def _matches(metadata: dict[str, str], wanted: dict[str, str]) -> bool:
    return all(metadata.get(k) == v for k, v in wanted.items())


def _attachments(session: Session, volume_ids: list[str]) -> dict[str, list[VolumeAttachment]]:
    if not volume_ids:
        return {}
    out: dict[str, list[VolumeAttachment]] = {}
    for att in session.scalars(select(VolumeAttachment).where(VolumeAttachment.volume_id.in_(volume_ids),
                                                              VolumeAttachment.attach_status != A.DETACHED)
                               .order_by(VolumeAttachment.created_at)):
        out.setdefault(att.volume_id, []).append(att)
    return out


def _server_of(session: Session, volume_id: str) -> str | None:
    """The server an in-use volume is attached to (its attached attachment's instance)."""
    return session.scalar(select(VolumeAttachment.instance_uuid).where(
        VolumeAttachment.volume_id == volume_id, VolumeAttachment.attach_status == A.ATTACHED).limit(1))


def _no_chain_work(session: Session, volume_id: str, excluding: str | None = None) -> None:
    """One snapshot create or delete at a time per volume: each rewrites the volume's chain (its
    files and its .info), so a second one waits for the first (409, retry)."""
    stmt = select(VolumeSnapshot.id, VolumeSnapshot.status).where(
        VolumeSnapshot.volume_id == volume_id, VolumeSnapshot.status.in_([S.CREATING, S.DELETING]))
    if excluding is not None:
        stmt = stmt.where(VolumeSnapshot.id != excluding)
    busy = session.execute(stmt.limit(1)).first()
    if busy is not None:
        raise errors.Conflict(f"Volume {volume_id} has snapshot {busy[0]} {busy[1]} right now: one snapshot "
                              "operation per volume at a time; retry when it is done")
