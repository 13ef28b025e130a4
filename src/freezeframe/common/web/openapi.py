"""OpenAPI 3.1 documents of the mounted APIs, generated from the code that serves them — never
written beside it: a route added to a router is in its API's document on the next start.

For each :class:`~freezeframe.common.web.mount.Mounted` the document is read from
- its router, through the wrappers around it (the microversion negotiation, the exception
  middleware): every ``Route`` (a ``Mount`` inside adds its path), its path template and
  convertors (path parameters), its methods (``HEAD``, which Starlette adds to every ``GET``,
  is left out), and its endpoint's docstring (the summary);
- the endpoint's source (``ast``, following ``self.<method>(...)`` calls and the handler a wrapper
  closes over): the responses it builds (``JSONResponse``/``Response``/``StreamingResponse`` and
  their status codes, the media type of a stream), the error answers it builds itself
  (``error_response(416, ...)``), whether it reads a JSON body (``json_body``, its media types)
  or image data (``check_data_media_type``), the query parameters it reads by name, and the
  microversions it negotiates (a :class:`Microversions` it names, or the one wrapping the router):
  the version header parameters;
- the JSON schemas the code validates bodies with (:data:`REQUEST_SCHEMAS`: the image schema);
- the error bodies, by calling the API's own error handler (the one its router is wrapped with,
  else the application's) once per status: the generic ``{"error": {...}}``, Nova's and Cinder's
  ``{"itemNotFound": {...}}`` or Ironic's ``{"error_message": ..., "request_id": ...}``, whichever
  the API really answers. The edge (authentication, URL and header checks, load shedding) answers
  in the generic shape whatever the API, so those statuses accept either.

Not documented: 500 (a fault, never an answer to document) and query parameters a handler passes
on whole to its service (the listing filters), whose names are the service's. Without the
sources (an install of bytecode only) an operation's answers are documented as 200 JSON. Each
document is built on its first request (a fraction of a second) and kept.
"""

from __future__ import annotations

import ast
import inspect
import json
import logging
import re
import textwrap
from typing import Any, Callable, Iterable, Mapping

from starlette.exceptions import HTTPException
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, Router

from freezeframe.common import errors
from freezeframe.common.context import request_id_var
from freezeframe.common.web.errors import HANDLERS, STATUS, error_response
from freezeframe.common.web.errors import LOG as ERRORS_LOG
from freezeframe.common.web.microversion import STANDARD_HEADER, Microversions
from freezeframe.common.web.mount import Mounted, Public

PATH = "/openapi"                  # the index; each document at /openapi/<name>.json
PUBLIC = (Public(PATH, frozenset({"GET"})), Public(PATH, frozenset({"GET"}), prefix=True))
OPENAPI_VERSION = "3.1.0"
JSON = "application/json"
# Statuses the edge (http/middleware.py, http/limits.py) may answer before any API sees the
# request, always in the generic shape: a malformed URL or header (400, 404), no or a bad token
# (401), headers too large (431), load shed (503).
EDGE_STATUSES = frozenset({400, 401, 404, 431, 503})
# Statuses the router itself answers (no route, a route without the method).
ROUTING_STATUSES = frozenset({404, 405})
_RESPONSE_CLASSES = {"Response", "JSONResponse", "StreamingResponse", "PlainTextResponse"}
_ERROR_BUILDERS = {"error_response", "fault_response", "ironic_error_response"}
_FOLLOW_DEPTH = 4


def _image_request_schema(_media: str) -> dict[str, Any]:
    from freezeframe.images import schema
    doc = {k: v for k, v in schema.IMAGE_SCHEMA.items() if k not in ("name", "links")}   # not JSON schema
    return {"type": "object", **json.loads(json.dumps(doc))}


def _image_patch_schema(media: str) -> dict[str, Any]:
    """Glance's JSON-patch dialects as ``images/patch.py`` parses them."""
    from freezeframe.images import patch
    path = {"type": "string", "pattern": "^/[^/]+$"}
    if media == patch.MEDIA_V21:
        change = {"type": "object", "required": ["op", "path"], "additionalProperties": False,
                  "properties": {"op": {"enum": list(patch.OPS)}, "path": path, "value": {}}}
    else:
        change = {"type": "object", "minProperties": 1, "maxProperties": 2,
                  "properties": {**{op: path for op in patch.OPS}, "value": {}},
                  "additionalProperties": False}
    return {"type": "array", "items": change}


