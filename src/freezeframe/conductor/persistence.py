"""taskflow's persistence (logbooks, flow and atom details) in the database, with one set of
table objects for the life of the process.

taskflow's SQLAlchemy backend builds a new ``MetaData`` and new ``Table`` objects for every
connection it hands out — one per atom save, per flow load — and the SQLAlchemy engine's
statement cache keeps the statements compiled against each set, so the process grew with every
workflow step: serve gained ~8-10 MB per bare-metal snapshot (a node snapshot is loaded again at
every agent heartbeat that wakes it), never given back (``bench/baremetal_bench.py`` T3). Here the
backend builds the tables once and every connection shares them: the statements compile once and
the cache stays the size of the statements taskflow uses. Nothing else of taskflow changes.
"""

from __future__ import annotations

import sqlalchemy as sa
from taskflow.persistence import backends as tf_backends
from taskflow.persistence.backends import impl_sqlalchemy
from taskflow.persistence.backends.sqlalchemy import tables as tf_tables


class SharedTablesBackend(impl_sqlalchemy.SQLAlchemyBackend):
    """taskflow's SQLAlchemy backend whose connections share one set of tables."""

    def __init__(self, conf, engine=None) -> None:
        super().__init__(conf, engine=engine)
        self.metadata = sa.MetaData()
        self.tables = tf_tables.fetch(self.metadata)
        self.converter = impl_sqlalchemy._Alchemist(self.tables)

    def get_connection(self) -> impl_sqlalchemy.Connection:
        conn = SharedTablesConnection(self, upgrade_lock=self._upgrade_lock)
        if not self._validated:
            conn.validate(max_retries=self._max_retries)
            self._validated = True
        return conn


class SharedTablesConnection(impl_sqlalchemy.Connection):
    def __init__(self, backend: SharedTablesBackend, upgrade_lock) -> None:      # (no super: it builds tables)
        self._backend = backend
        self._upgrade_lock = upgrade_lock
        self._engine = backend.engine
        self._metadata = backend.metadata
        self._tables = backend.tables
        self._converter = backend.converter


def persistence_backend(url: str):
    """The taskflow persistence backend for a database URL (SQLAlchemy's form)."""
    if url.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "mysql"):
        return SharedTablesBackend({"connection": url})
    return tf_backends.fetch({"connection": url})
