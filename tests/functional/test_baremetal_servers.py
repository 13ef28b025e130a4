"""Bare-metal servers end to end through a real `serve` process (issue 10, item 6): a node of the
bare-metal API (fake-hardware, the fake snapshot interface) adopted as active becomes a server
of the compute API; createImage on it runs the node's snapshot workflow into a queued image
with the same workflow states and properties as a VM snapshot; deleting the server clears the
node's instance_uuid and leaves the node active.

Nothing is faked here: the node reaches active through the bare-metal adopt workflow and its
snapshot through the bare-metal snapshot workflow, both run by the embedded conductor."""

import sqlite3
import subprocess
import time

import httpx
import pytest

from freezeframe.baremetal.drivers.snapshot import fake_disk_read
from tests.conftest import ADMIN_TOKEN, MEMBER_TOKEN, SERVICE_TOKEN, start_server
from tests.nova_faults import nova_fault

IRONIC = {"X-OpenStack-Ironic-API-Version": "1.116"}
NOVA = {"X-OpenStack-Nova-API-Version": "2.45"}
DISK = 4 << 20          # the fake node's disk: small, with holes


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("bms") / "ff",
                          env={"FREEZEFRAME_BAREMETAL__WEBDAV_BIND": "", "FREEZEFRAME_CONDUCTOR__SCAN_INTERVAL": "0.5"})
    yield server
    server.stop()


def ironic(server, token=ADMIN_TOKEN):
    return httpx.Client(base_url=server.url + "/baremetal/v1", timeout=60,
                        headers={"X-Auth-Token": token, **IRONIC})


def nova(server, token=ADMIN_TOKEN, **headers):
    return httpx.Client(base_url=server.url + "/compute/v2.1", timeout=60,
                        headers={"X-Auth-Token": token, **NOVA, **headers})


def wait_node(c, ident, state, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        node = c.get(f"/nodes/{ident}").json()
        if node["provision_state"] == state and node["target_provision_state"] is None:
            return node
        time.sleep(0.1)
    raise AssertionError(f"node {ident} not {state}: {node}")


def active_node(server, name, **driver_info):
    """A fake-hardware node taken through manage and adopt by the bare-metal workflows."""
    with ironic(server) as c:
        resp = c.post("/nodes", json={"driver": "fake-hardware", "name": name, "snapshot_interface": "fake",
                                      "driver_info": {"fake_disk_size": DISK, **driver_info},
                                      "properties": {"cpus": 4, "memory_mb": 8192, "local_gb": 40}})
        assert resp.status_code == 201, resp.text
        node = resp.json()
        for verb, reached in (("manage", "manageable"), ("adopt", "active")):
            resp = c.put(f"/nodes/{name}/states/provision", json={"target": verb})
            assert resp.status_code == 202, resp.text
            node = wait_node(c, name, reached)
    return node


def adopt(server, node, token=ADMIN_TOKEN, **extra):
    with nova(server, token, **extra) as c:
        return c.post("/os-freezeframe-adopt", json={"adopt": {"node": node}})


def wait_task_cleared(c, server_id, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = c.get(f"/servers/{server_id}").json()["server"]
        if body["OS-EXT-STS:task_state"] is None:
            return body
        time.sleep(0.1)
    raise AssertionError(f"server {server_id} still in task_state {body['OS-EXT-STS:task_state']}")


def wait_workflow(server, workflow_id, states, timeout=60):
    with httpx.Client(base_url=server.url, headers={"X-Auth-Token": ADMIN_TOKEN}, timeout=30) as c:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            wf = c.get(f"/v1/workflows/{workflow_id}").json()["workflow"]
            if wf["state"] in states:
                return wf
            time.sleep(0.1)
    raise AssertionError(f"workflow {workflow_id} stuck in {wf['state']}: {wf}")


def image_bytes(server, image, tmp_path) -> bytes:
    """The image's disk (qcow2 checked and converted, or raw)."""
    with server.client(ADMIN_TOKEN) as images:
        data = images.get(f"/v2/images/{image['id']}/file").content
    if image["disk_format"] == "raw":
        return data
    out, raw = tmp_path / "snap.qcow2", tmp_path / "snap.raw"
    out.write_bytes(data)
    subprocess.run(["qemu-img", "check", "-q", str(out)], check=True)
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(out), str(raw)], check=True)
    return raw.read_bytes()


