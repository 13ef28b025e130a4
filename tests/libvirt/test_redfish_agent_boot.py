"""The agent image really boots on a node through Redfish: the per-node ISO made by the
redfish-virtual-media boot from scripts/build-agent-image's agent.iso, inserted as virtual media
by the sushy-tools emulator into a libvirt domain (TCG, a NIC on user networking, two disks),
the domain reset through Redfish; its serial console shows the agent's init taking the node's
kernel parameters. (The agent's lookup and streaming are the whole-flow test's.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from freezeframe.baremetal.drivers.base import NodeInfo
from freezeframe.baremetal.drivers.redfish import RedfishPower, RedfishVirtualMediaBoot
from tests import sushy

pytestmark = [pytest.mark.libvirt]
ROOT = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT = 180.0


def agent_iso() -> Path:
    cache = Path(os.environ.get("FREEZEFRAME_CACHE") or Path.home() / ".cache" / "freezeframe")
    if shutil.which("apt-get") is None and not (cache / "agent" / "out" / "agent.iso").exists():
        pytest.skip("the agent ISO is not built and there is no apt-get to fetch its packages")
    proc = subprocess.run([str(ROOT / "scripts" / "build-agent-image")], capture_output=True, text=True,
                          timeout=1800)
    if proc.returncode != 0:
        pytest.fail(f"scripts/build-agent-image failed:\n{proc.stderr[-3000:]}")
    return Path(dict(ln.split("=", 1) for ln in proc.stdout.splitlines() if "=" in ln)["ISO"])


def wait_console(lab, text: str, count: int = 1) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT
    while lab.console().count(text) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"{text!r} not on the console after {BOOT_TIMEOUT:g} s:\n{lab.console()[-3000:]}")
        time.sleep(1)


def test_the_agent_boots_from_virtual_media_with_the_nodes_params(tmp_path):
    if (reason := sushy.unavailable()) is not None:
        pytest.skip(reason)
    iso = agent_iso()
    with sushy.redfish_lab(memory_mib=768, disks=("5G", "6G"), nic=True) as lab, \
            sushy.boot_share(tmp_path / "boot") as share:
        node = NodeInfo(id=str(uuid.uuid4()), name="bm-agent", driver="redfish", driver_info=lab.driver_info())
        power, boot = RedfishPower(timeout=30), RedfishVirtualMediaBoot(iso, share.path, share.url)
        boot.validate(node)
        boot.prepare_ramdisk(node, {"ipa-api-url": "http://10.0.2.2:9/baremetal", "ipa-node-uuid": node.id})
        power.reboot(node)              # off -> on: boots the CD

        wait_console(lab, f"setting ipa-node-uuid={node.id}")
        console = lab.console()
        assert "setting ipa-api-url=http://10.0.2.2:9/baremetal" in console
        assert lab.mac in console       # its NIC, the MAC a lookup by address would send
        assert "disk /dev/vda 5120 MiB" in console and "disk /dev/vdb 6144 MiB" in console

        boot.clean_up_ramdisk(node)
        power.reboot(node)
        assert lab.cdrom_files(inactive=False) == []
        assert lab.boot_devices()[0] in ("disk", "hd")
        power.set_power_state(node, "power off")
        assert not lab.is_active()
