"""The virt driver interface. Every driver (libvirt, fake) passes the same conformance suite.

A driver manages domains on one host and gives the snapshot workflow consistent points in time
of their disks, read in place (no local copy). Every method is synchronous (the conductor calls them from worker threads)
and idempotent where the workflow may repeat it after a crash: ``begin_snapshot`` with the same
``snapshot_id`` finds and reuses (or cleans and redoes) what an earlier attempt left, and
``end_snapshot`` may be called any number of times.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

from freezeframe.common import errors
from freezeframe.blockdata.nbd import Extent
from freezeframe.blockdata.nbdexport import EXPORT_DIR, Source, stop_export

# In a point in time's workdir: the exports to another host of each disk of a group, one
# directory per disk (the host API's export of ``disk`` keeps its state in
# ``<workdir>/disk-exports/<disk>/export``; a one-disk snapshot's in ``<workdir>/export``).
DISK_EXPORTS = "disk-exports"


class PowerState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SUSPENDED = "suspended"   # managed save / pmsuspended
    SHUTDOWN = "shutdown"     # defined, not running
    CRASHED = "crashed"
    NOSTATE = "nostate"       # unknown to the driver


@dataclass(frozen=True)
class DiskInfo:
    target: str               # guest device, e.g. "vda"
    path: Path                # the active image file on the host
    format: str               # "qcow2" or "raw"
    virtual_size: int         # bytes the guest sees


@dataclass(frozen=True)
class DomainInfo:
    name: str
    uuid: str
    state: PowerState
    vcpus: int
    memory_mb: int
    disks: tuple[DiskInfo, ...] = ()


@dataclass(frozen=True)
class GuestSpec:
    """What to boot: made by the compute service from a server create request."""
    name: str
    uuid: str
    vcpus: int
    memory_mb: int
    root_disk: Path               # a qcow2 overlay made by the compute service
    extra_disks: tuple[Path, ...] = ()
    kernel: Path | None = None    # direct kernel boot (the tiny test guest)
    initrd: Path | None = None
    cmdline: str | None = None
    guest_agent: bool = False     # add the org.qemu.guest_agent.0 channel
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SnapshotHandle:
    """A consistent point in time of one disk, readable (``open_snapshot``) while the guest
    runs on, until ``end_snapshot``. ``workdir`` holds what the driver made for it."""
    snapshot_id: str
    domain: str
    disk: str
    virtual_size: int
    workdir: Path
    quiesced: bool            # the guest's filesystems were frozen at the point in time
    frozen_seconds: float     # how long they were frozen (0 when not quiesced)


@dataclass(frozen=True)
class GroupHandle:
    """One point in time of several disks of a domain (an instance-level snapshot): each local
    disk in ``disks`` readable (``open_snapshot(..., disk=target)``) until ``end_snapshot``, each
    volume in ``volumes`` continuing on its new file (its old file is its point in time)."""
    snapshot_id: str
    domain: str
    disks: tuple[tuple[str, int], ...]   # (target, virtual_size) of each local disk held for reading
    volumes: tuple[str, ...]             # volume ids now on their new files
    quiesced: bool
    frozen_seconds: float


def export_workdir(workdir: Path, disk: str | None) -> Path:
    """Where the export to another host of the point in time in ``workdir`` (of its ``disk``,
    for a group) keeps its state (under it, ``nbdexport.EXPORT_DIR``)."""
    return Path(workdir) if disk is None else Path(workdir) / DISK_EXPORTS / disk


def export_workdirs(workdir: Path) -> list[Path]:
    """Every export workdir of the point in time in ``workdir`` (the one-disk one first)."""
    disks = Path(workdir) / DISK_EXPORTS
    return [Path(workdir), *(sorted(p for p in disks.iterdir() if p.is_dir()) if disks.is_dir() else [])]


def stop_exports(workdir: Path) -> None:
    """Stop every export to another host of the point in time in ``workdir`` (idempotent)."""
    for where in export_workdirs(workdir):
        stop_export(where / EXPORT_DIR)


def group_disks(disks: Sequence[str], volumes: Sequence[tuple[str, Path]]) -> tuple[list[str], list[tuple[str, Path]]]:
    """The arguments of ``begin_group_snapshot``, checked: no disk or volume twice, something to take."""
    if isinstance(disks, str):
        raise errors.Invalid("disks must be a list of disk targets, not a string")
    disks = [str(d) for d in disks]
    volumes = [(str(v), Path(f)) for v, f in volumes]
    if len(set(disks)) != len(disks):
        raise errors.Invalid(f"a disk is named twice in {disks}")
    if len({v for v, _f in volumes}) != len(volumes) or len({f for _v, f in volumes}) != len(volumes):
        raise errors.Invalid("a volume (or a new file) is named twice")
    if not disks and not volumes:
        raise errors.Invalid("a group snapshot needs at least one disk or volume")
    return disks, volumes


@dataclass(frozen=True)
class VolumeDisk:
    """A volume as a disk of a domain: opened as a file, its serial the volume id (as Nova's
    libvirt driver does with an NFS/RemoteFS volume)."""
    volume_id: str
    target: str               # guest device, e.g. "vdb"
    path: Path                # the active file (the export + connection_info's name)
    format: str               # "raw" or "qcow2"


@dataclass(frozen=True)
class VolumeJob:
    """Progress of compute's part of an assisted volume snapshot: called with (done, total)."""
    report: "Callable[[int, int], None]"


