"""The compute API as Nova answers (nova/api/openstack/compute/servers.py, flavors.py, limits.py,
availability_zone.py, wsgi.py Fault): server list filters, sort and marker/limit paging with
``servers_links``; fault bodies ``{"itemNotFound": {"code", "message", "request_id"}}`` and the
microversion headers on every answer, errors included; flavors, availability zones, limits.
The real server process with the fake virt driver."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, MEMBER_TOKEN, OTHER_TOKEN, new_image, start_server


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("ff-nova"), env={"FREEZEFRAME_COMPUTE__DRIVER": "fake"})
    yield server
    server.stop()


def nova(server, token=MEMBER_TOKEN, version: str | None = "2.96") -> httpx.Client:
    headers = {"X-Auth-Token": token, **({"OpenStack-API-Version": f"compute {version}"} if version else {})}
    return httpx.Client(base_url=server.url + "/compute/v2.1", headers=headers, timeout=60)


def wait_status(c, server_id, status, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = c.get(f"/servers/{server_id}").json()["server"]
        if body["status"] == status and body["OS-EXT-STS:task_state"] is None:
            return body
        time.sleep(0.1)
    raise AssertionError(f"{server_id} is not {status}: {body}")


@pytest.fixture(scope="module")
def fleet(cloud):
    """project-a: web-1, web-2, db-1 (stopped), gone-1 (deleted); project-b: web-b; admin: adm-1
    (flavor 2). Returns names -> ids, the image id and the time before the deletion."""
    with cloud.client(ADMIN_TOKEN) as images:
        image = new_image(images, name="nova-compat", visibility="public")
        assert images.put(f"/v2/images/{image['id']}/file", content=b"\0" * 65536,
                          headers={"Content-Type": "application/octet-stream"}).status_code == 204
    ids = {}
    for token, name, flavor in ((MEMBER_TOKEN, "web-1", "1"), (MEMBER_TOKEN, "web-2", "1"),
                                (MEMBER_TOKEN, "db-1", "1"), (MEMBER_TOKEN, "gone-1", "1"),
                                (OTHER_TOKEN, "web-b", "1"), (ADMIN_TOKEN, "adm-1", "2")):
        with nova(cloud, token) as c:
            resp = c.post("/servers", json={"server": {"name": name, "imageRef": image["id"], "flavorRef": flavor}})
            assert resp.status_code == 202, resp.text
            ids[name] = resp.json()["server"]["id"]
            wait_status(c, ids[name], "ACTIVE")
            time.sleep(0.01)          # distinct created_at
    with nova(cloud) as c:
        assert c.post(f"/servers/{ids['db-1']}/action", json={"os-stop": None}).status_code == 202
        wait_status(c, ids["db-1"], "SHUTOFF")
        time.sleep(1.1)
        before_delete = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        assert c.delete(f"/servers/{ids['gone-1']}").status_code == 204
    return ids, image["id"], before_delete


def names(resp) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [s["name"] for s in resp.json()["servers"]]


# -- faults and headers ---------------------------------------------------------------------------

def test_fault_bodies_carry_code_message_and_request_id(cloud):
    with nova(cloud) as c:
        missing = c.get("/servers/00000000-0000-0000-0000-000000000000")
        assert missing.status_code == 404
        fault = missing.json()["itemNotFound"]
        assert fault["code"] == 404 and "could not be found" in fault["message"]
        assert fault["request_id"] == missing.headers["x-openstack-request-id"]
        bad = c.post("/servers", json={"server": {"name": "x"}})
        assert bad.status_code == 400 and set(bad.json()) == {"badRequest"}
        assert bad.json()["badRequest"]["code"] == 400
        no_route = c.get("/no-such-thing")
        assert no_route.status_code == 404 and no_route.json()["itemNotFound"]["message"]
        method = c.put("/servers")
        assert method.status_code == 405 and method.json()["badMethod"]["code"] == 405
    with nova(cloud, OTHER_TOKEN) as c:
        refused = c.get("/os-services")
        assert refused.status_code == 403 and refused.json()["forbidden"]["code"] == 403


def test_microversion_headers_on_every_answer_errors_too(cloud):
    with nova(cloud, version="2.60") as c:
        for resp in (c.get("/servers"), c.get("/servers/nope"), c.get("/flavors"), c.post("/servers", json={})):
            assert resp.headers["openstack-api-version"] == "compute 2.60", resp.status_code
            assert resp.headers["x-openstack-nova-api-version"] == "2.60"
            assert "OpenStack-API-Version" in resp.headers["vary"]
            assert "X-OpenStack-Nova-API-Version" in resp.headers["vary"]
    with nova(cloud, version=None) as c:      # none asked: 2.1, Nova's default
        assert c.get("/servers").headers["x-openstack-nova-api-version"] == "2.1"
    with nova(cloud, version="latest") as c:
        assert c.get("/servers").headers["openstack-api-version"] == "compute 2.96"


def test_unsupported_version_is_406_malformed_400(cloud):
    with nova(cloud, version="3.0") as c:
        resp = c.get("/servers")
    assert resp.status_code == 406
    fault = resp.json()["computeFault"]        # Nova's Fault has no name for 406
    assert fault["code"] == 406 and "Minimum is 2.1 and maximum is 2.96" in fault["message"]
    assert fault["request_id"] == resp.headers["x-openstack-request-id"]
    assert "OpenStack-API-Version" in resp.headers["vary"]
    with nova(cloud, version="2.x") as c:
        bad = c.get("/servers")
    assert bad.status_code == 400 and bad.json()["badRequest"]["code"] == 400


# -- server list ----------------------------------------------------------------------------------

def test_own_project_only_even_for_admins_unless_all_tenants(cloud, fleet):
    ids, _, _ = fleet
    with nova(cloud) as c:
        assert sorted(names(c.get("/servers"))) == ["db-1", "web-1", "web-2"]
        forbidden = c.get("/servers", params={"all_tenants": "1"})
        assert forbidden.status_code == 403 and "get_all_tenants" in forbidden.json()["forbidden"]["message"]
    with nova(cloud, ADMIN_TOKEN) as c:
        assert names(c.get("/servers")) == ["adm-1"]
        everyone = names(c.get("/servers/detail", params={"all_tenants": "True"}))
        assert sorted(everyone) == ["adm-1", "db-1", "web-1", "web-2", "web-b"]
        assert names(c.get("/servers", params={"all_tenants": "1", "project_id": "project-b"})) == ["web-b"]
        assert c.get("/servers", params={"all_tenants": "maybe"}).status_code == 400


def test_default_order_is_newest_first_and_detail_has_the_same_filters(cloud, fleet):
    with nova(cloud) as c:
        assert names(c.get("/servers")) == ["db-1", "web-2", "web-1"]
        detail = c.get("/servers/detail", params={"name": "^web"}).json()["servers"]
        assert [s["name"] for s in detail] == ["web-2", "web-1"]
        assert detail[0]["status"] == "ACTIVE" and detail[0]["tags"] == [] and detail[0]["locked"] is False
        assert detail[0]["OS-EXT-AZ:availability_zone"] == "nova"


def test_name_is_a_regex_searched_anywhere(cloud, fleet):
    with nova(cloud) as c:
        assert sorted(names(c.get("/servers", params={"name": "web"}))) == ["web-1", "web-2"]
        assert names(c.get("/servers", params={"name": "-1$"})) == ["db-1", "web-1"]
        assert names(c.get("/servers", params={"name": "eb-[12]"})) == ["web-2", "web-1"]
        assert names(c.get("/servers", params={"name": "WEB"})) == []
        bad = c.get("/servers", params={"name": "web-("})
        assert bad.status_code == 400 and "regular expression" in bad.json()["badRequest"]["message"]
        # patterns whose backtracking is exponential (or n**5) are refused at once, not run
        for slow in ("(w+)+$", "(w|ww)*$", ".*.*.*.*x"):
            started = time.monotonic()
            resp = c.get("/servers", params={"name": slow})
            assert resp.status_code == 400 and "too complex" in resp.json()["badRequest"]["message"], slow
            assert time.monotonic() - started < 5
        assert names(c.get("/servers", params={"name": "^w.*-[0-9]+$"})) == ["web-2", "web-1"]


def test_status_filter_as_nova(cloud, fleet):
    with nova(cloud) as c:
        assert names(c.get("/servers", params={"status": "SHUTOFF"})) == ["db-1"]
        assert names(c.get("/servers", params={"status": "shutoff"})) == ["db-1"]
        assert names(c.get("/servers", params=[("status", "SHUTOFF"), ("status", "ACTIVE")])) == \
            ["db-1", "web-2", "web-1"]
        assert names(c.get("/servers", params={"status": "REBOOT"})) == []   # a status Nova knows
        invalid = c.get("/servers", params={"status": "SLEEPY"})
        assert invalid.status_code == 400 and invalid.json()["badRequest"]["message"] == "Invalid status value"
        deleted = c.get("/servers", params={"status": "DELETED"})
        assert deleted.status_code == 403
    with nova(cloud, version="2.37") as c:    # before 2.38 an unknown status is an empty list
        assert names(c.get("/servers", params={"status": "SLEEPY"})) == []
    with nova(cloud, ADMIN_TOKEN) as c:
        assert names(c.get("/servers", params={"status": "DELETED", "all_tenants": "1"})) == ["gone-1"]


def test_changes_since_and_before_include_deleted_servers(cloud, fleet):
    ids, _, before_delete = fleet
    with nova(cloud) as c:
        assert "gone-1" not in names(c.get("/servers"))
        changed = c.get("/servers/detail", params={"changes-since": before_delete}).json()["servers"]
        gone = [s for s in changed if s["name"] == "gone-1"]
        assert gone and gone[0]["status"] == "DELETED" and gone[0]["id"] == ids["gone-1"]
        assert "web-1" not in [s["name"] for s in changed]      # unchanged since
        early = c.get("/servers", params={"changes-before": before_delete})
        assert "gone-1" not in names(early) and "web-1" in names(early)
        assert c.get("/servers", params={"changes-since": "yesterday"}).status_code == 400
        assert c.get("/servers", params={"changes-since": "2030-01-01T00:00:00Z",
                                         "changes-before": "2020-01-01T00:00:00Z"}).status_code == 400
    with nova(cloud, version="2.65") as c:      # changes-before is 2.66: ignored before
        assert "gone-1" not in names(c.get("/servers", params={"changes-before": "2000-01-01T00:00:00Z"}))


def test_image_flavor_host_filters(cloud, fleet):
    ids, image_id, _ = fleet
    with nova(cloud) as c:
        assert len(names(c.get("/servers", params={"image": image_id}))) == 3
        assert names(c.get("/servers", params={"image": "00000000-0000-0000-0000-000000000000"})) == []
        assert len(names(c.get("/servers", params={"flavor": "1"}))) == 3
        assert names(c.get("/servers", params={"flavor": "2"})) == []
        assert names(c.get("/servers", params={"flavor": "no-such-flavor"})) == []
        # host is for admins: a member's host filter is dropped, as Nova's
        assert len(names(c.get("/servers", params={"host": "no-such-host"}))) == 3
    with nova(cloud, ADMIN_TOKEN) as c:
        host = c.get(f"/servers/{ids['web-1']}").json()["server"]["OS-EXT-SRV-ATTR:host"]
        assert names(c.get("/servers", params={"all_tenants": "1", "host": "no-such-host"})) == []
        assert len(names(c.get("/servers", params={"all_tenants": "1", "host": host}))) == 5
        assert names(c.get("/servers", params={"all_tenants": "1", "flavor": "2"})) == ["adm-1"]
        joined = c.get("/servers", params={"metadata": "x"})
        assert joined.status_code == 400 and "Invalid filter field" in joined.json()["badRequest"]["message"]


def test_tags_filters_with_no_tags(cloud, fleet):
    with nova(cloud) as c:
        assert names(c.get("/servers", params={"tags": "a"})) == []
        assert names(c.get("/servers", params={"tags-any": "a,b"})) == []
        assert len(names(c.get("/servers", params={"not-tags": "a"}))) == 3
    with nova(cloud, version="2.25") as c:     # before 2.26 the tag filters are not Nova's
        assert len(names(c.get("/servers", params={"tags": "a"}))) == 3


def test_unknown_parameters_ignored_before_275_refused_after(cloud, fleet):
    with nova(cloud, version="2.74") as c:
        assert len(names(c.get("/servers", params={"bogus": "1"}))) == 3
    with nova(cloud, version="2.75") as c:
        resp = c.get("/servers", params={"bogus": "1"})
        assert resp.status_code == 400 and "bogus" in resp.json()["badRequest"]["message"]


def test_marker_limit_paging_with_next_links(cloud, fleet):
    ids, _, _ = fleet
    with nova(cloud) as c:
        first = c.get("/servers", params={"limit": "2", "name": "-"}).json()
        assert [s["name"] for s in first["servers"]] == ["db-1", "web-2"]
        (link,) = first["servers_links"]
        assert link["rel"] == "next"
        url = urlsplit(link["href"])
        assert url.path.endswith("/compute/v2.1/servers")
        assert parse_qs(url.query) == {"limit": ["2"], "name": ["-"], "marker": [ids["web-2"]]}
        second = c.get(link["href"]).json()
        assert [s["name"] for s in second["servers"]] == ["web-1"] and "servers_links" not in second
        detail = c.get("/servers/detail", params={"limit": "1"}).json()
        assert urlsplit(detail["servers_links"][0]["href"]).path.endswith("/servers/detail")
        assert "servers_links" not in c.get("/servers").json()
        assert c.get("/servers", params={"limit": "0"}).json() == {"servers": []}
        bad_marker = c.get("/servers", params={"marker": "00000000-0000-0000-0000-000000000000"})
        assert bad_marker.status_code == 400
        assert bad_marker.json()["badRequest"]["message"] == \
            "marker [00000000-0000-0000-0000-000000000000] not found"
        other = c.get("/servers", params={"marker": ids["web-b"]})      # another project's
        assert other.status_code == 400
        assert c.get("/servers", params={"limit": "-1"}).status_code == 400
        assert c.get("/servers", params={"limit": "x"}).status_code == 400
        # a deleted server still marks its place (it went between two pages)
        after = c.get("/servers", params={"marker": ids["gone-1"]})
        assert after.status_code == 200


def test_sort_keys_and_dirs(cloud, fleet):
    with nova(cloud) as c:
        assert names(c.get("/servers", params={"sort_key": "display_name", "sort_dir": "asc"})) == \
            ["db-1", "web-1", "web-2"]
        assert names(c.get("/servers", params={"sort_key": "display_name"})) == ["web-2", "web-1", "db-1"]
        assert names(c.get("/servers", params=[("sort_key", "vm_state"), ("sort_key", "display_name"),
                                               ("sort_dir", "asc"), ("sort_dir", "desc")])) == \
            ["web-2", "web-1", "db-1"]
        paged = c.get("/servers", params={"sort_key": "display_name", "sort_dir": "asc", "limit": 1}).json()
        nxt = c.get(paged["servers_links"][0]["href"])
        assert names(nxt) == ["web-1"]
        assert c.get("/servers", params={"sort_key": "nonsense"}).status_code == 400
        assert c.get("/servers", params={"sort_key": "display_name", "sort_dir": "up"}).status_code == 400
        assert c.get("/servers", params={"sort_key": "host"}).status_code == 403


# -- flavors, availability zones, limits -----------------------------------------------------------

def test_flavors_list_detail_show_filters_paging(cloud):
    with nova(cloud, version="2.61") as c:
        listed = c.get("/flavors").json()
        assert [f["id"] for f in listed["flavors"]] == ["1", "2", "3"]
        assert set(listed["flavors"][0]) == {"id", "name", "links", "description"}
        assert listed["flavors"][0]["links"][0]["href"].endswith("/compute/v2.1/flavors/1")
        detail = c.get("/flavors/detail").json()["flavors"]
        assert detail[1]["ram"] == 2048 and detail[1]["os-flavor-access:is_public"] is True
        assert detail[1]["extra_specs"] == {}
        assert [f["id"] for f in c.get("/flavors", params={"minRam": "2048"}).json()["flavors"]] == ["2", "3"]
        assert [f["id"] for f in c.get("/flavors", params={"minDisk": "21"}).json()["flavors"]] == ["3"]
        bad = c.get("/flavors", params={"minRam": "lots"})
        assert bad.status_code == 400 and bad.json()["badRequest"]["message"] == "Invalid minRam filter [lots]"
        page = c.get("/flavors", params={"limit": "2"}).json()
        assert [f["id"] for f in page["flavors"]] == ["1", "2"]
        assert parse_qs(urlsplit(page["flavors_links"][0]["href"]).query)["marker"] == ["2"]
        assert [f["id"] for f in c.get(page["flavors_links"][0]["href"]).json()["flavors"]] == ["3"]
        assert c.get("/flavors", params={"marker": "99"}).json()["badRequest"]["message"] == "marker [99] not found"
        assert [f["id"] for f in c.get("/flavors", params={"sort_key": "memory_mb", "sort_dir": "desc"})
                .json()["flavors"]] == ["3", "2", "1"]
        shown = c.get("/flavors/2").json()["flavor"]
        assert shown["name"] == "m1.small" and shown["vcpus"] == 1 and shown["disk"] == 20
        missing = c.get("/flavors/nope")
        assert missing.status_code == 404 and "nope" in missing.json()["itemNotFound"]["message"]
    with nova(cloud, ADMIN_TOKEN) as c:
        assert c.get("/flavors", params={"is_public": "false"}).json()["flavors"] == []
        assert len(c.get("/flavors", params={"is_public": "none"}).json()["flavors"]) == 3
        assert c.get("/flavors", params={"is_public": "perhaps"}).status_code == 400


def test_availability_zones(cloud):
    with nova(cloud) as c:
        zones = c.get("/os-availability-zone").json()["availabilityZoneInfo"]
        assert zones == [{"zoneName": "nova", "zoneState": {"available": True}, "hosts": None}]
        assert c.get("/os-availability-zone/detail").status_code == 403
    with nova(cloud, ADMIN_TOKEN) as c:
        (zone,) = c.get("/os-availability-zone/detail").json()["availabilityZoneInfo"]
        (host,) = zone["hosts"].values()
        assert host["nova-compute"]["available"] is True and host["nova-compute"]["active"] is True


def test_limits_shape_and_usage(cloud, fleet):
    with nova(cloud, version="2.1") as c:
        limits = c.get("/limits").json()["limits"]
        assert limits["rate"] == []
        absolute = limits["absolute"]
        assert absolute["totalInstancesUsed"] == 3 and absolute["totalCoresUsed"] == 3
        assert absolute["totalRAMUsed"] == 3 * 256 and absolute["maxServerMeta"] == 128
        assert absolute["maxTotalInstances"] == -1 and "maxImageMeta" in absolute
        assert "maxTotalFloatingIps" in absolute
        assert c.get("/limits", params={"tenant_id": "project-b"}).status_code == 403
    with nova(cloud, version="2.57") as c:
        absolute = c.get("/limits").json()["limits"]["absolute"]
        assert not {"maxImageMeta", "maxPersonality", "maxTotalFloatingIps"} & set(absolute)
    with nova(cloud, ADMIN_TOKEN) as c:
        other = c.get("/limits", params={"tenant_id": "project-b"}).json()["limits"]["absolute"]
        assert other["totalInstancesUsed"] == 1
