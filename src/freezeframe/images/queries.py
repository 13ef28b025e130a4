"""Who sees which image, and Glance's list filters, sorting and marker/limit pagination."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from sqlalchemy import ColumnElement, and_, exists, false, or_, select, true
from sqlalchemy.orm import Session

from freezeframe.common import errors
from freezeframe.common.context import RequestContext
from freezeframe.common.strict import parse_uint
from freezeframe.common.timeutil import parse_isotime
from freezeframe.images.model import Image, ImageMember, ImageProperty, ImageTag

SORT_KEYS = {
    "name", "status", "container_format", "disk_format", "size", "virtual_size", "id",
    "created_at", "updated_at", "visibility", "owner", "min_ram", "min_disk",
}
MAX_IN_VALUES = 1000
_IN_KEYS = {"id", "name", "status", "disk_format", "container_format"}
_TIME_OPS = {"gt": "__gt__", "gte": "__ge__", "lt": "__lt__", "lte": "__le__", "eq": "__eq__", "neq": "__ne__"}
_RESERVED_PARAMS = {"limit", "marker", "sort_key", "sort_dir", "sort", "member_status", "visibility",
                    "size_min", "size_max", "tag", "os_hidden", "protected", "created_at", "updated_at",
                    "owner", "checksum", "os_hash_value", "id", "name", "status", "disk_format",
                    "container_format"}


def is_member(project: str | None) -> ColumnElement[bool]:
    if project is None:
        return false()
    return exists().where(ImageMember.image_id == Image.id, ImageMember.member == project)


def visible(ctx: RequestContext) -> ColumnElement[bool]:
    """Images a caller may see by id (anything else is a 404 for them)."""
    if ctx.is_admin:
        return true()
    return or_(
        Image.owner == ctx.project_id,
        Image.visibility.in_(("public", "community")),
        and_(Image.visibility == "shared", is_member(ctx.project_id)),
    )


def get_visible(session: Session, ctx: RequestContext, image_id: str) -> Image:
    stmt = select(Image).where(Image.id == image_id, Image.status != "deleted", visible(ctx))
    image = session.scalars(stmt).first()
    if image is None:
        raise errors.NotFound(f"No image found with ID {image_id}")
    return image


@dataclass
class ListQuery:
    limit: int
    marker: str | None = None
    sort: list[tuple[str, str]] = field(default_factory=list)
    conditions: list[ColumnElement[bool]] = field(default_factory=list)


def _in_or_eq(column, value: str) -> ColumnElement[bool]:
    if value.startswith("in:"):
        items = [v.strip('"') for v in value[3:].split(",") if v]
        if not items:
            raise errors.Invalid("The 'in:' operator needs at least one value")
        if len(items) > MAX_IN_VALUES:     # one bound parameter each: the databases cap them
            raise errors.Invalid(f"The 'in:' operator takes at most {MAX_IN_VALUES} values")
        return column.in_(items)
    return column == value


def _bool(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise errors.Invalid(f"Invalid value for '{name}': {value!r} is not a boolean")


def _int(name: str, value: str, minimum: int = 0) -> int:
    """ASCII digits only, within 64 bits (a larger size would overflow the database's BIGINT)."""
    return parse_uint(name, value, minimum=minimum)


def _time_filter(column, name: str, value: str) -> ColumnElement[bool]:
    op, _, stamp = value.partition(":")
    if op not in _TIME_OPS or not stamp:
        raise errors.Invalid(
            f"Invalid value for '{name}': use <op>:<ISO 8601 time> with op one of {', '.join(_TIME_OPS)}"
        )
    try:
        when = parse_isotime(stamp)
    except ValueError:
        raise errors.Invalid(f"Invalid value for '{name}': {stamp!r} is not an ISO 8601 time") from None
    return getattr(column, _TIME_OPS[op])(when)


def _sorting(params: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    keys = [v for k, v in params if k == "sort_key"]
    dirs = [v for k, v in params if k == "sort_dir"]
    combined = [v for k, v in params if k == "sort"]
    if combined and (keys or dirs):
        raise errors.Invalid("The 'sort' parameter cannot be combined with 'sort_key' or 'sort_dir'")
    pairs: list[tuple[str, str]] = []
    if combined:
        for item in ",".join(combined).split(","):
            key, _, direction = item.strip().partition(":")
            pairs.append((key, direction or "desc"))
    else:
        if len(dirs) > 1 and len(dirs) != len(keys):
            raise errors.Invalid("Give one sort_dir, or one per sort_key")
        for i, key in enumerate(keys):
            pairs.append((key, dirs[i] if len(dirs) > 1 else (dirs[0] if dirs else "desc")))
        if not keys and dirs:
            pairs.append(("created_at", dirs[0]))
    for key, direction in pairs:
        if key not in SORT_KEYS:
            raise errors.Invalid(f"Invalid sort key: {key!r}. Sort keys: {', '.join(sorted(SORT_KEYS))}")
        if direction not in ("asc", "desc"):
            raise errors.Invalid(f"Invalid sort direction: {direction!r}. Use 'asc' or 'desc'")
    if not pairs:
        pairs = [("created_at", "desc")]
    if "id" not in [k for k, _ in pairs]:
        pairs.append(("id", pairs[-1][1]))
    return pairs


def parse(ctx: RequestContext, params: Sequence[tuple[str, str]], *, default_limit: int, max_limit: int) -> ListQuery:
    """Turn GET /v2/images query parameters into a query; 400 for anything malformed."""
    single = {}
    for key, value in params:
        if key in single and key not in ("tag", "sort_key", "sort_dir", "sort"):
            raise errors.Invalid(f"The '{key}' filter may be given only once")
        single[key] = value
    limit = min(_int("limit", single["limit"]), max_limit) if "limit" in single else default_limit
    query = ListQuery(limit=limit, marker=single.get("marker"), sort=_sorting(params))
    cond = query.conditions
    cond.append(Image.status != "deleted")

    project = ctx.project_id
    member_status = single.get("member_status", "accepted")
    if member_status not in ("accepted", "pending", "rejected", "all"):
        raise errors.Invalid(f"Invalid value for 'member_status': {member_status!r}")
    member_ok = (
        exists().where(ImageMember.image_id == Image.id, ImageMember.member == project,
                       *(() if member_status == "all" else (ImageMember.status == member_status,)))
        if project is not None else false()
    )
    visibility = single.get("visibility")
    if visibility is not None and visibility not in ("public", "private", "shared", "community", "all"):
        raise errors.Invalid(f"Invalid value for 'visibility': {visibility!r}")
    admin = ctx.is_admin
    own = Image.owner == project if project is not None else false()
    if visibility in (None, "all"):
        if not admin:
            parts = [own, Image.visibility == "public", and_(Image.visibility == "shared", member_ok)]
            if visibility == "all":
                parts.append(Image.visibility == "community")
            cond.append(or_(*parts))
        elif visibility is None:
            # Admins see every image, but community images of others only when asked for.
            cond.append(or_(Image.visibility != "community", own))
    elif visibility == "public":
        cond.append(Image.visibility == "public")
    elif visibility == "community":
        cond.append(Image.visibility == "community")
    elif visibility == "private":
        cond.append(Image.visibility == "private")
        if not admin:
            cond.append(own)
    elif visibility == "shared":
        cond.append(Image.visibility == "shared")
        if not admin:
            cond.append(or_(own, member_ok))

    for key, value in params:
        if key in _IN_KEYS:
            cond.append(_in_or_eq(getattr(Image, key), value))
        elif key in ("owner", "checksum", "os_hash_value"):
            cond.append(getattr(Image, key) == value)
        elif key == "size_min":
            cond.append(Image.size >= _int(key, value))
        elif key == "size_max":
            cond.append(Image.size <= _int(key, value))
        elif key == "protected":
            cond.append(Image.protected == _bool(key, value))
        elif key in ("created_at", "updated_at"):
            cond.append(_time_filter(getattr(Image, key), key, value))
        elif key == "tag":
            cond.append(exists().where(ImageTag.image_id == Image.id, ImageTag.value == value))
        elif key not in _RESERVED_PARAMS:
            cond.append(exists().where(ImageProperty.image_id == Image.id, ImageProperty.name == key,
                                       ImageProperty.value == value))
    hidden = single.get("os_hidden")
    cond.append(Image.os_hidden == (_bool("os_hidden", hidden) if hidden is not None else False))
    return query


def _after(column, value: Any, direction: str) -> ColumnElement[bool]:
    """Rows strictly after ``value`` in this column's order (NULLs sort as the smallest)."""
    if direction == "asc":
        return column.is_not(None) if value is None else column > value
    return false() if value is None else or_(column < value, column.is_(None))


def _same(column, value: Any) -> ColumnElement[bool]:
    return column.is_(None) if value is None else column == value


def run(session: Session, ctx: RequestContext, query: ListQuery) -> list[Image]:
    stmt = select(Image).where(*query.conditions)
    if query.marker is not None:
        marker = session.scalars(select(Image).where(Image.id == query.marker, visible(ctx))).first()
        if marker is None:
            raise errors.Invalid(f"The marker image {query.marker} could not be found")
        ors = []
        for i, (key, direction) in enumerate(query.sort):
            eqs = [_same(getattr(Image, k), getattr(marker, k)) for k, _ in query.sort[:i]]
            ors.append(and_(*eqs, _after(getattr(Image, key), getattr(marker, key), direction)))
        stmt = stmt.where(or_(*ors))
    order = []
    for key, direction in query.sort:
        column = getattr(Image, key)
        order.append(column.asc().nulls_first() if direction == "asc" else column.desc().nulls_last())
    return list(session.scalars(stmt.order_by(*order).limit(query.limit)))
