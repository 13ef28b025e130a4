"""The conformance suite every virt driver passes: the fake always, libvirt (embedded mode, TCG,
the tiny test guest, booted once per module) wherever libvirt can run.

Each setup offers a running guest whose agent answers, a running guest whose agent does not, the
disk to snapshot on them, and a way to make a fresh guest and a second driver on the same host.

The volume operations (seed 002) run on the fake, on the fake behind the host API (the
``RemoteDriver`` a conductor on another host uses, in process), and on libvirt: attach, three
assisted snapshots, the deletes of the middle one (commit), of the newest (rebase onto the
base) and of the last (flatten), detach — the chain and the data checked after each step.

Group snapshots (seed 003) run on the same three: the local disks and two volumes of a guest at
one point in time (one freeze), each disk read by name, idempotent, released as a whole; a
failure after the volumes' switch leaves them on their old files; a stopped domain's group.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from freezeframe.common import errors
from freezeframe.compute.drivers.base import (
    DomainNotFound, DriverError, GroupHandle, GuestSpec, PowerState, QuiesceFailed, SnapshotHandle, VirtDriver,
    VolumeDisk, VolumeJob,
)
from freezeframe.compute.drivers.fake import FakeDriver
from tests.libvirt.test_libvirt_snapshot import GuestLab, libvirt_unavailable, read_snapshot
from tests.libvirt.test_volume_ops_libvirt import acpi_spec

MiB = 1 << 20


@dataclass
class Setup:
    kind: str
    driver: VirtDriver
    agent_guest: str              # running, its guest agent answers
    noagent_guest: str            # running, no agent answers
    disk: str                     # the disk to snapshot on both
    new_spec: Callable[[str], GuestSpec]       # a fresh guest (no agent), not yet spawned
    new_driver: Callable[[], VirtDriver]       # a second driver on the same host
    off_timeout: float            # power_off timeout that does not wait for a guest that ignores ACPI
    workdir: Callable[[str], Path]             # a fresh snapshot workdir the hypervisor can write
    volume_guest: str = ""        # running, agent answers, lets go of hot-unplugged disks
    share: Path | None = None     # where volumes' files are (the hypervisor can open them)


# -- the fake ----------------------------------------------------------------------------------------
def fake_disk(path: Path, size: int = 8 * MiB) -> Path:
    """A sparse raw file with data at a few places."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in (0, 3 * MiB + 4096, size - 4096):
            f.seek(offset)
            f.write(os.urandom(4096))
    return path


def fake_setup(tmp_path: Path) -> Setup:
    driver = FakeDriver()

    def spec(name: str, agent: bool = False) -> GuestSpec:
        return GuestSpec(name=name, uuid=str(uuid.uuid4()), vcpus=1, memory_mb=128,
                         root_disk=fake_disk(tmp_path / f"{name}-vda.img"),
                         extra_disks=(fake_disk(tmp_path / f"{name}-vdb.img"),), guest_agent=agent)

    driver.spawn(spec("fake-agent", agent=True))
    driver.spawn(spec("fake-noagent"))
    (tmp_path / "share").mkdir()
    return Setup("fake", driver, "fake-agent", "fake-noagent", "vdb", new_spec=spec,
                 new_driver=lambda: FakeDriver(host=driver.host), off_timeout=0,
                 workdir=lambda name: tmp_path / "snapshots" / name, volume_guest="fake-agent",
                 share=tmp_path / "share")


# -- libvirt ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def libvirt_lab():
    reason = libvirt_unavailable()
    if reason:
        pytest.skip(reason)
    lab = GuestLab("ffc")
    try:
        lab.boot(lab.spec("agent", extra=(lab.disk("agent-vdb", data=True),)))
        lab.boot(lab.spec("noagent", extra=(lab.disk("noagent-vdb", data=True),), cmdline="ff.noagent"))
        lab.boot(acpi_spec(lab, "vol"))          # for volumes: hot-unplug needs ACPI in the guest
        lab.wait_ready("ffc-agent")
        lab.wait_ready("ffc-noagent", agent=False)
        lab.wait_ready("ffc-vol")
        (lab.ws / "share").mkdir(mode=0o755)
        yield lab
    finally:
        lab.close()


def libvirt_setup(lab: GuestLab) -> Setup:
    def spec(name: str) -> GuestSpec:
        s = lab.spec(name, agent=False, extra=(lab.disk(f"{name}-vdb", data=True),),
                     cmdline="ff.noagent ff.nowriter")
        lab.names.append(s.name)          # destroyed with the lab whatever the test does
        return s

    return Setup("libvirt", lab.driver, "ffc-agent", "ffc-noagent", "vdb", new_spec=spec,
                 new_driver=lab.new_driver, off_timeout=1, workdir=lab.workdir, volume_guest="ffc-vol",
                 share=lab.ws / "share")


@pytest.fixture(params=["fake", pytest.param("libvirt", marks=pytest.mark.libvirt)])
def setup(request, tmp_path) -> Setup:
    if request.param == "fake":
        return fake_setup(tmp_path)
    return libvirt_setup(request.getfixturevalue("libvirt_lab"))


