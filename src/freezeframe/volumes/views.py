"""Cinder's bodies for volumes, snapshots, attachments, types and zones, by microversion."""

from __future__ import annotations

import json
from typing import Any

from freezeframe.common.context import RequestContext
from freezeframe.common.timeutil import isotime
from freezeframe.volumes.model import Volume, VolumeAttachment, VolumeSnapshot


def _links(base: str, kind: str, row_id: str) -> list[dict[str, str]]:
    return [{"href": f"{base}/{kind}/{row_id}", "rel": "self"},
            {"href": f"{base.rsplit('/v3', 1)[0]}/{kind}/{row_id}", "rel": "bookmark"}]


def volume_summary(vol: Volume, base: str) -> dict[str, Any]:
    return {"id": vol.id, "name": vol.name, "links": _links(base, "volumes", vol.id)}


def volume_view(vol: Volume, attachments: list[VolumeAttachment], base: str, version, ctx: RequestContext,
                *, default_type_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": vol.id, "status": vol.status, "size": vol.size, "availability_zone": vol.availability_zone,
        "created_at": isotime(vol.created_at), "updated_at": isotime(vol.updated_at), "name": vol.name,
        "description": vol.description, "volume_type": vol.volume_type, "snapshot_id": vol.snapshot_id,
        "source_volid": vol.source_volid, "metadata": json.loads(vol.metadata_json or "{}"),
        "links": _links(base, "volumes", vol.id), "user_id": vol.user_id,
        "bootable": "true" if vol.bootable else "false", "encrypted": False, "replication_status": None,
        "consistencygroup_id": None, "multiattach": False,
        "attachments": [attachment_summary(a, ctx) for a in attachments],
        "os-vol-tenant-attr:tenant_id": vol.project_id,
        "migration_status": None,
    }
    if ctx.is_admin:
        body["os-vol-host-attr:host"] = f"{vol.host}@{vol.volume_type}#{vol.volume_type}" if vol.host else None
        body["os-vol-mig-status-attr:migstat"] = None
        body["os-vol-mig-status-attr:name_id"] = None
    image_meta = json.loads(vol.image_metadata_json or "{}")
    if image_meta:
        body["volume_image_metadata"] = image_meta
    if version >= (3, 13):
        body["group_id"] = None
    if version >= (3, 21):
        body["provider_id"] = None
    if version >= (3, 48):
        body["shared_targets"] = False
        body["service_uuid"] = None
    if version >= (3, 63):
        body["volume_type_id"] = default_type_id
    if version >= (3, 65):
        body["consumes_quota"] = True
    return body


def attachment_summary(att: VolumeAttachment, ctx: RequestContext) -> dict[str, Any]:
    """An entry of a volume's ``attachments`` list."""
    body = {"id": att.volume_id, "attachment_id": att.id, "volume_id": att.volume_id, "server_id": att.instance_uuid,
            "device": att.mountpoint, "attached_at": isotime(att.attach_time) if att.attach_time else None}
    if ctx.is_admin or ctx.is_service:
        body["host_name"] = att.attached_host
    return body


def attachment_view(att: VolumeAttachment, *, with_connection: bool) -> dict[str, Any]:
    body = {"id": att.id, "status": att.attach_status, "instance": att.instance_uuid, "volume_id": att.volume_id,
            "attached_at": isotime(att.attach_time) if att.attach_time else None,
            "detached_at": isotime(att.detach_time) if att.detach_time else None, "attach_mode": att.attach_mode}
    if with_connection:
        info = json.loads(att.connection_info_json) if att.connection_info_json else {}
        if info:
            info = {**info, "attachment_id": att.id, **({"data": {**info.get("data", {}), "access_mode":
                                                                   att.attach_mode}} if "data" in info else {})}
        body["connection_info"] = info
    return body


def snapshot_view(snap: VolumeSnapshot, version, *, detail: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": snap.id, "created_at": isotime(snap.created_at), "updated_at": isotime(snap.updated_at),
        "name": snap.name, "description": snap.description, "volume_id": snap.volume_id, "status": snap.status,
        "size": snap.volume_size, "metadata": json.loads(snap.metadata_json or "{}"),
    }
    if detail:
        body["os-extended-snapshot-attributes:progress"] = snap.progress
        body["os-extended-snapshot-attributes:project_id"] = snap.project_id
    if version >= (3, 14):
        body["group_snapshot_id"] = None
    if version >= (3, 41):
        body["user_id"] = snap.user_id
    if version >= (3, 65):
        body["consumes_quota"] = True
    return body


def volume_type_view(name: str, type_id: str) -> dict[str, Any]:
    return {"id": type_id, "name": name, "description": "Default Volume Type", "is_public": True,
            "extra_specs": {}, "qos_specs_id": None, "os-volume-type-access:is_public": True}
