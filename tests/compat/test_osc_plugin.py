"""Freezeframe's openstackclient plugin (``src/freezeframe/osc``), as installed with the package:
the real ``openstack`` command against a real `serve` (fake virt driver, fake-hardware node with
the fake snapshot interface), through both kinds of cloud:

- ``freezeframe``: password auth through /identity, every endpoint from the service catalog (the
  workflow API is not listed there: the plugin finds it at the compute endpoint's root);
- ``token-freezeframe[-project-a]``: ``admin_token`` clouds with ``*_endpoint_override`` keys,
  written by the code `serve` uses for the test's tokens.

``server snapshot --wait``, ``baremetal node snapshot --wait``, ``workflow list|show|watch|cancel``:
their ``-f json`` documents, the progress lines on stderr, the exit codes, and what they did
(the image, the node, the workflow's end state) checked through the APIs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import yaml

from tests.conftest import ADMIN_TOKEN, MEMBER_TOKEN, LiveServer, new_image, start_server

OPENSTACK = shutil.which("openstack", path=str(Path(sys.executable).parent)) or shutil.which("openstack")
pytestmark = pytest.mark.skipif(OPENSTACK is None, reason="python-openstackclient is a test dependency")
COPY_DELAY = 0.04          # the fake driver's seconds per MiB while taking the point in time
BIG_MIB = 300              # a server whose snapshot takes ~12 s in that step: time to cancel it
NODE_DISK = 3 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    srv = start_server(tmp_path_factory.mktemp("ff-osc-plugin") / "ff",
                       env={"FREEZEFRAME_COMPUTE__DRIVER": "fake", "FREEZEFRAME_BAREMETAL__WEBDAV_BIND": "",
                            "FREEZEFRAME_CONDUCTOR__SCAN_INTERVAL": "0.5",
                            "FREEZEFRAME_TESTING__FAKE_COPY_DELAY": str(COPY_DELAY)})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def clouds_yaml(server, tmp_path_factory) -> Path:
    """`serve`'s identity clouds plus token clouds for the test's tokens (``token-<name>``), as
    tests/compat/test_openstack_baremetal.py builds them."""
    from freezeframe import settings as settings_mod
    from freezeframe.assembly import write_clouds_yaml
    from freezeframe.http.auth import load_tokens

    work = tmp_path_factory.mktemp("osc-plugin-clouds")
    port = int(server.url.rsplit(":", 1)[1])
    settings = settings_mod.load(None, environ={}, flags={"data_dir": str(work), "server.port": port})
    tokens = load_tokens(server.data_dir / "test-tokens.json")
    write_clouds_yaml(settings, {t: tokens[t] for t in (ADMIN_TOKEN, MEMBER_TOKEN)})
    generated = yaml.safe_load((work / "clouds.yaml").read_text())["clouds"]
    clouds = {**yaml.safe_load((server.data_dir / "clouds.yaml").read_text())["clouds"],
              **{f"token-{name}": cloud for name, cloud in generated.items()}}
    assert "freezeframe" in clouds and "token-freezeframe-project-a" in clouds, sorted(clouds)
    path = work / "all-clouds.yaml"
    path.write_text(yaml.safe_dump({"clouds": clouds}))
    return path


def osc(clouds_yaml: Path, cloud: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(OS_CLIENT_CONFIG_FILE=str(clouds_yaml), OS_CLOUD=cloud, HOME=str(clouds_yaml.parent))
    out = subprocess.run([OPENSTACK, *args], env=env, capture_output=True, text=True, timeout=180)
    if check:
        assert out.returncode == 0, f"openstack {' '.join(args)} ({cloud}): {out.stderr[-3000:]}"
    return out


def osc_json(clouds_yaml: Path, cloud: str, *args: str):
    return json.loads(osc(clouds_yaml, cloud, *args, "-f", "json").stdout)


def nova(server: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=server.url + "/compute/v2.1", timeout=60,
                        headers={"X-Auth-Token": MEMBER_TOKEN, "X-OpenStack-Nova-API-Version": "2.45"})


def wait_for(fetch, ok, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if ok(value):
            return value
        assert time.monotonic() < deadline, f"{what}: {value}"
        time.sleep(0.1)


def boot(server: LiveServer, name: str, disk: Path, disk_format: str, **properties: str) -> str:
    """A server of project-a from ``disk`` (uploaded as an image), ACTIVE."""
    with server.client() as images:
        image = new_image(images, name=f"base-{name}", disk_format=disk_format, **properties)
        resp = images.put(f"/v2/images/{image['id']}/file", content=disk.read_bytes(),
                          headers={"Content-Type": "application/octet-stream"})
        assert resp.status_code == 204, resp.text
    with nova(server) as n:
        resp = n.post("/servers", json={"server": {"name": name, "imageRef": image["id"], "flavorRef": "1"}})
        assert resp.status_code == 202, resp.text
        server_id = resp.json()["server"]["id"]
        wait_for(lambda: n.get(f"/servers/{server_id}").json()["server"],
                 lambda s: s["status"] == "ACTIVE" and s["OS-EXT-STS:task_state"] is None, f"server {name}")
    return server_id


def image_of(server: LiveServer, image_id: str, token: str = MEMBER_TOKEN) -> httpx.Response:
    with server.client(token) as images:
        return images.get(f"/v2/images/{image_id}")


def progress_lines(stderr: str) -> list[tuple[str, str]]:
    """(state, percent) of each progress line the plugin printed."""
    out = []
    for text in stderr.splitlines():
        parts = text.split()
        states = [p for p in parts if p.isupper() and "_" in p or p in ("PENDING", "CANCELLED", "REVERTED", "FAILED")]
        percents = [p for p in parts if p.endswith("%") and p[:-1].isdigit()]
        if states and percents:
            out.append((states[0], percents[0]))
    return out


# -- the plugin is installed ----------------------------------------------------------------------


def test_commands_are_registered_beside_ironicclient():
    out = subprocess.run([OPENSTACK, "command", "list", "--group", "freezeframe", "-f", "json"],
                         capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if not k.startswith("OS_")})
    assert out.returncode == 0, out.stderr
    [group] = json.loads(out.stdout)
    assert group["Command Group"] == "openstack.freezeframe.v1"
    assert sorted(group["Commands"]) == ["baremetal node snapshot", "server snapshot", "workflow cancel",
                                         "workflow list", "workflow show", "workflow watch"]
    helped = subprocess.run([OPENSTACK, "baremetal", "node", "snapshot", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert helped.returncode == 0 and "--image <image>" in helped.stdout


# -- server snapshot, workflow list/show -----------------------------------------------------------


def test_server_snapshot_wait_then_workflow_list_and_show(server, clouds_yaml, tmp_path):
    disk = tmp_path / "disk.raw"
    data = os.urandom(1 << 20) + bytes(6 << 20) + os.urandom(1 << 20)
    disk.write_bytes(data)
    server_id = boot(server, "osc-vm", disk, "raw")
    cloud = "token-freezeframe-project-a"

    out = osc(clouds_yaml, cloud, "server", "snapshot", "osc-vm", "--name", "osc-snap", "--property", "purpose=osc",
              "--wait", "-f", "json")
    doc = json.loads(out.stdout)
    assert doc["server_id"] == server_id and doc["state"] == "IMAGE_ACTIVE" and doc["progress"] == 100
    assert doc["failure_reason"] is None
    steps = progress_lines(out.stderr)
    states = [s for s, _ in steps]
    assert states[:2] == ["PENDING", "LOCAL_SNAPSHOT_STARTED"] and states[-1] == "IMAGE_ACTIVE", out.stderr
    assert {"LOCAL_SNAPSHOT_COMPLETE", "UPLOAD_BEGIN", "UPLOAD_COMPLETE"} <= set(states), out.stderr
    assert steps[0][1] == "0%" and steps[-1][1] == "100%", out.stderr
    assert len(set(steps)) == len(steps), f"a change printed twice: {out.stderr}"
    image = image_of(server, doc["image_id"]).json()
    assert image["status"] == "active" and image["name"] == "osc-snap" and image["purpose"] == "osc"
    assert image["instance_uuid"] == server_id and image["os_freezeframe_snapshot_included"] == "vda"

    # the same through the identity cloud (catalog; the workflow API at the compute endpoint's root)
    listed = osc_json(clouds_yaml, "freezeframe", "workflow", "list", "--server", server_id)
    row = next(r for r in listed if r["ID"] == doc["workflow_id"])
    assert row["State"] == "IMAGE_ACTIVE" and row["Progress"] == 100 and row["Image"] == doc["image_id"]
    assert row["Server"] == server_id and row["Kind"] == "snapshot"
    mine = osc_json(clouds_yaml, cloud, "workflow", "list", "--server", "osc-vm", "--state", "IMAGE_ACTIVE")
    assert [r["ID"] for r in mine] == [doc["workflow_id"]]
    assert osc_json(clouds_yaml, cloud, "workflow", "list", "--state", "CANCELLED") == []

    shown = osc_json(clouds_yaml, cloud, "workflow", "show", doc["workflow_id"])
    assert shown["id"] == doc["workflow_id"] and shown["state"] == "IMAGE_ACTIVE" and shown["progress"] == 100
    assert shown["image_id"] == doc["image_id"] and shown["resource_id"] == server_id
    assert shown["stalled"] is False and shown["project_id"] == "project-a"
    assert [h["state"] for h in shown["history"]] == [s for s in states if s != "PENDING"]

    # watch on an ended workflow shows it at once, exit 0 for a success
    watched = osc_json(clouds_yaml, cloud, "workflow", "watch", doc["workflow_id"])
    assert watched["state"] == "IMAGE_ACTIVE"

    # a device the server does not have: the compute API's 400, nothing made
    bad = osc(clouds_yaml, cloud, "server", "snapshot", "osc-vm", "--device", "vdz", "--name", "never", check=False)
    assert bad.returncode == 1 and "vdz" in bad.stderr and "HTTP 400" in bad.stderr, bad.stderr
    with server.client() as images:
        assert [i for i in images.get("/v2/images").json()["images"] if i["name"] == "never"] == []
    missing = osc(clouds_yaml, cloud, "workflow", "show", str(uuid.uuid4()), check=False)
    assert missing.returncode == 1 and "No workflow" in missing.stderr and "HTTP 404" in missing.stderr


def test_server_snapshot_wait_waits_out_a_guest_agent_that_does_not_answer(server, clouds_yaml, tmp_path):
    """The image asks for quiesce and the fake guest has no agent: the compute API's 409. Without
    --wait it says how to wait; with it the plugin asks again, saying so, and gives up after
    --timeout (the retry itself is freezeframe.cli.server's, tested with an agent that starts
    answering in tests/unit/test_cli_agent_wait.py)."""
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(1 << 20))
    server_id = boot(server, "osc-quiesced", disk, "raw", os_require_quiesce="yes")
    cloud = "token-freezeframe-project-a"
    bare = osc(clouds_yaml, cloud, "server", "snapshot", server_id, check=False)
    assert bare.returncode == 1 and "HTTP 409" in bare.stderr and "guest agent" in bare.stderr, bare.stderr
    assert "add --wait to wait for its agent" in bare.stderr
    waited = osc(clouds_yaml, cloud, "server", "snapshot", server_id, "--wait", "--timeout", "3", check=False)
    assert waited.returncode == 1, waited.stderr
    assert "the guest agent of server osc-quiesced is not ready yet" in waited.stderr
    assert "gave up after 3s: the guest agent of server osc-quiesced still does not answer" in waited.stderr
    assert osc_json(clouds_yaml, cloud, "workflow", "list", "--server", server_id) == []    # nothing started


# -- workflow cancel / watch ----------------------------------------------------------------------


def test_workflow_cancel_wait_reverts_and_deletes_the_image(server, clouds_yaml, tmp_path):
    disk = tmp_path / "big.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), f"{BIG_MIB}M"], check=True)
    server_id = boot(server, "osc-big", disk, "qcow2")
    cloud = "token-freezeframe-project-a"

    started = osc_json(clouds_yaml, cloud, "server", "snapshot", server_id, "--name", "to-cancel")
    assert set(started) == {"server_id", "image_id", "workflow_id"} and started["server_id"] == server_id
    out = osc(clouds_yaml, cloud, "workflow", "cancel", started["workflow_id"], "--wait")
    assert f"workflow {started['workflow_id']}: cancel requested" in out.stderr
    lines = out.stderr.splitlines()
    assert lines[-2].split()[1:] == ["FAILED", "workflow", started["workflow_id"], "was", "cancelled"], out.stderr
    assert lines[-1].split()[1:3] == ["CANCELLED", "reverted:"], out.stderr        # each change once
    shown = osc_json(clouds_yaml, cloud, "workflow", "show", started["workflow_id"])
    assert shown["state"] == "CANCELLED" and shown["cancel_requested"] is True
    assert shown["failure_reason"] == "cancelled by the user"
    history = [h["state"] for h in shown["history"]]
    assert history[-2:] == ["FAILED", "CANCELLED"] and "UPLOAD_COMPLETE" not in history, history
    table = osc(clouds_yaml, cloud, "workflow", "show", started["workflow_id"]).stdout
    assert "{'state'" not in table and "reverted: cleaned up" in table      # history as lines, not a repr
    assert image_of(server, started["image_id"]).status_code == 404      # the revert deleted it
    with nova(server) as n:
        assert n.get(f"/servers/{server_id}").json()["server"]["OS-EXT-STS:task_state"] is None

    again = osc(clouds_yaml, cloud, "workflow", "cancel", started["workflow_id"], check=False)
    assert again.returncode == 1 and "cannot cancel workflow" in again.stderr and "CANCELLED" in again.stderr
    # watch shows how it ended and exits 1: it did not make its image
    watched = osc(clouds_yaml, cloud, "workflow", "watch", started["workflow_id"], "-f", "json", check=False)
    assert watched.returncode == 1 and json.loads(watched.stdout)["state"] == "CANCELLED"
    assert f"workflow {started['workflow_id']} ended CANCELLED" in watched.stderr


# -- baremetal node snapshot ----------------------------------------------------------------------


def ironic(server: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=server.url + "/baremetal/v1", timeout=60,
                        headers={"X-OpenStack-Ironic-API-Version": "1.116", "X-Auth-Token": ADMIN_TOKEN})


def node_state(c: httpx.Client, node: str, state: str) -> dict:
    return wait_for(lambda: c.get(f"/nodes/{node}").json(),
                    lambda b: b["provision_state"] == state and b["target_provision_state"] is None, f"node {node}")


def test_baremetal_node_snapshot_wait(server, clouds_yaml, tmp_path):
    name = f"osc-node-{uuid.uuid4().hex[:6]}"
    with ironic(server) as c:
        resp = c.post("/nodes", json={"driver": "fake-hardware", "name": name, "snapshot_interface": "fake",
                                      "driver_info": {"fake_disk_size": NODE_DISK}})
        assert resp.status_code == 201, resp.text
        node = resp.json()["uuid"]
        # not active yet: the node refuses the verb, and the image made for it is deleted again
        refused = osc(clouds_yaml, "freezeframe", "baremetal", "node", "snapshot", name, "--image", "not-kept",
                      check=False)
        assert refused.returncode == 1 and "snapshot" in refused.stderr, refused.stderr
        with server.client(ADMIN_TOKEN) as images:
            assert [i for i in images.get("/v2/images").json()["images"] if i["name"] == "not-kept"] == []
        for verb, state in (("manage", "manageable"), ("adopt", "active")):
            assert c.put(f"/nodes/{node}/states/provision", json={"target": verb}).status_code == 202
            node_state(c, node, state)

    out = osc(clouds_yaml, "freezeframe", "baremetal", "node", "snapshot", name, "--image", "osc-bm-snap", "--wait",
              "-f", "json")
    doc = json.loads(out.stdout)
    assert doc["node_uuid"] == node and doc["node_name"] == name and doc["provision_state"] == "active"
    assert doc["target_provision_state"] is None and doc["last_error"] is None
    assert doc["image_created"] is True and doc["image_status"] == "active"
    assert doc["workflow_state"] == "IMAGE_ACTIVE" and doc["workflow_progress"] == 100
    states = [s for s, _ in progress_lines(out.stderr)]
    assert states[:2] == ["PENDING", "LOCAL_SNAPSHOT_STARTED"] and states[-1] == "IMAGE_ACTIVE", out.stderr
    assert {"LOCAL_SNAPSHOT_COMPLETE", "UPLOAD_BEGIN", "UPLOAD_COMPLETE"} <= set(states), out.stderr
    assert "node active" in out.stderr.splitlines()[-1], out.stderr
    image = image_of(server, doc["image_id"], ADMIN_TOKEN).json()
    assert image["name"] == "osc-bm-snap" and image["status"] == "active" and image["disk_format"] == "qcow2"
    with ironic(server) as c:
        assert c.get(f"/nodes/{node}").json()["provision_state"] == "active"

    # the workflow, by node and kind, through the token cloud (endpoint overrides)
    listed = osc_json(clouds_yaml, "token-freezeframe", "workflow", "list", "--node", node,
                      "--kind", "baremetal-snapshot")
    assert [(r["ID"], r["State"], r["Image"]) for r in listed] == [(doc["workflow_id"], "IMAGE_ACTIVE",
                                                                    doc["image_id"])]
    # an existing image by name is filled, not created (a second snapshot into a queued one)
    with server.client(ADMIN_TOKEN) as images:
        queued = new_image(images, name="osc-bm-queued", disk_format="qcow2")
    second = osc_json(clouds_yaml, "token-freezeframe", "baremetal", "node", "snapshot", node, "--image",
                      "osc-bm-queued", "--wait")
    assert second["image_id"] == queued["id"] and second["image_created"] is False
    assert second["image_status"] == "active" and second["provision_state"] == "active"

    # without --wait: the IDs at once, then `workflow watch` follows the running workflow to its end
    third = osc_json(clouds_yaml, "freezeframe", "baremetal", "node", "snapshot", node, "--image", "osc-bm-third")
    assert third["image_created"] is True and third["workflow_id"] not in (doc["workflow_id"], second["workflow_id"])
    assert third["workflow_state"] is not None and third["image_status"] in ("queued", "saving", "active")
    watched = osc(clouds_yaml, "freezeframe", "workflow", "watch", third["workflow_id"], "-f", "json")
    assert json.loads(watched.stdout)["state"] == "IMAGE_ACTIVE"
    assert progress_lines(watched.stderr)[-1] == ("IMAGE_ACTIVE", "100%"), watched.stderr
    with ironic(server) as c:
        node_state(c, node, "active")
    assert image_of(server, third["image_id"], ADMIN_TOKEN).json()["status"] == "active"
