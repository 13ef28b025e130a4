"""``freezeframe server ...`` and ``freezeframe workflow ...`` end to end: the CLI against a real
server with the fake virt driver."""

from __future__ import annotations

import os
import re
import sys
import uuid

import httpx
import pytest
import yaml

from freezeframe.cli import compute_cloud
from freezeframe.cli.cloud import ConfigError
from freezeframe.cli.main import main
from tests.conftest import free_port, new_image, start_server
from tests.functional.test_cli_image import Result, _run_on_pty, subprocess_env
from tests.functional.test_compute_snapshot import boot

REQUEST_ID = re.compile(r"request id req-[0-9a-f-]{36}")


@pytest.fixture(autouse=True)
def isolated(client_env_isolated) -> None:
    """Every CLI test runs without the developer's OS_* variables or clouds.yaml."""


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("cli-server") / "ff")
    yield server
    server.stop()


def runner(server, capsys):
    def run(*args: str, auth: bool = True) -> Result:
        argv = list(args)
        if auth:
            argv += ["--os-image-url", server.image_url, "--os-token", server.member_token]
        capsys.readouterr()
        code = main(argv)
        out, err = capsys.readouterr()
        return Result(code, out, err)
    return run


@pytest.fixture
def ff(cloud, capsys):
    """Run ``freezeframe ARGS`` in-process as the member, against the module's server."""
    return runner(cloud, capsys)


def active_image(server, name: str) -> dict:
    data = os.urandom(1 << 20)
    with server.client() as images:
        image = new_image(images, name=name)
        assert images.put(f"/v2/images/{image['id']}/file", content=data,
                          headers={"Content-Type": "application/octet-stream"}).status_code == 204
    return image


def image_of(server, image_id: str) -> httpx.Response:
    with server.client() as images:
        return images.get(f"/v2/images/{image_id}")


def test_create_wait_then_list_and_show(ff, cloud):
    image = active_image(cloud, f"base-{uuid.uuid4()}")
    name = f"vm-{uuid.uuid4()}"
    created = ff("server", "create", name, "--image", image["name"], "--flavor", "m1.tiny", "--wait",
                 "--property", "role=web", "-f", "json")
    assert created.code == 0, created.err
    server = created.json()
    assert server["status"] == "ACTIVE" and server["OS-EXT-STS:task_state"] is None
    assert server["name"] == name and server["image"]["id"] == image["id"] and server["metadata"] == {"role": "web"}

    listed = ff("server", "list", "-f", "json")
    assert listed.code == 0
    assert server["id"] in {s["id"] for s in listed.json()}
    table = ff("server", "list")
    row = next(line for line in table.out.splitlines() if server["id"] in line)
    assert name in row and "ACTIVE" in row and "Running" in row

    by_name, by_id = ff("server", "show", name, "-f", "json"), ff("server", "show", server["id"], "-f", "json")
    assert by_name.code == by_id.code == 0
    assert by_name.json()["id"] == by_id.json()["id"] == server["id"]

    assert ff("server", "stop", name).code == 0
    assert ff("server", "show", name, "-f", "json").json()["status"] == "SHUTOFF"
    assert ff("server", "start", server["id"]).code == 0
    assert ff("server", "show", name, "-f", "json").json()["status"] == "ACTIVE"
    again = ff("server", "start", name)
    assert again.code == 1 and "HTTP 409" in again.err and "vm_state active" in again.err

    assert ff("server", "delete", name).code == 0
    assert ff("server", "show", server["id"]).code == 1


def test_create_refuses_unknown_flavor_and_image(ff, cloud):
    image = active_image(cloud, f"base-{uuid.uuid4()}")
    flavor = ff("server", "create", "x", "--image", image["id"], "--flavor", "m9.huge")
    assert flavor.code == 1 and "no flavor with name or ID 'm9.huge'" in flavor.err and "m1.tiny" in flavor.err
    missing = ff("server", "create", "x", "--image", "no-such-image", "--flavor", "1")
    assert missing.code == 1 and "no image with name or ID 'no-such-image'" in missing.err
    missing_id = str(uuid.uuid4())
    refused = ff("server", "create", "x", "--image", missing_id, "--flavor", "1")
    assert refused.code == 1 and "HTTP 400" in refused.err and missing_id in refused.err


