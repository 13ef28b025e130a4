"""qcow2file: volumes as files on a share directory, snapshots as qcow2 overlays (Cinder's
RemoteFS family, the layout its NFS driver keeps, so the chain is the one operators know).

    volume-<vid>              the volume's first file, raw and sparse
    volume-<vid>.<snapid>     a qcow2 overlay made AT snapshot <snapid>; its backing file is
                              recorded by RELATIVE name (the share is mounted at different
                              paths on different hosts), its backing format always set
    volume-<vid>.info         {"active": <file the volume is now>, <snapid>: <overlay made at
                              that snapshot>}; no info file = no snapshots

A snapshot's data is the BACKING file of ``info[snapid]``. The info file is the truth; the
provider dicts the service stores are hints, validated but never followed blindly.

Every file name read from the info file, a provider dict, admin metadata or a qcow2 header is
checked against ``volume-<this volume's id>(.<uuid>)?`` and must stay inside the share: a name
is never turned into a path before that. A file's format comes from its NAME (the first file
raw, overlays qcow2), never from probing: a guest can write a qcow2 header into a raw volume.

Crash safety: every operation orders its steps so that a retry of the same call finds either
the old state or a state it can finish from (see each method), and the info file is replaced
atomically.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from freezeframe.common import errors
from freezeframe.volumes.drivers import qemuimg
from freezeframe.volumes.drivers.base import (Assisted, DataSource, SnapshotRef, VolumeDriver,
                                              VolumeDriverError, VolumeRef)

LOG = logging.getLogger(__name__)
GiB = 1 << 30
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_UUID_RE = re.compile(rf"^{_UUID}$")
_NAME_RE = re.compile(rf"^volume-({_UUID})(?:\.({_UUID}))?$")
# Every name this driver ever makes for a volume (delete_volume removes exactly these).
_OWN_SUFFIX = re.compile(rf"^(?:\.{_UUID}|\.info|\.info\.tmp|\.part|\.download)$")
MAX_CHAIN = 512


class UnsafeFileName(VolumeDriverError):
    """A file name that is not one of this volume's files (refused, never followed)."""


def _check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not _UUID_RE.match(value):
        raise UnsafeFileName(f"{what} {value!r} is not a lower-case UUID")
    return value


