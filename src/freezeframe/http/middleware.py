"""The edge of every request: request id, header limits, authentication, access log.

Pure ASGI (no BaseHTTPMiddleware) so request bodies stream through untouched.
"""

from __future__ import annotations

import logging
import re
import time
from urllib.parse import parse_qs

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from freezeframe.common import errors
from freezeframe.common.context import new_request_id, request_id_var
from freezeframe.common.web.body import edge_problem, log_client_gone
from freezeframe.common.web.errors import error_headers, error_response, status_of
from freezeframe.common.web.mount import PublicPaths
from freezeframe.http.auth import Authenticator

LOG = logging.getLogger("freezeframe.access")
_REQ_ID = re.compile(r"^req-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, authenticator: Authenticator, max_header_bytes: int,
                 public: PublicPaths) -> None:
        self.app = app
        self.public = public          # what needs no token: the mounted services say
        self.auth = authenticator
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        incoming = headers.get("x-openstack-request-id", "")
        request_id = incoming if _REQ_ID.match(incoming) else new_request_id()
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status_holder = [0]
        rid_header = (b"x-openstack-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        try:
            header_bytes = sum(len(k) + len(v) for k, v in scope["headers"])
            if header_bytes > self.max_header_bytes:
                response = error_response(431, f"Request headers total {header_bytes} bytes; the limit is "
                                               f"{self.max_header_bytes}")
                await response(scope, receive, send_with_id)
                return
            problem = edge_problem(scope)    # malformed URL or header text: never routed
            if problem is not None:
                await error_response(*problem)(scope, receive, send_with_id)
                return
            path = scope["path"]
            detailed = "detailed" in parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            if not self.public(path, scope["method"], detailed):
                try:
                    ctx = await self.auth.authenticate(headers.get("x-auth-token"), request_id, headers)
                except errors.FreezeframeError as exc:
                    status = status_of(exc)
                    extra = error_headers(exc, status)   # 401: the scheme; 503 (Keystone down): Retry-After
                    await error_response(status, exc.message, extra)(scope, receive, send_with_id)
                    return
                scope.setdefault("state", {})["ctx"] = ctx
            try:
                await self.app(scope, receive, send_with_id)
            except ClientDisconnect:         # the client went away: nothing to answer, not a fault
                log_client_gone(scope)
                status_holder[0] = status_holder[0] or 499
            except Exception as exc:  # a bug: answer 500 with the request id, log the traceback
                LOG.exception("unexpected error: %s", exc)
                if not status_holder[0]:
                    await error_response(500, "An unexpected error occurred; the request id identifies it "
                                              "in the server log")(scope, receive, send_with_id)
        finally:
            LOG.info("%s %s %s %.1fms", scope["method"], scope["path"],
                     status_holder[0] or "-", (time.perf_counter() - started) * 1000)
            request_id_var.reset(token)
