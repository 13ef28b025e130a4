"""What the volume service registers with the conductor: its kinds of work
(``volumes/workflows/``: volume-create, volume-delete, volume-snapshot-create,
volume-snapshot-delete — resource types "volume" and "snapshot", bound to no host) and what its
workflows call in process (``local_api``: the volume manager)."""

from __future__ import annotations

from typing import Any

from freezeframe.conductor.registry import Registry
from freezeframe.volumes.manager import VolumeManager
from freezeframe.volumes.workflows import KINDS

SERVICE = "volume"


def register(registry: Registry) -> None:
    """The volume service's kinds."""
    for kind in KINDS:
        registry.add_kind(kind)


def local_api(manager: VolumeManager) -> dict[str, Any]:
    """What the volume service offers the workflows of this process (``runtime.local``)."""
    return {SERVICE: manager}
