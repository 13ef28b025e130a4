"""The identity v3 API (a Keystone subset), mounted at ``/identity``.

What openstacksdk, keystoneauth and python-openstackclient use: the version documents,
``POST /v3/auth/tokens`` (password, application credential, token), validating and revoking a
token (``GET``/``HEAD``/``DELETE /v3/auth/tokens`` with ``X-Subject-Token``), the caller's
projects and the service catalog. Only ``POST /v3/auth/tokens`` and the version documents are
public; everything else is authenticated at the edge like every other API (any valid token).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router

from freezeframe.common import errors
from freezeframe.common.context import RequestContext
from freezeframe.common.web.request import ctx_of, json_body
from freezeframe.identity.catalog import Catalog
from freezeframe.identity.config import DOMAIN, IdentityFile, Project
from freezeframe.identity.tokens import Token, TokenService

# The public paths (no token): the version documents and issuing a token.
PUBLIC = ("", "/v3")
ISSUE_PATH = "/v3/auth/tokens"
MEDIA_TYPE = "application/vnd.openstack.identity-v3+json"
_ROLE_NS = uuid.UUID("0b7f7f3e-6a55-4a1c-9d0e-3c8f5b9d2e71")


def keystone_time(moment: dt.datetime) -> str:
    """Keystone's format: ``2026-01-01T00:00:00.000000Z`` (naive UTC in)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def role_id(name: str) -> str:
    return uuid.uuid5(_ROLE_NS, name).hex


