"""``openstack baremetal node snapshot NODE --image IMAGE [--wait] [--timeout]``: capture an
active node's root disk into an image (seed 004): ``PUT /baremetal/v1/nodes/{node}/states/
provision {"target": "snapshot", "image_ref"}`` at microversion 1.116 (Freezeframe's; a real
Ironic has no such verb).

``IMAGE`` names an image (ID or name), or one is created (queued, qcow2) under that name — and
deleted again if the node refuses the snapshot — as ``freezeframe baremetal node snapshot``
does. Shows the node's provision state, the image and the workflow (``baremetal-snapshot``);
with ``--wait`` it follows the workflow (one line per change on stderr), then waits for the node
to leave ``snapshotting``, and exits 1 with the reason unless the node is active again with the
image active. (python-ironicclient's ``baremetal node ...`` commands have no ``snapshot``: no
clash.)
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Any

from freezeframe.common.remote import RemoteError
from freezeframe.compute.client import Unreachable, Workflow
from freezeframe.osc import progress
from freezeframe.osc.workflow import FailingShowOne, add_timeout

SNAPSHOT_KIND = "baremetal-snapshot"


def _summary(node: dict[str, Any], image: dict[str, Any] | None, image_id: str, created: bool,
             wf: Workflow | None) -> dict[str, Any]:
    """The same fields as ``freezeframe baremetal node snapshot -f json``."""
    return {"node_uuid": node["uuid"], "node_name": node.get("name"), "provision_state": node.get("provision_state"),
            "target_provision_state": node.get("target_provision_state"), "last_error": node.get("last_error"),
            "image_id": image_id, "image_created": created, "image_status": image.get("status") if image else None,
            "workflow_id": wf.id if wf else None, "workflow_state": wf.state if wf else None,
            "workflow_progress": wf.progress if wf else None}


class SnapshotBaremetalNode(FailingShowOne):
    """Snapshot an active bare-metal node's root disk into an image (Freezeframe, API 1.116)"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("node", metavar="<node>", help="Name or UUID of the node")
        parser.add_argument("--image", required=True, metavar="<image>",
                            help="Image to fill (name or ID); a name that no image has creates a queued qcow2 "
                                 "image with it")
        parser.add_argument("--wait", action="store_true",
                            help="Wait until the node is active again with the image active, showing the "
                                 "workflow's progress")
        add_timeout(parser, "the snapshot")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        client = self.app.client_manager.freezeframe
        node = client.show_node(parsed_args.node)
        image = client.find_image(parsed_args.image)
        created = image is None
        if image is None:
            image = client.create_image(parsed_args.image)
        image_id = image["id"]
        try:
            client.snapshot_node(node["uuid"], image_id)
        except RemoteError as exc:
            if created and not isinstance(exc, Unreachable):
                with contextlib.suppress(RemoteError):      # ours and still empty: do not leave it behind
                    client.delete_image(image_id)
            raise
        found = client.list_workflows(resource_id=node["uuid"], kind=SNAPSHOT_KIND, image_id=image_id)
        wf = found[0] if found else None
        if not parsed_args.wait:
            node = client.show_node(node["uuid"])
            return self._show(_summary(node, image, image_id, created, wf))
        print(f"node {node['uuid']}: snapshot into image {image_id}" + (" (created)" if created else "")
              + (f" (workflow {wf.id})" if wf else ""), file=sys.stderr, flush=True)
        deadline = time.monotonic() + parsed_args.timeout
        if wf is not None:
            wf = progress.follow(client, wf.id, parsed_args.timeout)
        node = progress.settle_node(client, node["uuid"], max(deadline, time.monotonic() + progress.NODE_SETTLE))
        image = client.show_image(image_id)
        summary = _summary(node, image, image_id, created, wf)
        state = node.get("provision_state")
        if state == "active" and image.get("status") == "active":
            return self._show(summary)
        if state == "active":
            reason = (wf.failure_reason if wf else None) or f"image {image_id} is {image.get('status')}"
            self.failed = f"node {node['uuid']} is active again but its snapshot did not make an active image: {reason}"
        else:
            reason = node.get("last_error") or (wf.failure_reason if wf else None) or "no reason given"
            self.failed = f"the snapshot of node {node['uuid']} ended in {state}: {reason}"
        return self._show(summary)

    @staticmethod
    def _show(doc: dict[str, Any]) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        return tuple(doc), tuple(doc.values())
