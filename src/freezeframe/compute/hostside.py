"""What happens on a server's own host, and how the rest of the deployment gets there.

``LocalHost`` is one compute host's side: its virt driver (behind the per-server lock), its
cache of base images and its servers' disks. ``Hosts`` finds a server's host: this process's
``LocalHost`` when the server lives here (``serve``, or `freezeframe compute`'s host API), else
that host's compute process over its host API (``compute/hostclient.py``), or a 409 when the
host is down. Neither the compute API nor the workflows care which: both call ``Hosts.get``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol
from urllib.parse import urlsplit

from freezeframe.common import errors
from freezeframe.common.context import Actor
from freezeframe.common.paths import safe_join
from freezeframe.common.strict import is_uuid
from freezeframe.compute.drivers.base import DomainInfo, DriverError, GuestSpec, VirtDriver
from freezeframe.compute.hosts import HostDown, HostRegistry, HostView

LOG = logging.getLogger(__name__)
_ZEROS = bytes(64 << 10)


_LOCAL_DEVICES = tuple(f"vd{chr(c)}" for c in range(ord("b"), ord("z") + 1))
MAX_LOCAL_GB = 16384


@dataclass(frozen=True)
class LocalDisk:
    """A local disk besides the root, made with the domain (``block_device_mapping_v2``'s
    ``destination_type: local``): blank (a sparse qcow2 of ``size_gb``) or from an image (a
    qcow2 overlay on its cached base, as the root; ``size_gb`` None: the image's size)."""
    device_name: str              # "vdb": the domain's disks are named in order
    source: str                   # "blank" | "image"
    image_id: str | None = None
    size_gb: int | None = None

    @classmethod
    def from_json(cls, doc: Any) -> LocalDisk:
        if not isinstance(doc, dict) or set(doc) - {"device_name", "source", "image_id", "size_gb"}:
            raise errors.Invalid("invalid boot request: a local disk is {device_name, source, image_id, size_gb}")
        disk = cls(device_name=doc.get("device_name"), source=doc.get("source"), image_id=doc.get("image_id"),
                   size_gb=doc.get("size_gb"))
        size = disk.size_gb
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_LOCAL_GB):
            raise errors.Invalid(f"invalid boot request: a local disk's size_gb is 1-{MAX_LOCAL_GB}")
        if disk.source == "blank" and (size is None or disk.image_id is not None):
            raise errors.Invalid("invalid boot request: a blank local disk has a size and no image")
        if disk.source == "image" and not is_uuid(disk.image_id):
            raise errors.Invalid("invalid boot request: a local disk from an image needs the image's id")
        if disk.source not in ("blank", "image"):
            raise errors.Invalid("invalid boot request: a local disk's source is blank or image")
        return disk


@dataclass(frozen=True)
class BootRequest:
    """What a host needs to boot a server: the ids of its images (fetched there, as the
    server's user), the guest's shape, and its local disks besides the root (vdb, vdc, ...
    in order)."""
    server_id: str
    domain_name: str
    vcpus: int
    memory_mb: int
    image_id: str
    kernel_id: str | None = None
    ramdisk_id: str | None = None
    cmdline: str | None = None
    guest_agent: bool = False
    local_disks: tuple[LocalDisk, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "local_disks": [dict(d.__dict__) for d in self.local_disks]}

    @classmethod
    def from_json(cls, doc: Any) -> BootRequest:
        if not isinstance(doc, dict):
            raise errors.Invalid("a boot request must be a JSON object")
        disks = doc.get("local_disks", [])
        if not isinstance(disks, list) or len(disks) > len(_LOCAL_DEVICES):
            raise errors.Invalid(f"invalid boot request: local_disks is a list of at most {len(_LOCAL_DEVICES)}")
        try:
            req = cls(**{**doc, "local_disks": tuple(LocalDisk.from_json(d) for d in disks)})
        except TypeError as exc:
            raise errors.Invalid(f"invalid boot request: {exc}") from None
        for value in (req.server_id, req.image_id, req.kernel_id, req.ramdisk_id):
            if value is not None and not is_uuid(value):
                raise errors.Invalid("invalid boot request: ids must be UUIDs")
        if not isinstance(req.vcpus, int) or not isinstance(req.memory_mb, int) or not 0 < req.vcpus <= 64 \
                or not 0 < req.memory_mb <= 1 << 20:
            raise errors.Invalid("invalid boot request: vcpus/memory_mb out of range")
        # The driver names the domain's disks in order: the local disks are vdb, vdc, ... exactly.
        if tuple(d.device_name for d in req.local_disks) != _LOCAL_DEVICES[:len(req.local_disks)]:
            raise errors.Invalid("invalid boot request: the local disks are vdb, vdc, ... in order")
        return req


