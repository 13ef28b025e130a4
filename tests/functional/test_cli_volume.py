"""``freezeframe volume ...`` and ``freezeframe server volume ...`` end to end: the CLI against a
real server (fake virt driver, the real qcow2file volume driver on the share under its data
dir)."""

from __future__ import annotations

import json
import re
import uuid

import pytest
import yaml

from freezeframe.cli import volume as volume_cli
from freezeframe.cli.cloud import ConfigError
from freezeframe.cli.main import main
from freezeframe.volumes.client import VolumeClient
from tests.conftest import free_port, start_server
from tests.functional.test_cli_image import Result
from tests.functional.test_compute_snapshot import boot

REQUEST_ID = re.compile(r"request id req-[0-9a-f-]{36}")
GiB = 1 << 30


@pytest.fixture(autouse=True)
def isolated(client_env_isolated) -> None:
    """Every CLI test runs without the developer's OS_* variables or clouds.yaml."""


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("cli-volume") / "ff",
                          env={"FREEZEFRAME_COMPUTE__DRIVER": "fake", "FREEZEFRAME_CONDUCTOR__SCAN_INTERVAL": "0.5"})
    yield server
    server.stop()


def runner(server, capsys, token: str | None = None):
    def run(*args: str, auth: bool = True) -> Result:
        argv = list(args)
        if auth:
            argv += ["--os-image-url", server.image_url, "--os-token", token or server.member_token]
        capsys.readouterr()
        code = main(argv)
        out, err = capsys.readouterr()
        return Result(code, out, err)
    return run


@pytest.fixture
def ff(cloud, capsys):
    """``freezeframe ARGS`` in-process as the member (project-a); the volume URL is found from the
    image URL's root."""
    return runner(cloud, capsys)


@pytest.fixture
def ff_admin(cloud, capsys):
    return runner(cloud, capsys, cloud.admin_token)


def share(server):
    return server.data_dir / "volumes"


def new_volume(ff, size: int = 1, **options: str) -> dict:
    name = options.pop("name", f"vol-{uuid.uuid4()}")
    extra = [arg for key, value in options.items() for arg in (f"--{key}", value)]
    made = ff("volume", "create", "--size", str(size), "--name", name, *extra, "--wait", "-f", "json")
    assert made.code == 0, made.err
    return made.json()


def test_create_list_show_set_extend_delete(ff, cloud):
    name = f"cli-{uuid.uuid4()}"
    volume = new_volume(ff, 1, name=name, property="purpose=cli")
    assert volume["status"] == "available" and volume["size"] == 1 and volume["name"] == name
    assert volume["metadata"] == {"purpose": "cli"}
    path = share(cloud) / f"volume-{volume['id']}"
    assert path.stat().st_size == GiB

    listed = ff("volume", "list", "-f", "json")
    assert listed.code == 0, listed.err
    assert volume["id"] in {v["id"] for v in listed.json()}
    row = next(line for line in ff("volume", "list").out.splitlines() if volume["id"] in line)
    assert name in row and "available" in row
    long_row = next(line for line in ff("volume", "list", "--long").out.splitlines() if volume["id"] in line)
    assert "purpose=cli" in long_row and "__DEFAULT__" in long_row
    only = ff("volume", "list", "--name", name, "-f", "json").json()
    assert [v["id"] for v in only] == [volume["id"]]

    by_name, by_id = ff("volume", "show", name, "-f", "json"), ff("volume", "show", volume["id"], "-f", "json")
    assert by_name.code == by_id.code == 0
    assert by_name.json() == by_id.json()
    table = ff("volume", "show", name)
    assert re.search(r"status\s*│\s*available", table.out)

    renamed = ff("volume", "set", name, "--name", name + "-b", "--property", "tier=gold", "-f", "json")
    assert renamed.code == 0, renamed.err
    assert renamed.json()["name"] == name + "-b"
    assert renamed.json()["metadata"] == {"purpose": "cli", "tier": "gold"}

    grown = ff("volume", "extend", name + "-b", "--size", "2", "-f", "json")
    assert grown.code == 0, grown.err
    assert grown.json()["size"] == 2 and grown.json()["status"] == "available"
    assert path.stat().st_size == 2 * GiB

    gone = ff("volume", "delete", name + "-b", "--wait")
    assert gone.code == 0, gone.err
    assert not path.exists()
    missing = ff("volume", "show", volume["id"])
    assert missing.code == 1 and missing.out == ""
    assert f"Volume {volume['id']} could not be found." in missing.err
    assert "HTTP 404" in missing.err and REQUEST_ID.search(missing.err)


