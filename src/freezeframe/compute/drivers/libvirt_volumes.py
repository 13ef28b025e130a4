"""The libvirt driver's volumes (seed 002), a part of ``LibvirtDriver``.

A volume is a file disk whose serial is the volume id, attached live and to the persistent
definition. Its assisted snapshots are external disk-only snapshots onto the overlay the volume
driver made (REUSE_EXT; Nova's ``_volume_snapshot_create``), quiesced through the guest agent
within a bounded freeze; its deletes are block jobs (``blockCommit`` of a file below the active
one, ``blockRebase`` of the active one; Nova's ``_volume_snapshot_delete``) polled for their
progress, or ``qemu-img`` (``qcow2chain.py``) when the domain is not running. After each, the
persistent definition names the file QEMU runs on, so a stop/start opens the right one (libvirt
9 does so itself; we check). Every step is idempotent: what is already done is not redone, and
a block job an earlier attempt left running is seen through.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import libvirt

from freezeframe.common import errors
from freezeframe.compute.drivers import libvirt_agent as agent
from freezeframe.compute.drivers import libvirt_xml as lxml
from freezeframe.compute.drivers import qcow2chain
from freezeframe.compute.drivers.base import DriverError, QuiesceFailed, VolumeDisk, VolumeJob

LOG = logging.getLogger(__name__)
# A live detach completes when the guest releases the device (ACPI PCI hot-unplug): a guest
# that does not (no ACPI, hung, still booting) keeps it; we wait this long, then say so.
DETACH_TIMEOUT = 20.0
_LIVE, _CONFIG = libvirt.VIR_DOMAIN_AFFECT_LIVE, libvirt.VIR_DOMAIN_AFFECT_CONFIG
_DISK_SNAPSHOT_FLAGS = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
                        | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT)


F = TypeVar("F", bound=Callable[..., Any])


def _guarded(what: str) -> Callable[[F], F]:
    """Any libvirt failure inside (a domain gone meanwhile, a refused call) as the driver's errors."""
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(self: LibvirtVolumes, name: str, *args: Any, **kwargs: Any) -> Any:
            with self._errors(f"{what} ({name})"):
                return fn(self, name, *args, **kwargs)
        return run  # type: ignore[return-value]
    return wrap


