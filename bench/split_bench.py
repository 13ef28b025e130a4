#!/usr/bin/env python3
"""Snapshot end to end, split vs embedded, and vs hash + convert (issue 8), in one run.

usage: bench/split_bench.py [--disk 20G:2G] [--reps 3] [--hashes md5+sha512|sha256] [--keep] [--profile DIR]

Both deployments run side by side for the whole run, on the same PostgreSQL cluster (one
database each), the libvirt driver (embedded mode, TCG), the tiny test guest with its agent, a
server booted from the same APPARENT:DATA image (registered as qcow2), fsync on (the default):

  embedded  `freezeframe serve` on 127.0.0.1 (APIs, conductor and compute in one process);
  split     network namespaces as hosts (tests/netns.py): `freezeframe api` on "api",
            `freezeframe compute --host hb --driver libvirt` on "hb", `freezeframe conductor`
            (compute disabled) on "c1" — the point in time is read from hb over NBD/TLS,
            the image goes to the API host over HTTP.

Per rep, interleaved (the order of the two snapshots alternates from rep to rep): `qemu-img
convert -U -O qcow2` of the embedded server's disk chain, the time to hash its output with the
image service's algorithms (warm cache), then a quiesced createImage on each deployment, timed
from the call to IMAGE_ACTIVE, with the CPU seconds (user + system) of each side's processes
sampled meanwhile. The page cache is dropped before each timed operation (as root). --profile DIR:
py-spy flame data (raw) of each side's processes during the first rep.
Prints medians and the ratios split/embedded (target A <= 1.15x) and embedded/(hash + convert)
(target B <= 1.3x); writes bench/results/split-<hashes>.json. A benchmark, not a test: exits 0
when it ran. Needs root (namespaces), PostgreSQL binaries and redis-server.
"""

from __future__ import annotations

import argparse
import resource
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from snapshot_bench import HASH_PROFILES, drop_caches, free_port, hash_seconds, log, make_disk, parse_size  # noqa: E402
from tests.conftest import MEMBER_TOKEN, TOKENS  # noqa: E402
from tests.netns import Split, lab, split_env  # noqa: E402

NOVA = {"X-OpenStack-Nova-API-Version": "2.45"}
ENDED = ("IMAGE_ACTIVE", "REVERTED", "CANCELLED", "FAILED")
AUTH = {"X-Auth-Token": MEMBER_TOKEN}


