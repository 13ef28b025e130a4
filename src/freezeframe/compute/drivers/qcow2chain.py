"""The chain of files under a volume's disk (the RemoteFS layout: every file in one directory,
each overlay naming its backing file relatively, with its format), read and merged with
``qemu-img`` where no QEMU holds the files: the libvirt driver's path for a domain that is not
running, and the fake driver's for everything.

Nova's wire semantics of an assisted delete (``delete_info``, as Cinder's RemoteFS driver
sends it): with ``merge_target_file`` None the active file pulls in what lies above
``file_to_merge`` and continues on ``file_to_merge`` itself (None: on nothing, flattened);
otherwise ``file_to_merge`` is committed into ``merge_target_file`` below it.

Every call names the top image's format (``-f``): a raw volume holds whatever its guest wrote,
a qcow2 header pointing at any host file included; the overlays record their backing format,
so nothing in a chain is probed. Reads use ``-U``: a running QEMU may hold the files.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from freezeframe.common import errors
from freezeframe.compute.drivers.base import DriverError

FORMATS = ("raw", "qcow2")
# A merge is bounded by its size: a floor for the fixed costs, then this many bytes a second
# at the least (a loaded host with one core still commits far faster).
JOB_FLOOR = 60.0
JOB_MIN_RATE = 10 << 20
_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")

Report = Callable[[int, int], None]


@dataclass(frozen=True)
class Layer:
    """One file of a chain, top (the active file) first."""
    path: Path                # absolute, as the chain resolves it
    format: str
    virtual_size: int
    backing: str | None       # the backing file's name as the header records it


def job_timeout(size: int) -> float:
    """How long a merge of a disk of ``size`` bytes may take before it is given up."""
    return JOB_FLOOR + size / JOB_MIN_RATE


def file_name(value: object, what: str) -> str | None:
    """A file the request names: None, or a plain name in the active file's directory."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or "/" in value or "\0" in value or value in (".", ".."):
        raise errors.Invalid(f"{what} must be a file name in the volume's directory, not {value!r}")
    return value


def host_path(value: object, what: str) -> Path:
    """An absolute, normalised path (no '..', no '//'), as a volume's file is named."""
    if not isinstance(value, (str, Path)) or "\0" in str(value) or not os.path.isabs(value) \
            or os.path.normpath(value) != str(value) or ".." in Path(value).parts:
        raise errors.Invalid(f"{what} must be an absolute, normalised path, not {str(value)!r}")
    return Path(value)


def image_format(fmt: object) -> str:
    if fmt not in FORMATS:
        raise errors.Invalid(f"unsupported image format {fmt!r}: one of {', '.join(FORMATS)}")
    return str(fmt)


def _run(args: list[str], timeout: float) -> str:
    try:
        proc = subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DriverError(f"qemu-img {args[0]}: {exc}") from exc
    if proc.returncode != 0:
        raise DriverError(f"qemu-img {args[0]} failed: {proc.stderr.strip()}")
    return proc.stdout


def chain(path: Path, fmt: str) -> list[Layer]:
    """The chain under ``path`` (read as ``fmt``), top first."""
    out = _run(["info", "-U", "--backing-chain", "--output=json", "-f", image_format(fmt), str(path)], 60)
    try:
        return [Layer(path=Path(os.path.abspath(doc["filename"])), format=doc["format"],
                      virtual_size=int(doc["virtual-size"]), backing=doc.get("backing-filename"))
                for doc in json.loads(out)]
    except (ValueError, KeyError, TypeError) as exc:
        raise DriverError(f"qemu-img info gave unreadable output for {path}") from exc


def index(layers: list[Layer], path: Path | None) -> int | None:
    if path is None:
        return None
    want = os.path.normpath(path)
    return next((i for i, layer in enumerate(layers) if os.path.normpath(layer.path) == want), None)


def check_overlay(new_file: Path, current: Path, current_format: str) -> None:
    """``new_file`` must be a qcow2 whose backing file is ``current`` (in that format): what a
    REUSE_EXT snapshot continues the disk on. Anything else would show the guest other data."""
    layers = chain(new_file, "qcow2")
    if len(layers) < 2 or index(layers, current) != 1 or layers[1].format != current_format:
        below = f"{layers[1].path} ({layers[1].format})" if len(layers) > 1 else "nothing"
        raise DriverError(f"{new_file} is not an overlay of the disk's current file {current} "
                          f"({current_format}): it backs onto {below}")


def relative(target: Path, overlay: Path) -> str:
    """How ``overlay``'s header names ``target`` (relative, as the volume driver makes them)."""
    return os.path.relpath(target, overlay.parent)


