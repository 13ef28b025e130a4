"""The same requests to a real Glance 33 and to a fresh `freezeframe serve`; both answers printed
side by side (docs/glance-side-by-side.md was written from its output).

    GLANCE_AUTH=headers /work/shared/peers/glance/start-glance.sh       # prints URL=...
    .venv/bin/python bench/glance_side_by_side.py http://127.0.0.1:PORT

Identities: admin = roles admin,member,reader of project "admin-project"; member = member,reader
of "project-a" (Glance trusts them as headers, Freezeframe as the test tokens).
"""

from __future__ import annotations

import html
import json
import os
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import ADMIN_TOKEN, MEMBER_TOKEN, start_server  # noqa: E402

OCTET = {"Content-Type": "application/octet-stream"}
NS = "/v2/metadefs/namespaces"


def glance_client(url: str, role: str) -> httpx.Client:
    admin = role == "admin"
    return httpx.Client(base_url=url, timeout=60, headers={
        "Connection": "close", "X-Identity-Status": "Confirmed", "X-User-Id": "alice" if admin else "bob",
        "X-Project-Id": "admin-project" if admin else "project-a",
        "X-Roles": "admin,member,reader" if admin else "member,reader"})


def summary(resp: httpx.Response) -> str:
    """Status and body; an HTML error page reduced to its message."""
    if "json" in resp.headers.get("content-type", ""):
        text = json.dumps(resp.json())
    else:
        found = re.findall(r"</h1>\s*(.*?)<br", resp.text, re.S)
        text = ("HTML: " + html.unescape(found[0].strip())) if found else resp.text[:200]
    return f"{resp.status_code} {text[:600]}"


class SideBySide:
    def __init__(self, glance_url: str, ff_url: str) -> None:
        def ff(token: str) -> httpx.Client:
            return httpx.Client(base_url=ff_url, headers={"X-Auth-Token": token}, timeout=60)
        self.clients = {"glance": {r: glance_client(glance_url, r) for r in ("admin", "member")},
                        "ff": {"admin": ff(ADMIN_TOKEN), "member": ff(MEMBER_TOKEN)}}
        self.ids: dict[str, dict[str, str]] = {"glance": {}, "ff": {}}

    def both(self, label: str, role: str, method: str, path: str, **kw) -> dict[str, httpx.Response]:
        """``path`` may name ids found earlier on each side: {img}, {task}."""
        print(f"### {label}\n`{method} {path}` ({role}) {kw.get('json', '') or ''}")
        out = {}
        for side in ("glance", "ff"):
            out[side] = self.clients[side][role].request(method, path.format(**self.ids[side]), **kw)
            print(f"- {side}: {summary(out[side])}")
        print()
        return out


