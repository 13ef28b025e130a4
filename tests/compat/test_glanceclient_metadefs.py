"""Black-box compatibility: python-glanceclient's metadefs managers (which check our answers
against the schemas we serve, with warlock) and its tasks manager, unchanged."""

import uuid

import pytest

glanceclient = pytest.importorskip("glanceclient", reason="python-glanceclient is a test dependency")
from glanceclient import exc as glance_exc  # noqa: E402


def test_metadefs_through_glanceclient(live_server):
    admin = glanceclient.Client("2", endpoint=live_server.image_url, token=live_server.admin_token)
    member = glanceclient.Client("2", endpoint=live_server.image_url, token=live_server.member_token)
    assert {"OS::Freezeframe::Workflow", "OS::Freezeframe::Quiesce"} <= {
        n["namespace"] for n in member.metadefs_namespace.list()}
    ns = f"OS::GC::{uuid.uuid4().hex[:8]}"
    made = admin.metadefs_namespace.create(namespace=ns, visibility="public", display_name="GC")
    assert made["owner"] == "admin-project" and made["display_name"] == "GC"
    with pytest.raises(glance_exc.HTTPForbidden):
        member.metadefs_namespace.create(namespace=f"OS::GC::{uuid.uuid4().hex[:8]}")
    assert admin.metadefs_namespace.update(ns, display_name="GC2")["display_name"] == "GC2"
    assert member.metadefs_namespace.get(ns)["display_name"] == "GC2"
    admin.metadefs_property.create(ns, name="p", type="string", title="P")
    assert [p["name"] for p in member.metadefs_property.list(ns)] == ["p"]
    admin.metadefs_object.create(ns, name="o", properties={"x": {"type": "string", "title": "X"}})
    assert [o["name"] for o in member.metadefs_object.list(ns)] == ["o"]
    admin.metadefs_tag.create(ns, "t1")
    made = list(admin.metadefs_tag.create_multiple(ns, tags=["a", "b"]))       # (a generator) replaces t1
    assert [t["name"] for t in made] == ["a", "b"]
    assert sorted(t["name"] for t in member.metadefs_tag.list(ns)) == ["a", "b"]
    assert "OS::Glance::Image" in {t["name"] for t in member.metadefs_resource_type.list()}
    admin.metadefs_resource_type.associate(ns, name="OS::Nova::Flavor", prefix="x:")
    assert [a["prefix"] for a in member.metadefs_resource_type.get(ns)] == ["x:"]
    admin.metadefs_resource_type.deassociate(ns, "OS::Nova::Flavor")
    admin.metadefs_namespace.delete(ns)
    with pytest.raises(glance_exc.HTTPNotFound):
        member.metadefs_namespace.get(ns)
    assert isinstance(list(admin.tasks.list()), list)
    with pytest.raises(glance_exc.HTTPForbidden):
        list(member.tasks.list())
