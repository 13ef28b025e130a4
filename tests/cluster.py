"""Several conductors on one machine: a private Redis (jobboard + liveness), a throw-away
PostgreSQL database, an API-only ``serve`` and ``freezeframe conductor`` processes — what the
jobboard tests and ``bench/takeover_bench.py`` drive. Everything is waited for by polling."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx

from tests.conftest import LiveServer, start_server
from tests.pg import temp_database
from tests.redisd import PrivateRedis, private_redis

NOVA = {"X-OpenStack-Nova-API-Version": "2.45"}
ENDED = ("IMAGE_ACTIVE", "REVERTED", "CANCELLED")


@dataclass
class Deployment:
    """What a test does through the APIs of a deployment (``server``: where its APIs answer),
    whatever runs behind them."""
    tmp: Path
    redis: PrivateRedis
    database_url: str
    server: LiveServer

    @property
    def headers(self) -> dict:
        return {"X-Auth-Token": self.server.member_token}

    # -- the API ---------------------------------------------------------------------------

    def boot(self, data: bytes, name: str = "vm") -> str:
        with self.server.client() as images:
            image = images.post("/v2/images", json={"name": f"{name}-base", "disk_format": "raw",
                                                    "container_format": "bare"}).json()
            resp = images.put(f"/v2/images/{image['id']}/file", content=data,
                              headers={"Content-Type": "application/octet-stream"})
            assert resp.status_code == 204, resp.text
        with self.compute() as nova:
            resp = nova.post("/servers", json={"server": {"name": name, "imageRef": image["id"], "flavorRef": "1"}})
            assert resp.status_code == 202, resp.text
            server_id = resp.json()["server"]["id"]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                shown = nova.get(f"/servers/{server_id}").json()["server"]
                if shown["status"] == "ACTIVE" and shown["OS-EXT-STS:task_state"] is None:
                    return server_id
                time.sleep(0.05)
        raise AssertionError(f"server {server_id} did not become ACTIVE: {shown}")

    def compute(self) -> httpx.Client:
        return httpx.Client(base_url=self.server.url + "/compute/v2.1", timeout=60, headers={**self.headers, **NOVA})

    def snapshot(self, server_id: str, name: str) -> tuple[str, str]:
        with self.compute() as nova:
            resp = nova.post(f"/servers/{server_id}/action", json={"createImage": {"name": name}})
        assert resp.status_code == 202, resp.text
        return resp.json()["image_id"], resp.headers["x-freezeframe-workflow-id"]

    def workflow(self, workflow_id: str) -> dict:
        resp = httpx.get(f"{self.server.url}/v1/workflows/{workflow_id}", headers=self.headers, timeout=30)
        resp.raise_for_status()
        return resp.json()["workflow"]

    def wait(self, workflow_id: str, done, timeout: float = 120, every: float = 0.05) -> dict:
        """Poll the workflow API until ``done(workflow)``; an ended workflow that is not what
        was waited for is an error at once."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            wf = self.workflow(workflow_id)
            if done(wf):
                return wf
            if wf["state"] in ENDED:
                raise AssertionError(f"workflow {workflow_id} ended {wf['state']} while waiting: {wf}")
            time.sleep(every)
        raise AssertionError(f"workflow {workflow_id} not there in {timeout}s: {wf}")

    def wait_end(self, workflow_id: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            wf = self.workflow(workflow_id)
            if wf["state"] in ENDED:
                return wf
            time.sleep(0.1)
        raise AssertionError(f"workflow {workflow_id} did not end: {wf}")

    def fence(self, workflow_id: str) -> int:
        """How many times the workflow was claimed (its fence), read from the database."""
        import psycopg
        with psycopg.connect(self.database_url) as conn:
            return conn.execute("SELECT fence FROM workflows WHERE id = %s", (workflow_id,)).fetchone()[0]

    def image_data(self, image_id: str) -> bytes:
        """The snapshot's disk contents (qcow2 downloaded, checked, converted to raw)."""
        out, raw = self.tmp / f"{image_id}.qcow2", self.tmp / f"{image_id}.raw"
        with self.server.client() as images:
            out.write_bytes(images.get(f"/v2/images/{image_id}/file").content)
        subprocess.run(["qemu-img", "check", "-q", str(out)], check=True)
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(out), str(raw)], check=True)
        try:
            return raw.read_bytes()
        finally:
            out.unlink(missing_ok=True)
            raw.unlink(missing_ok=True)


