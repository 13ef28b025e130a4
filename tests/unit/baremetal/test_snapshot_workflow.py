"""The bare-metal workflows run by a real conductor in process (SQLite), on fake-hardware, with
an in-memory image service; the agent is simulated in process, streaming into the real WebDAV
server over HTTP with the credential the conductor handed it and heartbeating through the very
manager calls the API makes (record_heartbeat, then wake).

Seed 004's promises checked: the node goes active -> snapshotting [-> snapshot wait ->
snapshotting] -> active with the workflow states of a VM snapshot and the image active with the
disk's bytes; no heartbeat in time, the agent dying mid-stream, a stream that fails: snapshot
failed with the reason, the copy kept, and a retry resumes the stream (chunks re-sent <= 1) and
the same transfer; a cancel = fail then abort; abort and deleted remove the copy; the reaper
removes copies after the grace only when the node no longer needs them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from freezeframe.baremetal import conductor_hooks, states
from freezeframe.baremetal.drivers import Interfaces
from freezeframe.baremetal.drivers.snapshot import fake_disk_read
from freezeframe.baremetal.manager import BaremetalManager
from freezeframe.baremetal.model import Node, Transfer
from freezeframe.baremetal.webdav import WebDavServer, transfer_lookup
from freezeframe.common.context import Actor
from freezeframe.conductor import runtime
from freezeframe.conductor.engine import Conductor
from freezeframe.conductor.jobboard import DatabaseBoard
from freezeframe.conductor.lease import Leases
from freezeframe.conductor.model import Workflow, WorkflowEvent
from freezeframe.conductor.registry import Registry, Scan
from freezeframe.conductor.runtime import Runtime
from freezeframe.conductor.service import Workflows
from freezeframe.db.engine import make_engine, make_sessionmaker
from freezeframe.db.migrate import upgrade
from freezeframe.db.session import Database
from freezeframe.settings import BaremetalSettings

TTL = 3.0
ACTOR = Actor("admin", "admin-project", frozenset({"admin", "member", "reader"}))
ENDED = {"COMPLETE", "REVERTED", "CANCELLED", "IMAGE_ACTIVE"}
MiB = 1 << 20
CHUNK = 256 << 10


class Alive:
    def __init__(self, member_id):
        self.member_id = member_id

    def is_alive(self, member_id):
        return True

    def start(self):
        pass

    def stop(self):
        pass


@dataclasses.dataclass
class FakeImage:
    id: str
    status: str = "queued"
    disk_format: str | None = "qcow2"
    container_format: str | None = "bare"
    data: bytearray = dataclasses.field(default_factory=bytearray)
    upload_id: str | None = None
    properties: dict = dataclasses.field(default_factory=dict)


class FakeImages:
    """The image API a workflow sees (show, set_properties, resumable upload)."""

    def __init__(self):
        self.images: dict[str, FakeImage] = {}
        self.sent = 0

    def __call__(self, actor):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def show(self, image_id):
        return self.images[image_id]

    def set_properties(self, image_id, values):
        image = self.images[image_id]
        for k, v in values.items():
            if k in ("disk_format", "container_format"):
                setattr(image, k, v)
            else:
                image.properties[k] = v
        return image

    def upload_offset(self, image_id, upload_id):
        image = self.images[image_id]
        assert image.upload_id == upload_id
        return len(image.data)

    def upload_resumable(self, image_id, source, size, *, upload_id, offset, final=True, progress=None):
        image = self.images[image_id]
        assert image.status in ("queued", "saving") and image.upload_id in (None, upload_id)
        assert offset == len(image.data)
        image.status, image.upload_id = "saving", upload_id
        n = 0
        for block in source:
            image.data += bytes(block)
            n += len(block)
            self.sent += len(block)
            if progress:
                progress(len(block))
        assert n == size
        if final:
            image.status = "active"


class SimAgent:
    """The agent, in process: ``run`` starts a stream thread that PUTs chunks (.part then MOVE
    to .bin) and the manifest into the WebDAV area with the credential it was given, resuming
    after the chunks already there; it heartbeats as the API would record it."""

    def __init__(self, env, *, die_at_chunk=None, heartbeat=True):
        self.env = env
        self.die_at_chunk = die_at_chunk
        self.heartbeat_on = heartbeat
        self.commands = {}
        self.sent_chunks = []
        self.dead = threading.Event()

    def beat(self, progress=None):
        if self.dead.is_set() or not self.heartbeat_on:
            return
        mgr = self.env.manager

        def record(session):
            node = mgr.fresh(session, self.env.node_id)
            mgr.mint_token(session, node)
            mgr.record_heartbeat(session, node, "http://agent.test:9999", "sim-1", "start", "", progress)
            return node.snapshot_workflow_id
        self.env.db.run_sync(record)
        node = self.env.db.run_sync(lambda s: mgr.fresh(s, self.env.node_id))
        mgr.wake(self.env.workflows, node)

    # the AgentClient surface the AgentSnapshot uses
    def run(self, name, params):
        assert name == "snapshot.stream_image"
        cid = str(uuid.uuid4())
        self.commands[cid] = {"id": cid, "command_name": name, "command_status": "RUNNING",
                              "command_error": None, "command_result": None}
        threading.Thread(target=self._stream, args=(cid, params), daemon=True).start()
        return self.commands[cid]

    def command(self, cid, attempts=None):
        return self.commands[cid]

    def last(self, name, attempts=None):
        return list(self.commands.values())[-1] if self.commands else None

    def close(self):
        pass

    def _stream(self, cid, params):
        size, cs = self.env.disk_size, params["chunk_size"]
        read = fake_disk_read(self.env.node_id, size)
        url, auth = params["url"], (params["username"], params["password"])
        with httpx.Client(auth=auth, timeout=10) as c:
            listing = c.request("PROPFIND", url, headers={"Depth": "1"}).text
            chunks, resumed = [], 0
            for index in range(-(-size // cs)):
                data = read(index * cs, min(cs, size - index * cs))
                if data == bytes(len(data)):
                    continue
                chunks.append({"index": index, "offset": index * cs, "length": len(data),
                               "sha256": hashlib.sha256(data).hexdigest()})
                if f"c-{index:08d}.bin" in listing:
                    resumed = index + 1
                    continue
                if self.die_at_chunk is not None and index >= self.die_at_chunk:
                    self.dead.set()       # kill -9: no more heartbeats, the command never ends
                    return
                assert c.put(f"{url}c-{index:08d}.part", content=data).status_code in (201, 204)
                assert c.request("MOVE", f"{url}c-{index:08d}.part", headers={
                    "Destination": f"{url}c-{index:08d}.bin", "Overwrite": "T"}).status_code in (201, 204)
                self.sent_chunks.append(index)
                self.beat({"command_id": cid, "percent": index * 100 * cs // size, "bytes_sent": 0})
            digest = hashlib.sha256("".join(f"{ch['offset']} {ch['length']} {ch['sha256']}\n"
                                            for ch in chunks).encode()).hexdigest()
            manifest = {"version": 1, "size": size, "chunk_size": cs, "chunks": chunks, "sha256": digest}
            assert c.put(f"{url}manifest.json", content=json.dumps(manifest)).status_code in (201, 204)
        self.commands[cid].update(command_status="SUCCEEDED", command_result={**manifest, "resumed_from_chunk": resumed})
        self.beat({"command_id": cid, "percent": 100})


class Env:
    def __init__(self, tmp_path: Path, **settings):
        engine = make_engine(f"sqlite:///{tmp_path / 'test.db'}")
        upgrade(engine)
        self.engine = engine
        self.db = Database(engine, make_sessionmaker(engine))
        self.tmp_path = tmp_path
        self.settings = BaremetalSettings(**{"transfer_path": str(tmp_path / "area"), "transfer_host": "h1",
                                             "webdav_bind": "127.0.0.1:0", "chunk_size": CHUNK,
                                             "agent_wait_timeout": 30.0, "agent_lost_after": 30.0, **settings})
        self.interfaces = Interfaces(self.settings, data_dir=tmp_path)
        self.images = FakeImages()
        self.manager = BaremetalManager(self.db, self.interfaces, self.settings, images_for=self.images,
                                        api_url="http://api.test/baremetal")
        self.dav = WebDavServer(self.manager.area.root, "127.0.0.1:0", transfer_lookup(self.db))
        self.dav.start()
        self.manager.set_webdav_url(self.dav.url)
        self.registry = Registry()
        conductor_hooks.register(self.registry)
        shm = Path("/dev/shm")
        self.tfdir = Path(tempfile.mkdtemp(dir=shm if shm.is_dir() else tmp_path))
        self.agent: SimAgent | None = None
        self.manager.agent = lambda node: self.agent if node.agent_url else None
        self.node_id = str(uuid.uuid4())
        self.disk_size = 2 * MiB + 512 * 3
        self.conductor = None

    def start(self, name="conductor-1"):
        leases = Leases(self.db, name, TTL, self.registry.terminal_states)
        board = DatabaseBoard(self.db, self.registry, TTL)
        self.workflows = Workflows(self.db, self.registry, board, lambda owner: True, TTL)
        runtime.install(Runtime(db=self.db, image_client=None, workdir=self.tmp_path / "work", leases=leases,
                                upload_chunk=300_000, local=conductor_hooks.local_api(self.manager)))
        self.conductor = Conductor(self.db, Alive(name), database_url=f"sqlite:///{self.tfdir / 'tf.db'}",
                                   registry=self.registry, leases=leases, board=board, max_workers=2,
                                   scan_interval=0.3, workflows=self.workflows, hosts=frozenset({"h1"}))
        self.conductor.start()

    def stop(self):
        if self.conductor is not None:
            assert self.conductor.stop(timeout=15)
            self.conductor = None
        runtime.install(None)

    def close(self):
        self.stop()
        self.dav.stop()
        shutil.rmtree(self.tfdir, ignore_errors=True)
        self.engine.dispose()

    # -- rows and what the API would do --------------------------------------------------------
    def add_node(self, snapshot_interface="fake", state="active"):
        self.db.run_sync(lambda s: s.add(Node(
            id=self.node_id, name="bm-1", driver="fake-hardware", power_interface="fake", boot_interface="fake",
            snapshot_interface=snapshot_interface, provision_state=state, power_state="power on",
            driver_info_json=json.dumps({"fake_disk_size": self.disk_size}))))

    def image(self, disk_format="qcow2"):
        image_id = str(uuid.uuid4())
        self.images.images[image_id] = FakeImage(image_id, disk_format=disk_format)
        return image_id

    def node(self):
        return self.db.run_sync(lambda s: s.get(Node, self.node_id, populate_existing=True))

    def snapshot(self, image_id):
        """The API's snapshot verb: active|snapshot failed -snapshot-> snapshotting + the workflow."""
        frm = self.node().provision_state

        def also(session, workflow_id):
            states.provision(session, self.node_id, frm, "snapshot",
                             values={"snapshot_image_id": image_id, "snapshot_workflow_id": workflow_id})
        return self.workflows.submit("baremetal-snapshot", "node", self.node_id, {"image_id": image_id}, ACTOR,
                                     image_id=image_id, host="h1", also=also)

    def verb(self, kind, frm, event):
        def also(session, workflow_id):
            if event:
                states.provision(session, self.node_id, frm, event)
        host = "h1" if kind in ("baremetal-abort", "baremetal-teardown") else None
        return self.workflows.submit(kind, "node", self.node_id, {}, ACTOR, host=host, also=also)

    def wait(self, workflow_id, states_=ENDED, timeout=20.0):
        deadline = time.monotonic() + timeout
        while True:
            wf = self.db.run_sync(lambda s: s.get(Workflow, workflow_id, populate_existing=True))
            if wf.state in states_:
                return wf
            assert time.monotonic() < deadline, f"{wf.state}: {self.history(workflow_id)}"
            time.sleep(0.03)

    def wait_node(self, state, timeout=20.0):
        deadline = time.monotonic() + timeout
        while self.node().provision_state != state:
            assert time.monotonic() < deadline, f"node {self.node().provision_state}, not {state}"
            time.sleep(0.03)

    def history(self, workflow_id):
        return self.db.run_sync(lambda s: [(e.state, e.detail) for e in s.scalars(
            select(WorkflowEvent).where(WorkflowEvent.workflow_id == workflow_id).order_by(WorkflowEvent.id))])

    def transfers(self):
        return self.db.run_sync(lambda s: list(s.scalars(select(Transfer).where(Transfer.node_id == self.node_id))))


