"""Volumes, volume snapshots, attachments and the snapshots' admin metadata, with Cinder's words.

``snapshot_admin_metadata`` is seed 002's table: what the volume manager and compute tell each
other about an assisted snapshot (``compute_snapshot_status``, the files involved, compute's
progress) lives there, one row per key, readable by admins only — never in ``progress``.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from freezeframe.common.timeutil import utcnow
from freezeframe.db.base import Base


class Volume(Base):
    __tablename__ = "volumes"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    project_id: Mapped[str | None] = mapped_column(String(255), index=True)
    user_id: Mapped[str | None] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(Integer)                   # GiB
    status: Mapped[str] = mapped_column(String(30), index=True)
    attach_status: Mapped[str] = mapped_column(String(30), default="detached")
    availability_zone: Mapped[str] = mapped_column(String(255), default="nova")
    volume_type: Mapped[str] = mapped_column(String(255), default="__DEFAULT__")
    bootable: Mapped[bool] = mapped_column(Boolean, default=False)
    readonly: Mapped[bool] = mapped_column(Boolean, default=False)
    snapshot_id: Mapped[str | None] = mapped_column(String(36))   # created from this snapshot
    source_volid: Mapped[str | None] = mapped_column(String(36))  # created from this volume
    image_id: Mapped[str | None] = mapped_column(String(36))      # created from this image
    # The volume host whose driver holds its data (``volume.host``); None until placed.
    host: Mapped[str | None] = mapped_column(String(255))
    # What the driver keeps about where the data is (JSON: e.g. the active file's name, format).
    provider_location: Mapped[str | None] = mapped_column(Text)
    metadata_json: Mapped[str] = mapped_column(Text, default="{}")
    # Image properties a bootable volume carries (Cinder's volume_glance_metadata), as JSON.
    image_metadata_json: Mapped[str] = mapped_column(Text, default="{}")
    fault: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    status_changed_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class VolumeSnapshot(Base):
    __tablename__ = "volume_snapshots"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    volume_id: Mapped[str] = mapped_column(ForeignKey("volumes.id"), index=True)
    name: Mapped[str | None] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    project_id: Mapped[str | None] = mapped_column(String(255), index=True)
    user_id: Mapped[str | None] = mapped_column(String(255))
    volume_size: Mapped[int] = mapped_column(Integer)             # GiB, the volume's at the time
    status: Mapped[str] = mapped_column(String(30), index=True)
    progress: Mapped[str] = mapped_column(String(10), default="0%")
    metadata_json: Mapped[str] = mapped_column(Text, default="{}")
    # An image that references this snapshot in its block_device_mapping (seed 003): the
    # snapshot may not be deleted while it does.
    owner_image_id: Mapped[str | None] = mapped_column(String(36), index=True)
    fault: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    status_changed_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class SnapshotAdminMetadata(Base):
    """Seed 002: one row per key of a snapshot's admin metadata (``compute_snapshot_status``,
    ``compute_progress``, ``compute_error``, the driver's file names...)."""
    __tablename__ = "snapshot_admin_metadata"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    snapshot_id: Mapped[str] = mapped_column(ForeignKey("volume_snapshots.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    value: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("snapshot_id", "key", name="uq_snapshot_admin_metadata_key"),)


class VolumeAttachment(Base):
    """Cinder's attachment records (the 3.27+ attachments API): reserved, then attaching with a
    connector, then attached; deleted when detached."""
    __tablename__ = "volume_attachments"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    volume_id: Mapped[str] = mapped_column(ForeignKey("volumes.id"), index=True)
    instance_uuid: Mapped[str | None] = mapped_column(String(36), index=True)
    attach_status: Mapped[str] = mapped_column(String(30))
    attach_mode: Mapped[str] = mapped_column(String(4), default="rw")
    mountpoint: Mapped[str | None] = mapped_column(String(255))
    attached_host: Mapped[str | None] = mapped_column(String(255))
    connector_json: Mapped[str | None] = mapped_column(Text)
    connection_info_json: Mapped[str | None] = mapped_column(Text)
    attach_time: Mapped[dt.datetime | None] = mapped_column(DateTime)
    detach_time: Mapped[dt.datetime | None] = mapped_column(DateTime)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    __table_args__ = (Index("ix_volume_attachments_status", "volume_id", "attach_status"),)

