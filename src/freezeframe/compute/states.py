"""Server states with Nova's words: vm_state and task_state, one table each, declared on the one
mechanism (``freezeframe.common.statemachine``).

A snapshot never changes vm_state; it walks task_state through
``image_snapshot_pending -> image_snapshot -> image_pending_upload -> image_uploading -> None``
(backup: ``image_backup -> image_pending_upload -> image_uploading -> None``) and, whatever
happens, ends at None with vm_state as it was — never ERROR, never stuck.

vm_state moves are the ones Nova's compute manager makes between the vm_states we use
(``nova/compute/vm_states.py``; the diagram of Nova's ``doc/source/reference/vm-states.rst``:
"All states are allowed to transition to DELETED and ERROR"). Nothing leaves ``deleted``.
"""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy.orm import Session

from freezeframe.common.statemachine import Machine
from freezeframe.compute.model import Instance


class VmState(enum.StrEnum):
    BUILDING = "building"
    ACTIVE = "active"
    STOPPED = "stopped"
    PAUSED = "paused"
    SUSPENDED = "suspended"
    ERROR = "error"
    DELETED = "deleted"


# The vm_states a snapshot may be taken in (Nova's createImage rule).
SNAPSHOTTABLE = (VmState.ACTIVE, VmState.STOPPED, VmState.PAUSED, VmState.SUSPENDED)


class TaskState(enum.StrEnum):
    SPAWNING = "spawning"
    POWERING_ON = "powering-on"
    POWERING_OFF = "powering-off"
    DELETING = "deleting"
    IMAGE_SNAPSHOT_PENDING = "image_snapshot_pending"
    IMAGE_SNAPSHOT = "image_snapshot"
    IMAGE_BACKUP = "image_backup"
    IMAGE_PENDING_UPLOAD = "image_pending_upload"
    IMAGE_UPLOADING = "image_uploading"


V = VmState
_LIVE = tuple(v for v in VmState if v != V.DELETED)
VM_TRANSITIONS: frozenset[tuple[VmState, VmState]] = frozenset({
    (V.BUILDING, V.ACTIVE),             # spawned
    (V.ACTIVE, V.ACTIVE),               # reboot, rebuild (Nova); os-resetState to active
    (V.ACTIVE, V.STOPPED),              # stop; or the guest shut itself down (Nova's power-state sync)
    (V.ACTIVE, V.PAUSED),               # pause
    (V.ACTIVE, V.SUSPENDED),            # suspend
    (V.STOPPED, V.ACTIVE),              # start
    (V.STOPPED, V.STOPPED),             # rebuild of a stopped server (Nova)
    (V.PAUSED, V.ACTIVE),               # unpause
    (V.PAUSED, V.STOPPED),              # a paused guest shut down: Nova's power-state sync stops it
    (V.SUSPENDED, V.ACTIVE),            # resume
    (V.ERROR, V.ACTIVE),                # hard reboot, os-resetState to active
    (V.ERROR, V.STOPPED),               # stop is allowed from error
    *((v, V.ERROR) for v in _LIVE),     # a failed spawn or operation; os-resetState to error
    *((v, V.DELETED) for v in _LIVE),   # delete
})

T = TaskState
NONE = None
# task_state (from, to); None is "no task". Every task may be cleared back to None (the end of
# a task, or a revert after a fault).
TASK_TRANSITIONS: frozenset[tuple[TaskState | None, TaskState | None]] = frozenset({
    (NONE, T.SPAWNING), (NONE, T.POWERING_ON), (NONE, T.POWERING_OFF), (NONE, T.DELETING),
    (NONE, T.IMAGE_SNAPSHOT_PENDING),                  # createImage accepted
    (NONE, T.IMAGE_BACKUP),                            # createBackup accepted
    (T.IMAGE_SNAPSHOT_PENDING, T.IMAGE_SNAPSHOT),      # the conductor started the local snapshot
    (T.IMAGE_SNAPSHOT, T.IMAGE_PENDING_UPLOAD),        # point in time taken
    (T.IMAGE_BACKUP, T.IMAGE_PENDING_UPLOAD),
    (T.IMAGE_PENDING_UPLOAD, T.IMAGE_UPLOADING),
    # a resumed workflow repeats its current step
    (T.IMAGE_SNAPSHOT, T.IMAGE_SNAPSHOT), (T.IMAGE_BACKUP, T.IMAGE_BACKUP),
    (T.IMAGE_UPLOADING, T.IMAGE_UPLOADING), (T.IMAGE_PENDING_UPLOAD, T.IMAGE_PENDING_UPLOAD),
    (T.SPAWNING, T.SPAWNING),
    *((t, NONE) for t in TaskState),                   # task done, or reverted
})

_SERVER = dict(table=Instance.__table__, changed_at="updated_at", touch=(), noun="Server",
               not_found="Instance {id} could not be found.")
VM_STATE: Machine[VmState] = Machine("vm_state", VmState, VM_TRANSITIONS, column="vm_state",
                                     terminal={V.DELETED}, label="Server vm_state", **_SERVER)
TASK_STATE: Machine[TaskState] = Machine("task_state", TaskState, TASK_TRANSITIONS, column="task_state",
                                         label="Server task_state", **_SERVER)
COUNTS = TASK_STATE.counts


def set_task_state(session: Session, instance_id: str, frm: TaskState | None, to: TaskState | None, *,
                   reason: str, vm_state: VmState | None = None, vm_from: VmState | None = None,
                   values: dict[str, Any] | None = None) -> None:
    """Compare-and-set task_state; a concurrent task makes this a 409. With ``vm_state``, the
    server's vm_state moves too, in the same transaction (``vm_from``: the vm_state it must be
    in; by default the one it is in now): the end of a spawn, a stop, a delete."""
    TASK_STATE.transition(session, instance_id, frm, to, reason=reason, values=values)
    if vm_state is not None:
        set_vm_state(session, instance_id, vm_state, frm=vm_from, reason=reason)


def set_vm_state(session: Session, instance_id: str, to: VmState, *, frm: VmState | None = None, reason: str,
                 values: dict[str, Any] | None = None) -> bool:
    """Compare-and-set vm_state from ``frm`` (default: the vm_state the server is in now) to
    ``to``; staying where it is is no move (False, nothing written)."""
    if frm is None:
        frm = VmState(VM_STATE.current(session, instance_id))
    if frm == to:
        return False
    VM_STATE.transition(session, instance_id, frm, to, reason=reason, values=values)
    return True
