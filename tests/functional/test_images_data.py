"""Image data over real HTTP: upload, download, ranges, formats, failures, races, staging."""

import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time

import httpx
import pytest

from tests.conftest import new_image

OCTET = {"Content-Type": "application/octet-stream"}


def upload(client, image_id, data, **kw):
    return client.put(f"/v2/images/{image_id}/file", content=data, headers=OCTET, **kw)


def test_states_during_and_after_upload(member):
    image = new_image(member)
    seen = []

    def body():
        yield b"a" * 65536
        seen.append(wait_status(member, image["id"], "saving"))
        yield b"b" * 65536

    with httpx.Client(base_url=member.base_url, headers=member.headers, timeout=30) as c2:
        resp = c2.put(f"/v2/images/{image['id']}/file", content=body(), headers=OCTET)
    assert resp.status_code == 204
    assert seen == ["saving"]
    assert member.get(f"/v2/images/{image['id']}").json()["status"] == "active"


def test_chunked_upload_size(member):
    image = new_image(member)
    resp = upload(member, image["id"], (b"z" * 1000 for _ in range(300)))
    assert resp.status_code == 204
    assert member.get(f"/v2/images/{image['id']}").json()["size"] == 300000


def test_virtual_size_raw_equals_size(member):
    image = new_image(member)
    upload(member, image["id"], b"q" * 4096)
    shown = member.get(f"/v2/images/{image['id']}").json()
    assert shown["virtual_size"] == shown["size"] == 4096


def test_second_upload_is_409_and_keeps_data(member):
    image = new_image(member)
    assert upload(member, image["id"], b"first").status_code == 204
    resp = upload(member, image["id"], b"second")
    assert resp.status_code == 409
    assert "active" in resp.json()["error"]["message"]
    assert member.get(f"/v2/images/{image['id']}/file").content == b"first"


def test_queued_download_is_204(member):
    image = new_image(member)
    resp = member.get(f"/v2/images/{image['id']}/file")
    assert resp.status_code == 204 and resp.content == b""


def test_upload_needs_formats(member):
    resp = member.post("/v2/images", json={"name": "noformat"})
    image_id = resp.json()["id"]
    assert upload(member, image_id, b"data").status_code == 400
    assert member.get(f"/v2/images/{image_id}").json()["status"] == "queued"


def test_upload_wrong_media_type(member):
    image = new_image(member)
    resp = member.put(f"/v2/images/{image['id']}/file", content=b"{}", headers={"Content-Type": "application/json"})
    assert resp.status_code == 415
    assert member.get(f"/v2/images/{image['id']}").json()["status"] == "queued"


@pytest.mark.parametrize("spec,status,expected,content_range", [
    ("bytes=0-9", 206, slice(0, 10), "bytes 0-9/1000"),
    ("bytes=100-", 206, slice(100, 1000), "bytes 100-999/1000"),
    ("bytes=-10", 206, slice(990, 1000), "bytes 990-999/1000"),
    ("bytes=990-5000", 206, slice(990, 1000), "bytes 990-999/1000"),
    ("bytes=1000-", 416, None, None),
    ("bytes=5-2", 416, None, None),
    ("items=0-1", 416, None, None),
])
def test_ranges(member, spec, status, expected, content_range):
    data = bytes(range(256)) * 3 + b"e" * 232
    image = new_image(member)
    upload(member, image["id"], data)
    resp = member.get(f"/v2/images/{image['id']}/file", headers={"Range": spec})
    assert resp.status_code == status
    if expected is not None:
        assert resp.content == data[expected]
        assert resp.headers["content-range"] == content_range
        assert "content-md5" not in resp.headers  # it describes the whole image, not a part
    else:
        assert resp.headers["content-range"] == "bytes */1000"


def qemu_img(*args):
    if not shutil.which("qemu-img"):
        pytest.skip("qemu-img is not installed (scripts/bootstrap installs qemu-utils)")
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


@pytest.mark.parametrize("fmt,option", [("qcow2", None), ("vmdk", None), ("vhdx", None), ("vpc", "subformat=fixed"),
                                        ("vpc", "subformat=dynamic")])
def test_real_formats_accepted_and_virtual_size(member, tmp_path, fmt, option):
    path = tmp_path / f"disk.{fmt}"
    qemu_img("create", "-f", fmt, *(["-o", option] if option else []), str(path), "64M")
    disk_format = "vhd" if fmt == "vpc" else fmt
    image = new_image(member, disk_format=disk_format)
    with open(path, "rb") as fh:
        resp = upload(member, image["id"], fh.read())
    assert resp.status_code == 204, resp.text
    shown = member.get(f"/v2/images/{image['id']}").json()
    assert shown["status"] == "active"
    if fmt in ("qcow2", "vmdk"):
        assert shown["virtual_size"] == 64 << 20


