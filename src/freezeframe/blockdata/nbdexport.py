"""Serve a point-in-time disk to another host over NBD: ``qemu-nbd`` on TCP, TLS by default.

In a split deployment the conductor (host A) reads a disk that lives on a compute host (B). The
compute host starts a read-only ``qemu-nbd`` on TCP for that one operation, with x509 material
made for it alone (``ExportCredentials``): an ephemeral CA whose key is dropped once it has
signed a server and a client certificate. QEMU gets the server half (``tls-creds-x509``,
``verify-peer=on``); the conductor gets the client half in ``ExportInfo.client``, over the
compute API (already authenticated), and connects with ``open_client(info)``. Another export's
material, or none, gets no byte of this disk. ``tls=False`` is plain TCP, for networks an
operator marked trusted: then anyone who can reach the port can read the disk.

The export's state is kept in its workdir (``export.json``, ``qemu-nbd.pid``, ``qemu-nbd.log``)
so that ``start_export`` and ``stop_export`` are idempotent across restarts of the compute
process. The server's key is on disk only while ``qemu-nbd`` starts (QEMU reads it then).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import json
import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from freezeframe.blockdata.nbd import NbdClient

QEMU_NBD = "qemu-nbd"
LIFETIME = datetime.timedelta(days=1)
CLOCK_SKEW = datetime.timedelta(minutes=10)     # hosts' clocks differ; QEMU rejects "not yet valid"
PORT_TRIES = 8
START_TIMEOUT = 60

EXPORT_DIR = "export"       # in a point in time's workdir: its export to another host, if any
INFO_FILE = "export.json"
PID_FILE = "qemu-nbd.pid"
LOG_FILE = "qemu-nbd.log"
LOCK_FILE = ".export.lock"
TLS_DIR = "tls"

# RFC 7919's ffdhe2048 group. Without a dh-params.pem QEMU generates 2048-bit DH parameters
# itself when it loads server credentials: 0.3-1 s of CPU on every export start.
FFDHE2048_PEM = """-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""


class ExportError(Exception):
    """qemu-nbd could not be started (its own message is included)."""


