"""A stream of disk data sent into an image as a resumable upload, in parts.

The shape every snapshot upload shares (compute's ``send_disk``, the volume service's upload,
the bare-metal snapshot): the stream is a pure function of its source, so after a crash the
image service says how many bytes it kept (``upload_offset``) and the stream is produced again
from there; each part of ``part_size`` bytes is kept by the image service before the next one is
sent, so a crash re-sends at most one part.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from freezeframe.common.metrics import workflow_bytes


class Parts:
    """Cuts a stream of blocks into consecutive parts of exact sizes (no copies)."""

    def __init__(self, blocks: Iterator[bytes | memoryview]) -> None:
        self._blocks = blocks
        self._rest = memoryview(b"")

    def take(self, n: int) -> Iterator[memoryview]:
        while n > 0:
            if not self._rest:
                try:
                    self._rest = memoryview(next(self._blocks)).cast("B")
                except StopIteration:
                    return
            piece, self._rest = self._rest[:n], self._rest[n:]
            n -= len(piece)
            yield piece


def send_in_parts(images: Any, image_id: str, size: int, blocks: Iterator[bytes | memoryview], *, upload_id: str,
                  offset: int, part_size: int, progress: Callable[[int], None] | None = None,
                  after_part: Callable[[], None] | None = None) -> None:
    """Send the ``size``-byte data (``blocks``: its bytes from ``offset`` on) into ``image_id``
    as upload ``upload_id``, in parts; ``after_part`` runs once a part (not the last) was kept."""
    data = Parts(blocks)
    at = offset
    while True:
        n = min(part_size, size - at)
        final = at + n == size          # (0 bytes when everything was kept: it commits)
        images.upload_resumable(image_id, data.take(n), n, upload_id=upload_id, offset=at, final=final,
                                progress=progress)
        workflow_bytes(n)           # (for the kind of the workflow sending it)
        at += n
        if final:
            return
        if after_part is not None:
            after_part()
