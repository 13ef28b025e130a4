"""Black-box compatibility of the volume API (Cinder v3): openstacksdk's block-storage proxy and
python-openstackclient's ``openstack volume ...`` / ``openstack volume snapshot ...``, unchanged,
through both kinds of cloud `serve` writes into clouds.yaml:

- the identity clouds (``freezeframe-demo``, ...): password auth through /identity, the volume
  API found in the service catalog (``block-storage`` at <root>/volume/v3/<project_id>);
- the token clouds (``admin_token``, ``block_storage_endpoint_override`` = <root>/volume/v3, no
  project in the URL), generated here by the same code `serve` uses, for the test's tokens.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from tests.conftest import ADMIN_TOKEN, MEMBER_TOKEN, OTHER_TOKEN, LiveServer, start_server

openstack = pytest.importorskip("openstack", reason="openstacksdk is a test dependency")
from openstack import exceptions as sdk_exceptions  # noqa: E402

OPENSTACK = shutil.which("openstack", path=str(Path(sys.executable).parent)) or shutil.which("openstack")
MEMBER_CLOUDS = ["freezeframe-demo", "freezeframe-project-a"]      # identity cloud, token cloud


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    srv = start_server(tmp_path_factory.mktemp("ff-volumes") / "ff", env={"FREEZEFRAME_COMPUTE__DRIVER": "fake"})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def clouds_yaml(server, tmp_path_factory) -> Path:
    """`serve`'s clouds.yaml (the identity clouds) plus the token clouds its generator writes for
    the test's tokens (`serve` writes those only for a tokens file it made itself)."""
    from freezeframe import settings as settings_mod
    from freezeframe.assembly import write_clouds_yaml
    from freezeframe.http.auth import load_tokens

    work = tmp_path_factory.mktemp("token-clouds")
    port = int(server.url.rsplit(":", 1)[1])
    settings = settings_mod.load(None, environ={}, flags={"data_dir": str(work), "server.port": port})
    tokens = load_tokens(server.data_dir / "test-tokens.json")
    write_clouds_yaml(settings, {t: tokens[t] for t in (ADMIN_TOKEN, MEMBER_TOKEN, OTHER_TOKEN)})
    generated = yaml.safe_load((work / "clouds.yaml").read_text())["clouds"]
    assert generated["freezeframe-project-a"]["block_storage_endpoint_override"] == server.url + "/volume/v3"
    clouds = {**yaml.safe_load((server.data_dir / "clouds.yaml").read_text())["clouds"], **generated}
    path = work / "all-clouds.yaml"
    path.write_text(yaml.safe_dump({"clouds": clouds}))
    return path


def connect(clouds_yaml: Path, cloud: str):
    config = openstack.config.OpenStackConfig(config_files=[str(clouds_yaml)])
    return openstack.connection.Connection(config=config.get_one(cloud=cloud))


# -- openstacksdk ------------------------------------------------------------------------------


