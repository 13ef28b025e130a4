"""The agent snapshot flow with the REAL agent process (``python -m freezeframe.agent``) through a
real ``serve`` (API + conductor + WebDAV area + image service): fake-hardware with
snapshot_interface "agent" and fake power/boot, so the test plays the node's boot — when the
node reaches "snapshot wait" (its fake BMC was told to boot the agent image), the test starts
the agent against a sparse file standing for the node's disk (hundreds of MiB apparent, some
MiB of known data at known offsets, 1 MiB stream chunks).

The agent runs in a network namespace of its own, reaching the host over a veth pair (serve
and its WebDAV area listen on the host's end of it), as a booted node reaches its conductor;
``tc`` slows that link where a test must catch the stream in the middle. Where namespaces
cannot be made (not root), everything runs on loopback and the tests that need a slow link
are skipped.

Issue 10 item 8's failure cases: the happy path (bytes equal, copy removed, token wiped, a VM
snapshot's workflow states), root-device hints, bad and missing agent tokens, heartbeat
timeout, abort in snapshot wait, the agent killed mid-stream then a retry that resumes, kill -9
of serve mid-stream and after LOCAL_SNAPSHOT_COMPLETE, deleted from snapshot failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.agent_proc import AgentProcess
from tests.conftest import ADMIN_TOKEN, TOKENS
from tests.netns import netns_available

MAX = "1.116"
MiB = 1 << 20
GiB = 1 << 30
CHUNK = MiB
HB_INVALID = "Invalid or missing agent token received."


# -- the link between the host and the node ------------------------------------------------------

def _sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


@dataclass
class Link:
    """A namespace for the node, joined to the host by a veth pair (host .1, node .2 of a /24
    no interface of this machine uses); or loopback for both when namespaces cannot be made."""
    host_ip: str = "127.0.0.1"
    node_ip: str = "127.0.0.1"
    ns: str | None = None
    inner: str = ""
    outer: str = ""

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns] if self.ns else []

    @classmethod
    def make(cls) -> "Link":
        if netns_available() is not None:
            return cls()
        used = _sh("ip", "-4", "-o", "addr").stdout + _sh("ip", "-4", "route").stdout
        nets = [n for n in range(20, 250) if f"10.{n}." not in used]
        net = random.choice(nets)
        tag = f"{os.getpid() % 10000:04d}{random.randint(0, 99):02d}"
        link = cls(host_ip=f"10.{net}.0.1", node_ip=f"10.{net}.0.2", ns=f"ffbm{tag}", inner=f"ffbn{tag}",
                   outer=f"ffbh{tag}")
        try:
            _sh("ip", "netns", "add", link.ns)
            _sh("ip", "link", "add", link.outer, "type", "veth", "peer", "name", link.inner)
            _sh("ip", "link", "set", link.inner, "netns", link.ns)
            _sh("ip", "addr", "add", f"{link.host_ip}/24", "dev", link.outer)
            _sh("ip", "link", "set", link.outer, "up")
            for cmd in (("ip", "addr", "add", f"{link.node_ip}/24", "dev", link.inner),
                        ("ip", "link", "set", link.inner, "up"), ("ip", "link", "set", "lo", "up")):
                _sh("ip", "netns", "exec", link.ns, *cmd)
        except subprocess.CalledProcessError:
            link.remove()
            raise
        return link

    def slow(self, mbit: int) -> None:
        """The node's uplink limited to ``mbit`` (what it sends: the stream)."""
        assert self.ns, "a slow link needs a network namespace"
        _sh("ip", "netns", "exec", self.ns, "tc", "qdisc", "replace", "dev", self.inner, "root", "tbf",
            "rate", f"{mbit}mbit", "burst", "64kb", "latency", "500ms")

    def fast(self) -> None:
        if self.ns:
            _sh("ip", "netns", "exec", self.ns, "tc", "qdisc", "del", "dev", self.inner, "root", check=False)

    def remove(self) -> None:
        if self.ns:
            for pid in _sh("ip", "netns", "pids", self.ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _sh("ip", "link", "del", self.outer, check=False)
            _sh("ip", "netns", "del", self.ns, check=False)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def link():
    the_link = Link.make()
    yield the_link
    the_link.remove()


def need_slow_link(link: Link) -> None:
    if not link.ns:
        pytest.skip(f"catching the stream in the middle needs a rate-limited link (a network namespace): "
                    f"{netns_available()}")


# -- serve -------------------------------------------------------------------------------------------

BASE_ENV = {
    "FREEZEFRAME_STORE__FSYNC": "false", "FREEZEFRAME_COMPUTE__DRIVER": "fake",
    "FREEZEFRAME_CONDUCTOR__SCAN_INTERVAL": "0.5",
    "FREEZEFRAME_BAREMETAL__CHUNK_SIZE": str(CHUNK),
    "FREEZEFRAME_BAREMETAL__HEARTBEAT_TIMEOUT": "1",       # the agent beats every 0.3-0.6 s
    "FREEZEFRAME_BAREMETAL__AGENT_WAIT_TIMEOUT": "60",
    "FREEZEFRAME_BAREMETAL__AGENT_LOST_AFTER": "30",
    "FREEZEFRAME_BAREMETAL__TRANSFER_GRACE": "3600",
    "FREEZEFRAME_IMAGES__CHUNK_SIZE": str(MiB),
    "FREEZEFRAME_CONDUCTOR__UPLOAD_CHUNK": str(MiB),
}


@dataclass
class Cloud:
    """``freezeframe serve`` listening on the host's end of the link; its WebDAV area on a port
    chosen here (so a restart finds it at the same URL, as an agent expects)."""
    data_dir: Path
    link: Link
    env: dict = field(default_factory=dict)
    process: subprocess.Popen | None = None

    def __post_init__(self):
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port(self.link.host_ip)
        self.dav_port = free_port(self.link.host_ip)
        self.url = f"http://{self.link.host_ip}:{self.port}"
        self.api_url = f"{self.url}/baremetal"
        self.dav_url = f"http://{self.link.host_ip}:{self.dav_port}"
        self.area = self.data_dir / "baremetal-transfers"
        (self.data_dir / "test-tokens.json").write_text(json.dumps(TOKENS))
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.data_dir / "serve.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, extra_env: dict | None = None) -> "Cloud":
        env = {**os.environ, **BASE_ENV,
               "FREEZEFRAME_BAREMETAL__WEBDAV_BIND": f"{self.link.host_ip}:{self.dav_port}",
               "FREEZEFRAME_BAREMETAL__API_URL": self.api_url, **self.env, **(extra_env or {})}
        if any(k.startswith("FREEZEFRAME_TESTING__") for k in env):
            env["FREEZEFRAME_TESTING__ENABLED"] = "true"
        cmd = [sys.executable, "-m", "freezeframe", "serve", "--data-dir", str(self.data_dir), "--host",
               self.link.host_ip, "--port", str(self.port), "--auth", "tokens", "--tokens-file",
               str(self.data_dir / "test-tokens.json")]
        self.process = subprocess.Popen(cmd, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT, env=env)
        self.starts += 1
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"serve exited:\n{self.log()[-3000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthcheck", timeout=1).status_code == 200 and \
                        self.log().count("webdav: serving the transfer area") >= self.starts:
                    return self
            time.sleep(0.05)
        raise AssertionError(f"serve did not start:\n{self.log()[-3000:]}")

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()

    # -- clients --------------------------------------------------------------------------------------
    def ironic(self) -> httpx.Client:
        return httpx.Client(base_url=self.api_url + "/v1", timeout=30,
                            headers={"X-OpenStack-Ironic-API-Version": MAX, "X-Auth-Token": ADMIN_TOKEN})

    def images(self) -> httpx.Client:
        return httpx.Client(base_url=self.url + "/image", timeout=60, headers={"X-Auth-Token": ADMIN_TOKEN})

    def root(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, headers={"X-Auth-Token": ADMIN_TOKEN})

    # -- the store, read as it is (what the API does not show: the agent token, the transfers) ---
    def query(self, sql: str, *args) -> list[tuple]:
        with contextlib.closing(sqlite3.connect(f"file:{self.data_dir / 'freezeframe.db'}?mode=ro", uri=True,
                                                timeout=10)) as db:
            return db.execute(sql, args).fetchall()

    def agent_token(self, node: str) -> str | None:
        return self.query("SELECT agent_token FROM baremetal_nodes WHERE id = ?", node)[0][0]

    def transfers(self, node: str) -> list[tuple[str, str, str | None]]:
        """(id, path, removed_at) of the node's transfers, oldest first."""
        return self.query("SELECT id, path, removed_at FROM baremetal_transfers WHERE node_id = ? "
                          "ORDER BY created_at", node)

    def copy_dir(self, node: str) -> Path:
        [(_, path, removed)] = [t for t in self.transfers(node) if t[2] is None]
        return self.area / path


