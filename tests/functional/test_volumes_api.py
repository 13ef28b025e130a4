"""The Cinder v3 API end to end through a real `serve` process with the real qcow2file driver
(files and qcow2 overlays on the share under its data dir): bodies, statuses, microversions,
paging, project isolation, snapshots offline, attachments, and bad input on every endpoint
(a clear 4xx with the request id, nothing half-written)."""

import json
import subprocess
import time
from uuid import uuid4

import httpx
import pytest

from tests.conftest import start_server

V = {"OpenStack-API-Version": "volume 3.71"}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("vol") / "ff",
                          env={"FREEZEFRAME_COMPUTE__DRIVER": "fake", "FREEZEFRAME_CONDUCTOR__SCAN_INTERVAL": "0.5"})
    yield server
    server.stop()


def cinder(server, token=None, version="3.71", project=True):
    token = token or server.member_token
    project_id = {server.member_token: "project-a", server.other_token: "project-b",
                  server.admin_token: "admin-project"}.get(token, "project-a")
    base = server.url + "/volume/v3" + (f"/{project_id}" if project else "")
    return httpx.Client(base_url=base, timeout=60, headers={"X-Auth-Token": token,
                                                            "OpenStack-API-Version": f"volume {version}"})


FAULT_NAMES = {400: "badRequest", 403: "forbidden", 404: "itemNotFound", 406: "computeFault",
               409: "conflictingRequest"}      # Cinder's wsgi.Fault._fault_names (406: its default)


def fault(resp):
    """The inner dict of Cinder's fault body, ``{"<faultName>": {"code", "message", ...}}``."""
    body = resp.json()
    assert len(body) == 1, body
    (name, inner), = body.items()
    assert inner["code"] == resp.status_code and isinstance(inner["message"], str), body
    assert name == FAULT_NAMES.get(resp.status_code, name), body
    assert inner["request_id"] == resp.headers["X-OpenStack-Request-Id"], (body, resp.headers)
    return inner


def wait_status(c, kind, row_id, status, timeout=30):
    deadline = time.monotonic() + timeout
    body = None
    while time.monotonic() < deadline:
        resp = c.get(f"/{kind}s/{row_id}")
        if resp.status_code == 404 and status == "deleted":
            return None
        body = resp.json()[kind]
        if body["status"] == status:
            return body
        if body["status"] in ("error", "error_deleting") and status not in ("error", "error_deleting"):
            raise AssertionError(f"{kind} {row_id} ended {body['status']}: {body}")
        time.sleep(0.1)
    raise AssertionError(f"{kind} {row_id} not {status}: {body}")


def new_volume(c, size=1, **attrs):
    resp = c.post("/volumes", json={"volume": {"size": size, **attrs}})
    assert resp.status_code == 202, resp.text
    return wait_status(c, "volume", resp.json()["volume"]["id"], "available")


def share(server):
    return server.data_dir / "volumes"


def test_version_documents_are_public_and_microversions_negotiated(cloud):
    with httpx.Client(base_url=cloud.url) as c:
        doc = c.get("/volume/v3/").json()["versions"][0]
        assert (doc["id"], doc["min_version"], doc["version"]) == ("v3.0", "3.0", "3.71")
        assert c.get("/volume/").status_code == 300
    with cinder(cloud) as c:
        resp = c.get("/volumes")
        assert resp.headers["OpenStack-API-Version"] == "volume 3.71"
        assert "OpenStack-API-Version" in resp.headers["Vary"]
        assert c.get("/volumes", headers={"OpenStack-API-Version": "volume latest"}).headers[
            "OpenStack-API-Version"] == "volume 3.71"
        too_new = c.get("/volumes", headers={"OpenStack-API-Version": "volume 3.72"})
        assert too_new.status_code == 406 and "3.71" in fault(too_new)["message"]
        assert c.get("/volumes", headers={"OpenStack-API-Version": "volume 3.x"}).status_code == 400
        assert c.get("/volumes", headers={"OpenStack-API-Version": "volume 2.0"}).status_code == 406
    with cinder(cloud, project=False) as c:      # 3.67 style: no project id in the URL
        assert c.get("/volumes").status_code == 200
    with cinder(cloud) as c:
        resp = c.get(cloud.url + "/volume/v3/project-b/volumes")
        assert resp.status_code == 400 and "project-b" in fault(resp)["message"]   # Cinder: malformed url


