"""Ironic's list parameters for nodes and ports, checked, and keyset paging.

``limit`` (positive, at most ``MAX_LIMIT``), ``marker`` (the uuid of the last item seen: an
unknown one is a 400 as Ironic's "Expected UUID" / a 404 when no such item), ``sort_key`` (one
sortable field; then ``id``) and ``sort_dir`` (asc by default, as Ironic); node filters
``provision_state`` (1.9), ``maintenance``, ``driver`` (1.16), ``associated``,
``instance_uuid``, ``fields`` (1.8: the fields shown; an unknown one is a 400). A full page
carries ``next``: the same query with the marker of its last item.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import Session

from freezeframe.baremetal import checks
from freezeframe.baremetal.states import ProvisionState
from freezeframe.common import errors
from freezeframe.common.strict import check_text, is_uint_text, shown

MAX_LIMIT = 1000            # Ironic's max_limit
NODE_SORT_KEYS = ("id", "uuid", "name", "created_at", "updated_at", "provision_state", "provision_updated_at",
                  "driver", "maintenance", "power_state", "instance_uuid", "resource_class", "owner", "lessee",
                  "conductor_group", "description")
PORT_SORT_KEYS = ("id", "uuid", "address", "created_at", "updated_at", "node_uuid", "pxe_enabled")
_COLUMN = {"uuid": "id", "node_uuid": "node_id"}


@dataclass
class Listing:
    limit: int
    marker: str | None
    sort_key: str
    sort_dir: str
    filters: dict[str, Any] = field(default_factory=dict)
    fields: list[str] | None = None


def parse_listing(params: Mapping[str, str], *, sort_keys: tuple[str, ...], filters: tuple[str, ...] = (),
                  fields_allowed: tuple[str, ...] | None = None) -> Listing:
    for key, value in params.items():
        check_text(key, value)
    limit = MAX_LIMIT
    if "limit" in params:
        raw = params["limit"].strip()
        if raw.startswith("-") and is_uint_text(raw[1:]):
            raise errors.Invalid("Limit must be positive")
        if not is_uint_text(raw):
            raise errors.Invalid(f"Invalid input for query parameter limit: {shown(raw)} is not an integer")
        limit = int(raw)
        if limit <= 0:
            raise errors.Invalid("Limit must be positive")
        limit = min(limit, MAX_LIMIT)
    marker = checks.uuid_field(params["marker"], "marker") if params.get("marker") else None
    sort_key = params.get("sort_key", "id")
    if sort_key not in sort_keys:
        raise errors.Invalid(f'The sort_key value "{sort_key}" is an invalid field for sorting')
    sort_dir = params.get("sort_dir", "asc").lower()
    if sort_dir not in ("asc", "desc"):
        raise errors.Invalid(f"Invalid sort direction: {shown(sort_dir)}. Acceptable values are 'asc' or 'desc'")
    found: dict[str, Any] = {}
    for key in filters:
        if key not in params:
            continue
        value = params[key]
        if key == "provision_state":
            if value not in {str(s) for s in ProvisionState}:
                raise errors.Invalid(f'Provision state "{value}" is not valid')
            found[key] = value
        elif key in ("maintenance", "associated"):
            found[key] = checks.boolean(value, key)
        elif key == "instance_uuid":
            found[key] = checks.uuid_field(value, key)
        elif key == "node":
            found[key] = value
        else:
            found[key] = value
    fields = None
    if "fields" in params and fields_allowed is not None:
        fields = [f.strip() for f in params["fields"].split(",") if f.strip()]
        bad = [f for f in fields if f not in fields_allowed]
        if bad or not fields:
            raise errors.Invalid(f"Field(s) {', '.join(map(repr, bad)) or '(none)'} are not valid for this "
                                 f"request: use some of {', '.join(fields_allowed)}")
    return Listing(limit=limit, marker=marker, sort_key=sort_key, sort_dir=sort_dir, filters=found, fields=fields)


def page(session: Session, model: Any, conditions: list[ColumnElement[bool]], listing: Listing,
         noun: str) -> list[Any]:
    key = _COLUMN.get(listing.sort_key, listing.sort_key)
    stmt = select(model).where(*conditions)
    if listing.marker is not None:
        marker = session.get(model, listing.marker)
        if marker is None:
            raise errors.NotFound(f"{noun} {listing.marker} could not be found.")
        stmt = stmt.where(_after(model, marker, key, listing.sort_dir))
    column = getattr(model, key)
    order = [column.asc().nulls_first() if listing.sort_dir == "asc" else column.desc().nulls_last()]
    if key != "id":
        order.append(model.id.asc() if listing.sort_dir == "asc" else model.id.desc())
    return list(session.scalars(stmt.order_by(*order).limit(listing.limit)))


def _after(model: Any, marker: Any, key: str, direction: str) -> ColumnElement[bool]:
    """Rows strictly after ``marker`` in (key, id) order (NULLs first ascending, last
    descending, on every database: the order ``page`` asks for)."""
    column, value = getattr(model, key), getattr(marker, key)
    ident = model.id > marker.id if direction == "asc" else model.id < marker.id
    if key == "id":
        return ident
    if value is None:
        same = column.is_(None)
        beyond = column.is_not(None) if direction == "asc" else None
    else:
        same = column == value
        beyond = column > value if direction == "asc" else or_(column < value, column.is_(None))
    clauses = [and_(same, ident)]
    if beyond is not None:
        clauses.append(beyond)
    return or_(*clauses)


def next_link(base: str, params: Mapping[str, str], listing: Listing, last_id: str) -> str:
    """The URL of the next page (Ironic's ``next``)."""
    query = {k: v for k, v in params.items() if k not in ("marker", "limit")}
    query.update(limit=str(listing.limit), marker=last_id)
    return f"{base}?{urlencode(query)}"