def run_with_progress(args: list[str], *, total: int, progress: Report | None, timeout: float) -> None:
    """``qemu-img <args>`` with ``-p``: its percentages reported as bytes of ``total``."""
    cmd = ["qemu-img", args[0], "-p", *args[1:]]
    deadline = time.monotonic() + timeout
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        raise DriverError(f"qemu-img {args[0]}: {exc}") from exc
    assert proc.stdout is not None and proc.stderr is not None
    os.set_blocking(proc.stdout.fileno(), False)
    pending = b""
    try:
        while True:
            chunk = proc.stdout.read() or b""
            pending += chunk
            found = _PROGRESS.findall(pending)
            if found and progress is not None:
                progress(min(total, int(float(found[-1]) / 100 * total)), total)
            pending = pending[-64:]
            if proc.poll() is not None and not chunk:
                break
            if time.monotonic() > deadline:
                proc.kill()
                raise DriverError(f"qemu-img {args[0]} did not finish in {timeout:.0f} s")
            time.sleep(0.1)
        stderr = proc.stderr.read().decode(errors="replace").strip()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    if proc.returncode != 0:
        raise DriverError(f"qemu-img {args[0]} failed: {stderr}")
    if progress is not None:
        progress(total, total)


def merge(active: Path, fmt: str, *, file_to_merge: str | None, merge_target_file: str | None,
          progress: Report | None = None) -> tuple[Path, str]:
    """Delete a snapshot from the chain under ``active`` (no QEMU holds it), Nova's semantics
    (module docstring). Returns the active file and format afterwards (a commit of the active
    file itself continues on its target). Idempotent: what is already done is not redone."""
    file_to_merge = file_name(file_to_merge, "file_to_merge")
    merge_target_file = file_name(merge_target_file, "merge_target_file")
    layers = chain(active, fmt)
    top = layers[0]
    timeout = job_timeout(top.virtual_size)
    here = top.path.parent
    if merge_target_file is None:
        at = index(layers, here / file_to_merge) if file_to_merge else None
        if (at == 1) if file_to_merge else len(layers) == 1:
            return top.path, top.format                          # already on that base
        if file_to_merge and (at is None or at < 2):
            raise DriverError(f"{file_to_merge} is not below the backing file of {top.path.name}: "
                              f"nothing to rebase onto")
        if top.format != "qcow2":
            raise DriverError(f"{top.path.name} is {top.format}: only a qcow2 file has a backing file")
        args = ["rebase", "-f", "qcow2", "-b", relative(layers[at].path, top.path) if at is not None else ""]
        if at is not None:
            args += ["-F", layers[at].format]
        run_with_progress([*args, str(top.path)], total=top.virtual_size, progress=progress, timeout=timeout)
        return top.path, top.format
    if file_to_merge is None:
        raise errors.Invalid("a commit (merge_target_file set) needs file_to_merge")
    i = index(layers, here / file_to_merge)
    if i is None:
        return top.path, top.format                              # merged already
    j = index(layers, here / merge_target_file)
    if j is None or j <= i:
        raise DriverError(f"{merge_target_file} is not below {file_to_merge} in the chain of {top.path.name}")
    run_with_progress(["commit", "-d", "-f", layers[i].format, "-b", str(layers[j].path), str(layers[i].path)],
                      total=layers[i].virtual_size, progress=progress, timeout=timeout)
    if i == 0:
        return layers[j].path, layers[j].format                  # the active file was committed
    above = layers[i - 1]
    _run(["rebase", "-u", "-f", above.format, "-b", relative(layers[j].path, above.path),
          "-F", layers[j].format, str(above.path)], 60)
    return top.path, top.format


def reset_overlay(path: Path) -> None:
    """Empty the qcow2 overlay ``path`` again: the same backing file (named as its header names
    it) and backing format, the same size and cluster size, no data of its own (the file itself
    is kept: its owner and mode stay). For a disk moved back off ``path`` (its data committed
    into the backing file): a later REUSE_EXT snapshot onto ``path`` must show the guest its
    current data, not the clusters it wrote before the move back."""
    out = _run(["info", "-U", "--output=json", "-f", "qcow2", str(path)], 60)
    try:
        doc = json.loads(out)
        backing, fmt = doc["backing-filename"], doc.get("backing-filename-format")
        size, cluster = int(doc["virtual-size"]), int(doc.get("cluster-size", 65536))
    except (ValueError, KeyError, TypeError) as exc:
        raise DriverError(f"{path} is not an overlay (no backing file): it cannot be emptied again") from exc
    _run(["create", "-q", "-f", "qcow2", "-o", f"cluster_size={cluster}", "-u", "-b", backing,
          "-F", image_format(fmt), str(path), str(size)], 60)