# The JSON schemas the services validate request bodies with (or, for Glance's JSON patch, the
# grammar its parser enforces), by the endpoint that reads them ("<class>.<method>"), per media
# type; tests/unit/common/test_openapi.py checks each names a routed endpoint.
REQUEST_SCHEMAS: dict[str, Callable[[str], dict[str, Any]]] = {
    "ImageAPI.create_image": _image_request_schema,
    "ImageAPI.update_image": _image_patch_schema,
}


# -- reading the code -----------------------------------------------------------------------------

class _Found:
    """What the source of one endpoint (and what it calls) says."""

    def __init__(self) -> None:
        self.success: dict[int, set[str | None]] = {}     # status -> media types (None: no body)
        self.errors: set[int] = set()
        self.body: tuple[str, ...] | None = None          # request media types
        self.body_required = True
        self.query: list[str] = []
        self.versions: Microversions | None = None
        self.docs: list[str] = []


def _callables_of(fn: Any) -> list[Any]:
    """``fn`` and the functions a wrapper closes over (``VolumeAPI._in_project``'s handler)."""
    out = [fn]
    for cell in getattr(getattr(fn, "__func__", fn), "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if callable(value) and (inspect.ismethod(value) or inspect.isfunction(value)):
            out.append(value)
    return out


def _tree(fn: Any) -> ast.AST | None:
    try:
        return ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return None


def _call_name(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def _keyword(node: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in node.keywords if k.arg == name), None)


def _constants(tree: ast.AST, name: str) -> set[int]:
    """The integer constants assigned to a local ``name`` (``status = 200 if ... else 300``,
    ``start, end, status = 0, size - 1, 200``)."""
    found: set[int] = set()

    def values(expr: ast.expr) -> Iterable[ast.expr]:
        if isinstance(expr, ast.IfExp):
            yield from values(expr.body)
            yield from values(expr.orelse)
        else:
            yield expr

    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            if isinstance(target, ast.Name) and target.id == name:
                exprs = list(values(node.value))
            elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                exprs = [v for t, v in zip(target.elts, node.value.elts) if isinstance(t, ast.Name) and t.id == name]
            else:
                continue
            found |= {e.value for e in exprs if isinstance(e, ast.Constant) and isinstance(e.value, int)}
    return found


def _evaluate(expr: ast.expr, namespace: Mapping[str, Any]) -> Any:
    """A name or dotted name (``patch.MEDIA_TYPES``) in the function's module, else None."""
    if isinstance(expr, ast.Name):
        return namespace.get(expr.id)
    if isinstance(expr, ast.Attribute):
        base = _evaluate(expr.value, namespace)
        return getattr(base, expr.attr, None) if base is not None else None
    if isinstance(expr, ast.Constant):
        return expr.value
    return None


def _query_aliases(tree: ast.AST) -> set[str]:
    """Local names bound to ``request.query_params`` (``query = request.query_params``)."""
    return {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Attribute) and node.value.attr == "query_params"
            for t in node.targets if isinstance(t, ast.Name)}


def _is_query(expr: ast.expr, aliases: set[str]) -> bool:
    return (isinstance(expr, ast.Attribute) and expr.attr == "query_params") or \
        (isinstance(expr, ast.Name) and expr.id in aliases)


def _method_test(test: ast.expr) -> tuple[bool, set[str]] | None:
    """``request.method == "PUT"`` (or ``in ("PUT", ...)``, ``!=``): (equal?, the methods)."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.left, ast.Attribute)
            and test.left.attr == "method"):
        return None
    op, right = test.ops[0], test.comparators[0]
    if isinstance(right, ast.Constant) and isinstance(right.value, str):
        names = {right.value}
    elif isinstance(right, (ast.Tuple, ast.List, ast.Set)) and all(isinstance(e, ast.Constant) for e in right.elts):
        names = {e.value for e in right.elts}
    else:
        return None
    if isinstance(op, (ast.Eq, ast.In)):
        return True, names
    if isinstance(op, (ast.NotEq, ast.NotIn)):
        return False, names
    return None


def _nodes(tree: ast.AST, method: str) -> Iterable[ast.AST]:
    """Every node of ``tree`` a request with ``method`` can reach: a branch on
    ``request.method`` for other methods is left out."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, (ast.If, ast.IfExp)):
            test = _method_test(node.test)
            if test is not None:
                equal, names = test
                taken = node.body if (method in names) == equal else node.orelse
                stack.extend(taken if isinstance(taken, list) else [taken])
                continue
        stack.extend(ast.iter_child_nodes(node))


