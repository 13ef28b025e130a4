import pytest

from freezeframe.db.engine import make_engine, make_sessionmaker
from freezeframe.db.migrate import upgrade
from freezeframe.db.session import Database
from freezeframe.images.drivers.file import FileStore


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    """A migrated database: the embedded SQLite, and the machine's PostgreSQL."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'test.db'}")
        upgrade(engine)
        yield Database(engine, make_sessionmaker(engine))
        engine.dispose()
        return
    from tests.pg import temp_database
    with temp_database() as url:
        engine = make_engine(url)
        upgrade(engine)
        yield Database(engine, make_sessionmaker(engine))
        engine.dispose()


@pytest.fixture
def store(tmp_path):
    return FileStore(tmp_path / "store", fsync=False)
