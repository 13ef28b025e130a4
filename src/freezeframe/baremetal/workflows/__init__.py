"""The bare-metal service's conductor workflows (seed 004), one module each:

- ``snapshot``: ``baremetal-snapshot`` (a node's root disk into a pre-created image; the same
  workflow states as a VM snapshot);
- ``verify``: ``baremetal-verify`` (manage); ``adopt``: ``baremetal-adopt``;
- ``teardown``: ``baremetal-teardown`` (deleted); ``abort``: ``baremetal-abort`` (a failed
  snapshot aborted);

with what they share in ``common`` and ``simple``. They reach the service through
``runtime.current().service("baremetal")`` (a ``BaremetalManager``). The kinds that touch the
WebDAV area (snapshot, abort, teardown) are bound to its host (``[baremetal] transfer_host``):
only a conductor serving that host claims them; verify and adopt run anywhere.
"""

from __future__ import annotations

from freezeframe.conductor.registry import StateTable, WorkflowKind
from freezeframe.conductor.states import TERMINAL, WORKFLOW, WorkflowState as W

PACKAGE = "freezeframe.baremetal.workflows"
SNAPSHOT, VERIFY, ADOPT = "baremetal-snapshot", "baremetal-verify", "baremetal-adopt"
TEARDOWN, ABORT = "baremetal-teardown", "baremetal-abort"
RESOURCE = "node"
SNAPSHOT_STATES = StateTable("seed 000 snapshot workflow (node snapshot, seed 004)", initial=W.PENDING,
                             terminal=frozenset(TERMINAL), machine=WORKFLOW)
NODE_STATES = StateTable("node workflow (PENDING -> RUNNING -> COMPLETE)", initial=W.PENDING,
                         terminal=frozenset({W.COMPLETE, W.REVERTED, W.CANCELLED}), machine=WORKFLOW)
# kind -> (module, state table, bound to the area's host)
_MODULES = {SNAPSHOT: ("snapshot", SNAPSHOT_STATES, True), ABORT: ("abort", NODE_STATES, True),
            TEARDOWN: ("teardown", NODE_STATES, True), VERIFY: ("verify", NODE_STATES, False),
            ADOPT: ("adopt", NODE_STATES, False)}
KINDS = tuple(WorkflowKind(kind, f"{PACKAGE}.{module}.make_flow", table, resource_type=RESOURCE,
                           host_bound=bound)
              for kind, (module, table, bound) in _MODULES.items())
HOST_BOUND = frozenset(kind for kind, (_m, _t, bound) in _MODULES.items() if bound)
