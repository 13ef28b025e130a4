"""A property-based fuzzer (hypothesis) of every endpoint of the image, compute, workflow, identity
and volume APIs, driven over real HTTP against a running server. Used by
``tests/security/test_fuzz.py`` (a few hundred requests per API and database) and
``bench/fuzz_bench.py`` (the full counts).

Each request is one endpoint of the catalogue below (checked against the routers, so a new route
without a fuzz spec fails the test), with path parameters that are real ids (an active, a queued
and a shared image, a server, a workflow, an available, an attached and a reserved volume, a
snapshot, attachments...), random UUIDs or malformed text; query parameters the endpoint knows
and random ones; the headers it reads (Range, the upload headers, the microversion headers —
Nova's for compute, ``OpenStack-API-Version: volume 3.x`` for the volume API —, Content-Type) and
random ones; and a body that is valid-shaped, a valid-shaped one with one value or key mutated
(wrong type, integers of thousands of digits, NaN, lone surrogates, NUL, non-ASCII digits,
nesting thousands deep), arbitrary JSON, or bytes that are not JSON at all. The properties, for
every request:

- no 5xx, except a 503 that carries ``Retry-After`` (load shedding);
- an answer within ``TIMEOUT`` seconds (no hang);
- every error answered by the application is a JSON body whose ``error.request_id`` is the
  ``X-OpenStack-Request-Id`` header (a request the HTTP parser itself refuses, which the
  application never sees, may be uvicorn's plain 400);
- a JSON success body parses (a stored lone surrogate once made a listing unencodable);
- and every ``LISTING_EVERY`` requests, and at the end, the listings of the APIs (images, servers,
  workflows; volumes, snapshots and attachments when the volume API is served) answer 200 for a
  member and an admin (nothing written poisons them).

The volume API's resources are routed twice, under ``/volume/v3`` (Cinder 3.67+ style) and under
``/volume/v3/{project_id}``: the catalogue lists both forms (each route the app serves is fuzzed,
the project-id form with the caller's project mostly, another project or garbage sometimes).
"""

from __future__ import annotations

import copy
import json
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as fixed_seed
from hypothesis import strategies as st

from tests.conftest import ADMIN_TOKEN, MEMBER_TOKEN, OTHER_TOKEN, SERVICE_TOKEN

SEED = 20261207
# The id of the volume API's one volume type (freezeframe.volumes.service.DEFAULT_TYPE_ID).
DEFAULT_VOLUME_TYPE_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "freezeframe:volume-type:__DEFAULT__"))
DEFAULT_EXAMPLES = 300
TIMEOUT = 20.0
LISTING_EVERY = 100
APIS = ("image", "compute", "workflow", "identity", "volume", "baremetal")


# Read once and taken out of the environment: the servers the tests start inherit it, and the
# server refuses FREEZEFRAME_* variables that are not its settings.
_EXAMPLES_ENV = os.environ.pop("FREEZEFRAME_FUZZ_EXAMPLES", None)


def examples_from_env(default: int = DEFAULT_EXAMPLES) -> int:
    return int(_EXAMPLES_ENV) if _EXAMPLES_ENV else default


# -- the catalogue ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    api: str
    method: str
    path: str                     # as routed, with {placeholders}
    body: str | None = None       # a key of the body strategies, or None (no body expected)
    query: tuple[str, ...] = ()   # the query parameters it reads
    headers: tuple[str, ...] = ()  # header kinds it reads: range, upload, microversion, volume_microversion
    # placeholder -> the fixture kind its real values come from, where the name alone is ambiguous
    # (``{project_id}`` of the volume API is the caller's project, not an identity project)
    kinds: tuple[tuple[str, str], ...] = ()
    service: bool = False          # a service's call (policy: the service role): its token mostly

    def kind_of(self, placeholder: str) -> str:
        return dict(self.kinds).get(placeholder, placeholder)


_IMG = "/image/v2/images/{image_id}"
IMAGE_LIST_KEYS = ("limit", "marker", "sort_key", "sort_dir", "sort", "member_status", "visibility", "size_min",
                   "size_max", "tag", "os_hidden", "protected", "created_at", "updated_at", "owner", "checksum",
                   "os_hash_value", "id", "name", "status", "disk_format", "container_format", "custom_prop")
WORKFLOW_KEYS = ("limit", "state", "resource_id", "image_id", "kind")
_S = "/compute/v2.1/servers/{server_id}"
# Nova's server list and flavor list parameters (compute/listing.py, compute/catalog.py).
_SERVER_QUERY = ("limit", "marker", "name", "status", "host", "changes-since", "changes-before", "image", "flavor",
                 "tags", "not-tags", "all_tenants", "sort_key", "sort_dir", "deleted", "project_id", "locked")
_FLAVOR_QUERY = ("limit", "marker", "minRam", "minDisk", "is_public", "sort_key", "sort_dir")
_MV = ("microversion",)
_VMV = ("volume_microversion",)
VOLUME_LIST_KEYS = ("limit", "marker", "sort", "sort_key", "sort_dir", "name", "status", "bootable",
                    "availability_zone", "metadata", "volume_type", "all_tenants", "project_id", "with_count",
                    "offset", "size", "user_id")
SNAPSHOT_LIST_KEYS = ("limit", "marker", "sort", "sort_key", "sort_dir", "name", "status", "volume_id", "metadata",
                      "all_tenants", "project_id", "with_count", "offset")
ATTACHMENT_LIST_KEYS = ("all_tenants", "volume_id", "instance_id", "status", "limit", "marker", "sort", "offset")
# The volume API's resources: (method, path below /v3 and below /v3/{project_id}, body, query).
VOLUME_RESOURCES: tuple[tuple[str, str, str | None, tuple[str, ...]], ...] = (
    ("POST", "/volumes", "volume", ()),
    ("GET", "/volumes", None, VOLUME_LIST_KEYS),
    ("GET", "/volumes/detail", None, VOLUME_LIST_KEYS),
    ("GET", "/volumes/{volume_id}", None, ()),
    ("PUT", "/volumes/{volume_id}", "volume_update", ()),
    ("DELETE", "/volumes/{volume_id}", None, ("cascade",)),
    ("POST", "/volumes/{volume_id}/action", "volume_action", ()),
    ("GET", "/volumes/{volume_id}/metadata", None, ()),
    ("POST", "/volumes/{volume_id}/metadata", "metadata", ()),
    ("PUT", "/volumes/{volume_id}/metadata", "metadata", ()),
    ("GET", "/volumes/{volume_id}/metadata/{key}", None, ()),
    ("PUT", "/volumes/{volume_id}/metadata/{key}", "meta", ()),
    ("DELETE", "/volumes/{volume_id}/metadata/{key}", None, ()),
    ("POST", "/snapshots", "snapshot", ()),
    ("GET", "/snapshots", None, SNAPSHOT_LIST_KEYS),
    ("GET", "/snapshots/detail", None, SNAPSHOT_LIST_KEYS),
    ("GET", "/snapshots/{snapshot_id}", None, ()),
    ("PUT", "/snapshots/{snapshot_id}", "snapshot_update", ()),
    ("DELETE", "/snapshots/{snapshot_id}", None, ()),
    ("POST", "/snapshots/{snapshot_id}/action", "snapshot_action", ()),
    ("GET", "/snapshots/{snapshot_id}/metadata", None, ()),
    ("POST", "/snapshots/{snapshot_id}/metadata", "metadata", ()),
    ("PUT", "/snapshots/{snapshot_id}/metadata", "metadata", ()),
    ("GET", "/snapshots/{snapshot_id}/metadata/{key}", None, ()),
    ("PUT", "/snapshots/{snapshot_id}/metadata/{key}", "meta", ()),
    ("DELETE", "/snapshots/{snapshot_id}/metadata/{key}", None, ()),
    ("GET", "/snapshots/{snapshot_id}/os-admin-metadata", None, ()),
    ("POST", "/attachments", "attachment", ()),
    ("GET", "/attachments", None, ATTACHMENT_LIST_KEYS),
    ("GET", "/attachments/detail", None, ATTACHMENT_LIST_KEYS),
    ("GET", "/attachments/{attachment_id}", None, ()),
    ("PUT", "/attachments/{attachment_id}", "attachment_update", ()),
    ("DELETE", "/attachments/{attachment_id}", None, ()),
    ("POST", "/attachments/{attachment_id}/action", "attachment_action", ()),
    ("GET", "/types", None, ()),
    ("GET", "/types/default", None, ()),
    ("GET", "/types/{type_id}", None, ()),
    ("GET", "/os-availability-zone", None, ()),
    ("GET", "/limits", None, ()),
)


_MD = "/image/v2/metadefs/namespaces/{namespace}"
_MDN = (("name", "metadef_name"),)
METADEF_ROUTES: tuple[tuple[str, str, str | None, tuple[str, ...]], ...] = (
    ("GET", "/image/v2/metadefs/resource_types", None, ()),
    ("GET", "/image/v2/metadefs/namespaces", None, ("limit", "marker", "sort_key", "sort_dir", "visibility",
                                                    "resource_types")),
    ("POST", "/image/v2/metadefs/namespaces", "metadef_namespace", ()),
    ("GET", _MD, None, ("resource_type",)), ("PUT", _MD, "metadef_namespace", ()), ("DELETE", _MD, None, ()),
    ("GET", _MD + "/resource_types", None, ()), ("POST", _MD + "/resource_types", "metadef_rt", ()),
    ("DELETE", _MD + "/resource_types/{name}", None, ()),
    ("POST", _MD + "/tags", "metadef_tags", ()), ("POST", _MD + "/tags/{name}", "empty", ()),
    *[(method, _MD + f"/{kind}" + one, body if method in ("POST", "PUT") else None, ())
      for kind, body in (("objects", "metadef_object"), ("properties", "metadef_property"), ("tags", "metadef_tag"))
      for method, one in (("GET", ""), ("DELETE", ""), ("POST", ""), ("GET", "/{name}"), ("PUT", "/{name}"),
                          ("DELETE", "/{name}")) if not (kind == "tags" and method == "POST")],
    ("GET", "/image/v2/tasks", None, ("limit", "marker", "sort_key", "sort_dir", "type", "status")),
    ("GET", "/image/v2/tasks/{task_id}", None, ()),
)


