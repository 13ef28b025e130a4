"""Roles and policy, as OpenStack does them: oslo.policy with secure-RBAC defaults.

Every rule of every service is declared here, in one place, with the defaults of Glance's,
Nova's and Cinder's secure-RBAC policies: ``project_reader`` reads, ``project_member`` writes,
``admin`` may do anything, ``service`` is what only a service acting for a user may do. An
operator overrides any rule in a policy file (``auth.policy_file``, default
``<data_dir>/policy.yaml``); ``freezeframe policy`` prints the defaults as a sample file.

Roles imply one another as Keystone's default implied roles do (admin -> member -> reader),
see ``common.context.expand_roles``. Each service checks its own rules in its own layer, so a
call that arrives from another service (over HTTP or in process) gets exactly the checks of a
user's call.
"""

from __future__ import annotations

import inspect
import logging
import time
from pathlib import Path
from typing import Any, Mapping

from oslo_config import cfg
from oslo_policy import _checks
from oslo_policy import policy as oslo_policy

from freezeframe.common import errors
from freezeframe.common.context import RequestContext

LOG = logging.getLogger(__name__)

ADMIN = "rule:admin_api"
READER = "rule:project_reader_or_admin"
MEMBER = "rule:project_member_or_admin"
SERVICE = "rule:service_api"

BASE_RULES = [
    ("admin_api", "role:admin", "An administrator."),
    ("service_api", "role:service or service_roles:service",
     "A service acting for a user (its credential sent beside the user's identity)."),
    ("project_reader", "role:reader and project_id:%(project_id)s", "A reader of the resource's project."),
    ("project_member", "role:member and project_id:%(project_id)s", "A member of the resource's project."),
    ("project_reader_or_admin", "rule:admin_api or rule:project_reader", ""),
    ("project_member_or_admin", "rule:admin_api or rule:project_member", ""),
]

