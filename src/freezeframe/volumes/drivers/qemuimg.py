"""A small typed wrapper over ``qemu-img``, the only tool the qcow2file driver runs.

Every call is an argument list (never a shell), and every call names the image's format
(``-f``): a raw volume is data a guest wrote, and a guest can write a qcow2 header into it.
Letting qemu-img probe would then follow the backing file the guest chose (any file on the
host). Reads use ``-U`` (force share) so an image a running QEMU holds can still be inspected.
A failed call raises ``VolumeDriverError`` carrying qemu-img's stderr (HostFault: logged, not
shown to API callers).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from freezeframe.volumes.drivers.base import VolumeDriverError

QEMU_IMG = "qemu-img"
FORMATS = ("raw", "qcow2")
# qemu-img convert's zero detection granularity: runs of zeros this long stay holes in the
# target (qemu-img's default, written out so the choice is visible).
SPARSE_SIZE = "4k"


@dataclass(frozen=True)
class ImageInfo:
    """What ``qemu-img info`` says about one image (not its chain)."""
    format: str
    virtual_size: int                    # bytes
    actual_size: int                     # bytes allocated on the host
    backing_file: str | None             # as recorded in the header (relative for our chains)
    backing_format: str | None


def _fmt(fmt: str) -> str:
    if fmt not in FORMATS:
        raise VolumeDriverError(f"unsupported image format {fmt!r}")
    return fmt


def run(args: list[str], *, timeout: float | None = None) -> str:
    """Run ``qemu-img <args>``; its stdout, or VolumeDriverError with its stderr."""
    cmd = [QEMU_IMG, *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise VolumeDriverError(f"{QEMU_IMG} is not installed on this volume host") from exc
    except subprocess.TimeoutExpired as exc:
        raise VolumeDriverError(f"qemu-img {args[0]} timed out after {timeout} s") from exc
    if done.returncode != 0:
        raise VolumeDriverError(f"qemu-img {args[0]} failed ({done.returncode}): {done.stderr.strip()}",
                                command=cmd, stderr=done.stderr)
    return done.stdout


def info(path: Path, fmt: str) -> ImageInfo:
    """``qemu-img info -U --output=json`` of one image, read as ``fmt`` (never probed)."""
    out = run(["info", "-U", "--output=json", "-f", _fmt(fmt), str(path)], timeout=60)
    try:
        data = json.loads(out)
        return ImageInfo(format=str(data["format"]), virtual_size=int(data["virtual-size"]),
                         actual_size=int(data.get("actual-size", 0)),
                         backing_file=data.get("backing-filename"),
                         backing_format=data.get("backing-filename-format"))
    except (ValueError, KeyError, TypeError) as exc:
        raise VolumeDriverError(f"qemu-img info gave unreadable output for {path}") from exc


def create(path: Path, fmt: str, size: int, *, backing: str | None = None,
           backing_fmt: str | None = None) -> None:
    """A new image of ``size`` bytes; with ``backing``, an overlay recording that name as given
    (relative names resolve from the overlay's directory). ``-u``: the backing is not opened —
    a running guest may hold it, and the size is given anyway."""
    args = ["create", "-q", "-f", _fmt(fmt)]
    if backing is not None:
        if backing_fmt is None:
            raise VolumeDriverError("an overlay needs its backing file's format")
        args += ["-u", "-b", backing, "-F", _fmt(backing_fmt)]
    run([*args, str(path), str(int(size))], timeout=60)


def rebase(path: Path, backing: str | None, backing_fmt: str | None, *, unsafe: bool,
           fmt: str = "qcow2") -> None:
    """Point ``path`` at ``backing`` (None: no backing file). ``unsafe`` (``-u``) only rewrites
    the header — right when the new backing holds the same data; otherwise qemu-img copies into
    ``path`` whatever differs between the old chain and the new one (None flattens)."""
    args = ["rebase", "-q", "-f", _fmt(fmt)]
    if unsafe:
        args.append("-u")
    if backing is None:
        args += ["-b", ""]
    else:
        if backing_fmt is None:
            raise VolumeDriverError("a rebase needs the new backing file's format")
        args += ["-b", backing, "-F", _fmt(backing_fmt)]
    run([*args, str(path)])


def commit(path: Path, *, fmt: str = "qcow2", base: Path | None = None) -> None:
    """Write ``path``'s data into its backing file (or ``base``, deeper in the chain) and leave
    ``path`` as it was (``-d``: it is about to be deleted or dropped from the chain anyway)."""
    args = ["commit", "-q", "-f", _fmt(fmt)]
    args += ["-b", str(base)] if base is not None else ["-d"]
    run([*args, str(path)])


def convert(src: Path, src_fmt: str, dst: Path, *, out_fmt: str = "raw",
            target_is_zero: bool = False, force_share: bool = True) -> None:
    """Copy ``src`` (and its backing chain) into ``dst`` as ``out_fmt``. Holes and zero
    clusters of the source are neither read nor written; runs of zeros in the data read stay
    holes (``-S``). ``target_is_zero``: ``dst`` already exists, pre-sized and all holes
    (``-n --target-is-zero``), so nothing is written for zeros and no resize is needed."""
    args = ["convert", "-f", _fmt(src_fmt), "-O", _fmt(out_fmt), "-S", SPARSE_SIZE]
    if force_share:
        args.append("-U")
    if target_is_zero:
        args += ["-n", "--target-is-zero"]
    run([*args, str(src), str(dst)])


def resize(path: Path, fmt: str, size: int) -> None:
    """Grow an image to ``size`` bytes (never shrinks: no ``--shrink``)."""
    run(["resize", "-q", "-f", _fmt(fmt), str(path), str(int(size))], timeout=120)
