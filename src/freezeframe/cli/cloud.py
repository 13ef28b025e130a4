"""Where the image service is and which token to send, resolved the way openstackclient does.

Each value comes from the first place that has it:

1. ``--os-image-url`` / ``--os-token``;
2. the cloud named by ``--os-cloud`` in clouds.yaml (an explicit choice beats the environment);
3. ``OS_IMAGE_URL`` (or ``OS_ENDPOINT``) / ``OS_TOKEN`` (or ``OS_AUTH_TOKEN``);
4. the cloud named by ``OS_CLOUD`` in clouds.yaml.

clouds.yaml is the first of ``OS_CLIENT_CONFIG_FILE``, ``./clouds.yaml``,
``~/.config/openstack/clouds.yaml`` (``$XDG_CONFIG_HOME`` honoured) and
``/etc/openstack/clouds.yaml`` that exists. A cloud gives its endpoint with
``auth_type: admin_token`` (``auth: {endpoint, token}``) or ``auth_type: none``
(``auth: {endpoint}``); ``image_endpoint_override`` wins over ``auth.endpoint``. With
``password``, ``v3password`` or ``v3applicationcredential`` (the generated clouds.yaml's
default) it logs in through the identity service (``auth.auth_url``) and takes the token and
the endpoints from the service catalog, as openstackclient does (``login.py``).
"""

from __future__ import annotations

import argparse
import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from freezeframe.cli.login import KEYSTONE_AUTH_TYPES, LoginError, login

SUPPORTED_AUTH_TYPES = ("admin_token", "none", *KEYSTONE_AUTH_TYPES)
_VERSION_SUFFIX = re.compile(r"/v2(\.\d+)?$")


class ConfigError(Exception):
    """The endpoint or credentials cannot be worked out (exit code 2)."""


@dataclass(frozen=True)
class ImageEndpoint:
    """A resolved Glance root (``/v2/images`` is under it) and the token to send, if any."""
    url: str
    token: str | None
    # True, False, or an SSL context built from a CA bundle (httpx's ``verify``).
    verify: bool | ssl.SSLContext = True
    # Where the URL came from, for messages ("--os-image-url", "OS_IMAGE_URL", "cloud 'x' in PATH").
    source: str = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("service options")
    group.add_argument("--os-cloud", metavar="NAME", help="cloud in clouds.yaml to use (also OS_CLOUD)")
    group.add_argument("--os-image-url", metavar="URL", help="image service root, e.g. "
                       "http://127.0.0.1:9292/image (also OS_IMAGE_URL, OS_ENDPOINT)")
    group.add_argument("--os-token", metavar="TOKEN",
                       help="token sent as X-Auth-Token (also OS_TOKEN, OS_AUTH_TOKEN)")


def normalise_url(url: str) -> str:
    """The Glance root: no trailing slash, no version suffix (``.../v2`` is what clients add)."""
    url = url.strip()
    if not re.match(r"^https?://[^/]", url):
        raise ConfigError(f"image service URL {url!r} must start with http:// or https://")
    return _VERSION_SUFFIX.sub("", url.rstrip("/"))


def config_files(env: Mapping[str, str], cwd: Path | None = None) -> list[Path]:
    """Candidate clouds.yaml files, in openstacksdk's order."""
    home = Path(env.get("HOME") or Path.home())
    xdg = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else home / ".config"
    paths = [Path(env["OS_CLIENT_CONFIG_FILE"])] if env.get("OS_CLIENT_CONFIG_FILE") else []
    return paths + [(cwd or Path.cwd()) / "clouds.yaml", xdg / "openstack" / "clouds.yaml",
                    Path("/etc/openstack/clouds.yaml")]


def load_cloud(name: str, env: Mapping[str, str], cwd: Path | None = None) -> tuple[dict[str, Any], Path]:
    """The named cloud's settings from the first clouds.yaml that exists."""
    candidates = config_files(env, cwd)
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise ConfigError(f"cloud {name!r} requested but no clouds.yaml found (looked in "
                          f"{', '.join(str(p) for p in candidates)})")
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    clouds = doc.get("clouds") if isinstance(doc, dict) else None
    if not isinstance(clouds, dict):
        raise ConfigError(f"{path} has no 'clouds' mapping")
    cloud = clouds.get(name)
    if not isinstance(cloud, dict):
        known = ", ".join(sorted(map(str, clouds))) or "none"
        raise ConfigError(f"cloud {name!r} not found in {path} (clouds defined: {known})")
    return cloud, path


