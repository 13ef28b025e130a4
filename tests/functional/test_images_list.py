"""GET /v2/images: filters, sorting, marker/limit pagination as Glance does them."""

import uuid

import pytest

from tests.conftest import new_image


@pytest.fixture
def tagged(member):
    """Five images with a unique tag so the assertions see only this test's images."""
    tag = f"t-{uuid.uuid4().hex[:8]}"
    images = [new_image(member, name=f"img-{i}", tags=[tag], shade=("dark" if i % 2 else "light"),
                        min_ram=i * 10, min_disk=i % 2) for i in range(5)]
    return tag, images


def names(resp):
    assert resp.status_code == 200, resp.text
    return [i["name"] for i in resp.json()["images"]]


def test_list_shape(member, tagged):
    tag, _ = tagged
    body = member.get("/v2/images", params={"tag": tag}).json()
    assert body["first"] == "/v2/images" and body["schema"] == "/v2/schemas/images"
    assert len(body["images"]) == 5


def test_default_sort_is_newest_first(member, tagged):
    tag, _ = tagged
    assert names(member.get("/v2/images", params={"tag": tag})) == [f"img-{i}" for i in range(4, -1, -1)]


def test_sort_keys(member, tagged):
    tag, _ = tagged
    asc = names(member.get("/v2/images", params={"tag": tag, "sort_key": "min_ram", "sort_dir": "asc"}))
    assert asc == [f"img-{i}" for i in range(5)]
    desc = names(member.get("/v2/images", params={"tag": tag, "sort_key": "name", "sort_dir": "desc"}))
    assert desc == [f"img-{i}" for i in range(4, -1, -1)]


def test_sort_combined_exact(member, tagged):
    tag, _ = tagged
    got = names(member.get("/v2/images", params={"tag": tag, "sort": "min_disk:desc,min_ram:asc"}))
    # min_disk 1: img-1, img-3; 0: img-0, img-2, img-4 -> min_disk desc, then min_ram asc
    assert got == ["img-1", "img-3", "img-0", "img-2", "img-4"]
    keys = names(member.get("/v2/images", params={"tag": tag, "sort_key": ["min_disk", "min_ram"],
                                                  "sort_dir": ["asc", "desc"]}))
    assert keys == ["img-4", "img-2", "img-0", "img-3", "img-1"]


def test_sort_by_custom_property_is_refused(member, tagged):
    tag, _ = tagged
    assert member.get("/v2/images", params={"tag": tag, "sort_key": "shade"}).status_code == 400


def test_pagination_walks_everything_once(member, tagged):
    tag, images = tagged
    seen, params = [], {"tag": tag, "limit": 2, "sort_key": "name", "sort_dir": "asc"}
    for _ in range(10):
        body = member.get("/v2/images", params=params).json()
        seen += [i["name"] for i in body["images"]]
        if "next" not in body:
            break
        params = dict(p.split("=", 1) for p in body["next"].split("?", 1)[1].split("&"))
    assert seen == sorted(i["name"] for i in images)


def test_pagination_with_nullable_sort_key(member):
    tag = f"t-{uuid.uuid4().hex[:8]}"
    made = [new_image(member, name=None if i % 2 else f"n{i}", tags=[tag]) for i in range(5)]
    for direction in ("asc", "desc"):
        ids, marker = [], None
        for _ in range(10):
            params = {"tag": tag, "limit": 2, "sort_key": "name", "sort_dir": direction}
            if marker:
                params["marker"] = marker
            batch = member.get("/v2/images", params=params).json()["images"]
            ids += [i["id"] for i in batch]
            if len(batch) < 2:
                break
            marker = batch[-1]["id"]
        assert sorted(ids) == sorted(i["id"] for i in made) and len(ids) == 5


@pytest.mark.parametrize("params,expected", [
    ({"name": "img-1"}, ["img-1"]),
    ({"name": "in:img-1,img-3"}, ["img-3", "img-1"]),
    ({"shade": "dark"}, ["img-3", "img-1"]),
    ({"status": "queued", "limit": 1}, ["img-4"]),
    ({"status": "bogus"}, []),
    ({"disk_format": "raw", "container_format": "bare", "limit": 2}, ["img-4", "img-3"]),
    ({"protected": "false", "limit": 1}, ["img-4"]),
    ({"created_at": "gte:2000-01-01T00:00:00Z", "limit": 1}, ["img-4"]),
    ({"created_at": "lt:2000-01-01T00:00:00Z"}, []),
])
def test_filters(member, tagged, params, expected):
    tag, _ = tagged
    assert names(member.get("/v2/images", params={"tag": tag, **params})) == expected


def test_id_in_filter(member, tagged):
    tag, images = tagged
    wanted = f"in:{images[0]['id']},{images[2]['id']}"
    assert sorted(names(member.get("/v2/images", params={"id": wanted}))) == ["img-0", "img-2"]


def test_size_filters(member):
    tag = f"t-{uuid.uuid4().hex[:8]}"
    small, big = new_image(member, tags=[tag], name="small"), new_image(member, tags=[tag], name="big")
    member.put(f"/v2/images/{small['id']}/file", content=b"a" * 10)
    member.put(f"/v2/images/{big['id']}/file", content=b"b" * 1000)
    assert names(member.get("/v2/images", params={"tag": tag, "size_min": 100})) == ["big"]
    assert names(member.get("/v2/images", params={"tag": tag, "size_max": 100})) == ["small"]


def test_hidden_images(member):
    tag = f"t-{uuid.uuid4().hex[:8]}"
    new_image(member, tags=[tag], name="shown")
    new_image(member, tags=[tag], name="hidden", os_hidden=True)
    assert names(member.get("/v2/images", params={"tag": tag})) == ["shown"]
    assert names(member.get("/v2/images", params={"tag": tag, "os_hidden": "true"})) == ["hidden"]


@pytest.mark.parametrize("params", [
    {"limit": "-1"}, {"limit": "abc"}, {"sort_key": "bogus"}, {"sort_dir": "sideways"},
    {"marker": str(uuid.uuid4())}, {"size_min": "x"}, {"created_at": "gte:yesterday"},
    {"created_at": "2020-01-01"}, {"visibility": "everyone"}, {"member_status": "maybe"},
    {"sort": "name:asc", "sort_key": "name"}, {"protected": "perhaps"},
])
def test_bad_list_params(member, params):
    resp = member.get("/v2/images", params=params)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["message"]


def test_limit_is_capped(member):
    assert member.get("/v2/images", params={"limit": 100000}).status_code == 200
