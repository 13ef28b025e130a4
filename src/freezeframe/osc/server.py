"""``openstack server snapshot SERVER [--device DEV ...] [--name NAME] [--wait]``: Freezeframe's
instance-level snapshot (seed 003) — the chosen devices (all by default) at one point in time
into one bootable image — through the compute API's ``snapshot`` server action.

Shows the server, image and workflow IDs. With ``--wait`` it first waits out the compute API's
409 while the guest agent of a server whose image asks for quiesce does not answer yet (a guest
still booting; ``freezeframe server``'s ``accept_when_agent_ready``, saying so), then follows
the workflow (one line per change on stderr) and adds the state, progress and failure reason it
ended with, exiting 1 when it did not succeed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from osc_lib.cli import parseractions

from freezeframe.cli.server import AGENT_WAIT, accept_when_agent_ready, agent_not_ready
from freezeframe.compute.client import ComputeError
from freezeframe.osc import progress
from freezeframe.osc.workflow import FailingShowOne, add_timeout


class SnapshotServer(FailingShowOne):
    """Snapshot chosen disks of a server (local disks and volumes, all by default) at one point
    in time into one bootable image (Freezeframe's instance-level snapshot)"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("server", metavar="<server>", help="Server (name or ID)")
        parser.add_argument("--device", action="append", default=[], metavar="<device>",
                            help="A device to include, e.g. vda or /dev/vdb (repeat option; default: every device)")
        parser.add_argument("--name", metavar="<image-name>", help="Name of the image (default: the server's name)")
        parser.add_argument("--property", action=parseractions.KeyValueAction, metavar="<key=value>",
                            help="Image property (repeat option)")
        parser.add_argument("--wait", action="store_true",
                            help="Wait for the image to become active, showing the workflow's progress")
        add_timeout(parser, "the snapshot")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        client = self.app.client_manager.freezeframe
        server = client.find_server(parsed_args.server)

        def accept() -> dict[str, Any]:
            return client.snapshot_server(server["id"], parsed_args.name or server.get("name") or server["id"],
                                          parsed_args.device or None, parsed_args.property or None)
        if parsed_args.wait:        # a guest still booting: wait for its agent, as `freezeframe server` does
            accepted = accept_when_agent_ready(accept, server.get("name") or server["id"],
                                               timeout=min(parsed_args.timeout, AGENT_WAIT))
        else:
            try:
                accepted = accept()
            except ComputeError as exc:
                if agent_not_ready(exc):
                    exc.message += " (retry once the guest has booted, or add --wait to wait for its agent)"
                raise
        doc: dict[str, Any] = {"server_id": server["id"], "image_id": accepted["image_id"],
                               "workflow_id": accepted["workflow_id"]}
        if parsed_args.wait:
            print(f"server {server['id']}: snapshot into image {doc['image_id']} (workflow {doc['workflow_id']})",
                  file=sys.stderr, flush=True)
            wf = progress.follow(client, doc["workflow_id"], parsed_args.timeout)
            doc.update(state=wf.state, progress=wf.progress, failure_reason=wf.failure_reason)
            self.failed = progress.failure(wf)
        return tuple(doc), tuple(doc.values())
