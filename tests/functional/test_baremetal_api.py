"""The bare-metal API (Ironic v1 subset) end to end through a real `serve` process: microversions,
node CRUD and JSON patch, provision verbs (the allowed ones named on a 400), the node
reservation (409), power, validation, maintenance, ports, the agent's lookup and heartbeat with
Ironic's token rules, Ironic's error bodies, and bad input on every endpoint.

States a node reaches only through a conductor's workflow (active, snapshot wait...) are set in
the database here: these tests are about the API; the workflows' own tests drive them for real."""

import json
import sqlite3
import uuid

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, MEMBER_TOKEN, SERVICE_TOKEN, new_image, start_server

MAX = "1.116"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("bm") / "ff",
                          env={"FREEZEFRAME_BAREMETAL__WEBDAV_BIND": "", "FREEZEFRAME_CONDUCTOR__SCAN_INTERVAL": "0.5"})
    yield server
    server.stop()


def ironic(server, version=MAX, token=ADMIN_TOKEN):
    headers = {"X-OpenStack-Ironic-API-Version": version} if version else {}
    if token:
        headers["X-Auth-Token"] = token
    return httpx.Client(base_url=server.url + "/baremetal/v1", timeout=60, headers=headers)


def fault(resp) -> str:
    """Ironic's error body: the message inside the JSON string of error_message."""
    body = resp.json()
    assert body["request_id"] == resp.headers["x-openstack-request-id"]
    inner = json.loads(body["error_message"])
    assert inner["faultcode"] == ("Server" if resp.status_code >= 500 else "Client") and inner["debuginfo"] is None
    return inner["faultstring"]


def edge_or_fault(resp) -> str:
    """What the edge refuses before routing (a malformed URL, no token) has Freezeframe's body
    (the request id in it too); the rest Ironic's."""
    body = resp.json()
    if "error" in body:
        assert body["error"]["request_id"] == resp.headers["x-openstack-request-id"]
        return body["error"]["message"]
    return fault(resp)


def db_set(server, node_id, **values):
    """Put a node where only a conductor would (a state, a reservation, a token)."""
    con = sqlite3.connect(server.data_dir / "freezeframe.db", timeout=10)
    with con:
        sets = ", ".join(f"{k} = ?" for k in values)
        con.execute(f"UPDATE baremetal_nodes SET {sets} WHERE id = ?", [*values.values(), node_id])
    con.close()


def db_get(server, sql, *args):
    con = sqlite3.connect(server.data_dir / "freezeframe.db", timeout=10)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def new_node(c, **attrs):
    resp = c.post("/nodes", json={"driver": "fake-hardware", **attrs})
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_versions_are_public_and_every_answer_carries_the_range(cloud):
    with httpx.Client(base_url=cloud.url + "/baremetal") as c:          # no token
        root = c.get("/")
        assert root.status_code == 200 and root.json()["default_version"]["version"] == MAX
        assert root.json()["default_version"]["min_version"] == "1.1"
        assert c.get("/v1").json()["version"]["version"] == MAX
        assert c.get("/v1/nodes").status_code == 401                    # the rest needs a token
    with ironic(cloud, version=None) as c:
        resp = c.get("/nodes")
        assert resp.headers["X-OpenStack-Ironic-API-Version"] == "1.1"             # Ironic's default
        assert resp.headers["X-OpenStack-Ironic-API-Minimum-Version"] == "1.1"
        assert resp.headers["X-OpenStack-Ironic-API-Maximum-Version"] == MAX
        latest = c.get("/nodes", headers={"X-OpenStack-Ironic-API-Version": "latest"})
        assert latest.headers["X-OpenStack-Ironic-API-Version"] == MAX
        std = c.get("/nodes", headers={"OpenStack-API-Version": "baremetal 1.50"})
        assert std.headers["OpenStack-API-Version"] == "baremetal 1.50"
        for bad in ("1.117", "2.0", "1.0", "1.x", "abc"):
            resp = c.get("/nodes", headers={"X-OpenStack-Ironic-API-Version": bad})
            assert resp.status_code == 406, bad
            assert resp.headers["X-OpenStack-Ironic-API-Maximum-Version"] == MAX     # on errors too
            fault(resp)
        missing = c.get("/nodes/no-such-node")
        assert missing.status_code == 404 and missing.headers["X-OpenStack-Ironic-API-Minimum-Version"] == "1.1"
        assert fault(missing) == "Node no-such-node could not be found."
        assert c.get("/nope").status_code == 404