def test_snapshot_create_wait_new_volume_from_it_and_delete_wait(ff, cloud):
    volume = new_volume(ff, 1)
    made = ff("volume", "snapshot", "create", volume["name"], "--name", "cli-snap", "--property", "k=v", "--wait",
              "-f", "json")
    assert made.code == 0, made.err
    snap = made.json()
    assert snap["status"] == "available" and snap["volume_id"] == volume["id"] and snap["metadata"] == {"k": "v"}
    # stderr is not a terminal: one plain line per change, no escape codes, from creating to available.
    assert "\x1b" not in made.err
    statuses = [line.split()[1] for line in made.err.splitlines()]
    assert statuses[0] == "creating" and statuses[-1] == "available"
    info = json.loads((share(cloud) / f"volume-{volume['id']}.info").read_text())
    assert info[snap["id"]] == info["active"] == f"volume-{volume['id']}.{snap['id']}"

    listed = ff("volume", "snapshot", "list", "--volume", volume["name"], "-f", "json")
    assert listed.code == 0, listed.err
    assert [s["id"] for s in listed.json()] == [snap["id"]]
    assert ff("volume", "snapshot", "show", snap["id"], "-f", "json").json()["name"] == "cli-snap"
    table = ff("volume", "snapshot", "list", "--long")
    row = next(line for line in table.out.splitlines() if snap["id"] in line)
    assert "100%" in row and "k=v" in row

    # A snapshot keeps its volume: a delete without --purge is refused with the server's reason.
    refused = ff("volume", "delete", volume["id"])
    assert refused.code == 1 and "dependent snapshot" in refused.err and REQUEST_ID.search(refused.err)

    copy = ff("volume", "create", "--snapshot", snap["id"], "--name", f"copy-{uuid.uuid4()}", "--wait", "-f", "json")
    assert copy.code == 0, copy.err
    assert copy.json()["snapshot_id"] == snap["id"] and copy.json()["size"] == 1
    clone = ff("volume", "create", "--source", volume["name"], "--size", "2", "--wait", "-f", "json")
    assert clone.code == 0, clone.err
    assert clone.json()["source_volid"] == volume["id"] and clone.json()["size"] == 2

    deleted = ff("volume", "snapshot", "delete", snap["id"], "--wait")
    assert deleted.code == 0, deleted.err
    assert deleted.err.splitlines()[-1].split()[1] == "deleted"
    assert ff("volume", "snapshot", "show", snap["id"]).code == 1
    assert snap["id"] not in json.loads((share(cloud) / f"volume-{volume['id']}.info").read_text())
    assert ff("volume", "delete", volume["id"], copy.json()["id"], clone.json()["id"], "--wait").code == 0


def test_purge_deletes_the_snapshots_with_the_volume(ff, cloud):
    volume = new_volume(ff, 1)
    made = ff("volume", "snapshot", "create", volume["id"], "--wait", "-f", "json")
    assert made.code == 0, made.err
    assert ff("volume", "delete", volume["id"], "--purge", "--wait").code == 0
    assert made.json()["id"] not in {s["id"] for s in ff("volume", "snapshot", "list", "-f", "json").json()}
    assert not list(share(cloud).glob(f"volume-{volume['id']}*"))


