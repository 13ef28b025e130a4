"""Who sees which volume or snapshot, and Cinder's list filters, sorting and marker/limit paging.

Cinder's rules: a project sees its own; an admin sees its own project's too unless it asks for
``all_tenants`` (then every project, or one with ``project_id``). Sort with ``sort=key:dir,...``
(or the older ``sort_key``/``sort_dir``), default ``created_at:desc`` then ``id:desc``; page with
``limit`` (at most ``MAX_LIMIT``), ``marker`` (the id of the last item seen; an unknown marker
is a 404 as Cinder answers ``MarkerNotFound``) and ``offset`` (items skipped after the marker or
from the first, as Cinder's ``get_pagination_params``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import Session

from freezeframe.common import errors
from freezeframe.common.context import RequestContext
from freezeframe.common.strict import check_text, parse_uint, shown

MAX_LIMIT = 1000            # Cinder's osapi_max_limit
SORT_DIRS = ("asc", "desc")


@dataclass
class Listing:
    limit: int
    marker: str | None
    sort: list[tuple[str, str]]
    filters: dict[str, Any] = field(default_factory=dict)
    all_projects: bool = False
    project_id: str | None = None
    with_count: bool = False
    offset: int = 0


def truthy(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "y", "on", "t"):
        return True
    if lowered in ("false", "0", "no", "n", "off", "f"):
        return False
    raise errors.Invalid(f"Invalid value for '{name}': {shown(value)} is not a boolean")


def parse_listing(ctx: RequestContext, params: Mapping[str, str], *, sort_keys: set[str],
                  filter_keys: set[str], with_count_allowed: bool) -> Listing:
    """The list parameters of a request, checked: unknown sort keys, bad limits and bad booleans
    are 400s naming what is wrong; unknown filters are ignored, as Cinder does (it drops them)."""
    limit = min(parse_uint("limit", params["limit"], maximum=2**31 - 1), MAX_LIMIT) if "limit" in params \
        else MAX_LIMIT
    marker = params.get("marker") or None
    offset = parse_uint("offset", params["offset"], maximum=2**31 - 1) if "offset" in params else 0
    if marker is not None:
        check_text("marker", marker)
    sort: list[tuple[str, str]] = []
    if "sort" in params:
        if "sort_key" in params or "sort_dir" in params:
            raise errors.Invalid("The 'sort' parameter cannot be combined with 'sort_key' or 'sort_dir'")
        for item in params["sort"].split(","):
            key, _, direction = item.strip().partition(":")
            sort.append((key.strip(), (direction or "desc").strip().lower()))
    elif "sort_key" in params or "sort_dir" in params:
        keys = [k.strip() for k in params.get("sort_key", "created_at").split(",")]
        dirs = [d.strip().lower() for d in params.get("sort_dir", "desc").split(",")]
        sort = [(k, dirs[i] if i < len(dirs) else dirs[-1]) for i, k in enumerate(keys)]
    # python-cinderclient sends ``name`` as the column's old name (its SORT_KEY_MAPPINGS), which Cinder sorts by
    sort = [("name" if key == "display_name" else key, direction) for key, direction in sort]
    for key, direction in sort:
        if key not in sort_keys:
            raise errors.Invalid(f"Invalid sort key {shown(key)}: use one of {', '.join(sorted(sort_keys))}")
        if direction not in SORT_DIRS:
            raise errors.Invalid(f"Invalid sort direction {shown(direction)}: use asc or desc")
    if not any(k == "created_at" for k, _ in sort):
        sort.append(("created_at", sort[0][1] if sort else "desc"))
    if not any(k == "id" for k, _ in sort):
        sort.append(("id", sort[0][1]))
    all_projects = truthy("all_tenants", params["all_tenants"]) if "all_tenants" in params else False
    if all_projects and not ctx.is_admin:
        all_projects = False        # Cinder ignores it for a non-admin (its own projects only)
    project_id = params.get("project_id") if ctx.is_admin and all_projects else None
    filters: dict[str, Any] = {}
    for key in filter_keys:
        if key in params:
            value = params[key]
            check_text(key, value)
            if key == "metadata":
                filters[key] = metadata_filter(value)
            elif key == "bootable":
                filters[key] = truthy(key, value)
            else:
                filters[key] = value
    with_count = with_count_allowed and "with_count" in params and truthy("with_count", params["with_count"])
    return Listing(limit=limit, marker=marker, sort=sort, filters=filters, all_projects=all_projects,
                   project_id=project_id, with_count=with_count, offset=offset)


def metadata_filter(value: str) -> dict[str, str]:
    """``metadata={"k": "v"}`` (Cinder takes a dict literal; JSON here, single quotes allowed)."""
    try:
        doc = json.loads(value) if value.startswith("{") and '"' in value else json.loads(value.replace("'", '"'))
    except (ValueError, RecursionError):       # RecursionError: nested thousands deep
        raise errors.Invalid(f"Invalid metadata filter {shown(value)}: a JSON object of strings is expected") \
            from None
    if not isinstance(doc, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in doc.items()):
        raise errors.Invalid(f"Invalid metadata filter {shown(value)}: a JSON object of strings is expected")
    return doc


def scoped(model: Any, ctx: RequestContext, listing: Listing | None = None) -> list[ColumnElement[bool]]:
    """The rows the caller may see in a list (by id: ``visible``)."""
    conditions: list[ColumnElement[bool]] = [model.status != "deleted"]
    if listing is not None and listing.all_projects:
        if listing.project_id:
            conditions.append(model.project_id == listing.project_id)
        return conditions
    conditions.append(model.project_id == ctx.project_id)
    return conditions


def visible(session: Session, model: Any, ctx: RequestContext, row_id: str, noun: str) -> Any:
    """The row if the caller may see it: its project's, or any for an admin; 404 otherwise
    (the same answer whether it exists in another project or not at all)."""
    row = session.get(model, row_id) if isinstance(row_id, str) and len(row_id) <= 36 else None
    if row is None or row.status == "deleted" or (not ctx.is_admin and row.project_id != ctx.project_id):
        raise errors.NotFound(f"{noun} {row_id} could not be found.")
    return row


def page(session: Session, model: Any, conditions: list[ColumnElement[bool]], listing: Listing,
         noun: str, keep: Callable[[Any], bool] | None = None) -> tuple[list[Any], int | None]:
    """One page of rows (and the total count when asked for). ``keep``: a filter the database
    cannot apply (metadata in a JSON column), applied before the page is cut, so a page is
    never short while more rows match."""
    from sqlalchemy import func

    stmt = select(model).where(*conditions)
    count = None
    if listing.with_count:
        count = (sum(1 for r in session.scalars(stmt) if keep(r)) if keep is not None else
                 session.scalar(select(func.count()).select_from(model).where(*conditions)) or 0)
    if listing.marker is not None:
        marker = session.get(model, listing.marker) if len(listing.marker) <= 36 else None
        if marker is None or getattr(marker, "status", None) == "deleted":
            raise errors.NotFound(f"Marker {listing.marker} could not be found: no {noun.lower()} with that id is "
                                  "listed")
        stmt = stmt.where(_after(model, marker, listing.sort))
    order = [getattr(model, k).asc() if d == "asc" else getattr(model, k).desc() for k, d in listing.sort]
    stmt = stmt.order_by(*order)
    if keep is None:
        return list(session.scalars(stmt.offset(listing.offset or None).limit(listing.limit))), count
    rows, skip = [], listing.offset
    for row in session.scalars(stmt.execution_options(yield_per=200)):
        if len(rows) >= listing.limit:
            break
        if keep(row):
            if skip:
                skip -= 1
            else:
                rows.append(row)
    return rows, count


def _after(model: Any, marker: Any, sort: list[tuple[str, str]]) -> ColumnElement[bool]:
    """Rows strictly after the marker in the sort order (keyset paging over every sort key)."""
    clauses = []
    for i, (key, direction) in enumerate(sort):
        column, value = getattr(model, key), getattr(marker, key)
        equal = [getattr(model, k) == getattr(marker, k) for k, _ in sort[:i]]
        if value is None:
            beyond = column.is_not(None) if direction == "asc" else None
        else:
            beyond = column > value if direction == "asc" else or_(column < value, column.is_(None))
        if beyond is not None:
            clauses.append(and_(*equal, beyond))
    return or_(*clauses)
