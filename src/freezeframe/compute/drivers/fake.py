"""A fake virt driver for fast workflow tests: in-memory domains on real small disk files.

``begin_snapshot`` takes its point in time by copying the disk, flattened and with holes left
out, into the workdir (a fake may copy; the libvirt driver never does), and ``open_snapshot``
reads that copy — extents from SEEK_DATA/SEEK_HOLE — from any process, so a restarted server
resumes an upload as with libvirt. Every freeze and thaw is recorded in ``host.events`` so a
test can assert that the guest was always thawed, and failures can be injected per method:
``FakeDriver(fail_on={"begin_snapshot": QuiesceFailed()})`` raises on every call until removed
from ``driver.fail_on``; the extra keys ``"freeze"``, ``"thaw"`` and ``"copy"`` fail those steps.

Domains live in a ``FakeHost``: ``FakeDriver(host=other.host)`` is a second driver on the same
host, as a new process would be.

Volumes (seed 002) are disks of the domain's record: attach and detach take effect at once (no
guest to let go), a snapshot moves the disk onto its overlay after checking that the overlay
backs onto the current file, and a delete merges the chain for real with ``qemu-img``
(``qcow2chain.py``, as libvirt does for a domain that is not running) — so the data a test
writes into the chain survives every merge as it would under libvirt. Beside the fake volume
driver, which makes no overlay files, only the chain's names are kept (``FakeDomain.chains``),
with the same rules (Nova's semantics, the same refusals).

A group snapshot (seed 003) freezes once and, inside, switches its volumes (as above) and copies
each of its local disks; ``begin_snapshot`` is a group of one disk. Its record is written before
anything moves, so a call after an attempt that died half-way moves that attempt's volumes back
(and a failure moves them back at once), as the libvirt driver does; ``fail_on["copy"]`` fails
a group after its volumes' switch.
"""

from __future__ import annotations

import json
import os
import subprocess
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from freezeframe.common import errors
from freezeframe.compute.drivers import qcow2chain
from freezeframe.compute.drivers.base import (
    DiskInfo, DomainInfo, DomainNotFound, DriverError, GroupHandle, GuestSpec, PowerState,
    QuiesceFailed, SnapshotHandle, VirtDriver, VolumeDisk, VolumeJob, group_disks, stop_exports,
)
from freezeframe.blockdata.nbd import Extent
from freezeframe.blockdata.nbdexport import FileSource

CHUNK = 1 << 20
RECORD = "fake-snapshot.json"


@dataclass
class FakeDomain:
    spec: GuestSpec
    state: PowerState = PowerState.SHUTDOWN
    agent: bool = False          # does a guest agent answer?
    frozen: bool = False
    volumes: dict[str, VolumeDisk] = field(default_factory=dict)    # by volume id
    # A volume's chain as names only ((file name, format), top first) when its files do not exist.
    chains: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def disks(self) -> dict[str, Path]:
        paths = [self.spec.root_disk, *self.spec.extra_disks]
        disks = {f"vd{chr(ord('a') + i)}": Path(p) for i, p in enumerate(paths)}
        return {**disks, **{v.target: v.path for v in self.volumes.values()}}


@dataclass
class FakeHost:
    domains: dict[str, FakeDomain] = field(default_factory=dict)
    events: list[tuple[str, str]] = field(default_factory=list)    # ("freeze"|"thaw", domain)
    lock: threading.RLock = field(default_factory=threading.RLock)


def image_format(path: Path) -> str:
    with open(path, "rb") as f:
        return "qcow2" if f.read(4) == b"QFI\xfb" else "raw"


def virtual_size(path: Path) -> int:
    """The size the guest sees: a qcow2 header's size field, else the file's size."""
    with open(path, "rb") as f:
        head = f.read(32)
    return int.from_bytes(head[24:32], "big") if head[:4] == b"QFI\xfb" else path.stat().st_size


