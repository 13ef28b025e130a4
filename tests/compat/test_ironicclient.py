"""Black-box compatibility of the bare-metal API (Ironic v1) with python-ironicclient's Python API,
unchanged, through both kinds of admin cloud `serve` writes (the server and clouds of
``test_openstack_baremetal``): ``freezeframe`` (password auth through /identity, the API found in
the catalog under ``baremetal``) and ``token-freezeframe`` (``admin_token``, the endpoint given).
The client negotiates the microversion (``latest``: min(its own, 1.116)).

And openstacksdk's baremetal proxy paging over ``next`` to the end with the filters kept.
Reference behaviour: a real Ironic 39 (``../shared/peers/ironic``), compared by hand for the same
requests — the list arguments, their 400/404/406 answers, ``next`` (see docs/api.md).
"""

from __future__ import annotations

import uuid

import pytest

from tests.compat import test_openstack_baremetal as base

# The live server and the clouds (identity and token) of test_openstack_baremetal, one per module.
server, clouds_yaml, connect = base.server, base.clouds_yaml, base.connect

ironicclient = pytest.importorskip("ironicclient", reason="python-ironicclient is a test dependency")
from ironicclient import client as ironic_client  # noqa: E402
from ironicclient.common.apiclient import exceptions as ironic_exc  # noqa: E402

ADMIN_CLOUDS = ["freezeframe", "token-freezeframe"]      # identity cloud, token cloud


def ironic(clouds_yaml, cloud: str):
    """ironicclient on the cloud's keystoneauth session: the catalog's endpoint on the identity
    cloud, the configured one on the token cloud."""
    conn = connect(clouds_yaml, cloud)
    kwargs = {}
    if cloud.startswith("token-"):
        kwargs["endpoint"] = conn.baremetal.get_endpoint()
    return ironic_client.get_client("1", session=conn.session, os_ironic_api_version="latest", **kwargs)


def mac() -> str:
    return "52:54:00:%02x:%02x:%02x" % tuple(uuid.uuid4().bytes[:3])


@pytest.mark.parametrize("cloud", ADMIN_CLOUDS)
def test_node_lifecycle_through_ironicclient(server, clouds_yaml, cloud):
    ic = ironic(clouds_yaml, cloud)
    name = f"ic-{uuid.uuid4().hex[:8]}"
    node = ic.node.create(driver="fake-hardware", name=name, properties={"cpus": 2},
                          driver_info={"fake_password": "secret"}, resource_class="ic-class")
    assert (node.provision_state, node.name, node.driver) == ("enroll", name, "fake-hardware")
    assert node.driver_info == {"fake_password": "******"}
    assert ic.node.get(name).uuid == node.uuid and ic.node.get(node.uuid).name == name
    assert node.uuid in [n.uuid for n in ic.node.list()]
    assert name in [n.name for n in ic.node.list(detail=True)]
    assert [n.uuid for n in ic.node.list(resource_class="ic-class", provision_state="enroll")
            if n.name == name] == [node.uuid]
    assert [n.uuid for n in ic.node.list(fields=["uuid", "name"]) if n.name == name] == [node.uuid]

    ic.node.set_provision_state(node.uuid, "manage")
    ic.node.wait_for_provision_state(node.uuid, "manageable", timeout=60)
    ic.node.set_provision_state(node.uuid, "provide")
    ic.node.wait_for_provision_state(node.uuid, "available", timeout=60)
    assert node.uuid in [n.uuid for n in ic.node.list(provision_state="available", associated=False)]
    assert node.uuid not in [n.uuid for n in ic.node.list(provision_state="manageable")]
    ic.node.set_power_state(node.uuid, "on")
    assert ic.node.get(node.uuid).power_state == "power on"
    ic.node.update(node.uuid, [{"op": "replace", "path": "/properties/cpus", "value": 4}])
    assert ic.node.get(node.uuid, fields=["properties"]).properties == {"cpus": 4}
    ic.node.set_maintenance(node.uuid, True, maint_reason="checking")
    assert [n.uuid for n in ic.node.list(maintenance=True)] == [node.uuid]
    ic.node.set_maintenance(node.uuid, False)
    assert node.uuid not in [n.uuid for n in ic.node.list(maintenance=True)]

    address = mac()
    port = ic.port.create(node_uuid=node.uuid, address=address)
    assert (port.address, port.node_uuid) == (address, node.uuid)
    assert [p.uuid for p in ic.node.list_ports(node.uuid)] == [port.uuid]
    assert [p.address for p in ic.port.list(node=name, detail=True)] == [address]
    assert ic.port.get_by_address(address).uuid == port.uuid
    ic.port.delete(port.uuid)
    assert ic.node.list_ports(node.uuid) == []

    ic.node.set_provision_state(node.uuid, "manage")
    ic.node.wait_for_provision_state(node.uuid, "manageable", timeout=60)
    ic.node.delete(node.uuid)
    with pytest.raises(ironic_exc.NotFound) as err:
        ic.node.get(node.uuid)
    assert "could not be found" in str(err.value)


