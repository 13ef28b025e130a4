"""Nova's server list query (``GET /servers``, ``/servers/detail``): its filters, sort keys and
``marker``/``limit`` paging, parsed from the query string as nova/api/openstack/compute/servers.py
``_get_servers`` does, then run over the caller's servers.

What Nova does, kept here:
- Filters a non-admin may not use are dropped silently (``host``, ``node``, ``deleted``, ...);
  admins (``os_compute_api:servers:allow_all_filters``) keep every one. From 2.75 a parameter
  Nova's schema does not know is a 400 for everyone; before, it is ignored.
- ``name`` (alias ``display_name``) is a regular expression, matched with ``re.search``.
- ``status`` may repeat; a status Nova does not know is a 400 from 2.38 and an empty list before;
  ``DELETED`` alone is for admins only (403).
- Deleted servers are listed only with ``changes-since``/``changes-before`` (or an admin's
  ``deleted=true``): a client polling for changes sees what went.
- Without ``all_tenants`` everyone (admins too) lists their own project's servers.
- Sorted by ``sort_key``/``sort_dir`` pairs (default ``created_at`` descending), ``created_at``
  and the id appended as tie-breakers in the first direction; a marker is a server id (deleted
  ones too) and the page starts after its place in that order; ``limit`` is capped at 1000.

Servers have no tags here: ``tags``/``tags-any`` match nothing, ``not-tags``/``not-tags-any``
exclude nothing (2.26+); they have no addresses: ``ip``/``ip6`` match nothing."""

from __future__ import annotations

import datetime as dt
import functools
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from starlette.datastructures import QueryParams

from freezeframe.common import errors
from freezeframe.common.strict import INT32_MAX, parse_uint, shown
from freezeframe.common.timeutil import parse_isotime
from freezeframe.compute.model import Instance
from freezeframe.compute.states import VmState

MAX_LIMIT = 1000                 # Nova's [api] max_limit
MAX_REGEX = 255                  # a name regex longer than any name is refused (400)
AVAILABILITY_ZONE = "nova"       # every compute host is in Nova's default zone

# Nova's status words to our vm_states; the other statuses Nova knows (its task-state ones:
# REBOOT, RESIZE, ...) never occur here and match nothing.
STATUS_VM_STATES = {"ACTIVE": VmState.ACTIVE, "BUILD": VmState.BUILDING, "SHUTOFF": VmState.STOPPED,
                    "ERROR": VmState.ERROR, "PAUSED": VmState.PAUSED, "SUSPENDED": VmState.SUSPENDED,
                    "DELETED": VmState.DELETED}
NOVA_ONLY_STATUSES = {"REBOOT", "HARD_REBOOT", "PASSWORD", "REBUILD", "MIGRATING", "RESIZE", "VERIFY_RESIZE",
                      "REVERT_RESIZE", "RESCUE", "SOFT_DELETED", "SHELVED", "SHELVED_OFFLOADED"}
TAG_FILTERS = ("tags", "tags-any", "not-tags", "not-tags-any")
PAGING = ("limit", "marker", "sort_key", "sort_dir")
# Joined-table fields: a 400 "Invalid filter field" (for those who may filter by anything).
JOINED = {"block_device_mapping", "services", "metadata", "system_metadata", "info_cache", "security_groups",
          "pci_devices"}
# Every parameter Nova's 2.75+ query schema knows (index_query_v275).
KNOWN = {"user_id", "project_id", "tenant_id", "launch_index", "image_ref", "image", "kernel_id", "ramdisk_id",
         "hostname", "key_name", "power_state", "vm_state", "task_state", "host", "node", "flavor",
         "reservation_id", "launched_at", "terminated_at", "availability_zone", "name", "display_name",
         "description", "display_description", "locked_by", "uuid", "root_device_name", "config_drive",
         "access_ip_v4", "access_ip_v6", "auto_disk_config", "progress", "sort_key", "sort_dir", "all_tenants",
         "soft_deleted", "deleted", "status", "changes-since", "ip", "ip6", "created_at", "limit", "marker",
         "changes-before", "locked", *TAG_FILTERS, *JOINED}

