"""Servers and their snapshots end to end through the real server process, with the fake virt
driver (the libvirt driver has its own tests): top half, conductor, workflow, image."""

import hashlib
import os
import subprocess
import time

import httpx
import pytest

from tests.conftest import new_image, start_server

NOVA = {"X-OpenStack-Nova-API-Version": "2.45"}


@pytest.fixture
def cloud(tmp_path):
    server = start_server(tmp_path / "ff", env={"FREEZEFRAME_COMPUTE__DRIVER": "fake",
                                                "FREEZEFRAME_CONDUCTOR__SCAN_INTERVAL": "0.5"})
    yield server
    server.stop()


def compute(server, token=None):
    return httpx.Client(base_url=server.url + "/compute/v2.1", timeout=60,
                        headers={"X-Auth-Token": token or server.member_token, **NOVA})


def boot(server, tmp_path, data=None):
    disk = tmp_path / "disk.raw"
    data = data or (os.urandom(1 << 20) + bytes(6 << 20) + os.urandom(1 << 20))
    disk.write_bytes(data)
    with server.client() as images:
        image = new_image(images, name="base", hw_qemu_guest_agent="yes")
        assert images.put(f"/v2/images/{image['id']}/file", content=data,
                          headers={"Content-Type": "application/octet-stream"}).status_code == 204
    with compute(server) as nova:
        resp = nova.post("/servers", json={"server": {"name": "vm1", "imageRef": image["id"], "flavorRef": "1"}})
        assert resp.status_code == 202, resp.text
        server_id = resp.json()["server"]["id"]
        shown = wait_server(nova, server_id, "ACTIVE")
        assert shown["OS-EXT-STS:task_state"] is None
    return server_id, image, data


def wait_server(nova, server_id, status, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = nova.get(f"/servers/{server_id}").json()["server"]
        if body["status"] == status and body["OS-EXT-STS:task_state"] is None:
            return body
        time.sleep(0.1)
    raise AssertionError(f"server {server_id} not {status}: {body}")


def snapshot(server, server_id, name):
    """POST createImage; returns (image_id, workflow_id) after asserting the 202."""
    with compute(server) as nova:
        resp = nova.post(f"/servers/{server_id}/action", json={"createImage": {"name": name}})
    assert resp.status_code == 202, resp.text
    return resp.json()["image_id"], resp.headers["x-freezeframe-workflow-id"]


def snapshot_data(server, image_id, tmp_path, token=None) -> bytes:
    """The snapshot image's disk contents (qcow2 downloaded, checked, converted to raw)."""
    out, raw = tmp_path / "snap.qcow2", tmp_path / "snap.raw"
    with server.client(token) if token else server.client() as images:
        out.write_bytes(images.get(f"/v2/images/{image_id}/file").content)
    subprocess.run(["qemu-img", "check", "-q", str(out)], check=True)
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(out), str(raw)], check=True)
    return raw.read_bytes()


def wait_workflow(server, workflow_id, states, timeout=60, token=None):
    with httpx.Client(base_url=server.url, headers={"X-Auth-Token": token or server.member_token}) as c:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            wf = c.get(f"/v1/workflows/{workflow_id}").json()["workflow"]
            if wf["state"] in states:
                return wf
            time.sleep(0.1)
    raise AssertionError(f"workflow {workflow_id} stuck in {wf['state']}: {wf}")


