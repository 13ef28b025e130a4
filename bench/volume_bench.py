#!/usr/bin/env python3
"""Volume benchmark (issue 9's three targets, side by side in one run).

usage: bench/volume_bench.py [--quick] [--only t1,t2,t3] [--sizes 1,100] [--reps 20] [--t2-disk 4G:512M]
                             [--t2-reps 5] [--t3-volume 4G:1G] [--t3-reps 3] [--tick 0.02] [--flatten]
                             [--hashes md5+sha512|sha256] [--name volume-latest] [--keep]

Starts its own `freezeframe serve` (libvirt driver, embedded mode, TCG, noauth, the volume service
with its qcow2file driver on <data-dir>/volumes, fsync on, every other setting its default) in a
fresh directory under /var/tmp, and the tiny test guest with its agent — its initramfs with a
/init of this benchmark's (see GUEST_INIT): every virtio disk that holds ext4, at boot or
hot-plugged later, is mounted and gets a writer appending "<seq> <uptime>" to its /ticks every
--tick seconds, so the largest gap in a disk's log is how long the guest could not write to it.

T1  volume snapshot create, POST /snapshots -> status available (polled every 20 ms), for a
    --sizes GiB sparse volume each (default 1 and 100), per rep in a rotating order:
      offline   the volume available (attached to nothing): the driver's overlay;
      assisted  the volume attached to the running guest (ext4 on it, its writer running),
                quiesced through the guest agent (hw_qemu_guest_agent=yes, os_require_quiesce=yes);
    each snapshot deleted right after (DELETE -> 404, timed too). Online, each volume first gets
    an "anchor" snapshot (kept): deleting the newest snapshot is a rebase of the active file onto
    what lies below the snapshot's file, which with the anchor below is only the writes since the
    anchor — without it the active file pulls in the whole volume (--flatten times that once at
    the end). The guest's frozen time: for each assisted snapshot, the last tick in the
    snapshot's point in time (read with qemu-img from the chain under its overlay) against the
    next tick in the volume's log read at the end of the run.
T2  instance-level snapshot of three disks ({"snapshot": {"devices": [root, local, volume]}}) of
    server A (root: an ext4 + data image; a second local disk from a like image; a volume made
    from a like image) against createImage of server B whose single root disk holds the same total
    data (3 x the per-disk data), interleaved reps, page cache dropped before each, timed from the
    call to IMAGE_ACTIVE; the freeze from the workflow's detail, the image's
    os_freezeframe_snapshot_quiesced, and the writers' largest gap (the volume's and the root's).
T3  a volume from a snapshot (POST /volumes {snapshot_id}) and os-volume_upload_image (qcow2) of
    a --t3-volume APPARENT:DATA volume (random data in 64 extents, written into its file before
    the snapshot), each against its floor in the same rep: `qemu-img convert -U -O raw` of the
    snapshot's chain, and `qemu-img convert -U -O qcow2` of the volume's chain plus hashing that
    output with the image service's algorithms (one thread each, warm cache). Cold page cache
    before each. Bytes read/written (/proc/<pid>/io: rchar/wchar = syscalls, read_bytes/
    write_bytes = block layer) of serve and its children (qemu-img, qemu-nbd) — reaped children
    count in their parent — and the allocated size of what was made.

Prints medians and ratios; writes bench/results/<name>.json and <name>.txt. --quick: a couple of
minutes (small sizes, few reps). A benchmark, not a test: it exits 0 when it ran. Talks to
127.0.0.1 only; every wait is bounded. Needs root (drop_caches; libvirt embedded as root).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
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
sys.path[:0] = [str(ROOT / "bench")]

from snapshot_bench import HASH_PROFILES, drop_caches, free_port, hash_seconds, parse_size  # noqa: E402

GiB, MiB = 1 << 30, 1 << 20
NOVA = {"X-OpenStack-Nova-API-Version": "2.79"}
CINDER = {"OpenStack-API-Version": "volume 3.71"}
ENDED = ("IMAGE_ACTIVE", "REVERTED", "CANCELLED", "FAILED", "COMPLETE")
FS_BYTES = 64 * MiB             # the ext4 at the start of every disk the guest writes on

GUEST_INIT = r"""#!/bin/sh
# Freezeframe volume benchmark guest (bench/volume_bench.py): the test guest's modules and agent;
# every virtio disk holding ext4 (at boot or hot-plugged) mounted at /m/<dev> with a writer
# appending "<seq> <uptime>" to /m/<dev>/ticks every ff.tick seconds.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
read -r cmdline < /proc/cmdline
log() { echo "ff-guest: $*"; }
while read -r m; do insmod "/lib/modules/$m" 2>/dev/null || log "insmod $m failed"; done < /etc/modules
tick=0.02
for word in $cmdline; do case "$word" in ff.tick=*) tick="${word#ff.tick=}" ;; esac; done
port=""; i=0
while [ -z "$port" ] && [ $i -lt 200 ]; do
  for p in /sys/class/virtio-ports/*; do
    [ -r "$p/name" ] || continue
    read -r n < "$p/name"
    [ "$n" = org.qemu.guest_agent.0 ] && [ -c "/dev/${p##*/}" ] && port="/dev/${p##*/}"
  done
  [ -n "$port" ] || { sleep 0.05; i=$((i + 1)); }
done
if [ -n "$port" ]; then
  LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu \
    qemu-ga -m virtio-serial -p "$port" -t /run -f /run/qemu-ga.pid &
  log "qemu-ga on $port"
fi
mkdir -p /m
log "ready"
done_list=" "; tries=" "
while :; do
  for b in /sys/block/vd*; do
    [ -e "$b" ] || continue
    d=${b##*/}
    case "$done_list" in *" $d "*) continue ;; esac
    mkdir -p /m/$d
    if mount -t ext4 -o noatime /dev/$d /m/$d 2>/dev/null; then
      # shell builtins only, no fork per tick: "read -t" on a fifo nobody writes is the sleep
      mkfifo /run/tick.$d 2>/dev/null
      ( exec 3<>/run/tick.$d; n=0; while :; do n=$((n + 1)); read -r up _ < /proc/uptime
        echo "$n $up" >> /m/$d/ticks || exit 0; read -t $tick -u 3 x; done ) &
      log "writer on /dev/$d"
      done_list="$done_list$d "
    else
      tries="$tries$d "
      case "$tries" in *" $d $d $d $d $d $d $d $d $d $d "*) done_list="$done_list$d " ;; esac
    fi
  done
  sleep 0.2
