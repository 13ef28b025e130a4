"""The conformance suite every virt driver passes: the fake always, libvirt (embedded mode, TCG,
the tiny test guest, booted once per module) wherever libvirt can run.

Each setup offers a running guest whose agent answers, a running guest whose agent does not, the
disk to snapshot on them, and a way to make a fresh guest and a second driver on the same host.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from freezeframe.compute.drivers.base import (
    DomainNotFound, DriverError, GuestSpec, PowerState, QuiesceFailed, VirtDriver,
)
from freezeframe.compute.drivers.fake import FakeDriver
from tests.libvirt.test_libvirt_snapshot import GuestLab, libvirt_unavailable, read_snapshot

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
    return Setup("fake", driver, "fake-agent", "fake-noagent", "vdb", new_spec=spec,
                 new_driver=lambda: FakeDriver(host=driver.host), off_timeout=0,
                 workdir=lambda name: tmp_path / "snapshots" / name)


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
        lab.wait_ready("ffc-agent")
        lab.wait_ready("ffc-noagent", agent=False)
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
                 new_driver=lab.new_driver, off_timeout=1, workdir=lab.workdir)


@pytest.fixture(params=["fake", pytest.param("libvirt", marks=pytest.mark.libvirt)])
def setup(request, tmp_path) -> Setup:
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
