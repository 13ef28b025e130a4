"""The volume service's conductor workflows (seed 002), one module each:

- ``volume_create``: ``volume-create`` (a blank volume, or one from a snapshot, a volume, an image);
- ``volume_delete``: ``volume-delete``;
- ``snapshot_create``: ``volume-snapshot-create``, offline or assisted by compute;
- ``snapshot_delete``: ``volume-snapshot-delete``, offline or assisted by compute;
- ``upload_image``: ``volume-upload-image`` (``os-volume_upload_image``: a volume's data streamed
  into an image, holes neither read nor sent);

with the steps they share in ``common`` (the workflow, its moves, its failure) and ``assisted``
(asking compute, waiting for its report with a deadline). They reach the volume service through
``runtime.current().service("volume")`` (a ``VolumeManager``). Not bound to a host: any conductor
of a process that runs the volume service's driver takes them.
"""

from __future__ import annotations

from freezeframe.conductor.registry import StateTable, WorkflowKind
from freezeframe.conductor.states import WORKFLOW, WorkflowState as W

PACKAGE = "freezeframe.volumes.workflows"
CREATE, DELETE = "volume-create", "volume-delete"
SNAPSHOT_CREATE, SNAPSHOT_DELETE = "volume-snapshot-create", "volume-snapshot-delete"
UPLOAD_IMAGE = "volume-upload-image"
STATES = StateTable("volume workflow (PENDING -> RUNNING [-> WAITING -> RUNNING] -> COMPLETE)", initial=W.PENDING,
                    terminal=frozenset({W.COMPLETE, W.REVERTED, W.CANCELLED}), machine=WORKFLOW)
# kind -> (the module whose make_flow builds it, the type of resource it works on)
_MODULES = {CREATE: ("volume_create", "volume"), DELETE: ("volume_delete", "volume"),
            SNAPSHOT_CREATE: ("snapshot_create", "snapshot"), SNAPSHOT_DELETE: ("snapshot_delete", "snapshot"),
            UPLOAD_IMAGE: ("upload_image", "volume")}
KINDS = tuple(WorkflowKind(kind, f"{PACKAGE}.{module}.make_flow", STATES, resource_type=resource, host_bound=False)
              for kind, (module, resource) in _MODULES.items())