def test_a_blank_volume_is_created_sparse_shown_listed_and_deleted(cloud):
    with cinder(cloud) as c:
        resp = c.post("/volumes", json={"volume": {"size": 1, "name": "v1", "metadata": {"k": "v"}}})
        assert resp.status_code == 202, resp.text
        created = resp.json()["volume"]
        assert created["status"] == "creating" and created["bootable"] == "false" and created["attachments"] == []
        assert created["volume_type"] == "__DEFAULT__" and created["availability_zone"] == "nova"
        vol = wait_status(c, "volume", created["id"], "available")
        assert vol["size"] == 1 and vol["metadata"] == {"k": "v"} and vol["consumes_quota"] is True
        path = share(cloud) / f"volume-{vol['id']}"
        assert path.stat().st_size == 1 << 30 and path.stat().st_blocks * 512 < (1 << 20)   # sparse
        assert vol["id"] in [v["id"] for v in c.get("/volumes").json()["volumes"]]
        detail = {v["id"]: v for v in c.get("/volumes/detail").json()["volumes"]}
        assert detail[vol["id"]]["status"] == "available"
        assert c.delete(f"/volumes/{vol['id']}").status_code == 202
        wait_status(c, "volume", vol["id"], "deleted")
        assert not path.exists()


def test_lists_page_sort_filter_and_count(cloud):
    with cinder(cloud) as c:
        ids = [new_volume(c, name=f"page-{i}", metadata={"batch": "paging"})["id"] for i in range(3)]
        page = c.get("/volumes", params={"limit": 2, "metadata": json.dumps({"batch": "paging"})}).json()
        assert [v["id"] for v in page["volumes"]] == ids[::-1][:2]
        nxt = page["volumes_links"][0]["href"]
        rest = c.get(nxt).json()
        assert [v["id"] for v in rest["volumes"]] == [ids[0]]
        asc = c.get("/volumes", params={"sort": "name:asc", "name": "page-1"}).json()["volumes"]
        assert [v["id"] for v in asc] == [ids[1]]
        counted = c.get("/volumes/detail", params={"with_count": "true", "metadata": '{"batch": "paging"}'}).json()
        assert counted["count"] >= 3
        assert c.get("/volumes", params={"sort": "nope:asc"}).status_code == 400
        assert c.get("/volumes", params={"marker": "00000000-0000-0000-0000-000000000000"}).status_code == 404
        assert c.get("/volumes", params={"limit": "-1"}).status_code == 400
        for vid in ids:
            assert c.delete(f"/volumes/{vid}").status_code == 202


def test_projects_are_isolated_and_admins_see_all_tenants(cloud):
    with cinder(cloud) as mine, cinder(cloud, cloud.other_token) as theirs, cinder(cloud, cloud.admin_token) as admin:
        vol = new_volume(mine, name="private")
        assert theirs.get(f"{cloud.url}/volume/v3/project-b/volumes/{vol['id']}").status_code == 404
        assert vol["id"] not in [v["id"] for v in theirs.get("/volumes").json()["volumes"]]
        assert theirs.delete(f"/volumes/{vol['id']}").status_code == 404
        assert vol["id"] not in [v["id"] for v in admin.get("/volumes").json()["volumes"]]
        everyone = admin.get("/volumes/detail", params={"all_tenants": "1"}).json()["volumes"]
        found = [v for v in everyone if v["id"] == vol["id"]]
        assert found and found[0]["os-vol-tenant-attr:tenant_id"] == "project-a" and "os-vol-host-attr:host" in found[0]
        assert mine.post(f"/volumes/{vol['id']}/action", json={"os-reset_status": {"status": "error"}}).status_code == 403
        assert mine.post(f"/volumes/{vol['id']}/action", json={"os-force_delete": {}}).status_code == 403
        assert mine.delete(f"/volumes/{vol['id']}").status_code == 202


