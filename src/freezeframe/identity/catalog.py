"""The service catalog: every Freezeframe API, as Keystone lists services and their endpoints.

Built from the endpoint catalog in the settings (``[endpoints]``). A service this process serves
whose URL is not configured is listed at the address the client used to reach the identity
API (so a client that came through a port forward or a proxy's host name is sent back the same
way); configure ``[endpoints]`` when clients must use another address (TLS in front, several
API hosts). ``$(project_id)s`` and
``%(project_id)s`` in a URL are replaced by the token's project, as Keystone does.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Mapping

# (settings key, service type, service name, path under this process's root)
SERVICES = [
    ("identity", "identity", "keystone", "/identity"),
    ("image", "image", "glance", "/image"),
    ("compute", "compute", "nova", "/compute/v2.1"),
    ("volume", "block-storage", "cinder", "/volume/v3/$(project_id)s"),
    ("baremetal", "baremetal", "ironic", "/baremetal"),
    # not "workflow": that service type is Mistral's (service-types-authority)
    ("workflow", "freezeframe-workflow", "freezeframe", "/v1"),
]
INTERFACES = ("public", "internal", "admin")
_NS = uuid.UUID("5f1e6c2a-3b7d-4e8f-9a0b-1c2d3e4f5a6b")


@dataclass(frozen=True)
class Catalog:
    configured: Mapping[str, str]    # settings key -> URL ("" = not configured)
    local: frozenset[str]            # services this process serves
    region: str = "RegionOne"

    def urls(self, base_url: str, project_id: str | None) -> list[tuple[str, str, str]]:
        """(type, name, url) of each listed service; ``base_url`` is how the client reached us."""
        out = []
        for key, service_type, name, path in SERVICES:
            url = self.configured.get(key, "")
            if not url and key in self.local and path is not None:
                url = base_url.rstrip("/") + path
            if not url:
                continue
            if project_id:
                url = url.replace("$(project_id)s", project_id).replace("%(project_id)s", project_id)
            out.append((service_type, name, url.rstrip("/")))
        return out

    def entries(self, base_url: str, project_id: str | None) -> list[dict[str, Any]]:
        """The catalog as a token (and ``GET /v3/auth/catalog``) carries it."""
        return [{
            "id": uuid.uuid5(_NS, service_type).hex,
            "type": service_type,
            "name": name,
            "endpoints": [{"id": uuid.uuid5(_NS, f"{service_type} {interface} {url}").hex, "interface": interface,
                           "region_id": self.region, "region": self.region, "url": url}
                          for interface in INTERFACES],
        } for service_type, name, url in self.urls(base_url, project_id)]
