"""``freezeframe workflow ...``: list, show, watch and cancel the long operations (snapshots, backups).

``watch`` (and ``server image create --wait``) polls the workflow four times a second: a live
progress bar on stderr when it is a terminal, one line per state change otherwise. It exits 0
when the workflow reaches IMAGE_ACTIVE (COMPLETE for a volume workflow) and 1 when it ends REVERTED or CANCELLED, or stays FAILED
(its revert stalled), printing the failure reason. ``cancel`` says what it asked for and what
the workflow will undo (``--wait``: follows it until it has ended). Once the service has answered, a restart of
it does not end the watch: the polls ride through it (``cli/ride.py``), saying so, for up to
5 minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Iterable, Iterator

from freezeframe.cli import compute_cloud
from freezeframe.cli.compute_cloud import ComputeEndpoint, command
from freezeframe.cli.exitcodes import EXIT_FAILED, EXIT_OK
from freezeframe.cli.image import _cell, _console as console, fail, print_json
from freezeframe.cli.ride import Ride
from freezeframe.common.httpclient import looks_like_id
from freezeframe.compute.client import FAILED, ComputeClient, ComputeError, Workflow, WaitTimeout

POLL_INTERVAL = 0.25
FAILED_GRACE = 30.0     # a FAILED workflow whose revert has not finished after this long: stop following
DEFAULT_TIMEOUT = 3600.0
LIST_COLUMNS = [("ID", "id"), ("Kind", "kind"), ("State", "state"), ("Progress", "progress"),
                ("Server", "resource_id"), ("Image", "image_id"), ("Last State Change", "last_state_change_at")]
HISTORY_COLUMNS = [("At", "at"), ("State", "state"), ("Progress", "progress"), ("Detail", "detail")]


# -- following a workflow (also used by ``server image/backup create --wait``) ---------------


def poll_workflow(client: ComputeClient, workflow_id: str, *, timeout: float | None, interval: float = POLL_INTERVAL,
                  connected: bool = False, failed_grace: float = FAILED_GRACE) -> Iterator[Workflow]:
    """Yield the workflow at every poll until it ends (the last one yielded has ended, or is
    FAILED with a revert that is stalled or has not finished within ``failed_grace``);
    WaitTimeout after ``timeout`` seconds. Polls ride through a restart of the service
    (``connected``: it has answered already, so even the first poll does)."""
    ride = Ride(f"workflow {workflow_id}", connected=connected)
    deadline = None if timeout is None else time.monotonic() + timeout
    failed_since: float | None = None
    while True:
        wf = ride.call(lambda: client.show_workflow(workflow_id), deadline=deadline)
        yield wf
        now = time.monotonic()
        if wf.ended:
            return
        if wf.state == FAILED:
            if failed_since is None:
                failed_since = now
            if wf.stalled or now - failed_since >= failed_grace:
                return
        else:
            failed_since = None
        if deadline is not None and now >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for workflow {workflow_id} "
                              f"(state {wf.state}, {wf.progress}%)")
        time.sleep(interval if deadline is None else min(interval, max(deadline - now, 0.01)))


def _describe(wf: Workflow) -> str:
    return f"{wf.kind or 'workflow'} {wf.state}" + (" (stalled)" if wf.stalled else "")


def _line(at: str | None, state: str, progress: int | None, detail: str = "") -> str:
    percent = f"{progress:>3}%" if progress is not None else "    "
    return f"{at or '':<20}  {state:<24} {percent}" + (f"  {detail}" if detail else "")


def _bar(client: ComputeClient, workflow_id: str, timeout: float | None, connected: bool) -> Workflow:
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    wf = None
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console(sys.stderr), refresh_per_second=8) as bar:
        task = bar.add_task(f"workflow {workflow_id}", total=100)
        for wf in poll_workflow(client, workflow_id, timeout=timeout, connected=connected):
            bar.update(task, completed=wf.progress, description=escape(_describe(wf)))
    assert wf is not None
    return wf


def _lines(client: ComputeClient, workflow_id: str, timeout: float | None, connected: bool) -> Workflow:
    """One line per state change, from the workflow's history (so quick steps between polls show)."""
    printed, last, wf = 0, None, None
    for wf in poll_workflow(client, workflow_id, timeout=timeout, connected=connected):
        for event in wf.history[printed:]:
            print(_line(event.at, event.state, event.progress, event.detail), file=sys.stderr, flush=True)
            last = event.state
        printed = max(printed, len(wf.history))
        if wf.state != last:  # PENDING has no history event; an old server may send none at all
            print(_line(wf.attrs.get("last_state_change_at"), wf.state, wf.progress), file=sys.stderr, flush=True)
            last = wf.state
    assert wf is not None
    return wf


