"""Lookup (backoff, token rules) and heartbeats against a stand-in API on loopback."""

import socket

import pytest

from freezeframe.agent import api_client

from .fakeapi import NODE_UUID, TOKEN, FakeApi


@pytest.fixture
def fake():
    apis = []

    def make(**kw):
        api = FakeApi(**kw)
        apis.append(api)
        return api

    yield make
    for api in apis:
        api.stop()


class Clock:
    def __init__(self):
        self.now = 0.0
        self.waits = []

    def wait(self, seconds):
        self.waits.append(seconds)
        self.now += seconds
        return False


def lookup(api_url, clock, timeout=300.0, macs=("52:54:00:12:34:56",), uuid=NODE_UUID):
    client = api_client.ApiClient(api_url, timeout=5)
    return client.lookup(list(macs), uuid, timeout=timeout, wait=clock.wait, clock=lambda: clock.now)


def test_lookup_backs_off_5_10_30_on_404_and_409(fake):
    api = fake(lookup_responses=[(404, {"error_message": "nope"}), (409, {}), (404, {}), (404, {}), (200, None)])
    clock = Clock()
    body = lookup(api.url, clock)
    assert body["config"]["agent_token"] == TOKEN and body["node"]["uuid"] == NODE_UUID
    assert clock.waits == [5.0, 10.0, 30.0, 30.0]
    assert api.lookups[0] == {"addresses": "52:54:00:12:34:56", "node_uuid": NODE_UUID}
    assert api.headers[0]["x-openstack-ironic-api-version"] == "1.116"


def test_lookup_gives_up_after_the_timeout(fake):
    api = fake(lookup_responses=[(404, {"error_message": "Node could not be found"})])
    clock = Clock()
    with pytest.raises(api_client.LookupFailed, match="lookup failed for 60 s: HTTP 404: Node could not be found"):
        lookup(api.url, clock, timeout=60)
    assert sum(clock.waits) == 60 and clock.waits[:3] == [5.0, 10.0, 30.0]


@pytest.mark.parametrize(
    "token, reason",
    [("******", "already handed out"), ("short-token", "at least 32"), (None, "at least 32")],
)
def test_lookup_refuses_unusable_tokens(fake, token, reason):
    body = {"node": {"uuid": NODE_UUID}, "config": {"heartbeat_timeout": 30, "agent_token": token}}
    api = fake(lookup_responses=[(200, body)])
    with pytest.raises(api_client.LookupFailed, match=reason):
        lookup(api.url, Clock(), timeout=20)


def test_lookup_400_is_final_and_nothing_to_look_up_by(fake):
    api = fake(lookup_responses=[(400, {"error_message": "bad"})])
    clock = Clock()
    with pytest.raises(api_client.LookupFailed, match="refused"):
        lookup(api.url, clock)
    assert clock.waits == []
    with pytest.raises(api_client.LookupFailed, match="nothing to look up by"):
        lookup(api.url, clock, macs=(), uuid=None)


def test_lookup_retries_connection_errors():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    clock = Clock()
    with pytest.raises(api_client.LookupFailed, match="lookup failed for 20 s"):
        lookup(f"http://127.0.0.1:{port}/baremetal", clock, timeout=20)
    assert clock.waits == [5.0, 10.0, 5.0]


def test_heartbeater_sends_ironic_fields_and_pokes(fake):
    api = fake()
    client = api_client.ApiClient(api.url, timeout=5)
    status = {"agent_status": "start", "agent_status_message": "", "progress": {"percent": 10}}
    hb = api_client.Heartbeater(client, NODE_UUID, TOKEN, "http://10.0.0.5:9999", 600, lambda: dict(status))
    hb.start()
    first = api.wait_heartbeat(lambda h: True, timeout=5)
    assert first == {"callback_url": "http://10.0.0.5:9999", "agent_token": TOKEN,
                     "agent_version": first["agent_version"], "agent_status": "start",
                     "agent_status_message": "", "progress": {"percent": 10}}
    assert first["agent_version"].startswith("freezeframe-agent ")
    status.update(agent_status="end", agent_status_message="snapshot.stream_image: SUCCEEDED")
    hb.poke()  # the next one comes at once, not 180-360 s later
    api.wait_heartbeat(lambda h: h["agent_status"] == "end", timeout=5)
    hb.stop(final=False)
    assert hb.sent == 2 and hb.errors == 0


def test_heartbeat_rejected_token_counts_as_error(fake):
    api = fake()
    client = api_client.ApiClient(api.url, timeout=5)
    hb = api_client.Heartbeater(client, NODE_UUID, "x" * 40, "http://h:1", 600, dict)
    assert hb.beat() is False and hb.errors == 1 and api.heartbeats == []


def test_local_macs(tmp_path):
    for name, mac in [("lo", "00:00:00:00:00:00"), ("eth0", "52:54:00:AA:BB:CC"), ("dummy", "00:00:00:00:00:00"),
                      ("eth1", "52:54:00:aa:bb:cd")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "address").write_text(mac + "\n")
    assert api_client.local_macs(str(tmp_path)) == ["52:54:00:aa:bb:cc", "52:54:00:aa:bb:cd"]
