"""The conductor: runs every long operation as a taskflow flow persisted in the database, and
resumes the flows of conductors that died. It is service-neutral: the kinds of work, their flows
and what each service's work may leave on a host come from the registry (``conductor/registry.py``).

Finding work: the jobboard (``conductor/jobboard.py``, chosen by URL: the database, or
taskflow's Redis jobboard with expiring claims) offers the workflows this conductor may take —
never host-bound work for a host it does not serve. Taking one is the compare-and-set of its
lease in the database (``conductor/lease.py``): owner := this conductor, fence + 1. A keep-alive
thread renews every held lease (and the board's claim) every TTL/3; every write a step makes is
fenced, so a conductor that lost a workflow commits nothing more (``Fenced``) and no flow ever
runs twice. The database is the truth: each scan posts again whatever unfinished workflow no
fresh lease holds and the board lost (a Redis restart).

Running a workflow: ``load_from_factory`` (the kind's factory, by its importable name) the first
time or ``load_from_detail`` after a crash or a take-over — the factory name persisted with the
flow resolved through the registry first, so a flow persisted under a factory's old name (its
module moved) resumes with the current one: taskflow skips the tasks that
completed and re-runs the one that was running, which is why every task is idempotent. A flow
that fails is reverted by taskflow (each task's ``revert``), and the workflow ends REVERTED (or
CANCELLED when a user asked for it) — only once the revert has really cleaned up: a revert that
could not complete leaves the workflow FAILED, says so in its ``failure_reason`` and history,
and the conductor keeps it and runs every revert step again (each is idempotent) with a growing
pause until they all succeed.

Stopping (SIGTERM/SIGINT) is a pause, not a failure: ``stop()`` takes no new work, sets the
runtime's ``stopping`` event so the running steps stop at their next interruption point
(``runtime.Interrupted``, a BaseException taskflow does not turn into a revert: the step stays
RUNNING in persistence, exactly as after kill -9), releases the claims (owner back to None) and
only then lets its caller stop the HTTP server. The next start of this conductor, or any other
conductor, resumes every paused flow as it resumes a crashed one. A step that does not reach an
interruption point within the grace period leaves the process to end as kill -9 would
(``exit_like_kill_9``): never reverted, resumed all the same.

Every scan also calls the services' reconcile hooks (compute: releasing what a finished snapshot
still holds on this host, repairing servers left in a transitional task_state).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable

import taskflow.engines
from sqlalchemy import update
from taskflow import states as tf_states
from taskflow.persistence import models as tf_models

from freezeframe.common.context import workflow_id_var
from freezeframe.common.timeutil import utcnow
from freezeframe.conductor import runtime
from freezeframe.conductor.jobboard import Board, DatabaseBoard
from freezeframe.conductor.lease import Claim, Fenced, Leases
from freezeframe.conductor.liveness import Liveness
from freezeframe.conductor.model import Workflow
from freezeframe.conductor.persistence import persistence_backend
from freezeframe.conductor.registry import Registry, Scan, UnknownKind, WorkflowKind
from freezeframe.conductor.interrupts import HostAway, Waiting
from freezeframe.conductor.runtime import Interrupted
from freezeframe.conductor.service import Workflows
from freezeframe.conductor.states import WorkflowState, transition
from freezeframe.db.engine import normalize_url
from freezeframe.db.migrate import TASKFLOW_LOCK, exclusive
from freezeframe.db.session import Database

LOG = logging.getLogger(__name__)

# What a FAILED workflow's failure_reason carries while its revert is not complete.
REVERT_INCOMPLETE = " [revert incomplete, retried by the conductor: "
# Pause between two attempts at an incomplete revert: doubling from the scan interval up to this.
REVERT_RETRY_MAX = 300.0
# Exit status of a stop that had to end the process as kill -9 would.
EXIT_HARD_STOP = 1
# How a run of a workflow left it: ended (nothing more to do) or held (a revert to retry).
ENDED, HELD = "ended", "held"


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
    def __init__(self, db: Database, liveness: Liveness, *, database_url: str, registry: Registry,
                 leases: Leases, board: Board | None = None,
                 hosts: frozenset[str] | None | Callable[[], frozenset[str] | None] = None,
                 max_workers: int = 5, scan_interval: float = 5.0, workflows: Workflows | None = None,
                 companions: Iterable[Any] = ()) -> None:
        self.db = db
        # What runs beside this conductor's workflows and lives as long as it does (``start()``
        # before the first claim, ``stop()`` once every flow paused): the bare-metal transfer
        # area's WebDAV server, which the snapshots this conductor runs stream into.
        self.companions = list(companions)
        self.liveness = liveness
        self.id = liveness.member_id
        if leases.owner != self.id:
            raise ValueError(f"the leases are held as {leases.owner}, not as conductor {self.id}")
        self.registry = registry
        self.leases = leases
        self.board = board or DatabaseBoard(db, registry, leases.ttl)
        # The hosts whose host-bound work this conductor claims (None: any): fixed, or asked
        # afresh at every claim (the hosts it can reach now: never work for one it cannot).
        self._hosts = hosts
        self.workflows = workflows or Workflows(db, registry, self.board, liveness.is_alive, leases.ttl)
        self.backend = persistence_backend(normalize_url(database_url))
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="ff-flow")
        self._running: set[str] = set()
        self._guard = threading.Lock()
        self._idle = threading.Condition(self._guard)       # notified when a flow thread ends
        self._started = threading.Event()
        self._stopping = threading.Event()
        self._wake = threading.Event()                      # a post from this process: look now
        self._scan_interval = scan_interval
        # How often the board is asked for work: a dead conductor's work is taken over within
        # about one lease TTL plus this.
        self._poll = min(scan_interval, max(0.05, leases.ttl / 4))
        self._scanner: threading.Thread | None = None
        self._keeper: threading.Thread | None = None
        self._board_keeper: threading.Thread | None = None
        self._keeper_stop = threading.Event()
        # Incomplete reverts: workflow id -> (attempts so far, monotonic time of the next one).
        self._revert_retry: dict[str, tuple[int, float]] = {}
        # Workflows not to offer ourselves again before a monotonic time (held elsewhere, failed).
        self._backoff: dict[str, float] = {}
        # Posted while running: a step that then waits (``Waiting``) is looked at again at once.
        self._woken: set[str] = set()
        self._board_down_since: float | None = None

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        with exclusive(self.db.engine, TASKFLOW_LOCK), contextlib.closing(self.backend.get_connection()) as conn:
            conn.upgrade()      # (concurrent upgrades of taskflow's schema race on PostgreSQL)
        for companion in self.companions:
            companion.start()
        self.liveness.start()
        self.board.listen(self._posted)
        try:
            self.board.connect()
        except Exception as exc:    # the board comes later: the scan keeps trying
            self._board_trouble(exc)
        self._scanner = threading.Thread(target=self._scan_loop, name="ff-conductor-scan", daemon=True)
        self._keeper = threading.Thread(target=self._keep_loop, name="ff-conductor-keepalive", daemon=True)
        self._board_keeper = threading.Thread(target=self._keep_board_loop, name="ff-conductor-board-keepalive",
                                              daemon=True)
        self._started.set()
        self._keeper.start()
        self._board_keeper.start()
        self._scanner.start()
        LOG.info("conductor %s started (jobboard %s, lease %gs, hosts %s)", self.id,
                 type(self.board).__name__, self.leases.ttl,
                 "those it reaches" if callable(self._hosts) else "any" if self._hosts is None else sorted(self._hosts))

    def _posted(self, workflow_id: str) -> None:
        """A post from this process: look now — also at a workflow put off until then (one
        waiting for another service's report is woken by it)."""
        self._backoff.pop(workflow_id, None)
        with self._guard:
            if workflow_id in self._running:
                self._woken.add(workflow_id)
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def running_count(self) -> int:
        """Workflows running here now (the metrics' gauge)."""
        return len(self._running)

    def stop(self, timeout: float | None = None) -> bool:
        """Pause: take no new work, interrupt the running flows at their next interruption point
        (never reverting them), release this conductor's claims, leave the liveness group.
        True when done within ``timeout`` seconds (None: no limit); False when a step is still
        running then — its claim is kept and the caller should ``exit_like_kill_9``."""
        self._stopping.set()
        self._wake.set()
        with contextlib.suppress(RuntimeError):     # no runtime: no flows ran in this process
            runtime.current().stopping.set()
        if not self._started.is_set():
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._stop_companions()
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
        self._keeper_stop.set()
        for keeper in (self._keeper, self._board_keeper):
            if keeper is not None:
                keeper.join(timeout=5)
        released = self._release_claims()
        if released:
            LOG.info("conductor %s released its claim on %d unfinished workflow(s): any conductor resumes them",
                     self.id, released)
        self.liveness.stop()
        with contextlib.suppress(Exception):
            self.board.close()
        self._stop_companions()
        self.backend.close()
        LOG.info("conductor %s stopped", self.id)
        return True

    def _stop_companions(self) -> None:
        for companion in reversed(self.companions):
            try:
                companion.stop()
            except Exception:
                LOG.exception("conductor %s: stopping %r failed", self.id, companion)

    def owner_alive(self, owner: str | None) -> bool:
        return self.liveness.is_alive(owner)

    def _release_claims(self) -> int:
        """Owner back to None for our unfinished workflows (the ones we hold, and any left from
        an earlier run of this conductor): the next scan of any conductor takes them."""
        released = 0
        for claim in self.leases.held():
            released += self._let_go(claim)
        terminal = list(self.registry.terminal_states())

        def release(session) -> int:
            return session.execute(update(Workflow).where(Workflow.owner == self.id, Workflow.state.not_in(terminal))
                                   .values(owner=None, heartbeat_at=None, updated_at=utcnow())
                                   .execution_options(synchronize_session=False)).rowcount
        try:
            released += self.db.run_sync(release)
        except Exception as exc:      # the database is gone: the leases run out by themselves
            LOG.warning("conductor %s could not release its claims: %s", self.id, exc)
        return released

    def _let_go(self, claim: Claim) -> int:
        """Give one workflow back: the lease (if still ours) and the board's claim."""
        released = 0
        try:
            released = int(self.leases.release(claim))
        except Exception as exc:
            LOG.warning("workflow %s: could not release its claim: %s", claim.workflow_id, exc)
        self._revert_retry.pop(claim.workflow_id, None)
        if claim.job is not None:
            with contextlib.suppress(Exception):
                self.board.give_up(claim.job, self.id)
        return released

    # -- taking work -------------------------------------------------------------------------

    @property
    def hosts(self) -> frozenset[str] | None:
        return self._hosts() if callable(self._hosts) else self._hosts

    def claim_work(self) -> list[str]:
        """Take what the board offers (within this conductor's hosts and kinds) and run it.
        Returns the ids started."""
        taken: list[str] = []
        now = time.monotonic()
        for offer in self.board.offers(self.id, self.hosts):
            if self._stopping.is_set():
                break
            workflow_id = offer.workflow_id
            if offer.kind is not None and offer.kind not in self.registry.kinds:
                continue                # a kind this process cannot run: left to a conductor that can
            with self._guard:
                if workflow_id in self._running or self.leases.get(workflow_id) is not None:
                    continue
            if self._backoff.get(workflow_id, 0.0) > now:
                continue
            if not self.board.take(offer, self.id, self.leases.ttl):
                continue
            try:
                claim, why = self.leases.acquire(workflow_id)
            except BaseException:
                with contextlib.suppress(Exception):
                    self.board.give_up(offer, self.id)
                raise
            if claim is None:
                if why == "finished":
                    self.board.done(offer, self.id)
                else:                   # another conductor's lease is still fresh
                    self.board.give_up(offer, self.id)
                    self._backoff[workflow_id] = now + min(self.leases.ttl / 2, self._scan_interval)
                continue
            claim.job = offer
            self.db.metrics.claims.inc()
            if claim.previous_owner not in (None, self.id):
                self.db.metrics.takeovers.inc()
                LOG.warning("conductor %s took over workflow %s from conductor %s, whose lease ran out (state %s, "
                            "fence %d)", self.id, workflow_id, claim.previous_owner, claim.state, claim.fence)
            if self._start(claim):
                taken.append(workflow_id)
            else:
                self._let_go(claim)
        self._backoff = {k: v for k, v in self._backoff.items() if v > now}
        return taken

    def _start(self, claim: Claim) -> bool:
        with self._guard:
            if claim.workflow_id in self._running or self._stopping.is_set():
                return False
            self._running.add(claim.workflow_id)
            try:
                self._pool.submit(self._run_guarded, claim)
            except RuntimeError:          # the pool shut down meanwhile
                self._running.discard(claim.workflow_id)
                return False
        return True

    # -- running workflows -------------------------------------------------------------------

    def _run_guarded(self, claim: Claim) -> None:
        workflow_id = claim.workflow_id
        token = workflow_id_var.set(workflow_id)       # every log line of the run names it
        try:
            with self.leases.bound(claim):
                outcome = self._run(claim)
            if outcome == ENDED:
                self._ended(claim)
        except Fenced as exc:
            LOG.warning("%s: stopped here, left to its new owner (nothing reverted)", exc)
            self._revert_retry.pop(workflow_id, None)
            self.leases.forget(claim)
            if claim.job is not None:
                with contextlib.suppress(Exception):
                    self.board.give_up(claim.job, self.id)
        except Waiting as exc:
            self._let_go(claim)
            with self._guard:       # the report came while the step was deciding to wait
                woken = workflow_id in self._woken
            self._backoff[workflow_id] = time.monotonic() + (0.0 if woken else max(0.0, exc.retry_in))
            self._wake.set()        # the scan loop recomputes how long it sleeps (a short retry_in)
            LOG.info("workflow %s waits: %s (looked at again in %.1fs, or when woken)", workflow_id, exc, exc.retry_in)
        except HostAway as exc:
            self._let_go(claim)
            self._backoff[workflow_id] = time.monotonic() + 2 * self._scan_interval
            LOG.warning("workflow %s paused: %s; resumed by a conductor that reaches the host once it is back",
                        workflow_id, exc)
        except Interrupted:
            self._paused(claim)
        except Exception:
            LOG.exception("workflow %s: conductor error", workflow_id)
            # Not ours to hold while nothing runs it: the lease runs out, and we (or another
            # conductor, after the lease) take it again.
            self.leases.forget(claim)
            self._backoff[workflow_id] = time.monotonic() + self._scan_interval
            if claim.job is not None:
                with contextlib.suppress(Exception):
                    self.board.give_up(claim.job, self.id)
        finally:
            workflow_id_var.reset(token)
            with self._idle:
                self._running.discard(workflow_id)
                self._woken.discard(workflow_id)
                self._idle.notify_all()

    def _ended(self, claim: Claim) -> None:
        self._revert_retry.pop(claim.workflow_id, None)
        self.leases.forget(claim)
        if claim.job is not None:
            with contextlib.suppress(Exception):
                self.board.done(claim.job, self.id)

    def _paused(self, claim: Claim) -> None:
        """A flow interrupted by a stop: nothing reverted; the claim is released for whichever
        conductor runs next (this one restarted, or another)."""
        try:
            state = self.db.run_sync(lambda s: getattr(s.get(Workflow, claim.workflow_id), "state", None))
        except Exception:                # (only for the log line)
            state = "?"
        self._let_go(claim)
        LOG.info("workflow %s paused in state %s (conductor stopping): resumed by the next conductor",
                 claim.workflow_id, state)

    def _kind(self, wf: Workflow) -> WorkflowKind:
        return self.registry.kind(wf.kind)

    def _engine(self, wf: Workflow, kind: WorkflowKind):
        if wf.flow_detail_id is None:
            book = tf_models.LogBook(f"workflow-{wf.id}")
            engine = taskflow.engines.load_from_factory(
                kind.factory, factory_kwargs={"workflow_id": wf.id, "kind": wf.kind},
                store={"workflow_id": wf.id}, backend=self.backend, book=book, engine="serial")
            flow_detail_id = engine.storage.flow_uuid

            def remember(session) -> None:
                row = session.get(Workflow, wf.id)
                row.logbook_id, row.flow_detail_id = book.uuid, flow_detail_id
            self.leases.write(wf.id, remember)
            return engine
        with contextlib.closing(self.backend.get_connection()) as conn:
            book = conn.get_logbook(wf.logbook_id)
        flow_detail = book.find(wf.flow_detail_id)
        current_factory(self.registry, flow_detail)
        LOG.info("workflow %s: resuming flow %s from state %s", wf.id, wf.flow_detail_id, wf.state)
        return taskflow.engines.load_from_detail(flow_detail, backend=self.backend, engine="serial")

    def _run(self, claim: Claim) -> str:
        workflow_id = claim.workflow_id
        wf = self.db.run_sync(lambda s: s.get(Workflow, workflow_id))
        if wf is None:
            return ENDED
        if wf.owner != self.id or wf.fence != claim.fence:
            raise Fenced(f"workflow {workflow_id}: taken by {wf.owner} (fence {wf.fence}) before it could run here")
        kind = self._kind(wf)
        if wf.state in kind.states.terminal:
            return ENDED
        if wf.state == WorkflowState.FAILED:
            # Its revert was cut short (it failed, or its conductor died or stopped in it):
            # every revert step again, not taskflow (which would not retry a failed revert).
            return self._retry_revert(wf, kind)
        runtime.current().check_stop()
        engine = self._engine(wf, kind)
        try:
            with self.db.metrics.running_workflow(wf.kind):     # its uploads count for its kind
                engine.run()        # Interrupted/Fenced go straight through: nothing reverted
        except Exception as exc:
            if engine.storage.get_flow_state() == tf_states.REVERTED:
                self._finish_failed(workflow_id, exc)
                return ENDED
            self._revert_incomplete(workflow_id, exc)
            return HELD
        LOG.info("workflow %s finished", workflow_id)
        self._observe_end(workflow_id)
        return ENDED

    def _observe_end(self, workflow_id: str) -> None:
        """Count a workflow this run ended: its kind, final state, creation-to-end seconds."""
        try:
            wf = self.db.run_sync(lambda s: s.get(Workflow, workflow_id))
        except Exception as exc:         # (only for the metrics)
            LOG.debug("workflow %s: not counted in the metrics: %s", workflow_id, exc)
            return
        if wf is not None and wf.state in self.registry.terminal_states():
            self.db.metrics.workflow_finished(wf.kind, wf.state,
                                              (wf.last_state_change_at - wf.created_at).total_seconds())

    def _finish_failed(self, workflow_id: str, exc: BaseException | None, *,
                       detail: str = "reverted: cleaned up") -> None:
        """The revert cleaned up: record how the workflow ended (REVERTED, or CANCELLED)."""
        reason = _reason(exc) if exc is not None else "the workflow failed"
        terminal = self.registry.terminal_states()

        def finish(session) -> None:
            wf = session.get(Workflow, workflow_id)
            if wf is None or wf.state in terminal:
                return
            if wf.state != WorkflowState.FAILED:
                transition(session, workflow_id, wf.state, WorkflowState.FAILED, detail=reason,
                           values={"failure_reason": reason})
            end = WorkflowState.CANCELLED if wf.cancel_requested else WorkflowState.REVERTED
            transition(session, workflow_id, WorkflowState.FAILED, end, detail=detail,
                       values={"failure_reason": without_incomplete_revert(wf.failure_reason) or reason})
        self.leases.write(workflow_id, finish)
        self._revert_retry.pop(workflow_id, None)
        LOG.warning("workflow %s reverted: %s", workflow_id, reason)
        self._observe_end(workflow_id)

    def _revert_incomplete(self, workflow_id: str, exc: BaseException) -> None:
        """A revert step failed: the workflow stays FAILED — never REVERTED — with a reason that
        says so, and this conductor keeps it and tries every revert step again later."""
        error = _reason(exc)
        terminal = self.registry.terminal_states()

        def record(session) -> None:
            wf = session.get(Workflow, workflow_id)
            if wf is None or wf.state in terminal:
                return
            reason = with_incomplete_revert(wf.failure_reason, error)
            if wf.state != WorkflowState.FAILED:
                transition(session, workflow_id, wf.state, WorkflowState.FAILED, detail=reason,
                           values={"failure_reason": reason})
            elif reason != wf.failure_reason:      # a new error: one event, not one per attempt
                transition(session, workflow_id, WorkflowState.FAILED, WorkflowState.FAILED,
                           detail=f"revert incomplete: {error}", values={"failure_reason": reason})
        self.leases.write(workflow_id, record)
        attempts = self._revert_retry.get(workflow_id, (0, 0.0))[0] + 1
        pause = min(REVERT_RETRY_MAX, self._scan_interval * 2 ** (attempts - 1))
        self._revert_retry[workflow_id] = (attempts, time.monotonic() + pause)
        LOG.error("workflow %s: its revert could not complete (attempt %d): %s; retried in %gs",
                  workflow_id, attempts, error, pause)

    def _retry_revert(self, wf: Workflow, kind: WorkflowKind) -> str:
        """Every revert step of the flow, last first — each is idempotent, so the ones that had
        succeeded before are no-ops. All succeed: REVERTED (or CANCELLED). One fails: retried."""
        flow = kind.make_flow(workflow_id=wf.id, kind=wf.kind)
        LOG.info("workflow %s: retrying its revert", wf.id)
        try:
            for atom in reversed(list(flow)):
                atom.revert(workflow_id=wf.id, result=None, flow_failures={})
        except Exception as exc:
            self._revert_incomplete(wf.id, exc)
            return HELD
        self._finish_failed(wf.id, None, detail="reverted: cleaned up (revert retried)")
        return ENDED

    # -- the scan ----------------------------------------------------------------------------

    def retry_reverts(self) -> list[str]:
        """Start the incomplete reverts of the workflows this conductor holds that are due."""
        started, now = [], time.monotonic()
        for workflow_id, (_, due) in list(self._revert_retry.items()):
            if due > now:
                continue
            claim = self.leases.get(workflow_id)
            if claim is None:                   # lost meanwhile: its new owner retries it
                self._revert_retry.pop(workflow_id, None)
                continue
            if self._start(claim):
                started.append(workflow_id)
        return started

    def repost(self) -> list[str]:
        """The database is the truth: post again what no fresh lease holds and the board lost."""
        if isinstance(self.board, DatabaseBoard):
            return []
        return self.board.repost(self.workflows.unclaimed())

    def reconcile(self) -> dict[str, list[Any]]:
        """Every service's reconcile hooks (what their work left on this host; their resources
        left in a transitional state by work that is gone)."""
        with self._guard:
            here = frozenset(self._running) | {c.workflow_id for c in self.leases.held()}
        scan = Scan(conductor_id=self.id, running=frozenset(here), hosts=self.hosts, workflows=self.workflows)
        done = self.registry.run_hooks(scan, should_stop=self._stopping.is_set)
        for hook, items in done.items():
            self.db.metrics.reaped(hook, {"reconciled": len(items)})
        return done

    def _board_trouble(self, exc: Exception) -> None:
        now = time.monotonic()
        if self._board_down_since is None:
            self._board_down_since = now
            LOG.warning("conductor %s: the jobboard is unavailable (%s); retrying (the flows it runs go on)",
                        self.id, exc)
        with contextlib.suppress(Exception):
            self.board.close()

    def _scan_loop(self) -> None:
        next_scan = 0.0
        while not self._stopping.is_set():
            try:
                self.claim_work()
                if self._board_down_since is not None:
                    LOG.warning("conductor %s: the jobboard is back after %.1fs", self.id,
                                time.monotonic() - self._board_down_since)
                    self._board_down_since = None
            except UnknownKind as exc:
                LOG.error("conductor scan: %s", exc)
            except Exception as exc:
                if isinstance(self.board, DatabaseBoard):
                    LOG.exception("conductor scan failed")
                else:
                    self._board_trouble(exc)
            if time.monotonic() >= next_scan:
                next_scan = time.monotonic() + self._scan_interval
                for step in (self.repost, self.retry_reverts, self.reconcile):
                    if self._stopping.is_set():
                        break
                    try:
                        step()
                    except Exception as exc:
                        if step == self.repost and not isinstance(self.board, DatabaseBoard):
                            self._board_trouble(exc)
                        else:
                            LOG.exception("conductor scan failed")
            if self._wake.wait(self._next_look()):
                self._wake.clear()

    def _next_look(self) -> float:
        """How long the scan loop may sleep: its poll interval, or less when a workflow put off
        for a shorter while (``Waiting`` with a short ``retry_in``) is due sooner."""
        now = time.monotonic()
        due = [until for until in list(self._backoff.values()) if until > now]
        return max(0.01, min([self._poll, *(until - now for until in due)]))

    def _keep_loop(self) -> None:
        """Renew every held lease every TTL/3. Nothing else runs on this thread: a slow jobboard
        never delays a renewal (the board's claims are extended by their own thread)."""
        period = self.leases.ttl / 3
        while not self._keeper_stop.wait(period):
            for claim in self.leases.held():
                try:
                    if not self.leases.heartbeat(claim):
                        LOG.warning("workflow %s: conductor %s lost its lease (fence %d moved on): it stops at its "
                                    "next step", claim.workflow_id, self.id, claim.fence)
                except Exception as exc:     # the database is away: the step stops once the lease may run out
                    LOG.warning("workflow %s: could not renew the lease: %s", claim.workflow_id, exc)

    def _keep_board_loop(self) -> None:
        """Extend this conductor's claims on the board (owner-checked) every TTL/3: they tell the
        other conductors which jobs are being worked on; the lease in the database is what counts."""
        if isinstance(self.board, DatabaseBoard):
            return
        period = self.leases.ttl / 3
        while not self._keeper_stop.wait(period):
            for claim in self.leases.held():
                if claim.job is None or not claim.valid():
                    continue
                try:
                    self.board.keep(claim.job, self.id, self.leases.ttl)
                except Exception as exc:
                    LOG.debug("workflow %s: could not extend the board's claim: %s", claim.workflow_id, exc)


def current_factory(registry: Registry, flow_detail: Any) -> str | None:
    """Point a persisted flow at the current name of its factory (``Registry.factory``) before
    taskflow imports it to rebuild the flow: a name the registry knows as an alias (the module
    moved) is replaced in ``flow_detail.meta`` (taskflow saves it with the flow's next state);
    a name no kind declares is ``UnknownFactory``. Returns the name the flow resumes with (None
    when nothing was persisted: taskflow refuses that flow itself)."""
    meta = flow_detail.meta if isinstance(flow_detail.meta, dict) else {}
    factory = meta.get("factory")
    if not isinstance(factory, dict) or not factory.get("name"):
        return None
    persisted = factory["name"]
    current = registry.factory(persisted)
    if current != persisted:
        LOG.info("flow %s: its factory %s is now %s", flow_detail.uuid, persisted, current)
        flow_detail.meta = {**meta, "factory": {**factory, "name": current}}
    return current


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:1000] if text else type(exc).__name__