def follow(client: ComputeClient, workflow_id: str, timeout: float | None = DEFAULT_TIMEOUT, *,
           connected: bool = False) -> Workflow:
    """Show a workflow's progress on stderr until it ends; the last state seen. ``connected``:
    the service answered already (it just accepted the workflow), so every poll rides through
    a restart of it."""
    try:
        if sys.stderr.isatty():
            return _bar(client, workflow_id, timeout, connected)
        return _lines(client, workflow_id, timeout, connected)
    except WaitTimeout as exc:
        exc.message += f"; it goes on on the server ('freezeframe workflow watch {workflow_id}')"
        raise
    except KeyboardInterrupt:
        print(f"freezeframe: stopped watching; workflow {workflow_id} goes on on the server "
              f"('freezeframe workflow cancel {workflow_id}' stops it)", file=sys.stderr)
        raise


def outcome(wf: Workflow) -> int:
    """The exit code for how a followed workflow ended, saying why when it failed."""
    if wf.succeeded:
        return EXIT_OK
    reason = wf.failure_reason or "no reason given"
    message = f"workflow {wf.id} ended {wf.state}: {reason}"
    if wf.last_good_state:
        message += f" (last good state {wf.last_good_state})"
    if not wf.ended:
        message += "; its revert has not finished" + (" and is stalled" if wf.stalled else "")
    return fail(message, EXIT_FAILED)


# -- output ----------------------------------------------------------------------------------


def cell(value: Any) -> Any:
    """A table cell; lists of objects (links, events) as JSON rather than Python's repr."""
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        value = json.dumps(value, sort_keys=True)
    return _cell(value)


def print_workflow(wf: Workflow, fmt: str) -> None:
    if fmt == "json":
        print_json(dict(wf.attrs))
        return
    from rich.table import Table

    table = Table("Field", "Value")
    for key, value in wf.attrs.items():
        if key != "history":
            table.add_row(cell(key), cell(value))
    out = console(sys.stdout)
    out.print(table)
    if "history" in wf.attrs:
        history = Table(*(title for title, _ in HISTORY_COLUMNS), title="History")
        for event in wf.history:
            history.add_row(*(cell(getattr(event, key)) for _, key in HISTORY_COLUMNS))
        out.print(history)


def print_workflows(workflows: Iterable[Workflow], fmt: str) -> None:
    if fmt == "json":
        print_json([dict(wf.attrs) for wf in workflows])
        return
    from rich.table import Table

    table = Table(*(title for title, _ in LIST_COLUMNS))
    for wf in workflows:
        table.add_row(*(cell(wf.attrs.get(key)) for _, key in LIST_COLUMNS))
    console(sys.stdout).print(table)


# -- commands --------------------------------------------------------------------------------


@command
def list_workflows(args: argparse.Namespace, client: ComputeClient, _: ComputeEndpoint) -> int:
    server_id = None
    if args.server is not None:
        # An ID is taken as it is: a deleted server's workflows are still listed.
        server_id = args.server if looks_like_id(args.server) else client.find_server(args.server).id
    print_workflows(client.list_workflows(resource_id=server_id, image_id=args.image, state=args.state,
                                          kind=args.kind), args.format)
    return EXIT_OK


@command
def show(args: argparse.Namespace, client: ComputeClient, _: ComputeEndpoint) -> int:
    print_workflow(client.show_workflow(args.workflow), args.format)
    return EXIT_OK


@command
def watch(args: argparse.Namespace, client: ComputeClient, _: ComputeEndpoint) -> int:
    return outcome(follow(client, args.workflow, args.timeout))


# What a cancelled workflow undoes, by kind (the others: "what it did so far").
UNDONE = {
    "snapshot": "the guest thawed, the point in time released, the image deleted",
    "backup": "the guest thawed, the point in time released, the image deleted",
    "baremetal-snapshot": "the node booted from its disk again, the streamed copy removed, the image deleted",
}


def describe(wf: Workflow) -> str:
    """``workflow ID (snapshot of server S, UPLOAD_BEGIN 40%)``."""
    what = wf.kind or "workflow"
    resource = wf.attrs.get("resource_type") or "resource"
    if wf.resource_id:
        what += f" of {resource} {wf.resource_id}"
    return f"workflow {wf.id} ({what}, {wf.state} {wf.progress}%)"


