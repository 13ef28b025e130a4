"""Reconcile servers: none stays in a transitional task_state that no live workflow or operation
owns (Nova's ``_init_instance`` on compute start, done periodically).

Registered with the conductor as compute's ``servers`` hook (``compute/conductor_hooks.py``) and
run by every conductor's scan, for the servers of the hosts that conductor serves; whether a
workflow owns a server is asked of the conductor (``conductor/service.py``), never read from its
tables. A server is repaired when:

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

A bare-metal server (``node`` set: no host, no domain) is owned by its node's workflows: its
snapshot task_state is repaired when no unfinished workflow of the node is left (a FAILED one
counts as ended: the node is then in snapshot failed, the server's snapshot is over) by the
same rules (outlived the node's last workflow, set before this API started, or the grace
passed); its operation task_state as above. Its repair only clears task_state (with a fault for
an operation cut short): vm_state stays, there is no hypervisor to ask.

Repairing a VM sets task_state back to None by compare-and-set (a concurrent change wins) and
vm_state from what the hypervisor says about the domain, or ERROR with a fault when the
domain does not exist — through the vm_state table (``compute/states.py``): a hypervisor state
the server's vm_state cannot become (not a move Nova makes) leaves vm_state as it is, as Nova's
power-state sync does, except a build cut short, which is ERROR. The hypervisor not answering
leaves the server for the next pass.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from typing import Callable

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from freezeframe.common.timeutil import utcnow
from freezeframe.compute.drivers.base import DomainNotFound, PowerState, VirtDriver
from freezeframe.compute.model import Instance
from freezeframe.compute.states import VM_STATE, TaskState, VmState, set_task_state
from freezeframe.conductor.service import Workflows
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


def orphaned(session: Session, inst: Instance, *, task_timeout: float, api_started_at: dt.datetime | None,
             now: dt.datetime, workflows: Workflows) -> str | None:
    """Why the server's task_state has no live owner, or None when something owns it. Whether
    a workflow owns it is the conductor's to say (``workflows``, in this same transaction)."""
    task = TaskState(inst.task_state)
    if task in SNAPSHOT_TASKS:
        # A bare-metal server's snapshot is its node's workflow (FAILED: ended, the node is in
        # snapshot failed); a VM's is the server's own (FAILED: its revert is still retried).
        resource = inst.node or inst.id
        if workflows.unfinished(resource, session=session, failed=inst.node is None) is not None:
            return None
        ended = workflows.last_change_at(resource, session=session)
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


def reconcile_servers(db: Database, driver: VirtDriver | Callable[[str | None], VirtDriver], *,
                      task_timeout: float = 3600.0,
                      api_started_at: dt.datetime | None = None, workflows: Workflows | None = None,
                      hosts: frozenset[str] | None = None) -> list[Repair]:
    """One pass over the servers (of ``hosts``, None: any; ``driver`` is their hypervisor) in a
    transitional task_state; returns what was repaired. ``driver``: their hypervisor, or a
    function giving each host's (``Hosts``: a host that is down is skipped, for now)."""
    driver_for = (lambda _host: driver) if isinstance(driver, VirtDriver) else driver
    now = utcnow()
    states = [t.value for t in SNAPSHOT_TASKS | OPERATION_TASKS]
    workflows = workflows or Workflows(db)

    def candidates(session: Session) -> list[tuple[str, str, str, dt.datetime, str]]:
        stmt = select(Instance).where(Instance.task_state.in_(states), Instance.vm_state != VmState.DELETED.value,
                                      Instance.node.is_(None))
        if hosts is not None:
            stmt = stmt.where(or_(Instance.host.in_(hosts), Instance.host.is_(None)))
        found = []
        for inst in session.scalars(stmt):
            why = orphaned(session, inst, task_timeout=task_timeout, api_started_at=api_started_at, now=now,
                           workflows=workflows)
            if why:
                found.append((inst.id, inst.task_state, inst.domain_name, inst.updated_at, why, inst.host))
        return found

    repairs = reconcile_node_servers(db, workflows, task_timeout=task_timeout, api_started_at=api_started_at,
                                     now=now)
    for server_id, task, domain, seen_at, why, host in db.run_sync(candidates):
        try:
            info = driver_for(host).get_info(domain)
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

        def repair(session: Session) -> VmState | None:
            inst = session.get(Instance, server_id)
            if inst is None or inst.task_state != task or inst.updated_at != seen_at:
                return None                 # it moved meanwhile: someone owns it after all
            if TaskState(task) in SNAPSHOT_TASKS and workflows.unfinished(server_id, session=session) is not None:
                return None
            was, target, note = VmState(inst.vm_state), vm_state, fault
            if was != target and not VM_STATE.allowed(was, target):
                # Not a move Nova makes (stopped -> paused, say): as Nova's power-state sync, the
                # vm_state the user expects stays and power_state tells; a build cut short is an error.
                target = VmState.ERROR if was == VmState.BUILDING else was
                note = f"{why}; the hypervisor reports domain {domain} {power}" if target == VmState.ERROR else fault
            values = {"power_state": power}
            if note:
                values["fault"] = note[:1000]
            set_task_state(session, server_id, TaskState(task), None, reason=f"reconciled: {why}",
                           vm_state=target, vm_from=was, values=values)
            return target
        try:
            done = db.run_sync(repair)
        except Exception as exc:            # a concurrent change (409) or the database: next pass
            LOG.info("reconcile: server %s not repaired: %s", server_id, exc)
            continue
        if done:
            LOG.warning("reconcile: server %s repaired: %s -> task_state None, vm_state %s", server_id, why,
                        done.value)
            repairs.append(Repair(server_id, task, done.value, why))
    return repairs


def reconcile_node_servers(db: Database, workflows: Workflows, *, task_timeout: float,
                           api_started_at: dt.datetime | None, now: dt.datetime) -> list[Repair]:
    """Bare-metal servers left in a transitional task_state with no live owner: task_state None
    (compare-and-set), vm_state as it is; an operation cut short leaves a fault."""
    states = [t.value for t in SNAPSHOT_TASKS | OPERATION_TASKS]

    def repair(session: Session) -> list[Repair]:
        done = []
        for inst in session.scalars(select(Instance).where(Instance.task_state.in_(states), Instance.node.is_not(None),
                                                           Instance.vm_state != VmState.DELETED.value)):
            why = orphaned(session, inst, task_timeout=task_timeout, api_started_at=api_started_at, now=now,
                           workflows=workflows)
            if not why:
                continue
            task = TaskState(inst.task_state)
            values = {"fault": f"{why}; node {inst.node}"[:1000]} if task in OPERATION_TASKS else None
            set_task_state(session, inst.id, task, None, reason=f"reconciled: {why}", values=values)
            done.append(Repair(inst.id, task.value, inst.vm_state, why))
        return done
    try:
        repairs = db.run_sync(repair)
    except Exception as exc:            # a concurrent change (409) or the database: next pass
        LOG.info("reconcile: bare-metal servers not repaired: %s", exc)
        return []
    for r in repairs:
        LOG.warning("reconcile: bare-metal server %s repaired: %s -> task_state None", r.server_id, r.reason)
    return repairs
