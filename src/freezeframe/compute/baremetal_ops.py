"""Bare-metal servers: a node of the bare-metal service as a server of the compute API (Nova's
Ironic driver in spirit, without its deploy: Freezeframe deploys nothing).

- **Adopt**: ``POST /os-freezeframe-adopt {"adopt": {"node": <uuid or name>, "name"?}}`` (admin, or
  a service acting for a user) makes a server record of an ``active`` node — vm_state active,
  power from the node, no host and no domain, flavor ``baremetal``, ``node`` set (shown to
  admins as ``OS-EXT-SRV-ATTR:hypervisor_hostname``) — and sets the node's ``instance_uuid``
  to the server's id through the bare-metal API. The bare-metal service's own adopt workflow
  does the same in process, in the transaction that makes the node active (``node_adopted``).
- **createImage** (and the instance-level ``snapshot`` of the root) on such a server: the same
  checks and the same queued image (same ``os_freezeframe_workflow_*`` properties, Nova's
  ``instance_uuid``...) as a VM's, then the bare-metal API is asked to snapshot the node into it
  (``PUT /v1/nodes/{node}/states/provision {"target": "snapshot", "image_ref"}``); its
  workflow is the server's action's. The server's task_state walks as a VM snapshot's, moved
  by the bare-metal workflow through ``node_snapshot_moved`` (in process, in its fenced
  transaction) — and, whatever that workflow does, cleared by compute's reconcile hook once no
  unfinished workflow of the node is left (``compute/reconcile.py``).
- **Delete**: the server record goes and the node's ``instance_uuid`` is cleared; the node
  stays active (Nova's Ironic driver would undeploy it; there is no deploy here).

The bare-metal API is reached acting for the caller with the service credential beside
(``baremetal_for``: ``assembly.service_baremetal_client``), as compute reaches the volume API.
The bare-metal package never imports compute, nor compute the bare-metal package.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Callable, Mapping
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.orm import Session

from freezeframe.common import errors, remote
from freezeframe.common.context import Actor, RequestContext
from freezeframe.common.httpclient import ServiceClient
from freezeframe.common.policy import Policy
from freezeframe.common.pools import BoundedPool
from freezeframe.common.remote import RemoteError
from freezeframe.common.strict import shown
from freezeframe.common.timeutil import utcnow
from freezeframe.compute.model import Instance, InstanceAction
from freezeframe.compute.snapshot_hooks import SnapshotHooks
from freezeframe.compute.checks import check_name
from freezeframe.compute.states import SNAPSHOTTABLE, TaskState, VmState, set_task_state, set_vm_state
from freezeframe.conductor.service import Workflows
from freezeframe.db.session import Database
from freezeframe.images.client import GlanceError

LOG = logging.getLogger(__name__)

# The bare-metal API version compute speaks: the one that adds the snapshot verb.
API_VERSION = "1.116"
FLAVOR = "baremetal"
SNAPSHOT_FROM = ("active", "snapshot failed")     # a failed node snapshot may be retriggered
_POWER = {"power on": "running", "power off": "shutdown"}
_ACTIONS = {"createImage": "os_compute_api:servers:create_image", "snapshot": "freezeframe:compute:snapshot",
            "createBackup": "os_compute_api:os-create-backup"}


class BaremetalError(RemoteError):
    """A request to the bare-metal service failed. ``status`` is None when no HTTP response came."""


class Unreachable(BaremetalError, remote.Unreachable):
    """No connection to the bare-metal service could be made."""


class BaremetalClient(ServiceClient):
    """The Ironic v1 calls compute makes, at one bare-metal API root (``.../baremetal``)."""

    service = "baremetal"
    error = BaremetalError
    unreachable = Unreachable

    def __init__(self, url: str, token: str | None = None, *, extra_headers: Mapping[str, str] | None = None,
                 **kw: Any) -> None:
        super().__init__(url, token, extra_headers={"X-OpenStack-Ironic-API-Version": API_VERSION,
                                                    **(extra_headers or {})}, **kw)

    @staticmethod
    def _node_path(ident: str) -> str:
        if not isinstance(ident, str) or not ident or len(ident) > 255:
            raise ValueError(f"invalid node {ident!r}")
        return f"/v1/nodes/{quote(ident, safe='')}"

    def node(self, ident: str) -> dict[str, Any]:
        doc = self._json("GET", self._node_path(ident))
        if not isinstance(doc, dict) or not isinstance(doc.get("uuid"), str):
            raise BaremetalError(f"the bare-metal service sent something that is not a node: {str(doc)[:200]}")
        return doc

    def set_instance_uuid(self, node_id: str, instance_uuid: str | None) -> None:
        """Associate the node with a server (Nova's instance_uuid), or clear it (None)."""
        patch = ([{"op": "replace", "path": "/instance_uuid", "value": instance_uuid}] if instance_uuid
                 else [{"op": "remove", "path": "/instance_uuid"}])
        self._call("PATCH", self._node_path(node_id), json=patch)

    def set_power(self, node_id: str, target: str) -> None:
        """``power on`` / ``power off`` (Ironic answers 202; the node's power_state follows)."""
        self._call("PUT", self._node_path(node_id) + "/states/power", json={"target": target})

    def snapshot(self, node_id: str, image_id: str) -> None:
        """Seed 004's verb: snapshot the node's root disk into the pre-created image."""
        self._call("PUT", self._node_path(node_id) + "/states/provision",
                   json={"target": "snapshot", "image_ref": image_id})


BaremetalFor = Callable[[Actor], BaremetalClient]


def power_state_of(node: Mapping[str, Any]) -> str:
    """The server's power_state (Nova's words) from the node's (Ironic's)."""
    return _POWER.get(node.get("power_state") or "", "nostate")


def _int(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def new_node_server(node_id: str, *, name: str, project_id: str | None, user_id: str | None,
                    power_state: str | None, properties: Mapping[str, Any] | None = None) -> Instance:
    """The server record of an active node: vm_state active, power from the node (Ironic's
    words), no host and no domain, flavor ``baremetal`` sized from the node's properties."""
    server_id = str(uuid.uuid4())
    props = properties or {}
    return Instance(id=server_id, name=name, project_id=project_id, user_id=user_id, vm_state=VmState.ACTIVE,
                    task_state=None, power_state=_POWER.get(power_state or "", "nostate"), flavor_id=FLAVOR,
                    vcpus=_int(props.get("cpus")), memory_mb=_int(props.get("memory_mb")),
                    root_gb=_int(props.get("local_gb")), image_ref=None, domain_name=f"instance-{server_id}",
                    host=None, root_disk=None, root_target="vda", adopted=True, guest_agent=False, node=node_id,
                    metadata_json="{}", system_metadata="{}")


def node_server(session: Session, node_id: str) -> Instance | None:
    """The live server of a node, if any."""
    return session.scalars(select(Instance).where(Instance.node == node_id, Instance.vm_state != VmState.DELETED)
                           .order_by(Instance.created_at.desc())).first()


def _message(exc: RemoteError) -> str:
    return exc.message if exc.status else str(exc)


def no_service(exc: Exception | None = None) -> errors.Conflict:
    return errors.Conflict("no bare-metal service" + (f": {exc}" if exc is not None else
                                                       " is configured (baremetal.enabled or endpoints.baremetal)"))


class BaremetalOps:
    """What the compute API does with bare-metal servers (``ComputeService`` delegates to it
    for every server with a ``node``)."""

    def __init__(self, db: Database, baremetal_for: BaremetalFor | None, workflows: Workflows, *, policy: Policy,
                 pool: BoundedPool, get_server: Callable[..., Instance],
                 create_image_record: Callable[[Actor, dict[str, Any]], str],
                 delete_image: Callable[[Actor, str], None], images_for: Callable[[Actor], Any]) -> None:
        self.db = db
        self.baremetal_for = baremetal_for
        self.workflows = workflows
        self.policy = policy
        self.pool = pool
        self.get_server = get_server            # ComputeService._get: 404 / 403 as for any server
        self.create_image_record = create_image_record
        self.delete_image = delete_image
        self.images_for = images_for

    def client(self, actor: Actor) -> BaremetalClient:
        if self.baremetal_for is None:
            raise no_service()
        return self.baremetal_for(actor)

    def _get_node(self, actor: Actor, ident: str) -> dict[str, Any]:
        """The node (blocking): 404 when there is none, 409 when the service is away."""
        try:
            with self.client(actor) as bm:
                return bm.node(ident)
        except Unreachable as exc:
            raise no_service(exc) from None
        except BaremetalError as exc:
            raise self._mapped(exc, not_found=f"Node {ident} could not be found.") from None

    @staticmethod
    def _mapped(exc: BaremetalError, *, not_found: str | None = None) -> errors.FreezeframeError:
        """A failed bare-metal call as the compute API answers it."""
        if exc.status == 404 and not_found:
            return errors.NotFound(not_found)
        if exc.status in (401, 403):
            return errors.Forbidden(f"The bare-metal service refused: {_message(exc)}")
        if exc.status is not None and exc.status < 500:
            return errors.Conflict(f"The bare-metal service refused: {_message(exc)}")
        return errors.BackendUnavailable(f"The bare-metal service failed: {exc}")

    # -- adopt ---------------------------------------------------------------------------------

    async def adopt(self, ctx: RequestContext, adopt: dict[str, Any]) -> Instance:
        """A server record for an active node (admin, or a service acting for a user)."""
        if not (self.policy.check(ctx, "freezeframe:compute:adopt") or self.policy.check(ctx, "service_api")):
            raise errors.Forbidden("Policy doesn't allow freezeframe:compute:adopt to be performed.")
        unknown = set(adopt) - {"node", "name"}
        if unknown:
            raise errors.Invalid(f"Invalid input for adopt: unknown field(s) {', '.join(sorted(unknown))} (a node "
                                 "takes \"node\" and \"name\")")
        ident = adopt.get("node")
        if not isinstance(ident, str) or not 1 <= len(ident) <= 255 or not ident.isprintable():
            raise errors.Invalid(f"Invalid input for field/attribute node: a node's uuid or name is required, "
                                 f"not {shown(ident)}")
        name = check_name(adopt["name"]) if adopt.get("name") is not None else None
        actor = ctx.actor
        node = await self.pool.run(self._get_node, actor, ident)
        node_id, state = node["uuid"], node.get("provision_state")
        if state != "active":
            raise errors.Conflict(f"Node {node_id} is in provision state {state!r}: only an active node can "
                                  "become a server")
        name = name or check_name(node.get("name") or node_id)

        def add(session: Session) -> tuple[Instance, bool]:
            existing = node_server(session, node_id)
            if existing is not None:
                # (the adopt workflow made it already, or an earlier call): the same server, for
                # whom may see it
                if node.get("instance_uuid") not in (None, existing.id) or not (
                        ctx.is_admin or existing.project_id == ctx.project_id):
                    raise errors.Conflict(f"Node {node_id} is already associated with instance "
                                          f"{node.get('instance_uuid') or existing.id}")
                return existing, False
            if node.get("instance_uuid"):
                raise errors.Conflict(f"Node {node_id} is already associated with instance {node['instance_uuid']}")
            inst = new_node_server(node_id, name=name, project_id=ctx.project_id, user_id=ctx.user_id,
                                   power_state=node.get("power_state"), properties=node.get("properties") or {})
            session.add(inst)
            return inst, True
        inst, made = await self.db.run(add)
        if node.get("instance_uuid") == inst.id:
            return inst                       # already both ways (the adopt workflow did it)
        try:
            await self.pool.run(self._associate, actor, node_id, inst.id)
        except BaseException:
            if made:        # nothing half-done: the server record goes again
                await self.db.run(lambda s: s.delete(s.get(Instance, inst.id)))
            raise
        LOG.info("node %s adopted as server %s", node_id, inst.id)
        return inst

    def _associate(self, actor: Actor, node_id: str, server_id: str | None) -> None:
        try:
            with self.client(actor) as bm:
                bm.set_instance_uuid(node_id, server_id)
        except Unreachable as exc:
            raise no_service(exc) from None
        except BaremetalError as exc:
            raise self._mapped(exc, not_found=f"Node {node_id} could not be found.") from None

    # -- delete --------------------------------------------------------------------------------

    async def delete(self, ctx: RequestContext, server_id: str) -> None:
        """The server record goes, the node's instance_uuid is cleared; the node stays active."""
        def begin(session: Session) -> Instance:
            inst = self.get_server(session, ctx, server_id, "os_compute_api:servers:delete")
            if inst.task_state not in (None, TaskState.DELETING):
                raise errors.Conflict(f"Cannot 'delete' instance {server_id} while it is in task_state "
                                      f"{inst.task_state}")
            if inst.task_state is None:
                set_task_state(session, server_id, None, TaskState.DELETING, reason="delete")
            return inst
        inst = await self.db.run(begin)
        try:
            if self.baremetal_for is not None:
                await self.pool.run(self._release, ctx.actor, inst.node, server_id, wait=30)
            else:
                LOG.warning("server %s: no bare-metal service; node %s keeps its instance_uuid", server_id, inst.node)
        except BaseException:
            await self.db.run(lambda s: set_task_state(s, server_id, TaskState.DELETING, None,
                                                       reason="delete not done"))
            raise
        await self.db.run(lambda s: set_task_state(s, server_id, TaskState.DELETING, None, reason="deleted",
                                                   vm_state=VmState.DELETED))

    def _release(self, actor: Actor, node_id: str, server_id: str) -> None:
        """Clear the node's instance_uuid if it is still this server's (a node gone is fine)."""
        try:
            with self.client(actor) as bm:
                try:
                    node = bm.node(node_id)
                except BaremetalError as exc:
                    if exc.status == 404:
                        return
                    raise
                if node.get("instance_uuid") == server_id:
                    bm.set_instance_uuid(node_id, None)
        except Unreachable as exc:
            raise no_service(exc) from None
        except BaremetalError as exc:
            raise self._mapped(exc) from None

    # -- os-start / os-stop ----------------------------------------------------------------------

    async def power(self, ctx: RequestContext, server_id: str, on: bool, *, timeout: float = 60.0) -> None:
        """Power the node on or off through the bare-metal API and wait (bounded) until it says
        so; vm_state follows (active / stopped), as a VM's start and stop."""
        task_state = TaskState.POWERING_ON if on else TaskState.POWERING_OFF
        wanted_from = VmState.STOPPED if on else VmState.ACTIVE
        target = "power on" if on else "power off"

        def begin(session: Session) -> Instance:
            inst = self.get_server(session, ctx, server_id, "os_compute_api:servers:start" if on else
                                   "os_compute_api:servers:stop")
            if inst.vm_state != wanted_from:
                raise errors.Conflict(f"Cannot '{'start' if on else 'stop'}' instance {server_id} while it is in "
                                      f"vm_state {inst.vm_state}")
            set_task_state(session, server_id, None, task_state, reason="power")
            return inst
        inst = await self.db.run(begin)
        vm_state: VmState | None = None
        values: dict[str, Any] = {}
        try:
            await self.pool.run(self._power, ctx.actor, inst.node, target, timeout, wait=timeout + 30)
            vm_state, values = (VmState.ACTIVE if on else VmState.STOPPED), {"power_state": _POWER[target]}
        except errors.Conflict:
            await self.db.run(lambda s: set_task_state(s, server_id, task_state, None, reason="power refused"))
            raise
        except Exception as exc:
            values = {"fault": str(exc)[:1000]}
            LOG.warning("server %s: power %s of node %s failed: %s", server_id, target, inst.node, exc)
        await self.db.run(lambda s: set_task_state(s, server_id, task_state, None, reason="power done",
                                                   vm_state=vm_state, vm_from=wanted_from, values=values))

    def _power(self, actor: Actor, node_id: str, target: str, timeout: float) -> None:
        import time
        try:
            with self.client(actor) as bm:
                bm.set_power(node_id, target)
                deadline = time.monotonic() + timeout
                while bm.node(node_id).get("power_state") != target:
                    if time.monotonic() > deadline:
                        raise errors.BackendUnavailable(f"node {node_id} did not reach {target!r} within {timeout:g}s")
                    time.sleep(0.2)
        except Unreachable as exc:
            raise no_service(exc) from None
        except BaremetalError as exc:
            raise self._mapped(exc) from None

    # -- createImage -----------------------------------------------------------------------------

    async def create_image(self, ctx: RequestContext, server_id: str, *, kind: str, devices: Any, name: str,
                           metadata: dict[str, str], initial_state: str) -> tuple[str, str]:
        """The top half of a bare-metal server's snapshot: checked as a VM's, the image made
        (queued), the node asked to snapshot into it. Returns (image_id, workflow_id)."""
        from freezeframe.compute.devices import parse_devices

        verb = "createBackup" if kind == "backup" else ("createImage" if devices == "root" else "snapshot")
        inst = await self.db.run(lambda s: self.get_server(s, ctx, server_id, _ACTIONS[verb]))
        if kind == "backup":
            raise errors.Conflict(f"Cannot 'createBackup' instance {server_id}: it is a bare-metal server (node "
                                  f"{inst.node}); use createImage")
        if devices != "root":
            wanted = parse_devices(devices)
            if wanted is not None and wanted != [inst.root_target]:
                others = ", ".join(d for d in wanted if d != inst.root_target)
                raise errors.Invalid(f"Server {server_id} is a bare-metal server: it has one device, its root disk "
                                     f"({inst.root_target}), and no {others}")
        if inst.vm_state not in SNAPSHOTTABLE or inst.task_state is not None:
            raise errors.Conflict(f"Cannot '{verb}' instance {server_id} while it is in vm_state {inst.vm_state}"
                                  + (f" and task_state {inst.task_state}" if inst.task_state else ""))
        actor = ctx.actor
        node = await self.pool.run(self._get_node, actor, inst.node)
        state = node.get("provision_state")
        if state not in SNAPSHOT_FROM:
            raise errors.Conflict(f"Cannot '{verb}' instance {server_id}: its node {inst.node} is in provision state "
                                  f"{state!r}, not active")
        task_to = TaskState.IMAGE_SNAPSHOT_PENDING
        await self.db.run(lambda s: set_task_state(s, server_id, None, task_to, reason=f"{verb} requested"))
        attrs: dict[str, Any] = {
            **metadata,
            "name": name, "container_format": "bare", "disk_format": "qcow2", "visibility": "private",
            "instance_uuid": server_id, "user_id": ctx.user_id or "", "image_type": "snapshot",
            "base_image_ref": inst.image_ref or "",
            "os_freezeframe_workflow_state": initial_state,
            "os_freezeframe_workflow_progress": "0",
            "os_freezeframe_workflow_last_state_change_at": utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        image_id, action_id = None, None
        try:
            image_id = await self.pool.run(self.create_image_record, actor, attrs)

            def record_action(session: Session) -> int:
                # Before the node is asked: its workflow names itself on this action as it starts
                # (``node_snapshot_moved``), however soon that is.
                action = InstanceAction(instance_uuid=server_id, action=verb, request_id=ctx.request_id,
                                        project_id=ctx.project_id, user_id=ctx.user_id)
                session.add(action)
                session.flush()
                return action.id
            action_id = await self.db.run(record_action)
            await self.pool.run(self._snapshot, actor, inst.node, image_id, wait=30)
        except BaseException:
            # Nothing half-done: the image (if made) and the action go, the server is free again.
            if image_id is not None:
                await self.pool.run(self.delete_image, actor, image_id, wait=30)
            if action_id is not None:
                await self.db.run(lambda s: s.delete(s.get(InstanceAction, action_id)))
            await self.db.run(lambda s: set_task_state(s, server_id, task_to, None, reason=f"{verb} not accepted"))
            raise
        workflow_id = await self.pool.run(self._workflow_of, actor, inst.node, action_id, image_id)
        LOG.info("server %s: snapshot of node %s into image %s accepted as workflow %s", server_id, inst.node,
                 image_id, workflow_id)
        return image_id, workflow_id or ""

    def _snapshot(self, actor: Actor, node_id: str, image_id: str) -> None:
        try:
            with self.client(actor) as bm:
                bm.snapshot(node_id, image_id)
        except Unreachable as exc:
            raise no_service(exc) from None
        except BaremetalError as exc:
            raise self._mapped(exc, not_found=None) from None

    def _workflow_of(self, actor: Actor, node_id: str, action_id: int, image_id: str) -> str | None:
        """The node snapshot's workflow, recorded on the server's action and the image: as the
        workflow named itself on the action (``node_snapshot_moved``), else as the node says
        (``snapshot_workflow_id``, when the bare-metal API shows it), else the node's unfinished
        workflow, else (it ended already) as it published itself on the image."""
        action = self.db.run_sync(lambda s: s.get(InstanceAction, action_id))
        workflow_id = action.workflow_id if action is not None else None
        if workflow_id is None:
            try:
                with self.client(actor) as bm:
                    workflow_id = bm.node(node_id).get("snapshot_workflow_id")
            except (BaremetalError, errors.FreezeframeError) as exc:
                LOG.warning("node %s: could not read its snapshot workflow: %s", node_id, exc)
        workflow_id = workflow_id or self.workflows.unfinished(node_id, failed=False)
        if workflow_id is None:     # ended already: it published its id on the image
            try:
                with self.images_for(actor) as images:
                    workflow_id = images.show(image_id).properties.get("os_freezeframe_workflow_id")
            except GlanceError as exc:
                LOG.warning("image %s: could not read its workflow: %s", image_id, exc)
        if workflow_id is None:
            LOG.warning("node %s: its snapshot's workflow could not be found", node_id)
            return None

        def stamp(session: Session) -> None:
            row = session.get(InstanceAction, action_id)
            if row is not None and row.workflow_id is None:
                row.workflow_id = workflow_id
        self.db.run_sync(stamp)
        try:        # (the workflow publishes it too, with its state: this is only sooner)
            with self.images_for(actor) as images:
                images.set_properties(image_id, {"os_freezeframe_workflow_id": workflow_id})
        except GlanceError as exc:
            LOG.warning("image %s: could not record its workflow %s: %s", image_id, workflow_id, exc)
        return workflow_id


# -- what the bare-metal workflows call, in process (``runtime.current().local["compute"]``) ----------

# Where a snapshot's workflow state takes the server's task_state (Nova's words), by rank.
_RANK = {TaskState.IMAGE_SNAPSHOT_PENDING: 0, TaskState.IMAGE_SNAPSHOT: 1, TaskState.IMAGE_PENDING_UPLOAD: 2,
         TaskState.IMAGE_UPLOADING: 3}
_STATE_RANK = {"PENDING": 0, "LOCAL_SNAPSHOT_STARTED": 1, "LOCAL_SNAPSHOT_COMPLETE": 2, "UPLOAD_BEGIN": 3,
               "UPLOAD_<n>_COMPLETE": 3, "UPLOAD_COMPLETE": 3, "IMAGE_ACTIVE": 4}
_ENDED_BADLY = ("FAILED", "REVERTED", "CANCELLED")


class NodeServerHooks(SnapshotHooks):
    """Compute's functions for the bare-metal workflows (``ComputeHooks`` is one), on the
    snapshot ones a VM snapshot's workflow calls. Each takes the workflow's session: the
    server changes commit with the workflow's own move, in its fenced transaction."""

    def node_adopted(self, session: Session, node_id: str, actor: Actor, *, name: str | None = None,
                     power_state: str | None = None, properties: Mapping[str, Any] | None = None,
                     instance_uuid: str | None = None) -> str | None:
        """The adopt workflow made the node active: its server record, owned by the workflow's
        user's project (the existing one if the node already has a live server). Returns the
        server's id — the workflow sets the node's ``instance_uuid`` to it in the same
        transaction — or None when the node is already associated with another instance
        (``instance_uuid``: the node's; nothing is made)."""
        existing = node_server(session, node_id)
        if existing is not None:
            return existing.id if instance_uuid in (None, existing.id) else None
        if instance_uuid is not None:
            return None
        inst = new_node_server(node_id, name=(name or node_id)[:255], project_id=actor.project_id,
                               user_id=actor.user_id, power_state=power_state, properties=properties)
        session.add(inst)
        session.flush()
        LOG.info("node %s adopted: server %s", node_id, inst.id)
        return inst.id

    def node_released(self, session: Session, node_id: str, *, reason: str = "its node was torn down") -> str | None:
        """The node no longer serves its server (torn down, deleted): the server record goes.
        Returns the server's id, if it had one."""
        inst = node_server(session, node_id)
        if inst is None:
            return None
        if inst.task_state is not None:
            set_task_state(session, inst.id, TaskState(inst.task_state), None, reason=reason)
        set_vm_state(session, inst.id, VmState.DELETED, frm=VmState(inst.vm_state), reason=reason)
        return inst.id

    def node_power(self, session: Session, node_id: str, power_state: str | None) -> str | None:
        """The node's power state (Ironic's words) as its server's (Nova's): a node snapshot
        reboots the node twice, and the server shows where it ended. Returns the server's id."""
        inst = node_server(session, node_id)
        if inst is None or power_state not in _POWER:
            return None
        if inst.power_state != _POWER[power_state]:
            inst.power_state = _POWER[power_state]
            inst.updated_at = utcnow()
        return inst.id

    def node_snapshot_moved(self, session: Session, node_id: str, workflow_id: str, state: str, *,
                            detail: str | None = None) -> str | None:
        """A node snapshot's workflow moved to ``state``: when compute asked for it (createImage
        on the node's server), the server's task_state and action events follow as a VM
        snapshot's — image_snapshot (LOCAL_SNAPSHOT_STARTED), image_pending_upload
        (LOCAL_SNAPSHOT_COMPLETE), image_uploading (UPLOAD_*), None (IMAGE_ACTIVE; FAILED,
        REVERTED, CANCELLED with the fault). Idempotent; states may be skipped. Returns the
        server's id, or None when the snapshot is not a server's."""
        inst = node_server(session, node_id)
        if inst is None:
            return None
        action = _claim_action(session, inst.id, workflow_id)
        if action is None:
            return None            # the bare-metal API's own snapshot: not the server's action
        kind = "UPLOAD_<n>_COMPLETE" if state.startswith("UPLOAD_") and state[7:-9].isdigit() else state
        if kind in _ENDED_BADLY:
            self.reverted(session, inst.id, workflow_id, detail or f"the node snapshot ended {state}")
            return inst.id
        target = _STATE_RANK.get(kind)
        current = _RANK.get(TaskState(inst.task_state)) if inst.task_state else None
        if target is None or current is None:
            return inst.id
        steps = ((1, lambda: self.started(session, inst.id, workflow_id, "snapshot")),
                 (2, lambda: self.point_in_time_taken(session, inst.id, workflow_id,
                                                      quiesced=False, frozen_seconds=0.0)),
                 (3, lambda: self.upload_started(session, inst.id, workflow_id)))
        for rank, step in steps:
            if current < rank <= target:
                step()
                session.expire(inst)        # (task_state moves by compare-and-set, not through the ORM)
        if kind in ("UPLOAD_COMPLETE", "IMAGE_ACTIVE"):
            self.upload_finished(session, workflow_id)
        if kind == "IMAGE_ACTIVE":
            self.finished(session, inst.id, workflow_id)
        return inst.id


def _claim_action(session: Session, server_id: str, workflow_id: str) -> InstanceAction | None:
    """The server's action of this workflow; a createImage/snapshot action still waiting for
    its workflow's id becomes this one's."""
    action = session.scalars(select(InstanceAction).where(InstanceAction.instance_uuid == server_id,
                                                          InstanceAction.workflow_id == workflow_id)).first()
    if action is None:
        action = session.scalars(select(InstanceAction).where(
            InstanceAction.instance_uuid == server_id, InstanceAction.workflow_id.is_(None),
            InstanceAction.action.in_(("createImage", "snapshot")), InstanceAction.finish_time.is_(None))
            .order_by(InstanceAction.start_time.desc())).first()
        if action is not None:
            action.workflow_id = workflow_id
    return action

