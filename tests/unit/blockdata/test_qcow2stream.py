"""The streamed qcow2: checked by the real qemu-img (check, compare, map), from any offset."""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest

from freezeframe.blockdata.qcow2stream import CLUSTER, Layout, cluster_runs, stream

MiB = 1 << 20
TiB = 1 << 40


class FileRanges:
    """A RangeReader over a raw file, counting what it was asked to read."""

    def __init__(self, path: Path) -> None:
        self.path, self.size = path, path.stat().st_size
        self.asked: list[tuple[int, int]] = []

    def pread_many(self, ranges, depth=4):
        with open(self.path, "rb") as fh:
            for offset, length in ranges:
                self.asked.append((offset, length))
                yield os.pread(fh.fileno(), length, offset)


def raw_disk(path: Path, size: int, writes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    with open(path, "wb") as fh:
        fh.truncate(size)
        for offset, length in writes:
            fh.seek(offset)
            fh.write(os.urandom(length))
    return writes


def qemu_img(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True)


def write_stream(layout: Layout, reader, out: Path, offset: int = 0) -> Path:
    with open(out, "wb") as fh:
        for block in stream(layout, reader, offset):
            fh.write(block)
    return out


def test_cluster_runs_merge_and_round_out():
    assert cluster_runs([]) == []
    assert cluster_runs([(0, 1)]) == [(0, 1)]
    assert cluster_runs([(CLUSTER - 1, 2)]) == [(0, 2)]                  # straddles two clusters
    assert cluster_runs([(3 * CLUSTER, CLUSTER), (0, 10), (CLUSTER, CLUSTER)]) == [(0, 2), (3, 1)]
    assert cluster_runs([(0, 5 * CLUSTER), (CLUSTER, CLUSTER)]) == [(0, 5)]  # inside another
    assert cluster_runs([(10, 0)]) == []


@pytest.mark.parametrize("size,writes", [
    (8 * MiB, [(0, 4096), (3 * MiB + 100, 70000), (8 * MiB - 1, 1)]),
    (8 * MiB + 12800, [(8 * MiB, 12800)]),                 # a partial last cluster (512-byte sectors)
    (64 * MiB, []),                                        # no data at all
    (1200 * MiB, [(5, 10), (600 * MiB, MiB), (1199 * MiB, MiB)]),  # three L2 tables
])
def test_stream_is_a_clean_qcow2_of_the_disk(tmp_path, size, writes):
    disk = tmp_path / "disk.raw"
    raw_disk(disk, size, writes)
    layout = Layout.from_extents(size, writes)
    reader = FileRanges(disk)
    out = write_stream(layout, reader, tmp_path / "out.qcow2")
    assert out.stat().st_size == layout.size
    check = qemu_img("check", "--output=json", str(out))
    assert check.returncode == 0, check.stdout + check.stderr
    report = json.loads(check.stdout)
    assert report.get("allocated-clusters", 0) == layout.data_clusters
    info = json.loads(qemu_img("info", "--output=json", str(out)).stdout)
    assert info["virtual-size"] == size and info["format"] == "qcow2"
    same = qemu_img("compare", "-f", "qcow2", "-F", "raw", str(out), str(disk))
    assert same.returncode == 0, same.stdout + same.stderr
    # Only the data clusters were read, never past the disk's end, 4 MiB at most at a time.
    assert sum(n for _o, n in reader.asked) <= layout.data_bytes
    assert all(o + n <= size and n <= 4 * MiB for o, n in reader.asked)
    mapped = json.loads(qemu_img("map", "--output=json", str(out)).stdout)
    assert sum(m["length"] for m in mapped if m["data"]) == sum(
        min((start + count) * CLUSTER, size) - start * CLUSTER for start, count in layout.runs)


def test_resume_from_any_offset_gives_the_same_bytes(tmp_path):
    size = 300 * MiB
    writes = raw_disk(tmp_path / "d.raw", size, [(MiB, 9 * MiB), (100 * MiB + 7, 3000), (299 * MiB, MiB)])
    layout = Layout.from_extents(size, writes)
    whole = write_stream(layout, FileRanges(tmp_path / "d.raw"), tmp_path / "whole.qcow2").read_bytes()
    rng = random.Random(7)
    offsets = {0, 1, CLUSTER, layout.data_at * CLUSTER, layout.data_at * CLUSTER + 1,
               layout.size - 1, layout.size} | {rng.randrange(layout.size) for _ in range(12)}
    for offset in sorted(offsets):
        reader = FileRanges(tmp_path / "d.raw")
        part = b"".join(bytes(b) for b in stream(layout, reader, offset))
        assert part == whole[offset:], offset
        data_done = max(0, offset // CLUSTER - layout.data_at)
        assert sum(n for _o, n in reader.asked) <= (layout.data_clusters - data_done) * CLUSTER  # nothing re-read
    with pytest.raises(ValueError):
        next(stream(layout, FileRanges(tmp_path / "d.raw"), layout.size + 1))


def test_layout_round_trips_and_is_deterministic():
    layout = Layout.from_extents(10 * MiB, [(0, 1), (5 * MiB, MiB)])
    again = Layout.from_json(json.loads(json.dumps(layout.to_json())))
    assert again == layout and again.size == layout.size
    assert [again.metadata_cluster(i) for i in range(again.data_at)] == \
           [layout.metadata_cluster(i) for i in range(layout.data_at)]


@pytest.mark.parametrize("runs", [((0, 0),), ((5, 2), (6, 1)), ((0, 200),)])
def test_bad_runs_are_refused(runs):
    with pytest.raises(ValueError):
        Layout(10 * MiB, runs)


def test_huge_sparse_disk_metadata(tmp_path):
    """5 TiB: the L1 table spans two clusters; 40000 data clusters need two refcount blocks.
    The data region is left sparse (reads as zeros): qemu-img still checks every table."""
    size = 5 * TiB
    layout = Layout(size, ((0, 20000), (size // CLUSTER - 20000, 20000)))
    assert layout.l1_at + 2 == layout.l2_at and layout.refblocks == 2
    out = tmp_path / "huge.qcow2"
    with open(out, "wb") as fh:
        for i in range(layout.data_at):
            fh.write(layout.metadata_cluster(i))
        fh.truncate(layout.size)
    check = qemu_img("check", "--output=json", str(out))
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(check.stdout)["allocated-clusters"] == 40000
    assert json.loads(qemu_img("info", "--output=json", str(out)).stdout)["virtual-size"] == size


def test_resume_inside_the_padding_of_a_partial_last_cluster(tmp_path):
    size = 4 * MiB + 512                          # the last cluster holds 512 bytes of disk
    writes = raw_disk(tmp_path / "p.raw", size, [(4 * MiB, 512)])
    layout = Layout.from_extents(size, writes)
    whole = write_stream(layout, FileRanges(tmp_path / "p.raw"), tmp_path / "p.qcow2").read_bytes()
    assert len(whole) == layout.size
    for offset in (layout.size - CLUSTER + 100, layout.size - CLUSTER + 600, layout.size - 1):
        part = b"".join(bytes(b) for b in stream(layout, FileRanges(tmp_path / "p.raw"), offset))
        assert part == whole[offset:], offset
