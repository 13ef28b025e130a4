"""Where conductors find work: a jobboard, chosen by URL as taskflow chooses its backends.

- ``""`` (the embedded default): the **database** is the board. A posted workflow wakes this
  process's conductor at once; every conductor also polls for unfinished workflows nobody holds
  (unowned, its own from before a restart, or whose owner's lease ran out).
- ``redis://host:port/db[?namespace=...]``: **taskflow's Redis jobboard**. A posting is a job;
  a conductor claims it *with an expiry* (the TTL) and keeps the claim alive every TTL/3 with an
  owner-checked extend (taskflow's ``RedisJob.extend_expiry`` extends whoever's claim it is), so
  the claim of a conductor that died expires and another live conductor claims the job. Redis
  keeps nothing on disk here: every conductor's scan posts again every unfinished workflow that
  no fresh lease holds and that has no posting (``repost``) — how everything comes back after a
  Redis restart. A guard key (``SET NX EX``) keeps two posters from doubling a posting.

Either way the board only says which conductor should work on what: ownership is the lease in
the database (``conductor/lease.py``), and a claim on the board is worth nothing until that
compare-and-set succeeds. Host-bound kinds are offered only to a conductor serving their host.
"""

from __future__ import annotations

import abc
import datetime as dt
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import or_, select

from freezeframe.conductor.model import Workflow
from freezeframe.conductor.registry import Registry
from freezeframe.db.session import Database

LOG = logging.getLogger(__name__)
POST_GUARD_SECONDS = 30
# Extend a claim only while it is still the caller's (KEYS[1]: the job's owner key).
EXTEND_IF_OWNER = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
                   "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0")


@dataclass(frozen=True)
class Offer:
    """A workflow a conductor may try to take, with the board's token for it."""
    workflow_id: str
    kind: str | None = None
    host: str | None = None
    job: Any = None


def serves(hosts: frozenset[str] | None, host_bound: frozenset[str], kind: str | None, host: str | None) -> bool:
    """May a conductor serving ``hosts`` (None: any) take a workflow of ``kind`` on ``host``?
    Work that is not host-bound, or recorded without a host (before hosts were recorded), may
    go anywhere."""
    return hosts is None or kind not in host_bound or host is None or host in hosts


class Board(abc.ABC):
    url: str = ""

    def __init__(self) -> None:
        self._listeners: list[Callable[[str], None]] = []

    def listen(self, callback: Callable[[str], None]) -> None:
        """``callback(workflow_id)`` after each post from this process (a local conductor looks
        at once, also at a workflow it had put off: a post wakes a waiting workflow)."""
        self._listeners.append(callback)

    def _notify(self, workflow_id: str) -> None:
        for callback in self._listeners:
            callback(workflow_id)

    def connect(self) -> None:
        """Ready the board (idempotent)."""

    def close(self) -> None:
        """Let go of the board's connections."""

    @abc.abstractmethod
    def post(self, workflow_id: str, kind: str, host: str | None) -> None:
        """Make a workflow (its row already committed) known to the conductors."""

    @abc.abstractmethod
    def offers(self, owner: str, hosts: frozenset[str] | None) -> Iterator[Offer]:
        """Workflows this conductor may try to take now."""

    def take(self, offer: Offer, owner: str, ttl: float) -> bool:
        """Claim the offer on the board (then the database lease decides)."""
        return True

    def keep(self, offer: Offer, owner: str, ttl: float) -> bool:
        """Extend this conductor's claim on the board; False when it is not ours any more."""
        return True

    def done(self, offer: Offer, owner: str) -> None:
        """The workflow ended: remove the posting."""

    def give_up(self, offer: Offer, owner: str) -> None:
        """Let another conductor claim the posting at once."""

    def repost(self, workflows: Iterable[tuple[str, str, str | None]]) -> list[str]:
        """Post again the given unfinished (id, kind, host) that have no posting; returns the ids."""
        return []


class DatabaseBoard(Board):
    """The embedded board: the workflows table itself, polled."""

    def __init__(self, db: Database, registry: Registry, ttl: float, batch: int = 100) -> None:
        super().__init__()
        self.db = db
        self.registry = registry
        self.ttl = ttl
        self.batch = batch

    def post(self, workflow_id: str, kind: str, host: str | None) -> None:
        self._notify(workflow_id)

    def offers(self, owner: str, hosts: frozenset[str] | None) -> Iterator[Offer]:
        terminal = list(self.registry.terminal_states())
        host_bound = self.registry.host_bound_kinds()

        def find(session) -> list[Offer]:
            from freezeframe.db.clock import db_now
            cutoff = db_now(session) - dt.timedelta(seconds=self.ttl)
            stmt = (select(Workflow.id, Workflow.kind, Workflow.host)
                    .where(Workflow.state.not_in(terminal),
                           or_(Workflow.owner.is_(None), Workflow.owner == owner, Workflow.heartbeat_at.is_(None),
                               Workflow.heartbeat_at < cutoff))
                    .order_by(Workflow.created_at).limit(self.batch))
            if hosts is not None and host_bound:
                stmt = stmt.where(or_(Workflow.kind.not_in(host_bound), Workflow.host.is_(None),
                                      Workflow.host.in_(hosts)))
            return [Offer(r[0], r[1], r[2]) for r in session.execute(stmt)]
        return iter(self.db.run_sync(find))


