"""Compute hosts: the registry and its heartbeat (up / down by the database's clock), the
per-server lock of host-bound operations, and the host API's checks on names."""

import datetime as dt
import threading

import pytest

from freezeframe.common import errors
from freezeframe.compute import hostwire
from freezeframe.compute.drivers.fake import FakeDriver
from freezeframe.compute.drivers.locked import HostBusy, LockedDriver
from freezeframe.compute.hostclient import HostUnavailable
from freezeframe.compute.hosts import ComputeHost, HostDown, HostRegistry
from freezeframe.compute.hostside import Hosts


def test_a_host_is_up_while_it_heartbeats_then_down(db):
    registry = HostRegistry(db, down_after=30)
    registry.heartbeat("hv-1", "http://10.0.0.2:9393", "libvirt", starting=True)
    view = registry.require_up("hv-1")
    assert view.up and view.url == "http://10.0.0.2:9393"

    def age(session):       # its last heartbeat, a minute ago
        row = session.get(ComputeHost, "hv-1")
        row.heartbeat_at = row.heartbeat_at - dt.timedelta(seconds=60)
    db.run_sync(age)
    assert not registry.get("hv-1").up
    with pytest.raises(errors.Conflict, match="hv-1.*is down"):
        registry.require_up("hv-1")
    registry.heartbeat("hv-1", "http://10.0.0.2:9393", "libvirt")
    assert registry.require_up("hv-1").up


def test_an_unknown_host_is_a_conflict_that_says_what_to_start(db):
    with pytest.raises(errors.Conflict, match="freezeframe compute --host hv-9"):
        HostRegistry(db).require_up("hv-9")


def test_hosts_route_to_the_local_host_or_refuse_a_down_one(db):
    class Local:
        name, driver = "here", object()
    registry = HostRegistry(db, down_after=30)
    hosts = Hosts(Local(), registry, connect=lambda view: ("remote", view.name))
    assert hosts.get("here") is hosts.local and hosts.get(None) is hosts.local
    with pytest.raises(HostDown, match="'there' is not a registered compute host"):
        hosts.get("there")
    registry.heartbeat("there", "http://192.0.2.1:1", "fake")
    assert hosts.get("there") == ("remote", "there")
    assert hosts.get("there") is hosts.get("there")       # one client per host


def test_one_host_bound_operation_per_server_the_next_waits_then_409():
    inner = FakeDriver()
    release = threading.Event()
    entered = threading.Event()
    original = inner.power_off

    def slow_power_off(name, timeout=30.0):
        entered.set()
        release.wait(10)
        return original(name, timeout)
    inner.power_off = slow_power_off
    driver = LockedDriver(inner, timeout=0.2)
    inner.host.domains.clear()
    worker = threading.Thread(target=lambda: _ignore(driver.power_off, "vm-a"))
    worker.start()
    assert entered.wait(5)
    with pytest.raises(HostBusy, match=r"vm-a is busy: power off .*waited 0.2s") as caught:
        driver.power_on("vm-a")
    assert isinstance(caught.value, errors.Conflict)      # 409 in an API
    # another server's operations do not wait
    with pytest.raises(Exception) as other:
        driver.power_on("vm-b")
    assert not isinstance(other.value, HostBusy)
    release.set()
    worker.join(5)
    with pytest.raises(Exception) as after:       # free again: the fake says there is no such domain
        driver.power_on("vm-a")
    assert not isinstance(after.value, HostBusy)


def _ignore(fn, *args):
    try:
        fn(*args)
    except Exception:
        pass


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", "x" * 300, "-x", "a b", None, 3, "vm\x00"])
def test_domain_names_are_checked_before_any_use(bad):
    with pytest.raises(errors.Invalid):
        hostwire.domain_name(bad)


@pytest.mark.parametrize("bad", ["", "../../x", "1234", None])
def test_snapshot_ids_must_be_uuids(bad):
    with pytest.raises(errors.Invalid):
        hostwire.snapshot_id(bad)


@pytest.mark.parametrize("trouble", [HostBusy("vm-a is busy: power off ..."), HostDown("host 'hb' is down"),
                                     HostUnavailable("compute host at http://hb is unreachable")])
def test_a_workflow_step_pauses_when_its_host_cannot_take_it_now(trouble):
    """A busy server, a host down, a compute process away: the step pauses (HostAway, an
    Interrupted: taskflow reverts nothing) instead of failing the snapshot."""
    from freezeframe.compute.workflows.snapshot import _OnHost
    from freezeframe.conductor.interrupts import HostAway, Interrupted

    class Driver:
        def end_snapshot(self, *args):
            raise trouble
    with pytest.raises(HostAway) as caught:
        _OnHost(Driver()).end_snapshot("vm-a", "id", "/tmp/x")
    assert isinstance(caught.value, Interrupted) and not isinstance(caught.value, Exception)


def test_other_driver_errors_still_fail_the_step():
    from freezeframe.compute.drivers.base import DriverError
    from freezeframe.compute.workflows.snapshot import _OnHost

    class Driver:
        def begin_snapshot(self, *args):
            raise DriverError("backup job failed")
    with pytest.raises(DriverError):
        _OnHost(Driver()).begin_snapshot("vm-a")
