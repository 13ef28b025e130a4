"""Issued tokens (identity v3). Only a token's hash is kept: a copy of the table issues nothing."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from freezeframe.db.base import Base


class IdentityToken(Base):
    __tablename__ = "identity_tokens"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)       # sha256 of the token, hex
    user_id: Mapped[str] = mapped_column(String(64), nullable=False)
    project_id: Mapped[str] = mapped_column(String(64), nullable=False)
    methods: Mapped[str] = mapped_column(String(255), nullable=False)   # comma-separated
    audit_id: Mapped[str] = mapped_column(String(32), nullable=False)
    app_credential_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    issued_at: Mapped[dt.datetime] = mapped_column(DateTime, nullable=False)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime, nullable=False, index=True)
