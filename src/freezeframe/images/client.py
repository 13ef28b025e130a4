"""A typed Glance v2 client on httpx, used by the CLI and by the other services.

Image data is streamed in ``CHUNK_SIZE`` blocks both ways and never held whole in memory;
downloads are hashed while they are written and checked against the image's ``checksum``
(md5) and ``os_hash_algo``/``os_hash_value``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from urllib.parse import parse_qsl, urlsplit

import httpx

from freezeframe.common import remote
from freezeframe.common.httpclient import ServiceClient, looks_like_id, request_id_of
from freezeframe.common.remote import RemoteError

CHUNK_SIZE = 1 << 20  # measured: 1 MiB blocks hash and write faster than 4 MiB ones (cache)
# Glance under uWSGI refuses chunked-encoding parts of 1 MiB and more (chunked-input-limit),
# answering 500 "unable to receive chunked part"; parts of unknown-length uploads stay below.
CHUNKED_PART = 512 << 10
PAGE_SIZE = 500

# Called with the number of bytes just sent or received.
Progress = Callable[[int], None]


class GlanceError(RemoteError):
    """A request failed. ``status`` is None when no HTTP response was received."""


class Unreachable(GlanceError, remote.Unreachable):
    """No connection to the service could be made (refused, unknown host, connect timeout)."""


class ChecksumMismatch(GlanceError):
    """Downloaded data does not match the image's size or hashes."""


CORE_ATTRIBUTES = frozenset({
    "id", "name", "status", "visibility", "protected", "os_hidden", "checksum", "os_hash_algo", "os_hash_value",
    "owner", "size", "virtual_size", "min_ram", "min_disk", "disk_format", "container_format", "created_at",
    "updated_at", "tags", "self", "file", "schema", "direct_url", "locations", "stores",
})


@dataclass(frozen=True, eq=False)
class Image:
    id: str
    name: str | None
    status: str
    size: int | None
    checksum: str | None
    os_hash_algo: str | None
    os_hash_value: str | None
    # The whole document as the server sent it (core attributes, properties, links).
    attrs: Mapping[str, Any] = field(repr=False)

    @property
    def owner(self) -> str | None:
        return self.attrs.get("owner")

    @property
    def visibility(self) -> str | None:
        return self.attrs.get("visibility")

    @property
    def disk_format(self) -> str | None:
        return self.attrs.get("disk_format")

    @property
    def properties(self) -> dict[str, str]:
        """The custom properties (everything that is not a core attribute or a link)."""
        return {k: v for k, v in self.attrs.items() if k not in CORE_ATTRIBUTES and isinstance(v, str)}

    @classmethod
    def from_json(cls, doc: Any) -> Image:
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
            raise GlanceError(f"the server sent something that is not an image: {str(doc)[:200]}")
        return cls(id=doc["id"], name=doc.get("name"), status=str(doc.get("status")), size=doc.get("size"),
                   checksum=doc.get("checksum"), os_hash_algo=doc.get("os_hash_algo"),
                   os_hash_value=doc.get("os_hash_value"), attrs=doc)


@dataclass(frozen=True)
class Transfer:
    """What a download received, and which of the image's hashes it was checked against."""
    size: int
    md5: str
    hash_algo: str | None
    hash_value: str | None
    verified: tuple[str, ...]


