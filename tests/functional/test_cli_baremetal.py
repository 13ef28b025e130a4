"""``freezeframe baremetal ...`` end to end: the CLI against a real server (the fake-hardware
driver, the fake snapshot interface: no agent, the conductor writes a small known disk's stream
itself), through the image API for the snapshot's image and the workflow API for its progress."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid

import httpx
import pytest
import yaml

from freezeframe.baremetal.client import BaremetalClient, BaremetalError, ironic_error
from freezeframe.cli import baremetal as baremetal_cli
from freezeframe.cli.cloud import ConfigError
from freezeframe.cli.main import main
from freezeframe.images.client import GlanceClient
from tests.conftest import free_port, start_server
from tests.functional.test_cli_image import Result, subprocess_env

REQUEST_ID = re.compile(r"request id req-[0-9a-f-]{36}")


@pytest.fixture(autouse=True)
def isolated(client_env_isolated) -> None:
    """Every CLI test runs without the developer's OS_* variables or clouds.yaml."""


def serve(path, port: int | None = None):
    return start_server(path, port=port, env={
        "FREEZEFRAME_COMPUTE__DRIVER": "fake", "FREEZEFRAME_CONDUCTOR__SCAN_INTERVAL": "0.5",
        "FREEZEFRAME_BAREMETAL__WEBDAV_BIND": f"127.0.0.1:{free_port()}"})


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    server = serve(tmp_path_factory.mktemp("cli-baremetal") / "ff")
    yield server
    server.stop()


def runner(server, capsys, token: str | None = None):
    def run(*args: str, auth: bool = True) -> Result:
        argv = list(args)
        if auth:
            argv += ["--os-image-url", server.image_url, "--os-token", token or server.admin_token]
        capsys.readouterr()
        code = main(argv)
        out, err = capsys.readouterr()
        return Result(code, out, err)
    return run


@pytest.fixture
def ff(cloud, capsys):
    """``freezeframe ARGS`` in-process as the admin (the bare-metal API is an administrator's); the
    bare-metal URL is found from the image URL's root."""
    return runner(cloud, capsys)


def enrol(ff, *extra: str, name: str | None = None) -> dict:
    made = ff("baremetal", "node", "create", "--driver", "fake-hardware", "--name", name or f"n-{uuid.uuid4().hex[:8]}",
              *extra, "-f", "json")
    assert made.code == 0, made.err
    return made.json()


def active_node(ff, *extra: str) -> dict:
    """A node adopted as active (enroll -manage-> manageable -adopt-> active)."""
    node = enrol(ff, *extra)
    for verb, state in (("manage", "manageable"), ("adopt", "active")):
        moved = ff("baremetal", "node", verb, node["uuid"], "--wait", "-f", "json")
        assert moved.code == 0, moved.err
        assert moved.json()["provision_state"] == state
    return node