def _metadef_catalogue() -> tuple[Endpoint, ...]:
    """The image API's metadata definitions (admin writes) and tasks (admin only)."""
    out = [Endpoint("image", method, path, body=body, query=query, kinds=_MDN)
           for method, path, body, query in METADEF_ROUTES]
    return (*out, Endpoint("image", "GET", "/image/v2/schemas/metadefs/{name}", kinds=(("name", "metadef_schema"),)))


def _volume_catalogue() -> tuple[Endpoint, ...]:
    """The volume API: its version documents, and every resource in both of its routed forms."""
    out = [Endpoint("volume", "GET", path, headers=_VMV) for path in ("/volume/", "/volume/v3", "/volume/v3/")]
    for base, kinds in (("/volume/v3", ()), ("/volume/v3/{project_id}", (("project_id", "volume_project"),))):
        out += [Endpoint("volume", method, base + path, body=body, query=query, headers=_VMV, kinds=kinds)
                for method, path, body, query in VOLUME_RESOURCES]
    return tuple(out)


_BMV = ("baremetal_microversion",)
_BN = "/baremetal/v1/nodes/{node_ident}"
NODE_LIST_KEYS = ("limit", "marker", "sort_key", "sort_dir", "fields", "detail", "provision_state", "maintenance",
                  "driver", "associated", "instance_uuid", "resource_class", "owner", "lessee", "conductor_group",
                  "chassis_uuid", "retired", "fault", "conductor", "description_contains", "project", "shard",
                  "sharded", "include_children", "parent_node", "instance_name")
PORT_LIST_KEYS = ("limit", "marker", "sort_key", "sort_dir", "fields", "node", "node_uuid", "address", "portgroup",
                  "detail", "shard", "description_contains", "conductor_groups")
# The bare-metal API (Ironic v1): admin or service only (the service token mostly); lookup and
# heartbeat need no token at all.
BAREMETAL_ROUTES: tuple[tuple[str, str, str | None, tuple[str, ...]], ...] = (
    ("GET", "/baremetal/", None, ()), ("GET", "/baremetal/v1", None, ()), ("GET", "/baremetal/v1/", None, ()),
    ("POST", "/baremetal/v1/nodes", "bm_node", ()),
    ("GET", "/baremetal/v1/nodes", None, NODE_LIST_KEYS),
    ("GET", "/baremetal/v1/nodes/detail", None, NODE_LIST_KEYS),
    ("GET", _BN, None, ("fields",)),
    ("PATCH", _BN, "bm_patch", ()),
    ("DELETE", _BN, None, ()),
    ("PUT", _BN + "/maintenance", "bm_maintenance", ()),
    ("DELETE", _BN + "/maintenance", None, ()),
    ("GET", _BN + "/states", None, ()),
    ("PUT", _BN + "/states/provision", "bm_provision", ()),
    ("PUT", _BN + "/states/power", "bm_power", ()),
    ("GET", _BN + "/validate", None, ()),
    ("GET", _BN + "/ports", None, PORT_LIST_KEYS),
    ("GET", _BN + "/ports/detail", None, PORT_LIST_KEYS),
    ("POST", "/baremetal/v1/ports", "bm_port", ()),
    ("GET", "/baremetal/v1/ports", None, PORT_LIST_KEYS),
    ("GET", "/baremetal/v1/ports/detail", None, PORT_LIST_KEYS),
    ("GET", "/baremetal/v1/ports/{port_id}", None, ("fields",)),
    ("PATCH", "/baremetal/v1/ports/{port_id}", "bm_port_patch", ()),
    ("DELETE", "/baremetal/v1/ports/{port_id}", None, ()),
    ("GET", "/baremetal/v1/lookup", None, ("addresses", "node_uuid")),
    ("POST", "/baremetal/v1/heartbeat/{node_ident}", "bm_heartbeat", ()),
)


def _baremetal_catalogue() -> tuple[Endpoint, ...]:
    return tuple(Endpoint("baremetal", method, path, body=body, query=query, headers=_BMV, service=True)
                 for method, path, body, query in BAREMETAL_ROUTES)


CATALOGUE: tuple[Endpoint, ...] = (
    Endpoint("image", "GET", "/image/"),
    Endpoint("image", "GET", "/image/versions"),
    Endpoint("image", "GET", "/image/v2/images", query=IMAGE_LIST_KEYS),
    Endpoint("image", "POST", "/image/v2/images", body="image_create"),
    Endpoint("image", "GET", _IMG),
    Endpoint("image", "PATCH", _IMG, body="patch"),
    Endpoint("image", "DELETE", _IMG),
    Endpoint("image", "PUT", _IMG + "/file", body="data", headers=("upload",)),
    Endpoint("image", "GET", _IMG + "/file", headers=("range",)),
    Endpoint("image", "PUT", _IMG + "/stage", body="data"),
    Endpoint("image", "POST", _IMG + "/import", body="import"),
    Endpoint("image", "GET", _IMG + "/tasks"),
    Endpoint("image", "POST", _IMG + "/actions/deactivate", body="empty"),
    Endpoint("image", "POST", _IMG + "/actions/reactivate", body="empty"),
    Endpoint("image", "POST", _IMG + "/actions/kill", body="empty"),
    Endpoint("image", "GET", _IMG + "/uploads/{upload_id}"),
    Endpoint("image", "DELETE", _IMG + "/uploads/{upload_id}"),
    Endpoint("image", "PUT", _IMG + "/tags/{tag}", body="empty"),
    Endpoint("image", "DELETE", _IMG + "/tags/{tag}"),
    Endpoint("image", "GET", _IMG + "/members"),
    Endpoint("image", "POST", _IMG + "/members", body="member_add"),
    Endpoint("image", "GET", _IMG + "/members/{member_id}"),
    Endpoint("image", "PUT", _IMG + "/members/{member_id}", body="member_update"),
    Endpoint("image", "DELETE", _IMG + "/members/{member_id}"),
    Endpoint("image", "GET", "/image/v2/schemas/{name}"),
    Endpoint("image", "GET", "/image/v2/info/import"),
    Endpoint("image", "GET", "/image/v2/info/stores"),
    *_metadef_catalogue(),
    Endpoint("compute", "GET", "/compute/", headers=_MV),
    Endpoint("compute", "GET", "/compute/v2.1", headers=_MV),
    Endpoint("compute", "GET", "/compute/v2.1/", headers=_MV),
    Endpoint("compute", "GET", "/compute/v2.1/servers", headers=_MV, query=_SERVER_QUERY),
    Endpoint("compute", "GET", "/compute/v2.1/servers/detail", headers=_MV, query=_SERVER_QUERY),
    Endpoint("compute", "POST", "/compute/v2.1/servers", body="server_create", headers=_MV),
    Endpoint("compute", "GET", _S, headers=_MV),
    Endpoint("compute", "DELETE", _S, headers=_MV),
    Endpoint("compute", "POST", _S + "/action", body="action", headers=_MV),
    Endpoint("compute", "GET", _S + "/os-instance-actions", headers=_MV),
    Endpoint("compute", "GET", _S + "/os-instance-actions/{request_id}", headers=_MV),
    Endpoint("compute", "GET", "/compute/v2.1/flavors", headers=_MV, query=_FLAVOR_QUERY),
    Endpoint("compute", "GET", "/compute/v2.1/flavors/detail", headers=_MV, query=_FLAVOR_QUERY),
    Endpoint("compute", "GET", "/compute/v2.1/flavors/{flavor_id}/os-extra_specs", headers=_MV),
    Endpoint("compute", "GET", "/compute/v2.1/flavors/{flavor_id}/os-extra_specs/{key}", headers=_MV),
    Endpoint("compute", "GET", "/compute/v2.1/os-availability-zone", headers=_MV),
    Endpoint("compute", "GET", "/compute/v2.1/os-availability-zone/detail", headers=_MV),
    Endpoint("compute", "GET", "/compute/v2.1/limits", headers=_MV, query=("tenant_id",)),
    Endpoint("compute", "GET", "/compute/v2.1/flavors/{flavor_id}", headers=_MV),
    Endpoint("compute", "POST", "/compute/v2.1/os-freezeframe-adopt", body="adopt", headers=_MV),
    Endpoint("compute", "GET", "/compute/v2.1/os-services", headers=_MV),
    Endpoint("compute", "GET", _S + "/os-volume_attachments", headers=_MV, query=("limit", "offset")),
    Endpoint("compute", "POST", _S + "/os-volume_attachments", body="volume_attachment", headers=_MV),
    Endpoint("compute", "GET", _S + "/os-volume_attachments/{volume_id}", headers=_MV),
    Endpoint("compute", "DELETE", _S + "/os-volume_attachments/{volume_id}", headers=_MV),
    Endpoint("compute", "POST", "/compute/v2.1/os-assisted-volume-snapshots", body="assisted", headers=_MV,
             service=True),
    Endpoint("compute", "DELETE", "/compute/v2.1/os-assisted-volume-snapshots/{snapshot_id}", headers=_MV,
             query=("delete_info",), service=True),
    Endpoint("workflow", "GET", "/v1/workflows", query=WORKFLOW_KEYS),
    Endpoint("workflow", "GET", "/v1/workflows/{workflow_id}"),
    Endpoint("workflow", "DELETE", "/v1/workflows/{workflow_id}"),
    Endpoint("workflow", "GET", "/healthcheck", query=("detailed",)),
    # the OpenAPI documents (common/web/openapi.py: the app's own routes, public)
    Endpoint("workflow", "GET", "/openapi"),
    Endpoint("workflow", "GET", "/openapi/{name}.json", kinds=(("name", "openapi_name"),)),
    Endpoint("workflow", "GET", "/metrics"),
    Endpoint("identity", "GET", "/identity"),
    Endpoint("identity", "GET", "/identity/"),
    Endpoint("identity", "GET", "/identity/v3"),
    Endpoint("identity", "GET", "/identity/v3/"),
    Endpoint("identity", "POST", "/identity/v3/auth/tokens", body="auth", query=("nocatalog",)),
    Endpoint("identity", "GET", "/identity/v3/auth/tokens", headers=("subject",), query=("nocatalog",)),
    Endpoint("identity", "DELETE", "/identity/v3/auth/tokens", headers=("subject",)),
    Endpoint("identity", "GET", "/identity/v3/auth/projects"),
    Endpoint("identity", "GET", "/identity/v3/users/{user_id}/projects"),
    Endpoint("identity", "GET", "/identity/v3/projects", query=("name",)),
    Endpoint("identity", "GET", "/identity/v3/projects/{project_id}"),
    Endpoint("identity", "GET", "/identity/v3/auth/catalog"),
) + _volume_catalogue() + _baremetal_catalogue()


