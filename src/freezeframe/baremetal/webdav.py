"""The WebDAV server of the transfer area (wsgidav on cheroot, in a thread of the conductor's
process): where a node's agent streams its root disk.

Every request carries HTTP Basic credentials of one snapshot operation (``baremetal_transfers``:
its user name, the sha256 of its password, its path; a removed transfer's credential is dead):
``TransferDomainController`` checks them against the database on every request (any conductor
serving the area checks the same rows; nothing is cached, so a removed transfer is refused at
once). ``PathScope`` then allows the user its own collection only — the request's path and a
MOVE/COPY's Destination must lie in ``/<its path>/`` (anything else, the root included, is 403;
no listing of the area). Wrong or unknown credentials are 401.

``/_boot/`` is a read-only share without credentials for per-node agent ISOs (a BMC's virtual
media fetches them; they hold no secret: the agent's token is minted at its lookup).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import posixpath
import threading
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlsplit

from sqlalchemy import select

from freezeframe.baremetal.model import Transfer
from freezeframe.baremetal.transfer import TransferArea
from freezeframe.common import errors
from freezeframe.db.session import Database

LOG = logging.getLogger(__name__)
BOOT = "/_boot"
REALM = "freezeframe-transfers"
SCOPE_KEY = "freezeframe.transfer_path"

# user name -> (sha256 of its password, its path) of a live transfer, or None
Lookup = Callable[[str], "tuple[str, str] | None"]


def transfer_lookup(db: Database) -> Lookup:
    """The live transfers, read afresh from the database on each request."""
    def lookup(username: str) -> tuple[str, str] | None:
        def find(session):
            row = session.execute(select(Transfer.password_sha256, Transfer.path).where(
                Transfer.username == username, Transfer.removed_at.is_(None))).first()
            return (row[0], row[1]) if row is not None else None
        return db.run_sync(find)
    return lookup


def _controller_class():
    from wsgidav.dc.base_dc import BaseDomainController

    class TransferDomainController(BaseDomainController):
        """HTTP Basic against the live transfers (sha256 compared in constant time)."""

        def __init__(self, wsgidav_app, config):
            super().__init__(wsgidav_app, config)
            self.lookup: Lookup = config["freezeframe"]["lookup"]

        def get_domain_realm(self, path_info, environ):
            path = _full(environ) if environ is not None else (path_info or "/")
            return BOOT if _in(path, BOOT) else REALM

        def require_authentication(self, realm, environ):
            return realm != BOOT

        def basic_auth_user(self, realm, user_name, password, environ):
            if realm == BOOT or not user_name or not password:
                return False
            try:
                found = self.lookup(user_name)
            except Exception:        # the database away: no one gets in
                LOG.exception("webdav: could not look up transfer user %s", user_name)
                return False
            if found is None:
                return False
            digest, path = found
            if not digest or not hmac.compare_digest(hashlib.sha256(password.encode()).hexdigest(), digest):
                return False
            environ[SCOPE_KEY] = path
            return True

        def supports_http_digest_auth(self):
            return False

    return TransferDomainController


def _full(environ) -> str:
    """The request's path from the server's root (wsgidav moves a share's prefix to SCRIPT_NAME)."""
    return (environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")) or "/"


def _in(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _normal(path: str) -> str | None:
    """The request path, unquoted and normalised; None when it tries to climb (``..``)."""
    path = unquote(path or "/")
    if any(part == ".." for part in path.split("/")) or "\x00" in path:
        return None
    return posixpath.normpath(path) if path not in ("", "/") else "/"


def _scope_class():
    from wsgidav.mw.base_mw import BaseMiddleware

    class PathScope(BaseMiddleware):
        """After authentication: a transfer's user reaches its own collection, nothing else."""

        def __call__(self, environ, start_response):
            path = _normal(_full(environ))
            if path is not None and _in(path, BOOT) and environ.get(SCOPE_KEY) is None:
                if environ.get("REQUEST_METHOD") in ("GET", "HEAD", "OPTIONS"):
                    return self.next_app(environ, start_response)
                return _forbidden(start_response, "the boot share is read-only")
            own = environ.get(SCOPE_KEY)
            if own is None or path is None:
                return _forbidden(start_response, "not yours")
            prefix = "/" + own
            if not _in(path, prefix):
                return _forbidden(start_response, "not yours")
            destination = environ.get("HTTP_DESTINATION")
            if destination:
                dest = _normal(urlsplit(destination).path)
                if dest is None or not _in(dest, prefix) or dest == prefix:
                    return _forbidden(start_response, "the destination is not yours")
            if environ.get("REQUEST_METHOD") in ("DELETE", "MOVE") and path == prefix:
                return _forbidden(start_response, "the collection itself stays")
            return self.next_app(environ, start_response)

    return PathScope


def _forbidden(start_response, why: str):
    body = f"403 Forbidden: {why}\n".encode()
    start_response("403 Forbidden", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _provider_class(area: TransferArea):
    from wsgidav.fs_dav_provider import FileResource, FilesystemProvider, FolderResource

    class AreaFile(FileResource):
        """A file of the area, written as the agent PUTs it — without truncating the empty file
        wsgidav has just created for a new name. wsgidav creates the file, closes it and opens it
        again with "wb" (O_TRUNC): on ext4 a truncation to 0 marks the file for a flush when it is
        closed (auto_da_alloc, for programs that rewrite a file in place), so every chunk went to
        the disk at once, at the disk's speed, and the stream ran no faster than the disk could
        write (measured here: 2 GiB of chunks at ~300 MB/s, the page cache kept nothing). The
        chunks are the intermediate copy, checked against the manifest's sha256s before use: the
        page cache may write them when it likes (and need not, when they are removed first).
        Each file is summed as it is received (``TransferArea.summing``): verify need not read
        the chunks again."""

        def begin_write(self, *, content_type=None):
            if self.provider.readonly:
                from wsgidav.dav_error import HTTP_FORBIDDEN, DAVError
                raise DAVError(HTTP_FORBIDDEN)
            flags = os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(self._file_path, flags)
            try:
                if os.fstat(fd).st_size:        # an existing file written again: truncated as before
                    os.ftruncate(fd, 0)
                fileobj = os.fdopen(fd, "wb", 64 << 10)   # (the 1 MiB blocks go straight through)
            except BaseException:
                os.close(fd)
                raise
            return area.summing(Path(self._file_path), fileobj) or fileobj

    class AreaProvider(FilesystemProvider):
        def get_resource_inst(self, path, environ):
            res = super().get_resource_inst(path, environ)
            if isinstance(res, FileResource) and not isinstance(res, FolderResource):
                return AreaFile(path, environ, res._file_path)
            return res

    return AreaProvider


def build_app(root: Path, lookup: Lookup, *, boot_dir: Path | None = None):
    """The WSGI application: the area at ``/`` (per-transfer collections), ``/_boot`` read-only."""
    from wsgidav.error_printer import ErrorPrinter
    from wsgidav.fs_dav_provider import FilesystemProvider
    from wsgidav.http_authenticator import HTTPAuthenticator
    from wsgidav.request_resolver import RequestResolver
    from wsgidav.wsgidav_app import WsgiDAVApp

    Path(root).mkdir(parents=True, exist_ok=True, mode=0o700)
    mapping = {"/": _provider_class(TransferArea(Path(root)))(str(root), readonly=False,
                                                              fs_opts={"follow_symlinks": False})}
    if boot_dir is not None:
        Path(boot_dir).mkdir(parents=True, exist_ok=True)
        mapping[BOOT] = FilesystemProvider(str(boot_dir), readonly=True, fs_opts={"follow_symlinks": False})
    config = {
        "provider_mapping": mapping,
        "middleware_stack": [ErrorPrinter, HTTPAuthenticator, _scope_class(), RequestResolver],
        "http_authenticator": {"domain_controller": _controller_class(), "accept_basic": True,
                               "accept_digest": False, "default_to_digest": False, "trusted_auth_header": None},
        "freezeframe": {"lookup": lookup},
        "dir_browser": {"enable": False},
        "lock_storage": True,
        "property_manager": None,
        "fs_dav_provider": {"follow_symlinks": False},
        "hotfixes": {"re_encode_path_info": True, "unquote_path_info": False},
        "verbose": 1,
        "logging": {"enable": False},
        "suppress_version_info": True,
        # Read and write in 1 MiB blocks: wsgidav's 8 KiB default costs ~3x the CPU per GiB an
        # agent streams (measured: 253-291 MB/s against 476-705 MB/s on loopback).
        "block_size": 1 << 20,
    }
    return WsgiDAVApp(config)


class WebDavServer:
    """The area served on ``bind`` ("host:port"; port 0 picks a free one) in a thread:
    ``start()`` returns once it listens, ``stop()`` once it stopped."""

    def __init__(self, root: Path, bind: str, lookup: Lookup, *, boot_dir: Path | None = None,
                 threads: int = 8, on_listening: Callable[["WebDavServer"], None] | None = None) -> None:
        host, _, port = bind.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"webdav_bind {bind!r} is not host:port")
        self.root = Path(root)
        self.boot_dir = boot_dir
        self._addr = (host.strip("[]"), int(port))
        self._lookup = lookup
        self._threads = threads
        self._server = None
        self._thread: threading.Thread | None = None
        self._on_listening = on_listening       # told once it listens (a bind on port 0 has its port)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the WebDAV server is not started")
        return self._server.bind_addr[1]

    @property
    def url(self) -> str:
        host = self._addr[0]
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    def start(self) -> None:
        from cheroot import wsgi

        app = build_app(self.root, self._lookup, boot_dir=self.boot_dir)
        server = wsgi.Server(self._addr, app, numthreads=self._threads, server_name="freezeframe-webdav")
        try:
            server.prepare()        # bound and listening from here on
        except OSError as exc:
            raise errors.BackendUnavailable(
                f"the bare-metal transfer area (WebDAV) cannot listen on {self._addr[0]}:{self._addr[1]}: "
                f"{exc}. Another freezeframe (or something else) holds that port: set [baremetal] "
                "webdav_bind (FREEZEFRAME_BAREMETAL__WEBDAV_BIND) to a free host:port, or to '' on a "
                "host that is not the transfer host") from exc
        self._server = server
        self._thread = threading.Thread(target=server.serve, name="ff-webdav", daemon=True)
        self._thread.start()
        LOG.info("webdav: serving the transfer area %s on %s", self.root, self.url)
        if self._on_listening is not None:
            self._on_listening(self)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server, self._thread = None, None
        LOG.info("webdav: stopped")


def area_server(manager, *, boot_dir: Path | None = None) -> WebDavServer | None:
    """The WebDAV server of this conductor for ``manager``'s area (None when ``[baremetal]
    webdav_bind`` is empty: no server here). Its ``start()`` also tells the manager the URL it
    listens on when ``webdav_url`` is not configured (a bind on port 0)."""
    bind = getattr(manager.settings, "webdav_bind", "")
    if not bind:
        return None
    if boot_dir is None:
        boot_dir = getattr(manager.interfaces, "boot_dir", None)

    def listening(server: WebDavServer) -> None:
        if not getattr(manager.settings, "webdav_url", ""):
            manager.set_webdav_url(server.url)
        # The BMCs' default boot URL comes from the bind address: a bind on port 0 names its
        # port only now (no boot interface has been made yet: they are made on first use).
        interfaces = getattr(manager, "interfaces", None)
        if interfaces is not None and bind.endswith(":0") and not getattr(manager.settings, "agent_iso_url", ""):
            if not bind.startswith(("0.0.0.0:", "[::]:")):
                interfaces.boot_url = server.url + "/_boot"
            elif not getattr(manager.settings, "webdav_url", ""):
                interfaces.boot_url = f"http://127.0.0.1:{server.port}/_boot"
    return WebDavServer(manager.area.root, bind, transfer_lookup(manager.db), boot_dir=boot_dir,
                        on_listening=listening)
