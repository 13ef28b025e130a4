"""A typed client of the volume API (Cinder v3) for the other services: compute attaches and
detaches volumes through it (the attachments API) and reports its part of an assisted snapshot
(``os-update_snapshot_status``, seed 002).

It speaks microversion 3.44, as Nova pins it: the attachments API is there, project-less URLs
(3.67) are not, so every path carries the project of the user the call is made for. A service
uses it acting for a user (``assembly.service_volume_client``): that user's identity, with the service
credential beside it — the volume service applies its normal rules to the user, the credential
only adds what only a service may do.
"""

from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import quote

from freezeframe.common import remote
from freezeframe.common.httpclient import ServiceClient
from freezeframe.common.remote import RemoteError
from freezeframe.common.strict import is_uuid

API_VERSION = "volume 3.44"
# Where `serve` answers in process (the path the volume API is mounted at).


class CinderError(RemoteError):
    """A request to the volume service failed. ``status`` is None when no HTTP response came."""


class Unreachable(CinderError, remote.Unreachable):
    """No connection to the volume service could be made."""


def _id(value: str, what: str) -> str:
    """Ids go into URL paths: only UUIDs do (nothing a caller sent can reach another path)."""
    if not isinstance(value, str) or not is_uuid(value):
        raise ValueError(f"invalid {what} {value!r}: a UUID is required")
    return value


class CinderClient(ServiceClient):
    """Cinder v3 calls for one project at one volume service root (``.../volume/v3``)."""

    service = "volume"
    error = CinderError
    unreachable = Unreachable

    def __init__(self, url: str, token: str | None = None, *, project_id: str,
                 extra_headers: Mapping[str, str] | None = None, **kw: Any) -> None:
        if not project_id:
            raise ValueError("the volume API (3.44) needs a project id in its URLs")
        super().__init__(url, token, extra_headers={"OpenStack-API-Version": API_VERSION, **(extra_headers or {})},
                         **kw)
        self.project_id = project_id
        self._root = "/" + quote(project_id, safe="")

    # -- volumes -----------------------------------------------------------------------------

    def show_volume(self, volume_id: str) -> dict[str, Any]:
        return self._doc("GET", f"/volumes/{_id(volume_id, 'volume id')}", key="volume")

    def delete_volume(self, volume_id: str) -> None:
        self._call("DELETE", f"{self._root}/volumes/{_id(volume_id, 'volume id')}")

    # -- attachments (3.27+) -------------------------------------------------------------------

    def attachment_create(self, volume_id: str, instance_uuid: str,
                          connector: Mapping[str, Any] | None = None, mode: str | None = None) -> dict[str, Any]:
        """Without ``connector``: reserve the volume for the server (Nova's first step)."""
        body: dict[str, Any] = {"volume_uuid": _id(volume_id, "volume id"),
                                "instance_uuid": _id(instance_uuid, "server id")}
        if connector is not None:
            body["connector"] = dict(connector)
        if mode is not None:
            body["mode"] = mode
        return self._doc("POST", "/attachments", key="attachment", json={"attachment": body})

    def attachment_update(self, attachment_id: str, connector: Mapping[str, Any]) -> dict[str, Any]:
        """Connect: the volume service answers with the connection_info compute opens."""
        attachment = self._doc("PUT", f"/attachments/{_id(attachment_id, 'attachment id')}", key="attachment",
                               json={"attachment": {"connector": dict(connector)}})
        info = attachment.get("connection_info")
        if not isinstance(info, dict):
            raise CinderError(f"attachment {attachment_id}: the answer has no connection_info")
        return info

    def attachment_complete(self, attachment_id: str) -> None:
        self._call("POST", f"{self._root}/attachments/{_id(attachment_id, 'attachment id')}/action",
                   json={"os-complete": {}})

    def attachment_delete(self, attachment_id: str) -> None:
        self._call("DELETE", f"{self._root}/attachments/{_id(attachment_id, 'attachment id')}")

    # -- snapshots -----------------------------------------------------------------------------

    def update_snapshot_status(self, snapshot_id: str, status: str, progress: str | None,
                               compute_snapshot_status: str, compute_error: str | None = None) -> None:
        """Compute's report on its part of an assisted snapshot (seed 002); ``progress`` "NN%"
        (None: not sent). A 409 means the volume side no longer waits for it (it gave up: timed
        out, or the snapshot moved on)."""
        update: dict[str, Any] = {"status": status, "compute_snapshot_status": compute_snapshot_status}
        if progress is not None:
            update["progress"] = progress
        if compute_error is not None:
            update["compute_error"] = compute_error
        self._call("POST", f"{self._root}/snapshots/{_id(snapshot_id, 'snapshot id')}/action",
                   json={"os-update_snapshot_status": update})

    def create_snapshot(self, volume_id: str, name: str | None = None, *, force: bool = True,
                        metadata: Mapping[str, str] | None = None, description: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"volume_id": _id(volume_id, "volume id"), "force": force}
        if name is not None:
            body["name"] = name
        if description is not None:
            body["description"] = description
        if metadata:
            body["metadata"] = dict(metadata)
        return self._doc("POST", "/snapshots", key="snapshot", json={"snapshot": body})

    def show_snapshot(self, snapshot_id: str) -> dict[str, Any]:
        return self._doc("GET", f"/snapshots/{_id(snapshot_id, 'snapshot id')}", key="snapshot")

    def delete_snapshot(self, snapshot_id: str) -> None:
        self._call("DELETE", f"{self._root}/snapshots/{_id(snapshot_id, 'snapshot id')}")

    # -- plumbing ------------------------------------------------------------------------------

    def _doc(self, method: str, path: str, *, key: str, **kw: Any) -> dict[str, Any]:
        """The ``{key: {...}}`` document of an answer (the client's error if it has none)."""
        body = self._json(method, self._root + path, **kw)
        doc = body.get(key) if isinstance(body, dict) else None
        if not isinstance(doc, dict):
            raise CinderError(f"{method} {path}: the answer has no {key!r} object")
        return doc