def test_snapshot_end_to_end(cloud, tmp_path):
    server_id, base, data = boot(cloud, tmp_path)
    with compute(cloud) as nova:
        resp = nova.post(f"/servers/{server_id}/action", json={"createImage": {"name": "snap-1",
                                                                              "metadata": {"purpose": "test"}}})
        assert resp.status_code == 202, resp.text
        image_id = resp.json()["image_id"]
        workflow_id = resp.headers["x-freezeframe-workflow-id"]
    wf = wait_workflow(cloud, workflow_id, {"IMAGE_ACTIVE", "REVERTED", "FAILED"})
    assert wf["state"] == "IMAGE_ACTIVE", wf
    assert wf["progress"] == 100 and wf["owner_alive"] is True and wf["stalled"] is False
    states = [h["state"] for h in httpx.get(f"{cloud.url}/v1/workflows/{workflow_id}",
                                            headers={"X-Auth-Token": cloud.member_token}).json()["workflow"]["history"]]
    assert states[:3] == ["LOCAL_SNAPSHOT_STARTED", "LOCAL_SNAPSHOT_COMPLETE", "UPLOAD_BEGIN"]
    assert states[-2:] == ["UPLOAD_COMPLETE", "IMAGE_ACTIVE"]
    with cloud.client() as images:
        image = images.get(f"/v2/images/{image_id}").json()
        assert image["status"] == "active" and image["owner"] == "project-a"
        assert image["instance_uuid"] == server_id and image["image_type"] == "snapshot"
        assert image["base_image_ref"] == base["id"] and image["purpose"] == "test"
        assert image["os_freezeframe_workflow_state"] == "IMAGE_ACTIVE"
        assert image["os_freezeframe_workflow_id"] == workflow_id
    assert hashlib.sha256(snapshot_data(cloud, image_id, tmp_path)).hexdigest() == hashlib.sha256(data).hexdigest()
    with compute(cloud) as nova:
        server = wait_server(nova, server_id, "ACTIVE")
        assert server["OS-EXT-STS:vm_state"] == "active"
        actions = nova.get(f"/servers/{server_id}/os-instance-actions").json()["instanceActions"]
        create = next(a for a in actions if a["action"] == "createImage")
        events = nova.get(f"/servers/{server_id}/os-instance-actions/{create['request_id']}",
                          headers={"X-OpenStack-Nova-API-Version": "2.84"}).json()["instanceAction"]["events"]
        assert {e["event"] for e in events} >= {"conductor_snapshot_instance", "local_snapshot", "upload_image"}
        assert all(e["result"] == "Success" and e["finish_time"] for e in events)


def test_snapshot_preconditions_and_bad_input(cloud, tmp_path):
    server_id, _, _ = boot(cloud, tmp_path)
    with compute(cloud) as nova:
        assert nova.post("/servers/00000000-0000-0000-0000-000000000000/action",
                         json={"createImage": {"name": "x"}}).status_code == 404
        assert nova.post(f"/servers/{server_id}/action", json={"createImage": {}}).status_code == 400
        assert nova.post(f"/servers/{server_id}/action", json={"createImage": {"name": "x", "metadata": {"a": 1}}}
                         ).status_code == 400
        for rotation in (-1, "x", True, None):
            resp = nova.post(f"/servers/{server_id}/action",
                             json={"createBackup": {"name": "b", "backup_type": "daily", "rotation": rotation}})
            assert resp.status_code == 400, rotation
        assert nova.post(f"/servers/{server_id}/action", json={"bogus": {}}).status_code == 400
        assert nova.get("/servers", headers={"X-OpenStack-Nova-API-Version": "9.99"}).status_code == 406
    with compute(cloud, cloud.other_token) as stranger:
        assert stranger.post(f"/servers/{server_id}/action", json={"createImage": {"name": "x"}}).status_code == 404


