"""A workflow's state on its image, for every kind that fills an image (seed 000 §2a).

The snapshot workflows of compute (a server's createImage / createBackup / snapshot) and of the
bare-metal service (a node's snapshot) both show their state, progress and last state change on
the image they fill, in the reserved read-only properties only the workflows may write
(``os_freezeframe_workflow_*``; the image API's ``freezeframe:image:workflow_properties``
rule). This is the one way they do it: it needs only the conductor's runtime (the image API
acting for the workflow's user, with the service credential) and the workflow's own record,
so neither service imports the other.
"""

from __future__ import annotations

import json
import logging

from freezeframe.common.context import Actor
from freezeframe.common.timeutil import isotime, utcnow
from freezeframe.conductor import runtime
from freezeframe.conductor.model import Workflow
from freezeframe.images.client import GlanceError

LOG = logging.getLogger(__name__)


def actor_of(wf: Workflow) -> Actor:
    """Whom the workflow acts for: the user who asked for it, with the roles they had (recorded
    with the workflow's params by ``Workflows.submit``; older flows act as a member of the
    workflow's project)."""
    recorded = json.loads(wf.params or "{}").get("actor")
    if recorded:
        return Actor.from_json(recorded)
    return Actor(wf.user_id or "unknown", wf.project_id, frozenset({"member", "reader"}))


def images_for(wf: Workflow):
    """The image API as the workflow's user, with the service credential beside it."""
    return runtime.current().image_client(actor_of(wf))


def publish(workflow_id: str, ahead: tuple[str, int] | None = None, *, client=None) -> None:
    """Show the workflow's state, progress, last state change, owner and id on its image. Call
    it after each committed move (outside the fenced transaction). ``ahead``: publish this
    (state, progress) before it is committed — for the terminal move, after which no resumed
    flow would publish again. Visibility only: a failure to write is logged, never raised; a
    workflow without an image publishes nothing. ``client``: how to reach the image API as an
    actor (default: the runtime's)."""
    rt = runtime.current()
    wf = rt.db.run_sync(lambda s: s.get(Workflow, workflow_id))
    if wf is None or not wf.image_id:
        return
    if ahead is None:
        rt.crash_point(wf.state)
    state, progress, changed = (*ahead, utcnow()) if ahead else (wf.state, wf.progress, wf.last_state_change_at)
    try:
        with (client(actor_of(wf)) if client is not None else images_for(wf)) as images:
            images.set_properties(wf.image_id, {
                "os_freezeframe_workflow_id": wf.id,
                "os_freezeframe_workflow_state": state,
                "os_freezeframe_workflow_progress": str(progress),
                "os_freezeframe_workflow_last_state_change_at": isotime(changed),
                "os_freezeframe_workflow_owner": wf.owner or "",
            })
    except GlanceError as exc:  # visibility only: never fail the workflow for it
        LOG.warning("workflow %s: could not publish its state on image %s: %s", workflow_id, wf.image_id, exc)
