"""File paths from names: only canonical ids ever become part of a path, and every path a
service writes stays under its own directory — checked after resolving symlinks and ``..``."""

from __future__ import annotations

import re
from pathlib import Path

from freezeframe.common import errors

# What may be a single path component built from an id: a canonical UUID, or a plain name of
# letters, digits, dot, dash and underscore that is not "." or "..".
_COMPONENT = re.compile(r"^(?!\.{1,2}$)[A-Za-z0-9._-]{1,255}$")


def safe_join(root: Path, *names: str) -> Path:
    """``root/names...``, refusing any name that is not one plain component and any result that
    resolves outside ``root`` (a symlink planted under it included)."""
    for name in names:
        if not isinstance(name, str) or not _COMPONENT.match(name):
            raise errors.Invalid(f"{str(name)[:80]!r} cannot name a file")
    path = root.joinpath(*names)
    resolved_root = root.resolve()
    resolved = path.resolve()
    if resolved != resolved_root and resolved_root not in resolved.parents:
        raise errors.Invalid(f"{path} resolves outside {root}")
    return path