@pytest.mark.parametrize("body, status, words", [
    ({"volume": {"size": 0}}, 400, "minimum"),
    ({"volume": {"size": "abc"}}, 400, "size"),
    ({"volume": {"size": True}}, 400, "size"),
    ({"volume": {}}, 400, "size is required"),
    ({"volume": {"size": 1, "name": "x" * 300}}, 400, "name"),
    ({"volume": {"size": 1, "volume_type": "gold"}}, 404, "gold"),
    ({"volume": {"size": 1, "availability_zone": "mars"}}, 400, "mars"),
    ({"volume": {"size": 1, "snapshot_id": "00000000-0000-0000-0000-000000000000"}}, 404, "Snapshot"),
    ({"volume": {"size": 1, "source_volid": "not-a-uuid"}}, 400, "source_volid"),
    ({"volume": {"size": 1, "metadata": ["a"]}}, 400, "metadata"),
    ({"volume": {"size": 1, "metadata": {"k": 1}}}, 400, "metadata"),
    ({"volume": {"size": 1, "multiattach": True}}, 400, "multiattach"),
    ({"volume": {"size": 99999999}}, 400, "largest"),
    ({}, 400, "volume"),
    ([1], 400, "volume"),
])
def test_bad_volume_creates_are_clear_and_create_nothing(cloud, body, status, words):
    with cinder(cloud) as c:
        before = {v["id"] for v in c.get("/volumes", params={"all_tenants": "0"}).json()["volumes"]}
        resp = c.post("/volumes", json=body)
        assert resp.status_code == status, resp.text
        error = fault(resp)
        assert words.lower() in error["message"].lower() and error["request_id"].startswith("req-")
        # nothing new (an earlier test's volume may finish its deletion meanwhile: not a count)
        assert {v["id"] for v in c.get("/volumes").json()["volumes"]} <= before


def test_not_json_and_unknown_actions(cloud):
    with cinder(cloud) as c:
        assert c.post("/volumes", content=b"{", headers={"Content-Type": "application/json"}).status_code == 400
        vol = new_volume(c)
        for body in ({"os-nope": {}}, {"os-extend": {"new_size": 1}}, {"os-extend": {}}, {"a": 1, "b": 2},
                     {"os-set_bootable": {"bootable": "maybe"}}):
            resp = c.post(f"/volumes/{vol['id']}/action", json=body)
            assert resp.status_code == 400, (body, resp.text)
        assert c.get(f"/volumes/{vol['id']}").json()["volume"]["status"] == "available"
        assert c.delete(f"/volumes/{vol['id']}").status_code == 202


def test_extend_metadata_and_bootable(cloud):
    with cinder(cloud) as c:
        vol = new_volume(c)
        assert c.post(f"/volumes/{vol['id']}/action", json={"os-extend": {"new_size": 2}}).status_code == 202
        extended = wait_status(c, "volume", vol["id"], "available")
        assert extended["size"] == 2
        assert (share(cloud) / f"volume-{vol['id']}").stat().st_size == 2 << 30
        assert c.post(f"/volumes/{vol['id']}/metadata", json={"metadata": {"a": "1"}}).json()["metadata"] == {"a": "1"}
        assert c.put(f"/volumes/{vol['id']}/metadata/b", json={"meta": {"b": "2"}}).status_code == 200
        assert c.get(f"/volumes/{vol['id']}/metadata").json()["metadata"] == {"a": "1", "b": "2"}
        assert c.put(f"/volumes/{vol['id']}/metadata/b", json={"meta": {"c": "2"}}).status_code == 400
        assert c.delete(f"/volumes/{vol['id']}/metadata/a").status_code == 200
        assert c.delete(f"/volumes/{vol['id']}/metadata/a").status_code == 404
        assert c.put(f"/volumes/{vol['id']}/metadata", json={"metadata": {"z": "9"}}).json()["metadata"] == {"z": "9"}
        assert c.post(f"/volumes/{vol['id']}/action", json={"os-set_bootable": {"bootable": True}}).status_code == 200
        assert c.get(f"/volumes/{vol['id']}").json()["volume"]["bootable"] == "true"
        assert c.put(f"/volumes/{vol['id']}", json={"volume": {"name": "renamed"}}).json()["volume"]["name"] == "renamed"
        assert c.put(f"/volumes/{vol['id']}", json={"volume": {"size": 5}}).status_code == 400
        assert c.delete(f"/volumes/{vol['id']}").status_code == 202


def _write(path, offset, data):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def _read_volume(path, tmp_path):
    raw = tmp_path / "read.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(path), str(raw)], check=True)
    return raw