def routed_endpoints() -> set[tuple[str, str]]:
    """(method, full path) of every route the APIs declare, read from their routers — for the
    volume API from what it mounts (its router inside the microversion negotiation)."""
    from freezeframe.compute.api import ComputeAPI
    from freezeframe.conductor.api import WorkflowAPI
    from freezeframe.identity.api import IdentityAPI
    from freezeframe.images.api import ImageAPI
    from freezeframe.baremetal.api import BaremetalAPI
    from freezeframe.volumes.api import VolumeAPI

    volume = VolumeAPI.__new__(VolumeAPI).mounted()
    baremetal = BaremetalAPI.__new__(BaremetalAPI).mounted()
    found: set[tuple[str, str]] = set()
    for prefix, app in (("/image", _router(ImageAPI)), ("/compute", _router(ComputeAPI)),
                        ("/v1", _router(WorkflowAPI)), ("/identity", _router(IdentityAPI)),
                        (volume.path, volume.app), (baremetal.path, baremetal.app)):
        routes = _routes(app, prefix)
        assert routes, f"no routes found under {prefix}: a wrapper the fuzzer cannot see through"
        found |= routes
    return found


def _router(cls):
    """The API's router, built on a bare instance (routes only name bound methods)."""
    api = cls.__new__(cls)
    return api.router()


def _routes(app: Any, prefix: str) -> set[tuple[str, str]]:
    """(method, path) of an ASGI app's routes: a Router's (a Mount's inside, with its path), or,
    for a middleware (the microversion negotiation, the exception middleware), the app it wraps."""
    from starlette.routing import Mount, Route, Router

    found: set[tuple[str, str]] = set()
    seen = 0
    while not isinstance(app, Router):
        inner = getattr(app, "app", None)
        if inner is None or seen > 20:
            return found
        app, seen = inner, seen + 1
    for route in app.routes:
        if isinstance(route, Mount):
            found |= _routes(route.app, prefix + route.path)
        elif isinstance(route, Route):
            found |= {(m, prefix + route.path) for m in route.methods or () if m != "HEAD"}
        else:
            raise AssertionError(f"a route the fuzzer does not know how to read: {route!r} under {prefix}")
    return found


# -- values -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Raw:
    """JSON text put into a body verbatim (what json.dumps cannot or will not write)."""
    text: str


RAW_VALUES = [Raw("9" * 5000), Raw("-" + "9" * 5000), Raw(str(1 << 63)), Raw(str(-(1 << 64))), Raw("9" * 400),
              Raw("1e999"), Raw("-1e999"), Raw("1." + "5" * 5000), Raw("NaN"), Raw("Infinity"), Raw("-Infinity"),
              Raw("[" * 33 + "]" * 33), Raw("[" * 5000 + "]" * 5000), Raw("[" * 100_000 + "]" * 100_000),
              Raw('{"a":' * 2000 + "1" + "}" * 2000), Raw('"\\ud800"'), Raw('"\\udfff\\ud800"'), Raw('"\\u0000"'),
              Raw('{"\\ud800": 1}'), Raw('{"\\u0000": "x"}')]
NASTY_STRINGS = ["", " ", "\x00", "a\x00b", "\ud800", "x\udfffy", "\udc80", "²", "٣", "１２", "𝟗", "¹²³", "9" * 30,
                 "9" * 5000, str(1 << 63), str((1 << 63) - 1), "-1", "+1", "1_000", "0x10", "1e3", "1.5", "NaN",
                 "Infinity", "true", "null", "#", "?x", "/", "../../../../etc/passwd", "%00", "%ff", "in:a,b",
                 "in:", "gt:2020-01-01T00:00:00Z", "gt:0001-01-01T00:00:00+01:00", "lt:9999-12-31T23:59:59-01:00",
                 "x" * 256, "x" * 70000, "\u202e", "😀", "'; DROP TABLE images; --", "\\", '"', "\n", "\t x \t",
                 "00000000-0000-0000-0000-000000000000\n", "UPLOAD_٣_COMPLETE", "UPLOAD_50_COMPLETE"]
NUMBERISH = ["", "0", "00", "-0", "1", "25", "1000", "1001", "-1", "+1", " 1", "1 ", "1_0", "1.5", "1e3", "0x10",
             "²", "٣", "１", "𝟗", "³", "9" * 19, "9" * 20, "9" * 25, "9" * 5000, str(1 << 63), str((1 << 63) - 1),
             str(1 << 31), str(1 << 64), "NaN", "inf", "０"]
LATIN1_DIGITS = ["\xb2", "\xb3", "\xb9", "1\xb2"]     # '²', '³', '¹' travel in headers as single latin-1 bytes


def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the strategies, picked with these weights (one_of's own choice leans to the first)."""
    table = [i for i, (weight, _s) in enumerate(choices) for _ in range(weight)]
    return st.sampled_from(table).flatmap(lambda i: choices[i][1])


weird_char = st.characters(exclude_categories=())            # surrogates and NUL included
text_any = st.one_of(st.text(max_size=12), st.text(weird_char, max_size=8), st.sampled_from(NASTY_STRINGS))
numberish = st.one_of(st.sampled_from(NUMBERISH), st.integers(-5, 3000).map(str),
                      st.integers(0, 1 << 70).map(str),
                      st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=4))
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-(1 << 70), 1 << 70),
                        st.floats(allow_nan=True, allow_infinity=True), text_any)
any_json = st.recursive(json_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(text_any, inner, max_size=4)),
                        max_leaves=12)
nasty_value = st.one_of(st.sampled_from(RAW_VALUES), st.sampled_from(NASTY_STRINGS), text_any, json_scalar,
                        st.just([]), st.just({}), st.lists(text_any, max_size=3),
                        st.dictionaries(text_any, text_any, max_size=3))


def encode(value: Any) -> str:
    """JSON text; strings ASCII-escaped (a lone surrogate becomes ``\\ud800``), Raw verbatim."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(encode(v) for v in value) + "]"
    return json.dumps(value)


def _slots(doc: Any) -> list[tuple[Any, Any]]:
    """Every (container, key-or-index) in a document, for mutations."""
    out: list[tuple[Any, Any]] = []
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for k in list(node):
                out.append((node, k))
                stack.append(node[k])
        elif isinstance(node, list):
            for i in range(len(node)):
                out.append((node, i))
                stack.append(node[i])
    return out


def mutate_value(doc: Any, value: Any, index: int) -> Any:
    doc = copy.deepcopy(doc)
    slots = _slots(doc)
    if not slots:
        return value
    container, key = slots[index % len(slots)]
    container[key] = value
    return doc


def mutate_key(doc: Any, key: str, index: int) -> Any:
    doc = copy.deepcopy(doc)
    dicts = [doc] if isinstance(doc, dict) else []
    dicts += [c[k] for c, k in _slots(doc) if isinstance(c[k], dict)]
    if not dicts:
        return doc
    target = dicts[index % len(dicts)]
    if target and index % 2:
        old = list(target)[index % len(target)]
        target[key] = target.pop(old)
    else:
        target[key] = "v"
    return doc


# -- the fixtures: real resources, so that requests get past the lookups --------------------------

class _RetryBusy(httpx.HTTPTransport):
    """The fixtures' requests, sent again after a 503 with Retry-After (the server shedding load,
    which the properties allow: a busy machine must not fail the set-up of the fixtures)."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for _attempt in range(10):
            response = super().handle_request(request)
            if response.status_code != 503 or "retry-after" not in response.headers:
                return response
            response.read()
            response.close()
            time.sleep(0.5)
        return response


