"""Volumes on a real guest: libvirt (embedded mode, TCG) running the tiny test guest.

A volume is a raw sparse file on a "share" directory, attached as a virtio disk whose serial is
the volume id; its assisted snapshots move the disk onto qcow2 overlays (made here as the
qcow2file volume driver makes them: relative backing name, backing format set), and their
deletes merge the chain with block jobs (running) or qemu-img (stopped), given Cinder's
``delete_info`` for each case.

The guest is driven through its agent (``guest-exec`` of busybox sh): it writes byte patterns
to the volume's block device (found by its serial: hot-plugged disks are named in the order
the guest sees them) and keeps a writer running meanwhile. It boots with ACPI (the harness's
command line turns it off for a fast boot; hot-plug and hot-unplug need it) and without its
data disk (``ff.nodata``): the volumes are its only other disks. The guest checks what it
reads itself (md5 of the device after dropping its caches) against the host's reading of the
chain.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from freezeframe.common import errors
from freezeframe.compute.drivers.base import DriverError, PowerState, QuiesceFailed, VolumeDisk, VolumeJob
from tests.libvirt.test_libvirt_snapshot import GuestLab, ext4_header, libvirt_unavailable, ticks

pytestmark = [pytest.mark.libvirt]

MiB = 1 << 20
SIZE = 64 * MiB


# -- the guest ---------------------------------------------------------------------------------------
def acpi_spec(lab: GuestLab, name: str, *, agent_on: bool = True, cmdline: str = "ff.nodata"):
    """A tiny guest with ACPI (PCI hot-plug and hot-unplug need it), without its data disk."""
    spec = lab.spec(name, agent=agent_on, cmdline=cmdline)
    return dataclasses.replace(spec, cmdline=" ".join(w for w in spec.cmdline.split() if w != "acpi=off"))


class Guest:
    """A running guest driven through its agent's ``guest-exec``."""

    def __init__(self, lab: GuestLab, name: str) -> None:
        self.lab, self.name = lab, name

    @property
    def dom(self):
        return self.lab.driver.conn.lookupByName(self.name)

    def agent(self, execute: str, timeout: float, **arguments):
        """One guest agent command (a subclass may reach the agent another way)."""
        from freezeframe.compute.drivers import libvirt_agent as agent     # (libvirt may not be installed)
        return agent.command(self.dom, execute, timeout, **arguments)

    def sh(self, script: str, timeout: float = 60) -> str:
        """Run ``script`` with busybox sh; its stdout (the test fails on a non-zero exit)."""
        pid = self.agent("guest-exec", 5, path="/bin/sh", arg=["-c", script], **{"capture-output": True})["pid"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.agent("guest-exec-status", 5, pid=pid)
            if status.get("exited"):
                out = base64.b64decode(status.get("out-data", "")).decode(errors="replace")
                err = base64.b64decode(status.get("err-data", "")).decode(errors="replace")
                assert status.get("exitcode") == 0, f"{script!r} failed ({status.get('exitcode')}): {out} {err}"
                return out
            time.sleep(0.05)
        pytest.fail(f"{script!r} did not finish in {timeout} s in {self.name}")

    def device(self, volume_id: str, timeout: float = 30) -> str:
        """The guest's block device of a volume: its serial is the volume id (virtio-blk keeps
        the first 20 bytes)."""
        script = (f'for b in /sys/block/vd*; do [ "$(cat $b/serial 2>/dev/null)" = "{volume_id[:20]}" ] '
                  '&& echo /dev/${b##*/}; done; true')
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.sh(script).split()
            if found:
                return found[0]
            time.sleep(0.2)
        pytest.fail(f"volume {volume_id} did not show up in {self.name}")

    def fill(self, dev: str, char: str, offset_mib: int, size_mib: int) -> None:
        """Write ``size_mib`` MiB of ``char`` at ``offset_mib`` and flush them to the disk."""
        self.sh(f"head -c {size_mib * MiB} /dev/zero | tr '\\0' '{char}' | "
                f"dd of={dev} bs=1M seek={offset_mib} conv=notrunc,fsync 2>/dev/null")

    def start_writer(self, dev: str, region_mib: int) -> None:
        """Keep writing (a counter, flushed each time, every 20 ms) to 2 MiB at ``region_mib``."""
        first = region_mib * MiB // 4096
        self.sh(f"rm -f /run/stopw /run/wdone; ( n=0; while [ ! -e /run/stopw ]; do n=$((n + 1)); "
                f"echo \"tick $n\" | dd of={dev} bs=4096 seek=$(({first} + n % 512)) conv=notrunc,fsync "
                "2>/dev/null; sleep 0.02; done; touch /run/wdone ) > /dev/null 2>&1 &")

    def stop_writer(self) -> None:
        self.sh("touch /run/stopw; while [ ! -e /run/wdone ]; do sleep 0.05; done")

    def md5(self, dev: str) -> str:
        """The device as the guest reads it from the disk (its page cache dropped)."""
        return self.sh(f"sync; echo 3 > /proc/sys/vm/drop_caches; md5sum {dev}").split()[0]


# -- the host ----------------------------------------------------------------------------------------
def qemu_img(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=True, cwd=cwd).stdout


def new_volume(share: Path, size: int = SIZE) -> tuple[str, Path]:
    vid = str(uuid.uuid4())
    path = share / f"volume-{vid}"
    qemu_img("create", "-q", "-f", "raw", str(path), str(size))
    return vid, path


def overlay(share: Path, vid: str, sid: str, backing: str, backing_fmt: str) -> Path:
    """What the qcow2file driver makes for an assisted snapshot: ``volume-<vid>.<sid>`` on the
    active file, named relatively."""
    path = share / f"volume-{vid}.{sid}"
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", backing_fmt, str(path), str(SIZE), cwd=share)
    return path


def chain(path: Path, fmt: str = "qcow2") -> list[str]:
    """The file names of the chain under ``path``, top first."""
    docs = json.loads(qemu_img("info", "-U", "--backing-chain", "--output=json", "-f", fmt, str(path)))
    return [Path(d["filename"]).name for d in docs]


def data_md5(path: Path, fmt: str = "qcow2") -> str:
    """md5 of what the chain under ``path`` holds (read as a guest would, holes as zeros)."""
    out = path.parent / f".read-{uuid.uuid4().hex[:8]}.raw"
    try:
        qemu_img("convert", "-U", "-f", fmt, "-O", "raw", str(path), str(out))
        return file_md5(out)
    finally:
        out.unlink(missing_ok=True)


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def region(path: Path, fmt: str, offset_mib: int, size_mib: int) -> bytes:
    out = path.parent / f".region-{uuid.uuid4().hex[:8]}.raw"
    try:
        qemu_img("convert", "-U", "-f", fmt, "-O", "raw", str(path), str(out))
        with open(out, "rb") as f:
            f.seek(offset_mib * MiB)
            return f.read(size_mib * MiB)
    finally:
        out.unlink(missing_ok=True)


class Progress:
    def __init__(self) -> None:
        self.reports: list[tuple[int, int]] = []

    def job(self) -> VolumeJob:
        return VolumeJob(lambda done, total: self.reports.append((done, total)))

    def check(self) -> None:
        assert self.reports, "no progress was reported"
        done = [d for d, _t in self.reports]
        assert done == sorted(done), self.reports
        assert self.reports[-1][0] == self.reports[-1][1] > 0, self.reports


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vlab():
    reason = libvirt_unavailable()
    if reason:
        pytest.skip(reason)
    lab = GuestLab("ffv")
    try:
        lab.share = lab.ws / "share"
        lab.share.mkdir(mode=0o755)
        t0 = time.monotonic()
        lab.boot(acpi_spec(lab, "vol"))
        print(f"\nguest with ACPI ready in {lab.wait_ready('ffv-vol'):.2f} s ({time.monotonic() - t0:.2f} s with its disk)")
        yield lab
    finally:
        lab.close()


@pytest.fixture
def guest(vlab) -> Guest:
    if vlab.driver.get_info("ffv-vol").state is not PowerState.RUNNING:
        vlab.driver.power_on("ffv-vol")
        vlab.wait_ready("ffv-vol")
    return Guest(vlab, "ffv-vol")


def live_and_saved(lab: GuestLab, name: str, volume_id: str) -> tuple[list[str], list[str]]:
    """The volume's chain (file names, top first) in the live and in the persistent
    definition (the persistent one may name only the top: libvirt probes the rest at start)."""
    import libvirt
    from freezeframe.compute.drivers import libvirt_xml as lxml
    dom = lab.driver.conn.lookupByName(name)
    live = [p.name for p, _f in lxml.volume_chain(dom.XMLDesc(0), volume_id)]
    saved = [p.name for p, _f in lxml.volume_chain(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), volume_id)]
    return live, saved


