"""Run freezeframe-agent as a subprocess (`python -m freezeframe.agent ...`) for tests.

    with AgentProcess(api_url=..., node_uuid=..., disks=["/tmp/disk.img,name=/dev/sda"]) as agent:
        agent.api            # the command API as reached from here, e.g. http://127.0.0.1:40123
        agent.callback_url   # what its heartbeats advertise
        agent.status()       # GET /v1/status
        agent.command("snapshot.stream_image", {...}, token=...)
        agent.terminate()    # SIGTERM: a running command ends FAILED, a last heartbeat is sent
        agent.kill()         # SIGKILL: the agent dies mid-stream

`netns=` runs it under a command prefix (e.g. ["ip", "netns", "exec", "ns1"]).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


class AgentProcess:
    def __init__(
        self,
        *,
        api_url: str | None = None,
        node_uuid: str | None = None,
        disks: list[str] = (),
        listen: str = "127.0.0.1:0",
        advertise_url: str | None = None,
        agent_token: str | None = None,
        heartbeat_timeout: float | None = None,
        lookup_timeout: float | None = None,
        retry_backoff: float | None = 0.2,
        extra_args: list[str] = (),
        prefix: list[str] = (),
        python: str = sys.executable,
        cmdline_file: str | None = None,
        log_level: str = "INFO",
        start_timeout: float = 20.0,
    ):
        args = [*prefix, python, "-m", "freezeframe.agent", "--listen", listen, "--log-level", log_level]
        if api_url:
            args += ["--api-url", api_url]
        if node_uuid:
            args += ["--node-uuid", node_uuid]
        for disk in disks:
            args += ["--disk", disk]
        if advertise_url:
            args += ["--advertise-url", advertise_url]
        if agent_token:
            args += ["--agent-token", agent_token]
        if heartbeat_timeout is not None:
            args += ["--heartbeat-timeout", str(heartbeat_timeout)]
        if lookup_timeout is not None:
            args += ["--lookup-timeout", str(lookup_timeout)]
        if retry_backoff is not None:
            args += ["--retry-backoff", str(retry_backoff)]
        # tests must not read the host's /proc/cmdline (it may carry ipa-* parameters)
        args += ["--cmdline", cmdline_file or os.devnull, *extra_args]
        self.args = args
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self.stderr_lines: list[str] = []

    def start(self) -> "AgentProcess":
        env = dict(os.environ)
        env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(self.start_timeout)
        line = ready[0] if ready else ""
        if not line.startswith("freezeframe-agent listening "):
            self.kill()
            raise RuntimeError(f"the agent did not start: {line!r}\n{self.stderr}")
        words = line.split()
        self.api = words[2].replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")
        self.url = self.api
        self.callback_url = words[4]
        return self

    def _drain_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    # -- the command API --------------------------------------------------------------------
    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 30.0) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.api + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def status(self) -> dict:
        return self.request("GET", "/v1/status")[1]

    def command(self, name: str, params: dict, token: str | None, wait: bool = False) -> tuple[int, dict]:
        query = f"?wait={'true' if wait else 'false'}" + (f"&agent_token={token}" if token is not None else "")
        return self.request("POST", "/v1/commands/" + query, {"name": name, "params": params})

    def get_command(self, command_id: str, token: str, wait: bool = False) -> tuple[int, dict]:
        return self.request("GET", f"/v1/commands/{command_id}?wait={str(wait).lower()}&agent_token={token}")

    def wait_command(self, command_id: str, token: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code, body = self.get_command(command_id, token)
            if code == 200 and body["command_status"] != "RUNNING":
                return body
            time.sleep(0.1)
        raise TimeoutError(f"command {command_id} still running after {timeout} s")

    # -- lifecycle -------------------------------------------------------------------------
    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode if self.proc else 0

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> "AgentProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.terminate()
