"""libvirt XML for the libvirt driver: the domain we define, the backup we start, the volume
disks we attach and snapshot, and the few facts we read back (disks, agent channel, backup
targets, a volume disk's chain). Pure functions, no connection."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from freezeframe.compute.drivers.base import GuestSpec, VolumeDisk

AGENT_CHANNEL = "org.qemu.guest_agent.0"
METADATA_NS = "http://freezeframe.dev/xmlns/libvirt/instance/1.0"
QCOW2_MAGIC = b"QFI\xfb"


@dataclass(frozen=True)
class DiskSpec:
    target: str        # "vda", "vdb", ...
    path: Path
    format: str        # "qcow2" | "raw"
    cache: str         # "none" where O_DIRECT works, else "writethrough" (as Nova does)


def image_format(path: Path) -> str:
    """qcow2 or raw, from the file's magic (no qemu-img process per disk)."""
    with open(path, "rb") as f:
        return "qcow2" if f.read(4) == QCOW2_MAGIC else "raw"


def disk_targets(count: int) -> list[str]:
    """vda, vdb, ... for ``count`` virtio disks."""
    if count > 26:
        raise ValueError("at most 26 virtio disks")
    return [f"vd{chr(ord('a') + i)}" for i in range(count)]


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def domain_xml(spec: GuestSpec, disks: list[DiskSpec], *, virt_type: str,
               console_log: Path | None = None) -> str:
    """The domain for ``spec``: virtio disks, no USB, no balloon, no graphics, no network; direct
    kernel boot when ``spec.kernel`` is set; the guest agent channel when asked for."""
    dom = ET.Element("domain", type=virt_type)
    _sub(dom, "name", spec.name)
    _sub(dom, "uuid", spec.uuid)
    if spec.metadata:
        ET.register_namespace("ff", METADATA_NS)
        meta = _sub(_sub(dom, "metadata"), f"{{{METADATA_NS}}}instance")
        for key, value in sorted(spec.metadata.items()):
            _sub(meta, f"{{{METADATA_NS}}}property", value, name=key)
    _sub(dom, "memory", str(spec.memory_mb), unit="MiB")
    _sub(dom, "vcpu", str(spec.vcpus))
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="pc")
    if spec.kernel is not None:
        _sub(os_el, "kernel", str(spec.kernel))
        if spec.initrd is not None:
            _sub(os_el, "initrd", str(spec.initrd))
        if spec.cmdline:
            _sub(os_el, "cmdline", spec.cmdline)
    else:
        _sub(os_el, "boot", dev="hd")
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    _sub(dom, "clock", offset="utc")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")

    devices = _sub(dom, "devices")
    for disk in disks:
        d = _sub(devices, "disk", type="file", device="disk")
        _sub(d, "driver", name="qemu", type=disk.format, cache=disk.cache, discard="unmap")
        _sub(d, "source", file=str(disk.path))
        _sub(d, "target", dev=disk.target, bus="virtio")
    _sub(devices, "controller", type="usb", model="none")
    _sub(devices, "memballoon", model="none")
    if console_log is not None:
        serial = _sub(devices, "serial", type="file")
        _sub(serial, "source", path=str(console_log))
    else:
        serial = _sub(devices, "serial", type="pty")
    _sub(serial, "target", port="0")
    if spec.guest_agent:
        channel = _sub(devices, "channel", type="unix")
        _sub(channel, "source", mode="bind")   # libvirt picks the socket path
        _sub(channel, "target", type="virtio", name=AGENT_CHANNEL)
    return ET.tostring(dom, encoding="unicode")


def disks(xml: str) -> list[tuple[str, Path, str]]:
    """(target, source file, format) of every file-backed disk of a domain."""
    out = []
    for d in ET.fromstring(xml).findall("./devices/disk"):
        if d.get("device", "disk") != "disk":
            continue
        source, target, driver = d.find("source"), d.find("target"), d.find("driver")
        path = source.get("file") if source is not None else None
        if path is None or target is None:
            continue
        fmt = driver.get("type", "raw") if driver is not None else "raw"
        out.append((target.get("dev"), Path(path), fmt))
    return out


def has_agent_channel(xml: str) -> bool:
    return any(t.get("name") == AGENT_CHANNEL
               for t in ET.fromstring(xml).findall("./devices/channel/target"))


def qemu_owner(xml: str) -> tuple[int, int] | None:
    """The uid:gid a running domain's QEMU runs as (its live DAC seclabel), if libvirt says."""
    for label in ET.fromstring(xml).findall("./seclabel[@model='dac']/label"):
        uid, _, gid = (label.text or "").partition(":")
        try:
            return int(uid.lstrip("+")), int(gid.lstrip("+"))
        except ValueError:
            return None
    return None


def pull_backup_xml(all_targets: list[str], scratches: dict[str, Path], socket: Path) -> str:
    """A pull-mode backup of the disks of ``scratches`` (target -> an existing qcow2 scratch
    file, BACKUP_BEGIN_REUSE_EXTERNAL), one job served over NBD on ``socket``, each disk an
    export named by its target; every other disk is listed with backup='no', or libvirt would
    export it too."""
    root = ET.Element("domainbackup", mode="pull")
    _sub(root, "server", transport="unix", socket=str(socket))
    disks_el = _sub(root, "disks")
    for name in all_targets:
        if name in scratches:
            d = _sub(disks_el, "disk", name=name, backup="yes", type="file", exportname=name)
            _sub(d, "driver", type="qcow2")
            _sub(d, "scratch", file=str(scratches[name]))
        else:
            _sub(disks_el, "disk", name=name, backup="no")
    missing = set(scratches) - set(all_targets)
    if missing:
        raise ValueError(f"no disk {', '.join(sorted(missing))} to back up")
    return ET.tostring(root, encoding="unicode")


