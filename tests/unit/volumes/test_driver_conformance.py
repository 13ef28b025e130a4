"""The conformance suite every volume driver passes: qcow2file (real qemu-img on tmp_path) and
the fake (plain and assisted). Data is written at offsets through the volume's own source
(raw file writes, or ``qemu-io`` into a qcow2 active file) and read back through whatever a
driver says holds a volume's or a snapshot's data."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from freezeframe.common import errors
from freezeframe.volumes.drivers import qemuimg
from freezeframe.volumes.drivers.base import DataSource, SnapshotRef, VolumeDriver, VolumeDriverError, VolumeRef
from freezeframe.volumes.drivers.fake import FakeVolumeDriver
from freezeframe.volumes.drivers.qcow2file import Qcow2FileDriver

GiB = 1 << 30
MiB = 1 << 20
LEN = 64 << 10
# Offsets spread over a 1 GiB volume (the first and the last 64 KiB included).
REGIONS = (0, 128 * MiB, 256 * MiB + 64 * 1024, 512 * MiB, GiB - LEN)
HAVE_QEMU = bool(shutil.which("qemu-img") and shutil.which("qemu-io"))
needs_qemu = pytest.mark.skipif(not HAVE_QEMU, reason="qemu-img and qemu-io are not installed")


# -- what a test needs to know about a driver ----------------------------------------------------
@dataclass
class Kit:
    driver: VolumeDriver
    root: Path
    scratch: Path
    # The attribute a crash is simulated at (raising once, where the driver persists its state).
    crash_point: str
    # Compute's part of an assisted delete, given the volume's connection info and delete_info.
    compute_delete: Callable[[dict[str, Any], dict[str, Any]], None]
    housekeeping: frozenset[str] = frozenset()


def _fmt_by_name(name: str) -> str:
    return "qcow2" if "." in name else "raw"


def qcow2_compute_delete(conn: dict[str, Any], delete_info: dict[str, Any]) -> None:
    """What compute does for a guest that is not running (Nova's qemu-img path, facts §1):
    merge_target_file None -> safe rebase of the active file onto file_to_merge (None:
    flatten); else commit file_to_merge into merge_target_file and point the file above it
    at merge_target_file (blockCommit does both)."""
    share = Path(conn["data"]["export"])
    active = share / conn["data"]["name"]
    top, target = delete_info["file_to_merge"], delete_info["merge_target_file"]
    if target is None:
        qemuimg.rebase(active, top, _fmt_by_name(top) if top else None, unsafe=False)
        return
    above = active
    while (backing := qemuimg.info(above, _fmt_by_name(above.name)).backing_file) != top:
        assert backing, f"{top} is not in the chain of {active}"
        above = share / backing
    qemuimg.commit(share / top, fmt="qcow2")
    qemuimg.rebase(above, target, _fmt_by_name(target), unsafe=True)


@pytest.fixture(params=[pytest.param("qcow2file", marks=needs_qemu), "fake", "fake-assisted"])
def kit(request, tmp_path) -> Kit:
    return make_kit(request.param, tmp_path)


@pytest.fixture(params=[pytest.param("qcow2file", marks=needs_qemu), "fake-assisted"])
def assisted_kit(request, tmp_path) -> Kit:
    """The drivers that need compute's assistance (the assisted hooks' conformance)."""
    return make_kit(request.param, tmp_path)


def make_kit(param: str, tmp_path) -> Kit:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    root = tmp_path / "share"
    if param == "qcow2file":
        return Kit(Qcow2FileDriver(root, fsync=False), root, scratch, "_write_info", qcow2_compute_delete)
    driver = FakeVolumeDriver(root, assisted=param == "fake-assisted")
    return Kit(driver, root, scratch, "_save_state", lambda conn, info: None,
               frozenset({"state.json", "state.lock"}))


# -- helpers --------------------------------------------------------------------------------------
def new_volume(kit: Kit, size: int = 1) -> VolumeRef:
    vol = VolumeRef(id=str(uuid.uuid4()), size=size)
    return dataclasses.replace(vol, provider=kit.driver.create_volume(vol))


def with_provider(vol: VolumeRef, provider: dict[str, Any] | None) -> VolumeRef:
    return dataclasses.replace(vol, provider=provider) if provider is not None else vol


def snap_of(vol: VolumeRef) -> SnapshotRef:
    return SnapshotRef(id=str(uuid.uuid4()), volume_id=vol.id, volume_size=vol.size)


def take(kit: Kit, vol: VolumeRef) -> tuple[SnapshotRef, VolumeRef]:
    snap = snap_of(vol)
    snap_provider, vol_provider = kit.driver.create_snapshot(snap, vol)
    return dataclasses.replace(snap, provider=snap_provider), with_provider(vol, vol_provider)


def write(kit: Kit, vol: VolumeRef, offset: int, byte: int, length: int = LEN) -> None:
    src = kit.driver.volume_source(vol)
    if src.format == "raw":
        with open(src.path, "r+b") as f:
            f.seek(offset)
            f.write(bytes([byte]) * length)
        return
    out = subprocess.run(["qemu-io", "-f", src.format, "-c", f"write -P {byte:#x} {offset} {length}", str(src.path)],
                         capture_output=True, text=True, check=True)
    assert "wrote" in out.stdout, out.stdout + out.stderr


@contextlib.contextmanager
def flat(kit: Kit, src: DataSource) -> Iterator[Path]:
    """A raw file holding ``src``'s data (a qcow2 chain flattened with qemu-img convert)."""
    if src.format == "raw":
        yield src.path
        return
    out = kit.scratch / f"flat-{uuid.uuid4()}"
    qemuimg.convert(src.path, src.format, out)
    try:
        yield out
    finally:
        out.unlink()


