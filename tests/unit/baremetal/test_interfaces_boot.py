"""The conformance suite every boot interface passes: ``fake`` (always) and
``redfish-virtual-media`` against the sushy-tools emulator driving a real libvirt domain
(tests/sushy.py; skipped with the reason where libvirt or the emulator cannot run).

What the node would boot is read beside the interface: the fake's record, or, for Redfish, the
domain's definition through libvirt — the ISO on its CD drive (its boot configuration read back
with xorriso) and its boot order."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from freezeframe.baremetal.drivers.base import BootInterface, DriverError, NodeInfo
from freezeframe.baremetal.drivers.fake import FakeBoot

PARAMS = {"ipa-api-url": "http://10.0.2.2:8080/baremetal", "ipa-advertise-port": "9999"}


@dataclass
class BootKit:
    boot: BootInterface
    node: NodeInfo
    attached: Callable[[], dict[str, str] | None]   # the kernel params of the agent boot attached
    next_boot: Callable[[], str]                     # "agent" or "disk"
    powered: Callable[[], bool]


def fake_kit(tmp_path: Path) -> Iterator[BootKit]:
    boot = FakeBoot()
    node = NodeInfo(id=str(uuid.uuid4()), name="fake-node", driver="fake-hardware")
    yield BootKit(boot=boot, node=node, attached=lambda: boot.prepared(node.id),
                  next_boot=lambda: "agent" if boot.prepared(node.id) is not None else "disk",
                  powered=lambda: False)


def redfish_kit(tmp_path: Path) -> Iterator[BootKit]:
    from freezeframe.baremetal.drivers.redfish import RedfishVirtualMediaBoot
    from tests import sushy
    lab = sushy.shared_lab()
    sushy.reset(lab)
    iso = sushy.make_agent_iso(tmp_path / "agent.iso")
    with sushy.boot_share(tmp_path / "boot") as share:
        boot = RedfishVirtualMediaBoot(agent_iso=iso, boot_dir=share.path, boot_url=share.url)
        node = NodeInfo(id=str(uuid.uuid4()), name="redfish-node", driver="redfish",
                        driver_info=lab.driver_info())

        def attached() -> dict[str, str] | None:
            files = lab.cdrom_files()
            if not files:
                return None
            assert len(files) == 1, files
            cfg = sushy.iso_file(Path(files[0]), "/isolinux/isolinux.cfg")
            line = next(ln for ln in cfg.splitlines() if re.match(r"\s*append\b", ln))
            return dict(w.split("=", 1) if "=" in w else (w, "") for w in line.split()[1:])

        def next_boot() -> str:
            first = lab.boot_devices()[0]
            return "agent" if first == "cdrom" else "disk" if first in ("disk", "hd") else first

        yield BootKit(boot=boot, node=node, attached=attached, next_boot=next_boot, powered=lab.is_active)


@pytest.fixture(params=["fake", pytest.param("redfish-virtual-media", marks=pytest.mark.libvirt)])
def kit(request, tmp_path) -> Iterator[BootKit]:
    yield from {"fake": fake_kit, "redfish-virtual-media": redfish_kit}[request.param](tmp_path)


def with_node(kit: BootKit) -> dict[str, str]:
    return {**PARAMS, "ipa-node-uuid": kit.node.id}


def test_validate_accepts_the_node(kit):
    kit.boot.validate(kit.node)


def test_prepare_attaches_the_agent_with_the_params(kit):
    assert kit.attached() is None
    kit.boot.prepare_ramdisk(kit.node, with_node(kit))
    got = kit.attached()
    assert got is not None
    assert {k: got.get(k) for k in with_node(kit)} == with_node(kit)
    assert kit.next_boot() == "agent"
    assert not kit.powered()            # preparing never powers the node


def test_prepare_again_replaces_the_params(kit):
    kit.boot.prepare_ramdisk(kit.node, with_node(kit))
    kit.boot.prepare_ramdisk(kit.node, {**with_node(kit), "ipa-advertise-port": "10000"})
    got = kit.attached()
    assert got["ipa-advertise-port"] == "10000"
    assert got["ipa-node-uuid"] == kit.node.id
    assert kit.next_boot() == "agent"


def test_clean_up_detaches_and_boots_the_disk(kit):
    kit.boot.prepare_ramdisk(kit.node, with_node(kit))
    kit.boot.clean_up_ramdisk(kit.node)
    assert kit.attached() is None
    assert kit.next_boot() == "disk"
    kit.boot.clean_up_ramdisk(kit.node)            # twice: no error (a resumed workflow)
    assert kit.attached() is None


def test_clean_up_without_prepare_is_no_error(kit):
    kit.boot.clean_up_ramdisk(kit.node)
    assert kit.attached() is None
    assert kit.next_boot() == "disk"


@pytest.mark.parametrize("bad", [{"ipa-api-url": "http://x/ y"}, {"ipa api": "1"}, {"k": 'a"b'}])
def test_params_a_kernel_line_cannot_carry_are_refused(kit, bad):
    with pytest.raises(DriverError, match="Invalid kernel parameter"):
        kit.boot.prepare_ramdisk(kit.node, bad)
    assert kit.attached() is None


def test_fake_boot_error_knob():
    boot = FakeBoot()
    node = NodeInfo(id="n", name=None, driver="fake-hardware", driver_info={"fake_boot_error": "no media"})
    boot.validate(node)
    with pytest.raises(DriverError, match="no media"):
        boot.prepare_ramdisk(node, PARAMS)
    assert boot.prepared("n") is None
