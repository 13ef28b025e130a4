"""Servers: create/list/show/delete/start/stop, adoption of existing domains, and the top half
of createImage/createBackup (seed 001: the image exists, queued, before the call returns)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from freezeframe.common import errors
from freezeframe.common.context import RequestContext
from freezeframe.common.timeutil import utcnow
from freezeframe.compute.drivers.base import DomainNotFound, GuestSpec, PowerState, VirtDriver
from freezeframe.compute.model import Instance, InstanceAction
from freezeframe.compute.states import TaskState, VmState, set_task_state
from freezeframe.conductor.model import Workflow
from freezeframe.conductor.states import WorkflowState
from freezeframe.db.session import Database
from freezeframe.images.client import GlanceClient, GlanceError

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Flavor:
    id: str
    name: str
    vcpus: int
    ram: int    # MiB
    disk: int   # GiB


FLAVORS = {f.id: f for f in (
    Flavor("1", "m1.tiny", 1, 256, 1),
    Flavor("2", "m1.small", 1, 2048, 20),
    Flavor("3", "m1.medium", 2, 4096, 40),
)}

# Image properties never copied onto a snapshot (Nova's list).
NOT_INHERITED = {"block_device_mapping", "mappings", "cache_in_nova", "bittorrent", "img_signature",
                 "img_signature_hash_method", "img_signature_key_type", "img_signature_certificate_uuid"}
_NAME = re.compile(r"^[^\x00-\x1f]{1,255}$")
SNAPSHOTTABLE = (VmState.ACTIVE, VmState.STOPPED, VmState.PAUSED, VmState.SUSPENDED)
_VM_STATE = {PowerState.RUNNING: VmState.ACTIVE, PowerState.PAUSED: VmState.PAUSED,
             PowerState.SUSPENDED: VmState.SUSPENDED, PowerState.SHUTDOWN: VmState.STOPPED,
             PowerState.CRASHED: VmState.ERROR, PowerState.NOSTATE: VmState.STOPPED}


def check_name(value: Any, what: str = "name") -> str:
    if not isinstance(value, str) or not _NAME.match(value) or value != value.strip():
        raise errors.Invalid(f"Invalid input for field/attribute {what}: a 1-255 character string without "
                             "control characters or leading/trailing spaces is required")
    return value


class ComputeService:
    def __init__(self, db: Database, driver: VirtDriver, image_client: Callable[[], GlanceClient],
                 instances_path: Path, submit: Callable[[str], None], max_concurrent_snapshots: int = 5) -> None:
        self.db = db
        self.driver = driver
        self.image_client = image_client
        self.instances_path = instances_path
        self.submit = submit
        self.max_concurrent_snapshots = max_concurrent_snapshots
        self._spawning: set[asyncio.Future] = set()

    # -- reads -------------------------------------------------------------------------------

    def _get(self, session: Session, ctx: RequestContext, server_id: str) -> Instance:
        inst = session.get(Instance, server_id)
        if inst is None or inst.vm_state == VmState.DELETED or (not ctx.is_admin and inst.project_id != ctx.project_id):
            raise errors.NotFound(f"Instance {server_id} could not be found.")
        return inst

    async def show(self, ctx: RequestContext, server_id: str) -> Instance:
        return await self.db.run(lambda s: self._get(s, ctx, server_id))

    async def list(self, ctx: RequestContext) -> list[Instance]:
        def find(session: Session) -> list[Instance]:
            stmt = select(Instance).where(Instance.vm_state != VmState.DELETED).order_by(Instance.created_at.desc())
            if not ctx.is_admin:
                stmt = stmt.where(Instance.project_id == ctx.project_id)
            return list(session.scalars(stmt))
        return await self.db.run(find)

    async def actions(self, ctx: RequestContext, server_id: str) -> list[InstanceAction]:
        def find(session: Session) -> list[InstanceAction]:
            self._get(session, ctx, server_id)
            return list(session.scalars(select(InstanceAction).where(InstanceAction.instance_uuid == server_id)
                                        .order_by(InstanceAction.start_time.desc())))
        return await self.db.run(find)

    # -- create / adopt / delete / power -----------------------------------------------------

    async def create(self, ctx: RequestContext, body: Any) -> Instance:
        server = body.get("server") if isinstance(body, dict) else None
        if not isinstance(server, dict):
            raise errors.Invalid("Invalid input: the body must be {\"server\": {...}}")
        name = check_name(server.get("name"))
        flavor = FLAVORS.get(str(server.get("flavorRef", "")).rsplit("/", 1)[-1])
        if flavor is None:
            raise errors.Invalid(f"Flavor {server.get('flavorRef')!r} could not be found.")
        image_ref = str(server.get("imageRef", "")).rsplit("/", 1)[-1]
        metadata = server.get("metadata", {})
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise errors.Invalid("Invalid input for field/attribute metadata: string values are required")
        loop = asyncio.get_running_loop()
        image = await loop.run_in_executor(None, self._image_for_boot, ctx, image_ref)
        server_id = str(uuid.uuid4())
        inst = Instance(id=server_id, name=name, project_id=ctx.project_id, user_id=ctx.user_id,
                        vm_state=VmState.BUILDING, task_state=TaskState.SPAWNING, flavor_id=flavor.id,
                        vcpus=flavor.vcpus, memory_mb=flavor.ram, root_gb=flavor.disk, image_ref=image_ref,
                        domain_name=f"instance-{server_id}", metadata_json=json.dumps(metadata),
                        guest_agent=image.properties.get("hw_qemu_guest_agent", "no").lower() in ("yes", "true"),
                        system_metadata=json.dumps({f"image_{k}": v for k, v in image.properties.items()
                                                    if k not in NOT_INHERITED
                                                    and not k.startswith(("os_glance", "os_freezeframe_"))}))
        await self.db.run(lambda s: s.add(inst))
        # As Nova: answer at once (BUILD); downloading the image and booting happen meanwhile.
        task = asyncio.ensure_future(loop.run_in_executor(None, self._spawn, server_id, image))
        self._spawning.add(task)
        task.add_done_callback(self._spawning.discard)
        return inst

    def _image_for_boot(self, ctx: RequestContext, image_ref: str):
        with self.image_client() as images:
            try:
                image = images.show(image_ref)
            except GlanceError as exc:
                if exc.status == 404:
                    raise errors.Invalid(f"Image {image_ref} could not be found.") from None
                raise errors.BackendUnavailable(f"The image service failed: {exc}") from None
        if image.status != "active":
            raise errors.Invalid(f"Image {image_ref} is not active.")
        if not ctx.is_admin and image.owner != ctx.project_id and image.visibility not in ("public", "community"):
            raise errors.Invalid(f"Image {image_ref} could not be found.")
        return image

    def _cached(self, image_id: str) -> Path:
        """Download an image once into the local base cache."""
        base = self.instances_path / "_base" / image_id
        if not base.exists():
            base.parent.mkdir(parents=True, exist_ok=True)
            partial = base.with_suffix(".part")
            with self.image_client() as images, open(partial, "wb") as fh:
                sink = SparseSink(fh)
                images.download(images.show(image_id), sink)
                sink.close()
            partial.rename(base)
        return base

    def _spawn(self, server_id: str, image) -> None:
        try:
            base = self._cached(image.id)
            disk_dir = self.instances_path / server_id
            disk_dir.mkdir(parents=True, exist_ok=True)
            disk = disk_dir / "disk"
            fmt = "qcow2" if image.disk_format == "qcow2" else "raw"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(base), str(disk)],
                           check=True, capture_output=True)
            kernel = self._cached(image.properties["kernel_id"]) if image.properties.get("kernel_id") else None
            initrd = self._cached(image.properties["ramdisk_id"]) if image.properties.get("ramdisk_id") else None
            inst = self.db.run_sync(lambda s: s.get(Instance, server_id))
            spec = GuestSpec(name=inst.domain_name, uuid=server_id, vcpus=inst.vcpus, memory_mb=inst.memory_mb,
                             root_disk=disk, kernel=kernel, initrd=initrd,
                             cmdline=image.properties.get("os_command_line"), guest_agent=inst.guest_agent)
            info = self.driver.spawn(spec)
            values = {"vm_state": VmState.ACTIVE.value, "power_state": info.state.value, "root_disk": str(disk),
                      "root_target": info.disks[0].target if info.disks else "vda"}
            self.db.run_sync(lambda s: set_task_state(s, server_id, TaskState.SPAWNING, None, reason="spawned",
                                                      values=values))
        except Exception as exc:
            LOG.exception("server %s failed to spawn", server_id)
            fault = str(exc)[:1000]
            self.db.run_sync(lambda s: set_task_state(s, server_id, TaskState.SPAWNING, None, reason="spawn failed",
                                                      values={"vm_state": VmState.ERROR.value, "fault": fault}))

    async def adopt(self, ctx: RequestContext, body: Any) -> Instance:
        """Take an existing domain on this host under management as a server (admin only)."""
        if not ctx.is_admin:
            raise errors.Forbidden("Only administrators can adopt existing domains")
        domain = check_name((body or {}).get("adopt", {}).get("domain") if isinstance(body, dict) else None, "domain")
        loop = asyncio.get_running_loop()
        try:
            info = await loop.run_in_executor(None, self.driver.get_info, domain)
        except DomainNotFound:
            raise errors.NotFound(f"No domain named {domain!r} on this host") from None
        if not info.disks:
            raise errors.Invalid(f"Domain {domain!r} has no disk to snapshot")
        inst = Instance(id=info.uuid, name=domain, project_id=ctx.project_id, user_id=ctx.user_id,
                        vm_state=_VM_STATE[info.state], task_state=None, power_state=info.state.value,
                        flavor_id="adopted", vcpus=info.vcpus, memory_mb=info.memory_mb,
                        root_gb=max(1, info.disks[0].virtual_size >> 30), domain_name=domain,
                        root_disk=str(info.disks[0].path), root_target=info.disks[0].target, adopted=True,
                        guest_agent=(body["adopt"].get("guest_agent") is True))

        def add(session: Session) -> Instance:
            if session.scalars(select(Instance).where(Instance.domain_name == domain)).first():
                raise errors.Conflict(f"Domain {domain!r} is already a server")
            session.add(inst)
            return inst
        return await self.db.run(add)

    async def delete(self, ctx: RequestContext, server_id: str) -> None:
        def begin(session: Session) -> Instance:
            inst = self._get(session, ctx, server_id)
            if inst.task_state not in (None, TaskState.DELETING):
                raise errors.Conflict(f"Cannot 'delete' instance {server_id} while it is in task_state "
                                      f"{inst.task_state}")
            if inst.task_state is None:
                set_task_state(session, server_id, None, TaskState.DELETING, reason="delete")
            return inst
        inst = await self.db.run(begin)
        loop = asyncio.get_running_loop()
        if not inst.adopted:
            await loop.run_in_executor(None, self.driver.destroy, inst.domain_name)
            await loop.run_in_executor(None, _rmtree, self.instances_path / server_id)
        await self.db.run(lambda s: set_task_state(s, server_id, TaskState.DELETING, None, reason="deleted",
                                                   values={"vm_state": VmState.DELETED.value}))

    async def power(self, ctx: RequestContext, server_id: str, on: bool) -> None:
        task_state = TaskState.POWERING_ON if on else TaskState.POWERING_OFF
        wanted_from = VmState.STOPPED if on else VmState.ACTIVE

        def begin(session: Session) -> Instance:
            inst = self._get(session, ctx, server_id)
            if inst.vm_state != wanted_from:
                raise errors.Conflict(f"Cannot '{'start' if on else 'stop'}' instance {server_id} while it is in "
                                      f"vm_state {inst.vm_state}")
            set_task_state(session, server_id, None, task_state, reason="power")
            return inst
        inst = await self.db.run(begin)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self.driver.power_on if on else self.driver.power_off, inst.domain_name)
            values = {"vm_state": (VmState.ACTIVE if on else VmState.STOPPED).value,
                      "power_state": (PowerState.RUNNING if on else PowerState.SHUTDOWN).value}
        except Exception as exc:
            values = {"fault": str(exc)[:1000]}
            LOG.warning("server %s: power %s failed: %s", server_id, "on" if on else "off", exc)
        await self.db.run(lambda s: set_task_state(s, server_id, task_state, None, reason="power done", values=values))

    # -- snapshots (top half) ----------------------------------------------------------------

    async def create_image(self, ctx: RequestContext, server_id: str, body: dict[str, Any], *,
                           kind: str) -> tuple[str, str]:
        """Validate, create the image (queued), record the workflow, hand it to the conductor.
        Returns (image_id, workflow_id). Exactly one of concurrent snapshots of a server wins."""
        name = check_name(body.get("name"))
        metadata = body.get("metadata", {})
        if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in metadata.items()):
            raise errors.Invalid("Invalid input for field/attribute metadata: string keys and values are required")
        params: dict[str, Any] = {}
        if kind == "backup":
            backup_type = body.get("backup_type")
            if not isinstance(backup_type, str) or not backup_type:
                raise errors.Invalid("Invalid input for field/attribute backup_type: a string is required")
            rotation = body.get("rotation")
            if isinstance(rotation, str) and rotation.isdigit():
                rotation = int(rotation)
            if not isinstance(rotation, int) or isinstance(rotation, bool) or rotation < 0:
                raise errors.Invalid("Invalid input for field/attribute rotation: an integer >= 0 is required")
            params.update(backup_type=backup_type, rotation=rotation)
        inst = await self.show(ctx, server_id)
        if inst.vm_state not in SNAPSHOTTABLE or inst.task_state is not None:
            raise errors.Conflict(f"Cannot '{'createBackup' if kind == 'backup' else 'createImage'}' instance "
                                  f"{server_id} while it is in vm_state {inst.vm_state}"
                                  + (f" and task_state {inst.task_state}" if inst.task_state else ""))
        system = json.loads(inst.system_metadata)
        image_props = {k[len("image_"):]: v for k, v in system.items() if k.startswith("image_")}
        params["quiesce"] = image_props.get("hw_qemu_guest_agent", "no").lower() in ("yes", "true") or inst.guest_agent
        params["require_quiesce"] = image_props.get("os_require_quiesce", "no").lower() in ("yes", "true")
        if params["require_quiesce"] and inst.vm_state == VmState.ACTIVE:
            agent = await asyncio.get_running_loop().run_in_executor(None, self.driver.agent_available,
                                                                     inst.domain_name)
            if not agent:
                raise errors.Conflict(f"Instance {server_id} requires quiesce (os_require_quiesce) but its guest "
                                      "agent does not answer; no snapshot was taken")
        workflow_id = str(uuid.uuid4())
        attrs: dict[str, Any] = {
            **image_props,
            "name": name, "container_format": "bare", "disk_format": "qcow2", "visibility": "private",
            "owner": ctx.project_id, "instance_uuid": server_id, "user_id": ctx.user_id or "",
            "image_type": "backup" if kind == "backup" else "snapshot", "base_image_ref": inst.image_ref or "",
            "os_freezeframe_workflow_id": workflow_id,
            "os_freezeframe_workflow_state": WorkflowState.PENDING.value,
            "os_freezeframe_workflow_progress": "0",
            "os_freezeframe_workflow_last_state_change_at": utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
            **metadata,
        }
        if kind == "backup":
            attrs["backup_type"] = params["backup_type"]
        loop = asyncio.get_running_loop()
        image_id = await loop.run_in_executor(None, self._create_image_record, attrs)
        task_from, task_to = None, (TaskState.IMAGE_BACKUP if kind == "backup" else TaskState.IMAGE_SNAPSHOT_PENDING)

        def record(session: Session) -> None:
            running = session.scalar(select(Workflow.id).where(
                Workflow.state.not_in([s.value for s in (WorkflowState.IMAGE_ACTIVE, WorkflowState.REVERTED,
                                                         WorkflowState.CANCELLED, WorkflowState.FAILED)]))
                .limit(self.max_concurrent_snapshots).offset(self.max_concurrent_snapshots - 1))
            if running is not None:
                raise errors.Conflict(f"Too many snapshots in progress (max {self.max_concurrent_snapshots}); "
                                      "retry later")
            set_task_state(session, server_id, task_from, task_to, reason=f"{kind} requested")
            session.add(Workflow(id=workflow_id, kind=kind, state=WorkflowState.PENDING.value, resource_id=server_id,
                                 image_id=image_id, project_id=ctx.project_id, user_id=ctx.user_id,
                                 request_id=ctx.request_id, params=json.dumps(params)))
            session.add(InstanceAction(instance_uuid=server_id, action="createBackup" if kind == "backup" else
                                       "createImage", request_id=ctx.request_id, project_id=ctx.project_id,
                                       user_id=ctx.user_id, workflow_id=workflow_id))
        try:
            await self.db.run(record)
        except errors.FreezeframeError:
            await loop.run_in_executor(None, self._delete_image, image_id)  # lost the race: no orphan image
            raise
        self.submit(workflow_id)
        LOG.info("server %s: %s %s accepted as workflow %s", server_id, kind, image_id, workflow_id)
        return image_id, workflow_id

    def _create_image_record(self, attrs: dict[str, Any]) -> str:
        with self.image_client() as images:
            try:
                return images.create(attrs).id
            except GlanceError as exc:
                if exc.status and exc.status < 500:
                    raise errors.Invalid(f"The image service refused the snapshot image: {exc}") from None
                raise errors.BackendUnavailable(f"The image service failed: {exc}") from None

    def _delete_image(self, image_id: str) -> None:
        with self.image_client() as images:
            try:
                images.delete(image_id)
            except GlanceError as exc:
                LOG.warning("could not delete image %s: %s", image_id, exc)


_ZEROS = bytes(64 << 10)


class SparseSink:
    """A file sink that leaves 64 KiB runs of zeros as holes: a base image cached sparse lets
    QEMU see them as unallocated, so snapshots of servers booted from it skip them too."""

    def __init__(self, fh) -> None:
        self.fh = fh

    def write(self, block: bytes) -> int:
        step = len(_ZEROS)
        for pos in range(0, len(block), step):
            piece = block[pos:pos + step]
            if piece == _ZEROS[:len(piece)]:
                self.fh.seek(len(piece), 1)
            else:
                self.fh.write(piece)
        return len(block)

    def close(self) -> None:
        self.fh.truncate(self.fh.tell())


def _rmtree(path: Path) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)
