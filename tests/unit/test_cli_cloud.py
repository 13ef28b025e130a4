"""Endpoint and token resolution: flags, environment, clouds.yaml, in openstackclient's order."""

from __future__ import annotations

import ssl
from pathlib import Path

import certifi
import pytest
import yaml

from freezeframe.cli import cloud
from freezeframe.cli.cloud import ConfigError, resolve


def noauth(url: str) -> dict:
    return {"auth_type": "none", "auth": {"endpoint": url}}


def write_clouds(path: Path, clouds: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"clouds": clouds}))
    return path


@pytest.fixture
def home(tmp_path) -> dict[str, str]:
    """An environment with an empty home; cwd is a separate empty directory."""
    (tmp_path / "home").mkdir()
    (tmp_path / "cwd").mkdir()
    return {"HOME": str(tmp_path / "home")}


def test_flags_alone(home, tmp_path):
    ep = resolve(image_url="http://h:9292/image/", token="t", env=home, cwd=tmp_path / "cwd")
    assert (ep.url, ep.token, ep.source) == ("http://h:9292/image", "t", "--os-image-url")


@pytest.mark.parametrize("given, root", [
    ("http://h:9292/image/v2", "http://h:9292/image"),
    ("http://h:9292/v2/", "http://h:9292"),
    ("https://h/image/v2.17", "https://h/image"),
    ("http://h:9292/v2x", "http://h:9292/v2x"),
])
def test_version_suffix_is_dropped(home, tmp_path, given, root):
    assert resolve(image_url=given, env=home, cwd=tmp_path / "cwd").url == root


def test_url_must_be_http(home, tmp_path):
    with pytest.raises(ConfigError, match="http:// or https://"):
        resolve(image_url="127.0.0.1:9292", env=home, cwd=tmp_path / "cwd")


def test_nothing_configured_is_an_error_naming_the_options(home, tmp_path):
    with pytest.raises(ConfigError) as info:
        resolve(env=home, cwd=tmp_path / "cwd")
    assert "--os-image-url" in str(info.value) and "OS_CLOUD" in str(info.value)


def test_environment_and_aliases(home, tmp_path):
    env = {**home, "OS_ENDPOINT": "http://e/image", "OS_AUTH_TOKEN": "a"}
    ep = resolve(env=env, cwd=tmp_path / "cwd")
    assert (ep.url, ep.token, ep.source) == ("http://e/image", "a", "OS_ENDPOINT")
    env.update(OS_IMAGE_URL="http://i/image", OS_TOKEN="t")  # the primary names win over the aliases
    ep = resolve(env=env, cwd=tmp_path / "cwd")
    assert (ep.url, ep.token) == ("http://i/image", "t")


def test_flags_beat_environment_field_by_field(home, tmp_path):
    env = {**home, "OS_IMAGE_URL": "http://env/image", "OS_TOKEN": "env-token"}
    ep = resolve(token="flag-token", env=env, cwd=tmp_path / "cwd")
    assert (ep.url, ep.token) == ("http://env/image", "flag-token")


def test_os_cloud_admin_token_from_cwd(home, tmp_path):
    write_clouds(tmp_path / "cwd" / "clouds.yaml", {
        "ff": {"auth_type": "admin_token", "auth": {"endpoint": "http://c/image", "token": "ct"}}})
    ep = resolve(env={**home, "OS_CLOUD": "ff"}, cwd=tmp_path / "cwd")
    assert (ep.url, ep.token) == ("http://c/image", "ct")
    assert "cloud 'ff'" in ep.source


def test_environment_beats_os_cloud_but_not_the_flag(home, tmp_path):
    write_clouds(tmp_path / "cwd" / "clouds.yaml", {
        "ff": {"auth_type": "admin_token", "auth": {"endpoint": "http://c/image", "token": "ct"}}})
    env = {**home, "OS_CLOUD": "ff", "OS_IMAGE_URL": "http://env/image"}
    ep = resolve(env=env, cwd=tmp_path / "cwd")
    assert (ep.url, ep.token) == ("http://env/image", "ct")  # token still from the cloud
    # An explicit --os-cloud is a choice made for this command: it beats the environment.
    ep = resolve(cloud="ff", env=env, cwd=tmp_path / "cwd")
    assert ep.url == "http://c/image"
    ep = resolve(cloud="ff", image_url="http://flag/image", env=env, cwd=tmp_path / "cwd")
    assert ep.url == "http://flag/image"


def test_auth_type_none_sends_no_token(home, tmp_path):
    write_clouds(tmp_path / "cwd" / "clouds.yaml", {"open": noauth("http://n")})
    ep = resolve(cloud="open", env=home, cwd=tmp_path / "cwd")
    assert (ep.url, ep.token) == ("http://n", None)