def backup_files(xml: str) -> list[Path]:
    """The target (push) or scratch (pull) files of a running backup job (``virDomainBackupGetXMLDesc``)."""
    root = ET.fromstring(xml)
    return [Path(t.get("file")) for t in root.findall("./disks/disk/target") + root.findall("./disks/disk/scratch")
            if t.get("file")]


# -- volumes (seed 002): a file disk whose serial is the volume id ---------------------------------
def volume_disk_xml(disk: VolumeDisk, cache: str) -> str:
    """The disk of an attached volume: as the root disk (``cache``, discard), virtio, its serial
    the volume id so the guest (and we) can tell which volume it is."""
    d = ET.Element("disk", type="file", device="disk")
    _sub(d, "driver", name="qemu", type=disk.format, cache=cache, discard="unmap")
    _sub(d, "source", file=str(disk.path))
    _sub(d, "target", dev=disk.target, bus="virtio")
    _sub(d, "serial", disk.volume_id)
    return ET.tostring(d, encoding="unicode")


def _volume_elements(xml: str) -> list[tuple[str, ET.Element]]:
    out = []
    for d in ET.fromstring(xml).findall("./devices/disk"):
        serial = d.findtext("serial")
        if serial and d.get("device", "disk") == "disk" and d.get("type") == "file":
            out.append((serial, d))
    return out


def volume_element(xml: str, volume_id: str) -> ET.Element | None:
    """The ``<disk>`` whose serial is ``volume_id`` (None: not attached)."""
    return next((d for serial, d in _volume_elements(xml) if serial == volume_id), None)


def _volume(serial: str, d: ET.Element) -> VolumeDisk | None:
    source, target, driver = d.find("source"), d.find("target"), d.find("driver")
    if source is None or source.get("file") is None or target is None:
        return None
    fmt = driver.get("type", "raw") if driver is not None else "raw"
    return VolumeDisk(volume_id=serial, target=target.get("dev", ""), path=Path(source.get("file")), format=fmt)


def volume_disks(xml: str) -> list[VolumeDisk]:
    """The volumes (disks with a serial) of a domain, as its XML runs them."""
    return [v for serial, d in _volume_elements(xml) if (v := _volume(serial, d)) is not None]


def volume_disk(xml: str, volume_id: str) -> VolumeDisk | None:
    d = volume_element(xml, volume_id)
    return None if d is None else _volume(volume_id, d)


def volume_element_xml(xml: str, volume_id: str) -> str | None:
    d = volume_element(xml, volume_id)
    return None if d is None else ET.tostring(d, encoding="unicode")


def disk_target_used(xml: str, target: str) -> bool:
    return any(t.get("dev") == target for t in ET.fromstring(xml).findall("./devices/disk/target"))


def all_disk_targets(xml: str) -> list[str]:
    return [t.get("dev") for t in ET.fromstring(xml).findall("./devices/disk/target") if t.get("dev")]


def disk_alias(xml: str, volume_id: str) -> str | None:
    d = volume_element(xml, volume_id)
    alias = d.find("alias") if d is not None else None
    return alias.get("name") if alias is not None else None


def volume_chain(xml: str, volume_id: str) -> list[tuple[Path, str]]:
    """(file, format) of the volume's disk and of each backing file libvirt knows, top first.
    A persistent definition may hold only the top (libvirt probes the rest at start)."""
    d = volume_element(xml, volume_id)
    if d is None:
        return []
    driver = d.find("driver")
    out = [(Path(d.find("source").get("file")), driver.get("type", "raw") if driver is not None else "raw")]
    node = d.find("backingStore")
    while node is not None and node.find("source") is not None:
        fmt = node.find("format")
        out.append((Path(node.find("source").get("file")), fmt.get("type") if fmt is not None else "raw"))
        node = node.find("backingStore")
    return out


def with_source(disk: ET.Element, path: Path, fmt: str) -> str:
    """The disk element moved onto ``path`` (``fmt``), without the chain libvirt recorded
    under it (libvirt reads the new chain from the images at the next start)."""
    d = ET.fromstring(ET.tostring(disk))
    for node in d.findall("backingStore") + d.findall("alias"):
        d.remove(node)
    driver = d.find("driver")
    if driver is None:
        driver = _sub(d, "driver", name="qemu")
    driver.set("type", fmt)
    source = d.find("source")
    source.attrib.pop("index", None)
    source.set("file", str(path))
    return ET.tostring(d, encoding="unicode")


def disk_snapshot_xml(all_targets: list[str], target: str, new_file: Path) -> str:
    """An external disk-only snapshot of ``target`` onto the existing qcow2 ``new_file``
    (REUSE_EXT); every other disk listed with snapshot='no' (else libvirt snapshots it too)."""
    return disks_snapshot_xml(all_targets, {target: new_file})


def disks_snapshot_xml(all_targets: list[str], new_files: dict[str, Path]) -> str:
    """One external disk-only snapshot (one QEMU transaction: one instant) of the disks of
    ``new_files`` (target -> the existing qcow2 it continues on, REUSE_EXT); every other disk
    listed with snapshot='no'."""
    root = ET.Element("domainsnapshot")
    disks_el = _sub(root, "disks")
    for name in all_targets:
        if name in new_files:
            d = _sub(disks_el, "disk", name=name, snapshot="external", type="file")
            _sub(d, "driver", type="qcow2")
            _sub(d, "source", file=str(new_files[name]))
        else:
            _sub(disks_el, "disk", name=name, snapshot="no")
    missing = set(new_files) - set(all_targets)
    if missing:
        raise ValueError(f"no disk {', '.join(sorted(missing))} to snapshot")
    return ET.tostring(root, encoding="unicode")
