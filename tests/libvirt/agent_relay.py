"""Test-only: the guest agents of the servers a real `serve` runs, reached from the test process.

`serve` runs libvirt embedded, and an embedded libvirt root belongs to one process: the test
cannot open it beside `serve`. So the `serve` a test starts carries a relay: a
``sitecustomize`` (on ``PYTHONPATH``, for that process only) starts a thread listening on a
unix socket in the data dir, which runs each request through `serve`'s own libvirt root (a
second connection in the same process) — one guest agent command, or a domain's live XML.
Nothing of Freezeframe changes; a `serve` without the relay's environment runs no relay.

    env = relay_env(data_dir)                  # passed to start_server(..., env=env)
    relay(data_dir, {"op": "agent", "domain": f"instance-{server_id}", "execute": "guest-ping"})
    relay(data_dir, {"op": "xml", "domain": ...})              # the live domain XML

(tests/libvirt/test_volumes_e2e.py's RelayGuest puts test_volume_ops_libvirt's Guest on it.)
This module imports nothing of the tests or of pytest: `serve` loads it.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import sys
import threading
from pathlib import Path

ENV_SOCKET = "FF_TEST_AGENT_RELAY"
ENV_URI = "FF_TEST_AGENT_RELAY_URI"
ROOT = Path(__file__).resolve().parents[2]
SITECUSTOMIZE = f"""\
# Written by tests/libvirt/agent_relay.py: the agent relay of a test's `serve` (test-only).
import os
if os.environ.get({ENV_SOCKET!r}):
    import sys
    sys.path.insert(0, {str(ROOT)!r})
    try:
        from tests.libvirt.agent_relay import start_from_env
    finally:
        sys.path.remove({str(ROOT)!r})
    start_from_env()
"""


def socket_path(data_dir: Path) -> Path:
    return Path(data_dir) / "agent-relay.sock"


def relay_env(data_dir: Path) -> dict[str, str]:
    """The environment that makes a `serve` on ``data_dir`` (its embedded libvirt) carry the relay."""
    shim = Path(data_dir) / "agent-relay"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, ENV_SOCKET: str(socket_path(data_dir)),
            ENV_URI: f"qemu:///embed?root={Path(data_dir) / 'libvirt'}"}


# -- in `serve` --------------------------------------------------------------------------------------
def start_from_env() -> None:
    """Start the relay thread (once; children of this process do not inherit it)."""
    path, uri = os.environ.pop(ENV_SOCKET, ""), os.environ.pop(ENV_URI, "")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                               if p and not p.endswith("agent-relay"))
    if not path or not uri:
        return
    state: dict = {}
    lock = threading.Lock()

    def domain(name: str):
        with lock:
            if "driver" not in state:
                from freezeframe.compute.drivers.libvirt import LibvirtDriver
                state["driver"] = LibvirtDriver(uri)
            return state["driver"].conn.lookupByName(name)

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            try:
                req = json.loads(self.rfile.readline())
                dom = domain(req["domain"])
                if req["op"] == "agent":
                    from freezeframe.compute.drivers import libvirt_agent
                    out = {"return": libvirt_agent.command(dom, req["execute"], req.get("timeout", 5),
                                                           **req.get("arguments", {}))}
                elif req["op"] == "xml":
                    out = {"return": dom.XMLDesc(0)}
                else:
                    out = {"error": f"unknown op {req['op']!r}"}
            except Exception as exc:        # (the test sees it)
                out = {"error": f"{type(exc).__name__}: {exc}"}
            self.wfile.write(json.dumps(out).encode() + b"\n")

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    Path(path).unlink(missing_ok=True)
    server = Server(path, Handler)
    threading.Thread(target=server.serve_forever, name="test-agent-relay", daemon=True).start()
    print(f"test agent relay on {path} for {uri}", file=sys.stderr, flush=True)


# -- in the test -------------------------------------------------------------------------------------
class RelayError(Exception):
    pass


def relay(data_dir: Path, request: dict, timeout: float = 30) -> object:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(socket_path(data_dir)))
        s.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    reply = json.loads(data)
    if "error" in reply:
        raise RelayError(reply["error"])
    return reply["return"]
