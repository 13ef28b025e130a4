"""compute/volume_ops.py and compute/workflows/assisted.py with the fake virt driver and a fake
volume service (no HTTP): attach and detach as Nova does them (every step, every failure undone,
Nova's 400/404/409), a deleted server's volumes, and compute's part of an assisted volume
snapshot run by a real conductor engine (what it reports, what it leaves on the disk and in
the server's mapping, and what it does when the volume side is away or gave up)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from pathlib import Path

import pytest

from freezeframe.common import errors
from freezeframe.common.context import RequestContext, expand_roles
from freezeframe.common.policy import Policy
from freezeframe.compute.conductor_hooks import ComputeHooks
from freezeframe.compute.drivers.base import DriverError, GuestSpec, VolumeDisk
from freezeframe.compute.drivers.fake import FakeDriver
from freezeframe.compute.hostside import Hosts, LocalHost
from freezeframe.compute.model import BlockDeviceMapping, Instance
from freezeframe.compute.service import ComputeService
from freezeframe.compute.volume_ops import ASSISTED_KIND, parse_attach, parse_create_info, parse_delete_info
from freezeframe.compute.workflows import assisted
from freezeframe.conductor import runtime
from freezeframe.conductor.engine import Conductor
from freezeframe.conductor.lease import Leases
from freezeframe.conductor.model import Workflow, WorkflowEvent
from freezeframe.conductor.registry import Registry
from freezeframe.conductor.runtime import Runtime
from freezeframe.conductor.service import Workflows
from freezeframe.volumes.client import CinderError, Unreachable

HOST = "host-1"
MEMBER = RequestContext("bob", "project-a", expand_roles({"member"}))
OTHER = RequestContext("eve", "project-b", expand_roles({"member"}))
# The volume service calling compute: the user's identity with the service credential beside it.
SERVICE = RequestContext("bob", "project-a", expand_roles({"member"}), service_roles=frozenset({"service"}))


# -- fakes -------------------------------------------------------------------------------------

class VolumeFakeDriver(FakeDriver):
    """The fake virt driver with volume disks: which file each volume's disk is on, per domain."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.disks: dict[str, dict[str, VolumeDisk]] = {}
        self.merges: list[tuple[str, str | None, str | None]] = []
        self.move_then_fail: Exception | None = None    # volume_snapshot_create moves the disk, then raises

    def attach_volume(self, name: str, disk: VolumeDisk) -> None:
        self._maybe_fail("attach_volume")
        self._domain(name)
        self.disks.setdefault(name, {})[disk.volume_id] = disk

    def detach_volume(self, name: str, volume_id: str) -> None:
        self._maybe_fail("detach_volume")
        self._domain(name)
        self.disks.get(name, {}).pop(volume_id, None)

    def volume_disks(self, name: str) -> list[VolumeDisk]:
        self._domain(name)
        return list(self.disks.get(name, {}).values())

    def volume_snapshot_create(self, name, volume_id, new_file, *, quiesce, require_quiesce, max_frozen=1.0):
        self._maybe_fail("volume_snapshot_create")
        disk = self.disks[name][volume_id]
        if disk.path == new_file:
            return False, 0.0
        if not new_file.is_file():
            raise DriverError(f"{new_file} does not exist")
        self.disks[name][volume_id] = VolumeDisk(volume_id, disk.target, new_file, "qcow2")
        if self.move_then_fail is not None:
            raise self.move_then_fail
        return quiesce and self._domain(name).agent, 0.01

    def volume_snapshot_delete(self, name, volume_id, *, file_to_merge, merge_target_file, progress=None):
        self._maybe_fail("volume_snapshot_delete")
        self.merges.append((volume_id, file_to_merge, merge_target_file))
        for done in range(0, 1001, 50):        # a block job of 1000 units, seen every 5%
            if progress is not None:
                progress.report(done, 1000)


