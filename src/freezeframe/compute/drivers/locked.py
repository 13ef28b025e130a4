"""At most one host-bound operation per server at a time, whatever its kind.

``LockedDriver`` wraps a host's driver: every operation that changes a domain (spawn, destroy,
power, begin/end of a snapshot (of one disk or a group), attach/detach of a volume, a volume snapshot's create or
merge) holds that domain's lock; another one waits at most
``timeout`` seconds, then fails with what holds the lock and since when (a Conflict: 409 in an
API, a retried step in a workflow). Reads (info, list, agent ping, reading a point in time, the
attached volumes) take no lock. Every path to a host's hypervisor — the compute API in ``serve``, the host API of
`freezeframe compute`, the workflows — goes through the one wrapper of its host.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from freezeframe.common import errors
from freezeframe.compute.drivers.base import (
    DomainInfo, GroupHandle, GuestSpec, SnapshotHandle, SnapshotReader, VirtDriver, VolumeDisk, VolumeJob,
)

T = TypeVar("T")


class HostBusy(errors.Conflict):
    """Another host-bound operation holds the server."""


@dataclass
class _Held:
    lock: threading.Lock
    op: str = ""
    since: float = 0.0


class LockedDriver(VirtDriver):
    def __init__(self, inner: VirtDriver, *, timeout: float = 30.0) -> None:
        self.inner = inner
        self.name = inner.name
        self.timeout = timeout
        self._locks: dict[str, _Held] = {}
        self._guard = threading.Lock()

    def __getattr__(self, attr: str) -> Any:       # driver extras (the fake's test hooks...)
        return getattr(self.inner, attr)

    def _held(self, domain: str) -> _Held:
        with self._guard:
            return self._locks.setdefault(domain, _Held(threading.Lock()))

    def _exclusive(self, domain: str, op: str, fn: Callable[[], T]) -> T:
        held = self._held(domain)
        if not held.lock.acquire(timeout=self.timeout):
            raise HostBusy(f"Server domain {domain} is busy: {held.op or 'another operation'} has been running "
                           f"on its host for {time.monotonic() - held.since:.0f}s; {op} waited {self.timeout:g}s. "
                           "Retry when it is done")
        try:
            held.op, held.since = op, time.monotonic()
            return fn()
        finally:
            held.op = ""
            held.lock.release()

    # -- exclusive --------------------------------------------------------------------------
    def spawn(self, spec: GuestSpec) -> DomainInfo:
        return self._exclusive(spec.name, "spawn", lambda: self.inner.spawn(spec))

    def destroy(self, name: str) -> None:
        self._exclusive(name, "destroy", lambda: self.inner.destroy(name))

    def power_on(self, name: str) -> None:
        self._exclusive(name, "power on", lambda: self.inner.power_on(name))

    def power_off(self, name: str, timeout: float = 30.0) -> None:
        self._exclusive(name, "power off", lambda: self.inner.power_off(name, timeout))

    def begin_snapshot(self, name: str, disk: str, snapshot_id: str, workdir: Path, **kw: Any) -> SnapshotHandle:
        return self._exclusive(name, f"snapshot {snapshot_id} (begin)",
                               lambda: self.inner.begin_snapshot(name, disk, snapshot_id, workdir, **kw))

    def begin_group_snapshot(self, name: str, snapshot_id: str, workdir: Path, **kw: Any) -> GroupHandle:
        return self._exclusive(name, f"snapshot {snapshot_id} (begin, group)",
                               lambda: self.inner.begin_group_snapshot(name, snapshot_id, workdir, **kw))

    def end_snapshot(self, name: str, snapshot_id: str, workdir: Path) -> None:
        self._exclusive(name, f"snapshot {snapshot_id} (end)",
                        lambda: self.inner.end_snapshot(name, snapshot_id, workdir))

    def attach_volume(self, name: str, disk: VolumeDisk) -> None:
        self._exclusive(name, f"attach of volume {disk.volume_id}", lambda: self.inner.attach_volume(name, disk))

    def detach_volume(self, name: str, volume_id: str) -> None:
        self._exclusive(name, f"detach of volume {volume_id}", lambda: self.inner.detach_volume(name, volume_id))

    def volume_snapshot_create(self, name: str, volume_id: str, new_file: Path, **kw: Any) -> tuple[bool, float]:
        return self._exclusive(name, f"snapshot of volume {volume_id}",
                               lambda: self.inner.volume_snapshot_create(name, volume_id, new_file, **kw))

    def volume_snapshot_delete(self, name: str, volume_id: str, *, file_to_merge: str | None,
                               merge_target_file: str | None, progress: VolumeJob | None = None) -> None:
        self._exclusive(name, f"merge of volume {volume_id}", lambda: self.inner.volume_snapshot_delete(
            name, volume_id, file_to_merge=file_to_merge, merge_target_file=merge_target_file, progress=progress))

    # -- shared -----------------------------------------------------------------------------
    def get_info(self, name: str) -> DomainInfo:
        return self.inner.get_info(name)

    def list_domains(self) -> list[DomainInfo]:
        return self.inner.list_domains()

    def agent_available(self, name: str, timeout: float = 2.0) -> bool:
        return self.inner.agent_available(name, timeout)

    def open_snapshot(self, name: str, snapshot_id: str, workdir: Path, disk: str | None = None) -> SnapshotReader:
        if disk is None:            # (as before groups: a driver of one-disk snapshots serves it too)
            return self.inner.open_snapshot(name, snapshot_id, workdir)
        return self.inner.open_snapshot(name, snapshot_id, workdir, disk=disk)

    def snapshot_source(self, name: str, snapshot_id: str, workdir: Path, disk: str | None = None):
        if disk is None:
            return self.inner.snapshot_source(name, snapshot_id, workdir)
        return self.inner.snapshot_source(name, snapshot_id, workdir, disk=disk)

    def volume_disks(self, name: str) -> list[VolumeDisk]:
        return self.inner.volume_disks(name)
