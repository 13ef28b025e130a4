"""``freezeframe baremetal ...``: bare-metal nodes and their ports on the bare-metal API (Ironic v1).

Where the bare-metal API is, each from the first place that has it, in ``cloud.py``'s order
(flag, ``--os-cloud``, environment, ``OS_CLOUD``; ``endpoints.py``): ``--os-baremetal-url``;
clouds.yaml ``baremetal_endpoint_override`` (or the ``baremetal`` entry of the catalog of a cloud
that logs in through the identity service); ``OS_BAREMETAL_URL``; else the root of the image URL +
``/baremetal``, where ``freezeframe serve`` mounts it. The root is given without ``/v1`` (a
trailing one is removed); a real Ironic's (``http://host:6385``) works too, at a microversion it
knows (``--os-baremetal-api-version``). The token and TLS settings are the image endpoint's.

``KEY=VALUE`` options (``--property``, ``--driver-info``, ``--instance-info``) take the value as
JSON when it is valid JSON (``cpus=4`` is a number, ``root_device={"size": 8}`` an object), else
as a string, as ``openstack baremetal`` does: quote a string that looks like JSON
(``redfish_password='"1234"'``).

The provision verbs' ``--wait`` polls the node until it reaches the state the verb leads to,
exiting 1 with the node's ``last_error`` when it ends elsewhere. ``node snapshot NODE --image
IMAGE`` captures the node's root disk into an image (seed 004): ``IMAGE`` names an image, or one
is created (queued, qcow2) under that name; ``--wait`` shows the node's provision state and the
workflow's states and progress (a live line on a terminal, one line per change otherwise) and
exits 0 when the node is active again with the image active, 1 with the reason when the
snapshot fails. Every wait rides through a restart of the service (``cli/ride.py``).
Exit codes as ``exitcodes.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import re
import sys
import time
from typing import Any, Callable, Iterable, Mapping

from freezeframe.baremetal.client import API_VERSION, BaremetalClient, BaremetalError, json_patch, pointer
from freezeframe.cli import cloud, endpoints
from freezeframe.cli.exitcodes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from freezeframe.cli.image import UsageError, _console as console, fail, print_json
from freezeframe.cli.ride import Ride
from freezeframe.cli.volume import guarded
from freezeframe.cli.workflow import add_timeout, cell
from freezeframe.common import remote
from freezeframe.common.httpclient import looks_like_id
from freezeframe.compute.client import ComputeClient, WaitTimeout, Workflow
from freezeframe.images.client import GlanceClient, GlanceError, Image

BAREMETAL_PATH = "/baremetal"
OVERRIDES = ("baremetal_endpoint_override",)
CATALOG_TYPES = ("baremetal",)
_V1 = re.compile(r"/v1$")

NODE_COLUMNS = [("UUID", "uuid"), ("Name", "name"), ("Instance UUID", "instance_uuid"),
                ("Power State", "power_state"), ("Provisioning State", "provision_state"),
                ("Maintenance", "maintenance")]
NODE_LONG_COLUMNS = [*NODE_COLUMNS, ("Driver", "driver"), ("Resource Class", "resource_class"),
                     ("Snapshot Interface", "snapshot_interface"), ("Last Error", "last_error")]
PORT_COLUMNS = [("UUID", "uuid"), ("Address", "address")]
PORT_LONG_COLUMNS = [*PORT_COLUMNS, ("Node UUID", "node_uuid"), ("PXE Enabled", "pxe_enabled"),
                     ("Created At", "created_at"), ("Extra", "extra")]
# Link fields a table leaves out (openstackclient's way); -f json keeps everything.
_LINKS = ("links", "ports", "portgroups", "states", "volume")
INTERFACES = ("power", "boot", "snapshot", "deploy", "management", "console", "inspect", "network", "raid",
              "rescue", "storage", "vendor", "bios", "firmware")
# The provision verbs as commands: verb sent, the state each leads to (None: decided by the node's).
VERB_COMMANDS = {"manage": ("manage", "manageable"), "provide": ("provide", "available"),
                 "adopt": ("adopt", "active"), "abort": ("abort", None), "undeploy": ("deleted", "available")}
TRANSITIONAL = frozenset({"verifying", "adopting", "deleting", "snapshotting", "snapshot wait"})
SNAPSHOT_FAILED = "snapshot failed"
SNAPSHOT_KIND = "baremetal-snapshot"
POWER = {"on": ("power on", "power on"), "off": ("power off", "power off"), "reboot": ("rebooting", "power on")}


# -- where the bare-metal API is -------------------------------------------------------------------


def normalise_url(url: str) -> str:
    """An Ironic root: no trailing slash, no ``/v1`` (the client adds it)."""
    url = url.strip().rstrip("/")
    if not re.match(r"^https?://[^/]", url):
        raise cloud.ConfigError(f"bare-metal URL {url!r} must start with http:// or https://")
    return _V1.sub("", url)


SERVICE = endpoints.Service("bare-metal", "--os-baremetal-url", OVERRIDES, CATALOG_TYPES, ("OS_BAREMETAL_URL",),
                            BAREMETAL_PATH, normalise_url)


def resolve(*, cloud_name: str | None = None, image_url: str | None = None, baremetal_url: str | None = None,
            token: str | None = None, env: Mapping[str, str] | None = None, cwd: Any = None) -> endpoints.Endpoint:
    """The bare-metal API's root, plus the image endpoint's token; ConfigError if none is known."""
    return endpoints.resolve_service(SERVICE, url=baremetal_url, cloud_name=cloud_name, image_url=image_url,
                                     token=token, env=env, cwd=cwd)


Action = Callable[[argparse.Namespace, BaremetalClient, endpoints.Endpoint], int]


def command(action: Action) -> Callable[[argparse.Namespace], int]:
    """Resolve the endpoint, open a client, run the action, and turn its failures into exit codes."""
    @functools.wraps(action)
    def run(args: argparse.Namespace) -> int:
        try:
            endpoint = resolve(cloud_name=args.os_cloud, image_url=args.os_image_url,
                               baremetal_url=args.os_baremetal_url, token=args.os_token)
        except cloud.ConfigError as exc:
            return fail(f"configuration error: {exc}", EXIT_USAGE)

        def body() -> int:
            asked = args.os_baremetal_api_version
            with BaremetalClient(endpoint.url, endpoint.token, verify=endpoint.verify,
                                 microversion=asked or API_VERSION, negotiate=asked is None) as client:
                return action(args, client, endpoint)
        return guarded(body, lambda service: endpoint.image_source if service == "image" else endpoint.source)
    return run


# -- output ----------------------------------------------------------------------------------


def print_doc(doc: Mapping[str, Any], fmt: str) -> None:
    if fmt == "json":
        print_json(dict(doc))
        return
    from rich.table import Table

    table = Table("Field", "Value")
    for key in sorted(doc):
        if key not in _LINKS:
            table.add_row(cell(key), cell(doc[key]))
    console(sys.stdout).print(table)
    sys.stdout.flush()


def print_rows(docs: Iterable[Mapping[str, Any]], fmt: str, columns: list[tuple[str, str]]) -> None:
    if fmt == "json":
        print_json([dict(doc) for doc in docs])
        return
    from rich.table import Table

    table = Table()
    for title, key in columns:     # a UUID stays on one line (it is what gets copied)
        table.add_column(title, no_wrap=key in ("uuid", "node_uuid", "address"))
    for doc in docs:
        table.add_row(*(cell(doc.get(key)) for _, key in columns))
    console(sys.stdout).print(table)


def _say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')}  {message}", file=sys.stderr, flush=True)


# -- KEY=VALUE ---------------------------------------------------------------------------------


def _json_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with the value as JSON when it is JSON (ironicclient's split_and_deserialize)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _key(text: str) -> str:
    if not text or "=" in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a KEY (no '=')")
    return text


def _interfaces(args: argparse.Namespace) -> dict[str, str]:
    return {f"{name}_interface": value for name in INTERFACES
            if (value := getattr(args, f"{name}_interface", None)) is not None}


# -- waiting -----------------------------------------------------------------------------------


def _workflows(endpoint: endpoints.Endpoint) -> ComputeClient:
    """Freezeframe's workflow API, beside the bare-metal API (``<root>/v1``)."""
    root = endpoints.root(endpoint.url)
    return ComputeClient(root + "/compute/v2.1", root + "/v1", endpoint.token, verify=endpoint.verify)


