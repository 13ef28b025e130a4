"""The reaper (seed 001): no image stays stuck in queued/saving, killed images go away.

Each pass:
- kills ``saving``/``uploading``/``importing`` images whose upload made no progress for
  ``saving_timeout`` seconds (their partial data is removed by the store's partial sweep);
- kills ``queued`` images older than ``queued_timeout`` whose owning workflow is not alive;
- deletes ``killed`` images (record and data) ``killed_grace`` seconds after they were killed;
- removes partial files of uploads that no image record owns any more and that nobody wrote
  for ``saving_timeout`` (left by a crashed process, or by an upload the reaper just killed).

Every action is logged and counted. An upload that is making progress is never touched: its
``upload_progress_at`` is recent, and the kill is a compare-and-set on that very upload.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
from typing import Callable

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from freezeframe.common import errors
from freezeframe.common.pools import BoundedPool
from freezeframe.common.timeutil import utcnow
from freezeframe.db.session import Database
from freezeframe.images.drivers.base import Store
from freezeframe.images.model import Image, ImageProperty
from freezeframe.images.schema import WORKFLOW_PREFIX
from freezeframe.images.states import ImageStatus, transition
from freezeframe.settings import ReaperSettings

LOG = logging.getLogger(__name__)
OWNER_PROPERTY = WORKFLOW_PREFIX + "workflow_id"
BUSY = (ImageStatus.SAVING, ImageStatus.UPLOADING, ImageStatus.IMPORTING)

# Given a workflow id, is the conductor running it alive? Issue 3's conductor plugs in here.
OwnerAlive = Callable[[str], bool]


def no_live_owners(_workflow_id: str) -> bool:
    return False


class Reaper:
    def __init__(self, db: Database, store: Store, settings: ReaperSettings,
                 owner_alive: OwnerAlive = no_live_owners) -> None:
        self.db = db
        self.store = store
        self.settings = settings
        self.owner_alive = owner_alive
        self.counts: collections.Counter[str] = collections.Counter()
        self._task: asyncio.Task | None = None

    def reap_once(self, now: dt.datetime | None = None) -> dict[str, int]:
        """One pass, synchronously (run it in a thread). Returns what it did."""
        now = now or utcnow()
        done = collections.Counter()
        stalled_before = now - dt.timedelta(seconds=self.settings.saving_timeout)
        queued_before = now - dt.timedelta(seconds=self.settings.queued_timeout)
        killed_before = now - dt.timedelta(seconds=self.settings.killed_grace)

        def candidates(session: Session) -> tuple[list, list, list]:
            stalled = session.execute(
                select(Image.id, Image.status, Image.upload_id).where(
                    Image.status.in_([s.value for s in BUSY]),
                    or_(Image.upload_progress_at.is_(None), Image.upload_progress_at < stalled_before),
                    Image.status_changed_at < stalled_before,
                )).all()
            queued = session.execute(
                select(Image.id, ImageProperty.value)
                .outerjoin(ImageProperty, (ImageProperty.image_id == Image.id) & (ImageProperty.name == OWNER_PROPERTY))
                .where(Image.status == ImageStatus.QUEUED.value, Image.status_changed_at < queued_before)
            ).all()
            killed = session.execute(
                select(Image.id, Image.store_key).where(Image.status == ImageStatus.KILLED.value,
                                                        Image.status_changed_at < killed_before)).all()
            return stalled, queued, killed

        stalled, queued, killed = self.db.run_sync(candidates)
        for image_id, status, upload_id in stalled:
            if self._kill(image_id, ImageStatus(status), upload_id,
                          f"no upload progress for {self.settings.saving_timeout:.0f}s"):
                done["killed_stalled"] += 1
        for image_id, owner in queued:
            if owner and self._alive(owner):
                continue
            reason = (f"queued for over {self.settings.queued_timeout:.0f}s"
                      + (f"; owning workflow {owner} is not alive" if owner else " with no owning workflow"))
            if self._kill(image_id, ImageStatus.QUEUED, None, reason):
                done["killed_queued"] += 1
        for image_id, key in killed:
            if self._delete(image_id, key):
                done["deleted_killed"] += 1
        live = self.db.run_sync(lambda s: set(s.scalars(select(Image.upload_id).where(Image.upload_id.is_not(None)))))
        partials = self.store.cleanup_partials(self.settings.saving_timeout, live)
        if partials:
            LOG.info("reaper: removed %d abandoned partial upload files", partials)
            done["partials_removed"] += partials
        self.counts.update(done)
        self.db.metrics.reaped("image", done)
        return dict(done)

    def _alive(self, workflow_id: str) -> bool:
        try:
            return self.owner_alive(workflow_id)
        except Exception as exc:  # unknown liveness: leave the image alone this pass
            LOG.warning("reaper: liveness of workflow %s unknown (%s); skipping its image", workflow_id, exc)
            return True

    def _kill(self, image_id: str, frm: ImageStatus, upload_id: str | None, reason: str) -> bool:
        def kill(session: Session) -> None:
            transition(session, image_id, frm, ImageStatus.KILLED, reason=f"reaper: {reason}",
                       upload_id=upload_id,
                       values=dict(upload_id=None, upload_progress_at=None, upload_bytes=None, staged=None))
        try:
            self.db.run_sync(kill)
        except (errors.NotFound, errors.InvalidState):
            return False  # it moved on (progress, completion, deletion) since we looked
        self.store.delete(f"staging/{image_id}")
        LOG.warning("reaper: image %s killed (%s -> killed): %s", image_id, frm, reason)
        return True

    def _delete(self, image_id: str, key: str | None) -> bool:
        def remove(session: Session) -> None:
            transition(session, image_id, ImageStatus.KILLED, ImageStatus.DELETED,
                       reason=f"reaper: killed for over {self.settings.killed_grace:.0f}s")
            session.execute(delete(Image).where(Image.id == image_id))
        try:
            self.db.run_sync(remove)
        except (errors.NotFound, errors.InvalidState):
            return False
        if key:
            self.store.delete(key)
        LOG.warning("reaper: killed image %s deleted with its data", image_id)
        return True

    # -- the periodic task in the serve process ---------------------------------------------

    def start(self) -> None:
        if self.settings.enabled and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="image-reaper")

    async def _loop(self) -> None:
        # A thread of its own: never the loop's default executor, never a request pool.
        pool = BoundedPool("reaper", workers=1, queue=0, serves_requests=False)
        try:
            await self._passes(pool)
        finally:
            pool.shutdown(wait=False)

    async def _passes(self, pool: BoundedPool) -> None:
        while True:
            try:
                done = await pool.run(self.reap_once, wait=self.settings.interval)
                if done:
                    LOG.info("reaper pass: %s", done)
            except Exception:
                LOG.exception("reaper pass failed; retrying in %.0fs", self.settings.interval)
            await asyncio.sleep(self.settings.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
