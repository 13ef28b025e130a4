"""The base of every typed client of ours (``images/client.py``, ``compute/client.py`` and the
ones to come): one service root, the default headers, timeouts, a transport, one ``_send`` that
turns every failure into the client's own error class.

A client is used over HTTP or, inside ``freezeframe serve``, through the in-process transport
(``http/inprocess.py``): the same code either way, only ``transport`` differs.

Who calls: ``token`` is the caller's own token (``X-Auth-Token``). A service acting for a user
sends its own token as ``service_token`` (``X-Service-Token``) and the user's identity beside it
in ``extra_headers`` (``acting_headers`` in ``http/auth.py``): the receiving service applies
its normal rules to the user, the service credential only adds what only a service may do.
"""

from __future__ import annotations

import html
import json
import re
import ssl
from typing import Any, ClassVar, Mapping, Self

import httpx

from freezeframe import __version__
from freezeframe.common.remote import RemoteError, Unreachable

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=300.0, write=300.0, pool=30.0)
USER_AGENT = f"freezeframe/{__version__} httpx/{httpx.__version__}"
MAX_MESSAGE = 2000
# Where the services put the request id: ours and every OpenStack service, Nova's older name.
REQUEST_ID_HEADERS = ("x-openstack-request-id", "x-compute-request-id")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")


def looks_like_id(value: str) -> bool:
    """Whether a name-or-id argument is worth trying as an id first (a UUID, dashes optional)."""
    return bool(_UUID.match(value))


def request_id_of(response: httpx.Response) -> str | None:
    return next((response.headers[h] for h in REQUEST_ID_HEADERS if h in response.headers), None)


def error_from(response: httpx.Response, error: type[RemoteError] = RemoteError) -> RemoteError:
    """One error from any failed response: our JSON error body (and Keystone's), Nova's
    ``{"itemNotFound": {"message": ...}}``, Glance's HTML page, or plain text."""
    request_id = request_id_of(response)
    title = response.reason_phrase or None
    message = None
    try:
        text = response.text
    except (httpx.HTTPError, UnicodeDecodeError):
        text = ""
    ctype = response.headers.get("content-type", "")
    if "json" in ctype:
        message, body_request_id = _json_message(text)
        request_id = request_id or body_request_id
    elif "html" in ctype or text.lstrip().startswith("<"):
        message = _html_message(text, f"{response.status_code} {title or ''}".strip())
    elif text.strip():
        message = text.strip()
    # Glance's JSON and plain-text messages keep webob's "<br /><br />" and trailing newlines.
    message = " ".join(re.sub(r"(?i)<br\s*/?>", " ", message or "").split())
    message = (message or title or "request failed")[:MAX_MESSAGE]
    return error(message, status=response.status_code, request_id=request_id, title=title)


def _json_message(text: str) -> tuple[str | None, str | None]:
    try:
        doc = json.loads(text)
    except ValueError:
        return text.strip() or None, None
    if not isinstance(doc, dict):
        return None, None
    error = doc.get("error")
    if isinstance(error, dict):  # ours, and Keystone's
        return error.get("message") or error.get("title"), error.get("request_id")
    for key in ("message", "detail", "title"):
        if isinstance(doc.get(key), str):
            return doc[key], None
    if len(doc) == 1:  # Nova style: {"itemNotFound": {"message": ..., "code": 404}}
        inner = next(iter(doc.values()))
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"], None
    return None, None


def _html_message(text: str, status_line: str) -> str | None:
    text = re.sub(r"(?is)<(head|script|style)\b.*?</\1\s*>", " ", text)
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", text)).split())
    if text.startswith(status_line):  # Glance repeats "404 Not Found" in an <h1>
        text = text[len(status_line):].strip()
    return text or None


class ServiceClient:
    """Calls to one service root ``url`` (relative paths are joined to it; an absolute URL, e.g.
    another root of the same deployment, is used as it is), over one connection pool.

    Subclasses name their ``service`` (for messages) and their error classes."""

    service: ClassVar[str] = "remote"
    error: ClassVar[type[RemoteError]] = RemoteError
    unreachable: ClassVar[type[Unreachable]] = Unreachable

    def __init__(self, url: str, token: str | None = None, *, service_token: str | None = None,
                 verify: bool | ssl.SSLContext = True, timeout: httpx.Timeout = DEFAULT_TIMEOUT,
                 transport: httpx.BaseTransport | None = None,
                 extra_headers: Mapping[str, str] | None = None) -> None:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **(extra_headers or {})}
        if token:
            headers["X-Auth-Token"] = token
        if service_token:
            headers["X-Service-Token"] = service_token
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, verify=verify, timeout=timeout,
                                  transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------------

    def _unreachable(self, request: httpx.Request, exc: Exception) -> Unreachable:
        return self.unreachable(f"cannot reach the {self.service} service at {self.url}: {exc}",
                                service=self.service)

    def _send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        """Send; any failed response (4xx, 5xx) or transport failure raises the client's error
        (``unreachable`` when no connection could be made). A failed response is read (for its
        message) and closed even when ``stream`` was asked for."""
        try:
            response = self._http.send(request, stream=stream)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise self._unreachable(request, exc) from None
        except httpx.TransportError as exc:
            raise self.error(f"{request.method} {request.url} failed: {exc or type(exc).__name__}") from None
        if response.is_error:
            try:
                response.read()
            except httpx.HTTPError:
                pass
            finally:
                response.close()
            raise error_from(response, self.error)
        return response

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self._send(self._http.build_request(method, path, **kw))

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        """The answer's JSON document; the client's error if it is not JSON."""
        response = self._call(method, path, **kw)
        try:
            return response.json()
        except ValueError:
            raise self.error(f"{method} {path}: the server's answer is not JSON", status=response.status_code,
                             request_id=request_id_of(response)) from None