class LibvirtVolumes:
    """The volume methods of ``LibvirtDriver`` (which gives ``_dom``, ``_errors``,
    ``_cache_mode``, ``_capacity``, ``_frozen`` and ``detach_timeout``)."""

    detach_timeout: float
    _dom: Callable[[str], libvirt.virDomain]
    _errors: Callable[[str], contextlib.AbstractContextManager[None]]
    _cache_mode: Callable[[Path], str]
    _capacity: Callable[[libvirt.virDomain, str, Path], int]
    _frozen: Callable[..., tuple[bool, float]]

    def _xml(self, dom: libvirt.virDomain, *, persistent: bool = False) -> str:
        """The live definition (the persistent one of a domain that is not running), or with
        ``persistent`` the one the next start uses."""
        with self._errors(f"domain {dom.name()}"):
            return dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if persistent else 0)

    def _attached(self, dom: libvirt.virDomain, volume_id: str) -> VolumeDisk:
        disk = lxml.volume_disk(self._xml(dom), volume_id)
        if disk is None:
            raise DriverError(f"volume {volume_id} is not attached to {dom.name()}")
        return disk

    def _persist(self, dom: libvirt.virDomain, volume_id: str, path: Path, fmt: str) -> None:
        """Point the persistent definition's disk of the volume at ``path`` (``fmt``), dropping
        the chain libvirt recorded under it: the next start reads the chain from the images."""
        if not dom.isPersistent():
            return
        element = lxml.volume_element(self._xml(dom, persistent=True), volume_id)
        if element is None:
            return
        with self._errors(f"updating the definition of {dom.name()}"):
            dom.updateDeviceFlags(lxml.with_source(element, path, fmt), _CONFIG)

    def _sync_persistent(self, dom: libvirt.virDomain, volume_id: str) -> None:
        """After a change to a running domain's chain: the persistent definition must open the
        file QEMU now runs on (libvirt 9 already updates it; older ones may not)."""
        if not dom.isPersistent() or not dom.isActive():
            return
        live = lxml.volume_chain(self._xml(dom), volume_id)
        saved = lxml.volume_chain(self._xml(dom, persistent=True), volume_id)
        if not live or not saved or (saved[0] == live[0] and (len(saved) == 1 or saved == live)):
            return
        LOG.info("%s: the persistent definition of volume %s moves to %s", dom.name(), volume_id, live[0][0])
        self._persist(dom, volume_id, *live[0])

    @staticmethod
    def _not_saved(dom: libvirt.virDomain) -> None:
        if dom.hasManagedSaveImage(0):
            raise errors.Conflict(f"{dom.name()} has a saved state that holds its disks' chains: start it first")

    @_guarded("attaching a volume")
    def attach_volume(self, name: str, disk: VolumeDisk) -> None:
        disk = VolumeDisk(disk.volume_id, disk.target, qcow2chain.host_path(disk.path, "the volume's path"),
                          qcow2chain.image_format(disk.format))
        dom = self._dom(name)
        flags = 0
        for persistent, flag in ((False, _LIVE), (True, _CONFIG)):
            if (persistent and not dom.isPersistent()) or (not persistent and not dom.isActive()):
                continue
            xml = self._xml(dom, persistent=persistent)
            have = lxml.volume_disk(xml, disk.volume_id)
            if have is None:
                if lxml.disk_target_used(xml, disk.target):
                    raise errors.Conflict(f"{name} already has a disk {disk.target}")
                flags |= flag
            elif have.target != disk.target:
                raise errors.Conflict(f"volume {disk.volume_id} is attached to {name} as {have.target}")
            elif (have.path, have.format) != (disk.path, disk.format):
                if not persistent:
                    raise errors.Conflict(f"volume {disk.volume_id} runs on {have.path} in {name}, not {disk.path}")
                # The connection info was refreshed (e.g. after a snapshot): the next start opens it.
                self._persist(dom, disk.volume_id, disk.path, disk.format)
        if flags:
            cache = self._cache_mode(disk.path)
            with self._errors(f"attaching volume {disk.volume_id} to {name}"):
                dom.attachDeviceFlags(lxml.volume_disk_xml(disk, cache), flags)
            LOG.info("attached volume %s to %s as %s (%s)", disk.volume_id, name, disk.target, disk.path)

    @_guarded("detaching a volume")
    def detach_volume(self, name: str, volume_id: str) -> None:
        dom = self._dom(name)
        if dom.isPersistent():       # first, as Nova does: a stop then drops it whatever the guest does
            element = lxml.volume_element_xml(self._xml(dom, persistent=True), volume_id)
            if element is not None:
                with self._errors(f"detaching volume {volume_id} from the definition of {name}"):
                    dom.detachDeviceFlags(element, _CONFIG)
        if not dom.isActive():
            return
        xml = self._xml(dom)
        element = lxml.volume_element_xml(xml, volume_id)
        if element is None:
            return
        alias = lxml.disk_alias(xml, volume_id)
        t0 = time.monotonic()
        try:
            # Asynchronous: the guest's answer (DEVICE_REMOVED) is awaited below, boundedly.
            if alias:
                dom.detachDeviceAlias(alias, _LIVE)
            else:
                dom.detachDeviceFlags(element, _LIVE)
        except libvirt.libvirtError as exc:
            # An unplug already requested by an earlier attempt is awaited like a new one.
            if dom.isActive() and lxml.volume_element(self._xml(dom), volume_id) is not None \
                    and "unplug" not in (exc.get_error_message() or ""):
                raise DriverError(f"detaching volume {volume_id} from {name}: {exc.get_error_message()}") from exc
        while dom.isActive() and lxml.volume_element(self._xml(dom), volume_id) is not None:
            if time.monotonic() - t0 > self.detach_timeout:
                raise DriverError(
                    f"the guest of {name} did not release volume {volume_id} within {self.detach_timeout:g} s: "
                    "a live detach needs the guest's cooperation (ACPI PCI hot-unplug). The request stands; "
                    "the volume is gone from the persistent definition, so a stop removes it")
            time.sleep(0.1)
        LOG.info("detached volume %s from %s in %.2f s", volume_id, name, time.monotonic() - t0)

    @_guarded("listing volumes")
    def volume_disks(self, name: str) -> list[VolumeDisk]:
        return lxml.volume_disks(self._xml(self._dom(name)))

    @_guarded("snapshot of a volume")
    def volume_snapshot_create(self, name: str, volume_id: str, new_file: Path, *, quiesce: bool,
                               require_quiesce: bool, max_frozen: float = 1.0) -> tuple[bool, float]:
        new_file = qcow2chain.host_path(new_file, "new_file")
        dom = self._dom(name)
        current = self._attached(dom, volume_id)
        if current.path == new_file:
            self._sync_persistent(dom, volume_id)
            return False, 0.0                                   # done already
        if new_file.parent != current.path.parent:
            raise errors.Invalid(f"new_file {new_file} is not in the directory of the volume's file {current.path}")
        qcow2chain.check_overlay(new_file, current.path, current.format)
        if not dom.isActive():
            self._not_saved(dom)
            self._persist(dom, volume_id, new_file, "qcow2")
            LOG.info("volume %s of shut-off %s continues on %s", volume_id, name, new_file)
            return False, 0.0
        xml = self._xml(dom)
        snapshot = lxml.disk_snapshot_xml(lxml.all_disk_targets(xml), current.target, new_file)
        want = quiesce or require_quiesce
        agent_ok = (want and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING and lxml.has_agent_channel(xml)
                    and agent.ping(dom, 2.0))
        if require_quiesce and not agent_ok:
            raise QuiesceFailed(f"no guest agent answers in {name}: cannot quiesce")

        def take() -> None:
            with self._errors(f"snapshot of volume {volume_id} in {name}"):
                dom.snapshotCreateXML(snapshot, _DISK_SNAPSHOT_FLAGS)

        t0 = time.monotonic()
        try:
            if agent_ok:
                quiesced, frozen = self._frozen(dom, take, max_frozen=max_frozen, require_quiesce=require_quiesce)
            else:
                take()
                quiesced, frozen = False, 0.0
        except BaseException:
            self._undo_volume_snapshot(dom, current, new_file)
            raise
        self._sync_persistent(dom, volume_id)
        LOG.info("volume %s of %s continues on %s (quiesced=%s, frozen %.3f s, %.3f s)", volume_id, name,
                 new_file, quiesced, frozen, time.monotonic() - t0)
        return quiesced, frozen

    def _undo_volume_snapshot(self, dom: libvirt.virDomain, before: VolumeDisk, new_file: Path) -> None:
        """A snapshot that failed after the disk moved to ``new_file`` (a thaw that failed, a
        freeze that ran out): move it back (active commit + pivot), since the volume side
        deletes ``new_file`` when compute reports an error."""
        try:
            now = lxml.volume_disk(self._xml(dom), before.volume_id)
        except DriverError:
            return
        if now is None or now.path != new_file:
            return
        LOG.warning("%s: moving volume %s back onto %s after a failed snapshot", dom.name(), before.volume_id,
                    before.path)
        try:
            self._block_job(dom, now.target, lambda: dom.blockCommit(
                now.target, str(before.path), None, 0, libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE),
                report=None, size=self._capacity(dom, now.target, new_file), pivot=True)
            self._flush(dom)
            self._sync_persistent(dom, before.volume_id)
        except DriverError as exc:
            raise DriverError(f"volume {before.volume_id} of {dom.name()} stays on {new_file} after a failed "
                              f"snapshot (moving it back failed: {exc}): that file must not be removed") from exc

    def _move_back(self, dom: libvirt.virDomain, before: VolumeDisk, new_file: Path) -> None:
        """Undo a switch of the volume onto ``new_file`` that a group snapshot made and could not
        complete: back onto ``before.path`` with what the guest wrote meanwhile (running: active
        commit + pivot; not running: ``qemu-img commit`` and the persistent definition), then
        ``new_file`` emptied again (``qcow2chain.reset_overlay``) unless the volume's chain
        still holds it — so a retry may switch onto it again. Nothing to do for a volume that
        is not on ``new_file`` (never switched, moved back already, or detached)."""
        if dom.isActive():
            self._undo_volume_snapshot(dom, before, new_file)
            chain = [p for p, _f in lxml.volume_chain(self._xml(dom), before.volume_id)]
        else:
            now = lxml.volume_disk(self._xml(dom), before.volume_id)
            if now is None:
                return
            if now.path == new_file:
                self._not_saved(dom)
                LOG.warning("%s (not running): moving volume %s back onto %s after a failed snapshot", dom.name(),
                            before.volume_id, before.path)
                path, fmt = qcow2chain.merge(new_file, "qcow2", file_to_merge=new_file.name,
                                             merge_target_file=before.path.name)
                self._persist(dom, before.volume_id, path, fmt)
                now = VolumeDisk(now.volume_id, now.target, path, fmt)
            chain = [layer.path for layer in qcow2chain.chain(now.path, now.format)]
        if chain and new_file not in chain and new_file.exists():
            qcow2chain.reset_overlay(new_file)

    @_guarded("merging a volume's chain")
    def volume_snapshot_delete(self, name: str, volume_id: str, *, file_to_merge: str | None,
                               merge_target_file: str | None, progress: VolumeJob | None = None) -> None:
        """Nova's semantics (``qcow2chain``): with ``merge_target_file`` None the active file is
        rebased onto ``file_to_merge`` (None: flattened), else ``file_to_merge`` is committed
        into ``merge_target_file``."""
        file_to_merge = qcow2chain.file_name(file_to_merge, "file_to_merge")
        merge_target_file = qcow2chain.file_name(merge_target_file, "merge_target_file")
        if merge_target_file is not None and file_to_merge is None:
            raise errors.Invalid("a commit (merge_target_file set) needs file_to_merge")
        report = progress.report if progress is not None else None
        dom = self._dom(name)
        disk = self._attached(dom, volume_id)
        if not dom.isActive():
            self._not_saved(dom)
            path, fmt = qcow2chain.merge(disk.path, disk.format, file_to_merge=file_to_merge,
                                         merge_target_file=merge_target_file, progress=report)
            self._persist(dom, volume_id, path, fmt)             # always: the chain below it changed
            return
        self._merge_live(dom, disk, file_to_merge, merge_target_file, report)
        # Before the volume side hears "done" (and deletes what was merged away), also when
        # an earlier attempt did the merge and died before this.
        self._flush(dom)
        self._sync_persistent(dom, volume_id)

    def _merge_live(self, dom: libvirt.virDomain, disk: VolumeDisk, file_to_merge: str | None,
                    merge_target_file: str | None, report: Callable[[int, int], None] | None) -> None:
        name, volume_id, target = dom.name(), disk.volume_id, disk.target
        size = self._capacity(dom, target, disk.path)
        self._finish_block_job(dom, target, report, size)        # one an earlier attempt left running
        chain = [p for p, _f in lxml.volume_chain(self._xml(dom), volume_id)]
        here = chain[0].parent

        def at(file: str | None) -> int | None:
            return None if file is None else next((i for i, p in enumerate(chain) if p == here / file), None)

        if merge_target_file is None:
            base = at(file_to_merge)
            if (base == 1) if file_to_merge else len(chain) == 1:
                return                                          # already on that base
            if file_to_merge and (base is None or base < 2):
                raise DriverError(f"{file_to_merge} is not below the backing file of {chain[0].name} in {name}")
            if base is None:
                start = lambda: dom.blockRebase(target, None, 0, 0)                      # noqa: E731
            else:
                start = lambda: dom.blockRebase(target, str(chain[base]), 0,            # noqa: E731
                                                libvirt.VIR_DOMAIN_BLOCK_REBASE_RELATIVE)
            self._block_job(dom, target, start, report=report, size=size, pivot=False)
            done = lambda c: (len(c) > 1 and c[1] == chain[base]) if base is not None else len(c) == 1  # noqa: E731
        else:
            top, into = at(file_to_merge), at(merge_target_file)
            if top is None:
                return                                          # merged already
            if into is None or into <= top:
                raise DriverError(f"{merge_target_file} is not below {file_to_merge} in the chain of {name}")
            if top == 0:      # the active file itself: an active commit, then QEMU pivots to its target
                start = lambda: dom.blockCommit(target, str(chain[into]), None, 0,                 # noqa: E731
                                                libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE
                                                | libvirt.VIR_DOMAIN_BLOCK_COMMIT_RELATIVE)
            else:
                start = lambda: dom.blockCommit(target, str(chain[into]), str(chain[top]), 0,      # noqa: E731
                                                libvirt.VIR_DOMAIN_BLOCK_COMMIT_RELATIVE)
            self._block_job(dom, target, start, report=report, size=size, pivot=top == 0)
            done = lambda c: chain[top] not in c                                                 # noqa: E731
        self._await_chain(dom, volume_id, done)
        LOG.info("%s: volume %s merged (%s)", name, volume_id, "rebase" if merge_target_file is None else "commit")

    @staticmethod
    def _flush(dom: libvirt.virDomain) -> None:
        """Make a merge durable before the volume side deletes what it merged away: after a
        pull QEMU has written the active file's new backing into its header, but the tables
        mapping the data it copied stay in its cache until something flushes them (seen:
        ``qemu-img`` read zeros where the data had been pulled in; a host crash then would
        lose it). libvirt's API has no flush; stopping the vCPUs flushes every disk, so a
        pause of a few milliseconds does it."""
        if dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
            return
        t0 = time.monotonic()
        dom.suspend()
        LibvirtVolumes._resume_vcpus(dom, "after flushing its disks")
        LOG.info("%s: flushed its disks (paused %.3f s)", dom.name(), time.monotonic() - t0)

    @staticmethod
    def _resume_vcpus(dom: libvirt.virDomain, why: str) -> None:
        """Resume a domain we paused (a few tries: a resume right after a pause may be refused)."""
        for attempt in range(3):
            try:
                dom.resume()
                return
            except libvirt.libvirtError as exc:
                if dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                    return
                if attempt == 2:
                    raise DriverError(f"{dom.name()} stays paused {why}: {exc.get_error_message()}") from exc
                time.sleep(0.1)

    def _await_chain(self, dom: libvirt.virDomain, volume_id: str, done: Callable[[list[Path]], bool]) -> None:
        """libvirt updates the disk's chain as it processes the job's end: wait (boundedly)."""
        deadline = time.monotonic() + 10
        while True:
            chain = [p for p, _f in lxml.volume_chain(self._xml(dom), volume_id)]
            if done(chain):
                return
            if time.monotonic() > deadline:
                raise DriverError(f"the block job on volume {volume_id} of {dom.name()} ended, but the chain is "
                                  f"{[str(p) for p in chain]}")
            time.sleep(0.05)

    def _block_job(self, dom: libvirt.virDomain, target: str, start: Callable[[], object], *,
                   report: Callable[[int, int], None] | None, size: int, pivot: bool) -> None:
        with self._errors(f"starting a block job on {dom.name()}:{target}"):
            start()
        self._wait_block_job(dom, target, report, size, pivot=pivot)

    def _finish_block_job(self, dom: libvirt.virDomain, target: str,
                          report: Callable[[int, int], None] | None, size: int) -> None:
        """A commit or pull already running on the disk (ours, from an attempt that died) is
        seen through first; an active commit is pivoted as ours would be."""
        with self._errors(f"block job of {dom.name()}:{target}"):
            info = dom.blockJobInfo(target, 0)
        if not info:
            return
        kind = info.get("type")
        if kind not in (libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_PULL, libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT,
                        libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT):
            raise errors.Conflict(f"another block job (type {kind}) runs on {dom.name()}:{target}")
        LOG.info("%s:%s: waiting for the block job an earlier attempt started", dom.name(), target)
        self._wait_block_job(dom, target, report, size,
                             pivot=kind == libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT)

    def _wait_block_job(self, dom: libvirt.virDomain, target: str, report: Callable[[int, int], None] | None,
                        size: int, *, pivot: bool) -> None:
        """Poll the job (0.1 s, backing off to 0.5 s) until it ends, reporting (cur, end); an
        active commit is pivoted once ready (libvirt keeps cur < end until then). Given up and
        aborted past ``qcow2chain.job_timeout(size)``."""
        limit = qcow2chain.job_timeout(size)
        deadline = time.monotonic() + limit
        delay, total = 0.1, size
        while True:
            with self._errors(f"block job of {dom.name()}:{target}"):
                info = dom.blockJobInfo(target, 0)
            if not info:
                break
            cur, end = int(info.get("cur", 0)), int(info.get("end", 0))
            if end:
                total = end
                if report is not None:
                    report(min(cur, end), end)
            if pivot and end and cur >= end:
                try:
                    dom.blockJobAbort(target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
                    break
                except libvirt.libvirtError as exc:
                    if "not ready" not in (exc.get_error_message() or "") and dom.blockJobInfo(target, 0):
                        raise DriverError(f"pivoting {dom.name()}:{target}: {exc.get_error_message()}") from exc
            if time.monotonic() > deadline:
                with contextlib.suppress(libvirt.libvirtError):
                    dom.blockJobAbort(target, 0)
                raise DriverError(f"the block job on {dom.name()}:{target} did not finish in {limit:.0f} s "
                                  f"({cur} of {end} bytes): aborted")
            time.sleep(delay)
            delay = min(0.5, delay * 1.5)
        if report is not None:
            report(total, total)
