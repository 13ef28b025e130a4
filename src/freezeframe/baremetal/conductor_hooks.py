"""What the bare-metal service registers with the conductor: its kinds of work
(``baremetal/workflows/``: baremetal-snapshot, -verify, -adopt, -teardown, -abort, resource type
"node"; the ones that touch the WebDAV area bound to its host), its reconcile hook
(``TransferReaper``) and what its workflows call in process (``local_api``: the manager).

The reaper, on every scan of a conductor that serves the area's host:

- removes the intermediate copies no one needs: a copy is kept while its node is in snapshot
  failed (a retry resumes from it) or snapshotting with it; otherwise — the node aborted,
  deleted, gone, or the copy not its node's current one — it is removed ``transfer_grace``
  seconds after the later of its creation and the node's last provision change; directories in
  the area that no live transfer owns go after the same grace;
- releases the reservations of conductors that no longer run any work of that node (a
  conductor killed while it held the node), once seen stale on two scans ``STALE_AFTER`` apart.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from sqlalchemy import select

from freezeframe.baremetal.manager import BaremetalManager
from freezeframe.baremetal.model import Transfer
from freezeframe.baremetal.workflows import KINDS
from freezeframe.common.timeutil import utcnow
from freezeframe.conductor import runtime
from freezeframe.conductor.model import Workflow
from freezeframe.conductor.registry import Registry, Scan

LOG = logging.getLogger(__name__)
SERVICE = "baremetal"
STALE_AFTER = 120.0        # seconds a reservation must look stale before it is released (> a power action)


def register(registry: Registry) -> None:
    for kind in KINDS:
        registry.add_kind(kind)
    registry.add_hook(SERVICE, "transfers", TransferReaper())


def local_api(manager: BaremetalManager) -> dict[str, Any]:
    """What the bare-metal service offers the workflows of this process (``runtime.local``)."""
    return {SERVICE: manager}


class TransferReaper:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic, stale_after: float = STALE_AFTER) -> None:
        self.clock = clock
        self.stale_after = stale_after
        self._stale: dict[str, tuple[str, float]] = {}     # node id -> (reservation, first seen stale)

    def __call__(self, scan: Scan) -> list[str]:
        rt = runtime.current()
        try:
            mgr: BaremetalManager = rt.service(SERVICE)
        except RuntimeError:
            return []               # this process runs no bare-metal service
        done: list[str] = []
        if scan.hosts is None or mgr.transfer_host in scan.hosts:
            done += self.reap_copies(mgr)
        done += self.release_stale(mgr, scan)
        return done

    def reap_copies(self, mgr: BaremetalManager) -> list[str]:
        grace = float(mgr.settings.transfer_grace)
        now = utcnow()
        stale = mgr.db.run_sync(lambda s: mgr.stale_transfers(s, now, grace))
        removed = []
        for transfer_id, node_id, _path in stale:
            removed += [f"transfer {t}" for t in mgr.remove_transfers(node_id, only=transfer_id)]
        if removed:
            LOG.info("baremetal reaper: removed the intermediate copies %s", removed)
        # Directories no live transfer owns (a crash between making one and committing its row).
        live = mgr.db.run_sync(lambda s: set(s.scalars(select(Transfer.path).where(Transfer.removed_at.is_(None)))))
        for path in mgr.area.collections():
            if path in live:
                continue
            changed = mgr.area.last_change(path)
            if changed is not None and time.time() - changed > grace:
                mgr.area.remove(path)
                removed.append(f"orphan {path}")
        return removed

    def release_stale(self, mgr: BaremetalManager, scan: Scan) -> list[str]:
        """A reservation no running work of the node explains, seen so twice, is released."""
        now = self.clock()

        def find(session) -> list[tuple[str, str]]:
            out = []
            for node_id, holder in mgr.reserved_nodes(session):
                if holder == scan.conductor_id and node_id in _nodes_of(session, scan.running):
                    continue
                running = session.scalar(select(Workflow.id).where(
                    Workflow.resource_id == node_id, Workflow.owner == holder,
                    Workflow.state.not_in(["COMPLETE", "REVERTED", "CANCELLED", "IMAGE_ACTIVE"])).limit(1))
                if running is None:
                    out.append((node_id, holder))
            return out
        stale = dict(mgr.db.run_sync(find))
        self._stale = {n: seen for n, seen in self._stale.items() if stale.get(n) == seen[0]}
        released = []
        for node_id, holder in stale.items():
            first = self._stale.setdefault(node_id, (holder, now))[1]
            if now - first < self.stale_after:
                continue

            def release(session, node_id=node_id, holder=holder) -> bool:
                return mgr.release(session, node_id, holder)
            if mgr.db.run_sync(release):
                LOG.warning("baremetal: released node %s, reserved by %s which no longer works on it", node_id,
                            holder)
                released.append(f"node {node_id}")
            self._stale.pop(node_id, None)
        return released


def _nodes_of(session, workflow_ids) -> set[str]:
    if not workflow_ids:
        return set()
    return set(session.scalars(select(Workflow.resource_id).where(Workflow.id.in_(list(workflow_ids)),
                                                                  Workflow.resource_type == "node")))



