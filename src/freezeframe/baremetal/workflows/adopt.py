"""baremetal-adopt: the API moved the node manageable|adopt failed -adopt-> adopting; nothing
is deployed (the node runs what it runs): its interfaces are validated and its power state read,
then adopting -done-> active; going back, adopting -fail-> adopt failed with last_error.
With compute in this process, the active node also gets its server record in the same
transaction (Nova's Ironic driver in spirit: ``instance_uuid`` names it)."""

from __future__ import annotations

import json

from taskflow.patterns import linear_flow

from freezeframe.baremetal.states import ProvisionState as P
from freezeframe.baremetal.workflows.common import compute_hooks
from freezeframe.baremetal.workflows.simple import NodeStep, manager, power_state


class AdoptNode(NodeStep):
    frm = P.ADOPTING
    what = "validating its interfaces and taking it over as it runs (nothing deployed)"

    def work(self, job, node):
        mgr = manager()
        hw, info = mgr.hardware(node), mgr.info(node)
        hw.power.validate(info)
        hw.boot.validate(info)
        mgr.snapshot_interface(node)        # (enabled: else DriverError)
        return {"power_state": power_state(mgr, node), "last_error": None}

    def settled(self, session, job, node) -> None:
        compute = compute_hooks()
        if compute is None or not hasattr(compute, "node_adopted"):
            return
        server_id = compute.node_adopted(session, node.id, job.actor, name=node.name, power_state=node.power_state,
                                         properties=json.loads(node.properties_json or "{}"),
                                         instance_uuid=node.instance_uuid)
        if server_id and node.instance_uuid is None:
            node.instance_uuid = server_id


def make_flow(workflow_id: str, kind: str) -> linear_flow.Flow:
    return linear_flow.Flow(f"{kind}-{workflow_id}").add(AdoptNode(name="adopt_node"))
