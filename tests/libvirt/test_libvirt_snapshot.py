"""Instance snapshots for real: libvirt (embedded mode, TCG) running the tiny test guest.

The guest (scripts/build-test-guest) mounts its data disk vdb at /data, runs qemu-ga and appends
"<seq> <uptime>" to /data/ticks every 50 ms. A quiesced snapshot of vdb must be a clean ext4
(a crash-consistent one needs journal recovery) whose ticks are a prefix of the live disk's. A
freeze shows in the ticks as a gap (calibrated with a plain 0.5 s agent freeze); the driver's
own freeze window is shorter than a tick here, so around a snapshot the writer must stall no
longer than the frozen time the driver reports.

The first half of this file is the harness the driver conformance suite shares
(tests/unit/compute/test_driver_conformance.py): libvirt allows one embedded root per process.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from freezeframe.compute.drivers.base import DomainNotFound, DriverError, GuestSpec, PowerState, QuiesceFailed
from freezeframe.blockdata.nbd import NbdError
from freezeframe.blockdata.qcow2stream import Layout, stream

pytestmark = [pytest.mark.libvirt]

ROOT = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT = 120.0


# -- harness (shared with the conformance suite) -------------------------------------------------
def libvirt_unavailable() -> str | None:
    """Why libvirt cannot run here, or None."""
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python is not installed in this venv (scripts/ensure-libvirt installs it)"
    for tool in ("qemu-system-x86_64", "qemu-img"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/ensure-libvirt installs it)"
    if shutil.which("apt-get") is None and not _guest_cached():
        return "the test guest is not built and there is no apt-get to fetch its packages"
    return None


def _guest_cached() -> bool:
    cache = Path(os.environ.get("FREEZEFRAME_CACHE", Path.home() / ".cache" / "freezeframe"))
    return (cache / "guest" / "out" / "stamp").exists()


_guest: dict[str, str] | None = None


def guest_files() -> dict[str, str]:
    """KERNEL, INITRD, DATA_DISK, CMDLINE of the tiny guest (scripts/build-test-guest, cached)."""
    global _guest
    if _guest is None:
        proc = subprocess.run([str(ROOT / "scripts" / "build-test-guest")], capture_output=True,
                              text=True, timeout=900)
        if proc.returncode != 0:
            pytest.fail(f"scripts/build-test-guest failed:\n{proc.stderr[-3000:]}")
        _guest = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return _guest



_embed_root: Path | None = None


def embed_root() -> Path:
    """The process's embedded libvirt root: short (socket paths), removed at exit with any
    domain a crashed test left running. libvirt's QEMU capabilities (a ~8 s probe) are kept
    across sessions in the freezeframe cache; libvirt re-validates them."""
    global _embed_root
    if _embed_root is None:
        from freezeframe.compute.drivers.libvirt import embedded_uri
        _embed_root = Path(tempfile.gettempdir()) / f"ffv-{os.getpid()}"
        embedded_uri(_embed_root)
        caps = _embed_root / "cache" / "qemu" / "capabilities"
        caps.mkdir(parents=True, exist_ok=True)
        for seed in _caps_cache().glob("*.xml"):
            shutil.copy2(seed, caps / seed.name)
        atexit.register(_remove_embed_root, _embed_root)
    return _embed_root


def _caps_cache() -> Path:
    return Path(os.environ.get("FREEZEFRAME_CACHE", Path.home() / ".cache" / "freezeframe")) / "libvirt-caps"


def _remove_embed_root(root: Path) -> None:
    from freezeframe.compute.drivers.libvirt import LibvirtDriver, embedded_uri
    try:
        driver = LibvirtDriver(embedded_uri(root))
        for info in driver.list_domains():
            driver.destroy(info.name)
        driver.close()
        _caps_cache().mkdir(parents=True, exist_ok=True)
        for probed in (root / "cache" / "qemu" / "capabilities").glob("*.xml"):
            shutil.copy2(probed, _caps_cache() / probed.name)
    except Exception:
        pass
    shutil.rmtree(root, ignore_errors=True)


def qemu_img_info(path: Path) -> dict:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


class GuestLab:
    """Tiny guests on the embedded libvirt, their disks in a workspace any user can traverse
    (QEMU may run unprivileged: libvirt then chowns disks, kernel and initrd)."""

    def __init__(self, prefix: str) -> None:
        from freezeframe.compute.drivers.libvirt import LibvirtDriver, embedded_uri
        self.prefix = prefix
        self.files = guest_files()
        self.ws = Path(tempfile.mkdtemp(prefix=f"ff-{prefix}-", dir="/var/tmp"))
        self.ws.chmod(0o755)
        (self.ws / "snapshots").mkdir()
        self.kernel = self.ws / Path(self.files["KERNEL"]).name
        self.initrd = self.ws / "initrd.img"
        self.data_template = self.ws / "data.img"
        shutil.copyfile(self.files["KERNEL"], self.kernel)
        shutil.copyfile(self.files["INITRD"], self.initrd)
        subprocess.run(["cp", "--sparse=always", self.files["DATA_DISK"], str(self.data_template)], check=True)
        # Embedded libvirt unless FREEZEFRAME_LIBVIRT_URI names a daemon (qemu:///system).
        self.uri = os.environ.get("FREEZEFRAME_LIBVIRT_URI") or embedded_uri(embed_root())
        self.driver = LibvirtDriver(self.uri, console_dir=self.ws)
        self.names: list[str] = []
        try:
            self.driver.conn
        except DriverError as exc:
            shutil.rmtree(self.ws, ignore_errors=True)
            pytest.skip(f"libvirt cannot run here ({self.uri}): {exc}")

    def workdir(self, name: str) -> Path:
        """A snapshot workdir QEMU can write into (pytest's tmp_path is root-only)."""
        return self.ws / "snapshots" / f"{name}-{uuid.uuid4().hex[:8]}"

    def new_driver(self):
        """Another driver instance on the same host (as a new process would make)."""
        from freezeframe.compute.drivers.libvirt import LibvirtDriver
        return LibvirtDriver(self.uri)

    def disk(self, name: str, *, data: bool = False, size: str = "16M", fill: str | None = None) -> Path:
        """A qcow2: an overlay on the ext4 data template (a chain to flatten), or a blank one,
        optionally filled with a byte pattern by qemu-io (``fill``: its size)."""
        path = self.ws / f"{name}.qcow2"
        path.unlink(missing_ok=True)
        if data:
            cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(self.data_template), str(path)]
        else:
            cmd = ["qemu-img", "create", "-q", "-f", "qcow2", str(path), size]
        subprocess.run(cmd, check=True)
        if fill:
            subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {fill}", str(path)],
                           check=True, capture_output=True)
        return path

    def spec(self, name: str, *, agent: bool = True, extra: tuple[Path, ...] = (), cmdline: str = "") -> GuestSpec:
        full = f"{self.prefix}-{name}"
        return GuestSpec(name=full, uuid=str(uuid.uuid4()), vcpus=1, memory_mb=256,
                         root_disk=self.disk(f"{name}-vda"), extra_disks=extra,
                         kernel=self.kernel, initrd=self.initrd,
                         cmdline=f"{self.files['CMDLINE']} {cmdline}".strip(), guest_agent=agent)

    def boot(self, spec: GuestSpec) -> None:
        self.driver.spawn(spec)
        self.names.append(spec.name)

    def console(self, name: str) -> str:
        try:
            return (self.ws / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def wait_ready(self, name: str, *, agent: bool = True, timeout: float = BOOT_TIMEOUT) -> float:
        """Seconds until the guest's agent answers (or its /init says ready)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if agent and self.driver.agent_available(name, timeout=1):
                return time.monotonic() - t0
            if not agent and "ff-guest: ready" in self.console(name):
                return time.monotonic() - t0
            time.sleep(0.2)
        pytest.fail(f"{name} not ready after {timeout} s; console:\n{self.console(name)[-3000:]}")

    def close(self) -> None:
        for name in self.names:
            try:
                self.driver.destroy(name)
            except DriverError:
                pass
        shutil.rmtree(self.ws, ignore_errors=True)


def ticks(raw_image: Path) -> list[tuple[int, float]]:
    """The (seq, uptime) lines of /ticks in an ext4 image, read without mounting."""
    out = subprocess.run(["debugfs", "-R", "cat /ticks", str(raw_image)], capture_output=True,
                         text=True, check=True).stdout
    lines = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2:
            lines.append((int(parts[0]), float(parts[1])))
    return lines


def read_snapshot(drv, h, out: Path) -> Path:
    """Stream the point in time as the snapshot workflow does (a qcow2 of its data ranges, read
    over NBD) into ``out``; it must be a clean standalone qcow2 of the disk's size."""
    reader = drv.open_snapshot(h.domain, h.snapshot_id, h.workdir)
    try:
        assert reader.size == h.virtual_size
        extents = reader.extents()
        assert sum(e.length for e in extents) == h.virtual_size
        layout = Layout.from_extents(h.virtual_size, [(e.offset, e.length) for e in extents if not e.zero])
        with open(out, "wb") as fh:
            for block in stream(layout, reader):
                fh.write(block)
    finally:
        reader.close()
    assert out.stat().st_size == layout.size
    check = subprocess.run(["qemu-img", "check", str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    info = qemu_img_info(out)
    assert info["format"] == "qcow2" and "backing-filename" not in info, info
    assert info["virtual-size"] == h.virtual_size
    return out


def to_raw(qcow2: Path, dest: Path) -> Path:
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(qcow2), str(dest)], check=True)
    return dest


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lab():
    reason = libvirt_unavailable()
    if reason:
        pytest.skip(reason)
    lab = GuestLab("ffs")
    try:
        t0 = time.monotonic()
        data = lab.disk("agent-vdb", data=True)
        big = lab.disk("agent-vdc", size="1G", fill="1G")      # a backup slow enough to abort
        lab.boot(lab.spec("agent", extra=(data, big)))
        lab.boot(lab.spec("noagent", extra=(lab.disk("noagent-vdb", data=True),), cmdline="ff.noagent"))
        timings = {"boot_agent": lab.wait_ready("ffs-agent"),
                   "boot_noagent": lab.wait_ready("ffs-noagent", agent=False)}
        timings["disks_and_boot"] = time.monotonic() - t0
        print(f"\nlibvirt guests booted: {timings}")
        yield lab
    finally:
        lab.close()


# -- the tests -------------------------------------------------------------------------------------
def ext4_header(raw: Path) -> str:
    return subprocess.run(["dumpe2fs", "-h", str(raw)], capture_output=True, text=True, check=True).stdout


@pytest.mark.timeout(300)
def test_quiesced_live_snapshot_is_clean_and_shows_the_freeze(lab, tmp_path):
    drv = lab.driver
    dom = drv.conn.lookupByName("ffs-agent")
    time.sleep(1.0)                           # let the writer lay down some ticks

    # Calibration: a plain 0.5 s agent freeze shows in the ticks as a gap of about 0.5 s.
    from freezeframe.compute.drivers import libvirt_agent
    libvirt_agent.freeze(dom, timeout=5)
    time.sleep(0.5)
    libvirt_agent.thaw(dom, timeout=5)
    time.sleep(0.5)

    t0 = time.monotonic()
    h1 = drv.begin_snapshot("ffs-agent", "vdb", "s1", lab.workdir("s1"), quiesce=True,
                            require_quiesce=True, max_frozen=1.0)
    begun = time.monotonic() - t0
    assert h1.quiesced
    assert 0 < h1.frozen_seconds < 1.0
    assert drv.guest_frozen("ffs-agent") is False          # thawed at once
    print(f"\nquiesced snapshot: begin {begun:.3f} s, frozen {h1.frozen_seconds:.3f} s")

    # The guest runs on and writes; s1 is read only now, after the guest overwrote its blocks:
    # the point in time held (copy-before-write into the scratch file).
    time.sleep(1.5)
    q1 = read_snapshot(drv, h1, tmp_path / "s1.qcow2")
    drv.end_snapshot("ffs-agent", "s1", h1.workdir)      # one backup job per domain at a time
    assert qemu_img_info(q1)["actual-size"] < h1.virtual_size / 4     # the disk's holes were not sent
    raw1 = to_raw(q1, tmp_path / "s1.raw")
    header = ext4_header(raw1)
    assert "Filesystem state:         clean" in header
    assert "needs_recovery" not in header
    fsck = subprocess.run(["e2fsck", "-fn", str(raw1)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    before = ticks(raw1)
    assert len(before) >= 20, before

    # Contrast: without the freeze, the same disk is only crash-consistent (journal to replay).
    h0 = drv.begin_snapshot("ffs-agent", "vdb", "s0", lab.workdir("s0"), quiesce=False,
                            require_quiesce=False)
    assert "needs_recovery" in ext4_header(to_raw(read_snapshot(drv, h0, tmp_path / "s0.qcow2"),
                                                  tmp_path / "s0.raw"))
    drv.end_snapshot("ffs-agent", "s0", h0.workdir)

    # A later snapshot has more ticks: s1's are a prefix of them (none written after s1's point
    # in time leaked into it), the calibration freeze is a gap of ~0.5 s, and the writer stalled
    # around the snapshot no longer than the freeze the driver reported (plus a tick).
    h2 = drv.begin_snapshot("ffs-agent", "vdb", "s2", lab.workdir("s2"), quiesce=True,
                            require_quiesce=True, max_frozen=1.0)
    after = ticks(to_raw(read_snapshot(drv, h2, tmp_path / "s2.qcow2"), tmp_path / "s2.raw"))
    assert after[: len(before)] == before
    assert len(after) >= len(before) + 10
    intervals = [b[1] - a[1] for a, b in zip(after, after[1:])]
    typical = sorted(intervals)[len(intervals) // 2]
    calibration = max(intervals[: len(before) - 1])
    gap = after[len(before)][1] - before[-1][1]
    print(f"ticks: typical interval {typical:.3f} s, 0.5 s agent freeze -> gap {calibration:.3f} s, "
          f"snapshot freeze {h1.frozen_seconds:.3f} s -> gap {gap:.3f} s")
    assert 0.45 <= calibration <= 0.5 + 4 * typical + 0.2
    assert gap <= h1.frozen_seconds + 2 * typical + 0.05
    for h in (h0, h1, h2):
        drv.end_snapshot("ffs-agent", h.snapshot_id, h.workdir)
        assert not h.workdir.exists()


@pytest.mark.timeout(120)
def test_require_quiesce_without_agent_fails_and_leaves_the_guest_alone(lab):
    drv = lab.driver
    assert not drv.agent_available("ffs-noagent", timeout=1)
    t0 = time.monotonic()
    wd = lab.workdir("nq")
    with pytest.raises(QuiesceFailed):
        drv.begin_snapshot("ffs-noagent", "vdb", "nq", wd, quiesce=True,
                           require_quiesce=True)
    assert time.monotonic() - t0 < 10
    assert not wd.exists()
    assert drv.get_info("ffs-noagent").state is PowerState.RUNNING
    dom = drv.conn.lookupByName("ffs-noagent")
    assert dom.jobStats().get("type", 0) == 0                # no job left behind
    # Not frozen: the writer goes on (ticks reach the disk with the next ext4 commit).
    h = drv.begin_snapshot("ffs-noagent", "vdb", "nq2", lab.workdir("nq2"), quiesce=True,
                           require_quiesce=False)
    assert not h.quiesced and h.frozen_seconds == 0
    drv.end_snapshot("ffs-noagent", "nq2", h.workdir)


@pytest.mark.timeout(120)
def test_freeze_longer_than_max_frozen_is_not_quiesced_and_thaws(lab):
    drv = lab.driver
    wd = lab.workdir("short")
    with pytest.raises(QuiesceFailed):
        drv.begin_snapshot("ffs-agent", "vdb", "short", wd, quiesce=True,
                           require_quiesce=True, max_frozen=0.01)
    assert drv.guest_frozen("ffs-agent") is False
    assert not wd.exists()
    assert drv.conn.lookupByName("ffs-agent").jobStats().get("type", 0) == 0


@pytest.mark.timeout(180)
def job_type(dom, within: float = 120.0) -> int:
    """The domain's current job type (0: none). libvirt answers "cannot acquire state change
    lock (held by monitor=qemu-event)" while QEMU's event for the job just ended is still being
    handled — slow under TCG on a loaded machine (30 s and more): asked again until it answers."""
    import libvirt
    deadline = time.monotonic() + within
    while True:
        try:
            return dom.jobStats().get("type", 0)
        except libvirt.libvirtError as exc:
            if "state change lock" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(1)


def test_end_snapshot_from_a_new_driver_ends_a_backup_being_read(lab):
    drv = lab.driver
    h = drv.begin_snapshot("ffs-agent", "vdc", "big", lab.workdir("big"), quiesce=False,
                           require_quiesce=False)
    reader = drv.open_snapshot("ffs-agent", "big", h.workdir)
    data = [(o, min(4 << 20, e.offset + e.length - o)) for e in reader.extents() if not e.zero
            for o in range(e.offset, e.offset + e.length, 4 << 20)]
    assert len(data) > 100                                    # the 1 GiB of data, 4 MiB at a time
    outcome: list = []

    def upload() -> None:                                     # an upload streaming it meanwhile
        try:
            for block in reader.pread_many(data):
                outcome.append(len(block))
                time.sleep(0.05)
        except Exception as exc:
            outcome.append(exc)

    uploader = threading.Thread(target=upload)
    uploader.start()
    while not outcome:
        time.sleep(0.01)
    other = lab.new_driver()
    other.end_snapshot("ffs-agent", "big", h.workdir)       # as a conductor cleaning up after a crash
    uploader.join(60)
    assert not h.workdir.exists()
    assert job_type(drv.conn.lookupByName("ffs-agent")) == 0
    assert drv.get_info("ffs-agent").state is PowerState.RUNNING
    assert isinstance(outcome[-1], NbdError), outcome[-3:]   # the reader saw the export go
    assert 0 < len(outcome) - 1 < len(data)
    reader.close()
    with pytest.raises(DriverError):
        drv.open_snapshot("ffs-agent", "big", h.workdir)
    other.end_snapshot("ffs-agent", "big", h.workdir)       # idempotent


@pytest.mark.timeout(180)
def test_cold_snapshot_of_a_shut_off_domain(lab):
    drv = lab.driver
    spec = lab.spec("cold", agent=False, extra=(lab.disk("cold-vdb", data=True),),
                    cmdline="ff.noagent ff.nowriter")
    lab.boot(spec)
    drv.power_off(spec.name, timeout=0)
    assert drv.get_info(spec.name).state is PowerState.SHUTDOWN
    t0 = time.monotonic()
    h = drv.begin_snapshot(spec.name, "vdb", "cold", lab.workdir("cold"), quiesce=True, require_quiesce=False)
    assert not h.quiesced
    with pytest.raises(DriverError):                          # the export holds the disk meanwhile
        drv.power_on(spec.name)
    out = read_snapshot(drv, h, lab.workdir("cold-out").with_suffix(".qcow2"))
    print(f"\ncold snapshot streamed in {time.monotonic() - t0:.3f} s")
    same = subprocess.run(["qemu-img", "compare", "-U", str(out), str(spec.extra_disks[0])],
                          capture_output=True, text=True)
    assert same.returncode == 0, same.stdout + same.stderr
    drv.end_snapshot(spec.name, "cold", h.workdir)
    assert not h.workdir.exists()
    drv.destroy(spec.name)
    with pytest.raises(DomainNotFound):
        drv.get_info(spec.name)