def cloud_values(name: str, cloud: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The URL, token and TLS settings one clouds.yaml entry gives (only the ones it has)."""
    where = f"cloud {name!r} in {path}"
    auth = cloud.get("auth") or {}
    if not isinstance(auth, dict):
        raise ConfigError(f"{where}: 'auth' must be a mapping")
    # openstacksdk's default auth_type is 'password'; a bare token can only mean admin_token.
    auth_type = cloud.get("auth_type") or ("admin_token" if auth.get("token") else "password")
    if auth_type not in SUPPORTED_AUTH_TYPES:
        raise ConfigError(f"{where}: auth_type {auth_type!r} is not supported; use 'password' or "
                          "'v3applicationcredential' with auth: {auth_url, ...}, 'admin_token' with "
                          "auth: {endpoint, token}, or 'none' with auth: {endpoint}")
    values: dict[str, Any] = {}
    verify = cloud.get("verify", True)
    if cloud.get("cacert") and verify is not False:
        values["verify"] = _ca_context(str(cloud["cacert"]), where)
    elif verify is False:
        values["verify"] = False
    url = cloud.get("image_endpoint_override") or auth.get("endpoint")
    if auth_type in KEYSTONE_AUTH_TYPES:
        try:
            session = login(auth_type, cloud, values.get("verify", True))
        except LoginError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        values["token"], values["login"] = session.token, session
        if not url:
            url = session.url("image")
            if not url:
                raise ConfigError(f"{where}: the service catalog has no image endpoint")
            where = f"the catalog of {where}"
    if url:
        values["url"] = (str(url), where)
    if auth_type == "admin_token" and auth.get("token"):
        values["token"] = str(auth["token"])
    return values


def _ca_context(cafile: str, where: str) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=os.path.expanduser(cafile))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{where}: cannot load CA bundle {cafile!r}: {exc}") from None


def resolve(*, cloud: str | None = None, image_url: str | None = None, token: str | None = None,
            env: Mapping[str, str] | None = None, cwd: Path | None = None) -> ImageEndpoint:
    """Combine flags, environment and clouds.yaml into one endpoint; ConfigError if none."""
    env = os.environ if env is None else env
    layers: list[dict[str, Any]] = [{}]
    if image_url:
        layers[0]["url"] = (image_url, "--os-image-url")
    if token:
        layers[0]["token"] = token
    if cloud:
        layers.append(cloud_values(cloud, *load_cloud(cloud, env, cwd)))
    environment: dict[str, Any] = {}
    for var in ("OS_IMAGE_URL", "OS_ENDPOINT"):
        if env.get(var):
            environment["url"] = (env[var], var)
            break
    for var in ("OS_TOKEN", "OS_AUTH_TOKEN"):
        if env.get(var):
            environment["token"] = env[var]
            break
    if env.get("OS_CACERT"):
        environment["verify"] = _ca_context(env["OS_CACERT"], "OS_CACERT")
    layers.append(environment)
    have = {key for layer in layers for key in layer}
    if not cloud and env.get("OS_CLOUD") and not {"url", "token"} <= have:
        layers.append(cloud_values(env["OS_CLOUD"], *load_cloud(env["OS_CLOUD"], env, cwd)))

    def first(key: str) -> Any:
        return next((layer[key] for layer in layers if key in layer), None)

    found = first("url")
    if found is None:
        raise ConfigError("no image service endpoint: pass --os-image-url URL (e.g. "
                          "http://127.0.0.1:9292/image), set OS_IMAGE_URL, or pick a cloud from "
                          "clouds.yaml with --os-cloud / OS_CLOUD")
    url, source = found
    verify = first("verify")
    return ImageEndpoint(url=normalise_url(url), token=first("token"),
                         verify=True if verify is None else verify, source=source)
