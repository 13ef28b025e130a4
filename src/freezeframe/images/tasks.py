"""Glance's tasks API (``GET /v2/tasks``, ``GET /v2/tasks/{id}``): the image service's import
tasks — an ``api_image_import`` task for every glance-direct import, the ones
``/v2/images/{id}/tasks`` shows — listed with Glance's filters, sorting and paging.
Administrators only (Glance's ``tasks_api_access``). Freezeframe creates no task of the
deprecated ``import`` type (``POST /v2/tasks``): that route is not served."""

from __future__ import annotations

from typing import Any, Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from freezeframe.common import errors
from freezeframe.common.context import RequestContext
from freezeframe.common.policy import Policy
from freezeframe.common.strict import is_uuid, parse_uint, shown, text_problem
from freezeframe.common.timeutil import isotime
from freezeframe.db.session import Database
from freezeframe.images.model import ImageTask
from freezeframe.images.views import task_view

STATUSES = ("pending", "processing", "success", "failure")
TYPES = ("import", "api_image_import", "location_import")
SORT_KEYS = ("created_at", "updated_at", "id", "type", "status", "owner")


def task_stub(task: ImageTask) -> dict[str, Any]:
    """A task as a listing shows it (Glance's stub: no input, result or message)."""
    return {"id": task.id, "type": task.type, "status": task.status, "owner": task.owner,
            "created_at": isotime(task.created_at), "updated_at": isotime(task.updated_at),
            "self": f"/v2/tasks/{task.id}", "schema": "/v2/schemas/task", "expires_at": None}


class TaskService:
    def __init__(self, db: Database, policy: Policy) -> None:
        self.db = db
        self.policy = policy

    def _access(self, ctx: RequestContext, rule: str) -> None:
        self.policy.authorize(ctx, "tasks_api_access")
        self.policy.authorize(ctx, rule)

    async def list(self, ctx: RequestContext, params: Sequence[tuple[str, str]], default_limit: int,
                   max_limit: int) -> tuple[list[dict[str, Any]], str | None]:
        """A page of tasks, and the marker of the next page (None: the last)."""
        self._access(ctx, "get_tasks")
        single = dict(params)
        for key, value in single.items():
            if text_problem(key) is not None or text_problem(value) is not None:
                raise errors.Invalid(f"Invalid query parameter {shown(key)}")
        status, kind = single.get("status"), single.get("type")
        if status and status not in STATUSES:
            raise errors.Invalid(f"Invalid status value: {shown(status)}")
        if kind and kind not in TYPES:
            raise errors.Invalid(f"Invalid type value: {shown(kind)}")
        sort_key, sort_dir = single.get("sort_key", "created_at"), single.get("sort_dir", "desc")
        if sort_key not in SORT_KEYS:
            raise errors.Invalid(f"Sort key supplied was not valid: {shown(sort_key)}; use one of "
                                 f"{', '.join(SORT_KEYS)}")
        if sort_dir not in ("asc", "desc"):
            raise errors.Invalid(f"Invalid sort direction: {shown(sort_dir)}")
        marker = single.get("marker")
        if marker is not None and not is_uuid(marker):
            raise errors.Invalid("Invalid marker format")
        limit = min(parse_uint("limit", single["limit"]), max_limit) if "limit" in single else default_limit

        def find(session: Session) -> tuple[list[dict[str, Any]], str | None]:
            column = getattr(ImageTask, sort_key)
            if sort_key == "owner":         # a task of an image with no owner: sorted as ""
                column = func.coalesce(column, "")
            desc = sort_dir == "desc"
            stmt = select(ImageTask).order_by(column.desc() if desc else column.asc(),
                                              ImageTask.id.desc() if desc else ImageTask.id.asc())
            if status:
                stmt = stmt.where(ImageTask.status == status)
            if kind:
                stmt = stmt.where(ImageTask.type == kind)
            if not ctx.is_admin:      # only where an operator opened the API to others
                stmt = stmt.where(ImageTask.owner == ctx.project_id)
            if marker is not None:
                after = session.get(ImageTask, marker)
                if after is None:
                    raise errors.Invalid(f"No task with ID {marker} (the marker)")
                value = getattr(after, sort_key) if sort_key != "owner" else (after.owner or "")
                beyond = (column < value) if desc else (column > value)
                tie = (ImageTask.id < after.id) if desc else (ImageTask.id > after.id)
                stmt = stmt.where(beyond | ((column == value) & tie))
            page = list(session.scalars(stmt.limit(limit)))
            more = bool(page) and len(page) == limit
            return [task_stub(t) for t in page], (page[-1].id if more else None)

        return await self.db.run(find)

    async def show(self, ctx: RequestContext, task_id: str) -> dict[str, Any]:
        self._access(ctx, "get_task")

        def find(session: Session) -> dict[str, Any]:
            task = session.get(ImageTask, task_id) if is_uuid(task_id) else None
            if task is None or (not ctx.is_admin and task.owner != ctx.project_id):
                raise errors.NotFound(f"Could not find task {task_id if is_uuid(task_id) else shown(task_id, 70)}")
            return task_view(task)

        return await self.db.run(find)