def test_offline_snapshots_keep_their_point_in_time_and_make_volumes(cloud, tmp_path):
    with cinder(cloud) as c, cinder(cloud, cloud.admin_token) as admin:
        vol = new_volume(c)
        path = share(cloud) / f"volume-{vol['id']}"
        _write(path, 4096, b"before" * 100)
        resp = c.post("/snapshots", json={"snapshot": {"volume_id": vol["id"], "name": "s1"}})
        assert resp.status_code == 202, resp.text
        created = resp.json()["snapshot"]
        assert created["status"] == "creating" and created["size"] == 1
        snap = wait_status(c, "snapshot", created["id"], "available")
        assert snap["os-extended-snapshot-attributes:progress"] == "100%"
        info = json.loads((share(cloud) / f"volume-{vol['id']}.info").read_text())
        assert info["active"] == f"volume-{vol['id']}.{snap['id']}"
        # the volume goes on in the overlay; the snapshot keeps what was there
        active = share(cloud) / info["active"]
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x41 4096 4096", str(active)], check=True,
                       capture_output=True)
        resp = c.post("/volumes", json={"volume": {"snapshot_id": snap["id"], "name": "from-snap"}})
        assert resp.status_code == 202, resp.text
        copy = wait_status(c, "volume", resp.json()["volume"]["id"], "available")
        assert copy["size"] == 1 and copy["snapshot_id"] == snap["id"]
        restored = _read_volume(share(cloud) / f"volume-{copy['id']}", tmp_path).read_bytes()
        assert restored[4096:4096 + 600] == b"before" * 100
        assert c.post("/volumes", json={"volume": {"snapshot_id": snap["id"], "size": 0}}).status_code == 400
        # seed 002's admin metadata is for admins only
        assert c.get(f"/snapshots/{snap['id']}/os-admin-metadata").status_code == 403
        assert admin.get(f"{cloud.url}/volume/v3/admin-project/snapshots/{snap['id']}/os-admin-metadata").status_code \
            == 200
        # a volume with snapshots is not deleted; its snapshot is
        refused = c.delete(f"/volumes/{vol['id']}")
        assert refused.status_code == 400 and "snapshot" in fault(refused)["message"]
        assert c.delete(f"/snapshots/{snap['id']}").status_code == 202
        wait_status(c, "snapshot", snap["id"], "deleted")
        assert not (share(cloud) / f"volume-{vol['id']}.{snap['id']}").exists() or \
            json.loads((share(cloud) / f"volume-{vol['id']}.info").read_text()).get(snap["id"]) is None
        current = _read_volume(share(cloud) / json.loads(
            (share(cloud) / f"volume-{vol['id']}.info").read_text())["active"], tmp_path).read_bytes() \
            if (share(cloud) / f"volume-{vol['id']}.info").exists() else _read_volume(path, tmp_path).read_bytes()
        assert current[4096:8192] == b"A" * 4096          # the data written after the snapshot survived
        for vid in (copy["id"], vol["id"]):
            assert c.delete(f"/volumes/{vid}").status_code == 202


@pytest.mark.parametrize("body, words", [
    ({"snapshot": {}}, "volume_id"),
    ({"snapshot": {"volume_id": "00000000-0000-0000-0000-000000000000"}}, "could not be found"),
    ({"snapshot": {"volume_id": "x"}}, "volume_id"),
    ({"snapshot": {"volume_id": "VOL", "force": "notabool"}}, "force"),
    ({"snapshot": {"volume_id": "VOL", "metadata": "x"}}, "metadata"),
    ({"nope": {}}, "snapshot"),
])
def test_bad_snapshot_requests(cloud, body, words):
    with cinder(cloud) as c:
        vol = new_volume(c)
        text = json.dumps(body).replace("VOL", vol["id"])
        resp = c.post("/snapshots", content=text, headers={"Content-Type": "application/json"})
        assert resp.status_code in (400, 404), resp.text
        assert words.lower() in fault(resp)["message"].lower()
        assert c.get("/snapshots", params={"volume_id": vol["id"]}).json()["snapshots"] == []
        assert c.delete(f"/volumes/{vol['id']}").status_code == 202


