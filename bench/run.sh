#!/usr/bin/env bash
# Image-service benchmark, Freezeframe side by side with a real OpenStack Glance, in one run.
#
#   bash bench/run.sh                                  # full run: --sizes 1G,4G --reps 3 --sparse 20G:2G
#   bash bench/run.sh --sizes 256M --reps 1 --sparse 2G:256M  # quick run (a couple of minutes)
#   bash bench/run.sh --skip-dense --skip-sparse --no-nofsync --only ours,ours-api-pg --runs 3 \
#        --name creates-split                          # issue 8: creates, serve/SQLite + api/PostgreSQL
#
# Starts, each on a free 127.0.0.1 port and in a fresh temporary data dir:
#   ours          freezeframe with default settings (md5 + sha512, fsync before active)
#   ours-sha256   freezeframe with the FIPS-friendly profile (sha256, no md5)
#   ours-nofsync  freezeframe with FREEZEFRAME_STORE__FSYNC=false (dense phase only, informational;
#                 skip with --no-nofsync)
#   ours-api-pg   `freezeframe api --workers 2` (APIs only, 2 uvicorn worker processes) on a fresh
#                 PostgreSQL database made for the run and dropped at the end (creates phase only);
#                 server at --pg-url / $BENCH_PG_URL (default postgresql://postgres@127.0.0.1:5432),
#                 skipped with a note when it is not reachable, or with --no-pg
#   glance        the Glance peer (/work/shared/peers/glance/start-glance.sh), in a private
#                 GLANCE_ROOT so that it neither disturbs nor is disturbed by other users of the
#                 shared peer (BENCH_GLANCE_SHARED=1 uses the default $TMPDIR/glance-peer instead)
# then runs bench/image_bench.py against all of them, writes bench/results/latest.{json,md,txt}
# (--name NAME: NAME.{json,md,txt}; server logs go to $TMPDIR/ffbench-logs/), and stops everything
# it started (trap on exit). --only LIST starts only these of our targets (glance always runs).
# Other arguments go to image_bench.py (see bench/image_bench.py --help), e.g. --runs 3 (creates
# phase 3 times: medians, and ratios to glance taken within each run).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PY="$ROOT/.venv/bin/python"
FF="$ROOT/.venv/bin/freezeframe"
PEER="${GLANCE_PEER_DIR:-/work/shared/peers/glance}"
SHARED_GLANCE_ROOT="${TMPDIR:-/tmp}/glance-peer"
RESULTS="${BENCH_RESULTS:-$HERE/results}"   # latest.{json,md,txt}
LOGS="${BENCH_LOGS:-${TMPDIR:-/tmp}/ffbench-logs}"   # server logs of the last run (kept out of the repo)

ORIG_ARGS="$*"
NOFSYNC=1
PG=1
PG_URL="${BENCH_PG_URL:-postgresql://postgres@127.0.0.1:5432}"
ONLY=""
NAME=latest
PASS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-nofsync) NOFSYNC=0 ;;
    --no-pg) PG=0 ;;
    --pg-url) PG_URL="$2"; shift ;;
    --only) ONLY=",$2,"; shift ;;
    --name) NAME="$2"; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exec "$PY" "$HERE/image_bench.py" --help ;;
    *) PASS+=("$1") ;;
  esac
  shift
done

