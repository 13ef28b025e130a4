"""Authentication: X-Auth-Token checked against the tokens file and the token validators (the
identity service's own tokens, or an existing Keystone's), or an explicit noauth mode.

The tokens file is a dictionary lookup. A validator answers from its cache when it can
(``cached_actor``, no I/O) and otherwise off the event loop (``actor``, awaited): the
identity service reads its database, the Keystone validator asks Keystone.

A service acting for a user (OpenStack's service-token pattern) sends its own token in
``X-Service-Token`` and the user's identity beside it: the user's token in ``X-Auth-Token``, or
— for work done long after the user's request, which never keeps a token — the recorded
``X-User-Id``, ``X-Project-Id`` and ``X-Roles``. Those identity headers are honoured only with a
valid service token; the request then has the user's rights, plus ``service_roles``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

from freezeframe.common import errors
from freezeframe.common.context import Actor, RequestContext, expand_roles

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Identity:
    user_id: str
    project_id: str | None
    roles: frozenset[str]


class TokenValidator(Protocol):
    """Tokens the tokens file does not hold: identity.tokens.TokenService, identity.keystone."""

    def cached_actor(self, token: str) -> Actor | None: ...

    async def actor(self, token: str) -> Actor | None: ...


def load_tokens(path: Path) -> dict[str, Identity]:
    """Read ``{"<token>": {"user_id", "project_id", "roles"}}``; a clear error if malformed."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise errors.Invalid(f"tokens file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise errors.Invalid(f"tokens file {path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise errors.Invalid(f"tokens file {path} must hold a JSON object mapping tokens to identities")
    tokens = {}
    for token, ident in raw.items():
        if not isinstance(ident, dict) or not isinstance(ident.get("user_id"), str) \
                or not isinstance(ident.get("project_id"), str) \
                or not isinstance(ident.get("roles", []), list):
            raise errors.Invalid(f"tokens file {path}: entry for token {token[:4]}... needs user_id, "
                                 "project_id (strings) and roles (a list)")
        tokens[token] = Identity(ident["user_id"], ident["project_id"], frozenset(ident.get("roles", [])))
    return tokens


def write_default_tokens(path: Path) -> dict[str, Any]:
    """First start without a tokens file: make one with an admin, a member and a service token."""
    data = {
        secrets.token_urlsafe(24): {"user_id": "admin", "project_id": "admin", "roles": ["admin", "member", "reader"]},
        secrets.token_urlsafe(24): {"user_id": "demo", "project_id": "demo", "roles": ["member", "reader"]},
        # the services' own credential (role "service"): sent beside a user's identity when one
        # service acts for that user; it adds no rights over the user's resources
        secrets.token_urlsafe(24): {"user_id": "freezeframe", "project_id": "service",
                                    "roles": ["service"]},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    LOG.warning("created tokens file %s with an admin, a member and a service token", path)
    return data


def service_token(tokens: dict[str, Identity]) -> str | None:
    return next((t for t, ident in tokens.items() if "service" in ident.roles), None)


_IDENT = re.compile(r"^[A-Za-z0-9_.@:+-]{1,255}$")


def acting_headers(actor: Actor) -> dict[str, str]:
    """The identity headers a service sends (beside X-Service-Token) to act for ``actor``."""
    return {"X-User-Id": actor.user_id, "X-Project-Id": actor.project_id or "",
            "X-Roles": ",".join(sorted(actor.roles))}


def _identity_from_headers(headers: dict[str, str]) -> tuple[str, str, frozenset[str]]:
    user, project = headers.get("x-user-id", ""), headers.get("x-project-id", "")
    roles = frozenset(r.strip() for r in headers.get("x-roles", "").split(",") if r.strip())
    if not _IDENT.match(user) or not _IDENT.match(project) or not all(_IDENT.match(r) for r in roles):
        raise errors.Invalid("A service acting for a user must send X-User-Id, X-Project-Id and X-Roles "
                             "(letters, digits and _.@:+- only)")
    return user, project, roles


class Authenticator:
    def __init__(self, mode: str, tokens: dict[str, Identity] | None = None,
                 validators: Sequence[TokenValidator] = ()) -> None:
        self.mode = mode
        self.tokens = tokens or {}
        self.validators = list(validators)

    async def authenticate(self, token: str | None, request_id: str, headers: dict[str, str]) -> RequestContext:
        if self.mode == "noauth":
            # Development only: X-Project-Id/X-User-Id/X-Roles say who calls (default: an admin),
            # X-Service-Roles what service credential comes with it.
            project = headers.get("x-project-id") or "admin"
            roles = headers.get("x-roles")
            role_set = frozenset(r.strip() for r in roles.split(",")) if roles else frozenset({"admin", "member"})
            service = frozenset(r.strip() for r in headers.get("x-service-roles", "").split(",") if r.strip())
            return RequestContext(user_id=headers.get("x-user-id") or "noauth", project_id=project,
                                  roles=expand_roles(role_set), request_id=request_id, service_roles=service)
        service_token = headers.get("x-service-token")
        if service_token:
            service = await self._lookup(service_token)
            if service is None or "service" not in service.roles:
                raise errors.NotAuthenticated("The token in X-Service-Token is not a valid service token")
            if token:
                user = await self._identity(token)
                user_id, project_id, roles = user.user_id, user.project_id, user.roles
            else:
                user_id, project_id, roles = _identity_from_headers(headers)
            return RequestContext(user_id=user_id, project_id=project_id, roles=expand_roles(roles),
                                  request_id=request_id, service_roles=service.roles)
        if not token:
            raise errors.NotAuthenticated("Authentication required: send a token in the X-Auth-Token header")
        ident = await self._identity(token)
        return RequestContext(user_id=ident.user_id, project_id=ident.project_id, roles=expand_roles(ident.roles),
                              request_id=request_id)

    async def _identity(self, token: str) -> Identity:
        ident = await self._lookup(token)
        if ident is None:
            raise errors.NotAuthenticated("The token in X-Auth-Token is not valid")
        return ident

    async def _lookup(self, token: str) -> Identity | None:
        ident = self.tokens.get(token)
        if ident is not None:
            return ident
        for validator in self.validators:
            actor = validator.cached_actor(token) or await validator.actor(token)
            if actor is not None:
                return Identity(actor.user_id, actor.project_id, actor.roles)
        return None
