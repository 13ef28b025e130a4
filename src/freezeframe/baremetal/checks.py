"""What the bare-metal API takes from a client, checked as Ironic checks it (its messages where
they help): node and port bodies, logical names, MAC addresses, UUIDs, root device hints, and
Ironic's JSON patch (RFC 6902 with ``add``, ``replace`` and ``remove`` only). Every refusal is an
``errors.Invalid`` (400) naming the field; nothing here touches the database."""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonpatch
import jsonpointer

from freezeframe.common import errors
from freezeframe.common.strict import check_text, is_uuid, shown

MASK = "******"
# driver_info keys shown masked (Ironic masks what oslo's mask_dict_password masks).
_SECRET = re.compile(r"password|token|secret|passphrase|credential|private", re.IGNORECASE)
# Logical names (Ironic 1.10+): RFC 3986 unreserved characters.
_NAME = re.compile(r"^[A-Za-z0-9\-._~]{1,255}$")
_MAC = re.compile(r"^([0-9a-fA-F]{2})([:-][0-9a-fA-F]{2}){5}$")
PATCH_OPS = ("add", "replace", "remove")

# Root device hints (ironic-lib's): name -> type; strings compare with ``s==`` by default,
# others with ``==``; an operator may lead the value ("<in> a b", ">= 10", "<or> ...").
ROOT_HINTS: dict[str, type] = {
    "size": int, "model": str, "wwn": str, "serial": str, "vendor": str, "wwn_with_extension": str,
    "wwn_vendor_extension": str, "name": str, "rotational": bool, "hctl": str, "by_path": str, "tran": str,
}
_STR_OPS = ("s==", "s!=", "s>=", "s>", "s<=", "s<", "<in>", "<or>")
_NUM_OPS = ("==", "!=", ">=", ">", "<=", "<", "<or>")


