"""baremetal-adopt: the API moved the node manageable|adopt failed -adopt-> adopting; nothing
is deployed (the node runs what it runs): its interfaces are validated and its power state read,
then adopting -done-> active; going back, adopting -fail-> adopt failed with last_error."""

from __future__ import annotations

from taskflow.patterns import linear_flow

from freezeframe.baremetal.states import ProvisionState as P
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


def make_flow(workflow_id: str, kind: str) -> linear_flow.Flow:
    return linear_flow.Flow(f"{kind}-{workflow_id}").add(AdoptNode(name="adopt_node"))