class FakeCinder:
    """The volume service as compute's client sees it (``volumes_for(actor)`` returns it)."""

    def __init__(self, share: Path) -> None:
        self.share = share
        self.volumes: dict[str, dict] = {}
        self.attachments: dict[str, dict] = {}
        self.calls: list[str] = []
        self.reports: list[tuple] = []
        self.fail: dict[str, BaseException] = {}
        self.actors: list = []

    def __call__(self, actor):
        self.actors.append(actor)
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def _call(self, name: str) -> None:
        self.calls.append(name)
        exc = self.fail.get(name)
        if exc is not None:
            raise exc

    def add_volume(self, status: str = "available", size: int = 1) -> str:
        volume_id = str(uuid.uuid4())
        self.volumes[volume_id] = {"id": volume_id, "status": status, "size": size, "multiattach": False}
        (self.share / f"volume-{volume_id}").write_bytes(b"")
        return volume_id

    def _volume(self, volume_id: str) -> dict:
        if volume_id not in self.volumes:
            raise CinderError(f"Volume {volume_id} could not be found.", status=404)
        return self.volumes[volume_id]

    def show_volume(self, volume_id):
        self._call("show_volume")
        return dict(self._volume(volume_id))

    def delete_volume(self, volume_id):
        self._call("delete_volume")
        self._volume(volume_id)
        del self.volumes[volume_id]

    def attachment_create(self, volume_id, instance_uuid, connector=None, mode=None):
        self._call("attachment_create")
        volume = self._volume(volume_id)
        if volume["status"] != "available":
            raise CinderError(f"volume {volume_id} status must be available", status=400)
        volume["status"] = "reserved"
        attachment_id = str(uuid.uuid4())
        self.attachments[attachment_id] = {"id": attachment_id, "volume_id": volume_id, "instance": instance_uuid,
                                           "connector": None}
        return {"id": attachment_id, "status": "reserved", "volume_id": volume_id}

    def attachment_update(self, attachment_id, connector):
        self._call("attachment_update")
        att = self.attachments[attachment_id]
        att["connector"] = connector
        self.volumes[att["volume_id"]]["status"] = "attaching"
        return {"driver_volume_type": "qcow2file", "serial": att["volume_id"],
                "data": {"export": str(self.share), "name": f"volume-{att['volume_id']}", "format": "raw",
                         "volume_id": att["volume_id"], "access_mode": "rw"}}

    def attachment_complete(self, attachment_id):
        self._call("attachment_complete")
        self.volumes[self.attachments[attachment_id]["volume_id"]]["status"] = "in-use"

    def attachment_delete(self, attachment_id):
        self._call("attachment_delete")
        if attachment_id not in self.attachments:
            raise CinderError("attachment not found", status=404)
        att = self.attachments.pop(attachment_id)
        if att["volume_id"] in self.volumes:
            self.volumes[att["volume_id"]]["status"] = "available"

    def update_snapshot_status(self, snapshot_id, status, progress, compute_snapshot_status, compute_error=None):
        self._call("update_snapshot_status")
        self.reports.append((snapshot_id, status, progress, compute_snapshot_status, compute_error))


# -- the world -----------------------------------------------------------------------------------

class World:
    def __init__(self, db, tmp_path: Path) -> None:
        self.db = db
        self.tmp = tmp_path
        self.share = tmp_path / "share"
        self.share.mkdir()
        self.driver = VolumeFakeDriver()
        self.cinder = FakeCinder(self.share)
        self.hosts = Hosts(LocalHost(HOST, self.driver, images_for=None, instances_path=tmp_path / "instances"))
        self.registry = Registry()
        for kind in assisted.KINDS:
            self.registry.add_kind(kind)
        self.workflows = Workflows(db, self.registry)
        self.compute = ComputeService(db, self.hosts, images_for=None, workflows=self.workflows, policy=Policy(None),
                                      volumes_for=self.cinder)

    def server(self, *, vm_state: str = "active", task_state: str | None = None, guest_agent: bool = False,
               system_metadata: dict | None = None) -> str:
        server_id = str(uuid.uuid4())
        root = self.tmp / f"{server_id}.disk"
        root.write_bytes(bytes(1 << 16))
        domain = f"instance-{server_id}"
        self.driver.spawn(GuestSpec(name=domain, uuid=server_id, vcpus=1, memory_mb=256, root_disk=root,
                                    guest_agent=guest_agent))
        self.db.run_sync(lambda s: s.add(Instance(
            id=server_id, name="vm", project_id="project-a", user_id="bob", vm_state=vm_state, task_state=task_state,
            power_state="running", flavor_id="1", vcpus=1, memory_mb=256, root_gb=1, domain_name=domain, host=HOST,
            root_disk=str(root), root_target="vda", guest_agent=guest_agent,
            system_metadata=json.dumps(system_metadata or {}))))
        return server_id

    def attach(self, server_id: str, volume_id: str, *, ctx=MEMBER, **att):
        req = parse_attach({"volumeAttachment": {"volumeId": volume_id, **att}}, tag_allowed=True,
                           delete_on_termination_allowed=True)
        return asyncio.run(self.compute.volumes.attach(ctx, server_id, req))

    def detach(self, server_id: str, volume_id: str, *, ctx=MEMBER) -> None:
        asyncio.run(self.compute.volumes.detach(ctx, server_id, volume_id))

    def bdms(self, server_id: str) -> list[BlockDeviceMapping]:
        return self.db.run_sync(lambda s: list(s.query(BlockDeviceMapping).filter_by(instance_uuid=server_id)
                                               .order_by(BlockDeviceMapping.id)))

    def domain(self, server_id: str) -> str:
        return f"instance-{server_id}"


