"""Glance's tasks API (/image/v2/tasks): the import tasks glance-direct makes, with Glance's
filters, sorting and paging; administrators only (Glance's tasks_api_access)."""

import os
import time
import uuid

from tests.conftest import new_image

OCTET = {"Content-Type": "application/octet-stream"}


def _import(client, data: bytes) -> tuple[str, dict]:
    """A glance-direct import; the image id and its finished task."""
    image = new_image(client)
    assert client.put(f"/v2/images/{image['id']}/stage", content=data, headers=OCTET).status_code == 204
    staged = client.get(f"/v2/images/{image['id']}").json()
    # as Glance 33 shows a staged image: uploading, its size known, no checksum yet
    assert staged["status"] == "uploading" and staged["size"] == len(data), staged
    assert staged["checksum"] is None and staged["virtual_size"] is None
    assert client.post(f"/v2/images/{image['id']}/import",
                       json={"method": {"name": "glance-direct"}}).status_code == 202
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        tasks = client.get(f"/v2/images/{image['id']}/tasks").json()["tasks"]
        if tasks and tasks[0]["status"] in ("success", "failure"):
            return image["id"], tasks[0]
        time.sleep(0.1)
    raise AssertionError("the import did not finish")


def test_only_admins_list_tasks(member, admin):
    resp = member.get("/v2/tasks")
    assert resp.status_code == 403, resp.text
    assert member.get(f"/v2/tasks/{uuid.uuid4()}").status_code == 403
    body = admin.get("/v2/tasks").json()
    assert set(body) >= {"tasks", "first", "schema"}
    assert body["first"] == "/v2/tasks" and body["schema"] == "/v2/schemas/tasks"


def test_import_tasks_listed_filtered_paged_and_shown(member, admin):
    made = [_import(member, os.urandom(70000 + i)) for i in range(3)]
    ids = {task["id"] for _image, task in made}
    listed = admin.get("/v2/tasks", params={"limit": 1000}).json()["tasks"]
    stubs = {t["id"]: t for t in listed if t["id"] in ids}
    assert set(stubs) == ids
    stub = next(iter(stubs.values()))
    assert stub["type"] == "api_image_import" and stub["status"] == "success" and stub["owner"] == "project-a"
    assert stub["self"] == f"/v2/tasks/{stub['id']}" and stub["schema"] == "/v2/schemas/task"
    assert "input" not in stub and "result" not in stub          # a listing shows stubs, as Glance's
    # filters
    assert ids <= {t["id"] for t in admin.get("/v2/tasks", params={"status": "success", "limit": 1000})
                   .json()["tasks"]}
    assert not ids & {t["id"] for t in admin.get("/v2/tasks", params={"status": "failure", "limit": 1000})
                      .json()["tasks"]}
    assert not ids & {t["id"] for t in admin.get("/v2/tasks", params={"type": "import"}).json()["tasks"]}
    assert ids <= {t["id"] for t in admin.get("/v2/tasks", params={"type": "api_image_import", "limit": 1000})
                   .json()["tasks"]}
    # paging: newest first by default, next links until the end, each task once
    seen, url, params = [], "/v2/tasks", {"limit": 1, "sort_dir": "asc", "sort_key": "created_at"}
    for _ in range(1000):
        page = admin.get(url, params=params).json()
        assert len(page["tasks"]) <= 1 and page["first"] == "/v2/tasks?limit=1&sort_dir=asc&sort_key=created_at"
        seen += [t["id"] for t in page["tasks"]]
        if "next" not in page:
            break
        url, params = page["next"], None
    assert len(seen) == len(set(seen)) and ids <= set(seen)
    assert [i for i in seen if i in ids] == [task["id"] for _image, task in made]      # oldest first
    newest = admin.get("/v2/tasks", params={"limit": 3}).json()["tasks"]
    assert [t["id"] for t in newest] == [task["id"] for _image, task in made][::-1]
    # one task in full
    image_id, task = made[0]
    full = admin.get(f"/v2/tasks/{task['id']}").json()
    assert full["image_id"] == image_id and full["input"] and full["type"] == "api_image_import"
    assert {"result", "message", "request_id", "user_id", "expires_at"} <= set(full)


def test_bad_task_queries(admin):
    for params in ({"status": "bogus"}, {"type": "bogus"}, {"sort_key": "bogus"}, {"sort_dir": "up"},
                   {"limit": "x"}, {"limit": "-1"}, {"marker": "not-a-uuid"}, {"marker": str(uuid.uuid4())}):
        resp = admin.get("/v2/tasks", params=params)
        assert resp.status_code == 400, (params, resp.text)
        assert resp.json()["error"]["message"]
    assert admin.get(f"/v2/tasks/{uuid.uuid4()}").status_code == 404
    assert admin.get("/v2/tasks/not-a-uuid").status_code == 404


def test_task_schemas(member):
    assert member.get("/v2/schemas/task").json()["name"] == "task"
    assert member.get("/v2/schemas/tasks").json()["name"] == "tasks"