def _read(fn: Any, found: _Found, method: str, depth: int = 0, seen: set[Any] | None = None) -> None:
    seen = set() if seen is None else seen
    func = getattr(fn, "__func__", fn)
    if func in seen or depth > _FOLLOW_DEPTH:
        return
    seen.add(func)
    tree = _tree(func)
    if tree is None:
        return
    owner = type(fn.__self__) if inspect.ismethod(fn) else None
    namespace = getattr(func, "__globals__", {})
    for name in func.__code__.co_names:
        if isinstance(namespace.get(name), Microversions) and found.versions is None:
            found.versions = namespace[name]
    aliases = _query_aliases(tree)
    for node in _nodes(tree, method):
        if isinstance(node, ast.Call):
            _read_call(node, tree, namespace, found, aliases)
            target = node.func
            if owner is not None and isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                    and target.value.id == "self":
                called = getattr(fn.__self__, target.attr, None)
                if inspect.ismethod(called) or inspect.isfunction(called):
                    _read(called, found, method, depth + 1, seen)
        elif isinstance(node, ast.Subscript) and _is_query(node.value, aliases):
            _query_name(node.slice, found)
        elif isinstance(node, ast.Compare) and any(isinstance(op, ast.In) for op in node.ops) \
                and any(_is_query(c, aliases) for c in node.comparators):
            _query_name(node.left, found)


def _query_name(expr: ast.expr, found: _Found) -> None:
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str) and expr.value not in found.query:
        found.query.append(expr.value)


def _read_call(node: ast.Call, tree: ast.AST, namespace: Mapping[str, Any], found: _Found,
               aliases: set[str]) -> None:
    name = _call_name(node)
    if name in _RESPONSE_CLASSES:
        status = _keyword(node, "status_code")
        if status is None and name != "Response" and len(node.args) > 1:
            status = node.args[1]
        if status is None:
            statuses = {200}
        elif isinstance(status, ast.Constant) and isinstance(status.value, int):
            statuses = {status.value}
        elif isinstance(status, ast.Name):
            statuses = _constants(tree, status.id) or {200}
        else:
            statuses = {200}
        media: str | None
        if name == "JSONResponse":
            media = JSON
        elif name == "PlainTextResponse":
            media = "text/plain"
        elif name == "StreamingResponse":
            media = _evaluate(_keyword(node, "media_type"), namespace) if _keyword(node, "media_type") else None
            media = media or "application/octet-stream"
        else:
            media = None if not node.args and _keyword(node, "content") is None else "application/octet-stream"
        for s in statuses:
            if s < 400:
                found.success.setdefault(s, set()).add(media)
            else:
                found.errors.add(s)
    elif name in _ERROR_BUILDERS and node.args and isinstance(node.args[0], ast.Constant):
        found.errors.add(node.args[0].value)
    elif name == "json_body":
        media_types = _keyword(node, "media_types")
        extra = tuple(_evaluate(media_types, namespace) or ()) if media_types is not None else ()
        found.body = tuple(extra) or (JSON,)
        allow_empty = _keyword(node, "allow_empty")
        if allow_empty is not None and _evaluate(allow_empty, namespace):
            found.body_required = False
    elif name == "check_data_media_type":
        found.body = ("application/octet-stream",)
    elif name == "get" and isinstance(node.func, ast.Attribute) and _is_query(node.func.value, aliases) \
            and node.args:
        _query_name(node.args[0], found)


def read_endpoint(endpoint: Any, method: str = "GET") -> _Found:
    """What the code of ``endpoint`` does for a request with ``method``."""
    found = _Found()
    for fn in _callables_of(endpoint):
        _read(fn, found, method)
        doc = inspect.getdoc(fn)
        if doc:
            found.docs.append(doc)
    return found


# -- the routes -----------------------------------------------------------------------------------

