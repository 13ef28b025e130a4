#!/usr/bin/env python3
"""OpenAPI fuzz benchmark (issue 11): schemathesis over every API's served OpenAPI document
(``tests/security/openapi_fuzz.py``) at full count against a real server.

usage: .venv/bin/python bench/openapi_fuzz_bench.py [--examples 2000] [--apis image,compute,...]
                                                    [--seed N] [--json PATH]

Starts its own ``freezeframe serve`` (SQLite, tokens auth, fake drivers) in a fresh temporary
directory, then sends ``--examples`` generated requests to each API (a fixed seed: the same
requests every run) and prints, per API: the requests sent, the counts per status class and per
status, the 500s, the violations (a 5xx but a 503 with Retry-After, no answer in time, an answer
not as documented: status, media type, body schema) with the first few, and the faults the
server logged. Target: 0 responses 500 over at least 2,000 requests per API. A benchmark, not a
test: it exits 0 when it ran. Talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import start_server  # noqa: E402
from tests.security import openapi_fuzz  # noqa: E402

TARGET = 2000
FAULT_MARKERS = ("unexpected error", "ERROR uvicorn.error")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=TARGET)
    parser.add_argument("--apis", default=",".join(openapi_fuzz.APIS))
    parser.add_argument("--seed", type=int, default=openapi_fuzz.SEED)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--show", type=int, default=3, help="violations shown per API")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="ff-openapi-bench-") as tmp:
        server = start_server(Path(tmp) / "ff")
        try:
            for api in args.apis.split(","):
                before = {m: server.log().count(m) for m in FAULT_MARKERS}
                result = openapi_fuzz.run(server.url, api, args.examples, seed=args.seed, stop_at_first=False)
                faults = {m: server.log().count(m) - before[m] for m in FAULT_MARKERS}
                results.append(result)
                print(result.summary(), flush=True)
                print(f"  statuses {dict(sorted(result.statuses.items(), key=str))}; faults logged {faults}")
                for problem, request in result.violations[:args.show]:
                    print(f"  VIOLATION {problem[:600]}\n    {request[:400]}")
        finally:
            server.stop()
    total = sum(r.sent for r in results)
    print(f"total: {total} requests, 500s {sum(r.statuses.get(500, 0) for r in results)}, "
          f"violations {sum(len(r.violations) for r in results)}; target 0 responses 500 over >= {TARGET} per API: "
          f"{'met' if all(r.sent >= TARGET and not r.statuses.get(500) for r in results) else 'NOT met'}")
    if args.json:
        args.json.write_text(openapi_fuzz.as_json(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