# -- credentials -------------------------------------------------------------------------------
def _name(common_name: str) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "freezeframe")]
    if len(common_name) <= 64:                       # the CN's length limit; the SAN is what counts
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _san(address: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(address))
    except ValueError:
        return x509.DNSName(address)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _pem_cert(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class ExportCredentials:
    """x509 material for one export: a CA made for it, a server and a client certificate."""

    ca_cert: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str

    @classmethod
    def create(cls, address: str, *, lifetime: datetime.timedelta = LIFETIME) -> ExportCredentials:
        """``address`` is what the conductor connects to (an IP address or a DNS name): the
        server certificate's CN and subjectAltName. Under 1 ms (three P-256 keys, three
        signatures). The CA's private key lives only inside this call."""
        now = datetime.datetime.now(datetime.timezone.utc)
        start, end = now - CLOCK_SKEW, now + lifetime
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = _name(f"freezeframe export CA {x509.random_serial_number():x}"[:64])
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
        ca = (x509.CertificateBuilder()
              .subject_name(ca_name).issuer_name(ca_name)
              .public_key(ca_key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(start).not_valid_after(end)
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                           key_encipherment=False, data_encipherment=False,
                                           key_agreement=False, key_cert_sign=True, crl_sign=True,
                                           encipher_only=False, decipher_only=False), critical=True)
              .add_extension(ca_ski, critical=False)
              .sign(ca_key, hashes.SHA256()))

        def leaf(name: x509.Name, usage: x509.ObjectIdentifier,
                 san: list[x509.GeneralName] | None) -> tuple[str, str]:
            key = ec.generate_private_key(ec.SECP256R1())
            builder = (x509.CertificateBuilder()
                       .subject_name(name).issuer_name(ca_name)
                       .public_key(key.public_key())
                       .serial_number(x509.random_serial_number())
                       .not_valid_before(start).not_valid_after(end)
                       .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                       # key_encipherment: QEMU's sanity check wants it on every leaf certificate
                       .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                    key_encipherment=True, data_encipherment=False,
                                                    key_agreement=False, key_cert_sign=False,
                                                    crl_sign=False, encipher_only=False,
                                                    decipher_only=False), critical=True)
                       .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                       .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                      critical=False)
                       .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                                      critical=False))
            if san:
                builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
            return _pem_cert(builder.sign(ca_key, hashes.SHA256())), _pem_key(key)

        server_cert, server_key = leaf(_name(address), ExtendedKeyUsageOID.SERVER_AUTH, [_san(address)])
        client_cert, client_key = leaf(_name("freezeframe conductor"), ExtendedKeyUsageOID.CLIENT_AUTH, None)
        return cls(_pem_cert(ca), server_cert, server_key, client_cert, client_key)

    def write_server_dir(self, path: Path) -> Path:
        """What QEMU's ``tls-creds-x509,endpoint=server`` reads from ``dir=``: ca-cert.pem,
        server-cert.pem and server-key.pem (and dh-params.pem, a standard group, so QEMU does
        not generate one), each 0600, in a 0700 directory."""
        path = Path(path)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
        for name, text in (("ca-cert.pem", self.ca_cert), ("server-cert.pem", self.server_cert),
                           ("server-key.pem", self.server_key), ("dh-params.pem", FFDHE2048_PEM)):
            _write_private(path / name, text)
        return path

    def client_material(self) -> dict[str, str]:
        """The conductor's half, JSON-able: give it to ``client_context``."""
        return {"ca_cert": self.ca_cert, "client_cert": self.client_cert, "client_key": self.client_key}


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def client_context(material: dict[str, str]) -> ssl.SSLContext:
    """A TLS (>= 1.2) client context that trusts only this export's CA and presents its client
    certificate. The ssl module loads a key only from a file: it is written to a private
    temporary directory and removed as soon as it is loaded."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)     # CERT_REQUIRED and check_hostname
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cadata=material["ca_cert"])
    with tempfile.TemporaryDirectory(prefix="ffnbd-tls-") as tmp:   # 0700
        chain = Path(tmp) / "client.pem"
        _write_private(chain, material["client_cert"] + material["client_key"])
        try:
            ctx.load_cert_chain(chain)
        finally:
            chain.unlink()
    return ctx


# -- exports -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileSource:
    """An image file, read-only (a qcow2's backing chain is followed as usual)."""

    path: str
    format: str = "qcow2"


@dataclass(frozen=True)
class NbdSource:
    """An export of an NBD server on a local unix socket (a libvirt pull-mode backup export,
    a ``qemu-nbd -k``), served on again: ``qemu-nbd`` connects to it as a client."""

    socket_path: str
    export: str


Source = Union[FileSource, NbdSource]


@dataclass(frozen=True)
class ExportInfo:
    """What the conductor needs to read the export: JSON-able (``asdict`` / ``from_dict``)."""

    host: str
    port: int
    export_name: str
    tls: bool
    client: dict[str, str] | None = None          # client_material(), when tls

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportInfo:
        return cls(host=data["host"], port=int(data["port"]), export_name=data["export_name"],
                   tls=bool(data["tls"]), client=data.get("client"))


def open_client(info: ExportInfo | dict[str, Any], *, timeout: float = 60.0) -> NbdClient:
    """Connect to an export as ``start_export`` described it (TLS when it says so)."""
    if isinstance(info, dict):
        info = ExportInfo.from_dict(info)
    if info.tls and not info.client:
        raise ValueError("a TLS export without client material")
    tls = client_context(info.client) if info.tls else None
    return NbdClient.connect_tcp(info.host, info.port, info.export_name, tls=tls, timeout=timeout)


def _opt(value: str) -> str:
    """A value inside a QEMU option string: commas are doubled."""
    return value.replace(",", ",,")


def _image_opts(source: Source) -> str:
    if isinstance(source, FileSource):
        if not re.fullmatch(r"[a-z0-9_]+", source.format):
            raise ValueError(f"bad image format {source.format!r}")
        # file.driver=file: the path is a path, never a protocol ("nbd:...", "json:...")
        return f"driver={source.format},file.driver=file,file.filename={_opt(os.path.abspath(source.path))}"
    if isinstance(source, NbdSource):
        return ("driver=raw,file.driver=nbd,file.server.type=unix,"
                f"file.server.path={_opt(os.path.abspath(source.socket_path))},file.export={_opt(source.export)}")
    raise TypeError(f"not an export source: {source!r}")


def _free_port(bind: str) -> int:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((bind, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _locked(workdir: Path) -> Iterator[None]:
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(workdir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _pidfd_of_our_qemu_nbd(workdir: Path) -> int | None:
    """A pidfd of the qemu-nbd this workdir started, if it still runs (the pid is checked to
    belong to a qemu-nbd with this workdir's pid file, not a process that reused the number)."""
    try:
        pid = int((workdir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        pidfd = os.pidfd_open(pid)           # held from here on: the pid cannot be reused under us
    except OSError:
        return None
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        os.close(pidfd)
        return None
    ours = (bool(args) and os.path.basename(args[0]) == QEMU_NBD.encode()
            and str(workdir / PID_FILE).encode() in args and state != "Z")
    if not ours:
        os.close(pidfd)
        return None
    return pidfd


def running_pid(workdir: Path) -> int | None:
    """The pid of the workdir's qemu-nbd, if it runs."""
    workdir = Path(os.path.abspath(workdir))
    pidfd = _pidfd_of_our_qemu_nbd(workdir)
    if pidfd is None:
        return None
    os.close(pidfd)
    return int((workdir / PID_FILE).read_text().strip())


def _request_key(source: Source, bind: str, advertise: str, export_name: str, tls: bool, shared: int) -> dict:
    return {"source": {"kind": type(source).__name__, **asdict(source)}, "bind": bind,
            "advertise": advertise, "export_name": export_name, "tls": tls, "shared": shared}


def start_export(source: Source, *, workdir: Path, bind: str, advertise: str, export_name: str,
                 tls: bool = True, shared: int = 8) -> ExportInfo:
    """Serve ``source`` read-only on ``bind`` (a free port is picked) for a client that connects
    to ``advertise``. Idempotent: while this workdir's qemu-nbd runs with the same request, its
    ExportInfo is returned again; otherwise leftovers are cleaned and a new export started (with
    new credentials). 10-25 ms (qemu-nbd --fork returns once it listens)."""
    workdir = Path(os.path.abspath(workdir))
    request = _request_key(source, bind, advertise, export_name, tls, shared)
    with _locked(workdir):
        pidfd = _pidfd_of_our_qemu_nbd(workdir)
        if pidfd is not None:
            os.close(pidfd)
            try:
                saved = json.loads((workdir / INFO_FILE).read_text())
                if saved.get("request") == request:
                    return ExportInfo.from_dict(saved["info"])
            except (OSError, ValueError, KeyError, TypeError):
                pass
        _stop(workdir)

        image = _image_opts(source)
        creds = ExportCredentials.create(advertise) if tls else None
        last_error = ""
        for _ in range(PORT_TRIES):
            port = _free_port(bind)
            args = [QEMU_NBD, "--read-only", "--persistent", f"--shared={int(shared)}", "--fork",
                    "--pid-file", str(workdir / PID_FILE), "--bind", bind, "--port", str(port),
                    "--export-name", export_name]
            if creds is not None:
                tls_dir = creds.write_server_dir(workdir / TLS_DIR)
                args += ["--object", f"tls-creds-x509,id=tls0,dir={_opt(str(tls_dir))},endpoint=server,verify-peer=on",
                         "--tls-creds", "tls0"]
            args += ["--image-opts", image]
            log_path = workdir / LOG_FILE
            with open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as log:
                # stderr to a file, not a pipe: the daemon keeps its stderr open for good
                try:
                    proc = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=log, close_fds=True, timeout=START_TIMEOUT)
                except subprocess.TimeoutExpired:       # e.g. an NBD source that never answers
                    _stop(workdir)
                    raise ExportError(f"qemu-nbd did not get ready within {START_TIMEOUT} s "
                                      f"exporting {source}") from None
            shutil.rmtree(workdir / TLS_DIR, ignore_errors=True)   # QEMU has read it by now
            if proc.returncode == 0:
                info = ExportInfo(host=advertise, port=port, export_name=export_name, tls=tls,
                                  client=creds.client_material() if creds else None)
                _write_private(workdir / INFO_FILE, json.dumps({"request": request, "info": info.to_dict()}))
                return info
            last_error = log_path.read_text(errors="replace").strip()
            if "Address already in use" not in last_error:
                break
        _stop(workdir)
        raise ExportError(f"qemu-nbd could not export {source}: {last_error or 'no message'}")


def _wait_gone(pidfd: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(int(timeout * 1000)))


def _stop(workdir: Path) -> None:
    pidfd = _pidfd_of_our_qemu_nbd(workdir)
    if pidfd is not None:
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
            if not _wait_gone(pidfd, 5.0):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                _wait_gone(pidfd, 5.0)
        except ProcessLookupError:
            pass
        finally:
            os.close(pidfd)
    shutil.rmtree(workdir / TLS_DIR, ignore_errors=True)
    for name in (INFO_FILE, PID_FILE, LOG_FILE):
        with contextlib.suppress(FileNotFoundError):
            (workdir / name).unlink()


def stop_export(workdir: Path) -> None:
    """Stop the workdir's qemu-nbd (only if that pid is still our qemu-nbd) and remove its
    credentials and state files. Idempotent; the workdir itself (and its lock file) is left."""
    workdir = Path(os.path.abspath(workdir))
    if not workdir.is_dir():
        return
    with _locked(workdir):
        _stop(workdir)
