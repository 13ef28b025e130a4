"""A real wsgidav + cheroot WebDAV server on loopback for the agent's tests, with a counting and
failure-injecting middleware."""

from __future__ import annotations

import re
import threading

from cheroot import wsgi
from wsgidav.wsgidav_app import WsgiDAVApp

USER, PASSWORD = "agent", "s3cret-pass"


class Tap:
    """Counts PUT bodies; can fail the PUT of chunk .part files from index `fail_from`."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.put_bytes = 0
        self.puts: list[str] = []
        self.methods: list[str] = []
        self.fail_from: int | None = None
        self.fail_status = "500 Internal Server Error"

    def __call__(self, environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        with self.lock:
            self.methods.append(method)
        if method == "PUT":
            m = re.search(r"c-(\d{8})\.part$", path)
            if m and self.fail_from is not None and int(m.group(1)) >= self.fail_from:
                # read half the body, then fail: a transfer broken mid-chunk
                length = int(environ.get("CONTENT_LENGTH") or 0)
                got = len(environ["wsgi.input"].read(length // 2))
                with self.lock:
                    self.put_bytes += got
                start_response(self.fail_status, [("Content-Type", "text/plain"), ("Connection", "close")])
                return [b"injected failure"]
            with self.lock:
                self.put_bytes += int(environ.get("CONTENT_LENGTH") or 0)
                self.puts.append(path)
        return self.app(environ, start_response)


class DavServer:
    def __init__(self, root: str, user: str = USER, password: str = PASSWORD):
        config = {
            "host": "127.0.0.1",
            "port": 0,
            "provider_mapping": {"/": root},
            "simple_dc": {"user_mapping": {"*": {user: {"password": password}}}},
            "http_authenticator": {"accept_basic": True, "accept_digest": False, "default_to_digest": False},
            "verbose": 0,
            "block_size": 1024 * 1024,  # the default 8 KiB makes PUT CPU-bound in Python
            "logging": {"enable": False, "enable_loggers": []},
            "dir_browser": {"enable": False},
            "lock_storage": True,
            "property_manager": True,
        }
        self.tap = Tap(WsgiDAVApp(config))
        self.server = wsgi.Server(("127.0.0.1", 0), self.tap, numthreads=4)
        self.server.prepare()
        self.port = self.server.bind_addr[1]
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.thread.start()

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(5)
