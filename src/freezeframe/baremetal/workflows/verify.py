"""baremetal-verify: the API moved the node enroll|manageable -manage-> verifying; the node's
power and boot interfaces are validated and its power state read (Ironic's manage), then
verifying -done-> manageable; going back, verifying -fail-> enroll with last_error."""

from __future__ import annotations

from taskflow.patterns import linear_flow

from freezeframe.baremetal.states import ProvisionState as P
from freezeframe.baremetal.workflows.simple import NodeStep, manager, power_state


class VerifyNode(NodeStep):
    frm = P.VERIFYING
    what = "validating its power and boot interfaces, reading its power state"

    def work(self, job, node):
        mgr = manager()
        hw, info = mgr.hardware(node), mgr.info(node)
        hw.power.validate(info)
        hw.boot.validate(info)
        return {"power_state": power_state(mgr, node), "last_error": None}


def make_flow(workflow_id: str, kind: str) -> linear_flow.Flow:
    return linear_flow.Flow(f"{kind}-{workflow_id}").add(VerifyNode(name="verify_node"))