def test_attachments_reserve_connect_complete_and_delete(cloud):
    with cinder(cloud) as c:
        vol = new_volume(c)
        server_id = "11111111-2222-3333-4444-555555555555"
        assert c.post("/attachments", headers={"OpenStack-API-Version": "volume 3.26"},
                      json={"attachment": {"volume_uuid": vol["id"], "instance_uuid": server_id}}).status_code == 404
        resp = c.post("/attachments", json={"attachment": {"volume_uuid": vol["id"], "instance_uuid": server_id}})
        assert resp.status_code == 200, resp.text
        att = resp.json()["attachment"]
        assert att["status"] == "reserved" and att["connection_info"] == {}
        assert c.get(f"/volumes/{vol['id']}").json()["volume"]["status"] == "reserved"
        again = c.post("/attachments", json={"attachment": {"volume_uuid": vol["id"], "instance_uuid": server_id}})
        assert again.status_code == 400 and "reserved" in fault(again)["message"]
        resp = c.put(f"/attachments/{att['id']}", json={"attachment": {"connector": {"host": "h1",
                                                                                      "mountpoint": "/dev/vdb"}}})
        assert resp.status_code == 200, resp.text
        info = resp.json()["attachment"]["connection_info"]
        assert info["driver_volume_type"] == "qcow2file" and info["data"]["name"] == f"volume-{vol['id']}"
        assert info["data"]["format"] == "raw" and info["data"]["volume_id"] == vol["id"]
        assert c.post(f"/attachments/{att['id']}/action", json={"os-complete": {}}).status_code == 204
        shown = c.get(f"/volumes/{vol['id']}").json()["volume"]
        assert shown["status"] == "in-use"
        assert shown["attachments"][0]["server_id"] == server_id and shown["attachments"][0]["device"] == "/dev/vdb"
        assert c.delete(f"/volumes/{vol['id']}").status_code == 400           # attached
        # an in-use volume: no snapshot without force before 3.66; force=false refused from 3.66
        old = c.post("/snapshots", headers={"OpenStack-API-Version": "volume 3.65"},
                     json={"snapshot": {"volume_id": vol["id"]}})
        assert old.status_code == 400 and "force" in fault(old)["message"]
        assert c.post("/snapshots", json={"snapshot": {"volume_id": vol["id"], "force": False}}).status_code == 400
        listed = c.get("/attachments", params={"volume_id": vol["id"]}).json()["attachments"]
        assert [a["id"] for a in listed] == [att["id"]]
        resp = c.delete(f"/attachments/{att['id']}")
        assert resp.status_code == 200 and resp.json() == {"attachments": []}
        assert c.get(f"/volumes/{vol['id']}").json()["volume"]["status"] == "available"
        assert c.get(f"/attachments/{att['id']}").status_code == 404
        assert c.delete(f"/volumes/{vol['id']}").status_code == 202


def test_snapshot_admin_actions_and_status_reports(cloud):
    with cinder(cloud) as c, cinder(cloud, cloud.admin_token) as admin:
        vol = new_volume(c)
        snap = c.post("/snapshots", json={"snapshot": {"volume_id": vol["id"]}}).json()["snapshot"]
        snap = wait_status(c, "snapshot", snap["id"], "available")
        url = f"{cloud.url}/volume/v3/project-a/snapshots/{snap['id']}/action"
        assert c.post(url, json={"os-reset_status": {"status": "error"}}).status_code == 403
        assert admin.post(url, json={"os-reset_status": {"status": "bogus"}}).status_code == 400
        assert admin.post(url, json={"os-reset_status": {"status": "error"}}).status_code == 202
        assert c.get(f"/snapshots/{snap['id']}").json()["snapshot"]["status"] == "error"
        # a status report for a snapshot nobody asked compute about is refused, and changes nothing
        bad = c.post(url, json={"os-update_snapshot_status": {"status": "creating", "progress": "90%"}})
        assert bad.status_code in (400, 409), bad.text
        assert c.post(url, json={"os-update_snapshot_status": {}}).status_code == 400
        assert admin.post(url, json={"os-force_delete": {}}).status_code == 202
        wait_status(c, "snapshot", snap["id"], "deleted")
        assert c.delete(f"/volumes/{vol['id']}").status_code == 202