# -- the tests -------------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_attach_snapshots_and_merges_while_the_guest_writes(vlab, guest, caplog):
    caplog.set_level(logging.INFO, logger="freezeframe.compute.drivers.libvirt_volumes")
    drv, name, share = vlab.driver, guest.name, vlab.share
    vid, base = new_volume(share)
    disk = VolumeDisk(vid, "vdb", base, "raw")
    t0 = time.monotonic()
    drv.attach_volume(name, disk)
    print(f"\nattach: {time.monotonic() - t0:.3f} s")
    drv.attach_volume(name, disk)                                      # idempotent
    assert drv.volume_disks(name) == [disk]
    assert live_and_saved(vlab, name, vid) == ([base.name], [base.name])
    assert any(d.target == "vdb" and d.path == base for d in drv.get_info(name).disks)
    dev = guest.device(vid)

    guest.fill(dev, "A", 0, 4)                                         # before s1
    guest.start_writer(dev, 24)
    snaps: dict[str, Path] = {}          # snapshot -> the overlay made at it (the qcow2file info file)
    data: dict[str, str] = {}            # snapshot -> md5 of its data, taken when it was made
    timings = []
    active, fmt = base, "raw"
    for sid, after in (("s1", ("B", 8)), ("s2", ("C", 12)), ("s3", ("D", 1))):
        new = overlay(share, vid, sid, active.name, fmt)
        t0 = time.monotonic()
        quiesced, frozen = drv.volume_snapshot_create(name, vid, new, quiesce=True, require_quiesce=False)
        timings.append(time.monotonic() - t0)
        assert quiesced and 0 <= frozen < 1.0          # the agent answers (no filesystem on a raw device to freeze)
        assert drv.volume_snapshot_create(name, vid, new, quiesce=True, require_quiesce=False) == (False, 0.0)
        assert drv.volume_disks(name) == [VolumeDisk(vid, "vdb", new, "qcow2")]
        live, saved = live_and_saved(vlab, name, vid)
        assert live[0] == saved[0] == new.name and live[1] == active.name
        snaps[sid] = new
        data[sid] = data_md5(active, fmt)              # the point in time: the chain under the new file
        old = file_md5(active)
        guest.fill(dev, after[0], after[1], 2)         # the guest writes on...
        time.sleep(0.3)
        assert file_md5(active) == old                 # ...and the old file no longer changes
        assert data_md5(active, fmt) == data[sid]
        active, fmt = new, "qcow2"
    print(f"volume snapshot create (quiesce=True, agent answers): {', '.join(f'{t:.3f}' for t in timings)} s")
    assert chain(active) == [snaps["s3"].name, snaps["s2"].name, snaps["s1"].name, base.name]
    assert region(snaps["s1"], "qcow2", 0, 4) == b"A" * 4 * MiB          # s2's data: A, and B from after s1
    assert region(snaps["s1"], "qcow2", 8, 2) == b"B" * 2 * MiB
    assert region(base, "raw", 8, 2) == bytes(2 * MiB)                     # s1's data: no B

    # Delete s2: its overlay is in the middle -> commit it into its backing (Cinder's delete_info).
    progress, t0 = Progress(), time.monotonic()
    drv.volume_snapshot_delete(name, vid, file_to_merge=snaps["s2"].name, merge_target_file=snaps["s1"].name,
                               progress=progress.job())
    print(f"blockCommit of the middle overlay: {time.monotonic() - t0:.3f} s, progress {progress.reports}")
    progress.check()
    assert chain(active) == [snaps["s3"].name, snaps["s1"].name, base.name]
    assert live_and_saved(vlab, name, vid)[0] == [snaps["s3"].name, snaps["s1"].name, base.name]
    snaps["s2"].unlink()                                    # the volume driver removes it
    assert data_md5(snaps["s1"]) == data["s3"]              # s3's data is now below s3's overlay
    assert file_md5(base) == data["s1"]
    drv.volume_snapshot_delete(name, vid, file_to_merge=snaps["s2"].name, merge_target_file=snaps["s1"].name)

    # Delete s3: its overlay is the active file -> rebase it onto what lies below its backing.
    progress, t0 = Progress(), time.monotonic()
    drv.volume_snapshot_delete(name, vid, file_to_merge=base.name, merge_target_file=None, progress=progress.job())
    print(f"blockRebase of the active file onto the base: {time.monotonic() - t0:.3f} s")
    progress.check()
    assert chain(active) == [snaps["s3"].name, base.name]
    snaps["s1"].unlink()                 # Cinder: s1's snapshot file is now the active one, s3's overlay
    assert file_md5(base) == data["s1"]
    drv.volume_snapshot_delete(name, vid, file_to_merge=base.name, merge_target_file=None)   # done already

    # Delete s1: its overlay (now the active file) is rebased onto nothing: flattened.
    progress = Progress()
    drv.volume_snapshot_delete(name, vid, file_to_merge=None, merge_target_file=None, progress=progress.job())
    progress.check()
    assert chain(active) == [snaps["s3"].name]
    assert live_and_saved(vlab, name, vid) == ([snaps["s3"].name], [snaps["s3"].name])
    base.unlink()

    pauses = [float(m) for m in re.findall(r"paused ([0-9.]+) s", caplog.text)]
    print(f"pauses that flushed the merges to disk: {pauses} s")
    assert len(pauses) >= 5 and max(pauses) < 1.0
    guest.stop_writer()
    seen = guest.md5(dev)
    assert seen == data_md5(active)                          # the guest reads what the merged file holds
    assert region(active, "qcow2", 0, 1) == b"A" * MiB
    assert region(active, "qcow2", 1, 2) == b"D" * 2 * MiB
    assert region(active, "qcow2", 8, 2) == b"B" * 2 * MiB
    assert region(active, "qcow2", 12, 2) == b"C" * 2 * MiB
    assert b"tick" in region(active, "qcow2", 24, 2)

    # Stopped, the domain opens the merged file alone; the data is the same.
    drv.power_off(name, timeout=0)
    assert drv.volume_disks(name) == [VolumeDisk(vid, "vdb", active, "qcow2")]
    assert data_md5(active) == seen
    drv.power_on(name)
    vlab.wait_ready(name)
    assert guest.md5(guest.device(vid)) == seen
    drv.detach_volume(name, vid)
    assert drv.volume_disks(name) == []


