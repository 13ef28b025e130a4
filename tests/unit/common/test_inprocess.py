"""The in-process transport against a running event loop: a body streamed to an app that reads
it all, and to an app that refuses at once with a response of several messages — which must
come back at once, not after the transport's timeout (the app waits for its answer to be read
while the client waits to hand over the rest of the body)."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from freezeframe.http.inprocess import InProcess


async def reads_all(scope, receive, send):
    total = 0
    while True:
        message = await receive()
        total += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(total).encode()})


async def refuses_at_once(scope, receive, send):
    await send({"type": "http.response.start", "status": 415, "headers": []})
    for part in (b"unsupported ", b"media ", b"type"):
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def bound():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    where = InProcess()
    yield where, loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def body(parts=64, size=64 << 10):
    for _ in range(parts):
        yield b"x" * size


@pytest.mark.parametrize("app, status, text", [(reads_all, 200, str(64 * (64 << 10))),
                                               (refuses_at_once, 415, "unsupported media type")])
def test_a_streamed_body_gets_the_apps_answer_at_once(bound, app, status, text):
    where, loop = bound
    where.bind(app, loop)
    started = time.monotonic()
    with httpx.Client(base_url="http://in-process", transport=where.transport()) as client:
        resp = client.put("/upload", content=body())
    assert (resp.status_code, resp.text) == (status, text)
    assert time.monotonic() - started < 10
