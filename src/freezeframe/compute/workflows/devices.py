"""The steps an instance-level snapshot (seed 003) adds to the snapshot workflow: the devices
a user chose — local disks and attached volumes alike — at one point in time, packaged as one
bootable image.

    GuardImage -> PrepareVolumes -> TakeLocalSnapshot -> UploadDisks -> Package -> UploadSnapshot -> Finish

- PrepareVolumes asks the volume service for a snapshot of each chosen volume, taken by
  compute itself (``os-freezeframe:compute_initiated``: the volume driver makes the new file and
  waits for compute's report) and owned by the image; the step waits (``Waiting``: no thread,
  no claim held) until every new file is ready.
- TakeLocalSnapshot (``take_group``) freezes the guest ONCE, switches every volume to its new
  file and holds every local disk in one backup job, thaws, then reports each volume's part
  done — so a volume snapshot is the same instant as the local disks.
- UploadDisks streams each local disk other than the root into an image of its own.
- Package waits for every volume snapshot to be available (never an active image whose
  snapshots are still creating), then writes the image's block_device_mapping (BDM v2:
  ``source_type`` snapshot for volumes, ``image``/``local`` for local disks), ``bdm_v2``,
  ``root_device_name``, what it included and excluded and whether the guest was quiesced (as
  KubeVirt's indications), and the child images it owns — before the image becomes active.

For createImage/createBackup (no ``plan``: the root alone) every one of these steps does
nothing: their behaviour is unchanged. Any step failing reverts every device: the volume
snapshots are given up (compute's part reported as error, or deleted once taken), the child
images deleted; GuardImage kills and deletes the image.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from taskflow import task

from freezeframe.common import errors
from freezeframe.blockdata.qcow2stream import Layout
from freezeframe.compute.workflows import snapshot as base
from freezeframe.conductor import runtime
from freezeframe.conductor.interrupts import Waiting
from freezeframe.conductor.model import Workflow
from freezeframe.conductor.states import WorkflowState as W
from freezeframe.images.client import GlanceError
from freezeframe.volumes.client import CinderError

LOG = logging.getLogger(__name__)
VOLUME_SNAPSHOTS, CHILDREN = "volume_snapshots", "children"
WORKFLOW_KEY, DEVICE_KEY = "os_freezeframe_workflow", "os_freezeframe_device"
PARENT, CHILD_IMAGES = "os_freezeframe_parent_image", "os_freezeframe_child_images"
RECHECK = 0.2          # seconds between looks at the volume service while a step waits for it
# The longest the guest stays frozen for a group (the agent's freeze of every filesystem plus one
# snapshotCreateXML and one backupBegin; ~0.3-0.8 s under TCG here): past it, thawed at once and
# the group undone (QuiesceFailed with os_require_quiesce, else taken crash-consistent).
GROUP_MAX_FROZEN = 3.0


def _params(workflow_id: str) -> dict[str, Any]:
    wf = runtime.current().db.run_sync(lambda s: s.get(Workflow, workflow_id))
    return json.loads(wf.params or "{}")


def _save(workflow_id: str, **values: Any) -> None:
    """Merge ``values`` into the workflow's params, in its fenced transaction."""
    def save(session) -> None:
        wf = session.get(Workflow, workflow_id)
        wf.params = json.dumps({**json.loads(wf.params or "{}"), **values})
    runtime.current().fenced(workflow_id, save)


def _volumes(wf: Workflow):
    return base.compute().volumes.volumes_for(base.actor_of(wf))


def _members(wf: Workflow, volumes) -> dict[str, dict[str, Any]]:
    """The volume snapshots this workflow asked for, by volume id (found by their metadata: a
    crash between asking and recording loses none)."""
    found = volumes.find_snapshots({WORKFLOW_KEY: wf.id})
    return {s["volume_id"]: s for s in found if s.get("status") != "deleted"}