@pytest.mark.timeout(300)
def test_stop_start_after_an_online_snapshot_opens_the_new_file(vlab, guest):
    drv, name, share = vlab.driver, guest.name, vlab.share
    vid, base = new_volume(share)
    drv.attach_volume(name, VolumeDisk(vid, "vdc", base, "raw"))
    dev = guest.device(vid)
    guest.fill(dev, "E", 0, 1)
    new = overlay(share, vid, "s1", base.name, "raw")
    drv.volume_snapshot_create(name, vid, new, quiesce=False, require_quiesce=False)
    guest.fill(dev, "F", 1, 1)                              # only in the new file
    assert live_and_saved(vlab, name, vid)[1][0] == new.name    # libvirt 9 moved the definition itself
    # As an older libvirt would leave it: the definition still on the old file. A repeated
    # create (done already) puts it right.
    import libvirt
    from freezeframe.compute.drivers import libvirt_xml as lxml
    dom = drv.conn.lookupByName(name)
    element = lxml.volume_element(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), vid)
    dom.updateDeviceFlags(lxml.with_source(element, base, "raw"), libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    assert live_and_saved(vlab, name, vid)[1] == [base.name]
    assert drv.volume_snapshot_create(name, vid, new, quiesce=False, require_quiesce=False) == (False, 0.0)
    assert live_and_saved(vlab, name, vid)[1] == [new.name]
    expected = guest.md5(dev)

    drv.power_off(name, timeout=0)
    assert drv.get_info(name).state is PowerState.SHUTDOWN
    assert drv.volume_disks(name) == [VolumeDisk(vid, "vdc", new, "qcow2")]
    drv.power_on(name)
    vlab.wait_ready(name)
    assert drv.volume_disks(name) == [VolumeDisk(vid, "vdc", new, "qcow2")]
    assert live_and_saved(vlab, name, vid)[0] == [new.name, base.name]
    dev = guest.device(vid)
    assert guest.md5(dev) == expected                       # E and F: the new file on the old one
    assert region(base, "raw", 1, 1) == bytes(MiB)
    # The refreshed connection info names the file it runs on: attach is a no-op.
    drv.attach_volume(name, VolumeDisk(vid, "vdc", new, "qcow2"))
    with pytest.raises(errors.Conflict):                    # but not the old file, while it runs
        drv.attach_volume(name, VolumeDisk(vid, "vdc", base, "raw"))
    drv.detach_volume(name, vid)


@pytest.mark.timeout(300)
def test_snapshots_and_merges_of_a_stopped_domain(vlab, guest):
    """The domain is not running: the persistent definition moves to the new file, and the
    deletes are qemu-img's (rebase -F, commit + rebase -u), with their progress."""
    drv, name, share = vlab.driver, guest.name, vlab.share
    vid, base = new_volume(share)
    drv.attach_volume(name, VolumeDisk(vid, "vdb", base, "raw"))
    dev = guest.device(vid)
    guest.fill(dev, "G", 0, 2)
    drv.power_off(name, timeout=0)

    data, snaps = {}, {}
    active, fmt = base, "raw"
    for sid in ("s1", "s2", "s3"):
        new = overlay(share, vid, sid, active.name, fmt)
        data[sid] = data_md5(active, fmt)
        t0 = time.monotonic()
        assert drv.volume_snapshot_create(name, vid, new, quiesce=True, require_quiesce=True) == (False, 0.0)
        print(f"\noffline snapshot {sid}: {time.monotonic() - t0:.3f} s")
        assert drv.volume_disks(name) == [VolumeDisk(vid, "vdb", new, "qcow2")]
        assert live_and_saved(vlab, name, vid)[1] == [new.name]
        # The guest writes between the snapshots (started, then stopped again).
        drv.power_on(name)
        vlab.wait_ready(name)
        guest.fill(guest.device(vid), {"s1": "H", "s2": "I", "s3": "J"}[sid], {"s1": 4, "s2": 6, "s3": 1}[sid], 1)
        drv.power_off(name, timeout=0)
        snaps[sid] = active = new
        fmt = "qcow2"
    final = data_md5(active)

    progress = Progress()
    drv.volume_snapshot_delete(name, vid, file_to_merge=snaps["s2"].name, merge_target_file=snaps["s1"].name,
                               progress=progress.job())
    progress.check()
    assert chain(active) == [snaps["s3"].name, snaps["s1"].name, base.name]
    snaps["s2"].unlink()
    assert data_md5(snaps["s1"]) == data["s3"] and data_md5(active) == final
    drv.volume_snapshot_delete(name, vid, file_to_merge=snaps["s2"].name, merge_target_file=snaps["s1"].name)

    progress = Progress()
    drv.volume_snapshot_delete(name, vid, file_to_merge=base.name, merge_target_file=None, progress=progress.job())
    progress.check()
    assert chain(active) == [snaps["s3"].name, base.name]
    snaps["s1"].unlink()
    assert file_md5(base) == data["s1"] and data_md5(active) == final

    drv.volume_snapshot_delete(name, vid, file_to_merge=None, merge_target_file=None)
    assert chain(active) == [snaps["s3"].name]
    base.unlink()
    assert data_md5(active) == final
    assert live_and_saved(vlab, name, vid)[1] == [snaps["s3"].name]

    # A commit of the active file itself moves the disk onto its target.
    s4 = overlay(share, vid, "s4", active.name, "qcow2")
    drv.volume_snapshot_create(name, vid, s4, quiesce=False, require_quiesce=False)
    drv.volume_snapshot_delete(name, vid, file_to_merge=s4.name, merge_target_file=active.name)
    assert drv.volume_disks(name) == [VolumeDisk(vid, "vdb", active, "qcow2")]

    drv.power_on(name)
    vlab.wait_ready(name)
    assert guest.md5(guest.device(vid)) == final
    drv.detach_volume(name, vid)


@pytest.mark.timeout(300)
def test_quiesced_volume_snapshot_freezes_the_guest_briefly(vlab, guest):
    """An ext4 volume the guest writes ticks to (as the image's own writer does): a quiesced
    snapshot leaves a clean filesystem in the old file, and the writer stalls no longer than
    the freeze the driver reports."""
    drv, name, share = vlab.driver, guest.name, vlab.share
    vid, base = new_volume(share)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(base)], check=True)
    drv.attach_volume(name, VolumeDisk(vid, "vdb", base, "raw"))
    dev = guest.device(vid)
    guest.sh(f"mount -t ext4 -o noatime {dev} /data && rm -f /run/stopt && ( n=0; while [ ! -e /run/stopt ]; do "
             "n=$((n + 1)); read -r up _ < /proc/uptime; echo \"$n $up\" >> /data/ticks; sleep 0.05; done ) "
             "> /dev/null 2>&1 &")
    time.sleep(1.5)
    made, active, fmt = [], base, "raw"
    for sid in ("q1", "q2", "q3", "q4", "q5"):
        new = overlay(share, vid, sid, active.name, fmt)
        t0 = time.monotonic()
        quiesced, frozen = drv.volume_snapshot_create(name, vid, new, quiesce=True, require_quiesce=True,
                                                      max_frozen=1.0)
        took = time.monotonic() - t0
        assert quiesced and 0 < frozen < 1.0
        assert drv.guest_frozen(name) is False
        made.append((active, fmt, frozen, took))
        active, fmt = new, "qcow2"
        time.sleep(0.6)
    guest.sh("touch /run/stopt; sleep 0.2; sync; umount /data")

    first = made[0][0]
    header = ext4_header(first)
    assert "Filesystem state:         clean" in header and "needs_recovery" not in header
    fsck = subprocess.run(["e2fsck", "-fn", str(first)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    raw = share / "final.raw"
    qemu_img("convert", "-U", "-f", "qcow2", "-O", "raw", str(active), str(raw))
    after = ticks(raw)
    intervals = [b[1] - a[1] for a, b in zip(after, after[1:])]
    typical = sorted(intervals)[len(intervals) // 2]
    lines = []
    for path, pfmt, frozen, took in made:
        point = share / "point.raw"
        qemu_img("convert", "-U", "-f", pfmt, "-O", "raw", str(path), str(point))
        before = ticks(point)
        assert after[: len(before)] == before                   # nothing written after it leaked in
        gap = after[len(before)][1] - before[-1][1]
        lines.append(f"frozen {frozen:.3f} s, call {took:.3f} s, writer gap {gap:.3f} s")
        assert gap <= frozen + 2 * typical + 0.1, lines
    print("\nquiesced volume snapshots (typical tick %.3f s):\n  %s" % (typical, "\n  ".join(lines)))
    drv.detach_volume(name, vid)


@pytest.mark.timeout(300)
def test_detach_live_offline_and_from_a_guest_that_does_not_let_go(vlab, guest):
    drv, name, share = vlab.driver, guest.name, vlab.share
    vid, base = new_volume(share)
    drv.attach_volume(name, VolumeDisk(vid, "vdb", base, "raw"))
    guest.device(vid)
    t0 = time.monotonic()
    drv.detach_volume(name, vid)                        # the guest (ACPI) releases it
    print(f"\nlive detach, guest with ACPI: {time.monotonic() - t0:.3f} s")
    assert drv.volume_disks(name) == [] and live_and_saved(vlab, name, vid) == ([], [])
    drv.detach_volume(name, vid)                        # absent: no error

    drv.attach_volume(name, VolumeDisk(vid, "vdb", base, "raw"))
    drv.power_off(name, timeout=0)
    drv.detach_volume(name, vid)                        # stopped: the definition only
    assert drv.volume_disks(name) == []
    drv.power_on(name)

    # A guest booted with acpi=off never answers the unplug request.
    spec = vlab.spec("deaf", agent=False, cmdline="ff.nodata ff.noagent acpi=off")
    vlab.boot(spec)
    vlab.wait_ready(spec.name, agent=False)
    deaf = vlab.new_driver()
    deaf.detach_timeout = 3.0
    deaf.attach_volume(spec.name, VolumeDisk(vid, "vdb", base, "raw"))
    with pytest.raises(QuiesceFailed):                  # no agent: cannot quiesce, nothing changed
        deaf.volume_snapshot_create(spec.name, vid, overlay(share, vid, "n1", base.name, "raw"),
                                    quiesce=True, require_quiesce=True)
    assert deaf.volume_disks(spec.name)[0].path == base
    t0 = time.monotonic()
    with pytest.raises(DriverError, match="did not release"):
        deaf.detach_volume(spec.name, vid)
    waited = time.monotonic() - t0
    print(f"live detach, guest without ACPI: DriverError after {waited:.2f} s")
    assert 3.0 <= waited < 10
    assert live_and_saved(vlab, spec.name, vid) == ([base.name], [])      # still plugged, no longer defined
    with pytest.raises(DriverError, match="did not release"):
        deaf.detach_volume(spec.name, vid)                                  # a retry waits again
    deaf.power_off(spec.name, timeout=0)
    deaf.power_on(spec.name)
    assert deaf.volume_disks(spec.name) == []                               # a stop removed it
    deaf.detach_volume(spec.name, vid)
    deaf.destroy(spec.name)
    vlab.wait_ready(name)


@pytest.mark.timeout(120)
def test_bad_requests_change_nothing(vlab, guest):
    drv, name, share = vlab.driver, guest.name, vlab.share
    vid, base = new_volume(share)
    drv.attach_volume(name, VolumeDisk(vid, "vdb", base, "raw"))
    with pytest.raises(errors.Conflict):
        drv.attach_volume(name, VolumeDisk(str(uuid.uuid4()), "vdb", base, "raw"))     # target taken
    with pytest.raises(errors.Conflict):
        drv.attach_volume(name, VolumeDisk(vid, "vdc", base, "raw"))                    # attached as vdb
    stranger = share / "stranger.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(stranger), str(SIZE))
    with pytest.raises(DriverError, match="not an overlay"):
        drv.volume_snapshot_create(name, vid, stranger, quiesce=False, require_quiesce=False)
    elsewhere = vlab.ws / f"volume-{vid}.x"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(elsewhere))
    with pytest.raises(errors.Invalid):
        drv.volume_snapshot_create(name, vid, elsewhere, quiesce=False, require_quiesce=False)
    with pytest.raises(errors.Invalid):
        drv.volume_snapshot_create(name, vid, Path(f"{share}/../volume-{vid}.x"), quiesce=False, require_quiesce=False)
    for bad in ("../etc/passwd", "a/b", "..", ""):
        with pytest.raises(errors.Invalid):
            drv.volume_snapshot_delete(name, vid, file_to_merge=bad, merge_target_file=None)
    with pytest.raises(errors.Invalid):
        drv.volume_snapshot_delete(name, vid, file_to_merge=None, merge_target_file=base.name)
    with pytest.raises(DriverError, match="not attached"):
        drv.volume_snapshot_create(name, str(uuid.uuid4()), stranger, quiesce=False, require_quiesce=False)
    assert drv.volume_disks(name) == [VolumeDisk(vid, "vdb", base, "raw")]
    assert drv.conn.lookupByName(name).blockJobInfo("vdb", 0) == {}
    drv.detach_volume(name, vid)


@pytest.mark.timeout(300)
def test_a_merge_finds_the_job_an_earlier_attempt_left_running(vlab, guest):
    """The process that started a block job died (the job runs on in QEMU): the retry waits for
    that job, with its progress, instead of starting another one, and finds the merge done."""
    import libvirt
    drv, name, share = vlab.driver, guest.name, vlab.share
    vid, base = new_volume(share)
    drv.attach_volume(name, VolumeDisk(vid, "vdb", base, "raw"))
    dev = guest.device(vid)
    s1 = overlay(share, vid, "s1", base.name, "raw")
    drv.volume_snapshot_create(name, vid, s1, quiesce=False, require_quiesce=False)
    guest.fill(dev, "K", 0, 16)                             # 16 MiB to commit
    s2 = overlay(share, vid, "s2", s1.name, "qcow2")
    drv.volume_snapshot_create(name, vid, s2, quiesce=False, require_quiesce=False)
    expected = guest.md5(dev)

    dom = drv.conn.lookupByName(name)                     # the earlier attempt: a slow commit, then gone
    dom.blockCommit("vdb", str(base), str(s1), 8 * MiB, libvirt.VIR_DOMAIN_BLOCK_COMMIT_RELATIVE
                    | libvirt.VIR_DOMAIN_BLOCK_COMMIT_BANDWIDTH_BYTES)
    assert dom.blockJobInfo("vdb", 0)
    progress, t0 = Progress(), time.monotonic()
    other = vlab.new_driver()
    other.volume_snapshot_delete(name, vid, file_to_merge=s1.name, merge_target_file=base.name,
                                 progress=progress.job())
    took = time.monotonic() - t0
    print(f"\nwaited {took:.2f} s for the leftover commit; {len(progress.reports)} progress reports")
    progress.check()
    assert len(progress.reports) >= 3 and took >= 0.5
    assert chain(s2) == [s2.name, base.name]
    assert region(base, "raw", 0, 16) == b"K" * 16 * MiB
    assert guest.md5(dev) == expected
    drv.detach_volume(name, vid)


@pytest.mark.timeout(300)
def test_a_snapshot_that_fails_after_the_switch_moves_the_disk_back(vlab, guest, monkeypatch):
    """The disk moved to the new file, then the step failed (a thaw that did not answer): the
    volume side deletes the new file on an error, so the disk goes back onto the old one
    (active commit + pivot) with what the guest wrote meanwhile."""
    drv, name, share = vlab.driver, guest.name, vlab.share
    vid, base = new_volume(share)
    drv.attach_volume(name, VolumeDisk(vid, "vdb", base, "raw"))
    dev = guest.device(vid)
    guest.fill(dev, "L", 0, 2)
    new = overlay(share, vid, "s1", base.name, "raw")

    def frozen_then_lost(dom, act, **_kw):
        act()
        guest.fill(dev, "M", 1, 1)                          # written onto the new file
        raise DriverError("thawing: the agent did not answer")

    monkeypatch.setattr(drv, "_frozen", frozen_then_lost)
    with pytest.raises(DriverError, match="thawing"):
        drv.volume_snapshot_create(name, vid, new, quiesce=True, require_quiesce=False)
    assert drv.volume_disks(name) == [VolumeDisk(vid, "vdb", base, "raw")]
    assert live_and_saved(vlab, name, vid) == ([base.name], [base.name])
    new.unlink()                                            # what the volume side does on the error
    assert region(base, "raw", 0, 2) == b"L" * MiB + b"M" * MiB
    assert guest.md5(dev) == data_md5(base, "raw")
    monkeypatch.undo()

    # The same move on request: a commit of the active file itself (Cinder never asks for it).
    again = overlay(share, vid, "s2", base.name, "raw")
    drv.volume_snapshot_create(name, vid, again, quiesce=False, require_quiesce=False)
    guest.fill(dev, "N", 2, 1)
    progress = Progress()
    drv.volume_snapshot_delete(name, vid, file_to_merge=again.name, merge_target_file=base.name,
                               progress=progress.job())
    progress.check()
    assert drv.volume_disks(name) == [VolumeDisk(vid, "vdb", base, "raw")]
    assert live_and_saved(vlab, name, vid) == ([base.name], [base.name])
    assert region(base, "raw", 2, 1) == b"N" * MiB
    assert guest.md5(dev) == data_md5(base, "raw")
    drv.detach_volume(name, vid)
