"""Nothing can hang the service (issue 7, item 4).

Against a real ``serve`` (fake virt driver) on SQLite and on PostgreSQL: concurrent snapshots
of one server and concurrent creates of servers from images not yet cached used to hang the
whole process for minutes, ``/healthcheck`` included (every worker thread waited on an HTTP call
back into the same process, which needed a worker thread to answer), leaving images queued and
servers in ERROR. Now every request ends within a bound — success, 409, or 503 with
``Retry-After`` — exactly one snapshot wins, nothing is left half-done, and ``/healthcheck``
answers within 200 ms throughout. The health check also tells the truth: 503 when the database
or the store cannot take a write, and its details are for admins.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, MEMBER_TOKEN, OTHER_TOKEN, new_image, start_server

NOVA = {"X-OpenStack-Nova-API-Version": "2.45"}
OCTET = {"Content-Type": "application/octet-stream"}
# Every request of the load must be answered within this (the bench's target is 1 s; a test
# on a shared CI machine gets slack, but a hang is minutes).
REQUEST_BOUND = float(os.environ.get("FF_TEST_REQUEST_BOUND", "10"))
HEALTH_BOUND = float(os.environ.get("FF_TEST_HEALTH_BOUND", "0.2"))
TERMINAL = {"IMAGE_ACTIVE", "REVERTED", "CANCELLED", "FAILED"}
ENV = {
    "FREEZEFRAME_COMPUTE__DRIVER": "fake",
    "FREEZEFRAME_CONDUCTOR__SCAN_INTERVAL": "0.5",
    # A snapshot's point in time takes ~4 s (1 s per MiB of the 4 MiB disk): the whole burst
    # overlaps the winner's workflow, so a late request cannot win after it ended.
    "FREEZEFRAME_TESTING__FAKE_COPY_DELAY": "1.0",
    "FREEZEFRAME_TESTING__FAKE_READ_DELAY": "0.01",
}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def cloud(request, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp(f"ff-conc-{request.param}")
    if request.param == "sqlite":
        server = start_server(data_dir, env=ENV)
        server.backend, server.db_url = "sqlite", None
        yield server
        server.stop()
        return
    from tests.pg import temp_database
    with temp_database() as url:
        server = start_server(data_dir, env=ENV, args=["--database-url", url])
        server.backend, server.db_url = "postgresql", url
        yield server
        server.stop()


_POLLER = r"""
import json, sys, threading, time, httpx
url, interval = sys.argv[1], float(sys.argv[2])
stop, samples = threading.Event(), []
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
with httpx.Client(timeout=30) as c:
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            status = c.get(url + "/healthcheck").status_code
        except httpx.HTTPError:
            status = 0
        samples.append((time.perf_counter() - t0, status))
        stop.wait(interval)