@pytest.fixture
def env(tmp_path):
    env = Env(tmp_path)
    env.start()
    yield env
    env.close()


def qcow2_bytes(tmp_path, data: bytes) -> bytes:
    src, out = tmp_path / "img.qcow2", tmp_path / "img.raw"
    src.write_bytes(data)
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(src), str(out)], check=True)
    return out.read_bytes()


def disk(env) -> bytes:
    return fake_disk_read(env.node_id, env.disk_size)(0, env.disk_size)


def seq(history):
    out = []
    for state, _ in history:
        state = "UPLOAD_<n>_COMPLETE" if state.startswith("UPLOAD_") and state[7:9].rstrip("_").isdigit() else state
        if not out or out[-1] != state:
            out.append(state)
    return out


# -- the happy paths -------------------------------------------------------------------------------

def test_fake_snapshot_end_to_end_qcow2(env, tmp_path):
    env.add_node("fake")
    image_id = env.image("qcow2")
    wf = env.wait(env.snapshot(image_id))
    assert wf.state == "IMAGE_ACTIVE", env.history(wf.id)
    assert seq(env.history(wf.id)) == ["LOCAL_SNAPSHOT_STARTED", "LOCAL_SNAPSHOT_COMPLETE", "UPLOAD_BEGIN",
                                       "UPLOAD_<n>_COMPLETE", "UPLOAD_COMPLETE", "IMAGE_ACTIVE"]
    image = env.images.images[image_id]
    assert image.status == "active" and image.upload_id is not None
    assert qcow2_bytes(tmp_path, bytes(image.data)) == disk(env)
    assert len(image.data) < env.disk_size           # holes neither read nor sent
    assert image.properties["os_freezeframe_workflow_state"] == "IMAGE_ACTIVE"
    node = env.node()
    assert (node.provision_state, node.target_provision_state, node.reservation, node.agent_token,
            node.last_error) == ("active", None, None, None, None)
    [transfer] = env.transfers()
    assert transfer.removed_at is not None and not env.manager.area.exists(transfer.path)