def body_of(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise errors.Invalid(f"Invalid {what}: a JSON object is expected, not {type(body).__name__}")
    return body


def unknown_keys(body: dict[str, Any], allowed: set[str], what: str) -> None:
    extra = sorted(k for k in body if k not in allowed)
    if extra:
        shown_keys = ", ".join(repr(k) for k in extra[:5])
        raise errors.Invalid(f"Schema error for {what}: Additional properties are not allowed ({shown_keys} "
                             f"{'was' if len(extra) == 1 else 'were'} unexpected)")


def optional_text(value: Any, field: str, *, limit: int = 255) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise errors.Invalid(f"Invalid input for field/attribute {field}: {shown(value)} is not a string")
    check_text(field, value)
    if len(value) > limit:
        raise errors.Invalid(f"Invalid input for field/attribute {field}: longer than {limit} characters")
    return value


def name(value: Any) -> str | None:
    """A node's logical name (or None): unreserved URL characters, not a UUID (a UUID names a
    node by its id)."""
    if value is None:
        return None
    if not isinstance(value, str) or not _NAME.match(value) or is_uuid(value):
        raise errors.Invalid(f"Cannot use {shown(value)} as a node name: a logical name (letters, digits, "
                             "'-', '.', '_' and '~', at most 255, not a UUID) is expected")
    return value


def uuid_field(value: Any, field: str) -> str:
    if not is_uuid(value):
        raise errors.Invalid(f"Expected UUID for {field}: {shown(value)}")
    return value.lower()


def optional_uuid(value: Any, field: str) -> str | None:
    return None if value is None else uuid_field(value, field)


def mac(value: Any, field: str = "address") -> str:
    """A MAC address, as stored: lower case, colons."""
    if not isinstance(value, str) or not _MAC.match(value):
        raise errors.Invalid(f"Expected valid MAC address for {field}: {shown(value)}")
    return value.lower().replace("-", ":")


def json_object(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise errors.Invalid(f"Invalid input for field/attribute {field}: a JSON object is expected, not "
                             f"{shown(value)}")
    return value


def boolean(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "y", "on", "t"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "n", "off", "f"):
        return False
    raise errors.Invalid(f"Invalid input for field/attribute {field}: {shown(value)} is not a boolean")


def properties(value: Any) -> dict[str, Any]:
    """A node's properties, with its ``root_device`` hints checked (Ironic checks them only at
    deploy time; a wrong hint here would fail a snapshot late, so it is refused at once)."""
    props = json_object(value, "properties")
    if "root_device" in props:
        root_device_hints(props["root_device"], "properties/root_device")
    return props


def instance_info(value: Any) -> dict[str, Any]:
    info = json_object(value, "instance_info")
    if "root_device" in info:
        root_device_hints(info["root_device"], "instance_info/root_device")
    return info


def root_device_hints(hints: Any, where: str = "root_device") -> dict[str, Any]:
    if hints is None:
        return {}
    if not isinstance(hints, dict):
        raise errors.Invalid(f"Root device hints in {where} must be a JSON object, not {shown(hints)}")
    unknown = sorted(k for k in hints if k not in ROOT_HINTS)
    if unknown:
        raise errors.Invalid(f"No such root device hint(s) in {where}: {', '.join(map(repr, unknown))}. The "
                             f"supported ones: {', '.join(sorted(ROOT_HINTS))}")
    for key, value in hints.items():
        kind = ROOT_HINTS[key]
        if kind is bool:
            if isinstance(value, bool) or (isinstance(value, str) and value.strip().lower() in
                                           ("true", "false", "1", "0", "yes", "no", "on", "off")):
                continue
            raise errors.Invalid(f"Root device hint {key!r} in {where}: {shown(value)} is not a boolean")
        if kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                if value <= 0:
                    raise errors.Invalid(f"Root device hint 'size' in {where}: {value} is not a positive "
                                         "integer (GiB)")
                continue
            if isinstance(value, str) and _numeric_expression(value):
                continue
            raise errors.Invalid(f"Root device hint 'size' in {where}: {shown(value)} is not a positive integer "
                                 "(GiB) or an expression such as '>= 10'")
        if not isinstance(value, str) or not value.strip():
            raise errors.Invalid(f"Root device hint {key!r} in {where}: {shown(value)} is not a non-empty string")
        check_text(f"{where}/{key}", value)
    return hints


def _numeric_expression(text: str) -> bool:
    words = text.split()
    if not words:
        return False
    if words[0] in _NUM_OPS:
        words = words[1:]
        if not words:
            return False
    elif words[0] in _STR_OPS:
        return False
    return all(w.isascii() and w.isdigit() and int(w) > 0 for w in words if w != "<or>")


def mask(info: dict[str, Any]) -> dict[str, Any]:
    """``driver_info`` as shown: every secret ``******`` (recursively)."""
    def walk(value: Any, key: str = "") -> Any:
        if _SECRET.search(key) and value is not None and not isinstance(value, (dict, list)):
            return MASK
        if isinstance(value, dict):
            return {k: walk(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, key) for v in value]
        return value
    return walk(info)


# -- JSON patch -------------------------------------------------------------------------------

def patch_document(body: Any) -> list[dict[str, Any]]:
    """The patch as Ironic takes it: a list of ``{"op", "path", "value"?}`` with op add, replace
    or remove (``value`` required except for remove)."""
    if not isinstance(body, list):
        raise errors.Invalid(f"Schema error for patch: {shown(body)} is not of type 'array'")
    if not body:
        raise errors.Invalid("Schema error for patch: [] should be non-empty")
    for item in body:
        if not isinstance(item, dict):
            raise errors.Invalid(f"Schema error for patch: {shown(item)} is not of type 'object'")
        unknown_keys(item, {"op", "path", "value"}, "patch")
        if item.get("op") not in PATCH_OPS:
            raise errors.Invalid(f"Schema error for patch: {shown(item.get('op'))} is not one of "
                                 f"{list(PATCH_OPS)}")
        path = item.get("path")
        if not isinstance(path, str) or not re.match(r"^(/[\w~\-.%:@!$&'()*+,;=]+)+$", path):
            raise errors.Invalid(f"Schema error for patch: {shown(path)} is not a valid patch path (e.g. "
                                 "'/extra/foo')")
        if item["op"] != "remove" and "value" not in item:
            raise errors.Invalid(f"Schema error for patch: 'value' is a required property of {item['op']} "
                                 f"{path}")
    return body


def patch_roots(patch: list[dict[str, Any]]) -> set[str]:
    return {item["path"].split("/")[1].replace("~1", "/").replace("~0", "~") for item in patch}


def apply_patch(doc: dict[str, Any], patch: list[dict[str, Any]], patchable: tuple[str, ...]) -> dict[str, Any]:
    """``doc`` with ``patch`` applied (a copy); a path outside ``patchable`` or one the patch
    cannot apply to is a 400 naming it."""
    for item in patch:
        root = item["path"].split("/")[1]
        if root not in patchable:
            raise errors.Invalid(f"Cannot patch {item['path']}. Only the following can be updated: "
                                 f"{', '.join(patchable)}")
        if item["op"] == "remove" and item["path"].count("/") == 1 and root in _REQUIRED:
            raise errors.Invalid(f"'{item['path']}' is a mandatory attribute and can not be removed")
    try:
        patched = jsonpatch.apply_patch(copy.deepcopy(doc), patch)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError, ValueError,
            IndexError, KeyError) as exc:
        raise errors.Invalid(f"Couldn't apply patch {shown(patch, 120)}. Reason: {exc}") from None
    return patched


_REQUIRED = ("driver",)
