"""Shared fixtures: a real ``freezeframe serve`` process on a free port, over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
import pytest

# Every `freezeframe serve` / `conductor` a test starts serves its bare-metal transfer area on a
# port of its own (the default, 127.0.0.1:6387, would be shared by the processes of a test).
os.environ.setdefault("FREEZEFRAME_BAREMETAL__WEBDAV_BIND", "127.0.0.1:0")

ADMIN_TOKEN = "admin-token-0123456789"
MEMBER_TOKEN = "member-token-0123456789"
OTHER_TOKEN = "other-token-0123456789"
SERVICE_TOKEN = "service-token-0123456789"
READER_TOKEN = "reader-token-0123456789"
TOKENS = {
    ADMIN_TOKEN: {"user_id": "alice", "project_id": "admin-project", "roles": ["admin", "member", "reader"]},
    MEMBER_TOKEN: {"user_id": "bob", "project_id": "project-a", "roles": ["member", "reader"]},
    OTHER_TOKEN: {"user_id": "carol", "project_id": "project-b", "roles": ["member", "reader"]},
    SERVICE_TOKEN: {"user_id": "freezeframe", "project_id": "service", "roles": ["service"]},
    READER_TOKEN: {"user_id": "dave", "project_id": "project-a", "roles": ["reader"]},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    """A running server. ``url`` is the root; the image API is at ``image_url``."""
    url: str
    data_dir: Path
    process: subprocess.Popen
    log_path: Path
    admin_token: str = ADMIN_TOKEN
    member_token: str = MEMBER_TOKEN
    other_token: str = OTHER_TOKEN
    service_token: str = SERVICE_TOKEN
    extra_env: dict = field(default_factory=dict)

    @property
    def image_url(self) -> str:
        return self.url + "/image"

    def client(self, token: str | None = MEMBER_TOKEN, headers: dict | None = None, **kw) -> httpx.Client:
        headers = {**({"X-Auth-Token": token} if token else {}), **(headers or {})}
        return httpx.Client(base_url=self.image_url, headers=headers, timeout=60, **kw)

    def service_client(self, user_token: str = MEMBER_TOKEN, **kw) -> httpx.Client:
        """The service acting for a user (OpenStack's service-token pattern): the user's token and
        the service's own token side by side."""
        return self.client(user_token, headers={"X-Service-Token": self.service_token}, **kw)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def switch_on_testing(env: dict | None) -> dict:
    """A test that sets a test-only knob ([testing]: fake driver delays and failures, fault
    injection) switches them on; `serve` refuses them otherwise. A test may still say
    FREEZEFRAME_TESTING__ENABLED=false itself (to see the refusal)."""
    knobs = [k for k in (env or {}) if k.startswith("FREEZEFRAME_TESTING__") and k != "FREEZEFRAME_TESTING__ENABLED"]
    return {"FREEZEFRAME_TESTING__ENABLED": "true"} if knobs else {}


def start_server(data_dir: Path, *, auth: str = "tokens", env: dict | None = None,
                 args: list[str] | None = None, port: int | None = None) -> LiveServer:
    data_dir.mkdir(parents=True, exist_ok=True)
    tokens = data_dir / "test-tokens.json"
    tokens.write_text(json.dumps(TOKENS))
    port = port or free_port()
    cmd = [sys.executable, "-m", "freezeframe", "serve", "--data-dir", str(data_dir), "--port", str(port),
           "--auth", auth, *(["--tokens-file", str(tokens)] if auth == "tokens" else []), *(args or [])]
    log_path = data_dir / f"server-{port}.log"
    # The fake virt driver unless a test asks for libvirt: API tests need no hypervisor.
    full_env = {**os.environ, "FREEZEFRAME_STORE__FSYNC": "false", "FREEZEFRAME_COMPUTE__DRIVER": "fake",
                **switch_on_testing(env), **(env or {})}
    proc = subprocess.Popen(cmd, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, env=full_env)
    server = LiveServer(url=f"http://127.0.0.1:{port}", data_dir=data_dir, process=proc, log_path=log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url + "/healthcheck", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server did not become healthy:\n{server.log()}")


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def live_server(request, tmp_path_factory) -> Iterator[LiveServer]:
    """One server per database backend for the session (tokens auth): every API test runs on
    the embedded SQLite and on the machine's PostgreSQL. Tests use fresh images, never shared ones."""
    data_dir = tmp_path_factory.mktemp(f"ff-live-{request.param}")
    if request.param == "sqlite":
        server = start_server(data_dir)
        yield server
        server.stop()
        return
    from tests.pg import temp_database
    with temp_database() as url:
        server = start_server(data_dir, args=["--database-url", url])
        yield server
        server.stop()


@pytest.fixture
def fresh_server(tmp_path) -> Iterator[LiveServer]:
    """A server of its own, for tests that restart it or read its store."""
    server = start_server(tmp_path / "ff")
    yield server
    server.stop()


@pytest.fixture
def admin(live_server) -> Iterator[httpx.Client]:
    with live_server.client(ADMIN_TOKEN) as c:
        yield c


@pytest.fixture
def member(live_server) -> Iterator[httpx.Client]:
    with live_server.client(MEMBER_TOKEN) as c:
        yield c


@pytest.fixture
def other(live_server) -> Iterator[httpx.Client]:
    with live_server.client(OTHER_TOKEN) as c:
        yield c


def new_image(client: httpx.Client, **attrs) -> dict:
    body = {"name": "test", "disk_format": "raw", "container_format": "bare", **attrs}
    resp = client.post("/v2/images", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


@pytest.fixture
def client_env_isolated(monkeypatch, tmp_path) -> None:
    """No OS_* variables or clouds.yaml from the developer's machine; cwd is the test's tmp dir."""
    for var in list(os.environ):
        if var.startswith("OS_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    monkeypatch.chdir(tmp_path)

