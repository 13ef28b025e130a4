"""The heartbeat table: ``/healthcheck`` proves the database takes writes by bumping a row."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from freezeframe.db.base import Base


class HealthHeartbeat(Base):
    __tablename__ = "health_heartbeat"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)     # the host
    beat_at: Mapped[dt.datetime] = mapped_column(DateTime, nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    beats: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
