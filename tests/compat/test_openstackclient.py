"""python-openstackclient, unchanged, with the clouds.yaml `serve` generates and no endpoint
overrides: it logs in through /identity and finds every API in the service catalog."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import LiveServer, start_server

OPENSTACK = shutil.which("openstack", path=str(Path(sys.executable).parent)) or shutil.which("openstack")
pytestmark = pytest.mark.skipif(OPENSTACK is None, reason="python-openstackclient is a test dependency")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    srv = start_server(tmp_path_factory.mktemp("ff-osc"))
    yield srv
    srv.stop()


def openstack(server: LiveServer, *args: str, cloud: str = "freezeframe") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(OS_CLIENT_CONFIG_FILE=str(server.data_dir / "clouds.yaml"), OS_CLOUD=cloud,
               HOME=str(server.data_dir))
    out = subprocess.run([OPENSTACK, *args], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"openstack {' '.join(args)}: {out.stderr[-2000:]}"
    return out


def test_image_and_server_list_token_issue_catalog_list(server, tmp_path):
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\x00" * 65536)
    created = json.loads(openstack(server, "image", "create", "--file", str(disk), "--disk-format", "raw",
                                   "--container-format", "bare", "osc-image", "-f", "json",
                                   cloud="freezeframe-demo").stdout)
    assert created["status"] == "active" and created["owner"] == "demo"
    images = json.loads(openstack(server, "image", "list", "-f", "json", cloud="freezeframe-demo").stdout)
    assert "osc-image" in [i["Name"] for i in images]
    assert json.loads(openstack(server, "server", "list", "-f", "json").stdout) == []
    token = json.loads(openstack(server, "token", "issue", "-f", "json").stdout)
    assert token["project_id"] == "admin" and token["user_id"] == "admin" and token["id"].startswith("fft_")
    catalog = json.loads(openstack(server, "catalog", "list", "-f", "json").stdout)
    assert {entry["Type"] for entry in catalog} == {"identity", "image", "compute", "block-storage", "baremetal",
                                                    "freezeframe-workflow"}
    urls = "".join(str(entry["Endpoints"]) for entry in catalog)
    assert server.url + "/compute/v2.1" in urls and server.url + "/image" in urls
    assert server.url + "/volume/v3/admin" in urls
