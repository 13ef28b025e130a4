"""compute/bdm.py: a create request's block_device_mapping_v2 and an image's block_device_mapping
parsed with Nova's rules (every 400 before anything is made), merged as Nova merges them, and
planned with the device names the guest will see; what the image and volume services are asked
before the 202; and the boot request that carries the local disks to a host."""

from __future__ import annotations

import json
import uuid

import pytest

from freezeframe.common import errors
from freezeframe.compute import bdm
from freezeframe.compute.bdm import BOOT_FROM_VOLUME, Device
from freezeframe.compute.hostside import BootRequest, LocalDisk
from freezeframe.images.client import Image
from freezeframe.volumes.client import CinderError

IMAGE = str(uuid.uuid4())
SNAP = str(uuid.uuid4())
VOL = str(uuid.uuid4())
GIB = 1 << 30


def blank(size=1, **kw):
    return {"source_type": "blank", "destination_type": "local", "volume_size": size, "boot_index": -1, **kw}


def volume(vid=VOL, **kw):
    return {"source_type": "volume", "destination_type": "volume", "uuid": vid, **kw}


def snapshot(sid=SNAP, **kw):
    return {"source_type": "snapshot", "destination_type": "volume", "uuid": sid, **kw}


def image(props: dict | None = None, *, image_id=IMAGE, virtual_size=GIB // 2, status="active") -> Image:
    return Image.from_json({"id": image_id, "status": status, "size": 1000, "virtual_size": virtual_size,
                            "disk_format": "qcow2", **(props or {})})


def invalid(fn, *args, match: str | None = None, **kw) -> str:
    with pytest.raises(errors.Invalid, match=match) as err:
        fn(*args, **kw)
    return str(err.value)


# -- the request --------------------------------------------------------------------------------

def test_a_request_without_devices_asks_for_none():
    assert bdm.parse_request(None) == []
    assert bdm.parse_request([]) == []


def test_the_four_kinds_of_device_parse():
    devices = bdm.parse_request([blank(2, device_name="/dev/vdb", guest_format="ext4"),
                                 {"source_type": "image", "destination_type": "local", "uuid": IMAGE.upper(),
                                  "boot_index": None},
                                 volume(delete_on_termination="yes", tag="db"),
                                 snapshot(volume_size="3", boot_index="-1")])
    assert [(d.source_type, d.destination_type) for d in devices] == [
        ("blank", "local"), ("image", "local"), ("volume", "volume"), ("snapshot", "volume")]
    assert devices[0].device_name == "vdb" and devices[0].volume_size == 2 and devices[0].guest_format == "ext4"
    assert devices[1].uuid == IMAGE and devices[1].boot_index is None        # ids lowered
    assert devices[2].delete_on_termination is True and devices[2].tag == "db"
    assert devices[3].volume_size == 3 and devices[3].delete_on_termination is False   # Nova's default


def test_legacy_id_keys_stand_for_uuid():
    (device,) = bdm.parse_request([{"source_type": "snapshot", "destination_type": "volume", "snapshot_id": SNAP}])
    assert device.uuid == SNAP
    invalid(bdm.parse_request, [{"source_type": "snapshot", "snapshot_id": SNAP, "uuid": VOL}])
    invalid(bdm.parse_request, [{"source_type": "snapshot", "uuid": SNAP, "volume_id": VOL}])


@pytest.mark.parametrize("entry, message", [
    ({**blank(), "bogus": 1}, "Additional properties"),
    (volume("not-a-uuid"), "not a valid UUID"),
    ({"source_type": "volume", "destination_type": "volume"}, "Missing device UUID"),
    ({**blank(), "uuid": VOL}, "Invalid device UUID"),
    (blank(0), "volume_size"),
    (blank("-1"), "volume_size"),
    (blank(True), "volume_size"),
    (blank("1.5"), "volume_size"),
    (blank(1 << 31), "volume_size"),
    (blank(None), "volume_size .* required"),
    (blank(bdm.MAX_LOCAL_GB + 1), "at most"),
    (blank(device_name="/dev/sdb"), "device_name"),
    (blank(device_name="vdb1"), "device_name"),
    (blank(device_name=""), "device_name"),
    (blank(device_name=3), "device_name"),
    (blank(boot_index="1"), "only the root"),
    (blank(boot_index="x"), "boot_index"),
    (blank(boot_index=1.0), "boot_index"),
    ({"source_type": "volume", "destination_type": "local", "uuid": VOL}, "not supported"),
    ({"source_type": "cdrom", "destination_type": "local"}, "source_type"),
    ({**volume(), "destination_type": "remote"}, "destination_type"),
    ({**volume(), "device_type": "cdrom"}, "device_type"),
    ({**volume(), "disk_bus": "scsi"}, "disk_bus"),
    ({**volume(), "connection_info": "{}"}, "connection_info"),
    ({**volume(), "delete_on_termination": "maybe"}, "boolean"),
    ({**volume(), "delete_on_termination": 1}, "boolean"),
    ({**volume(), "tag": "a/b"}, "tag"),
    ({**volume(), "guest_format": "x" * 256}, "guest_format"),
    ({"no_device": True}, "device_name it suppresses"),
    ("vdb", "object"),
])
def test_nova_refuses_what_its_schema_refuses(entry, message):
    text = invalid(bdm.parse_request, [entry], match=message)
    assert text


def test_booting_from_a_volume_is_refused_with_its_own_words():
    assert invalid(bdm.parse_request, [volume(boot_index=0)]) == BOOT_FROM_VOLUME
    assert invalid(bdm.parse_request, [snapshot(boot_index="0")]) == BOOT_FROM_VOLUME


def test_duplicates_and_too_many_and_the_legacy_syntax_are_refused():
    invalid(bdm.parse_request, [blank(device_name="vdb"), volume(device_name="/dev/vdb")], match="more than once")
    invalid(bdm.parse_request, [volume(), volume(device_name="vdc")], match="more than once")
    invalid(bdm.parse_request, [blank()] * (bdm.MAX_ENTRIES + 1), match="at most")
    invalid(bdm.parse_request, None, legacy=[{"device_name": "vdb"}], match="legacy")
    invalid(bdm.parse_request, {"source_type": "blank"}, match="list")
    too_many = bdm.parse_request([blank()] * (bdm.MAX_DEVICES + 1))
    invalid(bdm.plan, too_many, IMAGE, match=f"at most {bdm.MAX_DEVICES}")
    assert len(bdm.plan(too_many[:bdm.MAX_DEVICES], IMAGE)) == bdm.MAX_DEVICES


def test_two_volumes_from_one_snapshot_are_fine():
    assert len(bdm.plan(bdm.parse_request([snapshot(), snapshot()]), IMAGE)) == 2


# -- the image's mapping ------------------------------------------------------------------------

def nova_entry(**values):
    """An entry as Nova (and the instance-level snapshot) writes it: every key, unset = None."""
    keys = ("source_type", "destination_type", "snapshot_id", "volume_id", "image_id", "device_name", "boot_index",
            "volume_size", "delete_on_termination", "disk_bus", "device_type", "tag", "volume_type", "guest_format",
            "encrypted", "encryption_secret_uuid", "encryption_format", "encryption_options", "no_device")
    return {k: values.get(k) for k in keys}


CHILD = str(uuid.uuid4())
MAPPING = [nova_entry(source_type="image", destination_type="local", image_id=CHILD, device_name="/dev/vdb",
                      boot_index=-1, volume_size=1, delete_on_termination=True, disk_bus="virtio", device_type="disk"),
           nova_entry(source_type="snapshot", destination_type="volume", snapshot_id=SNAP, device_name="/dev/vdc",
                      volume_size=2, delete_on_termination=False, disk_bus="virtio", device_type="disk")]


def test_an_images_mapping_is_read_as_nova_writes_it():
    devices = bdm.image_mapping(image({"bdm_v2": "True", "block_device_mapping": json.dumps(MAPPING)}))
    assert [(d.source_type, d.uuid, d.device_name, d.volume_size, d.delete_on_termination) for d in devices] == [
        ("image", CHILD, "vdb", 1, True), ("snapshot", SNAP, "vdc", 2, False)]
    assert all(d.origin == f"image {IMAGE}" for d in devices)
    assert bdm.image_mapping(image()) == []
    assert bdm.image_mapping(image({"block_device_mapping": "[]"})) == []


def test_an_images_mapping_that_cannot_be_read_is_a_400():
    invalid(bdm.image_mapping, image({"block_device_mapping": json.dumps(MAPPING)}), match="legacy")
    invalid(bdm.image_mapping, image({"bdm_v2": "True", "block_device_mapping": "[{"}), match="not JSON")
    invalid(bdm.image_mapping, image({"bdm_v2": "True", "block_device_mapping": "{}"}), match="list")
    bad = [{**MAPPING[1], "surprise": 1}]
    invalid(bdm.image_mapping, image({"bdm_v2": "True", "block_device_mapping": json.dumps(bad)}),
            match="Additional properties")
    encrypted = [{**MAPPING[1], "encrypted": True}]
    invalid(bdm.image_mapping, image({"bdm_v2": "True", "block_device_mapping": json.dumps(encrypted)}),
            match="encrypted")
    root = [nova_entry(source_type="snapshot", destination_type="volume", snapshot_id=SNAP, boot_index=0,
                       device_name="/dev/vda")]
    assert invalid(bdm.image_mapping, image({"bdm_v2": "True", "block_device_mapping": json.dumps(root)})) \
        == BOOT_FROM_VOLUME


# -- merging ---------------------------------------------------------------------------------------

def test_the_request_wins_by_device_name_as_in_nova():
    from_image = bdm.image_mapping(image({"bdm_v2": "True", "block_device_mapping": json.dumps(MAPPING)}))
    requested = bdm.parse_request([blank(5, device_name="vdc"), volume()])
    merged = bdm.merge(from_image, requested)
    assert [(d.source_type, d.device_name) for d in merged] == [("blank", "vdc"), ("volume", None), ("image", "vdb")]


def test_no_device_drops_the_images_entry():
    from_image = bdm.image_mapping(image({"bdm_v2": "True", "block_device_mapping": json.dumps(MAPPING)}))
    merged = bdm.merge(from_image, bdm.parse_request([{"device_name": "/dev/vdc", "no_device": True}]))
    assert [d.device_name for d in merged] == ["vdb"]


def test_an_image_root_replaces_the_requests_root():
    image_root = [Device("image", "local", uuid=IMAGE, boot_index=0, device_name="vda", origin="image")]
    requested = bdm.parse_request([{"source_type": "image", "destination_type": "local", "uuid": IMAGE,
                                    "boot_index": 0}])
    assert bdm.merge(image_root, requested) == image_root


# -- planning ------------------------------------------------------------------------------------

def test_the_root_is_the_image_itself():
    root = {"source_type": "image", "destination_type": "local", "uuid": IMAGE, "boot_index": 0,
            "device_name": "/dev/vda"}
    assert bdm.plan(bdm.parse_request([root, blank()]), IMAGE)[0].device_name == "vdb"
    invalid(bdm.plan, bdm.parse_request([{**root, "uuid": CHILD}]), IMAGE, match="root disk")
    invalid(bdm.plan, bdm.parse_request([blank(boot_index=0)]), IMAGE, match="root disk")
    invalid(bdm.plan, bdm.parse_request([blank(device_name="vda")]), IMAGE, match="root disk")
    assert invalid(bdm.plan, bdm.parse_request([volume(device_name="vda")]), IMAGE) == BOOT_FROM_VOLUME


def test_device_names_are_what_the_guest_sees():
    devices = bdm.plan(bdm.parse_request([volume(), blank(1), snapshot(device_name="vdf"),
                                          blank(2, device_name="vdc"), blank(3)]), IMAGE)
    # Local disks first, vdb..vdd (vdc kept where asked, the others in request order), then the
    # volumes: the named one where asked, the other at the lowest free name.
    assert [(d.device_name, d.source_type, d.volume_size) for d in devices] == [
        ("vdb", "blank", 1), ("vdc", "blank", 2), ("vdd", "blank", 3), ("vde", "volume", None),
        ("vdf", "snapshot", None)]


def test_names_the_guest_cannot_have_are_moved():
    devices = bdm.plan(bdm.parse_request([blank(device_name="vdd"), volume(device_name="vdb")]), IMAGE)
    assert [(d.device_name, d.source_type) for d in devices] == [("vdb", "blank"), ("vdc", "volume")]


# -- asking the other services --------------------------------------------------------------------

class FakeCinder:
    def __init__(self, snapshots=None, volumes=None):
        self.snapshots, self.volumes, self.closed = snapshots or {}, volumes or {}, False

    def show_snapshot(self, sid):
        if sid not in self.snapshots:
            raise CinderError("not found", status=404)
        return self.snapshots[sid]

    def show_volume(self, vid):
        if vid not in self.volumes:
            raise CinderError("not found", status=404)
        return self.volumes[vid]

    def close(self):
        self.closed = True


def images_seen(found: dict[str, Image]):
    def image_for(ref, what):
        if ref not in found:
            raise errors.Invalid(f"Image {ref} ({what}) could not be found.")
        return found[ref]
    return image_for


def resolve(entries, cinder=None, found=None):
    cinder = cinder or FakeCinder()
    return bdm.resolve(bdm.plan(bdm.parse_request(entries), IMAGE), image_for=images_seen(found or {}),
                       volume_client=lambda: cinder)


def test_a_missing_snapshot_is_novas_400():
    assert invalid(resolve, [snapshot()]) == f"Block Device Mapping is Invalid: failed to get snapshot {SNAP}."
    cinder = FakeCinder({SNAP: {"status": "creating", "size": 1}})
    invalid(resolve, [snapshot()], cinder, match="not available")


def test_sizes_come_from_the_snapshot_and_the_image():
    cinder = FakeCinder({SNAP: {"status": "available", "size": 2}}, {VOL: {"status": "available", "size": 4}})
    child = image(image_id=CHILD, virtual_size=3 * GIB + 1)
    devices = resolve([snapshot(), snapshot(volume_size=5), volume(),
                       {"source_type": "image", "destination_type": "local", "uuid": CHILD}],
                      cinder, {CHILD: child})
    assert [(d.source_type, d.volume_size) for d in devices] == [("image", 4), ("snapshot", 2), ("snapshot", 5),
                                                                 ("volume", 4)]
    assert cinder.closed
    invalid(resolve, [snapshot(volume_size=1)], cinder, match="smaller than snapshot")
    invalid(resolve, [{"source_type": "image", "destination_type": "local", "uuid": CHILD, "volume_size": 3}],
            cinder, {CHILD: child}, match="smaller than image")
    invalid(resolve, [{"source_type": "image", "destination_type": "local", "uuid": CHILD}], match="could not be found")


def test_a_volume_must_be_there_and_available():
    invalid(resolve, [volume()], match=f"failed to get volume {VOL}")
    invalid(resolve, [volume()], FakeCinder(volumes={VOL: {"status": "in-use", "size": 1}}), match="available")
    invalid(resolve, [volume()], FakeCinder(volumes={VOL: {"status": "available", "multiattach": True}}),
            match="multiattach")


def test_volume_service_failures_are_not_the_callers_fault():
    class Broken(FakeCinder):
        def show_snapshot(self, sid):
            raise CinderError("boom", status=503)
    with pytest.raises(errors.BackendUnavailable):
        resolve([snapshot()], Broken())
    with pytest.raises(errors.BackendUnavailable):
        bdm.resolve(bdm.plan(bdm.parse_request([snapshot()]), IMAGE), image_for=images_seen({}), volume_client=None)


def test_rows_and_local_disks():
    devices = bdm.plan(bdm.parse_request([snapshot(volume_size=2, delete_on_termination=False), volume(),
                                          blank(3)]), IMAGE)
    rows = {r.device_name: r for r in bdm.rows(devices, "server")}
    assert rows["vdb"].destination_type == "local" and rows["vdb"].volume_size == 3 and rows["vdb"].disk_path is None
    assert rows["vdc"].volume_id is None and rows["vdc"].delete_on_termination is True   # until the spawn is done
    assert rows["vdd"].volume_id == VOL and rows["vdd"].delete_on_termination is False
    assert all(r.status == "attaching" for r in rows.values())
    assert bdm.local_disks(devices) == (LocalDisk("vdb", "blank", None, 3),)


# -- the boot request a host receives ----------------------------------------------------------------

def boot_doc(**kw):
    return {"server_id": str(uuid.uuid4()), "domain_name": "instance-x", "vcpus": 1, "memory_mb": 256,
            "image_id": IMAGE, **kw}


def test_a_boot_request_carries_the_local_disks_as_json():
    req = BootRequest.from_json(boot_doc(local_disks=[{"device_name": "vdb", "source": "blank", "size_gb": 1},
                                                      {"device_name": "vdc", "source": "image", "image_id": CHILD}]))
    assert req.local_disks == (LocalDisk("vdb", "blank", None, 1), LocalDisk("vdc", "image", CHILD, None))
    assert BootRequest.from_json(json.loads(json.dumps(req.to_json()))) == req
    assert BootRequest.from_json(boot_doc()).local_disks == ()


@pytest.mark.parametrize("disks", [
    "vdb",
    [{"device_name": "vdc", "source": "blank", "size_gb": 1}],                          # not vdb first
    [{"device_name": "vdb", "source": "blank"}],                                         # no size
    [{"device_name": "vdb", "source": "blank", "size_gb": 0}],
    [{"device_name": "vdb", "source": "blank", "size_gb": True}],
    [{"device_name": "vdb", "source": "image", "image_id": "../x"}],
    [{"device_name": "vdb", "source": "volume", "image_id": CHILD}],
    [{"device_name": "vdb", "source": "blank", "size_gb": 1, "path": "/etc/passwd"}],
    [{"device_name": "vdb", "source": "blank", "size_gb": 1}] * 26,
])
def test_a_host_refuses_a_bad_boot_request(disks):
    with pytest.raises(errors.Invalid):
        BootRequest.from_json(boot_doc(local_disks=disks))
