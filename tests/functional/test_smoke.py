import hashlib

from tests.conftest import new_image


def test_upload_download_roundtrip(member):
    data = b"x" * 1000 + bytes(200000) + b"y" * 5000
    image = new_image(member)
    assert image["status"] == "queued"
    resp = member.put(f"/v2/images/{image['id']}/file", content=data,
                      headers={"Content-Type": "application/octet-stream"})
    assert resp.status_code == 204, resp.text
    shown = member.get(f"/v2/images/{image['id']}").json()
    assert shown["status"] == "active"
    assert shown["size"] == len(data)
    assert shown["checksum"] == hashlib.md5(data).hexdigest()
    assert shown["os_hash_algo"] == "sha512"
    assert shown["os_hash_value"] == hashlib.sha512(data).hexdigest()
    got = member.get(f"/v2/images/{image['id']}/file")
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["content-md5"] == shown["checksum"]
