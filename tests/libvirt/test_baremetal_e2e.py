"""The whole bare-metal snapshot for real, once (issue 10 item 8).

A real `serve` (the Ironic API at /baremetal, the conductor's workflows, its WebDAV area, the
image service) and a libvirt domain (TCG, under the system daemon) that plays the node behind
the sushy-tools Redfish emulator. The node has two disks of different sizes holding known data
(5 GiB and 6 GiB, both >= 4 GiB: the agent picks the smallest, vda) and a NIC on QEMU user
networking: the guest reaches the host's 127.0.0.1 at 10.0.2.2 (the API and the WebDAV area),
and a host port is forwarded to the agent's 9999 (``kernel_append_params`` tells the agent to
advertise it as its callback_url).

The node is enrolled with the ``redfish`` driver, given a port with its MAC, managed and adopted
as active; an image is created (queued, qcow2) and ``PUT .../states/provision {"target":
"snapshot", "image_ref": ...}`` runs the seed's flow: the conductor remasters the agent ISO with
the node's parameters, inserts it as virtual media and reboots the node through Redfish; the
agent boots, looks the node up, heartbeats; the conductor commands the stream, the agent sends
the disk's data chunks into the WebDAV area; the conductor verifies them, uploads a qcow2 into
the image, removes the copy, ejects the CD and boots the node from its disk. The test follows the
node (snapshotting -> snapshot wait -> snapshotting -> active) and the workflow (its states and
progress), then checks the image's bytes equal the picked disk's (``qemu-img compare``) and not
the other disk's, the node's boot and power, and that the intermediate copy is gone. Last, the
compute service of the same `serve` (libvirt, embedded) boots a server from the node's image with
the tiny test guest's kernel and initramfs: the guest mounts vda, the node's disk, and prints on
its console the line the node's ext4 filesystem held. It prints the measured durations.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests import sushy
from tests.conftest import ADMIN_TOKEN, free_port, start_server
from tests.functional.test_compute_snapshot import compute, wait_server
from tests.libvirt.test_libvirt_snapshot import guest_files
from tests.libvirt.test_server_snapshot_e2e import cloud_dir, delete_servers

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
MAX = "latest"
MiB, GiB = 1 << 20, 1 << 30
CHUNK = 4 * MiB                 # the stream's chunk: a data chunk is sent whole
FLOW_TIMEOUT = 420.0            # the snapshot's limit (boot under TCG on 2 busy cores included)
# Where the known data goes on each disk (offset, length): the start, a place that is not
# chunk-aligned, the middle, the very end (the disk's size must come through). The picked disk
# starts with an ext4 filesystem (FS_SIZE) holding TICKS_LINE as /ticks instead: a server booted
# from the node's image with the tiny guest's kernel (ff.data=vda ff.diskticks) prints it.
FS_SIZE = 64 * MiB
TICKS_LINE = "1 bare-metal node bm-e2e was here"
PLACES = {0: [(1 * GiB + 3 * MiB + 12288, 2 * MiB), (3 * GiB, 1 * MiB), (5 * GiB - MiB, MiB)],
          1: [(0, 1 * MiB), (2 * GiB, 2 * MiB), (6 * GiB - MiB, MiB)]}


def agent_iso() -> Path:
    """scripts/build-agent-image's ISO (built once, cached); skip where it cannot be built."""
    cache = Path(os.environ.get("FREEZEFRAME_CACHE") or Path.home() / ".cache" / "freezeframe")
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is missing: the agent image is built from Debian packages")
    if shutil.which("apt-get") is None and not (cache / "agent" / "out" / "agent.iso").exists():
        pytest.skip("the agent ISO is not built and there is no apt-get to fetch its packages")
    proc = subprocess.run([str(ROOT / "scripts" / "build-agent-image")], capture_output=True, text=True,
                          timeout=1800)
    if proc.returncode != 0:
        pytest.fail(f"scripts/build-agent-image failed:\n{proc.stderr[-3000:]}")
    return Path(dict(ln.split("=", 1) for ln in proc.stdout.splitlines() if "=" in ln)["ISO"])