def _latest_workflow(endpoint: endpoints.Endpoint, node_uuid: str, kind: str, *,
                     image_id: str | None = None) -> Workflow | None:
    """The newest workflow of that kind of the node (filling that image, when it says), or None
    when the workflow API cannot say (another bare-metal service, none yet). The API submits a
    verb's workflow before it answers the verb, so after the answer the newest is the verb's."""
    try:
        with _workflows(endpoint) as flows:
            found = flows.list_workflows(resource_id=node_uuid)
    except remote.Unreachable:
        raise
    except remote.RemoteError:
        return None
    for wf in found:                   # newest first
        if wf.kind == kind and (image_id is None or wf.image_id in (None, image_id)):
            return wf
    return None


def _ended_wrong(node: dict[str, Any], verb: str, wanted: str) -> BaremetalError:
    state = node.get("provision_state")
    message = f"node {node.get('name') or node['uuid']} is {state}, not {wanted}: {verb} failed"
    return BaremetalError(message + (f": {node['last_error']}" if node.get("last_error") else ""))


def _settle(client: BaremetalClient, endpoint: endpoints.Endpoint, before: dict[str, Any], verb: str,
            wanted: str, timeout: float) -> dict[str, Any]:
    """Poll the node after a verb until it is in ``wanted``; a BaremetalError with its
    last_error when it settles elsewhere. A node that settles back in the state it started from
    (a verification that failed at once, an abort whose cleanup failed) has moved (its
    provision_updated_at or last_error changed) or its verb's workflow ended."""
    uuid = before["uuid"]
    ride = Ride(f"node {uuid}", connected=True)
    deadline = time.monotonic() + timeout
    interval, last = 0.2, None
    while True:
        node = ride.call(lambda: client.show_node(uuid), deadline=deadline)
        state = node.get("provision_state")
        if state != last:
            if not sys.stderr.isatty():
                _say(f"node {node.get('name') or uuid}: {state}")
            last = state
        if state == wanted and node.get("target_provision_state") is None:
            return node
        if state not in TRANSITIONAL and node.get("target_provision_state") is None:
            moved = state != before.get("provision_state") or \
                node.get("provision_updated_at") != before.get("provision_updated_at") or \
                (node.get("last_error") and node.get("last_error") != before.get("last_error"))
            if not moved and verb == "abort":
                wf = _latest_workflow(endpoint, uuid, "baremetal-abort")
                moved = wf is not None and wf.ended and not wf.succeeded
                if moved and wf.failure_reason and not node.get("last_error"):
                    node = {**node, "last_error": wf.failure_reason}
            if moved:
                raise _ended_wrong(node, verb, wanted)
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for node {uuid} to become {wanted} (it is "
                              f"{state}); it goes on on the server")
        time.sleep(min(interval, max(deadline - time.monotonic(), 0.05)))
        interval = min(interval * 1.5, 2.0)


