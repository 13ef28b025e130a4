"""Image data in and out of volumes, holes neither read nor written.

Into a volume (a volume from an image): the image is streamed from the image service into a
scratch file on the share (``SparseWriter``: a block of zeros is skipped, never written, so the
file stays sparse where the image holds zeros), checked (``inspect``: a qcow2 that names
another file is refused) and handed to the driver's ``import_volume`` — for qcow2file,
``qemu-img convert -n --target-is-zero`` into the pre-sized raw volume, which reads only the
scratch file's data and writes only data. The image is never held in memory.

Out of a volume (``os-volume_upload_image``): the volume's current data — its whole file chain,
overlays and all — is served read-only by a ``qemu-nbd`` of our own on a private unix socket
(``VolumeExport``); its block status says where the data is, and only those ranges are read.
A qcow2 image is streamed with compute's ``qcow2stream`` (the layout fixed from the extents up
front: holes are neither read nor sent); a raw image is the full virtual size, its holes sent as
zeros (raw has no other way to say them) but never read from the disk (``raw_stream``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

from freezeframe.common import errors
from freezeframe.blockdata.nbd import Extent, NbdClient, NbdError
from freezeframe.blockdata.nbdexport import FileSource, _image_opts
from freezeframe.volumes.drivers import qemuimg
from freezeframe.volumes.drivers.base import DataSource, VolumeDriverError

BLOCK = 64 << 10                # zero detection granularity of a download (qcow2's cluster size)
READ = 4 << 20                  # bytes per NBD read (and per block of zeros sent for a raw hole)
_ZEROS = bytes(READ)
_ZEROS_BLOCK = _ZEROS[:BLOCK]
QEMU_NBD = "qemu-nbd"
PRLIMIT = "prlimit"
INFO_MEMORY = 1 << 30          # qemu-img info of an untrusted image: address space and CPU limits
INFO_CPU_SECONDS = 30
START_TIMEOUT = 30.0
GiB = 1 << 30
FORMATS = ("raw", "qcow2")


class BadImage(errors.Invalid):
    """The image's data is not what a volume can be made of (its message says why)."""


# -- into a volume -----------------------------------------------------------------------------

class SparseWriter:
    """A sink for a stream (``write``, as ``GlanceClient.download`` calls it) laid down from
    offset 0 of a file, writing only the ``BLOCK``-aligned blocks that hold a non-zero byte
    (consecutive ones in one ``pwrite``). ``close`` sets the file's length to what was received
    (a tail of zeros is a hole too) and syncs it."""

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        self._fsync = fsync
        self.offset = 0             # bytes received
        self.written = 0            # bytes written (the rest were zeros)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        buf = data if isinstance(data, (bytes, bytearray)) else bytes(data)
        n = len(buf)
        i = 0
        run: int | None = None          # where the current run of non-zero blocks starts in buf
        while i < n:
            end = min(n, i + BLOCK - (self.offset + i) % BLOCK)     # blocks aligned in the file
            zero = buf.startswith(_ZEROS_BLOCK if end - i == BLOCK else _ZEROS[:end - i], i)
            if zero and run is not None:
                self._pwrite(buf, run, i)
                run = None
            elif not zero and run is None:
                run = i
            i = end
        if run is not None:
            self._pwrite(buf, run, n)
        self.offset += n
        return n

    def _pwrite(self, buf: bytes | bytearray, start: int, end: int) -> None:
        view = memoryview(buf)[start:end]
        at = self.offset + start
        while view:
            done = os.pwrite(self._fd, view, at)
            view, at = view[done:], at + done
            self.written += done

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            os.ftruncate(self._fd, self.offset)
            if self._fsync:
                os.fsync(self._fd)
        finally:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SparseWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()



def inspect(path: Path, fmt: str, *, limit: int) -> DataSource:
    """The downloaded image as a data source, checked: read as its declared format (never
    probed), no backing file and no external data file (a qcow2 naming another file would
    make the volume read that file), and a virtual size of at most ``limit`` bytes."""
    if fmt not in FORMATS:
        raise BadImage(f"disk_format {fmt!r} cannot be made into a volume (raw or qcow2)")
    if fmt == "raw":
        size = path.stat().st_size
    else:
        doc = _info(path)
        if doc.get("backing-filename") or doc.get("full-backing-filename"):
            raise BadImage("the qcow2 image has a backing file: refused (it would read another file)")
        specific = (doc.get("format-specific") or {}).get("data") or {}
        if specific.get("data-file"):
            raise BadImage("the qcow2 image has an external data file: refused (it would read another file)")
        size = int(doc.get("virtual-size") or 0)
    if size > limit:
        raise BadImage(f"the image's virtual size ({size} bytes) is larger than the volume ({limit} bytes)")
    return DataSource(path=path, format=fmt, virtual_size=size)


