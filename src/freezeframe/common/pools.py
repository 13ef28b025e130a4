"""Bounded thread pools for blocking work, and the rules that keep one process from hanging itself.

The rules (issue 7, item 4):

1. **A pool that serves requests never runs work that waits on another request of the same
   process** — an HTTP call back into this server, or an in-process service call that needs a
   thread. Such outbound work gets a pool of its own (e.g. compute's calls to the image
   service), so the pools that would answer it (``db``, ``store``) can never be filled by it.
   The loop's default executor (``run_in_executor(None, ...)``) is shared by everything and is
   used by no request path of the image service or the database.
2. **Nothing waits for a slot unboundedly.** ``run`` raises ``errors.Busy`` at once when
   ``workers + queue`` tasks are in flight (the request answers 503 with ``Retry-After``).
   Only work already under way waits, and boundedly: a request's later calls once its first
   one got a slot (``ADMITTED_WAIT``), a service finishing accepted work (``admit()``), or an
   explicit ``wait=`` where failing mid-way would be worse (a download whose headers are sent,
   clean-up). Waiting happens on the event loop (a future), never by holding a thread.
3. Every pool registers itself by name: ``/healthcheck`` reports it exhausted (503) when it is
   saturated or its workers are all stuck, and ``?detailed`` shows each pool's usage.

Usage::

    pool = BoundedPool("compute-outbound", workers=8, queue=32)
    image = await pool.run(client.show, image_id)       # errors.Busy at once when full

Context variables (the request id) are carried into the worker thread.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import functools
import threading
import time
import weakref
from typing import Any, Callable, TypeVar

from freezeframe.common import errors

T = TypeVar("T")

_REGISTRY: "weakref.WeakValueDictionary[int, BoundedPool]" = weakref.WeakValueDictionary()
_REGISTRY_LOCK = threading.Lock()

# A pool whose workers are all busy and whose oldest task has run this long is "stuck".
STUCK_AFTER = 30.0
# Work already admitted (a request that got its first slot, or a service finishing accepted
# work, see ``admit``) waits up to this long for a later slot instead of failing half-way and
# leaving things to clean up: load is shed at the door, not in the middle of the room.
ADMITTED_WAIT = 5.0
_ADMITTED: contextvars.ContextVar[bool] = contextvars.ContextVar("ff_pool_admitted", default=False)


def admit() -> None:
    """Mark the current task's work as accepted: its pool calls wait (bounded) for a slot."""
    _ADMITTED.set(True)