def test_node_create_show_list_patch_delete(cloud):
    with ironic(cloud) as c:
        node = new_node(c, name="crud-1", driver_info={"fake_password": "s3cret", "token_x": "t", "plain": "p"},
                        properties={"root_device": {"size": ">= 10", "serial": "ABC"}, "cpus": 4},
                        extra={"k": "v"})
        assert node["provision_state"] == "enroll" and node["power_state"] is None
        assert node["driver_info"] == {"fake_password": "******", "token_x": "******", "plain": "p"}
        assert (node["power_interface"], node["boot_interface"], node["snapshot_interface"]) == ("fake", "fake", "fake")
        assert node["deploy_interface"] == "fake" and node["bios_interface"] == "no-bios"
        assert node["links"][0]["href"].endswith(f"/baremetal/v1/nodes/{node['uuid']}")
        by_name = c.get("/nodes/crud-1").json()
        assert by_name["uuid"] == node["uuid"] and by_name["properties"]["cpus"] == 4
        only = c.get(f"/nodes/{node['uuid']}", params={"fields": "uuid,provision_state"}).json()
        assert set(only) == {"uuid", "provision_state", "links"}
        assert c.get("/nodes/crud-1", params={"fields": "bogus"}).status_code == 400     # (Ironic 39: a 500)
        listed = c.get("/nodes").json()["nodes"]
        summary = [n for n in listed if n["uuid"] == node["uuid"]][0]
        assert set(summary) == {"uuid", "name", "instance_uuid", "maintenance", "power_state", "provision_state",
                                "links"}
        detail = [n for n in c.get("/nodes/detail").json()["nodes"] if n["uuid"] == node["uuid"]][0]
        assert detail["driver_info"]["fake_password"] == "******"
        # patch
        resp = c.patch("/nodes/crud-1", json=[{"op": "add", "path": "/extra/new", "value": 1},
                                              {"op": "replace", "path": "/name", "value": "crud-2"},
                                              {"op": "remove", "path": "/driver_info/plain"}])
        assert resp.status_code == 200, resp.text
        assert resp.json()["extra"] == {"k": "v", "new": 1} and resp.json()["name"] == "crud-2"
        assert resp.json()["driver_info"] == {"fake_password": "******", "token_x": "******"}
        stored = json.loads(db_get(cloud, "SELECT driver_info_json FROM baremetal_nodes WHERE id = ?",
                                   node["uuid"])[0][0])
        assert stored["fake_password"] == "s3cret"                  # masked in answers only
        for patch, words in [
            ([{"op": "replace", "path": "/provision_state", "value": "active"}], "Cannot patch /provision_state"),
            ([{"op": "remove", "path": "/extra/nope"}], "Couldn't apply patch"),
            ({"op": "add"}, "not of type 'array'"),
            ([{"op": "move", "path": "/extra/k", "value": 1}], "is not one of"),
            ([{"op": "add", "path": "/instance_uuid", "value": "nope"}], "Expected UUID for instance_uuid"),
            ([{"op": "add", "path": "/properties/root_device", "value": {"colour": "red"}}], "root device hint"),
            ([{"op": "replace", "path": "/power_interface", "value": "redfish"}], "power_interface"),
            ([{"op": "remove", "path": "/driver"}], "mandatory"),
        ]:
            resp = c.patch(f"/nodes/{node['uuid']}", json=patch)
            assert resp.status_code == 400, (patch, resp.text)
            assert words in fault(resp), (patch, fault(resp))
        assert c.delete("/nodes/crud-2").status_code == 204
        assert c.get(f"/nodes/{node['uuid']}").status_code == 404
        assert c.delete("/nodes/crud-2").status_code == 404