print(json.dumps(samples))
"""


class HealthWatch:
    """Polls /healthcheck while the load runs, from a process of its own (the load's client
    threads would otherwise skew its timings through this process's GIL)."""

    def __init__(self, url: str, interval: float = 0.05) -> None:
        self.url, self.interval = url, interval
        self.samples: list[tuple[float, int]] = []       # (seconds, status)

    def __enter__(self) -> "HealthWatch":
        self._proc = subprocess.Popen([sys.executable, "-c", _POLLER, self.url, str(self.interval)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        time.sleep(0.3)
        return self

    def __exit__(self, *exc) -> None:
        out, _ = self._proc.communicate("", timeout=60)
        self.samples = [tuple(x) for x in json.loads(out or "[]")]

    def check(self) -> None:
        assert self.samples, "no health sample was taken"
        latencies = sorted(s for s, _ in self.samples)
        slow = [round(s, 3) for s in latencies if s > HEALTH_BOUND]
        assert all(status in (200, 503) for _, status in self.samples), self.samples
        assert not slow, (f"/healthcheck slower than {HEALTH_BOUND}s in {len(slow)} of {len(latencies)} samples: "
                          f"{slow[:20]} (median {statistics.median(latencies):.3f}s)")


def fire(n: int, call) -> list[tuple[float, httpx.Response | BaseException]]:
    """``call(i)`` from ``n`` threads released together; each result with its duration."""
    barrier = threading.Barrier(n)

    def one(i: int):
        barrier.wait()
        t0 = time.perf_counter()
        try:
            result = call(i)
        except BaseException as exc:  # noqa: BLE001 - a timeout is a hang: reported below
            result = exc
        return time.perf_counter() - t0, result

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def assert_answered(results) -> dict[int, int]:
    """Every request answered within the bound: success, 409, or 503 with Retry-After."""
    counts: dict[int, int] = {}
    for seconds, resp in results:
        assert isinstance(resp, httpx.Response), f"no answer: {resp!r}"
        assert seconds <= REQUEST_BOUND, f"answered after {seconds:.1f}s: {resp.status_code} {resp.text[:200]}"
        assert resp.status_code in (202, 409, 503), f"{resp.status_code}: {resp.text[:300]}"
        if resp.status_code == 503:
            assert int(resp.headers["retry-after"]) >= 1, resp.headers
        counts[resp.status_code] = counts.get(resp.status_code, 0) + 1
    return counts


def upload_image(server, data: bytes, name: str) -> str:
    with server.client() as images:
        image = new_image(images, name=name)
        assert images.put(f"/v2/images/{image['id']}/file", content=data, headers=OCTET).status_code == 204
    return image["id"]


def nova(server, token=MEMBER_TOKEN, timeout=REQUEST_BOUND + 5) -> httpx.Client:
    return httpx.Client(base_url=server.url + "/compute/v2.1", timeout=timeout,
                        headers={"X-Auth-Token": token, **NOVA})


def wait_for(what, predicate, timeout=120.0, interval=0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def settled(server, token=MEMBER_TOKEN):
    """(images, workflows, servers) of the project once nothing is in flight any more."""
    with server.client(token) as images, nova(server, token) as c, \
            httpx.Client(base_url=server.url, headers={"X-Auth-Token": token}, timeout=30) as v1:
        def now():
            imgs = images.get("/v2/images", params={"limit": 1000}).json()["images"]
            wfs = v1.get("/v1/workflows", params={"limit": 1000}).json()["workflows"]
            srvs = c.get("/servers/detail").json()["servers"]
            busy = ([i for i in imgs if i["status"] in ("queued", "saving", "uploading", "importing")]
                    + [w for w in wfs if not any(w["state"].startswith(t) for t in TERMINAL)]
                    + [s for s in srvs if s["OS-EXT-STS:task_state"] is not None or s["status"] == "BUILD"])
            return None if busy else (imgs, wfs, srvs)
        return wait_for("every image, workflow and server to settle", now)


# -- the load ------------------------------------------------------------------------------------


def test_concurrent_snapshots_of_one_server(cloud):
    """50 concurrent createImage on one server: exactly one wins, none hangs, nothing queued."""
    base = upload_image(cloud, os.urandom(1 << 20) + bytes(3 << 20), "conc-base")
    with nova(cloud) as c:
        resp = c.post("/servers", json={"server": {"name": "conc-snap", "imageRef": base, "flavorRef": "1"}})
        assert resp.status_code == 202, resp.text
        server_id = resp.json()["server"]["id"]
        wait_for("the server to boot", lambda: c.get(f"/servers/{server_id}").json()["server"]["status"] == "ACTIVE")

    clients = [nova(cloud) for _ in range(50)]
    try:
        with HealthWatch(cloud.url) as health:
            results = fire(50, lambda i: clients[i].post(f"/servers/{server_id}/action",
                                                         json={"createImage": {"name": f"conc-{i}"}}))
            counts = assert_answered(results)
            assert counts.get(202) == 1, counts                   # exactly one snapshot wins
            winner = next(r for _, r in results if r.status_code == 202)
            image_id, workflow_id = winner.json()["image_id"], winner.headers["x-freezeframe-workflow-id"]
            images, workflows, servers = settled(cloud)
        health.check()
    finally:
        for c in clients:
            c.close()
    mine = [i for i in images if i.get("instance_uuid") == server_id]
    assert [(i["id"], i["status"]) for i in mine] == [(image_id, "active")], mine   # no orphan, none queued
    flows = [w for w in workflows if w["resource_id"] == server_id]
    assert [(w["id"], w["state"]) for w in flows] == [(workflow_id, "IMAGE_ACTIVE")], flows
    server = next(s for s in servers if s["id"] == server_id)
    assert server["status"] == "ACTIVE" and server["OS-EXT-STS:task_state"] is None, server


def test_concurrent_creates_with_uncached_images(cloud):
    """20 concurrent server creates, each from a new image (nothing cached): every create is
    answered at once and every accepted server boots — none stuck in BUILD or ERROR."""
    image_ids = [upload_image(cloud, os.urandom(256 << 10) + bytes(1 << 20), f"conc-boot-{i}") for i in range(20)]
    clients = [nova(cloud) for _ in range(20)]
    try:
        with HealthWatch(cloud.url) as health:
            results = fire(20, lambda i: clients[i].post("/servers", json={"server": {
                "name": f"conc-boot-{i}", "imageRef": image_ids[i], "flavorRef": "1"}}))
            counts = assert_answered(results)
            assert counts.get(202, 0) >= 1, counts
            accepted = {r.json()["server"]["id"] for _, r in results if r.status_code == 202}
            _, _, servers = settled(cloud)
        health.check()
    finally:
        for c in clients:
            c.close()
    created = {s["id"]: s for s in servers if s["name"].startswith("conc-boot-")}
    assert set(created) == accepted, "a refused create left a server behind (or an accepted one vanished)"
    failed = {sid: (s["status"], s.get("fault")) for sid, s in created.items() if s["status"] != "ACTIVE"}
    assert not failed, failed


def test_saturation_is_503_with_retry_after_at_once(tmp_path):
    """Past the in-flight limit a request is refused at once (503 + Retry-After), never queued;
    the health check is not counted and stays quick."""
    server = start_server(tmp_path / "ff", env={**ENV, "FREEZEFRAME_SERVER__MAX_IN_FLIGHT": "4"})
    try:
        image_ids = [upload_image(server, os.urandom(1 << 20) + bytes(1 << 20), f"sat-{i}") for i in range(2)]
        clients = [httpx.Client(base_url=server.image_url, headers={"X-Auth-Token": MEMBER_TOKEN},
                                timeout=REQUEST_BOUND + 5) for _ in range(40)]
        with HealthWatch(server.url) as health:
            results = fire(40, lambda i: clients[i].get(f"/v2/images/{image_ids[i % 2]}/file"))
        for c in clients:
            c.close()
        statuses = [r.status_code for _, r in results]
        assert set(statuses) <= {200, 503} and 503 in statuses, statuses
        for seconds, resp in results:
            assert seconds <= REQUEST_BOUND
            if resp.status_code == 503:
                assert resp.headers["retry-after"] == "1" and "busy" in resp.json()["error"]["message"]
        health.check()
    finally:
        server.stop()


# -- the health check ----------------------------------------------------------------------------


def health_status(server) -> tuple[int, str]:
    resp = httpx.get(server.url + "/healthcheck", timeout=5)
    return resp.status_code, resp.text


def test_detailed_healthcheck_is_for_admins(cloud):
    url = cloud.url + "/healthcheck?detailed"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"X-Auth-Token": "not-a-token"}).status_code == 401
    for token in (MEMBER_TOKEN, OTHER_TOKEN):
        assert httpx.get(url, headers={"X-Auth-Token": token}).status_code == 403
    assert httpx.get(cloud.url + "/healthcheck?detailed=1", headers={"X-Auth-Token": MEMBER_TOKEN}).status_code == 403
    body = httpx.get(url, headers={"X-Auth-Token": ADMIN_TOKEN}).json()
    assert body["status"] == "OK", body
    assert {"database", "store", "workers"} <= set(body["checks"])
    assert {"db", "store"} <= set(body["pools"]) and "in_flight" in body["pools"]["db"]
    assert "image_transitions" in body and "reaper" in body and "requests" in body
    assert httpx.get(cloud.url + "/healthcheck").text == "OK"           # plain stays public


def test_healthcheck_fails_while_the_database_cannot_write(cloud):
    assert health_status(cloud)[0] == 200
    if cloud.backend == "sqlite":
        # Another process holds the write lock: nothing can be written.
        blocker = sqlite3.connect(cloud.data_dir / "freezeframe.db", isolation_level=None, timeout=5)
        blocker.execute("BEGIN EXCLUSIVE")
        release = lambda: (blocker.rollback(), blocker.close())            # noqa: E731
    else:
        import psycopg
        from tests.pg import ADMIN_URL
        name = cloud.db_url.rsplit("/", 1)[1]
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')

        def release():
            with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
    try:
        t0 = time.perf_counter()
        status, text = wait_for("/healthcheck to report the database", lambda: (
            (lambda r: r if r[0] == 503 else None)(health_status(cloud))), timeout=20, interval=0.1)
        assert "database" in text, text
        body = httpx.get(cloud.url + "/healthcheck?detailed", headers={"X-Auth-Token": ADMIN_TOKEN}).json()
        assert body["checks"]["database"]["ok"] is False and body["checks"]["store"]["ok"] is True, body
        assert time.perf_counter() - t0 < 20
    finally:
        release()
    wait_for("/healthcheck to recover", lambda: health_status(cloud)[0] == 200, timeout=20, interval=0.1)


def test_healthcheck_fails_while_the_store_cannot_write(cloud):
    assert health_status(cloud)[0] == 200
    partial = cloud.data_dir / "images" / ".partial"
    aside = partial.with_name(".partial-aside")
    # Where uploads write is no longer a writable directory (works as root too, unlike chmod).
    partial.rename(aside)
    partial.write_text("not a directory")
    try:
        status, text = wait_for("/healthcheck to report the store", lambda: (
            (lambda r: r if r[0] == 503 else None)(health_status(cloud))), timeout=20, interval=0.1)
        assert "store" in text, text
    finally:
        partial.unlink()
        aside.rename(partial)
    wait_for("/healthcheck to recover", lambda: health_status(cloud)[0] == 200, timeout=20, interval=0.1)


# -- the pieces ----------------------------------------------------------------------------------


def test_fake_driver_state_file_survives_concurrent_spawns(tmp_path):
    """Concurrent spawns on the persistent fake driver used to collide on its state file."""
    from freezeframe.compute.drivers.base import GuestSpec
    from freezeframe.compute.drivers.fake import PersistentFakeDriver

    disk = tmp_path / "disk"
    disk.write_bytes(bytes(1 << 16))
    driver = PersistentFakeDriver(tmp_path / "fake-host.json")
    specs = [GuestSpec(name=f"vm-{i}", uuid=f"00000000-0000-0000-0000-{i:012d}", vcpus=1, memory_mb=64,
                       root_disk=disk) for i in range(64)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(driver.spawn, specs))
        list(pool.map(lambda s: driver.power_off(s.name), specs[::2]))
    again = PersistentFakeDriver(tmp_path / "fake-host.json")
    assert sorted(again.host.domains) == sorted(s.name for s in specs)
    assert sum(d.state.value == "shutdown" for d in again.host.domains.values()) == 32
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_bounded_pool_refuses_at_once_and_admitted_work_waits():
    from freezeframe.common import errors, pools

    pool = pools.BoundedPool("test-pool", workers=1, queue=1)
    gate = threading.Event()

    async def scenario():
        first = asyncio.ensure_future(pool.run(gate.wait, 10))
        second = asyncio.ensure_future(pool.run(gate.wait, 10))
        await asyncio.sleep(0.05)
        assert pool.saturated() and pool.problem()
        t0 = time.perf_counter()
        with pytest.raises(errors.Busy) as refused:
            await pool.run(lambda: None)
        assert time.perf_counter() - t0 < 0.05 and refused.value.retry_after == 1

        async def admitted():
            pools.admit()
            return await pool.run(lambda: "done")
        later = asyncio.ensure_future(admitted())   # waits (boundedly) instead of failing
        await asyncio.sleep(0.05)
        assert not later.done()
        gate.set()
        assert await asyncio.wait_for(later, 5) == "done"
        await asyncio.gather(first, second)
        assert pool.in_flight == 0 and pool.rejected == 1

    try:
        asyncio.run(scenario())
    finally:
        gate.set()
        pool.shutdown()


def test_bounded_pool_bounds_the_wait_in_seconds():
    """A new request is refused when the queue ahead of it would take longer than
    ``max_queue_wait`` at the recent time per task — even with room left in the queue."""
    from freezeframe.common import errors, pools

    pool = pools.BoundedPool("test-wait", workers=1, queue=100, max_queue_wait=0.05)

    def fresh(coro):      # a new request: a context of its own (not yet admitted)
        return asyncio.get_running_loop().create_task(coro, context=contextvars.Context())

    async def scenario():
        for _ in range(5):                      # learn the time per task: ~30 ms
            await fresh(pool.run(time.sleep, 0.03))
        running = [fresh(pool.run(time.sleep, 0.03, wait=5)) for _ in range(4)]
        await asyncio.sleep(0.005)
        assert pool.queue_wait() > 0.05
        with pytest.raises(errors.Busy):
            await fresh(pool.run(lambda: None))
        assert await fresh(pool.run(lambda: "waited", wait=2)) == "waited"    # work under way may queue
        await asyncio.gather(*running)

    try:
        asyncio.run(scenario())
    finally:
        pool.shutdown()


def test_busy_is_503_with_retry_after():
    from freezeframe.common import errors
    from freezeframe.common.web.errors import error_headers, status_of

    exc = errors.Busy("full", retry_after=3)
    assert status_of(exc) == 503 and error_headers(exc, 503) == {"Retry-After": "3"}
    assert error_headers(errors.BackendUnavailable("down"), 503) == {"Retry-After": "1"}
    assert isinstance(exc, errors.BackendUnavailable)
