"""Block devices and Ironic's root device hints.

Semantics follow ironic-python-agent's device_hints (over oslo.utils' specs_matcher), written
anew without pyparsing:
- hints: size (GiB, int), model, wwn, serial, vendor, wwn_with_extension, wwn_vendor_extension,
  name, hctl, by_path, tran (strings), rotational (bool);
- a hint without an operator means ``s==`` for strings and ``==`` for size;
- strings compare lowercased with whitespace and special characters URL-quoted on both sides;
- operators: s== s!= s< s<= s> s>= (strings), == = != < <= > >= (numbers; ``=`` means >=, as in
  oslo), ``<in>`` (substring), ``<or> a <or> b``;
- a device must satisfy every hint; the first matching device (in name order) wins.
Without hints: the smallest disk of at least 4 GiB. Deliberate differences: ``<or>`` on size
compares numbers (oslo compares a float with strings and never matches), and a name hint
without a slash gets "/dev/" in front.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from urllib.parse import quote

from .config import DiskSpec, parse_bool

GiB = 1024**3
MIN_ROOT_SIZE = 4 * GiB

HINT_TYPES: dict[str, type] = {
    "size": int,
    "model": str,
    "wwn": str,
    "serial": str,
    "vendor": str,
    "wwn_with_extension": str,
    "wwn_vendor_extension": str,
    "name": str,
    "rotational": bool,
    "hctl": str,
    "by_path": str,
    "tran": str,
}

# Longest first, so "==" is not read as "=" and "s<=" not as "s<".
UNARY_OPS = ("s==", "s!=", "s<=", "s>=", "s<", "s>", "<in>", "==", "!=", "<=", ">=", "=", "<", ">")
OR_OP = "<or>"
UNSUPPORTED_OPS = ("<all-in>", "<range-in>")

SKIPPED_PREFIXES = ("loop", "ram", "sr", "dm-", "zram", "fd", "nbd")


class DeviceNotFound(Exception):
    """No disk matches the root device hints (or none is big enough without hints)."""


class InvalidHints(ValueError):
    """The root device hints cannot be parsed."""


@dataclasses.dataclass(frozen=True)
class BlockDevice:
    name: str  # what the name hint matches, e.g. /dev/sda
    path: str  # what the agent opens
    size: int  # bytes
    model: str | None = None
    vendor: str | None = None
    serial: str | None = None
    wwn: str | None = None
    wwn_with_extension: str | None = None
    wwn_vendor_extension: str | None = None
    rotational: bool | None = None
    hctl: str | None = None
    by_path: str | None = None
    tran: str | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Hint parsing


@dataclasses.dataclass(frozen=True)
class Hint:
    name: str
    op: str
    values: tuple  # str for string hints, int for size, bool for rotational


def _split_expression(expression: str, name: str) -> tuple[str, list[str]]:
    text = str(expression).strip().lower()
    if not text:
        raise InvalidHints(f"Root device hint {name} expression is empty")
    for op in UNSUPPORTED_OPS:
        if text.startswith(op):
            raise InvalidHints(f"Root device hint {name}: operator {op} is not supported")
    if text.startswith(OR_OP):
        values = [v.strip() for v in text.split(OR_OP)]
        values = [v for v in values if v]
        if not values:
            raise InvalidHints(f"Root device hint {name}: {expression!r} has no values")
        return OR_OP, values
    for op in UNARY_OPS:
        if text.startswith(op):
            value = text[len(op) :].strip()
            if not value:
                raise InvalidHints(f"Root device hint {name}: {expression!r} has no value")
            return op, [value]
    return "", [text]


def _norm(value: str) -> str:
    return quote(str(value).strip().lower())


def parse_hints(hints: dict | None) -> list[Hint]:
    """Validate root device hints; raise InvalidHints saying what is wrong."""
    if not hints:
        return []
    if not isinstance(hints, dict):
        raise InvalidHints("root device hints must be an object")
    invalid = sorted(set(hints) - set(HINT_TYPES))
    if invalid:
        raise InvalidHints(
            f'The hints "{", ".join(invalid)}" are invalid. Valid hints are: "{", ".join(HINT_TYPES)}"'
        )
    parsed = []
    for name, expression in hints.items():
        kind = HINT_TYPES[name]
        if kind is bool:
            try:
                parsed.append(Hint(name, "==", (parse_bool(str(expression)),)))
            except ValueError:
                raise InvalidHints(
                    f'Root device hint "{name}" is not a Boolean value. Current value: {expression}'
                ) from None
            continue
        if kind is str and not isinstance(expression, str):
            raise InvalidHints(f'Root device hint "{name}" is not a string value. Hint expression: {expression}')
        if isinstance(expression, bool) or not isinstance(expression, (str, int)):
            raise InvalidHints(f'Root device hint "{name}" has an invalid value: {expression!r}')
        op, values = _split_expression(expression, name)
        if kind is int:
            if op.startswith("s") or op == "<in>":
                raise InvalidHints(f'Root device hint "{name}": operator {op} is for strings')
            numbers = []
            for v in values:
                try:
                    number = int(v)
                except ValueError:
                    raise InvalidHints(
                        f'Root device hint "{name}" is not an integer value. Current value: {expression}'
                    ) from None
                if number <= 0:
                    raise InvalidHints(
                        f'Root device hint "{name}" should be a positive integer. Current value: {expression}'
                    )
                numbers.append(number)
            parsed.append(Hint(name, op or "==", tuple(numbers)))
        else:
            if name == "name" and op in ("", "s==") and "/" not in values[0]:
                values = ["/dev/" + values[0]]
            parsed.append(Hint(name, op or "s==", tuple(_norm(v) for v in values)))
    return parsed


_NUM_OPS = {
    "==": lambda x, y: x == y,
    "=": lambda x, y: x >= y,  # oslo's legacy meaning
    "!=": lambda x, y: x != y,
    "<": lambda x, y: x < y,
    "<=": lambda x, y: x <= y,
    ">": lambda x, y: x > y,
    ">=": lambda x, y: x >= y,
}
_STR_OPS = {
    "s==": lambda x, y: x == y,
    "s!=": lambda x, y: x != y,
    "s<": lambda x, y: x < y,
    "s<=": lambda x, y: x <= y,
    "s>": lambda x, y: x > y,
    "s>=": lambda x, y: x >= y,
    "<in>": lambda x, y: y in x,
}


def _matches(hint: Hint, device: BlockDevice) -> bool:
    value = getattr(device, hint.name)
    if value is None or value == "":
        return False
    kind = HINT_TYPES[hint.name]
    if kind is bool:
        return bool(value) == hint.values[0]
    if kind is int:
        x = value / GiB  # size hints are GiB, the device's size bytes
        if hint.op == OR_OP:
            return any(x == float(v) for v in hint.values)
        return _NUM_OPS[hint.op](x, float(hint.values[0]))
    x = _norm(value)
    if hint.op == OR_OP:
        return any(x == v for v in hint.values)
    if hint.op in _STR_OPS:
        return _STR_OPS[hint.op](x, hint.values[0])
    try:  # a numeric operator on a string hint compares numbers, as oslo does
        return _NUM_OPS[hint.op](float(x), float(hint.values[0]))
    except ValueError:
        return False


def find_devices(devices: list[BlockDevice], hints: dict | None) -> list[BlockDevice]:
    parsed = parse_hints(hints)
    return [d for d in devices if all(_matches(h, d) for h in parsed)]


def choose_root_device(devices: list[BlockDevice], hints: dict | None) -> BlockDevice:
    """The root device: the first disk matching the hints, else the smallest >= 4 GiB."""
    devices = sorted(devices, key=lambda d: d.name)
    names = ", ".join(f"{d.name} ({d.size} bytes)" for d in devices) or "none"
    if hints:
        found = find_devices(devices, hints)
        if not found:
            raise DeviceNotFound(f"No disk matches the root device hints {hints}; disks: {names}")
        return found[0]
    big = [d for d in devices if d.size >= MIN_ROOT_SIZE]
    if not big:
        raise DeviceNotFound(f"No disk of at least 4 GiB was found (no root device hints given); disks: {names}")
    return min(big, key=lambda d: d.size)


def hints_from_node(node: dict | None) -> dict | None:
    """instance_info.root_device, then properties.root_device (Ironic's order)."""
    node = node or {}
    for section in ("instance_info", "properties"):
        hints = (node.get(section) or {}).get("root_device")
        if hints:
            return hints
    return None


# ---------------------------------------------------------------------------------------------
# Discovery


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            value = f.read().strip()
    except OSError:
        return None
    return value or None


def _udev_properties(sys_dir: str) -> dict[str, str]:
    dev = _read(os.path.join(sys_dir, "dev"))
    props: dict[str, str] = {}
    if not dev:
        return props
    try:
        with open(f"/run/udev/data/b{dev}", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("E:"):
                    key, _, value = line[2:].rstrip("\n").partition("=")
                    props[key] = value
    except OSError:
        pass
    return props


def _by_path(devname: str, by_path_dir: str = "/dev/disk/by-path") -> str | None:
    for link in sorted(glob.glob(os.path.join(by_path_dir, "*"))):
        try:
            if os.path.realpath(link) == f"/dev/{devname}":
                return link
        except OSError:
            continue
    return None


def _wwn_from_wwid(wwid: str | None) -> str | None:
    # sysfs says "naa.5000c500a1b2c3d4"; udev's ID_WWN (what Ironic matches) says "0x5000c500a1b2c3d4"
    if not wwid:
        return None
    m = re.match(r"^(naa|eui)\.([0-9a-fA-F]+)$", wwid)
    return f"0x{m.group(2).lower()}" if m else wwid


def sysfs_device(devname: str, sys_block: str = "/sys/block") -> BlockDevice | None:
    d = os.path.join(sys_block, devname)
    sectors = _read(os.path.join(d, "size"))
    if sectors is None:
        return None
    udev = _udev_properties(d)
    rot = _read(os.path.join(d, "queue", "rotational"))
    hctl = None
    scsi = glob.glob(os.path.join(d, "device", "scsi_device", "*"))
    if scsi:
        hctl = os.path.basename(scsi[0])
    wwn = udev.get("ID_WWN") or _wwn_from_wwid(_read(os.path.join(d, "device", "wwid")) or _read(os.path.join(d, "wwid")))
    wwn_ext = udev.get("ID_WWN_WITH_EXTENSION") or wwn
    return BlockDevice(
        name=f"/dev/{devname}",
        path=f"/dev/{devname}",
        size=int(sectors) * 512,
        model=_read(os.path.join(d, "device", "model")) or udev.get("ID_MODEL"),
        vendor=_read(os.path.join(d, "device", "vendor")) or udev.get("ID_VENDOR"),
        serial=udev.get("ID_SERIAL_SHORT")
        or _read(os.path.join(d, "device", "serial"))
        or _read(os.path.join(d, "serial")),
        wwn=wwn,
        wwn_with_extension=wwn_ext,
        wwn_vendor_extension=udev.get("ID_WWN_VENDOR_EXTENSION"),
        rotational=(rot == "1") if rot is not None else None,
        hctl=hctl,
        by_path=udev.get("ID_PATH") and f"/dev/disk/by-path/{udev['ID_PATH']}" or _by_path(devname),
        tran=udev.get("ID_BUS"),
    )


def list_sysfs(sys_block: str = "/sys/block") -> list[BlockDevice]:
    devices = []
    try:
        names = sorted(os.listdir(sys_block))
    except OSError:
        return []
    for name in names:
        if name.startswith(SKIPPED_PREFIXES):
            continue
        dev = sysfs_device(name, sys_block)
        if dev is not None and dev.size > 0:
            devices.append(dev)
    return devices


def _size_of(path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def from_spec(spec: DiskSpec, sys_block: str = "/sys/block") -> BlockDevice:
    """A --disk candidate: sysfs facts for a /dev node (if any), the spec's values over them."""
    base = None
    if spec.path.startswith("/dev/"):
        base = sysfs_device(os.path.basename(os.path.realpath(spec.path)), sys_block)
    values = base.as_dict() if base else {}
    values["path"] = spec.path
    values["name"] = spec.name or spec.path
    for key in ("model", "serial", "vendor", "wwn", "rotational"):
        if getattr(spec, key) is not None:
            values[key] = getattr(spec, key)
    # size= is what hints see (a small test file can pose as a big disk); the stream always
    # covers the file's or device's real bytes
    values["size"] = spec.size if spec.size is not None else (values.get("size") or _size_of(spec.path))
    return BlockDevice(**values)


def list_devices(specs: tuple[DiskSpec, ...] | list[DiskSpec] = (), sys_block: str = "/sys/block") -> list[BlockDevice]:
    if specs:
        return [from_spec(s, sys_block) for s in specs]
    return list_sysfs(sys_block)