@dataclass(frozen=True)
class Booted:
    info: DomainInfo
    root_disk: str


class HostSide(Protocol):
    """A compute host's operations, here or over its host API."""
    name: str
    driver: VirtDriver

    def boot(self, actor: Actor, req: BootRequest) -> Booted: ...

    def remove(self, domain_name: str, server_id: str, *, adopted: bool) -> None: ...


class LocalHost:
    """This process's compute host."""

    def __init__(self, name: str, driver: VirtDriver, images_for: Callable[[Actor], Any],
                 instances_path: Path) -> None:
        self.name = name
        self.driver = driver
        self.images_for = images_for           # the image API, acting for a user (their rights)
        self.instances_path = Path(instances_path).absolute()     # disks name their backing file by it
        self._base_locks: dict[str, threading.Lock] = {}
        self._base_guard = threading.Lock()

    @property
    def base_dir(self) -> Path:
        return self.instances_path / "_base"

    def _base_lock(self, image_id: str) -> threading.Lock:
        with self._base_guard:
            return self._base_locks.setdefault(image_id, threading.Lock())

    def _image(self, actor: Actor, image_id: str):
        from freezeframe.images.client import GlanceError

        with self.images_for(actor) as images:
            try:
                image = images.show(image_id)
            except GlanceError as exc:
                if exc.status in (400, 403, 404):
                    raise errors.Invalid(f"Image {image_id} could not be found.") from None
                raise errors.BackendUnavailable(f"The image service failed: {exc}") from None
        if image.id != image_id or image.status != "active":
            raise errors.Invalid(f"Image {image_id} is not active.")
        return image

    def cached(self, actor: Actor, image) -> Path:
        """Download an image once into the local base cache (as the server's user: they may see
        it). Only the image's canonical id names the file; concurrent spawns of the same image
        download it once; a partial download never takes the final name."""
        base = safe_join(self.base_dir, image.id)
        with self._base_lock(image.id):
            if base.exists():
                return base
            self.base_dir.mkdir(parents=True, exist_ok=True)
            fd, partial = tempfile.mkstemp(dir=self.base_dir, prefix=f".{image.id}.", suffix=".part")
            try:
                with self.images_for(actor) as images, os.fdopen(fd, "wb") as fh:
                    sink = SparseSink(fh)
                    images.download(image, sink)
                    sink.close()
                os.replace(partial, base)
            except BaseException:
                Path(partial).unlink(missing_ok=True)
                raise
        return base

    def boot(self, actor: Actor, req: BootRequest, image=None) -> Booted:
        """Fetch the images (once per host), make the server's disks (the root a qcow2 overlay
        on the cached base; the local disks after it) and start the domain."""
        image = image or self._image(actor, req.image_id)
        base = self.cached(actor, image)
        disk_dir = safe_join(self.instances_path, req.server_id)
        disk_dir.mkdir(parents=True, exist_ok=True)
        disk = disk_dir / "disk"
        fmt = "qcow2" if image.disk_format == "qcow2" else "raw"
        made = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(base), str(disk)],
                              capture_output=True, text=True)
        if made.returncode != 0:
            raise DriverError(f"making the disk of server {req.server_id}: {made.stderr.strip()}")
        extra = tuple(self._local_disk(actor, req.server_id, disk_dir, local) for local in req.local_disks)
        kernel = self.cached(actor, self._image(actor, req.kernel_id)) if req.kernel_id else None
        initrd = self.cached(actor, self._image(actor, req.ramdisk_id)) if req.ramdisk_id else None
        spec = GuestSpec(name=req.domain_name, uuid=req.server_id, vcpus=req.vcpus, memory_mb=req.memory_mb,
                         root_disk=disk, extra_disks=extra, kernel=kernel, initrd=initrd, cmdline=req.cmdline,
                         guest_agent=req.guest_agent)
        return Booted(self.driver.spawn(spec), str(disk))

    def _local_disk(self, actor: Actor, server_id: str, disk_dir: Path, local: LocalDisk) -> Path:
        """``disk.<device>`` in the server's directory: a sparse qcow2 (blank), or a qcow2
        overlay on the image's cached base, grown to ``size_gb`` when that is larger."""
        path = disk_dir / f"disk.{local.device_name}"
        size = f"{local.size_gb}G" if local.size_gb else None
        if local.source == "blank":
            cmd = ["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)]
        else:
            image = self._image(actor, local.image_id)
            base = self.cached(actor, image)
            fmt = "qcow2" if image.disk_format == "qcow2" else "raw"
            if local.size_gb is not None and local.size_gb << 30 < _virtual_size(base, fmt):
                raise DriverError(f"server {server_id}: image {image.id} is larger than {local.size_gb} GiB "
                                  f"(/dev/{local.device_name})")
            cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(base), str(path),
                   *([size] if size is not None else [])]
        made = subprocess.run(cmd, capture_output=True, text=True)
        if made.returncode != 0:
            raise DriverError(f"making disk {local.device_name} of server {server_id}: {made.stderr.strip()}")
        return path

    def remove(self, domain_name: str, server_id: str, *, adopted: bool) -> None:
        """Destroy a deleted server's domain and its disks (an adopted one's stay: not ours)."""
        if adopted:
            return
        self.driver.destroy(domain_name)
        shutil.rmtree(safe_join(self.instances_path, server_id), ignore_errors=True)


