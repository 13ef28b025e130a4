from freezeframe import settings as settings_mod
from freezeframe.identity.catalog import Catalog


def test_catalog_lists_what_exists():
    cat = Catalog({"image": "", "compute": "", "volume": "", "baremetal": "", "identity": ""},
                  frozenset({"identity", "image"}))
    entries = cat.entries("http://h:1", "p")
    assert [e["type"] for e in entries] == ["identity", "image"]
    assert {ep["interface"] for ep in entries[1]["endpoints"]} == {"public", "internal", "admin"}
    assert entries[1]["endpoints"][0]["url"] == "http://h:1/image"


def test_configured_urls_win_and_name_the_project():
    cat = Catalog({"image": "https://img.example/image/", "volume": "https://v.example/volume/v3/$(project_id)s"},
                  frozenset({"identity", "image", "compute"}), region="East")
    urls = {t: u for t, _n, u in cat.urls("http://h:1", "p1")}
    assert urls == {"identity": "http://h:1/identity", "image": "https://img.example/image",
                    "compute": "http://h:1/compute/v2.1", "block-storage": "https://v.example/volume/v3/p1"}
    assert cat.entries("http://h:1", "p1")[0]["endpoints"][0]["region_id"] == "East"


def test_endpoint_settings():
    s = settings_mod.load(environ={"FREEZEFRAME_SERVER__HOST": "0.0.0.0", "FREEZEFRAME_SERVER__PORT": "9400"})
    assert s.endpoint("image") == "http://127.0.0.1:9400/image"
    assert s.endpoint("compute") == "http://127.0.0.1:9400/compute/v2.1"
    assert s.endpoint("volume") == "http://127.0.0.1:9400/volume/v3"      # (a project-less Cinder URL, 3.67 style)
    assert s.endpoint("baremetal") == "http://127.0.0.1:9400/baremetal"
    s = settings_mod.load(environ={"FREEZEFRAME_ENDPOINTS__IMAGE": "https://img/image/"})
    assert s.endpoint("image") == "https://img/image"
    import pytest
    with pytest.raises(settings_mod.SettingsError, match="endpoints.image"):
        settings_mod.load(environ={"FREEZEFRAME_ENDPOINTS__IMAGE": "img"})
    with pytest.raises(settings_mod.SettingsError, match="keystone_url"):
        settings_mod.load(environ={"FREEZEFRAME_AUTH__MODE": "keystone"})