def run(s: SideBySide) -> None:
    both = s.both
    both("stores", "member", "GET", "/v2/info/stores")
    both("import methods", "member", "GET", "/v2/info/import")
    made = both("create image", "member", "POST", "/v2/images",
                json={"name": "sbs", "disk_format": "raw", "container_format": "bare"})
    for side, resp in made.items():
        s.ids[side]["img"] = resp.json()["id"]
    data = os.urandom(100000)
    both("stage 100000 bytes", "member", "PUT", "/v2/images/{img}/stage", content=data, headers=OCTET)
    both("image after staging", "member", "GET", "/v2/images/{img}")
    both("stage again", "member", "PUT", "/v2/images/{img}/stage", content=data, headers=OCTET)
    both("import", "member", "POST", "/v2/images/{img}/import", json={"method": {"name": "glance-direct"}})
    time.sleep(4)
    both("image after import", "member", "GET", "/v2/images/{img}")
    for side, resp in both("image tasks", "member", "GET", "/v2/images/{img}/tasks").items():
        s.ids[side]["task"] = resp.json()["tasks"][0]["id"]
    both("tasks (member)", "member", "GET", "/v2/tasks")
    both("tasks (admin)", "admin", "GET", "/v2/tasks")
    both("task", "admin", "GET", "/v2/tasks/{task}")
    for query in ("limit=1", "type=import", "type=api_image_import", "status=bogus", "sort_key=bogus", "marker=x"):
        both(f"tasks {query}", "admin", "GET", f"/v2/tasks?{query}")
    both("task missing", "admin", "GET", f"/v2/tasks/{uuid.uuid4()}")
    both("tasks schema", "member", "GET", "/v2/schemas/tasks")

    ns = "OS::SBS::" + uuid.uuid4().hex[:6]
    one = f"{NS}/{ns}"
    both("namespaces (fresh)", "member", "GET", NS)
    both("resource types (fresh)", "member", "GET", "/v2/metadefs/resource_types")
    both("create namespace (member)", "member", "POST", NS, json={"namespace": ns})
    both("create namespace (admin)", "admin", "POST", NS, json={
        "namespace": ns, "visibility": "public", "protected": True, "display_name": "S",
        "resource_type_associations": [{"name": "OS::Glance::Image", "prefix": "s_"}],
        "properties": {"p": {"type": "string", "title": "P"}}, "tags": [{"name": "t1"}]})
    both("create again", "admin", "POST", NS, json={"namespace": ns})
    both("show", "member", "GET", one)
    both("show ?resource_type", "member", "GET", f"{one}?resource_type=OS::Glance::Image")
    both("delete protected", "admin", "DELETE", one)
    both("property without title", "admin", "POST", f"{one}/properties", json={"name": "q", "type": "string"})
    both("property", "admin", "POST", f"{one}/properties", json={"name": "q", "type": "string", "title": "Q"})
    both("properties", "member", "GET", f"{one}/properties")
    both("object", "admin", "POST", f"{one}/objects", json={"name": "o"})
    both("object again", "admin", "POST", f"{one}/objects", json={"name": "o"})
    both("objects", "member", "GET", f"{one}/objects")
    both("tag", "admin", "POST", f"{one}/tags/t2")
    both("tag again", "admin", "POST", f"{one}/tags/t2")
    both("tags (replace)", "admin", "POST", f"{one}/tags", json={"tags": [{"name": "a"}, {"name": "b"}]})
    both("tags (append)", "admin", "POST", f"{one}/tags", json={"tags": [{"name": "c"}]},
         headers={"X-Openstack-Append": "True"})
    both("tags", "member", "GET", f"{one}/tags")
    both("delete tag in protected", "admin", "DELETE", f"{one}/tags/a")
    both("associations", "member", "GET", f"{one}/resource_types")
    both("associate", "admin", "POST", f"{one}/resource_types", json={"name": "OS::Nova::Flavor", "prefix": "f:"})
    both("resource types", "member", "GET", "/v2/metadefs/resource_types")
    both("unprotect (PUT)", "admin", "PUT", one, json={"namespace": ns, "protected": False, "visibility": "public"})
    for query in ("limit=1&sort_key=namespace&sort_dir=asc", "visibility=shared", "sort_key=bogus", "limit=x",
                  "marker=OS::Nope", "resource_types=OS::Nova::Flavor"):
        both(f"list {query}", "member", "GET", f"{NS}?{query}")
    both("missing namespace", "member", "GET", f"{NS}/OS::Nope")
    for kind in ("objects", "properties", "tags"):
        both(f"missing in {kind}", "member", "GET", f"{one}/{kind}/nope")
    both("missing association", "admin", "DELETE", f"{one}/resource_types/OS::Nope")
    both("delete namespace", "admin", "DELETE", one)
    both("schema resource_type", "member", "GET", "/v2/schemas/metadefs/resource_type")


def main() -> None:
    glance_url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:9292"
    server = start_server(Path(tempfile.mkdtemp(prefix="ff-sbs-")) / "ff")
    try:
        run(SideBySide(glance_url, server.image_url))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