def test_attach_snapshot_online_detach(ff, ff_admin, cloud, tmp_path):
    server_id, _, _ = boot(cloud, tmp_path)
    volume = new_volume(ff, 1)
    attached = ff("server", "volume", "attach", server_id, volume["name"], "--device", "/dev/vdc", "-f", "json")
    assert attached.code == 0, attached.err
    assert attached.json()["volumeId"] == volume["id"] and attached.json()["device"] == "/dev/vdc"
    listed = ff("server", "volume", "list", server_id, "-f", "json")
    assert [(a["volumeId"], a["device"]) for a in listed.json()] == [(volume["id"], "/dev/vdc")]
    table = ff("server", "volume", "list", server_id)
    assert volume["id"] in table.out and "/dev/vdc" in table.out
    shown = ff("volume", "show", volume["id"], "-f", "json").json()
    assert shown["status"] == "in-use"
    assert [(a["server_id"], a["device"]) for a in shown["attachments"]] == [(server_id, "/dev/vdc")]
    row = next(line for line in ff("volume", "list").out.splitlines() if volume["id"] in line)
    assert f"{server_id} on /dev/vdc" in row

    # In use: no delete, and a second attach is refused with the server's reason.
    busy = ff("volume", "delete", volume["id"])
    assert busy.code == 1 and "attached" in busy.err and "HTTP 400" in busy.err
    again = ff("server", "volume", "attach", server_id, volume["id"])
    assert again.code == 1 and "HTTP 400" in again.err and REQUEST_ID.search(again.err)

    # An assisted snapshot of the attached volume: an admin's --wait shows compute's part too.
    online = ff_admin("volume", "snapshot", "create", volume["id"], "--name", "online", "--wait", "-f", "json")
    assert online.code == 0, online.err
    assert online.json()["status"] == "available"
    final = online.err.splitlines()[-1].split()
    assert final[1:] == ["available", "100%", "compute", "done"], online.err
    deleted = ff_admin("volume", "snapshot", "delete", online.json()["id"], "--wait")
    assert deleted.code == 0, deleted.err
    assert deleted.err.splitlines()[-1].split()[1] == "deleted"
    # A member's --wait shows the snapshot's status only (the admin metadata is not theirs).
    member = ff("volume", "snapshot", "create", volume["id"], "--wait")
    assert member.code == 0, member.err
    assert "compute" not in member.err and "available" in member.err
    snapshot_id = re.search(r"snapshot ([0-9a-f-]{36}) of volume", member.err).group(1)
    assert ff("volume", "snapshot", "delete", snapshot_id, "--wait").code == 0

    detached = ff("server", "volume", "detach", server_id, volume["name"], "--wait")
    assert detached.code == 0, detached.err
    assert ff("server", "volume", "list", server_id, "-f", "json").json() == []
    assert ff("volume", "show", volume["id"], "-f", "json").json()["status"] == "available"
    twice = ff("server", "volume", "detach", server_id, volume["id"])
    assert twice.code == 1 and "is not attached" in twice.err and "HTTP 404" in twice.err
    assert ff("volume", "delete", volume["id"], "--wait").code == 0


def test_admin_lists_every_project(ff, ff_admin):
    volume = new_volume(ff, 1)
    own = ff_admin("volume", "list", "-f", "json").json()
    assert volume["id"] not in {v["id"] for v in own}
    every = ff_admin("volume", "list", "--all-projects")
    row = next(line for line in every.out.splitlines() if volume["id"] in line)
    assert "project-a" in row
    assert ff("volume", "delete", volume["id"], "--wait").code == 0


def test_paging_follows_every_page(cloud, ff):
    name = f"paged-{uuid.uuid4()}"
    made = [new_volume(ff, 1, name=name)["id"] for _ in range(5)]
    with VolumeClient(cloud.url + "/volume/v3", cloud.member_token) as client:
        paged = [v["id"] for v in client.list_volumes(filters={"name": name}, page_size=2)]
        assert paged == made[::-1]          # newest first, every page
        assert [v["id"] for v in client.list_volumes(filters={"name": name}, page_size=2, limit=3)] == made[:1:-1]
    with VolumeClient(cloud.url + "/volume/v3/project-a", cloud.member_token) as client:
        assert client.project_id == "project-a"
        assert [v["id"] for v in client.list_volumes(filters={"name": name}, detail=False)] == made[::-1]
    ambiguous = ff("volume", "show", name)
    assert ambiguous.code == 1 and f"more than one volume is named {name!r}" in ambiguous.err
    assert len(ff("volume", "list", "--name", name, "--limit", "2", "-f", "json").json()) == 2
    assert ff("volume", "delete", *made, "--wait").code == 0


