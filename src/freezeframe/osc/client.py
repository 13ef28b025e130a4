"""What the plugin's commands call: Freezeframe's APIs over openstackclient's keystoneauth
session (its token, TLS settings and re-authentication), at the endpoints of the cloud it
logged in to.

Endpoints, each from the first place that has it:

- compute, image, baremetal: a ``<type>_endpoint_override`` in the cloud's settings, else the
  service catalog (``compute``, ``image``, ``baremetal``), as every openstackclient plugin;
- the workflow API (``/v1/workflows``): ``freezeframe_workflow_endpoint_override``, else a
  ``freezeframe-workflow`` entry in the catalog (Freezeframe's identity API lists it wherever
  compute is served); else, for a Keystone that does not list it, the root of the compute
  endpoint (``.../compute/v2.1`` -> ``...``) + ``/v1``, where ``freezeframe serve`` mounts it
  (then the image endpoint's root).

Errors are the ``RemoteError`` family the freezeframe CLI raises (``ComputeError`` for compute
and workflow calls, ``GlanceError``, ``BaremetalError``), with the server's message, status and
request id decoded by the same functions; no connection at all is ``compute.client.Unreachable``
(naming the service), so the CLI's waits (``cli/ride.py``) ride through a restart of the service.
"""

from __future__ import annotations

from typing import Any, Callable

import httpx
from keystoneauth1 import exceptions as ksa_exceptions

from freezeframe.baremetal.client import API_VERSION as BAREMETAL_VERSION, BaremetalError, ironic_error
from freezeframe.cli.endpoints import root
from freezeframe.common.httpclient import error_from, looks_like_id
from freezeframe.common.remote import RemoteError
from freezeframe.compute.client import MICROVERSION, ComputeError, Unreachable, Workflow
from freezeframe.images.client import GlanceError

WORKFLOW_SERVICE_TYPE = "freezeframe-workflow"
TIMEOUT = 60.0


def _strip(url: str, suffix: str) -> str:
    url = url.rstrip("/")
    return url[: -len(suffix)] if url.endswith(suffix) else url