def test_concurrent_snapshots_one_wins(cloud, tmp_path):
    server_id, _, _ = boot(cloud, tmp_path)
    import threading
    codes = []

    def snap(i):
        with compute(cloud) as nova:
            codes.append(nova.post(f"/servers/{server_id}/action", json={"createImage": {"name": f"s{i}"}}).status_code)

    threads = [threading.Thread(target=snap, args=(i,)) for i in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(codes) == [202, 409, 409], codes
    with cloud.client() as images:
        snaps = images.get("/v2/images", params={"instance_uuid": server_id}).json()["images"]
        assert len(snaps) == 1  # the losers left no image behind


def test_backup_rotation(cloud, tmp_path):
    server_id, _, _ = boot(cloud, tmp_path)
    made = []
    with compute(cloud) as nova:
        for i in range(3):
            resp = nova.post(f"/servers/{server_id}/action",
                             json={"createBackup": {"name": f"b{i}", "backup_type": "daily", "rotation": 2}})
            assert resp.status_code == 202, resp.text
            made.append(resp.json()["image_id"])
            wf = wait_workflow(cloud, resp.headers["x-freezeframe-workflow-id"], {"IMAGE_ACTIVE", "REVERTED"})
            assert wf["state"] == "IMAGE_ACTIVE"
    with cloud.client() as images:
        left = {i["id"] for i in images.get("/v2/images", params={"instance_uuid": server_id,
                                                                  "image_type": "backup"}).json()["images"]}
    assert left == set(made[1:])  # the oldest was rotated away


def test_failure_reverts_everything(tmp_path):
    server = start_server(tmp_path / "ff", env={"FREEZEFRAME_TESTING__FAKE_FAIL_ON": "copy"})
    try:
        server_id, _, _ = boot(server, tmp_path)
        image_id, workflow_id = snapshot(server, server_id, "doomed")
        with compute(server) as nova:
            wf = wait_workflow(server, workflow_id, {"REVERTED", "IMAGE_ACTIVE", "CANCELLED"})
            assert wf["state"] == "REVERTED"
            assert "injected failure at copy" in wf["failure_reason"]
            assert wf["last_good_state"] == "LOCAL_SNAPSHOT_STARTED"
            shown = wait_server(nova, server_id, "ACTIVE")
            assert shown["OS-EXT-STS:vm_state"] == "active" and shown["OS-EXT-STS:task_state"] is None
            assert "injected failure" in shown["fault"]["message"]
        with server.client() as images:
            assert images.get(f"/v2/images/{image_id}").status_code == 404  # killed, then deleted
        assert not list((server.data_dir / "instances" / "_snapshots").glob(f"{workflow_id}*"))
    finally:
        server.stop()


def test_cancel_reverts(tmp_path):
    server = start_server(tmp_path / "ff", env={"FREEZEFRAME_TESTING__FAKE_COPY_DELAY": "0.5"})
    try:
        server_id, _, _ = boot(server, tmp_path)
        image_id, workflow_id = snapshot(server, server_id, "cancel-me")
        with httpx.Client(base_url=server.url, headers={"X-Auth-Token": server.member_token}) as c:
            assert c.delete(f"/v1/workflows/{workflow_id}").status_code == 202
        wf = wait_workflow(server, workflow_id, {"CANCELLED", "REVERTED", "IMAGE_ACTIVE"})
        assert wf["state"] == "CANCELLED", wf
        with server.client() as images:
            assert images.get(f"/v2/images/{image_id}").status_code == 404
        with compute(server) as nova:
            assert wait_server(nova, server_id, "ACTIVE")["OS-EXT-STS:task_state"] is None
        with httpx.Client(base_url=server.url, headers={"X-Auth-Token": server.member_token}) as c:
            assert c.delete(f"/v1/workflows/{workflow_id}").status_code == 409  # already ended
            assert c.get(f"/v1/workflows/{workflow_id}", headers={"X-Auth-Token": server.other_token}).status_code == 404
    finally:
        server.stop()


def test_adopt_an_existing_domain_and_snapshot_it(tmp_path):
    """An operator's VM that Freezeframe did not create becomes a server and can be snapshotted."""
    import json as jsonlib
    data_dir = tmp_path / "ff"
    data_dir.mkdir()
    disk = tmp_path / "legacy.raw"
    payload = os.urandom(1 << 20) + bytes(3 << 20)
    disk.write_bytes(payload)
    spec = {"name": "legacy-vm", "uuid": "6f1c2a3b-0000-4000-8000-00000000abcd", "vcpus": 1, "memory_mb": 256,
            "root_disk": str(disk), "extra_disks": [], "kernel": None, "initrd": None, "cmdline": None,
            "guest_agent": False, "metadata": {}}
    (data_dir / "fake-host.json").write_text(jsonlib.dumps({"legacy-vm": {"state": "running", "agent": False,
                                                                          "spec": spec}}))
    server = start_server(data_dir)
    try:
        with compute(server, server.member_token) as nova:
            assert nova.post("/os-freezeframe-adopt", json={"adopt": {"domain": "legacy-vm"}}).status_code == 403
        with compute(server, server.admin_token) as nova:
            assert nova.post("/os-freezeframe-adopt", json={"adopt": {"domain": "nope"}}).status_code == 404
            resp = nova.post("/os-freezeframe-adopt", json={"adopt": {"domain": "legacy-vm"}})
            assert resp.status_code == 201, resp.text
            adopted = resp.json()["server"]
            assert adopted["id"] == spec["uuid"] and adopted["status"] == "ACTIVE"
            assert nova.post("/os-freezeframe-adopt", json={"adopt": {"domain": "legacy-vm"}}).status_code == 409
            snap = nova.post(f"/servers/{adopted['id']}/action", json={"createImage": {"name": "legacy-snap"}})
            assert snap.status_code == 202, snap.text
        wf = wait_workflow(server, snap.headers["x-freezeframe-workflow-id"], {"IMAGE_ACTIVE", "REVERTED"},
                           token=server.admin_token)
        assert wf["state"] == "IMAGE_ACTIVE", wf
        with server.client(server.admin_token) as images:
            image = images.get(f"/v2/images/{snap.json()['image_id']}").json()
            assert image["disk_format"] == "qcow2" and image["size"] < len(payload) + (1 << 20)
        assert snapshot_data(server, image["id"], tmp_path, token=server.admin_token) == payload
        assert disk.read_bytes() == payload   # the operator's disk is untouched
    finally:
        server.stop()


def test_snapshot_with_postgresql_and_redis(tmp_path):
    """The scale-out backends: workflows and taskflow's persistence on PostgreSQL, liveness on Redis."""
    import socket as socketlib
    from tests.pg import temp_database
    try:
        socketlib.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        pytest.skip("no Redis server on 127.0.0.1:6379")
    with temp_database() as url:
        server = start_server(tmp_path / "ff", args=["--database-url", url],
                              env={"FREEZEFRAME_CONDUCTOR__COORDINATION_URL": "redis://127.0.0.1:6379?timeout=3"})
        try:
            server_id, _, data = boot(server, tmp_path)
            image_id, workflow_id = snapshot(server, server_id, "pg-snap")
            wf = wait_workflow(server, workflow_id, {"IMAGE_ACTIVE", "REVERTED"})
            assert wf["state"] == "IMAGE_ACTIVE" and wf["owner_alive"] is True, wf
            with server.client() as images:
                assert images.get(f"/v2/images/{image_id}").json()["status"] == "active"
        finally:
            server.stop()


def test_upload_progress_is_visible(tmp_path):
    """The data streams from the point in time into the image service; while it does, the
    workflow walks UPLOAD_<n>_COMPLETE and its image shows the same progress."""
    server = start_server(tmp_path / "ff", env={"FREEZEFRAME_TESTING__FAKE_READ_DELAY": "0.25"})
    try:
        server_id, _, data = boot(server, tmp_path, os.urandom(32 << 20))      # 8 reads of 4 MiB
        image_id, workflow_id = snapshot(server, server_id, "slow")
        states, shown = [], set()
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=server.url, headers={"X-Auth-Token": server.member_token}) as c:
            while time.monotonic() < deadline:
                wf = c.get(f"/v1/workflows/{workflow_id}").json()["workflow"]
                if not states or states[-1] != (wf["state"], wf["progress"]):
                    states.append((wf["state"], wf["progress"]))
                props = c.get(f"/image/v2/images/{image_id}").json()
                if props.get("os_freezeframe_workflow_state", "").startswith("UPLOAD_"):
                    shown.add(int(props["os_freezeframe_workflow_progress"]))
                if wf["state"] in ("IMAGE_ACTIVE", "REVERTED"):
                    break
                time.sleep(0.05)
        assert wf["state"] == "IMAGE_ACTIVE", states
        uploads = [(st, p) for st, p in states if st.startswith("UPLOAD_") and st[7:-9].isdigit()]
        assert len(uploads) >= 2, states                       # several steps seen while it ran
        assert [p for _st, p in uploads] == sorted(p for _st, p in uploads)
        assert all(st == f"UPLOAD_{p}_COMPLETE" for st, p in uploads)
        assert any(0 < p < 100 for p in shown), shown           # and on the image
        assert snapshot_data(server, image_id, tmp_path) == data
    finally:
        server.stop()


def test_leftovers_of_a_finished_workflow_are_released(tmp_path):
    """A finished workflow whose point in time was never released (its revert failed, say) is
    cleaned by the conductor's scan: the driver's end_snapshot runs on its workdir."""
    server = start_server(tmp_path / "ff", env={"FREEZEFRAME_CONDUCTOR__SCAN_INTERVAL": "0.3"})
    try:
        server_id, _, _ = boot(server, tmp_path)
        _, workflow_id = snapshot(server, server_id, "done")
        assert wait_workflow(server, workflow_id, {"IMAGE_ACTIVE", "REVERTED"})["state"] == "IMAGE_ACTIVE"
        snapshots = server.data_dir / "instances" / "_snapshots"
        leftover, running = snapshots / workflow_id, snapshots / "not-a-finished-workflow"
        for d in (leftover, running):
            d.mkdir(parents=True)
            (d / "vda.raw").write_bytes(b"x" * 4096)
        deadline = time.monotonic() + 10
        while leftover.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not leftover.exists()
        assert running.exists()                 # not a finished workflow of ours: left alone
        assert f"workflow {workflow_id} had finished but still held a snapshot" in server.log()
    finally:
        server.stop()
