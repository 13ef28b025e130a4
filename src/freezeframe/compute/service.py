"""Servers: create/list/show/delete/start/stop, adoption of existing domains, and the top half
of createImage/createBackup (seed 001: the image exists, queued, before the call returns)."""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from freezeframe.common import errors
from freezeframe.common.context import Actor, RequestContext
from freezeframe.common.policy import Policy
from freezeframe.common.pools import BoundedPool
from freezeframe.common.strict import INT32_MAX, is_uuid, parse_uint, shown
from freezeframe.common.timeutil import utcnow
from freezeframe.compute import bdm
from freezeframe.compute.baremetal_ops import BaremetalFor, BaremetalOps
from freezeframe.compute.drivers.base import DomainNotFound, PowerState
from freezeframe.compute.hostside import BootRequest, Hosts
from freezeframe.compute.model import Instance, InstanceAction
from freezeframe.compute.checks import check_name
from freezeframe.compute.listing import ServerQuery, page
from freezeframe.compute.states import SNAPSHOTTABLE, TaskState, VmState, set_task_state, set_vm_state
from freezeframe.compute.volume_ops import VolumeOps
from freezeframe.conductor.service import Workflows
from freezeframe.db.session import Database
from freezeframe.images.client import CORE_ATTRIBUTES, GlanceClient, GlanceError

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
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# Properties the compute service sets on a snapshot itself: never taken from the user's metadata
# (a forged instance_uuid or image_type would, e.g., make backup rotation delete real backups).
SET_BY_COMPUTE = {"instance_uuid", "image_type", "backup_type", "base_image_ref", "user_id", "owner_id",
                  "image_location", "image_state", "owner_project_name", "owner_user_name"}
RESERVED_PREFIXES = ("os_glance", "os_freezeframe_")
# Nova's max_concurrent_snapshots counts every kind of snapshot on a host (assisted volume ones too).
SNAPSHOT_KINDS = ("snapshot", "backup", "assisted-volume-snapshot")
_VM_STATE = {PowerState.RUNNING: VmState.ACTIVE, PowerState.PAUSED: VmState.PAUSED,
             PowerState.SUSPENDED: VmState.SUSPENDED, PowerState.SHUTDOWN: VmState.STOPPED,
             PowerState.CRASHED: VmState.ERROR, PowerState.NOSTATE: VmState.STOPPED}


def parse_image_ref(value: Any) -> str:
    """``imageRef``: an image id, or a URL ending in one; 400 for anything else (an empty
    string, ``#`` or ``?x`` name no image)."""
    image_ref = value.rsplit("/", 1)[-1] if isinstance(value, str) else None
    if not is_uuid(image_ref):
        raise errors.Invalid(f"Invalid imageRef {shown(value)}: an image id (UUID) or a URL ending in one "
                             "is required")
    return image_ref


MAX_METADATA_ITEMS = 128     # Nova's metadata_items quota default


def check_server_metadata(metadata: Any) -> dict[str, str]:
    """A server's metadata as Nova takes it: string keys of 1-255 and values of at most 255
    characters (400), at most 128 items (403, Nova's quota)."""
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise errors.Invalid("Invalid input for field/attribute metadata: string keys and values are required")
    if any(not 1 <= len(k) <= 255 or len(v) > 255 for k, v in metadata.items()):
        raise errors.Invalid("Invalid input for field/attribute metadata: keys of 1-255 and values of at most "
                             "255 characters are required")
    if len(metadata) > MAX_METADATA_ITEMS:
        raise errors.Forbidden(f"Quota exceeded for metadata items: at most {MAX_METADATA_ITEMS} are allowed")
    return dict(metadata)