def db_set(server, node_id, **values):
    """Put a node where only a failing conductor would (a state no API verb reaches)."""
    con = sqlite3.connect(server.data_dir / "freezeframe.db", timeout=10)
    with con:
        con.execute(f"UPDATE baremetal_nodes SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
                    [*values.values(), node_id])
    con.close()


def test_adopted_node_is_a_server_and_create_image_snapshots_it(cloud, tmp_path):
    node = active_node(cloud, "bm-1")
    # the adopt workflow itself gave the active node its server record, and the node names it
    assert node["instance_uuid"]
    with nova(cloud) as c:
        made = c.get(f"/servers/{node['instance_uuid']}").json()["server"]
        assert made["OS-EXT-SRV-ATTR:hypervisor_hostname"] == node["uuid"] and made["name"] == "bm-1"
    resp = adopt(cloud, "bm-1")
    assert resp.status_code == 201, resp.text
    server = resp.json()["server"]
    server_id = server["id"]
    assert server_id == node["instance_uuid"]       # the same one: adopting again makes no other
    assert server["status"] == "ACTIVE" and server["OS-EXT-STS:vm_state"] == "active"
    assert server["OS-EXT-STS:task_state"] is None and server["name"] == "bm-1"
    assert server["OS-EXT-SRV-ATTR:hypervisor_hostname"] == node["uuid"]
    assert server["OS-EXT-SRV-ATTR:host"] is None
    assert server["OS-EXT-STS:power_state"] == (1 if node["power_state"] == "power on" else 4)
    # adopting it again gives the same server; the node names it
    again = adopt(cloud, node["uuid"])
    assert again.status_code == 201 and again.json()["server"]["id"] == server_id
    with ironic(cloud) as c:
        assert c.get("/nodes/bm-1").json()["instance_uuid"] == server_id
    with nova(cloud) as c:
        listed = c.get("/servers/detail").json()["servers"]
        mine = next(s for s in listed if s["id"] == server_id)
        assert mine["OS-EXT-SRV-ATTR:hypervisor_hostname"] == node["uuid"]
        assert mine["flavor"]["id"] == "baremetal"
        flavor = c.get(f"/servers/{server_id}", headers={"X-OpenStack-Nova-API-Version": "2.47"}).json()
        assert flavor["server"]["flavor"]["original_name"] == "baremetal"
        assert (flavor["server"]["flavor"]["vcpus"], flavor["server"]["flavor"]["ram"]) == (4, 8192)
    with nova(cloud, MEMBER_TOKEN) as c:   # another project's server; and no hypervisor for non-admins
        assert c.get(f"/servers/{server_id}").status_code == 404

    # createImage: the image queued at once, Nova's 2.45 answer, the workflow's id in the header
    with nova(cloud) as c:
        resp = c.post(f"/servers/{server_id}/action", json={"createImage": {"name": "bm-snap",
                                                                           "metadata": {"purpose": "golden"}}})
        assert resp.status_code == 202, resp.text
        image_id, workflow_id = resp.json()["image_id"], resp.headers["x-freezeframe-workflow-id"]
        assert workflow_id
        # a second one while the first runs: 409, as for a VM
        busy = c.post(f"/servers/{server_id}/action", json={"createImage": {"name": "bm-snap-2"}})
        assert busy.status_code == 409, busy.text
    wf = wait_workflow(cloud, workflow_id, {"IMAGE_ACTIVE", "REVERTED", "CANCELLED"})
    assert wf["state"] == "IMAGE_ACTIVE", wf
    assert wf["kind"] == "baremetal-snapshot" and wf["resource_id"] == node["uuid"]
    assert wf["progress"] == 100
    states = []
    with httpx.Client(base_url=cloud.url, headers={"X-Auth-Token": ADMIN_TOKEN}) as c:
        history = c.get(f"/v1/workflows/{workflow_id}").json()["workflow"]["history"]
    for h in history:
        if not states or states[-1] != h["state"]:
            states.append(h["state"])
    # the same walk as a VM snapshot (seed 000)
    assert states[:3] == ["LOCAL_SNAPSHOT_STARTED", "LOCAL_SNAPSHOT_COMPLETE", "UPLOAD_BEGIN"], states
    assert states[-2:] == ["UPLOAD_COMPLETE", "IMAGE_ACTIVE"], states
    assert all(s.startswith("UPLOAD_") and s.endswith("_COMPLETE") for s in states[3:-2]), states
    with cloud.client(ADMIN_TOKEN) as images:
        image = images.get(f"/v2/images/{image_id}").json()
    assert image["status"] == "active" and image["owner"] == "admin-project", image
    assert image["instance_uuid"] == server_id and image["image_type"] == "snapshot"
    assert image["purpose"] == "golden" and image["name"] == "bm-snap"
    assert image["os_freezeframe_workflow_id"] == workflow_id
    assert image["os_freezeframe_workflow_state"] == "IMAGE_ACTIVE"
    assert image["os_freezeframe_workflow_progress"] == "100"
    assert image_bytes(cloud, image, tmp_path) == fake_disk_read(node["uuid"], DISK)(0, DISK)
    with nova(cloud) as c:
        shown = wait_task_cleared(c, server_id, timeout=15)
        assert shown["status"] == "ACTIVE" and shown.get("fault") is None
        actions = c.get(f"/servers/{server_id}/os-instance-actions").json()["instanceActions"]
        assert [a["action"] for a in actions] == ["createImage"]
    with ironic(cloud) as c:
        assert wait_node(c, "bm-1", "active")["instance_uuid"] == server_id

    # deleting the server: its record goes, the node stays active and is free again
    with nova(cloud) as c:
        assert c.delete(f"/servers/{server_id}").status_code == 204
        assert c.get(f"/servers/{server_id}").status_code == 404
    with ironic(cloud) as c:
        node = c.get("/nodes/bm-1").json()
        assert node["instance_uuid"] is None and node["provision_state"] == "active"


