"""Black-box compatibility of the bare-metal API (Ironic v1): openstacksdk's baremetal proxy and
``openstack baremetal node ...`` (python-openstackclient with python-ironicclient's plugin),
unchanged, through both kinds of cloud `serve` writes into clouds.yaml — the API is an
administrator's, so their admin clouds:

- ``freezeframe``: password auth through /identity, the bare-metal API found in the service
  catalog (``baremetal`` at <root>/baremetal);
- ``token-freezeframe``: ``admin_token`` with ``baremetal_endpoint_override`` = <root>/baremetal,
  generated here by the same code `serve` uses, for the test's admin token.

Both clients negotiate the microversion (``latest``): they get min(theirs, 1.116).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from tests.conftest import ADMIN_TOKEN, MEMBER_TOKEN, LiveServer, free_port, start_server

openstack = pytest.importorskip("openstack", reason="openstacksdk is a test dependency")
from openstack import exceptions as sdk_exceptions  # noqa: E402

OPENSTACK = shutil.which("openstack", path=str(Path(sys.executable).parent)) or shutil.which("openstack")
ADMIN_CLOUDS = ["freezeframe", "token-freezeframe"]      # identity cloud, token cloud


def _has_ironicclient() -> bool:
    try:
        import ironicclient  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    srv = start_server(tmp_path_factory.mktemp("ff-baremetal") / "ff",
                       env={"FREEZEFRAME_COMPUTE__DRIVER": "fake",
                            "FREEZEFRAME_BAREMETAL__WEBDAV_BIND": f"127.0.0.1:{free_port()}"})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def clouds_yaml(server, tmp_path_factory) -> Path:
    """`serve`'s clouds.yaml (the identity clouds) plus the token clouds its generator writes for
    the test's tokens, named ``token-<name>`` (`serve` writes those only for a tokens file it made)."""
    from freezeframe import settings as settings_mod
    from freezeframe.assembly import write_clouds_yaml
    from freezeframe.http.auth import load_tokens

    work = tmp_path_factory.mktemp("token-clouds")
    port = int(server.url.rsplit(":", 1)[1])
    settings = settings_mod.load(None, environ={}, flags={"data_dir": str(work), "server.port": port})
    tokens = load_tokens(server.data_dir / "test-tokens.json")
    write_clouds_yaml(settings, {t: tokens[t] for t in (ADMIN_TOKEN, MEMBER_TOKEN)})
    generated = yaml.safe_load((work / "clouds.yaml").read_text())["clouds"]
    assert generated["freezeframe"]["baremetal_endpoint_override"] == server.url + "/baremetal"
    clouds = {**yaml.safe_load((server.data_dir / "clouds.yaml").read_text())["clouds"],
              **{f"token-{name}": cloud for name, cloud in generated.items()}}
    path = work / "all-clouds.yaml"
    path.write_text(yaml.safe_dump({"clouds": clouds}))
    return path


def connect(clouds_yaml: Path, cloud: str):
    config = openstack.config.OpenStackConfig(config_files=[str(clouds_yaml)])
    return openstack.connection.Connection(config=config.get_one(cloud=cloud))


# -- openstacksdk ------------------------------------------------------------------------------


@pytest.mark.parametrize("cloud", ADMIN_CLOUDS)
def test_sdk_node_lifecycle(server, clouds_yaml, cloud):
    bm = connect(clouds_yaml, cloud).baremetal
    assert bm.get_endpoint().rstrip("/").removesuffix("/v1") == server.url + "/baremetal"
    name = f"sdk-{uuid.uuid4().hex[:8]}"
    node = bm.create_node(driver="fake-hardware", name=name, properties={"cpus": 2},
                          driver_info={"fake_password": "secret"})
    assert node.provision_state == "enroll" and node.name == name and node.driver == "fake-hardware"
    assert node.driver_info == {"fake_password": "******"}
    assert node.id in [n.id for n in bm.nodes()]
    assert name in [n.name for n in bm.nodes(details=True)]
    assert bm.get_node(name).id == node.id and bm.find_node(name).id == node.id

    node = bm.set_node_provision_state(node, "manage", wait=True, timeout=60)
    assert node.provision_state == "manageable"
    node = bm.set_node_provision_state(node, "provide", wait=True, timeout=60)
    assert node.provision_state == "available"
    bm.set_node_power_state(node, "power on", wait=True, timeout=60)
    assert bm.get_node(node.id).power_state == "power on"
    bm.set_node_power_state(node, "power off", wait=True, timeout=60)
    assert bm.get_node(node.id).power_state == "power off"
    results = bm.validate_node(node, required=("power", "boot"))
    assert results["power"].result is True and results["boot"].result is True

    bm.update_node(node, properties={"cpus": 4})
    assert bm.get_node(node.id).properties == {"cpus": 4}
    mac = "52:54:00:%02x:%02x:%02x" % tuple(uuid.uuid4().bytes[:3])
    port = bm.create_port(node_id=node.id, address=mac)
    assert port.address == mac and port.node_id == node.id
    assert [p.id for p in bm.ports(node=node.id)] == [port.id]
    assert [p.address for p in bm.ports(details=True, node_uuid=node.id)] == [mac]
    bm.delete_port(port)
    assert list(bm.ports(node=node.id)) == []

    node = bm.set_node_provision_state(node, "manage", wait=True, timeout=60)
    node = bm.set_node_provision_state(node, "adopt", wait=True, timeout=60)
    assert node.provision_state == "active"
    node = bm.set_node_provision_state(node, "deleted", wait=True, timeout=60)
    assert node.provision_state == "available"
    bm.delete_node(node)
    with pytest.raises(sdk_exceptions.NotFoundException):
        bm.get_node(node.id)
    assert bm.find_node(name) is None