def test_fake_snapshot_raw_image_is_the_whole_disk(env):
    env.add_node("fake")
    image_id = env.image("raw")
    wf = env.wait(env.snapshot(image_id))
    assert wf.state == "IMAGE_ACTIVE", env.history(wf.id)
    assert bytes(env.images.images[image_id].data) == disk(env)


def test_agent_snapshot_waits_for_the_heartbeat_without_a_thread_then_streams(env, tmp_path):
    env.add_node("agent")
    env.agent = SimAgent(env)
    image_id = env.image("qcow2")
    workflow_id = env.snapshot(image_id)
    env.wait_node("snapshot wait")
    boot = env.interfaces.boot("fake").prepared(env.node_id)
    assert boot["ipa-api-url"] == "http://api.test/baremetal" and boot["ipa-node-uuid"] == env.node_id
    time.sleep(0.3)
    assert workflow_id not in env.conductor._running          # waiting holds no thread
    assert env.node().reservation is None                    # nor the node (heartbeats need it)
    env.agent.beat()
    wf = env.wait(workflow_id)
    assert wf.state == "IMAGE_ACTIVE", env.history(workflow_id)
    assert qcow2_bytes(tmp_path, bytes(env.images.images[image_id].data)) == disk(env)
    details = " | ".join(d for _, d in env.history(workflow_id))
    assert "snapshot wait" in details and "streaming the disk" in details and "verified" in details
    node = env.node()
    assert node.provision_state == "active" and node.agent_token is None and node.agent_url is None
    assert env.interfaces.boot("fake").prepared(env.node_id) is None          # ramdisk cleaned up
    assert not env.manager.area.collections()


