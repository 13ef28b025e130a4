"""``--wait`` for the plugin's commands: follow a workflow (or a node's snapshot) until it ends,
one line per change on stderr — the workflow's state and percent (and the detail its history
gives), including the quick steps between two polls, which the workflow's history keeps.

The polling is the freezeframe CLI's (``cli/workflow.py``'s ``poll_workflow``: four polls a
second, a FAILED workflow followed until its revert ends, riding through a restart of the
service with ``cli/ride.py``); only the output is openstackclient's way: plain lines on stderr,
stdout left to the command's ``-f`` document.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from freezeframe.cli.ride import Ride
from freezeframe.cli.workflow import DEFAULT_TIMEOUT, poll_workflow
from freezeframe.compute.client import WaitTimeout, Workflow

# The node's provision states while a snapshot (or its abort) is under way.
NODE_TRANSITIONAL = frozenset({"snapshotting", "snapshot wait"})
NODE_SETTLE = 30.0      # after the workflow ended: how long the node may take to leave them


def line(state: str, progress: int | None, at: str | None = None, detail: str = "", prefix: str = "") -> str:
    percent = f"{progress:>3}%" if progress is not None else "    "
    return f"{prefix}{at or '':<20}  {state:<24} {percent}" + (f"  {detail}" if detail else "")


class Printer:
    """Prints each change of a followed workflow once: the history's new events, then the
    current state and percent when they differ from the last line."""

    def __init__(self, out: TextIO | None = None, prefix: str = "") -> None:
        self.out = out
        self.prefix = prefix
        self.printed = 0                    # history events printed
        self.last: tuple[str, int | None] | None = None

    def _say(self, text: str) -> None:
        print(text, file=self.out or sys.stderr, flush=True)

    def __call__(self, wf: Workflow) -> None:
        for event in wf.history[self.printed:]:
            self._say(line(event.state, event.progress, event.at, event.detail, self.prefix))
            # an event without a percent (a failure, a revert) stands for the current one too
            known = event.progress if event.progress is not None or event.state != wf.state else wf.progress
            self.last = (event.state, known)
        self.printed = max(self.printed, len(wf.history))
        if self.last is None or (wf.state, wf.progress) != self.last:
            detail = "stalled" if wf.stalled else ""
            self._say(line(wf.state, wf.progress, wf.attrs.get("last_state_change_at"), detail, self.prefix))
            self.last = (wf.state, wf.progress)


def follow(client: Any, workflow_id: str, timeout: float | None = DEFAULT_TIMEOUT, *, out: TextIO | None = None,
           prefix: str = "") -> Workflow:
    """Follow the workflow until it ends (or stays FAILED with its revert stalled); the last
    state seen. WaitTimeout after ``timeout`` seconds — the workflow goes on on the server."""
    show = Printer(out, prefix)
    wf = None
    try:
        for wf in poll_workflow(client, workflow_id, timeout=timeout, connected=True):
            show(wf)
    except WaitTimeout as exc:
        exc.message += f"; it goes on on the server ('openstack workflow watch {workflow_id}')"
        raise
    except KeyboardInterrupt:
        print(f"stopped watching; workflow {workflow_id} goes on on the server ('openstack workflow cancel "
              f"{workflow_id}' stops it)", file=out or sys.stderr)
        raise
    assert wf is not None
    return wf


def failure(wf: Workflow) -> str | None:
    """Why a followed workflow did not succeed (None when it did): its state, failure reason and
    last good state, as ``freezeframe workflow watch`` says it."""
    if wf.succeeded:
        return None
    message = f"workflow {wf.id} ended {wf.state}: {wf.failure_reason or 'no reason given'}"
    if wf.last_good_state:
        message += f" (last good state {wf.last_good_state})"
    if not wf.ended:
        message += "; its revert has not finished" + (" and is stalled" if wf.stalled else "")
    return message


def settle_node(client: Any, node_uuid: str, deadline: float) -> dict[str, Any]:
    """The node once it left the snapshot's transitional states (the workflow moves it to
    active, or snapshot failed, as it ends), polled riding through a restart."""
    ride = Ride(f"the snapshot of node {node_uuid}", connected=True)
    while True:
        node = ride.call(lambda: client.show_node(node_uuid), deadline=deadline)
        if node.get("provision_state") not in NODE_TRANSITIONAL or time.monotonic() >= deadline:
            return node
        time.sleep(0.25)
