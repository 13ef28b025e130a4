"""Metadata definitions (Glance's "metadefs"): a catalog of the properties, objects and tags
that images (and other resource types) may carry, grouped in namespaces. Tables as Glance's,
without its soft-delete columns: a deleted definition is gone."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from freezeframe.common.timeutil import utcnow
from freezeframe.db.base import Base


class MetadefNamespace(Base):
    __tablename__ = "metadef_namespaces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    namespace: Mapped[str] = mapped_column(String(80), unique=True)
    display_name: Mapped[str | None] = mapped_column(String(80))
    description: Mapped[str | None] = mapped_column(Text)
    visibility: Mapped[str] = mapped_column(String(32), default="private")
    protected: Mapped[bool] = mapped_column(Boolean, default=False)
    owner: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class MetadefResourceType(Base):
    __tablename__ = "metadef_resource_types"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    # Glance's seeded types are protected: no API deletes a resource type itself.
    protected: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class MetadefAssociation(Base):
    """A namespace applies to a resource type (with the prefix its properties take there)."""

    __tablename__ = "metadef_namespace_resource_types"

    namespace_id: Mapped[int] = mapped_column(ForeignKey("metadef_namespaces.id"), primary_key=True)
    resource_type_id: Mapped[int] = mapped_column(ForeignKey("metadef_resource_types.id"), primary_key=True)
    prefix: Mapped[str | None] = mapped_column(String(80))
    properties_target: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class MetadefObject(Base):
    __tablename__ = "metadef_objects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("metadef_namespaces.id"))
    name: Mapped[str] = mapped_column(String(80))
    description: Mapped[str | None] = mapped_column(Text)
    required_json: Mapped[str] = mapped_column(Text, default="[]")
    properties_json: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("namespace_id", "name", name="uq_metadef_objects_namespace_id_name"),)


class MetadefProperty(Base):
    __tablename__ = "metadef_properties"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("metadef_namespaces.id"))
    name: Mapped[str] = mapped_column(String(80))
    # The property's JSON schema (type, title, enum, ...), as sent.
    schema_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("namespace_id", "name", name="uq_metadef_properties_namespace_id_name"),)


class MetadefTag(Base):
    __tablename__ = "metadef_tags"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("metadef_namespaces.id"))
    name: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("namespace_id", "name", name="uq_metadef_tags_namespace_id_name"),)