@pytest.mark.parametrize("declared,fmt", [("qcow2", "raw"), ("raw", "qcow2"), ("vmdk", "qcow2"), ("raw", "vmdk"),
                                          ("vhdx", "raw"), ("iso", "raw")])
def test_format_mismatch_is_415(member, tmp_path, declared, fmt):
    path = tmp_path / "disk"
    if fmt == "raw":
        path.write_bytes(os.urandom(200000))
    else:
        qemu_img("create", "-f", fmt, str(path), "16M")
    image = new_image(member, disk_format=declared)
    resp = upload(member, image["id"], path.read_bytes())
    assert resp.status_code == 415, resp.text
    assert declared in resp.json()["error"]["message"]
    shown = member.get(f"/v2/images/{image['id']}").json()
    assert shown["status"] == "queued" and shown["size"] is None
    # the owner can retry with the right data
    assert upload(member, image["id"], b"\0" * 1024 if declared == "raw" else path.read_bytes()).status_code in (204, 415)


def test_qcow2_with_backing_file_refused(member, tmp_path):
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-f", "qcow2", str(base), "16M")
    overlay = tmp_path / "overlay.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(overlay))
    image = new_image(member, disk_format="qcow2")
    resp = upload(member, image["id"], overlay.read_bytes())
    assert resp.status_code == 415
    assert "backing file" in resp.json()["error"]["message"]


def test_iso_detected(member, tmp_path):
    data = bytearray(40000)
    data[32769:32774] = b"CD001"
    image = new_image(member, disk_format="iso")
    assert upload(member, image["id"], bytes(data)).status_code == 204