def ticks_fs(work: Path) -> Path:
    """A raw ext4 filesystem as scripts/bare-metal-lab --ticks makes it: /ticks = TICKS_LINE."""
    (work / "fs").mkdir()
    (work / "fs" / "ticks").write_text(TICKS_LINE + "\n")
    raw = work / "fs.raw"
    with open(raw, "wb") as f:
        f.truncate(FS_SIZE)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "ffdata", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                    "-d", str(work / "fs"), str(raw)], check=True, capture_output=True)
    return raw


def fill_disk(disk: Path, size: int, places: list[tuple[int, int]], label: str, work: Path,
              head: Path | None = None) -> None:
    """Known data at ``places`` of the qcow2 ``disk`` (a sparse raw file converted in its place),
    ``head``'s bytes at its start."""
    raw = work / f"{disk.stem}.raw"
    rng = random.Random(label)
    with open(raw, "wb") as f:
        f.truncate(size)
        if head is not None:
            f.write(head.read_bytes())
        for offset, length in places:
            head = f"FREEZEFRAME E2E {label} at {offset}\n".encode() * 64
            body = head + rng.randbytes(length - len(head))
            f.seek(offset)
            f.write(body)
    staged = disk.with_suffix(".new")
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(staged)], check=True)
    os.chmod(staged, 0o666)
    os.replace(staged, disk)
    raw.unlink()


def ironic(server) -> httpx.Client:
    return httpx.Client(base_url=server.url + "/baremetal/v1", timeout=60,
                        headers={"X-OpenStack-Ironic-API-Version": MAX, "X-Auth-Token": ADMIN_TOKEN})


def wait_state(c: httpx.Client, node: str, state: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = c.get(f"/nodes/{node}").json()
        if body["provision_state"] == state and body["target_provision_state"] is None:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


def at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_a_redfish_node_snapshot_through_the_agent_into_an_image(tmp_path):
    if (reason := sushy.unavailable()) is not None:
        pytest.skip(reason)
    iso = agent_iso()
    guest = guest_files()                # the tiny guest's kernel and initramfs, for the last step
    t_start = time.monotonic()
    api_port, dav_port, agent_port = free_port(), free_port(), free_port()
    data_dir = cloud_dir()               # traversable by QEMU (the compute side's embedded libvirt)
    with sushy.redfish_lab(memory_mib=768, disks=("5G", "6G"), nic=True, agent_port=agent_port) as lab:
        picked, other = lab.disks
        fill_disk(picked, 5 * GiB, PLACES[0], "vda-picked", tmp_path, head=ticks_fs(tmp_path))
        fill_disk(other, 6 * GiB, PLACES[1], "vdb-other", tmp_path)
        server = start_server(data_dir, port=api_port, env={
            "FREEZEFRAME_COMPUTE__DRIVER": "libvirt",
            "FREEZEFRAME_BAREMETAL__API_URL": f"http://10.0.2.2:{api_port}/baremetal",
            "FREEZEFRAME_BAREMETAL__WEBDAV_BIND": f"127.0.0.1:{dav_port}",
            "FREEZEFRAME_BAREMETAL__WEBDAV_URL": f"http://10.0.2.2:{dav_port}",
            # No agent_iso_url: the BMC (the emulator, on the host) downloads the node's ISO from
            # the WebDAV server's bind address, http://127.0.0.1:<dav_port>/_boot.
            "FREEZEFRAME_BAREMETAL__AGENT_ISO": str(iso),
            "FREEZEFRAME_BAREMETAL__ENABLED_HARDWARE_TYPES": "fake-hardware,redfish",
            "FREEZEFRAME_BAREMETAL__ENABLED_POWER_INTERFACES": "fake,redfish",
            "FREEZEFRAME_BAREMETAL__ENABLED_BOOT_INTERFACES": "fake,redfish-virtual-media",
            "FREEZEFRAME_BAREMETAL__ENABLED_SNAPSHOT_INTERFACES": "fake,no-snapshot,agent",
            "FREEZEFRAME_BAREMETAL__CHUNK_SIZE": str(CHUNK),
            "FREEZEFRAME_BAREMETAL__HEARTBEAT_TIMEOUT": "10",
            "FREEZEFRAME_BAREMETAL__AGENT_WAIT_TIMEOUT": str(int(FLOW_TIMEOUT)),
            "FREEZEFRAME_BAREMETAL__POWER_TIMEOUT": "120",
            "FREEZEFRAME_CONDUCTOR__SCAN_INTERVAL": "0.5",
        })
        try:
            _run(server, lab, picked, other, tmp_path, agent_port, t_start, guest)
        except BaseException:
            print("---- serve log ----\n" + server.log()[-6000:])
            print("---- node console ----\n" + lab.console()[-4000:])
            raise
        finally:
            try:
                delete_servers(server)
            finally:
                server.stop()
                # In a child process: opening the embedded root here would register one more QEMU
                # driver in this test process, and libvirt allows only so many ("Too many drivers"
                # for the libvirt tests that run after this one).
                subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                                "from tests.libvirt.test_libvirt_snapshot import _remove_embed_root; "
                                "_remove_embed_root(Path(sys.argv[1]))", str(data_dir / "libvirt")],
                               cwd=Path(__file__).resolve().parents[2], timeout=120, check=False)
                shutil.rmtree(data_dir, ignore_errors=True)