def test_enrol_manage_provide_list_show_set_power_validate_delete(ff):
    name = f"cli-{uuid.uuid4().hex[:8]}"
    node = enrol(ff, "--driver-info", "fake_password=secret", "--property", "cpus=4", "--property",
                 'root_device={"size": 8}', "--resource-class", "baremetal", "--snapshot-interface", "fake", name=name)
    assert node["provision_state"] == "enroll" and node["name"] == name and node["driver"] == "fake-hardware"
    assert node["driver_info"] == {"fake_password": "******"}           # the secret is masked
    assert node["properties"] == {"cpus": 4, "root_device": {"size": 8}}  # values as JSON when they are
    assert (node["resource_class"], node["snapshot_interface"]) == ("baremetal", "fake")

    shown, by_id = ff("baremetal", "node", "show", name, "-f", "json"), ff("baremetal", "node", "show", node["uuid"],
                                                                              "-f", "json")
    assert shown.code == by_id.code == 0 and shown.json()["uuid"] == node["uuid"] == by_id.json()["uuid"]
    assert shown.json()["driver_info"]["fake_password"] == "******"
    table = ff("baremetal", "node", "show", name)
    assert re.search(r"provision_state\s*│\s*enroll", table.out) and "secret" not in table.out
    assert "links" not in table.out                               # link fields are left out of a table

    manage = ff("baremetal", "node", "manage", name, "--wait")
    assert manage.code == 0, manage.err
    assert re.search(r"provision_state\s*│\s*manageable", manage.out)
    assert "\x1b" not in manage.err and manage.err.splitlines()[-1].endswith(f"node {name}: manageable")
    provide = ff("baremetal", "node", "provide", name, "--wait", "-f", "json")
    assert provide.code == 0, provide.err
    assert provide.json()["provision_state"] == "available"

    listed = ff("baremetal", "node", "list", "-f", "json")
    assert listed.code == 0, listed.err
    assert node["uuid"] in {n["uuid"] for n in listed.json()}
    row = next(line for line in ff("baremetal", "node", "list").out.splitlines() if node["uuid"] in line)
    assert name in row and "available" in row
    only = ff("baremetal", "node", "list", "--provision-state", "available", "-f", "json").json()
    assert node["uuid"] in {n["uuid"] for n in only} and {n["provision_state"] for n in only} == {"available"}
    assert node["uuid"] not in {n["uuid"] for n in ff("baremetal", "node", "list", "--provision-state", "enroll",
                                                      "-f", "json").json()}
    long_row = next(line for line in ff("baremetal", "node", "list", "--long").out.splitlines()
                    if node["uuid"] in line)
    assert "fake-hardware" in long_row and "baremetal" in long_row

    changed = ff("baremetal", "node", "set", name, "--property", "memory_mb=1024", "--instance-info", "note=x",
                 "--description", "a test node", "-f", "json")
    assert changed.code == 0, changed.err
    assert changed.json()["properties"]["memory_mb"] == 1024 and changed.json()["instance_info"] == {"note": "x"}
    assert changed.json()["description"] == "a test node"
    unset = ff("baremetal", "node", "unset", name, "--property", "cpus", "--instance-info", "note", "--description",
               "-f", "json")
    assert unset.code == 0, unset.err
    assert "cpus" not in unset.json()["properties"] and unset.json()["instance_info"] == {}
    assert unset.json()["description"] is None

    for action, state in (("on", "power on"), ("off", "power off"), ("reboot", "power on")):
        powered = ff("baremetal", "node", "power", action, name, "-f", "json")
        assert powered.code == 0, powered.err
        assert powered.json()["power_state"] == state
    valid = ff("baremetal", "node", "validate", name, "-f", "json")
    assert valid.code == 0, valid.err
    assert valid.json()["power"]["result"] is True and valid.json()["boot"]["result"] is True
    assert re.search(r"power\s*│\s*True", ff("baremetal", "node", "validate", name).out)

    held = ff("baremetal", "node", "maintenance", "set", name, "--reason", "fan", "-f", "json")
    assert held.code == 0, held.err
    assert held.json()["maintenance"] is True and held.json()["maintenance_reason"] == "fan"
    assert node["uuid"] in {n["uuid"] for n in ff("baremetal", "node", "list", "--maintenance", "-f", "json").json()}
    freed = ff("baremetal", "node", "maintenance", "unset", name, "-f", "json")
    assert freed.code == 0 and freed.json()["maintenance"] is False

    mac = "52:54:00:%02x:%02x:%02x" % tuple(uuid.uuid4().bytes[:3])
    port = ff("baremetal", "port", "create", mac, "--node", name, "-f", "json")
    assert port.code == 0, port.err
    assert port.json()["node_uuid"] == node["uuid"] and port.json()["address"] == mac
    ports = ff("baremetal", "port", "list", "--node", name, "-f", "json")
    assert [p["uuid"] for p in ports.json()] == [port.json()["uuid"]]
    long_ports = ff("baremetal", "port", "list", "--node", name, "--long")
    assert mac in long_ports.out and node["uuid"] in long_ports.out
    assert ff("baremetal", "port", "show", mac, "-f", "json").json()["uuid"] == port.json()["uuid"]
    assert ff("baremetal", "port", "delete", mac).code == 0
    assert ff("baremetal", "port", "list", "--node", name, "-f", "json").json() == []

    assert ff("baremetal", "node", "delete", name).code == 0
    gone = ff("baremetal", "node", "show", node["uuid"])
    assert gone.code == 1 and gone.out == ""
    assert f"Node {node['uuid']} could not be found." in gone.err        # Ironic's message, decoded
    assert "HTTP 404" in gone.err and REQUEST_ID.search(gone.err)


