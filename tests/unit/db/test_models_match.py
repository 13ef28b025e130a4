"""The migrations make exactly the tables the services' models declare (Alembic's comparison
finds nothing to change), on SQLite and PostgreSQL: a model changed without its migration, or a
migration without its model, fails here."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import freezeframe.compute.hosts
import freezeframe.compute.model
import freezeframe.conductor.model
import freezeframe.db.health
import freezeframe.identity.model
import freezeframe.images.metadef_model
import freezeframe.images.model
import freezeframe.volumes.model
import freezeframe.baremetal.model
from freezeframe.db.base import Base

# Every module that declares tables (importing one registers its tables with Base.metadata).
MODELS = (freezeframe.compute.hosts, freezeframe.compute.model, freezeframe.conductor.model, freezeframe.db.health,
          freezeframe.identity.model, freezeframe.images.model, freezeframe.volumes.model,
          freezeframe.baremetal.model, freezeframe.images.metadef_model)

TASKFLOW = ("logbooks", "flowdetails", "atomdetails", "alembic_version", "freezeframe_migrations")


def test_the_migrated_schema_is_the_models(db):
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": False})
        diff = compare_metadata(context, Base.metadata)

    def ours(change) -> bool:       # taskflow's own tables live in the same database
        table = getattr(change[1], "name", None) if change[0] in ("add_table", "remove_table") else None
        if change[0] == "remove_table" and table in TASKFLOW:
            return False
        if change[0] in ("remove_index", "remove_column", "add_index", "add_column"):
            where = getattr(change[1], "table", None) or change[2] if len(change) > 2 else None
            name = getattr(where, "name", where)
            if name in TASKFLOW:
                return False
        return True
    assert [c for c in diff if ours(c)] == []
