#!/usr/bin/env python3
"""Instance snapshot benchmark (issue 3): a server whose disk is APPARENT big and holds DATA of
random data, snapshotted live through the API, next to `qemu-img convert -O qcow2` of the same
disk in the same run.

usage: bench/snapshot_bench.py [--disk 20G:2G] [--reps 3] [--hashes md5+sha512|sha256] [--keep]

Starts its own `freezeframe serve` (libvirt driver, embedded mode, TCG, noauth) in a fresh
directory under /var/tmp, registers the tiny test guest's kernel and initramfs and a raw disk
image, boots a server, waits until its guest agent answers, then per rep: times the
createImage call, polls the workflow until IMAGE_ACTIVE (end-to-end time), reads the guest's
frozen time from the workflow history, and counts the bytes the server process tree and its
QEMU processes wrote to local disk during the snapshot; and times `qemu-img convert -O qcow2` of the
server's disk chain; then --api-samples more createImage calls, each cancelled at once, for the
call's p95. Prints medians and ratios; writes bench/results/snapshot-<hashes>.json.
A benchmark, not a test: it exits 0 when it ran. Talks to 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
NOVA = {"X-OpenStack-Nova-API-Version": "2.45"}
HASH_PROFILES = {
    "md5+sha512": {},
    "sha256": {"FREEZEFRAME_IMAGES__HASH_ALGO": "sha256", "FREEZEFRAME_IMAGES__LEGACY_MD5": "false"},
}


def hash_seconds(path: Path, profile: str) -> float:
    """The CPU floor of the upload: hashing the image's bytes (warm cache) as the image service
    does — each algorithm on its own thread, side by side."""
    import hashlib
    import threading
    names = ["md5", "sha512"] if profile == "md5+sha512" else ["sha256"]
    hashers = [hashlib.new(n) for n in names]
    with open(path, "rb") as fh:
        blocks = iter(lambda: fh.read(4 << 20), b"")
        t = time.monotonic()
        for block in blocks:
            threads = [threading.Thread(target=h.update, args=(block,)) for h in hashers]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
    return time.monotonic() - t


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_write_bytes(pid: int) -> int:
    """write_bytes (what reached the block layer) of pid and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in open(f"/proc/{p}/io"):
                if line.startswith("write_bytes:"):
                    total += int(line.split()[1])
        except OSError:
            pass
        todo += children.get(p, [])
    return total


