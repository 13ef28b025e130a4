"""What a volume request body may hold, checked the way Cinder checks it (400s naming the field)."""

from __future__ import annotations

from typing import Any

from freezeframe.common import errors
from freezeframe.common.strict import is_uuid, parse_uint, shown, text_problem

MAX_METADATA_ITEMS = 128


def body_of(body: Any, key: str) -> dict[str, Any]:
    inner = body.get(key) if isinstance(body, dict) else None
    if not isinstance(inner, dict):
        raise errors.Invalid(f"Missing required element '{key}' in request body: {{\"{key}\": {{...}}}} is expected")
    return inner


def optional_text(inner: dict[str, Any], field: str, *, limit: int = 255) -> str | None:
    value = inner.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise errors.Invalid(f"Invalid input for field/attribute {field}: {shown(value)} is not a string")
    problem = text_problem(value)
    if problem is not None:
        raise errors.Invalid(f"Invalid input for field/attribute {field}: the text {problem}")
    if len(value) > limit:
        raise errors.Invalid(f"Invalid input for field/attribute {field}: at most {limit} characters are allowed")
    return value


def metadata(value: Any, field: str = "metadata") -> dict[str, str]:
    """Cinder's metadata: string keys of 1-255 and values of at most 255 characters; at most 128
    items (its quota answers 403 past it)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise errors.Invalid(f"Invalid input for field/attribute {field}: a JSON object is expected")
    for key, item in value.items():
        if not isinstance(item, str):
            raise errors.Invalid(f"Invalid input for field/attribute {field}: the value of {shown(key)} is not a "
                                 "string")
        if not 1 <= len(key) <= 255 or len(item) > 255:
            raise errors.Invalid(f"Invalid input for field/attribute {field}: keys of 1-255 and values of at most "
                                 "255 characters are required")
        for text in (key, item):
            problem = text_problem(text)
            if problem is not None:
                raise errors.Invalid(f"Invalid input for field/attribute {field}: {shown(text)} {problem}")
    if len(value) > MAX_METADATA_ITEMS:
        raise errors.Forbidden(f"Maximum number of metadata items exceeds {MAX_METADATA_ITEMS}")
    return dict(value)


def size(value: Any, *, maximum: int, field: str = "size") -> int:
    """A size in GiB: a positive integer (or its digits as a string, as Cinder takes it)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise errors.Invalid(f"Invalid input for field/attribute {field}: {shown(value)} is not an integer")
    number = parse_uint(field, value, maximum=2**31 - 1)
    if number < 1:
        raise errors.Invalid(f"Invalid input for field/attribute {field}: {number} is less than the minimum of 1")
    if number > maximum:
        raise errors.Invalid(f"Invalid input for field/attribute {field}: {number} GiB is more than the largest "
                             f"volume allowed here ({maximum} GiB)")
    return number


def boolean(value: Any, field: str) -> bool:
    """A strict boolean (Cinder's ``strutils.bool_from_string(strict=True)``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "y", "on", "t"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "n", "off", "f"):
        return False
    raise errors.Invalid(f"Invalid value for {field}: {shown(value)} is not a boolean")


def uuid_field(value: Any, field: str) -> str:
    if not is_uuid(value):
        raise errors.Invalid(f"Invalid input for field/attribute {field}: {shown(value)} is not a UUID")
    return value.lower()
