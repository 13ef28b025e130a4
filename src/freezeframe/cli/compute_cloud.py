"""Where the compute and workflow APIs are, resolved beside the image endpoint (``cloud.py``).

``freezeframe serve`` answers all three under one root: images at ``<root>/image``, compute at
``<root>/compute/v2.1``, workflows at ``<root>/v1``. Each URL comes from the first place that has
it, in ``cloud.py``'s order (flag, ``--os-cloud``, environment, ``OS_CLOUD``):

- compute: ``--os-compute-url``, clouds.yaml ``compute_endpoint_override`` (or the catalog of a
  cloud that logs in through the identity service), ``OS_COMPUTE_URL``; else the image URL's
  root + ``/compute/v2.1``;
- workflows: ``--os-workflow-url``, ``workflow_endpoint_override``, ``OS_WORKFLOW_URL``; else the
  root of the compute URL (when it ends in ``/compute``) or of the image URL, + ``/v1``.

The token and TLS settings are the image endpoint's (X-Auth-Token).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from freezeframe.cli import cloud
from freezeframe.cli.exitcodes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_UNREACHABLE, EXIT_USAGE
from freezeframe.cli.image import UsageError, fail
from freezeframe.compute.client import ComputeClient, ComputeError, Unreachable
from freezeframe.images.client import GlanceError, Unreachable as ImageUnreachable

WORKFLOW_PATH = "/v1"
_COMPUTE_SUFFIX = re.compile(r"/compute$")
_WORKFLOW_SUFFIX = re.compile(r"/v1$")


@dataclass(frozen=True)
class ComputeEndpoint:
    compute_url: str    # ends in /v2.1: /servers is under it
    workflow_url: str   # ends in /v1: /workflows is under it
    image_url: str      # the Glance root, for looking up images by name
    token: str | None
    verify: bool | ssl.SSLContext = True
    # Where each URL came from, for messages.
    compute_source: str = ""
    workflow_source: str = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cloud.add_arguments(parser)
    group = parser.add_argument_group("compute service options")
    group.add_argument("--os-compute-url", metavar="URL", help="compute API, e.g. http://127.0.0.1:9292/compute/v2.1 "
                       "(also OS_COMPUTE_URL; default: the image URL's root + /compute/v2.1)")
    group.add_argument("--os-workflow-url", metavar="URL", help="workflow API, e.g. http://127.0.0.1:9292/v1 "
                       "(also OS_WORKFLOW_URL; default: the service root + /v1)")


def _normalise(url: str, what: str) -> str:
    """No trailing slash, no ``/v2``/``/v2.1`` suffix; ConfigError unless it is http(s)."""
    if not re.match(r"^https?://[^/]", url.strip()):
        raise cloud.ConfigError(f"{what} URL {url!r} must start with http:// or https://")
    return cloud.normalise_url(url)


def _root(url: str, what: str) -> str:
    """The server root of an image or compute URL (``.../image`` and ``.../compute`` removed)."""
    return re.sub(r"/(image|compute)$", "", _normalise(url, what))


def _overrides(name: str, env: Mapping[str, str], cwd: Path | None) -> dict[str, Any]:
    raw, path = cloud.load_cloud(name, env, cwd)
    values = cloud.cloud_values(name, raw, path)  # logs in for password / application credential clouds
    layer: dict[str, Any] = {}
    for key, option in (("compute", "compute_endpoint_override"), ("workflow", "workflow_endpoint_override")):
        if raw.get(option):
            layer[key] = (str(raw[option]), f"cloud {name!r} in {path}")
    if "compute" not in layer and "login" in values and values["login"].url("compute"):
        layer["compute"] = (values["login"].url("compute"), f"the catalog of cloud {name!r} in {path}")
    if "url" in values:
        layer["image"] = values["url"]
    return layer


def resolve(*, cloud_name: str | None = None, image_url: str | None = None, compute_url: str | None = None,
            workflow_url: str | None = None, token: str | None = None, env: Mapping[str, str] | None = None,
            cwd: Path | None = None) -> ComputeEndpoint:
    """The compute and workflow URLs, plus the image endpoint's token; ConfigError if none."""
    env = os.environ if env is None else env
    flags: dict[str, Any] = {}
    for key, value, option in (("compute", compute_url, "--os-compute-url"),
                               ("workflow", workflow_url, "--os-workflow-url"),
                               ("image", image_url, "--os-image-url")):
        if value:
            flags[key] = (value, option)
    layers = [flags]
    if cloud_name:
        layers.append(_overrides(cloud_name, env, cwd))
    environment: dict[str, Any] = {}
    for key, names in (("compute", ("OS_COMPUTE_URL",)), ("workflow", ("OS_WORKFLOW_URL",)),
                       ("image", ("OS_IMAGE_URL", "OS_ENDPOINT"))):
        found = next((var for var in names if env.get(var)), None)
        if found:
            environment[key] = (env[found], found)
    layers.append(environment)
    if not cloud_name and env.get("OS_CLOUD") and not any("compute" in layer or "image" in layer for layer in layers):
        layers.append(_overrides(env["OS_CLOUD"], env, cwd))

    def first(key: str) -> tuple[str, str] | None:
        return next((layer[key] for layer in layers if key in layer), None)

    compute, workflow, image = first("compute"), first("workflow"), first("image")
    if compute is None and image is None:
        raise cloud.ConfigError("no compute endpoint: pass --os-compute-url URL (e.g. "
                                "http://127.0.0.1:9292/compute/v2.1) or --os-image-url URL, set OS_COMPUTE_URL "
                                "or OS_IMAGE_URL, or pick a cloud from clouds.yaml with --os-cloud / OS_CLOUD")
    if compute is not None:
        compute_base = _normalise(compute[0], "compute")
        # A Freezeframe compute URL (.../compute) names the root; Nova's (host:8774/v2.1) does not.
        names_root = bool(_COMPUTE_SUFFIX.search(compute_base)) or image is None
        compute = (compute_base + "/v2.1", compute[1])
    else:
        assert image is not None
        compute_base, names_root = _root(image[0], "image") + "/compute", False
        compute = (compute_base + "/v2.1", f"the image URL from {image[1]}")
    if workflow is not None:
        workflow = (_WORKFLOW_SUFFIX.sub("", _normalise(workflow[0], "workflow")) + WORKFLOW_PATH, workflow[1])
    elif names_root:
        workflow = (_root(compute_base, "compute") + WORKFLOW_PATH, f"the compute URL from {compute[1]}")
    else:
        assert image is not None
        workflow = (_root(image[0], "image") + WORKFLOW_PATH, f"the image URL from {image[1]}")
    # The token and TLS settings come from the same layers as the image endpoint's; with only a
    # compute URL known, the root it names stands in for the image URL.
    base = cloud.resolve(cloud=cloud_name, token=token, env=env, cwd=cwd,
                         image_url=image_url if image else _root(compute_base, "compute") + "/image")
    return ComputeEndpoint(compute_url=compute[0], workflow_url=workflow[0], image_url=base.url, token=base.token,
                           verify=base.verify, compute_source=compute[1], workflow_source=workflow[1])


