import itertools
import os

import pytest

from .davserver import PASSWORD, USER, DavServer

MiB = 1024 * 1024
_COUNTER = itertools.count()


@pytest.fixture(scope="module")
def dav_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("area")
    server = DavServer(str(root))
    server.root = root
    yield server
    server.stop()


@pytest.fixture
def dav(dav_server):
    """The module's WebDAV server with a fresh collection for this test: .op_dir, .op_url."""
    server = dav_server
    name = f"op-{next(_COUNTER)}"
    server.op_dir = server.root / name
    server.op_dir.mkdir()
    server.op_url = server.url(name + "/")
    server.user, server.password = USER, PASSWORD
    tap = server.tap
    tap.put_bytes, tap.puts, tap.methods, tap.fail_from = 0, [], [], None
    return server


def make_disk(path, size, regions):
    """A sparse file of `size` bytes with `regions` = {offset: bytes} written into it."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in regions.items():
            f.seek(offset)
            f.write(data)
    return str(path)


def pattern(seed: int, length: int) -> bytes:
    block = (bytes([seed % 251 + 1]) + os.urandom(4095)) if seed >= 0 else b""
    return (block * (length // 4096 + 1))[:length]
