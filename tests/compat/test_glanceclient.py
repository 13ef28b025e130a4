"""Black-box compatibility: python-glanceclient (library and the `glance` CLI) unchanged."""

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

glanceclient = pytest.importorskip("glanceclient", reason="python-glanceclient is a test dependency")
from glanceclient import exc as glance_exc  # noqa: E402


@pytest.fixture
def glance(live_server):
    return glanceclient.Client("2", endpoint=live_server.image_url, token=live_server.member_token)


def test_library_roundtrip(glance, tmp_path):
    data = os.urandom(2 << 20)
    image = glance.images.create(name="gc-image", disk_format="raw", container_format="bare", color="red")
    assert image["status"] == "queued"
    glance.images.upload(image["id"], io.BytesIO(data), image_size=len(data))
    shown = glance.images.get(image["id"])
    assert shown["status"] == "active" and shown["checksum"] == hashlib.md5(data).hexdigest()
    assert shown["color"] == "red"
    body = b"".join(glance.images.data(image["id"]))
    assert body == data
    glance.images.update(image["id"], name="gc-renamed", remove_props=["color"])
    shown = glance.images.get(image["id"])
    assert shown["name"] == "gc-renamed" and "color" not in shown
    assert image["id"] in [i["id"] for i in glance.images.list(filters={"name": "gc-renamed"})]
    glance.images.delete(image["id"])
    with pytest.raises(glance_exc.HTTPNotFound):
        glance.images.get(image["id"])


def test_errors_carry_our_message(glance):
    image = glance.images.create(name="gc-409", disk_format="raw", container_format="bare")
    glance.images.upload(image["id"], io.BytesIO(b"once"))
    with pytest.raises(glance_exc.HTTPConflict) as err:
        glance.images.upload(image["id"], io.BytesIO(b"twice"))
    assert "active" in str(err.value)


def test_glance_cli(live_server, tmp_path):
    cli = Path(sys.executable).parent / "glance"
    if not cli.exists():
        pytest.skip("the glance CLI is not installed in this environment")
    src = tmp_path / "f.raw"
    src.write_bytes(os.urandom(100000))
    base = [str(cli), "--os-image-url", live_server.image_url, "--os-auth-token", live_server.member_token]
    out = subprocess.run(base + ["image-create", "--name", "gc-cli", "--disk-format", "raw",
                                 "--container-format", "bare", "--file", str(src)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "active" in out.stdout
    image_id = next(line.split("|")[2].strip() for line in out.stdout.splitlines() if "| id " in line)
    dest = tmp_path / "back.raw"
    got = subprocess.run(base + ["image-download", "--file", str(dest), image_id], capture_output=True, text=True,
                         timeout=60)
    assert got.returncode == 0, got.stderr
    assert dest.read_bytes() == src.read_bytes()
