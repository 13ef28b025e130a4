"""Glance's JSON-patch dialects: ``application/openstack-images-v2.1-json-patch`` (RFC 6902
style ``{"op", "path", "value"}``) and the older ``...-v2.0-json-patch`` (``{"replace": path}``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from freezeframe.common import errors

MEDIA_V21 = "application/openstack-images-v2.1-json-patch"
MEDIA_V20 = "application/openstack-images-v2.0-json-patch"
MEDIA_TYPES = (MEDIA_V21, MEDIA_V20)
OPS = ("add", "replace", "remove")
_MISSING = object()


@dataclass(frozen=True)
class Change:
    op: str
    # The attribute name (``tags``, ``name``, a custom property); JSON-pointer unescaped.
    path: str
    value: Any = None


def _decode_path(path: Any) -> str:
    if not isinstance(path, str) or not path.startswith("/") or path == "/":
        raise errors.Invalid(f"Invalid JSON pointer for this resource: {path!r}")
    parts = path[1:].split("/")
    if len(parts) != 1:
        raise errors.Invalid(f"Nested paths are not allowed: {path!r}")
    part = parts[0]
    if "~" in part.replace("~0", "").replace("~1", ""):
        raise errors.Invalid(f"Invalid JSON pointer escape in {path!r}")
    return part.replace("~1", "/").replace("~0", "~")


def parse(media_type: str, body: Any) -> list[Change]:
    if not isinstance(body, list):
        raise errors.Invalid("A JSON-patch request body must be a list of changes")
    changes = []
    for raw in body:
        if not isinstance(raw, dict):
            raise errors.Invalid("Each change must be a JSON object")
        if media_type == MEDIA_V21:
            op = raw.get("op")
            if op not in OPS:
                raise errors.Invalid(f"Invalid operation {op!r}: use one of {', '.join(OPS)}")
            path = raw.get("path", _MISSING)
            allowed = {"op", "path", "value"} if op != "remove" else {"op", "path"}
        else:
            ops = [k for k in OPS if k in raw]
            if len(ops) != 1:
                raise errors.Invalid(f"Each change needs exactly one of {', '.join(OPS)}")
            op = ops[0]
            path = raw[op]
            allowed = {op, "value"} if op != "remove" else {op}
        unknown = set(raw) - allowed
        if unknown:
            raise errors.Invalid(f"Unknown keys in change: {', '.join(sorted(unknown))}")
        if path is _MISSING:
            raise errors.Invalid("Each change needs a 'path'")
        if op != "remove" and "value" not in raw:
            raise errors.Invalid(f"A '{op}' change needs a 'value'")
        changes.append(Change(op=op, path=_decode_path(path), value=raw.get("value")))
    return changes
