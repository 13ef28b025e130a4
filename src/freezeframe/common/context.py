"""Who is calling, for whom, and the request id that every log line and response carries.

A request carries the caller's identity (user, project, roles). When one service calls another
on a user's behalf it sends its own credential beside the user's identity (OpenStack's service
token pattern): the receiving service applies its normal rules to the *user*, and the service
credential only adds ``service_roles`` — what only a service may do, never what the user may see.
"""

from __future__ import annotations

import contextvars
import random
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# The workflow the conductor runs on this thread (None elsewhere): the log lines name it.
workflow_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("workflow_id", default=None)

# Keystone's default implied roles: admin implies member, member implies reader.
IMPLIED_ROLES = {"admin": ("member", "reader"), "member": ("reader",)}


def fast_uuid4() -> uuid.UUID:
    """A version-4 UUID from Python's PRNG: ids need uniqueness, not secrecy (access is always
    checked), and os.urandom costs a syscall that is slow on some virtual machines."""
    return uuid.UUID(int=random.getrandbits(128), version=4)


def new_request_id() -> str:
    return f"req-{fast_uuid4()}"


def expand_roles(roles: Iterable[str]) -> frozenset[str]:
    """The roles with those they imply (as Keystone's implied roles do)."""
    out = set(roles)
    for role in list(out):
        out.update(IMPLIED_ROLES.get(role, ()))
    return frozenset(out)


@dataclass(frozen=True)
class Actor:
    """Whom long-running work acts for: recorded with the work (never a token, which expires)."""
    user_id: str
    project_id: str | None
    roles: frozenset[str]

    def to_json(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "project_id": self.project_id, "roles": sorted(self.roles)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Actor:
        return cls(doc["user_id"], doc.get("project_id"), frozenset(doc.get("roles") or ()))


@dataclass(frozen=True)
class RequestContext:
    user_id: str
    project_id: str | None
    roles: frozenset[str] = field(default_factory=frozenset)
    request_id: str = "-"
    # Roles of the service credential sent beside the user's identity (X-Service-Token).
    service_roles: frozenset[str] = field(default_factory=frozenset)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def is_service(self) -> bool:
        """A service acting for this user (or a service acting as itself): may write the
        reserved workflow properties and send a resumable upload's parts."""
        return "service" in self.service_roles or "service" in self.roles

    @property
    def actor(self) -> Actor:
        return Actor(self.user_id, self.project_id, self.roles)

    def credentials(self) -> dict[str, Any]:
        """What policy rules are checked against (oslo.policy's credentials)."""
        return {"user_id": self.user_id, "project_id": self.project_id, "roles": sorted(self.roles),
                "service_roles": sorted(self.service_roles)}

    @classmethod
    def acting_for(cls, actor: Actor, *, request_id: str = "-") -> RequestContext:
        """The context of work done later for ``actor`` by a service (in process)."""
        return cls(actor.user_id, actor.project_id, expand_roles(actor.roles), request_id, frozenset({"service"}))