def test_snapshot_wait_creates_the_image_and_ends_active(ff, cloud):
    node = active_node(ff, "--snapshot-interface", "fake", "--driver-info", "fake_disk_size=4194304")
    image_name = f"bm-snap-{uuid.uuid4().hex[:8]}"
    made = ff("baremetal", "node", "snapshot", node["name"], "--image", image_name, "--wait", "-f", "json")
    assert made.code == 0, made.err
    done = made.json()
    assert done["provision_state"] == "active" and done["image_status"] == "active" and done["image_created"] is True
    assert done["workflow_state"] == "IMAGE_ACTIVE" and done["workflow_progress"] == 100
    # stderr is not a terminal: one plain line per change, the node's state beside the workflow's.
    assert "\x1b" not in made.err
    lines = made.err.splitlines()
    assert any(line.split()[1:2] == ["snapshotting"] for line in lines), made.err   # the node's state beside
    states = ("snapshotting", "snapshot wait", "snapshot failed", "active")
    watched = [line.split(None, 1)[1] for line in lines if re.match(r"\d\d:\d\d:\d\d  ", line)]
    shown = [next((st for st in states if line.startswith(st + " ")), None) for line in watched]
    assert watched and None not in shown, made.err          # every line shows the node's (last known) state
    steps = [line[len(st):].split()[0] for line, st in zip(watched, shown)]
    for step in ("LOCAL_SNAPSHOT_STARTED", "LOCAL_SNAPSHOT_COMPLETE", "UPLOAD_BEGIN", "UPLOAD_COMPLETE"):
        assert step in steps, made.err                     # every step, even those between two polls
    assert re.search(r"\sactive\s+IMAGE_ACTIVE\s+100%", lines[-1]), made.err
    with GlanceClient(cloud.image_url, cloud.admin_token) as images:
        image = images.show(done["image_id"])
    assert (image.name, image.status, image.disk_format) == (image_name, "active", "qcow2")
    assert image.attrs["container_format"] == "bare"
    # The image is filled now: a second snapshot into it fails (refused, or ends in snapshot failed).
    again = ff("baremetal", "node", "snapshot", node["uuid"], "--image", done["image_id"], "--wait")
    assert again.code == 1 and again.err.splitlines()[-1].startswith("freezeframe: ")
    with GlanceClient(cloud.image_url, cloud.admin_token) as images:
        assert images.show(done["image_id"]).status == "active"            # untouched

    # Without --wait: the ids at once, the snapshot goes on (followed with the workflow API).
    started = ff("baremetal", "node", "snapshot", node["uuid"], "--image", image_name + "-2", "-f", "json")
    assert started.code == 0, started.err
    assert started.json()["image_created"] is True and started.json()["workflow_id"]
    watched = ff("workflow", "watch", started.json()["workflow_id"])
    assert watched.code == 0, watched.err
    undeployed = ff("baremetal", "node", "undeploy", node["uuid"], "--wait", "-f", "json")
    assert undeployed.code == 0, undeployed.err
    assert undeployed.json()["provision_state"] == "available"


