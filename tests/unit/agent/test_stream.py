"""The stream against a real wsgidav server on loopback."""

import hashlib
import json
import threading

import pytest

from freezeframe.agent import stream

from .conftest import MiB, make_disk, pattern

CS = 1 * MiB


def params(dav, chunk_size=CS, password=None):
    return stream.StreamParams(dav.op_url, dav.user, password or dav.password, chunk_size)


def check_area(dav, disk_path, result, cs=CS):
    """Every data chunk is a .bin equal to the disk's bytes; zero chunks absent; manifest right."""
    with open(disk_path, "rb") as f:
        disk = f.read()
    op = dav.op_dir
    manifest = json.loads((op / "manifest.json").read_text())
    assert manifest["version"] == 1 and manifest["size"] == len(disk) and manifest["chunk_size"] == cs
    expected = []
    for i in range(0, (len(disk) + cs - 1) // cs):
        data = disk[i * cs:(i + 1) * cs]
        if data.count(0) != len(data):
            expected.append({"index": i, "offset": i * cs, "length": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    assert manifest["chunks"] == expected
    line = "".join(f"{c['offset']} {c['length']} {c['sha256']}\n" for c in expected)
    assert manifest["sha256"] == hashlib.sha256(line.encode()).hexdigest()
    files = sorted(p.name for p in op.iterdir())
    assert files == sorted([stream.chunk_name(c["index"]) for c in expected] + ["manifest.json"])
    for c in expected:
        assert (op / stream.chunk_name(c["index"])).read_bytes() == disk[c["offset"]:c["offset"] + c["length"]]
    assert result["chunks"] == expected and result["sha256"] == manifest["sha256"]
    return expected


def test_sparse_file_streamed(dav, tmp_path):
    size = 10 * MiB + 12345  # a partial last chunk
    disk = make_disk(
        tmp_path / "disk.img",
        size,
        {
            0: pattern(1, 4096),  # chunk 0: a little data
            3 * MiB + 100: pattern(2, MiB),  # spans chunks 3 and 4
            7 * MiB: bytes(MiB),  # chunk 7: written zeros (allocated, not a hole): not sent
            10 * MiB + 5: b"tail",  # the partial last chunk
        },
    )
    progress = stream.Progress("cmd-1")
    result = stream.stream_image(disk, params(dav), progress=progress, backoff=0.01)
    chunks = check_area(dav, disk, result)
    assert [c["index"] for c in chunks] == [0, 3, 4, 10]
    data = sum(c["length"] for c in chunks)
    assert result["sent_bytes"] == data == dav.tap.put_bytes - len((dav.op_dir / "manifest.json").read_bytes())
    assert result["resumed_from_chunk"] == 0 and result["device"] == disk
    snap = progress.snapshot()
    assert snap["percent"] == 100 and snap["chunks_total"] == 11 and snap["bytes_sent"] == data
    assert snap["bytes_skipped"] == size - data and snap["command_id"] == "cmd-1"


def test_all_zero_disk_sends_no_chunk(dav, tmp_path):
    disk = make_disk(tmp_path / "zero.img", 4 * MiB, {MiB: bytes(MiB)})
    result = stream.stream_image(disk, params(dav), backoff=0.01)
    assert result["chunks"] == [] and result["sent_bytes"] == 0
    assert sorted(p.name for p in dav.op_dir.iterdir()) == ["manifest.json"]


def test_broken_stream_resumes_resending_at_most_one_chunk(dav, tmp_path):
    size = 12 * MiB
    regions = {i * MiB: pattern(i, MiB) for i in range(size // MiB) if i % 3 != 1}  # 8 data chunks
    disk = make_disk(tmp_path / "disk.img", size, regions)
    data = sum(len(v) for v in regions.values())
    dav.tap.fail_from = 6  # chunk 6's PUT breaks half-way, every time
    with pytest.raises(stream.StreamError, match="chunk 6: failed after 3 tries"):
        stream.stream_image(disk, params(dav), tries=3, backoff=0.01)
    op = dav.op_dir
    assert sorted(p.name for p in op.iterdir()) == [stream.chunk_name(i) for i in (0, 2, 3, 5)]
    first_ok = 4 * MiB
    dav.tap.fail_from = None
    dav.tap.put_bytes = 0
    result = stream.stream_image(disk, params(dav), backoff=0.01)
    manifest_len = len((op / "manifest.json").read_bytes())
    resent = dav.tap.put_bytes - manifest_len
    assert result["resumed_from_chunk"] == 6
    assert resent == result["sent_bytes"] == data - first_ok  # nothing kept was sent again
    assert resent + first_ok <= data + CS  # the whole stream re-sent at most one chunk
    check_area(dav, disk, result)


def test_resume_rehashes_kept_chunks_and_replaces_bad_ones(dav, tmp_path):
    disk = make_disk(tmp_path / "disk.img", 4 * MiB, {i * MiB: pattern(i + 7, MiB) for i in range(4)})
    op = dav.op_dir
    with open(disk, "rb") as f:
        (op / "c-00000000.bin").write_bytes(f.read(MiB))  # a good kept chunk
    (op / "c-00000001.bin").write_bytes(b"short")  # wrong size: sent again
    (op / "c-00000002.part").write_bytes(b"partial")  # a broken PUT's leftover: overwritten
    result = stream.stream_image(disk, params(dav), backoff=0.01)
    assert result["resumed_from_chunk"] == 1
    assert result["sent_bytes"] == 3 * MiB
    check_area(dav, disk, result)


def test_bad_credentials_fail_at_once(dav, tmp_path):
    disk = make_disk(tmp_path / "disk.img", 2 * MiB, {0: pattern(3, MiB)})
    with pytest.raises(stream.StreamError, match="HTTP 401"):
        stream.stream_image(disk, params(dav, password="wrong"), backoff=5)  # no 9 x 5 s of retries
    assert dav.tap.put_bytes == 0


def test_stop_ends_the_stream_with_the_reason(dav, tmp_path):
    disk = make_disk(tmp_path / "disk.img", 8 * MiB, {i * MiB: pattern(i, MiB) for i in range(8)})
    stop = stream.StopFlag()
    dav.tap.fail_from = 2  # keeps failing (retried with a long backoff) until the stop
    timer = threading.Timer(0.3, stop.stop, args=("the agent was stopped (SIGTERM)",))
    timer.start()
    with pytest.raises(stream.Stopped, match=r"SIGTERM"):
        stream.stream_image(disk, params(dav), stop=stop, backoff=30)
    timer.join()


def test_collection_created_when_missing(dav, tmp_path):
    disk = make_disk(tmp_path / "disk.img", MiB, {0: b"x"})
    p = stream.StreamParams(dav.url("fresh/"), dav.user, dav.password, CS)
    stream.stream_image(disk, p, backoff=0.01)
    assert (dav.root / "fresh" / "c-00000000.bin").read_bytes()[:1] == b"x"


def test_memory_is_bounded_by_two_chunks(dav, tmp_path, monkeypatch):
    """However big the disk, at most two chunk buffers exist."""
    created = []
    real = stream._Reader.buffer

    def counting(size):
        created.append(size)
        return real(size)

    monkeypatch.setattr(stream._Reader, "buffer", staticmethod(counting))
    disk = make_disk(tmp_path / "disk.img", 64 * MiB, {i * MiB: pattern(i, 4096) for i in range(0, 64, 2)})
    result = stream.stream_image(disk, params(dav), backoff=0.01)
    assert len(result["chunks"]) == 32
    assert created == [CS, CS]


def test_the_disk_is_read_with_o_direct_where_it_takes_it(dav, tmp_path, monkeypatch):
    """A disk is read once: with O_DIRECT (no page cache to fill) where the filesystem takes it,
    the chunks the same as a buffered read's; a disk that refuses it is read buffered."""
    import os
    disk = make_disk(tmp_path / "disk.img", 8 * MiB + 512, {0: pattern(1, 4096), 3 * MiB + 100: pattern(2, 9000),
                                                            8 * MiB: pattern(3, 512)})
    probe = stream._open_direct(disk)
    if probe is None:
        pytest.skip("this filesystem takes no O_DIRECT (tmpfs?): nothing to compare")
    os.close(probe)
    direct_reads = []
    real_preadv = os.preadv

    def spy(fd, buffers, offset, *args):
        if fcntl_flags(fd) & os.O_DIRECT:
            direct_reads.append(offset)
        return real_preadv(fd, buffers, offset, *args)
    monkeypatch.setattr(os, "preadv", spy)
    direct = stream.stream_image(disk, params(dav), backoff=0.01)
    assert direct_reads, "nothing was read with O_DIRECT"
    monkeypatch.setattr(stream, "_open_direct", lambda path: None)
    chunks = {c["index"]: c["sha256"] for c in direct["chunks"]}
    buffered = stream.stream_image(disk, params(dav), backoff=0.01)
    assert {c["index"]: c["sha256"] for c in buffered["chunks"]} == chunks
    assert direct["sha256"] == buffered["sha256"]


def fcntl_flags(fd):
    import fcntl
    return fcntl.fcntl(fd, fcntl.F_GETFL)