def unwrap(app: Any) -> tuple[Router | None, Microversions | None, Mapping[Any, Any] | None]:
    """The router inside a mounted app, the microversions negotiated around it and the error
    handlers it is wrapped with (None: the application's)."""
    versions, handlers = None, None
    for _ in range(20):
        if isinstance(app, Router):
            return app, versions, handlers
        if isinstance(getattr(app, "versions", None), Microversions):
            versions = app.versions
        if isinstance(app, ExceptionMiddleware) and handlers is None:
            handlers = app._exception_handlers
        app = getattr(app, "app", None)
        if app is None:
            break
    return None, versions, handlers


def routes_of(mounted: Mounted) -> list[tuple[str, Route]]:
    """(full path template, route) of everything a mounted API routes."""
    out: list[tuple[str, Route]] = [(r.path_format, r) for r in mounted.extra_routes if isinstance(r, Route)]
    router, _versions, _handlers = unwrap(mounted.app)
    if router is not None:
        out += _walk(router, mounted.path)
    return out


def _walk(router: Router, prefix: str) -> list[tuple[str, Route]]:
    out: list[tuple[str, Route]] = []
    for route in router.routes:
        if isinstance(route, Mount):
            inner, _v, _h = unwrap(route.app)
            if inner is not None:
                out += _walk(inner, prefix + route.path)
        elif isinstance(route, Route):
            out.append((prefix + route.path_format, route))
    return out


def operations(mounted: Mounted) -> set[tuple[str, str]]:
    """(method, path template) of every operation of a mounted API (``HEAD`` left out)."""
    return {(m, path) for path, route in routes_of(mounted) for m in route.methods or () if m != "HEAD"}


# -- error bodies ---------------------------------------------------------------------------------

def _drive(coro: Any) -> Any:
    """Run a coroutine that never suspends (an error handler building its answer)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("an error handler suspended while the OpenAPI document was built")


_EXAMPLE = "An example error of the OpenAPI document"


class _Quiet(logging.Filter):
    """Drops the log lines the error handlers write for the example errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _EXAMPLE not in record.getMessage()


def _exception_for(status: int) -> Exception:
    for cls, mapped in STATUS.items():
        if mapped == status:
            return cls(_EXAMPLE)
    return HTTPException(status, _EXAMPLE)


def _schema_of(value: Any, status: int) -> dict[str, Any]:
    """A JSON schema that a body of this structure matches (the error bodies' shape)."""
    if isinstance(value, dict):
        return {"type": "object", "required": sorted(value),
                "properties": {k: _schema_of(v, status) for k, v in value.items()}}
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer", "const": status} if value == status else {"type": "integer"}
    if isinstance(value, str):
        try:                      # Ironic's error_message: a JSON document in a string
            inner = json.loads(value)
        except ValueError:
            inner = None
        if isinstance(inner, dict):
            return {"type": "string", "contentMediaType": JSON, "contentSchema": _schema_of(inner, status)}
        return {"type": "string"}
    if value is None:
        return {"type": "null"}
    if isinstance(value, list):
        return {"type": "array"}
    return {}