@pytest.mark.parametrize("cloud", MEMBER_CLOUDS)
def test_sdk_volume_and_snapshot_lifecycle(server, clouds_yaml, cloud):
    bs = connect(clouds_yaml, cloud).block_storage
    expected = server.url + "/volume/v3" + ("/demo" if cloud == "freezeframe-demo" else "")
    assert bs.get_endpoint().rstrip("/") == expected
    name = f"sdk-{uuid.uuid4()}"
    volume = bs.create_volume(size=1, name=name, description="from the sdk", metadata={"purpose": "compat"})
    assert volume.status == "creating"
    volume = bs.wait_for_status(volume, status="available", failures=["error"], interval=0.2, wait=60)
    assert (volume.size, volume.name, volume.metadata) == (1, name, {"purpose": "compat"})
    assert volume.is_bootable is False and volume.volume_type == "__DEFAULT__"
    assert volume.id in [v.id for v in bs.volumes()]
    assert volume.id in [v.id for v in bs.volumes(details=False)]
    assert [v.id for v in bs.volumes(name=name)] == [volume.id]
    assert bs.get_volume(volume.id).name == name
    assert bs.find_volume(name).id == volume.id

    snapshot = bs.create_snapshot(volume_id=volume.id, name=name + "-snap", description="sdk snapshot")
    snapshot = bs.wait_for_status(snapshot, status="available", failures=["error"], interval=0.2, wait=60)
    assert (snapshot.volume_id, snapshot.size, snapshot.name) == (volume.id, 1, name + "-snap")
    assert [s.id for s in bs.snapshots(volume_id=volume.id)] == [snapshot.id]
    assert snapshot.id in [s.id for s in bs.snapshots(details=False)]
    assert bs.get_snapshot(snapshot.id).progress == "100%"
    copy = bs.create_volume(snapshot_id=snapshot.id, name=name + "-copy")
    copy = bs.wait_for_status(copy, status="available", failures=["error"], interval=0.2, wait=60)
    assert copy.snapshot_id == snapshot.id and copy.size == 1

    bs.extend_volume(copy, 2)
    deadline = time.monotonic() + 30
    while bs.get_volume(copy.id).status == "extending" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (bs.get_volume(copy.id).size, bs.get_volume(copy.id).status) == (2, "available")
    bs.update_volume(copy, name=name + "-renamed")
    assert bs.get_volume(copy.id).name == name + "-renamed"

    bs.delete_snapshot(snapshot)
    bs.wait_for_delete(snapshot, interval=0.2, wait=60)
    with pytest.raises(sdk_exceptions.NotFoundException):
        bs.get_snapshot(snapshot.id)
    for doomed in (volume, copy):
        bs.delete_volume(doomed)
        bs.wait_for_delete(doomed, interval=0.2, wait=60)
    with pytest.raises(sdk_exceptions.NotFoundException):
        bs.get_volume(volume.id)
    assert bs.find_volume(name) is None


def test_sdk_pages_isolates_projects_and_reports_errors(server, clouds_yaml):
    bs = connect(clouds_yaml, "freezeframe-project-a").block_storage
    name = f"sdk-paged-{uuid.uuid4()}"
    made = [bs.create_volume(size=1, name=name).id for _ in range(3)]
    for volume_id in made:
        bs.wait_for_status(bs.get_volume(volume_id), status="available", failures=["error"], interval=0.2, wait=60)
    # limit=2: the SDK follows volumes_links to the next page.
    assert sorted(v.id for v in bs.volumes(name=name, limit=2)) == sorted(made)

    other = connect(clouds_yaml, "freezeframe-project-b").block_storage
    with pytest.raises(sdk_exceptions.NotFoundException):
        other.get_volume(made[0])
    assert made[0] not in [v.id for v in other.volumes()]
    admin = connect(clouds_yaml, "freezeframe").block_storage
    assert set(made) <= {v.id for v in admin.volumes(all_projects=True)}

    with pytest.raises(sdk_exceptions.BadRequestException) as err:
        bs.create_volume(size=0, name="too-small")
    assert "size" in str(err.value)
    with pytest.raises(sdk_exceptions.BadRequestException) as err:
        bs.extend_volume(bs.get_volume(made[0]), 1)
    assert "must be greater than current size" in str(err.value)
    volumes = [bs.get_volume(volume_id) for volume_id in made]
    for volume in volumes:
        bs.delete_volume(volume)
    for volume in volumes:
        bs.wait_for_delete(volume, interval=0.2, wait=60)


def test_sdk_snapshot_of_an_attached_volume(server, clouds_yaml, tmp_path):
    """An in-use volume: attached through the compute proxy, snapshotted with force (the SDK's
    3.65), the snapshot taken with compute's help (assisted) and deleted, then detached."""
    from tests.functional.test_compute_snapshot import boot

    server_id, _, _ = boot(server, tmp_path)          # project-a's, as the token cloud
    conn = connect(clouds_yaml, "freezeframe-project-a")
    bs = conn.block_storage
    volume = bs.wait_for_status(bs.create_volume(size=1, name="sdk-attached"), status="available",
                                failures=["error"], interval=0.2, wait=60)
    attachment = conn.compute.create_volume_attachment(server_id, volume_id=volume.id)
    assert attachment.volume_id == volume.id and attachment.device == "/dev/vdb"
    volume = bs.wait_for_status(volume, status="in-use", failures=["error"], interval=0.2, wait=60)
    assert [a["server_id"] for a in volume.attachments] == [server_id]
    assert [a.volume_id for a in conn.compute.volume_attachments(server_id)] == [volume.id]

    snapshot = bs.create_snapshot(volume_id=volume.id, name="online", force=True)
    snapshot = bs.wait_for_status(snapshot, status="available", failures=["error"], interval=0.2, wait=60)
    assert snapshot.progress == "100%"
    bs.delete_snapshot(snapshot)
    bs.wait_for_delete(snapshot, interval=0.2, wait=60)

    conn.compute.delete_volume_attachment(server_id, volume.id)
    volume = bs.wait_for_status(bs.get_volume(volume.id), status="available", failures=["error"], interval=0.2,
                                wait=60)
    assert volume.attachments == []
    bs.delete_volume(volume)
    bs.wait_for_delete(volume, interval=0.2, wait=60)


