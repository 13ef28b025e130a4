"""The command API in-process: tokens, shapes, 400/401/404/409."""

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from freezeframe.agent import extensions, server
from freezeframe.agent.config import DiskSpec
from freezeframe.agent.rootdev import GiB

from .conftest import MiB, make_disk, pattern

TOKEN = "k" * 43


@pytest.fixture
def agent(tmp_path):
    disk = make_disk(tmp_path / "disk.img", 4 * MiB, {0: pattern(5, MiB), 3 * MiB: pattern(6, 1000)})
    ctx = extensions.Context(disks=[DiskSpec(path=disk, name="/dev/sda", size=8 * GiB)], retry_backoff=0.05)
    state = server.AgentState(ctx, token=TOKEN)
    httpd = server.make_server(state, "127.0.0.1", 0)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    state.disk = disk
    ended = []
    state.on_command_end.append(lambda: ended.append(time.monotonic()))
    state.ended = ended
    yield state
    state.stop("test over", timeout=5)
    httpd.shutdown()
    httpd.server_close()


def call(state, method, path, body=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(state.url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def stream_params(dav, **over):
    return {"url": dav.op_url, "username": dav.user, "password": dav.password, "chunk_size": MiB,
            "root_device_hints": None, "image_name": "img", **over}


def test_status_needs_no_token(agent):
    code, body = call(agent, "GET", "/v1/status")
    assert code == 200 and body["version"].startswith("freezeframe-agent") and body["started_at"] > 0


@pytest.mark.parametrize("query", ["", "?agent_token=", "?agent_token=" + "x" * 43, "?agent_token=" + TOKEN[:-1]])
def test_missing_or_bad_token_is_401_and_nothing_streams(agent, dav, query):
    code, body = call(agent, "POST", "/v1/commands/" + query + ("&" if query else "?") + "wait=true",
                      {"name": "snapshot.stream_image", "params": stream_params(dav)})
    assert code == 401 and body["type"] == "Unauthorized" and "token" in body["message"]
    code, _ = call(agent, "GET", "/v1/commands/" + query)
    assert code == 401
    assert agent.list() == [] and dav.tap.methods == [] and list(dav.op_dir.iterdir()) == []


def test_no_token_yet_refuses_everything(agent, dav):
    agent.token = None
    code, body = call(agent, "POST", f"/v1/commands/?agent_token={TOKEN}", {"name": "system.get_status", "params": {}})
    assert code == 401 and "lookup" in body["message"]


def test_token_in_header(agent):
    req = urllib.request.Request(agent.url + "/v1/commands/", headers={"X-Agent-Token": TOKEN})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert json.loads(resp.read()) == {"commands": []}


@pytest.mark.parametrize(
    "raw, code, kind",
    [
        (b"not json", 400, "InvalidRequest"),
        (b"[]", 400, "InvalidRequest"),
        (json.dumps({"params": {}}).encode(), 400, "InvalidRequest"),
        (json.dumps({"name": "snapshot.stream_image", "params": []}).encode(), 400, "InvalidRequest"),
        (json.dumps({"name": "nosuch.command", "params": {}}).encode(), 404, "InvalidCommandError"),
        (json.dumps({"name": "snapshot.stream_image", "params": {"url": "http://x/no-slash"}}).encode(), 400,
         "InvalidCommandParamsError"),
        (json.dumps({"name": "snapshot.stream_image", "params": {"url": "http://x/", "username": "u",
                     "password": "p", "chunk_size": 1000}}).encode(), 400, "InvalidCommandParamsError"),
        (json.dumps({"name": "snapshot.stream_image", "params": {"url": "http://x/", "username": "u",
                     "password": "p", "root_device_hints": {"colour": "red"}}}).encode(), 400,
         "InvalidCommandParamsError"),
    ],
)
def test_bad_requests(agent, raw, code, kind):
    status, body = call(agent, "POST", f"/v1/commands/?agent_token={TOKEN}", raw=raw)
    assert (status, body["type"]) == (code, kind)
    assert agent.list() == []


def test_unknown_command_id_and_path(agent):
    assert call(agent, "GET", f"/v1/commands/nope?agent_token={TOKEN}")[0] == 404
    assert call(agent, "GET", "/v2/whatever")[0] == 404


def test_stream_command_succeeds_and_reports(agent, dav):
    code, body = call(agent, "POST", f"/v1/commands/?wait=true&agent_token={TOKEN}",
                      {"name": "snapshot.stream_image", "params": stream_params(dav)})
    assert code == 200, body
    assert body["command_status"] == "SUCCEEDED" and body["command_error"] is None
    result = body["command_result"]
    assert result["device"] == agent.disk and [c["index"] for c in result["chunks"]] == [0, 3]
    assert result["sent_bytes"] == 2 * MiB and result["resumed_from_chunk"] == 0  # chunk 3: 1000 bytes + zeros
    fields = agent.heartbeat_fields()
    assert fields["agent_status"] == "end" and fields["progress"]["percent"] == 100
    assert fields["progress"]["command_id"] == body["id"]
    assert len(agent.ended) == 1  # a heartbeat goes out at once
    code, listing = call(agent, "GET", f"/v1/commands?agent_token={TOKEN}")
    assert [c["id"] for c in listing["commands"]] == [body["id"]]
    code, one = call(agent, "GET", f"/v1/commands/{body['id']}?wait=true&agent_token={TOKEN}")
    assert one == body


def test_busy_is_409_and_stop_fails_the_command(agent, dav):
    dav.tap.fail_from = 0  # every chunk PUT fails: the command stays RUNNING, retrying
    agent.ctx.retry_backoff = 30
    code, body = call(agent, "POST", f"/v1/commands/?agent_token={TOKEN}",
                      {"name": "snapshot.stream_image", "params": stream_params(dav)})
    assert code == 200 and body["command_status"] == "RUNNING"
    code, busy = call(agent, "POST", f"/v1/commands/?agent_token={TOKEN}",
                      {"name": "system.get_status", "params": {}})
    assert code == 409 and busy["type"] == "AgentIsBusy"
    assert agent.heartbeat_fields()["agent_status"] == "start"
    t0 = time.monotonic()
    agent.stop("the agent was stopped (SIGTERM)", timeout=10)
    assert time.monotonic() - t0 < 5  # did not sit out the 30 s backoff
    code, done = call(agent, "GET", f"/v1/commands/{body['id']}?agent_token={TOKEN}")
    assert done["command_status"] == "FAILED"
    assert done["command_error"]["type"] == "Stopped" and "SIGTERM" in done["command_error"]["message"]
    fields = agent.heartbeat_fields()
    assert fields["agent_status"] == "error" and "SIGTERM" in fields["agent_status_message"]


def test_no_matching_root_device_fails_the_command(agent, dav):
    code, body = call(agent, "POST", f"/v1/commands/?wait=true&agent_token={TOKEN}",
                      {"name": "snapshot.stream_image", "params": stream_params(dav, root_device_hints={"size": 99})})
    assert code == 200 and body["command_status"] == "FAILED"
    assert body["command_error"]["type"] == "DeviceNotFound" and "/dev/sda" in body["command_error"]["message"]
    assert dav.tap.methods == []


def test_node_hints_from_lookup_are_used(agent):
    agent.ctx.node = {"properties": {"root_device": {"name": "/dev/sdq"}}}
    code, body = call(agent, "POST", f"/v1/commands/?agent_token={TOKEN}", {"name": "system.get_status"})
    assert code == 200 and body["command_status"] == "SUCCEEDED"
    result = body["command_result"]
    assert result["root_device"] is None and "/dev/sdq" in result["root_device_error"]
    agent.ctx.node = None
    code, body = call(agent, "POST", f"/v1/commands/?agent_token={TOKEN}", {"name": "system.get_status"})
    assert body["command_result"]["root_device"] == "/dev/sda"
    assert agent.heartbeat_fields()["agent_status"] == "start"  # a status query is not "a command ended"