@pytest.fixture
def world(db, tmp_path):
    return World(db, tmp_path)


# -- attach ------------------------------------------------------------------------------------------

def test_attach_is_reserve_connect_open_complete_and_the_mapping_records_it(world):
    server_id, volume_id = world.server(), world.cinder.add_volume(size=3)
    bdm = world.attach(server_id, volume_id, tag="data")
    assert world.cinder.calls == ["show_volume", "attachment_create", "attachment_update", "attachment_complete"]
    (att,) = world.cinder.attachments.values()
    assert att["instance"] == server_id and world.cinder.volumes[volume_id]["status"] == "in-use"
    assert att["connector"]["host"] == HOST and att["connector"]["mountpoint"] == "/dev/vdb"
    assert att["connector"]["initiator"] is None and {"platform", "os_type"} <= set(att["connector"])
    disk = world.driver.disks[world.domain(server_id)][volume_id]
    assert disk == VolumeDisk(volume_id, "vdb", world.share / f"volume-{volume_id}", "raw")
    assert (bdm.device_name, bdm.status, bdm.attachment_id, bdm.volume_size, bdm.tag) == \
        ("vdb", "attached", att["id"], 3, "data")
    assert json.loads(bdm.connection_info)["data"]["name"] == f"volume-{volume_id}"
    assert world.cinder.actors[0].user_id == "bob" and world.cinder.actors[0].project_id == "project-a"
    shown = asyncio.run(world.compute.volumes.attachment(MEMBER, server_id, volume_id))
    assert shown.id == bdm.id
    assert [b.volume_id for b in asyncio.run(world.compute.volumes.attachments(MEMBER, server_id))] == [volume_id]


def test_devices_are_the_next_free_one_or_the_one_asked_for_if_free(world):
    server_id = world.server()
    first, second = world.cinder.add_volume(), world.cinder.add_volume()
    assert world.attach(server_id, first, device="/dev/vdd").device_name == "vdd"
    assert world.attach(server_id, second).device_name == "vdb"
    third = world.cinder.add_volume()
    with pytest.raises(errors.Invalid, match="in use"):
        world.attach(server_id, third, device="vdd")
    with pytest.raises(errors.Invalid, match="device path"):
        world.attach(server_id, third, device="/dev/sda")
    assert world.attach(server_id, third).device_name == "vdc"
    assert world.cinder.volumes[third]["status"] == "in-use"


def test_attach_refusals_are_novas(world):
    server_id = world.server()
    with pytest.raises(errors.NotFound, match="could not be found"):
        world.attach(server_id, str(uuid.uuid4()))
    busy = world.cinder.add_volume(status="in-use")
    with pytest.raises(errors.Invalid, match="status must be 'available'"):
        world.attach(server_id, busy)
    volume_id = world.cinder.add_volume()
    world.attach(server_id, volume_id)
    with pytest.raises(errors.Invalid, match="already attached"):
        world.attach(server_id, volume_id)
    for state, task in (("error", None), ("building", "spawning"), ("active", "image_snapshot")):
        other = world.server(vm_state=state, task_state=task)
        with pytest.raises(errors.Conflict, match="attach_volume"):
            world.attach(other, world.cinder.add_volume())
    stopped = world.server(vm_state="stopped")
    assert world.attach(stopped, world.cinder.add_volume()).status == "attached"
    with pytest.raises(errors.NotFound):            # another project's server
        world.attach(server_id, world.cinder.add_volume(), ctx=OTHER)
    assert all(not b.status.startswith("attaching") for s in (server_id, stopped) for b in world.bdms(s))


