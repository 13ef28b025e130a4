"""Image data in and out of volumes, on real files with real qemu-img and qemu-nbd: a download
laid down sparse (zeros never written), an image refused when it names another file or does
not fit, a volume's chain read over NBD (raw: holes as zeros without a read; qcow2: only the
data) — and the sweep that deletes the snapshots of an image that is gone, a few per scan."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from freezeframe.common import errors
from freezeframe.common.context import Actor
from freezeframe.blockdata.qcow2stream import Layout, stream
from freezeframe.conductor import runtime
from freezeframe.conductor.model import Workflow
from freezeframe.conductor.registry import Registry, Scan
from freezeframe.conductor.runtime import Runtime
from freezeframe.conductor.service import Workflows
from freezeframe.images.client import GlanceError
from freezeframe.volumes import conductor_hooks, imagedata
from freezeframe.volumes.drivers.base import DataSource
from freezeframe.volumes.model import Volume, VolumeSnapshot
from freezeframe.volumes.owners import OwnerImageSweep

MiB = 1 << 20
GIB = 1 << 30


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout


def qemu_io(path: Path, fmt: str, command: str) -> None:
    subprocess.run(["qemu-io", "-f", fmt, "-c", command, str(path)], check=True, capture_output=True)


# -- into a volume -------------------------------------------------------------------------------

def test_a_download_is_laid_down_sparse_whatever_the_block_boundaries(tmp_path):
    data = bytearray(8 * MiB)
    data[100:200] = b"x" * 100                       # a block with data at its start
    data[3 * MiB - 10:3 * MiB + 10] = b"y" * 20      # data across a block boundary
    data[5 * MiB:6 * MiB] = os.urandom(MiB)
    path = tmp_path / "out"
    with imagedata.SparseWriter(path, fsync=False) as sink:
        view = memoryview(bytes(data))
        for at, n in ((0, 12345), (12345, MiB), (12345 + MiB, 7 * MiB - 12345)):   # unaligned pieces
            sink.write(view[at:at + n])
    assert path.read_bytes() == bytes(data)
    # written: the first piece (its block's rest came as zeros in the next piece), the two blocks
    # around 3 MiB and the random MiB — nothing else
    assert sink.offset == len(data) and sink.written == 12345 + 2 * imagedata.BLOCK + MiB
    assert os.stat(path).st_blocks * 512 <= sink.written + 64 * 1024


def test_an_image_naming_another_file_or_too_big_is_refused(tmp_path):
    good = tmp_path / "good.qcow2"
    qemu_img("create", "-f", "qcow2", str(good), "64M")
    assert imagedata.inspect(good, "qcow2", limit=64 * MiB) == DataSource(good, "qcow2", 64 * MiB)
    with pytest.raises(imagedata.BadImage, match="larger than the volume"):
        imagedata.inspect(good, "qcow2", limit=32 * MiB)
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret" * 1000)
    backed = tmp_path / "backed.qcow2"
    qemu_img("create", "-f", "qcow2", "-F", "raw", "-b", str(secret), "-u", str(backed), "64M")
    with pytest.raises(imagedata.BadImage, match="backing file"):
        imagedata.inspect(backed, "qcow2", limit=GIB)
    external = tmp_path / "external.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={secret}", str(external), "64M")
    with pytest.raises(imagedata.BadImage, match="data file"):
        imagedata.inspect(external, "qcow2", limit=GIB)
    not_qcow2 = tmp_path / "raw"
    not_qcow2.write_bytes(b"\0" * MiB)
    with pytest.raises(imagedata.BadImage, match="not a readable qcow2"):
        imagedata.inspect(not_qcow2, "qcow2", limit=GIB)
    assert imagedata.inspect(not_qcow2, "raw", limit=GIB).virtual_size == MiB
    with pytest.raises(imagedata.BadImage, match="raw or qcow2"):
        imagedata.inspect(not_qcow2, "vmdk", limit=GIB)


# -- out of a volume -------------------------------------------------------------------------------

@pytest.fixture
def chain(tmp_path):
    """A 64 MiB volume as qcow2file keeps it after a snapshot: a raw base and a qcow2 overlay
    (relative backing name), data in both and holes in between."""
    base = tmp_path / "volume-base"
    with open(base, "wb") as fh:
        fh.write(os.urandom(MiB))
        fh.seek(20 * MiB)
        fh.write(os.urandom(MiB))
        fh.truncate(64 * MiB)
    top = tmp_path / "volume-base.snap"
    qemu_img("create", "-f", "qcow2", "-u", "-b", "volume-base", "-F", "raw", str(top), str(64 * MiB))
    qemu_io(top, "qcow2", "write -P 0x5a 40M 1M")
    return DataSource(top, "qcow2", 64 * MiB)


def _nbd_servers() -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            args = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except (OSError, ValueError):
            continue
        if args and args[0].endswith(b"qemu-nbd") and any(b"ffvol-nbd-" in a for a in args):
            found.append(pid)
    return found


def test_a_volume_chain_streams_as_raw_reading_only_its_data(chain, tmp_path):
    with imagedata.VolumeExport(chain) as nbd:
        extents = nbd.extents()
        data = imagedata.data_extents(extents)
        assert sum(n for _, n in data) <= 3 * MiB + 256 * 1024         # the holes are not data
        reads = []
        real = nbd.pread_many

        def counting(ranges, depth=4):
            ranges = list(ranges)
            reads.extend(ranges)
            return real(ranges, depth)
        nbd.pread_many = counting
        out = tmp_path / "out.raw"
        with open(out, "wb") as fh:
            for block in imagedata.raw_stream(nbd, extents):
                fh.write(block)
        assert sum(n for _, n in reads) == sum(n for _, n in data)          # the data, once
        assert all(any(a <= at and at + n <= a + m for a, m in data) for at, n in reads)    # never a hole
        tail = tmp_path / "tail.raw"         # resumed mid-way: the same bytes from there
        with open(tail, "wb") as fh:
            for block in imagedata.raw_stream(nbd, extents, offset=20 * MiB + 123):
                fh.write(block)
    assert out.stat().st_size == 64 * MiB
    assert subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(out), str(chain.path)]).returncode \
        == 0
    assert tail.read_bytes() == out.read_bytes()[20 * MiB + 123:]
    assert _nbd_servers() == []                         # qemu-nbd left with its only client


def test_a_volume_chain_streams_as_a_qcow2_of_its_data(chain, tmp_path):
    with imagedata.VolumeExport(chain) as nbd:
        layout = Layout.from_extents(nbd.size, imagedata.data_extents(nbd.extents()))
        out = tmp_path / "out.qcow2"
        with open(out, "wb") as fh:
            for block in stream(layout, nbd):
                fh.write(block)
    assert out.stat().st_size == layout.size and layout.data_bytes <= 3 * MiB + 256 * 1024
    qemu_img("check", "-f", "qcow2", str(out))
    assert subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(out), str(chain.path)]) \
        .returncode == 0


def test_an_export_that_cannot_start_says_why(tmp_path):
    with pytest.raises(errors.HostFault, match="qemu-nbd could not serve"):
        with imagedata.VolumeExport(DataSource(tmp_path / "missing", "raw", 0)):
            pass
    assert _nbd_servers() == []


# -- the owner-image sweep -------------------------------------------------------------------------

class FakeImages:
    """The image API: ``gone`` ids answer 404, ``killed`` ones are killed, the rest active."""

    def __init__(self) -> None:
        self.gone: set[str] = set()
        self.killed: set[str] = set()
        self.shown: list[tuple[str, str]] = []

    def __call__(self, actor: Actor) -> "FakeImages":
        self.actor = actor
        return self

    def __enter__(self) -> "FakeImages":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def show(self, image_id: str):
        self.shown.append((self.actor.user_id, image_id))
        if image_id in self.gone:
            raise GlanceError("no such image", status=404)
        return SimpleNamespace(id=image_id, status="killed" if image_id in self.killed else "active")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sweep_env(db, tmp_path):
    registry = Registry()
    conductor_hooks.register(registry)
    images = FakeImages()
    manager = SimpleNamespace(images=images)
    runtime.install(Runtime(db=db, image_client=None, workdir=tmp_path, local={"volume": manager}))
    workflows = Workflows(db, registry)
    yield SimpleNamespace(db=db, images=images, scan=Scan("c1", frozenset(), None, workflows))
    runtime.install(None)


def _owned(db, n: int, status: str = "available") -> list[tuple[str, str]]:
    """``n`` snapshots, each of a volume of its own, each owned by an image."""
    made = []

    def add(session) -> None:
        for _ in range(n):
            vid, sid, image = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
            session.add(Volume(id=vid, project_id="p", user_id="u", size=1, status="available"))
            session.flush()
            session.add(VolumeSnapshot(id=sid, volume_id=vid, project_id="p", user_id="u", volume_size=1,
                                       status=status, owner_image_id=image))
            made.append((sid, image))
    db.run_sync(add)
    return made


def test_the_sweep_deletes_the_snapshots_of_a_gone_image_a_few_per_scan(sweep_env):
    env = sweep_env
    clock = Clock()
    sweep = OwnerImageSweep(batch=3, clock=clock)
    owned = _owned(env.db, 5)
    assert sweep(env.scan) == [] and len(env.images.shown) == 3         # at most a batch per scan
    assert env.images.shown[0][0] == "u"                                   # as the snapshot's user
    assert sweep(env.scan) == [] and {i for _, i in env.images.shown} == {i for _, i in owned}  # the others next
    env.images.shown.clear()
    assert sweep(env.scan) == [] and env.images.shown == []               # all backing off now
    clock.now += imagedata_backoff()
    (gone_snap, gone_image), (killed_snap, killed_image) = owned[0], owned[1]
    env.images.gone.add(gone_image)
    env.images.killed.add(killed_image)
    deleted = sweep(env.scan) + sweep(env.scan)
    assert set(deleted) == {gone_snap, killed_snap}
    for sid in deleted:
        snap = env.db.run_sync(lambda s: s.get(VolumeSnapshot, sid))
        assert snap.status == "deleting" and snap.owner_image_id is None
        wf = env.db.run_sync(lambda s: s.query(Workflow).filter_by(resource_id=sid).one())
        assert wf.kind == "volume-snapshot-delete" and json.loads(wf.params)["server_id"] is None
        assert json.loads(wf.params)["actor"]["user_id"] == "u"
    others = {sid for sid, _ in owned[2:]}
    assert all(env.db.run_sync(lambda s: s.get(VolumeSnapshot, sid)).status == "available" for sid in others)


def test_the_sweep_waits_while_the_volume_is_busy_and_leaves_unknowns_alone(sweep_env):
    env = sweep_env
    clock = Clock()
    sweep = OwnerImageSweep(clock=clock)
    (sid, image), = _owned(env.db, 1)
    env.images.gone.add(image)

    def busy(session) -> None:        # another snapshot of the volume is being made
        vid = session.get(VolumeSnapshot, sid).volume_id
        session.add(VolumeSnapshot(id=str(uuid.uuid4()), volume_id=vid, project_id="p", volume_size=1,
                                   status="creating"))
    env.db.run_sync(busy)
    assert sweep(env.scan) == []
    assert env.db.run_sync(lambda s: s.get(VolumeSnapshot, sid)).status == "available"
    env.db.run_sync(lambda s: s.query(VolumeSnapshot).filter_by(status="creating").update({"status": "available"}))
    clock.now += imagedata_backoff()
    assert sweep(env.scan) == [sid]

    def broken(image_id):
        raise GlanceError("the image service is away", status=503)
    (other, other_image), = _owned(env.db, 1)
    env.images.show = broken
    clock.now += 1000
    assert sweep(env.scan) == []
    assert env.db.run_sync(lambda s: s.get(VolumeSnapshot, other)).status == "available"


def imagedata_backoff() -> float:
    from freezeframe.volumes.owners import FIRST_BACKOFF
    return FIRST_BACKOFF * 2 + 0.1