# (name, default, description, operations) — names as Glance, Nova and Cinder call them.
RULES = [
    # -- image (Glance v2) ------------------------------------------------------------------
    ("get_images", READER, "List images.", [("GET", "/image/v2/images")]),
    ("get_image", READER, "Show an image (its visibility rules apply as well).", [("GET", "/image/v2/images/{id}")]),
    ("add_image", MEMBER, "Create an image.", [("POST", "/image/v2/images")]),
    ("modify_image", MEMBER, "Update an image, its tags.", [("PATCH", "/image/v2/images/{id}")]),
    ("delete_image", MEMBER, "Delete an image.", [("DELETE", "/image/v2/images/{id}")]),
    ("publicize_image", ADMIN, "Make an image public.", [("PATCH", "/image/v2/images/{id}")]),
    ("communitize_image", MEMBER, "Make an image community.", [("PATCH", "/image/v2/images/{id}")]),
    ("upload_image", MEMBER, "Upload an image's data.", [("PUT", "/image/v2/images/{id}/file")]),
    ("download_image", READER, "Download an image's data.", [("GET", "/image/v2/images/{id}/file")]),
    ("stage_image", MEMBER, "Stage an image's data.", [("PUT", "/image/v2/images/{id}/stage")]),
    ("import_image", MEMBER, "Import staged data.", [("POST", "/image/v2/images/{id}/import")]),
    ("get_tasks", READER, "An image's import tasks.", [("GET", "/image/v2/images/{id}/tasks")]),
    ("deactivate", MEMBER, "Deactivate an image.", [("POST", "/image/v2/images/{id}/actions/deactivate")]),
    ("reactivate", MEMBER, "Reactivate an image.", [("POST", "/image/v2/images/{id}/actions/reactivate")]),
    ("get_members", READER, "List an image's members.", [("GET", "/image/v2/images/{id}/members")]),
    ("get_member", READER, "Show a member.", [("GET", "/image/v2/images/{id}/members/{member}")]),
    ("add_member", MEMBER, "Share an image with a project.", [("POST", "/image/v2/images/{id}/members")]),
    ("delete_member", MEMBER, "Stop sharing.", [("DELETE", "/image/v2/images/{id}/members/{member}")]),
    ("modify_member", "rule:admin_api or (role:member and project_id:%(member_id)s)",
     "Accept or reject a shared image (the member project).", [("PUT", "/image/v2/images/{id}/members/{member}")]),
    ("freezeframe:image:kill", f"{SERVICE} and ({MEMBER})",
     "A snapshot workflow gives up its image.", [("POST", "/image/v2/images/{id}/actions/kill")]),
    ("freezeframe:image:upload_part", f"{SERVICE} and ({MEMBER})",
     "A workflow's resumable upload, in parts.", [("PUT", "/image/v2/images/{id}/file"),
                                                  ("GET", "/image/v2/images/{id}/uploads/{upload}")]),
    ("freezeframe:image:workflow_properties", SERVICE,
     "Write the reserved os_freezeframe_workflow_* properties.", [("PATCH", "/image/v2/images/{id}")]),
    # Glance's tasks API and metadata definitions (metadefs): reads open to anyone who sees the
    # namespace, writes administrators' (Glance's metadef_default / metadef_admin defaults).
    ("tasks_api_access", ADMIN, "The tasks API at all.", [("GET", "/image/v2/tasks")]),
    ("get_task", READER, "Show a task.", [("GET", "/image/v2/tasks/{id}")]),
    *[(f"{verb}_metadef_{what}", "@" if verb in ("get", "list") else ADMIN, f"Metadata definitions: {verb} {what}.",
       [("*", "/image/v2/metadefs/...")]) for verb, what in (
        ("get", "namespaces"), ("get", "namespace"), ("add", "namespace"), ("modify", "namespace"),
        ("delete", "namespace"), ("get", "objects"), ("get", "object"), ("add", "object"), ("modify", "object"),
        ("delete", "object"), ("get", "properties"), ("get", "property"), ("add", "property"),
        ("modify", "property"), ("remove", "property"), ("get", "tags"), ("get", "tag"), ("add", "tag"),
        ("add", "tags"), ("modify", "tag"), ("delete", "tag"), ("delete", "tags"), ("list", "resource_types"),
        ("get", "resource_type"), ("add", "resource_type_association"),
        ("remove", "resource_type_association"))],
    # -- compute (Nova v2.1) ----------------------------------------------------------------
    ("os_compute_api:servers:index", READER, "List servers.", [("GET", "/compute/v2.1/servers")]),
    ("os_compute_api:servers:detail", READER, "List servers in detail.", [("GET", "/compute/v2.1/servers/detail")]),
    ("os_compute_api:servers:index:get_all_tenants", ADMIN, "List every project's servers (all_tenants).",
     [("GET", "/compute/v2.1/servers")]),
    ("os_compute_api:servers:detail:get_all_tenants", ADMIN, "List every project's servers in detail (all_tenants).",
     [("GET", "/compute/v2.1/servers/detail")]),
    ("os_compute_api:servers:allow_all_filters", ADMIN, "Filter servers by any field (host, node, deleted, ...).",
     [("GET", "/compute/v2.1/servers"), ("GET", "/compute/v2.1/servers/detail")]),
    ("os_compute_api:limits", "@", "Show the project's absolute limits.", [("GET", "/compute/v2.1/limits")]),
    ("os_compute_api:limits:other_project", ADMIN, "Show another project's limits (tenant_id).",
     [("GET", "/compute/v2.1/limits")]),
    ("os_compute_api:os-availability-zone:list", "@", "List the availability zones.",
     [("GET", "/compute/v2.1/os-availability-zone")]),
    ("os_compute_api:os-availability-zone:detail", ADMIN, "List the availability zones with their hosts.",
     [("GET", "/compute/v2.1/os-availability-zone/detail")]),
    ("os_compute_api:servers:show", READER, "Show a server.", [("GET", "/compute/v2.1/servers/{id}")]),
    ("os_compute_api:servers:create", MEMBER, "Create a server.", [("POST", "/compute/v2.1/servers")]),
    ("os_compute_api:servers:delete", MEMBER, "Delete a server.", [("DELETE", "/compute/v2.1/servers/{id}")]),
    ("os_compute_api:servers:start", MEMBER, "Start a server.", [("POST", "/compute/v2.1/servers/{id}/action")]),
    ("os_compute_api:servers:stop", MEMBER, "Stop a server.", [("POST", "/compute/v2.1/servers/{id}/action")]),
    ("os_compute_api:servers:create_image", MEMBER, "Snapshot a server (createImage).",
     [("POST", "/compute/v2.1/servers/{id}/action")]),
    ("os_compute_api:os-create-backup", MEMBER, "Back a server up (createBackup).",
     [("POST", "/compute/v2.1/servers/{id}/action")]),
    ("os_compute_api:os-admin-actions:reset_state", ADMIN, "Reset a server's state (os-resetState).",
     [("POST", "/compute/v2.1/servers/{id}/action")]),
    ("os_compute_api:os-instance-actions:list", READER, "A server's actions.",
     [("GET", "/compute/v2.1/servers/{id}/os-instance-actions")]),
    ("os_compute_api:os-instance-actions:show", READER, "One action and its events.",
     [("GET", "/compute/v2.1/servers/{id}/os-instance-actions/{request_id}")]),
    ("os_compute_api:os-flavor-manage:index", "@", "List flavors.", [("GET", "/compute/v2.1/flavors")]),
    ("freezeframe:compute:adopt", ADMIN, "Take an existing domain under management.",
     [("POST", "/compute/v2.1/os-freezeframe-adopt")]),
    ("os_compute_api:os-volumes-attachments:index", READER, "List a server's volume attachments.",
     [("GET", "/compute/v2.1/servers/{id}/os-volume_attachments")]),
    ("os_compute_api:os-volumes-attachments:show", READER, "Show a volume attachment.",
     [("GET", "/compute/v2.1/servers/{id}/os-volume_attachments/{volume_id}")]),
    ("os_compute_api:os-volumes-attachments:create", MEMBER, "Attach a volume to a server.",
     [("POST", "/compute/v2.1/servers/{id}/os-volume_attachments")]),
    ("os_compute_api:os-volumes-attachments:delete", MEMBER, "Detach a volume from a server.",
     [("DELETE", "/compute/v2.1/servers/{id}/os-volume_attachments/{volume_id}")]),
    ("os_compute_api:os-assisted-volume-snapshots:create", SERVICE,
     "The volume service asks compute to snapshot an attached volume (seed 002).",
     [("POST", "/compute/v2.1/os-assisted-volume-snapshots")]),
    ("os_compute_api:os-assisted-volume-snapshots:delete", SERVICE,
     "The volume service asks compute to merge a deleted snapshot of an attached volume.",
     [("DELETE", "/compute/v2.1/os-assisted-volume-snapshots/{id}")]),
    ("freezeframe:compute:snapshot", MEMBER, "Snapshot chosen disks of a server as one image (seed 003).",
     [("POST", "/compute/v2.1/servers/{id}/action")]),
    # -- volume (Cinder v3) -------------------------------------------------------------------
    ("volume:get_all", READER, "List volumes.", [("GET", "/volume/v3/{project_id}/volumes")]),
    ("volume:get", READER, "Show a volume.", [("GET", "/volume/v3/{project_id}/volumes/{id}")]),
    ("volume:create", MEMBER, "Create a volume.", [("POST", "/volume/v3/{project_id}/volumes")]),
    ("volume:update", MEMBER, "Update a volume.", [("PUT", "/volume/v3/{project_id}/volumes/{id}")]),
    ("volume:delete", MEMBER, "Delete a volume.", [("DELETE", "/volume/v3/{project_id}/volumes/{id}")]),
    ("volume:extend", MEMBER, "Extend a volume.", [("POST", "/volume/v3/{project_id}/volumes/{id}/action")]),
    ("volume:force_delete", ADMIN, "Delete a volume whatever its status (os-force_delete).",
     [("POST", "/volume/v3/{project_id}/volumes/{id}/action")]),
    ("volume_extension:volume_admin_actions:reset_status", ADMIN, "Reset a volume's status.",
     [("POST", "/volume/v3/{project_id}/volumes/{id}/action")]),
    ("volume_extension:volume_actions:upload_image", MEMBER, "Upload a volume to the image service.",
     [("POST", "/volume/v3/{project_id}/volumes/{id}/action")]),
    ("volume:update_volume_metadata", MEMBER, "Change a volume's metadata.",
     [("PUT", "/volume/v3/{project_id}/volumes/{id}/metadata")]),
    ("volume:get_all_snapshots", READER, "List snapshots.", [("GET", "/volume/v3/{project_id}/snapshots")]),
    ("volume:get_snapshot", READER, "Show a snapshot.", [("GET", "/volume/v3/{project_id}/snapshots/{id}")]),
    ("volume:create_snapshot", MEMBER, "Create a snapshot.", [("POST", "/volume/v3/{project_id}/snapshots")]),
    ("volume:update_snapshot", MEMBER, "Update a snapshot.", [("PUT", "/volume/v3/{project_id}/snapshots/{id}")]),
    ("volume:delete_snapshot", MEMBER, "Delete a snapshot.", [("DELETE", "/volume/v3/{project_id}/snapshots/{id}")]),
    ("volume:update_snapshot_metadata", MEMBER, "Change a snapshot's metadata.",
     [("PUT", "/volume/v3/{project_id}/snapshots/{id}/metadata")]),
    ("volume_extension:snapshot_admin_actions:force_delete", ADMIN, "Delete a snapshot whatever its status.",
     [("POST", "/volume/v3/{project_id}/snapshots/{id}/action")]),
    ("volume_extension:snapshot_admin_actions:reset_status", ADMIN, "Reset a snapshot's status.",
     [("POST", "/volume/v3/{project_id}/snapshots/{id}/action")]),
    ("snapshot_extension:snapshot_actions:update_snapshot_status", f"{ADMIN} or {SERVICE} or ({MEMBER})",
     "Compute reports its part of an assisted snapshot (os-update_snapshot_status).",
     [("POST", "/volume/v3/{project_id}/snapshots/{id}/action")]),
    ("freezeframe:volume:snapshot_admin_metadata", f"{ADMIN} or {SERVICE}",
     "Read a snapshot's admin metadata (seed 002; compute reads the new file of a snapshot it initiated).",
     [("GET", "/volume/v3/{project_id}/snapshots/{id}/os-admin-metadata")]),
    ("freezeframe:volume:snapshot_compute_initiated", SERVICE,
     "Create a snapshot whose disk compute switches itself (os-freezeframe:compute_initiated, seed 003).",
     [("POST", "/volume/v3/{project_id}/snapshots")]),
    ("freezeframe:volume:snapshot_owner_image", SERVICE,
     "Name the image that owns a snapshot (os-freezeframe:owner_image_id, os-freezeframe-set_owner_image).",
     [("POST", "/volume/v3/{project_id}/snapshots"), ("POST", "/volume/v3/{project_id}/snapshots/{id}/action")]),
    ("volume:attachment_create", MEMBER, "Reserve or attach a volume (attachments API).",
     [("POST", "/volume/v3/{project_id}/attachments")]),
    ("volume:attachment_update", MEMBER, "Connect an attachment.", [("PUT", "/volume/v3/{project_id}/attachments/{id}")]),
    ("volume:attachment_complete", MEMBER, "Mark an attachment attached.", [("POST", "/volume/v3/{project_id}/attachments/{id}/action")]),
    ("volume:attachment_delete", MEMBER, "Delete an attachment.", [("DELETE", "/volume/v3/{project_id}/attachments/{id}")]),
    ("volume:attachment_get_all", READER, "List attachments.", [("GET", "/volume/v3/{project_id}/attachments")]),
    # -- bare metal (Ironic v1): an administrator's (or a service's, acting for one) -----------
    ("baremetal:node:create", f"{ADMIN} or {SERVICE}", "Enrol a node.", [("POST", "/baremetal/v1/nodes")]),
    ("baremetal:node:get", f"{ADMIN} or {SERVICE}", "Show a node (its states, its ports).",
     [("GET", "/baremetal/v1/nodes/{node_ident}"), ("GET", "/baremetal/v1/nodes/{node_ident}/states")]),
    ("baremetal:node:list", f"{ADMIN} or {SERVICE}", "List nodes.",
     [("GET", "/baremetal/v1/nodes"), ("GET", "/baremetal/v1/nodes/detail")]),
    ("baremetal:node:update", f"{ADMIN} or {SERVICE}", "Update a node (JSON patch).",
     [("PATCH", "/baremetal/v1/nodes/{node_ident}")]),
    ("baremetal:node:delete", f"{ADMIN} or {SERVICE}", "Delete a node.", [("DELETE", "/baremetal/v1/nodes/{node_ident}")]),
    ("baremetal:node:set_maintenance", f"{ADMIN} or {SERVICE}", "Put a node in maintenance.",
     [("PUT", "/baremetal/v1/nodes/{node_ident}/maintenance")]),
    ("baremetal:node:clear_maintenance", f"{ADMIN} or {SERVICE}", "Take a node out of maintenance.",
     [("DELETE", "/baremetal/v1/nodes/{node_ident}/maintenance")]),
    ("baremetal:node:set_provision_state", f"{ADMIN} or {SERVICE}",
     "Send a provision verb (manage, provide, adopt, abort, deleted, snapshot).",
     [("PUT", "/baremetal/v1/nodes/{node_ident}/states/provision")]),
    ("baremetal:node:set_power_state", f"{ADMIN} or {SERVICE}", "Power a node on or off, reboot it.",
     [("PUT", "/baremetal/v1/nodes/{node_ident}/states/power")]),
    ("baremetal:node:validate", f"{ADMIN} or {SERVICE}", "Validate a node's interfaces.",
     [("GET", "/baremetal/v1/nodes/{node_ident}/validate")]),
    ("baremetal:port:get", f"{ADMIN} or {SERVICE}", "Show a port.", [("GET", "/baremetal/v1/ports/{port_id}")]),
    ("baremetal:port:list", f"{ADMIN} or {SERVICE}", "List ports.",
     [("GET", "/baremetal/v1/ports"), ("GET", "/baremetal/v1/nodes/{node_ident}/ports")]),
    ("baremetal:port:create", f"{ADMIN} or {SERVICE}", "Create a port.", [("POST", "/baremetal/v1/ports")]),
    ("baremetal:port:update", f"{ADMIN} or {SERVICE}", "Update a port (JSON patch).",
     [("PATCH", "/baremetal/v1/ports/{port_id}")]),
    ("baremetal:port:delete", f"{ADMIN} or {SERVICE}", "Delete a port.", [("DELETE", "/baremetal/v1/ports/{port_id}")]),
    # (the agent's lookup and heartbeat need no token: the per-node agent token is their credential)
    # -- compute hosts (the host API of `freezeframe compute`) -------------------------------
    ("freezeframe:host:operate", SERVICE, "The host-bound steps on a compute host (only services call them).",
     [("*", "/host/v1/...")]),
    ("os_compute_api:os-services:list", ADMIN, "List the compute hosts and whether they are up.",
     [("GET", "/compute/v2.1/os-services")]),
    # -- workflows --------------------------------------------------------------------------
    ("freezeframe:workflow:list", READER, "List workflows.", [("GET", "/v1/workflows")]),
    ("freezeframe:workflow:show", READER, "Show a workflow.", [("GET", "/v1/workflows/{id}")]),
    ("freezeframe:workflow:cancel", MEMBER, "Cancel a workflow.", [("DELETE", "/v1/workflows/{id}")]),
    # -- operations -------------------------------------------------------------------------
    ("freezeframe:health:detailed", ADMIN, "The detailed health check.", [("GET", "/healthcheck?detailed")]),
    ("freezeframe:metrics:scrape", ADMIN, "Scrape the Prometheus metrics (unless metrics.public).",
     [("GET", "/metrics")]),
]


