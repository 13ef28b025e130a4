"""The database's clock: where several hosts share a database, its clock judges leases and
heartbeats, so the hosts' own clocks need not agree."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from freezeframe.common.timeutil import utcnow


def db_now(session: Session) -> dt.datetime:
    """The database's clock (naive UTC) where several hosts share it; this host's with SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        return session.execute(select(pg_clock())).scalar_one()
    return utcnow()


def pg_clock():
    return func.timezone("UTC", func.clock_timestamp())