class PrepareVolumes(task.Task):
    """Ask for each chosen volume's snapshot; wait until the volume service made its new file."""

    def execute(self, workflow_id: str) -> None:
        base._check_cancel(workflow_id)
        wf = runtime.current().db.run_sync(lambda s: s.get(Workflow, workflow_id))
        plan = base.plan_of(wf)
        if not plan or not plan.get("volumes"):
            return
        name = json.loads(wf.params or "{}").get("name") or wf.image_id
        ready: dict[str, dict[str, Any]] = {}
        pending: list[str] = []
        with _volumes(wf) as volumes:
            members = _members(wf, volumes)
            for vol in plan["volumes"]:
                snap = members.get(vol["volume_id"])
                if snap is None:
                    snap = volumes.create_group_member(
                        vol["volume_id"], f"snapshot for {name}", owner_image_id=wf.image_id,
                        metadata={WORKFLOW_KEY: workflow_id, DEVICE_KEY: vol["target"]})
                if snap.get("status") == "error":
                    raise errors.Conflict(f"the snapshot of volume {vol['volume_id']} failed on the volume side")
                md = volumes.snapshot_admin_metadata(snap["id"])
                if not md.get("new_file"):
                    pending.append(vol["volume_id"])
                    continue
                ready[vol["volume_id"]] = {"snapshot_id": snap["id"], "new_file": md["new_file"],
                                           "target": vol["target"]}
        if pending:
            raise Waiting(f"the volume service prepares the snapshots of {', '.join(pending)}", RECHECK)
        _save(workflow_id, **{VOLUME_SNAPSHOTS: ready})

    def revert(self, workflow_id: str, *args: Any, **kwargs: Any) -> None:
        """Give every volume snapshot up: compute's part reported as error when the guest never
        switched to its new file (the volume side removes the file and the snapshot), else
        reported done and deleted once available (the volume side merges it away)."""
        rt = runtime.current()
        base._record_failure(workflow_id, kwargs)
        wf, inst = rt.db.run_sync(lambda s: base._load(s, workflow_id, authorize=False))
        plan = base.plan_of(wf)
        if not plan or not plan.get("volumes"):
            return
        with _volumes(wf) as volumes:
            members = _members(wf, volumes)
            switched = _switched(inst, volumes, members) if any(
                s["status"] == "creating" for s in members.values()) else set()
            for snap in members.values():
                give_up(volumes, snap, f"instance snapshot {workflow_id} reverted",
                        switched=snap["id"] in switched)


def _switched(inst, volumes, members: dict[str, dict[str, Any]]) -> set[str]:
    """The snapshots whose new file the guest runs on now (the group was taken)."""
    disks = {d.volume_id: d.path.name for d in base.driver_of(inst).volume_disks(inst.domain_name)}
    out = set()
    for vid, snap in members.items():
        new_file = volumes.snapshot_admin_metadata(snap["id"]).get("new_file")
        if new_file and disks.get(vid) == new_file:
            out.add(snap["id"])
    return out


def give_up(volumes, snap: dict[str, Any], reason: str, *, switched: bool = False) -> None:
    """Compute's part never taken: reported as error (the volume side removes the new file; the
    snapshot, in error and owned by the image that goes too, is deleted by the volume service's
    owner sweep). Taken (``switched``: the guest runs on the new file): reported done — never
    error, which would remove a file in use — and deleted once available. Being completed:
    retried later (the engine retries an incomplete revert) — never left behind."""
    try:
        if snap["status"] == "creating" and switched:
            try:
                volumes.update_snapshot_status(snap["id"], "creating", "100%", "done")
            except CinderError as exc:
                if exc.status != 409:
                    raise
            raise errors.Conflict(f"volume snapshot {snap['id']} is being completed: it is deleted once it is "
                                  "available (retried)")
        if snap["status"] == "creating":
            try:
                volumes.update_snapshot_status(snap["id"], "error", None, "error", compute_error=reason)
            except CinderError as exc:
                if exc.status == 409:
                    raise errors.Conflict(f"volume snapshot {snap['id']} is being completed: it is deleted once "
                                          "it is available (retried)") from None
                raise
        elif snap["status"] in ("available", "error"):
            volumes.set_owner_image(snap["id"], None)
            volumes.delete_snapshot(snap["id"])
    except CinderError as exc:
        if exc.status != 404:       # gone: done
            raise