class Fixtures:
    """Real ids on the server under test, refreshed when the fuzzer deletes them."""

    def __init__(self, base_url: str) -> None:
        self.base = base_url
        self.ids: dict[str, list[str]] = {
            "image_id": [], "server_id": [], "workflow_id": [], "request_id": [],
            "member_id": ["project-b", "project-a", "admin-project"], "tag": ["t1", "t2"],
            "upload_id": [str(uuid.uuid4())], "flavor_id": ["1", "2", "3"],
            "name": ["image", "images", "member", "members"],
            "user_id": ["bob", "demo", "admin", "freezeframe"], "project_id": ["demo", "admin", "project-a"],
            # the volume API: its URL's project is the caller's (the member's mostly; an admin may
            # name any), real volumes, snapshots, attachments, metadata keys and the one type
            "volume_project": ["project-a"] * 6 + ["admin-project", "project-b"],
            "volume_id": [], "snapshot_id": [], "attachment_id": [], "key": ["k1", "k2", "nope"],
            "type_id": [DEFAULT_VOLUME_TYPE_ID, "__DEFAULT__", "other"],
            # the bare-metal API: a node (by uuid and by name) with a port
            "node_ident": [], "port_id": [],
            "openapi_name": ["image", "compute", "workflows", "volume", "baremetal", "identity", "nope"],
            # the image API's metadata definitions (the seeded catalog's, and one the fuzzer made)
            "namespace": ["OS::Freezeframe::Workflow", "OS::Freezeframe::Quiesce", "OS::Fuzz::NS", "OS::Fuzz::NS"],
            "metadef_name": ["os_freezeframe_workflow_state", "hw_qemu_guest_agent", "p1", "o1", "t1",
                             "OS::Glance::Image"],
            "metadef_schema": ["namespace", "namespaces", "object", "property", "tags", "resource_type", "x"],
            "task_id": [],
        }
        self.named: dict[str, str] = {}
        self.volume_served = False

    def client(self, token: str = MEMBER_TOKEN) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=60, transport=_RetryBusy(),
                            headers={"X-Auth-Token": token, "X-OpenStack-Nova-API-Version": "2.45",
                                     "OpenStack-API-Version": "volume 3.71"})

    def pick(self, kind: str, index: int) -> str:
        values = self.ids[kind] or [str(uuid.UUID(int=index))]
        return values[index % len(values)]

    def setup(self) -> "Fixtures":
        with self.client() as c:
            active = self._image(c, "fuzz-active", data=True)
            queued = self._image(c, "fuzz-queued")
            shared = self._image(c, "fuzz-shared", visibility="shared")
            assert c.post(f"/image/v2/images/{shared}/members", json={"member": "project-b"}).status_code == 200
            assert c.put(f"/image/v2/images/{active}/tags/t1").status_code == 204
            server = self._server(c, active)
            self.named.update(active=active, queued=queued, shared=shared, server=server)
            self.ids["image_id"] += [active, queued, shared]
            self.ids["server_id"].append(server)
            resp = c.post(f"/compute/v2.1/servers/{server}/action", json={"createImage": {"name": "fuzz-snap"}})
            if resp.status_code == 202:
                self.ids["image_id"].append(resp.json()["image_id"])
                self.ids["workflow_id"].append(resp.headers["x-freezeframe-workflow-id"])
                self._wait(lambda: c.get(f"/v1/workflows/{self.ids['workflow_id'][0]}").json()["workflow"]["state"]
                           in ("IMAGE_ACTIVE", "FAILED", "REVERTED", "CANCELLED"))
            actions = c.get(f"/compute/v2.1/servers/{server}/os-instance-actions").json().get("instanceActions", [])
            self.ids["request_id"] += [a["request_id"] for a in actions]
            self.volume_served = c.get("/volume/v3/volumes").status_code == 200
            if self.volume_served:
                self._volume_fixtures(c)
        self._baremetal_fixtures()
        return self

    def _baremetal_fixtures(self) -> None:
        """A node (named, with a port) for the bare-metal API, remade when the fuzzer deleted it."""
        with self.client(ADMIN_TOKEN) as c:
            c.headers["X-OpenStack-Ironic-API-Version"] = "1.116"
            node = self.named.get("node")
            if node and c.get(f"/baremetal/v1/nodes/{node}").status_code == 200 and \
                    c.get(f"/baremetal/v1/ports/{self.named.get('port')}").status_code == 200:
                return
            name = f"fuzz-node-{uuid.uuid4().hex[:8]}"
            resp = c.post("/baremetal/v1/nodes", json={"driver": "fake-hardware", "name": name,
                                                       "driver_info": {"fake_password": "p"}})
            if resp.status_code != 201:
                return
            node = resp.json()["uuid"]
            mac = ":".join(f"{b:02x}" for b in [0x52, 0x54] + list(uuid.uuid4().bytes[:4]))
            resp = c.post("/baremetal/v1/ports", json={"address": mac, "node_uuid": node})
            self.ids["node_ident"] = [node, name]
            self.named["node"] = node
            if resp.status_code == 201:
                self.ids["port_id"] = [resp.json()["uuid"]]
                self.named["port"] = resp.json()["uuid"]

    # -- the volume API's fixtures: an available volume with metadata and a snapshot of it (with
    # metadata), a volume attached to the server (through compute: an attachment, a mapping) and a
    # volume reserved by the attachments API (an attachment without a connector).

    VOLUME_FIXTURES = ("volume", "snapshot", "attached", "reserved")

    def _volume_fixtures(self, c: httpx.Client) -> None:
        for name in self.VOLUME_FIXTURES:
            self._make_volume_fixture(c, name)

    def _make_volume_fixture(self, c: httpx.Client, name: str) -> bool:
        """(Re)make one named volume fixture; False when it could not be made (the run goes on
        with what there is: the fixtures are a means to reach deep code, not a property)."""
        if name == "volume":
            vol = self._volume(c, "fuzz-volume", metadata={"k1": "v1", "k2": "v2"})
            return vol is not None and self._replace("volume", "volume_id", vol)
        if name == "snapshot":
            vol = self.named.get("volume")
            resp = c.post("/volume/v3/snapshots", json={"snapshot": {"volume_id": vol, "name": "fuzz-snap",
                                                                     "metadata": {"k1": "v1"}}})
            if resp.status_code != 202:
                return False
            snap = resp.json()["snapshot"]["id"]
            if not self._settle(lambda: self._status(c, f"/volume/v3/snapshots/{snap}", "snapshot") == "available"):
                return False
            return self._replace("snapshot", "snapshot_id", snap)
        if name == "attached":
            vol = self._volume(c, "fuzz-attached")
            server = self.named.get("server")
            if vol is None or server is None:
                return False
            resp = c.post(f"/compute/v2.1/servers/{server}/os-volume_attachments",
                          json={"volumeAttachment": {"volumeId": vol}})
            if resp.status_code != 200:
                return False
            self._replace("attached", "volume_id", vol)
            found = c.get(f"/volume/v3/volumes/{vol}").json()["volume"]["attachments"]
            return bool(found) and self._replace("attached_attachment", "attachment_id", found[0]["attachment_id"])
        if name == "reserved":
            vol = self._volume(c, "fuzz-reserved")
            if vol is None:
                return False
            resp = c.post("/volume/v3/attachments", json={"attachment": {
                "volume_uuid": vol, "instance_uuid": self.named.get("server")}})
            if resp.status_code != 200:
                return False
            self._replace("reserved", "volume_id", vol)
            return self._replace("reserved_attachment", "attachment_id", resp.json()["attachment"]["id"])
        raise ValueError(name)

    def _replace(self, name: str, kind: str, new: str) -> bool:
        old = self.named.get(name)
        if old in self.ids[kind]:
            self.ids[kind][self.ids[kind].index(old)] = new
        else:
            self.ids[kind].append(new)
        self.named[name] = new
        return True

    def _volume(self, c: httpx.Client, name: str, **attrs: Any) -> str | None:
        resp = c.post("/volume/v3/volumes", json={"volume": {"size": 1, "name": name, **attrs}})
        if resp.status_code != 202:
            return None
        vol = resp.json()["volume"]["id"]
        ok = self._settle(lambda: self._status(c, f"/volume/v3/volumes/{vol}", "volume") == "available")
        return vol if ok else None

    @staticmethod
    def _status(c: httpx.Client, path: str, key: str) -> str | None:
        resp = c.get(path)
        return resp.json()[key]["status"] if resp.status_code == 200 else None

    def _refresh_volumes(self, c: httpx.Client) -> None:
        wanted = {"volume": "available", "snapshot": "available", "attached": "in-use", "reserved": "reserved"}
        for name in self.VOLUME_FIXTURES:
            kind = "snapshot" if name == "snapshot" else "volume"
            current = self.named.get(name)
            status = self._status(c, f"/volume/v3/{kind}s/{current}", kind) if current else None
            if status == wanted[name] and name == "snapshot":
                volume = c.get(f"/volume/v3/snapshots/{current}").json()["snapshot"]["volume_id"]
                if volume != self.named.get("volume"):
                    status = None           # a snapshot of the volume fixture, which was remade
            if status == wanted[name] and name == "attached":
                server = self.named.get("server")
                if c.get(f"/compute/v2.1/servers/{server}/os-volume_attachments/{current}").status_code != 200:
                    status = None           # attached, but not to the server fixture (remade)
            if status != wanted[name]:
                self._make_volume_fixture(c, name)

    @staticmethod
    def _settle(done: Callable[[], bool], timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done():
                return True
            time.sleep(0.1)
        return False

    def refresh(self) -> None:
        """Recreate the fixtures the fuzzer deleted (so later requests still reach deep code)."""
        wanted = {"active": "active", "queued": "queued", "shared": "queued"}
        with self.client() as c:
            for name in ("active", "queued", "shared"):
                resp = c.get(f"/image/v2/images/{self.named[name]}")
                status = resp.json().get("status") if resp.status_code == 200 else None
                if status == "deactivated":
                    c.post(f"/image/v2/images/{self.named[name]}/actions/reactivate")
                elif status != wanted[name]:
                    new = self._image(c, f"fuzz-{name}", data=name == "active",
                                      **({"visibility": "shared"} if name == "shared" else {}))
                    self.ids["image_id"][self.ids["image_id"].index(self.named[name])] = new
                    self.named[name] = new
            if c.get(f"/compute/v2.1/servers/{self.named['server']}").status_code == 404:
                resp = c.post("/compute/v2.1/servers", json={"server": {
                    "name": "fuzz-vm", "imageRef": self.named["active"], "flavorRef": "1"}})
                if resp.status_code == 202:
                    new = resp.json()["server"]["id"]
                    self.ids["server_id"][self.ids["server_id"].index(self.named["server"])] = new
                    self.named["server"] = new
                    self._settle(lambda: (lambda s: s["status"] in ("ACTIVE", "ERROR")
                                          and s["OS-EXT-STS:task_state"] is None)(
                        c.get(f"/compute/v2.1/servers/{new}").json()["server"]))
            if self.volume_served:
                self._refresh_volumes(c)
        self._baremetal_fixtures()

    @staticmethod
    def _image(c: httpx.Client, name: str, data: bool = False, **attrs: Any) -> str:
        resp = c.post("/image/v2/images", json={"name": name, "disk_format": "raw", "container_format": "bare",
                                                **attrs})
        assert resp.status_code == 201, resp.text
        image_id = resp.json()["id"]
        if data:
            resp = c.put(f"/image/v2/images/{image_id}/file", content=bytes(1 << 16) + b"fuzz" * 4096,
                         headers={"Content-Type": "application/octet-stream"})
            assert resp.status_code == 204, resp.text
        return image_id

    def _server(self, c: httpx.Client, image_id: str) -> str:
        resp = c.post("/compute/v2.1/servers", json={"server": {"name": "fuzz-vm", "imageRef": image_id,
                                                                "flavorRef": "1"}})
        assert resp.status_code == 202, resp.text
        server_id = resp.json()["server"]["id"]
        self._wait(lambda: (lambda s: s["status"] in ("ACTIVE", "ERROR") and s["OS-EXT-STS:task_state"] is None)(
            c.get(f"/compute/v2.1/servers/{server_id}").json()["server"]))
        return server_id

    @staticmethod
    def _wait(done: Callable[[], bool], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done():
                return
            time.sleep(0.2)
        raise AssertionError("fixture did not settle in time")


# -- requests -----------------------------------------------------------------------------------

@dataclass
class FuzzRequest:
    endpoint: Endpoint
    path: str
    query: str
    headers: list[tuple[str, bytes]]
    body: bytes | None

    def __repr__(self) -> str:
        return self.describe()

    def _repr_pretty_(self, printer, cycle) -> None:     # hypothesis prints examples with this
        printer.text(self.describe())

    def describe(self) -> str:
        body = self.body if self.body is None or len(self.body) <= 300 else self.body[:300] + b"..."
        query = self.query if len(self.query) <= 300 else self.query[:300] + "..."
        headers = [(k, v if len(v) <= 100 else v[:100] + b"...") for k, v in self.headers if k != "X-Auth-Token"]
        return f"{self.endpoint.method} {self.path}{'?' + query if query else ''} headers={headers} body={body!r}"


def _pct(text: str) -> str:
    return quote(text[:4000].encode("utf-8", "surrogatepass"), safe="")   # URLs stay under clients' limits


BAD_SEGMENTS = ["%00", "a%00b", "%ff", "%ED%A0%80", "%C3%28", "%2F", "%25", "..", "x" * 300, "%F0%9F%98%80",
                "%C2%B2", "%D9%A3"]


def path_value(fix: Fixtures, kind: str) -> st.SearchStrategy[str]:
    real = st.integers(0, 1000).map(lambda i: fix.pick(kind, i))
    return weighted((14, real), (2, st.uuids().map(str)), (2, st.sampled_from(BAD_SEGMENTS)), (1, text_any.map(_pct)))


def query_strategy(fix: Fixtures, keys: tuple[str, ...],
                   extra: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[str]:
    known = st.sampled_from(keys or ("limit",))
    key = weighted((4, known), (1, text_any))
    ids = st.integers(0, 1000).map(lambda i: fix.pick("image_id", i))
    value = st.one_of(numberish, text_any, ids, st.sampled_from(
        ["asc", "desc", "name:asc,id:desc", "created_at", "all", "shared", "public", "true", "false", "accepted",
         "IMAGE_ACTIVE", "snapshot", "in:" + ",".join(["a"] * 2000)]))
    if extra is not None:
        value = weighted((2, value), (3, extra))
    pair = st.tuples(key, value).map(lambda kv: f"{_pct(kv[0])}={_pct(kv[1])}")
    raw = st.sampled_from(["name=%00", "name=%ff", "%ff=1", "limit=%C2%B2", "marker=%ED%A0%80", "a", "=", "&&", "x=%zz"])
    many = st.integers(129, 300).map(lambda n: "&".join(f"p{i}=v" for i in range(n)))
    pairs = st.lists(weighted((7, pair), (1, raw)), min_size=1, max_size=6).map("&".join)
    return weighted((4, st.just("")), (15, pairs), (1, many))


def header_text(value: str) -> bytes:
    """What an HTTP client can put in a header: latin-1, no control characters, trimmed."""
    raw = value[:8000].encode("latin-1", "replace")
    return bytes(c if 0x20 <= c and c != 0x7f else 0x3f for c in raw).strip(b" \t")


def _header_name(text: str) -> str:
    return "X-Fuzz-" + "".join(c for c in text if c.isascii() and c.isalnum())[:20]


def headers_strategy(endpoint: Endpoint, fix: Fixtures) -> st.SearchStrategy[list[tuple[str, bytes]]]:
    if endpoint.service:
        token = st.sampled_from([SERVICE_TOKEN] * 10 + [ADMIN_TOKEN] * 2 + [MEMBER_TOKEN] * 2 + [None, "bogus"])
    else:
        token = st.sampled_from([MEMBER_TOKEN] * 10 + [ADMIN_TOKEN] * 4 + [OTHER_TOKEN, SERVICE_TOKEN, None, "bogus"])
    numeric = st.one_of(numberish, st.sampled_from(LATIN1_DIGITS))
    parts: list[st.SearchStrategy] = [token.map(lambda t: [("X-Auth-Token", t.encode())] if t else [])]
    ctypes = {"data": "application/octet-stream", "patch": "application/openstack-images-v2.1-json-patch"}
    wanted = ctypes.get(endpoint.body or "", "application/json")
    ctype = weighted((6, st.just(wanted)), (1, st.sampled_from(
        ["application/json", "application/octet-stream", "application/openstack-images-v2.0-json-patch",
         "text/plain", "application/json; charset=latin-1", "multipart/form-data", "a/b+json"])), (1, text_any))
    parts.append(ctype.map(lambda v: [("Content-Type", header_text(v))]))
    if "range" in endpoint.headers:
        rng = st.one_of(st.tuples(numeric, numeric).map(lambda ab: f"bytes={ab[0]}-{ab[1]}"), text_any,
                        st.sampled_from(["bytes=0-0", "bytes=-1", "bytes=1-", "bytes=0-1,2-3", "items=0-1"]))
        parts.append(weighted((1, st.just([])), (2, rng.map(lambda v: [("Range", header_text(v))]))))
    if "upload" in endpoint.headers:
        upload_id = st.one_of(st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()), text_any)
        final = st.sampled_from(["true", "false", "TRUE", "yes", "", "\xb2"])
        upload = st.tuples(upload_id, numeric, final).map(lambda t: [
            ("X-Image-Upload-Id", header_text(t[0])), ("X-Image-Upload-Offset", header_text(t[1])),
            ("X-Image-Upload-Final", header_text(t[2]))])
        parts.append(weighted((1, st.just([])), (2, upload)))
    if "subject" in endpoint.headers:
        subject = st.one_of(text_any, st.sampled_from(["fft_" + "x" * 43, "fft_", "gAAAAA", MEMBER_TOKEN]))
        parts.append(weighted((1, st.just([])), (4, subject.map(lambda v: [("X-Subject-Token", header_text(v))]))))
    if "microversion" in endpoint.headers:
        version = st.one_of(st.sampled_from(["2.1", "2.45", "2.47", "2.84", "2.96", "2.97", "3.0", "latest", "LATEST",
                                             "2", "2.", ".1", "2.1.1", "-2.1", "2.²", "2.\xb2"]),
                            st.tuples(numeric, numeric).map(lambda ab: f"{ab[0]}.{ab[1]}"), text_any)
        nova = version.map(lambda v: [("X-OpenStack-Nova-API-Version", header_text(v))])
        generic = version.map(lambda v: [("OpenStack-API-Version", header_text("compute " + v))])
        good = st.sampled_from(["2.1", "2.45", "2.47", "2.49", "2.70", "2.75", "2.79", "2.84", "2.89", "2.96",
                                "latest"]).map(lambda v: [("X-OpenStack-Nova-API-Version", v.encode())])
        parts.append(weighted((3, st.just([])), (4, good), (1, nova), (1, generic)))
    if "volume_microversion" in endpoint.headers:
        version = st.one_of(st.sampled_from(["3.0", "3.27", "3.44", "3.54", "3.67", "3.71", "3.72", "2.0", "4.0",
                                             "latest", "LATEST", "3", "3.", ".71", "3.71.0", "03.71", "3.071",
                                             "-3.71", "3.²", "3.\xb2", "3.7１"]),
                            st.tuples(numeric, numeric).map(lambda ab: f"{ab[0]}.{ab[1]}"), text_any)
        good = st.sampled_from(["3.71"] * 6 + ["3.0", "3.27", "3.44", "3.54", "3.63", "3.66", "latest"]).map(
            lambda v: [("OpenStack-API-Version", f"volume {v}".encode())])
        odd = version.map(lambda v: [("OpenStack-API-Version", header_text("volume " + v))])
        shared = st.sampled_from([
            [("OpenStack-API-Version", b"compute 2.1, volume 3.71")],
            [("OpenStack-API-Version", b"compute 2.96"), ("OpenStack-API-Version", b"volume 3.50")],
            [("OpenStack-API-Version", b"volume 3.71, volume 3.0")],
            [("OpenStack-API-Version", b"VOLUME 3.71")], [("OpenStack-API-Version", b"volume")],
            [("OpenStack-API-Version", b"volume3.71")], [("OpenStack-API-Version", b"volume  3.71")],
            [("OpenStack-API-Version", b",,,")], [("X-OpenStack-Nova-API-Version", b"3.71")],
            [("X-OpenStack-Volume-API-Version", b"3.71")]])
        parts.append(weighted((2, st.just([])), (8, good), (2, odd), (1, shared)))
    if "baremetal_microversion" in endpoint.headers:
        good = st.sampled_from(["1.116"] * 6 + ["1.1", "1.22", "1.31", "1.115", "latest"]).map(
            lambda v: [("X-OpenStack-Ironic-API-Version", v.encode())])
        odd = st.one_of(st.sampled_from(["1.117", "2.0", "1", "1.", ".1", "01.1", "1.01", "1.²", "LATEST", ""]),
                        st.tuples(numeric, numeric).map(lambda ab: f"{ab[0]}.{ab[1]}"), text_any).map(
            lambda v: [("X-OpenStack-Ironic-API-Version", header_text(v))])
        std = st.sampled_from([[("OpenStack-API-Version", b"baremetal 1.116")],
                               [("OpenStack-API-Version", b"compute 2.1, baremetal 1.50")],
                               [("OpenStack-API-Version", b"baremetal 9.9")]])
        parts.append(weighted((2, st.just([])), (8, good), (2, odd), (1, std)))
    ident = weighted((2, st.sampled_from(["bob", "project-a", "project-b", "member,reader", "admin", "service"])),
                     (1, text_any), (1, st.sampled_from(["x" * 256, "\xe9", "\xb2", "a,,b", ""])))
    # a service acting for a user (X-Service-Token with the user's identity in headers); in noauth
    # mode these headers alone say who calls
    acting = st.tuples(ident, ident, ident).map(lambda t: [
        ("X-Service-Token", SERVICE_TOKEN.encode()), ("X-User-Id", header_text(t[0])),
        ("X-Project-Id", header_text(t[1])), ("X-Roles", header_text(t[2]))])
    extra = weighted(
        (6, st.just([])),
        (1, text_any.map(lambda v: [("X-OpenStack-Request-Id", header_text(v))])),
        (1, st.tuples(text_any, text_any).map(lambda kv: [(_header_name(kv[0]), header_text(kv[1]))])),
        (1, acting))
    parts.append(extra)
    return st.tuples(*parts).map(lambda lists: [h for group in lists for h in group])


def body_strategies(fix: Fixtures) -> dict[str, st.SearchStrategy[Any]]:
    """Valid-shaped JSON for each kind of body."""
    ids = st.integers(0, 1000).map(lambda i: fix.pick("image_id", i))
    name = st.one_of(st.text(min_size=1, max_size=20), st.sampled_from(["fuzz", "a b", "x" * 255]))
    meta = st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=10), max_size=3)
    image_create = st.fixed_dictionaries({"name": name}, optional={
        "disk_format": st.sampled_from(["raw", "qcow2", "iso", "vmdk", "bogus"]),
        "container_format": st.sampled_from(["bare", "ovf", "docker", "bogus"]),
        "visibility": st.sampled_from(["private", "shared", "community", "public"]),
        "min_ram": st.integers(0, 4096), "min_disk": st.integers(0, 100), "protected": st.just(False),
        "os_hidden": st.booleans(), "tags": st.lists(st.text(min_size=1, max_size=8), max_size=3),
        "id": st.uuids().map(str), "custom_prop": st.text(max_size=10), "owner": st.sampled_from(["project-a", "x"]),
    })
    change = st.fixed_dictionaries({
        "op": st.sampled_from(["add", "replace", "remove", "move"]),
        "path": st.sampled_from(["/name", "/tags", "/min_ram", "/visibility", "/os_hidden", "/custom_prop",
                                 "/disk_format", "/owner", "/id", "/status", "/a~1b", "/a/b", "/"]),
        "value": st.one_of(st.text(max_size=10), st.integers(0, 100), st.lists(st.text(max_size=5), max_size=3),
                           st.booleans(), st.none()),
    })
    patch = st.one_of(st.lists(change, max_size=3),
                      st.lists(st.fixed_dictionaries({"replace": st.just("/name"), "value": st.text(max_size=8)}),
                               max_size=2))
    server = st.fixed_dictionaries({
        "name": name, "imageRef": st.one_of(ids, ids.map(lambda i: f"http://glance/v2/images/{i}"),
                                            st.uuids().map(str), st.sampled_from(["", "#", "?x"])),
        "flavorRef": st.sampled_from(["1", "2", "3", "http://nova/flavors/1", "99"]),
    }, optional={"metadata": meta})
    action = st.one_of(
        st.sampled_from([{"os-start": None}, {"os-stop": None}, {"bogus": {}}]),
        st.fixed_dictionaries({"createImage": st.fixed_dictionaries({"name": name}, optional={"metadata": meta})}),
        st.fixed_dictionaries({"createBackup": st.fixed_dictionaries({
            "name": name, "backup_type": st.sampled_from(["daily", "weekly"]),
            "rotation": st.one_of(st.integers(0, 5), numberish)})}),
    )
    volume_shapes = volume_body_strategies(fix, ids, name, meta)
    return {
        **volume_shapes,
        **baremetal_body_strategies(fix),
        "image_create": image_create,
        "patch": patch,
        "member_add": st.fixed_dictionaries({"member": st.one_of(st.sampled_from(["project-b", "project-c"]),
                                                                 st.text(min_size=1, max_size=10))}),
        "member_update": st.fixed_dictionaries({"status": st.sampled_from(["accepted", "rejected", "pending",
                                                                           "bogus"])}),
        "import": st.fixed_dictionaries({"method": st.fixed_dictionaries(
            {"name": st.sampled_from(["glance-direct", "web-download"])})}),
        "server_create": st.fixed_dictionaries({"server": server}),
        "action": action,
        "adopt": st.fixed_dictionaries({"adopt": st.fixed_dictionaries(
            {"domain": st.one_of(st.sampled_from(["fuzz-domain", "instance-x"]), name)},
            optional={"guest_agent": st.booleans()})}),
        "empty": st.just({}),
        **metadef_body_strategies(name),
        "auth": auth_bodies(),
    }


