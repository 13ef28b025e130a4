"""Disk image format inspection: what the data really is, whatever disk_format claims.

Looks only at the first ``HEAD_BYTES`` and the last 512 bytes of the stream, so it costs
nothing on the data path. A mismatch between the claimed disk_format and the data is refused
(415), as Glance does; so are qcow2 files that reference other files (backing or data file)
and vmdk descriptors that point at extents, which could read host files when used.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from freezeframe.common import errors

HEAD_BYTES = 64 << 10
TAIL_BYTES = 512

# Formats whose signature we check; others (ami, ari, aki, ploop) are accepted as they are.
CHECKED = {"raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi", "iso"}
# Formats that, found inside data claimed to be raw, would be interpreted by a hypervisor.
_DANGEROUS_IN_RAW = {"qcow2", "vmdk", "vhdx", "vdi", "vhd"}

_QCOW2_MAGIC = b"QFI\xfb"
_VMDK_MAGIC = b"KDMV"
_VHD_COOKIE = b"conectix"
_VHDX_MAGIC = b"vhdxfile"
_VDI_MAGIC = 0xBEDA107F
_ISO_OFFSETS = (32769, 34817, 36865)
_VMDK_OK_TYPES = {"monolithicSparse", "streamOptimized"}


@dataclass(frozen=True)
class Detected:
    format: str
    # Size of the disk the image describes, where the header says it (None: same as size).
    virtual_size: int | None = None


def detect_head(head: bytes) -> Detected:
    """Identify a format from the first bytes of an image (the tail is checked later)."""
    if head[:4] == _QCOW2_MAGIC and len(head) >= 32:
        return _qcow2(head)
    if head[:4] == _VMDK_MAGIC and len(head) >= 44:
        return _vmdk_sparse(head)
    if head[:21] == b"# Disk DescriptorFile":
        raise errors.UnsupportedMediaType(
            "vmdk descriptor files that reference extents are not accepted; "
            "upload a monolithicSparse or streamOptimized vmdk"
        )
    if head[:8] == _VHDX_MAGIC:
        return Detected("vhdx")
    if head[:8] == _VHD_COOKIE and len(head) >= 56:
        return Detected("vhd", struct.unpack(">Q", head[48:56])[0])
    if len(head) >= 0x44 and struct.unpack("<I", head[0x40:0x44])[0] == _VDI_MAGIC:
        return Detected("vdi", struct.unpack("<Q", head[0x170:0x178])[0] if len(head) >= 0x178 else None)
    for off in _ISO_OFFSETS:
        if head[off:off + 5] == b"CD001":
            return Detected("iso")
    return Detected("raw")


def _qcow2(head: bytes) -> Detected:
    version, = struct.unpack(">I", head[4:8])
    backing_offset, = struct.unpack(">Q", head[8:16])
    size, = struct.unpack(">Q", head[24:32])
    if version not in (2, 3):
        raise errors.UnsupportedMediaType(f"qcow2 version {version} is not supported")
    if backing_offset:
        raise errors.UnsupportedMediaType("qcow2 images with a backing file are not accepted")
    if version == 3 and len(head) >= 80:
        incompatible, = struct.unpack(">Q", head[72:80])
        if incompatible & 0x4:
            raise errors.UnsupportedMediaType("qcow2 images with an external data file are not accepted")
    return Detected("qcow2", size)


def _vmdk_sparse(head: bytes) -> Detected:
    capacity, = struct.unpack("<Q", head[12:20])
    desc_sector, desc_sectors = struct.unpack("<QQ", head[28:44])
    if desc_sector and desc_sectors:
        desc = head[desc_sector * 512:(desc_sector + desc_sectors) * 512]
        match = re.search(rb'createType\s*=\s*"([^"]+)"', desc)
        if match and match.group(1).decode(errors="replace") not in _VMDK_OK_TYPES:
            raise errors.UnsupportedMediaType(
                f"vmdk createType {match.group(1).decode(errors='replace')!r} is not accepted; "
                "upload a monolithicSparse or streamOptimized vmdk"
            )
    return Detected("vmdk", capacity * 512)


def detect(head: bytes, tail: bytes) -> Detected:
    found = detect_head(head)
    if found.format == "raw" and len(tail) >= TAIL_BYTES and tail[-TAIL_BYTES:][:8] == _VHD_COOKIE:
        footer = tail[-TAIL_BYTES:]
        return Detected("vhd", struct.unpack(">Q", footer[48:56])[0])
    return found


def check_head(declared: str | None, found: Detected) -> None:
    """The early check, on the first bytes: a fixed VHD is only recognisable by its footer."""
    if declared == "vhd" and found.format == "raw":
        return
    check(declared, found)


def check(declared: str | None, found: Detected) -> None:
    """Refuse data whose real format does not match the image's disk_format (415)."""
    if declared not in CHECKED:
        return
    if declared == "raw":
        if found.format in _DANGEROUS_IN_RAW and found.format != "vhd":
            raise errors.UnsupportedMediaType(
                f"Image data is in {found.format} format but disk_format is raw"
            )
        return
    if found.format != declared:
        raise errors.UnsupportedMediaType(
            f"Image data is in {found.format} format but disk_format is {declared}"
        )
