"""Authentication: a tokens file checked on X-Auth-Token, or an explicit noauth mode."""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freezeframe.common import errors
from freezeframe.common.context import RequestContext

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Identity:
    user_id: str
    project_id: str
    roles: frozenset[str]


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
        # the snapshot workflows act with this one (role "service")
        secrets.token_urlsafe(24): {"user_id": "freezeframe", "project_id": "service",
                                    "roles": ["service", "admin"]},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    LOG.warning("created tokens file %s with an admin, a member and a service token", path)
    return data


def service_token(tokens: dict[str, Identity]) -> str | None:
    return next((t for t, ident in tokens.items() if "service" in ident.roles), None)


class Authenticator:
    def __init__(self, mode: str, tokens: dict[str, Identity] | None = None) -> None:
        self.mode = mode
        self.tokens = tokens or {}

    def authenticate(self, token: str | None, request_id: str, headers: dict[str, str]) -> RequestContext:
        if self.mode == "noauth":
            # Development only: everyone is an admin; X-Project-Id picks a project to act as.
            project = headers.get("x-project-id") or "admin"
            roles = headers.get("x-roles")
            role_set = frozenset(r.strip() for r in roles.split(",")) if roles else frozenset({"admin", "member"})
            return RequestContext(user_id=headers.get("x-user-id") or "noauth", project_id=project,
                                  roles=role_set, request_id=request_id)
        if not token:
            raise errors.NotAuthenticated("Authentication required: send a token in the X-Auth-Token header")
        ident = self.tokens.get(token)
        if ident is None:
            raise errors.NotAuthenticated("The token in X-Auth-Token is not valid")
        return RequestContext(user_id=ident.user_id, project_id=ident.project_id, roles=ident.roles,
                              request_id=request_id)
