"""A Redfish BMC for tests: the sushy-tools emulator (``sushy-emulator``) driving a real libvirt
domain that plays a bare-metal node.

The emulator reaches libvirt through the system daemon (qemu:///system, started by
scripts/ensure-sushy -> scripts/ensure-libvirt --daemon when it is not running): the embedded
mode is private to one process. The daemon is shared, so everything here is private by name:
the domain ``ff-bm-<pid>-<hex>``, its disk and a libvirt storage pool of the same name (where
the emulator puts the virtual media it downloads); the emulator only shows that domain
(``SUSHY_EMULATOR_ALLOWED_INSTANCES``) and asks for HTTP Basic credentials. Domains left by a
killed test process are removed by the next one.

The domain: type qemu (TCG), 64 MiB, SeaBIOS, a blank 64 MiB disk, a serial console to a file:
it runs (power states, virtual media and boot order are all this needs) without booting
anything. ``redfish_lab`` takes more memory, disks and a NIC for a node that boots the agent.

``boot_share`` is a directory served over HTTP: what the conductor's WebDAV server does for
``/_boot/`` (the BMC downloads the per-node ISO from it).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
URI = "qemu:///system"
PREFIX = "ff-bm-"
USERNAME = "ffadmin"


@functools.cache
def unavailable() -> str | None:
    """Why the emulator and a libvirt domain cannot run here, or None (installs what is missing;
    asked once per process)."""
    for tool in ("qemu-system-x86_64", "qemu-img"):
        if shutil.which(tool) is None and shutil.which("apt-get") is None:
            return f"{tool} is not installed and there is no apt-get (scripts/ensure-libvirt)"
    proc = subprocess.run([str(ROOT / "scripts" / "ensure-sushy")], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        return f"scripts/ensure-sushy failed: {proc.stderr.strip()[-500:]}"
    try:
        import libvirt
        import sushy  # noqa: F401  (the driver's client, beside the emulator)
    except ImportError as exc:
        return f"{exc.name} is not installed in this venv (scripts/ensure-sushy installs it)"
    if not (Path(sys.executable).parent / "sushy-emulator").exists():
        return "sushy-emulator is not installed in this venv (pip install -e '.[test]')"
    try:
        connection()
    except libvirt.libvirtError as exc:
        return f"the libvirt daemon at {URI} cannot be reached: {exc}"
    return None


_conn: list = []


def connection() -> "Virsh":
    """The system daemon, as the lab needs it (a few domain and pool calls), through ``virsh``
    rather than libvirt-python in this process: once a test of this process used libvirt's
    embedded mode (qemu:///embed, the other libvirt tests) libvirt opens no other driver here,
    and a remote connection opened before makes a later embedded one fail ("Too many drivers")."""
    if not _conn:
        Virsh.run("version")
        _conn.append(Virsh())
    return _conn[0]


class Virsh:
    """The subset of libvirt's connection the lab uses, each call one ``virsh`` command; errors
    are ``libvirt.libvirtError`` as libvirt-python raises them."""

    @staticmethod
    def run(*args: str, stdin: str | None = None) -> str:
        import libvirt
        proc = subprocess.run(["virsh", "-q", "-c", URI, *args], input=stdin, capture_output=True, text=True,
                              timeout=120)
        if proc.returncode != 0:
            raise libvirt.libvirtError(f"virsh {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    def _define(self, kind: str, xml: str) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".xml") as fh:
            fh.write(xml)
            fh.flush()
            self.run(kind, fh.name)

    def lookupByName(self, name: str) -> "_Domain":
        self.run("domuuid", name)           # (libvirtError when there is none)
        return _Domain(self, name)

    def listAllDomains(self) -> list["_Domain"]:
        return [_Domain(self, n) for n in self.run("list", "--all", "--name").split()]

    def defineXML(self, xml: str) -> None:
        self._define("define", xml)

    def storagePoolDefineXML(self, xml: str) -> "_Pool":
        self._define("pool-define", xml)
        return _Pool(self, ET.fromstring(xml).findtext("name"))

    def storagePoolLookupByName(self, name: str) -> "_Pool":
        self.run("pool-uuid", name)
        return _Pool(self, name)

    def listAllStoragePools(self) -> list["_Pool"]:
        return [_Pool(self, n) for n in self.run("pool-list", "--all", "--name").split()]


@dataclass
class _Domain:
    virsh: Virsh
    _name: str

    def name(self) -> str:
        return self._name

    def isActive(self) -> bool:
        return self.virsh.run("domstate", self._name).strip() == "running"

    def ID(self) -> int:
        found = self.virsh.run("domid", self._name).strip()
        return int(found) if found.isdigit() else -1

    def XMLDesc(self, flags: int = 0) -> str:
        return self.virsh.run("dumpxml", *(["--inactive"] if flags & 2 else []), self._name)

    def destroy(self) -> None:
        self.virsh.run("destroy", self._name)

    def undefine(self) -> None:
        self.virsh.run("undefine", self._name)


@dataclass
class _Pool:
    virsh: Virsh
    _name: str

    def name(self) -> str:
        return self._name

    def create(self) -> None:
        self.virsh.run("pool-start", self._name)

    def isActive(self) -> bool:
        return any(line.split()[:2] == [self._name, "active"]
                   for line in self.virsh.run("pool-list", "--all").splitlines())

    def XMLDesc(self) -> str:
        return self.virsh.run("pool-dumpxml", self._name)

    def destroy(self) -> None:
        self.virsh.run("pool-destroy", self._name)

    def undefine(self) -> None:
        self.virsh.run("pool-undefine", self._name)

@dataclass
class RedfishLab:
    url: str                 # the BMC: http://127.0.0.1:<port>
    system_id: str           # /redfish/v1/Systems/<domain uuid>
    domain: str              # the libvirt domain's name
    uuid: str
    username: str
    password: str
    pool_dir: Path           # where the emulator keeps downloaded virtual media
    log_path: Path
    process: subprocess.Popen = field(repr=False)
    disks: list[Path] = field(default_factory=list)      # the domain's disk files (qcow2), vda first
    mac: str | None = None                                # its NIC's MAC (nic=True)
    console_path: Path | None = None                      # its serial console, appended

    def __iter__(self):      # url, system_id = lab
        return iter((self.url, self.system_id))

    def driver_info(self, **over) -> dict:
        return {"redfish_address": self.url, "redfish_system_id": self.system_id,
                "redfish_username": self.username, "redfish_password": self.password,
                "redfish_verify_ca": False, **over}

    # -- the truth, read from libvirt (not through the emulator) ---------------------------------
    def _dom(self, conn):
        return conn.lookupByName(self.domain)

    def _with(self, fn):
        return fn(self._dom(connection()))

    def is_active(self) -> bool:
        return bool(self._with(lambda d: d.isActive()))

    def domain_id(self) -> int:
        """Changes at every start: a reboot that really restarted QEMU shows here."""
        return self._with(lambda d: d.ID())

    def xml(self, inactive: bool = True) -> ET.Element:
        import libvirt
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        return ET.fromstring(self._with(lambda d: d.XMLDesc(flags)))

    def cdrom_files(self, inactive: bool = True) -> list[str]:
        return [src.get("file") for disk in self.xml(inactive).findall("devices/disk[@device='cdrom']")
                if (src := disk.find("source")) is not None and src.get("file")]

    def boot_devices(self) -> list[str]:
        """The domain's boot order, first device first ("cdrom", "disk", "hd"...)."""
        tree = self.xml()
        legacy = [b.get("dev") for b in tree.findall("os/boot")]
        if legacy:
            return legacy
        ordered = [(int(d.find("boot").get("order")), d.get("device"))
                   for d in tree.findall("devices/disk") if d.find("boot") is not None]
        return [dev for _, dev in sorted(ordered)]

    def system(self) -> dict:
        with httpx.Client(auth=(self.username, self.password), timeout=30) as client:
            resp = client.get(self.url + self.system_id)
            resp.raise_for_status()
            return resp.json()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def console(self) -> str:
        p = self.console_path
        return p.read_text(errors="replace") if p and p.exists() else ""


DOMAIN_XML = """<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>{memory}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
{disks}{nic}    <serial type='file'><source path='{console}' append='on'/><target port='0'/></serial>
    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
{qemu}</domain>
"""

DISK_XML = """    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{path}'/>
      <target dev='{dev}' bus='virtio'/>{serial}
    </disk>
"""

# User-mode networking: the guest reaches the host at 10.0.2.2 (the agent's ipa-api-url).
NIC_XML = """    <interface type='user'><mac address='{mac}'/><model type='virtio'/></interface>
"""
# The same NIC with a port forward: libvirt 9.0 has no passt backend, and <portForward> needs it,
# so the NIC is QEMU's own (scripts/build-agent-image's recipe, tests/libvirt/test_agent_image.py):
# the host's 127.0.0.1:<port> reaches the guest's agent at :9999.
FWD_NIC_XML = """  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='user,id=ffnet0,hostfwd=tcp:127.0.0.1:{port}-:9999'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='virtio-net-pci,netdev=ffnet0,mac={mac},bus=pci.0,addr=0x10'/>
  </qemu:commandline>
"""

POOL_XML = """<pool type='dir'><name>{name}</name><target><path>{path}</path></target></pool>"""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(conn) -> None:
    """Remove the domains and pools of test processes that died without cleaning up."""
    import libvirt
    pattern = re.compile(re.escape(PREFIX) + r"(\d+)-[0-9a-f]+$")
    for dom in conn.listAllDomains():
        m = pattern.match(dom.name())
        if m and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(libvirt.libvirtError):
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
    for pool in conn.listAllStoragePools():
        m = pattern.match(pool.name())
        if m and not _pid_alive(int(m.group(1))):
            path = ET.fromstring(pool.XMLDesc()).findtext("target/path")
            with contextlib.suppress(libvirt.libvirtError):
                if pool.isActive():
                    pool.destroy()
                pool.undefine()
            if path:
                shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def redfish_lab(memory_mib: int = 64, disks: tuple[str, ...] = ("64M",), nic: bool = False,
                disk_serials: tuple[str, ...] = (), agent_port: int | None = None) -> Iterator[RedfishLab]:
    """A running emulator and its private libvirt domain (powered off); removed afterwards.

    The defaults suit power and virtual-media tests. The agent needs more: ``memory_mib=768``,
    ``nic=True`` (user networking, MAC in ``lab.mac``) and the disks it should find (sizes as
    qemu-img takes them, blank qcow2 files at ``lab.disks``); the serial console is appended
    to ``lab.console_path``. ``agent_port`` (with ``nic``): the host's 127.0.0.1:<agent_port>
    forwarded to the guest's port 9999, where the agent's command API listens."""
    import bcrypt
    import libvirt

    name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    dom_uuid = str(uuid.uuid4())
    # Not under pytest's 0700 tmp: QEMU runs as libvirt-qemu and must reach the disk.
    work = Path(tempfile.mkdtemp(prefix=name + "-"))
    os.chmod(work, 0o755)
    pool_dir = work / "pool"
    pool_dir.mkdir(mode=0o755)
    disk_paths, disk_xml = [], ""
    for i, size in enumerate(disks):
        path = work / f"disk{i}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
        os.chmod(path, 0o666)
        disk_paths.append(path)
        serial = f"<serial>{disk_serials[i]}</serial>" if i < len(disk_serials) else ""
        disk_xml += DISK_XML.format(path=path, dev="vd" + "abcdefgh"[i], serial=serial)
    mac = "52:54:00:%02x:%02x:%02x" % tuple(secrets.token_bytes(3))
    console = work / "console.log"

    password = secrets.token_urlsafe(12)
    (work / "htpasswd").write_text(
        f"{USERNAME}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n")
    port = free_port()
    (work / "state").mkdir()
    (work / "emulator.conf").write_text("\n".join([
        "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'",
        f"SUSHY_EMULATOR_LISTEN_PORT = {port}",
        f"SUSHY_EMULATOR_LIBVIRT_URI = '{URI}'",
        f"SUSHY_EMULATOR_ALLOWED_INSTANCES = ['{dom_uuid}', '{name}']",
        f"SUSHY_EMULATOR_STORAGE_POOL = '{name}'",
        f"SUSHY_EMULATOR_STATE_DIR = '{work / 'state'}'",
        f"SUSHY_EMULATOR_AUTH_FILE = '{work / 'htpasswd'}'",
        "SUSHY_EMULATOR_VMEDIA_VERIFY_SSL = False",
        "",
    ]))

    conn = connection()
    proc = None
    log_path = work / "emulator.log"
    try:
        sweep_stale(conn)
        pool = conn.storagePoolDefineXML(POOL_XML.format(name=name, path=pool_dir))
        pool.create()
        forward = nic and agent_port is not None
        conn.defineXML(DOMAIN_XML.format(name=name, uuid=dom_uuid, memory=memory_mib, disks=disk_xml,
                                         nic=NIC_XML.format(mac=mac) if nic and not forward else "",
                                         qemu=FWD_NIC_XML.format(port=agent_port, mac=mac) if forward else "",
                                         console=console))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUSHY_EMULATOR")}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([str(Path(sys.executable).parent / "sushy-emulator"),
                                     "--config", str(work / "emulator.conf")],
                                    stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, proc, log_path)
        yield RedfishLab(url=url, system_id=f"/redfish/v1/Systems/{dom_uuid}", domain=name, uuid=dom_uuid,
                         username=USERNAME, password=password, pool_dir=pool_dir, log_path=log_path,
                         process=proc, disks=disk_paths, mac=mac if nic else None, console_path=console)
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(libvirt.libvirtError):
            dom = conn.lookupByName(name)
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        with contextlib.suppress(libvirt.libvirtError):
            pool = conn.storagePoolLookupByName(name)
            if pool.isActive():
                pool.destroy()
            pool.undefine()
        shutil.rmtree(work, ignore_errors=True)


