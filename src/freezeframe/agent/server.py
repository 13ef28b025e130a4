"""The command API the conductor calls, in ironic-python-agent's shapes, on http.server.

GET  /v1/status                                  {"started_at", "version"} (no token)
POST /v1/commands/?wait=&agent_token=T           {"name": "ext.cmd", "params": {...}} -> a command
GET  /v1/commands/?agent_token=T                 {"commands": [...]}
GET  /v1/commands/{id}?wait=&agent_token=T       a command
Errors: 400 bad body or params, 401 missing/bad token, 404 unknown command or id, 409 busy.
The token may also come in an X-Agent-Token header; it is compared in constant time.
"""

from __future__ import annotations

import collections
import hmac
import json
import logging
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from . import AGENT_VERSION, extensions
from .config import parse_bool

LOG = logging.getLogger(__name__)
MAX_BODY = 1024 * 1024
MAX_HISTORY = 100


class ApiError(Exception):
    def __init__(self, code: int, kind: str, message: str):
        super().__init__(message)
        self.code, self.kind, self.message = code, kind, message

    def body(self) -> dict:
        return {"type": self.kind, "code": self.code, "message": self.message, "details": ""}


class CommandRecord:
    def __init__(self, name: str, params: dict):
        self.id = str(uuid.uuid4())
        self.name = name
        self.params = params
        self.status = "RUNNING"
        self.error: dict | None = None
        self.result: dict | None = None
        self.done = threading.Event()

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "command_name": self.name,
            "command_status": self.status,
            "command_error": self.error,
            "command_result": self.result,
        }


