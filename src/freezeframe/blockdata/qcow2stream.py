"""A qcow2 image written as one forward-only stream, from a disk's data ranges.

``qemu-img convert`` needs a seekable target, so a snapshot would first be written to local
disk and then uploaded (Nova bug 1262914). Knowing which clusters hold data before the first
byte is sent (block status of the point-in-time export), the whole qcow2 layout is fixed up
front — header, refcount table and blocks, L1, the L2 tables that have data, then the data
clusters in guest order — so it is produced front to back and streamed into the upload:
nothing written locally, holes neither read nor sent.

The layout is a pure function of ``(virtual_size, runs)``, so after a crash the same bytes are
produced again from any offset: a resumed upload continues exactly where the image service
stopped keeping bytes. Every cluster is referenced once (refcount 1, "copied" flags set),
version 3, 64 KiB clusters, 16-bit refcounts, no backing file: ``qemu-img check`` finds it clean.
"""

from __future__ import annotations

import bisect
import struct
from typing import Iterable, Iterator, Protocol

CLUSTER_BITS = 16
CLUSTER = 1 << CLUSTER_BITS
L2_ENTRIES = CLUSTER // 8
REFCOUNT_ORDER = 4                                   # 16-bit refcounts
REFCOUNTS_PER_BLOCK = CLUSTER * 8 >> REFCOUNT_ORDER  # 32768
COPIED = 1 << 63
HEADER_LENGTH = 104
READ_CLUSTERS = 64                                   # data read and sent 4 MiB at a time


