"""taskflow's persistence with one set of table objects: what is saved loads back the same,
from any number of connections, and loading a flow again and again does not grow the process
(taskflow's own backend built new tables for every connection, and SQLAlchemy's statement
cache kept the statements compiled against each set: serve grew with every workflow step)."""

from __future__ import annotations

import contextlib
import gc
import tracemalloc

from taskflow.persistence import models
from taskflow.persistence.backends import impl_sqlalchemy

from freezeframe.conductor.persistence import SharedTablesBackend, persistence_backend


def _book(backend) -> tuple[str, str]:
    book = models.LogBook("workflow-x")
    flow = models.FlowDetail("flow-x", uuid="f" * 32)
    for i in range(5):
        atom = models.TaskDetail(f"task-{i}", uuid=f"{i:032d}")
        atom.results = {"done": i}
        flow.add(atom)
    book.add(flow)
    with contextlib.closing(backend.get_connection()) as conn:
        conn.upgrade()
        conn.save_logbook(book)
    return book.uuid, flow.uuid


def _load(backend, book_id: str, flow_id: str):
    with contextlib.closing(backend.get_connection()) as conn:
        return conn.get_logbook(book_id).find(flow_id)


def test_the_database_urls_get_the_shared_tables_backend(tmp_path):
    backend = persistence_backend(f"sqlite:///{tmp_path / 'a.db'}")
    assert isinstance(backend, SharedTablesBackend)
    one, two = backend.get_connection(), backend.get_connection()
    assert one._tables is two._tables


def test_what_is_saved_loads_back_through_every_connection(tmp_path):
    backend = persistence_backend(f"sqlite:///{tmp_path / 'a.db'}")
    book_id, flow_id = _book(backend)
    for _ in range(3):
        flow = _load(backend, book_id, flow_id)
        assert sorted(a.name for a in flow) == [f"task-{i}" for i in range(5)]
        assert {a.name: a.results for a in flow}["task-3"] == {"done": 3}


def _growth(backend, book_id, flow_id, loads: int) -> int:
    for _ in range(20):                     # warm: the statements compiled once
        _load(backend, book_id, flow_id)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(loads):
            _load(backend, book_id, flow_id)
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_loading_a_flow_again_and_again_does_not_grow_the_process(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    ours = persistence_backend(url)
    book_id, flow_id = _book(ours)
    theirs = impl_sqlalchemy.SQLAlchemyBackend({"connection": url})
    grew_theirs = _growth(theirs, book_id, flow_id, 60)
    grew_ours = _growth(ours, book_id, flow_id, 60)
    # (taskflow's own: ~tens of KB per load, kept; ours: nothing kept beyond noise)
    assert grew_theirs > 1_000_000, f"the comparison no longer shows taskflow's growth ({grew_theirs} B)"
    assert grew_ours < grew_theirs / 10, (grew_ours, grew_theirs)