@pytest.mark.parametrize("body, status, words", [
    ({"name": "x"}, 400, "'driver' is a required property"),
    ({"driver": "ipmi"}, 400, "not supported or not enabled"),
    ({"driver": "fake-hardware", "power_interface": "ipmitool"}, 400, "power_interface"),
    ({"driver": "fake-hardware", "deploy_interface": "direct"}, 400, "deploy interface"),
    ({"driver": "fake-hardware", "bogus": 1}, 400, "Additional properties are not allowed ('bogus'"),
    ({"driver": "fake-hardware", "name": "has space"}, 400, "node name"),
    ({"driver": "fake-hardware", "uuid": "nope"}, 400, "Expected UUID for uuid"),
    ({"driver": "fake-hardware", "properties": {"root_device": {"size": "big"}}}, 400, "'size'"),
    ({"driver": "fake-hardware", "properties": {"root_device": {"size": 0}}}, 400, "positive"),
    ({"driver": "fake-hardware", "driver_info": []}, 400, "driver_info"),
    ([1], 400, "JSON object"),
])
def test_bad_node_bodies_are_400s(cloud, body, status, words):
    with ironic(cloud) as c:
        resp = c.post("/nodes", json=body)
        assert resp.status_code == status and words in fault(resp), resp.text


def test_names_are_unique_fields_are_versioned_and_lists_page(cloud):
    with ironic(cloud) as c:
        a = new_node(c, name="page-a", resource_class="rc-page")
        assert c.post("/nodes", json={"driver": "fake-hardware", "name": "page-a"}).status_code == 409
        assert c.post("/nodes", json={"driver": "fake-hardware", "uuid": a["uuid"]}).status_code == 409
        b, d = new_node(c, name="page-b", resource_class="rc-page"), new_node(c, name="page-c", resource_class="rc-page")
        ids = sorted(n["uuid"] for n in (a, b, d))
        first = c.get("/nodes", params={"resource_class": "rc-page", "limit": 2}).json()
        assert [n["uuid"] for n in first["nodes"]] == ids[:2] and "marker=" in first["next"]
        rest = httpx.get(first["next"], headers=c.headers).json()
        assert [n["uuid"] for n in rest["nodes"]] == ids[2:]
        desc = c.get("/nodes", params={"resource_class": "rc-page", "sort_key": "name", "sort_dir": "desc"}).json()
        assert [n["name"] for n in desc["nodes"]] == ["page-c", "page-b", "page-a"]
        for params, words in [({"sort_key": "bogus"}, "invalid field for sorting"), ({"limit": "-1"}, "positive"),
                              ({"marker": "nope"}, "Expected UUID for marker"),
                              ({"provision_state": "bogus"}, 'Provision state "bogus" is not valid'),
                              ({"maintenance": "maybe"}, "maintenance"), ({"sort_dir": "up"}, "sort direction")]:
            resp = c.get("/nodes", params=params)
            assert resp.status_code == 400 and words in fault(resp), (params, resp.text)
        assert c.get("/nodes", params={"marker": str(uuid.uuid4())}).status_code == 404
        enrolled = c.get("/nodes", params={"provision_state": "enroll", "associated": "false"}).json()["nodes"]
        assert a["uuid"] in [n["uuid"] for n in enrolled]
    with ironic(cloud, version="1.1") as old:
        body = old.get(f"/nodes/{a['uuid']}").json()
        assert "name" not in body and "snapshot_interface" not in body and "driver_internal_info" not in body
        assert old.get("/nodes", params={"provision_state": "enroll"}).status_code == 406     # (1.9)
        assert old.post("/nodes", json={"driver": "fake-hardware", "name": "too-early"}).status_code == 406
    with ironic(cloud, version="1.115") as ironic39:
        body = ironic39.get(f"/nodes/{a['uuid']}").json()
        assert "name" in body and "snapshot_interface" not in body          # Freezeframe's field: 1.116
        resp = ironic39.post("/nodes", json={"driver": "fake-hardware", "snapshot_interface": "agent"})
        assert resp.status_code == 406
        assert "snapshot" not in ironic39.get(f"/nodes/{a['uuid']}/validate").json()