def read(kit: Kit, src: DataSource, offset: int, length: int = LEN) -> bytes:
    with flat(kit, src) as path, open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def contents(kit: Kit, src: DataSource) -> dict[int, int]:
    """The byte each region is filled with (each region holds one byte value throughout)."""
    seen = {}
    with flat(kit, src) as path, open(path, "rb") as f:
        for off in REGIONS:
            f.seek(off)
            data = f.read(LEN)
            assert data == data[:1] * LEN, f"region {off} is not uniform"
            seen[off] = data[0]
    return seen


def files(kit: Kit) -> set[str]:
    return {n for n in os.listdir(kit.root)} - kit.housekeeping if kit.root.exists() else set()


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def fill(kit: Kit, vol: VolumeRef, model: dict[int, int], changes: dict[int, int]) -> None:
    for off, byte in changes.items():
        write(kit, vol, off, byte)
        model[off] = byte


def chain_of_three(kit: Kit, vol: VolumeRef):
    """Three snapshots, each region changed between them; the expected contents of each."""
    model = dict.fromkeys(REGIONS, 0)
    expected, snaps = [], []
    fill(kit, vol, model, {REGIONS[0]: 0x11, REGIONS[1]: 0x11})
    for n, byte in enumerate((0x22, 0x33, 0x44)):
        snap, vol = take(kit, vol)
        snaps.append(snap)
        expected.append(dict(model))
        fill(kit, vol, model, {REGIONS[0]: byte, REGIONS[n + 2]: byte})
    return vol, snaps, expected, model


def check_all(kit: Kit, vol: VolumeRef, snaps, expected, model) -> None:
    for snap, want in zip(snaps, expected):
        assert contents(kit, kit.driver.snapshot_source(snap, vol)) == want
    assert contents(kit, kit.driver.volume_source(vol)) == model


# -- volumes --------------------------------------------------------------------------------------
def test_blank_volume_is_sparse_and_sized(kit):
    vol = new_volume(kit)
    src = kit.driver.volume_source(vol)
    assert src.virtual_size == GiB
    assert allocated(src.path) <= MiB
    assert contents(kit, src) == dict.fromkeys(REGIONS, 0)
    conn = kit.driver.connection_info(vol)
    assert conn["serial"] == vol.id and conn["data"]["volume_id"] == vol.id
    assert conn["data"]["format"] == vol.provider["format"] == src.format
    assert Path(conn["data"]["export"]) / conn["data"]["name"] == src.path
    assert conn["data"]["name"] == vol.provider["active"]
    assert kit.driver.create_volume(vol) == vol.provider      # a retry is no error


