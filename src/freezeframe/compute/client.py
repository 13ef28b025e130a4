"""A typed client for the compute API (Nova v2.1 subset) and the workflow API, on httpx.

Used by the CLI and by any code that starts or follows snapshots. Errors are ``ComputeError``
with the server's message, HTTP status and request id (``freezeframe.common.httpclient``).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any, Mapping

import httpx

from freezeframe.common import remote
from freezeframe.common.httpclient import DEFAULT_TIMEOUT, ServiceClient, looks_like_id, request_id_of
from freezeframe.common.remote import RemoteError

# createImage/createBackup answer {"image_id"} from 2.45 on; 2.84 adds event details.
MICROVERSION = "2.45"
EVENT_DETAILS_MICROVERSION = "2.84"
WORKFLOW_HEADER = "X-Freezeframe-Workflow-Id"
SUCCEEDED = frozenset({"IMAGE_ACTIVE", "COMPLETE"})     # a snapshot's, a volume workflow's
# Where a workflow stops for good; FAILED normally moves on to REVERTED once the revert is done.
TERMINAL = SUCCEEDED | {"REVERTED", "CANCELLED"}
FAILED = "FAILED"


class ComputeError(RemoteError):
    """A compute or workflow request failed. ``status`` is None when no HTTP response was received."""


class Unreachable(ComputeError, remote.Unreachable):
    """No connection to the service could be made (refused, unknown host, connect timeout).
    ``service``: "compute" or "workflow"."""

    def __init__(self, message: str, *, service: str | None = "compute") -> None:
        super().__init__(message, service=service)


class WaitTimeout(ComputeError):
    """A server or workflow did not reach the awaited state in time."""


@dataclass(frozen=True, eq=False)
class Server:
    id: str
    name: str | None
    status: str
    vm_state: str | None
    task_state: str | None
    power_state: int | None
    fault: str | None
    # The whole document as the server sent it.
    attrs: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, doc: Any) -> Server:
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
            raise ComputeError(f"the server sent something that is not a server: {str(doc)[:200]}")
        fault = doc.get("fault")
        return cls(id=doc["id"], name=doc.get("name"), status=str(doc.get("status", "UNKNOWN")),
                   vm_state=doc.get("OS-EXT-STS:vm_state"), task_state=doc.get("OS-EXT-STS:task_state"),
                   power_state=doc.get("OS-EXT-STS:power_state"),
                   fault=fault.get("message") if isinstance(fault, dict) else None, attrs=doc)


@dataclass(frozen=True)
class Flavor:
    id: str
    name: str


@dataclass(frozen=True)
class Accepted:
    """What createImage/createBackup answered: the (queued) image and the workflow filling it."""
    server_id: str
    image_id: str
    workflow_id: str
    request_id: str | None


@dataclass(frozen=True)
class WorkflowEvent:
    state: str
    progress: int | None
    at: str | None
    detail: str


@dataclass(frozen=True, eq=False)
class Workflow:
    id: str
    kind: str | None
    state: str
    progress: int
    resource_id: str | None
    image_id: str | None
    failure_reason: str | None
    last_good_state: str | None
    stalled: bool
    # Only ``show`` returns the history; ``list`` leaves it empty.
    history: tuple[WorkflowEvent, ...]
    attrs: Mapping[str, Any] = field(repr=False)

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.state in SUCCEEDED

    @classmethod
    def from_json(cls, doc: Any) -> Workflow:
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), str) or not isinstance(doc.get("state"), str):
            raise ComputeError(f"the server sent something that is not a workflow: {str(doc)[:200]}")
        history = tuple(WorkflowEvent(state=str(e.get("state")), progress=e.get("progress"), at=e.get("at"),
                                      detail=e.get("detail") or "")
                        for e in doc.get("history") or () if isinstance(e, dict))
        progress = doc.get("progress")
        return cls(id=doc["id"], kind=doc.get("kind"), state=doc["state"],
                   progress=progress if isinstance(progress, int) else 0, resource_id=doc.get("resource_id"),
                   image_id=doc.get("image_id"), failure_reason=doc.get("failure_reason"),
                   last_good_state=doc.get("last_good_state"), stalled=doc.get("stalled") is True,
                   history=history, attrs=doc)


class ComputeClient(ServiceClient):
    """Calls to one compute root (``{compute_url}/servers``) and one workflow root
    (``{workflow_url}/workflows``), over one connection pool."""

    service = "compute"
    error = ComputeError
    unreachable = Unreachable

    def __init__(self, compute_url: str, workflow_url: str, token: str | None = None, *,
                 service_token: str | None = None, verify: bool | ssl.SSLContext = True,
                 timeout: httpx.Timeout = DEFAULT_TIMEOUT, transport: httpx.BaseTransport | None = None,
                 extra_headers: Mapping[str, str] | None = None, microversion: str = MICROVERSION) -> None:
        super().__init__(compute_url, token, service_token=service_token, verify=verify, timeout=timeout,
                         transport=transport,
                         extra_headers={"X-OpenStack-Nova-API-Version": microversion, **(extra_headers or {})})
        self.compute_url = self.url
        self.workflow_url = workflow_url.rstrip("/")

    # -- plumbing ----------------------------------------------------------------------------

    def _unreachable(self, request: httpx.Request, exc: Exception) -> Unreachable:
        if str(request.url).startswith(self.workflow_url + "/"):
            return Unreachable(f"cannot reach the workflow service at {self.workflow_url}: {exc}", service="workflow")
        return Unreachable(f"cannot reach the compute service at {self.compute_url}: {exc}", service="compute")

    def _field(self, method: str, url: str, key: str, **kw: Any) -> Any:
        """``key`` of the answer's JSON object; ComputeError if it is missing."""
        response = self._call(method, url, **kw)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or key not in body:
            raise ComputeError(f"{method} {url}: the answer has no {key!r}", status=response.status_code,
                               request_id=request_id_of(response))
        return body[key]

    def _servers(self, path: str = "") -> str:
        return f"{self.compute_url}/servers{path}"

    def _workflows(self, path: str = "") -> str:
        return f"{self.workflow_url}/workflows{path}"

    # -- servers -----------------------------------------------------------------------------

    def list_servers(self) -> list[Server]:
        docs = self._field("GET", self._servers("/detail"), "servers")
        if not isinstance(docs, list):
            raise ComputeError("GET /servers/detail: 'servers' is not a list")
        return [Server.from_json(doc) for doc in docs]

    def show_server(self, server_id: str) -> Server:
        return Server.from_json(self._field("GET", self._servers(f"/{server_id}"), "server"))

    def find_server(self, name_or_id: str) -> Server:
        """A server by ID, or by name when exactly one visible server has that name."""
        missing: ComputeError | None = None
        if looks_like_id(name_or_id):
            try:
                return self.show_server(name_or_id)
            except ComputeError as exc:
                if exc.status != 404:
                    raise
                missing = exc
        matches = [s for s in self.list_servers() if s.name == name_or_id]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise ComputeError(f"more than one server is named {name_or_id!r}; use its ID")
        raise missing or ComputeError(f"no server with name or ID {name_or_id!r}")

    def create_server(self, name: str, image_ref: str, flavor_ref: str,
                      metadata: Mapping[str, str] | None = None,
                      block_devices: list[dict[str, Any]] | None = None) -> str:
        """Ask for a server; returns its ID (it is BUILD until ``wait_server`` says otherwise).
        ``block_devices``: Nova's block_device_mapping_v2 entries (extra local disks, volumes)."""
        body: dict[str, Any] = {"name": name, "imageRef": image_ref, "flavorRef": flavor_ref}
        if metadata:
            body["metadata"] = dict(metadata)
        if block_devices:
            body["block_device_mapping_v2"] = list(block_devices)
        server = self._field("POST", self._servers(), "server", json={"server": body})
        if not isinstance(server, dict) or not isinstance(server.get("id"), str):
            raise ComputeError("POST /servers: the answer has no server id")
        return server["id"]

    def delete_server(self, server_id: str) -> None:
        self._call("DELETE", self._servers(f"/{server_id}"))

    def start_server(self, server_id: str) -> None:
        self._call("POST", self._servers(f"/{server_id}/action"), json={"os-start": None})

    def stop_server(self, server_id: str) -> None:
        self._call("POST", self._servers(f"/{server_id}/action"), json={"os-stop": None})

    # -- snapshots ---------------------------------------------------------------------------

    def create_image(self, server_id: str, name: str, metadata: Mapping[str, str] | None = None) -> Accepted:
        args: dict[str, Any] = {"name": name}
        if metadata:
            args["metadata"] = dict(metadata)
        return self._snapshot(server_id, {"createImage": args})

    def create_backup(self, server_id: str, name: str, backup_type: str, rotation: int,
                      metadata: Mapping[str, str] | None = None) -> Accepted:
        args: dict[str, Any] = {"name": name, "backup_type": backup_type, "rotation": rotation}
        if metadata:
            args["metadata"] = dict(metadata)
        return self._snapshot(server_id, {"createBackup": args})

    def snapshot_devices(self, server_id: str, name: str, devices: list[str] | None,
                         metadata: Mapping[str, str] | None = None) -> Accepted:
        """Freezeframe's instance-level snapshot (seed 003): ``devices`` (None: every device)
        at one point in time, packaged as one image."""
        args: dict[str, Any] = {"name": name, "devices": devices}
        if metadata:
            args["metadata"] = dict(metadata)
        return self._snapshot(server_id, {"snapshot": args})

    def _snapshot(self, server_id: str, body: dict[str, Any]) -> Accepted:
        url = self._servers(f"/{server_id}/action")
        response = self._call("POST", url, json=body)
        request_id = request_id_of(response)
        try:
            image_id = response.json().get("image_id")
        except (ValueError, AttributeError):
            image_id = None
        workflow_id = response.headers.get(WORKFLOW_HEADER)
        if not isinstance(image_id, str) or not workflow_id:
            raise ComputeError(f"POST {url}: the answer lacks the image id or the {WORKFLOW_HEADER} header "
                               "(not a Freezeframe compute service, or a microversion below 2.45?)",
                               status=response.status_code, request_id=request_id)
        return Accepted(server_id=server_id, image_id=image_id, workflow_id=workflow_id, request_id=request_id)

    def instance_actions(self, server_id: str) -> list[dict[str, Any]]:
        return self._field("GET", self._servers(f"/{server_id}/os-instance-actions"), "instanceActions")

    def instance_action(self, server_id: str, request_id: str) -> dict[str, Any]:
        """One action with its events (and their ``details``)."""
        return self._field("GET", self._servers(f"/{server_id}/os-instance-actions/{request_id}"), "instanceAction",
                          headers={"X-OpenStack-Nova-API-Version": EVENT_DETAILS_MICROVERSION})

    # -- flavors -----------------------------------------------------------------------------

    def list_flavors(self) -> list[Flavor]:
        docs = self._field("GET", f"{self.compute_url}/flavors", "flavors")
        return [Flavor(id=str(d["id"]), name=str(d.get("name", d["id"]))) for d in docs
                if isinstance(d, dict) and "id" in d]

    def find_flavor(self, name_or_id: str) -> Flavor:
        flavors = self.list_flavors()
        for flavor in flavors:
            if flavor.id == name_or_id:
                return flavor
        named = [f for f in flavors if f.name == name_or_id]
        if len(named) == 1:
            return named[0]
        known = ", ".join(f"{f.name} ({f.id})" for f in flavors) or "none"
        raise ComputeError(f"no flavor with name or ID {name_or_id!r} (flavors: {known})")

    # -- workflows ---------------------------------------------------------------------------

    def list_workflows(self, *, resource_id: str | None = None, image_id: str | None = None,
                       state: str | None = None, kind: str | None = None) -> list[Workflow]:
        params = {k: v for k, v in (("resource_id", resource_id), ("image_id", image_id), ("state", state),
                                    ("kind", kind)) if v is not None}
        docs = self._field("GET", self._workflows(), "workflows", params=params)
        if not isinstance(docs, list):
            raise ComputeError("GET /workflows: 'workflows' is not a list")
        return [Workflow.from_json(doc) for doc in docs]

    def show_workflow(self, workflow_id: str) -> Workflow:
        return Workflow.from_json(self._field("GET", self._workflows(f"/{workflow_id}"), "workflow"))

    def cancel_workflow(self, workflow_id: str) -> None:
        """Ask the workflow to stop and revert; a 409 ComputeError when it already ended."""
        self._call("DELETE", self._workflows(f"/{workflow_id}"))