def test_provision_verbs_name_the_allowed_ones(cloud):
    with ironic(cloud) as c:
        node = new_node(c, name="verbs")
        resp = c.put("/nodes/verbs/states/provision", json={"target": "provide"})
        assert resp.status_code == 400
        assert fault(resp) == 'The requested action "provide" can not be performed on a node in state "enroll"; ' \
                              'allowed: manage.'
        resp = c.put("/nodes/verbs/states/provision", json={"target": "deploy"})
        assert resp.status_code == 400 and "the verbs are manage, provide, adopt, abort, deleted, snapshot" in fault(resp)
        for body, words in [({}, "'target' is a required property"), ({"target": "manage", "image_ref": str(uuid.uuid4())},
                                                                      "only be given with the snapshot verb"),
                            ({"target": "manage", "clean_steps": []}, "not supported here"),
                            ({"target": "manage", "x": 1}, "Additional properties")]:
            resp = c.put("/nodes/verbs/states/provision", json=body)
            assert resp.status_code == 400 and words in fault(resp), body
        # provide and manage from available are done at once (no conductor work)
        db_set(cloud, node["uuid"], provision_state="manageable")
        resp = c.put("/nodes/verbs/states/provision", json={"target": "provide"})
        assert resp.status_code == 202 and resp.headers["Location"].endswith("/nodes/verbs/states")
        states = c.get("/nodes/verbs/states").json()
        assert states["provision_state"] == "available" and states["target_provision_state"] is None
        assert states["provision_updated_at"] is not None
        assert c.put("/nodes/verbs/states/provision", json={"target": "manage"}).status_code == 202
        assert c.get("/nodes/verbs").json()["provision_state"] == "manageable"
        # snapshot: only from active, with a UUID image_ref, and only at 1.116
        db_set(cloud, node["uuid"], provision_state="active")
        resp = c.put("/nodes/verbs/states/provision", json={"target": "snapshot"})
        assert resp.status_code == 400 and "needs image_ref" in fault(resp)
        resp = c.put("/nodes/verbs/states/provision", json={"target": "snapshot", "image_ref": "not-a-uuid"})
        assert resp.status_code == 400 and "Expected UUID for image_ref" in fault(resp)
    with ironic(cloud, version="1.115") as old:
        resp = old.put("/nodes/verbs/states/provision", json={"target": "snapshot", "image_ref": str(uuid.uuid4())})
        assert resp.status_code == 400 and 'The requested action "snapshot" can not be performed' in fault(resp)
        assert "snapshot" not in fault(resp).split("the verbs are")[1]
    with ironic(cloud, version="1.10") as older:
        assert older.put("/nodes/verbs/states/provision", json={"target": "abort"}).status_code == 406   # (1.13)
    with ironic(cloud) as c:
        assert c.patch("/nodes/verbs", json=[{"op": "add", "path": "/snapshot_interface",
                                              "value": "no-snapshot"}]).status_code == 409   # active
        assert c.put("/nodes/verbs/maintenance", json={"reason": "swap"}).status_code == 202
        resp = c.patch("/nodes/verbs", json=[{"op": "add", "path": "/snapshot_interface", "value": "no-snapshot"}])
        assert resp.status_code == 200 and resp.json()["maintenance_reason"] == "swap"
        assert c.delete("/nodes/verbs/maintenance").status_code == 202
        resp = c.put("/nodes/verbs/states/provision", json={"target": "snapshot", "image_ref": str(uuid.uuid4())})
        assert resp.status_code == 400 and "no-snapshot" in fault(resp)
        resp = c.delete("/nodes/verbs")
        assert resp.status_code == 409 and "while it is in provision state \"active\"" in fault(resp)
        assert c.get("/nodes/verbs").json()["maintenance"] is False


