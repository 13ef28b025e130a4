"""The image state machine: Glance's statuses and table, declared on the one mechanism
(``freezeframe.common.statemachine``)."""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy.orm import Session

from freezeframe.common.statemachine import Machine
from freezeframe.images.model import Image


class ImageStatus(enum.StrEnum):
    QUEUED = "queued"
    SAVING = "saving"
    UPLOADING = "uploading"
    IMPORTING = "importing"
    ACTIVE = "active"
    KILLED = "killed"
    DEACTIVATED = "deactivated"
    PENDING_DELETE = "pending_delete"
    DELETED = "deleted"


S = ImageStatus

# Allowed (from, to) pairs. Glance's table (reference/openstack-facts.md) plus the marked
# Freezeframe extensions, which let a giving-up workflow or the reaper kill a stuck image.
TRANSITIONS: frozenset[tuple[ImageStatus, ImageStatus]] = frozenset({
    (S.QUEUED, S.SAVING),          # PUT file starts
    (S.QUEUED, S.UPLOADING),       # PUT stage starts
    (S.QUEUED, S.IMPORTING),       # import of already-staged data
    (S.QUEUED, S.ACTIVE),          # a zero-byte image activated without data (Nova's volume-backed snapshot)
    (S.QUEUED, S.DELETED),
    (S.QUEUED, S.KILLED),          # extension: reaper / owning workflow gave up before any data
    (S.SAVING, S.ACTIVE),          # upload finished and verified
    (S.SAVING, S.KILLED),          # upload stalled past its timeout, or its workflow gave up
    (S.SAVING, S.DELETED),
    (S.SAVING, S.QUEUED),          # upload failed: back to queued so the owner can retry
    (S.UPLOADING, S.IMPORTING),    # POST import of staged data
    (S.UPLOADING, S.QUEUED),       # staging failed
    (S.UPLOADING, S.DELETED),
    (S.UPLOADING, S.KILLED),       # extension: stale staging reaped
    (S.IMPORTING, S.ACTIVE),
    (S.IMPORTING, S.DELETED),
    (S.IMPORTING, S.QUEUED),       # import failed
    (S.IMPORTING, S.KILLED),       # extension: import stuck past its timeout
    (S.ACTIVE, S.PENDING_DELETE),
    (S.ACTIVE, S.DELETED),
    (S.ACTIVE, S.DEACTIVATED),
    (S.KILLED, S.DELETED),
    (S.PENDING_DELETE, S.DELETED),
    (S.PENDING_DELETE, S.ACTIVE),
    (S.DEACTIVATED, S.ACTIVE),
    (S.DEACTIVATED, S.DELETED),
})

IMAGE: Machine[ImageStatus] = Machine(
    "image", ImageStatus, TRANSITIONS, table=Image.__table__, column="status", changed_at="status_changed_at",
    terminal={S.DELETED}, label="Image status", noun="Image",
    not_found="No image found with ID {id}")

# How many transitions of each kind this process made (exposed on /healthcheck?detailed).
COUNTS = IMAGE.counts


def allowed(frm: str, to: str) -> bool:
    return IMAGE.allowed(frm, to)


def transition(
    session: Session,
    image_id: str,
    frm: ImageStatus,
    to: ImageStatus,
    *,
    reason: str,
    upload_id: str | None = None,
    values: dict[str, Any] | None = None,
) -> None:
    """Move one image from ``frm`` to ``to``, atomically.

    The change is a compare-and-set on the row (``WHERE status = frm`` and, for the upload
    that owns the image, ``upload_id``), so of two racing requests exactly one wins; the loser
    gets :class:`InvalidState` (409; ``LostRace``). The caller commits the session.
    """
    IMAGE.transition(session, image_id, frm, to, reason=reason, values=values,
                     where={"upload_id": upload_id} if upload_id is not None else None)
