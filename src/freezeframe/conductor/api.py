"""/v1/workflows: every long operation's state, progress, last state change, owner and liveness."""

from __future__ import annotations

import asyncio

from typing import Any, Callable

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router

from freezeframe.common import errors
from freezeframe.common.context import RequestContext
from freezeframe.common.policy import Policy
from freezeframe.common.strict import is_uuid, parse_uint
from freezeframe.common.timeutil import isotime, utcnow
from freezeframe.common.web.mount import Mounted
from freezeframe.common.web.request import ctx_of
from freezeframe.conductor.model import Workflow, WorkflowEvent
from freezeframe.conductor.states import TERMINAL, WorkflowState, parse
from freezeframe.db.session import Database


def workflow_view(wf: Workflow, owner_alive: bool, stall_timeout: float) -> dict[str, Any]:
    terminal = WorkflowState(parse(wf.state)[0]) in TERMINAL
    quiet = (utcnow() - wf.last_state_change_at).total_seconds()
    return {
        "id": wf.id, "kind": wf.kind, "state": wf.state, "progress": wf.progress,
        "last_state_change_at": isotime(wf.last_state_change_at),
        "owner": wf.owner, "owner_alive": owner_alive,
        # stalled: unfinished, and its owner is gone or nothing changed for stall_timeout
        "stalled": not terminal and ((wf.owner is not None and not owner_alive) or quiet > stall_timeout),
        "resource_type": wf.resource_type, "resource_id": wf.resource_id, "host": wf.host, "image_id": wf.image_id,
        "project_id": wf.project_id, "user_id": wf.user_id, "request_id": wf.request_id,
        "failure_reason": wf.failure_reason, "last_good_state": wf.last_good_state,
        "cancel_requested": wf.cancel_requested,
        "created_at": isotime(wf.created_at), "updated_at": isotime(wf.updated_at),
    }


class WorkflowAPI:
    def __init__(self, db: Database, owner_alive: Callable[[str | None], bool], stall_timeout: float = 300.0, *,
                 policy: Policy) -> None:
        self.db = db
        self.owner_alive = owner_alive
        self.stall_timeout = stall_timeout
        self.policy = policy

    def mounted(self) -> Mounted:
        """The workflow API at /v1 (every call with a token)."""
        return Mounted("workflows", "/v1", self.router())

    def router(self) -> Router:
        return Router(routes=[
            Route("/workflows", self.list, methods=["GET"]),
            Route("/workflows/{workflow_id}", self.show, methods=["GET"]),
            Route("/workflows/{workflow_id}", self.cancel, methods=["DELETE"]),
        ])

    def _get(self, session, ctx: RequestContext, workflow_id: str, action: str) -> Workflow:
        wf = session.get(Workflow, workflow_id) if is_uuid(workflow_id) else None
        if wf is None or (not ctx.is_admin and wf.project_id != ctx.project_id):
            raise errors.NotFound(f"No workflow {workflow_id}")
        self.policy.authorize(ctx, action, {"project_id": wf.project_id})
        return wf

    async def list(self, request: Request) -> Response:
        ctx = ctx_of(request)
        self.policy.authorize(ctx, "freezeframe:workflow:list")
        params = request.query_params

        limit = parse_uint("limit", params.get("limit", "100"))
        state = params.get("state")
        if state is not None:
            try:
                parse(state)
            except ValueError:
                raise errors.Invalid(f"Unknown workflow state {state!r}") from None

        def find(session) -> list[Workflow]:
            stmt = select(Workflow).order_by(Workflow.created_at.desc()).limit(min(limit, 1000))
            if not ctx.is_admin:
                stmt = stmt.where(Workflow.project_id == ctx.project_id)
            for key in ("resource_id", "image_id", "state", "kind"):
                if key in params:
                    stmt = stmt.where(getattr(Workflow, key) == params[key])
            return list(session.scalars(stmt))
        rows = await self.db.run(find)
        alive = await self._liveness({w.owner for w in rows})
        return JSONResponse({"workflows": [workflow_view(w, alive[w.owner], self.stall_timeout) for w in rows]})

    async def _liveness(self, owners: set[str | None]) -> dict[str | None, bool]:
        """Each distinct owner's liveness, asked off the event loop (the coordination backend
        may be a network round trip) and once per owner, not once per row."""
        return await asyncio.to_thread(lambda: {owner: self.owner_alive(owner) for owner in owners})

    async def show(self, request: Request) -> Response:
        ctx, workflow_id = ctx_of(request), request.path_params["workflow_id"]

        def find(session) -> tuple[Workflow, list[WorkflowEvent]]:
            wf = self._get(session, ctx, workflow_id, "freezeframe:workflow:show")
            events = list(session.scalars(select(WorkflowEvent).where(WorkflowEvent.workflow_id == workflow_id)
                                          .order_by(WorkflowEvent.id)))
            return wf, events
        wf, events = await self.db.run(find)
        body = workflow_view(wf, (await self._liveness({wf.owner}))[wf.owner], self.stall_timeout)
        body["history"] = [{"state": e.state, "progress": e.progress, "at": isotime(e.at), "detail": e.detail}
                           for e in events]
        return JSONResponse({"workflow": body})

    async def cancel(self, request: Request) -> Response:
        """Ask the running flow to stop; it reverts (guest thawed, local snapshot removed, image
        killed and deleted) and ends CANCELLED."""
        ctx, workflow_id = ctx_of(request), request.path_params["workflow_id"]

        def cancel(session) -> None:
            wf = self._get(session, ctx, workflow_id, "freezeframe:workflow:cancel")
            if WorkflowState(parse(wf.state)[0]) in TERMINAL:
                raise errors.Conflict(f"Workflow {workflow_id} already ended ({wf.state})")
            wf.cancel_requested, wf.updated_at = True, utcnow()
        await self.db.run(cancel)
        return Response(status_code=202)
