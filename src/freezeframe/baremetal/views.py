"""Ironic's bodies for nodes, ports, states, validation and the version documents, by
microversion (fields appear from the version that added them, as Ironic's VERSIONED_FIELDS)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from freezeframe.baremetal import checks
from freezeframe.baremetal.model import Node, Port

SNAPSHOT_VERSION = (1, 116)     # Freezeframe's: the snapshot verb and snapshot_interface
# Ironic's other hardware interfaces: shown with the hardware type's defaults; none does
# anything here (Freezeframe neither deploys, cleans, inspects nor manages RAID or BIOS).
OTHER_INTERFACES = ("bios", "console", "deploy", "firmware", "inspect", "management", "network", "raid", "rescue",
                    "storage", "vendor")
_FAKE_OTHERS = {"bios": "no-bios", "console": "no-console", "deploy": "fake", "firmware": "no-firmware",
                "inspect": "no-inspect", "management": "fake", "network": "noop", "raid": "no-raid",
                "rescue": "no-rescue", "storage": "noop", "vendor": "no-vendor"}
OTHER_DEFAULTS: dict[str, dict[str, str]] = {
    "fake-hardware": _FAKE_OTHERS,
    "redfish": {**_FAKE_OTHERS, "deploy": "direct", "management": "redfish"},
}
# Fields and the minor version that added them (Ironic's VERSIONED_FIELDS, those shown here).
VERSIONED = {
    "driver_internal_info": 3, "name": 5, "inspection_finished_at": 6, "inspection_started_at": 6, "clean_step": 7,
    "raid_config": 12, "target_raid_config": 12, "network_interface": 20, "resource_class": 21,
    "storage_interface": 33, "traits": 37, "rescue_interface": 38, "bios_interface": 40, "fault": 42,
    "deploy_step": 44, "conductor_group": 46, "automated_clean": 47, "protected": 48, "protected_reason": 48,
    "conductor": 49, "owner": 50, "description": 51, "allocation_uuid": 52, "retired": 61, "retired_reason": 61,
    "lessee": 65, "network_data": 66, "boot_mode": 75, "secure_boot": 75, "shard": 82, "parent_node": 83,
    "firmware_interface": 86, "service_step": 87, "disable_power_off": 95, "instance_name": 104, "health": 109,
    "snapshot_interface": 116,
    **{f"{i}_interface": 31 for i in ("boot", "console", "deploy", "inspect", "management", "power", "raid",
                                      "vendor")},
}
LIST_FIELDS = ("uuid", "instance_uuid", "maintenance", "power_state", "provision_state", "name")
NODE_FIELDS = (
    "uuid", "created_at", "updated_at", "automated_clean", "bios_interface", "boot_interface", "boot_mode",
    "clean_step", "conductor_group", "console_enabled", "console_interface", "disable_power_off",
    "deploy_interface", "deploy_step", "description", "driver", "driver_info", "driver_internal_info", "extra",
    "fault", "firmware_interface", "health", "inspection_finished_at", "inspection_started_at", "inspect_interface",
    "instance_info", "instance_name", "instance_uuid", "last_error", "lessee", "maintenance", "maintenance_reason",
    "management_interface", "name", "network_data", "network_interface", "owner", "parent_node", "power_interface",
    "power_state", "properties", "protected", "protected_reason", "provision_state", "provision_updated_at",
    "raid_config", "raid_interface", "rescue_interface", "reservation", "resource_class", "retired",
    "retired_reason", "secure_boot", "service_step", "shard", "snapshot_interface", "storage_interface",
    "target_power_state", "target_provision_state", "target_raid_config", "traits", "vendor_interface", "links",
    "conductor", "allocation_uuid", "chassis_uuid", "ports", "states", "portgroups", "volume",
)
PORT_FIELDS = ("uuid", "created_at", "updated_at", "address", "extra", "internal_info", "is_smartnic",
               "local_link_connection", "physical_network", "pxe_enabled", "node_uuid", "name", "description",
               "vendor", "category", "available_for_dynamic_portgroup", "links", "portgroup_uuid")


def allowed(field: str, version) -> bool:
    minor = VERSIONED.get(field)
    return minor is None or version >= (1, minor)


def node_fields(version) -> tuple[str, ...]:
    """The fields a node has at ``version`` (what ``fields=`` may name)."""
    return tuple(f for f in NODE_FIELDS if allowed(f, version))


def links(base: str, kind: str, ident: str, sub: str = "") -> list[dict[str, str]]:
    root = base.rsplit("/v1", 1)[0]
    return [{"href": f"{base}/{kind}/{ident}{sub}", "rel": "self"},
            {"href": f"{root}/{kind}/{ident}{sub}", "rel": "bookmark"}]


def other_interfaces(node: Node) -> dict[str, str]:
    chosen = json.loads(node.other_interfaces_json or "{}")
    defaults = OTHER_DEFAULTS.get(node.driver, _FAKE_OTHERS)
    return {i: chosen.get(i) or defaults[i] for i in OTHER_INTERFACES}


def node_view(node: Node, base: str, version, *, conductor: str | None, fields: list[str] | None = None,
              summary: bool = False) -> dict[str, Any]:
    others = other_interfaces(node)
    full: dict[str, Any] = {
        "uuid": node.id, "created_at": _time(node.created_at), "updated_at": _time(node.updated_at),
        "automated_clean": None, "bios_interface": others["bios"], "boot_interface": node.boot_interface,
        "boot_mode": None, "clean_step": {}, "conductor_group": node.conductor_group or "", "console_enabled": False,
        "console_interface": others["console"], "disable_power_off": False, "deploy_interface": others["deploy"],
        "deploy_step": {}, "description": node.description, "driver": node.driver,
        "driver_info": checks.mask(_load(node.driver_info_json)),
        "driver_internal_info": _load(node.driver_internal_info_json), "extra": _load(node.extra_json),
        "fault": None, "firmware_interface": others["firmware"], "health": None, "inspection_finished_at": None,
        "inspection_started_at": None, "inspect_interface": others["inspect"],
        "instance_info": _load(node.instance_info_json), "instance_name": None, "instance_uuid": node.instance_uuid,
        "last_error": node.last_error, "lessee": node.lessee, "maintenance": bool(node.maintenance),
        "maintenance_reason": node.maintenance_reason, "management_interface": others["management"],
        "name": node.name, "network_data": {}, "network_interface": others["network"], "owner": node.owner,
        "parent_node": None, "power_interface": node.power_interface, "power_state": node.power_state,
        "properties": _load(node.properties_json), "protected": False, "protected_reason": None,
        "provision_state": node.provision_state, "provision_updated_at": _time(node.provision_updated_at),
        "raid_config": {}, "raid_interface": others["raid"], "rescue_interface": others["rescue"],
        "reservation": node.reservation, "resource_class": node.resource_class, "retired": False,
        "retired_reason": None, "secure_boot": None, "service_step": {}, "shard": None,
        "snapshot_interface": node.snapshot_interface, "storage_interface": others["storage"],
        "target_power_state": node.target_power_state, "target_provision_state": node.target_provision_state,
        "target_raid_config": {}, "traits": [], "vendor_interface": others["vendor"],
        "links": links(base, "nodes", node.id), "conductor": conductor, "allocation_uuid": None,
        "chassis_uuid": None,
        "ports": links(base, "nodes", node.id, "/ports"), "states": links(base, "nodes", node.id, "/states"),
        "portgroups": links(base, "nodes", node.id, "/portgroups"),
        "volume": links(base, "nodes", node.id, "/volume"),
    }
    wanted = fields if fields is not None else (LIST_FIELDS if summary else None)
    body = {k: v for k, v in full.items() if allowed(k, version) and (wanted is None or k in wanted)}
    if wanted is not None:
        body["links"] = full["links"]
    return body


def states_view(node: Node, version) -> dict[str, Any]:
    body = {"console_enabled": False, "last_error": node.last_error, "power_state": node.power_state,
            "provision_state": node.provision_state, "target_power_state": node.target_power_state,
            "target_provision_state": node.target_provision_state,
            "provision_updated_at": _time(node.provision_updated_at)}
    if version >= (1, 12):
        body.update(raid_config={}, target_raid_config={})
    if version >= (1, 75):
        body.update(boot_mode=None, secure_boot=None)
    return body


def port_view(port: Port, base: str, version, *, fields: list[str] | None = None,
              summary: bool = False) -> dict[str, Any]:
    full: dict[str, Any] = {
        "uuid": port.id, "created_at": _time(port.created_at), "updated_at": _time(port.updated_at),
        "address": port.address, "extra": _load(port.extra_json), "internal_info": {}, "is_smartnic": False,
        "local_link_connection": {}, "physical_network": None, "pxe_enabled": bool(port.pxe_enabled),
        "node_uuid": port.node_id, "name": None, "description": None, "vendor": None, "category": None,
        "available_for_dynamic_portgroup": True, "links": links(base, "ports", port.id), "portgroup_uuid": None,
    }
    port_versions = {"internal_info": 18, "local_link_connection": 19, "pxe_enabled": 19, "portgroup_uuid": 24,
                     "physical_network": 34, "is_smartnic": 53, "name": 88, "description": 97, "vendor": 100,
                     "category": 101, "available_for_dynamic_portgroup": 111}
    wanted = fields if fields is not None else (("uuid", "address") if summary else None)
    body = {k: v for k, v in full.items()
            if version >= (1, port_versions.get(k, 1)) and (wanted is None or k in wanted)}
    if wanted is not None:
        body["links"] = full["links"]
    return body


def port_fields(version) -> tuple[str, ...]:
    return PORT_FIELDS


def lookup_view(node: Node, base: str, token: str, heartbeat_timeout: float) -> dict[str, Any]:
    """What the agent gets at lookup (Ironic's restricted node view and its config)."""
    return {"node": {"uuid": node.id, "properties": _load(node.properties_json),
                     "instance_info": _load(node.instance_info_json),
                     "driver_internal_info": _load(node.driver_internal_info_json),
                     "links": links(base, "nodes", node.id)},
            "config": {"heartbeat_timeout": heartbeat_timeout, "agent_token": token,
                       "agent_token_required": True, "agent_md5_checksum_enable": False,
                       "disable_deep_image_inspection": False, "permitted_image_formats": ["raw", "qcow2", "iso"]}}


def version_document(root: str, minimum: str, maximum: str) -> dict[str, Any]:
    return {"id": "v1", "links": [{"href": f"{root}/v1/", "rel": "self"}], "status": "CURRENT",
            "min_version": minimum, "version": maximum}


def root_document(root: str, minimum: str, maximum: str) -> dict[str, Any]:
    doc = version_document(root, minimum, maximum)
    return {"name": "OpenStack Ironic API (Freezeframe)",
            "description": "Ironic is an OpenStack project which enables the provision and management of baremetal "
                           "machines.", "default_version": doc, "versions": [doc]}


def v1_document(root: str, minimum: str, maximum: str) -> dict[str, Any]:
    base = f"{root}/v1"
    doc: dict[str, Any] = {
        "id": "v1",
        "links": [{"href": f"{base}/", "rel": "self"},
                  {"href": "https://docs.openstack.org//ironic/latest/contributor//webapi.html",
                   "rel": "describedby", "type": "text/html"}],
        "media_types": {"base": "application/json", "type": "application/vnd.openstack.ironic.v1+json"},
    }
    for kind in ("nodes", "ports", "lookup", "heartbeat"):
        doc[kind] = [{"href": f"{base}/{kind}/", "rel": "self"}, {"href": f"{root}/{kind}/", "rel": "bookmark"}]
    doc["version"] = version_document(root, minimum, maximum)
    return doc


def _load(text: str | None) -> Any:
    return json.loads(text) if text else {}


def _time(value) -> str | None:
    """Ironic's timestamps: ``2026-12-01T09:58:59.359210+00:00`` (stored as naive UTC)."""
    if value is None:
        return None
    return (value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)).isoformat()
