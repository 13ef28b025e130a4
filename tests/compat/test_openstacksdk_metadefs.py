"""Black-box compatibility: openstacksdk's image proxy drives our metadata definitions, tasks
and stores discovery unchanged."""

import os
import time
import uuid

import pytest

from tests.compat.test_openstacksdk import connect

openstack = pytest.importorskip("openstack", reason="openstacksdk is a test dependency")


@pytest.fixture
def admin_conn(live_server):
    return connect(live_server, live_server.admin_token)


@pytest.fixture
def conn(live_server):
    return connect(live_server, live_server.member_token)


def test_namespaces_and_their_contents(admin_conn, conn):
    names = {ns.namespace for ns in conn.image.metadef_namespaces()}
    assert {"OS::Freezeframe::Workflow", "OS::Freezeframe::Quiesce"} <= names
    seeded = conn.image.get_metadef_namespace("OS::Freezeframe::Quiesce")
    assert seeded.is_protected and seeded.visibility == "public"
    assert [a["name"] for a in seeded.resource_type_associations] == ["OS::Glance::Image"]
    assert "OS::Glance::Image" in {t.name for t in conn.image.metadef_resource_types()}

    name = f"OS::SDK::{uuid.uuid4().hex[:8]}"
    made = admin_conn.image.create_metadef_namespace(namespace=name, display_name="SDK", visibility="public",
                                                     description="made by openstacksdk")
    assert made.namespace == name and made.owner == "admin-project"
    with pytest.raises(openstack.exceptions.ForbiddenException):
        conn.image.create_metadef_namespace(namespace=f"OS::SDK::{uuid.uuid4().hex[:8]}")

    admin_conn.image.create_metadef_resource_type_association(name, name="OS::Nova::Flavor", prefix="sdk:")
    assert [a.name for a in conn.image.metadef_resource_type_associations(name)] == ["OS::Nova::Flavor"]
    assert name in {ns.namespace for ns in conn.image.metadef_namespaces(resource_types="OS::Nova::Flavor")}

    prop = admin_conn.image.create_metadef_property(name, name="cpu_policy", type="string", title="CPU policy",
                                                    enum=["shared", "dedicated"])
    assert prop.name == "cpu_policy" and prop.enum == ["shared", "dedicated"]
    assert conn.image.get_metadef_property("cpu_policy", name).title == "CPU policy"
    assert [p.name for p in conn.image.metadef_properties(name)] == ["cpu_policy"]

    obj = admin_conn.image.create_metadef_object(name, name="CPU", description="cpu things",
                                                 properties={"x": {"type": "integer", "title": "X"}})
    assert obj.name == "CPU"
    assert [o.name for o in conn.image.metadef_objects(name)] == ["CPU"]
    assert conn.image.get_metadef_object("CPU", name).description == "cpu things"

    admin_conn.image.add_tag_to_metadef_namespace(name, "gold")
    shown = conn.image.get_metadef_namespace(name)
    assert shown.display_name == "SDK"

    updated = admin_conn.image.update_metadef_namespace(name, display_name="SDK 2", visibility="public")
    assert updated.display_name == "SDK 2"
    admin_conn.image.remove_tags_from_metadef_namespace(name)
    admin_conn.image.delete_metadef_property("cpu_policy", name)
    assert list(conn.image.metadef_properties(name)) == []
    admin_conn.image.delete_metadef_resource_type_association("OS::Nova::Flavor", name)
    admin_conn.image.delete_metadef_namespace(name)
    with pytest.raises(openstack.exceptions.NotFoundException):
        conn.image.get_metadef_namespace(name)
    with pytest.raises(openstack.exceptions.ForbiddenException):
        admin_conn.image.delete_metadef_namespace("OS::Freezeframe::Workflow")


def test_metadef_schemas(conn):
    assert conn.image.get_metadef_namespace_schema().name == "namespace"
    assert conn.image.get_metadef_property_schema().name == "property"
    assert conn.image.get_metadef_tags_schema().name == "tags"
    assert conn.image.get_metadef_resource_types_schema().name == "resource_type_associations"


def test_tasks_and_stores(admin_conn, conn):
    image = conn.image.create_image(name="sdk-task", disk_format="raw", container_format="bare",
                                    allow_duplicates=True)
    conn.image.stage_image(image, data=os.urandom(1 << 16))
    conn.image.import_image(image, method="glance-direct")
    conn.image.wait_for_status(image, status="active", failures=["killed", "queued"], wait=30)
    deadline = time.monotonic() + 10
    while True:     # the import's task, from the tasks API (newest first), shown in full
        mine = [t for t in (admin_conn.image.get_task(t.id) for t in
                            admin_conn.image.tasks(type="api_image_import", status="success", limit=10))
                if t.input.get("image_id") == image.id]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert mine and mine[0].status == "success" and mine[0].type == "api_image_import"
    with pytest.raises(openstack.exceptions.ForbiddenException):
        list(conn.image.tasks())
    stores = list(conn.image.stores())
    assert [s.is_default for s in stores] == [True]