done
"""


# -- small helpers --------------------------------------------------------------------------------
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


def med(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def p95(xs: list[float]) -> float | None:
    xs = sorted(x for x in xs if x is not None)
    return xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))] if xs else None


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def proc_io(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in open(f"/proc/{pid}/io"):
            k, v = line.split(":")
            out[k] = int(v)
    except OSError:
        pass
    return out


def children_of(pid: int) -> list[int]:
    found, todo = [], [pid]
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            found.append(c)
            todo.append(c)
    return found


def comm(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/comm").read().strip()
    except OSError:
        return "?"


IO_KEYS = ("rchar", "wchar", "read_bytes", "write_bytes")


class IoMeter:
    """The bytes serve and its children read and wrote while an operation ran: serve's own
    /proc/<pid>/io (its reaped children are added to it by the kernel) and, sampled in a thread
    every 20 ms, each live child's last values (qemu-img, qemu-nbd), by command name."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.stop = threading.Event()
        self.kids: dict[int, tuple[str, dict[str, int]]] = {}
        self.before = proc_io(pid)
        self.cpu0 = cpu_seconds(pid)
        self.psi0 = psi()
        self.before_kids = {c: proc_io(c) for c in children_of(pid)}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        """Cheap on purpose (it shares the machine with what it measures): the process list is
        scanned every 0.25 s, the children found are sampled every 0.05 s."""
        known: list[int] = []
        next_scan = 0.0
        while not self.stop.is_set():
            if time.monotonic() >= next_scan:
                known = children_of(self.pid)
                next_scan = time.monotonic() + 0.25
            for c in known:
                got = proc_io(c)
                if got:
                    self.kids[c] = (self.kids[c][0] if c in self.kids else comm(c), got)
            self.stop.wait(0.05)

    def done(self) -> dict[str, Any]:
        self.stop.set()
        self.thread.join()
        after = proc_io(self.pid)
        live_now = {c: proc_io(c) for c in children_of(self.pid)}
        total = {k: after.get(k, 0) - self.before.get(k, 0) for k in IO_KEYS}
        # children still alive (none should be): add what they did meanwhile
        for c, now in live_now.items():
            was = self.before_kids.get(c, {})
            for k in IO_KEYS:
                total[k] += now.get(k, 0) - was.get(k, 0)
        per: dict[str, dict[str, int]] = {}
        for c, (name, got) in self.kids.items():
            was = self.before_kids.get(c, {})
            acc = per.setdefault(name, {k: 0 for k in IO_KEYS})
            for k in IO_KEYS:
                acc[k] += got.get(k, 0) - was.get(k, 0)
        return {"serve_tree": total, "children_last_seen": per,
                "serve_cpu_s": round(cpu_seconds(self.pid) - self.cpu0, 2), "psi_ms": psi_ms(self.psi0, psi())}


def psi() -> dict[str, int]:
    """The machine's pressure stall totals (µs): cpu some, io some, io full (/proc/pressure)."""
    out = {}
    for res in ("cpu", "io"):
        try:
            for line in open(f"/proc/pressure/{res}"):
                kind, *fields = line.split()
                out[f"{res}_{kind}"] = int(dict(f.split("=") for f in fields)["total"])
        except OSError:
            pass
    return out