def test_snapshot_keeps_the_old_data(kit):
    vol = new_volume(kit)
    write(kit, vol, REGIONS[0], 0xA1)
    write(kit, vol, REGIONS[3], 0xA2)
    snap, vol = take(kit, vol)
    write(kit, vol, REGIONS[0], 0xB1)
    write(kit, vol, REGIONS[4], 0xB2)
    assert contents(kit, kit.driver.volume_source(vol)) == {**dict.fromkeys(REGIONS, 0), REGIONS[0]: 0xB1,
                                                            REGIONS[3]: 0xA2, REGIONS[4]: 0xB2}
    copy = VolumeRef(id=str(uuid.uuid4()), size=2)
    copy = with_provider(copy, kit.driver.create_volume_from_snapshot(copy, snap, vol))
    src = kit.driver.volume_source(copy)
    assert src.virtual_size == 2 * GiB and src.format == "raw"
    assert contents(kit, src) == {**dict.fromkeys(REGIONS, 0), REGIONS[0]: 0xA1, REGIONS[3]: 0xA2}
    assert read(kit, src, GiB + 5 * MiB) == bytes(LEN)
    assert allocated(src.path) <= 4 * MiB                     # holes stayed holes
    # retried after it was made: the same volume, untouched
    assert kit.driver.create_volume_from_snapshot(copy, snap, vol) == copy.provider
    with pytest.raises(errors.Invalid):
        kit.driver.create_volume_from_snapshot(VolumeRef(id=str(uuid.uuid4()), size=0), snap, vol)


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_offline_deletes_keep_every_other_snapshot(kit, order):
    vol, snaps, expected, model = chain_of_three(kit, vol=new_volume(kit))
    check_all(kit, vol, snaps, expected, model)
    left = list(range(3))
    for i in order:
        vol = with_provider(vol, kit.driver.delete_snapshot(snaps[i], vol))
        left.remove(i)
        check_all(kit, vol, [snaps[j] for j in left], [expected[j] for j in left], model)
        assert kit.driver.delete_snapshot(snaps[i], vol) == vol.provider      # again: no error
    write(kit, vol, REGIONS[1], 0x55)
    model[REGIONS[1]] = 0x55
    assert contents(kit, kit.driver.volume_source(vol)) == model


def test_clone_holds_the_current_data_and_is_independent(kit):
    vol = new_volume(kit)
    write(kit, vol, REGIONS[1], 0x21)
    snap, vol = take(kit, vol)
    write(kit, vol, REGIONS[2], 0x22)
    clone = VolumeRef(id=str(uuid.uuid4()), size=2)
    clone = with_provider(clone, kit.driver.create_cloned_volume(clone, vol))
    want = {**dict.fromkeys(REGIONS, 0), REGIONS[1]: 0x21, REGIONS[2]: 0x22}
    assert contents(kit, kit.driver.volume_source(clone)) == want
    assert kit.driver.volume_source(clone).virtual_size == 2 * GiB
    write(kit, clone, REGIONS[3], 0x99)
    assert contents(kit, kit.driver.volume_source(vol)) == want
    assert contents(kit, kit.driver.snapshot_source(snap, vol))[REGIONS[2]] == 0


@needs_qemu
def test_import_raw_and_qcow2(kit):
    for fmt in ("raw", "qcow2"):
        image = kit.scratch / f"image.{fmt}"
        qemuimg.create(image, fmt, 64 * MiB)
        subprocess.run(["qemu-io", "-f", fmt, "-c", f"write -P 0x5a 1M {LEN}", str(image)], check=True,
                       capture_output=True)
        vol = VolumeRef(id=str(uuid.uuid4()), size=1)
        src = DataSource(image, fmt, 64 * MiB)
        vol = with_provider(vol, kit.driver.import_volume(vol, src))
        got = kit.driver.volume_source(vol)
        assert got.virtual_size == GiB
        assert read(kit, got, MiB) == b"\x5a" * LEN and read(kit, got, 0) == bytes(LEN)


