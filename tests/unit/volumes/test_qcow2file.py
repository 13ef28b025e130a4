"""What only qcow2file promises: Cinder's RemoteFS layout on the share, the chain facts §2
describes (which file is merged into which), crash retries at every step, and names, backing
files and formats it never follows."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from freezeframe.volumes.drivers import qemuimg
from freezeframe.volumes.drivers.base import SnapshotRef, VolumeDriverError, VolumeRef
from freezeframe.volumes.drivers.qcow2file import Qcow2FileDriver, UnsafeFileName

pytestmark = pytest.mark.skipif(not (shutil.which("qemu-img") and shutil.which("qemu-io")),
                                reason="qemu-img and qemu-io are not installed")
GiB, MiB = 1 << 30, 1 << 20


@pytest.fixture
def driver(tmp_path) -> Qcow2FileDriver:
    return Qcow2FileDriver(tmp_path / "share", fsync=False)


def volume(driver: Qcow2FileDriver, size: int = 1) -> VolumeRef:
    vol = VolumeRef(id=str(uuid.uuid4()), size=size)
    return dataclasses.replace(vol, provider=driver.create_volume(vol))


def snap(driver: Qcow2FileDriver, vol: VolumeRef) -> tuple[SnapshotRef, VolumeRef]:
    s = SnapshotRef(id=str(uuid.uuid4()), volume_id=vol.id, volume_size=vol.size)
    sp, vp = driver.create_snapshot(s, vol)
    return dataclasses.replace(s, provider=sp), dataclasses.replace(vol, provider=vp)


def info_file(driver: Qcow2FileDriver, vol: VolumeRef) -> dict:
    return json.loads((driver.share / f"volume-{vol.id}.info").read_text())


def backing(driver: Qcow2FileDriver, name: str) -> str | None:
    return qemuimg.info(driver.share / name, "qcow2" if "." in name else "raw").backing_file


def qemu_io(path: Path, fmt: str, cmd: str) -> str:
    return subprocess.run(["qemu-io", "-f", fmt, "-c", cmd, str(path)], capture_output=True, text=True,
                          check=True).stdout


def test_layout_is_cinders(driver):
    vol = volume(driver)
    base = f"volume-{vol.id}"
    assert vol.provider == {"active": base, "format": "raw"}
    assert not (driver.share / f"{base}.info").exists()              # no snapshots, no info file
    s1, vol = snap(driver, vol)
    s2, vol = snap(driver, vol)
    o1, o2 = f"{base}.{s1.id}", f"{base}.{s2.id}"
    assert s1.provider == {"file": o1} and vol.provider == {"active": o2, "format": "qcow2"}
    text = (driver.share / f"{base}.info").read_text()
    assert text == json.dumps({"active": o2, s1.id: o1, s2.id: o2}, indent=1, sort_keys=True)
    img = qemuimg.info(driver.share / o2, "qcow2")
    assert (img.backing_file, img.backing_format, img.virtual_size) == (o1, "qcow2", GiB)   # relative
    img = qemuimg.info(driver.share / o1, "qcow2")
    assert (img.backing_file, img.backing_format) == (base, "raw")
    assert driver.snapshot_source(s1, vol).path == driver.share / base
    assert driver.snapshot_source(s2, vol).path == driver.share / o1
    assert sorted(os.listdir(driver.share)) == sorted([base, o1, o2, f"{base}.info"])


def test_offline_delete_merges_as_facts_say(driver):
    vol = volume(driver)
    base = f"volume-{vol.id}"
    s1, vol = snap(driver, vol)
    s2, vol = snap(driver, vol)
    s3, vol = snap(driver, vol)
    o1, o2, o3 = (f"{base}.{s.id}" for s in (s1, s2, s3))
    # middle (s2): its overlay o2 is committed into o1, o3 rebased onto o1, o2 deleted
    vol = dataclasses.replace(vol, provider=driver.delete_snapshot(s2, vol))
    assert backing(driver, o3) == o1 and not (driver.share / o2).exists()
    assert info_file(driver, vol) == {"active": o3, s1.id: o1, s3.id: o3}
    # newest (s3, active): o3 committed into o1, o1 becomes active
    assert driver.delete_snapshot(s3, vol) == {"active": o1, "format": "qcow2"}
    assert info_file(driver, vol) == {"active": o1, s1.id: o1}
    # the last: the raw file is active again
    assert driver.delete_snapshot(s1, vol) == {"active": base, "format": "raw"}
    assert info_file(driver, vol) == {"active": base}
    assert sorted(os.listdir(driver.share)) == [base, f"{base}.info"]


def test_assisted_delete_info_as_cinder_computes_it(driver):
    vol = volume(driver)
    base = f"volume-{vol.id}"
    s1, vol = snap(driver, vol)
    s2, vol = snap(driver, vol)
    s3, vol = snap(driver, vol)
    o1, o2, o3 = (f"{base}.{s.id}" for s in (s1, s2, s3))
    # the active overlay's snapshot: rebase o3 onto the backing of its backing (o2's data pulled in)
    begun = driver.delete_snapshot_assisted_begin(s3, vol)
    assert begun.info == {"type": "qcow2", "file_to_merge": o1, "merge_target_file": None, "volume_id": vol.id}
    with pytest.raises(VolumeDriverError, match="not rebased"):      # compute has not done it yet
        driver.delete_snapshot_assisted_complete(s3, vol, begun.admin_metadata)
    assert info_file(driver, vol)[s3.id] == o3
    qemuimg.rebase(driver.share / o3, o1, "qcow2", unsafe=False)
    done = driver.delete_snapshot_assisted_complete(s3, vol, begun.admin_metadata)
    assert done.volume == {"active": o3, "format": "qcow2"}
    # s2's data (o1) is now o3's backing: o3 is s2's overlay; o2 is gone
    assert info_file(driver, vol) == {"active": o3, s1.id: o1, s2.id: o3}
    assert not (driver.share / o2).exists()
    # a middle one: commit o1 into the raw file
    begun = driver.delete_snapshot_assisted_begin(s1, vol)
    assert begun.info == {"type": "qcow2", "file_to_merge": o1, "merge_target_file": base, "volume_id": vol.id}
    with pytest.raises(VolumeDriverError, match="not committed"):
        driver.delete_snapshot_assisted_complete(s1, vol, begun.admin_metadata)
    qemuimg.commit(driver.share / o1)
    qemuimg.rebase(driver.share / o3, base, "raw", unsafe=True)
    driver.delete_snapshot_assisted_complete(s1, vol, begun.admin_metadata)
    assert info_file(driver, vol) == {"active": o3, s2.id: o3} and not (driver.share / o1).exists()
    # the only one left, oldest and active: flatten (file_to_merge None), the raw file deleted
    begun = driver.delete_snapshot_assisted_begin(s2, vol)
    assert begun.info == {"type": "qcow2", "file_to_merge": None, "merge_target_file": None, "volume_id": vol.id}
    qemuimg.rebase(driver.share / o3, None, None, unsafe=False)
    done = driver.delete_snapshot_assisted_complete(s2, vol, begun.admin_metadata)
    assert done.volume == {"active": o3, "format": "qcow2"}
    assert sorted(os.listdir(driver.share)) == [o3, f"{base}.info"]
    assert info_file(driver, vol) == {"active": o3}
    # and the volume goes on: a snapshot on a qcow2 without backing, then deleted offline
    vol = dataclasses.replace(vol, provider=done.volume)
    s4, vol = snap(driver, vol)
    assert backing(driver, f"{base}.{s4.id}") == o3
    assert driver.delete_snapshot(s4, vol) == {"active": o3, "format": "qcow2"}


def test_assisted_create_makes_the_overlay_on_the_active_file(driver):
    vol = volume(driver)
    s1, vol = snap(driver, vol)
    s2 = SnapshotRef(id=str(uuid.uuid4()), volume_id=vol.id, volume_size=1)
    new = f"volume-{vol.id}.{s2.id}"
    begun = driver.create_snapshot_assisted_begin(s2, vol)
    assert begun.admin_metadata == {"new_file": new, "base_file": vol.provider["active"]}
    assert backing(driver, new) == vol.provider["active"]
    inode = os.stat(driver.share / new).st_ino
    driver.create_snapshot_assisted_begin(s2, vol)                   # a retry keeps the file compute may hold
    assert os.stat(driver.share / new).st_ino == inode
    (driver.share / new).write_bytes(b"half-made")                   # a crash while making it: remade
    driver.create_snapshot_assisted_begin(s2, vol)
    assert backing(driver, new) == vol.provider["active"]
    assert info_file(driver, vol)["active"] == vol.provider["active"]   # nothing recorded before complete
    done = driver.create_snapshot_assisted_complete(s2, vol, begun.admin_metadata)
    assert done.volume == {"active": new, "format": "qcow2"} and done.snapshot == {"file": new}
    assert info_file(driver, vol)["active"] == new and info_file(driver, vol)[s2.id] == new
    driver.create_snapshot_assisted_abort(s2, vol, begun.admin_metadata)
    assert (driver.share / new).exists()                             # in use: never removed


def test_assisted_complete_refuses_a_chain_that_moved(driver):
    vol = volume(driver)
    s1 = SnapshotRef(id=str(uuid.uuid4()), volume_id=vol.id, volume_size=1)
    begun = driver.create_snapshot_assisted_begin(s1, vol)
    _s2, vol2 = snap(driver, vol)                                    # someone moved the active file
    with pytest.raises(VolumeDriverError, match="moved"):
        driver.create_snapshot_assisted_complete(s1, vol2, begun.admin_metadata)


@pytest.mark.parametrize("step", ["commit", "rebase", "info", "unlink"])
def test_offline_delete_of_a_middle_snapshot_resumes_after_a_crash_at_any_step(driver, monkeypatch, step):
    vol = volume(driver)
    base = f"volume-{vol.id}"
    qemu_io(driver.share / base, "raw", "write -P 0x11 0 64k")
    s1, vol = snap(driver, vol)
    qemu_io(driver.share / vol.provider["active"], "qcow2", "write -P 0x22 0 64k")
    s2, vol = snap(driver, vol)
    qemu_io(driver.share / vol.provider["active"], "qcow2", "write -P 0x33 0 64k")
    targets = {"commit": (qemuimg, "commit"), "rebase": (qemuimg, "rebase"),
               "info": (driver, "_write_info"), "unlink": (driver, "_drop_leftover")}
    obj, attr = targets[step]
    real = getattr(obj, attr)
    calls = []

    def crash_after(*args, **kwargs):
        if step != "unlink":        # the info file is written; the crash comes before the unlink
            real(*args, **kwargs)
        calls.append(1)
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(obj, attr, crash_after)
    with pytest.raises(RuntimeError):
        driver.delete_snapshot(s1, vol)
    assert calls
    monkeypatch.setattr(obj, attr, real)
    assert driver.delete_snapshot(s1, vol) == vol.provider
    o1, o2 = f"{base}.{s1.id}", f"{base}.{s2.id}"
    assert not (driver.share / o1).exists() and backing(driver, o2) == base
    assert info_file(driver, vol) == {"active": o2, s2.id: o2}
    assert "read 65536/65536" in qemu_io(driver.snapshot_source(s2, vol).path, "raw", "read -P 0x22 0 64k")
    assert "read 65536/65536" in qemu_io(driver.share / o2, "qcow2", "read -P 0x33 0 64k")


def test_assisted_delete_complete_resumes_after_a_crash(driver, monkeypatch):
    vol = volume(driver)
    s1, vol = snap(driver, vol)
    s2, vol = snap(driver, vol)
    begun = driver.delete_snapshot_assisted_begin(s1, vol)
    qemuimg.commit(driver.share / begun.info["file_to_merge"])
    qemuimg.rebase(driver.share / vol.provider["active"], begun.info["merge_target_file"], "raw", unsafe=True)
    monkeypatch.setattr(driver, "_drop_leftover", lambda *a: (_ for _ in ()).throw(RuntimeError("crash")))
    with pytest.raises(RuntimeError):
        driver.delete_snapshot_assisted_complete(s1, vol, begun.admin_metadata)
    monkeypatch.undo()
    assert (driver.share / begun.admin_metadata["file_to_delete"]).exists()
    driver.delete_snapshot_assisted_complete(s1, vol, begun.admin_metadata)
    assert not (driver.share / begun.admin_metadata["file_to_delete"]).exists()
    assert info_file(driver, vol) == {"active": vol.provider["active"], s2.id: vol.provider["active"]}


def test_a_qcow2_header_written_by_the_guest_is_never_followed(driver, tmp_path):
    """A raw volume is guest data: a qcow2 header in it (backing file: a host file) is data."""
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"S" * 65536)
    trap = tmp_path / "trap.qcow2"
    qemuimg.create(trap, "qcow2", GiB, backing=str(secret), backing_fmt="raw")
    vol = volume(driver)
    header = trap.read_bytes()
    with open(driver.share / f"volume-{vol.id}", "r+b") as f:
        f.write(header)
    s1, vol = snap(driver, vol)
    assert driver.snapshot_source(s1, vol).format == "raw"
    for make in (lambda v: driver.create_cloned_volume(v, vol), lambda v: driver.create_volume_from_snapshot(v, s1, vol)):
        copy = VolumeRef(id=str(uuid.uuid4()), size=1)
        make(copy)
        with open(driver.share / f"volume-{copy.id}", "rb") as f:
            data = f.read(len(header) + 65536)
        assert data[:len(header)] == header and b"SSSS" not in data


def test_bad_info_files_and_backing_files_are_refused(driver, tmp_path):
    vol = volume(driver)
    s1, vol = snap(driver, vol)
    info_path = driver.share / f"volume-{vol.id}.info"
    good = info_path.read_text()
    for bad in ({"active": "../../etc/passwd"}, {"active": f"volume-{vol.id}", "not-a-uuid": f"volume-{vol.id}"},
                {"active": f"volume-{uuid.uuid4()}"}, {"no": "active"}):
        info_path.write_text(json.dumps(bad))
        with pytest.raises(VolumeDriverError):
            driver.volume_source(vol)
    info_path.write_text(good)
    # an overlay whose backing file is outside the share: refused, never opened or merged
    outside = tmp_path / "outside.raw"
    outside.write_bytes(bytes(GiB >> 10))
    overlay = driver.share / s1.provider["file"]
    qemuimg.rebase(overlay, str(outside), "raw", unsafe=True)
    with pytest.raises(UnsafeFileName, match="outside the share"):
        driver.snapshot_source(s1, vol)
    with pytest.raises(UnsafeFileName):
        driver.delete_snapshot(s1, vol)
    # a symlink in place of a volume file: not followed
    other = volume(driver)
    target = driver.share / f"volume-{other.id}"
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(UnsafeFileName):
        driver.volume_source(other)
    driver.delete_volume(other)
    assert outside.exists() and not target.is_symlink()


def test_volume_from_a_snapshot_reads_and_writes_only_data(driver):
    vol = volume(driver, size=4)
    for off in (0, GiB, 3 * GiB):
        qemu_io(driver.share / f"volume-{vol.id}", "raw", f"write -P 0x5a {off} 1M")
    s1, vol = snap(driver, vol)
    qemu_io(driver.share / vol.provider["active"], "qcow2", "write -P 0x6b 2G 1M")
    copy = VolumeRef(id=str(uuid.uuid4()), size=8)
    driver.create_volume_from_snapshot(copy, s1, vol)
    path = driver.share / f"volume-{copy.id}"
    assert path.stat().st_size == 8 * GiB
    assert path.stat().st_blocks * 512 <= 4 * MiB
    clone = VolumeRef(id=str(uuid.uuid4()), size=4)
    driver.create_cloned_volume(clone, vol)
    assert (driver.share / f"volume-{clone.id}").stat().st_blocks * 512 <= 5 * MiB
    assert "read 1048576/1048576" in qemu_io(driver.share / f"volume-{clone.id}", "raw", "read -P 0x6b 2G 1M")


def test_qemu_img_errors_carry_its_stderr(tmp_path):
    with pytest.raises(VolumeDriverError) as caught:
        qemuimg.info(tmp_path / "missing", "qcow2")
    assert "Could not open" in caught.value.message
    with pytest.raises(VolumeDriverError, match="unsupported image format"):
        qemuimg.info(tmp_path / "missing", "vmdk")


def test_connection_info_follows_the_active_file(driver):
    vol = volume(driver)
    _s1, vol = snap(driver, vol)
    conn = driver.connection_info(vol)
    assert conn == {"driver_volume_type": "qcow2file",
                    "data": {"export": str(driver.share), "name": vol.provider["active"], "format": "qcow2",
                             "volume_id": vol.id, "access_mode": "rw"},
                    "serial": vol.id}
