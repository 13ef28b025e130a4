"""Image metadata: create, show, list, update (JSON patch), delete, tags, (de)activation."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any, Mapping, Sequence

from sqlalchemy import delete, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from freezeframe.common import errors
from freezeframe.common.context import RequestContext, fast_uuid4
from freezeframe.common.policy import Policy
from freezeframe.common.timeutil import utcnow
from freezeframe.db.session import Database
from freezeframe.images import queries, schema
from freezeframe.images.drivers.base import Store
from freezeframe.images.model import Image, ImageProperty, ImageTag
from freezeframe.images.patch import Change
from freezeframe.images.states import ImageStatus, transition
from freezeframe.images.views import image_view
from freezeframe.settings import ImageSettings

LOG = logging.getLogger(__name__)
# An instance-level snapshot's disk images other than the root (comma-separated ids): deleted
# with the image that lists them (set by the compute workflows, a reserved property).
CHILD_IMAGES = "os_freezeframe_child_images"


def check_owner(policy: Policy, ctx: RequestContext, image: Image, action: str = "modify_image") -> None:
    """``action`` on an image the caller can see, judged against the image's owning project
    (by default: only the owner's members, or an admin, change it)."""
    if not policy.check(ctx, action, {"project_id": image.owner}):
        raise errors.Forbidden(f"You are not permitted to {action.replace('_', ' ')} {image.id}: "
                               "it belongs to another project or your role does not allow it")


def _check_visibility(policy: Policy, ctx: RequestContext, visibility: str | None, owner: str | None) -> None:
    if visibility == "public":
        policy.authorize(ctx, "publicize_image", {"project_id": owner})
    elif visibility == "community":
        policy.authorize(ctx, "communitize_image", {"project_id": owner})


def _check_quotas(settings: ImageSettings, attrs: Mapping[str, Any]) -> None:
    tags = attrs.get("tags") or []
    props = [k for k in attrs if k not in schema.IMAGE_SCHEMA["properties"]]
    if len(tags) > settings.max_tags:
        raise errors.QuotaExceeded(f"An image can have at most {settings.max_tags} tags")
    if len(props) > settings.max_properties:
        raise errors.QuotaExceeded(f"An image can have at most {settings.max_properties} properties")


def _editable(image: Image) -> dict[str, Any]:
    attrs: dict[str, Any] = {k: getattr(image, k) for k in schema.CORE_WRITABLE}
    attrs["tags"] = [t.value for t in image.tags]
    for prop in image.properties:
        attrs[prop.name] = prop.value
    return attrs


def _store(session: Session, image: Image, attrs: Mapping[str, Any]) -> None:
    for key in schema.CORE_WRITABLE:
        if key in attrs:
            setattr(image, key, attrs[key])
    wanted_props = {k: v for k, v in attrs.items()
                    if k not in schema.IMAGE_SCHEMA["properties"] and k not in ("tags", "id")}
    current = {p.name: p for p in image.properties}
    for name, prop in current.items():
        if name not in wanted_props:
            image.properties.remove(prop)
        elif prop.value != wanted_props[name]:
            prop.value = wanted_props[name]
    for name, value in wanted_props.items():
        if name not in current:
            image.properties.append(ImageProperty(name=name, value=value))
    if "tags" in attrs:
        wanted_tags = list(dict.fromkeys(attrs["tags"] or []))
        have = {t.value: t for t in image.tags}
        for value, tag in have.items():
            if value not in wanted_tags:
                image.tags.remove(tag)
        for value in wanted_tags:
            if value not in have:
                image.tags.append(ImageTag(value=value))
    image.updated_at = utcnow()


class ImageService:
    def __init__(self, db: Database, store: Store, settings: ImageSettings, policy: Policy) -> None:
        self.db = db
        self.store = store
        self.settings = settings
        self.policy = policy

    def view(self, image: Image) -> dict[str, Any]:
        return image_view(image, self.store.name)

    # -- create / read ---------------------------------------------------------------------

    async def create(self, ctx: RequestContext, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise errors.Invalid("The request body must be a JSON object describing the image")
        owner = body["owner"] if "owner" in body else ctx.project_id
        self.policy.authorize(ctx, "add_image", {"project_id": owner})
        schema.check_writable(body, service=self.policy.check(ctx, "freezeframe:image:workflow_properties"))
        schema.validate(body)
        _check_visibility(self.policy, ctx, body.get("visibility"), owner)
        if owner != ctx.project_id and not ctx.is_admin:   # null included: nobody's image
            raise errors.Forbidden("Only administrators can create an image for another project (or none)")
        _check_quotas(self.settings, body)
        image_id = body.get("id") or str(fast_uuid4())

        now = utcnow()
        row = {"id": image_id, "status": ImageStatus.QUEUED.value, "visibility": "shared", "protected": False,
               "os_hidden": False, "min_disk": 0, "min_ram": 0, "owner": ctx.project_id, "created_at": now,
               "updated_at": now, "status_changed_at": now,
               **{k: body[k] for k in schema.CORE_WRITABLE if k in body}}
        props = [{"image_id": image_id, "name": k, "value": v} for k, v in body.items()
                 if k not in schema.IMAGE_SCHEMA["properties"]]
        tags = [{"image_id": image_id, "value": t} for t in dict.fromkeys(body.get("tags") or [])]
        # The record as stored, for the response (plain values, no ORM object).
        image = SimpleNamespace(
            **{**{c: None for c in ("name", "disk_format", "container_format", "size", "virtual_size", "checksum",
                                    "os_hash_algo", "os_hash_value", "store_key")}, **row},
            properties=[SimpleNamespace(name=p["name"], value=p["value"]) for p in props],
            tags=[SimpleNamespace(value=t["value"]) for t in sorted(tags, key=lambda t: t["value"])])

        def create(session: Session) -> None:
            # Plain INSERTs: creates are the hot metadata path, the ORM unit of work is not needed.
            try:
                session.execute(insert(Image.__table__), [row])
            except IntegrityError:
                raise errors.Conflict(f"An image with ID {image_id} already exists") from None
            if props:
                session.execute(insert(ImageProperty.__table__), props)
            if tags:
                session.execute(insert(ImageTag.__table__), tags)

        await self.db.run(create)
        view = self.view(image)
        LOG.info("image %s created (queued) by project %s", view["id"], ctx.project_id)
        return view

    async def show(self, ctx: RequestContext, image_id: str) -> dict[str, Any]:
        self.policy.authorize(ctx, "get_image")
        return await self.db.run(lambda s: self.view(queries.get_visible(s, ctx, image_id)))

    async def list(self, ctx: RequestContext, params: Sequence[tuple[str, str]]) -> tuple[list[dict], bool]:
        self.policy.authorize(ctx, "get_images")
        query = queries.parse(ctx, params, default_limit=self.settings.list_limit_default,
                              max_limit=self.settings.list_limit_max)

        def run(session: Session) -> list[dict]:
            return [self.view(i) for i in queries.run(session, ctx, query)]

        images = await self.db.run(run)
        return images, len(images) >= query.limit > 0

    # -- update ----------------------------------------------------------------------------

    async def update(self, ctx: RequestContext, image_id: str, changes: list[Change]) -> dict[str, Any]:
        def update(session: Session) -> dict[str, Any]:
            image = queries.get_visible(session, ctx, image_id)
            check_owner(self.policy, ctx, image)
            attrs = _editable(image)
            for change in changes:
                self._apply(ctx, image, attrs, change)
            schema.validate(attrs)
            _check_quotas(self.settings, attrs)
            _store(session, image, attrs)
            session.flush()
            return self.view(image)

        return await self.db.run(update)

    def _apply(self, ctx: RequestContext, image: Image, attrs: dict[str, Any], change: Change) -> None:
        path, op = change.path, change.op
        if path == "id" or path in schema.READ_ONLY:
            raise errors.Forbidden(f"Attribute '{path}' is read-only.")
        schema.check_writable({path: None},
                              service=self.policy.check(ctx, "freezeframe:image:workflow_properties"))
        core = path in schema.IMAGE_SCHEMA["properties"]
        if path in ("disk_format", "container_format") and image.status != ImageStatus.QUEUED:
            raise errors.Forbidden(f"Attribute '{path}' can be only replaced for a queued image.")
        if path == "visibility" and op != "remove":
            _check_visibility(self.policy, ctx, change.value, image.owner)
        if path == "owner" and not ctx.is_admin:
            raise errors.Forbidden("Only administrators can change the owner of an image")
        if op == "remove":
            if core:
                raise errors.Forbidden(f"Attribute '{path}' is a core attribute and cannot be removed.")
            if path not in attrs:
                raise errors.Conflict(f"Property '{path}' does not exist.")
            del attrs[path]
        elif op == "replace" and not core and path not in attrs:
            raise errors.Conflict(f"Property '{path}' does not exist.")
        else:
            attrs[path] = change.value

    # -- tags ------------------------------------------------------------------------------

    async def add_tag(self, ctx: RequestContext, image_id: str, tag: str) -> None:
        if not tag or len(tag) > 255:
            raise errors.Invalid("A tag must be 1 to 255 characters long")

        def add(session: Session) -> None:
            image = queries.get_visible(session, ctx, image_id)
            check_owner(self.policy, ctx, image)
            if tag not in [t.value for t in image.tags]:
                if len(image.tags) >= self.settings.max_tags:
                    raise errors.QuotaExceeded(f"An image can have at most {self.settings.max_tags} tags")
                image.tags.append(ImageTag(value=tag))
                image.updated_at = utcnow()

        await self.db.run(add)

    async def delete_tag(self, ctx: RequestContext, image_id: str, tag: str) -> None:
        def remove(session: Session) -> None:
            image = queries.get_visible(session, ctx, image_id)
            check_owner(self.policy, ctx, image)
            found = [t for t in image.tags if t.value == tag]
            if not found:
                raise errors.NotFound(f"Tag {tag!r} not found on image {image_id}")
            image.tags.remove(found[0])
            image.updated_at = utcnow()

        await self.db.run(remove)

    # -- delete / deactivate / reactivate ---------------------------------------------------

    async def delete(self, ctx: RequestContext, image_id: str) -> None:
        """Delete an image, and the disk images an instance-level snapshot (seed 003) made for
        it (``os_freezeframe_child_images``: its local disks other than the root), in one
        transaction: the package goes as one."""
        def remove(session: Session) -> list[tuple[str, str | None, bool]]:
            image = queries.get_visible(session, ctx, image_id)
            check_owner(self.policy, ctx, image, "delete_image")
            if image.protected:
                raise errors.Forbidden(f"Image {image_id} is protected and cannot be deleted.")
            children = {p.name: p.value for p in image.properties}.get(CHILD_IMAGES, "")
            doomed = [image] + [child for child in (session.get(Image, c.strip()) for c in children.split(",")
                                                    if c.strip())
                                if child is not None and child.owner == image.owner and not child.protected]
            gone = []
            for img in doomed:
                transition(session, img.id, ImageStatus(img.status), ImageStatus.DELETED,
                           reason="deleted by user" if img is image else f"deleted with its package {image_id}")
                gone.append((img.id, img.store_key, img.staged is not None))
                session.execute(delete(Image).where(Image.id == img.id))
            return gone

        for gone_id, key, staged in await self.db.run(remove):
            await self.remove_data(gone_id, key, staged)

    async def remove_data(self, image_id: str, key: str | None, staged: bool) -> None:
        for k in filter(None, (key, f"staging/{image_id}" if staged else None)):
            try:   # the store's own pool (never the default executor); the record is gone: wait
                await self.store.io.run(self.store.delete, k, wait=10.0)
            except (OSError, errors.Busy) as exc:  # the record is gone; the reaper's orphan sweep retries
                LOG.warning("could not delete data %s of image %s: %s", k, image_id, exc)

    async def kill(self, ctx: RequestContext, image_id: str) -> None:
        """The owning workflow gives up: the image is killed (its data goes with the reaper's
        partial sweep) and deleted after the grace period, or at once by the workflow."""
        if not ctx.is_service:
            raise errors.Forbidden("Only the snapshot workflows (role 'service') can kill an image")

        def kill(session: Session) -> None:
            image = queries.get_visible(session, ctx, image_id)
            check_owner(self.policy, ctx, image, "freezeframe:image:kill")
            if image.status == ImageStatus.KILLED:
                return
            transition(session, image_id, ImageStatus(image.status), ImageStatus.KILLED,
                       reason=f"killed by its workflow ({ctx.user_id})",
                       values=dict(upload_id=None, upload_progress_at=None, upload_bytes=None))

        await self.db.run(kill)

    async def deactivate(self, ctx: RequestContext, image_id: str) -> None:
        await self._toggle(ctx, image_id, ImageStatus.ACTIVE, ImageStatus.DEACTIVATED, "deactivate")

    async def reactivate(self, ctx: RequestContext, image_id: str) -> None:
        await self._toggle(ctx, image_id, ImageStatus.DEACTIVATED, ImageStatus.ACTIVE, "reactivate")

    async def _toggle(self, ctx: RequestContext, image_id: str, frm: ImageStatus, to: ImageStatus, verb: str) -> None:
        def toggle(session: Session) -> None:
            image = queries.get_visible(session, ctx, image_id)
            check_owner(self.policy, ctx, image, verb)
            if image.status == to:
                return
            if image.status != frm:
                raise errors.Forbidden(f"Not allowed to {verb} image in status '{image.status}'")
            transition(session, image_id, frm, to, reason=f"{verb} by user {ctx.user_id}")

        await self.db.run(toggle)
