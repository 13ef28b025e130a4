"""Requests to an ASGI application in process (no server, no TestClient): one event loop per call."""

from __future__ import annotations

import asyncio

import httpx
from starlette.types import ASGIApp


def request(app: ASGIApp, method: str, path: str, **kw) -> httpx.Response:
    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.request(method, path, **kw)
    return asyncio.run(call())
