"""The registry of hardware types and interfaces: enabled by settings, defaults, the checks the
API runs on a node's driver and *_interface fields, and one instance per interface name."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from freezeframe.baremetal import drivers
from freezeframe.baremetal.drivers import HARDWARE_TYPES, DriverError, Interfaces
from freezeframe.baremetal.drivers.fake import FakeBoot, FakePower


def settings(**over):
    base = dict(enabled_hardware_types="fake-hardware,redfish", enabled_power_interfaces="fake,redfish",
                enabled_boot_interfaces="fake,redfish-virtual-media",
                enabled_snapshot_interfaces="fake,no-snapshot,agent", transfer_path="", webdav_bind="127.0.0.1:6387",
                webdav_url="", agent_iso="", agent_iso_url="", power_timeout=60.0)
    return SimpleNamespace(**{**base, **over})


def test_the_hardware_types_as_the_contract_says():
    assert HARDWARE_TYPES["fake-hardware"].power == ("fake",)
    assert HARDWARE_TYPES["fake-hardware"].snapshot == ("fake", "no-snapshot", "agent")
    assert HARDWARE_TYPES["redfish"].boot == ("redfish-virtual-media",)
    assert HARDWARE_TYPES["redfish"].snapshot == ("agent", "no-snapshot")


def test_defaults_are_the_first_supported_and_enabled():
    ifs = Interfaces(settings())
    assert ifs.defaults("fake-hardware") == {"power_interface": "fake", "boot_interface": "fake",
                                             "snapshot_interface": "fake"}
    assert ifs.defaults("redfish") == {"power_interface": "redfish", "boot_interface": "redfish-virtual-media",
                                       "snapshot_interface": "agent"}
    ifs = Interfaces(settings(enabled_snapshot_interfaces="no-snapshot,agent"))
    assert ifs.defaults("fake-hardware")["snapshot_interface"] == "no-snapshot"


def test_check_fills_defaults_and_keeps_choices():
    ifs = Interfaces(settings())
    assert ifs.check("fake-hardware", {"snapshot_interface": "agent", "power_interface": None}) == {
        "power_interface": "fake", "boot_interface": "fake", "snapshot_interface": "agent"}
    assert ifs.check("redfish") == ifs.defaults("redfish")


def test_unknown_or_disabled_driver():
    ifs = Interfaces(settings(enabled_hardware_types="fake-hardware"))
    for driver in ("redfish", "ipmi"):
        with pytest.raises(DriverError) as err:
            ifs.check(driver, {})
        assert err.value.message == (f"Hardware type '{driver}' is not supported or not enabled: enabled "
                                     f"hardware types are fake-hardware.")


def test_interface_not_supported_by_the_driver_names_both_lists():
    ifs = Interfaces(settings())
    with pytest.raises(DriverError) as err:
        ifs.check("fake-hardware", {"power_interface": "redfish"})
    assert err.value.message == ("power_interface 'redfish' is not supported by hardware type 'fake-hardware': "
                                 "hardware type 'fake-hardware' supports fake; enabled power interfaces are "
                                 "fake, redfish.")
    with pytest.raises(DriverError, match="snapshot_interface 'fake' is not supported by hardware type 'redfish'"):
        ifs.check("redfish", {"snapshot_interface": "fake"})
    with pytest.raises(DriverError, match="boot_interface 'pxe' is not supported"):
        ifs.check("redfish", {"boot_interface": "pxe"})


def test_interface_supported_but_not_enabled():
    ifs = Interfaces(settings(enabled_snapshot_interfaces="fake,no-snapshot"))
    with pytest.raises(DriverError) as err:
        ifs.check("redfish", {"snapshot_interface": "agent"})
    assert err.value.message == ("snapshot_interface 'agent' is not enabled: hardware type 'redfish' supports "
                                 "agent, no-snapshot; enabled snapshot interfaces are fake, no-snapshot.")


def test_unknown_field():
    with pytest.raises(DriverError, match="Unknown interface field.*deploy_interface"):
        Interfaces(settings()).check("fake-hardware", {"deploy_interface": "direct"})


def test_no_enabled_interface_for_a_family():
    ifs = Interfaces(settings(enabled_power_interfaces="fake"))
    with pytest.raises(DriverError, match="No power interface is enabled for hardware type 'redfish': it supports "
                                          "redfish; enabled power interfaces are fake."):
        ifs.defaults("redfish")


def test_unknown_names_in_settings_fail_at_start():
    with pytest.raises(DriverError, match="enabled_hardware_types names an unknown hardware type 'ipmi'"):
        Interfaces(settings(enabled_hardware_types="fake-hardware, ipmi"))
    with pytest.raises(DriverError, match="enabled_boot_interfaces names an unknown boot interface 'pxe'"):
        Interfaces(settings(enabled_boot_interfaces="pxe"))


def test_lists_as_sequences_and_spaces():
    ifs = Interfaces(settings(enabled_power_interfaces=[" fake ", "fake"], enabled_hardware_types=" fake-hardware ,"))
    assert ifs.enabled["power"] == ("fake",)
    assert ifs.enabled["hardware"] == ("fake-hardware",)


def test_one_instance_per_name():
    ifs = Interfaces(settings())
    assert isinstance(ifs.power("fake"), FakePower) and ifs.power("fake") is ifs.power("fake")
    assert isinstance(ifs.boot("fake"), FakeBoot) and ifs.boot("fake") is ifs.boot("fake")
    assert ifs.power("redfish").name == "redfish" and ifs.power("redfish").timeout == 60.0
    with pytest.raises(DriverError, match="Power interface 'redfish' is not enabled: enabled power interfaces are fake"):
        Interfaces(settings(enabled_power_interfaces="fake")).power("redfish")


def test_snapshot_classes_imported_lazily_and_given_the_registry(monkeypatch):
    import sys
    import types
    mod = types.ModuleType("ff_test_snapshots")

    class WithRegistry:
        name = "agent"

        def __init__(self, interfaces=None):
            self.interfaces = interfaces

    class Plain:
        name = "fake"

    mod.WithRegistry, mod.Plain = WithRegistry, Plain
    monkeypatch.setitem(sys.modules, "ff_test_snapshots", mod)
    monkeypatch.setitem(drivers.IMPLEMENTATIONS, "snapshot", {
        "agent": "ff_test_snapshots:WithRegistry", "fake": "ff_test_snapshots:Plain",
        "no-snapshot": "ff_test_snapshots:Plain"})
    ifs = Interfaces(settings())
    assert ifs.snapshot("agent").interfaces is ifs
    assert isinstance(ifs.snapshot("fake"), Plain)


def test_the_real_snapshot_interfaces_resolve_by_name():
    pytest.importorskip("freezeframe.baremetal.drivers.snapshot")
    ifs = Interfaces(settings())
    for name in ("fake", "no-snapshot", "agent"):
        assert ifs.snapshot(name).name == name


def test_where_the_virtual_media_boot_publishes(tmp_path):
    # The BMC is on the conductor's side: it downloads from the address the WebDAV server is
    # bound to, not from webdav_url (the agents' side, here a QEMU guest's view of the host).
    ifs = Interfaces(settings(transfer_path=str(tmp_path / "area"), webdav_bind="127.0.0.1:7001",
                              webdav_url="http://10.0.2.2:7001/"))
    assert (ifs.boot_dir, ifs.boot_url) == (tmp_path / "area" / "_boot", "http://127.0.0.1:7001/_boot")
    boot = ifs.boot("redfish-virtual-media")
    assert (boot.boot_dir, boot.boot_url) == (tmp_path / "area" / "_boot", "http://127.0.0.1:7001/_boot")
    assert boot.agent_iso.name == "agent.iso"

    # A wildcard bind names no host: webdav_url then (else this machine's loopback).
    ifs = Interfaces(settings(webdav_bind="0.0.0.0:6387", webdav_url="http://dav.example:6387/"))
    assert ifs.boot_url == "http://dav.example:6387/_boot"
    assert Interfaces(settings(webdav_bind="0.0.0.0:6387")).boot_url == "http://127.0.0.1:6387/_boot"
    # No WebDAV server here (the area is served by the transfer host): webdav_url.
    ifs = Interfaces(settings(webdav_bind="", webdav_url="http://10.0.2.2:6387"))
    assert ifs.boot_url == "http://10.0.2.2:6387/_boot"
    assert Interfaces(settings(webdav_bind="")).boot_url is None

    ifs = Interfaces(settings(agent_iso_url="https://files.example/iso/", agent_iso="/srv/a.iso"), data_dir=tmp_path)
    assert (ifs.boot_dir, ifs.boot_url) == (tmp_path / "baremetal-transfers" / "_boot", "https://files.example/iso/")
    assert ifs.boot("redfish-virtual-media").agent_iso == Path("/srv/a.iso")
    assert ifs.boot("redfish-virtual-media").boot_url == "https://files.example/iso"

    ifs = Interfaces(settings())                   # no area known: validate says so
    assert (ifs.boot_dir, ifs.boot_url) == (None, "http://127.0.0.1:6387/_boot")


def test_built_from_the_real_settings(tmp_path):
    from freezeframe.settings import BaremetalSettings
    ifs = Interfaces(BaremetalSettings(), data_dir=tmp_path)
    assert ifs.enabled["hardware"] == ("fake-hardware", "redfish")
    assert ifs.defaults("fake-hardware")["snapshot_interface"] == "fake"
    assert (ifs.boot_dir, ifs.boot_url) == (tmp_path / "baremetal-transfers" / "_boot", "http://127.0.0.1:6387/_boot")


def test_node_info_from_a_row():
    from freezeframe.baremetal.drivers.base import NodeInfo
    from freezeframe.baremetal.model import Node
    row = Node(id="u-1", name="bm", driver="redfish", driver_info_json='{"redfish_address": "h"}',
               properties_json='{"root_device": {"size": 10}}', instance_info_json="{}",
               driver_internal_info_json="", power_state="power on")
    info = NodeInfo.from_row(row)
    assert (info.id, info.ident, info.driver, info.power_state) == ("u-1", "bm", "redfish", "power on")
    assert info.driver_info == {"redfish_address": "h"}
    assert info.properties == {"root_device": {"size": 10}} and info.driver_internal_info == {}
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.driver = "x"
