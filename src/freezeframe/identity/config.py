"""The operator's identity file: projects, users, role assignments, application credentials.

YAML (``<data_dir>/identity.yaml`` unless ``[identity] file`` says otherwise)::

    projects:
      - {id: demo, name: demo}
    users:
      - id: demo                       # any letters, digits and _.@:+- ; also the name by default
        name: demo
        password_hash: scrypt$16384$8$1$...   # `freezeframe identity hash` makes one
        default_project: demo
        roles: {demo: [member]}        # project (id or name) -> roles
    application_credentials:
      - id: 3f0c...                    # `freezeframe identity app-credential` makes one
        name: ci
        user: demo
        project: demo
        roles: [member]                # at most the user's roles in that project
        secret_hash: scrypt$...
        expires_at: 2027-01-01T00:00:00Z   # optional

Everything is in the one domain ``Default`` (id ``default``). Passwords and secrets are never
stored, only their hashes (``passwords.py``). The file is read again when it changes (checked at
most once a second); a malformed change is logged and the previous content kept.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from freezeframe.common import errors
from freezeframe.identity.passwords import hash_secret, valid_hash

LOG = logging.getLogger(__name__)

DOMAIN = {"id": "default", "name": "Default"}
_IDENT = re.compile(r"^[A-Za-z0-9_.@:+-]{1,64}$")
RELOAD_INTERVAL = 1.0


@dataclass(frozen=True)
class Project:
    id: str
    name: str
    enabled: bool = True
    description: str = ""


@dataclass(frozen=True)
class User:
    id: str
    name: str
    password_hash: str | None
    enabled: bool = True
    default_project: str | None = None
    roles: Mapping[str, frozenset[str]] = field(default_factory=dict)   # project id -> roles


@dataclass(frozen=True)
class AppCredential:
    id: str
    name: str
    user_id: str
    project_id: str
    roles: frozenset[str]
    secret_hash: str
    expires_at: dt.datetime | None = None
    description: str = ""

    def expired(self, now: dt.datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass(frozen=True)
class Directory:
    """One reading of the identity file."""
    projects: Mapping[str, Project] = field(default_factory=dict)
    users: Mapping[str, User] = field(default_factory=dict)
    app_credentials: Mapping[str, AppCredential] = field(default_factory=dict)

    def user(self, ref: Any) -> User | None:
        """A user by ``id``, or by ``name`` in the default domain."""
        if not isinstance(ref, Mapping) or not _in_default_domain(ref.get("domain")):
            return None
        if ref.get("id"):
            return self.users.get(str(ref["id"]))
        name = ref.get("name")
        return next((u for u in self.users.values() if u.name == name), None) if name else None

    def project(self, ref: Any) -> Project | None:
        if not isinstance(ref, Mapping) or not _in_default_domain(ref.get("domain")):
            return None
        if ref.get("id"):
            return self.projects.get(str(ref["id"]))
        name = ref.get("name")
        return next((p for p in self.projects.values() if p.name == name), None) if name else None

    def roles(self, user: User, project: Project) -> frozenset[str]:
        """The user's roles on the project (none if either is disabled)."""
        if not user.enabled or not project.enabled:
            return frozenset()
        return user.roles.get(project.id, frozenset())

    def projects_of(self, user: User) -> list[Project]:
        return [self.projects[pid] for pid, roles in user.roles.items()
                if roles and pid in self.projects and self.projects[pid].enabled]

    def app_credential(self, ref: Mapping[str, Any]) -> AppCredential | None:
        """By ``id``, or by ``name`` and its user (as keystoneauth sends them)."""
        if ref.get("id"):
            if not isinstance(ref["id"], str):
                return None
            return self.app_credentials.get(str(ref["id"]))
        user = self.user(ref.get("user"))
        if user is None:
            return None
        return next((a for a in self.app_credentials.values()
                     if a.name == ref.get("name") and a.user_id == user.id), None)


def _in_default_domain(domain: Any) -> bool:
    if not domain:
        return True
    if not isinstance(domain, Mapping):
        return False
    return domain.get("id", "default") == "default" and domain.get("name", "Default") in ("Default", "default")


# -- parsing ---------------------------------------------------------------------------------


