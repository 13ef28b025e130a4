"""The libvirt virt driver: QEMU domains, quiesce through the guest agent, snapshots as
pull-mode backups (running domain) or ``qemu-nbd`` exports (shut-off domain), read over NBD.

Running domain: freeze (guest agent) -> ``backupBegin`` in pull mode (a sparse scratch qcow2,
made beforehand in the workdir, takes copy-before-write of what the guest overwrites) -> thaw,
all within ``max_frozen``. QEMU then serves the point in time on a unix socket; the snapshot
workflow reads its data ranges over NBD and streams them into the upload: the disk is never
copied locally (Nova bug 1262914). Shut-off domain: ``qemu-nbd --read-only`` serves its chain.

A group (seed 003: an instance-level snapshot) is one point in time of several disks: inside the
one freeze, the chosen volumes continue on their new files (one external disk-only snapshot,
REUSE_EXT: one QEMU transaction) and the chosen local disks are held by one backup job (libvirt
allows one per domain), each an NBD export named by its target; the vCPUs are paused across
the two (a few ms) so that they are one instant for any write. ``begin_snapshot`` is a group of
one disk. A group that fails half-way moves its volumes back (active commit + pivot, or
``qemu-img commit`` when stopped) and empties their new files again.

Volumes (attach, detach, assisted snapshots) are in ``libvirt_volumes.py``.

Everything a later call needs is in ``<workdir>/snapshot.json`` or in libvirt itself (the
backup job and its scratch path), so ``open_snapshot`` and ``end_snapshot`` work from a new
process after a crash. Connect with ``qemu:///system`` (a libvirtd) or, daemon-free, with
``LibvirtDriver.embedded(root)`` (libvirt's embedded QEMU driver: one root per process).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import libvirt

from freezeframe.common import errors
from freezeframe.compute.drivers import libvirt_agent as agent
from freezeframe.compute.drivers import libvirt_xml as lxml
from freezeframe.compute.drivers import qcow2chain
from freezeframe.compute.drivers.base import (
    DiskInfo, DomainInfo, DomainNotFound, DriverError, GroupHandle, GuestSpec, PowerState,
    QuiesceFailed, SnapshotHandle, VirtDriver, VolumeDisk, group_disks, stop_exports,
)
from freezeframe.compute.drivers.libvirt_volumes import _DISK_SNAPSHOT_FLAGS, DETACH_TIMEOUT, LibvirtVolumes
from freezeframe.blockdata.nbdexport import NbdSource
from freezeframe.blockdata.nbd import NbdClient, NbdError

LOG = logging.getLogger(__name__)
RECORD = "snapshot.json"
JOB_ABORT_TIMEOUT = 30.0

EMBED_QEMU_CONF = """\
# Written by freezeframe for libvirt's embedded QEMU driver (qemu:///embed?root=...).
stdio_handler = "file"
remember_owner = 0
"""

_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: PowerState.NOSTATE,
    libvirt.VIR_DOMAIN_RUNNING: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: PowerState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: PowerState.RUNNING,     # being shut down: still running
    libvirt.VIR_DOMAIN_SHUTOFF: PowerState.SHUTDOWN,
    libvirt.VIR_DOMAIN_CRASHED: PowerState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: PowerState.SUSPENDED,
}
_UNDEFINE_FLAGS = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                   | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                   | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                   | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)

# -- process-wide libvirt set-up -------------------------------------------------------------
_setup_lock = threading.Lock()
_event_thread: threading.Thread | None = None


def _ignore_libvirt_error(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; we raise them as exceptions instead."""


def _start_event_loop() -> None:
    """The embedded driver needs a running event loop; remote connections use it for keepalive."""
    global _event_thread
    with _setup_lock:
        if _event_thread is not None:
            return
        libvirt.registerErrorHandler(_ignore_libvirt_error, None)
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        _event_thread = threading.Thread(target=run, name="libvirt-events", daemon=True)
        _event_thread.start()


def embedded_uri(root: Path) -> str:
    """Prepare ``root`` for libvirt's embedded QEMU driver and return its URI. Keep the path
    short: the monitor sockets live under it (108-byte limit)."""
    root = Path(root).absolute()
    (root / "etc").mkdir(parents=True, exist_ok=True)
    conf = root / "etc" / "qemu.conf"
    if not conf.exists():
        conf.write_text(EMBED_QEMU_CONF)
    return f"qemu:///embed?root={root}"


