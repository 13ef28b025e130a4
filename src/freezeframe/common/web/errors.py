"""Domain errors to HTTP, in one place. Every error body carries the request id."""

from __future__ import annotations

import logging
from typing import Any, Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from freezeframe.common import errors
from freezeframe.common.context import request_id_var

LOG = logging.getLogger(__name__)

STATUS: dict[type[errors.FreezeframeError], int] = {
    errors.Invalid: 400,
    errors.NotAuthenticated: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.NotAcceptable: 406,
    errors.Conflict: 409,
    errors.Gone: 410,
    errors.TooLarge: 413,
    errors.QuotaExceeded: 413,
    errors.UnsupportedMediaType: 415,
    errors.RangeNotSatisfiable: 416,
    errors.BackendUnavailable: 503,
    errors.Busy: 503,
    # A fault of this host (the hypervisor's, most often in workflows, which record it; here the
    # ones that reach a request): a 500, as a NovaException without a code is — not a load to
    # retry later (503 means that here) — and its text (libvirt's, with host paths) goes to the
    # log, not to the caller. The virt drivers' errors are host faults, but for no such domain
    # (a NotFound: 404) and a guest that cannot be frozen (a Conflict: 409), as Nova answers.
    errors.HostFault: 500,
}
TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
          405: "Method Not Allowed", 406: "Not Acceptable", 409: "Conflict", 410: "Gone", 411: "Length Required",
          413: "Request Entity Too Large", 415: "Unsupported Media Type", 416: "Range Not Satisfiable",
          431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


def status_of(exc: errors.FreezeframeError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    # A message quoting what a client sent must still encode (a lone surrogate would not).
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    body = {"error": {"code": status, "title": TITLES.get(status, "Error"), "message": message,
                      "request_id": request_id_var.get()}}
    return JSONResponse(body, status_code=status, headers=headers)


def error_headers(exc: errors.FreezeframeError, status: int) -> dict[str, str] | None:
    """The headers an error answer carries: a 401 names the scheme; every 503 says when to retry
    (``errors.Busy`` its own ``retry_after``, a failed backend 1 s)."""
    if status == 401:
        return {"WWW-Authenticate": 'Token realm="freezeframe"'}
    if status == 503:
        return {"Retry-After": str(getattr(exc, "retry_after", 1))}
    return None


Respond = Callable[[int, str, "dict[str, str] | None"], JSONResponse]
HIDDEN = "The {what} failed the operation; the request id identifies the error in the server log"


def handlers_for(respond: Respond, *, host: str = "hypervisor", not_found: str | None = None) -> dict[Any, Any]:
    """An API's error map: domain errors and the router's own (404, 405) answered by ``respond``
    (the body shape that API's clients read), logged the same way for every API. ``host``: what
    a ``HostFault``'s hidden text blames; ``not_found``: the router's 404 text (else its own)."""

    async def on_domain_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, errors.FreezeframeError)
        status = status_of(exc)
        if isinstance(exc, errors.Busy):
            LOG.warning("busy: %s", exc.message)   # load shedding, not a fault
        elif status >= 500 and isinstance(exc, errors.HostFault):
            LOG.error("%s error: %s: %s", host, type(exc).__name__, exc)
            return respond(status, HIDDEN.format(what=host), None)
        elif status >= 500:
            LOG.error("%s: %s", type(exc).__name__, exc.message)
        return respond(status, exc.message, error_headers(exc, status))

    async def on_http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        message = not_found if exc.status_code == 404 and not_found else \
            exc.detail or TITLES.get(exc.status_code, "Error")
        return respond(exc.status_code, message, exc.headers)

    return {errors.FreezeframeError: on_domain_error, HTTPException: on_http_error}


HANDLERS = handlers_for(error_response)
domain_error = HANDLERS[errors.FreezeframeError]


# -- Nova's and Cinder's fault bodies ----------------------------------------------------------
# Both wrap an error as ``{"<faultName>": {"code": ..., "message": ...}}`` (their wsgi.Fault);
# the name by status as in nova/api/openstack/wsgi.py (Cinder's is the same table). The request
# id rides along inside (clients read ``code`` and ``message`` and ignore the rest) besides the
# ``X-OpenStack-Request-Id`` header.
# Neither table names 406 (a refused microversion) nor any other status: "computeFault", as theirs.
FAULT_NAMES = {400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound", 405: "badMethod",
               409: "conflictingRequest", 413: "overLimit", 415: "badMediaType",
               429: "overLimit", 501: "notImplemented", 503: "serviceUnavailable"}


def fault_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    name = FAULT_NAMES.get(status, "computeFault")
    body = {name: {"code": status, "message": message, "request_id": request_id_var.get()}}
    return JSONResponse(body, status_code=status, headers=headers)


# The error map of the Nova- and Cinder-compatible APIs (``Microversions.wrap(handlers=...)``).
FAULT_HANDLERS = handlers_for(fault_response, not_found="The resource could not be found.")