def test_attach_body_follows_the_microversion():
    body = {"volumeAttachment": {"volumeId": str(uuid.uuid4()), "tag": "t"}}
    with pytest.raises(errors.Invalid, match="additional properties"):
        parse_attach(body, tag_allowed=False, delete_on_termination_allowed=False)
    assert parse_attach(body, tag_allowed=True, delete_on_termination_allowed=False).tag == "t"
    dot = {"volumeAttachment": {"volumeId": str(uuid.uuid4()), "delete_on_termination": True}}
    with pytest.raises(errors.Invalid):
        parse_attach(dot, tag_allowed=True, delete_on_termination_allowed=False)
    assert parse_attach(dot, tag_allowed=True, delete_on_termination_allowed=True).delete_on_termination
    for bad in ({}, {"volumeAttachment": {}}, {"volumeAttachment": {"volumeId": "x"}},
                {"volumeAttachment": {"volumeId": str(uuid.uuid4()), "device": 3}},
                {"volumeAttachment": {"volumeId": str(uuid.uuid4()), "tag": "a/b"}}):
        with pytest.raises(errors.Invalid):
            parse_attach(bad, tag_allowed=True, delete_on_termination_allowed=True)


@pytest.mark.parametrize("step", ["attach_volume", "attachment_update", "attachment_complete"])
def test_a_failed_attach_leaves_nothing_attached(world, step):
    server_id, volume_id = world.server(), world.cinder.add_volume()
    if step == "attach_volume":
        world.driver.fail_on["attach_volume"] = DriverError("the hypervisor refused")
    else:
        world.cinder.fail[step] = CinderError("volume service broke", status=500)
    with pytest.raises((DriverError, errors.BackendUnavailable)):
        world.attach(server_id, volume_id)
    assert world.bdms(server_id) == []
    assert world.cinder.attachments == {} and world.cinder.volumes[volume_id]["status"] == "available"
    assert "attachment_delete" in world.cinder.calls
    assert world.driver.disks.get(world.domain(server_id), {}) == {}


# -- detach --------------------------------------------------------------------------------------------

def test_detach_closes_the_disk_deletes_the_attachment_and_the_mapping(world):
    server_id, volume_id = world.server(), world.cinder.add_volume()
    world.attach(server_id, volume_id)
    world.detach(server_id, volume_id)
    assert world.driver.disks[world.domain(server_id)] == {}
    assert world.cinder.attachments == {} and world.cinder.volumes[volume_id]["status"] == "available"
    assert world.bdms(server_id) == []
    with pytest.raises(errors.NotFound):
        world.detach(server_id, volume_id)
    with pytest.raises(errors.NotFound):
        world.detach(server_id, "not-a-uuid")


def test_a_root_volume_is_not_detached_and_a_failed_detach_is_finished_by_the_next(world):
    server_id, volume_id = world.server(), world.cinder.add_volume()
    world.attach(server_id, volume_id)
    world.cinder.fail["attachment_delete"] = Unreachable("volume service away")
    with pytest.raises(errors.BackendUnavailable):
        world.detach(server_id, volume_id)
    assert [b.status for b in world.bdms(server_id)] == ["detaching"]
    del world.cinder.fail["attachment_delete"]
    world.detach(server_id, volume_id)
    assert world.bdms(server_id) == [] and world.cinder.attachments == {}

    root = world.cinder.add_volume()
    world.attach(server_id, root)

    def make_root(session):
        session.query(BlockDeviceMapping).filter_by(volume_id=root).one().boot_index = 0
    world.db.run_sync(make_root)
    with pytest.raises(errors.Invalid, match="root device"):
        world.detach(server_id, root)


def test_deleting_a_server_detaches_its_volumes_and_deletes_those_asked_for(world):
    server_id = world.server()
    kept, doomed = world.cinder.add_volume(), world.cinder.add_volume()
    world.attach(server_id, kept)
    world.attach(server_id, doomed, delete_on_termination=True)
    asyncio.run(world.compute.delete(MEMBER, server_id))
    assert world.bdms(server_id) == [] and world.cinder.attachments == {}
    assert world.cinder.volumes[kept]["status"] == "available" and doomed not in world.cinder.volumes


# -- assisted snapshots: the top half ------------------------------------------------------------------

