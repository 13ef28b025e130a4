"""compute/states.py: Nova's vm_state and task_state words and moves on the one mechanism
(SQLite and PostgreSQL)."""

import pytest

from freezeframe.common import errors
from freezeframe.common.statemachine import LostRace
from freezeframe.compute.model import Instance
from freezeframe.compute.states import (COUNTS, TASK_STATE, TASK_TRANSITIONS, VM_STATE, VM_TRANSITIONS, TaskState,
                                        VmState, set_task_state, set_vm_state)

T, V = TaskState, VmState

# nova/compute/vm_states.py (the words; Freezeframe uses these, not rescued/resized/shelved/soft-delete)
NOVA_VM_STATES = {"ACTIVE": "active", "BUILDING": "building", "PAUSED": "paused", "SUSPENDED": "suspended",
                  "STOPPED": "stopped", "RESCUED": "rescued", "RESIZED": "resized", "SOFT_DELETED": "soft-delete",
                  "DELETED": "deleted", "ERROR": "error", "SHELVED": "shelved",
                  "SHELVED_OFFLOADED": "shelved_offloaded"}
# nova/compute/task_states.py (the ones a Freezeframe server goes through)
NOVA_TASK_STATES = {"SPAWNING": "spawning", "IMAGE_SNAPSHOT": "image_snapshot",
                    "IMAGE_SNAPSHOT_PENDING": "image_snapshot_pending", "IMAGE_PENDING_UPLOAD": "image_pending_upload",
                    "IMAGE_UPLOADING": "image_uploading", "IMAGE_BACKUP": "image_backup",
                    "POWERING_OFF": "powering-off", "POWERING_ON": "powering-on", "DELETING": "deleting"}
# Nova's doc/source/reference/vm-states.rst, "Allowed State Transitions", between our states;
# its caption: "All states are allowed to transition to DELETED and ERROR."
NOVA_DIAGRAM = {("building", "active"), ("active", "active"), ("active", "suspended"), ("active", "paused"),
                ("active", "stopped"), ("suspended", "active"), ("paused", "active"), ("stopped", "active"),
                ("stopped", "stopped")}
# and the moves Nova's compute manager makes besides: hard reboot and os-resetState of an error
# server (ALLOW_HARD_REBOOT has ERROR), stop from error (compute API stop: ACTIVE, STOPPED, ERROR),
# _sync_instance_power_state: "Paused instance shutdown by itself. Calling the stop API."
NOVA_MANAGER = {("error", "active"), ("error", "stopped"), ("paused", "stopped")}


def test_vm_states_are_novas_words():
    assert {s.name: str(s) for s in VmState}.items() <= NOVA_VM_STATES.items()
    assert {s.name: str(s) for s in TaskState}.items() <= NOVA_TASK_STATES.items()
    assert set(NOVA_TASK_STATES) == {s.name for s in TaskState}


def test_vm_state_table_is_novas():
    live = {str(v) for v in VmState} - {"deleted"}
    expected = NOVA_DIAGRAM | NOVA_MANAGER | {(v, "error") for v in live} | {(v, "deleted") for v in live}
    assert {(str(f), str(t)) for f, t in VM_TRANSITIONS} == expected
    assert VM_STATE.terminal == {V.DELETED}
    assert not any(f == V.DELETED for f, _ in VM_TRANSITIONS)      # nothing leaves deleted
    assert not any(t == V.BUILDING for _, t in VM_TRANSITIONS)     # building is only where a server starts


def test_task_state_table_walks_novas_snapshot_and_backup_sequences():
    # Nova: snapshot image_snapshot_pending -> image_snapshot -> image_pending_upload -> image_uploading -> None;
    # backup image_backup -> image_pending_upload -> image_uploading -> None.
    for walk in ([None, "image_snapshot_pending", "image_snapshot", "image_pending_upload", "image_uploading", None],
                 [None, "image_backup", "image_pending_upload", "image_uploading", None],
                 [None, "spawning", None], [None, "powering-on", None], [None, "powering-off", None],
                 [None, "deleting", None]):
        for frm, to in zip(walk, walk[1:]):
            assert TASK_STATE.allowed(frm, to), (frm, to)
    assert all((t, None) in TASK_TRANSITIONS for t in TaskState)      # every task ends, or is reverted, at None
    resumed = {(t, t) for t in (T.IMAGE_SNAPSHOT, T.IMAGE_BACKUP, T.IMAGE_PENDING_UPLOAD, T.IMAGE_UPLOADING,
                                T.SPAWNING)}
    assert {(f, t) for f, t in TASK_TRANSITIONS if f == t} == resumed  # a resumed workflow repeats its step
    assert not TASK_STATE.allowed("image_uploading", "image_snapshot")
    assert not TASK_STATE.allowed("image_snapshot_pending", "image_backup")
    assert not TASK_STATE.allowed(None, "image_uploading")
    assert not TASK_STATE.allowed(None, None)