def test_a_verb_moves_the_node_and_submits_its_workflow_in_one_go(cloud):
    with ironic(cloud) as c:
        node = new_node(c, name="wf-verbs")
        assert c.put("/nodes/wf-verbs/states/provision", json={"target": "manage"}).status_code == 202
        assert c.get("/nodes/wf-verbs").json()["provision_state"] in ("verifying", "manageable")
        rows = db_get(cloud, "SELECT kind FROM workflows WHERE resource_id = ?", node["uuid"])
        assert rows == [("baremetal-verify",)]
        db_set(cloud, node["uuid"], provision_state="active", target_provision_state=None)
        # the image must exist for the user and hold no data yet (queued): else 400, nothing moves
        resp = c.put("/nodes/wf-verbs/states/provision", json={"target": "snapshot", "image_ref": str(uuid.uuid4())})
        assert resp.status_code == 400 and "could not be found" in fault(resp)
        with cloud.client(ADMIN_TOKEN) as images:
            full = new_image(images)
            assert images.put(f"/v2/images/{full['id']}/file", content=b"data",
                              headers={"Content-Type": "application/octet-stream"}).status_code == 204
            image = new_image(images)["id"]
        resp = c.put("/nodes/wf-verbs/states/provision", json={"target": "snapshot", "image_ref": full["id"]})
        assert resp.status_code == 400 and "is active" in fault(resp)
        assert c.get("/nodes/wf-verbs").json()["provision_state"] == "active"
        resp = c.put("/nodes/wf-verbs/states/provision", json={"target": "snapshot", "image_ref": image})
        assert resp.status_code == 202, resp.text
        wf = db_get(cloud, "SELECT id, kind, host, image_id FROM workflows WHERE resource_id = ? AND kind = ?",
                    node["uuid"], "baremetal-snapshot")
        assert len(wf) == 1 and wf[0][2] and wf[0][3] == image
        row = db_get(cloud, "SELECT snapshot_workflow_id, snapshot_image_id FROM baremetal_nodes WHERE id = ?",
                     node["uuid"])[0]
        assert row == (wf[0][0], image)


def test_a_reserved_node_is_locked(cloud):
    with ironic(cloud) as c:
        node = new_node(c, name="locked")
        db_set(cloud, node["uuid"], reservation="conductor-7", provision_state="manageable")
        message = f"Node {node['uuid']} is locked by host conductor-7, please retry after the current operation " \
                  "is completed."
        for resp in (c.patch("/nodes/locked", json=[{"op": "add", "path": "/extra/a", "value": 1}]),
                     c.put("/nodes/locked/states/provision", json={"target": "provide"}),
                     c.put("/nodes/locked/states/power", json={"target": "power on"}),
                     c.put("/nodes/locked/maintenance", json={}),
                     c.delete("/nodes/locked")):
            assert resp.status_code == 409 and fault(resp) == message, resp.text
        assert c.get("/nodes/locked").json()["reservation"] == "conductor-7"       # reads are fine
        db_set(cloud, node["uuid"], reservation=None)
        assert c.put("/nodes/locked/states/provision", json={"target": "provide"}).status_code == 202


def test_power_validate_and_maintenance(cloud):
    with ironic(cloud) as c:
        new_node(c, name="power")
        for target, state in (("power on", "power on"), ("power off", "power off"), ("rebooting", "power on")):
            resp = c.put("/nodes/power/states/power", json={"target": target})
            assert resp.status_code == 202, resp.text
            body = c.get("/nodes/power/states").json()
            assert (body["power_state"], body["target_power_state"]) == (state, None)
        assert c.get("/nodes/power").json()["reservation"] is None            # released after the action
        for body in ({"target": "power up"}, {"target": "soft power off"}, {}, {"target": "power on", "x": 1},
                     {"target": "power on", "timeout": -5}):
            resp = c.put("/nodes/power/states/power", json=body)
            assert resp.status_code == 400, body
            fault(resp)
        checks = c.get("/nodes/power/validate").json()
        assert checks["power"] == {"result": True} and checks["boot"] == {"result": True}
        assert checks["snapshot"] == {"result": True}
        assert checks["console"]["result"] is False and "does not support console" in checks["console"]["reason"]
        assert c.patch("/nodes/power", json=[{"op": "add", "path": "/snapshot_interface",
                                              "value": "no-snapshot"}]).status_code == 200
        checks = c.get("/nodes/power/validate").json()
        assert checks["snapshot"]["result"] is False and "no-snapshot" in checks["snapshot"]["reason"]
        assert c.put("/nodes/power/maintenance", json={"reason": "disk"}).status_code == 202
        body = c.get("/nodes/power").json()
        assert body["maintenance"] is True and body["maintenance_reason"] == "disk"
        assert c.put("/nodes/power/maintenance", json={"reason": 5}).status_code == 400
        assert c.delete("/nodes/power/maintenance").status_code == 202
        assert c.get("/nodes/power").json()["maintenance_reason"] is None


