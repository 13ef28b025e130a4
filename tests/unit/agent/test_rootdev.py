"""Root device hints: Ironic's semantics, table-driven."""

import pytest

from freezeframe.agent import rootdev
from freezeframe.agent.config import DiskSpec
from freezeframe.agent.rootdev import GiB, BlockDevice

SDA = BlockDevice(
    name="/dev/sda", path="/dev/sda", size=20 * GiB, model="QEMU HARDDISK", vendor="ATA", serial="S-AAA",
    wwn="0x5000c500a0000001", wwn_with_extension="0x5000c500a0000001", rotational=True, hctl="0:0:0:0",
    by_path="/dev/disk/by-path/pci-0000:00:1f.2-ata-1",
)
SDB = BlockDevice(
    name="/dev/sdb", path="/dev/sdb", size=10 * GiB, model="Samsung SSD 860", vendor="ATA", serial="S-BBB",
    wwn="0x5000c500b0000002", rotational=False, hctl="1:0:0:0",
)
VDA = BlockDevice(name="/dev/vda", path="/dev/vda", size=8 * GiB, serial="virtio-1", rotational=True)
SMALL = BlockDevice(name="/dev/sdc", path="/dev/sdc", size=2 * GiB, model="tiny", rotational=False)
DISKS = [SDA, SDB, VDA, SMALL]


@pytest.mark.parametrize(
    "hints, expected",
    [
        (None, "/dev/vda"),  # smallest disk >= 4 GiB (sdc is 2 GiB: too small)
        ({}, "/dev/vda"),
        ({"size": 10}, "/dev/sdb"),  # size in GiB, == by default
        ({"size": "10"}, "/dev/sdb"),
        ({"size": ">= 15"}, "/dev/sda"),
        ({"size": "<= 2"}, "/dev/sdc"),  # hints do not apply the 4 GiB minimum
        ({"size": "< 10"}, "/dev/sdc"),  # first in name order: sdc before vda
        ({"size": "!= 20"}, "/dev/sdb"),
        ({"size": "= 15"}, "/dev/sda"),  # oslo's legacy "=" means >=
        ({"size": "<or> 8 <or> 9"}, "/dev/vda"),
        ({"model": "samsung ssd 860"}, "/dev/sdb"),  # strings compare lowercased
        ({"model": "s== QEMU HARDDISK"}, "/dev/sda"),  # whitespace quoted on both sides
        ({"model": "<in> ssd"}, "/dev/sdb"),
        ({"model": "<or> tiny <or> nothing"}, "/dev/sdc"),
        ({"model": "s!= QEMU HARDDISK"}, "/dev/sdb"),  # a device without a model never matches
        ({"serial": "S-BBB"}, "/dev/sdb"),
        ({"serial": "virtio-1"}, "/dev/vda"),
        ({"wwn": "0x5000c500a0000001"}, "/dev/sda"),
        ({"wwn_with_extension": "0x5000c500a0000001"}, "/dev/sda"),
        ({"vendor": "ata", "rotational": False}, "/dev/sdb"),  # every hint must match
        ({"rotational": "true"}, "/dev/sda"),
        ({"rotational": False, "size": "> 4"}, "/dev/sdb"),
        ({"name": "/dev/sdb"}, "/dev/sdb"),
        ({"name": "sdb"}, "/dev/sdb"),  # /dev/ added
        ({"hctl": "1:0:0:0"}, "/dev/sdb"),
        ({"by_path": "/dev/disk/by-path/pci-0000:00:1f.2-ata-1"}, "/dev/sda"),
    ],
)
def test_hints_choose(hints, expected):
    assert rootdev.choose_root_device(DISKS, hints).name == expected


@pytest.mark.parametrize(
    "hints",
    [
        {"size": 11},
        {"model": "nothing"},
        {"serial": "S-AAA", "rotational": False},
        {"name": "/dev/sdz"},
        {"wwn_vendor_extension": "0x1"},  # nobody has one
        {"model": "<in> xyz"},
    ],
)
def test_no_match_is_a_clear_error(hints):
    with pytest.raises(rootdev.DeviceNotFound, match="No disk matches the root device hints") as err:
        rootdev.choose_root_device(DISKS, hints)
    assert "/dev/sda" in str(err.value)  # says which disks there were