# -- the fake behind the host API (a conductor's RemoteDriver), in process ----------------------------
@pytest.fixture
def remote_setup(tmp_path):
    """The fake's setup, driven through ``RemoteDriver`` -> host API -> ``LockedDriver``,
    over the in-process transport (a loop of its own on a thread, as ``serve`` runs it)."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from freezeframe.common.context import RequestContext
    from freezeframe.common.policy import Policy
    from freezeframe.common.web.errors import HANDLERS
    from freezeframe.compute.drivers.locked import LockedDriver
    from freezeframe.compute.hostapi import HostAPI
    from freezeframe.compute.hostclient import HostClient, RemoteDriver
    from freezeframe.compute.hostside import LocalHost
    from freezeframe.http.inprocess import InProcess

    local = fake_setup(tmp_path)
    host = LocalHost("h1", LockedDriver(local.driver, timeout=5), lambda actor: None, tmp_path / "instances")
    exports: list[tuple] = []            # (source, export workdir, export name) the host API asked for
    api = HostAPI(host, Policy(None), tmp_path / "instances" / "_snapshots",
                  lambda *a: exports.append(a) or {}, lambda *a: None)
    app = Starlette(routes=[Mount("/host/v1", app=api.router())], exception_handlers=HANDLERS)
    service = RequestContext("freezeframe", "service", frozenset({"service"}), service_roles=frozenset({"service"}))

    async def as_service(scope, receive, send):
        if scope["type"] == "http":
            scope.setdefault("state", {})["ctx"] = service
        await app(scope, receive, send)

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="host-api", daemon=True)
    thread.start()
    where = InProcess()
    where.bind(as_service, loop)
    client = HostClient("http://h1", transport=where.transport())
    remote = RemoteDriver(client, open_export=lambda info: None)
    setup = Setup("remote", remote, local.agent_guest, local.noagent_guest, local.disk, new_spec=local.new_spec,
                  new_driver=lambda: remote, off_timeout=0, workdir=local.workdir, volume_guest=local.volume_guest,
                  share=local.share)
    setup.local = local.driver           # the host's own driver (behind the lock), for the tests' hooks
    setup.exports = exports
    setup.host_workdir = tmp_path / "instances" / "_snapshots"
    yield setup
    client.close()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


@pytest.fixture(params=["fake", "remote", pytest.param("libvirt", marks=pytest.mark.libvirt)])
def vsetup(request, tmp_path) -> Setup:
    """The setups the volume operations run on."""
    if request.param == "fake":
        return fake_setup(tmp_path)
    if request.param == "remote":
        return request.getfixturevalue("remote_setup")
    return libvirt_setup(request.getfixturevalue("libvirt_lab"))


@pytest.fixture(params=["fake", pytest.param("libvirt", marks=pytest.mark.libvirt)])
def local_vsetup(request, tmp_path) -> Setup:
    """The setups of a stopped domain's volume operations: the local drivers (the host API
    boots servers from images only, so a remote one has no stopped domain of a spec here)."""
    if request.param == "fake":
        return fake_setup(tmp_path)
    return libvirt_setup(request.getfixturevalue("libvirt_lab"))


# -- helpers -------------------------------------------------------------------------------------------
def assert_same_content(a: Path, b: Path) -> None:
    proc = subprocess.run(["qemu-img", "compare", "-U", str(a), str(b)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def assert_thawed(s: Setup, name: str) -> None:
    assert s.driver.guest_frozen(name) is False
    if isinstance(s.driver, FakeDriver):
        mine = [e for e, n in s.driver.events if n == name]
        assert mine.count("freeze") == mine.count("thaw") and (not mine or mine[-1] == "thaw")


# -- the suite -------------------------------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_lifecycle(setup):
    drv, spec = setup.driver, setup.new_spec("life")
    info = drv.spawn(spec)
    assert (info.name, info.uuid, info.state) == (spec.name, spec.uuid, PowerState.RUNNING)
    assert (info.vcpus, info.memory_mb) == (spec.vcpus, spec.memory_mb)
    assert [d.target for d in info.disks] == ["vda", "vdb"]
    assert [d.path for d in info.disks] == [spec.root_disk, *spec.extra_disks]
    assert all(d.virtual_size > 0 and d.format in ("raw", "qcow2") for d in info.disks)
    assert drv.spawn(spec).uuid == spec.uuid                      # idempotent
    assert spec.name in {d.name for d in drv.list_domains()}
    drv.power_off(spec.name, timeout=setup.off_timeout)
    assert drv.get_info(spec.name).state is PowerState.SHUTDOWN
    drv.power_off(spec.name, timeout=setup.off_timeout)           # already off: no error
    drv.power_on(spec.name)
    assert drv.get_info(spec.name).state is PowerState.RUNNING
    drv.spawn(spec)                                                # running: still fine
    drv.destroy(spec.name)
    with pytest.raises(DomainNotFound):
        drv.get_info(spec.name)
    drv.destroy(spec.name)                                         # absent: no error
    assert spec.root_disk.exists()                                 # the caller owns the disks


def test_unknown_domain(setup):
    drv = setup.driver
    with pytest.raises(DomainNotFound):
        drv.get_info("no-such-domain")
    with pytest.raises(DomainNotFound):
        drv.power_on("no-such-domain")
    with pytest.raises(DomainNotFound):
        drv.begin_snapshot("no-such-domain", "vda", "x", setup.workdir("x"), quiesce=False, require_quiesce=False)
    drv.destroy("no-such-domain")
    assert issubclass(DomainNotFound, DriverError)


def test_unknown_disk(setup):
    with pytest.raises(DriverError):
        setup.driver.begin_snapshot(setup.agent_guest, "vdz", "x", setup.workdir("x"),
                                    quiesce=False, require_quiesce=False)


@pytest.mark.timeout(60)
def test_agent_available(setup):
    assert setup.driver.agent_available(setup.agent_guest)
    t0 = time.monotonic()
    assert not setup.driver.agent_available(setup.noagent_guest, timeout=1)
    assert time.monotonic() - t0 < 5


@pytest.mark.timeout(180)
def test_quiesced_live_snapshot(setup):
    drv, name = setup.driver, setup.agent_guest
    wd = setup.workdir("live")
    h = drv.begin_snapshot(name, setup.disk, "live", wd, quiesce=True,
                           require_quiesce=True, max_frozen=1.0)
    assert (h.snapshot_id, h.domain, h.disk) == ("live", name, setup.disk)
    assert h.quiesced and 0 < h.frozen_seconds < 1.0
    assert h.workdir == wd.absolute()
    assert_thawed(setup, name)
    disk = next(d for d in drv.get_info(name).disks if d.target == setup.disk)
    assert h.virtual_size == disk.virtual_size
    read_snapshot(drv, h, wd.parent / "live.qcow2")
    read_snapshot(drv, h, wd.parent / "live-again.qcow2")             # readable more than once
    assert_same_content(wd.parent / "live.qcow2", wd.parent / "live-again.qcow2")
    drv.end_snapshot(name, "live", h.workdir)
    assert not h.workdir.exists()
    drv.end_snapshot(name, "live", h.workdir)                      # idempotent
    assert drv.get_info(name).state is PowerState.RUNNING
    assert_thawed(setup, name)


@pytest.mark.timeout(60)
def test_require_quiesce_without_agent(setup):
    drv, name = setup.driver, setup.noagent_guest
    wd = setup.workdir("rq")
    with pytest.raises(QuiesceFailed):
        drv.begin_snapshot(name, setup.disk, "rq", wd, quiesce=True, require_quiesce=True)
    assert not wd.exists()
    assert drv.get_info(name).state is PowerState.RUNNING
    if isinstance(drv, FakeDriver):
        assert not [e for e in drv.events if e[1] == name]


@pytest.mark.timeout(120)
def test_quiesce_is_optional_without_agent(setup):
    drv, name = setup.driver, setup.noagent_guest
    h = drv.begin_snapshot(name, setup.disk, "opt", setup.workdir("opt"), quiesce=True, require_quiesce=False)
    assert not h.quiesced and h.frozen_seconds == 0
    read_snapshot(drv, h, h.workdir.parent / "opt.qcow2")
    drv.end_snapshot(name, "opt", h.workdir)
    with pytest.raises(DriverError):
        drv.open_snapshot(name, "opt", h.workdir)                      # ended: gone


@pytest.mark.timeout(120)
def test_begin_snapshot_is_idempotent(setup):
    drv, name = setup.driver, setup.agent_guest
    wd = setup.workdir("idem")
    h1 = drv.begin_snapshot(name, setup.disk, "idem", wd, quiesce=False, require_quiesce=False)
    h2 = drv.begin_snapshot(name, setup.disk, "idem", wd, quiesce=False, require_quiesce=False)
    assert h2 == h1
    # A different snapshot in the same workdir replaces the old one.
    h3 = drv.begin_snapshot(name, setup.disk, "idem2", wd, quiesce=False, require_quiesce=False)
    read_snapshot(drv, h3, wd.parent / "idem2.qcow2")
    with pytest.raises(DriverError):
        drv.open_snapshot(name, "idem", wd)
    drv.end_snapshot(name, "idem2", h3.workdir)


@pytest.mark.timeout(120)
def test_end_snapshot_from_a_new_driver(setup):
    drv, name = setup.driver, setup.agent_guest
    wd = setup.workdir("peer")
    h = drv.begin_snapshot(name, setup.disk, "peer", wd, quiesce=True, require_quiesce=False)
    other = setup.new_driver()
    read_snapshot(other, h, wd.parent / "peer.qcow2")                  # a new process reads it
    other.end_snapshot(name, "peer", h.workdir)
    assert not h.workdir.exists()
    with pytest.raises(DriverError):
        drv.open_snapshot(name, "peer", h.workdir)
    other.end_snapshot(name, "peer", h.workdir)
    assert drv.get_info(name).state is PowerState.RUNNING
    assert_thawed(setup, name)
    # and the host takes a new snapshot
    h2 = drv.begin_snapshot(name, setup.disk, "peer2", wd, quiesce=False, require_quiesce=False)
    read_snapshot(drv, h2, wd.parent / "peer2.qcow2")
    drv.end_snapshot(name, "peer2", h2.workdir)


@pytest.mark.timeout(180)
def test_cold_snapshot(setup):
    drv, spec = setup.driver, setup.new_spec("cold")
    drv.spawn(spec)
    drv.power_off(spec.name, timeout=setup.off_timeout)
    h = drv.begin_snapshot(spec.name, "vdb", "cold", setup.workdir("cold"), quiesce=True, require_quiesce=False)
    assert not h.quiesced
    out = read_snapshot(drv, h, h.workdir.parent / "cold.qcow2")
    assert_same_content(out, spec.extra_disks[0])
    assert drv.get_info(spec.name).state is PowerState.SHUTDOWN
    drv.end_snapshot(spec.name, "cold", h.workdir)
    assert not h.workdir.exists()
    drv.destroy(spec.name)


# -- the fake's own knobs ----------------------------------------------------------------------------------
def test_fake_injected_failures_always_thaw(tmp_path):
    s = fake_setup(tmp_path)
    drv, name = s.driver, s.agent_guest
    drv.fail_on["begin_snapshot"] = DriverError("boom")
    with pytest.raises(DriverError, match="boom"):
        drv.begin_snapshot(name, "vdb", "a", tmp_path / "a", quiesce=True, require_quiesce=True)
    del drv.fail_on["begin_snapshot"]

    drv.fail_on["freeze"] = RuntimeError("agent hiccup")
    with pytest.raises(QuiesceFailed):
        drv.begin_snapshot(name, "vdb", "b", tmp_path / "b", quiesce=True, require_quiesce=True)
    assert not (tmp_path / "b").exists()
    h = drv.begin_snapshot(name, "vdb", "c", tmp_path / "c", quiesce=True, require_quiesce=False)
    assert not h.quiesced
    del drv.fail_on["freeze"]
    drv.end_snapshot(name, "c", h.workdir)

    drv.fail_on["thaw"] = RuntimeError("thaw lost")
    with pytest.raises(RuntimeError):
        drv.begin_snapshot(name, "vdb", "d", tmp_path / "d", quiesce=True, require_quiesce=True)
    del drv.fail_on["thaw"]
    assert drv.events[-2:] == [("freeze", name), ("thaw", name)]     # end_snapshot thawed it
    assert_thawed(s, name)

    drv.fail_on["copy"] = OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        drv.begin_snapshot(name, "vdb", "e", tmp_path / "e", quiesce=True, require_quiesce=True)
    assert not (tmp_path / "e").exists()
    assert_thawed(s, name)


def test_fake_max_frozen_and_extents(tmp_path):
    s = fake_setup(tmp_path)
    drv, name = s.driver, s.agent_guest
    drv.freeze_seconds = 0.2
    with pytest.raises(QuiesceFailed):
        drv.begin_snapshot(name, "vdb", "slow", tmp_path / "slow", quiesce=True,
                           require_quiesce=True, max_frozen=0.1)
    assert_thawed(s, name)
    h = drv.begin_snapshot(name, "vdb", "slow2", tmp_path / "slow2", quiesce=True,
                           require_quiesce=False, max_frozen=0.1)
    assert not h.quiesced
    drv.end_snapshot(name, "slow2", h.workdir)

    drv.freeze_seconds = 0.0
    h = drv.begin_snapshot(name, "vdb", "p", tmp_path / "p", quiesce=True, require_quiesce=True)
    copy = h.workdir / "vdb.raw"
    assert copy.stat().st_blocks * 512 < h.virtual_size                # holes stayed holes
    assert_same_content(copy, tmp_path / f"{name}-vdb.img")
    reader = drv.open_snapshot(name, "p", h.workdir)
    data = [(e.offset, e.offset + e.length) for e in reader.extents() if not e.zero]
    for written in (0, 3 * MiB + 4096, 8 * MiB - 4096):               # the data, and little else
        assert any(a <= written and written + 4096 <= b for a, b in data), (written, data)
    assert sum(b - a for a, b in data) <= 64 * 1024
    reader.close()
    drv.destroy(name)
    with pytest.raises(DriverError, match="destroyed"):
        drv.open_snapshot(name, "p", h.workdir)                        # the point in time went with it


# -- volumes (seed 002) ---------------------------------------------------------------------------------------
VOLUME = 16 * MiB


def chain_names(path: Path, fmt: str = "qcow2") -> list[str]:
    out = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", "-f", fmt, str(path)],
                         capture_output=True, text=True, check=True).stdout
    return [Path(d["filename"]).name for d in json.loads(out)]


def volume_file(share: Path) -> tuple[str, Path]:
    """A raw sparse volume file with data at a few places (as the qcow2file driver makes one)."""
    vid = str(uuid.uuid4())
    return vid, fake_disk(share / f"volume-{vid}", VOLUME)


def overlay(share: Path, vid: str, sid: str, backing: Path, fmt: str) -> Path:
    path = share / f"volume-{vid}.{sid}"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", backing.name, "-F", fmt, str(path),
                    str(VOLUME)], check=True, cwd=share)
    return path


def host_writes(path: Path, offset: int, pattern: int) -> None:
    """What a guest would write, written into the active file while nothing holds it."""
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset} 64k", str(path)],
                   check=True, capture_output=True)


class Reports:
    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def job(self) -> VolumeJob:
        return VolumeJob(lambda done, total: self.seen.append((done, total)))

    def check(self) -> None:
        assert self.seen and self.seen[-1][0] == self.seen[-1][1] > 0, self.seen
        assert [d for d, _t in self.seen] == sorted(d for d, _t in self.seen), self.seen


@pytest.mark.timeout(180)
def test_volume_snapshots_and_merges(vsetup):
    drv, name, share = vsetup.driver, vsetup.volume_guest, vsetup.share
    vid, base = volume_file(share)
    disk = VolumeDisk(vid, "vdc", base, "raw")
    drv.attach_volume(name, disk)
    drv.attach_volume(name, disk)                                  # idempotent
    assert drv.volume_disks(name) == [disk]
    if vsetup.kind != "remote":      # (the host API's domain view is the same call)
        assert any(d.target == "vdc" and d.path == base for d in drv.get_info(name).disks)
    with pytest.raises(errors.Conflict):
        drv.attach_volume(name, VolumeDisk(str(uuid.uuid4()), "vdc", base, "raw"))

    snaps, data = {}, {}
    active, fmt = base, "raw"
    for n, sid in enumerate(("s1", "s2", "s3")):
        new = overlay(share, vid, sid, active, fmt)
        quiesced, frozen = drv.volume_snapshot_create(name, vid, new, quiesce=True, require_quiesce=True)
        assert quiesced and 0 <= frozen < 1.0
        if vsetup.kind != "remote":          # (the host API does not tell: its own driver does)
            assert_thawed(vsetup, name)
        assert drv.volume_snapshot_create(name, vid, new, quiesce=True, require_quiesce=True) == (False, 0.0)
        assert drv.volume_disks(name) == [VolumeDisk(vid, "vdc", new, "qcow2")]
        assert chain_names(new) == [new.name, *chain_names(active, fmt)]
        snaps[sid], data[sid] = new, qemu_read(active, fmt)
        if vsetup.kind != "libvirt":                               # a guest writing (libvirt's: its own test)
            host_writes(new, n * MiB, 0x41 + n)
        active, fmt = new, "qcow2"
    final = qemu_read(active)

    # The middle snapshot's overlay is committed into its backing file (Cinder's delete_info).
    reports = Reports()
    drv.volume_snapshot_delete(name, vid, file_to_merge=snaps["s2"].name, merge_target_file=snaps["s1"].name,
                               progress=reports.job())
    reports.check()
    assert chain_names(active) == [snaps["s3"].name, snaps["s1"].name, base.name]
    snaps["s2"].unlink()
    assert qemu_read(snaps["s1"]) == data["s3"] and qemu_read(active) == final
    drv.volume_snapshot_delete(name, vid, file_to_merge=snaps["s2"].name, merge_target_file=snaps["s1"].name)

    # The newest snapshot's overlay is the active file: rebased onto what is below its backing.
    reports = Reports()
    drv.volume_snapshot_delete(name, vid, file_to_merge=base.name, merge_target_file=None, progress=reports.job())
    reports.check()
    assert chain_names(active) == [snaps["s3"].name, base.name]
    snaps["s1"].unlink()
    assert qemu_read(base, "raw") == data["s1"] and qemu_read(active) == final
    drv.volume_snapshot_delete(name, vid, file_to_merge=base.name, merge_target_file=None)   # done already

    # The last one: flattened.
    drv.volume_snapshot_delete(name, vid, file_to_merge=None, merge_target_file=None, progress=Reports().job())
    assert chain_names(active) == [snaps["s3"].name]
    base.unlink()
    assert qemu_read(active) == final
    assert drv.volume_disks(name) == [VolumeDisk(vid, "vdc", active, "qcow2")]

    drv.detach_volume(name, vid)
    assert drv.volume_disks(name) == []
    drv.detach_volume(name, vid)                                   # absent: no error


@pytest.mark.timeout(120)
def test_volume_bad_requests(vsetup):
    drv, name, share = vsetup.driver, vsetup.volume_guest, vsetup.share
    vid, base = volume_file(share)
    with pytest.raises(DomainNotFound):
        drv.attach_volume("no-such-domain", VolumeDisk(vid, "vdc", base, "raw"))
    with pytest.raises(DomainNotFound):
        drv.volume_disks("no-such-domain")
    drv.attach_volume(name, VolumeDisk(vid, "vdc", base, "raw"))
    try:
        stranger = share / "stranger.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(stranger), str(VOLUME)], check=True)
        with pytest.raises(DriverError):
            drv.volume_snapshot_create(name, vid, stranger, quiesce=False, require_quiesce=False)
        with pytest.raises(DriverError):
            drv.volume_snapshot_create(name, str(uuid.uuid4()), stranger, quiesce=False, require_quiesce=False)
        for bad in ("../x", "a/b", ".."):
            with pytest.raises(errors.Invalid):
                drv.volume_snapshot_delete(name, vid, file_to_merge=bad, merge_target_file=None)
        with pytest.raises(errors.Invalid):
            drv.volume_snapshot_delete(name, vid, file_to_merge=None, merge_target_file=base.name)
        with pytest.raises(DriverError):             # not below the active file's backing: nothing to do
            drv.volume_snapshot_delete(name, vid, file_to_merge="volume-nothing", merge_target_file=None)
        assert drv.volume_disks(name) == [VolumeDisk(vid, "vdc", base, "raw")]
    finally:
        drv.detach_volume(name, vid)


@pytest.mark.timeout(120)
def test_volume_snapshot_of_a_stopped_domain_moves_the_definition(local_vsetup):
    vsetup = local_vsetup
    drv, share = vsetup.driver, vsetup.share
    spec = vsetup.new_spec("volstop")
    drv.spawn(spec)
    drv.power_off(spec.name, timeout=vsetup.off_timeout)
    vid, base = volume_file(share)
    drv.attach_volume(spec.name, VolumeDisk(vid, "vdc", base, "raw"))
    new = overlay(share, vid, "s1", base, "raw")
    assert drv.volume_snapshot_create(spec.name, vid, new, quiesce=True, require_quiesce=True) == (False, 0.0)
    assert drv.volume_disks(spec.name) == [VolumeDisk(vid, "vdc", new, "qcow2")]
    host_writes(new, 0, 0x5a)
    final = qemu_read(new)
    reports = Reports()
    drv.volume_snapshot_delete(spec.name, vid, file_to_merge=None, merge_target_file=None, progress=reports.job())
    reports.check()
    assert chain_names(new) == [new.name] and qemu_read(new) == final
    drv.power_on(spec.name)
    assert drv.volume_disks(spec.name) == [VolumeDisk(vid, "vdc", new, "qcow2")]
    drv.destroy(spec.name)


def qemu_read(path: Path, fmt: str = "qcow2") -> bytes:
    """What the chain under ``path`` holds, as a guest reads it."""
    out = path.parent / f".read-{uuid.uuid4().hex[:8]}"
    try:
        subprocess.run(["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", str(path), str(out)],
                       capture_output=True, check=True)
        return out.read_bytes()
    finally:
        out.unlink(missing_ok=True)


def test_remote_merge_streams_progress_then_its_outcome(remote_setup, monkeypatch):
    """A merge's answer streams its progress (and heartbeats while the job reports none); an
    error after the first line still reaches the caller as the driver's own error, a host
    fault's text staying in the host's log."""
    from freezeframe.compute import hostapi

    monkeypatch.setattr(hostapi, "HEARTBEAT", 0.05)
    remote, local = remote_setup.driver, remote_setup.local
    outcome: list[BaseException | None] = []

    def merge(name, volume_id, *, file_to_merge, merge_target_file, progress=None):
        time.sleep(0.2)                                     # heartbeats, no progress yet
        for done in (1, 2):
            progress.report(done, 4)
            time.sleep(0.1)
        if outcome[0] is not None:
            raise outcome[0]

    monkeypatch.setattr(local, "volume_snapshot_delete", merge)
    vid = str(uuid.uuid4())
    for exc, expected in ((None, None), (DriverError("qemu died at /secret/path"), DriverError),
                          (errors.Conflict("the volume is busy"), errors.Conflict)):
        outcome[:] = [exc]
        seen: list[tuple[int, int]] = []
        job = VolumeJob(lambda done, total: seen.append((done, total)))
        if expected is None:
            remote.volume_snapshot_delete("fake-agent", vid, file_to_merge=None, merge_target_file=None, progress=job)
        else:
            with pytest.raises(expected) as raised:
                remote.volume_snapshot_delete("fake-agent", vid, file_to_merge=None, merge_target_file=None,
                                              progress=job)
            assert "/secret" not in str(raised.value)
            if expected is errors.Conflict:
                assert "the volume is busy" in str(raised.value)
        assert seen[0] == (1, 4) and seen[-1] == (2, 4) and (0, 0) not in seen, seen


def test_fake_keeps_only_names_beside_the_fake_volume_driver(tmp_path):
    """The fake volume driver makes no overlay files: the fake keeps the chain's names, with
    the same rules, and a restarted ``serve`` (the persistent fake) finds them again."""
    from freezeframe.compute.drivers.fake import PersistentFakeDriver

    state = tmp_path / "domains.json"
    drv = PersistentFakeDriver(state)
    spec = GuestSpec(name="names", uuid=str(uuid.uuid4()), vcpus=1, memory_mb=64, root_disk=fake_disk(tmp_path / "vda"))
    drv.spawn(spec)
    vid, base = volume_file(tmp_path)
    drv.attach_volume("names", VolumeDisk(vid, "vdb", base, "raw"))
    names = [f"volume-{vid}.{s}" for s in ("s1", "s2", "s3")]
    for n in names:
        assert drv.volume_snapshot_create("names", vid, tmp_path / n, quiesce=False, require_quiesce=False) == (False, 0.0)
    assert drv.volume_disks("names") == [VolumeDisk(vid, "vdb", tmp_path / names[2], "qcow2")]
    assert next(d for d in drv.get_info("names").disks if d.target == "vdb").virtual_size == VOLUME

    drv = PersistentFakeDriver(state)                              # a new process
    reports = Reports()
    drv.volume_snapshot_delete("names", vid, file_to_merge=names[1], merge_target_file=names[0], progress=reports.job())
    reports.check()
    with pytest.raises(DriverError):
        drv.volume_snapshot_delete("names", vid, file_to_merge=base.name, merge_target_file=names[2])   # above it
    drv.volume_snapshot_delete("names", vid, file_to_merge=base.name, merge_target_file=None)
    assert PersistentFakeDriver(state).host.domains["names"].chains[vid] == [(names[2], "qcow2"), (base.name, "raw")]
    drv.volume_snapshot_delete("names", vid, file_to_merge=names[2], merge_target_file=base.name)      # the active one
    assert drv.volume_disks("names") == [VolumeDisk(vid, "vdb", base, "raw")]
    drv.detach_volume("names", vid)
    assert PersistentFakeDriver(state).volume_disks("names") == []


# -- group snapshots (seed 003) -----------------------------------------------------------------------------
class OneDisk:
    """The driver seen through one disk of a group (what ``read_snapshot`` reads)."""

    def __init__(self, drv: VirtDriver, disk: str) -> None:
        self.drv, self.disk = drv, disk

    def open_snapshot(self, name: str, snapshot_id: str, workdir: Path):
        return self.drv.open_snapshot(name, snapshot_id, workdir, disk=self.disk)


def read_group_disk(s: Setup, h: GroupHandle, workdir: Path, disk: str, out: Path) -> Path | None:
    """A local disk of a group, streamed as the workflow does (through the host API: what it was
    asked to export)."""
    if s.kind == "remote":
        before = len(s.exports)
        assert s.driver.open_snapshot(h.domain, h.snapshot_id, workdir, disk=disk) is None
        source, where, export_name = s.exports[before]
        assert where == s.host_workdir / h.snapshot_id / "disk-exports" / disk
        assert export_name == f"snapshot-{h.snapshot_id}-{disk}" and Path(source.path).name == f"{disk}.raw"
        return None
    one = SnapshotHandle(h.snapshot_id, h.domain, disk, dict(h.disks)[disk], workdir, h.quiesced, h.frozen_seconds)
    return read_snapshot(OneDisk(s.driver, disk), one, out)


def inject_failure_after_the_switch(s: Setup, monkeypatch) -> None:
    """The local disks' point in time fails once the volumes moved."""
    if s.kind == "libvirt":
        def refused(dom, backup):
            raise DriverError("starting the backup: refused (injected)")
        monkeypatch.setattr(s.driver, "_backup_begin", refused)
    else:
        (s.local if s.kind == "remote" else s.driver).fail_on["copy"] = DriverError("copy refused (injected)")