def cancel_message(before: Workflow, *, following: bool = False) -> str:
    """What ``cancel`` did, from the workflow as it was just before (``following``: ``--wait``
    shows the rest, so no hint how to)."""
    undone = UNDONE.get(before.kind or "", "what it did so far undone")
    if before.state == FAILED:
        return (f"cancel requested for {describe(before)}: it had failed already and is reverting "
                f"({undone}); it ends CANCELLED once that is done")
    again = " (asked before already)" if before.attrs.get("cancel_requested") is True else ""
    return (f"cancel requested for {describe(before)}{again}: it stops at its next step and reverts "
            f"({undone}), then ends CANCELLED"
            + ("" if following else f". Follow it with 'freezeframe workflow watch {before.id}'"))


def cancelled_outcome(wf: Workflow) -> int:
    """Exit code of ``cancel --wait``: 0 once it ended CANCELLED or REVERTED (nothing left of
    it), 1 when it finished before the cancel took effect or its revert is stuck."""
    if wf.state in ("CANCELLED", "REVERTED"):
        print(f"workflow {wf.id} ended {wf.state}: cancelled, everything it made removed", file=sys.stderr)
        return EXIT_OK
    if wf.succeeded:
        made = f"; image {wf.image_id} is active" if wf.image_id else ""
        return fail(f"workflow {wf.id} finished ({wf.state}) before the cancel took effect{made}", EXIT_FAILED)
    return outcome(wf)


@command
def cancel(args: argparse.Namespace, client: ComputeClient, _: ComputeEndpoint) -> int:
    before = client.show_workflow(args.workflow)
    try:
        client.cancel_workflow(before.id)
    except ComputeError as exc:
        if exc.status == 409:
            exc.message = f"cannot cancel workflow {before.id}: {exc.message}: nothing to cancel"
        raise
    print(cancel_message(before, following=args.wait), file=sys.stderr, flush=True)
    if not args.wait:
        return EXIT_OK
    return cancelled_outcome(follow(client, before.id, args.timeout, connected=True))


# -- parser ----------------------------------------------------------------------------------


def positive_seconds(text: str) -> float:
    """argparse's type for a number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def add_timeout(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--timeout", "--wait-timeout", dest="timeout", type=positive_seconds, default=DEFAULT_TIMEOUT,
                        metavar="SECONDS", help=f"give up waiting for {what} after this long (default "
                        f"{DEFAULT_TIMEOUT:g}; the operation goes on)")


def parents() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The shared option sets: service endpoints, and ``-f``."""
    service = argparse.ArgumentParser(add_help=False)
    compute_cloud.add_arguments(service)
    fmt = argparse.ArgumentParser(add_help=False)
    fmt.add_argument("-f", "--format", choices=["table", "json"], default="table", help="output format")
    return service, fmt


def register(subparsers: Any) -> None:
    workflow = subparsers.add_parser("workflow", help="list, show, watch and cancel snapshot workflows",
                                     description="The long operations (snapshots, backups) and their states.")
    actions = workflow.add_subparsers(dest="workflow_command", required=True, metavar="ACTION")
    service, fmt = parents()

    p = actions.add_parser("list", parents=[service, fmt], help="list workflows (newest first)")
    p.add_argument("--server", metavar="SERVER", help="only this server's (ID or name)")
    p.add_argument("--image", metavar="IMAGE_ID", help="only the one filling this image")
    p.add_argument("--state", metavar="STATE", help="only workflows in this state, e.g. IMAGE_ACTIVE")
    p.add_argument("--kind", metavar="KIND",
                   help="only workflows of this kind: snapshot, backup, assisted-volume-snapshot, volume-create, "
                        "volume-snapshot-create, volume-upload-image, baremetal-snapshot, ... (as the list "
                        "shows them)")
    p.set_defaults(func=list_workflows)

    p = actions.add_parser("show", parents=[service, fmt], help="show one workflow and its history")
    p.add_argument("workflow", metavar="ID")
    p.set_defaults(func=show)

    p = actions.add_parser("watch", parents=[service], help="follow a workflow until it ends (exit 0 if "
                           "its image became active)")
    p.add_argument("workflow", metavar="ID")
    add_timeout(p, "the workflow")
    p.set_defaults(func=watch)

    p = actions.add_parser("cancel", parents=[service], help="stop a workflow; it reverts and ends CANCELLED")
    p.add_argument("workflow", metavar="ID")
    p.add_argument("--wait", action="store_true", help="wait until it has ended, showing its progress (exit 0 "
                   "once it ended CANCELLED, 1 if it finished before the cancel took effect)")
    add_timeout(p, "the workflow")
    p.set_defaults(func=cancel)
