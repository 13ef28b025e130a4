"""The NBD client against a real ``qemu-nbd``: extents as QEMU reports them, exact reads, errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from freezeframe.blockdata.nbd import NbdClient, NbdError

MiB = 1 << 20

pytestmark = pytest.mark.skipif(not shutil.which("qemu-nbd"), reason="qemu-nbd is not installed (qemu-utils)")


@pytest.fixture
def served():
    """A qcow2 overlay (data in both layers, holes) served read-only by qemu-nbd."""
    work = Path(tempfile.mkdtemp(prefix="ffnbd-"))       # short: the socket path limit
    base, top = work / "base.raw", work / "top.qcow2"
    with open(base, "wb") as fh:
        fh.truncate(256 * MiB)
        fh.seek(MiB)
        fh.write(os.urandom(3 * MiB))
        fh.seek(200 * MiB + 4096)
        fh.write(os.urandom(8192))
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base), str(top)], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 100M 2M", str(top)], check=True, capture_output=True)
    sock, pid = work / "s", work / "pid"
    subprocess.run(["qemu-nbd", "-r", "-f", "qcow2", "-x", "vda", "-k", str(sock), "--persistent", "--shared=4",
                    "--fork", f"--pid-file={pid}", str(top)], check=True)
    raw = work / "flat.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(top), str(raw)], check=True)
    try:
        yield sock, top, raw
    finally:
        try:
            os.kill(int(pid.read_text()), signal.SIGTERM)
        except (OSError, ValueError):
            pass
        shutil.rmtree(work, ignore_errors=True)


def test_extents_and_reads_match_qemu(served):
    sock, top, raw = served
    with NbdClient(str(sock), "vda") as nbd:
        assert nbd.size == 256 * MiB
        extents = nbd.extents()
        assert extents[0].offset == 0 and sum(e.length for e in extents) == nbd.size
        assert all(a.offset + a.length == b.offset and a.zero != b.zero for a, b in zip(extents, extents[1:]))
        mapped = json.loads(subprocess.run(["qemu-img", "map", "--output=json", str(top)],
                                           capture_output=True, text=True, check=True).stdout)
        qemu_data = {(m["start"], m["start"] + m["length"]) for m in mapped if m["data"] and not m["zero"]}
        ours = [(e.offset, e.offset + e.length) for e in extents if not e.zero]
        for start, end in qemu_data:                                     # every data range covered
            assert any(a <= start and end <= b for a, b in ours), (start, end, ours)
        assert sum(b - a for a, b in ours) <= 8 * MiB                    # holes reported as holes

        ranges = [(0, 4 * MiB), (100 * MiB - 4096, 2 * MiB + 8192), (200 * MiB, 64 * 1024),
                  (255 * MiB, MiB), (50 * MiB, 1)]
        got = list(nbd.pread_many(ranges, depth=3))
        with open(raw, "rb") as fh:
            for (offset, length), data in zip(ranges, got, strict=True):
                assert bytes(data) == os.pread(fh.fileno(), length, offset), offset
        assert bytes(nbd.pread(MiB, 16)) == open(raw, "rb").read()[MiB:MiB + 16]


def test_errors_are_clear(served, tmp_path):
    sock, _top, _raw = served
    with pytest.raises(NbdError, match="cannot connect"):
        NbdClient(str(tmp_path / "nothing"), "vda")
    with pytest.raises(NbdError, match="refused"):
        NbdClient(str(sock), "no-such-export")
    with NbdClient(str(sock), "vda") as nbd:
        with pytest.raises(NbdError, match="outside the export"):
            list(nbd.pread_many([(nbd.size - 10, 20)]))
        with pytest.raises(NbdError, match="too long"):
            nbd.pread(0, 64 * MiB)
        # a read abandoned part-way leaves replies in the socket: the connection says so
        blocks = nbd.pread_many([(0, MiB)] * 8)
        next(blocks)
        blocks.close()
        with pytest.raises(NbdError, match="cannot be used any more"):
            nbd.pread(0, 512)
    # a fresh connection still works (the server is --persistent)
    with NbdClient(str(sock), "vda") as nbd:
        assert len(nbd.pread(0, 512)) == 512