def test_image_create_wait_ends_active(ff, cloud, tmp_path):
    server_id, _, _ = boot(cloud, tmp_path)
    made = ff("server", "image", "create", server_id, "--name", "cli-snap", "--property", "purpose=cli",
              "--wait", "-f", "json")
    assert made.code == 0, made.err
    doc = made.json()
    assert doc["server_id"] == server_id and doc["state"] == "IMAGE_ACTIVE" and doc["progress"] == 100
    # stderr is not a terminal: one plain line per state change, no escape codes.
    assert "\x1b" not in made.err
    states = [line.split()[1] for line in made.err.splitlines()]
    assert states[0] in ("PENDING", "LOCAL_SNAPSHOT_STARTED") and states[-1] == "IMAGE_ACTIVE"
    assert {"LOCAL_SNAPSHOT_COMPLETE", "UPLOAD_BEGIN", "UPLOAD_COMPLETE"} <= set(states)
    image = image_of(cloud, doc["image_id"]).json()
    assert image["status"] == "active" and image["name"] == "cli-snap" and image["purpose"] == "cli"
    assert image["instance_uuid"] == server_id and image["os_freezeframe_workflow_id"] == doc["workflow_id"]

    listed = ff("workflow", "list", "--server", server_id, "-f", "json")
    assert listed.code == 0
    assert [w["id"] for w in listed.json()] == [doc["workflow_id"]]
    shown = ff("workflow", "show", doc["workflow_id"], "-f", "json")
    assert shown.code == 0
    wf = shown.json()
    assert wf["state"] == "IMAGE_ACTIVE" and wf["image_id"] == doc["image_id"]
    assert [h["state"] for h in wf["history"]][-1] == "IMAGE_ACTIVE"
    table = ff("workflow", "show", doc["workflow_id"])
    assert "History" in table.out and "UPLOAD_BEGIN" in table.out
    watched = ff("workflow", "watch", doc["workflow_id"])
    assert watched.code == 0 and "IMAGE_ACTIVE" in watched.err

    ended = ff("workflow", "cancel", doc["workflow_id"])
    assert ended.code == 1
    assert "already ended (IMAGE_ACTIVE)" in ended.err and "HTTP 409" in ended.err and REQUEST_ID.search(ended.err)


def test_backup_create_wait_prints_ids(ff, cloud, tmp_path):
    server_id, _, _ = boot(cloud, tmp_path)
    made = ff("server", "backup", "create", server_id, "--name", "nightly", "--type", "daily", "--rotation", "1",
              "--wait")
    assert made.code == 0, made.err
    image_id = re.search(r"image_id\s*│\s*([0-9a-f-]{36})", made.out).group(1)
    workflow_id = re.search(r"workflow_id\s*│\s*([0-9a-f-]{36})", made.out).group(1)
    image = image_of(cloud, image_id).json()
    assert image["status"] == "active" and image["image_type"] == "backup" and image["backup_type"] == "daily"
    kinds = ff("workflow", "list", "--server", server_id, "--kind", "backup", "-f", "json").json()
    assert [w["id"] for w in kinds] == [workflow_id]


def test_failing_snapshot_exits_1_with_the_reason(tmp_path, capsys):
    server = start_server(tmp_path / "ff", env={"FREEZEFRAME_TESTING__FAKE_FAIL_ON": "copy"})
    try:
        ff = runner(server, capsys)
        server_id, _, _ = boot(server, tmp_path)
        made = ff("server", "image", "create", server_id, "--name", "doomed", "--wait", "-f", "json")
        assert made.code == 1
        doc = made.json()
        assert doc["state"] == "REVERTED" and "injected failure at copy" in doc["failure_reason"]
        assert f"workflow {doc['workflow_id']} ended REVERTED: " in made.err
        assert "injected failure at copy" in made.err and "last good state LOCAL_SNAPSHOT_STARTED" in made.err
        assert image_of(server, doc["image_id"]).status_code == 404  # the revert removed it
        shown = ff("server", "show", server_id, "-f", "json").json()
        assert shown["status"] == "ACTIVE" and "injected failure" in shown["fault"]["message"]
    finally:
        server.stop()