def test_assisted_requests_are_the_services_and_need_an_attached_volume(world):
    server_id, volume_id = world.server(), world.cinder.add_volume()
    snapshot_id = str(uuid.uuid4())
    body = {"snapshot": {"volume_id": volume_id, "create_info": {"snapshot_id": snapshot_id, "type": "qcow2",
                                                                 "new_file": f"volume-{volume_id}.{snapshot_id}"}}}
    with pytest.raises(errors.Forbidden):
        asyncio.run(world.compute.volumes.assisted_create(MEMBER, body))
    with pytest.raises(errors.Invalid, match="not attached"):
        asyncio.run(world.compute.volumes.assisted_create(SERVICE, body))
    world.attach(server_id, volume_id)
    answer = asyncio.run(world.compute.volumes.assisted_create(SERVICE, body))
    assert answer == {"snapshot": {"id": snapshot_id, "volumeId": volume_id}}
    asyncio.run(world.compute.volumes.assisted_create(SERVICE, body))      # asked again: the same work
    rows = world.db.run_sync(lambda s: [(w.kind, w.host, w.resource_id, json.loads(w.params))
                                        for w in s.query(Workflow)])
    assert len(rows) == 1
    kind, host, resource, params = rows[0]
    assert (kind, host, resource) == (ASSISTED_KIND, HOST, server_id)
    assert params["op"] == "create" and params["snapshot_id"] == snapshot_id and params["project_id"] == "project-a"
    assert params["info"]["new_file"] == f"volume-{volume_id}.{snapshot_id}" and params["actor"]["user_id"] == "bob"
    delete_info = json.dumps({"type": "qcow2", "file_to_merge": None, "merge_target_file": None,
                              "volume_id": volume_id})
    asyncio.run(world.compute.volumes.assisted_delete(SERVICE, snapshot_id, delete_info))
    assert world.db.run_sync(lambda s: s.query(Workflow).count()) == 2
    with pytest.raises(errors.Forbidden):
        asyncio.run(world.compute.volumes.assisted_delete(MEMBER, snapshot_id, delete_info))


@pytest.mark.parametrize("text", [None, "", "{", "[]", '{"type": "qcow2"}', '{"volume_id": "x"}',
                                  '{"volume_id": "%s", "file_to_merge": "../etc/passwd"}' % uuid.uuid4(),
                                  '{"volume_id": "%s", "type": "raw"}' % uuid.uuid4(),
                                  '{"volume_id": "%s", "surprise": 1}' % uuid.uuid4()])
def test_bad_delete_info_is_a_400(text):
    with pytest.raises(errors.Invalid):
        parse_delete_info(text)


@pytest.mark.parametrize("info", [None, {}, {"snapshot_id": "x", "type": "qcow2", "new_file": "f"},
                                  {"snapshot_id": str(uuid.uuid4()), "type": "raw", "new_file": "f"},
                                  {"snapshot_id": str(uuid.uuid4()), "type": "qcow2", "new_file": "a/b"},
                                  {"snapshot_id": str(uuid.uuid4()), "type": "qcow2", "new_file": "f", "x": 1}])
def test_bad_create_info_is_a_400(info):
    with pytest.raises(errors.Invalid):
        parse_create_info({"snapshot": {"volume_id": str(uuid.uuid4()), "create_info": info}})


# -- assisted snapshots: the workflow, run by a conductor --------------------------------------------------

class Alive:
    def __init__(self, member_id):
        self.member_id = member_id

    def is_alive(self, member_id):
        return True


@pytest.fixture
def conductor(world, tmp_path):
    leases = Leases(world.db, "c1", 60.0, world.registry.terminal_states)
    engine = Conductor(world.db, Alive("c1"), database_url=f"sqlite:///{tmp_path / 'tf.db'}",
                       registry=world.registry, leases=leases)
    with contextlib.closing(engine.backend.get_connection()) as conn:
        conn.upgrade()
    runtime.install(Runtime(db=world.db, image_client=None, workdir=tmp_path / "work", leases=leases,
                            local={"compute": ComputeHooks(world.hosts, Policy(None), world.cinder)}))

    def run(workflow_id: str) -> Workflow:
        claim, why = leases.acquire(workflow_id)
        assert claim is not None, why
        engine._run_guarded(claim)
        return world.db.run_sync(lambda s: s.get(Workflow, workflow_id))
    yield run
    runtime.install(None)


def attached_volume(world, **server):
    server_id, volume_id = world.server(**server), world.cinder.add_volume()
    world.attach(server_id, volume_id)
    return server_id, volume_id