@pytest.mark.timeout(300)
def test_group_snapshot(vsetup, monkeypatch):
    drv, name, share = vsetup.driver, vsetup.volume_guest, vsetup.share
    wd = vsetup.workdir("group")
    vols = []
    for target in ("vdc", "vdd"):
        vid, base = volume_file(share)
        drv.attach_volume(name, VolumeDisk(vid, target, base, "raw"))
        vols.append((vid, target, base))
    try:
        info = drv.get_info(name)
        disks = [d.target for d in info.disks if d.target not in ("vdc", "vdd")]
        files = {d.target: d.path for d in info.disks}
        data = {vid: qemu_read(base, "raw") for vid, _t, base in vols}
        volumes = [(vid, overlay(share, vid, "g1", base, "raw")) for vid, _t, base in vols]
        sid = str(uuid.uuid4())

        # A failure once the volumes moved: back on their old files, nothing left.
        inject_failure_after_the_switch(vsetup, monkeypatch)
        with pytest.raises(DriverError, match="injected" if vsetup.kind != "remote" else "hypervisor failed"):
            drv.begin_group_snapshot(name, sid, wd, disks=disks, volumes=volumes, quiesce=True, require_quiesce=True)
        monkeypatch.undo()
        if vsetup.kind != "libvirt":
            (vsetup.local if vsetup.kind == "remote" else drv).fail_on.pop("copy")
        assert drv.volume_disks(name) == [VolumeDisk(vid, t, base, "raw") for vid, t, base in vols]
        if vsetup.kind != "remote":
            assert not wd.exists()
            assert_thawed(vsetup, name)

        events = len(drv.events) if isinstance(drv, FakeDriver) else 0
        h = drv.begin_group_snapshot(name, sid, wd, disks=disks, volumes=volumes, quiesce=True, require_quiesce=True)
        assert (h.snapshot_id, h.domain) == (sid, name)
        assert h.quiesced and 0 < h.frozen_seconds < 1.0
        assert h.disks == tuple((d.target, d.virtual_size) for d in info.disks if d.target in disks)
        assert h.volumes == tuple(vid for vid, _f in volumes)
        if isinstance(drv, FakeDriver):
            assert [e for e, n in drv.events[events:] if n == name] == ["freeze", "thaw"]     # frozen once
        if vsetup.kind != "remote":
            assert_thawed(vsetup, name)
        assert drv.volume_disks(name) == [VolumeDisk(vid, t, new, "qcow2") for (vid, t, _b), (_v, new)
                                          in zip(vols, volumes)]
        assert drv.begin_group_snapshot(name, sid, wd, disks=disks, volumes=volumes, quiesce=True,
                                        require_quiesce=True) == h                          # idempotent
        for t in disks:
            out = read_group_disk(vsetup, h, wd, t, wd.parent / f"group-{t}.qcow2")
            if out is not None:
                assert_same_content(out, files[t])
        for vid, _t, base in vols:
            assert qemu_read(base, "raw") == data[vid]         # the old file: the volume's point in time
        if vsetup.kind != "remote":
            with pytest.raises(DriverError):
                drv.open_snapshot(name, sid, wd, disk="vdc")    # a volume is not read through the group
            if len(disks) > 1:
                with pytest.raises(DriverError):
                    drv.open_snapshot(name, sid, wd)            # which one?
        drv.end_snapshot(name, sid, wd)
        drv.end_snapshot(name, sid, wd)                                                      # idempotent
        if vsetup.kind != "remote":
            assert not wd.exists()
            with pytest.raises(DriverError):
                drv.open_snapshot(name, sid, wd, disk=disks[0])
        assert [v.path for v in drv.volume_disks(name)] == [new for _v, new in volumes]     # they stay
        with pytest.raises(errors.Invalid):
            drv.begin_group_snapshot(name, sid, wd, disks=[], volumes=[], quiesce=False, require_quiesce=False)
    finally:
        for vid, _t, _b in vols:
            drv.detach_volume(name, vid)


