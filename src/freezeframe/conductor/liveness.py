"""Who is alive: conductors hold a lock named after themselves in the coordination backend.

A conductor's lock is held for as long as its process lives: with the file backend it is an
fcntl lock the kernel drops when the process dies; with Redis it is a lock with a timeout that
the tooz heartbeat keeps extending, so it expires a few seconds after its holder dies. "Is
conductor X alive?" is then "is X's lock taken?" — the same answer on every host that shares
the backend (seed 000 §2aa).
"""

from __future__ import annotations

import logging
import threading

from tooz import coordination

LOG = logging.getLogger(__name__)


def backend_url(url: str, data_dir) -> str:
    """Empty means the embedded default: a file backend in the data dir."""
    return url or f"file://{data_dir / 'coordination'}"


class Liveness:
    def __init__(self, url: str, member_id: str) -> None:
        self.url = url
        self.member_id = member_id
        self._coord = coordination.get_coordinator(url, member_id.encode())
        self._own_lock = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self._coord.start(start_heart=True)
        self._own_lock = self._coord.get_lock(self._lock_name(self.member_id))
        if not self._own_lock.acquire(blocking=5):
            raise RuntimeError(f"conductor id {self.member_id} is already in use by a live process")
        LOG.info("conductor %s alive in %s", self.member_id, self.url.split("?")[0])

    def stop(self) -> None:
        try:
            if self._own_lock is not None:
                self._own_lock.release()
        finally:
            self._coord.stop()

    @staticmethod
    def _lock_name(member_id: str) -> bytes:
        return f"freezeframe-conductor-{member_id}".encode()

    def is_alive(self, member_id: str | None) -> bool:
        if not member_id:
            return False
        if member_id == self.member_id:
            return True
        with self._lock:
            probe = self._coord.get_lock(self._lock_name(member_id))
            if probe.acquire(blocking=False):
                probe.release()
                return False
            return True