def sparse_copy(src: Path, dst: Path, delay: float) -> None:
    """Copy the data extents of ``src`` (SEEK_DATA/SEEK_HOLE), leaving holes as holes."""
    size = src.stat().st_size
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for offset, length in data_extents(fin.fileno(), size):
            for pos in range(offset, offset + length, CHUNK):
                os.pwrite(fout.fileno(), os.pread(fin.fileno(), min(CHUNK, offset + length - pos), pos), pos)
                if delay:
                    time.sleep(delay)
        fout.truncate(size)


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """The (offset, length) ranges of a file that hold data (SEEK_DATA/SEEK_HOLE)."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:          # ENXIO: only a hole is left
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end - start
        offset = end


class FileReader:
    """A ``SnapshotReader`` of a raw file."""

    def __init__(self, path: Path, *, read_delay: float = 0.0) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self._fd).st_size
        self.read_delay = read_delay

    def extents(self) -> list[Extent]:
        out: list[Extent] = []
        at = 0
        for offset, length in data_extents(self._fd, self.size):
            if offset > at:
                out.append(Extent(at, offset - at, True))
            out.append(Extent(offset, length, False))
            at = offset + length
        if at < self.size:
            out.append(Extent(at, self.size - at, True))
        return out

    def pread_many(self, ranges: Iterable[tuple[int, int]], depth: int = 4) -> Iterator[bytes]:
        for offset, length in ranges:
            data = os.pread(self._fd, length, offset)
            if len(data) != length:
                raise DriverError(f"short read of the snapshot at {offset}")
            if self.read_delay:
                time.sleep(self.read_delay)
            yield data

    def close(self) -> None:
        os.close(self._fd)


@dataclass(frozen=True)
class _Switch:
    """A volume's move onto its new file, and what to restore to undo it."""
    volume_id: str
    before: VolumeDisk
    new_file: Path
    names_only: bool
    chain: list[tuple[str, str]] | None      # its chain of names before (None: none kept)


def _plan_json(plan: _Switch) -> dict:
    return {"volume_id": plan.volume_id, "new_file": str(plan.new_file), "names_only": plan.names_only,
            "chain": plan.chain, "before": {**vars(plan.before), "path": str(plan.before.path)}}


def _plan_from_json(doc: dict) -> _Switch:
    before = VolumeDisk(**{**doc["before"], "path": Path(doc["before"]["path"])})
    chain = [(n, f) for n, f in doc["chain"]] if doc.get("chain") is not None else None
    return _Switch(doc["volume_id"], before, Path(doc["new_file"]), doc["names_only"], chain)


def _handle(doc: dict) -> SnapshotHandle:
    return SnapshotHandle(snapshot_id=doc["snapshot_id"], domain=doc["domain"], disk=doc["disks"][0],
                          virtual_size=doc["sizes"][0], workdir=Path(doc["workdir"]), quiesced=doc["quiesced"],
                          frozen_seconds=doc["frozen_seconds"])


def _group_handle(doc: dict) -> GroupHandle:
    return GroupHandle(snapshot_id=doc["snapshot_id"], domain=doc["domain"],
                       disks=tuple(zip(doc["disks"], doc["sizes"])), volumes=tuple(v for v, _f in doc["volumes"]),
                       quiesced=doc["quiesced"], frozen_seconds=doc["frozen_seconds"])