class AgentState:
    """Commands, the token, and what heartbeats report."""

    def __init__(self, ctx: extensions.Context, token: str | None = None):
        self.ctx = ctx
        self.token = token
        self._lock = threading.Lock()
        self.commands: collections.OrderedDict[str, CommandRecord] = collections.OrderedDict()
        self.running: CommandRecord | None = None
        self.agent_status = "start"  # until an asynchronous command ends: then "end" or "error"
        self.agent_status_message = ""
        self.on_command_end: list = []

    def check_token(self, given: str | None) -> None:
        if self.token is None:
            raise ApiError(401, "Unauthorized", "The agent has no token yet (lookup has not completed).")
        if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
            raise ApiError(401, "Unauthorized", "Invalid or missing agent token received.")

    def submit(self, name: str, params: dict) -> CommandRecord:
        command = extensions.find(name)
        if command is None:
            raise ApiError(404, "InvalidCommandError", f"Unknown command: {name}")
        try:
            params = command.validate(params)
        except extensions.InvalidParams as exc:
            raise ApiError(400, "InvalidCommandParamsError", str(exc)) from None
        record = CommandRecord(name, params)
        with self._lock:
            if self.running is not None:
                raise ApiError(
                    409, "AgentIsBusy", f"Agent is busy: command {self.running.name} ({self.running.id}) is running"
                )
            if self.ctx.stop.is_set():
                raise ApiError(409, "AgentIsBusy", "Agent is stopping")
            self.running = record
            self.commands[record.id] = record
            while len(self.commands) > MAX_HISTORY:
                self.commands.popitem(last=False)
        if command.asynchronous:
            threading.Thread(target=self._run, args=(command, record), name=f"command-{name}", daemon=True).start()
        else:
            self._run(command, record)
        return record

    def _run(self, command: extensions.Command, record: CommandRecord) -> None:
        try:
            record.result = command.run(self.ctx, record.params, record.id)
            record.status = "SUCCEEDED"
        except extensions.CommandFailed as exc:
            record.error = {"type": exc.kind, "code": 500, "message": str(exc), "details": str(exc)}
            record.status = "FAILED"
        except Exception as exc:  # a bug must still end the command, not leave it RUNNING
            LOG.exception("command %s failed", record.name)
            message = f"{exc.__class__.__name__}: {exc}"
            record.error = {"type": "CommandExecutionError", "code": 500, "message": message, "details": message}
            record.status = "FAILED"
        LOG.info("command %s %s: %s", record.name, record.id, record.status)
        with self._lock:
            self.running = None
            if command.asynchronous:
                self.agent_status = "end" if record.status == "SUCCEEDED" else "error"
                self.agent_status_message = (
                    f"{record.name}: {record.status}"
                    + (f": {record.error['message']}" if record.error else "")
                )
        record.done.set()
        if command.asynchronous:
            for callback in list(self.on_command_end):
                try:
                    callback()
                except Exception:
                    LOG.exception("on_command_end callback failed")

    def heartbeat_fields(self) -> dict:
        with self._lock:
            fields = {"agent_status": self.agent_status, "agent_status_message": self.agent_status_message}
        progress = self.ctx.progress
        if progress is not None:
            fields["progress"] = progress.snapshot()
        return fields

    def stop(self, reason: str, timeout: float = 30.0) -> CommandRecord | None:
        """Ask the running command to stop (it ends FAILED with the reason); wait for it."""
        self.ctx.stop.stop(reason)
        with self._lock:
            running = self.running
        if running is not None:
            running.done.wait(timeout)
        return running

    def get(self, command_id: str) -> CommandRecord:
        with self._lock:
            record = self.commands.get(command_id)
        if record is None:
            raise ApiError(404, "NotFound", f"Command {command_id} could not be found.")
        return record

    def list(self) -> list[CommandRecord]:
        with self._lock:
            return list(self.commands.values())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "freezeframe-agent"
    state: AgentState  # set on the subclass make_server builds

    def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
        LOG.debug("%s " + format, self.address_string(), *args)

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self, method: str) -> None:
        try:
            # read the body before anything can fail, so a keep-alive connection stays in step
            self._body = self._read_body()
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            path = parts.path.rstrip("/") or "/"
            code, body = self._route(method, path, query)
        except ApiError as exc:
            code, body = exc.code, exc.body()
        except Exception as exc:
            LOG.exception("%s %s failed", method, self.path)
            code, body = 500, ApiError(500, "InternalError", f"{exc.__class__.__name__}: {exc}").body()
        self._send(code, body)

    def _wait(self, query: dict) -> bool:
        try:
            return parse_bool(query.get("wait", "false"))
        except ValueError:
            raise ApiError(400, "InvalidRequest", "wait must be a boolean") from None

    def _token(self, query: dict) -> None:
        self.state.check_token(query.get("agent_token") or self.headers.get("X-Agent-Token"))

    def _route(self, method: str, path: str, query: dict) -> tuple[int, dict]:
        state = self.state
        if path in ("/", "/v1"):
            if method != "GET":
                raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on {path}")
            return 200, {"name": "freezeframe-agent", "version": AGENT_VERSION}
        if path == "/v1/status":
            if method != "GET":
                raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on {path}")
            return 200, {"started_at": state.ctx.started_at, "version": AGENT_VERSION}
        if path == "/v1/commands":
            if method == "POST":
                self._token(query)
                wait = self._wait(query)
                name, params = self._command_body()
                record = state.submit(name, params)
                if wait:
                    record.done.wait()
                return 200, record.to_dict()
            if method == "GET":
                self._token(query)
                return 200, {"commands": [r.to_dict() for r in state.list()]}
            raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on {path}")
        if path.startswith("/v1/commands/"):
            if method != "GET":
                raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on {path}")
            self._token(query)
            wait = self._wait(query)
            record = state.get(path.rpartition("/")[2])
            if wait:
                record.done.wait()
            return 200, record.to_dict()
        raise ApiError(404, "NotFound", f"No such resource: {path}")

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise ApiError(400, "InvalidRequest", "bad Content-Length") from None
        if length > MAX_BODY:
            self.close_connection = True
            raise ApiError(413, "RequestTooLarge", f"the body is larger than {MAX_BODY} bytes")
        return self.rfile.read(length) if length > 0 else b""

    def _command_body(self) -> tuple[str, dict]:
        try:
            body = json.loads(self._body)
        except ValueError:
            raise ApiError(400, "InvalidRequest", "the body is not JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "InvalidRequest", "the body must be an object")
        name, params = body.get("name"), body.get("params", {})
        if not isinstance(name, str) or "." not in name:
            raise ApiError(400, "InvalidRequest", 'the body needs "name": "extension.command"')
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise ApiError(400, "InvalidRequest", '"params" must be an object')
        return name, params

    def do_GET(self):  # noqa: N802
        self._dispatch("GET")

    def do_POST(self):  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self):  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self):  # noqa: N802
        self._dispatch("DELETE")


def make_server(state: AgentState, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"state": state})
    server_class = ThreadingHTTPServer
    if ":" in host:
        import socket

        server_class = type("V6Server", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
    httpd = server_class((host, port), handler)
    httpd.daemon_threads = True
    return httpd