def metadef_body_strategies(name: st.SearchStrategy[str]) -> dict[str, st.SearchStrategy[Any]]:
    """Valid-shaped bodies of the image API's metadata definitions."""
    prop_schema = st.fixed_dictionaries({"type": st.sampled_from(["string", "integer", "boolean", "array", "x"]),
                                         "title": name}, optional={"enum": st.lists(st.text(max_size=5), max_size=3),
                                                                   "minimum": st.integers(-5, 5)})
    props = st.dictionaries(st.text(min_size=1, max_size=10), prop_schema, max_size=2)
    tag = st.fixed_dictionaries({"name": name})
    return {
        "metadef_namespace": st.fixed_dictionaries({"namespace": st.one_of(
            st.sampled_from(["OS::Fuzz::NS", "OS::Freezeframe::Workflow"]), name)}, optional={
            "display_name": name, "description": st.text(max_size=20),
            "visibility": st.sampled_from(["public", "private", "shared"]), "protected": st.booleans(),
            "resource_type_associations": st.lists(st.fixed_dictionaries(
                {"name": st.sampled_from(["OS::Glance::Image", "OS::Nova::Flavor"])}, optional={"prefix": name}),
                max_size=2),
            "properties": props, "tags": st.lists(tag, max_size=3),
            "objects": st.lists(st.fixed_dictionaries({"name": name}, optional={"properties": props}), max_size=2)}),
        "metadef_object": st.fixed_dictionaries({"name": st.one_of(st.just("o1"), name)}, optional={
            "description": st.text(max_size=10), "properties": props,
            "required": st.lists(st.text(min_size=1, max_size=5), max_size=2)}),
        "metadef_property": st.fixed_dictionaries({"name": st.one_of(st.just("p1"), name)}).flatmap(
            lambda n: prop_schema.map(lambda p: {**n, **p})),
        "metadef_tag": tag,
        "metadef_tags": st.fixed_dictionaries({"tags": st.lists(tag, max_size=4)}),
        "metadef_rt": st.fixed_dictionaries({"name": st.sampled_from(["OS::Glance::Image", "OS::Nova::Flavor"])},
                                            optional={"prefix": name, "properties_target": name}),
    }


