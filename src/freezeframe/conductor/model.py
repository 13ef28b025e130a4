"""Workflow records: what the API, the image and the server show; taskflow keeps the rest."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from freezeframe.common.timeutil import utcnow
from freezeframe.db.base import Base


class Workflow(Base):
    __tablename__ = "workflows"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(30))            # a registered kind (conductor/registry.py)
    state: Mapped[str] = mapped_column(String(40), index=True)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    last_state_change_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # The conductor running it (None while pending); liveness comes from the coordination backend.
    owner: Mapped[str | None] = mapped_column(String(255))
    # The owner's lease (conductor/lease.py): bumped by every take-over, checked by every write
    # a step makes; renewed by the owner every TTL/3 (the database's clock).
    fence: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    # The host the work is bound to (host-bound kinds: only a conductor serving it claims it).
    host: Mapped[str | None] = mapped_column(String(255), index=True)
    resource_type: Mapped[str] = mapped_column(String(30), default="server")
    resource_id: Mapped[str] = mapped_column(String(36), index=True)
    image_id: Mapped[str | None] = mapped_column(String(36))
    project_id: Mapped[str | None] = mapped_column(String(255), index=True)
    user_id: Mapped[str | None] = mapped_column(String(255))
    request_id: Mapped[str | None] = mapped_column(String(64))
    params: Mapped[str] = mapped_column(Text, default="{}")  # JSON given to the flow
    failure_reason: Mapped[str | None] = mapped_column(Text)
    last_good_state: Mapped[str | None] = mapped_column(String(40))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    logbook_id: Mapped[str | None] = mapped_column(String(36))
    flow_detail_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class WorkflowEvent(Base):
    __tablename__ = "workflow_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(40))
    progress: Mapped[int | None] = mapped_column(Integer)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    detail: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (Index("ix_workflow_events_workflow", "workflow_id", "id"),)
