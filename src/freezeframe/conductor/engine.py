"""The conductor: runs every long operation as a taskflow flow persisted in the database, and
resumes the flows of conductors that died.

Each workflow row points at its taskflow logbook and flow detail. Running a workflow means
claiming it (a compare-and-set of ``owner`` from a dead or absent conductor to us), then
``load_from_factory`` the first time or ``load_from_detail`` after a crash: taskflow skips the
tasks that completed and re-runs the one that was running, which is why every task is
idempotent. A flow that fails is reverted by taskflow (each task's ``revert``), and the
workflow ends REVERTED (or CANCELLED when a user asked for it) — only once the revert has
really cleaned up: a revert that could not complete leaves the workflow FAILED, says so in
its ``failure_reason`` and history, and the conductor's scan runs every revert step again
(each is idempotent) with a growing pause until they all succeed.

Stopping (SIGTERM/SIGINT) is a pause, not a failure: ``stop()`` takes no new work, sets the
runtime's ``stopping`` event so the running steps stop at their next interruption point
(``runtime.Interrupted``, a BaseException taskflow does not turn into a revert: the step stays
RUNNING in persistence, exactly as after kill -9), releases the claims (owner back to None) and
only then lets its caller stop the HTTP server. The next start of this conductor, or any other
conductor, resumes every paused flow as it resumes a crashed one. A step that does not reach an
interruption point within the grace period leaves the process to end as kill -9 would
(``exit_like_kill_9``): never reverted, resumed all the same.

The same scan reconciles the servers (``compute/reconcile.py``): none stays in a transitional
task_state that no live workflow or operation owns.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import taskflow.engines
from sqlalchemy import select, update
from taskflow import states as tf_states
from taskflow.persistence import backends as tf_backends
from taskflow.persistence import models as tf_models

from freezeframe.common.timeutil import utcnow
from freezeframe.conductor import runtime
from freezeframe.conductor.liveness import Liveness
from freezeframe.conductor.model import Workflow
from freezeframe.conductor.runtime import Interrupted
from freezeframe.conductor.states import TERMINAL, WorkflowState, parse, transition
from freezeframe.db.engine import normalize_url
from freezeframe.db.session import Database

LOG = logging.getLogger(__name__)

# Workflow kind -> the importable factory taskflow records to rebuild the flow after a crash.
FLOW_FACTORIES: dict[str, str] = {
    "snapshot": "freezeframe.conductor.workflows.snapshot.make_flow",
    "backup": "freezeframe.conductor.workflows.snapshot.make_flow",
}
# What a FAILED workflow's failure_reason carries while its revert is not complete.
REVERT_INCOMPLETE = " [revert incomplete, retried by the conductor: "
# Pause between two attempts at an incomplete revert: doubling from the scan interval up to this.
REVERT_RETRY_MAX = 300.0
# Exit status of a stop that had to end the process as kill -9 would.
EXIT_HARD_STOP = 1


def exit_like_kill_9(reason: str) -> None:
    """End the process at once, as kill -9 would: no revert, no clean-up, claims kept (the
    liveness lock goes with the process, so this conductor's next start — or another — resumes
    the flows from the step they were in)."""
    LOG.error("%s: ending the process now, as kill -9 would (its workflows resume at the next start, or on "
              "another conductor)", reason)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(EXIT_HARD_STOP)


def with_incomplete_revert(reason: str | None, error: str) -> str:
    base = (reason or "the workflow failed").split(REVERT_INCOMPLETE, 1)[0]
    return f"{base}{REVERT_INCOMPLETE}{error}]"[:2000]


def without_incomplete_revert(reason: str | None) -> str | None:
    return reason.split(REVERT_INCOMPLETE, 1)[0] if reason else reason


class Conductor:
    def __init__(self, db: Database, liveness: Liveness, *, database_url: str, max_workers: int = 5,
                 scan_interval: float = 5.0, task_timeout: float = 3600.0,
                 api_started_at: dt.datetime | None = None) -> None:
        self.db = db
        self.liveness = liveness
        self.id = liveness.member_id
        self.backend = tf_backends.fetch({"connection": normalize_url(database_url)})
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="ff-flow")
        self._running: set[str] = set()
        self._guard = threading.Lock()
        self._idle = threading.Condition(self._guard)       # notified when a flow thread ends
        self._started = threading.Event()
        self._stopping = threading.Event()
        self._scan_interval = scan_interval
        self._scanner: threading.Thread | None = None
        # Incomplete reverts: workflow id -> (attempts so far, monotonic time of the next one).
        self._revert_retry: dict[str, tuple[int, float]] = {}
        # For compute/reconcile.py: how old a spawning/powering/deleting task_state must be to
        # be repaired, and — when the compute API runs in this very process (``serve``) — when
        # it started: an operation begun before that belonged to a process that is gone.
        self.task_timeout = task_timeout
        self.api_started_at = api_started_at

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        with contextlib.closing(self.backend.get_connection()) as conn:
            conn.upgrade()
        self.liveness.start()
        self._scanner = threading.Thread(target=self._scan_loop, name="ff-conductor-scan", daemon=True)
        self._started.set()
        self._scanner.start()
        LOG.info("conductor %s started", self.id)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self, timeout: float | None = None) -> bool:
        """Pause: take no new work, interrupt the running flows at their next interruption point
        (never reverting them), release this conductor's claims, leave the liveness group.
        True when done within ``timeout`` seconds (None: no limit); False when a step is still
        running then — its claim is kept and the caller should ``exit_like_kill_9``."""
        self._stopping.set()
        with contextlib.suppress(RuntimeError):     # no runtime: no flows ran in this process
            runtime.current().stopping.set()
        if not self._started.is_set():
            self._pool.shutdown(wait=False, cancel_futures=True)
            self.backend.close()
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            if self._running:
                LOG.info("conductor %s stopping: pausing %d running workflow(s) %s", self.id, len(self._running),
                         sorted(self._running))
            while self._running:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._idle.wait(1.0 if remaining is None else min(remaining, 1.0))   # (signals get through)
            still = sorted(self._running)
        if still:
            LOG.error("conductor %s: workflow(s) %s did not reach an interruption point within %gs", self.id,
                      still, timeout)
            return False
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._scanner is not None:
            self._scanner.join(timeout=self._scan_interval + 5)
        released = self._release_claims()
        if released:
            LOG.info("conductor %s released its claim on %d unfinished workflow(s): any conductor resumes them",
                     self.id, released)
        self.liveness.stop()
        self.backend.close()
        LOG.info("conductor %s stopped", self.id)
        return True

    def owner_alive(self, owner: str | None) -> bool:
        return self.liveness.is_alive(owner)

    def _release_claims(self, workflow_id: str | None = None) -> int:
        """Owner back to None (compare-and-set on our own id) for our unfinished workflows, or
        one of them: the next scan of any conductor claims them as it claims new ones."""
        def release(session) -> int:
            stmt = (update(Workflow).where(Workflow.owner == self.id,
                                           Workflow.state.not_in([s.value for s in TERMINAL]))
                    .values(owner=None, updated_at=utcnow()))
            if workflow_id is not None:
                stmt = stmt.where(Workflow.id == workflow_id)
            return session.execute(stmt.execution_options(synchronize_session=False)).rowcount
        try:
            return self.db.run_sync(release)
        except Exception as exc:      # the database is gone: the claim goes with our liveness lock
            LOG.warning("conductor %s could not release its claims: %s", self.id, exc)
            return 0

    # -- running workflows -------------------------------------------------------------------

    def submit(self, workflow_id: str) -> None:
        """Run a workflow in this conductor (the caller just created it, owner None). While the
        conductor is not running (starting, stopping) it stays unclaimed for the next scan."""
        if not self._started.is_set() or self._stopping.is_set():
            LOG.info("workflow %s left for the next conductor scan (this conductor is %s)", workflow_id,
                     "stopping" if self._stopping.is_set() else "starting")
            return
        if self._claim(workflow_id):
            self._start(workflow_id)

    def _start(self, workflow_id: str) -> bool:
        with self._guard:
            if workflow_id in self._running or self._stopping.is_set():
                return False
            self._running.add(workflow_id)
            try:
                self._pool.submit(self._run_guarded, workflow_id)
            except RuntimeError:          # the pool shut down meanwhile
                self._running.discard(workflow_id)
                return False
        return True

    def _claim(self, workflow_id: str) -> bool:
        """Take a workflow whose owner is absent or dead. Exactly one conductor wins."""
        def current(session) -> tuple[str, str | None] | None:
            wf = session.get(Workflow, workflow_id)
            return (wf.state, wf.owner) if wf else None
        row = self.db.run_sync(current)
        if row is None or WorkflowState(parse(row[0])[0]) in TERMINAL:
            return False
        state, owner = row
        if owner == self.id:
            return True
        if owner is not None and self.liveness.is_alive(owner):
            return False

        def claim(session) -> bool:
            cond = Workflow.owner.is_(None) if owner is None else Workflow.owner == owner
            result = session.execute(update(Workflow).where(Workflow.id == workflow_id, cond)
                                     .values(owner=self.id, updated_at=utcnow()))
            return result.rowcount == 1
        won = self.db.run_sync(claim)
        if won and owner is not None:
            LOG.warning("conductor %s took over workflow %s from dead conductor %s (state %s)",
                        self.id, workflow_id, owner, state)
        return won

    def _run_guarded(self, workflow_id: str) -> None:
        try:
            self._run(workflow_id)
        except Interrupted:
            self._paused(workflow_id)
        except Exception:
            LOG.exception("workflow %s: conductor error", workflow_id)
        finally:
            with self._idle:
                self._running.discard(workflow_id)
                self._idle.notify_all()

    def _paused(self, workflow_id: str) -> None:
        """A flow interrupted by a stop: nothing reverted; the claim is released for whichever
        conductor runs next (this one restarted, or another)."""
        try:
            state = self.db.run_sync(lambda s: getattr(s.get(Workflow, workflow_id), "state", None))
        except Exception:                # (only for the log line)
            state = "?"
        self._release_claims(workflow_id)
        LOG.info("workflow %s paused in state %s (conductor stopping): resumed by the next conductor",
                 workflow_id, state)

    def _engine(self, wf: Workflow):
        if wf.flow_detail_id is None:
            book = tf_models.LogBook(f"workflow-{wf.id}")
            engine = taskflow.engines.load_from_factory(
                FLOW_FACTORIES[wf.kind], factory_kwargs={"workflow_id": wf.id, "kind": wf.kind},
                store={"workflow_id": wf.id}, backend=self.backend, book=book, engine="serial")
            flow_detail_id = engine.storage.flow_uuid

            def remember(session) -> None:
                row = session.get(Workflow, wf.id)
                row.logbook_id, row.flow_detail_id = book.uuid, flow_detail_id
            self.db.run_sync(remember)
            return engine
        with contextlib.closing(self.backend.get_connection()) as conn:
            book = conn.get_logbook(wf.logbook_id)
        flow_detail = book.find(wf.flow_detail_id)
        LOG.info("workflow %s: resuming flow %s from state %s", wf.id, wf.flow_detail_id, wf.state)
        return taskflow.engines.load_from_detail(flow_detail, backend=self.backend, engine="serial")

    def _run(self, workflow_id: str) -> None:
        wf = self.db.run_sync(lambda s: s.get(Workflow, workflow_id))
        if wf is None or wf.owner != self.id:
            return
        if wf.state == WorkflowState.FAILED:
            # Its revert was cut short (it failed, or its conductor died or stopped in it):
            # every revert step again, not taskflow (which would not retry a failed revert).
            self._retry_revert(wf)
            return
        runtime.current().check_stop()
        engine = self._engine(wf)
        try:
            engine.run()        # Interrupted (a stop) goes straight through: nothing reverted
        except Exception as exc:
            if engine.storage.get_flow_state() == tf_states.REVERTED:
                self._finish_failed(workflow_id, exc)
            else:
                self._revert_incomplete(workflow_id, exc)
        else:
            LOG.info("workflow %s finished", workflow_id)

    def _finish_failed(self, workflow_id: str, exc: BaseException | None, *,
                       detail: str = "reverted: cleaned up") -> None:
        """The revert cleaned up: record how the workflow ended (REVERTED, or CANCELLED)."""
        reason = _reason(exc) if exc is not None else "the workflow failed"

        def finish(session) -> None:
            wf = session.get(Workflow, workflow_id)
            if wf is None or WorkflowState(parse(wf.state)[0]) in TERMINAL:
                return
            if wf.state != WorkflowState.FAILED:
                transition(session, workflow_id, wf.state, WorkflowState.FAILED, detail=reason,
                           values={"failure_reason": reason})
            end = WorkflowState.CANCELLED if wf.cancel_requested else WorkflowState.REVERTED
            transition(session, workflow_id, WorkflowState.FAILED, end, detail=detail,
                       values={"failure_reason": without_incomplete_revert(wf.failure_reason) or reason})
        self.db.run_sync(finish)
        self._revert_retry.pop(workflow_id, None)
        LOG.warning("workflow %s reverted: %s", workflow_id, reason)

    def _revert_incomplete(self, workflow_id: str, exc: BaseException) -> None:
        """A revert step failed: the workflow stays FAILED — never REVERTED — with a reason that
        says so, and the scan tries every revert step again later. The claim is kept."""
        error = _reason(exc)

        def record(session) -> None:
            wf = session.get(Workflow, workflow_id)
            if wf is None or WorkflowState(parse(wf.state)[0]) in TERMINAL:
                return
            reason = with_incomplete_revert(wf.failure_reason, error)
            if wf.state != WorkflowState.FAILED:
                transition(session, workflow_id, wf.state, WorkflowState.FAILED, detail=reason,
                           values={"failure_reason": reason})
            elif reason != wf.failure_reason:      # a new error: one event, not one per attempt
                transition(session, workflow_id, WorkflowState.FAILED, WorkflowState.FAILED,
                           detail=f"revert incomplete: {error}", values={"failure_reason": reason})
        self.db.run_sync(record)
        attempts = self._revert_retry.get(workflow_id, (0, 0.0))[0] + 1
        pause = min(REVERT_RETRY_MAX, self._scan_interval * 2 ** (attempts - 1))
        self._revert_retry[workflow_id] = (attempts, time.monotonic() + pause)
        LOG.error("workflow %s: its revert could not complete (attempt %d): %s; retried in %gs",
                  workflow_id, attempts, error, pause)

    def _retry_revert(self, wf: Workflow) -> None:
        """Every revert step of the flow, last first — each is idempotent, so the ones that had
        succeeded before are no-ops. All succeed: REVERTED (or CANCELLED). One fails: retried."""
        module, _, name = FLOW_FACTORIES[wf.kind].rpartition(".")
        flow = getattr(importlib.import_module(module), name)(workflow_id=wf.id, kind=wf.kind)
        LOG.info("workflow %s: retrying its revert", wf.id)
        try:
            for atom in reversed(list(flow)):
                atom.revert(workflow_id=wf.id, result=None, flow_failures={})
        except Exception as exc:
            self._revert_incomplete(wf.id, exc)
            return
        self._finish_failed(wf.id, None, detail="reverted: cleaned up (revert retried)")

    # -- recovery ----------------------------------------------------------------------------

    def adopt_orphans(self) -> list[str]:
        """Claim and resume every unfinished workflow whose owner is dead or absent (or this
        conductor, restarted), and retry the incomplete reverts that are due. Returns the ids
        taken."""
        live_terminal = [s.value for s in TERMINAL]

        def unfinished(session) -> list[tuple[str, str | None]]:
            rows = session.execute(select(Workflow.id, Workflow.owner).where(Workflow.state.not_in(live_terminal)))
            return [(r[0], r[1]) for r in rows]
        taken = []
        now = time.monotonic()
        for workflow_id, owner in self.db.run_sync(unfinished):
            if self._stopping.is_set():
                break
            with self._guard:
                if workflow_id in self._running:
                    continue
            if self._revert_retry.get(workflow_id, (0, 0.0))[1] > now:
                continue        # an incomplete revert of ours, not due yet
            if owner == self.id or not self.liveness.is_alive(owner):
                if self._claim(workflow_id) and self._start(workflow_id):
                    taken.append(workflow_id)
        return taken

    def sweep_leftovers(self) -> list[str]:
        """Release what a finished workflow still holds on this host — a snapshot workdir with its
        backup job or qemu-nbd export — when its flow ended without doing so (e.g. a revert that
        itself failed). Returns the workflow ids cleaned."""
        from freezeframe.compute.model import Instance

        try:
            rt = runtime.current()
            names = [p.name for p in rt.workdir.iterdir() if p.is_dir()]
        except (RuntimeError, FileNotFoundError):     # no workflows run here (yet)
            return []
        done_states = [s.value for s in TERMINAL]

        def finished(session) -> list[tuple[str, str]]:
            rows = session.execute(select(Workflow.id, Instance.domain_name)
                                   .join(Instance, Instance.id == Workflow.resource_id)
                                   .where(Workflow.id.in_(names), Workflow.state.in_(done_states)))
            return [(r[0], r[1]) for r in rows]
        cleaned = []
        for workflow_id, domain in self.db.run_sync(finished) if names else []:
            with self._guard:
                if workflow_id in self._running:
                    continue
            try:
                rt.driver.end_snapshot(domain, workflow_id, rt.workdir / workflow_id)
            except Exception as exc:   # retried at the next scan
                LOG.warning("workflow %s: could not release its leftovers: %s", workflow_id, exc)
                continue
            LOG.warning("workflow %s had finished but still held a snapshot on this host: released", workflow_id)
            cleaned.append(workflow_id)
        return cleaned

    def reconcile(self) -> list[Any]:
        """Servers left in a transitional task_state with no live owner: repaired."""
        from freezeframe.compute import reconcile

        try:
            driver = runtime.current().driver
        except RuntimeError:
            return []
        return reconcile.reconcile_servers(self.db, driver, task_timeout=self.task_timeout,
                                           api_started_at=self.api_started_at)

    def _scan_loop(self) -> None:
        while not self._stopping.is_set():
            for scan in (self.adopt_orphans, self.sweep_leftovers, self.reconcile):
                if self._stopping.is_set():
                    break
                try:
                    scan()
                except Exception:
                    LOG.exception("conductor scan failed")
            self._stopping.wait(self._scan_interval)


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:1000] if text else type(exc).__name__


def new_workflow_id() -> str:
    return str(uuid.uuid4())
