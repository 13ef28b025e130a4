"""``freezeframe server ...``: servers, and their snapshots and backups, on the compute API.

``server image create`` and ``server backup create`` print the new image's ID and the workflow
filling it; with ``--wait`` they follow the workflow as ``freezeframe workflow watch`` does.
Every ``--wait`` rides through a restart of the service (``cli/ride.py``). A snapshot that the
service refuses because the guest agent does not answer yet (409: the image asks for quiesce,
and the guest is still booting) is asked again with ``--wait``, backing off, saying so.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from typing import Any, Callable, Collection, Iterable

from freezeframe.cli import cloud, compute_cloud, workflow as workflows
from freezeframe.cli.compute_cloud import ComputeEndpoint, command
from freezeframe.cli.exitcodes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from freezeframe.cli.image import (UsageError, _console as console, _key_value, _non_negative, fail, print_json,
                                   spinner)
from freezeframe.cli.ride import Ride
from freezeframe.cli.workflow import cell
from freezeframe.common.httpclient import looks_like_id
from freezeframe.compute.client import (Accepted, ComputeClient, ComputeError, Server, Unreachable, WaitTimeout,
                                       Workflow)
from freezeframe.images.client import GlanceClient

# Nova's power_state numbers, in openstackclient's words.
POWER_STATES = {0: "NOSTATE", 1: "Running", 3: "Paused", 4: "Shutdown", 6: "Crashed", 7: "Suspended"}
# A snapshot whose image asks for quiesce (os_require_quiesce) is refused with a 409 while the
# guest agent does not answer (a guest still booting starts it a few seconds in): ``--wait``
# asks again after AGENT_RETRY_FIRST seconds, doubling up to AGENT_RETRY_MAX, for at most
# AGENT_WAIT seconds (and never past ``--timeout``).
AGENT_WAIT = 300.0
AGENT_RETRY_FIRST, AGENT_RETRY_MAX = 2.0, 15.0
LIST_COLUMNS = [("ID", "id"), ("Name", "name"), ("Status", "status"), ("Task State", "OS-EXT-STS:task_state"),
                ("Power State", "OS-EXT-STS:power_state"), ("Image", "image")]


# -- output ----------------------------------------------------------------------------------


def _value(server: Server, key: str) -> Any:
    value = server.attrs.get(key)
    if key == "OS-EXT-STS:power_state":
        return POWER_STATES.get(value, value)
    if key == "image":
        return value.get("id") if isinstance(value, dict) else value
    return value


def print_server(server: Server, fmt: str) -> None:
    if fmt == "json":
        print_json(dict(server.attrs))
        return
    from rich.table import Table

    table = Table("Field", "Value")
    for key in sorted(server.attrs):
        table.add_row(cell(key), cell(_value(server, key)))
    console(sys.stdout).print(table)


def print_servers(servers: Iterable[Server], fmt: str) -> None:
    if fmt == "json":
        print_json([dict(server.attrs) for server in servers])
        return
    from rich.table import Table

    table = Table(*(title for title, _ in LIST_COLUMNS))
    for server in servers:
        table.add_row(*(cell(_value(server, key)) for _, key in LIST_COLUMNS))
    console(sys.stdout).print(table)


def print_accepted(accepted: Accepted, fmt: str, wf: Workflow | None = None) -> None:
    doc: dict[str, Any] = {"server_id": accepted.server_id, "image_id": accepted.image_id,
                           "workflow_id": accepted.workflow_id}
    if wf is not None:
        doc.update(state=wf.state, progress=wf.progress, failure_reason=wf.failure_reason)
    if fmt == "json":
        print_json(doc)
        return
    from rich.table import Table

    table = Table("Field", "Value")
    for key, value in doc.items():
        table.add_row(cell(key), cell(value))
    console(sys.stdout).print(table)
    sys.stdout.flush()


# -- commands --------------------------------------------------------------------------------


def _image_id(endpoint: ComputeEndpoint, name_or_id: str) -> str:
    """An image ID as given, or looked up by name in the image service."""
    if looks_like_id(name_or_id):
        return name_or_id
    with GlanceClient(endpoint.image_url, endpoint.token, verify=endpoint.verify) as images:
        return images.find(name_or_id).id


def wait_server(client: ComputeClient, server_id: str, *, until: Collection[str] = ("ACTIVE", "ERROR"),
                timeout: float = 600.0, interval: float = 0.5, max_interval: float = 5.0) -> Server:
    """Poll until the status is one of ``until`` with no task running; WaitTimeout otherwise.
    The service has just answered (it accepted the request): the polls ride through a restart."""
    ride = Ride(f"server {server_id}", connected=True)
    deadline = time.monotonic() + timeout
    while True:
        server = ride.call(lambda: client.show_server(server_id), deadline=deadline)
        if server.status in until and server.task_state is None:
            return server
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for server {server_id} (status "
                              f"{server.status}, task_state {server.task_state})")
        time.sleep(min(interval, max(deadline - time.monotonic(), 0.05)))
        interval = min(interval * 1.5, max_interval)


def _block_device(text: str) -> dict[str, Any]:
    """``key=value,...`` -> a BDM v2 entry (numbers and booleans as JSON has them)."""
    entry: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"{item!r} is not KEY=VALUE")
        value = value.strip()
        entry[key.strip()] = (int(value) if value.lstrip("-").isdigit() else
                              {"true": True, "false": False}.get(value.lower(), value))
    return entry


@command
def create(args: argparse.Namespace, client: ComputeClient, endpoint: ComputeEndpoint) -> int:
    flavor = client.find_flavor(args.flavor)
    server_id = client.create_server(args.name, _image_id(endpoint, args.image), flavor.id, dict(args.property),
                                     block_devices=args.block_device)
    if not args.wait:
        print_server(client.show_server(server_id), args.format)
        return EXIT_OK
    with spinner(f"waiting for server {server_id} to become active"):
        server = wait_server(client, server_id, until=("ACTIVE", "ERROR"), timeout=args.timeout)
    print_server(server, args.format)
    if server.status != "ACTIVE":
        return fail(f"server {server_id} ended in status {server.status}: {server.fault or 'no fault given'}",
                    EXIT_FAILED)
    return EXIT_OK


@command
def list_servers(args: argparse.Namespace, client: ComputeClient, _: ComputeEndpoint) -> int:
    print_servers(client.list_servers(), args.format)
    return EXIT_OK


@command
def show(args: argparse.Namespace, client: ComputeClient, _: ComputeEndpoint) -> int:
    print_server(client.find_server(args.server), args.format)
    return EXIT_OK


def _each(client: ComputeClient, names: list[str], verb: str, done: str, act: Callable[[str], None]) -> int:
    """Do ``act`` to every named server, going on past failures (openstackclient's way)."""
    failed = 0
    for name in names:
        try:
            act(client.find_server(name).id)
        except Unreachable:
            raise
        except ComputeError as exc:
            failed += 1
            fail(f"cannot {verb} {name}: {exc}", EXIT_FAILED)
    if failed and len(names) > 1:
        return fail(f"{failed} of {len(names)} servers were not {done}", EXIT_FAILED)
    return EXIT_FAILED if failed else EXIT_OK


@command
def delete(args: argparse.Namespace, client: ComputeClient, _: ComputeEndpoint) -> int:
    return _each(client, args.servers, "delete", "deleted", client.delete_server)


@command
def start(args: argparse.Namespace, client: ComputeClient, _: ComputeEndpoint) -> int:
    return _each(client, args.servers, "start", "started", client.start_server)


@command
def stop(args: argparse.Namespace, client: ComputeClient, _: ComputeEndpoint) -> int:
    return _each(client, args.servers, "stop", "stopped", client.stop_server)


def agent_not_ready(exc: ComputeError) -> bool:
    """Is this the compute API's refusal of a snapshot because the guest agent does not answer?"""
    return exc.status == 409 and "guest agent" in exc.message.lower()


def accept_when_agent_ready(accept: Callable[[], Accepted], server: str, *, timeout: float = AGENT_WAIT,
                            sleep: Callable[[float], None] | None = None,
                            clock: Callable[[], float] = time.monotonic) -> Accepted:
    """``accept()`` (a snapshot request), asked again while the service answers that the guest
    agent of ``server`` does not answer yet, backing off, saying so on stderr; the last refusal
    (a ComputeError saying it gave up) after ``timeout`` seconds. Other failures at once."""
    deadline = clock() + timeout
    delay = AGENT_RETRY_FIRST
    while True:
        try:
            return accept()
        except ComputeError as exc:
            if not agent_not_ready(exc):
                raise
            left = deadline - clock()
            if left < 0.1:
                exc.message = (f"gave up after {timeout:g}s: the guest agent of server {server} still does not "
                               f"answer (is qemu-guest-agent running in the guest?): {exc.message}")
                raise
            wait = min(delay, left)
            print(f"freezeframe: the guest agent of server {server} is not ready yet (the guest may still be "
                  f"booting); retrying in {round(wait, 1):g} s (giving up after {timeout:g} s)...", file=sys.stderr,
                  flush=True)
            (sleep or time.sleep)(wait)
            delay = min(delay * 2, AGENT_RETRY_MAX)


def _snapshot(args: argparse.Namespace, client: ComputeClient, accept: Callable[[Server], Accepted]) -> int:
    server = client.find_server(args.server)
    if args.wait:
        accepted = accept_when_agent_ready(lambda: accept(server), server.name or server.id,
                                           timeout=min(args.timeout, AGENT_WAIT))
    else:
        try:
            accepted = accept(server)
        except ComputeError as exc:
            if agent_not_ready(exc):
                exc.message += " (retry once the guest has booted, or add --wait to wait for its agent)"
            raise
    if not args.wait:
        print_accepted(accepted, args.format)
        return EXIT_OK
    if args.format != "json":  # the IDs first, so they are known while waiting
        print_accepted(accepted, args.format)
    wf = None
    try:
        wf = workflows.follow(client, accepted.workflow_id, args.timeout, connected=True)
    finally:
        if args.format == "json":  # one document, whatever happened
            print_accepted(accepted, args.format, wf)
    return workflows.outcome(wf)


@command
def image_create(args: argparse.Namespace, client: ComputeClient, _: ComputeEndpoint) -> int:
    return _snapshot(args, client, lambda server: client.create_image(
        server.id, args.name or server.name or server.id, dict(args.property)))


@command
def snapshot_create(args: argparse.Namespace, client: ComputeClient, _: ComputeEndpoint) -> int:
    """Freezeframe's instance-level snapshot: the chosen devices (all by default), one image."""
    return _snapshot(args, client, lambda server: client.snapshot_devices(
        server.id, args.name or server.name or server.id, args.device or None, dict(args.property)))


@command
def backup_create(args: argparse.Namespace, client: ComputeClient, _: ComputeEndpoint) -> int:
    return _snapshot(args, client, lambda server: client.create_backup(
        server.id, args.name or server.name or server.id, args.type, args.rotation, dict(args.property)))


# -- server volume attach|detach|list ------------------------------------------------------------

# os-volume_attachments with tag and delete_on_termination in its answers (2.79), and an id.
VOLUME_MICROVERSION = "2.79"
ATTACHMENT_COLUMNS = [("ID", "id"), ("Device", "device"), ("Server ID", "serverId"), ("Volume ID", "volumeId"),
                      ("Tag", "tag"), ("Delete On Termination", "delete_on_termination")]


def volume_command(action: Callable[[argparse.Namespace, ComputeClient, ComputeEndpoint], int]
                   ) -> Callable[[argparse.Namespace], int]:
    """``compute_cloud.command`` for the commands that touch volumes too: the volume API is
    reached (for a volume's name) only when needed, and its failures are exit codes as well."""
    from freezeframe.cli import volume as volumes

    @functools.wraps(action)
    def run(args: argparse.Namespace) -> int:
        try:
            endpoint = compute_cloud.resolve(cloud_name=args.os_cloud, image_url=args.os_image_url,
                                             compute_url=args.os_compute_url, workflow_url=args.os_workflow_url,
                                             token=args.os_token)
        except cloud.ConfigError as exc:
            return fail(f"configuration error: {exc}", EXIT_USAGE)

        def body() -> int:
            with ComputeClient(endpoint.compute_url, endpoint.workflow_url, endpoint.token,
                               verify=endpoint.verify) as client:
                return action(args, client, endpoint)

        def source_of(service: str | None) -> str:
            if service == "volume":
                return getattr(args, "volume_source", "") or "the volume URL"
            return endpoint.workflow_source if service == "workflow" else endpoint.compute_source
        return volumes.guarded(body, source_of)
    return run


def _volume_id(args: argparse.Namespace, endpoint: ComputeEndpoint) -> str:
    """A volume ID as given, or looked up by name in the volume service (found beside compute)."""
    from freezeframe.cli import volume as volumes
    from freezeframe.volumes.client import VolumeClient

    if looks_like_id(args.volume):
        return args.volume
    try:
        found = volumes.resolve(cloud_name=args.os_cloud, image_url=args.os_image_url, volume_url=args.os_volume_url,
                                compute_url=args.os_compute_url, token=args.os_token)
    except cloud.ConfigError as exc:
        raise UsageError(f"configuration error: {exc}") from None
    args.volume_source = found.source
    with VolumeClient(found.url, found.token, verify=found.verify) as cinder:
        return cinder.find_volume(args.volume)["id"]


def _attachments_url(client: ComputeClient, server_id: str, volume_id: str | None = None) -> str:
    return f"{client.compute_url}/servers/{server_id}/os-volume_attachments" + (f"/{volume_id}" if volume_id else "")


_NOVA_VOLUMES = {"X-OpenStack-Nova-API-Version": VOLUME_MICROVERSION}


def print_attachments(attachments: list[dict[str, Any]], fmt: str) -> None:
    if fmt == "json":
        print_json(attachments)
        return
    from rich.table import Table

    table = Table(*(title for title, _ in ATTACHMENT_COLUMNS))
    for att in attachments:
        table.add_row(*(cell(att.get(key)) for _, key in ATTACHMENT_COLUMNS))
    console(sys.stdout).print(table)


@volume_command
def volume_attach(args: argparse.Namespace, client: ComputeClient, endpoint: ComputeEndpoint) -> int:
    server = client.find_server(args.server)
    body: dict[str, Any] = {"volumeId": _volume_id(args, endpoint)}
    if args.device:
        body["device"] = args.device
    att = client._field("POST", _attachments_url(client, server.id), "volumeAttachment",
                        json={"volumeAttachment": body}, headers=_NOVA_VOLUMES)
    if args.format == "json":
        print_json(att)
    else:
        print_attachments([att], args.format)
    return EXIT_OK


@volume_command
def volume_detach(args: argparse.Namespace, client: ComputeClient, endpoint: ComputeEndpoint) -> int:
    server = client.find_server(args.server)
    volume_id = _volume_id(args, endpoint)
    url = _attachments_url(client, server.id, volume_id)
    client._call("DELETE", url, headers=_NOVA_VOLUMES)
    if not args.wait:
        return EXIT_OK

    def attached() -> bool:     # Nova detaches in the background: 404 once it is done
        try:
            client._call("GET", url, headers=_NOVA_VOLUMES)
        except ComputeError as exc:
            if exc.status == 404:
                return False
            raise
        return True
    ride = Ride(f"the detach of volume {volume_id}", connected=True)
    deadline = time.monotonic() + args.timeout
    with spinner(f"waiting for volume {volume_id} to be detached from server {server.id}"):
        while ride.call(attached, deadline=deadline):
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"timed out after {args.timeout:g}s waiting for volume {volume_id} to be "
                                  f"detached from server {server.id}; it goes on on the server")
            time.sleep(0.5)
    return EXIT_OK


