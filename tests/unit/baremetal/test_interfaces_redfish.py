"""The redfish interfaces without a BMC: driver_info checks (Ironic's wording), the per-node ISO
(xorriso on a small ISO with the agent ISO's layout), the power wait and the error mapping on a
stand-in sushy System. The BMC itself: the conformance suites and tests/libvirt/test_redfish_bmc.py."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from freezeframe.baremetal.drivers import redfish
from freezeframe.baremetal.drivers.base import DriverError, NodeInfo, kernel_cmdline
from freezeframe.baremetal.drivers.redfish import RedfishPower, parse_driver_info, remaster, rewrite_config

needs_xorriso = pytest.mark.skipif(shutil.which("xorriso") is None,
                                   reason="xorriso is not installed (scripts/ensure-sushy installs it)")


def node(**info) -> NodeInfo:
    return NodeInfo(id="3f1a5c8e-0000-4000-8000-000000000001", name="bm-1", driver="redfish", driver_info=info)


# -- driver_info --------------------------------------------------------------------------------
def test_full_driver_info():
    got = parse_driver_info(node(redfish_address="https://bmc.example:8443/", redfish_system_id="/redfish/v1/Systems/7",
                                 redfish_username="u", redfish_password="p", redfish_verify_ca="false",
                                 redfish_auth_type="Basic"))
    assert (got.address, got.system_id, got.username, got.password, got.verify, got.auth_type) == \
        ("https://bmc.example:8443", "/redfish/v1/Systems/7", "u", "p", False, "basic")


def test_defaults_as_ironic():
    got = parse_driver_info(node(redfish_address="10.0.0.5"))
    assert (got.address, got.system_id, got.verify, got.auth_type) == ("https://10.0.0.5", None, True, "auto")


def test_bare_system_id_becomes_its_path():
    assert parse_driver_info(node(redfish_address="h", redfish_system_id="abc")).system_id == "/redfish/v1/Systems/abc"


def test_missing_address_names_the_key_and_node():
    with pytest.raises(DriverError) as err:
        parse_driver_info(node(redfish_username="u"))
    assert err.value.message == "Missing the following Redfish properties in node bm-1 driver_info: redfish_address."


@pytest.mark.parametrize("address", ["ftp://bmc", "http://", "https:///x"])
def test_bad_address(address):
    with pytest.raises(DriverError, match=r"Invalid Redfish address .* driver_info/redfish_address on node bm-1"):
        parse_driver_info(node(redfish_address=address))


def test_verify_ca_may_be_a_path(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert parse_driver_info(node(redfish_address="h", redfish_verify_ca=str(ca))).verify == str(ca)
    with pytest.raises(DriverError, match=r"redfish_verify_ca on node bm-1.*Boolean or the path"):
        parse_driver_info(node(redfish_address="h", redfish_verify_ca=str(tmp_path / "absent.pem")))


def test_bad_auth_type():
    with pytest.raises(DriverError, match=r"redfish_auth_type on node bm-1: expected one of basic, session, auto"):
        parse_driver_info(node(redfish_address="h", redfish_auth_type="kerberos"))


def test_validate_of_both_interfaces_checks_driver_info(tmp_path):
    with pytest.raises(DriverError, match="redfish_address"):
        RedfishPower().validate(node())
    boot = redfish.RedfishVirtualMediaBoot(tmp_path / "a.iso", tmp_path, "http://h/_boot")
    with pytest.raises(DriverError, match="redfish_address"):
        boot.validate(node())
    with pytest.raises(DriverError, match="agent ISO .* does not exist"):
        boot.validate(node(redfish_address="h"))
    (tmp_path / "a.iso").write_bytes(b"x")
    boot.validate(node(redfish_address="h"))
    nowhere = redfish.RedfishVirtualMediaBoot(tmp_path / "a.iso", None, None)
    with pytest.raises(DriverError, match="nowhere to publish the per-node agent ISO"):
        nowhere.validate(node(redfish_address="h"))


# -- kernel params and boot configurations --------------------------------------------------------
def test_kernel_cmdline():
    assert kernel_cmdline({"ipa-api-url": "http://h:1/b", "ipa-debug": "", "x.y_z": "1"}) == \
        "ipa-api-url=http://h:1/b ipa-debug x.y_z=1"
    with pytest.raises(DriverError, match="at most 2000"):
        kernel_cmdline({"k": "v" * 2000})


def test_rewrite_isolinux_replaces_same_keys_and_keeps_the_rest():
    cfg = "default a\nLABEL a\n  kernel /boot/vmlinuz\n  APPEND initrd=/boot/initrd.img ipa-insecure=0 quiet\r\n" \
          "label b\n  append initrd=x\n"
    out = rewrite_config(cfg, "isolinux", {"ipa-insecure": "1", "ipa-node-uuid": "u"})
    assert out == ("default a\nLABEL a\n  kernel /boot/vmlinuz\n"
                   "  APPEND initrd=/boot/initrd.img quiet ipa-insecure=1 ipa-node-uuid=u\r\n"
                   "label b\n  append initrd=x ipa-insecure=1 ipa-node-uuid=u\n")


def test_rewrite_grub_touches_linux_lines_only():
    cfg = "set timeout=1\nmenuentry 'agent' {\n\tlinux /boot/vmlinuz console=ttyS0\n\tinitrd /boot/initrd.img\n}\n"
    out = rewrite_config(cfg, "grub", {"ipa-api-url": "http://h/"})
    assert "\tlinux /boot/vmlinuz console=ttyS0 ipa-api-url=http://h/\n" in out
    assert "\tinitrd /boot/initrd.img\n" in out and out.startswith("set timeout=1\n")


@needs_xorriso
def test_remaster_keeps_the_base_and_adds_the_params(tmp_path):
    from tests.sushy import iso_file, make_agent_iso
    base = make_agent_iso(tmp_path / "agent.iso")
    before = base.read_bytes()
    out = tmp_path / "boot" / "n.iso"
    out.parent.mkdir()
    remaster(base, out, {"ipa-api-url": "http://10.0.2.2:8080/baremetal"})
    assert base.read_bytes() == before
    assert "console=ttyS0 ipa-insecure=0 ipa-api-url=http://10.0.2.2:8080/baremetal\n" in \
        iso_file(out, "/isolinux/isolinux.cfg")
    assert iso_file(out, "/boot/vmlinuz") == iso_file(base, "/boot/vmlinuz")
    report = subprocess.run(["xorriso", "-indev", str(out), "-report_el_torito", "plain"],
                            capture_output=True, text=True, check=True).stdout
    assert "/isolinux/isolinux.bin" in report
    assert [p.name for p in out.parent.iterdir()] == ["n.iso"]     # no staging leftovers
    # Again, for other params: replaced atomically, from the base (not stacked).
    remaster(base, out, {"ipa-api-url": "http://other/"})
    cfg = iso_file(out, "/isolinux/isolinux.cfg")
    assert "ipa-api-url=http://other/\n" in cfg and "10.0.2.2" not in cfg


@needs_xorriso
def test_remaster_of_an_iso_without_boot_config(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "readme.txt").write_text("no boot here")
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(tmp_path / "plain.iso"), str(src)],
                   check=True, capture_output=True)
    with pytest.raises(DriverError, match="has no boot configuration"):
        remaster(tmp_path / "plain.iso", tmp_path / "out.iso", {"a": "b"})
    assert not (tmp_path / "out.iso").exists()


def test_remaster_of_a_missing_iso(tmp_path):
    with pytest.raises(DriverError, match="does not exist"):
        remaster(tmp_path / "absent.iso", tmp_path / "out.iso", {"a": "b"})


# -- power, on a stand-in System ---------------------------------------------------------------------
class StubSystem:
    def __init__(self, state="Off", stuck=False, fail=None):
        import sushy
        self.power_state = sushy.PowerState(state)
        self.stuck, self.fail, self.resets = stuck, fail, []

    def reset_system(self, value):
        import sushy
        if self.fail:
            raise self.fail
        self.resets.append(value.value)
        if not self.stuck:
            self.power_state = sushy.PowerState.OFF if value is sushy.ResetType.FORCE_OFF else sushy.PowerState.ON

    def refresh(self, force=True):
        pass


def stub_power(monkeypatch, system) -> RedfishPower:
    power = RedfishPower(timeout=5)
    monkeypatch.setattr(power._redfish, "system", lambda node, action: system)
    monkeypatch.setattr(redfish, "POLL_INTERVAL", 0.01)
    return power


def test_ironics_reset_mapping(monkeypatch):
    system = StubSystem("Off")
    power = stub_power(monkeypatch, system)
    n = node(redfish_address="h")
    power.set_power_state(n, "power on")
    power.reboot(n)
    power.set_power_state(n, "power off")
    power.reboot(n)
    power.set_power_state(n, "power on")          # already on: nothing sent
    assert system.resets == ["On", "ForceRestart", "ForceOff", "On"]


def test_a_bmc_that_never_gets_there_times_out(monkeypatch):
    power = stub_power(monkeypatch, StubSystem("Off", stuck=True))
    with pytest.raises(DriverError, match=r"Timed out after 0.2 s waiting for node bm-1 to reach power on: "
                                          r"the BMC reports power off"):
        power.set_power_state(node(redfish_address="h"), "power on", timeout=0.2)


def test_powering_states_map_as_ironic(monkeypatch):
    assert stub_power(monkeypatch, StubSystem("PoweringOn")).get_power_state(node()) == "power on"
    assert stub_power(monkeypatch, StubSystem("PoweringOff")).get_power_state(node()) == "power off"


def test_a_sushy_error_carries_the_bmcs_words(monkeypatch):
    from sushy import exceptions
    power = stub_power(monkeypatch, StubSystem("Off", fail=exceptions.InvalidParameterValueError(
        "The parameter ResetType has an invalid value On")))
    with pytest.raises(DriverError, match=r"Redfish set power state to power on failed for node bm-1: "
                                          r"The parameter ResetType has an invalid value On"):
        power.set_power_state(node(redfish_address="h"), "power on")
