"""The domain errors. They carry no HTTP: ``freezeframe.common.web.errors`` maps them in one place."""

from __future__ import annotations


class FreezeframeError(Exception):
    """Root of every error the services raise on purpose."""

    def __init__(self, message: str = "", **details: object) -> None:
        super().__init__(message or self.__class__.__doc__)
        self.message = message or (self.__class__.__doc__ or "").strip()
        self.details = details


class Invalid(FreezeframeError):
    """The request is malformed or a value is wrong."""


class NotAuthenticated(FreezeframeError):
    """No valid credentials were given."""


class Forbidden(FreezeframeError):
    """The caller may not do this."""


class NotFound(FreezeframeError):
    """The resource does not exist (or the caller may not see it)."""


class NotAcceptable(FreezeframeError):
    """The requested API (micro)version is not supported."""


class Gone(FreezeframeError):
    """The resource was deleted while the operation ran."""


class Conflict(FreezeframeError):
    """The request conflicts with the resource's current state."""


class InvalidState(Conflict):
    """A state transition that the state machine does not allow."""


class UnsupportedMediaType(FreezeframeError):
    """The body's media type or data format is not the one expected."""


class TooLarge(FreezeframeError):
    """The data exceeds a size limit."""


class StorageFull(TooLarge):
    """The store has no space left."""


class QuotaExceeded(FreezeframeError):
    """A per-resource limit (properties, tags, members) would be exceeded."""


class RangeNotSatisfiable(FreezeframeError):
    """The requested byte range lies outside the data."""


class BackendUnavailable(FreezeframeError):
    """A backend (database, store) failed; the request may be retried."""


class Busy(BackendUnavailable):
    """The service is saturated; retry shortly.

    Raised at once (never after waiting) when a bounded pool or queue is full; answered 503 with
    ``Retry-After: <retry_after>``. See ``freezeframe.common.pools``."""

    def __init__(self, message: str = "", retry_after: int = 1, **details: object) -> None:
        super().__init__(message, **details)
        self.retry_after = max(1, int(retry_after))


class HostFault(FreezeframeError):
    """The hypervisor (or another host-side component) failed the operation.

    A fault of this host, not a load to retry later (that is ``BackendUnavailable``): answered
    500, and its text (libvirt's, with host paths) goes to the log, never to the caller."""