def check_snapshot_metadata(metadata: Any) -> dict[str, str]:
    """A snapshot's metadata becomes image properties: the same rules as a user's own image
    create — no core attributes (owner, visibility, ...), no reserved names — plus none of the
    properties the compute service sets itself."""
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise errors.Invalid("Invalid input for field/attribute metadata: string keys and values are required")
    for key, value in metadata.items():
        if not 1 <= len(key) <= 255 or len(value) > 255:
            raise errors.Invalid("Invalid input for field/attribute metadata: keys of 1-255 and values of at "
                                 "most 255 characters are required")
        if key.startswith(RESERVED_PREFIXES):
            raise errors.Forbidden(f"Attribute '{key}' is reserved.")
        if key in CORE_ATTRIBUTES:
            raise errors.Invalid(f"Invalid input for field/attribute metadata: '{key}' is an image attribute, "
                                 "not a property; it cannot be set through a snapshot's metadata")
        if key in SET_BY_COMPUTE:
            raise errors.Invalid(f"Invalid input for field/attribute metadata: '{key}' is set by the compute "
                                 "service")
    return dict(metadata)


class ComputeService:
    def __init__(self, db: Database, hosts: Hosts, images_for: Callable[[Actor], GlanceClient],
                 workflows: Workflows, *, policy: Policy, max_concurrent_snapshots: int = 5,
                 volumes_for: Callable[[Actor], Any] | None = None,
                 baremetal_for: BaremetalFor | None = None) -> None:
        self.db = db
        self.hosts = hosts                     # each server's host: this one, or another over its host API
        self.images_for = images_for           # the image API, acting for a user (their rights)
        self.workflows = workflows             # the conductor: long work is handed to it (submit)
        self.policy = policy
        self.max_concurrent_snapshots = max_concurrent_snapshots
        # Blocking work of requests (calls to the image service, the hypervisor) on a pool of
        # our own: nothing that answers those calls ever waits for it, and a full pool is a 503.
        self.pool = BoundedPool("compute", workers=8, queue=16)
        # Spawns (image download, boot) run after the 202, on their own bounded pool.
        self.spawner = BoundedPool("compute-spawn", workers=2, queue=32, serves_requests=False)
        # Volumes on servers (attach/detach, assisted snapshots): ``compute/volume_ops.py``, with
        # the volume API acting for a user (``assembly.service_volume_client``).
        self.volumes = VolumeOps(db, hosts, volumes_for, workflows, policy=policy, pool=self.pool,
                                 get_server=self._get)
        # Bare-metal servers (an adopted node; ``compute/baremetal_ops.py``), with the bare-metal
        # API acting for a user (``assembly.service_baremetal_client``; None: no such service).
        self.baremetal = BaremetalOps(db, baremetal_for, workflows, policy=policy, pool=self.pool,
                                      get_server=self._get, create_image_record=self._create_image_record,
                                      delete_image=self._delete_image, images_for=images_for)

    async def services(self, ctx: RequestContext) -> list[dict[str, Any]]:
        """The compute hosts as Nova lists its nova-compute services (os-services): this
        process's own host, and every registered one with its heartbeat."""
        self.policy.authorize(ctx, "os_compute_api:os-services:list")
        views = await self.pool.run(self.hosts.registry.all) if self.hosts.registry is not None else []
        found = [{"binary": "nova-compute", "host": v.name, "zone": "nova", "status": "disabled" if v.disabled else
                  "enabled", "state": "up" if v.up else "down", "updated_at": v.heartbeat_at.isoformat(),
                  "disabled_reason": None, "forced_down": False, "id": v.name} for v in views]
        if self.hosts.local is not None and all(s["host"] != self.hosts.local.name for s in found):
            found.insert(0, {"binary": "nova-compute", "host": self.hosts.local.name, "zone": "nova",
                             "status": "enabled", "state": "up", "updated_at": utcnow().isoformat(),
                             "disabled_reason": None, "forced_down": False, "id": self.hosts.local.name})
        return found

    def _driver(self, host: str | None):
        """The server's host's driver (blocking: the host registry; a Conflict when it is down)."""
        return self.hosts.get(host).driver

    # -- reads -------------------------------------------------------------------------------

    def _get(self, session: Session, ctx: RequestContext, server_id: str, action: str | None = None) -> Instance:
        """The server if the caller may see it (else 404), and may do ``action`` on it (else 403)."""
        inst = session.get(Instance, server_id) if _UUID.match(server_id) else None
        if inst is None or inst.vm_state == VmState.DELETED or (not ctx.is_admin and inst.project_id != ctx.project_id):
            raise errors.NotFound(f"Instance {server_id} could not be found.")
        if action is not None:
            self.policy.authorize(ctx, action, {"project_id": inst.project_id})
        return inst

    async def show(self, ctx: RequestContext, server_id: str) -> Instance:
        return await self.db.run(lambda s: self._get(s, ctx, server_id, "os_compute_api:servers:show"))

    async def list(self, ctx: RequestContext, detail: bool = False, query: ServerQuery | None = None,
                   ) -> list[Instance]:
        """The caller's servers as Nova lists them (``compute/listing.py``): their project's, or
        with ``all_tenants`` (admins) every project's; filtered, sorted, one page."""
        rule = "os_compute_api:servers:detail" if detail else "os_compute_api:servers:index"
        self.policy.authorize(ctx, rule)
        q = query or ServerQuery()
        if q.all_tenants:
            self.policy.authorize(ctx, rule + ":get_all_tenants")
        if q.nothing:
            return []

        def find(session: Session) -> list[Instance]:
            stmt = select(Instance)
            own = Instance.project_id == ctx.project_id
            if not q.all_tenants:
                stmt = stmt.where(own)
            elif q.project_id is not None:
                stmt = stmt.where(Instance.project_id == q.project_id)
            if q.deleted is not None:
                stmt = stmt.where((Instance.vm_state == VmState.DELETED) if q.deleted
                                  else (Instance.vm_state != VmState.DELETED))
            if q.vm_states is not None:
                stmt = stmt.where(Instance.vm_state.in_(q.vm_states))
            if q.changes_since is not None:
                stmt = stmt.where(Instance.updated_at >= q.changes_since)
            if q.changes_before is not None:
                stmt = stmt.where(Instance.updated_at <= q.changes_before)
            for attr, values in q.exact.items():
                stmt = stmt.where(getattr(Instance, attr).in_(values))
            marker = None
            if q.marker is not None:    # any server the caller could list, deleted ones too
                marker = session.get(Instance, q.marker) if is_uuid(q.marker) else None
                if marker is None or (not q.all_tenants and marker.project_id != ctx.project_id):
                    raise errors.Invalid(f"marker [{q.marker}] not found")
            return page(session.scalars(stmt), q, marker)
        return await self.db.run(find)

    async def usage(self, project_id: str | None) -> dict[str, int]:
        """What a project's servers (not deleted) use: instances, cores, RAM (MiB)."""
        from sqlalchemy import func

        def count(session: Session) -> dict[str, int]:
            n, cores, ram = session.execute(
                select(func.count(Instance.id), func.coalesce(func.sum(Instance.vcpus), 0),
                       func.coalesce(func.sum(Instance.memory_mb), 0))
                .where(Instance.project_id == project_id, Instance.vm_state != VmState.DELETED)).one()
            return {"instances": int(n), "cores": int(cores), "ram": int(ram)}
        return await self.db.run(count)

    async def actions(self, ctx: RequestContext, server_id: str) -> list[InstanceAction]:
        def find(session: Session) -> list[InstanceAction]:
            self._get(session, ctx, server_id, "os_compute_api:os-instance-actions:list")
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
        # Block devices (Nova's block_device_mapping_v2): checked whole before anything is made;
        # a root that is a volume is refused before imageRef is asked for.
        requested = bdm.parse_request(server.get("block_device_mapping_v2"), legacy=server.get("block_device_mapping"))
        image_ref = parse_image_ref(server.get("imageRef"))
        metadata = check_server_metadata(server.get("metadata", {}))
        self.policy.authorize(ctx, "os_compute_api:servers:create")
        actor = ctx.actor
        # Every image the server boots from must be visible to the caller's project: looked up
        # with the caller's rights, and only their canonical ids are used from then on.
        image = await self.pool.run(self._image_for_boot, actor, image_ref, "imageRef")
        boot_files = {}
        for key in ("kernel_id", "ramdisk_id"):
            if image.properties.get(key):
                ref = image.properties[key]
                if not is_uuid(ref):
                    raise errors.Invalid(f"Image {image.id} has an invalid {key} {shown(ref)}: an image id is "
                                         "required")
                boot_files[key] = await self.pool.run(self._image_for_boot, actor, ref, f"the image's {key}")
        # The image's own mapping (an instance-level snapshot's: bdm_v2) merged with the request's.
        devices = bdm.plan(bdm.merge(bdm.image_mapping(image), requested), image.id)
        if devices:
            devices = await self.pool.run(lambda: bdm.resolve(
                devices, image_for=lambda ref, what: self._image_for_boot(actor, ref, what),
                volume_client=(lambda: self.volumes.client(actor)) if self.volumes.volumes_for else None))
        server_id = str(uuid.uuid4())
        host = await self.pool.run(self.hosts.choose)
        inst = Instance(id=server_id, name=name, project_id=ctx.project_id, user_id=ctx.user_id,
                        vm_state=VmState.BUILDING, task_state=TaskState.SPAWNING, flavor_id=flavor.id,
                        vcpus=flavor.vcpus, memory_mb=flavor.ram, root_gb=flavor.disk, image_ref=image.id,
                        domain_name=f"instance-{server_id}", host=host, metadata_json=json.dumps(metadata),
                        guest_agent=image.properties.get("hw_qemu_guest_agent", "no").lower() in ("yes", "true"),
                        system_metadata=json.dumps({f"image_{k}": v for k, v in image.properties.items()
                                                    if k not in NOT_INHERITED
                                                    and not k.startswith(("os_glance", "os_freezeframe_"))}))
        if self.spawner.saturated():
            raise errors.Busy("Too many servers are being built; retry shortly", retry_after=5)
        await self.db.run(lambda s: self._add_server(s, inst, devices))
        # As Nova: answer at once (BUILD); downloading the images and booting happen meanwhile.
        try:
            self.spawner.submit(self._spawn, server_id, actor, image, boot_files, devices)
        except errors.Busy as exc:   # filled meanwhile: the server goes to ERROR, not stuck in BUILD
            self._spawn_failed(server_id, exc)
        return inst

    def _image_for_boot(self, actor: Actor, image_ref: str, what: str):
        """The image, as the server's user sees it; the same 400 whether it does not exist or
        is not theirs to see (no oracle for other projects' images)."""
        with self.images_for(actor) as images:
            try:
                image = images.show(image_ref)
            except GlanceError as exc:
                if exc.status in (400, 403, 404):
                    raise errors.Invalid(f"Image {image_ref} ({what}) could not be found.") from None
                raise errors.BackendUnavailable(f"The image service failed: {exc}") from None
        if not is_uuid(image.id) or image.id != image_ref:
            raise errors.Invalid(f"Image {image_ref} ({what}) could not be found.")
        if image.status != "active":
            raise errors.Invalid(f"Image {image_ref} ({what}) is not active.")
        return image

    @staticmethod
    def _add_server(session: Session, inst: Instance, devices: tuple[bdm.Device, ...]) -> None:
        """The server and its block devices' rows (``attaching``), in one transaction."""
        session.add(inst)
        session.flush()
        session.add_all(bdm.rows(devices, inst.id))

    def _spawn_failed(self, server_id: str, exc: BaseException) -> None:
        """ERROR with the fault; the rows of block devices never made go."""
        fault = str(exc)[:1000]

        def fail(session: Session) -> None:
            bdm.drop_unbuilt(session, server_id)
            set_task_state(session, server_id, TaskState.SPAWNING, None, reason="spawn failed",
                           vm_state=VmState.ERROR, vm_from=VmState.BUILDING, values={"fault": fault})
        self.db.run_sync(fail)

    def _spawn(self, server_id: str, actor: Actor, image, boot_files: dict[str, Any],
               devices: tuple[bdm.Device, ...] = ()) -> None:
        """New volumes made and waited for, the disks made and the domain started, the volumes
        hot-plugged, ACTIVE — or, when any step fails, every one of them undone, ERROR."""
        inst = None
        made = bdm.SpawnDevices(self.db, self.volumes, server_id, actor, devices)
        booting = False
        try:
            inst = self.db.run_sync(lambda s: s.get(Instance, server_id))
            made.create_volumes()
            req = BootRequest(server_id=server_id, domain_name=inst.domain_name, vcpus=inst.vcpus,
                              memory_mb=inst.memory_mb, image_id=image.id,
                              kernel_id=boot_files["kernel_id"].id if "kernel_id" in boot_files else None,
                              ramdisk_id=boot_files["ramdisk_id"].id if "ramdisk_id" in boot_files else None,
                              cmdline=image.properties.get("os_command_line"), guest_agent=inst.guest_agent,
                              local_disks=made.local_disks())
            host = self.hosts.get(inst.host)
            booting = True
            booted = host.boot(actor, req, image)
            info = booted.info
            made.booted(info)
            made.attach(inst)
            values = {"power_state": info.state.value, "root_disk": booted.root_disk,
                      "root_target": info.disks[0].target if info.disks else "vda"}
            self.db.run_sync(lambda s: set_task_state(s, server_id, TaskState.SPAWNING, None, reason="spawned",
                                                      vm_state=VmState.ACTIVE, vm_from=VmState.BUILDING,
                                                      values=values))
        except Exception as exc:
            LOG.exception("server %s failed to spawn", server_id)
            if inst is not None and (devices or booting):
                remove = (lambda: self.hosts.get(inst.host).remove(inst.domain_name, inst.id, adopted=False)) \
                    if booting else None
                try:
                    made.undo(inst, remove)
                except Exception:
                    LOG.exception("server %s: undoing its spawn failed", server_id)
            self._spawn_failed(server_id, exc)

    async def adopt(self, ctx: RequestContext, body: Any) -> Instance:
        """Take an existing domain on this host under management as a server (admin only), or
        (``{"adopt": {"node": ...}}``) give an active bare-metal node its server record."""
        adopt = body.get("adopt") if isinstance(body, dict) else None
        if isinstance(adopt, dict) and "node" in adopt:
            return await self.baremetal.adopt(ctx, adopt)
        self.policy.authorize(ctx, "freezeframe:compute:adopt")
        if not isinstance(adopt, dict):
            raise errors.Invalid("Invalid input: the body must be {\"adopt\": {\"domain\": ...}} or "
                                 "{\"adopt\": {\"node\": ...}}")
        domain = check_name(adopt.get("domain"), "domain")
        host = adopt.get("host")
        if host is not None and not isinstance(host, str):
            raise errors.Invalid("Invalid input for field/attribute host: a compute host's name is required")
        host = host or await self.pool.run(self.hosts.choose)
        try:
            info = await self.pool.run(lambda: self._driver(host).get_info(domain))
        except DomainNotFound:
            raise errors.NotFound(f"No domain named {domain!r} on host {host}") from None
        if not info.disks:
            raise errors.Invalid(f"Domain {domain!r} has no disk to snapshot")
        inst = Instance(id=info.uuid, name=domain, project_id=ctx.project_id, user_id=ctx.user_id,
                        vm_state=_VM_STATE[info.state], task_state=None, power_state=info.state.value,
                        flavor_id="adopted", vcpus=info.vcpus, memory_mb=info.memory_mb,
                        root_gb=max(1, info.disks[0].virtual_size >> 30), domain_name=domain, host=host,
                        root_disk=str(info.disks[0].path), root_target=info.disks[0].target, adopted=True,
                        guest_agent=(adopt.get("guest_agent") is True))

        def add(session: Session) -> Instance:
            if session.scalars(select(Instance).where(Instance.domain_name == domain)).first():
                raise errors.Conflict(f"Domain {domain!r} is already a server")
            session.add(inst)
            return inst
        return await self.db.run(add)

    async def delete(self, ctx: RequestContext, server_id: str) -> None:
        def begin(session: Session) -> Instance:
            inst = self._get(session, ctx, server_id, "os_compute_api:servers:delete")
            if inst.task_state not in (None, TaskState.DELETING):
                raise errors.Conflict(f"Cannot 'delete' instance {server_id} while it is in task_state "
                                      f"{inst.task_state}")
            if inst.task_state is None:
                set_task_state(session, server_id, None, TaskState.DELETING, reason="delete")
            return inst
        found = await self.db.run(lambda s: self._get(s, ctx, server_id))
        if found.node is not None:                 # a bare-metal server: its record goes, the node stays
            return await self.baremetal.delete(ctx, server_id)
        await self.pool.run(self.hosts.get, found.host)     # its host is up (else 409: nothing changed)
        inst = await self.db.run(begin)
        await self.pool.run(lambda: self.hosts.get(inst.host).remove(inst.domain_name, inst.id,
                                                                     adopted=inst.adopted), wait=30)
        # Its volumes are detached (an adopted domain stays: from the guest too), as Nova's delete.
        await self.pool.run(lambda: self.volumes.detach_all(inst, ctx.actor, in_guest=inst.adopted), wait=30)
        await self.db.run(lambda s: set_task_state(s, server_id, TaskState.DELETING, None, reason="deleted",
                                                   vm_state=VmState.DELETED))

    async def power(self, ctx: RequestContext, server_id: str, on: bool) -> None:
        task_state = TaskState.POWERING_ON if on else TaskState.POWERING_OFF
        wanted_from = VmState.STOPPED if on else VmState.ACTIVE

        def begin(session: Session) -> Instance:
            inst = self._get(session, ctx, server_id, "os_compute_api:servers:start" if on else
                             "os_compute_api:servers:stop")
            if inst.vm_state != wanted_from:
                raise errors.Conflict(f"Cannot '{'start' if on else 'stop'}' instance {server_id} while it is in "
                                      f"vm_state {inst.vm_state}")
            set_task_state(session, server_id, None, task_state, reason="power")
            return inst
        found = await self.db.run(lambda s: self._get(s, ctx, server_id))
        if found.node is not None:                 # a bare-metal server: its node's power
            return await self.baremetal.power(ctx, server_id, on)
        await self.pool.run(self.hosts.get, found.host)     # its host is up (else 409: nothing changed)
        inst = await self.db.run(begin)
        try:
            driver = await self.pool.run(self._driver, inst.host, wait=30)
            await self.pool.run(driver.power_on if on else driver.power_off, inst.domain_name, wait=30)
            vm_state: VmState | None = VmState.ACTIVE if on else VmState.STOPPED
            values = {"power_state": (PowerState.RUNNING if on else PowerState.SHUTDOWN).value}
        except Exception as exc:
            vm_state, values = None, {"fault": str(exc)[:1000]}
            LOG.warning("server %s: power %s failed: %s", server_id, "on" if on else "off", exc)
        await self.db.run(lambda s: set_task_state(s, server_id, task_state, None, reason="power done",
                                                   vm_state=vm_state, vm_from=wanted_from, values=values))

    # -- snapshots (top half) ----------------------------------------------------------------

    async def create_image(self, ctx: RequestContext, server_id: str, body: dict[str, Any], *,
                           kind: str, devices: Any = "root") -> tuple[str, str]:
        """Validate, create the image (queued), record the workflow, hand it to the conductor.
        Returns (image_id, workflow_id). Exactly one of concurrent snapshots of a server wins.
        ``devices``: "root" (createImage, createBackup), or the instance-level snapshot's
        choice (seed 003: a list of device names, None = all; ``compute/devices.py``)."""
        name = check_name(body.get("name"))
        metadata = check_snapshot_metadata(body.get("metadata", {}))
        if (await self.db.run(lambda s: self._get(s, ctx, server_id))).node is not None:
            # A bare-metal server: the same checks and image; its node snapshots into it.
            return await self.baremetal.create_image(ctx, server_id, kind=kind, devices=devices, name=name,
                                                     metadata=metadata, initial_state=self._initial_state())
        params: dict[str, Any] = {}
        if devices != "root":
            from freezeframe.compute.devices import parse_devices, plan_devices
            wanted = parse_devices(devices)
            params["plan"] = await self.db.run(lambda s: plan_devices(s, self._get(s, ctx, server_id), wanted))
            params["name"] = name
        if kind == "backup":
            backup_type = body.get("backup_type")
            if not isinstance(backup_type, str) or not backup_type or len(backup_type) > 255:
                raise errors.Invalid("Invalid input for field/attribute backup_type: a string is required")
            rotation = parse_uint("rotation", body.get("rotation"), maximum=INT32_MAX)  # ASCII digits, bounded
            params.update(backup_type=backup_type, rotation=rotation)
        action = "os_compute_api:os-create-backup" if kind == "backup" else "os_compute_api:servers:create_image"
        verb = "createBackup" if kind == "backup" else "createImage"
        if "plan" in params:
            action, verb = "freezeframe:compute:snapshot", "snapshot"
        inst = await self.db.run(lambda s: self._get(s, ctx, server_id, action))
        if inst.vm_state not in SNAPSHOTTABLE or inst.task_state is not None:
            raise errors.Conflict(f"Cannot '{verb}' instance {server_id} while it is in vm_state {inst.vm_state}"
                                  + (f" and task_state {inst.task_state}" if inst.task_state else ""))
        system = json.loads(inst.system_metadata)
        image_props = {k[len("image_"):]: v for k, v in system.items() if k.startswith("image_")}
        params["quiesce"] = image_props.get("hw_qemu_guest_agent", "no").lower() in ("yes", "true") or inst.guest_agent
        params["require_quiesce"] = image_props.get("os_require_quiesce", "no").lower() in ("yes", "true")
        if params["require_quiesce"] and inst.vm_state == VmState.ACTIVE:
            agent = await self.pool.run(lambda: self._driver(inst.host).agent_available(inst.domain_name))
            if not agent:
                raise errors.Conflict(f"Instance {server_id} requires quiesce (os_require_quiesce) but its guest "
                                      "agent does not answer; no snapshot was taken")
        task_to = TaskState.IMAGE_BACKUP if kind == "backup" else TaskState.IMAGE_SNAPSHOT_PENDING
        host = inst.host or await self.pool.run(self.hosts.choose)
        await self.pool.run(self.hosts.get, host)     # its host is up (else 409: nothing is created)

        def claim(session: Session) -> None:
            """One compare-and-set decides which of concurrent snapshots of a server wins,
            before any image exists (the losers leave nothing behind)."""
            running = self.workflows.count_running(kinds=SNAPSHOT_KINDS, host=host, session=session)
            if running >= self.max_concurrent_snapshots:
                raise errors.Conflict(f"Too many snapshots in progress (max {self.max_concurrent_snapshots}); "
                                      "retry later")
            set_task_state(session, server_id, None, task_to, reason=f"{kind} requested")
        await self.db.run(claim)
        workflow_id = self.workflows.new_id()
        attrs: dict[str, Any] = {
            **image_props,
            **metadata,
            "name": name, "container_format": "bare", "disk_format": "qcow2", "visibility": "private",
            "instance_uuid": server_id, "user_id": ctx.user_id or "",
            "image_type": "backup" if kind == "backup" else "snapshot", "base_image_ref": inst.image_ref or "",
            "os_freezeframe_workflow_id": workflow_id,
            "os_freezeframe_workflow_state": self.workflows.initial_state(kind),
            "os_freezeframe_workflow_progress": "0",
            "os_freezeframe_workflow_last_state_change_at": utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if kind == "backup":
            attrs["backup_type"] = params["backup_type"]
        image_id = None
        try:
            # Created as the user (owner: their project; visibility only as they may).
            image_id = await self.pool.run(self._create_image_record, ctx.actor, attrs)

            def record_action(session: Session, wf_id: str) -> None:
                session.add(InstanceAction(instance_uuid=server_id, action=verb, request_id=ctx.request_id,
                                           project_id=ctx.project_id, user_id=ctx.user_id, workflow_id=wf_id))
            # Handed to the conductor (it records the workflow, with our action in the same
            # transaction, and posts it on its jobboard), for the user, with their rights.
            await self.db.pool.run(self.workflows.submit, kind, "server", server_id, params, ctx.actor,
                                   image_id=image_id, host=host, workflow_id=workflow_id,
                                   request_id=ctx.request_id, also=record_action)
        except BaseException:
            # Nothing half-done: the image (if made) goes, the server is free again.
            if image_id is not None:
                await self.pool.run(self._delete_image, ctx.actor, image_id, wait=30)
            await self.db.run(lambda s: set_task_state(s, server_id, task_to, None, reason=f"{kind} not accepted"))
            raise
        LOG.info("server %s: %s %s accepted as workflow %s", server_id, kind, image_id, workflow_id)
        return image_id, workflow_id

    def _initial_state(self) -> str:
        """Where a node snapshot's workflow starts (as a VM snapshot's: seed 000's PENDING)."""
        try:
            return self.workflows.initial_state("baremetal-snapshot")
        except Exception:           # the bare-metal kinds are registered elsewhere
            return self.workflows.initial_state("snapshot")

    def _create_image_record(self, actor: Actor, attrs: dict[str, Any]) -> str:
        with self.images_for(actor) as images:
            try:
                return images.create(attrs).id
            except GlanceError as exc:
                if exc.status in (401, 403):
                    raise errors.Forbidden(f"The image service refused the snapshot image: {exc.message}") from None
                if exc.status == 413:
                    raise errors.QuotaExceeded(f"The image service refused the snapshot image: {exc.message}") from None
                if exc.status and exc.status < 500:
                    raise errors.Invalid(f"The image service refused the snapshot image: {exc.message}") from None
                raise errors.BackendUnavailable(f"The image service failed: {exc}") from None

    def _delete_image(self, actor: Actor, image_id: str) -> None:
        with self.images_for(actor) as images:
            try:
                images.delete(image_id)
            except GlanceError as exc:
                LOG.warning("could not delete image %s: %s", image_id, exc)


    # -- admin: os-resetState ----------------------------------------------------------------

    async def reset_state(self, ctx: RequestContext, server_id: str, state: Any) -> None:
        """Nova's os-resetState (admin): vm_state to ``active`` or ``error``, task_state cleared —
        the way out for a server whose state is wrong, whatever task it seems to be in."""
        if state not in ("active", "error"):
            raise errors.Invalid("Invalid input for field/attribute state: must be 'active' or 'error'")

        def reset(session: Session) -> None:
            inst = self._get(session, ctx, server_id, "os_compute_api:os-admin-actions:reset_state")
            why = f"os-resetState by {ctx.user_id}"
            if inst.task_state is not None:
                set_task_state(session, inst.id, TaskState(inst.task_state), None, reason=why)
            set_vm_state(session, inst.id, VmState(state), frm=VmState(inst.vm_state), reason=why)
            LOG.warning("server %s: os-resetState by %s: vm_state %s -> %s, task_state %s -> None", server_id,
                        ctx.user_id, inst.vm_state, state, inst.task_state)
        await self.db.run(reset)
