"""Prometheus metrics: what happened in this process (counters, histograms) and what the database
holds now (gauges computed at scrape time).

One ``Metrics`` per ``Database`` (``db.metrics``), each with its own ``CollectorRegistry``: the
tests start several apps in one process, and the process-wide default registry would mix them.
Everything that holds a ``Database`` counts through it:

- state transitions: every committed move of every machine (``common/statemachine.py`` hands
  the moves of a session to ``session.info[SINK]``, which the sessions of this database carry);
- workflows: claims, take-overs, finished workflows' durations per kind and final state, the
  bytes their uploads sent (``workflow_bytes``: the conductor marks the thread running a
  workflow with ``running(kind)``);
- image data: bytes and MB/s of every upload and download;
- reapers: what the image reaper and the services' reconcile hooks did.

The gauges of what is stored (resources per state of every machine, the workflow queue, the
conductors holding work and whether they are alive, compute hosts up or down) are read at
scrape time by ``DatabaseCollector``: a handful of ``GROUP BY`` queries in one transaction, so
a scrape costs the same whatever happened since the last one, and nothing is kept in memory.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import logging
from typing import Any, Callable, Iterator, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from sqlalchemy import Boolean, DateTime, String, column, func, inspect, literal, select, table, union_all

from freezeframe.common.statemachine import MACHINES, SINK, Machine, Move
from freezeframe.common.timeutil import utcnow

T = TypeVar("T")


class Database(Protocol):
    """What the metrics need of ``db.session.Database`` (which sits above this module)."""

    def run_sync(self, fn: Callable[[Any], T]) -> T: ...


LOG = logging.getLogger(__name__)
# The classic text format (every Prometheus reads it; our names need none of 1.0.0's escaping).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
MB = 1_000_000
# No ``*_created`` series (the start time of every counter): they double the text of a scrape
# and Prometheus does not need them (process-wide, as prometheus-client offers it).
disable_created_metrics()

# Seconds from a workflow's creation to its end: a test's fake snapshot to a 100 GB upload.
DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
# MB/s of one transfer: a throttled snapshot to a local NVMe copy.
RATE_BUCKETS = (1, 5, 10, 25, 50, 100, 200, 400, 800, 1600, 3200)

# The workflow the current thread runs for the conductor: (kind, metrics). Its uploads count
# their bytes for that kind (``workflow_bytes``).
_RUNNING: contextvars.ContextVar[tuple[str, "Metrics"] | None] = contextvars.ContextVar("ff_metrics_workflow",
                                                                                        default=None)


class Metrics:
    """This database's metrics: counters the code moves, and the scrape-time gauges."""

    def __init__(self, db: Database | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.transitions = Counter(
            "freezeframe_state_transitions", "Committed state transitions, per machine and (from, to) state "
            "(numbered states by their family, e.g. UPLOAD_<n>_COMPLETE)", ["machine", "from", "to"], registry=r)
        self.workflow_duration = Histogram(
            "freezeframe_workflow_duration_seconds", "Seconds from a workflow's creation to its end, per kind "
            "and final state (observed by the conductor that ended it)", ["kind", "state"],
            buckets=DURATION_BUCKETS, registry=r)
        self.workflow_bytes_sent = Counter(
            "freezeframe_workflow_bytes", "Bytes the workflows of a kind sent into images", ["kind"], registry=r)
        self.image_bytes = Counter(
            "freezeframe_image_bytes", "Image data bytes received (upload: PUT file, stage, resumable parts) and "
            "sent (download: GET file)", ["direction"], registry=r)
        self.image_rate = Histogram(
            "freezeframe_image_transfer_rate_mb_per_second", "MB/s (10^6 bytes) of each upload request and "
            "download response that moved at least one byte", ["direction"], buckets=RATE_BUCKETS, registry=r)
        self.image_seconds = Counter(
            "freezeframe_image_transfer_seconds", "Seconds spent moving image data (with freezeframe_image_bytes: "
            "the mean MB/s over any window)", ["direction"], registry=r)
        self.reaper_actions = Counter(
            "freezeframe_reaper_actions", "What the reapers did: the image reaper's kills and deletes, each "
            "reconcile hook's repairs", ["reaper", "action"], registry=r)
        self.claims = Counter("freezeframe_conductor_claims", "Workflows this process's conductor claimed "
                              "(first runs, resumes and take-overs)", registry=r)
        self.takeovers = Counter("freezeframe_conductor_takeovers", "Workflows this process's conductor took "
                                 "over from another conductor whose lease ran out", registry=r)
        self.running = Gauge("freezeframe_conductor_running_workflows", "Workflows this process's conductor runs "
                             "now", registry=r)
        self.liveness_up = Gauge("freezeframe_liveness_up", "1 while this process holds its liveness lock "
                                 "(a conductor: alive to the others), else 0", registry=r)
        self.liveness_lost = Counter("freezeframe_liveness_lock_lost", "Times this process found its liveness lock "
                                     "lost (coordination backend restarted) and took it again", registry=r)
        self.database = DatabaseCollector(db) if db is not None else None
        if self.database is not None:
            r.register(self.database)
            db.sessions.configure(info={SINK: self.count_move})

    # -- wiring (build_app) ------------------------------------------------------------------

    def bind(self, *, liveness: Any = None, conductor: Any = None, host_down_after: float | None = None) -> None:
        """What the gauges ask at scrape time: this process's liveness and conductor (either
        may be None), and when a compute host counts as down."""
        if liveness is not None:
            self.liveness_up.set_function(lambda: 1.0 if liveness.holding else 0.0)
            liveness.on_lost = self.liveness_lost.inc
            if self.database is not None:
                self.database.is_alive = liveness.is_alive
        if conductor is not None:
            self.running.set_function(lambda: float(conductor.running_count))
        if host_down_after is not None and self.database is not None:
            self.database.host_down_after = host_down_after

    def render(self) -> bytes:
        """The Prometheus text format (runs the database queries: call it off the event loop)."""
        return generate_latest(self.registry)

    # -- counting ----------------------------------------------------------------------------

    def count_move(self, machine: Machine[Any], move: Move) -> None:
        try:
            frm, to = machine.state_name(move.frm), machine.state_name(move.to)
        except ValueError:          # (cannot happen: the move was checked against the table)
            return
        self.transitions.labels(machine.name, frm, to).inc()

    def transfer(self, direction: str, nbytes: int, seconds: float) -> None:
        """One upload request or download response moved ``nbytes`` in ``seconds``."""
        if nbytes <= 0:
            return
        self.image_bytes.labels(direction).inc(nbytes)
        self.image_seconds.labels(direction).inc(max(seconds, 0.0))
        if seconds > 0:
            self.image_rate.labels(direction).observe(nbytes / MB / seconds)

    def workflow_finished(self, kind: str, state: str, seconds: float) -> None:
        self.workflow_duration.labels(kind, state).observe(max(seconds, 0.0))

    def reaped(self, reaper: str, done: dict[str, int]) -> None:
        for action, n in done.items():
            if n:
                self.reaper_actions.labels(reaper, action).inc(n)

    @contextlib.contextmanager
    def running_workflow(self, kind: str) -> Iterator[None]:
        """Mark this thread (context) as running a workflow of ``kind``: ``workflow_bytes``."""
        token = _RUNNING.set((kind, self))
        try:
            yield
        finally:
            _RUNNING.reset(token)


def workflow_bytes(nbytes: int) -> None:
    """Bytes a workflow step sent into an image (``blockdata.upload``): counted for the kind the
    conductor runs in this thread; nothing outside a workflow."""
    running = _RUNNING.get()
    if running is not None and nbytes > 0:
        kind, metrics = running
        metrics.workflow_bytes_sent.labels(kind).inc(nbytes)


# The columns a scrape reads, named here rather than imported from the services' models: this
# module sits below them (every service reports into it).
_WORKFLOWS = table("workflows", column("kind", String), column("state", String), column("owner", String))
_COMPUTE_HOSTS = table("compute_hosts", column("heartbeat_at", DateTime), column("disabled", Boolean))


class DatabaseCollector:
    """The gauges read from the database at scrape time, in one transaction:

    - ``freezeframe_resources{machine,state}``: rows per state of every declared machine
      (images by status, workflows by state, volumes, servers' vm_state, nodes, ...);
    - ``freezeframe_workflows{kind,state}``: workflows per kind and state;
    - ``freezeframe_workflow_queue_depth{kind}``: unfinished workflows no live conductor holds;
    - ``freezeframe_conductor_alive{conductor}``: each conductor holding unfinished work, 1/0;
    - ``freezeframe_compute_hosts{state}``: compute hosts up, down, disabled.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.is_alive: Callable[[str | None], bool] | None = None
        self.host_down_after = 30.0
        self._tables: set[str] | None = None
        self._names: dict[tuple[str, str | None], str] = {}      # (machine, stored value) -> family

    def describe(self) -> list:
        return []       # (nothing to check at registration: the names are fixed)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            rows = self.db.run_sync(self._read)
        except Exception as exc:     # a scrape still answers: the process's own counters
            LOG.warning("metrics: could not read the database gauges: %s", exc)
            up = GaugeMetricFamily("freezeframe_database_up", "1 when the scrape could read the database")
            up.add_metric([], 0.0)
            yield up
            return
        up = GaugeMetricFamily("freezeframe_database_up", "1 when the scrape could read the database")
        up.add_metric([], 1.0)
        yield up
        yield from self._families(*rows)

    def _existing(self, session: Any) -> set[str]:
        if self._tables is None:     # (the schema is migrated before anything runs)
            self._tables = set(inspect(session.get_bind()).get_table_names())
        return self._tables

    def _read(self, session: Any) -> tuple[dict, list, list, list]:
        """Core statements on the tables (no ORM entities: a scrape is a few cheap queries)."""
        tables = self._existing(session)
        by_machine: dict[str, list] = {}
        workflows, hosts = [], []
        if "workflows" in tables:       # (also the workflow machine's counts: one query, not two)
            c = _WORKFLOWS.c
            workflows = session.execute(select(c.kind, c.state, c.owner, func.count())
                                        .group_by(c.kind, c.state, c.owner)).all()
        parts = []
        for name, machine in sorted(MACHINES.items()):
            if machine.table.name not in tables:
                continue
            if machine.table.name == "workflows" and machine.column == "state":
                by_machine[name] = [(state, n) for _kind, state, _owner, n in workflows]
                continue
            by_machine[name] = []
            col = machine.table.c[machine.column]
            parts.append(select(literal(name, String), col, func.count()).group_by(col))
        if parts:                       # one statement for every other machine: one round trip
            for name, value, n in session.execute(union_all(*parts)).all():
                by_machine[name].append((value, n))
        now = None
        if "compute_hosts" in tables:       # (judged by the database's clock, as HostRegistry does)
            c = _COMPUTE_HOSTS.c
            if session.get_bind().dialect.name == "postgresql":     # the clock in the same round trip
                clock = func.timezone("UTC", func.clock_timestamp())       # (db/clock.py's)
                rows = session.execute(select(c.heartbeat_at, c.disabled, clock)).all()
                hosts = [(beat, disabled) for beat, disabled, _ in rows]
                now = rows[0][2] if rows else utcnow()
            else:
                hosts, now = session.execute(select(c.heartbeat_at, c.disabled)).all(), utcnow()
        return by_machine, workflows, hosts, [now]

    def _families(self, by_machine: dict, workflows: list, hosts: list, now: list) -> Iterator[GaugeMetricFamily]:
        resources = GaugeMetricFamily("freezeframe_resources", "Rows per state of each state machine, read at "
                                      "scrape time (numbered states by their family)", labels=["machine", "state"])
        for name, rows in by_machine.items():
            machine = MACHINES[name]
            counts: dict[str, int] = {}
            for value, n in rows:
                family = self._family(machine, value)
                counts[family] = counts.get(family, 0) + n
            for state, n in counts.items():
                resources.add_metric([name, state], n)
        yield resources

        per_state: dict[tuple[str, str], int] = {}
        queued: dict[str, int] = {}
        owners: dict[str, int] = {}
        machine = MACHINES.get("workflow")
        terminal = {str(s) for s in machine.terminal} if machine is not None else set()
        for kind, state, owner, n in workflows:
            family = self._family(machine, state) if machine is not None else str(state)
            per_state[(kind, family)] = per_state.get((kind, family), 0) + n
            if family in terminal:
                continue
            if owner:
                owners[owner] = owners.get(owner, 0) + n
            queued.setdefault(kind, 0)
            if not owner:
                queued[kind] += n
        alive = {owner: self._alive(owner) for owner in owners}
        for kind, state, owner, n in workflows:      # held by a dead conductor: waiting all the same
            family = self._family(machine, state) if machine is not None else str(state)
            if owner and family not in terminal and not alive[owner]:
                queued[kind] += n
        wf = GaugeMetricFamily("freezeframe_workflows", "Workflows per kind and state, read at scrape time",
                               labels=["kind", "state"])
        for (kind, state), n in sorted(per_state.items()):
            wf.add_metric([kind, state], n)
        yield wf
        depth = GaugeMetricFamily("freezeframe_workflow_queue_depth", "Unfinished workflows no live conductor "
                                  "holds (waiting to be claimed or taken over), per kind", labels=["kind"])
        for kind, n in sorted(queued.items()):
            depth.add_metric([kind], n)
        yield depth
        conductors = GaugeMetricFamily("freezeframe_conductor_alive", "1 when a conductor holding unfinished "
                                       "workflows is alive (its liveness lock is held), 0 when it is not",
                                       labels=["conductor"])
        for owner in sorted(owners):
            conductors.add_metric([owner], 1.0 if alive[owner] else 0.0)
        yield conductors
        if now[0] is not None:
            counts = {"up": 0, "down": 0, "disabled": 0}
            limit = now[0] - dt.timedelta(seconds=self.host_down_after)
            for beat, disabled in hosts:
                counts["disabled" if disabled else "up" if beat is not None and beat > limit else "down"] += 1
            family = GaugeMetricFamily("freezeframe_compute_hosts", "Compute hosts by state (down: no heartbeat "
                                       "for compute.host_down_after seconds)", labels=["state"])
            for state, n in counts.items():
                family.add_metric([state], n)
            yield family

    def _family(self, machine: Machine[Any], value: str | None) -> str:
        """The table's name for a stored value (``UPLOAD_40_COMPLETE`` -> ``UPLOAD_<n>_COMPLETE``),
        remembered: the values are few, the rows per scrape many."""
        key = (machine.name, value)
        family = self._names.get(key)
        if family is None:
            try:
                family = machine.state_name(value)
            except ValueError:         # a value no table knows (written by a newer release?): as stored
                family = str(value)
            if len(self._names) < 10_000:
                self._names[key] = family
        return family

    def _alive(self, owner: str) -> bool:
        if self.is_alive is None:
            return True        # (no liveness here: nothing is counted as waiting for a take-over)
        try:
            return bool(self.is_alive(owner))
        except Exception:
            return True
