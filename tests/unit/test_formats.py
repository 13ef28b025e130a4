import struct

import pytest

from freezeframe.common import errors
from freezeframe.images import formats


def qcow2_header(version=3, backing=0, size=1 << 30, incompatible=0):
    head = b"QFI\xfb" + struct.pack(">IQI", version, backing, 0) + struct.pack(">IQ", 16, size)
    head = head.ljust(72, b"\0") + struct.pack(">Q", incompatible)
    return head.ljust(formats.HEAD_BYTES, b"\0")


def test_qcow2_virtual_size():
    assert formats.detect_head(qcow2_header(size=20 << 30)) == formats.Detected("qcow2", 20 << 30)


@pytest.mark.parametrize("kw,message", [({"backing": 512}, "backing file"), ({"incompatible": 4}, "data file"),
                                        ({"version": 9}, "version 9")])
def test_dangerous_qcow2_refused(kw, message):
    with pytest.raises(errors.UnsupportedMediaType, match=message):
        formats.detect_head(qcow2_header(**kw))


def test_vmdk_descriptor_refused():
    with pytest.raises(errors.UnsupportedMediaType, match="descriptor"):
        formats.detect_head(b"# Disk DescriptorFile\nversion=1\n")


def test_vmdk_sparse_create_type_checked():
    desc = b'# Disk DescriptorFile\ncreateType="vmfsSparse"\n'
    head = b"KDMV" + struct.pack("<IIQQQQ", 1, 3, 2048, 16, 1, 1)
    head = head.ljust(512, b"\0") + desc.ljust(512, b"\0")
    with pytest.raises(errors.UnsupportedMediaType, match="vmfsSparse"):
        formats.detect_head(head)


def test_raw_and_iso():
    assert formats.detect_head(b"\0" * 1000).format == "raw"
    iso = bytearray(40000)
    iso[32769:32774] = b"CD001"
    assert formats.detect_head(bytes(iso)).format == "iso"


def test_fixed_vhd_found_by_its_footer():
    footer = b"conectix".ljust(48, b"\0") + struct.pack(">Q", 5 << 20)
    found = formats.detect(b"\0" * 4096, footer.ljust(512, b"\0"))
    assert found == formats.Detected("vhd", 5 << 20)
    formats.check_head("vhd", formats.detect_head(b"\0" * 4096))  # deferred to the footer, no error


@pytest.mark.parametrize("declared,found,ok", [
    ("raw", "raw", True), ("raw", "iso", True), ("raw", "qcow2", False), ("raw", "vmdk", False),
    ("qcow2", "raw", False), ("qcow2", "qcow2", True), ("iso", "raw", False), ("ami", "qcow2", True),
    (None, "qcow2", True),
])
def test_check(declared, found, ok):
    if ok:
        formats.check(declared, formats.Detected(found))
    else:
        with pytest.raises(errors.UnsupportedMediaType):
            formats.check(declared, formats.Detected(found))
