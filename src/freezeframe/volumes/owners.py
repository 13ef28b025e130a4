"""Snapshots owned by an image (seed 003): when the image goes, its volume snapshots go.

An instance snapshot's image references the volume snapshots it made in its
``block_device_mapping``; each such snapshot names it as ``owner_image_id`` and may not be
deleted on its own (400, naming the image). Deleting the image — by a user, or by a backup
rotation — is the image service's business and it knows nothing of volumes, so the volume
service looks: ``OwnerImageSweep`` is a reconcile hook that every conductor scan calls. Each
scan it checks a few owned snapshots (``BATCH``, those checked longest ago first, each backing
off while its image lives) by showing the owner image as the snapshot's user; an image that is
gone (404, or deleted/killed) has its snapshots deleted through the normal path — the owner
cleared and the snapshot moved to ``deleting`` in one transaction with the
``volume-snapshot-delete`` workflow's record (assisted by compute when the volume is attached).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from freezeframe.common import errors
from freezeframe.common.context import Actor
from freezeframe.conductor import runtime
from freezeframe.conductor.registry import Scan
from freezeframe.images.client import GlanceError
from freezeframe.volumes.image_requests import GONE
from freezeframe.volumes.model import Volume, VolumeSnapshot
from freezeframe.volumes.states import SNAPSHOT, SnapshotStatus as S, VolumeStatus as V

LOG = logging.getLogger(__name__)
BATCH = 20                  # owner images looked at per scan, at most
FIRST_BACKOFF = 2.0         # seconds before a snapshot whose image lives is looked at again ...
MAX_BACKOFF = 60.0          # ... doubling up to this
DELETABLE = (S.AVAILABLE, S.ERROR)


@dataclass
class _Seen:
    checked_at: float = -math.inf
    next_at: float = 0.0
    backoff: float = FIRST_BACKOFF


class NotNow(Exception):
    """The snapshot changed since it was looked at (or its volume is busy): next scan."""


class OwnerImageSweep:
    def __init__(self, *, batch: int = BATCH, clock: Callable[[], float] = time.monotonic) -> None:
        self.batch = batch
        self.clock = clock
        self._seen: dict[str, _Seen] = {}

    def __call__(self, scan: Scan) -> list[str]:
        rt = runtime.current()
        try:
            manager = rt.service("volume")
        except RuntimeError:
            return []               # this process runs no volume service
        rows = rt.db.run_sync(_owned)
        self._seen = {r.id: self._seen.get(r.id, _Seen()) for r in rows}     # forget the ones gone
        now = self.clock()
        due = sorted((r for r in rows if self._seen[r.id].next_at <= now),
                     key=lambda r: (self._seen[r.id].checked_at, r.created_at))
        deleted = []
        for row in due[:self.batch]:
            seen = self._seen[row.id]
            seen.checked_at = now
            if self._owner_gone(manager, row):
                try:
                    deleted.append(self._delete(rt, scan, row))
                    continue
                except NotNow as exc:
                    LOG.info("snapshot %s: its owner image %s is gone; not deleted yet: %s", row.id,
                             row.owner_image_id, exc)
            seen.next_at = now + seen.backoff
            seen.backoff = min(seen.backoff * 2, MAX_BACKOFF)
        return deleted

    def _owner_gone(self, manager: Any, row: Any) -> bool:
        """Is the snapshot's owner image gone, as the snapshot's user sees it? Unknown (the image
        service away, refusing) is not gone."""
        actor = Actor(row.user_id or "unknown", row.project_id, frozenset({"member", "reader"}))
        try:
            with manager.images(actor) as images:
                image = images.show(row.owner_image_id)
        except GlanceError as exc:
            if exc.status == 404:
                return True
            LOG.warning("snapshot %s: could not look at its owner image %s: %s", row.id, row.owner_image_id, exc)
            return False
        except errors.FreezeframeError:
            return False            # no image service wired
        return image.status in GONE

    def _delete(self, rt: Any, scan: Scan, row: Any) -> str:
        """The normal delete path: owner cleared and deleting, with the workflow's record."""
        if scan.workflows is None:
            raise NotNow("this conductor cannot submit work")
        from freezeframe.volumes.service import _no_chain_work
        volume_id, server_id = rt.db.run_sync(lambda s: (row.volume_id, _in_use_server(s, row.volume_id)))

        def mark(session: Session, _workflow_id: str) -> None:
            snap = session.get(VolumeSnapshot, row.id)
            if snap is None or snap.owner_image_id != row.owner_image_id or snap.status not in DELETABLE:
                raise NotNow("it changed meanwhile")
            if _in_use_server(session, volume_id) != server_id:
                raise NotNow("its volume was attached or detached meanwhile")
            try:
                _no_chain_work(session, volume_id, excluding=snap.id)
            except errors.Conflict as exc:
                raise NotNow(str(exc)) from None
            SNAPSHOT.transition(session, snap.id, snap.status, S.DELETING,
                                reason=f"its owner image {row.owner_image_id} is gone",
                                values={"owner_image_id": None})
        actor = Actor(row.user_id or "unknown", row.project_id, frozenset({"member", "reader"}))
        try:
            scan.workflows.submit("volume-snapshot-delete", "snapshot", row.id,
                                  {"server_id": server_id, "volume_id": volume_id}, actor, also=mark)
        except errors.FreezeframeError as exc:      # lost a race (another conductor's sweep)
            raise NotNow(str(exc)) from None
        LOG.info("snapshot %s: its owner image %s is gone: deleting it", row.id, row.owner_image_id)
        return row.id


def _in_use_server(session: Session, volume_id: str) -> str | None:
    from freezeframe.volumes.service import _server_of
    vol = session.get(Volume, volume_id)
    return _server_of(session, volume_id) if vol is not None and vol.status == V.IN_USE else None


def _owned(session: Session) -> list[Any]:
    return list(session.execute(
        select(VolumeSnapshot.id, VolumeSnapshot.volume_id, VolumeSnapshot.user_id, VolumeSnapshot.project_id,
               VolumeSnapshot.owner_image_id, VolumeSnapshot.created_at)
        .where(VolumeSnapshot.owner_image_id.is_not(None), VolumeSnapshot.status.in_([str(s) for s in DELETABLE]))
        .order_by(VolumeSnapshot.created_at)))
