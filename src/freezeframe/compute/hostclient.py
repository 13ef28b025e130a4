"""Another host's compute process, reached over its host API (``compute/hostapi.py``).

``RemoteDriver`` is the virt driver interface over that API, so the workflows and the compute
API drive a server on another host exactly as one on theirs; ``RemoteHost`` adds the boot of a
new server there. The point in time is read where it is, over NBD on TCP with the TLS
credentials the host made for that export (never copied to the conductor's host).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import httpx

from freezeframe.common import errors
from freezeframe.common.context import Actor
from freezeframe.common.httpclient import ServiceClient
from freezeframe.common.remote import RemoteError, Unreachable
from freezeframe.blockdata import nbdexport
from freezeframe.compute import hostwire
from freezeframe.compute.drivers.base import (DomainInfo, DomainNotFound, DriverError, GroupHandle, GuestSpec,
                                              QuiesceFailed, SnapshotHandle, SnapshotReader, VirtDriver, VolumeDisk,
                                              VolumeJob, group_disks)
from freezeframe.compute.drivers.locked import HostBusy
from freezeframe.compute.hostside import Booted, BootRequest
from freezeframe.blockdata.nbd import NbdError

TIMEOUT = httpx.Timeout(connect=5.0, read=600.0, write=60.0, pool=30.0)


def open_export(info: dict) -> SnapshotReader:
    """A reader of a point in time another host exports (NBD on TCP, TLS when it says so)."""
    try:
        return nbdexport.open_client(info)
    except (NbdError, ValueError, KeyError, TypeError, OSError) as exc:
        raise DriverError(f"cannot read the point in time exported at {info.get('host')}:{info.get('port')}: "
                          f"{exc}") from None


class HostUnavailable(DriverError):
    """The host's compute process does not answer (it is restarting, or the network is down)."""


class HostError(RemoteError):
    pass


class HostUnreachable(Unreachable):
    pass


class HostClient(ServiceClient):
    service = "compute host"
    error = HostError
    unreachable = HostUnreachable

    own: Mapping[str, str] = {}       # the service's own credential (calls made for no user)

    def call(self, method: str, path: str, *, headers: Mapping[str, str] | None = None, **kw: Any) -> Any:
        """One call (with ``headers``: a call made for a user, else the service's own), its failure as the driver's own errors (so a workflow or an API answer is
        the same as with a local driver): 404 no such domain, 409 busy or quiesce, else DriverError."""
        try:
            response = self._call(method, hostwire.PREFIX + path, headers=headers or self.own, **kw)
        except HostUnreachable as exc:
            raise HostUnavailable(f"compute host at {self.url} is unreachable: {exc.message}") from None
        except HostError as exc:
            raise self._driver_error(exc) from None
        return response.json() if response.content else None

    def stream(self, method: str, path: str, on_progress: Callable[[int, int], None], **kw: Any) -> None:
        """A call whose answer streams progress lines (``hostapi.volume_merge``), each given to
        ``on_progress``, until its last line says done (or raises the error it carries)."""
        request = self._http.build_request(method, hostwire.PREFIX + path, headers=self.own, **kw)
        try:
            response = self._send(request, stream=True)
        except HostUnreachable as exc:
            raise HostUnavailable(f"compute host at {self.url} is unreachable: {exc.message}") from None
        except HostError as exc:
            raise self._driver_error(exc) from None
        last: dict | None = None
        try:
            for line in response.iter_lines():
                if not line.strip():
                    continue
                doc = json.loads(line)
                if "result" in doc or "error" in doc:
                    last = doc
                    break
                if doc.get("progress"):                     # (else a heartbeat)
                    on_progress(*doc["progress"])
        except (httpx.HTTPError, ValueError, TypeError) as exc:
            raise DriverError(f"compute host at {self.url}: the answer broke off: {exc}") from None
        finally:
            response.close()
        if last is None:
            raise DriverError(f"compute host at {self.url}: the answer ended before the work did")
        if "error" in last:
            error = last["error"]
            raise self._driver_error(HostError(str(error.get("message")), status=int(error.get("code", 500))))

    def _driver_error(self, exc: HostError) -> Exception:
        if exc.status == 404:
            return DomainNotFound(exc.message)
        if exc.status == 409 and " is busy: " in exc.message:
            return HostBusy(exc.message)
        if exc.status == 409 and "quiesce" in exc.message.lower():
            return QuiesceFailed(exc.message)
        if exc.status == 409:
            return errors.Conflict(exc.message)
        if exc.status == 400:
            return errors.Invalid(exc.message)
        return DriverError(f"compute host at {self.url}: {exc.message}")


