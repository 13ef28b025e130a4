"""The OpenAPI documents (common/web/openapi.py): valid OpenAPI 3.1, in sync with the routers the
application really mounts (every route in, nothing else), error bodies in each API's own shape,
and served without a token."""

from __future__ import annotations

import dataclasses
import json

import jsonschema
import pytest
import schemathesis
from schemathesis.specs.openapi.definitions import OPENAPI_31
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router
from starlette.testclient import TestClient

from freezeframe.app import build_app
from freezeframe.common.web import openapi
from freezeframe.common.web.errors import FAULT_HANDLERS, error_response, fault_response
from freezeframe.common.web.mount import Mounted
from freezeframe.settings import Settings, StoreSettings
from tests.security.fuzzer import _routes

APIS = {"image", "compute", "workflows", "volume", "baremetal", "identity"}
METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("ff-openapi"), store=StoreSettings(fsync=False))
    settings = dataclasses.replace(settings, compute=dataclasses.replace(settings.compute, driver="fake"))
    application = build_app(settings)
    yield application
    application.state.services.db.close()


@pytest.fixture(scope="module")
def docs(app):
    return {m.name: openapi.document(m) for m in app.state.mounted}


def documented(doc: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item if method in METHODS}


def test_every_api_has_a_document(app, docs):
    assert set(docs) == APIS == {m.name for m in app.state.mounted}


@pytest.mark.parametrize("name", sorted(APIS))
def test_valid_openapi_31(docs, name):
    doc = docs[name]
    assert doc["openapi"].startswith("3.1")
    jsonschema.Draft202012Validator(OPENAPI_31).validate(doc)      # the OAS 3.1 meta-schema
    schemathesis.openapi.from_dict(doc).validate()                  # and as schemathesis loads it
    # every schema in it is a valid JSON Schema 2020-12 (OpenAPI 3.1's dialect)
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("schema"), dict):
                jsonschema.Draft202012Validator.check_schema(node["schema"])
            stack += node.values()
        elif isinstance(node, list):
            stack += node
    ids = [op["operationId"] for item in doc["paths"].values() for m, op in item.items() if m in METHODS]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("name", sorted(APIS))
def test_in_sync_with_the_mounted_router(app, docs, name):
    """Read independently of openapi.py (the hypothesis fuzzer's route walker): every routed
    (method, path) is documented and nothing else is."""
    mounted = next(m for m in app.state.mounted if m.name == name)
    routed = _routes(mounted.app, mounted.path)
    routed |= {(m, r.path) for r in mounted.extra_routes for m in r.methods or () if m != "HEAD"}
    assert routed, "no routes read"
    assert documented(docs[name]) == routed


def test_a_new_route_is_documented_with_what_its_code_says():
    async def show_gadget(request):
        """Show one gadget.

        A longer description."""
        if request.query_params.get("verbose"):
            return JSONResponse({"gadget": {}}, status_code=203)
        return JSONResponse({"gadget": {}})

    async def drop_gadget(request):
        return Response(status_code=204)

    router = Router(routes=[Route("/gadgets/{gadget_id}", show_gadget, methods=["GET"])])
    mounted = Mounted("gadget", "/gadget", router)
    doc = openapi.document(mounted)
    op = doc["paths"]["/gadget/gadgets/{gadget_id}"]["get"]
    assert op["summary"] == "Show one gadget." and op["description"] == "A longer description."
    assert [(p["name"], p["in"]) for p in op["parameters"]] == [("gadget_id", "path"), ("verbose", "query")]
    assert op["responses"]["200"]["content"] == {"application/json": {"schema": {"type": "object"}}}
    assert "203" in op["responses"] and "204" not in op["responses"]
    router.routes.append(Route("/gadgets/{gadget_id}", drop_gadget, methods=["DELETE"]))
    again = openapi.document(mounted)["paths"]["/gadget/gadgets/{gadget_id}"]
    assert set(again) == {"get", "delete"}
    assert "content" not in again["delete"]["responses"]["204"] and "200" not in again["delete"]["responses"]