def test_bad_input_is_a_clear_message_and_a_non_zero_exit(ff, cloud, tmp_path):
    usage = ff("volume", "create", "--name", "no-size")
    assert usage.code == 2 and "--size is needed" in usage.err
    with pytest.raises(SystemExit) as exited:
        ff("volume", "create", "--size", "0")
    assert exited.value.code == 2
    with pytest.raises(SystemExit):
        ff("volume", "create", "--size", "1", "--snapshot", "a", "--source", "b")
    huge = ff("volume", "create", "--size", "99999999")
    assert huge.code == 1 and "more than the largest volume" in huge.err and REQUEST_ID.search(huge.err)
    assert ff("volume", "set", "whatever").code == 2
    missing = ff("volume", "show", "no-such-volume")
    assert missing.code == 1 and "no volume with name or ID 'no-such-volume'" in missing.err
    snapless = ff("volume", "create", "--snapshot", str(uuid.uuid4()))
    assert snapless.code == 1 and "could not be found" in snapless.err and "HTTP 404" in snapless.err

    volume = new_volume(ff, 2)
    smaller = ff("volume", "extend", volume["id"], "--size", "1")
    assert smaller.code == 1 and "must be greater than current size" in smaller.err
    assert "HTTP 400" in smaller.err and REQUEST_ID.search(smaller.err)
    forced = ff("volume", "delete", volume["id"], "--force")          # os-force_delete is an admin's
    assert forced.code == 1 and "HTTP 403" in forced.err
    partly = ff("volume", "delete", volume["id"], "no-such-volume", "--wait")
    assert partly.code == 1 and "cannot delete no-such-volume" in partly.err
    assert "1 of 2 volumes were not deleted" in partly.err
    assert ff("volume", "show", volume["id"]).code == 1                 # the other one went

    unknown_server = ff("server", "volume", "attach", "no-such-server", str(uuid.uuid4()))
    assert unknown_server.code == 1 and "no server with name or ID 'no-such-server'" in unknown_server.err
    server_id, _, _ = boot(cloud, tmp_path)
    no_volume = ff("server", "volume", "attach", server_id, "no-such-volume")
    assert no_volume.code == 1 and "no volume with name or ID 'no-such-volume'" in no_volume.err
    spare = new_volume(ff, 1)
    bad_device = ff("server", "volume", "attach", server_id, spare["id"], "--device", "/dev/sda")
    assert bad_device.code == 1 and "device path" in bad_device.err and "HTTP 400" in bad_device.err
    assert ff("volume", "delete", spare["id"], "--wait").code == 0


def test_no_endpoint_exits_2_and_unreachable_exits_3(ff):
    for args in (("volume", "list"), ("volume", "snapshot", "list")):
        result = ff(*args, auth=False)
        assert result.code == 2, args
        assert "no volume endpoint" in result.err and "--os-volume-url" in result.err
    url = f"http://127.0.0.1:{free_port()}/volume/v3"
    down = ff("volume", "list", "--os-volume-url", url, "--os-token", "t", auth=False)
    assert down.code == 3
    assert "cannot reach the volume service" in down.err and "--os-volume-url" in down.err
    old = ff("volume", "list", "--os-volume-url", "http://h:8776/v2/abc", auth=False)
    assert old.code == 2 and "version 3" in old.err