def test_workflow_list_timeout_cancel_watch(tmp_path, capsys):
    server = start_server(tmp_path / "ff", env={"FREEZEFRAME_TESTING__FAKE_COPY_DELAY": "0.5"})
    try:
        ff = runner(server, capsys)
        server_id, _, _ = boot(server, tmp_path)
        made = ff("server", "image", "create", server_id, "--name", "cancel-me", "-f", "json")
        assert made.code == 0, made.err
        doc = made.json()
        assert set(doc) == {"server_id", "image_id", "workflow_id"}
        running = ff("workflow", "list", "-f", "json").json()
        assert [(w["id"], w["resource_id"]) for w in running] == [(doc["workflow_id"], server_id)]
        assert running[0]["state"] not in ("IMAGE_ACTIVE", "REVERTED", "CANCELLED")

        slow = ff("workflow", "watch", doc["workflow_id"], "--timeout", "0.3")
        assert slow.code == 1 and "timed out after 0.3s" in slow.err

        cancelled = ff("workflow", "cancel", doc["workflow_id"])
        assert cancelled.code == 0, cancelled.err
        # it says what it did, and what the workflow will undo
        assert f"cancel requested for workflow {doc['workflow_id']} (snapshot of server {server_id}, " in cancelled.err
        assert ("it stops at its next step and reverts (the guest thawed, the point in time released, the image "
                "deleted), then ends CANCELLED") in cancelled.err
        assert f"'freezeframe workflow watch {doc['workflow_id']}'" in cancelled.err
        watched = ff("workflow", "watch", doc["workflow_id"])
        assert watched.code == 1
        assert f"workflow {doc['workflow_id']} ended CANCELLED: cancelled by the user" in watched.err
        assert ff("workflow", "show", doc["workflow_id"], "-f", "json").json()["state"] == "CANCELLED"
        again = ff("workflow", "cancel", doc["workflow_id"])
        assert again.code == 1 and "already ended (CANCELLED)" in again.err and "HTTP 409" in again.err
        assert "nothing to cancel" in again.err
        assert image_of(server, doc["image_id"]).status_code == 404

        # --wait follows it to its end: exit 0 once it ended CANCELLED
        made = ff("server", "image", "create", server_id, "--name", "cancel-me-too", "-f", "json")
        assert made.code == 0, made.err
        second = made.json()
        waited = ff("workflow", "cancel", second["workflow_id"], "--wait")
        assert waited.code == 0, waited.err
        assert f"cancel requested for workflow {second['workflow_id']}" in waited.err
        assert f"workflow {second['workflow_id']} ended CANCELLED: cancelled, everything it made removed" in waited.err
        assert ff("workflow", "show", second["workflow_id"], "-f", "json").json()["state"] == "CANCELLED"
        assert image_of(server, second["image_id"]).status_code == 404
    finally:
        server.stop()


def test_wait_asks_again_while_the_guest_agent_does_not_answer(ff, cloud, monkeypatch):
    """The image asks for quiesce and the guest has no agent (the fake driver's guest never
    answers): the service's 409 is recognised, --wait retries with a backoff, saying so, and
    gives up after --timeout; without --wait the 409 says how to wait. (The success path, an
    agent that starts answering, is in tests/unit/test_cli_agent_wait.py.)"""
    from freezeframe.cli import server as server_cli

    image = active_image(cloud, f"quiesced-{uuid.uuid4()}")
    with cloud.client() as images:
        assert images.patch(f"/v2/images/{image['id']}", headers={"Content-Type": "application/openstack-images-v2.1-json-patch"},
                            json=[{"op": "add", "path": "/os_require_quiesce", "value": "yes"}]).status_code == 200
    made = ff("server", "create", f"vm-{uuid.uuid4()}", "--image", image["id"], "--flavor", "m1.tiny", "--wait",
              "-f", "json")
    assert made.code == 0, made.err
    server_id = made.json()["id"]

    bare = ff("server", "image", "create", server_id, "--name", "never")
    assert bare.code == 1
    assert "guest agent does not answer" in bare.err and "HTTP 409" in bare.err
    assert "add --wait to wait for its agent" in bare.err and "retrying" not in bare.err

    monkeypatch.setattr(server_cli, "AGENT_RETRY_FIRST", 0.5)
    waited = ff("server", "image", "create", server_id, "--name", "never", "--wait", "--timeout", "2")
    assert waited.code == 1, waited.err
    retries = [line for line in waited.err.splitlines() if "is not ready yet" in line]
    assert len(retries) >= 2 and "retrying in 0 s" not in waited.err
    assert f"the guest agent of server {made.json()['name']} is not ready yet" in retries[0]
    assert f"gave up after 2s: the guest agent of server {made.json()['name']} still does not answer" in waited.err
    assert "HTTP 409" in waited.err and REQUEST_ID.search(waited.err)
    assert ff("workflow", "list", "--server", server_id, "-f", "json").json() == []   # nothing was started


