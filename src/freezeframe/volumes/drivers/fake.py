"""The fake volume driver: plain sparse files and full (sparse) copies, for fast workflow tests.

It keeps the interface's semantics — providers, idempotent retries, snapshots that hold the
volume as it was, assisted begin/complete/abort that agree with each other — without qemu-img
(except to import a non-raw image). Layout under ``root``:

    volume-<vid>        the volume's data, raw and sparse
    snapshot-<sid>      a sparse copy of the volume at the snapshot
    state.json          {"snapshots": {sid: {"volume_id", "seq"}}, "pending": {sid: {...}}, "seq": n}

``fail_on``: method names that raise VolumeDriverError (fault injection), changeable at any time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from freezeframe.common import errors
from freezeframe.volumes.drivers import qemuimg
from freezeframe.volumes.drivers.base import (Assisted, DataSource, SnapshotRef, VolumeDriver,
                                              VolumeDriverError, VolumeRef)

GiB = 1 << 30
CHUNK = 1 << 20
_ZEROS = bytes(CHUNK)
_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def sparse_copy(src: Path, dst: Path, size: int) -> None:
    """``dst`` = ``src``'s data in a file of ``size`` bytes: only data extents are read
    (SEEK_DATA/SEEK_HOLE) and chunks of zeros are not written. Atomic (``.part`` + rename)."""
    part = dst.with_name(dst.name + ".part")
    with open(src, "rb") as fi, open(part, "wb") as fo:
        fo.truncate(size)
        fd, end, pos = fi.fileno(), min(os.fstat(fi.fileno()).st_size, size), 0
        while pos < end:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:    # no data after pos
                    break
                raise
            stop = min(os.lseek(fd, start, os.SEEK_HOLE), end)
            while start < stop:
                chunk = os.pread(fd, min(CHUNK, stop - start), start)
                if chunk != _ZEROS[:len(chunk)]:
                    os.pwrite(fo.fileno(), chunk, start)
                start += len(chunk)
            pos = stop
    os.replace(part, dst)


class FakeVolumeDriver(VolumeDriver):
    name = "fake"

    def __init__(self, root: Path, assisted: bool = False, fail_on: Iterable[str] | None = None) -> None:
        self.root = Path(root).absolute()
        self.root.mkdir(parents=True, exist_ok=True)
        self.assisted = assisted
        self.fail_on: set[str] = set(fail_on or ())
        self._state_path = self.root / "state.json"

    # -- state ------------------------------------------------------------------------------------
    def _fail(self, method: str) -> None:
        if method in self.fail_on:
            raise VolumeDriverError(f"injected failure in {method}")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The state under an exclusive lock (threads and processes), saved when the block ends."""
        with open(self.root / "state.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = self._load_state()
                yield state
                self._save_state(state)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self._state_path.read_text())
        except FileNotFoundError:
            state = {}
        state.setdefault("snapshots", {})
        state.setdefault("pending", {})
        state.setdefault("seq", 0)
        return state

    def _save_state(self, state: dict[str, Any]) -> None:
        tmp = self._state_path.with_name("state.json.tmp")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
        os.replace(tmp, self._state_path)

    # -- names ------------------------------------------------------------------------------------
    def _vid(self, volume: VolumeRef) -> str:
        vid = _checked_id(volume.id, "volume id")
        if volume.provider.get("active", f"volume-{vid}") != f"volume-{vid}":
            raise VolumeDriverError(f"provider active {volume.provider['active']!r} is not volume {vid}'s file")
        if volume.provider.get("format", "raw") != "raw":
            raise VolumeDriverError(f"provider format {volume.provider['format']!r} is not raw")
        return vid

    def _sid(self, snapshot: SnapshotRef, vid: str) -> str:
        sid = _checked_id(snapshot.id, "snapshot id")
        if snapshot.volume_id != vid:
            raise VolumeDriverError(f"snapshot {sid} is not of volume {vid}")
        if snapshot.provider.get("file", f"snapshot-{sid}") != f"snapshot-{sid}":
            raise VolumeDriverError(f"snapshot provider file {snapshot.provider['file']!r} is not snapshot {sid}'s")
        return sid

    def _vol(self, vid: str) -> Path:
        return self.root / f"volume-{vid}"

    def _snap(self, sid: str) -> Path:
        return self.root / f"snapshot-{sid}"

    @staticmethod
    def _provider(vid: str) -> dict[str, Any]:
        return {"active": f"volume-{vid}", "format": "raw"}

    def _existing(self, path: Path, what: str) -> Path:
        if not path.exists():
            raise VolumeDriverError(f"{what} has no data on this host")
        return path

    # -- volumes ----------------------------------------------------------------------------------
    def create_volume(self, volume: VolumeRef) -> dict[str, Any]:
        self._fail("create_volume")
        vid = self._vid(volume)
        with open(self._vol(vid), "ab") as f:
            if os.fstat(f.fileno()).st_size < volume.size * GiB:
                f.truncate(volume.size * GiB)
        return self._provider(vid)

    def _copy_in(self, volume: VolumeRef, src: DataSource) -> dict[str, Any]:
        vid = self._vid(volume)
        if src.virtual_size > volume.size * GiB:
            raise errors.Invalid(f"the source holds {src.virtual_size} bytes; volume {vid} has {volume.size} GiB")
        if not self._vol(vid).exists():                  # complete already (the copy is atomic)
            if src.format == "raw":
                sparse_copy(src.path, self._vol(vid), volume.size * GiB)
            else:
                part = self.root / f"volume-{vid}.part"
                with open(part, "wb") as f:
                    f.truncate(volume.size * GiB)
                qemuimg.convert(src.path, src.format, part, target_is_zero=True)
                os.replace(part, self._vol(vid))
        return self._provider(vid)

    def create_volume_from_snapshot(self, volume: VolumeRef, snapshot: SnapshotRef, source: VolumeRef) -> dict[str, Any]:
        self._fail("create_volume_from_snapshot")
        return self._copy_in(volume, self.snapshot_source(snapshot, source))

    def create_cloned_volume(self, volume: VolumeRef, source: VolumeRef) -> dict[str, Any]:
        self._fail("create_cloned_volume")
        return self._copy_in(volume, self.volume_source(source))

    def import_volume(self, volume: VolumeRef, data: DataSource) -> dict[str, Any]:
        self._fail("import_volume")
        return self._copy_in(volume, data)

    def delete_volume(self, volume: VolumeRef) -> None:
        self._fail("delete_volume")
        vid = _checked_id(volume.id, "volume id")
        with self._locked() as state:
            for sid in [s for s, rec in state["snapshots"].items() if rec["volume_id"] == vid]:
                self._snap(sid).unlink(missing_ok=True)
                del state["snapshots"][sid]
            for sid in [s for s, rec in state["pending"].items() if rec["volume_id"] == vid]:
                del state["pending"][sid]
                for name in (f"snapshot-{sid}", f"snapshot-{sid}.part"):
                    (self.root / name).unlink(missing_ok=True)
            for name in (f"volume-{vid}", f"volume-{vid}.part"):
                (self.root / name).unlink(missing_ok=True)

    def extend_volume(self, volume: VolumeRef, new_size: int) -> dict[str, Any]:
        self._fail("extend_volume")
        vid = self._vid(volume)
        with open(self._existing(self._vol(vid), f"volume {vid}"), "r+b") as f:
            if os.fstat(f.fileno()).st_size > new_size * GiB:
                raise errors.Invalid(f"volume {vid} cannot shrink to {new_size} GiB")
            f.truncate(new_size * GiB)
        return self._provider(vid)

    def volume_source(self, volume: VolumeRef) -> DataSource:
        vid = self._vid(volume)
        path = self._existing(self._vol(vid), f"volume {vid}")
        return DataSource(path=path, format="raw", virtual_size=path.stat().st_size)

    def connection_info(self, volume: VolumeRef) -> dict[str, Any]:
        vid = self._vid(volume)
        return {"driver_volume_type": "qcow2file",
                "data": {"export": str(self.root), "name": f"volume-{vid}", "format": "raw",
                         "volume_id": vid, "access_mode": "rw"},
                "serial": vid}

    # -- snapshots, offline -----------------------------------------------------------------------
    def _take(self, state: dict[str, Any], sid: str, vid: str) -> None:
        """Record snapshot ``sid`` of ``vid`` as a copy of the volume now (no-op if recorded)."""
        if sid in state["snapshots"]:
            return
        src = self._existing(self._vol(vid), f"volume {vid}")
        sparse_copy(src, self._snap(sid), src.stat().st_size)
        state["seq"] += 1
        state["snapshots"][sid] = {"volume_id": vid, "seq": state["seq"]}

    def create_snapshot(self, snapshot: SnapshotRef, volume: VolumeRef) -> tuple[dict[str, Any], dict[str, Any]]:
        self._fail("create_snapshot")
        vid = self._vid(volume)
        sid = self._sid(snapshot, vid)
        with self._locked() as state:
            self._take(state, sid, vid)
        return {"file": f"snapshot-{sid}"}, self._provider(vid)

    def delete_snapshot(self, snapshot: SnapshotRef, volume: VolumeRef) -> dict[str, Any]:
        self._fail("delete_snapshot")
        vid = self._vid(volume)
        sid = self._sid(snapshot, vid)
        with self._locked() as state:
            state["snapshots"].pop(sid, None)
            state["pending"].pop(sid, None)
            self._snap(sid).unlink(missing_ok=True)
            self._snap(sid).with_name(f"snapshot-{sid}.part").unlink(missing_ok=True)
        return self._provider(vid)

    def snapshot_source(self, snapshot: SnapshotRef, volume: VolumeRef) -> DataSource:
        vid = self._vid(volume)
        sid = self._sid(snapshot, vid)
        if self._load_state()["snapshots"].get(sid, {}).get("volume_id") != vid:
            raise VolumeDriverError(f"volume {vid} has no snapshot {sid}")
        path = self._existing(self._snap(sid), f"snapshot {sid}")
        return DataSource(path=path, format="raw", virtual_size=path.stat().st_size)

    # -- snapshots, assisted ----------------------------------------------------------------------
    def _assisted_only(self, method: str) -> None:
        if not self.assisted:
            raise NotImplementedError(f"the {self.name} driver was made without assistance")
        self._fail(method)

    def create_snapshot_assisted_begin(self, snapshot: SnapshotRef, volume: VolumeRef) -> Assisted:
        """A Nova-shaped create_info; the copy is taken at complete (when compute is done)."""
        self._assisted_only("create_snapshot_assisted_begin")
        vid = self._vid(volume)
        sid = self._sid(snapshot, vid)
        new = f"volume-{vid}.{sid}"
        with self._locked() as state:
            if sid not in state["snapshots"]:
                state["pending"][sid] = {"op": "create", "volume_id": vid, "new_file": new}
        return Assisted(info={"type": "qcow2", "new_file": new, "snapshot_id": sid},
                        snapshot={"file": f"snapshot-{sid}"},
                        admin_metadata={"new_file": new, "base_file": f"volume-{vid}"})

    def create_snapshot_assisted_complete(self, snapshot: SnapshotRef, volume: VolumeRef,
                                          admin_metadata: dict[str, str]) -> Assisted:
        self._assisted_only("create_snapshot_assisted_complete")
        vid = self._vid(volume)
        sid = self._sid(snapshot, vid)
        with self._locked() as state:
            if sid not in state["snapshots"]:
                pending = state["pending"].get(sid)
                if not pending or pending["op"] != "create" or admin_metadata.get("new_file") != pending["new_file"]:
                    raise VolumeDriverError(f"no assisted create of snapshot {sid} was begun")
                self._take(state, sid, vid)
                del state["pending"][sid]
        return Assisted(snapshot={"file": f"snapshot-{sid}"}, volume=self._provider(vid))

    def create_snapshot_assisted_abort(self, snapshot: SnapshotRef, volume: VolumeRef,
                                       admin_metadata: dict[str, str]) -> Assisted:
        self._assisted_only("create_snapshot_assisted_abort")
        vid = self._vid(volume)
        sid = self._sid(snapshot, vid)
        with self._locked() as state:
            if state["pending"].get(sid, {}).get("op") == "create":
                del state["pending"][sid]
        return Assisted(volume=self._provider(vid))

    def delete_snapshot_assisted_begin(self, snapshot: SnapshotRef, volume: VolumeRef) -> Assisted:
        """A delete_info as qcow2file would give for the same chain of snapshots."""
        self._assisted_only("delete_snapshot_assisted_begin")
        vid = self._vid(volume)
        sid = self._sid(snapshot, vid)
        with self._locked() as state:
            if sid not in state["snapshots"]:
                return Assisted(volume=self._provider(vid), admin_metadata={"delete_mode": "none"})
            chain = sorted((rec["seq"], s) for s, rec in state["snapshots"].items() if rec["volume_id"] == vid)
            order = [s for _seq, s in chain]
            i = order.index(sid)
            name = [f"volume-{vid}", *(f"volume-{vid}.{s}" for s in order)]    # name[i + 1] = overlay of order[i]
            if i == len(order) - 1:
                delete_info = {"file_to_merge": name[i - 1] if i >= 1 else None, "merge_target_file": None}
                mode = "rebase"
            else:
                delete_info = {"file_to_merge": name[i + 1], "merge_target_file": name[i]}
                mode = "commit"
            state["pending"][sid] = {"op": "delete", "volume_id": vid}
        return Assisted(info={"type": "qcow2", **delete_info, "volume_id": vid}, volume=self._provider(vid),
                        admin_metadata={"delete_mode": mode, "snapshot_file": name[i + 1]})

    def delete_snapshot_assisted_complete(self, snapshot: SnapshotRef, volume: VolumeRef,
                                          admin_metadata: dict[str, str]) -> Assisted:
        self._assisted_only("delete_snapshot_assisted_complete")
        vid = self._vid(volume)
        sid = self._sid(snapshot, vid)
        with self._locked() as state:
            if sid in state["snapshots"] and state["pending"].get(sid, {}).get("op") != "delete":
                raise VolumeDriverError(f"no assisted delete of snapshot {sid} was begun")
            state["snapshots"].pop(sid, None)
            state["pending"].pop(sid, None)
            self._snap(sid).unlink(missing_ok=True)
        return Assisted(volume=self._provider(vid))

    def capacity(self) -> dict[str, int]:
        usage = shutil.disk_usage(self.root)
        return {"total_bytes": usage.total, "free_bytes": usage.free}


def _checked_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise VolumeDriverError(f"{what} {value!r} is not a lower-case UUID")
    return value