# -- failures, retry, abort, deleted ------------------------------------------------------------------

def test_no_heartbeat_in_time_is_snapshot_failed_and_the_copy_kept(tmp_path):
    env = Env(tmp_path, agent_wait_timeout=1.0)
    env.start()
    try:
        env.add_node("agent")
        image_id = env.image()
        wf = env.wait(env.snapshot(image_id))
        assert wf.state == "REVERTED"
        node = env.node()
        assert node.provision_state == "snapshot failed" and "did not heartbeat within 1 s" in node.last_error
        assert node.agent_token is None and node.reservation is None
        [transfer] = env.transfers()
        assert transfer.removed_at is None and env.manager.area.exists(transfer.path)
        assert env.images.images[image_id].status == "queued"
    finally:
        env.close()


def test_agent_dies_mid_stream_then_a_retry_resumes_the_stream(tmp_path):
    env = Env(tmp_path, agent_lost_after=1.0)
    env.start()
    try:
        env.add_node("agent")
        image_id = env.image()
        env.agent = SimAgent(env, die_at_chunk=6)
        first = env.snapshot(image_id)
        env.wait_node("snapshot wait")
        env.agent.beat()
        wf = env.wait(first)
        assert wf.state == "REVERTED"
        node = env.node()
        assert node.provision_state == "snapshot failed"
        assert "the agent stopped heartbeating at" in node.last_error and "%" in node.last_error
        [transfer] = env.transfers()
        kept = env.manager.area.chunk_files(transfer.path)
        assert transfer.removed_at is None and kept
        # retry: snapshot failed -snapshot-> snapshotting, the same image: the same transfer
        env.agent = SimAgent(env)
        second = env.snapshot(image_id)
        env.wait_node("snapshot wait")
        env.agent.beat()
        wf = env.wait(second)
        assert wf.state == "IMAGE_ACTIVE", env.history(second)
        assert [t.id for t in env.transfers()] == [transfer.id]
        assert not set(env.agent.sent_chunks) & set(kept)         # chunks kept were not sent again
        assert qcow2_bytes(tmp_path, bytes(env.images.images[image_id].data)) == disk(env)
        assert env.node().provision_state == "active" and env.node().last_error is None
    finally:
        env.close()