# Sort keys (Nova's VALID_SORT_KEYS): the ones with a column here, the ones every server holds
# the same value of (sorting by them keeps the default order), and the ones Nova ignores
# (SERVER_LIST_IGNORE_SORT_KEY: accepted before 2.75, dropped; 'locked' valid from 2.73).
SORT_COLUMNS: dict[str, Callable[[Instance], Any]] = {
    "display_name": lambda i: i.name, "hostname": lambda i: i.name, "created_at": lambda i: i.created_at,
    "launched_at": lambda i: i.created_at, "updated_at": lambda i: i.updated_at, "host": lambda i: i.host,
    "node": lambda i: i.node, "image_ref": lambda i: i.image_ref, "instance_type_id": lambda i: i.flavor_id,
    "project_id": lambda i: i.project_id, "user_id": lambda i: i.user_id, "uuid": lambda i: i.id,
    "vm_state": lambda i: i.vm_state, "task_state": lambda i: i.task_state,
    "power_state": lambda i: i.power_state, "id": lambda i: i.id,
}
SORT_CONSTANT = {"access_ip_v4", "access_ip_v6", "auto_disk_config", "availability_zone", "config_drive",
                 "display_description", "kernel_id", "key_name", "launch_index", "locked_by", "progress",
                 "ramdisk_id", "root_device_name", "terminated_at", "locked"}
SORT_IGNORED = {"architecture", "cell_name", "cleaned", "default_ephemeral_device", "default_swap_device",
                "deleted", "deleted_at", "disable_terminate", "ephemeral_gb", "ephemeral_key_uuid", "id",
                "key_data", "launched_on", "locked", "memory_mb", "os_type", "reservation_id", "root_gb",
                "shutdown_terminate", "user_data", "vcpus", "vm_mode"}
SORT_ADMIN_ONLY = {"host", "node"}


def non_admin_filters(version: tuple[int, int]) -> set[str]:
    """The filters a non-admin may use at ``version`` (Nova's ``_get_server_search_options``)."""
    allowed = {"reservation_id", "name", "status", "image", "flavor", "ip", "changes-since", "all_tenants"}
    if version >= (2, 5):
        allowed.add("ip6")
    if version >= (2, 26):
        allowed.update(TAG_FILTERS)
    if version >= (2, 66):
        allowed.add("changes-before")
    if version >= (2, 73):
        allowed.add("locked")
    if version >= (2, 83):
        allowed.update({"availability_zone", "config_drive", "key_name", "created_at", "launched_at",
                        "terminated_at", "power_state", "task_state", "vm_state", "progress", "user_id"})
    if version >= (2, 90):
        allowed.add("hostname")
    return allowed


_TRUE = {"1", "t", "true", "on", "y", "yes"}
_FALSE = {"0", "f", "false", "off", "n", "no"}