def list_rules() -> list[oslo_policy.RuleDefault]:
    """Every default (oslo.policy's ``oslo.policy.policies`` entry point uses this)."""
    base = [oslo_policy.RuleDefault(name, check, description=desc) for name, check, desc in BASE_RULES]
    ops = [oslo_policy.DocumentedRuleDefault(name, check, desc or name,
                                             [{"method": m, "path": p} for m, p in paths])
           for name, check, desc, paths in RULES]
    return base + ops


def _remember_rule_signatures() -> None:
    """oslo.policy asks ``inspect.getfullargspec`` of every rule's ``__call__`` on every check
    (to pass ``current_rule`` to the checks that take it): two thirds of an authorization's
    time here (~200 of ~320 us). The answer belongs to the check's class: remembered per
    ``__call__``, the same decision at once. Left alone if oslo.policy's private helper changed."""
    original = getattr(_checks, "_check", None)
    if original is None or getattr(original, "_freezeframe", False) or \
            list(inspect.signature(original).parameters) != ["rule", "target", "creds", "enforcer", "current_rule"]:
        return
    takes_current: dict[Any, bool] = {}

    def _check(rule, target, creds, enforcer, current_rule):
        call = getattr(type(rule), "__call__", None)
        known = takes_current.get(call)
        if known is None:
            known = takes_current[call] = len(inspect.getfullargspec(rule.__call__).args) > 4
        return rule(target, creds, enforcer, current_rule) if known else rule(target, creds, enforcer)
    _check._freezeframe = True
    _check.original = original
    _checks._check = _check