def _run(server, lab, picked: Path, other: Path, tmp_path: Path, agent_port: int, t_start: float,
         guest: dict[str, str]) -> None:
    with ironic(server) as c, server.client(ADMIN_TOKEN) as images, \
            httpx.Client(base_url=server.url, headers={"X-Auth-Token": ADMIN_TOKEN}, timeout=60) as wf:
        # Enrol: the redfish driver (its snapshot interface defaults to agent), the agent told to
        # advertise the forwarded port as its callback_url; a port with the NIC's MAC.
        driver_info = lab.driver_info(kernel_append_params=f"ipa-advertise-host=127.0.0.1 "
                                                           f"ipa-advertise-port={agent_port}")
        resp = c.post("/nodes", json={"driver": "redfish", "name": "bm-e2e", "driver_info": driver_info})
        assert resp.status_code == 201, resp.text
        node = resp.json()
        assert node["snapshot_interface"] == "agent" and node["boot_interface"] == "redfish-virtual-media"
        assert node["driver_info"]["redfish_password"] == "******"
        uuid = node["uuid"]
        resp = c.post("/ports", json={"node_uuid": uuid, "address": lab.mac})
        assert resp.status_code == 201, resp.text
        assert c.put(f"/nodes/{uuid}/states/provision", json={"target": "manage"}).status_code == 202
        wait_state(c, uuid, "manageable")
        assert c.put(f"/nodes/{uuid}/states/provision", json={"target": "adopt"}).status_code == 202
        node = wait_state(c, uuid, "active")
        assert node["power_state"] == "power off" and not lab.is_active()

        # The tiny guest's kernel and initramfs as images: the snapshot's image boots with them.
        boot_ids = {}
        for key, fmt in (("KERNEL", "aki"), ("INITRD", "ari")):
            resp = images.post("/v2/images", json={"name": f"bm-e2e-{key.lower()}", "disk_format": fmt,
                                                    "container_format": fmt})
            assert resp.status_code == 201, resp.text
            boot_ids[key] = resp.json()["id"]
            with open(guest[key], "rb") as fh:
                assert images.put(f"/v2/images/{boot_ids[key]}/file", content=fh.read(),
                                  headers={"Content-Type": "application/octet-stream"}).status_code == 204

        resp = images.post("/v2/images", json={
            "name": "bm-e2e-snap", "disk_format": "qcow2", "container_format": "bare",
            "kernel_id": boot_ids["KERNEL"], "ramdisk_id": boot_ids["INITRD"],
            "os_command_line": guest["CMDLINE"] + " ff.data=vda ff.diskticks"})
        assert resp.status_code == 201, resp.text
        image = resp.json()
        assert image["status"] == "queued"

        t0 = time.monotonic()
        resp = c.put(f"/nodes/{uuid}/states/provision", json={"target": "snapshot", "image_ref": image["id"]})
        assert resp.status_code == 202, resp.text

        # Follow the node and the workflow until the node is active again (or failed).
        states: list[tuple[float, str, str | None]] = []
        flow_seen: list[tuple[float, str, int, str]] = []
        flow_id = None
        deadline = t0 + FLOW_TIMEOUT
        while True:
            body = c.get(f"/nodes/{uuid}").json()
            now = time.monotonic() - t0
            key = (body["provision_state"], body["target_provision_state"])
            if not states or states[-1][1:] != key:
                states.append((now, *key))
                print(f"{now:7.1f} s  node {key[0]} (target {key[1]})")
            if flow_id is None:
                flows = wf.get("/v1/workflows", params={"resource_id": uuid, "kind": "baremetal-snapshot"}).json()
                flow_id = flows["workflows"][0]["id"] if flows["workflows"] else None
            if flow_id is not None:
                w = wf.get(f"/v1/workflows/{flow_id}").json()["workflow"]
                last = w["history"][-1] if w["history"] else {}
                entry = (now, w["state"], w["progress"], last.get("detail") or "")
                if not flow_seen or flow_seen[-1][1:] != entry[1:]:
                    flow_seen.append(entry)
                    print(f"{now:7.1f} s  workflow {w['state']} {w['progress']}%  {entry[3]}")
            if body["provision_state"] in ("active", "snapshot failed") and body["target_provision_state"] is None:
                break
            assert time.monotonic() < deadline, (f"the snapshot did not end within {FLOW_TIMEOUT:g} s",
                                                 body, lab.console()[-3000:])
            time.sleep(0.5)
        t_end = time.monotonic()
        assert body["provision_state"] == "active", body["last_error"]
        assert body["last_error"] is None

        # The seed's path, in order: active -> snapshotting -> snapshot wait -> snapshotting -> active.
        path = [s for _, s, _ in states]
        path = [s for i, s in enumerate(path) if i == 0 or path[i - 1] != s]
        assert path == ["snapshotting", "snapshot wait", "snapshotting", "active"], states

        flow = wf.get(f"/v1/workflows/{flow_id}").json()["workflow"]
        assert flow["state"] == "IMAGE_ACTIVE", flow
        history = flow["history"]
        print("workflow history:")
        for h in history:
            print(f"  {h['at']}  {h['state']:<24} {h['progress']!s:>4}%  {h['detail']}")
        names = [h["state"] for h in history]
        assert names[0] == "LOCAL_SNAPSHOT_STARTED" and names[-1] == "IMAGE_ACTIVE"
        order = ["LOCAL_SNAPSHOT_STARTED", "LOCAL_SNAPSHOT_COMPLETE", "UPLOAD_BEGIN", "UPLOAD_COMPLETE", "IMAGE_ACTIVE"]
        assert [n for n in names if n in order] == sorted((n for n in names if n in order), key=order.index)
        assert set(order) <= set(names)
        details = [h["detail"] or "" for h in history]
        assert any("snapshot wait" in d for d in details) and any("the agent" in d and "is up at" in d
                                                                   for d in details), details
        assert any(f"http://127.0.0.1:{agent_port}" in d for d in details), details
        # Progress: the stream's (from the agent's heartbeats) or the upload's, between 0 and 100.
        assert any(0 < (h["progress"] or 0) < 100 for h in history) or any("% streamed" in d for d in details), history

        # The durations, from the workflow's own clock.
        def first(pred) -> float:
            return next(at(h["at"]) for h in history if pred(h))
        started = first(lambda h: h["state"] == "LOCAL_SNAPSHOT_STARTED")
        waiting = first(lambda h: "snapshot wait" in (h["detail"] or ""))
        beat = first(lambda h: "is up at" in (h["detail"] or ""))
        streaming = first(lambda h: "streaming the disk" in (h["detail"] or ""))
        verified = first(lambda h: h["state"] == "LOCAL_SNAPSHOT_COMPLETE")
        upload0 = first(lambda h: h["state"] == "UPLOAD_BEGIN")
        upload1 = first(lambda h: h["state"] == "UPLOAD_COMPLETE")
        done = first(lambda h: h["state"] == "IMAGE_ACTIVE")

        shown = images.get(f"/v2/images/{image['id']}").json()
        assert shown["status"] == "active", shown
        assert shown["disk_format"] == "qcow2"
        snap = tmp_path / "snapshot.qcow2"
        with images.stream("GET", f"/v2/images/{image['id']}/file") as r, open(snap, "wb") as f:
            assert r.status_code == 200
            for block in r.iter_bytes(1 << 20):
                f.write(block)

        # The node: booted from its disk again, the CD ejected, the per-node ISO gone.
        assert body["power_state"] == "power on" and lab.is_active()
        boot = lab.system()["Boot"]
        assert boot["BootSourceOverrideTarget"] == "Hdd", boot
        assert lab.cdrom_files(inactive=False) == []
        assert not any(lab.xml(inactive=False).findall("devices/disk[@device='cdrom']/source"))
        area = server.data_dir / "baremetal-transfers"
        assert not (area / "_boot" / f"{uuid}.iso").exists()
        leftovers = [p.name for p in area.iterdir() if p.name != "_boot"] if area.exists() else []
        assert leftovers == []                       # the intermediate copy is removed
        assert "agent_token" not in json.dumps(body["driver_internal_info"])

        # Power it off through the API (qemu-img then reads its disks without a lock).
        assert c.put(f"/nodes/{uuid}/states/power", json={"target": "power off"}).status_code == 202
        deadline = time.monotonic() + 60
        while c.get(f"/nodes/{uuid}").json()["power_state"] != "power off" or lab.is_active():
            assert time.monotonic() < deadline
            time.sleep(0.5)

        # Another machine from the node's image: a server of the same serve's compute service
        # (libvirt), the tiny guest's kernel mounting vda, the node's disk, and printing its ticks.
        t_boot = time.monotonic()
        with compute(server, ADMIN_TOKEN) as nova:
            resp = nova.post("/servers", json={"server": {"name": "bm-e2e-copy", "imageRef": image["id"],
                                                          "flavorRef": "2"}})     # m1.small: 20 GiB >= 5 GiB
            assert resp.status_code == 202, resp.text
            copy_id = resp.json()["server"]["id"]
            wait_server(nova, copy_id, "ACTIVE", timeout=120)
            console = server.data_dir / "instances" / "_consoles" / f"instance-{copy_id}.log"
            deadline = time.monotonic() + 60
            while "ff-guest: found on vda:" not in (text := console.read_text(errors="replace")
                                                   if console.exists() else ""):
                assert time.monotonic() < deadline, text[-3000:]
                time.sleep(0.5)
            found = next(line for line in text.splitlines() if "ff-guest: found on vda:" in line)
            print(f"the copy's console: {found.strip()}")
            assert found.strip().endswith(f"found on vda: last tick {TICKS_LINE}"), text[-3000:]
            t_found = time.monotonic()
            assert nova.delete(f"/servers/{copy_id}").status_code == 204
            deadline = time.monotonic() + 60
            while nova.get(f"/servers/{copy_id}").status_code != 404:
                assert time.monotonic() < deadline
                time.sleep(0.5)

    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(snap)], check=True,
                                     capture_output=True, text=True).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == 5 * GiB, info
    same = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(snap), str(picked)],
                          capture_output=True, text=True)
    assert same.returncode == 0, same.stdout + same.stderr          # the image's bytes are vda's
    differ = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(snap), str(other)],
                            capture_output=True, text=True)
    assert differ.returncode == 1, differ.stdout + differ.stderr    # not vdb's

    print(f"\nbare-metal snapshot e2e (TCG, chunk {CHUNK >> 20} MiB, "
          f"data {(FS_SIZE + sum(n for _, n in PLACES[0])) >> 20} MiB "
          f"on a 5 GiB disk, image {snap.stat().st_size} bytes):")
    print(f"  prepare (ISO remastered, virtual media, reboot): {waiting - started:6.1f} s")
    print(f"  boot to first heartbeat:                         {beat - waiting:6.1f} s")
    print(f"  stream (command -> verified):                    {verified - streaming:6.1f} s")
    print(f"  upload (qcow2 into the image):                   {upload1 - upload0:6.1f} s")
    print(f"  finish (copy removed, CD ejected, reboot):       {done - upload1:6.1f} s")
    print(f"  snapshot total (PUT -> node active):             {t_end - t0:6.1f} s")
    print(f"  a server from the image, its console showing vda: {t_found - t_boot:6.1f} s")
    print(f"  test total (lab, disks, serve, enrol, snapshot): {time.monotonic() - t_start:6.1f} s")
