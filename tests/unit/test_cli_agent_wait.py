"""A snapshot's ``--wait`` waits out the compute API's 409 for a guest agent that does not answer
yet (a guest still booting), backing off and saying so, and gives up after a bounded time. The
service is an httpx MockTransport speaking the compute and workflow APIs (Nova's fault body)."""

from __future__ import annotations

import json

import httpx
import pytest

from freezeframe.cli import server as server_cli
from freezeframe.cli.main import build_parser
from freezeframe.compute.client import WORKFLOW_HEADER, Accepted, ComputeClient, ComputeError
from tests.fakeclock import Clock

SERVER_ID = "6f1c1f9e-8a55-4d6c-9b1f-2a7a1b0c0d11"
IMAGE_ID = "0b6b0d3e-3a0e-4f3a-9b52-6d0b7b0e8a21"
WORKFLOW_ID = "c7a3f0b1-6a1d-4c5e-8f0e-5b2d9e1c4a30"
AGENT_409 = (f"Instance {SERVER_ID} requires quiesce (os_require_quiesce) but its guest agent does not answer; "
             "no snapshot was taken")
BUSY_409 = f"Cannot 'createImage' instance {SERVER_ID} while it is in vm_state active and task_state image_pending"


def fault(message: str) -> httpx.Response:
    return httpx.Response(409, json={"conflictingRequest": {"code": 409, "message": message}},
                          headers={"x-openstack-request-id": "req-00000000-0000-0000-0000-000000000409"})


class Compute:
    """The compute API of one server whose snapshot requests are answered, in turn, by ``answers``
    (409 messages; then 202 for good)."""

    def __init__(self, *answers: str):
        self.answers = list(answers)
        self.posts = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "GET" and path == f"/compute/v2.1/servers/{SERVER_ID}":
            return httpx.Response(200, json={"server": {"id": SERVER_ID, "name": "vm1", "status": "ACTIVE",
                                                        "OS-EXT-STS:task_state": None}})
        if request.method == "POST" and path == f"/compute/v2.1/servers/{SERVER_ID}/action":
            assert "createImage" in json.loads(request.content)
            self.posts += 1
            if self.answers:
                return fault(self.answers.pop(0))
            return httpx.Response(202, json={"image_id": IMAGE_ID}, headers={WORKFLOW_HEADER: WORKFLOW_ID})
        if request.method == "GET" and path == f"/v1/workflows/{WORKFLOW_ID}":
            return httpx.Response(200, json={"workflow": {
                "id": WORKFLOW_ID, "kind": "snapshot", "state": "IMAGE_ACTIVE", "progress": 100,
                "resource_id": SERVER_ID, "image_id": IMAGE_ID,
                "history": [{"state": "IMAGE_ACTIVE", "progress": 100, "at": "2026-12-01T00:00:00Z", "detail": ""}]}})
        return httpx.Response(404, json={"itemNotFound": {"code": 404, "message": f"no {path}"}})


def client(service: Compute) -> ComputeClient:
    return ComputeClient("http://ff.test/compute/v2.1", "http://ff.test/v1", "token",
                         transport=httpx.MockTransport(service))


def image_create(service: Compute, *argv: str) -> int:
    args = build_parser().parse_args(["server", "image", "create", SERVER_ID, "--name", "snap", *argv])
    with client(service) as compute:
        return server_cli.image_create.__wrapped__(args, compute, None)


def test_wait_asks_again_until_the_agent_answers(monkeypatch, capsys):
    clock = Clock()
    monkeypatch.setattr(server_cli.time, "sleep", clock.sleep)
    service = Compute(AGENT_409, AGENT_409)
    assert image_create(service, "--wait", "-f", "json") == 0
    out, err = capsys.readouterr()
    assert service.posts == 3 and clock.slept[:2] == [2.0, 4.0]
    assert ("the guest agent of server vm1 is not ready yet (the guest may still be booting); retrying in 2 s "
            "(giving up after 300 s)...") in err
    assert "retrying in 4 s" in err
    doc = json.loads(out)
    assert doc["image_id"] == IMAGE_ID and doc["workflow_id"] == WORKFLOW_ID and doc["state"] == "IMAGE_ACTIVE"


def test_wait_gives_up_after_its_timeout_saying_why():
    clock = Clock()
    service = Compute(*[AGENT_409] * 100)
    with client(service) as compute, pytest.raises(ComputeError) as raised:
        server_cli.accept_when_agent_ready(lambda: compute.create_image(SERVER_ID, "snap"), "vm1", timeout=20,
                                           sleep=clock.sleep, clock=clock)
    assert clock.slept == [2.0, 4.0, 8.0, 6.0]     # doubling, and never past the timeout
    assert service.posts == 5
    text = str(raised.value)
    assert text.startswith("gave up after 20s: the guest agent of server vm1 still does not answer (is "
                           "qemu-guest-agent running in the guest?): ")
    assert AGENT_409 in text and "HTTP 409" in text and "req-00000000-0000-0000-0000-000000000409" in text


def test_the_backoff_is_capped():
    clock = Clock()
    service = Compute(*[AGENT_409] * 100)
    with client(service) as compute, pytest.raises(ComputeError):
        server_cli.accept_when_agent_ready(lambda: compute.create_image(SERVER_ID, "snap"), "vm1", timeout=100,
                                           sleep=clock.sleep, clock=clock)
    assert max(clock.slept) == server_cli.AGENT_RETRY_MAX and sum(clock.slept) == 100


def test_other_conflicts_fail_at_once():
    clock = Clock()
    service = Compute(BUSY_409)
    with client(service) as compute, pytest.raises(ComputeError) as raised:
        server_cli.accept_when_agent_ready(lambda: compute.create_image(SERVER_ID, "snap"), "vm1",
                                           sleep=clock.sleep, clock=clock)
    assert clock.slept == [] and service.posts == 1 and raised.value.message == BUSY_409


def test_an_answer_at_once_is_not_delayed():
    clock = Clock()
    with client(Compute()) as compute:
        accepted = server_cli.accept_when_agent_ready(lambda: compute.create_image(SERVER_ID, "snap"), "vm1",
                                                      sleep=clock.sleep, clock=clock)
    assert isinstance(accepted, Accepted) and accepted.workflow_id == WORKFLOW_ID and clock.slept == []


def test_without_wait_the_refusal_says_how_to_wait(monkeypatch):
    monkeypatch.setattr(server_cli.time, "sleep", lambda _s: pytest.fail("no retry without --wait"))
    service = Compute(AGENT_409)
    with pytest.raises(ComputeError) as raised:
        image_create(service)
    assert service.posts == 1
    assert raised.value.message == AGENT_409 + " (retry once the guest has booted, or add --wait to wait for its agent)"
