"""Servers (instances) and their actions, with Nova's words."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from freezeframe.common.timeutil import utcnow
from freezeframe.db.base import Base


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    project_id: Mapped[str | None] = mapped_column(String(255), index=True)
    user_id: Mapped[str | None] = mapped_column(String(255))
    vm_state: Mapped[str] = mapped_column(String(30))
    task_state: Mapped[str | None] = mapped_column(String(40))
    power_state: Mapped[str] = mapped_column(String(20), default="nostate")
    flavor_id: Mapped[str] = mapped_column(String(36))
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    root_gb: Mapped[int] = mapped_column(Integer)
    image_ref: Mapped[str | None] = mapped_column(String(36))
    domain_name: Mapped[str] = mapped_column(String(255), unique=True)
    # The compute host the server lives on (``compute.host``); host-bound work on it goes there.
    host: Mapped[str | None] = mapped_column(String(255), index=True)
    root_disk: Mapped[str | None] = mapped_column(Text)      # host path of the root disk
    root_target: Mapped[str] = mapped_column(String(20), default="vda")
    adopted: Mapped[bool] = mapped_column(Boolean, default=False)
    guest_agent: Mapped[bool] = mapped_column(Boolean, default=False)
    # A bare-metal server (Nova's Ironic driver: instance.node): the node it is; None for a VM.
    node: Mapped[str | None] = mapped_column(String(36), index=True)
    metadata_json: Mapped[str] = mapped_column(Text, default="{}")
    # Image properties a snapshot inherits (image_* system metadata in Nova), as JSON.
    system_metadata: Mapped[str] = mapped_column(Text, default="{}")
    fault: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class InstanceAction(Base):
    __tablename__ = "instance_actions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    instance_uuid: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    action: Mapped[str] = mapped_column(String(40))
    request_id: Mapped[str] = mapped_column(String(64))
    project_id: Mapped[str | None] = mapped_column(String(255))
    user_id: Mapped[str | None] = mapped_column(String(255))
    start_time: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finish_time: Mapped[dt.datetime | None] = mapped_column(DateTime)
    message: Mapped[str | None] = mapped_column(Text)
    workflow_id: Mapped[str | None] = mapped_column(String(36))

    __table_args__ = (Index("ix_instance_actions_instance", "instance_uuid", "start_time"),)


class InstanceActionEvent(Base):
    __tablename__ = "instance_action_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    action_id: Mapped[int] = mapped_column(ForeignKey("instance_actions.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(60))
    start_time: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finish_time: Mapped[dt.datetime | None] = mapped_column(DateTime)
    result: Mapped[str | None] = mapped_column(String(20))
    details: Mapped[str | None] = mapped_column(Text)


class BlockDeviceMapping(Base):
    """A server's disks other than its root image disk, with Nova's BDM v2 words: an attached
    volume (``source_type`` volume, ``destination_type`` volume), or a local disk
    (``destination_type`` local). ``connection_info`` is the volume service's, refreshed
    after an online snapshot so a stop/start opens the active file."""
    __tablename__ = "block_device_mappings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    instance_uuid: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), index=True)
    device_name: Mapped[str] = mapped_column(String(20))          # "vdb" (the guest's target)
    source_type: Mapped[str] = mapped_column(String(20))          # volume | image | blank | snapshot
    destination_type: Mapped[str] = mapped_column(String(20))     # volume | local
    boot_index: Mapped[int | None] = mapped_column(Integer)
    volume_id: Mapped[str | None] = mapped_column(String(36), index=True)
    attachment_id: Mapped[str | None] = mapped_column(String(36))
    volume_size: Mapped[int | None] = mapped_column(Integer)
    disk_path: Mapped[str | None] = mapped_column(Text)           # a local disk's file on the host
    connection_info: Mapped[str | None] = mapped_column(Text)     # JSON
    tag: Mapped[str | None] = mapped_column(String(255))
    delete_on_termination: Mapped[bool] = mapped_column(Boolean, default=False)
    # attaching -> attached; detaching -> (row deleted)
    status: Mapped[str] = mapped_column(String(20), default="attaching")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (Index("ux_bdm_instance_device", "instance_uuid", "device_name", unique=True),)