@volume_command
def volume_list(args: argparse.Namespace, client: ComputeClient, _: ComputeEndpoint) -> int:
    server = client.find_server(args.server)
    attachments = client._field("GET", _attachments_url(client, server.id), "volumeAttachments",
                                headers=_NOVA_VOLUMES)
    print_attachments(attachments, args.format)
    return EXIT_OK


def register_volume(actions: Any, service: argparse.ArgumentParser, fmt: argparse.ArgumentParser) -> None:
    """``server volume attach|detach|list``."""
    from freezeframe.cli import volume as volumes

    volume_service = argparse.ArgumentParser(add_help=False, parents=[service])
    volumes.add_arguments(volume_service.add_argument_group("volume service options"))
    volume = actions.add_parser("volume", help="attach volumes to a server, detach them, list them")
    volume_actions = volume.add_subparsers(dest="server_volume_command", required=True, metavar="ACTION")

    p = volume_actions.add_parser("attach", parents=[volume_service, fmt], help="attach a volume to a server")
    p.add_argument("server", metavar="SERVER", help="ID or name")
    p.add_argument("volume", metavar="VOLUME", help="ID or name")
    p.add_argument("--device", metavar="/dev/vdX", help="the device it appears as (default: the next free one)")
    p.set_defaults(func=volume_attach)

    p = volume_actions.add_parser("detach", parents=[volume_service], help="detach a volume from a server")
    p.add_argument("server", metavar="SERVER", help="ID or name")
    p.add_argument("volume", metavar="VOLUME", help="ID or name")
    p.add_argument("--wait", action="store_true", help="wait until the volume is detached")
    workflows.add_timeout(p, "the detach")
    p.set_defaults(func=volume_detach)

    p = volume_actions.add_parser("list", parents=[service, fmt], help="list a server's volume attachments")
    p.add_argument("server", metavar="SERVER", help="ID or name")
    p.set_defaults(func=volume_list)