def error_schema(handlers: Mapping[Any, Any], status: int) -> dict[str, Any]:
    """The schema of the body this API's error handler answers ``status`` with, read from the
    handler's own answer."""
    exc = _exception_for(status)
    handler = handlers.get(type(exc)) or handlers.get(errors.FreezeframeError if isinstance(
        exc, errors.FreezeframeError) else HTTPException)
    token = request_id_var.set("req-00000000-0000-0000-0000-000000000000")
    quiet = _Quiet()
    ERRORS_LOG.addFilter(quiet)
    try:
        request = Request({"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""})
        answer = _drive(handler(request, exc)) if handler is not None else error_response(status, _EXAMPLE)
    finally:
        ERRORS_LOG.removeFilter(quiet)
        request_id_var.reset(token)
    return _schema_of(json.loads(answer.body), status)


def _edge_schema(status: int) -> dict[str, Any]:
    token = request_id_var.set("req-00000000-0000-0000-0000-000000000000")
    try:
        return _schema_of(json.loads(error_response(status, _EXAMPLE).body), status)
    finally:
        request_id_var.reset(token)


# -- the document ---------------------------------------------------------------------------------

_CONVERTOR_SCHEMAS = {"StringConvertor": {"type": "string", "pattern": "^[^/]+$", "minLength": 1},
                      "PathConvertor": {"type": "string"}, "IntegerConvertor": {"type": "integer", "minimum": 0},
                      "FloatConvertor": {"type": "number", "minimum": 0},
                      "UUIDConvertor": {"type": "string", "format": "uuid"}}


def _operation_id(method: str, path: str) -> str:
    slash = "_" if path.endswith("/") else ""           # /v1 and /v1/ are two routes
    return re.sub(r"[^A-Za-z0-9]+", "_", f"{method.lower()} {path}").strip("_") + slash


def _summary(found: _Found, endpoint: Any) -> tuple[str, str | None]:
    if found.docs:
        doc = found.docs[-1]          # a wrapper's closure: the handler's own words
        first, _, rest = doc.partition("\n\n")
        return " ".join(first.split()), (" ".join(rest.split()) or None)
    name = getattr(_callables_of(endpoint)[-1], "__name__", "operation")
    return name.strip("_").replace("_", " ").capitalize(), None


def _version_parameters(versions: Microversions) -> list[dict[str, Any]]:
    example = f"{versions.service_type} {versions.max}"
    params = [{"name": STANDARD_HEADER, "in": "header", "required": False,
               "description": f"The microversion: '{versions.service_type} X.Y' ({versions.min} to "
                              f"{versions.max}) or '{versions.service_type} latest'; none: {versions.default}",
               "schema": {"type": "string", "examples": [example]}}]
    if versions.legacy_header:
        params.append({"name": versions.legacy_header, "in": "header", "required": False,
                       "description": f"The microversion in the legacy header: X.Y or latest ({versions.min} "
                                      f"to {versions.max})",
                       "schema": {"type": "string", "examples": [str(versions.max)]}})
    return params


def _endpoint_key(endpoint: Any) -> str:
    fn = _callables_of(endpoint)[-1]
    owner = type(fn.__self__).__name__ if inspect.ismethod(fn) else ""
    return f"{owner}.{fn.__name__}" if owner else getattr(fn, "__name__", "")


def document(mounted: Mounted, *, title: str | None = None, server: str = "/") -> dict[str, Any]:
    """The OpenAPI 3.1 document of one mounted API."""
    _router, wrapped_versions, wrapped_handlers = unwrap(mounted.app)
    handlers = wrapped_handlers if wrapped_handlers is not None else HANDLERS
    def is_public(template: str, method: str) -> bool:
        """As the edge decides (``PublicPaths``): no token needed here."""
        for p in mounted.public:
            full = (mounted.path + p.path).rstrip("/")
            if "*" not in p.methods and method not in p.methods:
                continue
            if (template.rstrip("/") == full) if not p.prefix else (
                    template.startswith(full + "/") and len(template) > len(full) + 1):
                return True
        return False

    error_statuses: set[int] = set()
    paths: dict[str, dict[str, Any]] = {}
    for template, route in routes_of(mounted):
        item = paths.setdefault(template, {})
        for method in sorted(route.methods or ()):
            if method == "HEAD":
                continue
            found = read_endpoint(route.endpoint, method)
            statuses = (set(STATUS.values()) | ROUTING_STATUSES | EDGE_STATUSES | found.errors) - {500}
            error_statuses |= statuses
            item[method.lower()] = op = _operation(mounted, template, route, method, found, wrapped_versions)
            for status in sorted(statuses):
                op["responses"][str(status)] = {"$ref": f"#/components/responses/Error{status}"}
            op["security"] = [] if is_public(template, method) else [{"token": []}]
    components: dict[str, Any] = {
        "securitySchemes": {"token": {"type": "apiKey", "in": "header", "name": "X-Auth-Token",
                                      "description": "A token from POST /identity/v3/auth/tokens (or the "
                                                     "configured token source)"}},
        "responses": {f"Error{s}": _error_answer(handlers, s) for s in sorted(error_statuses)},
    }
    return {"openapi": OPENAPI_VERSION,
            "info": {"title": title or f"Freezeframe {mounted.name} API", "version": _version_label(mounted),
                     "description": f"The {mounted.name} API at {mounted.path}, generated from its routes."},
            "servers": [{"url": server}],
            "paths": dict(sorted(paths.items())),
            "components": components}


def _operation(mounted: Mounted, template: str, route: Route, method: str, found: _Found,
               wrapped_versions: Microversions | None) -> dict[str, Any]:
    versions = wrapped_versions or found.versions
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True,
         "schema": dict(_CONVERTOR_SCHEMAS.get(type(conv).__name__, {"type": "string"}))}
        for name, conv in route.param_convertors.items()]
    params += [{"name": q, "in": "query", "required": False, "schema": {"type": "string"}} for q in found.query]
    if versions is not None:
        params += _version_parameters(versions)
    summary, description = _summary(found, route.endpoint)
    op: dict[str, Any] = {"operationId": _operation_id(method, template), "summary": summary, "tags": [mounted.name]}
    if description:
        op["description"] = description
    if params:
        op["parameters"] = params
    if found.body is not None and method in ("POST", "PUT", "PATCH"):
        schema_of = REQUEST_SCHEMAS.get(_endpoint_key(route.endpoint))

        def body_schema(media: str) -> dict[str, Any]:
            if schema_of is not None:
                return schema_of(media)
            if media == "application/octet-stream":
                return {"type": "string", "contentMediaType": media}
            return {"type": "object"}
        op["requestBody"] = {"required": found.body_required,
                             "content": {m: {"schema": body_schema(m)} for m in found.body}}
    responses: dict[str, Any] = {}
    for status, media in sorted((found.success or {200: {JSON}}).items()):
        answer: dict[str, Any] = {"description": _reason(status)}
        if None not in media:       # a status answered with and without a body: no content
            answer["content"] = {m: {"schema": {"type": "object"} if m == JSON else {}}
                                 for m in sorted(m for m in media if m)}
        responses[str(status)] = answer
    op["responses"] = responses
    return op


