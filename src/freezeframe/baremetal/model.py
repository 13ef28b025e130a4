"""Bare-metal nodes, their ports and the transfer credentials of node snapshots, with Ironic's words.

A node's ``provision_state`` moves only through ``baremetal.states`` (one table, one transition
function); ``reservation`` is the conductor that holds the node while it works on it (Ironic's
node lock: another conductor's verb is a 409 until it is released). The agent's per-node token
is kept out of ``driver_internal_info`` (never shown, not even masked: its own column) and is
wiped at the end or failure of every operation and on power off / reboot, as Ironic does.

``baremetal_transfers`` holds one row per snapshot operation that streams into the WebDAV area:
its own user name, the sha256 of its password and its own path, so the WebDAV server of any
conductor that serves the area can check a request without holding the secret.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from freezeframe.common.timeutil import utcnow
from freezeframe.db.base import Base


class Node(Base):
    __tablename__ = "baremetal_nodes"
    __table_args__ = (UniqueConstraint("name", name="uq_baremetal_nodes_name"),
                      UniqueConstraint("instance_uuid", name="uq_baremetal_nodes_instance_uuid"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True)           # the node's uuid
    name: Mapped[str | None] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    driver: Mapped[str] = mapped_column(String(255))
    # The hardware interfaces this node uses (names registered in baremetal.drivers).
    power_interface: Mapped[str] = mapped_column(String(255))
    boot_interface: Mapped[str] = mapped_column(String(255))
    snapshot_interface: Mapped[str] = mapped_column(String(255))
    # Ironic's other interfaces, kept as the client set them (shown; none does anything here).
    other_interfaces_json: Mapped[str] = mapped_column(Text, default="{}")
    provision_state: Mapped[str] = mapped_column(String(20), index=True)
    target_provision_state: Mapped[str | None] = mapped_column(String(20))
    provision_updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    power_state: Mapped[str | None] = mapped_column(String(20))
    target_power_state: Mapped[str | None] = mapped_column(String(20))
    last_error: Mapped[str | None] = mapped_column(Text)
    maintenance: Mapped[bool] = mapped_column(Boolean, default=False)
    maintenance_reason: Mapped[str | None] = mapped_column(Text)
    reservation: Mapped[str | None] = mapped_column(String(255))           # conductor holding it
    conductor_group: Mapped[str] = mapped_column(String(255), default="")
    resource_class: Mapped[str | None] = mapped_column(String(80))
    owner: Mapped[str | None] = mapped_column(String(255))
    lessee: Mapped[str | None] = mapped_column(String(255))
    instance_uuid: Mapped[str | None] = mapped_column(String(36))
    properties_json: Mapped[str] = mapped_column(Text, default="{}")
    instance_info_json: Mapped[str] = mapped_column(Text, default="{}")
    driver_info_json: Mapped[str] = mapped_column(Text, default="{}")
    driver_internal_info_json: Mapped[str] = mapped_column(Text, default="{}")
    extra_json: Mapped[str] = mapped_column(Text, default="{}")
    # The agent: its token (minted at the first lookup of an operation), where it listens, what
    # it said last (agent_status + progress of its command, JSON) and when.
    agent_token: Mapped[str | None] = mapped_column(String(255))
    agent_url: Mapped[str | None] = mapped_column(String(255))
    agent_version: Mapped[str | None] = mapped_column(String(64))
    agent_last_heartbeat: Mapped[dt.datetime | None] = mapped_column(DateTime)
    agent_status_json: Mapped[str] = mapped_column(Text, default="{}")
    # The snapshot in progress or last run: its image and its conductor workflow.
    snapshot_image_id: Mapped[str | None] = mapped_column(String(36))
    snapshot_workflow_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class Port(Base):
    """A node's network port (its MAC address): the agent's lookup finds its node by these."""
    __tablename__ = "baremetal_ports"
    __table_args__ = (UniqueConstraint("address", name="uq_baremetal_ports_address"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("baremetal_nodes.id"), index=True)
    address: Mapped[str] = mapped_column(String(18))            # lower-case MAC
    extra_json: Mapped[str] = mapped_column(Text, default="{}")
    pxe_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class Transfer(Base):
    """One node snapshot's place in the WebDAV area and the credential that may write there."""
    __tablename__ = "baremetal_transfers"
    __table_args__ = (UniqueConstraint("username", name="uq_baremetal_transfers_username"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)            # = the workflow id
    node_id: Mapped[str] = mapped_column(ForeignKey("baremetal_nodes.id"), index=True)
    username: Mapped[str] = mapped_column(String(64))
    password_sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(255))                           # relative to the area
    size: Mapped[int] = mapped_column(BigInteger, default=0)                  # the disk's, once known
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # Set when the intermediate copy is removed (success, abort, deleted, or the reaper).
    removed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
