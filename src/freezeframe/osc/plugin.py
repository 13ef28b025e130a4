"""The openstackclient plugin module (the ``openstack.cli.extension`` entry point): what
openstackclient asks of every plugin — its API name, version option and versions, a client
factory and a hook for global options — as python-ironicclient's ``ironicclient/osc/plugin.py``.

The API name is ``freezeframe`` (not one of the services it calls: ``baremetal`` and
``compute`` are taken by ironicclient and openstackclient itself), so the commands live in the
``openstack.freezeframe.v1`` group and are named as users type them (``server snapshot``,
``baremetal node snapshot``, ``workflow list``): no installed plugin uses those names.
"""

from __future__ import annotations

import argparse
from typing import Any

from osc_lib import utils

API_NAME = "freezeframe"
API_VERSION_OPTION = "os_freezeframe_api_version"
DEFAULT_API_VERSION = "1"
CLIENT_CLASS = "freezeframe.osc.client.Client"
API_VERSIONS = {"1": CLIENT_CLASS}


def make_client(instance: Any) -> Any:
    """The client the commands use (``self.app.client_manager.freezeframe``): the session and
    endpoints of the cloud openstackclient logged in to."""
    cls = utils.get_client_class(API_NAME, instance._api_version[API_NAME], API_VERSIONS)
    return cls(instance)


def build_option_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The global option openstackclient reads the command group's version from (without it
    the group would be ``openstack.freezeframe.vNone``)."""
    parser.add_argument("--os-freezeframe-api-version", metavar="<freezeframe-api-version>",
                        default=utils.env("OS_FREEZEFRAME_API_VERSION", default=DEFAULT_API_VERSION),
                        choices=sorted(API_VERSIONS),
                        help=f"Freezeframe plugin API version, default={DEFAULT_API_VERSION} "
                             "(Env: OS_FREEZEFRAME_API_VERSION)")
    return parser
