"""The transfer area's WebDAV server, for real on loopback: each operation's credential reaches
its own collection only (PUT, MOVE, PROPFIND there; another path or a MOVE out of it 403, the
root not listed), a wrong password or a removed transfer is 401, and the boot share is read-only
without credentials."""

from __future__ import annotations

import hashlib
import uuid

import httpx
import pytest

from freezeframe.baremetal.model import Node, Transfer
from freezeframe.baremetal.webdav import WebDavServer, transfer_lookup
from freezeframe.common.timeutil import utcnow


def add_transfer(db, node_id, password):
    transfer_id = str(uuid.uuid4())
    username = "ff-" + uuid.uuid4().hex[:16]
    db.run_sync(lambda s: s.add(Transfer(id=transfer_id, node_id=node_id, username=username, path=transfer_id,
                                         password_sha256=hashlib.sha256(password.encode()).hexdigest())))
    return transfer_id, username


@pytest.fixture
def dav(db, tmp_path):
    node_id = str(uuid.uuid4())
    db.run_sync(lambda s: s.add(Node(id=node_id, name="n1", driver="fake-hardware", power_interface="fake",
                                     boot_interface="fake", snapshot_interface="fake", provision_state="active")))
    area = tmp_path / "area"
    server = WebDavServer(area, "127.0.0.1:0", transfer_lookup(db), boot_dir=tmp_path / "boot")
    server.start()
    (tmp_path / "boot" / "node.iso").write_bytes(b"ISO")
    try:
        yield server, node_id, area
    finally:
        server.stop()


def test_own_collection_only(db, dav):
    server, node_id, area = dav
    mine, me = add_transfer(db, node_id, "secret-1")
    theirs, _ = add_transfer(db, node_id, "secret-2")
    for t in (mine, theirs):
        (area / t).mkdir()
    with httpx.Client(base_url=server.url, auth=(me, "secret-1"), timeout=10) as c:
        assert c.put(f"/{mine}/c-00000000.part", content=b"x" * 1000).status_code in (201, 204)
        moved = c.request("MOVE", f"/{mine}/c-00000000.part",
                          headers={"Destination": f"{server.url}/{mine}/c-00000000.bin", "Overwrite": "T"})
        assert moved.status_code in (201, 204)
        assert (area / mine / "c-00000000.bin").read_bytes() == b"x" * 1000
        listing = c.request("PROPFIND", f"/{mine}/", headers={"Depth": "1"})
        assert listing.status_code == 207 and "c-00000000.bin" in listing.text
        assert c.get(f"/{mine}/c-00000000.bin").content == b"x" * 1000
        # anything else: 403
        assert c.put(f"/{theirs}/c-00000000.bin", content=b"y").status_code == 403
        assert c.get(f"/{theirs}/").status_code == 403
        assert c.request("PROPFIND", "/", headers={"Depth": "1"}).status_code == 403
        assert c.put(f"/{mine}/../{theirs}/evil", content=b"y").status_code in (400, 403, 404)
        out = c.request("MOVE", f"/{mine}/c-00000000.bin", headers={"Destination": f"{server.url}/{theirs}/stolen"})
        assert out.status_code == 403
        assert c.put("/_boot/evil.iso", content=b"y").status_code == 403
        assert c.delete(f"/{mine}").status_code == 403
    assert not (area / theirs / "c-00000000.bin").exists() and not (area / theirs / "stolen").exists()
    assert list((area / theirs).iterdir()) == []


def test_wrong_unknown_missing_or_removed_credentials_are_401(db, dav):
    server, node_id, area = dav
    mine, me = add_transfer(db, node_id, "secret-1")
    (area / mine).mkdir()
    with httpx.Client(base_url=server.url, timeout=10) as c:
        assert c.put(f"/{mine}/a", content=b"x", auth=(me, "wrong")).status_code == 401
        assert c.put(f"/{mine}/a", content=b"x", auth=("nobody", "secret-1")).status_code == 401
        resp = c.put(f"/{mine}/a", content=b"x")
        assert resp.status_code == 401 and "Basic" in resp.headers["WWW-Authenticate"]
        assert c.put(f"/{mine}/a", content=b"x", auth=(me, "secret-1")).status_code in (201, 204)

        def remove(session):
            session.get(Transfer, mine).removed_at = utcnow()
        db.run_sync(remove)
        assert c.put(f"/{mine}/b", content=b"x", auth=(me, "secret-1")).status_code == 401
    assert not (area / mine / "b").exists()