def psi_ms(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    return {k: round((after[k] - before.get(k, 0)) / 1000, 1) for k in after}


CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its reaped children (qemu-img, qemu-nbd)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / CLK
    except OSError:
        return 0.0


def self_io() -> dict[str, int]:
    return proc_io(os.getpid())


def children_cpu() -> float:
    import resource
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=True).stdout


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def make_disk(path: Path, apparent: int, data: int, template: Path | None, chunks: int = 64) -> None:
    """A sparse raw disk: ``template`` (an ext4, sparse) at offset 0, then ``data`` bytes of random
    data in ``chunks`` extents spread evenly over the rest."""
    start = FS_BYTES if template is not None else 0
    with open(path, "wb") as fh:
        fh.truncate(apparent)
    if template is not None:
        subprocess.run(["dd", f"if={template}", f"of={path}", "bs=1M", "conv=sparse,notrunc", "status=none"],
                       check=True)
    piece = (data // chunks) >> 20 << 20
    stride = (apparent - start) // chunks
    block = os.urandom(MiB)
    with open(path, "r+b") as fh:
        for i in range(chunks):
            fh.seek(start + i * stride)
            for _ in range(piece >> 20):
                fh.write(block[:1024] + os.urandom(64) + block[1088:])     # no two MiB alike
        fh.flush()
        os.fsync(fh.fileno())


def prefix_ticks(path: Path, fmt: str, out: Path) -> list[tuple[int, float]]:
    """The (seq, uptime) lines of /ticks in the ext4 at the start of the image chain ``path``
    (read with qemu-img from its first FS_BYTES, -U: a running QEMU may hold it)."""
    opts = (f"driver=raw,size={FS_BYTES},file.driver={fmt},file.file.driver=file,"
            f"file.file.filename={path}")
    out.unlink(missing_ok=True)
    subprocess.run(["qemu-img", "convert", "-U", "--image-opts", opts, "-O", "raw", str(out)], check=True,
                   capture_output=True)
    text = subprocess.run(["debugfs", "-R", "cat /ticks", str(out)], capture_output=True, text=True).stdout
    out.unlink(missing_ok=True)
    lines = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                lines.append((int(parts[0]), float(parts[1])))
            except ValueError:
                pass
    return lines


def gap_after(point: list[tuple[int, float]], final: list[tuple[int, float]]) -> float | None:
    """How long the writer stalled at a point in time: its next tick (in the later log) minus the
    last tick the point in time holds."""
    if not point:
        return None
    last_seq, last_t = point[-1]
    for seq, t in final:
        if seq == last_seq + 1:
            return round(t - last_t, 3)
    return None


def typical_tick(final: list[tuple[int, float]]) -> float | None:
    iv = [b[1] - a[1] for a, b in zip(final, final[1:])]
    return round(statistics.median(iv), 3) if iv else None


# -- the cloud ------------------------------------------------------------------------------------
class Cloud:
    def __init__(self, base: str, work: Path, pid: int) -> None:
        self.base, self.work, self.pid = base, work, pid
        self.images = httpx.Client(base_url=base + "/image", timeout=600)
        self.nova = httpx.Client(base_url=base + "/compute/v2.1", headers=NOVA, timeout=600)
        self.cinder = httpx.Client(base_url=base + "/volume/v3", headers=CINDER, timeout=600)
        self.wf = httpx.Client(base_url=base + "/v1", timeout=60)
        self.share = work / "volumes"

    # images
    def upload(self, attrs: dict, path: Path) -> str:
        resp = self.images.post("/v2/images", json=attrs)
        resp.raise_for_status()
        image_id = resp.json()["id"]
        with open(path, "rb") as fh:
            r = self.images.put(f"/v2/images/{image_id}/file", content=iter(lambda: fh.read(4 << 20), b""),
                                headers={"Content-Type": "application/octet-stream"}, timeout=3600)
        r.raise_for_status()
        return image_id

    def wait_image(self, image_id: str, timeout: float = 1800) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.images.get(f"/v2/images/{image_id}").json()
            if body.get("status") in ("active", "killed", "deleted"):
                return body
            time.sleep(0.05)
        raise RuntimeError(f"image {image_id} not active in {timeout} s")

    # volumes
    def wait(self, path: str, key: str, statuses: set[str], timeout: float = 600, every: float = 0.02) -> dict | None:
        deadline = time.monotonic() + timeout
        body = None
        while time.monotonic() < deadline:
            resp = self.cinder.get(path)
            if resp.status_code == 404 and "deleted" in statuses:
                return None
            if resp.status_code == 503:         # shed under load (Retry-After): ask again
                self.shed = getattr(self, "shed", 0) + 1
                time.sleep(every)
                continue
            body = resp.json()[key]
            if body["status"] in statuses:
                return body
            time.sleep(every)
        raise RuntimeError(f"{path} not {statuses} in {timeout} s: {body}")

    def volume(self, size_gib: int, name: str, **src: Any) -> str:
        resp = self.cinder.post("/volumes", json={"volume": {"size": size_gib, "name": name, **src}})
        assert resp.status_code == 202, resp.text
        vid = resp.json()["volume"]["id"]
        body = self.wait(f"/volumes/{vid}", "volume", {"available", "error"}, timeout=1800, every=0.1)
        assert body["status"] == "available", body
        return vid

    def info(self, vid: str) -> dict[str, str]:
        path = self.share / f"volume-{vid}.info"
        return json.loads(path.read_text()) if path.exists() else {"active": f"volume-{vid}"}

    def point_in_time(self, vid: str, sid: str) -> tuple[Path, str]:
        """The file holding snapshot ``sid``'s data (the backing of its overlay) and its format."""
        overlay = self.share / self.info(vid)[sid]
        doc = json.loads(qemu_img("info", "-U", "--output=json", "-f", "qcow2", str(overlay)))
        name = doc["backing-filename"]
        return self.share / Path(name).name, doc.get("backing-filename-format") or "raw"

    def active(self, vid: str) -> tuple[Path, str]:
        name = self.info(vid)["active"]
        return self.share / name, ("raw" if name == f"volume-{vid}" else "qcow2")

    def snapshot(self, vid: str, name: str, *, may_fail: bool = False) -> tuple[str, float]:
        """POST /snapshots until available (or error: AssertionError unless ``may_fail``)."""
        t0 = time.monotonic()
        resp = self.cinder.post("/snapshots", json={"snapshot": {"volume_id": vid, "name": name, "force": True}})
        assert resp.status_code == 202, resp.text
        sid = resp.json()["snapshot"]["id"]
        body = self.wait(f"/snapshots/{sid}", "snapshot", {"available", "error"})
        took = time.monotonic() - t0
        if body["status"] != "available" and may_fail:
            self.last_error = body
            return sid, -took
        assert body["status"] == "available", body
        return sid, took

    def snapshot_retry(self, vid: str, name: str, timeout: float = 120) -> tuple[str, float]:
        """A quiesced snapshot once the guest agent answers (os_require_quiesce: error before)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.snapshot(vid, name)
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                for s in self.cinder.get("/snapshots/detail").json()["snapshots"]:
                    if s["status"] == "error":
                        self.cinder.delete(f"/snapshots/{s['id']}")
                time.sleep(2)

    def delete_snapshot(self, sid: str, timeout: float = 1800) -> float:
        t0 = time.monotonic()
        resp = self.cinder.delete(f"/snapshots/{sid}")
        assert resp.status_code == 202, resp.text
        body = self.wait(f"/snapshots/{sid}", "snapshot", {"deleted", "error_deleting"}, timeout=timeout)
        assert body is None, body
        return time.monotonic() - t0

    def reported_frozen(self, snapshot_id: str) -> float | None:
        """The frozen time compute's assisted-snapshot workflow reported (its history detail)."""
        for w in self.wf.get("/workflows", params={"limit": "8"}).json()["workflows"]:
            wf = self.wf.get(f"/workflows/{w['id']}").json()["workflow"]
            for h in wf.get("history", []):
                d = h.get("detail") or ""
                if snapshot_id in d and "frozen " in d:
                    try:
                        return float(d.split("frozen ", 1)[1].split("s")[0])
                    except ValueError:
                        return None
        return None

    def workflows_of(self, resource_id: str) -> list[dict]:
        rows = self.wf.get("/workflows", params={"resource_id": resource_id}).json()["workflows"]
        return [self.wf.get(f"/workflows/{w['id']}").json()["workflow"] for w in rows]

    # servers
    def boot(self, name: str, image: str, bdm: list[dict] | None = None, timeout: float = 600) -> str:
        body: dict[str, Any] = {"name": name, "imageRef": image, "flavorRef": "1"}
        if bdm:
            body["block_device_mapping_v2"] = bdm
        resp = self.nova.post("/servers", json={"server": body})
        assert resp.status_code == 202, resp.text
        sid = resp.json()["server"]["id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.nova.get(f"/servers/{sid}").json()["server"]
            if s["status"] in ("ACTIVE", "ERROR") and s["OS-EXT-STS:task_state"] is None:
                break
            time.sleep(0.25)
        assert s["status"] == "ACTIVE", s
        return sid

    def attach(self, server_id: str, vid: str) -> str:
        resp = self.nova.post(f"/servers/{server_id}/os-volume_attachments", json={"volumeAttachment": {"volumeId": vid}})
        assert resp.status_code == 200, resp.text
        self.wait(f"/volumes/{vid}", "volume", {"in-use"}, timeout=120, every=0.1)
        return resp.json()["volumeAttachment"]["device"].removeprefix("/dev/")

    def action_until_202(self, server_id: str, body: dict, timeout: float = 300) -> tuple[httpx.Response, float]:
        deadline = time.monotonic() + timeout
        while True:   # os_require_quiesce: 409 until the guest agent answers
            t0 = time.monotonic()
            resp = self.nova.post(f"/servers/{server_id}/action", json=body)
            if resp.status_code == 202 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert resp.status_code == 202, resp.text
        return resp, t0

    def wait_workflow(self, workflow_id: str, t0: float, timeout: float = 1800) -> tuple[dict, float]:
        while time.monotonic() - t0 < timeout:
            wf = self.wf.get(f"/workflows/{workflow_id}").json()["workflow"]
            if wf["state"] in ENDED:
                return wf, time.monotonic() - t0
            time.sleep(0.05)
        raise RuntimeError(f"workflow {workflow_id} did not end")

    def delete_image(self, image_id: str) -> None:
        self.images.delete(f"/v2/images/{image_id}")


def phases(wf: dict) -> dict[str, float]:
    """Seconds from the workflow's first history entry to each state (last entry of each)."""
    at = [(h["state"], datetime.fromisoformat(h["at"].replace("Z", "+00:00")).timestamp(), h.get("detail") or "")
          for h in wf.get("history", [])]
    if not at:
        return {}
    first = at[0][1]
    out: dict[str, float] = {}
    for i, (state, t, _d) in enumerate(at):
        out[f"{i:02d}_{state}"] = round(t - first, 3)
    return out


# -- the guest --------------------------------------------------------------------------------------
def bench_initrd(orig: Path, work: Path) -> Path:
    """The test guest's initramfs with this benchmark's /init."""
    tree = work / "initrd-tree"
    tree.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet"], input=gzip.decompress(orig.read_bytes()), cwd=tree, check=True,
                   capture_output=True)
    (tree / "init").write_text(GUEST_INIT)
    (tree / "init").chmod(0o755)
    out = work / "bench-initrd.img"
    listing = subprocess.run(["find", ".", "-print0"], cwd=tree, capture_output=True, check=True).stdout
    packed = subprocess.run(["cpio", "--null", "-o", "-H", "newc", "--quiet"], cwd=tree, input=listing,
                            capture_output=True, check=True).stdout
    out.write_bytes(gzip.compress(packed, compresslevel=1))
    shutil.rmtree(tree)
    return out


def seed_libvirt_caps(work: Path) -> None:
    """libvirt's cached QEMU capabilities (skips a ~8 s probe), as the libvirt tests do."""
    cache = Path(os.environ.get("FREEZEFRAME_CACHE", Path.home() / ".cache" / "freezeframe")) / "libvirt-caps"
    caps = work / "libvirt" / "cache" / "qemu" / "capabilities"
    caps.mkdir(parents=True, exist_ok=True)
    for seed in cache.glob("*.xml"):
        shutil.copy2(seed, caps / seed.name)


# -- T1 ----------------------------------------------------------------------------------------------
def t1(cloud: Cloud, a, server_a: str, results: dict) -> None:
    sizes = a.sizes
    log(f"T1: volumes of {', '.join(f'{s} GiB' for s in sizes)}: offline and attached")
    offline = {s: cloud.volume(s, f"off-{s}") for s in sizes}
    online = {}
    for s in sizes:
        online[s] = cloud.volume(s, f"on-{s}", imageRef=cloud.fs_image)
        dev = cloud.attach(server_a, online[s])
        log(f"  {s} GiB volume attached as {dev}")
    time.sleep(3)           # the guest mounts it and starts its writer
    anchors = {}
    for s in sizes:
        anchors[s], took = cloud.snapshot_retry(online[s], f"anchor-{s}")
        log(f"  anchor snapshot of the {s} GiB volume: {took:.3f} s")
    rec: dict[str, Any] = {"sizes_gib": sizes, "runs": []}
    logs_at: dict[tuple[int, int], list] = {}
    tmp = cloud.work / "ticks.raw"
    for rep in range(a.reps):
        order = [(kind, s) for kind in ("offline", "assisted") for s in sizes]
        order = order[rep % len(order):] + order[:rep % len(order)]
        for kind, s in order:
            vid = offline[s] if kind == "offline" else online[s]
            p0 = psi()
            sid, took = cloud.snapshot(vid, f"{kind}-{s}-{rep}", may_fail=True)
            run: dict[str, Any] = {"rep": rep, "kind": kind, "size_gib": s, "create_s": round(abs(took), 4),
                                   "psi_ms": psi_ms(p0, psi())}
            if took < 0:
                run["error"] = True
                run["frozen_reported_s"] = None
                run["fault"] = str(cloud.last_error.get("os-extended-snapshot-attributes:progress"))
                run["delete_s"] = round(cloud.delete_snapshot(sid), 4)
                rec["runs"].append(run)
                log(f"  rep {rep} {kind:8s} {s:4d} GiB: ERROR after {run['create_s']:.3f} s (see serve's log)")
                continue
            if kind == "assisted":
                pit, pfmt = cloud.point_in_time(vid, sid)
                logs_at[(s, rep)] = prefix_ticks(pit, pfmt, tmp)
                run["point_last_tick"] = logs_at[(s, rep)][-1] if logs_at[(s, rep)] else None
                run["frozen_reported_s"] = cloud.reported_frozen(sid)
            run["delete_s"] = round(cloud.delete_snapshot(sid), 4)
            rec["runs"].append(run)
            log(f"  rep {rep} {kind:8s} {s:4d} GiB: create {run['create_s']:.3f} s, delete {run['delete_s']:.3f} s"
                + (f", reported frozen {run.get('frozen_reported_s')}" if kind == "assisted" else ""))
    results["t1"] = rec
    cloud.t1_volumes = {"online": online, "anchors": anchors, "offline": offline, "logs_at": logs_at}


def t1_finish(cloud: Cloud, a, results: dict) -> None:
    """The assisted runs' writer gaps, from each volume's log at one more (untimed) quiesced
    snapshot — a frozen filesystem is checkpointed: its log is whole there, not in the live file —
    then (--flatten) the deletion of each anchor, a full pull of the volume."""
    st = cloud.t1_volumes
    rec = results["t1"]
    tmp = cloud.work / "ticks.raw"
    finals = {}
    for s, vid in st["online"].items():
        sid, _ = cloud.snapshot(vid, f"final-{s}")
        pit, pfmt = cloud.point_in_time(vid, sid)
        finals[s] = prefix_ticks(pit, pfmt, tmp)
        cloud.delete_snapshot(sid)
        rec.setdefault("typical_tick_s", {})[str(s)] = typical_tick(finals[s])
        iv = [b[1] - a_[1] for a_, b in zip(finals[s], finals[s][1:])]
        rec.setdefault("largest_gap_whole_log_s", {})[str(s)] = round(max(iv), 3) if iv else None
    for run in rec["runs"]:
        if run["kind"] == "assisted":
            run["writer_gap_s"] = gap_after(st["logs_at"].get((run["size_gib"], run["rep"]), []),
                                            finals[run["size_gib"]])
    if a.flatten:
        for s, sid in st["anchors"].items():
            log(f"  deleting the only snapshot of the attached {s} GiB volume (a flatten) ...")
            took = cloud.delete_snapshot(sid, timeout=3600)
            rec.setdefault("flatten_delete_s", {})[str(s)] = round(took, 2)
            log(f"    {took:.2f} s")


# -- T2 ----------------------------------------------------------------------------------------------
def t2(cloud: Cloud, a, servers: dict, results: dict) -> None:
    rec: dict[str, Any] = {"disk": a.t2_disk, "reps": []}
    a_id, b_id = servers["A"], servers["B"]
    devices = servers["A_devices"]
    cold = os.geteuid() == 0
    tmp = cloud.work / "ticks.raw"
    logs: dict[str, dict[int, list]] = {"volume": {}, "root_A": {}, "root_B": {}}
    cloud.t2_logs = logs
    for rep in range(a.t2_reps):
        order = ["three", "one"] if rep % 2 == 0 else ["one", "three"]
        row: dict[str, Any] = {"rep": rep}
        for which in order:
            drop_caches(cold)
            if which == "three":
                resp, t0 = cloud.action_until_202(a_id, {"snapshot": {"name": f"three-{rep}", "devices": devices}})
            else:
                resp, t0 = cloud.action_until_202(b_id, {"createImage": {"name": f"one-{rep}"}})
            wf_id = resp.headers["x-freezeframe-workflow-id"]
            image_id = resp.json()["image_id"]
            wf, e2e = cloud.wait_workflow(wf_id, t0)
            if wf["state"] != "IMAGE_ACTIVE":
                row[which] = {"e2e_s": round(e2e, 3), "failed": wf["state"], "failure": wf.get("failure_reason")}
                log(f"  rep {rep} {which}-disk snapshot ended {wf['state']} after {e2e:.2f} s: {wf.get('failure_reason')}")
                continue
            local = next((h for h in wf["history"] if h["state"] == "LOCAL_SNAPSHOT_COMPLETE"), {})
            image = cloud.images.get(f"/v2/images/{image_id}").json()
            row[which] = {"e2e_s": round(e2e, 3), "detail": local.get("detail"), "phases": phases(wf),
                          "quiesced": image.get("os_freezeframe_snapshot_quiesced"),
                          "included": image.get("os_freezeframe_snapshot_included"), "image_size": image.get("size")}
            d = local.get("detail") or ""
            if d.startswith("frozen"):
                try:
                    row[which]["frozen_s"] = float(d.split("for ")[1].split("s")[0]) if "for " in d else \
                        float(d.split()[1].rstrip(";s"))
                except (ValueError, IndexError):
                    pass
            # the writers' logs at the point in time: the volume's (its snapshot) and the root's (the image)
            if which == "three":
                bdm = json.loads(image.get("block_device_mapping") or "[]")
                snap = next((e["snapshot_id"] for e in bdm if e.get("snapshot_id")), None)
                if snap:
                    pit, pfmt = cloud.point_in_time(servers["A_volume"], snap)
                    logs["volume"][rep] = prefix_ticks(pit, pfmt, tmp)
                    row[which]["volume_last_tick"] = logs["volume"][rep][-1:]
                children = (image.get("os_freezeframe_child_images") or "").split(",")
                row[which]["child_images"] = [c for c in children if c]
            stored = cloud.work / "images" / image_id
            if stored.exists():
                key = "root_A" if which == "three" else "root_B"
                logs[key][rep] = prefix_ticks(stored, "qcow2", tmp)
                row[which]["root_last_tick"] = logs[key][rep][-1:]
            log(f"  rep {rep} {which}-disk snapshot: {e2e:.2f} s to IMAGE_ACTIVE; {d}")
            # untimed: the image goes (its child images and volume snapshot with it)
            cloud.delete_image(image_id)
            for child in row[which].get("child_images", []):
                cloud.delete_image(child)
        ok = not row["three"].get("failed") and not row["one"].get("failed")
        row["ratio"] = round(row["three"]["e2e_s"] / row["one"]["e2e_s"], 3) if ok else None
        rec["reps"].append(row)
        # wait for the owned volume snapshot to be merged away before the next rep
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            snaps = [x for x in cloud.cinder.get("/snapshots/detail").json()["snapshots"]
                     if x["volume_id"] == servers["A_volume"]]
            if not snaps:
                break
            time.sleep(0.2)
        row["merged_away_s"] = round(300 - (deadline - time.monotonic()), 2)
    results["t2"] = rec


def t2_finish(cloud: Cloud, servers: dict, results: dict) -> None:
    """The writers' gaps at each point in time: the next tick is in the next rep's point in time,
    or, after the last rep, in A's logs at one more (untimed) quiesced volume snapshot (it freezes,
    so checkpoints, every filesystem of A: the root's live file is whole up to it). B's last rep
    has no later point in time: no gap for it."""
    tmp = cloud.work / "ticks.raw"
    logs = cloud.t2_logs
    sid, _ = cloud.snapshot(servers["A_volume"], "t2-final")
    pit, pfmt = cloud.point_in_time(servers["A_volume"], sid)
    finals = {"volume": prefix_ticks(pit, pfmt, tmp),
              "root_A": prefix_ticks(cloud.work / "instances" / servers["A"] / "disk", "qcow2", tmp)}
    cloud.delete_snapshot(sid)
    rec = results["t2"]
    rec["typical_tick_s"] = {k: typical_tick(v) for k, v in finals.items()}
    for row in rec["reps"]:
        k = row["rep"]
        for key, which, field in (("volume", "three", "volume_writer_gap_s"), ("root_A", "three", "root_writer_gap_s"),
                                  ("root_B", "one", "root_writer_gap_s")):
            if k not in logs[key]:
                continue
            later = logs[key].get(k + 1) or finals.get(key)
            if later:
                row[which][field] = gap_after(logs[key][k], later)


# -- T3 ----------------------------------------------------------------------------------------------
def t3(cloud: Cloud, a, results: dict) -> None:
    apparent, data = (parse_size(x) for x in a.t3_volume.split(":"))
    gib = -(-apparent // GiB)
    log(f"T3: a {a.t3_volume} volume (apparent:data), its snapshot, volumes from it and uploads of it")
    vid = cloud.volume(gib, "t3")
    path = cloud.share / f"volume-{vid}"
    make_disk(path, gib * GiB, data, None)
    sid, _ = cloud.snapshot(vid, "t3-snap")
    pit, pfmt = cloud.point_in_time(vid, sid)
    top, tfmt = cloud.active(vid)
    cold = os.geteuid() == 0
    rec: dict[str, Any] = {"volume": a.t3_volume, "data_bytes": data, "apparent_bytes": gib * GiB,
                           "allocated_source": allocated(path), "reps": []}
    out_raw, out_qcow2 = cloud.work / "floor.raw", cloud.work / "floor.qcow2"
    for rep in range(a.t3_reps):
        row: dict[str, Any] = {"rep": rep}
        steps = ["floor_raw", "from_snapshot", "floor_qcow2", "upload"]
        if rep % 2:
            steps = ["from_snapshot", "floor_raw", "upload", "floor_qcow2"]
        for step in steps:
            drop_caches(cold)
            if step == "floor_raw":
                io0, c0 = self_io(), children_cpu()
                t0 = time.monotonic()
                subprocess.run(["qemu-img", "convert", "-U", "-f", pfmt, "-O", "raw", "-S", "4k", str(pit),
                                str(out_raw)], check=True)
                row["floor_raw_s"] = round(time.monotonic() - t0, 3)
                row["floor_raw_cpu_s"] = round(children_cpu() - c0, 2)
                io1 = self_io()
                t1_ = time.monotonic()
                fd = os.open(out_raw, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
                row["floor_raw_fsync_s"] = round(time.monotonic() - t1_, 3)
                row["floor_raw_io"] = {k: io1.get(k, 0) - io0.get(k, 0) for k in IO_KEYS}
                row["floor_raw_allocated"] = allocated(out_raw)
                out_raw.unlink()
            elif step == "floor_qcow2":
                io0, c0 = self_io(), children_cpu()
                t0 = time.monotonic()
                subprocess.run(["qemu-img", "convert", "-U", "-f", tfmt, "-O", "qcow2", str(top), str(out_qcow2)],
                               check=True)
                row["floor_convert_qcow2_s"] = round(time.monotonic() - t0, 3)
                row["floor_convert_qcow2_cpu_s"] = round(children_cpu() - c0, 2)
                io1 = self_io()
                row["floor_qcow2_io"] = {k: io1.get(k, 0) - io0.get(k, 0) for k in IO_KEYS}
                h0 = time.process_time()
                row["floor_hash_s"] = round(hash_seconds(out_qcow2, a.hashes), 3)
                row["floor_hash_cpu_s"] = round(time.process_time() - h0, 2)
                row["floor_qcow2_bytes"] = out_qcow2.stat().st_size
                out_qcow2.unlink()
            elif step == "from_snapshot":
                meter = IoMeter(cloud.pid)
                t0 = time.monotonic()
                resp = cloud.cinder.post("/volumes", json={"volume": {"size": gib, "name": f"from-snap-{rep}",
                                                                      "snapshot_id": sid}})
                assert resp.status_code == 202, resp.text
                new = resp.json()["volume"]["id"]
                body = cloud.wait(f"/volumes/{new}", "volume", {"available", "error"}, timeout=1800, every=0.05)
                row["from_snapshot_s"] = round(time.monotonic() - t0, 3)
                row["from_snapshot_io"] = meter.done()
                assert body["status"] == "available", body
                made = cloud.share / f"volume-{new}"
                row["from_snapshot_allocated"] = allocated(made)
                row["from_snapshot_phases"] = [phases(w) for w in cloud.workflows_of(new)]
                cloud.cinder.delete(f"/volumes/{new}")
                cloud.wait(f"/volumes/{new}", "volume", {"deleted", "error_deleting"}, timeout=300, every=0.1)
            else:
                meter = IoMeter(cloud.pid)
                t0 = time.monotonic()
                resp = cloud.cinder.post(f"/volumes/{vid}/action", json={"os-volume_upload_image": {
                    "image_name": f"upload-{rep}", "disk_format": "qcow2", "container_format": "bare"}})
                assert resp.status_code == 202, resp.text
                image_id = resp.json()["os-volume_upload_image"]["image_id"]
                image = cloud.wait_image(image_id)
                cloud.wait(f"/volumes/{vid}", "volume", {"available"}, timeout=600, every=0.05)
                row["upload_s"] = round(time.monotonic() - t0, 3)
                row["upload_io"] = meter.done()
                assert image["status"] == "active", image
                row["upload_image_size"] = image["size"]
                stored = cloud.work / "images" / image_id
                row["upload_stored_allocated"] = allocated(stored) if stored.exists() else None
                row["upload_phases"] = [phases(w) for w in cloud.workflows_of(vid)
                                        if w["kind"] == "volume-upload-image"][:1]
                cloud.delete_image(image_id)
        row["from_snapshot_ratio"] = round(row["from_snapshot_s"] / row["floor_raw_s"], 3)
        floor_up = row["floor_convert_qcow2_s"] + row["floor_hash_s"]
        row["upload_floor_s"] = round(floor_up, 3)
        row["upload_ratio"] = round(row["upload_s"] / floor_up, 3)
        rec["reps"].append(row)
        log(f"  rep {rep}: from snapshot {row['from_snapshot_s']:.2f} s vs convert {row['floor_raw_s']:.2f} s "
            f"({row['from_snapshot_ratio']:.2f}x); upload {row['upload_s']:.2f} s vs convert "
            f"{row['floor_convert_qcow2_s']:.2f} + hash {row['floor_hash_s']:.2f} s ({row['upload_ratio']:.2f}x)")
    results["t3"] = rec


# -- where the time goes: serve's log ------------------------------------------------------------------
def _ts(line: str) -> float:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


ASSISTED_MARKS = (("creating on qcow2file, assisted", "picked_up"), ("RUNNING -> WAITING (waiting for compute: asked", "begun"),
                  ("POST /compute/v2.1/os-assisted-volume-snapshots", "compute_asked"),
                  ("PENDING -> RUNNING (create of snapshot", "compute_picked_up"),
                  ("continues on", "switched"), ("(compute reported creating 100%)", "reported_done"),
                  ("WAITING -> RUNNING (compute done", "resumed"), ("status creating -> available", "available"))


def assisted_timelines(log_text: str) -> list[dict[str, float]]:
    """Per assisted snapshot create: seconds from its POST to each step (serve's INFO log)."""
    out, cur = [], None
    for line in log_text.splitlines():
        if "POST /volume/v3/snapshots 202" in line:
            cur = {"t0": _ts(line)}
            out.append(cur)
            continue
        if cur is None:
            continue
        for mark, name in ASSISTED_MARKS:
            if mark in line and name not in cur:
                cur[name] = round(_ts(line) - cur["t0"], 3)
    return [c for c in out if "compute_asked" in c and "available" in c]


def wait_latencies(log_text: str) -> list[dict[str, Any]]:
    """Each time a workflow raised Waiting: the retry it asked for and how long until it resumed."""
    import re
    waits: dict[str, tuple[float, float, str]] = {}
    out = []
    for line in log_text.splitlines():
        m = re.search(r"workflow ([0-9a-f-]{36}) waits: (.*) \(looked at again in ([0-9.]+)s", line)
        if m:
            waits[m.group(1)] = (_ts(line), float(m.group(3)), m.group(2)[:60])
            continue
        m = re.search(r"workflow ([0-9a-f-]{36}): resuming flow", line)
        if m and m.group(1) in waits:
            at, retry, why = waits.pop(m.group(1))
            out.append({"workflow": m.group(1), "retry_in": retry, "resumed_after": round(_ts(line) - at, 3), "why": why})
    return out


# -- report -------------------------------------------------------------------------------------------
def report(a, results: dict) -> None:
    print("\n==== results ====")
    if "t1" in results:
        rec = results["t1"]
        runs = rec["runs"]
        print(f"T1 volume snapshot create (POST -> available), {a.reps} reps per kind and size:")
        summary: dict[str, Any] = {}
        for kind in ("offline", "assisted"):
            for s in rec["sizes_gib"]:
                rs = [r for r in runs if r["kind"] == kind and r["size_gib"] == s]
                c = [r["create_s"] for r in rs]
                d = [r["delete_s"] for r in rs]
                key = f"{kind}_{s}"
                errs = sum(1 for r in rs if r.get("error"))
                summary[key] = {"create_median_s": med(c), "create_p95_s": p95(c), "create_max_s": max(c),
                                "delete_median_s": med(d), "delete_p95_s": p95(d), "errors": errs}
                line = (f"  {kind:8s} {s:4d} GiB: create median {fmt(med(c))} s, p95 {fmt(p95(c))} s, max "
                        f"{fmt(max(c))} s{f' ({errs} ended in error, counted at their time to error)' if errs else ''}; "
                        f"delete median {fmt(med(d))} s, p95 {fmt(p95(d))} s")
                if kind == "assisted":
                    g = [r.get("writer_gap_s") for r in rs]
                    f = [r.get("frozen_reported_s") for r in rs]
                    summary[key].update(gap_median_s=med(g), gap_p95_s=p95(g),
                                        gap_max_s=max([x for x in g if x is not None], default=None),
                                        frozen_reported_median_s=med(f))
                    line += (f"; writer gap median {fmt(med(g))} s, p95 {fmt(p95(g))} s, max "
                             f"{fmt(summary[key]['gap_max_s'])} s (reported frozen median {fmt(med(f))} s)")
                print(line)
        small, big = rec["sizes_gib"][0], rec["sizes_gib"][-1]
        for kind in ("offline", "assisted"):
            # ratio of medians and median of per-rep ratios
            pairs = [(next(r["create_s"] for r in runs if r["kind"] == kind and r["size_gib"] == big and r["rep"] == k),
                      next(r["create_s"] for r in runs if r["kind"] == kind and r["size_gib"] == small and r["rep"] == k))
                     for k in range(a.reps)]
            summary[f"{kind}_ratio_of_medians"] = round(summary[f"{kind}_{big}"]["create_median_s"]
                                                        / summary[f"{kind}_{small}"]["create_median_s"], 3)
            summary[f"{kind}_ratio_median_per_rep"] = round(med([b / s for b, s in pairs]), 3)
            print(f"  {kind}: {big} GiB / {small} GiB = {summary[f'{kind}_ratio_of_medians']:.2f}x (ratio of medians), "
                  f"{summary[f'{kind}_ratio_median_per_rep']:.2f}x (median of per-rep ratios); target <= 1.2x")
        slow = [r for r in runs if r["create_s"] > 2.0]
        if slow:
            print(f"  runs over 2 s ({len(slow)}): " + "; ".join(
                f"{r['kind']} {r['size_gib']} GiB {r['create_s']:.2f} s (machine io stall full "
                f"{r.get('psi_ms', {}).get('io_full', '?')} ms, cpu some {r.get('psi_ms', {}).get('cpu_some', '?')} ms)"
                for r in slow))
        allc = [r["create_s"] for r in runs if r["kind"] == "assisted"]
        allg = [r.get("writer_gap_s") for r in runs if r["kind"] == "assisted"]
        summary["assisted_all_p95_s"] = p95(allc)
        summary["assisted_all_gap_max_s"] = max([g for g in allg if g is not None], default=None)
        print(f"  assisted, all {len(allc)} runs: p95 {fmt(p95(allc))} s (target <= 1 s); writer gap max "
              f"{fmt(summary['assisted_all_gap_max_s'])} s (target <= 0.3 s); typical tick {rec.get('typical_tick_s')}")
        tl = rec.get("timelines") or []
        if tl:
            steps = [name for _m, name in ASSISTED_MARKS]
            prev, parts = "t0", {}
            for name in steps:
                parts[f"{prev}->{name}"] = med([t[name] - (t[prev] if prev != "t0" else 0.0) for t in tl
                                                if name in t and (prev == "t0" or prev in t)])
                prev = name
            summary["assisted_steps_median_s"] = parts
            print("  assisted create, median seconds per step (serve's log, all sizes): "
                  + ", ".join(f"{k.split('->')[1]} +{fmt(v)}" for k, v in parts.items()))
        if rec.get("flatten_delete_s"):
            print(f"  deleting an attached volume's only snapshot (a full pull): {rec['flatten_delete_s']} s")
        rec["summary"] = summary
    if results.get("waits"):
        ws = results["waits"]
        short = [w for w in ws if w["retry_in"] < 1.0]
        print(f"Waiting steps (serve's log): {len(ws)}; those asking to be looked at again in < 1 s ({len(short)}) "
              f"resumed after median {fmt(med([w['resumed_after'] for w in short]))} s, max "
              f"{fmt(max([w['resumed_after'] for w in short], default=None))} s")
    if "t2" in results:
        rec = results["t2"]
        reps = rec["reps"]
        three = [r["three"]["e2e_s"] for r in reps if not r["three"].get("failed")]
        one = [r["one"]["e2e_s"] for r in reps if not r["one"].get("failed")]
        ratios = [r["ratio"] for r in reps if r["ratio"] is not None]
        failed = [(r["rep"], w, r[w]["failed"], r[w].get("failure")) for r in reps for w in ("three", "one")
                  if r[w].get("failed")]
        if failed:
            print(f"  FAILED snapshots: {failed}")
        fz = [r["three"].get("frozen_s") for r in reps]
        gv = [r["three"].get("volume_writer_gap_s") for r in reps]
        gr = [r["three"].get("root_writer_gap_s") for r in reps]
        g1 = [r["one"].get("root_writer_gap_s") for r in reps]
        rec["summary"] = {"three_median_s": med(three), "one_median_s": med(one), "ratio_median_per_rep": med(ratios),
                          "ratio_of_medians": round(med(three) / med(one), 3), "frozen_median_s": med(fz),
                          "frozen_max_s": max([x for x in fz if x is not None], default=None),
                          "volume_gap_max_s": max([x for x in gv if x is not None], default=None),
                          "root_gap_max_s": max([x for x in gr if x is not None], default=None),
                          "one_root_gap_max_s": max([x for x in g1 if x is not None], default=None)}
        s = rec["summary"]
        print(f"T2 instance snapshot of three disks ({a.t2_disk} each) vs createImage of one disk with the same data, "
              f"{len(reps)} reps:")
        print(f"  three disks: median {fmt(s['three_median_s'], '.2f')} s {three}")
        print(f"  one disk:    median {fmt(s['one_median_s'], '.2f')} s {one}")
        print(f"  ratio: median of per-rep {fmt(s['ratio_median_per_rep'], '.2f')}x {ratios}; of medians "
              f"{s['ratio_of_medians']:.2f}x (target <= 1.1x)")
        print(f"  frozen (workflow detail): median {fmt(s['frozen_median_s'])} s, max {fmt(s['frozen_max_s'])} s; "
              f"writer gap max: volume {fmt(s['volume_gap_max_s'])} s, root {fmt(s['root_gap_max_s'])} s "
              f"(one-disk root {fmt(s['one_root_gap_max_s'])} s); target <= 1 s; typical tick {rec.get('typical_tick_s')}")
    if "t3" in results:
        rec = results["t3"]
        reps = rec["reps"]
        for r in reps:
            r["floor_raw_durable_s"] = round(r["floor_raw_s"] + r.get("floor_raw_fsync_s", 0.0), 3)
            r["from_snapshot_ratio_durable"] = round(r["from_snapshot_s"] / r["floor_raw_durable_s"], 3)
            r["from_snapshot_cpu_s"] = r["from_snapshot_io"].get("serve_cpu_s")
            r["upload_cpu_s"] = r["upload_io"].get("serve_cpu_s")
            r["upload_floor_cpu_s"] = round(r.get("floor_convert_qcow2_cpu_s", 0) + r.get("floor_hash_cpu_s", 0), 2)
        keys = ("from_snapshot_s", "floor_raw_s", "from_snapshot_ratio", "upload_s", "floor_convert_qcow2_s",
                "floor_hash_s", "upload_floor_s", "upload_ratio", "floor_raw_fsync_s", "floor_raw_durable_s",
                "from_snapshot_ratio_durable", "from_snapshot_cpu_s", "floor_raw_cpu_s", "upload_cpu_s",
                "upload_floor_cpu_s")
        rec["summary"] = {k: med([r.get(k) for r in reps]) for k in keys}
        s = rec["summary"]
        print(f"T3 {rec['volume']} volume (apparent:data), {len(reps)} reps:")
        print(f"  volume from snapshot {s['from_snapshot_s']:.2f} s vs qemu-img convert -O raw {s['floor_raw_s']:.2f} s: "
              f"{s['from_snapshot_ratio']:.2f}x (median of per-rep ratios; target <= 1.3x)")
        print(f"    with the fsync our driver does (convert + fsync {s['floor_raw_durable_s']:.2f} s): "
              f"{s['from_snapshot_ratio_durable']:.2f}x; CPU: serve + qemu-img {fmt(s['from_snapshot_cpu_s'], '.2f')} s, "
              f"floor qemu-img {fmt(s['floor_raw_cpu_s'], '.2f')} s")
        print(f"  upload to image (qcow2) {s['upload_s']:.2f} s vs convert {s['floor_convert_qcow2_s']:.2f} + hash "
              f"{s['floor_hash_s']:.2f} = {s['upload_floor_s']:.2f} s: {s['upload_ratio']:.2f}x (target <= 1.3x)")
        print(f"    CPU: serve + qemu-nbd {fmt(s['upload_cpu_s'], '.2f')} s, floor (qemu-img + hashing) "
              f"{fmt(s['upload_floor_cpu_s'], '.2f')} s")
        for r in reps:
            fs, up = r["from_snapshot_io"]["serve_tree"], r["upload_io"]["serve_tree"]
            print(f"  rep {r['rep']} bytes (MB) from snapshot: serve+children rchar {fs['rchar'] / 1e6:.0f} wchar "
                  f"{fs['wchar'] / 1e6:.0f} read {fs['read_bytes'] / 1e6:.0f} written {fs['write_bytes'] / 1e6:.0f}; "
                  f"new volume allocated {r['from_snapshot_allocated'] / 1e6:.0f} (floor: rchar "
                  f"{r['floor_raw_io']['rchar'] / 1e6:.0f} wchar {r['floor_raw_io']['wchar'] / 1e6:.0f})")
            print(f"        upload: serve+children rchar {up['rchar'] / 1e6:.0f} wchar {up['wchar'] / 1e6:.0f} read "
                  f"{up['read_bytes'] / 1e6:.0f} written {up['write_bytes'] / 1e6:.0f}; per child "
                  f"{ {k: {kk: round(vv / 1e6) for kk, vv in v.items()} for k, v in r['upload_io']['children_last_seen'].items()} }; "
                  f"image {r['upload_image_size'] / 1e6:.0f} MB, stored allocated "
                  f"{(r['upload_stored_allocated'] or 0) / 1e6:.0f} MB (floor qcow2 {r['floor_qcow2_bytes'] / 1e6:.0f} MB)")
        print(f"  data {rec['data_bytes'] / 1e6:.0f} MB in {rec['apparent_bytes'] / 1e6:.0f} MB apparent "
              f"(source allocated {rec['allocated_source'] / 1e6:.0f} MB)")


# -- main ---------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a couple of minutes: small sizes, few reps")
    ap.add_argument("--only", default="t1,t2,t3")
    ap.add_argument("--sizes", default="1,100", help="T1 volume sizes, GiB (the first and last are compared)")
    ap.add_argument("--reps", type=int, default=20, help="T1 reps per kind (offline, assisted) and size")
    ap.add_argument("--t2-disk", default="4G:512M", help="T2 APPARENT:DATA of each of the three disks")
    ap.add_argument("--t2-reps", type=int, default=5)
    ap.add_argument("--t3-volume", default="4G:1G", help="T3 APPARENT:DATA of the volume")
    ap.add_argument("--t3-reps", type=int, default=3)
    ap.add_argument("--tick", default="0.02", help="the guest writers' period, seconds")
    ap.add_argument("--flatten", action="store_true",
                    help="at the end of T1, time deleting each attached volume's only snapshot (a full pull)")
    ap.add_argument("--hashes", choices=sorted(HASH_PROFILES), default="md5+sha512")
    ap.add_argument("--name", default=None, help="results as bench/results/<name>.{json,txt}")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="an extra setting for serve (experiments), e.g. FREEZEFRAME_CONDUCTOR__SCAN_INTERVAL=0.25")
    a = ap.parse_args()
    if a.quick:
        a.sizes, a.reps, a.t2_disk, a.t2_reps, a.t3_volume, a.t3_reps = "1,100", 3, "1G:64M", 1, "1G:256M", 1
    a.sizes = [int(x) for x in str(a.sizes).split(",")]
    only = set(a.only.split(","))
    name = a.name or ("volume-quick" if a.quick else "volume-latest")
    out_dir = Path(os.environ.get("BENCH_RESULTS", ROOT / "bench" / "results"))
    out_dir.mkdir(parents=True, exist_ok=True)
    txt = open(out_dir / f"{name}.txt", "w")
    sys.stdout = Tee(sys.__stdout__, txt)
    log(f"volume_bench {' '.join(sys.argv[1:])}; load average {os.getloadavg()}")

    guest = dict(line.split("=", 1) for line in subprocess.run(
        [str(ROOT / "scripts" / "build-test-guest")], capture_output=True, text=True, check=True).stdout.splitlines()
        if "=" in line)
    work = Path(tempfile.mkdtemp(prefix="vb", dir="/var/tmp"))     # short: the agent socket's path
    work.chmod(0o755)
    seed_libvirt_caps(work)
    initrd = bench_initrd(Path(guest["INITRD"]), work)
    template = Path(guest["DATA_DISK"])
    port = free_port()
    server_log = open(work / "server.log", "wb")
    env = {**os.environ, "FREEZEFRAME_COMPUTE__DRIVER": "libvirt", **HASH_PROFILES[a.hashes],
           **dict(kv.split("=", 1) for kv in a.env)}
    server = subprocess.Popen([str(ROOT / ".venv" / "bin" / "freezeframe"), "serve", "--data-dir", str(work),
                               "--port", str(port), "--auth", "noauth", "--log-level", "info"],
                              stdout=server_log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    t_start = time.monotonic()
    results: dict[str, Any] = {"args": {k: v for k, v in vars(a).items()}, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                               "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                                        capture_output=True, text=True).stdout.strip(),
                               "load_start": os.getloadavg()}
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/healthcheck", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                raise RuntimeError("serve exited: " + (work / "server.log").read_text()[-3000:])
            time.sleep(0.1)
        cloud = Cloud(base, work, server.pid)
        cmdline = guest["CMDLINE"] + f" ff.tick={a.tick}"
        kernel = cloud.upload({"name": "k", "disk_format": "aki", "container_format": "aki"}, Path(guest["KERNEL"]))
        ramdisk = cloud.upload({"name": "i", "disk_format": "ari", "container_format": "ari"}, initrd)
        boot_props = {"kernel_id": kernel, "ramdisk_id": ramdisk, "os_command_line": cmdline,
                      "hw_qemu_guest_agent": "yes", "os_require_quiesce": "yes"}
        cloud.fs_image = cloud.upload({"name": "ext4", "disk_format": "raw", "container_format": "bare"}, template)

        # Server A: root + a second local disk + a volume (T2), and T1's volumes attached later.
        app, data = (parse_size(x) for x in a.t2_disk.split(":"))
        servers: dict[str, Any] = {}
        if "t2" in only:
            log(f"T2 disks: 3 x {a.t2_disk}, and one of {3 * app >> 20} MiB apparent with {3 * data >> 20} MiB data")
            disks = {}
            for key, ap_, da_ in (("root", app, data), ("local", app, data), ("vol", app, data),
                                  ("one", 3 * app, 3 * data)):
                p = work / f"{key}.raw"
                make_disk(p, ap_, da_, template)
                attrs = {"name": key, "disk_format": "raw", "container_format": "bare"}
                if key in ("root", "one"):
                    attrs.update(boot_props)
                disks[key] = cloud.upload(attrs, p)
                p.unlink()
            vol = cloud.volume(-(-app // GiB), "t2-vol", imageRef=disks["vol"])
            servers["A_volume"] = vol
            t0 = time.monotonic()
            servers["A"] = cloud.boot("A", disks["root"], [
                {"source_type": "image", "destination_type": "local", "uuid": disks["local"], "boot_index": -1},
                {"source_type": "volume", "destination_type": "volume", "uuid": vol, "boot_index": -1}])
            atts = cloud.nova.get(f"/servers/{servers['A']}/os-volume_attachments").json()["volumeAttachments"]
            vdev = next(x["device"] for x in atts if x["volumeId"] == vol).removeprefix("/dev/")
            servers["A_devices"] = ["vda", "vdb", vdev]
            log(f"server A ACTIVE in {time.monotonic() - t0:.1f} s: devices {servers['A_devices']}")
            t0 = time.monotonic()
            servers["B"] = cloud.boot("B", disks["one"])
            log(f"server B ACTIVE in {time.monotonic() - t0:.1f} s")
        else:
            root = cloud.upload({"name": "root", "disk_format": "raw", "container_format": "bare", **boot_props}, template)
            servers["A"] = cloud.boot("A", root)
        # the agent answers (a quiesced snapshot needs it): wait for it through a harmless 409 loop
        time.sleep(5)
        results["setup_s"] = round(time.monotonic() - t_start, 1)
        log(f"set up in {results['setup_s']} s")

        if "t1" in only:
            # T1's volumes go to B (root + 2 volumes = 3 filesystems frozen, as A's root, local disk
            # and volume for T2): each guest freezes the same number of filesystems
            t1(cloud, a, servers.get("B", servers["A"]), results)
            t1_finish(cloud, a, results)
        if "t2" in only:
            log(f"T2: {a.t2_reps} reps, interleaved")
            t2(cloud, a, servers, results)
            t2_finish(cloud, servers, results)
        if "t3" in only:
            t3(cloud, a, results)
        log_text = (work / "server.log").read_text(errors="replace")
        if "t1" in results:
            results["t1"]["timelines"] = assisted_timelines(log_text)
        waits = wait_latencies(log_text)
        results["waits"] = waits
        results["load_end"] = os.getloadavg()
        results["wall_s"] = round(time.monotonic() - t_start, 1)
        results["answers_503"] = getattr(cloud, "shed", 0)
        report(a, results)
        (out_dir / f"{name}.json").write_text(json.dumps(results, indent=1, default=str))
        log(f"done in {results['wall_s']} s; results in {out_dir / name}.json/.txt; load average {os.getloadavg()}")
    finally:
        try:
            for s in httpx.get(base + "/compute/v2.1/servers", headers=NOVA, timeout=30).json().get("servers", []):
                httpx.delete(f"{base}/compute/v2.1/servers/{s['id']}", headers=NOVA, timeout=60)
            time.sleep(3)
        except Exception:
            pass
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
