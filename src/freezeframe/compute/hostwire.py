"""The host API's words: driver values to JSON and back, and the checks on what names a domain
or a point in time (nothing unvalidated reaches a path, a libvirt call or a command line)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from freezeframe.common import errors
from freezeframe.common.strict import is_uuid
from freezeframe.compute.drivers import qcow2chain
from freezeframe.compute.drivers.base import DiskInfo, DomainInfo, GroupHandle, PowerState, SnapshotHandle, VolumeDisk

PREFIX = "/host/v1"
_DOMAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
_TARGET = re.compile(r"^vd[a-z]{1,2}$")
_DISK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")     # a disk's target: also a directory name
MAX_GROUP = 64


def domain_name(value: Any) -> str:
    if not isinstance(value, str) or not _DOMAIN.match(value):
        raise errors.Invalid(f"Invalid domain name {value!r}: letters, digits, '.', '_' and '-' only")
    return value


def snapshot_id(value: Any) -> str:
    if not isinstance(value, str) or not is_uuid(value):
        raise errors.Invalid(f"Invalid snapshot id {value!r}: a UUID is required")
    return value.lower()


def domain_to_json(info: DomainInfo) -> dict[str, Any]:
    return {"name": info.name, "uuid": info.uuid, "state": info.state.value, "vcpus": info.vcpus,
            "memory_mb": info.memory_mb,
            "disks": [{"target": d.target, "path": str(d.path), "format": d.format,
                       "virtual_size": d.virtual_size} for d in info.disks]}


def domain_from_json(doc: dict[str, Any]) -> DomainInfo:
    return DomainInfo(name=doc["name"], uuid=doc["uuid"], state=PowerState(doc["state"]), vcpus=doc["vcpus"],
                      memory_mb=doc["memory_mb"],
                      disks=tuple(DiskInfo(d["target"], Path(d["path"]), d["format"], d["virtual_size"])
                                  for d in doc["disks"]))


def handle_to_json(handle: SnapshotHandle) -> dict[str, Any]:
    return {"snapshot_id": handle.snapshot_id, "domain": handle.domain, "disk": handle.disk,
            "virtual_size": handle.virtual_size, "quiesced": handle.quiesced,
            "frozen_seconds": handle.frozen_seconds}


def handle_from_json(doc: dict[str, Any], workdir: Path) -> SnapshotHandle:
    return SnapshotHandle(snapshot_id=doc["snapshot_id"], domain=doc["domain"], disk=doc["disk"],
                          virtual_size=doc["virtual_size"], workdir=workdir, quiesced=doc["quiesced"],
                          frozen_seconds=doc["frozen_seconds"])


# -- groups (seed 003) -----------------------------------------------------------------------------
def disk_name(value: Any) -> str:
    """A disk's target (vda, sdb, ...) as a request names it."""
    if not isinstance(value, str) or not _DISK.match(value):
        raise errors.Invalid(f"Invalid disk {value!r}: a device name such as vda")
    return value


def group_request(body: dict[str, Any]) -> tuple[list[str], list[tuple[str, Path]]]:
    """The disks and volumes of a group snapshot request: {"disks": [target...], "volumes":
    [{"volume_id", "new_file"}...]}."""
    disks, volumes = body.get("disks", []), body.get("volumes", [])
    if not isinstance(disks, list) or not isinstance(volumes, list) or len(disks) + len(volumes) > MAX_GROUP:
        raise errors.Invalid(f"disks and volumes: lists, at most {MAX_GROUP} entries together")
    out = []
    for v in volumes:
        if not isinstance(v, dict):
            raise errors.Invalid("each volume: {\"volume_id\", \"new_file\"}")
        out.append((volume_id(v.get("volume_id")), qcow2chain.host_path(v.get("new_file"), "new_file")))
    return [disk_name(d) for d in disks], out


def group_to_json(handle: GroupHandle) -> dict[str, Any]:
    return {"snapshot_id": handle.snapshot_id, "domain": handle.domain,
            "disks": [{"target": t, "virtual_size": size} for t, size in handle.disks],
            "volumes": list(handle.volumes), "quiesced": handle.quiesced, "frozen_seconds": handle.frozen_seconds}


def group_from_json(doc: dict[str, Any]) -> GroupHandle:
    return GroupHandle(snapshot_id=doc["snapshot_id"], domain=doc["domain"],
                       disks=tuple((d["target"], int(d["virtual_size"])) for d in doc["disks"]),
                       volumes=tuple(doc["volumes"]), quiesced=bool(doc["quiesced"]),
                       frozen_seconds=float(doc["frozen_seconds"]))


# -- volumes (seed 002) --------------------------------------------------------------------------
def volume_id(value: Any) -> str:
    if not isinstance(value, str) or not is_uuid(value):
        raise errors.Invalid(f"Invalid volume id {value!r}: a UUID is required")
    return value.lower()


def volume_disk_to_json(disk: VolumeDisk) -> dict[str, Any]:
    return {"volume_id": disk.volume_id, "target": disk.target, "path": str(disk.path), "format": disk.format}


def volume_disk_from_json(doc: Any, vid: str | None = None) -> VolumeDisk:
    """A volume disk as a request sends it (``vid``: the one its URL names)."""
    if not isinstance(doc, dict):
        raise errors.Invalid("the volume disk must be a JSON object")
    target = doc.get("target")
    if not isinstance(target, str) or not _TARGET.match(target):
        raise errors.Invalid(f"Invalid target {target!r}: a virtio disk name (vdb, vdc, ...)")
    return VolumeDisk(volume_id=volume_id(doc.get("volume_id", vid) if vid is None else vid), target=target,
                      path=qcow2chain.host_path(doc.get("path"), "path"), format=qcow2chain.image_format(doc.get("format")))


def volume_disk_from_wire(doc: dict[str, Any]) -> VolumeDisk:
    """A volume disk as the host answers it (its own, not checked again)."""
    return VolumeDisk(doc["volume_id"], doc["target"], Path(doc["path"]), doc["format"])