@pytest.mark.timeout(300)
def test_group_snapshot_of_a_stopped_domain(local_vsetup):
    vsetup = local_vsetup
    drv, share = vsetup.driver, vsetup.share
    spec = vsetup.new_spec("grpstop")
    drv.spawn(spec)
    drv.power_off(spec.name, timeout=vsetup.off_timeout)
    vid, base = volume_file(share)
    drv.attach_volume(spec.name, VolumeDisk(vid, "vdc", base, "raw"))
    new = overlay(share, vid, "g1", base, "raw")
    wd = vsetup.workdir("grpstop")
    h = drv.begin_group_snapshot(spec.name, "gs", wd, disks=["vda", "vdb"], volumes=[(vid, new)], quiesce=True,
                                 require_quiesce=True)
    assert not h.quiesced and h.frozen_seconds == 0 and [t for t, _s in h.disks] == ["vda", "vdb"]
    assert drv.volume_disks(spec.name) == [VolumeDisk(vid, "vdc", new, "qcow2")]
    for t, path in zip(("vda", "vdb"), (spec.root_disk, *spec.extra_disks)):
        assert_same_content(read_group_disk(vsetup, h, wd, t, wd.parent / f"grpstop-{t}.qcow2"), path)
    drv.end_snapshot(spec.name, "gs", wd)
    assert not wd.exists()
    drv.power_on(spec.name)
    assert drv.volume_disks(spec.name) == [VolumeDisk(vid, "vdc", new, "qcow2")]
    drv.destroy(spec.name)


