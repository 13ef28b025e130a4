"""What a snapshot (or backup) workflow asks of the compute service, in process.

A workflow writes no compute table itself: the server's task_state (Nova's words, through
``compute/states.py``), its instance action events (os-instance-actions) and what it reads of the
server (its domain, its root disk, its host) go through these functions. Each takes the
caller's session, so the workflow's own move and the server's change commit together — in the
workflow's fenced transaction (a conductor that lost the workflow commits neither).

The server is looked up for the workflow's user (``actor``): their project, and the compute
policy of the action they asked for (createImage / createBackup), as for their own API call.
The hypervisor a workflow drives is the one ``driver_for`` gives for the server's host.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from freezeframe.common import errors
from freezeframe.common.context import Actor, RequestContext
from freezeframe.common.policy import Policy
from freezeframe.common.timeutil import utcnow
from freezeframe.compute.drivers.base import VirtDriver
from freezeframe.compute.hostside import Hosts
from freezeframe.compute.model import Instance, InstanceAction, InstanceActionEvent
from freezeframe.compute.states import TaskState, set_task_state

ACTIONS = {"snapshot": "os_compute_api:servers:create_image", "backup": "os_compute_api:os-create-backup"}
SNAPSHOT_TASKS = ("image_",)      # the task_states a snapshot workflow owns start so


@dataclass(frozen=True)
class SnapshotTarget:
    """The server a snapshot is of, as the workflow needs it."""
    id: str
    domain_name: str
    root_target: str
    host: str | None
    project_id: str | None


class SnapshotHooks:
    def __init__(self, hosts: Hosts | VirtDriver, policy: Policy | None = None) -> None:
        # each server's host (hostside.Hosts); a bare driver: every server is on it (tests)
        self.hosts = hosts
        self.policy = policy

    def driver_for(self, host: str | None) -> VirtDriver:
        """The virt driver of ``host``: this process's, or that host's over its host API (a
        Conflict when the host is down: the step fails and is retried or reverted)."""
        if isinstance(self.hosts, VirtDriver):
            return self.hosts
        return self.hosts.get(host).driver

    def target(self, session: Session, actor: Actor, server_id: str, kind: str, *,
               authorize: bool = True) -> SnapshotTarget:
        """The server, if the workflow's user may still snapshot it (reverts skip the check:
        they only undo what the workflow did)."""
        inst = session.get(Instance, server_id)
        if inst is None:
            raise errors.NotFound(f"Instance {server_id} could not be found.")
        if authorize:
            if not ("admin" in actor.roles or actor.project_id == inst.project_id):
                raise errors.NotFound(f"Instance {server_id} could not be found.")
            if self.policy is not None:
                self.policy.authorize(RequestContext.acting_for(actor), ACTIONS.get(kind, ACTIONS["snapshot"]),
                                      {"project_id": inst.project_id})
        return SnapshotTarget(inst.id, inst.domain_name, inst.root_target, inst.host, inst.project_id)

    # -- the snapshot's progress on the server ----------------------------------------------

    def started(self, session: Session, server_id: str, workflow_id: str, kind: str) -> None:
        """The point in time is being taken: task_state image_snapshot (a backup stays in
        image_backup), the action's events begin."""
        if kind == "snapshot":
            _advance(session, server_id, TaskState.IMAGE_SNAPSHOT, (TaskState.IMAGE_SNAPSHOT_PENDING,))
        _event(session, workflow_id, "conductor_snapshot_instance")
        _event(session, workflow_id, "local_snapshot")

    def point_in_time_taken(self, session: Session, server_id: str, workflow_id: str, *, quiesced: bool,
                            frozen_seconds: float) -> None:
        _advance(session, server_id, TaskState.IMAGE_PENDING_UPLOAD, (TaskState.IMAGE_SNAPSHOT, TaskState.IMAGE_BACKUP))
        _event(session, workflow_id, "local_snapshot", finish=True, result="Success",
               details=json.dumps({"quiesced": quiesced, "frozen_seconds": frozen_seconds}))

    def upload_started(self, session: Session, server_id: str, workflow_id: str) -> None:
        _advance(session, server_id, TaskState.IMAGE_UPLOADING, (TaskState.IMAGE_PENDING_UPLOAD,))
        _event(session, workflow_id, "upload_image")

    def upload_finished(self, session: Session, workflow_id: str) -> None:
        _event(session, workflow_id, "upload_image", finish=True, result="Success")

    def finished(self, session: Session, server_id: str, workflow_id: str) -> None:
        """Done: task_state None (vm_state untouched), the action ends in success."""
        inst = session.get(Instance, server_id)
        if inst is not None and inst.task_state is not None:
            set_task_state(session, server_id, TaskState(inst.task_state), None, reason="snapshot done")
        _event(session, workflow_id, "conductor_snapshot_instance", finish=True, result="Success")

    def reverted(self, session: Session, server_id: str, workflow_id: str, reason: str, *,
                 clear_task_state: bool = True) -> None:
        """The snapshot was undone: task_state None with the fault recorded (vm_state untouched)
        — unless another snapshot of the server owns the task_state by now — and the action
        ends in error."""
        inst = session.get(Instance, server_id)
        if (clear_task_state and inst is not None and inst.task_state is not None
                and inst.task_state.startswith(SNAPSHOT_TASKS)):
            set_task_state(session, server_id, TaskState(inst.task_state), None, reason="snapshot workflow reverted",
                           values={"fault": reason[:1000]})
        _event(session, workflow_id, "conductor_snapshot_instance", finish=True, result="Error", details=reason)

    def local_snapshot_details(self, session: Session, workflow_id: str) -> dict[str, Any]:
        """What the finished local_snapshot event recorded (quiesced, frozen_seconds)."""
        action = session.query(InstanceAction).filter_by(workflow_id=workflow_id).first()
        row = action and (session.query(InstanceActionEvent).filter_by(action_id=action.id, event="local_snapshot")
                          .order_by(InstanceActionEvent.id.desc()).first())
        try:
            return json.loads(row.details) if row is not None and row.details else {}
        except ValueError:
            return {}


def _advance(session: Session, server_id: str, to: TaskState, allowed: tuple[TaskState, ...]) -> None:
    inst = session.get(Instance, server_id)
    current = TaskState(inst.task_state) if inst.task_state else None
    if current == to:
        return
    if current in allowed:
        set_task_state(session, server_id, current, to, reason="snapshot workflow")


def _event(session: Session, workflow_id: str, event: str, *, finish: bool = False, result: str | None = None,
           details: str | None = None) -> None:
    """Record an instance-action event (os-instance-actions) for the workflow's action."""
    action = session.query(InstanceAction).filter_by(workflow_id=workflow_id).first()
    if action is None:
        return
    row = (session.query(InstanceActionEvent).filter_by(action_id=action.id, event=event)
           .order_by(InstanceActionEvent.id.desc()).first())
    if row is None or (row.finish_time is not None and not finish):
        row = InstanceActionEvent(action_id=action.id, event=event, start_time=utcnow())
        session.add(row)
    if finish:
        row.finish_time, row.result, row.details = utcnow(), result, details
        if event == "conductor_snapshot_instance":
            action.finish_time = row.finish_time
            if result != "Success":
                action.message = "Error"
