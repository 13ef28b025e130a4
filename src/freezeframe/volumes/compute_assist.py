"""The volume manager asks compute to take (or merge away) a snapshot of an attached volume
(seed 002): Nova's ``os-assisted-volume-snapshots``, called with the services' credential
beside the user's identity. Compute answers at once and reports each phase later through
``os-update_snapshot_status`` (``compute_snapshot_status``)."""

from __future__ import annotations

import json
from typing import Any, Callable
from urllib.parse import quote

from freezeframe.common import errors
from freezeframe.common.context import Actor
from freezeframe.common.httpclient import ServiceClient
from freezeframe.common.remote import RemoteError, Unreachable

MICROVERSION = "2.1"


class ComputeAssistError(RemoteError):
    """Compute refused or failed an assisted snapshot request."""


class ComputeUnreachable(Unreachable):
    pass


class AssistClient(ServiceClient):
    """Calls to the compute API root (``.../compute/v2.1``)."""
    service = "compute"
    error = ComputeAssistError
    unreachable = ComputeUnreachable

    def assisted_create(self, volume_id: str, create_info: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/os-assisted-volume-snapshots",
                          json={"snapshot": {"volume_id": volume_id, "create_info": create_info}},
                          headers={"X-OpenStack-Nova-API-Version": MICROVERSION})

    def assisted_delete(self, snapshot_id: str, delete_info: dict[str, Any]) -> None:
        self._call("DELETE", f"/os-assisted-volume-snapshots/{quote(snapshot_id, safe='')}",
                   params={"delete_info": json.dumps(delete_info)},
                   headers={"X-OpenStack-Nova-API-Version": MICROVERSION})


class ComputeAssist:
    """What the volume manager holds: ``create`` / ``delete`` for a user, raising a domain
    error when compute refuses (its 4xx as the same class) or cannot be reached (503)."""

    def __init__(self, compute_for: Callable[[Actor], AssistClient]) -> None:
        self.compute_for = compute_for

    def create(self, actor: Actor, server_id: str | None, volume_id: str, snapshot_id: str,
               create_info: dict[str, Any]) -> None:
        with self.compute_for(actor) as compute:
            _domain(lambda: compute.assisted_create(volume_id, create_info))

    def delete(self, actor: Actor, server_id: str | None, volume_id: str, snapshot_id: str,
               delete_info: dict[str, Any]) -> None:
        with self.compute_for(actor) as compute:
            _domain(lambda: compute.assisted_delete(snapshot_id, delete_info))


def _domain(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Unreachable as exc:
        raise errors.BackendUnavailable(f"compute cannot be reached: {exc}") from exc
    except RemoteError as exc:
        status = exc.status or 500
        cls = {400: errors.Invalid, 403: errors.Forbidden, 404: errors.NotFound, 409: errors.Conflict}.get(
            status, errors.BackendUnavailable if status >= 500 else errors.Invalid)
        raise cls(f"compute refused the assisted snapshot request: {exc}") from exc