def test_fake_group_interrupted_attempts_are_undone(tmp_path, monkeypatch):
    """An attempt that died after the switch (its record left, nothing cleaned): the next call
    (another process) moves the volumes back and takes the group anew; end_snapshot alone also
    puts them back. A volume already on its new file, no attempt of ours having moved it, is
    taken as done."""
    s = fake_setup(tmp_path)
    drv, name = s.driver, s.agent_guest
    vid, base = volume_file(s.share)
    drv.attach_volume(name, VolumeDisk(vid, "vdc", base, "raw"))

    class Died(BaseException):
        pass

    for ending in ("resume", "end"):
        new = overlay(s.share, vid, ending, drv.volume_disks(name)[0].path, drv.volume_disks(name)[0].format)
        before = drv.volume_disks(name)[0]
        wd = tmp_path / ending

        def died(source, target):
            raise Died()
        monkeypatch.setattr(drv, "_point_in_time", died)
        monkeypatch.setattr(drv, "_release", lambda *a, **k: None)
        with pytest.raises(Died):
            drv.begin_group_snapshot(name, ending, wd, disks=["vda"], volumes=[(vid, new)], quiesce=False,
                                     require_quiesce=False)
        monkeypatch.undo()
        assert drv.volume_disks(name)[0].path == new
        other = FakeDriver(host=drv.host)
        if ending == "end":
            other.end_snapshot(name, ending, wd)
            assert drv.volume_disks(name) == [before] and not wd.exists()
            continue
        h = other.begin_group_snapshot(name, ending, wd, disks=["vda"], volumes=[(vid, new)], quiesce=True,
                                       require_quiesce=True)
        assert h.quiesced and drv.volume_disks(name)[0].path == new
        other.open_snapshot(name, ending, wd).close()            # one disk: no need to name it
        other.end_snapshot(name, ending, wd)
        assert drv.volume_disks(name)[0].path == new

    # Already on its new file (say, the volume's own assisted snapshot): done, not moved again.
    now = drv.volume_disks(name)[0]
    h = drv.begin_group_snapshot(name, "there", tmp_path / "there", disks=[], volumes=[(vid, now.path)],
                                 quiesce=True, require_quiesce=True)
    assert h.volumes == (vid,) and h.disks == () and drv.volume_disks(name) == [now]
    drv.end_snapshot(name, "there", tmp_path / "there")
    assert drv.volume_disks(name) == [now]