def _wait_ready(url: str, proc: subprocess.Popen, log_path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sushy-emulator exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/redfish/v1/", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"sushy-emulator did not answer within {timeout:g} s:\n{log_path.read_text()[-3000:]}")


# -- where the BMC downloads virtual media from ------------------------------------------------
@dataclass
class BootShare:
    path: Path
    url: str
    requests: list[str] = field(default_factory=list)     # the paths GET asked for


@contextlib.contextmanager
def boot_share(path: Path) -> Iterator[BootShare]:
    """``path`` served read-only over HTTP on 127.0.0.1 (a stand-in for the WebDAV /_boot/)."""
    path.mkdir(parents=True, exist_ok=True)
    share = BootShare(path=path, url="")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            share.requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(path)))
    share.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield share
    finally:
        server.shutdown()
        server.server_close()


def make_agent_iso(path: Path, label: str = "FFAGENT") -> Path:
    """A small ISO with the agent ISO's layout (scripts/build-agent-image): /isolinux/isolinux.cfg
    booting /boot/vmlinuz with /boot/initrd.img, an El Torito boot record, a grub.cfg. It does
    not boot (the files are stand-ins): the tests check what the BMC attaches."""
    src = path.parent / (path.name + ".d")
    (src / "isolinux").mkdir(parents=True, exist_ok=True)
    (src / "boot" / "grub").mkdir(parents=True, exist_ok=True)
    (src / "isolinux" / "isolinux.bin").write_bytes(b"\xfa" * 2048)
    (src / "isolinux" / "isolinux.cfg").write_text(
        "default agent\nlabel agent\n  kernel /boot/vmlinuz\n"
        "  append initrd=/boot/initrd.img console=ttyS0 ipa-insecure=0\n")
    (src / "boot" / "grub" / "grub.cfg").write_text(
        "menuentry agent {\n  linux /boot/vmlinuz console=ttyS0\n  initrd /boot/initrd.img\n}\n")
    (src / "boot" / "vmlinuz").write_bytes(b"kernel" * 1000)
    (src / "boot" / "initrd.img").write_bytes(b"initrd" * 1000)
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(path), "-b", "isolinux/isolinux.bin",
                    "-c", "isolinux/boot.cat", "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
                    "-R", "-J", "-V", label, str(src)], check=True, capture_output=True)
    shutil.rmtree(src)
    return path