# -- node commands -------------------------------------------------------------------------


@command
def node_create(args: argparse.Namespace, client: BaremetalClient, _: endpoints.Endpoint) -> int:
    node = client.create_node(args.driver, name=args.name, driver_info=dict(args.driver_info) or None,
                              properties=dict(args.property) or None, resource_class=args.resource_class,
                              description=args.description, interfaces=_interfaces(args), uuid=args.uuid)
    print_doc(node, args.format)
    return EXIT_OK


@command
def node_list(args: argparse.Namespace, client: BaremetalClient, _: endpoints.Endpoint) -> int:
    filters = {}
    if args.provision_state:
        filters["provision_state"] = args.provision_state
    if args.maintenance is not None:
        filters["maintenance"] = str(args.maintenance).lower()
    if args.driver:
        filters["driver"] = args.driver
    docs = list(client.list_nodes(detail=args.long, filters=filters, limit=args.limit))
    print_rows(docs, args.format, NODE_LONG_COLUMNS if args.long else NODE_COLUMNS)
    return EXIT_OK


@command
def node_show(args: argparse.Namespace, client: BaremetalClient, _: endpoints.Endpoint) -> int:
    print_doc(client.show_node(args.node), args.format)
    return EXIT_OK


@command
def node_set(args: argparse.Namespace, client: BaremetalClient, _: endpoints.Endpoint) -> int:
    add: dict[str, Any] = {}
    for field in ("name", "description", "resource_class", "driver"):
        if getattr(args, field) is not None:
            add[pointer(field)] = getattr(args, field)
    add.update({pointer(key): value for key, value in _interfaces(args).items()})
    for field, pairs in (("properties", args.property), ("driver_info", args.driver_info),
                         ("instance_info", args.instance_info)):
        add.update({pointer(field, key): value for key, value in pairs})
    if not add:
        raise UsageError("nothing to change: give --name, --property, --driver-info, --instance-info, "
                         "--resource-class, --description, --driver or an --*-interface")
    node = client.update_node(args.node, json_patch(add=add))
    if args.format == "json":
        print_doc(node, args.format)
    return EXIT_OK


