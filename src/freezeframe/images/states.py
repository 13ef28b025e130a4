"""The image state machine: Glance's states, one table, one transition function."""

from __future__ import annotations

import collections
import enum
import logging
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from freezeframe.common import errors
from freezeframe.common.timeutil import utcnow
from freezeframe.images.model import Image

LOG = logging.getLogger(__name__)


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

# How many transitions of each kind this process made (exposed on /healthcheck?detailed).
COUNTS: collections.Counter[str] = collections.Counter()


def allowed(frm: str, to: str) -> bool:
    return (ImageStatus(frm), ImageStatus(to)) in TRANSITIONS


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
    gets :class:`InvalidState` (409). The caller commits the session.
    """
    if (frm, to) not in TRANSITIONS:
        raise errors.InvalidState(f"Image status transition from {frm} to {to} is not allowed")
    now = utcnow()
    stmt = update(Image).where(Image.id == image_id, Image.status == frm.value)
    if upload_id is not None:
        stmt = stmt.where(Image.upload_id == upload_id)
    result = session.execute(
        stmt.values(status=to.value, status_changed_at=now, updated_at=now, **(values or {}))
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        current = session.get(Image, image_id, populate_existing=True)
        if current is None:
            raise errors.NotFound(f"No image found with ID {image_id}")
        if current.status == frm.value:
            raise errors.InvalidState(f"Image {image_id} is being changed by another request")
        raise errors.InvalidState(
            f"Image status transition from {current.status} to {to} is not allowed"
        )
    COUNTS[f"{frm}->{to}"] += 1
    LOG.info("image %s: %s -> %s (%s)", image_id, frm, to, reason)