class RangeReader(Protocol):
    size: int

    def pread_many(self, ranges: Iterable[tuple[int, int]], depth: int = 4) -> Iterator[bytes | bytearray]: ...


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def cluster_runs(extents: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, merged ``(first cluster, count)`` runs covering the given data ``(offset, length)``
    ranges (a range that starts or ends inside a cluster takes the whole cluster)."""
    runs: list[tuple[int, int]] = []
    for offset, length in sorted(extents):
        if length <= 0:
            continue
        first, end = offset // CLUSTER, _ceil(offset + length, CLUSTER)
        if runs and first <= runs[-1][0] + runs[-1][1]:
            start, count = runs[-1]
            runs[-1] = (start, max(count, end - start))
        else:
            runs.append((first, end - first))
    return runs


class Layout:
    """Where every cluster of the streamed qcow2 goes (offsets in clusters). Immutable."""

    def __init__(self, virtual_size: int, runs: Iterable[tuple[int, int]]) -> None:
        self.virtual_size = int(virtual_size)
        self.runs: tuple[tuple[int, int], ...] = tuple((int(s), int(c)) for s, c in runs)
        guest_clusters = _ceil(self.virtual_size, CLUSTER)
        end = -1
        self._run_hosts: list[int] = []     # host data-cluster index of each run's first cluster
        host = 0
        for start, count in self.runs:
            if count <= 0 or start <= end or start + count > guest_clusters:
                raise ValueError(f"bad data run ({start}, {count}) for a {self.virtual_size}-byte disk")
            end = start + count - 1
            self._run_hosts.append(host)
            host += count
        self._run_starts = [s for s, _c in self.runs]
        self.data_clusters = host
        self.l2_tables = sorted({c // L2_ENTRIES for start, count in self.runs
                                 for c in range(start - start % L2_ENTRIES, start + count, L2_ENTRIES)})
        self.l1_entries = max(1, _ceil(self.virtual_size, CLUSTER * L2_ENTRIES))
        l1_clusters = _ceil(self.l1_entries * 8, CLUSTER)
        fixed = 1 + l1_clusters + len(self.l2_tables) + host
        refblocks = table_clusters = 0
        while True:           # the refcount structures count themselves too
            total = fixed + table_clusters + refblocks
            need_blocks = _ceil(total, REFCOUNTS_PER_BLOCK)
            need_table = _ceil(need_blocks * 8, CLUSTER)
            if (need_blocks, need_table) == (refblocks, table_clusters):
                break
            refblocks, table_clusters = need_blocks, need_table
        self.refcount_table_at = 1
        self.refcount_table_clusters = table_clusters
        self.refblocks_at = 1 + table_clusters
        self.refblocks = refblocks
        self.l1_at = self.refblocks_at + refblocks
        self.l2_at = self.l1_at + l1_clusters
        self.data_at = self.l2_at + len(self.l2_tables)
        self.clusters = self.data_at + host

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layout) and (self.virtual_size, self.runs) == (other.virtual_size, other.runs)

    @classmethod
    def from_extents(cls, virtual_size: int, data: Iterable[tuple[int, int]]) -> Layout:
        return cls(virtual_size, tuple(cluster_runs(data)))

    def to_json(self) -> dict:
        return {"virtual_size": self.virtual_size, "runs": [list(r) for r in self.runs]}

    @classmethod
    def from_json(cls, doc: dict) -> Layout:
        return cls(int(doc["virtual_size"]), tuple((int(s), int(c)) for s, c in doc["runs"]))

    @property
    def size(self) -> int:
        """Bytes of the whole qcow2 file."""
        return self.clusters * CLUSTER

    @property
    def data_bytes(self) -> int:
        return self.data_clusters * CLUSTER

    # -- metadata clusters ---------------------------------------------------------------------
    def metadata_cluster(self, index: int) -> bytes:
        """The bytes of host cluster ``index`` (< data_at)."""
        if index == 0:
            return self._header()
        if index < self.refblocks_at:
            first = (index - self.refcount_table_at) * (CLUSTER // 8)
            entries = range(first, min(first + CLUSTER // 8, self.refblocks))
            return _pad(b"".join(struct.pack(">Q", (self.refblocks_at + i) * CLUSTER) for i in entries))
        if index < self.l1_at:
            first = (index - self.refblocks_at) * REFCOUNTS_PER_BLOCK
            count = max(0, min(REFCOUNTS_PER_BLOCK, self.clusters - first))
            return _pad(b"\x00\x01" * count)
        if index < self.l2_at:
            first = (index - self.l1_at) * (CLUSTER // 8)
            table_at = {t: self.l2_at + i for i, t in enumerate(self.l2_tables)}
            entries = range(first, min(first + CLUSTER // 8, self.l1_entries))
            return _pad(b"".join(struct.pack(">Q", (table_at[e] * CLUSTER) | COPIED if e in table_at else 0)
                                 for e in entries))
        return self._l2_table(self.l2_tables[index - self.l2_at])

    def _header(self) -> bytes:
        head = struct.pack(
            ">4sIQIIQIIQQIIQQQQII", b"QFI\xfb", 3, 0, 0, CLUSTER_BITS, self.virtual_size, 0,
            self.l1_entries, self.l1_at * CLUSTER, self.refcount_table_at * CLUSTER,
            self.refcount_table_clusters, 0, 0, 0, 0, 0, REFCOUNT_ORDER, HEADER_LENGTH)
        assert len(head) == HEADER_LENGTH
        return _pad(head + struct.pack(">II", 0, 0))     # end of the header extensions

    def _l2_table(self, table: int) -> bytes:
        lo, hi = table * L2_ENTRIES, (table + 1) * L2_ENTRIES
        entries = bytearray(CLUSTER)
        i = max(0, bisect.bisect_right(self._run_starts, lo) - 1)
        while i < len(self.runs) and self.runs[i][0] < hi:
            start, count = self.runs[i]
            host = self.data_at + self._run_hosts[i]
            for guest in range(max(start, lo), min(start + count, hi)):
                struct.pack_into(">Q", entries, (guest - lo) * 8, ((host + guest - start) * CLUSTER) | COPIED)
            i += 1
        return bytes(entries)

    # -- data --------------------------------------------------------------------------------------
    def data_ranges(self, first_data_cluster: int = 0) -> Iterator[tuple[int, int]]:
        """Guest ``(offset, length)`` reads, at most 4 MiB each and never past the disk's end,
        for the data clusters from ``first_data_cluster`` (in host order) on."""
        i = max(0, bisect.bisect_right(self._run_hosts, first_data_cluster) - 1)
        for start, count in self.runs[i:]:
            host_first = self._run_hosts[i]
            skip = max(0, first_data_cluster - host_first)
            for c in range(start + skip, start + count, READ_CLUSTERS):
                n = min(READ_CLUSTERS, start + count - c)
                offset = c * CLUSTER
                yield offset, min(n * CLUSTER, self.virtual_size - offset)
            i += 1


def _pad(data: bytes) -> bytes:
    return data + bytes(CLUSTER - len(data))


def stream(layout: Layout, reader: RangeReader, offset: int = 0, depth: int = 4) -> Iterator[bytes | memoryview]:
    """The qcow2 file's bytes from ``offset`` to its end, read from ``reader`` as they go."""
    if not 0 <= offset <= layout.size:
        raise ValueError(f"offset {offset} is outside the {layout.size}-byte image")
    cluster, skip = divmod(offset, CLUSTER)
    meta_end = layout.data_at
    if cluster < meta_end:
        pending = bytearray()
        for index in range(cluster, meta_end):
            pending += layout.metadata_cluster(index)
            if len(pending) >= READ_CLUSTERS * CLUSTER:
                yield memoryview(pending)[skip:]
                pending, skip = bytearray(), 0
        if pending:
            yield memoryview(pending)[skip:]
        cluster, skip = meta_end, 0
    for buf in reader.pread_many(layout.data_ranges(cluster - meta_end), depth=depth):
        short = (-len(buf)) % CLUSTER          # the disk's last cluster may be partial: pad it
        view = memoryview(bytes(buf) + bytes(short) if short else buf)[skip:]
        skip = 0
        yield view