def test_extend_before_and_after_a_snapshot(kit):
    vol = new_volume(kit)
    write(kit, vol, REGIONS[0], 0x31)
    vol = with_provider(vol, kit.driver.extend_volume(vol, 2))
    vol = dataclasses.replace(vol, size=2)
    assert kit.driver.volume_source(vol).virtual_size == 2 * GiB
    write(kit, vol, GiB + MiB, 0x32)
    snap, vol = take(kit, vol)
    vol = dataclasses.replace(with_provider(vol, kit.driver.extend_volume(vol, 3)), size=3)
    write(kit, vol, 2 * GiB + MiB, 0x33)
    src = kit.driver.volume_source(vol)
    assert src.virtual_size == 3 * GiB
    assert [read(kit, src, o)[0] for o in (0, GiB + MiB, 2 * GiB + MiB)] == [0x31, 0x32, 0x33]
    old = kit.driver.snapshot_source(snap, vol)
    assert old.virtual_size == 2 * GiB and read(kit, old, GiB + MiB)[0] == 0x32
    vol = with_provider(vol, kit.driver.delete_snapshot(snap, vol))
    src = kit.driver.volume_source(vol)
    assert src.virtual_size == 3 * GiB
    assert [read(kit, src, o)[0] for o in (0, GiB + MiB, 2 * GiB + MiB)] == [0x31, 0x32, 0x33]
    assert kit.driver.extend_volume(vol, 3) == vol.provider
    with pytest.raises(errors.Invalid):
        kit.driver.extend_volume(vol, 1)


def test_delete_volume_removes_every_file(kit):
    other = new_volume(kit)
    before = files(kit)
    vol = new_volume(kit)
    write(kit, vol, 0, 0x41)
    _s1, vol = take(kit, vol)
    s2, vol = take(kit, vol)
    vol = with_provider(vol, kit.driver.extend_volume(vol, 2))
    vol = with_provider(vol, kit.driver.delete_snapshot(s2, vol))
    _s3, vol = take(kit, vol)
    assert files(kit) > before
    kit.driver.delete_volume(vol)
    assert files(kit) == before
    kit.driver.delete_volume(vol)                           # already gone: no error
    assert kit.driver.volume_source(other).virtual_size == GiB


def test_create_snapshot_twice_returns_the_same(kit):
    vol = new_volume(kit)
    write(kit, vol, 0, 0x61)
    snap = snap_of(vol)
    first = kit.driver.create_snapshot(snap, vol)
    vol2 = with_provider(vol, first[1])
    assert kit.driver.create_snapshot(dataclasses.replace(snap, provider=first[0]), vol2) == first
    write(kit, vol2, 0, 0x62)
    assert read(kit, kit.driver.snapshot_source(snap, vol2), 0)[0] == 0x61


@pytest.mark.parametrize("op", ["create_snapshot", "delete_snapshot"])
def test_retry_after_a_crash_finishes_the_job(kit, monkeypatch, op):
    vol = new_volume(kit)
    write(kit, vol, REGIONS[0], 0x71)
    keep, vol = take(kit, vol)
    write(kit, vol, REGIONS[1], 0x72)
    snap = snap_of(vol)
    if op == "delete_snapshot":
        snap_provider, vol_provider = kit.driver.create_snapshot(snap, vol)
        snap, vol = dataclasses.replace(snap, provider=snap_provider), with_provider(vol, vol_provider)
        write(kit, vol, REGIONS[2], 0x73)
    real = getattr(kit.driver, kit.crash_point)

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(kit.driver, kit.crash_point, crash)
    with pytest.raises(RuntimeError):
        getattr(kit.driver, op)(snap, vol)
    monkeypatch.setattr(kit.driver, kit.crash_point, real)
    result = getattr(kit.driver, op)(snap, vol)
    provider = result[1] if op == "create_snapshot" else result
    vol = with_provider(vol, provider)
    model = {**dict.fromkeys(REGIONS, 0), REGIONS[0]: 0x71, REGIONS[1]: 0x72}
    assert contents(kit, kit.driver.snapshot_source(keep, vol)) == {**dict.fromkeys(REGIONS, 0), REGIONS[0]: 0x71}
    if op == "create_snapshot":
        write(kit, vol, REGIONS[3], 0x74)
        assert contents(kit, kit.driver.snapshot_source(snap, vol)) == model
        model[REGIONS[3]] = 0x74
    else:
        model[REGIONS[2]] = 0x73
    assert contents(kit, kit.driver.volume_source(vol)) == model
    before_delete = files(kit)
    kit.driver.delete_volume(vol)
    assert not files(kit) & before_delete


def test_capacity(kit):
    cap = kit.driver.capacity()
    assert cap["total_bytes"] >= cap["free_bytes"] > 0


# -- assisted snapshots ---------------------------------------------------------------------------
def assisted_take(kit: Kit, vol: VolumeRef) -> tuple[SnapshotRef, VolumeRef]:
    """begin -> (compute: REUSE_EXT onto the overlay begin made, no data to move) -> complete."""
    snap = snap_of(vol)
    begun = kit.driver.create_snapshot_assisted_begin(snap, vol)
    done = kit.driver.create_snapshot_assisted_complete(snap, vol, begun.admin_metadata)
    return dataclasses.replace(snap, provider={**begun.snapshot, **done.snapshot}), with_provider(vol, done.volume)


