"""Black-box compatibility: openstacksdk drives our image API unchanged."""

import hashlib
import os

import pytest

openstack = pytest.importorskip("openstack", reason="openstacksdk is a test dependency")


def connect(server, token):
    """The way a user points openstacksdk at us: a token and an image endpoint override."""
    return openstack.connect(auth_type="admin_token", auth={"endpoint": server.image_url, "token": token},
                             image_endpoint_override=server.image_url, image_api_version="2")


@pytest.fixture
def conn(live_server):
    return connect(live_server, live_server.member_token)


@pytest.fixture
def other_conn(live_server):
    return connect(live_server, live_server.other_token)


def test_create_upload_list_download_verify(conn, tmp_path):
    data = os.urandom(3 << 20)
    path = tmp_path / "disk.raw"
    path.write_bytes(data)
    image = conn.image.create_image(name="sdk-image", filename=str(path), disk_format="raw",
                                    container_format="bare", wait=True, validate_checksum=True,
                                    use_import=False, meta={"purpose": "compat"})
    image = conn.image.get_image(image.id)
    assert image.status == "active"
    assert image.size == len(data)
    assert image.checksum == hashlib.md5(data).hexdigest()
    assert image.hash_algo == "sha512" and image.hash_value == hashlib.sha512(data).hexdigest()
    assert image.id in [i.id for i in conn.image.images(name="sdk-image")]
    assert image.properties.get("purpose") == "compat" or getattr(image, "purpose", None) == "compat"
    out = tmp_path / "out.raw"
    conn.image.download_image(image, output=str(out))
    assert out.read_bytes() == data
    conn.image.update_image(image, name="sdk-renamed")
    assert conn.image.get_image(image.id).name == "sdk-renamed"
    conn.image.add_tag(image, "gold")
    assert "gold" in conn.image.get_image(image.id).tags
    conn.image.delete_image(image)
    assert conn.image.find_image(image.id) is None


def test_import_through_sdk(conn):
    data = os.urandom(1 << 20)
    image = conn.image.create_image(name="sdk-import", disk_format="raw", container_format="bare",
                                    allow_duplicates=True)
    conn.image.stage_image(image, data=data)
    conn.image.import_image(image, method="glance-direct")
    image = conn.image.wait_for_status(image, status="active", failures=["killed", "queued"], wait=30)
    assert image.size == len(data)


def test_isolation_through_sdk(conn, other_conn):
    image = conn.image.create_image(name="sdk-private", disk_format="raw", container_format="bare",
                                    visibility="private", allow_duplicates=True)
    with pytest.raises(openstack.exceptions.NotFoundException):
        other_conn.image.get_image(image.id)
    conn.image.delete_image(image)


def test_errors_surface_with_message(conn):
    image = conn.image.create_image(name="sdk-protected", disk_format="raw", container_format="bare",
                                    is_protected=True, allow_duplicates=True)
    with pytest.raises(openstack.exceptions.HttpException) as err:
        conn.image.delete_image(image)
    assert err.value.status_code == 403
    assert "protected" in str(err.value)


def test_token_endpoint_auth_type(live_server):
    """openstackclient users often write auth_type token_endpoint (an alias of admin_token)."""
    conn = openstack.connect(auth_type="token_endpoint",
                             auth={"endpoint": live_server.image_url, "token": live_server.member_token},
                             image_endpoint_override=live_server.image_url, image_api_version="2")
    image = conn.image.create_image(name="sdk-token-endpoint", disk_format="raw", container_format="bare",
                                    allow_duplicates=True)
    assert conn.image.get_image(image.id).owner == "project-a"
    conn.image.delete_image(image)
