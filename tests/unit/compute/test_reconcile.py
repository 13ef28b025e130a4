"""compute/reconcile.py: which servers in a transitional task_state are orphans, and what they
become (SQLite and PostgreSQL, the fake driver)."""

import datetime as dt

import pytest

from freezeframe.common.timeutil import utcnow
from freezeframe.compute.drivers.base import DriverError, GuestSpec
from freezeframe.compute.drivers.fake import FakeDriver
from freezeframe.compute.model import Instance
from freezeframe.compute.reconcile import reconcile_servers
from freezeframe.conductor.model import Workflow

NOW = utcnow()
LONG_AGO = NOW - dt.timedelta(hours=2)


@pytest.fixture
def driver(tmp_path):
    return FakeDriver()


def add(db, driver, tmp_path, name, task_state, *, vm_state="active", updated_at=None, domain=True, running=True,
        workflow_state=None):
    updated_at = updated_at or utcnow()      # "now" when the row is made, not when the module was imported
    disk = tmp_path / f"{name}.raw"
    disk.write_bytes(b"\0" * 4096)
    if domain:
        driver.spawn(GuestSpec(name=f"instance-{name}", uuid=name, vcpus=1, memory_mb=64, root_disk=disk))
        if not running:
            driver.power_off(f"instance-{name}")

    def insert(session):
        session.add(Instance(id=name, name=name, project_id="p", user_id="u", vm_state=vm_state,
                             task_state=task_state, flavor_id="1", vcpus=1, memory_mb=64, root_gb=1,
                             domain_name=f"instance-{name}", root_disk=str(disk), created_at=updated_at,
                             updated_at=updated_at))
        if workflow_state:
            session.add(Workflow(id=f"wf-{name}", kind="snapshot", state=workflow_state, resource_id=name,
                                 project_id="p", params="{}"))
    db.run_sync(insert)


def server(db, name):
    inst = db.run_sync(lambda s: s.get(Instance, name))
    return inst.vm_state, inst.task_state, inst.fault


def test_snapshot_task_states_belong_to_unfinished_workflows(db, driver, tmp_path):
    add(db, driver, tmp_path, "no-workflow", "image_uploading", updated_at=LONG_AGO)
    add(db, driver, tmp_path, "ended", "image_pending_upload", workflow_state="REVERTED")   # outlived it
    add(db, driver, tmp_path, "running", "image_uploading", workflow_state="UPLOAD_40_COMPLETE")
    add(db, driver, tmp_path, "reverting", "image_snapshot", workflow_state="FAILED")
    add(db, driver, tmp_path, "pending", "image_snapshot_pending", workflow_state="PENDING")
    add(db, driver, tmp_path, "stopped", "image_backup", running=False, updated_at=LONG_AGO)
    # a createImage being accepted: task_state set, its workflow recorded a moment later
    add(db, driver, tmp_path, "accepting", "image_snapshot_pending")
    repaired = reconcile_servers(db, driver, task_timeout=3600)
    assert sorted(r.server_id for r in repaired) == ["ended", "no-workflow", "stopped"]
    assert server(db, "no-workflow") == ("active", None, None)
    assert server(db, "ended") == ("active", None, None)
    assert server(db, "stopped") == ("stopped", None, None)      # vm_state from the hypervisor
    for name, task in (("running", "image_uploading"), ("reverting", "image_snapshot"),
                       ("pending", "image_snapshot_pending"), ("accepting", "image_snapshot_pending")):
        assert server(db, name)[1] == task
    assert reconcile_servers(db, driver, task_timeout=3600) == []
    # ... unless the process that was accepting it is gone (serve restarted)
    later = utcnow() + dt.timedelta(seconds=1)
    assert [r.server_id for r in reconcile_servers(db, driver, api_started_at=later)] == ["accepting"]


def test_operations_of_a_gone_process_or_stuck_too_long(db, driver, tmp_path):
    started = NOW - dt.timedelta(minutes=1)
    add(db, driver, tmp_path, "earlier-run", "spawning", vm_state="building", updated_at=started - dt.timedelta(seconds=5))
    add(db, driver, tmp_path, "this-run", "spawning", vm_state="building", updated_at=NOW)
    add(db, driver, tmp_path, "never-spawned", "spawning", vm_state="building", updated_at=LONG_AGO, domain=False)
    add(db, driver, tmp_path, "half-deleted", "deleting", updated_at=LONG_AGO, domain=False)
    add(db, driver, tmp_path, "stopping", "powering-off", updated_at=LONG_AGO, running=False)
    # Without the start of an API in this process, only task_timeout counts.
    repaired = reconcile_servers(db, driver, task_timeout=3600)
    assert sorted(r.server_id for r in repaired) == ["half-deleted", "never-spawned", "stopping"]
    assert server(db, "stopping") == ("stopped", None, None)
    vm_state, task, fault = server(db, "never-spawned")
    assert (vm_state, task) == ("error", None) and "no domain instance-never-spawned" in fault
    vm_state, task, fault = server(db, "half-deleted")
    assert (vm_state, task) == ("error", None) and "delete the server again" in fault
    assert server(db, "earlier-run")[1] == "spawning"
    # serve: what began before this process's API started was run by a process that is gone.
    repaired = reconcile_servers(db, driver, task_timeout=3600, api_started_at=started)
    assert [r.server_id for r in repaired] == ["earlier-run"]
    assert server(db, "earlier-run") == ("active", None, None)
    assert server(db, "this-run")[1] == "spawning"


def test_a_hypervisor_that_does_not_answer_leaves_it_for_the_next_pass(db, driver, tmp_path):
    add(db, driver, tmp_path, "orphan", "image_uploading", updated_at=LONG_AGO)
    driver.fail_on["get_info"] = DriverError("libvirt is down")
    assert reconcile_servers(db, driver) == []
    assert server(db, "orphan")[1] == "image_uploading"
    del driver.fail_on["get_info"]
    assert [r.server_id for r in reconcile_servers(db, driver)] == ["orphan"]


def test_vm_state_moves_only_as_its_table_allows(db, driver, tmp_path):
    """What the hypervisor says becomes vm_state through the vm_state table: a move Nova makes
    (paused -> stopped), else vm_state stays (Nova's power-state sync) — a build cut short is ERROR."""
    from freezeframe.compute.drivers.base import PowerState
    add(db, driver, tmp_path, "paused-now-off", "image_uploading", vm_state="paused", updated_at=LONG_AGO,
        running=False)
    add(db, driver, tmp_path, "stopped-now-paused", "image_uploading", vm_state="stopped", updated_at=LONG_AGO)
    driver._domain("instance-stopped-now-paused").state = PowerState.PAUSED
    add(db, driver, tmp_path, "half-built", "spawning", vm_state="building", updated_at=LONG_AGO, running=False)
    repaired = {r.server_id: r.vm_state for r in reconcile_servers(db, driver, task_timeout=3600)}
    assert repaired == {"paused-now-off": "stopped", "stopped-now-paused": "stopped", "half-built": "error"}
    assert server(db, "paused-now-off") == ("stopped", None, None)
    assert server(db, "stopped-now-paused") == ("stopped", None, None)
    assert db.run_sync(lambda s: s.get(Instance, "stopped-now-paused").power_state) == "paused"
    vm_state, task, fault = server(db, "half-built")
    assert (vm_state, task) == ("error", None) and "reports domain instance-half-built shutdown" in fault