def test_fake_group_quiesce_rules(tmp_path):
    s = fake_setup(tmp_path)
    drv = s.driver
    vid, base = volume_file(s.share)
    drv.attach_volume(s.noagent_guest, VolumeDisk(vid, "vdc", base, "raw"))
    new = overlay(s.share, vid, "q", base, "raw")
    with pytest.raises(QuiesceFailed):
        drv.begin_group_snapshot(s.noagent_guest, "q", tmp_path / "q", disks=["vda"], volumes=[(vid, new)],
                                 quiesce=True, require_quiesce=True)
    assert not (tmp_path / "q").exists() and drv.volume_disks(s.noagent_guest)[0].path == base
    h = drv.begin_group_snapshot(s.noagent_guest, "q", tmp_path / "q", disks=["vda"], volumes=[(vid, new)],
                                 quiesce=True, require_quiesce=False)
    assert not h.quiesced and h.frozen_seconds == 0
    drv.end_snapshot(s.noagent_guest, "q", tmp_path / "q")

    drv.freeze_seconds = 0.2                     # longer than max_frozen: not quiesced, thawed, undone
    vid2, base2 = volume_file(s.share)
    drv.attach_volume(s.agent_guest, VolumeDisk(vid2, "vdc", base2, "raw"))
    new2 = overlay(s.share, vid2, "slow", base2, "raw")
    with pytest.raises(QuiesceFailed):
        drv.begin_group_snapshot(s.agent_guest, "slow", tmp_path / "slow", disks=["vda", "vdb"],
                                 volumes=[(vid2, new2)], quiesce=True, require_quiesce=True, max_frozen=0.1)
    assert_thawed(s, s.agent_guest)
    assert drv.volume_disks(s.agent_guest)[0].path == base2 and not (tmp_path / "slow").exists()
    drv.fail_on["thaw"] = RuntimeError("thaw lost")
    drv.freeze_seconds = 0.0
    with pytest.raises(RuntimeError):
        drv.begin_group_snapshot(s.agent_guest, "t", tmp_path / "t", disks=["vda"], volumes=[(vid2, new2)],
                                 quiesce=True, require_quiesce=True)
    del drv.fail_on["thaw"]
    assert_thawed(s, s.agent_guest)
    assert drv.volume_disks(s.agent_guest)[0].path == base2


