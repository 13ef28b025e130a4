"""Hosts as network namespaces, for the split-deployment tests.

``Lab`` makes a bridge in the root namespace and one namespace per host, each joined to the
bridge by a veth pair (10.<n>.0.<k>/24; the root namespace is .1). A private PostgreSQL cluster
(``initdb`` + ``pg_ctl``, as the postgres user) and a private ``redis-server`` listen on the
bridge address, so the tests may kill them; the machine's own servers are never touched.
Processes of a host run with ``ip netns exec``. ``cut(a, b)`` makes host b unreachable from a.
Everything is torn down on exit, also after a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from tests.cluster import Deployment
from tests.conftest import TOKENS, LiveServer
from tests.redisd import PrivateRedis


def _sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def netns_available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    name = f"ffprobe{os.getpid()}"
    probe = _sh("ip", "netns", "add", name, check=False)
    if probe.returncode != 0:
        return f"cannot create a network namespace: {probe.stderr.strip()}"
    _sh("ip", "netns", "del", name, check=False)
    return None


def _pg_bin() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    return None


def _wait_port(host: str, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.3):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout}s")


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (trust auth on the bridge's subnet)."""
    workdir: Path
    bind: str
    subnet: str
    port: int = field(default_factory=lambda: random.randint(20000, 29999))

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.bind}:{self.port}/freezeframe"

    def _as_postgres(self, *cmd: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True, text=True)

    def init(self) -> None:
        bin_dir = _pg_bin()
        self.pg_ctl = str(bin_dir / "pg_ctl")
        # the postgres user cannot enter pytest's (root-only) directories: a directory of its own
        self.workdir = Path(tempfile.mkdtemp(prefix="ff-pg-"))
        self.data = self.workdir / "pgdata"
        shutil.chown(self.workdir, "postgres")
        self._as_postgres(str(bin_dir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
        with open(self.data / "pg_hba.conf", "a") as fh:
            fh.write(f"host all all {self.subnet} trust\n")
        self.start()
        self._as_postgres(str(bin_dir / "createdb"), "-h", self.bind, "-p", str(self.port), "freezeframe")

    def start(self) -> None:
        self._as_postgres(self.pg_ctl, "-D", str(self.data), "-l", str(self.workdir / "pg.log"), "-w", "start",
                          "-o", f"-c listen_addresses='127.0.0.1,{self.bind}' -p {self.port} -c fsync=off "
                                f"-c unix_socket_directories='{self.workdir}'")
        _wait_port(self.bind, self.port)

    def stop(self, mode: str = "fast") -> None:
        if hasattr(self, "data"):
            subprocess.run(["runuser", "-u", "postgres", "--", self.pg_ctl, "-D", str(self.data), "-m", mode,
                            "stop"], capture_output=True, text=True)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class Lab:
    workdir: Path
    tag: str = field(default_factory=lambda: f"{random.randint(0, 0xffff):04x}")
    net: int = field(default_factory=lambda: random.randint(100, 250))
    hosts: dict[str, str] = field(default_factory=dict)      # name -> address
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def gateway(self) -> str:
        return f"10.{self.net}.0.1"

    @property
    def bridge(self) -> str:
        return f"ffbr{self.tag}"

    def ns(self, host: str) -> str:
        return f"ff{self.tag}-{host}"

    def setup(self) -> None:
        _sh("ip", "link", "add", self.bridge, "type", "bridge")
        _sh("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _sh("ip", "link", "set", self.bridge, "up")

    def add_host(self, host: str) -> str:
        k = len(self.hosts) + 2
        ns, address = self.ns(host), f"10.{self.net}.0.{k}"
        outer, inner = f"ffv{self.tag}{k}", f"ffp{self.tag}{k}"
        _sh("ip", "netns", "add", ns)
        _sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        _sh("ip", "link", "set", inner, "netns", ns)
        _sh("ip", "link", "set", outer, "master", self.bridge)
        _sh("ip", "link", "set", outer, "up")
        for cmd in (("ip", "addr", "add", f"{address}/24", "dev", inner), ("ip", "link", "set", inner, "up"),
                    ("ip", "link", "set", "lo", "up")):
            _sh("ip", "netns", "exec", ns, *cmd)
        self.hosts[host] = address
        return address

    def cut(self, host: str, unreachable: str) -> None:
        """From ``host``, ``unreachable``'s address goes nowhere."""
        _sh("ip", "netns", "exec", self.ns(host), "ip", "route", "add", "blackhole", f"{self.hosts[unreachable]}/32")

    def mend(self, host: str, unreachable: str) -> None:
        _sh("ip", "netns", "exec", self.ns(host), "ip", "route", "del", "blackhole", f"{self.hosts[unreachable]}/32",
            check=False)

    def processes(self, host: str) -> dict[int, list[str]]:
        """What runs in ``host``'s namespace: pid -> argv (a process that ended meanwhile is left out)."""
        found = {}
        for pid in _sh("ip", "netns", "pids", self.ns(host), check=False).stdout.split():
            with contextlib.suppress(OSError, ValueError):
                argv = Path(f"/proc/{int(pid)}/cmdline").read_bytes().split(b"\0")
                found[int(pid)] = [a.decode(errors="replace") for a in argv if a]
        return found

    def spawn(self, host: str, args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        """``python -m freezeframe ARGS`` on ``host`` (its output appended to ``log``)."""
        fh = open(log, "ab")
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(host), sys.executable, "-m", "freezeframe", *args],
                                stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def teardown(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
        for host in self.hosts:
            # whatever still runs in the namespace (qemu of an embedded libvirt, qemu-nbd...)
            pids = _sh("ip", "netns", "pids", self.ns(host), check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _sh("ip", "netns", "del", self.ns(host), check=False)
        _sh("ip", "link", "del", self.bridge, check=False)


@contextlib.contextmanager
def lab(workdir: Path, hosts: tuple[str, ...]) -> Iterator[tuple[Lab, PrivatePostgres, PrivateRedis]]:
    """Namespaces for ``hosts``, a private PostgreSQL and Redis on the bridge (skip with the
    reason when this machine cannot make namespaces or lacks the servers)."""
    why = netns_available()
    if why:
        pytest.skip(why)
    if _pg_bin() is None or shutil.which("redis-server") is None:
        pytest.skip("PostgreSQL binaries (initdb) or redis-server are not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    the_lab = Lab(workdir)
    the_lab.setup()
    pg = redis = None
    try:
        for host in hosts:
            the_lab.add_host(host)
        pg = PrivatePostgres(workdir / "pg", the_lab.gateway, f"10.{the_lab.net}.0.0/24")
        pg.init()
        redis = PrivateRedis(workdir, bind=the_lab.gateway)
        redis.start()
        yield the_lab, pg, redis
    finally:
        the_lab.teardown()
        if redis is not None:
            redis.kill()
        if pg is not None:
            pg.remove()


API_PORT, HOST_PORT = 9292, 9393


@dataclass
class Split(Deployment):
    """A split deployment on a ``Lab``: ``freezeframe api``, ``freezeframe compute --host``
    and ``freezeframe conductor`` processes, each on its own host (namespace)."""
    lab: Lab | None = None
    env: dict = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    # A host's data dir when not <tmp>/<host> (a libvirt host's must be traversable by QEMU's user).
    data_dirs: dict[str, Path] = field(default_factory=dict)

    @property
    def tokens(self) -> Path:
        return self.tmp / "tokens.json"

    def data_dir(self, host: str) -> Path:
        return Path(self.data_dirs.get(host, self.tmp / host))

    def log(self, name: str) -> Path:
        return self.tmp / f"{name}.log"

    def log_text(self, name: str) -> str:
        return self.log(name).read_text(errors="replace") if self.log(name).exists() else ""

    def _common(self, host: str) -> list[str]:
        return ["--data-dir", str(self.data_dir(host)), "--database-url", self.database_url,
                "--tokens-file", str(self.tokens)]

    def start_api(self, host: str = "api", workers: int = 2) -> LiveServer:
        address = self.lab.hosts[host]
        proc = self.lab.spawn(host, ["api", *self._common(host), "--host", address, "--port", str(API_PORT),
                                     "--workers", str(workers)], self.log(host), self.env)
        self.procs[host] = proc
        self.server = LiveServer(url=f"http://{address}:{API_PORT}", data_dir=self.data_dir(host), process=proc,
                                 log_path=self.log(host))
        self._wait_http(host, f"{self.server.url}/healthcheck")
        return self.server

    @property
    def image_url(self) -> str:
        return f"http://{self.lab.hosts['api']}:{API_PORT}/image"

    def start_compute(self, host: str, *, driver: str = "fake", env: dict | None = None) -> subprocess.Popen:
        address = self.lab.hosts[host]
        proc = self.lab.spawn(host, ["compute", *self._common(host), "--host", host, "--listen", address,
                                     "--port", str(HOST_PORT), "--driver", driver, "--image-url", self.image_url],
                              self.log(host), {**self.env, **(env or {})})
        self.procs[host] = proc
        self._wait_http(host, f"http://{address}:{HOST_PORT}/healthcheck")
        return proc

    def start_conductor(self, host: str, *, env: dict | None = None) -> subprocess.Popen:
        before = self.log_text(host).count(f"conductor {host} started")
        proc = self.lab.spawn(host, ["conductor", *self._common(host), "--image-url", self.image_url, "--id", host],
                              self.log(host), {**self.env, "FREEZEFRAME_COMPUTE__ENABLED": "false", **(env or {})})
        self.procs[host] = proc
        deadline = time.monotonic() + 60
        while self.log_text(host).count(f"conductor {host} started") <= before:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"conductor {host} did not start:\n{self.log_text(host)[-3000:]}")
            time.sleep(0.05)
        return proc

    def _wait_http(self, name: str, url: str, timeout: float = 60) -> None:
        import httpx
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited:\n{self.log_text(name)[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not answer at {url}:\n{self.log_text(name)[-3000:]}")

    def kill(self, name: str) -> float:
        """kill -9 of one role's process; returns when (time.time())."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        killed = time.time()
        proc.wait(10)
        return killed


def split_env(redis: PrivateRedis, gateway: str, *, lease_ttl: float, extra: dict | None = None) -> dict:
    return {"FREEZEFRAME_TESTING__ENABLED": "true", "FREEZEFRAME_STORE__FSYNC": "false",
            "FREEZEFRAME_CONDUCTOR__JOBBOARD_URL": redis.url,
            "FREEZEFRAME_CONDUCTOR__COORDINATION_URL": f"redis://{gateway}:{redis.port}?timeout=3",
            "FREEZEFRAME_CONDUCTOR__LEASE_TTL": str(lease_ttl), "FREEZEFRAME_CONDUCTOR__SCAN_INTERVAL": "0.5",
            "FREEZEFRAME_COMPUTE__HEARTBEAT_INTERVAL": "1", "FREEZEFRAME_COMPUTE__HOST_DOWN_AFTER": "4",
            **(extra or {})}


@contextlib.contextmanager
def split(tmp: Path, hosts: tuple[str, ...] = ("api", "ha", "hb", "c1", "c2"), *, lease_ttl: float = 3.0,
          env: dict | None = None) -> Iterator[Split]:
    """A lab with these hosts and the api started on "api"; the tests start the rest."""
    with lab(tmp / "lab", hosts) as (the_lab, pg, redis):
        d = Split(tmp, redis, pg.url, None, lab=the_lab, env=split_env(redis, the_lab.gateway, lease_ttl=lease_ttl,
                                                                       extra=env))
        d.tokens.write_text(json.dumps(TOKENS))
        d.pg = pg
        d.start_api()
        yield d
