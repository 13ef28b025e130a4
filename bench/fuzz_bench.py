#!/usr/bin/env python3
"""Fuzz benchmark (issue 7): the property-based fuzzer of ``tests/security/fuzzer.py`` at full
count against a real server on SQLite and on PostgreSQL.

usage: .venv/bin/python bench/fuzz_bench.py [--examples 5000] [--databases sqlite,postgresql]
                                            [--apis image,compute,workflow] [--seed N] [--top 0]

Per database it starts its own ``freezeframe serve`` (tokens auth, fake virt driver) in a fresh
temporary directory (PostgreSQL: a throw-away database on the machine's server, as the tests
use), then sends ``--examples`` fuzzed requests to each API (a fixed seed: the same requests
every run) and prints, per API and database: the requests sent, the counts by status, the
number of 500s, the property violations (any 5xx but a 503 with Retry-After, no answer within
the timeout, an error without a JSON body carrying the request id, a listing that stops
answering 200) and the faults the server logged. Target: 0 responses 500 from at least 5,000
fuzzed requests per API per database. ``--json PATH`` also writes the numbers there.
A benchmark, not a test: it exits 0 when it ran. Talks to 127.0.0.1 only; every request is bounded
by the fuzzer's timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.security import fuzzer  # noqa: E402  (pops FREEZEFRAME_FUZZ_EXAMPLES before servers start)

TARGET = 5000
FAULT_MARKERS = ("unexpected error", "ERROR uvicorn.error")


@contextlib.contextmanager
def database_url(kind: str):
    if kind == "sqlite":
        yield None
        return
    from tests.pg import temp_database
    try:
        with temp_database() as url:
            yield url
    except BaseException as exc:  # pytest.skip outside pytest: no PostgreSQL here
        if type(exc).__name__ == "Skipped":
            raise RuntimeError(f"PostgreSQL unavailable: {exc}") from None
        raise


def run_database(kind: str, apis: list[str], examples: int, seed: int, top: int) -> list[dict]:
    from tests.conftest import start_server

    rows = []
    with tempfile.TemporaryDirectory(prefix=f"ff-fuzz-{kind}-") as tmp, database_url(kind) as url:
        server = start_server(Path(tmp) / "ff", args=["--database-url", url] if url else None)
        try:
            started = time.monotonic()
            fuzzer.fixtures_for(server.url)
            print(f"[{kind}] server up, fixtures ready in {time.monotonic() - started:.1f}s", flush=True)
            for api in apis:
                before = {m: server.log().count(m) for m in FAULT_MARKERS}
                result = fuzzer.fuzz(server.url, api, examples, seed=seed, stop_at_first=False)
                log = server.log()
                faults = {m: log.count(m) - before[m] for m in FAULT_MARKERS}
                print(f"[{kind}] {result.summary()}; faults logged: {sum(faults.values())}", flush=True)
                for problem, request in result.violations[:10]:
                    print(f"    VIOLATION {problem}: {request[:400]}")
                for key, n in result.outcomes.most_common(top):
                    print(f"    {n:6d} {key}")
                rows.append({"database": kind, "api": api, "requests": result.sent, "seconds": round(result.seconds, 1),
                             "status_500": result.statuses.get(500, 0), "server_errors": result.server_errors,
                             "violations": len(result.violations), "faults_logged": sum(faults.values()),
                             "by_status": {str(k): v for k, v in sorted(result.statuses.items(), key=str)}})
        finally:
            server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=fuzzer.examples_from_env(TARGET),
                        help="fuzzed requests per API per database (default 5000, or FREEZEFRAME_FUZZ_EXAMPLES)")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--apis", default=",".join(fuzzer.APIS))
    parser.add_argument("--seed", type=int, default=fuzzer.SEED)
    parser.add_argument("--top", type=int, default=0, help="also print the N most frequent outcomes per API")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    apis = [a for a in args.apis.split(",") if a]
    rows: list[dict] = []
    started = time.monotonic()
    for kind in [d for d in args.databases.split(",") if d]:
        try:
            rows += run_database(kind, apis, args.examples, args.seed, args.top)
        except RuntimeError as exc:
            print(f"[{kind}] not run: {exc}")
    print()
    print(f"{'database':<11} {'api':<9} {'requests':>8} {'500s':>5} {'5xx':>4} {'violations':>10} {'faults':>6} {'time':>7}")
    for r in rows:
        print(f"{r['database']:<11} {r['api']:<9} {r['requests']:>8} {r['status_500']:>5} {r['server_errors']:>4} "
              f"{r['violations']:>10} {r['faults_logged']:>6} {r['seconds']:>6.0f}s")
    ok = bool(rows) and all(r["requests"] >= TARGET and r["status_500"] == 0 and r["violations"] == 0
                            and r["faults_logged"] == 0 for r in rows)
    print(f"\ntarget: 0 responses 500 (and no other violation) from >= {TARGET} fuzzed requests per API per "
          f"database: {'PASS' if ok else 'FAIL'} ({time.monotonic() - started:.0f}s, seed {args.seed})")
    if args.json:
        args.json.write_text(json.dumps({"seed": args.seed, "examples": args.examples, "rows": rows, "pass": ok},
                                        indent=2))


if __name__ == "__main__":
    main()
