"""The virt driver interface. Every driver (libvirt, fake) passes the same conformance suite.

A driver manages domains on one host and produces point-in-time copies of their disks for the
snapshot workflow. Every method is synchronous (the conductor calls them from worker threads)
and idempotent where the workflow may repeat it after a crash: ``begin_snapshot`` with the same
``snapshot_id`` finds and reuses (or cleans and redoes) what an earlier attempt left, and
``end_snapshot`` / ``unquiesce`` may be called any number of times.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from pathlib import Path


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
    """A point-in-time copy of one disk, readable while the guest runs on.

    ``path`` is a standalone image file (no backing chain) in ``format``; ``workdir`` holds
    everything the driver made for this snapshot and is removed by ``end_snapshot``.
    """
    snapshot_id: str
    domain: str
    disk: str
    path: Path
    format: str
    virtual_size: int
    workdir: Path
    quiesced: bool            # the guest's filesystems were frozen at the point in time
    frozen_seconds: float     # how long they were frozen (0 when not quiesced)


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    finished: bool


class QuiesceFailed(Exception):
    """The guest agent could not freeze the guest's filesystems (it was thawed again)."""


class DriverError(Exception):
    """The hypervisor refused or failed an operation."""


class DomainNotFound(DriverError):
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
        """Take a consistent point-in-time copy of ``disk``.

        Running domain: freeze (when ``quiesce`` and an agent answers), start a backup job or an
        external overlay, thaw at once — always thaw, even on failure, and never stay frozen
        longer than ``max_frozen`` seconds. ``require_quiesce`` makes a failed freeze raise
        QuiesceFailed instead of going on crash-consistent. Stopped domain: a cold copy.
        The data is written to ``workdir`` as the job progresses (see ``snapshot_progress``);
        holes are never written.
        """

    @abc.abstractmethod
    def snapshot_progress(self, handle: SnapshotHandle) -> Progress: ...

    @abc.abstractmethod
    def wait_snapshot(self, handle: SnapshotHandle, timeout: float | None = None) -> Progress:
        """Block until the copy is complete; DriverError if the job failed."""

    @abc.abstractmethod
    def end_snapshot(self, name: str, snapshot_id: str, workdir: Path) -> None:
        """Abort any running job of this snapshot, merge back overlays, make sure the guest is
        thawed, remove ``workdir``. Idempotent, and works in a new process after a crash (it
        needs only what the workflow persisted)."""