def test_boot_share_is_read_only_without_credentials(dav):
    server, _node_id, _area = dav
    with httpx.Client(base_url=server.url, timeout=10) as c:
        assert c.get("/_boot/node.iso").content == b"ISO"
        assert c.put("/_boot/node.iso", content=b"evil").status_code in (401, 403)
        assert c.delete("/_boot/node.iso").status_code in (401, 403)
        assert c.get("/").status_code == 401


def test_a_bind_on_port_0_gives_the_bmcs_boot_url_its_port(db, tmp_path):
    """The BMCs' default boot URL is the bind address's (drivers.Interfaces); a bind on port 0
    names its port only once the server listens: area_server's start fills it in."""
    from types import SimpleNamespace

    from freezeframe.baremetal.drivers import Interfaces
    from freezeframe.baremetal.webdav import area_server

    def manager(**over):
        settings = SimpleNamespace(**{**dict(
            enabled_hardware_types="fake-hardware,redfish", enabled_power_interfaces="fake,redfish",
            enabled_boot_interfaces="fake,redfish-virtual-media", enabled_snapshot_interfaces="fake,no-snapshot,agent",
            transfer_path=str(tmp_path / "area"), webdav_bind="127.0.0.1:0", webdav_url="", agent_iso="",
            agent_iso_url="", power_timeout=60.0), **over})
        urls = []
        return SimpleNamespace(settings=settings, interfaces=Interfaces(settings), db=db,
                               area=SimpleNamespace(root=tmp_path / "area"), set_webdav_url=urls.append)

    for over, expected in (({}, "http://127.0.0.1:{port}/_boot"),
                           ({"webdav_bind": "0.0.0.0:0"}, "http://127.0.0.1:{port}/_boot"),
                           ({"agent_iso_url": "https://files.example/iso"}, "https://files.example/iso")):
        m = manager(**over)
        server = area_server(m)
        server.start()
        try:
            assert m.interfaces.boot_url == expected.format(port=server.port)
        finally:
            server.stop()


def test_a_port_already_taken_is_a_clear_error_naming_the_setting(db, dav, tmp_path):
    """A second serve on the same host finds the transfer area's port taken: its start fails
    with what to change, not a bare socket traceback."""
    from freezeframe.common import errors

    first, _node, _area = dav
    second = WebDavServer(tmp_path / "other", f"127.0.0.1:{first.port}", transfer_lookup(db))
    with pytest.raises(errors.BackendUnavailable) as caught:
        second.start()
    assert f"127.0.0.1:{first.port}" in caught.value.message
    assert "webdav_bind" in caught.value.message and "FREEZEFRAME_BAREMETAL__WEBDAV_BIND" in caught.value.message
    second.stop()       # nothing started: a no-op


def test_a_new_chunk_is_written_without_truncating_and_a_rewrite_replaces_it(db, dav, monkeypatch):
    """A new name is written into the empty file wsgidav made, never opened with O_TRUNC (on
    ext4 a truncation to 0 flushes the file to disk when it is closed: every chunk then went to
    the disk at once); a name written again is replaced whole, no old byte left behind."""
    import os
    server, node_id, area = dav
    mine, me = add_transfer(db, node_id, "secret-1")
    (area / mine).mkdir()
    opened: list[tuple[str, int]] = []
    real_open = os.open

    def spy(path, flags, *args, **kwargs):
        opened.append((str(path), flags))
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(os, "open", spy)
    data = bytes(range(256)) * 8192          # 2 MiB: more than one of wsgidav's blocks
    with httpx.Client(base_url=server.url, auth=(me, "secret-1"), timeout=10) as c:
        assert c.put(f"/{mine}/c-00000003.part", content=data).status_code in (201, 204)
        assert (area / mine / "c-00000003.part").read_bytes() == data
        writes = [flags for path, flags in opened if path.endswith("c-00000003.part") and flags & os.O_WRONLY]
        assert writes and not any(flags & os.O_TRUNC for flags in writes)
        # the data went past the page cache where the filesystem takes O_DIRECT (not tmpfs)
        assert any(flags & os.O_DIRECT for flags in writes) == _takes_direct(area)
        assert c.put(f"/{mine}/c-00000003.part", content=b"short").status_code in (201, 204)
    assert (area / mine / "c-00000003.part").read_bytes() == b"short"


def _takes_direct(directory) -> bool:
    import os
    probe = directory / ".probe"
    probe.write_bytes(b"")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_DIRECT))
        return True
    except OSError:
        return False
    finally:
        probe.unlink()
