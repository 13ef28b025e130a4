"""``freezeframe volume ...``: volumes and their snapshots on the volume API (Cinder v3).

Where the volume API is, each from the first place that has it, in ``cloud.py``'s order (flag,
``--os-cloud``, environment, ``OS_CLOUD``): ``--os-volume-url``; clouds.yaml
``block_storage_endpoint_override`` (or the ``block-storage`` entry of the catalog of a cloud
that logs in through the identity service); ``OS_VOLUME_URL``; else the root of the compute or
image URL + ``/volume/v3``, where ``freezeframe serve`` mounts it. A root with the project
(``.../v3/<project_id>``, as catalogs list it) and one without (``.../v3``) both work: the
client speaks microversion 3.67. The token and TLS settings are the image endpoint's.

``--wait`` polls the volume or snapshot until it settles (or is gone, for a delete), riding
through a restart of the service (``cli/ride.py``); ``snapshot create --wait`` shows the
snapshot's status and progress and, for an admin, compute's part of an assisted snapshot
(``compute_snapshot_status`` from the snapshot's admin metadata). A volume or snapshot that
ends in an error status exits 1 with the reason Freezeframe's workflow API recorded for it (when
the service is ours). Exit codes as ``exitcodes.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from freezeframe.cli import cloud, endpoints
from freezeframe.cli.exitcodes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from freezeframe.cli.image import UsageError, _console as console, _key_value, _positive, fail, print_json, spinner
from freezeframe.cli.ride import Ride
from freezeframe.cli.workflow import add_timeout, cell
from freezeframe.common import remote
from freezeframe.common.httpclient import looks_like_id
from freezeframe.compute.client import WaitTimeout
from freezeframe.images.client import GlanceClient
from freezeframe.volumes.client import CinderError, VolumeClient

VOLUME_PATH = "/volume/v3"
# clouds.yaml keys and catalog types that name the volume API (openstacksdk's, newest first).
OVERRIDES = ("block_storage_endpoint_override", "volumev3_endpoint_override", "volume_endpoint_override")
CATALOG_TYPES = ("block-storage", "volumev3", "volume")
_V3 = re.compile(r"/v3(/[^/]+)?$")
_OLD_VERSION = re.compile(r"/v[12](\.\d+)?(/[^/]+)?$")

LIST_COLUMNS = [("ID", "id"), ("Name", "name"), ("Status", "status"), ("Size", "size"),
                ("Attached to", "attachments")]
LONG_COLUMNS = [*LIST_COLUMNS[:4], ("Type", "volume_type"), ("Bootable", "bootable"), LIST_COLUMNS[4],
                ("Properties", "metadata")]
SNAPSHOT_COLUMNS = [("ID", "id"), ("Name", "name"), ("Status", "status"), ("Size", "size"), ("Volume", "volume_id")]
SNAPSHOT_LONG_COLUMNS = [*SNAPSHOT_COLUMNS, ("Progress", "os-extended-snapshot-attributes:progress"),
                         ("Created At", "created_at"), ("Properties", "metadata")]
PROJECT_COLUMN = ("Project", "os-vol-tenant-attr:tenant_id")
SNAPSHOT_PROJECT_COLUMN = ("Project", "os-extended-snapshot-attributes:project_id")
COMPUTE_STATUS = "compute_snapshot_status"


# -- where the volume API is -------------------------------------------------------------------


# The resolved volume endpoint (url: the Cinder v3 root, /volumes is under it).
VolumeEndpoint = endpoints.Endpoint


def add_arguments(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    group.add_argument("--os-volume-url", metavar="URL", help="volume API, e.g. http://127.0.0.1:9292/volume/v3 "
                       "(also OS_VOLUME_URL; default: the service root + /volume/v3)")


def normalise_url(url: str) -> str:
    """A Cinder v3 root: no trailing slash; ``/v3`` added to a bare ``.../volume`` or host."""
    url = url.strip().rstrip("/")
    if not re.match(r"^https?://[^/]", url):
        raise cloud.ConfigError(f"volume URL {url!r} must start with http:// or https://")
    if _V3.search(url):
        return url
    if _OLD_VERSION.search(url):
        raise cloud.ConfigError(f"volume URL {url!r} names an old volume API: version 3 (.../v3) is needed")
    return url + "/v3"


_root = endpoints.root
SERVICE = endpoints.Service("volume", "--os-volume-url", OVERRIDES, CATALOG_TYPES, ("OS_VOLUME_URL",), VOLUME_PATH,
                            normalise_url)


def resolve(*, cloud_name: str | None = None, image_url: str | None = None, volume_url: str | None = None,
            compute_url: str | None = None, token: str | None = None, env: Mapping[str, str] | None = None,
            cwd: Path | None = None) -> VolumeEndpoint:
    """The volume API's root, plus the image endpoint's token; ConfigError if none is known."""
    return endpoints.resolve_service(SERVICE, url=volume_url, cloud_name=cloud_name, image_url=image_url,
                                     compute_url=compute_url, token=token, env=env, cwd=cwd)


# -- failures as exit codes ------------------------------------------------------------------


def guarded(body: Callable[[], int], source_of: Callable[[str | None], str]) -> int:
    """Run a command's body, turning its failures into messages and exit codes. ``source_of``:
    where the endpoint of a service ("volume", "compute", ...) came from, for messages."""
    try:
        return body()
    except UsageError as exc:
        return fail(exc, EXIT_USAGE)
    except remote.Unreachable as exc:
        return fail(f"{exc} (endpoint from {source_of(exc.service)})", EXIT_UNREACHABLE)
    except remote.RemoteError as exc:
        return fail(exc, EXIT_FAILED)
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except KeyboardInterrupt:
        return fail("interrupted", EXIT_INTERRUPTED)


Action = Callable[[argparse.Namespace, VolumeClient, VolumeEndpoint], int]


def command(action: Action) -> Callable[[argparse.Namespace], int]:
    """Resolve the endpoint, open a client, run the action, and turn its failures into exit codes."""
    @functools.wraps(action)
    def run(args: argparse.Namespace) -> int:
        try:
            endpoint = resolve(cloud_name=args.os_cloud, image_url=args.os_image_url, volume_url=args.os_volume_url,
                               token=args.os_token)
        except cloud.ConfigError as exc:
            return fail(f"configuration error: {exc}", EXIT_USAGE)

        def body() -> int:
            with VolumeClient(endpoint.url, endpoint.token, verify=endpoint.verify) as client:
                return action(args, client, endpoint)
        return guarded(body, lambda service: endpoint.image_source if service == "image" else endpoint.source)
    return run


# -- output ----------------------------------------------------------------------------------


def _value(doc: Mapping[str, Any], key: str) -> Any:
    value = doc.get(key)
    if key == "attachments" and isinstance(value, list):
        return [f"{a.get('server_id')} on {a.get('device')}" if isinstance(a, dict) else a for a in value]
    if key == "metadata" and isinstance(value, dict):
        return [f"{k}={v}" for k, v in sorted(value.items())]
    return value


def print_doc(doc: Mapping[str, Any], fmt: str) -> None:
    if fmt == "json":
        print_json(dict(doc))
        return
    from rich.table import Table

    table = Table("Field", "Value")
    for key in sorted(doc):
        table.add_row(cell(key), cell(doc[key]))
    console(sys.stdout).print(table)
    sys.stdout.flush()


def print_rows(docs: Iterable[Mapping[str, Any]], fmt: str, columns: list[tuple[str, str]]) -> None:
    if fmt == "json":
        print_json([dict(doc) for doc in docs])
        return
    from rich.table import Table

    table = Table(*(title for title, _ in columns))
    for doc in docs:
        table.add_row(*(cell(_value(doc, key)) for _, key in columns))
    console(sys.stdout).print(table)


# -- waiting -----------------------------------------------------------------------------------


def wait_for(fetch: Callable[[], dict[str, Any] | None], done: Callable[[dict[str, Any] | None], bool], *,
             what: str, timeout: float, seen: Callable[[dict[str, Any] | None], None] | None = None,
             interval: float = 0.25, max_interval: float = 2.0) -> dict[str, Any] | None:
    """Poll ``fetch`` until ``done``; WaitTimeout after ``timeout`` seconds. The service has just
    answered (it accepted the request), so the polls ride through a restart of it."""
    ride = Ride(what, connected=True)
    deadline = time.monotonic() + timeout
    while True:
        doc = ride.call(fetch, deadline=deadline)
        if seen is not None:
            seen(doc)
        if done(doc):
            return doc
        if time.monotonic() >= deadline:
            status = doc.get("status") if doc else "gone"
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what} (status {status}); it goes on on "
                              "the server")
        time.sleep(min(interval, max(deadline - time.monotonic(), 0.05)))
        interval = min(interval * 1.5, max_interval)


def _or_gone(show: Callable[[str], dict[str, Any]], row_id: str) -> Callable[[], dict[str, Any] | None]:
    def fetch() -> dict[str, Any] | None:
        try:
            return show(row_id)
        except CinderError as exc:
            if exc.status == 404:
                return None
            raise
    return fetch


def failure_reason(endpoint: VolumeEndpoint, resource_id: str) -> str | None:
    """Why the last operation on a volume or snapshot failed, as Freezeframe's workflow API
    (``<root>/v1``, beside the volume API) recorded it; None when it cannot say (another
    volume service, no such workflow, the service away): a best effort for the message only."""
    from freezeframe.compute.client import ComputeClient

    root = _root(endpoint.url)
    try:
        with ComputeClient(root + "/compute/v2.1", root + "/v1", endpoint.token, verify=endpoint.verify) as flows:
            found = flows.list_workflows(resource_id=resource_id)
    except remote.RemoteError:
        return None
    return next((wf.failure_reason for wf in found if wf.failure_reason), None)


def _ended(what: str, status: Any, verb: str, why: str | None) -> CinderError:
    return CinderError(f"{what} ended in status {status}: {verb} failed" + (f": {why}" if why else ""))


def _settle(client: VolumeClient, endpoint: VolumeEndpoint, volume: dict[str, Any], timeout: float, *,
            until: tuple[str, ...], verb: str) -> dict[str, Any]:
    """Wait for a volume to reach one of ``until``; a CinderError saying why if it ends in another
    (error) status."""
    what = f"volume {volume['id']}"
    with spinner(f"waiting for {what} to become {until[0]}"):
        doc = wait_for(_or_gone(client.show_volume, volume["id"]),
                       lambda d: d is None or d.get("status") in until or str(d.get("status", "")).startswith("error"),
                       what=what, timeout=timeout)
    if doc is None:
        raise CinderError(f"{what} is gone: {verb} failed")
    if doc.get("status") not in until:
        raise _ended(what, doc.get("status"), verb, failure_reason(endpoint, volume["id"]))
    return doc


class _Progress:
    """What a snapshot's ``--wait`` shows: one line on stderr per change (status, progress,
    compute's part), or a live status line on a terminal."""

    def __init__(self, client: VolumeClient, snapshot_id: str) -> None:
        self.client = client
        self.snapshot_id = snapshot_id
        self.admin = True           # until the admin metadata is refused: then not asked again
        self.last: tuple[Any, ...] | None = None
        self.status: Any = None     # rich's live status on a terminal

    def compute(self) -> tuple[str | None, str | None]:
        if not self.admin:
            return None, None
        try:
            meta = self.client.snapshot_admin_metadata(self.snapshot_id)
        except CinderError as exc:
            if exc.status in (401, 403, 404):
                self.admin = False
                return None, None
            raise
        return meta.get(COMPUTE_STATUS), meta.get("compute_error")

    def __call__(self, doc: dict[str, Any] | None) -> None:
        if doc is None:
            line, key = "deleted", ("deleted",)
        else:
            compute, error = self.compute()
            progress = doc.get("os-extended-snapshot-attributes:progress")
            key = (doc.get("status"), progress, compute, error)
            line = f"{doc.get('status', ''):<16} {progress or '':>5}" + (f"  compute {compute}" if compute else "") \
                + (f": {error}" if error else "")
        if key == self.last:
            return
        self.last = key
        if self.status is not None:
            self.status.update(f"snapshot {self.snapshot_id}: {line}")
        else:
            print(f"{time.strftime('%H:%M:%S')}  {line}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def shown(self):
        if not sys.stderr.isatty():
            yield self
            return
        with console(sys.stderr).status(f"snapshot {self.snapshot_id}") as status:
            self.status = status
            yield self


def _follow_snapshot(client: VolumeClient, snapshot_id: str, timeout: float, *,
                     deleting: bool) -> dict[str, Any] | None:
    progress = _Progress(client, snapshot_id)
    what = f"snapshot {snapshot_id}"
    settled = (lambda d: d is None or d.get("status") == "error_deleting") if deleting else \
        (lambda d: d is None or d.get("status") in ("available", "error"))
    with progress.shown():
        return wait_for(_or_gone(client.show_snapshot, snapshot_id), settled, what=what, timeout=timeout,
                        seen=progress, interval=0.25, max_interval=1.0)


# -- volume commands -------------------------------------------------------------------------


def _image_id(endpoint: VolumeEndpoint, name_or_id: str) -> str:
    if looks_like_id(name_or_id):
        return name_or_id
    with GlanceClient(endpoint.image_url, endpoint.token, verify=endpoint.verify) as images:
        return images.find(name_or_id).id


@command
def create(args: argparse.Namespace, client: VolumeClient, endpoint: VolumeEndpoint) -> int:
    if args.size is None and not (args.snapshot or args.source):
        raise UsageError("--size is needed unless the volume is made from --snapshot or --source")
    snapshot_id = client.find_snapshot(args.snapshot)["id"] if args.snapshot else None
    source_id = client.find_volume(args.source)["id"] if args.source else None
    image_id = _image_id(endpoint, args.image) if args.image else None
    volume = client.create_volume(args.size, name=args.name, description=args.description, snapshot_id=snapshot_id,
                                  source_volid=source_id, image_id=image_id, metadata=dict(args.property))
    if args.wait:
        try:
            volume = _settle(client, endpoint, volume, args.timeout, until=("available",), verb="creating it")
        except CinderError:
            print_doc(client.show_volume(volume["id"]), args.format)
            raise
    print_doc(volume, args.format)
    return EXIT_OK


@command
def list_volumes(args: argparse.Namespace, client: VolumeClient, _: VolumeEndpoint) -> int:
    filters = {key: value for key in ("name", "status") if (value := getattr(args, key)) is not None}
    docs = list(client.list_volumes(all_projects=args.all_projects, filters=filters, limit=args.limit))
    columns = LONG_COLUMNS if args.long else LIST_COLUMNS
    print_rows(docs, args.format, [*columns[:1], PROJECT_COLUMN, *columns[1:]] if args.all_projects else columns)
    return EXIT_OK


@command
def show(args: argparse.Namespace, client: VolumeClient, _: VolumeEndpoint) -> int:
    print_doc(client.find_volume(args.volume), args.format)
    return EXIT_OK


def _each(names: list[str], noun: str, act: Callable[[str], None]) -> int:
    """Do ``act`` to every named item, going on past failures (openstackclient's way)."""
    failed = 0
    for name in names:
        try:
            act(name)
        except remote.Unreachable:
            raise
        except remote.RemoteError as exc:
            failed += 1
            fail(f"cannot delete {name}: {exc}", EXIT_FAILED)
    if failed and len(names) > 1:
        return fail(f"{failed} of {len(names)} {noun}s were not deleted", EXIT_FAILED)
    return EXIT_FAILED if failed else EXIT_OK


def _deleted(endpoint: VolumeEndpoint, kind: str, row_id: str, doc: dict[str, Any] | None) -> None:
    if doc is not None:
        raise _ended(f"{kind} {row_id}", doc.get("status"), "the delete", failure_reason(endpoint, row_id))


@command
def delete(args: argparse.Namespace, client: VolumeClient, endpoint: VolumeEndpoint) -> int:
    def one(name: str) -> None:
        volume = client.find_volume(name)
        client.delete_volume(volume["id"], force=args.force, cascade=args.purge)
        if args.wait:
            what = f"volume {volume['id']}"
            with spinner(f"waiting for {what} to be deleted"):
                _deleted(endpoint, "volume", volume["id"],
                         wait_for(_or_gone(client.show_volume, volume["id"]),
                                  lambda d: d is None or d.get("status") == "error_deleting", what=what,
                                  timeout=args.timeout))
    return _each(args.volumes, "volume", one)


@command
def set_volume(args: argparse.Namespace, client: VolumeClient, _: VolumeEndpoint) -> int:
    if args.name is None and args.description is None and not args.property:
        raise UsageError("nothing to change: give --name, --description or --property")
    volume = client.find_volume(args.volume)
    if args.name is not None or args.description is not None:
        client.update_volume(volume["id"], name=args.name, description=args.description)
    if args.property:
        client.set_volume_metadata(volume["id"], dict(args.property))
    if args.format == "json":
        print_doc(client.show_volume(volume["id"]), args.format)
    return EXIT_OK


@command
def extend(args: argparse.Namespace, client: VolumeClient, endpoint: VolumeEndpoint) -> int:
    volume = client.find_volume(args.volume)
    client.extend_volume(volume["id"], args.size)
    # Cinder extends in the background (extending -> available); wait for it either way.
    print_doc(_settle(client, endpoint, volume, args.timeout, until=("available", "in-use"), verb="extending it"),
              args.format)
    return EXIT_OK


# -- snapshot commands -----------------------------------------------------------------------


@command
def snapshot_create(args: argparse.Namespace, client: VolumeClient, endpoint: VolumeEndpoint) -> int:
    volume = client.find_volume(args.volume)
    snap = client.create_snapshot(volume["id"], name=args.name, description=args.description, force=args.force,
                                  metadata=dict(args.property))
    if not args.wait:
        print_doc(snap, args.format)
        return EXIT_OK
    if args.format != "json":       # the id first, so it is known while waiting
        print(f"snapshot {snap['id']} of volume {volume['id']}: {snap.get('status')}", file=sys.stderr, flush=True)
    done = _follow_snapshot(client, snap["id"], args.timeout, deleting=False)
    if done is None:
        raise CinderError(f"snapshot {snap['id']} is gone: creating it failed")
    print_doc(done, args.format)
    if done.get("status") != "available":
        return fail(_ended(f"snapshot {snap['id']}", done.get("status"), "creating it",
                           failure_reason(endpoint, snap["id"])), EXIT_FAILED)
    return EXIT_OK


@command
def snapshot_list(args: argparse.Namespace, client: VolumeClient, _: VolumeEndpoint) -> int:
    filters = {key: value for key in ("name", "status") if (value := getattr(args, key)) is not None}
    if args.volume:
        filters["volume_id"] = client.find_volume(args.volume)["id"]
    docs = list(client.list_snapshots(all_projects=args.all_projects, filters=filters, limit=args.limit))
    columns = SNAPSHOT_LONG_COLUMNS if args.long else SNAPSHOT_COLUMNS
    print_rows(docs, args.format, [*columns[:1], SNAPSHOT_PROJECT_COLUMN, *columns[1:]] if args.all_projects
               else columns)
    return EXIT_OK


@command
def snapshot_show(args: argparse.Namespace, client: VolumeClient, _: VolumeEndpoint) -> int:
    print_doc(client.find_snapshot(args.snapshot), args.format)
    return EXIT_OK


@command
def snapshot_delete(args: argparse.Namespace, client: VolumeClient, endpoint: VolumeEndpoint) -> int:
    def one(name: str) -> None:
        snap = client.find_snapshot(name)
        client.delete_snapshot(snap["id"], force=args.force)
        if args.wait:
            _deleted(endpoint, "snapshot", snap["id"],
                     _follow_snapshot(client, snap["id"], args.timeout, deleting=True))
    return _each(args.snapshots, "snapshot", one)


# -- parser ----------------------------------------------------------------------------------


def parents() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The shared option sets: service endpoints (the image endpoint's and the volume URL), and ``-f``."""
    service = argparse.ArgumentParser(add_help=False)
    cloud.add_arguments(service)
    add_arguments(service.add_argument_group("volume service options"))
    fmt = argparse.ArgumentParser(add_help=False)
    fmt.add_argument("-f", "--format", choices=["table", "json"], default="table", help="output format")
    return service, fmt


def _wait_options(parser: argparse.ArgumentParser, until: str) -> None:
    parser.add_argument("--wait", action="store_true", help=f"wait until {until}")
    add_timeout(parser, "it")


def register(subparsers: Any) -> None:
    volume = subparsers.add_parser("volume", help="create, list, show, change, extend and delete volumes; "
                                   "snapshot them", description="Volume commands for the volume API (Cinder v3).")
    actions = volume.add_subparsers(dest="volume_command", required=True, metavar="ACTION")
    service, fmt = parents()

    p = actions.add_parser("create", parents=[service, fmt], help="create a volume: blank, or from a snapshot, "
                           "another volume or an image")
    p.add_argument("--size", type=_positive, metavar="GiB", help="size in GiB (default: the source's, with --snapshot "
                   "or --source)")
    p.add_argument("--name", metavar="NAME")
    p.add_argument("--description", metavar="TEXT")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--snapshot", metavar="SNAPSHOT", help="ID or name of the snapshot to copy")
    source.add_argument("--source", metavar="VOLUME", help="ID or name of the volume to clone")
    source.add_argument("--image", metavar="IMAGE", help="ID or name of the image to write into it")
    p.add_argument("--property", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="volume metadata (repeat for more)")
    _wait_options(p, "the volume is available (exit 1 if it ends in error)")
    p.set_defaults(func=create)

    p = actions.add_parser("list", parents=[service, fmt], help="list volumes (newest first)")
    p.add_argument("--all-projects", action="store_true", help="every project's (admins)")
    p.add_argument("--name", metavar="NAME", help="only volumes with this name")
    p.add_argument("--status", metavar="STATUS", help="only volumes in this status, e.g. available")
    p.add_argument("--limit", type=_positive, metavar="N", help="show at most N volumes")
    p.add_argument("--long", action="store_true", help="more columns")
    p.set_defaults(func=list_volumes)

    p = actions.add_parser("show", parents=[service, fmt], help="show one volume")
    p.add_argument("volume", metavar="VOLUME", help="ID or name")
    p.set_defaults(func=show)

    p = actions.add_parser("delete", parents=[service], help="delete volumes")
    p.add_argument("volumes", nargs="+", metavar="VOLUME", help="ID or name")
    p.add_argument("--force", action="store_true", help="whatever its status (os-force_delete; admins)")
    p.add_argument("--purge", action="store_true", help="delete its snapshots with it (cascade)")
    _wait_options(p, "each volume is gone (exit 1 if its delete fails)")
    p.set_defaults(func=delete)

    p = actions.add_parser("set", parents=[service, fmt], help="rename a volume or change its properties")
    p.add_argument("volume", metavar="VOLUME", help="ID or name")
    p.add_argument("--name", metavar="NAME", help="new name")
    p.add_argument("--description", metavar="TEXT", help="new description")
    p.add_argument("--property", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="add or change a metadata item (repeat for more)")
    p.set_defaults(func=set_volume)

    p = actions.add_parser("extend", parents=[service, fmt], help="grow an available volume")
    p.add_argument("volume", metavar="VOLUME", help="ID or name")
    p.add_argument("--size", type=_positive, required=True, metavar="GiB", help="the new size, more than the current")
    add_timeout(p, "the extend")
    p.set_defaults(func=extend)

    snapshot = actions.add_parser("snapshot", help="create, list, show and delete volume snapshots")
    snaps = snapshot.add_subparsers(dest="volume_snapshot_command", required=True, metavar="ACTION")

    p = snaps.add_parser("create", parents=[service, fmt], help="snapshot a volume (an attached one too: compute "
                         "takes its part, the assisted snapshot)")
    p.add_argument("volume", metavar="VOLUME", help="ID or name of the volume")
    p.add_argument("--name", metavar="NAME")
    p.add_argument("--description", metavar="TEXT")
    p.add_argument("--force", action="store_true", help="snapshot an in-use volume (needed by volume APIs before "
                   "3.66)")
    p.add_argument("--property", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="snapshot metadata (repeat for more)")
    _wait_options(p, "the snapshot is available, showing its progress (exit 1 if it ends in error)")
    p.set_defaults(func=snapshot_create)

    p = snaps.add_parser("list", parents=[service, fmt], help="list snapshots (newest first)")
    p.add_argument("--all-projects", action="store_true", help="every project's (admins)")
    p.add_argument("--volume", metavar="VOLUME", help="only this volume's (ID or name)")
    p.add_argument("--name", metavar="NAME")
    p.add_argument("--status", metavar="STATUS")
    p.add_argument("--limit", type=_positive, metavar="N", help="show at most N snapshots")
    p.add_argument("--long", action="store_true", help="more columns")
    p.set_defaults(func=snapshot_list)

    p = snaps.add_parser("show", parents=[service, fmt], help="show one snapshot")
    p.add_argument("snapshot", metavar="SNAPSHOT", help="ID or name")
    p.set_defaults(func=snapshot_show)

    p = snaps.add_parser("delete", parents=[service], help="delete snapshots")
    p.add_argument("snapshots", nargs="+", metavar="SNAPSHOT", help="ID or name")
    p.add_argument("--force", action="store_true", help="whatever its status (os-force_delete; admins)")
    _wait_options(p, "each snapshot is gone, showing its progress (exit 1 if its delete fails)")
    p.set_defaults(func=snapshot_delete)
