"""What the compute service registers with the conductor: its kinds of work and its hooks.

- kinds: ``snapshot`` and ``backup`` of a server (``compute/workflows/snapshot.py``) and
  compute's part of an assisted volume snapshot (``assisted-volume-snapshot``,
  ``compute/workflows/assisted.py``), each bound to the server's host;
- reconcile hooks, called by every conductor's scan, for what compute's work holds on the host:
  ``leftovers`` releases what a finished snapshot still holds here (its workdir with the
  hypervisor's backup job or qemu-nbd export — e.g. after a revert that itself failed), and
  ``servers`` repairs servers left in a transitional task_state that no live work owns
  (``compute/reconcile.py``). Only servers of the hosts the conductor serves are looked at: the
  hypervisor asked is this process's.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import select

from freezeframe.common.policy import Policy
from freezeframe.compute.baremetal_ops import NodeServerHooks
from freezeframe.compute.drivers.base import VirtDriver
from freezeframe.compute.hostside import Hosts
from freezeframe.compute.model import Instance
from freezeframe.compute.volume_ops import VolumeHooks, VolumesFor
from freezeframe.conductor.registry import Registry, Scan
from freezeframe.db.session import Database

LOG = logging.getLogger(__name__)
SERVICE = "compute"


class LeftoverSweep:
    """Release what a finished snapshot still holds on this host."""

    def __init__(self, db: Database, hosts: Hosts, workdir: Path) -> None:
        self.db = db
        self.hosts = hosts
        self.workdir = workdir

    def __call__(self, scan: Scan) -> list[str]:
        try:
            names = [p.name for p in self.workdir.iterdir() if p.is_dir()]
        except FileNotFoundError:        # no snapshot ran here (yet)
            return []
        names = [n for n in names if n not in scan.running]
        finished = scan.workflows.finished(names) if names else {}
        if not finished:
            return []
        domains = self.db.run_sync(lambda s: {r[0]: r[1] for r in s.execute(
            select(Instance.id, Instance.domain_name).where(Instance.id.in_(set(finished.values()))))})
        cleaned = []
        for workflow_id, server_id in finished.items():
            domain = domains.get(server_id)
            if domain is None:
                continue
            try:
                self.hosts.get(None).driver.end_snapshot(domain, workflow_id, self.workdir / workflow_id)
            except Exception as exc:   # retried at the next scan
                LOG.warning("workflow %s: could not release its leftovers: %s", workflow_id, exc)
                continue
            LOG.warning("workflow %s had finished but still held a snapshot on this host: released", workflow_id)
            cleaned.append(workflow_id)
        return cleaned


class ServerReconcile:
    """Servers of this conductor's hosts left in a transitional task_state with no live owner."""

    def __init__(self, db: Database, hosts: Hosts, *, task_timeout: float,
                 api_started_at: dt.datetime | None) -> None:
        self.db = db
        self.hosts = hosts
        self.task_timeout = task_timeout
        self.api_started_at = api_started_at

    def _driver(self, host: str | None) -> VirtDriver:
        return self.hosts.get(host).driver

    def __call__(self, scan: Scan) -> list[Any]:
        from freezeframe.compute import reconcile
        return reconcile.reconcile_servers(self.db, self._driver, task_timeout=self.task_timeout,
                                           api_started_at=self.api_started_at, workflows=scan.workflows,
                                           hosts=scan.hosts)


def register(registry: Registry, *, db: Database, hosts: Hosts, workdir: Path, task_timeout: float,
             api_started_at: dt.datetime | None) -> None:
    """Compute's kinds and hooks. ``api_started_at``: when the compute API of this very process
    started (``serve``), so an operation begun before belonged to a process that is gone."""
    from freezeframe.compute.workflows import assisted, snapshot

    for kind in (*snapshot.KINDS, *assisted.KINDS):
        registry.add_kind(kind)
    if hosts.local is not None:     # what snapshots left on this process's host
        registry.add_hook(SERVICE, "leftovers", LeftoverSweep(db, hosts, workdir))
    registry.add_hook(SERVICE, "servers", ServerReconcile(db, hosts, task_timeout=task_timeout,
                                                          api_started_at=api_started_at))


class ComputeHooks(NodeServerHooks):
    """Compute's functions for the workflows of this process: the snapshot ones, each
    server's host's driver, (``volumes``) what the assisted volume snapshot asks of
    compute — the server's mapping of the volume, and the volume API it reports to — and
    what the bare-metal workflows tell compute of a node with a server (``node_adopted``,
    ``node_snapshot_moved``, ``node_released``: ``compute/baremetal_ops.py``)."""

    def __init__(self, hosts: Hosts | VirtDriver, policy: Policy | None = None,
                 volumes_for: VolumesFor | None = None) -> None:
        super().__init__(hosts, policy)
        self.volumes = VolumeHooks(volumes_for)


def local_api(policy: Policy | None, hosts: Hosts, volumes_for: VolumesFor | None = None) -> dict[str, Any]:
    """What compute offers the workflows of this process (``runtime.local``): its snapshot
    functions, each server's host's driver they run with, and ``volumes_for`` (the volume API
    acting for a user: ``assembly.service_volume_client``) for assisted snapshots."""
    return {SERVICE: ComputeHooks(hosts, policy, volumes_for)}
