"""The WebDAV area on disk: where a node's agent streams its root disk (seed 004's intermediate
storage), one collection per snapshot operation, and how the conductor reads it back.

Each operation has a ``Transfer`` row (``baremetal_transfers``): a random user name, the sha256
of a random password (the WebDAV server checks a request against it without holding the
secret) and its own path under the area. What the agent leaves there (contract: "the stream")::

    c-00000000.bin ... c-NNNNNNNN.bin    chunk i = disk bytes [i*chunk_size, min((i+1)*chunk_size, size)),
                                         only the chunks holding a non-zero byte (a ``.part`` is one in flight)
    manifest.json                        {"version": 1, "size", "chunk_size", "chunks": [{index, offset,
                                          length, sha256}...], "sha256": sha256 of "<offset> <length> <sha256>\\n"...}

The WebDAV server sums each file as it receives it (``Summing``: its sha256 and the 64 KiB
clusters holding data) and keeps the sums beside the area (``.sums/<transfer path>/``, out of
every agent's reach), keyed by the file's inode, size and mtime: a chunk renamed ``.part`` ->
``.bin`` keeps them, a file changed since does not match them. ``verify`` checks the manifest's
own hash, every chunk's place and size, and its sha256 — from the sums when they match the file
(no second read of the data), else read and hashed again. ``ChunkReader``
then reads the disk back from the chunk files (``pread_many``, the ``RangeReader`` of
``blockdata.qcow2stream``): a qcow2 is streamed straight into the image upload — nothing
assembled on disk, the holes neither read nor sent; ``raw_stream`` gives the whole disk, the
holes as zeros (raw has no other way to say them) but never read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from freezeframe.common import errors
from freezeframe.common.directio import ALIGN, DirectWriter, aligned_buffer, open_direct

MANIFEST = "manifest.json"
CHUNK_NAME = "c-%08d.bin"
_CHUNK_RE = re.compile(r"^c-(\d{8})\.(bin|part)$")
MAX_MANIFEST = 64 << 20          # bytes: a manifest larger than this is not one we read
_ZEROS = bytes(4 << 20)
HASH_READ = 4 << 20
CLUSTER = 64 << 10              # the qcow2 image's cluster: the grain of the data extents
_ZERO_CLUSTER = bytes(CLUSTER)
EXTENTS = "extents.json"
SUMS = ".sums"
_NAME_OK = re.compile(r"^[0-9a-f-]{36}$")


class BadStream(errors.Invalid):
    """What the agent left in the area is not a complete, consistent stream (the message says
    what is wrong)."""


def hash_password(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def new_credential() -> tuple[str, str]:
    """(user name, password) for one operation: random, never reused."""
    return "ff-" + secrets.token_hex(8), secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Chunk:
    index: int
    offset: int
    length: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    size: int
    chunk_size: int
    chunks: tuple[Chunk, ...]
    sha256: str

    @property
    def data_bytes(self) -> int:
        return sum(c.length for c in self.chunks)

    def extents(self) -> list[tuple[int, int]]:
        """The data ranges (offset, length), ascending: the holes are everything else."""
        return [(c.offset, c.length) for c in self.chunks]

    @staticmethod
    def digest(chunks: Iterable[Chunk]) -> str:
        return hashlib.sha256("".join(f"{c.offset} {c.length} {c.sha256}\n" for c in chunks).encode()).hexdigest()

    @classmethod
    def parse(cls, doc: object) -> Manifest:
        """The manifest, checked for shape and consistency (not against the chunk files)."""
        if not isinstance(doc, dict) or doc.get("version") != 1:
            raise BadStream("the manifest is not a version 1 manifest")
        size, chunk_size, entries = doc.get("size"), doc.get("chunk_size"), doc.get("chunks")
        if not _uint(size) or not _uint(chunk_size) or chunk_size == 0 or not isinstance(entries, list):
            raise BadStream("the manifest's size, chunk_size or chunks are missing or wrong")
        chunks: list[Chunk] = []
        last = -1
        for entry in entries:
            if not isinstance(entry, dict):
                raise BadStream("a manifest chunk entry is not an object")
            index, offset, length, digest = (entry.get(k) for k in ("index", "offset", "length", "sha256"))
            if not (_uint(index) and _uint(offset) and _uint(length)) or not _hex64(digest):
                raise BadStream(f"manifest chunk entry {entry!r} is malformed")
            if index <= last:
                raise BadStream(f"manifest chunk {index} is out of order")
            if offset != index * chunk_size or length != min(chunk_size, size - offset) or length <= 0:
                raise BadStream(f"manifest chunk {index} does not cover its place of the {size}-byte disk "
                                f"(offset {offset}, length {length}, chunk size {chunk_size})")
            chunks.append(Chunk(index, offset, length, digest))
            last = index
        digest = doc.get("sha256")
        if not _hex64(digest) or digest != cls.digest(chunks):
            raise BadStream("the manifest's sha256 does not match its chunks")
        return cls(int(size), int(chunk_size), tuple(chunks), digest)


def _uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _hex64(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


class TransferArea:
    """The area's directory: one collection per operation (``<root>/<transfer path>/``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def directory(self, path: str) -> Path:
        """The collection of a transfer's ``path`` (a name we made: a uuid, never user input)."""
        if not _NAME_OK.match(path):
            raise ValueError(f"{path!r} is not a transfer path")
        return self.root / path

    def create(self, path: str) -> Path:
        self.ensure()
        where = self.directory(path)
        where.mkdir(mode=0o700, exist_ok=True)
        return where

    def remove(self, path: str) -> None:
        shutil.rmtree(self.sums_directory(path), ignore_errors=True)
        with contextlib.suppress(OSError):      # the last one out: nothing of the sums is left
            os.rmdir(self.root / SUMS)
        shutil.rmtree(self.directory(path), ignore_errors=True)

    def sums_directory(self, path: str) -> Path:
        """Where the sums of a transfer's files are kept (beside its collection, never in it)."""
        self.directory(path)        # (checks the name)
        return self.root / SUMS / path

    def summing(self, file_path: Path, fileobj) -> Summing | None:
        """``fileobj`` (being written at ``file_path``) wrapped so that its sums are kept when it is
        closed; None when ``file_path`` is not a file directly in a transfer's collection."""
        collection = Path(file_path).parent
        if not _NAME_OK.match(collection.name) or collection.parent.resolve() != self.root.resolve():
            return None
        return Summing(fileobj, self.sums_directory(collection.name), open_direct(Path(file_path), os.O_WRONLY))

    def recorded_sums(self, path: str, fd: int) -> tuple[str, list[int]] | None:
        """(sha256, data cluster offsets) the server kept for the open file ``fd`` of transfer
        ``path``, if they are the file's as it is now; else None."""
        st = os.fstat(fd)
        try:
            doc = json.loads((self.sums_directory(path) / _sums_name(st)).read_text())
            sha, data = doc["sha256"], doc["data"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not _hex64(sha) or not isinstance(data, list) or not all(_uint(o) and o < st.st_size for o in data):
            return None
        return sha, data

    def exists(self, path: str) -> bool:
        return self.directory(path).is_dir()

    def collections(self) -> list[str]:
        """The transfer paths with anything on disk — a collection, or sums left without one (a
        PUT finishing after its transfer was removed) — for the reaper: those without a live row
        go."""
        names: set[str] = set()
        for where in (self.root, self.root / SUMS):
            if where.is_dir():
                names.update(p.name for p in where.iterdir() if p.is_dir() and _NAME_OK.match(p.name))
        return sorted(names)

    def last_change(self, path: str) -> float | None:
        """When anything of transfer ``path`` on disk last changed (epoch seconds; None: nothing)."""
        times = []
        for where in (self.directory(path), self.sums_directory(path)):
            with contextlib.suppress(OSError):
                times.append(where.stat().st_mtime)
        return max(times) if times else None

    def has_manifest(self, path: str) -> bool:
        return (self.directory(path) / MANIFEST).is_file()

    def chunk_files(self, path: str) -> dict[int, int]:
        """index -> size of the complete chunks (``.bin``) on disk."""
        out = {}
        for entry in os.scandir(self.directory(path)):
            m = _CHUNK_RE.match(entry.name)
            if m and m.group(2) == "bin" and entry.is_file(follow_symlinks=False):
                out[int(m.group(1))] = entry.stat(follow_symlinks=False).st_size
        return out

    def manifest(self, path: str) -> Manifest:
        where = self.directory(path) / MANIFEST
        try:
            fd = os.open(where, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise BadStream("the stream has no manifest (it did not finish)") from None
        except OSError as exc:
            raise BadStream(f"the manifest cannot be read: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            text = f.read(MAX_MANIFEST + 1)
        if len(text) > MAX_MANIFEST:
            raise BadStream("the manifest is too large")
        try:
            doc = json.loads(text)
        except ValueError:
            raise BadStream("the manifest is not JSON") from None
        return Manifest.parse(doc)

    def verify(self, path: str, manifest: Manifest, *, workers: int = 2,
               check_stop=lambda: None) -> list[tuple[int, int]]:
        """Every chunk of the manifest is there, of its size, with its sha256 (hashed in
        ``workers`` threads: hashlib lets go of the GIL). Returns the disk's data extents at the
        grain of a qcow2 cluster (64 KiB), found while hashing: a chunk is sent whole when any of
        it holds data, but the image is laid out from these, so the zeros inside a chunk become
        holes of the image, neither read nor sent again."""
        directory = self.directory(path)
        found: dict[int, list[int]] = {}

        def check(chunk: Chunk) -> str | None:
            check_stop()
            name = directory / (CHUNK_NAME % chunk.index)
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                return f"chunk {chunk.index} is missing"
            try:
                if os.fstat(fd).st_size != chunk.length:
                    return f"chunk {chunk.index} has {os.fstat(fd).st_size} bytes, not {chunk.length}"
                recorded = self.recorded_sums(path, fd)
                if recorded is not None:        # summed as it was received: not read again
                    if recorded[0] != chunk.sha256:
                        return f"chunk {chunk.index} does not match its sha256"
                    found[chunk.index] = [chunk.offset + c for c in recorded[1]]
                    return None
                h = hashlib.sha256()
                data: list[int] = []
                at = 0
                while at < chunk.length:
                    buf = os.pread(fd, min(HASH_READ, chunk.length - at), at)
                    if not buf:
                        return f"chunk {chunk.index} is short"
                    h.update(buf)
                    data += (chunk.offset + at + c for c in data_clusters(buf))
                    at += len(buf)
                if h.hexdigest() != chunk.sha256:
                    return f"chunk {chunk.index} does not match its sha256"
                found[chunk.index] = data
                return None
            finally:
                os.close(fd)

        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="ff-verify") as pool:
            for problem in pool.map(check, manifest.chunks):
                if problem:
                    raise BadStream(f"the stream is corrupt: {problem}")
        extents: list[tuple[int, int]] = []
        for chunk in manifest.chunks:
            for start in found[chunk.index]:
                length = min(CLUSTER, chunk.offset + chunk.length - start)
                if extents and extents[-1][0] + extents[-1][1] == start:
                    extents[-1] = (extents[-1][0], extents[-1][1] + length)
                else:
                    extents.append((start, length))
        return extents

    def save_extents(self, path: str, manifest: Manifest, extents: list[tuple[int, int]]) -> None:
        """What verify found, kept beside the chunks (written by the conductor once the agent's
        credential is revoked; tied to the manifest it was found in)."""
        target = self.directory(path) / EXTENTS
        partial = target.with_name(f".{EXTENTS}.{os.getpid()}")
        partial.write_text(json.dumps({"manifest_sha256": manifest.sha256, "extents": extents}))
        os.replace(partial, target)

    def data_extents(self, path: str, manifest: Manifest) -> list[tuple[int, int]]:
        """The data extents verify found for this manifest, or (none kept: a flow verified before
        they were) the chunks themselves."""
        try:
            doc = json.loads((self.directory(path) / EXTENTS).read_text())
            if doc.get("manifest_sha256") == manifest.sha256:
                return [(int(o), int(n)) for o, n in doc["extents"]]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return manifest.extents()

    def reader(self, path: str, manifest: Manifest) -> ChunkReader:
        return ChunkReader(self.directory(path), manifest)


class ChunkReader:
    """The disk as the chunk files hold it: ``pread_many`` of any ranges (zeros where no chunk
    was sent). A few chunk files are kept open at a time; reads go ``depth`` ahead in threads."""

    OPEN_FILES = 4

    def __init__(self, directory: Path, manifest: Manifest) -> None:
        self.directory = Path(directory)
        self.manifest = manifest
        self.size = manifest.size
        self._by_index = {c.index: c for c in manifest.chunks}
        # index -> (descriptor, the same file with O_DIRECT or None)
        self._fds: OrderedDict[int, tuple[int, int | None]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes_read = 0

    def _fd(self, index: int) -> tuple[int, int | None]:
        with self._lock:
            fds = self._fds.get(index)
            if fds is not None:
                self._fds.move_to_end(index)
                return fds
            path = self.directory / (CHUNK_NAME % index)
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            fds = self._fds[index] = (fd, open_direct(path, os.O_RDONLY))
            while len(self._fds) > self.OPEN_FILES:
                _, old = self._fds.popitem(last=False)
                _close_all(old)
            return fds

    def _read(self, index: int, at: int, length: int) -> bytes | memoryview:
        """``length`` bytes of chunk file ``index`` from ``at``: with O_DIRECT where it takes it
        (the chunks were written past the page cache; a buffered read would fill it again)."""
        fd, direct = self._fd(index)
        if direct is not None and at % ALIGN == 0:
            view = aligned_buffer(-(-length // ALIGN) * ALIGN)
            if os.preadv(direct, [view], at) >= length:
                return view[:length]        # (read in place: no copy)
        return os.pread(fd, length, at)

    def pread(self, offset: int, length: int) -> bytes | memoryview:
        """The disk's bytes [offset, offset+length) (must lie within the disk)."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"range {offset}+{length} is outside the {self.size}-byte disk")
        cs = self.manifest.chunk_size
        index = offset // cs
        if length and (offset + length - 1) // cs == index and index in self._by_index:
            buf = self._read(index, offset - self._by_index[index].offset, length)   # one chunk: no join
            if len(buf) != length:
                raise BadStream(f"chunk {index} became short while reading it")
            self.bytes_read += length
            return buf
        out = bytearray()
        at, end = offset, offset + length
        while at < end:
            index = at // cs
            upto = min(end, (index + 1) * cs)
            chunk = self._by_index.get(index)
            if chunk is None:
                out += _zeros(upto - at)
            else:
                want = upto - at
                buf = self._read(index, at - chunk.offset, want)
                if len(buf) != want:
                    raise BadStream(f"chunk {index} became short while reading it")
                self.bytes_read += want
                out += buf
            at = upto
        return bytes(out)

    def pread_many(self, ranges: Iterable[tuple[int, int]], depth: int = 4) -> Iterator[bytes]:
        """Each range's bytes, in order; up to ``depth`` reads in flight."""
        depth = max(1, depth)
        with ThreadPoolExecutor(depth, thread_name_prefix="ff-chunks") as pool:
            pending = []
            for offset, length in ranges:
                pending.append(pool.submit(self.pread, offset, length))
                if len(pending) >= depth:
                    yield pending.pop(0).result()
            for fut in pending:
                yield fut.result()

    def raw_stream(self, offset: int = 0, block: int = 4 << 20, depth: int = 4) -> Iterator[bytes | memoryview]:
        """The whole disk from ``offset``: data read from the chunks, holes as zeros (never read)."""
        data = self.manifest.extents()
        pieces: list[tuple[int, int, bool]] = []
        at = offset
        for o, n in data:
            if o + n <= at:
                continue
            if o > at:
                pieces += _split(at, o - at, True, block)
                at = o
            pieces += _split(at, o + n - at, False, block)
            at = o + n
        if at < self.size:
            pieces += _split(at, self.size - at, True, block)
        reads = self.pread_many(((o, n) for o, n, hole in pieces if not hole), depth=depth)
        for _o, n, hole in pieces:
            yield memoryview(_ZEROS)[:n] if hole else next(reads)

    def close(self) -> None:
        with self._lock:
            for fds in self._fds.values():
                _close_all(fds)
            self._fds.clear()

    def __enter__(self) -> ChunkReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_all(fds: tuple[int, int | None]) -> None:
    for fd in fds:
        if fd is not None:
            os.close(fd)


def _sums_name(st: os.stat_result) -> str:
    return f"{st.st_ino}-{st.st_size}-{st.st_mtime_ns}.json"


class Summing:
    """A file being written, summed as it goes: its sha256 and the offsets of its CLUSTER-sized
    pieces holding a non-zero byte. On ``close`` the sums are kept under the file's inode, size
    and mtime (a failure to keep them costs only a second read at verify).

    With ``direct_fd`` (the same file opened with O_DIRECT) the data goes past the page cache
    (``common.directio``): a chunk read back once by the upload has no use for it."""

    def __init__(self, fileobj, sums_dir: Path, direct_fd: int | None = None) -> None:
        self._f = fileobj
        self._dir = sums_dir
        self._sha = hashlib.sha256()
        self._pos = 0
        self._data: list[int] = []
        self._current = -1          # the last cluster found to hold data
        self._direct = DirectWriter(direct_fd, fileobj.fileno()) if direct_fd is not None else None

    def write(self, block) -> int:
        if self._direct is None:
            n = self._f.write(block)
        else:
            n = len(block)
            self._direct.write(memoryview(block).cast("B"), self._pos)
        self._sum(block)
        return n

    def writelines(self, blocks) -> None:
        for block in blocks:
            self.write(block)

    def _sum(self, block) -> None:
        self._sha.update(block)
        size = len(block)
        at = 0
        while at < size:
            pos = self._pos + at
            cluster = pos - pos % CLUSTER
            take = min(size - at, cluster + CLUSTER - pos)
            if cluster != self._current and (block[at] or bytes(block[at:at + take]) != _ZERO_CLUSTER[:take]):
                self._data.append(cluster)
                self._current = cluster
            at += take
        self._pos += size

    def close(self) -> None:
        fd = self._f.fileno()
        try:
            self._f.flush()
            st = os.fstat(fd)
        finally:
            self._f.close()
            if self._direct is not None:
                self._direct.close()
                self._direct = None
        if st.st_size != self._pos:
            return              # (written around us: no sums, verify reads it)
        try:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            target = self._dir / _sums_name(st)
            partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
            partial.write_text(json.dumps({"sha256": self._sha.hexdigest(), "data": self._data}))
            os.replace(partial, target)
        except OSError:
            pass

    def __getattr__(self, name):
        return getattr(self._f, name)


def data_clusters(buf: bytes) -> Iterator[int]:
    """The offsets in ``buf`` of its CLUSTER-sized pieces that hold a non-zero byte (a piece
    whose first byte is not zero is data without a look further: random data costs nothing)."""
    for at in range(0, len(buf), CLUSTER):
        if buf[at] or buf[at:at + CLUSTER] != _ZERO_CLUSTER[:min(CLUSTER, len(buf) - at)]:
            yield at


def _split(offset: int, length: int, hole: bool, block: int) -> list[tuple[int, int, bool]]:
    return [(at, min(block, offset + length - at), hole) for at in range(offset, offset + length, block)]


def _zeros(n: int) -> bytes:
    return _ZEROS[:n] if n <= len(_ZEROS) else bytes(n)


def write_stream(directory: Path, read, size: int, chunk_size: int, *, first: int = 0) -> Manifest:
    """Write a disk into ``directory`` as the agent does (the fake snapshot interface and the
    tests): ``read(offset, length) -> bytes``; all-zero chunks are not written; each chunk goes
    to ``.part`` then is renamed ``.bin``; chunks below ``first`` are taken as already there
    (hashed from ``read``, not written again); the manifest last."""
    chunks = []
    for index in range(_ceil(size, chunk_size)):
        offset = index * chunk_size
        length = min(chunk_size, size - offset)
        data = read(offset, length)
        if len(data) != length:
            raise ValueError(f"short read at {offset}")
        if data == _zeros(length):
            continue
        chunks.append(Chunk(index, offset, length, hashlib.sha256(data).hexdigest()))
        if index < first:
            continue
        part = directory / (CHUNK_NAME % index).replace(".bin", ".part")
        with open(part, "wb") as f:
            f.write(data)
        os.replace(part, directory / (CHUNK_NAME % index))
    manifest = Manifest(size, chunk_size, tuple(chunks), Manifest.digest(chunks))
    doc = {"version": 1, "size": size, "chunk_size": chunk_size,
           "chunks": [{"index": c.index, "offset": c.offset, "length": c.length, "sha256": c.sha256} for c in chunks],
           "sha256": manifest.sha256}
    tmp = directory / (MANIFEST + ".part")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, directory / MANIFEST)
    return manifest


def _ceil(a: int, b: int) -> int:
    return -(-a // b)
