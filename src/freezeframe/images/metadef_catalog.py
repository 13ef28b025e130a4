"""The metadata-definition catalog a new database starts with (migration 0009 loads it once, as
``glance-manage db load_metadefs`` does for Glance): the resource types, the image properties
Freezeframe's snapshot workflows write (``OS::Freezeframe::Workflow``) and those they read to
decide on quiescing (``OS::Freezeframe::Quiesce``). Later changes to it come with a migration of
their own; an operator's deletions stay deleted."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from freezeframe.common.timeutil import utcnow

IMAGE = "OS::Glance::Image"
RESOURCE_TYPES = [IMAGE, "OS::Cinder::Volume", "OS::Nova::Flavor", "OS::Nova::Server"]
WORKFLOW_STATES = ["PENDING", "LOCAL_SNAPSHOT_STARTED", "LOCAL_SNAPSHOT_COMPLETE", "UPLOAD_BEGIN",
                   "UPLOAD_COMPLETE", "IMAGE_ACTIVE", "FAILED", "REVERTED", "CANCELLED"]
_RO = {"readonly": True}


def _string(title: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "title": title, "description": description, **extra}


CATALOG: list[dict[str, Any]] = [
    {
        "namespace": "OS::Freezeframe::Workflow",
        "display_name": "Freezeframe snapshot workflow",
        "description": "Image properties written by Freezeframe's snapshot workflows (createImage, createBackup, "
                       "the instance-level and bare-metal snapshots): which workflow made the image, how far it "
                       "got, and what the snapshot holds. Reserved: only the workflows (role 'service') write them.",
        "visibility": "public", "protected": True,
        "resource_type_associations": [{"name": IMAGE}],
        "properties": {
            "os_freezeframe_workflow_id": _string("Workflow", "The workflow that makes this image (GET "
                                                  "/v1/workflows/{id}).", **_RO),
            "os_freezeframe_workflow_state": _string(
                "Workflow state", "The workflow's last state (UPLOAD_<n>_COMPLETE every 10% of the upload).",
                **_RO),
            "os_freezeframe_workflow_progress": _string("Workflow progress", "Percent done, 0 to 100.", **_RO),
            "os_freezeframe_workflow_last_state_change_at": _string(
                "Last state change", "When the workflow state last changed (ISO 8601, UTC).", **_RO),
            "os_freezeframe_workflow_owner": _string("Workflow owner", "The conductor running the workflow.",
                                                     **_RO),
            "os_freezeframe_snapshot_included": _string(
                "Devices included", "The devices the instance-level snapshot took (comma-separated).", **_RO),
            "os_freezeframe_snapshot_excluded": _string(
                "Devices excluded", "The server's devices it left out (comma-separated).", **_RO),
            "os_freezeframe_snapshot_quiesced": _string(
                "Quiesced", "Whether the guest's filesystems were frozen for the snapshot.",
                enum=["true", "false"], **_RO),
            "os_freezeframe_parent_image": _string(
                "Parent image", "The instance-level snapshot image this disk image belongs to.", **_RO),
            "os_freezeframe_child_images": _string(
                "Disk images", "The disk images (ids, comma-separated) deleted with this image.", **_RO),
            "os_freezeframe_device": _string("Device", "The server device this disk image was taken from.",
                                             **_RO),
        },
        "objects": [],
        "tags": [],
    },
    {
        "namespace": "OS::Freezeframe::Quiesce",
        "display_name": "Guest agent and quiescing",
        "description": "What a snapshot does with a server booted from the image: with the QEMU guest agent "
                       "the guest's filesystems are frozen for the snapshot (quiesced); os_require_quiesce "
                       "makes a snapshot fail (409) rather than be taken crash-consistent when the agent does "
                       "not answer.",
        "visibility": "public", "protected": True,
        "resource_type_associations": [{"name": IMAGE}],
        "properties": {
            "hw_qemu_guest_agent": {"type": "string", "title": "QEMU guest agent",
                                    "description": "The image has the QEMU guest agent: snapshots freeze the "
                                                   "guest's filesystems.", "enum": ["yes", "no"], "default": "no"},
            "os_require_quiesce": {"type": "string", "title": "Require quiescing",
                                   "description": "A snapshot must quiesce the guest or fail (409).",
                                   "enum": ["yes", "no"], "default": "no"},
        },
        "objects": [],
        "tags": [],
    },
]

namespaces = sa.table("metadef_namespaces", sa.column("id", sa.Integer), sa.column("namespace", sa.String),
                      sa.column("display_name", sa.String), sa.column("description", sa.Text),
                      sa.column("visibility", sa.String), sa.column("protected", sa.Boolean),
                      sa.column("owner", sa.String), sa.column("created_at", sa.DateTime),
                      sa.column("updated_at", sa.DateTime))
resource_types = sa.table("metadef_resource_types", sa.column("id", sa.Integer), sa.column("name", sa.String),
                          sa.column("protected", sa.Boolean), sa.column("created_at", sa.DateTime),
                          sa.column("updated_at", sa.DateTime))
associations = sa.table("metadef_namespace_resource_types", sa.column("namespace_id", sa.Integer),
                        sa.column("resource_type_id", sa.Integer), sa.column("prefix", sa.String),
                        sa.column("properties_target", sa.String), sa.column("created_at", sa.DateTime),
                        sa.column("updated_at", sa.DateTime))
properties = sa.table("metadef_properties", sa.column("namespace_id", sa.Integer), sa.column("name", sa.String),
                      sa.column("schema_json", sa.Text), sa.column("created_at", sa.DateTime),
                      sa.column("updated_at", sa.DateTime))


def seed(conn: sa.Connection) -> None:
    """Load what is missing of the catalog (by name: a second run adds nothing)."""
    now = utcnow()
    stamp = {"created_at": now, "updated_at": now}
    have = set(conn.scalars(sa.select(resource_types.c.name)))
    for name in RESOURCE_TYPES:
        if name not in have:
            conn.execute(resource_types.insert().values(name=name, protected=True, **stamp))
    type_ids = dict(conn.execute(sa.select(resource_types.c.name, resource_types.c.id)).all())
    for doc in CATALOG:
        if conn.scalar(sa.select(namespaces.c.id).where(namespaces.c.namespace == doc["namespace"])) is not None:
            continue
        conn.execute(namespaces.insert().values(
            namespace=doc["namespace"], display_name=doc["display_name"], description=doc["description"],
            visibility=doc["visibility"], protected=doc["protected"], owner=None, **stamp))
        ns_id = conn.scalar(sa.select(namespaces.c.id).where(namespaces.c.namespace == doc["namespace"]))
        for assoc in doc["resource_type_associations"]:
            conn.execute(associations.insert().values(namespace_id=ns_id, resource_type_id=type_ids[assoc["name"]],
                                                      prefix=assoc.get("prefix"),
                                                      properties_target=assoc.get("properties_target"), **stamp))
        for name, schema in doc["properties"].items():
            conn.execute(properties.insert().values(namespace_id=ns_id, name=name, schema_json=json.dumps(schema),
                                                    **stamp))