def cloud_at(tmp: Path, link: Link, **env) -> Cloud:
    return Cloud(tmp, link, env={k: str(v) for k, v in env.items()}).start()


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, link):
    the_cloud = cloud_at(tmp_path_factory.mktemp("bma") / "ff", link)
    yield the_cloud
    the_cloud.stop()


# -- the node, its disk, its agent ----------------------------------------------------------------

def pattern(seed: str, length: int) -> bytes:
    return random.Random(seed).randbytes(length)


def make_disk(path: Path, apparent: int, pieces: list[tuple[int, int]], seed: str) -> dict[int, bytes]:
    """A sparse file of ``apparent`` bytes holding known data at known offsets; returns them."""
    data = {}
    with open(path, "wb") as fh:
        fh.truncate(apparent)
        for n, (offset, length) in enumerate(pieces):
            data[offset] = pattern(f"{seed}-{n}", length)
            fh.seek(offset)
            fh.write(data[offset])
    return data


# 320 MiB apparent, ~6.6 MiB of data in 9 chunks of 1 MiB: the first, one across a chunk
# boundary, unaligned ones, the last bytes.
SMALL = (320 * MiB, [(0, MiB), (5 * MiB + 4096, 300 << 10), (100 * MiB - 1000, 2 * MiB),
                     (200 * MiB + 12345, MiB), (320 * MiB - 65536, 65536)])
