"""Microversion negotiation, one implementation for every API (the API-SIG microversion
guideline, as Nova, Cinder and Ironic apply it).

A request names its version in ``OpenStack-API-Version: <service type> X.Y`` (several services
may share the header, comma-separated, or repeat it) or in the service's legacy header
(``X-OpenStack-Nova-API-Version: X.Y``, ``X-OpenStack-Ironic-API-Version: X.Y``); the standard
header wins when both are sent. No version: the service's default (its minimum). ``latest``: its
maximum. A malformed version is a 400 (Ironic answers 406); a well-formed one outside
``[min, max]`` is a 406 naming both. Numbers are ASCII digits without leading zeros (Nova's and
Cinder's grammar), never ``int()`` of thousands of digits.

The answer carries the negotiated version in both headers and ``Vary`` on them; a service that
advertises its range on every response (Ironic's ``X-OpenStack-Ironic-API-Minimum-Version`` and
``-Maximum-Version``) names those headers in ``range_headers`` and wraps its routes with
:meth:`Microversions.wrap`, so that errors carry them too.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from starlette.datastructures import Headers
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from freezeframe.common import errors
from freezeframe.common.strict import is_uint_text, shown
from freezeframe.common.web.errors import HANDLERS, domain_error

STANDARD_HEADER = "OpenStack-API-Version"
IRONIC_RANGE_HEADERS = ("X-OpenStack-Ironic-API-Minimum-Version", "X-OpenStack-Ironic-API-Maximum-Version")
_SCOPE_KEY = "microversion"


class APIVersion(NamedTuple):
    """``X.Y``; compares as a tuple (``version >= (2, 45)``)."""
    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    @classmethod
    def parse(cls, text: str) -> APIVersion:
        """Strict ``X.Y``: ASCII digits, no sign, no spaces inside, no leading zeros; ``Invalid``
        otherwise."""
        major, dot, minor = text.partition(".")
        if dot and _number(major) and _number(minor):
            return cls(int(major), int(minor))
        raise errors.Invalid(f"Invalid microversion {shown(text)}: use MAJOR.MINOR (e.g. 2.1) or 'latest'")


def _number(part: str) -> bool:
    return is_uint_text(part) and (part == "0" or not part.startswith("0"))


def _version(value: str | tuple[int, int]) -> APIVersion:
    return APIVersion.parse(value) if isinstance(value, str) else APIVersion(*value)


class Microversions:
    """The versions one service speaks and how it is told which one a request wants."""

    def __init__(self, service_type: str, legacy_header: str | None, min: str | tuple[int, int],
                 max: str | tuple[int, int], *, default: str | tuple[int, int] | None = None,
                 range_headers: tuple[str, str] | None = None,
                 malformed: type[errors.FreezeframeError] = errors.Invalid) -> None:
        self.service_type = service_type                 # "compute", "volume", "baremetal"
        self.legacy_header = legacy_header               # e.g. "X-OpenStack-Nova-API-Version"
        self.min, self.max = _version(min), _version(max)
        self.default = _version(default) if default is not None else self.min
        if not self.min <= self.default <= self.max:
            raise ValueError(f"{service_type}: default {self.default} is outside {self.min}..{self.max}")
        self.range_headers = range_headers               # (minimum, maximum) header names, or None
        self.malformed = malformed                       # Ironic: errors.NotAcceptable
        read = [STANDARD_HEADER, *([legacy_header] if legacy_header else [])]
        self.vary = ", ".join(read)

    # -- the request ---------------------------------------------------------------------------

    def requested(self, headers: Headers) -> str | None:
        """The version text the request names for this service, or None."""
        for value in headers.getlist(STANDARD_HEADER):
            for item in value.split(","):
                service, _, version = item.strip().partition(" ")
                if service.lower() == self.service_type:
                    return version.strip()
        if self.legacy_header:
            values = headers.getlist(self.legacy_header)
            if values:
                return values[0].strip()
        return None

    def negotiate(self, headers: Headers) -> APIVersion:
        raw = self.requested(headers)
        if raw is None:
            return self.default
        if raw.lower() == "latest":
            return self.max
        try:
            version = APIVersion.parse(raw)
        except errors.Invalid as exc:
            raise self.malformed(exc.message) from None
        if not self.min <= version <= self.max:
            raise errors.NotAcceptable(f"Version {version} is not supported by the API. Minimum is {self.min} and "
                                       f"maximum is {self.max}.")
        return version

    def parse(self, request: Request) -> APIVersion:
        """The version of this request (negotiated once when the routes are wrapped)."""
        found = request.scope.get("state", {}).get(_SCOPE_KEY)
        return found if found is not None else self.negotiate(request.headers)

    # -- the response --------------------------------------------------------------------------

    def range(self) -> dict[str, str]:
        """The advertised range (on every response of a service with ``range_headers``)."""
        if not self.range_headers:
            return {}
        return {self.range_headers[0]: str(self.min), self.range_headers[1]: str(self.max)}

    def headers(self, version: APIVersion | None) -> dict[str, str]:
        """What an answer carries: the negotiated version in both headers (none if the request
        was refused before one was agreed), ``Vary`` on them, and the range if advertised."""
        out = {"Vary": self.vary, **self.range()}
        if version is not None:
            out[STANDARD_HEADER] = f"{self.service_type} {version}"
            if self.legacy_header:
                out[self.legacy_header] = str(version)
        return out

    def versioned(self, response: Response, version: APIVersion) -> Response:
        """``response`` with :meth:`headers` set."""
        for name, value in self.headers(version).items():
            response.headers[name] = value
        return response

    def wrap(self, app: ASGIApp, handlers: dict[Any, Any] | None = None) -> ASGIApp:
        """``app`` (a service's routes) negotiating once per request: the version is stored for
        :meth:`parse`, and every answer — errors included, a refused version too — carries
        :meth:`headers`. ``handlers``: the error map (``freezeframe.common.web.errors.HANDLERS``), applied
        inside so the errors pass through here."""
        handlers = HANDLERS if handlers is None else handlers
        return _Negotiated(ExceptionMiddleware(app, handlers=handlers), self,
                           refuse=handlers.get(errors.FreezeframeError, domain_error))


class _Negotiated:
    def __init__(self, app: ASGIApp, versions: Microversions, refuse: Any = domain_error) -> None:
        self.app = app
        self.versions = versions
        self.refuse = refuse          # answers a refused version in the service's error shape

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        version: APIVersion | None = None
        try:
            version = self.versions.negotiate(Headers(scope=scope))
        except errors.FreezeframeError as exc:
            response = await self.refuse(Request(scope, receive), exc)
            response.headers.update(self.versions.headers(None))
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})[_SCOPE_KEY] = version
        extra = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                 for k, v in self.versions.headers(version).items()]

        async def send_versioned(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k for k, _ in extra}
                message["headers"] = [*(h for h in message.get("headers", []) if h[0].lower() not in names), *extra]
            await send(message)

        await self.app(scope, receive, send_versioned)
