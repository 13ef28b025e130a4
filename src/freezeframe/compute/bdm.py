"""A new server's block devices (Nova's ``block_device_mapping_v2``): what a create request and
its image ask for, checked and planned before anything is made, and built around the boot.

Three steps, the first two in the create request (its 400s, before the 202):

- ``parse_request`` takes the request's entries with Nova's schema (unknown keys, bad UUIDs,
  sizes, device names, duplicates: 400), ``image_mapping`` the image's ``block_device_mapping``
  (BDM v2 dicts as Nova writes them into a snapshot, ``bdm_v2`` = "True": facts §3), ``merge``
  joins them by device name as Nova does (the request wins), ``plan`` drops the root (the
  image's own data: a root that is a volume is a 400) and names every device as the guest will
  see it, and ``resolve`` asks the image and volume services what is cheap to ask (the image is
  visible and active, the snapshot exists and is available, the volume is available) and fills
  in the sizes.
- ``SpawnDevices`` (the spawn, after the 202) creates the new volumes (from snapshots, images,
  or blank) as the user and waits for them (bounded, as Nova's 61 x 3 s), has the host make the
  local disks with the domain (``BootRequest.local_disks``), attaches the volumes right after
  the domain started (hot-plug, through the attachments API as ``volume_ops`` attaches), and
  records each device in ``block_device_mappings`` — or, when any step fails, undoes every one
  of them: no volume it created, no attachment, no row stays.

Device names are what the guest sees: the virt drivers name a domain's disks vda, vdb, ... in
order, so the local disks take vdb, vdc, ... (a named one keeps its name when it lies in that
run, the others fill the run in request order) and the volumes, hot-plugged at a target of their
own, keep the names they were given where free, else take the lowest free ones.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from freezeframe.common import errors
from freezeframe.common.context import Actor
from freezeframe.common.strict import INT32_MAX, is_uuid, shown
from freezeframe.compute.hostside import LocalDisk
from freezeframe.compute.model import BlockDeviceMapping, Instance
from freezeframe.compute.volume_ops import DEVICES

LOG = logging.getLogger(__name__)

BOOT_FROM_VOLUME = "booting from a volume is not supported by this compute service"
INVALID = "Block Device Mapping is Invalid: "
MAX_DEVICES = 24             # block devices besides the root
MAX_ENTRIES = 64             # entries a request or an image may list at all (bounded work)
MAX_LOCAL_GB = 16384         # a local disk is a sparse qcow2: bounded all the same
GIB = 1 << 30
SOURCES = ("blank", "image", "snapshot", "volume")
DESTINATIONS = ("local", "volume")
# (source, destination) pairs this compute service builds; the others are a 400.
SUPPORTED = {("blank", "local"), ("image", "local"), ("volume", "volume"), ("snapshot", "volume"),
             ("blank", "volume"), ("image", "volume")}
_TRUE = {"true", "1", "on", "yes", "y", "t"}
_FALSE = {"false", "0", "off", "no", "n", "f"}
# Nova's schema of a block_device_mapping_v2 item (with the legacy keys it keeps).
REQUEST_KEYS = {"source_type", "destination_type", "uuid", "image_id", "volume_id", "snapshot_id", "boot_index",
                "device_name", "volume_size", "delete_on_termination", "guest_format", "device_type", "disk_bus",
                "no_device", "tag", "volume_type", "virtual_name", "connection_info"}
# The keys of a BDM as Nova stores it (an image's mapping carries them, unset = null).
IMAGE_KEYS = REQUEST_KEYS | {"id", "instance_uuid", "attachment_id", "encrypted", "encryption_secret_uuid",
                             "encryption_format", "encryption_options", "created_at", "updated_at", "deleted_at",
                             "deleted"}


@dataclass(frozen=True)
class Device:
    """One block device of a new server, as the request or the image asked for it."""
    source_type: str                  # blank | image | snapshot | volume
    destination_type: str             # local | volume
    uuid: str | None = None           # the image, snapshot or volume (None: blank)
    boot_index: int | None = None     # 0: the root; None: not bootable
    device_name: str | None = None    # "vdb"; None: the next free one
    volume_size: int | None = None    # GiB
    delete_on_termination: bool = False
    guest_format: str | None = None
    tag: str | None = None
    volume_type: str | None = None
    no_device: bool = False           # {"device_name": ..., "no_device": true}: the image's entry is dropped
    origin: str = "request"           # where it came from, for messages: "request" or "image <id>"

    @property
    def local(self) -> bool:
        return self.destination_type == "local"

    @property
    def new_volume(self) -> bool:
        """A volume the spawn creates (from a snapshot, an image, or blank)."""
        return self.destination_type == "volume" and self.source_type != "volume"

    @property
    def named(self) -> str:
        return f"/dev/{self.device_name}" if self.device_name else f"a {self.source_type} device"


# -- parsing -----------------------------------------------------------------------------------

def parse_request(value: Any, *, legacy: Any = None) -> list[Device]:
    """The request's ``block_device_mapping_v2`` (absent: none), with Nova's schema: 400 for
    anything else. A root that is a volume is refused here already (before imageRef is asked)."""
    if legacy is not None:
        raise errors.Invalid(INVALID + "the legacy block_device_mapping is not supported by this compute service; "
                             "use block_device_mapping_v2")
    if value is None:
        return []
    if not isinstance(value, list):
        raise errors.Invalid("Invalid input for field/attribute block_device_mapping_v2: a list is required")
    if len(value) > MAX_ENTRIES:
        raise errors.Invalid(f"{INVALID}at most {MAX_DEVICES} block devices besides the root are supported")
    devices = [_entry(item, REQUEST_KEYS, "request", strict=True) for item in value]
    _no_duplicates(devices, "the request")
    return devices


def image_mapping(image) -> list[Device]:
    """The image's own block devices: its ``block_device_mapping`` when ``bdm_v2`` says v2
    (JSON, as Nova writes it into a snapshot image); none when it has no mapping."""
    attrs = image.attrs
    raw = attrs.get("block_device_mapping")
    if raw in (None, "", "[]", []):
        return []
    origin = f"image {image.id}"
    if str(attrs.get("bdm_v2", "")).lower() not in ("true", "1", "yes"):
        raise errors.Invalid(f"{INVALID}{origin} has a legacy block_device_mapping (no bdm_v2), which this compute "
                             "service does not support")
    try:
        entries = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        raise errors.Invalid(f"{INVALID}the block_device_mapping of {origin} is not JSON") from None
    if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
        raise errors.Invalid(f"{INVALID}the block_device_mapping of {origin} is not a list of at most "
                             f"{MAX_ENTRIES} entries")
    devices = [_entry(item, IMAGE_KEYS, origin, strict=False) for item in entries]
    _no_duplicates(devices, origin)
    return devices


def _entry(item: Any, allowed: set[str], origin: str, *, strict: bool) -> Device:
    """One entry. ``strict`` (a request's): Nova's schema exactly; an image's may carry every
    key Nova stores (unset = null), the ones that mean nothing here ignored."""
    where = "block_device_mapping_v2" if strict else f"the block_device_mapping of {origin}"
    if not isinstance(item, dict):
        raise errors.Invalid(f"Invalid input for field/attribute {where}: each item must be an object")
    extra = set(item) - allowed
    if extra:
        raise errors.Invalid(f"Invalid input for field/attribute {where}: Additional properties are not allowed "
                             f"({', '.join(sorted(map(shown, extra)))} unexpected)")
    if strict and item.get("connection_info") is not None:
        raise errors.Invalid(f"{INVALID}connection_info is set by the compute service, not by a request")
    if not strict and item.get("encrypted"):
        raise errors.Invalid(f"{INVALID}{origin} maps an encrypted volume, which this compute service does not "
                             "support")
    device_name = _device_name(item.get("device_name"), where)
    no_device = _boolean(item.get("no_device"), "no_device", where) if item.get("no_device") is not None else False
    if no_device:
        if device_name is None:
            raise errors.Invalid(f"{INVALID}an entry with no_device needs the device_name it suppresses")
        return Device("blank", "local", device_name=device_name, no_device=True, origin=origin)
    source = item.get("source_type")
    if source not in SOURCES:
        raise errors.Invalid(f"{INVALID}source_type {shown(source)}: one of {', '.join(SOURCES)} is required")
    dest = item.get("destination_type")
    if dest is None:
        dest = "volume" if source in ("volume", "snapshot") else "local"
    if dest not in DESTINATIONS:
        raise errors.Invalid(f"{INVALID}destination_type {shown(dest)}: local or volume is required")
    boot_index = _boot_index(item.get("boot_index"), where)
    if boot_index == 0 and dest == "volume":
        raise errors.Invalid(BOOT_FROM_VOLUME)
    if (source, dest) not in SUPPORTED:
        raise errors.Invalid(f"{INVALID}source_type {source} with destination_type {dest} is not supported")
    uuid = _uuid(item, source, where, strict=strict)
    size = item.get("volume_size")
    if size is not None:
        size = _size(size, where)
    if source == "blank" and size is None and boot_index != 0:
        raise errors.Invalid(f"{INVALID}volume_size (GiB) is required for a blank {dest} device")
    if dest == "local" and size is not None and size > MAX_LOCAL_GB:
        raise errors.Invalid(f"{INVALID}a local disk may be at most {MAX_LOCAL_GB} GiB, not {size}")
    for key, value in (("device_type", "disk"), ("disk_bus", "virtio")):
        if item.get(key) not in (None, value):
            raise errors.Invalid(f"{INVALID}{key} {shown(item.get(key))} is not supported (only {value!r})")
    for key in ("guest_format", "tag", "volume_type", "virtual_name"):
        if item.get(key) is not None and (not isinstance(item[key], str) or len(item[key]) > 255):
            raise errors.Invalid(f"Invalid input for field/attribute {where}: {key} must be a string of at most "
                                 "255 characters")
    tag = item.get("tag")
    if strict and tag is not None and (not 1 <= len(tag) <= 60 or "," in tag or "/" in tag):
        raise errors.Invalid("Invalid input for field/attribute tag: 1-60 characters, without ',' or '/'")
    dot = item.get("delete_on_termination")
    dot = _boolean(dot, "delete_on_termination", where) if dot is not None else (dest == "local")
    return Device(source, dest, uuid=uuid, boot_index=boot_index, device_name=device_name, volume_size=size,
                  delete_on_termination=dot, guest_format=item.get("guest_format"), tag=tag,
                  volume_type=item.get("volume_type"), origin=origin)


def _device_name(value: Any, where: str) -> str | None:
    """``/dev/vdX`` or ``vdX`` (vda: only the root's)."""
    if value is None:
        return None
    name = value[len("/dev/"):] if isinstance(value, str) and value.startswith("/dev/") else value
    if not isinstance(name, str) or name not in (*DEVICES, "vda"):
        raise errors.Invalid(f"{INVALID}device_name {shown(value)} is invalid: /dev/vdb ... /dev/vdz (or vdb ... vdz) "
                             "is required")
    return name


def _boot_index(value: Any, where: str) -> int | None:
    """Nova's: an integer, its digits as a string, or null; negative = not bootable. Only the
    root boots here (boot order among other devices is not supported)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise errors.Invalid(f"Invalid input for field/attribute {where}: boot_index must be an integer")
    if isinstance(value, str):
        digits = value[1:] if value.startswith("-") else value
        if not digits.isascii() or not digits.isdigit() or len(digits) > 10:
            raise errors.Invalid(f"Invalid input for field/attribute {where}: boot_index must be an integer")
        value = int(value)
    if value < 0:
        return None
    if value > 0:
        raise errors.Invalid(f"{INVALID}boot_index {value}: only the root (0) boots; other devices take -1 or null")
    return 0


def _boolean(value: Any, key: str, where: str) -> bool:
    """Nova's boolean parameter: true/false, or one of its strings."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise errors.Invalid(f"Invalid input for field/attribute {where}: {key} must be a boolean")


def _size(value: Any, where: str) -> int:
    """GiB: a positive integer (or its digits), at most INT32_MAX (Nova's volume_size)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 10:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= INT32_MAX:
        raise errors.Invalid(f"Invalid input for field/attribute {where}: volume_size must be an integer of at "
                             f"least 1 (GiB), not {shown(value)}")
    return value


def _uuid(item: dict[str, Any], source: str, where: str, *, strict: bool) -> str | None:
    """The id of what the device comes from: ``uuid``, or the legacy ``<source>_id`` (the same
    if both are given); none for a blank one (Nova: "Invalid device UUID.")."""
    given = [v for v in (item.get("uuid"), item.get(f"{source}_id")) if v is not None]
    others = [k for k in ("image_id", "volume_id", "snapshot_id") if k != f"{source}_id" and item.get(k) is not None]
    if strict and others:
        raise errors.Invalid(f"{INVALID}{others[0]} does not go with source_type {source}")
    if source == "blank":
        if given:
            raise errors.Invalid(INVALID + "Invalid device UUID.")
        return None
    if not given:
        raise errors.Invalid(INVALID + "Missing device UUID.")
    if any(not is_uuid(v) for v in given) or len({v.lower() for v in given}) > 1:
        raise errors.Invalid(f"Invalid input for field/attribute {where}: {shown(given[0])} is not a valid UUID")
    return given[0].lower()


def _no_duplicates(devices: list[Device], where: str) -> None:
    names = [d.device_name for d in devices if d.device_name]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise errors.Invalid(f"{INVALID}{where} names /dev/{twice[0]} more than once")
    volumes = [d.uuid for d in devices if d.source_type == "volume" and d.uuid]
    again = sorted({v for v in volumes if volumes.count(v) > 1})
    if again:
        raise errors.Invalid(f"{INVALID}{where} maps volume {again[0]} more than once")


# -- merging and planning ------------------------------------------------------------------------

def merge(image_devices: list[Device], requested: list[Device]) -> list[Device]:
    """Nova's ``_merge_bdms_lists``: the request's entries, then the image's whose device name
    the request does not use (the request wins); an image root (boot_index 0) replaces the
    request's. ``no_device`` entries have done their work once merged and go."""
    names = {d.device_name for d in requested if d.device_name}
    kept = [d for d in image_devices if d.device_name not in names]
    if any(d.boot_index == 0 for d in kept):
        requested = [d for d in requested if d.boot_index != 0]
    return [d for d in (*requested, *kept) if not d.no_device]


def plan(devices: list[Device], image_id: str) -> tuple[Device, ...]:
    """The server's devices besides its root, each named as the guest will see it, in device
    order (the local disks first: they are the domain's disks after the root). The root is the
    image's own data: an entry for it (boot_index 0, or /dev/vda) must be that image on a
    local disk."""
    others: list[Device] = []
    for device in devices:
        if device.boot_index == 0 or device.device_name == "vda":
            if device.destination_type == "volume":
                raise errors.Invalid(BOOT_FROM_VOLUME)
            if device.source_type != "image" or device.boot_index != 0 \
                    or (device.uuid is not None and device.uuid != image_id):
                raise errors.Invalid(f"{INVALID}the root disk (boot_index 0, /dev/vda) is the image {image_id} "
                                     f"itself; {device.origin} maps {device.named} there instead")
            continue
        others.append(device)
    _no_duplicates(others, "the request and the image together")
    if len(others) > MAX_DEVICES:
        raise errors.Invalid(f"{INVALID}at most {MAX_DEVICES} block devices besides the root are supported, not "
                             f"{len(others)}")
    locals_ = [d for d in others if d.local]
    volumes = [d for d in others if not d.local]
    run = list(DEVICES[:len(locals_)])
    keep = {d.device_name for d in locals_ if d.device_name in run}
    free = iter(n for n in run if n not in keep)
    named_locals = [replace(d, device_name=d.device_name if d.device_name in keep else next(free)) for d in locals_]
    taken = set(run)
    claimed = {d.device_name for d in volumes if d.device_name and d.device_name not in taken}
    spare = iter(n for n in DEVICES if n not in taken and n not in claimed)
    named_volumes = []
    for d in volumes:
        name = d.device_name if d.device_name in claimed else next(spare)
        named_volumes.append(replace(d, device_name=name))
    for before, after in zip(locals_ + volumes, named_locals + named_volumes):
        if before.device_name and before.device_name != after.device_name:
            LOG.info("%s: %s is /dev/%s (the name the guest gives it)", before.origin, before.named, after.device_name)
    ordered = sorted(named_locals, key=_order) + sorted(named_volumes, key=_order)
    return tuple(ordered)


def _order(device: Device) -> int:
    return DEVICES.index(device.device_name)


def resolve(devices: tuple[Device, ...], *, image_for: Callable[[str, str], Any],
            volume_client: Callable[[], Any] | None) -> tuple[Device, ...]:
    """Ask what is cheap to ask before anything is made: each image is visible and active
    (``image_for``: the caller's rights; its 400 otherwise), each snapshot exists and is
    available (Nova's "failed to get snapshot"), each volume is available; sizes filled in
    (a snapshot's by default, an image's virtual size at least)."""
    from freezeframe.volumes.client import CinderError

    out: list[Device] = []
    needs_volumes = any(d.source_type in ("snapshot", "volume") for d in devices)
    cinder = volume_client() if needs_volumes and volume_client is not None else None
    if needs_volumes and cinder is None:
        raise errors.BackendUnavailable("No volume service is configured for compute")
    try:
        for d in devices:
            size = d.volume_size
            if d.source_type == "image":
                image = image_for(d.uuid, f"block device /dev/{d.device_name}")
                need = image_gib(image)
                if size is not None and size < need:
                    raise errors.Invalid(f"{INVALID}volume_size {size} GiB of /dev/{d.device_name} is smaller than "
                                         f"image {d.uuid} ({need} GiB)")
                size = size if size is not None else need
                if d.local and size > MAX_LOCAL_GB:
                    raise errors.Invalid(f"{INVALID}a local disk may be at most {MAX_LOCAL_GB} GiB, not {size}")
            elif d.source_type == "snapshot":
                try:
                    snap = cinder.show_snapshot(d.uuid)
                except CinderError as exc:
                    if exc.status is None or exc.status >= 500:
                        raise errors.BackendUnavailable(f"The volume service failed: {exc}") from None
                    raise errors.Invalid(f"{INVALID}failed to get snapshot {d.uuid}.") from None
                if snap.get("status") != "available":
                    raise errors.Invalid(f"{INVALID}snapshot {d.uuid} is {shown(snap.get('status'))}, not available")
                snap_size = snap.get("size") if isinstance(snap.get("size"), int) else None
                if size is not None and snap_size is not None and size < snap_size:
                    raise errors.Invalid(f"{INVALID}volume_size {size} GiB of /dev/{d.device_name} is smaller than "
                                         f"snapshot {d.uuid} ({snap_size} GiB)")
                size = size if size is not None else snap_size
            elif d.source_type == "volume":
                try:
                    volume = cinder.show_volume(d.uuid)
                except CinderError as exc:
                    if exc.status is None or exc.status >= 500:
                        raise errors.BackendUnavailable(f"The volume service failed: {exc}") from None
                    raise errors.Invalid(f"{INVALID}failed to get volume {d.uuid}.") from None
                if volume.get("multiattach"):
                    raise errors.Invalid(f"Invalid volume: volume {d.uuid} is multiattach, which compute does not "
                                         "support")
                if volume.get("status") != "available":
                    raise errors.Invalid(f"Invalid volume: volume {d.uuid} status must be 'available', not "
                                         f"{shown(volume.get('status'))}")
                size = volume.get("size") if isinstance(volume.get("size"), int) else size
            out.append(replace(d, volume_size=size))
    finally:
        if cinder is not None:
            cinder.close()
    return tuple(out)


def image_gib(image) -> int:
    """The GiB an image's disk needs (its virtual size when known, else its size), at least 1."""
    size = image.attrs.get("virtual_size") or image.size or 0
    return max(1, math.ceil(size / GIB)) if isinstance(size, int) else 1


def rows(devices: Iterable[Device], server_id: str) -> list[BlockDeviceMapping]:
    """The server's mapping rows, written with the server (``attaching``): a new volume's
    ``volume_id`` comes with its creation, a local disk's ``disk_path`` with the boot. A new
    volume is ``delete_on_termination`` until the spawn is done — a spawn cut short (a crash)
    leaves nothing the server's delete would not remove — then as asked."""
    return [BlockDeviceMapping(instance_uuid=server_id, device_name=d.device_name, source_type=d.source_type,
                               destination_type=d.destination_type, boot_index=None,
                               volume_id=d.uuid if d.source_type == "volume" else None, volume_size=d.volume_size,
                               tag=d.tag, delete_on_termination=True if d.new_volume or d.local
                               else d.delete_on_termination, status="attaching")
            for d in devices]


def local_disks(devices: Iterable[Device]) -> tuple[LocalDisk, ...]:
    """What the host makes with the domain, in device order (vdb, vdc, ...)."""
    return tuple(LocalDisk(device_name=d.device_name, source=d.source_type,
                           image_id=d.uuid if d.source_type == "image" else None, size_gb=d.volume_size)
                 for d in devices if d.local)


def volumes_attached(session: Session, server_ids: list[str]) -> dict[str, list[tuple[str, bool]]]:
    """Each server's volumes (``os-extended-volumes:volumes_attached``): (volume id,
    delete_on_termination), in device order."""
    found: dict[str, list[tuple[str, bool]]] = {sid: [] for sid in server_ids}
    if not server_ids:
        return found
    for row in session.scalars(select(BlockDeviceMapping).where(
            BlockDeviceMapping.instance_uuid.in_(server_ids), BlockDeviceMapping.destination_type == "volume",
            BlockDeviceMapping.volume_id.is_not(None)).order_by(BlockDeviceMapping.device_name)):
        found[row.instance_uuid].append((row.volume_id, bool(row.delete_on_termination)))
    return found


# -- building (the spawn) ------------------------------------------------------------------------

class SpawnDevices:
    """A new server's block devices around its boot: ``create_volumes`` before it, the host
    makes ``local_disks`` with the domain, ``attached`` after it; ``undo`` takes every one of
    them back (best effort each, logged; a volume it could not delete keeps its row, marked
    ``delete_on_termination``, so the server's delete finishes the job)."""

    def __init__(self, db, volumes, server_id: str, actor: Actor, devices: tuple[Device, ...]) -> None:
        self.db = db
        self.volumes = volumes           # compute's VolumeOps
        self.server_id = server_id
        self.actor = actor
        self.devices = devices
        self.created: list[str] = []     # volumes made for this server

    def _rows(self, session: Session) -> dict[str, BlockDeviceMapping]:
        return {r.device_name: r for r in session.scalars(select(BlockDeviceMapping).where(
            BlockDeviceMapping.instance_uuid == self.server_id))}

    def local_disks(self) -> tuple[LocalDisk, ...]:
        return local_disks(self.devices)

    def create_volumes(self) -> None:
        """Each new volume, as the user; its id recorded on its row at once, then waited for."""
        for d in self.devices:
            if not d.new_volume:
                continue
            volume_id = self.volumes.create_for_spawn(
                self.actor, size=d.volume_size, snapshot_id=d.uuid if d.source_type == "snapshot" else None,
                image_id=d.uuid if d.source_type == "image" else None, volume_type=d.volume_type)
            self.created.append(volume_id)
            self.db.run_sync(lambda s, n=d.device_name, v=volume_id: _set(s, self.server_id, n, volume_id=v))
            LOG.info("server %s: volume %s created for /dev/%s from %s %s", self.server_id, volume_id,
                     d.device_name, d.source_type, d.uuid or "")
        for volume_id in self.created:
            volume = self.volumes.wait_created(self.actor, volume_id)
            if isinstance(volume.get("size"), int):
                self.db.run_sync(lambda s, v=volume_id, size=volume["size"]: _set_volume(s, self.server_id, v,
                                                                                         volume_size=size))

    def booted(self, info) -> None:
        """The local disks as the domain has them: their files, and ``attached``."""
        paths = {disk.target: str(disk.path) for disk in info.disks}
        for d in self.devices:
            if d.local:
                if d.device_name not in paths:
                    raise errors.HostFault(f"server {self.server_id}: the domain has no disk {d.device_name}")
                self.db.run_sync(lambda s, n=d.device_name: _set(s, self.server_id, n, disk_path=paths[n],
                                                                 status="attached"))

    def attach(self, inst: Instance) -> None:
        """The volumes, hot-plugged in device order (the domain runs), each as an attach does;
        then every row says what was asked (``delete_on_termination``)."""
        rows = self.db.run_sync(self._rows)
        for d in self.devices:
            if not d.local:
                self.volumes.attach_for_spawn(self.actor, inst, rows[d.device_name].id)
        for d in self.devices:
            if d.new_volume:
                self.db.run_sync(lambda s, n=d.device_name, dot=d.delete_on_termination:
                                 _set(s, self.server_id, n, delete_on_termination=dot))

    def undo(self, inst: Instance, remove_domain: Callable[[], None] | None = None) -> None:
        """Every attachment deleted, then the domain and its disks (``remove_domain``), then
        every volume made for the server; the rows go, but those of an attachment or a volume
        that would not (``error``, ``delete_on_termination``: the server's delete retries them)."""
        rows = self.db.run_sync(lambda s: list(self._rows(s).values()))
        stuck = {row.id for row in rows if row.attachment_id
                 and not self.volumes.release_for_spawn(self.actor, inst, row)}
        if remove_domain is not None:
            try:
                remove_domain()
            except Exception as exc:
                LOG.error("server %s: its domain and disks could not be removed: %s", self.server_id, exc)
        kept = {v for v in self.created if not self.volumes.delete_created(self.actor, v)}

        def tidy(session: Session) -> None:
            # (A failed attach keeps its row: every volume made has one.)
            for row in self._rows(session).values():
                if row.id in stuck or row.volume_id in kept:
                    row.status = "error"
                    row.delete_on_termination = row.delete_on_termination or row.volume_id in kept
                else:
                    session.delete(row)
        self.db.run_sync(tidy)


def drop_unbuilt(session: Session, server_id: str) -> None:
    """A spawn that never started (or was undone): the server's rows go, but those of volumes
    that would not be deleted (``error``: the server's delete removes them)."""
    for row in session.scalars(select(BlockDeviceMapping).where(BlockDeviceMapping.instance_uuid == server_id,
                                                                BlockDeviceMapping.status != "error")):
        session.delete(row)


def _set(session: Session, server_id: str, device_name: str, **values: Any) -> None:
    row = session.scalars(select(BlockDeviceMapping).where(BlockDeviceMapping.instance_uuid == server_id,
                                                           BlockDeviceMapping.device_name == device_name)).one()
    for key, value in values.items():
        setattr(row, key, value)


def _set_volume(session: Session, server_id: str, volume_id: str, **values: Any) -> None:
    row = session.scalars(select(BlockDeviceMapping).where(BlockDeviceMapping.instance_uuid == server_id,
                                                           BlockDeviceMapping.volume_id == volume_id)).one()
    for key, value in values.items():
        setattr(row, key, value)