def ask_create(world, volume_id):
    snapshot_id = str(uuid.uuid4())
    new_file = f"volume-{volume_id}.{snapshot_id}"
    (world.share / new_file).write_bytes(b"QFI\xfb")          # the volume driver made the overlay
    body = {"snapshot": {"volume_id": volume_id, "create_info": {"snapshot_id": snapshot_id, "type": "qcow2",
                                                                 "new_file": new_file}}}
    asyncio.run(world.compute.volumes.assisted_create(SERVICE, body))
    return snapshot_id, new_file, world.db.run_sync(lambda s: s.query(Workflow).order_by(Workflow.created_at.desc())
                                                    .first().id)


def history(world, workflow_id):
    return world.db.run_sync(lambda s: [(e.state, e.detail) for e in s.query(WorkflowEvent)
                                        .filter_by(workflow_id=workflow_id).order_by(WorkflowEvent.id)])


def test_create_moves_the_disk_to_the_new_file_and_reports_each_phase(world, conductor):
    server_id, volume_id = attached_volume(world, guest_agent=True)
    snapshot_id, new_file, workflow_id = ask_create(world, volume_id)
    wf = conductor(workflow_id)
    assert wf.state == "COMPLETE" and wf.progress == 100
    assert world.cinder.reports == [(snapshot_id, "creating", "0%", "running", None),
                                    (snapshot_id, "creating", "100%", "done", None)]
    disk = world.driver.disks[world.domain(server_id)][volume_id]
    assert disk.path == world.share / new_file and disk.format == "qcow2"
    data = json.loads(world.bdms(server_id)[0].connection_info)["data"]
    assert (data["name"], data["format"]) == (new_file, "qcow2")   # a stop/start opens the new file
    assert any("quiesced" in detail for _, detail in history(world, workflow_id))
    assert world.cinder.actors[-1].project_id == "project-a"


def test_delete_merges_and_reports_real_progress_every_ten_percent(world, conductor):
    server_id, volume_id = attached_volume(world)
    snapshot_id = str(uuid.uuid4())
    delete_info = {"type": "qcow2", "file_to_merge": f"volume-{volume_id}.{uuid.uuid4()}",
                   "merge_target_file": f"volume-{volume_id}", "volume_id": volume_id}
    asyncio.run(world.compute.volumes.assisted_delete(SERVICE, snapshot_id, json.dumps(delete_info)))
    workflow_id = world.db.run_sync(lambda s: s.query(Workflow).one().id)
    assert conductor(workflow_id).state == "COMPLETE"
    assert world.driver.merges == [(volume_id, delete_info["file_to_merge"], delete_info["merge_target_file"])]
    assert world.cinder.reports[0] == (snapshot_id, "deleting", "0%", "running", None)
    assert world.cinder.reports[-1] == (snapshot_id, "deleting", "100%", "done", None)
    middle = [r[2] for r in world.cinder.reports[1:-1]]
    assert middle == [f"{p}%" for p in range(10, 100, 10)]
    assert all(r[3] == "running" for r in world.cinder.reports[1:-1])


def test_a_failure_is_reported_with_its_reason_and_the_workflow_reverted(world, conductor):
    server_id, volume_id = attached_volume(world)
    world.driver.fail_on["volume_snapshot_create"] = DriverError("blockdev-snapshot refused")
    snapshot_id, new_file, workflow_id = ask_create(world, volume_id)
    wf = conductor(workflow_id)
    assert wf.state == "REVERTED" and "blockdev-snapshot refused" in wf.failure_reason
    (sid, status, progress, compute_status, error) = world.cinder.reports[-1]
    assert (sid, status, compute_status) == (snapshot_id, "error", "error")
    assert "blockdev-snapshot refused" in error
    assert world.driver.disks[world.domain(server_id)][volume_id].path == world.share / f"volume-{volume_id}"
    assert json.loads(world.bdms(server_id)[0].connection_info)["data"]["name"] == f"volume-{volume_id}"


def test_a_failed_delete_is_reported_error_deleting(world, conductor):
    server_id, volume_id = attached_volume(world)
    world.driver.fail_on["volume_snapshot_delete"] = DriverError("blockCommit failed")
    snapshot_id = str(uuid.uuid4())
    info = json.dumps({"type": "qcow2", "file_to_merge": None, "merge_target_file": None, "volume_id": volume_id})
    asyncio.run(world.compute.volumes.assisted_delete(SERVICE, snapshot_id, info))
    wf = conductor(world.db.run_sync(lambda s: s.query(Workflow).one().id))
    assert wf.state == "REVERTED"
    assert world.cinder.reports[-1][1:4] == ("error_deleting", None, "error")