def test_assisted_create(assisted_kit):
    kit = assisted_kit
    vol = new_volume(kit)
    write(kit, vol, REGIONS[0], 0x81)
    snap = snap_of(vol)
    begun = kit.driver.create_snapshot_assisted_begin(snap, vol)
    assert begun.info == {"type": "qcow2", "new_file": f"volume-{vol.id}.{snap.id}", "snapshot_id": snap.id}
    assert begun.admin_metadata["new_file"] == begun.info["new_file"]
    assert begun.admin_metadata["base_file"] == vol.provider["active"]
    # the volume is unchanged until complete
    assert kit.driver.connection_info(vol)["data"]["name"] == vol.provider["active"]
    again = kit.driver.create_snapshot_assisted_begin(snap, vol)
    assert again.info == begun.info and again.admin_metadata == begun.admin_metadata
    done = kit.driver.create_snapshot_assisted_complete(snap, vol, begun.admin_metadata)
    assert done.volume is not None and done.volume["format"] in ("raw", "qcow2")
    assert kit.driver.create_snapshot_assisted_complete(snap, vol, begun.admin_metadata) == done
    vol = with_provider(vol, done.volume)
    snap = dataclasses.replace(snap, provider={**begun.snapshot, **done.snapshot})
    assert kit.driver.connection_info(vol)["data"]["name"] == done.volume["active"]
    write(kit, vol, REGIONS[0], 0x82)
    assert read(kit, kit.driver.snapshot_source(snap, vol), REGIONS[0])[0] == 0x81
    assert read(kit, kit.driver.volume_source(vol), REGIONS[0])[0] == 0x82
    # abort after complete changes nothing
    kit.driver.create_snapshot_assisted_abort(snap, vol, begun.admin_metadata)
    assert read(kit, kit.driver.snapshot_source(snap, vol), REGIONS[0])[0] == 0x81
    assert read(kit, kit.driver.volume_source(vol), REGIONS[0])[0] == 0x82


def test_assisted_create_abort_leaves_nothing(assisted_kit):
    kit = assisted_kit
    vol = new_volume(kit)
    write(kit, vol, REGIONS[1], 0x91)
    _first, vol = assisted_take(kit, vol)
    before = files(kit)
    snap = snap_of(vol)
    begun = kit.driver.create_snapshot_assisted_begin(snap, vol)
    aborted = kit.driver.create_snapshot_assisted_abort(snap, vol, begun.admin_metadata)
    assert aborted.volume in (None, vol.provider)
    assert files(kit) == before
    kit.driver.create_snapshot_assisted_abort(snap, vol, begun.admin_metadata)        # again: no error
    with pytest.raises(VolumeDriverError):
        kit.driver.create_snapshot_assisted_complete(snap, vol, begun.admin_metadata)
    assert read(kit, kit.driver.volume_source(vol), REGIONS[1])[0] == 0x91
    # the same snapshot can be taken afterwards
    snap2, vol = assisted_take(kit, vol)
    write(kit, vol, REGIONS[1], 0x92)
    assert read(kit, kit.driver.snapshot_source(snap2, vol), REGIONS[1])[0] == 0x91