def bool_param(name: str, value: str) -> bool:
    """oslo's ``bool_from_string(strict=True)``: a 400 for anything else."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise errors.Invalid(f"Invalid value for {name}: {shown(value)}; use true or false")


def regex_param(name: str, value: str) -> re.Pattern[str]:
    """A filter's regular expression, refused (400) unless its matching time is bounded: Python's
    ``re`` backtracks, so nested or alternated repetition (``(a+)+``, ``(a|aa)*``) is exponential
    and k variable repetitions cost up to n**(k+1) on an n-character name (on 255 characters: 3 ms
    per server for 2, 0.2 s for 3, 15 s for 4 — measured)."""
    if len(value) > MAX_REGEX:
        raise errors.Invalid(f"Invalid filter field: {name}: at most {MAX_REGEX} characters")
    try:
        compiled = re.compile(value)
        variable = _variable_repeats(re._parser.parse(value), inside=False)    # type: ignore[attr-defined]
    except (re.error, RecursionError, OverflowError) as exc:
        raise errors.Invalid(f"Invalid filter field: {name}: not a regular expression ({exc})") from None
    except _TooComplex:
        variable = MAX_VARIABLE_REPEATS + 1
    if variable > MAX_VARIABLE_REPEATS:
        raise errors.Invalid(f"Invalid filter field: {name}: the regular expression is too complex to match in "
                             f"bounded time (at most {MAX_VARIABLE_REPEATS} repetitions such as * + ? {{m,n}}, "
                             "none inside another or around alternatives)")
    return compiled


MAX_VARIABLE_REPEATS = 2


class _TooComplex(Exception):
    pass


def _variable_repeats(items: Any, inside: bool) -> int:
    """How many variable repetitions a parsed pattern holds; _TooComplex for one inside another
    or around an alternation."""
    count = 0
    for op, av in items:
        kind = str(op)
        if kind in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, high, body = av
            if low != high:
                if inside:
                    raise _TooComplex
                count += 1 + _variable_repeats(body, True)
            else:
                count += low * _variable_repeats(body, inside)
        elif kind == "BRANCH":
            if inside:
                raise _TooComplex
            count += sum(_variable_repeats(alt, inside) for alt in av[1])
        elif kind == "SUBPATTERN":
            count += _variable_repeats(av[3], inside)
        elif kind in ("ASSERT", "ASSERT_NOT"):
            count += _variable_repeats(av[1], inside)
        elif kind == "ATOMIC_GROUP":
            count += _variable_repeats(av, inside)
        elif kind == "GROUPREF_EXISTS":
            count += sum(_variable_repeats(branch, inside) for branch in av[1:] if branch)
        if count > MAX_VARIABLE_REPEATS:
            raise _TooComplex
    return count


def time_param(name: str, value: str) -> dt.datetime:
    try:
        return parse_isotime(value.strip())
    except ValueError:
        raise errors.Invalid(f"Invalid filter field: {name}.") from None


@dataclass
class ServerQuery:
    """A parsed server list request."""
    all_tenants: bool = False
    project_id: str | None = None             # with all_tenants: one project (admins)
    name: re.Pattern[str] | None = None
    vm_states: set[str] | None = None         # None: any
    deleted: bool | None = False              # True: only deleted; False: none; None: both
    changes_since: dt.datetime | None = None
    changes_before: dt.datetime | None = None
    exact: dict[str, set[str]] = field(default_factory=dict)    # Instance attribute -> allowed values
    zone: re.Pattern[str] | None = None
    nothing: bool = False                     # a filter no server here can match
    sort: list[tuple[str, bool]] = field(default_factory=list)   # (key, descending)
    marker: str | None = None
    limit: int = MAX_LIMIT

    def admits(self, inst: Instance) -> bool:
        """The filters SQL did not apply (regular expressions)."""
        if self.name is not None and not self.name.search(inst.name or ""):
            return False
        return self.zone is None or self.zone.search(AVAILABILITY_ZONE) is not None


def parse_server_query(params: QueryParams, version: tuple[int, int], *, allow_all_filters: bool,
                       is_admin: bool) -> ServerQuery:
    """Nova's server list query from the request's parameters (see the module's docstring);
    ``Invalid`` (400) or ``Forbidden`` (403) as Nova answers."""
    if version >= (2, 75):
        unknown = sorted(k for k in params if k not in KNOWN and not k.startswith("_"))
        if unknown:
            raise errors.Invalid("Invalid input for query parameters: Additional properties are not allowed "
                                 f"({', '.join(shown(k) for k in unknown)} {'was' if len(unknown) == 1 else 'were'} "
                                 "unexpected)")
    opts = {k: params.getlist(k)[-1] for k in params if k not in PAGING}
    if not allow_all_filters:
        allowed = non_admin_filters(version)
        opts = {k: v for k, v in opts.items() if k in allowed}
    for key in opts:
        if key in JOINED or key.startswith("_"):
            raise errors.Invalid(f"Invalid filter field: {shown(key)}.")
    q = ServerQuery()
    statuses = params.getlist("status") if "status" in opts else []
    if statuses:
        upper = {s.upper() for s in statuses}
        known = upper & (set(STATUS_VM_STATES) | NOVA_ONLY_STATUSES)
        if not known:
            if version >= (2, 38):
                raise errors.Invalid("Invalid status value")
            q.nothing = True
        q.vm_states = {STATUS_VM_STATES[s].value for s in known if s in STATUS_VM_STATES}
        if not q.vm_states:
            q.nothing = True
    if "changes-since" in opts:
        q.changes_since = time_param("changes-since", opts["changes-since"])
    if "changes-before" in opts and version >= (2, 66):
        q.changes_before = time_param("changes-before", opts["changes-before"])
        if q.changes_since is not None and q.changes_before < q.changes_since:
            raise errors.Invalid("The value of changes-since must be less than or equal to changes-before.")
    if q.changes_since is not None or q.changes_before is not None:
        q.deleted = None
    if "deleted" in opts:
        try:
            q.deleted = bool_param("deleted", opts["deleted"])
        except errors.Invalid:
            q.deleted = False               # Nova: an invalid value lists the servers not deleted
    if q.vm_states == {VmState.DELETED.value}:
        if not is_admin:
            raise errors.Forbidden("Only administrators may list deleted instances")
        q.deleted = True
    if "vm_state" in opts:
        q.exact["vm_state"] = {opts["vm_state"]}
    if "task_state" in opts:
        q.exact["task_state"] = {opts["task_state"]}
    for key, attr in (("image", "image_ref"), ("image_ref", "image_ref"), ("flavor", "flavor_id"),
                      ("host", "host"), ("node", "node"), ("uuid", "id"), ("user_id", "user_id")):
        if key in opts:
            q.exact[attr] = q.exact.get(attr, set()) | {opts[key]}
    name = opts.get("name", opts.get("display_name"))
    if name is not None:
        q.name = regex_param("name", name)
    if "availability_zone" in opts:
        q.zone = regex_param("availability_zone", opts["availability_zone"])
    if version >= (2, 26):
        for key in ("tags", "tags-any"):
            if any(t.strip() for t in opts.get(key, "").split(",")):
                q.nothing = True             # no server has a tag
    if opts.get("ip") or opts.get("ip6"):
        q.nothing = True                     # no server has an address
    if "locked" in opts and bool_param("locked", opts["locked"]):
        q.nothing = True                     # no server is locked
    if "all_tenants" in opts:
        q.all_tenants = bool_param("all_tenants", opts["all_tenants"])
    if q.all_tenants:
        project = opts.get("project_id", opts.get("tenant_id"))
        q.project_id = project
    q.sort = parse_sort(params, version, is_admin=is_admin)
    q.marker = params.getlist("marker")[-1] if "marker" in params else None
    if "limit" in params:
        q.limit = min(parse_uint("limit", params.getlist("limit")[-1], maximum=INT32_MAX), MAX_LIMIT)
    return q


def parse_sort(params: QueryParams, version: tuple[int, int], *, is_admin: bool) -> list[tuple[str, bool]]:
    """(key, descending) pairs, Nova's tie-breakers appended (``process_sort_params``)."""
    keys = [k.strip() for k in params.getlist("sort_key")] or ["created_at"]
    dirs = [d.strip() for d in params.getlist("sort_dir")] or ["desc"]
    ignored = SORT_IGNORED - ({"locked"} if version >= (2, 73) else set())
    valid = set(SORT_COLUMNS) - {"id"} | SORT_CONSTANT
    if version < (2, 73):
        valid.discard("locked")
    if version < (2, 75):
        valid |= SORT_IGNORED
    for key in keys:
        if key not in valid:
            raise errors.Invalid(f"Invalid input for query parameters sort_key. Value: {shown(key)}. "
                                 "It is not a valid sort key")
    for key in list(keys):
        if key in ignored:
            index = keys.index(key)
            if len(dirs) > index:
                dirs.pop(index)
            keys.pop(index)
        elif key in SORT_ADMIN_ONLY and not is_admin:
            raise errors.Forbidden(f"Only administrators can sort servers by {key}")
    for d in dirs:
        if d not in ("asc", "desc"):
            raise errors.Invalid("Unknown sort direction, must be 'desc' or 'asc'")
    if len(dirs) > len(keys):
        raise errors.Invalid("Sort direction size exceeds sort key size")
    default = dirs[0] if dirs else "desc"
    dirs += [default] * (len(keys) - len(dirs))
    for key in ("created_at", "id"):
        if key not in keys:
            keys.append(key)
            dirs.append(default)
    return [(k, d == "desc") for k, d in zip(keys, dirs)]


def _compare(sort: list[tuple[str, bool]]) -> Callable[[Instance, Instance], int]:
    def value(inst: Instance, key: str) -> Any:
        get = SORT_COLUMNS.get(key)
        v = get(inst) if get is not None else None
        return (v is not None, v if v is not None else 0)          # NULLs first, as SQLite and MySQL

    def cmp(a: Instance, b: Instance) -> int:
        for key, desc in sort:
            va, vb = value(a, key), value(b, key)
            if va != vb:
                result = -1 if va < vb else 1
                return -result if desc else result
        return 0
    return cmp


def page(rows: Iterable[Instance], q: ServerQuery, marker: Instance | None) -> list[Instance]:
    """The filtered rows sorted, from after ``marker``, at most ``q.limit``."""
    cmp = _compare(q.sort)
    found = sorted((r for r in rows if q.admits(r)), key=functools.cmp_to_key(cmp))
    if marker is not None:
        found = [r for r in found if cmp(r, marker) > 0]
    return found[:q.limit]
