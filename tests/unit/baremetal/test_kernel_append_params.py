"""driver_info ``kernel_append_params`` (Ironic's): more kernel parameters for the agent's boot,
added to the ones the agent snapshot interface passes (the whole-flow test uses it for
ipa-advertise-host/port behind QEMU's NAT)."""

import pytest

from freezeframe.baremetal.drivers.base import DriverError, NodeInfo
from freezeframe.baremetal.drivers.fake import FakeBoot, FakePower
from freezeframe.baremetal.drivers.snapshot import AgentSnapshot, Hardware


def node(**driver_info) -> NodeInfo:
    return NodeInfo(id="6b0f5c3e-0000-4000-8000-000000000001", name="n", driver="fake-hardware",
                    driver_info=driver_info)


def test_the_params_reach_the_boot_interface_beside_the_agents_own():
    boot = FakeBoot()
    n = node(kernel_append_params="ipa-advertise-host=127.0.0.1  ipa-advertise-port=9990 nomodeset "
                                  "ipa-node-uuid=someone-else")
    AgentSnapshot().prepare(n, Hardware(FakePower(), boot), api_url="http://10.0.2.2:9393/baremetal")
    assert boot.prepared(n.id) == {"ipa-advertise-host": "127.0.0.1", "ipa-advertise-port": "9990",
                                   "nomodeset": "", "ipa-api-url": "http://10.0.2.2:9393/baremetal",
                                   "ipa-node-uuid": n.id}     # the node's own uuid wins


def test_without_them_only_the_agents_params():
    boot = FakeBoot()
    n = node()
    AgentSnapshot().prepare(n, Hardware(FakePower(), boot), api_url="http://h/baremetal")
    assert boot.prepared(n.id) == {"ipa-api-url": "http://h/baremetal", "ipa-node-uuid": n.id}


@pytest.mark.parametrize("value", [["ipa-x=1"], "ipa-x='a b'", "bad\\key=1"])
def test_bad_params_are_refused_at_validate(value):
    with pytest.raises(DriverError):
        AgentSnapshot().validate(node(kernel_append_params=value))
