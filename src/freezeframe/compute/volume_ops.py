"""Volumes on servers: attach and detach (Nova's ``os-volume_attachments``), the top half of an
assisted volume snapshot (``os-assisted-volume-snapshots``, seed 002), and the functions the
assisted snapshot workflow calls on compute's own table (``block_device_mappings``).

Attach is Nova's flow with the attachments API: reserve (``attachment_create``), connect
(``attachment_update`` with this host's connector: the volume service answers with the
connection_info), open the volume in the guest (the virt driver: a file disk whose serial is
the volume id), then ``attachment_complete``. The server's mapping row is written first, at
``attaching`` — the unique (server, device) index makes concurrent attaches pick different
devices — and is ``attached`` only once every step is done; any step failing undoes the ones
before (the attachment deleted, the disk detached) and removes the row: nothing half-attached.
Detach runs the other way: the guest's disk, the attachment, the row.

Every call to the volume service is made as the user (their rights, their project), with the
service credential beside it (``volumes_for``); from worker threads only (the in-process
transport refuses the event loop).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform
import re
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from freezeframe.common import errors
from freezeframe.common.context import Actor, RequestContext
from freezeframe.common.policy import Policy
from freezeframe.common.pools import BoundedPool
from freezeframe.common.strict import is_uuid, shown
from freezeframe.common.timeutil import utcnow
from freezeframe.compute.drivers.base import DomainNotFound, VolumeDisk
from freezeframe.compute.hostside import Hosts
from freezeframe.compute.model import BlockDeviceMapping, Instance
from freezeframe.compute.states import VmState
from freezeframe.db.session import Database
from freezeframe.volumes.client import CinderClient, CinderError

LOG = logging.getLogger(__name__)

ASSISTED_KIND = "assisted-volume-snapshot"
# Nova attaches and detaches volumes of servers in these states (of those we have).
ATTACHABLE = (VmState.ACTIVE, VmState.PAUSED, VmState.STOPPED)
_DEVICE = re.compile(r"^(?:/dev/)?(vd[b-z])$")
DEVICES = tuple(f"vd{chr(c)}" for c in range(ord("b"), ord("z") + 1))
_TAG = re.compile(r"^[^,/]{1,60}$")              # Nova's device tag
# A file name of a volume's chain: no directory, nothing that walks out of the share.
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
FORMATS = ("raw", "qcow2")
# An ``attaching`` row older than this was left by an attach that died mid-way: a detach
# cleans it up (a younger one is an attach still running: 409).
ATTACH_STALE = dt.timedelta(minutes=10)
_WORKFLOW_NS = uuid.UUID("5b0c8a39-3a8e-4d0e-9f57-52a4c1c0a5b1")
VolumesFor = Callable[[Actor], CinderClient]


class VolumeNotCreated(errors.HostFault):
    """A volume made for a new server did not become available (Nova's VolumeNotCreated)."""


# -- what a request may say ------------------------------------------------------------------

@dataclass(frozen=True)
class AttachRequest:
    volume_id: str
    device: str | None
    tag: str | None
    delete_on_termination: bool


def parse_attach(body: Any, *, tag_allowed: bool, delete_on_termination_allowed: bool) -> AttachRequest:
    """``{"volumeAttachment": {"volumeId", "device"?, "tag"? (2.49), "delete_on_termination"? (2.79)}}``,
    nothing else (Nova's schema: 400)."""
    att = body.get("volumeAttachment") if isinstance(body, dict) and len(body) == 1 else None
    if not isinstance(att, dict):
        raise errors.Invalid("Invalid input: the body must be {\"volumeAttachment\": {\"volumeId\": ...}}")
    allowed = {"volumeId", "device"} | ({"tag"} if tag_allowed else set()) | \
        ({"delete_on_termination"} if delete_on_termination_allowed else set())
    extra = set(att) - allowed
    if extra:
        raise errors.Invalid(f"Invalid input for volumeAttachment: additional properties are not allowed "
                             f"({', '.join(sorted(map(shown, extra)))} unexpected)")
    volume_id = att.get("volumeId")
    if not isinstance(volume_id, str) or not is_uuid(volume_id):
        raise errors.Invalid(f"Invalid input for field/attribute volumeId: {shown(volume_id)} is not a UUID")
    device = att.get("device")
    if device is not None:
        match = _DEVICE.match(device) if isinstance(device, str) else None
        if match is None:
            raise errors.Invalid(f"The supplied device path ({shown(device)}) is invalid: /dev/vdb ... /dev/vdz")
        device = match.group(1)
    tag = att.get("tag")
    if tag is not None and (not isinstance(tag, str) or not _TAG.match(tag)):
        raise errors.Invalid("Invalid input for field/attribute tag: 1-60 characters, without ',' or '/'")
    dot = att.get("delete_on_termination", False)
    if not isinstance(dot, bool):
        raise errors.Invalid("Invalid input for field/attribute delete_on_termination: a boolean is required")
    return AttachRequest(volume_id.lower(), device, tag, dot)


def _file_name(value: Any, what: str, *, nullable: bool = False) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not _FILE.match(value):
        raise errors.Invalid(f"Invalid {what} {shown(value)}: a file name in the volume's directory is required")
    return value


def parse_create_info(body: Any) -> tuple[str, dict[str, Any]]:
    """``{"snapshot": {"volume_id", "create_info": {"snapshot_id", "type": "qcow2", "new_file", "id"?}}}``
    -> (volume_id, create_info)."""
    snap = body.get("snapshot") if isinstance(body, dict) and len(body) == 1 else None
    if not isinstance(snap, dict) or set(snap) != {"volume_id", "create_info"}:
        raise errors.Invalid("Invalid input: the body must be {\"snapshot\": {\"volume_id\": ..., \"create_info\": "
                             "{...}}}")
    volume_id, info = snap["volume_id"], snap["create_info"]
    if not isinstance(volume_id, str) or not is_uuid(volume_id):
        raise errors.Invalid(f"Invalid input for field/attribute volume_id: {shown(volume_id)} is not a UUID")
    if not isinstance(info, dict) or not {"snapshot_id", "type", "new_file"} <= set(info) \
            or set(info) - {"snapshot_id", "type", "new_file", "id"}:
        raise errors.Invalid("Invalid create_info: {\"snapshot_id\", \"type\": \"qcow2\", \"new_file\"} "
                             "(and an optional \"id\") are required")
    if not isinstance(info["snapshot_id"], str) or not is_uuid(info["snapshot_id"]):
        raise errors.Invalid("Invalid create_info: snapshot_id must be a UUID")
    if info["type"] != "qcow2":
        raise errors.Invalid(f"Invalid create_info: type {shown(info['type'])} is not supported (qcow2)")
    if info.get("id") is not None and (not isinstance(info["id"], str) or not is_uuid(info["id"])):
        raise errors.Invalid("Invalid create_info: id must be a UUID")
    _file_name(info["new_file"], "create_info new_file")
    return volume_id.lower(), {"type": "qcow2", "new_file": info["new_file"],
                               "snapshot_id": info["snapshot_id"].lower(),
                               **({"id": info["id"]} if info.get("id") else {})}


def parse_delete_info(text: str | None) -> dict[str, Any]:
    """The ``delete_info`` query parameter: JSON ``{"type": "qcow2", "file_to_merge", "merge_target_file",
    "volume_id"}`` (the file names may be null)."""
    if not text:
        raise errors.Invalid("Missing delete_info: the query parameter delete_info (JSON) is required")
    try:
        info = json.loads(text)
    except (ValueError, RecursionError):        # RecursionError: nested thousands deep
        raise errors.Invalid("Invalid delete_info: it is not JSON") from None
    if not isinstance(info, dict) or "volume_id" not in info or set(info) - {"type", "file_to_merge",
                                                                             "merge_target_file", "volume_id"}:
        raise errors.Invalid("Invalid delete_info: {\"type\": \"qcow2\", \"file_to_merge\", \"merge_target_file\", "
                             "\"volume_id\"} is required")
    if not isinstance(info["volume_id"], str) or not is_uuid(info["volume_id"]):
        raise errors.Invalid("Invalid delete_info: volume_id must be a UUID")
    if info.get("type", "qcow2") != "qcow2":
        raise errors.Invalid(f"Invalid delete_info: type {shown(info.get('type'))} is not supported (qcow2)")
    return {"type": "qcow2", "volume_id": info["volume_id"].lower(),
            "file_to_merge": _file_name(info.get("file_to_merge"), "delete_info file_to_merge", nullable=True),
            "merge_target_file": _file_name(info.get("merge_target_file"), "delete_info merge_target_file",
                                            nullable=True)}


def volume_disk(volume_id: str, target: str, connection_info: Any) -> VolumeDisk:
    """The disk a connection_info (the volume service's) opens: ``data.export`` / ``data.name``,
    in ``data.format``. Checked here: nothing it names may lie outside the export."""
    data = connection_info.get("data") if isinstance(connection_info, dict) else None
    if not isinstance(data, dict):
        raise errors.BackendUnavailable(f"The volume service gave volume {volume_id} no connection data")
    export, name, fmt = data.get("export"), data.get("name"), data.get("format", "raw")
    if not isinstance(export, str) or not export.startswith("/") or "\x00" in export \
            or not isinstance(name, str) or not _FILE.match(name) or fmt not in FORMATS:
        raise errors.BackendUnavailable(f"The volume service gave volume {volume_id} connection data compute "
                                        f"cannot open (export {shown(export)}, name {shown(name)}, "
                                        f"format {shown(fmt)})")
    return VolumeDisk(volume_id=volume_id, target=target, path=Path(export) / name, format=fmt)


def volume_error(exc: CinderError, volume_id: str) -> errors.FreezeframeError:
    """The volume service's refusal as Nova answers it."""
    if exc.status == 404:
        return errors.NotFound(f"Volume {volume_id} could not be found.")
    if exc.status in (401, 403):
        return errors.Forbidden(f"The volume service refused access to volume {volume_id}: {exc.message}")
    if exc.status in (400, 409):
        return errors.Invalid(f"Invalid volume: {exc.message}")
    return errors.BackendUnavailable(f"The volume service failed: {exc}")


def bdm_uuid(bdm: BlockDeviceMapping) -> str:
    """A stable UUID for a mapping row (Nova's ``bdm_uuid``, 2.89): rows are numbered here."""
    return str(uuid.uuid5(_WORKFLOW_NS, f"bdm/{bdm.instance_uuid}/{bdm.id}"))


# -- the compute service's side ----------------------------------------------------------------

class VolumeOps:
    """What the compute API does with volumes (held by ``ComputeService`` as ``volumes``)."""

    def __init__(self, db: Database, hosts: Hosts, volumes_for: VolumesFor | None, workflows, *,
                 policy: Policy, pool: BoundedPool, get_server: Callable[..., Instance]) -> None:
        self.db = db
        self.hosts = hosts
        self.volumes_for = volumes_for         # the volume API, acting for a user (their rights)
        self.workflows = workflows             # the conductor (assisted snapshots are its work)
        self.policy = policy
        self.pool = pool                       # compute's own pool for outbound calls
        self.get_server = get_server           # (session, ctx, server_id, action) -> the server, or 404/403

    def _cinder(self, actor: Actor) -> CinderClient:
        if self.volumes_for is None:
            raise errors.BackendUnavailable("No volume service is configured for compute")
        return self.volumes_for(actor)

    # -- reads ---------------------------------------------------------------------------------

    async def attachments(self, ctx: RequestContext, server_id: str) -> list[BlockDeviceMapping]:
        def find(session: Session) -> list[BlockDeviceMapping]:
            self.get_server(session, ctx, server_id, "os_compute_api:os-volumes-attachments:index")
            return list(session.scalars(select(BlockDeviceMapping).where(
                BlockDeviceMapping.instance_uuid == server_id, BlockDeviceMapping.volume_id.is_not(None))
                .order_by(BlockDeviceMapping.id)))
        return await self.db.run(find)

    async def attachment(self, ctx: RequestContext, server_id: str, volume_id: str) -> BlockDeviceMapping:
        def find(session: Session) -> BlockDeviceMapping:
            self.get_server(session, ctx, server_id, "os_compute_api:os-volumes-attachments:show")
            return _bdm_of(session, server_id, volume_id)
        return await self.db.run(find)

    # -- attach ----------------------------------------------------------------------------------

    async def attach(self, ctx: RequestContext, server_id: str, req: AttachRequest) -> BlockDeviceMapping:
        inst = await self.db.run(lambda s: self.get_server(s, ctx, server_id,
                                                           "os_compute_api:os-volumes-attachments:create"))
        _check_state(inst, "attach_volume")
        await self.pool.run(self.hosts.get, inst.host)      # its host is up (else 409: nothing changed)
        return await self.pool.run(self._attach, ctx.actor, inst, req, wait=30)

    def connector(self, host: str | None, device: str) -> dict[str, Any]:
        """This host as the volume service sees it (os-brick's connector, for a file share)."""
        return {"host": host, "initiator": None, "mountpoint": f"/dev/{device}", "platform": platform.machine(),
                "os_type": sys.platform}

    def _attach(self, actor: Actor, inst: Instance, req: AttachRequest) -> BlockDeviceMapping:
        with self._cinder(actor) as cinder:
            try:
                volume = cinder.show_volume(req.volume_id)
            except CinderError as exc:
                raise volume_error(exc, req.volume_id) from None
            if self.db.run_sync(lambda s: s.scalars(select(BlockDeviceMapping.id).where(
                    BlockDeviceMapping.instance_uuid == inst.id,
                    BlockDeviceMapping.volume_id == req.volume_id)).first()) is not None:
                raise errors.Invalid(f"Invalid volume: volume {req.volume_id} is already attached to server {inst.id}")
            if volume.get("multiattach"):
                raise errors.Invalid(f"Invalid volume: volume {req.volume_id} is multiattach, which compute does "
                                     "not support")
            if volume.get("status") != "available":
                raise errors.Invalid(f"Invalid volume: volume {req.volume_id} status must be 'available', not "
                                     f"{shown(volume.get('status'))}")
            size = volume.get("size") if isinstance(volume.get("size"), int) else None
            bdm_id, device = self._reserve_retrying(inst, req, size)
            return self._connect(cinder, inst, req.volume_id, device, bdm_id)

    def _connect(self, cinder: CinderClient, inst: Instance, volume_id: str, device: str, bdm_id: int, *,
                 keep_row: bool = False) -> BlockDeviceMapping:
        """Reserve, connect, open in the guest, complete — the row ``attached`` at the end. A
        step failing undoes the ones before; the row goes too, unless ``keep_row`` (a spawn's:
        its undo decides what becomes of its rows)."""
        try:
            attachment_id = cinder.attachment_create(volume_id, inst.id)["id"]
        except (CinderError, KeyError) as exc:
            if not keep_row:
                self.db.run_sync(lambda s: _drop(s, bdm_id))
            if isinstance(exc, CinderError):
                raise volume_error(exc, volume_id) from None
            raise errors.BackendUnavailable("The volume service's attachment has no id") from None
        self.db.run_sync(lambda s: _update(s, bdm_id, attachment_id=attachment_id))
        driver, attached = None, False
        try:
            driver = self.hosts.get(inst.host).driver
            connection_info = cinder.attachment_update(attachment_id, self.connector(inst.host, device))
            disk = volume_disk(volume_id, device, connection_info)
            driver.attach_volume(inst.domain_name, disk)
            attached = True
            cinder.attachment_complete(attachment_id)
        except BaseException as exc:
            LOG.warning("server %s: attaching volume %s failed (%s); undoing it", inst.id, volume_id, exc)
            self._undo_attach(cinder, driver, inst, volume_id, attachment_id, bdm_id, in_guest=attached,
                              keep_row=keep_row)
            if isinstance(exc, CinderError):
                raise volume_error(exc, volume_id) from None
            raise
        return self.db.run_sync(lambda s: _update(s, bdm_id, status="attached",
                                                  connection_info=json.dumps(connection_info)))

    def _reserve_retrying(self, inst: Instance, req: AttachRequest, size: int | None) -> tuple[int, str]:
        """A concurrent attach that took the device first: the next free one (a device asked
        for by name is a 409 then)."""
        for attempt in range(3):
            try:
                return self.db.run_sync(lambda s: self._reserve(s, inst, req, size))
            except errors.Conflict:
                if req.device is not None or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _reserve(self, session: Session, inst: Instance, req: AttachRequest, size: int | None) -> tuple[int, str]:
        """The mapping row, ``attaching``, on the device asked for or the next free one."""
        rows = list(session.scalars(select(BlockDeviceMapping).where(BlockDeviceMapping.instance_uuid == inst.id)))
        if any(r.volume_id == req.volume_id for r in rows):
            raise errors.Invalid(f"Invalid volume: volume {req.volume_id} is already attached to server {inst.id}")
        used = {r.device_name for r in rows} | {inst.root_target or "vda"}
        if req.device is not None:
            if req.device in used:
                raise errors.Invalid(f"The supplied device path (/dev/{req.device}) is in use.")
            device = req.device
        else:
            device = next((d for d in DEVICES if d not in used), None)
            if device is None:
                raise errors.Invalid(f"Server {inst.id} has no free disk device name left (vdb ... vdz)")
        row = BlockDeviceMapping(instance_uuid=inst.id, device_name=device, source_type="volume",
                                 destination_type="volume", boot_index=None, volume_id=req.volume_id,
                                 volume_size=size, tag=req.tag, delete_on_termination=req.delete_on_termination,
                                 status="attaching")
        session.add(row)
        session.flush()           # the unique (server, device) index: a concurrent attach is a 409 here
        return row.id, device

    def _undo_attach(self, cinder: CinderClient, driver, inst: Instance, volume_id: str, attachment_id: str,
                     bdm_id: int, *, in_guest: bool, keep_row: bool = False) -> None:
        """Nothing half-attached: the guest's disk, the attachment, the row — each best effort,
        logged (a detach of the row, if it stays, finishes the job). ``keep_row``: the row
        stays, without its attachment once that is gone (a spawn's undo takes it from there)."""
        try:
            if in_guest and driver is not None:
                driver.detach_volume(inst.domain_name, volume_id)
            cinder.attachment_delete(attachment_id)
        except Exception as exc:
            LOG.error("server %s: could not undo the attachment %s of volume %s: %s; its row stays, detaching "
                      "it finishes the clean-up", inst.id, attachment_id, volume_id, exc)
            self.db.run_sync(lambda s: _update(s, bdm_id, status="detaching"))
            return
        if keep_row:
            self.db.run_sync(lambda s: _update(s, bdm_id, attachment_id=None))
        else:
            self.db.run_sync(lambda s: _drop(s, bdm_id))

    # -- a new server's volumes (its spawn: the server is BUILDING, ``compute/bdm.py``) ----------------

    # Nova waits block_device_allocate_retries (60) + 1 times, 3 s apart, for a volume it created.
    CREATE_ATTEMPTS, CREATE_INTERVAL = 61, 3.0

    def client(self, actor: Actor) -> CinderClient:
        """The volume API acting for ``actor`` (the caller closes it)."""
        return self._cinder(actor)

    def create_for_spawn(self, actor: Actor, *, size: int | None, snapshot_id: str | None = None,
                         image_id: str | None = None, volume_type: str | None = None) -> str:
        """A new volume for a server being built (from a snapshot, an image, or blank), as the
        user; its id. Nova names it nothing and describes it with nothing: so do we."""
        with self._cinder(actor) as cinder:
            try:
                volume = cinder.create_volume(size, snapshot_id=snapshot_id, image_id=image_id,
                                              volume_type=volume_type)
            except CinderError as exc:
                raise volume_error(exc, snapshot_id or image_id or "(new)") from None
        if not is_uuid(volume.get("id")):
            raise errors.BackendUnavailable("The volume service's new volume has no id")
        return volume["id"]

    def wait_created(self, actor: Actor, volume_id: str) -> dict[str, Any]:
        """The volume once ``available``; VolumeNotCreated (Nova's words, a HostFault) when it
        ends otherwise or is still creating after Nova's 61 x 3 s — polled sooner at first
        (most volumes are ready in well under a second), never more often than it needs."""
        budget = self.CREATE_ATTEMPTS * self.CREATE_INTERVAL
        started = time.monotonic()
        attempts, pause, status = 0, 0.05, None
        with self._cinder(actor) as cinder:
            while True:
                attempts += 1
                try:
                    volume = cinder.show_volume(volume_id)
                except CinderError as exc:
                    raise volume_error(exc, volume_id) from None
                status = volume.get("status")
                if status == "available":
                    return volume
                waited = time.monotonic() - started
                if status not in ("creating", "downloading") or waited >= budget:
                    break
                time.sleep(min(pause, self.CREATE_INTERVAL, budget - waited))
                pause *= 2
        raise VolumeNotCreated(f"Volume {volume_id} did not finish being created even after we waited "
                               f"{int(time.monotonic() - started)} seconds or {attempts} attempts. And its status is "
                               f"{status}.")

    def delete_created(self, actor: Actor, volume_id: str) -> bool:
        """Delete a volume made for a server whose spawn is undone — once it is done being
        created (a creating volume cannot be deleted: waited for as ``wait_created`` does);
        False (logged) when it would not go."""
        try:
            self.wait_created(actor, volume_id)
        except Exception as exc:       # ended in error (deletable), or still creating (then this logs why)
            LOG.info("volume %s, made for a server whose spawn failed, did not become available: %s", volume_id, exc)
        try:
            with self._cinder(actor) as cinder:
                cinder.delete_volume(volume_id)
        except CinderError as exc:
            if exc.status == 404:
                return True
            LOG.error("volume %s, made for a server whose spawn failed, could not be deleted: %s", volume_id, exc)
            return False
        except Exception as exc:
            LOG.error("volume %s, made for a server whose spawn failed, could not be deleted: %s", volume_id, exc)
            return False
        return True

    def attach_for_spawn(self, actor: Actor, inst: Instance, bdm_id: int) -> BlockDeviceMapping:
        """Attach the volume of a mapping row written with the server (its device already
        chosen), as ``attach`` does — without its state check: the server is BUILDING, its
        domain just started. The row stays whatever happens (the spawn's undo decides)."""
        row = self.db.run_sync(lambda s: s.get(BlockDeviceMapping, bdm_id))
        if row is None or row.volume_id is None or row.instance_uuid != inst.id:
            raise errors.HostFault(f"server {inst.id}: mapping {bdm_id} has no volume to attach")
        with self._cinder(actor) as cinder:
            try:
                volume = cinder.show_volume(row.volume_id)
            except CinderError as exc:
                raise volume_error(exc, row.volume_id) from None
            if volume.get("status") != "available" or volume.get("multiattach"):
                raise errors.Invalid(f"Invalid volume: volume {row.volume_id} status must be 'available', not "
                                     f"{shown(volume.get('status'))}")
            return self._connect(cinder, inst, row.volume_id, row.device_name, bdm_id, keep_row=True)

    def release_for_spawn(self, actor: Actor, inst: Instance, bdm: BlockDeviceMapping) -> bool:
        """A spawn undone: the volume out of the guest (if its domain has it) and its attachment
        deleted; the row stays, without it. False (logged) when the attachment would not go."""
        try:
            self.hosts.get(inst.host).driver.detach_volume(inst.domain_name, bdm.volume_id)
        except Exception as exc:             # the domain is destroyed next in any case
            LOG.warning("server %s: volume %s could not be detached from its domain: %s", inst.id, bdm.volume_id, exc)
        try:
            with self._cinder(actor) as cinder:
                cinder.attachment_delete(bdm.attachment_id)
        except Exception as exc:
            if not (isinstance(exc, CinderError) and exc.status == 404):
                LOG.error("server %s: the attachment %s of volume %s could not be deleted: %s", inst.id,
                          bdm.attachment_id, bdm.volume_id, exc)
                return False
        self.db.run_sync(lambda s: _update(s, bdm.id, attachment_id=None))
        return True

    # -- detach ----------------------------------------------------------------------------------

    async def detach(self, ctx: RequestContext, server_id: str, volume_id: str) -> None:
        def begin(session: Session) -> tuple[Instance, BlockDeviceMapping]:
            inst = self.get_server(session, ctx, server_id, "os_compute_api:os-volumes-attachments:delete")
            _check_state(inst, "detach_volume")
            bdm = _bdm_of(session, server_id, volume_id)
            if bdm.boot_index == 0:
                raise errors.Invalid("Cannot detach a root device volume")
            if bdm.status == "attaching" and utcnow() - bdm.updated_at < ATTACH_STALE:
                raise errors.Conflict(f"Volume {volume_id} is being attached to server {server_id}; retry when "
                                      "it is done")
            if self.workflows is not None and self.workflows.unfinished(server_id, session=session, failed=False):
                raise errors.Conflict(f"Cannot 'detach_volume' of instance {server_id} while a snapshot of it is "
                                      "in progress")
            if bdm.status != "detaching":
                _update(session, bdm.id, status="detaching", expect=bdm.status)
            return inst, bdm
        inst = await self.db.run(lambda s: self.get_server(s, ctx, server_id,
                                                           "os_compute_api:os-volumes-attachments:delete"))
        await self.pool.run(self.hosts.get, inst.host)      # its host is up (else 409: nothing changed)
        inst, bdm = await self.db.run(begin)
        await self.pool.run(self._detach, ctx.actor, inst, bdm, wait=30)

    def _detach(self, actor: Actor, inst: Instance, bdm: BlockDeviceMapping, *, in_guest: bool = True) -> None:
        """Each step idempotent: a detach that failed half-way is finished by the next one."""
        if in_guest:
            try:
                self.hosts.get(inst.host).driver.detach_volume(inst.domain_name, bdm.volume_id)
            except DomainNotFound:
                LOG.warning("server %s: its domain is gone; detaching volume %s from the volume service only",
                            inst.id, bdm.volume_id)
        if bdm.attachment_id:
            with self._cinder(actor) as cinder:
                try:
                    cinder.attachment_delete(bdm.attachment_id)
                except CinderError as exc:
                    if exc.status != 404:
                        raise volume_error(exc, bdm.volume_id) from None
        self.db.run_sync(lambda s: _drop(s, bdm.id))

    def detach_all(self, inst: Instance, actor: Actor, *, in_guest: bool = False) -> None:
        """A deleted server's volumes (Nova's delete): each attachment deleted, a volume with
        ``delete_on_termination`` deleted, the rows removed. The domain is gone already
        (``in_guest`` for one that stays: an adopted domain). Failures are logged, never stop
        the server's delete (as Nova). The rows of its local disks go too (their files went with
        its domain)."""
        self.db.run_sync(lambda s: [s.delete(r) for r in s.scalars(select(BlockDeviceMapping).where(
            BlockDeviceMapping.instance_uuid == inst.id, BlockDeviceMapping.volume_id.is_(None)))])
        rows = self.db.run_sync(lambda s: list(s.scalars(select(BlockDeviceMapping).where(
            BlockDeviceMapping.instance_uuid == inst.id, BlockDeviceMapping.volume_id.is_not(None)))))
        for bdm in rows:
            try:
                self._detach(actor, inst, bdm, in_guest=in_guest)
                if bdm.delete_on_termination:
                    with self._cinder(actor) as cinder:
                        cinder.delete_volume(bdm.volume_id)
            except Exception as exc:
                LOG.error("server %s deleted: volume %s could not be detached/deleted: %s", inst.id, bdm.volume_id,
                          exc)
                self.db.run_sync(lambda s, i=bdm.id: _drop(s, i))

    # -- assisted volume snapshots (the volume service asks: seed 002) -----------------------------

    async def assisted_create(self, ctx: RequestContext, body: Any) -> dict[str, Any]:
        self.policy.authorize(ctx, "os_compute_api:os-assisted-volume-snapshots:create")
        volume_id, info = parse_create_info(body)
        await self._assisted(ctx, "create", volume_id, info["snapshot_id"], info)
        # Nova echoes create_info's ``id``; the volume service sends none: the snapshot's id then.
        return {"snapshot": {"id": info.get("id", info["snapshot_id"]), "volumeId": volume_id}}

    async def assisted_delete(self, ctx: RequestContext, snapshot_id: str, delete_info: str | None) -> None:
        self.policy.authorize(ctx, "os_compute_api:os-assisted-volume-snapshots:delete")
        if not is_uuid(snapshot_id):
            raise errors.Invalid(f"Invalid snapshot id {shown(snapshot_id)}: a UUID is required")
        info = parse_delete_info(delete_info)
        await self._assisted(ctx, "delete", info["volume_id"], snapshot_id.lower(), info)

    async def _assisted(self, ctx: RequestContext, op: str, volume_id: str, snapshot_id: str,
                        info: dict[str, Any]) -> str:
        """Hand compute's part to the conductor, on the server's host; returns the workflow id.
        The same request again (the volume side retrying) wakes the workflow already under way
        instead of starting a second one."""
        def find(session: Session) -> Instance:
            bdm = session.scalars(select(BlockDeviceMapping).where(
                BlockDeviceMapping.volume_id == volume_id, BlockDeviceMapping.destination_type == "volume",
                BlockDeviceMapping.status == "attached")).first()
            inst = session.get(Instance, bdm.instance_uuid) if bdm is not None else None
            if inst is None or inst.vm_state == VmState.DELETED:
                raise errors.Invalid(f"Volume {volume_id} is not attached to any server")
            if not inst.host:
                raise errors.Conflict(f"Instance {inst.id} is not ready (it has no host)")
            if inst.task_state is not None:
                raise errors.Conflict(f"Cannot 'volume_snapshot_{op}' instance {inst.id} while it is in task_state "
                                      f"{inst.task_state}")
            return inst
        inst = await self.db.run(find)
        await self.pool.run(self.hosts.get, inst.host)      # its host is up (else 409: nothing accepted)
        params = {"op": op, "volume_id": volume_id, "snapshot_id": snapshot_id, "info": info,
                  "project_id": ctx.project_id}
        workflow_id = str(uuid.uuid5(_WORKFLOW_NS, f"{op}/{snapshot_id}/{volume_id}"))
        if await self.db.pool.run(self.workflows.finished, [workflow_id]):
            workflow_id = self.workflows.new_id()            # asked again after it ended: a new run
        try:
            await self.db.pool.run(self.workflows.submit, ASSISTED_KIND, "server", inst.id, params, ctx.actor,
                                   host=inst.host, workflow_id=workflow_id, request_id=ctx.request_id)
        except errors.Conflict:
            # Already under way (its row exists): wake it, as a report would.
            self.workflows.post(workflow_id, ASSISTED_KIND, inst.host)
            LOG.info("assisted snapshot %s %s of volume %s: already under way as workflow %s", op, snapshot_id,
                     volume_id, workflow_id)
            return workflow_id
        LOG.info("assisted snapshot %s %s of volume %s on server %s: workflow %s", op, snapshot_id, volume_id,
                 inst.id, workflow_id)
        return workflow_id


def _check_state(inst: Instance, verb: str) -> None:
    if inst.vm_state not in ATTACHABLE or inst.task_state is not None:
        raise errors.Conflict(f"Cannot '{verb}' instance {inst.id} while it is in vm_state {inst.vm_state}"
                              + (f" and task_state {inst.task_state}" if inst.task_state else ""))


def _bdm_of(session: Session, server_id: str, volume_id: str) -> BlockDeviceMapping:
    bdm = session.scalars(select(BlockDeviceMapping).where(
        BlockDeviceMapping.instance_uuid == server_id, BlockDeviceMapping.volume_id == volume_id.lower())).first() \
        if is_uuid(volume_id) else None
    if bdm is None:
        raise errors.NotFound(f"Volume {volume_id} is not attached to instance {server_id}")
    return bdm


def _update(session: Session, bdm_id: int, *, expect: str | None = None, **values: Any) -> BlockDeviceMapping:
    row = session.get(BlockDeviceMapping, bdm_id)
    if row is None or (expect is not None and row.status != expect):
        raise errors.Conflict("The volume attachment changed meanwhile; retry")
    for key, value in values.items():
        setattr(row, key, value)
    row.updated_at = utcnow()
    session.flush()
    return row


def _drop(session: Session, bdm_id: int) -> None:
    row = session.get(BlockDeviceMapping, bdm_id)
    if row is not None:
        session.delete(row)


# -- what the assisted snapshot workflow asks of compute (in process, in its fenced transaction) --

@dataclass(frozen=True)
class AttachedVolume:
    """An attached volume as the assisted workflow needs it."""
    server_id: str
    domain_name: str
    host: str | None
    volume_id: str
    device_name: str
    path: Path                 # the active file, as the mapping last recorded it
    format: str
    quiesce: bool              # the server has a guest agent (hw_qemu_guest_agent)
    require_quiesce: bool      # its image says os_require_quiesce


class VolumeHooks:
    """Compute's functions for the assisted snapshot workflow (``compute/workflows/assisted.py``):
    what it reads of a server's mapping, how it records the volume's new active file, and the
    volume API it reports to."""

    def __init__(self, volumes_for: VolumesFor | None) -> None:
        self._volumes_for = volumes_for

    def volumes_for(self, actor: Actor) -> CinderClient:
        if self._volumes_for is None:
            raise errors.BackendUnavailable("No volume service is configured for compute")
        return self._volumes_for(actor)

    def attached(self, session: Session, server_id: str, volume_id: str) -> AttachedVolume | None:
        inst = session.get(Instance, server_id)
        bdm = session.scalars(select(BlockDeviceMapping).where(
            BlockDeviceMapping.instance_uuid == server_id, BlockDeviceMapping.volume_id == volume_id,
            BlockDeviceMapping.status == "attached")).first()
        if inst is None or bdm is None or inst.vm_state == VmState.DELETED:
            return None
        disk = volume_disk(volume_id, bdm.device_name, json.loads(bdm.connection_info or "{}"))
        system = json.loads(inst.system_metadata or "{}")
        yes = ("yes", "true")
        return AttachedVolume(
            server_id=inst.id, domain_name=inst.domain_name, host=inst.host, volume_id=volume_id,
            device_name=bdm.device_name, path=disk.path, format=disk.format,
            quiesce=inst.guest_agent or str(system.get("image_hw_qemu_guest_agent", "no")).lower() in yes,
            require_quiesce=str(system.get("image_os_require_quiesce", "no")).lower() in yes)

    def refresh_connection(self, session: Session, server_id: str, volume_id: str, *, name: str,
                           fmt: str) -> bool:
        """The volume's active file changed (an online snapshot): the mapping opens it from now
        on (a stop/start, a later attach). False when nothing changed or the volume is gone."""
        bdm = session.scalars(select(BlockDeviceMapping).where(
            BlockDeviceMapping.instance_uuid == server_id, BlockDeviceMapping.volume_id == volume_id)).first()
        if bdm is None:
            return False
        info = json.loads(bdm.connection_info or "{}")
        data = info.setdefault("data", {})
        if data.get("name") == name and data.get("format") == fmt:
            return False
        data["name"], data["format"] = _file_name(name, "active file"), fmt
        bdm.connection_info = json.dumps(info)
        bdm.updated_at = utcnow()
        return True
