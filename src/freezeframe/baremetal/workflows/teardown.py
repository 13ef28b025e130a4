"""baremetal-teardown: the API moved the node active|snapshot wait|snapshot failed|error
-deleted-> deleting. Freezeframe's drivers neither clean nor erase anything: the node is powered
off, the agent image ejected, its intermediate copies removed, its agent token wiped, then
deleting -done-> available; going back, deleting -fail-> error with last_error. A server
record the node had (adopted) goes with it, in the same transaction."""

from __future__ import annotations

from taskflow.patterns import linear_flow

from freezeframe.baremetal.drivers.base import POWER_OFF
from freezeframe.baremetal.states import ProvisionState as P
from freezeframe.baremetal.workflows.common import compute_hooks, give_back_image
from freezeframe.baremetal.workflows.simple import NodeStep, manager


class TearDown(NodeStep):
    frm = P.DELETING
    what = "powering off, ejecting the agent image, removing its intermediate copies (no cleaning)"

    def work(self, job, node):
        mgr = manager()
        mgr.snapshot_interface(node).tear_down(mgr.info(node), mgr.hardware(node))
        give_back_image(job, node)
        mgr.remove_transfers(job.node_id)
        return {**mgr.agent_gone(), "power_state": POWER_OFF, "last_error": None}

    def settled(self, session, job, node) -> None:
        compute = compute_hooks()
        if compute is not None and hasattr(compute, "node_released"):
            compute.node_released(session, node.id)
        node.instance_uuid = None


def make_flow(workflow_id: str, kind: str) -> linear_flow.Flow:
    return linear_flow.Flow(f"{kind}-{workflow_id}").add(TearDown(name="tear_down"))