class BoundedPool:
    """A thread pool with at most ``workers`` threads and ``queue`` waiting tasks.

    ``serves_requests`` marks the pools whose exhaustion makes the service unable to answer
    (``/healthcheck`` fails on them); background pools are only reported.
    """

    def __init__(self, name: str, workers: int, queue: int = 0, *, retry_after: int = 1,
                 serves_requests: bool = True, stuck_after: float = STUCK_AFTER,
                 max_queue_wait: float | None = None) -> None:
        if workers < 1 or queue < 0:
            raise ValueError("a pool needs at least one worker and a non-negative queue")
        self.name = name
        self.workers = workers
        self.queue = queue
        self.capacity = workers + queue
        self.retry_after = retry_after
        self.serves_requests = serves_requests
        self.stuck_after = stuck_after
        # New work is also refused when the queue ahead of it would take longer than this to
        # drain (at the recent time per task): the bound on waiting is in seconds, not only in
        # tasks, whatever the load does to each task's time.
        self.max_queue_wait = max_queue_wait
        self._task_seconds = 0.0                      # moving average of a task's run time
        self._executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=f"ff-{name}")
        self._lock = threading.Lock()
        self._in_flight = 0
        self._running: dict[int, float] = {}          # task number -> monotonic start
        self._seq = 0
        self._waiters: collections.deque[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = collections.deque()
        self.peak = 0
        self.completed = 0
        self.rejected = 0
        self._closed = False
        with _REGISTRY_LOCK:
            _REGISTRY[id(self)] = self

    # -- slots ---------------------------------------------------------------------------------

    def queue_wait(self) -> float:
        """Seconds a task submitted now would wait for a thread (estimated)."""
        ahead = self._in_flight - self.workers + 1
        return ahead * self._task_seconds / self.workers if ahead > 0 else 0.0

    def _try_acquire(self, fresh: bool = True) -> bool:
        with self._lock:
            if self._closed or self._in_flight >= self.capacity:
                return False
            if fresh and self.max_queue_wait is not None and self.queue_wait() > self.max_queue_wait:
                return False
            self._in_flight += 1
            self.peak = max(self.peak, self._in_flight)
            return True

    def _release(self) -> None:
        while True:
            with self._lock:
                self.completed += 1
                waiter = None
                while self._waiters and waiter is None:
                    candidate = self._waiters.popleft()
                    if not candidate[1].done():
                        waiter = candidate
                if waiter is None:
                    self._in_flight -= 1
                    return
                # The slot passes straight to the first waiter (in_flight unchanged).
            loop, fut = waiter
            try:
                loop.call_soon_threadsafe(_hand_over, self, fut)
                return
            except RuntimeError:        # that loop is closed: try the next waiter
                with self._lock:
                    self.completed -= 1

    def _busy(self) -> errors.Busy:
        with self._lock:
            self.rejected += 1
        return errors.Busy(f"The service is busy ({self.name}: {self._in_flight} tasks in flight, "
                           f"~{self.queue_wait():.1f}s of queue); retry shortly",
                           retry_after=self.retry_after, pool=self.name)

    async def _acquire(self, wait: float) -> None:
        if self._try_acquire(fresh=wait <= 0):
            return
        if wait <= 0:
            raise self._busy()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        with self._lock:
            if self._in_flight < self.capacity and not self._closed:   # freed meanwhile
                self._in_flight += 1
                self.peak = max(self.peak, self._in_flight)
                return
            self._waiters.append((loop, fut))
        try:
            await asyncio.wait_for(asyncio.shield(fut), wait)
        except asyncio.TimeoutError:
            if not fut.cancel() and fut.result() is True:   # the slot arrived at the last moment
                return
            self._forget(loop, fut)
            raise self._busy() from None
        except asyncio.CancelledError:
            if not fut.cancel() and not fut.cancelled() and fut.result() is True:
                self._release()          # the slot was ours: give it on
            else:
                self._forget(loop, fut)
            raise

    def _forget(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future) -> None:
        with self._lock:
            try:
                self._waiters.remove((loop, fut))
            except ValueError:
                pass

    # -- running -------------------------------------------------------------------------------

    def _submit_acquired(self, fn: Callable[..., T], args: tuple, kwargs: dict) -> concurrent.futures.Future:
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        with self._lock:
            self._seq += 1
            seq = self._seq

        def tracked() -> T:
            with self._lock:
                self._running[seq] = time.monotonic()
            try:
                return call()
            finally:
                with self._lock:
                    took = time.monotonic() - self._running.pop(seq)
                    self._task_seconds += (took - self._task_seconds) * 0.2

        try:
            cf = self._executor.submit(tracked)
        except BaseException:
            self._release()
            raise
        cf.add_done_callback(lambda _f: self._release())
        return cf

    async def run(self, fn: Callable[..., T], *args: Any, wait: float = 0.0, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on a worker; ``errors.Busy`` at once (or after at most
        ``wait`` seconds) when the pool is full. If the caller is cancelled the call still
        finishes on its thread and only then frees its slot."""
        await self._acquire(max(wait, ADMITTED_WAIT) if _ADMITTED.get() else wait)
        _ADMITTED.set(True)
        return await asyncio.wrap_future(self._submit_acquired(fn, args, kwargs))

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """From a thread: a ``concurrent.futures.Future`` of the call, or ``errors.Busy`` at once."""
        if not self._try_acquire():
            raise self._busy()
        return self._submit_acquired(fn, args, kwargs)

    # -- state ---------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def saturated(self) -> bool:
        return self._in_flight >= self.capacity

    def stuck_for(self) -> float:
        """Seconds the oldest task has run if every worker is busy, else 0."""
        with self._lock:
            if len(self._running) < self.workers:
                return 0.0
            return time.monotonic() - min(self._running.values())

    def problem(self) -> str | None:
        """Why this pool cannot take work now (None: it can)."""
        if self._closed:
            return f"pool {self.name} is shut down"
        if self.saturated():
            return f"pool {self.name} is saturated ({self._in_flight}/{self.capacity} tasks in flight)"
        stuck = self.stuck_for()
        if stuck >= self.stuck_after:
            return f"pool {self.name}: all {self.workers} workers busy, the oldest task for {stuck:.0f}s"
        return None

    def stats(self) -> dict[str, Any]:
        with self._lock:
            running = len(self._running)
            oldest = time.monotonic() - min(self._running.values()) if self._running else 0.0
            return {"workers": self.workers, "queue": self.queue, "in_flight": self._in_flight,
                    "running": running, "queued": max(0, self._in_flight - running),
                    "waiting": len(self._waiters), "peak": self.peak, "completed": self.completed,
                    "rejected": self.rejected, "oldest_running_s": round(oldest, 3),
                    "task_ms": round(self._task_seconds * 1000, 2), "queue_wait_s": round(self.queue_wait(), 3),
                    "serves_requests": self.serves_requests}

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            self._closed = True
        with _REGISTRY_LOCK:
            _REGISTRY.pop(id(self), None)
        self._executor.shutdown(wait=wait)

    def __repr__(self) -> str:
        return f"<BoundedPool {self.name} {self._in_flight}/{self.capacity}>"


def _hand_over(pool: BoundedPool, fut: asyncio.Future) -> None:
    if fut.done():              # its waiter gave up: the slot goes on to the next one
        pool._release()
    else:
        fut.set_result(True)


def registered() -> list[BoundedPool]:
    """Every live pool of this process."""
    with _REGISTRY_LOCK:
        return list(_REGISTRY.values())


class InstrumentedExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor, counted: it refuses nothing (the code still on it cannot
    take a refusal everywhere) but ``/healthcheck`` sees when it is stuck or backed up."""

    def __init__(self, max_workers: int, name: str = "default", *, stuck_after: float = STUCK_AFTER) -> None:
        super().__init__(max_workers, thread_name_prefix=f"ff-{name}")
        self.name = name
        self.workers = max_workers
        self.stuck_after = stuck_after
        self._lock2 = threading.Lock()
        self._in_flight = 0
        self._running: dict[int, float] = {}
        self._seq = 0
        self.peak = 0
        self.completed = 0

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        with self._lock2:
            self._seq += 1
            seq = self._seq
            self._in_flight += 1
            self.peak = max(self.peak, self._in_flight)

        def tracked():
            with self._lock2:
                self._running[seq] = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock2:
                    self._running.pop(seq, None)

        def done(_f) -> None:
            with self._lock2:
                self._in_flight -= 1
                self.completed += 1

        try:
            cf = super().submit(tracked)
        except BaseException:
            done(None)
            raise
        cf.add_done_callback(done)
        return cf

    def problem(self) -> str | None:
        with self._lock2:
            if len(self._running) < self.workers or not self._running:
                return None
            stuck = time.monotonic() - min(self._running.values())
            backlog = self._in_flight - len(self._running)
        if stuck >= self.stuck_after:
            return (f"executor {self.name}: all {self.workers} workers busy, the oldest task for {stuck:.0f}s, "
                    f"{backlog} waiting")
        return None

    def stats(self) -> dict[str, Any]:
        with self._lock2:
            running = len(self._running)
            oldest = time.monotonic() - min(self._running.values()) if self._running else 0.0
            return {"workers": self.workers, "queue": None, "in_flight": self._in_flight, "running": running,
                    "queued": self._in_flight - running, "peak": self.peak, "completed": self.completed,
                    "oldest_running_s": round(oldest, 3), "serves_requests": False}