@command
def node_unset(args: argparse.Namespace, client: BaremetalClient, _: endpoints.Endpoint) -> int:
    remove = [pointer(field) for field in ("name", "description", "resource_class") if getattr(args, field)]
    for field, keys in (("properties", args.property), ("driver_info", args.driver_info),
                        ("instance_info", args.instance_info)):
        remove += [pointer(field, key) for key in keys]
    if not remove:
        raise UsageError("nothing to unset: give --name, --property, --driver-info, --instance-info, "
                         "--resource-class or --description")
    node = client.update_node(args.node, json_patch(remove=remove))
    if args.format == "json":
        print_doc(node, args.format)
    return EXIT_OK


def _each(names: list[str], noun: str, verb: str, act: Callable[[str], None]) -> int:
    """Do ``act`` to every named item, going on past failures (openstackclient's way)."""
    failed = 0
    for name in names:
        try:
            act(name)
        except remote.Unreachable:
            raise
        except remote.RemoteError as exc:
            failed += 1
            fail(f"cannot {verb} {noun} {name}: {exc}", EXIT_FAILED)
    if failed and len(names) > 1:
        return fail(f"{failed} of {len(names)} {noun}s were not {verb}d", EXIT_FAILED)
    return EXIT_FAILED if failed else EXIT_OK


@command
def node_delete(args: argparse.Namespace, client: BaremetalClient, _: endpoints.Endpoint) -> int:
    return _each(args.nodes, "node", "delete", client.delete_node)


def _verb_command(name: str) -> Callable[[argparse.Namespace], int]:
    verb, leads_to = VERB_COMMANDS[name]

    @command
    def run(args: argparse.Namespace, client: BaremetalClient, endpoint: endpoints.Endpoint) -> int:
        before = client.show_node(args.node)
        wanted = leads_to
        if wanted is None:      # abort: snapshot wait -> snapshot failed; snapshot failed -> active
            wanted = SNAPSHOT_FAILED if before.get("provision_state") == "snapshot wait" else "active"
        client.set_provision_state(before["uuid"], verb)
        if not args.wait:
            if args.format == "json":
                print_doc(client.show_node(before["uuid"]), args.format)
            return EXIT_OK
        try:
            node = _settle(client, endpoint, before, name, wanted, args.timeout)
        except BaremetalError:
            if args.format == "json":
                print_doc(client.show_node(before["uuid"]), args.format)
            raise
        print_doc(node, args.format)
        return EXIT_OK
    run.__name__ = f"node_{name}"
    return run


@command
def node_power(args: argparse.Namespace, client: BaremetalClient, _: endpoints.Endpoint) -> int:
    target, expected = POWER[args.power_action]
    uuid = client.show_node(args.node)["uuid"]
    client.set_power_state(uuid, target, timeout=args.power_timeout)
    # Power actions run in the background: wait until the node has no power target left.
    ride = Ride(f"node {uuid}", connected=True)
    deadline = time.monotonic() + args.timeout
    while True:
        node = ride.call(lambda: client.show_node(uuid), deadline=deadline)
        if node.get("target_power_state") is None:
            break
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {args.timeout:g}s waiting for node {uuid} to be "
                              f"{expected}; it goes on on the server")
        time.sleep(0.2)
    if node.get("power_state") != expected:
        message = f"node {node.get('name') or node['uuid']} is {node.get('power_state')}, not {expected}"
        raise BaremetalError(message + (f": {node['last_error']}" if node.get("last_error") else ""))
    if args.format == "json":
        print_doc(node, args.format)
    return EXIT_OK


@command
def node_validate(args: argparse.Namespace, client: BaremetalClient, _: endpoints.Endpoint) -> int:
    found = client.validate_node(args.node)
    rows = [{"interface": name, "result": (value or {}).get("result"), "reason": (value or {}).get("reason")}
            for name, value in sorted(found.items())]
    if args.format == "json":
        print_json(found)
    else:
        print_rows(rows, args.format, [("Interface", "interface"), ("Result", "result"), ("Reason", "reason")])
    return EXIT_OK


@command
def node_maintenance(args: argparse.Namespace, client: BaremetalClient, _: endpoints.Endpoint) -> int:
    if args.maintenance_action == "set":
        client.set_maintenance(args.node, args.reason)
    else:
        client.unset_maintenance(args.node)
    if args.format == "json":
        print_doc(client.show_node(args.node), args.format)
    return EXIT_OK


# -- node snapshot ---------------------------------------------------------------------------


def _snapshot_image(endpoint: endpoints.Endpoint, name_or_id: str) -> tuple[Image, bool]:
    """The image the snapshot fills, and whether it was created here: an existing image by ID
    or name, else a new one (queued, qcow2) with that name. An ID that names no image is an
    error (a mistyped ID should not become an image's name)."""
    with GlanceClient(endpoint.image_url, endpoint.token, verify=endpoint.verify) as images:
        try:
            return images.find(name_or_id), False
        except GlanceError as exc:
            if looks_like_id(name_or_id) or not (exc.status in (None, 404)
                                                 and str(exc).startswith("no image with name")):
                raise
        return images.create({"name": name_or_id, "disk_format": "qcow2", "container_format": "bare"}), True