class SnapshotReader(Protocol):
    """Reads a point in time: which ranges hold data, and their bytes. ``nbd.NbdClient`` is
    one (QEMU exports); the fake driver reads a file."""
    size: int

    def extents(self) -> list[Extent]: ...

    def pread_many(self, ranges: Iterable[tuple[int, int]], depth: int = 4) -> Iterator[bytes | bytearray]: ...

    def close(self) -> None: ...


# The drivers' errors are domain errors (``common/errors.py``), mapped as Nova answers its own:
# no such domain is InstanceNotFound (404), a guest that cannot be frozen InstanceQuiesceFailed
# (409); any other is a host fault (500, its text logged, not shown to the caller).
class QuiesceFailed(errors.Conflict):
    """The guest agent could not freeze the guest's filesystems (it was thawed again)."""


class DriverError(errors.HostFault):
    """The hypervisor refused or failed an operation."""


class DomainNotFound(errors.NotFound, DriverError):
    """No such domain on this host."""


class VirtDriver(abc.ABC):
    name: str

    # -- lifecycle --------------------------------------------------------------------------
    @abc.abstractmethod
    def spawn(self, spec: GuestSpec) -> DomainInfo:
        """Define and start a domain (idempotent: an existing domain of that name is started)."""

    @abc.abstractmethod
    def destroy(self, name: str) -> None:
        """Stop and undefine a domain; its disks stay (the caller owns them). No error if absent."""

    @abc.abstractmethod
    def power_on(self, name: str) -> None: ...

    @abc.abstractmethod
    def power_off(self, name: str, timeout: float = 30.0) -> None:
        """Graceful shutdown, forced after ``timeout`` seconds."""

    @abc.abstractmethod
    def get_info(self, name: str) -> DomainInfo:
        """Raise DomainNotFound if the domain does not exist."""

    @abc.abstractmethod
    def list_domains(self) -> list[DomainInfo]:
        """Every domain on the host (for adopting existing VMs as servers)."""

    # -- quiesce ----------------------------------------------------------------------------
    @abc.abstractmethod
    def agent_available(self, name: str, timeout: float = 2.0) -> bool:
        """Does a guest agent answer (guest-ping / guest-sync) within ``timeout``?"""

    # -- snapshots --------------------------------------------------------------------------
    @abc.abstractmethod
    def begin_snapshot(self, name: str, disk: str, snapshot_id: str, workdir: Path, *,
                       quiesce: bool, require_quiesce: bool, max_frozen: float = 1.0) -> SnapshotHandle:
        """Establish a consistent point in time of ``disk`` and return once it is readable.

        Running domain: freeze (when ``quiesce`` and an agent answers), start a pull-mode
        backup (or equivalent), thaw at once — always thaw, even on failure, and never stay
        frozen longer than ``max_frozen`` seconds. ``require_quiesce`` makes a failed freeze
        raise QuiesceFailed instead of going on crash-consistent. Shut-off domain: its disk as
        it is. Nothing the size of the disk is copied: the data is read through
        ``open_snapshot`` (guest writes meanwhile only cost copy-before-write in ``workdir``).
        """

    @abc.abstractmethod
    def begin_group_snapshot(self, name: str, snapshot_id: str, workdir: Path, *, disks: Sequence[str],
                             volumes: Sequence[tuple[str, Path]], quiesce: bool, require_quiesce: bool,
                             max_frozen: float = 1.0) -> GroupHandle:
        """One point in time of several disks of a domain (an instance-level snapshot).

        Running domain: freeze once (when ``quiesce`` and an agent answers; a failed freeze is
        QuiesceFailed with ``require_quiesce``, else the group is crash-consistent; never frozen
        longer than ``max_frozen``) and, inside that one freeze, switch every volume of
        ``volumes`` — (volume id, new file: a qcow2 the volume driver made whose backing file is
        the disk's current file) — onto its new file, all in one external disk-only snapshot,
        and hold every local disk of ``disks`` in one pull-mode backup job (each disk an export
        named by its target); then thaw. Both kinds in one group: the vCPUs are also paused
        across the two steps, so that they are one instant even for writes no freeze stops.
        Not running: volumes switched in the persistent definition, local disks served from
        their files. ``disks`` or ``volumes`` may be empty (not both).

        Idempotent by ``snapshot_id`` (a record in ``workdir``): a call that finds its group
        complete and still held returns it again; one that finds an interrupted attempt moves
        that attempt's volumes back and takes the group anew. A volume already on its new file
        when no attempt of this group moved it is taken as done. A failure after volumes were
        switched moves them back (their new files emptied again) and releases the job before
        raising: nothing half-done."""

    @abc.abstractmethod
    def open_snapshot(self, name: str, snapshot_id: str, workdir: Path, disk: str | None = None) -> SnapshotReader:
        """A reader of the point in time ``begin_snapshot`` (or ``begin_group_snapshot``: of its
        local ``disk``; None: the single disk of a one-disk snapshot) made, from any process
        (also after a crash). DriverError when it no longer exists (the domain stopped, the job
        ended...) or holds no such disk."""

    @abc.abstractmethod
    def end_snapshot(self, name: str, snapshot_id: str, workdir: Path) -> None:
        """Release the point in time — of every disk of a group (end the backup job / exports,
        and any export of it to another host under ``workdir``), make sure the guest is thawed,
        remove ``workdir``. The volumes of a group taken whole stay on their new files (they are
        its result); those of an attempt that never completed (a crash inside
        ``begin_group_snapshot``) are moved back. Idempotent, and works in a new process after
        a crash (it needs only what the workflow persisted)."""

    @abc.abstractmethod
    def snapshot_source(self, name: str, snapshot_id: str, workdir: Path, disk: str | None = None) -> Source:
        """Where the point in time ``begin_snapshot`` made (of a group: its local ``disk``) is
        served on this host (a local NBD export, or a file), so the host API can export it to a
        conductor on another host (``blockdata/nbdexport.py``). DriverError when it no longer exists."""

    # -- volumes (seed 002) -------------------------------------------------------------------
    # An attached volume is a file disk whose serial is the volume id; the domain's definition
    # keeps it, so a stop/start opens it again — at the path last given (``attach_volume``
    # with the refreshed connection info after an online snapshot).
    @abc.abstractmethod
    def attach_volume(self, name: str, disk: VolumeDisk) -> None:
        """Add the volume as disk ``disk.target`` (live when running, and to the persistent
        definition). Idempotent: already attached at that path is no error."""

    @abc.abstractmethod
    def detach_volume(self, name: str, volume_id: str) -> None:
        """Remove the disk whose serial is ``volume_id`` (live and persistent). No error if absent."""

    @abc.abstractmethod
    def volume_disks(self, name: str) -> list[VolumeDisk]:
        """The domain's attached volumes as it runs them now (the active file of each)."""

    @abc.abstractmethod
    def volume_snapshot_create(self, name: str, volume_id: str, new_file: Path, *, quiesce: bool,
                               require_quiesce: bool, max_frozen: float = 1.0) -> tuple[bool, float]:
        """Compute's part of an assisted snapshot create (Nova's ``volume_snapshot_create``):
        the volume's disk continues on ``new_file`` — a qcow2 whose backing file is the disk's
        current file, made by the volume driver (REUSE_EXT) — taken as an external disk-only
        snapshot of that disk alone (quiesced when ``quiesce`` and an agent answers; a failed
        freeze raises QuiesceFailed with ``require_quiesce``). Running or not. Idempotent: a
        disk already on ``new_file`` is done. Returns (quiesced, seconds frozen)."""

    @abc.abstractmethod
    def volume_snapshot_delete(self, name: str, volume_id: str, *, file_to_merge: str | None,
                               merge_target_file: str | None, progress: VolumeJob | None = None) -> None:
        """Compute's part of an assisted snapshot delete (Nova's ``volume_snapshot_delete``),
        file names relative to the active file's directory:

        - ``merge_target_file`` None: pull what lies between the active file and
          ``file_to_merge`` into the active file, which then continues on ``file_to_merge``
          (None = everything: flattened): ``blockRebase(base=file_to_merge)``
          (``qemu-img rebase`` when the domain is not running);
        - else: commit ``file_to_merge`` into ``merge_target_file`` (``blockCommit`` of a file
          below the active one; ``qemu-img commit`` when not running).

        Waits for the block job (reporting its real progress), never longer than the job
        needs; idempotent (an active file already on ``file_to_merge``, or a commit whose
        ``file_to_merge`` is no longer in the chain, is done)."""
