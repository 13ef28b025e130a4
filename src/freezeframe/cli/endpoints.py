"""Where a service's API is, resolved beside the image endpoint (``cloud.py``): one resolver for
every service that ``freezeframe serve`` mounts under its root (volume, bare metal, ...).

Each URL comes from the first place that has it, in ``cloud.py``'s order (flag, ``--os-cloud``,
environment, ``OS_CLOUD``):

1. the service's flag (``--os-volume-url``, ``--os-baremetal-url``);
2. the cloud named by ``--os-cloud``: its ``<service>_endpoint_override`` keys (openstacksdk's
   names), else the service's entry in the catalog of a cloud that logs in through the identity
   service;
3. the service's environment variable (``OS_VOLUME_URL``, ``OS_BAREMETAL_URL``);
4. the cloud named by ``OS_CLOUD`` (only when nothing above named any URL);
5. else the root of the compute URL (a Freezeframe one, ``.../compute``) or of the image URL,
   plus the path ``serve`` mounts the service at.

The token and TLS settings are the image endpoint's (X-Auth-Token), resolved from the same layers.
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from freezeframe.cli import cloud

# What `serve` mounts under its root, with the version suffixes clients add: stripped to find it.
_ROOT = re.compile(r"(/image|/compute(/v2(\.1)?)?|/volume(/v3(/[^/]+)?)?|/baremetal(/v1)?)$")
_FREEZEFRAME_COMPUTE = re.compile(r"/compute(/v2(\.1)?)?/?$")


def root(url: str) -> str:
    """The root of a Freezeframe image, compute, volume or bare-metal URL (what `serve` mounts
    them under)."""
    return _ROOT.sub("", re.sub(r"/v2(\.\d+)?$", "", url.strip().rstrip("/")))


@dataclass(frozen=True)
class Service:
    """How one service's endpoint is named in each place."""
    name: str                           # for messages: "volume", "bare-metal"
    flag: str                           # "--os-volume-url"
    overrides: tuple[str, ...]          # clouds.yaml keys, first found wins
    catalog_types: tuple[str, ...]      # service catalog types, first found wins
    env: tuple[str, ...]                # environment variables, first set wins
    path: str                           # where `serve` mounts it under its root, e.g. "/volume/v3"
    normalise: Callable[[str], str]     # the URL as the client wants it; ConfigError if unusable


@dataclass(frozen=True)
class Endpoint:
    url: str            # the service's root, normalised
    image_url: str      # the Glance root, for looking up images by name
    token: str | None
    verify: bool | ssl.SSLContext = True
    source: str = ""    # where the URL came from, for messages
    image_source: str = ""


def _cloud_layer(service: Service, name: str, env: Mapping[str, str], cwd: Path | None) -> dict[str, Any]:
    raw, path = cloud.load_cloud(name, env, cwd)
    values = cloud.cloud_values(name, raw, path)      # logs in for password / application credential clouds
    layer: dict[str, Any] = {}
    where = f"cloud {name!r} in {path}"
    option = next((o for o in service.overrides if raw.get(o)), None)
    if option:
        layer["service"] = (str(raw[option]), where)
    elif "login" in values:
        found = next((url for t in service.catalog_types if (url := values["login"].url(t))), None)
        if found:
            layer["service"] = (found, f"the catalog of {where}")
    if raw.get("compute_endpoint_override"):
        layer["compute"] = (str(raw["compute_endpoint_override"]), where)
    if "url" in values:
        layer["image"] = values["url"]
    return layer


def resolve_service(service: Service, *, url: str | None = None, cloud_name: str | None = None,
                    image_url: str | None = None, compute_url: str | None = None, token: str | None = None,
                    env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Endpoint:
    """The service's root, plus the image endpoint's token; ConfigError if none is known."""
    env = os.environ if env is None else env
    flags = {key: (value, option) for key, value, option in (
        ("service", url, service.flag), ("compute", compute_url, "--os-compute-url"),
        ("image", image_url, "--os-image-url")) if value}
    layers = [flags]
    if cloud_name:
        layers.append(_cloud_layer(service, cloud_name, env, cwd))
    environment = {}
    for key, names in (("service", service.env), ("compute", ("OS_COMPUTE_URL",)),
                       ("image", ("OS_IMAGE_URL", "OS_ENDPOINT"))):
        found = next((var for var in names if env.get(var)), None)
        if found:
            environment[key] = (env[found], found)
    layers.append(environment)
    if not cloud_name and env.get("OS_CLOUD") and not any(layer for layer in layers):
        layers.append(_cloud_layer(service, env["OS_CLOUD"], env, cwd))

    def first(key: str) -> tuple[str, str] | None:
        return next((layer[key] for layer in layers if key in layer), None)

    named, compute, image = first("service"), first("compute"), first("image")
    if named is not None:
        found_url, source = service.normalise(named[0]), named[1]
    else:
        # A Freezeframe compute URL (.../compute/v2.1) names the root; Nova's (host:8774) does not.
        base = compute if compute is not None and _FREEZEFRAME_COMPUTE.search(compute[0]) else image
        if base is None:
            example = "http://127.0.0.1:9292" + service.path
            raise cloud.ConfigError(f"no {service.name} endpoint: pass {service.flag} URL (e.g. {example}) or "
                                    f"--os-image-url URL, set {service.env[0]} or OS_IMAGE_URL, or pick a cloud "
                                    "from clouds.yaml with --os-cloud / OS_CLOUD")
        found_url = service.normalise(root(base[0]) + service.path)
        source = f"the {'compute' if base is compute else 'image'} URL from {base[1]}"
    # The token and TLS settings come from the image endpoint's layers; with only the service's
    # URL known, the root it names stands in for the image URL.
    found = cloud.resolve(cloud=cloud_name, token=token, env=env, cwd=cwd,
                          image_url=image_url if image else root(found_url) + "/image")
    return Endpoint(url=found_url, image_url=found.url, token=found.token, verify=found.verify, source=source,
                    image_source=found.source)
