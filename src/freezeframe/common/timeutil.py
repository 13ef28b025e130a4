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
    if not text.isascii():      # fromisoformat takes some non-ASCII digits
        raise ValueError(f"not an ISO 8601 time: {text[:40]!r}")
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is not None:
        try:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        except OverflowError:   # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
            raise ValueError(f"{text[:40]!r} is out of the supported time range") from None
    return value