def test_a_failed_node_snapshot_frees_the_server(cloud):
    active_node(cloud, "bm-fail", fake_snapshot_error="the disk fell off")
    server_id = adopt(cloud, "bm-fail").json()["server"]["id"]
    with nova(cloud) as c:
        resp = c.post(f"/servers/{server_id}/action", json={"snapshot": {"name": "bm-fail-snap", "devices": None}})
        assert resp.status_code == 202, resp.text
        workflow_id = resp.json()["workflow_id"]
        assert workflow_id == resp.headers["x-freezeframe-workflow-id"]
        wf = wait_workflow(cloud, workflow_id, {"FAILED", "REVERTED", "CANCELLED", "IMAGE_ACTIVE"})
        assert wf["state"] in ("FAILED", "REVERTED") and "the disk fell off" in (wf["failure_reason"] or ""), wf
        shown = wait_task_cleared(c, server_id, timeout=15)
        assert shown["OS-EXT-STS:vm_state"] == "active"
    with ironic(cloud) as c:
        assert wait_node(c, "bm-fail", "snapshot failed")["last_error"]


def test_node_not_active_and_bad_input_are_refused(cloud):
    with ironic(cloud) as c:
        resp = c.post("/nodes", json={"driver": "fake-hardware", "name": "bm-enroll"})
        assert resp.status_code == 201, resp.text
    resp = adopt(cloud, "bm-enroll")
    assert resp.status_code == 409 and "enroll" in nova_fault(resp)["message"], resp.text
    assert adopt(cloud, "no-such-node").status_code == 404
    for body in ({"adopt": {"node": ""}}, {"adopt": {"node": 7}}, {"adopt": {"node": "bm-1", "bogus": 1}},
                 {"adopt": {"node": "bm-1", "name": " padded "}}):
        with nova(cloud) as c:
            resp = c.post("/os-freezeframe-adopt", json=body)
        assert resp.status_code == 400, (body, resp.text)
    # a project member may not adopt; a service acting for one may (the server is theirs)
    assert adopt(cloud, "bm-enroll", MEMBER_TOKEN).status_code == 403

    node = active_node(cloud, "bm-2")
    first = adopt(cloud, "bm-2")          # the admin's (or the one the adopt workflow made): given up
    assert first.status_code == 201
    resp = adopt(cloud, "bm-2", MEMBER_TOKEN, **{"X-Service-Token": SERVICE_TOKEN})
    assert resp.status_code == 409 and first.json()["server"]["id"] in nova_fault(resp)["message"]
    with nova(cloud) as c:
        assert c.delete(f"/servers/{first.json()['server']['id']}").status_code == 204
    resp = adopt(cloud, "bm-2", MEMBER_TOKEN, **{"X-Service-Token": SERVICE_TOKEN})
    assert resp.status_code == 201, resp.text
    server = resp.json()["server"]
    assert server["tenant_id"] == "project-a" and "OS-EXT-SRV-ATTR:hypervisor_hostname" not in server
    server_id = server["id"]
    with nova(cloud, MEMBER_TOKEN) as c:
        assert c.get(f"/servers/{server_id}").status_code == 200
        # os-stop / os-start power the node
        assert c.post(f"/servers/{server_id}/action", json={"os-stop": None}).status_code == 202
        stopped = c.get(f"/servers/{server_id}").json()["server"]
        assert (stopped["status"], stopped["OS-EXT-STS:power_state"]) == ("SHUTOFF", 4)
        with ironic(cloud) as bm:
            assert bm.get("/nodes/bm-2").json()["power_state"] == "power off"
        assert c.post(f"/servers/{server_id}/action", json={"os-start": None}).status_code == 202
        assert c.get(f"/servers/{server_id}").json()["server"]["status"] == "ACTIVE"
        # only its root disk; no backup rotation for a node
        resp = c.post(f"/servers/{server_id}/action", json={"snapshot": {"name": "x", "devices": ["vdb"]}})
        assert resp.status_code == 400 and "vdb" in nova_fault(resp)["message"]
        resp = c.post(f"/servers/{server_id}/action",
                      json={"createBackup": {"name": "x", "backup_type": "daily", "rotation": 1}})
        assert resp.status_code == 409
        # the node not active (a conductor left it in error): 409 naming its state, nothing made
        db_set(cloud, node["uuid"], provision_state="error")
        resp = c.post(f"/servers/{server_id}/action", json={"createImage": {"name": "not-now"}})
        assert resp.status_code == 409 and "provision state 'error'" in nova_fault(resp)["message"], resp.text
        assert c.get(f"/servers/{server_id}").json()["server"]["OS-EXT-STS:task_state"] is None
    with cloud.client(MEMBER_TOKEN) as images:
        assert not [i for i in images.get("/v2/images").json()["images"] if i["name"] == "not-now"]
    db_set(cloud, node["uuid"], provision_state="active")
    with nova(cloud, MEMBER_TOKEN) as c:
        assert c.delete(f"/servers/{server_id}").status_code == 204
    with ironic(cloud) as c:
        assert c.get("/nodes/bm-2").json()["instance_uuid"] is None


def test_without_a_baremetal_service_node_servers_are_a_409(tmp_path):
    server = start_server(tmp_path / "ff", env={"FREEZEFRAME_BAREMETAL__ENABLED": "false"})
    try:
        resp = adopt(server, "any-node")
        assert resp.status_code == 409 and "no bare-metal service" in nova_fault(resp)["message"], resp.text
    finally:
        server.stop()