# -- python-openstackclient ------------------------------------------------------------------


def osc(clouds_yaml: Path, cloud: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(OS_CLIENT_CONFIG_FILE=str(clouds_yaml), OS_CLOUD=cloud, HOME=str(clouds_yaml.parent))
    out = subprocess.run([OPENSTACK, *args], env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert out.returncode == 0, f"openstack {' '.join(args)} ({cloud}): {out.stderr[-2000:]}"
    return out


def osc_json(clouds_yaml: Path, cloud: str, *args: str):
    return json.loads(osc(clouds_yaml, cloud, *args, "-f", "json").stdout)


def osc_wait(clouds_yaml: Path, cloud: str, kind: str, name: str, status: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    shown = {}
    while time.monotonic() < deadline:
        shown = osc_json(clouds_yaml, cloud, *kind.split(), "show", name)
        if shown["status"] == status:
            return shown
        assert not shown["status"].startswith("error"), shown
        time.sleep(0.3)
    raise AssertionError(f"{kind} {name} not {status}: {shown}")


def osc_gone(clouds_yaml: Path, cloud: str, kind: str, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if osc(clouds_yaml, cloud, *kind.split(), "show", name, check=False).returncode != 0:
            return
        time.sleep(0.3)
    raise AssertionError(f"{kind} {name} still there")


@pytest.mark.skipif(OPENSTACK is None, reason="python-openstackclient is a test dependency")
@pytest.mark.parametrize("cloud", MEMBER_CLOUDS)
def test_openstack_volume_and_snapshot_commands(server, clouds_yaml, cloud):
    name = f"osc-{uuid.uuid4().hex[:8]}"
    created = osc_json(clouds_yaml, cloud, "volume", "create", "--size", "1", "--property", "k=v", name)
    assert created["name"] == name and created["size"] == 1 and created["status"] == "creating"
    shown = osc_wait(clouds_yaml, cloud, "volume", name, "available")
    assert shown["id"] == created["id"] and shown["properties"] == {"k": "v"} and shown["type"] == "__DEFAULT__"

    snap = osc_json(clouds_yaml, cloud, "volume", "snapshot", "create", "--volume", name, name + "-snap")
    assert snap["volume_id"] == created["id"] and snap["status"] == "creating"
    assert osc_wait(clouds_yaml, cloud, "volume snapshot", name + "-snap", "available")["size"] == 1

    # (openstackclient's list commands ask an identity v3 endpoint even on a token cloud: the
    # generated clouds name it, identity_endpoint_override)
    assert created["id"] in [v["ID"] for v in osc_json(clouds_yaml, cloud, "volume", "list")]
    assert snap["id"] in [s["ID"] for s in osc_json(clouds_yaml, cloud, "volume", "snapshot", "list")]
    if cloud != "freezeframe-project-a":
        long = osc_json(clouds_yaml, cloud, "volume", "list", "--long")
        row = next(v for v in long if v["ID"] == created["id"])
        assert row["Status"] == "available" and row["Size"] == 1

    osc(clouds_yaml, cloud, "volume", "snapshot", "delete", name + "-snap")
    osc_gone(clouds_yaml, cloud, "volume snapshot", snap["id"])
    osc(clouds_yaml, cloud, "volume", "delete", name)
    osc_gone(clouds_yaml, cloud, "volume", created["id"])
    missing = osc(clouds_yaml, cloud, "volume", "show", created["id"], check=False)
    assert missing.returncode != 0 and f"No Volume found for {created['id']}" in missing.stderr
