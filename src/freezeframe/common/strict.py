"""Strict parsing of what clients send: numbers of ASCII digits within bounds, and text that a
database can store (valid Unicode without lone surrogates or NUL).

Python's own parsers are too lenient for input at the edge: ``str.isdigit`` accepts ``²`` and
``٣`` (``int`` then fails or accepts them), ``int`` accepts ``" 1_0 "`` and raises on more than
4300 digits, and a lone surrogate (``"\\ud800"`` in JSON) or a NUL travels until the database
driver or the response encoder chokes on it. Every number or text a client sends goes through
here (or through the JSON body check built on it) and anything else is a clear ``Invalid``.
"""

from __future__ import annotations

import re
from typing import Any

from freezeframe.common import errors

INT64_MAX = (1 << 63) - 1
INT32_MAX = (1 << 31) - 1
_ASCII_DIGITS = re.compile(r"[0-9]+")
# No integer a client may send has more digits than the largest 64-bit one (19) plus a few
# leading zeros; anything longer is refused before int() ever sees it.
MAX_DIGITS = 24
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def shown(value: Any, limit: int = 40) -> str:
    """A value for an error message: repr (escapes surrogates and control characters), cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def is_uint_text(value: str) -> bool:
    return len(value) <= MAX_DIGITS and _ASCII_DIGITS.fullmatch(value) is not None


def parse_uint(name: str, value: Any, *, maximum: int = INT64_MAX, minimum: int = 0) -> int:
    """A non-negative integer given as text of ASCII digits (or as a JSON integer), within
    ``[minimum, maximum]``; ``Invalid`` naming ``name`` otherwise."""
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, str) and is_uint_text(value):
        number = int(value)
    else:
        number = None
    if number is None:
        raise errors.Invalid(f"Invalid value for '{name}': {shown(value)} is not a non-negative integer "
                             "(ASCII digits 0-9 only)")
    if not minimum <= number <= maximum:
        raise errors.Invalid(f"Invalid value for '{name}': {shown(number)} is out of range "
                             f"({minimum} to {maximum})")
    return number


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text (a NUL, a lone surrogate), or None if it can."""
    if "\x00" in value:
        return "contains a NUL character"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "contains a lone surrogate (not valid Unicode)"
    return None


def check_text(what: str, value: str) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise errors.Invalid(f"Invalid value for '{what}': the text {problem}")
    return value


def is_uuid(value: Any) -> bool:
    return isinstance(value, str) and _UUID.fullmatch(value) is not None


def _at(path: str) -> str:
    path = path or "/"
    return path if len(path) <= 80 else path[:80] + "..."


def check_document(doc: Any, *, max_depth: int, where: str = "request body") -> None:
    """Walk a parsed JSON document without recursion: containers nested at most ``max_depth``
    deep, every string and key valid text, every integer within 64 bits, no NaN or infinity."""
    stack: list[tuple[Any, int, str]] = [(doc, 1, "")]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > max_depth:
                raise errors.Invalid(f"The {where} is nested too deeply (more than {max_depth} levels)")
            if isinstance(node, dict):
                for key, value in node.items():
                    problem = text_problem(key) if isinstance(key, str) else "is not a string"
                    if problem is not None:
                        raise errors.Invalid(f"A key in the {where} at '{_at(path)}' {problem}")
                    stack.append((value, depth + 1, f"{path}/{key}" if key.isprintable() else f"{path}/?"))
            else:
                for i, value in enumerate(node):
                    stack.append((value, depth + 1, f"{path}/{i}"))
        elif isinstance(node, str):
            problem = text_problem(node)
            if problem is not None:
                raise errors.Invalid(f"A string in the {where} at '{_at(path)}' {problem}")
        elif isinstance(node, bool) or node is None:
            continue
        elif isinstance(node, int):
            if not -INT64_MAX - 1 <= node <= INT64_MAX:
                raise errors.Invalid(f"An integer in the {where} at '{_at(path)}' is out of the 64-bit range")
        elif isinstance(node, float):
            if node != node or node in (float("inf"), float("-inf")):
                raise errors.Invalid(f"A number in the {where} at '{_at(path)}' is not finite")
