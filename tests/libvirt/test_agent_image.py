"""The bare-metal agent image (scripts/build-agent-image) boots for real and reaches the host.

A throwaway libvirt domain (embedded mode, TCG) boots a per-node copy of the agent ISO from its
CD drive (BIOS -> isolinux -> the kernel and initramfs), with the node's kernel parameters put on
isolinux's APPEND line the way a boot interface remasters the ISO (`--node-iso`). Its NIC is a
virtio-net on QEMU user networking: the guest reaches the host at 10.0.2.2 (the host's
127.0.0.1), and a hostfwd brings the host's 127.0.0.1:<port> to the agent's port 9999.
libvirt 9.0 (bookworm) has no passt backend (`<backend type='passt'/>` is rejected) and
`<portForward>` needs it, so the NIC comes from `<qemu:commandline>`:

    -netdev user,id=ffnet0,hostfwd=tcp:127.0.0.1:<port>-:9999
    -device virtio-net-pci,netdev=ffnet0,mac=<mac>,bus=pci.0,addr=0x10

A fake bare-metal API on the host answers the first lookup 404 (an unknown node, as Ironic
does), then the next one with a node, and takes heartbeats. The test checks the lookup names
the node's MAC, the heartbeat's callback_url is what ipa-advertise-host/port say, and the
agent's /v1/status answers through the port forward.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

pytestmark = [pytest.mark.libvirt]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "build-agent-image"
BOOT_TIMEOUT = 180.0      # ~14 s to the first lookup on an idle 2-core TCG host
SLOT_MARK = b"ff.node=1 "
SLOT_SIZE = 1500


def _cache() -> Path:
    return Path(os.environ.get("FREEZEFRAME_CACHE", Path.home() / ".cache" / "freezeframe"))


def build_unavailable() -> str | None:
    """Why scripts/build-agent-image cannot run here, or None."""
    src = Path(os.environ.get("FREEZEFRAME_AGENT_SRC") or ROOT / "src" / "freezeframe" / "agent")
    if not (src / "__main__.py").exists():
        return f"the agent's sources ({src}/__main__.py) are missing"
    if shutil.which("dpkg-deb") is None:
        return "dpkg-deb is missing: the agent image is built from Debian packages"
    cached = (_cache() / "agent" / "out" / "stamp-base").exists()
    if shutil.which("apt-get") is None and not cached:
        return "the agent image's base is not built and there is no apt-get to fetch its packages"
    if shutil.which("xorriso") is None and shutil.which("apt-get") is None:
        return "xorriso is missing and there is no apt-get to install it"
    return None


def libvirt_missing() -> str | None:
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python is not installed in this venv (scripts/ensure-libvirt installs it)"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (scripts/ensure-libvirt installs it)"
    return None


@pytest.fixture(scope="session")
def agent_image() -> dict[str, str]:
    """ISO, KERNEL, INITRD, CMDLINE of the agent image (built once, cached across sessions)."""
    reason = build_unavailable()
    if reason:
        pytest.skip(reason)
    t0 = time.monotonic()
    proc = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"scripts/build-agent-image failed:\n{proc.stderr[-3000:]}")
    out = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    out["build_seconds"] = f"{time.monotonic() - t0:.1f}"
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeBaremetalAPI:
    """Lookup and heartbeat of /baremetal/v1, recording every request (Ironic's shapes)."""

    def __init__(self) -> None:
        self.node_uuid = str(uuid.uuid4())
        self.requests: list[tuple[float, str, str, bytes]] = []   # (monotonic, method, path, body)
        self.event = threading.Condition()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, code: int, body: dict | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with api.event:
                    api.requests.append((time.monotonic(), self.command, self.path, body))
                    api.event.notify_all()
                return body

            def do_GET(self) -> None:  # noqa: N802
                self._record()
                if not urlsplit(self.path).path.endswith("/v1/lookup"):
                    return self._answer(404, {"error_message": "not here"})
                if len(api.lookups()) == 1:   # the first: an unknown node
                    return self._answer(404, {"error_message": "Node could not be found."})
                self._answer(200, {"node": {"uuid": api.node_uuid, "properties": {}, "instance_info": {},
                                            "driver_internal_info": {}, "links": []},
                                   "config": {"heartbeat_timeout": 300, "agent_token": "t0ken-" + "x" * 37,
                                              "agent_token_required": True}})

            def do_POST(self) -> None:  # noqa: N802
                self._record()
                self._answer(202 if "/v1/heartbeat/" in self.path else 404)

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def lookups(self) -> list:
        return [r for r in self.requests if r[1] == "GET" and urlsplit(r[2]).path.endswith("/v1/lookup")]

    def heartbeats(self) -> list:
        return [r for r in self.requests if r[1] == "POST" and "/v1/heartbeat/" in r[2]]

    def wait(self, what, deadline: float) -> list:
        with self.event:
            while not what() and time.monotonic() < deadline:
                self.event.wait(0.5)
            return what()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def domain_xml(name: str, iso: Path, disk: Path, console: Path, mac: str, fwd_port: int) -> str:
    """The node: BIOS, the ISO on an IDE CD drive booted first, a virtio disk, the NIC above."""
    return f"""<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>768</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='cdrom'/></os>
  <features><acpi/></features>
  <devices>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/><source file='{iso}'/><target dev='hdc' bus='ide'/><readonly/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/><source file='{disk}'/><target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='{console}'/><target port='0'/></serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='user,id=ffnet0,hostfwd=tcp:127.0.0.1:{fwd_port}-:9999'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='virtio-net-pci,netdev=ffnet0,mac={mac},bus=pci.0,addr=0x10'/>
  </qemu:commandline>
</domain>"""


def test_agent_iso_has_the_node_parameters_slot(agent_image):
    """Recipe 2 of the script's header: one marker, then the reserved spaces."""
    data = Path(agent_image["ISO"]).read_bytes()
    assert data.count(SLOT_MARK) == 1
    start = data.index(SLOT_MARK) + len(SLOT_MARK)
    assert data[start:start + SLOT_SIZE] == b" " * SLOT_SIZE
    assert data[510:512] == b"\x55\xaa"   # the isohybrid MBR: it boots as a disk image too


def test_agent_iso_boots_and_reaches_the_api(agent_image):
    reason = libvirt_missing()
    if reason:
        pytest.skip(reason)
    from freezeframe.compute.drivers.base import DriverError
    from freezeframe.compute.drivers.libvirt import LibvirtDriver, embedded_uri
    from tests.libvirt.test_libvirt_snapshot import embed_root

    api = FakeBaremetalAPI()
    fwd_port = free_port()
    mac = "52:54:00:%02x:%02x:%02x" % tuple(os.urandom(3))
    # A workspace QEMU can read when it runs unprivileged (pytest's tmp_path is root-only).
    ws = Path(tempfile.mkdtemp(prefix="ff-agentiso-", dir="/var/tmp"))
    ws.chmod(0o755)
    driver = dom = None
    console = ws / "console.log"
    try:
        params = (f"ipa-api-url=http://10.0.2.2:{api.port}/baremetal ipa-advertise-host=127.0.0.1 "
                  f"ipa-advertise-port={fwd_port}")
        iso = ws / "node.iso"
        proc = subprocess.run([str(SCRIPT), "--node-iso", str(iso), params], capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"ISO={iso}" in proc.stdout
        disk = ws / "disk.img"
        with open(disk, "wb") as f:
            f.truncate(64 << 20)

        uri = os.environ.get("FREEZEFRAME_LIBVIRT_URI") or embedded_uri(embed_root())
        driver = LibvirtDriver(uri)
        try:
            conn = driver.conn
        except DriverError as exc:
            pytest.skip(f"libvirt cannot run here ({uri}): {exc}")
        t0 = time.monotonic()
        dom = conn.createXML(domain_xml(f"ff-agentiso-{uuid.uuid4().hex[:8]}", iso, disk, console, mac, fwd_port), 0)

        def log() -> str:
            return console.read_text(errors="replace")[-4000:] if console.exists() else "(no console log)"

        lookups = api.wait(api.lookups, t0 + BOOT_TIMEOUT)
        assert lookups, f"no lookup reached the host within {BOOT_TIMEOUT:.0f} s; console:\n{log()}"
        first_at, _, path, _ = lookups[0]
        print(f"first lookup {first_at - t0:.1f} s after the domain started "
              f"(image build/cache check {agent_image['build_seconds']} s)")
        url = urlsplit(path)
        assert url.path == "/baremetal/v1/lookup", path
        addresses = [a.strip().lower() for a in ",".join(parse_qs(url.query).get("addresses", [])).split(",")]
        assert mac in addresses, f"lookup {path} does not name the NIC {mac}"

        # The second lookup finds the node; the agent heartbeats with what ipa-advertise-* say.
        beats = api.wait(api.heartbeats, time.monotonic() + 60)
        assert beats, f"no heartbeat after the lookup answered 200; console:\n{log()}"
        assert urlsplit(beats[0][2]).path == f"/baremetal/v1/heartbeat/{api.node_uuid}"
        assert json.loads(beats[0][3])["callback_url"] == f"http://127.0.0.1:{fwd_port}"

        status = None
        deadline = time.monotonic() + 30
        while status is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{fwd_port}/v1/status", timeout=5) as resp:
                    status = json.load(resp)
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"/v1/status did not answer through the forward; console:\n{log()}")
                time.sleep(0.5)
        assert isinstance(status["started_at"], (int, float)) and isinstance(status["version"], str), status

        text = console.read_text(errors="replace")
        assert f"nic eth0 {mac}: 10.0.2.15/24" in text, text[-4000:]
        assert "disk /dev/vda 64 MiB" in text, text[-4000:]
        assert "starting the agent (run 1," in text, text[-4000:]
    finally:
        if dom is not None:
            try:
                dom.destroy()
            except Exception:
                pass
        if driver is not None:
            driver.close()
        api.close()
        shutil.rmtree(ws, ignore_errors=True)