def test_when_the_volume_side_gave_up_the_disk_is_not_touched(world, conductor):
    server_id, volume_id = attached_volume(world)
    world.cinder.fail["update_snapshot_status"] = CinderError("compute_snapshot_status is error", status=409)
    snapshot_id, new_file, workflow_id = ask_create(world, volume_id)
    wf = conductor(workflow_id)
    assert wf.state == "COMPLETE" and "nothing done" in history(world, workflow_id)[-1][1]
    assert world.driver.disks[world.domain(server_id)][volume_id].path == world.share / f"volume-{volume_id}"


def test_an_unreachable_volume_service_is_waited_for_then_the_work_goes_on(world, conductor):
    server_id, volume_id = attached_volume(world)
    world.cinder.fail["update_snapshot_status"] = Unreachable("connection refused")
    snapshot_id, new_file, workflow_id = ask_create(world, volume_id)
    wf = conductor(workflow_id)
    assert wf.state == "RUNNING" and wf.owner is None          # waiting: nothing held, nothing done
    assert world.driver.disks[world.domain(server_id)][volume_id].path == world.share / f"volume-{volume_id}"
    del world.cinder.fail["update_snapshot_status"]
    wf = conductor(workflow_id)
    assert wf.state == "COMPLETE"
    assert world.driver.disks[world.domain(server_id)][volume_id].path == world.share / new_file
    assert world.cinder.reports[-1][3] == "done"


def test_done_that_cannot_be_reported_is_retried_and_the_disk_work_not_redone(world, conductor):
    server_id, volume_id = attached_volume(world)
    snapshot_id, new_file, workflow_id = ask_create(world, volume_id)
    original = world.cinder.update_snapshot_status

    def refuse_done(sid, status, progress, compute_status, error=None):
        if compute_status == "done" and refuse_done.times:
            refuse_done.times -= 1
            raise CinderError("gateway timeout", status=504)
        return original(sid, status, progress, compute_status, error)
    refuse_done.times = 1
    world.cinder.update_snapshot_status = refuse_done
    assert conductor(workflow_id).state == "RUNNING"           # waits: the report comes later
    assert world.driver.disks[world.domain(server_id)][volume_id].path == world.share / new_file
    assert conductor(workflow_id).state == "COMPLETE"           # resumed: the disk op is a no-op now
    assert [r[3] for r in world.cinder.reports] == ["running", "running", "done"]


def test_a_create_that_fails_after_the_disk_moved_is_reported_done_never_error(world, conductor):
    server_id, volume_id = attached_volume(world)
    world.driver.move_then_fail = DriverError("thaw failed")
    snapshot_id, new_file, workflow_id = ask_create(world, volume_id)
    assert conductor(workflow_id).state == "COMPLETE"
    assert world.cinder.reports[-1] == (snapshot_id, "creating", "100%", "done", None)
    assert json.loads(world.bdms(server_id)[0].connection_info)["data"]["name"] == new_file


def test_quiesce_follows_the_guest_agent_and_os_require_quiesce(world, conductor):
    seen = []
    original = world.driver.volume_snapshot_create

    def spy(name, volume_id, new_file, *, quiesce, require_quiesce, max_frozen=1.0):
        seen.append((quiesce, require_quiesce))
        return original(name, volume_id, new_file, quiesce=quiesce, require_quiesce=require_quiesce)
    world.driver.volume_snapshot_create = spy
    for server in ({}, {"guest_agent": True},
                   {"system_metadata": {"image_hw_qemu_guest_agent": "yes", "image_os_require_quiesce": "yes"}}):
        _, volume_id = attached_volume(world, **server)
        assert conductor(ask_create(world, volume_id)[2]).state == "COMPLETE"
    assert seen == [(False, False), (True, False), (True, True)]


def test_a_volume_detached_meanwhile_is_an_error_report(world, conductor):
    server_id, volume_id = attached_volume(world)
    snapshot_id, new_file, workflow_id = ask_create(world, volume_id)
    world.db.run_sync(lambda s: s.query(BlockDeviceMapping).filter_by(volume_id=volume_id).delete())
    assert conductor(workflow_id).state == "REVERTED"
    assert world.cinder.reports == [(snapshot_id, "error", None, "error", world.cinder.reports[0][4])]
    assert "not attached" in world.cinder.reports[0][4]
