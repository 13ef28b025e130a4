"""The resumable upload extension the snapshot workflows use: a cut upload keeps what arrived,
and the next request for the same upload id sends only the rest."""

import hashlib
import os
import socket
import time
import uuid

from tests.conftest import MEMBER_TOKEN, new_image
from tests.functional.test_images_data import OCTET, wait_status


def cut_upload(server, token, image_id, upload_id, total, data):
    """A resumable upload cut part-way, sent by the service acting for the user of ``token``."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall((f"PUT /image/v2/images/{image_id}/file HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {token}\r\n"
                  f"X-Service-Token: {server.service_token}\r\n"
                  f"Content-Type: application/octet-stream\r\nX-Image-Upload-Id: {upload_id}\r\n"
                  f"Content-Length: {total}\r\n\r\n").encode() + data)
    time.sleep(0.5)
    sock.close()


def test_resume_sends_only_the_rest(fresh_server):
    data = os.urandom(12 << 20)
    upload_id = str(uuid.uuid4())
    with fresh_server.service_client() as service:
        image = new_image(service)
        cut_upload(fresh_server, fresh_server.member_token, image["id"], upload_id, len(data), data[: 9 << 20])
        deadline = time.monotonic() + 10
        offset = 0
        while time.monotonic() < deadline:
            offset = service.get(f"/v2/images/{image['id']}/uploads/{upload_id}").json()["offset"]
            if offset >= 8 << 20:
                break
            time.sleep(0.1)
        assert 8 << 20 <= offset <= 9 << 20  # what arrived, kept (in whole blocks)
        assert service.get(f"/v2/images/{image['id']}").json()["status"] == "saving"
        resp = service.put(f"/v2/images/{image['id']}/file", content=data[offset:],
                           headers={**OCTET, "X-Image-Upload-Id": upload_id, "X-Image-Upload-Offset": str(offset)})
        assert resp.status_code == 204, resp.text
        shown = service.get(f"/v2/images/{image['id']}").json()
        assert shown["status"] == "active" and shown["size"] == len(data)
        assert shown["os_hash_value"] == hashlib.sha512(data).hexdigest()
        assert shown["checksum"] == hashlib.md5(data).hexdigest()
        assert service.get(f"/v2/images/{image['id']}/file").content == data


def test_resume_past_kept_data_is_409(fresh_server):
    upload_id = str(uuid.uuid4())
    with fresh_server.service_client() as service:
        image = new_image(service)
        resp = service.put(f"/v2/images/{image['id']}/file", content=b"x" * 10,
                           headers={**OCTET, "X-Image-Upload-Id": upload_id, "X-Image-Upload-Offset": "5000"})
        assert resp.status_code == 409
        assert "resume" in resp.json()["error"]["message"]


def test_resumable_uploads_are_for_the_service_role(member):
    image = new_image(member)
    resp = member.put(f"/v2/images/{image['id']}/file", content=b"x",
                      headers={**OCTET, "X-Image-Upload-Id": str(uuid.uuid4())})
    assert resp.status_code == 403
    assert member.get(f"/v2/images/{image['id']}").json()["status"] == "queued"
    assert member.post(f"/v2/images/{image['id']}/actions/kill").status_code == 403


def test_another_upload_cannot_take_over(fresh_server):
    upload_id = str(uuid.uuid4())
    with fresh_server.service_client() as service:
        image = new_image(service)
        cut_upload(fresh_server, fresh_server.member_token, image["id"], upload_id, 1 << 30, b"x" * (5 << 20))
        assert wait_status(service, image["id"], "saving") == "saving"
        other = service.put(f"/v2/images/{image['id']}/file", content=b"y",
                            headers={**OCTET, "X-Image-Upload-Id": str(uuid.uuid4())})
        assert other.status_code == 409
        plain = service.put(f"/v2/images/{image['id']}/file", content=b"y", headers=OCTET)
        assert plain.status_code == 409


def test_workflow_kills_its_image(fresh_server):
    with fresh_server.service_client() as service:
        image = new_image(service)
        assert service.post(f"/v2/images/{image['id']}/actions/kill").status_code == 204
        assert service.get(f"/v2/images/{image['id']}").json()["status"] == "killed"
        assert service.delete(f"/v2/images/{image['id']}").status_code == 204


def put_part(service, image_id, upload_id, offset, data, final):
    return service.put(f"/v2/images/{image_id}/file", content=data,
                       headers={**OCTET, "X-Image-Upload-Id": upload_id, "X-Image-Upload-Offset": str(offset),
                                "X-Image-Upload-Final": "true" if final else "false"})


def test_upload_in_parts(fresh_server):
    """Each non-final part is kept before it is acknowledged (202 with the bytes kept); the image
    stays saving until the final part; the hashes cover the whole data."""
    data = os.urandom((10 << 20) + 12345)
    cuts = [0, 3 << 20, (3 << 20) + 1, 9 << 20, len(data)]          # odd sizes, a 1-byte part
    upload_id = str(uuid.uuid4())
    with fresh_server.service_client() as service:
        image = new_image(service)
        for a, b in zip(cuts, cuts[1:]):
            final = b == len(data)
            resp = put_part(service, image["id"], upload_id, a, data[a:b], final)
            if final:
                assert resp.status_code == 204, resp.text
            else:
                assert resp.status_code == 202, resp.text
                assert int(resp.headers["x-image-upload-offset"]) == b
                assert service.get(f"/v2/images/{image['id']}/uploads/{upload_id}").json()["offset"] == b
                assert service.get(f"/v2/images/{image['id']}").json()["status"] == "saving"
        shown = service.get(f"/v2/images/{image['id']}").json()
        assert shown["status"] == "active" and shown["size"] == len(data)
        assert shown["os_hash_value"] == hashlib.sha512(data).hexdigest()
        assert shown["checksum"] == hashlib.md5(data).hexdigest()
        assert service.get(f"/v2/images/{image['id']}/file").content == data


def test_parts_survive_a_restart_and_bad_parts_are_refused(tmp_path):
    from tests.conftest import start_server
    data = os.urandom(6 << 20)
    upload_id = str(uuid.uuid4())
    server = start_server(tmp_path / "ff")
    try:
        with server.service_client() as service:
            image = new_image(service)
            assert put_part(service, image["id"], upload_id, 0, data[: 2 << 20], False).status_code == 202
            bad = service.put(f"/v2/images/{image['id']}/file", content=data[2 << 20:],
                              headers={**OCTET, "X-Image-Upload-Id": upload_id, "X-Image-Upload-Offset": str(2 << 20),
                                       "X-Image-Upload-Final": "maybe"})
            assert bad.status_code == 400 and "X-Image-Upload-Final" in bad.json()["error"]["message"]
            gap = put_part(service, image["id"], upload_id, 3 << 20, data[3 << 20:], False)
            assert gap.status_code == 409                              # past what was kept
        server.stop()
        server = start_server(tmp_path / "ff")
        with server.service_client() as service:           # the hashes are rebuilt from the store
            assert service.get(f"/v2/images/{image['id']}/uploads/{upload_id}").json()["offset"] == 2 << 20
            assert put_part(service, image["id"], upload_id, 2 << 20, data[2 << 20: 4 << 20], False).status_code == 202
            # the same part again (its acknowledgement was lost): taken from where it starts
            assert put_part(service, image["id"], upload_id, 2 << 20, data[2 << 20: 4 << 20], False).status_code == 202
            assert put_part(service, image["id"], upload_id, 4 << 20, data[4 << 20:], True).status_code == 204
            shown = service.get(f"/v2/images/{image['id']}").json()
            assert shown["status"] == "active" and shown["os_hash_value"] == hashlib.sha512(data).hexdigest()
    finally:
        server.stop()


def test_an_empty_final_part_commits_what_was_kept(fresh_server):
    """Everything was kept by non-final parts (the final request was lost): an empty final part
    makes the image active."""
    data = os.urandom(3 << 20)
    upload_id = str(uuid.uuid4())
    with fresh_server.service_client() as service:
        image = new_image(service)
        assert put_part(service, image["id"], upload_id, 0, data, False).status_code == 202
        assert service.get(f"/v2/images/{image['id']}").json()["status"] == "saving"
        assert put_part(service, image["id"], upload_id, len(data), b"", True).status_code == 204
        shown = service.get(f"/v2/images/{image['id']}").json()
        assert shown["status"] == "active" and shown["os_hash_value"] == hashlib.sha512(data).hexdigest()


def test_a_discarded_upload_leaves_the_image_queued_and_uploadable(fresh_server):
    """DELETE .../uploads/{id} (service role): what was kept goes, the image is queued again, and
    a new upload (another id) fills it; only the service may, and only the upload in progress."""
    data = os.urandom(5 << 20)
    upload_id = str(uuid.uuid4())
    with fresh_server.service_client() as service:
        image = new_image(service)
        assert put_part(service, image["id"], upload_id, 0, data[: 3 << 20], False).status_code == 202
        assert service.delete(f"/v2/images/{image['id']}/uploads/{uuid.uuid4()}").status_code == 404
        partial = fresh_server.data_dir / "images" / ".partial"
        assert [p for p in partial.iterdir() if p.name.endswith(upload_id)]        # kept, so far
        with fresh_server.client(MEMBER_TOKEN) as member:
            assert member.delete(f"/v2/images/{image['id']}/uploads/{upload_id}").status_code == 403
        assert service.get(f"/v2/images/{image['id']}").json()["status"] == "saving"
        assert service.delete(f"/v2/images/{image['id']}/uploads/{upload_id}").status_code == 204
        shown = service.get(f"/v2/images/{image['id']}").json()
        assert shown["status"] == "queued" and shown["size"] is None
        assert service.get(f"/v2/images/{image['id']}/uploads/{upload_id}").status_code == 404
        assert not [p for p in partial.iterdir() if p.name.endswith(upload_id)]    # and gone
        again = str(uuid.uuid4())
        assert put_part(service, image["id"], again, 0, data, True).status_code == 204
        assert service.get(f"/v2/images/{image['id']}").json()["status"] == "active"
        assert service.get(f"/v2/images/{image['id']}/file").content == data
