"""Run the Alembic migrations programmatically (``freezeframe serve`` upgrades on start).

Several processes may start at once on one PostgreSQL database (an API, conductors): the
upgrade runs under an advisory lock, so one migrates and the others find it done.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

HERE = Path(__file__).parent
# pg_advisory_lock keys: our migrations, taskflow's persistence schema.
MIGRATIONS_LOCK, TASKFLOW_LOCK = 0x46460001, 0x46460002


def alembic_config(engine: Engine, **attributes: Any) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE / "migrations"))
    cfg.attributes["engine"] = engine
    cfg.attributes.update(attributes)
    return cfg


@contextlib.contextmanager
def exclusive(engine: Engine, key: int) -> Iterator[None]:
    """One process at a time on this database (PostgreSQL advisory lock; SQLite: one host,
    its own locking is enough)."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


def upgrade(engine: Engine, revision: str = "head", **attributes: Any) -> None:
    """``attributes``: values the migrations may use (``compute_host``: the backfill of
    ``instances.host``)."""
    with exclusive(engine, MIGRATIONS_LOCK):
        command.upgrade(alembic_config(engine, **attributes), revision)


def downgrade(engine: Engine, revision: str) -> None:
    command.downgrade(alembic_config(engine), revision)
