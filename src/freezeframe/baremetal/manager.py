"""The bare-metal manager: what the conductor's workflows and the API service call on nodes.

Ironic's conductor manager does the work of each operation in one place; here the *order* of an
operation is its workflow's (``baremetal/workflows/``: persisted steps, waits without a thread)
and the manager keeps what every step and the API share, each in the caller's session (a
workflow's fenced transaction, or the API's):

- node lookups (uuid or name) and the node's hardware interfaces (``drivers.Interfaces``);
- every provision state change, through ``states.provision`` only (compare-and-set);
- the reservation (Ironic's node lock): a conductor holds it while its workflow acts on the
  node, and lets go while the workflow waits for the agent (its heartbeats need the node);
- the agent's token: minted at the first lookup of an operation, wiped at the end or failure
  of every operation and on power off / reboot; heartbeats recorded, and the snapshot's
  workflow woken by them;
- the transfer of a snapshot (its place in the WebDAV area and its credential): created, or
  reused by a retry with the same image (the stream resumes from the chunks kept), its
  password rotated before each command, revoked once the stream is verified, removed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from freezeframe.baremetal import states
from freezeframe.baremetal.agent_client import AgentClient
from freezeframe.baremetal.drivers.base import POWER_OFF, REBOOT, NodeInfo
from freezeframe.baremetal.drivers.snapshot import Hardware, SnapshotInterface
from freezeframe.baremetal.model import Node, Transfer
from freezeframe.baremetal.transfer import TransferArea, hash_password, new_credential
from freezeframe.common import errors
from freezeframe.common.context import Actor
from freezeframe.common.timeutil import isotime, utcnow
from freezeframe.db.session import Database

LOG = logging.getLogger(__name__)
P = states.ProvisionState

# driver_internal_info keys the manager and the workflows own
TRANSFER = "snapshot_transfer"          # {"id", "image_id", "chunk_size"} of the node's live copy
COMMAND = "snapshot_command"            # {"workflow", "id"}: the stream command of a workflow
MANIFEST_SHA = "snapshot_manifest_sha256"   # the verified stream
REBOOTED_AT = "snapshot_rebooted_at"    # when the node was rebooted into the agent (ISO)


def loads(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


@dataclass(frozen=True)
class Credential:
    """A transfer's place and its (plaintext, just rotated) credential."""
    transfer_id: str
    path: str
    url: str
    username: str
    password: str