Action = Callable[[argparse.Namespace, ComputeClient, ComputeEndpoint], int]


def command(action: Action) -> Callable[[argparse.Namespace], int]:
    """Resolve the endpoints, open a client, run the action, and turn its failures into exit codes."""
    @functools.wraps(action)
    def run(args: argparse.Namespace) -> int:
        try:
            endpoint = resolve(cloud_name=args.os_cloud, image_url=args.os_image_url, compute_url=args.os_compute_url,
                               workflow_url=args.os_workflow_url, token=args.os_token)
        except cloud.ConfigError as exc:
            return fail(f"configuration error: {exc}", EXIT_USAGE)
        try:
            with ComputeClient(endpoint.compute_url, endpoint.workflow_url, endpoint.token,
                               verify=endpoint.verify) as client:
                return action(args, client, endpoint)
        except UsageError as exc:
            return fail(exc, EXIT_USAGE)
        except Unreachable as exc:
            source = endpoint.workflow_source if exc.service == "workflow" else endpoint.compute_source
            return fail(f"{exc} (endpoint from {source})", EXIT_UNREACHABLE)
        except ImageUnreachable as exc:
            return fail(exc, EXIT_UNREACHABLE)
        except (ComputeError, GlanceError) as exc:
            return fail(exc, EXIT_FAILED)
        except BrokenPipeError:
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_FAILED
        except KeyboardInterrupt:
            return fail("interrupted", EXIT_INTERRUPTED)
    return run
