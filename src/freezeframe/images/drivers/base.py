"""The image store interface. Every store passes tests/unit/images/store_conformance.py."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from freezeframe.common.pools import BoundedPool


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    # Bytes the object really occupies (holes are not counted).
    allocated: int


class Writer(abc.ABC):
    """Writes one object; nothing is visible under its key until ``commit``."""

    @abc.abstractmethod
    def write(self, block: bytes, offset: int) -> None:
        """Write ``block`` at ``offset``. Runs of zeros may be left as holes."""

    @abc.abstractmethod
    def commit(self, size: int) -> StoredObject:
        """Make the data durable and visible under the key, ``size`` bytes long."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Remove everything written. Safe to call more than once, or after commit failed."""

    @abc.abstractmethod
    def suspend(self) -> int:
        """Make what was written durable and keep it for a later ``resume_at`` writer of the
        same owner; return how many bytes are kept."""

    @abc.abstractmethod
    def read_back(self, offset: int, length: int) -> bytes:
        """Read data already written (a resumed upload re-hashes what it kept)."""

    @abc.abstractmethod
    def keep(self, size: int) -> None:
        """Everything up to ``size`` is written (a part of a resumable upload ends): make the
        kept length ``size`` even if its tail was a hole that was never written."""


class Reader(abc.ABC):
    size: int

    @abc.abstractmethod
    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset``; b"" at the end."""

    @abc.abstractmethod
    def close(self) -> None: ...


class Store(abc.ABC):
    name: str
    # The bounded pool that request handlers run the store's blocking calls on (never the
    # loop's default executor; see freezeframe.common.pools).
    io: BoundedPool

    def probe_write(self) -> None:
        """Prove the store takes a write (for /healthcheck); raise when it cannot."""

    @abc.abstractmethod
    def writer(self, key: str, owner: str, resume_at: int | None = None) -> Writer:
        """A writer for ``key``; ``owner`` (the upload id) names its partial data until commit.
        With ``resume_at``, continue the kept partial data of that owner from that offset
        (ValueError if less than that was kept)."""

    @abc.abstractmethod
    def kept(self, key: str, owner: str) -> int:
        """Bytes of partial data kept for ``owner`` (0 if none)."""

    @abc.abstractmethod
    def reader(self, key: str) -> Reader:
        """Open a stored object; ``KeyError`` if there is none."""

    @abc.abstractmethod
    def delete(self, key: str) -> bool:
        """Delete an object; False if it did not exist."""

    @abc.abstractmethod
    def stat(self, key: str) -> StoredObject | None: ...

    @abc.abstractmethod
    def rename(self, src: str, dst: str) -> None:
        """Move a committed object to another key (used by import)."""

    @abc.abstractmethod
    def cleanup_partials(self, older_than: float, live_owners: set[str]) -> int:
        """Remove partial data left by writers that never committed (a crashed process): data
        whose owner is not in ``live_owners`` and that nobody wrote for ``older_than`` seconds.
        Return how many were removed."""
