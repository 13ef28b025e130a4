"""Issuing, validating and revoking identity tokens.

A token is random (``fft_`` + 256 bits); the database keeps its sha256 with who it is for and
when it expires, so tokens survive a restart and are valid on every API process sharing the
database. What a token may do is worked out again at each validation from the identity file: a
user disabled, a role taken away or an application credential removed takes effect at once
(within ``cache_ttl`` on processes that validated it recently). Revocation deletes the row.

Password and secret checks (scrypt, tens of milliseconds of CPU each) run on a small pool of
their own that refuses work when flooded (503), never on the event loop or the database's pool.
Every refusal of credentials is the same 401 after the same work, whether or not the user exists.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping

from sqlalchemy import delete

from freezeframe.common import errors
from freezeframe.common.context import Actor, expand_roles
from freezeframe.common.pools import BoundedPool
from freezeframe.common.timeutil import utcnow
from freezeframe.db.session import Database
from freezeframe.identity.config import AppCredential, Directory, IdentityFile, Project, User
from freezeframe.identity.model import IdentityToken
from freezeframe.identity.passwords import check_nothing, check_secret

PREFIX = "fft_"
_MAX_TOKEN = 128
CACHE_SIZE = 10000
PURGE_INTERVAL = 300.0
REFUSED = "The request you have made requires authentication."


@dataclass(frozen=True)
class Token:
    user: User
    project: Project
    roles: frozenset[str]
    methods: tuple[str, ...]
    audit_id: str
    issued_at: dt.datetime        # naive UTC
    expires_at: dt.datetime
    app_credential: AppCredential | None = None

    @property
    def actor(self) -> Actor:
        return Actor(self.user.id, self.project.id, self.roles)


def token_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _refused() -> errors.NotAuthenticated:
    return errors.NotAuthenticated(REFUSED)


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise errors.Invalid(f"Invalid input for field '{what}': expected an object")
    return value


class TokenService:
    def __init__(self, db: Database, identity: IdentityFile, *, expiration: float, cache_ttl: float) -> None:
        self.db = db
        self.identity = identity
        self.expiration = dt.timedelta(seconds=expiration)
        self.cache_ttl = cache_ttl
        self._hashing = BoundedPool("identity-hash", workers=2, queue=32, serves_requests=False)
        self._cache: collections.OrderedDict[str, tuple[Token, float]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._next_purge = 0.0

    def close(self) -> None:
        self._hashing.shutdown(wait=False)

    # -- issuing ---------------------------------------------------------------------------------

    async def issue(self, body: Any) -> tuple[str, Token]:
        """POST /v3/auth/tokens: the new token and what it stands for."""
        auth = _mapping(_mapping(body, "body").get("auth"), "auth")
        identity = _mapping(auth.get("identity"), "auth.identity")
        methods = identity.get("methods")
        if not isinstance(methods, list) or len(methods) != 1 or not isinstance(methods[0], str):
            raise errors.Invalid("auth.identity.methods must name one method: password, application_credential "
                                 "or token")
        method = methods[0]
        scope = auth.get("scope")
        directory = self.identity.current()
        app_credential = None
        if method == "password":
            user = await self._hashing.run(self._check_password, directory,
                                           _mapping(_mapping(identity.get("password"), "password").get("user"),
                                                    "password.user"))
            project = self._scope(directory, user, scope)
        elif method == "application_credential":
            app_credential = await self._hashing.run(self._check_app_credential, directory,
                                                     _mapping(identity.get("application_credential"),
                                                              "application_credential"))
            user = directory.users[app_credential.user_id]
            project = directory.projects.get(app_credential.project_id)
            if project is None:
                raise _refused()
        elif method == "token":
            ref = _mapping(identity.get("token"), "token")
            existing = await self.lookup(str(ref.get("id", "")))
            if existing is None:
                raise _refused()
            user, app_credential = existing.user, existing.app_credential
            project = existing.project if app_credential or not scope else self._scope(directory, user, scope)
        else:
            raise errors.NotAuthenticated(f"Authentication method {method!r} is not supported here "
                                          "(password, application_credential, token)")
        roles = self._roles(directory, user, project, app_credential)
        if not roles:
            raise errors.NotAuthenticated(f"User {user.id} has no access to project {project.id}")
        now = utcnow()
        token = Token(user, project, roles, (method,), secrets.token_urlsafe(16)[:22], now,
                      now + self.expiration, app_credential)
        secret = PREFIX + secrets.token_urlsafe(32)
        purge = time.monotonic() >= self._next_purge
        if purge:
            self._next_purge = time.monotonic() + PURGE_INTERVAL

        def store(session) -> None:
            if purge:
                session.execute(delete(IdentityToken).where(IdentityToken.expires_at < now))
            session.add(IdentityToken(id=token_key(secret), user_id=user.id, project_id=project.id,
                                      methods=method, audit_id=token.audit_id,
                                      app_credential_id=app_credential.id if app_credential else None,
                                      issued_at=now, expires_at=token.expires_at))
        await self.db.run(store)
        self._remember(token_key(secret), token)
        return secret, token

    @staticmethod
    def _check_password(directory: Directory, ref: Mapping[str, Any]) -> User:
        password = ref.get("password")
        if not isinstance(password, str):
            raise errors.Invalid("Invalid input for field 'password.user.password': expected a string")
        user = directory.user(ref)
        if user is None or user.password_hash is None:
            check_nothing(password)
            raise _refused()
        if not check_secret(password, user.password_hash) or not user.enabled:
            raise _refused()
        return user

    @staticmethod
    def _check_app_credential(directory: Directory, ref: Mapping[str, Any]) -> AppCredential:
        secret = ref.get("secret")
        if not isinstance(secret, str):
            raise errors.Invalid("Invalid input for field 'application_credential.secret': expected a string")
        credential = directory.app_credential(ref)
        if credential is None:
            check_nothing(secret)
            raise _refused()
        if not check_secret(secret, credential.secret_hash) or credential.expired(utcnow()):
            raise _refused()
        user = directory.users.get(credential.user_id)
        if user is None or not user.enabled:
            raise _refused()
        return credential

    @staticmethod
    def _scope(directory: Directory, user: User, scope: Any) -> Project:
        if scope is None or scope == "unscoped":
            if user.default_project is None:
                raise errors.NotAuthenticated("Scope the request to a project (this service issues project-scoped "
                                              "tokens only, and the user has no default project)")
            ref: Mapping[str, Any] = {"id": user.default_project}
        else:
            scope = _mapping(scope, "auth.scope")
            if "project" not in scope:
                raise errors.NotAuthenticated("Only project scope is supported (no system or domain scope)")
            ref = _mapping(scope["project"], "auth.scope.project")
        project = directory.project(ref)
        if project is None or not project.enabled:
            raise errors.NotAuthenticated(f"User {user.id} has no access to project "
                                          f"{ref.get('id') or ref.get('name')}")
        return project

    @staticmethod
    def _roles(directory: Directory, user: User, project: Project,
               app_credential: AppCredential | None) -> frozenset[str]:
        roles = expand_roles(directory.roles(user, project))
        if app_credential is not None:
            # a credential's roles, as long as its user still has every one of them (Keystone's rule)
            wanted = expand_roles(app_credential.roles)
            return wanted if wanted <= roles else frozenset()
        return roles

    # -- validating ------------------------------------------------------------------------------

    def cached(self, token: str) -> Token | None:
        """A token validated by this process within ``cache_ttl`` (no I/O)."""
        key = token_key(token)
        with self._lock:
            hit = self._cache.get(key)
        if hit is None:
            return None
        found, until = hit
        if time.monotonic() >= until or utcnow() >= found.expires_at:
            with self._lock:
                self._cache.pop(key, None)
            return None
        return found

    def _remember(self, key: str, token: Token) -> None:
        if self.cache_ttl <= 0:
            return
        with self._lock:
            self._cache[key] = (token, time.monotonic() + self.cache_ttl)
            self._cache.move_to_end(key)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)

    async def lookup(self, token: str) -> Token | None:
        """The valid token's meaning, or None (unknown, expired, revoked, its user or roles gone)."""
        if not token.startswith(PREFIX) or len(token) > _MAX_TOKEN:
            return None
        hit = self.cached(token)
        if hit is not None:
            return hit
        key = token_key(token)

        def read(session) -> tuple | None:
            row = session.get(IdentityToken, key)
            if row is None:
                return None
            return (row.user_id, row.project_id, row.methods, row.audit_id, row.app_credential_id,
                    row.issued_at, row.expires_at)
        row = await self.db.run(read)
        if row is None:
            return None
        found = self._resolve(self.identity.current(), *row)
        if found is not None:
            self._remember(key, found)
        return found

    def _resolve(self, directory: Directory, user_id: str, project_id: str, methods: str, audit_id: str,
                 app_credential_id: str | None, issued_at: dt.datetime, expires_at: dt.datetime) -> Token | None:
        if utcnow() >= expires_at:
            return None
        user, project = directory.users.get(user_id), directory.projects.get(project_id)
        if user is None or project is None or not user.enabled:
            return None
        credential = None
        if app_credential_id is not None:
            credential = directory.app_credentials.get(app_credential_id)
            if credential is None or credential.expired(utcnow()):
                return None
        roles = self._roles(directory, user, project, credential)
        if not roles:
            return None
        return Token(user, project, roles, tuple(methods.split(",")), audit_id, issued_at, expires_at, credential)

    # What the edge uses (http/auth.py), as for any other token validator.
    def cached_actor(self, token: str) -> Actor | None:
        found = self.cached(token) if token.startswith(PREFIX) else None
        return found.actor if found is not None else None

    async def actor(self, token: str) -> Actor | None:
        found = await self.lookup(token)
        return found.actor if found is not None else None

    async def revoke(self, token: str) -> bool:
        """DELETE /v3/auth/tokens: False if there was no such valid token."""
        if await self.lookup(token) is None:
            return False
        key = token_key(token)
        with self._lock:
            self._cache.pop(key, None)
        return await self.db.run(lambda s: s.execute(delete(IdentityToken).where(IdentityToken.id == key)).rowcount > 0)
