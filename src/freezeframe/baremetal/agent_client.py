"""The conductor's client of the agent's command API (Ironic's shapes, as its conductor calls it).

    GET  /v1/status                                   (no token)
    POST /v1/commands/?wait=false&agent_token=T       {"name": "ext.cmd", "params": {...}}
    GET  /v1/commands/?agent_token=T                  {"commands": [...]}
    GET  /v1/commands/{id}?agent_token=T&wait=false

As Ironic's conductor: each call times out after 60 s and is tried 3 times when the agent cannot
be reached; a command whose sending failed (the answer was lost, the agent said it is busy) is
looked for among the agent's commands before the call fails — it may well be RUNNING already
(sending it twice would be a 409, or worse, a second stream).
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import httpx

from freezeframe.common import errors

LOG = logging.getLogger(__name__)
TIMEOUT = 60.0
ATTEMPTS = 3
RETRY_DELAY = 2.0
RUNNING, SUCCEEDED, FAILED = "RUNNING", "SUCCEEDED", "FAILED"


class _MaskAgentToken(logging.Filter):
    """httpx logs every request's URL at INFO: the agent's token (a query parameter, Ironic's
    shape) must not land in the conductor's log."""
    PATTERN = re.compile(r"(agent_token=)[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any("agent_token=" in str(a) for a in record.args):
            record.args = tuple(self.PATTERN.sub(r"\1******", str(a)) if "agent_token=" in str(a) else a
                                for a in record.args)
        return True


if not any(isinstance(f, _MaskAgentToken) for f in logging.getLogger("httpx").filters):
    logging.getLogger("httpx").addFilter(_MaskAgentToken())


class AgentError(errors.FreezeframeError):
    """The agent refused a call or could not be reached (``status``: its HTTP status, or None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AgentUnreachable(AgentError):
    """No answer from the agent after every attempt."""


class AgentClient:
    def __init__(self, url: str, token: str | None, *, timeout: float = TIMEOUT, attempts: int = ATTEMPTS,
                 retry_delay: float = RETRY_DELAY, transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.attempts = max(1, attempts)
        self.retry_delay = retry_delay
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport,
                                  headers={"Accept": "application/json"})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls -----------------------------------------------------------------------------------

    def _call(self, method: str, path: str, *, token: bool = True, json: Any = None,
              params: dict[str, str] | None = None, attempts: int | None = None) -> httpx.Response:
        query = dict(params or {})
        if token:
            query["agent_token"] = self.token or ""
        last: Exception | None = None
        tries = attempts or self.attempts
        for attempt in range(1, tries + 1):
            try:
                resp = self._http.request(method, path, params=query, json=json)
            except httpx.HTTPError as exc:
                last = exc
                LOG.warning("agent %s: %s %s failed (attempt %d of %d): %s", self.url, method, path, attempt,
                            tries, exc)
                if attempt < tries:
                    time.sleep(self.retry_delay)
                continue
            if resp.status_code >= 500 and attempt < tries:
                last = AgentError(_message(resp), resp.status_code)
                time.sleep(self.retry_delay)
                continue
            return resp
        raise AgentUnreachable(f"the agent at {self.url} could not be reached: {last}")

    def status(self) -> dict[str, Any]:
        resp = self._call("GET", "/v1/status", token=False)
        _check(resp)
        return resp.json()

    def commands(self, *, attempts: int | None = None) -> list[dict[str, Any]]:
        resp = self._call("GET", "/v1/commands/", attempts=attempts)
        _check(resp)
        body = resp.json()
        return list(body.get("commands") or []) if isinstance(body, dict) else []

    def command(self, command_id: str, *, attempts: int | None = None) -> dict[str, Any]:
        resp = self._call("GET", f"/v1/commands/{command_id}", params={"wait": "false"}, attempts=attempts)
        _check(resp)
        return resp.json()

    def last(self, name: str, *, attempts: int | None = None) -> dict[str, Any] | None:
        """The agent's latest command of that name (None: it never ran one)."""
        found = [c for c in self.commands(attempts=attempts) if c.get("command_name") == name]
        return found[-1] if found else None

    def run(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        """Start command ``name`` (without waiting for it): its status document. When the
        sending fails — the agent busy (409), or no answer — the agent's commands are asked
        first: a RUNNING one of that name is the one we sent (its answer was lost) and is
        returned; otherwise the call fails."""
        try:
            resp = self._call("POST", "/v1/commands/", params={"wait": "false"}, json={"name": name, "params": params})
        except AgentUnreachable:
            running = self._running(name)
            if running is not None:
                return running
            raise
        if resp.status_code == 409:
            running = self._running(name)
            if running is not None:
                return running
        _check(resp)
        return resp.json()

    def _running(self, name: str) -> dict[str, Any] | None:
        try:
            last = self.last(name, attempts=1)
        except AgentError:
            return None
        return last if last is not None and last.get("command_status") == RUNNING else None


def _message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return f"HTTP {resp.status_code}: {resp.text[:200]}"
    if isinstance(body, dict):
        for key in ("faultstring", "message", "error", "description"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message")
            if value:
                return f"HTTP {resp.status_code}: {value}"
    return f"HTTP {resp.status_code}: {str(body)[:200]}"


def _check(resp: httpx.Response) -> None:
    if resp.status_code >= 400:
        raise AgentError(f"the agent refused {resp.request.method} {resp.request.url.path}: {_message(resp)}",
                         resp.status_code)


def command_error(doc: dict[str, Any]) -> str:
    """Why a FAILED command failed, in a sentence."""
    err = doc.get("command_error")
    if isinstance(err, dict):
        return str(err.get("message") or err.get("details") or err.get("type") or "no reason given")
    return str(err or "no reason given")