class GlanceClient(ServiceClient):
    """Glance v2 calls against one image service root (``{url}/v2/images``)."""

    service = "image"
    error = GlanceError
    unreachable = Unreachable

    # -- metadata ----------------------------------------------------------------------------

    def create(self, attrs: Mapping[str, Any]) -> Image:
        return Image.from_json(self._json("POST", "/v2/images", json=dict(attrs)))

    def show(self, image_id: str) -> Image:
        return Image.from_json(self._json("GET", f"/v2/images/{image_id}"))

    def delete(self, image_id: str) -> None:
        self._call("DELETE", f"/v2/images/{image_id}")

    def set_properties(self, image_id: str, values: Mapping[str, Any]) -> Image:
        """Add or replace attributes/properties with one JSON-patch request."""
        changes = [{"op": "add", "path": "/" + k.replace("~", "~0").replace("/", "~1"), "value": v}
                   for k, v in values.items()]
        return Image.from_json(self._json("PATCH", f"/v2/images/{image_id}", content=json.dumps(changes),
                                          headers={"Content-Type": "application/openstack-images-v2.1-json-patch"}))

    def list(self, filters: Sequence[tuple[str, str]] = (), *, limit: int | None = None,
             page_size: int = PAGE_SIZE) -> Iterator[Image]:
        """Images matching ``filters`` (Glance query parameters), following ``next`` links."""
        path, params = "/v2/images", [(k, v) for k, v in filters if k != "limit"]
        count, seen = 0, set()
        while True:
            size = page_size if limit is None else min(page_size, limit - count)
            body = self._json("GET", path, params=[*params, ("limit", str(size))])
            page = body.get("images") if isinstance(body, dict) else None
            if not isinstance(page, list):
                raise GlanceError(f"GET {path}: the answer has no 'images' list")
            for doc in page:
                yield Image.from_json(doc)
                count += 1
                if limit is not None and count >= limit:
                    return
            link = body.get("next")
            if not link or not page:
                return
            if link in seen:
                raise GlanceError(f"the server's 'next' link repeats ({link}); stopping")
            seen.add(link)
            # Glance's links are relative to the image service root, not to the host.
            parts = urlsplit(link)
            path = link.split("?", 1)[0] if parts.scheme else parts.path
            params = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "limit"]

    def find(self, name_or_id: str) -> Image:
        """An image by ID, or by name when exactly one visible image has that name."""
        missing: GlanceError | None = None
        if looks_like_id(name_or_id):
            try:
                return self.show(name_or_id)
            except GlanceError as exc:
                if exc.status != 404:
                    raise
                missing = exc
        matches = list(self.list([("name", name_or_id)], limit=2))
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise GlanceError(f"more than one image is named {name_or_id!r}; use its ID")
        raise missing or GlanceError(f"no image with name or ID {name_or_id!r}")

    def wait(self, image_id: str, *, until: Collection[str] = ("active", "killed"), timeout: float = 3600.0,
             interval: float = 0.5, max_interval: float = 5.0) -> Image:
        """Poll until the image's status is one of ``until`` and return it; GlanceError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            image = self.show(image_id)
            if image.status in until:
                return image
            if time.monotonic() >= deadline:
                raise GlanceError(f"timed out after {timeout:g}s waiting for image {image_id} "
                                  f"(status {image.status})")
            time.sleep(min(interval, max(deadline - time.monotonic(), 0.05)))
            interval = min(interval * 1.5, max_interval)

    # -- data --------------------------------------------------------------------------------

    def upload(self, image_id: str, source: BinaryIO | Iterable[bytes | memoryview], size: int | None = None,
               progress: Progress | None = None, extra_headers: Mapping[str, str] | None = None) -> None:
        """PUT the data, streamed from ``source`` — a file, or an iterable of blocks — with
        Content-Length when ``size`` is known."""
        def blocks() -> Iterator[bytes]:
            sent, read_size = 0, CHUNK_SIZE if size is not None else CHUNKED_PART
            parts = iter(lambda: source.read(read_size), b"") if hasattr(source, "read") else iter(source)
            for block in parts:
                if not block:
                    continue
                sent += len(block)
                if size is not None and sent > size:
                    raise GlanceError(f"the data grew past its expected {size} bytes while uploading")
                if progress:
                    progress(len(block))
                yield block
            if size is not None and sent != size:
                raise GlanceError(f"the data shrank to {sent} of its expected {size} bytes while uploading")

        headers = {"Content-Type": "application/octet-stream", **(extra_headers or {})}
        if size is not None:  # else httpx sends it chunked
            headers["Content-Length"] = str(size)
        self._call("PUT", f"/v2/images/{image_id}/file", content=blocks(), headers=headers)

    # -- Freezeframe extensions used by the snapshot workflows (role "service") ----------------

    def upload_resumable(self, image_id: str, source: BinaryIO | Iterable[bytes | memoryview], size: int, *,
                         upload_id: str, offset: int, final: bool = True,
                         progress: Progress | None = None) -> None:
        """Send ``size`` bytes from ``source`` starting at ``offset`` of resumable upload
        ``upload_id``; ``final=False``: a part, kept by the image service, more to follow."""
        headers = {"X-Image-Upload-Id": upload_id, "X-Image-Upload-Offset": str(offset)}
        if not final:
            headers["X-Image-Upload-Final"] = "false"
        self.upload(image_id, source, size, progress, headers)

    def upload_offset(self, image_id: str, upload_id: str) -> int:
        """Bytes the image service kept of a resumable upload (where to resume)."""
        return int(self._json("GET", f"/v2/images/{image_id}/uploads/{upload_id}")["offset"])

    def discard_upload(self, image_id: str, upload_id: str) -> None:
        """Give up resumable upload ``upload_id``: its kept data goes, the image is queued again."""
        self._call("DELETE", f"/v2/images/{image_id}/uploads/{upload_id}")

    def kill(self, image_id: str) -> None:
        self._call("POST", f"/v2/images/{image_id}/actions/kill")

    def download(self, image: Image, sink: BinaryIO, progress: Progress | None = None) -> Transfer:
        """GET the data into ``sink``, hashing as it goes; ChecksumMismatch if it is not the image's."""
        request = self._http.build_request("GET", f"/v2/images/{image.id}/file",
                                           headers={"Accept": "application/octet-stream"})
        response = self._send(request, stream=True)
        algo = image.os_hash_algo if image.os_hash_algo in hashlib.algorithms_available else None
        digests = Digests(hashlib.md5(usedforsecurity=False), *([hashlib.new(algo)] if algo else []))
        received = 0
        try:
            if response.status_code == 204:
                raise GlanceError(f"image {image.id} has no data (status {image.status})",
                                  status=204, request_id=request_id_of(response))
            for block in blocks(response.iter_bytes(), CHUNK_SIZE):
                digests.update(block)
                sink.write(block)
                received += len(block)
                if progress:
                    progress(len(block))
            hexdigests = digests.finish()
        except httpx.TransportError as exc:
            raise GlanceError(f"download of image {image.id} broke off after {received} bytes: "
                              f"{exc or type(exc).__name__}") from None
        finally:
            digests.close()
            response.close()
        transfer = Transfer(size=received, md5=hexdigests[0], hash_algo=algo,
                            hash_value=hexdigests[1] if algo else None, verified=())
        return check_transfer(image, transfer, response.headers.get("content-md5"), request_id_of(response))