def qemu_write_bytes(work: Path) -> int:
    """write_bytes of the QEMU processes of this run (libvirt daemonizes them: not in our tree)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
            if b"qemu-system" not in cmdline or str(work).encode() not in cmdline:
                continue
            for line in open(f"/proc/{entry}/io"):
                if line.startswith("write_bytes:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def drop_caches(enabled: bool) -> None:
    """Both timed operations start from a cold page cache, or the one that runs second wins."""
    subprocess.run(["sync"], check=True)
    if enabled:
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        except OSError:
            pass


def make_disk(path: Path, apparent: int, data: int) -> None:
    chunks = 64
    piece = data // chunks
    stride = apparent // chunks
    with open(path, "wb") as fh:
        fh.truncate(apparent)
        block = os.urandom(1 << 20)
        for i in range(chunks):
            fh.seek(i * stride)
            for _ in range(piece >> 20):
                fh.write(block)


def upload(client: httpx.Client, attrs: dict, path: Path) -> str:
    resp = client.post("/v2/images", json=attrs)
    resp.raise_for_status()
    image_id = resp.json()["id"]
    with open(path, "rb") as fh:
        r = client.put(f"/v2/images/{image_id}/file", content=iter(lambda: fh.read(4 << 20), b""),
                       headers={"Content-Type": "application/octet-stream"}, timeout=3600)
    r.raise_for_status()
    return image_id


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--disk", default="20G:2G", help="APPARENT:DATA of the server's disk")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--api-samples", type=int, default=20,
                    help="extra createImage calls, each cancelled at once, for the call's p95 (the top half "
                         "does not depend on the disk size)")
    ap.add_argument("--hashes", choices=sorted(HASH_PROFILES), default="md5+sha512",
                    help="the image service's hashes: Glance's default (md5 checksum + sha512 multihash) "
                         "or sha256 alone (images.hash_algo=sha256, images.legacy_md5=false)")
    ap.add_argument("--warm", action="store_true",
                    help="do not drop the page cache before each timed run (default: drop it when root, so "
                         "the snapshot and qemu-img convert both start cold)")
    a = ap.parse_args()
    apparent, data = (parse_size(x) for x in a.disk.split(":"))

    guest = dict(line.split("=", 1) for line in subprocess.run(
        [str(ROOT / "scripts" / "build-test-guest")], capture_output=True, text=True, check=True).stdout.splitlines()
        if "=" in line)
    # Short: libvirt's embedded root holds the guest agent socket (a 108-byte path limit).
    work = Path(tempfile.mkdtemp(prefix="sb", dir="/var/tmp"))
    work.chmod(0o755)
    port = free_port()
    server_log = open(work / "server.log", "wb")
    server = subprocess.Popen([str(ROOT / ".venv" / "bin" / "freezeframe"), "serve", "--data-dir", str(work),
                               "--port", str(port), "--auth", "noauth", "--log-level", "info"],
                              stdout=server_log, stderr=subprocess.STDOUT, env={**os.environ, **HASH_PROFILES[a.hashes]})
    base = f"http://127.0.0.1:{port}"
    results: dict = {"disk": a.disk, "hashes": a.hashes, "reps": []}
    try:
        for _ in range(300):
            try:
                if httpx.get(base + "/healthcheck", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        images = httpx.Client(base_url=base + "/image", timeout=600)
        nova = httpx.Client(base_url=base + "/compute/v2.1", headers=NOVA, timeout=600)
        log(f"making a {a.disk} disk")
        disk = work / "disk.raw"
        make_disk(disk, apparent, data)
        kernel = upload(images, {"name": "k", "disk_format": "aki", "container_format": "aki"}, Path(guest["KERNEL"]))
        initrd = upload(images, {"name": "i", "disk_format": "ari", "container_format": "ari"}, Path(guest["INITRD"]))
        t = time.monotonic()
        image = upload(images, {"name": "big", "disk_format": "raw", "container_format": "bare", "kernel_id": kernel,
                                "ramdisk_id": initrd, "os_command_line": guest["CMDLINE"] + " ff.nodata",
                                "hw_qemu_guest_agent": "yes", "os_require_quiesce": "yes"}, disk)
        log(f"image registered in {time.monotonic() - t:.1f}s")
        t = time.monotonic()
        server_id = nova.post("/servers", json={"server": {"name": "big", "imageRef": image, "flavorRef": "1"}}
                              ).json()["server"]["id"]
        for _ in range(1200):
            body = nova.get(f"/servers/{server_id}").json()["server"]
            if body["status"] in ("ACTIVE", "ERROR") and body["OS-EXT-STS:task_state"] is None:
                break
            time.sleep(0.25)
        assert body["status"] == "ACTIVE", body
        log(f"server ACTIVE in {time.monotonic() - t:.1f}s (image cached locally, sparse)")
        root_disk = work / "instances" / server_id / "disk"

        for rep in range(a.reps):
            # qemu-img convert of the same disk chain (the server keeps running: -U)
            cold = not a.warm and os.geteuid() == 0
            out = work / "convert.qcow2"
            drop_caches(cold)
            t = time.monotonic()
            subprocess.run(["qemu-img", "convert", "-U", "-O", "qcow2", str(root_disk), str(out)], check=True)
            convert_s = time.monotonic() - t
            convert_size = out.stat().st_size
            hashing_s = hash_seconds(out, a.hashes)
            out.unlink()

            drop_caches(cold)
            written0 = tree_write_bytes(server.pid) + qemu_write_bytes(work)
            nova.get(f"/servers/{server_id}")     # a live server's metadata is in memory: not cold
            deadline = time.monotonic() + 300
            while True:   # os_require_quiesce: 409 until the guest agent answers
                t = time.monotonic()
                resp = nova.post(f"/servers/{server_id}/action", json={"createImage": {"name": f"snap-{rep}"}})
                call_ms = (time.monotonic() - t) * 1000
                if resp.status_code == 202 or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert resp.status_code == 202, resp.text
            t0 = t
            workflow_id, snap = resp.headers["x-freezeframe-workflow-id"], resp.json()["image_id"]
            while time.monotonic() - t0 < 1800:
                wf = httpx.get(f"{base}/v1/workflows/{workflow_id}").json()["workflow"]
                if wf["state"] in ("IMAGE_ACTIVE", "REVERTED", "CANCELLED"):
                    break
                time.sleep(0.05)
            e2e_s = time.monotonic() - t0
            written = tree_write_bytes(server.pid) + qemu_write_bytes(work) - written0
            assert wf["state"] == "IMAGE_ACTIVE", wf
            local = next(h for h in wf["history"] if h["state"] == "LOCAL_SNAPSHOT_COMPLETE")
            frozen = float(local["detail"].split()[1].rstrip(";s")) if local["detail"].startswith("frozen") else None
            size = images.get(f"/v2/images/{snap}").json()["size"]
            rec = {"cold_cache": cold, "api_ms": round(call_ms, 1), "e2e_s": round(e2e_s, 2), "convert_s": round(convert_s, 2),
                   "ratio": round(e2e_s / convert_s, 2), "frozen_s": frozen, "image_bytes": size,
                   "convert_bytes": convert_size, "local_written_bytes": written,
                   "hash_floor_s": round(hashing_s, 2), "other_written_bytes": written - size}
            results["reps"].append(rec)
            log(f"rep {rep}: {rec}")
            images.delete(f"/v2/images/{snap}")
        # The call's latency distribution: more calls than snapshots, each cancelled at once.
        calls = [r["api_ms"] for r in results["reps"]]
        for _ in range(a.api_samples):
            nova.get(f"/servers/{server_id}")
            t = time.monotonic()
            resp = nova.post(f"/servers/{server_id}/action", json={"createImage": {"name": "latency"}})
            calls.append(round((time.monotonic() - t) * 1000, 1))
            assert resp.status_code == 202, resp.text
            workflow_id = resp.headers["x-freezeframe-workflow-id"]
            httpx.delete(f"{base}/v1/workflows/{workflow_id}")
            while httpx.get(f"{base}/v1/workflows/{workflow_id}").json()["workflow"]["state"] not in (
                    "IMAGE_ACTIVE", "REVERTED", "CANCELLED"):
                time.sleep(0.05)
            while nova.get(f"/servers/{server_id}").json()["server"]["OS-EXT-STS:task_state"] is not None:
                time.sleep(0.05)
        calls.sort()
        results["api_calls_ms"] = calls
        results["api_p50_ms"] = statistics.median(calls)
        results["api_p95_ms"] = calls[min(len(calls) - 1, round(0.95 * (len(calls) - 1)))]
        reps = results["reps"]
        med = {k: statistics.median(r[k] for r in reps if r[k] is not None)
               for k in ("api_ms", "e2e_s", "convert_s", "ratio", "frozen_s", "image_bytes", "local_written_bytes",
                         "hash_floor_s", "other_written_bytes")}
        results["median"] = med
        results["api_ms_max"] = max(r["api_ms"] for r in reps)
        print(f"\nsnapshot of a {a.disk} disk (apparent:data), hashes {a.hashes}, {a.reps} reps, medians:")
        print(f"  createImage call        {results['api_p50_ms']:8.1f} ms   (p95 {results['api_p95_ms']} ms, max "
              f"{max(results['api_calls_ms'])} ms over {len(results['api_calls_ms'])} calls; target p95 <= 100 ms)")
        print(f"  end to end              {med['e2e_s']:8.2f} s")
        print(f"  qemu-img convert        {med['convert_s']:8.2f} s")
        print(f"  ratio e2e / convert     {med['ratio']:8.2f} x   (target <= 1.5x)")
        print(f"  hashing the image alone {med['hash_floor_s']:8.2f} s   ({a.hashes}, warm cache: the upload's CPU floor)")
        print(f"  guest frozen            {med['frozen_s']:8.3f} s   (target <= 1 s)")
        print(f"  image size              {med['image_bytes'] / 1e6:8.0f} MB")
        print(f"  written to local disk   {med['local_written_bytes'] / 1e6:8.0f} MB  (server + QEMU, during the snapshot)")
        print(f"    besides the image     {med['other_written_bytes'] / 1e6:8.0f} MB  (the image itself is stored "
              f"locally: the file store)")
        out = ROOT / "bench" / "results" / f"snapshot-{a.hashes}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        log(f"results written to {out}")
        try:
            nova.delete(f"/servers/{server_id}")
        except httpx.HTTPError:
            pass
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
