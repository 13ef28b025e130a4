"""Image data: upload (PUT file), download, stage + import (glance-direct), import tasks.

An upload owns its image through a compare-and-set on ``upload_id``: of two concurrent
uploads exactly one moves the image to ``saving``; the other gets 409. Whatever stops an
upload (client gone, bad data, full disk, server shutting down) puts the image back to
``queued`` and removes the partial data, as Glance does, so the owner can simply retry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect

from freezeframe.common import errors
from freezeframe.common.context import RequestContext
from freezeframe.common.policy import Policy
from freezeframe.common.timeutil import utcnow
from freezeframe.db.session import Database
from freezeframe.images import queries
from freezeframe.images.drivers.base import Reader, Store
from freezeframe.images.model import Image, ImageTask
from freezeframe.images.pipeline import Pipeline, UploadResult
from freezeframe.images.service import check_owner
from freezeframe.images.states import ImageStatus, transition
from freezeframe.images.views import task_view
from freezeframe.settings import ImageSettings

LOG = logging.getLogger(__name__)
IMPORT_METHODS = ("glance-direct",)
PARKED_IDLE_LIMIT = 600.0      # seconds a part-way upload keeps its hashes in memory for the next part
PARKED_MAX = 32                # part-way uploads kept in memory at once (the oldest is suspended)
# Clean-up after work already done (removing data) may wait this long for a store thread
# instead of failing at once with Busy and leaving the data behind.
CLEANUP_WAIT = 10.0


@dataclass(frozen=True)
class Download:
    size: int
    checksum: str | None
    reader: Reader | None  # None: the image has no data yet (204)


@dataclass(frozen=True)
class Resume:
    """A resumable upload (snapshot workflows): its id, the offset this request starts at, and
    whether this request ends the data (``final``) or is one part of it."""
    upload_id: str
    offset: int
    final: bool = True


@dataclass(frozen=True)
class _Target:
    """Where an upload goes: PUT file writes the image, PUT stage writes the staging area."""
    busy: ImageStatus
    key_prefix: str


_FILE = _Target(ImageStatus.SAVING, "")
_STAGE = _Target(ImageStatus.UPLOADING, "staging/")


class ImageData:
    def __init__(self, db: Database, store: Store, settings: ImageSettings, policy: Policy) -> None:
        self.db = db
        self.store = store
        self.settings = settings
        self.policy = policy
        self._background: set[asyncio.Task] = set()
        # Uploads sent in parts: between parts, the pipeline (hash state, open partial file)
        # waits here for the next part, so nothing is re-read; after a restart it is rebuilt
        # from the kept bytes instead.
        self._parked: dict[tuple[str, str], tuple[Pipeline, float]] = {}
        self._evictor: asyncio.Task | None = None

    # -- upload ------------------------------------------------------------------------------

    async def upload(self, ctx: RequestContext, image_id: str, body: AsyncIterator[bytes],
                     content_length: int | None, resume: Resume | None = None) -> int | None:
        """Receive the data; the image becomes active. A non-final part of a resumable upload
        returns the bytes kept so far instead (the image stays ``saving``)."""
        upload_id, pipeline = await self._begin(ctx, image_id, content_length, _FILE, resume)
        if resume is not None and not resume.final:
            return await self._receive_part(image_id, upload_id, pipeline, body, content_length)
        result = await self._receive(image_id, upload_id, pipeline, body, content_length, _FILE,
                                     resumable=resume is not None)
        values = dict(
            size=result.size, checksum=result.checksum, os_hash_algo=result.os_hash_algo,
            os_hash_value=result.os_hash_value, virtual_size=result.detected.virtual_size or result.size,
            store_key=image_id, upload_id=None, upload_progress_at=None, upload_bytes=None,
        )
        try:
            await self.db.run(lambda s: transition(s, image_id, ImageStatus.SAVING, ImageStatus.ACTIVE,
                                                   reason=f"upload of {result.size} bytes complete",
                                                   upload_id=upload_id, values=values))
        except (errors.NotFound, errors.InvalidState):
            # Deleted (or reaped) while we were uploading: the data must not outlive the record.
            await self.store.io.run(self._delete_if_orphan, image_id, wait=CLEANUP_WAIT)
            raise errors.Gone(f"Image {image_id} was deleted while its data was being uploaded") from None

    def _delete_if_orphan(self, image_id: str) -> None:
        def owned(session: Session) -> bool:
            image = session.get(Image, image_id)
            return image is not None and image.store_key == image_id
        if not self.db.run_sync(owned):
            self.store.delete(image_id)

    async def _begin(self, ctx: RequestContext, image_id: str, content_length: int | None,
                     target: _Target, resume: Resume | None = None) -> tuple[str, Pipeline]:
        if content_length is not None and content_length + (resume.offset if resume else 0) > self.settings.max_size:
            raise errors.TooLarge(
                f"Image size {content_length} exceeds the maximum of {self.settings.max_size} bytes"
            )
        if resume is not None and not ctx.is_service:
            raise errors.Forbidden("Resumable uploads are for the snapshot workflows only (role 'service')")
        upload_id = resume.upload_id if resume else str(uuid.uuid4())
        action = ("freezeframe:image:upload_part" if resume is not None else
                  "stage_image" if target is _STAGE else "upload_image")

        def begin(session: Session) -> Image:
            image = queries.get_visible(session, ctx, image_id)
            check_owner(self.policy, ctx, image, action)
            if resume is not None and image.status == target.busy and image.upload_id == upload_id:
                # The same resumable upload again (its next part, or its previous request died):
                # go on. Progress is recorded at most every progress_interval, not per part.
                now = utcnow()
                last = image.upload_progress_at
                if last is None or (now - last).total_seconds() >= self.settings.progress_interval:
                    image.upload_progress_at = now
                return image
            if image.status != ImageStatus.QUEUED:
                if image.status == target.busy:
                    raise errors.Conflict(f"Image {image_id} is already being uploaded by another request")
                raise errors.InvalidState(
                    f"Image status transition from {image.status} to {target.busy} is not allowed"
                )
            if not image.disk_format or not image.container_format:
                raise errors.Invalid(
                    "Properties disk_format and container_format must be set prior to uploading image data"
                )
            transition(session, image_id, ImageStatus.QUEUED, target.busy, reason=f"upload {upload_id} started",
                       values=dict(upload_id=upload_id, upload_progress_at=utcnow(), upload_bytes=0))
            return image

        image = await self.db.run(begin)
        await self._evict_parked()
        if resume is not None:
            parked = self._parked.pop((image_id, upload_id), None)
            if parked is not None:
                if parked[0].received == resume.offset:
                    return upload_id, parked[0]        # the next part: hashes and file as they were
                await parked[0].suspend()              # elsewhere: start again from what was kept
        offset = resume.offset if resume else None
        try:
            writer = await self.store.io.run(self.store.writer, target.key_prefix + image_id, upload_id, offset)
        except ValueError as exc:  # asked to resume past what was kept
            raise errors.Conflict(f"Cannot resume upload {upload_id}: {exc}") from None
        except errors.FreezeframeError:
            if resume is None:
                await self._revert(image_id, upload_id, target)
            raise
        pipeline = Pipeline(
            writer, hash_algo=self.settings.hash_algo, legacy_md5=self.settings.legacy_md5,
            chunk_size=self.settings.chunk_size, max_size=self.settings.max_size,
            disk_format=image.disk_format,
        )
        if offset:
            await pipeline.prime(offset)
        return upload_id, pipeline

    async def upload_offset(self, ctx: RequestContext, image_id: str, upload_id: str) -> int:
        """How many bytes a resumable upload has kept (where to resume from)."""
        if not ctx.is_service:
            raise errors.Forbidden("Resumable uploads are for the snapshot workflows only (role 'service')")

        def find(session: Session) -> Image:
            image = queries.get_visible(session, ctx, image_id)
            check_owner(self.policy, ctx, image, "freezeframe:image:upload_part")
            if image.upload_id != upload_id:
                raise errors.NotFound(f"Image {image_id} has no upload {upload_id} in progress")
            return image
        await self.db.run(find)
        return await self.store.io.run(self.store.kept, image_id, upload_id)

    async def discard_upload(self, ctx: RequestContext, image_id: str, upload_id: str) -> None:
        """Give up a resumable upload: what it kept is removed and the image is queued again
        (Glance's answer to a failed upload), ready for another upload — a bare-metal snapshot
        that is aborted leaves its pre-created image as it was given."""
        if not ctx.is_service:
            raise errors.Forbidden("Resumable uploads are for the snapshot workflows only (role 'service')")

        def find(session: Session) -> Image:
            image = queries.get_visible(session, ctx, image_id)
            check_owner(self.policy, ctx, image, "freezeframe:image:upload_part")
            if image.upload_id != upload_id:
                raise errors.NotFound(f"Image {image_id} has no upload {upload_id} in progress")
            return image
        await self.db.run(find)
        parked = self._parked.pop((image_id, upload_id), None)
        if parked is not None:
            await parked[0].abort()
        else:       # (kept by another process of the service: its partial data goes here)
            kept = await self.store.io.run(self.store.kept, _FILE.key_prefix + image_id, upload_id)
            if kept:
                await self.store.io.run(lambda: self.store.writer(_FILE.key_prefix + image_id, upload_id, kept).abort())
        await self._revert(image_id, upload_id, _FILE)

    async def _receive_part(self, image_id: str, upload_id: str, pipeline: Pipeline,
                            body: AsyncIterator[bytes], content_length: int | None) -> int:
        if content_length is None:
            raise errors.Invalid("A part of a resumable upload needs a Content-Length")
        kept = await self._receive(image_id, upload_id, pipeline, body, content_length, _FILE,
                                   resumable=True, final=False)
        previous = self._parked.pop((image_id, upload_id), None)
        if previous is not None and previous[0] is not pipeline:     # an overlapping request's
            await previous[0].suspend()
        self._parked[(image_id, upload_id)] = (pipeline, time.monotonic())
        await self._evict_parked()
        if self._evictor is None or self._evictor.done():
            self._evictor = asyncio.get_running_loop().create_task(self._evict_while_parked())
        return kept

    async def _evict_while_parked(self) -> None:
        """Evicts in time even when no other request comes (a cancelled snapshot sends no more)."""
        while self._parked:
            oldest = min(since for _p, since in self._parked.values())
            await asyncio.sleep(max(0.0, oldest + PARKED_IDLE_LIMIT - time.monotonic()) + 0.1)
            await self._evict_parked()

    async def _evict_parked(self) -> None:
        """Suspend part-way uploads idle too long, or the oldest beyond PARKED_MAX (cancelled
        snapshots never send their next part): their threads and files are released; a late
        next part still works, re-hashing the kept bytes from the store."""
        now = time.monotonic()
        by_age = sorted(self._parked.items(), key=lambda item: item[1][1])
        for i, (key, (idle, since)) in enumerate(by_age):
            if now - since > PARKED_IDLE_LIMIT or len(by_age) - i > PARKED_MAX:
                if self._parked.pop(key, None) is not None:
                    await idle.suspend()

    async def _receive(self, image_id: str, upload_id: str, pipeline: Pipeline, body: AsyncIterator[bytes],
                       content_length: int | None, target: _Target, resumable: bool = False,
                       final: bool = True) -> UploadResult | int:
        progress: asyncio.Task | None = None
        last = began = time.monotonic()
        start = pipeline.received
        try:
            async for chunk in body:
                await pipeline.feed(chunk)
                now = time.monotonic()
                if now - last >= self.settings.progress_interval and (progress is None or progress.done()):
                    last = now
                    progress = asyncio.create_task(self._record_progress(image_id, upload_id, pipeline.received))
            expected = content_length + start if content_length is not None else None
            if expected is not None and pipeline.received != expected:
                raise errors.Invalid(
                    f"Received {pipeline.received - start} bytes but Content-Length said {content_length}"
                )
            if not final:
                return await pipeline.checkpoint()
            return await pipeline.finish()
        except BaseException as exc:
            # A client that goes away mid-upload is an everyday event, not a fault: INFO.
            LOG.log(logging.INFO if isinstance(exc, ClientDisconnect) else logging.WARNING,
                    "upload %s of image %s failed after %d bytes: %s", upload_id, image_id,
                    pipeline.received, exc.__class__.__name__ + (f": {exc}" if str(exc) else ""))
            if resumable and not isinstance(exc, (errors.UnsupportedMediaType, errors.TooLarge)):
                kept = await asyncio.shield(pipeline.suspend())
                LOG.info("upload %s of image %s suspended: %d bytes kept for a resume", upload_id, image_id, kept)
                raise
            await asyncio.shield(self._cleanup(image_id, upload_id, pipeline, target))
            if isinstance(exc, errors.FreezeframeError) and not isinstance(exc, errors.Gone) \
                    and not await self._still_owned(image_id, upload_id, target):
                # Deleted or reaped under us: that, not the symptom we tripped over, is the answer.
                raise errors.Gone(f"Image {image_id} was deleted or killed while its data was being uploaded") from exc
            raise
        finally:
            self.db.metrics.transfer("upload", pipeline.received - start, time.monotonic() - began)
            if progress is not None:
                await asyncio.gather(progress, return_exceptions=True)

    async def _still_owned(self, image_id: str, upload_id: str, target: _Target) -> bool:
        def check(session: Session) -> bool:
            image = session.get(Image, image_id)
            # _revert has put an owned image back to queued by now; anything else means we lost it.
            return image is not None and image.status in (ImageStatus.QUEUED, target.busy)
        return await self.db.run(check)

    async def _cleanup(self, image_id: str, upload_id: str, pipeline: Pipeline, target: _Target) -> None:
        try:
            await pipeline.abort()
        finally:
            await self._revert(image_id, upload_id, target)

    async def _revert(self, image_id: str, upload_id: str, target: _Target) -> None:
        try:
            await self.db.run(lambda s: transition(
                s, image_id, target.busy, ImageStatus.QUEUED, reason=f"upload {upload_id} failed",
                upload_id=upload_id, values=dict(upload_id=None, upload_progress_at=None, upload_bytes=None)))
        except (errors.NotFound, errors.InvalidState):
            pass  # deleted or reaped meanwhile: nothing to put back

    async def _record_progress(self, image_id: str, upload_id: str, received: int) -> None:
        def record(session: Session) -> None:
            image = session.get(Image, image_id)
            if image is not None and image.upload_id == upload_id:
                image.upload_progress_at = utcnow()
                image.upload_bytes = received
        try:
            await self.db.run(record)
        except errors.FreezeframeError as exc:
            LOG.warning("could not record upload progress of %s: %s", image_id, exc)

    # -- download ----------------------------------------------------------------------------

    async def download(self, ctx: RequestContext, image_id: str) -> Download:
        self.policy.authorize(ctx, "download_image")

        def find(session: Session) -> Image:
            image = queries.get_visible(session, ctx, image_id)
            if image.status == ImageStatus.DEACTIVATED and not ctx.is_admin:
                raise errors.Forbidden("The requested image has been deactivated. Image data download is forbidden.")
            return image

        image = await self.db.run(find)
        if image.status not in (ImageStatus.ACTIVE, ImageStatus.DEACTIVATED) or not image.store_key:
            return Download(size=0, checksum=None, reader=None)
        try:
            reader = await self.store.io.run(self.store.reader, image.store_key)
        except KeyError:
            raise errors.BackendUnavailable(f"The data of image {image_id} is missing from the store") from None
        return Download(size=reader.size, checksum=image.checksum, reader=reader)

    # -- stage + import (glance-direct) ------------------------------------------------------

    async def stage(self, ctx: RequestContext, image_id: str, body: AsyncIterator[bytes],
                    content_length: int | None) -> None:
        upload_id, pipeline = await self._begin(ctx, image_id, content_length, _STAGE)
        result = await self._receive(image_id, upload_id, pipeline, body, content_length, _STAGE)
        staged = json.dumps(dict(size=result.size, checksum=result.checksum, os_hash_algo=result.os_hash_algo,
                                 os_hash_value=result.os_hash_value,
                                 virtual_size=result.detected.virtual_size or result.size))

        def done(session: Session) -> None:
            image = session.get(Image, image_id)
            if image is None or image.upload_id != upload_id or image.status != ImageStatus.UPLOADING:
                raise errors.Gone(f"Image {image_id} was deleted while its data was being staged")
            image.staged = staged
            image.size = result.size       # Glance shows a staged image's size before its import
            image.upload_id = None
            image.upload_progress_at = utcnow()
            image.updated_at = utcnow()

        try:
            await self.db.run(done)
        except errors.Gone:
            await self.store.io.run(self.store.delete, f"staging/{image_id}", wait=CLEANUP_WAIT)
            raise

    async def import_image(self, ctx: RequestContext, image_id: str, body: Any) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("method"), dict):
            raise errors.Invalid("The import request needs a 'method' object, e.g. {\"method\": {\"name\": \"glance-direct\"}}")
        name = body["method"].get("name")
        if name not in IMPORT_METHODS:
            raise errors.Invalid(f"Import method {name!r} is not available; available: {', '.join(IMPORT_METHODS)}")
        task_id = str(uuid.uuid4())

        def start(session: Session) -> None:
            image = queries.get_visible(session, ctx, image_id)
            check_owner(self.policy, ctx, image, "import_image")
            if image.status != ImageStatus.UPLOADING or image.staged is None:
                raise errors.Conflict(
                    f"Image {image_id} needs to be staged before the '{name}' import method can be used"
                    f" (status is {image.status})"
                )
            transition(session, image_id, ImageStatus.UPLOADING, ImageStatus.IMPORTING, reason=f"import task {task_id}")
            session.add(ImageTask(id=task_id, image_id=image_id, status="processing", owner=image.owner,
                                  input=json.dumps({"image_id": image_id, "import_req": body}),
                                  request_id=ctx.request_id, user_id=ctx.user_id))

        await self.db.run(start)
        task = asyncio.create_task(self._run_import(image_id, task_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run_import(self, image_id: str, task_id: str) -> None:
        try:
            image = await self.db.run(lambda s: s.get(Image, image_id))
            if image is None:
                raise errors.Gone("the image was deleted")
            staged = json.loads(image.staged)
            await self.store.io.run(self.store.rename, f"staging/{image_id}", image_id, wait=CLEANUP_WAIT)
            await self.db.run(lambda s: (
                transition(s, image_id, ImageStatus.IMPORTING, ImageStatus.ACTIVE, reason=f"import task {task_id}",
                           values=dict(staged=None, store_key=image_id, **staged)),
                self._finish_task(s, task_id, "success", "", {"image_id": image_id}),
            ))
        except Exception as exc:  # the task records why; the image goes back to queued
            reason = str(exc)
            LOG.warning("import task %s of image %s failed: %s", task_id, image_id, reason)
            await self.store.io.run(self.store.delete, f"staging/{image_id}", wait=CLEANUP_WAIT)

            def fail(session: Session) -> None:
                try:
                    transition(session, image_id, ImageStatus.IMPORTING, ImageStatus.QUEUED,
                               reason=f"import task {task_id} failed", values=dict(staged=None, size=None))
                except (errors.NotFound, errors.InvalidState):
                    pass
                self._finish_task(session, task_id, "failure", reason, None)
            await self.db.run(fail)

    @staticmethod
    def _finish_task(session: Session, task_id: str, status: str, message: str, result: dict | None) -> None:
        task = session.get(ImageTask, task_id)
        if task is not None:
            task.status, task.message, task.updated_at = status, message, utcnow()
            task.result = json.dumps(result) if result is not None else None

    async def tasks(self, ctx: RequestContext, image_id: str) -> list[dict[str, Any]]:
        self.policy.authorize(ctx, "get_tasks")

        def find(session: Session) -> list[dict[str, Any]]:
            queries.get_visible(session, ctx, image_id)
            rows = session.scalars(select(ImageTask).where(ImageTask.image_id == image_id)
                                   .order_by(ImageTask.created_at))
            return [task_view(t) for t in rows]
        return await self.db.run(find)

    async def close(self) -> None:
        """Let running imports finish (they are short: a rename and one transaction); keep the
        part-way uploads' data for their resume (made durable, files closed)."""
        for key in list(self._parked):
            parked = self._parked.pop(key, None)
            if parked is not None:
                await parked[0].suspend()
        if self._evictor is not None:
            self._evictor.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
