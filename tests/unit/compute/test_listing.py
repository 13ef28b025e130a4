"""The server list query parsed as Nova's ``_get_servers`` (compute/listing.py), without a server."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from starlette.datastructures import QueryParams

from freezeframe.common import errors
from freezeframe.compute.listing import ServerQuery, page, parse_server_query, parse_sort, regex_param
from freezeframe.compute.model import Instance


def parse(query, version=(2, 96), admin=False):
    return parse_server_query(QueryParams(query), version, allow_all_filters=admin, is_admin=admin)


def test_non_admin_filters_are_dropped_admin_ones_kept():
    assert parse("host=h1&node=n&deleted=true").exact == {}
    q = parse("host=h1&node=n", admin=True)
    assert q.exact == {"host": {"h1"}, "node": {"n"}}
    assert parse("user_id=u", version=(2, 82)).exact == {}
    assert parse("user_id=u", version=(2, 83)).exact == {"user_id": {"u"}}


def test_unknown_parameters_by_microversion():
    assert parse("bogus=1", version=(2, 74)).exact == {}
    with pytest.raises(errors.Invalid, match="bogus"):
        parse("bogus=1", version=(2, 75))
    with pytest.raises(errors.Invalid, match="Invalid filter field"):
        parse("security_groups=x", admin=True)


def test_status_words():
    assert parse("status=active&status=SHUTOFF").vm_states == {"active", "stopped"}
    assert parse("status=REBOOT").nothing
    with pytest.raises(errors.Invalid, match="Invalid status value"):
        parse("status=nope")
    assert parse("status=nope", version=(2, 37)).nothing
    with pytest.raises(errors.Forbidden):
        parse("status=DELETED")
    assert parse("status=DELETED", admin=True).deleted is True


def test_changes_since_lists_deleted_and_checks_order():
    q = parse("changes-since=2026-01-01T00:00:00Z")
    assert q.deleted is None and q.changes_since == dt.datetime(2026, 1, 1)
    assert parse("changes-before=2026-01-01T00:00:00Z", version=(2, 65)).changes_before is None
    with pytest.raises(errors.Invalid):
        parse("changes-since=2026-02-01T00:00:00Z&changes-before=2026-01-01T00:00:00Z")
    with pytest.raises(errors.Invalid, match="changes-since"):
        parse("changes-since=soon")


def test_limit_capped_and_checked():
    assert parse("limit=5000").limit == 1000
    assert parse("limit=0").limit == 0
    for bad in ("-1", "x", "1.5"):
        with pytest.raises(errors.Invalid):
            parse(f"limit={bad}")


def test_sort_params_as_novas_process_sort_params():
    def sort(query, version=(2, 96), admin=False):
        return parse_sort(QueryParams(query), version, is_admin=admin)
    assert sort("") == [("created_at", True), ("id", True)]
    assert sort("sort_key=display_name&sort_dir=asc") == [("display_name", False), ("created_at", False),
                                                          ("id", False)]
    assert sort("sort_key=display_name&sort_key=vm_state&sort_dir=asc") == \
        [("display_name", False), ("vm_state", False), ("created_at", False), ("id", False)]
    # an ignored key goes with its direction: the defaults, descending (Nova's default_dir)
    assert sort("sort_key=vcpus&sort_dir=asc", version=(2, 74)) == [("created_at", True), ("id", True)]
    with pytest.raises(errors.Invalid):
        sort("sort_key=vcpus", version=(2, 75))
    with pytest.raises(errors.Invalid, match="Sort direction size"):
        sort("sort_key=display_name&sort_dir=asc&sort_dir=desc")
    with pytest.raises(errors.Forbidden):
        sort("sort_key=host")
    assert sort("sort_key=host", admin=True)[0] == ("host", True)


def test_regex_refuses_what_could_not_finish():
    assert regex_param("name", "^web-[0-9]+$").search("web-12")
    for slow in ("(a+)+$", "(a|aa)*$", ".*.*.*x", "(a*){3}"):
        with pytest.raises(errors.Invalid, match="too complex"):
            regex_param("name", slow)
    with pytest.raises(errors.Invalid, match="not a regular expression"):
        regex_param("name", "(")
    started = time.monotonic()
    regex_param("name", ".*.*x").search("a" * 255)
    assert time.monotonic() - started < 1


def test_page_orders_and_starts_after_the_marker():
    t = dt.datetime(2026, 1, 1)
    rows = [Instance(id=f"00000000-0000-0000-0000-00000000000{i}", name=n, created_at=t + dt.timedelta(seconds=i),
                     vm_state="active") for i, n in enumerate(["b", "a", "c", "a"])]
    q = ServerQuery(sort=parse_sort(QueryParams("sort_key=display_name&sort_dir=asc"), (2, 96), is_admin=False))
    assert [r.id[-1] for r in page(rows, q, None)] == ["1", "3", "0", "2"]
    assert [r.id[-1] for r in page(rows, q, rows[3])] == ["0", "2"]
    q.limit = 1
    assert [r.id[-1] for r in page(rows, q, rows[1])] == ["3"]
    q.name = regex_param("name", "^a$")
    assert [r.id[-1] for r in page(rows, q, None)] == ["1"]
