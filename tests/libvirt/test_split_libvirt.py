"""The split deployment on the real hypervisor (issue 8 §6): network namespaces as hosts —
``freezeframe api`` on "api", ``freezeframe compute --host hb --driver libvirt`` on "hb" (libvirt's
embedded mode, ``qemu:///embed?root=<hb's data dir>/libvirt``, inside the compute process; QEMU
under TCG), conductors on "c1" and "c2" — sharing a private PostgreSQL and Redis on the bridge.

The tiny guest (scripts/build-test-guest) is registered as images and booted on hb through the
compute API; a conductor on another host snapshots it: hb freezes the guest, starts a pull-mode
backup and exports the point in time over NBD on TCP with TLS; the conductor reads it from there
and uploads it to the API host.

Then hb's compute process is killed with -9 mid-upload and restarted. What happens (printed and
asserted): libvirt's embedded driver dies with the process, but the guest's QEMU (libvirt
daemonized it) goes on running with its pull-mode backup job, and the TLS ``qemu-nbd`` export of
it (a ``--fork`` daemon) goes on serving, so the conductor's upload goes on undisturbed. Only the
steps that call hb's host API need the process: while it is away they pause (nothing reverted)
and resume once it is back. The restarted process's embedded libvirt reconnects to the same QEMU
and finds the backup job: a conductor that takes the workflow over is handed the same export
again, and the job is ended at the finish. The point in time is found again: IMAGE_ACTIVE, the
quiesced disk byte for byte, nothing left on hb.

Polling only, no fixed sleeps for synchronisation.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.conftest import SERVICE_TOKEN
from tests.functional.test_compute_snapshot import compute, wait_server
from tests.functional.test_jobboard import TTL, upload_percent
from tests.libvirt.test_libvirt_snapshot import guest_files, libvirt_unavailable, ticks
from tests.libvirt.test_server_snapshot_e2e import cloud_dir, fetch_raw, register_guest, snapshot_when_agent_answers
from tests.netns import HOST_PORT, Split, split

pytestmark = [pytest.mark.libvirt, pytest.mark.timeout(420)]

DATA_FS = 64 << 20          # the tiny guest's ext4 data disk (its root disk here); the padding follows it
HOSTS = ("api", "hb", "c1", "c2")


@contextlib.contextmanager
def libvirt_split(tmp_path: Path, env: dict | None = None) -> Iterator[Split]:
    """The split, hb's data dir one QEMU's user may traverse (with libvirt's cached QEMU
    capabilities); skips with the reason when libvirt, the guest or namespaces are unavailable."""
    reason = libvirt_unavailable()
    if reason:
        pytest.skip(reason)
    guest_files()                       # built (or found in the cache) before any host starts
    hb_dir = cloud_dir()
    try:
        with split(tmp_path, hosts=HOSTS, lease_ttl=TTL, env=env) as d:
            d.data_dirs["hb"] = hb_dir
            yield d
    finally:
        shutil.rmtree(hb_dir, ignore_errors=True)   # (the lab's teardown killed hb's QEMU and qemu-nbd)


def boot_guest(d: Split, padding: bytes) -> str:
    """The tiny guest booted on hb through the compute API; returns once its init says ready
    (data disk mounted, guest agent and ticks writer started)."""
    image_ref = register_guest(d.server, padding)
    with compute(d.server) as nova:
        resp = nova.post("/servers", json={"server": {"name": "tiny", "imageRef": image_ref, "flavorRef": "1"}})
        assert resp.status_code == 202, resp.text
        server_id = resp.json()["server"]["id"]
        wait_server(nova, server_id, "ACTIVE", timeout=120)
    assert len(host_domains(d)) == 1                    # on hb, the only compute host
    consoles = d.data_dir("hb") / "instances" / "_consoles"
    deadline = time.monotonic() + 120
    while not any("ff-guest: ready" in p.read_text(errors="replace") for p in consoles.glob("*.log")):
        assert time.monotonic() < deadline, f"the guest did not get ready:\n{console_text(d)}"
        time.sleep(0.2)
    return server_id


def console_text(d: Split) -> str:
    return "\n".join(f"{p.name}: {p.read_text(errors='replace')[-1500:]}"
                     for p in (d.data_dir("hb") / "instances" / "_consoles").glob("*.log"))


def qemu_of(d: Split) -> tuple[int, list[str]]:
    """The guest's QEMU process on hb (the only one there)."""
    found = [(pid, argv) for pid, argv in d.lab.processes("hb").items()
             if argv and os.path.basename(argv[0]).startswith("qemu-system")]
    assert len(found) == 1, found
    return found[0]


