"""Which devices an instance-level snapshot (seed 003) takes: the server's action
``{"snapshot": {"name": ..., "devices": ["vda", "vdb"] | null, "metadata": {...}}}`` (Freezeframe's
extension; null or absent = every device), planned against the server's disks — its root, its
other local disks and its attached volumes — before anything is made.

The plan goes with the workflow (its params) and says everything the steps need::

    {"root_target": "vda", "root": "vda" | None,
     "locals": [{"target": "vdb", "path": "...", "size": 1}],
     "volumes": [{"target": "vdc", "volume_id": "...", "size": 1, "delete_on_termination": false}],
     "excluded": ["vdd"]}
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from freezeframe.common import errors
from freezeframe.common.strict import shown
from freezeframe.compute.model import BlockDeviceMapping, Instance

_DEVICE = re.compile(r"^(?:/dev/)?(vd[a-z])$")
MAX_DEVICES = 26


def parse_devices(value: Any) -> list[str] | None:
    """``devices``: None (every device), or a non-empty list of distinct device names."""
    if value is None:
        return None
    if not isinstance(value, list) or not value or len(value) > MAX_DEVICES:
        raise errors.Invalid(f"Invalid input for field/attribute devices: null or a list of 1-{MAX_DEVICES} device "
                             "names (e.g. [\"vda\", \"vdb\"]) is required")
    names = []
    for item in value:
        match = _DEVICE.match(item) if isinstance(item, str) else None
        if match is None:
            raise errors.Invalid(f"Invalid device {shown(item)}: a device name such as vda or /dev/vdb is required")
        if match.group(1) in names:
            raise errors.Invalid(f"Device {match.group(1)} is named twice")
        names.append(match.group(1))
    return names


def plan_devices(session: Session, inst: Instance, wanted: list[str] | None) -> dict[str, Any]:
    """The plan of the devices ``wanted`` (None: all) of ``inst``; 400 naming a device the
    server does not have, and listing those it has."""
    rows = session.scalars(select(BlockDeviceMapping).where(BlockDeviceMapping.instance_uuid == inst.id)
                           .order_by(BlockDeviceMapping.device_name)).all()
    locals_ = [b for b in rows if b.destination_type == "local" and b.status == "attached"]
    volumes = [b for b in rows if b.destination_type == "volume" and b.status == "attached" and b.volume_id]
    busy = [b.device_name for b in rows if b.status not in ("attached",)]
    every = [inst.root_target] + [b.device_name for b in locals_] + [b.device_name for b in volumes]
    chosen = every if wanted is None else wanted
    unknown = [d for d in chosen if d not in every]
    if unknown:
        extra = f"; {', '.join(busy)} being attached or detached" if busy else ""
        raise errors.Invalid(f"Server {inst.id} has no device {', '.join(unknown)} (it has {', '.join(every)}"
                             f"{extra})")
    return {
        "root_target": inst.root_target,
        "root": inst.root_target if inst.root_target in chosen else None,
        "locals": [{"target": b.device_name, "path": b.disk_path, "size": b.volume_size}
                   for b in locals_ if b.device_name in chosen],
        "volumes": [{"target": b.device_name, "volume_id": b.volume_id, "size": b.volume_size,
                     "delete_on_termination": bool(b.delete_on_termination)}
                    for b in volumes if b.device_name in chosen],
        "excluded": [d for d in every if d not in chosen],
    }
