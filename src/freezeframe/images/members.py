"""Image sharing: the owner adds projects as members; each member accepts or rejects."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from freezeframe.common import errors
from freezeframe.common.context import RequestContext
from freezeframe.common.policy import Policy
from freezeframe.common.timeutil import utcnow
from freezeframe.db.session import Database
from freezeframe.images import queries
from freezeframe.images.model import Image, ImageMember
from freezeframe.images.service import check_owner
from freezeframe.images.views import member_view
from freezeframe.settings import ImageSettings

MEMBER_STATUSES = ("pending", "accepted", "rejected")


def _body_value(body: Any, key: str) -> str:
    if not isinstance(body, dict) or set(body) != {key}:
        raise errors.Invalid(f"The request body must be a JSON object with exactly one key, '{key}'")
    value = body[key]
    if not isinstance(value, str) or not value or len(value) > 255:
        raise errors.Invalid(f"'{key}' must be a string of 1 to 255 characters")
    return value


def _shared_image(session: Session, ctx: RequestContext, image_id: str) -> Image:
    image = queries.get_visible(session, ctx, image_id)
    if image.visibility != "shared":
        raise errors.Forbidden(
            f"Only shared images have members; image {image_id} has visibility '{image.visibility}'"
        )
    return image


class MemberService:
    def __init__(self, db: Database, settings: ImageSettings, policy: Policy) -> None:
        self.db = db
        self.settings = settings
        self.policy = policy

    async def add(self, ctx: RequestContext, image_id: str, body: Any) -> dict[str, Any]:
        member_id = _body_value(body, "member")

        def add(session: Session) -> dict[str, Any]:
            image = _shared_image(session, ctx, image_id)
            check_owner(self.policy, ctx, image, "add_member")
            if session.get(ImageMember, (image_id, member_id)) is not None:
                raise errors.Conflict(f"Project {member_id} is already a member of image {image_id}")
            count = session.scalar(select(func.count()).where(ImageMember.image_id == image_id))
            if count >= self.settings.max_members:
                raise errors.QuotaExceeded(f"An image can have at most {self.settings.max_members} members")
            member = ImageMember(image_id=image_id, member=member_id, status="pending",
                                 created_at=utcnow(), updated_at=utcnow())
            session.add(member)
            session.flush()
            return member_view(member)

        return await self.db.run(add)

    async def list(self, ctx: RequestContext, image_id: str) -> list[dict[str, Any]]:
        self.policy.authorize(ctx, "get_members")

        def find(session: Session) -> list[dict[str, Any]]:
            image = _shared_image(session, ctx, image_id)
            stmt = select(ImageMember).where(ImageMember.image_id == image_id)
            if not ctx.is_admin and image.owner != ctx.project_id:
                stmt = stmt.where(ImageMember.member == ctx.project_id)  # a member sees only itself
            return [member_view(m) for m in session.scalars(stmt.order_by(ImageMember.created_at))]

        return await self.db.run(find)

    async def show(self, ctx: RequestContext, image_id: str, member_id: str) -> dict[str, Any]:
        self.policy.authorize(ctx, "get_member")

        def find(session: Session) -> dict[str, Any]:
            image = _shared_image(session, ctx, image_id)
            if not ctx.is_admin and image.owner != ctx.project_id and member_id != ctx.project_id:
                raise errors.NotFound(f"Member {member_id} not found on image {image_id}")
            member = session.get(ImageMember, (image_id, member_id))
            if member is None:
                raise errors.NotFound(f"Member {member_id} not found on image {image_id}")
            return member_view(member)

        return await self.db.run(find)

    async def update(self, ctx: RequestContext, image_id: str, member_id: str, body: Any) -> dict[str, Any]:
        status = _body_value(body, "status")
        if status not in MEMBER_STATUSES:
            raise errors.Invalid(f"Invalid member status {status!r}: use one of {', '.join(MEMBER_STATUSES)}")

        def update(session: Session) -> dict[str, Any]:
            _shared_image(session, ctx, image_id)
            member = session.get(ImageMember, (image_id, member_id))
            if member is None:
                raise errors.NotFound(f"Member {member_id} not found on image {image_id}")
            if not self.policy.check(ctx, "modify_member", {"member_id": member_id}):
                raise errors.Forbidden("Only the member project itself can accept or reject a shared image")
            member.status, member.updated_at = status, utcnow()
            session.flush()
            return member_view(member)

        return await self.db.run(update)

    async def delete(self, ctx: RequestContext, image_id: str, member_id: str) -> None:
        def remove(session: Session) -> None:
            image = _shared_image(session, ctx, image_id)
            check_owner(self.policy, ctx, image, "delete_member")
            member = session.get(ImageMember, (image_id, member_id))
            if member is None:
                raise errors.NotFound(f"Member {member_id} not found on image {image_id}")
            session.delete(member)

        await self.db.run(remove)