def test_a_cloud_with_the_catalog(ff, cloud, monkeypatch):
    """The password cloud `serve` generates: the volume API from the catalog's block-storage entry."""
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(cloud.data_dir / "clouds.yaml"))
    monkeypatch.setenv("OS_CLOUD", "freezeframe-demo")
    found = volume_cli.resolve()
    assert found.url.endswith("/volume/v3/demo") and "the catalog of cloud 'freezeframe-demo'" in found.source
    made = ff("volume", "create", "--size", "1", "--name", "from-catalog", "--wait", "-f", "json", auth=False)
    assert made.code == 0, made.err
    assert made.json()["os-vol-tenant-attr:tenant_id"] == "demo"
    assert ff("volume", "delete", "from-catalog", "--wait", auth=False).code == 0


# -- endpoint resolution ---------------------------------------------------------------------


def test_resolution_defaults_and_precedence(tmp_path):
    found = volume_cli.resolve(env={"OS_IMAGE_URL": "http://h:9292/image/v2", "OS_TOKEN": "t"})
    assert (found.url, found.image_url, found.token) == ("http://h:9292/volume/v3", "http://h:9292/image", "t")
    assert found.source == "the image URL from OS_IMAGE_URL"
    by_compute = volume_cli.resolve(compute_url="http://c:1/compute/v2.1", env={"OS_TOKEN": "t"})
    assert by_compute.url == "http://c:1/volume/v3" and by_compute.source == "the compute URL from --os-compute-url"
    env = {"OS_VOLUME_URL": "http://cinder:8776/v3/", "OS_IMAGE_URL": "http://img:2/image"}
    assert volume_cli.resolve(env=env).url == "http://cinder:8776/v3"
    assert volume_cli.resolve(env={"OS_VOLUME_URL": "http://ff:9292/volume"}).url == "http://ff:9292/volume/v3"
    flagged = volume_cli.resolve(volume_url="http://flag:3/volume/v3/p1", env=env)
    assert flagged.url == "http://flag:3/volume/v3/p1" and flagged.source == "--os-volume-url"

    (tmp_path / "clouds.yaml").write_text(yaml.safe_dump({"clouds": {"ff": {
        "auth_type": "admin_token", "auth": {"endpoint": "http://cloud:5/image", "token": "secret"},
        "block_storage_endpoint_override": "http://cloud:5/volume/v3"}, "bare": {
        "auth_type": "admin_token", "auth": {"endpoint": "http://bare:6/image", "token": "s2"}}}}))
    chosen = volume_cli.resolve(cloud_name="ff", env=env, cwd=tmp_path)
    assert chosen.url == "http://cloud:5/volume/v3" and chosen.token == "secret" and "cloud 'ff'" in chosen.source
    bare = volume_cli.resolve(env={"OS_CLOUD": "bare"}, cwd=tmp_path)
    assert bare.url == "http://bare:6/volume/v3" and bare.token == "s2"
    with pytest.raises(ConfigError, match="no volume endpoint"):
        volume_cli.resolve(env={})
    with pytest.raises(ConfigError, match="must start with http"):
        volume_cli.resolve(volume_url="cinder:8776", env={})


def test_a_failed_snapshot_exits_1_with_the_reason(tmp_path, capsys):
    """Compute's part of an assisted snapshot fails: --wait ends 1, saying why."""
    server = start_server(tmp_path / "ff", env={"FREEZEFRAME_COMPUTE__DRIVER": "fake",
                                                "FREEZEFRAME_TESTING__FAKE_FAIL_ON": "volume_snapshot_create"})
    try:
        ff = runner(server, capsys)
        server_id, _, _ = boot(server, tmp_path)
        volume = new_volume(ff, 1)
        assert ff("server", "volume", "attach", server_id, volume["id"]).code == 0
        made = ff("volume", "snapshot", "create", volume["id"], "--name", "doomed", "--wait", "-f", "json")
        assert made.code == 1
        assert made.json()["status"] == "error"
        assert f"snapshot {made.json()['id']} ended in status error: creating it failed: " in made.err
        assert "injected failure at volume_snapshot_create" in made.err
        assert ff("volume", "show", volume["id"], "-f", "json").json()["status"] == "in-use"
    finally:
        server.stop()