def qemu_nbd_on(d: Split) -> list[int]:
    return [pid for pid, argv in d.lab.processes("hb").items() if argv and os.path.basename(argv[0]) == "qemu-nbd"]


def backup_files_held(pid: int) -> list[str]:
    """The backup's files QEMU holds open: its scratch (copy-before-write) file while a pull-mode
    backup job runs on the domain (libvirt makes the job's scratch a blockdev of QEMU's)."""
    held = []
    with contextlib.suppress(FileNotFoundError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if "scratch" in target:
                    held.append(target)
    return held


def host_domains(d: Split) -> list[dict]:
    """What hb's compute process (its libvirt) sees."""
    resp = httpx.get(f"http://{d.lab.hosts['hb']}:{HOST_PORT}/host/v1/domains",
                     headers={"X-Auth-Token": SERVICE_TOKEN}, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()["domains"]


def assert_guest_snapshot(d: Split, image_id: str, padding: bytes, dest: Path) -> int:
    """The image is active and holds the guest's disk at its point in time: a clean (quiesced)
    ext4 with the ticks written before it, and the padding after it byte for byte. Returns the
    number of ticks."""
    with d.server.client() as images:
        image = images.get(f"/v2/images/{image_id}").json()
    assert image["status"] == "active" and image["os_freezeframe_workflow_state"] == "IMAGE_ACTIVE", image
    raw = fetch_raw(d.server, image_id, dest)
    try:
        fsck = subprocess.run(["e2fsck", "-fn", str(raw)], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        written = ticks(raw)
        assert written, "no tick of the guest's writer in its snapshot"
        with open(raw, "rb") as fh:
            fh.seek(DATA_FS)
            assert fh.read(len(padding) + 1) == padding          # every byte, none twice, nothing after
        return len(written)
    finally:
        raw.unlink(missing_ok=True)


def assert_nothing_left(d: Split, server_id: str, workflow_id: str) -> None:
    """The server ACTIVE with no task; nothing exported on hb, the workflow's workdir gone, and
    no backup job on the domain (QEMU holds no scratch file)."""
    with compute(d.server) as nova:
        shown = nova.get(f"/servers/{server_id}").json()["server"]
    assert shown["status"] == "ACTIVE" and shown["OS-EXT-STS:task_state"] is None, shown
    hb = d.data_dir("hb")
    assert not list(hb.rglob("export.json"))
    assert qemu_nbd_on(d) == []
    assert not (hb / "instances" / "_snapshots" / workflow_id).exists()
    assert backup_files_held(qemu_of(d)[0]) == []


def assert_conductors_hold_no_disk(tmp_path: Path) -> None:
    """The point in time never left hb as a file."""
    for conductor in ("c1", "c2"):
        leftovers = [p for p in (tmp_path / conductor).rglob("*") if p.is_file() and p.stat().st_size > 1 << 20]
        assert leftovers == [], leftovers


def test_a_conductor_on_another_host_snapshots_a_real_guest_on_host_b(tmp_path):
    with libvirt_split(tmp_path) as d:
        started = time.monotonic()
        d.start_compute("hb", driver="libvirt")
        d.start_conductor("c1")
        d.start_conductor("c2")
        padding = os.urandom(8 << 20)
        server_id = boot_guest(d, padding)
        booted = time.monotonic()
        image_id, workflow_id = snapshot_when_agent_answers(d.server, server_id, "split-snap")
        wf = d.wait_end(workflow_id, timeout=180)
        assert wf["state"] == "IMAGE_ACTIVE" and wf["owner"] in ("c1", "c2") and wf["host"] == "hb", wf
        local = next(h for h in wf["history"] if h["state"] == "LOCAL_SNAPSHOT_COMPLETE")
        assert local["detail"].startswith("frozen"), local        # quiesced through hb's guest agent
        n = assert_guest_snapshot(d, image_id, padding, tmp_path / "snap.raw")
        print(f"\nsplit libvirt snapshot: guest ready in {booted - started:.1f}s, snapshot by {wf['owner']} in "
              f"{time.monotonic() - booted:.1f}s ({local['detail']}; {n} ticks)")
        assert_conductors_hold_no_disk(tmp_path)
        assert_nothing_left(d, server_id, workflow_id)


# ~33 MiB (the guest's ~1 MiB of data and 32 MiB of padding) at 2 MiB/s in parts of 1 MiB: a ~17 s upload
# (a restart of the compute process takes 2-4 s on a busy 2-CPU machine running the TCG guest).
SLOW = {"FREEZEFRAME_CONDUCTOR__UPLOAD_RATE": str(2 << 20), "FREEZEFRAME_CONDUCTOR__UPLOAD_CHUNK": str(1 << 20),
        "FREEZEFRAME_IMAGES__CHUNK_SIZE": str(1 << 20)}


@pytest.mark.parametrize("how", ["restarted_at_once", "down_until_the_upload_ends", "with_its_conductor"])
def test_kill_9_of_the_libvirt_compute_process_mid_snapshot_then_restart(tmp_path, how):
    """kill -9 of hb's compute process (and so of its embedded libvirt) at UPLOAD_20 or later:
    - restarted_at_once: restarted while the conductor still uploads;
    - down_until_the_upload_ends: restarted only once the upload is over and the workflow's last
      step, which needs hb, has paused for want of it;
    - with_its_conductor: the conductor that runs the workflow killed with it, hb restarted;
      the other conductor takes the workflow over and reads the rest of the point in time
      through the new compute process."""
    with libvirt_split(tmp_path, env=SLOW) as d:
        d.start_compute("hb", driver="libvirt")
        d.start_conductor("c1")
        d.start_conductor("c2")
        padding = os.urandom(32 << 20)
        server_id = boot_guest(d, padding)
        image_id, workflow_id = snapshot_when_agent_answers(d.server, server_id, "compute-killed")
        owner = d.wait(workflow_id, lambda w: upload_percent(w) >= 20, timeout=180)["owner"]
        other = "c2" if owner == "c1" else "c1"
        qemu_pid, _ = qemu_of(d)
        exports = qemu_nbd_on(d)
        assert len(exports) == 1 and backup_files_held(qemu_pid), (exports, backup_files_held(qemu_pid))

        killed = d.kill("hb")
        at_kill = d.workflow(workflow_id)
        if how == "with_its_conductor":
            d.kill(owner)
        # What the kill -9 of the compute process (and of its embedded libvirt) leaves on hb: the
        # guest's QEMU, with the backup job holding the point in time, and the TLS export of it.
        facts = {"qemu alive": qemu_of(d)[0] == qemu_pid, "backup job in QEMU": bool(backup_files_held(qemu_pid)),
                 "qemu-nbd export alive": qemu_nbd_on(d) == exports}
        if how == "down_until_the_upload_ends":
            # Uploaded while hb was away (the conductor reads hb's qemu-nbd, not its compute
            # process); the end of the point in time needs hb: paused, the claim given back.
            paused = d.wait(workflow_id, lambda w: w["state"] == "UPLOAD_COMPLETE" and w["owner"] is None,
                            timeout=120, every=0.2)
            with d.server.client() as images:
                assert images.get(f"/v2/images/{image_id}").json()["status"] == "active"
            assert backup_files_held(qemu_pid) and qemu_nbd_on(d) == exports    # held on hb meanwhile
            facts["paused"] = paused["state"]
        log_before = len(d.log_text("hb"))
        d.start_compute("hb", driver="libvirt")
        restarted = time.time() - killed
        # The restarted process's embedded libvirt reconnects to the running QEMU (the same process).
        domains = host_domains(d)
        assert [x["state"] for x in domains] == ["running"] and qemu_of(d)[0] == qemu_pid, domains
        during = d.workflow(workflow_id)
        if how == "with_its_conductor":
            # The other conductor reads on through the new compute process: which export?
            d.wait(workflow_id, lambda w: w["owner"] == other and upload_percent(w) >= upload_percent(at_kill) + 20,
                   timeout=120)
            facts["export after the takeover"] = "the same qemu-nbd" if qemu_nbd_on(d) == exports else qemu_nbd_on(d)

        wf = d.wait_end(workflow_id, timeout=180)
        history = [h["state"] for h in wf["history"]]
        done = next((h for h in wf["history"] if h["state"] == "UPLOAD_COMPLETE"), None)
        fence = d.fence(workflow_id)
        print(f"\n[{how}] kill -9 of hb's compute process at {at_kill['state']}: {facts}; restarted and answering "
              f"{restarted:.1f}s after the kill (workflow then {during['state']}, owner {during['owner']}); "
              f"ended {wf['state']} by {wf['owner']} (fence {fence}; "
              f"{done['detail'] if done else wf['failure_reason']})")
        assert facts["qemu alive"] and facts["backup job in QEMU"] and facts["qemu-nbd export alive"], facts
        if how == "with_its_conductor":
            # (its libvirt found the backup job, so the running export of it was handed out again)
            assert facts["export after the takeover"] == "the same qemu-nbd", facts
        # The point in time was found again: the same quiesced disk, every byte of it.
        assert wf["state"] == "IMAGE_ACTIVE" and wf["host"] == "hb", wf
        assert len(history) == len(set(history)) and history[-2:] == ["UPLOAD_COMPLETE", "IMAGE_ACTIVE"], history
        resumed_at = int(done["detail"].rsplit(" ", 1)[1])
        if how == "restarted_at_once":
            # hb back before the upload needed it again: its conductor went on undisturbed.
            assert during["state"] != "UPLOAD_COMPLETE" and wf["owner"] == owner and fence == 1, (during, fence)
            assert resumed_at == 0, done
        elif how == "down_until_the_upload_ends":
            assert resumed_at == 0 and fence >= 2, (done, fence)      # uploaded once; ended after a re-claim
        else:
            handed = int(at_kill["history"][-1]["detail"].split()[0])
            # (claimed once or more: a claim made while hb was still away pauses again at once)
            assert wf["owner"] == other and fence >= 2 and 0 < resumed_at, (wf, fence, done)   # resumed, not restarted
            assert handed - resumed_at <= 1 << 20, (handed, resumed_at)
        assert_guest_snapshot(d, image_id, padding, tmp_path / "snap.raw")
        assert_conductors_hold_no_disk(tmp_path)
        # Released by the restarted compute process: its embedded libvirt, reconnected to QEMU,
        # found the backup job and ended it.
        assert f"snapshot {workflow_id}: ended the backup job" in d.log_text("hb")[log_before:]
        assert_nothing_left(d, server_id, workflow_id)
        if how == "down_until_the_upload_ends":
            # No backup job left (one per domain): a second snapshot of the guest runs.
            _, second = snapshot_when_agent_answers(d.server, server_id, "after-restart")
            assert d.wait_end(second, timeout=180)["state"] == "IMAGE_ACTIVE"
            assert_nothing_left(d, server_id, second)
