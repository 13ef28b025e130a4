"""Ironic's list parameters for nodes and ports, checked, and keyset paging.

``limit`` (positive, at most ``MAX_LIMIT``), ``marker`` (the uuid of the last item seen: an
unknown one is a 400 as Ironic's "Expected UUID" / a 404 when no such item), ``sort_key`` (one
sortable field; then ``id``) and ``sort_dir`` (asc by default, as Ironic); node filters
``provision_state`` (1.9), ``maintenance``, ``driver`` (1.16), ``associated``,
``instance_uuid``, ``fields`` (1.8: the fields shown; an unknown one is a 400) and the rest of
Ironic's (``NODE_ARGS``; each from its microversion, 406 before it, as Ironic); any other query
argument is a 400 "Unexpected arguments", as Ironic answers. A full page carries ``next``: the
same query (filters included: Ironic's own link drops them, its clients re-add them) with
``sort_key``, ``sort_dir``, ``limit`` and the marker of its last item.
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
# Every query argument of Ironic's node and port lists (ironic/api/controllers/v1/node.py, port.py).
NODE_ARGS = frozenset({
    "chassis_uuid", "instance_uuid", "associated", "maintenance", "retired", "provision_state", "marker", "limit",
    "sort_key", "sort_dir", "driver", "fields", "resource_class", "fault", "conductor_group", "detail", "conductor",
    "owner", "description_contains", "lessee", "project", "shard", "sharded", "include_children", "parent_node",
    "instance_name"})
PORT_ARGS = frozenset({"node", "node_uuid", "address", "marker", "limit", "sort_key", "sort_dir", "fields", "portgroup",
                       "detail", "shard", "description_contains", "conductor_groups"})
# The microversion each filter needs (Ironic's check_allow_filter_by_* / check_allow_specify_*).
FILTER_VERSIONS = {"fields": 8, "provision_state": 9, "driver": 16, "resource_class": 21, "fault": 42,
                   "conductor_group": 46, "conductor": 49, "owner": 50, "lessee": 65, "shard": 82, "sharded": 82,
                   "include_children": 83, "parent_node": 83, "instance_name": 104}
FAULTS = ("power failure", "clean failure", "rescue abort failure", "service failure")   # ironic.common.faults
_BOOLEANS = ("maintenance", "associated", "retired", "sharded", "include_children", "detail")


def check_arguments(params: Mapping[str, str], accepted: frozenset[str], version) -> None:
    """Ironic's answers to the arguments themselves: an unknown one is a 400, a filter newer than
    the request's microversion a 406, ``detail`` before 1.43 a 400."""
    unexpected = sorted(k for k in params if k not in accepted)
    if unexpected:
        raise errors.Invalid(f"Unexpected arguments: {', '.join(shown(k) for k in unexpected)}")
    for key, minor in FILTER_VERSIONS.items():
        if key in params and version < (1, minor):
            raise errors.NotAcceptable(f"Request not acceptable. The minimal required API version should be "
                                       f"1.{minor}")
    if "detail" in params and version < (1, 43):
        raise errors.Invalid(f"Invalid query parameter ?detail={shown(params['detail'])} received.")


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
        elif key in _BOOLEANS:
            found[key] = checks.boolean(value, key)
        elif key in ("instance_uuid", "chassis_uuid", "node_uuid"):
            found[key] = checks.uuid_field(value, key)
        elif key == "fault":
            if value not in FAULTS:
                raise errors.Invalid(f'Unrecognized fault "{value}" is specified, allowed faults are '
                                     f'{", ".join(FAULTS)}')
            found[key] = value
        elif key in ("shard", "conductor_groups"):
            found[key] = [v.strip() for v in value.split(",") if v.strip()]
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
    query = {k: v for k, v in params.items() if k not in ("marker", "limit", "sort_key", "sort_dir")}
    query.update(sort_key=listing.sort_key, sort_dir=listing.sort_dir, limit=str(listing.limit), marker=last_id)
    return f"{base}?{urlencode(query)}"