def test_a_failed_snapshot_exits_1_with_last_error_and_abort_returns_active(ff, cloud):
    node = active_node(ff, "--snapshot-interface", "fake", "--driver-info", "fake_snapshot_error=the disk is on fire")
    made = ff("baremetal", "node", "snapshot", node["uuid"], "--image", f"doomed-{uuid.uuid4().hex[:8]}", "--wait",
              "-f", "json")
    assert made.code == 1
    assert made.json()["provision_state"] == "snapshot failed"
    assert f"the snapshot of node {node['uuid']} ended in snapshot failed: " in made.err
    assert "the disk is on fire" in made.err and "the disk is on fire" in made.json()["last_error"]
    aborted = ff("baremetal", "node", "abort", node["uuid"], "--wait", "-f", "json")
    assert aborted.code == 0, aborted.err
    assert aborted.json()["provision_state"] == "active"


def test_a_node_that_cannot_snapshot_leaves_no_image(ff, cloud):
    node = active_node(ff, "--snapshot-interface", "no-snapshot")
    name = f"never-{uuid.uuid4().hex[:8]}"
    refused = ff("baremetal", "node", "snapshot", node["uuid"], "--image", name, "--wait")
    assert refused.code == 1 and "no-snapshot" in refused.err and "HTTP 400" in refused.err
    with GlanceClient(cloud.image_url, cloud.admin_token) as images:
        assert list(images.list([("name", name)])) == []          # the image made for it was removed
    missing = ff("baremetal", "node", "snapshot", node["uuid"], "--image", str(uuid.uuid4()))
    assert missing.code == 1 and "HTTP 404" in missing.err        # an ID that names no image is not a name


def test_bad_input_is_a_clear_message_and_a_non_zero_exit(ff, cloud, capsys):
    with pytest.raises(SystemExit) as exited:
        ff("baremetal", "node", "create", "--name", "no-driver")
    assert exited.value.code == 2
    with pytest.raises(SystemExit):
        ff("baremetal", "node", "create", "--driver", "fake-hardware", "--property", "novalue")
    unknown = ff("baremetal", "node", "create", "--driver", "no-such-driver")
    assert unknown.code == 1 and "no-such-driver" in unknown.err and "HTTP 400" in unknown.err
    assert REQUEST_ID.search(unknown.err)
    missing = ff("baremetal", "node", "show", "no-such-node")
    assert missing.code == 1 and "no-such-node could not be found" in missing.err and "HTTP 404" in missing.err
    node = enrol(ff)
    assert ff("baremetal", "node", "set", node["uuid"]).code == 2
    assert ff("baremetal", "node", "unset", node["uuid"]).code == 2
    wrong = ff("baremetal", "node", "provide", node["uuid"], "--wait")
    assert wrong.code == 1 and "provide" in wrong.err and "enroll" in wrong.err and "HTTP 400" in wrong.err
    snap = ff("baremetal", "node", "snapshot", node["uuid"], "--image", f"x-{uuid.uuid4().hex[:8]}")
    assert snap.code == 1 and "HTTP 400" in snap.err
    broken = enrol(ff, "--driver-info", "fake_power_error=the BMC is gone")
    unverified = ff("baremetal", "node", "manage", broken["uuid"], "--wait", "-f", "json")
    assert unverified.code == 1 and unverified.json()["provision_state"] == "enroll"
    assert f"node {broken['name']} is enroll, not manageable: manage failed: the BMC is gone" in unverified.err
    bad_mac = ff("baremetal", "port", "create", "not-a-mac", "--node", node["uuid"])
    assert bad_mac.code == 1 and "HTTP 400" in bad_mac.err
    no_node = ff("baremetal", "port", "create", "52:54:00:aa:bb:cc", "--node", "no-such-node")
    assert no_node.code == 1 and "HTTP 404" in no_node.err
    partly = ff("baremetal", "node", "delete", node["uuid"], "no-such-node")
    assert partly.code == 1 and "cannot delete node no-such-node" in partly.err
    assert "1 of 2 nodes were not deleted" in partly.err
    assert ff("baremetal", "node", "show", node["uuid"]).code == 1      # the other one went
    member = runner(cloud, capsys, cloud.member_token)("baremetal", "node", "list")
    assert member.code == 1 and "HTTP 403" in member.err                # an administrator's API


