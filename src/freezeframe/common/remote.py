"""The errors every HTTP client of ours raises for a failed call to another service (the
clients themselves are built on ``freezeframe.common.httpclient``)."""

from __future__ import annotations


class RemoteError(Exception):
    """A request failed. ``status`` is None when no HTTP response was received."""

    def __init__(self, message: str, *, status: int | None = None, request_id: str | None = None,
                 title: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.request_id = request_id
        self.title = title

    def __str__(self) -> str:
        details = []
        if self.status is not None:
            details.append(f"HTTP {self.status}" + (f" {self.title}" if self.title else ""))
        if self.request_id:
            details.append(f"request id {self.request_id}")
        return self.message + (f" ({'; '.join(details)})" if details else "")


class Unreachable(RemoteError):
    """No connection to the service could be made (refused, unknown host, connect timeout).
    ``service`` names which one ("image", "compute", "workflow", ...)."""

    def __init__(self, message: str, *, service: str | None = None) -> None:
        super().__init__(message)
        self.service = service
