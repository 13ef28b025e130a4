"""baremetal-abort: abort a failed snapshot (seed 004: snapshot failed -abort-> active). The API
checked the node is in snapshot failed and submitted this; the node stays there until the work
is done: the agent image ejected and the node rebooted to its disk, the intermediate copy
removed, the token wiped, then snapshot failed -abort-> active. Going back, the node stays in
snapshot failed with last_error = why the abort failed (abort may be asked again)."""

from __future__ import annotations

from taskflow.patterns import linear_flow

from freezeframe.baremetal.states import ProvisionState as P
from freezeframe.baremetal.workflows.common import give_back_image
from freezeframe.baremetal.workflows.simple import NodeStep, manager


class AbortSnapshot(NodeStep):
    frm = P.SNAPSHOTFAIL
    done_event = "abort"
    fail_event = None            # (the node stays in snapshot failed; last_error says why)
    what = "aborting the snapshot: the agent image ejected, rebooted to its disk, the copy removed"

    def work(self, job, node):
        mgr = manager()
        mgr.snapshot_interface(node).finish(mgr.info(node), mgr.hardware(node))
        give_back_image(job, node)
        mgr.remove_transfers(job.node_id)
        return {**mgr.agent_gone(), "last_error": None}


def make_flow(workflow_id: str, kind: str) -> linear_flow.Flow:
    return linear_flow.Flow(f"{kind}-{workflow_id}").add(AbortSnapshot(name="abort_snapshot"))