# Newest first (rebases all the way down), middle first (a commit, then a rebase), oldest first
# (commits into the raw file), middle then oldest (two commits, the flatten last).
@pytest.mark.parametrize("order", [(2, 1, 0), (1, 2, 0), (0, 1, 2), (1, 0, 2)])
def test_assisted_deletes_keep_every_other_snapshot(assisted_kit, order):
    kit = assisted_kit
    vol = new_volume(kit)
    model = dict.fromkeys(REGIONS, 0)
    expected, snaps = [], []
    fill(kit, vol, model, {REGIONS[0]: 0x11, REGIONS[1]: 0x11})
    for n, byte in enumerate((0x22, 0x33, 0x44)):
        snap, vol = assisted_take(kit, vol)
        snaps.append(snap)
        expected.append(dict(model))
        fill(kit, vol, model, {REGIONS[0]: byte, REGIONS[n + 2]: byte})
    left = list(range(3))
    for i in order:
        begun = kit.driver.delete_snapshot_assisted_begin(snaps[i], vol)
        info = begun.info
        assert info is not None and info["type"] == "qcow2" and info["volume_id"] == vol.id
        assert set(info) == {"type", "file_to_merge", "merge_target_file", "volume_id"}
        newest = i == max(left)
        assert (info["merge_target_file"] is None) == newest         # rebase for the active overlay
        if not newest:
            assert info["file_to_merge"] and info["merge_target_file"]
        kit.compute_delete(kit.driver.connection_info(vol), info)
        done = kit.driver.delete_snapshot_assisted_complete(snaps[i], vol, begun.admin_metadata)
        vol = with_provider(vol, done.volume)
        assert kit.driver.delete_snapshot_assisted_complete(snaps[i], vol, begun.admin_metadata) == done
        left.remove(i)
        check_all(kit, vol, [snaps[j] for j in left], [expected[j] for j in left], model)
        gone = kit.driver.delete_snapshot_assisted_begin(snaps[i], vol)
        assert gone.info is None                                     # nothing left for compute
        kit.driver.delete_snapshot_assisted_complete(snaps[i], vol, gone.admin_metadata)
    write(kit, vol, REGIONS[1], 0x66)
    model[REGIONS[1]] = 0x66
    assert contents(kit, kit.driver.volume_source(vol)) == model
    before = files(kit)
    kit.driver.delete_volume(vol)
    assert not (files(kit) & before)


# -- names that are not the volume's are refused -------------------------------------------------
@pytest.mark.parametrize("bad", ["../outside", "/etc/passwd", "volume-{other}", "volume-{vid}/../../outside",
                                 "volume-{vid}.info", "", "volume-{vid}.x"])
def test_bad_file_names_in_providers_are_refused(kit, bad):
    vol = new_volume(kit)
    write(kit, vol, 0, 0x13)
    snap, vol = take(kit, vol)
    outside = kit.root.parent / "outside"
    outside.write_bytes(b"keep me")
    name = bad.format(vid=vol.id, other=uuid.uuid4())
    bad_vol = with_provider(vol, {"active": name, "format": "raw"})
    for call in (lambda: kit.driver.volume_source(bad_vol), lambda: kit.driver.connection_info(bad_vol),
                 lambda: kit.driver.create_snapshot(snap_of(vol), bad_vol),
                 lambda: kit.driver.extend_volume(bad_vol, 2),
                 lambda: kit.driver.create_cloned_volume(VolumeRef(str(uuid.uuid4()), 1), bad_vol)):
        with pytest.raises(VolumeDriverError):
            call()
    bad_snap = dataclasses.replace(snap, provider={"file": name})
    for call in (lambda: kit.driver.snapshot_source(bad_snap, vol), lambda: kit.driver.delete_snapshot(bad_snap, vol),
                 lambda: kit.driver.create_volume_from_snapshot(VolumeRef(str(uuid.uuid4()), 1), bad_snap, vol)):
        with pytest.raises(VolumeDriverError):
            call()
    if kit.driver.assisted and kit.driver.name == "qcow2file":
        meta = {"new_file": name, "base_file": vol.provider["active"]}
        for call in (lambda: kit.driver.create_snapshot_assisted_complete(snap_of(vol), vol, meta),
                     lambda: kit.driver.create_snapshot_assisted_abort(snap_of(vol), vol, meta)):
            with pytest.raises(VolumeDriverError):
                call()
    with pytest.raises(VolumeDriverError):
        kit.driver.volume_source(VolumeRef(id="../x", size=1))
    assert outside.read_bytes() == b"keep me"
    assert read(kit, kit.driver.snapshot_source(snap, vol), 0)[0] == 0x13


# -- the fake's own knobs -------------------------------------------------------------------------
def test_fake_fault_injection(tmp_path):
    driver = FakeVolumeDriver(tmp_path, fail_on={"create_snapshot"})
    vol = VolumeRef(id=str(uuid.uuid4()), size=1)
    vol = with_provider(vol, driver.create_volume(vol))
    with pytest.raises(VolumeDriverError, match="injected"):
        driver.create_snapshot(snap_of(vol), vol)
    driver.fail_on.clear()
    driver.create_snapshot(snap_of(vol), vol)
    with pytest.raises(NotImplementedError):
        driver.create_snapshot_assisted_begin(snap_of(vol), vol)
