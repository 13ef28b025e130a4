"""Black-box compatibility of the volume API (Cinder v3) with python-cinderclient's library, unchanged,
through both kinds of cloud `serve` writes into clouds.yaml (the server and clouds of
``test_openstack_volumes``): the identity cloud (password auth through /identity, the volume API
found in the catalog under ``block-storage``, which cinderclient's default ``volumev3`` reaches as
its alias) and the token cloud (``admin_token``, the endpoint given: <root>/volume/v3).

Errors come back as cinderclient's exception classes with our message (Cinder's fault body), and
lists follow ``volumes_links``/``snapshots_links`` to the end when no limit stops them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.compat import test_openstack_volumes as base

# The live server and the clouds (identity and token) of test_openstack_volumes, one per module.
server, clouds_yaml, connect = base.server, base.clouds_yaml, base.connect

cinderclient = pytest.importorskip("cinderclient", reason="python-cinderclient is a test dependency")
from cinderclient import api_versions  # noqa: E402
from cinderclient import client as cinder_client  # noqa: E402
from cinderclient import exceptions as cinder_exc  # noqa: E402

MEMBER_CLOUDS = ["freezeframe-demo", "freezeframe-project-a"]      # identity cloud, token cloud


def cinder(clouds_yaml, cloud: str, version: str = "3.71"):
    """cinderclient on the cloud's keystoneauth session: by the catalog on an identity cloud, the
    configured endpoint on a token cloud."""
    conn = connect(clouds_yaml, cloud)
    kwargs = {}
    if cloud != "freezeframe-demo":
        kwargs["endpoint_override"] = conn.block_storage.get_endpoint()
    return cinder_client.Client(api_versions.APIVersion(version), session=conn.session, **kwargs)


def wait(get, row_id: str, status: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    row = None
    while time.monotonic() < deadline:
        try:
            row = get(row_id)
        except cinder_exc.NotFound:
            if status == "deleted":
                return None
            raise
        if row.status == status:
            return row
        assert not row.status.startswith("error"), row.status
        time.sleep(0.2)
    raise AssertionError(f"{row_id} not {status}: {row and row.status}")


@pytest.mark.parametrize("cloud", MEMBER_CLOUDS)
def test_volumes_and_snapshots_through_cinderclient(server, clouds_yaml, cloud):
    cc = cinder(clouds_yaml, cloud)
    name = f"cc-{uuid.uuid4().hex[:8]}"
    vol = cc.volumes.create(1, name=name, description="from cinderclient", metadata={"purpose": "compat"})
    assert vol.status == "creating" and vol.size == 1
    vol = wait(cc.volumes.get, vol.id, "available")
    assert (vol.name, vol.description, vol.metadata, vol.bootable) == (name, "from cinderclient",
                                                                       {"purpose": "compat"}, "false")
    assert [v.id for v in cc.volumes.list(search_opts={"name": name})] == [vol.id]
    assert [v.id for v in cc.volumes.list(search_opts={"metadata": {"purpose": "compat"}, "name": name})] == [vol.id]
    assert cc.volumes.list(search_opts={"metadata": {"purpose": "other"}, "name": name}) == []
    assert vol.id in [v.id for v in cc.volumes.list(detailed=False)]
    assert cc.volumes.list(search_opts={"status": "in-use", "name": name}) == []
    cc.volumes.update(vol, name=name + "-renamed")
    assert cc.volumes.get(vol.id).name == name + "-renamed"
    cc.volumes.set_metadata(vol, {"more": "yes"})
    assert cc.volumes.get(vol.id).metadata == {"purpose": "compat", "more": "yes"}
    cc.volumes.set_bootable(vol, True)
    assert cc.volumes.get(vol.id).bootable == "true"
    assert [v.id for v in cc.volumes.list(search_opts={"bootable": True, "name": name + "-renamed"})] == [vol.id]

    snap = cc.volume_snapshots.create(vol.id, name=name + "-snap", description="a snapshot")
    assert snap.status == "creating" and snap.volume_id == vol.id
    snap = wait(cc.volume_snapshots.get, snap.id, "available")
    assert (snap.size, snap.name) == (1, name + "-snap")
    assert [s.id for s in cc.volume_snapshots.list(search_opts={"volume_id": vol.id})] == [snap.id]
    assert snap.id in [s.id for s in cc.volume_snapshots.list(detailed=False)]
    copy = cc.volumes.create(1, snapshot_id=snap.id, name=name + "-copy")
    copy = wait(cc.volumes.get, copy.id, "available")
    assert copy.snapshot_id == snap.id

    cc.volumes.extend(copy, 2)
    deadline = time.monotonic() + 30
    while cc.volumes.get(copy.id).status == "extending" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cc.volumes.get(copy.id).size == 2

    cc.volume_snapshots.delete(snap)
    wait(cc.volume_snapshots.get, snap.id, "deleted")
    for doomed in (vol, copy):
        cc.volumes.delete(doomed)
    for doomed in (vol, copy):
        wait(cc.volumes.get, doomed.id, "deleted")
    with pytest.raises(cinder_exc.NotFound) as err:
        cc.volumes.get(vol.id)
    assert vol.id in str(err.value) and err.value.code == 404
    assert err.value.request_id and err.value.request_id.startswith("req-")


def test_cinderclient_pages_sorts_counts_and_reports_errors(server, clouds_yaml):
    cc = cinder(clouds_yaml, "freezeframe-project-a")
    name = f"cc-paged-{uuid.uuid4().hex[:8]}"
    made = [cc.volumes.create(1, name=name).id for _ in range(5)]
    for volume_id in made:
        wait(cc.volumes.get, volume_id, "available")
    newest_first = list(reversed(made))
    # limit: one request, that many; marker: the ones after it in the (default created_at desc) order
    assert [v.id for v in cc.volumes.list(search_opts={"name": name}, limit=2)] == newest_first[:2]
    assert [v.id for v in cc.volumes.list(search_opts={"name": name}, marker=newest_first[1], limit=2)] \
        == newest_first[2:4]
    assert [v.id for v in cc.volumes.list(search_opts={"name": name}, sort="created_at:asc")] == made
    assert [v.id for v in cc.volumes.list(search_opts={"name": name}, sort=["created_at:asc"], limit=3)] \
        == made[:3]
    # with_count (3.45): the total beside the page
    listed, count = cc.volumes.list(search_opts={"name": name, "with_count": True}, limit=2)
    assert (len(listed), count) == (2, 5)
    # the server's page is shorter than asked: cinderclient follows volumes_links to the end
    from cinderclient import base
    pages = []
    real_get = cc.client.get

    def recording_get(url, **kwargs):
        pages.append(url)
        return real_get(url, **kwargs)
    cc.client.get = recording_get
    try:
        url = "/volumes/detail?limit=2&name=" + name      # the server's max page, as osapi_max_limit would
        found = base.Manager._list(cc.volumes, url, "volumes")
    finally:
        cc.client.get = real_get
    assert [v.id for v in found] == newest_first and len(pages) == 3
    assert all("marker=" in page for page in pages[1:])

    with pytest.raises(cinder_exc.BadRequest) as err:
        cc.volumes.create(0, name="too-small")
    assert "size" in str(err.value) and err.value.code == 400
    # cinderclient sends sort=name as display_name (Cinder's column)
    assert [v.name for v in cc.volumes.list(sort="name:asc", search_opts={"status": "available"})] == \
        sorted(v.name for v in cc.volumes.list(search_opts={"status": "available"}))
    with pytest.raises(cinder_exc.BadRequest) as err:
        cc.volumes.list(sort="reference:asc")        # a key cinderclient knows (manageable volumes) but no list sorts by
    assert "sort key" in str(err.value).lower() and err.value.code == 400
    with pytest.raises(cinder_exc.NotFound) as err:
        cc.volumes.list(marker=str(uuid.uuid4()))
    assert "marker" in str(err.value).lower()
    with pytest.raises(cinder_exc.NotFound):
        cc.volume_snapshots.get(str(uuid.uuid4()))
    other = cinder(clouds_yaml, "freezeframe-project-b")
    with pytest.raises(cinder_exc.NotFound):
        other.volumes.get(made[0])
    assert made[0] not in [v.id for v in other.volumes.list()]
    too_new = cinder(clouds_yaml, "freezeframe-project-a", version="3.72")
    with pytest.raises(cinder_exc.ClientException) as err:
        too_new.volumes.list()
    assert err.value.code == 406 and "3.71" in str(err.value)

    admin = cinder(clouds_yaml, "freezeframe")
    assert set(made) <= {v.id for v in admin.volumes.list(search_opts={"all_tenants": 1})}
    assert set(made).isdisjoint(v.id for v in admin.volumes.list())          # its own project's only
    assert {v.id for v in admin.volumes.list(search_opts={"all_tenants": 1, "project_id": "project-a",
                                                          "name": name})} == set(made)
    for volume_id in made:
        cc.volumes.delete(volume_id)
    for volume_id in made:
        wait(cc.volumes.get, volume_id, "deleted")


# -- the cinder CLI (python-cinderclient's shell), password auth through the identity API ---------

CINDER = shutil.which("cinder", path=str(Path(sys.executable).parent)) or shutil.which("cinder")


@pytest.mark.skipif(CINDER is None, reason="python-cinderclient's shell is a test dependency")
def test_cinder_cli_with_the_identity_and_catalog(server):
    auth = yaml.safe_load((server.data_dir / "clouds.yaml").read_text())["clouds"]["freezeframe-demo"]["auth"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(OS_AUTH_TYPE="password", OS_AUTH_URL=auth["auth_url"], OS_USERNAME=auth["username"],
               OS_PASSWORD=auth["password"], OS_PROJECT_NAME=auth["project_name"], OS_USER_DOMAIN_NAME="Default",
               OS_PROJECT_DOMAIN_NAME="Default", OS_VOLUME_API_VERSION="3.71")

    def cli(*args, check=True):
        out = subprocess.run([CINDER, *args], env=env, capture_output=True, text=True, timeout=120)
        assert not check or out.returncode == 0, f"cinder {' '.join(args)}: {out.stderr[-2000:]}"
        return out

    def field(out, name):
        return next(line.split("|")[2].strip() for line in out.stdout.splitlines()
                    if line.startswith("|") and line.split("|")[1].strip() == name)
    name = f"cli-{uuid.uuid4().hex[:8]}"
    volume_id = field(cli("create", "--name", name, "--metadata", "k=v", "1"), "id")
    deadline = time.monotonic() + 60
    while field(cli("show", volume_id), "status") != "available":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    listed = cli("list", "--name", name, "--metadata", "k=v").stdout
    assert volume_id in listed and "available" in listed
    assert volume_id not in cli("list", "--name", name, "--metadata", "k=other").stdout
    snap_id = field(cli("snapshot-create", "--name", name + "-snap", volume_id), "id")
    assert snap_id in cli("snapshot-list", "--volume-id", volume_id).stdout
    deadline = time.monotonic() + 60
    while field(cli("snapshot-show", snap_id), "status") != "available":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    refused = cli("delete", volume_id, check=False)           # it has a snapshot: Cinder's 400, its message shown
    assert "snapshot" in (refused.stdout + refused.stderr).lower()
    cli("snapshot-delete", snap_id)
    deadline = time.monotonic() + 60
    while snap_id in cli("snapshot-list", "--volume-id", volume_id).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    cli("delete", volume_id)
    missing = cli("show", str(uuid.uuid4()), check=False)
    assert missing.returncode != 0 and "No volume with a name or ID" in missing.stderr


# -- openstacksdk's block-storage proxy: paging over the links, end to end -------------------------


def test_sdk_block_storage_lists_page_to_the_end(server, clouds_yaml):
    """Each list the proxy pages (volumes, snapshots: ``<key>_links``; attachments: no links, the
    SDK asks again from the last id while a page is full) comes back whole, once each, with the
    filters kept on every page."""
    conn = connect(clouds_yaml, "freezeframe-project-a")
    bs = conn.block_storage
    name = f"sdk-pages-{uuid.uuid4().hex[:8]}"
    made = [bs.create_volume(size=1, name=name).id for _ in range(5)]
    bs.create_volume(size=1, name=name + "-other")            # filtered out on every page
    for volume_id in made:
        bs.wait_for_status(bs.get_volume(volume_id), status="available", failures=["error"], interval=0.2, wait=60)
    for details in (True, False):
        got = [v.id for v in bs.volumes(details=details, name=name, limit=2)]
        assert got == list(reversed(made)), details             # created_at desc, each once

    snaps = [bs.create_snapshot(volume_id=volume_id, name=name + "-snap").id for volume_id in made[:3]]
    for snap_id in snaps:
        bs.wait_for_status(bs.get_snapshot(snap_id), status="available", failures=["error"], interval=0.2, wait=60)
    for details in (True, False):
        assert [s.id for s in bs.snapshots(details=details, name=name + "-snap", limit=2)] == list(reversed(snaps))
    assert [s.id for s in bs.snapshots(name=name + "-snap", limit=2, sort="created_at:asc")] == snaps

    attachments = [bs.create_attachment(volume_id).id for volume_id in made[:3]]     # reservations
    for details in (True, False):
        got = [a.id for a in bs.attachments(details=details, limit=2)]
        assert got == list(reversed(attachments)), details
    assert [a.id for a in bs.attachments(volume_id=made[1], limit=1)] == [attachments[1]]
    for attachment_id in attachments:
        bs.delete_attachment(attachment_id)
    doomed = [bs.get_snapshot(snap_id) for snap_id in snaps]
    for snap in doomed:
        bs.delete_snapshot(snap)
    for snap in doomed:
        bs.wait_for_delete(snap, interval=0.2, wait=60)
    for volume in bs.volumes(name=name):
        bs.delete_volume(volume)
    for volume in bs.volumes(name=name + "-other"):
        bs.delete_volume(volume)
