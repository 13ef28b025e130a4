"""The conformance suite every image store passes (only the file store exists so far)."""

import os

import pytest

from freezeframe.common import errors
from freezeframe.images.drivers.file import HOLE_BLOCK, FileStore


@pytest.fixture(params=["file", "file-buffered"])
def any_store(request, tmp_path):
    return FileStore(tmp_path / "store", fsync=True, direct_io=request.param == "file")


def test_nothing_visible_before_commit(any_store):
    writer = any_store.writer("img", "u1")
    writer.write(b"abc", 0)
    assert any_store.stat("img") is None
    obj = writer.commit(3)
    assert obj.size == 3
    reader = any_store.reader("img")
    assert reader.read(0, 10) == b"abc"
    reader.close()


def test_abort_leaves_nothing(any_store):
    writer = any_store.writer("img", "u1")
    writer.write(b"x" * 1000, 0)
    writer.abort()
    writer.abort()
    assert any_store.stat("img") is None
    assert any_store.cleanup_partials(0, set()) == 0


def test_zero_runs_become_holes(any_store):
    writer = any_store.writer("sparse", "u1")
    data = os.urandom(HOLE_BLOCK)
    writer.write(data + bytes(16 * HOLE_BLOCK) + data, 0)
    writer.write(bytes(4 << 20), 18 * HOLE_BLOCK)
    obj = writer.commit(18 * HOLE_BLOCK + (4 << 20))
    assert obj.allocated <= 4 * HOLE_BLOCK
    reader = any_store.reader("sparse")
    assert reader.read(0, HOLE_BLOCK) == data
    assert reader.read(HOLE_BLOCK, 16 * HOLE_BLOCK) == bytes(16 * HOLE_BLOCK)
    assert reader.read(17 * HOLE_BLOCK, HOLE_BLOCK) == data
    assert reader.size == 18 * HOLE_BLOCK + (4 << 20)
    reader.close()


def test_delete_rename_and_missing(any_store):
    w = any_store.writer("staging/a", "u1")
    w.write(b"1", 0)
    w.commit(1)
    any_store.rename("staging/a", "b")
    assert any_store.stat("staging/a") is None and any_store.stat("b").size == 1
    assert any_store.delete("b") is True and any_store.delete("b") is False
    with pytest.raises(KeyError):
        any_store.reader("b")


@pytest.mark.parametrize("key", ["../etc/passwd", "a/../../b", "/abs", "", "a b", "a/b/c"])
def test_keys_cannot_escape(any_store, key):
    with pytest.raises(ValueError):
        any_store.writer(key, "u1")


def test_full_disk_is_storage_full(tmp_path):
    import resource
    store = FileStore(tmp_path / "s", fsync=False)
    writer = store.writer("big", "u1")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    import signal
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        with pytest.raises(errors.StorageFull):
            writer.write(os.urandom(2 << 20), 0)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
        writer.abort()


def test_data_is_flushed_behind_the_writer(tmp_path, monkeypatch):
    from freezeframe.images.drivers import file as file_store
    calls = []
    real = os.fdatasync
    monkeypatch.setattr(file_store, "SYNC_EVERY", 1 << 20)
    monkeypatch.setattr(file_store.os, "fdatasync", lambda fd: (calls.append(fd), real(fd)))
    store = FileStore(tmp_path / "s", fsync=True)
    writer = store.writer("img", "u1")
    block = os.urandom(1 << 20)
    for i in range(8):
        writer.write(block, i << 20)
    writer.commit(8 << 20)
    assert calls, "no background flush happened"
    reader = store.reader("img")
    assert reader.read(7 << 20, 1 << 20) == block
    reader.close()


def test_sparse_sink_leaves_holes(tmp_path):
    from freezeframe.compute.hostside import SparseSink
    data = os.urandom(1 << 16) + bytes(4 << 20) + os.urandom(100)
    path = tmp_path / "base"
    with open(path, "wb") as fh:
        sink = SparseSink(fh)
        for pos in range(0, len(data), 1 << 20):
            sink.write(data[pos:pos + (1 << 20)])
        sink.close()
    assert path.read_bytes() == data
    assert os.stat(path).st_blocks * 512 < 1 << 20   # the 4 MiB of zeros are a hole


def test_direct_writes_keep_every_byte_at_any_offset(any_store, tmp_path):
    """Runs that start and end off the 4 KiB grid, pieces larger than the direct buffer, a
    resumed writer, holes: the file holds exactly what was written (the aligned middle went
    with O_DIRECT where the filesystem takes it, the rest through the page cache)."""
    from freezeframe.common.directio import ALIGN as DIRECT_ALIGN, BUFFER as DIRECT_BUFFER, open_direct
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    fd = open_direct(probe, os.O_WRONLY)
    direct_here = fd is not None
    if fd is not None:
        os.close(fd)
    expected = bytearray()
    writer = any_store.writer("odd", "u1")
    assert (writer._direct is not None) == (any_store.direct_io and direct_here)
    pieces = [os.urandom(100), os.urandom(DIRECT_ALIGN * 3 + 17), bytes(2 * HOLE_BLOCK),
              os.urandom(DIRECT_BUFFER + 3 * DIRECT_ALIGN + 5), os.urandom(DIRECT_ALIGN - 1), os.urandom(9)]
    for piece in pieces:
        writer.write(piece, len(expected))
        expected += piece
    kept = len(expected)
    writer.keep(kept)
    assert writer.suspend() == kept
    writer = any_store.writer("odd", "u1", resume_at=kept)
    tail = os.urandom(3 * DIRECT_BUFFER // 2 + 123)
    writer.write(tail, kept)
    expected += tail
    writer.commit(len(expected))
    reader = any_store.reader("odd")
    assert reader.read(0, len(expected) + 10) == bytes(expected)
    reader.close()