def test_progress_bar_only_on_a_terminal(cloud, tmp_path):
    server_id, _, _ = boot(cloud, tmp_path)
    env = subprocess_env(tmp_path, OS_IMAGE_URL=cloud.image_url, OS_TOKEN=cloud.member_token, TERM="xterm",
                         COLUMNS="120")
    cmd = [sys.executable, "-m", "freezeframe", "server", "image", "create", server_id, "--name", "tty", "--wait"]
    code, out, shown = _run_on_pty(cmd, env, stdout_tty=False)
    assert code == 0, shown
    assert b"image_id" in out and b"workflow_id" in out  # the IDs on stdout, the bar on the terminal
    assert b"snapshot IMAGE_ACTIVE" in shown and b"100%" in shown and b"\x1b[" in shown


def test_unknown_server_exits_1_with_the_message(ff):
    missing = str(uuid.uuid4())
    shown = ff("server", "show", missing)
    assert shown.code == 1 and shown.out == ""
    assert f"Instance {missing} could not be found." in shown.err
    assert "HTTP 404" in shown.err and REQUEST_ID.search(shown.err)
    named = ff("server", "image", "create", "no-such-server", "--name", "x", "--wait")
    assert named.code == 1 and "no server with name or ID 'no-such-server'" in named.err
    assert ff("workflow", "show", missing).code == 1
    deleted = ff("server", "delete", missing, "no-such-server")
    assert deleted.code == 1 and "2 of 2 servers were not deleted" in deleted.err


def test_no_endpoint_exits_2(ff):
    for args in (("server", "list"), ("workflow", "list"), ("workflow", "watch", "x")):
        result = ff(*args, auth=False)
        assert result.code == 2, args
        assert "no compute endpoint" in result.err and "--os-compute-url" in result.err


def test_unreachable_exits_3(ff):
    url = f"http://127.0.0.1:{free_port()}/compute/v2.1"
    result = ff("server", "list", "--os-compute-url", url, auth=False)
    assert result.code == 3
    assert "cannot reach the compute service" in result.err and "--os-compute-url" in result.err
    result = ff("workflow", "list", "--os-compute-url", url, auth=False)
    assert result.code == 3 and "cannot reach the workflow service" in result.err


def test_compute_url_alone_is_enough(ff, cloud, monkeypatch):
    """Only --os-compute-url (and the token from the environment): workflows are found beside it."""
    monkeypatch.setenv("OS_TOKEN", cloud.member_token)
    result = ff("workflow", "list", "-f", "json", "--os-compute-url", cloud.url + "/compute", auth=False)
    assert result.code == 0, result.err
    assert isinstance(result.json(), list)


# -- endpoint resolution ---------------------------------------------------------------------


def test_resolution_defaults_from_the_image_url():
    found = compute_cloud.resolve(env={"OS_IMAGE_URL": "http://h:9292/image/v2", "OS_TOKEN": "t"})
    assert (found.compute_url, found.workflow_url, found.image_url, found.token) == (
        "http://h:9292/compute/v2.1", "http://h:9292/v1", "http://h:9292/image", "t")
    assert found.compute_source == found.workflow_source == "the image URL from OS_IMAGE_URL"


def test_resolution_precedence(tmp_path):
    env = {"OS_COMPUTE_URL": "http://env:1/compute", "OS_IMAGE_URL": "http://img:2/image"}
    found = compute_cloud.resolve(env=env)
    assert (found.compute_url, found.workflow_url) == ("http://env:1/compute/v2.1", "http://env:1/v1")
    assert found.image_url == "http://img:2/image"
    flagged = compute_cloud.resolve(compute_url="http://flag:3/compute/v2.1/", workflow_url="http://wf:4/v1", env=env)
    assert (flagged.compute_url, flagged.workflow_url) == ("http://flag:3/compute/v2.1", "http://wf:4/v1")
    assert flagged.compute_source == "--os-compute-url"

    (tmp_path / "clouds.yaml").write_text(yaml.safe_dump({"clouds": {"ff": {
        "auth_type": "admin_token", "auth": {"endpoint": "http://cloud:5/image", "token": "secret"},
        "compute_endpoint_override": "http://nova:8774/v2.1"}}}))
    chosen = compute_cloud.resolve(cloud_name="ff", env=env, cwd=tmp_path)
    assert chosen.compute_url == "http://nova:8774/v2.1" and chosen.token == "secret"
    assert chosen.workflow_url == "http://cloud:5/v1"  # a compute URL without /compute says nothing of the root
    assert "cloud 'ff'" in chosen.compute_source
    with pytest.raises(ConfigError, match="no compute endpoint"):
        compute_cloud.resolve(env={})
    with pytest.raises(ConfigError, match="compute URL 'nova:8774' must start with http"):
        compute_cloud.resolve(compute_url="nova:8774", env={})
