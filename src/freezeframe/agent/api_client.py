"""The agent's calls to the bare-metal API: lookup and heartbeats (Ironic's rules).

- lookup: GET {api}/v1/lookup?addresses=<MACs>&node_uuid=<uuid>; 404 (unknown node or a state
  that allows no lookup), 409 (locked) and connection errors are retried after 5, 10, 30, 30...
  seconds until the lookup timeout. The agent_token must be at least 32 characters; "******"
  (already handed out) or a short one is refused and the lookup retried.
- heartbeat: POST {api}/v1/heartbeat/{uuid} every heartbeat_timeout x U(0.3, 0.6) seconds, after
  an error 5 x U(1, 2) seconds, and at once when poked (a command ended).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import random
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from typing import Callable
from urllib.parse import urlencode, urlsplit

from . import AGENT_VERSION

LOG = logging.getLogger(__name__)
API_VERSION = "1.116"
LOOKUP_BACKOFF = (5.0, 10.0, 30.0)
MIN_TOKEN_LENGTH = 32


class LookupFailed(Exception):
    """Lookup did not succeed within the lookup timeout (or cannot succeed)."""


class ApiError(Exception):
    def __init__(self, status: int | None, message: str):
        super().__init__(message)
        self.status = status


def local_macs(sys_net: str = "/sys/class/net") -> list[str]:
    """MAC addresses of this machine's NICs (loopback and all-zero addresses left out)."""
    macs = []
    for path in sorted(glob.glob(os.path.join(sys_net, "*", "address"))):
        if os.path.basename(os.path.dirname(path)) == "lo":
            continue
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                mac = f.read().strip().lower()
        except OSError:
            continue
        if mac and len(mac) == 17 and mac != "00:00:00:00:00:00" and mac not in macs:
            macs.append(mac)
    return macs


def route_source(api_url: str) -> str | None:
    """The local address the kernel would use to reach the API host (for callback_url)."""
    parts = urlsplit(api_url)
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 80, type=socket.SOCK_DGRAM)
        family, _, _, _, addr = infos[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(addr)  # UDP: no packet is sent
            return s.getsockname()[0]
    except OSError:
        return None


class ApiClient:
    def __init__(self, api_url: str, *, insecure: bool = False, timeout: float = 30.0):
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.context = None
        if insecure and self.api_url.startswith("https"):
            self.context = ssl.create_default_context()
            self.context.check_hostname = False
            self.context.verify_mode = ssl.CERT_NONE
        self.send_version = True

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict | None]:
        """(status, JSON body or None); connection errors raise ApiError(None, ...)."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json", "User-Agent": AGENT_VERSION}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.send_version:
            headers["X-OpenStack-Ironic-API-Version"] = API_VERSION
        req = urllib.request.Request(self.api_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.context) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except (OSError, ValueError) as exc:
            raise ApiError(None, f"{method} {self.api_url}{path}: {exc}") from exc
        if status == 406 and self.send_version:
            # an API whose newest microversion is older: these calls need none
            self.send_version = False
            return self.request(method, path, body)
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return status, parsed

    def lookup(
        self,
        macs: list[str],
        node_uuid: str | None,
        *,
        timeout: float,
        wait: Callable[[float], bool] = lambda s: (time.sleep(s), False)[1],
        backoff: tuple[float, ...] = LOOKUP_BACKOFF,
        clock: Callable[[], float] = time.monotonic,
    ) -> dict:
        """The lookup body ({"node", "config"}) with a usable agent_token in config.

        `wait(seconds)` sleeps and returns True to abandon (the agent is stopping)."""
        query = {}
        if macs:
            query["addresses"] = ",".join(macs)
        if node_uuid:
            query["node_uuid"] = node_uuid
        if not query:
            raise LookupFailed("no MAC address found and no node UUID given: nothing to look up by")
        deadline = clock() + timeout
        attempt = 0
        while True:
            try:
                status, body = self.request("GET", "/v1/lookup?" + urlencode(query))
            except ApiError as exc:
                status, body, reason = None, None, str(exc)
            else:
                reason = f"HTTP {status}: {_message(body)}"
            if status == 200 and isinstance(body, dict):
                token = (body.get("config") or {}).get("agent_token")
                if isinstance(token, str) and len(token) >= MIN_TOKEN_LENGTH:
                    return body
                if token == "******":
                    reason = "the agent token was already handed out (another agent looked up first?)"
                else:
                    reason = "lookup returned no usable agent token (it must be at least 32 characters)"
            elif status == 400:
                raise LookupFailed(f"lookup refused: {reason}")
            delay = backoff[min(attempt, len(backoff) - 1)]
            attempt += 1
            remaining = deadline - clock()
            if remaining <= 0:
                raise LookupFailed(f"lookup failed for {timeout:g} s: {reason}")
            LOG.warning("lookup failed (%s); retrying in %.0f s", reason, min(delay, remaining))
            if wait(min(delay, remaining)):
                raise LookupFailed("stopped while looking up")

    def heartbeat(self, node: str, body: dict) -> None:
        status, resp = self.request("POST", f"/v1/heartbeat/{node}", body)
        if status != 202:
            raise ApiError(status, f"heartbeat: HTTP {status}: {_message(resp)}")


def _message(body) -> str:
    if isinstance(body, dict):
        for key in ("error_message", "message", "faultstring", "title"):
            value = body.get(key)
            if isinstance(value, str):
                try:  # Ironic nests a JSON document in error_message
                    inner = json.loads(value)
                    if isinstance(inner, dict) and "faultstring" in inner:
                        return str(inner["faultstring"])
                except ValueError:
                    pass
                return value
            if isinstance(value, dict):
                return _message(value)
    return json.dumps(body)[:200] if body is not None else "no body"


class Heartbeater(threading.Thread):
    """Heartbeats the node until stopped; poke() sends one at once."""

    def __init__(
        self,
        client: ApiClient,
        node: str,
        token: str,
        callback_url: str,
        heartbeat_timeout: float,
        fields: Callable[[], dict],
    ):
        super().__init__(name="heartbeat", daemon=True)
        self.client, self.node, self.token = client, node, token
        self.callback_url = callback_url
        self.heartbeat_timeout = heartbeat_timeout
        self.fields = fields
        self._wake = threading.Event()
        self._stopped = False
        self.sent = 0
        self.errors = 0

    def body(self) -> dict:
        body = {
            "callback_url": self.callback_url,
            "agent_token": self.token,
            "agent_version": AGENT_VERSION,
            "agent_status": "start",
            "agent_status_message": "",
        }
        body.update(self.fields())
        return body

    def beat(self) -> bool:
        try:
            self.client.heartbeat(self.node, self.body())
        except ApiError as exc:
            self.errors += 1
            LOG.warning("%s", exc)
            return False
        self.sent += 1
        return True

    def run(self) -> None:
        while not self._stopped:
            self._wake.clear()  # a poke during the beat below wakes the wait at once
            ok = self.beat()
            delay = self.heartbeat_timeout * random.uniform(0.3, 0.6) if ok else 5.0 * random.uniform(1.0, 2.0)
            self._wake.wait(delay)

    def poke(self) -> None:
        self._wake.set()

    def stop(self, final: bool = True) -> None:
        """Stop beating; with final, send one last heartbeat (the end of a command, a stop)."""
        self._stopped = True
        self._wake.set()
        self.join(timeout=self.client.timeout + 1)
        if final:
            self.beat()
