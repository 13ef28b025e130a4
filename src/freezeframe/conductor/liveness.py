"""Who is alive: conductors hold a lock named after themselves in the coordination backend.

A conductor's lock is held for as long as its process lives: with the file backend it is an
fcntl lock the kernel drops when the process dies; with Redis it is a lock with a timeout that
the tooz heartbeat keeps extending, so it expires a few seconds after its holder dies. "Is
conductor X alive?" is then "is X's lock taken?" — the same answer on every host that shares
the backend (seed 000 §2aa). It is what the API shows (``owner_alive``, ``stalled``) and what the
reaper asks; who may *write* a workflow is decided by its lease in the database
(``conductor/lease.py``), never by this.

Redis keeps nothing on disk here, and tooz does not take a lock back that a Redis restart lost
(its heartbeat only extends what is still there): a watchdog checks every second that the lock is
still ours and takes it again when it is gone — a live conductor is seen alive again about a
second after Redis is back.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from urllib.parse import urlsplit

from tooz import coordination

LOG = logging.getLogger(__name__)
DEFAULT_PORTS = {"redis": 6379, "rediss": 6379}
WATCH_EVERY = 1.0


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
        self._stopped = threading.Event()
        self._watchdog: threading.Thread | None = None
        self.on_lost = None        # called when the watchdog takes a lost lock again (metrics)

    @property
    def holding(self) -> bool:
        """This process holds its liveness lock (started, not stopped): for the metrics."""
        return self._own_lock is not None and not self._stopped.is_set()

    def start(self) -> None:
        self._reachable()
        self._coord.start(start_heart=True)
        self._own_lock = self._coord.get_lock(self._lock_name(self.member_id))
        if not self._own_lock.acquire(blocking=5):
            raise RuntimeError(f"conductor id {self.member_id} is already in use by a live process")
        if not self.url.startswith("file:"):     # a file lock goes only with the process
            self._watchdog = threading.Thread(target=self._watch, name="ff-liveness-watchdog", daemon=True)
            self._watchdog.start()
        LOG.info("conductor %s alive in %s", self.member_id, self.url.split("?")[0])

    def _reachable(self, timeout: float = 5.0) -> None:
        """Fail at once, saying why, when a network backend does not answer: tooz (and the redis
        client under it) retry a refused connection for minutes before giving up."""
        parts = urlsplit(self.url)
        if parts.scheme in ("file", "") or not parts.hostname:
            return
        try:
            socket.create_connection((parts.hostname, parts.port or DEFAULT_PORTS.get(parts.scheme, 0)),
                                     timeout=timeout).close()
        except OSError as exc:
            raise RuntimeError(f"the coordination backend {parts.scheme}://{parts.hostname}:{parts.port} does not "
                               f"answer ({exc}); conductor.coordination_url") from None

    def stop(self) -> None:
        self._stopped.set()
        if self._watchdog is not None:
            self._watchdog.join(WATCH_EVERY + 5)
        try:
            if self._own_lock is not None:
                with contextlib.suppress(Exception):   # gone with the backend: nothing to release
                    self._own_lock.release()
        finally:
            self._coord.stop()

    def _watch(self) -> None:
        lost = False
        while not self._stopped.wait(WATCH_EVERY):
            try:
                with self._lock:
                    if self._own_lock.is_still_owner():
                        lost = False
                        continue
                    # Gone (the backend restarted empty, or the lock expired while we were
                    # frozen): forget the dead lock and take it again.
                    with contextlib.suppress(Exception):
                        self._coord._acquired_locks.discard(self._own_lock)
                    lock = self._coord.get_lock(self._lock_name(self.member_id))
                    if lock.acquire(blocking=False):
                        self._own_lock = lock
                        if self.on_lost is not None:
                            self.on_lost()
                        LOG.warning("conductor %s: its liveness lock was lost (coordination backend restarted?); "
                                    "taken again", self.member_id)
                        lost = False
                    elif not lost:
                        LOG.error("conductor %s: its liveness lock is held by another process", self.member_id)
                        lost = True
            except Exception as exc:            # the backend is away: try again in a second
                LOG.debug("liveness watchdog: %s", exc)

    @staticmethod
    def _lock_name(member_id: str) -> bytes:
        return f"freezeframe-conductor-{member_id}".encode()

    def is_alive(self, member_id: str | None) -> bool:
        if not member_id:
            return False
        if member_id == self.member_id:
            return True
        try:
            with self._lock:
                probe = self._coord.get_lock(self._lock_name(member_id))
                if probe.acquire(blocking=False):
                    probe.release()
                    return False
                return True
        except Exception as exc:       # the backend is away: say alive (nothing is reaped for it)
            LOG.warning("liveness of %s unknown, the coordination backend is unavailable: %s", member_id, exc)
            return True