_remember_rule_signatures()


class _Enforcer(oslo_policy.Enforcer):
    """oslo.policy's enforcer, looking for a changed policy file at most once a second rather
    than on every check (a changed file still takes effect within a second)."""

    recheck_after = 1.0
    _checked = float("-inf")

    def load_rules(self, force_reload: bool = False) -> None:
        now = time.monotonic()
        if force_reload or not self.rules or now - self._checked >= self.recheck_after:
            super().load_rules(force_reload)
            self._checked = now


class Policy:
    """The enforcer: ``authorize(ctx, "add_image", {"project_id": ...})`` or a 403."""

    def __init__(self, policy_file: Path | None = None) -> None:
        conf = cfg.ConfigOpts()
        conf([], project="freezeframe", default_config_files=[], default_config_dirs=[])
        path = str(policy_file) if policy_file is not None and policy_file.exists() else None
        self._enforcer = _Enforcer(conf, policy_file=path or "/nonexistent/freezeframe-policy.yaml",
                                              use_conf=True)
        self._enforcer.register_defaults(list_rules())
        try:
            self._enforcer.load_rules()
        except Exception as exc:  # a malformed operator file must stop the service, clearly
            raise errors.Invalid(f"policy file {policy_file}: {exc}") from None
        if path:
            LOG.info("policy: the defaults overridden by %s", path)

    def check(self, ctx: RequestContext, action: str, target: Mapping[str, Any] | None = None) -> bool:
        target = dict(target or {})
        target.setdefault("project_id", ctx.project_id)
        return self._enforcer.enforce(action, target, ctx.credentials())

    def authorize(self, ctx: RequestContext, action: str, target: Mapping[str, Any] | None = None) -> None:
        if not self.check(ctx, action, target):
            raise errors.Forbidden(f"Policy doesn't allow {action} to be performed.")


def sample() -> str:
    """The defaults as a commented YAML policy file."""
    lines = ["# Freezeframe's default policy. Uncomment and change a rule to override it.", ""]
    for rule in list_rules():
        if rule.description:
            lines.append(f"# {rule.description}")
        lines.append(f'#"{rule.name}": "{rule.check_str}"')
        lines.append("")
    return "\n".join(lines)
