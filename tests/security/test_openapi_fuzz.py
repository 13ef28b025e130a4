"""schemathesis over every API's served OpenAPI document (``tests/security/openapi_fuzz.py``):
no 5xx (but a 503 with Retry-After) and every answer as documented — status, media type, body
(the API's own error shape) — with a fixed seed, against one real server (SQLite, fake drivers).
``FREEZEFRAME_OPENAPI_FUZZ_EXAMPLES`` sets the requests per API (default 150; the benchmark,
``bench/openapi_fuzz_bench.py``, sends 2,000+)."""

from __future__ import annotations

import os

import pytest

from tests.conftest import start_server
from tests.security import openapi_fuzz

EXAMPLES = int(os.environ.pop("FREEZEFRAME_OPENAPI_FUZZ_EXAMPLES", "150"))
FAULT_MARKERS = ("unexpected error", "ERROR uvicorn.error")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = start_server(tmp_path_factory.mktemp("ff-openapi-fuzz"))
    yield live
    live.stop()


@pytest.mark.parametrize("api", openapi_fuzz.APIS)
def test_schemathesis_no_5xx_and_as_documented(server, api):
    before = {m: server.log().count(m) for m in FAULT_MARKERS}
    result = openapi_fuzz.run(server.url, api, EXAMPLES)
    print(result.summary())
    assert not result.violations, result.violations[:3]
    assert result.sent >= EXAMPLES * 0.8, result.summary()
    assert {m: server.log().count(m) for m in FAULT_MARKERS} == before, "faults logged during the run"


def test_the_checks_catch_a_document_that_does_not_match(server):
    """The same run against a wrong image document (its 404 said to be Nova's itemNotFound
    fault): the answers no longer match, and the run says so."""
    def fault_404(doc: dict) -> None:
        doc["components"]["responses"]["Error404"]["content"]["application/json"]["schema"] = {
            "type": "object", "required": ["itemNotFound"]}

    result = openapi_fuzz.run(server.url, "image", 40, stop_at_first=False, tamper=fault_404)
    assert result.statuses[404] > 0, result.summary()
    assert any("404 does not match" in problem for problem, _request in result.violations), result.violations[:2]
