"""The WebDAV area read back: a stream of chunks (as the agent leaves it) verified and turned
into a qcow2 (``blockdata.qcow2stream``) or a raw image without assembling anything on disk —
the qcow2 holds exactly the disk's data (``qemu-img compare`` against the disk itself and
against ``qemu-img convert`` of it), holes neither read nor sent; a tampered stream is refused."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid

import pytest

from freezeframe.baremetal.transfer import (BadStream, Chunk, ChunkReader, Manifest, TransferArea, hash_password,
                                            new_credential, write_stream)
from freezeframe.blockdata.qcow2stream import Layout, stream

MiB = 1 << 20
CHUNK = 1 * MiB


def make_disk(path, size=9 * MiB + 24 * 512):
    """A sparse disk: data in chunk 0 (partly), chunk 3 (straddling into 4), and the tail."""
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(100)
        f.write(b"boot sector" * 1000)
        f.seek(4 * MiB - 5000)
        f.write(os.urandom(9000))
        f.seek(size - 777)
        f.write(b"T" * 777)
    return size


def read_file(path):
    def read(offset, length):
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)
    return read


@pytest.fixture
def area(tmp_path):
    return TransferArea(tmp_path / "area")


def streamed(area, disk, chunk=CHUNK):
    path = str(uuid.uuid4())
    where = area.create(path)
    size = os.path.getsize(disk)
    write_stream(where, read_file(disk), size, chunk)
    return path


def test_verify_finds_the_data_clusters_so_zeros_inside_a_sent_chunk_are_holes_of_the_image(area, tmp_path):
    """A chunk is sent whole when any of it holds data; verify finds which 64 KiB clusters do,
    and the qcow2 laid out from them holds only those: the same disk, allocated as qemu-img
    convert allocates it (never more), each data cluster read once."""
    disk = tmp_path / "disk.raw"
    make_disk(disk)
    path = streamed(area, disk)
    manifest = area.manifest(path)
    extents = area.verify(path, manifest)
    # the boot sector (cluster 0), 9000 bytes straddling 4 MiB (clusters 63 and 64), the tail's
    # last (partial) cluster
    tail_start = (manifest.size - 777) // (64 << 10) * (64 << 10)
    assert extents == [(0, 64 << 10), (4 * MiB - (64 << 10), 128 << 10), (tail_start, manifest.size - tail_start)]
    assert sum(n for _, n in extents) < manifest.data_bytes / 5
    area.save_extents(path, manifest, extents)
    assert area.data_extents(path, manifest) == extents
    layout = Layout.from_extents(manifest.size, area.data_extents(path, manifest))
    out = tmp_path / "streamed.qcow2"
    with area.reader(path, manifest) as reader, open(out, "wb") as f:
        for block in stream(layout, reader):
            f.write(block)
        assert reader.bytes_read == sum(n for _, n in extents)     # only the data clusters read
    done = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(out), str(disk)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    converted = tmp_path / "converted.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(disk), str(converted)], check=True)
    assert out.stat().st_size <= converted.stat().st_size
    # extents kept for another manifest are not used: the chunks themselves are
    other = Manifest(manifest.size, manifest.chunk_size, manifest.chunks, "0" * 64)
    assert area.data_extents(path, other) == manifest.extents()


def test_chunks_to_qcow2_is_the_disk_and_holes_are_neither_read_nor_sent(area, tmp_path):
    disk = tmp_path / "disk.raw"
    make_disk(disk)
    path = streamed(area, disk)
    on_disk = area.chunk_files(path)
    assert sorted(on_disk) == [0, 3, 4, 9]                 # the all-zero chunks were not sent
    manifest = area.manifest(path)
    area.verify(path, manifest)
    layout = Layout.from_extents(manifest.size, manifest.extents())
    out = tmp_path / "streamed.qcow2"
    with area.reader(path, manifest) as reader, open(out, "wb") as f:
        for block in stream(layout, reader):
            f.write(block)
        assert reader.bytes_read == manifest.data_bytes      # each data byte read once, holes never
    assert out.stat().st_size == layout.size
    converted = tmp_path / "converted.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(disk), str(converted)], check=True)
    for other, fmt in ((disk, "raw"), (converted, "qcow2")):
        done = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", fmt, str(out), str(other)],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    check = subprocess.run(["qemu-img", "check", "-f", "qcow2", str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def test_a_resumed_qcow2_stream_gives_the_same_bytes(area, tmp_path):
    disk = tmp_path / "disk.raw"
    make_disk(disk)
    path = streamed(area, disk)
    manifest = area.manifest(path)
    layout = Layout.from_extents(manifest.size, manifest.extents())
    with area.reader(path, manifest) as reader:
        whole = b"".join(bytes(b) for b in stream(layout, reader))
        at = layout.size - 70000
        assert b"".join(bytes(b) for b in stream(layout, reader, at)) == whole[at:]


def test_raw_stream_is_the_whole_disk_from_any_offset(area, tmp_path):
    disk = tmp_path / "disk.raw"
    size = make_disk(disk)
    path = streamed(area, disk)
    manifest = area.manifest(path)
    expected = disk.read_bytes()
    with area.reader(path, manifest) as reader:
        assert b"".join(bytes(b) for b in reader.raw_stream()) == expected
        assert b"".join(bytes(b) for b in reader.raw_stream(3 * MiB + 1)) == expected[3 * MiB + 1:]
        assert reader.bytes_read <= manifest.data_bytes * 2
    assert size == len(expected)


def test_a_chunk_size_that_is_not_a_multiple_of_reads(area, tmp_path):
    disk = tmp_path / "disk.raw"
    make_disk(disk)
    path = streamed(area, disk, chunk=3 * MiB + 4097)
    manifest = area.manifest(path)
    area.verify(path, manifest)
    with area.reader(path, manifest) as reader:
        assert b"".join(bytes(b) for b in reader.raw_stream()) == disk.read_bytes()


@pytest.mark.parametrize("tamper", ["chunk-bytes", "chunk-missing", "chunk-short", "manifest-hash",
                                    "manifest-entry", "no-manifest", "not-json", "symlink"])
def test_a_tampered_or_unfinished_stream_is_refused(area, tmp_path, tamper):
    disk = tmp_path / "disk.raw"
    make_disk(disk)
    path = streamed(area, disk)
    where = area.directory(path)
    doc = json.loads((where / "manifest.json").read_text())
    if tamper == "chunk-bytes":
        with open(where / "c-00000003.bin", "r+b") as f:
            f.seek(10)
            f.write(b"X")
    elif tamper == "chunk-missing":
        (where / "c-00000009.bin").unlink()
    elif tamper == "chunk-short":
        os.truncate(where / "c-00000000.bin", 10)
    elif tamper == "manifest-hash":
        doc["sha256"] = "0" * 64
        (where / "manifest.json").write_text(json.dumps(doc))
    elif tamper == "manifest-entry":
        doc["chunks"][1]["offset"] += 1
        (where / "manifest.json").write_text(json.dumps(doc))
    elif tamper == "no-manifest":
        (where / "manifest.json").unlink()
    elif tamper == "not-json":
        (where / "manifest.json").write_text("{")
    elif tamper == "symlink":
        (where / "c-00000000.bin").unlink()
        os.symlink("/etc/hostname", where / "c-00000000.bin")
    with pytest.raises(BadStream):
        area.verify(path, area.manifest(path))


def test_a_forged_manifest_with_a_matching_hash_still_needs_matching_chunks(area, tmp_path):
    disk = tmp_path / "disk.raw"
    make_disk(disk)
    path = streamed(area, disk)
    where = area.directory(path)
    doc = json.loads((where / "manifest.json").read_text())
    doc["chunks"][0]["sha256"] = hashlib.sha256(b"other").hexdigest()
    doc["sha256"] = Manifest.digest([Chunk(c["index"], c["offset"], c["length"], c["sha256"]) for c in doc["chunks"]])
    (where / "manifest.json").write_text(json.dumps(doc))
    manifest = area.manifest(path)          # consistent in itself ...
    with pytest.raises(BadStream, match="chunk 0 does not match"):
        area.verify(path, manifest)          # ... not with the data


def test_paths_are_ours_only_and_credentials_random(area):
    with pytest.raises(ValueError):
        area.directory("../etc")
    with pytest.raises(ValueError):
        area.directory("a/b")
    (u1, p1), (u2, p2) = new_credential(), new_credential()
    assert u1 != u2 and p1 != p2 and len(p1) >= 24
    assert hash_password(p1) == hashlib.sha256(p1.encode()).hexdigest()
    path = str(uuid.uuid4())
    area.create(path)
    assert area.collections() == [path] and area.exists(path)
    area.remove(path)
    assert not area.exists(path) and area.collections() == []


def test_chunk_reader_refuses_ranges_outside_the_disk(area, tmp_path):
    disk = tmp_path / "disk.raw"
    make_disk(disk)
    path = streamed(area, disk)
    reader = ChunkReader(area.directory(path), area.manifest(path))
    with pytest.raises(ValueError):
        reader.pread(reader.size - 1, 2)
    reader.close()


def _through_webdav(area, disk, chunk=CHUNK):
    """The disk streamed as the agent does it, through the real WebDAV server: every chunk PUT
    as .part and MOVEd to .bin, the manifest last."""
    import httpx

    from freezeframe.baremetal.webdav import WebDavServer
    path = str(uuid.uuid4())
    area.create(path)
    local = area.directory(path) / "local"
    local.mkdir()
    manifest = write_stream(local, read_file(disk), os.path.getsize(disk), chunk)
    server = WebDavServer(area.root, "127.0.0.1:0", lambda user: (hash_password("pw"), path))
    server.start()
    try:
        with httpx.Client(base_url=server.url, auth=("agent", "pw"), timeout=10) as c:
            for ch in manifest.chunks:
                name = f"c-{ch.index:08d}"
                assert c.put(f"/{path}/{name}.part", content=(local / f"{name}.bin").read_bytes()).status_code in (201, 204)
                moved = c.request("MOVE", f"/{path}/{name}.part",
                                  headers={"Destination": f"{server.url}/{path}/{name}.bin", "Overwrite": "T"})
                assert moved.status_code in (201, 204)
            assert c.put(f"/{path}/manifest.json", content=(local / "manifest.json").read_bytes()).status_code \
                in (201, 204)
    finally:
        server.stop()
    for f in local.iterdir():
        f.unlink()
    local.rmdir()
    return path


def test_chunks_summed_as_they_were_received_are_verified_without_reading_them_again(area, tmp_path, monkeypatch):
    disk = tmp_path / "disk.raw"
    make_disk(disk)
    path = _through_webdav(area, disk)
    manifest = area.manifest(path)
    assert area.sums_directory(path).is_dir()
    real_pread = os.pread
    reads: list[int] = []

    def counting(fd, n, offset):
        reads.append(n)
        return real_pread(fd, n, offset)
    monkeypatch.setattr(os, "pread", counting)
    summed = area.verify(path, manifest)
    assert reads == []                          # nothing read back: the sums were kept on receipt
    monkeypatch.setattr(os, "pread", real_pread)
    import shutil
    shutil.rmtree(area.sums_directory(path))    # no sums: read and hashed, the same result
    assert summed and area.verify(path, manifest) == summed
    area.remove(path)
    assert not area.sums_directory(path).exists() and not area.exists(path)
    assert list(area.root.iterdir()) == []      # nothing left of the sums either


def test_a_chunk_changed_after_it_was_received_is_read_again_and_refused(area, tmp_path):
    disk = tmp_path / "disk.raw"
    make_disk(disk)
    path = _through_webdav(area, disk)
    manifest = area.manifest(path)
    victim = area.directory(path) / f"c-{manifest.chunks[0].index:08d}.bin"
    before = os.stat(victim)
    with open(victim, "r+b") as f:             # same size, other bytes, a later mtime
        f.seek(200)
        f.write(b"corrupted")
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    with pytest.raises(BadStream, match="does not match its sha256"):
        area.verify(path, manifest)
    forged = area.sums_directory(path) / "x"    # sums under another name count for nothing
    forged.write_text("{}")
    with pytest.raises(BadStream):
        area.verify(path, manifest)


def test_sums_left_without_their_collection_are_found_for_the_reaper(area, tmp_path):
    """A PUT finishing after its transfer was removed leaves sums without a collection: the
    reaper's list has that path, with the time it last changed, and removing it leaves nothing."""
    disk = tmp_path / "disk.raw"
    make_disk(disk)
    path = _through_webdav(area, disk)
    import shutil
    shutil.rmtree(area.directory(path))         # the collection gone, its sums left
    assert area.collections() == [path]
    assert area.last_change(path) is not None
    area.remove(path)
    assert area.collections() == [] and area.last_change(path) is None
    assert list(area.root.iterdir()) == []
