"""The bare-metal service: Ironic's API layer over the node and port tables.

What takes time (verifying, adopting, snapshotting, tearing down, aborting a failed snapshot) is
handed to the conductor as a workflow (H3's ``baremetal/workflows``), submitted in the very
transaction that moves the node (``states.provision``), so a node never shows a transitional
state without its workflow, nor a workflow without its state. What is quick is done here:
provide, manage from available, a power action (through the node's power interface, holding
the node's reservation), validation, maintenance, the agent's lookup and heartbeat.

A node whose ``reservation`` is set is held by a conductor (or by this API during a power
action): a change is a 409 "Node X is locked by host Y..." until it is released, as Ironic's
node lock is.
"""

from __future__ import annotations

import hmac
import json
import logging
import uuid
from typing import Any, Callable

from sqlalchemy import false, or_, select, update
from sqlalchemy.orm import Session

from freezeframe.baremetal import checks, queries, views
from freezeframe.baremetal.model import Node, Port, Transfer
from freezeframe.baremetal.states import LOOKUP_ALLOWED, VERBS, ProvisionState, provision, target_of
from freezeframe.common import errors
from freezeframe.common.context import RequestContext
from freezeframe.common.policy import Policy
from freezeframe.common.pools import BoundedPool
from freezeframe.common.strict import is_uuid, shown
from freezeframe.common.timeutil import utcnow
from freezeframe.db.session import Database

LOG = logging.getLogger(__name__)
P = ProvisionState
# Where a node may be changed in its driver or interfaces (Ironic's allowed_update_states), and
# deleted (Ironic's DELETE_ALLOWED_STATES); in maintenance, anywhere.
UPDATE_STATES = (P.ENROLL, P.MANAGEABLE, P.AVAILABLE)
DELETE_STATES = (P.MANAGEABLE, P.ENROLL, P.ADOPTFAIL, P.AVAILABLE)
# The first microversion of each verb (Ironic's MIN_VERB_VERSIONS; snapshot is Freezeframe's).
VERB_VERSIONS = {"manage": (1, 4), "provide": (1, 4), "abort": (1, 13), "adopt": (1, 17),
                 "snapshot": views.SNAPSHOT_VERSION}
POWER_TARGETS = ("power on", "power off", "rebooting")
# The kinds of work a verb hands to the conductor, by (state it leaves, verb); host-bound ones
# run where the transfer area is.
KINDS = {("enroll", "manage"): "baremetal-verify", ("manageable", "manage"): "baremetal-verify",
         ("manageable", "adopt"): "baremetal-adopt", ("adopt failed", "adopt"): "baremetal-adopt",
         ("active", "snapshot"): "baremetal-snapshot", ("snapshot failed", "snapshot"): "baremetal-snapshot",
         ("active", "deleted"): "baremetal-teardown", ("snapshot wait", "deleted"): "baremetal-teardown",
         ("snapshot failed", "deleted"): "baremetal-teardown", ("error", "deleted"): "baremetal-teardown",
         ("snapshot failed", "abort"): "baremetal-abort"}
HOST_BOUND = ("baremetal-snapshot", "baremetal-abort", "baremetal-teardown")
CREATE_KEYS = {"driver", "name", "description", "uuid", "driver_info", "properties", "instance_info", "extra",
               "resource_class", "owner", "lessee", "conductor_group", "instance_uuid", "power_interface",
               "boot_interface", "snapshot_interface", "chassis_uuid",
               *(f"{i}_interface" for i in views.OTHER_INTERFACES)}
NODE_FILTERS = ("provision_state", "maintenance", "driver", "associated", "instance_uuid", "resource_class",
                "owner", "lessee", "conductor_group", "chassis_uuid", "retired", "fault", "conductor",
                "description_contains", "project", "shard", "sharded", "include_children", "parent_node",
                "instance_name")
PORT_FILTERS = ("node_uuid", "node", "address", "portgroup", "shard", "description_contains", "conductor_groups")
PORT_KEYS = {"address", "node_uuid", "extra", "pxe_enabled", "uuid"}


def locked(node: Node) -> errors.Conflict:
    return errors.Conflict(f"Node {node.id} is locked by host {node.reservation}, please retry after the current "
                           "operation is completed.")