class FakeDriver(VirtDriver):
    name = "fake"

    def __init__(self, *, host: FakeHost | None = None, fail_on: dict[str, BaseException] | None = None,
                 copy_delay: float = 0.0, read_delay: float = 0.0, freeze_seconds: float = 0.0) -> None:
        """``copy_delay`` sleeps after each MiB copied while taking the point in time (to crash
        or cancel a workflow in LOCAL_SNAPSHOT_STARTED);
        ``freeze_seconds`` is how long a freeze takes (to exceed ``max_frozen``)."""
        self.host = host or FakeHost()
        self.fail_on: dict[str, BaseException] = dict(fail_on or {})
        self.copy_delay = copy_delay
        self.read_delay = read_delay            # sleep after each read of the point in time
        self.freeze_seconds = freeze_seconds

    @property
    def events(self) -> list[tuple[str, str]]:
        return self.host.events

    def _maybe_fail(self, step: str) -> None:
        exc = self.fail_on.get(step)
        if exc is not None:
            raise exc

    def _domain(self, name: str) -> FakeDomain:
        try:
            return self.host.domains[name]
        except KeyError:
            raise DomainNotFound(f"no domain {name}") from None

    # -- lifecycle ---------------------------------------------------------------------------
    def spawn(self, spec: GuestSpec) -> DomainInfo:
        self._maybe_fail("spawn")
        with self.host.lock:
            dom = self.host.domains.get(spec.name)
            if dom is None:
                for path in (spec.root_disk, *spec.extra_disks):
                    if not Path(path).is_file():
                        raise DriverError(f"disk {path} does not exist")
                dom = self.host.domains[spec.name] = FakeDomain(spec, agent=spec.guest_agent)
            dom.state = PowerState.RUNNING
            return self._info(dom)

    def destroy(self, name: str) -> None:
        self._maybe_fail("destroy")
        with self.host.lock:
            self.host.domains.pop(name, None)

    def power_on(self, name: str) -> None:
        self._maybe_fail("power_on")
        with self.host.lock:
            self._domain(name).state = PowerState.RUNNING

    def power_off(self, name: str, timeout: float = 30.0) -> None:
        self._maybe_fail("power_off")
        with self.host.lock:
            dom = self._domain(name)
            dom.state, dom.frozen = PowerState.SHUTDOWN, False

    def get_info(self, name: str) -> DomainInfo:
        self._maybe_fail("get_info")
        return self._info(self._domain(name))

    def list_domains(self) -> list[DomainInfo]:
        with self.host.lock:
            return [self._info(d) for d in self.host.domains.values()]

    @staticmethod
    def _info(dom: FakeDomain) -> DomainInfo:
        volumes = {v.target: v for v in dom.volumes.values()}

        def size(target: str, path: Path) -> int:
            if path.exists() or target not in volumes:
                return virtual_size(path)
            names = dom.chains.get(volumes[target].volume_id, [])      # names only: its existing base
            return next((virtual_size(path.parent / n) for n, _f in reversed(names) if (path.parent / n).exists()), 0)

        disks = tuple(DiskInfo(target=t, path=p, format=volumes[t].format if t in volumes else image_format(p),
                               virtual_size=size(t, p))
                      for t, p in dom.disks().items())
        return DomainInfo(name=dom.spec.name, uuid=dom.spec.uuid, state=dom.state,
                          vcpus=dom.spec.vcpus, memory_mb=dom.spec.memory_mb, disks=disks)

    # -- quiesce -------------------------------------------------------------------------------
    def set_agent(self, name: str, available: bool) -> None:
        """Simulate a guest agent that starts or stops answering."""
        self._domain(name).agent = available

    def agent_available(self, name: str, timeout: float = 2.0) -> bool:
        self._maybe_fail("agent_available")
        dom = self._domain(name)
        return dom.agent and dom.state is PowerState.RUNNING

    def guest_frozen(self, name: str, timeout: float = 2.0) -> bool | None:
        dom = self._domain(name)
        return dom.frozen if self.agent_available(name) else None

    def _freeze(self, dom: FakeDomain) -> None:
        with self.host.lock:
            self.host.events.append(("freeze", dom.spec.name))
            dom.frozen = True
        if self.freeze_seconds:
            time.sleep(self.freeze_seconds)
        self._maybe_fail("freeze")

    def _thaw(self, dom: FakeDomain) -> None:
        self._maybe_fail("thaw")
        with self.host.lock:
            self.host.events.append(("thaw", dom.spec.name))
            dom.frozen = False

    # -- snapshots -------------------------------------------------------------------------------
    # A point in time is a group: local disks copied (a fake may copy) and volumes switched onto
    # their new files, inside one freeze; ``begin_snapshot`` is a group of one disk. The record
    # (``fake-snapshot.json``) is written before anything moves, so that an attempt that died
    # half-way is seen (and undone) by the next call.
    def begin_snapshot(self, name: str, disk: str, snapshot_id: str, workdir: Path, *,
                       quiesce: bool, require_quiesce: bool, max_frozen: float = 1.0) -> SnapshotHandle:
        self._maybe_fail("begin_snapshot")
        workdir = Path(workdir).absolute()
        doc = self._begin_group(name, snapshot_id, workdir, [disk], [], quiesce=quiesce,
                                require_quiesce=require_quiesce, max_frozen=max_frozen)
        return _handle(doc)

    def begin_group_snapshot(self, name: str, snapshot_id: str, workdir: Path, *, disks: Sequence[str],
                             volumes: Sequence[tuple[str, Path]], quiesce: bool, require_quiesce: bool,
                             max_frozen: float = 1.0) -> GroupHandle:
        self._maybe_fail("begin_group_snapshot")
        disks, volumes = group_disks(disks, volumes)
        volumes = [(vid, qcow2chain.host_path(new_file, "new_file")) for vid, new_file in volumes]
        doc = self._begin_group(name, snapshot_id, Path(workdir).absolute(), disks, volumes, quiesce=quiesce,
                                require_quiesce=require_quiesce, max_frozen=max_frozen)
        return _group_handle(doc)

    def _begin_group(self, name: str, snapshot_id: str, workdir: Path, disks: list[str],
                     volumes: list[tuple[str, Path]], *, quiesce: bool, require_quiesce: bool,
                     max_frozen: float) -> dict:
        dom = self._domain(name)
        sources = dom.disks()
        for disk in disks:
            if disk not in sources:
                raise DriverError(f"domain {name} has no disk {disk}")
        for vid, _new in volumes:
            if self._volume(dom, vid).target in disks:
                raise errors.Invalid(f"disk {self._volume(dom, vid).target} is volume {vid}: name it once, as a volume")
        wanted = {"snapshot_id": snapshot_id, "domain": name, "disks": disks,
                  "volumes": [[vid, str(new)] for vid, new in volumes]}
        previous = self._load(workdir)
        if previous is not None:
            if ({k: previous.get(k) for k in wanted} == wanted and previous["phase"] == "running"
                    and self._held(previous, volumes=True)):
                return previous                     # idempotent: the same snapshot again
            self._release(previous["domain"], previous, workdir,
                          move_back=previous["phase"] != "running" or previous["snapshot_id"] == snapshot_id)

        plans = [self._switch_plan(dom, vid, new) for vid, new in volumes]
        # A shut-off domain's disks are consistent as they are (no freeze).
        live = dom.state is not PowerState.SHUTDOWN
        can_quiesce = dom.state is PowerState.RUNNING and dom.agent
        if live and require_quiesce and not can_quiesce:
            raise QuiesceFailed(f"no guest agent answers in {name}: cannot quiesce")

        workdir.mkdir(parents=True, exist_ok=True)
        doc = {**wanted, "workdir": str(workdir), "phase": "starting", "quiesced": False, "frozen_seconds": 0.0,
               "sizes": [virtual_size(sources[d]) for d in disks],
               "moved": [_plan_json(plan) for plan in plans if plan is not None]}
        self._save_record(workdir, doc)

        def take() -> None:
            for plan in plans:
                if plan is not None:
                    self._switch(dom, plan)
            for disk in disks:
                self._point_in_time(sources[disk], workdir / f"{disk}.raw")

        quiesced, frozen = False, 0.0
        try:
            if live and (quiesce or require_quiesce) and can_quiesce:
                t0 = time.monotonic()
                try:
                    try:
                        self._freeze(dom)
                        quiesced = time.monotonic() - t0 <= max_frozen
                    except Exception as exc:
                        if require_quiesce:
                            raise QuiesceFailed(f"freezing {name}: {exc}") from exc
                    if quiesced or not require_quiesce:
                        take()
                finally:
                    self._thaw(dom)                 # always, even on failure
                    frozen = time.monotonic() - t0
                if not quiesced and require_quiesce:
                    raise QuiesceFailed(f"{name} stayed frozen past {max_frozen} s: not quiesced")
            else:
                take()
        except BaseException:
            self._release(name, doc, workdir, move_back=True)
            raise
        doc.update(phase="running", quiesced=quiesced, frozen_seconds=frozen if quiesced else 0.0)
        self._save_record(workdir, doc)
        return doc

    def _point_in_time(self, source: Path, target: Path) -> None:
        """The fake's "backup": a flattened sparse raw copy (a qcow2 overlay through qemu-img)."""
        self._maybe_fail("copy")
        if image_format(source) == "qcow2":
            subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(source), str(target)],
                           check=True, capture_output=True)
            if self.copy_delay:
                time.sleep(self.copy_delay * (virtual_size(source) >> 20))
        else:
            sparse_copy(source, target, self.copy_delay)

    @staticmethod
    def _save_record(workdir: Path, doc: dict) -> None:
        tmp = workdir / (RECORD + ".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, workdir / RECORD)

    @staticmethod
    def _load(workdir: Path) -> dict | None:
        try:
            doc = json.loads((workdir / RECORD).read_text())
        except (OSError, ValueError):
            return None
        if "disks" not in doc:          # a one-disk record written before groups
            doc = {"snapshot_id": doc["snapshot_id"], "domain": doc["domain"], "disks": [doc["disk"]],
                   "volumes": [], "workdir": doc["workdir"], "phase": "running", "quiesced": doc["quiesced"],
                   "frozen_seconds": doc["frozen_seconds"], "sizes": [doc["virtual_size"]], "moved": []}
        return doc

    def _held(self, doc: dict, *, volumes: bool = False) -> bool:
        dom = self.host.domains.get(doc["domain"])
        if dom is None:
            return False
        if not all((Path(doc["workdir"]) / f"{d}.raw").exists() for d in doc["disks"]):
            return False
        return not volumes or all(vid in dom.volumes and dom.volumes[vid].path == Path(new)
                                  for vid, new in doc["volumes"])

    def _member(self, name: str, snapshot_id: str, workdir: Path, disk: str | None) -> Path:
        """The copy of the snapshot's ``disk`` (None: its only one)."""
        doc = self._load(workdir)
        if doc is None or doc["snapshot_id"] != snapshot_id or doc["phase"] != "running":
            raise DriverError(f"no snapshot {snapshot_id} in {workdir}")
        if disk is None:
            if len(doc["disks"]) != 1:
                raise DriverError(f"snapshot {snapshot_id} holds {len(doc['disks'])} disks: name the one to read")
            disk = doc["disks"][0]
        if disk not in doc["disks"]:
            raise DriverError(f"snapshot {snapshot_id} of {doc['domain']} holds no disk {disk}")
        if name not in self.host.domains:
            raise DriverError(f"snapshot {snapshot_id} is gone: domain {name} was destroyed")
        return workdir / f"{disk}.raw"

    def open_snapshot(self, name: str, snapshot_id: str, workdir: Path, disk: str | None = None) -> FileReader:
        self._maybe_fail("open_snapshot")
        return FileReader(self._member(name, snapshot_id, Path(workdir).absolute(), disk), read_delay=self.read_delay)

    def snapshot_source(self, name: str, snapshot_id: str, workdir: Path, disk: str | None = None) -> FileSource:
        return FileSource(str(self._member(name, snapshot_id, Path(workdir).absolute(), disk)), "raw")

    def end_snapshot(self, name: str, snapshot_id: str, workdir: Path) -> None:
        self._maybe_fail("end_snapshot")
        workdir = Path(workdir).absolute()
        doc = self._load(workdir)
        # A group taken whole keeps its volumes on their new files; an attempt that died
        # half-way has them moved back.
        self._release(name, doc, workdir, move_back=doc is not None and doc["phase"] != "running")

    def _release(self, name: str, doc: dict | None, workdir: Path, *, move_back: bool) -> None:
        stop_exports(workdir)                   # whatever served it to another host goes first
        with self.host.lock:
            dom = self.host.domains.get(name)
            if dom is not None and dom.frozen:
                self.host.events.append(("thaw", name))
                dom.frozen = False
            if dom is not None and doc is not None and move_back:
                for moved in doc.get("moved", []):
                    self._unswitch(dom, _plan_from_json(moved))
        shutil.rmtree(workdir, ignore_errors=True)

    # -- volumes (seed 002) ------------------------------------------------------------------------
    def _switch_plan(self, dom: FakeDomain, volume_id: str, new_file: Path) -> _Switch | None:
        """How the volume moves onto ``new_file`` (None: it is there already), checked."""
        current = self._volume(dom, volume_id)
        if current.path == new_file:
            return None
        if new_file.parent != current.path.parent:
            raise errors.Invalid(f"new_file {new_file} is not in the directory of the volume's file {current.path}")
        # The fake volume driver makes no overlay: then only the chain's names are kept.
        names_only = volume_id in dom.chains or not new_file.exists()
        if not names_only:
            qcow2chain.check_overlay(new_file, current.path, current.format)
        return _Switch(volume_id, current, new_file, names_only, dom.chains.get(volume_id))

    def _switch(self, dom: FakeDomain, plan: _Switch) -> None:
        with self.host.lock:
            dom.volumes[plan.volume_id] = replace(plan.before, path=plan.new_file, format="qcow2")
            if plan.names_only:
                dom.chains[plan.volume_id] = [(plan.new_file.name, "qcow2"),
                                              *(plan.chain or [(plan.before.path.name, plan.before.format)])]

    def _unswitch(self, dom: FakeDomain, plan: _Switch) -> None:
        """Back on the old file, as libvirt moves it back (when it is on the new one)."""
        with self.host.lock:
            now = dom.volumes.get(plan.volume_id)
            if now is None or now.path != plan.new_file:
                return
            dom.volumes[plan.volume_id] = plan.before
            if plan.chain is None:
                dom.chains.pop(plan.volume_id, None)
            else:
                dom.chains[plan.volume_id] = plan.chain

    # -- volumes (seed 002) ------------------------------------------------------------------------
    def _volume(self, dom: FakeDomain, volume_id: str) -> VolumeDisk:
        disk = dom.volumes.get(volume_id)
        if disk is None:
            raise DriverError(f"volume {volume_id} is not attached to {dom.spec.name}")
        return disk

    def attach_volume(self, name: str, disk: VolumeDisk) -> None:
        self._maybe_fail("attach_volume")
        disk = VolumeDisk(disk.volume_id, disk.target, qcow2chain.host_path(disk.path, "the volume's path"),
                          qcow2chain.image_format(disk.format))
        with self.host.lock:
            dom = self._domain(name)
            have = dom.volumes.get(disk.volume_id)
            if have is not None:
                if have.target != disk.target:
                    raise errors.Conflict(f"volume {disk.volume_id} is attached to {name} as {have.target}")
                if (have.path, have.format) != (disk.path, disk.format):
                    if dom.state is not PowerState.SHUTDOWN:
                        raise errors.Conflict(f"volume {disk.volume_id} runs on {have.path} in {name}, "
                                              f"not {disk.path}")
                    dom.volumes[disk.volume_id] = disk          # refreshed: the next start opens it
                return
            if disk.target in dom.disks():
                raise errors.Conflict(f"{name} already has a disk {disk.target}")
            if not disk.path.is_file():
                raise DriverError(f"attaching volume {disk.volume_id} to {name}: no file {disk.path}")
            dom.volumes[disk.volume_id] = disk

    def detach_volume(self, name: str, volume_id: str) -> None:
        self._maybe_fail("detach_volume")
        with self.host.lock:
            dom = self._domain(name)
            dom.volumes.pop(volume_id, None)
            dom.chains.pop(volume_id, None)

    def volume_disks(self, name: str) -> list[VolumeDisk]:
        self._maybe_fail("volume_disks")
        with self.host.lock:
            return list(self._domain(name).volumes.values())

    def volume_snapshot_create(self, name: str, volume_id: str, new_file: Path, *, quiesce: bool,
                               require_quiesce: bool, max_frozen: float = 1.0) -> tuple[bool, float]:
        self._maybe_fail("volume_snapshot_create")
        new_file = qcow2chain.host_path(new_file, "new_file")
        dom = self._domain(name)
        plan = self._switch_plan(dom, volume_id, new_file)
        if plan is None:
            return False, 0.0                                   # done already
        live = dom.state is not PowerState.SHUTDOWN
        can_quiesce = dom.state is PowerState.RUNNING and dom.agent
        if live and require_quiesce and not can_quiesce:
            raise QuiesceFailed(f"no guest agent answers in {name}: cannot quiesce")

        quiesced, frozen = False, 0.0
        try:
            if live and (quiesce or require_quiesce) and can_quiesce:
                t0 = time.monotonic()
                try:
                    try:
                        self._freeze(dom)
                        quiesced = time.monotonic() - t0 <= max_frozen
                    except Exception as exc:
                        if require_quiesce:
                            raise QuiesceFailed(f"freezing {name}: {exc}") from exc
                    if quiesced or not require_quiesce:
                        self._switch(dom, plan)
                finally:
                    self._thaw(dom)                 # always, even on failure
                    frozen = time.monotonic() - t0
                if not quiesced and require_quiesce:
                    raise QuiesceFailed(f"{name} stayed frozen past {max_frozen} s: not quiesced")
            else:
                self._switch(dom, plan)
        except BaseException:
            self._unswitch(dom, plan)               # back on the old file, as libvirt moves it back
            raise
        return quiesced, frozen if quiesced else 0.0

    def volume_snapshot_delete(self, name: str, volume_id: str, *, file_to_merge: str | None,
                               merge_target_file: str | None, progress: VolumeJob | None = None) -> None:
        self._maybe_fail("volume_snapshot_delete")
        file_to_merge = qcow2chain.file_name(file_to_merge, "file_to_merge")
        merge_target_file = qcow2chain.file_name(merge_target_file, "merge_target_file")
        if merge_target_file is not None and file_to_merge is None:
            raise errors.Invalid("a commit (merge_target_file set) needs file_to_merge")
        dom = self._domain(name)
        current = self._volume(dom, volume_id)
        report = progress.report if progress is not None else None
        if volume_id not in dom.chains:
            path, fmt = qcow2chain.merge(current.path, current.format, file_to_merge=file_to_merge,
                                         merge_target_file=merge_target_file, progress=report)
            with self.host.lock:
                if dom.volumes.get(volume_id) == current:
                    dom.volumes[volume_id] = replace(current, path=path, format=fmt)
            return
        names = merged_names(dom.chains[volume_id], file_to_merge, merge_target_file)
        total = next((d.virtual_size for d in self._info(dom).disks if d.target == current.target), 0) or 1
        if report is not None:
            report(total, total)
        with self.host.lock:
            dom.chains[volume_id] = names
            dom.volumes[volume_id] = replace(current, path=current.path.parent / names[0][0], format=names[0][1])


def merged_names(names: list[tuple[str, str]], file_to_merge: str | None,
                 merge_target_file: str | None) -> list[tuple[str, str]]:
    """``qcow2chain.merge`` on a chain of names (top first): what is left of it."""
    files = [n for n, _f in names]
    if merge_target_file is None:
        at = files.index(file_to_merge) if file_to_merge in files else None
        if (at == 1) if file_to_merge else len(files) == 1:
            return names
        if file_to_merge and (at is None or at < 2):
            raise DriverError(f"{file_to_merge} is not below the backing file of {files[0]}: nothing to rebase onto")
        return [names[0], *(names[at:] if at is not None else [])]
    if file_to_merge not in files:
        return names                                            # merged already
    i = files.index(file_to_merge)
    j = files.index(merge_target_file) if merge_target_file in files else None
    if j is None or j <= i:
        raise DriverError(f"{merge_target_file} is not below {file_to_merge} in the chain of {files[0]}")
    return names[:i] + names[j:]

class PersistentFakeDriver(FakeDriver):
    """The fake driver as ``serve`` runs it: its domains outlive the process (a JSON file), as
    real domains outlive a crashed conductor, so crash-recovery tests can restart the server."""

    def __init__(self, state_file: Path, **kwargs) -> None:
        super().__init__(**kwargs)
        self.state_file = Path(state_file)
        if self.state_file.exists():
            for name, doc in json.loads(self.state_file.read_text()).items():
                spec = GuestSpec(**{**doc["spec"], "root_disk": Path(doc["spec"]["root_disk"]),
                                    "extra_disks": tuple(Path(p) for p in doc["spec"]["extra_disks"])})
                volumes = {v["volume_id"]: VolumeDisk(v["volume_id"], v["target"], Path(v["path"]), v["format"])
                           for v in doc.get("volumes", [])}
                chains = {vid: [(n, f) for n, f in names] for vid, names in doc.get("chains", {}).items()}
                self.host.domains[name] = FakeDomain(spec, state=PowerState(doc["state"]), agent=doc["agent"],
                                                     volumes=volumes, chains=chains)

    def _save(self) -> None:
        """Write the domains, as they are now, to the state file. Callers hold the host lock
        across their change *and* this save, so the file never goes back to an older state and
        two writers never share a temporary file (each process and thread has its own)."""
        with self.host.lock:
            doc = {name: {"state": dom.state.value, "agent": dom.agent,
                          "volumes": [{**vars(v), "path": str(v.path)} for v in dom.volumes.values()],
                          "chains": dom.chains,
                          "spec": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(dom.spec).items()},
                                   "extra_disks": [str(p) for p in dom.spec.extra_disks]}}
                   for name, dom in self.host.domains.items()}
            tmp = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            try:
                tmp.write_text(json.dumps(doc))
                os.replace(tmp, self.state_file)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    def spawn(self, spec: GuestSpec) -> DomainInfo:
        with self.host.lock:
            info = super().spawn(spec)
            self._save()
            return info

    def destroy(self, name: str) -> None:
        with self.host.lock:
            super().destroy(name)
            self._save()

    def power_on(self, name: str) -> None:
        with self.host.lock:
            super().power_on(name)
            self._save()

    def power_off(self, name: str, timeout: float = 30.0) -> None:
        with self.host.lock:
            super().power_off(name, timeout)
            self._save()

    def attach_volume(self, name: str, disk: VolumeDisk) -> None:
        with self.host.lock:
            super().attach_volume(name, disk)
            self._save()

    def detach_volume(self, name: str, volume_id: str) -> None:
        with self.host.lock:
            super().detach_volume(name, volume_id)
            self._save()

    def volume_snapshot_create(self, name: str, volume_id: str, new_file: Path, **kw) -> tuple[bool, float]:
        try:
            return super().volume_snapshot_create(name, volume_id, new_file, **kw)
        finally:
            self._save()

    def begin_group_snapshot(self, name: str, snapshot_id: str, workdir: Path, **kw) -> GroupHandle:
        try:
            return super().begin_group_snapshot(name, snapshot_id, workdir, **kw)
        finally:
            self._save()

    def end_snapshot(self, name: str, snapshot_id: str, workdir: Path) -> None:
        try:
            super().end_snapshot(name, snapshot_id, workdir)
        finally:
            self._save()

    def volume_snapshot_delete(self, name: str, volume_id: str, **kw) -> None:
        try:
            super().volume_snapshot_delete(name, volume_id, **kw)
        finally:
            self._save()