# for the kills mid-stream: 16 data chunks (at 40 Mbit/s the stream lasts ~3-4 s)
STRIPED = (256 * MiB, [(i * 16 * MiB + 8192, MiB - 8192) for i in range(16)])


def data_chunks(spec) -> list[int]:
    size, pieces = spec
    return sorted({i for off, n in pieces for i in range(off // CHUNK, (off + n - 1) // CHUNK + 1)})


def start_agent(cloud: Cloud, node: str, disks: list[str], **kw) -> AgentProcess:
    return AgentProcess(api_url=cloud.api_url, node_uuid=node, disks=disks, listen=f"{cloud.link.node_ip}:0",
                        prefix=cloud.link.prefix, **{"retry_backoff": 0.5, **kw}).start()


@contextlib.contextmanager
def agents():
    """Every agent a test starts, SIGTERMed at its end."""
    started: list[AgentProcess] = []
    try:
        yield started
    finally:
        for agent in started:
            agent.terminate(10)


class Watch:
    """The node's provision states as seen by polling the API (in order, repeats collapsed)."""

    def __init__(self, cloud: Cloud, node: str):
        self.cloud, self.node = cloud, node
        self.seen: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        with self.cloud.ironic() as c:
            while not self._stop.is_set():
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    state = c.get(f"/nodes/{self.node}", timeout=5).json()["provision_state"]
                    if not self.seen or self.seen[-1] != state:
                        self.seen.append(state)
                self._stop.wait(0.03)

    def stop(self) -> list[str]:
        """The states seen, the last one included (looked at once more after the thread stopped)."""
        self._stop.set()
        self._thread.join(10)
        with self.cloud.ironic() as c:
            state = c.get(f"/nodes/{self.node}", timeout=5).json()["provision_state"]
        if not self.seen or self.seen[-1] != state:
            self.seen.append(state)
        return self.seen


def new_node(c: httpx.Client, name: str, **fields) -> str:
    resp = c.post("/nodes", json={"driver": "fake-hardware", "name": name, "snapshot_interface": "agent", **fields})
    assert resp.status_code == 201, resp.text
    node = resp.json()["uuid"]
    for verb, state in (("manage", "manageable"), ("adopt", "active")):
        assert c.put(f"/nodes/{node}/states/provision", json={"target": verb}).status_code == 202
        wait_state(c, node, state)
    return node


def new_image(cloud: Cloud, name: str) -> str:
    with cloud.images() as images:
        resp = images.post("/v2/images", json={"name": name, "disk_format": "qcow2", "container_format": "bare"})
        assert resp.status_code == 201, resp.text
        return resp.json()["id"]


def provision(c: httpx.Client, node: str, target: str, **body) -> httpx.Response:
    resp = c.put(f"/nodes/{node}/states/provision", json={"target": target, **body})
    assert resp.status_code == 202, resp.text
    return resp


ACTING = ("snapshot wait", "snapshotting", "deleting")     # states with a target


def wait_state(c: httpx.Client, node: str, state: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = c.get(f"/nodes/{node}").json()
        if body["provision_state"] == state and (body["target_provision_state"] is None or state in ACTING):
            return body
        assert time.monotonic() < deadline, f"not {state}: {body['provision_state']} / {body['last_error']}"
        time.sleep(0.05)


def wait_for(what, check, timeout: float = 30, every: float = 0.02):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)
    return value


def workflows(cloud: Cloud, node: str, kind: str = "baremetal-snapshot") -> list[dict]:
    with cloud.root() as c:
        return c.get("/v1/workflows", params={"resource_id": node, "kind": kind}).json()["workflows"]


def workflow(cloud: Cloud, workflow_id: str) -> dict:
    with cloud.root() as c:
        return c.get(f"/v1/workflows/{workflow_id}").json()["workflow"]


def wait_workflow(cloud: Cloud, workflow_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while (wf := workflow(cloud, workflow_id))["state"] not in ("IMAGE_ACTIVE", "COMPLETE", "REVERTED", "CANCELLED"):
        assert time.monotonic() < deadline, wf
        time.sleep(0.1)
    return wf


def states_of(wf: dict) -> list[str]:
    """The workflow's history, repeats collapsed, UPLOAD_<n>_COMPLETE as one."""
    out: list[str] = []
    for h in wf["history"]:
        state = h["state"]
        if state.startswith("UPLOAD_") and state.split("_")[1].isdigit():
            state = "UPLOAD_<n>_COMPLETE"
        if not out or out[-1] != state:
            out.append(state)
    return out


VM_SNAPSHOT_STATES = ["PENDING", "LOCAL_SNAPSHOT_STARTED", "LOCAL_SNAPSHOT_COMPLETE", "UPLOAD_BEGIN",
                      "UPLOAD_<n>_COMPLETE", "UPLOAD_COMPLETE", "IMAGE_ACTIVE"]


def assert_vm_snapshot_states(wf: dict) -> None:
    seq = states_of(wf)
    if seq and seq[0] != "PENDING":           # (a history may start at the first move)
        seq = ["PENDING", *seq]
    assert seq == VM_SNAPSHOT_STATES, seq


def assert_image_is_disk(cloud: Cloud, image_id: str, disk: Path, tmp: Path) -> None:
    """The image is active, and its bytes are the disk's (qemu-img compare, sizes equal)."""
    with cloud.images() as images:
        image = wait_for(f"image {image_id} active", lambda: (
            (i := images.get(f"/v2/images/{image_id}").json())["status"] == "active" and i), timeout=20)
        assert image["disk_format"] == "qcow2"
        out = tmp / f"{image_id}.qcow2"
        with images.stream("GET", f"/v2/images/{image_id}/file") as resp, open(out, "wb") as fh:
            assert resp.status_code == 200
            for block in resp.iter_bytes(1 << 20):
                fh.write(block)
    info = json.loads(_sh("qemu-img", "info", "--output", "json", str(out)).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == disk.stat().st_size
    compare = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(out), str(disk)],
                             capture_output=True, text=True)
    assert compare.returncode == 0, compare.stdout + compare.stderr


def heartbeat(cloud: Cloud, node: str, token: str | None) -> httpx.Response:
    body = {"callback_url": f"http://{cloud.link.node_ip}:9999", "agent_version": "impostor"}
    if token is not None:
        body["agent_token"] = token
    return httpx.post(f"{cloud.api_url}/v1/heartbeat/{node}", json=body,
                      headers={"X-OpenStack-Ironic-API-Version": MAX}, timeout=10)


def fault(resp: httpx.Response) -> str:
    return json.loads(resp.json()["error_message"])["faultstring"]


def bins(directory: Path) -> dict[int, tuple[int, int]]:
    """The complete chunks in a copy: index -> (inode, mtime_ns)."""
    out = {}
    for p in directory.glob("c-*.bin"):
        with contextlib.suppress(FileNotFoundError):
            st = p.stat()
            out[int(p.name[2:10])] = (st.st_ino, st.st_mtime_ns)
    return out


# -- 1. the happy path ----------------------------------------------------------------------------------

def test_agent_streams_the_disk_into_an_active_image(cloud, tmp_path):
    disk = tmp_path / "sda.img"
    make_disk(disk, *SMALL, seed="happy")
    with cloud.ironic() as c, agents() as started:
        node = new_node(c, "bm-happy")
        image = new_image(cloud, "bm-happy-snap")
        watch = Watch(cloud, node)
        provision(c, node, "snapshot", image_ref=image)
        wait_state(c, node, "snapshot wait")
        assert cloud.agent_token(node) is None                   # minted at the agent's lookup only
        # the node "boots the agent image": size= lets a 320 MiB file pass for a disk >= 4 GiB
        agent = start_agent(cloud, node, [f"{disk},name=/dev/sda,size=8G"])
        started.append(agent)
        token = wait_for("the agent's lookup", lambda: cloud.agent_token(node), timeout=10)
        assert len(token) >= 32
        copy = cloud.copy_dir(node)
        body = wait_state(c, node, "active", timeout=60)
        seen = watch.stop()
        assert body["last_error"] is None and body["reservation"] is None
        [flow] = workflows(cloud, node)
        wf = wait_workflow(cloud, flow["id"])
        assert wf["state"] == "IMAGE_ACTIVE", wf
        assert_vm_snapshot_states(wf)
        details = " | ".join(h["detail"] or "" for h in wf["history"])
        assert "snapshot wait" in details and "streaming the disk" in details and "verified" in details
        assert {"snapshot wait", "snapshotting"} <= set(seen) and seen[-1] == "active", seen
        assert seen.index("snapshot wait") < len(seen) - 1 - seen[::-1].index("snapshotting"), seen
        assert_image_is_disk(cloud, image, disk, tmp_path)
        assert not copy.exists()                                  # the intermediate copy is removed
        assert [t[2] is not None for t in cloud.transfers(node)] == [True]
        assert cloud.agent_token(node) is None                   # the agent token wiped
        assert token not in cloud.log()                          # (and never written to the log)
        assert cloud.query("SELECT agent_url FROM baremetal_nodes WHERE id = ?", node) == [(None,)]
        # the agent still runs (fake power): its commands want the token it was given
        assert agent.command("system.get_status", {}, token=None)[0] == 401
        assert agent.command("system.get_status", {}, token="x" * 43)[0] == 401
        code, listed = agent.request("GET", f"/v1/commands/?agent_token={token}")
        assert code == 200
        [command] = [cmd for cmd in listed["commands"] if cmd["command_name"] == "snapshot.stream_image"]
        result = command["command_result"]
        assert command["command_status"] == "SUCCEEDED" and result["device"] == str(disk)
        assert result["size"] == SMALL[0] and result["resumed_from_chunk"] == 0
        assert [ch["index"] for ch in result["chunks"]] == data_chunks(SMALL)     # holes not sent
        assert result["sent_bytes"] == sum(ch["length"] for ch in result["chunks"])


# -- 2. root-device hints ----------------------------------------------------------------------------------

def test_root_device_hints_choose_the_disk(cloud, tmp_path):
    """Three disks by apparent size: 1 GiB (too small for a root disk), 4.5 GiB and 5 GiB.
    properties.root_device {"serial": ...} picks the 5 GiB one; no hints pick the smallest
    >= 4 GiB (the 4.5 GiB one)."""
    disks = {}
    for name, serial, size in (("small", "SER-C", GiB), ("mid", "SER-A", 4608 * MiB), ("big", "SER-B", 5 * GiB)):
        disks[name] = tmp_path / f"{name}.img"
        make_disk(disks[name], size, [(0, 64 << 10), (size // 2 + 4096, MiB), (size - 8192, 8192)], seed=name)
    args = [f"{disks['small']},name=/dev/sda,serial=SER-C", f"{disks['mid']},name=/dev/sdb,serial=SER-A",
            f"{disks['big']},name=/dev/sdc,serial=SER-B"]
    with cloud.ironic() as c, agents() as started:
        node = new_node(c, "bm-hints", properties={"root_device": {"serial": "SER-B"}})
        for hints, expected in (({"serial": "SER-B"}, "big"), (None, "mid")):
            if hints is None:
                resp = c.patch(f"/nodes/{node}", json=[{"op": "remove", "path": "/properties/root_device"}])
                assert resp.status_code == 200 and "root_device" not in resp.json()["properties"], resp.text
            image = new_image(cloud, f"bm-hints-{expected}")
            provision(c, node, "snapshot", image_ref=image)
            wait_state(c, node, "snapshot wait")
            started.append(start_agent(cloud, node, args))
            body = wait_state(c, node, "active", timeout=60)
            assert body["last_error"] is None
            assert_image_is_disk(cloud, image, disks[expected], tmp_path)
            started.pop().terminate(10)


# -- 3. bad and missing agent tokens -----------------------------------------------------------------

def test_bad_and_missing_agent_tokens_stream_nothing(cloud, tmp_path):
    disk = tmp_path / "sda.img"
    make_disk(disk, *SMALL, seed="tokens")
    with cloud.ironic() as c, agents() as started:
        node = new_node(c, "bm-tokens")
        provision(c, node, "snapshot", image_ref=new_image(cloud, "bm-tokens-snap"))
        wait_state(c, node, "snapshot wait")
        copy = cloud.copy_dir(node)
        # heartbeats: no token, a wrong one, an empty one -> 400 (the node takes no word of them)
        for token in (None, "wrong-" + secrets.token_urlsafe(32), ""):
            resp = heartbeat(cloud, node, token)
            assert resp.status_code == 400 and fault(resp) == HB_INVALID, resp.text
        assert cloud.query("SELECT agent_url, agent_last_heartbeat, agent_token FROM baremetal_nodes WHERE id = ?",
                           node) == [(None, None, None)]
        time.sleep(0.5)
        assert c.get(f"/nodes/{node}").json()["provision_state"] == "snapshot wait"

        # the agent's command API (standalone: it holds a token of its own): without it, or
        # with a wrong one, nothing runs
        token = secrets.token_urlsafe(32)
        agent = AgentProcess(agent_token=token, disks=[f"{disk},name=/dev/sda,size=8G"],
                             listen=f"{cloud.link.node_ip}:0", prefix=cloud.link.prefix, retry_backoff=0.1).start()
        started.append(agent)
        [(username,)] = cloud.query("SELECT username FROM baremetal_transfers WHERE node_id = ?", node)
        params = {"url": f"{cloud.dav_url}/{copy.name}/", "username": username, "password": "guessed",
                  "chunk_size": CHUNK}
        for given in (None, "", token[:-1] + ("A" if token[-1] != "A" else "B")):
            code, body = agent.command("snapshot.stream_image", params, token=given)
            assert code == 401, body
            assert agent.request("GET", "/v1/commands/" + (f"?agent_token={given}" if given else ""))[0] == 401
        assert agent.request("GET", f"/v1/commands/?agent_token={token}") == (200, {"commands": []})
        # the token alone is not the area's credential: the WebDAV server refuses the stream
        code, body = agent.command("snapshot.stream_image", params, token=token)
        assert code == 200, body
        done = agent.wait_command(body["id"], token, timeout=30)
        assert done["command_status"] == "FAILED" and "401" in json.dumps(done["command_error"]), done
        assert sorted(p.name for p in copy.iterdir()) == []      # nothing streamed
        # tidy: abort (snapshot wait -> snapshot failed), abort again (-> active)
        provision(c, node, "abort")
        wait_state(c, node, "snapshot failed")
        provision(c, node, "abort")
        wait_state(c, node, "active")


# -- 4. heartbeat timeout --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def impatient(tmp_path_factory, link):
    """A serve that waits 3 s for the agent's first heartbeat and calls it lost after 2.5 s."""
    the_cloud = cloud_at(tmp_path_factory.mktemp("bmi") / "ff", link, FREEZEFRAME_BAREMETAL__AGENT_WAIT_TIMEOUT=3,
                         FREEZEFRAME_BAREMETAL__AGENT_LOST_AFTER=2.5)
    yield the_cloud
    the_cloud.stop()


def test_no_heartbeat_in_time_is_snapshot_failed(impatient):
    cloud = impatient
    with cloud.ironic() as c:
        node = new_node(c, "bm-silent")
        image = new_image(cloud, "bm-silent-snap")
        provision(c, node, "snapshot", image_ref=image)
        wait_state(c, node, "snapshot wait")
        began = time.monotonic()
        body = wait_state(c, node, "snapshot failed", timeout=20)        # no agent ever starts
        assert time.monotonic() - began > 1.5
        assert "the agent did not heartbeat within 3 s" in body["last_error"], body["last_error"]
        [flow] = workflows(cloud, node)
        wf = wait_workflow(cloud, flow["id"])
        assert wf["state"] == "REVERTED" and "did not heartbeat within 3 s" in wf["failure_reason"]
        assert cloud.agent_token(node) is None and body["reservation"] is None
        assert cloud.copy_dir(node).is_dir()                  # kept: a retry may use it
        with cloud.images() as images:
            assert images.get(f"/v2/images/{image}").json()["status"] == "queued"


# -- 5. abort during snapshot wait ----------------------------------------------------------------------

def image_status(cloud: Cloud, image_id: str) -> str:
    with cloud.images() as images:
        return images.get(f"/v2/images/{image_id}").json()["status"]


def test_abort_in_snapshot_wait_then_abort_again(cloud):
    with cloud.ironic() as c:
        node = new_node(c, "bm-abort")
        image = new_image(cloud, "bm-abort-snap")
        provision(c, node, "snapshot", image_ref=image)
        wait_state(c, node, "snapshot wait")
        copy = cloud.copy_dir(node)
        provision(c, node, "abort")
        body = wait_state(c, node, "snapshot failed")
        assert "aborted by request" in body["last_error"], body["last_error"]
        [flow] = workflows(cloud, node)
        assert wait_workflow(cloud, flow["id"])["state"] == "REVERTED"
        time.sleep(0.5)
        body = c.get(f"/nodes/{node}").json()
        assert body["provision_state"] == "snapshot failed"        # the woken workflow did not move it again
        assert copy.is_dir()                                      # kept in snapshot failed
        provision(c, node, "abort")
        body = wait_state(c, node, "active")
        assert body["last_error"] is None and body["reservation"] is None
        [abort] = workflows(cloud, node, "baremetal-abort")
        assert wait_workflow(cloud, abort["id"])["state"] == "COMPLETE"
        assert not copy.exists()                                  # removed by the abort
        assert all(t[2] is not None for t in cloud.transfers(node))
        assert image_status(cloud, image) == "queued"             # the user's image, free for another try


# -- 6. the agent killed mid-stream, then a retry that resumes -------------------------------------

def test_agent_killed_mid_stream_then_a_retry_resumes(impatient, link, tmp_path):
    need_slow_link(link)
    cloud = impatient
    disk = tmp_path / "sda.img"
    make_disk(disk, *STRIPED, seed="killed")
    want = data_chunks(STRIPED)
    with cloud.ironic() as c, agents() as started:
        node = new_node(c, "bm-killed")
        image = new_image(cloud, "bm-killed-snap")
        provision(c, node, "snapshot", image_ref=image)
        wait_state(c, node, "snapshot wait")
        copy = cloud.copy_dir(node)
        link.slow(40)
        try:
            agent = start_agent(cloud, node, [f"{disk},name=/dev/sda,size=8G"])
            started.append(agent)
            wait_for("the agent's lookup", lambda: cloud.agent_token(node), timeout=10)
            # while it streams, heartbeats without its token are refused and change nothing
            for token in (None, secrets.token_urlsafe(32)):
                resp = heartbeat(cloud, node, token)
                assert resp.status_code == 400 and fault(resp) == HB_INVALID, resp.text
            wait_for("some chunks streamed", lambda: len(bins(copy)) >= 4, timeout=20, every=0.01)
            agent.kill()                                          # SIGKILL: no last heartbeat, no command end
        finally:
            link.fast()
        assert cloud.query("SELECT agent_url FROM baremetal_nodes WHERE id = ?", node) == [(agent.callback_url,)]
        kept = bins(copy)
        assert 4 <= len(kept) < len(want), kept
        # sent by the dead agent but not kept: what it had in flight, at most one chunk
        in_flight = {int(p.name[2:10]) for p in copy.glob("c-*.part")}
        assert len(in_flight) <= 1 and not in_flight & set(kept), in_flight
        body = wait_state(c, node, "snapshot failed", timeout=20)
        assert "the agent stopped heartbeating at" in body["last_error"] and "%" in body["last_error"], body
        [first] = workflows(cloud, node)
        assert wait_workflow(cloud, first["id"])["state"] == "REVERTED"
        assert cloud.agent_token(node) is None
        assert bins(copy) == kept                                  # the copy is kept as it was
        # retry: the snapshot verb again with the same image; a new agent boots
        provision(c, node, "snapshot", image_ref=image)
        wait_state(c, node, "snapshot wait")
        assert cloud.copy_dir(node) == copy                       # the same intermediate copy
        agent = start_agent(cloud, node, [f"{disk},name=/dev/sda,size=8G"])
        started.append(agent)
        token = wait_for("the new agent's lookup", lambda: cloud.agent_token(node), timeout=10)
        changed = set()

        def still_kept():
            now = bins(copy)
            changed.update(i for i in kept if i in now and now[i] != kept[i])
            return (copy / "manifest.json").exists() or not copy.exists()
        wait_for("the resumed stream's end", still_kept, timeout=30, every=0.01)
        assert not changed, f"kept chunks re-sent: {changed}"
        body = wait_state(c, node, "active", timeout=30)
        assert body["last_error"] is None
        second = [w for w in workflows(cloud, node) if w["id"] != first["id"]]
        assert len(second) == 1 and wait_workflow(cloud, second[0]["id"])["state"] == "IMAGE_ACTIVE"
        code, listed = agent.request("GET", f"/v1/commands/?agent_token={token}")
        [command] = listed["commands"]
        result = command["command_result"]
        resumed = result["resumed_from_chunk"]
        assert resumed == max(kept) + 1, (resumed, sorted(kept))
        resent = [i for i in want if i >= resumed]
        assert result["sent_bytes"] == sum(ch["length"] for ch in result["chunks"] if ch["index"] in resent)
        # the new agent sent exactly the chunks not kept: what is sent twice is what the dead
        # agent had in flight (<= 1 chunk)
        assert [i for i in want if i not in kept] == resent
        assert set(resent) >= in_flight
        assert_image_is_disk(cloud, image, disk, tmp_path)
        assert not copy.exists() and cloud.agent_token(node) is None


# -- 7. kill -9 of serve mid-stream, then right after LOCAL_SNAPSHOT_COMPLETE --------------------

def test_serve_killed_mid_stream_and_after_verify_resumes(link, tmp_path):
    need_slow_link(link)
    cloud = Cloud(tmp_path / "ff", link).start()
    disk = tmp_path / "sda.img"
    make_disk(disk, *STRIPED, seed="crash")
    try:
        with cloud.ironic() as c, agents() as started:
            node = new_node(c, "bm-crash")
            image = new_image(cloud, "bm-crash-snap")
            provision(c, node, "snapshot", image_ref=image)
            wait_state(c, node, "snapshot wait")
            copy = cloud.copy_dir(node)
            link.slow(40)
            try:
                # retries of 1 s x 9 outlast a restart of serve (its WebDAV area is away meanwhile)
                started.append(start_agent(cloud, node, [f"{disk},name=/dev/sda,size=8G"], retry_backoff=1.0))
                wait_for("some chunks streamed", lambda: len(bins(copy)) >= 3, timeout=20, every=0.01)
                cloud.kill9()
                at_kill = len(bins(copy))
                assert at_kill < len(data_chunks(STRIPED))
                # the restart dies again right after the stream is verified (before the upload)
                cloud.start({"FREEZEFRAME_TESTING__FAULT_KILL_AT": "LOCAL_SNAPSHOT_COMPLETE"})
            finally:
                link.fast()
            assert cloud.process.wait(60) == -signal.SIGKILL
            assert "killing this process (SIGKILL) in state LOCAL_SNAPSHOT_COMPLETE" in cloud.log()
            assert (copy / "manifest.json").is_file()
            cloud.start()
            body = wait_state(c, node, "active", timeout=60)
            assert body["last_error"] is None and body["reservation"] is None
            [flow] = workflows(cloud, node)
            wf = wait_workflow(cloud, flow["id"])
            assert wf["state"] == "IMAGE_ACTIVE", wf
            assert_vm_snapshot_states(wf)
            assert cloud.log().count("resuming flow") >= 2
            assert_image_is_disk(cloud, image, disk, tmp_path)
            assert not copy.exists() and cloud.agent_token(node) is None
    finally:
        cloud.stop()


# -- 8. deleted from snapshot failed ----------------------------------------------------------------

def test_deleted_from_snapshot_failed(cloud):
    with cloud.ironic() as c:
        node = new_node(c, "bm-deleted")
        image = new_image(cloud, "bm-deleted-snap")
        provision(c, node, "snapshot", image_ref=image)
        wait_state(c, node, "snapshot wait")
        copy = cloud.copy_dir(node)
        provision(c, node, "abort")
        wait_state(c, node, "snapshot failed")
        assert copy.is_dir()
        watch = Watch(cloud, node)
        time.sleep(0.1)
        provision(c, node, "deleted")
        body = wait_state(c, node, "available")
        seen = watch.stop()
        assert seen[0] == "snapshot failed" and seen[-1] == "available", seen
        assert set(seen) <= {"snapshot failed", "deleting", "available"}, seen   # (deleting: if caught)
        [teardown] = workflows(cloud, node, "baremetal-teardown")
        assert wait_workflow(cloud, teardown["id"])["state"] == "COMPLETE"
        assert body["power_state"] == "power off" and body["last_error"] is None and body["reservation"] is None
        assert not copy.exists() and all(t[2] is not None for t in cloud.transfers(node))
        assert cloud.agent_token(node) is None
        assert image_status(cloud, image) == "queued"