class Qcow2FileDriver(VolumeDriver):
    name = "qcow2file"
    assisted = True

    def __init__(self, share_dir: Path, *, fsync: bool = True) -> None:
        self.share = Path(share_dir).absolute()
        self.share.mkdir(parents=True, exist_ok=True)
        self._real_share = self.share.resolve()
        self._fsync = fsync
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # -- names and paths ------------------------------------------------------------------------
    @staticmethod
    def _base(vid: str) -> str:
        return f"volume-{vid}"

    def _check(self, vid: str, name: Any, what: str = "file name") -> str:
        """``name`` if it is one of volume ``vid``'s file names, else UnsafeFileName."""
        m = _NAME_RE.match(name) if isinstance(name, str) else None
        if m is None or m.group(1) != vid:
            raise UnsafeFileName(f"{what} {name!r} is not a file of volume {vid}")
        return name

    def _path(self, vid: str, name: Any) -> Path:
        """The path of a checked name; refuses a symlink (it could lead out of the share)."""
        path = self.share / self._check(vid, name)
        if path.is_symlink() or path.parent.resolve() != self._real_share:
            raise UnsafeFileName(f"{name!r} leads outside the volume share")
        return path

    def _fmt(self, vid: str, name: str) -> str:
        return "raw" if name == self._base(vid) else "qcow2"

    def _backing(self, vid: str, name: str) -> str | None:
        """The backing file recorded in ``name``'s header: a checked name in the share, or None."""
        if self._fmt(vid, name) == "raw":
            return None
        img = qemuimg.info(self._path(vid, name), "qcow2")
        if not img.backing_file:
            return None
        backing = img.backing_file
        if os.path.isabs(backing):     # an absolute name is accepted only inside this share
            if Path(backing).parent.resolve() != self._real_share:
                raise UnsafeFileName(f"{name} has a backing file outside the share: {backing!r}")
            backing = Path(backing).name
        backing = self._check(vid, backing, f"backing file of {name}")
        if img.backing_format != self._fmt(vid, backing):
            raise VolumeDriverError(f"{name} records backing format {img.backing_format!r} for {backing}")
        return backing

    def _overlay_of(self, vid: str, name: str) -> str | None:
        """The backing of ``name`` if it is a readable overlay; None if missing or unreadable
        (a file a crash left half-made)."""
        if not self._path(vid, name).exists():
            return None
        try:
            return self._backing(vid, name)
        except UnsafeFileName:
            raise
        except VolumeDriverError:
            return None

    def _chain(self, vid: str, active: str) -> list[str]:
        """The files from ``active`` down to the bottom of its backing chain."""
        chain = [active]
        while (below := self._backing(vid, chain[-1])) is not None:
            if below in chain or len(chain) >= MAX_CHAIN:
                raise VolumeDriverError(f"the backing chain of {active} loops or is too long")
            chain.append(below)
        return chain

    def _info_path(self, vid: str) -> Path:
        return self.share / f"volume-{vid}.info"

    # -- the info file --------------------------------------------------------------------------
    def _read_info(self, vid: str) -> dict[str, str] | None:
        path = self._info_path(vid)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise VolumeDriverError(f"cannot read {path.name}: {exc.strerror}") from exc
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise VolumeDriverError(f"{path.name} is not JSON") from exc
        if not isinstance(data, dict) or "active" not in data:
            raise VolumeDriverError(f"{path.name} has no active file")
        for key, value in data.items():
            if key != "active":
                _check_id(key, f"snapshot id in {path.name}")
            self._check(vid, value, f"{key} in {path.name}")
        return data

    def _write_info(self, vid: str, info: dict[str, str]) -> None:
        """Atomically: a temporary file, fsync, rename over, fsync the directory."""
        path = self._info_path(vid)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(info, f, indent=1, sort_keys=True)
            if self._fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        self._sync_dir()

    def _sync_dir(self) -> None:
        if not self._fsync:
            return
        fd = os.open(self.share, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _sync_file(self, path: Path) -> None:
        if not self._fsync:
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _state(self, vid: str) -> dict[str, str]:
        """The info file, or what having none means: no snapshots, the first file active."""
        return self._read_info(vid) or {"active": self._base(vid)}

    # -- helpers --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, vid: str) -> Iterator[None]:
        """One operation at a time per volume in this process (the volume host runs one)."""
        with self._locks_guard:
            lock = self._locks.setdefault(vid, threading.Lock())
        with lock:
            yield

    def _vid(self, volume: VolumeRef) -> str:
        """The volume's id, its provider checked: a bad name there is refused, not ignored."""
        vid = _check_id(volume.id, "volume id")
        if "active" in volume.provider:
            self._check(vid, volume.provider["active"], "provider active")
        if volume.provider.get("format", "raw") not in qemuimg.FORMATS:
            raise UnsafeFileName(f"provider format {volume.provider.get('format')!r} is unknown")
        return vid

    def _sid(self, snapshot: SnapshotRef, vid: str) -> str:
        sid = _check_id(snapshot.id, "snapshot id")
        if snapshot.volume_id != vid:
            raise VolumeDriverError(f"snapshot {sid} is not of volume {vid}")
        if "file" in snapshot.provider:
            self._check(vid, snapshot.provider["file"], "snapshot provider file")
        return sid

    def _provider(self, vid: str, active: str) -> dict[str, Any]:
        return {"active": active, "format": self._fmt(vid, active)}

    def _unlink(self, vid: str, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(vid, name).unlink()

    def _drop_leftover(self, vid: str, info: dict[str, str], candidates: list[Any]) -> None:
        """Remove a file a crashed operation left behind, if nothing references it any more."""
        referenced = set(self._chain(vid, info["active"])) | set(info.values())
        for name in candidates:
            if name and name not in referenced:
                self._unlink(vid, self._check(vid, name))

    def _new_overlay(self, vid: str, name: str, backing: str) -> None:
        """``name``: a qcow2 over ``backing`` (relative), of the backing's virtual size."""
        path = self._path(vid, name)
        size = qemuimg.info(self._path(vid, backing), self._fmt(vid, backing)).virtual_size
        path.unlink(missing_ok=True)
        qemuimg.create(path, "qcow2", size, backing=backing, backing_fmt=self._fmt(vid, backing))
        self._sync_file(path)

    def _source(self, vid: str, name: str) -> DataSource:
        path = self._path(vid, name)
        fmt = self._fmt(vid, name)
        return DataSource(path=path, format=fmt, virtual_size=qemuimg.info(path, fmt).virtual_size)

    # -- volumes ----------------------------------------------------------------------------------
    def create_volume(self, volume: VolumeRef) -> dict[str, Any]:
        """A sparse raw file. A retry finds the file and sizes it again (a no-op)."""
        vid = self._vid(volume)
        with self._locked(vid):
            state = self._state(vid)
            path = self._path(vid, self._base(vid))
            if state["active"] == self._base(vid):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o660)
                try:
                    if os.fstat(fd).st_size < volume.size * GiB:
                        os.ftruncate(fd, volume.size * GiB)
                    if self._fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                self._sync_dir()
            return self._provider(vid, state["active"])

    def _copy_in(self, volume: VolumeRef, source: DataSource) -> dict[str, Any]:
        """The volume's first file made from ``source``: converted into ``volume-<vid>.part``,
        pre-sized to the volume (all holes, so only data is written and no resize follows),
        then renamed. A retry that finds the final file reuses it; a partial one is redone."""
        vid = self._vid(volume)
        size = volume.size * GiB
        if source.virtual_size > size:
            raise errors.Invalid(f"the source holds {source.virtual_size} bytes; volume {vid} has {size}")
        with self._locked(vid):
            final = self._path(vid, self._base(vid))
            if final.exists():
                return self._provider(vid, self._state(vid)["active"])
            part = self.share / f"volume-{vid}.part"
            part.unlink(missing_ok=True)
            try:
                with open(part, "wb") as f:
                    f.truncate(size)
                qemuimg.convert(source.path, source.format, part, out_fmt="raw", target_is_zero=True)
                self._sync_file(part)
                os.replace(part, final)
            except BaseException:
                part.unlink(missing_ok=True)
                raise
            self._sync_dir()
            return self._provider(vid, self._base(vid))

    def create_volume_from_snapshot(self, volume: VolumeRef, snapshot: SnapshotRef, source: VolumeRef) -> dict[str, Any]:
        return self._copy_in(volume, self.snapshot_source(snapshot, source))

    def create_cloned_volume(self, volume: VolumeRef, source: VolumeRef) -> dict[str, Any]:
        return self._copy_in(volume, self.volume_source(source))

    def import_volume(self, volume: VolumeRef, data: DataSource) -> dict[str, Any]:
        return self._copy_in(volume, data)

    def delete_volume(self, volume: VolumeRef) -> None:
        """Every file of the volume: its first file, overlays, info file and leftovers."""
        vid = _check_id(volume.id, "volume id")
        base = self._base(vid)
        with self._locked(vid):
            for entry in os.scandir(self.share):
                if entry.name == base or (entry.name.startswith(base) and _OWN_SUFFIX.match(entry.name[len(base):])):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)       # a symlink is removed, never followed
            self._sync_dir()

    def extend_volume(self, volume: VolumeRef, new_size: int) -> dict[str, Any]:
        """``qemu-img resize`` of the active file only: the files below keep the size the
        volume had at each snapshot (reads past a backing file's end are zeros)."""
        vid = self._vid(volume)
        with self._locked(vid):
            active = self._state(vid)["active"]
            src = self._source(vid, active)
            if new_size * GiB < src.virtual_size:
                raise errors.Invalid(f"volume {vid} cannot shrink to {new_size} GiB")
            if new_size * GiB > src.virtual_size:
                qemuimg.resize(src.path, src.format, new_size * GiB)
                self._sync_file(src.path)
            return self._provider(vid, active)

    def volume_source(self, volume: VolumeRef) -> DataSource:
        vid = self._vid(volume)
        return self._source(vid, self._state(vid)["active"])

    def connection_info(self, volume: VolumeRef) -> dict[str, Any]:
        vid = self._vid(volume)
        active = self._state(vid)["active"]
        self._path(vid, active)
        return {"driver_volume_type": "qcow2file",
                "data": {"export": str(self.share), "name": active, "format": self._fmt(vid, active),
                         "volume_id": vid, "access_mode": "rw"},
                "serial": vid}

    # -- snapshots, offline ---------------------------------------------------------------------
    def create_snapshot(self, snapshot: SnapshotRef, volume: VolumeRef) -> tuple[dict[str, Any], dict[str, Any]]:
        """A new overlay on the active file, then the info file. A retry after the info file
        was written returns the same; before, the overlay (unreferenced) is made again."""
        vid = self._vid(volume)
        sid = self._sid(snapshot, vid)
        with self._locked(vid):
            info = self._state(vid)
            if sid in info:
                return {"file": info[sid]}, self._provider(vid, info["active"])
            new = f"volume-{vid}.{sid}"
            if new in info.values():
                raise VolumeDriverError(f"{new} is already in the chain of volume {vid}")
            self._new_overlay(vid, new, info["active"])
            info.update({"active": new, sid: new})
            self._write_info(vid, info)
            return {"file": new}, self._provider(vid, new)

    def delete_snapshot(self, snapshot: SnapshotRef, volume: VolumeRef) -> dict[str, Any]:
        """Facts §2, offline: ``qemu-img commit -d`` of the snapshot's overlay into its backing
        (the snapshot's data, needed by nobody else once the snapshot is gone); if the overlay
        was active, its backing becomes active; else the file above it is rebased (``-u``: the
        data is the same) onto that backing. Then the info file, then the overlay is deleted.
        A retry finds the overlay still in the chain (redo: a commit of the same data is
        harmless), out of the chain (the commit and rebase are done), or the snapshot gone from
        the info file (remove the leftover overlay)."""
        vid = self._vid(volume)
        sid = self._sid(snapshot, vid)
        with self._locked(vid):
            info = self._read_info(vid)
            if info is None or sid not in info:
                if info is not None:
                    self._drop_leftover(vid, info, [snapshot.provider.get("file"), f"volume-{vid}.{sid}"])
                return self._provider(vid, (info or self._state(vid))["active"])
            snap_file, active = info[sid], info["active"]
            chain = self._chain(vid, active)
            base = self._backing(vid, snap_file)
            if base is None:                    # a stale record: nothing below to merge into
                del info[sid]
                self._write_info(vid, info)
                self._drop_leftover(vid, info, [snap_file])
                return self._provider(vid, info["active"])
            if snap_file in chain:
                qemuimg.commit(self._path(vid, snap_file), fmt="qcow2")
                if snap_file == active:
                    info["active"] = base
                else:
                    higher = chain[chain.index(snap_file) - 1]
                    qemuimg.rebase(self._path(vid, higher), base, self._fmt(vid, base), unsafe=True)
            elif base not in chain:
                raise VolumeDriverError(f"neither {snap_file} nor {base} is in the chain of volume {vid}")
            del info[sid]
            self._write_info(vid, info)
            self._drop_leftover(vid, info, [snap_file])
            return self._provider(vid, info["active"])

    def snapshot_source(self, snapshot: SnapshotRef, volume: VolumeRef) -> DataSource:
        vid = self._vid(volume)
        sid = self._sid(snapshot, vid)
        info = self._state(vid)
        if sid not in info:
            raise VolumeDriverError(f"volume {vid} has no snapshot {sid} in its info file")
        base = self._backing(vid, info[sid])
        if base is None:
            raise VolumeDriverError(f"the overlay of snapshot {sid} has no backing file")
        return self._source(vid, base)

    # -- snapshots, assisted by compute ---------------------------------------------------------
    def create_snapshot_assisted_begin(self, snapshot: SnapshotRef, volume: VolumeRef) -> Assisted:
        """The overlay compute will continue the disk on (REUSE_EXT: made here, on the current
        active file). Nothing else changes until complete. A retry reuses an overlay already
        on the active file (compute may have it open) and remakes any other."""
        vid = self._vid(volume)
        sid = self._sid(snapshot, vid)
        with self._locked(vid):
            info = self._state(vid)
            if sid in info:                     # completed already
                new = info[sid]
                base = self._backing(vid, new) or info["active"]
            else:
                new, base = f"volume-{vid}.{sid}", info["active"]
                if new in info.values():
                    raise VolumeDriverError(f"{new} is already in the chain of volume {vid}")
                if self._overlay_of(vid, new) != base:
                    self._new_overlay(vid, new, base)
            return Assisted(info={"type": "qcow2", "new_file": new, "snapshot_id": sid},
                            snapshot={"file": new},
                            admin_metadata={"new_file": new, "base_file": base})

    def create_snapshot_assisted_complete(self, snapshot: SnapshotRef, volume: VolumeRef,
                                          admin_metadata: dict[str, str]) -> Assisted:
        """Compute continues the disk on the new file: record it in the info file."""
        vid = self._vid(volume)
        sid = self._sid(snapshot, vid)
        new = self._check(vid, admin_metadata.get("new_file"), "new_file")
        base = self._check(vid, admin_metadata.get("base_file"), "base_file")
        with self._locked(vid):
            info = self._state(vid)
            if info.get(sid) == new:
                return Assisted(snapshot={"file": new}, volume=self._provider(vid, info["active"]))
            if info["active"] != base:
                raise VolumeDriverError(f"volume {vid} moved from {base} to {info['active']} during the snapshot")
            if self._overlay_of(vid, new) != base:
                raise VolumeDriverError(f"{new} is missing or not an overlay of {base}")
            info.update({"active": new, sid: new})
            self._write_info(vid, info)
            return Assisted(snapshot={"file": new}, volume=self._provider(vid, new))

    def create_snapshot_assisted_abort(self, snapshot: SnapshotRef, volume: VolumeRef,
                                       admin_metadata: dict[str, str]) -> Assisted:
        """Remove the overlay begin made — unless the info file already uses it (complete ran)."""
        vid = self._vid(volume)
        sid = self._sid(snapshot, vid)
        new = self._check(vid, admin_metadata.get("new_file", f"volume-{vid}.{sid}"), "new_file")
        with self._locked(vid):
            info = self._state(vid)
            if new == info["active"] or new in info.values():
                return Assisted(snapshot={"file": new}, volume=self._provider(vid, info["active"]))
            self._unlink(vid, new)
            self._sync_dir()
            return Assisted(volume=self._provider(vid, info["active"]))

    def delete_snapshot_assisted_begin(self, snapshot: SnapshotRef, volume: VolumeRef) -> Assisted:
        """What compute must merge (facts §2, Cinder's ``_delete_snapshot_online``); nothing is
        changed here. The snapshot's overlay active -> rebase: the active file pulls in the
        snapshot's data (its backing, ``base_file``) and continues on what was below it
        (``file_to_merge``; None = flatten); ``base_file`` is deleted at complete and the
        snapshot that had it as overlay now has the active one. Otherwise -> commit the overlay
        into its backing (``merge_target_file``); the overlay is deleted at complete.
        ``info`` None: the snapshot has nothing to merge (compute is not needed)."""
        vid = self._vid(volume)
        sid = self._sid(snapshot, vid)
        with self._locked(vid):
            info = self._state(vid)
            if sid not in info:
                return Assisted(volume=self._provider(vid, info["active"]), admin_metadata={"delete_mode": "none"})
            snap_file, active = info[sid], info["active"]
            base = self._backing(vid, snap_file)
            if base is None:
                return Assisted(volume=self._provider(vid, active),
                                admin_metadata={"delete_mode": "stale", "snapshot_file": snap_file})
            if snap_file not in self._chain(vid, active):
                raise VolumeDriverError(f"{snap_file} is not in the chain of volume {vid}")
            meta = {"snapshot_file": snap_file, "base_file": base}
            if snap_file == active:
                below = self._backing(vid, base)
                base_id = next((k for k, v in info.items() if k != "active" and v == base), "")
                delete_info = {"file_to_merge": below, "merge_target_file": None}
                meta.update(delete_mode="rebase", merge_base=below or "", base_id=base_id, file_to_delete=base)
            else:
                delete_info = {"file_to_merge": snap_file, "merge_target_file": base}
                meta.update(delete_mode="commit", file_to_delete=snap_file)
            return Assisted(info={"type": "qcow2", **delete_info, "volume_id": vid},
                            volume=self._provider(vid, active), admin_metadata=meta)

    def delete_snapshot_assisted_complete(self, snapshot: SnapshotRef, volume: VolumeRef,
                                          admin_metadata: dict[str, str]) -> Assisted:
        """Compute merged as begin asked: check the chain shows it, rewrite the info file, then
        delete the merged-away file. A retry after the info file was written only removes the
        file (if still there and unreferenced)."""
        vid = self._vid(volume)
        sid = self._sid(snapshot, vid)
        mode = admin_metadata.get("delete_mode", "none")
        if mode not in ("none", "stale", "rebase", "commit"):
            raise VolumeDriverError(f"unknown delete_mode {mode!r}")
        with self._locked(vid):
            info = self._state(vid)
            if mode == "none":
                return Assisted(volume=self._provider(vid, info["active"]))
            snap_file = self._check(vid, admin_metadata.get("snapshot_file"), "snapshot_file")
            if mode == "stale":
                if info.get(sid) == snap_file:
                    del info[sid]
                    self._write_info(vid, info)
                self._drop_leftover(vid, info, [snap_file])
                return Assisted(volume=self._provider(vid, info["active"]))
            base = self._check(vid, admin_metadata.get("base_file"), "base_file")
            doomed = self._check(vid, admin_metadata.get("file_to_delete"), "file_to_delete")
            if info.get(sid) == snap_file:
                chain = self._chain(vid, info["active"])
                if mode == "rebase":
                    below = admin_metadata.get("merge_base") or None
                    if below is not None:
                        self._check(vid, below, "merge_base")
                    if info["active"] != snap_file or self._backing(vid, snap_file) != below:
                        raise VolumeDriverError(f"compute has not rebased {snap_file} onto {below}")
                    base_id = admin_metadata.get("base_id") or None
                    if base_id is not None and info.get(_check_id(base_id, "base_id")) == base:
                        info[base_id] = snap_file
                elif snap_file in chain or base not in chain:
                    raise VolumeDriverError(f"compute has not committed {snap_file} into {base}")
                del info[sid]
                self._write_info(vid, info)
            self._drop_leftover(vid, info, [doomed])
            self._sync_dir()
            return Assisted(volume=self._provider(vid, info["active"]))

    # -- the host ---------------------------------------------------------------------------------
    def capacity(self) -> dict[str, int]:
        usage = shutil.disk_usage(self.share)
        return {"total_bytes": usage.total, "free_bytes": usage.free}