# -- parser ----------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    server = subparsers.add_parser("server", help="create, list, show, delete, start and stop servers; "
                                   "snapshot them", description="Server commands for the compute API.")
    actions = server.add_subparsers(dest="server_command", required=True, metavar="ACTION")
    service, fmt = workflows.parents()

    SNAPSHOT_WAIT = (f"the image is active, showing the workflow's progress (first, while the guest agent "
                     f"does not answer yet, asking again for up to {AGENT_WAIT:g} s)")

    def wait_options(parser: argparse.ArgumentParser, until: str, what: str) -> None:
        parser.add_argument("--wait", action="store_true", help=f"wait until {until}")
        workflows.add_timeout(parser, what)

    p = actions.add_parser("create", parents=[service, fmt], help="boot a server from an image")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--image", required=True, metavar="IMAGE", help="ID or name")
    p.add_argument("--flavor", required=True, metavar="FLAVOR", help="ID or name, e.g. 1 or m1.tiny")
    p.add_argument("--property", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="server metadata")
    p.add_argument("--block-device", type=_block_device, action="append", default=[], metavar="KEY=VALUE,...",
                   help="a block_device_mapping_v2 entry, as openstackclient takes it: e.g. "
                        "source_type=blank,destination_type=local,volume_size=1 (a second local disk) or "
                        "source_type=volume,uuid=VOLUME,destination_type=volume (repeat)")
    wait_options(p, "the server is active (exit 1 if it ends in ERROR)", "the server")
    p.set_defaults(func=create)

    p = actions.add_parser("list", parents=[service, fmt], help="list servers")
    p.set_defaults(func=list_servers)

    p = actions.add_parser("show", parents=[service, fmt], help="show one server")
    p.add_argument("server", metavar="SERVER", help="ID or name")
    p.set_defaults(func=show)

    for name, func, what in (("delete", delete, "delete servers"), ("start", start, "start stopped servers"),
                             ("stop", stop, "stop running servers")):
        p = actions.add_parser(name, parents=[service], help=what)
        p.add_argument("servers", nargs="+", metavar="SERVER", help="ID or name")
        p.set_defaults(func=func)

    snapshot = argparse.ArgumentParser(add_help=False)
    snapshot.add_argument("server", metavar="SERVER", help="ID or name")
    snapshot.add_argument("--name", metavar="NAME", help="the image's name (default: the server's)")
    snapshot.add_argument("--property", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                          help="image property")

    image = actions.add_parser("image", help="snapshot a server into an image")
    image_actions = image.add_subparsers(dest="server_image_command", required=True, metavar="ACTION")
    p = image_actions.add_parser("create", parents=[snapshot, service, fmt], help="snapshot a server into an image")
    wait_options(p, SNAPSHOT_WAIT, "the workflow")
    p.set_defaults(func=image_create)

    p = actions.add_parser("snapshot", parents=[snapshot, service, fmt],
                           help="snapshot chosen disks of a server (local disks and volumes, all by default) at one "
                                "point in time into one bootable image (Freezeframe's instance-level snapshot)")
    p.add_argument("--device", action="append", default=[], metavar="DEVICE",
                   help="a device to include, e.g. vda or /dev/vdb (repeat; default: every device)")
    wait_options(p, SNAPSHOT_WAIT, "the workflow")
    p.set_defaults(func=snapshot_create)

    backup = actions.add_parser("backup", help="back a server up into a rotated image")
    backup_actions = backup.add_subparsers(dest="server_backup_command", required=True, metavar="ACTION")
    p = backup_actions.add_parser("create", parents=[snapshot, service, fmt],
                                  help="back a server up, keeping the newest --rotation backups of --type")
    p.add_argument("--type", required=True, metavar="TYPE", help="backup type, e.g. daily or weekly")
    p.add_argument("--rotation", "--rotate", dest="rotation", type=_non_negative, required=True, metavar="N",
                   help="how many backups of this type to keep")
    wait_options(p, SNAPSHOT_WAIT, "the workflow")
    p.set_defaults(func=backup_create)

    register_volume(actions, service, fmt)