def test_sdk_reports_errors(server, clouds_yaml):
    bm = connect(clouds_yaml, "token-freezeframe").baremetal
    with pytest.raises(sdk_exceptions.BadRequestException) as err:
        bm.create_node(driver="no-such-driver")
    assert "no-such-driver" in str(err.value)
    node = bm.create_node(driver="fake-hardware")
    with pytest.raises(sdk_exceptions.BadRequestException) as err:
        bm.set_node_provision_state(node, "provide")
    assert "provide" in str(err.value)
    bm.delete_node(node)
    member = connect(clouds_yaml, "token-freezeframe-project-a").baremetal
    with pytest.raises(sdk_exceptions.ForbiddenException):
        list(member.nodes())


# -- python-openstackclient + python-ironicclient ------------------------------------------------------------------


def osc(clouds_yaml: Path, cloud: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(OS_CLIENT_CONFIG_FILE=str(clouds_yaml), OS_CLOUD=cloud, HOME=str(clouds_yaml.parent))
    out = subprocess.run([OPENSTACK, *args], env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert out.returncode == 0, f"openstack {' '.join(args)} ({cloud}): {out.stderr[-2000:]}"
    return out


def osc_json(clouds_yaml: Path, cloud: str, *args: str):
    return json.loads(osc(clouds_yaml, cloud, *args, "-f", "json").stdout)


@pytest.mark.skipif(OPENSTACK is None or not _has_ironicclient(),
                    reason="python-openstackclient and python-ironicclient are test dependencies")
@pytest.mark.parametrize("cloud", ADMIN_CLOUDS)
def test_openstack_baremetal_node_commands(server, clouds_yaml, cloud):
    name = f"osc-{uuid.uuid4().hex[:8]}"
    created = osc_json(clouds_yaml, cloud, "baremetal", "node", "create", "--driver", "fake-hardware", "--name", name,
                       "--property", "cpus=2", "--driver-info", "fake_password=secret")
    assert created["name"] == name and created["provision_state"] == "enroll"
    assert created["driver_info"] == {"fake_password": "******"}
    listed = osc_json(clouds_yaml, cloud, "baremetal", "node", "list")
    row = next(n for n in listed if n["uuid"] == created["uuid"])
    assert row["name"] == name and row["provision_state"] == "enroll"

    osc(clouds_yaml, cloud, "baremetal", "node", "manage", name, "--wait", "60")
    assert osc_json(clouds_yaml, cloud, "baremetal", "node", "show", name)["provision_state"] == "manageable"
    osc(clouds_yaml, cloud, "baremetal", "node", "provide", name, "--wait", "60")
    shown = osc_json(clouds_yaml, cloud, "baremetal", "node", "show", name)
    assert shown["provision_state"] == "available" and shown["uuid"] == created["uuid"]
    assert shown["properties"] == {"cpus": 2}
    osc(clouds_yaml, cloud, "baremetal", "node", "power", "on", name, "--power-timeout", "30")
    assert osc_json(clouds_yaml, cloud, "baremetal", "node", "show", name)["power_state"] == "power on"
    long = osc_json(clouds_yaml, cloud, "baremetal", "node", "list", "--long")
    assert next(n for n in long if n["uuid"] == created["uuid"])["driver"] == "fake-hardware"

    osc(clouds_yaml, cloud, "baremetal", "node", "delete", name)
    missing = osc(clouds_yaml, cloud, "baremetal", "node", "show", name, check=False)
    assert missing.returncode != 0 and "could not be found" in missing.stderr
