"""``openstack workflow list|show|watch|cancel``: Freezeframe's long operations (snapshots,
backups, bare-metal snapshots) on its workflow API (``/v1/workflows``).

``watch`` follows a workflow (one line per change on stderr) and shows it at the end; it exits
1 with the reason when the workflow did not succeed. ``cancel --wait`` follows the revert and
exits 1 when the workflow did not end CANCELLED (it finished first, or its revert failed).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cliff import columns
from osc_lib import exceptions
from osc_lib.command import command

from freezeframe.cli.workflow import DEFAULT_TIMEOUT, LIST_COLUMNS, positive_seconds
from freezeframe.common.httpclient import looks_like_id
from freezeframe.compute.client import ComputeError, Workflow
from freezeframe.osc import progress


def add_timeout(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--timeout", type=positive_seconds, default=DEFAULT_TIMEOUT, metavar="<seconds>",
                        help=f"With --wait: give up waiting for {what} after this long (default "
                             f"{DEFAULT_TIMEOUT:g}; the operation goes on on the server)")


class HistoryColumn(columns.FormattableColumn):
    """A workflow's history: the API's list of events for ``-f json``/``yaml``, one line per
    event (as ``--wait`` prints them) in a table."""

    def human_readable(self) -> str:
        return "\n".join(progress.line(str(e.get("state")), e.get("progress"), e.get("at"), e.get("detail") or "")
                         for e in self._value or () if isinstance(e, dict))

    def machine_readable(self) -> list[Any]:
        return list(self._value or [])


def workflow_fields(wf: Workflow) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """A workflow as a ShowOne's columns and values (every field the API gives, history last)."""
    attrs = dict(wf.attrs)
    keys = [k for k in attrs if k != "history"] + (["history"] if "history" in attrs else [])
    return tuple(keys), tuple(HistoryColumn(attrs[k]) if k == "history" else attrs[k] for k in keys)


class FailingShowOne(command.ShowOne):
    """A ShowOne that shows its document and then fails (exit 1, the reason on stderr) when
    ``take_action`` set ``self.failed``: a followed operation that did not succeed still
    prints what it ended as."""

    failed: str | None = None

    def run(self, parsed_args: argparse.Namespace) -> int:
        self.failed = None
        status = super().run(parsed_args)
        if self.failed:
            raise exceptions.CommandError(self.failed)
        return status


class ListWorkflow(command.Lister):
    """List workflows (newest first): a project's own, an administrator's all."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("--server", metavar="<server>",
                            help="Only this server's (name or ID; an ID is taken as it is, so a deleted "
                                 "server's are listed)")
        parser.add_argument("--node", metavar="<node>", help="Only this bare-metal node's (UUID)")
        parser.add_argument("--image", metavar="<image-id>", help="Only the one filling this image")
        parser.add_argument("--state", metavar="<state>", help="Only workflows in this state, e.g. IMAGE_ACTIVE")
        parser.add_argument("--kind", metavar="<kind>", help="snapshot, backup, baremetal-snapshot, ...")
        parser.add_argument("--limit", type=int, metavar="<limit>", help="At most this many (default 100)")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        client = self.app.client_manager.freezeframe
        resource = parsed_args.node
        if parsed_args.server is not None:
            resource = parsed_args.server if looks_like_id(parsed_args.server) else \
                client.find_server(parsed_args.server)["id"]
        found = client.list_workflows(resource_id=resource, image_id=parsed_args.image, state=parsed_args.state,
                                      kind=parsed_args.kind,
                                      limit=str(parsed_args.limit) if parsed_args.limit is not None else None)
        columns = tuple(title for title, _ in LIST_COLUMNS)
        return columns, [tuple(wf.attrs.get(key) for _, key in LIST_COLUMNS) for wf in found]


class ShowWorkflow(command.ShowOne):
    """Show a workflow: its state, progress, owner and liveness, failure, and history."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("workflow", metavar="<workflow>", help="Workflow ID")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        return workflow_fields(self.app.client_manager.freezeframe.show_workflow(parsed_args.workflow))


class WatchWorkflow(FailingShowOne):
    """Follow a workflow until it ends (one line per change on stderr), then show it; exit 1
    when it did not succeed."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("workflow", metavar="<workflow>", help="Workflow ID")
        add_timeout(parser, "the workflow")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        client = self.app.client_manager.freezeframe
        client.show_workflow(parsed_args.workflow)          # a wrong ID fails at once, not ridden through
        wf = progress.follow(client, parsed_args.workflow, parsed_args.timeout)
        self.failed = progress.failure(wf)
        return workflow_fields(client.show_workflow(wf.id))


class CancelWorkflow(command.Command):
    """Cancel a workflow: it reverts (guest thawed, local snapshot removed, image deleted) and
    ends CANCELLED."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("workflow", metavar="<workflow>", help="Workflow ID")
        parser.add_argument("--wait", action="store_true",
                            help="Follow the revert until the workflow ends (exit 1 unless it ends CANCELLED)")
        add_timeout(parser, "the revert")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        client = self.app.client_manager.freezeframe
        try:
            client.cancel_workflow(parsed_args.workflow)
        except ComputeError as exc:
            if exc.status == 409:
                raise exceptions.CommandError(f"cannot cancel workflow {parsed_args.workflow}: {exc}") from None
            raise
        print(f"workflow {parsed_args.workflow}: cancel requested; it reverts and ends CANCELLED", file=sys.stderr)
        if not parsed_args.wait:
            return 0
        wf = progress.follow(client, parsed_args.workflow, parsed_args.timeout)
        if wf.state != "CANCELLED":
            raise exceptions.CommandError(f"workflow {wf.id} ended {wf.state}, not CANCELLED"
                                          + (f": {wf.failure_reason}" if wf.failure_reason else ""))
        return 0