class Hosts:
    """A server's host, wherever it is. ``connect`` makes the client of a remote host."""

    def __init__(self, local: LocalHost | None, registry: HostRegistry | None = None,
                 connect: Callable[[HostView], HostSide] | None = None) -> None:
        self.local = local
        self.registry = registry
        self.connect = connect
        self._remote: dict[tuple[str, str], HostSide] = {}
        self._probes: dict[str, tuple[float, bool]] = {}
        self._guard = threading.Lock()

    def get(self, name: str | None) -> HostSide:
        """The host's side, or a Conflict (409) when it is down or unknown."""
        if self.local is not None and (name is None or name == self.local.name):
            return self.local
        if self.registry is None or self.connect is None or name is None:
            raise HostDown(f"The server's host {name!r} is not this host, and this process reaches no "
                                  "other compute host")
        view = self.registry.require_up(name)
        with self._guard:
            side = self._remote.get((view.name, view.url))
            if side is None:
                side = self._remote[(view.name, view.url)] = self.connect(view)
            return side

    def serving(self, names: frozenset[str] | None = None) -> frozenset[str]:
        """The hosts whose host-bound work this process can drive now (of ``names``; None:
        any): its own, and every registered host that is up and whose host API answers from
        here. Asked at every claim; the probes are remembered for ``probe_ttl`` seconds."""
        found = set()
        if self.local is not None and (names is None or self.local.name in names):
            found.add(self.local.name)
        if self.registry is not None:
            for view in self.registry.all():
                if view.up and (names is None or view.name in names) and self._answers(view):
                    found.add(view.name)
        return frozenset(found)

    probe_ttl = 5.0

    def _answers(self, view: HostView) -> bool:
        now = time.monotonic()
        cached = self._probes.get(view.url)
        if cached is not None and now - cached[0] < self.probe_ttl:
            return cached[1]
        parts = urlsplit(view.url)
        try:
            with socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)),
                                          timeout=1.0):
                ok = True
        except OSError as exc:
            if cached is None or cached[1]:
                LOG.warning("compute host %s is up but its host API (%s) does not answer from here: %s; its "
                            "work is left to conductors that reach it", view.name, view.url, exc)
            ok = False
        self._probes[view.url] = (now, ok)
        return ok

    def choose(self) -> str:
        """The host of a new server: this one, else the first up host (by name)."""
        if self.local is not None:
            return self.local.name
        if self.registry is not None:
            up = [h for h in self.registry.all() if h.up]
            if up:
                return up[0].name
        raise errors.Conflict("No compute host is up: start `freezeframe compute --host NAME` on a hypervisor host")


def _virtual_size(path: Path, fmt: str) -> int:
    """The size a guest sees of a cached base (its format known: never probed)."""
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", "-f", fmt, str(path)], capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise DriverError(f"reading {path.name}: {out.stderr.strip()}")
    return int(json.loads(out.stdout)["virtual-size"])


class SparseSink:
    """A file sink that leaves 64 KiB runs of zeros as holes: a base image cached sparse lets
    QEMU see them as unallocated, so snapshots of servers booted from it skip them too."""

    def __init__(self, fh) -> None:
        self.fh = fh

    def write(self, block: bytes) -> int:
        step = len(_ZEROS)
        for pos in range(0, len(block), step):
            piece = block[pos:pos + step]
            if piece == _ZEROS[:len(piece)]:
                self.fh.seek(len(piece), 1)
            else:
                self.fh.write(piece)
        return len(block)

    def close(self) -> None:
        self.fh.truncate(self.fh.tell())