def test_a_failed_stream_then_abort_removes_the_copy(env):
    env.add_node("fake")
    env.db.run_sync(lambda s: setattr(s.get(Node, env.node_id), "driver_info_json",
                                      json.dumps({"fake_snapshot_error": "disk on fire"})))
    image_id = env.image()
    wf = env.wait(env.snapshot(image_id))
    assert wf.state == "REVERTED" and "disk on fire" in wf.failure_reason
    assert env.node().provision_state == "snapshot failed" and "disk on fire" in env.node().last_error
    [transfer] = env.transfers()
    assert env.manager.area.exists(transfer.path)
    abort = env.wait(env.verb("baremetal-abort", "snapshot failed", None))
    assert abort.state == "COMPLETE", env.history(abort.id)
    assert env.node().provision_state == "active" and env.node().last_error is None
    assert not env.manager.area.exists(transfer.path) and env.transfers()[0].removed_at is not None


def test_cancel_during_snapshot_wait_is_fail_then_abort(env):
    env.add_node("agent")
    image_id = env.image()
    workflow_id = env.snapshot(image_id)
    env.wait_node("snapshot wait")
    env.db.run_sync(lambda s: setattr(s.get(Workflow, workflow_id), "cancel_requested", True))
    wf = env.wait(workflow_id)
    assert wf.state == "CANCELLED"
    node = env.node()
    assert node.provision_state == "active"
    assert not env.manager.area.collections()
    assert env.interfaces.boot("fake").prepared(env.node_id) is None


