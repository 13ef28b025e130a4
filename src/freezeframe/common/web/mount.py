"""What a service's API brings to the process that serves it: its routes under its path, the
paths that need no token (version documents, asking for a token), its start and stop. A process
(``serve``, ``freezeframe api``, ``freezeframe compute``) is the list of what it mounts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from starlette.routing import BaseRoute, Mount

ANY = frozenset({"*"})       # every method (the router answers 405 for the ones it has not)


@dataclass(frozen=True)
class Public:
    path: str                                   # below the service's path; "" is the path itself
    methods: frozenset[str] = ANY
    # Every path below ``path`` too (one segment or more: an id), e.g. the agent's heartbeat
    # ``/v1/heartbeat/{node}`` whose credential is in its body, not a token.
    prefix: bool = False


@dataclass
class Mounted:
    name: str                                   # "image", "compute", "identity", "workflows", "host"
    path: str                                   # where it is mounted: "/image"
    app: Any                                    # its ASGI router
    public: tuple[Public, ...] = ()
    start: Callable[[], Any] | None = None
    stop: Callable[[], Any] | None = None
    extra_routes: list[BaseRoute] = field(default_factory=list)   # e.g. the path itself without a redirect

    def routes(self) -> list[BaseRoute]:
        return [*self.extra_routes, Mount(self.path, app=self.app)]


class PublicPaths:
    """Which requests need no token: the mounted services' public paths, and the process's own
    (``own``: full paths, e.g. the root version document). The health check is public unless
    asked for its detailed form (for admins)."""

    def __init__(self, mounted: Iterable[Mounted], own: Iterable[Public] = ()) -> None:
        self._paths: dict[str, frozenset[str]] = {}
        self._prefixes: list[tuple[str, frozenset[str]]] = []
        for public in own:
            self._add(public.path, public.methods, public.prefix)
        for m in mounted:
            for public in m.public:
                self._add(m.path + public.path, public.methods, public.prefix)

    def _add(self, path: str, methods: frozenset[str], prefix: bool = False) -> None:
        key = path.rstrip("/")
        if prefix:
            self._prefixes.append((key + "/", methods))
            return
        self._paths[key] = self._paths.get(key, frozenset()) | methods

    def __call__(self, path: str, method: str = "GET", detailed: bool = False) -> bool:
        stripped = path.rstrip("/")
        if stripped == "/healthcheck":
            return not detailed
        methods = self._paths.get(stripped, ())
        if "*" in methods or method in methods:
            return True
        return any(stripped.startswith(start) and len(stripped) > len(start) and ("*" in found or method in found)
                   for start, found in self._prefixes)
