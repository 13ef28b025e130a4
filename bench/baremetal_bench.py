#!/usr/bin/env python3
"""Bare-metal snapshot benchmark (issue 10's three targets, side by side in one run).

usage: bench/baremetal_bench.py [--quick] [--only t1,t2,t3] [--disk 20G:2G] [--small 2G:256M] [--reps 3] [--small-again 1]
                                [--name baremetal-latest] [--keep] [--env KEY=VALUE]

Starts its own `freezeframe serve` (embedded: API + conductor + WebDAV area + image service,
SQLite, noauth, every setting its default — fsync on, md5 + sha512 image hashes, 16 MiB stream
chunks — except: compute's fake driver (no libvirt: nothing here uses a VM), the WebDAV area on a
free 127.0.0.1 port and the agents' API URL) in a fresh directory under /var/tmp. A node is a
fake-hardware node with snapshot_interface "agent" and root_device {"name": "/dev/sda"}, adopted
as active; the bench plays its boot: when the node reaches "snapshot wait", it starts the real
agent (`python -m freezeframe.agent --api-url ... --node-uuid ... --disk FILE,name=/dev/sda`) on
this host against a sparse file standing for the node's disk (random data in 64 extents spread
evenly over it, made with truncate + pwrite).

T1  node snapshot end to end, --reps reps of the --disk APPARENT:DATA file (default 20 GiB holding
    2 GiB), each into a fresh qcow2 image: from the PUT .../states/provision {"target": "snapshot"}
    until the image is active and the node active again (polled every 50 ms), minus the node's
    "boot" (from the node seen in snapshot wait until the agent process listens: a real node's
    reboot is not the agent's) — reported apart, with the rest of the snapshot wait (the agent's
    lookup, its first heartbeat, the conductor resuming). Against its floor in the same rep:
    sha256 of the data alone (hashlib over the file's data extents, found with SEEK_DATA/SEEK_HOLE,
    one thread) + `qemu-img convert -O qcow2` of the disk file; beside it (informational) the same
    floor with direct I/O (the hash reading with O_DIRECT, `convert -T none -t none`, its fsync
    counted), as ours reads and writes. The order alternates per rep;
    `sync` + drop_caches before each of the three timed parts (ours, hash, convert). Bytes the
    agent sent (its command_result sent_bytes, read from the agent's command API with its token;
    and the chunk files seen in the area), serve's CPU and /proc io, the workflow's phases
    (prepare, snapshot wait, stream (until manifest.json appears in the area), verify (until
    LOCAL_SNAPSHOT_COMPLETE), upload, finish) from its history and the area.
T2  the agent killed (SIGKILL) once the area holds half the data chunks, with a second serve
    (FREEZEFRAME_BAREMETAL__AGENT_LOST_AFTER=5, __HEARTBEAT_TIMEOUT=2: the agent beats every
    0.6-1.2 s); the node must end "snapshot failed"; then the snapshot verb again with the same
    image and a new agent; the new agent's sent_bytes against the bytes of the data chunks the
    area did not hold at the failure (re-sent beyond what was missing), the dead agent's partial
    chunk, and the image compared with the disk (qemu-img compare).
T3  serve's RSS (VmRSS of serve, and of serve + children, every 0.2 s; VmHWM) during every T1
    snapshot, during one snapshot of a --small disk (run first, so VmHWM after it is its own), and
    during --small-again more snapshots of it after T1 (RSS once serve is warm).

Prints medians, per-rep ratios and their median; writes bench/results/<name>.json and <name>.txt.
A benchmark, not a test: it exits 0 when it ran. Talks to 127.0.0.1 only; every wait is bounded.
Root for drop_caches (without it the caches are only synced, and the output says so).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]

from snapshot_bench import drop_caches, free_port, parse_size  # noqa: E402
from tests.agent_proc import AgentProcess  # noqa: E402

GiB, MiB = 1 << 30, 1 << 20
MAX = "1.116"
IRONIC = {"X-OpenStack-Ironic-API-Version": MAX}
CHUNK = 16 * MiB        # serve's default FREEZEFRAME_BAREMETAL__CHUNK_SIZE (not set here)
POLL = 0.05


class Tee(io.TextIOBase):
    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, s: str) -> int:
        for st in self.streams:
            st.write(s)
            st.flush()
        return len(s)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def med(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 3) if xs else None


def fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / CLK
    except OSError:
        return 0.0


def proc_io(pid: int) -> dict[str, int]:
    out = {}
    with contextlib.suppress(OSError):
        for line in open(f"/proc/{pid}/io"):
            k, v = line.split(":")
            out[k] = int(v)
    return out


def status_kb(pid: int, *keys: str) -> dict[str, int]:
    out = {}
    with contextlib.suppress(OSError):
        for line in open(f"/proc/{pid}/status"):
            k, _, v = line.partition(":")
            if k in keys:
                out[k] = int(v.split()[0])
    return out


def children_of(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def disk_written() -> int:
    """Bytes written to the machine's whole disks (/proc/diskstats, sectors written): the whole
    machine's, other users' included."""
    total = 0
    with contextlib.suppress(OSError):
        for line in open("/proc/diskstats"):
            f = line.split()
            name = f[2]
            if (name.startswith(("vd", "sd", "xvd")) and not name[-1].isdigit()) or \
                    (name.startswith("nvme") and "p" not in name[4:]):
                total += int(f[9]) * 512
    return total


def meminfo_kb(key: str) -> int:
    with contextlib.suppress(OSError):
        for line in open("/proc/meminfo"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class RssSampler:
    """VmRSS of serve (and serve + its children) every 0.2 s, while running."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.pid, self.every = pid, every
        self.max_serve = self.max_tree = 0
        self.max_dirty = 0
        self.samples = 0
        self.disk0 = disk_written()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        kids: list[int] = []
        n = 0
        while not self.stop.is_set():
            if n % 5 == 0:
                kids = children_of(self.pid)
            n += 1
            own = status_kb(self.pid, "VmRSS").get("VmRSS", 0)
            tree = own + sum(status_kb(k, "VmRSS").get("VmRSS", 0) for k in kids)
            self.max_serve, self.max_tree = max(self.max_serve, own), max(self.max_tree, tree)
            self.max_dirty = max(self.max_dirty, meminfo_kb("Dirty") + meminfo_kb("Writeback"))
            self.samples += 1
            self.stop.wait(self.every)

    def done(self) -> dict[str, Any]:
        self.stop.set()
        self.thread.join()
        return {"max_rss_mb": round(self.max_serve / 1024, 1), "max_rss_tree_mb": round(self.max_tree / 1024, 1),
                "samples": self.samples, "max_dirty_writeback_mb": round(self.max_dirty / 1024),
                "machine_disk_written_mb": round((disk_written() - self.disk0) / 1e6)}


