"""The volume driver interface. Every driver (qcow2file, fake) passes one conformance suite
(``tests/unit/volumes/test_driver_conformance.py``).

A driver keeps volumes' data on one volume host. Methods are synchronous (the conductor's
workers and the volume service's pool call them) and idempotent where a workflow may repeat
them after a crash: a create that finds what an earlier attempt made reuses or redoes it, a
delete of something already gone is no error.

What the driver keeps about a volume (the active file, its format, a snapshot's overlay...) it
returns as ``provider`` dicts, which the volume service stores (``provider_location``) and
hands back: the driver itself keeps no database.

Assisted snapshots (seed 002): a driver that cannot snapshot a disk a running guest writes
(qcow2 files on a share: the RemoteFS family) says ``assisted = True``. For an attached volume
the volume manager then calls, instead of ``create_snapshot`` / ``delete_snapshot``:

    create_snapshot_assisted_begin    -> Assisted (the ``create_info`` compute is given)
    ... compute takes the snapshot, reports compute_snapshot_status ...
    create_snapshot_assisted_complete -> Assisted (fields for the snapshot and its volume)
    delete_snapshot_assisted_begin    -> Assisted (the ``delete_info`` compute is given)
    ... compute merges the chain, reports ...
    delete_snapshot_assisted_complete -> Assisted

Each returns the fields to set on the snapshot, its volume (``provider``) and the snapshot's
admin metadata; the manager writes them, never the driver.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from freezeframe.common import errors


class VolumeDriverError(errors.HostFault):
    """The volume host failed an operation (its text is logged, not shown to callers)."""


class SnapshotIsBusy(errors.Conflict):
    """The snapshot cannot be deleted now (something depends on it); it stays available."""


@dataclass(frozen=True)
class VolumeRef:
    """A volume as the driver sees it."""
    id: str
    size: int                                  # GiB
    provider: dict[str, Any] = field(default_factory=dict)    # what the driver returned for it


@dataclass(frozen=True)
class SnapshotRef:
    id: str
    volume_id: str
    volume_size: int                            # GiB
    provider: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Assisted:
    """What one phase of an assisted snapshot returns (seed 002)."""
    # The request for compute: Nova's create_info ({"type": "qcow2", "new_file": ..., "snapshot_id": ...})
    # or delete_info ({"type": "qcow2", "file_to_merge": ..., "merge_target_file": ..., "volume_id": ...}).
    info: dict[str, Any] | None = None
    snapshot: dict[str, Any] = field(default_factory=dict)        # snapshot provider fields
    volume: dict[str, Any] | None = None                          # the volume's new provider (if changed)
    admin_metadata: dict[str, str] = field(default_factory=dict)  # snapshot admin metadata to set


@dataclass(frozen=True)
class DataSource:
    """Where a volume's (or a snapshot's) data can be read on this host: an image file and its
    format (a qcow2 whose backing chain is part of the data, or a raw file)."""
    path: Path
    format: str                                 # "raw" or "qcow2"
    virtual_size: int                           # bytes


class VolumeDriver(abc.ABC):
    name: str
    # Needs compute to snapshot (or delete a snapshot of) a volume attached to a running guest.
    assisted: bool = False

    # -- volumes ----------------------------------------------------------------------------
    @abc.abstractmethod
    def create_volume(self, volume: VolumeRef) -> dict[str, Any]:
        """A blank volume of ``volume.size`` GiB (sparse: nothing written). Returns its provider."""

    @abc.abstractmethod
    def create_volume_from_snapshot(self, volume: VolumeRef, snapshot: SnapshotRef, source: VolumeRef) -> dict[str, Any]:
        """A new volume holding ``snapshot``'s data (of volume ``source``), grown to
        ``volume.size``; holes stay holes."""

    @abc.abstractmethod
    def create_cloned_volume(self, volume: VolumeRef, source: VolumeRef) -> dict[str, Any]:
        """A new volume holding ``source``'s current data (it is not attached)."""

    @abc.abstractmethod
    def import_volume(self, volume: VolumeRef, data: DataSource) -> dict[str, Any]:
        """A new volume holding the data of an image file (raw or qcow2) on this host."""

    @abc.abstractmethod
    def delete_volume(self, volume: VolumeRef) -> None:
        """Remove the volume's data and every file of its snapshots. No error if already gone."""

    @abc.abstractmethod
    def extend_volume(self, volume: VolumeRef, new_size: int) -> dict[str, Any]:
        """Grow the volume to ``new_size`` GiB (not attached). Returns its provider."""

    @abc.abstractmethod
    def volume_source(self, volume: VolumeRef) -> DataSource:
        """Where the volume's current data is read (not attached, or read-only use)."""

    @abc.abstractmethod
    def connection_info(self, volume: VolumeRef) -> dict[str, Any]:
        """What compute needs to open the volume as a disk: Cinder's connection_info shape,
        ``{"driver_volume_type": ..., "data": {"export", "name", "format", "volume_id", ...}}``."""

    # -- snapshots, offline (the volume is not attached) ---------------------------------------
    @abc.abstractmethod
    def create_snapshot(self, snapshot: SnapshotRef, volume: VolumeRef) -> tuple[dict[str, Any], dict[str, Any]]:
        """Snapshot a volume no guest writes. Returns (the snapshot's provider, the volume's new
        provider). O(1) in the volume's size (an overlay, never a copy)."""

    @abc.abstractmethod
    def delete_snapshot(self, snapshot: SnapshotRef, volume: VolumeRef) -> dict[str, Any]:
        """Delete a snapshot of a volume no guest writes, merging the chain as it needs.
        Returns the volume's new provider. No error if the snapshot is already gone."""

    @abc.abstractmethod
    def snapshot_source(self, snapshot: SnapshotRef, volume: VolumeRef) -> DataSource:
        """Where the snapshot's data (the volume as it was at the snapshot) is read."""

    # -- snapshots, assisted by compute (seed 002) -----------------------------------------
    def create_snapshot_assisted_begin(self, snapshot: SnapshotRef, volume: VolumeRef) -> Assisted:
        raise NotImplementedError(f"the {self.name} driver needs no assistance")

    def create_snapshot_assisted_complete(self, snapshot: SnapshotRef, volume: VolumeRef,
                                          admin_metadata: dict[str, str]) -> Assisted:
        raise NotImplementedError(f"the {self.name} driver needs no assistance")

    def create_snapshot_assisted_abort(self, snapshot: SnapshotRef, volume: VolumeRef,
                                       admin_metadata: dict[str, str]) -> Assisted:
        """Compute failed (or never answered) before using the new file: remove what begin made."""
        raise NotImplementedError(f"the {self.name} driver needs no assistance")

    def delete_snapshot_assisted_begin(self, snapshot: SnapshotRef, volume: VolumeRef) -> Assisted:
        raise NotImplementedError(f"the {self.name} driver needs no assistance")

    def delete_snapshot_assisted_complete(self, snapshot: SnapshotRef, volume: VolumeRef,
                                          admin_metadata: dict[str, str]) -> Assisted:
        raise NotImplementedError(f"the {self.name} driver needs no assistance")

    # -- the host ------------------------------------------------------------------------------
    def capacity(self) -> dict[str, int]:
        """{"total_bytes": ..., "free_bytes": ...} of the volume host's storage."""
        return {"total_bytes": 0, "free_bytes": 0}
