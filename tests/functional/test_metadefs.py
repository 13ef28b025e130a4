"""Glance's metadata-definitions API (/image/v2/metadefs), over real HTTP against a real server
process, as a real Glance 33 answers (docs/glance-side-by-side.md)."""

import re
import uuid
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "freezeframe"
NS = "/v2/metadefs/namespaces"


def _name(tag: str = "T") -> str:
    return f"OS::Test{tag}::{uuid.uuid4().hex[:10]}"


def _create(admin, **body):
    body.setdefault("namespace", _name())
    resp = admin.post(NS, json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_the_seeded_catalog_describes_what_the_workflows_write_and_read(member):
    listed = {n["namespace"]: n for n in member.get(NS, params={"limit": 1000}).json()["namespaces"]}
    for name in ("OS::Freezeframe::Workflow", "OS::Freezeframe::Quiesce"):
        assert name in listed
        assert listed[name]["visibility"] == "public" and listed[name]["protected"] is True
        assert [a["name"] for a in listed[name]["resource_type_associations"]] == ["OS::Glance::Image"]
    workflow = member.get(f"{NS}/OS::Freezeframe::Workflow").json()
    quiesce = member.get(f"{NS}/OS::Freezeframe::Quiesce").json()
    assert set(quiesce["properties"]) == {"hw_qemu_guest_agent", "os_require_quiesce"}
    # every os_freezeframe_* image property the code writes is in the catalog (the API-version
    # option of the openstackclient plugin and the property-name prefixes are not properties)
    written = set()
    for path in SRC.rglob("*.py"):
        written |= set(re.findall(r"[\"'](os_freezeframe_[a-z_]+)[\"']", path.read_text()))
    written -= {"os_freezeframe_", "os_freezeframe_api_version", "os_freezeframe_workflow"}
    assert written and written <= set(workflow["properties"]), written - set(workflow["properties"])
    types = {t["name"] for t in member.get("/v2/metadefs/resource_types").json()["resource_types"]}
    assert {"OS::Glance::Image", "OS::Cinder::Volume", "OS::Nova::Flavor"} <= types


def test_writes_are_admin_only_and_private_namespaces_stay_hidden(admin, member):
    assert member.post(NS, json={"namespace": _name()}).status_code == 403
    private = _create(admin, visibility="private")
    public = _create(admin, visibility="public", display_name="Pub", description="d")
    assert private["owner"] == "admin-project" and private["protected"] is False
    assert public["self"] == f"{NS}/{public['namespace']}"
    assert public["schema"] == "/v2/schemas/metadefs/namespace"
    names = [n["namespace"] for n in member.get(NS, params={"limit": 1000}).json()["namespaces"]]
    assert public["namespace"] in names and private["namespace"] not in names
    assert member.get(f"{NS}/{private['namespace']}").status_code == 404
    assert admin.get(f"{NS}/{private['namespace']}").status_code == 200
    for method, path, body in [("PUT", public["namespace"], {"namespace": public["namespace"]}),
                               ("DELETE", public["namespace"], None),
                               ("POST", public["namespace"] + "/tags/x", None),
                               ("POST", public["namespace"] + "/properties", {"name": "p", "type": "string",
                                                                            "title": "P"})]:
        resp = member.request(method, f"{NS}/{path}", json=body)
        assert resp.status_code == 403, (method, path, resp.text)
        assert resp.json()["error"]["request_id"] == resp.headers["x-openstack-request-id"]


def test_protected_namespace_cannot_be_deleted_until_unprotected(admin):
    ns = _create(admin, protected=True, properties={"p": {"type": "string", "title": "P"}})
    name = ns["namespace"]
    resp = admin.delete(f"{NS}/{name}")
    assert resp.status_code == 403 and "protected" in resp.json()["error"]["message"]
    assert admin.delete(f"{NS}/{name}/properties/p").status_code == 403
    assert admin.delete(f"{NS}/{name}/properties").status_code == 403
    updated = admin.put(f"{NS}/{name}", json={"namespace": name, "protected": False})
    assert updated.status_code == 200, updated.text
    # PUT replaces: what it does not give returns to the default, as Glance's
    assert updated.json()["visibility"] == "private" and updated.json()["protected"] is False
    assert admin.delete(f"{NS}/{name}").status_code == 204
    assert admin.get(f"{NS}/{name}").status_code == 404
    assert admin.delete(f"{NS}/OS::Freezeframe::Workflow").status_code == 403


def test_create_with_contents_and_show_them(admin):
    ns = _create(admin, visibility="public",
                 resource_type_associations=[{"name": "OS::Glance::Image", "prefix": "hw_"}],
                 properties={"cpu": {"type": "integer", "title": "CPU", "minimum": 1}},
                 objects=[{"name": "o1", "properties": {"x": {"type": "string", "title": "X"}}, "required": ["x"]}],
                 tags=[{"name": "t1"}])
    name = ns["namespace"]
    shown = admin.get(f"{NS}/{name}").json()
    assert shown["properties"] == {"cpu": {"type": "integer", "title": "CPU", "minimum": 1}}
    assert [o["name"] for o in shown["objects"]] == ["o1"] and shown["objects"][0]["required"] == ["x"]
    assert shown["tags"] == [{"name": "t1"}]
    assert shown["resource_type_associations"][0]["prefix"] == "hw_"
    prefixed = admin.get(f"{NS}/{name}", params={"resource_type": "OS::Glance::Image"}).json()
    assert set(prefixed["properties"]) == {"hw_cpu"}


def test_objects_properties_tags_crud(admin, member):
    name = _create(admin, visibility="public")["namespace"]
    base = f"{NS}/{name}"
    # objects
    obj = admin.post(f"{base}/objects", json={"name": "o", "description": "d",
                                              "properties": {"y": {"type": "string", "title": "Y"}}})
    assert obj.status_code == 201, obj.text
    assert obj.json()["self"] == f"{base}/objects/o" and obj.json()["schema"] == "/v2/schemas/metadefs/object"
    assert admin.post(f"{base}/objects", json={"name": "o"}).status_code == 409
    assert member.get(f"{base}/objects").json()["objects"][0]["name"] == "o"
    renamed = admin.put(f"{base}/objects/o", json={"name": "o2"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "o2"
    assert admin.get(f"{base}/objects/o").status_code == 404
    assert admin.delete(f"{base}/objects/o2").status_code == 204
    # properties
    prop = admin.post(f"{base}/properties", json={"name": "p", "type": "string", "title": "P", "enum": ["a"]})
    assert prop.status_code == 201 and prop.json() == {"name": "p", "type": "string", "title": "P", "enum": ["a"]}
    assert admin.post(f"{base}/properties", json={"name": "p", "type": "string", "title": "P"}).status_code == 409
    assert admin.post(f"{base}/properties", json={"name": "q", "type": "string"}).status_code == 400  # no title
    assert member.get(f"{base}/properties").json() == {"properties": {"p": {"type": "string", "title": "P",
                                                                            "enum": ["a"]}}}
    assert member.get(f"{base}/properties/p").json()["title"] == "P"
    changed = admin.put(f"{base}/properties/p", json={"name": "p", "type": "boolean", "title": "P2"})
    assert changed.status_code == 200 and changed.json()["type"] == "boolean"
    assert admin.delete(f"{base}/properties").status_code == 204
    assert member.get(f"{base}/properties").json() == {"properties": {}}
    # tags: one, many (replacing, appending), rename, delete
    tag = admin.post(f"{base}/tags/t1")
    assert tag.status_code == 201 and tag.json()["name"] == "t1" and "created_at" in tag.json()
    assert admin.post(f"{base}/tags/t1").status_code == 409
    many = admin.post(f"{base}/tags", json={"tags": [{"name": "a"}, {"name": "b"}]})
    assert many.status_code == 201 and many.json() == {"tags": [{"name": "a"}, {"name": "b"}]}
    assert {t["name"] for t in member.get(f"{base}/tags").json()["tags"]} == {"a", "b"}     # replaced
    appended = admin.post(f"{base}/tags", json={"tags": [{"name": "c"}]}, headers={"X-Openstack-Append": "True"})
    assert appended.status_code == 201
    assert {t["name"] for t in member.get(f"{base}/tags").json()["tags"]} == {"a", "b", "c"}
    assert admin.post(f"{base}/tags", json={"tags": [{"name": "d"}, {"name": "d"}]}).status_code == 409
    assert admin.put(f"{base}/tags/c", json={"name": "z"}).json()["name"] == "z"
    assert admin.delete(f"{base}/tags/a").status_code == 204
    assert admin.get(f"{base}/tags/a").status_code == 404
    assert admin.delete(f"{base}/tags").status_code == 204
    assert member.get(f"{base}/tags").json() == {"tags": []}


def test_resource_type_associations(admin, member):
    name = _create(admin, visibility="public")["namespace"]
    base = f"{NS}/{name}/resource_types"
    new_type = f"OS::Test::Type{uuid.uuid4().hex[:6]}"
    made = admin.post(base, json={"name": new_type, "prefix": "t:", "properties_target": "image"})
    assert made.status_code == 201, made.text
    assert made.json()["prefix"] == "t:" and made.json()["properties_target"] == "image"
    assert admin.post(base, json={"name": new_type}).status_code == 409
    assert [a["name"] for a in member.get(base).json()["resource_type_associations"]] == [new_type]
    assert new_type in {t["name"] for t in member.get("/v2/metadefs/resource_types").json()["resource_types"]}
    listed = member.get(NS, params={"resource_types": f"{new_type},OS::Nope"}).json()["namespaces"]
    assert [n["namespace"] for n in listed] == [name]
    assert member.delete(f"{base}/{new_type}").status_code == 403
    assert admin.delete(f"{base}/{new_type}").status_code == 204
    assert admin.delete(f"{base}/{new_type}").status_code == 404
    assert member.get(NS, params={"resource_types": new_type}).json()["namespaces"] == []


def test_list_paging_sorting_and_filters(admin, member):
    tag = uuid.uuid4().hex[:8]
    kind = f"OS::Page::{tag}"
    names = sorted(_create(admin, namespace=f"OS::Page{tag}::{i}", visibility="public",
                           resource_type_associations=[{"name": kind}])["namespace"] for i in range(3))
    seen, url, params = [], NS, {"limit": 2, "sort_key": "namespace", "sort_dir": "asc", "resource_types": kind}
    for _ in range(5):
        page = member.get(url, params=params).json()
        assert page["schema"] == "/v2/schemas/metadefs/namespaces" and "marker" not in page["first"]
        seen += [n["namespace"] for n in page["namespaces"]]
        if "next" not in page:
            break
        url, params = page["next"], None
    assert seen == names
    # a marker the filter leaves out still marks a place in the order (::1a sorts between ::1 and ::2)
    _create(admin, namespace=f"OS::Page{tag}::1a", visibility="public")
    past = member.get(NS, params={"sort_key": "namespace", "sort_dir": "asc", "resource_types": kind,
                                  "marker": f"OS::Page{tag}::1a"}).json()
    assert [n["namespace"] for n in past["namespaces"]] == names[2:]
    desc = member.get(NS, params={"sort_key": "namespace", "sort_dir": "desc", "resource_types": kind}).json()
    assert [n["namespace"] for n in desc["namespaces"]] == names[::-1]
    private = _create(admin, visibility="private")["namespace"]
    privates = admin.get(NS, params={"visibility": "private"}).json()["namespaces"]
    assert privates and all(n["visibility"] == "private" for n in privates)
    assert private in [n["namespace"] for n in admin.get(NS, params={"visibility": "private", "limit": 1000})
                       .json()["namespaces"]]
    for bad in ({"limit": "x"}, {"limit": "-1"}, {"sort_dir": "up"}, {"sort_key": "bogus"}, {"visibility": "shared"}):
        resp = member.get(NS, params=bad)
        assert resp.status_code == 400, (bad, resp.text)
    assert member.get(NS, params={"marker": "OS::Nope::x"}).status_code == 404


@pytest.mark.parametrize("body,status", [
    ({}, 400),                                                     # no namespace
    ({"namespace": "x" * 81}, 400),
    ({"namespace": "OS::T::v", "visibility": "shared"}, 400),
    ({"namespace": "OS::T::p", "protected": "yes"}, 400),
    ({"namespace": "OS::T::c", "created_at": "2020-01-01T00:00:00Z"}, 403),
    ({"namespace": "OS::T::u", "bogus": 1}, 400),
    ({"namespace": "OS::T::q", "properties": {"a": {"type": "string"}}}, 400),   # no title
    ([], 400),
    ({"namespace": "OS::T::l", "tags": [{"name": "t" * 81}]}, 400),               # names nested in the body:
    ({"namespace": "OS::T::l", "properties": {"p" * 81: {"type": "string", "title": "P"}}}, 400),  # 80 at most
    ({"namespace": "OS::T::l", "objects": [{"name": "o" * 81}]}, 400),
    ({"namespace": "OS::T::l", "resource_type_associations": [{"name": "OS::Glance::Image", "prefix": "x" * 81}]},
     400),
])
def test_bad_namespace_bodies(admin, body, status):
    resp = admin.post(NS, json=body)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["message"]


def test_duplicate_and_missing(admin):
    name = _create(admin)["namespace"]
    resp = admin.post(NS, json={"namespace": name})
    assert resp.status_code == 409 and "already exists" in resp.json()["error"]["message"]
    for path in (f"{NS}/OS::Nope::{uuid.uuid4().hex}", f"{NS}/{name}/objects/nope", f"{NS}/{name}/properties/nope",
                 f"{NS}/{name}/tags/nope", f"{NS}/%00", f"{NS}/{name}/tags/%ED%A0%80"):
        assert admin.get(path).status_code == 404, path


def test_schemas(member):
    for name, title in [("namespace", "namespace"), ("namespaces", "namespaces"), ("object", "object"),
                        ("objects", "objects"), ("property", "property"), ("properties", "properties"),
                        ("tag", "tag"), ("tags", "tags"), ("resource_type", "resource_type_association"),
                        ("resource_types", "resource_type_associations")]:
        resp = member.get(f"/v2/schemas/metadefs/{name}")
        assert resp.status_code == 200 and resp.json()["name"] == title
    assert member.get("/v2/schemas/metadefs/bogus").status_code == 404
    assert member.get("/v2/schemas/metadefs/namespace").json()["required"] == ["namespace"]