def test_no_endpoint_exits_2_and_unreachable_exits_3(ff):
    result = ff("baremetal", "node", "list", auth=False)
    assert result.code == 2 and "no bare-metal endpoint" in result.err and "--os-baremetal-url" in result.err
    url = f"http://127.0.0.1:{free_port()}/baremetal"
    down = ff("baremetal", "node", "list", "--os-baremetal-url", url, "--os-token", "t", auth=False)
    assert down.code == 3
    assert "cannot reach the baremetal service" in down.err and "--os-baremetal-url" in down.err


def test_version_negotiation_and_paging(cloud):
    with BaremetalClient(cloud.url + "/baremetal", cloud.admin_token) as client:
        assert client.version()["version"]["version"] == "1.116"
        made = [client.create_node("fake-hardware", name=f"page-{uuid.uuid4().hex[:8]}")["uuid"] for _ in range(3)]
        every = [n["uuid"] for n in client.list_nodes()]
        assert [n["uuid"] for n in client.list_nodes(page_size=1)] == every      # follows each page
        assert len(list(client.list_nodes(page_size=2, limit=3))) == 3
        for node_id in made:
            client.delete_node(node_id)
    with BaremetalClient(cloud.url + "/baremetal", cloud.admin_token, microversion="1.999", negotiate=True) as client:
        list(client.list_nodes(limit=1))
        assert client.microversion == "1.116"                   # the service's newest, from its 406
    with BaremetalClient(cloud.url + "/baremetal", cloud.admin_token, microversion="1.999") as client:
        with pytest.raises(BaremetalError) as refused:
            list(client.list_nodes(limit=1))
        assert refused.value.status == 406 and "1.999" in str(refused.value)


def test_ironic_error_bodies_are_decoded():
    fault = httpx.Response(400, json={"error_message": '{"faultcode": "Client", "faultstring": "Bad  thing.", '
                                                       '"debuginfo": null}'},
                           headers={"x-openstack-request-id": "req-1"})
    assert (ironic_error(fault).message, ironic_error(fault).status, ironic_error(fault).request_id) == \
        ("Bad thing.", 400, "req-1")
    refused = httpx.Response(406, json={"error_message": '{"code": 406, "title": "Not Acceptable", "description": '
                                                         '"Version 1.200 was requested"}'})
    assert ironic_error(refused).message == "Version 1.200 was requested"
    plain = httpx.Response(500, json={"error": {"message": "ours"}})
    assert ironic_error(plain).message == "ours"


# -- endpoint resolution ---------------------------------------------------------------------


