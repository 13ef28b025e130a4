"""The in-process transport: a service's typed client calling another service of the same
process goes through the very same ASGI application (edge, authentication, policy, error map)
without a socket — one client interface, two transports.

It is for callers on worker threads (the conductor's flows, compute's own pools): each call is
scheduled on the server's event loop and the calling thread waits for it. The loop never waits
for the caller, so a call cannot starve the threads that answer it; called from the event loop
itself it refuses (that would deadlock) instead of hanging. Request and response bodies stream
through small bounded queues in both directions (no whole upload held in memory).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Iterator
from urllib.parse import unquote

import httpx
from starlette.types import ASGIApp, Message

_QUEUE = 2          # messages in flight each way (each up to a 4 MiB block: memory held per call)
_TIMEOUT = 300.0    # one body chunk or response message, at most


class InProcess:
    """Where the application runs: bound once the server's loop is running, unbound at stop.
    While unbound (a process without the API, or stopping) calls fail as a refused connection
    would, so clients retry or fall back exactly as over HTTP."""

    def __init__(self) -> None:
        self.app: ASGIApp | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def bind(self, app: ASGIApp, loop: asyncio.AbstractEventLoop) -> None:
        self.app, self.loop = app, loop

    def unbind(self) -> None:
        self.loop = None

    @property
    def bound(self) -> bool:
        return self.app is not None and self.loop is not None and self.loop.is_running()

    def transport(self) -> InProcessTransport:
        return InProcessTransport(self)


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, first: list[bytes], more: bool, pull, finish) -> None:
        self._first, self._more, self._pull, self._finish = first, more, pull, finish

    def __iter__(self) -> Iterator[bytes]:
        yield from self._first
        while self._more:
            message = self._pull()
            if message is None:
                break
            if message.get("body"):
                yield message["body"]
            self._more = message.get("more_body", False)

    def close(self) -> None:
        self._finish()


class InProcessTransport(httpx.BaseTransport):
    def __init__(self, where: InProcess) -> None:
        self.where = where

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self.where.bound:
            raise httpx.ConnectError("the in-process service is not running", request=request)
        loop, app = self.where.loop, self.where.app
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("an in-process service call from the event loop itself would deadlock; "
                               "call from a worker thread")

        def on_loop(coro):
            return asyncio.run_coroutine_threadsafe(coro, loop)

        async def make_queues():
            return asyncio.Queue(_QUEUE), asyncio.Queue(_QUEUE), asyncio.Event(), asyncio.Event()
        inbox, outbox, closed, answered = on_loop(make_queues()).result(_TIMEOUT)

        async def receive() -> Message:
            message = await inbox.get()
            if message is None:      # the body was sent: wait until the client closes
                await closed.wait()
                return {"type": "http.disconnect"}
            return message

        async def send(message: Message) -> None:
            if message.get("type") == "http.response.start":
                answered.set()
            await outbox.put(message)

        async def run() -> None:
            try:
                await app(_scope(request), receive, send)
            finally:
                await outbox.put(None)
        call = on_loop(run())
        # The app may answer before it read the whole body (a refusal): the rest is not sent —
        # waiting to hand it over would wait on an app that waits for its answer to be read.
        early = on_loop(answered.wait())

        def put(message) -> bool:
            """Hand one request message to the app; False when the app answered without it."""
            fut = on_loop(inbox.put(message))
            done, _ = concurrent.futures.wait([fut, call, early], timeout=_TIMEOUT,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
            if fut in done:
                return True
            fut.cancel()
            if not done:
                raise httpx.WriteTimeout("the in-process service stopped reading the request body",
                                         request=request)
            return False

        def pull() -> Message | None:
            try:
                return on_loop(outbox.get()).result(_TIMEOUT)
            except concurrent.futures.TimeoutError:
                raise httpx.ReadTimeout("the in-process service did not answer", request=request) from None

        def finish() -> None:
            loop.call_soon_threadsafe(closed.set)
            early.cancel()
            if not call.done():
                call.cancel()

        try:
            for chunk in request.stream:
                if chunk and not put({"type": "http.request", "body": bytes(chunk), "more_body": True}):
                    break
            else:
                if put({"type": "http.request", "body": b"", "more_body": False}):
                    put(None)
            start = pull()
            if start is None:
                exc = call.exception() if call.done() else None
                raise httpx.RemoteProtocolError(f"the in-process service gave no response: {exc!r}", request=request)
            first, more = [], True
            message = pull() if start["type"] == "http.response.start" else None
            if message is None:
                more = False
            else:
                if message.get("body"):
                    first.append(message["body"])
                more = message.get("more_body", False)
        except BaseException:
            finish()
            raise
        headers = [(k, v) for k, v in start.get("headers", [])]
        return httpx.Response(start["status"], headers=headers,
                              stream=_ResponseStream(first, more, pull, finish), request=request)


def _scope(request: httpx.Request) -> dict:
    url = request.url
    raw_path = url.raw_path.split(b"?", 1)[0]
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": request.method, "scheme": url.scheme or "http",
        "path": unquote(raw_path.decode("ascii")), "raw_path": raw_path, "root_path": "",
        "query_string": url.query, "headers": [(k.lower(), v) for k, v in request.headers.raw],
        "client": ("127.0.0.1", 0), "server": (url.host or "127.0.0.1", url.port or 80),
        "extensions": {}, "state": {},
    }