@dataclass
class Cluster(Deployment):
    """``serve`` (API only) and ``freezeframe conductor`` processes on this machine."""
    env: dict = field(default_factory=dict)
    names: tuple[str, ...] = ()
    conductors: dict[str, subprocess.Popen] = field(default_factory=dict)
    _started_before: dict[str, int] = field(default_factory=dict)

    def start_conductors(self) -> None:
        """Start the conductors and wait until each runs. (The fake hypervisor each process
        simulates knows the servers booted before it started: boot first.)"""
        for conductor_id in self.names:
            self.start_conductor(conductor_id)
        for conductor_id in self.names:
            self.wait_conductor_up(conductor_id)

    def _starts(self, conductor_id: str) -> int:
        log = self.server.data_dir / f"conductor-{conductor_id}.log"
        return log.read_text(errors="replace").count(f"conductor {conductor_id} started") if log.exists() else 0

    def start_conductor(self, conductor_id: str) -> subprocess.Popen:
        self._started_before[conductor_id] = self._starts(conductor_id)
        log = open(self.server.data_dir / f"conductor-{conductor_id}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "freezeframe", "conductor", "--data-dir", str(self.server.data_dir),
             "--database-url", self.database_url, "--image-url", self.server.image_url,
             "--tokens-file", str(self.server.data_dir / "test-tokens.json"), "--id", conductor_id],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        self.conductors[conductor_id] = proc
        return proc

    def wait_conductor_up(self, conductor_id: str, timeout: float = 30) -> None:
        log = self.server.data_dir / f"conductor-{conductor_id}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.conductors[conductor_id].poll() is not None:
                raise RuntimeError(f"conductor {conductor_id} exited:\n{log.read_text()[-3000:]}")
            if self._starts(conductor_id) > self._started_before.get(conductor_id, 0):
                return
            time.sleep(0.05)
        raise RuntimeError(f"conductor {conductor_id} did not start:\n{log.read_text()[-3000:]}")

    def conductor_log(self, conductor_id: str) -> str:
        return (self.server.data_dir / f"conductor-{conductor_id}.log").read_text(errors="replace")

    def kill(self, conductor_id: str) -> float:
        """kill -9; returns the time of the kill (time.time())."""
        proc = self.conductors[conductor_id]
        proc.send_signal(signal.SIGKILL)
        killed = time.time()
        proc.wait(10)
        return killed

    def stop(self) -> None:
        for proc in self.conductors.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.conductors.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            if proc.poll() is None:
                proc.kill()
        self.server.stop()


def cluster_env(redis: PrivateRedis, *, lease_ttl: float, extra: dict | None = None) -> dict:
    return {"FREEZEFRAME_COMPUTE__DRIVER": "fake", "FREEZEFRAME_STORE__FSYNC": "false",
            "FREEZEFRAME_CONDUCTOR__JOBBOARD_URL": redis.url,
            "FREEZEFRAME_CONDUCTOR__COORDINATION_URL": f"redis://127.0.0.1:{redis.port}?timeout=3",
            "FREEZEFRAME_CONDUCTOR__LEASE_TTL": str(lease_ttl), "FREEZEFRAME_CONDUCTOR__SCAN_INTERVAL": "0.5",
            **(extra or {})}


@contextlib.contextmanager
def cluster(tmp: Path, *, lease_ttl: float = 3.0, conductors: tuple[str, ...] = ("conductor-a", "conductor-b"),
            env: dict | None = None) -> Iterator[Cluster]:
    """Private Redis + PostgreSQL database + an API-only serve, up; the conductors are started
    by ``start_conductors`` (after the servers are booted)."""
    with private_redis(tmp) as redis, temp_database() as url:
        full = cluster_env(redis, lease_ttl=lease_ttl, extra=env)
        server = start_server(tmp / "ff", args=["--database-url", url],
                              env={**full, "FREEZEFRAME_CONDUCTOR__ENABLED": "false"})
        c = Cluster(tmp, redis, url, server, full, names=conductors)
        try:
            yield c
        finally:
            c.stop()
