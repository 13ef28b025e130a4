"""A private ``redis-server`` for tests that must kill or restart Redis (never the machine's own
on 6379): no persistence (``--save '' --appendonly no``), as the jobboard expects, on a free port."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    def __init__(self, workdir: Path, bind: str = "127.0.0.1") -> None:
        self.workdir = workdir
        self.bind = bind            # also listens here (another network namespace's way in)
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.bind}:{self.port}/0"

    def start(self) -> None:
        log = open(self.workdir / f"redis-{self.port}.log", "ab")
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", *sorted({"127.0.0.1", self.bind}),
                                      # another namespace's clients come from the bridge (a test network)
                                      "--protected-mode", "no" if self.bind != "127.0.0.1" else "yes", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir)],
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        """SIGKILL: everything it held is gone (nothing on disk)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> float:
        """Kill it and start it again, empty, on the same port; returns when it was killed."""
        self.kill()
        killed = time.time()
        self.start()
        return killed


@contextlib.contextmanager
def private_redis(workdir: Path, bind: str = "127.0.0.1") -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    pytest.importorskip("redis", reason="the redis client is a test dependency")
    server = PrivateRedis(workdir, bind)
    server.start()
    try:
        yield server
    finally:
        server.kill()
