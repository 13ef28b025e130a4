"""schemathesis over the served OpenAPI documents (``/openapi/<api>.json``), against a running
server with the fake drivers. Used by ``tests/security/test_openapi_fuzz.py`` (a few hundred
requests per API) and ``bench/openapi_fuzz_bench.py`` (2,000+ per API).

For each API the document is fetched from the server, loaded with schemathesis, and requests are
generated from it with a fixed seed (the same requests every run): positive cases (valid per the
document), negative cases (violating it), and positive cases whose path parameters are real ids
(an active image, the server, a volume, a node... from the hypothesis fuzzer's fixtures) so that
requests get past the lookups. Each answer is checked:

- no 5xx, but a 503 carrying ``Retry-After`` (load shedding);
- the status is documented (``status_code_conformance``), its media type is
  (``content_type_conformance``), the body matches the documented schema — the API's own error
  shape for errors (``response_schema_conformance``) — and documented headers are present
  (``response_headers_conformance``).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as fixed_seed
from hypothesis import strategies as st
from schemathesis.core.failures import FailureGroup
from schemathesis.checks import (content_type_conformance, response_headers_conformance,
                                 response_schema_conformance, status_code_conformance)

from tests.conftest import ADMIN_TOKEN, MEMBER_TOKEN
from tests.security import fuzzer

SEED = 20261211
TIMEOUT = 20.0
APIS = ("image", "compute", "workflows", "volume", "baremetal", "identity")
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
# Glance's JSON-patch media types are JSON documents.
schemathesis.serializer.alias(["application/openstack-images-v2.1-json-patch",
                               "application/openstack-images-v2.0-json-patch"], "application/json")
# The token each API is fuzzed with: bare-metal is admin-only; every other API as a member.
TOKENS = {"baremetal": ADMIN_TOKEN}
# Path parameters whose real values are of another kind than their name (fuzzer.Fixtures.ids).
KINDS = {("volume", "project_id"): "volume_project"}


@dataclass
class Result:
    api: str
    sent: int = 0
    unsendable: int = 0           # generated requests the HTTP client refused to send
    unsent_why: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    violations: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def classes(self) -> dict[str, int]:
        out: Counter = Counter()
        for status, n in self.statuses.items():
            out[f"{str(status)[0]}xx" if isinstance(status, int) else str(status)] += n
        return dict(sorted(out.items()))

    def summary(self) -> str:
        return (f"{self.api}: {self.sent} requests in {self.seconds:.1f}s, classes {self.classes()}, "
                f"500s {self.statuses.get(500, 0)}, violations {len(self.violations)}, "
                f"unsendable {self.unsendable} {dict(self.unsent_why)}")


def load(base_url: str, api: str, tamper: Callable[[dict], None] | None = None) -> schemathesis.BaseSchema:
    """The served document (``tamper``: changed first, to see the checks catch a wrong one)."""
    doc = httpx.get(f"{base_url}/openapi/{api}.json", timeout=60).raise_for_status().json()
    doc["servers"] = [{"url": base_url}]
    # The runner sends the token on every request: without the security requirements schemathesis
    # does not generate from the token header (its negative cases then mostly dropped it — 401s
    # at the edge that reach no API code — instead of breaking parameters and bodies).
    for item in doc["paths"].values():
        for op in item.values():
            if isinstance(op, dict):
                op.pop("security", None)
    doc["components"].pop("securitySchemes", None)
    if tamper is not None:
        tamper(doc)
    return schemathesis.openapi.from_dict(doc)


def _describe(case: Any) -> str:
    body = getattr(case, "body", None)
    text = repr(body)
    return (f"{case.method} {case.formatted_path} query={case.query!r} headers={case.headers!r} "
            f"body={text[:300]}")


def _strategies(schema: Any, api: str, fix: fuzzer.Fixtures) -> list[st.SearchStrategy]:
    out: list[st.SearchStrategy] = []
    for result in schema.get_all_operations():
        op = result.ok()
        out.append(op.as_strategy(schemathesis.GenerationMode.POSITIVE))
        out.append(op.as_strategy(schemathesis.GenerationMode.NEGATIVE))
        kinds = {p.name: KINDS.get((api, p.name), p.name) for p in op.path_parameters}
        real = {n: fix.pick(kind, 0) for n, kind in kinds.items() if fix.ids.get(kind)}
        if real:        # the ids there are (others generated)
            out.append(op.as_strategy(schemathesis.GenerationMode.POSITIVE, path_parameters=real))
    return out


def run(base_url: str, api: str, examples: int, *, seed: int = SEED, stop_at_first: bool = True,
        tamper: Callable[[dict], None] | None = None) -> Result:
    """``examples`` generated requests to one API; with ``stop_at_first`` (tests) the first
    violation fails, naming the request; otherwise (the benchmark) all are counted."""
    fix = fuzzer.fixtures_for(base_url)
    schema = load(base_url, api, tamper)
    strategies = _strategies(schema, api, fix)
    result = Result(api)
    session = requests.Session()
    headers = {"X-Auth-Token": TOKENS.get(api, MEMBER_TOKEN)}
    started = time.monotonic()

    def record(problem: str, case: Any) -> None:
        result.violations.append((problem, _describe(case)))
        if stop_at_first:
            raise AssertionError(f"{problem}\n{_describe(case)}")

    @settings(max_examples=examples, database=None, deadline=None, print_blob=False,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @fixed_seed(seed)
    @given(st.sampled_from(range(len(strategies))).flatmap(lambda i: strategies[i]))
    def one(case: Any) -> None:
        if result.sent and result.sent % fuzzer.LISTING_EVERY == 0:
            fix.refresh()
        try:
            response = case.call(base_url=base_url, session=session, headers=headers, timeout=TIMEOUT)
        except requests.Timeout:
            result.sent += 1
            result.statuses["timeout"] += 1
            record(f"no answer within {TIMEOUT}s", case)
            return
        except (requests.RequestException, ValueError, UnicodeError) as exc:
            result.unsendable += 1          # e.g. a header value the client will not encode
            result.unsent_why[type(exc).__name__] += 1
            return
        result.sent += 1
        status = response.status_code
        result.statuses[status] += 1
        if status >= 500 and not (status == 503 and "retry-after" in response.headers):
            record(f"{status}: {response.text[:300]}", case)
            return
        try:
            case.validate_response(response, checks=CHECKS)
        except (AssertionError, FailureGroup) as exc:     # one failure, or a group of them
            failures = exc.exceptions if isinstance(exc, FailureGroup) else [exc]
            detail = "; ".join(f"{type(f).__name__}: {f}" for f in failures)
            record(f"{status} does not match the document: {detail[:1500]}", case)

    try:
        one()
    finally:
        result.seconds = time.monotonic() - started
        session.close()
    return result


def as_json(results: list[Result]) -> str:
    return json.dumps([{"api": r.api, "sent": r.sent, "classes": r.classes(),
                        "statuses": {str(k): v for k, v in r.statuses.items()}, "violations": len(r.violations),
                        "unsendable": r.unsendable, "seconds": round(r.seconds, 1)} for r in results], indent=1)