def volume_body_strategies(fix: Fixtures, image_ids: st.SearchStrategy[str], name: st.SearchStrategy[str],
                           meta: st.SearchStrategy[dict]) -> dict[str, st.SearchStrategy[Any]]:
    """Valid-shaped bodies of the volume API and of compute's volume routes."""
    def real(kind: str) -> st.SearchStrategy[str]:
        return st.integers(0, 1000).map(lambda i: fix.pick(kind, i))

    volumes, snapshots, servers = real("volume_id"), real("snapshot_id"), real("server_id")
    a_uuid = st.uuids().map(str)
    # the largest volume allowed (16384 GiB by default) and just past it
    largest = st.sampled_from([16383, 16384, 16385, 2**31 - 1, 2**31, 2**63])
    size = weighted((6, st.integers(1, 3)), (1, st.integers(4, 20000)), (1, st.integers(-1, 0)), (1, largest),
                    (1, st.sampled_from(["1", "2", " 2", "1.0", "²", "16384"])))
    text = st.one_of(st.none(), name, st.text(max_size=10))
    volume_meta = st.one_of(meta, st.just({"k1": "v1"}), st.dictionaries(st.sampled_from(["k1", "k2", "k3"]),
                                                                          st.text(max_size=5), max_size=3))
    source = st.one_of(st.just({}), st.just({}), volumes.map(lambda v: {"source_volid": v}),
                       snapshots.map(lambda v: {"snapshot_id": v}), image_ids.map(lambda v: {"imageRef": v}),
                       a_uuid.map(lambda v: {"snapshot_id": v}), a_uuid.map(lambda v: {"image_id": v}))
    volume = st.tuples(st.fixed_dictionaries({"size": size}, optional={
        "name": text, "description": text, "metadata": volume_meta,
        "volume_type": st.sampled_from([None, "", "__DEFAULT__", DEFAULT_VOLUME_TYPE_ID, "lvm", "ssd"]),
        "availability_zone": st.sampled_from([None, "", "nova", "az2"]),
        "multiattach": st.sampled_from([False, True, None, "false"]),
    }), source).map(lambda t: {"volume": {**t[0], **t[1]}})
    volume_update = st.fixed_dictionaries({}, optional={
        "name": text, "description": text, "metadata": volume_meta, "display_name": text,
    }).map(lambda v: {"volume": v})
    flag = st.one_of(st.booleans(), st.sampled_from(["true", "false", "yes", "0", "maybe", None, 1]))
    volume_status = st.sampled_from(["available", "error", "in-use", "reserved", "error_deleting", "error_extending",
                                     "creating", "deleting", "attaching", "detaching", "maintenance", "bogus"])
    volume_action = st.one_of(
        weighted((3, st.integers(1, 8)), (2, largest), (1, size)).map(lambda n: {"os-extend": {"new_size": n}}),
        st.fixed_dictionaries({"status": volume_status}, optional={
            "attach_status": st.sampled_from(["attached", "detached", "bogus"]),
            "migration_status": st.sampled_from(["migrating", None])}).map(lambda v: {"os-reset_status": v}),
        st.sampled_from([{"os-force_delete": {}}, {"os-force_delete": None}, {"bogus": {}},
                         {"os-reset_status": {}}, {"os-attach": {"instance_uuid": str(uuid.UUID(int=1))}},
                         {"os-detach": {}}, {"os-extend": {}}]),
        flag.map(lambda v: {"os-set_bootable": {"bootable": v}}),
        flag.map(lambda v: {"os-update_readonly_flag": {"readonly": v}}),
    )
    snapshot = st.fixed_dictionaries({"volume_id": volumes}, optional={
        "name": text, "description": text, "force": flag, "metadata": volume_meta,
        "display_name": text,
    }).map(lambda v: {"snapshot": v})
    snapshot_update = st.fixed_dictionaries({}, optional={"name": text, "description": text,
                                                          "display_description": text}).map(
        lambda v: {"snapshot": v})
    snapshot_status = st.sampled_from(["available", "error", "creating", "deleting", "error_deleting", "bogus"])
    report = st.fixed_dictionaries({"status": st.sampled_from(["creating", "deleting", "error", "error_deleting",
                                                               "available", "bogus"])}, optional={
        "progress": st.sampled_from(["90%", "100%", "40%", "", "x" * 20]),
        "compute_snapshot_status": st.sampled_from(["running", "done", "error", "requested", "bogus"]),
        "compute_error": st.text(max_size=20)})
    snapshot_action = st.one_of(
        snapshot_status.map(lambda v: {"os-reset_status": {"status": v}}),
        st.sampled_from([{"os-force_delete": {}}, {"os-force_delete": None}, {"bogus": {}},
                         {"os-reset_status": {}}, {"os-update_snapshot_status": {}}]),
        report.map(lambda v: {"os-update_snapshot_status": v}),
    )
    connector = st.fixed_dictionaries({}, optional={
        "host": st.sampled_from(["fuzz-host", "", "x" * 300]), "mountpoint": st.sampled_from(["/dev/vdc", "", 1]),
        "initiator": st.sampled_from([None, "iqn.x"]), "platform": st.just("x86_64"), "os_type": st.just("linux"),
        "multipath": st.booleans()})
    attachment = st.fixed_dictionaries({"volume_uuid": volumes}, optional={
        "instance_uuid": st.one_of(servers, a_uuid, st.none()), "connector": st.one_of(connector, st.none()),
        "mode": st.sampled_from(["rw", "ro", "wo"]),
    }).map(lambda v: {"attachment": v})
    volume_attachment = st.fixed_dictionaries({"volumeId": volumes}, optional={
        "device": st.sampled_from([None, "/dev/vdc", "vdd", "/dev/vda", "/dev/sdb", "/dev/vdz", "/dev/vd"]),
        "tag": st.sampled_from(["db", "a/b", "x" * 61, ""]), "delete_on_termination": flag,
    }).map(lambda v: {"volumeAttachment": v})
    new_file = st.one_of(st.tuples(volumes, a_uuid).map(lambda t: f"volume-{t[0]}.{t[1]}"),
                         st.sampled_from(["../etc/passwd", "", ".x", "a" * 300, "volume-x"]))
    create_info = st.fixed_dictionaries({
        "snapshot_id": st.one_of(snapshots, a_uuid), "type": st.sampled_from(["qcow2", "qcow2", "raw"]),
        "new_file": new_file}, optional={"id": a_uuid})
    assisted = st.fixed_dictionaries({"volume_id": volumes, "create_info": create_info}).map(
        lambda v: {"snapshot": v})
    return {
        "volume": volume,
        "volume_update": volume_update,
        "volume_action": volume_action,
        "metadata": volume_meta.map(lambda m: {"metadata": m}),
        "meta": st.tuples(st.sampled_from(["k1", "k2", "nope"]), st.text(max_size=8)).map(
            lambda kv: {"meta": {kv[0]: kv[1]}}),
        "snapshot": snapshot,
        "snapshot_update": snapshot_update,
        "snapshot_action": snapshot_action,
        "attachment": attachment,
        "attachment_update": connector.map(lambda c: {"attachment": {"connector": c}}),
        "attachment_action": st.sampled_from([{"os-complete": None}, {"os-complete": {}}, {"os-bogus": {}}]),
        "volume_attachment": volume_attachment,
        "assisted": assisted,
    }


