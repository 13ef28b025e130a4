"""What every bare-metal workflow's steps share: the workflow they run (its node, params and
user), the manager, interruption and cancel points, the workflow's moves, the failure record,
and the node's reservation while a step acts on it.

A step reads the node afresh each time it runs (a resumed or woken flow sees what happened
meanwhile: a heartbeat, an abort the API made) and writes through ``runtime.fenced`` (a
conductor that lost the workflow commits nothing).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any, Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from freezeframe.common import errors
from freezeframe.common.context import Actor
from freezeframe.conductor import runtime
from freezeframe.conductor.model import Workflow
from freezeframe.conductor.states import WorkflowState as W, parse, transition

SERVICE = "baremetal"


class Cancelled(Exception):
    """The user cancelled the workflow (DELETE /v1/workflows/{id})."""


class StepFailed(errors.FreezeframeError):
    """A step cannot go on; its message is the reason recorded on the workflow and as the
    node's last_error."""


class NodeLeft(StepFailed):
    """The node is no longer in the state this workflow works in (an abort or deleted through
    the API moved it): the workflow ends without moving the node again."""


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    node_id: str
    params: dict[str, Any]
    actor: Actor

    @property
    def image_id(self) -> str | None:
        return self.params.get("image_id")


def manager():
    """The bare-metal manager (``baremetal/manager.py``), in process."""
    return runtime.current().service(SERVICE)


def holder() -> str:
    """The name a reservation is held under: this conductor's."""
    leases = runtime.current().leases
    return leases.owner if leases is not None else "conductor"


def load(workflow_id: str) -> Job:
    wf = runtime.current().db.run_sync(lambda s: s.get(Workflow, workflow_id))
    if wf is None:
        raise StepFailed(f"workflow {workflow_id} is gone")
    params = json.loads(wf.params or "{}")
    recorded = params.get("actor")
    actor = (Actor.from_json(recorded) if recorded else
             Actor(wf.user_id or "unknown", wf.project_id, frozenset({"member", "reader"})))
    return Job(wf.id, wf.kind, wf.resource_id, params, actor)


def checkpoint(workflow_id: str) -> None:
    """An interruption point (a stopping conductor pauses here, nothing reverted) and a cancel
    point (a cancelled workflow fails here and reverts)."""
    rt = runtime.current()
    rt.check_stop()
    if rt.db.run_sync(lambda s: s.get(Workflow, workflow_id).cancel_requested):
        raise Cancelled(f"workflow {workflow_id} was cancelled")


def state(session: Session, workflow_id: str) -> str:
    return session.scalar(select(Workflow.state).where(Workflow.id == workflow_id))


def move(session: Session, workflow_id: str, to: str, detail: str = "", *, progress: int | None = None) -> None:
    """The workflow to ``to`` (a same-state move records news; without news it is no move)."""
    current = state(session, workflow_id)
    if current == to and not detail:
        return
    if current == W.WAITING and to == W.COMPLETE:
        transition(session, workflow_id, current, W.RUNNING, detail="going on")
        current = W.RUNNING
    transition(session, workflow_id, current, to, detail=detail, progress=progress)
    tell_compute(session, workflow_id, str(to), detail)


def compute_hooks() -> Any:
    """Compute's hooks in this process (``runtime.local["compute"]``), or None: a node that is a
    server's (adopted, Nova's Ironic driver in spirit) keeps that server in step — without this
    package importing compute."""
    return runtime.current().local.get("compute")


def tell_compute(session: Session, workflow_id: str, to: str, detail: str = "") -> None:
    """A node snapshot's move, told to compute in the same transaction: the server's task_state
    and instance action follow it as a VM snapshot's do (when compute asked for the snapshot)."""
    compute = compute_hooks()
    if compute is None or not hasattr(compute, "node_snapshot_moved"):
        return
    wf = session.get(Workflow, workflow_id)
    if wf is not None and wf.kind == "baremetal-snapshot":
        compute.node_snapshot_moved(session, wf.resource_id, workflow_id, to, detail=detail)
        if hasattr(compute, "node_power"):
            from freezeframe.baremetal.model import Node
            node = session.get(Node, wf.resource_id)
            if node is not None:
                compute.node_power(session, node.id, node.power_state)


def give_back_image(job: Job, node: Any) -> None:
    """A snapshot given up (abort, deleted): the pre-created image it was filling is queued
    again, as it was given — the partial upload it kept for a retry (its upload id is the
    transfer's) is discarded. Best effort: the images reaper ends an upload nobody resumes."""
    from freezeframe.images.client import GlanceError
    mgr = manager()
    image_id = node.snapshot_image_id
    if not image_id:
        return
    uploads = runtime.current().db.run_sync(lambda s: [t.id for t in mgr.live_transfers(s, node.id)])
    try:
        with (mgr.images_for or runtime.current().image_client)(job.actor) as images:
            if images.show(image_id).status != "saving":
                return
            for upload_id in uploads:
                try:
                    images.discard_upload(image_id, upload_id)
                    return
                except GlanceError as exc:
                    if exc.status != 404:
                        raise
    except (GlanceError, errors.FreezeframeError) as exc:
        import logging
        logging.getLogger(__name__).warning("workflow %s: image %s could not be queued again: %s", job.id,
                                            image_id, exc)


def record_failure(workflow_id: str, kwargs: dict[str, Any]) -> str:
    """The first revert to run marks the workflow FAILED with the reason; every revert gets the
    reason back (a revert retried later finds it on the workflow)."""
    failures = kwargs.get("flow_failures") or {}
    reason = "; ".join(f.exception_str for f in failures.values() if f is not None) or "the workflow failed"

    def fail(session: Session) -> str:
        wf = session.get(Workflow, workflow_id, populate_existing=True)
        if parse(wf.state)[0] not in (W.FAILED, W.REVERTED, W.CANCELLED):
            cancelled = any(f is not None and f.check(Cancelled) for f in failures.values())
            recorded = "cancelled by the user" if cancelled else reason[:2000]
            transition(session, workflow_id, wf.state, W.FAILED, detail=reason, values={"failure_reason": recorded})
            tell_compute(session, workflow_id, str(W.FAILED), recorded)
            return recorded
        from freezeframe.conductor.engine import without_incomplete_revert
        recorded = session.scalar(select(Workflow.failure_reason).where(Workflow.id == workflow_id))
        return without_incomplete_revert(recorded) or reason
    return runtime.current().fenced(workflow_id, fail)


def failed_with(kwargs: dict[str, Any], *types: type[BaseException]) -> bool:
    failures = kwargs.get("flow_failures") or {}
    return any(f is not None and f.check(*types) for f in failures.values())


def cancel_requested(workflow_id: str) -> bool:
    return bool(runtime.current().db.run_sync(lambda s: s.get(Workflow, workflow_id).cancel_requested))


@contextlib.contextmanager
def reserved(workflow_id: str, node_id: str) -> Iterator[None]:
    """The node held by this conductor while the block acts on it (released after, whatever
    happens; a kill -9 leaves it to the reconcile hook)."""
    rt, mgr, me = runtime.current(), manager(), holder()
    rt.fenced(workflow_id, lambda s: mgr.acquire(s, node_id, me))
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            rt.db.run_sync(lambda s: mgr.release(s, node_id, me))