def test_ports(cloud):
    with ironic(cloud) as c:
        node = new_node(c, name="ports")
        resp = c.post("/ports", json={"address": "52:54:00:AA:BB:01", "node_uuid": node["uuid"]})
        assert resp.status_code == 201, resp.text
        port = resp.json()
        assert port["address"] == "52:54:00:aa:bb:01" and port["node_uuid"] == node["uuid"]
        dup = c.post("/ports", json={"address": "52:54:00:aa:bb:01", "node_uuid": node["uuid"]})
        assert dup.status_code == 409 and fault(dup) == "A port with MAC address 52:54:00:aa:bb:01 already exists."
        for body, status in [({"address": "zz", "node_uuid": node["uuid"]}, 400),
                             ({"address": "52:54:00:aa:bb:02", "node_uuid": str(uuid.uuid4())}, 404),
                             ({"address": "52:54:00:aa:bb:02"}, 400),
                             ({"address": "52:54:00:aa:bb:02", "node_uuid": node["uuid"], "x": 1}, 400)]:
            assert c.post("/ports", json=body).status_code == status, body
        assert [p["uuid"] for p in c.get("/nodes/ports/ports").json()["ports"]] == [port["uuid"]]
        assert port["uuid"] in [p["uuid"] for p in c.get("/ports", params={"node": "ports"}).json()["ports"]]
        resp = c.patch(f"/ports/{port['uuid']}", json=[{"op": "replace", "path": "/address",
                                                        "value": "52:54:00:aa:bb:03"}])
        assert resp.status_code == 200 and resp.json()["address"] == "52:54:00:aa:bb:03"
        assert c.patch(f"/ports/{port['uuid']}", json=[{"op": "replace", "path": "/address",
                                                        "value": "nope"}]).status_code == 400
        assert c.get(f"/ports/{port['uuid']}").json()["address"] == "52:54:00:aa:bb:03"
        assert c.get("/ports/nope").status_code == 404
        assert c.delete("/nodes/ports").status_code == 204           # its ports go with it
        assert c.get(f"/ports/{port['uuid']}").status_code == 404


