"""The upload data path: stream in, hash and write in parallel, never hold the image.

Each block (``chunk_size`` bytes, 4 MiB by default) is handed at once to one thread per
hash algorithm and one thread for the store writer. hashlib and file writes release the GIL, so
with md5 + sha512 the hashes run side by side instead of one after the other, and the event
loop keeps receiving the next block meanwhile. At most ``MAX_IN_FLIGHT`` blocks are pending,
which bounds memory per upload to about (MAX_IN_FLIGHT + 1) * chunk_size.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from freezeframe.common import errors
from freezeframe.images import formats
from freezeframe.images.drivers.base import StoredObject, Writer

MAX_IN_FLIGHT = 2


@dataclass(frozen=True)
class UploadResult:
    size: int
    checksum: str | None
    os_hash_algo: str
    os_hash_value: str
    detected: formats.Detected
    stored: StoredObject


class Pipeline:
    def __init__(
        self,
        writer: Writer,
        *,
        hash_algo: str,
        legacy_md5: bool,
        chunk_size: int,
        max_size: int,
        disk_format: str | None,
    ) -> None:
        self._writer = writer
        self._hash_algo = hash_algo
        self._md5 = hashlib.md5(usedforsecurity=False) if legacy_md5 else None
        self._multihash = hashlib.new(hash_algo)
        self._hashers = [h for h in (self._md5, self._multihash) if h is not None]
        self._pools = [ThreadPoolExecutor(1, thread_name_prefix="ff-hash") for _ in self._hashers]
        self._write_pool = ThreadPoolExecutor(1, thread_name_prefix="ff-write")
        self._chunk_size = chunk_size
        self._max_size = max_size
        self._disk_format = disk_format
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._offset = 0  # bytes handed to the threads so far
        self._in_flight: collections.deque[asyncio.Future] = collections.deque()
        self._writes: collections.deque[asyncio.Future] = collections.deque()   # subset: the store's
        self._head = b""
        self._head_checked = False
        self._tail = b""
        self._closed = False
        self.primed = 0  # bytes kept from an earlier attempt (a resumed upload)

    @property
    def received(self) -> int:
        return self._offset + self._pending_len

    async def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self.received + len(chunk) > self._max_size:
            raise errors.TooLarge(f"Image exceeds the maximum size of {self._max_size} bytes")
        self._pending.append(chunk)
        self._pending_len += len(chunk)
        if self._pending_len >= self._chunk_size:
            await self._flush()

    async def _flush(self) -> None:
        if not self._pending:
            return
        block = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending, self._pending_len = [], 0
        if not self._head_checked:
            self._head += block[: formats.HEAD_BYTES - len(self._head)]
            if len(self._head) >= formats.HEAD_BYTES:
                self._check_head()
        self._tail = (self._tail + block[-formats.TAIL_BYTES:])[-formats.TAIL_BYTES:]
        loop = asyncio.get_running_loop()
        futures = [loop.run_in_executor(pool, h.update, block) for pool, h in zip(self._pools, self._hashers)]
        written = loop.run_in_executor(self._write_pool, self._writer.write, block, self._offset)
        futures.append(written)
        self._writes.append(written)
        while self._writes and self._writes[0].done():
            self._writes.popleft()
        self._offset += len(block)
        self._in_flight.append(asyncio.gather(*futures))
        while len(self._in_flight) > MAX_IN_FLIGHT:
            await self._in_flight.popleft()

    def _check_head(self) -> None:
        self._head_checked = True
        formats.check_head(self._disk_format, formats.detect_head(self._head))

    async def prime(self, length: int) -> None:
        """Resume after ``length`` bytes kept by an earlier attempt: hash them again from the
        store (local reads, nothing is sent twice) and go on writing after them."""
        loop = asyncio.get_running_loop()
        offset = 0
        while offset < length:
            block = await loop.run_in_executor(self._write_pool, self._writer.read_back, offset,
                                               min(self._chunk_size, length - offset))
            if not block:
                raise errors.Conflict(f"Kept upload data ends at {offset}, before {length}")
            if not self._head_checked:
                self._head += block[: formats.HEAD_BYTES - len(self._head)]
                if len(self._head) >= formats.HEAD_BYTES:
                    self._check_head()
            self._tail = (self._tail + block[-formats.TAIL_BYTES:])[-formats.TAIL_BYTES:]
            await asyncio.gather(*(loop.run_in_executor(p, h.update, block)
                                   for p, h in zip(self._pools, self._hashers)))
            offset += len(block)
        self._offset = length
        self.primed = length

    async def checkpoint(self) -> int:
        """A part of a resumable upload ends: hand everything received to the hashes and the
        store, and wait until the store has it — not for the hashes, which go on while the
        next part arrives (a lost pipeline re-hashes the kept bytes from the store anyway).
        Returns the bytes kept: all of them."""
        await self._flush()
        while self._writes:
            await self._writes.popleft()
        await asyncio.get_running_loop().run_in_executor(self._write_pool, self._writer.keep, self._offset)
        return self._offset

    async def suspend(self) -> int:
        """Stop, keeping what was written for a resumed upload; return the bytes kept."""
        try:
            await self._flush()
            await self._drain()
        except Exception:  # keep what made it to the store; the rest is sent again
            pass
        loop = asyncio.get_running_loop()
        kept = await loop.run_in_executor(self._write_pool, self._writer.suspend)
        self._shutdown()
        return kept

    async def _drain(self) -> None:
        while self._in_flight:
            await self._in_flight.popleft()

    async def finish(self) -> UploadResult:
        await self._flush()
        await self._drain()
        detected = formats.detect(self._head, self._tail)
        formats.check(self._disk_format, detected)
        loop = asyncio.get_running_loop()
        stored = await loop.run_in_executor(self._write_pool, self._writer.commit, self._offset)
        self._shutdown()
        return UploadResult(
            size=self._offset,
            checksum=self._md5.hexdigest() if self._md5 else None,
            os_hash_algo=self._hash_algo,
            os_hash_value=self._multihash.hexdigest(),
            detected=detected,
            stored=stored,
        )

    async def abort(self) -> None:
        """Stop and remove everything written. Never raises for the data already gone."""
        for fut in self._in_flight:
            fut.cancel()
        try:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        finally:
            self._in_flight.clear()
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._write_pool, self._writer.abort)
            self._shutdown()

    def _shutdown(self) -> None:
        if not self._closed:
            self._closed = True
            for pool in (*self._pools, self._write_pool):
                pool.shutdown(wait=False)
