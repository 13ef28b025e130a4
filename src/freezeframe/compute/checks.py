"""Input rules of the compute API that more than one of its modules apply."""

from __future__ import annotations

import re
from typing import Any

from freezeframe.common import errors

_NAME = re.compile(r"^[^\x00-\x1f]{1,255}$")


def check_name(value: Any, what: str = "name") -> str:
    """A server's, image's or domain's name: 1-255 characters, no control characters, no
    leading or trailing spaces (Nova's rule)."""
    if not isinstance(value, str) or not _NAME.match(value) or value != value.strip():
        raise errors.Invalid(f"Invalid input for field/attribute {what}: a 1-255 character string without "
                             "control characters or leading/trailing spaces is required")
    return value
