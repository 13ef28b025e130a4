"""Image records: the image, its custom properties, tags, members and import tasks."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from freezeframe.common.timeutil import utcnow
from freezeframe.db.base import Base


class Image(Base):
    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(30), index=True)
    visibility: Mapped[str] = mapped_column(String(20), default="shared")
    protected: Mapped[bool] = mapped_column(Boolean, default=False)
    os_hidden: Mapped[bool] = mapped_column(Boolean, default=False)
    disk_format: Mapped[str | None] = mapped_column(String(20))
    container_format: Mapped[str | None] = mapped_column(String(20))
    size: Mapped[int | None] = mapped_column(BigInteger)
    virtual_size: Mapped[int | None] = mapped_column(BigInteger)
    checksum: Mapped[str | None] = mapped_column(String(32))
    os_hash_algo: Mapped[str | None] = mapped_column(String(64))
    os_hash_value: Mapped[str | None] = mapped_column(String(128))
    min_disk: Mapped[int] = mapped_column(Integer, default=0)
    min_ram: Mapped[int] = mapped_column(Integer, default=0)
    owner: Mapped[str | None] = mapped_column(String(255), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # When the status last changed (what the reaper's timeouts count from).
    status_changed_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # The upload (or stage) currently writing this image's data; cleared when it ends.
    upload_id: Mapped[str | None] = mapped_column(String(36))
    # Last time that upload made progress, and how far it got.
    upload_progress_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    upload_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # Where the data lives in the store (a store-relative key), once active.
    store_key: Mapped[str | None] = mapped_column(String(255))
    # What staging (PUT stage) measured, as JSON, kept for the import that follows.
    staged: Mapped[str | None] = mapped_column(Text)

    properties: Mapped[list["ImageProperty"]] = relationship(
        back_populates="image", cascade="all, delete-orphan", lazy="selectin"
    )
    tags: Mapped[list["ImageTag"]] = relationship(
        back_populates="image", cascade="all, delete-orphan", lazy="selectin", order_by="ImageTag.value"
    )

    __table_args__ = (
        Index("ix_images_created_at_id", "created_at", "id"),
        Index("ix_images_status_changed", "status", "status_changed_at"),
    )


class ImageProperty(Base):
    __tablename__ = "image_properties"

    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[str] = mapped_column(Text)

    image: Mapped[Image] = relationship(back_populates="properties")

    __table_args__ = (Index("ix_image_properties_name_value", "name", "value"),)


class ImageTag(Base):
    __tablename__ = "image_tags"

    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    value: Mapped[str] = mapped_column(String(255), primary_key=True)

    image: Mapped[Image] = relationship(back_populates="tags")


class ImageMember(Base):
    __tablename__ = "image_members"

    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    member: Mapped[str] = mapped_column(String(255), primary_key=True)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (Index("ix_image_members_member", "member"),)


class ImageTask(Base):
    """An import task (glance-direct), as shown at /v2/images/{id}/tasks."""

    __tablename__ = "image_tasks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(30), default="api_image_import")
    status: Mapped[str] = mapped_column(String(20), default="pending")
    input: Mapped[str] = mapped_column(Text, default="{}")
    result: Mapped[str | None] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str | None] = mapped_column(String(255))
    request_id: Mapped[str | None] = mapped_column(String(64))
    user_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