def _ident(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _IDENT.match(value):
        raise errors.Invalid(f"{where}: {value!r} is not an id (1-64 letters, digits and _.@:+-)")
    return value


def _time(value: Any, where: str) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        moment = value
    else:
        try:
            moment = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise errors.Invalid(f"{where}: {value!r} is not an ISO 8601 time") from None
    # naive UTC, as every time in Freezeframe
    return moment if moment.tzinfo is None else moment.astimezone(dt.timezone.utc).replace(tzinfo=None)


def _list(doc: Mapping[str, Any], key: str, where: str) -> list[Mapping[str, Any]]:
    items = doc.get(key) or []
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        raise errors.Invalid(f"{where}: '{key}' must be a list of mappings")
    return items


def parse(doc: Any, where: str = "identity file") -> Directory:
    """Check and read a loaded identity file; ``errors.Invalid`` says what is wrong and where."""
    if doc is None:
        doc = {}
    if not isinstance(doc, Mapping):
        raise errors.Invalid(f"{where}: must be a mapping with projects, users, application_credentials")
    unknown = set(doc) - {"projects", "users", "application_credentials"}
    if unknown:
        raise errors.Invalid(f"{where}: unknown keys {sorted(unknown)}")
    projects: dict[str, Project] = {}
    for i, item in enumerate(_list(doc, "projects", where)):
        here = f"{where}: projects[{i}]"
        pid = _ident(item.get("id", item.get("name")), here + ".id")
        projects[pid] = Project(pid, str(item.get("name", pid)), bool(item.get("enabled", True)),
                                str(item.get("description", "")))
    by_name = {p.name: p.id for p in projects.values()}

    def project_id(ref: Any, here: str) -> str:
        if ref in projects:
            return ref
        if ref in by_name:
            return by_name[ref]
        raise errors.Invalid(f"{here}: no project {ref!r}")

    def role_set(value: Any, here: str) -> frozenset[str]:
        if not isinstance(value, list):
            raise errors.Invalid(f"{here}: roles must be a list")
        return frozenset(_ident(r, here) for r in value)

    users: dict[str, User] = {}
    for i, item in enumerate(_list(doc, "users", where)):
        here = f"{where}: users[{i}]"
        uid = _ident(item.get("id", item.get("name")), here + ".id")
        password_hash = item.get("password_hash")
        if "password" in item:
            raise errors.Invalid(f"{here}: plain 'password' is not accepted; store password_hash "
                                 "(`freezeframe identity hash` makes one)")
        if password_hash is not None and not (isinstance(password_hash, str) and valid_hash(password_hash)):
            raise errors.Invalid(f"{here}.password_hash: not a scrypt$... or pbkdf2_sha256$... hash")
        raw_roles = item.get("roles") or {}
        if not isinstance(raw_roles, Mapping):
            raise errors.Invalid(f"{here}.roles: must map projects to lists of roles")
        roles = {project_id(p, f"{here}.roles"): role_set(r, f"{here}.roles.{p}") for p, r in raw_roles.items()}
        default = item.get("default_project")
        users[uid] = User(uid, str(item.get("name", uid)), password_hash, bool(item.get("enabled", True)),
                          project_id(default, f"{here}.default_project") if default else None, roles)
    if len({u.name for u in users.values()}) != len(users):
        raise errors.Invalid(f"{where}: two users have the same name")

    creds: dict[str, AppCredential] = {}
    for i, item in enumerate(_list(doc, "application_credentials", where)):
        here = f"{where}: application_credentials[{i}]"
        cid = _ident(item.get("id"), here + ".id")
        user = users.get(item.get("user")) or next((u for u in users.values() if u.name == item.get("user")), None)
        if user is None:
            raise errors.Invalid(f"{here}.user: no user {item.get('user')!r}")
        pid = project_id(item.get("project"), here + ".project")
        secret_hash = item.get("secret_hash")
        if not isinstance(secret_hash, str) or not valid_hash(secret_hash):
            raise errors.Invalid(f"{here}.secret_hash: not a scrypt$... or pbkdf2_sha256$... hash")
        roles = role_set(item.get("roles") or sorted(user.roles.get(pid, ())), here + ".roles")
        creds[cid] = AppCredential(cid, str(item.get("name", cid)), user.id, pid, roles, secret_hash,
                                   _time(item.get("expires_at"), here + ".expires_at"),
                                   str(item.get("description", "")))
    return Directory(projects, users, creds)


def load(path: Path) -> Directory:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise errors.Invalid(f"identity file {path} does not exist") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise errors.Invalid(f"identity file {path} is not valid YAML: {exc}") from None
    return parse(doc, f"identity file {path}")


class IdentityFile:
    """The identity file, read again when it changes (``current()`` is cheap)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp = self._stat()
        self._directory = load(path)
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def current(self) -> Directory:
        now = time.monotonic()
        if now - self._checked < RELOAD_INTERVAL:
            return self._directory
        with self._lock:
            self._checked = now
            stamp = self._stat()
            if stamp is not None and stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._directory = load(self.path)
                    LOG.info("identity file %s read again", self.path)
                except errors.FreezeframeError as exc:
                    LOG.error("%s; keeping the previous content", exc.message)
        return self._directory


# -- the first start ---------------------------------------------------------------------------

HEADER = """\
# Freezeframe identity: projects, users (password hashes), role assignments (per project) and
# application credentials. Hashes only, never passwords: `freezeframe identity hash` makes one,
# `freezeframe identity app-credential` makes a credential. Read again when it changes.
"""

# The generated users: (id, project, roles, clouds.yaml cloud name)
DEFAULT_USERS = [("admin", "admin", ["admin"], "freezeframe"),
                 ("demo", "demo", ["member"], "freezeframe-demo"),
                 # the services' own user (role "service"), as in a devstack's service project
                 ("freezeframe", "service", ["service"], "freezeframe-service")]


def write_default(path: Path) -> dict[str, str]:
    """Create the identity file with an admin, a demo member and the service user, each with a
    random password; returns ``{user id: password}`` (the only time the passwords are known)."""
    passwords = {uid: secrets.token_urlsafe(18) for uid, *_ in DEFAULT_USERS}
    doc = {
        "projects": [{"id": p, "name": p} for p in ("admin", "demo", "service")],
        "users": [{"id": uid, "name": uid, "password_hash": hash_secret(passwords[uid]), "default_project": project,
                   "roles": {project: roles}} for uid, project, roles, _cloud in DEFAULT_USERS],
        "application_credentials": [],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(HEADER)
        yaml.safe_dump(doc, fh, sort_keys=False)
    LOG.warning("created identity file %s with users admin, demo and freezeframe (service); their passwords "
                "are in clouds.yaml beside it", path)
    return passwords