def test_no_hints_no_disk_big_enough():
    with pytest.raises(rootdev.DeviceNotFound, match="at least 4 GiB"):
        rootdev.choose_root_device([SMALL], None)


def test_smallest_of_equal_candidates_is_stable():
    a = BlockDevice(name="/dev/sdb", path="/dev/sdb", size=5 * GiB)
    b = BlockDevice(name="/dev/sda", path="/dev/sda", size=5 * GiB)
    assert rootdev.choose_root_device([a, b], None).name == "/dev/sda"


@pytest.mark.parametrize(
    "hints, message",
    [
        ({"colour": "red"}, 'The hints "colour" are invalid'),
        ({"size": "big"}, "is not an integer"),
        ({"size": 0}, "should be a positive integer"),
        ({"size": "-5"}, "should be a positive integer"),
        ({"size": "s== 10"}, "is for strings"),
        ({"model": 5}, "is not a string value"),
        ({"model": "  "}, "is empty"),
        ({"rotational": "maybe"}, "is not a Boolean"),
        ({"model": "<all-in> a b"}, "not supported"),
        ({"model": "s=="}, "has no value"),
    ],
)
def test_invalid_hints(hints, message):
    with pytest.raises(rootdev.InvalidHints, match=message):
        rootdev.parse_hints(hints)


def test_node_hints_order():
    node = {"instance_info": {"root_device": {"size": 8}}, "properties": {"root_device": {"size": 10}}}
    assert rootdev.hints_from_node(node) == {"size": 8}
    assert rootdev.hints_from_node({"instance_info": {}, "properties": {"root_device": {"size": 10}}}) == {"size": 10}
    assert rootdev.hints_from_node(None) is None


def test_disk_specs(tmp_path):
    f = tmp_path / "disk.img"
    with open(f, "wb") as fh:
        fh.truncate(3 * 1024 * 1024)
    devices = rootdev.list_devices(
        [DiskSpec(path=str(f), name="/dev/sdx", model="Fake Disk", size=6 * GiB, rotational=False), DiskSpec(path=str(f))]
    )
    assert devices[0].name == "/dev/sdx" and devices[0].size == 6 * GiB and devices[0].path == str(f)
    assert devices[1].name == str(f) and devices[1].size == 3 * 1024 * 1024  # the real size
    assert rootdev.choose_root_device(devices, {"model": "fake disk"}).name == "/dev/sdx"
    assert rootdev.choose_root_device(devices, None).name == "/dev/sdx"  # posing as 6 GiB


def test_sysfs_listing(tmp_path):
    """A fake /sys/block: loop/ram/sr/dm skipped, attributes read."""
    def mk(name, sectors, **files):
        d = tmp_path / name
        (d / "queue").mkdir(parents=True)
        (d / "device" / "scsi_device" / "2:0:0:0").mkdir(parents=True) if files.pop("scsi", False) else None
        (d / "size").write_text(f"{sectors}\n")
        (d / "dev").write_text("8:0\n")
        (d / "queue" / "rotational").write_text(files.pop("rot", "0") + "\n")
        for key, value in files.items():
            p = d / key
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(value + "\n")

    mk("sda", 16 * 1024 * 1024 * 2, **{"device/model": "QEMU HARDDISK", "device/vendor": "ATA",
                                      "device/wwid": "naa.5000C500A0000001", "rot": "1", "scsi": True})
    mk("vda", 8 * 1024 * 1024 * 2, serial="vd-serial")
    mk("loop0", 1000)
    mk("sr0", 1000)
    mk("dm-0", 1000)
    mk("ram0", 1000)
    mk("sdz", 0)  # empty drive
    devs = {d.name: d for d in rootdev.list_sysfs(str(tmp_path))}
    assert sorted(devs) == ["/dev/sda", "/dev/vda"]
    sda = devs["/dev/sda"]
    assert sda.size == 16 * GiB and sda.model == "QEMU HARDDISK" and sda.rotational is True
    assert sda.wwn == "0x5000c500a0000001" and sda.hctl == "2:0:0:0"
    assert devs["/dev/vda"].serial == "vd-serial" and devs["/dev/vda"].rotational is False
    assert rootdev.choose_root_device(list(devs.values()), None).name == "/dev/vda"
