"""A typed client of the volume API (Cinder v3) for the other services: compute attaches and
detaches volumes through it (the attachments API) and reports its part of an assisted snapshot
(``os-update_snapshot_status``, seed 002).

It speaks microversion 3.44, as Nova pins it: the attachments API is there, project-less URLs
(3.67) are not, so every path carries the project of the user the call is made for. A service
uses it acting for a user (``assembly.service_volume_client``): that user's identity, with the service
credential beside it — the volume service applies its normal rules to the user, the credential
only adds what only a service may do.

``VolumeClient`` is the user's own client (the CLI's ``freezeframe volume ...``): 3.67, with
or without the project in its root, lists paged by marker, names looked up as openstackclient does.
"""

from __future__ import annotations

import json

import re
from typing import Any, Callable, Iterable, Iterator, Mapping
from urllib.parse import quote

from freezeframe.common import remote
from freezeframe.common.httpclient import ServiceClient, looks_like_id
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

    def create_volume(self, size: int | None, *, name: str | None = None, snapshot_id: str | None = None,
                      image_id: str | None = None, volume_type: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {k: v for k, v in (("size", size), ("name", name), ("snapshot_id", snapshot_id),
                                                  ("imageRef", image_id), ("volume_type", volume_type))
                                if v is not None}
        return self._doc("POST", "/volumes", key="volume", json={"volume": body})

    # -- an instance-level snapshot's volume snapshots (seed 003; service role) ----------------

    def create_group_member(self, volume_id: str, name: str, *, owner_image_id: str,
                            metadata: Mapping[str, str]) -> dict[str, Any]:
        """A snapshot compute takes itself (it freezes the guest once for every disk): the volume
        side prepares the new file and waits for compute's report; owned by the image."""
        body = {"volume_id": _id(volume_id, "volume id"), "force": True, "name": name, "metadata": dict(metadata),
                "os-freezeframe:compute_initiated": True,
                "os-freezeframe:owner_image_id": _id(owner_image_id, "image id")}
        return self._doc("POST", "/snapshots", key="snapshot", json={"snapshot": body})

    def find_snapshots(self, metadata: Mapping[str, str], *, volume_id: str | None = None) -> list[dict[str, Any]]:
        """This project's snapshots with that metadata (and of that volume)."""
        params = {"metadata": json.dumps(dict(metadata))}
        if volume_id is not None:
            params["volume_id"] = _id(volume_id, "volume id")
        body = self._json("GET", f"{self._root}/snapshots/detail", params=params)
        found = body.get("snapshots") if isinstance(body, dict) else None
        if not isinstance(found, list):
            raise CinderError("GET /snapshots/detail: the answer has no 'snapshots' list")
        return [s for s in found if isinstance(s, dict)]

    def snapshot_admin_metadata(self, snapshot_id: str) -> dict[str, Any]:
        body = self._json("GET", f"{self._root}/snapshots/{_id(snapshot_id, 'snapshot id')}/os-admin-metadata")
        found = body.get("admin_metadata") if isinstance(body, dict) else None
        if not isinstance(found, dict):
            raise CinderError("GET os-admin-metadata: the answer has no 'admin_metadata' object")
        return found

    def set_owner_image(self, snapshot_id: str, image_id: str | None) -> None:
        self._call("POST", f"{self._root}/snapshots/{_id(snapshot_id, 'snapshot id')}/action",
                   json={"os-freezeframe-set_owner_image": {"image_id": image_id}})

    # -- plumbing ------------------------------------------------------------------------------

    def _doc(self, method: str, path: str, *, key: str, **kw: Any) -> dict[str, Any]:
        """The ``{key: {...}}`` document of an answer (the client's error if it has none)."""
        body = self._json(method, self._root + path, **kw)
        doc = body.get(key) if isinstance(body, dict) else None
        if not isinstance(doc, dict):
            raise CinderError(f"{method} {path}: the answer has no {key!r} object")
        return doc


# -- a user's client (the CLI) ---------------------------------------------------------------------

USER_API_VERSION = "volume 3.67"    # the first at which Cinder routes URLs without the project id
PAGE_SIZE = 100
_PROJECT_IN_URL = re.compile(r"/v3/([^/]+)$")


def _document(body: Any, key: str, method: str, path: str) -> dict[str, Any]:
    doc = body.get(key) if isinstance(body, dict) else None
    if not isinstance(doc, dict):
        raise CinderError(f"{method} {path}: the answer has no {key!r} object")
    return doc


class VolumeClient(ServiceClient):
    """Cinder v3 as a user calls it (the CLI), at any volume root: a catalog's
    ``.../v3/<project_id>`` or a clouds.yaml override's ``.../v3`` alike. It speaks 3.67, so a
    root without the project works on a real Cinder too; paths are relative to the root as
    given. Unlike ``CinderClient`` it acts for nobody but its own token, and ids are only
    quoted (a name never reaches a path: ``find_*`` looks names up through the lists)."""

    service = "volume"
    error = CinderError
    unreachable = Unreachable

    def __init__(self, url: str, token: str | None = None, *, microversion: str = USER_API_VERSION,
                 **kw: Any) -> None:
        super().__init__(url, token, extra_headers={"OpenStack-API-Version": microversion}, **kw)
        found = _PROJECT_IN_URL.search(self.url)
        self.project_id = found.group(1) if found else None

    def _get(self, method: str, path: str, key: str, **kw: Any) -> dict[str, Any]:
        return _document(self._json(method, path, **kw), key, method, path)

    # -- volumes -----------------------------------------------------------------------------

    def list_volumes(self, *, detail: bool = True, all_projects: bool = False,
                     filters: Mapping[str, str] | None = None, limit: int | None = None,
                     page_size: int = PAGE_SIZE) -> Iterator[dict[str, Any]]:
        """Every visible volume (newest first), fetched ``page_size`` at a time (marker paging)."""
        return self._pages("/volumes/detail" if detail else "/volumes", "volumes", all_projects, filters, limit,
                           page_size)

    def show_volume(self, volume_id: str) -> dict[str, Any]:
        return self._get("GET", f"/volumes/{_quoted(volume_id)}", "volume")

    def find_volume(self, name_or_id: str) -> dict[str, Any]:
        return self._find("volume", name_or_id, self.show_volume,
                          lambda name: self.list_volumes(filters={"name": name}))

    def create_volume(self, size: int | None, *, name: str | None = None, description: str | None = None,
                      snapshot_id: str | None = None, source_volid: str | None = None,
                      image_id: str | None = None, metadata: Mapping[str, str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"size": size}
        for key, value in (("name", name), ("description", description), ("snapshot_id", snapshot_id),
                           ("source_volid", source_volid), ("imageRef", image_id)):
            if value is not None:
                body[key] = value
        if metadata:
            body["metadata"] = dict(metadata)
        return self._get("POST", "/volumes", "volume", json={"volume": body})

    def update_volume(self, volume_id: str, *, name: str | None = None,
                      description: str | None = None) -> dict[str, Any]:
        body = {k: v for k, v in (("name", name), ("description", description)) if v is not None}
        return self._get("PUT", f"/volumes/{_quoted(volume_id)}", "volume", json={"volume": body})

    def set_volume_metadata(self, volume_id: str, metadata: Mapping[str, str]) -> dict[str, str]:
        """Merge ``metadata`` into the volume's (Cinder's POST); the whole metadata after."""
        return self._get("POST", f"/volumes/{_quoted(volume_id)}/metadata", "metadata",
                         json={"metadata": dict(metadata)})

    def delete_volume(self, volume_id: str, *, force: bool = False, cascade: bool = False) -> None:
        """``force``: os-force_delete (an admin's, whatever the status); ``cascade``: its snapshots too."""
        if force:
            self._action("volumes", volume_id, {"os-force_delete": {}})
        else:
            self._call("DELETE", f"/volumes/{_quoted(volume_id)}", params={"cascade": "true"} if cascade else None)

    def extend_volume(self, volume_id: str, new_size: int) -> None:
        self._action("volumes", volume_id, {"os-extend": {"new_size": new_size}})

    # -- snapshots -----------------------------------------------------------------------------

    def list_snapshots(self, *, detail: bool = True, all_projects: bool = False,
                       filters: Mapping[str, str] | None = None, limit: int | None = None,
                       page_size: int = PAGE_SIZE) -> Iterator[dict[str, Any]]:
        return self._pages("/snapshots/detail" if detail else "/snapshots", "snapshots", all_projects, filters,
                           limit, page_size)

    def show_snapshot(self, snapshot_id: str) -> dict[str, Any]:
        return self._get("GET", f"/snapshots/{_quoted(snapshot_id)}", "snapshot")

    def find_snapshot(self, name_or_id: str) -> dict[str, Any]:
        return self._find("snapshot", name_or_id, self.show_snapshot,
                          lambda name: self.list_snapshots(filters={"name": name}))

    def create_snapshot(self, volume_id: str, *, name: str | None = None, description: str | None = None,
                        force: bool = False, metadata: Mapping[str, str] | None = None) -> dict[str, Any]:
        """``force`` is sent only when true: from 3.66 on an in-use volume needs none, and
        ``force: false`` is refused."""
        body: dict[str, Any] = {"volume_id": volume_id}
        for key, value in (("name", name), ("description", description)):
            if value is not None:
                body[key] = value
        if force:
            body["force"] = True
        if metadata:
            body["metadata"] = dict(metadata)
        return self._get("POST", "/snapshots", "snapshot", json={"snapshot": body})

    def delete_snapshot(self, snapshot_id: str, *, force: bool = False) -> None:
        if force:
            self._action("snapshots", snapshot_id, {"os-force_delete": {}})
        else:
            self._call("DELETE", f"/snapshots/{_quoted(snapshot_id)}")

    def snapshot_admin_metadata(self, snapshot_id: str) -> dict[str, str]:
        """Seed 002's admin metadata (``compute_snapshot_status``, ``compute_error``): admins only."""
        return self._get("GET", f"/snapshots/{_quoted(snapshot_id)}/os-admin-metadata", "admin_metadata")

    # -- plumbing ------------------------------------------------------------------------------

    def _action(self, kind: str, row_id: str, body: dict[str, Any]) -> None:
        self._call("POST", f"/{kind}/{_quoted(row_id)}/action", json=body)

    def _pages(self, path: str, key: str, all_projects: bool, filters: Mapping[str, str] | None,
               limit: int | None, page_size: int) -> Iterator[dict[str, Any]]:
        params: dict[str, str] = dict(filters or {})
        if all_projects:
            params["all_tenants"] = "1"
        seen = 0
        marker: str | None = None
        while limit is None or seen < limit:
            size = page_size if limit is None else min(page_size, limit - seen)
            page = self._json("GET", path, params={**params, "limit": str(size),
                                                    **({"marker": marker} if marker else {})})
            items = page.get(key) if isinstance(page, dict) else None
            if not isinstance(items, list):
                raise CinderError(f"GET {path}: the answer has no {key!r} list")
            for item in items:
                if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                    raise CinderError(f"GET {path}: an item of {key!r} has no id")
                yield item
            seen += len(items)
            if len(items) < size or not page.get(f"{key}_links"):
                return
            marker = items[-1]["id"]

    def _find(self, noun: str, name_or_id: str, show: Callable[[str], dict[str, Any]],
              named: Callable[[str], Iterable[dict[str, Any]]]) -> dict[str, Any]:
        """By id, else by name when exactly one visible item has it (openstackclient's rule)."""
        missing: CinderError | None = None
        if looks_like_id(name_or_id):
            try:
                return show(name_or_id)
            except CinderError as exc:
                if exc.status != 404:
                    raise
                missing = exc
        matches = [item for item in named(name_or_id) if item.get("name") == name_or_id]
        if len(matches) == 1:
            return show(matches[0]["id"])
        if matches:
            raise CinderError(f"more than one {noun} is named {name_or_id!r} ({', '.join(m['id'] for m in matches)}); "
                              "use its ID")
        raise missing or CinderError(f"no {noun} with name or ID {name_or_id!r}")


def _quoted(row_id: str) -> str:
    """An id as one path segment (whatever it holds, it cannot reach another path)."""
    if not isinstance(row_id, str) or not row_id:
        raise ValueError(f"invalid id {row_id!r}")
    return quote(row_id, safe="")
