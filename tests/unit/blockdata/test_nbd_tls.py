"""NBD between hosts: qemu-nbd on TCP with per-export TLS credentials, read by our client."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from freezeframe.blockdata import nbdexport
from freezeframe.blockdata.nbd import NbdClient, NbdError, NbdTlsError
from freezeframe.blockdata.nbdexport import ExportError, FileSource, NbdSource, open_client, start_export, stop_export

MiB = 1 << 20
WRITES = [(MiB, 64 * 1024, 0x5A), (8 * MiB, 128 * 1024, 0xA5), (40 * MiB + 4096, 4096, 0x11)]

pytestmark = pytest.mark.skipif(not shutil.which("qemu-nbd") or not shutil.which("qemu-io"),
                                reason="qemu-nbd / qemu-io are not installed (qemu-utils)")


@pytest.fixture(scope="module")
def image():
    """A 64 MiB qcow2 with data at a few offsets, and its flat raw copy."""
    work = Path(tempfile.mkdtemp(prefix="ffnbdtls-"))      # short: unix socket paths below
    disk, raw = work / "disk.qcow2", work / "flat.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    for offset, length, pattern in WRITES:
        subprocess.run(["qemu-io", "-c", f"write -P {pattern:#x} {offset} {length}", str(disk)],
                       check=True, capture_output=True)
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(disk), str(raw)], check=True)
    yield work, disk, raw
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def exports(tmp_path):
    """Start exports in fresh workdirs; all stopped at the end."""
    started: list[Path] = []

    def start(source, name="vda", **kw):
        workdir = tmp_path / f"export{len(started)}"
        started.append(workdir)
        kw.setdefault("bind", "127.0.0.1")
        kw.setdefault("advertise", "127.0.0.1")
        return workdir, start_export(source, workdir=workdir, export_name=name, **kw)

    yield start
    for workdir in started:
        stop_export(workdir)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def check_disk(nbd: NbdClient, raw: Path) -> None:
    assert nbd.size == 64 * MiB
    extents = nbd.extents()
    assert extents[0].offset == 0 and sum(e.length for e in extents) == nbd.size
    data = [(e.offset, e.offset + e.length) for e in extents if not e.zero]
    for offset, length, _ in WRITES:                                   # each write is data
        assert any(a <= offset and offset + length <= b for a, b in data), (offset, data)
    assert sum(b - a for a, b in data) <= 2 * MiB                      # the rest is holes
    ranges = [(0, 2 * MiB), (8 * MiB - 4096, 256 * 1024), (40 * MiB, 3 * 4096), (63 * MiB, MiB)]
    got = list(nbd.pread_many(ranges, depth=3))
    with open(raw, "rb") as fh:
        for (offset, length), buf in zip(ranges, got, strict=True):
            assert bytes(buf) == os.pread(fh.fileno(), length, offset), offset
    assert bytes(nbd.pread(MiB, 4)) == b"\x5a" * 4


def test_tls_export_reads_exactly_and_keeps_no_server_key(image, exports):
    _work, disk, raw = image
    workdir, info = exports(FileSource(str(disk), "qcow2"))
    assert info.tls and info.host == "127.0.0.1" and info.export_name == "vda" and info.port > 0
    assert set(info.client) == {"ca_cert", "client_cert", "client_key"}
    assert json.loads(json.dumps(info.to_dict())) == info.to_dict()
    with open_client(json.loads(json.dumps(info.to_dict()))) as nbd:     # as the conductor gets it
        assert nbd.tls and isinstance(nbd._sock, ssl.SSLSocket)
        assert nbd._sock.version() in ("TLSv1.2", "TLSv1.3")
        check_disk(nbd, raw)
    # the state: private; the server's key was on disk only while qemu-nbd started
    assert stat.S_IMODE(workdir.stat().st_mode) == 0o700
    assert stat.S_IMODE((workdir / "export.json").stat().st_mode) == 0o600
    assert not (workdir / "tls").exists()


def test_wrong_material_and_missing_tls_are_refused(image, exports):
    _work, disk, _raw = image
    _, a = exports(FileSource(str(disk)))
    _, b = exports(FileSource(str(disk)))
    _, plain = exports(FileSource(str(disk)), tls=False)
    # another export's CA: our client does not trust this server
    with pytest.raises(NbdTlsError, match="certificate verify failed"):
        NbdClient.connect_tcp("127.0.0.1", a.port, "vda", tls=nbdexport.client_context(b.client))
    # this export's CA but another export's client certificate: the server does not trust us
    mixed = dict(b.client, ca_cert=a.client["ca_cert"])
    with pytest.raises(NbdTlsError, match="certificate"):
        NbdClient.connect_tcp("127.0.0.1", a.port, "vda", tls=nbdexport.client_context(mixed))
    # a name the server certificate was not made for
    with pytest.raises(NbdTlsError, match="[Hh]ostname mismatch"):
        NbdClient.connect_tcp("127.0.0.1", a.port, "vda", tls=nbdexport.client_context(a.client),
                              server_hostname="elsewhere.example")
    # no TLS against a TLS export; TLS against a plain one: refused, never silently plain
    with pytest.raises(NbdTlsError, match="requires TLS"):
        NbdClient.connect_tcp("127.0.0.1", a.port, "vda", tls=None)
    with pytest.raises(NbdTlsError, match="does not offer TLS"):
        NbdClient.connect_tcp("127.0.0.1", plain.port, "vda", tls=nbdexport.client_context(a.client))
    # after all that the export still serves the right client
    with open_client(a) as nbd:
        assert len(nbd.pread(0, 512)) == 512


def test_plain_export_on_a_trusted_network(image, exports):
    _work, disk, raw = image
    _, info = exports(FileSource(str(disk)), tls=False)
    assert not info.tls and info.client is None
    with open_client(info) as nbd:
        assert not nbd.tls
        check_disk(nbd, raw)


def test_chained_over_a_unix_socket_export_keeps_block_status(image, exports):
    work, disk, raw = image
    sock, pid_file = work / "src.sock", work / "src.pid"
    subprocess.run(["qemu-nbd", "-r", "-f", "qcow2", "-x", "inner", "-k", str(sock), "--persistent",
                    "--shared=4", "--fork", f"--pid-file={pid_file}", str(disk)], check=True)
    try:
        _, info = exports(NbdSource(str(sock), "inner"), name="outer", advertise="localhost")
        with NbdClient(str(sock), "inner") as direct:
            expected = direct.extents()
        with open_client(info) as nbd:
            assert nbd.extents() == expected
            check_disk(nbd, raw)
    finally:
        os.kill(int(pid_file.read_text()), signal.SIGTERM)


def test_start_is_idempotent_stop_too(image, exports):
    _work, disk, _raw = image
    workdir, first = exports(FileSource(str(disk)))
    pid = nbdexport.running_pid(workdir)
    assert pid and alive(pid)
    again = start_export(FileSource(str(disk)), workdir=workdir, bind="127.0.0.1", advertise="127.0.0.1",
                         export_name="vda")
    assert again == first and nbdexport.running_pid(workdir) == pid
    # another request in the same workdir replaces the export (new process, new credentials)
    other = start_export(FileSource(str(disk)), workdir=workdir, bind="127.0.0.1", advertise="127.0.0.1",
                         export_name="vda", tls=False)
    assert not other.tls and not alive(pid)
    pid = nbdexport.running_pid(workdir)
    assert pid and alive(pid)
    stop_export(workdir)
    assert not alive(pid) and nbdexport.running_pid(workdir) is None
    assert sorted(p.name for p in workdir.iterdir()) == [".export.lock"]
    stop_export(workdir)
    stop_export(workdir / "never-started")
    with pytest.raises(NbdError, match="cannot connect"):
        open_client(other, timeout=5)


def test_a_dead_export_is_started_anew_and_a_foreign_pid_is_left_alone(image, exports):
    _work, disk, _raw = image
    workdir, first = exports(FileSource(str(disk)))
    pid = nbdexport.running_pid(workdir)
    pidfd = os.pidfd_open(pid)
    os.kill(pid, signal.SIGKILL)                 # qemu-nbd died (or the host rebooted)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    assert poller.poll(5000)
    os.close(pidfd)
    second = start_export(FileSource(str(disk)), workdir=workdir, bind="127.0.0.1", advertise="127.0.0.1",
                          export_name="vda")
    assert second.client != first.client         # fresh credentials
    with open_client(second) as nbd:
        assert len(nbd.pread(0, 512)) == 512
    # a stale pid file naming some other process: stop_export must not signal it
    stop_export(workdir)
    (workdir / "qemu-nbd.pid").write_text(f"{os.getpid()}\n")
    stop_export(workdir)
    assert alive(os.getpid()) and not (workdir / "qemu-nbd.pid").exists()


def test_a_bad_source_says_why(tmp_path):
    workdir = tmp_path / "w"
    with pytest.raises(ExportError, match="No such file"):
        start_export(FileSource(str(tmp_path / "missing.qcow2")), workdir=workdir, bind="127.0.0.1",
                     advertise="127.0.0.1", export_name="vda")
    assert nbdexport.running_pid(workdir) is None
    assert sorted(p.name for p in workdir.iterdir()) == [".export.lock"]
    with pytest.raises(ValueError):
        start_export(FileSource(str(tmp_path / "x"), "qcow2,file.driver=nbd"), workdir=workdir,
                     bind="127.0.0.1", advertise="127.0.0.1", export_name="vda")


def test_a_taken_port_is_retried(image, exports, monkeypatch):
    _work, disk, _raw = image
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy, picks = taken.getsockname()[1], []
        real = nbdexport._free_port
        monkeypatch.setattr(nbdexport, "_free_port", lambda bind: picks.append(bind) or (busy if len(picks) == 1 else real(bind)))
        _, info = exports(FileSource(str(disk)))
        assert len(picks) == 2 and info.port != busy
        with open_client(info) as nbd:
            assert len(nbd.pread(0, 512)) == 512
