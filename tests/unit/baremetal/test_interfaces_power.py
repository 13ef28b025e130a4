"""The conformance suite every power interface passes: ``fake`` (always) and ``redfish`` against
the sushy-tools emulator driving a real libvirt domain (tests/sushy.py; skipped with the reason
where libvirt or the emulator cannot run). What the hardware really did is read beside the
interface: the fake's own record, or the domain's state and id through libvirt (a new id = QEMU
really restarted)."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from typing import Callable

import pytest

from freezeframe.baremetal.drivers.base import DriverError, NodeInfo, PowerInterface
from freezeframe.baremetal.drivers.fake import FakePower

ON, OFF = "power on", "power off"


@dataclass
class PowerKit:
    power: PowerInterface
    node: NodeInfo
    truth: Callable[[], str]                 # the hardware's state, not asked through the interface
    boot_mark: Callable[[], object]          # changes whenever the hardware (re)starts
    fresh: Callable[[], PowerInterface]      # a new instance (another process, after a restart)


def make_fake() -> PowerKit:
    power = FakePower()
    node = NodeInfo(id=str(uuid.uuid4()), name="fake-node", driver="fake-hardware")
    return PowerKit(power=power, node=node, truth=lambda: power.get_power_state(node),
                    boot_mark=lambda: power.boots(node.id), fresh=FakePower)


def make_redfish() -> PowerKit:
    from freezeframe.baremetal.drivers.redfish import RedfishPower
    from tests import sushy
    lab = sushy.shared_lab()
    sushy.reset(lab)
    node = NodeInfo(id=str(uuid.uuid4()), name="redfish-node", driver="redfish", driver_info=lab.driver_info())
    return PowerKit(power=RedfishPower(timeout=30), node=node,
                    truth=lambda: ON if lab.is_active() else OFF,
                    boot_mark=lambda: lab.domain_id() if lab.is_active() else None,
                    fresh=lambda: RedfishPower(timeout=30))


@pytest.fixture(params=["fake", pytest.param("redfish", marks=pytest.mark.libvirt)])
def kit(request) -> PowerKit:
    return {"fake": make_fake, "redfish": make_redfish}[request.param]()


def test_validate_accepts_the_node(kit):
    kit.power.validate(kit.node)


def test_power_on_and_off_change_the_hardware(kit):
    kit.power.set_power_state(kit.node, OFF)
    assert kit.truth() == OFF
    assert kit.power.get_power_state(kit.node) == OFF

    kit.power.set_power_state(kit.node, ON)
    assert kit.truth() == ON
    assert kit.power.get_power_state(kit.node) == ON

    kit.power.set_power_state(kit.node, OFF)
    assert kit.truth() == OFF
    assert kit.power.get_power_state(kit.node) == OFF


def test_the_state_it_is_in_sends_nothing(kit):
    kit.power.set_power_state(kit.node, ON)
    mark = kit.boot_mark()
    kit.power.set_power_state(kit.node, ON)           # no restart
    assert kit.boot_mark() == mark
    assert kit.truth() == ON
    kit.power.set_power_state(kit.node, OFF)
    kit.power.set_power_state(kit.node, OFF)
    assert kit.truth() == OFF


def test_reboot_restarts_a_running_node(kit):
    kit.power.set_power_state(kit.node, ON)
    before = kit.boot_mark()
    kit.power.reboot(kit.node)
    assert kit.truth() == ON
    assert kit.boot_mark() != before


def test_rebooting_target_is_a_reboot(kit):
    kit.power.set_power_state(kit.node, ON)
    before = kit.boot_mark()
    kit.power.set_power_state(kit.node, "rebooting")
    assert kit.truth() == ON
    assert kit.boot_mark() != before


def test_reboot_of_a_node_that_is_off_powers_it_on(kit):
    kit.power.set_power_state(kit.node, OFF)
    kit.power.reboot(kit.node, timeout=30)
    assert kit.truth() == ON
    assert kit.power.get_power_state(kit.node) == ON


@pytest.mark.parametrize("bad", ["on", "power cycle", "soft power off", ""])
def test_an_unknown_target_is_refused_and_nothing_changes(kit, bad):
    kit.power.set_power_state(kit.node, OFF)
    with pytest.raises(DriverError, match="Invalid power state"):
        kit.power.set_power_state(kit.node, bad)
    assert kit.truth() == OFF


def test_another_instance_reads_the_recorded_state(kit):
    """After a conductor restart (a new instance), the state is still known: the hardware's for
    a real interface, the conductor's recorded node.power_state for the fake."""
    kit.power.set_power_state(kit.node, ON)
    recorded = dataclasses.replace(kit.node, power_state=ON)
    assert kit.fresh().get_power_state(recorded) == ON
    kit.power.set_power_state(kit.node, OFF)
    recorded = dataclasses.replace(kit.node, power_state=OFF)
    assert kit.fresh().get_power_state(recorded) == OFF


def test_fake_power_error_knob():
    power = FakePower()
    node = NodeInfo(id="n", name=None, driver="fake-hardware", driver_info={"fake_power_error": "BMC on fire"})
    power.validate(node)
    with pytest.raises(DriverError, match="BMC on fire"):
        power.set_power_state(node, ON)
    with pytest.raises(DriverError, match="BMC on fire"):
        power.get_power_state(node)