def iso_file(iso: Path, inside: str) -> str:
    """A file's text from inside an ISO (xorriso)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "f"
        subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", inside, str(out)],
                       check=True, capture_output=True)
        return out.read_text()


# -- one emulator per test process (it takes seconds to start on slow cores) -------------------
_shared: dict[str, object] = {}


def shared_lab() -> RedfishLab:
    """The process's lab, started at first use and removed at exit; pytest.skip with the reason
    when it cannot run here. Tests share it: each puts the domain into the state it needs."""
    import atexit

    import pytest

    if "reason" not in _shared:
        _shared["reason"] = unavailable()
    if _shared["reason"]:
        pytest.skip(str(_shared["reason"]))
    if "lab" not in _shared:
        cm = redfish_lab()
        _shared["lab"] = cm.__enter__()
        atexit.register(cm.__exit__, None, None, None)
    return _shared["lab"]  # type: ignore[return-value]


def reset(lab: RedfishLab) -> None:
    """The domain powered off, no virtual media, booting from its disk (through libvirt)."""
    import libvirt
    conn = connection()
    dom = conn.lookupByName(lab.domain)
    if dom.isActive():
        dom.destroy()
    tree = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    devices = tree.find("devices")
    for disk in devices.findall("disk[@device='cdrom']"):
        devices.remove(disk)
    for disk in devices.findall("disk"):
        for boot in disk.findall("boot"):
            disk.remove(boot)
    os_el = tree.find("os")
    for boot in os_el.findall("boot"):
        os_el.remove(boot)
    ET.SubElement(os_el, "boot", dev="hd")
    conn.defineXML(ET.tostring(tree).decode())


# -- by hand: the node of the README's bare-metal walkthrough ------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``python -m tests.sushy --disks 5G,6G --agent-port 9990``: a lab as the whole-flow test
    makes it (768 MiB, a NIC with the agent's port forwarded), its driver_info and MAC printed,
    kept until Ctrl-C (then removed)."""
    import argparse
    import json
    import signal

    p = argparse.ArgumentParser(prog="python -m tests.sushy", description=main.__doc__)
    p.add_argument("--memory", type=int, default=768, help="MiB (default 768)")
    p.add_argument("--disks", default="5G,6G", help="disk sizes as qemu-img takes them (default 5G,6G)")
    p.add_argument("--agent-port", type=int, default=9990, help="the host's 127.0.0.1 port forwarded to the "
                   "agent's 9999 (default 9990)")
    args = p.parse_args(argv)
    if (reason := unavailable()) is not None:
        print(f"the lab cannot run here: {reason}", file=sys.stderr)
        return 1
    with redfish_lab(memory_mib=args.memory, disks=tuple(args.disks.split(",")), nic=True,
                     agent_port=args.agent_port) as lab:
        print(json.dumps({"driver_info": lab.driver_info(), "mac": lab.mac, "domain": lab.domain,
                          "disks": [str(d) for d in lab.disks], "console": str(lab.console_path),
                          "agent_port": args.agent_port}, indent=2), flush=True)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    return 0


if __name__ == "__main__":
    sys.exit(main())
