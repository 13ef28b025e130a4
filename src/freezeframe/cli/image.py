"""``freezeframe image ...``: image commands against any Glance v2 endpoint.

Progress bars go to stderr only when it is a terminal; tables and ``-f json`` go to stdout;
errors go to stderr as one line with the server's message, HTTP status and request id.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

from freezeframe.cli import cloud
from freezeframe.cli.exitcodes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from freezeframe.images.client import (PAGE_SIZE, ChecksumMismatch, GlanceClient, GlanceError, Image, Progress,
                                   Unreachable)

DISK_FORMATS = ["ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop"]
CONTAINER_FORMATS = ["ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed"]
VISIBILITIES = ["public", "private", "shared", "community"]
# qemu-img's format names, in Glance's words; anything else is uploaded as raw.
QEMU_FORMATS = {"raw": "raw", "qcow2": "qcow2", "vmdk": "vmdk", "vdi": "vdi", "vhdx": "vhdx", "vpc": "vhd",
                "parallels": "ploop"}
_ISO_OFFSETS = (32769, 34817, 36865)
LIST_COLUMNS = [("ID", "id"), ("Name", "name"), ("Status", "status")]
LONG_COLUMNS = [("ID", "id"), ("Name", "name"), ("Disk Format", "disk_format"),
                ("Container Format", "container_format"), ("Size", "size"), ("Checksum", "checksum"),
                ("Status", "status"), ("Visibility", "visibility"), ("Protected", "protected"),
                ("Project", "owner"), ("Tags", "tags")]
# After a PUT of the data the image is active; back in queued means the upload was lost.
WAIT_FAIL = ("killed", "queued", "deleted", "deactivated", "pending_delete")


class UsageError(Exception):
    """A mistake in what was asked, found after parsing (exit code 2)."""


def fail(message: object, code: int) -> int:
    print(f"freezeframe: {message}", file=sys.stderr)
    return code


def command(action: Callable[[argparse.Namespace, GlanceClient], int]) -> Callable[[argparse.Namespace], int]:
    """Resolve the endpoint, open a client, run the action, and turn its failures into exit codes."""
    @functools.wraps(action)
    def run(args: argparse.Namespace) -> int:
        try:
            endpoint = cloud.resolve(cloud=args.os_cloud, image_url=args.os_image_url, token=args.os_token)
        except cloud.ConfigError as exc:
            return fail(f"configuration error: {exc}", EXIT_USAGE)
        try:
            with GlanceClient(endpoint.url, endpoint.token, verify=endpoint.verify) as client:
                return action(args, client)
        except UsageError as exc:
            return fail(exc, EXIT_USAGE)
        except Unreachable as exc:
            return fail(f"{exc} (endpoint from {endpoint.source})", EXIT_UNREACHABLE)
        except GlanceError as exc:
            return fail(exc, EXIT_FAILED)
        except BrokenPipeError:
            # The reader of stdout went away (``| head``): stop quietly, and keep Python's
            # exit-time flush from complaining too.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_FAILED
        except OSError as exc:
            return fail(f"{exc.filename or 'local I/O'}: {exc.strerror or exc}", EXIT_FAILED)
        except KeyboardInterrupt:
            return fail("interrupted", EXIT_INTERRUPTED)
    return run


# -- output ----------------------------------------------------------------------------------


def _console(stream: Any) -> Any:
    from rich.console import Console

    # A table piped to a file or pager should not be squeezed to 80 columns.
    width = None if stream.isatty() or "COLUMNS" in os.environ else 200
    return Console(file=stream, width=width, highlight=False)


def _cell(value: Any) -> Any:
    from rich.text import Text  # Text, not str: values like "[x]" are data, not rich markup

    if value is None:
        return Text("")
    if isinstance(value, list):
        return Text(", ".join(map(str, value)))
    if isinstance(value, dict):
        return Text(json.dumps(value, sort_keys=True))
    return Text(str(value))


def print_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    sys.stdout.flush()


def print_image(image: Image, fmt: str) -> None:
    if fmt == "json":
        print_json(dict(image.attrs))
        return
    from rich.table import Table

    table = Table("Field", "Value")
    for key in sorted(image.attrs):
        table.add_row(_cell(key), _cell(image.attrs[key]))
    _console(sys.stdout).print(table)


def print_images(images: Iterable[Image], fmt: str, long: bool) -> None:
    if fmt == "json":
        print_json([dict(image.attrs) for image in images])
        return
    from rich.table import Table

    columns = LONG_COLUMNS if long else LIST_COLUMNS
    table = Table(*(title for title, _ in columns))
    for image in images:
        table.add_row(*(_cell(image.attrs.get(key)) for _, key in columns))
    _console(sys.stdout).print(table)


@contextlib.contextmanager
def progress_bar(label: str, total: int | None) -> Iterator[Progress | None]:
    """Bytes, MB/s and ETA on stderr when it is a terminal; nothing otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import (BarColumn, DownloadColumn, Progress as Bar, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Bar(*columns, console=_console(sys.stderr)) as bar:
        task = bar.add_task(label, total=total)
        yield functools.partial(bar.advance, task)


@contextlib.contextmanager
def spinner(label: str) -> Iterator[None]:
    if not sys.stderr.isatty():
        yield
        return
    with _console(sys.stderr).status(label):
        yield


# -- local files -----------------------------------------------------------------------------


@contextlib.contextmanager
def open_source(path: str | None) -> Iterator[tuple[BinaryIO | None, int | None]]:
    """The file to upload and its size (None for a pipe); UsageError if it cannot be read."""
    if path is None:
        yield None, None
    elif path == "-":
        yield sys.stdin.buffer, None
    else:
        try:
            fh = open(path, "rb")
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        with fh:
            mode = os.fstat(fh.fileno()).st_mode
            if stat.S_ISDIR(mode):
                raise UsageError(f"{path} is a directory")
            if stat.S_ISREG(mode):
                yield fh, os.fstat(fh.fileno()).st_size
            elif stat.S_ISBLK(mode):  # a block device's st_size is 0; its end is its size
                size = fh.seek(0, os.SEEK_END)
                fh.seek(0)
                yield fh, size
            else:
                yield fh, None


def detect_disk_format(path: str) -> str:
    """qemu-img's idea of the file's format, in Glance's words; raw without qemu-img."""
    qemu_img = shutil.which("qemu-img")
    if path == "-" or qemu_img is None:
        return "raw"
    # An absolute path keeps qemu from reading "name:with:colons" as a protocol.
    cmd = [qemu_img, "info", "--output", "json", "-U", os.path.abspath(path)]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=60, check=True)
        found = QEMU_FORMATS.get(json.loads(done.stdout).get("format"), "raw")
    except (OSError, subprocess.SubprocessError, ValueError, AttributeError):
        return "raw"
    if found == "raw" and _is_iso(path):  # qemu calls an ISO 9660 image raw
        return "iso"
    return found