def make_disk(path: Path, apparent: int, data: int, extents: int = 64) -> list[tuple[int, int]]:
    """A sparse file: ``data`` bytes of random data in ``extents`` extents spread evenly."""
    piece = (data // extents) >> 20 << 20
    stride = apparent // extents
    with open(path, "wb") as fh:
        fh.truncate(apparent)
    out = []
    with open(path, "r+b") as fh:
        for i in range(extents):
            fh.seek(i * stride)
            for _ in range(piece >> 20):
                fh.write(os.urandom(MiB))
            out.append((i * stride, piece))
        fh.flush()
        os.fsync(fh.fileno())
    return out


def data_extents(path: Path) -> list[tuple[int, int]]:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        out, pos = [], 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end - start))
            pos = end
        return out
    finally:
        os.close(fd)


def hash_data(path: Path, direct: bool = False) -> tuple[float, int, float]:
    """sha256 over the file's data extents, 4 MiB reads, one thread: (seconds, bytes, cpu s).
    ``direct``: read with O_DIRECT into a page-aligned buffer (no page cache filled)."""
    import mmap
    t0, c0 = time.monotonic(), time.process_time()
    h = hashlib.sha256()
    n = 0
    buf = mmap.mmap(-1, 4 * MiB) if direct else bytearray(4 * MiB)
    mv = memoryview(buf)
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    try:
        for start, length in data_extents(path):
            pos, end = start, start + length
            while pos < end:
                got = os.preadv(fd, [mv[:min(len(buf), end - pos)]], pos)
                if got <= 0:
                    break
                h.update(mv[:got])
                pos += got
                n += got
    finally:
        os.close(fd)
    return time.monotonic() - t0, n, time.process_time() - c0