def test_ironicclient_pages_and_reports_errors(server, clouds_yaml):
    ic = ironic(clouds_yaml, "freezeframe")           # through the catalog: the /baremetal prefix in next
    rc = f"ic-page-{uuid.uuid4().hex[:8]}"
    made = [ic.node.create(driver="fake-hardware", name=f"{rc}-{i}", resource_class=rc).uuid for i in range(5)]
    in_order = sorted(made)                                       # the default sort: uuid ascending
    assert [n.uuid for n in ic.node.list(resource_class=rc, limit=2)] == in_order[:2]
    assert [n.uuid for n in ic.node.list(resource_class=rc, limit=2, marker=in_order[1])] == in_order[2:4]
    assert [n.name for n in ic.node.list(resource_class=rc, sort_key="name", sort_dir="desc")] == \
        [f"{rc}-{i}" for i in reversed(range(5))]
    assert [n.uuid for n in ic.node.list(resource_class=rc, limit=0)] == in_order     # 0: every page
    # pages of two: ironicclient follows next (our own root and prefix stripped) to the end,
    # the filter kept on every page
    urls = []
    real = ic.node.api.json_request

    def recording(method, url, **kwargs):
        urls.append(url)
        return real(method, url, **kwargs)
    ic.node.api.json_request = recording
    try:
        found = ic.node._list_pagination(f"/v1/nodes?resource_class={rc}&limit=2", "nodes", limit=None)
    finally:
        ic.node.api.json_request = real
    assert [n.uuid for n in found] == in_order and len(urls) == 3
    assert all(u.startswith("/v1/nodes?") and f"resource_class={rc}" in u and "marker=" in u for u in urls[1:])

    node = ic.node.get(made[0])
    ports = sorted(ic.port.create(node_uuid=node.uuid, address=mac()).uuid for _ in range(3))
    assert [p.uuid for p in ic.port.list(node=node.uuid, limit=2)] == ports[:2]
    assert [p.uuid for p in ic.port.list(node=node.uuid, limit=2, marker=ports[1])] == ports[2:]
    assert [p.uuid for p in ic.node.list_ports(node.uuid, limit=0)] == ports

    with pytest.raises(ironic_exc.BadRequest) as err:
        ic.node.list(sort_key="bogus")
    assert "invalid field for sorting" in str(err.value)
    with pytest.raises(ironic_exc.BadRequest) as err:
        ic.node.list(marker="nope")
    assert "Expected UUID for marker" in str(err.value)
    with pytest.raises(ironic_exc.NotFound):
        ic.node.list(marker=str(uuid.uuid4()))
    with pytest.raises(ironic_exc.BadRequest) as err:
        ic.node.list(fault="on fire")
    assert "Unrecognized fault" in str(err.value)
    assert ic.node.list(fault="power failure", resource_class=rc) == []
    with pytest.raises(ironic_exc.NotFound) as err:
        ic.node.list(chassis=str(uuid.uuid4()))
    assert "Chassis" in str(err.value)
    with pytest.raises(ironic_exc.BadRequest) as err:
        ic.node.create(driver="no-such-driver")
    assert "no-such-driver" in str(err.value)
    old = ironic_client.get_client("1", session=connect(clouds_yaml, "freezeframe").session,
                                   os_ironic_api_version="1.40")
    # a filter newer than the version: 406, which ironicclient (as with Ironic) takes for a version
    # it cannot use (its own list checks the version first)
    with pytest.raises(ironic_exc.UnsupportedVersion) as err:
        old.node.api.json_request("GET", "/v1/nodes?conductor_group=x")      # 1.46
    assert "1.40" in str(err.value)
    for port_id in ports:
        ic.port.delete(port_id)
    for node_id in made:
        ic.node.delete(node_id)


# -- openstacksdk's baremetal proxy: paging over next, end to end ---------------------------------


def test_sdk_baremetal_lists_page_to_the_end(server, clouds_yaml):
    bm = connect(clouds_yaml, "token-freezeframe").baremetal
    rc = f"sdk-page-{uuid.uuid4().hex[:8]}"
    made = sorted(bm.create_node(driver="fake-hardware", name=f"{rc}-{i}", resource_class=rc).id for i in range(5))
    bm.create_node(driver="fake-hardware", resource_class=rc + "-other")      # filtered out on every page
    for details in (False, True):
        assert [n.id for n in bm.nodes(details=details, resource_class=rc, limit=2)] == made, details
    listed = list(bm.nodes(resource_class=rc, limit=2, fields=["uuid", "name"]))
    assert [n.id for n in listed] == made and sorted(n.name for n in listed) == [f"{rc}-{i}" for i in range(5)]
    node = made[0]
    ports = sorted(bm.create_port(node_id=node, address=mac()).id for _ in range(3))
    for details in (False, True):
        assert [p.id for p in bm.ports(details=details, node=node, limit=2)] == ports, details
        assert [p.id for p in bm.ports(details=details, node_uuid=node, limit=1)] == ports, details
    for port_id in ports:
        bm.delete_port(port_id)
    for n in list(bm.nodes(resource_class=rc)) + list(bm.nodes(resource_class=rc + "-other")):
        bm.delete_node(n)
    assert list(bm.nodes(resource_class=rc)) == []