def _forget_image(endpoint: endpoints.Endpoint, image_id: str) -> None:
    with contextlib.suppress(remote.RemoteError):
        with GlanceClient(endpoint.image_url, endpoint.token, verify=endpoint.verify) as images:
            images.delete(image_id)


class _Watch:
    """What ``node snapshot --wait`` shows: the node's provision state and the workflow's state,
    progress and detail — a live bar on a terminal, one line per change on stderr otherwise
    (the workflow's quick steps between two polls from its history)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.last: tuple[Any, ...] | None = None
        self.node_state: Any = None          # the node's provision state at the last poll
        self.printed = 0
        self.bar: Any = None
        self.task: Any = None

    def __call__(self, node: dict[str, Any], wf: Workflow | None) -> None:
        state = node.get("provision_state")
        if self.bar is not None:
            from rich.markup import escape

            text = f"{self.label}: {state}" + (f" · {wf.state}" if wf else "")
            self.bar.update(self.task, completed=wf.progress if wf else 0, description=escape(text))
            return
        if wf is not None:
            # The steps since the last poll: the node's state is known for the newest one only;
            # the others show the last state seen (the previous poll's, else this one's).
            earlier = self.node_state if self.node_state is not None else state
            new = wf.history[self.printed:]
            for i, event in enumerate(new):
                now = i == len(new) - 1 and event.state == wf.state
                self._line(state if now else earlier, event.state, event.progress if not now else wf.progress,
                           event.detail)
            self.printed = max(self.printed, len(wf.history))
        self.node_state = state
        key = (state, wf.state if wf else None, wf.progress if wf else None)
        if key != self.last:
            self._line(state, key[1], key[2], node.get("last_error") or "")

    def _line(self, state: Any, wf_state: str | None, progress: int | None, detail: str) -> None:
        self.last = (state, wf_state, progress)
        percent = f"{progress:>3}%" if progress is not None else "    "
        _say(f"{state!s:<16} {wf_state or '':<24} {percent}" + (f"  {detail}" if detail else ""))

    @contextlib.contextmanager
    def shown(self):
        if not sys.stderr.isatty():
            yield self
            return
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

        columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console(sys.stderr), refresh_per_second=8) as bar:
            self.bar, self.task = bar, bar.add_task(self.label, total=100)
            yield self


def _follow_snapshot(client: BaremetalClient, endpoint: endpoints.Endpoint, node: dict[str, Any], image_id: str,
                     timeout: float) -> tuple[dict[str, Any], Workflow | None, Image | None]:
    """Poll the node, its snapshot workflow and the image until the node is active again with
    the image active (or the snapshot failed); the last of each seen."""
    uuid = node["uuid"]
    ride = Ride(f"the snapshot of node {uuid}", connected=True)
    deadline = time.monotonic() + timeout
    watch = _Watch(f"node {node.get('name') or uuid}")
    wf_id = node.get("snapshot_workflow_id")
    wf: Workflow | None = None
    image: Image | None = None
    with _workflows(endpoint) as flows, GlanceClient(endpoint.image_url, endpoint.token,
                                                      verify=endpoint.verify) as images, watch.shown():
        while True:
            node = ride.call(lambda: client.show_node(uuid), deadline=deadline)
            wf_id = wf_id or node.get("snapshot_workflow_id")
            if wf_id is None:
                found = ride.call(lambda: _latest_workflow(endpoint, uuid, SNAPSHOT_KIND, image_id=image_id),
                                  deadline=deadline)
                wf_id = found.id if found is not None else None
            if wf_id is not None:
                wf = ride.call(lambda: flows.show_workflow(wf_id), deadline=deadline)
            watch(node, wf)
            state = node.get("provision_state")
            if state == SNAPSHOT_FAILED or (state not in TRANSITIONAL and state != "active"):
                return node, wf, image
            if state == "active" and (wf is None or wf.ended or wf.state == "FAILED"):
                image = ride.call(lambda: images.show(image_id), deadline=deadline)
                if image.status == "active" or wf is not None:
                    return node, wf, image
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"timed out after {timeout:g}s waiting for the snapshot of node {uuid} (it is "
                                  f"{state}); it goes on on the server")
            time.sleep(min(0.25, max(deadline - time.monotonic(), 0.05)))


def _summary(node: dict[str, Any], image: Image | None, image_id: str, created: bool,
             wf: Workflow | None) -> dict[str, Any]:
    return {"node_uuid": node["uuid"], "node_name": node.get("name"), "provision_state": node.get("provision_state"),
            "target_provision_state": node.get("target_provision_state"), "last_error": node.get("last_error"),
            "image_id": image_id, "image_created": created, "image_status": image.status if image else None,
            "workflow_id": wf.id if wf else node.get("snapshot_workflow_id"),
            "workflow_state": wf.state if wf else None, "workflow_progress": wf.progress if wf else None}


@command
def node_snapshot(args: argparse.Namespace, client: BaremetalClient, endpoint: endpoints.Endpoint) -> int:
    node = client.show_node(args.node)
    image, created = _snapshot_image(endpoint, args.image)
    try:
        client.set_provision_state(node["uuid"], "snapshot", image_ref=image.id)
    except remote.RemoteError as exc:
        if created and not isinstance(exc, remote.Unreachable):
            _forget_image(endpoint, image.id)       # ours and still empty: do not leave it behind
        raise
    if args.format != "json":       # the IDs first, so they are known while waiting
        print(f"node {node['uuid']}: snapshot into image {image.id}" + (" (created)" if created else ""),
              file=sys.stderr, flush=True)
    if not args.wait:
        node = client.show_node(node["uuid"])
        wf = _latest_workflow(endpoint, node["uuid"], SNAPSHOT_KIND, image_id=image.id)
        print_doc(_summary(node, image, image.id, created, wf), args.format)
        return EXIT_OK
    try:
        node, wf, found = _follow_snapshot(client, endpoint, node, image.id, args.timeout)
    except KeyboardInterrupt:
        print(f"freezeframe: stopped watching; the snapshot of node {node['uuid']} goes on on the server "
              f"('freezeframe baremetal node abort {node['uuid']}' stops it once it fails or waits)", file=sys.stderr)
        raise
    print_doc(_summary(node, found, image.id, created, wf), args.format)
    state = node.get("provision_state")
    if state == "active" and found is not None and found.status == "active":
        return EXIT_OK
    if state == "active":
        reason = (wf.failure_reason if wf else None) or f"image {image.id} is {found.status if found else 'unknown'}"
        return fail(f"node {node['uuid']} is active again but its snapshot did not make an active image: {reason}",
                    EXIT_FAILED)
    reason = node.get("last_error") or (wf.failure_reason if wf else None) or "no reason given"
    return fail(f"the snapshot of node {node['uuid']} ended in {state}: {reason}", EXIT_FAILED)


# -- ports -------------------------------------------------------------------------------------


@command
def port_create(args: argparse.Namespace, client: BaremetalClient, _: endpoints.Endpoint) -> int:
    node = client.show_node(args.node)
    port = client.create_port(args.address, node["uuid"], extra=dict(args.extra) or None,
                              pxe_enabled=args.pxe_enabled)
    print_doc(port, args.format)
    return EXIT_OK


@command
def port_list(args: argparse.Namespace, client: BaremetalClient, _: endpoints.Endpoint) -> int:
    node = client.show_node(args.node)["uuid"] if args.node else None
    docs = list(client.list_ports(node=node, address=args.address, detail=args.long, limit=args.limit))
    print_rows(docs, args.format, PORT_LONG_COLUMNS if args.long else PORT_COLUMNS)
    return EXIT_OK


def _port_id(client: BaremetalClient, port: str) -> str:
    """A port's UUID as given, or the one with that MAC address."""
    if looks_like_id(port):
        return port
    found = list(client.list_ports(address=port))
    if not found:
        raise BaremetalError(f"no port with UUID or address {port!r}")
    return found[0]["uuid"]