def add(db, server_id, vm_state="active", task_state=None):
    db.run_sync(lambda s: s.add(Instance(id=server_id, name=server_id, project_id="p", user_id="u",
                                         vm_state=vm_state, task_state=task_state, flavor_id="1", vcpus=1,
                                         memory_mb=64, root_gb=1, domain_name=f"instance-{server_id}")))


def get(db, server_id):
    inst = db.run_sync(lambda s: s.get(Instance, server_id))
    return inst.vm_state, inst.task_state, inst.fault


def test_task_state_compare_and_set(db):
    add(db, "s1")
    before = db.run_sync(lambda s: s.get(Instance, "s1").updated_at)
    counted = COUNTS["None->image_snapshot_pending"]
    db.run_sync(lambda s: set_task_state(s, "s1", None, T.IMAGE_SNAPSHOT_PENDING, reason="createImage"))
    assert get(db, "s1") == ("active", "image_snapshot_pending", None)
    assert db.run_sync(lambda s: s.get(Instance, "s1").updated_at) >= before
    assert COUNTS["None->image_snapshot_pending"] == counted + 1
    # a second createImage (or createBackup) loses: Nova's 409
    with pytest.raises(LostRace, match="Server s1 is image_snapshot_pending now, not None") as err:
        db.run_sync(lambda s: set_task_state(s, "s1", None, T.IMAGE_BACKUP, reason="createBackup"))
    assert isinstance(err.value, errors.Conflict)
    with pytest.raises(errors.InvalidState, match="Server task_state transition from image_snapshot_pending to "
                                                  "image_uploading is not allowed"):
        db.run_sync(lambda s: set_task_state(s, "s1", T.IMAGE_SNAPSHOT_PENDING, T.IMAGE_UPLOADING, reason="x"))
    db.run_sync(lambda s: set_task_state(s, "s1", T.IMAGE_SNAPSHOT_PENDING, None, reason="reverted",
                                         values={"fault": "upload failed"}))
    assert get(db, "s1") == ("active", None, "upload failed")      # vm_state as before: never ERROR
    with pytest.raises(errors.NotFound, match="Instance nope could not be found."):
        db.run_sync(lambda s: set_task_state(s, "nope", None, T.DELETING, reason="x"))


def test_vm_state_moves_with_its_task_in_one_transaction(db):
    add(db, "s2", "building", "spawning")
    db.run_sync(lambda s: set_task_state(s, "s2", T.SPAWNING, None, reason="spawned", vm_state=V.ACTIVE,
                                         vm_from=V.BUILDING))
    assert get(db, "s2")[:2] == ("active", None)
    assert VM_STATE.counts["building->active"] >= 1
    # a vm move the table refuses rolls the task move back with it
    db.run_sync(lambda s: set_task_state(s, "s2", None, T.DELETING, reason="delete"))
    db.run_sync(lambda s: set_task_state(s, "s2", T.DELETING, None, reason="deleted", vm_state=V.DELETED))
    assert get(db, "s2")[:2] == ("deleted", None)
    with pytest.raises(errors.InvalidState, match=r"Server vm_state transition from deleted to active is not "
                                                  r"allowed \(deleted is final\)"):
        db.run_sync(lambda s: set_vm_state(s, "s2", V.ACTIVE, reason="reset"))
    add(db, "s3", "stopped", "powering-on")
    with pytest.raises(errors.InvalidState, match="from stopped only to"):
        db.run_sync(lambda s: set_task_state(s, "s3", T.POWERING_ON, None, reason="x", vm_state=V.PAUSED))
    assert get(db, "s3")[:2] == ("stopped", "powering-on")


def test_vm_state_compare_and_set(db):
    add(db, "s4", "active")
    assert db.run_sync(lambda s: set_vm_state(s, "s4", V.ACTIVE, reason="no move")) is False
    assert db.run_sync(lambda s: set_vm_state(s, "s4", V.STOPPED, frm=V.ACTIVE, reason="stop")) is True
    with pytest.raises(LostRace, match="Server s4 is stopped now, not active"):
        db.run_sync(lambda s: set_vm_state(s, "s4", V.PAUSED, frm=V.ACTIVE, reason="pause"))
    for to in (V.ERROR, V.ACTIVE):        # os-resetState: stopped -> error -> active
        assert db.run_sync(lambda s: set_vm_state(s, "s4", to, reason="os-resetState")) is True
    assert get(db, "s4")[0] == "active"
    with pytest.raises(errors.NotFound):
        db.run_sync(lambda s: set_vm_state(s, "nope", V.ERROR, reason="x"))