def base_url(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


class IdentityAPI:
    def __init__(self, tokens: TokenService, identity: IdentityFile, catalog: Catalog) -> None:
        self.tokens = tokens
        self.identity = identity
        self.catalog = catalog

    def router(self) -> Router:
        return Router(routes=[
            Route("/", self.versions, methods=["GET"]),
            Route("/v3", self.version, methods=["GET"]),
            Route("/v3/", self.version, methods=["GET"]),
            Route(ISSUE_PATH, self.issue, methods=["POST"]),
            Route(ISSUE_PATH, self.validate, methods=["GET", "HEAD"]),
            Route(ISSUE_PATH, self.revoke, methods=["DELETE"]),
            Route("/v3/auth/projects", self.my_projects, methods=["GET"]),
            Route("/v3/users/{user_id}/projects", self.user_projects, methods=["GET"]),
            Route("/v3/projects", self.list_projects, methods=["GET"]),
            Route("/v3/projects/{project_id}", self.show_project, methods=["GET"]),
            Route("/v3/auth/catalog", self.my_catalog, methods=["GET"]),
        ])

    # -- version documents -----------------------------------------------------------------------

    def _doc(self, request: Request) -> dict[str, Any]:
        return {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
                "links": [{"rel": "self", "href": f"{base_url(request)}/identity/v3/"}],
                "media-types": [{"base": "application/json", "type": MEDIA_TYPE}]}

    async def versions(self, request: Request) -> Response:
        return JSONResponse({"versions": {"values": [self._doc(request)]}}, status_code=300)

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": self._doc(request)})

    # -- tokens ----------------------------------------------------------------------------------

    def _body(self, request: Request, token: Token) -> dict[str, Any]:
        body: dict[str, Any] = {
            "methods": list(token.methods), "audit_ids": [token.audit_id],
            "issued_at": keystone_time(token.issued_at), "expires_at": keystone_time(token.expires_at),
            "is_domain": False,
            "user": {"id": token.user.id, "name": token.user.name, "domain": DOMAIN, "password_expires_at": None},
            "project": _project_ref(token.project),
            "roles": [{"id": role_id(r), "name": r} for r in sorted(token.roles)],
        }
        if token.app_credential is not None:
            body["application_credential"] = {"id": token.app_credential.id, "name": token.app_credential.name,
                                              "restricted": True}
        if "nocatalog" not in request.query_params:
            body["catalog"] = self.catalog.entries(base_url(request), token.project.id)
        return body

    async def issue(self, request: Request) -> Response:
        secret, token = await self.tokens.issue(await json_body(request))
        return JSONResponse({"token": self._body(request, token)}, status_code=201,
                            headers={"X-Subject-Token": secret})

    async def _subject(self, request: Request) -> tuple[str, Token]:
        """The token named by X-Subject-Token, which the caller may look at: its own, or any for
        an admin or a service (Keystone's ``service_admin_or_token_subject``)."""
        subject = request.headers.get("x-subject-token", "")
        if not subject:
            raise errors.Invalid("Send the token to check in the X-Subject-Token header")
        token = await self.tokens.lookup(subject)
        ctx = ctx_of(request)
        if token is None:
            raise errors.NotFound("Could not find token")
        if not (ctx.is_admin or ctx.is_service or ctx.user_id == token.user.id):
            raise errors.Forbidden("You are not authorized to look at this token")
        return subject, token

    async def validate(self, request: Request) -> Response:
        subject, token = await self._subject(request)
        if request.method == "HEAD":
            return Response(status_code=200, headers={"X-Subject-Token": subject})
        return JSONResponse({"token": self._body(request, token)}, headers={"X-Subject-Token": subject})

    async def revoke(self, request: Request) -> Response:
        subject, _token = await self._subject(request)
        if not await self.tokens.revoke(subject):
            raise errors.NotFound("Could not find token")
        return Response(status_code=204)

    # -- projects and catalog --------------------------------------------------------------------

    def _visible(self, ctx: RequestContext) -> list[Project]:
        """Every project for an admin, else the caller's own."""
        directory = self.identity.current()
        if ctx.is_admin:
            return list(directory.projects.values())
        user = directory.users.get(ctx.user_id)
        return directory.projects_of(user) if user is not None else []

    def _projects(self, request: Request, user_id: str) -> Response:
        directory = self.identity.current()
        user = directory.users.get(user_id)
        projects = directory.projects_of(user) if user is not None else []
        return self._project_list(request, projects)

    @staticmethod
    def _project_list(request: Request, projects: list[Project]) -> Response:
        return JSONResponse({"projects": [_project_view(request, p) for p in projects],
                             "links": {"self": str(request.url), "next": None, "previous": None}})

    async def list_projects(self, request: Request) -> Response:
        projects = self._visible(ctx_of(request))
        name = request.query_params.get("name")
        return self._project_list(request, [p for p in projects if name is None or p.name == name])

    async def show_project(self, request: Request) -> Response:
        project_id = request.path_params["project_id"]
        found = next((p for p in self._visible(ctx_of(request)) if p.id == project_id), None)
        if found is None:
            raise errors.NotFound(f"Could not find project: {project_id}.")
        return JSONResponse({"project": _project_view(request, found)})

    async def my_projects(self, request: Request) -> Response:
        return self._projects(request, ctx_of(request).user_id)

    async def user_projects(self, request: Request) -> Response:
        ctx, user_id = ctx_of(request), request.path_params["user_id"]
        if user_id != ctx.user_id and not ctx.is_admin:
            raise errors.Forbidden("You may list only your own projects")
        return self._projects(request, user_id)

    async def my_catalog(self, request: Request) -> Response:
        return JSONResponse({"catalog": self.catalog.entries(base_url(request), ctx_of(request).project_id),
                             "links": {"self": str(request.url), "next": None, "previous": None}})


def _project_ref(project: Project) -> dict[str, Any]:
    return {"id": project.id, "name": project.name, "domain": DOMAIN}


def _project_view(request: Request, project: Project) -> dict[str, Any]:
    return {"id": project.id, "name": project.name, "domain_id": DOMAIN["id"], "enabled": project.enabled,
            "is_domain": False, "parent_id": DOMAIN["id"], "description": project.description, "tags": [],
            "links": {"self": f"{base_url(request)}/identity/v3/projects/{project.id}"}}
