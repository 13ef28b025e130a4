from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    """Naive UTC, as stored in the database."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def isotime(value: dt.datetime | None) -> str | None:
    """Glance's timestamp format: ``2026-11-21T23:05:52Z``."""
    if value is None:
        return None
    return value.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_isotime(text: str) -> dt.datetime:
    """Parse an ISO 8601 timestamp to naive UTC; ValueError if it is not one."""
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value