def test_lookup_and_heartbeat_follow_ironics_token_rules(cloud):
    with ironic(cloud) as c:
        node = new_node(c, name="agent-node")
        assert c.post("/ports", json={"address": "52:54:00:12:34:56", "node_uuid": node["uuid"]}).status_code == 201
    with httpx.Client(base_url=cloud.url + "/baremetal/v1", timeout=30,
                      headers={"X-OpenStack-Ironic-API-Version": "1.22"}) as agent:      # no token
        resp = agent.get("/lookup")
        assert resp.status_code == 400 and "addresses" in fault(resp)
        assert agent.get("/lookup", params={"addresses": "zz"}).status_code == 400
        assert agent.get("/lookup", params={"node_uuid": "nope"}).status_code == 400
        unknown = agent.get("/lookup", params={"addresses": "52:54:00:99:99:99"})
        wrong_state = agent.get("/lookup", params={"addresses": "52:54:00:12:34:56"})     # enroll: no lookup
        assert unknown.status_code == wrong_state.status_code == 404
        assert fault(unknown) == fault(wrong_state)                    # indistinguishable on purpose
        db_set(cloud, node["uuid"], provision_state="snapshot wait")
        first = agent.get("/lookup", params={"addresses": "52:54:00:12:34:56,zz"})
        assert first.status_code == 200, first.text
        config = first.json()["config"]
        token = config["agent_token"]
        assert len(token) >= 32 and config["agent_token_required"] is True and config["heartbeat_timeout"] == 30
        assert first.json()["node"]["uuid"] == node["uuid"] and "driver_info" not in first.json()["node"]
        again = agent.get("/lookup", params={"node_uuid": node["uuid"]})
        assert again.json()["config"]["agent_token"] == "******"
        hb = {"callback_url": "http://10.0.2.15:9999", "agent_version": "10.0.0", "agent_status": "start"}
        for body in ({**hb}, {**hb, "agent_token": None}, {**hb, "agent_token": "wrong"},
                     {**hb, "agent_token": "******"}, {**hb, "agent_token": token[:-1]}):
            resp = agent.post("/heartbeat/agent-node", json=body)
            assert resp.status_code == 400 and fault(resp) == "Invalid or missing agent token received.", body
        for body in ({**hb, "agent_token": token, "callback_url": "ftp://x"},
                     {**hb, "agent_token": token, "agent_status": "bogus"},
                     {**hb, "agent_token": token, "progress": [1]}, {**hb, "agent_token": token, "nope": 1}):
            assert agent.post("/heartbeat/agent-node", json=body).status_code == 400, body
        assert agent.post("/heartbeat/no-such-node", json={**hb, "agent_token": token}).status_code == 404
        progress = {"percent": 40, "chunk": 3}
        resp = agent.post(f"/heartbeat/{node['uuid']}", json={**hb, "agent_token": token, "progress": progress})
        assert resp.status_code == 202, resp.text
        row = db_get(cloud, "SELECT agent_url, agent_version, agent_last_heartbeat, agent_status_json FROM "
                            "baremetal_nodes WHERE id = ?", node["uuid"])[0]
        assert row[:2] == ("http://10.0.2.15:9999", "10.0.0") and row[2] is not None
        assert json.loads(row[3])["progress"] == progress
        db_set(cloud, node["uuid"], provision_state="active")
        resp = agent.post("/heartbeat/agent-node", json={**hb, "agent_token": token})
        assert resp.status_code == 404                                  # no heartbeat outside the agent's states
        db_set(cloud, node["uuid"], provision_state="snapshotting", agent_token=None)
        resp = agent.post("/heartbeat/agent-node", json={**hb, "agent_token": token})
        assert resp.status_code == 400                                  # a wiped token never matches


def test_policy_and_bad_input(cloud):
    with ironic(cloud, token=MEMBER_TOKEN) as member:
        resp = member.get("/nodes")
        assert resp.status_code == 403 and "baremetal:node:list" in fault(resp)
        assert member.post("/nodes", json={"driver": "fake-hardware"}).status_code == 403
    with ironic(cloud, token=SERVICE_TOKEN) as service:
        assert service.get("/nodes").status_code == 200
    with ironic(cloud) as c:
        new_node(c, name="bad-input")
        for method, path, kw in [
            ("POST", "/nodes", {"content": b"{", "headers": {"Content-Type": "application/json"}}),
            ("POST", "/nodes", {"content": b"[" * 5000, "headers": {"Content-Type": "application/json"}}),
            ("PATCH", "/nodes/bad-input", {"content": b"nul", "headers": {"Content-Type": "application/json"}}),
            ("PUT", "/nodes/bad-input/states/provision", {"json": "manage"}),
            ("PUT", "/nodes/bad-input/states/power", {"json": ["power on"]}),
            ("POST", "/ports", {"json": {"address": "\u0000", "node_uuid": "x"}}),
            ("GET", "/nodes", {"params": {"limit": "\u00b2"}}),
            ("GET", "/nodes", {"params": {"name": "\x00"}}),
            ("POST", "/heartbeat/bad-input", {"json": "x"}),
        ]:
            resp = c.request(method, path, **kw)
            assert resp.status_code == 400, (method, path, resp.text)
            edge_or_fault(resp)
        resp = c.post("/nodes", content=b"driver=fake", headers={"Content-Type": "text/plain"})
        assert resp.status_code == 415 and fault(resp)
        resp = c.delete("/nodes")
        assert resp.status_code == 405 and fault(resp)
        assert c.get("/nodes/" + "x" * 300).status_code == 404


