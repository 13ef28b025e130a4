"""The openstackclient plugin's pieces without a server: where it finds each API (overrides,
catalog, the compute endpoint's root for the workflow API), how it turns the services' error
bodies into the CLI's errors (so the waits ride through a restart), and the progress lines."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest
import requests
from keystoneauth1 import exceptions as ksa_exceptions

from freezeframe.baremetal.client import BaremetalError
from freezeframe.cli.ride import away
from freezeframe.compute.client import ComputeError, Unreachable, Workflow
from freezeframe.osc.client import Client
from freezeframe.osc.progress import Printer


class Catalog:
    def __init__(self, entries: dict[str, str]) -> None:
        self.entries = entries

    def url_for(self, service_type: str, **_: object) -> str:
        if service_type not in self.entries:
            raise ksa_exceptions.EndpointNotFound(service_type)
        return self.entries[service_type]


class Manager:
    """What the plugin uses of openstackclient's ClientManager."""

    def __init__(self, endpoints: dict[str, str], config: dict | None = None, catalog: dict | None = None,
                 session=None) -> None:
        self.endpoints, self.config = endpoints, config or {}
        self.auth_ref = SimpleNamespace(service_catalog=Catalog(catalog or {})) if catalog is not None else None
        self.session, self.region_name, self.interface = session, "RegionOne", "public"

    def get_endpoint_for_service_type(self, service_type: str, region_name=None, interface="public"):
        return self.endpoints.get(service_type)

    def get_configuration(self) -> dict:
        return dict(self.config)


def test_endpoints_as_the_services_mount_them():
    client = Client(Manager({"compute": "http://h:9292/compute/v2.1", "image": "http://h:9292/image/v2",
                             "baremetal": "http://h:9292/baremetal/v1/"}))
    assert client.url("compute") == "http://h:9292/compute/v2.1"
    assert client.url("image") == "http://h:9292/image"
    assert client.url("baremetal") == "http://h:9292/baremetal/v1"
    assert client.url("workflow") == "http://h:9292/v1"        # not in the catalog: the compute root


def test_workflow_endpoint_override_then_catalog_then_image_root():
    endpoints = {"compute": "http://h:1/compute/v2.1"}
    assert Client(Manager(endpoints, config={"freezeframe_workflow_endpoint_override": "http://w:2/v1/"})
                  ).url("workflow") == "http://w:2/v1"
    assert Client(Manager(endpoints, catalog={"freezeframe-workflow": "http://w:3"})).url("workflow") == "http://w:3/v1"
    assert Client(Manager(endpoints, catalog={})).url("workflow") == "http://h:1/v1"
    assert Client(Manager({"image": "http://h:4/image"})).url("workflow") == "http://h:4/v1"
    with pytest.raises(ComputeError, match="no workflow endpoint"):
        Client(Manager({})).url("workflow")


def answer(status: int, body: object, content_type: str = "application/json") -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    resp._content = json.dumps(body).encode() if body is not None else b""
    resp.headers["Content-Type"] = content_type
    resp.headers["X-OpenStack-Request-Id"] = "req-1"
    return resp


class Session:
    def __init__(self, result) -> None:
        self.result, self.calls = result, []

    def request(self, url, method, **kw):
        self.calls.append((method, url, kw))
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def client_answering(result) -> tuple[Client, Session]:
    session = Session(result)
    return Client(Manager({"compute": "http://h:1/compute/v2.1", "baremetal": "http://h:1/baremetal"},
                          session=session)), session


def test_nova_fault_body_becomes_a_compute_error():
    client, session = client_answering(answer(404, {"itemNotFound": {"code": 404, "message": "No workflow x"}}))
    with pytest.raises(ComputeError) as err:
        client.show_workflow("x")
    assert err.value.status == 404 and err.value.message == "No workflow x" and err.value.request_id == "req-1"
    method, url, kw = session.calls[0]
    assert (method, url) == ("GET", "http://h:1/v1/workflows/x") and kw["raise_exc"] is False


def test_ironic_fault_body_becomes_a_baremetal_error():
    fault = {"error_message": json.dumps({"faultstring": "The requested action \"snapshot\" can not be performed "
                                                         "on node n while it is in state \"enroll\".",
                                          "faultcode": "Client", "debuginfo": None})}
    client, session = client_answering(answer(400, fault))
    with pytest.raises(BaremetalError, match="can not be performed") as err:
        client.snapshot_node("n", "img")
    assert err.value.status == 400
    method, url, kw = session.calls[0]
    assert (method, url) == ("PUT", "http://h:1/baremetal/v1/nodes/n/states/provision")
    assert kw["json"] == {"target": "snapshot", "image_ref": "img"}
    assert kw["headers"]["X-OpenStack-Ironic-API-Version"] == "1.116"


def test_no_connection_or_a_503_is_ridden_through():
    client, _ = client_answering(ksa_exceptions.ConnectFailure("refused"))
    with pytest.raises(Unreachable) as err:
        client.show_workflow("x")
    assert err.value.service == "workflow" and away(err.value) == "it cannot be reached"
    client, _ = client_answering(answer(503, {"error": {"message": "restarting"}}))
    with pytest.raises(ComputeError) as err:
        client.show_workflow("x")
    assert away(err.value) == "it answers HTTP 503"
    client, _ = client_answering(answer(409, {"error": {"message": "already ended"}}))
    with pytest.raises(ComputeError) as err:
        client.cancel_workflow("x")
    assert away(err.value) is None and err.value.status == 409


def wf(state: str, progress: int, history: list[tuple[str, int | None, str]]) -> Workflow:
    return Workflow.from_json({"id": "w", "state": state, "progress": progress, "last_state_change_at": "t",
                               "history": [{"state": s, "progress": p, "at": "t", "detail": d}
                                           for s, p, d in history]})


def test_progress_prints_each_change_once():
    out = io.StringIO()
    show = Printer(out)
    show(wf("PENDING", 0, []))
    show(wf("PENDING", 0, []))
    show(wf("UPLOAD_BEGIN", 0, [("LOCAL_SNAPSHOT_STARTED", 0, ""), ("UPLOAD_BEGIN", 0, "")]))
    show(wf("UPLOAD_BEGIN", 40, [("LOCAL_SNAPSHOT_STARTED", 0, ""), ("UPLOAD_BEGIN", 0, "")]))
    failed = [("LOCAL_SNAPSHOT_STARTED", 0, ""), ("UPLOAD_BEGIN", 0, ""), ("FAILED", None, "disk full")]
    show(wf("FAILED", 40, failed))
    show(wf("FAILED", 40, failed))
    rows = [line.split()[1:3] for line in out.getvalue().splitlines()]
    assert rows == [["PENDING", "0%"], ["LOCAL_SNAPSHOT_STARTED", "0%"], ["UPLOAD_BEGIN", "0%"],
                    ["UPLOAD_BEGIN", "40%"], ["FAILED", "disk"]]
