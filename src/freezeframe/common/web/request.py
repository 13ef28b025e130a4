"""What an API handler reads from a request, in one place for every API: who calls (the
context the edge authenticated), the JSON body, Content-Length and numeric headers — all parsed
strictly (``freezeframe.common.web.body``, ``freezeframe.common.strict``)."""

from __future__ import annotations

from typing import Any, Collection

from starlette.requests import Request

from freezeframe.common import errors
from freezeframe.common.context import RequestContext
from freezeframe.common.strict import INT64_MAX, parse_uint
from freezeframe.common.web.body import MAX_JSON_BODY, parse_json


def ctx_of(request: Request) -> RequestContext:
    """The caller, as the edge (``http/middleware.py``) authenticated it."""
    try:
        return request.scope["state"]["ctx"]
    except KeyError:    # a public path has no caller: a route there must not ask for one
        raise errors.NotAuthenticated("Authentication required: send a token in the X-Auth-Token header") \
            from None


async def json_body(request: Request, allow_empty: bool = False, *, media_types: Collection[str] = ()) -> Any:
    """The request's JSON body, checked (see ``parse_json``); 413 past ``MAX_JSON_BODY``.
    ``media_types``: JSON media types of the route's own beyond ``application/json`` and
    ``*+json`` (Glance's JSON-patch ones)."""
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype not in ("application/json", "") and not ctype.endswith("+json") and ctype not in media_types:
        raise errors.UnsupportedMediaType(f"Unsupported Content-Type {ctype!r}: send application/json")
    declared = content_length(request)
    if declared is not None and declared > MAX_JSON_BODY:
        raise errors.TooLarge(f"Request body exceeds {MAX_JSON_BODY} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_JSON_BODY:
            raise errors.TooLarge(f"Request body exceeds {MAX_JSON_BODY} bytes")
    if not raw:
        if allow_empty:
            return {}
        raise errors.Invalid("The request body is empty; a JSON document is expected")
    return parse_json(raw)


def content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    return parse_uint("Content-Length", value.strip())


def header_uint(request: Request, name: str, default: str | None = None, *, maximum: int = INT64_MAX) -> int | None:
    """A header holding a non-negative integer (ASCII digits, bounded); None if absent."""
    value = request.headers.get(name, default)
    if value is None:
        return None
    return parse_uint(name, value.strip(), maximum=maximum)
