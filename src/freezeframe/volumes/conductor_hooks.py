"""What the volume service registers with the conductor: its kinds of work
(``volumes/workflows/``: volume-create, volume-delete, volume-snapshot-create,
volume-snapshot-delete, volume-upload-image — resource types "volume" and "snapshot", bound to
no host), its reconcile hook (``owners.OwnerImageSweep``: the snapshots of an image that is gone
are deleted) and what its workflows call in process (``local_api``: the volume manager)."""

from __future__ import annotations

from typing import Any

from freezeframe.conductor.registry import Registry
from freezeframe.volumes.manager import VolumeManager
from freezeframe.volumes.owners import OwnerImageSweep
from freezeframe.volumes.workflows import KINDS

SERVICE = "volume"


def register(registry: Registry) -> None:
    """The volume service's kinds and hook (the hook finds the manager in the runtime, as the
    workflows do: a process that runs no volume service sweeps nothing)."""
    for kind in KINDS:
        registry.add_kind(kind)
    registry.add_hook(SERVICE, "owner-images", OwnerImageSweep())


def local_api(manager: VolumeManager) -> dict[str, Any]:
    """What the volume service offers the workflows of this process (``runtime.local``)."""
    return {SERVICE: manager}