def take_group(workflow_id: str, wf: Workflow, inst, params: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """The point in time of every chosen device, the guest frozen once (TakeLocalSnapshot's
    work for an instance-level snapshot). Returns what TakeLocalSnapshot provides."""
    rt = runtime.current()
    plan = params[base.PLAN]
    members: dict[str, dict[str, Any]] = params.get(VOLUME_SNAPSHOTS, {})
    driver = base.driver_of(inst)
    disks = ([plan["root"]] if plan.get("root") else []) + [d["target"] for d in plan.get("locals", [])]
    if wf.state == W.LOCAL_SNAPSHOT_COMPLETE:
        # Resumed after the point in time was taken and its layouts saved: the same one goes on
        # (DriverError if it is gone: reverted).
        for target in disks:
            driver.open_snapshot(inst.domain_name, workflow_id, workdir, disk=target).close()
        root = Layout.from_json(params[base.LAYOUT]) if params.get(base.LAYOUT) else None
        return {"virtual_size": root.virtual_size if root else 0, "size": root.size if root else 0,
                "data_bytes": root.data_bytes if root else 0, "quiesced": params.get("quiesced", False),
                "frozen_seconds": params.get("frozen_seconds", 0.0)}
    wanted: list[tuple[str, Path]] = []
    with base.compute().volumes.volumes_for(base.actor_of(wf)) as volumes:
        for vol in plan.get("volumes", []):
            member = members[vol["volume_id"]]
            attached = rt.db.run_sync(lambda s: base.compute().volumes.attached(s, inst.id, vol["volume_id"]))
            if attached is None:
                raise errors.Conflict(f"volume {vol['volume_id']} is no longer attached to server {inst.id}")
            wanted.append((vol["volume_id"], attached.path.parent / member["new_file"]))
        # Resumed in LOCAL_SNAPSHOT_STARTED: begin_group_snapshot with the same id reuses a group
        # the dead conductor completed (one instant) or undoes a partial one and takes it again.

        def start(session) -> None:
            base._move(session, workflow_id, W.LOCAL_SNAPSHOT_STARTED, progress=0)
            base.compute().started(session, inst.id, workflow_id, wf.kind)
        rt.fenced(workflow_id, start)
        base._publish(workflow_id)
        workdir.mkdir(parents=True, exist_ok=True)
        handle = driver.begin_group_snapshot(inst.domain_name, workflow_id, workdir, disks=disks, volumes=wanted,
                                             quiesce=params.get("quiesce", False),
                                             require_quiesce=params.get("require_quiesce", False),
                                             max_frozen=GROUP_MAX_FROZEN)
        layouts: dict[str, Layout] = {}
        for target in disks:
            reader = driver.open_snapshot(inst.domain_name, workflow_id, workdir, disk=target)
            try:
                extents = reader.extents()
            finally:
                reader.close()
            layouts[target] = Layout.from_extents(reader.size, [(e.offset, e.length) for e in extents if not e.zero])
        for vol in plan.get("volumes", []):        # compute's part of each volume snapshot is done
            member = members[vol["volume_id"]]
            try:
                volumes.update_snapshot_status(member["snapshot_id"], "creating", "100%", "done")
            except CinderError as exc:
                if exc.status != 409:
                    raise
    consistency = f"frozen once for {handle.frozen_seconds:.3f}s" if handle.quiesced else "crash-consistent"
    root = layouts.get(plan.get("root")) if plan.get("root") else None

    def done(session) -> None:
        detail = (f"{consistency}; {len(disks)} local disk(s), {len(wanted)} volume(s); "
                  f"{sum(lt.data_bytes for lt in layouts.values())} bytes of data")
        base._move(session, workflow_id, W.LOCAL_SNAPSHOT_COMPLETE, progress=0, detail=detail)
        wfrow = session.get(Workflow, workflow_id)
        kept = json.loads(wfrow.params or "{}")
        kept[base.LAYOUTS] = {t: lt.to_json() for t, lt in layouts.items() if t != plan.get("root")}
        kept["quiesced"], kept["frozen_seconds"] = handle.quiesced, handle.frozen_seconds
        if root is not None:
            kept[base.LAYOUT] = root.to_json()
        wfrow.params = json.dumps(kept)
        for vid, path in wanted:        # the guest writes each volume's new file from now on
            base.compute().volumes.refresh_connection(session, inst.id, vid, name=path.name, fmt="qcow2")
        base.compute().point_in_time_taken(session, inst.id, workflow_id, quiesced=handle.quiesced,
                                           frozen_seconds=handle.frozen_seconds)
    rt.fenced(workflow_id, done)
    base._publish(workflow_id)
    return {"virtual_size": root.virtual_size if root is not None else 0, "size": root.size if root else 0,
            "data_bytes": root.data_bytes if root else 0, "quiesced": handle.quiesced,
            "frozen_seconds": handle.frozen_seconds}


class UploadDisks(task.Task):
    """Each local disk other than the root into an image of its own (``<name>-<device>``)."""

    def execute(self, workflow_id: str) -> None:
        rt = runtime.current()
        base._check_cancel(workflow_id)
        wf, inst = rt.db.run_sync(lambda s: base._load(s, workflow_id))
        params = json.loads(wf.params or "{}")
        layouts = {t: Layout.from_json(doc) for t, doc in params.get(base.LAYOUTS, {}).items()}
        if not layouts:
            return
        base.upload_begins(workflow_id, inst.id)
        children: dict[str, str] = dict(params.get(CHILDREN, {}))
        root = Layout.from_json(params[base.LAYOUT]) if params.get(base.LAYOUT) else None
        total = sum(lt.size for lt in layouts.values()) + (root.size if root is not None else 0)
        done_before = 0
        with base.images_for(wf) as images:
            parent = images.show(wf.image_id)
            for target in sorted(layouts):
                image_id = children.get(target) or self._child(images, wf, parent, target)
                if target not in children:
                    children[target] = image_id
                    _save(workflow_id, **{CHILDREN: children})
                base.send_disk(images, image_id, layouts[target], inst, workflow_id, disk=target,
                               done_before=done_before, total=total)
                done_before += layouts[target].size

    @staticmethod
    def _child(images, wf: Workflow, parent, target: str) -> str:
        """The disk's image (found again after a crash by its parent and device)."""
        found = [i for i in images.list([(PARENT, wf.image_id), (DEVICE_KEY, target)])
                 if i.properties.get(PARENT) == wf.image_id and i.properties.get(DEVICE_KEY) == target]
        if found:
            return found[0].id
        attrs = {"name": f"{parent.name}-{target}", "container_format": "bare", "disk_format": "qcow2",
                 "visibility": "private", "instance_uuid": wf.resource_id, "image_type": "snapshot",
                 PARENT: wf.image_id, DEVICE_KEY: target}
        return images.create(attrs).id

    def revert(self, workflow_id: str, *args: Any, **kwargs: Any) -> None:
        base._record_failure(workflow_id, kwargs)
        wf = runtime.current().db.run_sync(lambda s: s.get(Workflow, workflow_id))
        with base.images_for(wf) as images:
            for image in images.list([(PARENT, wf.image_id)]):
                if image.properties.get(PARENT) != wf.image_id:
                    continue
                try:
                    images.delete(image.id)
                except GlanceError as exc:
                    if exc.status != 404:
                        raise


class Package(task.Task):
    """The image's block device mapping, once every volume snapshot is available."""

    def execute(self, workflow_id: str) -> None:
        base._check_cancel(workflow_id)
        wf = runtime.current().db.run_sync(lambda s: s.get(Workflow, workflow_id))
        plan = base.plan_of(wf)
        if plan is None:
            return
        params = json.loads(wf.params or "{}")
        members: dict[str, dict[str, Any]] = params.get(VOLUME_SNAPSHOTS, {})
        states: dict[str, dict[str, Any]] = {}
        if members:
            with _volumes(wf) as volumes:
                states = {vid: volumes.show_snapshot(m["snapshot_id"]) for vid, m in members.items()}
        failed = [vid for vid, snap in states.items() if snap["status"] not in ("creating", "available")]
        if failed:
            raise errors.Conflict(f"the snapshot of volume(s) {', '.join(failed)} ended "
                                  f"{', '.join(states[v]['status'] for v in failed)}")
        waiting = [vid for vid, snap in states.items() if snap["status"] != "available"]
        if waiting:
            raise Waiting(f"the snapshots of {', '.join(waiting)} are being completed", RECHECK)
        mapping = block_device_mapping(plan, members, params.get(CHILDREN, {}), states)
        props = {"block_device_mapping": json.dumps(mapping), "bdm_v2": "True",
                 "root_device_name": f"/dev/{plan.get('root_target') or 'vda'}",
                 "os_freezeframe_snapshot_included": ",".join(included(plan)),
                 "os_freezeframe_snapshot_excluded": ",".join(plan.get("excluded", [])),
                 "os_freezeframe_snapshot_quiesced": "true" if params.get("quiesced") else "false"}
        if params.get(CHILDREN):
            props[CHILD_IMAGES] = ",".join(params[CHILDREN][t] for t in sorted(params[CHILDREN]))
        with base.images_for(wf) as images:
            images.set_properties(wf.image_id, props)


def included(plan: dict[str, Any]) -> list[str]:
    return ([plan["root"]] if plan.get("root") else []) + [d["target"] for d in plan.get("locals", [])] + \
        [v["target"] for v in plan.get("volumes", [])]


def block_device_mapping(plan: dict[str, Any], members: dict[str, dict[str, Any]], children: dict[str, str],
                         states: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """BDM v2 entries as Nova writes them into a snapshot image (every key present, unset = None)."""
    def entry(**values: Any) -> dict[str, Any]:
        keys = ("source_type", "destination_type", "snapshot_id", "volume_id", "image_id", "device_name",
                "boot_index", "volume_size", "delete_on_termination", "disk_bus", "device_type", "tag",
                "volume_type", "guest_format", "encrypted", "encryption_secret_uuid", "encryption_format",
                "encryption_options", "no_device")
        return {k: values.get(k) for k in keys}
    out = []
    for disk in plan.get("locals", []):
        out.append(entry(source_type="image", destination_type="local", image_id=children[disk["target"]],
                         device_name=f"/dev/{disk['target']}", boot_index=-1, volume_size=disk.get("size"),
                         delete_on_termination=True, disk_bus="virtio", device_type="disk"))
    for vol in plan.get("volumes", []):
        snap = states[vol["volume_id"]]
        out.append(entry(source_type="snapshot", destination_type="volume",
                         snapshot_id=members[vol["volume_id"]]["snapshot_id"], device_name=f"/dev/{vol['target']}",
                         boot_index=vol.get("boot_index"), volume_size=snap.get("size") or vol.get("size"),
                         delete_on_termination=vol.get("delete_on_termination", False), disk_bus="virtio",
                         device_type="disk"))
    return out