class RedisBoard(Board):
    """taskflow's Redis jobboard, with expiring claims and an owner-checked keep-alive."""

    def __init__(self, url: str, registry: Registry, name: str = "freezeframe") -> None:
        super().__init__()
        from taskflow.jobs import backends as job_backends

        self.url = url
        self.registry = registry
        self._conf = redis_conf(url)
        self._board = job_backends.fetch(name, self._conf)
        self._lock = threading.RLock()
        self._extend = None

    @property
    def namespace(self) -> str:
        return self._conf["namespace"]

    def connect(self) -> None:
        with self._lock:
            if not self._board.connected:
                self._board.connect()
                self._extend = self._board._client.register_script(EXTEND_IF_OWNER)

    def _ready(self) -> Any:
        self.connect()
        return self._board

    def close(self) -> None:
        with self._lock:
            self._board.close()

    def post(self, workflow_id: str, kind: str, host: str | None) -> None:
        board = self._ready()
        guard = board.join(f"post-guard.{workflow_id}")
        if board._client.set(guard, b"1", nx=True, ex=POST_GUARD_SECONDS):
            board.post(f"workflow-{workflow_id}", details={"workflow_id": workflow_id, "kind": kind, "host": host})
            LOG.debug("workflow %s posted on %s", workflow_id, redact(self.url))
        self._notify(workflow_id)

    def offers(self, owner: str, hosts: frozenset[str] | None) -> Iterator[Offer]:
        host_bound = self.registry.host_bound_kinds()
        for job in self._ready().iterjobs(only_unclaimed=True, ensure_fresh=True):
            details = job.details or {}
            workflow_id = details.get("workflow_id")
            if not workflow_id:
                continue
            kind, host = details.get("kind"), details.get("host")
            if serves(hosts, host_bound, kind, host):    # never claimed for a host we do not serve
                yield Offer(workflow_id, kind, host, job)

    def take(self, offer: Offer, owner: str, ttl: float) -> bool:
        from taskflow import exceptions as tf_exc
        try:
            self._ready().claim(offer.job, owner, expiry=ttl)
        except (tf_exc.UnclaimableJob, tf_exc.NotFound):
            return False
        return True

    def keep(self, offer: Offer, owner: str, ttl: float) -> bool:
        self._ready()
        return self._extend(keys=[offer.job.owner_key], args=[owner.encode(), int(ttl * 1000)]) == 1

    def done(self, offer: Offer, owner: str) -> None:
        from taskflow import exceptions as tf_exc
        try:
            self._ready().consume(offer.job, owner)
        except (tf_exc.NotFound, tf_exc.JobFailure) as exc:   # gone with a Redis restart, or taken
            LOG.debug("workflow %s: its posting could not be consumed: %s", offer.workflow_id, exc)
            self._drop(offer)

    def _drop(self, offer: Offer) -> None:
        """A posting that could not be consumed (its claim expired meanwhile): delete it outright."""
        board = self._ready()
        board._client.hdel(board.listings_key, offer.job.key)

    def give_up(self, offer: Offer, owner: str) -> None:
        from taskflow import exceptions as tf_exc
        try:
            self._ready().abandon(offer.job, owner)
        except (tf_exc.NotFound, tf_exc.JobFailure) as exc:
            LOG.debug("workflow %s: its posting could not be abandoned: %s", offer.workflow_id, exc)

    def repost(self, workflows: Iterable[tuple[str, str, str | None]]) -> list[str]:
        wanted = list(workflows)
        if not wanted:
            return []
        listed = {(job.details or {}).get("workflow_id") for job in self._ready().iterjobs(ensure_fresh=True)}
        posted = []
        for workflow_id, kind, host in wanted:
            if workflow_id not in listed:
                self.post(workflow_id, kind, host)
                posted.append(workflow_id)
        if posted:
            LOG.info("posted again on %s (the database is the truth): %s", redact(self.url), posted)
        return posted


def redis_conf(url: str) -> dict[str, Any]:
    """``redis://[:password@]host[:port][/db][?namespace=...&socket_timeout=...]`` -> the Redis
    jobboard's configuration (taskflow's own URL parsing would not pass the host on)."""
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    conf: dict[str, Any] = {"board": "redis", "host": parts.hostname or "127.0.0.1", "port": parts.port or 6379,
                            "namespace": query.pop("namespace", "freezeframe"),
                            "socket_timeout": float(query.pop("socket_timeout", 2.0)),
                            "socket_connect_timeout": float(query.pop("socket_connect_timeout", 2.0))}
    if parts.password:
        conf["password"] = parts.password
    if parts.username:
        conf["username"] = parts.username
    db = parts.path.strip("/")
    if db:
        conf["db"] = int(db)
    if query:
        raise ValueError(f"conductor.jobboard_url: unknown option(s) {', '.join(sorted(query))}")
    return conf


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url


def fetch(url: str, *, db: Database, registry: Registry, ttl: float, name: str = "freezeframe") -> Board:
    """The board a URL names: empty for the database, ``redis://`` for taskflow's Redis jobboard."""
    if not url:
        return DatabaseBoard(db, registry, ttl)
    scheme = urlsplit(url).scheme
    if scheme == "redis":
        return RedisBoard(url, registry, name)
    raise ValueError(f"conductor.jobboard_url: unsupported jobboard {scheme!r} (empty for the database, or "
                     "redis://host:port/db)")
