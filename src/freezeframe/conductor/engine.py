"""The conductor: runs every long operation as a taskflow flow persisted in the database, and
resumes the flows of conductors that died.

Each workflow row points at its taskflow logbook and flow detail. Running a workflow means
claiming it (a compare-and-set of ``owner`` from a dead or absent conductor to us), then
``load_from_factory`` the first time or ``load_from_detail`` after a crash: taskflow skips the
tasks that completed and re-runs the one that was running, which is why every task is
idempotent. A flow that fails is reverted by taskflow (each task's ``revert``), and the
workflow ends REVERTED (or CANCELLED when a user asked for it).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import taskflow.engines
from sqlalchemy import select, update
from taskflow.persistence import backends as tf_backends
from taskflow.persistence import models as tf_models

from freezeframe.common.timeutil import utcnow
from freezeframe.conductor.liveness import Liveness
from freezeframe.conductor.model import Workflow
from freezeframe.conductor.states import TERMINAL, WorkflowState, parse, transition
from freezeframe.db.engine import normalize_url
from freezeframe.db.session import Database

LOG = logging.getLogger(__name__)

# Workflow kind -> the importable factory taskflow records to rebuild the flow after a crash.
FLOW_FACTORIES: dict[str, str] = {
    "snapshot": "freezeframe.conductor.workflows.snapshot.make_flow",
    "backup": "freezeframe.conductor.workflows.snapshot.make_flow",
}


class Conductor:
    def __init__(self, db: Database, liveness: Liveness, *, database_url: str, max_workers: int = 5,
                 scan_interval: float = 5.0) -> None:
        self.db = db
        self.liveness = liveness
        self.id = liveness.member_id
        self.backend = tf_backends.fetch({"connection": normalize_url(database_url)})
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="ff-flow")
        self._running: set[str] = set()
        self._guard = threading.Lock()
        self._stopping = threading.Event()
        self._scan_interval = scan_interval
        self._scanner: threading.Thread | None = None

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        with contextlib.closing(self.backend.get_connection()) as conn:
            conn.upgrade()
        self.liveness.start()
        self._scanner = threading.Thread(target=self._scan_loop, name="ff-conductor-scan", daemon=True)
        self._scanner.start()
        LOG.info("conductor %s started", self.id)

    def stop(self, wait: bool = True) -> None:
        self._stopping.set()
        self._pool.shutdown(wait=wait, cancel_futures=True)
        if self._scanner is not None:
            self._scanner.join(timeout=self._scan_interval + 1)
        self.liveness.stop()
        self.backend.close()

    def owner_alive(self, owner: str | None) -> bool:
        return self.liveness.is_alive(owner)

    # -- running workflows -------------------------------------------------------------------

    def submit(self, workflow_id: str) -> None:
        """Run a workflow in this conductor (the caller just created it, owner None)."""
        if self._claim(workflow_id):
            self._start(workflow_id)

    def _start(self, workflow_id: str) -> None:
        with self._guard:
            if workflow_id in self._running:
                return
            self._running.add(workflow_id)
        self._pool.submit(self._run_guarded, workflow_id)

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
        except Exception:
            LOG.exception("workflow %s: conductor error", workflow_id)
        finally:
            with self._guard:
                self._running.discard(workflow_id)

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
        engine = self._engine(wf)
        try:
            engine.run()
        except Exception as exc:
            self._finish_failed(workflow_id, exc)
        else:
            LOG.info("workflow %s finished", workflow_id)

    def _finish_failed(self, workflow_id: str, exc: Exception) -> None:
        """taskflow reverted the flow; record how it ended."""
        reason = str(exc).splitlines()[0][:1000] if str(exc) else type(exc).__name__

        def finish(session) -> None:
            wf = session.get(Workflow, workflow_id)
            if wf is None or WorkflowState(parse(wf.state)[0]) in TERMINAL:
                return
            if wf.state != WorkflowState.FAILED:
                transition(session, workflow_id, wf.state, WorkflowState.FAILED, detail=reason,
                           values={"failure_reason": reason})
            end = WorkflowState.CANCELLED if wf.cancel_requested else WorkflowState.REVERTED
            transition(session, workflow_id, WorkflowState.FAILED, end, detail="reverted: cleaned up")
        self.db.run_sync(finish)
        LOG.warning("workflow %s reverted: %s", workflow_id, reason)

    # -- recovery ----------------------------------------------------------------------------

    def adopt_orphans(self) -> list[str]:
        """Claim and resume every unfinished workflow whose owner is dead (or this conductor,
        restarted). Returns the ids taken."""
        live_terminal = [s.value for s in TERMINAL]

        def unfinished(session) -> list[tuple[str, str | None]]:
            rows = session.execute(select(Workflow.id, Workflow.owner).where(Workflow.state.not_in(live_terminal)))
            return [(r[0], r[1]) for r in rows]
        taken = []
        for workflow_id, owner in self.db.run_sync(unfinished):
            with self._guard:
                if workflow_id in self._running:
                    continue
            if owner == self.id or not self.liveness.is_alive(owner):
                if self._claim(workflow_id):
                    taken.append(workflow_id)
                    self._start(workflow_id)
        return taken

    def sweep_leftovers(self) -> list[str]:
        """Release what a finished workflow still holds on this host — a snapshot workdir with its
        backup job or qemu-nbd export — when its flow ended without doing so (e.g. a revert that
        itself failed). Returns the workflow ids cleaned."""
        from freezeframe.compute.model import Instance
        from freezeframe.conductor import runtime

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

    def _scan_loop(self) -> None:
        while not self._stopping.is_set():
            for scan in (self.adopt_orphans, self.sweep_leftovers):
                try:
                    scan()
                except Exception:
                    LOG.exception("conductor scan failed")
            self._stopping.wait(self._scan_interval)


def new_workflow_id() -> str:
    return str(uuid.uuid4())