def test_persistent_fake_group_survives_a_restart(tmp_path):
    from freezeframe.compute.drivers.fake import PersistentFakeDriver

    state = tmp_path / "domains.json"
    drv = PersistentFakeDriver(state)
    spec = GuestSpec(name="grp", uuid=str(uuid.uuid4()), vcpus=1, memory_mb=64, root_disk=fake_disk(tmp_path / "vda"),
                     guest_agent=True)
    drv.spawn(spec)
    vid, base = volume_file(tmp_path)
    drv.attach_volume("grp", VolumeDisk(vid, "vdb", base, "raw"))
    new = overlay(tmp_path, vid, "g", base, "raw")
    h = drv.begin_group_snapshot("grp", "g", tmp_path / "g", disks=["vda"], volumes=[(vid, new)], quiesce=True,
                                 require_quiesce=True)
    again = PersistentFakeDriver(state)                          # a new process
    assert again.volume_disks("grp") == [VolumeDisk(vid, "vdb", new, "qcow2")]
    assert again.begin_group_snapshot("grp", "g", tmp_path / "g", disks=["vda"], volumes=[(vid, new)],
                                      quiesce=True, require_quiesce=True) == h
    again.end_snapshot("grp", "g", tmp_path / "g")
    assert PersistentFakeDriver(state).volume_disks("grp") == [VolumeDisk(vid, "vdb", new, "qcow2")]
