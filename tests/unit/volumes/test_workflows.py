"""The volume service's workflows run by a real conductor in process, on the fake volume driver,
with a fake compute that reports through the very function the API's os-update_snapshot_status
calls (``VolumeManager.report_compute_status``) and wakes the workflow as the API does.

Seed 002's promises checked here: every phase is a visible state (the workflow's history, the
snapshot's status, compute_snapshot_status in its admin metadata); the wait for compute holds no
thread and wakes at once on a report; compute failing or never answering ends the snapshot in
error with the reason and nothing left behind; a conductor stopped while waiting is resumed by
another one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from freezeframe.common import errors
from freezeframe.common.context import Actor
from freezeframe.conductor import runtime
from freezeframe.conductor.engine import Conductor
from freezeframe.conductor.jobboard import DatabaseBoard
from freezeframe.conductor.lease import Leases
from freezeframe.conductor.model import Workflow, WorkflowEvent
from freezeframe.conductor.registry import Registry
from freezeframe.conductor.runtime import Runtime
from freezeframe.conductor.service import Workflows
from freezeframe.settings import VolumeSettings
from freezeframe.volumes import conductor_hooks
from freezeframe.volumes import manager as m
from freezeframe.volumes.drivers.base import SnapshotIsBusy
from freezeframe.volumes.drivers.fake import FakeVolumeDriver
from freezeframe.volumes.manager import VolumeManager
from freezeframe.volumes.model import Volume, VolumeAttachment, VolumeSnapshot
from freezeframe.volumes.states import SNAPSHOT, VOLUME

TTL = 3.0
ACTOR = Actor("user-a", "project-a", frozenset({"member", "reader"}))
ENDED = {"COMPLETE", "REVERTED", "CANCELLED"}


def new_id() -> str:
    return str(uuid.uuid4())


class Alive:
    """Liveness for one in-process conductor (the coordination backend is not under test)."""

    def __init__(self, member_id: str) -> None:
        self.member_id = member_id

    def is_alive(self, member_id) -> bool:
        return True

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class FakeCompute:
    """Compute's os-assisted-volume-snapshots: records each request and reports as told —
    ``done`` (running 50%, then done), ``error``, ``silent`` (never), ``running`` (running, then
    never again) or ``manual`` (the test reports)."""

    def __init__(self, env: "Env") -> None:
        self.env = env
        self.mode = "done"
        self.error = "disk vdb not found on the server"
        self.calls: list[tuple[str, str, str, dict]] = []
        self.refuse: Exception | None = None

    def create(self, actor, server_id, volume_id, snapshot_id, create_info) -> None:
        self._asked("create", actor, server_id, volume_id, snapshot_id, create_info, "creating")

    def delete(self, actor, server_id, volume_id, snapshot_id, delete_info) -> None:
        self._asked("delete", actor, server_id, volume_id, snapshot_id, delete_info, "deleting")

    def _asked(self, op, actor, server_id, volume_id, snapshot_id, info, status) -> None:
        assert actor == ACTOR
        self.calls.append((op, server_id, snapshot_id, info))
        if self.refuse is not None:
            raise self.refuse
        if self.mode in ("done", "error", "running"):
            threading.Thread(target=self._run, args=(snapshot_id, status, self.mode), daemon=True).start()

    def _run(self, snapshot_id: str, status: str, mode: str) -> None:
        time.sleep(0.05)
        self.env.report(snapshot_id, status, "50%", "running")
        if mode == "running":
            return
        time.sleep(0.05)
        if mode == "done":
            self.env.report(snapshot_id, status, "100%", "done")
        else:
            self.env.report(snapshot_id, "error" if status == "creating" else "error_deleting", None, "error",
                            self.error)


class Env:
    """A volume manager, its fake driver and fake compute, and a conductor running its kinds."""

    def __init__(self, db, tmp_path: Path, **settings) -> None:
        self.db = db
        self.tmp_path = tmp_path
        self.driver = FakeVolumeDriver(tmp_path / "share", assisted=True)
        self.compute = FakeCompute(self)
        self.settings = VolumeSettings(**{"assisted_recheck": 0.2, **settings})
        self.manager = VolumeManager(db, self.driver, self.settings, self.compute)
        self.registry = Registry()
        conductor_hooks.register(self.registry)
        self.conductor: Conductor | None = None
        self.workflows: Workflows | None = None
        # taskflow's own records: on tmpfs when there is one (its SQLite commits sync each step)
        shm = Path("/dev/shm")
        self.taskflow_db = Path(tempfile.mkdtemp(dir=shm if shm.is_dir() else tmp_path)) / "tf.db"

    # -- the conductor ---------------------------------------------------------------------------
    def start(self, name: str = "conductor-1") -> None:
        leases = Leases(self.db, name, TTL, self.registry.terminal_states)
        board = DatabaseBoard(self.db, self.registry, TTL)
        self.workflows = Workflows(self.db, self.registry, board, lambda owner: True, TTL)
        runtime.install(Runtime(db=self.db, image_client=None, workdir=self.tmp_path / "work", leases=leases,
                                local=conductor_hooks.local_api(self.manager)))
        self.conductor = Conductor(self.db, Alive(name), database_url=f"sqlite:///{self.taskflow_db}",
                                   registry=self.registry, leases=leases, board=board, max_workers=2,
                                   scan_interval=0.5, workflows=self.workflows)
        self.conductor.start()

    def stop(self, *, last: bool = True) -> None:
        if self.conductor is not None:
            assert self.conductor.stop(timeout=15)
            self.conductor = None
        runtime.install(None)
        if last:
            shutil.rmtree(self.taskflow_db.parent, ignore_errors=True)

    # -- what the API would do ---------------------------------------------------------------------
    def submit(self, kind: str, resource_type: str, resource_id: str, params: dict | None = None) -> str:
        return self.workflows.submit(kind, resource_type, resource_id, params or {}, ACTOR)

    def report(self, snapshot_id, status, progress, compute_status, error=None) -> str | None:
        """os-update_snapshot_status as the API handles it: the report, then the wake-up."""
        self.db.run_sync(lambda s: self.manager.report_compute_status(s, snapshot_id, status, progress,
                                                                      compute_status, error))
        return self.manager.wake(self.workflows, snapshot_id)

    # -- rows ---------------------------------------------------------------------------------------
    def volume(self, status: str = "creating", *, size: int = 1, attached_to: str | None = None) -> str:
        volume_id = new_id()

        def add(session) -> None:
            session.add(Volume(id=volume_id, name="v", project_id=ACTOR.project_id, user_id=ACTOR.user_id, size=size,
                               status=status))
            if attached_to:
                session.flush()
                session.add(VolumeAttachment(id=new_id(), volume_id=volume_id, instance_uuid=attached_to,
                                             attach_status="attached", mountpoint="/dev/vdb",
                                             connection_info_json=json.dumps({"driver_volume_type": "qcow2file",
                                                                              "data": {"name": "old", "kept": 1},
                                                                              "serial": volume_id})))
        self.db.run_sync(add)
        return volume_id

    def available_volume(self, *, attached_to: str | None = None, data: bytes = b"") -> str:
        volume_id = self.volume("creating", attached_to=attached_to)
        self.db.run_sync(lambda s: self.manager.volume_created(s, volume_id, self.driver.create_volume(
            self.manager.volume_ref(s, volume_id))))
        if data:
            with open(self.driver.root / f"volume-{volume_id}", "r+b") as f:
                f.write(data)
        if attached_to:
            self.db.run_sync(lambda s: VOLUME.transition(s, volume_id, "available", "in-use"))
        return volume_id

    def snapshot(self, volume_id: str) -> str:
        snapshot_id = new_id()
        self.db.run_sync(lambda s: s.add(VolumeSnapshot(id=snapshot_id, volume_id=volume_id, volume_size=1,
                                                        status="creating", project_id=ACTOR.project_id)))
        return snapshot_id

    def to_deleting(self, snapshot_id: str) -> None:
        self.db.run_sync(lambda s: SNAPSHOT.transition(s, snapshot_id, "available", "deleting"))

    def row(self, model, row_id):
        return self.db.run_sync(lambda s: s.get(model, row_id))

    def md(self, snapshot_id: str) -> dict[str, str]:
        return self.db.run_sync(lambda s: self.manager.admin_metadata(s, snapshot_id))

    # -- workflows ----------------------------------------------------------------------------------
    def wait(self, workflow_id: str, states=ENDED, timeout: float = 15.0) -> Workflow:
        deadline = time.monotonic() + timeout
        while True:
            wf = self.row(Workflow, workflow_id)
            if wf.state in states:
                return wf
            if time.monotonic() > deadline:
                raise AssertionError(f"workflow {workflow_id} is {wf.state}, not in {states}: "
                                     f"{self.history(workflow_id)}")
            time.sleep(0.02)

    def released(self, workflow_id: str, timeout: float = 5.0) -> None:
        """Wait until the workflow waits holding nothing: no thread runs it, no conductor claims it."""
        deadline = time.monotonic() + timeout
        while workflow_id in self.conductor._running or self.row(Workflow, workflow_id).owner is not None:
            assert time.monotonic() < deadline, "the waiting workflow still holds a thread or its claim"
            time.sleep(0.02)

    def history(self, workflow_id: str) -> list[tuple[str, str]]:
        return self.db.run_sync(lambda s: [(e.state, e.detail) for e in s.scalars(
            select(WorkflowEvent).where(WorkflowEvent.workflow_id == workflow_id).order_by(WorkflowEvent.id))])

    def create_snapshot(self, volume_id: str, server_id: str | None) -> tuple[str, Workflow]:
        snapshot_id = self.snapshot(volume_id)
        wf = self.wait(self.submit("volume-snapshot-create", "snapshot", snapshot_id, {"server_id": server_id}))
        return snapshot_id, wf


@pytest.fixture
def env(db, tmp_path):
    env = Env(db, tmp_path)
    env.start()
    yield env
    env.stop()


def head(path: Path, n: int) -> bytes:
    """The first bytes of a (1 GiB, sparse) file."""
    with open(path, "rb") as f:
        return f.read(n)


def states(history: list[tuple[str, str]]) -> list[str]:
    return [state for state, _ in history]


# -- volumes -----------------------------------------------------------------------------------------

def test_a_blank_volume_is_created_then_deleted(env):
    volume_id = env.volume("creating")
    wf = env.wait(env.submit("volume-create", "volume", volume_id, {"source": "blank"}))
    assert wf.state == "COMPLETE", wf.failure_reason
    assert env.history(wf.id) == [("RUNNING", "creating on fake"), ("COMPLETE", "available")]
    volume = env.row(Volume, volume_id)
    assert volume.status == "available" and volume.fault is None
    assert json.loads(volume.provider_location) == {"active": f"volume-{volume_id}", "format": "raw"}
    data = env.driver.root / f"volume-{volume_id}"
    assert data.stat().st_size == 1 << 30 and data.stat().st_blocks == 0      # sparse: nothing written

    snapshot_id, _ = env.create_snapshot(volume_id, None)        # deleted with it (the API's cascade)
    env.db.run_sync(lambda s: VOLUME.transition(s, volume_id, "available", "deleting"))     # (the API's move)
    wf = env.wait(env.submit("volume-delete", "volume", volume_id))
    assert wf.state == "COMPLETE", wf.failure_reason
    assert states(env.history(wf.id)) == ["RUNNING", "COMPLETE"]
    volume = env.row(Volume, volume_id)
    assert volume.status == "deleted" and volume.deleted_at is not None
    assert env.row(VolumeSnapshot, snapshot_id).status == "deleted"
    assert not data.exists() and not (env.driver.root / f"snapshot-{snapshot_id}").exists()


def test_volumes_from_a_snapshot_and_from_a_volume_hold_its_data(env):
    source = env.available_volume(data=b"hello volume")
    snapshot_id, _ = env.create_snapshot(source, None)
    with open(env.driver.root / f"volume-{source}", "r+b") as f:
        f.write(b"changed after")
    from_snap, clone = env.volume("creating"), env.volume("creating")
    for volume_id, params in ((from_snap, {"source": "snapshot", "snapshot_id": snapshot_id}),
                              (clone, {"source": "volume", "source_volid": source})):
        wf = env.wait(env.submit("volume-create", "volume", volume_id, params))
        assert wf.state == "COMPLETE", wf.failure_reason
        assert env.row(Volume, volume_id).status == "available"
    assert head(env.driver.root / f"volume-{from_snap}", 12) == b"hello volume"
    assert head(env.driver.root / f"volume-{clone}", 13) == b"changed after"
    assert env.history(wf.id)[0] == ("RUNNING", f"creating on fake from volume {source}")


def test_a_failed_create_leaves_the_volume_in_error_with_the_reason_and_no_data(env):
    volume_id = env.volume("creating")
    env.driver.fail_on = {"create_volume"}
    wf = env.wait(env.submit("volume-create", "volume", volume_id, {"source": "blank"}))
    assert wf.state == "REVERTED"
    volume = env.row(Volume, volume_id)
    assert volume.status == "error" and "injected failure in create_volume" in volume.fault
    assert not (env.driver.root / f"volume-{volume_id}").exists()
    assert states(env.history(wf.id)) == ["RUNNING", "FAILED", "REVERTED"]

    env.driver.fail_on = set()
    image_volume = env.volume("creating")         # an image source: not wired yet, fails cleanly
    wf = env.wait(env.submit("volume-create", "volume", image_volume, {"source": "image", "image_id": "img-1"}))
    assert wf.state == "REVERTED"
    volume = env.row(Volume, image_volume)
    assert volume.status == "error" and "from an image is not available" in volume.fault and "img-1" in volume.fault


def test_a_failed_volume_delete_ends_error_deleting(env):
    volume_id = env.available_volume()
    env.db.run_sync(lambda s: VOLUME.transition(s, volume_id, "available", "deleting"))
    env.driver.fail_on = {"delete_volume"}
    wf = env.wait(env.submit("volume-delete", "volume", volume_id))
    assert wf.state == "REVERTED"
    volume = env.row(Volume, volume_id)
    assert volume.status == "error_deleting" and "injected failure" in volume.fault and volume.deleted_at is None


# -- offline snapshots --------------------------------------------------------------------------------

def test_an_offline_snapshot_is_created_and_deleted(env):
    volume_id = env.available_volume(data=b"at the snapshot")
    snapshot_id, wf = env.create_snapshot(volume_id, None)
    assert wf.state == "COMPLETE", wf.failure_reason
    assert env.history(wf.id) == [("RUNNING", "creating on fake"), ("RUNNING", "snapshotting offline on fake"),
                                  ("COMPLETE", "available")]
    snap = env.row(VolumeSnapshot, snapshot_id)
    assert (snap.status, snap.progress) == ("available", "100%")
    assert json.loads(env.md(snapshot_id)["provider"]) == {"file": f"snapshot-{snapshot_id}"}
    assert "compute_snapshot_status" not in env.md(snapshot_id) and env.compute.calls == []
    assert head(env.driver.root / f"snapshot-{snapshot_id}", 15) == b"at the snapshot"

    env.to_deleting(snapshot_id)
    wf = env.wait(env.submit("volume-snapshot-delete", "snapshot", snapshot_id, {"server_id": None}))
    assert wf.state == "COMPLETE", wf.failure_reason
    snap = env.row(VolumeSnapshot, snapshot_id)
    assert snap.status == "deleted" and snap.deleted_at is not None
    assert not (env.driver.root / f"snapshot-{snapshot_id}").exists()


def test_an_offline_delete_that_fails_ends_error_deleting_and_a_busy_one_goes_back_to_available(env):
    volume_id = env.available_volume()
    snapshot_id, _ = env.create_snapshot(volume_id, None)
    env.to_deleting(snapshot_id)
    env.driver.fail_on = {"delete_snapshot"}
    wf = env.wait(env.submit("volume-snapshot-delete", "snapshot", snapshot_id, {"server_id": None}))
    assert wf.state == "REVERTED"
    snap = env.row(VolumeSnapshot, snapshot_id)
    assert snap.status == "error_deleting" and "injected failure" in snap.fault and snap.deleted_at is None
    assert (env.driver.root / f"snapshot-{snapshot_id}").exists()       # never deleted unless the files are gone

    env.driver.fail_on = set()
    env.driver.delete_snapshot = lambda snapshot, volume: (_ for _ in ()).throw(
        SnapshotIsBusy(f"snapshot {snapshot.id} has a dependent volume"))
    env.db.run_sync(lambda s: SNAPSHOT.transition(s, snapshot_id, "error_deleting", "deleting"))
    wf = env.wait(env.submit("volume-snapshot-delete", "snapshot", snapshot_id, {"server_id": None}))
    assert wf.state == "REVERTED"
    snap = env.row(VolumeSnapshot, snapshot_id)
    assert snap.status == "available" and "has a dependent volume" in snap.fault


# -- assisted snapshots (seed 002) ------------------------------------------------------------------

def test_an_assisted_create_waits_for_compute_without_a_thread_and_wakes_on_its_report(db, tmp_path):
    env = Env(db, tmp_path, assisted_recheck=60.0)       # only a report's post can wake it in time
    env.start()
    try:
        server_id = new_id()
        volume_id = env.available_volume(attached_to=server_id)
        env.compute.mode = "manual"
        snapshot_id = env.snapshot(volume_id)
        workflow_id = env.submit("volume-snapshot-create", "snapshot", snapshot_id, {"server_id": server_id})
        wf = env.wait(workflow_id, {"WAITING"})
        env.released(workflow_id)
        assert env.compute.calls == [("create", server_id, snapshot_id, {
            "type": "qcow2", "new_file": f"volume-{volume_id}.{snapshot_id}", "snapshot_id": snapshot_id})]
        md = env.md(snapshot_id)
        assert md["compute_snapshot_status"] == "requested" and md["workflow_id"] == workflow_id
        assert md["new_file"] == f"volume-{volume_id}.{snapshot_id}"
        assert env.row(VolumeSnapshot, snapshot_id).status == "creating"

        assert env.report(snapshot_id, "creating", "40%", "running") == workflow_id
        deadline = time.monotonic() + 5
        while ("WAITING", "waiting for compute: running, 40%") not in env.history(workflow_id):
            assert time.monotonic() < deadline, env.history(workflow_id)
            time.sleep(0.02)
        assert env.row(Workflow, workflow_id).progress == 40
        env.released(workflow_id)
        started = time.monotonic()
        env.report(snapshot_id, "creating", "100%", "done")
        wf = env.wait(workflow_id)
        assert wf.state == "COMPLETE", wf.failure_reason
        assert time.monotonic() - started < 5            # woken by the post, not by the 60 s recheck
        snap = env.row(VolumeSnapshot, snapshot_id)
        assert (snap.status, snap.progress, snap.fault) == ("available", "100%", None)
        md = env.md(snapshot_id)
        assert md["compute_snapshot_status"] == "done" and md["compute_progress"] == "100%"
        history = env.history(workflow_id)
        assert states(history) == ["RUNNING", "WAITING", "WAITING", "RUNNING", "COMPLETE"]
        assert history[0] == ("RUNNING", f"creating on fake, assisted by compute (server {server_id})")
        assert history[1][1].startswith(f"waiting for compute: asked to snapshot into volume-{volume_id}.")
        assert history[3] == ("RUNNING", "compute done: completing")
        assert (env.driver.root / f"snapshot-{snapshot_id}").exists() and env.driver._load_state()["pending"] == {}
        with pytest.raises(errors.Conflict):            # compute's part is over: a late report is refused
            env.report(snapshot_id, "creating", "100%", "done")
    finally:
        env.stop()


def test_compute_failing_ends_the_snapshot_in_error_with_its_reason_and_removes_the_new_file(env):
    server_id = new_id()
    volume_id = env.available_volume(attached_to=server_id)
    env.compute.mode = "error"
    snapshot_id, wf = env.create_snapshot(volume_id, server_id)
    assert wf.state == "REVERTED"
    snap = env.row(VolumeSnapshot, snapshot_id)
    assert snap.status == "error" and snap.fault == "compute failed: disk vdb not found on the server"
    assert env.md(snapshot_id)["compute_snapshot_status"] == "error"
    assert env.driver._load_state() == {"pending": {}, "snapshots": {}, "seq": 0}    # begin's file aborted
    assert wf.failure_reason == "compute failed: disk vdb not found on the server"

    # The snapshot in error is deleted online: the driver has nothing for compute to merge.
    env.db.run_sync(lambda s: SNAPSHOT.transition(s, snapshot_id, "error", "deleting"))
    env.compute.calls.clear()
    wf = env.wait(env.submit("volume-snapshot-delete", "snapshot", snapshot_id, {"server_id": server_id}))
    assert wf.state == "COMPLETE", wf.failure_reason
    assert env.row(VolumeSnapshot, snapshot_id).status == "deleted" and env.compute.calls == []
    assert "WAITING" not in states(env.history(wf.id))


def test_a_cancel_while_waiting_stops_compute_and_ends_cancelled(env):
    server_id = new_id()
    volume_id = env.available_volume(attached_to=server_id)
    env.compute.mode = "manual"
    snapshot_id = env.snapshot(volume_id)
    workflow_id = env.submit("volume-snapshot-create", "snapshot", snapshot_id, {"server_id": server_id})
    env.wait(workflow_id, {"WAITING"})
    env.report(snapshot_id, "creating", "10%", "running")

    def cancel(session):
        session.get(Workflow, workflow_id).cancel_requested = True
    env.db.run_sync(cancel)
    wf = env.wait(workflow_id)
    assert wf.state == "CANCELLED" and wf.failure_reason == "cancelled by the user"
    snap = env.row(VolumeSnapshot, snapshot_id)
    assert snap.status == "error" and snap.fault.startswith("cancelled by the user; compute was running")
    assert env.md(snapshot_id)["compute_snapshot_status"] == "error"      # compute's next report: 409
    with pytest.raises(errors.Conflict):
        env.report(snapshot_id, "creating", "100%", "done")


def test_compute_refusing_the_request_fails_the_snapshot_and_stops_compute(env):
    server_id = new_id()
    volume_id = env.available_volume(attached_to=server_id)
    env.compute.refuse = errors.Invalid("Server is not in a state to take a snapshot")
    snapshot_id, wf = env.create_snapshot(volume_id, server_id)
    assert wf.state == "REVERTED"
    snap = env.row(VolumeSnapshot, snapshot_id)
    assert snap.status == "error" and "not in a state" in snap.fault
    md = env.md(snapshot_id)
    assert md["compute_snapshot_status"] == "error" and md["gave_up_while"] == "requested"
    assert env.driver._load_state()["pending"] == {}


def test_compute_never_answering_ends_in_error_after_the_timeout_with_nothing_left(db, tmp_path):
    env = Env(db, tmp_path, assisted_create_timeout=1)
    env.start()
    try:
        server_id = new_id()
        volume_id = env.available_volume(attached_to=server_id)
        env.compute.mode = "silent"
        started = time.monotonic()
        snapshot_id, wf = env.create_snapshot(volume_id, server_id)
        assert 1 <= time.monotonic() - started < 8
        assert wf.state == "REVERTED"
        snap = env.row(VolumeSnapshot, snapshot_id)
        assert snap.status == "error" and snap.fault == "compute did not report within 1 s"
        md = env.md(snapshot_id)
        assert md["compute_snapshot_status"] == "error" and md["gave_up_while"] == "requested"
        assert env.driver._load_state()["pending"] == {}            # no overlay left behind
        assert not (env.driver.root / f"snapshot-{snapshot_id}").exists()
        with pytest.raises(errors.Conflict, match="no longer waits"):     # compute answering late: 409
            env.report(snapshot_id, "creating", "10%", "running")

        # Compute took it (running) and then went silent: it may be writing to the new file,
        # which is kept, and the fault says so.
        env.compute.mode = "running"
        snapshot_id, wf = env.create_snapshot(volume_id, server_id)
        assert wf.state == "REVERTED"
        snap = env.row(VolumeSnapshot, snapshot_id)
        assert snap.status == "error" and snap.fault.startswith("compute did not report within 1 s (it was running")
        assert f"volume-{volume_id}.{snapshot_id}, which is kept" in snap.fault
        assert env.md(snapshot_id)["gave_up_while"] == "running"
        assert snapshot_id in env.driver._load_state()["pending"]      # not aborted: compute may use it
    finally:
        env.stop()


def test_assisted_deletes_of_a_middle_and_of_the_newest_snapshot(env):
    server_id = new_id()
    volume_id = env.available_volume(attached_to=server_id)
    snaps = [env.create_snapshot(volume_id, server_id)[0] for _ in range(3)]
    assert all(env.row(VolumeSnapshot, s).status == "available" for s in snaps)
    env.compute.calls.clear()

    # The chain: volume-V <- V.s0 <- V.s1 <- V.s2 (active); info[s] is the overlay made at s.
    # The middle one: V.s1 is committed into V.s0. Then the newest (V.s2, active, on V.s0): the
    # active file is rebased onto V.s0's backing file.
    names = {s: f"volume-{volume_id}.{s}" for s in snaps}
    for victim, info in ((snaps[1], {"file_to_merge": names[snaps[1]], "merge_target_file": names[snaps[0]]}),
                         (snaps[2], {"file_to_merge": f"volume-{volume_id}", "merge_target_file": None})):
        env.to_deleting(victim)
        workflow_id = env.submit("volume-snapshot-delete", "snapshot", victim, {"server_id": server_id})
        wf = env.wait(workflow_id)
        assert wf.state == "COMPLETE", wf.failure_reason
        assert env.compute.calls[-1] == ("delete", server_id, victim, {"type": "qcow2", "volume_id": volume_id, **info})
        snap = env.row(VolumeSnapshot, victim)
        assert snap.status == "deleted" and snap.deleted_at is not None
        assert not (env.driver.root / f"snapshot-{victim}").exists()
        md = env.md(victim)
        assert md["compute_snapshot_status"] == "done" and md["workflow_kind"] == "volume-snapshot-delete"
        history = states(env.history(workflow_id))     # (compute's running report may come and go unseen)
        assert history[:2] == ["RUNNING", "WAITING"] and history[-2:] == ["RUNNING", "COMPLETE"]
    assert set(env.driver._load_state()["snapshots"]) == {snaps[0]}
    assert env.row(VolumeSnapshot, snaps[0]).status == "available"


def test_compute_failing_a_delete_leaves_the_snapshot_error_deleting_with_its_files(env):
    server_id = new_id()
    volume_id = env.available_volume(attached_to=server_id)
    snapshot_id, _ = env.create_snapshot(volume_id, server_id)
    env.to_deleting(snapshot_id)
    env.compute.mode, env.compute.error = "error", "blockCommit failed"
    wf = env.wait(env.submit("volume-snapshot-delete", "snapshot", snapshot_id, {"server_id": server_id}))
    assert wf.state == "REVERTED"
    snap = env.row(VolumeSnapshot, snapshot_id)
    assert snap.status == "error_deleting" and snap.fault == "compute failed: blockCommit failed"
    assert (env.driver.root / f"snapshot-{snapshot_id}").exists()


class ActiveFileDriver(FakeVolumeDriver):
    """The fake, with the active file moving to the new overlay at an assisted create (as
    qcow2file's does): what the attachment's connection info must follow."""

    def _vid(self, volume):
        return volume.id

    def create_snapshot_assisted_complete(self, snapshot, volume, admin_metadata):
        done = super().create_snapshot_assisted_complete(snapshot, volume, admin_metadata)
        return type(done)(snapshot=done.snapshot, volume={"active": admin_metadata["new_file"], "format": "qcow2"})

    def connection_info(self, volume):
        info = super().connection_info(volume)
        info["data"].update(name=volume.provider.get("active"), format=volume.provider.get("format"))
        return info


def test_an_online_snapshot_refreshes_the_attachment_connection_info(db, tmp_path):
    env = Env(db, tmp_path)
    env.driver = env.manager.driver = ActiveFileDriver(tmp_path / "share", assisted=True)
    env.start()
    try:
        server_id = new_id()
        volume_id = env.available_volume(attached_to=server_id)
        snapshot_id, wf = env.create_snapshot(volume_id, server_id)
        assert wf.state == "COMPLETE", wf.failure_reason
        new_file = f"volume-{volume_id}.{snapshot_id}"
        assert json.loads(env.row(Volume, volume_id).provider_location) == {"active": new_file, "format": "qcow2"}
        att = env.db.run_sync(lambda s: s.scalars(select(VolumeAttachment).where(
            VolumeAttachment.volume_id == volume_id)).one())
        info = json.loads(att.connection_info_json)
        assert info["data"]["name"] == new_file and info["data"]["format"] == "qcow2"
        assert info["data"]["kept"] == 1 and info["serial"] == volume_id      # what was there besides is kept
        assert att.attach_status == "attached"
    finally:
        env.stop()


def test_a_conductor_stopped_while_waiting_is_resumed_by_another(db, tmp_path):
    env = Env(db, tmp_path)
    env.start("conductor-1")
    server_id = new_id()
    volume_id = env.available_volume(attached_to=server_id)
    env.compute.mode = "manual"
    snapshot_id = env.snapshot(volume_id)
    workflow_id = env.submit("volume-snapshot-create", "snapshot", snapshot_id, {"server_id": server_id})
    env.wait(workflow_id, {"WAITING"})
    env.stop(last=False)
    wf = env.row(Workflow, workflow_id)
    assert wf.state == "WAITING" and wf.owner is None
    env.start("conductor-2")
    try:
        deadline = time.monotonic() + 5
        while env.row(Workflow, workflow_id).fence <= wf.fence:     # taken again by conductor-2, still waiting
            assert time.monotonic() < deadline
            time.sleep(0.02)
        while not env.compute.calls:                # compute asked (again: it is idempotent) ...
            assert time.monotonic() < deadline
            time.sleep(0.02)
        env.released(workflow_id)                   # ... and waiting again
        env.report(snapshot_id, "creating", None, "running")
        env.report(snapshot_id, "creating", "100%", "done")
        wf = env.wait(workflow_id)
        assert wf.state == "COMPLETE", wf.failure_reason
        assert env.row(VolumeSnapshot, snapshot_id).status == "available"
        assert {call[2] for call in env.compute.calls} == {snapshot_id}
        history = env.history(workflow_id)
        assert states(history)[:2] == ["RUNNING", "WAITING"] and states(history)[-2:] == ["RUNNING", "COMPLETE"]
        assert [h for h in history if h[1].startswith(("creating on", "waiting for compute: asked"))] == history[:2]
        assert all(detail for _, detail in history)     # begin was not redone; every move says what it is
    finally:
        env.stop()


# -- os-update_snapshot_status (the API calls this, then wakes the workflow) --------------------------

def test_report_compute_status_semantics(db, tmp_path):
    env = Env(db, tmp_path)
    volume_id = env.available_volume()
    snapshot_id = env.snapshot(volume_id)

    def report(*args):
        return db.run_sync(lambda s: env.manager.report_compute_status(s, snapshot_id, *args))

    with pytest.raises(errors.Conflict, match="asked compute for nothing"):
        report("creating", "10%", "running", None)
    db.run_sync(lambda s: env.manager.request_compute(s, snapshot_id, workflow_id="wf-1", kind="volume-snapshot-create",
                                                      info={"type": "qcow2"}, timeout=60))
    for bad in (("available", None, "running", None), ("deleting", "90%", None, None),   # not a creating status
                ("creating", "50%", None, None), ("creating", None, None, None),          # legacy: only 90% = done
                ("creating", "10%", "requested", None), ("creating", "10%", "bogus", None)):
        with pytest.raises(errors.Invalid):
            report(*bad)
    assert report("creating", "10%", "running", None) == "wf-1"
    assert report("creating", "60%", "running", None) == "wf-1"
    assert env.md(snapshot_id)["compute_progress"] == "60%"
    assert report("creating", "100%", "done", None) == "wf-1"
    with pytest.raises(errors.Conflict):
        report("creating", "100%", "done", None)

    # the next operation on the snapshot asks again: done -> requested; a legacy report
    db.run_sync(lambda s: SNAPSHOT.transition(s, snapshot_id, "creating", "available"))
    env.to_deleting(snapshot_id)
    db.run_sync(lambda s: env.manager.request_compute(s, snapshot_id, workflow_id="wf-2", kind="volume-snapshot-delete",
                                                      info={"type": "qcow2"}, timeout=60))
    md = env.md(snapshot_id)
    assert md["compute_snapshot_status"] == "requested" and "compute_progress" not in md
    assert report("deleting", "90%", None, None) == "wf-2"
    assert env.md(snapshot_id)["compute_snapshot_status"] == "done"

    db.run_sync(lambda s: env.manager.request_compute(s, snapshot_id, workflow_id="wf-3", kind="volume-snapshot-delete",
                                                      info={"type": "qcow2"}, timeout=60))
    assert report("error_deleting", None, "error", "blockRebase failed") == "wf-3"
    md = env.md(snapshot_id)
    assert md["compute_snapshot_status"] == "error" and md["compute_error"] == "blockRebase failed"
    with pytest.raises(errors.NotFound):
        db.run_sync(lambda s: env.manager.report_compute_status(s, new_id(), "creating", "90%", None, None))
    assert m.GAVE_UP_WHILE not in md