def _is_iso(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            for offset in _ISO_OFFSETS:
                fh.seek(offset)
                if fh.read(5) == b"CD001":
                    return True
    except OSError:
        pass
    return False


@contextlib.contextmanager
def open_target(path: str) -> Iterator[BinaryIO]:
    """Write to a hidden temporary beside ``path`` and rename it into place only on success."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{path} is a directory")
    if not target.parent.is_dir():
        raise UsageError(f"cannot write {path}: directory {target.parent} does not exist")
    if target.exists() and not target.is_file():  # /dev/null, a FIFO: write straight to it
        with open(target, "wb") as fh:
            yield fh
        return
    temp = target.parent / f".{target.name}.{secrets.token_hex(4)}.part"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for any new file
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


# -- commands --------------------------------------------------------------------------------


def _upload(client: GlanceClient, image: Image, source: BinaryIO | None, size: int | None) -> None:
    assert source is not None
    with progress_bar(f"upload {image.name or image.id}", size) as progress:
        client.upload(image.id, source, size, progress)


def _wait_active(client: GlanceClient, image: Image, timeout: float) -> Image:
    with spinner(f"waiting for image {image.id} to become active"):
        image = client.wait(image.id, until=("active", *WAIT_FAIL), timeout=timeout)
    if image.status == "queued":
        raise GlanceError(f"image {image.id} is back in status queued: its data did not arrive; "
                          f"upload it again with 'freezeframe image upload {image.id} --file ...'")
    if image.status != "active":
        raise GlanceError(f"image {image.id} ended in status {image.status}, not active")
    return image


@command
def create(args: argparse.Namespace, client: GlanceClient) -> int:
    if args.wait and not args.file:
        raise UsageError("--wait needs --file: an image without data stays queued")
    with open_source(args.file) as (source, size):
        attrs: dict[str, Any] = {
            "name": args.name,
            "disk_format": args.disk_format or (detect_disk_format(args.file) if args.file else "raw"),
            "container_format": args.container_format,
            **dict(args.property),
        }
        for key in ("visibility", "min_disk", "min_ram"):
            if getattr(args, key) is not None:
                attrs[key] = getattr(args, key)
        if args.protected:
            attrs["protected"] = True
        if args.tag:
            attrs["tags"] = list(dict.fromkeys(args.tag))
        image = client.create(attrs)
        if source is not None:
            try:
                _upload(client, image, source, size)
            except (GlanceError, KeyboardInterrupt, OSError):
                print(f"freezeframe: image {image.id} was created but its data was not uploaded; retry with "
                      f"'freezeframe image upload {image.id} --file ...' or delete it", file=sys.stderr)
                raise
            image = _wait_active(client, image, args.wait_timeout) if args.wait else client.show(image.id)
    print_image(image, args.format)
    return EXIT_OK


@command
def upload(args: argparse.Namespace, client: GlanceClient) -> int:
    with open_source(args.file) as (source, size):
        image = client.find(args.image)
        _upload(client, image, source, size)
    if args.wait:
        _wait_active(client, image, args.wait_timeout)
    return EXIT_OK


@command
def download(args: argparse.Namespace, client: GlanceClient) -> int:
    path = args.file
    if path in (None, "-") and sys.stdout.isatty():
        raise UsageError("refusing to write image data to a terminal: give --file PATH or redirect stdout")
    image = client.find(args.image)
    with progress_bar(f"download {image.name or image.id}", image.size) as progress:
        if path in (None, "-"):
            sys.stdout.flush()
            try:
                done = client.download(image, sys.stdout.buffer, progress)
            finally:
                sys.stdout.buffer.flush()
        else:
            special = Path(path).exists() and not Path(path).is_file()  # a device or FIFO: no temporary
            try:
                with open_target(path) as sink:
                    done = client.download(image, sink, progress)
            except ChecksumMismatch as exc:
                if not special:
                    exc.message += f"; {path} was not written"
                raise
    if not done.verified:
        print(f"freezeframe: warning: image {image.id} has no size or checksum; the data was not verified",
              file=sys.stderr)
    return EXIT_OK


@command
def list_images(args: argparse.Namespace, client: GlanceClient) -> int:
    filters = [(key, value) for key in ("name", "status", "visibility")
               if (value := getattr(args, key)) is not None]
    filters += [("tag", tag) for tag in args.tag] + list(args.property)
    images = list(client.list(filters, limit=args.limit, page_size=args.page_size))
    print_images(images, args.format, args.long)
    return EXIT_OK


@command
def show(args: argparse.Namespace, client: GlanceClient) -> int:
    print_image(client.find(args.image), args.format)
    return EXIT_OK


@command
def delete(args: argparse.Namespace, client: GlanceClient) -> int:
    failed = 0
    for name in args.images:
        try:
            client.delete(client.find(name).id)
        except Unreachable:
            raise
        except GlanceError as exc:
            failed += 1
            fail(f"cannot delete {name}: {exc}", EXIT_FAILED)
    if failed and len(args.images) > 1:
        return fail(f"{failed} of {len(args.images)} images were not deleted", EXIT_FAILED)
    return EXIT_FAILED if failed else EXIT_OK


# -- parser ----------------------------------------------------------------------------------


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def _positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return number


def _non_negative(text: str) -> int:
    number = int(text) if text.isdigit() else -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return number


def register(subparsers: Any) -> None:
    image = subparsers.add_parser("image", help="create, upload, download, list, show and delete images",
                                  description="Image commands for any Glance v2 endpoint.")
    actions = image.add_subparsers(dest="image_command", required=True, metavar="ACTION")

    service = argparse.ArgumentParser(add_help=False)
    cloud.add_arguments(service)
    fmt = argparse.ArgumentParser(add_help=False)
    fmt.add_argument("-f", "--format", choices=["table", "json"], default="table", help="output format")
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument("--wait", action="store_true", help="wait until the image is active")
    waiting.add_argument("--wait-timeout", type=float, default=3600.0, metavar="SECONDS",
                         help="give up waiting after this long (default 3600)")

    p = actions.add_parser("create", parents=[service, fmt, waiting],
                           help="create an image, optionally with data")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--disk-format", choices=DISK_FORMATS,
                   help="default: detected from --file with qemu-img when installed, else raw")
    p.add_argument("--container-format", choices=CONTAINER_FORMATS, default="bare")
    p.add_argument("--file", metavar="PATH", help="data to upload ('-' for stdin)")
    p.add_argument("--property", type=_key_value, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--tag", action="append", default=[], metavar="TAG")
    p.add_argument("--visibility", choices=VISIBILITIES)
    p.add_argument("--min-disk", type=_non_negative, metavar="GB")
    p.add_argument("--min-ram", type=_non_negative, metavar="MB")
    p.add_argument("--protected", action="store_true", help="prevent deletion")
    p.set_defaults(func=create)

    p = actions.add_parser("upload", parents=[service, waiting], help="upload data to a queued image")
    p.add_argument("image", metavar="IMAGE", help="ID or name")
    p.add_argument("--file", required=True, metavar="PATH", help="data to upload ('-' for stdin)")
    p.set_defaults(func=upload)

    p = actions.add_parser("download", parents=[service], help="download an image's data, verifying it")
    p.add_argument("image", metavar="IMAGE", help="ID or name")
    p.add_argument("--file", "-o", dest="file", metavar="PATH",
                   help="write here (default: stdout, if not a TTY)")
    p.set_defaults(func=download)

    p = actions.add_parser("list", parents=[service, fmt], help="list images")
    p.add_argument("--name")
    p.add_argument("--status")
    p.add_argument("--visibility", choices=[*VISIBILITIES, "all"])
    p.add_argument("--tag", action="append", default=[], metavar="TAG")
    p.add_argument("--property", type=_key_value, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--limit", type=_positive, metavar="N", help="show at most N images")
    p.add_argument("--page-size", type=_positive, default=PAGE_SIZE, metavar="N",
                   help=f"images per request (default {PAGE_SIZE})")
    p.add_argument("--long", action="store_true", help="more columns")
    p.set_defaults(func=list_images)

    p = actions.add_parser("show", parents=[service, fmt], help="show one image")
    p.add_argument("image", metavar="IMAGE", help="ID or name")
    p.set_defaults(func=show)

    p = actions.add_parser("delete", parents=[service], help="delete images")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="ID or name")
    p.set_defaults(func=delete)
