"""A node snapshot end to end through a real `serve` process: the Ironic API's verbs, the
conductor's bare-metal workflows, the image service — fake-hardware with the ``fake`` snapshot
interface (the conductor writes a small deterministic disk's stream into the WebDAV area
itself: fast). The node goes manage -> adopt -> active -> snapshotting -> active, the workflow
through a VM snapshot's states, the image ends active with the disk's bytes and the
intermediate copy is gone. (The agent's flow, its failures and retry are driven in
tests/unit/baremetal/test_snapshot_workflow.py, with a simulated agent streaming over the real
WebDAV server.)"""

import subprocess
import time

import httpx
import pytest

from freezeframe.baremetal.drivers.snapshot import fake_disk_read
from tests.conftest import ADMIN_TOKEN, start_server

MAX = "1.116"
SIZE = 3 << 20


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("bms") / "ff",
                          env={"FREEZEFRAME_BAREMETAL__WEBDAV_BIND": "", "FREEZEFRAME_CONDUCTOR__SCAN_INTERVAL": "0.5",
                               "FREEZEFRAME_COMPUTE__DRIVER": "fake"})
    yield server
    server.stop()


def ironic(server):
    return httpx.Client(base_url=server.url + "/baremetal/v1", timeout=60,
                        headers={"X-OpenStack-Ironic-API-Version": MAX, "X-Auth-Token": ADMIN_TOKEN})


def wait_state(c, node, state, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        body = c.get(f"/nodes/{node}").json()
        if body["provision_state"] == state and body["target_provision_state"] is None:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.1)


def test_fake_node_snapshot_into_an_image(cloud, tmp_path):
    with ironic(cloud) as c, cloud.client(ADMIN_TOKEN) as images:
        resp = c.post("/nodes", json={"driver": "fake-hardware", "name": "fake-snap", "snapshot_interface": "fake",
                                      "driver_info": {"fake_disk_size": SIZE}})
        assert resp.status_code == 201, resp.text
        node = resp.json()["uuid"]
        assert c.put(f"/nodes/{node}/states/provision", json={"target": "manage"}).status_code == 202
        wait_state(c, node, "manageable")
        assert c.put(f"/nodes/{node}/states/provision", json={"target": "adopt"}).status_code == 202
        wait_state(c, node, "active")
        image = images.post("/v2/images", json={"name": "bm-snap", "disk_format": "qcow2",
                                                "container_format": "bare"}).json()
        resp = c.put(f"/nodes/{node}/states/provision", json={"target": "snapshot", "image_ref": image["id"]})
        assert resp.status_code == 202, resp.text
        body = wait_state(c, node, "active")
        assert body["last_error"] is None
        deadline = time.monotonic() + 30
        while (shown := images.get(f"/v2/images/{image['id']}").json())["status"] != "active":
            assert time.monotonic() < deadline, shown
            time.sleep(0.1)
        data = images.get(f"/v2/images/{image['id']}/file").content
    with httpx.Client(base_url=cloud.url, headers={"X-Auth-Token": ADMIN_TOKEN}, timeout=60) as wf:
        flows = wf.get("/v1/workflows", params={"resource_id": node, "kind": "baremetal-snapshot"}).json()["workflows"]
        [flow] = flows
        assert flow["state"] == "IMAGE_ACTIVE"
        history = [h["state"] for h in wf.get(f"/v1/workflows/{flow['id']}").json()["workflow"]["history"]]
    assert history[0] == "LOCAL_SNAPSHOT_STARTED" and history[-1] == "IMAGE_ACTIVE"
    assert {"LOCAL_SNAPSHOT_COMPLETE", "UPLOAD_BEGIN", "UPLOAD_COMPLETE"} <= set(history)
    src, out = tmp_path / "img.qcow2", tmp_path / "img.raw"
    src.write_bytes(data)
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(src), str(out)], check=True)
    assert out.read_bytes() == fake_disk_read(node, SIZE)(0, SIZE)
    area = cloud.data_dir / "baremetal-transfers"
    leftovers = [p.name for p in area.iterdir() if p.name != "_boot"] if area.exists() else []
    assert leftovers == []                       # the intermediate copy is removed