def blocks(pieces: Iterator[bytes], size: int) -> Iterator[bytes]:
    """Network-sized pieces joined into blocks of at least ``size`` bytes (one copy each)."""
    parts: list[bytes] = []
    held = 0
    for piece in pieces:
        parts.append(piece)
        held += len(piece)
        if held >= size:
            yield b"".join(parts)
            parts, held = [], 0
    if parts:
        yield b"".join(parts)


class Digests:
    """Several hashes of one stream, each fed by its own thread.

    hashlib releases the GIL on large buffers, so md5 and sha512 run beside each other and
    beside the network reads and file writes: measured 2x the download rate of hashing inline.
    At most ``depth`` blocks wait for the hashers, which bounds the memory held.
    """

    def __init__(self, *hashes: Any, depth: int = 2) -> None:
        self.hashes = hashes
        self.depth = depth
        self._workers = [ThreadPoolExecutor(1, thread_name_prefix="hash") for _ in hashes]
        self._pending: deque[list[Future]] = deque()

    def update(self, block: bytes) -> None:
        self._pending.append([w.submit(h.update, block) for w, h in zip(self._workers, self.hashes)])
        while len(self._pending) > self.depth:
            for future in self._pending.popleft():
                future.result()

    def finish(self) -> list[str]:
        while self._pending:
            for future in self._pending.popleft():
                future.result()
        return [h.hexdigest() for h in self.hashes]

    def close(self) -> None:
        for worker in self._workers:
            worker.shutdown(wait=True, cancel_futures=True)


def check_transfer(image: Image, got: Transfer, header_md5: str | None = None,
                   request_id: str | None = None) -> Transfer:
    """Check a download against the image's size and hashes; the names of the checks made."""
    expected: list[tuple[str, str | int | None, str | int | None]] = [
        ("size", image.size, got.size),
        ("checksum (md5)", image.checksum or header_md5, got.md5),
    ]
    if got.hash_algo:
        expected.append((f"os_hash_value ({got.hash_algo})", image.os_hash_value, got.hash_value))
    checked = []
    for name, want, have in expected:
        if want is None:
            continue
        if str(want).lower() != str(have).lower():
            raise ChecksumMismatch(f"image {image.id}: {name} mismatch: expected {want}, got {have}",
                                   request_id=request_id)
        checked.append(name)
    return Transfer(got.size, got.md5, got.hash_algo, got.hash_value, tuple(checked))