def wait_http(url: str, proc: subprocess.Popen, log_path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


CLK = os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds (user + system) a set of processes spend while a snapshot runs: those whose
    network namespace is one of ``netns_of`` (the split's hosts: its API workers, conductor,
    compute process, qemu-nbd, QEMU) or whose command line names ``path`` (embedded: serve's
    QEMU; serve itself by ``pids``). Sampled as the bench polls: short-lived processes (a
    qemu-nbd export) count up to their last sample."""

    def __init__(self, pids: tuple[int, ...] = (), netns_of: tuple[int, ...] = (), path: str = "") -> None:
        self.pids, self.path = set(pids), path.encode()
        self.netns = {os.readlink(f"/proc/{p}/ns/net") for p in netns_of}
        self.first: dict[int, tuple[str, float]] = {}
        self.last: dict[int, float] = {}

    def _mine(self, pid: int) -> bool:
        if pid in self.pids:
            return True
        try:
            if self.netns and os.readlink(f"/proc/{pid}/ns/net") in self.netns:
                return True
            return bool(self.path) and self.path in open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            return False

    def sample(self, start: bool = False) -> None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            if pid not in self.first and not self._mine(pid):
                continue
            try:
                stat = open(f"/proc/{pid}/stat").read()
            except OSError:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            if name.startswith(("python", "freezeframe")) and pid not in self.first:     # by role
                try:
                    args = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
                    role = next((args[i + 1].decode() for i, x in enumerate(args[:-1])
                                 if x.endswith((b"freezeframe", b"-m")) and args[i + 1] != b"freezeframe"), "")
                    name = f"freezeframe {role}".strip() if role else name
                except OSError:
                    pass
            fields = stat.rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / CLK
            if pid not in self.first:
                self.first[pid] = (name, cpu if start else 0.0)
            self.last[pid] = cpu

    def by_name(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, (name, first) in self.first.items():
            out[name] = round(out.get(name, 0.0) + self.last[pid] - first, 2)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


class Side:
    """One deployment, seen through its APIs."""

    def __init__(self, name: str, url: str) -> None:
        self.name, self.url = name, url
        self.images = httpx.Client(base_url=url + "/image", headers=AUTH, timeout=600)
        self.nova = httpx.Client(base_url=url + "/compute/v2.1", headers={**AUTH, **NOVA}, timeout=600)
        self.server_id = ""
        self.meter: Callable[[], CpuMeter] | None = None

    def upload(self, attrs: dict, path: Path) -> str:
        resp = self.images.post("/v2/images", json=attrs)
        resp.raise_for_status()
        image_id = resp.json()["id"]
        with open(path, "rb") as fh:
            r = self.images.put(f"/v2/images/{image_id}/file", content=iter(lambda: fh.read(4 << 20), b""),
                                headers={"Content-Type": "application/octet-stream"}, timeout=3600)
        r.raise_for_status()
        return image_id

    def boot(self, guest: dict, disk: Path) -> None:
        kernel = self.upload({"name": "k", "disk_format": "aki", "container_format": "aki"}, Path(guest["KERNEL"]))
        initrd = self.upload({"name": "i", "disk_format": "ari", "container_format": "ari"}, Path(guest["INITRD"]))
        t = time.monotonic()
        image = self.upload({"name": "big", "disk_format": "qcow2", "container_format": "bare", "kernel_id": kernel,
                             "ramdisk_id": initrd, "os_command_line": guest["CMDLINE"] + " ff.nodata",
                             "hw_qemu_guest_agent": "yes", "os_require_quiesce": "yes"}, disk)
        log(f"{self.name}: image registered in {time.monotonic() - t:.1f}s")
        t = time.monotonic()
        resp = self.nova.post("/servers", json={"server": {"name": "big", "imageRef": image, "flavorRef": "1"}})
        assert resp.status_code == 202, resp.text
        self.server_id = resp.json()["server"]["id"]
        for _ in range(2400):
            body = self.nova.get(f"/servers/{self.server_id}").json()["server"]
            if body["status"] in ("ACTIVE", "ERROR") and body["OS-EXT-STS:task_state"] is None:
                break
            time.sleep(0.25)
        assert body["status"] == "ACTIVE", body
        log(f"{self.name}: server ACTIVE in {time.monotonic() - t:.1f}s on host {body.get('OS-EXT-SRV-ATTR:host')}")

    def snapshot(self, name: str) -> dict:
        meter = self.meter() if self.meter else None
        if meter:
            meter.sample(start=True)
        self.nova.get(f"/servers/{self.server_id}")
        deadline = time.monotonic() + 300
        while True:   # os_require_quiesce: 409 until the guest agent answers
            t0 = time.monotonic()
            resp = self.nova.post(f"/servers/{self.server_id}/action", json={"createImage": {"name": name}})
            if resp.status_code == 202 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert resp.status_code == 202, resp.text
        workflow_id, snap = resp.headers["x-freezeframe-workflow-id"], resp.json()["image_id"]
        while time.monotonic() - t0 < 1800:
            wf = httpx.get(f"{self.url}/v1/workflows/{workflow_id}", headers=AUTH, timeout=60).json()["workflow"]
            if meter:
                meter.sample()
            if wf["state"] in ENDED:
                break
            time.sleep(0.05)
        e2e = time.monotonic() - t0
        if meter:
            meter.sample()
        assert wf["state"] == "IMAGE_ACTIVE", wf
        at = {h["state"]: datetime.fromisoformat(h["at"].replace("Z", "+00:00")).timestamp() for h in wf["history"]}
        local = next(h for h in wf["history"] if h["state"] == "LOCAL_SNAPSHOT_COMPLETE")
        frozen = float(local["detail"].split()[1].rstrip(";s")) if local["detail"].startswith("frozen") else None
        size = self.images.get(f"/v2/images/{snap}").json()["size"]
        first = min(at.values())
        phases = {f"{k}_at": round(v - first, 2) for k, v in at.items()
                  if k in ("LOCAL_SNAPSHOT_COMPLETE", "UPLOAD_BEGIN", "UPLOAD_COMPLETE", "IMAGE_ACTIVE")}
        self.images.delete(f"/v2/images/{snap}")
        cpu = meter.by_name() if meter else {}
        return {"e2e_s": round(e2e, 2), "frozen_s": frozen, "image_bytes": size, **phases,
                **({"cpu_s": round(sum(cpu.values()), 2), "cpu_by_process_s": cpu} if meter else {})}


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--disk", default="20G:2G", help="APPARENT:DATA of the servers' disk")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--hashes", choices=sorted(HASH_PROFILES), default="md5+sha512")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--warm", action="store_true", help="do not drop the page cache before each timed run")
    ap.add_argument("--profile", default=None, metavar="DIR",
                    help="py-spy record (flame graphs, --subprocesses) of the processes of each side during the "
                         "first rep's snapshots, into DIR (needs .venv/bin/py-spy)")
    ap.add_argument("--out", default=None, help="results file (default bench/results/split-<hashes>.json)")
    a = ap.parse_args()
    apparent, data = (parse_size(x) for x in a.disk.split(":"))
    guest = dict(line.split("=", 1) for line in subprocess.run(
        [str(ROOT / "scripts" / "build-test-guest")], capture_output=True, text=True, check=True).stdout.splitlines()
        if "=" in line)
    work = Path(tempfile.mkdtemp(prefix="s", dir="/var/tmp"))    # short: libvirt's unix socket paths (108 bytes)
    work.chmod(0o755)
    cold = not a.warm and os.geteuid() == 0
    results: dict = {"disk": a.disk, "hashes": a.hashes, "cold_cache": cold, "reps": [],
                     "driver": "libvirt (embedded mode, TCG), running guest, quiesced",
                     "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    serve = None
    try:
        with lab(work / "lab", ("api", "hb", "c1")) as (the_lab, pg, redis):
            env = split_env(redis, the_lab.gateway, lease_ttl=10.0)
            for knob in ("FREEZEFRAME_TESTING__ENABLED", "FREEZEFRAME_STORE__FSYNC"):   # production defaults
                env.pop(knob)
            env.update(HASH_PROFILES[a.hashes])
            d = Split(work, redis, pg.url, None, lab=the_lab, env=env)
            d.tokens.write_text(json.dumps(TOKENS))
            d.start_api()
            d.start_compute("hb", driver="libvirt")
            d.start_conductor("c1")
            split_side = Side("split", d.server.url)

            pg._as_postgres(str(Path(pg.pg_ctl).parent / "createdb"), "-h", pg.bind, "-p", str(pg.port), "embedded")
            port = free_port()
            emb_dir = work / "e"
            emb_dir.mkdir()
            serve_log = work / "serve.log"
            serve = subprocess.Popen(
                [str(ROOT / ".venv" / "bin" / "freezeframe"), "serve", "--data-dir", str(emb_dir), "--port", str(port),
                 "--auth", "tokens", "--tokens-file", str(d.tokens), "--log-level", "info",
                 "--database-url", pg.url.rsplit("/", 1)[0] + "/embedded"],
                stdout=open(serve_log, "wb"), stderr=subprocess.STDOUT,
                env={**os.environ, **HASH_PROFILES[a.hashes]})
            wait_http(f"http://127.0.0.1:{port}/healthcheck", serve, serve_log)
            emb = Side("embedded", f"http://127.0.0.1:{port}")
            emb.meter = lambda: CpuMeter(pids=(serve.pid,), path=str(emb_dir))
            split_side.meter = lambda: CpuMeter(netns_of=tuple(d.procs[k].pid for k in ("api", "hb", "c1")))
            results["pids"] = {"serve": serve.pid, **{k: p.pid for k, p in d.procs.items()}}
            (work / "pids.json").write_text(json.dumps(results["pids"]))

            log(f"making a {a.disk} disk")
            disk = work / "disk.raw"
            make_disk(disk, apparent, data)
            # registered as qcow2 (its data only: 2 GiB, not 20 GiB of mostly zeros through each API)
            subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(disk), str(work / "disk.qcow2")], check=True)
            disk.unlink()
            disk = work / "disk.qcow2"
            emb.boot(guest, disk)
            split_side.boot(guest, disk)
            disk.unlink()
            root_disk = emb_dir / "instances" / emb.server_id / "disk"

            for rep in range(a.reps):
                out = work / "convert.qcow2"
                drop_caches(cold)
                t, before = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
                subprocess.run(["qemu-img", "convert", "-U", "-O", "qcow2", str(root_disk), str(out)], check=True)
                convert_s = time.monotonic() - t
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                convert_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
                cpu0 = time.process_time()
                hashing_s = hash_seconds(out, a.hashes)
                hash_cpu = time.process_time() - cpu0
                out.unlink()
                rec = {"convert_s": round(convert_s, 2), "hash_s": round(hashing_s, 2),
                       "convert_cpu_s": round(convert_cpu, 2), "hash_cpu_s": round(hash_cpu, 2)}
                order = (emb, split_side) if rep % 2 == 0 else (split_side, emb)
                for side in order:
                    drop_caches(cold)
                    spies = []
                    if a.profile and rep == 0:
                        pids = {"embedded": {"serve": serve.pid}}.get(side.name) or {
                            k: d.procs[k].pid for k in ("api", "hb", "c1")}
                        Path(a.profile).mkdir(parents=True, exist_ok=True)
                        spies = [subprocess.Popen(
                            [str(ROOT / ".venv" / "bin" / "py-spy"), "record", "--subprocesses", "--nonblocking",
                             "-r", "50", "-f", "raw", "-o", str(Path(a.profile) / f"{side.name}-{k}.txt"), "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for k, pid in pids.items()]
                        time.sleep(1)
                    rec[side.name] = side.snapshot(f"snap-{rep}")
                    for spy in spies:
                        spy.send_signal(2)
                    for spy in spies:
                        try:
                            spy.wait(30)
                        except subprocess.TimeoutExpired:
                            spy.kill()
                rec["order"] = [s.name for s in order]
                rec["A_split_over_embedded"] = round(rec["split"]["e2e_s"] / rec["embedded"]["e2e_s"], 3)
                rec["B_embedded_over_hash_convert"] = round(rec["embedded"]["e2e_s"] / (hashing_s + convert_s), 3)
                rec["split_over_hash_convert"] = round(rec["split"]["e2e_s"] / (hashing_s + convert_s), 3)
                results["reps"].append(rec)
                log(f"rep {rep}: {json.dumps(rec)}")

            reps = results["reps"]
            med = {"embedded_e2e_s": statistics.median(r["embedded"]["e2e_s"] for r in reps),
                   "split_e2e_s": statistics.median(r["split"]["e2e_s"] for r in reps),
                   "convert_s": statistics.median(r["convert_s"] for r in reps),
                   "hash_s": statistics.median(r["hash_s"] for r in reps),
                   "hash_plus_convert_s": statistics.median(r["hash_s"] + r["convert_s"] for r in reps),
                   "A_split_over_embedded": statistics.median(r["A_split_over_embedded"] for r in reps),
                   "B_embedded_over_hash_convert": statistics.median(r["B_embedded_over_hash_convert"] for r in reps),
                   "split_over_hash_convert": statistics.median(r["split_over_hash_convert"] for r in reps),
                   "embedded_frozen_s": statistics.median(r["embedded"]["frozen_s"] or 0 for r in reps),
                   "split_frozen_s": statistics.median(r["split"]["frozen_s"] or 0 for r in reps),
                   "image_bytes": statistics.median(r["embedded"]["image_bytes"] for r in reps),
                   "embedded_cpu_s": statistics.median(r["embedded"]["cpu_s"] for r in reps),
                   "split_cpu_s": statistics.median(r["split"]["cpu_s"] for r in reps),
                   "hash_cpu_s": statistics.median(r["hash_cpu_s"] for r in reps),
                   "convert_cpu_s": statistics.median(r["convert_cpu_s"] for r in reps)}
            results["median"] = med
            print(f"\nsnapshot of a {a.disk} disk (apparent:data), hashes {a.hashes}, {len(reps)} reps interleaved, "
                  f"{'cold' if cold else 'warm'} cache, medians:")
            print(f"  embedded end to end          {med['embedded_e2e_s']:7.2f} s")
            print(f"  split end to end             {med['split_e2e_s']:7.2f} s")
            print(f"  qemu-img convert             {med['convert_s']:7.2f} s")
            print(f"  hashing the image alone      {med['hash_s']:7.2f} s")
            print(f"  hash + convert               {med['hash_plus_convert_s']:7.2f} s")
            print(f"  A split / embedded           {med['A_split_over_embedded']:7.3f} x  (target <= 1.15x: "
                  f"{'PASS' if med['A_split_over_embedded'] <= 1.15 else 'FAIL'})")
            print(f"  B embedded / (hash+convert)  {med['B_embedded_over_hash_convert']:7.3f} x  (target <= 1.3x: "
                  f"{'PASS' if med['B_embedded_over_hash_convert'] <= 1.3 else 'FAIL'})")
            print(f"  split / (hash+convert)       {med['split_over_hash_convert']:7.3f} x")
            print(f"  guest frozen                 {med['embedded_frozen_s']:.3f} s embedded, "
                  f"{med['split_frozen_s']:.3f} s split")
            print(f"  image size                   {med['image_bytes'] / 1e6:7.0f} MB")
            print(f"  CPU seconds (user+sys)       embedded {med['embedded_cpu_s']:.1f}, split {med['split_cpu_s']:.1f}, "
                  f"hash {med['hash_cpu_s']:.1f} + convert {med['convert_cpu_s']:.1f}")
            for name in ("embedded", "split"):
                last = reps[-1][name]["cpu_by_process_s"]
                print(f"    {name:9s} (last rep)  " + ", ".join(f"{k} {v:.1f}" for k, v in list(last.items())[:8]))
            out = Path(a.out) if a.out else ROOT / "bench" / "results" / f"split-{a.hashes}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2))
            log(f"results written to {out}")
            for side in (emb, split_side):
                side.nova.delete(f"/servers/{side.server_id}")
            time.sleep(3)
            stop(serve)         # before the lab's PostgreSQL goes
    finally:
        if serve is not None:
            stop(serve)
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
