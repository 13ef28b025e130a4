"""Images, members and tasks as Glance's API shows them."""

from __future__ import annotations

import json
from typing import Any

from freezeframe.common.timeutil import isotime
from freezeframe.images.model import Image, ImageMember, ImageTask


def image_view(image: Image, store_name: str = "file") -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": image.id,
        "name": image.name,
        "status": image.status,
        "visibility": image.visibility,
        "protected": image.protected,
        "os_hidden": image.os_hidden,
        "checksum": image.checksum,
        "os_hash_algo": image.os_hash_algo,
        "os_hash_value": image.os_hash_value,
        "owner": image.owner,
        "size": image.size,
        "virtual_size": image.virtual_size,
        "min_ram": image.min_ram,
        "min_disk": image.min_disk,
        "disk_format": image.disk_format,
        "container_format": image.container_format,
        "created_at": isotime(image.created_at),
        "updated_at": isotime(image.updated_at),
        "tags": [t.value for t in image.tags],
        "self": f"/v2/images/{image.id}",
        "file": f"/v2/images/{image.id}/file",
        "schema": "/v2/schemas/image",
    }
    if image.status == "active" and image.store_key:
        body["stores"] = store_name
    for prop in image.properties:
        body.setdefault(prop.name, prop.value)
    return body


def member_view(member: ImageMember) -> dict[str, Any]:
    return {
        "image_id": member.image_id,
        "member_id": member.member,
        "status": member.status,
        "created_at": isotime(member.created_at),
        "updated_at": isotime(member.updated_at),
        "schema": "/v2/schemas/member",
    }


def task_view(task: ImageTask) -> dict[str, Any]:
    return {
        "id": task.id,
        "type": task.type,
        "status": task.status,
        "owner": task.owner,
        "image_id": task.image_id,
        "request_id": task.request_id,
        "user_id": task.user_id,
        "input": json.loads(task.input or "{}"),
        "result": json.loads(task.result) if task.result else None,
        "message": task.message,
        "created_at": isotime(task.created_at),
        "updated_at": isotime(task.updated_at),
        "expires_at": None,
        "self": f"/v2/tasks/{task.id}",
        "schema": "/v2/schemas/task",
    }