def _version_label(mounted: Mounted) -> str:
    _router, versions, _handlers = unwrap(mounted.app)
    return f"{versions.min}-{versions.max}" if versions is not None else "1"


def _reason(status: int) -> str:
    from http import HTTPStatus
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return str(status)


def _error_answer(handlers: Mapping[Any, Any], status: int) -> dict[str, Any]:
    own = error_schema(handlers, status)
    schema = own
    if status in EDGE_STATUSES:
        edge = _edge_schema(status)
        if edge != own:
            schema = {"anyOf": [own, edge]}
    answer: dict[str, Any] = {"description": f"{_reason(status)} (the API's error body)",
                              "content": {JSON: {"schema": schema}}}
    if status == 503:
        answer["headers"] = {"Retry-After": {"required": True, "schema": {"type": "string"},
                                             "description": "Seconds after which to retry"}}
    return answer


# -- serving --------------------------------------------------------------------------------------

class OpenAPI:
    """The documents of a process's mounted APIs, served at ``/openapi/<name>.json`` (and an
    index at ``/openapi``), without a token like the version documents. Built on first ask."""

    def __init__(self, mounted: Iterable[Mounted]) -> None:
        self.mounted = {m.name: m for m in mounted}
        self._docs: dict[str, dict[str, Any]] = {}

    def routes(self) -> list[Route]:
        return [Route(PATH, self.index, methods=["GET"]), Route(PATH + "/{name}.json", self.show, methods=["GET"])]

    def document(self, name: str) -> dict[str, Any]:
        if name not in self._docs:
            self._docs[name] = document(self.mounted[name])
        return self._docs[name]

    async def index(self, request: Request) -> Response:
        """The OpenAPI documents of the APIs this process serves."""
        root = f"{request.url.scheme}://{request.url.netloc}{request.scope.get('root_path', '')}"
        return JSONResponse({"apis": [{"name": n, "path": m.path, "href": f"{root}{PATH}/{n}.json"}
                                      for n, m in self.mounted.items()]})

    async def show(self, request: Request) -> Response:
        """One API's OpenAPI 3.1 document."""
        name = request.path_params["name"]
        if name not in self.mounted:
            raise errors.NotFound(f"No API named {name[:64]!r}; see {PATH}")
        root = f"{request.url.scheme}://{request.url.netloc}{request.scope.get('root_path', '')}"
        return JSONResponse({**self.document(name), "servers": [{"url": root or "/"}]})