def test_request_schemas_name_routed_endpoints(app):
    keys = {openapi._endpoint_key(r.endpoint) for m in app.state.mounted for _p, r in openapi.routes_of(m)}
    assert set(openapi.REQUEST_SCHEMAS) <= keys


def test_image_bodies_use_the_schemas_the_code_validates_with(docs):
    from freezeframe.images import schema
    create = docs["image"]["paths"]["/image/v2/images"]["post"]["requestBody"]["content"]["application/json"]
    assert create["schema"]["properties"] == schema.IMAGE_SCHEMA["properties"]
    patch = docs["image"]["paths"]["/image/v2/images/{image_id}"]["patch"]["requestBody"]["content"]
    assert set(patch) == {"application/openstack-images-v2.1-json-patch", "application/openstack-images-v2.0-json-patch"}
    v21 = jsonschema.Draft202012Validator(patch["application/openstack-images-v2.1-json-patch"]["schema"])
    assert v21.is_valid([{"op": "replace", "path": "/name", "value": "x"}])
    assert not v21.is_valid({"op": "replace"})
    data = docs["image"]["paths"]["/image/v2/images/{image_id}/file"]
    assert set(data["put"]["requestBody"]["content"]) == {"application/octet-stream"}
    assert set(data["get"]["responses"]["206"]["content"]) == {"application/octet-stream"}


def _error_validator(doc: dict, status: int) -> jsonschema.Draft202012Validator:
    answer = doc["components"]["responses"][f"Error{status}"]
    return jsonschema.Draft202012Validator(answer["content"]["application/json"]["schema"])


def test_error_bodies_are_each_apis_own():
    generic = json.loads(error_response(409, "busy").body)
    fault = json.loads(fault_response(409, "busy").body)
    router = Router(routes=[Route("/x", lambda r: Response(), methods=["GET"])])
    from freezeframe.common.web.microversion import Microversions
    versions = Microversions("volume", None, min="3.0", max="3.71")
    as_cinder = openapi.document(Mounted("v", "/v", versions.wrap(router, handlers=FAULT_HANDLERS)))
    as_glance = openapi.document(Mounted("g", "/g", router))
    fault["conflictingRequest"]["request_id"] = generic["error"]["request_id"] = "req-1"
    assert _error_validator(as_cinder, 409).is_valid(fault)
    assert not _error_validator(as_cinder, 409).is_valid(generic)
    assert _error_validator(as_glance, 409).is_valid(generic)
    assert not _error_validator(as_glance, 409).is_valid(fault)
    wrong_code = json.loads(json.dumps(fault))
    wrong_code["conflictingRequest"]["code"] = 400
    assert not _error_validator(as_cinder, 409).is_valid(wrong_code)
    # the edge answers 401 in the generic shape whatever the API
    edge = json.loads(error_response(401, "no token").body)
    edge["error"]["request_id"] = "req-1"
    assert _error_validator(as_cinder, 401).is_valid(edge)
    # the microversion headers of the wrapped router
    params = {p["name"] for p in as_cinder["paths"]["/v/x"]["get"]["parameters"]}
    assert params == {"OpenStack-API-Version"}


def test_ironic_errors(docs):
    from freezeframe.baremetal.api import ironic_error_response
    body = json.loads(ironic_error_response(409, "locked").body)
    body["request_id"] = "req-1"
    assert _error_validator(docs["baremetal"], 409).is_valid(body)
    assert not _error_validator(docs["image"], 409).is_valid(body)


def test_served_without_a_token(app):
    client = TestClient(app, raise_server_exceptions=False)
    index = client.get("/openapi")
    assert index.status_code == 200
    assert {a["name"] for a in index.json()["apis"]} == APIS
    for api in index.json()["apis"]:
        doc = client.get(api["href"])
        assert doc.status_code == 200, api
        assert doc.json()["openapi"] == openapi.OPENAPI_VERSION
        assert doc.json()["servers"] == [{"url": "http://testserver"}]
    missing = client.get("/openapi/nope.json")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == 404
    assert client.post("/openapi/image.json").status_code in (401, 405)   # GET only is public
    assert client.get("/image/v2/images").status_code == 401               # the rest still needs a token