def baremetal_body_strategies(fix: Fixtures) -> dict[str, st.SearchStrategy[Any]]:
    """Valid-shaped bodies of the bare-metal API."""
    nodes = st.integers(0, 1000).map(lambda i: fix.pick("node_ident", i))
    a_uuid = st.uuids().map(str)
    mac = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))
    hints = st.one_of(st.fixed_dictionaries({}, optional={
        "size": st.one_of(st.integers(-1, 100), st.sampled_from([">= 4", "<in> 1 2", "big", "s== x"])),
        "serial": st.text(max_size=5), "rotational": st.one_of(st.booleans(), st.just("maybe")),
        "colour": st.just("red")}), st.just([]))
    info = st.dictionaries(st.sampled_from(["fake_password", "x", "redfish_address", "token"]), st.text(max_size=6),
                           max_size=3)
    node = st.fixed_dictionaries({"driver": st.sampled_from(["fake-hardware", "fake-hardware", "redfish", "ipmi"])},
                                 optional={
        "name": st.one_of(st.text(max_size=12), st.sampled_from(["n-1", "a b", "x" * 300])),
        "driver_info": info, "properties": st.fixed_dictionaries({}, optional={"root_device": hints}),
        "power_interface": st.sampled_from(["fake", "redfish", "ipmitool"]),
        "snapshot_interface": st.sampled_from(["fake", "no-snapshot", "agent", "x"]),
        "deploy_interface": st.sampled_from(["fake", "direct"]), "uuid": a_uuid, "extra": info,
        "instance_uuid": st.one_of(a_uuid, st.just("x"))})
    change = st.fixed_dictionaries({
        "op": st.sampled_from(["add", "replace", "remove", "move"]),
        "path": st.sampled_from(["/name", "/extra/a", "/driver", "/driver_info/x", "/properties/root_device",
                                 "/instance_uuid", "/maintenance", "/power_interface", "/snapshot_interface",
                                 "/provision_state", "/extra", "/", "/a~1b", "/deploy_interface"]),
        "value": st.one_of(st.text(max_size=8), st.integers(), st.booleans(), st.none(), hints, a_uuid)})
    verb = st.sampled_from(["manage", "provide", "adopt", "abort", "deleted", "snapshot", "deploy", "rebuild", ""])
    provision = st.fixed_dictionaries({"target": verb}, optional={
        "image_ref": st.one_of(a_uuid, st.just("x")), "clean_steps": st.just([])})
    power = st.fixed_dictionaries({"target": st.sampled_from(["power on", "power off", "rebooting", "soft power off",
                                                              "x"])},
                                  optional={"timeout": st.one_of(st.integers(-1, 100), st.text(max_size=3))})
    port = st.fixed_dictionaries({"address": st.one_of(mac, st.just("zz")),
                                  "node_uuid": st.one_of(nodes, a_uuid)},
                                 optional={"extra": info, "pxe_enabled": st.one_of(st.booleans(), st.just("x"))})
    port_change = st.fixed_dictionaries({"op": st.sampled_from(["add", "replace", "remove"]),
                                         "path": st.sampled_from(["/address", "/extra/a", "/node_uuid", "/pxe_enabled",
                                                                  "/uuid"]),
                                         "value": st.one_of(mac, nodes, st.booleans(), st.text(max_size=5))})
    heartbeat = st.fixed_dictionaries({"callback_url": st.sampled_from(["http://10.0.0.1:9999", "x", ""])},
                                      optional={"agent_token": st.one_of(st.text(max_size=8), st.just("******")),
                                                "agent_version": st.text(max_size=8),
                                                "agent_status": st.sampled_from(["start", "end", "error", "x"]),
                                                "progress": st.one_of(st.just({"percent": 5}), st.just([1]))})
    return {
        "bm_node": node, "bm_patch": st.lists(change, max_size=3), "bm_provision": provision, "bm_power": power,
        "bm_port": port, "bm_port_patch": st.lists(port_change, max_size=3), "bm_heartbeat": heartbeat,
        "bm_maintenance": st.fixed_dictionaries({}, optional={"reason": st.one_of(st.text(max_size=8), st.integers())}),
    }


def delete_infos(fix: Fixtures) -> st.SearchStrategy[str]:
    """``delete_info`` of os-assisted-volume-snapshots DELETE: JSON as the volume service sends it."""
    volumes = st.integers(0, 1000).map(lambda i: fix.pick("volume_id", i))
    name = st.one_of(st.none(), volumes.map(lambda v: f"volume-{v}"), st.sampled_from(["../x", "", "a" * 300]))
    doc = st.fixed_dictionaries({"volume_id": st.one_of(volumes, st.uuids().map(str))}, optional={
        "type": st.sampled_from(["qcow2", "raw"]), "file_to_merge": name, "merge_target_file": name})
    return st.one_of(doc.map(json.dumps), st.sampled_from(["{", "[]", "null", '{"volume_id": 1}', "{}", "[" * 3000,
                                                           '{"volume_id": ' + "[" * 2000]))


def auth_bodies() -> st.SearchStrategy[Any]:
    """POST /identity/v3/auth/tokens: password (the generated users, wrong passwords), application
    credential, token; project scope by id or name, or other scopes."""
    domain = st.sampled_from([{"name": "Default"}, {"id": "default"}, {"name": "Other"}, {}])
    user = st.one_of(st.fixed_dictionaries({"name": st.sampled_from(["demo", "admin", "nobody", ""]),
                                            "domain": domain, "password": st.text(max_size=12)}),
                     st.fixed_dictionaries({"id": st.sampled_from(["demo", "freezeframe", "x"]),
                                            "password": st.text(max_size=12)}))
    project = st.one_of(st.fixed_dictionaries({"id": st.sampled_from(["demo", "admin", "nope"])}),
                        st.fixed_dictionaries({"name": st.sampled_from(["demo", "service"]), "domain": domain}))
    scope = st.one_of(st.fixed_dictionaries({"project": project}), st.just("unscoped"),
                      st.just({"system": {"all": True}}), st.just({"domain": {"id": "default"}}))
    password = st.fixed_dictionaries({"methods": st.just(["password"]), "password": st.fixed_dictionaries(
        {"user": user})})
    credential = st.fixed_dictionaries({"methods": st.just(["application_credential"]),
                                        "application_credential": st.one_of(
                                            st.fixed_dictionaries({"id": st.text(max_size=8),
                                                                   "secret": st.text(max_size=8)}),
                                            st.fixed_dictionaries({"name": st.text(max_size=8), "user": user,
                                                                   "secret": st.text(max_size=8)}))})
    token = st.fixed_dictionaries({"methods": st.just(["token"]), "token": st.fixed_dictionaries(
        {"id": st.sampled_from(["fft_" + "x" * 43, MEMBER_TOKEN, ""])})})
    methods = st.fixed_dictionaries({"methods": st.lists(st.sampled_from(["password", "totp", "token"]),
                                                         max_size=3)})
    identity = st.one_of(password, credential, token, methods)
    return st.fixed_dictionaries({"auth": st.fixed_dictionaries({"identity": identity},
                                                                optional={"scope": scope})})


RAW_BODIES = [b"", b"{", b"[1,", b"nul", b"\xff\xfe{}", b"\xef\xbb\xbf{}", b'{"a": "\xed\xa0\x80"}', b"\x00",
              '{"name": "x"}'.encode("utf-16"), b"{}" * 1000, b'{"a": 1, "a": 2}', b"[" * 100_000,
              b'"' + b"x" * (1 << 20) + b'"']


