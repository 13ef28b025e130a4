"""A stand-in for the bare-metal API's lookup and heartbeat endpoints (http.server, loopback)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

NODE_UUID = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123"
TOKEN = "t" * 20 + "0123456789abcdefghij"  # 40 chars


class FakeApi:
    def __init__(self, *, lookup_responses=None, heartbeat_timeout=30, node=None):
        # lookup_responses: a list of (status, body) served in turn; the last one repeats
        self.lookup_responses = list(lookup_responses or [(200, None)])
        self.heartbeat_timeout = heartbeat_timeout
        self.node = node or {"uuid": NODE_UUID, "properties": {}, "instance_info": {}, "driver_internal_info": {}}
        self.lookups: list[dict] = []
        self.heartbeats: list[dict] = []
        self.headers: list[dict] = []
        self.cond = threading.Condition()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _reply(self, status, body):
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                parts = urlsplit(self.path)
                if parts.path != "/baremetal/v1/lookup":
                    return self._reply(404, {"error_message": "no route"})
                with api.cond:
                    api.lookups.append({k: v[0] for k, v in parse_qs(parts.query).items()})
                    api.headers.append({k.lower(): v for k, v in self.headers.items()})
                    status, body = api.lookup_responses[min(len(api.lookups), len(api.lookup_responses)) - 1]
                if body is None:
                    body = {"node": api.node, "config": {"heartbeat_timeout": api.heartbeat_timeout,
                                                         "agent_token": TOKEN, "agent_token_required": True}}
                self._reply(status, body)

            def do_POST(self):
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if parts.path != f"/baremetal/v1/heartbeat/{NODE_UUID}":
                    return self._reply(404, {"error_message": "no such node"})
                if body.get("agent_token") != TOKEN:
                    return self._reply(400, {"error_message": "Invalid or missing agent token received."})
                with api.cond:
                    api.heartbeats.append(body)
                    api.headers.append({k.lower(): v for k, v in self.headers.items()})
                    api.cond.notify_all()
                self._reply(202, None)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/baremetal"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def wait_heartbeat(self, predicate, timeout=20.0) -> dict:
        with self.cond:
            ok = self.cond.wait_for(lambda: any(predicate(h) for h in self.heartbeats), timeout)
            assert ok, f"no such heartbeat in {timeout} s: {self.heartbeats[-3:]}"
            return next(h for h in self.heartbeats if predicate(h))

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
