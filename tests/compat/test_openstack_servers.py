"""Black-box compatibility of the compute API (Nova v2.1): python-openstackclient's ``openstack
server ...`` commands and openstacksdk's compute proxy, unchanged, with the clouds.yaml `serve`
writes (password auth through /identity, the compute API found in the catalog) and the fake
virt driver."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import LiveServer, start_server

openstack = pytest.importorskip("openstack", reason="openstacksdk is a test dependency")
from openstack import exceptions as sdk_exceptions  # noqa: E402

OPENSTACK = shutil.which("openstack", path=str(Path(sys.executable).parent)) or shutil.which("openstack")
CLOUD = "freezeframe-demo"          # a project member, through /identity


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    srv = start_server(tmp_path_factory.mktemp("ff-servers") / "ff",
                       env={"FREEZEFRAME_COMPUTE__DRIVER": "fake", "FREEZEFRAME_CONDUCTOR__SCAN_INTERVAL": "0.5"})
    yield srv
    srv.stop()


def osc(server: LiveServer, *args: str, cloud: str = CLOUD, ok: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(OS_CLIENT_CONFIG_FILE=str(server.data_dir / "clouds.yaml"), OS_CLOUD=cloud,
               HOME=str(server.data_dir))
    out = subprocess.run([OPENSTACK, *args], env=env, capture_output=True, text=True, timeout=180)
    if ok:
        assert out.returncode == 0, f"openstack {' '.join(args)}: {out.stderr[-2000:]}"
    return out


def osc_json(server: LiveServer, *args: str, cloud: str = CLOUD):
    return json.loads(osc(server, *args, "-f", "json", cloud=cloud).stdout)


@pytest.fixture(scope="module")
def image(server, tmp_path_factory) -> dict:
    if OPENSTACK is None:
        pytest.skip("python-openstackclient is a test dependency")
    disk = tmp_path_factory.mktemp("disk") / "disk.raw"
    disk.write_bytes(os.urandom(1 << 16) + bytes(1 << 20))
    created = osc_json(server, "image", "create", "--file", str(disk), "--disk-format", "raw",
                       "--container-format", "bare", "servers-base")
    assert created["status"] == "active"
    return created


def sdk(server: LiveServer, cloud: str = CLOUD):
    config = openstack.config.OpenStackConfig(config_files=[str(server.data_dir / "clouds.yaml")])
    return openstack.connection.Connection(config=config.get_one(cloud=cloud))


# -- python-openstackclient ------------------------------------------------------------------------

@pytest.mark.skipif(OPENSTACK is None, reason="python-openstackclient is a test dependency")
def test_openstack_server_commands(server, image):
    made = osc_json(server, "server", "create", "--image", image["id"], "--flavor", "m1.tiny", "--wait", "osc-vm")
    assert made["status"] == "ACTIVE" and made["name"] == "osc-vm"
    server_id = made["id"]
    listed = osc_json(server, "server", "list")
    mine = next(s for s in listed if s["ID"] == server_id)
    assert mine["Name"] == "osc-vm" and mine["Status"] == "ACTIVE"
    assert mine["Flavor"] == "m1.tiny"
    # the name is looked up through the list's name filter
    shown = osc_json(server, "server", "show", "osc-vm")
    assert shown["id"] == server_id and shown["status"] == "ACTIVE"
    assert [s["ID"] for s in osc_json(server, "server", "list", "--name", "^osc-", "--status", "ACTIVE")] == \
        [server_id]
    assert osc_json(server, "server", "list", "--status", "SHUTOFF") == []
    assert osc_json(server, "server", "list", "--flavor", "m1.small") == []
    # an admin lists their own project's servers, every project's with --all-projects (all_tenants)
    assert server_id not in [s["ID"] for s in osc_json(server, "server", "list", cloud="freezeframe")]
    assert server_id in [s["ID"] for s in osc_json(server, "server", "list", "--all-projects", cloud="freezeframe")]

    osc(server, "server", "stop", "osc-vm")
    wait_for(lambda: osc_json(server, "server", "show", server_id)["status"] == "SHUTOFF")
    osc(server, "server", "start", server_id)
    wait_for(lambda: osc_json(server, "server", "show", server_id)["status"] == "ACTIVE")

    snap = osc_json(server, "server", "image", "create", "--name", "osc-snap", "--wait", "osc-vm")
    assert snap["name"] == "osc-snap"
    assert osc_json(server, "image", "show", "osc-snap")["status"] == "active"
    wait_for(lambda: osc_json(server, "server", "show", server_id)["OS-EXT-STS:task_state"] is None)
    osc(server, "server", "backup", "create", "--name", "osc-backup", "--type", "daily", "--rotate", "1",
        "--wait", "osc-vm")
    assert osc_json(server, "image", "show", "osc-backup")["status"] == "active"

    missing = osc(server, "server", "show", "no-such-server", ok=False)
    assert missing.returncode == 1 and "no-such-server" in missing.stderr
    wait_for(lambda: osc_json(server, "server", "show", server_id)["OS-EXT-STS:task_state"] is None)
    osc(server, "server", "delete", "--wait", "osc-vm")
    assert server_id not in [s["ID"] for s in osc_json(server, "server", "list")]


@pytest.mark.skipif(OPENSTACK is None, reason="python-openstackclient is a test dependency")
def test_openstack_flavor_az_limits_commands(server):
    flavors = osc_json(server, "flavor", "list")
    assert {f["Name"] for f in flavors} >= {"m1.tiny", "m1.small", "m1.medium"}
    assert osc_json(server, "flavor", "show", "m1.small")["ram"] == 2048
    zones = osc_json(server, "availability", "zone", "list", "--compute")
    assert [z["Zone Name"] for z in zones] == ["nova"]
    limits = osc_json(server, "limits", "show", "--absolute")
    assert {(row["Name"], row["Value"]) for row in limits} >= {("max_server_meta", 128), ("instances", -1)}


def wait_for(check, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


# -- openstacksdk ----------------------------------------------------------------------------------

def test_sdk_compute_proxy(server, image):
    compute = sdk(server).compute
    flavor = compute.find_flavor("m1.tiny", ignore_missing=False)
    assert flavor.ram == 256 and flavor.vcpus == 1
    assert {f.name for f in compute.flavors()} >= {"m1.tiny", "m1.small"}
    made = [compute.create_server(name=f"sdk-vm-{i}", image_id=image["id"], flavor_id=flavor.id, networks="none")
            for i in range(3)]
    for s in made:
        compute.wait_for_server(s, status="ACTIVE", interval=0.2, wait=60)
    # the proxy pages through servers_links: a page size of 1 still yields every server
    paged = [s.name for s in compute.servers(details=True, name="^sdk-vm-", limit=1)]
    assert sorted(paged) == ["sdk-vm-0", "sdk-vm-1", "sdk-vm-2"]
    assert [s.name for s in compute.servers(name="sdk-vm-1$")] == ["sdk-vm-1"]
    found = compute.find_server("sdk-vm-2", ignore_missing=False)
    assert found.id == made[2].id
    one = compute.get_server(made[0].id)
    assert one.status == "ACTIVE" and one.availability_zone == "nova"
    compute.stop_server(one)
    compute.wait_for_server(one, status="SHUTOFF", interval=0.2, wait=60)
    compute.start_server(one)
    compute.wait_for_server(one, status="ACTIVE", interval=0.2, wait=60)
    snap = compute.create_server_image(one, name="sdk-snap", wait=True, timeout=120)
    assert snap.id and sdk(server).image.get_image(snap.id).status == "active"
    assert [z.name for z in compute.availability_zones()] == ["nova"]
    limits = compute.get_limits()
    assert limits.absolute.instances_used >= 3 and limits.absolute.server_meta == 128
    with pytest.raises(sdk_exceptions.NotFoundException) as missing:
        compute.get_server("00000000-0000-0000-0000-000000000000")
    assert "could not be found" in str(missing.value)
    with pytest.raises(sdk_exceptions.BadRequestException) as bad:
        list(compute.servers(status="SLEEPY"))
    assert "Invalid status value" in str(bad.value)
    for s in made:
        compute.wait_for_server(compute.get_server(s.id), status="ACTIVE", interval=0.2, wait=60)
        compute.delete_server(s)
    for s in made:
        compute.wait_for_delete(s, interval=0.2, wait=60)
    assert compute.find_server("sdk-vm-0") is None