def kvm_usable() -> bool:
    """KVM only where it really works: /dev/kvm usable and hardware virtualisation visible (a
    nested software hypervisor offers /dev/kvm without vmx/svm and cannot boot stock kernels)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"\b(vmx|svm)\b", cpuinfo) is not None


_direct_io_cache: dict[Path, bool] = {}


def supports_direct_io(path: Path) -> bool:
    """cache='none' needs O_DIRECT, which tmpfs refuses (checked once per directory)."""
    directory = path.parent
    if directory not in _direct_io_cache:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        except OSError:
            _direct_io_cache[directory] = False
        else:
            os.close(fd)
            _direct_io_cache[directory] = True
    return _direct_io_cache[directory]


# -- the snapshot record ------------------------------------------------------------------------
@dataclass
class _Disk:
    """A local disk of a point in time, and where it is served."""
    target: str
    export: str              # the NBD export name (the target)
    virtual_size: int
    socket: str              # the NBD server's unix socket
    pid: int = 0             # its qemu-nbd process ("export")


@dataclass
class _Volume:
    """A volume of a group, switched onto ``new_file`` by the snapshot (``ours``) or found there."""
    volume_id: str
    target: str
    old_path: str
    old_format: str
    new_file: str
    ours: bool

    def before(self) -> VolumeDisk:
        return VolumeDisk(self.volume_id, self.target, Path(self.old_path), self.old_format)


@dataclass
class _Record:
    """What ``<workdir>/snapshot.json`` holds about one point in time: a group of local disks
    and volumes (``begin_snapshot``: a group of one disk)."""
    snapshot_id: str
    domain: str
    method: str              # "backup" (running domain) | "export" (shut-off domain) | "volumes" (no local disk)
    phase: str               # "starting" | "freezing" | "running" | "failed" (a move back that failed)
    disks: list[_Disk] = field(default_factory=list)
    volumes: list[_Volume] = field(default_factory=list)
    quiesced: bool = False
    frozen_seconds: float = 0.0
    paused: bool = False     # the vCPUs are paused by this attempt (until it resumes them)

    def disk(self, target: str | None) -> _Disk:
        """The local disk ``target`` (None: the only one)."""
        if target is None:
            if len(self.disks) != 1:
                raise DriverError(f"snapshot {self.snapshot_id} of {self.domain} holds "
                                  f"{len(self.disks)} disks ({', '.join(d.target for d in self.disks) or 'none'}): "
                                  "name the one to read")
            return self.disks[0]
        found = next((d for d in self.disks if d.target == target), None)
        if found is None:
            raise DriverError(f"snapshot {self.snapshot_id} of {self.domain} holds no disk {target}")
        return found

    def same(self, snapshot_id: str, domain: str, disks: list[str], volumes: list[tuple[str, Path]]) -> bool:
        return ((self.snapshot_id, self.domain) == (snapshot_id, domain)
                and [d.target for d in self.disks] == disks
                and [(v.volume_id, Path(v.new_file)) for v in self.volumes] == volumes)

    def handle(self, workdir: Path) -> SnapshotHandle:
        disk = self.disk(None)
        return SnapshotHandle(snapshot_id=self.snapshot_id, domain=self.domain, disk=disk.target,
                              virtual_size=disk.virtual_size, workdir=workdir,
                              quiesced=self.quiesced, frozen_seconds=self.frozen_seconds)

    def group_handle(self) -> GroupHandle:
        return GroupHandle(snapshot_id=self.snapshot_id, domain=self.domain,
                           disks=tuple((d.target, d.virtual_size) for d in self.disks),
                           volumes=tuple(v.volume_id for v in self.volumes),
                           quiesced=self.quiesced, frozen_seconds=self.frozen_seconds)

    def save(self, workdir: Path) -> None:
        tmp = workdir / (RECORD + ".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, workdir / RECORD)

    @classmethod
    def load(cls, workdir: Path) -> _Record | None:
        try:
            doc = json.loads((workdir / RECORD).read_text())
            if "disks" not in doc:        # written by a one-disk driver (before groups): its one disk
                doc["disks"] = [{"target": doc["disk"], "export": doc["export"], "virtual_size": doc["virtual_size"],
                                 "socket": doc["socket"], "pid": doc.get("pid", 0)}]
                for key in ("disk", "export", "virtual_size", "socket", "pid"):
                    doc.pop(key, None)
            doc["disks"] = [_Disk(**d) for d in doc["disks"]]
            doc["volumes"] = [_Volume(**v) for v in doc.get("volumes", [])]
            return cls(**doc)
        except (OSError, ValueError, TypeError, KeyError):
            return None


def _socket_dir(workdir: Path, snapshot_id: str, longest: int) -> Path:
    """A new private directory for the NBD sockets: in the workdir when every socket path
    (names up to ``longest`` bytes) fits a unix socket's 108 bytes, else a fresh one under the
    temp dir (the record names the sockets)."""
    path = workdir / "nbd"
    if len(str(path)) + 1 + longest < 100:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(mode=0o700, parents=True)
        return path
    return Path(tempfile.mkdtemp(prefix=f"ff-nbd-{snapshot_id[:8]}-"))


def _socket_dir_for_qemu(sock: Path, qemu_owner: tuple[int, int] | None) -> None:
    """QEMU binds the socket: its directory is private to us and the user QEMU runs as."""
    if qemu_owner is not None and qemu_owner[0] != os.geteuid():
        try:
            os.chown(sock.parent, *qemu_owner)
        except PermissionError as exc:
            raise DriverError(f"QEMU runs as uid {qemu_owner[0]} and cannot be given {sock.parent}: {exc}") from exc


@contextlib.contextmanager
def _libvirt_errors(what: str) -> Iterator[None]:
    try:
        yield
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise DomainNotFound(f"{what}: {exc.get_error_message()}") from exc
        raise DriverError(f"{what}: {exc.get_error_message()}") from exc


def _run(cmd: list[str], timeout: float = 120) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DriverError(f"{cmd[0]}: {exc}") from exc
    if proc.returncode != 0:
        raise DriverError(f"{' '.join(cmd[:2])} failed: {proc.stderr.strip()}")
    return proc.stdout


class LibvirtDriver(LibvirtVolumes, VirtDriver):
    name = "libvirt"

    def __init__(self, uri: str | None = None, *, virt_type: str | None = None,
                 console_dir: Path | None = None, detach_timeout: float = DETACH_TIMEOUT) -> None:
        """``uri`` defaults to $FREEZEFRAME_LIBVIRT_URI, then qemu:///system. ``virt_type`` is
        "kvm" or "qemu" (TCG); by default KVM where it really works. ``console_dir`` keeps each
        domain's serial console in ``<console_dir>/<name>.log`` (else a pty).
        ``detach_timeout``: how long a live volume detach waits for the guest to let go."""
        self.detach_timeout = detach_timeout
        self.uri = uri or os.environ.get("FREEZEFRAME_LIBVIRT_URI") or "qemu:///system"
        if self.uri.startswith("qemu:///embed?root="):     # the root needs its qemu.conf
            self.uri = embedded_uri(Path(self.uri.split("=", 1)[1]))
        self._virt_type = virt_type or os.environ.get("FREEZEFRAME_VIRT_TYPE") or None
        self.console_dir = Path(console_dir) if console_dir else None
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()

    @classmethod
    def embedded(cls, root: Path, **kwargs: object) -> LibvirtDriver:
        return cls(embedded_uri(root), **kwargs)

    # -- connection ---------------------------------------------------------------------------
    @property
    def conn(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is None or not self._conn.isAlive():
                _start_event_loop()
                with _libvirt_errors(f"connecting to {self.uri}"):
                    self._conn = libvirt.open(self.uri)
            return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    self._conn.close()
                self._conn = None

    @staticmethod
    def _errors(what: str) -> contextlib.AbstractContextManager[None]:
        return _libvirt_errors(what)

    @staticmethod
    def _cache_mode(path: Path) -> str:
        return "none" if supports_direct_io(path) else "writethrough"

    def _dom(self, name: str) -> libvirt.virDomain:
        with _libvirt_errors(f"domain {name}"):
            return self.conn.lookupByName(name)

    @property
    def virt_type(self) -> str:
        if self._virt_type is None:
            caps = self.conn.getCapabilities()
            self._virt_type = "kvm" if kvm_usable() and "type='kvm'" in caps else "qemu"
        return self._virt_type

    # -- lifecycle ----------------------------------------------------------------------------
    def spawn(self, spec: GuestSpec) -> DomainInfo:
        try:
            dom = self._dom(spec.name)
            defined_here = False
        except DomainNotFound:
            paths = [spec.root_disk, *spec.extra_disks]
            disks = [lxml.DiskSpec(t, Path(p), lxml.image_format(Path(p)), self._cache_mode(Path(p)))
                     for t, p in zip(lxml.disk_targets(len(paths)), paths)]
            console = self.console_dir / f"{spec.name}.log" if self.console_dir else None
            xml = lxml.domain_xml(spec, disks, virt_type=self.virt_type, console_log=console)
            with _libvirt_errors(f"defining {spec.name}"):
                dom = self.conn.defineXML(xml)
            defined_here = True
        if not dom.isActive():
            try:
                with _libvirt_errors(f"starting {spec.name}"):
                    dom.create()
            except DriverError:
                if defined_here:      # leave nothing half-made behind
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.undefineFlags(_UNDEFINE_FLAGS)
                raise
        return self._info(dom)

    def destroy(self, name: str) -> None:
        try:
            dom = self._dom(name)
        except DomainNotFound:
            return
        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            if dom.isActive():      # (else it was not running, or stopped meanwhile)
                raise DriverError(f"destroying {name}: {exc.get_error_message()}") from exc
        try:
            dom.undefineFlags(_UNDEFINE_FLAGS)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise DriverError(f"undefining {name}: {exc.get_error_message()}") from exc

    def power_on(self, name: str) -> None:
        dom = self._dom(name)
        with _libvirt_errors(f"starting {name}"):
            if not dom.isActive():
                dom.create()

    def power_off(self, name: str, timeout: float = 30.0) -> None:
        dom = self._dom(name)
        if not dom.isActive():
            return
        if timeout > 0:
            # ACPI only: an agent shutdown may block on a hung agent.
            with contextlib.suppress(libvirt.libvirtError):
                dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not dom.isActive():
                    return
                time.sleep(0.1)
        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            if dom.isActive():
                raise DriverError(f"stopping {name}: {exc.get_error_message()}") from exc

    def get_info(self, name: str) -> DomainInfo:
        return self._info(self._dom(name))

    def list_domains(self) -> list[DomainInfo]:
        infos = []
        with _libvirt_errors("listing domains"):
            domains = self.conn.listAllDomains(0)
        for dom in domains:
            with contextlib.suppress(DriverError):      # gone while we were listing
                infos.append(self._info(dom))
        return infos

    def _info(self, dom: libvirt.virDomain) -> DomainInfo:
        with _libvirt_errors(f"domain {dom.name()}"):
            state, max_kib, _mem, vcpus, _cpu = dom.info()
            xml = dom.XMLDesc(0)
            power = _STATES.get(state, PowerState.NOSTATE)
            if power is PowerState.SHUTDOWN and dom.hasManagedSaveImage(0):
                power = PowerState.SUSPENDED
            disks = tuple(DiskInfo(target=t, path=p, format=f, virtual_size=self._capacity(dom, t, p))
                          for t, p, f in lxml.disks(xml))
            return DomainInfo(name=dom.name(), uuid=dom.UUIDString(), state=power, vcpus=vcpus,
                              memory_mb=max_kib // 1024, disks=disks)

    @staticmethod
    def _capacity(dom: libvirt.virDomain, target: str, path: Path) -> int:
        try:
            return int(dom.blockInfo(target)[0])
        except libvirt.libvirtError:
            info = json.loads(_run(["qemu-img", "info", "-U", "--output=json", str(path)]))
            return int(info["virtual-size"])

    # -- quiesce --------------------------------------------------------------------------------
    def agent_available(self, name: str, timeout: float = 2.0) -> bool:
        dom = self._dom(name)
        if not dom.isActive() or not lxml.has_agent_channel(dom.XMLDesc(0)):
            return False
        return agent.ping(dom, timeout)

    # -- snapshots --------------------------------------------------------------------------------
    # A point in time is a group: local disks held for reading (one backup job of a running
    # domain, a qemu-nbd per disk of a stopped one) and volumes switched onto new files, at one
    # instant; ``begin_snapshot`` is a group of one disk.
    def begin_snapshot(self, name: str, disk: str, snapshot_id: str, workdir: Path, *,
                       quiesce: bool, require_quiesce: bool, max_frozen: float = 1.0) -> SnapshotHandle:
        workdir = Path(workdir).absolute()
        with self._errors(f"snapshot {snapshot_id} of {name}"):
            rec = self._begin_group(name, snapshot_id, workdir, [disk], [], quiesce=quiesce,
                                    require_quiesce=require_quiesce, max_frozen=max_frozen)
        return rec.handle(workdir)

    def begin_group_snapshot(self, name: str, snapshot_id: str, workdir: Path, *, disks: Sequence[str],
                             volumes: Sequence[tuple[str, Path]], quiesce: bool, require_quiesce: bool,
                             max_frozen: float = 1.0) -> GroupHandle:
        disks, volumes = group_disks(disks, volumes)
        volumes = [(vid, qcow2chain.host_path(new_file, "new_file")) for vid, new_file in volumes]
        with self._errors(f"snapshot {snapshot_id} of {name}"):
            rec = self._begin_group(name, snapshot_id, Path(workdir).absolute(), disks, volumes, quiesce=quiesce,
                                    require_quiesce=require_quiesce, max_frozen=max_frozen)
        return rec.group_handle()

    def _begin_group(self, name: str, snapshot_id: str, workdir: Path, disks: list[str],
                     volumes: list[tuple[str, Path]], *, quiesce: bool, require_quiesce: bool,
                     max_frozen: float) -> _Record:
        dom = self._dom(name)
        local = {d.target: d for d in self._info(dom).disks}
        for target in disks:
            if target not in local:
                raise DriverError(f"domain {name} has no disk {target}")
        attached = {vid: self._attached(dom, vid) for vid, _new in volumes}
        for vid, _new in volumes:
            if attached[vid].target in disks:
                raise errors.Invalid(f"disk {attached[vid].target} is volume {vid}: name it once, as a volume")

        previous = _Record.load(workdir)
        if previous is not None:
            if (previous.same(snapshot_id, name, disks, volumes) and previous.phase == "running"
                    and self._serving(previous, workdir, volumes=True)):
                return previous                               # still there: reuse it
            # Another snapshot, or an attempt of this one that did not complete (or whose job
            # is gone): released, the volumes it moved put back, and the group taken anew.
            self._release(previous.domain, previous, workdir,
                          move_back=previous.phase != "running" or previous.snapshot_id == snapshot_id)
            attached = {vid: self._attached(dom, vid) for vid, _new in volumes}

        planned = []
        for vid, new_file in volumes:
            current = attached[vid]
            if current.path == new_file:                      # switched already (not by an attempt we know)
                planned.append(_Volume(vid, current.target, "", "", str(new_file), ours=False))
                continue
            if new_file.parent != current.path.parent:
                raise errors.Invalid(f"new_file {new_file} is not in the directory of the volume's file {current.path}")
            qcow2chain.check_overlay(new_file, current.path, current.format)
            planned.append(_Volume(vid, current.target, str(current.path), current.format, str(new_file), ours=True))

        if not dom.isActive():
            return self._begin_stopped(dom, snapshot_id, workdir, [local[t] for t in disks], planned)
        want_quiesce = quiesce or require_quiesce
        agent_ok = (want_quiesce and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
                    and self.agent_available(name))
        if require_quiesce and not agent_ok:
            raise QuiesceFailed(f"no guest agent answers in {name}: cannot quiesce")
        return self._begin_live(dom, snapshot_id, workdir, [local[t] for t in disks], planned, agent_ok=agent_ok,
                                require_quiesce=require_quiesce, max_frozen=max_frozen)

    def _begin_live(self, dom: libvirt.virDomain, snapshot_id: str, workdir: Path, disks: list[DiskInfo],
                    volumes: list[_Volume], *, agent_ok: bool, require_quiesce: bool, max_frozen: float) -> _Record:
        """A running domain: inside one freeze, the volumes' snapshot (one transaction) and one
        pull-mode backup of the local disks (QEMU keeps their point in time: copy-before-write
        into sparse scratch files; served over NBD; nothing is copied until it is read)."""
        name = dom.name()
        workdir.mkdir(parents=True, exist_ok=True)
        switch = [v for v in volumes if v.ours]
        sock = _socket_dir(workdir, snapshot_id, len("sock")) / "sock" if disks else None
        rec = _Record(snapshot_id=snapshot_id, domain=name, method="backup" if disks else "volumes",
                      phase="freezing" if agent_ok and (disks or switch) else "starting",
                      disks=[_Disk(d.target, d.target, d.virtual_size, str(sock)) for d in disks], volumes=volumes)
        rec.save(workdir)
        t0 = time.monotonic()
        try:
            xml = dom.XMLDesc(0)
            backup = snapshot = None
            if disks:
                # Made before the freeze: libvirt creating them takes several QEMU jobs while frozen.
                scratches = {d.target: workdir / f"{d.target}.scratch.qcow2" for d in disks}
                for d in disks:
                    _run(["qemu-img", "create", "-q", "-f", "qcow2", str(scratches[d.target]), str(d.virtual_size)])
                _socket_dir_for_qemu(sock, lxml.qemu_owner(xml))
                backup = lxml.pull_backup_xml([t for t, _p, _f in lxml.disks(xml)], scratches, sock)
            if switch:
                snapshot = lxml.disks_snapshot_xml(lxml.all_disk_targets(xml),
                                                   {v.target: Path(v.new_file) for v in switch})

            def take() -> None:
                # Both kinds: two QEMU operations, one instant — the vCPUs stop across them (a
                # freeze stops no write to a raw device, and without one nothing would).
                with self._vcpus_paused(dom, rec, workdir) if backup and snapshot else contextlib.nullcontext():
                    if snapshot is not None:
                        with self._errors(f"snapshot of the volumes of {name}"):
                            dom.snapshotCreateXML(snapshot, _DISK_SNAPSHOT_FLAGS)
                    if backup is not None:
                        self._backup_begin(dom, backup)

            if backup is not None or snapshot is not None:
                if agent_ok:
                    rec.quiesced, rec.frozen_seconds = self._frozen(dom, take, max_frozen=max_frozen,
                                                                    require_quiesce=require_quiesce)
                else:
                    take()
            for v in switch:
                self._sync_persistent(dom, v.volume_id)
        except BaseException as exc:
            self._undo(name, rec, workdir, exc)
            raise
        rec.phase = "running"
        rec.save(workdir)
        LOG.info("snapshot %s of %s taken: disks %s, volumes %s (quiesced=%s, frozen %.3f s, %.3f s)%s",
                 snapshot_id, name, [d.target for d in disks], [v.volume_id for v in volumes], rec.quiesced,
                 rec.frozen_seconds, time.monotonic() - t0, f", served at {sock}" if sock else "")
        return rec

    def _begin_stopped(self, dom: libvirt.virDomain, snapshot_id: str, workdir: Path, disks: list[DiskInfo],
                       volumes: list[_Volume]) -> _Record:
        """A shut-off domain's disks are their own point in time: each local disk served
        read-only by a ``qemu-nbd`` (its shared lock keeps the domain from starting meanwhile),
        in a process of its own that outlives ours, so an upload resumed after a crash reads the
        same bytes; each volume moved onto its new file in the persistent definition."""
        name = dom.name()
        switch = [v for v in volumes if v.ours]
        if switch:
            self._not_saved(dom)
        workdir.mkdir(parents=True, exist_ok=True)
        where = _socket_dir(workdir, snapshot_id, max(len(d.target) for d in disks) + 5) if disks else None
        rec = _Record(snapshot_id=snapshot_id, domain=name, method="export" if disks else "volumes", phase="starting",
                      disks=[_Disk(d.target, d.target, d.virtual_size, str(where / f"{d.target}.sock")) for d in disks],
                      volumes=volumes)
        rec.save(workdir)
        try:
            for info, disk in zip(disks, rec.disks):
                pid_file = workdir / f"qemu-nbd-{info.target}.pid"
                try:
                    # --fork: returns once the socket is listening; the server then runs detached.
                    _run(["qemu-nbd", "--read-only", "--persistent", "--shared=16", "--fork",
                          f"--format={info.format}", f"--export-name={disk.export}", f"--socket={disk.socket}",
                          f"--pid-file={pid_file}", str(info.path)], timeout=60)
                finally:
                    with contextlib.suppress(OSError, ValueError):     # it may have started all the same
                        disk.pid = int(pid_file.read_text().strip())
                    rec.save(workdir)
            for v in switch:
                self._persist(dom, v.volume_id, Path(v.new_file), "qcow2")
        except BaseException as exc:
            self._undo(name, rec, workdir, exc)
            if isinstance(exc, DriverError) and "lock" in str(exc):
                raise DriverError(f"a disk of {name} is in use (locked by another process): {exc}") from exc
            raise
        rec.phase = "running"
        rec.save(workdir)
        LOG.info("snapshot %s of shut-off %s: disks %s served by qemu-nbd (pids %s), volumes %s",
                 snapshot_id, name, [d.target for d in disks], [d.pid for d in rec.disks],
                 [v.volume_id for v in volumes])
        return rec

    @contextlib.contextmanager
    def _vcpus_paused(self, dom: libvirt.virDomain, rec: _Record, workdir: Path) -> Iterator[None]:
        if dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
            yield
            return
        rec.paused = True                 # (an attempt that dies paused: its cleanup resumes it)
        rec.save(workdir)
        with self._errors(f"pausing {dom.name()}"):
            dom.suspend()
        try:
            yield
        finally:
            self._resume_vcpus(dom, "after its snapshot")
            rec.paused = False
            rec.save(workdir)

    def _undo(self, name: str, rec: _Record, workdir: Path, cause: BaseException) -> None:
        """A begin that failed: everything it did released, its volumes moved back."""
        try:
            self._release(name, rec, workdir, move_back=True)
        except Exception as exc:
            raise DriverError(f"snapshot {rec.snapshot_id} of {name} failed ({cause}) and could not be undone: "
                              f"{exc}") from cause

    def _frozen_backup(self, dom: libvirt.virDomain, backup: str, *, max_frozen: float,
                       require_quiesce: bool) -> tuple[bool, float]:
        """freeze -> backupBegin -> thaw; (quiesced, seconds frozen)."""
        return self._frozen(dom, lambda: self._backup_begin(dom, backup), max_frozen=max_frozen,
                            require_quiesce=require_quiesce)

    def _frozen(self, dom: libvirt.virDomain, act: Callable[[], None], *, max_frozen: float,
                require_quiesce: bool) -> tuple[bool, float]:
        """freeze -> ``act`` -> thaw, bounded by ``max_frozen``; (quiesced, seconds frozen).
        ``act`` runs once: frozen, or after the thaw when the freeze failed or ran out (then
        QuiesceFailed instead with ``require_quiesce``; the caller undoes an ``act`` that ran)."""
        window = agent.FreezeWindow(dom, max_frozen)
        started = False
        try:
            try:
                window.freeze()
            except agent.AgentError as exc:
                if require_quiesce:
                    raise QuiesceFailed(f"freezing {dom.name()}: {exc}") from exc
                LOG.warning("freezing %s failed, snapshot is crash-consistent: %s", dom.name(), exc)
            else:
                if not window.expired:
                    act()
                    started = True
        finally:
            try:
                frozen = window.close()
            except agent.AgentError as exc:
                raise DriverError(f"thawing {dom.name()}: {exc}") from exc
        quiesced = started and not window.expired
        if not quiesced:
            if require_quiesce:
                # Started after (or across) the deadline: not a quiesced point in time.
                raise QuiesceFailed(f"{dom.name()} stayed frozen past {max_frozen} s: not quiesced")
            if not started:
                act()
        return quiesced, frozen if quiesced else 0.0

    @staticmethod
    def _backup_begin(dom: libvirt.virDomain, backup: str) -> None:
        try:
            dom.backupBegin(backup, None, libvirt.VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL)
        except libvirt.libvirtError as exc:
            hint = ""
            if "Permission denied" in (exc.get_error_message() or ""):
                hint = " (QEMU may run as an unprivileged user: each parent of the workdir needs o+x)"
            raise DriverError(f"starting the backup of {dom.name()}: {exc.get_error_message()}{hint}") from exc

    def _serving(self, rec: _Record, workdir: Path, *, volumes: bool = False) -> bool:
        """Is the point in time still there (the backup job, or every qemu-nbd; with ``volumes``
        also every volume on its new file)?"""
        try:
            dom = self._dom(rec.domain)
        except DomainNotFound:
            return False
        if rec.method == "backup" and self._our_backup_job(dom, workdir) is None:
            return False
        if rec.method == "export" and not all(self._export_alive(d) for d in rec.disks):
            return False
        if volumes and rec.volumes:
            try:
                now = {v.volume_id: v.path for v in lxml.volume_disks(self._xml(dom))}
            except DriverError:
                return False
            return all(now.get(v.volume_id) == Path(v.new_file) for v in rec.volumes)
        return True

    def _serving_disk(self, rec: _Record, disk: _Disk, workdir: Path) -> bool:
        if rec.method == "export":
            return self._export_alive(disk)
        return self._serving(rec, workdir)

    def open_snapshot(self, name: str, snapshot_id: str, workdir: Path, disk: str | None = None) -> NbdClient:
        workdir = Path(workdir).absolute()
        rec = _Record.load(workdir)
        if rec is None or rec.snapshot_id != snapshot_id:
            raise DriverError(f"no snapshot {snapshot_id} in {workdir}")
        member = rec.disk(disk)
        if rec.phase != "running" or not self._serving_disk(rec, member, workdir):
            raise DriverError(f"snapshot {snapshot_id} of {rec.domain} is gone (its "
                              f"{'backup job' if rec.method == 'backup' else 'qemu-nbd export'} ended)")
        try:
            return NbdClient(member.socket, member.export)
        except NbdError as exc:
            raise DriverError(f"reading snapshot {snapshot_id}: {exc}") from exc

    def snapshot_source(self, name: str, snapshot_id: str, workdir: Path, disk: str | None = None) -> NbdSource:
        rec = _Record.load(Path(workdir).absolute())
        if rec is None or rec.snapshot_id != snapshot_id or rec.phase != "running":
            raise DriverError(f"no snapshot {snapshot_id} in {workdir}")
        member = rec.disk(disk)
        return NbdSource(member.socket, member.export)

    # -- the backup job -----------------------------------------------------------------------
    def _our_backup_job(self, dom: libvirt.virDomain, workdir: Path) -> dict | None:
        """The stats of the domain's backup job if its files are in ``workdir``."""
        try:
            if not dom.isActive():
                return None
            stats = dom.jobStats(0)
            if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
                return None
            if stats.get("operation") != libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP:
                return None
            files = lxml.backup_files(dom.backupGetXMLDesc(0))
        except libvirt.libvirtError:
            return None     # not running, or the job ended meanwhile
        return stats if any(f.parent == workdir for f in files) else None

    def _abort_backup(self, dom: libvirt.virDomain, workdir: Path) -> bool:
        if self._our_backup_job(dom, workdir) is None:
            return False
        with contextlib.suppress(libvirt.libvirtError):
            dom.abortJob()
        deadline = time.monotonic() + JOB_ABORT_TIMEOUT
        while self._our_backup_job(dom, workdir) is not None:
            if time.monotonic() > deadline:
                raise DriverError(f"the backup job of {dom.name()} did not stop")
            time.sleep(0.05)
        return True

    # -- the qemu-nbd exports ----------------------------------------------------------------------
    @staticmethod
    def _export_alive(disk: _Disk) -> bool:
        """Is the disk's qemu-nbd running (and that pid still ours, not a reused one)?"""
        if not disk.pid:
            return False
        try:
            cmdline = Path(f"/proc/{disk.pid}/cmdline").read_bytes()
            status = Path(f"/proc/{disk.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return f"--socket={disk.socket}".encode() in cmdline and status != "Z"

    def _stop_export(self, disk: _Disk) -> None:
        if not self._export_alive(disk):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(disk.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while self._export_alive(disk) and time.monotonic() < deadline:
            time.sleep(0.02)
        if self._export_alive(disk):
            with contextlib.suppress(ProcessLookupError):
                os.kill(disk.pid, signal.SIGKILL)

    # -- end --------------------------------------------------------------------------------------
    def end_snapshot(self, name: str, snapshot_id: str, workdir: Path) -> None:
        workdir = Path(workdir).absolute()
        rec = _Record.load(workdir)
        # A group taken whole keeps its volumes on their new files (its result); an attempt that
        # never completed (its process died inside the begin) has its volumes moved back.
        with self._errors(f"ending snapshot {snapshot_id} of {name}"):
            self._release(name, rec, workdir, move_back=rec is not None and rec.phase != "running")

    def _release(self, name: str, rec: _Record | None, workdir: Path, *, move_back: bool) -> None:
        """End what the point in time in ``workdir`` holds: its exports to other hosts, the
        backup job, the qemu-nbd processes; resume and thaw a guest an attempt left paused or
        frozen; with ``move_back``, the volumes it switched go back onto their old files. Then
        ``workdir`` is removed — unless a volume could not be moved back: the record stays (a
        later call tries again) and DriverError says so."""
        stop_exports(workdir)               # whatever served it to another host goes first
        try:
            dom = self._dom(name)
        except DomainNotFound:
            dom = None
        if dom is not None and dom.isActive():
            if self._abort_backup(dom, workdir):
                LOG.info("snapshot %s: ended the backup job of %s", rec.snapshot_id if rec else workdir.name, name)
            if rec is not None and rec.paused and dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                self._resume_vcpus(dom, "after an interrupted snapshot")
                LOG.warning("resumed %s, left paused by an interrupted snapshot", name)
            if rec is not None and rec.phase == "freezing":
                self._ensure_thawed(dom)     # we died inside the freeze window
        if rec is not None and rec.method == "export":
            for disk in rec.disks:
                self._stop_export(disk)
        if rec is not None and move_back and dom is not None:
            failed = []
            for v in rec.volumes:
                if not v.ours:
                    continue
                try:
                    with self._errors(f"moving volume {v.volume_id} of {name} back"):
                        self._move_back(dom, v.before(), Path(v.new_file))
                except errors.FreezeframeError as exc:
                    failed.append(f"{v.volume_id}: {exc}")
            if failed:
                rec.phase, rec.paused = "failed", False
                with contextlib.suppress(OSError):
                    rec.save(workdir)
                raise DriverError(f"snapshot {rec.snapshot_id} of {name}: volume(s) could not be moved back onto "
                                  f"their old files ({'; '.join(failed)}): their new files must not be removed")
        self._remove(workdir, rec)

    @staticmethod
    def _remove(workdir: Path, rec: _Record | None) -> None:
        if rec is not None:
            for parent in {Path(d.socket).parent for d in rec.disks}:
                if workdir not in parent.parents:
                    shutil.rmtree(parent, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)

    def _ensure_thawed(self, dom: libvirt.virDomain) -> None:
        if not lxml.has_agent_channel(dom.XMLDesc(0)):
            return
        try:
            if agent.frozen(dom, timeout=2):
                agent.thaw(dom, timeout=5)
                LOG.warning("thawed %s, left frozen by an interrupted snapshot", dom.name())
        except agent.AgentError as exc:
            LOG.warning("cannot check whether %s is frozen: %s", dom.name(), exc)

    # -- for tests and operators ------------------------------------------------------------------
    def guest_frozen(self, name: str, timeout: float = 2.0) -> bool | None:
        """Does the guest agent say the guest is frozen? None when no agent answers."""
        dom = self._dom(name)
        if not dom.isActive() or not lxml.has_agent_channel(dom.XMLDesc(0)):
            return None
        try:
            return agent.frozen(dom, timeout)
        except agent.AgentError:
            return None
