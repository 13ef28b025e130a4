"""Volume, volume snapshot, attachment and compute-snapshot states, with Cinder's words: one
table each, declared on the one mechanism (``freezeframe.common.statemachine``).

A volume snapshot: ``creating -> available``, ``error``; ``deleting -> deleted``,
``error_deleting``. When compute takes it (seed 002, an attached volume on a driver that needs
assistance) each phase of compute's part is the ``compute_snapshot_status`` key of the
snapshot's admin metadata, on its own table (``COMPUTE``): ``requested`` (the volume manager
asked) -> ``running`` (compute took it; ``compute_progress`` is its real progress) -> ``done``
or ``error`` — never a magic '90%' in ``progress``.
"""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy.orm import Session

from freezeframe.common.statemachine import Machine
from freezeframe.volumes.model import SnapshotAdminMetadata, Volume, VolumeAttachment, VolumeSnapshot


class VolumeStatus(enum.StrEnum):
    CREATING = "creating"
    DOWNLOADING = "downloading"
    AVAILABLE = "available"
    RESERVED = "reserved"
    ATTACHING = "attaching"
    IN_USE = "in-use"
    DETACHING = "detaching"
    EXTENDING = "extending"
    UPLOADING = "uploading"
    DELETING = "deleting"
    DELETED = "deleted"
    ERROR = "error"
    ERROR_DELETING = "error_deleting"
    ERROR_EXTENDING = "error_extending"


V = VolumeStatus
# What an admin's os-reset_status may set (Cinder's volume reset checks the target only).
VOLUME_RESET_TO = (V.AVAILABLE, V.ERROR, V.ERROR_DELETING, V.IN_USE, V.RESERVED, V.ERROR_EXTENDING)
_LIVE_VOLUME = tuple(v for v in VolumeStatus if v != V.DELETED)
VOLUME_TRANSITIONS: frozenset[tuple[VolumeStatus, VolumeStatus]] = frozenset({
    (V.CREATING, V.AVAILABLE), (V.CREATING, V.DOWNLOADING), (V.DOWNLOADING, V.AVAILABLE),
    (V.CREATING, V.ERROR), (V.DOWNLOADING, V.ERROR),
    # attachments (the 3.27+ API): reserve, connect, complete; delete goes back
    (V.AVAILABLE, V.RESERVED), (V.AVAILABLE, V.ATTACHING), (V.RESERVED, V.ATTACHING),
    (V.ATTACHING, V.IN_USE), (V.RESERVED, V.IN_USE),
    (V.RESERVED, V.AVAILABLE), (V.ATTACHING, V.AVAILABLE), (V.IN_USE, V.AVAILABLE),
    (V.IN_USE, V.DETACHING), (V.DETACHING, V.AVAILABLE), (V.DETACHING, V.IN_USE),
    (V.AVAILABLE, V.EXTENDING), (V.EXTENDING, V.AVAILABLE), (V.EXTENDING, V.ERROR_EXTENDING),
    (V.AVAILABLE, V.UPLOADING), (V.IN_USE, V.UPLOADING),
    (V.UPLOADING, V.AVAILABLE), (V.UPLOADING, V.IN_USE),
    (V.AVAILABLE, V.DELETING), (V.ERROR, V.DELETING), (V.ERROR_DELETING, V.DELETING),
    (V.ERROR_EXTENDING, V.DELETING),
    (V.DELETING, V.DELETED), (V.DELETING, V.ERROR_DELETING),
    # an admin's os-force_delete: from anything but in-use and deleted
    *((v, V.DELETING) for v in _LIVE_VOLUME if v not in (V.IN_USE, V.DELETING)),
    # an admin's os-reset_status
    *((v, to) for v in _LIVE_VOLUME for to in VOLUME_RESET_TO if v != to),
})


class SnapshotStatus(enum.StrEnum):
    CREATING = "creating"
    AVAILABLE = "available"
    DELETING = "deleting"
    DELETED = "deleted"
    ERROR = "error"
    ERROR_DELETING = "error_deleting"


S = SnapshotStatus
SNAPSHOT_RESET_TO = (S.AVAILABLE, S.ERROR, S.ERROR_DELETING, S.CREATING, S.DELETING)
_LIVE_SNAPSHOT = tuple(s for s in SnapshotStatus if s != S.DELETED)
SNAPSHOT_TRANSITIONS: frozenset[tuple[SnapshotStatus, SnapshotStatus]] = frozenset({
    (S.CREATING, S.AVAILABLE), (S.CREATING, S.ERROR),
    (S.AVAILABLE, S.DELETING), (S.ERROR, S.DELETING), (S.ERROR_DELETING, S.DELETING),
    (S.DELETING, S.DELETED), (S.DELETING, S.ERROR_DELETING),
    (S.DELETING, S.AVAILABLE),          # the driver found it busy (SnapshotIsBusy): back, as Cinder
    *((s, S.DELETING) for s in _LIVE_SNAPSHOT if s != S.DELETING),    # os-force_delete
    *((s, to) for s in _LIVE_SNAPSHOT for to in SNAPSHOT_RESET_TO if s != to),   # os-reset_status
})