def test_image_endpoint_override_wins_over_auth_endpoint(home, tmp_path):
    write_clouds(tmp_path / "cwd" / "clouds.yaml", {"ff": {
        "auth_type": "admin_token", "image_endpoint_override": "http://img:9292/image/v2",
        "auth": {"endpoint": "http://other", "token": "t"}}})
    assert resolve(cloud="ff", env=home, cwd=tmp_path / "cwd").url == "http://img:9292/image"


def test_search_order(home, tmp_path):
    """OS_CLIENT_CONFIG_FILE, then ./clouds.yaml, then ~/.config/openstack: the first that exists."""
    cwd = tmp_path / "cwd"
    write_clouds(Path(home["HOME"]) / ".config" / "openstack" / "clouds.yaml", {"ff": noauth("http://home")})
    assert resolve(cloud="ff", env=home, cwd=cwd).url == "http://home"
    write_clouds(cwd / "clouds.yaml", {"ff": noauth("http://cwd")})
    assert resolve(cloud="ff", env=home, cwd=cwd).url == "http://cwd"
    explicit = write_clouds(tmp_path / "elsewhere.yaml", {"ff": noauth("http://explicit")})
    assert resolve(cloud="ff", env={**home, "OS_CLIENT_CONFIG_FILE": str(explicit)}, cwd=cwd).url \
        == "http://explicit"


def test_xdg_config_home(home, tmp_path):
    xdg = tmp_path / "xdg"
    write_clouds(xdg / "openstack" / "clouds.yaml", {"ff": noauth("http://x")})
    env = {**home, "XDG_CONFIG_HOME": str(xdg)}
    assert resolve(cloud="ff", env=env, cwd=tmp_path / "cwd").url == "http://x"


def test_etc_openstack_is_searched_last(home, tmp_path):
    paths = cloud.config_files(home, tmp_path / "cwd")
    assert paths[-1] == Path("/etc/openstack/clouds.yaml")
    assert paths[0] == tmp_path / "cwd" / "clouds.yaml"


def test_unknown_cloud_lists_the_known_ones(home, tmp_path):
    write_clouds(tmp_path / "cwd" / "clouds.yaml", {"a": noauth("http://a")})
    with pytest.raises(ConfigError, match=r"cloud 'b' not found in .*clouds defined: a"):
        resolve(cloud="b", env=home, cwd=tmp_path / "cwd")


def test_cloud_without_any_clouds_yaml(home, tmp_path):
    with pytest.raises(ConfigError, match="no clouds.yaml found"):
        resolve(env={**home, "OS_CLOUD": "ff"}, cwd=tmp_path / "cwd")


def test_password_clouds_log_in_and_say_where_they_could_not(home, tmp_path):
    """auth_type password (the default) logs in through auth_url; an unreachable identity
    service is a configuration error naming the cloud."""
    write_clouds(tmp_path / "cwd" / "clouds.yaml", {"ks": {
        "auth": {"auth_url": "http://127.0.0.1:9/v3", "username": "u", "password": "p"}},
        "odd": {"auth_type": "v2password", "auth": {}}})
    with pytest.raises(ConfigError, match=r"cloud 'ks' in .*cannot reach the identity service at "
                                          r"http://127.0.0.1:9/v3/auth/tokens"):
        resolve(cloud="ks", env=home, cwd=tmp_path / "cwd")
    with pytest.raises(ConfigError, match="auth_type 'v2password' is not supported"):
        resolve(cloud="odd", env=home, cwd=tmp_path / "cwd")


def test_flags_make_a_broken_os_cloud_irrelevant(home, tmp_path):
    write_clouds(tmp_path / "cwd" / "clouds.yaml", {"ks": {"auth_type": "password", "auth": {}}})
    ep = resolve(image_url="http://f", token="t", env={**home, "OS_CLOUD": "ks"}, cwd=tmp_path / "cwd")
    assert (ep.url, ep.token) == ("http://f", "t")


def test_malformed_clouds_yaml(home, tmp_path):
    (tmp_path / "cwd" / "clouds.yaml").write_text("clouds: [unclosed")
    with pytest.raises(ConfigError, match="cannot read"):
        resolve(cloud="ff", env=home, cwd=tmp_path / "cwd")


def test_tls_settings(home, tmp_path):
    write_clouds(tmp_path / "cwd" / "clouds.yaml", {
        "insecure": {**noauth("https://s"), "verify": False},
        "badca": {**noauth("https://s"), "cacert": str(tmp_path / "missing.pem")},
    })
    assert resolve(cloud="insecure", env=home, cwd=tmp_path / "cwd").verify is False
    with pytest.raises(ConfigError, match="CA bundle"):
        resolve(cloud="badca", env=home, cwd=tmp_path / "cwd")
    assert resolve(image_url="https://s", env=home, cwd=tmp_path / "cwd").verify is True
    ca = resolve(image_url="https://s", env={**home, "OS_CACERT": certifi.where()},
                 cwd=tmp_path / "cwd").verify
    assert isinstance(ca, ssl.SSLContext)