def body_strategy(kind: str | None, shapes: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[bytes | None]:
    raw = st.sampled_from(RAW_BODIES)
    junk = any_json.map(lambda v: encode(v).encode())
    if kind is None:
        return weighted((8, st.just(None)), (1, junk), (1, raw))
    if kind == "data":
        return weighted((6, st.binary(max_size=4096)), (1, st.just(b"")), (1, st.just(b"QFI\xfb" + bytes(508))),
                        (1, raw))
    valid = shapes[kind]
    as_is = valid.map(lambda v: encode(v).encode())
    return weighted(
        (9, as_is),
        (3, st.tuples(valid, nasty_value, st.integers(0, 1 << 16)).map(lambda t: encode(mutate_value(*t)).encode())),
        (2, st.tuples(valid, text_any, st.integers(0, 1 << 16)).map(lambda t: encode(mutate_key(*t)).encode())),
        (2, st.tuples(valid, st.sampled_from(RAW_VALUES), st.integers(0, 1 << 16))
         .map(lambda t: encode(mutate_value(*t)).encode())),
        (2, junk), (1, raw), (1, st.just(None)),
    )


def query_values(fix: Fixtures, ep: Endpoint) -> st.SearchStrategy[str] | None:
    """Values the endpoint's own query parameters take (beyond the generic ones), or None."""
    if ep.api == "volume":
        real = st.sampled_from(["volume_id", "snapshot_id", "attachment_id", "server_id"]).flatmap(
            lambda kind: st.integers(0, 1000).map(lambda i: fix.pick(kind, i)))
        return st.one_of(real, st.sampled_from(
            ["available", "in-use", "reserved", "creating", "error", "attached", "detached", "true", "false", "1",
             "yes", "nova", "__DEFAULT__", DEFAULT_VOLUME_TYPE_ID, '{"k1": "v1"}', "{'k1': 'v1'}", '{"k1": 1}',
             "{", "[]", "name:asc,id:desc", "size:desc", "bootable", "status:up", "id:asc,", ":asc", "project-a",
             "project-b", "admin-project", "[" * 3000, '{"k1": ' + "[" * 2000, "{'k1': " + "{'a': " * 600]))
    if "delete_info" in ep.query:
        return delete_infos(fix)
    if ep.api == "baremetal":
        real = st.integers(0, 1000).map(lambda i: fix.pick("node_ident", i))
        return st.one_of(real, st.sampled_from(
            ["enroll", "active", "snapshot wait", "true", "false", "fake-hardware", "name", "uuid,name", "bogus",
             "52:54:00:12:34:56", "52:54:00:12:34:56,zz", "asc", "desc", "provision_state", "-1", "0", "1001"]))
    return None


def request_strategy(endpoints: list[Endpoint], fix: Fixtures) -> st.SearchStrategy[FuzzRequest]:
    shapes = body_strategies(fix)
    per_endpoint = []
    for ep in endpoints:
        names = [p.split("}")[0] for p in ep.path.split("{")[1:]]
        path = st.tuples(*[path_value(fix, ep.kind_of(n)) for n in names]).map(
            lambda values, ep=ep, names=names: _fill(ep.path, names, values))
        extra = query_values(fix, ep)
        # the parameters it reads, whatever the method (DELETE ...?cascade=, ?delete_info=); else
        # mostly none, and random ones
        query = query_strategy(fix, ep.query, extra) if ep.method == "GET" or ep.query else st.one_of(
            st.just(""), st.just(""), query_strategy(fix, (), extra))
        if "delete_info" in ep.query:      # without it the request stops at its check: mostly one
            query = weighted((3, delete_infos(fix).map(lambda d: "delete_info=" + _pct(d))), (2, query))
        per_endpoint.append(st.builds(FuzzRequest, endpoint=st.just(ep), path=path, query=query,
                                      headers=headers_strategy(ep, fix), body=body_strategy(ep.body, shapes)))
    return st.sampled_from(range(len(per_endpoint))).flatmap(lambda i: per_endpoint[i])


def _fill(template: str, names: list[str], values: tuple[str, ...]) -> str:
    for n, v in zip(names, values):
        template = template.replace("{" + n + "}", v, 1)
    return template


# -- the properties -----------------------------------------------------------------------------

def error_object(resp: httpx.Response) -> dict | None:
    """The error inside an answer: ours (``{"error": {...}}``), or Nova's and Cinder's fault
    (``{"<faultName>": {"code", "message", "request_id"}}``, one key whose object has a ``code``
    and a text ``message``); None if it is neither."""
    try:
        body = resp.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    if isinstance(body.get("error"), dict):
        return body["error"]
    if len(body) == 1:
        (name, fault), = body.items()
        if name[:1].islower() and isinstance(fault, dict) and "code" in fault and \
                isinstance(fault.get("message"), str):
            return fault
    return None


def violation(resp: httpx.Response) -> str | None:
    """Why this answer breaks a property, or None."""
    status = resp.status_code
    if status >= 500 and not (status == 503 and "retry-after" in resp.headers):
        return f"HTTP {status}"
    request_id = resp.headers.get("x-openstack-request-id")
    if status >= 400:
        if request_id is None:
            # Refused by the HTTP parser (uvicorn) before the application saw it: plain 400.
            return None if status == 400 else f"HTTP {status} without a request id"
        if resp.headers.get("content-type", "").startswith("application/json") and \
                "error_message" in resp.text[:20]:              # the bare-metal API: Ironic's body
            try:
                body = resp.json()
                fault = json.loads(body["error_message"])
                ok = body.get("request_id") == request_id and isinstance(fault["faultstring"], str)
            except (ValueError, KeyError, TypeError):
                ok = False
            return None if ok else f"HTTP {status}: not Ironic's error body with the request id"
        err = error_object(resp)
        if err is None:
            return f"HTTP {status}: the error body is not JSON with an 'error' object or a Nova/Cinder fault"
        if err.get("request_id") != request_id or err.get("code") != status:
            return f"HTTP {status}: the error body does not carry the request id and code"
        return None
    if resp.content and resp.headers.get("content-type", "").startswith("application/json"):
        try:
            resp.json()
        except ValueError:
            return f"HTTP {status}: the JSON body does not parse"
    return None


@dataclass
class FuzzResult:
    api: str
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    violations: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    # (method, route, status, start of the error message): where the requests ended up
    outcomes: Counter = field(default_factory=Counter)

    @property
    def server_errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if isinstance(s, int) and s >= 500)

    def summary(self) -> str:
        by_status = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items(), key=lambda kv: str(kv[0])))
        return (f"{self.api}: {self.sent} requests in {self.seconds:.1f}s; 500s: {self.statuses.get(500, 0)}; "
                f"violations: {len(self.violations)}; by status: {by_status}")


VOLUME_LISTINGS = ("/volume/v3/volumes/detail", "/volume/v3/snapshots/detail", "/volume/v3/attachments/detail")


def check_listings(base_url: str, volume: bool = False) -> list[str]:
    """The APIs' listings answer 200 for a member and an admin (the volume API's too if served)."""
    problems = []
    paths = ("/image/v2/images", "/compute/v2.1/servers/detail", "/v1/workflows") + (VOLUME_LISTINGS if volume else ())
    for token in (MEMBER_TOKEN, ADMIN_TOKEN):
        with httpx.Client(base_url=base_url, timeout=TIMEOUT, headers={"X-Auth-Token": token,
                                                                        "OpenStack-API-Version": "volume 3.71"}) as c:
            for path in paths:
                resp = c.get(path)
                if resp.status_code != 200:
                    problems.append(f"GET {path} ({'admin' if token == ADMIN_TOKEN else 'member'}): "
                                    f"{resp.status_code} {resp.text[:200]}")
    return problems


_FIXTURES: dict[str, Fixtures] = {}


def fixtures_for(base_url: str) -> Fixtures:
    if base_url not in _FIXTURES:
        _FIXTURES[base_url] = Fixtures(base_url).setup()
    return _FIXTURES[base_url]


def fuzz(base_url: str, api: str, examples: int, *, seed: int = SEED, stop_at_first: bool = True) -> FuzzResult:
    """Send ``examples`` fuzzed requests to one API. With ``stop_at_first`` (tests) the first
    violation fails, naming the request; otherwise (the benchmark) all are counted and the run
    goes on."""
    fix = fixtures_for(base_url)
    endpoints = [e for e in CATALOGUE if e.api == api]
    result = FuzzResult(api)
    client = httpx.Client(base_url=base_url, timeout=TIMEOUT)
    started = time.monotonic()

    def record(problem: str, req: FuzzRequest) -> None:
        result.violations.append((problem, req.describe()))
        if stop_at_first:
            raise AssertionError(f"{problem}: {req.describe()}")

    @settings(max_examples=examples, database=None, deadline=None, print_blob=False,
              phases=[Phase.generate],     # no shrinking: a hang would cost TIMEOUT per shrink step
              suppress_health_check=list(HealthCheck))
    @fixed_seed(seed)
    @given(request_strategy(endpoints, fix))
    def one(req: FuzzRequest) -> None:
        result.sent += 1
        if result.sent % LISTING_EVERY == 0:
            fix.refresh()
            for problem in check_listings(base_url, fix.volume_served):
                record(f"listing broken: {problem}", req)
        url = req.path + ("?" + req.query if req.query else "")
        try:
            resp = client.request(req.endpoint.method, url, content=req.body, headers=req.headers)
        except httpx.TimeoutException:
            result.statuses["timeout"] += 1
            record(f"no answer within {TIMEOUT}s", req)
            return
        except (httpx.InvalidURL, httpx.LocalProtocolError):
            result.statuses["unsendable"] += 1      # the client refuses to send it: nothing to test
            return
        except httpx.TransportError as exc:
            result.statuses["connection error"] += 1
            record(f"connection error: {exc!r}", req)
            return
        result.statuses[resp.status_code] += 1
        message = ""
        if resp.status_code >= 400 and resp.headers.get("content-type", "").startswith("application/json"):
            try:
                message = str((error_object(resp) or {})["message"])[:50]
            except (ValueError, KeyError, TypeError):
                pass
        result.outcomes[(req.endpoint.method, req.endpoint.path, resp.status_code, message)] += 1
        problem = violation(resp)
        if problem is not None:
            record(problem, req)

    try:
        one()
    finally:
        client.close()
        result.seconds = time.monotonic() - started
    for problem in check_listings(base_url, fix.volume_served):
        result.violations.append((f"listing broken: {problem}", "after the run"))
    return result
