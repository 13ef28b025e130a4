"""The agent as a process (python -m freezeframe.agent): lookup, heartbeats, commands, SIGTERM;
and that it imports with the standard library alone."""

import json
import subprocess
import sys
import time

import pytest

from tests.agent_proc import SRC, AgentProcess

from .conftest import MiB, make_disk, pattern
from .fakeapi import NODE_UUID, TOKEN, FakeApi


@pytest.fixture
def api():
    api = FakeApi(heartbeat_timeout=60)  # heartbeats every 18-36 s: anything sooner was poked
    yield api
    api.stop()


def stream_params(dav):
    return {"url": dav.op_url, "username": dav.user, "password": dav.password, "chunk_size": MiB,
            "root_device_hints": {"name": "/dev/sda"}, "image_name": "img"}


def test_lookup_heartbeat_stream_and_end_heartbeat(api, dav, tmp_path):
    disk = make_disk(tmp_path / "disk.img", 6 * MiB, {MiB: pattern(9, 2 * MiB), 5 * MiB: b"end"})
    with AgentProcess(api_url=api.url, node_uuid=NODE_UUID, disks=[f"{disk},name=/dev/sda"]) as agent:
        first = api.wait_heartbeat(lambda h: True)
        assert first["agent_token"] == TOKEN and first["agent_status"] == "start"
        assert first["callback_url"] == agent.api  # listening on 127.0.0.1: advertised as is
        assert api.lookups[0]["node_uuid"] == NODE_UUID
        # without the token: 401 and nothing reaches the area
        assert agent.command("snapshot.stream_image", stream_params(dav), token=None)[0] == 401
        assert agent.command("snapshot.stream_image", stream_params(dav), token="x" * 40)[0] == 401
        assert dav.tap.methods == []
        code, body = agent.command("snapshot.stream_image", stream_params(dav), token=TOKEN)
        assert code == 200, body
        done = agent.wait_command(body["id"], TOKEN)
        assert done["command_status"] == "SUCCEEDED", done
        end = api.wait_heartbeat(lambda h: h["agent_status"] == "end", timeout=5)
        assert end["progress"]["percent"] == 100 and end["progress"]["command_id"] == body["id"]
        assert end["progress"]["bytes_sent"] == 3 * MiB
        assert [c["index"] for c in done["command_result"]["chunks"]] == [1, 2, 5]
    assert agent.proc.returncode == 0


def test_sigterm_mid_stream_fails_the_command_and_says_why(api, dav, tmp_path):
    disk = make_disk(tmp_path / "disk.img", 4 * MiB, {0: pattern(1, 4 * MiB)})
    dav.tap.fail_from = 1  # chunk 1 keeps failing: the stream is stuck retrying
    with AgentProcess(api_url=api.url, node_uuid=NODE_UUID, disks=[f"{disk},name=/dev/sda"],
                      retry_backoff=30) as agent:
        api.wait_heartbeat(lambda h: True)
        code, body = agent.command("snapshot.stream_image", stream_params(dav), token=TOKEN)
        assert code == 200 and body["command_status"] == "RUNNING"
        deadline = time.monotonic() + 10
        while not dav.tap.puts and time.monotonic() < deadline:
            time.sleep(0.05)
        t0 = time.monotonic()
        assert agent.terminate(timeout=20) == 0
        assert time.monotonic() - t0 < 10
    last = api.heartbeats[-1]
    assert last["agent_status"] == "error" and "SIGTERM" in last["agent_status_message"]
    assert last["progress"]["chunk"] >= 1


def test_lookup_timeout_exits_nonzero(tmp_path):
    api = FakeApi(lookup_responses=[(404, {"error_message": "Node not found"})])
    try:
        agent = AgentProcess(api_url=api.url, node_uuid=NODE_UUID, lookup_timeout=0.5).start()
        assert agent.proc.wait(15) == 1
        assert "lookup failed" in agent.stderr or "HTTP 404" in agent.stderr
        assert api.heartbeats == []
    finally:
        api.stop()


def test_agent_imports_with_the_standard_library_only():
    """Debian's python3 with no site-packages: nothing outside the stdlib and freezeframe.agent."""
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "import freezeframe.agent.__main__, freezeframe.agent.stream, freezeframe.agent.rootdev\n"
        "import json\n"
        "mods = sorted(m for m in sys.modules if m != '__main__' and m.split('.')[0] not in sys.stdlib_module_names)\n"
        "print(json.dumps(mods))\n" % SRC
    )
    python = "/usr/bin/python3" if __import__("os").path.exists("/usr/bin/python3") else sys.executable
    out = subprocess.run([python, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    mods = json.loads(out.stdout)
    assert mods and all(m == "freezeframe" or m.startswith("freezeframe.agent") for m in mods), mods
