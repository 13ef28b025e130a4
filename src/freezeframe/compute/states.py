"""Server states with Nova's words: vm_state and task_state, one table each, one transition().

A snapshot never changes vm_state; it walks task_state through
``image_snapshot_pending -> image_snapshot -> image_pending_upload -> image_uploading -> None``
(backup: ``image_backup -> image_pending_upload -> image_uploading -> None``) and, whatever
happens, ends at None with vm_state as it was — never ERROR, never stuck.
"""

from __future__ import annotations

import collections
import enum
import logging
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from freezeframe.common import errors
from freezeframe.common.timeutil import utcnow

LOG = logging.getLogger(__name__)


class VmState(enum.StrEnum):
    BUILDING = "building"
    ACTIVE = "active"
    STOPPED = "stopped"
    PAUSED = "paused"
    SUSPENDED = "suspended"
    ERROR = "error"
    DELETED = "deleted"


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

COUNTS: collections.Counter[str] = collections.Counter()


def set_task_state(session: Session, instance_id: str, frm: TaskState | None, to: TaskState | None, *,
                   reason: str, values: dict[str, Any] | None = None) -> None:
    """Compare-and-set task_state; a concurrent task makes this a 409 (Nova's
    'Cannot ... while it is in task_state ...')."""
    from freezeframe.compute.model import Instance

    if (frm, to) not in TASK_TRANSITIONS:
        raise errors.InvalidState(f"Server task_state transition from {frm} to {to} is not allowed")
    cond = Instance.task_state.is_(None) if frm is None else Instance.task_state == frm.value
    result = session.execute(update(Instance).where(Instance.id == instance_id, cond)
                             .values(task_state=to.value if to else None, updated_at=utcnow(), **(values or {}))
                             .execution_options(synchronize_session=False))
    if result.rowcount != 1:
        current = session.get(Instance, instance_id, populate_existing=True)
        if current is None:
            raise errors.NotFound(f"Server {instance_id} could not be found.")
        raise errors.Conflict(f"Cannot change server {instance_id} while it is in task_state "
                              f"{current.task_state}")
    COUNTS[f"{frm}->{to}"] += 1
    LOG.info("server %s: task_state %s -> %s (%s)", instance_id, frm, to, reason)