class Client:
    """One command's calls. ``manager``: openstackclient's ClientManager (session, endpoints)."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager
        self.session = manager.session
        self._urls: dict[str, str] = {}

    # -- endpoints -------------------------------------------------------------------------------

    def _endpoint(self, service_type: str) -> str:
        url = self.manager.get_endpoint_for_service_type(service_type, region_name=self.manager.region_name,
                                                         interface=self.manager.interface)
        if not url:
            raise ComputeError(f"no {service_type} endpoint in the catalog of this cloud (or "
                               f"{service_type.replace('-', '_')}_endpoint_override in its settings)")
        return url.rstrip("/")

    def url(self, service: str) -> str:
        if service not in self._urls:
            self._urls[service] = {"compute": lambda: self._endpoint("compute"),
                                   "image": lambda: _strip(self._endpoint("image"), "/v2"),
                                   "baremetal": lambda: _strip(self._endpoint("baremetal"), "/v1") + "/v1",
                                   "workflow": self._workflow_url}[service]()
        return self._urls[service]

    def _workflow_url(self) -> str:
        override = self.manager.get_configuration().get(f"{WORKFLOW_SERVICE_TYPE.replace('-', '_')}_endpoint_override")
        if override:
            return _strip(str(override), "/v1") + "/v1"
        access = self.manager.auth_ref
        if access is not None and access.service_catalog is not None:
            try:
                found = access.service_catalog.url_for(service_type=WORKFLOW_SERVICE_TYPE,
                                                       region_name=self.manager.region_name,
                                                       interface=self.manager.interface or "public")
            except ksa_exceptions.CatalogException:      # not listed, or no catalog (a token cloud)
                found = None
            if found:
                return _strip(found, "/v1") + "/v1"
        for service in ("compute", "image"):
            try:
                return root(self.url(service)) + "/v1"
            except ComputeError:
                continue
        raise ComputeError("no workflow endpoint: this cloud has neither a compute nor an image endpoint")

    # -- plumbing --------------------------------------------------------------------------------

    def request(self, service: str, method: str, path: str, *, headers: dict[str, str] | None = None,
                decode: Callable[[httpx.Response], RemoteError] | None = None, **kw: Any) -> Any:
        """One call; the decoded JSON body (None when empty). ``path`` is under the service's URL."""
        url = self.url(service) + path
        try:
            resp = self.session.request(url, method, headers=headers or {}, raise_exc=False, timeout=TIMEOUT,
                                        connect_retries=0, **kw)
        except (ksa_exceptions.ConnectFailure, ksa_exceptions.ConnectTimeout, ksa_exceptions.SSLError) as exc:
            raise Unreachable(f"cannot reach the {service} service at {self.url(service)}: {exc}",
                              service=service) from None
        if resp.status_code >= 400:
            # the freezeframe CLI's decoders, on the same bytes
            answer = httpx.Response(resp.status_code, headers=dict(resp.headers), content=resp.content,
                                    request=httpx.Request(method, url))
            raise (decode or (lambda r: error_from(r, _ERRORS[service])))(answer)
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise _ERRORS[service](f"{method} {url}: the answer is not JSON", status=resp.status_code) from None

    # -- workflows ---------------------------------------------------------------------------

    def list_workflows(self, **filters: str | None) -> list[Workflow]:
        params = {k: v for k, v in filters.items() if v is not None}
        docs = (self.request("workflow", "GET", "/workflows", params=params) or {}).get("workflows")
        if not isinstance(docs, list):
            raise ComputeError("GET /v1/workflows: the answer has no 'workflows' list")
        return [Workflow.from_json(doc) for doc in docs]

    def show_workflow(self, workflow_id: str) -> Workflow:
        return Workflow.from_json((self.request("workflow", "GET", f"/workflows/{workflow_id}") or {}).get("workflow"))

    def cancel_workflow(self, workflow_id: str) -> None:
        self.request("workflow", "DELETE", f"/workflows/{workflow_id}")

    # -- servers -----------------------------------------------------------------------------

    def _nova(self, method: str, path: str, **kw: Any) -> Any:
        return self.request("compute", method, path, headers={"X-OpenStack-Nova-API-Version": MICROVERSION}, **kw)

    def find_server(self, name_or_id: str) -> dict[str, Any]:
        """A server by ID, else by exact name (one only, as openstackclient's find)."""
        if looks_like_id(name_or_id):
            try:
                return self._nova("GET", f"/servers/{name_or_id}")["server"]
            except ComputeError as exc:
                if exc.status != 404:
                    raise
        listed = (self._nova("GET", "/servers", params={"name": name_or_id}) or {}).get("servers") or []
        found = [s for s in listed if s.get("name") == name_or_id]
        if not found:
            raise ComputeError(f"No server with a name or ID of '{name_or_id}' exists.", status=404)
        if len(found) > 1:
            raise ComputeError(f"More than one server exists with the name '{name_or_id}'.", status=409)
        return self._nova("GET", f"/servers/{found[0]['id']}")["server"]

    def snapshot_server(self, server_id: str, name: str, devices: list[str] | None,
                        metadata: dict[str, str] | None = None) -> dict[str, Any]:
        """Freezeframe's instance-level snapshot (seed 003): ``{"image_id", "workflow_id"}``."""
        args: dict[str, Any] = {"name": name, "devices": devices}
        if metadata:
            args["metadata"] = metadata
        body = self._nova("POST", f"/servers/{server_id}/action", json={"snapshot": args})
        if not isinstance(body, dict) or not body.get("image_id") or not body.get("workflow_id"):
            raise ComputeError(f"the snapshot action's answer names no image and workflow: {str(body)[:200]}")
        return body

    # -- images ------------------------------------------------------------------------------

    def show_image(self, image_id: str) -> dict[str, Any]:
        return self.request("image", "GET", f"/v2/images/{image_id}")

    def find_image(self, name_or_id: str) -> dict[str, Any] | None:
        """An image by ID, else by exact name; None when none has that name (an ID that names
        no image is an error: a mistyped ID should not become a new image's name)."""
        if looks_like_id(name_or_id):
            return self.show_image(name_or_id)
        found = (self.request("image", "GET", "/v2/images", params={"name": name_or_id}) or {}).get("images") or []
        found = [i for i in found if i.get("name") == name_or_id]
        if len(found) > 1:
            raise GlanceError(f"More than one image exists with the name '{name_or_id}'.", status=409)
        return found[0] if found else None

    def create_image(self, name: str) -> dict[str, Any]:
        return self.request("image", "POST", "/v2/images",
                            json={"name": name, "disk_format": "qcow2", "container_format": "bare"})

    def delete_image(self, image_id: str) -> None:
        self.request("image", "DELETE", f"/v2/images/{image_id}")

    # -- bare-metal nodes --------------------------------------------------------------------

    def _ironic(self, method: str, path: str, **kw: Any) -> Any:
        return self.request("baremetal", method, path, headers={"X-OpenStack-Ironic-API-Version": BAREMETAL_VERSION},
                            decode=ironic_error, **kw)

    def show_node(self, ident: str) -> dict[str, Any]:
        return self._ironic("GET", f"/nodes/{ident}")

    def snapshot_node(self, node_uuid: str, image_id: str) -> None:
        """``PUT /nodes/{node}/states/provision {"target": "snapshot", "image_ref"}`` (1.116)."""
        self._ironic("PUT", f"/nodes/{node_uuid}/states/provision", json={"target": "snapshot", "image_ref": image_id})


_ERRORS: dict[str, type[RemoteError]] = {"compute": ComputeError, "workflow": ComputeError, "image": GlanceError,
                                         "baremetal": BaremetalError}