class AttachStatus(enum.StrEnum):
    RESERVED = "reserved"
    ATTACHING = "attaching"
    ATTACHED = "attached"
    DETACHING = "detaching"
    DETACHED = "detached"
    ERROR_ATTACHING = "error_attaching"


A = AttachStatus
ATTACH_TRANSITIONS: frozenset[tuple[AttachStatus, AttachStatus]] = frozenset({
    (A.RESERVED, A.ATTACHING), (A.RESERVED, A.ATTACHED), (A.ATTACHING, A.ATTACHED),
    (A.ATTACHING, A.ATTACHING),          # a second update (new connector) before complete
    (A.ATTACHED, A.ATTACHED),            # connection info refreshed (after an online snapshot)
    (A.ATTACHED, A.DETACHING), (A.DETACHING, A.ATTACHED),
    (A.RESERVED, A.ERROR_ATTACHING), (A.ATTACHING, A.ERROR_ATTACHING),
    *((a, A.DETACHED) for a in AttachStatus if a != A.DETACHED),
})


class ComputeSnapshotStatus(enum.StrEnum):
    """Compute's part of an assisted snapshot create or delete (seed 002)."""
    REQUESTED = "requested"       # the volume manager asked compute (begin done)
    RUNNING = "running"           # compute took it; compute_progress moves
    DONE = "done"                 # compute's part finished: the manager completes
    ERROR = "error"               # compute failed, or never answered in time


C = ComputeSnapshotStatus
COMPUTE_TRANSITIONS: frozenset[tuple[ComputeSnapshotStatus, ComputeSnapshotStatus]] = frozenset({
    (C.REQUESTED, C.RUNNING), (C.REQUESTED, C.DONE), (C.REQUESTED, C.ERROR),
    (C.RUNNING, C.RUNNING),       # progress
    (C.RUNNING, C.DONE), (C.RUNNING, C.ERROR),
    # the next operation on the same snapshot (a delete after the create) asks again
    (C.DONE, C.REQUESTED), (C.ERROR, C.REQUESTED),
})
COMPUTE_STATUS_KEY = "compute_snapshot_status"

VOLUME: Machine[VolumeStatus] = Machine(
    "volume", VolumeStatus, VOLUME_TRANSITIONS, table=Volume.__table__, column="status",
    changed_at="status_changed_at", terminal={V.DELETED}, label="Volume status", noun="Volume",
    not_found="Volume {id} could not be found.")
SNAPSHOT: Machine[SnapshotStatus] = Machine(
    "volume_snapshot", SnapshotStatus, SNAPSHOT_TRANSITIONS, table=VolumeSnapshot.__table__, column="status",
    changed_at="status_changed_at", terminal={S.DELETED}, label="Snapshot status", noun="Snapshot",
    not_found="Snapshot {id} could not be found.")
ATTACHMENT: Machine[AttachStatus] = Machine(
    "volume_attachment", AttachStatus, ATTACH_TRANSITIONS, table=VolumeAttachment.__table__,
    column="attach_status", terminal={A.DETACHED}, label="Attachment status", noun="Attachment",
    not_found="Volume attachment {id} could not be found.")
# Keyed by snapshot id, on the row whose key is compute_snapshot_status (``where``).
COMPUTE: Machine[ComputeSnapshotStatus] = Machine(
    "compute_snapshot_status", ComputeSnapshotStatus, COMPUTE_TRANSITIONS,
    table=SnapshotAdminMetadata.__table__, column="value", key="snapshot_id",
    label="compute_snapshot_status", noun="Snapshot", not_found="Snapshot {id} has no compute_snapshot_status.")


def set_compute_status(session: Session, snapshot_id: str, frm: ComputeSnapshotStatus | None,
                       to: ComputeSnapshotStatus, *, reason: str = "", values: dict[str, Any] | None = None) -> None:
    """Compare-and-set the snapshot's compute_snapshot_status (``frm`` None: it has none yet,
    the row is made at ``to``)."""
    if frm is None:
        from freezeframe.volumes.model import SnapshotAdminMetadata as Row
        session.add(Row(snapshot_id=snapshot_id, key=COMPUTE_STATUS_KEY, value=str(to)))
        session.flush()
        return
    COMPUTE.transition(session, snapshot_id, frm, to, reason=reason, where={"key": COMPUTE_STATUS_KEY},
                       values=values)
