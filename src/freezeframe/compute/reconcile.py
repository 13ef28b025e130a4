"""Reconcile servers: none stays in a transitional task_state that no live workflow or operation
owns (Nova's ``_init_instance`` on compute start, done periodically).

Run by every conductor's scan (``Conductor.reconcile``). A server is repaired when:

- its task_state is one of a snapshot's (``image_*``), no unfinished workflow of the server
  exists (a FAILED workflow whose revert is being retried still owns it: that revert clears
  it), and either the task_state is older than the end of the server's last workflow (it
  outlived the workflow that set it), or it was set before the compute API of this very process
  started, or ``TOP_HALF_GRACE`` has passed — a createImage being accepted sets the task_state
  a moment before it records its workflow;
- its task_state is ``spawning``, ``powering-on``, ``powering-off`` or ``deleting`` — operations
  that run inside the API process that accepted them — and either it was set before the compute
  API of this very process started (``serve``: the process that ran it is gone) or it has not
  changed for ``compute.task_timeout`` seconds.

Repairing sets task_state back to None by compare-and-set (a concurrent change wins) and
vm_state from what the hypervisor says about the domain, or ERROR with a fault when the
domain does not exist. The hypervisor not answering leaves the server for the next pass.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from freezeframe.common.timeutil import utcnow
from freezeframe.compute.drivers.base import DomainNotFound, PowerState, VirtDriver
from freezeframe.compute.model import Instance
from freezeframe.compute.states import TaskState, VmState, set_task_state
from freezeframe.conductor.model import Workflow
from freezeframe.conductor.states import TERMINAL
from freezeframe.db.session import Database

LOG = logging.getLogger(__name__)

T = TaskState
SNAPSHOT_TASKS = frozenset({T.IMAGE_SNAPSHOT_PENDING, T.IMAGE_SNAPSHOT, T.IMAGE_BACKUP, T.IMAGE_PENDING_UPLOAD,
                            T.IMAGE_UPLOADING})
OPERATION_TASKS = frozenset({T.SPAWNING, T.POWERING_ON, T.POWERING_OFF, T.DELETING})
VM_STATE_OF = {PowerState.RUNNING: VmState.ACTIVE, PowerState.PAUSED: VmState.PAUSED,
               PowerState.SUSPENDED: VmState.SUSPENDED, PowerState.SHUTDOWN: VmState.STOPPED,
               PowerState.CRASHED: VmState.ERROR, PowerState.NOSTATE: VmState.STOPPED}
TOP_HALF_GRACE = 300.0     # seconds a snapshot task_state may go without its workflow (being accepted)
_WHAT = {T.SPAWNING: "spawn", T.POWERING_ON: "start", T.POWERING_OFF: "stop", T.DELETING: "delete"}


@dataclass(frozen=True)
class Repair:
    server_id: str
    task_state: str         # what it was left in
    vm_state: str           # what it is now
    reason: str


def unfinished_workflow(session: Session, server_id: str) -> str | None:
    """An unfinished workflow of the server (it owns the server's snapshot task_state), if any."""
    return session.scalar(select(Workflow.id).where(
        Workflow.resource_id == server_id, Workflow.state.not_in([s.value for s in TERMINAL])).limit(1))


def orphaned(session: Session, inst: Instance, *, task_timeout: float, api_started_at: dt.datetime | None,
             now: dt.datetime) -> str | None:
    """Why the server's task_state has no live owner, or None when something owns it."""
    task = TaskState(inst.task_state)
    if task in SNAPSHOT_TASKS:
        if unfinished_workflow(session, inst.id) is not None:
            return None
        ended = session.scalar(select(func.max(Workflow.updated_at)).where(Workflow.resource_id == inst.id))
        if ended is not None and inst.updated_at <= ended:
            return f"task_state {task} outlived the workflow that set it"
        if api_started_at is not None and inst.updated_at < api_started_at:
            return f"task_state {task} was set in an earlier run of this service and no workflow owns it"
        if (now - inst.updated_at).total_seconds() > min(task_timeout, TOP_HALF_GRACE):
            return f"task_state {task} but no workflow owns it"
        return None
    if task in OPERATION_TASKS:
        if api_started_at is not None and inst.updated_at < api_started_at:
            return f"its {_WHAT[task]} was under way in an earlier run of this service (task_state {task})"
        if (now - inst.updated_at).total_seconds() > task_timeout:
            return f"its {_WHAT[task]} made no progress for {task_timeout:g}s (task_state {task})"
    return None


def reconcile_servers(db: Database, driver: VirtDriver, *, task_timeout: float = 3600.0,
                      api_started_at: dt.datetime | None = None) -> list[Repair]:
    """One pass over the servers in a transitional task_state; returns what was repaired."""
    now = utcnow()
    states = [t.value for t in SNAPSHOT_TASKS | OPERATION_TASKS]

    def candidates(session: Session) -> list[tuple[str, str, str, dt.datetime, str]]:
        rows = session.scalars(select(Instance).where(Instance.task_state.in_(states),
                                                      Instance.vm_state != VmState.DELETED.value))
        found = []
        for inst in rows:
            why = orphaned(session, inst, task_timeout=task_timeout, api_started_at=api_started_at, now=now)
            if why:
                found.append((inst.id, inst.task_state, inst.domain_name, inst.updated_at, why))
        return found

    repairs = []
    for server_id, task, domain, seen_at, why in db.run_sync(candidates):
        try:
            info = driver.get_info(domain)
            vm_state, power, fault = VM_STATE_OF.get(info.state, VmState.ERROR), info.state.value, None
            if vm_state == VmState.ERROR:
                fault = f"{why}; the hypervisor reports domain {domain} {info.state}"
        except DomainNotFound:
            vm_state, power = VmState.ERROR, PowerState.NOSTATE.value
            fault = f"{why}; the hypervisor has no domain {domain}" + (
                "; delete the server again" if TaskState(task) == T.DELETING else "")
        except Exception as exc:          # the hypervisor does not answer: not now
            LOG.warning("reconcile: server %s left in task_state %s, but its domain cannot be inspected: %s",
                        server_id, task, exc)
            continue

        def repair(session: Session) -> bool:
            inst = session.get(Instance, server_id)
            if inst is None or inst.task_state != task or inst.updated_at != seen_at:
                return False                # it moved meanwhile: someone owns it after all
            if TaskState(task) in SNAPSHOT_TASKS and unfinished_workflow(session, server_id) is not None:
                return False
            values = {"vm_state": vm_state.value, "power_state": power}
            if fault:
                values["fault"] = fault[:1000]
            set_task_state(session, server_id, TaskState(task), None, reason=f"reconciled: {why}", values=values)
            return True
        try:
            done = db.run_sync(repair)
        except Exception as exc:            # a concurrent change (409) or the database: next pass
            LOG.info("reconcile: server %s not repaired: %s", server_id, exc)
            continue
        if done:
            LOG.warning("reconcile: server %s repaired: %s -> task_state None, vm_state %s", server_id, why,
                        vm_state.value)
            repairs.append(Repair(server_id, task, vm_state.value, why))
    return repairs