class BaremetalManager:
    def __init__(self, db: Database, interfaces: Any, settings: Any,
                 images_for: Callable[[Actor], Any] | None = None, *, area: Path | None = None,
                 data_dir: Path | None = None, api_url: str = "", webdav_url: str = "",
                 agent_timeout: float = 60.0, agent_attempts: int = 3) -> None:
        self.db = db
        self.interfaces = interfaces
        self.settings = settings
        self.images_for = images_for
        root = area or (Path(settings.transfer_path) if getattr(settings, "transfer_path", "") else
                        Path(data_dir or ".") / "baremetal-transfers")
        self.area = TransferArea(root)
        self.api_url = api_url or getattr(settings, "api_url", "")
        self._webdav_url = webdav_url
        self.agent_timeout = agent_timeout
        self.agent_attempts = agent_attempts

    # -- where things are ---------------------------------------------------------------------------

    @property
    def webdav_url(self) -> str:
        """The area's URL as agents reach it."""
        url = self._webdav_url or getattr(self.settings, "webdav_url", "") or (
            f"http://{self.settings.webdav_bind}" if getattr(self.settings, "webdav_bind", "") else "")
        return url.rstrip("/")

    def set_webdav_url(self, url: str) -> None:
        """The URL of this process's WebDAV server once it listens (a bind on port 0)."""
        self._webdav_url = url

    @property
    def transfer_host(self) -> str:
        return self.settings.transfer_host

    # -- nodes ----------------------------------------------------------------------------------------

    def node(self, session: Session, ident: str) -> Node:
        """A node by uuid or name (errors.NotFound, in Ironic's words)."""
        row = session.get(Node, ident)
        if row is None:
            row = session.scalar(select(Node).where(Node.name == ident))
        if row is None:
            raise errors.NotFound(f"Node {ident} could not be found.")
        return row

    def fresh(self, session: Session, node_id: str) -> Node:
        """The node as stored now (a provision move is a Core UPDATE: ORM copies go stale)."""
        row = session.get(Node, node_id, populate_existing=True)
        if row is None:
            raise errors.NotFound(f"Node {node_id} could not be found.")
        return row

    def info(self, node: Node) -> NodeInfo:
        return NodeInfo.from_row(node)

    def hardware(self, node: Node) -> Hardware:
        return Hardware(self.interfaces.power(node.power_interface), self.interfaces.boot(node.boot_interface),
                        float(getattr(self.settings, "power_timeout", 60.0)))

    def snapshot_interface(self, node: Node) -> SnapshotInterface:
        return self.interfaces.snapshot(node.snapshot_interface)

    def provision(self, session: Session, node_id: str, frm: str, event: str, *, reason: str = "",
                  values: dict[str, Any] | None = None) -> states.ProvisionState:
        """The one way a node's provision_state changes (``states.provision``)."""
        return states.provision(session, node_id, frm, event, reason=reason, values=values)

    def internal(self, node: Node) -> dict[str, Any]:
        return loads(node.driver_internal_info_json)

    def update_internal(self, session: Session, node_id: str, **changes: Any) -> dict[str, Any]:
        """Set (None: remove) driver_internal_info keys."""
        node = self.fresh(session, node_id)
        doc = loads(node.driver_internal_info_json)
        for key, value in changes.items():
            if value is None:
                doc.pop(key, None)
            else:
                doc[key] = value
        node.driver_internal_info_json = dumps(doc)
        node.updated_at = utcnow()
        return doc

    # -- the reservation (Ironic's node lock) ------------------------------------------------------

    def acquire(self, session: Session, node_id: str, holder: str) -> None:
        """Hold the node for ``holder`` (errors.Conflict while another holds it)."""
        node = self.fresh(session, node_id)
        if node.reservation not in (None, holder):
            raise errors.Conflict(f"Node {node.id} is locked by host {node.reservation}, please retry after the "
                                  "current operation is completed.")
        node.reservation = holder

    def release(self, session: Session, node_id: str, holder: str | None = None) -> bool:
        """Let go of the node (only ``holder``'s reservation, when given)."""
        node = session.get(Node, node_id, populate_existing=True)
        if node is None or node.reservation is None or (holder is not None and node.reservation != holder):
            return False
        node.reservation = None
        return True

    # -- the agent -----------------------------------------------------------------------------------

    def mint_token(self, session: Session, node: Node) -> str | None:
        """The agent's token at the first lookup of an operation; None once one was handed out
        (the lookup then says "******", as Ironic's)."""
        if node.agent_token:
            return None
        token = secrets.token_urlsafe(32)
        node.agent_token = token
        node.updated_at = utcnow()
        return token

    def wipe_token(self, session: Session, node_id: str) -> None:
        """End of an operation, or a power off / reboot: the agent that held the token is gone."""
        node = self.fresh(session, node_id)
        node.agent_token, node.agent_url = None, None
        node.updated_at = utcnow()

    @staticmethod
    def agent_gone() -> dict[str, Any]:
        """The columns that say "no agent" (for a provision move's ``values``)."""
        return {"agent_token": None, "agent_url": None}

    def record_heartbeat(self, session: Session, node: Node, callback_url: str, agent_version: str | None,
                         agent_status: str | None, message: str | None, progress: dict[str, Any] | None) -> None:
        """What the agent said (the API checked its token): where it listens, its version, its
        status and the stream's progress, and when."""
        now = utcnow()
        node.agent_url = callback_url
        node.agent_version = (agent_version or "")[:64] or None
        node.agent_last_heartbeat = now
        node.agent_status_json = dumps({"status": agent_status, "message": (message or "")[:1000],
                                        "progress": progress if isinstance(progress, dict) else None,
                                        "at": isotime(now)})
        node.updated_at = now

    def agent_status(self, node: Node) -> dict[str, Any]:
        return loads(node.agent_status_json)

    def wake(self, workflows: Any, node: Node) -> None:
        """After a heartbeat committed: the node's snapshot workflow looks at it at once."""
        if node.snapshot_workflow_id and workflows is not None:
            workflows.post(node.snapshot_workflow_id, "baremetal-snapshot", self.transfer_host)

    def agent(self, node: Node) -> AgentClient | None:
        """A client of the node's agent (None: it has not heartbeated in this operation)."""
        if not node.agent_url:
            return None
        return AgentClient(node.agent_url, node.agent_token, timeout=self.agent_timeout, attempts=self.agent_attempts)

    def set_power(self, node_id: str, target: str) -> str:
        """A power action (the API's PUT .../states/power, the workflows): the token is wiped on
        power off and reboot (the agent, if any, is gone). Returns the power state after."""
        node = self.db.run_sync(lambda s: self.fresh(s, node_id))
        power = self.hardware(node).power
        info = self.info(node)
        timeout = float(getattr(self.settings, "power_timeout", 60.0))
        if target in (POWER_OFF, REBOOT):
            self.db.run_sync(lambda s: self.wipe_token(s, node_id))
        if target == REBOOT:
            power.reboot(info, timeout)
        else:
            power.set_power_state(info, target, timeout)
        state = power.get_power_state(info)

        def record(session: Session) -> None:
            row = self.fresh(session, node_id)
            row.power_state, row.target_power_state, row.updated_at = state, None, utcnow()
        self.db.run_sync(record)
        return state

    # -- the transfer of a snapshot -------------------------------------------------------------------

    def live_transfers(self, session: Session, node_id: str) -> list[Transfer]:
        return list(session.scalars(select(Transfer).where(Transfer.node_id == node_id,
                                                           Transfer.removed_at.is_(None))))

    def open_transfer(self, session: Session, node: Node, image_id: str, workflow_id: str) -> tuple[Transfer, bool]:
        """The node's transfer for a snapshot into ``image_id``: the live one when it is for the
        same image (a retry: the stream resumes from its chunks, the upload from what the image
        service kept), else a new one (any other live copy of the node is removed). Returns
        (transfer, reused)."""
        doc = self.internal(node)
        current = doc.get(TRANSFER) or {}
        live = self.live_transfers(session, node.id)
        for row in live:
            if row.id == current.get("id") and current.get("image_id") == image_id and self.area.exists(row.path):
                return row, True
        for row in live:
            self._remove_row(session, row)
        username, password = new_credential()
        transfer_id = workflow_id if session.get(Transfer, workflow_id) is None else str(uuid.uuid4())
        row = Transfer(id=transfer_id, node_id=node.id, username=username, password_sha256="",
                       path=transfer_id, size=0, created_at=utcnow())
        session.add(row)
        session.flush()
        self.area.create(row.path)
        self.update_internal(session, node.id, **{TRANSFER: {
            "id": row.id, "image_id": image_id, "chunk_size": int(self.settings.chunk_size)}})
        return row, False

    def current_transfer(self, session: Session, node: Node) -> Transfer:
        current = (self.internal(node).get(TRANSFER) or {}).get("id")
        row = session.get(Transfer, current) if current else None
        if row is None or row.removed_at is not None:
            raise errors.NotFound(f"Node {node.id} has no intermediate copy")
        return row

    def chunk_size_of(self, node: Node) -> int:
        return int((self.internal(node).get(TRANSFER) or {}).get("chunk_size") or self.settings.chunk_size)

    def rotate_password(self, session: Session, transfer_id: str) -> Credential:
        """A new password for the transfer (the old one dies now): handed to the agent with its
        command, never stored."""
        row = session.get(Transfer, transfer_id, populate_existing=True)
        if row is None or row.removed_at is not None:
            raise errors.NotFound(f"transfer {transfer_id} is gone")
        _, password = new_credential()
        row.password_sha256 = hash_password(password)
        return Credential(row.id, row.path, f"{self.webdav_url}/{row.path}/", row.username, password)

    def revoke(self, session: Session, transfer_id: str) -> None:
        """No credential reaches the transfer any more (its stream is verified: frozen)."""
        row = session.get(Transfer, transfer_id, populate_existing=True)
        if row is not None:
            row.password_sha256 = ""

    def _remove_row(self, session: Session, row: Transfer) -> None:
        self.area.remove(row.path)
        row.removed_at = utcnow()
        row.password_sha256 = ""

    def remove_transfers(self, node_id: str, *, only: str | None = None) -> list[str]:
        """The node's intermediate copies removed (files first, then the rows: a crash between
        leaves a row that the next call, or the reaper, removes again). Returns their ids."""
        rows = self.db.run_sync(lambda s: [(r.id, r.path) for r in self.live_transfers(s, node_id)
                                           if only is None or r.id == only])
        for _id, path in rows:
            self.area.remove(path)

        def mark(session: Session) -> None:
            for transfer_id, _path in rows:
                row = session.get(Transfer, transfer_id)
                if row is not None and row.removed_at is None:
                    row.removed_at, row.password_sha256 = utcnow(), ""
            node = session.get(Node, node_id, populate_existing=True)
            if node is not None:
                doc = loads(node.driver_internal_info_json)
                if (doc.get(TRANSFER) or {}).get("id") in {t for t, _ in rows}:
                    for key in (TRANSFER, MANIFEST_SHA):
                        doc.pop(key, None)
                    node.driver_internal_info_json = dumps(doc)
        if rows:
            self.db.run_sync(mark)
        return [t for t, _ in rows]

    # -- for the reconcile hook ------------------------------------------------------------------------

    def stale_transfers(self, session: Session, now: dt.datetime, grace: float) -> list[tuple[str, str, str]]:
        """Live copies the reaper may remove: (transfer id, node id, path) of those whose node
        is gone or no longer in a snapshot state, and older than ``grace`` seconds since the
        later of their creation and the node's last provision change; a copy that is not its
        node's current one is removed after ``grace`` whatever the node's state."""
        out = []
        cutoff = now - dt.timedelta(seconds=grace)
        rows = session.execute(select(Transfer, Node).outerjoin(Node, Node.id == Transfer.node_id)
                               .where(Transfer.removed_at.is_(None))).all()
        for transfer, node in rows:
            if transfer.created_at > cutoff:
                continue
            if node is None:
                out.append((transfer.id, transfer.node_id, transfer.path))
                continue
            current = (loads(node.driver_internal_info_json).get(TRANSFER) or {}).get("id") == transfer.id
            busy = node.provision_state in (P.SNAPSHOTTING, P.SNAPSHOTWAIT, P.SNAPSHOTFAIL)
            if current and busy:
                continue
            changed = node.provision_updated_at or transfer.created_at
            if current and changed > cutoff:
                continue
            out.append((transfer.id, node.id, transfer.path))
        return out

    def reserved_nodes(self, session: Session) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in session.execute(select(Node.id, Node.reservation)
                                                      .where(Node.reservation.is_not(None)))]

