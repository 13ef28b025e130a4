"""The image schema (served at /v2/schemas/image) and the checks made with it."""

from __future__ import annotations

import copy
from typing import Any, Mapping

import jsonschema

from freezeframe.common import errors
from freezeframe.common.strict import is_uuid

DISK_FORMATS = ["ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop"]
CONTAINER_FORMATS = ["ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed"]
VISIBILITIES = ["community", "public", "private", "shared"]
STATUSES = ["queued", "saving", "active", "killed", "deleted", "uploading", "importing",
            "pending_delete", "deactivated"]
UUID_PATTERN = "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"

# Attributes nobody may set; the service computes them.
READ_ONLY = frozenset({
    "status", "checksum", "os_hash_algo", "os_hash_value", "size", "virtual_size",
    "created_at", "updated_at", "self", "file", "schema", "direct_url", "locations", "stores",
})
# Prefixes of property names the service reserves. ``os_glance_`` as Glance does;
# ``os_freezeframe_`` carries the snapshot workflows' state, progress and last state change
# (seed 000 §2a) and is written only by the workflows themselves (role "service").
RESERVED_PREFIX = "os_glance_"
WORKFLOW_PREFIX = "os_freezeframe_"

# Columns of the images table a client can set (besides custom properties and tags).
CORE_WRITABLE = ("name", "visibility", "protected", "os_hidden", "disk_format",
                 "container_format", "min_disk", "min_ram", "owner")

_PROPERTIES: dict[str, Any] = {
    "id": {"type": "string", "description": "An identifier for the image", "pattern": UUID_PATTERN},
    "name": {"type": ["null", "string"], "maxLength": 255, "description": "Descriptive name for the image"},
    "status": {"type": "string", "readOnly": True, "enum": STATUSES, "description": "Status of the image"},
    "visibility": {"type": "string", "enum": VISIBILITIES, "description": "Scope of image accessibility"},
    "protected": {"type": "boolean", "description": "If true, image will not be deletable."},
    "os_hidden": {"type": "boolean", "description": "If true, image will not appear in default image list response."},
    "checksum": {"type": ["null", "string"], "readOnly": True, "maxLength": 32,
                 "description": "md5 hash of image contents."},
    "os_hash_algo": {"type": ["null", "string"], "readOnly": True, "maxLength": 64,
                     "description": "Algorithm to calculate the os_hash_value"},
    "os_hash_value": {"type": ["null", "string"], "readOnly": True, "maxLength": 128,
                      "description": "Hexdigest of the image contents using the algorithm in os_hash_algo."},
    "owner": {"type": ["null", "string"], "maxLength": 255, "description": "Owner of the image"},
    "size": {"type": ["null", "integer"], "readOnly": True, "description": "Size of image file in bytes"},
    "virtual_size": {"type": ["null", "integer"], "readOnly": True, "description": "Virtual size of image in bytes"},
    "container_format": {"type": ["null", "string"], "enum": [None, *CONTAINER_FORMATS],
                         "description": "Format of the container"},
    "disk_format": {"type": ["null", "string"], "enum": [None, *DISK_FORMATS], "description": "Format of the disk"},
    "created_at": {"type": "string", "readOnly": True, "description": "Date and time of image registration"},
    "updated_at": {"type": "string", "readOnly": True, "description": "Date and time of the last image modification"},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 255}, "uniqueItems": True,
             "description": "List of strings related to the image"},
    "direct_url": {"type": "string", "readOnly": True},
    "min_ram": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1,
                "description": "Amount of ram (in MB) required to boot image."},
    "min_disk": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1,
                 "description": "Amount of disk space (in GB) required to boot image."},
    "self": {"type": "string", "readOnly": True},
    "file": {"type": "string", "readOnly": True},
    "stores": {"type": "string", "readOnly": True},
    "schema": {"type": "string", "readOnly": True},
    "locations": {"type": "array", "readOnly": True},
}

IMAGE_SCHEMA: dict[str, Any] = {
    "name": "image",
    "properties": _PROPERTIES,
    "additionalProperties": {"type": "string", "maxLength": 65535},
    "links": [
        {"rel": "self", "href": "{self}"},
        {"rel": "enclosure", "href": "{file}"},
        {"rel": "describedby", "href": "{schema}"},
    ],
}

IMAGES_SCHEMA: dict[str, Any] = {
    "name": "images",
    "properties": {
        "images": {"type": "array", "items": copy.deepcopy(IMAGE_SCHEMA)},
        "schema": {"type": "string"},
        "first": {"type": "string"},
        "next": {"type": "string"},
    },
    "links": [
        {"rel": "first", "href": "{first}"},
        {"rel": "next", "href": "{next}"},
        {"rel": "describedby", "href": "{schema}"},
    ],
}

MEMBER_SCHEMA: dict[str, Any] = {
    "name": "member",
    "properties": {
        "created_at": {"type": "string", "description": "Date and time of image member creation"},
        "image_id": {"type": "string", "pattern": UUID_PATTERN},
        "member_id": {"type": "string", "description": "An identifier for the image member (tenantId)"},
        "status": {"type": "string", "enum": ["pending", "accepted", "rejected"]},
        "updated_at": {"type": "string"},
        "schema": {"type": "string", "readOnly": True},
    },
}

MEMBERS_SCHEMA: dict[str, Any] = {
    "name": "members",
    "properties": {
        "members": {"type": "array", "items": MEMBER_SCHEMA},
        "schema": {"type": "string"},
    },
    "links": [{"rel": "self", "href": "{self}"}, {"rel": "describedby", "href": "{schema}"}],
}

_VALIDATOR = jsonschema.Draft4Validator({"type": "object", **IMAGE_SCHEMA})


def check_writable(attrs: Mapping[str, Any], *, service: bool) -> None:
    """403 for read-only attributes and reserved property names."""
    for key in attrs:
        if key in READ_ONLY:
            raise errors.Forbidden(f"Attribute '{key}' is read-only.")
        if key.startswith(RESERVED_PREFIX):
            raise errors.Forbidden(f"Attribute '{key}' is reserved.")
        if key.startswith(WORKFLOW_PREFIX) and not service:
            raise errors.Forbidden(
                f"Attribute '{key}' is reserved: it is set by the snapshot workflow that owns the image."
            )


def validate(attrs: Mapping[str, Any]) -> None:
    """400 with a message naming the attribute for values of the wrong type or range."""
    error = jsonschema.exceptions.best_match(_VALIDATOR.iter_errors(dict(attrs)))
    if error is None:
        for key in attrs:
            if not key or len(key) > 255:
                raise errors.Invalid(f"Property names must be 1 to 255 characters long: {key[:64]!r}")
        if "id" in attrs and not is_uuid(attrs["id"]):    # the pattern's '$' lets a trailing newline by
            raise errors.Invalid(f"Invalid value for 'id': {attrs['id'][:64]!r} is not a UUID")
        return
    where = "/".join(str(p) for p in error.absolute_path) or "image"
    raise errors.Invalid(f"Invalid value for '{where}': {error.message}")