[ -x "$FF" ] || { echo "missing $FF (create the venv first)" >&2; exit 2; }
[ -x "$SHARED_GLANCE_ROOT/venv/bin/uwsgi" ] || { echo "missing Glance peer venv: run $PEER/setup-glance.sh" >&2; exit 2; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/ffbench.XXXXXX")"
PIDS=()
GLANCE_STARTED=0
PG_DB=""
if [ "${BENCH_GLANCE_SHARED:-0}" = 1 ]; then
  GROOT="$SHARED_GLANCE_ROOT"
else
  GROOT="$WORK/glance"
  mkdir -p "$GROOT"
  ln -s "$SHARED_GLANCE_ROOT/venv" "$GROOT/venv"
fi

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ "$GLANCE_STARTED" = 1 ]; then
    GLANCE_ROOT="$GROOT" "$PEER/stop-glance.sh" >/dev/null 2>&1 || true
  fi
  if [ -n "$PG_DB" ]; then
    pg_admin "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" || echo "could not drop database $PG_DB" >&2
  fi
  mkdir -p "$LOGS"
  for f in "$WORK"/*.log "$GROOT/state/uwsgi.log" "$GROOT/state/glance-api.log"; do
    [ -f "$f" ] && tail -c 2000000 "$f" > "$LOGS/$(basename "$f")" 2>/dev/null || true
  done
  echo "server logs of this run: $LOGS" >&2
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_up() {  # URL PID NAME
  for _ in $(seq 1 150); do
    if curl -s --noproxy '*' -o /dev/null -f "$1"; then return 0; fi
    kill -0 "$2" 2>/dev/null || { echo "$3 exited during start-up; log:" >&2; tail -20 "$WORK/$3.log" >&2; exit 1; }
    sleep 0.2
  done
  echo "$3 did not come up in 30 s" >&2; tail -20 "$WORK/$3.log" >&2; exit 1
}

# SQL on the PostgreSQL server's maintenance database (autocommit: CREATE/DROP DATABASE)
pg_admin() {
  "$PY" - "$PG_URL" "$1" <<'PYEOF'
import sys, psycopg
with psycopg.connect(sys.argv[1].rstrip("/") + "/postgres", autocommit=True, connect_timeout=5) as conn:
    conn.execute(sys.argv[2])
PYEOF
}

wanted() { [ -z "$ONLY" ] || [[ "$ONLY" == *",$1,"* ]]; }

TARGETS=()
start_ours() {  # NAME TESTS [ENV=VALUE...]
  local name="$1" tests="$2"; shift 2
  wanted "$name" || return 0
  local port data; port="$(free_port)"; data="$WORK/$name"
  mkdir -p "$data"
  env "$@" "$FF" serve --data-dir "$data" --port "$port" --auth noauth \
    >"$WORK/$name.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  wait_up "http://127.0.0.1:$port/healthcheck" "$pid" "$name"
  echo "started $name: PID=$pid URL=http://127.0.0.1:$port/image data=$data ${*:-(default settings)}"
  local extra=""
  if [ "$name" = ours-nofsync ]; then extra=",checks=0"; fi
  TARGETS+=(--target "$name=http://127.0.0.1:$port/image,pid=$pid,store=$data/images,tests=$tests$extra")
}

start_ours ours dense+sparse+creates
start_ours ours-sha256 dense+sparse+creates FREEZEFRAME_IMAGES__HASH_ALGO=sha256 FREEZEFRAME_IMAGES__LEGACY_MD5=false
if [ "$NOFSYNC" = 1 ]; then start_ours ours-nofsync dense FREEZEFRAME_STORE__FSYNC=false; fi

# ours-api-pg: the split deployment's API role, 2 worker processes, on PostgreSQL; same settings
# as `ours` otherwise (default hashes, fsync on, --auth noauth).
if [ "$PG" = 1 ] && wanted ours-api-pg; then
  if pg_admin "SELECT 1" 2>/dev/null; then
    PG_DB="ffbench_$(date +%s)_$$"
    pg_admin "CREATE DATABASE $PG_DB"
    port="$(free_port)"; data="$WORK/ours-api-pg"
    mkdir -p "$data"
    "$FF" api --workers 2 --database-url "${PG_URL%/}/$PG_DB" --data-dir "$data" --port "$port" --auth noauth \
      >"$WORK/ours-api-pg.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_up "http://127.0.0.1:$port/healthcheck" "$pid" ours-api-pg
    echo "started ours-api-pg: PID=$pid URL=http://127.0.0.1:$port/image data=$data database=$PG_DB (2 workers)"
    TARGETS+=(--target "ours-api-pg=http://127.0.0.1:$port/image,pid=$pid,store=$data/images,tests=creates")
  else
    echo "skipping ours-api-pg: no PostgreSQL at $PG_URL (--pg-url URL, or --no-pg)" >&2
  fi
fi

OUT="$(GLANCE_ROOT="$GROOT" "$PEER/start-glance.sh")"
GLANCE_STARTED=1
echo "started glance: $OUT (GLANCE_ROOT=$GROOT)"
GPID="$(sed -n 's/.*PID=\([0-9]*\).*/\1/p' <<<"$OUT")"
GURL="$(sed -n 's/.*URL=\([^ ]*\).*/\1/p' <<<"$OUT")"
[ -n "$GPID" ] && [ -n "$GURL" ] || { echo "could not parse start-glance.sh output: $OUT" >&2; exit 1; }
TARGETS+=(--target "glance=$GURL,pid=$GPID,store=$GROOT/images,close=1")

GLANCE_VERSION="$("$SHARED_GLANCE_ROOT/venv/bin/python" -c 'import importlib.metadata as m; print(m.version("glance"))' 2>/dev/null || echo '?')"
FF_COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
FF_DIRTY="$(git -C "$ROOT" status --porcelain --untracked-files=no -- src 2>/dev/null | wc -l)"

mkdir -p "$RESULTS"
set +e
"$PY" "$HERE/image_bench.py" "${TARGETS[@]}" --baseline glance \
  --json-out "$RESULTS/$NAME.json" --markdown-out "$RESULTS/$NAME.md" \
  --meta "glance_version=$GLANCE_VERSION" --meta "freezeframe_commit=$FF_COMMIT" \
  --meta "freezeframe_src_modified_files=$FF_DIRTY" --meta "command=bench/run.sh $ORIG_ARGS" \
  "${PASS[@]}" 2>&1 | tee "$RESULTS/$NAME.txt"
rc=${PIPESTATUS[0]}
set -e
exit "$rc"