def test_api_abort_in_snapshot_wait_ends_the_workflow_without_moving_the_node_again(env):
    env.add_node("agent")
    workflow_id = env.snapshot(env.image())
    env.wait_node("snapshot wait")
    env.db.run_sync(lambda s: states.provision(s, env.node_id, "snapshot wait", "abort"))   # the API's move
    env.workflows.post(workflow_id, "baremetal-snapshot", "h1")
    wf = env.wait(workflow_id)
    assert wf.state == "REVERTED"
    assert env.node().provision_state == "snapshot failed"
    deleted = env.wait(env.verb("baremetal-teardown", "snapshot failed", "deleted"))
    assert deleted.state == "COMPLETE", env.history(deleted.id)
    node = env.node()
    assert node.provision_state == "available" and node.power_state == "power off"
    assert not env.manager.area.collections()


def test_reaper_keeps_copies_a_node_needs_and_removes_the_rest_after_the_grace(tmp_path):
    env = Env(tmp_path, transfer_grace=0.5)
    try:
        env.add_node("fake", state="snapshot failed")
        env.start()
        with env.db.engine.begin():
            pass
        mgr = env.manager

        def make(session):
            node = mgr.fresh(session, env.node_id)
            return mgr.open_transfer(session, node, "img-1", str(uuid.uuid4()))[0].path
        path = env.db.run_sync(make)
        orphan = str(uuid.uuid4())
        mgr.area.create(orphan)
        time.sleep(0.6)
        hook = conductor_hooks.TransferReaper()
        scan = Scan("conductor-1", frozenset(), None, env.workflows)
        hook(scan)
        assert mgr.area.exists(path) and not mgr.area.exists(orphan)         # snapshot failed: kept
        env.db.run_sync(lambda s: states.provision(s, env.node_id, "snapshot failed", "abort"))
        hook(scan)
        assert mgr.area.exists(path)                                          # within the grace
        time.sleep(0.6)
        hook(scan)
        assert not mgr.area.exists(path) and env.transfers()[0].removed_at is not None
    finally:
        env.close()


def test_stale_reservation_of_a_dead_conductor_is_released(env):
    env.add_node("fake")
    env.db.run_sync(lambda s: setattr(s.get(Node, env.node_id), "reservation", "dead-conductor"))
    clock = [0.0]
    hook = conductor_hooks.TransferReaper(clock=lambda: clock[0], stale_after=10)
    scan = Scan("conductor-1", frozenset(), None, env.workflows)
    hook(scan)
    assert env.node().reservation == "dead-conductor"
    clock[0] = 11
    hook(scan)
    assert env.node().reservation is None


def test_verify_and_adopt(env):
    env.add_node("fake", state="enroll")
    wf = env.wait(env.verb("baremetal-verify", "enroll", "manage"))
    assert wf.state == "COMPLETE" and env.node().provision_state == "manageable"
    wf = env.wait(env.verb("baremetal-adopt", "manageable", "adopt"))
    assert wf.state == "COMPLETE" and env.node().provision_state == "active"
    assert env.node().reservation is None and env.node().power_state == "power on"
