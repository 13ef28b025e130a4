"""Compute hosts: each `freezeframe compute --host NAME` registers itself here and heartbeats.

As Nova's ``services`` table: a host is up while its last heartbeat is younger than
``down_after`` seconds (the database's clock decides, so the hosts' clocks need not agree). A
server records its host; host-bound work on it goes to that host's compute process (its URL is
registered with the heartbeat). A server whose host is down gets a clear 409, never a hang.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass

from sqlalchemy import Boolean, DateTime, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from freezeframe.common import errors
from freezeframe.common.timeutil import isotime, utcnow
from freezeframe.db.base import Base
from freezeframe.db.clock import db_now    # the database's clock judges every host's heartbeat
from freezeframe.db.session import Database

LOG = logging.getLogger(__name__)


class HostDown(errors.Conflict):
    """The server's host is down, disabled or unknown: its host-bound work cannot go there now."""


class ComputeHost(Base):
    __tablename__ = "compute_hosts"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    url: Mapped[str] = mapped_column(String(1024))          # its host API (compute/hostapi.py)
    driver: Mapped[str] = mapped_column(String(30))
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


@dataclass(frozen=True)
class HostView:
    name: str
    url: str
    driver: str
    up: bool
    heartbeat_at: dt.datetime
    started_at: dt.datetime
    disabled: bool

    def to_json(self) -> dict:
        return {"host": self.name, "url": self.url, "driver": self.driver,
                "state": "up" if self.up else "down", "status": "disabled" if self.disabled else "enabled",
                "updated_at": isotime(self.heartbeat_at), "started_at": isotime(self.started_at)}


class HostRegistry:
    def __init__(self, db: Database, *, down_after: float = 30.0) -> None:
        self.db = db
        self.down_after = down_after

    # -- the host's side ----------------------------------------------------------------------
    def heartbeat(self, name: str, url: str, driver: str, *, starting: bool = False) -> None:
        def beat(session: Session) -> None:
            now = db_now(session)
            row = session.get(ComputeHost, name)
            if row is None:
                session.add(ComputeHost(name=name, url=url, driver=driver, started_at=now, heartbeat_at=now))
                return
            row.url, row.driver, row.heartbeat_at = url, driver, now
            if starting:
                row.started_at = now
        self.db.run_sync(beat)

    # -- everyone else ------------------------------------------------------------------------
    def _view(self, row: ComputeHost, now: dt.datetime) -> HostView:
        up = (now - row.heartbeat_at).total_seconds() < self.down_after and not row.disabled
        return HostView(row.name, row.url, row.driver, up, row.heartbeat_at, row.started_at, row.disabled)

    def get(self, name: str) -> HostView | None:
        def read(session: Session) -> HostView | None:
            row = session.get(ComputeHost, name)
            return None if row is None else self._view(row, db_now(session))
        return self.db.run_sync(read)

    def all(self) -> list[HostView]:
        def read(session: Session) -> list[HostView]:
            now = db_now(session)
            return [self._view(r, now) for r in session.scalars(select(ComputeHost).order_by(ComputeHost.name))]
        return self.db.run_sync(read)

    def require_up(self, name: str) -> HostView:
        """The host, or a Conflict (409) saying why host-bound work cannot go there now."""
        view = self.get(name)
        if view is None:
            raise HostDown(f"The server's host {name!r} is not a registered compute host; start "
                                  f"`freezeframe compute --host {name}` there")
        if view.disabled:
            raise HostDown(f"The server's host {name!r} is disabled")
        if not view.up:
            raise HostDown(f"The server's host {name!r} is down (last heartbeat "
                                  f"{isotime(view.heartbeat_at)}); retry when it is back")
        return view


class Heartbeat:
    """The compute process's heartbeat thread: every ``interval`` seconds, until stopped."""

    def __init__(self, registry: HostRegistry, name: str, url: str, driver: str, interval: float) -> None:
        self.registry, self.name, self.url, self.driver, self.interval = registry, name, url, driver, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.registry.heartbeat(self.name, self.url, self.driver, starting=True)
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.registry.heartbeat(self.name, self.url, self.driver)
            except Exception as exc:     # the database away: the host looks down until it is back
                LOG.warning("compute host %s: heartbeat failed: %s", self.name, exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
