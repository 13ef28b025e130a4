"""The redfish hardware type against the sushy-tools emulator driving a real libvirt domain
(tests/sushy.py): what the conformance suites cannot say generically — the exact ISO the BMC
attached, where it fetched it, the boot override the BMC reports, the running domain after a
reboot — and how the BMC's errors reach the operator."""

from __future__ import annotations

import hashlib
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from freezeframe.baremetal.drivers.base import DriverError, NodeInfo
from freezeframe.baremetal.drivers.redfish import RedfishPower, RedfishVirtualMediaBoot
from tests import sushy

pytestmark = [pytest.mark.libvirt]


@pytest.fixture
def lab():
    lab = sushy.shared_lab()
    sushy.reset(lab)
    return lab


@pytest.fixture
def share(tmp_path):
    with sushy.boot_share(tmp_path / "boot") as share:
        yield share


@pytest.fixture
def agent_iso(tmp_path) -> Path:
    return sushy.make_agent_iso(tmp_path / "agent.iso", label="FFAGENT_T")


def node_of(lab, **over) -> NodeInfo:
    return NodeInfo(id=str(uuid.uuid4()), name="bm-0", driver="redfish", driver_info=lab.driver_info(**over))


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_virtual_media_boot_end_to_end(lab, share, agent_iso):
    boot = RedfishVirtualMediaBoot(agent_iso, share.path, share.url)
    power = RedfishPower(timeout=30)
    node = node_of(lab)
    params = {"ipa-api-url": "http://10.0.2.2:8080/baremetal", "ipa-node-uuid": node.id, "ipa-insecure": "1"}

    boot.prepare_ramdisk(node, params)
    per_node = share.path / f"{node.id}.iso"
    # The BMC fetched the per-node ISO from the boot URL and put exactly its bytes on the CD drive.
    assert share.requests == [f"/{node.id}.iso"]
    [attached] = lab.cdrom_files()
    assert sha256(attached) == sha256(per_node)
    assert sha256(per_node) != sha256(agent_iso)
    # Both boot configurations carry the params; the base's own words and its boot records stay.
    isolinux = sushy.iso_file(Path(attached), "/isolinux/isolinux.cfg")
    assert "append initrd=/boot/initrd.img console=ttyS0 ipa-api-url=http://10.0.2.2:8080/baremetal " \
           f"ipa-node-uuid={node.id} ipa-insecure=1\n" in isolinux
    assert "ipa-insecure=0" not in isolinux
    assert f"ipa-node-uuid={node.id}" in sushy.iso_file(Path(attached), "/boot/grub/grub.cfg")
    report = subprocess.run(["xorriso", "-indev", attached, "-report_el_torito", "plain"],
                            capture_output=True, text=True, check=True).stdout
    assert "/isolinux/isolinux.bin" in report and "boot-info-table" in report
    pvd = subprocess.run(["xorriso", "-indev", attached, "-pvd_info"], capture_output=True, text=True,
                         check=True).stdout
    assert "FFAGENT_T" in pvd           # live images find their root by the volume label
    # The BMC reports the override to the CD; the domain boots the CD first.
    assert lab.system()["Boot"]["BootSourceOverrideTarget"] == "Cd"
    assert lab.boot_devices()[0] == "cdrom"

    # Rebooted through Redfish, the running domain has the ISO in its CD drive.
    power.reboot(node)
    assert lab.is_active()
    assert lab.cdrom_files(inactive=False) == [attached]

    boot.clean_up_ramdisk(node)
    assert lab.cdrom_files() == []
    assert lab.system()["Boot"]["BootSourceOverrideTarget"] == "Hdd"
    assert lab.boot_devices()[0] in ("disk", "hd")
    assert not per_node.exists()
    power.reboot(node)
    assert lab.cdrom_files(inactive=False) == []
    power.set_power_state(node, "power off")
    assert not lab.is_active()


def test_system_id_is_optional_with_one_system(lab):
    node = node_of(lab)
    node = NodeInfo(id=node.id, name=None, driver="redfish",
                    driver_info={k: v for k, v in node.driver_info.items() if k != "redfish_system_id"})
    power = RedfishPower(timeout=30)
    power.set_power_state(node, "power on")
    assert lab.is_active()
    power.set_power_state(node, "power off")
    assert not lab.is_active()


def test_system_id_may_be_the_bare_id(lab):
    node = node_of(lab, redfish_system_id=lab.uuid)
    assert RedfishPower().get_power_state(node) == "power off"


def test_wrong_password_is_the_bmcs_refusal(lab):
    node = node_of(lab, redfish_password="not-the-password")
    with pytest.raises(DriverError, match=r"Redfish get power state failed for node bm-0: .*401"):
        RedfishPower().get_power_state(node)


def test_unknown_system_is_a_driver_error(lab):
    node = node_of(lab, redfish_system_id="/redfish/v1/Systems/no-such-system")
    # (sushy-tools 2.2 answers 500 here where a real BMC says 404: the path is what matters)
    with pytest.raises(DriverError, match=r"failed for node bm-0: HTTP GET \S+/redfish/v1/Systems/no-such-system "
                                          r"returned code"):
        RedfishPower().set_power_state(node, "power on")
    assert not lab.is_active()


def test_unreachable_bmc_fails_fast(lab):
    from tests.conftest import free_port
    node = node_of(lab, redfish_address=f"http://127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    with pytest.raises(DriverError, match="Redfish get power state failed for node bm-0"):
        RedfishPower().get_power_state(node)
    assert time.monotonic() - t0 < 20


def test_media_the_bmc_cannot_download_is_the_bmcs_message(lab, tmp_path, agent_iso):
    from tests.conftest import free_port
    boot = RedfishVirtualMediaBoot(agent_iso, tmp_path / "boot", f"http://127.0.0.1:{free_port()}/_boot")
    with pytest.raises(DriverError, match=r"insert virtual media .*failed for node bm-0|failed for node bm-0: .*"
                                          r"insert virtual media"):
        boot.prepare_ramdisk(node_of(lab), {"ipa-api-url": "http://h/"})
    assert lab.cdrom_files() == []
    assert lab.boot_devices()[0] in ("disk", "hd")


def test_missing_agent_iso_attaches_nothing(lab, share, tmp_path):
    boot = RedfishVirtualMediaBoot(tmp_path / "absent.iso", share.path, share.url)
    node = node_of(lab)
    with pytest.raises(DriverError, match=r"agent ISO .*absent.iso does not exist: build it with scripts/build-agent"):
        boot.validate(node)
    with pytest.raises(DriverError, match="does not exist"):
        boot.prepare_ramdisk(node, {"ipa-api-url": "http://h/"})
    assert share.requests == []
    assert lab.cdrom_files() == []