def test_list_arguments_answer_as_ironic_39(cloud):
    """Each list argument as a real Ironic 39 answers it (compared side by side with
    ../shared/peers/ironic): unknown ones 400, filters newer than the microversion 406, the
    filters no node here can match (fault, retired, shard, parent, instance name, another
    conductor) match nothing rather than being ignored, and next keeps the query."""
    with ironic(cloud) as c:
        mine = [new_node(c, name=f"args-{i}", resource_class="rc-args", owner="proj-x" if i == 0 else None,
                         description=f"the {'odd' if i % 2 else 'even'} one") for i in range(3)]
        ids = sorted(n["uuid"] for n in mine)

        def listed(**params):
            resp = c.get("/nodes", params={"resource_class": "rc-args", **params})
            assert resp.status_code == 200, (params, resp.text)
            return sorted(n["uuid"] for n in resp.json()["nodes"])
        assert listed(project="proj-x") == [mine[0]["uuid"]]
        assert listed(description_contains="odd") == [mine[1]["uuid"]]
        assert listed(description_contains="%") == []                  # a literal, not a LIKE pattern
        for params in ({"fault": "power failure"}, {"retired": "true"}, {"shard": "s1"}, {"sharded": "true"},
                       {"parent_node": "x"}, {"instance_name": "x"}, {"conductor": "not-this-host"}):
            assert listed(**params) == [], params
        for params in ({"retired": "false"}, {"sharded": "false"}, {"include_children": "true"}):
            assert listed(**params) == ids, params
        page = c.get("/nodes", params={"resource_class": "rc-args", "limit": 2, "maintenance": "false"}).json()
        assert "resource_class=rc-args" in page["next"] and "maintenance=false" in page["next"]
        assert "sort_key=id" in page["next"] and "sort_dir=asc" in page["next"] and "limit=2" in page["next"]
        for params, status, words in [
                ({"name": "args-0"}, 400, "Unexpected arguments"), ({"fault": "on fire"}, 400, "Unrecognized fault"),
                ({"chassis_uuid": str(uuid.uuid4())}, 404, "Chassis"), ({"chassis_uuid": "x"}, 400, "UUID"),
                ({"instance_uuid": "x"}, 400, "UUID"), ({"retired": "maybe"}, 400, "retired"),
                ({"detail": "true", "fields": "name"}, 400, "detail")]:
            resp = c.get("/nodes", params=params)
            assert resp.status_code == status and words in fault(resp), (params, resp.text)
        for params, status, words in [({"bogus": "1"}, 400, "Unexpected arguments"),
                                      ({"portgroup": "pg"}, 404, "Portgroup pg could not be found"),
                                      ({"node_uuid": "x"}, 400, "Expected UUID for node_uuid"),
                                      ({"detail": "true", "fields": "uuid"}, 400, "detail")]:
            resp = c.get("/ports", params=params)
            assert resp.status_code == status and words in fault(resp), (params, resp.text)
        resp = c.get(f"/nodes/{mine[0]['uuid']}/ports", params={"bogus": "1"})
        assert resp.status_code == 400 and "Unexpected arguments" in fault(resp)
        port = c.post("/ports", json={"node_uuid": mine[0]["uuid"], "address": "52:54:00:aa:bb:01"}).json()
        assert [p["uuid"] for p in c.get("/ports", params={"detail": "true", "node": "args-0"}).json()["ports"]] \
            == [port["uuid"]]
        assert "extra" in c.get("/ports", params={"detail": "true", "node": "args-0"}).json()["ports"][0]
        assert c.get("/ports", params={"shard": "s1"}).json()["ports"] == []
        assert c.delete(f"/ports/{port['uuid']}").status_code == 204
    with ironic(cloud, version="1.45") as old:
        for key, minor in (("conductor_group", 46), ("owner", 50), ("conductor", 49), ("shard", 82),
                           ("instance_name", 104)):
            resp = old.get("/nodes", params={key: "x"})
            assert resp.status_code == 406 and f"1.{minor}" in fault(resp), key
        assert old.get("/nodes", params={"fault": "power failure"}).status_code == 200      # (1.42)
    with ironic(cloud, version="1.42") as old:
        resp = old.get("/nodes", params={"detail": "true"})
        assert resp.status_code == 400 and "detail" in fault(resp)                         # (1.43)
    with ironic(cloud) as c:
        for node in mine:
            assert c.delete(f"/nodes/{node['uuid']}").status_code == 204
