"""Nova's read-only catalog of what may be asked for: flavors (list, detail, show, with
``minDisk``/``minRam``/``is_public`` filters, sort and ``marker``/``limit`` paging), availability
zones (``os-availability-zone``, ``/detail`` for admins) and the project's absolute limits
(``/limits``), in Nova's shapes by microversion (nova/api/openstack/compute/views/flavors.py,
limits.py, availability_zone.py)."""

from __future__ import annotations

from typing import Any, Iterable

from starlette.datastructures import QueryParams

from freezeframe.common import errors
from freezeframe.common.strict import INT32_MAX, is_uint_text, parse_uint, shown
from freezeframe.compute.listing import AVAILABILITY_ZONE, MAX_LIMIT, bool_param
from freezeframe.compute.service import FLAVORS, MAX_METADATA_ITEMS, Flavor

# Flavor sort keys (Nova's flavors schema: sort_key enum) to a flavor's attribute.
FLAVOR_SORT = {"created_at": "id", "description": None, "disabled": None, "ephemeral_gb": None,
               "flavorid": "id", "id": "id", "is_public": None, "memory_mb": "ram", "name": "name",
               "root_gb": "disk", "rxtx_factor": None, "swap": None, "updated_at": None, "vcpu_weight": None,
               "vcpus": "vcpus"}


def _int_filter(name: str, value: str) -> int:
    text = value.strip()
    negative = text.startswith("-")
    if not is_uint_text(text.lstrip("-")):
        raise errors.Invalid(f"Invalid {name} filter [{value[:40]}]")
    number = int(text.lstrip("-"))
    return -number if negative else number


def list_flavors(params: QueryParams, *, is_admin: bool) -> list[Flavor]:
    """Nova's ``_get_flavors``: every flavor here is public and enabled, so ``is_public``
    (``true``, ``false``, ``none``; admins only) shows all or none of them; ``minRam``/``minDisk``
    keep the flavors at least that big; ``sort_key``/``sort_dir`` (default ``flavorid`` asc);
    ``marker`` a flavor id (400 if there is none), ``limit`` capped at 1000."""
    flavors: list[Flavor] = list(FLAVORS.values())
    if is_admin and "is_public" in params:
        raw = params["is_public"]
        if raw.strip().lower() != "none":
            try:
                public = bool_param("is_public", raw)
            except errors.Invalid:
                raise errors.Invalid(f"Invalid is_public filter [{raw[:40]}]") from None
            if not public:
                flavors = []
    if "minRam" in params:
        least = _int_filter("minRam", params["minRam"])
        flavors = [f for f in flavors if f.ram >= least]
    if "minDisk" in params:
        least = _int_filter("minDisk", params["minDisk"])
        flavors = [f for f in flavors if f.disk >= least]
    if "name" in params:
        flavors = [f for f in flavors if f.name == params["name"]]
    sort_key = params.get("sort_key") or "flavorid"
    sort_dir = params.get("sort_dir") or "asc"
    if sort_key not in FLAVOR_SORT:
        raise errors.Invalid(f"Invalid input for query parameters sort_key. Value: {shown(sort_key)}.")
    if sort_dir not in ("asc", "desc"):
        raise errors.Invalid(f"Invalid input for query parameters sort_dir. Value: {shown(sort_dir)}.")
    attr = FLAVOR_SORT[sort_key]

    def key(f: Flavor) -> tuple[Any, str]:
        return (getattr(f, attr) if attr else 0, f.id)
    ordered = sorted(FLAVORS.values(), key=key, reverse=sort_dir == "desc")
    if "marker" in params:
        marker = FLAVORS.get(params["marker"])
        if marker is None:
            raise errors.Invalid(f"marker [{params['marker']}] not found")
        ordered = ordered[ordered.index(marker) + 1:]
    limit = requested_limit(params)
    keep = {f.id for f in flavors}
    return [f for f in ordered if f.id in keep][:limit]


def flavor_view(f: Flavor, version: tuple[int, int], base: str, *, detail: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"id": f.id, "name": f.name, "links": [
        {"rel": "self", "href": f"{base}/v2.1/flavors/{f.id}"}, {"rel": "bookmark", "href": f"{base}/flavors/{f.id}"}]}
    if detail:
        body.update({"ram": f.ram, "disk": f.disk, "swap": 0 if version >= (2, 75) else "",
                     "OS-FLV-EXT-DATA:ephemeral": 0, "vcpus": f.vcpus, "os-flavor-access:is_public": True})
        if version < (2, 102):
            body.update({"OS-FLV-DISABLED:disabled": False, "rxtx_factor": 1.0})
        if version >= (2, 61):
            body["extra_specs"] = {}
    if version >= (2, 55):
        body["description"] = None
    return body


def availability_zones(hosts: Iterable[dict[str, Any]] | None) -> dict[str, Any]:
    """One zone, Nova's default ``nova``; ``hosts`` (the detail, for admins): the compute
    services as ``os-services`` lists them."""
    if hosts is None:
        return {"availabilityZoneInfo": [{"zoneName": AVAILABILITY_ZONE, "zoneState": {"available": True},
                                          "hosts": None}]}
    listed = {h["host"]: {"nova-compute": {"available": h["state"] == "up", "active": h["status"] == "enabled",
                                           "updated_at": h["updated_at"]}} for h in hosts}
    return {"availabilityZoneInfo": [{"zoneName": AVAILABILITY_ZONE, "zoneState": {"available": True},
                                      "hosts": listed}]}


def absolute_limits(version: tuple[int, int], used: dict[str, int]) -> dict[str, Any]:
    """Nova's ``/limits``: no instance, core or RAM quota here (-1: unlimited, as Nova shows an
    unlimited quota), its metadata-items limit, what the project uses; the keys by microversion
    (network ones gone from 2.36, ``maxImageMeta`` from 2.39, personality from 2.57)."""
    absolute: dict[str, Any] = {"maxTotalInstances": -1, "maxTotalCores": -1, "maxTotalRAMSize": -1,
                                "maxServerMeta": MAX_METADATA_ITEMS, "maxTotalKeypairs": -1, "maxServerGroups": -1,
                                "maxServerGroupMembers": -1}
    if version < (2, 39):
        absolute["maxImageMeta"] = MAX_METADATA_ITEMS
    if version < (2, 57):
        absolute.update(maxPersonality=-1, maxPersonalitySize=-1)
    if version < (2, 36):
        absolute.update(maxTotalFloatingIps=-1, maxSecurityGroups=-1, maxSecurityGroupRules=-1,
                        totalFloatingIpsUsed=0, totalSecurityGroupsUsed=0)
    absolute.update(totalRAMUsed=used.get("ram", 0), totalCoresUsed=used.get("cores", 0),
                    totalInstancesUsed=used.get("instances", 0), totalServerGroupsUsed=0)
    return {"limits": {"rate": [], "absolute": absolute}}


def requested_limit(params: QueryParams) -> int:
    """The page size a listing answered (Nova's ``_get_collection_links``): ``limit`` capped at
    1000, or 1000; a full page gets a ``next`` link."""
    if "limit" in params:
        return min(parse_uint("limit", params.getlist("limit")[-1], maximum=INT32_MAX), MAX_LIMIT)
    return MAX_LIMIT
