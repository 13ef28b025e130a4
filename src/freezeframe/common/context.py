"""Who is calling, and the request id that every log line and response carries."""

from __future__ import annotations

import contextvars
import random
import uuid
from dataclasses import dataclass, field

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def fast_uuid4() -> uuid.UUID:
    """A version-4 UUID from Python's PRNG: ids need uniqueness, not secrecy (access is always
    checked), and os.urandom costs a syscall that is slow on some virtual machines."""
    return uuid.UUID(int=random.getrandbits(128), version=4)


def new_request_id() -> str:
    return f"req-{fast_uuid4()}"


@dataclass(frozen=True)
class RequestContext:
    user_id: str
    project_id: str | None
    roles: frozenset[str] = field(default_factory=frozenset)
    request_id: str = "-"

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def is_service(self) -> bool:
        """Internal callers (the workflows) that may write reserved properties."""
        return "service" in self.roles