def test_types_zones_and_limits(cloud):
    with cinder(cloud) as c:
        types = c.get("/types").json()["volume_types"]
        assert [t["name"] for t in types] == ["__DEFAULT__"]
        assert c.get(f"/types/{types[0]['id']}").json()["volume_type"]["id"] == types[0]["id"]
        assert c.get("/types/default").json()["volume_type"]["name"] == "__DEFAULT__"
        assert c.get("/types/gold").status_code == 404
        zones = c.get("/os-availability-zone").json()["availabilityZoneInfo"]
        assert zones == [{"zoneName": "nova", "zoneState": {"available": True}}]
        assert "absolute" in c.get("/limits").json()["limits"]


def test_errors_are_cinder_faults_and_lists_page_as_cinder(cloud):
    """Every error of the volume API is Cinder's fault body (its name by status, the request id
    also in X-Compute-Request-Id, which python-cinderclient reads), routing errors included;
    lists take offset, the old sort key name cinderclient sends, and attachments page."""
    with cinder(cloud) as c:
        missing = c.get(f"/volumes/{uuid4()}")
        assert missing.status_code == 404 and fault(missing)["message"].endswith("could not be found.")
        assert missing.headers["X-Compute-Request-Id"] == missing.headers["X-OpenStack-Request-Id"]
        assert "X-Compute-Request-Id" in c.get("/volumes").headers           # on every answer, as Cinder's
        for resp, status in ((c.get("/no-such-collection"), 404), (c.patch("/volumes"), 405),
                             (c.post("/volumes", content=b"{", headers={"Content-Type": "application/json"}), 400),
                             (c.get("/volumes", params={"limit": "x"}), 400),
                             (c.get("/volumes", params={"offset": "-1"}), 400),
                             (c.get("/volumes", headers={"OpenStack-API-Version": "volume 3.72"}), 406)):
            assert resp.status_code == status, resp.text
            fault(resp)
        made = [new_volume(c, name="paged")["id"] for _ in range(4)]
        newest = list(reversed(made))

        def ids(path="/volumes", **params):
            resp = c.get(path, params={"name": "paged", **params})
            assert resp.status_code == 200, resp.text
            return resp.json()
        assert [v["id"] for v in ids(offset=1)["volumes"]] == newest[1:]
        page = ids(limit=2, offset=1)
        assert [v["id"] for v in page["volumes"]] == newest[1:3]
        link = page["volumes_links"][0]
        assert link["rel"] == "next" and "offset" not in link["href"] and f"marker={newest[2]}" in link["href"]
        assert [v["id"] for v in httpx.get(link["href"], headers=c.headers).json()["volumes"]] == newest[3:]
        assert [v["id"] for v in ids("/volumes/detail", marker=newest[0], offset=1)["volumes"]] == newest[2:]
        assert [v["id"] for v in ids(sort="display_name:asc,created_at:asc")["volumes"]] == made   # cinderclient's name
        assert [v["id"] for v in ids(size="1", user_id="bob")["volumes"]] == newest        # openstacksdk's filters
        assert ids(size="2")["volumes"] == ids(user_id="carol")["volumes"] == []
        assert c.get("/volumes", params={"size": "big"}).status_code == 400
        atts, server = [], str(uuid4())
        for volume_id in made[:3]:
            resp = c.post("/attachments", json={"attachment": {"volume_uuid": volume_id, "instance_uuid": server}})
            assert resp.status_code == 200, resp.text
            atts.append(resp.json()["attachment"]["id"])
        listed = c.get("/attachments", params={"limit": 2, "instance_id": server}).json()["attachments"]
        assert [a["id"] for a in listed] == [atts[2], atts[1]]
        rest = c.get("/attachments/detail", params={"limit": 2, "marker": atts[1], "instance_id": server}).json()[
            "attachments"]
        assert [a["id"] for a in rest] == [atts[0]] and "connection_info" in rest[0]
        assert [a["id"] for a in c.get("/attachments", params={"sort": "created_at:asc", "offset": 1,
                                                                "instance_id": server}).json()["attachments"]] == atts[1:]
        resp = c.get("/attachments", params={"marker": str(uuid4())})
        assert resp.status_code == 404 and "marker" in fault(resp)["message"].lower()
        for att in atts:
            assert c.delete(f"/attachments/{att}").status_code == 200
        for volume_id in made:
            assert c.delete(f"/volumes/{volume_id}").status_code == 202