@command
def port_show(args: argparse.Namespace, client: BaremetalClient, _: endpoints.Endpoint) -> int:
    print_doc(client.show_port(_port_id(client, args.port)), args.format)
    return EXIT_OK


@command
def port_delete(args: argparse.Namespace, client: BaremetalClient, _: endpoints.Endpoint) -> int:
    return _each(args.ports, "port", "delete", lambda port: client.delete_port(_port_id(client, port)))


# -- parser ----------------------------------------------------------------------------------


def parents() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The shared option sets: service endpoints (the image endpoint's and the bare-metal URL), and ``-f``."""
    service = argparse.ArgumentParser(add_help=False)
    cloud.add_arguments(service)
    group = service.add_argument_group("bare-metal service options")
    group.add_argument("--os-baremetal-url", metavar="URL", help="bare-metal API root, e.g. "
                       "http://127.0.0.1:9292/baremetal (also OS_BAREMETAL_URL; default: the service root + "
                       "/baremetal)")
    group.add_argument("--os-baremetal-api-version", metavar="VERSION",
                       help=f"the microversion to ask for (default {API_VERSION}, which has the snapshot verb, or "
                       "the service's newest when it is older)")
    fmt = argparse.ArgumentParser(add_help=False)
    fmt.add_argument("-f", "--format", choices=["table", "json"], default="table", help="output format")
    return service, fmt


def _node_fields(p: argparse.ArgumentParser, *, create: bool) -> None:
    p.add_argument("--name", metavar="NAME", help="a unique name (letters, digits, '-', '.', '_', '~')")
    p.add_argument("--description", metavar="TEXT")
    p.add_argument("--resource-class", metavar="CLASS")
    p.add_argument("--driver-info", type=_json_value, action="append", default=[], metavar="KEY=VALUE",
                   help="how to reach the node's BMC, e.g. redfish_address=https://bmc (repeat for more)")
    p.add_argument("--property", type=_json_value, action="append", default=[], metavar="KEY=VALUE",
                   help="a property, e.g. root_device='{\"size\": 8}' (repeat for more)")
    if not create:
        p.add_argument("--instance-info", type=_json_value, action="append", default=[], metavar="KEY=VALUE",
                       help="an instance_info item, e.g. root_device hints (repeat for more)")
        p.add_argument("--driver", metavar="DRIVER", help="another hardware type")
    for name in ("power", "boot", "snapshot"):
        p.add_argument(f"--{name}-interface", metavar="NAME", help=f"the {name} interface (default: the hardware "
                       "type's)")


def register(subparsers: Any) -> None:
    baremetal = subparsers.add_parser("baremetal", help="enrol, manage, power and snapshot bare-metal nodes; "
                                      "their ports", description="Bare-metal commands for the bare-metal API "
                                      "(Ironic v1).")
    kinds = baremetal.add_subparsers(dest="baremetal_command", required=True, metavar="KIND")
    service, fmt = parents()

    node = kinds.add_parser("node", help="bare-metal nodes")
    actions = node.add_subparsers(dest="baremetal_node_command", required=True, metavar="ACTION")

    p = actions.add_parser("create", parents=[service, fmt], help="enrol a node (it starts in enroll)")
    p.add_argument("--driver", required=True, metavar="DRIVER", help="its hardware type: fake-hardware or redfish")
    p.add_argument("--uuid", metavar="UUID", help="its UUID (default: a new one)")
    _node_fields(p, create=True)
    p.set_defaults(func=node_create)

    p = actions.add_parser("list", parents=[service, fmt], help="list nodes")
    p.add_argument("--long", action="store_true", help="more columns")
    p.add_argument("--provision-state", metavar="STATE", help="only nodes in this provision state, e.g. active")
    p.add_argument("--driver", metavar="DRIVER", help="only nodes with this hardware type")
    p.add_argument("--maintenance", action="store_true", default=None, help="only nodes in maintenance")
    p.add_argument("--no-maintenance", dest="maintenance", action="store_false", help="only nodes not in maintenance")
    p.add_argument("--limit", type=_positive_int, metavar="N", help="show at most N nodes")
    p.set_defaults(func=node_list)

    p = actions.add_parser("show", parents=[service, fmt], help="show one node (its secrets masked)")
    p.add_argument("node", metavar="NODE", help="UUID or name")
    p.set_defaults(func=node_show)

    p = actions.add_parser("set", parents=[service, fmt], help="change a node's fields")
    p.add_argument("node", metavar="NODE", help="UUID or name")
    _node_fields(p, create=False)
    p.set_defaults(func=node_set)

    p = actions.add_parser("unset", parents=[service, fmt], help="remove a node's fields or items of them")
    p.add_argument("node", metavar="NODE", help="UUID or name")
    p.add_argument("--name", action="store_true", help="remove its name")
    p.add_argument("--description", action="store_true", help="remove its description")
    p.add_argument("--resource-class", action="store_true", help="remove its resource class")
    for option, what in (("--property", "property"), ("--driver-info", "driver_info item"),
                         ("--instance-info", "instance_info item")):
        p.add_argument(option, type=_key, action="append", default=[], metavar="KEY",
                       help=f"the {what} to remove (repeat for more)")
    p.set_defaults(func=node_unset)

    p = actions.add_parser("delete", parents=[service], help="delete nodes")
    p.add_argument("nodes", nargs="+", metavar="NODE", help="UUID or name")
    p.set_defaults(func=node_delete)

    helps = {"manage": "verify a node and make it manageable (enroll, available, adopt failed -> manageable)",
             "provide": "make a manageable node available (Freezeframe cleans nothing: no disk is erased)",
             "adopt": "take a manageable node that already runs as active (no deploy)",
             "abort": "stop a snapshot: snapshot wait -> snapshot failed, snapshot failed -> active (after "
                      "removing the intermediate copy)",
             "undeploy": "tear an active (or failed snapshot) node down to available: the verb 'deleted' (no "
                         "disk is erased)"}
    for name in VERB_COMMANDS:
        p = actions.add_parser(name, parents=[service, fmt], help=helps[name])
        p.add_argument("node", metavar="NODE", help="UUID or name")
        p.add_argument("--wait", action="store_true", help="wait until the node is in the state it leads to (exit "
                       "1 with its last_error if it ends elsewhere)")
        add_timeout(p, "it")
        p.set_defaults(func=_verb_command(name))

    p = actions.add_parser("power", help="power a node on or off, or reboot it")
    power = p.add_subparsers(dest="power_action", required=True, metavar="ACTION")
    for action in POWER:
        q = power.add_parser(action, parents=[service, fmt], help=f"power {action}" if action != "reboot"
                             else "reboot")
        q.add_argument("node", metavar="NODE", help="UUID or name")
        q.add_argument("--power-timeout", type=_positive_int, metavar="SECONDS",
                       help="the hardware's limit for the action (default: the service's)")
        add_timeout(q, "the power action")
        q.set_defaults(func=node_power, timeout=120.0)

    p = actions.add_parser("validate", parents=[service, fmt], help="check each of a node's interfaces")
    p.add_argument("node", metavar="NODE", help="UUID or name")
    p.set_defaults(func=node_validate)

    p = actions.add_parser("maintenance", help="put a node in maintenance or take it out")
    maintenance = p.add_subparsers(dest="maintenance_action", required=True, metavar="ACTION")
    q = maintenance.add_parser("set", parents=[service, fmt], help="put a node in maintenance")
    q.add_argument("node", metavar="NODE", help="UUID or name")
    q.add_argument("--reason", metavar="TEXT", help="why")
    q.set_defaults(func=node_maintenance)
    q = maintenance.add_parser("unset", parents=[service, fmt], help="take a node out of maintenance")
    q.add_argument("node", metavar="NODE", help="UUID or name")
    q.set_defaults(func=node_maintenance)

    p = actions.add_parser("snapshot", parents=[service, fmt], help="capture an active node's root disk into an "
                           "image (seed 004)")
    p.add_argument("node", metavar="NODE", help="UUID or name")
    p.add_argument("--image", required=True, metavar="IMAGE", help="the image to fill: an ID or name; a name no "
                   "image has creates one (queued, qcow2)")
    p.add_argument("--wait", action="store_true", help="follow the snapshot: the node's state and the workflow's "
                   "progress (exit 0 when the node is active and the image active, 1 if it fails)")
    add_timeout(p, "the snapshot")
    p.set_defaults(func=node_snapshot)

    port = kinds.add_parser("port", help="bare-metal ports (a node's MAC addresses)")
    actions = port.add_subparsers(dest="baremetal_port_command", required=True, metavar="ACTION")

    p = actions.add_parser("create", parents=[service, fmt], help="add a port to a node")
    p.add_argument("address", metavar="ADDRESS", help="its MAC address")
    p.add_argument("--node", required=True, metavar="NODE", help="UUID or name of its node")
    p.add_argument("--extra", type=_json_value, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--pxe-enabled", type=_boolean, metavar="BOOL", help="true or false")
    p.set_defaults(func=port_create)

    p = actions.add_parser("list", parents=[service, fmt], help="list ports")
    p.add_argument("--node", metavar="NODE", help="only this node's (UUID or name)")
    p.add_argument("--address", metavar="MAC", help="only the port with this address")
    p.add_argument("--long", action="store_true", help="more columns")
    p.add_argument("--limit", type=_positive_int, metavar="N", help="show at most N ports")
    p.set_defaults(func=port_list)

    p = actions.add_parser("show", parents=[service, fmt], help="show one port")
    p.add_argument("port", metavar="PORT", help="UUID or MAC address")
    p.set_defaults(func=port_show)

    p = actions.add_parser("delete", parents=[service], help="delete ports")
    p.add_argument("ports", nargs="+", metavar="PORT", help="UUID or MAC address")
    p.set_defaults(func=port_delete)


def _positive_int(text: str) -> int:
    from freezeframe.cli.image import _positive

    return _positive(text)


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")