def raw_put(server, token, image_id, headers, body_parts, close_early=False):
    """Send an upload by hand over a socket (to cut it short or misdeclare its length)."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = [f"PUT /image/v2/images/{image_id}/file HTTP/1.1", f"Host: {host}", f"X-Auth-Token: {token}",
            "Content-Type: application/octet-stream", *headers, "", ""]
    sock.sendall("\r\n".join(head).encode())
    for part in body_parts:
        sock.sendall(part)
    if close_early:
        sock.shutdown(socket.SHUT_WR)
    sock.settimeout(10)
    try:
        reply = sock.recv(65536)
    except (socket.timeout, ConnectionError):
        reply = b""
    sock.close()
    return reply


def wait_status(client, image_id, wanted, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/v2/images/{image_id}").json()["status"]
        if status == wanted:
            return status
        time.sleep(0.05)
    return status


def partial_files(server):
    return list((server.data_dir / "images" / ".partial").iterdir())


def test_interrupted_upload_returns_to_queued(fresh_server):
    with fresh_server.client() as member:
        image = new_image(member)
        raw_put(fresh_server, fresh_server.member_token, image["id"], ["Content-Length: 10000000"],
                [b"x" * 6_000_000], close_early=True)
        assert wait_status(member, image["id"], "queued") == "queued"
        shown = member.get(f"/v2/images/{image['id']}").json()
        assert shown["size"] is None and shown["checksum"] is None
        assert partial_files(fresh_server) == []
        assert not (fresh_server.data_dir / "images" / image["id"]).exists()
        # a retry succeeds
        assert upload(member, image["id"], b"y" * 1000).status_code == 204
        assert member.get(f"/v2/images/{image['id']}").json()["size"] == 1000


def test_concurrent_uploads_exactly_one_wins(member):
    image = new_image(member)
    results = []
    gate = threading.Barrier(4)

    def one(i):
        def body():
            gate.wait()
            for _ in range(20):
                yield bytes([i]) * 65536
        with httpx.Client(base_url=member.base_url, headers=member.headers, timeout=60) as c:
            results.append((i, c.put(f"/v2/images/{image['id']}/file", content=body(), headers=OCTET).status_code))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(1, 5)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    codes = sorted(code for _, code in results)
    assert codes.count(204) == 1 and codes.count(409) == 3, results
    winner = next(i for i, code in results if code == 204)
    data = member.get(f"/v2/images/{image['id']}/file").content
    assert data == bytes([winner]) * 65536 * 20


def test_delete_during_upload_gives_410_and_leaves_nothing(fresh_server):
    with fresh_server.client() as member:
        image = new_image(member)
        deleted = []

        def body():
            yield b"a" * 1_000_000
            assert wait_status(member, image["id"], "saving") == "saving"
            deleted.append(member.delete(f"/v2/images/{image['id']}").status_code)
            yield b"b" * 1_000_000

        with fresh_server.client() as c2:
            resp = c2.put(f"/v2/images/{image['id']}/file", content=body(), headers=OCTET)
        assert deleted == [204]
        assert resp.status_code == 410
        assert member.get(f"/v2/images/{image['id']}").status_code == 404
        assert not (fresh_server.data_dir / "images" / image["id"]).exists()
        assert partial_files(fresh_server) == []


def test_stage_and_import(member):
    data = os.urandom(300000)
    image = new_image(member)
    assert member.put(f"/v2/images/{image['id']}/stage", content=data, headers=OCTET).status_code == 204
    assert member.get(f"/v2/images/{image['id']}").json()["status"] == "uploading"
    assert member.put(f"/v2/images/{image['id']}/stage", content=data, headers=OCTET).status_code == 409
    resp = member.post(f"/v2/images/{image['id']}/import", json={"method": {"name": "glance-direct"}})
    assert resp.status_code == 202, resp.text
    assert wait_status(member, image["id"], "active") == "active"
    shown = member.get(f"/v2/images/{image['id']}").json()
    assert shown["os_hash_value"] == hashlib.sha512(data).hexdigest() and shown["size"] == len(data)
    assert member.get(f"/v2/images/{image['id']}/file").content == data
    tasks = member.get(f"/v2/images/{image['id']}/tasks").json()["tasks"]
    assert [t["status"] for t in tasks] == ["success"]


def test_import_needs_staging_and_a_method(member):
    image = new_image(member)
    assert member.post(f"/v2/images/{image['id']}/import", json={"method": {"name": "glance-direct"}}).status_code == 409
    assert member.post(f"/v2/images/{image['id']}/import", json={"method": {"name": "web-download"}}).status_code == 400
    assert member.post(f"/v2/images/{image['id']}/import", json={}).status_code == 400


def test_size_cap(tmp_path):
    from tests.conftest import start_server
    server = start_server(tmp_path / "capped", env={"FREEZEFRAME_IMAGES__MAX_SIZE": "100000"})
    try:
        with server.client() as member:
            image = new_image(member)
            assert upload(member, image["id"], b"x" * 100001).status_code == 413
            chunked = upload(member, image["id"], (b"x" * 10000 for _ in range(20)))
            assert chunked.status_code == 413
            assert member.get(f"/v2/images/{image['id']}").json()["status"] == "queued"
            assert upload(member, image["id"], b"x" * 100000).status_code == 204
            assert partial_files(server) == []
    finally:
        server.stop()


def test_sparse_upload_keeps_holes(fresh_server):
    size = 64 << 20
    data_block = os.urandom(1 << 20)

    def body():
        for i in range(64):
            yield data_block if i in (0, 31, 63) else bytes(1 << 20)

    with fresh_server.client() as member:
        image = new_image(member)
        assert upload(member, image["id"], body()).status_code == 204
        stored = fresh_server.data_dir / "images" / image["id"]
        st = os.stat(stored)
        assert st.st_size == size
        assert st.st_blocks * 512 <= 4 << 20  # three 1 MiB data blocks, plus slack
        expected = hashlib.sha512(b"".join(body())).hexdigest()
        assert member.get(f"/v2/images/{image['id']}").json()["os_hash_value"] == expected
        got = hashlib.sha512()
        with member.stream("GET", f"/v2/images/{image['id']}/file") as resp:
            for chunk in resp.iter_bytes():
                got.update(chunk)
        assert got.hexdigest() == expected


def test_disk_full_is_413_and_leaves_nothing(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root and mount permission) to fill a disk for real")
    from tests.conftest import start_server
    try:
        server = start_server(tmp_path / "ff", env={"FREEZEFRAME_STORE__PATH": str(mount)})
        try:
            with server.client() as member:
                image = new_image(member)
                resp = upload(member, image["id"], os.urandom(12 << 20))
                assert resp.status_code == 413
                assert "full" in resp.json()["error"]["message"]
                assert member.get(f"/v2/images/{image['id']}").json()["status"] == "queued"
                assert list((mount / ".partial").iterdir()) == []
                assert upload(member, image["id"], os.urandom(1 << 20)).status_code == 204
        finally:
            server.stop()
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