def _info(path: Path) -> dict:
    """``qemu-img info`` of a qcow2 a user supplied, under limits (as Nova and Cinder run it: a
    crafted header can make qemu-img take gigabytes of memory or minutes of CPU)."""
    limits = [PRLIMIT, f"--as={INFO_MEMORY}", f"--cpu={INFO_CPU_SECONDS}", "--"] if shutil.which(PRLIMIT) else []
    cmd = [*limits, qemuimg.QEMU_IMG, "info", "-U", "--output=json", "-f", "qcow2", str(path)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        raise BadImage("the image's qcow2 header took too long to read") from None
    if done.returncode != 0:
        raise BadImage(f"the image's data is not a readable qcow2: {done.stderr.strip()[:500]}")
    try:
        doc = json.loads(done.stdout)
    except ValueError:
        raise BadImage("qemu-img info gave unreadable output for the image") from None
    return doc if isinstance(doc, dict) else {}


def gib(size_bytes: int) -> int:
    """Bytes rounded up to whole GiB (at least 1): the size a volume for them needs."""
    return max(1, -(-int(size_bytes) // GiB))


# -- out of a volume ---------------------------------------------------------------------------

class VolumeExport:
    """A volume's data (a file, or a qcow2 and its backing chain) served read-only by a
    ``qemu-nbd`` started for this reader alone, on a unix socket in a private directory, and
    the client connected to it (``with VolumeExport(source) as nbd: nbd.extents() ...``).

    qemu-nbd runs without ``--persistent``: it exits as soon as its one client disconnects —
    so a conductor killed mid-read leaves no server behind (the kernel closes the socket)."""

    def __init__(self, source: DataSource, *, timeout: float = START_TIMEOUT) -> None:
        self.source = source
        self.timeout = timeout
        self._dir: str | None = None
        self._proc: subprocess.Popen | None = None
        self.client: NbdClient | None = None

    def __enter__(self) -> NbdClient:
        self._dir = tempfile.mkdtemp(prefix="ffvol-nbd-")        # 0700: the socket is ours alone
        sock = os.path.join(self._dir, "nbd.sock")
        log = os.path.join(self._dir, "qemu-nbd.log")
        args = [QEMU_NBD, "--read-only", "--shared=1", "--socket", sock, "--export-name", "volume",
                "--image-opts", _image_opts(FileSource(str(self.source.path), self.source.format))]
        try:
            with open(log, "wb") as err:
                self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                              stderr=err, close_fds=True)
            self.client = self._connect(sock, log)
        except BaseException:
            self.__exit__()
            raise
        return self.client

    def _connect(self, sock: str, log: str) -> NbdClient:
        deadline = time.monotonic() + self.timeout
        while True:
            if self._proc.poll() is not None:
                text = Path(log).read_text(errors="replace").strip()
                raise VolumeDriverError(f"qemu-nbd could not serve {self.source.path.name}: {text or 'no message'}")
            if os.path.exists(sock):
                try:
                    return NbdClient(sock, "volume", timeout=120.0)
                except NbdError:
                    if self._proc.poll() is not None:
                        continue        # (its message, above)
            if time.monotonic() > deadline:
                raise VolumeDriverError(f"qemu-nbd did not serve {self.source.path.name} within {self.timeout:g} s")
            time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.close()         # qemu-nbd exits with its only client
            self.client = None
        if self._proc is not None:
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.terminate()
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def data_extents(extents: Iterable[Extent]) -> list[tuple[int, int]]:
    """The ``(offset, length)`` ranges that hold data (not holes, not known zeros)."""
    return [(e.offset, e.length) for e in extents if not e.zero]


def _pieces(extents: list[Extent], offset: int) -> Iterator[tuple[int, int, bool]]:
    """``(offset, length, zero)`` pieces of at most ``READ`` bytes from ``offset`` on."""
    for ext in extents:
        start, end = max(ext.offset, offset), ext.offset + ext.length
        for at in range(start, end, READ):
            yield at, min(READ, end - at), ext.zero


def raw_stream(reader: NbdClient, extents: list[Extent], offset: int = 0, depth: int = 4) -> Iterator[memoryview]:
    """The disk's bytes from ``offset`` to its end: data ranges read (several in flight), the
    zero extents produced as zeros without a read. A pure function of the disk's contents, so a
    resumed upload sends the same bytes from where the image service stopped keeping them."""
    reads = reader.pread_many(((at, n) for at, n, zero in _pieces(extents, offset) if not zero), depth=depth)
    zeros = memoryview(_ZEROS)
    for _at, n, zero in _pieces(extents, offset):
        yield zeros[:n] if zero else memoryview(next(reads))