# -- serve ---------------------------------------------------------------------------------------------
class Serve:
    def __init__(self, work: Path, name: str, extra_env: dict[str, str]) -> None:
        self.data = work / name
        self.data.mkdir(parents=True)
        self.port, self.dav_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_url = self.url + "/baremetal"
        self.env = {**os.environ, "FREEZEFRAME_COMPUTE__DRIVER": "fake",
                    "FREEZEFRAME_BAREMETAL__WEBDAV_BIND": f"127.0.0.1:{self.dav_port}",
                    "FREEZEFRAME_BAREMETAL__API_URL": self.api_url, **extra_env}
        self.settings = {k: v for k, v in self.env.items() if k.startswith("FREEZEFRAME_")}
        self.log_path = self.data / "serve.log"
        self.proc = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "freezeframe"), "serve", "--data-dir", str(self.data), "--port",
             str(self.port), "--auth", "noauth", "--log-level", "info"],
            stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT, env=self.env)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("serve exited: " + self.log_path.read_text(errors="replace")[-3000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthcheck", timeout=1).status_code == 200 and \
                        "webdav: serving the transfer area" in self.log_path.read_text(errors="replace"):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("serve did not start: " + self.log_path.read_text(errors="replace")[-3000:])
            time.sleep(0.1)
        self.ironic = httpx.Client(base_url=self.api_url + "/v1", headers=IRONIC, timeout=60)
        self.images = httpx.Client(base_url=self.url + "/image", timeout=120)
        self.root = httpx.Client(base_url=self.url, timeout=60)
        self.area = self.data / "baremetal-transfers"

    def stop(self) -> None:
        for c in (self.ironic, self.images, self.root):
            c.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def query(self, sql: str, *args) -> list[tuple]:
        with contextlib.closing(sqlite3.connect(f"file:{self.data / 'freezeframe.db'}?mode=ro", uri=True,
                                                timeout=10)) as db:
            return db.execute(sql, args).fetchall()

    def agent_token(self, node: str) -> str | None:
        with contextlib.suppress(sqlite3.Error, IndexError):
            return self.query("SELECT agent_token FROM baremetal_nodes WHERE id = ?", node)[0][0]
        return None

    def copy_dir(self, node: str) -> Path | None:
        with contextlib.suppress(sqlite3.Error):
            rows = self.query("SELECT path FROM baremetal_transfers WHERE node_id = ? AND removed_at IS NULL "
                              "ORDER BY created_at DESC", node)
            if rows:
                return self.area / rows[0][0]
        return None

    def node(self, node: str) -> dict:
        return self.ironic.get(f"/nodes/{node}").json()

    def wait_node(self, node: str, state: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            body = self.node(node)
            if body["provision_state"] == state and body["target_provision_state"] is None:
                return body
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {node} not {state}: {body['provision_state']} / {body.get('last_error')}")
            time.sleep(0.1)

    def new_node(self, name: str) -> str:
        resp = self.ironic.post("/nodes", json={"driver": "fake-hardware", "name": name, "snapshot_interface": "agent",
                                                "properties": {"root_device": {"name": "/dev/sda"}}})
        resp.raise_for_status()
        node = resp.json()["uuid"]
        for verb, state in (("manage", "manageable"), ("adopt", "active")):
            r = self.ironic.put(f"/nodes/{node}/states/provision", json={"target": verb})
            assert r.status_code == 202, r.text
            self.wait_node(node, state)
        return node

    def new_image(self, name: str) -> str:
        resp = self.images.post("/v2/images", json={"name": name, "disk_format": "qcow2", "container_format": "bare"})
        resp.raise_for_status()
        return resp.json()["id"]

    def image(self, image_id: str) -> dict:
        return self.images.get(f"/v2/images/{image_id}").json()

    def delete_image(self, image_id: str) -> None:
        with contextlib.suppress(httpx.HTTPError):
            self.images.delete(f"/v2/images/{image_id}")

    def workflow(self, node: str) -> dict | None:
        flows = self.root.get("/v1/workflows", params={"resource_id": node, "kind": "baremetal-snapshot"}).json()
        flows = flows.get("workflows") or []
        if not flows:
            return None
        newest = max(flows, key=lambda f: f.get("created_at") or "")
        wf = self.root.get(f"/v1/workflows/{newest['id']}").json()["workflow"]
        # the API's "at" is to the second: the database's, to the microsecond (UTC)
        with contextlib.suppress(sqlite3.Error):
            rows = self.query("SELECT state, at, detail FROM workflow_events WHERE workflow_id = ? ORDER BY id",
                              newest["id"])
            if rows:
                wf["history"] = [{"state": st, "at": at.replace(" ", "T") + "+00:00", "detail": d}
                                 for st, at, d in rows]
        return wf

    def stored_file(self, image_id: str) -> Path | None:
        found = [p for p in (self.data / "images").rglob(f"*{image_id}*") if p.is_file() and ".partial" not in p.parts]
        return found[0] if found else None


def bins(directory: Path | None) -> dict[int, int]:
    out = {}
    if directory is None:
        return out
    with contextlib.suppress(FileNotFoundError):
        for p in directory.iterdir():
            if p.name.startswith("c-") and p.name.endswith(".bin"):
                with contextlib.suppress(FileNotFoundError):
                    out[int(p.name[2:10])] = p.stat().st_size
    return out


def parts(directory: Path | None) -> dict[int, int]:
    out = {}
    if directory is None:
        return out
    with contextlib.suppress(FileNotFoundError):
        for p in directory.glob("c-*.part"):
            with contextlib.suppress(FileNotFoundError):
                out[int(p.name[2:10])] = p.stat().st_size
    return out


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def phases(wf: dict | None, marks: dict[str, float]) -> dict[str, float]:
    """Seconds per phase, from the workflow's history (its "at", wall clock) and the bench's marks
    (time.time()): put, wait_seen, agent_up, resumed (node snapshotting again), manifest (seen
    in the area), end."""
    if not wf:
        return {}
    hist = [(h["state"], ts(h["at"]), h.get("detail") or "") for h in wf["history"] if h.get("at")]

    def first(pred) -> float | None:
        return next((t for s, t, d in hist if pred(s, d)), None)
    streaming = first(lambda s, d: "streaming the disk" in d)
    agent_seen = first(lambda s, d: "the agent" in d and " is up at " in d)
    verified = first(lambda s, d: s == "LOCAL_SNAPSHOT_COMPLETE")
    begin = first(lambda s, d: s == "UPLOAD_BEGIN")
    upload_done = first(lambda s, d: s == "UPLOAD_COMPLETE")
    active = first(lambda s, d: s == "IMAGE_ACTIVE")
    m = marks
    out = {
        "put_to_snapshot_wait_seen": m.get("wait_seen", 0) - m["put"] if "wait_seen" in m else None,
        "node_boot_excluded": m.get("agent_up", 0) - m.get("wait_seen", 0) if "agent_up" in m else None,
        "agent_up_to_agent_seen_by_workflow": agent_seen - m["agent_up"] if agent_seen and "agent_up" in m else None,
        "agent_seen_to_stream_commanded": streaming - agent_seen if streaming and agent_seen else None,
        "stream_commanded_to_manifest": m["manifest"] - streaming if streaming and "manifest" in m else None,
        "manifest_to_verified": verified - m["manifest"] if verified and "manifest" in m else None,
        "verified_to_upload_begin": begin - verified if begin and verified else None,
        "upload": upload_done - begin if upload_done and begin else None,
        "upload_complete_to_image_active": active - upload_done if active and upload_done else None,
        "image_active_to_seen_by_bench": m["end"] - active if active and "end" in m else None,
    }
    return {k: (round(v, 3) if v is not None else None) for k, v in out.items()}


def snapshot(s: Serve, node: str, image: str, disk: Path, *, kill_at_bins: int | None = None,
             rss: bool = True, hb_timeout: float | None = None) -> dict[str, Any]:
    """One snapshot: PUT, the agent started at snapshot wait, until image + node active (or, with
    kill_at_bins, until the agent is killed and the node is snapshot failed)."""
    rec: dict[str, Any] = {}
    marks: dict[str, float] = {}
    sampler = RssSampler(s.pid) if rss else None
    cpu0, io0 = cpu_seconds(s.pid), proc_io(s.pid)
    agent: AgentProcess | None = None
    token = copy = None
    states: list[tuple[float, str]] = []
    max_bins = 0
    try:
        t_put = time.time()
        marks["put"] = t_put
        r = s.ironic.put(f"/nodes/{node}/states/provision", json={"target": "snapshot", "image_ref": image})
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            body = s.node(node)
            st = body["provision_state"]
            if not states or states[-1][1] != st:
                states.append((round(time.time() - t_put, 3), st))
            if st == "snapshot wait" and agent is None:
                marks["wait_seen"] = time.time()
                agent = AgentProcess(api_url=s.api_url, node_uuid=node, disks=[f"{disk},name=/dev/sda"],
                                     heartbeat_timeout=hb_timeout).start()
                marks["agent_up"] = time.time()
                rec["agent_pid"] = agent.proc.pid
            if agent is not None:
                if token is None:
                    token = s.agent_token(node)
                if copy is None:
                    copy = s.copy_dir(node)
                if copy is not None and "manifest" not in marks and (copy / "manifest.json").exists():
                    marks["manifest"] = time.time()
                if copy is not None and kill_at_bins is not None:
                    # a tight loop on the area until half the chunks are there
                    while len(b := bins(copy)) < kill_at_bins and time.monotonic() < deadline:
                        if agent.proc.poll() is not None:
                            raise RuntimeError("the agent ended before the kill: " + agent.stderr[-2000:])
                        time.sleep(0.005)
                    agent.kill()
                    marks["killed"] = time.time()
                    rec["at_kill"] = {"bins": len(b), "bins_after_kill": len(bins(copy)), "parts": parts(copy),
                                      "progress": (s.node(node).get("driver_internal_info") or {}).get("agent_status")}
                    kill_at_bins = None
                if "manifest" not in marks and copy is not None:
                    max_bins = max(max_bins, len(bins(copy)))
            if st == "snapshot failed":
                marks["failed"] = time.time()
                rec["last_error"] = body.get("last_error")
                break
            if st == "active" and body["target_provision_state"] is None and agent is not None:
                img = s.image(image)
                if img["status"] == "active":
                    marks["end"] = time.time()
                    rec["image_size"] = img.get("size")
                    break
            time.sleep(POLL)
        else:
            raise RuntimeError(f"snapshot not done in time: {states}")
        rec["states"] = states
        if agent is not None and agent.proc.poll() is None:
            rec["agent_cpu_s"] = round(cpu_seconds(agent.proc.pid), 2)
            rec["agent_io"] = proc_io(agent.proc.pid)
            if token:
                code, listed = agent.request("GET", f"/v1/commands/?agent_token={token}")
                cmds = [c for c in (listed or {}).get("commands", []) if c.get("command_name") == "snapshot.stream_image"]
                if code == 200 and cmds:
                    res = cmds[-1].get("command_result") or {}
                    rec["command_status"] = cmds[-1].get("command_status")
                    rec["sent_bytes"] = res.get("sent_bytes")
                    rec["resumed_from_chunk"] = res.get("resumed_from_chunk")
                    rec["chunks"] = [(c["index"], c["length"]) for c in res.get("chunks", [])]
                    rec["manifest_data_bytes"] = sum(c["length"] for c in res.get("chunks", []))
                    rec["chunk_size"] = res.get("chunk_size")
            else:
                rec["token_missed"] = True
    finally:
        if agent is not None:
            agent.terminate(20)
        if sampler is not None:
            rec["rss"] = sampler.done()
    rec["serve_cpu_s"] = round(cpu_seconds(s.pid) - cpu0, 2)
    io1 = proc_io(s.pid)
    rec["serve_io_mb"] = {k: round((io1.get(k, 0) - io0.get(k, 0)) / 1e6) for k in
                          ("rchar", "wchar", "read_bytes", "write_bytes")}
    rec["area_bins_seen"] = max_bins
    rec["marks"] = {k: round(v - marks["put"], 3) for k, v in marks.items()}
    if "end" in marks:
        total = marks["end"] - marks["put"]
        boot = marks["agent_up"] - marks["wait_seen"]
        rec["total_s"] = round(total, 3)
        rec["boot_excluded_s"] = round(boot, 3)
        rec["e2e_s"] = round(total - boot, 3)
    rec["_marks_abs"] = marks
    return rec


def floor(disk: Path, work: Path, can_drop: bool) -> dict[str, Any]:
    drop_caches(can_drop)
    d0 = disk_written()
    secs, n, cpu = hash_data(disk)
    out = work / "floor.qcow2"
    out.unlink(missing_ok=True)
    drop_caches(can_drop)
    t0 = time.monotonic()
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(disk), str(out)], check=True,
                   capture_output=True)
    conv = time.monotonic() - t0
    written_during = disk_written() - d0
    dirty_after = meminfo_kb("Dirty") + meminfo_kb("Writeback")
    t0 = time.monotonic()
    fd = os.open(out, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    fsync = time.monotonic() - t0
    size = out.stat().st_blocks * 512
    out.unlink()
    return {"hash_s": round(secs, 3), "hash_bytes": n, "hash_cpu_s": round(cpu, 2), "convert_s": round(conv, 3),
            "convert_fsync_s": round(fsync, 3), "qcow2_allocated": size, "floor_s": round(secs + conv, 3),
            "machine_disk_written_mb": round(written_during / 1e6), "dirty_writeback_after_convert_mb": round(dirty_after / 1024)}


def floor_direct(disk: Path, work: Path, can_drop: bool) -> dict[str, Any]:
    """The floor again with direct I/O, as ours does it (informational, beside the issue's floor):
    sha256 of the data read with O_DIRECT + `qemu-img convert -T none -t none` (no page cache on
    either side), with the fdatasync of its output counted (ours is durable: fsync before active)."""
    drop_caches(can_drop)
    secs, n, cpu = hash_data(disk, direct=True)
    out = work / "floor-direct.qcow2"
    out.unlink(missing_ok=True)
    drop_caches(can_drop)
    t0 = time.monotonic()
    subprocess.run(["qemu-img", "convert", "-T", "none", "-t", "none", "-f", "raw", "-O", "qcow2", str(disk),
                    str(out)], check=True, capture_output=True)
    fd = os.open(out, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    conv = time.monotonic() - t0
    out.unlink()
    return {"hash_s": round(secs, 3), "hash_cpu_s": round(cpu, 2), "convert_s": round(conv, 3),
            "floor_s": round(secs + conv, 3)}


# -- the targets -----------------------------------------------------------------------------------------
def t1_t3(a, work: Path, results: dict, can_drop: bool) -> None:
    s = Serve(work, "serve-t1", dict(kv.split("=", 1) for kv in a.env))
    try:
        results["t1_settings"] = s.settings
        idle = status_kb(s.pid, "VmRSS", "VmHWM")
        node = s.new_node("bench-node")
        results["t3"] = {"idle_rss_mb": round(idle.get("VmRSS", 0) / 1024, 1)}
        if "t3" in a.only:
            app, data = (parse_size(x) for x in a.small.split(":"))
            small = work / "small.raw"
            make_disk(small, app, data)
            image = s.new_image("bench-small")
            drop_caches(can_drop)
            log(f"T3: one snapshot of the small disk {a.small}")
            rec = snapshot(s, node, image, small)
            hwm = status_kb(s.pid, "VmRSS", "VmHWM")
            rec["vmhwm_after_mb"] = round(hwm.get("VmHWM", 0) / 1024, 1)
            rec.pop("_marks_abs", None)
            results["t3"]["small"] = rec
            log(f"  small: e2e {rec.get('e2e_s')} s, max RSS {rec['rss']['max_rss_mb']} MB, VmHWM "
                f"{rec['vmhwm_after_mb']} MB")
            s.delete_image(image)
        if "t1" not in a.only and "t2" not in a.only:
            a.reps = 0
        app, data = (parse_size(x) for x in a.disk.split(":"))
        if a.reps == 0:
            app, data = 1 << 20, 1 << 20           # (no big disk: T3 alone)
        disk = work / "disk.raw"
        t0 = time.monotonic()
        extents = make_disk(disk, app, data)
        results["disk"] = {"apparent": app, "data": sum(n for _, n in extents), "extents": len(extents),
                           "allocated": disk.stat().st_blocks * 512, "made_s": round(time.monotonic() - t0, 1)}
        log(f"disk {a.disk}: {results['disk']}")
        reps = []
        for rep in range(a.reps):
            order = ("ours", "floor") if rep % 2 == 0 else ("floor", "ours")
            r: dict[str, Any] = {"rep": rep + 1, "order": order, "load": os.getloadavg()}
            for what in order:
                if what == "ours":
                    image = s.new_image(f"bench-{rep}")
                    drop_caches(can_drop)
                    rec = snapshot(s, node, image, disk)
                    wf = s.workflow(node)
                    rec["phases"] = phases(wf, rec.pop("_marks_abs"))
                    rec["workflow_state"] = wf and wf.get("state")
                    r["ours"] = rec
                    s.delete_image(image)
                    log(f"rep {rep + 1} ours: e2e {rec.get('e2e_s')} s (total {rec.get('total_s')}, boot excluded "
                        f"{rec.get('boot_excluded_s')}), sent {rec.get('sent_bytes')} B, max RSS "
                        f"{rec['rss']['max_rss_mb']} MB, phases {rec['phases']}")
                else:
                    r["floor"] = floor(disk, work, can_drop)
                    r["floor_direct"] = floor_direct(disk, work, can_drop)
                    log(f"rep {rep + 1} floor: {r['floor']}; with direct I/O: {r['floor_direct']}")
            if r["ours"].get("e2e_s"):
                r["ratio"] = round(r["ours"]["e2e_s"] / r["floor"]["floor_s"], 3)
                r["ratio_direct"] = round(r["ours"]["e2e_s"] / r["floor_direct"]["floor_s"], 3)
            reps.append(r)
        hwm = status_kb(s.pid, "VmRSS", "VmHWM")
        if reps:
            results["t1"] = {"reps": reps}
        if "t3" in a.only:
            # the small disk again, after the big ones: what RSS a snapshot needs once serve is warm
            again = []
            for n in range(a.small_again):
                image = s.new_image(f"bench-small-again-{n}")
                drop_caches(can_drop)
                rec = snapshot(s, node, image, work / "small.raw")
                rec.pop("_marks_abs", None)
                rec["rss_after_mb"] = round(status_kb(s.pid, "VmRSS").get("VmRSS", 0) / 1024, 1)
                again.append(rec)
                log(f"T3: the small disk again ({n + 1}): e2e {rec.get('e2e_s')} s, max RSS {rec['rss']['max_rss_mb']} MB, "
                    f"after {rec['rss_after_mb']} MB")
                s.delete_image(image)
            results["t3"]["small_again"] = again[0] if again else None
            results["t3"]["small_again_max_rss_mb"] = [r["rss"]["max_rss_mb"] for r in again]
            results["t3"]["small_again_rss_after_mb"] = [r["rss_after_mb"] for r in again]
            (work / "small.raw").unlink()
        results["t3"]["vmhwm_after_t1_mb"] = round(hwm.get("VmHWM", 0) / 1024, 1)
        results["t3"]["rss_after_t1_mb"] = round(hwm.get("VmRSS", 0) / 1024, 1)
        results["t3"]["vmhwm_end_mb"] = round(status_kb(s.pid, "VmHWM").get("VmHWM", 0) / 1024, 1)
        if "t2" in a.only:
            s.stop()
            t2(a, work, disk, results, can_drop)
        disk.unlink(missing_ok=True)
    finally:
        s.stop()


def t2(a, work: Path, disk: Path, results: dict, can_drop: bool) -> None:
    env = {"FREEZEFRAME_BAREMETAL__AGENT_LOST_AFTER": "5", "FREEZEFRAME_BAREMETAL__HEARTBEAT_TIMEOUT": "2",
           **dict(kv.split("=", 1) for kv in a.env)}
    s = Serve(work, "serve-t2", env)
    rec: dict[str, Any] = {"settings": {k: v for k, v in env.items()}}
    try:
        node = s.new_node("bench-kill")
        image = s.new_image("bench-kill")
        data_chunks = sorted({i for off, n in data_extents(disk) for i in range(off // CHUNK, (off + n - 1) // CHUNK + 1)})
        half = len(data_chunks) // 2
        drop_caches(can_drop)
        log(f"T2: kill -9 the agent at {half} of {len(data_chunks)} data chunks")
        first = snapshot(s, node, image, disk, kill_at_bins=half, hb_timeout=None)
        first.pop("_marks_abs", None)
        copy = s.copy_dir(node)
        kept = bins(copy)
        partial = parts(copy)
        rec["first"] = first
        rec["kept_chunks"] = len(kept)
        rec["kept_bytes"] = sum(kept.values())
        rec["partial_at_failure"] = partial
        node_body = s.node(node)
        rec["node_after_kill"] = {"provision_state": node_body["provision_state"], "last_error": node_body["last_error"]}
        rec["kill_to_failed_s"] = round(first["marks"].get("failed", 0) - first["marks"].get("killed", 0), 3)
        log(f"  first: {rec['node_after_kill']}; kept {len(kept)} chunks; partial {partial}; kill -> failed "
            f"{rec['kill_to_failed_s']} s")
        second = snapshot(s, node, image, disk, hb_timeout=None)
        second.pop("_marks_abs", None)
        rec["second"] = second
        sizes = dict((i, n) for i, n in second.get("chunks", []))
        missing = [i for i in data_chunks if i not in kept]
        rec["missing_chunks"] = len(missing)
        rec["missing_bytes"] = sum(sizes.get(i, 0) for i in missing)
        rec["resent_beyond_missing"] = (second.get("sent_bytes") or 0) - rec["missing_bytes"]
        rec["partial_bytes_lost"] = sum(partial.values())
        rec["data_chunk_bytes"] = sum(n for _, n in second.get("chunks", []))
        rec["data_bytes"] = sum(n for _, n in data_extents(disk))
        rec["total_sent_both"] = rec["kept_bytes"] + rec["partial_bytes_lost"] + (second.get("sent_bytes") or 0)
        stored = s.stored_file(image)
        if stored is not None:
            cmp = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(stored), str(disk)],
                                 capture_output=True, text=True)
            rec["image_equals_disk"] = cmp.returncode == 0
            rec["compare_output"] = (cmp.stdout + cmp.stderr).strip()[:300]
        log(f"  retry: sent {second.get('sent_bytes')} B, missing {rec['missing_bytes']} B, re-sent beyond "
            f"{rec['resent_beyond_missing']} B, resumed from chunk {second.get('resumed_from_chunk')}, image == disk: "
            f"{rec.get('image_equals_disk')}")
        s.delete_image(image)
    finally:
        s.stop()
    results["t2"] = rec


def report(a, results: dict) -> None:
    print()
    print(f"Load average: start {results['load_start']}, end {results.get('load_end')}; page cache "
          f"{'dropped (sync + drop_caches 3)' if results['dropped'] else 'only synced (not root)'} before each timed part")
    if "t1" in results:
        reps = results["t1"]["reps"]
        ours = [r["ours"].get("e2e_s") for r in reps]
        fl = [r["floor"]["floor_s"] for r in reps]
        ratios = [r.get("ratio") for r in reps]
        d = results["disk"]
        sent = [r["ours"].get("sent_bytes") for r in reps]
        sent_ratio = [round(x / d["data"], 4) if x else None for x in sent]
        s = {"ours_e2e_median_s": med(ours), "ours_total_median_s": med([r["ours"].get("total_s") for r in reps]),
             "boot_excluded_median_s": med([r["ours"].get("boot_excluded_s") for r in reps]),
             "floor_median_s": med(fl), "hash_median_s": med([r["floor"]["hash_s"] for r in reps]),
             "convert_median_s": med([r["floor"]["convert_s"] for r in reps]),
             "convert_fsync_median_s": med([r["floor"]["convert_fsync_s"] for r in reps]),
             "ratio_median_per_rep": med(ratios),
             "ratio_of_medians": round(med(ours) / med(fl), 3) if med(ours) and med(fl) else None,
             "sent_over_data": sent_ratio, "max_rss_mb": max(r["ours"]["rss"]["max_rss_mb"] for r in reps),
             "max_rss_tree_mb": max(r["ours"]["rss"]["max_rss_tree_mb"] for r in reps),
             "serve_cpu_median_s": med([r["ours"].get("serve_cpu_s") for r in reps]),
             "agent_cpu_median_s": med([r["ours"].get("agent_cpu_s") for r in reps]),
             "phases_median": {k: med([r["ours"]["phases"].get(k) for r in reps]) for k in reps[0]["ours"]["phases"]}}
        results["t1"]["summary"] = s
        print(f"T1 node snapshot of a {d['apparent'] / GiB:g} GiB file holding {d['data'] / GiB:g} GiB "
              f"({d['extents']} extents), {len(reps)} reps:")
        print(f"  ours (PUT -> image + node active, minus the node's boot): median {fmt(s['ours_e2e_median_s'])} s "
              f"{ours}; total incl. boot {fmt(s['ours_total_median_s'])} s, boot excluded {fmt(s['boot_excluded_median_s'])} s")
        print(f"  floor sha256(data) + qemu-img convert -O qcow2: median {fmt(s['floor_median_s'])} s {fl} "
              f"(hash {fmt(s['hash_median_s'])} + convert {fmt(s['convert_median_s'])}; fsync of the qcow2 "
              f"{fmt(s['convert_fsync_median_s'])} s, not counted)")
        print(f"  ratio per rep {ratios}: median {fmt(s['ratio_median_per_rep'])}x; of medians "
              f"{fmt(s['ratio_of_medians'])}x (target <= 1.3x)")
        fd_ = [r["floor_direct"]["floor_s"] for r in reps]
        rd_ = [r.get("ratio_direct") for r in reps]
        s["floor_direct_median_s"], s["ratio_direct_median_per_rep"] = med(fd_), med(rd_)
        print(f"  (informational) the floor with direct I/O (sha256 read with O_DIRECT + convert -T none -t none, "
              f"its fsync counted): median {fmt(med(fd_))} s {fd_} (hash "
              f"{fmt(med([r['floor_direct']['hash_s'] for r in reps]))} + convert "
              f"{fmt(med([r['floor_direct']['convert_s'] for r in reps]))}); ours / it per rep {rd_}: median "
              f"{fmt(med(rd_))}x")
        print(f"  bytes the agent sent / data: {sent_ratio} (sent {sent}, data {d['data']}, data chunks' bytes "
              f"{[r['ours'].get('manifest_data_bytes') for r in reps]}; target <= 1.1x); "
              f"chunks seen in the area {[r['ours'].get('area_bins_seen') for r in reps]}")
        print(f"  CPU: serve {s['serve_cpu_median_s']} s, agent {s['agent_cpu_median_s']} s; floor hash "
              f"{med([r['floor']['hash_cpu_s'] for r in reps])} s")
        print(f"  serve io (MB) per rep: {[r['ours']['serve_io_mb'] for r in reps]}")
        print(f"  bytes reaching the disk (whole machine, MB) during ours {[r['ours']['rss'].get('machine_disk_written_mb') for r in reps]}, "
              f"max dirty+writeback {[r['ours']['rss'].get('max_dirty_writeback_mb') for r in reps]}; during the floor "
              f"{[r['floor'].get('machine_disk_written_mb') for r in reps]}, dirty+writeback left after its convert "
              f"{[r['floor'].get('dirty_writeback_after_convert_mb') for r in reps]}")
        print(f"  agent io per rep (MB): {[{k: round(v / 1e6) for k, v in (r['ours'].get('agent_io') or {}).items() if k in ('rchar', 'read_bytes')} for r in reps]}")
        print("  phases (median s): " + ", ".join(f"{k} {v}" for k, v in s["phases_median"].items()))
    if "t2" in results:
        r = results["t2"]
        print(f"T2 agent killed at half the data chunks ({r['first'].get('at_kill', {}).get('bins')} kept when "
              f"killed), chunk {CHUNK >> 20} MiB:")
        print(f"  node after: {r['node_after_kill']}; kill -> snapshot failed {r['kill_to_failed_s']} s")
        print(f"  retry: sent {r['second'].get('sent_bytes')} B for {r['missing_chunks']} missing chunks "
              f"({r['missing_bytes']} B): re-sent beyond what was missing {r['resent_beyond_missing']} B "
              f"(target <= {CHUNK} B); the dead agent's partial chunk {r['partial_bytes_lost']} B; total sent "
              f"over both {r['total_sent_both']} B for {r['data_chunk_bytes']} B of data chunks ({r['data_bytes']} B of data); resumed from chunk "
              f"{r['second'].get('resumed_from_chunk')}; retry e2e {r['second'].get('e2e_s')} s; image == disk "
              f"{r.get('image_equals_disk')}")
    if "t3" in results:
        t = results["t3"]
        small = t.get("small") or {}
        big = results.get("t1", {}).get("summary", {})
        print(f"T3 serve RSS: idle {t['idle_rss_mb']} MB; small disk ({a.small}) max {small.get('rss', {}).get('max_rss_mb')} "
              f"MB (VmHWM after it {small.get('vmhwm_after_mb')}); the small disk again after the big ones: max "
              f"{t.get('small_again_max_rss_mb')} MB; big disk ({a.disk}) max {big.get('max_rss_mb')} MB "
              f"(serve + children {big.get('max_rss_tree_mb')}); VmHWM after T1 {t.get('vmhwm_after_t1_mb')} MB, at the end "
              f"{t.get('vmhwm_end_mb')} MB "
              f"(target < 200 MB)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 rep of a 4G:1G disk, small 1G:128M")
    ap.add_argument("--only", default="t1,t2,t3")
    ap.add_argument("--disk", default="20G:2G", help="T1/T2 APPARENT:DATA")
    ap.add_argument("--small", default="2G:256M", help="T3's small APPARENT:DATA")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--small-again", type=int, default=1,
                    help="T3: snapshots of the small disk after T1 (RSS once serve is warm; more shows where it levels)")
    ap.add_argument("--name", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="an extra setting for serve")
    a = ap.parse_args()
    if a.quick:
        a.disk, a.small, a.reps = "4G:1G", "1G:128M", 1
    a.only = set(a.only.split(","))
    name = a.name or ("baremetal-quick" if a.quick else "baremetal-latest")
    out_dir = Path(os.environ.get("BENCH_RESULTS", ROOT / "bench" / "results"))
    out_dir.mkdir(parents=True, exist_ok=True)
    txt = open(out_dir / f"{name}.txt", "w")
    sys.stdout = Tee(sys.__stdout__, txt)
    can_drop = os.geteuid() == 0
    log(f"baremetal_bench {' '.join(sys.argv[1:])}; load average {os.getloadavg()}; "
        f"{shutil.disk_usage('/var/tmp').free / 1e9:.0f} GB free in /var/tmp")
    work = Path(tempfile.mkdtemp(prefix="bmb", dir="/var/tmp"))
    results: dict[str, Any] = {"args": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(a).items()},
                               "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "dropped": can_drop,
                               "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                                        capture_output=True, text=True).stdout.strip(),
                               "load_start": os.getloadavg(), "chunk_size": CHUNK,
                               "qemu_img": subprocess.run(["qemu-img", "--version"], capture_output=True,
                                                          text=True).stdout.splitlines()[0]}
    t0 = time.monotonic()
    try:
        t1_t3(a, work, results, can_drop)
        results["load_end"] = os.getloadavg()
        results["wall_s"] = round(time.monotonic() - t0, 1)
        report(a, results)
        (out_dir / f"{name}.json").write_text(json.dumps(results, indent=1, default=str))
        log(f"done in {results['wall_s']} s; results in {out_dir / name}.json/.txt; load average {os.getloadavg()}")
    finally:
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