def test_resolution_defaults_and_precedence(tmp_path):
    found = baremetal_cli.resolve(env={"OS_IMAGE_URL": "http://h:9292/image/v2", "OS_TOKEN": "t"})
    assert (found.url, found.image_url, found.token) == ("http://h:9292/baremetal", "http://h:9292/image", "t")
    assert found.source == "the image URL from OS_IMAGE_URL"
    env = {"OS_BAREMETAL_URL": "http://ironic:6385/v1/", "OS_IMAGE_URL": "http://img:2/image"}
    assert baremetal_cli.resolve(env=env).url == "http://ironic:6385"
    flagged = baremetal_cli.resolve(baremetal_url="http://flag:3/baremetal", env=env)
    assert flagged.url == "http://flag:3/baremetal" and flagged.source == "--os-baremetal-url"
    only = baremetal_cli.resolve(baremetal_url="http://ff:9/baremetal/v1", env={"OS_TOKEN": "t"})
    assert (only.url, only.image_url) == ("http://ff:9/baremetal", "http://ff:9/image")

    (tmp_path / "clouds.yaml").write_text(yaml.safe_dump({"clouds": {"ff": {
        "auth_type": "admin_token", "auth": {"endpoint": "http://cloud:5/image", "token": "secret"},
        "baremetal_endpoint_override": "http://cloud:5/baremetal"}, "bare": {
        "auth_type": "admin_token", "auth": {"endpoint": "http://bare:6/image", "token": "s2"}}}}))
    chosen = baremetal_cli.resolve(cloud_name="ff", env=env, cwd=tmp_path)
    assert chosen.url == "http://cloud:5/baremetal" and chosen.token == "secret" and "cloud 'ff'" in chosen.source
    bare = baremetal_cli.resolve(env={"OS_CLOUD": "bare"}, cwd=tmp_path)
    assert bare.url == "http://bare:6/baremetal" and bare.token == "s2"
    with pytest.raises(ConfigError, match="no bare-metal endpoint"):
        baremetal_cli.resolve(env={})
    with pytest.raises(ConfigError, match="must start with http"):
        baremetal_cli.resolve(baremetal_url="ironic:6385", env={})


def test_a_cloud_with_the_catalog(ff, cloud, monkeypatch):
    """The password cloud `serve` generates for its admin: the bare-metal API from the catalog."""
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(cloud.data_dir / "clouds.yaml"))
    monkeypatch.setenv("OS_CLOUD", "freezeframe")
    found = baremetal_cli.resolve()
    assert found.url == cloud.url + "/baremetal" and "the catalog of cloud 'freezeframe'" in found.source
    listed = ff("baremetal", "node", "list", "-f", "json", auth=False)
    assert listed.code == 0, listed.err


def test_snapshot_wait_rides_through_a_restart(tmp_path, capsys):
    """``node snapshot --wait`` as a separate process; the service is stopped (SIGTERM) while the
    node is snapshotting and restarted on the same port a moment later: the CLI says it waits for
    the service, then that it is back, and exits 0 once the node is active with the image active."""
    server = serve(tmp_path / "ff")
    port = int(server.url.rsplit(":", 1)[1])
    restarted, cli = None, None
    try:
        node = active_node(runner(server, capsys), "--snapshot-interface", "fake", "--driver-info",
                           f"fake_disk_size={192 << 20}")
        env = subprocess_env(tmp_path, OS_IMAGE_URL=server.image_url, OS_TOKEN=server.admin_token)
        cli = subprocess.Popen([sys.executable, "-m", "freezeframe", "baremetal", "node", "snapshot", node["uuid"],
                                "--image", "ridden", "--wait", "-f", "json"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        headers = {"X-Auth-Token": server.admin_token}
        deadline, state = time.monotonic() + 30, None
        while time.monotonic() < deadline and state != "LOCAL_SNAPSHOT_STARTED":
            found = httpx.get(f"{server.url}/v1/workflows", params={"resource_id": node["uuid"]},
                              headers=headers).json()["workflows"]
            state = next((wf["state"] for wf in found if wf["kind"] == "baremetal-snapshot"), None)
            time.sleep(0.05)
        assert state == "LOCAL_SNAPSHOT_STARTED", found
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0
        time.sleep(1.5)                 # the service is away for a while: the CLI keeps waiting
        assert cli.poll() is None, cli.communicate()
        restarted = serve(tmp_path / "ff", port=port)
        out, err = cli.communicate(timeout=120)
        assert cli.returncode == 0, err
        assert "the service is unavailable" in err and "waiting for it to come back" in err, err
        assert "the service is back" in err, err
        done = json.loads(out)
        assert (done["provision_state"], done["image_status"], done["workflow_state"]) == ("active", "active",
                                                                                          "IMAGE_ACTIVE")
    finally:
        if cli is not None and cli.poll() is None:
            cli.kill()
        server.stop(signal.SIGKILL)
        if restarted is not None:
            restarted.stop()