class RemoteDriver(VirtDriver):
    name = "remote"

    def __init__(self, client: HostClient, *, open_export: Callable[[dict], SnapshotReader]) -> None:
        self.client = client
        self.open_export = open_export       # export info -> a reader (nbd over TLS)

    def spawn(self, spec: GuestSpec) -> DomainInfo:
        raise DriverError("a remote host boots servers from a BootRequest (RemoteHost.boot), not a local spec")

    def destroy(self, name: str) -> None:
        raise DriverError("a remote host removes servers with RemoteHost.remove")

    def power_on(self, name: str) -> None:
        self.client.call("POST", f"/domains/{hostwire.domain_name(name)}/action", json={"op": "power_on"})

    def power_off(self, name: str, timeout: float = 30.0) -> None:
        self.client.call("POST", f"/domains/{hostwire.domain_name(name)}/action",
                         json={"op": "power_off", "timeout": timeout})

    def get_info(self, name: str) -> DomainInfo:
        return hostwire.domain_from_json(self.client.call("GET", f"/domains/{hostwire.domain_name(name)}"))

    def list_domains(self) -> list[DomainInfo]:
        return [hostwire.domain_from_json(d) for d in self.client.call("GET", "/domains")["domains"]]

    def agent_available(self, name: str, timeout: float = 2.0) -> bool:
        doc = self.client.call("POST", f"/domains/{hostwire.domain_name(name)}/action",
                               json={"op": "agent_available", "timeout": timeout})
        return bool(doc["result"])

    def begin_snapshot(self, name: str, disk: str, snapshot_id: str, workdir: Path, *,
                       quiesce: bool, require_quiesce: bool, max_frozen: float = 1.0) -> SnapshotHandle:
        doc = self.client.call("PUT", f"/snapshots/{hostwire.snapshot_id(snapshot_id)}",
                               json={"domain": name, "disk": disk, "quiesce": quiesce,
                                     "require_quiesce": require_quiesce, "max_frozen": max_frozen})
        return hostwire.handle_from_json(doc, workdir)

    def begin_group_snapshot(self, name: str, snapshot_id: str, workdir: Path, *, disks: Sequence[str],
                             volumes: Sequence[tuple[str, Path]], quiesce: bool, require_quiesce: bool,
                             max_frozen: float = 1.0) -> GroupHandle:
        disks, volumes = group_disks(disks, volumes)
        doc = self.client.call("PUT", f"/snapshots/{hostwire.snapshot_id(snapshot_id)}",
                               json={"domain": name, "disks": disks,
                                     "volumes": [{"volume_id": vid, "new_file": str(new)} for vid, new in volumes],
                                     "quiesce": quiesce, "require_quiesce": require_quiesce,
                                     "max_frozen": max_frozen})
        return hostwire.group_from_json(doc)

    def open_snapshot(self, name: str, snapshot_id: str, workdir: Path, disk: str | None = None) -> SnapshotReader:
        body = {"domain": name} if disk is None else {"domain": name, "disk": hostwire.disk_name(disk)}
        info = self.client.call("POST", f"/snapshots/{hostwire.snapshot_id(snapshot_id)}/export", json=body)
        return self.open_export(info)

    def end_snapshot(self, name: str, snapshot_id: str, workdir: Path) -> None:
        self.client.call("DELETE", f"/snapshots/{hostwire.snapshot_id(snapshot_id)}",
                         params={"domain": hostwire.domain_name(name)})

    def snapshot_source(self, name: str, snapshot_id: str, workdir: Path, disk: str | None = None):
        raise DriverError("a remote point in time is read through open_snapshot")

    # -- volumes (seed 002): the file paths are the same on every host (the share's mount) ---------
    def _volume_path(self, name: str, volume_id: str) -> str:
        return f"/domains/{hostwire.domain_name(name)}/volumes/{hostwire.volume_id(volume_id)}"

    def attach_volume(self, name: str, disk: VolumeDisk) -> None:
        self.client.call("PUT", self._volume_path(name, disk.volume_id), json=hostwire.volume_disk_to_json(disk))

    def detach_volume(self, name: str, volume_id: str) -> None:
        self.client.call("DELETE", self._volume_path(name, volume_id))

    def volume_disks(self, name: str) -> list[VolumeDisk]:
        doc = self.client.call("GET", f"/domains/{hostwire.domain_name(name)}/volumes")
        return [hostwire.volume_disk_from_wire(d) for d in doc["volumes"]]

    def volume_snapshot_create(self, name: str, volume_id: str, new_file: Path, *, quiesce: bool,
                               require_quiesce: bool, max_frozen: float = 1.0) -> tuple[bool, float]:
        doc = self.client.call("POST", self._volume_path(name, volume_id) + "/snapshot",
                               json={"new_file": str(new_file), "quiesce": quiesce,
                                     "require_quiesce": require_quiesce, "max_frozen": max_frozen})
        return bool(doc["quiesced"]), float(doc["frozen_seconds"])

    def volume_snapshot_delete(self, name: str, volume_id: str, *, file_to_merge: str | None,
                               merge_target_file: str | None, progress: VolumeJob | None = None) -> None:
        self.client.stream("POST", self._volume_path(name, volume_id) + "/merge",
                           progress.report if progress is not None else (lambda _done, _total: None),
                           json={"file_to_merge": file_to_merge, "merge_target_file": merge_target_file})


class RemoteHost:
    """Another host's side (``hostside.HostSide``) over its host API."""

    def __init__(self, name: str, url: str, *, own: Mapping[str, str],
                 acting: Callable[[Actor], Mapping[str, str]],
                 open_export: Callable[[dict], SnapshotReader] = open_export, transport: httpx.BaseTransport | None = None) -> None:
        self.name = name
        self.acting = acting          # the headers of a call made for a user (service credential + user)
        self.client = HostClient(url, timeout=TIMEOUT, transport=transport)
        self.client.own = own
        self.driver = RemoteDriver(self.client, open_export=open_export)

    def boot(self, actor: Actor, req: BootRequest, image=None) -> Booted:
        doc = self.client.call("POST", f"/servers/{req.server_id}/boot", json=req.to_json(),
                               headers=self.acting(actor))
        return Booted(hostwire.domain_from_json(doc["info"]), doc["root_disk"])

    def remove(self, domain_name: str, server_id: str, *, adopted: bool) -> None:
        self.client.call("DELETE", f"/servers/{hostwire.snapshot_id(server_id)}",
                         params={"domain": hostwire.domain_name(domain_name), "adopted": "1" if adopted else "0"})