class BaremetalService:
    def __init__(self, db: Database, workflows: Any, *, policy: Policy, settings: Any, manager: Any,
                 interfaces: Any, host: str, conductor: str | None = None) -> None:
        self.db = db
        self.workflows = workflows
        self.policy = policy
        self.settings = settings            # BaremetalSettings
        self.manager = manager              # BaremetalManager: tokens, heartbeats, waking workflows
        self.interfaces = interfaces        # drivers.Interfaces
        self.host = host                    # what this API writes in a reservation it takes
        self.conductor = conductor or settings.transfer_host
        self.pool = BoundedPool("baremetal", workers=4, queue=16)

    # -- nodes -----------------------------------------------------------------------------------

    def _authorize(self, ctx: RequestContext, action: str) -> None:
        self.policy.authorize(ctx, f"baremetal:{action}", {"project_id": ctx.project_id})

    @staticmethod
    def find(session: Session, ident: str) -> Node:
        """A node by uuid or name; 404 "Node X could not be found." otherwise."""
        node = None
        if isinstance(ident, str) and len(ident) <= 255:
            node = session.get(Node, ident.lower()) if is_uuid(ident) else \
                session.scalar(select(Node).where(Node.name == ident))
        if node is None:
            raise errors.NotFound(f"Node {ident} could not be found.")
        return node

    def _versioned_keys(self, body: dict[str, Any], version) -> None:
        """A field the version does not have yet is a 406, as Ironic answers."""
        for key in body:
            if not views.allowed(key, version):
                raise errors.NotAcceptable(f"Field {key!r} is available from microversion "
                                           f"1.{views.VERSIONED[key]} on (this request is {version})")

    def _interfaces(self, driver: str, wanted: dict[str, Any]) -> dict[str, str]:
        names = {k: v for k, v in wanted.items() if k in ("power_interface", "boot_interface", "snapshot_interface")}
        for key, value in names.items():
            if value is not None and not isinstance(value, str):
                raise errors.Invalid(f"Invalid input for field/attribute {key}: {shown(value)} is not a string")
        return self.interfaces.check(driver, names)

    @staticmethod
    def _others(driver: str, wanted: dict[str, Any], current: dict[str, str] | None = None) -> dict[str, str]:
        """Ironic's other interfaces: only their (shown) default is accepted; none does anything."""
        defaults = views.OTHER_DEFAULTS.get(driver, views.OTHER_DEFAULTS["fake-hardware"])
        out = dict(current or {})
        for family in views.OTHER_INTERFACES:
            if f"{family}_interface" not in wanted:
                continue
            value = wanted[f"{family}_interface"]
            if value is None:
                out.pop(family, None)
            elif value != defaults[family]:
                raise errors.Invalid(f"Could not find the {family} interface {shown(value)}: hardware type "
                                     f"{driver!r} here has only {defaults[family]!r} (Freezeframe's nodes neither "
                                     "deploy, clean nor inspect)")
            else:
                out[family] = value
        return out

    async def create_node(self, ctx: RequestContext, body: Any, version) -> Node:
        self._authorize(ctx, "node:create")
        inner = checks.body_of(body, "node")
        checks.unknown_keys(inner, CREATE_KEYS, "node")
        self._versioned_keys(inner, version)
        driver = inner.get("driver")
        if not isinstance(driver, str) or not driver:
            raise errors.Invalid("Schema error for node: 'driver' is a required property")
        chosen = self._interfaces(driver, inner)
        others = self._others(driver, inner)
        node_id = checks.uuid_field(inner["uuid"], "uuid") if inner.get("uuid") is not None else str(uuid.uuid4())
        name = checks.name(inner.get("name"))
        instance_uuid = checks.optional_uuid(inner.get("instance_uuid"), "instance_uuid")
        node = Node(
            id=node_id, name=name, description=checks.optional_text(inner.get("description"), "description",
                                                                     limit=4096),
            driver=driver, **chosen, other_interfaces_json=json.dumps(others),
            # Ironic creates nodes in enroll from 1.11 on, available before
            provision_state=str(P.ENROLL if version >= (1, 11) else P.AVAILABLE),
            maintenance=False, conductor_group=checks.optional_text(inner.get("conductor_group"), "conductor_group")
            or "", resource_class=checks.optional_text(inner.get("resource_class"), "resource_class", limit=80),
            owner=checks.optional_text(inner.get("owner"), "owner"),
            lessee=checks.optional_text(inner.get("lessee"), "lessee"), instance_uuid=instance_uuid,
            properties_json=json.dumps(checks.properties(inner.get("properties"))),
            instance_info_json=json.dumps(checks.instance_info(inner.get("instance_info"))),
            driver_info_json=json.dumps(checks.json_object(inner.get("driver_info"), "driver_info")),
            driver_internal_info_json="{}", extra_json=json.dumps(checks.json_object(inner.get("extra"), "extra")),
            created_at=utcnow())

        def create(session: Session) -> Node:
            self._unique(session, node_id=node_id, name=name, instance_uuid=instance_uuid)
            session.add(node)
            session.flush()
            return node
        return await self.db.run(create)

    @staticmethod
    def _unique(session: Session, *, node_id: str | None = None, name: str | None = None,
                instance_uuid: str | None = None, excluding: str | None = None) -> None:
        def taken(*conditions) -> bool:
            stmt = select(Node.id).where(*conditions)
            if excluding is not None:
                stmt = stmt.where(Node.id != excluding)
            return session.scalar(stmt.limit(1)) is not None
        if node_id is not None and taken(Node.id == node_id):
            raise errors.Conflict(f"A node with UUID {node_id} already exists.")
        if name is not None and taken(Node.name == name):
            raise errors.Conflict(f"A node with name {name} already exists.")
        if instance_uuid is not None and taken(Node.instance_uuid == instance_uuid):
            raise errors.Conflict(f"Instance {instance_uuid} is already associated with a node.")

    async def show_node(self, ctx: RequestContext, ident: str) -> Node:
        self._authorize(ctx, "node:get")
        return await self.db.run(lambda s: self.find(s, ident))

    async def list_nodes(self, ctx: RequestContext, params: dict[str, str], version,
                         detail: bool) -> tuple[list[Node], queries.Listing]:
        self._authorize(ctx, "node:list")
        queries.check_arguments(params, queries.NODE_ARGS, version)
        listing = queries.parse_listing(params, sort_keys=queries.NODE_SORT_KEYS, filters=NODE_FILTERS,
                                        fields_allowed=views.node_fields(version))
        if detail and listing.fields is not None:
            raise errors.Invalid("Can not specify ?detail=True and fields in the same request.")
        f = listing.filters
        if "chassis_uuid" in f:         # there are no chassis here
            raise errors.NotFound(f"Chassis {f['chassis_uuid']} could not be found.")

        def find(session: Session) -> list[Node]:
            conditions: list[Any] = []
            for key in ("provision_state", "driver", "instance_uuid", "resource_class", "owner", "lessee",
                        "conductor_group"):
                if key in f:
                    conditions.append(getattr(Node, key) == f[key])
            if "maintenance" in f:
                conditions.append(Node.maintenance.is_(f["maintenance"]))
            if "associated" in f:
                conditions.append(Node.instance_uuid.is_not(None) if f["associated"] else Node.instance_uuid.is_(None))
            if "project" in f:
                conditions.append(or_(Node.owner == f["project"], Node.lessee == f["project"]))
            if "description_contains" in f:
                conditions.append(Node.description.contains(f["description_contains"], autoescape=True))
            # What no node here has (a fault, retirement, a shard, a parent, an instance name) matches
            # nothing when asked for; every node is its one conductor's; none is a child.
            if f.get("retired") or f.get("sharded") or f.get("shard") or "fault" in f or "parent_node" in f \
                    or "instance_name" in f or f.get("conductor", self.conductor) != self.conductor:
                conditions.append(false())
            return queries.page(session, Node, conditions, listing, "Node")
        return await self.db.run(find), listing

    def _patchable(self, version) -> tuple[str, ...]:
        fields = ["description", "driver", "driver_info", "extra", "instance_info", "instance_uuid", "maintenance",
                  "name", "owner", "lessee", "properties", "resource_class", "conductor_group", "power_interface",
                  "boot_interface", *(f"{i}_interface" for i in views.OTHER_INTERFACES)]
        if version >= views.SNAPSHOT_VERSION:
            fields.append("snapshot_interface")
        return tuple(sorted(f for f in fields if views.allowed(f, version)))

    async def update_node(self, ctx: RequestContext, ident: str, body: Any, version) -> Node:
        self._authorize(ctx, "node:update")
        patch = checks.patch_document(body)
        patchable = self._patchable(version)

        def change(session: Session) -> Node:
            node = self.find(session, ident)
            if node.reservation:
                raise locked(node)
            doc = self._patch_view(node)
            new = checks.apply_patch(doc, patch, patchable)
            changed = {k for k in set(doc) | set(new) if doc.get(k) != new.get(k)}
            if not changed:
                return node
            self._apply(session, node, new, changed)
            node.updated_at = utcnow()
            session.flush()
            return node
        return await self.db.run(change)

    def _patch_view(self, node: Node) -> dict[str, Any]:
        others = views.other_interfaces(node)
        return {"description": node.description, "driver": node.driver,
                "driver_info": json.loads(node.driver_info_json or "{}"),
                "extra": json.loads(node.extra_json or "{}"),
                "instance_info": json.loads(node.instance_info_json or "{}"), "instance_uuid": node.instance_uuid,
                "maintenance": bool(node.maintenance), "name": node.name, "owner": node.owner, "lessee": node.lessee,
                "properties": json.loads(node.properties_json or "{}"), "resource_class": node.resource_class,
                "conductor_group": node.conductor_group or "", "power_interface": node.power_interface,
                "boot_interface": node.boot_interface, "snapshot_interface": node.snapshot_interface,
                **{f"{i}_interface": others[i] for i in views.OTHER_INTERFACES}}

    def _apply(self, session: Session, node: Node, new: dict[str, Any], changed: set[str]) -> None:
        state = node.provision_state
        maintenance = checks.boolean(new.get("maintenance", False), "maintenance") \
            if new.get("maintenance") is not None else False
        interfaces_changed = [k for k in changed if k == "driver" or k.endswith("_interface")]
        for key in sorted(interfaces_changed):
            if state not in UPDATE_STATES and not (node.maintenance or maintenance):
                raise errors.Conflict(
                    f"Node {node.id} can not have {key} updated unless it is in one of allowed "
                    f"({', '.join(UPDATE_STATES)}) states or in maintenance mode. Current state is '{state}'.")
        if interfaces_changed:
            driver = new.get("driver")
            if not isinstance(driver, str) or not driver:
                raise errors.Invalid("'/driver' is a mandatory attribute and can not be removed")
            wanted = {k: new.get(k) for k in ("power_interface", "boot_interface", "snapshot_interface")}
            if "driver" in changed:      # a new hardware type: what was not asked for is its default
                wanted = {k: (v if k in changed else None) for k, v in wanted.items()}
            chosen = self._interfaces(driver, wanted)
            others = self._others(driver, {k: new.get(k) for k in changed if k.endswith("_interface")},
                                  json.loads(node.other_interfaces_json or "{}") if "driver" not in changed else {})
            node.driver = driver
            node.power_interface, node.boot_interface = chosen["power_interface"], chosen["boot_interface"]
            node.snapshot_interface = chosen["snapshot_interface"]
            node.other_interfaces_json = json.dumps(others)
        if "instance_uuid" in changed:
            value = checks.optional_uuid(new.get("instance_uuid"), "instance_uuid")
            if value is not None and node.instance_uuid is not None:
                raise errors.Conflict(f"Node {node.id} is associated with instance {node.instance_uuid}.")
            self._unique(session, instance_uuid=value, excluding=node.id)
            node.instance_uuid = value
        if "name" in changed:
            value = checks.name(new.get("name"))
            self._unique(session, name=value, excluding=node.id)
            node.name = value
        if "resource_class" in changed:
            if node.resource_class and state not in UPDATE_STATES:
                raise errors.Conflict(f"Node {node.id} can not have resource_class updated unless it is in one of "
                                      f"allowed ({', '.join(UPDATE_STATES)}) states. Current state is '{state}'.")
            node.resource_class = checks.optional_text(new.get("resource_class"), "resource_class", limit=80)
        for key, limit in (("description", 4096), ("owner", 255), ("lessee", 255)):
            if key in changed:
                setattr(node, key, checks.optional_text(new.get(key), key, limit=limit))
        if "conductor_group" in changed:
            node.conductor_group = checks.optional_text(new.get("conductor_group"), "conductor_group") or ""
        if "properties" in changed:
            node.properties_json = json.dumps(checks.properties(new.get("properties")))
        if "instance_info" in changed:
            node.instance_info_json = json.dumps(checks.instance_info(new.get("instance_info")))
        for key in ("driver_info", "extra"):
            if key in changed:
                setattr(node, f"{key}_json", json.dumps(checks.json_object(new.get(key), key)))
        if "maintenance" in changed:
            node.maintenance = maintenance
            if not maintenance:
                node.maintenance_reason = None

    async def delete_node(self, ctx: RequestContext, ident: str) -> None:
        self._authorize(ctx, "node:delete")

        def delete(session: Session) -> None:
            node = self.find(session, ident)
            if node.reservation:
                raise locked(node)
            if node.provision_state not in DELETE_STATES and not node.maintenance:
                raise errors.Conflict(
                    f'Can not delete node "{node.id}" while it is in provision state "{node.provision_state}". '
                    f'Valid provision states to perform deletion are: "{tuple(str(s) for s in DELETE_STATES)}", '
                    "or set the node into maintenance mode")
            if node.instance_uuid is not None:
                raise errors.Conflict(f"Node {node.id} is associated with instance {node.instance_uuid}.")
            kept = session.scalar(select(Transfer.id).where(Transfer.node_id == node.id,
                                                            Transfer.removed_at.is_(None)).limit(1))
            if kept is not None:
                raise errors.Conflict(f"Node {node.id} still has the intermediate copy of snapshot {kept} in the "
                                      "transfer area: abort or delete the snapshot first (the reaper removes it "
                                      "after transfer_grace)")
            for port in session.scalars(select(Port).where(Port.node_id == node.id)):
                session.delete(port)
            for transfer in session.scalars(select(Transfer).where(Transfer.node_id == node.id)):
                session.delete(transfer)
            session.flush()
            session.delete(node)
        await self.db.run(delete)

    async def set_maintenance(self, ctx: RequestContext, ident: str, on: bool, reason: str | None) -> None:
        self._authorize(ctx, "node:set_maintenance" if on else "node:clear_maintenance")

        def change(session: Session) -> None:
            node = self.find(session, ident)
            if node.reservation:
                raise locked(node)
            node.maintenance = on
            node.maintenance_reason = reason if on else None
            node.updated_at = utcnow()
        await self.db.run(change)

    # -- states ----------------------------------------------------------------------------------

    async def set_provision_state(self, ctx: RequestContext, ident: str, body: Any, version) -> None:
        self._authorize(ctx, "node:set_provision_state")
        inner = checks.body_of(body, "provision state")
        checks.unknown_keys(inner, {"target", "image_ref", "configdrive", "clean_steps", "deploy_steps",
                                    "service_steps", "rescue_password", "disable_ramdisk", "runbook"}, "provision")
        verb = inner.get("target")
        if not isinstance(verb, str):
            raise errors.Invalid("Schema error for provision: 'target' is a required property (a verb: "
                                 f"{', '.join(self._verbs(version))})")
        minimum = VERB_VERSIONS.get(verb)
        if minimum is not None and version < minimum and verb != "snapshot":
            raise errors.NotAcceptable(f"The verb {verb!r} needs microversion {minimum[0]}.{minimum[1]} or later "
                                       f"(this request is {version})")
        for key in ("configdrive", "clean_steps", "deploy_steps", "service_steps", "rescue_password",
                    "disable_ramdisk", "runbook"):
            if key in inner:
                raise errors.Invalid(f"{key} is not supported here: Freezeframe's nodes are neither deployed, "
                                     "cleaned, serviced nor rescued")
        if "image_ref" in inner and verb != "snapshot":
            raise errors.Invalid("image_ref may only be given with the snapshot verb")
        image_ref = checks.uuid_field(inner["image_ref"], "image_ref") if inner.get("image_ref") is not None else None
        known = self._verbs(version)
        node = await self.db.run(lambda s: self.find(s, ident))
        if node.reservation:
            raise locked(node)
        if verb not in known:
            # Ironic's answer to a verb it does not know (snapshot below 1.116 among them)
            raise errors.Invalid(f'The requested action "{verb}" can not be performed on node "{ident}" while it is '
                                 f'in state "{node.provision_state}"; the verbs are {", ".join(known)}.')
        frm = node.provision_state
        try:
            target_of(frm, verb)
        except errors.InvalidState as exc:
            raise errors.Invalid(exc.message) from None       # Ironic: 400 for a verb the state does not take
        kind = KINDS.get((frm, verb))
        if verb == "snapshot":
            image_ref = image_ref or (node.snapshot_image_id if frm == P.SNAPSHOTFAIL else None)
            if image_ref is None:
                raise errors.Invalid("The snapshot verb needs image_ref: the id of the pre-created (queued) image "
                                     "the node's disk goes into")
            await self.pool.run(self._validate_snapshot, node)
            await self.pool.run(self._check_image, ctx.actor, node, frm, image_ref)
        actor = ctx.actor
        if kind is None:                        # done here: nothing for a conductor to do
            # snapshot wait -abort-> snapshot failed says why the node is in snapshot failed
            aborted = {"last_error": "snapshot aborted by request while waiting for the agent (snapshot wait)"} \
                if (frm, verb) == (P.SNAPSHOTWAIT, "abort") else None
            await self.db.run(lambda s: self._move(s, node, frm, verb, aborted))
            if frm == P.SNAPSHOTWAIT and verb == "abort" and node.snapshot_workflow_id:
                await self.pool.run(self.workflows.post, node.snapshot_workflow_id, "baremetal-snapshot",
                                    self.settings.transfer_host)
            return
        params: dict[str, Any] = {"image_id": image_ref} if verb == "snapshot" else {}
        host = self.settings.transfer_host if kind in HOST_BOUND else None

        def also(session: Session, workflow_id: str) -> None:
            if kind == "baremetal-abort":       # the workflow moves the node once it cleaned up
                self._still(session, node, frm)
                return
            values: dict[str, Any] = {}
            if verb == "snapshot":
                values = {"snapshot_image_id": image_ref, "snapshot_workflow_id": workflow_id, "last_error": None}
            self._move(session, node, frm, verb, values)
        await self.pool.run(lambda: self.workflows.submit(kind, "node", node.id, params, actor, host=host, also=also,
                                                          image_id=image_ref if verb == "snapshot" else None))
        if frm == P.SNAPSHOTWAIT and node.snapshot_workflow_id:      # deleted: the waiting snapshot notices
            await self.pool.run(self.workflows.post, node.snapshot_workflow_id, "baremetal-snapshot",
                                self.settings.transfer_host)

    @staticmethod
    def _verbs(version) -> tuple[str, ...]:
        return tuple(v for v in VERBS if version >= VERB_VERSIONS.get(v, (1, 1)))

    def _check_image(self, actor, node: Node, frm: str, image_id: str) -> None:
        """The image a snapshot goes into: visible to the user, and queued (pre-created, no data)
        — or, retrying a failed snapshot into the same image, still holding that snapshot's
        partial upload (saving). Anything else is a 400 before the node moves."""
        from freezeframe.images.client import GlanceError
        if self.manager.images_for is None:
            return
        try:
            with self.manager.images_for(actor) as images:
                image = images.show(image_id)
        except GlanceError as exc:
            if exc.status == 404:
                raise errors.Invalid(f"Image {image_id} could not be found (image_ref must name a pre-created, "
                                     "queued image)") from None
            raise
        retry = frm == P.SNAPSHOTFAIL and image_id == node.snapshot_image_id and image.status == "saving"
        if image.status != "queued" and not retry:
            raise errors.Invalid(f"Image {image_id} is {image.status}: a snapshot goes into a pre-created image that "
                                 "holds no data yet (status queued)")

    def _validate_snapshot(self, node: Node) -> None:
        from freezeframe.baremetal.drivers.base import NodeInfo
        self.interfaces.snapshot(node.snapshot_interface).validate(NodeInfo.from_row(node))

    @staticmethod
    def _still(session: Session, node: Node, frm: str) -> None:
        """The node is still in ``frm`` and free (compare-and-set: touches it)."""
        done = session.execute(update(Node).where(Node.id == node.id, Node.provision_state == frm,
                                                  Node.reservation.is_(None)).values(updated_at=utcnow()))
        if done.rowcount != 1:
            current = session.get(Node, node.id)
            if current is not None and current.reservation:
                raise locked(current)
            raise errors.Conflict(f"Node {node.id} changed while the request ran (it is "
                                  f"{current.provision_state if current else 'gone'} now): retry")

    @staticmethod
    def _move(session: Session, node: Node, frm: str, verb: str, values: dict[str, Any] | None = None) -> None:
        current = session.get(Node, node.id)
        if current is not None and current.reservation:
            raise locked(current)
        provision(session, node.id, frm, verb, reason=f"{verb} requested", values=values)

    async def set_power_state(self, ctx: RequestContext, ident: str, body: Any, version) -> None:
        self._authorize(ctx, "node:set_power_state")
        inner = checks.body_of(body, "power state")
        checks.unknown_keys(inner, {"target", "timeout"}, "power")
        target = inner.get("target")
        timeout = inner.get("timeout")
        if timeout is not None:
            if version < (1, 27):
                raise errors.NotAcceptable("timeout needs microversion 1.27 or later")
            if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= 3600:
                raise errors.Invalid(f"Invalid timeout value {shown(timeout)}: a positive integer of seconds is "
                                     "expected")
        node = await self.db.run(lambda s: self.find(s, ident))
        if target not in POWER_TARGETS:
            raise errors.Invalid(f'The requested action "{target}" can not be performed on node "{ident}" while it '
                                 f'is in state "{node.power_state}"; the power targets are '
                                 f"{', '.join(POWER_TARGETS)} (soft power actions are not supported).")
        await self.db.run(lambda s: self._reserve(s, node.id))
        try:
            state = await self.pool.run(self._power, node.id, target, float(timeout or self.settings.power_timeout))
        except errors.FreezeframeError as exc:
            failure = f"Failed to change power state to '{target}': {exc.message}"
            await self.db.run(lambda s: self._release(s, node.id, last_error=failure))
            raise
        except Exception:
            await self.db.run(lambda s: self._release(s, node.id))
            raise
        await self.db.run(lambda s: self._release(s, node.id, power_state=state))

    def _power(self, node_id: str, target: str, timeout: float) -> str:
        """Through the manager (it wipes the agent token on power off and reboot, as Ironic)."""
        from freezeframe.baremetal.drivers.base import NodeInfo
        node = self.db.run_sync(lambda s: self.find(s, node_id))
        self.interfaces.power(node.power_interface).validate(NodeInfo.from_row(node))
        return self.manager.set_power(node_id, target)

    def _reserve(self, session: Session, node_id: str) -> None:
        done = session.execute(update(Node).where(Node.id == node_id, Node.reservation.is_(None))
                               .values(reservation=self.host))
        if done.rowcount != 1:
            node = session.get(Node, node_id)
            if node is None:
                raise errors.NotFound(f"Node {node_id} could not be found.")
            raise locked(node)

    def _release(self, session: Session, node_id: str, *, power_state: str | None = None,
                 last_error: str | None = None) -> None:
        values: dict[str, Any] = {"reservation": None, "target_power_state": None, "updated_at": utcnow()}
        if power_state is not None:
            values.update(power_state=power_state, last_error=None)
        if last_error is not None:
            values["last_error"] = last_error
        session.execute(update(Node).where(Node.id == node_id, Node.reservation == self.host).values(**values))

    async def validate_node(self, ctx: RequestContext, ident: str, version) -> dict[str, Any]:
        self._authorize(ctx, "node:validate")
        node = await self.db.run(lambda s: self.find(s, ident))
        return await self.pool.run(self._validate, node, version)

    def _validate(self, node: Node, version) -> dict[str, Any]:
        from freezeframe.baremetal.drivers.base import NodeInfo
        info = NodeInfo.from_row(node)
        out: dict[str, Any] = {}
        families: list[tuple[str, Callable[[str], Any], str]] = [
            ("boot", self.interfaces.boot, node.boot_interface), ("power", self.interfaces.power, node.power_interface)]
        if version >= views.SNAPSHOT_VERSION:
            families.append(("snapshot", self.interfaces.snapshot, node.snapshot_interface))
        for family, get, name in families:
            try:
                get(name).validate(info)
            except errors.FreezeframeError as exc:
                out[family] = {"result": False, "reason": exc.message}
            else:
                out[family] = {"result": True}
        for family, name in views.other_interfaces(node).items():
            if name.startswith("no-"):
                out[family] = {"result": False, "reason": f"Driver {node.driver} does not support {family} (disabled "
                                                          "or not implemented)."}
            elif family != "vendor":
                out[family] = {"result": True}
        return dict(sorted(out.items(), key=lambda kv: (not kv[1]["result"], kv[0])))

    # -- ports -----------------------------------------------------------------------------------

    @staticmethod
    def _port(session: Session, port_id: str) -> Port:
        port = session.get(Port, port_id.lower()) if is_uuid(port_id) else None
        if port is None:
            raise errors.NotFound(f"Port {port_id} could not be found.")
        return port

    async def create_port(self, ctx: RequestContext, body: Any) -> Port:
        self._authorize(ctx, "port:create")
        inner = checks.body_of(body, "port")
        checks.unknown_keys(inner, PORT_KEYS, "port")
        address = checks.mac(inner.get("address"))
        node_ident = checks.uuid_field(inner.get("node_uuid"), "node_uuid")
        port_id = checks.uuid_field(inner["uuid"], "uuid") if inner.get("uuid") is not None else str(uuid.uuid4())
        pxe = checks.boolean(inner["pxe_enabled"], "pxe_enabled") if inner.get("pxe_enabled") is not None else True
        extra = checks.json_object(inner.get("extra"), "extra")

        def create(session: Session) -> Port:
            node = self.find(session, node_ident)
            self._port_unique(session, address, port_id=port_id)
            port = Port(id=port_id, node_id=node.id, address=address, extra_json=json.dumps(extra), pxe_enabled=pxe,
                        created_at=utcnow())
            session.add(port)
            session.flush()
            return port
        return await self.db.run(create)

    @staticmethod
    def _port_unique(session: Session, address: str, *, port_id: str | None = None,
                     excluding: str | None = None) -> None:
        if port_id is not None and session.get(Port, port_id) is not None:
            raise errors.Conflict(f"A port with UUID {port_id} already exists.")
        stmt = select(Port.id).where(Port.address == address)
        if excluding is not None:
            stmt = stmt.where(Port.id != excluding)
        if session.scalar(stmt.limit(1)) is not None:
            raise errors.Conflict(f"A port with MAC address {address} already exists.")

    async def show_port(self, ctx: RequestContext, port_id: str) -> Port:
        self._authorize(ctx, "port:get")
        return await self.db.run(lambda s: self._port(s, port_id))

    async def list_ports(self, ctx: RequestContext, params: dict[str, str], version, *,
                         node_ident: str | None = None, detail: bool = False) -> tuple[list[Port], queries.Listing]:
        self._authorize(ctx, "port:list")
        queries.check_arguments(params, queries.PORT_ARGS, version)
        listing = queries.parse_listing(params, sort_keys=queries.PORT_SORT_KEYS, filters=PORT_FILTERS,
                                        fields_allowed=views.port_fields(version))
        f = listing.filters
        if "portgroup" in f:            # there are no port groups here
            raise errors.NotFound(f"Portgroup {f['portgroup']} could not be found.")
        if detail and listing.fields is not None:
            raise errors.Invalid("Can not specify ?detail=True and fields in the same request.")

        def find(session: Session) -> list[Port]:
            conditions: list[Any] = []
            ident = node_ident or f.get("node") or f.get("node_uuid")
            if ident is not None:
                conditions.append(Port.node_id == self.find(session, ident).id)
            if "address" in f:
                conditions.append(Port.address == f["address"].lower())
            if "conductor_groups" in f:
                conditions.append(Port.node_id.in_(select(Node.id).where(
                    Node.conductor_group.in_([g.lower() for g in f["conductor_groups"]]))))
            if f.get("shard") or "description_contains" in f:     # no node has a shard, no port a description
                conditions.append(false())
            return queries.page(session, Port, conditions, listing, "Port")
        return await self.db.run(find), listing

    async def update_port(self, ctx: RequestContext, port_id: str, body: Any) -> Port:
        self._authorize(ctx, "port:update")
        patch = checks.patch_document(body)

        def change(session: Session) -> Port:
            port = self._port(session, port_id)
            doc = {"address": port.address, "node_uuid": port.node_id, "extra": json.loads(port.extra_json or "{}"),
                   "pxe_enabled": bool(port.pxe_enabled)}
            new = checks.apply_patch(doc, patch, ("address", "extra", "node_uuid", "pxe_enabled"))
            if new.get("address") != port.address:
                address = checks.mac(new.get("address"))
                self._port_unique(session, address, excluding=port.id)
                port.address = address
            if new.get("node_uuid") != port.node_id:
                port.node_id = self.find(session, checks.uuid_field(new.get("node_uuid"), "node_uuid")).id
            port.extra_json = json.dumps(checks.json_object(new.get("extra"), "extra"))
            port.pxe_enabled = checks.boolean(new["pxe_enabled"], "pxe_enabled") \
                if new.get("pxe_enabled") is not None else True
            port.updated_at = utcnow()
            session.flush()
            return port
        return await self.db.run(change)

    async def delete_port(self, ctx: RequestContext, port_id: str) -> None:
        self._authorize(ctx, "port:delete")

        def delete(session: Session) -> None:
            session.delete(self._port(session, port_id))
        await self.db.run(delete)

    # -- the agent (no token: the per-node agent token is the credential) --------------------------

    async def lookup(self, params: dict[str, str]) -> tuple[Node, str]:
        """The node an agent runs on, by its MACs or its uuid: 404 alike for an unknown node and
        for one in a state that takes no lookup (Ironic's: indistinguishable on purpose). The
        first lookup of an operation mints the agent token; later ones see ``******``."""
        addresses = []
        for item in (params.get("addresses") or "").split(","):
            try:
                addresses.append(checks.mac(item.strip()))
            except errors.Invalid:
                continue            # Ironic ignores what is not a MAC
        node_uuid = params.get("node_uuid") or None
        if node_uuid is not None and not is_uuid(node_uuid):
            raise errors.Invalid(f"Expected UUID for node_uuid: {shown(node_uuid)}")
        if not addresses and node_uuid is None:
            raise errors.Invalid("At least one of 'addresses' and 'node_uuid' parameters is required")

        def find(session: Session) -> tuple[Node, str]:
            node = session.get(Node, node_uuid.lower()) if node_uuid else None
            if node is None and addresses:
                found = set(session.scalars(select(Port.node_id).where(Port.address.in_(addresses))))
                node = session.get(Node, found.pop()) if len(found) == 1 else None
            if node is None or node.provision_state not in LOOKUP_ALLOWED:
                raise errors.NotFound("Resource could not be found.")
            token = self.manager.mint_token(session, node)
            return node, token if token is not None else checks.MASK
        return await self.db.run(find)

    async def heartbeat(self, ident: str, body: Any) -> None:
        inner = checks.body_of(body, "heartbeat")
        checks.unknown_keys(inner, {"callback_url", "agent_token", "agent_version", "agent_status",
                                    "agent_status_message", "agent_verify_ca", "progress"}, "heartbeat")
        token = inner.get("agent_token")
        callback = inner.get("callback_url")
        if not isinstance(callback, str) or not callback.startswith(("http://", "https://")) or len(callback) > 255:
            raise errors.Invalid(f"Invalid callback_url {shown(callback)}: an http(s) URL of the agent is expected")
        checks.optional_text(callback, "callback_url")
        version = checks.optional_text(inner.get("agent_version"), "agent_version", limit=64)
        status = inner.get("agent_status")
        if status is not None and status not in ("start", "end", "error"):
            raise errors.Invalid(f"Unknown agent_status {shown(status)}: start, end or error")
        message = checks.optional_text(inner.get("agent_status_message"), "agent_status_message", limit=4096)
        progress = inner.get("progress")
        if progress is not None and not isinstance(progress, dict):
            raise errors.Invalid("progress must be a JSON object")

        def record(session: Session) -> Node:
            node = self.find(session, ident)
            if node.provision_state not in LOOKUP_ALLOWED:
                raise errors.NotFound(f"Node {ident} could not be found.")
            if not isinstance(token, str) or not token or node.agent_token is None or \
                    not hmac.compare_digest(token.encode("utf-8", "surrogatepass"), node.agent_token.encode()):
                raise errors.Invalid("Invalid or missing agent token received.")
            self.manager.record_heartbeat(session, node, callback, version, status, message, progress)
            return node
        node = await self.db.run(record)
        await self.pool.run(self.manager.wake, self.workflows, node)
