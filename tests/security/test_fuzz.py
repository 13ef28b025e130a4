"""Property-based fuzzing of every endpoint of the image, compute, workflow, identity and volume
APIs, on SQLite and PostgreSQL (see ``tests/security/fuzzer.py`` for what is generated and the properties).

A fixed seed makes every run send the same requests; ``FREEZEFRAME_FUZZ_EXAMPLES`` sets how many
per API and database (default 300; ``bench/fuzz_bench.py`` runs the target of 5,000+).
"""

from __future__ import annotations

import pytest

from tests.security import fuzzer

# Lines only a fault writes: the edge's "unexpected error" (a 500) and uvicorn's own complaints
# about a response it could not send (e.g. a header value it refuses).
FAULT_MARKERS = ("unexpected error", "ERROR uvicorn.error")


def test_catalogue_covers_every_route():
    """A route added to a router without a fuzz spec fails here."""
    fuzzed = {(e.method, e.path) for e in fuzzer.CATALOGUE}
    assert fuzzer.routed_endpoints() - fuzzed == set()


@pytest.mark.parametrize("api", fuzzer.APIS)
def test_fuzz_no_500_no_hang(live_server, api):
    before = {m: live_server.log().count(m) for m in FAULT_MARKERS}
    result = fuzzer.fuzz(live_server.url, api, fuzzer.examples_from_env())
    print(result.summary())
    assert not result.violations, result.violations[:5]
    assert result.sent >= min(fuzzer.examples_from_env(), 50)
    log = live_server.log()
    assert {m: log.count(m) for m in FAULT_MARKERS} == before, "faults logged during the fuzz run"
