"""What a request carries, parsed strictly in one place: JSON documents (size, depth, numbers,
text), and the edge checks of the URL and headers made before any routing.

Every API reads its JSON bodies with ``freezeframe.common.web.request.json_body``, built on
:func:`parse_json`, so a body that passes here has bounded size and depth, 64-bit integers,
finite numbers and text without lone surrogates or NUL, keys included: nothing in it can crash a
parser, a database driver or the response encoder further in.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.types import Scope

from freezeframe.common import errors
from freezeframe.common.strict import INT64_MAX, MAX_DIGITS, check_document, text_problem

LOG = logging.getLogger(__name__)

MAX_JSON_BODY = 1 << 20      # bytes
MAX_JSON_DEPTH = 32          # nested arrays/objects; real bodies need 4 at most
MAX_FLOAT_CHARS = 64         # the text of one JSON number with a fraction or exponent
MAX_QUERY_PARAMS = 128
# Headers whose values become data (noauth mode, a service acting for a user): the ids are stored
# in VARCHAR(255) columns (PostgreSQL refuses longer ones) and sent on in service-to-service
# calls (ASCII only).
IDENTITY_HEADERS = {b"x-user-id": 255, b"x-project-id": 255, b"x-roles": 1024, b"x-service-roles": 1024}


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise errors.Invalid(f"Malformed JSON in request body: an integer of {len(text)} digits is too large")
    number = int(text)
    if not -INT64_MAX - 1 <= number <= INT64_MAX:
        raise errors.Invalid("Malformed JSON in request body: an integer is out of the 64-bit range")
    return number


def _parse_float(text: str) -> float:
    if len(text) > MAX_FLOAT_CHARS:
        raise errors.Invalid(f"Malformed JSON in request body: a number of {len(text)} characters is too long")
    number = float(text)
    if not math.isfinite(number):
        raise errors.Invalid("Malformed JSON in request body: a number is out of range")
    return number


def _parse_constant(name: str) -> Any:
    raise errors.Invalid(f"Malformed JSON in request body: {name} is not a JSON number")


def parse_json(raw: bytes | bytearray, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Bytes to a checked JSON document; ``Invalid`` for anything that is not strict JSON in
    UTF-8 within the limits."""
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.Invalid(f"Malformed JSON in request body: not UTF-8 ({exc.reason} at byte {exc.start})") \
            from None
    try:
        doc = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except json.JSONDecodeError as exc:
        raise errors.Invalid(f"Malformed JSON in request body: {exc}") from None
    except RecursionError:
        raise errors.Invalid(f"The request body is nested too deeply (more than {max_depth} levels)") from None
    check_document(doc, max_depth=max_depth)
    return doc


# -- the edge ---------------------------------------------------------------------------------

def _decoded(raw: bytes, plus_is_space: bool) -> str | None:
    """Percent-decoded strict UTF-8 without NUL, or None."""
    if plus_is_space:
        raw = raw.replace(b"+", b" ")
    try:
        text = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\x00" in text else text


def edge_problem(scope: Scope) -> tuple[int, str] | None:
    """The URL and headers checked before routing: a path that is not valid UTF-8 text (invalid
    percent-encoding, a surrogate, a NUL) names nothing (404, as Glance answers a malformed id);
    such a query parameter, too many of them, or a NUL in a header value is a 400.
    Returns (status, message) or None if the request may go on."""
    raw_path = scope.get("raw_path")
    path_ok = (_decoded(raw_path, False) is not None) if raw_path is not None else True
    if not path_ok or text_problem(scope.get("path", "")) is not None:
        return 404, "The resource could not be found: the URL path is not valid UTF-8 text (or holds a NUL)"
    query = scope.get("query_string", b"")
    if query:
        parts = [p for p in query.split(b"&") if p]
        if len(parts) > MAX_QUERY_PARAMS:
            return 400, f"Too many query parameters ({len(parts)}); the limit is {MAX_QUERY_PARAMS}"
        for part in parts:
            key, _, value = part.partition(b"=")
            if _decoded(key, True) is None or _decoded(value, True) is None:
                name = _decoded(key, True)
                what = f"query parameter {name[:40]!r}" if name is not None else "a query parameter name"
                return 400, f"Invalid {what}: not valid UTF-8 text (or holds a NUL)"
    for name, value in scope.get("headers", ()):
        if b"\x00" in value:
            return 400, f"Invalid header {name[:40].decode('latin-1')!r}: its value holds a NUL"
        limit = IDENTITY_HEADERS.get(name.lower())
        if limit is not None and (len(value) > limit or not all(0x20 <= c < 0x7f for c in value)):
            return 400, (f"Invalid header {name.decode('latin-1')!r}: at most {limit} printable ASCII "
                         "characters")
    return None


def log_client_gone(scope: Scope) -> None:
    """A client that went away mid-request is not a server error: one INFO line."""
    LOG.info("client disconnected before the end of %s %s", scope.get("method"), scope.get("path"))
